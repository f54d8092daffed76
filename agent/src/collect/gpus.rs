//! Every GPU of a box, from two readers: discrete GPUs through NVML (the
//! NVIDIA driver's `libnvidia-ml.so.1`, loaded at run time by
//! [`super::nvml`]) and a Jetson's integrated GPU from sysfs
//! ([`super::jetson::JetsonGpu`]).
//!
//! NVML's answers arrive here as plain values, one [`Metric`] per metric, so
//! the rules below are tested without NVML ([`NvmlSource`] has fakes):
//!
//! - A metric NVML reads is taken as is (utilization capped at 100 %, mW → W).
//! - A metric NVML answers NOT_SUPPORTED for falls back to the Jetson sysfs
//!   reader's value when this box is a Jetson whose GPU NVML also lists (one
//!   NVML GPU + a Jetson GPU in sysfs: the same GPU); otherwise it is 0, the
//!   wire's "no value" (as the Jetson reader leaves memory and power).
//! - Any other error leaves that metric 0 for that sample and is logged once
//!   per GPU and metric for the life of the process, never per sample.
//! - A GPU NVML cannot reach at all in a sample (its handle fails) is left
//!   out of that sample, also logged once.
//! - NVML is loaded once, when the agent starts. When it cannot be (no
//!   library, no driver) the box reports no NVML GPUs, says so in one info
//!   line and never tries again until the agent is restarted — a driver
//!   installed later needs its kernel module loaded anyway, and SIGHUP
//!   reloads configuration, not hardware.

use std::collections::HashSet;

use outpost_proto::v1 as pb;

use super::jetson::JetsonGpu;
pub use super::nvml::{MemoryUse, Metric, MetricError, NvmlIdentity, NvmlReading, NvmlSource};
use outpost_proto::MAX_GPUS;

