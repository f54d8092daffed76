//! `GET /metrics`: Prometheus text format 0.0.4.
//!
//! - Per device, the latest stored values in node_exporter-like names with
//!   `workspace` and `device` labels (`outpost_device_up`,
//!   `outpost_device_cpu_usage_ratio`, `outpost_device_memory_used_bytes`, …),
//!   read from the store, so every replica exports the same fleet.
//! - The control plane's own: devices connected to this replica, live
//!   streams, samples ingested, ack latency and store write histograms.
//!
//! Authentication, as `Authorization: Bearer …` only (a query string ends up
//! in proxy logs): the scrape token (`--metrics-token-file`) sees every
//! workspace and the control plane's own metrics; a workspace API key with
//! the device:read scope sees its workspace's devices only (the process-wide
//! figures would show other tenants' activity).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use prometheus::core::Collector;
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

use crate::AppState;
use crate::admin::SCOPE_DEVICE_READ;
use crate::ids;
use crate::labels::{self, Labels};
use crate::store::{Device, DeviceListQuery, DeviceStatus, TelemetrySample, now_ms};

use super::error::ApiError;
use super::fleet_metrics::{Render, Rendered};

/// Devices read from the store per query.
const CHUNK: u32 = 500;

const DEVICE: &[&str] = &["workspace", "device"];

/// Which workspaces a scrape may see.
enum Scope {
    All,
    Workspace(String),
}

const METRICS_HINT: &str = "Send Authorization: Bearer with the scrape token (Prometheus: \
     authorization.credentials_file) or a workspace API key with the device:read scope.";

async fn authorize(state: &AppState, parts: &Parts) -> Result<Scope, ApiError> {
    if parts.uri.query().is_some_and(|q| q.contains("api_key=")) {
        return Err(ApiError::bad_request(
            "/metrics takes its credential in the Authorization header only, not ?api_key=",
        ));
    }
    let key = match parts.headers.get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(|k| k.trim().to_string())
                .ok_or_else(|| {
                    ApiError::unauthorized(
                        "Authorization header must use the Bearer scheme",
                        METRICS_HINT,
                    )
                })?,
        ),
    }
    .filter(|k| !k.is_empty())
    .ok_or_else(|| ApiError::unauthorized("Missing scrape token or API key", METRICS_HINT))?;
    let hash = ids::hash_secret(&key);
    if state.metrics_token_hash.as_deref() == Some(hash.as_str()) {
        return Ok(Scope::All);
    }
    let record =
        state.store.find_api_key(&hash).await?.ok_or_else(|| {
            ApiError::unauthorized("Invalid scrape token or API key", METRICS_HINT)
        })?;
    if let Some(scopes) = &record.scopes
        && !scopes.iter().any(|s| s == SCOPE_DEVICE_READ)
    {
        return Err(ApiError::forbidden(format!(
            "this API key lacks the required scope {SCOPE_DEVICE_READ}"
        )));
    }
    if record.device_id.is_some() {
        return Err(ApiError::forbidden(
            "a device-scoped API key cannot scrape the fleet's metrics",
        ));
    }
    Ok(Scope::Workspace(record.workspace))
}

/// `?workspace=W`: the devices of one workspace only (the scrape token's
/// way to split a large fleet over several scrape jobs); the control
/// plane's own metrics are left out of such a scrape.
/// Other parameters (a scrape config's `params:`) are ignored, as before.
#[derive(serde::Deserialize)]
struct MetricsQuery {
    workspace: Option<String>,
}

