//! Rollouts over REST and through device sessions (docs/artifacts.md): the
//! routes' status codes and scopes, and a real session that gets its
//! desired artifacts at start and when its wave starts, and whose report
//! moves the rollout on.

mod common;

use std::time::Duration;

use common::*;
use outpost_agent::link::{self, ServerUrl, Trust};
use outpost_common::artifact::{FORMAT_TAR, MANIFEST_SCHEMA, Manifest, SigningKey};
use outpost_proto::v1::agent_message::Kind as AgentKind;
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::server_message::Kind as ServerKind;
use outpost_proto::v1::{
    AgentMessage, ArtifactReport, DesiredArtifacts, EnrollRequest, Hello, InstalledArtifact,
    ServerMessage,
};
use rcgen::KeyPair;
use reqwest::Client;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::transport::Channel;

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn send(
    cp: &ControlPlane,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = Client::new()
        .request(method, format!("{}{path}", cp.rest))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post(cp: &ControlPlane, path: &str, key: &str, body: Value) -> (u16, Value) {
    send(cp, reqwest::Method::POST, path, key, Some(body)).await
}

/// Publishes `name@version` (ready unless `payload` is false).
async fn publish(
    cp: &ControlPlane,
    api: &str,
    key: &SigningKey,
    name: &str,
    version: &str,
    payload: bool,
) {
    let data = format!("payload of {name}@{version}").into_bytes();
    let m = Manifest {
        schema: MANIFEST_SCHEMA,
        name: name.into(),
        version: version.into(),
        format: FORMAT_TAR.into(),
        size: data.len() as u64,
        sha256: sha256_hex(&data),
        post_install: Some("./post-install.sh".into()),
        health_command: Some("./health.sh".into()),
        health_window_secs: 15,
        created_at: "2026-12-03T10:00:00Z".into(),
    }
    .to_json();
    let sig = key.sign(&m);
    let (s, body) = post(
        cp,
        "/acme/devices/v2/artifacts",
        api,
        json!({"manifest": m, "signature": {"public_key": sig.public_key.to_string(), "signature": sig.signature}}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    if payload {
        let resp = Client::new()
            .put(format!(
                "{}/acme/devices/v2/artifacts/{name}/{version}/payload",
                cp.rest
            ))
            .bearer_auth(api)
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

async fn label(cp: &ControlPlane, api: &str, device: &str, site: &str) {
    let (s, body) = send(
        cp,
        reqwest::Method::PATCH,
        &format!("/acme/devices/v2/{device}"),
        api,
        Some(json!({"labels": {"site": site}})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

/// A rollout setup: workspace acme, an admin key, a trusted publisher.
async fn setup() -> (ControlPlane, String, SigningKey) {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let api = cp.api_key("acme", &[]);
    let (publisher, _) = SigningKey::generate().unwrap();
    cp.add_publisher_key("acme", &publisher.public_key().to_string());
    (cp, api, publisher)
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_over_rest_follow_their_states_and_scopes() {
    let (cp, api, publisher) = setup().await;
    let reader = cp.api_key("acme", &["device:read"]);
    publish(&cp, &api, &publisher, "detector", "1.0", true).await;
    publish(&cp, &api, &publisher, "detector", "2.0", false).await;
    let mut devices = Vec::new();
    for (i, site) in ["a", "a", "a", "b"].iter().enumerate() {
        let (id, _) = cp.create_device("acme", &api, &format!("box{i}")).await;
        label(&cp, &api, &id, site).await;
        devices.push(id);
    }
    // A device key of one of them (connections/reset mints one).
    let (s, body) = post(
        &cp,
        &format!("/acme/devices/v2/{}/connections/reset", devices[3]),
        &api,
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let device_key = body["apiKey"].as_str().unwrap().to_string();

    let good = json!({"artifact": "detector@1.0", "selector": ["site=a"], "waves": ["1", "100%"],
                      "max_failures": 0, "wave_timeout": "10m", "approve_waves": true});
    let url = "/acme/devices/v2/rollouts";
    // Authorisation first.
    assert_eq!(post(&cp, url, &reader, good.clone()).await.0, 403);
    assert_eq!(post(&cp, url, &device_key, good.clone()).await.0, 403);
    let (s, _) = send(&cp, reqwest::Method::GET, url, &device_key, None).await;
    assert_eq!(s, 403);
    // Bad requests, each named.
    for (patch, needle) in [
        (json!({"waves": ["1", "50%"]}), "100%"),
        (json!({"waves": ["x", "100%"]}), "wave"),
        (json!({"selector": ["site=z"]}), "no device matches"),
        (json!({"selector": []}), "selector"),
        (json!({"artifact": "detector@2.0"}), "not ready"),
        (json!({"artifact": "detector@9.9"}), "not found"),
        (json!({"artifact": "detector"}), "artifact"),
        (json!({"wave_timeout": "0s"}), "wave_timeout"),
    ] {
        let mut body = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, resp) = post(&cp, url, &api, body).await;
        assert_eq!(s, 400, "{patch}: {resp}");
        assert!(
            resp["error"].as_str().unwrap().contains(needle),
            "{patch}: {resp}"
        );
    }

    let (s, r) = post(&cp, url, &api, good.clone()).await;
    assert_eq!(s, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["artifact"], "detector@1.0");
    assert_eq!(r["state"], "running");
    assert_eq!(r["selector"], json!(["site=a"]));
    assert_eq!(r["wave_timeout"], "10m");
    assert_eq!(r["approve_waves"], true);
    let waves: Vec<(u64, String, u64, String)> = r["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["index"].as_u64().unwrap(),
                w["spec"].as_str().unwrap().into(),
                w["size"].as_u64().unwrap(),
                w["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        waves,
        vec![
            (1, "1".into(), 1, "current".into()),
            (2, "100%".into(), 2, "waiting".into())
        ]
    );
    let in_rollout: Vec<&str> = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(in_rollout.len(), 3);
    assert!(
        !in_rollout.contains(&devices[3].as_str()),
        "site=b is not in it"
    );
    assert!(
        r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "pending")
    );

    // One active rollout per artifact name.
    let (s, resp) = post(&cp, url, &api, good.clone()).await;
    assert_eq!(s, 409, "{resp}");

    let (s, got) = cp.get_json(&format!("{url}/{id}"), &reader).await;
    assert_eq!(s, 200);
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["devices_total"], 3);
    assert_eq!(got["device_counts"]["pending"], 3);
    let (s, list) = cp.get_json(url, &reader).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"][0]["id"], id.as_str());
    // The list: counts per state instead of the devices, one page.
    let listed = &list["data"][0];
    assert!(listed.get("devices").is_none(), "{listed}");
    assert_eq!(listed["devices_total"], 3);
    assert_eq!(
        listed["device_counts"],
        json!({"pending": 3, "downloading": 0, "installing": 0, "verifying": 0,
               "succeeded": 0, "failed": 0, "rolled_back": 0})
    );
    assert_eq!(listed["waves"][1]["size"], 2);
    assert_eq!(list["pagination"]["has_more"], false);
    assert_eq!(list["pagination"]["limit"], 50);
    let (s, body) = cp.get_json(&format!("{url}?limit=501"), &reader).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = cp.get_json(&format!("{url}?cursor=garbage"), &reader).await;
    assert_eq!(s, 400, "{body}");
    let (s, _) = cp.get_json(&format!("{url}/ro_nothere"), &reader).await;
    assert_eq!(s, 404);

    let act = |a: &'static str| {
        let cp = &cp;
        let url = format!("{url}/{id}/{a}");
        let api = api.clone();
        async move { post(cp, &url, &api, json!({})).await }
    };
    assert_eq!(
        post(&cp, &format!("{url}/{id}/pause"), &reader, json!({}))
            .await
            .0,
        403
    );
    let (s, resp) = act("resume").await;
    assert_eq!(s, 409, "{resp}");
    assert!(
        resp["error"].as_str().unwrap().contains("running"),
        "{resp}"
    );
    assert_eq!(act("approve").await.0, 409);
    let (s, resp) = act("pause").await;
    assert_eq!((s, resp["state"].as_str()), (200, Some("paused")), "{resp}");
    let (s, resp) = act("pause").await;
    assert_eq!(s, 409);
    assert!(resp["error"].as_str().unwrap().contains("paused"), "{resp}");
    let (s, resp) = act("resume").await;
    assert_eq!(
        (s, resp["state"].as_str()),
        (200, Some("running")),
        "{resp}"
    );
    let (s, resp) = act("abort").await;
    assert_eq!(
        (s, resp["state"].as_str()),
        (200, Some("aborted")),
        "{resp}"
    );
    let (s, resp) = act("abort").await;
    assert_eq!(s, 409);
    assert!(
        resp["error"].as_str().unwrap().contains("aborted"),
        "{resp}"
    );
    // The name is free again.
    let (s, resp) = post(&cp, url, &api, good).await;
    assert_eq!(s, 201, "{resp}");
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

async fn client(cp: &ControlPlane, identity: Option<Identity>) -> DeviceServiceClient<Channel> {
    let trust = Trust::from_ca_file(&cp.ca_path()).unwrap();
    let tls = link::client_config(&trust, identity).unwrap();
    let server = ServerUrl::parse(&cp.grpc_url()).unwrap();
    DeviceServiceClient::new(link::connect(&server, tls).await.unwrap())
}

/// Enrolls a new device of acme labelled `site`; its id and a client with
/// its certificate.
async fn enrolled(
    cp: &ControlPlane,
    api: &str,
    site: &str,
) -> (String, DeviceServiceClient<Channel>) {
    enrolled_to(cp, cp, api, site).await
}

/// As [`enrolled`], the client connected to `to` (another replica).
async fn enrolled_to(
    cp: &ControlPlane,
    to: &ControlPlane,
    api: &str,
    site: &str,
) -> (String, DeviceServiceClient<Channel>) {
    let (id, install_id) = cp.create_device("acme", api, "box").await;
    label(cp, api, &id, site).await;
    let key = KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let resp = client(cp, None)
        .await
        .enroll(EnrollRequest {
            install_id,
            csr_der: csr,
            facts: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let identity = (
        resp.certificate_chain_der
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    );
    (id, client(to, Some(identity)).await)
}

struct Session {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<ServerMessage>,
    start: DesiredArtifacts,
}

async fn open(c: &mut DeviceServiceClient<Channel>, installed: &[(&str, &str)]) -> Session {
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage {
        kind: Some(AgentKind::Hello(Hello {
            facts: None,
            installed: installed
                .iter()
                .map(|(n, v)| InstalledArtifact {
                    name: n.to_string(),
                    version: v.to_string(),
                })
                .collect(),
        })),
    })
    .await
    .unwrap();
    let mut rx = c
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = rx.message().await.unwrap().unwrap();
    let Some(ServerKind::Start(start)) = first.kind else {
        panic!("{first:?}")
    };
    Session {
        tx,
        rx,
        start: start.desired.unwrap(),
    }
}

/// The next `DesiredArtifacts` the session gets, within `limit`.
async fn next_desired(s: &mut Session, limit: Duration) -> DesiredArtifacts {
    tokio::time::timeout(limit, async {
        loop {
            let m = s.rx.message().await.unwrap().unwrap();
            if let Some(ServerKind::Desired(d)) = m.kind {
                return d;
            }
        }
    })
    .await
    .expect("desired artifacts pushed in time")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abort_tells_released_devices_that_had_not_started() {
    let (cp, api, publisher) = setup().await;
    publish(&cp, &api, &publisher, "detector", "1.0", true).await;
    let (_, mut c) = enrolled(&cp, &api, "a").await;
    let mut s = open(&mut c, &[]).await;
    let (st, r) = post(
        &cp,
        "/acme/devices/v2/rollouts",
        &api,
        json!({"artifact": "detector@1.0", "selector": ["site=a"]}),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    let rollout = r["id"].as_str().unwrap().to_string();
    let d = next_desired(&mut s, Duration::from_secs(5)).await;
    assert_eq!(versions(&d), vec![format!("detector@1.0:{rollout}")]);
    // Aborted before the box reported anything: it is told at once that
    // detector@1.0 is no longer desired.
    let (st, r) = post(
        &cp,
        &format!("/acme/devices/v2/rollouts/{rollout}/abort"),
        &api,
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let d = next_desired(&mut s, Duration::from_secs(5)).await;
    assert!(versions(&d).is_empty(), "{:?}", versions(&d));
}

fn versions(d: &DesiredArtifacts) -> Vec<String> {
    d.artifacts
        .iter()
        .map(|a| format!("{}@{}:{}", a.name, a.version, a.rollout_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_get_desired_artifacts_and_reports_move_the_rollout() {
    let (cp, api, publisher) = setup().await;
    publish(&cp, &api, &publisher, "detector", "1.0", true).await;
    let (id_a, mut ca) = enrolled(&cp, &api, "a").await;
    let (id_b, mut cb) = enrolled(&cp, &api, "a").await;
    let mut sa = open(&mut ca, &[("detector", "0.9")]).await;
    let mut sb = open(&mut cb, &[]).await;
    assert!(sa.start.artifacts.is_empty() && sb.start.artifacts.is_empty());
    // What runs on a box shows on the device.
    let (_, dev) = cp.get_json(&format!("/acme/devices/v2/{id_a}"), &api).await;
    assert_eq!(dev["artifacts"], json!({"detector": "0.9"}));

    let (s, r) = post(
        &cp,
        "/acme/devices/v2/rollouts",
        &api,
        json!({"artifact": "detector@1.0", "selector": ["site=a"], "waves": ["1", "100%"]}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let rollout = r["id"].as_str().unwrap().to_string();
    let first = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["wave"] == 1)
        .unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (first_s, second_s, second_id) = if first == id_a {
        (&mut sa, &mut sb, id_b.clone())
    } else {
        (&mut sb, &mut sa, id_a.clone())
    };

    // The first wave's device gets it at once, with the signed manifest.
    let d = next_desired(first_s, Duration::from_secs(5)).await;
    assert_eq!(versions(&d), vec![format!("detector@1.0:{rollout}")]);
    assert!(d.artifacts[0].manifest_json.contains("\"version\":\"1.0\""));
    assert!(
        d.artifacts[0]
            .signature
            .as_ref()
            .unwrap()
            .public_key
            .starts_with("ed25519:")
    );

    // Its report moves the rollout on: the second wave's device gets its
    // push (the driver wakes on the report; within a second of the wave).
    first_s
        .tx
        .send(AgentMessage {
            kind: Some(AgentKind::Artifact(ArtifactReport {
                name: "detector".into(),
                version: "1.0".into(),
                rollout_id: rollout.clone(),
                state: "succeeded".into(),
                error: String::new(),
                bytes_done: 0,
                installed: vec![InstalledArtifact {
                    name: "detector".into(),
                    version: "1.0".into(),
                }],
            })),
        })
        .await
        .unwrap();
    let d = next_desired(second_s, Duration::from_secs(5)).await;
    assert_eq!(versions(&d), vec![format!("detector@1.0:{rollout}")]);
    let (_, r) = cp
        .get_json(&format!("/acme/devices/v2/rollouts/{rollout}"), &api)
        .await;
    assert_eq!(r["current_wave"], 2, "{r}");
    assert_eq!(
        r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == first.as_str())
            .unwrap()["state"],
        "succeeded"
    );

    // A failure of the second wave pauses it with the reason.
    second_s
        .tx
        .send(AgentMessage {
            kind: Some(AgentKind::Artifact(ArtifactReport {
                name: "detector".into(),
                version: "1.0".into(),
                rollout_id: rollout.clone(),
                state: "rolled_back".into(),
                error: "health check exited 1".into(),
                bytes_done: 0,
                installed: vec![],
            })),
        })
        .await
        .unwrap();
    let r = wait_until("the rollout pauses", Duration::from_secs(5), || async {
        let (_, r) = cp
            .get_json(&format!("/acme/devices/v2/rollouts/{rollout}"), &api)
            .await;
        (r["state"] == "paused").then_some(r)
    })
    .await;
    assert_eq!(
        r["reason"],
        format!("wave 2: 1 failure (max 0): {second_id}: health check exited 1")
    );
    // Resume accepts it: every device has an outcome, so it completes.
    let (s, _) = post(
        &cp,
        &format!("/acme/devices/v2/rollouts/{rollout}/resume"),
        &api,
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    wait_until("the rollout completes", Duration::from_secs(5), || async {
        let (_, r) = cp
            .get_json(&format!("/acme/devices/v2/rollouts/{rollout}"), &api)
            .await;
        (r["state"] == "completed").then_some(())
    })
    .await;
    let (_, events) = cp
        .get_json(&format!("/acme/devices/v2/{first}/events"), &api)
        .await;
    assert!(
        events.to_string().contains("artifact_installed"),
        "{events}"
    );

    // A new session starts with its desired state.
    drop(sa);
    drop(sb);
    let again = open(&mut ca, &[("detector", "1.0")]).await;
    assert_eq!(
        versions(&again.start),
        vec![format!("detector@1.0:{rollout}")]
    );
}

fn report(rollout: &str, state: &str) -> AgentMessage {
    AgentMessage {
        kind: Some(AgentKind::Artifact(ArtifactReport {
            name: "detector".into(),
            version: "1.0".into(),
            rollout_id: rollout.into(),
            state: state.into(),
            error: String::new(),
            bytes_done: 0,
            installed: vec![],
        })),
    }
}

/// Two replicas on one PostgreSQL database: a wave that starts on one
/// replica reaches a session on the other (over the bus), and a report on
/// either moves the rollout.
#[tokio::test(flavor = "multi_thread")]
async fn a_wave_started_on_one_replica_reaches_sessions_on_the_other() {
    if std::env::var("OUTPOST_TEST_DATABASE_URL").is_err() {
        eprintln!("skipped: OUTPOST_TEST_DATABASE_URL is not set (no PostgreSQL)");
        return;
    }
    let (a, api, publisher) = setup().await;
    let shared = std::fs::read_to_string(a.data_dir.join(".test-database-url")).unwrap();
    let a_pki = a.data_dir.join("pki");
    // Replica B: the same database and CA.
    let b = ControlPlane::in_process_with(|args| {
        let pki = args.data_dir.clone().unwrap().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        for (f, mode) in [("ca.crt", 0o644), ("ca.key", 0o600)] {
            std::fs::copy(a_pki.join(f), pki.join(f)).unwrap();
            std::fs::set_permissions(
                pki.join(f),
                std::os::unix::fs::PermissionsExt::from_mode(mode),
            )
            .unwrap();
        }
        args.database_url = Some(shared);
    })
    .await;
    assert_eq!(a.fingerprint, b.fingerprint, "one CA");
    publish(&a, &api, &publisher, "detector", "1.0", true).await;
    // One device connected to each replica.
    let (id_a, mut ca) = enrolled(&a, &api, "a").await;
    let (_, mut cb) = enrolled_to(&a, &b, &api, "a").await;
    let mut on_a = open(&mut ca, &[]).await;
    let mut on_b = open(&mut cb, &[]).await;
    let (s, r) = post(
        &a,
        "/acme/devices/v2/rollouts",
        &api,
        json!({"artifact": "detector@1.0", "selector": ["site=a"], "waves": ["1", "100%"]}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let rollout = r["id"].as_str().unwrap().to_string();
    let first = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["wave"] == 1)
        .unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (first_s, second_s) = if first == id_a {
        (&mut on_a, &mut on_b)
    } else {
        (&mut on_b, &mut on_a)
    };
    let d = next_desired(first_s, Duration::from_secs(5)).await;
    assert_eq!(versions(&d), vec![format!("detector@1.0:{rollout}")]);
    first_s
        .tx
        .send(report(&rollout, "succeeded"))
        .await
        .unwrap();
    let d = next_desired(second_s, Duration::from_secs(5)).await;
    assert_eq!(versions(&d), vec![format!("detector@1.0:{rollout}")]);
    second_s
        .tx
        .send(report(&rollout, "succeeded"))
        .await
        .unwrap();
    wait_until("the rollout completes", Duration::from_secs(5), || async {
        let (_, r) = b
            .get_json(&format!("/acme/devices/v2/rollouts/{rollout}"), &api)
            .await;
        (r["state"] == "completed").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_rollouts_and_their_devices() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("scrape-token");
    std::fs::write(&token, "scrape-token-for-the-rollout-tests").unwrap();
    let cp = ControlPlane::in_process_with(|a| a.metrics_token_file = Some(token)).await;
    cp.create_workspace("acme", &[]);
    let api = cp.api_key("acme", &[]);
    let (publisher, _) = SigningKey::generate().unwrap();
    cp.add_publisher_key("acme", &publisher.public_key().to_string());
    publish(&cp, &api, &publisher, "detector", "1.0", true).await;
    for _ in 0..2 {
        let (id, _) = cp.create_device("acme", &api, "box").await;
        label(&cp, &api, &id, "a").await;
    }
    let (s, r) = post(
        &cp,
        "/acme/devices/v2/rollouts",
        &api,
        json!({"artifact": "detector@1.0", "selector": ["site=a"], "waves": ["1", "100%"]}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let id = r["id"].as_str().unwrap();
    let (s, text) = cp
        .get_json("/metrics", "scrape-token-for-the-rollout-tests")
        .await;
    assert_eq!(s, 200, "{text}");
    let text = text.as_str().unwrap();
    assert!(
        text.lines()
            .any(|l| l == "outpost_rollouts{state=\"running\"} 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "outpost_rollouts{state=\"aborted\"} 0"),
        "{text}"
    );
    let devices = text
        .lines()
        .find(|l| l.starts_with("outpost_rollout_devices{"))
        .unwrap_or_else(|| panic!("{text}"));
    for part in [
        format!("rollout=\"{id}\""),
        "artifact=\"detector@1.0\"".into(),
        "state=\"pending\"".into(),
    ] {
        assert!(devices.contains(&part), "{devices}");
    }
    assert!(devices.ends_with(" 2"), "{devices}");
    // A workspace key sees no cross-workspace figures.
    let (_, text) = cp.get_json("/metrics", &api).await;
    assert!(
        !text.as_str().unwrap_or("").contains("outpost_rollouts"),
        "{text}"
    );
}
