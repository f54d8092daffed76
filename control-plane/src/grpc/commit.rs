//! Group commit: every caller hands its write to one writer task, which
//! stores everything that arrived while the previous write was in flight in
//! a single transaction (one fsync on SQLite), then answers each caller.
//! Under load, writes from many devices share one durable commit; alone, a
//! write is committed at once. Callers are answered after the commit.
//!
//! Four writers use it: telemetry batches ([`TelemetryWriter`]; acks
//! follow the commit), enrollments ([`EnrollmentWriter`]; the certificate is
//! returned after the commit), session starts ([`SessionOpenWriter`]) and
//! ends ([`SessionCloseWriter`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::live::LiveDevices;
use crate::metrics::Metrics;
use crate::store::{
    DeviceSamples, EnrollmentCommit, SessionEnd, SessionOpen, Store, StoreError, StoreResult,
    TelemetrySample, UnixMillis, now_ms,
};

/// Writes in one transaction at most.
const MAX_GROUP: usize = 512;
/// Writes waiting for the writer before callers wait to hand theirs over.
const QUEUE: usize = 4096;

const STOPPED: &str = "the store writer has stopped";

/// One writer task; `commit` gets every queued input (at most `MAX_GROUP`)
/// and returns one output per input, in order.
struct Group<I, O> {
    tx: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for Group<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Group<I, O> {
    fn start<F, Fut>(mut commit: F) -> Self
    where
        F: FnMut(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(I, oneshot::Sender<O>)>(QUEUE);
        tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(MAX_GROUP);
            while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
                let (inputs, dones): (Vec<I>, Vec<_>) = jobs.drain(..).unzip();
                let outputs = commit(inputs).await;
                // A caller that went away (its stream closed) has nothing to
                // answer; the write itself stands.
                for (done, out) in dones.into_iter().zip(outputs) {
                    let _ = done.send(out);
                }
            }
        });
        Self { tx }
    }

    /// `None`: the writer task has stopped (the server is shutting down).
    async fn submit(&self, input: I) -> Option<O> {
        let (done, answer) = oneshot::channel();
        self.tx.send((input, done)).await.ok()?;
        answer.await.ok()
    }
}

#[derive(Clone)]
pub struct TelemetryWriter {
    group: Group<DeviceSamples, Result<u64, String>>,
}

impl TelemetryWriter {
    /// Starts the writer task on `store`; after each commit it wakes the
    /// operators watching those devices (`live.committed`).
    pub fn start(store: Arc<dyn Store>, live: Arc<LiveDevices>, metrics: Metrics) -> Self {
        let group = Group::start(move |batches: Vec<DeviceSamples>| {
            let (store, live, metrics) = (store.clone(), live.clone(), metrics.clone());
            async move {
                let n = batches.len();
                let result = commit_telemetry(&*store, &live, &metrics, &batches).await;
                vec![result; n]
            }
        });
        Self { group }
    }

    /// Stores a device's samples durably; resolves after the commit.
    pub async fn write(
        &self,
        device_id: String,
        samples: Vec<TelemetrySample>,
    ) -> Result<u64, String> {
        self.group
            .submit(DeviceSamples { device_id, samples })
            .await
            .unwrap_or_else(|| Err(STOPPED.to_string()))
    }
}

async fn commit_telemetry(
    store: &dyn Store,
    live: &LiveDevices,
    metrics: &Metrics,
    batches: &[DeviceSamples],
) -> Result<u64, String> {
    let now: UnixMillis = now_ms();
    let started = Instant::now();
    let result = store
        .insert_telemetry_many(batches, now)
        .await
        .map_err(|e| e.to_string());
    metrics.observe_store("telemetry_commit", started.elapsed());
    match &result {
        Err(e) => tracing::error!(batches = batches.len(), "telemetry not stored: {e}"),
        Ok(stored) => {
            tracing::trace!(batches = batches.len(), "telemetry group committed");
            metrics.samples_ingested.inc_by(*stored);
            metrics.commit_group_batches.observe(batches.len() as f64);
            live.committed(highest_seqs(batches));
        }
    }
    result
}

/// How one enrollment in a group ended.
#[derive(Debug)]
pub enum EnrollOutcome {
    Stored,
    /// The install ID was spent or bound to another key meanwhile.
    Conflict,
    /// The group's transaction failed (already logged).
    StoreFailed,
}

