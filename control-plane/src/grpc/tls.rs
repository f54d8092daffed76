//! TLS for the device service: our CA is the only trust anchor for client
//! certificates, which are optional at the handshake (enrollment has none)
//! and required per RPC by [`super::auth`].

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::pki::{Ca, PkiError};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused connection is kept half-open so its alert arrives.
const REFUSED_LINGER: Duration = Duration::from_secs(1);
/// Handshakes in progress at once; more wait in the accept queue.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;

pub fn server_config(
    ca: &Ca,
    names: &[String],
    expired_grace: Duration,
) -> Result<ServerConfig, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .map_err(|e| PkiError::Invalid(format!("CA certificate unusable as trust anchor: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
    let (chain, key) = ca.issue_server_cert(names, time::OffsetDateTime::now_utc())?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Invalid(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(Arc::new(GraceVerifier {
            inner: verifier,
            grace: expired_grace,
        }))
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::Invalid(format!("server certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Our CA's verifier, except that a certificate which expired less than
/// `grace` ago is accepted (verified as of just before its expiry): such a
/// device may still rotate (`ResetConnection`), and `auth` refuses every
/// other RPC for it. Past the grace window the handshake fails as expired.
#[derive(Debug)]
struct GraceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    grace: Duration,
}

impl ClientCertVerifier for GraceVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => {
                let not_after = crate::pki::parse_device_cert(end_entity)
                    .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::Expired))?
                    .not_after_unix;
                let not_after = u64::try_from(not_after).unwrap_or(0);
                if now.as_secs() > not_after.saturating_add(self.grace.as_secs()) {
                    return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
                }
                let just_before =
                    UnixTime::since_unix_epoch(Duration::from_secs(not_after.saturating_sub(1)));
                self.inner
                    .verify_client_cert(end_entity, intermediates, just_before)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts TCP connections and yields completed TLS sessions. Handshakes run
/// concurrently with a timeout so a slow or silent peer cannot stall accept.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    mut shutdown: oneshot::Receiver<()>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                res = listener.accept() => res,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let handshake = acceptor.accept(tcp).into_fallible();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err((e, tcp))) => {
                        tracing::info!(%peer, "TLS handshake refused: {e}");
                        close_refused(tcp).await;
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Closes a connection whose handshake was refused so that the TLS alert
/// (say `certificate_expired`, which tells an agent to rotate) reaches the
/// peer: half-close after the alert, then read and discard until the peer
/// closes or [`REFUSED_LINGER`] passes. Dropping the socket at once would
/// make the kernel answer the bytes the client sent after its Finished
/// (TLS 1.3 clients send data before the server's verdict) with a reset,
/// and a reset can overtake the alert: the agent would see "connection
/// reset" and retry with backoff instead of rotating.
async fn close_refused(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(REFUSED_LINGER, async {
        while let Ok(n) = tcp.read(&mut sink).await
            && n > 0
        {}
    })
    .await;
}
