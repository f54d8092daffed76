//! GPUs on AI1 boxes. Jetson modules (integrated GPU, no NVML) are read
//! from sysfs: load in per-mille from the GPU device's `load`, current and
//! maximum frequency from its devfreq node, temperature from the
//! `gpu-thermal` (Orin) or `GPU-therm` (Xavier) thermal zone. The GPU shares
//! system memory, so no separate memory figures are reported. A box without
//! a GPU reports none; nothing here errors in a loop.
//!
//! Discrete GPUs through NVML are the other reader ([`super::nvml`], loaded
//! at run time); [`super::gpus`] combines both, and on a Jetson whose GPU
//! NVML also lists, fills what NVML does not support from here.

use std::path::{Path, PathBuf};

use outpost_proto::v1 as pb;

/// devfreq device names of Jetson GPUs: gp10b (TX2), gv11b (Xavier), ga10b (Orin).
const JETSON_GPUS: &[(&str, &str)] = &[
    ("ga10b", "NVIDIA Orin GPU (ga10b)"),
    ("gv11b", "NVIDIA Xavier GPU (gv11b)"),
    ("gp10b", "NVIDIA TX2 GPU (gp10b)"),
];

const THERMAL_ZONE_NAMES: &[&str] = &["gpu-thermal", "GPU-therm"];

/// A Jetson GPU found under a sysfs root (`/` on a box; a temp dir in tests).
#[derive(Debug, Clone, PartialEq)]
pub struct JetsonGpu {
    pub name: String,
    /// The devfreq node: `cur_freq`, `max_freq` (Hz).
    devfreq: PathBuf,
    /// `load`, per-mille.
    load: Option<PathBuf>,
    /// `temp`, millidegrees Celsius.
    thermal: Option<PathBuf>,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    Some(
        s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
            .to_string(),
    )
}