/// Group commit for enrollments: a burst of boxes enrolling at once (a fleet
/// rollout, a re-imaged site) shares one transaction per group instead of
/// one fsync per box.
#[derive(Clone)]
pub struct EnrollmentWriter {
    group: Group<EnrollmentCommit, EnrollOutcome>,
}

impl EnrollmentWriter {
    pub fn start(store: Arc<dyn Store>, metrics: Metrics) -> Self {
        let group = Group::start(move |commits: Vec<EnrollmentCommit>| {
            let (store, metrics) = (store.clone(), metrics.clone());
            async move {
                let started = Instant::now();
                let result = store.complete_enrollments(&commits).await;
                metrics.observe_store("enrollment_commit", started.elapsed());
                match result {
                    Ok(each) => each
                        .into_iter()
                        .map(|r| match r {
                            Ok(()) => EnrollOutcome::Stored,
                            Err(StoreError::Conflict(_)) => EnrollOutcome::Conflict,
                            Err(e) => {
                                tracing::error!("enrollment not stored: {e}");
                                EnrollOutcome::StoreFailed
                            }
                        })
                        .collect(),
                    Err(e) => {
                        tracing::error!(enrollments = commits.len(), "enrollments not stored: {e}");
                        commits.iter().map(|_| EnrollOutcome::StoreFailed).collect()
                    }
                }
            }
        });
        Self { group }
    }

    /// Stores the enrollment durably; resolves after the commit.
    pub async fn write(&self, commit: EnrollmentCommit) -> EnrollOutcome {
        self.group
            .submit(commit)
            .await
            .unwrap_or(EnrollOutcome::StoreFailed)
    }
}

/// Group commit for session starts: after a restart, thousands of agents
/// open their sessions within seconds, and each start is a write.
#[derive(Clone)]
pub struct SessionOpenWriter {
    group: Group<SessionOpen, StoreResult<()>>,
}

impl SessionOpenWriter {
    pub fn start(store: Arc<dyn Store>, metrics: Metrics) -> Self {
        let group = Group::start(move |opens: Vec<SessionOpen>| {
            let (store, metrics) = (store.clone(), metrics.clone());
            async move {
                let started = Instant::now();
                let each = store.sessions_opened(&opens).await;
                metrics.observe_store("session_open_commit", started.elapsed());
                each
            }
        });
        Self { group }
    }

    /// Opens the session durably; resolves after the commit.
    pub async fn write(&self, open: SessionOpen) -> StoreResult<()> {
        self.group
            .submit(open)
            .await
            // The writer stopped: the server is shutting down.
            .unwrap_or(Err(StoreError::Backend(sqlx::Error::PoolClosed)))
    }
}

/// Group commit for session ends: when a replica stops (or a site's link
/// drops), thousands of sessions end at once, and each end is a write.
#[derive(Clone)]
pub struct SessionCloseWriter {
    group: Group<SessionEnd, bool>,
}

impl SessionCloseWriter {
    pub fn start(store: Arc<dyn Store>, metrics: Metrics) -> Self {
        let group = Group::start(move |ends: Vec<SessionEnd>| {
            let (store, metrics) = (store.clone(), metrics.clone());
            async move {
                let started = Instant::now();
                let each = store.sessions_closed(&ends, now_ms()).await;
                metrics.observe_store("session_close_commit", started.elapsed());
                each.into_iter()
                    .zip(&ends)
                    .map(|(r, end)| match r {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(device = %end.device_id, "session end not recorded: {e}");
                            false
                        }
                    })
                    .collect()
            }
        });
        Self { group }
    }

    /// Records the end durably; whether it was stored.
    pub async fn write(&self, end: SessionEnd) -> bool {
        self.group.submit(end).await.unwrap_or(false)
    }
}

/// Each device's highest seq in a committed group.
fn highest_seqs(batches: &[DeviceSamples]) -> Vec<(String, u64)> {
    let mut top: HashMap<&str, u64> = HashMap::new();
    for b in batches {
        if let Some(last) = b.samples.iter().map(|s| s.seq).max() {
            let e = top.entry(b.device_id.as_str()).or_default();
            *e = (*e).max(last);
        }
    }
    top.into_iter().map(|(d, s)| (d.to_string(), s)).collect()
}
