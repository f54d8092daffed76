//! Nothing lost: the real binaries under crashes, outages, a full spool and
//! flipped bytes on disk.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

struct Setup {
    cp: ControlPlane,
    key: String,
    device: String,
    state: tempfile::TempDir,
    data: PathBuf,
    _tmp: tempfile::TempDir,
}

async fn setup(name: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cp = ControlPlane::start_in(&data, &[]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, name).await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    Setup {
        cp,
        key,
        device,
        state,
        data,
        _tmp: tmp,
    }
}

/// Appends `line N` lines to a file, one per call.
struct LogWriter {
    path: PathBuf,
    written: u64,
}

impl LogWriter {
    fn new(path: PathBuf) -> Self {
        std::fs::File::create(&path).unwrap();
        Self { path, written: 0 }
    }
    fn write(&mut self, n: u64) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap();
        for _ in 0..n {
            self.written += 1;
            writeln!(f, "line {}", self.written).unwrap();
        }
    }
    /// logrotate's default: rename, then a new file at the path.
    fn rotate(&mut self) {
        std::fs::rename(&self.path, self.path.with_extension("log.1")).unwrap();
        std::fs::File::create(&self.path).unwrap();
    }
    fn expected(&self) -> Vec<String> {
        (1..=self.written).map(|i| format!("line {i}")).collect()
    }
}

/// The follower starts at the end of the file, so lines written before it
/// runs are not shipped: markers are written until one is acknowledged.
async fn follower_running(state: &Path, log: &LogWriter) {
    wait_until("the log follower runs", TIMEOUT, || async {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log.path)
            .unwrap();
        writeln!(f, "marker").unwrap();
        let s = status_json(state);
        (s["spool"]["logs_acked_seq"].as_u64() >= Some(1)).then_some(())
    })
    .await;
}

/// Waits until the agent has every line acknowledged.
async fn logs_acked(state: &Path, lines: u64) {
    wait_until(&format!("{lines} log lines acked"), TIMEOUT, || async {
        let s = status_json(state);
        (s["spool"]["logs_acked_seq"].as_u64() >= Some(lines)).then_some(())
    })
    .await;
}

fn seqs(samples: &[Value]) -> Vec<u64> {
    samples.iter().map(|s| s["seq"].as_u64().unwrap()).collect()
}

/// The counted lines (markers left out; there must be some).
fn messages(logs: &[Value]) -> Vec<String> {
    let all: Vec<String> = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    let markers = all.iter().take_while(|m| *m == "marker").count();
    assert!(markers >= 1, "{all:?}");
    all[markers..].to_vec()
}

/// How many lines the agent has spooled in all (markers included).
fn logs_spooled(state: &Path) -> u64 {
    let s = status_json(state);
    s["spool"]["logs_acked_seq"].as_u64().unwrap_or(0)
        + s["spool"]["logs_pending"].as_u64().unwrap_or(0)
}

