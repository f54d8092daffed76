//! The operator audit trail end to end: the control plane in process (or
//! the binary where the admin CLI, a scrape token or outpostctl are part of
//! the test), real HTTP requests, entries read back through
//! `GET /{ws}/devices/v2/audit` and from the store itself. With
//! `OUTPOST_TEST_DATABASE_URL` set, everything runs on PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use outpost_control_plane::admin::Admin;
use outpost_control_plane::store::{AuditQuery, Direction};
use reqwest::Method;
use serde_json::{Value, json};

/// Workspace `acme` with a full key and a read-only key (ids and keys), and
/// `beta` with a key of its own.
struct Setup {
    cp: ControlPlane,
    full: (String, String),
    read: (String, String),
    update_only: (String, String),
    beta: (String, String),
}

async fn admin(cp: &ControlPlane) -> Admin {
    Admin::open(&cp.data_dir, test_database(&cp.data_dir).as_deref())
        .await
        .expect("the store opens")
}

async fn setup() -> Setup {
    let cp = ControlPlane::in_process().await;
    let admin = admin(&cp).await;
    admin.create_workspace("acme", &[]).await.unwrap();
    admin.create_workspace("beta", &[]).await.unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let full = admin.create_api_key("acme", &[]).await.unwrap();
    let read = admin
        .create_api_key("acme", &s(&["device:read"]))
        .await
        .unwrap();
    let update_only = admin
        .create_api_key("acme", &s(&["device:update"]))
        .await
        .unwrap();
    let beta = admin.create_api_key("beta", &[]).await.unwrap();
    Setup {
        cp,
        full,
        read,
        update_only,
        beta,
    }
}

/// One request with a request id; returns (status, body text).
async fn send(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    key: Option<&str>,
    request_id: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", cp.rest))
        .header("x-request-id", request_id);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let echoed = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    assert_eq!(echoed.as_deref(), Some(request_id), "x-request-id echoed");
    (status, resp.text().await.unwrap())
}

