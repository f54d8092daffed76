//! The agent's decisions, free of I/O: when to sample, connect, send a
//! heartbeat, rotate the key, give up on a drain, write the status file, and
//! what a lost link means. Shaped as quinn-proto's `Connection`: the driver
//! ([`crate::driver`]) feeds it [`Event`]s with the time they happened
//! ([`Core::handle`]), wakes it at [`Core::poll_timeout`]
//! ([`Core::handle_timeout`]) and carries out what it queues
//! ([`Core::poll_output`]). The core never reads a clock, a socket or a file,
//! so its rules are unit-tested on simulated time (`core/tests.rs`), and the
//! fleet simulator runs the same rules as the agent.
//!
//! What is in flight, what is acked and what the spool holds is the
//! [`Delivery`]'s business (the agent's is the disk spool pair, the
//! simulator's an in-memory queue); the core asks it for batches while a link
//! is up and tells it about acks.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use outpost_proto::v1::{
    ArtifactReport, ConfigUpdate, DesiredArtifacts, LogBatch, Settings, SpoolReport, TelemetryBatch,
};
use tokio::time::Instant;

use crate::backoff::Reconnect;

/// Artifact reports the driver could not queue (the session queue's room is
/// kept for heartbeats and acks) go again this much later.
pub const ARTIFACT_RETRY: Duration = Duration::from_millis(250);

/// The timing rules, with the agent's values in [`Rules::default`].
#[derive(Debug, Clone)]
pub struct Rules {
    /// Heartbeat period until the control plane sets another.
    pub heartbeat: Duration,
    /// On stop (or before reconnecting after a rotation), how long to wait
    /// for acks of batches already sent.
    pub drain_timeout: Duration,
    /// After a failed rotation attempt, try again this much later.
    pub rotation_retry: Duration,
    /// Whether to rotate the key at all (the simulator's certificates
    /// outlive its runs).
    pub rotate: bool,
    /// A session that lived this long was healthy: the next failure starts
    /// the backoff again from its smallest delay.
    pub healthy_after: Duration,
    /// After a lost link: reconnect (the agent), or end with
    /// [`Exit::LinkLost`] (a simulator run without `--reconnect`).
    pub reconnect: bool,
    /// Whether there is a status file to keep current (the simulator has none).
    pub write_status: bool,
    /// status.json is written at most this often…
    pub status_every: Duration,
    /// …and a change waits this long first, so the changes of one exchange
    /// (a sample spooled, its ack a few ms later) make one write, not two.
    pub status_settle: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(3),
            rotation_retry: Duration::from_secs(30),
            rotate: true,
            healthy_after: crate::backoff::HEALTHY_AFTER,
            reconnect: true,
            write_status: true,
            status_every: Duration::from_secs(1),
            status_settle: Duration::from_millis(500),
        }
    }
}

/// Delivery state over one link's streams: what to send next, what acks
/// release. The core calls it only while a link is up (and on acks).
pub trait Delivery {
    /// A new link: the store holds telemetry up to `telemetry` and logs up
    /// to `logs`; nothing is in flight on it yet.
    fn on_connected(&mut self, telemetry: u64, logs: u64, now: Instant);
    /// The next telemetry batch the window allows, if any.
    fn next_telemetry(&mut self, now: Instant) -> Option<TelemetryBatch>;
    /// The next log batch the window allows, if any.
    fn next_logs(&mut self, now: Instant) -> Option<LogBatch>;
    fn on_telemetry_ack(&mut self, acked_seq: u64, now: Instant);
    fn on_log_ack(&mut self, acked_seq: u64, now: Instant);
    /// Nothing sent is waiting for an ack.
    fn idle(&self) -> bool;
    /// What was lost so far, as running totals (reported when it grows).
    fn loss_report(&self) -> SpoolReport;
}

/// When the current certificate was obtained and when it expires, unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertLife {
    /// Its not-before, or when it was saved if later (certificates are
    /// backdated).
    pub start_ms: i64,
    pub not_after_ms: i64,
}

