//! `outpost-agent run`: enroll if needed, then keep a connection up with
//! jittered exponential backoff, sampling on schedule whether connected or
//! not.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::{LogBatch, SessionStart, SpoolReport, TelemetryBatch};
use rustls::ClientConfig;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::backoff::Reconnect;
use crate::clock::{Clock, system_ms};
use crate::collect::Collector;
use crate::config::AgentConfig;
use crate::core::{CertLife, Core, Delivery, Event, Exit, LinkState, Output, Rules, Started};
use crate::driver::Host;
use crate::enroll::{self, EnrollError};
use crate::link::{self, LinkError, ServerUrl, Trust};
use crate::logship::{LogSources, SourcedLine};
use crate::rotate::RotateError;
use crate::session::OpenLink;
use crate::spool::{SpoolError, SpoolOptions};
use crate::state::{RuntimeStatus, StateDir};
use crate::uplink::{Outbox, OutboxLimits};

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

/// The agent's delivery: the telemetry and log spools (each an [`Outbox`]),
/// with what status.json shows about acks.
pub struct Spools {
    pub telemetry: Outbox,
    pub logs: Outbox,
    /// Lines over their source's rate so far (the log sources count them).
    pub logs_rate_limited: u64,
    acked_seq: u64,
    last_ack_unix_ms: Option<i64>,
}

impl Spools {
    /// Clean stop: both spools flushed.
    fn flush(&mut self) {
        for o in [&mut self.telemetry, &mut self.logs] {
            if let Err(e) = o.flush() {
                tracing::error!("spool flush failed: {e}");
            }
        }
    }

    /// Flushes both spools if the fsync policy's interval is due.
    fn sync_if_due(&mut self) {
        for o in [&mut self.telemetry, &mut self.logs] {
            if let Err(e) = o.sync_if_due() {
                tracing::error!("spool sync failed: {e}");
            }
        }
    }
}

impl Delivery for Spools {
    fn on_connected(&mut self, telemetry: u64, logs: u64, _now: Instant) {
        for (what, outbox, last) in [
            ("telemetry", &mut self.telemetry, telemetry),
            ("log", &mut self.logs, logs),
        ] {
            if let Err(e) = outbox.on_connected(last) {
                tracing::error!("{what} spool: {e}");
            }
        }
    }

    fn next_telemetry(&mut self, _now: Instant) -> Option<TelemetryBatch> {
        let records = self
            .telemetry
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

    fn next_logs(&mut self, _now: Instant) -> Option<LogBatch> {
        let records = self
            .logs
            .next_batch()
            .inspect_err(|e| tracing::error!("cannot read the log spool: {e}"))
            .ok()??;
        Some(LogBatch {
            records: crate::logship::records(records),
        })
    }

    fn on_telemetry_ack(&mut self, acked_seq: u64, _now: Instant) {
        if let Err(e) = self.telemetry.on_ack(acked_seq) {
            tracing::error!("telemetry spool: {e}");
        }
        self.acked_seq = self.acked_seq.max(acked_seq);
        self.last_ack_unix_ms = Some(system_ms());
    }

    fn on_log_ack(&mut self, acked_seq: u64, _now: Instant) {
        if let Err(e) = self.logs.on_ack(acked_seq) {
            tracing::error!("log spool: {e}");
        }
    }

    fn idle(&self) -> bool {
        self.telemetry.idle() && self.logs.idle()
    }

    fn loss_report(&self) -> SpoolReport {
        SpoolReport {
            telemetry_dropped: self.telemetry.dropped(),
            logs_dropped: self.logs.dropped(),
            corrupt: self.telemetry.corrupt() + self.logs.corrupt(),
            logs_rate_limited: self.logs_rate_limited,
        }
    }
}

/// What the agent's loop waits for besides the link and the timers.
pub enum Input {
    Lines(Vec<SourcedLine>),
    /// The artifact worker's latest state of one artifact.
    ArtifactReport(outpost_proto::v1::ArtifactReport),
    /// Output lines of artifact commands (service `artifact/NAME`).
    ArtifactLines(Vec<crate::artifact::worker::ArtifactLine>),
    Reload(Box<AgentConfig>),
    Stop,
}

/// The agent around its [`Core`]: collector, log sources, state directory,
/// status file, TLS identity.
struct AgentHost {
    state: StateDir,
    server: ServerUrl,
    tls: Arc<ClientConfig>,
    /// The certificate file's time when `tls` was built from it.
    tls_cert_saved_ms: Option<i64>,
    trust: Trust,
    clock: Arc<Clock>,
    collector: Collector,
    log_sources: LogSources,
    /// Stamped every turn of the loop (the watchdog's evidence of progress).
    health: crate::notify::Health,
    /// The configuration in force (replaced on SIGHUP).
    cfg: AgentConfig,
    status: RuntimeStatus,
    signals: Signals,
    /// The stop was handed to the core (a watch stays "true": waiting on
    /// it again would not wait).
    stop_seen: bool,
    artifacts: crate::artifact::worker::Handle,
    /// For `Hello.installed` (the worker owns the installs).
    artifact_view: crate::artifact::install::Installer,
}

impl AgentHost {
    /// Rebuilds the TLS config from the identity on disk (after a rotation).
    fn reload_tls(&mut self) -> Result<(), AgentError> {
        self.tls_cert_saved_ms = self.state.cert_saved_ms();
        let identity = enroll::load_client_identity(&self.state)?;
        self.tls = link::client_config_at(&self.trust, Some(identity), self.clock.clone())?;
        Ok(())
    }

