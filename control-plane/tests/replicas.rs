//! Two control-plane replicas on one PostgreSQL database: an agent connected
//! to replica B is reached by what an operator does on replica A. Runs when
//! `OUTPOST_TEST_DATABASE_URL` points at a PostgreSQL server (CI starts one).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn operator_actions_on_replica_a_reach_an_agent_on_replica_b() {
    if std::env::var("OUTPOST_TEST_DATABASE_URL").is_err() {
        eprintln!("skipped: OUTPOST_TEST_DATABASE_URL is not set (no PostgreSQL)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(tmp.path());
    assert_eq!(a.fingerprint, b.fingerprint, "one CA");

    a.create_workspace("acme", &[]);
    let key = a.api_key("acme", &[]);
    // Created on A, enrolled and connected on B.
    let (device, install_id) = a.create_device("acme", &key, "roaming").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&b, &install_id, state.path()).status.success());
    let mut agent = AgentProc::run(state.path(), "300ms");
    async fn status(cp: &ControlPlane, key: &str, device: &str) -> String {
        let (_, d) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), key)
            .await;
        d["status"].as_str().unwrap_or("").to_string()
    }
    wait_until("online, seen from A", TIMEOUT, || async {
        (status(&a, &key, &device).await == "online").then_some(())
    })
    .await;
    wait_until("telemetry stored, read on A", TIMEOUT, || async {
        (all_samples(&a, "acme", &key, &device).await.len() >= 2).then_some(())
    })
    .await;

    // An operator watching on A sees the samples that arrive at B, live
    // (B's commits reach A through LISTEN/NOTIFY; A reads the shared store).
    let path = format!("/acme/devices/v2/{device}/telemetry/stream");
    let mut on_a = SseStream::open(&a, &path, &key, &[]).await;
    let first = on_a.sample(TIMEOUT).await.0;
    for want in first + 1..first + 4 {
        assert_eq!(on_a.sample(TIMEOUT).await.0, want, "in order, none missing");
    }
    drop(on_a);

    // A config change on A reaches the agent on B, which acks it.
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{}/acme/devices/v2/{device}/config", a.rest))
        .bearer_auth(&key)
        .json(&json!({"telemetry_interval_secs": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    wait_until("config applied on B", TIMEOUT, || async {
        let (_, d): (u16, Value) = a
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        (d["config_applied_version"] == d["config_version"]
            && d["config_version"].as_u64() >= Some(2))
        .then_some(())
    })
    .await;

    // Disabling on A cuts the streams on B within a second.
    let patch = |enabled: bool| {
        http.patch(format!("{}/acme/devices/v2/{device}", a.rest))
            .bearer_auth(&key)
            .json(&json!({ "enabled": enabled }))
            .send()
    };
    assert_eq!(patch(false).await.unwrap().status(), 200);
    wait_until(
        "offline within a second",
        Duration::from_secs(1),
        || async { (status(&b, &key, &device).await == "offline").then_some(()) },
    )
    .await;
    assert_eq!(patch(true).await.unwrap().status(), 200);
    wait_until("back online", TIMEOUT, || async {
        (status(&a, &key, &device).await == "online").then_some(())
    })
    .await;

    // Deleting on A decommissions the agent connected to B and ends an
    // operator's stream on B.
    let mut on_b = SseStream::open(&b, &path, &key, &[]).await;
    on_b.sample(TIMEOUT).await;
    let del = http
        .delete(format!("{}/acme/devices/v2/{device}", a.rest))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let exit = wait_until("the agent is told it was deleted", TIMEOUT, || {
        let st = agent.try_exit();
        async move { st }
    })
    .await;
    assert_eq!(exit.code(), Some(outpost_agent::EXIT_DECOMMISSIONED as i32));
    let end = loop {
        let ev = on_b.next(TIMEOUT).await.expect("an end event");
        if ev.event != "sample" {
            break ev;
        }
    };
    assert_eq!(end.json()["reason"], "device_deleted");
    assert!(on_b.next(TIMEOUT).await.is_none());
}

/// Replica A in `dir/a`, and replica B in `dir/b` on the same database with
/// the same CA (copied, as an operator would distribute it).
fn two_replicas(dir: &std::path::Path) -> (ControlPlane, ControlPlane) {
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    let a = ControlPlane::start_in(&dir_a, &[]);
    std::fs::create_dir_all(dir_b.join("pki")).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(dir_a.join("pki").join(f), dir_b.join("pki").join(f)).unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::from_mode(if f == "ca.key" { 0o600 } else { 0o644 });
        std::fs::set_permissions(dir_b.join("pki").join(f), mode).unwrap();
    }
    std::fs::copy(
        dir_a.join(".test-database-url"),
        dir_b.join(".test-database-url"),
    )
    .unwrap();
    let b = ControlPlane::start_in(&dir_b, &[]);
    (a, b)
}

/// An artifact published and rolled out on replica A reaches a box
/// connected to replica B: B pushes the wave (told over the bus), serves
/// the payload from the shared store, and records the report that
/// completes the rollout A shows.
#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_published_on_replica_a_is_installed_by_a_box_on_replica_b() {
    if std::env::var("OUTPOST_TEST_DATABASE_URL").is_err() {
        eprintln!("skipped: OUTPOST_TEST_DATABASE_URL is not set (no PostgreSQL)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(tmp.path());
    a.create_workspace("acme", &[]);
    let key = a.api_key("acme", &[]);
    let (publisher, _) = outpost_common::artifact::SigningKey::generate().unwrap();
    let public = publisher.public_key().to_string();
    a.add_publisher_key("acme", &public);

    let (device, install_id) = a.create_device("acme", &key, "roaming").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&b, &install_id, state.path()).status.success());
    let _agent = AgentProc::run_with(state.path(), "1s", &["--publisher-key", &public], &[]);
    wait_until("online, seen from A", TIMEOUT, || async {
        let (_, d) = a
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        (d["status"] == "online").then_some(())
    })
    .await;

    publish_signed(&a, "acme", &key, &publisher, "detector", "7").await;
    let labelled = reqwest::Client::new()
        .patch(format!("{}/acme/devices/v2/{device}", a.rest))
        .bearer_auth(&key)
        .json(&json!({"labels": {"site": "berlin"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(labelled.status(), 200);
    let resp = reqwest::Client::new()
        .post(format!("{}/acme/devices/v2/rollouts", a.rest))
        .bearer_auth(&key)
        .json(&json!({"artifact": "detector@7", "selector": ["site=berlin"]}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let rollout: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap();
    let done = wait_until("the rollout completed, seen from A", TIMEOUT, || async {
        let (_, r) = a
            .get_json(&format!("/acme/devices/v2/rollouts/{id}"), &key)
            .await;
        (r["state"] == "completed").then_some(r)
    })
    .await;
    assert_eq!(done["devices"][0]["state"], "succeeded", "{done:#}");
    let installed =
        std::fs::read_to_string(state.path().join("artifacts/detector/current/VERSION")).unwrap();
    assert_eq!(installed, "7");
    let (_, d) = a
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    assert_eq!(d["artifacts"]["detector"], "7", "{d:#}");
}