/// A session was opened: what its start said.
#[derive(Debug, Clone, Default)]
pub struct Started {
    pub last_telemetry_seq: u64,
    pub last_log_seq: u64,
    pub settings: Option<Settings>,
    pub config: Option<ConfigUpdate>,
    /// Wall-clock time at the start, unix ms (by the agent's floored clock),
    /// to place the rotation on the monotonic timeline.
    pub wall_ms: i64,
    /// The certificate in use; `None` when it cannot be read (rotation is
    /// then tried every [`Rules::rotation_retry`]).
    pub cert: Option<CertLife>,
    /// What the device should run (`SessionStart.desired`).
    pub desired: Option<DesiredArtifacts>,
}

/// What a failed link or connection attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Network, server busy, stream closed: back off and reconnect.
    Transient,
    /// The certificate expired within the control plane's grace window:
    /// rotate over a connection of its own, then reconnect.
    Expired,
    /// Expired past the grace window: only a new install ID helps.
    ExpiredBeyondGrace,
    /// The device was deleted by an operator.
    Decommissioned,
}

/// What the control plane sent on the session stream.
#[derive(Debug, Clone)]
pub enum FromServer {
    Settings(Settings),
    Config(ConfigUpdate),
    RotateNow,
    /// What the device should run now (replaces the previous set).
    Desired(DesiredArtifacts),
}

#[derive(Debug, Clone)]
pub enum Event {
    /// The connection attempt asked for by [`Output::Connect`] opened a session.
    Connected(Started),
    /// The link, or the attempt to open one, failed.
    LinkFailed {
        failure: Failure,
        message: String,
    },
    TelemetryAck(u64),
    LogAck(u64),
    Server(FromServer),
    /// The rotation asked for by [`Output::Rotate`] finished.
    Rotated(Result<(), String>),
    /// Records were added to the delivery's spool (a sample, log lines).
    Spooled,
    /// The artifact worker's latest state of one artifact.
    ArtifactReport(ArtifactReport),
    /// The driver did not queue this artifact's report: the session queue
    /// has no room for it beyond what heartbeats and acks need (a burst of
    /// reports, a control plane reading slowly). The latest report of the
    /// name goes again after [`ARTIFACT_RETRY`]; the link is not at fault.
    ArtifactDeferred(String),
    /// The local configuration was reloaded (SIGHUP).
    Reloaded {
        interval: Duration,
    },
    Stop,
}

/// The link as status.json shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected,
    Disconnected,
    Expired,
    Decommissioned,
    Stopped,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
            LinkState::Expired => "expired",
            LinkState::Decommissioned => "decommissioned",
            LinkState::Stopped => "stopped",
        }
    }
}

/// Why the core is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Stopped,
    CredentialsExpired,
    Decommissioned,
    /// The link was lost and [`Rules::reconnect`] is off.
    LinkLost,
}

/// What the driver must do, in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// Open a link: connect, hello, session start, streams. Answered by
    /// [`Event::Connected`] or [`Event::LinkFailed`].
    Connect,
    /// Drop the current link (or the attempt to open one).
    Disconnect,
    SendTelemetry(TelemetryBatch),
    SendLogs(LogBatch),
    /// A heartbeat on the session stream (stamped by the driver).
    Heartbeat,
    ConfigApplied(u64),
    LossReport(SpoolReport),
    /// An artifact report on the session stream.
    SendArtifact(ArtifactReport),
    /// The desired artifacts changed (session start, or pushed): hand them
    /// to the artifact worker.
    Desired(DesiredArtifacts),
    /// Read a sample into the spool (then [`Event::Spooled`]).
    TakeSample,
    /// Rotate the key: over the current link, or (`new_link`) over a
    /// connection of its own. Answered by [`Event::Rotated`].
    Rotate {
        new_link: bool,
    },
    /// The rotation committed a new certificate: use it from now on.
    ReloadIdentity,
    /// The device was deleted: remove the credentials from the box.
    WipeCredentials,
    /// The link changed: status.json shows it at once.
    Link {
        state: LinkState,
        error: Option<String>,
    },
    /// When the current certificate will be rotated, unix ms.
    NextRotation(Option<i64>),
    /// Write status.json now (pending changes have settled).
    WriteStatus,
    /// The telemetry interval in force changed (for the log).
    Interval(Duration),
    Exit(Exit),
}