    /// The current certificate's life, for the rotation schedule.
    fn cert_life(&self) -> Option<CertLife> {
        let (chain, _) = enroll::load_client_identity(&self.state).ok()?;
        let v = crate::rotate::validity(chain.first()?).ok()?;
        Some(CertLife {
            start_ms: v.not_before_ms.max(self.state.cert_saved_ms().unwrap_or(0)),
            not_after_ms: v.not_after_ms,
        })
    }

    /// Spools lines from the log sources and records where each source stands.
    fn take_log_lines(&mut self, spools: &mut Spools, mut lines: Vec<SourcedLine>) {
        // File lines are stamped when read: by our floored clock, not the
        // raw one (a box without an RTC boots in 1970).
        let now = self.clock.now_ms();
        for l in &mut lines {
            if l.source.starts_with("file:") {
                l.line.timestamp_ms = now;
            }
        }
        let first = spools.logs.next_seq();
        let payloads = self.log_sources.encode(lines, first);
        spools.logs_rate_limited = self.log_sources.rate_limited();
        let mut it = payloads.into_iter();
        let spooled = spools.logs.push_all(|_| it.next());
        let result = spooled
            .map_err(AgentError::from)
            .and_then(|n| Ok(self.log_sources.save(first + n - 1)?));
        if let Err(e) = result {
            // Not lost: the sources start again from the saved positions
            // (plus what the spool holds beyond them) and read these again.
            tracing::error!("log lines could not be spooled (read again shortly): {e}");
            self.restart_log_sources(&mut spools.logs);
        }
    }