fn contiguous_from_one(seqs: &[u64]) -> bool {
    seqs.first() == Some(&1) && seqs.windows(2).all(|w| w[1] == w[0] + 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_killed_for_ten_seconds_loses_no_sample_and_no_log_line() {
    let Setup {
        mut cp,
        key,
        device,
        state,
        data,
        _tmp,
    } = setup("chaos-cp").await;
    let logs = tempfile::tempdir().unwrap();
    let mut log = LogWriter::new(logs.path().join("app.log"));
    let log_arg = log.path.to_str().unwrap().to_string();
    let _agent = AgentProc::run_with(state.path(), "1s", &["--log-file", &log_arg], &[]);
    follower_running(state.path(), &log).await;
    let markers = logs_spooled(state.path());
    log.write(20);

    let (rest, grpc) = cp.addrs();
    cp.kill9();
    drop(cp);
    // ~10 s down while samples and lines pile up (and the file rotates).
    for i in 0..10 {
        log.write(15);
        if i == 5 {
            log.rotate();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let pending = status_json(state.path())["spool"]["pending"]
        .as_u64()
        .unwrap();
    assert!(pending >= 5, "samples spooled during the outage: {pending}");

    let cp = ControlPlane::start_at(&data, &rest, &grpc, &[]);
    log.write(10);
    logs_acked(state.path(), markers + log.written).await;
    wait_until("samples of the outage stored", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["spool"]["pending"] == 0 && s["acked_seq"].as_u64() >= Some(12)).then_some(())
    })
    .await;
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs = seqs(&samples);
    assert!(contiguous_from_one(&seqs), "every seq once: {seqs:?}");
    let stored = all_logs(&cp, "acme", &key, &device).await;
    assert_eq!(
        messages(&stored),
        log.expected(),
        "every line once, in order"
    );
    assert_eq!(stored[0]["service"], "app.log");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_batch_comes_back_without_gap_or_duplicate() {
    let Setup {
        cp,
        key,
        device,
        state,
        _tmp,
        ..
    } = setup("chaos-agent").await;
    let logs = tempfile::tempdir().unwrap();
    let mut log = LogWriter::new(logs.path().join("app.log"));
    let log_arg = log.path.to_str().unwrap().to_string();
    let args = ["--log-file", log_arg.as_str()];
    let mut agent = AgentProc::run_with(state.path(), "100ms", &args, &[]);
    follower_running(state.path(), &log).await;
    let markers = logs_spooled(state.path());
    for round in 0..4 {
        // Lines and samples are flowing when the agent dies.
        for _ in 0..5 {
            log.write(40);
            tokio::time::sleep(Duration::from_millis(50 + 37 * round)).await;
        }
        agent.kill9();
        log.write(25); // written while the agent is dead
        agent = AgentProc::run_with(state.path(), "100ms", &args, &[]);
    }
    log.write(5);
    logs_acked(state.path(), markers + log.written).await;
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs = seqs(&samples);
    assert!(seqs.len() > 10, "{seqs:?}");
    assert!(contiguous_from_one(&seqs), "no gap, no duplicate: {seqs:?}");
    let stored = all_logs(&cp, "acme", &key, &device).await;
    assert_eq!(messages(&stored), log.expected());
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_spool_overflowing_during_an_outage_counts_the_drops_exactly() {
    let Setup {
        mut cp,
        key,
        device,
        state,
        data,
        _tmp,
    } = setup("chaos-full").await;
    let _agent = AgentProc::run_with(state.path(), "100ms", &["--spool-max-bytes", "64KiB"], &[]);
    wait_until("connected", TIMEOUT, || async {
        (status_json(state.path())["acked_seq"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    let (rest, grpc) = cp.addrs();
    cp.kill9();
    drop(cp);
    // 16 KiB for telemetry: at 10 samples/s it overflows within seconds.
    wait_until("the spool overflows", TIMEOUT, || async {
        (status_json(state.path())["spool"]["dropped"].as_u64() >= Some(30)).then_some(())
    })
    .await;
    // Every sample taken so far (and dropped or kept) is below this seq.
    let backlog_end = status_json(state.path())["next_seq"].as_u64().unwrap() - 1;
    let cp = ControlPlane::start_at(&data, &rest, &grpc, &[]);
    // Drained: the store acknowledged everything kept through the outage.
    // (Not "pending is small": sampling goes on at 10/s, and on a loaded
    // machine a few samples are always waiting for their ack.)
    let st = wait_until("drained", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["link"] == "connected" && s["acked_seq"].as_u64() >= Some(backlog_end)).then_some(s)
    })
    .await;
    let dropped = st["spool"]["dropped"].as_u64().unwrap();
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs = seqs(&samples);
    let last = *seqs.last().unwrap();
    // Every seq up to the last stored is either stored or counted as dropped,
    // and what was dropped is the oldest of the outage: one run of seqs.
    let missing: Vec<u64> = (1..=last).filter(|s| !seqs.contains(s)).collect();
    assert_eq!(missing.len() as u64, dropped, "{missing:?}");
    assert!(missing.windows(2).all(|w| w[1] == w[0] + 1), "{missing:?}");
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "no duplicate");
    // Reported to the control plane: the device's events add up to it.
    let total = wait_until("loss reported", TIMEOUT, || async {
        let (_, ev) = cp
            .get_json(&format!("/acme/devices/v2/{device}/events?limit=500"), &key)
            .await;
        let sum: u64 = ev["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "data_lost")
            .map(|e| e["detail"]["telemetry_dropped"].as_u64().unwrap())
            .sum();
        (sum == dropped).then_some(sum)
    })
    .await;
    assert_eq!(total, missing.len() as u64);
}

/// Offsets of the records in a spool segment (by their magic, "OPS1").
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let magic = 0x4f50_5331u32.to_le_bytes();
    (0..bytes.len().saturating_sub(4))
        .filter(|&i| bytes[i..i + 4] == magic)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_bytes_in_the_spool_are_skipped_and_counted() {
    let Setup {
        mut cp,
        key,
        device,
        state,
        data,
        _tmp,
    } = setup("chaos-bits").await;
    let (rest, grpc) = cp.addrs();
    cp.stop();
    drop(cp);
    // Offline: samples go to the spool only.
    let mut agent = AgentProc::run(state.path(), "100ms");
    wait_until("20 samples spooled", TIMEOUT, || async {
        (status_json(state.path())["spool"]["pending"].as_u64() >= Some(20)).then_some(())
    })
    .await;
    assert!(agent.terminate().success());
    let pending = status_json(state.path())["spool"]["pending"]
        .as_u64()
        .unwrap();
    let dir = state.path().join("spool/telemetry");
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    assert!(offsets.len() >= 12, "{}", offsets.len());
    bytes[offsets[3] + 30] ^= 0x10; // a payload byte of the 4th record
    bytes[offsets[9] + 13] ^= 0x01; // the length of the 10th
    std::fs::write(&seg, &bytes).unwrap();

    let cp = ControlPlane::start_at(&data, &rest, &grpc, &[]);
    let _agent = AgentProc::run(state.path(), "1h");
    let st = wait_until("the rest delivered", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["link"] == "connected" && s["spool"]["pending"] == 0).then_some(s)
    })
    .await;
    assert_eq!(st["spool"]["corrupt"], 2, "{st}");
    let seqs = seqs(&all_samples(&cp, "acme", &key, &device).await);
    assert_eq!(seqs.len() as u64, pending - 2, "{seqs:?}");
    assert!(!seqs.contains(&4) && !seqs.contains(&10), "{seqs:?}");
    wait_until("corruption reported", TIMEOUT, || async {
        let (_, ev) = cp
            .get_json(&format!("/acme/devices/v2/{device}/events?limit=500"), &key)
            .await;
        ev["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "data_lost" && e["detail"]["corrupt"] == 2)
            .then_some(())
    })
    .await;
}
