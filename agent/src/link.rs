//! The agent's link to the control plane: server URL, TLS trust (CA file or
//! pinned CA fingerprint), client identity, and the gRPC channel over it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::v1::device_service_client::DeviceServiceClient;
use ring::digest;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

use crate::proxy::{ProxyError, ProxySettings};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{0}")]
    Trust(String),
    #[error("cannot connect to {server}: {detail}")]
    Connect { server: String, detail: String },
    /// The proxy failed, not the control plane: `message` names the proxy
    /// (password redacted); `status` is its answer to CONNECT, if any.
    #[error("{message}")]
    Proxy {
        message: String,
        status: Option<u16>,
    },
    #[error("{}", rpc_text(.0))]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
}

/// A gRPC status as a person reads it: the control plane's message and the
/// code's name, not tonic's `code: '…', message: "…"` form.
fn rpc_text(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    match status.message() {
        "" => format!("the control plane answered {code}"),
        msg => format!("{msg} ({code})"),
    }
}

impl LinkError {
    /// The control plane's machine-readable reason for refusing or cutting
    /// us (`outpost_proto::reason`), if it gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            LinkError::Rpc(status) => status
                .metadata()
                .get(outpost_proto::reason::METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            _ => None,
        }
    }
}

/// `https://host[:port]` of the control plane's device service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub host: String,
    pub port: u16,
}

impl ServerUrl {
    pub fn parse(raw: &str) -> Result<Self, LinkError> {
        let bad = |reason: &str| LinkError::BadUrl {
            url: raw.to_string(),
            reason: reason.to_string(),
        };
        let rest = raw
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https:// (the device link is always TLS)"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected https://HOST:PORT with no path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("port must be a number"))?,
                None if after.is_empty() => 443,
                None => return Err(bad("unexpected text after ]")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| bad("port must be a number"))?,
                ),
                None => (authority.to_string(), 443),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Self { host, port })
    }

    fn server_name(&self) -> Result<ServerName<'static>, LinkError> {
        ServerName::try_from(self.host.clone()).map_err(|_| {
            LinkError::Trust(format!("{:?} is not a valid TLS server name", self.host))
        })
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// How the agent decides that it talks to the right control plane.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Trust anchors from a PEM file (the control plane's `pki/ca.crt`).
    CaCerts(Vec<CertificateDer<'static>>),
    /// `sha256:<hex>` of the CA certificate, as `kubeadm join` pins it. The
    /// server sends its CA in the chain; it must hash to this value.
    /// `source` names where the value came from, for a mismatch's message.
    Fingerprint { sha256: [u8; 32], source: String },
}

/// `sha256:<hex>` of DER bytes.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(digest::digest(&digest::SHA256, der))
    )
}

