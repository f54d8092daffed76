//! `telemetry/stream`: a device's committed samples as Server-Sent Events,
//! for operators watching (dashboard, `outpostctl telemetry`).
//!
//! Each stream is a task that sends what the store holds after the last seq
//! it sent, then sleeps until the feed (see `feed.rs`) says more is durable.
//! Events: `sample` (id = seq, data = one sample as `telemetry/raw` shows
//! it), a `: keep-alive` comment every 15 s, and a final `end` with
//! `{"reason": "device_deleted" | "api_key_revoked" | "server_stopping" |
//! "store_unavailable"}` before the server closes the stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::AppState;
use crate::feed::Watch;
use crate::store::{Direction, TelemetryQuery};

use super::auth::{Caller, Scope, authorized_device};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::params::Params;
use super::telemetry::SampleView;

/// Samples read from the store per query while catching up.
const PAGE: u32 = 500;
/// Comment lines that keep proxies and clients from timing the stream out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream checks that its API key and device still exist (a key
/// revoked with the admin CLI, possibly on another host, has no other signal).
const RECHECK: Duration = Duration::from_secs(2);
/// Events buffered for a slow client before the task waits for it.
const BUFFER: usize = 64;

type Events = ReceiverStream<Result<Event, Infallible>>;

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/{device_id}/telemetry/stream",
    operation_id = "streamTelemetry",
    tag = "telemetry",
    params(
        DevicePath,
        ("after_seq" = Option<u64>, Query, maximum = 9223372036854775807_i64, nullable = false, description = "Replay stored samples after this seq first (as the `Last-Event-ID` header does); without either, only new samples are sent."),
        ("Last-Event-ID" = Option<u64>, Header, maximum = 9223372036854775807_i64, nullable = false, description = "The last seq received: the stream resumes after it."),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `sample` events (id = seq, data = a sample as in telemetry/raw), keep-alive comments, and a final `end` event `{reason}`", content_type = "text/event-stream", body = StreamEvent),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        TelemetryRateLimited,
        (status = 503, description = "This replica serves its maximum number of live streams", body = ErrorBody),
    )
)]
pub async fn stream(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    headers: HeaderMap,
    params: Params,
) -> Result<impl IntoResponse, ApiError> {
    let resume = resume_point(&headers, &params)?;
    let device = authorized_device(&state, &caller, Scope::DeviceRead, &device_id).await?;
    state
        .limits
        .check_telemetry(&caller.workspace, &device.id)?;
    // Watch before reading the last seq: nothing committed in between is missed.
    let watch = state
        .feed
        .watch(&caller.workspace, &device.id)
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "this control plane serves its maximum of live streams ({} in all, {} per workspace); retry later",
                crate::feed::MAX_WATCHERS,
                crate::feed::MAX_WATCHERS_PER_WORKSPACE
            ))
        })?;
    let after = match resume {
        Some(seq) => seq,
        None => state.store.last_telemetry_seq(&device.id).await?,
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(pump(
        state,
        Stream {
            workspace: caller.workspace,
            key_hash: caller.key_hash,
            device_id: device.id,
        },
        after,
        watch,
        tx,
    ));
    let sse = Sse::new(Events::new(rx))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    // Reverse proxies (nginx) must not buffer the stream.
    Ok(([("X-Accel-Buffering", "no")], sse))
}

/// One event of the stream, as an SSE client parses it (the schema of each
/// event in the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StreamEvent {
    // `sample` or `end` (the enum's description).
    #[schema(inline, value_type = Option<StreamEventKind>, nullable = false)]
    event: Option<String>,
    /// `sample`: the sample's seq.
    #[schema(nullable = false)]
    id: Option<String>,
    /// `sample`: a sample as in `telemetry/raw`, as JSON; `end`: `{"reason": …}`.
    data: String,
    /// Reconnect delay in milliseconds.
    #[schema(nullable = false)]
    retry: Option<u64>,
}

/// The `event` field of a stream event: `sample` or `end`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum StreamEventKind {
    Sample,
    End,
}

/// `Last-Event-ID` (what browsers send on reconnect) or `?after_seq=`.
fn resume_point(headers: &HeaderMap, params: &Params) -> Result<Option<u64>, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|v| {
            let s = v.to_str().map_err(|_| {
                ApiError::bad_request("Last-Event-ID must be a sample seq (an integer)")
            })?;
            super::params::parse_seq("Last-Event-ID", s)
        })
        .transpose()?;
    let query = params
        .get("after_seq")
        .map(|s| super::params::parse_seq("after_seq", s))
        .transpose()?;
    Ok(header.or(query))
}

