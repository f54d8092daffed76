//! The per-device families of `/metrics`, rendered in the background and
//! served from memory: a scrape costs no store reads however many devices
//! there are, and a compressed scrape no compression of the fleet part.
//!
//! One render per scope (every workspace, or one workspace), rebuilt every
//! `--metrics-refresh` (default 10 s) from the store — so every replica
//! exports the same fleet — while someone scrapes that scope; a scope not
//! scraped for [`IDLE`] stops being rebuilt. The first scrape of a scope
//! waits for its first render. `--metrics-refresh 0s` renders on every
//! scrape instead (no cache).
//!
//! Compression: each render also keeps its text as raw DEFLATE blocks ending
//! in a sync flush. A gzip scrape is a gzip header, those blocks, the
//! scrape's own (fresh) part compressed as the final blocks, and the CRC-32
//! and length of the whole text: one valid gzip member (pigz splices its
//! parallel blocks the same way), built in the time it takes to compress the
//! small fresh part and checksum the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use tokio::sync::watch;

/// A scope nobody scraped for this long stops being rebuilt.
pub const IDLE: Duration = Duration::from_secs(600);

/// One rendered scope.
pub struct Rendered {
    /// Prometheus text.
    pub text: Vec<u8>,
    /// `text` as raw DEFLATE blocks, none final, ending byte-aligned.
    deflated: Vec<u8>,
    /// CRC-32 of `text`.
    crc: crc32fast::Hasher,
    pub built_at: Instant,
}

impl Rendered {
    pub fn new(text: Vec<u8>) -> std::io::Result<Self> {
        let deflated = deflate(&text, FlushCompress::Sync)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&text);
        Ok(Self {
            text,
            deflated,
            crc,
            built_at: Instant::now(),
        })
    }

    /// `self.text` followed by `fresh`, as one gzip member.
    pub fn gzip_with(&self, fresh: &[u8]) -> std::io::Result<Vec<u8>> {
        let tail = deflate(fresh, FlushCompress::Finish)?;
        let mut crc = self.crc.clone();
        crc.update(fresh);
        let len = self.text.len() + fresh.len();
        let mut out = Vec::with_capacity(10 + self.deflated.len() + tail.len() + 8);
        // ID1 ID2, CM = deflate, no flags, no mtime, XFL 0, OS 255 (unknown).
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        out.extend_from_slice(&self.deflated);
        out.extend_from_slice(&tail);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        let isize =
            u32::try_from(u64::try_from(len).unwrap_or(u64::MAX) & 0xffff_ffff).unwrap_or(u32::MAX);
        out.extend_from_slice(&isize.to_le_bytes());
        Ok(out)
    }
}

/// `data` as raw DEFLATE, ending with `flush` (Sync: byte-aligned, more may
/// follow; Finish: the final block).
fn deflate(data: &[u8], flush: FlushCompress) -> std::io::Result<Vec<u8>> {
    // Level 1: Prometheus text compresses ~10× at it, at a fraction of the
    // default level's time.
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(data.len() / 8 + 1024);
    loop {
        let consumed = usize::try_from(c.total_in()).unwrap_or(data.len());
        out.reserve(64 * 1024);
        let status = c
            .compress_vec(data.get(consumed..).unwrap_or_default(), &mut out, flush)
            .map_err(std::io::Error::other)?;
        let all_in = usize::try_from(c.total_in()).unwrap_or(0) >= data.len();
        let done = match flush {
            FlushCompress::Finish => status == flate2::Status::StreamEnd,
            // zlib's rule: a flush is complete when it left output space.
            _ => all_in && out.len() < out.capacity(),
        };
        if done {
            return Ok(out);
        }
    }
}

pub type Render = Result<Arc<Rendered>, String>;

/// A scope's latest render and when it was last scraped.
struct Slot {
    render: watch::Sender<Option<Render>>,
    scraped: Mutex<Instant>,
}

impl Slot {
    fn touch(&self) {
        *self.scraped.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(*self.scraped.lock().unwrap_or_else(PoisonError::into_inner))
            >= IDLE
    }
}

/// The renders, by scope (`None`: every workspace).
pub struct FleetCache {
    refresh: Duration,
    slots: Mutex<HashMap<Option<String>, Arc<Slot>>>,
}

