//! The NVML adapter: the only code that talks to `nvml-wrapper`. It loads
//! the NVIDIA driver's `libnvidia-ml.so.1` at run time (dlopen), so the same
//! agent binary runs on boxes with and without the driver, and turns NVML's
//! answers into [`super::gpus`]'s plain values; the rules (fallbacks,
//! logging once) live there.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;

use super::gpus::{MemoryUse, MetricError, NvmlIdentity, NvmlReading, NvmlSource};

/// The library NVML's own loader looks for (the driver installs it; the
/// unversioned `libnvidia-ml.so` only comes with development packages).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// The environment variable naming another NVML library, or `off`.
pub const LIBRARY_ENV: &str = "OUTPOST_NVML_LIBRARY";

/// NVML, loaded and initialised.
pub struct NvmlLibrary {
    nvml: Nvml,
}

/// Why NVML is not there.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No library to load: a box without the NVIDIA driver (the usual case).
    #[error("no NVML library: {reason}")]
    NoLibrary { library: String, reason: String },
    /// The library is there but the driver is not loaded (no GPU, or its
    /// kernel module is missing).
    #[error("NVML library present but the NVIDIA driver is not loaded")]
    DriverNotLoaded,
    /// Turned off with `OUTPOST_NVML_LIBRARY=off`.
    #[error("NVML turned off ({LIBRARY_ENV}=off)")]
    Off,
    #[error("NVML did not initialise: {0}")]
    Other(String),
}

/// Loads NVML from `library` (a name the dynamic loader resolves, or a path).
pub fn load(library: &str) -> Result<NvmlLibrary, LoadError> {
    match Nvml::builder().lib_path(library.as_ref()).init() {
        Ok(nvml) => Ok(NvmlLibrary { nvml }),
        Err(NvmlError::LibloadingError(e)) => Err(LoadError::NoLibrary {
            library: library.to_string(),
            reason: e.to_string(),
        }),
        Err(NvmlError::LibraryNotFound) => Err(LoadError::NoLibrary {
            library: library.to_string(),
            reason: "not found".into(),
        }),
        Err(NvmlError::DriverNotLoaded) => Err(LoadError::DriverNotLoaded),
        Err(e) => Err(LoadError::Other(e.to_string())),
    }
}

/// Loads NVML from [`DEFAULT_LIBRARY`], or what `OUTPOST_NVML_LIBRARY`
/// names (`off`: not at all; tests with a fake Jetson tree use it).
pub fn load_from_env() -> Result<NvmlLibrary, LoadError> {
    match std::env::var(LIBRARY_ENV) {
        Ok(v) if v.trim().eq_ignore_ascii_case("off") => Err(LoadError::Off),
        Ok(v) if !v.trim().is_empty() => load(v.trim()),
        _ => load(DEFAULT_LIBRARY),
    }
}

/// NOT_SUPPORTED, and a function the driver's library lacks (older
/// drivers), mean "this GPU cannot give this metric"; the rest are failures.
fn metric_error(e: NvmlError) -> MetricError {
    match e {
        NvmlError::NotSupported
        | NvmlError::FunctionNotFound
        | NvmlError::FailedToLoadSymbol(_) => MetricError::NotSupported,
        e => MetricError::Failed(e.to_string()),
    }
}

impl NvmlSource for NvmlLibrary {
    fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }

    fn device_count(&self) -> Result<u32, MetricError> {
        self.nvml.device_count().map_err(metric_error)
    }

    fn identity(&self, index: u32) -> Result<NvmlIdentity, MetricError> {
        let d = self.nvml.device_by_index(index).map_err(metric_error)?;
        Ok(NvmlIdentity {
            name: d.name().map_err(metric_error),
            uuid: d.uuid().map_err(metric_error),
            memory_total_bytes: d.memory_info().map(|m| m.total).map_err(metric_error),
        })
    }

    fn read(&self, index: u32) -> Result<NvmlReading, MetricError> {
        let d = self.nvml.device_by_index(index).map_err(metric_error)?;
        Ok(NvmlReading {
            utilization_percent: d.utilization_rates().map(|u| u.gpu).map_err(metric_error),
            memory: d
                .memory_info()
                .map(|m| MemoryUse {
                    used_bytes: m.used,
                    total_bytes: m.total,
                })
                .map_err(metric_error),
            temperature_celsius: d.temperature(TemperatureSensor::Gpu).map_err(metric_error),
            power_milliwatts: d.power_usage().map_err(metric_error),
            power_limit_milliwatts: d.enforced_power_limit().map_err(metric_error),
            clock_mhz: d.clock_info(Clock::Graphics).map_err(metric_error),
            max_clock_mhz: d.max_clock_info(Clock::Graphics).map_err(metric_error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::gpus::Gpus;

    #[test]
    fn gpu_nvml_errors_map_to_not_supported_or_failed() {
        assert_eq!(
            metric_error(NvmlError::NotSupported),
            MetricError::NotSupported
        );
        assert_eq!(
            metric_error(NvmlError::FunctionNotFound),
            MetricError::NotSupported
        );
        assert_eq!(
            metric_error(NvmlError::FailedToLoadSymbol(
                "nvmlDeviceGetMemoryInfo_v2".into()
            )),
            MetricError::NotSupported
        );
        assert!(matches!(
            metric_error(NvmlError::GpuLost),
            MetricError::Failed(e) if e.contains("fell off the bus")
        ));
        assert!(matches!(
            metric_error(NvmlError::NoPermission),
            MetricError::Failed(_)
        ));
    }

    #[test]
    fn gpu_nvml_missing_library_is_no_library_not_a_crash() {
        match load("libnvidia-ml-outpost-test-does-not-exist.so.1") {
            Err(LoadError::NoLibrary { library, .. }) => {
                assert_eq!(library, "libnvidia-ml-outpost-test-does-not-exist.so.1")
            }
            Err(e) => panic!("expected NoLibrary, got {e}"),
            Ok(_) => panic!("a library that does not exist loaded"),
        }
    }

    /// The real NVML path. Skips (passing) where no NVML library or driver
    /// exists, unless OUTPOST_TEST_REQUIRE_NVML=1 (on a GPU machine, so a
    /// skip cannot pass for a run). Run with `--nocapture` to see the readings.
    #[test]
    fn gpu_nvml_real_library_reads_every_gpu_or_skips() {
        let required = std::env::var("OUTPOST_TEST_REQUIRE_NVML").is_ok_and(|v| v == "1");
        let lib = match load(DEFAULT_LIBRARY) {
            Ok(lib) => lib,
            Err(e @ (LoadError::NoLibrary { .. } | LoadError::DriverNotLoaded)) => {
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
