//! What the REST upload and the gRPC download of artifacts share on one
//! replica (docs/artifacts.md): the size and concurrency limits, the uploads
//! in progress, and a small cache of recently read payload chunks, so that a
//! fleet fetching the same artifact does not read each chunk from the store
//! once per box.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of payload chunks the cache keeps at most.
pub const CACHE_BYTES: usize = 64 << 20;
/// Downloads one device may have in progress at once on a replica: one
/// device cannot take every slot of `--max-artifact-downloads`.
pub const MAX_DOWNLOADS_PER_DEVICE: usize = 2;
/// How long sending one chunk of a download may wait on a device that does
/// not read before the download is ended and its slot freed.
pub const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `(workspace, name, version)`.
type ArtifactKey = (String, String, String);
/// `(workspace, name, version, sha256, idx)`: the payload's hash tells a
/// version deleted and published again with other bytes from the old one.
type ChunkKey = (String, String, String, String, u64);

/// One replica's artifact limits and caches.
pub struct Artifacts {
    /// Largest payload accepted (`--max-artifact-size`).
    pub max_size: u64,
    /// How long one chunk's send may wait ([`SEND_STALL_TIMEOUT`]; tests
    /// shorten it).
    pub send_stall_timeout: Duration,
    downloads: Arc<Semaphore>,
    /// Downloads in progress per device id (entries at zero are removed).
    per_device: Arc<Mutex<HashMap<String, usize>>>,
    uploads: Mutex<HashSet<ArtifactKey>>,
    cache: ChunkCache,
}

/// A download's slot: one of the replica's and one of its device's, both
/// given back when dropped.
pub struct DownloadSlot {
    _permit: OwnedSemaphorePermit,
    device_id: String,
    per_device: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.per_device);
        if let Some(n) = map.get_mut(&self.device_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.device_id);
            }
        }
    }
}

impl Artifacts {
    pub fn new(max_size: u64, max_downloads: usize, send_stall_timeout: Duration) -> Self {
        Self {
            max_size,
            send_stall_timeout,
            downloads: Arc::new(Semaphore::new(max_downloads)),
            per_device: Arc::new(Mutex::new(HashMap::new())),
            uploads: Mutex::new(HashSet::new()),
            cache: ChunkCache::new(CACHE_BYTES),
        }
    }

    /// A download slot for `device_id`, or `None` when every slot of the
    /// replica is taken or the device has [`MAX_DOWNLOADS_PER_DEVICE`] in
    /// progress already.
    pub fn try_download(&self, device_id: &str) -> Option<DownloadSlot> {
        let mut map = lock(&self.per_device);
        let n = map.get(device_id).copied().unwrap_or(0);
        if n >= MAX_DOWNLOADS_PER_DEVICE {
            return None;
        }
        let permit = self.downloads.clone().try_acquire_owned().ok()?;
        map.insert(device_id.to_string(), n + 1);
        Some(DownloadSlot {
            _permit: permit,
            device_id: device_id.to_string(),
            per_device: self.per_device.clone(),
        })
    }

    /// Marks an upload of the artifact as in progress on this replica;
    /// `None` when one is already.
    pub fn begin_upload(self: &Arc<Self>, ws: &str, name: &str, version: &str) -> Option<Upload> {
        let key = (ws.to_string(), name.to_string(), version.to_string());
        if !lock(&self.uploads).insert(key.clone()) {
            return None;
        }
        Some(Upload {
            owner: self.clone(),
            key,
        })
    }

    pub fn cached_chunk(
        &self,
        ws: &str,
        name: &str,
        version: &str,
        sha256: &str,
        idx: u64,
    ) -> Option<Arc<Vec<u8>>> {
        self.cache.get(&(
            ws.to_string(),
            name.to_string(),
            version.to_string(),
            sha256.to_string(),
            idx,
        ))
    }

    pub fn cache_chunk(
        &self,
        ws: &str,
        name: &str,
        version: &str,
        sha256: &str,
        idx: u64,
        data: Arc<Vec<u8>>,
    ) {
        self.cache.insert(
            (
                ws.to_string(),
                name.to_string(),
                version.to_string(),
                sha256.to_string(),
                idx,
            ),
            data,
        );
    }

