//! Operators watching, end to end with the real binaries: the SSE telemetry
//! stream and the Prometheus `/metrics` export.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const EVENT: Duration = Duration::from_secs(15);

/// A control plane, a workspace key and an enrolled agent sampling at 1 Hz.
async fn fleet_of_one(
    extra: &[&str],
) -> (ControlPlane, String, String, AgentProc, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&tmp.path().join("data"), extra);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install) = cp.create_device("acme", &key, "cam-1").await;
    let state = tmp.path().join("agent");
    let out = enroll(&cp, &install, &state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = AgentProc::run(&state, "1s");
    (cp, key, device, agent, tmp)
}

#[tokio::test]
async fn sse_streams_committed_samples_in_order_resumes_and_ends_on_delete() {
    let (cp, key, device, _agent, _tmp) = fleet_of_one(&[]).await;
    let path = format!("/acme/devices/v2/{device}/telemetry/stream");
    let mut live = SseStream::open(&cp, &path, &key, &[]).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (seq, sample) = live.sample(EVENT).await;
        assert!(sample["cpu_percent"].as_f64().is_some(), "{sample}");
        assert!(sample["memory_total_bytes"].as_u64().unwrap() > 0);
        seen.push((seq, sample));
    }
    let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "consecutive, in order: {seqs:?}");
    }
    // What the stream sent is what the store holds.
    let stored = all_samples(&cp, "acme", &key, &device).await;
    let by_seq: HashMap<u64, &Value> = stored
        .iter()
        .map(|s| (s["seq"].as_u64().unwrap(), s))
        .collect();
    for (seq, sample) in &seen {
        assert_eq!(by_seq[seq], sample, "seq {seq}");
    }

    // A client that lost its connection resumes after the last id it saw:
    // the stored samples after it come first, then new ones, none missing.
    let resume_from = seqs[1];
    let mut resumed = SseStream::open(
        &cp,
        &path,
        &key,
        &[("Last-Event-ID", &resume_from.to_string())],
    )
    .await;
    for want in resume_from + 1..=seqs[3] + 1 {
        let (seq, _) = resumed.sample(EVENT).await;
        assert_eq!(seq, want);
    }
    // ?after_seq= does the same for clients that cannot set headers.
    let mut replay = SseStream::open(&cp, &format!("{path}?after_seq=0"), &key, &[]).await;
    assert_eq!(
        replay.sample(EVENT).await.0,
        stored[0]["seq"].as_u64().unwrap()
    );

    // Deleting the device ends every stream with a reason, then closes it.
    let resp = reqwest::Client::new()
        .delete(format!("{}/acme/devices/v2/{device}", cp.rest))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    for stream in [&mut live, &mut resumed, &mut replay] {
        let end = loop {
            let ev = stream
                .next(EVENT)
                .await
                .expect("an end event before closing");
            if ev.event != "sample" {
                break ev;
            }
        };
        assert_eq!(end.event, "end");
        assert_eq!(end.json()["reason"], "device_deleted");
        assert!(stream.next(EVENT).await.is_none(), "closed after end");
    }
}

#[tokio::test]
async fn sse_refuses_bad_requests_and_ends_when_the_key_is_revoked() {
    let (cp, key, device, _agent, _tmp) = fleet_of_one(&[]).await;
    let path = format!("/acme/devices/v2/{device}/telemetry/stream");
    let status = |p: String, k: Option<String>, h: Option<(&'static str, &'static str)>| {
        let url = format!("{}{p}", cp.rest);
        async move {
            let mut req = reqwest::Client::new().get(url);
            if let Some(k) = k {
                req = req.bearer_auth(k);
            }
            if let Some((n, v)) = h {
                req = req.header(n, v);
            }
            let resp = req.send().await.unwrap();
            let code = resp.status().as_u16();
            (code, resp.text().await.unwrap())
        }
    };
    assert_eq!(status(path.clone(), None, None).await.0, 401);
    let (code, body) = status(
        path.clone(),
        Some(key.clone()),
        Some(("Last-Event-ID", "x")),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("Last-Event-ID"), "{body}");
    let (code, body) = status(format!("{path}?after_seq=-1"), Some(key.clone()), None).await;
    assert_eq!((code, body.contains("after_seq")), (400, true), "{body}");
    let missing = "/acme/devices/v2/nosuchdevice/telemetry/stream".to_string();
    assert_eq!(status(missing, Some(key.clone()), None).await.0, 404);
    let writer_only = cp.api_key("acme", &["device:update"]);
    assert_eq!(status(path.clone(), Some(writer_only), None).await.0, 403);
    cp.create_workspace("other", &[]);
    let other_key = cp.api_key("other", &[]);
    let other = format!("/other/devices/v2/{device}/telemetry/stream");
    assert_eq!(status(other, Some(other_key), None).await.0, 404);

    // A reader key, revoked with the admin CLI while its stream is open.
    let out = cp.admin(&[
        "api-key",
        "create",
        "--workspace",
        "acme",
        "--scope",
        "device:read",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key_id = text
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap()
        .to_string();
    let reader = text.lines().last().unwrap().to_string();
    let mut live = SseStream::open(&cp, &path, &reader, &[]).await;
    live.sample(EVENT).await;
    assert!(cp.admin(&["api-key", "revoke", &key_id]).status.success());
    let end = loop {
        let ev = live.next(EVENT).await.expect("an end event");
        if ev.event != "sample" {
            break ev;
        }
    };
    assert_eq!(end.json()["reason"], "api_key_revoked");
    assert!(live.next(EVENT).await.is_none());
}

/// Parses with prometheus-parse and, where installed (CI installs it),
/// lints with Prometheus' own `promtool check metrics`.
fn parse_metrics(text: &str) -> Vec<prometheus_parse::Sample> {
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) if std::env::var_os("OUTPOST_CI").is_none() => {
            eprintln!("promtool not installed: format checked by prometheus-parse only");
        }
        Err(e) => panic!("promtool is required in CI: {e}"),
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .expect("Prometheus text format")
        .samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        })
}

