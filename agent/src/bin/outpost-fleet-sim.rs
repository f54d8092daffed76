//! `outpost-fleet-sim`: a fleet of simulated agents against a real control
//! plane, for benchmarks and load tests. It uses the agent's own code for
//! enrollment (key generated and stored per device, CSR, `Enroll`), the mTLS
//! link, the session and the agent's core (timers, heartbeats, backoff,
//! drain; `outpost_agent::core`) driven by the agent's driver; only the
//! samples (synthetic, in memory instead of a disk spool) differ. Each
//! device holds its own TLS connection with a session and a telemetry
//! stream, and takes `--batch` samples every `batch / rate` seconds,
//! measuring the time from sample to ack. The last line printed is a JSON
//! summary.
//!
//! outpost-fleet-sim --rest URL --server URL --ca-file FILE --workspace WS \
//!     --api-key KEY --devices N --duration 20s --rate HZ
//!
//! With `--backfill 30d --interval 10s` each device instead sends, at once
//! and as an agent back from a month offline sends its spool (batches of
//! 256, 4 in flight), samples stamped every `--interval` over the past 30
//! days; the run ends when every one is acked.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use clap::Parser;
use futures_util::future::BoxFuture;
use outpost_agent::backoff::Reconnect;
use outpost_agent::core::{Core, Delivery, Event, Exit, LinkState, Output, Rules, Started};
use outpost_agent::driver::{self, Host};
use outpost_agent::link::{self, LinkError, ServerUrl, Trust};
use outpost_agent::session::{self, OpenLink};
use outpost_agent::state::StateDir;
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::{DeviceFacts, LogBatch, Sample, SessionStart, SpoolReport, TelemetryBatch};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "outpost-fleet-sim", version)]
struct Args {
    /// Operator REST API, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    rest: String,
    /// Device gRPC endpoint, https://HOST:PORT.
    #[arg(long)]
    server: String,
    /// The control plane's CA certificate.
    #[arg(long)]
    ca_file: PathBuf,
    #[arg(long)]
    workspace: String,
    #[arg(long)]
    api_key: String,
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// How long every device streams once all are connected.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Samples per second per device (e.g. 0.1 for one every 10 s).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Enrollments and connection attempts in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Where the devices' state directories go [default: a temp dir, in
    /// /dev/shm when it exists].
    #[arg(long)]
    state_root: Option<PathBuf>,
    /// Samples per request: each device sends `--batch` samples every
    /// `batch / rate` seconds (an agent sends its backlog in batches of up to
    /// 256; 1 makes every sample its own request).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Reconnect after a lost link (with the agent's jittered backoff) and
    /// resend what was not acked, instead of counting the device as failed.
    /// The summary then reports the outage: `reconnects`, `all_back_secs`
    /// (first lost link → last link back), connection errors by kind.
    #[arg(long)]
    reconnect: bool,
    /// Instead of streaming: once every device is enrolled and connected,
    /// all of them download the artifact `NAME@VERSION` (FetchArtifact, as
    /// the agent does: resumed from the bytes received after a refusal or a
    /// dropped stream, with jittered backoff) and discard the bytes. The
    /// summary reports bytes, seconds, throughput and refusals.
    #[arg(long, value_name = "NAME@VERSION")]
    fetch_artifact: Option<String>,
    /// Instead of streaming live: each device sends the history of this
    /// past period (e.g. 30d) at `--interval` through the ingest path, as
    /// an agent's spool after that long offline, and the run ends when all
    /// of it is acked. `--duration`, `--rate` and `--batch` do not apply.
    #[arg(long, value_parser = humantime::parse_duration)]
    backfill: Option<Duration>,
    /// The interval between a backfill's samples.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    failed_devices: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    errors_refused: AtomicU64,
    errors_other: AtomicU64,
    /// Microseconds since the simulator's epoch: the first lost link and
    /// the last link re-established.
    first_loss_us: AtomicU64,
    last_back_us: AtomicU64,
    /// When each link came back and each refused attempt happened
    /// (microseconds since the epoch): where in the outage the time went.
    back_us: std::sync::Mutex<Vec<u64>>,
    refused_us: std::sync::Mutex<Vec<u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed_devices: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors_refused: AtomicU64::new(0),
            errors_other: AtomicU64::new(0),
            first_loss_us: AtomicU64::new(u64::MAX),
            last_back_us: AtomicU64::new(0),
            back_us: Default::default(),
            refused_us: Default::default(),
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = outpost_common::init_process() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(summary) => {
            println!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<serde_json::Value, Error> {
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        return Err("--rate must be above 0 and at most 100000 samples/s".into());
    }
    if !(1..=outpost_proto::MAX_SAMPLES_PER_BATCH).contains(&args.batch) {
        return Err(format!(
            "--batch must be 1..={} samples",
            outpost_proto::MAX_SAMPLES_PER_BATCH
        )
        .into());
    }
    let backfill = match args.backfill {
        None => None,
        Some(period) => {
            let interval_ms = i64::try_from(args.interval.as_millis()).unwrap_or(i64::MAX);
            if interval_ms < 1 {
                return Err("--interval must be at least 1ms".into());
            }
            let total = period.as_millis() / args.interval.as_millis();
            if !(1..=100_000_000).contains(&total) {
                return Err(
                    "--backfill / --interval must come to 1..=100000000 samples per device".into(),
                );
            }
            let now = outpost_agent::clock::system_ms();
            Some(BackfillPlan {
                start_ms: now - interval_ms * total as i64,
                interval_ms,
                total: total as u64,
            })
        }
    };
    let server = ServerUrl::parse(&args.server)?;
    let trust = Trust::from_ca_file(&args.ca_file)?;
    let root = match &args.state_root {
        Some(p) => tempfile::Builder::new()
            .prefix("fleet-sim-")
            .tempdir_in(p)?,
        None if std::path::Path::new("/dev/shm").is_dir() => tempfile::Builder::new()
            .prefix("fleet-sim-")
            .tempdir_in("/dev/shm")?,
        None => tempfile::tempdir()?,
    };
    let http = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));

    // 1. Create the devices over REST.
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..args.devices {
        let (http, gate) = (http.clone(), gate.clone());
        let url = format!(
            "{}/{}/devices/v2",
            args.rest.trim_end_matches('/'),
            args.workspace
        );
        let key = args.api_key.clone();
        creates.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let resp = http
                .post(url)
                .bearer_auth(key)
                .json(
                    &serde_json::json!({"device_name": format!("sim-{i}"), "device_type": "edge"}),
                )
                .send()
                .await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            if !status.is_success() {
                return Err(format!("create device: {status} {body}").into());
            }
            let install = body["installId"]
                .as_str()
                .ok_or("no installId")?
                .to_string();
            let id = body["deviceId"].as_str().unwrap_or_default().to_string();
            Ok::<_, Error>((i, install, id))
        });
    }
    let mut created = Vec::with_capacity(args.devices);
    while let Some(r) = creates.join_next().await {
        created.push(r??);
    }
    created.sort();
    let device_ids: Vec<String> = created.iter().map(|(_, _, id)| id.clone()).collect();
    let installs: Vec<(usize, String)> = created.into_iter().map(|(i, x, _)| (i, x)).collect();
    tracing::info!(devices = args.devices, "all devices created; enrolling");

    // 2. Enroll each (key on "the box", CSR, certificate saved).
    let started = Instant::now();
    let mut enrolls = tokio::task::JoinSet::new();
    for (i, install) in installs {
        let (gate, server, trust) = (gate.clone(), server.clone(), trust.clone());
        let dir = root.path().join(format!("d{i}"));
        enrolls.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let state = StateDir::open(&dir)?;
            let facts = DeviceFacts {
                hostname: format!("sim-{i}"),
                os_name: "Simulated".into(),
                architecture: std::env::consts::ARCH.into(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            };
            outpost_agent::enroll::enroll(
                &state,
                &server,
                &Default::default(),
                outpost_agent::enroll::Grant::InstallId(&install),
                &trust,
                facts,
            )
            .await?;
            Ok::<_, Error>(state)
        });
    }
    let mut states = Vec::new();
    while let Some(r) = enrolls.join_next().await {
        states.push(r??);
    }
    let enroll_secs = started.elapsed().as_secs_f64();
    tracing::info!(devices = args.devices, "all devices enrolled; connecting");

    if let Some(id) = &args.fetch_artifact {
        return fetch_all(&args, id, states, &server, &trust, enroll_secs).await;
    }

    // 3. Connect every device, then stream for `duration`.
    let counters = Arc::new(Counters::default());
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<u32>();
    let all_connected = Arc::new(tokio::sync::Barrier::new(states.len() + 1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut devices = tokio::task::JoinSet::new();
    let connect_started = Instant::now();
    // Each device that has all of its backfill acked adds a permit.
    let backfilled = Arc::new(Semaphore::new(0));
    let device_count = states.len();
    for state in states {
        let ctx = DeviceCtx {
            server: server.clone(),
            trust: trust.clone(),
            gate: gate.clone(),
            counters: counters.clone(),
            lat: lat_tx.clone(),
            connected: all_connected.clone(),
            stop: stop_rx.clone(),
            period: Duration::from_secs_f64(args.batch as f64 / args.rate),
            batch: args.batch,
            reconnect: args.reconnect,
            epoch: connect_started,
            backfill: backfill.map(|plan| (plan, backfilled.clone())),
        };
        devices.spawn(device(state, ctx));
    }
    drop(lat_tx);
    all_connected.wait().await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    tracing::info!(devices = args.devices, "all devices connected; streaming");
    let stream_started = Instant::now();
    match backfill {
        None => tokio::time::sleep(args.duration).await,
        Some(_) => {
            // Devices that failed to connect never finish; they are counted.
            let finishing = device_count as u64 - counters.failed_devices.load(Ordering::Relaxed);
            let n = u32::try_from(finishing).unwrap_or(u32::MAX);
            // A device whose link broke (without --reconnect) gives its
            // permit as it ends (`Backfill`'s drop), counted as failed.
            backfilled.acquire_many(n).await?.forget();
        }
    }
    let _ = stop_tx.send(true);
    while let Some(r) = devices.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!("device: {e}");
        }
    }
    let stream_secs = stream_started.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    while let Some(l) = lat_rx.recv().await {
        lat.push(l);
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    let acked = counters.acked.load(Ordering::Relaxed);
    let (first_loss, last_back) = (
        counters.first_loss_us.load(Ordering::Relaxed),
        counters.last_back_us.load(Ordering::Relaxed),
    );
    let all_back_secs = (first_loss != u64::MAX && last_back >= first_loss)
        .then(|| ((last_back - first_loss) as f64 / 1e3).round() / 1e3);
    if let Some(plan) = backfill {
        return Ok(serde_json::json!({
            "mode": "backfill",
            "devices": args.devices,
            "failed_devices": counters.failed_devices.load(Ordering::Relaxed),
            "samples_per_device": plan.total,
            "from_unix_ms": plan.start_ms,
            "interval_ms": plan.interval_ms,
            "samples_sent": counters.sent.load(Ordering::Relaxed),
            "samples_acked": acked,
            "backfill_secs": (stream_secs * 1000.0).round() / 1000.0,
            "acked_per_sec": (acked as f64 / stream_secs).round(),
            "device_ids": device_ids,
        }));
    }
    Ok(serde_json::json!({
        "disconnects": counters.disconnects.load(Ordering::Relaxed),
        "reconnects": counters.reconnects.load(Ordering::Relaxed),
        "all_back_secs": all_back_secs,
        // After the first lost link: when the links came back and when the
        // refused attempts were ([p50, p90, p99, max] seconds).
        "back_spread_secs": spread_secs(&counters.back_us, first_loss),
        "refused_spread_secs": spread_secs(&counters.refused_us, first_loss),
        "connect_errors_refused": counters.errors_refused.load(Ordering::Relaxed),
        "connect_errors_other": counters.errors_other.load(Ordering::Relaxed),
        "devices": args.devices,
        "failed_devices": counters.failed_devices.load(Ordering::Relaxed),
        "samples_sent": counters.sent.load(Ordering::Relaxed),
        "samples_acked": acked,
        "acked_per_sec": (acked as f64 / stream_secs).round(),
        "ack_p50_ms": pct(0.50),
        "ack_p99_ms": pct(0.99),
        "ack_max_ms": pct(1.0),
        "enroll_per_sec": (args.devices as f64 / enroll_secs).round(),
        "connect_all_secs": (connect_secs * 1000.0).round() / 1000.0,
        "rate_hz": args.rate,
        "batch": args.batch,
        "duration_secs": args.duration.as_secs_f64(),
    }))
}

