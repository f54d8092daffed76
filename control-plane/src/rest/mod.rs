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
pub mod limits;
mod logs;
mod metrics;
pub mod openapi;
mod pagination;
mod params;
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

use crate::AppState;
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
        // Outermost: every error the REST port sends is `{"error": …}`.
        .layer(axum::middleware::from_fn(error::json_errors))
        .with_state(state)
}

pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
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
    // Connect info gives the logs limiter the client's address.
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    pruner.abort();
    res
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
    match state.store.get_workspace("").await {
        Ok(_) => Ok("ready"),
        Err(e) => {
            tracing::warn!("readiness check failed: {e}");
            Err(ApiError::Unavailable("store unavailable".into()))
        }
    }
}
