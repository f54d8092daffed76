//! Rotation with the real binaries and short-lived certificates.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

fn start_with(extra: &[&str]) -> (ControlPlane, String, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&tmp.path().join("data"), extra);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    (cp, key, tmp)
}

async fn events(cp: &ControlPlane, key: &str, device: &str) -> Vec<String> {
    let (_, ev) = cp
        .get_json(
            &format!("/acme/devices/v2/{device}/events?limit=500&direction=forward"),
            key,
        )
        .await;
    ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

async fn count(cp: &ControlPlane, key: &str, device: &str, kind: &str) -> usize {
    events(cp, key, device)
        .await
        .iter()
        .filter(|k| *k == kind)
        .count()
}

async fn online(cp: &ControlPlane, key: &str, device: &str) {
    wait_until("online", TIMEOUT, || async {
        let (_, b) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), key)
            .await;
        (b["status"] == "online").then_some(())
    })
    .await;
}

/// When the agent's current certificate expires, unix ms.
fn cert_not_after_ms(state_dir: &std::path::Path) -> i64 {
    let cert = std::fs::read(state_dir.join("device.crt")).unwrap();
    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(&cert)
        .next()
        .unwrap()
        .unwrap();
    outpost_agent::rotate::validity(&leaf).unwrap().not_after_ms
}

