//! Devices connected to this replica right now, and a way to reach their
//! streams: cut them (revocation), push a config, ask for a rotation. What
//! a session is asked to do is queued as a [`Push`]; the gRPC session turns
//! it into its wire message (this module knows no wire types).
//!
//! With several replicas (PostgreSQL), what an operator does on one replica
//! must reach a device connected to another: every such action is also
//! published as a [`LiveEvent`] (see `bus.rs`, LISTEN/NOTIFY), and the other
//! replicas apply it to their own streams with [`LiveDevices::apply`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};

use crate::feed::Feed;
use crate::store::ConfigVersion;

/// Devices per `Committed` event: ids are at most 64 bytes, so 64 entries
/// stay well inside PostgreSQL's 8000-byte NOTIFY payload.
pub(crate) const COMMITTED_PER_EVENT: usize = 64;

/// Messages queued per session before pushes are dropped (the session will
/// get the current config again on its next start).
const QUEUE: usize = 8;

/// Why a device's streams are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    Deleted,
    Disabled,
    Revoked,
    /// Not a cut of live streams: an expired certificate's refusal.
    Expired,
}

/// What an operator asks of a connected session.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// The device's config is now this version.
    Config(ConfigVersion),
    /// Rotate the key now.
    Rotate,
    /// The device's desired artifacts changed (a rollout's wave started):
    /// the session reads them from the store and sends them.
    Desired,
}

struct Stream {
    /// Pushes to a session (None for telemetry streams).
    push: Option<mpsc::Sender<Push>>,
    cut: watch::Sender<Option<Cut>>,
}

type Map = HashMap<String, HashMap<u64, Stream>>;

/// An operator action another replica must apply to its own streams.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveEvent {
    Cut {
        device: String,
        why: Cut,
    },
    Rotate {
        device: String,
    },
    /// The device's config changed to `version` (read it from the store).
    Config {
        device: String,
        version: u64,
    },
    /// Telemetry committed: per device, the highest seq now durable.
    Committed {
        devices: Vec<(String, u64)>,
    },
    /// These devices' desired artifacts changed (a rollout wave started).
    Desired {
        devices: Vec<String>,
    },
}

pub struct LiveDevices {
    sessions: Mutex<Map>,
    next_handle: AtomicU64,
    /// Where actions go for the other replicas (set when there are any).
    publish: std::sync::OnceLock<mpsc::UnboundedSender<LiveEvent>>,
    /// Where commit and deletion signals go, this replica's and the others'
    /// (the same feed `AppState::feed` serves the SSE streams from).
    feed: Feed,
}

/// A stream's registration; unregisters on drop.
pub struct Registration<'a> {
    live: &'a LiveDevices,
    device_id: String,
    handle: u64,
    /// Pushes for a session stream (never yields for telemetry streams).
    pub inbox: mpsc::Receiver<Push>,
    /// Becomes `Some` when the device's streams are cut; see [`cut`].
    pub cut: watch::Receiver<Option<Cut>>,
}

