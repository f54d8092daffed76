//! The on-disk spool: a bounded, append-only queue of records for one stream
//! (telemetry or logs), kept until the control plane acknowledges them.
//!
//! Layout under its directory:
//! - `<first-seq, 20 digits>.seg`: segments, appended to, never rewritten
//!   except to cut out corrupt bytes. A record is
//!   `magic u32 | seq u64 | len u32 | crc32(header) u32 | payload | crc32(payload) u32`
//!   (little endian), so a flipped byte anywhere is detected and the scan
//!   can find the next good record.
//! - `ledger.json`: `released` (every seq up to it was acknowledged or
//!   dropped: not needed any more), and the `dropped` / `corrupt` counters.
//!
//! Invariants (checked by the property test below):
//! - seqs are assigned here, strictly increasing, never reused for a record
//!   that was ever readable;
//! - a record leaves only when released (acked), or when the bound is hit
//!   (oldest segment first; counted in `dropped`), or when its bytes are
//!   corrupt (counted in `corrupt`);
//! - after a crash at any point the spool reopens with every record that an
//!   `append` returned for (under [`Fsync::Always`]) and not released.
//!
//! A corrupt record is one whose bytes fail their checksums while a good
//! record follows it; unreadable bytes at the very end of the newest segment
//! are a torn write (an append the crash interrupted, which never returned)
//! and are cut without counting.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const MAGIC: u32 = 0x4f50_5331; // "OPS1"
const HEADER: usize = 20;
const TRAILER: usize = 4;
/// Largest payload accepted (the wire's message limit).
pub const MAX_RECORD: usize = outpost_proto::MAX_MESSAGE_BYTES;

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every append call: a power cut loses nothing `append` returned for.
    Always,
    /// At most this long after an append: a power cut loses up to this much.
    Interval(Duration),
    /// Left to the kernel (typically up to ~30 s of writeback).
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            other => humantime::parse_duration(other)
                .map(Fsync::Interval)
                .map_err(|_| {
                    format!("fsync must be always, never or a duration like 1s (got {other:?})")
                }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Bound on the bytes of all segments.
    pub max_bytes: u64,
    /// A new segment starts when the current one reaches this size.
    pub segment_bytes: u64,
    pub fsync: Fsync,
}

