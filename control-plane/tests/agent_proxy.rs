//! The agent through an HTTP CONNECT proxy (issue 21), end to end: the real
//! control plane and agent binaries, and a real proxy — Debian's tinyproxy,
//! started per test on 127.0.0.1 with a generated configuration
//! (`scripts/dev-deps.sh` installs it). Without tinyproxy these tests skip,
//! unless `OUTPOST_CI` is set (CI installs it and must run them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const USER: &str = "edge";
const PASSWORD: &str = "pr0xy-s3cret";

/// A tinyproxy of this test's own, in the foreground.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts one (with `BasicAuth USER PASSWORD` when `auth`); `None` (the
    /// test skips) when tinyproxy is not installed and this is not CI.
    fn start(auth: bool) -> Option<Self> {
        let Some(bin) = which("tinyproxy") else {
            assert!(
                std::env::var_os("OUTPOST_CI").is_none(),
                "OUTPOST_CI is set but tinyproxy is not installed (scripts/dev-deps.sh installs it)"
            );
            eprintln!("tinyproxy is not installed (scripts/dev-deps.sh): skipping");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // A free port, given to tinyproxy; another process may take it in
        // between, so a proxy that does not come up is tried again.
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join("tinyproxy.log");
            let conf = dir.path().join("tinyproxy.conf");
            let mut text = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\nAllow 127.0.0.1\nLogLevel Connect\nLogFile \"{}\"\n",
                log.display()
            );
            if auth {
                text.push_str(&format!("BasicAuth {USER} {PASSWORD}\n"));
            }
            std::fs::write(&conf, text).unwrap();
            let mut child = Command::new(&bin)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tinyproxy");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Tinyproxy {
                        child,
                        port,
                        log,
                        _dir: dir,
                    });
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("tinyproxy did not start");
    }

    fn url(&self, userinfo: &str) -> String {
        format!("http://{userinfo}127.0.0.1:{}", self.port)
    }

    /// The CONNECT requests tinyproxy logged, as `HOST:PORT`.
    fn connects(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("): CONNECT ").map(|(_, r)| r))
            .filter_map(|r| r.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

/// The CONNECTs tinyproxy logged, once there are more than `n` (its log
/// may lag the connection a little).
async fn connects_past(proxy: &Tinyproxy, n: usize) -> Vec<String> {
    wait_until("tinyproxy to log the CONNECT", TIMEOUT, || async {
        let c = proxy.connects();
        (c.len() > n).then_some(c)
    })
    .await
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The agent with no proxy setting from this process's environment: each
/// test says what it wants.
fn agent(args: &[&str]) -> Command {
    let mut c = agent_cmd(args);
    for v in ["https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"] {
        c.env_remove(v);
    }
    c
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `outpost-agent check` on an enrolled state dir.
fn check(state: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let o = agent(&["check", "--state-dir"])
        .arg(state)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );
    (o.status.success(), format!("{out}{err}"))
}

/// A control plane with a workspace, a key and a device to enroll.
async fn control_plane() -> (ControlPlane, String, String, String) {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install) = cp.create_device("acme", &key, "behind-proxy").await;
    (cp, key, device, install)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_box_enrolls_and_streams_through_an_authenticating_proxy() {
    let Some(proxy) = Tinyproxy::start(true) else {
        return;
    };
    let (cp, key, device, install) = control_plane().await;
    let target = format!("localhost:{}", cp.grpc_port);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    // enroll --proxy: through the tunnel, TLS end to end inside it.
    let o = agent(&[
        "enroll",
        "--server",
        &cp.grpc_url(),
        "--install-id",
        &install,
    ])
    .arg("--ca-file")
    .arg(cp.ca_path())
    .arg("--state-dir")
    .arg(&state)
    .args(["--proxy", &proxy.url(&format!("{USER}:{PASSWORD}@"))])
    .output()
    .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );
    let connects = connects_past(&proxy, 0).await;
    assert!(
        connects.iter().all(|c| *c == target),
        "the enrollment went through the proxy: {connects:?}"
    );
    let enrolled = connects.len();

    // run, with the proxy from HTTPS_PROXY: samples arrive, through it.
    let log_path = tmp.path().join("agent.log");
    let mut run = agent(&["run", "--interval", "200ms", "--state-dir"])
        .arg(&state)
        .env("HTTPS_PROXY", proxy.url(&format!("{USER}:{PASSWORD}@")))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_until("samples through the proxy", TIMEOUT, || async {
        (!all_samples(&cp, "acme", &key, &device).await.is_empty()).then_some(())
    })
    .await;
    let _ = run.kill();
    let _ = run.wait();
    let connects = connects_past(&proxy, enrolled).await;
    assert!(
        connects.iter().all(|c| *c == target),
        "the link went through the proxy: {connects:?}"
    );
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(!logged.contains(PASSWORD), "{logged}");
    assert!(
        logged.contains(&format!(
            "http://{USER}:***@127.0.0.1:{} (from HTTPS_PROXY (environment))",
            proxy.port
        )),
        "the proxy in use is logged, its password redacted: {logged}"
    );

    // check reports the proxy in use and reaches the control plane through it.
    let before = proxy.connects().len();
    let (ok, out) = check(
        &state,
        &[],
        &[("https_proxy", &proxy.url(&format!("{USER}:{PASSWORD}@")))],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "ok   proxy: https://localhost:{} through http://{USER}:***@127.0.0.1:{} (from https_proxy (environment); HTTP CONNECT)",
            cp.grpc_port, proxy.port
        )),
        "{out}"
    );
    assert!(out.contains("reachable, TLS verified"), "{out}");
    connects_past(&proxy, before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_the_proxy_when_the_proxy_fails() {
    let Some(proxy) = Tinyproxy::start(true) else {
        return;
    };
    let (cp, _key, _device, install) = control_plane().await;
    let state = tempfile::tempdir().unwrap();
    let o = enroll(&cp, &install, state.path());
    assert!(o.status.success(), "{o:?}");
    let not_reached = format!(
        "(the control plane https://localhost:{} was not reached)",
        cp.grpc_port
    );

    // Wrong credentials: tinyproxy answers 401 to them (407 to none).
    let (ok, out) = check(
        state.path(),
        &["--proxy", &proxy.url(&format!("{USER}:wrong-{PASSWORD}@"))],
        &[],
    );
    assert!(!ok, "{out}");
    let want = format!(
        "FAIL proxy http://{USER}:***@127.0.0.1:{}: 401 Unauthorized to CONNECT localhost:{}: the proxy refused the credentials in the proxy URL",
        proxy.port, cp.grpc_port
    );
    assert!(out.contains(&want) && out.contains(&not_reached), "{out}");
    assert!(!out.contains("FAIL control plane"), "{out}");

    // No credentials: 407 Proxy Authentication Required, named.
    let (ok, out) = check(state.path(), &["--proxy", &proxy.url("")], &[]);
    assert!(!ok, "{out}");
    let want = format!(
        "FAIL proxy http://127.0.0.1:{}: 407 Proxy Authentication Required to CONNECT localhost:{}: the proxy wants credentials",
        proxy.port, cp.grpc_port
    );
    assert!(out.contains(&want), "{out}");
    assert!(!out.contains("FAIL control plane"), "{out}");
    assert!(
        proxy
            .connects()
            .iter()
            .all(|c| *c == format!("localhost:{}", cp.grpc_port)),
        "{:?}",
        proxy.connects()
    );

    // A proxy that is not listening: refused, named as the proxy's.
    let dead = free_port();
    let (ok, out) = check(
        state.path(),
        &[],
        &[(
            "HTTPS_PROXY",
            &format!("http://{USER}:{PASSWORD}@127.0.0.1:{dead}"),
        )],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL proxy http://{USER}:***@127.0.0.1:{dead}: cannot connect: Connection refused"
        )) && out.contains(&not_reached),
        "{out}"
    );

    // NO_PROXY naming the control plane's host: the dead proxy is bypassed
    // (and only that: no loopback exception without it, as above).
    for no_proxy in ["localhost", ".localhost", "*", "other.example, localhost"] {
        let (ok, out) = check(
            state.path(),
            &["--proxy", &format!("http://127.0.0.1:{dead}")],
            &[("NO_PROXY", no_proxy)],
        );
        assert!(ok, "NO_PROXY={no_proxy}: {out}");
        assert!(
            out.contains(&format!(
                "ok   proxy: http://127.0.0.1:{dead} (from --proxy) bypassed for https://localhost:{}",
                cp.grpc_port
            )) && out.contains("reachable, TLS verified"),
            "NO_PROXY={no_proxy}: {out}"
        );
    }
    // `--proxy ""` turns an environment's proxy off.
    let (ok, out) = check(
        state.path(),
        &["--proxy", ""],
        &[("https_proxy", &format!("http://127.0.0.1:{dead}"))],
    );
    assert!(
        ok && out.contains("ok   proxy: none (--proxy is empty)"),
        "{out}"
    );
}
