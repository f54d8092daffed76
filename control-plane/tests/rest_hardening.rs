//! REST hardening (issue 21): device keys read and nothing more, scope
//! before validation on every write route of the OpenAPI document, control
//! characters refused, every error a JSON body, one credential per request,
//! and `X-Forwarded-For` from trusted proxies only.

mod common;

use common::*;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

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

async fn send(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut req = Client::new().request(Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A disabled box cannot undo its disable with the key it keeps on disk,
/// nor rename, delete, re-key or reconfigure itself; it still reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_key_reads_its_device_and_changes_nothing() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let admin = cp.api_key("acme", &[]);
    let (dev, _) = cp.create_device("acme", &admin, "box").await;
    let key = device_key(&cp, &admin, &dev).await;
    let base = format!("{}/acme/devices/v2/{dev}", cp.rest);

    let (s, _) = send(
        "PATCH",
        &base,
        Some(&admin),
        Some(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200);

    let writes: Vec<(&str, String, Option<Value>)> = vec![
        ("PATCH", base.clone(), Some(json!({"enabled": true}))),
        ("PATCH", base.clone(), Some(json!({"name": "mine now"}))),
        ("PATCH", base.clone(), Some(json!({"description": "x"}))),
        ("POST", format!("{base}/install-id"), None),
        ("POST", format!("{base}/connections/reset"), None),
        (
            "PUT",
            format!("{base}/config"),
            Some(json!({"telemetry_interval_secs": 1})),
        ),
        (
            "PATCH",
            format!("{base}/config"),
            Some(json!({"telemetry_interval_secs": 1})),
        ),
        ("DELETE", base.clone(), None),
    ];
    for (method, url, body) in &writes {
        let (s, b) = send(method, url, Some(&key), body.as_ref()).await;
        assert_eq!(s, 403, "{method} {url}: {b}");
        let msg = b["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("device-scoped") && msg.contains("workspace API key"),
            "{method} {url}: {msg}"
        );
    }
    // Nothing changed: still disabled, same name, config at its first version.
    let (s, d) = cp
        .get_json(&format!("/acme/devices/v2/{dev}"), &admin)
        .await;
    assert_eq!(s, 200);
    assert_eq!(d["enabled"], false);
    assert_eq!(d["name"], "box");
    // Reads of its own device work with the device key.
    for tail in ["", "/config", "/config/versions", "/events", "/telemetry"] {
        let (s, b) = send("GET", &format!("{base}{tail}"), Some(&key), None).await;
        assert_eq!(s, 200, "GET {tail}: {b}");
    }
}

/// Substitutes the path template's parameters.
fn fill(template: &str, device: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        let name = &rest[open + 1..close];
        out.push_str(match name {
            "workspace" => "acme",
            "device_id" => device,
            _ => "x1",
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Every write route of the live OpenAPI document, with a malformed body:
/// a read-only key gets 403 (not 400 "unknown field"), a key of another
/// device 403, never a validation answer.
#[tokio::test(flavor = "multi_thread")]
async fn scope_is_checked_before_the_body_on_every_write_route() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let admin = cp.api_key("acme", &[]);
    let read_only = cp.api_key("acme", &["device:read"]);
    let (target, _) = cp.create_device("acme", &admin, "target").await;
    let (other, _) = cp.create_device("acme", &admin, "other").await;
    let other_key = device_key(&cp, &admin, &other).await;
    let (s, doc) = send("GET", &format!("{}/openapi.json", cp.rest), None, None).await;
    assert_eq!(s, 200);
    let mut walked = 0;
    let mut failures = Vec::new();
    for (template, ops) in doc["paths"].as_object().unwrap() {
        if !template.starts_with("/{workspace}") {
            continue;
        }
        for (method, _) in ops.as_object().unwrap() {
            let method = method.to_uppercase();
            if !["POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            walked += 1;
            let url = format!("{}{}", cp.rest, fill(template, &target));
            let malformed = json!({"no_such_field": "\u{1b}[2J", "device_name": 7});
            for (who, key) in [("read-only", &read_only), ("other device", &other_key)] {
                let (s, b) = send(&method, &url, Some(key), Some(&malformed)).await;
                if s != 403 {
                    failures.push(format!("{method} {template} as {who}: {s} {b}"));
                }
            }
            // Not JSON at all.
            let resp = Client::new()
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
                .bearer_auth(&read_only)
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap();
            if resp.status() != 403 {
                failures.push(format!(
                    "{method} {template} as read-only, body not JSON: {}",
                    resp.status()
                ));
            }
        }
    }
    assert!(walked >= 15, "only {walked} write routes in the document");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_are_refused_naming_the_field() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let admin = cp.api_key("acme", &[]);
    let (dev, _) = cp.create_device("acme", &admin, "box").await;
    let ws = format!("{}/acme/devices/v2", cp.rest);
    for bad in [
        "a\u{1b}[2Jb",
        "a\u{0}b",
        "a\u{7f}b",
        "a\u{9b}31mb",
        "a\nb",
        "a\u{7}b",
    ] {
        let cases: Vec<(&str, String, Value, &str)> = vec![
            (
                "POST",
                ws.clone(),
                json!({"device_name": bad}),
                "device_name",
            ),
            (
                "POST",
                ws.clone(),
                json!({"device_name": "ok", "description": bad}),
                "description",
            ),
            (
                "POST",
                ws.clone(),
                json!({"device_name": "ok", "workflow_id": bad}),
                "workflow_id",
            ),
            ("PATCH", format!("{ws}/{dev}"), json!({"name": bad}), "name"),
            (
                "PATCH",
                format!("{ws}/{dev}"),
                json!({"description": bad}),
                "description",
            ),
            (
                "POST",
                format!("{ws}/enrollment-tokens"),
                json!({"name": bad, "max_uses": 1}),
                "name",
            ),
            (
                "PATCH",
                format!("{ws}/{dev}"),
                json!({"labels": {"k": bad}}),
                "label",
            ),
        ];
        for (method, url, body, field) in cases {
            let (s, b) = send(method, &url, Some(&admin), Some(&body)).await;
            let msg = b["error"].as_str().unwrap_or_default();
            assert!(
                s == 400 && msg.contains(field),
                "{method} {url} {body}: {s} {b}"
            );
        }
    }
    // Printable Unicode is fine.
    let (s, b) = send(
        "PATCH",
        &format!("{ws}/{dev}"),
        Some(&admin),
        Some(&json!({"name": "Kamera Süd — 東京", "description": "tab\u{a0}less"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

/// Every error the REST port answers is `{"error": …}` (JSON), also those
/// made below the handlers: body limit, method, route, extractors.
#[tokio::test(flavor = "multi_thread")]
async fn every_error_body_is_json() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let admin = cp.api_key("acme", &[]);
    let (dev, _) = cp.create_device("acme", &admin, "box").await;
    let http = Client::new();
    let ws = format!("{}/acme/devices/v2", cp.rest);
    let cases = vec![
        // 413 before auth.
        http.post(&ws)
            .header("content-type", "application/json")
            .body(vec![b' '; 200 * 1024]),
        // 405.
        http.put(&ws).bearer_auth(&admin),
        http.delete(format!("{}/openapi.json", cp.rest)),
        // 404 for unknown routes.
        http.get(format!("{}/nope/nope/nope/nope", cp.rest)),
        http.get(format!("{ws}/{dev}/nope")).bearer_auth(&admin),
        // Extractor rejections: a path that is not UTF-8, a body of the
        // wrong type, a wrong content type.
        http.get(format!("{ws}/%FF")).bearer_auth(&admin),
        http.get(format!("{}/downloads/%FF", cp.rest)),
        http.post(&ws).bearer_auth(&admin).body("{}"),
        http.post(&ws)
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("[1,2"),
        http.patch(format!("{ws}/{dev}/config"))
            .bearer_auth(&admin)
            .header("content-type", "text/plain")
            .body("x"),
    ];
    for req in cases {
        let req = req.build().unwrap();
        let what = format!("{} {}", req.method(), req.url());
        let resp = http.execute(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.text().await.unwrap();
        assert!(status.is_client_error(), "{what}: {status}");
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            ctype.starts_with("application/json") && body["error"].is_string(),
            "{what}: {status} {ctype} {text:?}"
        );
    }
    // The logs limiter's 429 stays a plain string (reference/000).
    let logs = format!("{ws}/{dev}/logs");
    let mut last = None;
    for _ in 0..6 {
        last = Some(http.get(&logs).bearer_auth(&admin).send().await.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(last.status(), 429);
    assert!(serde_json::from_str::<Value>(&last.text().await.unwrap()).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_different_credentials_are_refused() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let admin = cp.api_key("acme", &[]);
    let read_only = cp.api_key("acme", &["device:read"]);
    let http = Client::new();
    let ws = format!("{}/acme/devices/v2", cp.rest);
    let resp = http
        .get(format!("{ws}?api_key={read_only}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("api_key") && msg.contains("Authorization"),
        "{msg}"
    );
    // Also an invalid one beside a valid one, on a write.
    let resp = http
        .post(format!("{ws}?api_key=opk_bogus"))
        .bearer_auth(&admin)
        .json(&json!({"device_name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The same key both ways is one credential.
    let resp = http
        .get(format!("{ws}?api_key={admin}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn audit_addresses(cp: &ControlPlane, key: &str) -> Vec<String> {
    let (s, b) = cp.get_json("/acme/devices/v2/audit?limit=500", key).await;
    assert_eq!(s, 200, "{b}");
    b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["client_address"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// From a trusted proxy the client is the right-most untrusted address of
/// `X-Forwarded-For`, for the logs limiter and the audit trail; from any
/// other peer the header is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_believed_from_trusted_proxies_only() {
    let cp = ControlPlane::in_process_with(|a| {
        a.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    cp.create_workspace("acme", &[]);
    let admin = cp.api_key("acme", &[]);
    let (dev, _) = cp.create_device("acme", &admin, "box").await;
    let http = Client::new();
    let ws = format!("{}/acme/devices/v2", cp.rest);
    // The left-most entry is the client's claim; the right-most untrusted
    // one is what the proxy saw.
    let resp = http
        .post(format!("{ws}/{dev}/install-id"))
        .bearer_auth(&admin)
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 127.0.0.2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let addrs = audit_addresses(&cp, &admin).await;
    assert_eq!(addrs[0], "203.0.113.7", "{addrs:?}");
    // Logs: 5 per minute per client IP: each forwarded client has its own.
    let logs = format!("{ws}/{dev}/logs");
    for i in 0..5 {
        let r = http
            .get(&logs)
            .bearer_auth(&admin)
            .header("x-forwarded-for", "198.51.100.1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    let r = http
        .get(&logs)
        .bearer_auth(&admin)
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = http
        .get(&logs)
        .bearer_auth(&admin)
        .header("x-forwarded-for", "198.51.100.2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Without --trusted-proxy the header is the client's word: ignored.
    let plain = ControlPlane::in_process().await;
    plain.create_workspace("acme", &[]);
    let admin = plain.api_key("acme", &[]);
    let (dev, _) = plain.create_device("acme", &admin, "box").await;
    let resp = http
        .post(format!("{}/acme/devices/v2/{dev}/install-id", plain.rest))
        .bearer_auth(&admin)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let addrs = audit_addresses(&plain, &admin).await;
    assert!(addrs[0].starts_with("127.0.0.1:"), "{addrs:?}");
}

/// The document says what the server accepts.
#[tokio::test(flavor = "multi_thread")]
async fn the_document_bounds_parameters_as_the_server_does() {
    let cp = ControlPlane::in_process().await;
    let (s, doc) = send("GET", &format!("{}/openapi.json", cp.rest), None, None).await;
    assert_eq!(s, 200);
    let mut seen = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] != "query" {
                    continue;
                }
                let name = p["name"].as_str().unwrap();
                let schema = &p["schema"];
                let at = format!("{method} {path} {name}");
                match name {
                    "limit" => {
                        assert_eq!(schema["minimum"], 1, "{at}: {schema}");
                        assert!(schema["maximum"].as_u64().is_some(), "{at}: {schema}");
                    }
                    "version" => assert_eq!(schema["minimum"], 1, "{at}: {schema}"),
                    "direction" => assert_eq!(
                        schema["enum"],
                        json!(["forward", "backward"]),
                        "{at}: {schema}"
                    ),
                    "time_period" | "status" | "type" => {
                        assert!(schema["enum"].is_array(), "{at}: {schema}")
                    }
                    _ => continue,
                }
                seen.insert(name.to_string());
            }
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [
            "direction",
            "limit",
            "status",
            "time_period",
            "type",
            "version"
        ]
    );
}
