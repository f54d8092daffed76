//! The agent's HTTP CONNECT proxy: the setting (`--proxy`, `https_proxy` /
//! `HTTPS_PROXY`, config `proxy`), which hosts bypass it (`no_proxy` /
//! `NO_PROXY`, and nothing else), and the tunnel: `CONNECT host:port`, then
//! TLS end to end to the control plane inside it (done by `link`).
//!
//! The handshake is written here rather than taken from an HTTP client: it
//! is one request and one bounded response, and the agent's size is budgeted.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest CONNECT response (status line and headers) read from a proxy.
pub const MAX_RESPONSE_BYTES: usize = 8 << 10;
/// How long reaching the proxy and its answer to CONNECT may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `http://[USER[:PASS]@]HOST[:PORT]`: an HTTP proxy that takes CONNECT.
/// Its `Display` and `Debug` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    user: Option<String>,
    password: Option<String>,
}

impl ProxyUrl {
    /// Parses a proxy URL as curl takes it: no scheme means `http://`; no
    /// port means 1080; user and password may be percent-encoded.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let t = raw.trim();
        let rest = match t.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme {scheme:?} is not supported: give an HTTP proxy that takes CONNECT, http://[USER:PASS@]HOST:PORT"
                ));
            }
            None => t,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err("a proxy URL has no path: http://[USER:PASS@]HOST:PORT".into());
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (name, pass) = match u.split_once(':') {
                    Some((n, p)) => (n, Some(p)),
                    None => (u, None),
                };
                (
                    Some(percent_decode(name)?),
                    pass.map(percent_decode).transpose()?,
                )
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("unclosed [ in the proxy's IPv6 address")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err("unexpected text after ] in the proxy URL".into()),
            };
            (h, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("the proxy URL has no host".into());
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                // Not echoed: in a mistyped URL it may be a password.
                .ok_or("the proxy URL's port is not a port number (1-65535)")?,
            None => 1080,
        };
        Ok(Self {
            host: host.to_string(),
            port,
            user,
            password,
        })
    }

    /// `HOST:PORT` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// The `Proxy-Authorization` value, when the URL carries a user.
    fn authorization(&self) -> Option<String> {
        use base64::Engine;
        let user = self.user.as_deref()?;
        let pass = self.password.as_deref().unwrap_or("");
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }
}

/// `http://user:***@host:port`: the password is never shown.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("http://")?;
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.authority())
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in the proxy URL's user or password")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the proxy URL's user or password is not UTF-8".into())
}

/// Whether `no_proxy` (the value of `NO_PROXY`) says `host` is reached
/// directly, as curl reads it: a comma-separated list (spaces ignored) of
/// host names, each matching itself and its subdomains (a leading dot is
/// optional), IP addresses, CIDR blocks (`10.0.0.0/8`), or `*` for every
/// host. An entry may name a port (`cp.example:8443`, `[::1]:8443`); then it
/// matches only that port. Names are compared without case and without a
/// trailing dot; no name is resolved, and nothing else (loopback included)
/// bypasses the proxy.
pub fn no_proxy_matches(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (pattern, want_port) = split_entry_port(entry);
            if want_port.is_some_and(|p| p != port) {
                return false;
            }
            let pattern = pattern.to_ascii_lowercase();
            // An address or block: only an address matches it.
            if let Some((net, bits)) = pattern.split_once('/') {
                return match (net.parse::<IpAddr>(), bits.parse::<u8>(), host_ip) {
                    (Ok(net), Ok(bits), Some(ip)) => in_block(ip, net, bits),
                    _ => false,
                };
            }
            if let Ok(ip) = pattern.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            let name = pattern.strip_prefix('.').unwrap_or(&pattern);
            let name = name.strip_suffix('.').unwrap_or(name);
            !name.is_empty()
                && host_ip.is_none()
                && (host == name
                    || (host.len() > name.len()
                        && host.ends_with(name)
                        && host.as_bytes()[host.len() - name.len() - 1] == b'.'))
        })
}

/// `name:port`, `[v6]:port`, `[v6]`, a bare IPv6 address or a name.
fn split_entry_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(v6) = entry.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (entry, None),
        };
    }
    // More than one colon: an IPv6 address (maybe a block), no port.
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(p) => (h, Some(p)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The proxy setting in force and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    pub proxy: Option<ProxyUrl>,
    /// Where `proxy` came from (`--proxy`, `HTTPS_PROXY (environment)`, …).
    pub source: String,
    /// `NO_PROXY`'s value (empty when unset).
    pub no_proxy: String,
}

