//! systemd's notify protocol (`Type=notify`): `READY=1` once state is loaded
//! and the first connection attempt starts, `STOPPING=1` on a stop request,
//! `STATUS=` lines, and `WATCHDOG=1` pings that depend on the main loop's
//! health: the loop stamps [`Health`] on every turn, and turns for a stamp
//! at least every quarter of `WATCHDOG_USEC` ([`Health::next_beat`]) when
//! nothing else wakes it; a task pings at half of `WATCHDOG_USEC` only while the last
//! stamp is younger than `WATCHDOG_USEC`. A wedged loop stops the pings and
//! systemd restarts the agent. Without `NOTIFY_SOCKET` all of this is a no-op
//! (and the loop has no reason to wake for it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

fn send(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("running")]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn reloaded() {
    send(&[NotifyState::Ready, NotifyState::Status("running")]);
}

pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// Test hook: `OUTPOST_AGENT_WEDGE_AFTER=<duration>` makes the main loop hang
/// (block its thread) that long after start, to show the watchdog stop.
pub const WEDGE_ENV: &str = "OUTPOST_AGENT_WEDGE_AFTER";

/// When the main loop last made progress.
#[derive(Clone)]
pub struct Health {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    wedge_after: Option<Duration>,
    /// How often the loop must stamp at the least (a watchdog's quarter).
    beat_every: Option<Duration>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            wedge_after: std::env::var(WEDGE_ENV)
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok()),
            beat_every: None,
        }
    }

    /// The main loop is alive.
    pub fn beat(&self) {
        let age = self.start.elapsed();
        if self.wedge_after.is_some_and(|w| age >= w) {
            tracing::warn!("{WEDGE_ENV}: wedging the main loop");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        self.last_ms
            .store(age.as_millis() as u64, Ordering::Relaxed);
    }

    /// When the loop must stamp next: a quarter of the watchdog timeout
    /// after the last stamp, so the pinger (at half of it) always finds a
    /// stamp well younger than the timeout while the loop is healthy.
    /// `None` without a watchdog: nothing needs the loop to wake for it.
    pub fn next_beat(&self) -> Option<Instant> {
        let every = self.beat_every?;
        Some(self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + every)
    }

    fn since_last_beat(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Starts the watchdog pinger when systemd asked for one (`WATCHDOG_USEC`),
/// and from then on `health` asks the loop for a stamp every quarter of it
/// ([`Health::next_beat`]). Returns the timeout.
pub fn spawn_watchdog(health: &mut Health) -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let timeout = sd_notify::watchdog_enabled()?;
    health.beat_every = Some(timeout / 4);
    let health = health.clone();
    tracing::info!(
        timeout_ms = timeout.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(timeout / 2);
        let mut healthy = true;
        loop {
            tick.tick().await;
            let since = health.since_last_beat();
            if since < timeout {
                send(&[NotifyState::Watchdog]);
                healthy = true;
            } else if healthy {
                healthy = false;
                tracing::error!(
                    stalled_ms = since.as_millis() as u64,
                    "the main loop is not making progress: watchdog pings stop"
                );
            }
        }
    });
    Some(timeout)
}