/// Resolves when a registration is cut, with the reason.
pub async fn cut(rx: &mut watch::Receiver<Option<Cut>>) -> Cut {
    loop {
        if let Some(c) = *rx.borrow_and_update() {
            return c;
        }
        if rx.changed().await.is_err() {
            // The sender lives as long as the registration; park instead of
            // spinning if it is ever gone.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = self.live.lock();
        if let Some(m) = map.get_mut(&self.device_id) {
            m.remove(&self.handle);
            if m.is_empty() {
                map.remove(&self.device_id);
            }
        }
    }
}

impl LiveDevices {
    /// A registry that passes commit and deletion signals to `feed`.
    pub fn new(feed: Feed) -> Self {
        LiveDevices {
            sessions: Mutex::default(),
            next_handle: AtomicU64::default(),
            publish: std::sync::OnceLock::new(),
            feed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single inserts/removes), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session stream: it receives pushes and cuts.
    pub fn register(&self, device_id: &str) -> Registration<'_> {
        self.add(device_id, true)
    }

    /// Registers a data stream (telemetry, logs): it receives cuts only.
    pub fn register_stream(&self, device_id: &str) -> Registration<'_> {
        self.add(device_id, false)
    }

    fn add(&self, device_id: &str, session: bool) -> Registration<'_> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (cut_tx, cut_rx) = watch::channel(None);
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(device_id.to_string())
            .or_default()
            .insert(
                handle,
                Stream {
                    push: session.then_some(tx),
                    cut: cut_tx,
                },
            );
        Registration {
            live: self,
            device_id: device_id.to_string(),
            handle,
            inbox: rx,
            cut: cut_rx,
        }
    }

    /// Sends this replica's actions to the others from now on.
    pub fn set_publisher(&self, tx: mpsc::UnboundedSender<LiveEvent>) {
        let _ = self.publish.set(tx);
    }

    fn publish(&self, event: LiveEvent) {
        if let Some(tx) = self.publish.get() {
            let _ = tx.send(event);
        }
    }

    /// Applies another replica's action to this replica's streams (config
    /// events are resolved by the bus, which has the store, into
    /// [`LiveDevices::push_config_local`]).
    pub fn apply(&self, event: &LiveEvent) {
        match event {
            LiveEvent::Cut { device, why } => self.disconnect_local(device, *why),
            LiveEvent::Rotate { device } => {
                self.push_rotate_local(device);
            }
            LiveEvent::Config { .. } => {}
            LiveEvent::Desired { devices } => {
                for device in devices {
                    self.push_desired_local(device);
                }
            }
            LiveEvent::Committed { devices } => {
                for (device, seq) in devices {
                    self.feed.committed(device, *seq);
                }
            }
        }
    }

    /// Telemetry is durable up to these seqs: wakes the watchers on every
    /// replica. `devices` holds each device once.
    pub fn committed(&self, devices: Vec<(String, u64)>) {
        if devices.is_empty() {
            return;
        }
        for (device, seq) in &devices {
            self.feed.committed(device, *seq);
        }
        if self.publish.get().is_some() {
            // A NOTIFY payload holds under 8000 bytes: split long groups.
            for chunk in devices.chunks(COMMITTED_PER_EVENT) {
                self.publish(LiveEvent::Committed {
                    devices: chunk.to_vec(),
                });
            }
        }
    }

    /// Cuts every open stream of the device (revocation), on every replica.
    pub fn disconnect(&self, device_id: &str, why: Cut) {
        self.disconnect_local(device_id, why);
        self.publish(LiveEvent::Cut {
            device: device_id.to_string(),
            why,
        });
    }

    fn disconnect_local(&self, device_id: &str, why: Cut) {
        if why == Cut::Deleted {
            self.feed.deleted(device_id);
        }
        if let Some(streams) = self.lock().get(device_id) {
            for s in streams.values() {
                let _ = s.cut.send(Some(why));
            }
        }
    }

    /// Devices with at least one open stream on this replica.
    pub fn connected_devices(&self) -> usize {
        self.lock().len()
    }

    pub fn is_connected(&self, device_id: &str) -> bool {
        self.lock().contains_key(device_id)
    }

    /// Asks every live session of the device, on every replica, to rotate
    /// its key now. Returns whether a session on this replica was reached.
    pub fn push_rotate(&self, device_id: &str) -> bool {
        self.publish(LiveEvent::Rotate {
            device: device_id.to_string(),
        });
        self.push_rotate_local(device_id)
    }

    fn push_rotate_local(&self, device_id: &str) -> bool {
        let mut reached = false;
        if let Some(streams) = self.lock().get(device_id) {
            for tx in streams.values().filter_map(|s| s.push.as_ref()) {
                reached |= tx.try_send(Push::Rotate).is_ok();
            }
        }
        reached
    }

    /// Queues `config` to every live session of the device, on every replica.
    pub fn push_config(&self, device_id: &str, config: &ConfigVersion) {
        self.publish(LiveEvent::Config {
            device: device_id.to_string(),
            version: config.version,
        });
        self.push_config_local(device_id, config);
    }

    /// Tells every live session of these devices, on every replica, that
    /// their desired artifacts changed.
    pub fn push_desired(&self, devices: &[String]) {
        for device in devices {
            self.push_desired_local(device);
        }
        if self.publish.get().is_some() {
            for chunk in devices.chunks(COMMITTED_PER_EVENT) {
                self.publish(LiveEvent::Desired {
                    devices: chunk.to_vec(),
                });
            }
        }
    }

    fn push_desired_local(&self, device_id: &str) {
        if let Some(streams) = self.lock().get(device_id) {
            for tx in streams.values().filter_map(|s| s.push.as_ref()) {
                if tx.try_send(Push::Desired).is_err() {
                    tracing::warn!(device = %device_id, "session queue full; desired artifacts reach it on reconnect");
                }
            }
        }
    }

    pub fn push_config_local(&self, device_id: &str, config: &ConfigVersion) {
        if let Some(streams) = self.lock().get(device_id) {
            for tx in streams.values().filter_map(|s| s.push.as_ref()) {
                if tx.try_send(Push::Config(config.clone())).is_err() {
                    tracing::warn!(device = %device_id, "session queue full; config reaches it on reconnect");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pushes_and_cuts_reach_registered_streams_until_they_drop() {
        let feed = Feed::default();
        let live = LiveDevices::new(feed.clone());
        let mut a = live.register("d1");
        let mut b = live.register("d1");
        assert!(live.is_connected("d1"));
        let cfg = ConfigVersion {
            version: 3,
            config: serde_json::json!({"telemetry_interval_secs": 5}),
            created_at: 0,
        };
        live.push_config("d1", &cfg);
        for r in [&mut a, &mut b] {
            assert_eq!(r.inbox.try_recv().unwrap(), Push::Config(cfg.clone()));
        }
        live.push_desired(&["d1".to_string(), "d2".to_string()]);
        for r in [&mut a, &mut b] {
            assert_eq!(r.inbox.try_recv().unwrap(), Push::Desired);
        }
        live.apply(&LiveEvent::Desired {
            devices: vec!["d1".into()],
        });
        assert_eq!(a.inbox.try_recv().unwrap(), Push::Desired);
        assert_eq!(b.inbox.try_recv().unwrap(), Push::Desired);
        assert!(live.push_rotate("d1"));
        for r in [&mut a, &mut b] {
            assert_eq!(r.inbox.try_recv().unwrap(), Push::Rotate);
        }
        let mut t = live.register_stream("d1");
        live.disconnect("d1", Cut::Disabled);
        assert_eq!(cut(&mut a.cut).await, Cut::Disabled);
        assert_eq!(cut(&mut t.cut).await, Cut::Disabled);
        assert!(t.inbox.try_recv().is_err(), "data streams get no pushes");
        drop(a);
        drop(b);
        drop(t);
        assert!(!live.is_connected("d1"));
        // A new registration after a cut starts uncut.
        let fresh = live.register("d1");
        assert_eq!(*fresh.cut.borrow(), None);
        live.push_config("d1", &cfg); // nobody listening: no panic
    }

    #[test]
    fn commits_and_deletions_here_and_elsewhere_reach_the_feed() {
        let feed = Feed::default();
        let live = LiveDevices::new(feed.clone());
        let mut w = feed.watch("acme", "d1").unwrap();
        live.committed(vec![("d1".into(), 4)]);
        assert_eq!(w.signal().borrow_and_update().committed, 4);
        live.apply(&LiveEvent::Committed {
            devices: vec![("d1".into(), 9)],
        });
        assert_eq!(w.signal().borrow_and_update().committed, 9);
        live.apply(&LiveEvent::Cut {
            device: "d1".into(),
            why: Cut::Deleted,
        });
        assert!(w.signal().borrow().deleted);
    }
}