/// After a drain: stop, or reconnect with a rotated identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterDrain {
    Stop,
    Reconnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No link; the next attempt at `retry_at`.
    Down {
        retry_at: Instant,
    },
    /// An attempt is under way.
    Connecting,
    Up(Session),
    /// Waiting for acks before `then`, until `deadline`.
    Draining {
        deadline: Instant,
        then: AfterDrain,
    },
    /// Rotating an expired certificate over a connection of its own.
    RotatingExpired,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    since: Instant,
    heartbeat_at: Instant,
    /// `None` while a rotation is under way (or rotation is off).
    rotate_at: Option<Instant>,
}

pub struct Core<D> {
    rules: Rules,
    delivery: D,
    link: Link,
    backoff: Reconnect,
    /// This agent's place in the fleet's rotation spread, -1..=1.
    rotation_jitter: f64,
    heartbeat_every: Duration,
    interval: Duration,
    /// The interval from flags/config, used when the server sets none.
    local_interval: Duration,
    next_sample: Instant,
    reported: Option<SpoolReport>,
    status_dirty_since: Option<Instant>,
    status_written: Option<Instant>,
    /// The latest report of each artifact, resent on every new session.
    artifacts: BTreeMap<String, ArtifactReport>,
    /// Names whose latest report waits for room in the session queue, in
    /// order, and when they are handed out again.
    deferred: VecDeque<String>,
    deferred_retry_at: Option<Instant>,
    out: VecDeque<Output>,
}

impl<D: Delivery> Core<D> {
    /// A core that connects at once and samples every `interval`, the first
    /// sample `first_sample_in` from `now` (the agent: one interval, when
    /// CPU usage has a baseline).
    pub fn new(
        rules: Rules,
        delivery: D,
        interval: Duration,
        first_sample_in: Duration,
        backoff: Reconnect,
        rotation_jitter: f64,
        now: Instant,
    ) -> Self {
        Self {
            heartbeat_every: rules.heartbeat,
            rules,
            delivery,
            link: Link::Down { retry_at: now },
            backoff,
            rotation_jitter: rotation_jitter.clamp(-1.0, 1.0),
            interval,
            local_interval: interval,
            next_sample: now + first_sample_in,
            reported: None,
            status_dirty_since: None,
            status_written: None,
            artifacts: BTreeMap::new(),
            deferred: VecDeque::new(),
            deferred_retry_at: None,
            out: VecDeque::new(),
        }
    }

    pub fn delivery(&self) -> &D {
        &self.delivery
    }

    /// For the driver's host, to spool records (then [`Event::Spooled`]).
    pub fn delivery_mut(&mut self) -> &mut D {
        &mut self.delivery
    }

