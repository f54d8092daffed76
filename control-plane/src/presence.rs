//! Presence: devices' heartbeats kept in memory and written to the store in
//! batches, never one write transaction per heartbeat (on SQLite each would
//! queue behind the telemetry group commits for the one write lock).
//!
//! A session's heartbeat only records the time in [`Presence`]; the
//! [`run`] driver writes every pending heartbeat in one store call
//! ([`Store::session_heartbeats`]) each [`FLUSH_INTERVAL`], and once more
//! when the server stops; a session that ends writes its last heartbeat
//! with its end ([`Store::sessions_closed`]). A failed write puts the
//! heartbeats back (a newer one for the same device wins), so an outage of
//! the database delays them; only a server stopping while the database is
//! down drops what is pending (after retrying for [`FINAL_FLUSH_TIMEOUT`]).
//!
//! Staleness, the same on every replica: a device's `last_heartbeat` in the
//! store lags its real last heartbeat by at most [`FLUSH_INTERVAL`] plus
//! the flush's own time; with agents heartbeating every 10 s the store's
//! value is at most ~15 s old while the session lives, well inside
//! [`crate::store::ONLINE_WINDOW_MS`] (30 s), so `online` never flickers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::store::{Heartbeat, Store, UnixMillis};

/// How often pending heartbeats are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Heartbeats not yet written, the newest per device.
#[derive(Default)]
pub struct Presence {
    pending: Mutex<HashMap<String, (String, UnixMillis)>>,
}

impl Presence {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, UnixMillis)>> {
        // A panic while holding this lock leaves a consistent map (every
        // operation is a single insert or drain).
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a heartbeat of `session_id` at `at`. The newest per device
    /// is kept, whichever session it came from (a late beat of an old
    /// session does not replace a newer one).
    pub fn beat(&self, device_id: &str, session_id: &str, at: UnixMillis) {
        let mut map = self.map();
        match map.get_mut(device_id) {
            Some((session, t)) if session == session_id => *t = (*t).max(at),
            Some(entry) => {
                if at >= entry.1 {
                    *entry = (session_id.to_string(), at);
                }
            }
            None => {
                map.insert(device_id.to_string(), (session_id.to_string(), at));
            }
        }
    }

    /// Every pending heartbeat, leaving none.
    pub fn take_all(&self) -> Vec<Heartbeat> {
        self.map()
            .drain()
            .map(|(device_id, (session_id, at))| Heartbeat {
                device_id,
                session_id,
                at,
            })
            .collect()
    }

    /// The pending heartbeat of this session, if any (its session closes).
    pub fn take(&self, device_id: &str, session_id: &str) -> Option<Heartbeat> {
        let mut map = self.map();
        match map.get(device_id) {
            Some((session, _)) if session == session_id => {
                map.remove(device_id).map(|(session_id, at)| Heartbeat {
                    device_id: device_id.to_string(),
                    session_id,
                    at,
                })
            }
            _ => None,
        }
    }

    /// Puts back heartbeats whose write failed, unless a newer heartbeat of
    /// the device arrived meanwhile.
    pub fn restore(&self, beats: Vec<Heartbeat>) {
        let mut map = self.map();
        for b in beats {
            match map.get(&b.device_id) {
                // Newer: a later beat of the same session, or any beat of
                // another session (which began after the failed flush took
                // this one).
                Some(_) => {}
                None => {
                    map.insert(b.device_id, (b.session_id, b.at));
                }
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.map().len()
    }
}

/// Writes `beats` (if any); on failure they go back to `presence`.
pub async fn flush(presence: &Presence, store: &dyn Store, beats: Vec<Heartbeat>) -> bool {
    if beats.is_empty() {
        return true;
    }
    match store.session_heartbeats(&beats).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(
                heartbeats = beats.len(),
                "heartbeats not recorded (kept for the next try): {e}"
            );
            presence.restore(beats);
            false
        }
    }
}

/// The driver: flushes every [`FLUSH_INTERVAL`] until `stop` resolves (the
/// server has drained its sessions), then once more.
pub async fn run(
    presence: Arc<Presence>,
    store: Arc<dyn Store>,
    metrics: crate::metrics::Metrics,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        let beats = presence.take_all();
        let n = beats.len();
        let started = Instant::now();
        if flush(&presence, &*store, beats).await && n > 0 {
            metrics.observe_store("heartbeats", started.elapsed());
        }
    }
    // The last batch: retried for a while (the database may be failing
    // over just as the server stops).
    let deadline = tokio::time::Instant::now() + FINAL_FLUSH_TIMEOUT;
    while !tokio::time::timeout_at(deadline, flush(&presence, &*store, presence.take_all()))
        .await
        .unwrap_or(false)
    {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                heartbeats = presence.pending(),
                "the last heartbeats were not written"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long the last batch is retried when the server stops.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<Heartbeat>) -> Vec<(String, String, UnixMillis)> {
        v.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        v.into_iter()
            .map(|b| (b.device_id, b.session_id, b.at))
            .collect()
    }

    fn hb(d: &str, s: &str, at: UnixMillis) -> (String, String, UnixMillis) {
        (d.to_string(), s.to_string(), at)
    }

    #[test]
    fn the_newest_heartbeat_per_device_is_kept() {
        let p = Presence::default();
        p.beat("d1", "s1", 10);
        p.beat("d1", "s1", 30);
        // Out of order (two tasks racing): the newer time stays.
        p.beat("d1", "s1", 20);
        p.beat("d2", "s9", 5);
        assert_eq!(p.pending(), 2);
        assert_eq!(
            sorted(p.take_all()),
            [hb("d1", "s1", 30), hb("d2", "s9", 5)]
        );
        assert_eq!(p.pending(), 0);
        assert!(p.take_all().is_empty());
    }

    #[test]
    fn a_new_session_replaces_the_old_sessions_heartbeat() {
        let p = Presence::default();
        p.beat("d1", "old", 40);
        p.beat("d1", "new", 50);
        // A late beat of the old session (its task still running).
        p.beat("d1", "old", 45);
        assert_eq!(sorted(p.take_all()), [hb("d1", "new", 50)]);
    }

    #[test]
    fn take_returns_only_that_sessions_heartbeat() {
        let p = Presence::default();
        p.beat("d1", "s2", 10);
        assert!(p.take("d1", "s1").is_none(), "another session's beat stays");
        assert_eq!(p.pending(), 1);
        let b = p.take("d1", "s2").unwrap();
        assert_eq!((b.session_id.as_str(), b.at), ("s2", 10));
        assert_eq!(p.pending(), 0);
        assert!(p.take("d1", "s2").is_none());
    }

    #[test]
    fn a_failed_write_is_put_back_unless_something_newer_came() {
        let p = Presence::default();
        p.beat("d1", "s1", 10);
        p.beat("d2", "s1", 10);
        let failed = p.take_all();
        // While the write was failing, d1 beat again.
        p.beat("d1", "s1", 20);
        p.restore(failed);
        assert_eq!(
            sorted(p.take_all()),
            [hb("d1", "s1", 20), hb("d2", "s1", 10)]
        );
    }
}
