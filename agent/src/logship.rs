//! The logs pipeline: sources ([`crate::logsrc`]) run as tasks and send
//! lines to the daemon's loop, which rate-limits them per source, spools
//! them (with where each source stands) and ships them like telemetry.
//!
//! Exactly once across crashes: a spooled line carries its source's
//! position after it. `logs/positions.json` (made durable after each append)
//! records every source's position and the last seq it covers; at start the
//! positions of lines spooled after that seq win, so a crash between the
//! append and the positions file neither repeats nor skips a line.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use outpost_proto::v1::LogRecord;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::logsrc::{FileFollower, JournalReader, LogLine, Position};

/// How often followed files are polled.
const FILE_POLL: Duration = Duration::from_millis(250);
/// Lines read per file poll at most.
const FILE_BATCH: usize = 1000;

/// A line as spooled: the wire record plus where its source stands.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpooledLine {
    #[prost(message, optional, tag = "1")]
    pub record: Option<LogRecord>,
    #[prost(string, tag = "2")]
    pub source: String,
    /// JSON of the source's [`Position`] after this line.
    #[prost(string, tag = "3")]
    pub position: String,
}

/// A line and the source it came from.
#[derive(Debug)]
pub struct SourcedLine {
    pub source: String,
    pub line: LogLine,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PositionsFile {
    /// The positions include every line spooled up to this seq.
    upto_seq: u64,
    positions: BTreeMap<String, Position>,
    /// Lines dropped by the rate limit, a running total.
    #[serde(default)]
    rate_limited: u64,
}

pub fn file_source(path: &Path) -> String {
    format!("file:{}", path.display())
}

pub fn journal_source(unit: &str) -> String {
    format!("journal:{unit}")
}

/// The running sources and what the daemon knows about them.
pub struct LogSources {
    rx: mpsc::Receiver<SourcedLine>,
    tasks: Vec<JoinHandle<()>>,
    path: PathBuf,
    state: PositionsFile,
    limiters: BTreeMap<String, DefaultDirectRateLimiter>,
    quota: Quota,
}

impl Drop for LogSources {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogShipError {
    #[error("log positions {path}: {message}")]
    Positions { path: PathBuf, message: String },
}

impl LogSources {
    /// Loads positions (`spooled_after` are the spooled lines after the
    /// positions file's seq, as (seq, payload)) and starts one task per source.
    pub fn start(
        dir: &Path,
        files: &[PathBuf],
        units: &[String],
        journalctl: PathBuf,
        rate_per_sec: u32,
        spooled_after: impl FnOnce(u64) -> Vec<(u64, Vec<u8>)>,
    ) -> Result<Self, LogShipError> {
        let path = dir.join("positions.json");
        let mut state: PositionsFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| LogShipError::Positions {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(_) => PositionsFile::default(),
        };
        for (seq, payload) in spooled_after(state.upto_seq) {
            let Ok(l) = <SpooledLine as prost::Message>::decode(payload.as_slice()) else {
                continue;
            };
            if let Ok(p) = serde_json::from_str(&l.position) {
                state.positions.insert(l.source, p);
            }
            state.upto_seq = state.upto_seq.max(seq);
        }
        let (tx, rx) = mpsc::channel(4096);
        let mut tasks = Vec::new();
        for f in files {
            let resume = state.positions.get(&file_source(f)).cloned();
            tasks.push(tokio::spawn(follow_file(f.clone(), resume, tx.clone())));
        }
        for u in units {
            let resume = state.positions.get(&journal_source(u)).cloned();
            tasks.push(tokio::spawn(follow_journal(
                journalctl.clone(),
                u.clone(),
                resume,
                tx.clone(),
            )));
        }
        let rate = NonZeroU32::new(rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
        Ok(Self {
            rx,
            tasks,
            path,
            state,
            limiters: BTreeMap::new(),
            quota: Quota::per_second(rate).allow_burst(burst),
        })
    }

    /// Whether any source is configured.
    pub fn any(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// Waits for lines (cancel-safe); pending forever when there are no sources.
    pub async fn recv(&mut self, buf: &mut Vec<SourcedLine>) -> usize {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        self.rx.recv_many(buf, 1024).await
    }

    pub fn rate_limited(&self) -> u64 {
        self.state.rate_limited
    }

    /// Turns received lines into spool payloads for seqs from `first_seq`,
    /// dropping (and counting) lines over their source's rate. Every line,
    /// kept or not, advances its source's position.
    pub fn encode(&mut self, lines: Vec<SourcedLine>, first_seq: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(lines.len());
        let mut seq = first_seq;
        for SourcedLine { source, line } in lines {
            let quota = self.quota;
            let limiter = self
                .limiters
                .entry(source.clone())
                .or_insert_with(|| RateLimiter::direct(quota));
            let position = serde_json::to_string(&line.position).unwrap_or_default();
            self.state.positions.insert(source.clone(), line.position);
            if limiter.check().is_err() {
                self.state.rate_limited += 1;
                continue;
            }
            let record = LogRecord {
                seq,
                timestamp_unix_ms: line.timestamp_ms,
                service: line.service,
                severity: line.severity.to_string(),
                message: line.message,
            };
            out.push(prost::Message::encode_to_vec(&SpooledLine {
                record: Some(record),
                source,
                position,
            }));
            seq += 1;
        }
        out
    }

    /// Records that every line up to `upto_seq` is spooled (durably).
    pub fn save(&mut self, upto_seq: u64) -> Result<(), LogShipError> {
        self.state.upto_seq = self.state.upto_seq.max(upto_seq);
        let bytes = serde_json::to_vec(&self.state).map_err(|e| LogShipError::Positions {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        outpost_common::fs::write_atomic(&self.path, &bytes, 0o600).map_err(|e| {
            LogShipError::Positions {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })
    }
}

/// Decodes spooled payloads into wire records (skipping undecodable ones).
pub fn records(payloads: Vec<(u64, Vec<u8>)>) -> Vec<LogRecord> {
    payloads
        .into_iter()
        .filter_map(
            |(seq, p)| match <SpooledLine as prost::Message>::decode(p.as_slice()) {
                Ok(l) => l.record,
                Err(e) => {
                    tracing::warn!(seq, "undecodable spooled log line skipped: {e}");
                    None
                }
            },
        )
        .collect()
}

async fn follow_file(path: PathBuf, resume: Option<Position>, tx: mpsc::Sender<SourcedLine>) {
    let source = file_source(&path);
    let mut follower = Some(FileFollower::new(path.clone(), resume));
    let mut tick = tokio::time::interval(FILE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let Some(mut f) = follower.take() else { return };
        let Ok((f, res)) = tokio::task::spawn_blocking(move || {
            let r = f.poll(FILE_BATCH);
            (f, r)
        })
        .await
        else {
            return; // the runtime is shutting down
        };
        follower = Some(f);
        match res {
            Ok(lines) => {
                warned = false;
                let full = lines.len() >= FILE_BATCH;
                for line in lines {
                    let sourced = SourcedLine {
                        source: source.clone(),
                        line,
                    };
                    if tx.send(sourced).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue; // more is waiting: read on without a pause
                }
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(path = %path.display(), "cannot read the log file: {e}");
            }
            Err(_) => {}
        }
        tick.tick().await;
    }
}

async fn follow_journal(
    journalctl: PathBuf,
    unit: String,
    mut resume: Option<Position>,
    tx: mpsc::Sender<SourcedLine>,
) {
    let source = journal_source(&unit);
    let mut delay = Duration::from_secs(1);
    let mut quick_failures = 0;
    loop {
        let mut got_any = false;
        let mut spawned = false;
        match JournalReader::spawn(&journalctl, &unit, resume.clone()) {
            Ok(mut reader) => {
                spawned = true;
                while let Some(item) = reader.next().await {
                    match item {
                        Ok(line) => {
                            got_any = true;
                            resume = Some(line.position.clone());
                            let sourced = SourcedLine {
                                source: source.clone(),
                                line,
                            };
                            if tx.send(sourced).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%unit, "journal read failed: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%unit, journalctl = %journalctl.display(), "cannot run journalctl: {e}")
            }
        }
        if got_any {
            delay = Duration::from_secs(1);
            quick_failures = 0;
        } else if spawned {
            quick_failures += 1;
            // A cursor the journal no longer has makes journalctl exit at
            // once with nothing: after a few such runs, start from the end
            // instead (a failure to start journalctl does not count).
            if quick_failures >= 3 && resume.is_some() {
                tracing::warn!(%unit, "the saved journal cursor is not accepted; continuing from the end of the journal");
                resume = None;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}