struct Stream {
    workspace: String,
    key_hash: String,
    device_id: String,
}

fn end(reason: &str) -> Event {
    Event::default()
        .event("end")
        .data(serde_json::json!({ "reason": reason }).to_string())
}

/// Sends samples after `after` as they become durable, until the client
/// leaves or the stream must end. The key and device are rechecked every
/// [`RECHECK`] also while a long backlog is being sent; every wait (a slow
/// client included) also ends when the server stops.
async fn pump(
    state: Arc<AppState>,
    s: Stream,
    mut after: u64,
    mut watch: Watch,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut shutdown = state.shutdown.clone();
    let reason = 'stream: {
        let hello = Event::default()
            .comment("connected")
            .retry(Duration::from_secs(3));
        tokio::select! {
            sent = tx.send(Ok(hello)) => if sent.is_err() { return },
            _ = crate::stopping(&mut shutdown) => return,
        }
        let mut next_check = tokio::time::Instant::now() + RECHECK;
        // Read the store at the start (a resume point may be behind) and
        // after every commit signal; not on the periodic rechecks.
        let mut read = true;
        loop {
            // Mark the signal seen *before* reading: a commit during the
            // read wakes the wait below.
            if watch.signal().borrow_and_update().deleted {
                break 'stream "device_deleted";
            }
            while read {
                if tokio::time::Instant::now() >= next_check {
                    next_check = tokio::time::Instant::now() + RECHECK;
                    if let Some(reason) = recheck(&state, &s).await {
                        break 'stream reason;
                    }
                }
                let page = match state
                    .store
                    .query_telemetry(&TelemetryQuery {
                        device_id: s.device_id.clone(),
                        start: None,
                        end: None,
                        after_seq: Some(after),
                        direction: Direction::Forward,
                        limit: PAGE,
                    })
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(device = %s.device_id, "live stream ends: store error: {e}");
                        break 'stream "store_unavailable";
                    }
                };
                read = page.len() as u32 >= PAGE;
                for sample in page {
                    after = sample.seq;
                    let event = match Event::default()
                        .event("sample")
                        .id(sample.seq.to_string())
                        .json_data(SampleView::from(sample))
                    {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(device = %s.device_id, seq = after, "sample not encodable: {e}");
                            continue;
                        }
                    };
                    tokio::select! {
                        sent = tx.send(Ok(event)) => if sent.is_err() { return }, // the client left
                        _ = crate::stopping(&mut shutdown) => break 'stream "server_stopping",
                    }
                }
            }
            tokio::select! {
                changed = watch.signal().changed() => {
                    if changed.is_err() {
                        break 'stream "server_stopping";
                    }
                    read = true;
                }
                _ = tokio::time::sleep_until(next_check) => {
                    next_check = tokio::time::Instant::now() + RECHECK;
                    if let Some(reason) = recheck(&state, &s).await {
                        break 'stream reason;
                    }
                }
                _ = tx.closed() => return,
                _ = crate::stopping(&mut shutdown) => break 'stream "server_stopping",
            }
        }
    };
    tracing::debug!(device = %s.device_id, reason, "live stream ends");
    // A client that stopped reading does not hold the task: give up after 1 s.
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Ok(end(reason)))).await;
}

/// [`still_allowed`], with a store error logged and tolerated (the next
/// check tries again).
async fn recheck(state: &AppState, s: &Stream) -> Option<&'static str> {
    match still_allowed(state, s).await {
        Ok(reason) => reason,
        Err(e) => {
            tracing::debug!(device = %s.device_id, "live stream recheck failed: {e}");
            None
        }
    }
}

/// `Some(reason)` when the stream must end: the key was revoked or the
/// device deleted (on any replica, or with the admin CLI).
async fn still_allowed(
    state: &AppState,
    s: &Stream,
) -> Result<Option<&'static str>, crate::store::StoreError> {
    if state.store.find_api_key(&s.key_hash).await?.is_none() {
        return Ok(Some("api_key_revoked"));
    }
    if state
        .store
        .get_device(&s.workspace, &s.device_id)
        .await?
        .is_none()
    {
        return Ok(Some("device_deleted"));
    }
    Ok(None)
}