struct DeviceCtx {
    server: ServerUrl,
    trust: Trust,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
    /// Ack latencies in microseconds.
    lat: mpsc::UnboundedSender<u32>,
    connected: Arc<tokio::sync::Barrier>,
    stop: tokio::sync::watch::Receiver<bool>,
    period: Duration,
    batch: usize,
    /// Reconnect after a lost link, as the agent does.
    reconnect: bool,
    /// The simulator's clock origin (outage times are kept relative to it).
    epoch: Instant,
    /// `--backfill`: what to send, and where to say it was all acked.
    backfill: Option<(BackfillPlan, Arc<Semaphore>)>,
}

/// A backfill's samples: `total` of them, the first at `start_ms`, one
/// every `interval_ms`.
#[derive(Debug, Clone, Copy)]
struct BackfillPlan {
    start_ms: i64,
    interval_ms: i64,
    total: u64,
}

/// Sent at once, as an agent's spool drains after a long time offline: the
/// agent's batch size and window.
const BACKFILL_BATCH: u64 = 256;
const BACKFILL_WINDOW: usize = 4;

/// A device's backfill in progress: samples made as they are sent (a
/// month at 1 s is 2.6 million of them), acks counted.
struct Backfill {
    plan: BackfillPlan,
    acked_upto: u64,
    done: Option<Arc<Semaphore>>,
}

