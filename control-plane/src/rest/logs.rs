//! `/{workspace}/devices/v2/{deviceId}/logs`: the device's log lines, newest
//! first; with `after_seq`, the lines stored after that seq, oldest first
//! (for followers: a spooled line stamped long ago still comes). Rate limited
//! per client IP and globally (see `limits`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use serde::Serialize;

use crate::AppState;
use crate::store::{LogQuery, LogRecord, SEVERITIES, UnixMillis};

use super::auth::{Caller, Scope, Target, authorized_device};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::pagination::{Page, PageInfo, decode_cursor, page, parse_limit};
use super::params::{Params, format_time, parse_window};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogView {
    /// The line's per-device sequence number (an Outpost extension): pass
    /// the last one seen as `after_seq` to follow the log.
    seq: u64,
    timestamp: String,
    service: String,
    severity: String,
    message: String,
}

impl From<LogRecord> for LogView {
    fn from(l: LogRecord) -> Self {
        LogView {
            seq: l.seq,
            timestamp: format_time(l.timestamp),
            service: l.service,
            severity: l.severity,
            message: l.message,
        }
    }
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/{device_id}/logs",
    operation_id = "listLogs",
    tag = "logs",
    params(DevicePath, WindowQuery, LogFilterQuery, LongPageQuery),
    responses(
        (status = 200, description = "Success", body = Page<LogView>),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        LogsRateLimited,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<Page<LogView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Device(&device_id))?;
    let client = super::limits::client_ip(peer, &headers, &state.trusted_proxies);
    state.limits.check_logs(client)?;
    let limit = parse_limit(params.get("limit"), 100, 1000)?;
    let (start, end) = parse_window(&params)?;
    let before: Option<(UnixMillis, u64)> = decode_cursor(params.get("cursor"))?;
    let after_seq = params
        .get("after_seq")
        .map(|s| super::params::parse_seq("after_seq", s))
        .transpose()?;
    if after_seq.is_some() && before.is_some() {
        return Err(ApiError::bad_request(
            "after_seq (follow forward) and cursor (page backward) cannot be combined",
        ));
    }
    let service = params.get("service").map(str::to_string);
    if service
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > 256)
    {
        return Err(ApiError::bad_request("service must be 1 to 256 characters"));
    }
    // The names syslog and common loggers also use.
    let severity = match params.get("severity").map(|s| match s {
        "warn" => "warning",
        "err" => "error",
        "crit" | "fatal" => "critical",
        "emerg" | "panic" => "emergency",
        "informational" => "info",
        "trace" => "debug",
        other => other,
    }) {
        None => None,
        Some(s) if SEVERITIES.contains(&s) => Some(s.to_string()),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "severity must be one of {} (or warn, err, crit, fatal, emerg, trace)",
                SEVERITIES.join(", ")
            )));
        }
    };
    let device = authorized_device(&state, &caller, Scope::DeviceRead, &device_id).await?;
    // A follower's high-water mark, read first: lines committed after it
    // are left for the next request.
    let until_seq = match after_seq {
        Some(_) => Some(state.store.last_log_seq(&device.id).await?),
        None => None,
    };
    let rows = state
        .store
        .query_logs(&LogQuery {
            device_id: device.id,
            start,
            end,
            service,
            severity,
            before,
            after_seq,
            until_seq,
            limit: limit + 1,
        })
        .await?;
    if after_seq.is_some() {
        // Forward: the follower's next after_seq is the last line's seq.
        let has_more = rows.len() > limit as usize;
        let data: Vec<LogView> = rows
            .into_iter()
            .take(limit as usize)
            .map(LogView::from)
            .collect();
        // Past everything scanned: the last line sent when the page is
        // full, else the high-water mark (lines the filters skipped too).
        let last_seq = match (has_more, data.last()) {
            (true, Some(l)) => l.seq,
            _ => until_seq.unwrap_or(0).max(after_seq.unwrap_or(0)),
        };
        return Ok(Json(Page {
            data,
            pagination: PageInfo {
                next_cursor: None,
                has_more,
                limit,
                last_seq: Some(last_seq),
            },
        }));
    }
    Ok(Json(page(
        rows,
        limit,
        |l| (l.timestamp, l.seq),
        LogView::from,
    )))
}
