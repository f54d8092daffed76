//! The operator side: the Deployment Manager compatible REST API under
//! `/{workspace}/devices/v2`, plus health probes.

mod artifacts;
pub mod audit;
mod auth;
mod config;
mod dashboard;
mod devices;
mod downloads;
pub mod error;
mod events;
pub mod fleet_metrics;
pub mod limits;
mod logs;
mod metrics;
pub mod openapi;
pub(crate) mod pagination;
pub(crate) mod params;
mod rollouts;
mod stream;
mod telemetry;
mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as AutoBuilder;
use hyper_util::service::TowerToHyperService;

use crate::AppState;
use crate::conn_limits::{Activity, ConnTable, Deadlines, GuardedIo, Refused, TrackedBody};
use error::ApiError;

/// Request bodies are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every documented route; the OpenAPI document is collected from here.
pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    limited_routes().merge(streamed_routes())
}

/// Routes whose request bodies are streamed, large, and slow to arrive:
/// outside the body limit and the request timeout of the others (they
/// bound their bodies and idle time themselves).
fn streamed_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(artifacts::upload_payload))
}

/// The routes under [`MAX_BODY_BYTES`] and the request timeout.
fn limited_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(devices::list, devices::create))
        .routes(routes!(config::default_config))
        .routes(routes!(devices::get_one, devices::update, devices::delete))
        .routes(routes!(telemetry::series))
        .routes(routes!(telemetry::raw))
        .routes(routes!(stream::stream))
        .routes(routes!(logs::list))
        .routes(routes!(events::list))
        .routes(routes!(config::get, config::put, config::patch))
        .routes(routes!(config::versions))
        .routes(routes!(devices::reset_connection))
        .routes(routes!(devices::new_install_id))
        .routes(routes!(downloads::install_script))
        .routes(routes!(downloads::list))
        .routes(routes!(downloads::file))
        .routes(routes!(audit::list))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(artifacts::list, artifacts::create))
        .routes(routes!(artifacts::get_one, artifacts::delete))
        .routes(routes!(rollouts::list, rollouts::create))
        .routes(routes!(rollouts::get_one))
        .routes(routes!(rollouts::pause))
        .routes(routes!(rollouts::resume))
        .routes(routes!(rollouts::abort))
        .routes(routes!(rollouts::approve))
}

pub fn router(state: Arc<AppState>) -> Router {
    let doc = openapi::document();
    let (router, _) = limited_routes().split_for_parts();
    let (streamed, _) = streamed_routes().split_for_parts();
    let audit = Arc::new(audit::AuditContext::new(state.clone(), &doc));
    let doc = Arc::new(doc);
    router
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route("/metrics", get(metrics::metrics))
        .merge(dashboard::router())
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .merge(streamed)
        .fallback(|| async { ApiError::not_found("no such route") })
        // Spans carry the path only: a query string may hold `api_key=`.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        // Sees every answer (timeouts and body limits too).
        .layer(axum::middleware::from_fn_with_state(audit, audit::record))
        // Every error the REST port sends is `{"error": …}`.
        .layer(axum::middleware::from_fn(error::json_errors))
        // Before everything: request heads too large for us, refused in
        // our JSON shape (hyper's own, larger limits answer with empty bodies).
        .layer(axum::middleware::from_fn(head_limits))
        .with_state(state)
}

/// The longest request target (path and query) served: 414 beyond.
pub const MAX_URI_BYTES: usize = 16 * 1024;
/// Header lines per request: 431 beyond (hyper itself refuses more than
/// [`HYPER_MAX_HEADERS`], with an empty body).
pub const MAX_HEADERS: usize = 100;
/// Header bytes (names and values) per request: 431 beyond.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper's own HTTP/1 header count limit, above ours so that ours answers.
const HYPER_MAX_HEADERS: usize = 200;

