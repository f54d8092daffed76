//! Telemetry reads: `telemetry` (bucketed series over a time period) and
//! `telemetry/raw` (stored samples, paged by seq). Both are rate limited per
//! device (see `limits`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::AppState;
use crate::store::{
    GpuSample, TelemetryBucket, TelemetryQuery, TelemetrySample, Temperature, now_ms,
};

use super::auth::{Caller, Scope, Target, authorized_device};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::pagination::{Page, decode_cursor, page, parse_limit};
use super::params::{Params, format_time, parse_direction, parse_window};

/// The periods of `telemetry?time_period=` and their bucket sizes.
pub const TIME_PERIODS: &[(&str, i64, &str, i64)] = &[
    // (period, period ms, bucket label, bucket ms)
    ("1h", 3_600_000, "1 MINUTE", 60_000),
    ("6h", 21_600_000, "5 MINUTE", 300_000),
    ("12h", 43_200_000, "10 MINUTE", 600_000),
    ("24h", 86_400_000, "15 MINUTE", 900_000),
    ("7d", 604_800_000, "1 HOUR", 3_600_000),
    ("30d", 2_592_000_000, "1 DAY", 86_400_000),
];
pub const DEFAULT_TIME_PERIOD: &str = "24h";

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/{device_id}/telemetry/raw",
    operation_id = "getRawTelemetry",
    tag = "telemetry",
    params(DevicePath, WindowQuery, LongDirectedPageQuery),
    responses(
        (status = 200, description = "Success", body = Page<SampleView>),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        TelemetryRateLimited,
    )
)]
pub async fn raw(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<Page<SampleView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Device(&device_id))?;
    let (start, end) = parse_window(&params)?;
    let limit = parse_limit(params.get("limit"), 100, 1000)?;
    let direction = parse_direction(params.get("direction"))?;
    let after_seq: Option<u64> = decode_cursor(params.get("cursor"))?;
    let device = authorized_device(&state, &caller, Scope::DeviceRead, &device_id).await?;
    state
        .limits
        .check_telemetry(&caller.workspace, &device.id)?;
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeriesView {
    time_period: String,
    bucket: String,
    start_time: String,
    end_time: String,
    /// What the buckets were folded from: `1m` or `1h` (the coarsest
    /// rollup tier whose buckets tile the bucket), or `raw`.
    #[schema(example = "1h")]
    source: &'static str,
    data: Vec<BucketView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BucketView {
    timestamp: String,
    samples: u64,
    cpu_percent: f64,
    cpu_percent_max: f64,
    memory_used_bytes: f64,
    memory_total_bytes: u64,
    disk_used_bytes: f64,
    disk_total_bytes: u64,
    network_rx_bytes: u64,
    network_tx_bytes: u64,
    load_average_1m: f64,
    temperature_max_celsius: Option<f64>,
    gpu_utilization_percent: Option<f64>,
    gpu_memory_used_bytes: Option<f64>,
}

impl From<TelemetryBucket> for BucketView {
    fn from(b: TelemetryBucket) -> Self {
        BucketView {
            timestamp: format_time(b.start),
            samples: b.samples,
            cpu_percent: b.cpu_percent_avg,
            cpu_percent_max: b.cpu_percent_max,
            memory_used_bytes: b.memory_used_bytes_avg,
            memory_total_bytes: b.memory_total_bytes,
            disk_used_bytes: b.disk_used_bytes_avg,
            disk_total_bytes: b.disk_total_bytes,
            network_rx_bytes: b.network_rx_bytes,
            network_tx_bytes: b.network_tx_bytes,
            load_average_1m: b.load_1m_avg,
            temperature_max_celsius: b.temperature_max_celsius,
            gpu_utilization_percent: b.gpu_utilization_percent_avg,
            gpu_memory_used_bytes: b.gpu_memory_used_bytes_avg,
        }
    }
}

/// Looks a period up; unknown periods are a 400 that lists the valid ones.
pub fn parse_period(raw: Option<&str>) -> Result<(&'static str, i64, &'static str, i64), ApiError> {
    let want = raw.unwrap_or(DEFAULT_TIME_PERIOD);
    TIME_PERIODS
        .iter()
        .find(|(p, ..)| *p == want)
        .copied()
        .ok_or_else(|| {
            let valid: Vec<&str> = TIME_PERIODS.iter().map(|(p, ..)| *p).collect();
            ApiError::bad_request(format!("time_period must be one of {}", valid.join(", ")))
        })
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/{device_id}/telemetry",
    operation_id = "getTelemetrySeries",
    tag = "telemetry",
    params(DevicePath, PeriodQuery),
    responses(
        (status = 200, description = "Success", body = SeriesView),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        TelemetryRateLimited,
    )
)]
pub async fn series(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<SeriesView>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Device(&device_id))?;
    let (period, period_ms, bucket, bucket_ms) = parse_period(params.get("time_period"))?;
    let device = authorized_device(&state, &caller, Scope::DeviceRead, &device_id).await?;
    state
        .limits
        .check_telemetry(&caller.workspace, &device.id)?;
    // Whole buckets: the window ends at the end of the current bucket.
    let end = (now_ms() / bucket_ms + 1) * bucket_ms;
    let start = end - period_ms;
    let buckets = state
        .store
        .telemetry_buckets(&device.id, start, end, bucket_ms)
        .await?;
    Ok(Json(SeriesView {
        time_period: period.to_string(),
        bucket: bucket.to_string(),
        start_time: format_time(start),
        end_time: format_time(end),
        source: crate::store::rollup::Tier::for_bucket(bucket_ms).map_or("raw", |t| t.name),
        data: buckets.into_iter().map(BucketView::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_map_to_buckets() {
        assert_eq!(parse_period(None).unwrap().0, "24h");
        assert_eq!(parse_period(Some("1h")).unwrap().2, "1 MINUTE");
        assert_eq!(parse_period(Some("30d")).unwrap().2, "1 DAY");
        match parse_period(Some("2h")) {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("1h, 6h"), "{m}"),
            other => panic!("{other:?}"),
        }
        for (_, period, _, bucket) in TIME_PERIODS {
            assert_eq!(period % bucket, 0, "a period is whole buckets");
        }
    }
}
