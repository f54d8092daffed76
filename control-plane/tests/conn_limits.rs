//! Connection floods and handshake starvation (issue 21, defects 1 and 2):
//! real sockets on loopback, real TLS, the control plane in process with
//! small caps and short timeouts. Attackers use other loopback source
//! addresses (127.0.0.2, …) than the legitimate clients (127.0.0.1), with
//! the per-address caps applied to loopback (`--connection-limits-on-loopback`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use outpost_agent::link::{self, ServerUrl, Trust};
use outpost_proto::v1::agent_message::Kind as AgentKind;
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::server_message::Kind as ServerKind;
use outpost_proto::v1::{
    AgentMessage, EnrollRequest, EnrollResponse, Hello, Sample, TelemetryBatch,
};
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::Channel;

const SCRAPE: &str = "scrape-token-for-the-connection-tests";

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

async fn with_limits(
    tune: impl FnOnce(&mut outpost_control_plane::config::ServeArgs),
) -> (ControlPlane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("scrape-token");
    std::fs::write(&token, SCRAPE).unwrap();
    let cp = ControlPlane::in_process_with(|a| {
        a.metrics_token_file = Some(token);
        a.connection_limits_on_loopback = true;
        tune(a);
    })
    .await;
    (cp, dir)
}

/// The value of one sample of the control plane's own metrics (0 if absent).
async fn metric(cp: &ControlPlane, series: &str) -> f64 {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", cp.rest))
        .bearer_auth(SCRAPE)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn grpc_addr(cp: &ControlPlane) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], cp.grpc_port))
}

fn rest_addr(cp: &ControlPlane) -> SocketAddr {
    cp.rest.trim_start_matches("http://").parse().unwrap()
}

/// A TCP connection to `dst` from the loopback address `src`.
async fn tcp_from(src: [u8; 4], dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    sock.connect(dst).await
}

