//! TLS for the device service: our CA is the only trust anchor for client
//! certificates, which are optional at the handshake (enrollment has none)
//! and required per RPC by [`super::auth`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::conn_limits::{Activity, ConnTable, Deadlines, GuardedIo};
use crate::pki::{Ca, PkiError};

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

/// How the device listener treats connections (from `--grpc-max-connections`
/// and friends).
#[derive(Clone)]
pub struct Listening {
    pub table: Arc<ConnTable>,
    pub client_hello_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Deadlines of a connection with a client certificate; one without
    /// gets `unauthenticated_lifetime` as well.
    pub deadlines: Deadlines,
    pub unauthenticated_lifetime: Duration,
    /// Where requests find their connection's [`Activity`].
    pub connections: Arc<Connections>,
}

/// The open connections' [`Activity`] by peer address (unique among open
/// connections of one listener), so that a request, which carries only
/// tonic's connect info, can count itself in flight on its connection.
#[derive(Default)]
pub struct Connections(Mutex<HashMap<SocketAddr, Arc<Activity>>>);

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Activity>>> {
        // A map of plain inserts and removes stays usable after a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, peer: &SocketAddr) -> Option<Arc<Activity>> {
        self.lock().get(peer).cloned()
    }

    fn register(self: &Arc<Self>, peer: SocketAddr, a: Arc<Activity>) -> Registration {
        self.lock().insert(peer, a.clone());
        Registration {
            map: self.clone(),
            peer,
            activity: a,
        }
    }
}

/// Removes a connection from [`Connections`] when it closes — its own
/// entry only: a new connection from the same address and port (NAT
/// reuse) may have replaced it while this one wound down.
struct Registration {
    map: Arc<Connections>,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if map
            .get(&self.peer)
            .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
        {
            map.remove(&self.peer);
        }
    }
}

/// A device connection as tonic serves it: the TLS session, its permit and
/// deadlines. Its connect info is the TLS session's, so
/// `Request::peer_certs` works as for a bare `TlsStream`.
pub type DeviceConn = GuardedIo<TlsStream<TcpStream>>;

impl tonic::transport::server::Connected for DeviceConn {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}

/// Accepts TCP connections and yields completed TLS sessions. A connection
/// is refused at once (closed) when the listener or its source address
/// holds its cap of connections, or its address its cap of handshakes in
/// progress; the ClientHello must arrive within `client_hello_timeout` and
/// the whole handshake end within `handshake_timeout`, both from accept.
/// At most [`MAX_CONCURRENT_HANDSHAKES`] handshakes past their ClientHello
/// run at once; more wait for a turn (within their timeout).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    limits: Listening,
    mut shutdown: oneshot::Receiver<()>,
) -> ReceiverStream<Result<DeviceConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
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
            let accepted_at = Instant::now();
            let conn = match limits.table.admit(peer.ip()) {
                Ok(p) => p,
                Err(why) => {
                    tracing::debug!(%peer, reason = why.label(), "connection refused");
                    continue;
                }
            };
            let pending = match conn.begin_handshake() {
                Ok(p) => p,
                Err(why) => {
                    tracing::debug!(%peer, reason = why.label(), "connection refused");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // The accept loop never waits: a connection waits for its
            // ClientHello in its own task (bounded by the caps above and the
            // ClientHello timeout), and only then for a handshake permit,
            // so stalled ClientHellos from a few addresses cannot hold the
            // permits and stop accepting.
            let permits = permits.clone();
            let tls = tls.clone();
            let tx = tx.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let Some(stream) = handshake(tcp, peer, tls, &limits, accepted_at, permits).await
                else {
                    return;
                };
                drop(pending);
                let unauthenticated = stream.get_ref().1.peer_certificates().is_none();
                let deadlines = Deadlines {
                    lifetime: unauthenticated.then_some(limits.unauthenticated_lifetime),
                    ..limits.deadlines
                };
                let activity = Activity::new(Instant::now());
                let registration = limits.connections.register(peer, activity.clone());
                let io = GuardedIo::new(
                    stream,
                    conn,
                    activity,
                    deadlines,
                    Some(Box::new(registration)),
                );
                let _ = tx.send(Ok(io)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The TLS handshake of one connection: its ClientHello within
/// `client_hello_timeout` of accept, then (holding one of the handshake
/// permits, for the work that costs CPU) all of it within
/// `handshake_timeout` of accept.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<ServerConfig>,
    limits: &Listening,
    accepted_at: Instant,
    permits: Arc<Semaphore>,
) -> Option<TlsStream<TcpStream>> {
    let closed = |reason: &str| limits.table.metrics().closed(reason).inc();
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let hello_deadline = accepted_at + limits.client_hello_timeout;
    let start = match tokio::time::timeout_at(hello_deadline, hello).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake refused: {e}");
            return None;
        }
        Err(_) => {
            closed("client_hello_timeout");
            tracing::info!(%peer, "TLS ClientHello timed out");
            return None;
        }
    };
    let rest = async {
        // The semaphore is never closed: this always holds a permit.
        let _permit = permits.acquire_owned().await;
        start.into_stream(tls).into_fallible().await
    };
    match tokio::time::timeout_at(accepted_at + limits.handshake_timeout, rest).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err((e, tcp))) => {
            tracing::info!(%peer, "TLS handshake refused: {e}");
            close_refused(tcp).await;
            None
        }
        Err(_) => {
            closed("handshake_timeout");
            tracing::info!(%peer, "TLS handshake timed out");
            None
        }
    }
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
