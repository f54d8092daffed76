//! Wire messages to store models, validating as we go: untrusted input
//! becomes typed values here, or a clear INVALID_ARGUMENT.

use outpost_proto::v1 as pb;
use outpost_proto::{MAX_GPUS, MAX_LOG_MESSAGE_BYTES, MAX_LOGS_PER_BATCH, MAX_SAMPLES_PER_BATCH};

use crate::store::{
    DeviceFacts, GpuInfo, GpuSample, LogRecord, SEVERITIES, TelemetrySample, Temperature,
};

const MAX_TEXT: usize = 256;
const MAX_TEMPERATURES: usize = outpost_proto::MAX_TEMPERATURES_PER_SAMPLE;

/// What a device may report, beyond which a value is refused as absurd
/// (docs/hardening.md, "Values from devices"). Generous on purpose: these
/// catch corrupt or hostile input, not unusual hardware.
pub mod bounds {
    const DAY_MS: i64 = 24 * 60 * 60 * 1000;
    /// No agent stamps a time before this (its clock never runs earlier than
    /// its build time): 2020-01-01T00:00:00Z.
    pub const EARLIEST_TIMESTAMP_MS: i64 = 1_577_836_800_000;
    /// How far ahead of the control plane's clock a time may be.
    pub const AHEAD_MS: i64 = DAY_MS;
    /// RAM or swap on one box: 1 PiB.
    pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
    /// One filesystem: 1 EiB.
    pub const MAX_DISK_BYTES: u64 = 1 << 60;
    /// Memory of one GPU: 16 TiB.
    pub const MAX_GPU_MEMORY_BYTES: u64 = 1 << 44;
    /// Counters are stored as signed 64-bit numbers.
    pub const MAX_COUNTER: u64 = i64::MAX as u64;
    /// A percentage may overshoot 100 by rounding this much (it is stored
    /// clamped to 100).
    pub const PERCENT_SLACK: f64 = 0.5;
    pub const MAX_LOAD_AVERAGE: f64 = 1e6;
    /// −273.15 °C is absolute zero; 1,000 °C is beyond any sensor on a board.
    pub const MIN_CELSIUS: f32 = -273.15;
    pub const MAX_CELSIUS: f32 = 1000.0;
    pub const MAX_POWER_WATTS: f32 = 100_000.0;
    /// A century.
    pub const MAX_UPTIME_SECS: u64 = 100 * 365 * 24 * 60 * 60;
    pub const MAX_CPU_CORES: u32 = 1 << 16;
}

/// Refuses a timestamp outside [2020, now + a day], naming the record.
fn check_time(what: &str, ts: i64, now_ms: i64) -> Result<(), String> {
    if ts < bounds::EARLIEST_TIMESTAMP_MS {
        return Err(format!(
            "{what}: timestamp_unix_ms {ts} is before 2020-01-01 ({} ms); is the box's clock set?",
            bounds::EARLIEST_TIMESTAMP_MS
        ));
    }
    if ts > now_ms.saturating_add(bounds::AHEAD_MS) {
        return Err(format!(
            "{what}: timestamp_unix_ms {ts} is more than a day ahead of the control plane's clock ({now_ms}); is the box's clock set?"
        ));
    }
    Ok(())
}

/// Refuses a byte count above `max`, naming the field.
fn check_at_most(what: &str, field: &str, v: u64, max: u64) -> Result<(), String> {
    if v > max {
        return Err(format!(
            "{what}: {field} {v} is out of range (at most {max})"
        ));
    }
    Ok(())
}

/// A percentage in [0, 100] (with rounding slack), clamped to 100.
fn percent(what: &str, field: &str, v: f64) -> Result<f64, String> {
    if !(0.0..=100.0 + bounds::PERCENT_SLACK).contains(&v) {
        return Err(format!("{what}: {field} {v} is out of range (0 to 100)"));
    }
    Ok(v.min(100.0))
}

/// Clips free text from the device to a sane length (on a char boundary).
fn clip(s: String) -> String {
    clip_to(s, MAX_TEXT)
}

/// NUL, which PostgreSQL cannot store in text (the insert would fail, and a
/// device's stream with it), becomes U+FFFD on both backends; all other
/// characters stay as the device sent them.
pub(crate) fn storable(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s
    }
}

