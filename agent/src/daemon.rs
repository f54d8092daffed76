//! `outpost-agent run`: enroll if needed, then keep a connection up with
//! jittered exponential backoff, sampling on schedule whether connected or
//! not.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::backoff::{HEALTHY_AFTER, Reconnect};
use crate::clock::Clock;
use crate::collect::Collector;
use crate::config::AgentConfig;
use crate::enroll::{self, EnrollError, now_ms};
use crate::link::{self, LinkError, ServerUrl, Trust};
use crate::logship::{LogSources, SourcedLine};
use crate::rotate::RotateError;
use crate::session;
use crate::spool::{SpoolError, SpoolOptions};
use crate::state::{RuntimeStatus, StateDir};
use crate::uplink::{Outbox, OutboxLimits};
use outpost_proto::v1::{LogBatch, SpoolReport, TelemetryBatch};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Enroll(#[from] EnrollError),
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    #[error("{0}")]
    Collect(#[from] crate::collect::CollectError),
    #[error("{0}")]
    Rotate(#[from] RotateError),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Logs(#[from] crate::logship::LogShipError),
    #[error("{0}")]
    Config(String),
    #[error(
        "this box's certificate expired longer ago than the control plane's grace window: it needs a new install ID (POST /{{workspace}}/devices/v2/{{id}}/install-id, then outpost-agent enroll)"
    )]
    CredentialsExpired,
    #[error(
        "this device was deleted by an operator (decommissioned); its credentials have been wiped. Re-enroll with a new install ID to bring the box back."
    )]
    Decommissioned,
}

/// Everything a connection needs, owned by the daemon across reconnects.
pub struct Agent {
    pub state: StateDir,
    pub server: ServerUrl,
    pub device_id: String,
    pub tls: Arc<ClientConfig>,
    pub trust: Trust,
    pub clock: Arc<Clock>,
    pub collector: Collector,
    /// Telemetry, spooled until acked.
    pub outbox: Outbox,
    /// Log lines, spooled until acked.
    pub logs: Outbox,
    pub log_sources: LogSources,
    pub sample_tick: Interval,
    /// Stamped by the main loop (the watchdog's evidence of progress).
    pub health: crate::notify::Health,
    /// The configuration in force (replaced on SIGHUP).
    cfg: AgentConfig,
    interval: Duration,
    /// The interval from flags/config, used when the server sets none.
    local_interval: Duration,
    /// This agent's place in the fleet's rotation spread, -1..=1.
    rotation_jitter: f64,
    status: RuntimeStatus,
    /// Since when a status change is not yet in status.json, and when it
    /// was last written.
    status_dirty_since: Option<std::time::Instant>,
    status_written: Option<std::time::Instant>,
}

/// status.json (read by `outpost-agent status`) is rewritten at most this
/// often; a change in between is written by a later turn of the main loop
/// (which wakes for it: [`Agent::next_chore`]). Link changes are written at once.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Other changes wait this long before they are written, so that the
/// changes of one exchange (a sample spooled, then its ack a few
/// milliseconds later) make one write of status.json, not two.
const STATUS_SETTLE: Duration = Duration::from_millis(500);

impl Agent {
    /// Rebuilds the TLS config from the identity on disk (after a rotation).
    pub fn reload_tls(&mut self) -> Result<(), AgentError> {
        let identity = enroll::load_client_identity(&self.state)?;
        self.tls = link::client_config_at(&self.trust, Some(identity), self.clock.clone())?;
        Ok(())
    }

    /// When the current certificate should be rotated, unix ms (by our clock).
    pub fn rotation_due_ms(&self) -> Option<i64> {
        let (chain, _) = enroll::load_client_identity(&self.state).ok()?;
        let v = crate::rotate::validity(chain.first()?).ok()?;
        let start = v.not_before_ms.max(self.state.cert_saved_ms().unwrap_or(0));
        Some(crate::rotate::rotation_due_ms(
            start,
            v.not_after_ms,
            self.rotation_jitter,
        ))
    }

    /// The control plane's authenticated time: raise and persist the floor.
    pub fn observe_server_time(&mut self, server_ms: i64) {
        let floor = self.clock.observe_good_time(server_ms);
        if let Err(e) = self.state.save_clock_floor(floor) {
            tracing::warn!("cannot persist the clock floor: {e}");
        }
    }

    pub fn take_sample(&mut self) {
        let mut sample = self.collector.sample(self.clock.now_ms());
        let pushed = self.outbox.push_with(|seq| {
            sample.seq = seq;
            prost::Message::encode_to_vec(&sample)
        });
        if let Err(e) = pushed {
            tracing::error!("a telemetry sample could not be spooled (lost): {e}");
        }
        self.write_status();
    }