impl JetsonGpu {
    /// Looks for a Jetson GPU under `root`.
    pub fn discover(root: &Path) -> Option<Self> {
        let devfreq_dir = root.join("sys/class/devfreq");
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&devfreq_dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let (devfreq, model) = entries.into_iter().find_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            JETSON_GPUS
                .iter()
                .find(|(chip, _)| name.contains(chip))
                .map(|(_, model)| (p, *model))
        })?;
        // `device` links to the GPU's platform device, where `load` lives;
        // older kernels also expose /sys/devices/gpu.0/load.
        let load = [
            devfreq.join("device/load"),
            root.join("sys/devices/platform/gpu.0/load"),
            root.join("sys/devices/gpu.0/load"),
        ]
        .into_iter()
        .find(|p| p.exists());
        let thermal = std::fs::read_dir(root.join("sys/class/thermal"))
            .ok()
            .and_then(|dir| {
                let mut zones: Vec<PathBuf> =
                    dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
                zones.sort();
                zones.into_iter().find(|z| {
                    read_trimmed(&z.join("type"))
                        .is_some_and(|t| THERMAL_ZONE_NAMES.contains(&t.as_str()))
                })
            })
            .map(|z| z.join("temp"));
        let name = read_trimmed(&root.join("proc/device-tree/model"))
            .filter(|m| !m.is_empty())
            .map(|m| format!("{m} ({model})"))
            .unwrap_or_else(|| model.to_string());
        Some(Self {
            name,
            devfreq,
            load,
            thermal,
        })
    }

    /// The GPU's static description for the hello.
    pub fn info(&self) -> pb::GpuInfo {
        pb::GpuInfo {
            name: self.name.clone(),
            uuid: String::new(),
            memory_total_bytes: 0,
        }
    }

    /// One reading; a value that cannot be read is left at 0.
    pub fn sample(&self) -> pb::GpuSample {
        let mhz = |f: &str| {
            read_u64(&self.devfreq.join(f))
                .map(|hz| (hz / 1_000_000) as u32)
                .unwrap_or(0)
        };
        pb::GpuSample {
            index: 0,
            name: self.name.clone(),
            utilization_percent: self
                .load
                .as_deref()
                .and_then(read_u64)
                .map(|permille| (permille.min(1000) as f32) / 10.0)
                .unwrap_or(0.0),
            memory_used_bytes: 0,
            memory_total_bytes: 0,
            temperature_celsius: self
                .thermal
                .as_deref()
                .and_then(read_u64)
                .map(|milli| milli as f32 / 1000.0)
                .unwrap_or(0.0),
            power_watts: 0.0,
            uuid: String::new(),
            clock_mhz: mhz("cur_freq"),
            max_clock_mhz: mhz("max_freq"),
            power_limit_watts: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Laid out like an AGX Orin (L4T 35/36): devfreq 17000000.ga10b whose
    /// `device` is the platform device holding `load`; zone `gpu-thermal`.
    fn orin(root: &Path) {
        write(
            root,
            "sys/class/devfreq/17000000.ga10b/cur_freq",
            "306000000\n",
        );
        write(
            root,
            "sys/class/devfreq/17000000.ga10b/max_freq",
            "1300500000\n",
        );
        write(
            root,
            "sys/class/devfreq/17000000.ga10b/device/load",
            "537\n",
        );
        write(root, "sys/class/devfreq/3d00000.host1x/cur_freq", "1\n");
        write(
            root,
            "sys/class/thermal/thermal_zone0/type",
            "cpu-thermal\n",
        );
        write(root, "sys/class/thermal/thermal_zone0/temp", "45000\n");
        write(
            root,
            "sys/class/thermal/thermal_zone1/type",
            "gpu-thermal\n",
        );
        write(root, "sys/class/thermal/thermal_zone1/temp", "47531\n");
        write(
            root,
            "proc/device-tree/model",
            "NVIDIA Jetson AGX Orin Developer Kit\0",
        );
    }

    /// Laid out like an AGX Xavier (L4T 32): gv11b devfreq, load under
    /// /sys/devices/gpu.0, zone `GPU-therm`, no device-tree model.
    fn xavier(root: &Path) {
        write(
            root,
            "sys/class/devfreq/17000000.gv11b/cur_freq",
            "1377000000\n",
        );
        write(
            root,
            "sys/class/devfreq/17000000.gv11b/max_freq",
            "1377000000\n",
        );
        write(root, "sys/devices/gpu.0/load", "1000\n");
        write(root, "sys/class/thermal/thermal_zone1/type", "GPU-therm\n");
        write(root, "sys/class/thermal/thermal_zone1/temp", "51500\n");
    }

    #[test]
    fn gpu_jetson_orin_reads_load_clocks_and_temperature() {
        let dir = tempfile::tempdir().unwrap();
        orin(dir.path());
        let gpu = JetsonGpu::discover(dir.path()).expect("an Orin GPU");
        assert_eq!(
            gpu.name,
            "NVIDIA Jetson AGX Orin Developer Kit (NVIDIA Orin GPU (ga10b))"
        );
        let s = gpu.sample();
        assert_eq!(s.utilization_percent, 53.7);
        assert_eq!((s.clock_mhz, s.max_clock_mhz), (306, 1300));
        assert_eq!(s.temperature_celsius, 47.531);
        assert_eq!(gpu.info().name, gpu.name);
        // Readings follow the files.
        write(
            dir.path(),
            "sys/class/devfreq/17000000.ga10b/device/load",
            "12\n",
        );
        assert_eq!(gpu.sample().utilization_percent, 1.2);
    }

    #[test]
    fn gpu_jetson_xavier_reads_its_own_layout() {
        let dir = tempfile::tempdir().unwrap();
        xavier(dir.path());
        let gpu = JetsonGpu::discover(dir.path()).expect("a Xavier GPU");
        assert_eq!(gpu.name, "NVIDIA Xavier GPU (gv11b)");
        let s = gpu.sample();
        assert_eq!(s.utilization_percent, 100.0);
        assert_eq!(s.clock_mhz, 1377);
        assert_eq!(s.temperature_celsius, 51.5);
    }

    #[test]
    fn gpu_none_on_a_box_without_one_and_unreadable_values_are_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(JetsonGpu::discover(dir.path()), None);
        write(
            dir.path(),
            "sys/class/devfreq/3d00000.host1x/cur_freq",
            "1\n",
        );
        assert_eq!(JetsonGpu::discover(dir.path()), None);
        // A GPU whose files vanish or hold garbage reads as 0, no error.
        write(
            dir.path(),
            "sys/class/devfreq/17000000.ga10b/cur_freq",
            "busy\n",
        );
        let gpu = JetsonGpu::discover(dir.path()).unwrap();
        let s = gpu.sample();
        assert_eq!(
            (s.utilization_percent, s.clock_mhz, s.temperature_celsius),
            (0.0, 0, 0.0)
        );
    }
}
