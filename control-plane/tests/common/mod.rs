//! Harness for end-to-end tests: the real `outpost-control-plane` and
//! `outpost-agent` binaries on 127.0.0.1 with OS-chosen ports, or the
//! control plane started inside the test ([`ControlPlane::in_process`]) where
//! a test is about the server's logic rather than the binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const TIMEOUT: Duration = Duration::from_secs(30);

pub fn cp_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost-control-plane"))
}

/// The agent binary sits next to ours in the target directory; `cargo test
/// --workspace` builds it (the agent crate has integration tests too).
pub fn agent_bin() -> PathBuf {
    let p = cp_bin().with_file_name("outpost-agent");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p outpost-agent, or run cargo test --workspace)",
        p.display()
    );
    p
}

/// outpostctl sits next to the control plane in the target directory;
/// `cargo test --workspace` builds it (the crate has integration tests).
pub fn ctl_bin() -> PathBuf {
    let p = cp_bin().with_file_name("outpostctl");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p outpostctl, or run cargo test --workspace)",
        p.display()
    );
    p
}

/// Polls `f` until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `f` to completion from sync test code inside a multi-thread runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{sig} failed");
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `OUTPOST_TEST_DATABASE_URL` (a PostgreSQL server URL), every data
/// directory gets its own fresh database (remembered in the directory, so a
/// restart finds it again); without it the control plane uses SQLite.
pub fn test_database(data_dir: &Path) -> Option<String> {
    let base = std::env::var("OUTPOST_TEST_DATABASE_URL").ok()?;
    let marker = data_dir.join(".test-database-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return Some(url);
    }
    let name = format!("outpost_e2e_{:016x}", rand::random::<u64>());
    let out = Command::new("psql")
        .arg(&base)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("a database URL ends in /dbname");
    let url = format!("{prefix}/{name}");
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(&marker, &url).unwrap();
    Some(url)
}

/// A running control plane with its own data directory.
pub struct ControlPlane {
    /// The binary (None in process).
    child: Option<Child>,
    /// The server in this process (None for the binary), and the host-side
    /// administration on its store.
    server: Option<(
        outpost_control_plane::server::RunningServer,
        outpost_control_plane::admin::Admin,
    )>,
    pub rest: String,
    pub grpc_port: u16,
    pub fingerprint: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl ControlPlane {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut cp = Self::start_in(&dir, &[]);
        cp._tmp = Some(tmp);
        cp
    }

    /// The control plane inside this test process (`server::start`), on
    /// 127.0.0.1 with OS-chosen ports: no process start, and the test's own
    /// runtime drives it (a multi-thread one: the sync helpers below block
    /// in place). Workspaces and keys are made through `admin::Admin` on the
    /// same store, as the admin commands do.
    pub async fn in_process() -> Self {
        Self::in_process_with(|_| {}).await
    }

