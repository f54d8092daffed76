//! Start-up and shutdown: [`start`] opens the store and CA, binds both
//! listeners and starts the gRPC and REST servers; [`run`] (the binary's
//! `serve`) keeps them until `shutdown` resolves, then drains them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::store::Store;
use crate::{AppState, conn_limits, grpc, pki, rest};

pub type ServerError = Box<dyn std::error::Error + Send + Sync>;

/// How long in-flight requests get to finish after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `serve` until `shutdown` resolves. Prints the bound addresses to
/// stdout (one `listening` line per server) so scripts and tests can use
/// port 0.
pub async fn run(
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let data_dir = cfg.data_dir.clone();
    let server = start(cfg).await?;
    let (grpc_addr, rest_addr) = (server.grpc_addr, server.rest_addr);
    println!("outpost-control-plane: grpc listening on https://{grpc_addr}");
    println!("outpost-control-plane: rest listening on http://{rest_addr}");
    println!(
        "outpost-control-plane: CA fingerprint {}",
        server.ca_fingerprint
    );
    let public_url = server.state.public_url.clone();
    println!("outpost-control-plane: install commands send agents to {public_url}");
    if let Some(warning) = loopback_warning(&public_url, grpc_addr) {
        tracing::warn!("{warning}");
    }
    tracing::info!(%grpc_addr, %rest_addr, data_dir = %data_dir.display(), "control plane started");
    shutdown.await;
    server.stop().await;
    Ok(())
}

/// Install commands carry the public URL: one naming this host's loopback
/// while gRPC listens beyond it sends every box to itself.
fn loopback_warning(public_url: &str, grpc: SocketAddr) -> Option<String> {
    let host = public_url
        .strip_prefix("https://")
        .unwrap_or(public_url)
        .split('/')
        .next()
        .unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (loopback && !grpc.ip().is_loopback()).then(|| {
        format!(
            "install commands send agents to {public_url}, this host's loopback, while the device service listens on {grpc}: boxes elsewhere cannot enroll with them; set --public-url https://NAME:{} (and --server-name NAME) to the address boxes reach",
            grpc.port()
        )
    })
}

