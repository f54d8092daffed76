//! The agent binary's command line: bad input gets a clear line and the
//! documented exit status.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(args)
        .env_remove("OUTPOST_SERVER")
        .env_remove("OUTPOST_INSTALL_ID")
        .output()
        .expect("run outpost-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn enroll_without_its_inputs_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&["enroll", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(outpost_agent::EXIT_CONFIG as i32));
    assert!(stderr(&out).contains("--install-id"), "{}", stderr(&out));
}

#[test]
fn a_plaintext_server_url_is_refused() {
    let out = agent(&[
        "enroll",
        "--server",
        "http://cp:8443",
        "--install-id",
        "inst_x",
    ]);
    assert_eq!(out.status.code(), Some(outpost_agent::EXIT_CONFIG as i32));
    assert!(stderr(&out).contains("https://"), "{}", stderr(&out));
}

#[test]
fn run_without_enrollment_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&["run", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(outpost_agent::EXIT_CONFIG as i32));
    assert!(stderr(&out).contains("not enrolled"), "{}", stderr(&out));
}

#[test]
fn status_of_a_fresh_box() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&["status", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrolled:     no"));
}

#[test]
fn unknown_config_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "intervall = \"5s\"\n").unwrap();
    let out = agent(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(outpost_agent::EXIT_CONFIG as i32));
    assert!(stderr(&out).contains("intervall"), "{}", stderr(&out));
}

#[test]
fn an_unreachable_server_is_reported_not_hung() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let fp = format!("sha256:{}", "00".repeat(32));
    let out = agent(&[
        "enroll",
        "--server",
        &format!("https://127.0.0.1:{port}"),
        "--install-id",
        "inst_0",
        "--ca-fingerprint",
        &fp,
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

/// Every exit status that restarting cannot fix is in the unit's
/// `RestartPreventExitStatus=`, so systemd does not loop on a deleted box.
#[test]
fn the_systemd_unit_does_not_restart_on_final_exit_statuses() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/outpost-agent.service"
    ))
    .unwrap();
    let listed: Vec<u8> = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .expect("RestartPreventExitStatus= in the unit")
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    for code in [
        outpost_agent::EXIT_CONFIG,
        outpost_agent::EXIT_ENROLL_REFUSED,
        outpost_agent::EXIT_DECOMMISSIONED,
        outpost_agent::EXIT_CREDENTIALS_EXPIRED,
    ] {
        assert!(listed.contains(&code), "{code} missing from {listed:?}");
    }
    assert!(unit.contains("Restart=on-failure"));
}

fn agent_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run outpost-agent")
}

/// `outpost-agent gpus` on a box without a GPU: one line, exit 0, no error.
#[test]
fn gpu_command_on_a_box_without_one() {
    let empty = tempfile::tempdir().unwrap();
    let root = empty.path().to_str().unwrap();
    let env = [
        ("OUTPOST_SYSFS_ROOT", root),
        ("OUTPOST_NVML_LIBRARY", "off"),
    ];
    let out = agent_env(&["gpus"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("no GPU (NVML turned off"), "{text}");
    // A library that is not there is the same answer, not an error.
    let env = [
        ("OUTPOST_SYSFS_ROOT", root),
        (
            "OUTPOST_NVML_LIBRARY",
            "libnvidia-ml-outpost-test-missing.so.1",
        ),
    ];
    let out = agent_env(&["gpus", "--json"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["gpus"], serde_json::json!([]));
    assert!(
        j["nvml"].as_str().unwrap().starts_with("no NVML library"),
        "{j}"
    );
}

/// `outpost-agent gpus --json` on a Jetson (a fake sysfs tree).
#[test]
fn gpu_command_reads_a_jetson() {
    let dir = tempfile::tempdir().unwrap();
    for (rel, text) in [
        ("sys/class/devfreq/17000000.ga10b/cur_freq", "918000000\n"),
        ("sys/class/devfreq/17000000.ga10b/max_freq", "1300500000\n"),
        ("sys/class/devfreq/17000000.ga10b/device/load", "421\n"),
    ] {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let env = [
        ("OUTPOST_SYSFS_ROOT", dir.path().to_str().unwrap()),
        ("OUTPOST_NVML_LIBRARY", "off"),
    ];
    let out = agent_env(&["gpus", "--json"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["facts"][0]["name"], "NVIDIA Orin GPU (ga10b)", "{j}");
    assert_eq!(j["gpus"][0]["sample"]["clock_mhz"], 918, "{j}");
    assert_eq!(j["gpus"][0]["nvml"], serde_json::Value::Null, "{j}");
}
