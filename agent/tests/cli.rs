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