impl FleetCache {
    /// `refresh` zero: no cache, every scrape renders.
    pub fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            slots: Mutex::default(),
        }
    }

    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// Whether `scope` is being kept current.
    pub fn has(&self, scope: &Option<String>) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(scope)
    }

    /// Scopes being kept current.
    pub fn scopes(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The scope's latest render: from memory, or (first scrape of the
    /// scope, or no cache) rendered now by `render`. A background task
    /// re-renders the scope every `refresh` while it is scraped.
    pub async fn get<F, Fut>(
        self: &Arc<Self>,
        scope: Option<String>,
        render: F,
        mut stop: watch::Receiver<bool>,
    ) -> Render
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Render> + Send,
    {
        if self.refresh.is_zero() {
            return render().await;
        }
        let (slot, new) = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            match slots.get(&scope) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(Slot {
                        render: watch::channel(None).0,
                        scraped: Mutex::new(Instant::now()),
                    });
                    slots.insert(scope.clone(), s.clone());
                    (s, true)
                }
            }
        };
        slot.touch();
        let mut rx = slot.render.subscribe();
        if new {
            let cache = self.clone();
            let slot = slot.clone();
            tokio::spawn(async move {
                loop {
                    let fresh = render().await;
                    if let Err(e) = &fresh {
                        tracing::warn!("fleet metrics not rendered: {e}");
                    }
                    // A failed refresh keeps serving the last good render
                    // (its age is exported); only a first failure is told.
                    slot.render.send_modify(|r| {
                        if fresh.is_ok() || !matches!(r, Some(Ok(_))) {
                            *r = Some(fresh);
                        }
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(cache.refresh) => {}
                        _ = crate::stopping(&mut stop) => break,
                    }
                    if cache.forget_if_idle(&scope, &slot, Instant::now()) {
                        break;
                    }
                }
            });
        }
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the metrics renderer stopped".to_string())?;
        match r.as_ref() {
            Some(r) => r.clone(),
            None => Err("no render".to_string()),
        }
    }

    /// Drops `slot` if nobody scraped it for [`IDLE`]; true if dropped.
    fn forget_if_idle(&self, scope: &Option<String>, slot: &Arc<Slot>, now: Instant) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.idle(now) {
            return false;
        }
        if slots.get(scope).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(scope);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        // A single-member reader: the spliced stream must be one member.
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_cached_render_and_a_fresh_part_make_one_gzip_member() {
        let mut text = Vec::new();
        for i in 0..20_000 {
            text.extend_from_slice(
                format!("outpost_device_up{{workspace=\"w\",device=\"d{i}\"}} 1\n").as_bytes(),
            );
        }
        let r = Rendered::new(text.clone()).unwrap();
        for fresh in [&b""[..], b"outpost_connected_devices 3\n"] {
            let gz = r.gzip_with(fresh).unwrap();
            let mut want = text.clone();
            want.extend_from_slice(fresh);
            assert_eq!(gunzip(&gz), want);
            assert!(gz.len() * 5 < want.len(), "compressed: {}", gz.len());
        }
        // Empty cached part too.
        let empty = Rendered::new(Vec::new()).unwrap();
        assert_eq!(gunzip(&empty.gzip_with(b"x 1\n").unwrap()), b"x 1\n");
        assert_eq!(gunzip(&empty.gzip_with(b"").unwrap()), b"");
    }

    #[test]
    fn incompressible_data_round_trips() {
        // Random bytes: the deflate output outgrows its first buffer.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let r = Rendered::new(data[..150_000].to_vec()).unwrap();
        assert_eq!(gunzip(&r.gzip_with(&data[150_000..]).unwrap()), data);
    }

    fn counting_render(
        n: Arc<AtomicUsize>,
    ) -> impl Fn() -> std::future::Ready<Render> + Send + Sync + 'static {
        move || {
            let i = n.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(Arc::new(
                Rendered::new(format!("render {i}\n").into_bytes()).unwrap(),
            )))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scrapes_are_served_from_memory_and_refreshed_in_the_background() {
        let cache = Arc::new(FleetCache::new(Duration::from_secs(10)));
        let (_stop_tx, stop) = watch::channel(false);
        let renders = Arc::new(AtomicUsize::new(0));
        let get = |scope: Option<&'static str>| {
            let cache = cache.clone();
            let stop = stop.clone();
            let renders = renders.clone();
            async move {
                let r = cache
                    .get(scope.map(String::from), counting_render(renders), stop)
                    .await
                    .unwrap();
                String::from_utf8(r.text.clone()).unwrap()
            }
        };
        assert_eq!(get(None).await, "render 0\n");
        // Within the refresh interval: the same render, no new one.
        for _ in 0..5 {
            assert_eq!(get(None).await, "render 0\n");
        }
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        // Another scope renders on its own.
        assert_eq!(get(Some("w")).await, "render 1\n");
        assert_eq!(cache.scopes(), 2);
        // After the interval the background task has rendered again.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let seen = get(None).await;
        assert!(seen == "render 2\n" || seen == "render 3\n", "{seen}");
        // A scope nobody scrapes is dropped after IDLE (the other one is
        // still scraped below).
        for _ in 0..(IDLE.as_secs() / 10 + 2) {
            tokio::time::sleep(Duration::from_secs(10)).await;
            get(None).await;
        }
        assert_eq!(cache.scopes(), 1, "the idle scope is forgotten");
    }

    #[tokio::test]
    async fn zero_refresh_renders_every_scrape() {
        let cache = Arc::new(FleetCache::new(Duration::ZERO));
        let (_stop_tx, stop) = watch::channel(false);
        let renders = Arc::new(AtomicUsize::new(0));
        for i in 0..3 {
            let r = cache
                .get(None, counting_render(renders.clone()), stop.clone())
                .await
                .unwrap();
            assert_eq!(r.text, format!("render {i}\n").into_bytes());
        }
        assert_eq!(cache.scopes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_last_good_render() {
        let cache = Arc::new(FleetCache::new(Duration::from_secs(10)));
        let (_stop_tx, stop) = watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let render = {
            let calls = calls.clone();
            move || {
                let i = calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(if i == 0 {
                    Ok(Arc::new(Rendered::new(b"good\n".to_vec()).unwrap()))
                } else {
                    Err("database is down".to_string())
                })
            }
        };
        let first = cache.get(None, render.clone(), stop.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(calls.load(Ordering::SeqCst) >= 2, "refreshed (and failed)");
        let later = cache.get(None, render, stop.clone()).await.unwrap();
        assert_eq!(later.text, b"good\n");
        assert_eq!(later.built_at, first.built_at);
    }
}
