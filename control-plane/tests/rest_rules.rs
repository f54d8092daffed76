//! The rules of reference/000 and /001 one by one: 400s that name the
//! parameter, feature gates, duplication, 429s, and the routes' behaviour.

mod common;

use common::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

struct Fx {
    cp: ControlPlane,
    key: String,
    http: Client,
}

impl Fx {
    fn url(&self, tail: &str) -> String {
        format!("{}/acme/devices/v2{tail}", self.cp.rest)
    }
    async fn create(&self, body: Value) -> (u16, Value) {
        let (s, _, b) = send(
            self.http
                .post(self.url(""))
                .bearer_auth(&self.key)
                .json(&body),
        )
        .await;
        (s, b)
    }
}

async fn fx_with(features: &[&str]) -> Fx {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", features);
    let key = cp.api_key("acme", &[]);
    Fx {
        cp,
        key,
        http: Client::new(),
    }
}

fn assert_400_naming(status: u16, body: &Value, word: &str) {
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not {{\"error\": string}}: {body}"));
    assert!(msg.contains(word), "{msg:?} should name {word}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_parameters_are_400_naming_the_parameter() {
    let f = fx_with(&[]).await;
    let (dev, _) = f.cp.create_device("acme", &f.key, "d").await;
    let cases: Vec<(String, &str)> = vec![
        ("?limit=0".into(), "limit"),
        ("?limit=501".into(), "limit"),
        ("?limit=ten".into(), "limit"),
        ("?cursor=***".into(), "cursor"),
        ("?status=sleeping".into(), "status"),
        ("?type=toaster".into(), "type"),
        (format!("/{dev}/telemetry?time_period=2h"), "time_period"),
        (
            format!("/{dev}/telemetry/raw?start_time=yesterday"),
            "start_time",
        ),
        (
            format!("/{dev}/telemetry/raw?end_time=2026-13-01T00:00:00Z"),
            "end_time",
        ),
        (format!("/{dev}/telemetry/raw?direction=up"), "direction"),
        (format!("/{dev}/telemetry/raw?cursor=e30"), "cursor"),
        (format!("/{dev}/telemetry/raw?limit=1001"), "limit"),
        (
            format!(
                "/{dev}/telemetry/raw?start_time=2026-02-01T00:00:00Z&end_time=2026-01-01T00:00:00Z"
            ),
            "start_time",
        ),
        (format!("/{dev}/events?direction=sideways"), "direction"),
        (format!("/{dev}/events?cursor=abc"), "cursor"),
        (format!("/{dev}/config?version=0"), "version"),
        (format!("/{dev}/config/versions?limit=101"), "limit"),
        (format!("/{dev}/logs?severity=loud"), "severity"),
        (format!("/{dev}/logs?start_time=soon"), "start_time"),
    ];
    for (tail, word) in cases {
        let (s, _, b) = send(f.http.get(f.url(&tail)).bearer_auth(&f.key)).await;
        assert_400_naming(s, &b, word);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_bodies_are_400_naming_the_field() {
    let f = fx_with(&[]).await;
    let (dev, _) = f.cp.create_device("acme", &f.key, "d").await;
    let (s, b) = f.create(json!({"device_name": ["x"]})).await;
    assert_400_naming(s, &b, "device_name");
    let (s, b) = f
        .create(json!({"device_name": "x", "offline_mode": "yes"}))
        .await;
    assert_400_naming(s, &b, "offline_mode");
    let patch = |body: Value| {
        send(
            f.http
                .patch(f.url(&format!("/{dev}")))
                .bearer_auth(&f.key)
                .json(&body),
        )
    };
    let (s, _, b) = patch(json!({"enabled": "no"})).await;
    assert_400_naming(s, &b, "enabled");
    let (s, _, b) = patch(json!({"colour": "red"})).await;
    assert_400_naming(s, &b, "colour");
    let (s, _, b) = patch(json!({})).await;
    assert_400_naming(s, &b, "nothing to update");
    let (s, _, b) = patch(json!({"name": ""})).await;
    assert_400_naming(s, &b, "name");
    // Names reach terminals and pages: no control characters.
    let (s, _, b) = patch(json!({"name": "cam\u{1b}[2J"})).await;
    assert_400_naming(s, &b, "control characters");
    let (s, b) = f.create(json!({"device_name": "cam\u{7}bell"})).await;
    assert_400_naming(s, &b, "control characters");
    let put = |body: Value| {
        send(
            f.http
                .put(f.url(&format!("/{dev}/config")))
                .bearer_auth(&f.key)
                .json(&body),
        )
    };
    let (s, _, b) = put(json!([1, 2])).await;
    assert_400_naming(s, &b, "object");
    let (s, _, b) = put(json!({"telemetry_interval_secs": 0})).await;
    assert_400_naming(s, &b, "telemetry_interval_secs");
    let (s, _, b) = send(
        f.http
            .put(f.url(&format!("/{dev}/config")))
            .bearer_auth(&f.key)
            .header("content-type", "application/json")
            .body("{\"a\":"),
    )
    .await;
    assert_400_naming(s, &b, "invalid request body");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_follows_reference_001() {
    // Neither feature.
    let f = fx_with(&[]).await;
    let (s, b) = f
        .create(json!({"device_name": "a", "device_type": "ai1"}))
        .await;
    assert_eq!(s, 403, "{b}");
    assert!(b["error"].as_str().unwrap().contains("deviceAio"));
    let (s, b) = f
        .create(json!({"device_name": "a", "offline_mode": true}))
        .await;
    assert_400_naming(s, &b, "offline_mode");
    let (s, b) = f
        .create(json!({"device_name": "a", "device_type": "edge"}))
        .await;
    assert_eq!(s, 201, "{b}");
    assert!(b.get("offlineProvisioningQrPayload").is_none());

    // AI1 but not lite mode.
    let f = fx_with(&["deviceAio"]).await;
    let (s, b) = f
        .create(json!({"device_name": "a", "device_type": "ai1", "offline_mode": true}))
        .await;
    assert_eq!(s, 403, "{b}");
    assert!(b["error"].as_str().unwrap().contains("roboflowLiteMode"));
    // The slug rule: a name without any letter or digit…
    let (s, b) = f
        .create(json!({"device_name": "!!! ???", "device_type": "ai1"}))
        .await;
    assert_400_naming(s, &b, "device_name");
    // …is fine with a workflow_id, or for edge devices.
    let (s, _) = f
        .create(json!({"device_name": "!!!", "device_type": "ai1", "workflow_id": "wf-1"}))
        .await;
    assert_eq!(s, 201);
    let (s, _) = f
        .create(json!({"device_name": "!!!", "device_type": "edge"}))
        .await;
    assert_eq!(s, 201);

    // Both features: offline AI1 gets a QR payload with what it needs to enroll.
    let f = fx_with(&["deviceAio", "roboflowLiteMode"]).await;
    let (s, b) = f
        .create(json!({"device_name": "Line 3", "device_type": "ai1", "offline_mode": true}))
        .await;
    assert_eq!(s, 201, "{b}");
    let qr: Value =
        serde_json::from_str(b["offlineProvisioningQrPayload"].as_str().unwrap()).unwrap();
    assert_eq!(qr["v"], 1);
    assert_eq!(qr["installId"], b["installId"]);
    assert_eq!(qr["deviceId"], b["deviceId"]);
    assert_eq!(qr["caFingerprint"], f.cp.fingerprint.as_str());
    assert!(qr["server"].as_str().unwrap().starts_with("https://"));
    // …and the box's reader takes it.
    let read = outpost_common::offline::OfflinePayload::parse(
        b["offlineProvisioningQrPayload"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(read.install_id, b["installId"].as_str().unwrap());
    let cmd = b["installCommand"].as_str().unwrap();
    assert!(cmd.contains(&f.cp.fingerprint) && cmd.contains(b["installId"].as_str().unwrap()));
    let (_, dev) =
        f.cp.get_json(
            &format!("/acme/devices/v2/{}", b["deviceId"].as_str().unwrap()),
            &f.key,
        )
        .await;
    assert_eq!(dev["type"], "ai1");
    assert_eq!(dev["offline_mode"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplication_copies_config_within_the_workspace_only() {
    let f = fx_with(&[]).await;
    f.cp.create_workspace("globex", &[]);
    let globex = f.cp.api_key("globex", &[]);
    let (src, _) = f.cp.create_device("acme", &f.key, "src").await;
    let cfg = json!({"telemetry_interval_secs": 42, "site": "berlin"});
    let (s, _, _) = send(
        f.http
            .put(f.url(&format!("/{src}/config")))
            .bearer_auth(&f.key)
            .json(&cfg),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = f
        .create(json!({"device_name": "copy", "sourceDeviceId": src}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (_, c) =
        f.cp.get_json(
            &format!(
                "/acme/devices/v2/{}/config",
                b["deviceId"].as_str().unwrap()
            ),
            &f.key,
        )
        .await;
    assert_eq!(c["config"], cfg);
    assert_eq!(c["version"], 1);

    let (theirs, _) = f.cp.create_device("globex", &globex, "theirs").await;
    let (s, b) = f
        .create(json!({"device_name": "copy", "sourceDeviceId": theirs}))
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = f
        .create(json!({"device_name": "copy", "sourceDeviceId": "nosuchdevice"}))
        .await;
    assert_eq!(s, 404, "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_limited_per_ip_with_a_plain_429() {
    let f = fx_with(&[]).await;
    let (dev, _) = f.cp.create_device("acme", &f.key, "d").await;
    for _ in 0..5 {
        let (s, _, b) = send(
            f.http
                .get(f.url(&format!("/{dev}/logs")))
                .bearer_auth(&f.key),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["data"], json!([]));
        assert_eq!(b["pagination"]["has_more"], false);
    }
    let resp = f
        .http
        .get(f.url(&format!("/{dev}/logs")))
        .bearer_auth(&f.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let text = resp.text().await.unwrap();
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "plain string, not JSON: {text}"
    );
    assert!(text.contains("Too many requests"));
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_reads_are_limited_per_device_with_a_json_429() {
    let f = fx_with(&[]).await;
    let (a, _) = f.cp.create_device("acme", &f.key, "a").await;
    let (b, _) = f.cp.create_device("acme", &f.key, "b").await;
    for i in 0..10 {
        let tail = if i % 2 == 0 {
            format!("/{a}/telemetry")
        } else {
            format!("/{a}/telemetry/raw")
        };
        let (s, _, body) = send(f.http.get(f.url(&tail)).bearer_auth(&f.key)).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, h, body) = send(
        f.http
            .get(f.url(&format!("/{a}/telemetry/raw")))
            .bearer_auth(&f.key),
    )
    .await;
    assert_eq!(s, 429);
    assert!(
        body["error"].as_str().unwrap().contains("rate limit"),
        "{body}"
    );
    assert!(h.contains_key("retry-after"));
    // Another device has its own budget.
    let (s, _, _) = send(
        f.http
            .get(f.url(&format!("/{b}/telemetry")))
            .bearer_auth(&f.key),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bucketed_telemetry_reports_its_period_and_bucket() {
    let f = fx_with(&[]).await;
    let (dev, _) = f.cp.create_device("acme", &f.key, "d").await;
    for (period, bucket, source) in [
        ("1h", "1 MINUTE", "1m"),
        ("24h", "15 MINUTE", "1m"),
        ("7d", "1 HOUR", "1h"),
        ("30d", "1 DAY", "1h"),
    ] {
        let (s, _, b) = send(
            f.http
                .get(f.url(&format!("/{dev}/telemetry?time_period={period}")))
                .bearer_auth(&f.key),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["time_period"], period);
        assert_eq!(b["bucket"], bucket);
        assert_eq!(b["source"], source, "the rollup tier read");
        assert_eq!(b["data"], json!([]));
    }
    let (_, _, b) = send(
        f.http
            .get(f.url(&format!("/{dev}/telemetry")))
            .bearer_auth(&f.key),
    )
    .await;
    assert_eq!(b["time_period"], "24h", "default period");
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_delete_reset_and_install_id_do_what_they_say() {
    let f = fx_with(&[]).await;
    let (dev, old_install) = f.cp.create_device("acme", &f.key, "before").await;
    let (s, _, b) = send(
        f.http
            .patch(f.url(&format!("/{dev}")))
            .bearer_auth(&f.key)
            .json(&json!({"name": "after", "description": "north gate", "enabled": false})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (
            b["name"].as_str(),
            b["description"].as_str(),
            b["enabled"].as_bool()
        ),
        (Some("after"), Some("north gate"), Some(false))
    );

    // Reset: a fresh device key and the environment; the previous key dies.
    let reset = || {
        send(
            f.http
                .post(f.url(&format!("/{dev}/connections/reset")))
                .bearer_auth(&f.key),
        )
    };
    let (s, _, first) = reset().await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["deviceId"], dev.as_str());
    assert_eq!(first["tenantId"], "acme");
    assert!(
        first["environment"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    let k1 = first["apiKey"].as_str().unwrap().to_string();
    let (_, _, second) = reset().await;
    let k2 = second["apiKey"].as_str().unwrap().to_string();
    assert_ne!(k1, k2);
    let (s, _) = f.cp.get_json(&format!("/acme/devices/v2/{dev}"), &k1).await;
    assert_eq!(s, 401, "the replaced key no longer works");
    let (s, _) = f.cp.get_json(&format!("/acme/devices/v2/{dev}"), &k2).await;
    assert_eq!(s, 200);

    // A new install ID voids the old one.
    let (s, _, b) = send(
        f.http
            .post(f.url(&format!("/{dev}/install-id")))
            .bearer_auth(&f.key),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let new_install = b["installId"].as_str().unwrap().to_string();
    assert_ne!(new_install, old_install);
    // (the device is disabled: enable it so enrollment may proceed)
    let (s, _, _) = send(
        f.http
            .patch(f.url(&format!("/{dev}")))
            .bearer_auth(&f.key)
            .json(&json!({"enabled": true})),
    )
    .await;
    assert_eq!(s, 200);
    let state = tempfile::tempdir().unwrap();
    let out = enroll(&f.cp, &old_install, state.path());
    assert_eq!(out.status.code(), Some(3), "old install ID refused");
    let out = enroll(&f.cp, &new_install, state.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Events, newest first by default; forward gives oldest first.
    let (_, ev) =
        f.cp.get_json(&format!("/acme/devices/v2/{dev}/events"), &f.key)
            .await;
    let kinds: Vec<&str> = ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"enrolled"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"created"));
    for k in [
        "updated",
        "disabled",
        "enabled",
        "reset",
        "install_id_issued",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let (_, fwd) =
        f.cp.get_json(
            &format!("/acme/devices/v2/{dev}/events?direction=forward&limit=2"),
            &f.key,
        )
        .await;
    assert_eq!(fwd["data"][0]["type"], "created");
    assert_eq!(fwd["pagination"]["has_more"], true);
    let cursor = fwd["pagination"]["next_cursor"].as_str().unwrap();
    let (_, next) =
        f.cp.get_json(
            &format!("/acme/devices/v2/{dev}/events?direction=forward&limit=2&cursor={cursor}"),
            &f.key,
        )
        .await;
    assert!(next["data"][0]["id"].as_i64().unwrap() > fwd["data"][1]["id"].as_i64().unwrap());

    // Delete: 204, then gone everywhere.
    let (s, _, _) = send(f.http.delete(f.url(&format!("/{dev}"))).bearer_auth(&f.key)).await;
    assert_eq!(s, 204);
    let (s, _) =
        f.cp.get_json(&format!("/acme/devices/v2/{dev}"), &f.key)
            .await;
    assert_eq!(s, 404);
    let (_, list) = f.cp.get_json("/acme/devices/v2", &f.key).await;
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["id"] != dev.as_str())
    );
    let (s, _) = f.cp.get_json(&format!("/acme/devices/v2/{dev}"), &k2).await;
    assert_eq!(s, 401, "its device key is revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_versions_and_default_config() {
    let f = fx_with(&[]).await;
    let (dev, _) = f.cp.create_device("acme", &f.key, "d").await;
    let (_, d) =
        f.cp.get_json("/acme/devices/v2/default-config", &f.key)
            .await;
    assert_eq!(d["config"], json!({}));
    assert!(d["known_keys"]["telemetry_interval_secs"].is_string());
    let (_, c) =
        f.cp.get_json(&format!("/acme/devices/v2/{dev}/config"), &f.key)
            .await;
    assert_eq!((c["version"].as_u64(), &c["config"]), (Some(1), &json!({})));
    for n in [20, 30] {
        let (s, _, b) = send(
            f.http
                .put(f.url(&format!("/{dev}/config")))
                .bearer_auth(&f.key)
                .json(&json!({"telemetry_interval_secs": n})),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    let (_, c) =
        f.cp.get_json(&format!("/acme/devices/v2/{dev}/config"), &f.key)
            .await;
    assert_eq!(c["version"], 3);
    let (_, v2) =
        f.cp.get_json(&format!("/acme/devices/v2/{dev}/config?version=2"), &f.key)
            .await;
    assert_eq!(v2["config"]["telemetry_interval_secs"], 20);
    let (s, _) =
        f.cp.get_json(&format!("/acme/devices/v2/{dev}/config?version=9"), &f.key)
            .await;
    assert_eq!(s, 404);
    let (_, hist) =
        f.cp.get_json(
            &format!("/acme/devices/v2/{dev}/config/versions?limit=2"),
            &f.key,
        )
        .await;
    let versions: Vec<u64> = hist["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![3, 2]);
    assert_eq!(hist["pagination"]["has_more"], true);
}

/// PUT answers with warnings naming keys the agent does not act on (and the
/// likely intended key); PATCH is an RFC 7396 merge patch on the current
/// version.
#[tokio::test(flavor = "multi_thread")]
async fn config_writes_warn_of_unknown_keys_and_patch_merges() {
    let f = fx_with(&[]).await;
    let (dev, _) = f.cp.create_device("acme", &f.key, "d").await;
    let (s, _, b) = send(
        f.http
            .put(f.url(&format!("/{dev}/config")))
            .bearer_auth(&f.key)
            .json(&json!({"telemetry_intervall_secs": 5, "site": "berlin"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let warnings = b["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{b}");
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("\"telemetry_intervall_secs\" is not a key the agent acts on (kept as is); did you mean \"telemetry_interval_secs\"?")),
        "{b}"
    );
    let version = b["version"].as_u64().unwrap();

    let patch = |body: &str| {
        send(
            f.http
                .patch(f.url(&format!("/{dev}/config")))
                .bearer_auth(&f.key)
                .header("content-type", "application/merge-patch+json")
                .body(body.to_string()),
        )
    };
    let (s, _, b) =
        patch(r#"{"telemetry_interval_secs": 30, "telemetry_intervall_secs": null}"#).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["version"].as_u64(), Some(version + 1), "{b}");
    assert_eq!(
        b["config"],
        json!({"site": "berlin", "telemetry_interval_secs": 30}),
        "{b}"
    );
    assert_eq!(b["warnings"].as_array().unwrap().len(), 1, "{b}");
    let (s, _, b) = patch(r#"{"telemetry_interval_secs": 0}"#).await;
    assert_400_naming(s, &b, "telemetry_interval_secs");
    let (s, _, b) = patch("[1]").await;
    assert_400_naming(s, &b, "JSON object");
    let (s, _, b) = send(
        f.http
            .get(f.url(&format!("/{dev}/config")))
            .bearer_auth(&f.key),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b["version"].as_u64(),
        Some(version + 1),
        "refused patches store nothing: {b}"
    );
}

/// `severity=warn` (and the other common names) mean the stored severities.
#[tokio::test(flavor = "multi_thread")]
async fn log_severity_takes_the_common_aliases() {
    let f = fx_with(&[]).await;
    let (dev, _) = f.cp.create_device("acme", &f.key, "d").await;
    let (s, _, b) = send(
        f.http
            .get(f.url(&format!("/{dev}/logs?severity=warn")))
            .bearer_auth(&f.key),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = send(
        f.http
            .get(f.url(&format!("/{dev}/logs?severity=loud")))
            .bearer_auth(&f.key),
    )
    .await;
    assert_400_naming(s, &b, "warn, err");
}