fn seqs(samples: &[Value]) -> Vec<u64> {
    samples.iter().map(|s| s["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn several_rotations_in_a_row_without_a_gap_in_telemetry() {
    let (cp, key, _tmp) = start_with(&["--device-cert-lifetime", "9s"]);
    let (device, install_id) = cp.create_device("acme", &key, "rotating").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let first_cert = std::fs::read(state.path().join("device.crt")).unwrap();
    let _agent = AgentProc::run(state.path(), "200ms");
    wait_until("three rotations", Duration::from_secs(60), || async {
        (count(&cp, &key, &device, "rotated").await >= 3).then_some(())
    })
    .await;
    let before = all_samples(&cp, "acme", &key, &device).await.len();
    let samples = wait_until("telemetry after the rotations", TIMEOUT, || async {
        let s = all_samples(&cp, "acme", &key, &device).await;
        (s.len() >= before + 3).then_some(s)
    })
    .await;
    let seqs = seqs(&samples);
    assert_eq!(seqs[0], 1);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap across rotations: {seqs:?}"
    );
    assert_ne!(
        std::fs::read(state.path().join("device.crt")).unwrap(),
        first_cert
    );
    let (_, dev) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    assert_eq!(dev["status"], "online");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.path().join("device.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the rotated key is private too");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_reset_makes_the_connected_agent_rotate() {
    let (cp, key, _tmp) = start_with(&[]);
    let (device, install_id) = cp.create_device("acme", &key, "reset-me").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let _agent = AgentProc::run(state.path(), "500ms");
    online(&cp, &key, &device).await;
    let resp: Value = reqwest::Client::new()
        .post(format!(
            "{}/acme/devices/v2/{device}/connections/reset",
            cp.rest
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["rotationRequested"], true, "{resp}");
    wait_until("the agent rotates", Duration::from_secs(10), || async {
        (count(&cp, &key, &device, "rotated").await >= 1).then_some(())
    })
    .await;
    // The operator's fresh key survives the rotation the agent did right after.
    let (s, _) = cp
        .get_json(
            &format!("/acme/devices/v2/{device}"),
            resp["apiKey"].as_str().unwrap(),
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_reset_revokes_everything_and_issues_a_new_install_id() {
    let (cp, key, _tmp) = start_with(&[]);
    let (device, install_id) = cp.create_device("acme", &key, "compromised").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let mut agent = AgentProc::run(state.path(), "500ms");
    online(&cp, &key, &device).await;
    let resp: Value = reqwest::Client::new()
        .post(format!(
            "{}/acme/devices/v2/{device}/connections/reset?force=true",
            cp.rest
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_install = resp["installId"]
        .as_str()
        .expect("a new install ID")
        .to_string();
    assert!(
        resp["installCommand"]
            .as_str()
            .unwrap()
            .contains(&new_install)
    );
    wait_until(
        "offline within a second",
        Duration::from_secs(1),
        || async {
            let (_, b) = cp
                .get_json(&format!("/acme/devices/v2/{device}"), &key)
                .await;
            (b["status"] == "offline").then_some(())
        },
    )
    .await;
    agent.terminate();
    // The old identity is refused; a fresh enrollment with the new install ID works.
    let out = agent_cmd(&["status", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let fresh = tempfile::tempdir().unwrap();
    let out = enroll(&cp, &new_install, fresh.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        events(&cp, &key, &device)
            .await
            .contains(&"revoked".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_rotates_within_the_grace_window() {
    let (cp, key, _tmp) = start_with(&["--device-cert-lifetime", "5s"]);
    let (device, install_id) = cp.create_device("acme", &key, "offline-a-while").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    // The box is "offline" until its certificate has expired.
    let not_after = cert_not_after_ms(state.path());
    wait_until("the certificate expires", TIMEOUT, || async {
        (outpost_agent::clock::system_ms() > not_after + 1000).then_some(())
    })
    .await;
    let _agent = AgentProc::run(state.path(), "500ms");
    wait_until("rotated and online again", TIMEOUT, || async {
        let (_, b) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        (b["status"] == "online" && count(&cp, &key, &device, "rotated").await >= 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_grace_window_the_agent_says_it_needs_a_new_install_id() {
    let (cp, key, _tmp) =
        start_with(&["--device-cert-lifetime", "5s", "--expired-cert-grace", "1s"]);
    let (_, install_id) = cp.create_device("acme", &key, "gone-too-long").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let not_after = cert_not_after_ms(state.path());
    wait_until("past expiry and grace", TIMEOUT, || async {
        (outpost_agent::clock::system_ms() > not_after + 2500).then_some(())
    })
    .await;
    let log = state.path().join("agent.log");
    let mut child = agent_cmd(&["run", "--state-dir"])
        .arg(state.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_until("the agent gives up", TIMEOUT, || {
        let st = child.try_wait().unwrap();
        async move { st }
    })
    .await;
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.code(),
        Some(outpost_agent::EXIT_CREDENTIALS_EXPIRED as i32),
        "{stderr}"
    );
    assert!(stderr.contains("new install ID"), "{stderr}");

    // The refusal must arrive as the alert, not as a reset, even when the
    // client wrote before reading the verdict (as HTTP/2 does right after a
    // TLS 1.3 handshake): the control plane drains and half-closes refused
    // connections instead of dropping them with unread input.
    let trust = outpost_agent::link::Trust::from_fingerprint(&cp.fingerprint, "test").unwrap();
    let state_dir = outpost_agent::state::StateDir::open(state.path()).unwrap();
    let identity = outpost_agent::enroll::load_client_identity(&state_dir).unwrap();
    let tls = outpost_agent::link::client_config(&trust, Some(identity)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    for attempt in 0..20 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", cp.grpc_port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let err = match tls.read(&mut buf).await {
            Ok(n) => panic!("attempt {attempt}: read {n} bytes instead of the alert"),
            Err(e) => e,
        };
        let alert = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .cloned();
        assert_eq!(
            alert,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            )),
            "attempt {attempt}: {err:?}"
        );
        // And the connection ends in an orderly close (FIN), not a reset:
        // a reset can overtake the alert, or fail the client's next write
        // before it reads the alert.
        let raw = &mut tls.get_mut().0;
        match raw.read(&mut buf).await {
            Ok(0) => {}
            other => panic!("attempt {attempt}: expected an orderly close, got {other:?}"),
        }
    }
}

async fn reset(cp: &ControlPlane, key: &str, device: &str) {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/acme/devices/v2/{device}/connections/reset",
            cp.rest
        ))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_json_shows_certificate_rotation_link_and_acks() {
    let (cp, key, _tmp) = start_with(&["--device-cert-lifetime", "1h"]);
    let (device, install_id) = cp.create_device("acme", &key, "statusful").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let before = status_json(state.path());
    assert_eq!(before["enrolled"], true);
    assert_eq!(before["device_id"], device.as_str());
    assert_eq!(before["link"], "never started");
    assert_eq!(before["daemon"]["running"], false);
    let serial = before["certificate"]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!serial.is_empty());
    let expires_in = before["certificate"]["expires_in_secs"].as_i64().unwrap();
    assert!((3000..=3600 + 600).contains(&expires_in), "{before}");

    let _agent = AgentProc::run(state.path(), "200ms");
    let live = wait_until("connected and acked", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["link"] == "connected" && s["acked_seq"].as_u64() >= Some(2)).then_some(s)
    })
    .await;
    assert_eq!(live["daemon"]["running"], true);
    assert!(live["last_ack"].is_string(), "{live}");
    assert!(live["last_connected"].is_string(), "{live}");
    // Rotation planned at about 2/3 of the hour (±5 %, clamped), before expiry.
    let next = live["next_rotation_in_secs"].as_i64().unwrap();
    assert!((2000..=2700).contains(&next), "{live}");
    assert_eq!(live["spool"]["dropped"], 0);

    reset(&cp, &key, &device).await;
    let rotated = wait_until("a new serial", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["certificate"]["serial"] != serial.as_str() && s["link"] == "connected").then_some(s)
    })
    .await;
    assert!(rotated["problems"].as_array().unwrap().is_empty());
}

/// The agent killed (abort, like a power cut) at every step of a rotation
/// comes back with a working identity and sends telemetry on with no gap.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_at_each_step_of_a_rotation_comes_back() {
    let (cp, key, _tmp) = start_with(&[]);
    let runs = outpost_agent::failpoint::POINTS.iter().map(|point| {
        let (cp, key) = (&cp, &key);
        async move {
            let (device, install_id) = cp.create_device("acme", key, point).await;
            let state = tempfile::tempdir().unwrap();
            assert!(enroll(cp, &install_id, state.path()).status.success());
            let enrolled_serial = status_json(state.path())["certificate"]["serial"].clone();
            let mut agent = AgentProc::run_env(
                state.path(),
                "200ms",
                &[(outpost_agent::failpoint::ENV, point)],
            );
            online(cp, key, &device).await;
            reset(cp, key, &device).await;
            let exit = wait_until(&format!("crash at {point}"), TIMEOUT, || {
                let st = agent.try_exit();
                async move { st }
            })
            .await;
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&exit),
                Some(6),
                "{point}: aborted at the crash point"
            );
            let stored = all_samples(cp, "acme", key, &device).await.len();
            let _agent = AgentProc::run(state.path(), "200ms");
            let samples = wait_until(&format!("telemetry after {point}"), TIMEOUT, || async {
                let s = all_samples(cp, "acme", key, &device).await;
                (s.len() >= stored + 3).then_some(s)
            })
            .await;
            let seqs = seqs(&samples);
            assert!(
                seqs[0] == 1 && seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "{point}: no gap, no duplicate: {seqs:?}"
            );
            // The agent ends up on the certificate the control plane issued
            // last (after a crash that lost it, the server has it rotate again).
            wait_until(
                &format!("{point}: on the current certificate"),
                TIMEOUT,
                || async {
                    let (_, ev) = cp
                        .get_json(&format!("/acme/devices/v2/{device}/events?limit=500"), key)
                        .await;
                    let current = ev["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|e| e["type"] == "rotated")
                        .map(|e| e["detail"]["serial"].clone())
                        .unwrap_or(enrolled_serial.clone());
                    let st = status_json(state.path());
                    assert!(
                        st["problems"].as_array().unwrap().is_empty(),
                        "{point}: {st}"
                    );
                    (current == st["certificate"]["serial"]).then_some(())
                },
            )
            .await;
            assert!(!state.path().join("device.key.next").exists(), "{point}");
            assert!(!state.path().join("device.crt.next").exists(), "{point}");
        }
    });
    futures_util::future::join_all(runs).await;
}