fn clip_to(s: String, max: usize) -> String {
    let s = storable(s);
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The hello's facts, clipped; absurd capacities are refused.
pub fn facts(f: Option<pb::DeviceFacts>) -> Result<DeviceFacts, String> {
    let f = f.unwrap_or_default();
    let what = "device facts";
    check_at_most(
        what,
        "memory_total_bytes",
        f.memory_total_bytes,
        bounds::MAX_MEMORY_BYTES,
    )?;
    check_at_most(
        what,
        "disk_total_bytes",
        f.disk_total_bytes,
        bounds::MAX_DISK_BYTES,
    )?;
    check_at_most(
        what,
        "cpu_cores",
        f.cpu_cores.into(),
        bounds::MAX_CPU_CORES.into(),
    )?;
    for (i, g) in f.gpus.iter().enumerate().take(MAX_GPUS) {
        check_at_most(
            what,
            &format!("gpus[{i}].memory_total_bytes"),
            g.memory_total_bytes,
            bounds::MAX_GPU_MEMORY_BYTES,
        )?;
    }
    Ok(DeviceFacts {
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
    })
}

/// Validates a log batch: 1..=MAX lines, seq > 0 and strictly ascending,
/// a known severity; a timestamp outside [2020, `now_ms` + a day] becomes
/// `now_ms`; service and message are clipped.
pub fn log_batch(b: pb::LogBatch, now_ms: i64) -> Result<Vec<LogRecord>, String> {
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
        // A line's time comes from its source (a log file read with the
        // system clock, journald's own stamp), not from the agent's
        // corrected clock: one outside the window is stamped with the time
        // it arrived rather than refused, which would hold the box's whole
        // link in a loop of refusals (docs/hardening.md).
        let timestamp = if check_time("", r.timestamp_unix_ms, now_ms).is_ok() {
            r.timestamp_unix_ms
        } else {
            now_ms
        };
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
            timestamp,
            service: clip(r.service),
            severity: r.severity,
            message: clip_to(r.message, MAX_LOG_MESSAGE_BYTES),
        });
    }
    Ok(out)
}