impl Drop for Backfill {
    /// A device that ends before all of its backfill is acked (a broken
    /// link without `--reconnect`) still releases the wait for it.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.add_permits(1);
        }
    }
}

impl Backfill {
    /// Sample `seq` (1-based): counters that restart every 5 days, as after
    /// a reboot.
    fn sample(&self, seq: u64) -> Sample {
        let ts = self.plan.start_ms + (seq as i64 - 1) * self.plan.interval_ms;
        let per_boot = (5 * 86_400_000 / self.plan.interval_ms).max(1) as u64;
        let since_boot = seq % per_boot;
        Sample {
            seq,
            timestamp_unix_ms: ts,
            cpu_percent: (seq % 100) as f32,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 4 << 30,
            network_rx_bytes: since_boot * 1500,
            network_tx_bytes: since_boot * 700,
            ..Default::default()
        }
    }

    /// Counts the newly acked samples; the last one signals `done`.
    fn acked(&mut self, upto: u64, counters: &Counters) {
        let upto = upto.min(self.plan.total);
        if upto > self.acked_upto {
            counters
                .acked
                .fetch_add(upto - self.acked_upto, Ordering::Relaxed);
            self.acked_upto = upto;
        }
        if self.acked_upto == self.plan.total
            && let Some(done) = self.done.take()
        {
            done.add_permits(1);
        }
    }
}

