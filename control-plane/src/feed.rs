//! The live telemetry feed behind the operators' SSE streams.
//!
//! The feed carries *signals*, not samples: "device D has committed samples
//! up to seq N" (and "device D is gone"). A watcher wakes on the signal and
//! reads what it has not sent yet from the store, after the last seq it sent.
//! So a slow watcher never loses a sample (it catches up from the store), a
//! resumed stream (`Last-Event-ID`) replays from the same code path, and a
//! sample committed on another replica reaches a watcher here through the
//! replica bus as one more signal (see `bus.rs`): the store is shared.
//!
//! Signals exist only for devices someone watches; publishing for an
//! unwatched device is one map lookup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Watchers a process serves at once; more are refused (503) rather than
/// letting a runaway client exhaust store connections.
pub const MAX_WATCHERS: usize = 1024;
/// Watchers one workspace may hold on a process, so one tenant cannot take
/// every slot.
pub const MAX_WATCHERS_PER_WORKSPACE: usize = 256;

/// What a watcher sees: the highest committed seq, and whether the device
/// has been deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signal {
    pub committed: u64,
    pub deleted: bool,
}

#[derive(Default)]
struct Map {
    devices: HashMap<String, watch::Sender<Signal>>,
    per_workspace: HashMap<String, usize>,
}

/// A handle to the feed; clones share it.
#[derive(Default, Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    devices: Mutex<Map>,
    watchers: AtomicUsize,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // Single inserts/removes/sends under the lock: a poisoned map is
        // still consistent.
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One watcher of one device (owned: it lives in a stream's task);
/// unregisters on drop.
pub struct Watch {
    feed: Arc<Inner>,
    device_id: String,
    workspace: String,
    /// Always `Some` until drop (taken there, under the map's lock).
    signal: Option<watch::Receiver<Signal>>,
}

impl Watch {
    /// The device's signal.
    pub fn signal(&mut self) -> &mut watch::Receiver<Signal> {
        // Invariant: only `drop` takes the receiver.
        self.signal
            .get_or_insert_with(|| watch::channel(Signal::default()).1)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.feed.watchers.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.feed.lock();
        // Drop our receiver under the lock: of two watchers leaving at once,
        // the second sees no receiver left and removes the entry.
        drop(self.signal.take());
        if map
            .devices
            .get(&self.device_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.devices.remove(&self.device_id);
        }
        if let Some(n) = map.per_workspace.get_mut(&self.workspace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.per_workspace.remove(&self.workspace);
            }
        }
    }
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.inner.lock()
    }

    /// Starts watching a device of `workspace`, or `None` when
    /// [`MAX_WATCHERS`] (or the workspace's share) are busy.
    pub fn watch(&self, workspace: &str, device_id: &str) -> Option<Watch> {
        let mut map = self.lock();
        let mine = map.per_workspace.get(workspace).copied().unwrap_or(0);
        if mine >= MAX_WATCHERS_PER_WORKSPACE
            || self.inner.watchers.load(Ordering::Relaxed) >= MAX_WATCHERS
        {
            return None;
        }
        self.inner.watchers.fetch_add(1, Ordering::Relaxed);
        *map.per_workspace.entry(workspace.to_string()).or_default() += 1;
        let signal = map
            .devices
            .entry(device_id.to_string())
            .or_insert_with(|| watch::channel(Signal::default()).0)
            .subscribe();
        Some(Watch {
            feed: self.inner.clone(),
            device_id: device_id.to_string(),
            workspace: workspace.to_string(),
            signal: Some(signal),
        })
    }

    /// Watchers open now.
    pub fn watchers(&self) -> usize {
        self.inner.watchers.load(Ordering::Relaxed)
    }

    /// Samples of `device_id` up to `seq` are durable.
    pub fn committed(&self, device_id: &str, seq: u64) {
        if let Some(tx) = self.lock().devices.get(device_id) {
            tx.send_if_modified(|s| {
                let newer = seq > s.committed;
                s.committed = s.committed.max(seq);
                newer
            });
        }
    }

    /// The device is deleted: its watchers end their streams.
    pub fn deleted(&self, device_id: &str) {
        if let Some(tx) = self.lock().devices.get(device_id) {
            tx.send_modify(|s| s.deleted = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_wake_on_newer_commits_and_deletion_only() {
        let feed = Feed::default();
        feed.committed("d1", 5); // nobody watching: nothing kept
        assert!(feed.lock().devices.is_empty());
        let mut a = feed.watch("acme", "d1").unwrap();
        let mut b = feed.watch("acme", "d1").unwrap();
        assert_eq!(feed.watchers(), 2);
        feed.committed("d1", 7);
        a.signal().changed().await.unwrap();
        assert_eq!(a.signal().borrow_and_update().committed, 7);
        // An older or equal seq (a replayed batch, a late bus message) wakes no one.
        feed.committed("d1", 7);
        feed.committed("d1", 6);
        assert!(!a.signal().has_changed().unwrap());
        feed.committed("d2", 9); // another device
        assert!(!a.signal().has_changed().unwrap());
        feed.deleted("d1");
        b.signal().changed().await.unwrap();
        assert_eq!(
            *b.signal().borrow(),
            Signal {
                committed: 7,
                deleted: true
            }
        );
        drop(a);
        assert_eq!(feed.lock().devices.len(), 1, "one watcher left");
        drop(b);
        assert!(
            feed.lock().devices.is_empty(),
            "the last watcher removes the entry"
        );
        assert!(feed.lock().per_workspace.is_empty());
        assert_eq!(feed.watchers(), 0);
        // A new watch after a deletion starts clean (the id is never reused,
        // but the entry must not leak the old state either).
        let mut c = feed.watch("acme", "d1").unwrap();
        assert_eq!(*c.signal().borrow(), Signal::default());
    }

    #[test]
    fn watchers_are_capped_per_process_and_per_workspace() {
        let feed = Feed::default();
        let greedy: Vec<_> = (0..MAX_WATCHERS_PER_WORKSPACE)
            .map(|i| feed.watch("greedy", &format!("g{i}")).unwrap())
            .collect();
        assert!(
            feed.watch("greedy", "one-more").is_none(),
            "its share is taken"
        );
        let others: Vec<_> = (0..MAX_WATCHERS - MAX_WATCHERS_PER_WORKSPACE)
            .map(|i| {
                feed.watch(&format!("ws{}", i % 8), &format!("d{i}"))
                    .unwrap()
            })
            .collect();
        assert_eq!(feed.watchers(), MAX_WATCHERS);
        assert!(feed.watch("fresh", "x").is_none(), "the process is full");
        drop(greedy);
        assert!(feed.watch("greedy", "again").is_some());
        drop(others);
    }

    #[tokio::test]
    async fn watchers_leaving_together_leave_no_entry_behind() {
        let feed = std::sync::Arc::new(Feed::default());
        for _ in 0..200 {
            let a = feed.watch("acme", "d1").unwrap();
            let b = feed.watch("acme", "d1").unwrap();
            let (ta, tb) = (
                std::thread::spawn(move || drop(a)),
                std::thread::spawn(move || drop(b)),
            );
            ta.join().unwrap();
            tb.join().unwrap();
            assert!(feed.lock().devices.is_empty());
        }
    }
}
