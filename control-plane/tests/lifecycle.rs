//! Credential lifecycle with the real binaries: disabling and deleting a
//! device cut its live streams; a deleted device's agent wipes its
//! credentials and exits with the decommission status.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn status_of(cp: &ControlPlane, key: &str, device: &str) -> String {
    let (_, b) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), key)
        .await;
    b["status"].as_str().unwrap_or("gone").to_string()
}

async fn online(cp: &ControlPlane, key: &str, device: &str) {
    wait_until("online", TIMEOUT, || async {
        (status_of(cp, key, device).await == "online").then_some(())
    })
    .await;
}

/// Enrolls and runs an agent for a new device; returns (device, agent, state dir).
async fn running_device(cp: &ControlPlane, key: &str) -> (String, AgentProc, tempfile::TempDir) {
    let (device, install_id) = cp.create_device("acme", key, "lifecycle").await;
    let state = tempfile::tempdir().unwrap();
    let out = enroll(cp, &install_id, state.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = AgentProc::run(state.path(), "500ms");
    online(cp, key, &device).await;
    (device, agent, state)
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_cuts_the_session_at_once_and_enabling_lets_it_back() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, mut agent, _state) = running_device(&cp, &key).await;
    let http = reqwest::Client::new();
    let patch = |enabled: bool| {
        http.patch(format!("{}/acme/devices/v2/{device}", cp.rest))
            .bearer_auth(&key)
            .json(&json!({ "enabled": enabled }))
            .send()
    };
    assert_eq!(patch(false).await.unwrap().status(), 200);
    // The session is cut by the PATCH itself, not by a heartbeat timeout.
    wait_until(
        "offline within a second of disabling",
        Duration::from_secs(1),
        || async { (status_of(&cp, &key, &device).await == "offline").then_some(()) },
    )
    .await;
    assert!(
        agent.try_exit().is_none(),
        "a disabled agent keeps running and retrying"
    );

    assert_eq!(patch(true).await.unwrap().status(), 200);
    online(&cp, &key, &device).await;
    assert!(agent.try_exit().is_none());
    let (_, ev) = cp
        .get_json(&format!("/acme/devices/v2/{device}/events"), &key)
        .await;
    let kinds: Vec<&str> = ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for k in ["disabled", "enabled", "disconnected", "connected"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_decommissions_the_agent() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, mut agent, state) = running_device(&cp, &key).await;
    let device_key = std::fs::read_to_string(state.path().join("api-key")).unwrap();
    let resp = reqwest::Client::new()
        .delete(format!("{}/acme/devices/v2/{device}", cp.rest))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let code = wait_until("the agent exits", TIMEOUT, || {
        let st = agent.try_exit();
        async move { st.map(|s| s.code()) }
    })
    .await;
    assert_eq!(code, Some(outpost_agent::EXIT_DECOMMISSIONED as i32));
    for f in ["device.key", "device.crt", "api-key", "identity.json"] {
        assert!(!state.path().join(f).exists(), "{f} must be wiped");
    }
    let (s, _) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &device_key)
        .await;
    assert_eq!(s, 401, "the device's API key is revoked");
    let out = agent_cmd(&["status", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrolled:     no"));
}
