//! The outpostctl binary on its own: usage errors and their exit codes, the
//! API key kept out of help text and request lines, connection errors, and
//! HTTPS through rustls (ring) against a real TLS server with a private CA.
//! The end-to-end tests against the real control plane are in
//! control-plane/tests/outpostctl.rs.

use std::process::Output;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_outpostctl");
const KEY: &str = "opk_cli_test_secret_key";

/// outpostctl with a clean environment (no OUTPOST_* from the caller).
fn ctl(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.args(args).env_clear().envs(env.iter().copied());
    if let Ok(path) = std::env::var("PATH") {
        c.env("PATH", path);
    }
    c
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    ctl(args, env).output().await.expect("run outpostctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn missing_settings_are_usage_errors_naming_flag_and_variable() {
    let o = run(&["devices", "list"], &[]).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let e = stderr(&o);
    assert!(e.contains("OUTPOST_URL") && e.contains("--url"), "{e}");

    let o = run(
        &["devices", "list"],
        &[("OUTPOST_URL", "http://127.0.0.1:9")],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let e = stderr(&o);
    assert!(
        e.contains("OUTPOST_API_KEY") && e.contains("--api-key"),
        "{e}"
    );

    let o = run(
        &["devices", "list", "--url", "http://127.0.0.1:9"],
        &[("OUTPOST_API_KEY", KEY)],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let e = stderr(&o);
    assert!(
        e.contains("OUTPOST_WORKSPACE") && e.contains("--workspace"),
        "{e}"
    );
    assert!(!e.contains(KEY), "the key leaked: {e}");

    // Not a URL, and an unknown subcommand (clap's own usage error).
    let env = [("OUTPOST_API_KEY", KEY), ("OUTPOST_WORKSPACE", "acme")];
    let o = run(&["--url", "127.0.0.1:8080", "devices", "list"], &env).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr(&o).contains("http://"), "{}", stderr(&o));
    let o = run(&["frobnicate"], &env).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[tokio::test]
async fn help_never_shows_the_api_key() {
    for args in [
        &["--help"][..],
        &["devices", "list", "--help"],
        &["watch", "--help"],
    ] {
        let o = run(args, &[("OUTPOST_API_KEY", KEY)]).await;
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("OUTPOST_API_KEY"), "{out}");
        assert!(!out.contains(KEY), "the key leaked into help: {out}");
    }
}

#[tokio::test]
async fn nothing_listening_is_a_connection_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let o = run(
        &["devices", "list"],
        &[
            ("OUTPOST_URL", &url),
            ("OUTPOST_API_KEY", KEY),
            ("OUTPOST_WORKSPACE", "acme"),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let e = stderr(&o);
    assert!(e.contains("connection error"), "{e}");
    assert!(!e.contains(KEY), "the key leaked: {e}");
}

/// A one-request-per-connection HTTPS server: answers a device list on
/// `/acme/devices/v2`, a 404 with the API's error body elsewhere, and
/// reports each request head it saw.
async fn tls_server() -> (String, String, mpsc::UnboundedReceiver<String>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A client that does not trust us ends the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let (status, body) = if path.starts_with("/acme/devices/v2?") {
                    (
                        "200 OK",
                        r#"{"data":[{"id":"d1","name":"cam"}],"pagination":{"next_cursor":null,"has_more":false,"limit":500}}"#,
                    )
                } else {
                    ("404 Not Found", r#"{"error":"device not found"}"#)
                };
                let _ = tx.send(head);
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, ca.pem(), rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_private_ca_and_the_key_in_the_header_only() {
    let (url, ca_pem, mut seen) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let ca = ca_file.to_str().unwrap();
    let env = [
        ("OUTPOST_URL", url.as_str()),
        ("OUTPOST_API_KEY", KEY),
        ("OUTPOST_WORKSPACE", "acme"),
    ];

    let o = run(&["devices", "list", "-o", "json", "--ca-file", ca], &env).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["data"][0]["id"], "d1");
    let head = seen.recv().await.unwrap();
    let request_line = head.lines().next().unwrap();
    assert!(!request_line.contains(KEY), "{request_line}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {KEY}"))),
        "{head}"
    );

    // The server's error message, exit 1.
    let o = run(&["devices", "get", "nope", "--ca-file", ca], &env).await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let e = stderr(&o);
    assert!(e.contains("device not found") && e.contains("404"), "{e}");

    // Without the CA, the system roots do not know this server: exit 3.
    let o = run(&["devices", "list"], &env).await;
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let e = stderr(&o);
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // A file without a certificate is a usage error.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let o = run(
        &["devices", "list", "--ca-file", empty.to_str().unwrap()],
        &env,
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
