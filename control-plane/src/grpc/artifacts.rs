//! `FetchArtifact`: a ready artifact's payload, streamed to a device of its
//! workspace from a byte offset on (a resumed download), chunk by chunk from
//! the store (docs/artifacts.md). A download holds at most a couple of
//! chunks in memory whatever the artifact's size; the number of downloads
//! at once is capped per replica (`--max-artifact-downloads`) and per device
//! (`MAX_DOWNLOADS_PER_DEVICE`), and the ones beyond are refused as busy,
//! which agents retry with backoff. A download whose device stops reading
//! ends once a chunk's send has waited `SEND_STALL_TIMEOUT`, freeing its slot.

use std::sync::Arc;

use outpost_common::artifact::{check_name, check_version};
use outpost_proto::reason;
use outpost_proto::v1::{ArtifactChunk, FetchArtifactRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::AppState;
use crate::store::{ARTIFACT_CHUNK_SIZE, ARTIFACT_READY, ArtifactRecord};

use super::DeviceIdentity;

/// Chunks queued per download (the rest waits in the store).
const QUEUED_CHUNKS: usize = 2;

/// Counts a download in progress for as long as it lives.
struct InProgress(Arc<AppState>);

impl InProgress {
    fn new(state: Arc<AppState>) -> Self {
        state.metrics.artifact_downloads_in_progress.inc();
        Self(state)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.metrics.artifact_downloads_in_progress.dec();
    }
}

pub(super) async fn fetch(
    state: Arc<AppState>,
    identity: &DeviceIdentity,
    req: FetchArtifactRequest,
) -> Result<ReceiverStream<Result<ArtifactChunk, Status>>, Status> {
    check_name(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
    check_version(&req.version).map_err(|e| Status::invalid_argument(format!("version: {e}")))?;
    let Some(permit) = state.artifacts.try_download(&identity.device_id) else {
        state.metrics.artifact_downloads_refused_busy.inc();
        let mut status = Status::resource_exhausted(
            "the control plane serves as many artifact downloads as it may; retry later",
        );
        status.metadata_mut().insert(
            reason::METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(reason::BUSY),
        );
        return Err(status);
    };
    let artifact = state
        .store
        .get_artifact(&identity.workspace, &req.name, &req.version)
        .await
        .map_err(super::store_status)?
        .filter(|a| a.state == ARTIFACT_READY)
        .ok_or_else(|| {
            Status::not_found(format!(
                "no artifact {}@{} ready in this device's workspace",
                req.name, req.version
            ))
        })?;
    // Delivered only while the key that signed it is trusted: removing a
    // publisher key stops delivery of what it signed.
    let trusted = state
        .store
        .list_publisher_keys(&identity.workspace)
        .await
        .map_err(super::store_status)?
        .iter()
        .any(|k| k.public_key == artifact.public_key);
    if !trusted {
        return Err(Status::not_found(format!(
            "{}@{} is signed by {}, which this device's workspace no longer trusts",
            req.name, req.version, artifact.public_key
        )));
    }
    if req.offset > artifact.size {
        return Err(Status::out_of_range(format!(
            "offset {} is past the end of {}@{} ({} bytes)",
            req.offset, req.name, req.version, artifact.size
        )));
    }
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let in_progress = InProgress::new(state.clone());
    tokio::spawn(async move {
        send_from(&state, &artifact, req.offset, &tx).await;
        // The slot is free and the gauge down before the device sees the
        // end of the stream.
        drop(in_progress);
        drop(permit);
        drop(tx);
    });
    Ok(ReceiverStream::new(rx))
}

/// Sends the payload from `offset` to the end; stops early when the device
/// goes away (the send fails) or a chunk cannot be read.
async fn send_from(
    state: &AppState,
    a: &ArtifactRecord,
    offset: u64,
    tx: &mpsc::Sender<Result<ArtifactChunk, Status>>,
) {
    let chunk = ARTIFACT_CHUNK_SIZE as u64;
    let mut pos = offset;
    while pos < a.size {
        let idx = pos / chunk;
        let data = match read_chunk(state, a, idx).await {
            Ok(d) => d,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let start = (pos - idx * chunk) as usize;
        // The store checked at upload that the chunks add up to the size;
        // a shorter chunk here means the payload was changed under us.
        let want = (a.size - idx * chunk).min(chunk) as usize;
        if data.len() != want || start > data.len() {
            tracing::error!(
                artifact = %format!("{}@{}", a.name, a.version),
                idx, "stored chunk has {} bytes, expected {want}", data.len()
            );
            let _ = tx
                .send(Err(Status::internal(
                    "the stored payload is damaged; the control plane's log has details",
                )))
                .await;
            return;
        }
        let part = data[start..].to_vec();
        let n = part.len() as u64;
        let msg = ArtifactChunk {
            offset: pos,
            data: part,
        };
        // A device that stops reading must not hold its slot forever.
        match tokio::time::timeout(state.artifacts.send_stall_timeout, tx.send(Ok(msg))).await {
            Ok(Ok(())) => {}
            // The device went away.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!(
                    artifact = %format!("{}@{}", a.name, a.version),
                    offset = pos,
                    "a download made no progress for {:?}: ended (the device may resume it)",
                    state.artifacts.send_stall_timeout
                );
                return;
            }
        }
        state.metrics.artifact_bytes_served.inc_by(n);
        pos += n;
    }
}

async fn read_chunk(
    state: &AppState,
    a: &ArtifactRecord,
    idx: u64,
) -> Result<Arc<Vec<u8>>, Status> {
    let cache = &state.artifacts;
    if let Some(d) = cache.cached_chunk(&a.workspace, &a.name, &a.version, &a.sha256, idx) {
        return Ok(d);
    }
    let data = state
        .store
        .read_artifact_chunk(&a.workspace, &a.name, &a.version, idx)
        .await
        .map_err(super::store_status)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "{}@{} was deleted during the download",
                a.name, a.version
            ))
        })?;
    let data = Arc::new(data);
    cache.cache_chunk(
        &a.workspace,
        &a.name,
        &a.version,
        &a.sha256,
        idx,
        data.clone(),
    );
    Ok(data)
}
