//! The authorization matrix of reference/000: every route × every kind of
//! caller → the expected status and body shape.

mod common;

use common::*;
use reqwest::{Client, Method};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    NoKey,
    InvalidKey,
    ReadOnly,
    UpdateOnly,
    Legacy,
    OwnDevice,
    OtherDevice,
    OtherWorkspace,
}
use Caller::*;
const CALLERS: [Caller; 8] = [
    NoKey,
    InvalidKey,
    ReadOnly,
    UpdateOnly,
    Legacy,
    OwnDevice,
    OtherDevice,
    OtherWorkspace,
];

#[derive(Clone, Copy, PartialEq)]
enum Need {
    Read,
    Update,
}

/// (method, path after /acme/devices/v2 with {id} for the target, body, scope, per-device, success status)
type Route = (&'static str, &'static str, Option<Value>, Need, bool, u16);

fn routes() -> Vec<Route> {
    vec![
        ("GET", "", None, Need::Read, false, 200),
        (
            "POST",
            "",
            Some(json!({"device_name": "new"})),
            Need::Update,
            false,
            201,
        ),
        ("GET", "/default-config", None, Need::Read, false, 200),
        ("GET", "/{id}", None, Need::Read, true, 200),
        (
            "PATCH",
            "/{id}",
            Some(json!({"description": "d"})),
            Need::Update,
            true,
            200,
        ),
        ("DELETE", "/{id}", None, Need::Update, true, 204),
        ("GET", "/{id}/telemetry", None, Need::Read, true, 200),
        ("GET", "/{id}/telemetry/raw", None, Need::Read, true, 200),
        ("GET", "/{id}/logs", None, Need::Read, true, 200),
        ("GET", "/{id}/events", None, Need::Read, true, 200),
        ("GET", "/{id}/config", None, Need::Read, true, 200),
        (
            "PUT",
            "/{id}/config",
            Some(json!({"telemetry_interval_secs": 30})),
            Need::Update,
            true,
            200,
        ),
        ("GET", "/{id}/config/versions", None, Need::Read, true, 200),
        (
            "POST",
            "/{id}/connections/reset",
            None,
            Need::Update,
            true,
            200,
        ),
        ("POST", "/{id}/install-id", None, Need::Update, true, 200),
        // Artifacts: workspace routes. The scope is checked before the body
        // or the artifact is looked at, so an authorised caller's answer
        // (400 for an empty body, 404 for a missing artifact) stands for
        // "let through".
        ("GET", "/artifacts", None, Need::Read, false, 200),
        (
            "POST",
            "/artifacts",
            Some(json!({})),
            Need::Update,
            false,
            400,
        ),
        ("GET", "/artifacts/nope/1.0", None, Need::Read, false, 404),
        (
            "PUT",
            "/artifacts/nope/1.0/payload",
            None,
            Need::Update,
            false,
            404,
        ),
        (
            "DELETE",
            "/artifacts/nope/1.0",
            None,
            Need::Update,
            false,
            404,
        ),
        // Rollouts: workspace routes, scope before validation (a well-formed
        // body naming a missing artifact is 400 once let through).
        ("GET", "/rollouts", None, Need::Read, false, 200),
        (
            "POST",
            "/rollouts",
            Some(json!({"artifact": "nope@1.0", "selector": ["site=a"]})),
            Need::Update,
            false,
            400,
        ),
        // A malformed body is refused as 400 only once the scope let the
        // caller through: a read or device key gets 403 for it too.
        (
            "POST",
            "/rollouts",
            Some(json!({})),
            Need::Update,
            false,
            400,
        ),
        (
            "POST",
            "/rollouts",
            Some(json!("not a rollout")),
            Need::Update,
            false,
            400,
        ),
        ("GET", "/rollouts/ro_nope", None, Need::Read, false, 404),
        (
            "POST",
            "/rollouts/ro_nope/pause",
            None,
            Need::Update,
            false,
            404,
        ),
        (
            "POST",
            "/rollouts/ro_nope/resume",
            None,
            Need::Update,
            false,
            404,
        ),
        (
            "POST",
            "/rollouts/ro_nope/abort",
            None,
            Need::Update,
            false,
            404,
        ),
        (
            "POST",
            "/rollouts/ro_nope/approve",
            None,
            Need::Update,
            false,
            404,
        ),
    ]
}