/// Batches in flight per device at most. The agent's window is 4; the
/// simulator's is so wide that every sample goes as soon as it is taken (as
/// before it drove the agent's core), so a run measures the control plane's
/// ack latency rather than the simulator's own queue.
const WINDOW: usize = 4096;

/// A sample spooled (in memory) and not yet acked.
struct Pending {
    seq: u64,
    created: tokio::time::Instant,
    sample: Sample,
}

/// The simulator's delivery: samples in memory until acked, every ack
/// counted with its latency (from when the sample was taken).
struct SimDelivery {
    next_seq: u64,
    batch: usize,
    pending: VecDeque<Pending>,
    sent_upto: u64,
    in_flight: VecDeque<u64>,
    counters: Arc<Counters>,
    lat: mpsc::UnboundedSender<u32>,
    backfill: Option<Backfill>,
}

impl SimDelivery {
    fn release(&mut self, upto: u64, now: tokio::time::Instant) {
        while let Some(p) = self.pending.front() {
            if p.seq > upto {
                break;
            }
            self.counters.acked.fetch_add(1, Ordering::Relaxed);
            let us = now.saturating_duration_since(p.created).as_micros();
            let _ = self.lat.send(us.min(u32::MAX as u128) as u32);
            self.pending.pop_front();
        }
    }
}

