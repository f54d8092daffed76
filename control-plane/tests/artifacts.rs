//! Artifacts on the control plane (docs/artifacts.md): publishing over REST
//! (signature against the workspace's trusted keys, the streamed payload
//! checked against the manifest) and delivery to enrolled devices over
//! `FetchArtifact` (resume from an offset, the concurrency cap).

mod common;

use common::*;
use outpost_agent::link::{self, ServerUrl, Trust};
use outpost_common::artifact::{FORMAT_TAR, MANIFEST_SCHEMA, Manifest, SigningKey};
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::{EnrollRequest, FetchArtifactRequest};
use rcgen::KeyPair;
use reqwest::Client;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const CHUNK: usize = 256 * 1024;

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A payload whose bytes differ at every offset (a shifted tail shows).
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

fn manifest_for(name: &str, version: &str, data: &[u8]) -> Manifest {
    Manifest {
        schema: MANIFEST_SCHEMA,
        name: name.into(),
        version: version.into(),
        format: FORMAT_TAR.into(),
        size: data.len() as u64,
        sha256: sha256_hex(data),
        post_install: Some("./post-install.sh".into()),
        health_command: Some("./health.sh".into()),
        health_window_secs: 15,
        created_at: "2026-12-03T10:00:00Z".into(),
    }
}

/// The POST body for `manifest_json` signed by `key`.
fn signed(key: &SigningKey, manifest_json: &str) -> Value {
    let sig = key.sign(manifest_json);
    json!({
        "manifest": manifest_json,
        "signature": {"public_key": sig.public_key.to_string(), "signature": sig.signature},
    })
}