    /// Spools lines from the log sources and records where each source stands.
    pub fn take_log_lines(&mut self, mut lines: Vec<SourcedLine>) {
        // File lines are stamped when read: by our floored clock, not the
        // raw one (a box without an RTC boots in 1970).
        let now = self.clock.now_ms();
        for l in &mut lines {
            if l.source.starts_with("file:") {
                l.line.timestamp_ms = now;
            }
        }
        let first = self.logs.next_seq();
        let payloads = self.log_sources.encode(lines, first);
        let mut it = payloads.into_iter();
        let spooled = self.logs.push_all(|_| it.next());
        let result = spooled
            .map_err(AgentError::from)
            .and_then(|n| Ok(self.log_sources.save(first + n - 1)?));
        if let Err(e) = result {
            // Not lost: the sources start again from the saved positions
            // (plus what the spool holds beyond them) and read these again.
            tracing::error!("log lines could not be spooled (read again shortly): {e}");
            self.restart_log_sources();
        }
        self.write_status();
    }

    /// Starts the log sources again from their saved positions.
    fn restart_log_sources(&mut self) {
        let logs = &mut self.logs;
        match LogSources::start(
            &self.state.root().join("spool").join("logs"),
            &self.cfg.log_files,
            &self.cfg.journal_units,
            journalctl(),
            self.cfg.log_rate_limit,
            |after| logs.peek_after(after),
        ) {
            Ok(sources) => self.log_sources = sources,
            Err(e) => tracing::error!("log sources not restarted: {e}"),
        }
    }

    /// The next telemetry batch to send, if any (spool errors are logged).
    pub fn next_telemetry_batch(&mut self) -> Option<TelemetryBatch> {
        let records = self
            .outbox
            .next_batch()
            .inspect_err(|e| tracing::error!("cannot read the telemetry spool: {e}"))
            .ok()??;
        let samples = records
            .into_iter()
            .filter_map(|(seq, p)| {
                <outpost_proto::v1::Sample as prost::Message>::decode(p.as_slice())
                    .inspect_err(|e| tracing::warn!(seq, "undecodable spooled sample skipped: {e}"))
                    .ok()
            })
            .collect();
        Some(TelemetryBatch { samples })
    }

    /// The next log batch to send, if any.
    pub fn next_log_batch(&mut self) -> Option<LogBatch> {
        let records = self
            .logs
            .next_batch()
            .inspect_err(|e| tracing::error!("cannot read the log spool: {e}"))
            .ok()??;
        Some(LogBatch {
            records: crate::logship::records(records),
        })
    }

    /// A connection started: the store holds telemetry up to `telemetry`
    /// and logs up to `logs`.
    pub fn on_connected(&mut self, telemetry: u64, logs: u64) {
        for (what, outbox, last) in [
            ("telemetry", &mut self.outbox, telemetry),
            ("log", &mut self.logs, logs),
        ] {
            if let Err(e) = outbox.on_connected(last) {
                tracing::error!("{what} spool: {e}");
            }
        }
    }

    pub fn on_log_ack(&mut self, acked_seq: u64) {
        if let Err(e) = self.logs.on_ack(acked_seq) {
            tracing::error!("log spool: {e}");
        }
        self.write_status();
    }

    /// What this agent lost, as running totals (sent to the control plane).
    pub fn loss_report(&self) -> SpoolReport {
        SpoolReport {
            telemetry_dropped: self.outbox.dropped(),
            logs_dropped: self.logs.dropped(),
            corrupt: self.outbox.corrupt() + self.logs.corrupt(),
            logs_rate_limited: self.log_sources.rate_limited(),
        }
    }