async fn scrape(cp: &ControlPlane, token: Option<&str>) -> (u16, String) {
    scrape_path(cp, token, "/metrics").await
}

async fn scrape_path(cp: &ControlPlane, token: Option<&str>, path: &str) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", cp.rest));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    if code == 200 {
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    }
    (code, resp.text().await.unwrap())
}

#[tokio::test]
async fn metrics_export_the_fleet_and_the_control_plane_in_prometheus_format() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("scrape-token");
    let token = "scrape-0123456789abcdef";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let (cp, key, device, _agent, _tmp) =
        fleet_of_one(&["--metrics-token-file", token_file.to_str().unwrap()]).await;
    cp.create_workspace("other", &[]);
    let other_key = cp.api_key("other", &[]);
    let (other_device, _) = cp
        .create_device("other", &other_key, "never-enrolled")
        .await;

    // Wait until a few samples are stored and the device is online.
    let path = format!("/acme/devices/v2/{device}/telemetry/stream");
    let mut live = SseStream::open(&cp, &path, &key, &[]).await;
    live.sample(EVENT).await;
    live.sample(EVENT).await;
    drop(live);

    let (code, text) = scrape(&cp, Some(&key)).await;
    assert_eq!(code, 200, "{text}");
    let samples = parse_metrics(&text);
    let dev = [("workspace", "acme"), ("device", device.as_str())];
    assert_eq!(
        value(&samples, "outpost_device_up", &dev),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&samples, "outpost_device_enabled", &dev), Some(1.0));
    let info = [
        ("device", device.as_str()),
        ("name", "cam-1"),
        ("type", "edge"),
    ];
    assert_eq!(value(&samples, "outpost_device_info", &info), Some(1.0));
    // The exported values are the latest stored sample's (read just after).
    let (_, dev_view) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    let latest = &dev_view["latest_telemetry"];
    let exported_time = value(
        &samples,
        "outpost_device_last_sample_timestamp_seconds",
        &dev,
    )
    .unwrap();
    let stored = all_samples(&cp, "acme", &key, &device).await;
    let at_scrape = stored
        .iter()
        .rev()
        .find(|s| {
            let t = time::OffsetDateTime::parse(
                s["timestamp"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            (t.unix_timestamp_nanos() as f64 / 1e9 - exported_time).abs() < 0.0005
        })
        .expect("the exported sample time is a stored sample's");
    let cpu = value(&samples, "outpost_device_cpu_usage_ratio", &dev).unwrap();
    assert!((cpu - at_scrape["cpu_percent"].as_f64().unwrap() / 100.0).abs() < 1e-6);
    assert!((0.0..=1.0).contains(&cpu));
    assert_eq!(
        value(&samples, "outpost_device_memory_total_bytes", &dev),
        at_scrape["memory_total_bytes"].as_f64()
    );
    assert_eq!(
        value(&samples, "outpost_device_memory_used_bytes", &dev),
        at_scrape["memory_used_bytes"].as_f64()
    );
    assert_eq!(
        value(&samples, "outpost_device_network_receive_bytes_total", &dev),
        at_scrape["network_rx_bytes"].as_f64()
    );
    assert!(latest["seq"].as_u64().unwrap() >= at_scrape["seq"].as_u64().unwrap());
    assert!(
        value(
            &samples,
            "outpost_device_certificate_expiry_timestamp_seconds",
            &dev
        )
        .unwrap()
            > 1.7e9
    );
    // A workspace key sees only its workspace, and not the process-wide
    // figures (they would show other tenants' activity).
    assert!(
        !text.contains(&other_device),
        "another workspace's device leaked"
    );
    assert!(!text.contains("outpost_samples_ingested_total"), "{text}");

    // The scrape token sees every workspace and the control plane's own.
    let (code, all) = scrape(&cp, Some(token)).await;
    assert_eq!(code, 200);
    let samples = parse_metrics(&all);
    let ingested = value(&samples, "outpost_samples_ingested_total", &[]).unwrap();
    assert!(ingested >= 2.0, "{ingested}");
    assert_eq!(value(&samples, "outpost_connected_devices", &[]), Some(1.0));
    let acks = value(
        &samples,
        "outpost_ack_latency_seconds_count",
        &[("stream", "telemetry")],
    )
    .unwrap();
    assert!(acks >= 2.0);
    assert!(all.contains("outpost_store_write_seconds_bucket{op=\"telemetry_commit\""));
    let other = [("workspace", "other"), ("device", other_device.as_str())];
    assert_eq!(value(&samples, "outpost_device_up", &other), Some(0.0));
    assert_eq!(
        value(&samples, "outpost_device_cpu_usage_ratio", &other),
        None,
        "no sample yet"
    );
    assert_eq!(value(&samples, "outpost_device_up", &dev), Some(1.0));

    // Every scrape says how old its device part is.
    assert!(value(&samples, "outpost_fleet_metrics_age_seconds", &[]).is_some());

    // `?workspace=` narrows the token's scrape to one workspace's devices,
    // without the process-wide figures.
    let (code, only_other) = scrape_path(&cp, Some(token), "/metrics?workspace=other").await;
    assert_eq!(code, 200, "{only_other}");
    let narrowed = parse_metrics(&only_other);
    assert_eq!(value(&narrowed, "outpost_device_up", &other), Some(0.0));
    assert_eq!(value(&narrowed, "outpost_device_up", &dev), None);
    assert!(!only_other.contains("outpost_samples_ingested_total"));
    assert!(value(&narrowed, "outpost_fleet_metrics_age_seconds", &[]).is_some());
    let (code, body) = scrape_path(&cp, Some(token), "/metrics?workspace=nope").await;
    assert_eq!(code, 404, "{body}");
    // A workspace key names its own workspace only.
    let (code, body) = scrape_path(&cp, Some(&key), "/metrics?workspace=other").await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        scrape_path(&cp, Some(&key), "/metrics?workspace=acme")
            .await
            .0,
        200
    );

    // Prometheus asks for gzip: one gzip member holding the same families.
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", cp.rest))
        .bearer_auth(token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let gz = resp.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let unzipped = parse_metrics(&text);
    assert_eq!(value(&unzipped, "outpost_device_up", &dev), Some(1.0));
    assert_eq!(
        value(&unzipped, "outpost_connected_devices", &[]),
        Some(1.0)
    );

    // Refusals.
    assert_eq!(scrape(&cp, None).await.0, 401);
    let in_url = reqwest::get(format!("{}/metrics?api_key={key}", cp.rest))
        .await
        .unwrap();
    assert_eq!(in_url.status(), 400, "credentials in the URL are refused");
    assert_eq!(scrape(&cp, Some("scrape-wrong-token-000")).await.0, 401);
    let writer = cp.api_key("acme", &["device:update"]);
    let (code, body) = scrape(&cp, Some(&writer)).await;
    assert_eq!(code, 403);
    assert!(body.contains("device:read"), "{body}");
}

#[tokio::test]
async fn device_views_carry_the_latest_sample() {
    let (cp, key, device, _agent, _tmp) = fleet_of_one(&[]).await;
    let (fresh, _) = cp.create_device("acme", &key, "not-yet").await;
    let latest = wait_until("a stored sample", TIMEOUT, || async {
        let (_, v) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        (!v["latest_telemetry"].is_null()).then_some(v["latest_telemetry"].clone())
    })
    .await;
    let stored = all_samples(&cp, "acme", &key, &device).await;
    let newest = stored
        .iter()
        .find(|s| s["seq"] == latest["seq"])
        .expect("the latest sample is stored");
    assert_eq!(newest, &latest);
    let (_, list) = cp.get_json("/acme/devices/v2", &key).await;
    let rows = list["data"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|d| d["id"] == id).unwrap().clone();
    assert!(
        row(&device)["latest_telemetry"]["seq"].as_u64().unwrap()
            >= latest["seq"].as_u64().unwrap()
    );
    assert!(row(&fresh)["latest_telemetry"].is_null());
}
