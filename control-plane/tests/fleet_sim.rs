//! The fleet simulator against the real control plane: every sample it sent
//! is acked, and stored exactly once.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// The simulator against `cp`'s workspace `sim` with `key`.
fn sim_command(cp: &ControlPlane, key: &str) -> Command {
    let sim = cp_bin().with_file_name("outpost-fleet-sim");
    assert!(sim.exists(), "build it first: cargo build -p outpost-agent");
    let mut c = Command::new(&sim);
    c.args(["--rest", &cp.rest, "--server", &cp.grpc_url(), "--ca-file"])
        .arg(cp.ca_path())
        .args(["--workspace", "sim", "--api-key", key]);
    c
}

/// Runs the simulator with `args` to its end; its JSON summary (the last
/// line it prints).
fn run_sim(cp: &ControlPlane, key: &str, args: &[&str]) -> Value {
    let out = sim_command(cp, key)
        .args(args)
        .env("OUTPOST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_simulated_fleet_gets_every_sample_acked_exactly_once() {
    let cp = ControlPlane::start();
    cp.create_workspace("sim", &[]);
    let key = cp.api_key("sim", &[]);
    let summary = run_sim(
        &cp,
        &key,
        &["--devices", "50", "--duration", "3s", "--rate", "2"],
    );
    assert_eq!(summary["devices"], 50);
    assert_eq!(summary["failed_devices"], 0, "{summary}");
    let sent = summary["samples_sent"].as_u64().unwrap();
    assert!(sent >= 50 * 4, "{summary}");
    assert_eq!(summary["samples_acked"], sent, "{summary}");
    for k in [
        "acked_per_sec",
        "ack_p50_ms",
        "ack_p99_ms",
        "enroll_per_sec",
    ] {
        assert!(
            summary[k].as_f64().is_some_and(|v| v > 0.0),
            "{k}: {summary}"
        );
    }
    // Stored exactly once: per device, seqs 1..=k without a gap or repeat,
    // and the total is what was sent.
    let (_, list) = cp.get_json("/sim/devices/v2?limit=100", &key).await;
    let devices = list["data"].as_array().unwrap();
    assert_eq!(devices.len(), 50);
    let mut stored = 0;
    for d in devices {
        let id = d["id"].as_str().unwrap();
        stored += contiguous_samples(&cp, &key, id).await;
    }
    assert_eq!(stored, sent);
}

/// A small reconnect storm: the control plane restarts under a connected
/// fleet; every device comes back by itself (the agent's backoff), nothing
/// fails for a reason other than the refused connections while it was
/// down, and every sample is still stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_fleet_comes_back_after_a_restart_with_nothing_lost() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cp");
    let mut cp = ControlPlane::start_in(&data, &[]);
    cp.create_workspace("sim", &[]);
    let key = cp.api_key("sim", &[]);
    let mut child = sim_command(&cp, &key)
        .args([
            "--devices",
            "20",
            "--duration",
            "8s",
            "--rate",
            "2",
            "--reconnect",
        ])
        .env("OUTPOST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("the fleet starts streaming");
        if line.contains("streaming") {
            break;
        }
    }
    // Some samples acked before the restart.
    wait_until("samples stored before the restart", TIMEOUT, || async {
        let (_, list) = cp.get_json("/sim/devices/v2?limit=1", &key).await;
        list["data"][0]["latest_telemetry"]["seq"]
            .as_u64()
            .filter(|s| *s >= 2)
    })
    .await;
    let (rest, grpc) = cp.addrs();
    assert!(cp.stop().success());
    let cp = ControlPlane::start_at(&data, &rest, &grpc, &[]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let errors: Vec<String> = rx.try_iter().filter(|l| l.contains("WARN")).collect();
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["failed_devices"], 0, "{summary}");
    assert_eq!(
        summary["reconnects"], 20,
        "every device came back once: {summary}"
    );
    assert_eq!(summary["connect_errors_other"], 0, "{summary} {errors:?}");
    assert!(
        summary["all_back_secs"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    let sent = summary["samples_sent"].as_u64().unwrap();
    assert_eq!(summary["samples_acked"], sent, "{summary}");
    let (_, list) = cp.get_json("/sim/devices/v2?limit=100", &key).await;
    let mut stored = 0;
    for d in list["data"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        stored += contiguous_samples(&cp, &key, id).await;
    }
    assert_eq!(stored, sent, "stored exactly once across the restart");
}

/// `--backfill`: a month-old spool (here two days at 1 min) through the
/// real ingest path. Every sample is acked and stored once, at the
/// timestamps it carries, and the bucketed views count them from the
/// rollup tiers.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_sends_the_past_at_its_interval_and_ends_when_all_is_acked() {
    let cp = ControlPlane::start();
    cp.create_workspace("sim", &[]);
    let key = cp.api_key("sim", &[]);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let summary = run_sim(
        &cp,
        &key,
        &["--devices", "3", "--backfill", "2d", "--interval", "1m"],
    );
    assert_eq!(summary["samples_per_device"], 2 * 1440, "{summary}");
    assert_eq!(summary["samples_sent"], 3 * 2 * 1440, "{summary}");
    assert_eq!(summary["samples_acked"], 3 * 2 * 1440, "{summary}");
    let from = summary["from_unix_ms"].as_i64().unwrap();
    assert!(
        (from - (before - 2 * 86_400_000)).abs() < 60_000,
        "{summary}"
    );
    let ids: Vec<String> = summary["device_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        // Seqs 1..=2880 each stored once: the newest is 2880 and the tier
        // below counts 2880 distinct stored samples. (Not paged through
        // raw: the telemetry read limit would make that slow.)
        let (_, dev) = cp.get_json(&format!("/sim/devices/v2/{id}"), &key).await;
        assert_eq!(dev["latest_telemetry"]["seq"], 2 * 1440, "{dev}");
        let counted = |period: &'static str| {
            let (cp, key, id) = (&cp, &key, id.clone());
            async move {
                let path = format!("/sim/devices/v2/{id}/telemetry?time_period={period}");
                let (_, b) = cp.get_json(&path, key).await;
                let n: u64 = b["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["samples"].as_u64().unwrap())
                    .sum();
                (n, b["source"].clone())
            }
        };
        let (week, source) = counted("7d").await;
        assert_eq!(week, 2 * 1440, "the hour tier counts every sample");
        assert_eq!(source, "1h");
        // Spread over the two days: the last 24 hours (to the end of the
        // current quarter hour) hold half of them.
        let (day, source) = counted("24h").await;
        assert!((1440 - 16..=1440 + 1).contains(&day), "{day}");
        assert_eq!(source, "1m");
    }
}

/// Checks a device's stored seqs are 1..=k with no gap or repeat; returns k.
async fn contiguous_samples(cp: &ControlPlane, key: &str, id: &str) -> u64 {
    let seqs: Vec<u64> = all_samples(cp, "sim", key, id)
        .await
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1),
        "{id}: {seqs:?}"
    );
    seqs.len() as u64
}