async fn post(cp: &ControlPlane, ws: &str, key: &str, body: &Value) -> (u16, Value) {
    let resp = Client::new()
        .post(format!("{}/{ws}/devices/v2/artifacts", cp.rest))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn put_payload(
    cp: &ControlPlane,
    ws: &str,
    key: &str,
    id: (&str, &str),
    data: Vec<u8>,
) -> (u16, Value) {
    let resp = Client::new()
        .put(format!(
            "{}/{ws}/devices/v2/artifacts/{}/{}/payload",
            cp.rest, id.0, id.1
        ))
        .bearer_auth(key)
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// PUTs `data` with `Transfer-Encoding: chunked` (no Content-Length), in
/// 64 KiB chunks, over a plain HTTP/1.1 connection; (status, body).
async fn put_chunked(cp: &ControlPlane, key: &str, path: &str, data: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = cp.rest.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for piece in data.chunks(64 * 1024) {
        // The server may answer and close before the whole body is sent.
        if conn
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .is_err()
            || conn.write_all(piece).await.is_err()
            || conn.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    (status, answer)
}

/// Publishes `name@version` with `data` (manifest, then payload): ready.
async fn publish(
    cp: &ControlPlane,
    api: &str,
    key: &SigningKey,
    name: &str,
    version: &str,
    data: &[u8],
) {
    let m = manifest_for(name, version, data).to_json();
    let (s, body) = post(cp, "acme", api, &signed(key, &m)).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = put_payload(cp, "acme", api, (name, version), data.to_vec()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["state"], "ready", "{body}");
}

/// A device key of a fresh device (connections/reset mints one).
async fn device_key(cp: &ControlPlane, admin: &str) -> String {
    let (device, _) = cp.create_device("acme", admin, "keyed").await;
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
async fn publishing_needs_a_trusted_signature_and_a_payload_that_matches() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    cp.create_workspace("globex", &[]);
    let api = cp.api_key("acme", &[]);
    let reader = cp.api_key("acme", &["device:read"]);
    let globex = cp.api_key("globex", &[]);
    let (publisher, _) = SigningKey::generate().unwrap();
    let (stranger, _) = SigningKey::generate().unwrap();
    cp.add_publisher_key("acme", &publisher.public_key().to_string());

    let data = payload(3 * 1024 * 1024 + 17);
    let manifest = manifest_for("detector", "1.4.0", &data).to_json();

    // Authorisation first: a read key or a device key is refused whatever
    // the body holds.
    for bad_caller in [reader.clone(), device_key(&cp, &api).await] {
        let (s, body) = post(&cp, "acme", &bad_caller, &signed(&publisher, &manifest)).await;
        assert_eq!(s, 403, "{body}");
        let (s, body) = post(&cp, "acme", &bad_caller, &json!({"nonsense": 1})).await;
        assert_eq!(s, 403, "{body}");
    }

    // A key the workspace does not trust; the same key is not trusted by
    // another workspace either.
    let (s, body) = post(&cp, "acme", &api, &signed(&stranger, &manifest)).await;
    assert_eq!(s, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("not a publisher key this workspace trusts"),
        "{msg}"
    );
    assert!(msg.contains(&stranger.public_key().to_string()), "{msg}");
    let (s, _) = post(&cp, "globex", &globex, &signed(&publisher, &manifest)).await;
    assert_eq!(s, 400);

    // A trusted key named, but the signature made by another.
    let mut forged = signed(&publisher, &manifest);
    forged["signature"]["signature"] = json!(stranger.sign(&manifest).signature);
    let (s, body) = post(&cp, "acme", &api, &forged).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("bad signature"),
        "{body}"
    );
    // Other bytes than were signed.
    let mut tampered = signed(&publisher, &manifest);
    tampered["manifest"] = json!(manifest.replace("detector", "detectos"));
    let (s, body) = post(&cp, "acme", &api, &tampered).await;
    assert_eq!(s, 400, "{body}");
    // Signed, but not a valid manifest.
    let bad = manifest.replace(r#""format":"tar""#, r#""format":"zip""#);
    let (s, body) = post(&cp, "acme", &api, &signed(&publisher, &bad)).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("invalid manifest"),
        "{body}"
    );
    let mut garbled = signed(&publisher, &manifest);
    garbled["signature"]["public_key"] = json!("ed25519:short");
    let (s, body) = post(&cp, "acme", &api, &garbled).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("public_key"),
        "{body}"
    );

    // Created, then the same again (retry-safe), then other bytes: 409.
    let (s, body) = post(&cp, "acme", &api, &signed(&publisher, &manifest)).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["state"], "awaiting_payload");
    assert_eq!(body["size"], data.len() as u64);
    assert_eq!(body["post_install"], "./post-install.sh");
    assert_eq!(body["health_command"], "./health.sh");
    assert_eq!(body["health_window_secs"], 15);
    assert_eq!(body["public_key"], publisher.public_key().to_string());
    let (s, _) = post(&cp, "acme", &api, &signed(&publisher, &manifest)).await;
    assert_eq!(s, 200);
    let mut other = manifest_for("detector", "1.4.0", &data);
    other.health_window_secs = 20;
    let (s, body) = post(&cp, "acme", &api, &signed(&publisher, &other.to_json())).await;
    assert_eq!(s, 409, "{body}");

    // Payloads that do not match: 400, nothing kept, still awaiting.
    let id = ("detector", "1.4.0");
    let mut wrong = data.clone();
    wrong[CHUNK + 5] ^= 1;
    let (s, body) = put_payload(&cp, "acme", &api, id, wrong).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("SHA-256"),
        "{body}"
    );
    let mut longer = data.clone();
    longer.push(0);
    let (s, body) = put_payload(&cp, "acme", &api, id, longer.clone()).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Content-Length"),
        "{body}"
    );
    // Streamed without a length: refused at the first byte too many.
    let (s, body) = put_chunked(
        &cp,
        &api,
        "/acme/devices/v2/artifacts/detector/1.4.0/payload",
        &longer,
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("longer than the manifest"), "{body}");
    let (s, body) = put_payload(&cp, "acme", &api, id, data[..1000].to_vec()).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = cp
        .get_json("/acme/devices/v2/artifacts/detector/1.4.0", &api)
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["state"], "awaiting_payload", "{body}");
    let (s, _) = put_payload(&cp, "acme", &reader, id, data.clone()).await;
    assert_eq!(s, 403);

    // The real payload (3 MB, past the 64 KiB body limit of other routes).
    let (s, body) = put_payload(&cp, "acme", &api, id, data.clone()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["state"], "ready");
    assert!(body["uploaded_at"].is_string());
    let (s, _) = put_payload(&cp, "acme", &api, id, data.clone()).await;
    assert_eq!(s, 409, "ready once");

    // Listed and read with a read key; not from another workspace.
    let (s, list) = cp.get_json("/acme/devices/v2/artifacts", &reader).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"][0]["name"], "detector", "{list}");
    assert_eq!(list["data"][0]["sha256"], sha256_hex(&data));
    let (s, _) = cp
        .get_json("/globex/devices/v2/artifacts/detector/1.4.0", &globex)
        .await;
    assert_eq!(s, 404);
    let (s, list) = cp.get_json("/globex/devices/v2/artifacts", &globex).await;
    assert_eq!((s, list["data"].as_array().unwrap().len()), (200, 0));
    let (s, _) = cp
        .get_json("/acme/devices/v2/artifacts/nope/1.0", &reader)
        .await;
    assert_eq!(s, 404);

    // Deleted: gone, and a second delete is 404.
    let http = Client::new();
    let url = format!("{}/acme/devices/v2/artifacts/detector/1.4.0", cp.rest);
    let s = http
        .delete(&url)
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 403);
    let s = http
        .delete(&url)
        .bearer_auth(&api)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 204);
    let s = http
        .delete(&url)
        .bearer_auth(&api)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 404);
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

