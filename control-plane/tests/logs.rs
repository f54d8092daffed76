//! Logs from journald end to end: a `journalctl` stand-in (the agent runs
//! `journalctl --follow --output=json`; this machine has no journal to read),
//! the real agent and control plane, the logs REST route with its filters.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

const FAKE_JOURNALCTL: &str = r#"#!/bin/sh
# First start: three entries, then follow forever. A restart resumes after
# the cursor and has nothing new.
for a in "$@"; do
  case "$a" in --after-cursor=*) exec sleep 3600 ;; esac
done
echo '{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"1700000000000000","PRIORITY":"6","MESSAGE":"started"}'
echo '{"__CURSOR":"c2","__REALTIME_TIMESTAMP":"1700000001000000","PRIORITY":"3","MESSAGE":"disk failed"}'
echo '{"__CURSOR":"c3","__REALTIME_TIMESTAMP":"1700000002000000","PRIORITY":"4","MESSAGE":[104,105]}'
exec sleep 3600
"#;

#[tokio::test(flavor = "multi_thread")]
async fn journald_lines_arrive_with_their_severity_and_filter_by_it() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "journal").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("journalctl");
    std::fs::write(&fake, FAKE_JOURNALCTL).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _agent = AgentProc::run_with(
        state.path(),
        "1s",
        &["--journal-unit", "camera.service"],
        &[("OUTPOST_JOURNALCTL", fake.to_str().unwrap())],
    );
    wait_until("three lines acked", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["spool"]["logs_acked_seq"].as_u64() >= Some(3)).then_some(())
    })
    .await;
    let logs = all_logs(&cp, "acme", &key, &device).await;
    let got: Vec<(&str, &str, &str, &str)> = logs
        .iter()
        .map(|l| {
            (
                l["timestamp"].as_str().unwrap(),
                l["service"].as_str().unwrap(),
                l["severity"].as_str().unwrap(),
                l["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "2023-11-14T22:13:20.000Z",
                "camera.service",
                "info",
                "started"
            ),
            (
                "2023-11-14T22:13:21.000Z",
                "camera.service",
                "error",
                "disk failed"
            ),
            (
                "2023-11-14T22:13:22.000Z",
                "camera.service",
                "warning",
                "hi"
            ),
        ]
    );
    let (status, errors) = cp
        .get_json(
            &format!("/acme/devices/v2/{device}/logs?severity=warning&service=camera.service"),
            &key,
        )
        .await;
    assert_eq!(status, 200, "{errors}");
    let msgs: Vec<&str> = errors["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        msgs,
        vec!["hi", "disk failed"],
        "warning and above, newest first"
    );
}