pub async fn metrics(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let (parts, _) = request.into_parts();
    let scope = authorize(&state, &parts).await?;
    let query: MetricsQuery = serde_urlencoded_query(&parts)?;
    let (fleet_scope, own_metrics) = match (scope, query.workspace) {
        (Scope::All, None) => (None, true),
        (Scope::All, Some(w)) => (Some(w), false),
        (Scope::Workspace(w), None) => (Some(w), false),
        (Scope::Workspace(w), Some(asked)) if asked == w => (Some(w), false),
        (Scope::Workspace(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "this API key scrapes its own workspace only",
            ));
        }
    };
    // A workspace the token names must exist (a typo would otherwise get
    // an empty 200, and a scope kept rendered for nothing). Checked once
    // per scope kept: later scrapes read no store.
    if let Some(w) = &fleet_scope
        && !state.fleet_metrics.has(&fleet_scope)
    {
        if w.is_empty() {
            return Err(ApiError::bad_request("workspace must not be empty"));
        }
        if state.store.get_workspace(w).await?.is_none() {
            return Err(ApiError::NotFound(format!("no workspace named {w:?}")));
        }
    }
    let fleet = {
        let state2 = state.clone();
        let scope = fleet_scope.clone();
        state
            .fleet_metrics
            .get(
                fleet_scope,
                move || render_fleet(state2.clone(), scope.clone()),
                state.shutdown.clone(),
            )
            .await
            .map_err(ApiError::Internal)?
    };
    let age = fleet.built_at.elapsed();
    let refresh = state.fleet_metrics.refresh();
    let stale_after = (refresh * 3).max(STALE_MIN);
    let stale = !refresh.is_zero() && age > stale_after;
    if stale && !own_metrics {
        // The store has failed every refresh for a while: frozen values
        // must not look current (the target shows as down instead).
        return Err(ApiError::Unavailable(format!(
            "the device metrics are {} s old: the store has not answered since",
            age.as_secs()
        )));
    }
    let fresh = fresh_text(&state, own_metrics, age).map_err(internal)?;
    // The scrape token's scrape keeps the control plane's own metrics (most
    // wanted while the store fails) and the age, without frozen devices.
    let fleet = if stale {
        Arc::new(Rendered::new(Vec::new()).map_err(|e| ApiError::Internal(e.to_string()))?)
    } else {
        fleet
    };
    let gzip = parts
        .headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_gzip);
    let headers = [
        (CONTENT_TYPE, TextEncoder::new().format_type().to_string()),
        (axum::http::header::VARY, "accept-encoding".to_string()),
    ];
    if gzip {
        let body = fleet
            .gzip_with(&fresh)
            .map_err(|e| ApiError::Internal(format!("metrics: gzip: {e}")))?;
        return Ok((
            headers,
            [(axum::http::header::CONTENT_ENCODING, "gzip")],
            body,
        )
            .into_response());
    }
    let mut body = Vec::with_capacity(fleet.text.len() + fresh.len());
    body.extend_from_slice(&fleet.text);
    body.extend_from_slice(&fresh);
    Ok((headers, body).into_response())
}

fn serde_urlencoded_query(parts: &Parts) -> Result<MetricsQuery, ApiError> {
    axum::extract::Query::<MetricsQuery>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
}

/// The device part may be this much older than three refresh intervals
/// before scrapes fail.
const STALE_MIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether an `Accept-Encoding` value takes gzip: `gzip`/`x-gzip`, or `*`,
/// with a nonzero weight; an explicit gzip weight wins over `*`'s.
fn accepts_gzip(header: &str) -> bool {
    let mut explicit = None;
    let mut any = None;
    for item in header.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let weight = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            explicit = Some(weight > 0.0);
        } else if coding == "*" {
            any = Some(weight > 0.0);
        }
    }
    explicit.or(any).unwrap_or(false)
}

/// The per-device families of `scope` (`None`: every workspace, plus the
/// rollout counts), read from the store: what [`FleetCache`] keeps.
///
/// [`FleetCache`]: super::fleet_metrics::FleetCache
async fn render_fleet(state: Arc<AppState>, scope: Option<String>) -> Render {
    let started = std::time::Instant::now();
    let text = fleet_text(&state, scope.as_deref()).await?;
    state
        .metrics
        .observe_store("metrics_render", started.elapsed());
    // Compressing a large fleet's text takes a while: off the runtime.
    tokio::task::spawn_blocking(move || Rendered::new(text))
        .await
        .map_err(|e| format!("metrics: {e}"))?
        .map(Arc::new)
        .map_err(|e| format!("metrics: gzip: {e}"))
}