/// Every entry of `acme` the API shows, oldest first, through all pages
/// of `page` entries.
async fn all_entries(cp: &ControlPlane, key: &str, filters: &str, page: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = cp
            .get_json(
                &format!("/acme/devices/v2/audit?direction=forward&limit={page}{filters}{cursor}"),
                key,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        out.extend(body["data"].as_array().unwrap().iter().cloned());
        match body["pagination"]["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

async fn entry_with_request_id(cp: &ControlPlane, key: &str, request_id: &str) -> Value {
    let found: Vec<Value> = all_entries(cp, key, "", 500)
        .await
        .into_iter()
        .filter(|e| e["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "one entry for {request_id}: {found:?}");
    found.into_iter().next().unwrap()
}

/// A request body that makes the operation succeed where we know one.
fn body_for(op: &str) -> Value {
    match op {
        "createDevice" => json!({"device_name": "audited", "description": "BODYMARK"}),
        "updateDevice" => json!({"description": "BODYMARK"}),
        "putDeviceConfig" => json!({}),
        _ => json!({}),
    }
}

/// Each POST/PUT/PATCH/DELETE operation of the OpenAPI document — so a
/// route added later is covered without touching this test — answers with
/// exactly one entry naming its operationId, the key's id, the target and
/// the status.
#[tokio::test(flavor = "multi_thread")]
async fn every_mutating_operation_is_audited_with_its_operation_id() {
    let t = setup().await;
    let ops = outpost_control_plane::rest::audit::mutating_operations(
        &outpost_control_plane::rest::openapi::document(),
    );
    let ids: BTreeSet<&str> = ops.values().map(String::as_str).collect();
    for known in [
        "createDevice",
        "updateDevice",
        "deleteDevice",
        "putDeviceConfig",
        "resetConnection",
        "newInstallId",
    ] {
        assert!(ids.contains(known), "{known} is a mutating operation");
    }
    for ((method, template), op) in &ops {
        let (device, _) = t.cp.create_device("acme", &t.full.1, "target").await;
        let mut path = String::new();
        let mut params = Vec::new();
        for seg in template.split('/').filter(|s| !s.is_empty()) {
            let value = match seg {
                "{workspace}" => "acme".to_string(),
                "{device_id}" => device.clone(),
                "{version}" => "1.0".to_string(),
                s if s.starts_with('{') => "unknownid0000000000x".to_string(),
                s => s.to_string(),
            };
            if seg.starts_with('{') && seg != "{workspace}" {
                params.push(value.clone());
            }
            path.push('/');
            path.push_str(&value);
        }
        // Several parameters (an artifact's name and version) name the
        // target together: `name@version`.
        let expect_target = (!params.is_empty()).then(|| params.join("@"));
        let rid = format!("test-{op}");
        let (status, body) = send(
            &t.cp,
            method.clone(),
            &path,
            Some(&t.full.1),
            &rid,
            Some(&body_for(op)),
        )
        .await;
        let e = entry_with_request_id(&t.cp, &t.read.1, &rid).await;
        assert_eq!(e["action"], op.as_str(), "{method} {template}");
        assert_eq!(e["status"], status, "{op}: {body}");
        assert_eq!(e["actor"], t.full.0.as_str(), "{op}");
        assert_eq!(e["workspace"], "acme", "{op}");
        if op == "createDevice" {
            assert_eq!(status, 201, "{body}");
        }
        if status == 201 {
            // A create names what it made (`Caller::audit_target`).
            let created: Value = serde_json::from_str(&body).unwrap();
            let id = created.get("deviceId").or_else(|| created.get("id"));
            assert_eq!(
                Some(&e["target"]),
                id,
                "{op}: the new resource is the target"
            );
        } else {
            assert_eq!(e["target"], json!(expect_target), "{op}");
        }
        assert!(
            e["client_address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{e}"
        );
        assert!(e["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    // Reads are not recorded.
    let (status, _) = send(
        &t.cp,
        Method::GET,
        "/acme/devices/v2",
        Some(&t.full.1),
        "test-read",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let reads = all_entries(&t.cp, &t.read.1, "", 500).await;
    assert!(reads.iter().all(|e| e["request_id"] != "test-read"));
}

/// Keys, install IDs, device keys, query strings and bodies never reach an
/// entry: every stored row, serialized, is searched for each of them.
#[tokio::test(flavor = "multi_thread")]
async fn no_audit_entry_holds_a_secret() {
    let t = setup().await;
    let mut secrets = vec![t.full.1.clone(), t.read.1.clone(), t.beta.1.clone()];
    let (device, install_id) = t.cp.create_device("acme", &t.full.1, "box").await;
    secrets.push(install_id);
    // The key in the query string, with a marker next to it.
    let (status, body) = send(
        &t.cp,
        Method::POST,
        &format!(
            "/acme/devices/v2/{device}/install-id?api_key={}&note=QUERYMARK",
            t.full.1
        ),
        None,
        "q-1",
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    secrets.push(v["installId"].as_str().unwrap().to_string());
    let (status, body) = send(
        &t.cp,
        Method::POST,
        &format!("/acme/devices/v2/{device}/connections/reset"),
        Some(&t.full.1),
        "r-1",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let device_key = v["apiKey"].as_str().unwrap().to_string();
    secrets.push(device_key.clone());
    let (status, body) = send(
        &t.cp,
        Method::POST,
        &format!("/acme/devices/v2/{device}/connections/reset?force=true"),
        Some(&t.full.1),
        "r-2",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    secrets.push(v["apiKey"].as_str().unwrap().to_string());
    secrets.push(v["installId"].as_str().unwrap().to_string());
    // An enrollment token: shown once, never recorded (its id is the target).
    let (status, body) = send(
        &t.cp,
        Method::POST,
        "/acme/devices/v2/enrollment-tokens",
        Some(&t.full.1),
        "t-1",
        Some(&json!({"name": "line 3", "max_uses": 5})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("oet_"), "{body}");
    secrets.push(token);
    // A wrong key and a body with a marker.
    send(
        &t.cp,
        Method::PATCH,
        &format!("/acme/devices/v2/{device}"),
        Some("opk_not-a-real-key-WRONGKEYMARK"),
        "p-1",
        Some(&json!({"description": "BODYMARK"})),
    )
    .await;
    send(
        &t.cp,
        Method::PATCH,
        &format!("/acme/devices/v2/{device}"),
        Some(&t.full.1),
        "p-2",
        Some(&json!({"description": "BODYMARK"})),
    )
    .await;
    secrets.extend(["QUERYMARK", "BODYMARK", "WRONGKEYMARK"].map(String::from));

    let store = outpost_control_plane::config::open_store(
        &t.cp.data_dir,
        test_database(&t.cp.data_dir).as_deref(),
    )
    .await
    .unwrap();
    let mut rows = Vec::new();
    for ws in ["acme", "beta"] {
        rows.extend(
            store
                .list_audit(&AuditQuery {
                    workspace: ws.into(),
                    start: None,
                    end: None,
                    action: None,
                    after_id: None,
                    direction: Direction::Forward,
                    limit: 10_000,
                })
                .await
                .unwrap(),
        );
    }
    let api_rows = all_entries(&t.cp, &t.read.1, "", 500).await;
    assert!(api_rows.len() >= 6, "{api_rows:?}");
    for rid in ["q-1", "r-1", "r-2", "p-1", "p-2"] {
        assert!(api_rows.iter().any(|e| e["request_id"] == rid), "{rid}");
    }
    let mut texts: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
    texts.extend(api_rows.iter().map(Value::to_string));
    for text in &texts {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{s:?} in {text}");
        }
    }
}

/// 401s carry no actor (not even another workspace's key id); a 403 of a
/// known key names it.
#[tokio::test(flavor = "multi_thread")]
async fn refused_attempts_are_recorded_with_the_actor_known_so_far() {
    let t = setup().await;
    let create = json!({"device_name": "x"});
    let (s1, _) = send(
        &t.cp,
        Method::POST,
        "/acme/devices/v2",
        None,
        "u-1",
        Some(&create),
    )
    .await;
    let (s2, _) = send(
        &t.cp,
        Method::POST,
        "/acme/devices/v2",
        Some(&t.beta.1),
        "u-2",
        Some(&create),
    )
    .await;
    let (s3, _) = send(
        &t.cp,
        Method::POST,
        "/acme/devices/v2",
        Some(&t.read.1),
        "u-3",
        Some(&create),
    )
    .await;
    assert_eq!((s1, s2, s3), (401, 401, 403));
    let e1 = entry_with_request_id(&t.cp, &t.read.1, "u-1").await;
    let e2 = entry_with_request_id(&t.cp, &t.read.1, "u-2").await;
    let e3 = entry_with_request_id(&t.cp, &t.read.1, "u-3").await;
    assert_eq!(e1["actor"], Value::Null);
    assert_eq!(
        e2["actor"],
        Value::Null,
        "beta's key id is not shown to acme"
    );
    assert_eq!(e3["actor"], t.read.0.as_str());
    for (e, s) in [(&e1, 401), (&e2, 401), (&e3, 403)] {
        assert_eq!(e["action"], "createDevice");
        assert_eq!(e["status"], s);
        assert_eq!(e["target"], Value::Null);
    }
    // No entry for beta from these.
    let (_, beta) = t.cp.get_json("/beta/devices/v2/audit", &t.beta.1).await;
    assert!(
        beta["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] != "createDevice"),
        "{beta}"
    );
    // A generated request id when the client sent none (or a bad one).
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/acme/devices/v2/nosuchdevice0000000x",
            t.cp.rest
        ))
        .bearer_auth(&t.full.1)
        .header("x-request-id", "bad id\twith spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(rid.starts_with("req_"), "{rid}");
    let e = entry_with_request_id(&t.cp, &t.read.1, &rid).await;
    assert_eq!(e["target"], "nosuchdevice0000000x");
    assert_eq!(e["status"], 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_list_filters_pages_and_refuses_device_keys() {
    let t = setup().await;
    let mut devices = Vec::new();
    for n in 0..5 {
        devices.push(
            t.cp.create_device("acme", &t.full.1, &format!("d{n}"))
                .await
                .0,
        );
    }
    for d in &devices[..2] {
        let (s, _) = send(
            &t.cp,
            Method::DELETE,
            &format!("/acme/devices/v2/{d}"),
            Some(&t.full.1),
            &format!("del-{d}"),
            None,
        )
        .await;
        assert_eq!(s, 204);
    }
    let all = all_entries(&t.cp, &t.read.1, "", 500).await;
    // The admin's key creations are there too (actor admin-cli).
    let admin_keys: Vec<&Value> = all
        .iter()
        .filter(|e| e["action"] == "createApiKey")
        .collect();
    assert_eq!(admin_keys.len(), 3, "{all:?}");
    assert!(admin_keys.iter().all(|e| e["actor"] == "admin-cli"));
    let rest: Vec<&Value> = all
        .iter()
        .filter(|e| e["actor"] == t.full.0.as_str())
        .collect();
    assert_eq!(rest.len(), 7, "5 creates, 2 deletes");
    // Pages of 2 give the same entries, without gaps or repeats, both ways.
    assert_eq!(all_entries(&t.cp, &t.read.1, "", 2).await, all);
    let mut backward = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page) =
            t.cp.get_json(
                &format!("/acme/devices/v2/audit?limit=3{cursor}"),
                &t.read.1,
            )
            .await;
        assert_eq!(s, 200);
        backward.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    backward.reverse();
    assert_eq!(backward, all, "newest first by default");
    // action
    let deletes = all_entries(&t.cp, &t.read.1, "&action=deleteDevice", 500).await;
    let targets: Vec<&str> = deletes
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, vec![devices[0].as_str(), devices[1].as_str()]);
    // start_time inclusive, end_time exclusive, on the entries' own times.
    let first_delete = &deletes[0]["timestamp"];
    let from = all_entries(
        &t.cp,
        &t.read.1,
        &format!("&start_time={}", first_delete.as_str().unwrap()),
        500,
    )
    .await;
    assert!(!from.is_empty());
    assert!(
        from.iter()
            .all(|e| e["timestamp"].as_str() >= first_delete.as_str())
    );
    assert!(
        from.iter()
            .any(|e| e["request_id"] == deletes[0]["request_id"])
    );
    let before = all_entries(
        &t.cp,
        &t.read.1,
        &format!("&end_time={}", first_delete.as_str().unwrap()),
        500,
    )
    .await;
    assert!(
        before
            .iter()
            .all(|e| e["timestamp"].as_str() < first_delete.as_str())
    );
    assert_eq!(before.len() + from.len(), all.len());
    let none = all_entries(&t.cp, &t.read.1, "&start_time=4102444800", 500).await;
    assert!(none.is_empty(), "nothing after 2100");
    // Bad parameters: 400 naming the parameter.
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("start_time=yesterday", "start_time"),
        ("end_time=soon", "end_time"),
        ("start_time=2000&end_time=1000", "start_time"),
        ("action=delete%20device", "action"),
        ("cursor=!!!", "cursor"),
        ("direction=up", "direction"),
    ] {
        let (s, body) =
            t.cp.get_json(&format!("/acme/devices/v2/audit?{query}"), &t.read.1)
                .await;
        assert_eq!(s, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(name),
            "{query}: {body}"
        );
    }
    // Who may read: device:read workspace keys only.
    let (_, reset) = send(
        &t.cp,
        Method::POST,
        &format!("/acme/devices/v2/{}/connections/reset", devices[2]),
        Some(&t.full.1),
        "reset",
        None,
    )
    .await;
    let device_key = serde_json::from_str::<Value>(&reset).unwrap()["apiKey"]
        .as_str()
        .unwrap()
        .to_string();
    for (key, want) in [
        (device_key.as_str(), 403),
        (t.update_only.1.as_str(), 403),
        (t.beta.1.as_str(), 401),
        ("opk_nope", 401),
        (t.full.1.as_str(), 200),
    ] {
        // Authorization comes before validation: a bad limit still 403s.
        let (s, body) = t.cp.get_json("/acme/devices/v2/audit?limit=0", key).await;
        let want_bad = if want == 200 { 400 } else { want };
        assert_eq!(s, want_bad, "{body}");
    }
    // beta sees none of acme's entries.
    let (_, beta) = t.cp.get_json("/beta/devices/v2/audit", &t.beta.1).await;
    assert!(
        beta["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["workspace"] == "beta"),
        "{beta}"
    );
}

/// The binary's admin commands, against the data directory of a running
/// control plane, record what they change as `admin-cli`.
#[tokio::test(flavor = "multi_thread")]
async fn admin_cli_actions_are_recorded() {
    let t = setup().await;
    let run = |args: &[&str]| {
        let out = t.cp.admin(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = run(&[
        "api-key",
        "create",
        "--workspace",
        "acme",
        "--scope",
        "device:read",
    ]);
    assert!(ok, "{out}");
    let key = out.lines().last().unwrap().to_string();
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap()
        .to_string();
    assert!(run(&["api-key", "revoke", &id]).0);
    assert!(!run(&["api-key", "revoke", &id]).0, "revoked already");
    assert!(run(&["workspace", "features", "acme", "--enable", "deviceAio"]).0);
    assert!(!run(&["workspace", "create", "acme"]).0, "exists");
    // Reads are not recorded.
    assert!(run(&["api-key", "list", "--workspace", "acme"]).0);

    let all = all_entries(&t.cp, &t.read.1, "", 500).await;
    let admin: Vec<(String, String, u64)> = all
        .iter()
        .filter(|e| e["actor"] == "admin-cli")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap_or("").to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, u64)> = [
        ("createWorkspace", "acme", 200),
        ("createApiKey", t.full.0.as_str(), 200),
        ("createApiKey", t.read.0.as_str(), 200),
        ("createApiKey", t.update_only.0.as_str(), 200),
        ("createApiKey", id.as_str(), 200),
        ("revokeApiKey", id.as_str(), 200),
        ("revokeApiKey", id.as_str(), 400),
        ("setWorkspaceFeatures", "acme", 200),
        ("createWorkspace", "acme", 409),
    ]
    .into_iter()
    .map(|(a, t, s)| (a.to_string(), t.to_string(), s))
    .collect();
    assert_eq!(admin, want);
    for e in &all {
        assert!(!e.to_string().contains(&key), "{e}");
        if e["actor"] == "admin-cli" {
            assert_eq!(e["request_id"], Value::Null);
            assert_eq!(e["client_address"], Value::Null);
        }
    }
}

fn export(cp: &ControlPlane, key: &str, args: &[&str]) -> String {
    let out = Command::new(ctl_bin())
        .args(["audit", "export"])
        .args(args)
        .env("OUTPOST_URL", &cp.rest)
        .env("OUTPOST_API_KEY", key)
        .env("OUTPOST_WORKSPACE", "acme")
        .env_remove("OUTPOST_CA_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `outpostctl audit export` gives every entry (more than one page of the
/// server's), oldest first, as JSON lines equal to the API's entries or as
/// CSV with one record each.
#[tokio::test(flavor = "multi_thread")]
async fn outpostctl_exports_every_page_as_jsonl_and_csv() {
    let t = setup().await;
    // More entries than one 500-entry page: refused creates are quick.
    for n in 0..260 {
        send(
            &t.cp,
            Method::POST,
            "/acme/devices/v2",
            Some(&t.read.1),
            &format!("bulk-{n}"),
            Some(&json!({"device_name": "x"})),
        )
        .await;
    }
    for n in 0..250 {
        send(
            &t.cp,
            Method::DELETE,
            "/acme/devices/v2/nosuchdevice0000000x",
            Some(&t.full.1),
            &format!("bulk-del-{n}"),
            None,
        )
        .await;
    }
    let all = all_entries(&t.cp, &t.read.1, "", 500).await;
    assert!(all.len() > 500, "{}", all.len());

    let jsonl = export(&t.cp, &t.read.1, &["--format", "jsonl"]);
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, all);

    let csv = export(&t.cp, &t.read.1, &["--format", "csv"]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "id,timestamp,actor,workspace,action,target,status,request_id,client_address"
    );
    assert_eq!(rows.len(), all.len() + 1);
    let last = all.last().unwrap();
    assert_eq!(
        *rows.last().unwrap(),
        format!(
            "{},{},{},acme,deleteDevice,nosuchdevice0000000x,404,bulk-del-249,{}",
            last["id"],
            last["timestamp"].as_str().unwrap(),
            t.full.0,
            last["client_address"].as_str().unwrap()
        )
    );
    // Filters pass through.
    let deletes = export(
        &t.cp,
        &t.read.1,
        &["--format", "jsonl", "--action", "deleteDevice"],
    );
    assert_eq!(deletes.lines().count(), 250);
    let future = export(
        &t.cp,
        &t.read.1,
        &["--format", "csv", "--since", "4102444800"],
    );
    assert_eq!(future.lines().count(), 1, "the header only");
    // A device-scoped key cannot export.
    let (device, _) = t.cp.create_device("acme", &t.full.1, "d").await;
    let (_, reset) = send(
        &t.cp,
        Method::POST,
        &format!("/acme/devices/v2/{device}/connections/reset"),
        Some(&t.full.1),
        "reset",
        None,
    )
    .await;
    let device_key = serde_json::from_str::<Value>(&reset).unwrap()["apiKey"]
        .as_str()
        .unwrap()
        .to_string();
    let out = Command::new(ctl_bin())
        .args(["audit", "export", "--format", "jsonl"])
        .env("OUTPOST_URL", &t.cp.rest)
        .env("OUTPOST_API_KEY", &device_key)
        .env("OUTPOST_WORKSPACE", "acme")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("device-scoped"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An audit write that fails (here: the table is gone) does not fail the
/// request; it is counted on `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_audit_write_is_counted_and_the_request_still_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let token_file = tmp.path().join("scrape-token");
    let token = "scrape-token-for-the-audit-test";
    std::fs::write(&token_file, token).unwrap();
    let cp = ControlPlane::start_in(
        &data_dir,
        &["--metrics-token-file", token_file.to_str().unwrap()],
    );
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let scrape = || async {
        reqwest::Client::new()
            .get(format!("{}/metrics", cp.rest))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    cp.create_device("acme", &key, "before").await;
    assert!(
        scrape()
            .await
            .contains("outpost_audit_entries_total{result=\"stored\"} 1"),
        "{}",
        scrape().await
    );
    // An unauthenticated attempt on a workspace that does not exist is
    // counted, not stored.
    let probe = reqwest::Client::new()
        .post(format!("{}/ghost/devices/v2", cp.rest))
        .json(&serde_json::json!({"device_name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 401);
    let text = scrape().await;
    assert!(
        text.contains("outpost_audit_entries_total{result=\"unknown_workspace\"} 1")
            && text.contains("outpost_audit_entries_total{result=\"stored\"} 1"),
        "{text}"
    );

    match test_database(&data_dir) {
        Some(url) => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query("DROP TABLE audit_log")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        None => {
            let opts =
                sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("outpost.db"));
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            sqlx::query("DROP TABLE audit_log")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
    }
    let (device, _) = cp.create_device("acme", &key, "after").await;
    assert_eq!(device.len(), 20, "the create succeeded");
    let text = scrape().await;
    assert!(
        text.contains("outpost_audit_entries_total{result=\"failed\"} 1"),
        "{text}"
    );
}
