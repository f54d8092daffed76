//! The host-side admin CLI against a running control plane's data dir.

mod common;

use common::*;
use serde_json::json;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn workspaces_features_and_keys_are_managed_on_the_host() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    cp.create_workspace("globex", &["deviceAio"]);
    let list = ok(&cp.admin(&["workspace", "list"]));
    assert!(list.lines().any(|l| l.starts_with("acme\t-")), "{list}");
    assert!(
        list.lines().any(|l| l.starts_with("globex\tdeviceAio")),
        "{list}"
    );

    let out = cp.admin(&["workspace", "create", "acme"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = cp.admin(&["workspace", "features", "acme", "--enable", "warpDrive"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown feature"));

    // A feature switched on takes effect for the running server at once.
    let key = cp.api_key("acme", &[]);
    let create_ai1 = || async {
        reqwest::Client::new()
            .post(format!("{}/acme/devices/v2", cp.rest))
            .bearer_auth(&key)
            .json(&json!({"device_name": "x", "device_type": "ai1"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(create_ai1().await, 403);
    let out = ok(&cp.admin(&["workspace", "features", "acme", "--enable", "deviceAio"]));
    assert!(out.contains("deviceAio"), "{out}");
    assert_eq!(create_ai1().await, 201);
    ok(&cp.admin(&["workspace", "features", "acme", "--disable", "deviceAio"]));
    assert_eq!(create_ai1().await, 403);

    // Keys: listed by id and scope, never by value; revoked at once.
    let out = ok(&cp.admin(&[
        "api-key",
        "create",
        "--workspace",
        "acme",
        "--scope",
        "device:read",
    ]));
    let id = out.lines().next().unwrap().to_string();
    assert!(
        id.starts_with("key_") && !id.contains(' '),
        "the id alone on the first line: {out}"
    );
    let reader = out.lines().last().unwrap().to_string();
    let list = ok(&cp.admin(&["api-key", "list", "--workspace", "acme"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("device:read") && l.contains("active")),
        "{list}"
    );
    assert!(
        !list.contains(&reader),
        "plaintext keys are never shown again"
    );
    let (s, _) = cp.get_json("/acme/devices/v2", &reader).await;
    assert_eq!(s, 200);
    ok(&cp.admin(&["api-key", "revoke", &id]));
    let (s, _) = cp.get_json("/acme/devices/v2", &reader).await;
    assert_eq!(s, 401);
    let list = ok(&cp.admin(&["api-key", "list", "--workspace", "acme"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{list}"
    );
    let out = cp.admin(&["api-key", "revoke", &id]);
    assert!(!out.status.success(), "revoking twice is an error");
    let out = cp.admin(&["api-key", "create", "--workspace", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_keys_are_managed_on_the_host_and_reach_install_commands() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let api = cp.api_key("acme", &[]);
    let (signing, _) = outpost_common::artifact::SigningKey::generate().unwrap();
    let key = signing.public_key().to_string();

    // Malformed keys and unknown workspaces: a clear error, exit non-zero.
    for bad in ["rsa:AAAA", "ed25519:short", "ed25519:!!"] {
        let out = cp.admin(&["publisher-key", "add", "--workspace", "acme", bad]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid public key"), "{bad}: {err}");
    }
    let out = cp.admin(&["publisher-key", "add", "--workspace", "nope", &key]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let out = ok(&cp.admin(&["publisher-key", "add", "--workspace", "acme", &key]));
    assert!(out.contains(&format!("trusts {key}")), "{out}");
    let out = ok(&cp.admin(&["publisher-key", "add", "--workspace", "acme", &key]));
    assert!(out.contains("already"), "{out}");
    let list = ok(&cp.admin(&["publisher-key", "list", "--workspace", "acme"]));
    assert!(list.lines().any(|l| l.starts_with(&key)), "{list}");

    // Install commands carry the keys the workspace trusts now.
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/acme/devices/v2", cp.rest))
        .bearer_auth(&api)
        .json(&json!({"device_name": "box"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let command = created["installCommand"].as_str().unwrap();
    assert!(
        command.ends_with(&format!(" --publisher-key {key}")),
        "{command}"
    );
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/acme/devices/v2/enrollment-tokens", cp.rest))
        .bearer_auth(&api)
        .json(&json!({"name": "fleet", "max_uses": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let command = token["installCommand"].as_str().unwrap();
    assert!(
        command.contains(&format!("--publisher-key {key}")),
        "{command}"
    );

    ok(&cp.admin(&["publisher-key", "remove", "--workspace", "acme", &key]));
    let out = cp.admin(&["publisher-key", "remove", "--workspace", "acme", &key]);
    assert!(!out.status.success(), "removing twice is an error");
    let list = ok(&cp.admin(&["publisher-key", "list", "--workspace", "acme"]));
    assert!(!list.contains(&key), "{list}");

    // Changes are audited as the admin's, refusals too.
    let (s, audit) = cp
        .get_json("/acme/devices/v2/audit?direction=forward&limit=100", &api)
        .await;
    assert_eq!(s, 200, "{audit}");
    let entries: Vec<(String, u64)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "admin-cli")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .filter(|(a, _)| a.contains("PublisherKey"))
        .collect();
    let want: Vec<(String, u64)> = [
        ("addPublisherKey", 400),
        ("addPublisherKey", 400),
        ("addPublisherKey", 400),
        ("addPublisherKey", 200),
        ("addPublisherKey", 200),
        ("removePublisherKey", 200),
        ("removePublisherKey", 400),
    ]
    .iter()
    .map(|(a, s)| (a.to_string(), *s))
    .collect();
    assert_eq!(entries, want, "{audit}");
}
