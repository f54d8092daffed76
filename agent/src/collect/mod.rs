//! Reads the box: static facts for the hello, and one telemetry sample per
//! interval, via `sysinfo`; GPUs via NVML and Jetson sysfs ([`gpus`]).

pub mod gpu;
pub mod gpus;
pub mod nvml;

use outpost_proto::v1 as pb;
use sysinfo::{Components, Disks, Networks, System};

/// Filesystems that are not a box's storage.
const PSEUDO_FS: &[&str] = &[
    "tmpfs", "devtmpfs", "squashfs", "overlay", "proc", "sysfs", "ramfs",
];

pub struct Collector {
    sys: System,
    disks: Disks,
    networks: Networks,
    components: Components,
    gpus: gpus::Gpus,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read system information: {0}")]
pub struct CollectError(String);

impl Collector {
    pub fn new() -> Result<Self, CollectError> {
        let e = |err: sysinfo::Error| CollectError(err.to_string());
        let mut sys = System::new().map_err(e)?;
        sys.refresh_memory();
        // CPU usage is a difference between two readings: take the first now.
        sys.refresh_cpu_all();
        Ok(Self {
            sys,
            disks: Disks::new_with_refreshed_list().map_err(e)?,
            networks: Networks::new_with_refreshed_list().map_err(e)?,
            components: Components::new_with_refreshed_list().map_err(e)?,
            gpus: {
                // Once per process: NVML is not loaded again (see gpus.rs).
                let g = gpus::Gpus::discover(&sysfs_root());
                g.log_start();
                g
            },
        })
    }

    pub fn facts(&self) -> pb::DeviceFacts {
        let (_, disk_total) = self.root_disk();
        pb::DeviceFacts {
            hostname: System::host_name().unwrap_or_default(),
            os_name: System::name().unwrap_or_default(),
            os_version: System::os_version().unwrap_or_default(),
            kernel_version: System::kernel_version().unwrap_or_default(),
            architecture: System::cpu_arch(),
            cpu_model: self
                .sys
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default(),
            cpu_cores: self.sys.cpus().len() as u32,
            memory_total_bytes: self.sys.total_memory(),
            disk_total_bytes: disk_total,
            gpus: self.gpus.facts(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// One reading of everything; `seq` is assigned by the outbox.
    pub fn sample(&mut self, timestamp_unix_ms: i64) -> pb::Sample {
        self.sys.refresh_memory();
        self.sys.refresh_cpu_usage();
        self.disks.refresh(true);
        self.networks.refresh(true);
        self.components.refresh(true);
        let (disk_used, disk_total) = self.root_disk();
        let (rx, tx) = self
            .networks
            .iter()
            .filter(|(name, _)| name.as_os_str() != "lo")
            .fold((0u64, 0u64), |(rx, tx), (_, n)| {
                (
                    rx.saturating_add(n.total_received()),
                    tx.saturating_add(n.total_transmitted()),
                )
            });
        let load = System::load_average().unwrap_or(sysinfo::LoadAvg {
            one: 0.0,
            five: 0.0,
            fifteen: 0.0,
        });
        let temperatures = self
            .components
            .iter()
            .filter_map(|c| {
                c.temperature()
                    .filter(|t| t.is_finite())
                    .map(|celsius| pb::Temperature {
                        sensor: c.label().to_string(),
                        celsius,
                    })
            })
            // The control plane refuses a sample with more (a poisoned
            // record would block the stream).
            .take(outpost_proto::MAX_TEMPERATURES_PER_SAMPLE)
            .collect();
        pb::Sample {
            seq: 0,
            timestamp_unix_ms,
            cpu_percent: finite(self.sys.global_cpu_usage()),
            memory_used_bytes: self.sys.used_memory(),
            memory_total_bytes: self.sys.total_memory(),
            swap_used_bytes: self.sys.used_swap(),
            swap_total_bytes: self.sys.total_swap(),
            disk_used_bytes: disk_used,
            disk_total_bytes: disk_total,
            network_rx_bytes: rx,
            network_tx_bytes: tx,
            load_average_1m: load.one,
            load_average_5m: load.five,
            load_average_15m: load.fifteen,
            temperatures,
            gpus: self.gpus.sample(),
            uptime_secs: System::uptime().unwrap_or(0),
        }
    }

    /// (used, total) bytes of the filesystem mounted at `/`, or of the
    /// largest real filesystem when `/` is not listed (containers).
    fn root_disk(&self) -> (u64, u64) {
        let real = || {
            self.disks.iter().filter(|d| {
                let fs = d.file_system().to_string_lossy();
                !PSEUDO_FS.contains(&fs.as_ref())
            })
        };
        let disk = self
            .disks
            .iter()
            .find(|d| d.mount_point() == std::path::Path::new("/"))
            .or_else(|| real().max_by_key(|d| d.total_space()));
        match disk {
            Some(d) => (
                d.total_space().saturating_sub(d.available_space()),
                d.total_space(),
            ),
            None => (0, 0),
        }
    }
}

/// Where /sys and /proc are read: `OUTPOST_SYSFS_ROOT`, or `/`
/// (containers with the host's mounted elsewhere; tests with a fake tree).
pub fn sysfs_root() -> std::path::PathBuf {
    std::env::var_os("OUTPOST_SYSFS_ROOT")
        .unwrap_or_else(|| "/".into())
        .into()
}

/// NaN and infinities become 0: the control plane refuses them.
fn finite(v: f32) -> f32 {
    if v.is_finite() { v } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meminfo_total_bytes() -> u64 {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap();
        let line = text.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    #[test]
    fn sample_reads_this_machine() {
        let mut c = Collector::new().unwrap();
        let s = c.sample(1);
        assert_eq!(s.memory_total_bytes, meminfo_total_bytes());
        assert!(s.memory_used_bytes > 0 && s.memory_used_bytes <= s.memory_total_bytes);
        assert!(s.disk_total_bytes > 0 && s.disk_used_bytes <= s.disk_total_bytes);
        assert!((0.0..=100.0).contains(&s.cpu_percent));
        assert!(s.uptime_secs > 0);
        let f = c.facts();
        assert_eq!(f.memory_total_bytes, meminfo_total_bytes());
        assert!(f.cpu_cores >= 1);
        assert!(!f.architecture.is_empty());
    }
}