    /// Drops the cached chunks of a deleted artifact.
    pub fn forget(&self, ws: &str, name: &str, version: &str) {
        self.cache
            .retain(|k| !(k.0 == ws && k.1 == name && k.2 == version));
    }
}

/// An upload in progress; ends when dropped.
pub struct Upload {
    owner: Arc<Artifacts>,
    key: ArtifactKey,
}

impl Drop for Upload {
    fn drop(&mut self) {
        lock(&self.owner.uploads).remove(&self.key);
    }
}

/// A poisoned lock only means another thread panicked while holding it; the
/// sets and maps here stay consistent between statements, so go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Recently read chunks, first in first out, at most `max_bytes` of data.
struct ChunkCache {
    max_bytes: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<ChunkKey, Arc<Vec<u8>>>,
    order: VecDeque<ChunkKey>,
    bytes: usize,
}

impl ChunkCache {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn get(&self, key: &ChunkKey) -> Option<Arc<Vec<u8>>> {
        lock(&self.inner).map.get(key).cloned()
    }

    fn insert(&self, key: ChunkKey, data: Arc<Vec<u8>>) {
        if data.len() > self.max_bytes {
            return;
        }
        let mut c = lock(&self.inner);
        if c.map.contains_key(&key) {
            return;
        }
        c.bytes += data.len();
        c.order.push_back(key.clone());
        c.map.insert(key, data);
        while c.bytes > self.max_bytes {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            if let Some(d) = c.map.remove(&old) {
                c.bytes -= d.len();
            }
        }
    }

    fn retain(&self, keep: impl Fn(&ChunkKey) -> bool) {
        let mut c = lock(&self.inner);
        let CacheInner { map, order, bytes } = &mut *c;
        order.retain(|k| {
            if keep(k) {
                return true;
            }
            if let Some(d) = map.remove(k) {
                *bytes -= d.len();
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(idx: u64) -> ChunkKey {
        ("ws".into(), "m".into(), "1".into(), "h".into(), idx)
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_drops_the_oldest() {
        let c = ChunkCache::new(10);
        c.insert(key(0), Arc::new(vec![0; 4]));
        c.insert(key(1), Arc::new(vec![1; 4]));
        c.insert(key(2), Arc::new(vec![2; 4]));
        assert!(c.get(&key(0)).is_none());
        assert_eq!(c.get(&key(2)).unwrap().as_slice(), &[2; 4]);
        assert!(lock(&c.inner).bytes <= 10);
        c.insert(key(3), Arc::new(vec![3; 11]));
        assert!(c.get(&key(3)).is_none(), "larger than the whole cache");
        c.retain(|k| k.4 != 1);
        assert!(c.get(&key(1)).is_none());
        assert_eq!(lock(&c.inner).bytes, 4);
    }

    #[test]
    fn one_upload_per_artifact_at_a_time() {
        let a = Arc::new(Artifacts::new(10, 1, SEND_STALL_TIMEOUT));
        let first = a.begin_upload("ws", "m", "1").unwrap();
        assert!(a.begin_upload("ws", "m", "1").is_none());
        assert!(a.begin_upload("ws", "m", "2").is_some());
        drop(first);
        assert!(a.begin_upload("ws", "m", "1").is_some());
        let slot = a.try_download("d1").unwrap();
        assert!(a.try_download("d2").is_none());
        drop(slot);
        assert!(a.try_download("d2").is_some());
    }

    #[test]
    fn a_device_holds_at_most_its_share_of_the_download_slots() {
        let a = Artifacts::new(10, 5, SEND_STALL_TIMEOUT);
        let held: Vec<DownloadSlot> = (0..MAX_DOWNLOADS_PER_DEVICE)
            .map(|_| a.try_download("d1").unwrap())
            .collect();
        assert!(a.try_download("d1").is_none(), "over the device's share");
        let other = a.try_download("d2").unwrap();
        drop(held);
        assert!(lock(&a.per_device).get("d1").is_none(), "forgotten at zero");
        let again: Vec<DownloadSlot> = (0..MAX_DOWNLOADS_PER_DEVICE)
            .map(|_| a.try_download("d1").unwrap())
            .collect();
        // The replica's cap still holds: 2 + 1 + one more of d3 is 4 of 5.
        assert!(a.try_download("d3").is_some());
        drop((again, other));
    }
}
