//! Group commit for telemetry: every stream hands its batch to one writer
//! task, which stores everything that arrived while the previous write was
//! in flight in a single transaction (one fsync on SQLite), then answers each
//! stream. Under load, batches from many devices share one durable write;
//! alone, a batch is written at once. Acks still follow the commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::live::LiveDevices;
use crate::metrics::Metrics;
use crate::store::{DeviceSamples, Store, TelemetrySample, UnixMillis, now_ms};

/// Batches in one transaction at most.
const MAX_GROUP: usize = 512;
/// Batches waiting for the writer before streams wait to hand theirs over.
const QUEUE: usize = 4096;

struct Job {
    batch: DeviceSamples,
    done: oneshot::Sender<Result<u64, String>>,
}

#[derive(Clone)]
pub struct TelemetryWriter {
    tx: mpsc::Sender<Job>,
}

impl TelemetryWriter {
    /// Starts the writer task on `store`; after each commit it wakes the
    /// operators watching those devices (`live.committed`).
    pub fn start(store: Arc<dyn Store>, live: Arc<LiveDevices>, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, live, metrics, rx));
        Self { tx }
    }

    /// Stores a device's samples durably; resolves after the commit.
    pub async fn write(
        &self,
        device_id: String,
        samples: Vec<TelemetrySample>,
    ) -> Result<u64, String> {
        let (done, answer) = oneshot::channel();
        let job = Job {
            batch: DeviceSamples { device_id, samples },
            done,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| "the telemetry writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the telemetry writer has stopped".to_string())?
    }
}

async fn run(
    store: Arc<dyn Store>,
    live: Arc<LiveDevices>,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let (batches, dones): (Vec<DeviceSamples>, Vec<_>) =
            jobs.drain(..).map(|j| (j.batch, j.done)).unzip();
        let now: UnixMillis = now_ms();
        let started = Instant::now();
        let result = store
            .insert_telemetry_many(&batches, now)
            .await
            .map_err(|e| e.to_string());
        metrics.observe_store("telemetry_commit", started.elapsed());
        match &result {
            Err(e) => tracing::error!(batches = batches.len(), "telemetry not stored: {e}"),
            Ok(stored) => {
                tracing::trace!(batches = batches.len(), "telemetry group committed");
                metrics.samples_ingested.inc_by(*stored);
                metrics.commit_group_batches.observe(batches.len() as f64);
                live.committed(highest_seqs(&batches));
            }
        }
        for done in dones {
            let _ = done.send(result.clone());
        }
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
