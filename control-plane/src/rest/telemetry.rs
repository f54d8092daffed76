//! `/{workspace}/devices/v2/{deviceId}/telemetry/raw`: stored samples, paged
//! by seq.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::AppState;
use crate::store::{Direction, GpuSample, TelemetryQuery, TelemetrySample, Temperature};

use super::auth::{Caller, Scope, Target};
use super::devices::load_device;
use super::error::ApiError;
use super::pagination::{Page, decode_cursor, page, parse_limit};
use super::params::{Params, format_time, parse_time};

#[derive(Debug, Serialize)]
pub struct SampleView {
    seq: u64,
    timestamp: String,
    cpu_percent: f32,
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    swap_used_bytes: u64,
    swap_total_bytes: u64,
    disk_used_bytes: u64,
    disk_total_bytes: u64,
    network_rx_bytes: u64,
    network_tx_bytes: u64,
    load_average: LoadAverage,
    uptime_secs: u64,
    temperatures: Vec<Temperature>,
    gpus: Vec<GpuSample>,
}

#[derive(Debug, Serialize)]
struct LoadAverage {
    #[serde(rename = "1m")]
    one: f64,
    #[serde(rename = "5m")]
    five: f64,
    #[serde(rename = "15m")]
    fifteen: f64,
}

impl From<TelemetrySample> for SampleView {
    fn from(s: TelemetrySample) -> Self {
        SampleView {
            seq: s.seq,
            timestamp: format_time(s.timestamp),
            cpu_percent: s.cpu_percent,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            swap_used_bytes: s.swap_used_bytes,
            swap_total_bytes: s.swap_total_bytes,
            disk_used_bytes: s.disk_used_bytes,
            disk_total_bytes: s.disk_total_bytes,
            network_rx_bytes: s.network_rx_bytes,
            network_tx_bytes: s.network_tx_bytes,
            load_average: LoadAverage {
                one: s.load_1m,
                five: s.load_5m,
                fifteen: s.load_15m,
            },
            uptime_secs: s.uptime_secs,
            temperatures: s.temperatures,
            gpus: s.gpus,
        }
    }
}

pub fn parse_direction(raw: Option<&str>) -> Result<Direction, ApiError> {
    match raw {
        None => Ok(Direction::default()),
        Some("forward") => Ok(Direction::Forward),
        Some("backward") => Ok(Direction::Backward),
        Some(_) => Err(ApiError::bad_request(
            "direction must be forward or backward",
        )),
    }
}

pub async fn raw(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<Page<SampleView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Device(&device_id))?;
    let start = parse_time("start_time", params.get("start_time"))?;
    let end = parse_time("end_time", params.get("end_time"))?;
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(ApiError::bad_request(
            "start_time must not be after end_time",
        ));
    }
    let limit = parse_limit(params.get("limit"), 100, 1000)?;
    let direction = parse_direction(params.get("direction"))?;
    let after_seq: Option<u64> = decode_cursor(params.get("cursor"))?;
    let device = load_device(&state, &caller, &device_id).await?;
    let rows = state
        .store
        .query_telemetry(&TelemetryQuery {
            device_id: device.id,
            start,
            end,
            after_seq,
            direction,
            limit: limit + 1,
        })
        .await?;
    Ok(Json(page(rows, limit, |s| s.seq, SampleView::from)))
}