    /// The telemetry interval in force.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn heartbeat_every(&self) -> Duration {
        self.heartbeat_every
    }

    /// Whether a link is up (a session is open).
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up(_) | Link::Draining { .. })
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Core::handle_timeout`] must run next. `None`: never on its own
    /// (the core is done).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.link == Link::Done {
            return None;
        }
        let link = match self.link {
            Link::Down { retry_at } => Some(retry_at),
            Link::Up(s) => Some(match s.rotate_at {
                Some(r) => s.heartbeat_at.min(r),
                None => s.heartbeat_at,
            }),
            Link::Draining { deadline, .. } => Some(deadline),
            Link::Connecting | Link::RotatingExpired | Link::Done => None,
        };
        let sample = match self.link {
            Link::Draining {
                then: AfterDrain::Stop,
                ..
            } => None,
            _ => Some(self.next_sample),
        };
        let deferred = self.deferred_retry_at.filter(|_| self.is_connected());
        [sample, link, self.status_due(), deferred]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.link == Link::Done {
            return;
        }
        let stopping = matches!(
            self.link,
            Link::Draining {
                then: AfterDrain::Stop,
                ..
            }
        );
        if now >= self.next_sample && !stopping {
            self.out.push_back(Output::TakeSample);
            // On the grid however late the wake-up (timers fire a little
            // late: rescheduling from `now` would drift); a whole period
            // behind (a stalled loop), the next is an interval from now, not
            // a burst of catch-up samples.
            self.next_sample += self.interval;
            if self.next_sample <= now {
                self.next_sample = now + self.interval;
            }
            // A heartbeat that would fall due before the next sample goes
            // now, with this one: the two share a wake-up (and, when both
            // periods are equal, every wake-up from then on).
            if let Link::Up(s) = &mut self.link
                && self.interval <= self.heartbeat_every
                && s.heartbeat_at < now + self.interval
            {
                s.heartbeat_at = now + self.heartbeat_every;
                self.out.push_back(Output::Heartbeat);
            }
        }
        match self.link {
            Link::Down { retry_at } if now >= retry_at => {
                self.link = Link::Connecting;
                self.set_link(LinkState::Connecting, None, now);
                self.out.push_back(Output::Connect);
            }
            Link::Up(mut s) => {
                if now >= s.heartbeat_at {
                    s.heartbeat_at = now + self.heartbeat_every;
                    self.out.push_back(Output::Heartbeat);
                }
                if s.rotate_at.is_some_and(|r| now >= r) {
                    s.rotate_at = None;
                    self.out.push_back(Output::Rotate { new_link: false });
                }
                self.link = Link::Up(s);
            }
            Link::Draining { deadline, then } if now >= deadline => self.after_drain(then, now),
            _ => {}
        }
        if self.is_connected() && self.deferred_retry_at.is_some_and(|at| now >= at) {
            self.deferred_retry_at = None;
            // Those that still find no room come back as ArtifactDeferred.
            for name in std::mem::take(&mut self.deferred) {
                if let Some(r) = self.artifacts.get(&name) {
                    self.out.push_back(Output::SendArtifact(r.clone()));
                }
            }
        }
        if self.status_due().is_some_and(|due| now >= due) {
            self.status_dirty_since = None;
            self.status_written = Some(now);
            self.out.push_back(Output::WriteStatus);
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.link == Link::Done {
            return;
        }
        match event {
            Event::Connected(started) => self.on_connected(started, now),
            Event::LinkFailed { failure, message } => self.on_failure(failure, message, now),
            Event::TelemetryAck(seq) => {
                self.delivery.on_telemetry_ack(seq, now);
                self.status_changed(now);
            }
            Event::LogAck(seq) => {
                self.delivery.on_log_ack(seq, now);
                self.status_changed(now);
            }
            Event::Server(FromServer::Settings(s)) => self.apply_settings(&s, now),
            Event::Server(FromServer::Config(c)) => self.apply_config(&c, now),
            Event::Server(FromServer::RotateNow) => {
                if let Link::Up(s) = &mut self.link
                    && self.rules.rotate
                {
                    tracing::info!("the control plane asks for a key rotation now");
                    // A rotation under way (rotate_at None) is not doubled.
                    if s.rotate_at.is_some() {
                        s.rotate_at = Some(now);
                    }
                }
            }
            Event::Server(FromServer::Desired(d)) => self.on_desired(d),
            Event::ArtifactReport(r) => {
                if self.is_connected() {
                    if self.deferred.is_empty() {
                        self.out.push_back(Output::SendArtifact(r.clone()));
                    } else if !self.deferred.contains(&r.name) {
                        // Behind those waiting (their latest goes, in order).
                        self.deferred.push_back(r.name.clone());
                    }
                }
                self.artifacts.insert(r.name.clone(), r);
            }
            Event::ArtifactDeferred(name) => {
                if self.is_connected()
                    && self.artifacts.contains_key(&name)
                    && !self.deferred.contains(&name)
                {
                    self.deferred.push_back(name);
                    self.deferred_retry_at.get_or_insert(now + ARTIFACT_RETRY);
                }
            }
            Event::Rotated(result) => self.on_rotated(result, now),
            Event::Spooled => self.status_changed(now),
            Event::Reloaded { interval } => {
                if self.interval == self.local_interval {
                    self.set_interval(interval, now);
                }
                self.local_interval = interval;
            }
            Event::Stop => self.on_stop(now),
        }
        if let Link::Draining { then, .. } = self.link
            && self.delivery.idle()
        {
            self.after_drain(then, now);
        }
        self.pump(now);
    }

    fn on_connected(&mut self, started: Started, now: Instant) {
        if self.link != Link::Connecting {
            return;
        }
        let rotate_at = if self.rules.rotate {
            let due = started.cert.map(|c| {
                crate::rotate::rotation_due_ms(c.start_ms, c.not_after_ms, self.rotation_jitter)
            });
            self.out.push_back(Output::NextRotation(due));
            self.status_changed(now);
            Some(match due {
                Some(due) => {
                    let wait = u64::try_from(due - started.wall_ms).unwrap_or(0);
                    tracing::debug!(in_secs = wait / 1000, "next certificate rotation");
                    now + Duration::from_millis(wait)
                }
                None => now + self.rules.rotation_retry,
            })
        } else {
            None
        };
        self.link = Link::Up(Session {
            since: now,
            heartbeat_at: now + self.heartbeat_every,
            rotate_at,
        });
        if let Some(s) = &started.settings {
            self.apply_settings(s, now);
        }
        if let Some(c) = &started.config {
            self.apply_config(c, now);
        }
        self.delivery
            .on_connected(started.last_telemetry_seq, started.last_log_seq, now);
        // The first report of every session goes even if unchanged: the
        // control plane compares running totals per session.
        self.reported = None;
        // The worker hears what is desired now (a start without a desired
        // set changes nothing), and the control plane catches up with the
        // latest state of every desired artifact.
        if let Some(d) = started.desired {
            self.on_desired(d);
        }
        // What a previous link deferred goes now with the rest.
        self.deferred.clear();
        self.deferred_retry_at = None;
        for r in self.artifacts.values() {
            self.out.push_back(Output::SendArtifact(r.clone()));
        }
        self.set_link(LinkState::Connected, None, now);
    }

    /// Reports of artifacts no longer desired are not resent; the worker
    /// gets the set.
    fn on_desired(&mut self, d: DesiredArtifacts) {
        self.artifacts
            .retain(|name, _| d.artifacts.iter().any(|a| &a.name == name));
        let artifacts = &self.artifacts;
        self.deferred.retain(|name| artifacts.contains_key(name));
        self.out.push_back(Output::Desired(d));
    }

    fn on_failure(&mut self, failure: Failure, message: String, now: Instant) {
        let was = self.link;
        if matches!(was, Link::Down { .. } | Link::Done) {
            return;
        }
        self.out.push_back(Output::Disconnect);
        if let Link::Draining {
            then: AfterDrain::Stop,
            ..
        } = was
        {
            self.finish(Exit::Stopped);
            return;
        }
        match failure {
            Failure::Expired if was != Link::RotatingExpired => {
                tracing::warn!("the certificate has expired; rotating it within the grace window");
                self.link = Link::RotatingExpired;
                self.out.push_back(Output::Rotate { new_link: true });
            }
            Failure::ExpiredBeyondGrace => {
                self.set_link(LinkState::Expired, Some(message), now);
                self.finish(Exit::CredentialsExpired);
            }
            Failure::Decommissioned => {
                tracing::warn!(
                    "the control plane says this device was deleted: wiping credentials"
                );
                self.out.push_back(Output::WipeCredentials);
                self.set_link(LinkState::Decommissioned, Some(message), now);
                self.finish(Exit::Decommissioned);
            }
            Failure::Transient | Failure::Expired => {
                tracing::warn!("link down: {message}");
                self.set_link(LinkState::Disconnected, Some(message), now);
                if !self.rules.reconnect {
                    self.finish(Exit::LinkLost);
                    return;
                }
                if let Link::Up(s) = was
                    && now.saturating_duration_since(s.since) >= self.rules.healthy_after
                {
                    // A healthy link lost: most likely the control plane
                    // restarting, back within seconds.
                    self.backoff.reset();
                    self.backoff.quick_retries(crate::backoff::QUICK_RETRIES);
                }
                self.retry_later(now);
            }
        }
    }

    fn on_rotated(&mut self, result: Result<(), String>, now: Instant) {
        match (self.link, result) {
            (Link::Up(_), Ok(())) => {
                self.link = Link::Draining {
                    deadline: now + self.rules.drain_timeout,
                    then: AfterDrain::Reconnect,
                };
            }
            (Link::Up(mut s), Err(e)) => {
                tracing::warn!(
                    "certificate rotation failed (retrying in {}s): {e}",
                    self.rules.rotation_retry.as_secs()
                );
                s.rotate_at = Some(now + self.rules.rotation_retry);
                self.link = Link::Up(s);
            }
            (Link::RotatingExpired, Ok(())) => {
                self.out.push_back(Output::ReloadIdentity);
                self.backoff.reset();
                self.link = Link::Down { retry_at: now };
            }
            (Link::RotatingExpired, Err(e)) => {
                let message = format!("rotation of the expired certificate failed: {e}");
                tracing::warn!("{message}");
                self.set_link(LinkState::Disconnected, Some(message), now);
                self.retry_later(now);
            }
            // A rotation that ends after the link did: what it committed is
            // on disk and is loaded at the next connection.
            (_, Ok(())) => self.out.push_back(Output::ReloadIdentity),
            (_, Err(_)) => {}
        }
    }

    fn on_stop(&mut self, now: Instant) {
        match self.link {
            Link::Up(_) if !self.delivery.idle() => {
                self.link = Link::Draining {
                    deadline: now + self.rules.drain_timeout,
                    then: AfterDrain::Stop,
                };
            }
            Link::Draining { deadline, .. } => {
                self.link = Link::Draining {
                    deadline,
                    then: AfterDrain::Stop,
                };
            }
            _ => self.after_drain(AfterDrain::Stop, now),
        }
    }

    fn after_drain(&mut self, then: AfterDrain, now: Instant) {
        self.out.push_back(Output::Disconnect);
        match then {
            AfterDrain::Stop => {
                self.set_link(LinkState::Stopped, None, now);
                self.finish(Exit::Stopped);
            }
            AfterDrain::Reconnect => {
                tracing::info!("certificate rotated; reconnecting with the new identity");
                self.out.push_back(Output::ReloadIdentity);
                self.backoff.reset();
                self.link = Link::Down { retry_at: now };
            }
        }
    }

    fn finish(&mut self, exit: Exit) {
        self.link = Link::Done;
        self.out.push_back(Output::Exit(exit));
    }

    fn retry_later(&mut self, now: Instant) {
        let delay = self.backoff.next_delay();
        tracing::info!("reconnecting in {:.1}s", delay.as_secs_f64());
        self.link = Link::Down {
            retry_at: now + delay,
        };
    }

    /// Hands out what the window allows while a session is up, and a loss
    /// report when the totals grew.
    fn pump(&mut self, now: Instant) {
        if !matches!(self.link, Link::Up(_)) {
            return;
        }
        let report = self.delivery.loss_report();
        if self.reported != Some(report) {
            self.reported = Some(report);
            self.out.push_back(Output::LossReport(report));
        }
        while let Some(b) = self.delivery.next_telemetry(now) {
            self.out.push_back(Output::SendTelemetry(b));
        }
        while let Some(b) = self.delivery.next_logs(now) {
            self.out.push_back(Output::SendLogs(b));
        }
    }

    /// Applies a config version and tells the control plane it runs it.
    fn apply_config(&mut self, c: &ConfigUpdate, now: Instant) {
        if let Some(s) = &c.settings {
            self.apply_settings(s, now);
        }
        tracing::info!(version = c.version, "config applied");
        self.out.push_back(Output::ConfigApplied(c.version));
    }

    /// Server settings win over local ones; 0 ("not set") restores the
    /// local value.
    fn apply_settings(&mut self, s: &Settings, now: Instant) {
        let interval = match s.telemetry_interval_secs {
            0 => self.local_interval,
            n => Duration::from_secs(n.into()),
        };
        self.set_interval(interval, now);
        if s.heartbeat_interval_secs > 0 {
            self.heartbeat_every = Duration::from_secs(s.heartbeat_interval_secs.into());
        }
        if let Link::Up(sess) = &mut self.link {
            sess.heartbeat_at = now + self.heartbeat_every;
        }
    }

    fn set_interval(&mut self, interval: Duration, now: Instant) {
        let interval = interval.max(Duration::from_millis(1));
        if interval != self.interval {
            self.interval = interval;
            self.next_sample = now + interval;
            self.out.push_back(Output::Interval(interval));
        }
    }

    /// A link change is written at once (and counts as the latest write).
    fn set_link(&mut self, state: LinkState, error: Option<String>, now: Instant) {
        self.status_dirty_since = None;
        self.status_written = Some(now);
        self.out.push_back(Output::Link { state, error });
    }

    fn status_changed(&mut self, now: Instant) {
        if self.rules.write_status {
            self.status_dirty_since.get_or_insert(now);
        }
    }

    /// When a pending status change is due to be written.
    fn status_due(&self) -> Option<Instant> {
        let settled = self.status_dirty_since? + self.rules.status_settle;
        Some(match self.status_written {
            Some(w) => settled.max(w + self.rules.status_every),
            None => settled,
        })
    }
}

#[cfg(test)]
mod tests;
