//! The fleet simulator against the real control plane: every sample it sent
//! is acked, and stored exactly once.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn a_small_simulated_fleet_gets_every_sample_acked_exactly_once() {
    let sim = cp_bin().with_file_name("outpost-fleet-sim");
    assert!(sim.exists(), "build it first: cargo build -p outpost-agent");
    let cp = ControlPlane::start();
    cp.create_workspace("sim", &[]);
    let key = cp.api_key("sim", &[]);
    let out = Command::new(&sim)
        .args(["--rest", &cp.rest, "--server", &cp.grpc_url(), "--ca-file"])
        .arg(cp.ca_path())
        .args(["--workspace", "sim", "--api-key", &key])
        .args(["--devices", "50", "--duration", "3s", "--rate", "2"])
        .env("OUTPOST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
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
        let seqs: Vec<u64> = all_samples(&cp, "sim", &key, id)
            .await
            .iter()
            .map(|s| s["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1),
            "{id}: {seqs:?}"
        );
        stored += seqs.len() as u64;
    }
    assert_eq!(stored, sent);
}