impl SpoolOptions {
    /// Segments of 1/16 of the bound (4 KiB to 1 MiB): dropping the oldest
    /// segment frees at most that share.
    pub fn bounded(max_bytes: u64, fsync: Fsync) -> Self {
        Self {
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(4096, 1 << 20),
            fsync,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool ledger {path} is unreadable: {message}")]
    Ledger { path: PathBuf, message: String },
    #[error("a record of {0} bytes is larger than the spool allows")]
    TooLarge(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Every seq up to this one is acknowledged or dropped.
    pub released: u64,
    /// Records dropped because the spool was full.
    pub dropped: u64,
    /// Records lost to corrupt bytes.
    pub corrupt: u64,
    /// The highest seq ever handed out for sending (made durable before it
    /// is): never reused, even if its record is later lost from disk.
    #[serde(default)]
    pub issued: u64,
    /// Seqs dropped for room while sent and not yet acknowledged: stored
    /// if an ack covers them, counted as dropped at the next connection if not.
    #[serde(default)]
    pub dropped_in_flight: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Segment {
    name_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Highest seq in it (0: none).
    last_seq: u64,
}

/// One good record found by a scan.
#[derive(Debug, Clone, Copy)]
struct Found {
    seq: u64,
    offset: usize,
    len: usize,
}

/// What a scan of one segment's bytes found.
#[derive(Debug, Default)]
struct Scan {
    records: Vec<Found>,
    /// Bad byte ranges followed by a good record in this segment.
    bad: Vec<(usize, usize)>,
    /// Bad bytes from here to the end of the segment.
    bad_tail: Option<usize>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A valid header at `pos`: (seq, payload length).
fn header_at(b: &[u8], pos: usize) -> Option<(u64, usize)> {
    if b.len() - pos < HEADER || u32_at(b, pos) != MAGIC {
        return None;
    }
    if crc32fast::hash(&b[pos..pos + 16]) != u32_at(b, pos + 16) {
        return None;
    }
    let len = u32_at(b, pos + 12) as usize;
    (len <= MAX_RECORD).then(|| (u64_at(b, pos + 4), len))
}

/// Records of a segment ascend by seq (appends only ever add the next
/// ones): a well-formed record whose seq does not ascend is bad bytes too,
/// or reads (which search by seq) would find the wrong record.
fn scan(b: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut pos = 0;
    while pos < b.len() {
        match header_at(b, pos) {
            Some((seq, len)) if pos + HEADER + len + TRAILER <= b.len() => {
                let payload = &b[pos + HEADER..pos + HEADER + len];
                let end = pos + HEADER + len + TRAILER;
                let ascends = out.records.last().is_none_or(|r| seq > r.seq);
                if ascends && crc32fast::hash(payload) == u32_at(b, pos + HEADER + len) {
                    out.records.push(Found {
                        seq,
                        offset: pos,
                        len,
                    });
                } else {
                    out.bad.push((pos, end));
                }
                pos = end;
            }
            // A header whose record runs past the end, or no header: look
            // for the next good header.
            _ => match (pos + 1..b.len()).find(|&q| header_at(b, q).is_some()) {
                Some(q) => {
                    out.bad.push((pos, q));
                    pos = q;
                }
                None => {
                    out.bad_tail = Some(pos);
                    break;
                }
            },
        }
    }
    // A "bad" range the next good record does not follow is really the tail.
    if let Some(&(start, end)) = out.bad.last()
        && end == b.len()
    {
        out.bad.pop();
        out.bad_tail = Some(start);
    }
    out
}

fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let hcrc = crc32fast::hash(&out[start..start + 16]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
}

/// Records read: (seq, payload), in seq order.
pub type Records = Vec<(u64, Vec<u8>)>;

fn record_size(payload: usize) -> u64 {
    (HEADER + payload + TRAILER) as u64
}

pub struct Spool {
    dir: PathBuf,
    opts: SpoolOptions,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    ledger: Ledger,
    next_seq: u64,
    total_bytes: u64,
    last_sync: Instant,
    unsynced: bool,
    /// The highest seq sent on the current connection (0: none).
    sent_upto: u64,
    /// The segment last read, cached for sequential reads.
    read_cache: Option<(u64, Vec<u8>, Scan)>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("ledger", &self.ledger)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`, repairing what a crash or bad
    /// bytes left. Seqs continue after everything seen and after `seq_floor - 1`.
    pub fn open(dir: &Path, opts: SpoolOptions, seq_floor: u64) -> Result<Self, SpoolError> {
        outpost_common::fs::create_private_dir(dir).map_err(io(dir))?;
        let ledger_path = dir.join("ledger.json");
        let ledger = match std::fs::read(&ledger_path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(l) => l,
                Err(e) => {
                    // A power cut can leave it torn: rebuild from the
                    // segments (acknowledged records may go again; the
                    // control plane ignores them) rather than never start.
                    let bad = ledger_path.with_extension("json.bad");
                    tracing::warn!(path = %ledger_path.display(), "unreadable spool ledger ({e}); rebuilt from the segments, the old one kept as {}", bad.display());
                    let _ = std::fs::rename(&ledger_path, &bad);
                    Ledger::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
            Err(e) => return Err(io(&ledger_path)(e)),
        };
        let mut names: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                names.push(n);
            } else if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        names.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            opts,
            segments: names
                .into_iter()
                .map(|n| Segment {
                    name_seq: n,
                    path: dir.join(format!("{n:020}.seg")),
                    bytes: 0,
                    last_seq: 0,
                })
                .collect(),
            writer: None,
            ledger,
            next_seq: 1,
            total_bytes: 0,
            last_sync: Instant::now(),
            unsynced: false,
            sent_upto: 0,
            read_cache: None,
        };
        spool.repair()?;
        spool.raise_next_seq(seq_floor);
        Ok(spool)
    }

    /// Scans every segment: counts and cuts out corrupt records, cuts a torn
    /// tail, deletes released segments, and recomputes sizes and `next_seq`.
    fn repair(&mut self) -> Result<(), SpoolError> {
        self.writer = None;
        self.read_cache = None;
        // One segment in memory at a time: keep only what each scan found.
        let mut scans = Vec::with_capacity(self.segments.len());
        for seg in &self.segments {
            let bytes = std::fs::read(&seg.path).map_err(io(&seg.path))?;
            let mut s = scan(&bytes);
            s.records.shrink_to_fit();
            scans.push((bytes.len(), s));
        }
        // Count lost records: for each bad range, the seqs strictly between
        // the good records around it (and above `released`).
        let mut prev = self.ledger.released;
        let mut pending_bad = false;
        let mut corrupt = 0u64;
        let last = scans.len().saturating_sub(1);
        for (i, (_, s)) in scans.iter().enumerate() {
            let mut events: Vec<(usize, Option<u64>)> = s
                .records
                .iter()
                .map(|r| (r.offset, Some(r.seq)))
                .chain(s.bad.iter().map(|&(start, _)| (start, None)))
                .collect();
            if i != last
                && let Some(t) = s.bad_tail
            {
                events.push((t, None));
            }
            events.sort_by_key(|e| e.0);
            for (_, e) in events {
                match e {
                    None => pending_bad = true,
                    Some(seq) => {
                        if pending_bad && seq > prev + 1 {
                            corrupt += seq - prev.max(self.ledger.released) - 1;
                        }
                        pending_bad = false;
                        prev = prev.max(seq);
                    }
                }
            }
        }
        if corrupt > 0 {
            tracing::warn!(
                dir = %self.dir.display(),
                records = corrupt,
                "corrupt records in the spool were skipped"
            );
            self.ledger.corrupt += corrupt;
            // Counted first: a crash before the rewrite counts them again
            // rather than losing them silently.
            self.save_ledger(true)?;
        }
        // Rewrite segments that hold bad bytes; cut a torn tail.
        let mut max_seq = self.ledger.released.max(self.ledger.issued);
        for (i, (len, s)) in scans.iter().enumerate() {
            let seg = &mut self.segments[i];
            let dirty = !s.bad.is_empty() || s.bad_tail.is_some();
            if dirty {
                let bytes = std::fs::read(&seg.path).map_err(io(&seg.path))?;
                let mut good = Vec::with_capacity(bytes.len());
                for r in &s.records {
                    good.extend_from_slice(&bytes[r.offset..r.offset + HEADER + r.len + TRAILER]);
                }
                if i == last && s.bad.is_empty() {
                    tracing::info!(path = %seg.path.display(), "cut a torn write at the end of the spool");
                }
                outpost_common::fs::write_atomic(&seg.path, &good, 0o600).map_err(io(&seg.path))?;
                seg.bytes = good.len() as u64;
            } else {
                seg.bytes = *len as u64;
            }
            seg.last_seq = s.records.last().map_or(0, |r| r.seq);
            max_seq = max_seq.max(seg.last_seq);
        }
        self.next_seq = self.next_seq.max(max_seq + 1);
        // Seqs below the oldest record kept were never written here (a raised
        // counter) or are already accounted for: none is pending.
        if let Some(first) = scans.iter().find_map(|(_, s)| s.records.first()) {
            self.ledger.released = self.ledger.released.max(first.seq - 1);
        } else {
            self.ledger.released = self.ledger.released.max(self.next_seq - 1);
        }
        // Segments wholly released (a crash came between the ledger and the
        // delete) or empty, except the newest, go.
        while self.segments.len() > 1
            && self
                .segments
                .front()
                .is_some_and(|s| s.last_seq <= self.ledger.released)
        {
            self.remove_oldest()?;
        }
        self.total_bytes = self.segments.iter().map(|s| s.bytes).sum();
        Ok(())
    }

    fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger.json")
    }

    fn save_ledger(&self, durable: bool) -> Result<(), SpoolError> {
        let path = self.ledger_path();
        let bytes = serde_json::to_vec(&self.ledger).map_err(|e| SpoolError::Ledger {
            path: path.clone(),
            message: e.to_string(),
        })?;
        outpost_common::fs::replace_file(&path, &bytes, 0o600, durable).map_err(io(&path))
    }

    fn remove_oldest(&mut self) -> Result<(), SpoolError> {
        if let Some(seg) = self.segments.pop_front() {
            if self.segments.is_empty() {
                self.writer = None;
            }
            if self
                .read_cache
                .as_ref()
                .is_some_and(|c| c.0 == seg.name_seq)
            {
                self.read_cache = None;
            }
            self.total_bytes = self.total_bytes.saturating_sub(seg.bytes);
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&seg.path)(e)),
            }
        }
        Ok(())
    }

    /// The seq the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Moves the counter past `seq - 1` (the control plane already holds
    /// seqs below it).
    pub fn raise_next_seq(&mut self, seq: u64) {
        if seq <= self.next_seq {
            return;
        }
        // Nothing pending: the skipped seqs are not pending either.
        if self.ledger.released + 1 >= self.next_seq {
            self.ledger.released = seq - 1;
        }
        self.next_seq = seq;
    }

    pub fn ledger(&self) -> Ledger {
        self.ledger
    }

    /// Records kept and not released.
    pub fn pending(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.ledger.released)
    }

    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends records (their seqs are `next_seq()`, `next_seq() + 1`, …:
    /// callers that embed the seq in the payload read it first). Makes room
    /// by dropping the oldest segments when the bound is hit.
    pub fn append<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<(), SpoolError> {
        // All or nothing: refuse before any seq is taken.
        if let Some(p) = payloads
            .iter()
            .map(AsRef::as_ref)
            .find(|p| p.len() > MAX_RECORD || record_size(p.len()) > self.opts.max_bytes)
        {
            return Err(SpoolError::TooLarge(p.len()));
        }
        let mut buf = Vec::new();
        for p in payloads {
            let p = p.as_ref();
            let size = record_size(p.len());
            if self.segments.is_empty() {
                self.roll()?;
            }
            let current = self.segments.back().map_or(0, |s| s.bytes) + buf.len() as u64;
            if current > 0 && current + size > self.opts.segment_bytes {
                self.write_out(&mut buf)?;
                self.roll()?;
            }
            while self.total_bytes + buf.len() as u64 + size > self.opts.max_bytes {
                self.write_out(&mut buf)?;
                if self.segments.len() <= 1 {
                    self.roll()?;
                }
                self.drop_oldest()?;
            }
            encode(self.next_seq, p, &mut buf);
            if let Some(seg) = self.segments.back_mut() {
                seg.last_seq = self.next_seq;
            }
            self.next_seq += 1;
        }
        self.write_out(&mut buf)?;
        self.sync_if_due(false)
    }

    /// Writes `buf` to the newest segment.
    fn write_out(&mut self, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.segments.is_empty() {
            self.roll()?;
        }
        let Some(seg) = self.segments.back_mut() else {
            return Ok(()); // roll() always leaves a segment
        };
        if self.writer.is_none() {
            self.writer = Some(
                OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io(&seg.path))?,
            );
        }
        if let Some(w) = self.writer.as_mut() {
            w.write_all(buf).map_err(io(&seg.path))?;
        }
        // The segment being read is usually the one appended to: extend
        // the cached copy with what was just written rather than read the
        // whole segment again on the next read (the bytes are the ones
        // encoded and written here; anything but whole good records, as a
        // test's torn write, drops the cache instead).
        if let Some((name, cached, found)) = self.read_cache.as_mut()
            && *name == seg.name_seq
        {
            let added = scan(buf);
            if cached.len() as u64 == seg.bytes && added.bad.is_empty() && added.bad_tail.is_none()
            {
                let base = cached.len();
                cached.extend_from_slice(buf);
                found
                    .records
                    .extend(added.records.into_iter().map(|r| Found {
                        offset: base + r.offset,
                        ..r
                    }));
            } else {
                self.read_cache = None;
            }
        }
        seg.bytes += buf.len() as u64;
        self.total_bytes += buf.len() as u64;
        self.unsynced = true;
        buf.clear();
        Ok(())
    }

    /// Starts a new segment named after the next seq.
    fn roll(&mut self) -> Result<(), SpoolError> {
        self.sync_if_due(true)?;
        let path = self.dir.join(format!("{:020}.seg", self.next_seq));
        // 0600 whatever the umask: segments hold the box's telemetry and logs.
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        if self.opts.fsync == Fsync::Always
            && let Ok(d) = File::open(&self.dir)
        {
            d.sync_all().map_err(io(&self.dir))?;
        }
        self.writer = Some(f);
        self.segments.push_back(Segment {
            name_seq: self.next_seq,
            path,
            bytes: 0,
            last_seq: 0,
        });
        Ok(())
    }

    /// Drops the oldest segment to make room, counting what was not yet
    /// released.
    fn drop_oldest(&mut self) -> Result<(), SpoolError> {
        let Some(seg) = self.segments.front() else {
            return Ok(());
        };
        let bytes = std::fs::read(&seg.path).map_err(io(&seg.path))?;
        let mut lost = 0;
        for r in scan(&bytes).records {
            if r.seq <= self.ledger.released {
                continue;
            }
            if r.seq <= self.sent_upto {
                // On the wire: its ack may still come (then it is stored).
                self.ledger.dropped_in_flight = Some(match self.ledger.dropped_in_flight {
                    Some((lo, hi)) => (lo.min(r.seq), hi.max(r.seq)),
                    None => (r.seq, r.seq),
                });
            } else {
                lost += 1;
            }
        }
        if lost > 0 {
            tracing::warn!(records = lost, dir = %self.dir.display(), "spool full: dropped the oldest records");
        }
        self.ledger.dropped += lost;
        self.ledger.released = self.ledger.released.max(seg.last_seq);
        self.save_ledger(true)?;
        self.remove_oldest()
    }

    /// Forces appended records to disk when the policy says so (or `force`
    /// and the policy is not `Never`).
    pub fn sync_if_due(&mut self, force: bool) -> Result<(), SpoolError> {
        if !self.unsynced {
            return Ok(());
        }
        let due = match self.opts.fsync {
            Fsync::Always => true,
            Fsync::Interval(d) => force || self.last_sync.elapsed() >= d,
            Fsync::Never => false,
        };
        if due && let Some(w) = &self.writer {
            // A failed sync is tried again an interval later (not at once:
            // the main loop wakes when the next one is due).
            self.last_sync = Instant::now();
            w.sync_data().map_err(io(&self.dir))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// When [`Spool::sync_if_due`] will next have something to do: appended
    /// records not yet forced to disk under an interval policy (under
    /// `always` an append syncs before it returns; under `never` nothing is due).
    pub fn sync_due(&self) -> Option<Instant> {
        match self.opts.fsync {
            // Without a writer there is nothing `sync_if_due` could sync.
            Fsync::Interval(d) if self.unsynced && self.writer.is_some() => {
                Some(self.last_sync + d)
            }
            _ => None,
        }
    }

    /// Everything up to `seq` is acknowledged. Segments wholly released go
    /// (the ledger is made durable first).
    pub fn release(&mut self, seq: u64) -> Result<(), SpoolError> {
        let seq = seq.min(self.next_seq - 1);
        // Dropped while in flight, and acknowledged after all: stored.
        if let Some((lo, hi)) = self.ledger.dropped_in_flight
            && seq >= lo
        {
            self.ledger.dropped_in_flight = (seq < hi).then_some((seq + 1, hi));
            if seq <= self.ledger.released {
                self.save_ledger(false)?;
            }
        }
        if seq <= self.ledger.released {
            return Ok(());
        }
        self.ledger.released = seq;
        let removable =
            self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last_seq <= seq);
        // A lost ledger update only makes acknowledged records go again
        // (the control plane ignores them), so routine updates skip fsync.
        self.save_ledger(removable)?;
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last_seq <= seq) {
            self.remove_oldest()?;
        }
        Ok(())
    }

    /// Records up to `seq` went out on the current connection.
    pub fn mark_sent(&mut self, seq: u64) {
        self.sent_upto = self.sent_upto.max(seq);
    }

    /// A new connection; the store holds everything up to `server_last`.
    /// What was dropped while in flight on an earlier connection and is not
    /// stored is lost now: counted.
    pub fn connected(&mut self, server_last: u64) -> Result<(), SpoolError> {
        self.sent_upto = 0;
        if let Some((lo, hi)) = self.ledger.dropped_in_flight.take() {
            let lost = hi.saturating_sub(lo.max(server_last + 1) - 1);
            if lost > 0 {
                tracing::warn!(records = lost, dir = %self.dir.display(), "records dropped while in flight were not stored");
            }
            self.ledger.dropped += lost;
            self.save_ledger(true)?;
        }
        Ok(())
    }

    /// Up to `max` records with seqs above `after`, oldest first, at most
    /// `max_bytes` of payload (at least one record).
    pub fn read_after(
        &mut self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Records, SpoolError> {
        let out = match self.read_after_once(after, max, max_bytes)? {
            Some(out) => out,
            // Bytes went bad since the spool was opened: it was repaired
            // (counting what is lost); one more try.
            None => self
                .read_after_once(after, max, max_bytes)?
                .ok_or_else(|| SpoolError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other("segments keep failing their checksums"),
                })?,
        };
        if let Some(&(last, _)) = out.last()
            && last > self.ledger.issued
        {
            self.ledger.issued = last;
            self.save_ledger(true)?;
        }
        Ok(out)
    }

    /// `None`: corruption was found and repaired; read again.
    fn read_after_once(
        &mut self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Option<Records>, SpoolError> {
        let after = after.max(self.ledger.released);
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut size = 0;
        let mut i = self
            .segments
            .iter()
            .position(|s| s.last_seq > after)
            .unwrap_or(self.segments.len());
        while i < self.segments.len() && out.len() < max {
            let name = self.segments[i].name_seq;
            if self.read_cache.as_ref().is_none_or(|c| c.0 != name) {
                let path = &self.segments[i].path;
                let mut bytes = Vec::with_capacity(self.segments[i].bytes as usize);
                File::open(path)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .map_err(io(path))?;
                let s = scan(&bytes);
                if !s.bad.is_empty() || s.bad_tail.is_some() {
                    self.repair()?;
                    return Ok(None);
                }
                self.read_cache = Some((name, bytes, s));
            }
            if let Some((_, bytes, s)) = &self.read_cache {
                let start = s.records.partition_point(|r| r.seq <= after);
                for r in &s.records[start..] {
                    if out.len() >= max || (!out.is_empty() && size + r.len > max_bytes) {
                        return Ok(Some(out));
                    }
                    size += r.len;
                    let p = r.offset + HEADER;
                    out.push((r.seq, bytes[p..p + r.len].to_vec()));
                }
            }
            i += 1;
        }
        Ok(Some(out))
    }

    /// Flushes appended records and the ledger (clean stop).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if self.opts.fsync != Fsync::Never && self.unsynced {
            if let Some(w) = &self.writer {
                w.sync_data().map_err(io(&self.dir))?;
            }
            self.unsynced = false;
        }
        self.save_ledger(true)
    }

    /// Test hook: writes only the first `keep` bytes of a record, as a
    /// crash in the middle of an append would.
    #[cfg(test)]
    fn append_torn(&mut self, payload: &[u8], keep: usize) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        encode(self.next_seq, payload, &mut buf);
        buf.truncate(keep);
        self.write_out(&mut buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts(max: u64, seg: u64) -> SpoolOptions {
        SpoolOptions {
            max_bytes: max,
            segment_bytes: seg,
            fsync: Fsync::Always,
        }
    }

    fn payload(seq: u64, len: usize) -> Vec<u8> {
        let mut p = seq.to_le_bytes().to_vec();
        p.resize(len.max(8), (seq % 251) as u8);
        p
    }

    fn all(s: &mut Spool) -> Vec<(u64, Vec<u8>)> {
        s.read_after(0, usize::MAX, usize::MAX).unwrap()
    }

    #[test]
    fn spool_appends_reads_releases_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts(1 << 20, 256), 1).unwrap();
        for i in 1..=20 {
            assert_eq!(s.next_seq(), i);
            s.append(&[payload(i, 30)]).unwrap();
        }
        assert!(s.segments.len() > 3, "rolled: {}", s.segments.len());
        assert_eq!(s.read_after(0, 5, usize::MAX).unwrap().len(), 5);
        let r = s.read_after(7, 3, usize::MAX).unwrap();
        assert_eq!(r.iter().map(|r| r.0).collect::<Vec<_>>(), vec![8, 9, 10]);
        assert_eq!(r[0].1, payload(8, 30));
        s.release(12).unwrap();
        assert_eq!(s.pending(), 8);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        drop(s);
        let mut s = Spool::open(dir.path(), opts(1 << 20, 256), 1).unwrap();
        let seqs: Vec<u64> = all(&mut s).iter().map(|r| r.0).collect();
        assert_eq!(seqs, (13..=20).collect::<Vec<_>>());
        assert_eq!(s.next_seq(), 21);
        assert!(std::fs::read_dir(dir.path()).unwrap().count() <= files);
    }

    #[test]
    fn spool_when_full_drops_the_oldest_and_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts(2048, 512), 1).unwrap();
        for i in 1..=100 {
            s.append(&[payload(i, 40)]).unwrap();
            assert!(s.bytes() <= 2048);
        }
        let kept: Vec<u64> = all(&mut s).iter().map(|r| r.0).collect();
        let dropped = s.ledger().dropped;
        assert_eq!(kept.len() as u64 + dropped, 100);
        assert_eq!(kept, ((dropped + 1)..=100).collect::<Vec<_>>(), "oldest go");
        // Released records are not counted as dropped.
        s.release(95).unwrap();
        for i in 101..=140 {
            s.append(&[payload(i, 40)]).unwrap();
        }
        let kept: Vec<u64> = all(&mut s).iter().map(|r| r.0).collect();
        assert_eq!(
            kept.len() as u64 + s.ledger().dropped,
            100 + 40 - 95 + dropped
        );
    }

    #[test]
    fn spool_skips_and_counts_flipped_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        for i in 1..=50 {
            s.append(&[payload(i, 20)]).unwrap();
        }
        drop(s);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let rec = record_size(20) as usize;
        bytes[10 * rec + HEADER + 3] ^= 0x40; // payload of seq 11
        bytes[30 * rec + 13] ^= 0x01; // length field of seq 31
        bytes[31 * rec] ^= 0xff; // magic of seq 32
        std::fs::write(&seg, &bytes).unwrap();
        let mut s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        let seqs: Vec<u64> = all(&mut s).iter().map(|r| r.0).collect();
        assert_eq!(s.ledger().corrupt, 3);
        let want: Vec<u64> = (1..=50).filter(|i| ![11, 31, 32].contains(i)).collect();
        assert_eq!(seqs, want);
        drop(s);
        // Counted once: the bad bytes were cut out.
        let s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        assert_eq!(s.ledger().corrupt, 3);
        assert_eq!(s.next_seq(), 51);
    }

    /// Found by the `spool` fuzz target: well-formed records out of order
    /// (here 1, 2, 2, 1) made reads return an old record for a new seq.
    #[test]
    fn spool_cuts_records_whose_seqs_do_not_ascend() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for (seq, p) in [
            (1, "one"),
            (2, "two"),
            (2, "again"),
            (1, "back"),
            (3, "three"),
        ] {
            encode(seq, p.as_bytes(), &mut bytes);
        }
        std::fs::write(dir.path().join(format!("{:020}.seg", 1)), &bytes).unwrap();
        let mut s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        let three = vec![
            (1, b"one".to_vec()),
            (2, b"two".to_vec()),
            (3, b"three".to_vec()),
        ];
        assert_eq!(all(&mut s), three);
        assert_eq!(
            s.ledger().corrupt,
            0,
            "no seq is missing: the repeats lost nothing"
        );
        assert_eq!(s.next_seq(), 4);
        s.append(&[b"four".as_slice()]).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        assert_eq!(
            s.read_after(3, 8, usize::MAX).unwrap(),
            vec![(4, b"four".to_vec())]
        );
    }

    #[test]
    fn spool_refuses_an_oversized_record_without_taking_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts(4096, 1024), 1).unwrap();
        let err = s.append(&[payload(1, 10), vec![0u8; 5000]]).unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge(5000)), "{err}");
        assert_eq!(s.next_seq(), 1);
        s.append(&[payload(1, 10)]).unwrap();
        assert_eq!(all(&mut s).iter().map(|r| r.0).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn spool_never_reuses_a_seq_that_was_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        for i in 1..=5 {
            s.append(&[payload(i, 20)]).unwrap();
        }
        assert_eq!(s.read_after(0, 10, usize::MAX).unwrap().len(), 5);
        drop(s);
        // The newest record's bytes are lost after it was sent.
        let seg = dir.path().join(format!("{:020}.seg", 1));
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        let s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        assert_eq!(s.next_seq(), 6, "seq 5 went out once: never again");
    }

    #[test]
    fn spool_opens_with_a_torn_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        for i in 1..=4 {
            s.append(&[payload(i, 20)]).unwrap();
        }
        s.release(2).unwrap();
        drop(s);
        std::fs::write(dir.path().join("ledger.json"), b"{\"relea").unwrap();
        let mut s = Spool::open(dir.path(), opts(1 << 20, 1 << 20), 1).unwrap();
        // Acknowledged records may go again (the store ignores them); none is lost.
        let seqs: Vec<u64> = all(&mut s).iter().map(|r| r.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(s.next_seq(), 5);
        assert!(dir.path().join("ledger.json.bad").exists());
    }

    #[test]
    fn spool_fsync_policy_parses() {
        assert_eq!("always".parse::<Fsync>(), Ok(Fsync::Always));
        assert_eq!("never".parse::<Fsync>(), Ok(Fsync::Never));
        assert_eq!(
            "250ms".parse::<Fsync>(),
            Ok(Fsync::Interval(Duration::from_millis(250)))
        );
        assert!("sometimes".parse::<Fsync>().is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<usize>),
        Release(u64),
        /// Crash (drop without close) in the middle of an append that wrote
        /// only this many bytes.
        CrashTorn(usize, usize),
        /// Crash after a clean append.
        Crash,
        /// Crash after the ledger was saved but before segments were deleted.
        CrashAfterLedger(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(1usize..120, 1..6).prop_map(Op::Append),
            2 => (0u64..8).prop_map(Op::Release),
            1 => (1usize..120, 0usize..150).prop_map(|(l, k)| Op::CrashTorn(l, k)),
            1 => Just(Op::Crash),
            1 => (0u64..8).prop_map(Op::CrashAfterLedger),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        /// Against a model: what is kept is exactly what was appended and
        /// neither released nor dropped (dropped = oldest, counted), across
        /// crashes at every kind of write.
        #[test]
        fn spool_keeps_its_invariants_across_crashes(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let o = opts(1500, 400);
            let mut s = Spool::open(dir.path(), o.clone(), 1).unwrap();
            // The model: unreleased records, and the highest seq ever issued.
            let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut released = 0u64;
            for op in ops {
                match op {
                    Op::Append(lens) => {
                        let start = s.next_seq();
                        let ps: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| payload(start + i as u64, l)).collect();
                        s.append(&ps).unwrap();
                        for (i, p) in ps.into_iter().enumerate() {
                            model.push_back((start + i as u64, p));
                        }
                    }
                    Op::Release(k) => {
                        let upto = released + k;
                        s.release(upto).unwrap();
                        released = released.max(upto.min(s.next_seq() - 1));
                    }
                    Op::CrashTorn(len, keep) => {
                        let p = payload(s.next_seq(), len);
                        let keep = keep.min(record_size(p.len()) as usize - 1);
                        s.append_torn(&p, keep).unwrap();
                        drop(s);
                        s = Spool::open(dir.path(), o.clone(), 1).unwrap();
                    }
                    Op::Crash => {
                        drop(s);
                        s = Spool::open(dir.path(), o.clone(), 1).unwrap();
                    }
                    Op::CrashAfterLedger(k) => {
                        let upto = (released + k).min(s.next_seq() - 1);
                        s.ledger.released = s.ledger.released.max(upto);
                        s.save_ledger(true).unwrap();
                        released = released.max(upto);
                        drop(s);
                        s = Spool::open(dir.path(), o.clone(), 1).unwrap();
                    }
                }
                while model.front().is_some_and(|r| r.0 <= released.max(s.ledger().released)) {
                    model.pop_front();
                }
                released = released.max(s.ledger().released);
                let got = all(&mut s);
                prop_assert_eq!(s.ledger().corrupt, 0);
                prop_assert!(s.bytes() <= o.max_bytes);
                prop_assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
                prop_assert_eq!(&got, &model.iter().cloned().collect::<Vec<_>>());
                prop_assert!(s.next_seq() > got.last().map_or(0, |r| r.0));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        /// One flipped byte anywhere but the newest record costs exactly that
        /// record, counted; never a panic.
        #[test]
        fn spool_one_flipped_byte_costs_one_counted_record(n in 3u64..40, at in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let dir = tempfile::tempdir().unwrap();
            let o = opts(1 << 20, 1 << 20);
            let mut s = Spool::open(dir.path(), o.clone(), 1).unwrap();
            for i in 1..=n {
                s.append(&[payload(i, 10 + (i as usize * 7) % 50)]).unwrap();
            }
            drop(s);
            let seg = dir.path().join(format!("{:020}.seg", 1));
            let mut bytes = std::fs::read(&seg).unwrap();
            let last_start = bytes.len() - record_size(10 + (n as usize * 7) % 50) as usize;
            let pos = at.index(last_start);
            bytes[pos] ^= 1 << bit;
            std::fs::write(&seg, &bytes).unwrap();
            let mut s = Spool::open(dir.path(), o, 1).unwrap();
            let got = all(&mut s);
            prop_assert_eq!(got.len() as u64, n - 1);
            prop_assert_eq!(s.ledger().corrupt, 1);
            for (seq, p) in got {
                prop_assert_eq!(p, payload(seq, 10 + (seq as usize * 7) % 50));
            }
        }
    }
}
