//! Devices connected to this replica right now, and a way to reach their
//! session streams (config pushes today; rotate and decommission commands
//! with the credential lifecycle).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::v1::server_message::Kind as ServerKind;
use outpost_proto::v1::{ConfigUpdate, ServerMessage, Settings};
use tokio::sync::mpsc;

use crate::device_config;
use crate::grpc::HEARTBEAT_INTERVAL_SECS;
use crate::store::ConfigVersion;

/// Messages queued per session before pushes are dropped (the session will
/// get the current config again on its next start).
const QUEUE: usize = 8;

#[derive(Default)]
pub struct LiveDevices {
    sessions: Mutex<HashMap<String, HashMap<u64, mpsc::Sender<ServerMessage>>>>,
    next_handle: AtomicU64,
}

/// A session's registration; unregisters on drop.
pub struct Registration<'a> {
    live: &'a LiveDevices,
    device_id: String,
    handle: u64,
    pub inbox: mpsc::Receiver<ServerMessage>,
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
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, mpsc::Sender<ServerMessage>>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single inserts/removes), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, device_id: &str) -> Registration<'_> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(device_id.to_string())
            .or_default()
            .insert(handle, tx);
        Registration {
            live: self,
            device_id: device_id.to_string(),
            handle,
            inbox: rx,
        }
    }

    pub fn is_connected(&self, device_id: &str) -> bool {
        self.lock().contains_key(device_id)
    }

    /// Queues `config` to every live session of the device.
    pub fn push_config(&self, device_id: &str, config: &ConfigVersion) {
        let msg = ServerMessage {
            kind: Some(ServerKind::Config(config_update(config))),
        };
        if let Some(sessions) = self.lock().get(device_id) {
            for tx in sessions.values() {
                if tx.try_send(msg.clone()).is_err() {
                    tracing::warn!(device = %device_id, "session queue full; config reaches it on reconnect");
                }
            }
        }
    }
}

/// The wire form of a config version, with the settings derived from it.
pub fn config_update(config: &ConfigVersion) -> ConfigUpdate {
    ConfigUpdate {
        version: config.version,
        config_json: config.config.to_string(),
        settings: Some(Settings {
            telemetry_interval_secs: device_config::telemetry_interval_secs(&config.config)
                .unwrap_or(0),
            heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_reach_registered_sessions_until_they_drop() {
        let live = LiveDevices::default();
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
            match r.inbox.try_recv().unwrap().kind {
                Some(ServerKind::Config(c)) => {
                    assert_eq!(c.version, 3);
                    assert_eq!(c.settings.unwrap().telemetry_interval_secs, 5);
                }
                other => panic!("{other:?}"),
            }
        }
        drop(a);
        drop(b);
        assert!(!live.is_connected("d1"));
        live.push_config("d1", &cfg); // nobody listening: no panic
    }
}