impl Delivery for SimDelivery {
    fn on_connected(&mut self, telemetry: u64, _logs: u64, now: tokio::time::Instant) {
        self.sent_upto = 0;
        self.in_flight.clear();
        // What the store already holds counts as acked.
        if let Some(b) = &mut self.backfill {
            b.acked(telemetry, &self.counters);
            self.sent_upto = b.acked_upto;
            return;
        }
        self.release(telemetry, now);
    }

    fn next_telemetry(&mut self, _now: tokio::time::Instant) -> Option<TelemetryBatch> {
        if let Some(b) = &self.backfill {
            if self.in_flight.len() >= BACKFILL_WINDOW || self.sent_upto >= b.plan.total {
                return None;
            }
            let last = (self.sent_upto + BACKFILL_BATCH).min(b.plan.total);
            let samples: Vec<Sample> = (self.sent_upto + 1..=last).map(|s| b.sample(s)).collect();
            // Resends after a reconnect are counted once.
            let fresh = last.saturating_sub(self.next_seq.saturating_sub(1));
            self.next_seq = self.next_seq.max(last + 1);
            self.counters.sent.fetch_add(fresh, Ordering::Relaxed);
            self.sent_upto = last;
            self.in_flight.push_back(last);
            return Some(TelemetryBatch { samples });
        }
        if self.in_flight.len() >= WINDOW {
            return None;
        }
        // `pending` is in seq order: the first unsent one by binary search.
        let first = self.pending.partition_point(|p| p.seq <= self.sent_upto);
        let samples: Vec<Sample> = self
            .pending
            .range(first..)
            .take(self.batch)
            .map(|p| p.sample.clone())
            .collect();
        let last = samples.last()?.seq;
        self.sent_upto = last;
        self.in_flight.push_back(last);
        Some(TelemetryBatch { samples })
    }

    fn next_logs(&mut self, _now: tokio::time::Instant) -> Option<LogBatch> {
        None
    }

    fn on_telemetry_ack(&mut self, acked_seq: u64, now: tokio::time::Instant) {
        while self.in_flight.front().is_some_and(|&l| l <= acked_seq) {
            self.in_flight.pop_front();
        }
        if let Some(b) = &mut self.backfill {
            b.acked(acked_seq, &self.counters);
            return;
        }
        self.release(acked_seq, now);
    }

    fn on_log_ack(&mut self, _acked_seq: u64, _now: tokio::time::Instant) {}

    fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    fn loss_report(&self) -> SpoolReport {
        SpoolReport::default()
    }
}

/// One simulated device around the agent's [`Core`]: synthetic samples,
/// counters for the summary.
struct SimHost {
    server: ServerUrl,
    tls: Arc<rustls::ClientConfig>,
    counters: Arc<Counters>,
    stop: tokio::sync::watch::Receiver<bool>,
    stop_seen: bool,
    batch: usize,
    epoch: Instant,
    link: LinkState,
    connected_once: bool,
}

