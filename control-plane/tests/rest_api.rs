//! The operator REST API's rules for authentication, scopes, isolation and
//! input errors, against the control plane started in process.

mod common;

use common::*;
use reqwest::Client;
use serde_json::{Value, json};

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_oauth_401(status: u16, body: &Value) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["status"], 401);
    assert_eq!(body["error"]["type"], "OAuthException");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"]["hint"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn health_probes_answer() {
    let cp = ControlPlane::in_process().await;
    let http = Client::new();
    let (s, _) = send(http.get(format!("{}/healthz", cp.rest))).await;
    assert_eq!(s, 200);
    let (s, _) = send(http.get(format!("{}/readyz", cp.rest))).await;
    assert_eq!(s, 200);
    let (s, doc) = send(http.get(format!("{}/openapi.json", cp.rest))).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let committed: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(doc, committed, "served document equals docs/openapi.json");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_checked_with_the_documented_error_bodies() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    cp.create_workspace("globex", &[]);
    let key = cp.api_key("acme", &[]);
    let other_key = cp.api_key("globex", &[]);
    let http = Client::new();
    let list = format!("{}/acme/devices/v2", cp.rest);

    let (s, b) = send(http.get(&list)).await;
    assert_oauth_401(s, &b);
    let (s, b) = send(http.get(format!("{list}?api_key=opk_wrong"))).await;
    assert_oauth_401(s, &b);
    let (s, b) = send(http.get(&list).bearer_auth(&other_key)).await;
    assert_oauth_401(s, &b);
    let (s, b) = send(
        http.get(&list)
            .header("Authorization", format!("Basic {key}")),
    )
    .await;
    assert_oauth_401(s, &b);

    // Both ways of presenting a key work.
    let (s, _) = send(http.get(format!("{list}?api_key={key}"))).await;
    assert_eq!(s, 200);
    let (s, _) = send(http.get(&list).bearer_auth(&key)).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_and_device_bound_keys_are_enforced() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let admin = cp.api_key("acme", &[]);
    let reader = cp.api_key("acme", &["device:read"]);
    let writer = cp.api_key("acme", &["device:update"]);
    let http = Client::new();
    let list = format!("{}/acme/devices/v2", cp.rest);

    let (s, b) = send(
        http.post(&list)
            .bearer_auth(&reader)
            .json(&json!({"device_name": "x"})),
    )
    .await;
    assert_eq!(s, 403);
    assert!(
        b["error"].as_str().unwrap().contains("device:update"),
        "{b}"
    );
    let (s, b) = send(http.get(&list).bearer_auth(&writer)).await;
    assert_eq!(s, 403);
    assert!(b["error"].as_str().unwrap().contains("device:read"), "{b}");
    let (s, _) = send(
        http.post(&list)
            .bearer_auth(&writer)
            .json(&json!({"device_name": "w"})),
    )
    .await;
    assert_eq!(s, 201);

    // A device-scoped key, as minted at enrollment.
    let (device, install_id) = cp.create_device("acme", &admin, "bound").await;
    let (other_device, _) = cp.create_device("acme", &admin, "other").await;
    let state = tempfile::tempdir().unwrap();
    let out = enroll(&cp, &install_id, state.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device_key = std::fs::read_to_string(state.path().join("api-key")).unwrap();

    let (s, b) = send(
        http.get(format!("{list}/{device}"))
            .bearer_auth(&device_key),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["id"], device.as_str());
    let (s, _) = send(
        http.get(format!("{list}/{device}/telemetry/raw"))
            .bearer_auth(&device_key),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = send(
        http.get(format!("{list}/{other_device}"))
            .bearer_auth(&device_key),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let (s, _) = send(http.get(&list).bearer_auth(&device_key)).await;
    assert_eq!(s, 403);
    let (s, _) = send(
        http.post(&list)
            .bearer_auth(&device_key)
            .json(&json!({"device_name": "y"})),
    )
    .await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_workspaces_device_is_not_found() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    cp.create_workspace("globex", &[]);
    let acme = cp.api_key("acme", &[]);
    let globex = cp.api_key("globex", &[]);
    let (device, _) = cp.create_device("globex", &globex, "theirs").await;
    let (s, b) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &acme)
        .await;
    assert_eq!(s, 404);
    assert!(b["error"].is_string(), "{b}");
    let (s, _) = cp
        .get_json(&format!("/acme/devices/v2/{device}/telemetry/raw"), &acme)
        .await;
    assert_eq!(s, 404);
    let (s, _) = cp
        .get_json(&format!("/globex/devices/v2/{device}"), &globex)
        .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_validates_its_body_and_gates_ai1() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    cp.create_workspace("aio", &["deviceAio"]);
    let key = cp.api_key("acme", &[]);
    let aio_key = cp.api_key("aio", &[]);
    let http = Client::new();
    let url = format!("{}/acme/devices/v2", cp.rest);

    for (body, want) in [
        (json!({}), "device_name"),
        (json!({"device_name": "  "}), "device_name"),
        (
            json!({"device_name": "x", "device_type": "toaster"}),
            "device_type",
        ),
        (json!({"device_name": 5}), "invalid request body"),
    ] {
        let (s, b) = send(http.post(&url).bearer_auth(&key).json(&body)).await;
        assert_eq!(s, 400, "{body} -> {b}");
        assert!(b["error"].as_str().unwrap().contains(want), "{b}");
    }
    let (s, b) = send(
        http.post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(s, 400);
    assert!(b["error"].is_string());

    let (s, b) = send(
        http.post(&url)
            .bearer_auth(&key)
            .json(&json!({"device_name": "a", "device_type": "ai1"})),
    )
    .await;
    assert_eq!(s, 403);
    assert!(b["error"].as_str().unwrap().contains("deviceAio"), "{b}");
    let (s, b) = send(
        http.post(format!("{}/aio/devices/v2", cp.rest))
            .bearer_auth(&aio_key)
            .json(&json!({"device_name": "a", "device_type": "ai1"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert!(b["installId"].as_str().unwrap().starts_with("inst_"));
    let cmd = b["installCommand"].as_str().unwrap();
    assert!(
        cmd.contains(&cp.fingerprint) && cmd.contains(b["installId"].as_str().unwrap()),
        "{cmd}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_page_with_cursors_and_bad_parameters_are_400() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(cp.create_device("acme", &key, &format!("d{i}")).await.0);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, b) = cp
            .get_json(&format!("/acme/devices/v2?limit=2{cursor}"), &key)
            .await;
        assert_eq!(s, 200);
        assert_eq!(b["pagination"]["limit"], 2);
        for d in b["data"].as_array().unwrap() {
            seen.push(d["id"].as_str().unwrap().to_string());
        }
        match b["pagination"]["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(b["pagination"]["has_more"], true);
                cursor = format!("&cursor={c}");
            }
            None => break,
        }
    }
    assert_eq!(seen, ids, "every device once, in creation order");

    let dev = &ids[0];
    for path in [
        "/acme/devices/v2?limit=0".to_string(),
        "/acme/devices/v2?limit=abc".to_string(),
        "/acme/devices/v2?cursor=%%%".to_string(),
        format!("/acme/devices/v2/{dev}/telemetry/raw?start_time=yesterday"),
        format!("/acme/devices/v2/{dev}/telemetry/raw?direction=sideways"),
        format!("/acme/devices/v2/{dev}/telemetry/raw?cursor=bm9wZQ"),
        format!(
            "/acme/devices/v2/{dev}/telemetry/raw?start_time=2026-01-02T00:00:00Z&end_time=2026-01-01T00:00:00Z"
        ),
    ] {
        let (s, b) = cp.get_json(&path, &key).await;
        assert_eq!(s, 400, "{path} -> {b}");
        assert!(b["error"].is_string(), "{path} -> {b}");
    }
    let (s, b) = cp.get_json("/acme/devices/v2/nosuchdevice", &key).await;
    assert_eq!(s, 404, "{b}");
}