impl ProxySettings {
    /// The proxy to reach `host:port` through; `None` when there is none or
    /// `NO_PROXY` names the host.
    pub fn for_target(&self, host: &str, port: u16) -> Option<&ProxyUrl> {
        let proxy = self.proxy.as_ref()?;
        (!no_proxy_matches(&self.no_proxy, host, port)).then_some(proxy)
    }

    /// `no_proxy` (first) or `NO_PROXY` from the environment, as curl reads them.
    pub fn no_proxy_from_env() -> String {
        ["no_proxy", "NO_PROXY"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
            .unwrap_or_default()
    }

    /// `https_proxy` (first) or `HTTPS_PROXY` from the environment, with the
    /// variable's name.
    pub fn proxy_from_env() -> Option<(String, &'static str)> {
        ["https_proxy", "HTTPS_PROXY"].iter().find_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (v, *k))
        })
    }
}

/// Why a tunnel through the proxy was not opened. Every message names the
/// proxy (password redacted), so it is never mistaken for the control
/// plane's failure.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy {proxy}: cannot connect: {error}")]
    Unreachable {
        proxy: String,
        error: std::io::Error,
    },
    #[error("proxy {proxy}: no answer to CONNECT {target} within {}s", .after.as_secs())]
    Timeout {
        proxy: String,
        target: String,
        after: Duration,
    },
    #[error("proxy {proxy}: {status} {reason} to CONNECT {target}: {hint}")]
    Auth {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "proxy {proxy}: {status} {reason} to CONNECT {target}: the proxy refused the tunnel, or could not reach {target} itself"
    )]
    Refused {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
    },
    #[error("proxy {proxy}: {detail}")]
    Protocol { proxy: String, detail: String },
}