    /// Applies a reloaded configuration: log level, telemetry interval (when
    /// the server has not set one) and log sources change live; the rest
    /// (server, state dir, spool bound) needs a restart.
    pub fn reload(&mut self, cfg: AgentConfig) {
        crate::notify::reloading();
        if let Some(level) = &cfg.log_level
            && let Err(e) = outpost_common::set_log_filter(level)
        {
            tracing::warn!("{e}");
        }
        if self.interval == self.local_interval {
            self.set_interval(cfg.interval);
        }
        self.local_interval = cfg.interval;
        let sources_changed = cfg.log_files != self.cfg.log_files
            || cfg.journal_units != self.cfg.journal_units
            || cfg.log_rate_limit != self.cfg.log_rate_limit;
        if sources_changed {
            self.cfg.log_files = cfg.log_files.clone();
            self.cfg.journal_units = cfg.journal_units.clone();
            self.cfg.log_rate_limit = cfg.log_rate_limit;
            // The old tasks stop; lines they read but did not hand over are
            // read again (their positions were not saved).
            self.restart_log_sources();
            tracing::info!(
                files = cfg.log_files.len(),
                units = cfg.journal_units.len(),
                "log sources reloaded"
            );
        }
        let restart_needed = cfg.server != self.cfg.server
            || cfg.state_dir != self.cfg.state_dir
            || cfg.spool_max_bytes != self.cfg.spool_max_bytes
            || cfg.spool_fsync != self.cfg.spool_fsync;
        if restart_needed {
            tracing::warn!("server, state dir and spool settings change only with a restart");
        }
        self.cfg = cfg;
        tracing::info!("configuration reloaded");
        crate::notify::reloaded();
    }

    /// Clean stop: both spools flushed.
    pub fn stopped(&mut self) {
        for o in [&mut self.outbox, &mut self.logs] {
            if let Err(e) = o.flush() {
                tracing::error!("spool flush failed: {e}");
            }
        }
        self.set_link("stopped", None);
    }

    /// Flushes both spools (interval fsync policy).
    pub fn sync_spools(&mut self) {
        for o in [&mut self.outbox, &mut self.logs] {
            if let Err(e) = o.sync_if_due() {
                tracing::error!("spool sync failed: {e}");
            }
        }
    }