impl Host for SimHost {
    type Delivery = SimDelivery;
    type Input = ();
    type Error = std::convert::Infallible;

    fn connect(&mut self) -> BoxFuture<'static, Result<OpenLink, LinkError>> {
        let (server, tls) = (self.server.clone(), self.tls.clone());
        Box::pin(open_link(server, tls))
    }

    fn started(&mut self, start: &SessionStart) -> Started {
        Started {
            last_telemetry_seq: start.last_telemetry_seq,
            last_log_seq: start.last_log_seq,
            settings: start.settings,
            config: start.config.clone(),
            wall_ms: outpost_agent::clock::system_ms(),
            cert: None,
            desired: None,
        }
    }

    fn rotate(
        &mut self,
        _client: Option<DeviceServiceClient<Channel>>,
    ) -> BoxFuture<'static, Result<(), String>> {
        // Rules::rotate is off: never asked.
        Box::pin(async { Err("the simulator does not rotate keys".to_string()) })
    }

    fn take_sample(&mut self, d: &mut SimDelivery) {
        if d.backfill.is_some() {
            return; // the backfill's samples are all there from the start
        }
        let created = tokio::time::Instant::now();
        for _ in 0..self.batch {
            let seq = d.next_seq;
            d.next_seq += 1;
            let sample = Sample {
                seq,
                timestamp_unix_ms: outpost_agent::clock::system_ms(),
                cpu_percent: 12.5,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 4 << 30,
                ..Default::default()
            };
            d.pending.push_back(Pending {
                seq,
                created,
                sample,
            });
        }
        self.counters
            .sent
            .fetch_add(self.batch as u64, Ordering::Relaxed);
    }

    async fn next_input(&mut self) {
        if self.stop_seen {
            return std::future::pending().await;
        }
        let _ = self.stop.wait_for(|s| *s).await;
        self.stop_seen = true;
    }

    fn on_input(&mut self, _: (), core: &mut Core<SimDelivery>, now: tokio::time::Instant) {
        core.handle(Event::Stop, now);
    }

    fn on_output(&mut self, output: &Output, _: &SimDelivery) -> Result<(), Self::Error> {
        let Output::Link { state, error } = output else {
            return Ok(());
        };
        let c = &self.counters;
        let since_epoch = self.epoch.elapsed().as_micros() as u64;
        match (self.link, *state) {
            (LinkState::Connected, LinkState::Disconnected) => {
                tracing::debug!("link lost: {}", error.as_deref().unwrap_or(""));
                c.disconnects.fetch_add(1, Ordering::Relaxed);
                c.first_loss_us.fetch_min(since_epoch, Ordering::Relaxed);
            }
            (LinkState::Connecting, LinkState::Disconnected) => {
                let refused = count_connect_error(c, error.as_deref().unwrap_or(""));
                if refused {
                    lock(&c.refused_us).push(since_epoch);
                }
            }
            (_, LinkState::Connected) if self.connected_once => {
                c.reconnects.fetch_add(1, Ordering::Relaxed);
                c.last_back_us.fetch_max(since_epoch, Ordering::Relaxed);
                lock(&c.back_us).push(since_epoch);
            }
            (_, LinkState::Connected) => self.connected_once = true,
            _ => {}
        }
        self.link = *state;
        Ok(())
    }
}

/// Connects and opens a session (hello, start, telemetry stream; no logs).
async fn open_link(
    server: ServerUrl,
    tls: Arc<rustls::ClientConfig>,
) -> Result<OpenLink, LinkError> {
    let channel = link::connect(&server, tls).await?;
    let facts = DeviceFacts {
        hostname: "sim".into(),
        ..Default::default()
    };
    session::open(link::client(channel), facts, Vec::new(), false, WINDOW).await
}

