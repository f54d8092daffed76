//! Reads the box: static facts for the hello, and one telemetry sample per
//! interval, via `sysinfo`; GPUs via NVML and Jetson sysfs ([`gpus`]).

pub mod gpus;
pub mod jetson;
pub mod nvml;

use outpost_proto::v1 as pb;
use sysinfo::{Components, DiskRefreshKind, Disks, Networks, System};

/// Filesystems that are not a box's storage.
const PSEUDO_FS: &[&str] = &[
    "tmpfs", "devtmpfs", "squashfs", "overlay", "proc", "sysfs", "ramfs",
];

/// Samples between re-listings of disks and temperature sensors; in between
/// only the listed ones are read (re-listing walks /proc/mounts and every
/// hwmon directory: most of a sample's cost).
const RELIST_EVERY: u32 = 30;

pub struct Collector {
    sys: System,
    disks: Disks,
    networks: Networks,
    components: Components,
    gpus: gpus::Gpus,
    /// Samples left until the next re-listing.
    until_relist: u32,
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
            until_relist: RELIST_EVERY,
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
        if self.until_relist == 0 {
            self.disks.refresh(true);
            self.components.refresh(true);
            self.until_relist = RELIST_EVERY;
        } else {
            for d in &mut self.disks {
                d.refresh_specifics(DiskRefreshKind::nothing().with_storage());
            }
            for c in self.components.iter_mut() {
                c.refresh();
            }
            self.until_relist -= 1;
        }
        let (disk_used, disk_total) = self.root_disk();
        // One read of /proc/net/dev; sysinfo (a file per counter and
        // interface, plus getifaddrs) where it cannot be read.
        let (rx, tx) = match std::fs::read_to_string("/proc/net/dev")
            .ok()
            .and_then(|t| net_dev_totals(&t))
        {
            Some(totals) => totals,
            None => {
                self.networks.refresh(true);
                self.networks
                    .iter()
                    .filter(|(name, _)| name.as_os_str() != "lo")
                    .fold((0u64, 0u64), |(rx, tx), (_, n)| {
                        (
                            rx.saturating_add(n.total_received()),
                            tx.saturating_add(n.total_transmitted()),
                        )
                    })
            }
        };
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

/// Bytes received and sent since boot over every interface but loopback,
/// from the text of `/proc/net/dev`; `None` when it does not parse.
fn net_dev_totals(text: &str) -> Option<(u64, u64)> {
    let mut totals = (0u64, 0u64);
    let mut seen = false;
    // Two header lines, then `iface: rx_bytes rx_packets … (8 rx) tx_bytes …`.
    for line in text.lines().skip(2) {
        let (name, counters) = line.split_once(':')?;
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if fields.len() < 16 {
            return None;
        }
        seen = true;
        if name.trim() == "lo" {
            continue;
        }
        totals.0 = totals.0.saturating_add(fields[0]);
        totals.1 = totals.1.saturating_add(fields[8]);
    }
    seen.then_some(totals)
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
    fn net_dev_totals_sum_every_interface_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 9000 10 0 0 0 0 0 0 9000 10 0 0 0 0 0 0
  eth0: 1500 20 0 0 0 0 0 0 700 5 0 0 0 0 0 0
 wlan0: 500 2 0 0 0 0 0 0 300 1 0 0 0 0 0 0
";
        assert_eq!(net_dev_totals(text), Some((2000, 1000)));
        assert_eq!(
            net_dev_totals("header\nheader\n"),
            None,
            "no interface at all"
        );
        assert_eq!(net_dev_totals("h\nh\n eth0: 1 2 3\n"), None, "a short line");
        // This machine's file parses.
        let real = std::fs::read_to_string("/proc/net/dev").unwrap();
        assert!(net_dev_totals(&real).is_some(), "{real}");
    }

    #[test]
    fn listed_disks_and_sensors_are_reread_between_relistings() {
        let mut c = Collector::new().unwrap();
        let first = c.sample(1);
        for _ in 0..RELIST_EVERY + 2 {
            let s = c.sample(2);
            assert_eq!(s.disk_total_bytes, first.disk_total_bytes);
            assert!(s.disk_used_bytes > 0);
            assert_eq!(s.temperatures.len(), first.temperatures.len());
        }
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