/// Remembers which (GPU, metric) failures were already logged.
#[derive(Debug, Default)]
pub struct OnceLog {
    seen: HashSet<(u32, &'static str)>,
}

impl OnceLog {
    /// True the first time for this GPU and metric, false ever after.
    pub fn first(&mut self, gpu: u32, metric: &'static str) -> bool {
        self.seen.insert((gpu, metric))
    }
    pub fn len(&self) -> usize {
        self.seen.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// One metric's value under the rules in the module docs. `fallback`: the
/// Jetson sysfs reader's value, when there is one for this GPU.
fn pick<T, V: Default>(
    log: &mut OnceLog,
    gpu: u32,
    metric: &'static str,
    m: &Metric<T>,
    map: impl FnOnce(&T) -> V,
    fallback: Option<V>,
) -> V {
    match m {
        Ok(v) => map(v),
        Err(MetricError::NotSupported) => {
            if log.first(gpu, metric) {
                if fallback.is_some() {
                    tracing::info!(
                        gpu,
                        metric,
                        "NVML does not support this metric; read from sysfs"
                    );
                } else {
                    tracing::debug!(
                        gpu,
                        metric,
                        "NVML does not support this metric; reported as 0"
                    );
                }
            }
            fallback.unwrap_or_default()
        }
        Err(MetricError::Failed(e)) => {
            if log.first(gpu, metric) {
                tracing::warn!(
                    gpu,
                    metric,
                    "NVML cannot read this metric: {e}; reported as 0 while it fails (logged once)"
                );
            }
            V::default()
        }
    }
}

/// The static description of one NVML GPU for the hello.
pub fn merge_identity(
    id: &NvmlIdentity,
    fallback: Option<&pb::GpuInfo>,
    index: u32,
    log: &mut OnceLog,
) -> pb::GpuInfo {
    pb::GpuInfo {
        name: pick(
            log,
            index,
            "name",
            &id.name,
            |n| n.trim().to_string(),
            fallback.map(|f| f.name.clone()),
        ),
        uuid: pick(
            log,
            index,
            "uuid",
            &id.uuid,
            |u| u.trim().to_string(),
            fallback.map(|f| f.uuid.clone()),
        ),
        memory_total_bytes: pick(
            log,
            index,
            "memory_total",
            &id.memory_total_bytes,
            |b| *b,
            fallback.map(|f| f.memory_total_bytes),
        ),
    }
}

/// One NVML reading of GPU `index` as a wire sample; `fallback` is the
/// Jetson sysfs reading of the same GPU, when this box is a Jetson.
pub fn merge(
    index: u32,
    info: &pb::GpuInfo,
    r: &NvmlReading,
    fallback: Option<&pb::GpuSample>,
    log: &mut OnceLog,
) -> pb::GpuSample {
    let watts = |mw: &u32| *mw as f32 / 1000.0;
    let memory = pick(
        log,
        index,
        "memory",
        &r.memory,
        |m| (m.used_bytes, m.total_bytes),
        fallback.map(|f| (f.memory_used_bytes, f.memory_total_bytes)),
    );
    pb::GpuSample {
        index,
        name: info.name.clone(),
        uuid: info.uuid.clone(),
        utilization_percent: pick(
            log,
            index,
            "utilization",
            &r.utilization_percent,
            |u| (*u).min(100) as f32,
            fallback.map(|f| f.utilization_percent),
        ),
        memory_used_bytes: memory.0,
        memory_total_bytes: memory.1,
        temperature_celsius: pick(
            log,
            index,
            "temperature",
            &r.temperature_celsius,
            |c| *c as f32,
            fallback.map(|f| f.temperature_celsius),
        ),
        power_watts: pick(
            log,
            index,
            "power",
            &r.power_milliwatts,
            watts,
            fallback.map(|f| f.power_watts),
        ),
        power_limit_watts: pick(
            log,
            index,
            "power_limit",
            &r.power_limit_milliwatts,
            watts,
            fallback.map(|f| f.power_limit_watts),
        ),
        clock_mhz: pick(
            log,
            index,
            "clock",
            &r.clock_mhz,
            |c| *c,
            fallback.map(|f| f.clock_mhz),
        ),
        max_clock_mhz: pick(
            log,
            index,
            "max_clock",
            &r.max_clock_mhz,
            |c| *c,
            fallback.map(|f| f.max_clock_mhz),
        ),
    }
}

/// An NVML GPU found at start.
struct NvmlGpu {
    index: u32,
    identity: NvmlIdentity,
    info: pb::GpuInfo,
}

/// One GPU in one reading: the wire sample and what it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub sample: pb::GpuSample,
    /// NVML's answers (NVML GPUs only).
    pub nvml: Option<NvmlReading>,
    /// The Jetson sysfs reading (Jetson GPUs only).
    pub sysfs: Option<pb::GpuSample>,
}

/// The box's GPUs, found once at start.
pub struct Gpus {
    nvml: Option<Box<dyn NvmlSource>>,
    nvml_gpus: Vec<NvmlGpu>,
    jetson: Option<JetsonGpu>,
    /// How NVML came out at start, in words.
    nvml_note: String,
    /// Problems found at start (logged as warnings by [`Gpus::log_start`]).
    problems: Vec<String>,
    log: OnceLog,
}

impl Gpus {
    /// Finds the GPUs of this box: NVML (`OUTPOST_NVML_LIBRARY`: another
    /// library path, or `off`) and Jetson sysfs under `sysfs_root`. What was
    /// found is logged by [`Gpus::log_start`], not here.
    pub fn discover(sysfs_root: &std::path::Path) -> Self {
        let nvml = super::nvml::load_from_env()
            .map(|l| Box::new(l) as Box<dyn NvmlSource>)
            .map_err(|e| e.to_string());
        Self::new(nvml, JetsonGpu::discover(sysfs_root))
    }

