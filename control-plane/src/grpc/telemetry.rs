//! `PushTelemetry`: batches in, acks out. A batch is acked only after the
//! store has committed it; duplicates (retries) are absorbed by the store.

use std::sync::Arc;

use outpost_proto::v1::{TelemetryAck, TelemetryBatch};
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
    super::spawn_stream(|tx| run(state, id, inbound, tx))
}

async fn run(
    state: Arc<AppState>,
    id: DeviceIdentity,
    mut inbound: Streaming<TelemetryBatch>,
    tx: mpsc::Sender<Result<TelemetryAck, Status>>,
) {
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
                    tracing::debug!(device = %id.device_id, "telemetry stream broke: {status}");
                } else {
                    tracing::info!(device = %id.device_id, "rejected telemetry input: {}", status.message());
                }
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let samples = match convert::batch(batch) {
            Ok(s) => s,
            Err(msg) => {
                tracing::info!(device = %id.device_id, "rejected telemetry batch: {msg}");
                let _ = tx.send(Err(Status::invalid_argument(msg))).await;
                break;
            }
        };
        let last = samples.last().map(|s| s.seq).unwrap_or(0);
        match state
            .store
            .insert_telemetry(&id.device_id, &samples, now_ms())
            .await
        {
            Ok(stored) => {
                tracing::debug!(device = %id.device_id, stored, last, "telemetry committed");
                if tx.send(Ok(TelemetryAck { acked_seq: last })).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(store_status(e))).await;
                break;
            }
        }
    }
}