/// Counts a failed connection attempt by kind, logging the first few;
/// true for a refusal.
fn count_connect_error(counters: &Counters, text: &str) -> bool {
    let refused = text.contains("refused") || text.contains("Connection refused");
    if refused {
        counters.errors_refused.fetch_add(1, Ordering::Relaxed);
    } else if counters.errors_other.fetch_add(1, Ordering::Relaxed) < 5 {
        tracing::warn!("connect failed (not a refusal): {text}");
    }
    refused
}

/// A poisoned lock only means another device task panicked; its numbers
/// are still good.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Seconds after `from_us` (the first lost link) at which the given share
/// of the events had happened: `[p50, p90, p99, max]`; empty without any.
fn spread_secs(events_us: &std::sync::Mutex<Vec<u64>>, from_us: u64) -> Vec<f64> {
    let mut v = lock(events_us).clone();
    // Refusals before the outage (at start-up) are not part of it.
    v.retain(|&t| t >= from_us);
    if v.is_empty() || from_us == u64::MAX {
        return Vec::new();
    }
    v.sort_unstable();
    [0.5, 0.9, 0.99, 1.0]
        .iter()
        .map(|p| {
            let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
            (v[i].saturating_sub(from_us) as f64 / 1e3).round() / 1e3
        })
        .collect()
}

/// One simulated device: connect (paced by the gate), wait until every
/// device is connected, then run the agent's core until stopped — sampling,
/// heartbeats, reconnecting with the agent's backoff after a lost link (with
/// `--reconnect`), resending what was not acked, and draining on stop.
async fn device(state: StateDir, ctx: DeviceCtx) -> Result<(), Error> {
    let identity = outpost_agent::enroll::load_client_identity(&state)?;
    let tls = link::client_config(&ctx.trust, Some(identity))?;
    // First connection: paced by the gate, a few quick retries.
    let first = async {
        let _permit = ctx.gate.acquire().await?;
        let mut tries = 0;
        loop {
            match open_link(ctx.server.clone(), tls.clone()).await {
                Ok(l) => break Ok::<_, Error>(l),
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::debug!("connect retry: {e}");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => break Err(e.into()),
            }
        }
    }
    .await;
    let first = match first {
        Ok(l) => l,
        Err(e) => {
            ctx.counters.failed_devices.fetch_add(1, Ordering::Relaxed);
            ctx.connected.wait().await;
            return Err(e);
        }
    };
    ctx.connected.wait().await;

    let rules = Rules {
        drain_timeout: Duration::from_secs(10),
        rotate: false,
        reconnect: ctx.reconnect,
        write_status: false,
        ..Rules::default()
    };
    let delivery = SimDelivery {
        next_seq: 1,
        batch: ctx.batch,
        pending: VecDeque::new(),
        sent_upto: 0,
        in_flight: VecDeque::new(),
        counters: ctx.counters.clone(),
        lat: ctx.lat,
        backfill: ctx.backfill.map(|(plan, done)| Backfill {
            plan,
            acked_upto: 0,
            done: Some(done),
        }),
    };
    // Spread the fleet's samples over the period.
    let offset = ctx.period.mul_f64(rand::random::<f64>());
    let mut core = Core::new(
        rules,
        delivery,
        ctx.period,
        offset,
        Reconnect::new(),
        0.0,
        tokio::time::Instant::now(),
    );
    let mut host = SimHost {
        server: ctx.server,
        tls,
        counters: ctx.counters,
        stop: ctx.stop,
        stop_seen: false,
        batch: ctx.batch,
        epoch: ctx.epoch,
        link: LinkState::Connecting,
        connected_once: false,
    };
    match driver::drive(&mut core, &mut host, Some(first)).await {
        Ok(Exit::LinkLost) => Err("link lost".into()),
        Ok(_) => Ok(()),
        Err(never) => match never {},
    }
}