    /// `nvml`: the loaded library, or why there is none.
    pub fn new(nvml: Result<Box<dyn NvmlSource>, String>, jetson: Option<JetsonGpu>) -> Self {
        let mut problems = Vec::new();
        let (nvml, nvml_gpus, nvml_note) = match nvml {
            Err(why) => (None, Vec::new(), why),
            Ok(src) => {
                let driver = src
                    .driver_version()
                    .map(|v| format!("driver {v}"))
                    .unwrap_or_else(|| "driver version unknown".into());
                match src.device_count() {
                    Err(e) => {
                        let note = format!("NVML loaded ({driver}) but cannot count GPUs: {e}");
                        (None, Vec::new(), note)
                    }
                    Ok(0) => (None, Vec::new(), format!("NVML loaded ({driver}), no GPUs")),
                    Ok(n) => {
                        if n as usize > MAX_GPUS {
                            problems.push(format!(
                                "NVML lists {n} GPUs; only the first {MAX_GPUS} are reported"
                            ));
                        }
                        let mut gpus = Vec::new();
                        for index in 0..n.min(MAX_GPUS as u32) {
                            match src.identity(index) {
                                Ok(identity) => gpus.push(NvmlGpu {
                                    index,
                                    info: pb::GpuInfo::default(),
                                    identity,
                                }),
                                Err(e) => problems
                                    .push(format!("NVML GPU {index} left out: its handle: {e}")),
                            }
                        }
                        let note = format!("NVML ({driver})");
                        if gpus.is_empty() {
                            (None, gpus, note)
                        } else {
                            (Some(src), gpus, note)
                        }
                    }
                }
            }
        };
        let mut gpus = Self {
            nvml,
            nvml_gpus,
            jetson,
            nvml_note,
            problems,
            log: OnceLog::default(),
        };
        if gpus.jetson.is_some() && gpus.nvml_gpus.len() > 1 {
            // Which of them is the Jetson's own GPU is unknown: NVML's figures
            // alone, rather than one GPU twice.
            gpus.problems.push(format!(
                "a Jetson GPU is in sysfs but NVML lists {} GPUs: the sysfs reader is not used",
                gpus.nvml_gpus.len()
            ));
            gpus.jetson = None;
        }
        let fallback = gpus.jetson.as_ref().map(|j| j.info());
        for g in &mut gpus.nvml_gpus {
            g.info = merge_identity(&g.identity, fallback.as_ref(), g.index, &mut gpus.log);
        }
        gpus
    }

