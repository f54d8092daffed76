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