impl Trust {
    pub fn from_ca_file(path: &Path) -> Result<Self, LinkError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| LinkError::Trust(format!("cannot read CA file {}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| {
                LinkError::Trust(format!("CA file {} is not valid PEM: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(LinkError::Trust(format!(
                "CA file {} holds no certificate",
                path.display()
            )));
        }
        Ok(Trust::CaCerts(certs))
    }

    /// A pinned CA fingerprint: `sha256:<64 hex digits>`, the hex digits
    /// also colon-separated and in either case, or openssl's
    /// `SHA256 Fingerprint=AB:CD:…` as `openssl x509 -fingerprint -sha256`
    /// prints it. `source` names where it came from (a flag, the
    /// environment, the config file).
    pub fn from_fingerprint(raw: &str, source: &str) -> Result<Self, LinkError> {
        let bad = || {
            LinkError::Trust(format!(
                "CA fingerprint {raw:?} (from {source}) must be sha256:<64 hex digits> (colons allowed, as openssl prints them)"
            ))
        };
        let t = raw.trim();
        let lower = t.to_ascii_lowercase();
        let hexpart = ["sha256:", "sha256 fingerprint="]
            .iter()
            .find_map(|p| lower.strip_prefix(p))
            .ok_or_else(bad)?;
        let digits: String = hexpart.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(digits.trim()).map_err(|_| bad())?;
        let sha256: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Trust::Fingerprint {
            sha256,
            source: source.to_string(),
        })
    }

    /// Whether `cert` is the pinned CA (always true for CA-file trust, whose
    /// check is the chain verification itself).
    pub fn accepts_ca(&self, cert: &[u8]) -> bool {
        match self {
            Trust::CaCerts(certs) => certs.iter().any(|c| c.as_ref() == cert),
            Trust::Fingerprint { sha256, .. } => {
                digest::digest(&digest::SHA256, cert).as_ref() == sha256
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client TLS config: server verified per `trust`; `identity` (chain, key)
/// presented when given.
pub fn client_config(
    trust: &Trust,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, LinkError> {
    client_config_at(trust, identity, crate::clock::Clock::new(None))
}

/// [`client_config`] checking certificates against `time` (the agent's
/// floored clock) instead of the raw system clock.
pub fn client_config_at(
    trust: &Trust,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    time: Arc<dyn rustls::time_provider::TimeProvider>,
) -> Result<Arc<ClientConfig>, LinkError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::CaCerts(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| LinkError::Trust(format!("unusable CA certificate: {e}")))?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| LinkError::Trust(format!("server verifier: {e}")))?
        }
        Trust::Fingerprint { sha256, source } => Arc::new(PinnedCaVerifier {
            fingerprint: *sha256,
            source: source.clone(),
            provider: provider.clone(),
        }),
    };
    let builder = ClientConfig::builder_with_details(provider, time)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Trust(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| LinkError::Trust(format!("device certificate/key unusable: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Verifies the server against the CA certificate in its own chain whose
/// SHA-256 equals the pin; full WebPKI path validation otherwise.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    /// Where the pin came from (named when it does not match).
    source: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| digest::digest(&digest::SHA256, c.as_ref()).as_ref() == self.fingerprint)
            .ok_or_else(|| {
                let presented = match intermediates.last() {
                    Some(ca) => sha256_fingerprint(ca.as_ref()),
                    None => "no CA certificate in its chain".to_string(),
                };
                rustls::Error::General(format!(
                    "the control plane's CA does not match the pinned fingerprint: it presented {presented}, but {} pins sha256:{} (check the value, or compare with `openssl x509 -noout -fingerprint -sha256 -in ca.crt` on the control plane)",
                    self.source,
                    hex::encode(self.fingerprint)
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("verifier: {e}")))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens a gRPC channel to `server` over TLS with `tls`, directly.
pub async fn connect(server: &ServerUrl, tls: Arc<ClientConfig>) -> Result<Channel, LinkError> {
    connect_via(server, &ProxySettings::default(), tls).await
}

/// Opens a gRPC channel to `server` over TLS with `tls`, through the proxy
/// `proxy` names for it (an HTTP CONNECT tunnel; TLS is end to end inside
/// it), or directly.
pub async fn connect_via(
    server: &ServerUrl,
    proxy: &ProxySettings,
    tls: Arc<ClientConfig>,
) -> Result<Channel, LinkError> {
    let server_name = server.server_name()?;
    let host = server.host.clone();
    let port = server.port;
    let via = proxy.for_target(&host, port).cloned();
    // The scheme here only labels HTTP/2 requests; TLS is done by our
    // connector below, with our verifier.
    let endpoint = Endpoint::from_shared(format!("http://{}", authority(&host, port)))
        .map_err(|e| LinkError::BadUrl {
            url: server.to_string(),
            reason: e.to_string(),
        })?
        // Through a proxy: its own bound (reaching it and its answer to
        // CONNECT) comes first, then the TLS handshake's.
        .connect_timeout(match via {
            Some(_) => crate::proxy::HANDSHAKE_TIMEOUT + Duration::from_secs(10),
            None => Duration::from_secs(10),
        })
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        let host = host.clone();
        let server_name = server_name.clone();
        let via = via.clone();
        async move {
            let tcp = match &via {
                Some(p) => crate::proxy::tunnel(p, &host, port, crate::proxy::HANDSHAKE_TIMEOUT)
                    .await
                    .map_err(std::io::Error::other)?,
                None => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    tcp.set_nodelay(true)?;
                    tcp
                }
            };
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| match find_proxy_error(&e) {
            Some(p) => LinkError::Proxy {
                message: p.to_string(),
                status: p.status(),
            },
            None => LinkError::Connect {
                server: server.to_string(),
                detail: describe_transport_error(&e),
            },
        })
}

/// The proxy's failure among an error's sources (inside an `io::Error`,
/// which `source()` steps over).
fn find_proxy_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ProxyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<ProxyError>() {
            return Some(p);
        }
        if let Some(p) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<ProxyError>())
        {
            return Some(p);
        }
        cur = err.source();
    }
    None
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A gRPC client with our message-size bounds.
pub fn client(channel: Channel) -> DeviceServiceClient<Channel> {
    DeviceServiceClient::new(channel)
        .max_decoding_message_size(outpost_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(outpost_proto::MAX_MESSAGE_BYTES)
}

/// How a certificate refused as expired past the grace window is described;
/// the daemon looks for it to stop and say the box needs a new install ID.
pub const EXPIRED_BEYOND_GRACE: &str = "certificate expired beyond the grace window";

/// Whether the error is the control plane refusing our certificate as expired
/// (beyond the grace window, or the handshake would have passed).
#[cfg(test)]
#[test]
fn rpc_errors_read_as_the_control_planes_message() {
    let e = LinkError::Rpc(tonic::Status::unauthenticated(
        "this certificate has been revoked",
    ));
    assert_eq!(
        e.to_string(),
        "this certificate has been revoked (Unauthenticated)"
    );
    let e = LinkError::Rpc(tonic::Status::unavailable(""));
    assert_eq!(e.to_string(), "the control plane answered Unavailable");
}

pub fn is_expired_beyond_grace(e: &LinkError) -> bool {
    match e {
        LinkError::Connect { detail, .. } => detail.contains(EXPIRED_BEYOND_GRACE),
        LinkError::Rpc(status) => {
            let mut cur: Option<&(dyn std::error::Error + 'static)> =
                std::error::Error::source(status);
            while let Some(err) = cur {
                if matches!(
                    find_rustls_error(err),
                    Some(rustls::Error::AlertReceived(
                        rustls::AlertDescription::CertificateExpired
                    ))
                ) {
                    return true;
                }
                cur = err.source();
            }
            // hyper does not always expose the TLS error as a source;
            // its debug form always names the alert.
            format!("{status:?}").contains("CertificateExpired")
        }
        _ => false,
    }
}

/// Walks an error's sources and names clock-caused TLS failures plainly:
/// on boxes without an RTC these are the usual cause, and they need a
/// different fix (time sync) than a wrong CA.
pub fn describe_transport_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(err) = cur {
        if let Some(tls) = find_rustls_error(err) {
            return match tls {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
                    ..
                }) => {
                    format!(
                        "TLS failed because of the clock: a certificate has expired (is this box's time right?): {tls}"
                    )
                }
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidYetContext { .. },
                ) => {
                    format!(
                        "TLS failed because of the clock: a certificate is not valid yet (is this box's time right?): {tls}"
                    )
                }
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired) => {
                    format!(
                        "{EXPIRED_BEYOND_GRACE}: the control plane refused this box's certificate as expired"
                    )
                }
                rustls::Error::InvalidMessage(_) => format!(
                    "TLS error: {tls} — the server did not answer with TLS: is this the control plane's plain-HTTP REST port? The device endpoint is its gRPC port (8443 by default)"
                ),
                other => format!("TLS error: {other}"),
            };
        }
        innermost = err.to_string();
        cur = err.source();
    }
    innermost
}

fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = err.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    err.downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        assert_eq!(
            ServerUrl::parse("https://cp.example:8443").unwrap(),
            ServerUrl {
                host: "cp.example".into(),
                port: 8443
            }
        );
        assert_eq!(ServerUrl::parse("https://cp.example/").unwrap().port, 443);
        assert_eq!(ServerUrl::parse("https://[::1]:9000").unwrap().host, "::1");
        assert_eq!(
            ServerUrl::parse("https://[::1]:9000").unwrap().to_string(),
            "https://[::1]:9000"
        );
        for bad in [
            "http://x:1",
            "x:1",
            "https://",
            "https://x:port",
            "https://x:1/path",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn parses_fingerprints() {
        let want = [0xab; 32];
        for form in [
            format!("sha256:{}", "ab".repeat(32)),
            format!("sha256:{}", "AB".repeat(32)),
            // openssl x509 -noout -fingerprint -sha256
            format!("SHA256 Fingerprint={}", vec!["AB"; 32].join(":")),
            format!("sha256:{}", vec!["ab"; 32].join(":")),
        ] {
            match Trust::from_fingerprint(&form, "--ca-fingerprint") {
                Ok(Trust::Fingerprint { sha256, source }) => {
                    assert_eq!(sha256, want, "{form}");
                    assert_eq!(source, "--ca-fingerprint");
                }
                other => panic!("{form}: {other:?}"),
            }
        }
        assert!(Trust::from_fingerprint("sha256:abcd", "x").is_err());
        // The algorithm must be named.
        assert!(Trust::from_fingerprint(&"ab".repeat(32), "x").is_err());
        let e = Trust::from_fingerprint(
            &format!("sha256:{}", "zz".repeat(32)),
            "OUTPOST_CA_FINGERPRINT",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("OUTPOST_CA_FINGERPRINT"), "{e}");
    }

    #[test]
    fn names_clock_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet),
        );
        let text = describe_transport_error(&io);
        assert!(text.contains("because of the clock"), "{text}");
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let text = describe_transport_error(&io);
        assert!(text.starts_with("TLS error"), "{text}");
    }

    #[test]
    fn a_pin_mismatch_names_what_the_server_presented_and_where_the_pin_came_from() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = rcgen::CertificateParams::new(vec!["cp.example".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let verifier = PinnedCaVerifier {
            fingerprint: [0x11; 32],
            source: "OUTPOST_CA_FINGERPRINT (environment)".into(),
            provider: provider(),
        };
        let err = verifier
            .verify_server_cert(
                leaf.der(),
                &[ca.der().clone()],
                &ServerName::try_from("cp.example").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains(&sha256_fingerprint(ca.der())), "{err}");
        assert!(
            err.contains("OUTPOST_CA_FINGERPRINT (environment)"),
            "{err}"
        );
        assert!(err.contains(&"11".repeat(32)), "{err}");
        // The right pin passes.
        let ok = PinnedCaVerifier {
            fingerprint: digest::digest(&digest::SHA256, ca.der())
                .as_ref()
                .try_into()
                .unwrap(),
            source: "x".into(),
            provider: provider(),
        };
        ok.verify_server_cert(
            leaf.der(),
            &[ca.der().clone()],
            &ServerName::try_from("cp.example").unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap();
    }

    #[test]
    fn a_plain_http_answer_is_named_as_the_wrong_port() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        let text = describe_transport_error(&io);
        assert!(
            text.contains("REST port") && text.contains("8443"),
            "{text}"
        );
    }
}
