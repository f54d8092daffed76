//! The device gRPC service, started in process, from an in-process client:
//! authentication failures and hostile input.

mod common;

use common::*;
use outpost_agent::link::{self, ServerUrl, Trust};
use outpost_control_plane::pki::{Ca, VerifiedCsr};
use outpost_proto::v1::agent_message::Kind as AgentKind;
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::server_message::Kind as ServerKind;
use outpost_proto::v1::{
    AgentMessage, DeviceFacts, EnrollRequest, EnrollResponse, Hello, Sample, SessionStart,
    TelemetryAck, TelemetryBatch, Temperature,
};
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use tonic::{Code, Status};

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

async fn client(
    cp: &ControlPlane,
    identity: Option<Identity>,
) -> Result<DeviceServiceClient<Channel>, String> {
    let trust = Trust::from_ca_file(&cp.ca_path()).unwrap();
    let tls = link::client_config(&trust, identity).unwrap();
    let server = ServerUrl::parse(&cp.grpc_url()).unwrap();
    let channel = link::connect(&server, tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(DeviceServiceClient::new(channel))
}

fn csr(key: &KeyPair) -> Vec<u8> {
    rcgen::CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
}

async fn enroll_raw(
    cp: &ControlPlane,
    install_id: &str,
    key: &KeyPair,
) -> Result<EnrollResponse, Status> {
    let mut c = client(cp, None).await.unwrap();
    c.enroll(EnrollRequest {
        install_id: install_id.into(),
        csr_der: csr(key),
        facts: None,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn identity_of(resp: &EnrollResponse, key: &KeyPair) -> Identity {
    (
        resp.certificate_chain_der
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// Opens a session and returns the server's SessionStart.
async fn open_session(c: &mut DeviceServiceClient<Channel>) -> Result<SessionStart, Status> {
    open_session_with(c, None).await
}

async fn open_session_with(
    c: &mut DeviceServiceClient<Channel>,
    facts: Option<DeviceFacts>,
) -> Result<SessionStart, Status> {
    let hello = AgentMessage {
        kind: Some(AgentKind::Hello(Hello {
            facts,
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello).await.unwrap();
    let mut stream = c
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let msg = stream.message().await?;
    drop(tx);
    match msg.and_then(|m| m.kind) {
        Some(ServerKind::Start(s)) => Ok(s),
        other => panic!("expected a session start, got {other:?}"),
    }
}

/// Sends `batches` on one PushTelemetry stream and collects the outcome.
async fn push(
    c: &mut DeviceServiceClient<Channel>,
    batches: Vec<TelemetryBatch>,
) -> Result<Vec<TelemetryAck>, Status> {
    let n = batches.len();
    let mut acks = c
        .push_telemetry(tokio_stream::iter(batches))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match acks.message().await? {
            Some(a) => out.push(a),
            None => break,
        }
    }
    Ok(out)
}

fn batch(seqs: &[u64]) -> TelemetryBatch {
    TelemetryBatch {
        samples: seqs
            .iter()
            .map(|&seq| Sample {
                seq,
                timestamp_unix_ms: 1_700_000_000_000 + seq as i64,
                cpu_percent: 1.0,
                ..Default::default()
            })
            .collect(),
    }
}

struct Fixture {
    cp: ControlPlane,
    key: String,
    device: String,
    install_id: String,
}

async fn fixture() -> Fixture {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "rpc").await;
    Fixture {
        cp,
        key,
        device,
        install_id,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn device_rpcs_need_a_client_certificate() {
    let f = fixture().await;
    let mut c = client(&f.cp, None).await.unwrap();
    let err = open_session(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("client certificate"),
        "{}",
        err.message()
    );
    let err = push(&mut c, vec![batch(&[1])]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_enrollment_keeps_the_identity_and_revokes_the_unused_cert() {
    let f = fixture().await;
    let key = KeyPair::generate().unwrap();
    let first = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap();
    // The response was "lost": the same key asks again.
    let second = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap();
    assert_eq!(first.device_id, f.device);
    assert_eq!(second.device_id, f.device, "same identity on retry");
    assert_ne!(
        first.certificate_chain_der[0],
        second.certificate_chain_der[0]
    );
    // Another key cannot take the install ID over.
    let err = enroll_raw(&f.cp, &f.install_id, &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("bound to another"),
        "{}",
        err.message()
    );

    let mut old = client(&f.cp, Some(identity_of(&first, &key)))
        .await
        .unwrap();
    let err = open_session(&mut old).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());

    let mut current = client(&f.cp, Some(identity_of(&second, &key)))
        .await
        .unwrap();
    open_session(&mut current).await.unwrap();
    // Connected once: the install ID is spent, even for the bound key.
    let err = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("already been used"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_from_another_ca_are_refused() {
    let f = fixture().await;
    // A look-alike identity for the real device, signed by a foreign CA.
    let foreign_key = KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_ca = ca_params.self_signed(&foreign_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(foreign_ca.der(), &foreign_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(
        format!("urn:outpost:acme:device:{}", f.device)
            .try_into()
            .unwrap(),
    )];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let identity = (
        vec![leaf.der().clone(), foreign_ca.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    );
    // TLS 1.3 may finish the client side of the handshake before the server
    // rejects the certificate, so the failure shows at connect or first call.
    // It must be the TLS layer that says no, not a store lookup that
    // happens to miss (which would mean the handshake trusted a foreign CA).
    match client(&f.cp, Some(identity)).await {
        Err(e) => assert!(!e.contains("unknown to the control plane"), "{e}"),
        Ok(mut c) => {
            let err = open_session(&mut c)
                .await
                .expect_err("a foreign certificate must not open a session");
            assert!(
                !err.message().contains("unknown to the control plane"),
                "refused by the store, not by TLS: {err:?}"
            );
            eprintln!("foreign certificate refused: {err:?}");
        }
    }

    // The server is unharmed.
    let key = KeyPair::generate().unwrap();
    let resp = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap();
    let mut c = client(&f.cp, Some(identity_of(&resp, &key))).await.unwrap();
    open_session(&mut c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_our_ca_signed_but_never_recorded_is_refused() {
    let f = fixture().await;
    let ca = Ca::from_pem(
        &std::fs::read_to_string(f.cp.data_dir.join("pki/ca.crt")).unwrap(),
        &std::fs::read_to_string(f.cp.data_dir.join("pki/ca.key")).unwrap(),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let issued = ca
        .sign_device_csr(
            &VerifiedCsr::from_der(&csr(&key)).unwrap(),
            "acme",
            &f.device,
            std::time::Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let identity = (
        vec![CertificateDer::from(issued.der)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    );
    let mut c = client(&f.cp, Some(identity)).await.unwrap();
    let err = open_session(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("unknown"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_device_is_refused() {
    let f = fixture().await;
    let key = KeyPair::generate().unwrap();
    let resp = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap();
    let store = outpost_control_plane::config::open_store(
        &f.cp.data_dir,
        test_database(&f.cp.data_dir).as_deref(),
    )
    .await
    .unwrap();
    assert!(
        store
            .set_device_enabled("acme", &f.device, false)
            .await
            .unwrap()
    );
    let mut c = client(&f.cp, Some(identity_of(&resp, &key))).await.unwrap();
    let err = open_session(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("disabled"), "{}", err.message());
    let err = push(&mut c, vec![batch(&[1])]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_batches_are_stored_once_and_in_order() {
    let f = fixture().await;
    let key = KeyPair::generate().unwrap();
    let resp = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap();
    let mut c = client(&f.cp, Some(identity_of(&resp, &key))).await.unwrap();
    assert_eq!(open_session(&mut c).await.unwrap().last_telemetry_seq, 0);
    let acks = push(&mut c, vec![batch(&[1, 2])]).await.unwrap();
    assert_eq!(acks, vec![TelemetryAck { acked_seq: 2 }]);
    // The ack was "lost": the agent resends 1..2 with a new sample.
    let acks = push(&mut c, vec![batch(&[1, 2, 3]), batch(&[4])])
        .await
        .unwrap();
    assert_eq!(
        acks,
        vec![TelemetryAck { acked_seq: 3 }, TelemetryAck { acked_seq: 4 }]
    );
    let samples = all_samples(&f.cp, "acme", &f.key, &f.device).await;
    let seqs: Vec<u64> = samples.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(
        open_session(&mut c).await.unwrap().last_telemetry_seq,
        4,
        "a new session tells the agent where the store stands"
    );
}

/// A message whose field 1 is bytes that do not parse as a Sample.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "1")]
    samples: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_input_gets_a_status_not_a_crash() {
    let f = fixture().await;
    // Enrollment with a CSR that is not one.
    let mut anon = client(&f.cp, None).await.unwrap();
    let err = anon
        .enroll(EnrollRequest {
            install_id: f.install_id.clone(),
            csr_der: b"definitely not DER".to_vec(),
            facts: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("CSR"), "{}", err.message());
    // A CSR of a key type TLS here cannot verify: named, not "bad signature".
    let err = anon
        .enroll(EnrollRequest {
            install_id: f.install_id.clone(),
            csr_der: include_bytes!("../src/pki/testdata/rsa1024.csr.der").to_vec(),
            facts: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("RSA of 1024 bits") && err.message().contains("ECDSA P-256"),
        "{}",
        err.message()
    );

    let key = KeyPair::generate().unwrap();
    let resp = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap();
    let trust = Trust::from_ca_file(&f.cp.ca_path()).unwrap();
    let tls = link::client_config(&trust, Some(identity_of(&resp, &key))).unwrap();
    let channel = link::connect(&ServerUrl::parse(&f.cp.grpc_url()).unwrap(), tls)
        .await
        .unwrap();

    // Bytes that are not a TelemetryBatch.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Garbage, TelemetryAck>::default();
    let path =
        http::uri::PathAndQuery::from_static("/outpost.device.v1.DeviceService/PushTelemetry");
    let garbage = Garbage {
        samples: vec![0xff; 64],
    };
    let outcome = match grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(vec![garbage])),
            path,
            codec,
        )
        .await
    {
        Err(status) => Err(status),
        Ok(resp) => resp.into_inner().message().await,
    };
    let err = outcome.expect_err("garbage must be refused");
    assert!(err.message().to_lowercase().contains("decode"), "{err:?}");

    // A batch over the message size limit.
    let mut c = DeviceServiceClient::new(channel.clone());
    let mut big = batch(&[1]);
    big.samples[0].temperatures = vec![
        Temperature {
            sensor: "x".repeat(64 * 1024),
            celsius: 1.0,
        };
        20
    ];
    let err = push(&mut c, vec![big]).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );

    // Well-formed but wrong: seq 0.
    let err = push(&mut c, vec![batch(&[0])]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Still serving, and none of the above was stored.
    let acks = push(&mut c, vec![batch(&[1])]).await.unwrap();
    assert_eq!(acks, vec![TelemetryAck { acked_seq: 1 }]);
    assert_eq!(all_samples(&f.cp, "acme", &f.key, &f.device).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_values_are_refused_naming_the_field_and_nothing_is_stored() {
    let f = fixture().await;
    let key = KeyPair::generate().unwrap();
    let resp = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap();
    let mut c = client(&f.cp, Some(identity_of(&resp, &key))).await.unwrap();

    let err = open_session_with(
        &mut c,
        Some(DeviceFacts {
            memory_total_bytes: u64::MAX,
            ..Default::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("memory_total_bytes"), "{err:?}");

    let mut far = batch(&[1]);
    far.samples[0].timestamp_unix_ms = i64::MAX;
    let mut huge = batch(&[1]);
    huge.samples[0].network_rx_bytes = u64::MAX;
    for (bad, field) in [(far, "timestamp_unix_ms"), (huge, "network_rx_bytes")] {
        let err = push(&mut c, vec![bad]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("sample 1") && err.message().contains(field),
            "{err:?}"
        );
    }
    assert!(
        all_samples(&f.cp, "acme", &f.key, &f.device)
            .await
            .is_empty()
    );

    // Plausible values from the same box are still taken.
    open_session_with(
        &mut c,
        Some(DeviceFacts {
            memory_total_bytes: 8 << 30,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let acks = push(&mut c, vec![batch(&[1])]).await.unwrap();
    assert_eq!(acks, vec![TelemetryAck { acked_seq: 1 }]);
}

fn nineteen_seventy() -> i64 {
    86_400_000
}

/// A rustls time source stuck in 1970, with no floor.
#[derive(Debug)]
struct Stuck1970;
impl rustls::time_provider::TimeProvider for Stuck1970 {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            std::time::Duration::from_secs(86_400),
        ))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_box_whose_clock_says_1970_still_connects_thanks_to_the_floor() {
    let f = fixture().await;
    let key = KeyPair::generate().unwrap();
    let resp = enroll_raw(&f.cp, &f.install_id, &key).await.unwrap();
    let trust = Trust::from_ca_file(&f.cp.ca_path()).unwrap();
    let server = ServerUrl::parse(&f.cp.grpc_url()).unwrap();

    // Without a floor, a 1970 clock cannot verify the server: said plainly.
    let raw = link::client_config_at(
        &trust,
        Some(identity_of(&resp, &key)),
        std::sync::Arc::new(Stuck1970),
    )
    .unwrap();
    let err = match link::connect(&server, raw).await {
        Err(e) => e.to_string(),
        Ok(ch) => open_session(&mut DeviceServiceClient::new(ch))
            .await
            .unwrap_err()
            .to_string(),
    };
    assert!(
        err.contains("because of the clock") || err.contains("NotValidYet"),
        "{err}"
    );

    // A box that once connected knows a good time (the control plane's, at
    // its last session start; the agent persists it in clock.floor).
    let sane = link::client_config(&trust, Some(identity_of(&resp, &key))).unwrap();
    let mut c = DeviceServiceClient::new(link::connect(&server, sane).await.unwrap());
    let last_good = open_session(&mut c).await.unwrap().server_time_unix_ms;

    // After a reboot into 1970, the agent's clock is floored there and connects.
    // (The build-time floor alone only helps with certificates issued before
    // the build: `clock::tests` covers it.)
    let clock = outpost_agent::clock::Clock::with_source(Some(last_good), nineteen_seventy);
    assert!(clock.now_ms() >= last_good);
    let tls =
        link::client_config_at(&trust, Some(identity_of(&resp, &key)), clock.clone()).unwrap();
    let mut c = DeviceServiceClient::new(link::connect(&server, tls).await.unwrap());
    let start = open_session(&mut c).await.unwrap();
    // The server's authenticated time then raises the floor.
    assert!(clock.observe_good_time(start.server_time_unix_ms) >= start.server_time_unix_ms);
    assert!(clock.now_ms() >= start.server_time_unix_ms);
}
