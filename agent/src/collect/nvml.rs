//! The NVML adapter: the only code that talks to `nvml-wrapper`. It loads
//! the NVIDIA driver's `libnvidia-ml.so.1` at run time (dlopen), so the same
//! agent binary runs on boxes with and without the driver, and turns NVML's
//! answers into the plain values below ([`NvmlSource`], [`NvmlReading`]:
//! one [`Metric`] per metric). The rules over them (fallbacks, logging once)
//! are [`super::gpus`]'s, tested there with fake sources.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;

/// Why NVML gave no value for one metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricError {
    /// NVML_ERROR_NOT_SUPPORTED, or the driver's library lacks the function
    /// (older drivers): this GPU cannot give this metric.
    NotSupported,
    /// Anything else (GPU lost, no permission, unknown error): the text.
    Failed(String),
}

impl std::fmt::Display for MetricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricError::NotSupported => f.write_str("not supported"),
            MetricError::Failed(e) => f.write_str(e),
        }
    }
}

/// One metric as NVML answered it.
pub type Metric<T> = Result<T, MetricError>;

/// What does not change while the agent runs, read once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct NvmlIdentity {
    pub name: Metric<String>,
    pub uuid: Metric<String>,
    pub memory_total_bytes: Metric<u64>,
}

/// Frame-buffer memory in use and installed, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// One reading of one GPU, metric by metric, in NVML's units.
#[derive(Debug, Clone, PartialEq)]
pub struct NvmlReading {
    /// Percent of the last sample period a kernel ran (nvmlDeviceGetUtilizationRates).
    pub utilization_percent: Metric<u32>,
    pub memory: Metric<MemoryUse>,
    /// The GPU die sensor, °C.
    pub temperature_celsius: Metric<u32>,
    pub power_milliwatts: Metric<u32>,
    /// The enforced power limit.
    pub power_limit_milliwatts: Metric<u32>,
    /// Graphics clock now and at most, MHz.
    pub clock_mhz: Metric<u32>,
    pub max_clock_mhz: Metric<u32>,
}

/// NVML as the rules of [`super::gpus`] need it. [`NvmlLibrary`] is the
/// real one; tests use fakes.
pub trait NvmlSource: Send {
    /// The driver's version, for the start-up line and `check`.
    fn driver_version(&self) -> Option<String>;
    fn device_count(&self) -> Result<u32, MetricError>;
    fn identity(&self, index: u32) -> Result<NvmlIdentity, MetricError>;
    /// Err: the GPU's handle could not be had (lost, reset needed).
    fn read(&self, index: u32) -> Result<NvmlReading, MetricError>;
}

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
}