    /// The telemetry interval in force.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn local_interval(&self) -> Duration {
        self.local_interval
    }

    pub fn set_interval(&mut self, interval: Duration) {
        if interval != self.interval {
            tracing::info!(?interval, "telemetry interval changed");
            self.interval = interval;
            self.sample_tick = sample_interval(interval);
        }
    }

    pub fn set_link(&mut self, link: &str, error: Option<String>) {
        self.status.link = link.to_string();
        if error.is_some() {
            self.status.last_error = error;
        }
        self.mark_status_dirty();
        self.flush_status(true);
    }

    pub fn set_connected(&mut self) {
        self.status.last_connected_unix_ms = Some(now_ms());
        self.status.last_error = None;
        self.set_link("connected", None);
    }

    pub fn on_ack(&mut self, acked_seq: u64) {
        if let Err(e) = self.outbox.on_ack(acked_seq) {
            tracing::error!("telemetry spool: {e}");
        }
        self.status.acked_seq = self.status.acked_seq.max(acked_seq);
        self.status.last_ack_unix_ms = Some(now_ms());
        self.write_status();
    }

    pub fn set_next_rotation(&mut self, due_ms: Option<i64>) {
        self.status.next_rotation_unix_ms = due_ms;
        self.write_status();
    }

    /// Records that the status changed: written [`STATUS_SETTLE`] later (at
    /// most once per [`STATUS_EVERY`]) by [`Agent::flush_status_if_due`].
    pub fn write_status(&mut self) {
        self.mark_status_dirty();
        self.flush_status(false);
    }

    fn mark_status_dirty(&mut self) {
        self.status_dirty_since
            .get_or_insert_with(std::time::Instant::now);
    }

    /// When a pending status change is due to be written.
    fn status_due(&self) -> Option<std::time::Instant> {
        let settled = self.status_dirty_since? + STATUS_SETTLE;
        Some(match self.status_written {
            Some(w) => settled.max(w + STATUS_EVERY),
            None => settled,
        })
    }

    /// Writes a pending status change once it is due ([`Agent::status_due`];
    /// the main loops call this every turn, and wake for it: [`Agent::next_chore`]).
    pub fn flush_status_if_due(&mut self) {
        self.flush_status(false);
    }

    /// The housekeeping of every turn of the main loops: stamp the health,
    /// sync the spools if their fsync interval is due, write a pending status.
    pub fn chores(&mut self) {
        self.health.beat();
        self.sync_spools();
        self.flush_status_if_due();
    }

    /// When the main loop must turn for [`Agent::chores`] even if nothing
    /// else happens: the watchdog's next beat, a pending status write, a
    /// spool sync under an interval fsync policy. `None`: nothing is
    /// pending, so the loop sleeps until a sample, an ack, a log line or a
    /// signal (an idle agent wakes only for those).
    pub fn next_chore(&self) -> Option<Instant> {
        [
            self.health.next_beat(),
            self.status_due(),
            self.outbox.sync_due(),
            self.logs.sync_due(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(Instant::from_std)
    }

    fn flush_status(&mut self, force: bool) {
        let Some(due) = self.status_due() else {
            return;
        };
        if !force && due > std::time::Instant::now() {
            return;
        }
        self.status_dirty_since = None;
        self.status_written = Some(std::time::Instant::now());
        self.status.pending_samples = self.outbox.pending();
        self.status.dropped_samples = self.outbox.dropped();
        self.status.next_seq = self.outbox.next_seq();
        self.status.pending_logs = self.logs.pending();
        self.status.logs_acked_seq = self.logs.acked();
        self.status.dropped_logs = self.logs.dropped();
        self.status.corrupt_records = self.outbox.corrupt() + self.logs.corrupt();
        self.status.rate_limited_logs = self.log_sources.rate_limited();
        self.status.updated_unix_ms = now_ms();
        if let Err(e) = self.state.save_status(&self.status) {
            tracing::warn!("cannot write status file: {e}");
        }
    }
}

/// The journalctl binary (`OUTPOST_JOURNALCTL` overrides it).
fn journalctl() -> std::path::PathBuf {
    std::env::var_os("OUTPOST_JOURNALCTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "journalctl".into())
}

fn sample_interval(every: Duration) -> Interval {
    // The first sample comes one period in, when CPU usage has a baseline.
    let mut i = tokio::time::interval_at(Instant::now() + every, every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

/// Sleeps until `at` (forever when `None`).
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves once `stop` flips to true (or its sender is gone).
pub async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the process tells the daemon: stop, or a reloaded configuration
/// (SIGHUP).
pub struct Signals {
    pub stop: watch::Receiver<bool>,
    pub reload: tokio::sync::mpsc::Receiver<AgentConfig>,
}

/// The next reloaded configuration (pending forever once the sender is gone).
pub async fn reloaded(rx: &mut tokio::sync::mpsc::Receiver<AgentConfig>) -> AgentConfig {
    match rx.recv().await {
        Some(c) => c,
        None => std::future::pending().await,
    }
}

/// Runs the daemon until `stop` flips: enrolls if needed, then connects,
/// samples and ships, reconnecting with backoff.
pub async fn run(cfg: AgentConfig, mut signals: Signals) -> Result<(), AgentError> {
    let mut health = crate::notify::Health::new();
    crate::notify::spawn_watchdog(&mut health);
    let stop = &mut signals.stop;
    let state = StateDir::open(&cfg.state_dir)?;
    let collector = Collector::new()?;
    let identity = match state.identity()? {
        Some(id) => id,
        None => {
            let (Some(server), Some(install_id), Some(trust)) =
                (&cfg.server, &cfg.install_id, &cfg.trust)
            else {
                return Err(AgentError::Config(format!(
                    "this box is not enrolled ({} has no identity): run `outpost-agent enroll` or configure server, install-id and ca-file/ca-fingerprint",
                    state.root().display()
                )));
            };
            crate::notify::ready();
            crate::notify::status("enrolling");
            let Some(id) =
                enroll_with_retry(&state, server, install_id, trust, &collector, stop, &health)
                    .await?
            else {
                return Ok(());
            };
            id
        }
    };
    let server = match &cfg.server {
        Some(s) => s.clone(),
        None => ServerUrl::parse(&identity.server)?,
    };
    state.recover_rotation()?;
    let clock = Clock::new(state.clock_floor());
    let trust = Trust::from_ca_file(&state.ca_path())?;
    let tls = link::client_config_at(
        &trust,
        Some(enroll::load_client_identity(&state)?),
        clock.clone(),
    )?;
    let spool_dir = state.root().join("spool");
    // A quarter of the bound for telemetry (a day at 10 s is ~5 MiB), the
    // rest for logs.
    let spool = |share: u64| SpoolOptions::bounded(cfg.spool_max_bytes / share, cfg.spool_fsync);
    let outbox = Outbox::open(
        &spool_dir.join("telemetry"),
        spool(4),
        state.next_seq()?,
        OutboxLimits::telemetry(),
    )?;
    let mut logs = Outbox::open(
        &spool_dir.join("logs"),
        SpoolOptions::bounded(
            cfg.spool_max_bytes - cfg.spool_max_bytes / 4,
            cfg.spool_fsync,
        ),
        1,
        OutboxLimits::logs(),
    )?;
    let log_sources = LogSources::start(
        &spool_dir.join("logs"),
        &cfg.log_files,
        &cfg.journal_units,
        journalctl(),
        cfg.log_rate_limit,
        |after| logs.peek_after(after),
    )?;
    let mut agent = Agent {
        state,
        server,
        device_id: identity.device_id.clone(),
        tls,
        trust,
        clock,
        collector,
        outbox,
        logs,
        log_sources,
        sample_tick: sample_interval(cfg.interval),
        interval: cfg.interval,
        local_interval: cfg.interval,
        rotation_jitter: rand::random_range(-1.0..=1.0),
        health,
        cfg: cfg.clone(),
        status: RuntimeStatus {
            pid: std::process::id(),
            link: "starting".into(),
            ..Default::default()
        },
        status_dirty_since: None,
        status_written: None,
    };
    tracing::info!(device = %identity.device_id, workspace = %identity.workspace, server = %agent.server, "agent starting");

    crate::notify::ready();
    let mut backoff = Reconnect::new();
    loop {
        agent.health.beat();
        let started = Instant::now();
        match session::run_connection(&mut agent, &mut signals).await {
            Ok(session::End::Stopping) => break,
            Ok(session::End::Rotated) => {
                agent.reload_tls()?;
                tracing::info!("certificate rotated; reconnecting with the new identity");
                backoff = Reconnect::new();
                continue;
            }
            Err(e) if e.reason() == Some(outpost_proto::reason::EXPIRED) => {
                tracing::warn!("the certificate has expired; rotating it within the grace window");
                match rotate_over_new_link(&mut agent).await {
                    Ok(()) => {
                        agent.reload_tls()?;
                        backoff = Reconnect::new();
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("rotation of the expired certificate failed: {e}");
                        agent.set_link("disconnected", Some(e.to_string()));
                    }
                }
            }
            Err(e) if link::is_expired_beyond_grace(&e) => {
                agent.set_link("expired", Some(e.to_string()));
                return Err(AgentError::CredentialsExpired);
            }
            Err(e) if e.reason() == Some(outpost_proto::reason::DECOMMISSIONED) => {
                tracing::warn!(
                    "the control plane says this device was deleted: wiping credentials"
                );
                agent.state.wipe_credentials()?;
                agent.set_link("decommissioned", Some(e.to_string()));
                return Err(AgentError::Decommissioned);
            }
            Err(e) => {
                tracing::warn!("link down: {e}");
                agent.set_link("disconnected", Some(e.to_string()));
            }
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = Reconnect::new();
        }
        let delay = backoff.next_delay();
        tracing::info!("reconnecting in {:.1}s", delay.as_secs_f64());
        let wake = tokio::time::sleep(delay);
        tokio::pin!(wake);
        loop {
            let mut lines = Vec::new();
            let chore = agent.next_chore();
            tokio::select! {
                _ = &mut wake => break,
                _ = agent.sample_tick.tick() => agent.take_sample(),
                _ = agent.log_sources.recv(&mut lines) => agent.take_log_lines(lines),
                _ = sleep_until(chore) => agent.chores(),
                cfg = reloaded(&mut signals.reload) => agent.reload(cfg),
                _ = stopping(&mut signals.stop) => {
                    agent.stopped();
                    return Ok(());
                }
            }
        }
    }
    agent.stopped();
    tracing::info!("agent stopped");
    Ok(())
}

/// Rotates over a connection of its own (when the session is refused because
/// the certificate expired).
async fn rotate_over_new_link(agent: &mut Agent) -> Result<(), crate::rotate::RotateError> {
    let channel = link::connect(&agent.server, agent.tls.clone()).await?;
    crate::rotate::rotate(&agent.state, &mut link::client(channel)).await
}

/// Enrolls, retrying transient failures with backoff. `None`: stopped.
async fn enroll_with_retry(
    state: &StateDir,
    server: &ServerUrl,
    install_id: &str,
    trust: &Trust,
    collector: &Collector,
    stop: &mut watch::Receiver<bool>,
    health: &crate::notify::Health,
) -> Result<Option<crate::state::Identity>, AgentError> {
    let mut backoff = Reconnect::new();
    loop {
        health.beat();
        match enroll::enroll(state, server, install_id, trust, collector.facts()).await {
            Ok(id) => {
                tracing::info!(device = %id.device_id, "enrolled");
                return Ok(Some(id));
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "enrollment failed ({e}); retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                let wake = tokio::time::sleep(delay);
                tokio::pin!(wake);
                loop {
                    tokio::select! {
                        _ = &mut wake => break,
                        _ = sleep_until(health.next_beat().map(Instant::from_std)) => health.beat(),
                        _ = stopping(stop) => return Ok(None),
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