/// A control plane serving in this process: what [`run`] drives, and what
/// tests start (on `127.0.0.1:0`) when they test the server rather than the
/// binary. Dropping it stops the servers without waiting for them.
pub struct RunningServer {
    pub rest_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The CA's fingerprint (`sha256:…`), as agents pin it.
    pub ca_fingerprint: String,
    pub state: Arc<AppState>,
    stop_tx: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    retention: tokio::task::JoinHandle<()>,
    /// Writes the last batch of heartbeats when told (after the drain).
    presence: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

/// Loads (or, on a database that has none recorded, creates) the CA and
/// holds it to the fingerprint the database records: every replica on one
/// database must serve the same CA, or half the fleet would be told another
/// fingerprint. The first start records it.
async fn load_ca(data_dir: &std::path::Path, store: &dyn Store) -> Result<pki::Ca, ServerError> {
    let pki_dir = data_dir.join("pki");
    let recorded = store.ca_fingerprint().await?;
    let copy = |fp: &str| {
        format!(
            "copy ca.crt and ca.key from the pki/ directory of a control plane already serving this database (the CA with fingerprint {fp}) into {} (ca.key mode 0600)",
            pki_dir.display()
        )
    };
    if let Some(fp) = &recorded
        && !pki_dir.join("ca.crt").exists()
        && !pki_dir.join("ca.key").exists()
    {
        return Err(format!(
            "this database belongs to the device CA {fp}, and {} has no CA: {} before starting this replica",
            pki_dir.display(),
            copy(fp)
        )
        .into());
    }
    let ca = pki::Ca::load_or_create(&pki_dir)?;
    let recorded = match recorded {
        Some(fp) => fp,
        None => {
            store
                .record_ca_fingerprint(ca.fingerprint(), crate::store::now_ms())
                .await?
        }
    };
    if recorded != ca.fingerprint() {
        return Err(format!(
            "this database belongs to the device CA {recorded}, but {} holds another CA ({}): {}, replacing those files; or give this CA its own database",
            pki_dir.display(),
            ca.fingerprint(),
            copy(&recorded)
        )
        .into());
    }
    Ok(ca)
}

/// Opens the store and CA, binds both listeners and starts serving.
pub async fn start(cfg: ServeConfig) -> Result<RunningServer, ServerError> {
    pki::create_private_dir(&cfg.data_dir)?;
    let store: Arc<dyn Store> =
        crate::config::open_store(&cfg.data_dir, cfg.database_url.as_deref()).await?;
    let ca = Arc::new(load_ca(&cfg.data_dir, store.as_ref()).await?);
    let tls = grpc::tls::server_config(&ca, &cfg.server_names, cfg.expired_cert_grace)?;

    let grpc_listener = TcpListener::bind(cfg.grpc_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (gRPC): {e}", cfg.grpc_listen))?;
    let rest_listener = TcpListener::bind(cfg.rest_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (REST): {e}", cfg.rest_listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let rest_addr = rest_listener.local_addr()?;
    let public_url = cfg.public_url.clone().unwrap_or_else(|| {
        let host = cfg
            .server_names
            .first()
            .map(String::as_str)
            .unwrap_or("localhost");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        format!("https://{host}:{}", grpc_addr.port())
    });

    let metrics_token_hash = match &cfg.metrics_token_file {
        Some(path) => Some(read_scrape_token(path)?),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = crate::metrics::Metrics::new().map_err(|e| format!("metrics: {e}"))?;
    let (grpc_limits, rest_limits) = listener_limits(&cfg.connections, &metrics);
    let feed = crate::feed::Feed::default();
    let live = Arc::new(crate::live::LiveDevices::new(feed.clone()));
    let telemetry_writer =
        grpc::commit::TelemetryWriter::start(store.clone(), live.clone(), metrics.clone());
    let enrollment_writer = grpc::commit::EnrollmentWriter::start(store.clone(), metrics.clone());
    let session_opener = grpc::commit::SessionOpenWriter::start(store.clone(), metrics.clone());
    let session_closer = grpc::commit::SessionCloseWriter::start(store.clone(), metrics.clone());
    let presence = Arc::new(crate::presence::Presence::default());
    let state = Arc::new(AppState {
        presence: presence.clone(),
        session_opener,
        session_closer,
        telemetry_writer,
        enrollment_writer,
        store,
        ca: ca.clone(),
        device_cert_lifetime: cfg.device_cert_lifetime,
        install_id_ttl: cfg.install_id_ttl,
        public_url,
        public_rest_url: cfg.public_rest_url.clone(),
        dist: Arc::new(crate::dist::AgentDist::new(cfg.agent_dist.clone())),
        shutdown: stop_rx.clone(),
        live,
        feed,
        metrics,
        metrics_token_hash,
        fleet_metrics: Arc::new(crate::rest::fleet_metrics::FleetCache::new(
            cfg.metrics_refresh,
        )),
        limits: Default::default(),
        rollout_wake: Arc::new(tokio::sync::Notify::new()),
        artifacts: Arc::new(crate::artifacts::Artifacts::new(
            cfg.max_artifact_size,
            cfg.max_artifact_downloads,
            cfg.artifact_send_stall_timeout,
        )),
        trusted_proxies: cfg.trusted_proxies.clone(),
    });

    if let Some(url) = cfg.database_url.as_deref() {
        crate::bus::start(state.clone(), url)
            .await
            .map_err(|e| format!("replica bus (LISTEN/NOTIFY): {e}"))?;
    }

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        crate::stopping(&mut rx).await;
    };
    let grpc_task = tokio::spawn({
        let serve = grpc::serve(
            grpc_listener,
            tls,
            state.clone(),
            grpc_limits,
            stopped(stop_rx.clone()),
        );
        async move { serve.await.map_err(|e| e.to_string()) }
    });
    let rest_task = tokio::spawn({
        let serve = rest::serve(
            rest_listener,
            state.clone(),
            rest_limits,
            stopped(stop_rx.clone()),
        );
        async move { serve.await.map_err(|e| e.to_string()) }
    });
    let retention = tokio::spawn(retention(
        state.clone(),
        cfg.retention,
        stopped(stop_rx.clone()),
    ));
    // Written in batches; the last batch goes in when the server stops.
    // Its stop comes after the sessions drained (`RunningServer::stop`), or
    // when the server is dropped.
    let (presence_stop, presence_stopped) = tokio::sync::oneshot::channel::<()>();
    let presence_task = tokio::spawn(crate::presence::run(
        presence,
        state.store.clone(),
        state.metrics.clone(),
        async move {
            let _ = presence_stopped.await;
        },
    ));
    tokio::spawn(backfill_rollups(state.clone(), stopped(stop_rx.clone())));
    // The rollout driver ends with the server (it watches the stop signal).
    tokio::spawn(crate::rollout::driver::run(
        state.clone(),
        stopped(stop_rx.clone()),
    ));
    Ok(RunningServer {
        rest_addr,
        grpc_addr,
        ca_fingerprint: ca.fingerprint().to_string(),
        state,
        stop_tx,
        servers: vec![grpc_task, rest_task],
        retention,
        presence: Some((presence_stop, presence_task)),
    })
}

impl RunningServer {
    /// Graceful stop: long-lived streams end, in-flight requests get
    /// [`DRAIN_TIMEOUT`] to finish.
    pub async fn stop(mut self) {
        tracing::info!("stopping: draining connections");
        let _ = self.stop_tx.send(true);
        self.retention.abort();
        let servers = std::mem::take(&mut self.servers);
        let drain = async {
            for res in futures_util::future::join_all(servers).await {
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("server ended with an error: {e}"),
                    Err(e) => tracing::warn!("server task failed: {e}"),
                }
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tracing::warn!("connections did not drain within {DRAIN_TIMEOUT:?}; stopping anyway");
        }
        if let Some((stop, task)) = self.presence.take() {
            let _ = stop.send(());
            let limit = crate::presence::FINAL_FLUSH_TIMEOUT + Duration::from_secs(1);
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!("the last heartbeats were not written in time");
            }
        }
        tracing::info!("stopped");
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // After `stop` this repeats a sent signal; otherwise the servers
        // wind down on their own.
        let _ = self.stop_tx.send(true);
        self.retention.abort();
    }
}

/// Raises the open-file limit, fits the connection caps below it (logging
/// both), and builds each listener's limits with their metrics.
fn listener_limits(
    c: &crate::config::ConnectionConfig,
    metrics: &crate::metrics::Metrics,
) -> (grpc::tls::Listening, rest::Listening) {
    let (mut grpc_max, mut rest_max) = (c.grpc_max_connections, c.rest_max_connections);
    match conn_limits::raise_nofile_limit() {
        Some((soft, hard)) => {
            metrics
                .open_files_limit
                .with_label_values(&["soft"])
                .set(i64::try_from(soft).unwrap_or(i64::MAX));
            metrics
                .open_files_limit
                .with_label_values(&["hard"])
                .set(i64::try_from(hard).unwrap_or(i64::MAX));
            (grpc_max, rest_max) = conn_limits::fit_to_fd_limit(grpc_max, rest_max, soft);
            tracing::info!(
                soft,
                hard,
                grpc_max_connections = grpc_max,
                rest_max_connections = rest_max,
                "open-file limit"
            );
            if (grpc_max, rest_max) != (c.grpc_max_connections, c.rest_max_connections) {
                tracing::warn!(
                    "the open-file limit ({soft}) is too low for {} gRPC and {} REST connections: \
                     serving at most {grpc_max} and {rest_max} (raise LimitNOFILE= or ulimit -n)",
                    c.grpc_max_connections,
                    c.rest_max_connections
                );
            }
        }
        None => tracing::warn!("cannot read the open-file limit; connection caps as configured"),
    }
    let caps = |max, per_ip| conn_limits::Caps {
        max_connections: max,
        max_per_ip: per_ip,
        max_pending_handshakes_per_ip: c.max_pending_handshakes_per_ip,
        exempt_loopback: !c.limit_loopback,
    };
    let deadlines = conn_limits::Deadlines {
        first_request: c.first_request_timeout,
        idle: c.idle_connection_timeout,
        lifetime: None,
    };
    let grpc_caps = caps(grpc_max, c.grpc_max_connections_per_ip);
    let rest_caps = caps(rest_max, c.rest_max_connections_per_ip);
    let grpc = grpc::tls::Listening {
        table: conn_limits::ConnTable::new(grpc_caps, metrics.listener("grpc", &grpc_caps)),
        client_hello_timeout: c.tls_client_hello_timeout,
        handshake_timeout: c.tls_handshake_timeout,
        deadlines,
        unauthenticated_lifetime: c.unauthenticated_connection_lifetime,
        connections: Default::default(),
    };
    let rest = rest::Listening {
        table: conn_limits::ConnTable::new(rest_caps, metrics.listener("rest", &rest_caps)),
        deadlines,
        header_read_timeout: c.http_header_read_timeout,
    };
    (grpc, rest)
}

/// Reads the `/metrics` scrape token (trimmed; at least 16 characters) and
/// keeps only its hash.
fn read_scrape_token(path: &std::path::Path) -> Result<String, ServerError> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("metrics token file {}: {e}", path.display()))?;
    let token = token.trim();
    if token.len() < 16 {
        return Err(format!(
            "metrics token file {}: the token must be at least 16 characters",
            path.display()
        )
        .into());
    }
    Ok(crate::ids::hash_secret(token))
}