    /// As [`ControlPlane::in_process`], with `tune` setting more options.
    pub async fn in_process_with(
        tune: impl FnOnce(&mut outpost_control_plane::config::ServeArgs),
    ) -> Self {
        use outpost_control_plane::config::{ServeArgs, ServeConfig};
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let any_port = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let database_url = test_database(&data_dir);
        let mut args = ServeArgs {
            data_dir: Some(data_dir.clone()),
            rest_listen: any_port,
            grpc_listen: any_port,
            database_url: database_url.clone(),
            ..Default::default()
        };
        tune(&mut args);
        let cfg = ServeConfig::resolve(args).expect("a valid config");
        let server = outpost_control_plane::server::start(cfg)
            .await
            .expect("the control plane starts");
        let admin = outpost_control_plane::admin::Admin::open(&data_dir, database_url.as_deref())
            .await
            .expect("the store opens for administration");
        ControlPlane {
            child: None,
            rest: format!("http://{}", server.rest_addr),
            grpc_port: server.grpc_addr.port(),
            fingerprint: server.ca_fingerprint.clone(),
            server: Some((server, admin)),
            data_dir,
            _tmp: Some(tmp),
        }
    }

    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(data_dir, "127.0.0.1:0", "127.0.0.1:0", extra)
    }

    /// Starts on given addresses (to come back on the same ports after a
    /// restart; first starts use port 0).
    pub fn start_at(data_dir: &Path, rest: &str, grpc: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(cp_bin());
        cmd.args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--rest-listen", rest, "--grpc-listen", grpc])
            .args(extra);
        if let Some(url) = test_database(data_dir) {
            cmd.args(["--database-url", &url]);
        }
        Self::spawn(cmd, data_dir)
    }

    /// Spawns a prepared `serve` command and waits for its address lines.
    pub fn spawn(cmd: Command, data_dir: &Path) -> Self {
        Self::spawn_logging_to(cmd, data_dir, Stdio::inherit())
    }

    /// As [`ControlPlane::spawn`], with the log (stderr) going to `log`.
    pub fn spawn_logging_to(mut cmd: Command, data_dir: &Path, log: Stdio) -> Self {
        let mut child = cmd
            .env("OUTPOST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn control plane");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut rest, mut grpc, mut fp) = (None, None, None);
        while rest.is_none() || grpc.is_none() || fp.is_none() {
            let line = rx
                .recv_timeout(TIMEOUT)
                .expect("control plane printed its addresses");
            if let Some(a) = line.strip_prefix("outpost-control-plane: rest listening on ") {
                rest = Some(a.to_string());
            } else if let Some(a) =
                line.strip_prefix("outpost-control-plane: grpc listening on https://")
            {
                grpc = Some(a.rsplit(':').next().unwrap().parse::<u16>().unwrap());
            } else if let Some(f) = line.strip_prefix("outpost-control-plane: CA fingerprint ") {
                fp = Some(f.to_string());
            }
        }
        ControlPlane {
            child: Some(child),
            server: None,
            rest: rest.unwrap(),
            grpc_port: grpc.unwrap(),
            fingerprint: fp.unwrap(),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("https://localhost:{}", self.grpc_port)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("pki/ca.crt")
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(cp_bin());
        cmd.args(args).arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = test_database(&self.data_dir) {
            cmd.args(["--database-url", &url]);
        }
        cmd.output().expect("run admin command")
    }

    pub fn create_workspace(&self, name: &str, features: &[&str]) {
        if let Some((_, admin)) = &self.server {
            let features: Vec<String> = features.iter().map(|f| f.to_string()).collect();
            block_on(admin.create_workspace(name, &features)).expect("workspace created");
            return;
        }
        let mut args = vec!["workspace", "create", name];
        for f in features {
            args.extend(["--feature", f]);
        }
        let out = self.admin(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn api_key(&self, workspace: &str, scopes: &[&str]) -> String {
        if let Some((_, admin)) = &self.server {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            let (_id, key) =
                block_on(admin.create_api_key(workspace, &scopes)).expect("key created");
            return key;
        }
        let mut args = vec!["api-key", "create", "--workspace", workspace];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        let out = self.admin(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    }

    /// Trusts an artifact publisher key in the workspace, as
    /// `publisher-key add` does.
    pub fn remove_publisher_key(&self, workspace: &str, key: &str) {
        if let Some((_, admin)) = &self.server {
            block_on(admin.remove_publisher_key(workspace, key)).expect("publisher key removed");
            return;
        }
        let out = self.admin(&["publisher-key", "remove", "--workspace", workspace, key]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn add_publisher_key(&self, workspace: &str, key: &str) {
        if let Some((_, admin)) = &self.server {
            block_on(admin.add_publisher_key(workspace, key)).expect("publisher key added");
            return;
        }
        let out = self.admin(&["publisher-key", "add", "--workspace", workspace, key]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates a device over REST; returns (deviceId, installId).
    pub async fn create_device(&self, workspace: &str, key: &str, name: &str) -> (String, String) {
        let resp = reqwest::Client::new()
            .post(format!("{}/{workspace}/devices/v2", self.rest))
            .bearer_auth(key)
            .json(&json!({"device_name": name, "device_type": "edge"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        (
            body["deviceId"].as_str().unwrap().to_string(),
            body["installId"].as_str().unwrap().to_string(),
        )
    }

    /// GET with the key; a 429 is waited out (Retry-After) like a polite
    /// client would, so polling tests stay within the rate limits.
    pub async fn get_json(&self, path: &str, key: &str) -> (u16, Value) {
        for _ in 0..30 {
            let resp = reqwest::Client::new()
                .get(format!("{}{path}", self.rest))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            if status == 429 {
                let wait = retry_after_secs(&resp);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            let text = resp.text().await.unwrap();
            return (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            );
        }
        panic!("still rate limited after 30 tries: {path}");
    }

    /// The binary's process (a control plane in process has none).
    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("a control plane binary, not one in process")
    }

    /// SIGKILL and wait (a crash or power cut).
    pub fn kill9(&mut self) {
        let child = self.child();
        signal(child, "KILL");
        wait_exit(child);
    }

    /// `host:port` of both listeners, to come back on the same ports.
    pub fn addrs(&self) -> (String, String) {
        (
            self.rest.trim_start_matches("http://").to_string(),
            format!("127.0.0.1:{}", self.grpc_port),
        )
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child();
        signal(child, "TERM");
        wait_exit(child)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        // An in-process server stops when dropped.
        drop(self.server.take());
    }
}

pub fn agent_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(agent_bin());
    c.args(args).env("OUTPOST_LOG", "info");
    c
}

/// Runs `outpost-agent enroll`.
pub fn enroll(cp: &ControlPlane, install_id: &str, state_dir: &Path) -> Output {
    agent_cmd(&[
        "enroll",
        "--server",
        &cp.grpc_url(),
        "--install-id",
        install_id,
        "--ca-file",
    ])
    .arg(cp.ca_path())
    .arg("--state-dir")
    .arg(state_dir)
    .output()
    .expect("run agent enroll")
}

/// A running `outpost-agent run`.
pub struct AgentProc {
    child: Child,
}

impl AgentProc {
    pub fn run(state_dir: &Path, interval: &str) -> Self {
        Self::run_env(state_dir, interval, &[])
    }

    /// `run` with extra environment variables.
    pub fn run_env(state_dir: &Path, interval: &str, env: &[(&str, &str)]) -> Self {
        Self::run_with(state_dir, interval, &[], env)
    }

    /// `run` with extra arguments and environment variables.
    pub fn run_with(state_dir: &Path, interval: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = agent_cmd(&["run", "--interval", interval, "--state-dir"])
            .arg(state_dir)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn agent");
        AgentProc { child }
    }

    pub fn terminate(&mut self) -> ExitStatus {
        signal(&self.child, "TERM");
        wait_exit(&mut self.child)
    }

    /// The exit status, if the agent has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn kill9(&mut self) {
        signal(&self.child, "KILL");
        wait_exit(&mut self.child);
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// All raw samples of a device, oldest first, walking every page.
pub async fn all_samples(cp: &ControlPlane, ws: &str, key: &str, device: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path =
            format!("/{ws}/devices/v2/{device}/telemetry/raw?direction=forward&limit=50");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = cp.get_json(&path, key).await;
        assert_eq!(status, 200, "{body}");
        out.extend(body["data"].as_array().unwrap().iter().cloned());
        match body["pagination"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// `outpost-agent status --json` for a state dir.
pub fn status_json(state_dir: &Path) -> Value {
    let out = agent_cmd(&["status", "--json", "--state-dir"])
        .arg(state_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// All stored log lines of a device, oldest first (by seq), walking every page.
pub async fn all_logs(cp: &ControlPlane, ws: &str, key: &str, device: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/{ws}/devices/v2/{device}/logs?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = cp.get_json(&path, key).await;
        assert_eq!(status, 200, "{body}");
        out.extend(body["data"].as_array().unwrap().iter().cloned());
        match body["pagination"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    out.reverse();
    out
}

pub fn meminfo_total_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// One Server-Sent Event as a client sees it.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// A client of `telemetry/stream`: the response body read chunk by chunk,
/// split into events per the SSE rules (comments skipped).
pub struct SseStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl SseStream {
    /// GETs `path` with the key (and extra headers); panics unless 200.
    pub async fn open(cp: &ControlPlane, path: &str, key: &str, headers: &[(&str, &str)]) -> Self {
        let mut tries = 0;
        let resp = loop {
            let mut req = reqwest::Client::new()
                .get(format!("{}{path}", cp.rest))
                .bearer_auth(key);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = req.send().await.unwrap();
            // The telemetry reads' rate limit: wait as Retry-After says.
            if resp.status() == 429 && tries < 30 {
                tries += 1;
                let wait = retry_after_secs(&resp);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            break resp;
        };
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Self {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next event; `None` when the server closed the stream. Panics if
    /// nothing arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(raw).expect("events are UTF-8");
                let mut ev = SseEvent {
                    event: "message".into(),
                    ..Default::default()
                };
                let mut has_data = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => ev.event = value.to_string(),
                        "id" => ev.id = Some(value.to_string()),
                        "data" => {
                            if has_data {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(value);
                            has_data = true;
                        }
                        _ => {} // comments (""), retry
                    }
                }
                if has_data {
                    return Some(ev);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("an SSE event in time")
                .expect("stream read");
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => return None,
            }
        }
    }

    /// The next `sample` event's (seq, sample JSON).
    pub async fn sample(&mut self, timeout: Duration) -> (u64, Value) {
        let ev = self.next(timeout).await.expect("stream open");
        assert_eq!(ev.event, "sample", "{ev:?}");
        let seq: u64 = ev.id.as_deref().unwrap().parse().unwrap();
        let v = ev.json();
        assert_eq!(v["seq"], seq, "the event id is the sample's seq");
        (seq, v)
    }
}

/// A 429's `Retry-After` in seconds (1 when absent or unreadable).
pub fn retry_after_secs(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(1)
}

/// Publishes `name@version` over REST with `api_key`: a tar holding a
/// `VERSION` file, its manifest signed by `publisher` (health command: the
/// file exists), then the payload.
pub async fn publish_signed(
    cp: &ControlPlane,
    workspace: &str,
    api_key: &str,
    publisher: &outpost_common::artifact::SigningKey,
    name: &str,
    version: &str,
) {
    use outpost_common::artifact::{FORMAT_TAR, MANIFEST_SCHEMA, Manifest};
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(version.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "VERSION", version.as_bytes())
        .unwrap();
    let payload = tar.into_inner().unwrap();
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        name: name.into(),
        version: version.into(),
        format: FORMAT_TAR.into(),
        size: payload.len() as u64,
        sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &payload)),
        post_install: None,
        health_command: Some("test -f VERSION".into()),
        health_window_secs: 10,
        created_at: "2026-12-03T12:00:00Z".into(),
    }
    .to_json();
    let http = reqwest::Client::new();
    let base = format!("{}/{workspace}/devices/v2/artifacts", cp.rest);
    let resp = http
        .post(&base)
        .bearer_auth(api_key)
        .json(&json!({"manifest": manifest, "signature": publisher.sign(&manifest)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = http
        .put(format!("{base}/{name}/{version}/payload"))
        .bearer_auth(api_key)
        .header("content-type", "application/octet-stream")
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

/// What a hostile box sends in its hello and one log line.
pub struct HostileStrings {
    pub hostname: &'static str,
    pub os: &'static str,
    pub os_version: &'static str,
    pub agent_version: &'static str,
    pub service: &'static str,
    pub message: &'static str,
}

impl HostileStrings {
    /// For terminals: escape sequences (clear screen, set the window title,
    /// colours), NUL, a one-byte C1 CSI, a bidi override and line breaks.
    pub const TERMINAL: Self = Self {
        hostname: "cam\u{1b}[2J\u{1b}]0;owned\u{7}-1",
        os: "Linux\u{202e}exe.txt",
        os_version: "12\u{9b}31m",
        agent_version: "0.1\u{1b}[31m",
        service: "svc\u{1b}[8m",
        message: "boom\u{1b}[2J\u{0}nul\rcr\u{8}bs\nsecond line\u{202e}",
    };
    /// For pages: markup that runs script if anything inserts it as HTML,
    /// with the terminal controls too.
    pub const PAGE: Self = Self {
        hostname: "cam<img src=x onerror=\"window.__pwned='hostname'\">\u{1b}[2J\u{202e}-1",
        os: "Linux</dd><script>window.__pwned='os'</script>",
        os_version: "12\u{9b}31m&amp;",
        agent_version: "0.1<svg onload=\"window.__pwned='agent'\">",
        service: "svc<b>bold</b>",
        message: "boom<img src=x onerror=\"window.__pwned='log'\">\u{0}\nsecond line",
    };
}

/// A box of the test's own: enrolls with `install`, says hello with
/// `strings` as its facts and ships one log line of them (error); returns
/// once the line is acked, with the session still open.
pub async fn hostile_box(
    cp: &ControlPlane,
    install: &str,
    strings: &HostileStrings,
) -> outpost_agent::session::OpenLink {
    use futures_util::StreamExt;
    use outpost_agent::{enroll, link, session};
    use outpost_proto::v1::{DeviceFacts, LogBatch, LogRecord};
    let facts = DeviceFacts {
        hostname: strings.hostname.into(),
        os_name: strings.os.into(),
        os_version: strings.os_version.into(),
        kernel_version: "6.1".into(),
        architecture: "x86_64".into(),
        agent_version: strings.agent_version.into(),
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = outpost_agent::state::StateDir::open(tmp.path()).unwrap();
    let server = link::ServerUrl::parse(&cp.grpc_url()).unwrap();
    let trust = link::Trust::from_ca_file(&cp.ca_path()).unwrap();
    enroll::enroll(
        &state,
        &server,
        &Default::default(),
        enroll::Grant::InstallId(install),
        &trust,
        facts.clone(),
    )
    .await
    .unwrap();
    let tls =
        link::client_config(&trust, Some(enroll::load_client_identity(&state).unwrap())).unwrap();
    let channel = link::connect(&server, tls).await.unwrap();
    let mut open = session::open(link::client(channel), facts, Vec::new(), true, 4)
        .await
        .unwrap();
    open.send_logs(LogBatch {
        records: vec![LogRecord {
            seq: 1,
            timestamp_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
            service: strings.service.into(),
            severity: "error".into(),
            message: strings.message.into(),
        }],
    })
    .unwrap();
    let acked = tokio::time::timeout(TIMEOUT, async {
        while let Some(m) = open.inbound.next().await {
            if let session::Inbound::LogAck(1) = m {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(acked, Ok(true), "the log line was stored");
    open
}
