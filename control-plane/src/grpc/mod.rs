//! The device side: `outpost.device.v1.DeviceService` over TLS, client
//! certificates required for everything but enrollment.

mod artifacts;
pub(crate) mod auth;
pub mod commit;
pub(crate) mod convert;
mod enroll;
mod enroll_token;
mod rotate;
mod session;
mod telemetry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::v1::device_service_server::{DeviceService, DeviceServiceServer};
use outpost_proto::v1::{
    AgentMessage, ArtifactChunk, CheckEnrollmentRequest, CheckEnrollmentResponse, EnrollRequest,
    EnrollResponse, FetchArtifactRequest, LogAck, LogBatch, ResetConnectionRequest,
    ResetConnectionResponse, ServerMessage, TelemetryAck, TelemetryBatch,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::store::StoreError;

pub use auth::DeviceIdentity;

/// Settings pushed to agents at session start. A telemetry interval of 0
/// means "no server-side opinion": the agent keeps its own configured
/// interval (per-device configuration arrives with the config API).
pub const TELEMETRY_INTERVAL_SECS: u32 = 0;
pub const HEARTBEAT_INTERVAL_SECS: u32 = 10;

pub struct DeviceServiceImpl {
    state: Arc<AppState>,
}

#[tonic::async_trait]
impl DeviceService for DeviceServiceImpl {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        enroll::enroll(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let identity = auth::authenticate(&self.state, &request, auth::Expired::Refuse).await?;
        Ok(Response::new(session::start(
            self.state.clone(),
            identity,
            request.into_inner(),
        )))
    }

    async fn check_enrollment(
        &self,
        request: Request<CheckEnrollmentRequest>,
    ) -> Result<Response<CheckEnrollmentResponse>, Status> {
        enroll::check_enrollment(&self.state, request)
            .await
            .map(Response::new)
    }

    async fn reset_connection(
        &self,
        request: Request<ResetConnectionRequest>,
    ) -> Result<Response<ResetConnectionResponse>, Status> {
        let identity = auth::authenticate(&self.state, &request, auth::Expired::Allow).await?;
        rotate::reset_connection(&self.state, &identity, request.into_inner())
            .await
            .map(Response::new)
    }

    type FetchArtifactStream = ReceiverStream<Result<ArtifactChunk, Status>>;

    async fn fetch_artifact(
        &self,
        request: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let identity = auth::authenticate(&self.state, &request, auth::Expired::Refuse).await?;
        artifacts::fetch(self.state.clone(), &identity, request.into_inner())
            .await
            .map(Response::new)
    }

    type PushLogsStream = ReceiverStream<Result<LogAck, Status>>;

    async fn push_logs(
        &self,
        request: Request<Streaming<LogBatch>>,
    ) -> Result<Response<Self::PushLogsStream>, Status> {
        let identity = auth::authenticate(&self.state, &request, auth::Expired::Refuse).await?;
        Ok(Response::new(telemetry::start_logs(
            self.state.clone(),
            identity,
            request.into_inner(),
        )))
    }

    type PushTelemetryStream = ReceiverStream<Result<TelemetryAck, Status>>;

    async fn push_telemetry(
        &self,
        request: Request<Streaming<TelemetryBatch>>,
    ) -> Result<Response<Self::PushTelemetryStream>, Status> {
        let identity = auth::authenticate(&self.state, &request, auth::Expired::Refuse).await?;
        Ok(Response::new(telemetry::start(
            self.state.clone(),
            identity,
            request.into_inner(),
        )))
    }
}

/// Serves the device service on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: Arc<AppState>,
    limits: tls::Listening,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let connections = limits.connections.clone();
    let table = limits.table.clone();
    let incoming = tls::incoming(listener, Arc::new(tls), limits, shutdown_rx);
    let service = DeviceServiceServer::new(DeviceServiceImpl { state })
        .max_decoding_message_size(outpost_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(outpost_proto::MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        // Dead links (power cut, cable pulled) are noticed within ~20 s, so
        // the device turns offline even when no FIN ever arrives.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(tower::layer::layer_fn(move |inner| TrackStreams {
            inner,
            connections: connections.clone(),
        }))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = shutdown_tx.send(());
            // GOAWAY goes to every connection (tonic's graceful shutdown);
            // they also close as soon as their streams have ended, so
            // agents reconnect to the next process without waiting for
            // the drain timeout.
            table.drain();
        })
        .await
}

/// Counts each RPC as in flight on its connection (found by the peer
/// address of tonic's connect info) until its response ends, for the idle
/// timeout of [`crate::conn_limits`].
#[derive(Clone)]
struct TrackStreams<S> {
    inner: S,
    connections: Arc<tls::Connections>,
}

type TlsInfo = tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>;

impl<S, B, RB> tower::Service<http::Request<B>> for TrackStreams<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: http_body::Body + Unpin,
{
    type Response = http::Response<crate::conn_limits::TrackedBody<RB>>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let in_flight = req
            .extensions()
            .get::<TlsInfo>()
            .and_then(|i| i.get_ref().remote_addr())
            .and_then(|peer| self.connections.get(&peer))
            .map(|a| a.begin());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|b| crate::conn_limits::TrackedBody::new(b, in_flight)))
        })
    }
}

/// Runs `task` with the sending half of a response stream and returns the
/// receiving half to tonic: how every server-streaming RPC here is built.
pub(crate) fn spawn_stream<T, F, Fut>(task: F) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(task(tx));
    ReceiverStream::new(rx)
}

/// Maps a storage failure to a retryable gRPC status, logging the detail.
pub(crate) fn store_status(e: StoreError) -> Status {
    tracing::error!("store error: {e}");
    store_unavailable()
}

/// The answer for a store error already logged.
pub(crate) fn store_unavailable() -> Status {
    Status::unavailable("the control plane's store is unavailable; retry later")
}