async fn fleet_text(state: &AppState, scope: Option<&str>) -> Result<Vec<u8>, String> {
    let store = |e: crate::store::StoreError| format!("metrics: {e}");
    let internal = |e: prometheus::Error| format!("metrics: {e}");
    let workspaces: Vec<String> = match scope {
        None => state
            .store
            .list_workspaces()
            .await
            .map_err(store)?
            .into_iter()
            .map(|w| w.name)
            .collect(),
        Some(w) => vec![w.to_string()],
    };
    let mut fleet = Fleet::new().map_err(internal)?;
    let now = now_ms();
    for ws in &workspaces {
        let mut after = None;
        loop {
            let devices = state
                .store
                .list_devices(&DeviceListQuery {
                    workspace: ws.clone(),
                    after: after.clone(),
                    limit: CHUNK,
                    status: None,
                    device_type: None,
                    name: None,
                    labels: Vec::new(),
                    now,
                })
                .await
                .map_err(store)?;
            let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
            let mut latest: HashMap<String, TelemetrySample> = state
                .store
                .latest_telemetry(&ids)
                .await
                .map_err(store)?
                .into_iter()
                .collect();
            for d in &devices {
                fleet.device(d, now, latest.remove(&d.id).as_ref());
            }
            match devices.last() {
                Some(last) if devices.len() as u32 == CHUNK => {
                    after = Some((last.created_at, last.id.clone()));
                }
                _ => break,
            }
        }
    }
    let mut collectors = fleet.collectors().map_err(internal)?;
    if scope.is_none() {
        let counts = state.store.rollout_counts().await.map_err(store)?;
        collectors.extend(rollouts(&counts).map_err(internal)?);
    }
    encode(collectors).map_err(internal)
}

fn encode(collectors: Vec<Box<dyn Collector>>) -> Result<Vec<u8>, prometheus::Error> {
    let registry = Registry::new();
    for c in collectors {
        registry.register(c)?;
    }
    let mut body = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut body)?;
    Ok(body)
}

/// What every scrape renders fresh: the age of its device part, and with
/// `own` the control plane's own metrics.
fn fresh_text(
    state: &AppState,
    own_metrics: bool,
    age: std::time::Duration,
) -> Result<Vec<u8>, prometheus::Error> {
    let mut collectors = if own_metrics { own(state)? } else { Vec::new() };
    let gauge = prometheus::Gauge::new(
        "outpost_fleet_metrics_age_seconds",
        "Age of the per-device families in this scrape (rendered every --metrics-refresh).",
    )?;
    gauge.set(age.as_secs_f64());
    collectors.push(Box::new(gauge));
    encode(collectors)
}

fn internal(e: prometheus::Error) -> ApiError {
    ApiError::Internal(format!("metrics: {e}"))
}