/// Validates a batch: 1..=MAX samples, seq > 0 and strictly ascending,
/// finite numbers within [`bounds`], timestamps in [2020, `now_ms` + a
/// day], bounded lists.
pub fn batch(b: pb::TelemetryBatch, now_ms: i64) -> Result<Vec<TelemetrySample>, String> {
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
        let what = format!("sample {}", s.seq);
        check_time(&what, s.timestamp_unix_ms, now_ms)?;
        let floats = [
            s.cpu_percent as f64,
            s.load_average_1m,
            s.load_average_5m,
            s.load_average_15m,
        ];
        if floats.iter().any(|v| !v.is_finite()) {
            return Err(format!("{what} carries a non-finite number"));
        }
        let cpu_percent = percent(&what, "cpu_percent", s.cpu_percent.into())? as f32;
        for (field, v) in [
            ("load_average_1m", s.load_average_1m),
            ("load_average_5m", s.load_average_5m),
            ("load_average_15m", s.load_average_15m),
        ] {
            if !(0.0..=bounds::MAX_LOAD_AVERAGE).contains(&v) {
                return Err(format!("{what}: {field} {v} is out of range"));
            }
        }
        for (field, v, max) in [
            (
                "memory_used_bytes",
                s.memory_used_bytes,
                bounds::MAX_MEMORY_BYTES,
            ),
            (
                "memory_total_bytes",
                s.memory_total_bytes,
                bounds::MAX_MEMORY_BYTES,
            ),
            (
                "swap_used_bytes",
                s.swap_used_bytes,
                bounds::MAX_MEMORY_BYTES,
            ),
            (
                "swap_total_bytes",
                s.swap_total_bytes,
                bounds::MAX_MEMORY_BYTES,
            ),
            ("disk_used_bytes", s.disk_used_bytes, bounds::MAX_DISK_BYTES),
            (
                "disk_total_bytes",
                s.disk_total_bytes,
                bounds::MAX_DISK_BYTES,
            ),
            ("network_rx_bytes", s.network_rx_bytes, bounds::MAX_COUNTER),
            ("network_tx_bytes", s.network_tx_bytes, bounds::MAX_COUNTER),
            ("uptime_secs", s.uptime_secs, bounds::MAX_UPTIME_SECS),
        ] {
            check_at_most(&what, field, v, max)?;
        }
        if s.temperatures.len() > MAX_TEMPERATURES || s.gpus.len() > MAX_GPUS {
            return Err(format!("{what} has too many temperatures or GPUs"));
        }
        let temperatures = s
            .temperatures
            .into_iter()
            .filter(|t| t.celsius.is_finite())
            .map(|t| {
                celsius(&what, "temperatures[].celsius", t.celsius)?;
                Ok(Temperature {
                    sensor: clip(t.sensor),
                    celsius: t.celsius,
                })
            })
            .collect::<Result<_, String>>()?;
        let gpus = s
            .gpus
            .into_iter()
            .map(|g| gpu(&what, g))
            .collect::<Result<_, String>>()?;
        out.push(TelemetrySample {
            seq: s.seq,
            timestamp: s.timestamp_unix_ms,
            cpu_percent,
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

/// One GPU's reading: non-finite readings (a driver that has none) become
/// 0; finite ones out of range are refused.
fn gpu(what: &str, g: pb::GpuSample) -> Result<GpuSample, String> {
    let field = |name: &str| format!("gpus[{}].{name}", g.index);
    let utilization = finite_or_zero(g.utilization_percent);
    let utilization = percent(what, &field("utilization_percent"), utilization.into())? as f32;
    for (name, v) in [
        ("memory_used_bytes", g.memory_used_bytes),
        ("memory_total_bytes", g.memory_total_bytes),
    ] {
        check_at_most(what, &field(name), v, bounds::MAX_GPU_MEMORY_BYTES)?;
    }
    let temperature = finite_or_zero(g.temperature_celsius);
    celsius(what, &field("temperature_celsius"), temperature)?;
    let power = finite_or_zero(g.power_watts);
    let power_limit = finite_or_zero(g.power_limit_watts);
    for (name, v) in [("power_watts", power), ("power_limit_watts", power_limit)] {
        if !(0.0..=bounds::MAX_POWER_WATTS).contains(&v) {
            return Err(format!("{what}: {} {v} is out of range", field(name)));
        }
    }
    Ok(GpuSample {
        index: g.index,
        name: clip(g.name),
        utilization_percent: utilization,
        memory_used_bytes: g.memory_used_bytes,
        memory_total_bytes: g.memory_total_bytes,
        temperature_celsius: temperature,
        power_watts: power,
        uuid: clip(g.uuid),
        clock_mhz: g.clock_mhz,
        max_clock_mhz: g.max_clock_mhz,
        power_limit_watts: power_limit,
    })
}

fn celsius(what: &str, field: &str, v: f32) -> Result<(), String> {
    if !(bounds::MIN_CELSIUS..=bounds::MAX_CELSIUS).contains(&v) {
        return Err(format!("{what}: {field} {v} is out of range"));
    }
    Ok(())
}

fn finite_or_zero(v: f32) -> f32 {
    if v.is_finite() { v } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn sample(seq: u64) -> pb::Sample {
        pb::Sample {
            seq,
            timestamp_unix_ms: NOW,
            cpu_percent: 12.5,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_ascending_batches() {
        let out = batch(
            pb::TelemetryBatch {
                samples: vec![sample(1), sample(2), sample(5)],
            },
            NOW,
        )
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
            let err = batch(pb::TelemetryBatch { samples }, NOW).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    fn refused(s: pb::Sample) -> String {
        batch(pb::TelemetryBatch { samples: vec![s] }, NOW).unwrap_err()
    }

    #[test]
    fn absurd_values_are_refused_naming_the_field() {
        let day = 24 * 60 * 60 * 1000;
        let gpu = pb::GpuSample {
            index: 3,
            ..Default::default()
        };
        let cases: Vec<(pb::Sample, &str)> = vec![
            (
                pb::Sample {
                    timestamp_unix_ms: i64::MAX,
                    ..sample(1)
                },
                "more than a day ahead",
            ),
            (
                pb::Sample {
                    timestamp_unix_ms: NOW + day + 1,
                    ..sample(1)
                },
                "timestamp_unix_ms",
            ),
            (
                pb::Sample {
                    timestamp_unix_ms: 0,
                    ..sample(1)
                },
                "before 2020",
            ),
            (
                pb::Sample {
                    timestamp_unix_ms: -1,
                    ..sample(1)
                },
                "before 2020",
            ),
            (
                pb::Sample {
                    network_rx_bytes: u64::MAX,
                    ..sample(1)
                },
                "network_rx_bytes",
            ),
            (
                pb::Sample {
                    network_tx_bytes: i64::MAX as u64 + 1,
                    ..sample(1)
                },
                "network_tx_bytes",
            ),
            (
                pb::Sample {
                    memory_total_bytes: u64::MAX,
                    ..sample(1)
                },
                "memory_total_bytes",
            ),
            (
                pb::Sample {
                    disk_used_bytes: u64::MAX,
                    ..sample(1)
                },
                "disk_used_bytes",
            ),
            (
                pb::Sample {
                    uptime_secs: u64::MAX,
                    ..sample(1)
                },
                "uptime_secs",
            ),
            (
                pb::Sample {
                    cpu_percent: 250.0,
                    ..sample(1)
                },
                "cpu_percent",
            ),
            (
                pb::Sample {
                    cpu_percent: -1.0,
                    ..sample(1)
                },
                "cpu_percent",
            ),
            (
                pb::Sample {
                    load_average_5m: -0.5,
                    ..sample(1)
                },
                "load_average_5m",
            ),
            (
                pb::Sample {
                    temperatures: vec![pb::Temperature {
                        sensor: "x".into(),
                        celsius: 5000.0,
                    }],
                    ..sample(1)
                },
                "celsius",
            ),
            (
                pb::Sample {
                    gpus: vec![pb::GpuSample {
                        utilization_percent: 1e9,
                        ..gpu.clone()
                    }],
                    ..sample(1)
                },
                "gpus[3].utilization_percent",
            ),
            (
                pb::Sample {
                    gpus: vec![pb::GpuSample {
                        memory_total_bytes: u64::MAX,
                        ..gpu.clone()
                    }],
                    ..sample(1)
                },
                "gpus[3].memory_total_bytes",
            ),
            (
                pb::Sample {
                    gpus: vec![pb::GpuSample {
                        power_watts: -3.0,
                        ..gpu
                    }],
                    ..sample(1)
                },
                "gpus[3].power_watts",
            ),
        ];
        for (s, want) in cases {
            let err = refused(s);
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(err.starts_with("sample 1"), "{err} should name the sample");
        }
    }

    #[test]
    fn values_at_the_edges_are_kept() {
        let day = 24 * 60 * 60 * 1000;
        let edge = pb::Sample {
            timestamp_unix_ms: NOW + day,
            cpu_percent: 100.3,
            network_rx_bytes: i64::MAX as u64,
            memory_total_bytes: bounds::MAX_MEMORY_BYTES,
            gpus: vec![pb::GpuSample {
                utilization_percent: f32::NAN,
                temperature_celsius: -40.0,
                ..Default::default()
            }],
            ..sample(1)
        };
        // A month-old spool replayed after an outage is admitted too.
        let old = pb::Sample {
            timestamp_unix_ms: NOW - 400 * day,
            ..sample(2)
        };
        let out = batch(
            pb::TelemetryBatch {
                samples: vec![edge, old],
            },
            NOW,
        )
        .unwrap();
        assert_eq!(out[0].cpu_percent, 100.0, "rounding overshoot is clamped");
        assert_eq!(out[0].network_rx_bytes, i64::MAX as u64);
        assert_eq!(out[0].gpus[0].utilization_percent, 0.0);
        assert_eq!(out[1].timestamp, NOW - 400 * day);
    }

    #[test]
    fn absurd_facts_are_refused_and_absurd_log_times_stamped_on_arrival() {
        let facts_with = |f: pb::DeviceFacts| facts(Some(f)).unwrap_err();
        let err = facts_with(pb::DeviceFacts {
            memory_total_bytes: u64::MAX,
            ..Default::default()
        });
        assert!(err.contains("memory_total_bytes"), "{err}");
        let err = facts_with(pb::DeviceFacts {
            gpus: vec![pb::GpuInfo {
                memory_total_bytes: u64::MAX,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(err.contains("gpus[0].memory_total_bytes"), "{err}");
        assert!(facts(None).is_ok(), "a hello without facts is still served");

        let line = |ts| pb::LogRecord {
            seq: 7,
            timestamp_unix_ms: ts,
            severity: "info".into(),
            ..Default::default()
        };
        for absurd in [i64::MAX, -1, 0, NOW + 2 * 86_400_000] {
            let records = vec![line(absurd)];
            let out = log_batch(pb::LogBatch { records }, NOW).unwrap();
            assert_eq!(out[0].timestamp, NOW, "{absurd} is stamped on arrival");
        }
        let records = vec![line(NOW - 1000)];
        let out = log_batch(pb::LogBatch { records }, NOW).unwrap();
        assert_eq!(out[0].timestamp, NOW - 1000);
    }

    #[test]
    fn nul_in_device_text_becomes_a_replacement_character() {
        let out = log_batch(
            pb::LogBatch {
                records: vec![pb::LogRecord {
                    seq: 1,
                    timestamp_unix_ms: NOW,
                    severity: "info".into(),
                    service: "s\0".into(),
                    message: "a\0b\u{1b}".into(),
                }],
            },
            NOW,
        )
        .unwrap();
        assert_eq!(
            out[0].message, "a\u{fffd}b\u{1b}",
            "other controls stay data"
        );
        assert_eq!(out[0].service, "s\u{fffd}");
        let f = facts(Some(pb::DeviceFacts {
            hostname: "h\0".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(f.hostname, "h\u{fffd}");
    }

    #[test]
    fn clips_long_text_on_char_boundary() {
        let long = "é".repeat(300);
        let clipped = clip(long);
        assert!(clipped.len() <= MAX_TEXT);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
