//! `outpost-fleet-sim`: a fleet of simulated agents against a real control
//! plane, for benchmarks and load tests. It uses the agent's own code for
//! enrollment (key generated and stored per device, CSR, `Enroll`), the mTLS
//! link and the wire messages; each device holds its own TLS connection with
//! a session (hello, heartbeats) and a telemetry stream, and pushes one
//! sample per batch at `--rate` samples per second, measuring the time from
//! send to ack. The last line printed is a JSON summary.
//!
//! outpost-fleet-sim --rest URL --server URL --ca-file FILE --workspace WS \
//!     --api-key KEY --devices N --duration 20s --rate HZ
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use outpost_agent::link::{self, ServerUrl, Trust};
use outpost_agent::state::StateDir;
use outpost_proto::v1::agent_message::Kind as AgentKind;
use outpost_proto::v1::{AgentMessage, DeviceFacts, Heartbeat, Hello, Sample, TelemetryBatch};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

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
            Ok::<_, Error>((i, install))
        });
    }
    let mut installs = Vec::with_capacity(args.devices);
    while let Some(r) = creates.join_next().await {
        installs.push(r??);
    }
    installs.sort();
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
            outpost_agent::enroll::enroll(&state, &server, &install, &trust, facts).await?;
            Ok::<_, Error>(state)
        });
    }
    let mut states = Vec::new();
    while let Some(r) = enrolls.join_next().await {
        states.push(r??);
    }
    let enroll_secs = started.elapsed().as_secs_f64();
    tracing::info!(devices = args.devices, "all devices enrolled; connecting");

    // 3. Connect every device, then stream for `duration`.
    let counters = Arc::new(Counters::default());
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<u32>();
    let all_connected = Arc::new(tokio::sync::Barrier::new(states.len() + 1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut devices = tokio::task::JoinSet::new();
    let connect_started = Instant::now();
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
        };
        devices.spawn(device(state, ctx));
    }
    drop(lat_tx);
    all_connected.wait().await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    tracing::info!(devices = args.devices, "all devices connected; streaming");
    let stream_started = Instant::now();
    tokio::time::sleep(args.duration).await;
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
    Ok(serde_json::json!({
        "disconnects": counters.disconnects.load(Ordering::Relaxed),
        "reconnects": counters.reconnects.load(Ordering::Relaxed),
        "all_back_secs": all_back_secs,
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
}

/// A sample sent and not yet acked: resent after a reconnect.
struct Pending {
    seq: u64,
    sent_at: Instant,
    sample: Sample,
}

/// An open link: the session and telemetry streams of one connection.
struct Link {
    session_tx: mpsc::Sender<AgentMessage>,
    session: tonic::Streaming<outpost_proto::v1::ServerMessage>,
    tx: mpsc::Sender<TelemetryBatch>,
    acks: tonic::Streaming<outpost_proto::v1::TelemetryAck>,
}

async fn open_link(
    client: &mut outpost_proto::v1::device_service_client::DeviceServiceClient<
        tonic::transport::Channel,
    >,
) -> Result<Link, Error> {
    let (session_tx, session_rx) = mpsc::channel::<AgentMessage>(4);
    let hello = AgentMessage {
        kind: Some(AgentKind::Hello(Hello {
            facts: Some(DeviceFacts {
                hostname: "sim".into(),
                ..Default::default()
            }),
        })),
    };
    session_tx.send(hello).await?;
    let mut session = client
        .session(ReceiverStream::new(session_rx))
        .await?
        .into_inner();
    session.message().await?.ok_or("no session start")?;
    let (tx, rx) = mpsc::channel::<TelemetryBatch>(64);
    let acks = client
        .push_telemetry(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Link {
        session_tx,
        session,
        tx,
        acks,
    })
}

/// Counts a failed connection attempt by kind, logging the first few.
fn count_connect_error(counters: &Counters, e: &Error) {
    let text = e.to_string();
    let refused = text.contains("refused") || text.contains("Connection refused");
    if refused {
        counters.errors_refused.fetch_add(1, Ordering::Relaxed);
    } else if counters.errors_other.fetch_add(1, Ordering::Relaxed) < 5 {
        tracing::warn!("connect failed (not a refusal): {text}");
    }
}

/// One simulated device: connect, stream until stopped (reconnecting after
/// a lost link with `--reconnect`, resending what was not acked), then wait
/// briefly for the last acks.
async fn device(state: StateDir, mut ctx: DeviceCtx) -> Result<(), Error> {
    let identity = outpost_agent::enroll::load_client_identity(&state)?;
    let tls = link::client_config(&ctx.trust, Some(identity))?;
    // First connection: paced by the gate, a few quick retries.
    let first = async {
        let _permit = ctx.gate.acquire().await?;
        let mut tries = 0;
        loop {
            let attempt = async {
                let ch = link::connect(&ctx.server, tls.clone()).await?;
                let mut client = link::client(ch);
                let l = open_link(&mut client).await?;
                Ok::<_, Error>((client, l))
            };
            match attempt.await {
                Ok(c) => break Ok::<_, Error>(c),
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::debug!("connect retry: {e}");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => break Err(e),
            }
        }
    }
    .await;
    let (_client, mut l) = match first {
        Ok(c) => c,
        Err(e) => {
            ctx.counters.failed_devices.fetch_add(1, Ordering::Relaxed);
            ctx.connected.wait().await;
            return Err(e);
        }
    };
    ctx.connected.wait().await;

    let mut seq = 0u64;
    let mut pending: std::collections::VecDeque<Pending> = Default::default();
    // Spread the fleet's samples over the period.
    let offset = ctx.period.mul_f64(rand::random::<f64>());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, ctx.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    let mut stopping = false;
    let drain_deadline = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(drain_deadline);
    loop {
        let lost: Error = loop {
            tokio::select! {
                _ = tick.tick(), if !stopping => {
                    let now = Instant::now();
                    let mut samples = Vec::with_capacity(ctx.batch);
                    for _ in 0..ctx.batch {
                        seq += 1;
                        let sample = Sample {
                            seq,
                            timestamp_unix_ms: outpost_agent::enroll::now_ms(),
                            cpu_percent: 12.5,
                            memory_used_bytes: 1 << 30,
                            memory_total_bytes: 4 << 30,
                            ..Default::default()
                        };
                        pending.push_back(Pending { seq, sent_at: now, sample: sample.clone() });
                        samples.push(sample);
                    }
                    ctx.counters.sent.fetch_add(ctx.batch as u64, Ordering::Relaxed);
                    if l.tx.send(TelemetryBatch { samples }).await.is_err() {
                        break "telemetry stream closed".into();
                    }
                }
                _ = heartbeat.tick() => {
                    let hb = AgentMessage { kind: Some(AgentKind::Heartbeat(Heartbeat { sent_at_unix_ms: outpost_agent::enroll::now_ms() })) };
                    let _ = l.session_tx.try_send(hb);
                }
                ack = l.acks.message() => match ack {
                    Ok(Some(a)) => {
                        while let Some(p) = pending.front() {
                            if p.seq > a.acked_seq { break; }
                            ctx.counters.acked.fetch_add(1, Ordering::Relaxed);
                            let _ = ctx.lat.send(p.sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            pending.pop_front();
                        }
                        if stopping && pending.is_empty() { return Ok(()); }
                    }
                    Ok(None) => break "the server closed the telemetry stream".into(),
                    Err(e) => break e.into(),
                },
                _ = ctx.stop.changed(), if !stopping => {
                    stopping = true;
                    if pending.is_empty() { return Ok(()); }
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(10));
                }
                _ = &mut drain_deadline, if stopping => return Ok(()),
                msg = l.session.message() => match msg {
                    Ok(Some(_)) => {}
                    Ok(None) => break "the server closed the session".into(),
                    Err(e) => break e.into(),
                },
            }
        };
        if !ctx.reconnect || stopping {
            return Err(lost);
        }
        // The link is gone: back off with the agent's jittered policy and
        // reconnect, unpaced (a real fleet has no shared gate).
        tracing::debug!("link lost: {lost}");
        ctx.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        ctx.counters
            .first_loss_us
            .fetch_min(ctx.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut backoff = outpost_agent::backoff::Reconnect::new();
        l = loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                // The run ended while the server was still away.
                _ = ctx.stop.changed() => return Err(lost),
            }
            let attempt = async {
                let ch = link::connect(&ctx.server, tls.clone()).await?;
                let mut client = link::client(ch);
                open_link(&mut client).await
            };
            match attempt.await {
                Ok(l) => break l,
                Err(e) => count_connect_error(&ctx.counters, &e),
            }
        };
        ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        ctx.counters
            .last_back_us
            .fetch_max(ctx.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        // Resend what the old link did not get acked (the store dedupes).
        let unacked: Vec<Sample> = pending.iter().map(|p| p.sample.clone()).collect();
        for chunk in unacked.chunks(ctx.batch.max(1)) {
            let batch = TelemetryBatch {
                samples: chunk.to_vec(),
            };
            if l.tx.send(batch).await.is_err() {
                break;
            }
        }
    }
}