/// The control plane's own metrics, as collectors for this scrape.
fn own(state: &AppState) -> Result<Vec<Box<dyn Collector>>, prometheus::Error> {
    let connected = prometheus::IntGauge::new(
        "outpost_connected_devices",
        "Devices with an open session or data stream on this replica.",
    )?;
    connected.set(state.live.connected_devices() as i64);
    let streams = prometheus::IntGauge::new(
        "outpost_live_streams",
        "Operator telemetry streams (SSE) open on this replica.",
    )?;
    streams.set(state.feed.watchers() as i64);
    let info = prometheus::IntGaugeVec::new(
        Opts::new("outpost_build_info", "The control plane's version."),
        &["version"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    let mut all: Vec<Box<dyn Collector>> =
        vec![Box::new(connected), Box::new(streams), Box::new(info)];
    all.extend(state.metrics.collectors());
    Ok(all)
}

/// `outpost_rollouts{state}` (every state, zeros included) and
/// `outpost_rollout_devices{rollout,artifact,state}` of running and paused
/// rollouts. Across workspaces: scrape token only.
fn rollouts(
    counts: &crate::store::RolloutCounts,
) -> Result<Vec<Box<dyn Collector>>, prometheus::Error> {
    let by_state = prometheus::IntGaugeVec::new(
        Opts::new("outpost_rollouts", "Rollouts per state."),
        &["state"],
    )?;
    for s in crate::rollout::RolloutState::ALL {
        let n = counts
            .rollouts
            .iter()
            .find(|(state, _)| state == s.as_str())
            .map_or(0, |(_, n)| *n);
        by_state.with_label_values(&[s.as_str()]).set(n as i64);
    }
    let devices = prometheus::IntGaugeVec::new(
        Opts::new(
            "outpost_rollout_devices",
            "Devices of each running or paused rollout per state.",
        ),
        &["rollout", "artifact", "state"],
    )?;
    for (rollout, artifact, state, n) in &counts.devices {
        devices
            .with_label_values(&[rollout.as_str(), artifact.as_str(), state.as_str()])
            .set(*n as i64);
    }
    Ok(vec![Box::new(by_state), Box::new(devices)])
}

/// The per-device families of one scrape.
struct Fleet {
    gauges: Vec<GaugeVec>,
    counters: Vec<IntCounterVec>,
    /// `outpost_device_info`'s rows: built last, when every device's label
    /// keys are known (its label names are the union of them).
    info: Vec<([String; 6], Labels)>,
    up: GaugeVec,
    enabled: GaugeVec,
    heartbeat: GaugeVec,
    cert_expiry: GaugeVec,
    sample_time: GaugeVec,
    cpu: GaugeVec,
    mem_used: GaugeVec,
    mem_total: GaugeVec,
    swap_used: GaugeVec,
    swap_total: GaugeVec,
    disk_used: GaugeVec,
    disk_total: GaugeVec,
    load1: GaugeVec,
    load5: GaugeVec,
    load15: GaugeVec,
    uptime: GaugeVec,
    temp: GaugeVec,
    gpu_util: GaugeVec,
    gpu_mem_used: GaugeVec,
    gpu_mem_total: GaugeVec,
    gpu_temp: GaugeVec,
    gpu_power: GaugeVec,
    gpu_power_limit: GaugeVec,
    gpu_clock: GaugeVec,
    gpu_max_clock: GaugeVec,
    rx: IntCounterVec,
    tx: IntCounterVec,
}

impl Fleet {
    fn new() -> Result<Self, prometheus::Error> {
        let mut gauges = Vec::new();
        let mut g =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
                let v = GaugeVec::new(Opts::new(name, help), labels)?;
                gauges.push(v.clone());
                Ok(v)
            };
        let gpu: &[&str] = &["workspace", "device", "gpu", "name", "uuid"];
        let info = Vec::new();
        let up = g(
            "outpost_device_up",
            "1 while the device is online (a live, heartbeating session).",
            DEVICE,
        )?;
        let enabled = g(
            "outpost_device_enabled",
            "1 unless an operator disabled the device.",
            DEVICE,
        )?;
        let heartbeat = g(
            "outpost_device_last_heartbeat_timestamp_seconds",
            "Last heartbeat, unix time.",
            DEVICE,
        )?;
        let cert_expiry = g(
            "outpost_device_certificate_expiry_timestamp_seconds",
            "Current certificate's notAfter, unix time.",
            DEVICE,
        )?;
        let sample_time = g(
            "outpost_device_last_sample_timestamp_seconds",
            "Time of the latest stored sample (the device's clock), unix time.",
            DEVICE,
        )?;
        let cpu = g(
            "outpost_device_cpu_usage_ratio",
            "CPU busy, 0..1, over the last sample interval.",
            DEVICE,
        )?;
        let mem_used = g("outpost_device_memory_used_bytes", "Memory in use.", DEVICE)?;
        let mem_total = g(
            "outpost_device_memory_total_bytes",
            "Physical memory.",
            DEVICE,
        )?;
        let swap_used = g("outpost_device_swap_used_bytes", "Swap in use.", DEVICE)?;
        let swap_total = g("outpost_device_swap_total_bytes", "Swap size.", DEVICE)?;
        let disk_used = g(
            "outpost_device_disk_used_bytes",
            "Disk space used, all local filesystems.",
            DEVICE,
        )?;
        let disk_total = g(
            "outpost_device_disk_total_bytes",
            "Disk space, all local filesystems.",
            DEVICE,
        )?;
        let load1 = g("outpost_device_load1", "1m load average.", DEVICE)?;
        let load5 = g("outpost_device_load5", "5m load average.", DEVICE)?;
        let load15 = g("outpost_device_load15", "15m load average.", DEVICE)?;
        let uptime = g(
            "outpost_device_uptime_seconds",
            "Seconds since the device booted.",
            DEVICE,
        )?;
        let temp = g(
            "outpost_device_temperature_celsius",
            "Temperature per sensor.",
            &["workspace", "device", "sensor"],
        )?;
        let gpu_util = g(
            "outpost_device_gpu_utilization_ratio",
            "GPU busy, 0..1.",
            gpu,
        )?;
        let gpu_mem_used = g(
            "outpost_device_gpu_memory_used_bytes",
            "GPU memory in use.",
            gpu,
        )?;
        let gpu_mem_total = g("outpost_device_gpu_memory_total_bytes", "GPU memory.", gpu)?;
        let gpu_temp = g(
            "outpost_device_gpu_temperature_celsius",
            "GPU temperature.",
            gpu,
        )?;
        let gpu_power = g("outpost_device_gpu_power_watts", "GPU power draw.", gpu)?;
        let gpu_power_limit = g(
            "outpost_device_gpu_power_limit_watts",
            "GPU enforced power limit.",
            gpu,
        )?;
        let gpu_clock = g("outpost_device_gpu_clock_hertz", "GPU graphics clock.", gpu)?;
        let gpu_max_clock = g(
            "outpost_device_gpu_max_clock_hertz",
            "GPU maximum graphics clock.",
            gpu,
        )?;
        let rx = IntCounterVec::new(
            Opts::new(
                "outpost_device_network_receive_bytes_total",
                "Bytes received, all interfaces, since boot.",
            ),
            DEVICE,
        )?;
        let tx = IntCounterVec::new(
            Opts::new(
                "outpost_device_network_transmit_bytes_total",
                "Bytes sent, all interfaces, since boot.",
            ),
            DEVICE,
        )?;
        Ok(Self {
            counters: vec![rx.clone(), tx.clone()],
            gauges,
            info,
            up,
            enabled,
            heartbeat,
            cert_expiry,
            sample_time,
            cpu,
            mem_used,
            mem_total,
            swap_used,
            swap_total,
            disk_used,
            disk_total,
            load1,
            load5,
            load15,
            uptime,
            temp,
            gpu_util,
            gpu_mem_used,
            gpu_mem_total,
            gpu_temp,
            gpu_power,
            gpu_power_limit,
            gpu_clock,
            gpu_max_clock,
            rx,
            tx,
        })
    }

    fn collectors(self) -> Result<Vec<Box<dyn Collector>>, prometheus::Error> {
        let mut all: Vec<Box<dyn Collector>> = vec![Box::new(device_info(&self.info)?)];
        for g in self.gauges {
            all.push(Box::new(g));
        }
        for c in self.counters {
            all.push(Box::new(c));
        }
        Ok(all)
    }

    fn device(&mut self, d: &Device, now: i64, latest: Option<&TelemetrySample>) {
        let l = [d.workspace.as_str(), d.id.as_str()];
        let facts = d.facts.as_ref();
        self.info.push((
            [
                d.workspace.clone(),
                d.id.clone(),
                d.name.clone(),
                d.device_type.clone(),
                facts.map_or("", |f| f.hostname.as_str()).to_string(),
                facts.map_or("", |f| f.agent_version.as_str()).to_string(),
            ],
            d.labels.clone(),
        ));
        let online = d.status(now) == DeviceStatus::Online;
        self.up
            .with_label_values(&l)
            .set(f64::from(u8::from(online)));
        self.enabled
            .with_label_values(&l)
            .set(f64::from(u8::from(d.enabled)));
        let secs = |ms: i64| ms as f64 / 1000.0;
        if let Some(t) = d.last_heartbeat {
            self.heartbeat.with_label_values(&l).set(secs(t));
        }
        if let Some(t) = d.cert_expires_at {
            self.cert_expiry.with_label_values(&l).set(secs(t));
        }
        let Some(s) = latest else { return };
        let set = |v: &GaugeVec, x: f64| v.with_label_values(&l).set(x);
        set(&self.sample_time, secs(s.timestamp));
        set(&self.cpu, f64::from(s.cpu_percent) / 100.0);
        set(&self.mem_used, s.memory_used_bytes as f64);
        set(&self.mem_total, s.memory_total_bytes as f64);
        set(&self.swap_used, s.swap_used_bytes as f64);
        set(&self.swap_total, s.swap_total_bytes as f64);
        set(&self.disk_used, s.disk_used_bytes as f64);
        set(&self.disk_total, s.disk_total_bytes as f64);
        set(&self.load1, s.load_1m);
        set(&self.load5, s.load_5m);
        set(&self.load15, s.load_15m);
        set(&self.uptime, s.uptime_secs as f64);
        self.rx.with_label_values(&l).inc_by(s.network_rx_bytes);
        self.tx.with_label_values(&l).inc_by(s.network_tx_bytes);
        for t in &s.temperatures {
            self.temp
                .with_label_values(&[l[0], l[1], t.sensor.as_str()])
                .set(f64::from(t.celsius));
        }
        for g in &s.gpus {
            let index = g.index.to_string();
            let gl = [l[0], l[1], index.as_str(), g.name.as_str(), g.uuid.as_str()];
            let set = |v: &GaugeVec, x: f64| v.with_label_values(&gl).set(x);
            set(&self.gpu_util, f64::from(g.utilization_percent) / 100.0);
            set(&self.gpu_mem_used, g.memory_used_bytes as f64);
            set(&self.gpu_mem_total, g.memory_total_bytes as f64);
            set(&self.gpu_temp, f64::from(g.temperature_celsius));
            set(&self.gpu_power, f64::from(g.power_watts));
            if g.power_limit_watts > 0.0 {
                set(&self.gpu_power_limit, f64::from(g.power_limit_watts));
            }
            if g.clock_mhz > 0 {
                set(&self.gpu_clock, f64::from(g.clock_mhz) * 1e6);
            }
            if g.max_clock_mhz > 0 {
                set(&self.gpu_max_clock, f64::from(g.max_clock_mhz) * 1e6);
            }
        }
    }
}

/// `outpost_device_info`: the descriptive labels, then one `label_<key>` per
/// device label key seen in this scrape (kube-state-metrics' form: the key
/// with every character outside `[A-Za-z0-9_]` as `_`; a device without
/// the key has it empty, which Prometheus reads as absent). Keys that
/// sanitize alike (`a.b`, `a-b`): the first in key order wins.
fn device_info(rows: &[([String; 6], Labels)]) -> Result<GaugeVec, prometheus::Error> {
    const BASE: [&str; 6] = [
        "workspace",
        "device",
        "name",
        "type",
        "hostname",
        "agent_version",
    ];
    let mut extra: BTreeMap<String, usize> = BTreeMap::new();
    for (_, labels) in rows {
        for k in labels.keys() {
            let n = extra.len();
            extra.entry(labels::prometheus_name(k)).or_insert(n);
        }
    }
    // Column order: sorted by name.
    for (i, v) in extra.values_mut().enumerate() {
        *v = i;
    }
    let names: Vec<&str> = BASE
        .iter()
        .copied()
        .chain(extra.keys().map(String::as_str))
        .collect();
    let info = GaugeVec::new(
        Opts::new(
            "outpost_device_info",
            "Always 1; the device's descriptive labels and its labels as label_<key>.",
        ),
        &names,
    )?;
    for (base, labels) in rows {
        let mut values: Vec<&str> = base.iter().map(String::as_str).collect();
        values.resize(BASE.len() + extra.len(), "");
        let mut taken = vec![false; extra.len()];
        for (k, v) in labels {
            if let Some(&i) = extra.get(&labels::prometheus_name(k))
                && !taken[i]
            {
                taken[i] = true;
                values[BASE.len() + i] = v.as_str();
            }
        }
        info.with_label_values(&values).set(1.0);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_is_taken_when_the_client_weighs_it_above_zero() {
        for yes in [
            "gzip",
            "x-gzip",
            "GZIP",
            "deflate, gzip;q=0.5",
            "*",
            "br;q=1, *;q=0.1",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "gzip;q=0",
            "gzip;q=0, *",
            "*;q=0",
            "deflate, br",
        ] {
            assert!(!accepts_gzip(no), "{no}");
        }
    }
}