/// How often old telemetry, logs, events and audit entries are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Deletes what is past its retention: at start, then every [`PRUNE_EVERY`].
async fn retention(
    state: Arc<AppState>,
    keep: crate::config::RetentionConfig,
    stop: impl Future<Output = ()>,
) {
    let run = async {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tick.tick().await;
            let now = crate::store::now_ms();
            let ago =
                |d: Duration| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let cutoff = crate::store::Retention {
                telemetry_before: ago(keep.telemetry),
                minute_before: ago(keep.telemetry_1m),
                hour_before: ago(keep.telemetry_1h),
                logs_before: ago(keep.logs),
                events_before: ago(keep.events),
            };
            match state.store.prune(&cutoff).await {
                Ok(c) if c != Default::default() => {
                    tracing::info!(
                        telemetry = c.telemetry,
                        telemetry_1m = c.telemetry_1m,
                        telemetry_1h = c.telemetry_1h,
                        logs = c.logs,
                        events = c.events,
                        batches = c.batches,
                        longest_batch_ms =
                            u64::try_from(c.longest_batch.as_millis()).unwrap_or(u64::MAX),
                        "deleted data past its retention"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("retention job failed: {e}"),
            }
            match state.store.prune_audit(ago(keep.audit)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(audit = n, "deleted audit entries past their retention"),
                Err(e) => tracing::warn!("audit retention job failed: {e}"),
            }
        }
    };
    tokio::select! {
        _ = run => {}
        _ = stop => {}
    }
}

/// How often the rollup backfill logs its progress.
const BACKFILL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the backfill waits after a failed step (a busy or unreachable
/// database) before it tries again.
const BACKFILL_RETRY: Duration = Duration::from_secs(30);

/// Fills the rollup tiers from raw history that predates them (an upgrade),
/// step by step until none is left, then ends. Live ingest keeps the tiers
/// meanwhile; views of the history not yet filled read it as missing.
async fn backfill_rollups(state: Arc<AppState>, stop: impl Future<Output = ()>) {
    let run = async {
        let pending = match state.store.rollup_backfill_pending().await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("telemetry rollup backfill: {e}");
                0
            }
        };
        let gauge = &state.metrics.rollup_backfill_pending;
        gauge.set(i64::try_from(pending).unwrap_or(i64::MAX));
        tracing::info!(devices = pending, "telemetry rollup backfill: starting");
        let (mut samples, mut devices) = (0u64, 0u64);
        let mut logged = tokio::time::Instant::now();
        loop {
            match state.store.rollup_backfill_step().await {
                Ok(None) => break,
                Ok(Some(step)) => {
                    samples += step.samples;
                    if step.finished {
                        devices += 1;
                        if gauge.get() > 0 {
                            gauge.dec();
                        }
                    }
                    if logged.elapsed() >= BACKFILL_LOG_EVERY {
                        logged = tokio::time::Instant::now();
                        tracing::info!(
                            devices_done = devices,
                            devices_total = pending,
                            samples,
                            device = %step.device_id,
                            through_ms = step.through,
                            "telemetry rollup backfill: progress"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!("telemetry rollup backfill step failed, retrying: {e}");
                    tokio::time::sleep(BACKFILL_RETRY).await;
                }
            }
        }
        gauge.set(0);
        tracing::info!(devices, samples, "telemetry rollup backfill: done");
    };
    tokio::select! {
        _ = run => {}
        _ = stop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_public_url_is_named_only_when_grpc_listens_beyond_it() {
        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        for url in [
            "https://localhost:8443",
            "https://127.0.0.1:8443",
            "https://[::1]:8443",
        ] {
            let w = loopback_warning(url, any).unwrap_or_default();
            assert!(w.contains("--public-url"), "{url}: {w}");
            assert_eq!(loopback_warning(url, local), None, "{url}");
        }
        assert_eq!(loopback_warning("https://cp.example.com:8443", any), None);
    }
}