    /// Starts the log sources again from their saved positions.
    fn restart_log_sources(&mut self, logs: &mut Outbox) {
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

    /// Applies a reloaded configuration: log level, telemetry interval (when
    /// the server has not set one) and log sources change live; the rest
    /// (server, state dir, spool bound) needs a restart.
    fn reload(&mut self, cfg: AgentConfig, core: &mut Core<Spools>, now: Instant) {
        crate::notify::reloading();
        if let Some(level) = &cfg.log_level
            && let Err(e) = outpost_common::set_log_filter(level)
        {
            tracing::warn!("{e}");
        }
        core.handle(
            Event::Reloaded {
                interval: cfg.interval,
            },
            now,
        );
        let sources_changed = cfg.log_files != self.cfg.log_files
            || cfg.journal_units != self.cfg.journal_units
            || cfg.log_rate_limit != self.cfg.log_rate_limit;
        if sources_changed {
            self.cfg.log_files = cfg.log_files.clone();
            self.cfg.journal_units = cfg.journal_units.clone();
            self.cfg.log_rate_limit = cfg.log_rate_limit;
            // The old tasks stop; lines they read but did not hand over are
            // read again (their positions were not saved).
            self.restart_log_sources(&mut core.delivery_mut().logs);
            tracing::info!(
                files = cfg.log_files.len(),
                units = cfg.journal_units.len(),
                "log sources reloaded"
            );
        }
        let restart_needed = cfg.server != self.cfg.server
            || cfg.state_dir != self.cfg.state_dir
            || cfg.spool_max_bytes != self.cfg.spool_max_bytes
            || cfg.spool_fsync != self.cfg.spool_fsync
            || cfg.publisher_keys != self.cfg.publisher_keys
            || cfg.artifacts_dir != self.cfg.artifacts_dir
            || cfg.artifact_disk_budget != self.cfg.artifact_disk_budget;
        if restart_needed {
            tracing::warn!(
                "server, state dir, spool and artifact settings (publisher keys, artifacts dir, disk budget) change only with a restart"
            );
        }
        if cfg.proxy != self.cfg.proxy {
            tracing::info!(proxy = %proxy_text(&cfg.proxy), "proxy setting changed: used from the next connection");
        }
        self.cfg = cfg;
        tracing::info!("configuration reloaded");
        crate::notify::reloaded();
    }

    /// Spools output lines of artifact commands as log lines of service
    /// `artifact/NAME` (no source position: they are not read again).
    fn spool_artifact_lines(
        &mut self,
        spools: &mut Spools,
        lines: Vec<crate::artifact::worker::ArtifactLine>,
    ) {
        let mut it = lines.into_iter();
        let pushed = spools.logs.push_all(|seq| {
            let l = it.next()?;
            let record = outpost_proto::v1::LogRecord {
                seq,
                timestamp_unix_ms: l.timestamp_ms,
                service: format!("artifact/{}", l.name),
                severity: l.severity.to_string(),
                message: l.message,
            };
            Some(prost::Message::encode_to_vec(
                &crate::logship::SpooledLine {
                    record: Some(record),
                    source: format!("artifact/{}", l.name),
                    position: String::new(),
                },
            ))
        });
        if let Err(e) = pushed {
            tracing::error!("artifact command output could not be spooled (lost): {e}");
        }
    }

    /// Writes status.json with the spools' counts.
    fn write_status(&mut self, spools: &Spools) {
        let s = &mut self.status;
        s.acked_seq = spools.acked_seq;
        s.last_ack_unix_ms = spools.last_ack_unix_ms;
        s.pending_samples = spools.telemetry.pending();
        s.dropped_samples = spools.telemetry.dropped();
        s.next_seq = spools.telemetry.next_seq();
        s.pending_logs = spools.logs.pending();
        s.logs_acked_seq = spools.logs.acked();
        s.dropped_logs = spools.logs.dropped();
        s.corrupt_records = spools.telemetry.corrupt() + spools.logs.corrupt();
        s.rate_limited_logs = spools.logs_rate_limited;
        s.updated_unix_ms = system_ms();
        if let Err(e) = self.state.save_status(s) {
            tracing::warn!("cannot write status file: {e}");
        }
    }
}

impl Host for AgentHost {
    type Delivery = Spools;
    type Input = Input;
    type Error = AgentError;

    fn connect(&mut self) -> BoxFuture<'static, Result<OpenLink, LinkError>> {
        // `outpost-agent enroll` may have replaced the identity on disk (a
        // re-enrollment after a forced reset): connect with what is there.
        let saved = self.state.cert_saved_ms();
        if saved != self.tls_cert_saved_ms {
            match self.reload_tls() {
                Ok(()) => tracing::info!("the device certificate on disk changed; using it"),
                Err(e) => {
                    tracing::warn!("the device certificate on disk changed but cannot be used: {e}")
                }
            }
        }
        let (server, tls, facts) = (
            self.server.clone(),
            self.tls.clone(),
            self.collector.facts(),
        );
        let proxy = self.cfg.proxy.clone();
        let installed = crate::artifact::worker::installed(&self.artifact_view);
        Box::pin(async move {
            let channel = link::connect_via(&server, &proxy, tls).await?;
            let window = OutboxLimits::telemetry().max_in_flight;
            crate::session::open(link::client(channel), facts, installed, true, window).await
        })
    }