    /// Which reader(s) are in use and what they found, in one line (for the
    /// start-up log and `outpost-agent check`).
    pub fn summary(&self) -> String {
        let names = |infos: Vec<pb::GpuInfo>| {
            infos
                .iter()
                .map(|i| {
                    if i.uuid.is_empty() {
                        i.name.clone()
                    } else {
                        format!("{} ({})", i.name, i.uuid)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.nvml_gpus.is_empty(), &self.jetson) {
            (true, None) => format!("no GPU ({}; no Jetson GPU in sysfs)", self.nvml_note),
            (true, Some(j)) => format!("Jetson GPU from sysfs: {} ({})", j.name, self.nvml_note),
            (false, jetson) => format!(
                "{} GPU(s) via {}{}: {}",
                self.nvml_gpus.len(),
                self.nvml_note,
                if jetson.is_some() {
                    ", sysfs for what NVML does not support"
                } else {
                    ""
                },
                names(self.facts())
            ),
        }
    }

    /// The one info line at start (plus a warning per problem found). A box
    /// without any GPU says just that at info; why NVML found none (usually
    /// no driver: the normal case on such a box) is debug detail.
    pub fn log_start(&self) {
        if self.nvml_gpus.is_empty() && self.jetson.is_none() {
            tracing::info!("no GPU found");
            tracing::debug!("GPUs: {}", self.summary());
        } else {
            tracing::info!("GPUs: {}", self.summary());
        }
        for p in &self.problems {
            tracing::warn!("GPUs: {p}");
        }
    }

    /// The GPUs for the hello (`hardware.gpu` on the control plane).
    pub fn facts(&self) -> Vec<pb::GpuInfo> {
        if !self.nvml_gpus.is_empty() {
            return self.nvml_gpus.iter().map(|g| g.info.clone()).collect();
        }
        self.jetson.iter().map(|j| j.info()).collect()
    }

    /// One reading of every GPU.
    pub fn sample(&mut self) -> Vec<pb::GpuSample> {
        self.read().into_iter().map(|r| r.sample).collect()
    }

    /// One reading of every GPU with what each was made from.
    pub fn read(&mut self) -> Vec<GpuReading> {
        let sysfs = self.jetson.as_ref().map(|j| j.sample());
        let Some(src) = &self.nvml else {
            return sysfs
                .map(|s| GpuReading {
                    sample: s.clone(),
                    nvml: None,
                    sysfs: Some(s),
                })
                .into_iter()
                .collect();
        };
        let mut out = Vec::with_capacity(self.nvml_gpus.len());
        for g in &self.nvml_gpus {
            match src.read(g.index) {
                Ok(r) => out.push(GpuReading {
                    sample: merge(g.index, &g.info, &r, sysfs.as_ref(), &mut self.log),
                    nvml: Some(r),
                    sysfs: sysfs.clone(),
                }),
                Err(e) => {
                    if self.log.first(g.index, "device") {
                        tracing::warn!(
                            gpu = g.index,
                            "NVML cannot reach GPU {} ({e}); left out of samples while it fails (logged once)",
                            g.info.name
                        );
                    }
                }
            }
        }
        out
    }

    /// A reading as JSON, with NVML's answer per metric: what
    /// `outpost-agent gpus --json` prints (and what docs/gpu.md records).
    pub fn report_json(&mut self) -> serde_json::Value {
        let readings = self.read();
        serde_json::json!({
            "summary": self.summary(),
            "nvml": self.nvml_note,
            "jetson_sysfs": self.jetson.as_ref().map(|j| j.name.clone()),
            "problems": self.problems,
            "facts": self.facts().iter().map(info_json).collect::<Vec<_>>(),
            "gpus": readings.iter().map(reading_json).collect::<Vec<_>>(),
        })
    }
}

fn info_json(i: &pb::GpuInfo) -> serde_json::Value {
    serde_json::json!({
        "name": i.name,
        "uuid": i.uuid,
        "memory_total_bytes": i.memory_total_bytes,
    })
}

fn sample_json(s: &pb::GpuSample) -> serde_json::Value {
    serde_json::json!({
        "index": s.index,
        "name": s.name,
        "uuid": s.uuid,
        "utilization_percent": s.utilization_percent,
        "memory_used_bytes": s.memory_used_bytes,
        "memory_total_bytes": s.memory_total_bytes,
        "temperature_celsius": s.temperature_celsius,
        "power_watts": s.power_watts,
        "power_limit_watts": s.power_limit_watts,
        "clock_mhz": s.clock_mhz,
        "max_clock_mhz": s.max_clock_mhz,
    })
}

fn metric_json<T: serde::Serialize>(m: &Metric<T>) -> serde_json::Value {
    match m {
        Ok(v) => serde_json::json!(v),
        Err(MetricError::NotSupported) => serde_json::json!({ "error": "not supported" }),
        Err(MetricError::Failed(e)) => serde_json::json!({ "error": e }),
    }
}

fn reading_json(r: &GpuReading) -> serde_json::Value {
    let nvml = r.nvml.as_ref().map(|n| {
        serde_json::json!({
            "utilization_percent": metric_json(&n.utilization_percent),
            "memory_used_bytes": metric_json(&n.memory.as_ref().map(|m| m.used_bytes).map_err(Clone::clone)),
            "memory_total_bytes": metric_json(&n.memory.as_ref().map(|m| m.total_bytes).map_err(Clone::clone)),
            "temperature_celsius": metric_json(&n.temperature_celsius),
            "power_milliwatts": metric_json(&n.power_milliwatts),
            "power_limit_milliwatts": metric_json(&n.power_limit_milliwatts),
            "clock_mhz": metric_json(&n.clock_mhz),
            "max_clock_mhz": metric_json(&n.max_clock_mhz),
        })
    });
    serde_json::json!({
        "sample": sample_json(&r.sample),
        "nvml": nvml,
        "sysfs": r.sysfs.as_ref().map(sample_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn nvml_ok() -> NvmlReading {
        NvmlReading {
            utilization_percent: Ok(37),
            memory: Ok(MemoryUse {
                used_bytes: 2 << 30,
                total_bytes: 24 << 30,
            }),
            temperature_celsius: Ok(61),
            power_milliwatts: Ok(71_234),
            power_limit_milliwatts: Ok(150_000),
            clock_mhz: Ok(1695),
            max_clock_mhz: Ok(1740),
        }
    }

    fn identity(name: &str, uuid: &str) -> NvmlIdentity {
        NvmlIdentity {
            name: Ok(name.into()),
            uuid: Ok(uuid.into()),
            memory_total_bytes: Ok(24 << 30),
        }
    }

    /// A Jetson Orin's sysfs reading: load, temperature, clocks; no memory
    /// or power figures (0).
    fn orin_sysfs() -> pb::GpuSample {
        pb::GpuSample {
            index: 0,
            name: "NVIDIA Orin GPU (ga10b)".into(),
            utilization_percent: 53.7,
            temperature_celsius: 47.5,
            clock_mhz: 306,
            max_clock_mhz: 1300,
            ..Default::default()
        }
    }

    /// NVML as a fake: GPUs by index; `lost` makes `read` fail for an index.
    #[derive(Clone, Default)]
    struct Fake {
        ids: Vec<Result<NvmlIdentity, MetricError>>,
        reading: Arc<Mutex<Vec<NvmlReading>>>,
        lost: Arc<Mutex<HashSet<u32>>>,
        count_error: Option<MetricError>,
    }

    impl Fake {
        fn new(gpus: Vec<(NvmlIdentity, NvmlReading)>) -> Self {
            let (ids, readings): (Vec<_>, Vec<_>) =
                gpus.into_iter().map(|(i, r)| (Ok(i), r)).unzip();
            Fake {
                ids,
                reading: Arc::new(Mutex::new(readings)),
                ..Default::default()
            }
        }
        fn boxed(&self) -> Result<Box<dyn NvmlSource>, String> {
            Ok(Box::new(self.clone()))
        }
    }

    impl NvmlSource for Fake {
        fn driver_version(&self) -> Option<String> {
            Some("550.54.15".into())
        }
        fn device_count(&self) -> Result<u32, MetricError> {
            match &self.count_error {
                Some(e) => Err(e.clone()),
                None => Ok(self.ids.len() as u32),
            }
        }
        fn identity(&self, index: u32) -> Result<NvmlIdentity, MetricError> {
            self.ids[index as usize].clone()
        }
        fn read(&self, index: u32) -> Result<NvmlReading, MetricError> {
            if self.lost.lock().unwrap().contains(&index) {
                return Err(MetricError::Failed("GPU is lost".into()));
            }
            Ok(self.reading.lock().unwrap()[index as usize].clone())
        }
    }

    fn jetson_tree() -> (tempfile::TempDir, JetsonGpu) {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w("sys/class/devfreq/17000000.ga10b/cur_freq", "306000000\n");
        w("sys/class/devfreq/17000000.ga10b/max_freq", "1300500000\n");
        w("sys/class/devfreq/17000000.ga10b/device/load", "537\n");
        w("sys/class/thermal/thermal_zone1/type", "gpu-thermal\n");
        w("sys/class/thermal/thermal_zone1/temp", "47500\n");
        let j = JetsonGpu::discover(dir.path()).unwrap();
        (dir, j)
    }

    #[test]
    fn gpu_merge_maps_every_nvml_metric_into_the_wire_sample() {
        let info = pb::GpuInfo {
            name: "NVIDIA A10".into(),
            uuid: "GPU-8d3c".into(),
            memory_total_bytes: 24 << 30,
        };
        let mut log = OnceLog::default();
        let s = merge(2, &info, &nvml_ok(), None, &mut log);
        assert_eq!(
            s,
            pb::GpuSample {
                index: 2,
                name: "NVIDIA A10".into(),
                uuid: "GPU-8d3c".into(),
                utilization_percent: 37.0,
                memory_used_bytes: 2 << 30,
                memory_total_bytes: 24 << 30,
                temperature_celsius: 61.0,
                power_watts: 71.234,
                power_limit_watts: 150.0,
                clock_mhz: 1695,
                max_clock_mhz: 1740,
            }
        );
        assert!(log.is_empty(), "nothing to log when all is read");
    }

    #[test]
    fn gpu_merge_not_supported_falls_back_to_sysfs_where_it_has_a_value() {
        // Jetson with NVML: NVML gives memory and power, not load, clocks
        // or temperature.
        let r = NvmlReading {
            utilization_percent: Err(MetricError::NotSupported),
            temperature_celsius: Err(MetricError::NotSupported),
            clock_mhz: Err(MetricError::NotSupported),
            max_clock_mhz: Err(MetricError::NotSupported),
            power_limit_milliwatts: Err(MetricError::NotSupported),
            ..nvml_ok()
        };
        let mut log = OnceLog::default();
        let s = merge(
            0,
            &pb::GpuInfo::default(),
            &r,
            Some(&orin_sysfs()),
            &mut log,
        );
        assert_eq!(s.utilization_percent, 53.7);
        assert_eq!(s.temperature_celsius, 47.5);
        assert_eq!((s.clock_mhz, s.max_clock_mhz), (306, 1300));
        // NVML's own values win where it has them...
        assert_eq!(s.memory_used_bytes, 2 << 30);
        assert_eq!(s.power_watts, 71.234);
        // ...and a metric neither has stays 0.
        assert_eq!(s.power_limit_watts, 0.0);
        // Without a sysfs reader, NOT_SUPPORTED is 0.
        let s = merge(0, &pb::GpuInfo::default(), &r, None, &mut log);
        assert_eq!(
            (s.utilization_percent, s.temperature_celsius, s.clock_mhz),
            (0.0, 0.0, 0)
        );
    }

    #[test]
    fn gpu_merge_other_errors_are_zero_not_sysfs_and_logged_once() {
        let r = NvmlReading {
            utilization_percent: Err(MetricError::Failed("Unknown".into())),
            temperature_celsius: Err(MetricError::Failed("GPU lost".into())),
            ..nvml_ok()
        };
        let mut log = OnceLog::default();
        for _ in 0..5 {
            let s = merge(
                0,
                &pb::GpuInfo::default(),
                &r,
                Some(&orin_sysfs()),
                &mut log,
            );
            assert_eq!((s.utilization_percent, s.temperature_celsius), (0.0, 0.0));
            assert_eq!(s.clock_mhz, 1695);
        }
        // Two metrics failed five times: two log lines, not ten.
        assert_eq!(log.len(), 2);
        // Another GPU's failures are its own.
        merge(1, &pb::GpuInfo::default(), &r, None, &mut log);
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn gpu_merge_caps_utilization_and_keeps_floats_finite() {
        let r = NvmlReading {
            utilization_percent: Ok(250),
            power_milliwatts: Ok(u32::MAX),
            ..nvml_ok()
        };
        let s = merge(
            0,
            &pb::GpuInfo::default(),
            &r,
            None,
            &mut OnceLog::default(),
        );
        assert_eq!(s.utilization_percent, 100.0);
        assert!(s.power_watts.is_finite() && s.power_watts > 4.0e6);
    }

    #[test]
    fn gpu_identity_falls_back_to_the_jetson_name() {
        let id = NvmlIdentity {
            name: Err(MetricError::NotSupported),
            uuid: Err(MetricError::NotSupported),
            memory_total_bytes: Err(MetricError::Failed("Unknown".into())),
        };
        let jetson = pb::GpuInfo {
            name: "NVIDIA Orin GPU (ga10b)".into(),
            ..Default::default()
        };
        let mut log = OnceLog::default();
        let i = merge_identity(&id, Some(&jetson), 0, &mut log);
        assert_eq!(i.name, "NVIDIA Orin GPU (ga10b)");
        assert_eq!((i.uuid.as_str(), i.memory_total_bytes), ("", 0));
        let i = merge_identity(&identity(" NVIDIA A10 ", "GPU-1"), None, 0, &mut log);
        assert_eq!((i.name.as_str(), i.uuid.as_str()), ("NVIDIA A10", "GPU-1"));
    }

    #[test]
    fn gpu_without_nvml_or_jetson_reports_none() {
        let mut g = Gpus::new(
            Err("no NVML library (libnvidia-ml.so.1): cannot open shared object file".into()),
            None,
        );
        assert!(g.facts().is_empty());
        assert!(g.sample().is_empty());
        assert!(g.sample().is_empty());
        assert!(
            g.summary().starts_with("no GPU (no NVML library"),
            "{}",
            g.summary()
        );
        let j = g.report_json();
        assert_eq!(j["gpus"], serde_json::json!([]));
    }

    #[test]
    fn gpu_nvml_gpus_go_into_facts_and_samples() {
        let fake = Fake::new(vec![
            (identity("NVIDIA A10", "GPU-aaaa"), nvml_ok()),
            (
                identity("NVIDIA L4", "GPU-bbbb"),
                NvmlReading {
                    utilization_percent: Ok(5),
                    ..nvml_ok()
                },
            ),
        ]);
        let mut g = Gpus::new(fake.boxed(), None);
        let names: Vec<_> = g.facts().into_iter().map(|i| (i.name, i.uuid)).collect();
        assert_eq!(
            names,
            vec![
                ("NVIDIA A10".to_string(), "GPU-aaaa".to_string()),
                ("NVIDIA L4".to_string(), "GPU-bbbb".to_string())
            ]
        );
        assert_eq!(g.facts()[0].memory_total_bytes, 24 << 30);
        let s = g.sample();
        assert_eq!(s.len(), 2);
        assert_eq!((s[1].index, s[1].name.as_str()), (1, "NVIDIA L4"));
        assert_eq!(s[1].utilization_percent, 5.0);
        assert_eq!(s[0].uuid, "GPU-aaaa");
        assert!(
            g.summary()
                .starts_with("2 GPU(s) via NVML (driver 550.54.15): NVIDIA A10 (GPU-aaaa)")
        );
        // Readings follow NVML.
        fake.reading.lock().unwrap()[0].utilization_percent = Ok(99);
        assert_eq!(g.sample()[0].utilization_percent, 99.0);
    }

    #[test]
    fn gpu_a_lost_gpu_leaves_the_samples_and_comes_back() {
        let fake = Fake::new(vec![
            (identity("A", "GPU-a"), nvml_ok()),
            (identity("B", "GPU-b"), nvml_ok()),
        ]);
        let mut g = Gpus::new(fake.boxed(), None);
        fake.lost.lock().unwrap().insert(0);
        for _ in 0..3 {
            let s = g.sample();
            assert_eq!(s.len(), 1);
            assert_eq!(s[0].name, "B");
        }
        assert_eq!(g.log.len(), 1, "logged once");
        // The facts still name it: the hello describes the box.
        assert_eq!(g.facts().len(), 2);
        fake.lost.lock().unwrap().clear();
        assert_eq!(g.sample().len(), 2);
    }

    #[test]
    fn gpu_nvml_without_gpus_or_count_is_no_gpu_and_a_gpu_without_handle_is_skipped() {
        let g = Gpus::new(Fake::default().boxed(), None);
        assert!(g.facts().is_empty());
        assert!(
            g.summary()
                .contains("NVML loaded (driver 550.54.15), no GPUs"),
            "{}",
            g.summary()
        );
        let fake = Fake {
            count_error: Some(MetricError::Failed("Unknown".into())),
            ..Fake::new(vec![(identity("A", "GPU-a"), nvml_ok())])
        };
        let mut g = Gpus::new(fake.boxed(), None);
        assert!(g.sample().is_empty());
        assert!(g.summary().contains("cannot count GPUs"), "{}", g.summary());
        let mut fake = Fake::new(vec![
            (identity("A", "GPU-a"), nvml_ok()),
            (identity("B", "GPU-b"), nvml_ok()),
        ]);
        fake.ids[0] = Err(MetricError::Failed("GPU requires reset".into()));
        let mut g = Gpus::new(fake.boxed(), None);
        assert_eq!(g.facts().len(), 1);
        assert_eq!(g.sample()[0].name, "B");
        assert_eq!(g.problems.len(), 1, "{:?}", g.problems);
    }

    #[test]
    fn gpu_no_more_than_the_control_plane_accepts() {
        let fake = Fake::new(
            (0..20)
                .map(|i| (identity(&format!("G{i}"), &format!("GPU-{i}")), nvml_ok()))
                .collect(),
        );
        let mut g = Gpus::new(fake.boxed(), None);
        assert_eq!(g.facts().len(), MAX_GPUS);
        assert_eq!(g.sample().len(), MAX_GPUS);
    }

    #[test]
    fn gpu_jetson_alone_when_nvml_is_missing() {
        let (_dir, j) = jetson_tree();
        let mut g = Gpus::new(Err("no NVML library".into()), Some(j));
        assert_eq!(g.facts()[0].name, "NVIDIA Orin GPU (ga10b)");
        let s = g.sample();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].utilization_percent, 53.7);
        assert!(
            g.summary()
                .starts_with("Jetson GPU from sysfs: NVIDIA Orin GPU (ga10b)")
        );
    }

    #[test]
    fn gpu_jetson_with_nvml_is_one_gpu_with_sysfs_filling_the_gaps() {
        let (_dir, j) = jetson_tree();
        let reading = NvmlReading {
            utilization_percent: Err(MetricError::NotSupported),
            clock_mhz: Err(MetricError::NotSupported),
            max_clock_mhz: Err(MetricError::NotSupported),
            power_limit_milliwatts: Err(MetricError::NotSupported),
            ..nvml_ok()
        };
        let fake = Fake::new(vec![(
            NvmlIdentity {
                uuid: Err(MetricError::NotSupported),
                ..identity("Orin (nvgpu)", "")
            },
            reading,
        )]);
        let mut g = Gpus::new(fake.boxed(), Some(j));
        let f = g.facts();
        assert_eq!(f.len(), 1, "one GPU, not NVML's and sysfs' both");
        assert_eq!(
            (f[0].name.as_str(), f[0].uuid.as_str()),
            ("Orin (nvgpu)", "")
        );
        let r = g.read();
        assert_eq!(r.len(), 1);
        let s = &r[0].sample;
        assert_eq!(s.utilization_percent, 53.7);
        assert_eq!((s.clock_mhz, s.max_clock_mhz), (306, 1300));
        assert_eq!(s.temperature_celsius, 61.0, "NVML's own temperature wins");
        assert_eq!(s.memory_total_bytes, 24 << 30);
        assert!(r[0].nvml.is_some() && r[0].sysfs.is_some());
        assert!(g.summary().contains("sysfs for what NVML does not support"));
        let j = g.report_json();
        assert_eq!(j["gpus"][0]["nvml"]["clock_mhz"]["error"], "not supported");
        assert_eq!(j["gpus"][0]["sample"]["clock_mhz"], 306);
        assert_eq!(j["gpus"][0]["sysfs"]["max_clock_mhz"], 1300);
    }

    #[test]
    fn gpu_jetson_sysfs_is_not_paired_with_several_nvml_gpus() {
        let (_dir, j) = jetson_tree();
        let fake = Fake::new(vec![
            (
                identity("A", "GPU-a"),
                NvmlReading {
                    clock_mhz: Err(MetricError::NotSupported),
                    ..nvml_ok()
                },
            ),
            (identity("B", "GPU-b"), nvml_ok()),
        ]);
        let mut g = Gpus::new(fake.boxed(), Some(j));
        assert_eq!(g.facts().len(), 2);
        let s = g.sample();
        assert_eq!(s[0].clock_mhz, 0, "no sysfs value borrowed across GPUs");
        assert_eq!(g.problems.len(), 1);
    }

    /// The real NVML path. Skips (passing) where no NVML library or driver
    /// exists, unless OUTPOST_TEST_REQUIRE_NVML=1 (on a GPU machine, so a
    /// skip cannot pass for a run). Run with `--nocapture` to see the readings.
    #[test]
    fn gpu_nvml_real_library_reads_every_gpu_or_skips() {
        let required = std::env::var("OUTPOST_TEST_REQUIRE_NVML").is_ok_and(|v| v == "1");
        let lib = match super::super::nvml::load(super::super::nvml::DEFAULT_LIBRARY) {
            Ok(lib) => lib,
            Err(
                e @ (super::super::nvml::LoadError::NoLibrary { .. }
                | super::super::nvml::LoadError::DriverNotLoaded),
            ) => {
                assert!(!required, "OUTPOST_TEST_REQUIRE_NVML=1 but {e}");
                println!("skipped: no NVML library or driver on this machine ({e})");
                return;
            }
            Err(e) => panic!("NVML is installed but failed: {e}"),
        };
        let count = lib.device_count().expect("NVML counts GPUs");
        assert!(count >= 1, "NVML loaded but lists no GPU");
        let mut gpus = Gpus::new(Ok(Box::new(lib)), None);
        let facts = gpus.facts();
        assert_eq!(facts.len(), count.min(16) as usize);
        for f in &facts {
            assert!(!f.name.is_empty(), "{f:?}");
            assert!(
                f.uuid.starts_with("GPU-") || f.uuid.starts_with("MIG-"),
                "{f:?}"
            );
            assert!(f.memory_total_bytes > 0, "{f:?}");
        }
        let readings = gpus.read();
        assert_eq!(readings.len(), facts.len(), "every GPU reachable");
        for r in &readings {
            let s = &r.sample;
            let n = r.nvml.as_ref().expect("an NVML reading");
            // A discrete GPU answers these; a plausible range each.
            assert!(n.memory.is_ok() && n.temperature_celsius.is_ok(), "{n:?}");
            assert!(s.memory_total_bytes > 0 && s.memory_used_bytes <= s.memory_total_bytes);
            assert!((0.0..=100.0).contains(&s.utilization_percent), "{s:?}");
            assert!((1.0..=120.0).contains(&s.temperature_celsius), "{s:?}");
            if n.power_milliwatts.is_ok() {
                assert!((0.0..=2000.0).contains(&s.power_watts), "{s:?}");
            }
            if n.power_limit_milliwatts.is_ok() {
                assert!(s.power_limit_watts > 0.0, "{s:?}");
            }
            if n.clock_mhz.is_ok() && n.max_clock_mhz.is_ok() {
                assert!(
                    s.max_clock_mhz > 0 && s.clock_mhz <= s.max_clock_mhz,
                    "{s:?}"
                );
            }
        }
        println!("{}", gpus.summary());
        println!(
            "{}",
            serde_json::to_string_pretty(&gpus.report_json()).expect("JSON")
        );
    }
}
