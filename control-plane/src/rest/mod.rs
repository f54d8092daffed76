//! The operator side: the Deployment Manager compatible REST API under
//! `/{workspace}/devices/v2`, plus health probes.

mod auth;
mod config;
mod devices;
pub mod error;
mod events;
pub mod limits;
mod logs;
mod pagination;
mod params;
mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;
use error::ApiError;

/// Request bodies are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    const DEV: &str = "/{workspace}/devices/v2/{device_id}";
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/{workspace}/devices/v2", get(devices::list).post(devices::create))
        .route("/{workspace}/devices/v2/default-config", get(config::default_config))
        .route(DEV, get(devices::get_one).patch(devices::update).delete(devices::delete))
        .route(&format!("{DEV}/telemetry"), get(telemetry::series))
        .route(&format!("{DEV}/telemetry/raw"), get(telemetry::raw))
        .route(&format!("{DEV}/logs"), get(logs::list))
        .route(&format!("{DEV}/events"), get(events::list))
        .route(&format!("{DEV}/config"), get(config::get).put(config::put))
        .route(&format!("{DEV}/config/versions"), get(config::versions))
        .route(&format!("{DEV}/connections/reset"), post(devices::reset_connection))
        .route(&format!("{DEV}/install-id"), post(devices::new_install_id))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        // Spans carry the path only: a query string may hold `api_key=`.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
        }))
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
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers.
async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Result<&'static str, (StatusCode, &'static str)> {
    match state.store.get_workspace("").await {
        Ok(_) => Ok("ready"),
        Err(e) => {
            tracing::warn!("readiness check failed: {e}");
            Err((StatusCode::SERVICE_UNAVAILABLE, "store unavailable"))
        }
    }
}
