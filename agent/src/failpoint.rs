//! Crash points for tests of the real binary: with
//! `OUTPOST_AGENT_CRASH_AT=<name>` in its environment the agent aborts (no
//! destructors, no flushing, like a power cut or SIGKILL) when it reaches the
//! named point. Inert otherwise; the rotation's names are listed in [`POINTS`],
//! an artifact install's in [`crate::artifact::install::POINTS`],
//! and [`ENROLL_RESPONSE_RECEIVED`] is enrollment's.

use std::sync::OnceLock;

pub const ENV: &str = "OUTPOST_AGENT_CRASH_AT";

/// Every crash point, in the order a rotation reaches them.
pub const POINTS: &[&str] = &[
    ROTATE_KEY_WRITTEN,
    ROTATE_CERT_ISSUED,
    ROTATE_CERT_WRITTEN,
    ROTATE_KEY_SWAPPED,
    ROTATE_CERT_SWAPPED,
];
/// The new key is on disk, no CSR sent yet.
pub const ROTATE_KEY_WRITTEN: &str = "rotate-key-written";
/// The control plane issued the new certificate; nothing of it is on disk.
pub const ROTATE_CERT_ISSUED: &str = "rotate-cert-issued";
/// The new certificate is on disk next to the old one.
pub const ROTATE_CERT_WRITTEN: &str = "rotate-cert-written";
/// The new key replaced the old one; the old certificate is still current.
pub const ROTATE_KEY_SWAPPED: &str = "rotate-key-swapped";
/// Key and certificate are both new; the API key is not yet saved.
pub const ROTATE_CERT_SWAPPED: &str = "rotate-cert-swapped";

/// Enrollment (not in [`POINTS`], which are a rotation's): the control
/// plane answered; nothing of it is on disk — a lost response, as far as
/// the control plane can tell.
pub const ENROLL_RESPONSE_RECEIVED: &str = "enroll-response-received";

/// Aborts the process if `name` is the configured crash point.
pub fn hit(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        eprintln!("outpost-agent: crash point {name} reached ({ENV}): aborting");
        std::process::abort();
    }
}
