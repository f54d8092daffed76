//! `PushTelemetry` and `PushLogs`: batches in, acks out. A batch is acked
//! only after the store has committed it; duplicates (retries) are absorbed
//! by the store's (device, seq) keys.

use std::future::Future;
use std::sync::Arc;

use outpost_proto::v1::{LogAck, LogBatch, TelemetryAck, TelemetryBatch};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::AppState;
use crate::store::now_ms;

use super::{DeviceIdentity, convert, store_status};

pub fn start(
    state: Arc<AppState>,
    id: DeviceIdentity,
    inbound: Streaming<TelemetryBatch>,
) -> ReceiverStream<Result<TelemetryAck, Status>> {
    super::spawn_stream(|tx| {
        ingest(
            state,
            id,
            inbound,
            tx,
            "telemetry",
            |state, device, b| async move {
                let samples = convert::batch(b, now_ms()).map_err(Status::invalid_argument)?;
                let last = samples.last().map_or(0, |s| s.seq);
                // Group commit: shares one durable write with other streams.
                let stored = state
                    .telemetry_writer
                    .write(device.clone(), samples)
                    .await
                    .map_err(|e| {
                        tracing::error!("store error: {e}");
                        Status::unavailable("the control plane's store is unavailable; retry later")
                    })?;
                tracing::debug!(%device, stored, last, "telemetry committed");
                Ok(TelemetryAck { acked_seq: last })
            },
        )
    })
}

pub fn start_logs(
    state: Arc<AppState>,
    id: DeviceIdentity,
    inbound: Streaming<LogBatch>,
) -> ReceiverStream<Result<LogAck, Status>> {
    super::spawn_stream(|tx| {
        ingest(
            state,
            id,
            inbound,
            tx,
            "logs",
            |state, device, b| async move {
                let lines = convert::log_batch(b, now_ms()).map_err(Status::invalid_argument)?;
                let last = lines.last().map_or(0, |l| l.seq);
                let started = std::time::Instant::now();
                let stored = state
                    .store
                    .insert_logs(&device, &lines, now_ms())
                    .await
                    .map_err(store_status)?;
                state
                    .metrics
                    .observe_store("logs_insert", started.elapsed());
                state.metrics.logs_ingested.inc_by(stored);
                tracing::debug!(%device, stored, last, "logs committed");
                Ok(LogAck { acked_seq: last })
            },
        )
    })
}

/// One inbound stream: each batch is committed by `commit`, whose answer is
/// the ack; the first error ends the stream with that status.
async fn ingest<B, A, F, Fut>(
    state: Arc<AppState>,
    id: DeviceIdentity,
    mut inbound: Streaming<B>,
    tx: mpsc::Sender<Result<A, Status>>,
    what: &'static str,
    commit: F,
) where
    B: prost::Message + Default + 'static,
    F: Fn(Arc<AppState>, String, B) -> Fut,
    Fut: Future<Output = Result<A, Status>>,
{
    let mut shutdown = state.shutdown.clone();
    let mut registration = state.live.register_stream(&id.device_id);
    loop {
        let msg = tokio::select! {
            msg = inbound.message() => msg,
            why = crate::live::cut(&mut registration.cut) => {
                let _ = tx.send(Err(super::auth::cut_status(why))).await;
                break;
            }
            _ = crate::stopping(&mut shutdown) => break,
        };
        let batch = match msg {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(status) => {
                // Decode errors (malformed, oversized) end up here: tell the
                // peer why before closing. A vanished peer (Unknown: the
                // connection broke) is routine and logged quietly.
                if status.code() == tonic::Code::Unknown {
                    tracing::debug!(device = %id.device_id, "{what} stream broke: {status}");
                } else {
                    tracing::info!(device = %id.device_id, "rejected {what} input: {}", status.message());
                }
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let arrived = std::time::Instant::now();
        match commit(state.clone(), id.device_id.clone(), batch).await {
            Ok(ack) => {
                state.metrics.observe_ack(what, arrived.elapsed());
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
            Err(status) => {
                state
                    .metrics
                    .batches_failed
                    .with_label_values(&[what])
                    .inc();
                if status.code() == tonic::Code::InvalidArgument {
                    tracing::info!(device = %id.device_id, "rejected {what} batch: {}", status.message());
                }
                let _ = tx.send(Err(status)).await;
                break;
            }
        }
    }
}