/// Refuses request heads over [`MAX_URI_BYTES`], [`MAX_HEADERS`] or
/// [`MAX_HEADER_BYTES`] with a `{"error": …}` body.
async fn head_limits(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let refuse = |status: StatusCode, msg: String| {
        (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    };
    if uri > MAX_URI_BYTES {
        return refuse(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {uri} bytes; at most {MAX_URI_BYTES} are accepted"),
        );
    }
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request has {} headers of {header_bytes} bytes; at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes are accepted",
                headers.len()
            ),
        );
    }
    next.run(req).await
}

/// How the REST listener treats connections (from `--rest-max-connections`
/// and friends).
#[derive(Clone)]
pub struct Listening {
    pub table: Arc<ConnTable>,
    pub deadlines: Deadlines,
    /// hyper's HTTP/1 header read timeout: the request line and headers
    /// must arrive within it (also the keep-alive wait for the next request).
    pub header_read_timeout: Duration,
}

/// Serves the REST API on `listener` until `shutdown` resolves, then lets
/// the connections finish their requests (HTTP/2: GOAWAY) and returns when
/// every one has closed.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: Listening,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let pruner = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                state.limits.prune();
            }
        })
    };
    let app = router(state);
    let mut builder = AutoBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(HYPER_MAX_HEADERS);
    builder.http2().timer(TokioTimer::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            res = listener.accept() => match res {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = match limits.table.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(%peer, reason = why.label(), "connection refused");
                let _ = tcp.try_write(refusal(why).as_bytes());
                continue;
            }
        };
        let activity = Activity::new(tokio::time::Instant::now());
        let io = GuardedIo::new(tcp, permit, activity.clone(), limits.deadlines, None);
        let svc = ConnService {
            app: app.clone(),
            activity,
            peer,
        };
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    return;
                }
                _ = stop.wait_for(|stop| *stop) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    // Every connection task holds a receiver until it ends.
    stop_tx.closed().await;
    pruner.abort();
    Ok(())
}

/// What a refused REST connection is told before it is closed.
fn refusal(why: Refused) -> String {
    let body = match why {
        Refused::PerIp => "too many connections from this address; retry later",
        _ => "too many connections; retry later",
    };
    let body = serde_json::json!({ "error": body }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One connection's view of the router: every request carries the peer
/// address as axum's `ConnectInfo<SocketAddr>` (the logs limiter and the
/// audit trail read it) and counts as in flight until its response ends.
#[derive(Clone)]
struct ConnService {
    app: Router,
    activity: Arc<Activity>,
    peer: std::net::SocketAddr,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for ConnService {
    type Response = http::Response<TrackedBody<axum::body::Body>>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let app = self.app.clone();
        Box::pin(async move {
            let res = tower::ServiceExt::oneshot(app, req).await?;
            Ok(res.map(|b| TrackedBody::new(b, Some(in_flight))))
        })
    }
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "checkLiveness",
    tag = "health",
    security(()),
    responses((status = 200, description = "Success", body = String))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "checkReadiness",
    tag = "health",
    security(()),
    responses((status = 200, description = "Success", body = String), (status = 503, description = "Store unavailable", body = openapi::ErrorBody))
)]
async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Result<&'static str, ApiError> {
    // A store that does not answer is as unready as one that fails: a load
    // balancer's probe must not hang on it.
    match tokio::time::timeout(READY_TIMEOUT, state.store.get_workspace("")).await {
        Ok(Ok(_)) => Ok("ready"),
        Ok(Err(e)) => {
            tracing::warn!("readiness check failed: {e}");
            Err(ApiError::Unavailable("store unavailable".into()))
        }
        Err(_) => {
            tracing::warn!(
                "readiness check failed: no answer from the store within {READY_TIMEOUT:?}"
            );
            Err(ApiError::Unavailable(format!(
                "store unavailable: no answer within {} s",
                READY_TIMEOUT.as_secs()
            )))
        }
    }
}

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