async fn client(cp: &ControlPlane, identity: Option<Identity>) -> DeviceServiceClient<Channel> {
    let trust = Trust::from_ca_file(&cp.ca_path()).unwrap();
    let tls = link::client_config(&trust, identity).unwrap();
    let server = ServerUrl::parse(&cp.grpc_url()).unwrap();
    DeviceServiceClient::new(link::connect(&server, tls).await.unwrap())
}

/// Enrolls a new device of `ws`; a client with its certificate.
async fn enrolled(cp: &ControlPlane, ws: &str, api: &str) -> DeviceServiceClient<Channel> {
    let (_, install_id) = cp.create_device(ws, api, "box").await;
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
    client(cp, Some(identity)).await
}

fn fetch(name: &str, version: &str, offset: u64) -> FetchArtifactRequest {
    FetchArtifactRequest {
        name: name.into(),
        version: version.into(),
        offset,
    }
}

/// Everything one FetchArtifact call sends, checking each chunk's offset
/// and size.
async fn download(
    c: &mut DeviceServiceClient<Channel>,
    req: FetchArtifactRequest,
) -> Result<Vec<u8>, tonic::Status> {
    let mut at = req.offset;
    let mut stream = c.fetch_artifact(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert_eq!(chunk.offset, at, "chunks follow each other");
        assert!(chunk.data.len() <= CHUNK && !chunk.data.is_empty());
        at += chunk.data.len() as u64;
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// A control plane whose `/metrics` takes the scrape token `SCRAPE` (the
/// control plane's own metrics are shown to it alone).
async fn with_scrape_token(
    tune: impl FnOnce(&mut outpost_control_plane::config::ServeArgs),
) -> (ControlPlane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("scrape-token");
    std::fs::write(&token, SCRAPE).unwrap();
    let cp = ControlPlane::in_process_with(|a| {
        a.metrics_token_file = Some(token);
        tune(a);
    })
    .await;
    (cp, dir)
}

const SCRAPE: &str = "scrape-token-for-the-artifact-tests";

async fn own_metrics(cp: &ControlPlane) -> String {
    let (s, text) = cp.get_json("/metrics", SCRAPE).await;
    assert_eq!(s, 200, "{text}");
    text.as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_fetch_ready_artifacts_of_their_workspace_from_any_offset() {
    let (cp, _token) = with_scrape_token(|_| {}).await;
    cp.create_workspace("acme", &[]);
    cp.create_workspace("globex", &[]);
    let api = cp.api_key("acme", &[]);
    let globex_api = cp.api_key("globex", &[]);
    let (publisher, _) = SigningKey::generate().unwrap();
    cp.add_publisher_key("acme", &publisher.public_key().to_string());
    let data = payload(3 * 1024 * 1024 + 17);
    publish(&cp, &api, &publisher, "detector", "1.4.0", &data).await;
    // One that never got its payload.
    let pending = manifest_for("pending", "1", b"x").to_json();
    assert_eq!(
        post(&cp, "acme", &api, &signed(&publisher, &pending))
            .await
            .0,
        201
    );

    let mut dev = enrolled(&cp, "acme", &api).await;
    assert_eq!(
        download(&mut dev, fetch("detector", "1.4.0", 0))
            .await
            .unwrap(),
        data
    );
    // Resumed mid-chunk: exactly the tail.
    let from = 1_000_003;
    let tail = download(&mut dev, fetch("detector", "1.4.0", from))
        .await
        .unwrap();
    assert_eq!(tail, data[from as usize..]);
    let end = data.len() as u64;
    assert!(
        download(&mut dev, fetch("detector", "1.4.0", end))
            .await
            .unwrap()
            .is_empty()
    );
    let err = download(&mut dev, fetch("detector", "1.4.0", end + 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    for (name, version) in [("pending", "1"), ("detector", "9.9"), ("nope", "1")] {
        let err = download(&mut dev, fetch(name, version, 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{name}@{version}: {err:?}");
    }
    let err = download(&mut dev, fetch("../etc", "1", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Another workspace's device does not see it.
    let mut stranger = enrolled(&cp, "globex", &globex_api).await;
    let err = download(&mut stranger, fetch("detector", "1.4.0", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Without a certificate: nothing.
    let mut anonymous = client(&cp, None).await;
    let err = download(&mut anonymous, fetch("detector", "1.4.0", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let text = own_metrics(&cp).await;
    let served = (data.len() as u64) + (data.len() as u64 - from);
    assert!(
        text.contains(&format!("outpost_artifact_bytes_served_total {served}")),
        "{text}"
    );
    assert!(
        text.contains("outpost_artifact_downloads_in_progress 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_beyond_the_cap_are_refused_as_busy() {
    let (cp, _token) = with_scrape_token(|a| a.max_artifact_downloads = Some(1)).await;
    cp.create_workspace("acme", &[]);
    let api = cp.api_key("acme", &[]);
    let (publisher, _) = SigningKey::generate().unwrap();
    cp.add_publisher_key("acme", &publisher.public_key().to_string());
    // Far more than the HTTP/2 windows and the two queued chunks hold, so
    // the first download stays in progress while its reader waits.
    let data = payload(12 * 1024 * 1024);
    publish(&cp, &api, &publisher, "big", "1", &data).await;

    let mut first = enrolled(&cp, "acme", &api).await;
    let mut held = first
        .fetch_artifact(fetch("big", "1", 0))
        .await
        .unwrap()
        .into_inner();
    let chunk = held.message().await.unwrap().unwrap();
    assert_eq!(chunk.offset, 0);

    let mut second = enrolled(&cp, "acme", &api).await;
    let err = download(&mut second, fetch("big", "1", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.metadata()
            .get(outpost_proto::reason::METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(outpost_proto::reason::BUSY)
    );
    let text = own_metrics(&cp).await;
    assert!(
        text.contains("outpost_artifact_downloads_refused_busy_total 1"),
        "{text}"
    );
    assert!(
        text.contains("outpost_artifact_downloads_in_progress 1"),
        "{text}"
    );

    // The first one gone, its slot frees and the second gets everything.
    drop(held);
    let got = wait_until("the download slot is free again", TIMEOUT, || {
        let mut second = second.clone();
        async move {
            match download(&mut second, fetch("big", "1", 0)).await {
                Ok(d) => Some(d),
                Err(e) if e.code() == Code::ResourceExhausted => None,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert_eq!(got.len(), data.len());
    assert!(got == data);
}

fn assert_busy(err: &tonic::Status) {
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.metadata()
            .get(outpost_proto::reason::METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(outpost_proto::reason::BUSY)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_device_gets_at_most_two_downloads_at_once() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let api = cp.api_key("acme", &[]);
    let (publisher, _) = SigningKey::generate().unwrap();
    cp.add_publisher_key("acme", &publisher.public_key().to_string());
    let data = payload(12 * 1024 * 1024);
    publish(&cp, &api, &publisher, "big", "1", &data).await;

    // Two streams the device never reads hold two slots of the 64…
    let mut greedy = enrolled(&cp, "acme", &api).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = greedy
            .fetch_artifact(fetch("big", "1", 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.message().await.unwrap().unwrap().offset, 0);
        held.push(s);
    }
    // …and a third is refused as busy although the replica has room.
    let err = download(&mut greedy, fetch("big", "1", 0))
        .await
        .unwrap_err();
    assert_busy(&err);
    // Another device is served.
    let mut other = enrolled(&cp, "acme", &api).await;
    assert!(download(&mut other, fetch("big", "1", 0)).await.unwrap() == data);
    // One of its own ends: the device may start another.
    held.pop();
    let got = wait_until("the device's slot is free again", TIMEOUT, || {
        let mut greedy = greedy.clone();
        async move {
            match download(&mut greedy, fetch("big", "1", 0)).await {
                Ok(d) => Some(d),
                Err(e) if e.code() == Code::ResourceExhausted => None,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert!(got == data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_its_device_stops_reading_ends_and_frees_its_slot() {
    let (cp, _token) = with_scrape_token(|a| {
        a.max_artifact_downloads = Some(1);
        a.artifact_send_stall_timeout = Some(std::time::Duration::from_secs(1));
    })
    .await;
    cp.create_workspace("acme", &[]);
    let api = cp.api_key("acme", &[]);
    let (publisher, _) = SigningKey::generate().unwrap();
    cp.add_publisher_key("acme", &publisher.public_key().to_string());
    let data = payload(12 * 1024 * 1024);
    publish(&cp, &api, &publisher, "big", "1", &data).await;

    // The only slot, held by a stream read once and then never again (the
    // stream stays open: the device neither reads nor goes away).
    let mut stalled = enrolled(&cp, "acme", &api).await;
    let mut held = stalled
        .fetch_artifact(fetch("big", "1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.message().await.unwrap().unwrap().offset, 0);

    let other = enrolled(&cp, "acme", &api).await;
    let got = wait_until("the stalled download's slot is freed", TIMEOUT, || {
        let mut other = other.clone();
        async move {
            match download(&mut other, fetch("big", "1", 0)).await {
                Ok(d) => Some(d),
                Err(e) if e.code() == Code::ResourceExhausted => None,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert!(got == data);
    let text = own_metrics(&cp).await;
    assert!(
        text.contains("outpost_artifact_downloads_in_progress 0"),
        "{text}"
    );
    drop(held);
}

/// POST rollouts of `artifact` to `site=x` (which no device has).
async fn rollout_of(cp: &ControlPlane, api: &str, artifact: &str) -> (u16, Value) {
    let resp = Client::new()
        .post(format!("{}/acme/devices/v2/rollouts", cp.rest))
        .bearer_auth(api)
        .json(&json!({"artifact": artifact, "selector": ["site=x"]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_publisher_key_stops_rollouts_and_delivery_of_what_it_signed() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let api = cp.api_key("acme", &[]);
    let (publisher, _) = SigningKey::generate().unwrap();
    let key = publisher.public_key().to_string();
    cp.add_publisher_key("acme", &key);
    let data = payload(1000);
    publish(&cp, &api, &publisher, "detector", "1.0", &data).await;
    let mut dev = enrolled(&cp, "acme", &api).await;
    assert!(
        download(&mut dev, fetch("detector", "1.0", 0))
            .await
            .unwrap()
            == data
    );

    cp.remove_publisher_key("acme", &key);
    let err = download(&mut dev, fetch("detector", "1.0", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no longer trusts"), "{err:?}");
    let (s, body) = rollout_of(&cp, &api, "detector@1.0").await;
    assert_eq!(s, 400, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&key) && msg.contains("no longer trusts"),
        "{body}"
    );

    // Trusted again: delivered again, and a rollout gets past the artifact
    // (to the selector, which matches nothing here).
    cp.add_publisher_key("acme", &key);
    assert!(
        download(&mut dev, fetch("detector", "1.0", 0))
            .await
            .unwrap()
            == data
    );
    let (s, body) = rollout_of(&cp, &api, "detector@1.0").await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no device matches"),
        "{body}"
    );
}