/// `--fetch-artifact`: every device connects (paced by `--concurrency`),
/// then all download `id` at once; bytes are counted and discarded.
async fn fetch_all(
    args: &Args,
    id: &str,
    states: Vec<StateDir>,
    server: &ServerUrl,
    trust: &Trust,
    enroll_secs: f64,
) -> Result<serde_json::Value, Error> {
    let (name, version) = outpost_common::artifact::parse_id(id)?;
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let all_connected = Arc::new(tokio::sync::Barrier::new(states.len() + 1));
    let bytes = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let mut devices = tokio::task::JoinSet::new();
    for state in states {
        let (gate, connected, server, trust) = (
            gate.clone(),
            all_connected.clone(),
            server.clone(),
            trust.clone(),
        );
        let (name, version) = (name.clone(), version.clone());
        let (bytes, busy, retries) = (bytes.clone(), busy.clone(), retries.clone());
        devices.spawn(async move {
            let channel = async {
                let _permit = gate.acquire().await?;
                let identity = outpost_agent::enroll::load_client_identity(&state)?;
                let tls = link::client_config(&trust, Some(identity))?;
                Ok::<_, Error>(link::connect(&server, tls).await?)
            }
            .await;
            connected.wait().await;
            let mut client = link::client(channel?);
            let started = Instant::now();
            let mut offset = 0u64;
            let mut attempt = 0u32;
            loop {
                let req = outpost_proto::v1::FetchArtifactRequest {
                    name: name.clone(),
                    version: version.clone(),
                    offset,
                };
                let result = async {
                    let mut stream = client.fetch_artifact(req).await?.into_inner();
                    while let Some(chunk) = stream.message().await? {
                        offset += chunk.data.len() as u64;
                        bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                    }
                    Ok::<_, tonic::Status>(())
                }
                .await;
                match result {
                    Ok(()) => break,
                    Err(status) => {
                        if status.code() == tonic::Code::ResourceExhausted {
                            busy.fetch_add(1, Ordering::Relaxed);
                        } else if matches!(
                            status.code(),
                            tonic::Code::NotFound
                                | tonic::Code::PermissionDenied
                                | tonic::Code::Unauthenticated
                        ) {
                            return Err::<(u64, f64), Error>(status.into());
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                        attempt = (attempt + 1).min(6);
                        let base = 100u64 << attempt;
                        let jitter = rand::random::<u64>() % base;
                        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
                    }
                }
            }
            Ok((offset, started.elapsed().as_secs_f64()))
        });
    }
    all_connected.wait().await;
    tracing::info!(devices = args.devices, "all devices connected; fetching");
    let started = Instant::now();
    let (mut done, mut failed) = (0u64, 0u64);
    let mut secs: Vec<f64> = Vec::new();
    while let Some(r) = devices.join_next().await {
        match r {
            Ok(Ok((_, s))) => {
                done += 1;
                secs.push(s);
            }
            Ok(Err(e)) => {
                failed += 1;
                tracing::warn!("fetch failed: {e}");
            }
            Err(e) => {
                failed += 1;
                tracing::warn!("device task: {e}");
            }
        }
    }
    let total_secs = started.elapsed().as_secs_f64();
    secs.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if secs.is_empty() {
            return 0.0;
        }
        let i = ((secs.len() as f64 * p).ceil() as usize).clamp(1, secs.len()) - 1;
        (secs[i] * 1000.0).round() / 1000.0
    };
    let total = bytes.load(Ordering::Relaxed);
    Ok(serde_json::json!({
        "devices": args.devices,
        "artifact": id,
        "downloads_completed": done,
        "downloads_failed": failed,
        "bytes_received": total,
        "fetch_all_secs": (total_secs * 1000.0).round() / 1000.0,
        "throughput_mib_per_sec": ((total as f64 / total_secs / 1048576.0) * 10.0).round() / 10.0,
        "device_secs_p50": pct(0.5),
        "device_secs_max": pct(1.0),
        "refused_busy": busy.load(Ordering::Relaxed),
        "retries": retries.load(Ordering::Relaxed),
        "enroll_per_sec": (args.devices as f64 / enroll_secs).round(),
    }))
}
