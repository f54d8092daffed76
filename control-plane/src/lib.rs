//! outpost-control-plane: the device CA, the mTLS device gRPC service, the
//! operator REST API and the store behind them.
//!
//! - [`grpc`]: the device side (enrollment, sessions, telemetry ingest)
//! - [`rest`]: the operator side (Deployment Manager compatible REST API)
//! - [`store`]: persistence behind one trait (SQLite embedded, or PostgreSQL
//!   for several replicas)
//! - [`pki`]: the certificate authority
//! - [`server`]: wires them together and owns start-up and shutdown
#![forbid(unsafe_code)]

pub mod admin;
pub mod artifacts;
pub mod bus;
pub mod config;
pub mod conn_limits;
pub mod device_config;
pub mod dist;
pub mod feed;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod grpc;
pub mod ids;
pub mod labels;
pub mod live;
pub mod metrics;
pub mod pki;
pub mod presence;
pub mod rest;
pub mod rollout;
pub mod server;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

/// Shared state of one running control plane.
pub struct AppState {
    pub store: Arc<dyn store::Store>,
    pub ca: Arc<pki::Ca>,
    pub device_cert_lifetime: Duration,
    pub install_id_ttl: Duration,
    /// `https://host:port` agents use; shown in install commands.
    pub public_url: String,
    /// Where boxes reach REST (`--public-rest-url`), for `curl … | sh` install
    /// commands and the downloads `install.sh` fetches.
    pub public_rest_url: Option<String>,
    /// Agent release tarballs served at `/downloads/`.
    pub dist: Arc<dist::AgentDist>,
    /// Flips to `true` when the server is stopping; long-lived streams end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Sessions connected to this process.
    pub live: Arc<live::LiveDevices>,
    /// Commit signals for the operators' live telemetry streams.
    pub feed: feed::Feed,
    /// The control plane's own Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Group commit for telemetry (see `grpc/commit.rs`).
    pub telemetry_writer: grpc::commit::TelemetryWriter,
    /// Group commit for enrollments.
    pub enrollment_writer: grpc::commit::EnrollmentWriter,
    /// Group commit for session starts.
    pub session_opener: grpc::commit::SessionOpenWriter,
    /// Group commit for session ends.
    pub session_closer: grpc::commit::SessionCloseWriter,
    /// Heartbeats waiting for their batched write (`presence.rs`).
    pub presence: Arc<presence::Presence>,
    /// The per-device families of `/metrics`, kept rendered.
    pub fleet_metrics: Arc<rest::fleet_metrics::FleetCache>,
    /// Hash of the `/metrics` scrape token, when one is configured.
    pub metrics_token_hash: Option<String>,
    /// REST rate limits.
    pub limits: rest::limits::Limits,
    /// Wakes this replica's rollout driver (a report arrived, an operator
    /// acted) before its next tick.
    pub rollout_wake: Arc<tokio::sync::Notify>,
    /// Artifact limits, uploads in progress and the chunk cache.
    pub artifacts: Arc<artifacts::Artifacts>,
    /// Reverse proxies whose `X-Forwarded-For` REST believes
    /// (`--trusted-proxy`; see `rest::limits::client_ip`).
    pub trusted_proxies: Vec<config::Cidr>,
}

/// Resolves once the server starts stopping.
pub async fn stopping(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone: the server is stopping too.
    let _ = rx.wait_for(|s| *s).await;
}