    fn started(&mut self, start: &SessionStart) -> Started {
        // The control plane's authenticated time: raise and persist the floor.
        let floor = self.clock.observe_good_time(start.server_time_unix_ms);
        if let Err(e) = self.state.save_clock_floor(floor) {
            tracing::warn!("cannot persist the clock floor: {e}");
        }
        tracing::info!(server = %self.server, "connected");
        Started {
            last_telemetry_seq: start.last_telemetry_seq,
            last_log_seq: start.last_log_seq,
            settings: start.settings,
            config: start.config.clone(),
            wall_ms: self.clock.now_ms(),
            cert: self.cert_life(),
            desired: start.desired.clone(),
        }
    }

    fn link_changed(&mut self, client: Option<&DeviceServiceClient<Channel>>) {
        let _ = self
            .artifacts
            .tx
            .send(crate::artifact::worker::ToWorker::Link(client.cloned()));
    }

    fn rotate(
        &mut self,
        client: Option<DeviceServiceClient<Channel>>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let (state, server, tls) = (self.state.clone(), self.server.clone(), self.tls.clone());
        let proxy = self.cfg.proxy.clone();
        Box::pin(async move {
            let mut client = match client {
                Some(c) => c,
                None => link::client(
                    link::connect_via(&server, &proxy, tls)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
            };
            crate::rotate::rotate(&state, &mut client)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn take_sample(&mut self, spools: &mut Spools) {
        let mut sample = self.collector.sample(self.clock.now_ms());
        let pushed = spools.telemetry.push_with(|seq| {
            sample.seq = seq;
            prost::Message::encode_to_vec(&sample)
        });
        if let Err(e) = pushed {
            tracing::error!("a telemetry sample could not be spooled (lost): {e}");
        }
    }

    async fn next_input(&mut self) -> Input {
        let mut lines = Vec::new();
        tokio::select! {
            _ = self.log_sources.recv(&mut lines) => Input::Lines(lines),
            Some(r) = self.artifacts.reports.recv() => Input::ArtifactReport(r),
            Some(l) = self.artifacts.lines.recv() => {
                let mut all = vec![l];
                while let Ok(l) = self.artifacts.lines.try_recv() {
                    all.push(l);
                }
                Input::ArtifactLines(all)
            }
            cfg = reloaded(&mut self.signals.reload) => Input::Reload(Box::new(cfg)),
            _ = stopping(&mut self.signals.stop), if !self.stop_seen => {
                self.stop_seen = true;
                Input::Stop
            }
        }
    }

    fn on_input(&mut self, input: Input, core: &mut Core<Spools>, now: Instant) {
        match input {
            Input::Lines(lines) => {
                self.take_log_lines(core.delivery_mut(), lines);
                core.handle(Event::Spooled, now);
            }
            Input::ArtifactReport(r) => core.handle(Event::ArtifactReport(r), now),
            Input::ArtifactLines(lines) => {
                self.spool_artifact_lines(core.delivery_mut(), lines);
                core.handle(Event::Spooled, now);
            }
            Input::Reload(cfg) => self.reload(*cfg, core, now),
            Input::Stop => core.handle(Event::Stop, now),
        }
    }

    fn on_output(&mut self, output: &Output, spools: &Spools) -> Result<(), AgentError> {
        match output {
            Output::Link { state, error } => {
                self.status.link = state.as_str().to_string();
                if *state == LinkState::Connected {
                    self.status.last_connected_unix_ms = Some(system_ms());
                    self.status.last_error = None;
                } else if error.is_some() {
                    self.status.last_error.clone_from(error);
                }
                self.write_status(spools);
            }
            Output::NextRotation(due) => self.status.next_rotation_unix_ms = *due,
            Output::WriteStatus => self.write_status(spools),
            Output::Interval(every) => {
                tracing::info!(interval = ?every, "telemetry interval changed")
            }
            Output::ReloadIdentity => self.reload_tls()?,
            Output::Desired(d) => {
                let _ = self
                    .artifacts
                    .tx
                    .send(crate::artifact::worker::ToWorker::Desired(
                        d.artifacts.clone(),
                    ));
            }
            Output::WipeCredentials => self.state.wipe_credentials()?,
            // The rest is the driver's; the spools are flushed by `run`
            // once the driver returns.
            _ => {}
        }
        Ok(())
    }

    fn chores(&mut self, spools: &mut Spools) {
        self.health.beat();
        spools.sync_if_due();
    }

    fn next_chore(&self, spools: &Spools) -> Option<Instant> {
        [
            self.health.next_beat(),
            spools.telemetry.sync_due(),
            spools.logs.sync_due(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(Instant::from_std)
    }
}

/// The journalctl binary (`OUTPOST_JOURNALCTL` overrides it).
fn journalctl() -> std::path::PathBuf {
    std::env::var_os("OUTPOST_JOURNALCTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "journalctl".into())
}

/// The proxy setting for a log line: the URL with its password redacted
/// and where it came from, or `none`.
pub fn proxy_text(p: &crate::proxy::ProxySettings) -> String {
    match &p.proxy {
        Some(url) if p.no_proxy.is_empty() => format!("{url} (from {})", p.source),
        Some(url) => format!("{url} (from {}; NO_PROXY {:?})", p.source, p.no_proxy),
        None => "none".into(),
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
    let state = StateDir::open(&cfg.state_dir)?;
    let collector = Collector::new()?;
    let identity = match state.identity()? {
        Some(id) => id,
        None => {
            let (Some(server), Some(grant), Some(trust)) = (&cfg.server, cfg.grant(), &cfg.trust)
            else {
                return Err(AgentError::Config(format!(
                    "this box is not enrolled ({} has no identity): run `outpost-agent enroll` or configure server, install-id (or enroll-token) and ca-file/ca-fingerprint",
                    state.root().display()
                )));
            };
            crate::notify::ready();
            crate::notify::status("enrolling");
            let Some(id) = enroll_with_retry(
                &state,
                (server, &cfg.proxy),
                grant,
                trust,
                &collector,
                &mut signals.stop,
                &health,
            )
            .await?
            else {
                return Ok(());
            };
            id
        }
    };
    state.recover_rotation()?;
    let identity = match &cfg.install_id {
        Some(install_id) => reenroll_if_void(&state, &cfg, install_id, &collector, identity).await,
        None => identity,
    };
    let server = match &cfg.server {
        Some(s) => s.clone(),
        None => ServerUrl::parse(&identity.server)?,
    };
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
    let telemetry = Outbox::open(
        &spool_dir.join("telemetry"),
        SpoolOptions::bounded(cfg.spool_max_bytes / 4, cfg.spool_fsync),
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
    let spools = Spools {
        telemetry,
        logs,
        logs_rate_limited: log_sources.rate_limited(),
        acked_seq: 0,
        last_ack_unix_ms: None,
    };
    tracing::info!(device = %identity.device_id, workspace = %identity.workspace, server = %server, proxy = %proxy_text(&cfg.proxy), "agent starting");
    let mut core = Core::new(
        Rules::default(),
        spools,
        cfg.interval,
        // The first sample comes one period in, when CPU usage has a baseline.
        cfg.interval,
        Reconnect::new(),
        rand::random_range(-1.0..=1.0),
        Instant::now(),
    );
    let artifacts = start_artifacts(&cfg, &state);
    let artifact_view = crate::artifact::install::Installer::new(
        cfg.artifacts_dir.clone(),
        state.root().join("staging"),
        Vec::new(),
        0,
        std::sync::Arc::new(|_: &str, _, _| {}),
    );
    let tls_cert_saved_ms = state.cert_saved_ms();
    let mut host = AgentHost {
        artifacts,
        artifact_view,
        tls_cert_saved_ms,
        state,
        server,
        tls,
        trust,
        clock,
        collector,
        log_sources,
        health,
        cfg,
        status: RuntimeStatus {
            pid: std::process::id(),
            link: "starting".into(),
            ..Default::default()
        },
        signals,
        stop_seen: false,
    };
    crate::notify::ready();
    let exit = crate::driver::drive(&mut core, &mut host, None).await;
    // Whatever ended the loop, what is spooled is on disk.
    core.delivery_mut().flush();
    host.write_status(core.delivery());
    match exit? {
        Exit::Stopped | Exit::LinkLost => {
            tracing::info!("agent stopped");
            Ok(())
        }
        Exit::CredentialsExpired => Err(AgentError::CredentialsExpired),
        Exit::Decommissioned => Err(AgentError::Decommissioned),
    }
}

/// Starts the artifact worker (it first recovers installs a restart
/// interrupted).
fn start_artifacts(cfg: &AgentConfig, state: &StateDir) -> crate::artifact::worker::Handle {
    if cfg.publisher_keys.is_empty() {
        // Not a warning: most boxes never get an artifact. A rollout that
        // reaches this box is refused with this reason, visible to operators.
        tracing::info!(
            "no publisher key configured: artifacts (docs/artifacts.md) will be refused"
        );
    }
    let (sink, lines) = crate::artifact::worker::line_channel();
    let installer = crate::artifact::install::Installer::new(
        cfg.artifacts_dir.clone(),
        state.root().join("staging"),
        cfg.publisher_keys.clone(),
        cfg.artifact_disk_budget,
        sink,
    );
    tracing::info!(dir = %cfg.artifacts_dir.display(), keys = cfg.publisher_keys.len(), budget = cfg.artifact_disk_budget, "artifacts");
    crate::artifact::worker::spawn(installer, lines)
}

/// Enrolls, retrying transient failures with backoff. `None`: stopped.
/// `run` with an install ID on an enrolled box (the install command run
/// again after a forced reset): when the control plane no longer takes the
/// certificate and the install ID is good, enroll again in place. On any
/// failure the identity there is stays, and the link reports what is wrong.
async fn reenroll_if_void(
    state: &StateDir,
    cfg: &AgentConfig,
    install_id: &str,
    collector: &Collector,
    identity: crate::state::Identity,
) -> crate::state::Identity {
    let server = cfg
        .server
        .clone()
        .or_else(|| ServerUrl::parse(&identity.server).ok());
    let trust = cfg
        .trust
        .clone()
        .or_else(|| Trust::from_ca_file(&state.ca_path()).ok());
    let (Some(server), Some(trust)) = (server, trust) else {
        return identity;
    };
    let asked = tokio::time::timeout(
        Duration::from_secs(15),
        enroll::check_enrollment(state, &server, &cfg.proxy, &trust, install_id),
    )
    .await;
    let void = match &asked {
        Ok(Ok(r)) => r.certificate != "valid" && r.install_id == "valid",
        Ok(Err(EnrollError::Link(e))) => link::is_expired_beyond_grace(e),
        _ => false,
    };
    if !void {
        return identity;
    }
    let facts = collector.facts();
    match enroll::reenroll(
        state,
        Some(&server),
        &cfg.proxy,
        install_id,
        Some(&trust),
        facts,
        true,
    )
    .await
    {
        Ok(id) => {
            tracing::info!(device = %id.device_id, "enrolled again with the configured install ID (the control plane no longer took the previous certificate)");
            id
        }
        Err(e) => {
            tracing::warn!("enrolling again with the configured install ID failed: {e}");
            identity
        }
    }
}

async fn enroll_with_retry(
    state: &StateDir,
    // Where to: the control plane, and the proxy setting to reach it by.
    (server, proxy): (&ServerUrl, &crate::proxy::ProxySettings),
    grant: enroll::Grant<'_>,
    trust: &Trust,
    collector: &Collector,
    stop: &mut watch::Receiver<bool>,
    health: &crate::notify::Health,
) -> Result<Option<crate::state::Identity>, AgentError> {
    let mut backoff = Reconnect::new();
    loop {
        health.beat();
        match enroll::enroll(state, server, proxy, grant, trust, collector.facts()).await {
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
                        _ = crate::driver::sleep_until(health.next_beat().map(Instant::from_std)) => health.beat(),
                        _ = stopping(stop) => return Ok(None),
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
