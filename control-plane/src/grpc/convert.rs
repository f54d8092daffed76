//! Wire messages to store models, validating as we go: untrusted input
//! becomes typed values here, or a clear INVALID_ARGUMENT.

use outpost_proto::v1 as pb;
use outpost_proto::{MAX_GPUS, MAX_LOG_MESSAGE_BYTES, MAX_LOGS_PER_BATCH, MAX_SAMPLES_PER_BATCH};

use crate::store::{
    DeviceFacts, GpuInfo, GpuSample, LogRecord, SEVERITIES, TelemetrySample, Temperature,
};

const MAX_TEXT: usize = 256;
const MAX_TEMPERATURES: usize = outpost_proto::MAX_TEMPERATURES_PER_SAMPLE;

/// Clips free text from the device to a sane length (on a char boundary).
fn clip(s: String) -> String {
    clip_to(s, MAX_TEXT)
}

fn clip_to(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

pub fn facts(f: Option<pb::DeviceFacts>) -> DeviceFacts {
    let f = f.unwrap_or_default();
    DeviceFacts {
        hostname: clip(f.hostname),
        os_name: clip(f.os_name),
        os_version: clip(f.os_version),
        kernel_version: clip(f.kernel_version),
        architecture: clip(f.architecture),
        cpu_model: clip(f.cpu_model),
        cpu_cores: f.cpu_cores,
        memory_total_bytes: f.memory_total_bytes,
        disk_total_bytes: f.disk_total_bytes,
        gpus: f
            .gpus
            .into_iter()
            .take(MAX_GPUS)
            .map(|g| GpuInfo {
                name: clip(g.name),
                uuid: clip(g.uuid),
                memory_total_bytes: g.memory_total_bytes,
            })
            .collect(),
        agent_version: clip(f.agent_version),
    }
}

/// Validates a log batch: 1..=MAX lines, seq > 0 and strictly ascending,
/// a known severity; service and message are clipped.
pub fn log_batch(b: pb::LogBatch) -> Result<Vec<LogRecord>, String> {
    if b.records.is_empty() {
        return Err("log batch is empty".into());
    }
    if b.records.len() > MAX_LOGS_PER_BATCH {
        return Err(format!(
            "log batch has {} lines; at most {MAX_LOGS_PER_BATCH} are allowed",
            b.records.len()
        ));
    }
    let mut prev = 0u64;
    let mut out = Vec::with_capacity(b.records.len());
    for r in b.records {
        if r.seq == 0 || r.seq > i64::MAX as u64 {
            return Err(format!("log seq {} is out of range", r.seq));
        }
        if r.seq <= prev {
            return Err(format!("log seqs must ascend: {} after {prev}", r.seq));
        }
        prev = r.seq;
        if r.timestamp_unix_ms < 0 {
            return Err(format!("log line {} has a negative timestamp", r.seq));
        }
        if !SEVERITIES.contains(&r.severity.as_str()) {
            return Err(format!(
                "log line {} has severity {:?}; expected one of {}",
                r.seq,
                clip(r.severity),
                SEVERITIES.join(", ")
            ));
        }
        out.push(LogRecord {
            seq: r.seq,
            timestamp: r.timestamp_unix_ms,
            service: clip(r.service),
            severity: r.severity,
            message: clip_to(r.message, MAX_LOG_MESSAGE_BYTES),
        });
    }
    Ok(out)
}

/// Validates a batch: 1..=MAX samples, seq > 0 and strictly ascending,
/// finite numbers, bounded lists.
pub fn batch(b: pb::TelemetryBatch) -> Result<Vec<TelemetrySample>, String> {
    if b.samples.is_empty() {
        return Err("telemetry batch is empty".into());
    }
    if b.samples.len() > MAX_SAMPLES_PER_BATCH {
        return Err(format!(
            "telemetry batch has {} samples; at most {MAX_SAMPLES_PER_BATCH} are allowed",
            b.samples.len()
        ));
    }
    let mut prev = 0u64;
    let mut out = Vec::with_capacity(b.samples.len());
    for s in b.samples {
        if s.seq == 0 {
            return Err("sample seq must be > 0".into());
        }
        if s.seq <= prev {
            return Err(format!("sample seqs must ascend: {} after {prev}", s.seq));
        }
        if s.seq > i64::MAX as u64 {
            return Err(format!("sample seq {} is out of range", s.seq));
        }
        prev = s.seq;
        if s.timestamp_unix_ms < 0 {
            return Err(format!("sample {} has a negative timestamp", s.seq));
        }
        let floats = [
            s.cpu_percent as f64,
            s.load_average_1m,
            s.load_average_5m,
            s.load_average_15m,
        ];
        if floats.iter().any(|v| !v.is_finite()) {
            return Err(format!("sample {} carries a non-finite number", s.seq));
        }
        if s.temperatures.len() > MAX_TEMPERATURES || s.gpus.len() > MAX_GPUS {
            return Err(format!(
                "sample {} has too many temperatures or GPUs",
                s.seq
            ));
        }
        let temperatures = s
            .temperatures
            .into_iter()
            .filter(|t| t.celsius.is_finite())
            .map(|t| Temperature {
                sensor: clip(t.sensor),
                celsius: t.celsius,
            })
            .collect();
        let gpus = s
            .gpus
            .into_iter()
            .map(|g| GpuSample {
                index: g.index,
                name: clip(g.name),
                utilization_percent: finite_or_zero(g.utilization_percent),
                memory_used_bytes: g.memory_used_bytes,
                memory_total_bytes: g.memory_total_bytes,
                temperature_celsius: finite_or_zero(g.temperature_celsius),
                power_watts: finite_or_zero(g.power_watts),
                uuid: clip(g.uuid),
                clock_mhz: g.clock_mhz,
                max_clock_mhz: g.max_clock_mhz,
                power_limit_watts: finite_or_zero(g.power_limit_watts),
            })
            .collect();
        out.push(TelemetrySample {
            seq: s.seq,
            timestamp: s.timestamp_unix_ms,
            cpu_percent: s.cpu_percent,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            swap_used_bytes: s.swap_used_bytes,
            swap_total_bytes: s.swap_total_bytes,
            disk_used_bytes: s.disk_used_bytes,
            disk_total_bytes: s.disk_total_bytes,
            network_rx_bytes: s.network_rx_bytes,
            network_tx_bytes: s.network_tx_bytes,
            load_1m: s.load_average_1m,
            load_5m: s.load_average_5m,
            load_15m: s.load_average_15m,
            uptime_secs: s.uptime_secs,
            temperatures,
            gpus,
        });
    }
    Ok(out)
}

fn finite_or_zero(v: f32) -> f32 {
    if v.is_finite() { v } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> pb::Sample {
        pb::Sample {
            seq,
            timestamp_unix_ms: 1_700_000_000_000,
            cpu_percent: 12.5,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_ascending_batches() {
        let out = batch(pb::TelemetryBatch {
            samples: vec![sample(1), sample(2), sample(5)],
        })
        .unwrap();
        assert_eq!(out.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 5]);
    }

    #[test]
    fn rejects_bad_batches_with_reasons() {
        let cases: Vec<(Vec<pb::Sample>, &str)> = vec![
            (vec![], "empty"),
            (vec![sample(0)], "> 0"),
            (vec![sample(2), sample(2)], "ascend"),
            (vec![sample(3), sample(1)], "ascend"),
            (
                vec![pb::Sample {
                    cpu_percent: f32::NAN,
                    ..sample(1)
                }],
                "non-finite",
            ),
            (
                (1..=(MAX_SAMPLES_PER_BATCH as u64 + 1))
                    .map(sample)
                    .collect(),
                "at most",
            ),
        ];
        for (samples, want) in cases {
            let err = batch(pb::TelemetryBatch { samples }).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn clips_long_text_on_char_boundary() {
        let long = "é".repeat(300);
        let clipped = clip(long);
        assert!(clipped.len() <= MAX_TEXT);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
