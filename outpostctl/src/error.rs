//! What can go wrong, and the exit code each kind of failure gets.

use std::fmt;
use std::process::ExitCode;

/// Exit codes (documented in docs/outpostctl.md).
pub const EXIT_SERVER: u8 = 1;
/// clap uses 2 for its own usage errors; ours match.
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONNECTION: u8 = 3;

#[derive(Debug)]
pub enum Error {
    /// Wrong or missing arguments or settings (exit 2).
    Usage(String),
    /// The server answered with an error status (exit 1); `message` is the
    /// server's own message.
    Server { status: u16, message: String },
    /// The server answered, but not with what the API promises (exit 1).
    Protocol(String),
    /// No answer: connection refused, DNS, TLS, timeout, a stream that broke
    /// and could not be resumed (exit 3).
    Connection(String),
    /// Our standard output went away (a closed pipe): stop quietly (exit 0).
    OutputClosed,
    /// Writing to the terminal or standard output failed (exit 1).
    Io(std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::from(EXIT_USAGE),
            Error::Server { .. } | Error::Protocol(_) | Error::Io(_) => ExitCode::from(EXIT_SERVER),
            Error::Connection(_) => ExitCode::from(EXIT_CONNECTION),
            Error::OutputClosed => ExitCode::SUCCESS,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "usage error: {m}"),
            Error::Server { status, message } => {
                write!(f, "server error (HTTP {status}): {message}")
            }
            Error::Protocol(m) => write!(f, "unexpected answer from the server: {m}"),
            Error::Connection(m) => write!(f, "connection error: {m}"),
            Error::OutputClosed => write!(f, "standard output closed"),
            Error::Io(e) => write!(f, "output error: {e}"),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Error::OutputClosed
        } else {
            Error::Io(e)
        }
    }
}

/// Describes a reqwest failure with its causes (reqwest's own `Display`
/// stops at "error sending request"), never with the API key: the key only
/// travels in a header, which reqwest does not print.
pub fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

pub type Result<T> = std::result::Result<T, Error>;