/// What a caller gets: the success status, 401 (structured) or 403 (naming
/// the scope, the device binding, or that a device key only reads).
fn expected(caller: Caller, need: Need, per_device: bool, ok: u16) -> u16 {
    match caller {
        NoKey | InvalidKey | OtherWorkspace => 401,
        Legacy => ok,
        ReadOnly if need == Need::Read => ok,
        UpdateOnly if need == Need::Update => ok,
        ReadOnly | UpdateOnly => 403,
        // A device key reads its own device and changes nothing: operator
        // controls need a workspace key (issue 21).
        OwnDevice if per_device && need == Need::Read => ok,
        OwnDevice | OtherDevice => 403,
    }
}

async fn device_key(cp: &ControlPlane, admin: &str, device: &str) -> String {
    let resp = Client::new()
        .post(format!(
            "{}/acme/devices/v2/{device}/connections/reset",
            cp.rest
        ))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["apiKey"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_for_every_caller() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    cp.create_workspace("globex", &[]);
    let legacy = cp.api_key("acme", &[]);
    let read_only = cp.api_key("acme", &["device:read"]);
    let update_only = cp.api_key("acme", &["device:update"]);
    let other_ws = cp.api_key("globex", &[]);
    let http = Client::new();
    let mut failures = Vec::new();

    for (method, tail, body, need, per_device, ok) in routes() {
        for caller in CALLERS {
            // A fresh target per cell: some routes delete or re-key it.
            let (target, _) = cp.create_device("acme", &legacy, "target").await;
            let (other, _) = cp.create_device("acme", &legacy, "other").await;
            let key = match caller {
                NoKey => None,
                InvalidKey => Some("opk_not_a_real_key".to_string()),
                ReadOnly => Some(read_only.clone()),
                UpdateOnly => Some(update_only.clone()),
                Legacy => Some(legacy.clone()),
                OwnDevice => Some(device_key(&cp, &legacy, &target).await),
                OtherDevice => Some(device_key(&cp, &legacy, &other).await),
                OtherWorkspace => Some(other_ws.clone()),
            };
            let url = format!(
                "{}/acme/devices/v2{}",
                cp.rest,
                tail.replace("{id}", &target)
            );
            let mut req = http.request(Method::from_bytes(method.as_bytes()).unwrap(), &url);
            if let Some(k) = &key {
                req = req.bearer_auth(k);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let want = expected(caller, need, per_device, ok);
            let shape_ok = match status {
                401 => {
                    parsed["error"]["status"] == 401
                        && parsed["error"]["type"] == "OAuthException"
                        && parsed["error"]["message"].is_string()
                        && parsed["error"]["hint"].is_string()
                }
                403 => {
                    let msg = parsed["error"].as_str().unwrap_or_default();
                    match caller {
                        ReadOnly | UpdateOnly => {
                            msg.contains("device:read") || msg.contains("device:update")
                        }
                        _ => msg.contains("device"),
                    }
                }
                _ => true,
            };
            if status != want || !shape_ok {
                failures.push(format!(
                    "{method} {tail} as {caller:?}: got {status} {text}, want {want}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_workspaces_device_is_404_on_every_device_route() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    cp.create_workspace("globex", &[]);
    let acme = cp.api_key("acme", &[]);
    let globex = cp.api_key("globex", &[]);
    let (theirs, _) = cp.create_device("globex", &globex, "theirs").await;
    let http = Client::new();
    for (method, tail, body, _, per_device, _) in routes() {
        if !per_device {
            continue;
        }
        let url = format!(
            "{}/acme/devices/v2{}",
            cp.rest,
            tail.replace("{id}", &theirs)
        );
        let mut req = http
            .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
            .bearer_auth(&acme);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 404, "{method} {tail}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "{method} {tail}: {body}");
    }
    // …and it is untouched.
    let (s, _) = cp
        .get_json(&format!("/globex/devices/v2/{theirs}"), &globex)
        .await;
    assert_eq!(s, 200);
}
