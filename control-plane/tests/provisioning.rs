//! Fleet provisioning (issue 19): enrollment tokens and labels, end to end —
//! real control plane and agent binaries, real TLS on real sockets.
//! With `OUTPOST_TEST_DATABASE_URL` the control planes run on PostgreSQL and
//! the budget test races two replicas on one database.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{Value, json};

/// `outpost-agent enroll --enroll-token …` (plus `extra` arguments).
fn enroll_cmd(cp: &ControlPlane, token: &str, state_dir: &Path, extra: &[&str]) -> Command {
    let mut c = agent_cmd(&[
        "enroll",
        "--server",
        &cp.grpc_url(),
        "--enroll-token",
        token,
        "--ca-file",
    ]);
    c.arg(cp.ca_path())
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra);
    c
}

fn enroll_token(cp: &ControlPlane, token: &str, state_dir: &Path, extra: &[&str]) -> Output {
    enroll_cmd(cp, token, state_dir, extra)
        .output()
        .expect("run agent enroll")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

async fn send(
    cp: &ControlPlane,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", cp.rest))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn create_token(cp: &ControlPlane, key: &str, body: Value) -> Value {
    let (st, t) = send(
        cp,
        reqwest::Method::POST,
        "/acme/devices/v2/enrollment-tokens",
        key,
        Some(body),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    t
}

async fn token_state(cp: &ControlPlane, key: &str, id: &str) -> Value {
    let (st, list) = cp.get_json("/acme/devices/v2/enrollment-tokens", key).await;
    assert_eq!(st, 200, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("token {id} not listed: {list}"))
}

async fn devices(cp: &ControlPlane, key: &str, query: &str) -> Vec<Value> {
    let (st, page) = cp
        .get_json(&format!("/acme/devices/v2?limit=500{query}"), key)
        .await;
    assert_eq!(st, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_enroll_boxes_until_spent_and_each_refusal_is_named() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let reader = cp.api_key("acme", &["device:read"]);

    // Authorization before validation: a read-only key gets 403 even for a
    // bad body; bad bodies get a 400 naming the problem.
    let path = "/acme/devices/v2/enrollment-tokens";
    let (st, _) = send(&cp, reqwest::Method::POST, path, &reader, Some(json!({}))).await;
    assert_eq!(st, 403);
    for (body, needle) in [
        (json!({"max_uses": 3}), "name"),
        (json!({"name": "x"}), "max_uses"),
        (json!({"name": "x", "max_uses": 0}), "max_uses"),
        (
            json!({"name": "x", "max_uses": 1, "labels": {"bad key": "v"}}),
            "\"bad key\"",
        ),
        (
            json!({"name": "x", "max_uses": 1, "labels": {"site": "-v"}}),
            "\"-v\"",
        ),
        (
            json!({"name": "x", "max_uses": 1, "device_type": "ai1"}),
            "deviceAio",
        ),
        (json!({"name": "x", "max_uses": 1, "bogus": 1}), "bogus"),
    ] {
        let (st, e) = send(&cp, reqwest::Method::POST, path, &key, Some(body.clone())).await;
        assert!(st == 400 || st == 403, "{body}: {st} {e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{body}: {e}");
    }

    let t = create_token(
        &cp,
        &key,
        json!({"name": "line 3", "max_uses": 2, "expires_in_secs": 3600,
               "labels": {"site": "berlin", "example.com/line": "3"}}),
    )
    .await;
    let token = t["token"].as_str().unwrap().to_string();
    let token_id = t["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("oet_"), "{t}");
    assert_eq!(t["max_uses"], 2);
    assert_eq!(t["uses"], 0);
    assert_eq!(t["device_type"], "edge");
    assert_eq!(t["labels"]["site"], "berlin");
    assert!(t["expires_at"].is_string());
    let install = t["installCommand"].as_str().unwrap();
    assert!(
        install.contains(&format!("--enroll-token {token}")),
        "{install}"
    );
    assert!(install.contains(&cp.fingerprint), "{install}");
    // The list never shows the token itself.
    let listed = token_state(&cp, &reader, &token_id).await;
    assert!(!listed.to_string().contains(&token), "{listed}");
    assert_eq!(listed["state"], "active");
    assert_eq!(listed["uses_left"], 2);

    // Two boxes: one named, one by its hostname.
    let a = tempfile::tempdir().unwrap();
    let out = enroll_token(&cp, &token, a.path(), &["--device-name", "cam-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = tempfile::tempdir().unwrap();
    let out = enroll_token(&cp, &token, b.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made = devices(&cp, &key, "").await;
    assert_eq!(made.len(), 2, "{made:?}");
    let named = made.iter().find(|d| d["name"] == "cam-1").expect("cam-1");
    let other = made.iter().find(|d| d["name"] != "cam-1").unwrap();
    assert!(!other["name"].as_str().unwrap().is_empty());
    for d in &made {
        assert_eq!(d["labels"]["site"], "berlin", "{d}");
        assert_eq!(d["labels"]["example.com/line"], "3", "{d}");
        assert_eq!(d["type"], "edge");
    }
    let (_, events) = cp
        .get_json(
            &format!("/acme/devices/v2/{}/events", named["id"].as_str().unwrap()),
            &key,
        )
        .await;
    let enrolled = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "enrolled" || e["kind"] == "enrolled")
        .unwrap_or_else(|| panic!("no enrolled event: {events}"))
        .clone();
    assert!(
        enrolled.to_string().contains(&token_id),
        "the enrolled event names the token: {enrolled}"
    );
    let spent = token_state(&cp, &key, &token_id).await;
    assert_eq!(
        (spent["uses"].clone(), spent["state"].clone()),
        (json!(2), json!("exhausted"))
    );
    assert_eq!(spent["uses_left"], 0);

    // A device-scoped key (the agent's) cannot use the token routes.
    let device_key = std::fs::read_to_string(a.path().join("api-key")).unwrap();
    let (st, _) = cp.get_json(path, device_key.trim()).await;
    assert_eq!(st, 403);

    // Exhausted: exit 7, named, nothing created.
    let c = tempfile::tempdir().unwrap();
    let out = enroll_token(&cp, &token, c.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(outpost_agent::EXIT_TOKEN_EXHAUSTED as i32),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("exhausted"), "{}", stderr(&out));
    // `run` with OUTPOST_ENROLL_TOKEN: the same refusal, the same status.
    let out = agent_cmd(&["run", "--server", &cp.grpc_url(), "--ca-file"])
        .arg(cp.ca_path())
        .arg("--state-dir")
        .arg(c.path())
        .env("OUTPOST_ENROLL_TOKEN", &token)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(outpost_agent::EXIT_TOKEN_EXHAUSTED as i32),
        "{}",
        stderr(&out)
    );

    // Unknown: exit 6.
    let out = enroll_token(&cp, &format!("oet_{}", "0".repeat(64)), c.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(outpost_agent::EXIT_TOKEN_UNKNOWN as i32),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("unknown"), "{}", stderr(&out));

    // Revoked: exit 9.
    let r = create_token(&cp, &key, json!({"name": "revoke me", "max_uses": 5})).await;
    let (st, revoked) = send(
        &cp,
        reqwest::Method::DELETE,
        &format!("{path}/{}", r["id"].as_str().unwrap()),
        &key,
        None,
    )
    .await;
    assert_eq!(st, 200, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    let (st, _) = send(
        &cp,
        reqwest::Method::DELETE,
        &format!("{path}/nosuchtoken"),
        &key,
        None,
    )
    .await;
    assert_eq!(st, 404);
    let out = enroll_token(&cp, r["token"].as_str().unwrap(), c.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(outpost_agent::EXIT_TOKEN_REVOKED as i32),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));

    // Expired: exit 8 (once the list says it has expired).
    let e = create_token(
        &cp,
        &key,
        json!({"name": "short", "max_uses": 5, "expires_in_secs": 1}),
    )
    .await;
    let e_id = e["id"].as_str().unwrap().to_string();
    wait_until("the token expires", TIMEOUT, || async {
        (token_state(&cp, &key, &e_id).await["state"] == "expired").then_some(())
    })
    .await;
    let out = enroll_token(&cp, e["token"].as_str().unwrap(), c.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(outpost_agent::EXIT_TOKEN_EXPIRED as i32),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // Nothing was created by any refusal, and nothing spent.
    assert_eq!(devices(&cp, &key, "").await.len(), 2);
    assert_eq!(token_state(&cp, &key, &e_id).await["uses"], 0);
    assert!(!c.path().join("identity.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_enrollment_response_retried_with_the_same_key_spends_no_second_use() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let t = create_token(&cp, &key, json!({"name": "one", "max_uses": 1})).await;
    let (token, id) = (t["token"].as_str().unwrap(), t["id"].as_str().unwrap());
    let box_dir = tempfile::tempdir().unwrap();
    // The agent dies right after the answer arrives: nothing of it is on
    // disk but the key, as if the response was lost.
    let out = enroll_cmd(&cp, token, box_dir.path(), &["--device-name", "retry"])
        .env(
            outpost_agent::failpoint::ENV,
            outpost_agent::failpoint::ENROLL_RESPONSE_RECEIVED,
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("crash point"), "{}", stderr(&out));
    let first = devices(&cp, &key, "").await;
    assert_eq!(first.len(), 1);
    assert_eq!(token_state(&cp, &key, id).await["uses"], 1);
    // The retry, same key: the same device, although the only use is spent.
    let out = enroll_token(&cp, token, box_dir.path(), &["--device-name", "retry"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(first[0]["id"].as_str().unwrap()),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(devices(&cp, &key, "").await.len(), 1);
    let st = token_state(&cp, &key, id).await;
    assert_eq!(
        (st["uses"].clone(), st["state"].clone()),
        (json!(1), json!("exhausted"))
    );
    // The enrolled box connects with what it got.
    let mut agent = AgentProc::run(box_dir.path(), "200ms");
    let device = first[0]["id"].as_str().unwrap().to_string();
    wait_until("online", TIMEOUT, || async {
        let (_, d) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        (d["status"] == "online").then_some(())
    })
    .await;
    agent.terminate();
}

/// Starts a second control plane on `a`'s database with `a`'s CA (as
/// `replicas.rs` does), or `None` on SQLite (one file, one process).
fn second_replica(a: &ControlPlane, tmp: &Path) -> Option<ControlPlane> {
    std::env::var("OUTPOST_TEST_DATABASE_URL").ok()?;
    let dir_b = tmp.join("b");
    std::fs::create_dir_all(dir_b.join("pki")).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(a.data_dir.join("pki").join(f), dir_b.join("pki").join(f)).unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::from_mode(if f == "ca.key" { 0o600 } else { 0o644 });
        std::fs::set_permissions(dir_b.join("pki").join(f), mode).unwrap();
    }
    std::fs::copy(
        a.data_dir.join(".test-database-url"),
        dir_b.join(".test-database-url"),
    )
    .unwrap();
    Some(ControlPlane::start_in(&dir_b, &[]))
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_agents_enrolling_at_once_against_ten_uses_make_exactly_ten_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let a = ControlPlane::start_in(&tmp.path().join("a"), &[]);
    a.create_workspace("acme", &[]);
    let b = second_replica(&a, tmp.path());
    eprintln!("control planes racing: {}", 1 + usize::from(b.is_some()));
    let key = a.api_key("acme", &[]);
    let t = create_token(&a, &key, json!({"name": "budget", "max_uses": 10})).await;
    let token = t["token"].as_str().unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..50).map(|_| tempfile::tempdir().unwrap()).collect();
    // Every agent is started before any is waited for; with two replicas
    // they alternate between them.
    let children: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let cp = match &b {
                Some(b) if i % 2 == 1 => b,
                _ => &a,
            };
            enroll_cmd(cp, token, d.path(), &["--device-name", &format!("box-{i}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    let exhausted = outs
        .iter()
        .filter(|o| o.status.code() == Some(outpost_agent::EXIT_TOKEN_EXHAUSTED as i32))
        .count();
    let odd: Vec<String> = outs
        .iter()
        .filter(|o| {
            !o.status.success()
                && o.status.code() != Some(outpost_agent::EXIT_TOKEN_EXHAUSTED as i32)
        })
        .map(stderr)
        .collect();
    assert_eq!((ok, exhausted), (10, 40), "other failures: {odd:?}");
    let made = devices(&a, &key, "").await;
    assert_eq!(made.len(), 10);
    if let Some(b) = &b {
        assert_eq!(devices(b, &key, "").await.len(), 10);
    }
    let st = token_state(&a, &key, t["id"].as_str().unwrap()).await;
    assert_eq!(
        (st["uses"].clone(), st["state"].clone()),
        (json!(10), json!("exhausted"))
    );
    // Exactly the boxes that were told "enrolled" have an identity.
    let enrolled = dirs
        .iter()
        .filter(|d| d.path().join("identity.json").exists())
        .count();
    assert_eq!(enrolled, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_are_set_patched_filtered_and_exported() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let post = |body: Value| {
        let (cp, key) = (&cp, &key);
        async move {
            send(
                cp,
                reqwest::Method::POST,
                "/acme/devices/v2",
                key,
                Some(body),
            )
            .await
        }
    };
    let (st, a) = post(json!({"device_name": "a",
        "labels": {"site": "berlin", "app.kubernetes.io/name": "cam", "gpu": ""}}))
    .await;
    assert_eq!(st, 201, "{a}");
    let (st, b) = post(json!({"device_name": "b", "labels": {"site": "paris"}})).await;
    assert_eq!(st, 201, "{b}");
    let (st, c) = post(json!({"device_name": "c"})).await;
    assert_eq!(st, 201, "{c}");
    let (a, b) = (
        a["deviceId"].as_str().unwrap(),
        b["deviceId"].as_str().unwrap(),
    );

    // Bad labels: 400 naming the key or value; over 32: 400.
    for (labels, needle) in [
        (json!({"bad key": "v"}), "\"bad key\""),
        (json!({"k": "bad value"}), "\"bad value\""),
        (json!({"Upper.Prefix/x": "v"}), "Upper.Prefix/x"),
        (json!({"k": "x".repeat(64)}), "63"),
    ] {
        let (st, e) = post(json!({"device_name": "x", "labels": labels})).await;
        assert_eq!(st, 400, "{labels}: {e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{e}");
    }
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!(""))).collect();
    let (st, e) = post(json!({"device_name": "x", "labels": many})).await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("32"), "{e}");

    let ids = |q: &'static str| {
        let (cp, key) = (&cp, &key);
        async move {
            let mut v: Vec<String> = devices(cp, key, q)
                .await
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(ids("").await, ["a", "b", "c"]);
    assert_eq!(ids("&label=site").await, ["a", "b"]);
    assert_eq!(ids("&label=site%3Dberlin").await, ["a"]);
    assert_eq!(ids("&label=site=paris").await, ["b"]);
    assert_eq!(ids("&label=site=berlin&label=gpu").await, ["a"]);
    assert_eq!(
        ids("&label=site=paris&label=gpu").await,
        Vec::<String>::new()
    );
    let (st, e) = cp.get_json("/acme/devices/v2?label=bad%20key", &key).await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("\"bad key\""), "{e}");

    // PATCH: a merge patch of the map.
    let (st, d) = send(
        &cp,
        reqwest::Method::PATCH,
        &format!("/acme/devices/v2/{b}"),
        &key,
        Some(json!({"labels": {"site": null, "tier": "1", "zone": "eu-1"}})),
    )
    .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["labels"], json!({"tier": "1", "zone": "eu-1"}));
    assert_eq!(ids("&label=site").await, ["a"]);
    assert_eq!(ids("&label=tier=1").await, ["b"]);
    let (st, e) = send(
        &cp,
        reqwest::Method::PATCH,
        &format!("/acme/devices/v2/{b}"),
        &key,
        Some(json!({"labels": {"-x": "1"}})),
    )
    .await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("\"-x\""), "{e}");
    let many: serde_json::Map<String, Value> =
        (0..31).map(|i| (format!("k{i}"), json!(""))).collect();
    let (st, e) = send(
        &cp,
        reqwest::Method::PATCH,
        &format!("/acme/devices/v2/{b}"),
        &key,
        Some(json!({ "labels": many })),
    )
    .await;
    assert_eq!(st, 400, "{e}");
    let (_, still) = cp.get_json(&format!("/acme/devices/v2/{b}"), &key).await;
    assert_eq!(still["labels"], json!({"tier": "1", "zone": "eu-1"}));

    // outpostctl devices list -l (repeatable, all must match).
    let ctl = |args: &[&str]| -> Vec<String> {
        let bin = cp_bin().with_file_name("outpostctl");
        assert!(
            bin.exists(),
            "build outpostctl first (cargo build -p outpostctl)"
        );
        let out = Command::new(bin)
            .args(["devices", "list", "-o", "json"])
            .args(args)
            .env("OUTPOST_URL", &cp.rest)
            .env("OUTPOST_API_KEY", &key)
            .env("OUTPOST_WORKSPACE", "acme")
            .env_remove("OUTPOST_CA_FILE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut names: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(ctl(&["-l", "site=berlin"]), ["a"]);
    assert_eq!(ctl(&["-l", "zone=eu-1", "--label", "tier"]), ["b"]);
    assert_eq!(
        ctl(&["-l", "zone=eu-1", "-l", "site"]),
        Vec::<String>::new()
    );

    // /metrics: outpost_device_info carries them as label_<key>.
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", cp.rest))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let info = |id: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("outpost_device_info{") && l.contains(&format!("device=\"{id}\""))
            })
            .unwrap_or_else(|| panic!("no info line for {id}:\n{text}"))
            .to_string()
    };
    let la = info(a);
    assert!(la.contains("label_site=\"berlin\""), "{la}");
    assert!(la.contains("label_app_kubernetes_io_name=\"cam\""), "{la}");
    let lb = info(b);
    assert!(lb.contains("label_zone=\"eu-1\""), "{lb}");
    assert!(lb.contains("label_site=\"\""), "{lb}");
}

/// An offline AI1 box: the payload its QR code carries, read back by the
/// agent from a file (as a scanner would leave it) and from standard
/// input, enrolls it; a payload of another version is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn an_offline_box_enrolls_from_its_scanned_payload() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &["deviceAio", "roboflowLiteMode"]);
    let key = cp.api_key("acme", &[]);
    let (status, created) = send(
        &cp,
        reqwest::Method::POST,
        "/acme/devices/v2",
        &key,
        Some(json!({"device_name": "line-3", "device_type": "ai1", "offline_mode": true})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let payload = created["offlineProvisioningQrPayload"].as_str().unwrap();
    let device = created["deviceId"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let newer = payload.replace("\"v\":1", "\"v\":2");
    let out = agent_cmd(&["enroll", "--offline-payload", &newer, "--state-dir"])
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("version 2"), "{}", stderr(&out));

    let scanned = dir.path().join("scanned.txt");
    std::fs::write(&scanned, format!("{payload}\n")).unwrap();
    let from_file = format!("@{}", scanned.display());
    let out = agent_cmd(&["enroll", "--offline-payload", &from_file, "--state-dir"])
        .arg(dir.path().join("box"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let identity: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("box/identity.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(identity["device_id"], device, "{identity}");

    // The install ID is spent: the same payload from stdin is refused.
    let mut child = agent_cmd(&["enroll", "--offline-payload", "-", "--state-dir"])
        .arg(dir.path().join("again"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("install ID"),
        "read from stdin, refused as spent: {}",
        stderr(&out)
    );
}