impl ProxyError {
    /// The HTTP status the proxy answered CONNECT with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProxyError::Auth { status, .. } | ProxyError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A TCP connection to `host:port` through `proxy`, ready for TLS: connects
/// to the proxy, sends CONNECT (with the URL's credentials) and reads the
/// proxy's answer, all within `timeout`.
pub async fn tunnel(
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let target = authority(host, port);
    let timed_out = || ProxyError::Timeout {
        proxy: proxy.to_string(),
        target: target.clone(),
        after: timeout,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = tokio::time::timeout_at(
        deadline,
        TcpStream::connect((proxy.host.as_str(), proxy.port)),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|error| ProxyError::Unreachable {
        proxy: proxy.to_string(),
        error,
    })?;
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    tokio::time::timeout_at(deadline, handshake(&mut tcp, proxy, &target))
        .await
        .map_err(|_| timed_out())??;
    Ok(tcp)
}

/// Sends `CONNECT target` on `io` and reads the answer up to the blank line
/// (at most [`MAX_RESPONSE_BYTES`], one byte at a time so that nothing past
/// it — the tunnel's first bytes — is consumed). 2xx opens the tunnel.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    proxy: &ProxyUrl,
    target: &str,
) -> Result<(), ProxyError> {
    let protocol = |detail: String| ProxyError::Protocol {
        proxy: proxy.to_string(),
        detail,
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = proxy.authorization() {
        request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    let io_err = |e: std::io::Error| protocol(format!("CONNECT {target}: {e}"));
    io.write_all(request.as_bytes()).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_RESPONSE_BYTES {
            return Err(protocol(format!(
                "its answer to CONNECT {target} is over {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        match io.read(&mut byte).await.map_err(io_err)? {
            0 => {
                return Err(protocol(format!(
                    "closed the connection before answering CONNECT {target}{}",
                    if head.is_empty() { "" } else { " completely" }
                )));
            }
            _ => head.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next());
    let status = match (version, code.and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(s)) if v.starts_with("HTTP/1.") => s,
        _ => {
            return Err(protocol(format!(
                "not an HTTP answer to CONNECT {target}: {:?}",
                status_line.chars().take(80).collect::<String>()
            )));
        }
    };
    // What the proxy says is shown, but only as printable text.
    let reason: String = reason
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    match status {
        200..=299 => Ok(()),
        407 | 401 => Err(ProxyError::Auth {
            proxy: proxy.to_string(),
            target: target.to_string(),
            status,
            reason,
            hint: if proxy.user.is_some() {
                "the proxy refused the credentials in the proxy URL (check the user and password)"
            } else {
                "the proxy wants credentials: give them in the proxy URL, http://USER:PASS@HOST:PORT"
            },
        }),
        _ => Err(ProxyError::Refused {
            proxy: proxy.to_string(),
            target: target.to_string(),
            status,
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_matches_names_domains_addresses_and_blocks() {
        let m = no_proxy_matches;
        // Nothing configured: nothing bypasses, loopback included.
        assert!(!m("", "127.0.0.1", 443));
        assert!(!m("", "localhost", 443));
        assert!(m("*", "anything.example", 1));
        // Names: the name and its subdomains, leading dot optional, any case,
        // trailing dots ignored.
        assert!(m("example.com", "example.com", 1));
        assert!(m("example.com", "cp.example.com", 1));
        assert!(m(".example.com", "cp.example.com", 1));
        assert!(m(".example.com", "example.com", 1));
        assert!(m("Example.COM", "CP.example.com.", 1));
        assert!(m("example.com.", "cp.example.com", 1));
        assert!(!m("example.com", "badexample.com", 1));
        assert!(!m("cp.example.com", "example.com", 1));
        // Lists: commas, spaces around entries, empty entries.
        assert!(m(" a.test , ,b.test", "x.b.test", 1));
        assert!(!m("a.test,b.test", "c.test", 1));
        // Addresses and blocks match addresses only; no name is resolved.
        assert!(m("127.0.0.1", "127.0.0.1", 1));
        assert!(!m("127.0.0.1", "localhost", 1));
        assert!(!m("localhost", "127.0.0.1", 1));
        assert!(m("10.0.0.0/8", "10.1.2.3", 1));
        assert!(!m("10.0.0.0/8", "11.1.2.3", 1));
        assert!(m("192.168.1.0/24,::1", "192.168.1.77", 1));
        assert!(m("::1", "::1", 1));
        assert!(m("::1", "[::1]", 1));
        assert!(m("fd00::/8", "fd12::5", 1));
        assert!(!m("fd00::/8", "fe80::1", 1));
        assert!(m("0.0.0.0/0", "8.8.8.8", 1));
        assert!(!m("10.0.0.0/99", "10.0.0.1", 1));
        // Ports: an entry with one matches that port only.
        assert!(m("cp.example:8443", "cp.example", 8443));
        assert!(!m("cp.example:8443", "cp.example", 443));
        assert!(m("[::1]:8443", "::1", 8443));
        assert!(!m("[::1]:8443", "::1", 9));
        assert!(m("127.0.0.1:8443", "127.0.0.1", 8443));
    }

    #[test]
    fn proxy_urls_parse_and_never_show_the_password() {
        let p = ProxyUrl::parse("http://al%40ice:s3cr%3At@proxy.lan:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.lan", 3128));
        assert_eq!(p.user.as_deref(), Some("al@ice"));
        assert_eq!(p.password.as_deref(), Some("s3cr:t"));
        assert_eq!(p.to_string(), "http://al@ice:***@proxy.lan:3128");
        assert!(!format!("{p:?}").contains("s3cr"));
        // Basic al@ice:s3cr:t
        assert_eq!(p.authorization().unwrap(), "Basic YWxAaWNlOnMzY3I6dA==");
        let p = ProxyUrl::parse("proxy.lan").unwrap();
        assert_eq!((p.port, p.authorization()), (1080, None));
        assert_eq!(p.to_string(), "http://proxy.lan:1080");
        let p = ProxyUrl::parse("HTTP://[fd00::1]:8080").unwrap();
        assert_eq!(p.authority(), "[fd00::1]:8080");
        for bad in [
            "https://proxy:443",
            "socks5://proxy:1080",
            "http://",
            "http://proxy:port",
            "http://proxy:0",
            "http://proxy:1/path",
            "http://u:%zz@proxy:1",
        ] {
            assert!(ProxyUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_route_around_the_proxy_only_for_no_proxy_hosts() {
        let s = ProxySettings {
            proxy: Some(ProxyUrl::parse("http://p:1").unwrap()),
            source: "--proxy".into(),
            no_proxy: "internal.lan".into(),
        };
        assert!(s.for_target("127.0.0.1", 8443).is_some());
        assert!(s.for_target("cp.internal.lan", 8443).is_none());
        assert!(ProxySettings::default().for_target("x", 1).is_none());
    }

    /// Runs the handshake against a scripted proxy; returns what the proxy
    /// read and the result.
    async fn against(answer: &'static [u8], url: &str) -> (String, Result<(), ProxyError>) {
        let (mut client, mut server) = tokio::io::duplex(64 << 10);
        let proxy = ProxyUrl::parse(url).unwrap();
        let peer = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            server.write_all(answer).await.unwrap();
            // The tunnel's first byte must stay for whoever reads next.
            server.write_all(b"!").await.unwrap();
            (String::from_utf8(got).unwrap(), server)
        });
        let r = handshake(&mut client, &proxy, "cp.example:8443").await;
        let (got, _server) = peer.await.unwrap();
        if r.is_ok() {
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"!", "the handshake read past the proxy's answer");
        }
        (got, r)
    }

    #[tokio::test]
    async fn the_connect_handshake() {
        let (req, r) = against(
            b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n",
            "http://user:pass@p:1",
        )
        .await;
        r.unwrap();
        assert_eq!(
            req,
            "CONNECT cp.example:8443 HTTP/1.1\r\nHost: cp.example:8443\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n"
        );
        let (req, r) = against(b"HTTP/1.0 200 OK\r\n\r\n", "http://p:1").await;
        r.unwrap();
        assert!(!req.contains("Proxy-Authorization"), "{req}");

        let (_, r) = against(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
            "http://p:1",
        )
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.status(), Some(407));
        let text = e.to_string();
        assert!(
            text.starts_with("proxy http://p:1: 407 Proxy Authentication Required")
                && text.contains("wants credentials"),
            "{text}"
        );
        let (_, r) = against(b"HTTP/1.0 401 Unauthorized\r\n\r\n", "http://u:secret@p:1").await;
        let text = r.unwrap_err().to_string();
        assert!(
            text.contains("401 Unauthorized") && text.contains("refused the credentials"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        let (_, r) = against(b"HTTP/1.1 403 Filtered\x1b[2J\r\n\r\n", "http://p:1").await;
        let text = r.unwrap_err().to_string();
        assert!(text.contains("403 Filtered[2J"), "{text}");
        assert!(!text.contains('\u{1b}'));
        let (_, r) = against(b"SSH-2.0-OpenSSH\r\n\r\n", "http://p:1").await;
        assert!(matches!(r, Err(ProxyError::Protocol { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn the_answer_is_bounded_in_size_and_time() {
        // An endless header: refused at the bound.
        let (mut client, mut server) = tokio::io::duplex(64 << 10);
        let proxy = ProxyUrl::parse("http://p:1").unwrap();
        let feeder = tokio::spawn(async move {
            let _ = server.write_all(b"HTTP/1.1 200 OK\r\n").await;
            loop {
                if server
                    .write_all(b"X-Pad: aaaaaaaaaaaaaaaa\r\n")
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let r = handshake(&mut client, &proxy, "cp:1").await;
        assert!(
            r.as_ref()
                .is_err_and(|e| e.to_string().contains("over 8192 bytes")),
            "{r:?}"
        );
        drop(client);
        feeder.await.unwrap();
        // A proxy that accepts and never answers: a timeout naming it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(s);
        });
        let proxy = ProxyUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = tunnel(&proxy, "cp", 1, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains("no answer to CONNECT cp:1"), "{e}");
    }

    #[tokio::test]
    async fn a_proxy_not_listening_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let proxy = ProxyUrl::parse(&format!("http://u:pw@127.0.0.1:{port}")).unwrap();
        let e = tunnel(&proxy, "cp", 1, Duration::from_secs(5))
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, ProxyError::Unreachable { error, .. } if error.kind() == std::io::ErrorKind::ConnectionRefused),
            "{e:?}"
        );
        assert!(
            text.starts_with(&format!(
                "proxy http://u:***@127.0.0.1:{port}: cannot connect"
            )),
            "{text}"
        );
    }
}