/// A TLS session without a client certificate that never sends anything.
async fn idle_tls(
    cp: &ControlPlane,
    src: [u8; 4],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let trust = Trust::from_ca_file(&cp.ca_path()).unwrap();
    let tls = link::client_config(&trust, None).unwrap();
    let tcp = tcp_from(src, grpc_addr(cp)).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

/// Whether the server has closed `s` (EOF or an error), within `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

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

async fn enroll(cp: &ControlPlane, install_id: &str) -> Result<(EnrollResponse, Identity), String> {
    let key = KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let mut c = client(cp, None).await?;
    let resp = c
        .enroll(EnrollRequest {
            install_id: install_id.into(),
            csr_der: csr,
            ..Default::default()
        })
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let identity = (
        resp.certificate_chain_der
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    );
    Ok((resp, identity))
}

/// An enrolled device with its session open (kept until dropped).
struct Session {
    client: DeviceServiceClient<Channel>,
    _tx: tokio::sync::mpsc::Sender<AgentMessage>,
    _rx: tonic::Streaming<outpost_proto::v1::ServerMessage>,
    next_seq: u64,
}

impl Session {
    async fn open(cp: &ControlPlane, install_id: &str) -> Self {
        let (_, identity) = enroll(cp, install_id).await.unwrap();
        let mut client = client(cp, Some(identity)).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(AgentMessage {
            kind: Some(AgentKind::Hello(Hello::default())),
        })
        .await
        .unwrap();
        let mut stream = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().and_then(|m| m.kind);
        assert!(matches!(first, Some(ServerKind::Start(_))), "{first:?}");
        Session {
            client,
            _tx: tx,
            _rx: stream,
            next_seq: 1,
        }
    }

    /// Sends one sample and waits for its ack (the store has it).
    async fn push_one(&mut self) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let batch = TelemetryBatch {
            samples: vec![Sample {
                seq,
                timestamp_unix_ms: 1_700_000_000_000 + seq as i64,
                cpu_percent: 1.0,
                ..Default::default()
            }],
        };
        let mut acks = tokio::time::timeout(
            TIMEOUT,
            self.client.push_telemetry(tokio_stream::iter(vec![batch])),
        )
        .await
        .expect("push in time")
        .expect("push accepted")
        .into_inner();
        let ack = tokio::time::timeout(TIMEOUT, acks.message())
            .await
            .expect("ack in time")
            .expect("ack")
            .expect("an ack");
        assert_eq!(ack.acked_seq, seq);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tls_floods_are_capped_and_closed_while_sessions_stream_and_devices_enroll() {
    let (cp, _dir) = with_limits(|a| {
        a.grpc_max_connections = Some(24);
        a.grpc_max_connections_per_ip = Some(10);
        a.first_request_timeout = Some(Duration::from_secs(5));
    })
    .await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (_, inst_a) = cp.create_device("acme", &key, "streaming").await;
    let (_, inst_b) = cp.create_device("acme", &key, "newcomer").await;
    let (_, inst_c) = cp.create_device("acme", &key, "latecomer").await;
    let mut session = Session::open(&cp, &inst_a).await;
    session.push_one().await;

    // 30 handshakes from one address that never send the HTTP/2 preface:
    // the per-address cap holds 10, the rest are closed at accept.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        match idle_tls(&cp, [127, 0, 0, 2]).await {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), 10, "held {} (refused {refused})", held.len());
    // Other addresses fill the listener to its cap, and beyond: a full
    // listener evicts its oldest connection that never made a request.
    let mut others = Vec::new();
    for i in 0..20u8 {
        if let Ok(s) = idle_tls(&cp, [127, 0, 1, 3 + i % 4]).await {
            others.push(s);
        }
    }
    assert!(others.len() >= 13, "{}", others.len());
    let per_ip = r#"outpost_connections_refused_total{listener="grpc",reason="per_ip"}"#;
    assert!(metric(&cp, per_ip).await >= 20.0);
    wait_until(
        "connections evicted by the full listener",
        TIMEOUT,
        || async {
            let n = metric(
                &cp,
                r#"outpost_connections_closed_total{listener="grpc",reason="evicted"}"#,
            )
            .await;
            (n >= 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(
            &cp,
            r#"outpost_connection_limit{listener="grpc",scope="total"}"#
        )
        .await,
        24.0
    );
    assert_eq!(
        metric(
            &cp,
            r#"outpost_connection_limit{listener="grpc",scope="per_ip"}"#
        )
        .await,
        10.0
    );
    assert_eq!(
        metric(
            &cp,
            r#"outpost_connection_limit{listener="grpc",scope="pending_handshakes_per_ip"}"#
        )
        .await,
        32.0
    );
    assert!(metric(&cp, r#"outpost_open_files_limit{kind="soft"}"#).await > 0.0);
    let open = metric(&cp, r#"outpost_connections_open{listener="grpc"}"#).await;
    assert!((23.0..=25.0).contains(&open), "{open}");

    // The session keeps streaming through the flood, and a new device
    // enrolls while the listener is full (an idle connection makes room).
    session.push_one().await;
    let (resp, _) = enroll(&cp, &inst_b).await.expect("a new device enrolls");
    assert!(!resp.device_id.is_empty());

    // Connections that never sent a request are closed after the
    // first-request timeout (or were evicted).
    let started = Instant::now();
    for s in held.iter_mut().chain(others.iter_mut()) {
        assert!(closed_within(s, Duration::from_secs(20)).await);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed too early"
    );
    let timed_out = metric(
        &cp,
        r#"outpost_connections_closed_total{listener="grpc",reason="first_request_timeout"}"#,
    )
    .await;
    assert!(timed_out >= 1.0, "{timed_out}");
    let (resp, _) = enroll(&cp, &inst_c).await.expect("another device enrolls");
    assert!(!resp.device_id.is_empty());
    // The session's connection has a stream open: never idle.
    session.push_one().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_hello_flood_from_one_address_does_not_stop_an_enrollment() {
    let (cp, _dir) = with_limits(|a| {
        a.max_pending_handshakes_per_ip = Some(8);
        a.tls_client_hello_timeout = Some(Duration::from_secs(1));
    })
    .await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (_, install_id) = cp.create_device("acme", &key, "legit").await;

    // 300 sockets from 127.0.0.2 that send 6 bytes of a ClientHello and
    // stall, each reopened as soon as the server drops it.
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dst = grpc_addr(&cp);
    let mut attackers = Vec::new();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..300 {
        let (stop, stopped, opened) = (stop.clone(), stopped.clone(), opened.clone());
        attackers.push(tokio::spawn(async move {
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok(mut s) = tcp_from([127, 0, 0, 2], dst).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
                let mut buf = [0u8; 16];
                tokio::select! {
                    _ = s.read(&mut buf) => {}
                    _ = stop.notified() => break,
                }
                // Pace the reconnects a little: this is a small test machine.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    wait_until("the attack to be under way", TIMEOUT, || async {
        let n = metric(
            &cp,
            r#"outpost_connections_refused_total{listener="grpc",reason="pending_handshakes_per_ip"}"#,
        )
        .await;
        (n >= 50.0).then_some(())
    })
    .await;
    assert!(metric(&cp, "outpost_tls_handshakes_pending").await <= 8.0 + 1.0);

    // A legitimate client (127.0.0.1) enrolls, within far less than the
    // 10 s handshake timeout the attackers' handshakes would hold it.
    let t = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(8), enroll(&cp, &install_id)).await;
    let took = t.elapsed();
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    stop.notify_waiters();
    let (resp, _) = res
        .expect("the enrollment finished during the attack")
        .expect("the enrollment succeeded");
    assert!(!resp.device_id.is_empty());
    eprintln!(
        "enrolled in {took:?} during the attack ({} attacker connections)",
        opened.load(std::sync::atomic::Ordering::SeqCst)
    );
    wait_until("stalled ClientHellos to be timed out", TIMEOUT, || async {
        let n = metric(
            &cp,
            r#"outpost_connections_closed_total{listener="grpc",reason="client_hello_timeout"}"#,
        )
        .await;
        (n >= 1.0).then_some(())
    })
    .await;
    for a in attackers {
        a.abort();
    }
}

/// Found in review: stalled ClientHellos from a few addresses, each within
/// its pending-handshake cap, used to hold every handshake permit (256) and
/// with them the accept loop, until their ClientHello timeout.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_client_hellos_from_many_addresses_do_not_stop_accepting() {
    let (cp, _dir) = with_limits(|a| {
        a.max_pending_handshakes_per_ip = Some(32);
        a.tls_client_hello_timeout = Some(Duration::from_secs(20));
        a.tls_handshake_timeout = Some(Duration::from_secs(30));
    })
    .await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (_, install_id) = cp.create_device("acme", &key, "legit").await;
    let dst = grpc_addr(&cp);
    // 10 addresses × 30 sockets = 300 stalled ClientHellos, more than the
    // 256 permits, none refused by a per-address cap.
    let mut stalled = Vec::new();
    for host in 2..12u8 {
        for _ in 0..30 {
            let mut s = tcp_from([127, 0, 0, host], dst).await.unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
            stalled.push(s);
        }
    }
    wait_until("all stalled handshakes to be pending", TIMEOUT, || async {
        (metric(&cp, "outpost_tls_handshakes_pending").await >= 300.0).then_some(())
    })
    .await;
    // A legitimate client is accepted and enrolls long before the stalled
    // ones time out (20 s).
    let res = tokio::time::timeout(Duration::from_secs(10), enroll(&cp, &install_id)).await;
    let (resp, _) = res
        .expect("the enrollment finished while 300 ClientHellos stalled")
        .expect("the enrollment succeeded");
    assert!(!resp.device_id.is_empty());
    drop(stalled);
}

/// Found in review: a request is in flight until its response is written,
/// so a client that asks and never reads held its connection (and a slot
/// of the listener's cap) forever. Writes that wait on the peer for the
/// idle timeout now close it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_responses_is_closed() {
    let (cp, _dir) = with_limits(|a| {
        a.idle_connection_timeout = Some(Duration::from_secs(2));
    })
    .await;
    let dst = rest_addr(&cp);
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
    let mut s = sock.connect(dst).await.unwrap();
    // Pipelined requests for the OpenAPI document (~120 KiB each): far more
    // than the socket buffers hold, and never read.
    let one = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(&one.repeat(64)).await.unwrap();
    wait_until("the stalled connection to be closed", TIMEOUT, || async {
        let n = metric(
            &cp,
            r#"outpost_connections_closed_total{listener="rest",reason="write_stall"}"#,
        )
        .await;
        (n >= 1.0).then_some(())
    })
    .await;
    // Its slot is free again.
    wait_until("its slot to be given back", TIMEOUT, || async {
        let open = metric(&cp, r#"outpost_connections_open{listener="rest"}"#).await;
        (open <= 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_drops_partial_headers_after_the_header_timeout_and_caps_each_address() {
    let (cp, _dir) = with_limits(|a| {
        a.http_header_read_timeout = Some(Duration::from_secs(3));
        a.rest_max_connections_per_ip = Some(5);
    })
    .await;
    let dst = rest_addr(&cp);
    // Five slowloris sockets from one address: a request line and half the
    // headers, then nothing.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = tcp_from([127, 0, 0, 2], dst).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    wait_until("five REST connections from 127.0.0.2", TIMEOUT, || async {
        let n = metric(&cp, r#"outpost_connections_open{listener="rest"}"#).await;
        (n >= 5.0).then_some(())
    })
    .await;
    // The sixth from that address is told why, as JSON, and closed.
    let mut sixth = tcp_from([127, 0, 0, 2], dst).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, sixth.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many connections"),
        "{body}"
    );
    // Other clients are served meanwhile (with their peer address intact).
    let ok = reqwest::get(format!("{}/healthz", cp.rest)).await.unwrap();
    assert_eq!(ok.status(), 200);

    // The partial requests are dropped after the header read timeout.
    let started = Instant::now();
    for s in slow.iter_mut() {
        assert!(closed_within(s, Duration::from_secs(15)).await);
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    wait_until("the REST connections to be released", TIMEOUT, || async {
        let n = metric(&cp, r#"outpost_connections_open{listener="rest"}"#).await;
        (n <= 1.0).then_some(())
    })
    .await;
    assert!(
        metric(
            &cp,
            r#"outpost_connections_refused_total{listener="rest",reason="per_ip"}"#
        )
        .await
            >= 1.0
    );
    // And the address may connect again.
    let mut again = tcp_from([127, 0, 0, 2], dst).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, again.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_connection_lives_no_longer_than_its_lifetime() {
    let (cp, _dir) = with_limits(|a| {
        a.unauthenticated_connection_lifetime = Some(Duration::from_secs(2));
        a.idle_connection_timeout = Some(Duration::from_secs(60));
    })
    .await;
    cp.create_workspace("acme", &[]);
    // An HTTP/2 connection without a client certificate (enrollment's kind)
    // is closed at its lifetime, before its idle timeout.
    let mut c = client(&cp, None).await.unwrap();
    let _ = c
        .check_enrollment(outpost_proto::v1::CheckEnrollmentRequest::default())
        .await;
    let started = Instant::now();
    wait_until("the connection to be closed", TIMEOUT, || async {
        let n = metric(
            &cp,
            r#"outpost_connections_closed_total{listener="grpc",reason="unauthenticated_lifetime"}"#,
        )
        .await;
        (n >= 1.0).then_some(())
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    drop(c);
}

/// Sends one raw HTTP/1.1 request and returns the status code and body.
async fn raw_http(cp: &ControlPlane, head: &str) -> (u16, String) {
    let mut s = tcp_from([127, 0, 0, 1], rest_addr(cp)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .ok();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_heads_get_json_errors() {
    let (cp, _dir) = with_limits(|_| {}).await;
    let long_uri = format!("/healthz?{}", "a".repeat(20 * 1024));
    let (status, body) = raw_http(
        &cp,
        &format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 414, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("request target"),
        "{v}"
    );

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, body) = raw_http(
        &cp,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());

    let big = "b".repeat(70 * 1024);
    let (status, body) = raw_http(
        &cp,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());

    let (status, _) = raw_http(
        &cp,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_device_connection_is_closed_but_one_with_a_session_is_not() {
    let (cp, _dir) = with_limits(|a| {
        a.idle_connection_timeout = Some(Duration::from_secs(2));
    })
    .await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (_, inst_a) = cp.create_device("acme", &key, "session").await;
    let (_, inst_b) = cp.create_device("acme", &key, "idle").await;
    let mut session = Session::open(&cp, &inst_a).await;
    // A device connection that makes one call and then nothing.
    let (_, identity) = enroll(&cp, &inst_b).await.unwrap();
    let mut idle = client(&cp, Some(identity)).await.unwrap();
    let _ = idle
        .check_enrollment(outpost_proto::v1::CheckEnrollmentRequest::default())
        .await;
    wait_until("the idle connection to be closed", TIMEOUT, || async {
        let n = metric(
            &cp,
            r#"outpost_connections_closed_total{listener="grpc",reason="idle_timeout"}"#,
        )
        .await;
        (n >= 1.0).then_some(())
    })
    .await;
    // The session's connection outlived the idle timeout: it has a stream.
    session.push_one().await;
    drop(idle);
}
