//! The web dashboard in a real headless Chromium (Debian's `chromium`),
//! driven over WebDriver (`chromedriver`'s HTTP API, with reqwest): sign-in
//! (a refused key first), the fleet table with the enrolled device online,
//! the device page whose charts gain points from the live stream, the period
//! selector, browser back, a phone-sized viewport without horizontal
//! overflow, the disable / delete dialogs, and the rollouts pages (a rollout
//! completing, pause / resume / abort, a device's installed artifacts). The
//! API key must never appear in a URL, neither the page's nor any request's.
//!
//! The agent reads a fake Jetson GPU (`OUTPOST_SYSFS_ROOT`) whose load the
//! test moves, so the GPU charts are exercised too.
//!
//! With `OUTPOST_SCREENSHOTS=1` the test also writes the screenshots under
//! `docs/screenshots/`, with a fuller fleet and an hour of seeded history
//! (SQLite only) so the charts have something to show.
//!
//! Without chromium and chromedriver the test is skipped, unless
//! `OUTPOST_CI` is set (CI installs them and must run it).

mod common;

use std::f64::consts::TAU;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WORKSPACE: &str = "acme";
const DEVICE_NAME: &str = "orin-gate-01";

fn find_program(name: &str, preferred: &str) -> Option<PathBuf> {
    if Path::new(preferred).exists() {
        return Some(preferred.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
}

/// (chromium, chromedriver), or `None` when either is missing.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    Some((
        find_program("chromium", "/usr/bin/chromium")?,
        find_program("chromedriver", "/usr/bin/chromedriver")?,
    ))
}

fn screenshots_wanted() -> bool {
    std::env::var("OUTPOST_SCREENSHOTS").is_ok_and(|v| v == "1")
}

/// A running chromedriver on a free port; killed on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    async fn start(binary: &Path) -> Self {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            l.local_addr().unwrap().port()
        };
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        wait_until("chromedriver ready", TIMEOUT, || async {
            let resp = http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()?;
            let v: Value = resp.json().await.ok()?;
            (v["value"]["ready"] == true).then_some(())
        })
        .await;
        driver
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session (a browser window).
struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn open(driver: &ChromeDriver, chromium: &Path) -> Self {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--hide-scrollbars", "--lang=en-US",
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let resp = http
            .post(format!("{}/session", driver.url))
            .json(&caps)
            .send()
            .await
            .expect("create a WebDriver session");
        let v: Value = resp.json().await.expect("session JSON");
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"));
        Browser {
            session: format!("{}/session/{id}", driver.url),
            http,
        }
    }

    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        let sent = body.as_ref().map(Value::to_string).unwrap_or_default();
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.expect("webdriver answers JSON");
        assert!(
            status.is_success(),
            "webdriver {path} {sent}: {status}: {}",
            v["value"]["message"]
        );
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(Method::POST, path, Some(body)).await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    async fn url(&self) -> String {
        let v = self.cmd(Method::GET, "/url", None).await;
        v.as_str().unwrap().to_string()
    }

    /// Runs a script (its body; `arguments[i]` are `args`) in the page.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Polls a script until it returns something other than null/false.
    async fn wait_js(&self, what: &str, script: &str, args: Value) -> Value {
        wait_until(what, TIMEOUT, || async {
            let v = self.js(script, args.clone()).await;
            (!v.is_null() && v != false).then_some(v)
        })
        .await
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/clear"), json!({})).await;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await;
    }

    /// The visible page as PNG; written to docs/screenshots/ when asked for.
    async fn screenshot(&self, name: &str) {
        let b64 = self.cmd(Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if screenshots_wanted() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), &png).unwrap();
            eprintln!("wrote docs/screenshots/{name}");
        }
    }

    /// Screenshot of the whole page: the window grows to the page's height.
    async fn full_page_screenshot(&self, name: &str, width: u32) {
        let height = self
            .js(
                // The window is taller than its viewport by the (invisible) browser frame.
                "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight",
                json!([]),
            )
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 3200) as u32;
        self.resize(width, height).await;
        // Charts re-render at the new width; wait for layout to settle.
        self.wait_js(
            "layout at the new size",
            "return window.innerWidth === arguments[0] && new Promise(r => requestAnimationFrame(() => r(true)))",
            json!([width]),
        )
        .await;
        self.screenshot(name).await;
    }

    /// Console messages of the page so far.
    async fn console(&self) -> Vec<String> {
        let v = self.post("/se/log", json!({"type": "browser"})).await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{} {}", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Opens the dashboard at `rest`, signs in to [`WORKSPACE`] with `key`
    /// and waits for the fleet table.
    async fn sign_in(&self, rest: &str, key: &str) {
        self.goto(&format!("{rest}/")).await;
        self.wait_js(
            "the sign-in form",
            "return document.querySelector('#signin') !== null",
            json!([]),
        )
        .await;
        self.type_into("#workspace", WORKSPACE).await;
        self.type_into("#api-key", key).await;
        self.click("#signin button[type=submit]").await;
        self.wait_js(
            "the fleet",
            "return document.querySelector('tr[data-device-id]') !== null",
            json!([]),
        )
        .await;
    }

    async fn quit(&self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// The test's fake Jetson GPU utilisation (percent) at a wall-clock time:
/// a slow wave, so the chart has a shape. Also used for seeded history.
fn gpu_util_at(ms: i64) -> f64 {
    let t = ms as f64;
    (40.0 + 26.0 * (TAU * t / 1_500_000.0).sin() + 10.0 * (TAU * t / 210_000.0).sin())
        .clamp(1.0, 99.0)
}

fn write_atomically(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Lines an application on the box logs (severities are guessed from words).
const LOG_LINES: &[&str] = &[
    "pipeline: model yolov8n-640 loaded in 412 ms",
    "camera gate-north: stream connected (1920x1080 @ 15 fps)",
    "inference: 15.0 fps, p95 latency 38 ms",
    "warn: frame queue at 82% (420/512), dropping to keyframes",
    "uploader: 24 detections sent",
    "error: upload of batch 8812 failed: connection reset by peer; retrying in 5 s",
    "uploader: batch 8812 sent after 1 retry",
    "debug: gc pause 3 ms",
];

/// A box for the agent to read: a Jetson Orin in a fake sysfs tree and an
/// application log file; a task moves the GPU's load and appends log lines
/// until dropped.
struct FakeBox {
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl FakeBox {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let dev = r.join("sys/class/devfreq/17000000.ga10b");
        write_atomically(&dev.join("cur_freq"), "918000000\n");
        write_atomically(&dev.join("max_freq"), "1300500000\n");
        write_atomically(
            &r.join("sys/class/thermal/thermal_zone1/type"),
            "gpu-thermal\n",
        );
        let load = dev.join("device/load");
        let temp = r.join("sys/class/thermal/thermal_zone1/temp");
        let write = move || {
            let util = gpu_util_at(now_ms());
            write_atomically(&load, &format!("{}\n", (util * 10.0) as u32));
            write_atomically(&temp, &format!("{}\n", (38.0 + util * 0.3) as u32 * 1000));
        };
        write();
        // Created by the first line: a file that appears is read from its start.
        let log = r.join("app.log");
        let task = tokio::spawn(async move {
            for i in 0usize.. {
                if i % 2 == 0 {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .unwrap();
                    writeln!(f, "{}", LOG_LINES[(i / 2) % LOG_LINES.len()]).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                write();
            }
        });
        FakeBox { dir, task }
    }

    fn root(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn log_file(&self) -> String {
        self.dir
            .path()
            .join("app.log")
            .to_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for FakeBox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn create(cp: &ControlPlane, key: &str, name: &str, device_type: &str) -> (String, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/{WORKSPACE}/devices/v2", cp.rest))
        .bearer_auth(key)
        .json(&json!({"device_name": name, "device_type": device_type}))
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

/// This machine's current readings, so seeded history joins the agent's.
struct HostNow {
    mem_used: u64,
    mem_total: u64,
    disk: (u64, u64),
    net: (u64, u64),
    uptime_secs: u64,
    load: f64,
}

fn host_now() -> HostNow {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let mem_total = field("MemTotal:").max(1 << 30);
    let mem_used = mem_total.saturating_sub(field("MemAvailable:"));
    let disk = Command::new("df")
        .args(["-B1", "--output=size,avail", "/"])
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8(o.stdout).ok()?;
            let mut f = text.lines().nth(1)?.split_whitespace();
            let (size, avail): (u64, u64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            // The agent counts used as total − available, as here.
            Some((size, size.saturating_sub(avail)))
        })
        .unwrap_or((64 << 30, 20 << 30));
    let net = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (name.trim() != "lo" && f.len() >= 9).then(|| (f[0], f[8]))
        })
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    let first = |path: &str| -> f64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    HostNow {
        mem_used,
        mem_total,
        disk,
        net,
        uptime_secs: first("/proc/uptime") as u64,
        load: first("/proc/loadavg"),
    }
}

/// An hour of plausible history for the screenshots (the agent's samples,
/// with higher seqs, continue it). SQLite only.
async fn seed_history(cp: &ControlPlane, device: &str) {
    use outpost_control_plane::store::{GpuSample, SqliteStore, Store, TelemetrySample};
    let store = SqliteStore::open(&cp.data_dir)
        .await
        .expect("open the store");
    let host = host_now();
    let now = now_ms();
    let (n, step) = (350_i64, 10_000_i64);
    let start = now - 60_000 - n * step;
    let net_rate = (60_000.0_f64, 14_000.0_f64);
    let (mut rx, mut tx) = (
        host.net.0.saturating_sub((net_rate.0 * 3800.0) as u64) as f64,
        host.net.1.saturating_sub((net_rate.1 * 3800.0) as u64) as f64,
    );
    let samples: Vec<TelemetrySample> = (0..n)
        .map(|i| {
            let ts = start + i * step;
            let t = ts as f64;
            let wave = |period: f64| (TAU * t / period).sin();
            let jitter = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
            let cpu = (24.0 + 14.0 * wave(1_200_000.0) + 6.0 * wave(170_000.0) + 5.0 * jitter)
                .clamp(1.0, 99.0);
            let burst = 1.0 + 1.5 * wave(600_000.0).max(0.0) + 0.4 * jitter;
            rx += net_rate.0 * 10.0 * burst;
            tx += net_rate.1 * 10.0 * burst;
            let util = gpu_util_at(ts);
            TelemetrySample {
                seq: (i + 1) as u64,
                timestamp: ts,
                cpu_percent: cpu as f32,
                memory_used_bytes: (host.mem_used as f64
                    * (0.96 + 0.04 * wave(900_000.0) + 0.01 * jitter))
                    as u64,
                memory_total_bytes: host.mem_total,
                disk_used_bytes: host.disk.1.saturating_sub(((n - i) as u64) << 20),
                disk_total_bytes: host.disk.0,
                network_rx_bytes: rx as u64,
                network_tx_bytes: tx as u64,
                load_1m: (host.load * (0.6 + cpu / 60.0)).max(0.05),
                load_5m: host.load,
                load_15m: host.load,
                uptime_secs: host.uptime_secs.saturating_sub(((now - ts) / 1000) as u64),
                temperatures: Vec::new(),
                gpus: vec![GpuSample {
                    index: 0,
                    name: "NVIDIA Orin GPU (ga10b)".into(),
                    utilization_percent: util as f32,
                    temperature_celsius: (38.0 + util * 0.3).floor() as f32,
                    clock_mhz: 918,
                    max_clock_mhz: 1300,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    store
        .insert_telemetry(device, &samples, now)
        .await
        .expect("seed history");
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_tools() else {
        assert!(
            std::env::var_os("OUTPOST_CI").is_none(),
            "OUTPOST_CI is set but chromium/chromedriver are not installed"
        );
        eprintln!("skipped: chromium/chromedriver not installed");
        return;
    };
    let shots = screenshots_wanted();

    // A control plane, and an enrolled agent with a (fake) Jetson GPU.
    let mut cp = ControlPlane::start();
    cp.create_workspace(WORKSPACE, &["deviceAio"]);
    let key = cp.api_key(WORKSPACE, &[]);
    let (device, install_id) = create(&cp, &key, DEVICE_NAME, "ai1").await;
    if shots && std::env::var_os("OUTPOST_TEST_DATABASE_URL").is_none() {
        seed_history(&cp, &device).await;
    }
    let state = tempfile::tempdir().unwrap();
    let out = enroll(&cp, &install_id, state.path());
    assert!(out.status.success(), "{out:?}");
    let fake = FakeBox::start();
    let _agent = AgentProc::run_with(
        state.path(),
        "1s",
        &["--log-file", &fake.log_file()],
        &[
            ("OUTPOST_SYSFS_ROOT", fake.root()),
            ("OUTPOST_NVML_LIBRARY", "off"),
        ],
    );

    // For the screenshots, a fuller fleet: one more online, one offline, one never enrolled.
    let mut others = Vec::new();
    let mut dirs = Vec::new();
    if shots {
        for (name, run) in [("edge-cam-02", true), ("edge-lab-03", false)] {
            let (id, install) = create(&cp, &key, name, "edge").await;
            let dir = tempfile::tempdir().unwrap();
            assert!(enroll(&cp, &install, dir.path()).status.success());
            let mut a = AgentProc::run(dir.path(), "2s");
            if !run {
                // Stopped after its first sample: offline, with telemetry.
                let path = format!("/{WORKSPACE}/devices/v2/{id}");
                wait_until("a first sample", TIMEOUT, || async {
                    let (_, d) = cp.get_json(&path, &key).await;
                    (!d["latest_telemetry"].is_null()).then_some(())
                })
                .await;
                a.terminate();
            }
            others.push(a);
            dirs.push(dir);
        }
        create(&cp, &key, "ai1-dock-04", "ai1").await;
    }

    let driver = ChromeDriver::start(&chromedriver).await;
    let b = Browser::open(&driver, &chromium).await;
    b.goto(&format!("{}/", cp.rest)).await;

    // A refused key: the server's message, and still the sign-in form.
    b.wait_js(
        "the sign-in form",
        "return document.querySelector('#signin') !== null",
        json!([]),
    )
    .await;
    b.type_into("#workspace", WORKSPACE).await;
    b.type_into("#api-key", "opk_not-a-real-key").await;
    b.click("#signin button[type=submit]").await;
    let refused = b
        .wait_js(
            "the refusal message",
            "const e = document.querySelector('#signin .notice-error'); return e && !e.hidden && e.textContent",
            json!([]),
        )
        .await;
    assert!(!refused.as_str().unwrap().is_empty());

    // Sign in: the fleet lists the device, online, with its telemetry.
    b.type_into("#api-key", &key).await;
    b.click("#signin button[type=submit]").await;
    let row = b
        .wait_js(
            "the device row, online, with CPU",
            "const r = [...document.querySelectorAll('tr[data-device-id]')]
                .find(r => r.querySelector('.name').textContent === arguments[0]);
             if (!r || r.dataset.status !== 'online') return null;
             const cpu = r.querySelector('.meter-label').textContent;
             return cpu === '–' ? null : { id: r.dataset.deviceId, cpu, text: r.innerText };",
            json!([DEVICE_NAME]),
        )
        .await;
    assert_eq!(row["id"], device.as_str(), "{row}");
    let text = row["text"].as_str().unwrap();
    assert!(text.contains("ai1") || text.contains("AI1"), "{text}");
    let stored = b
        .js(
            "return [sessionStorage.getItem('outpost.apiKey'), sessionStorage.getItem('outpost.workspace'), localStorage.length, document.cookie]",
            json!([]),
        )
        .await;
    assert_eq!(
        stored,
        json!([key, WORKSPACE, 0, ""]),
        "the key lives in sessionStorage only"
    );
    assert!(!b.url().await.contains(&key));

    // The device page: charts from the bucketed API, then live points.
    b.click(&format!("tr[data-device-id='{device}'] a.name"))
        .await;
    b.wait_js(
        "the device page",
        "return location.hash === '#/devices/' + arguments[0] && document.querySelector('h1').textContent === arguments[1]",
        json!([device, DEVICE_NAME]),
    )
    .await;
    let cpu_points = "const c = document.querySelector('[data-chart=cpu]');
         const live = document.querySelector('.live-state')?.dataset.state;
         return c && live === 'live' && Number(c.dataset.points) > 0 ? Number(c.dataset.points) : null";
    let before = b
        .wait_js("CPU points and a live stream", cpu_points, json!([]))
        .await
        .as_u64()
        .unwrap();
    let after = b
        .wait_js(
            "a live point on the CPU chart",
            "const n = Number(document.querySelector('[data-chart=cpu]')?.dataset.points);
             return n > arguments[0] ? n : null",
            json!([before]),
        )
        .await;
    assert!(after.as_u64().unwrap() > before);

    // The control plane restarts: the page's stream notices, reconnects
    // (resuming after the last seq it got) and gains points again.
    let (rest_addr, grpc_addr) = cp.addrs();
    cp.stop();
    b.wait_js(
        "the stream noticing the restart",
        "return document.querySelector('.live-state')?.dataset.state !== 'live'",
        json!([]),
    )
    .await;
    let stopped = cp; // keeps the data directory
    let cp = ControlPlane::start_at(&stopped.data_dir, &rest_addr, &grpc_addr, &[]);
    let before = b
        .js(
            "return Number(document.querySelector('[data-chart=cpu]')?.dataset.points)",
            json!([]),
        )
        .await;
    b.wait_js(
        "live again, with new points",
        "return document.querySelector('.live-state')?.dataset.state === 'live'
            && Number(document.querySelector('[data-chart=cpu]')?.dataset.points) > arguments[0]",
        json!([before]),
    )
    .await;
    // The fake GPU shows up as a GPU chart with points, and in the facts.
    b.wait_js(
        "GPU utilisation points",
        "const c = document.querySelector('[data-chart=gpu]'); return c && Number(c.dataset.points) > 0",
        json!([]),
    )
    .await;
    let facts = b
        .js(
            "return document.querySelector('.facts')?.innerText",
            json!([]),
        )
        .await;
    assert!(facts.as_str().unwrap().contains("Orin"), "{facts}");
    // Events are listed (created, enrolled, connected…).
    b.wait_js(
        "the events list",
        "return document.querySelector('.events li[data-type=enrolled]') !== null",
        json!([]),
    )
    .await;
    // Recent logs, with their severities (refreshed every 30 s: wait one round).
    let logs = wait_until("log lines in the logs table", Duration::from_secs(45), || async {
        let v = b
            .js(
                "return [...document.querySelectorAll('.logs tbody tr[data-level]')].map(r => r.innerText)",
                json!([]),
            )
            .await;
        v.as_array().filter(|a| !a.is_empty()).cloned()
    })
    .await;
    assert!(
        logs.iter().any(|l| LOG_LINES
            .iter()
            .any(|line| l.as_str().unwrap().contains(line))),
        "{logs:?}"
    );
    if shots {
        b.full_page_screenshot("device.png", 1280).await;
        // The same in the dark colour scheme.
        b.post(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{"name": "prefers-color-scheme", "value": "dark"}]}}),
        )
        .await;
        b.wait_js(
            "the dark scheme",
            "return matchMedia('(prefers-color-scheme: dark)').matches",
            json!([]),
        )
        .await;
        b.screenshot("device-dark.png").await;
        b.post(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": []}}),
        )
        .await;
        b.resize(1280, 900).await;
    }

    // Another period: the address keeps it, the chart is drawn again.
    b.click(".seg[data-period='6h']").await;
    b.wait_js(
        "the 6h series",
        "return location.hash.endsWith('?period=6h')
            && document.querySelector('.seg[data-period=\"6h\"]')?.getAttribute('aria-pressed') === 'true'
            && Number(document.querySelector('[data-chart=cpu]')?.dataset.points) > 0",
        json!([]),
    )
    .await;

    // Browser back returns to the fleet.
    b.post("/back", json!({})).await;
    b.wait_js(
        "the fleet page again",
        "return document.querySelector('table.fleet tr[data-device-id]') !== null",
        json!([]),
    )
    .await;
    if shots {
        b.wait_js(
            "the other devices' statuses",
            "return document.querySelectorAll('tr[data-status=online]').length >= 2
                 && document.querySelector('tr[data-status=offline]') !== null",
            json!([]),
        )
        .await;
    }
    b.screenshot("fleet.png").await;

    // A phone: no horizontal overflow on either page.
    b.resize(390, 844).await;
    let overflow =
        "return { scroll: document.documentElement.scrollWidth, width: window.innerWidth }";
    let fleet = b
        .wait_js(
            "a phone-sized viewport",
            "return window.innerWidth <= 400 && { scroll: document.documentElement.scrollWidth, width: window.innerWidth }",
            json!([]),
        )
        .await;
    assert!(
        fleet["scroll"].as_u64() <= fleet["width"].as_u64(),
        "the fleet page overflows on a phone: {fleet}"
    );
    b.screenshot("fleet-phone.png").await;
    b.click(&format!("tr[data-device-id='{device}'] a.name"))
        .await;
    b.wait_js("the device page on a phone", cpu_points, json!([]))
        .await;
    let page = b.js(overflow, json!([])).await;
    assert!(
        page["scroll"].as_u64() <= page["width"].as_u64(),
        "the device page overflows on a phone: {page}"
    );
    if shots {
        b.screenshot("device-phone.png").await;
    }
    b.resize(1280, 900).await;

    // Reset the connection, behind a confirmation dialog: the new device key is shown once.
    b.click("[data-action=reset]").await;
    b.wait_js(
        "the reset dialog",
        "return document.querySelector('dialog[open]') !== null",
        json!([]),
    )
    .await;
    b.click("dialog[open] button[type=submit]").await;
    let minted = b
        .wait_js(
            "the new device key",
            "return document.querySelector('dialog[open] input.secret')?.value || null",
            json!([]),
        )
        .await;
    assert!(minted.as_str().unwrap().starts_with("opk_"), "{minted}");
    b.click("dialog[open] button[type=submit]").await;
    b.wait_js(
        "the dialog closed",
        "return document.querySelector('dialog') === null",
        json!([]),
    )
    .await;

    // Disable, behind a confirmation dialog.
    b.click("[data-action=toggle]").await;
    b.wait_js(
        "the disable dialog",
        "return document.querySelector('dialog[open]') !== null",
        json!([]),
    )
    .await;
    b.click("dialog[open] button[type=submit]").await;
    b.wait_js(
        "the disabled badge",
        "return document.querySelector('dialog[open]') === null && document.querySelector('.device-title .badge-disabled') !== null",
        json!([]),
    )
    .await;
    let (_, d) = cp
        .get_json(&format!("/{WORKSPACE}/devices/v2/{device}"), &key)
        .await;
    assert_eq!(d["enabled"], false, "{d}");

    // Delete, behind a confirmation dialog: back to the fleet, without it.
    b.click("[data-action=delete]").await;
    b.wait_js(
        "the delete dialog",
        "return document.querySelector('dialog[open]') !== null",
        json!([]),
    )
    .await;
    b.click("dialog[open] button[type=submit]").await;
    b.wait_js(
        "the fleet without the device",
        "return location.hash === '#/' && document.querySelector('.notice-info') !== null
            && document.querySelector('table.fleet') !== null
            && document.querySelector('tr[data-device-id=\"' + arguments[0] + '\"]') === null",
        json!([device]),
    )
    .await;
    let (status, _) = cp
        .get_json(&format!("/{WORKSPACE}/devices/v2/{device}"), &key)
        .await;
    assert_eq!(status, 404);

    // The key was never in a URL: not the page's, not any request's.
    let urls = b
        .js(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])",
            json!([]),
        )
        .await;
    let urls: Vec<&str> = urls
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(urls.iter().all(|u| !u.contains(&key)), "{urls:?}");
    assert!(
        urls.iter().any(|u| u.contains("/telemetry/stream")),
        "the live stream was fetched: {urls:?}"
    );
    // No script errors, no policy violations.
    let console = b.console().await;
    let bad: Vec<&String> = console
        .iter()
        .filter(|m| m.contains("Refused to") || m.contains("Uncaught") || m.contains("TypeError"))
        .collect();
    assert!(bad.is_empty(), "console: {console:#?}");

    // Sign out clears the session.
    b.click("#sign-out").await;
    b.wait_js(
        "the sign-in form after signing out",
        "return document.querySelector('#signin') !== null && sessionStorage.getItem('outpost.apiKey') === null",
        json!([]),
    )
    .await;
    b.quit().await;
    drop(others);
}

/// The QR code the page drew (`svg.qr`: one path of 1×1 squares at
/// `M{x} {y}`), decoded by a real QR reader.
fn decode_qr(path: &str) -> String {
    let squares: Vec<(usize, usize)> = path
        .split('M')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut xy = p
                .split(|c: char| !c.is_ascii_digit())
                .filter(|n| !n.is_empty());
            let x = xy.next().unwrap().parse().unwrap();
            let y = xy.next().unwrap().parse().unwrap();
            (x, y)
        })
        .collect();
    let size = squares.iter().map(|&(x, y)| x.max(y)).max().unwrap() + 5;
    const SCALE: usize = 4;
    let mut dark = vec![false; size * size];
    for (x, y) in squares {
        dark[y * size + x] = true;
    }
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(size * SCALE, size * SCALE, |x, y| {
            if dark[(y / SCALE) * size + x / SCALE] {
                0
            } else {
                255
            }
        });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    grids[0].decode().unwrap().1
}

/// The install command an open dialog shows (the server's error, if it
/// shows one instead, fails the test), checked against its QR code.
async fn shown_install_command(b: &Browser, what: &str) -> String {
    let shown = b
        .wait_js(
            what,
            "const t = document.querySelector('dialog[open] [data-install-command] textarea');
             const p = document.querySelector('dialog[open] svg.qr path');
             const e = document.querySelector('dialog[open] .notice-error:not([hidden])');
             if (e) return { error: e.textContent };
             return t && p ? { command: t.value, path: p.getAttribute('d') } : null",
            json!([]),
        )
        .await;
    let command = shown["command"]
        .as_str()
        .unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(decode_qr(shown["path"].as_str().unwrap()), command);
    command.to_string()
}

/// "Add device" in the real browser: the dialog creates a device and shows
/// its install command once, with a QR code that decodes to the same
/// command; the fleet lists it as pending; its page offers a new install ID.
#[tokio::test(flavor = "multi_thread")]
async fn add_device_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_tools() else {
        assert!(
            std::env::var_os("OUTPOST_CI").is_none(),
            "OUTPOST_CI is set but chromium/chromedriver are not installed"
        );
        eprintln!("skipped: chromium/chromedriver not installed");
        return;
    };
    let cp = ControlPlane::in_process().await;
    cp.create_workspace(WORKSPACE, &["deviceAio"]);
    let key = cp.api_key(WORKSPACE, &[]);
    let driver = ChromeDriver::start(&chromedriver).await;
    let b = Browser::open(&driver, &chromium).await;
    b.goto(&format!("{}/", cp.rest)).await;
    b.wait_js(
        "the sign-in form",
        "return document.querySelector('#signin') !== null",
        json!([]),
    )
    .await;
    b.type_into("#workspace", WORKSPACE).await;
    b.type_into("#api-key", &key).await;
    b.click("#signin button[type=submit]").await;
    b.wait_js(
        "the empty fleet",
        "return document.querySelector('.empty-state:not([hidden])') !== null",
        json!([]),
    )
    .await;

    // Add one device: name and type, then the install command and its QR.
    b.click("[data-action=add-device]").await;
    b.wait_js(
        "the add-device dialog",
        "return document.querySelector('dialog[open] form.add-device') !== null",
        json!([]),
    )
    .await;
    b.type_into("dialog[open] input[name=name]", "dock cam 5")
        .await;
    b.type_into("dialog[open] input[name=labels]", "site=berlin, role=gate")
        .await;
    b.js(
        "const s = document.querySelector('dialog[open] select[name=type]'); s.value = 'ai1'; s.dispatchEvent(new Event('change', {bubbles: true}));",
        json!([]),
    )
    .await;
    b.click("dialog[open] [data-action=create]").await;
    let command = &shown_install_command(&b, "the install command and its QR code").await;
    assert!(command.contains("--install-id inst_"), "{command}");
    assert!(command.contains(&cp.fingerprint), "{command}");
    // The device exists as asked, waiting for its box.
    let (_, list) = cp
        .get_json(
            &format!("/{WORKSPACE}/devices/v2?name=dock%20cam%205"),
            &key,
        )
        .await;
    let d = &list["data"][0];
    assert_eq!(d["type"], "ai1", "{list}");
    assert_eq!(d["enrollment"], "pending", "{list}");
    assert_eq!(
        d["labels"],
        json!({"site": "berlin", "role": "gate"}),
        "{list}"
    );
    let id = d["id"].as_str().unwrap().to_string();
    let install_id = command
        .split_whitespace()
        .skip_while(|w| *w != "--install-id")
        .nth(1)
        .unwrap()
        .to_string();
    b.click("dialog[open] [data-action=done]").await;

    // The fleet shows it as pending.
    b.wait_js(
        "the pending device in the fleet",
        "const r = document.querySelector('tr[data-device-id=\"' + arguments[0] + '\"]');
         return r && r.dataset.status === 'pending' && r.querySelector('.badge-pending') !== null",
        json!([id]),
    )
    .await;

    // Its page says it waits, and issues a new install ID (the old one dies).
    b.click(&format!("tr[data-device-id='{id}'] a.name")).await;
    b.wait_js(
        "the waiting notice",
        "const w = document.querySelector('[data-enrollment=pending]');
         return w && !w.hidden && w.querySelector('[data-action=new-install-id]') !== null",
        json!([]),
    )
    .await;
    b.click("[data-action=new-install-id]").await;
    b.click("dialog[open] [data-action=issue]").await;
    let again = b
        .wait_js(
            "the new install command",
            "const t = document.querySelector('dialog[open] [data-install-command] textarea');
             return t ? t.value : null",
            json!([]),
        )
        .await;
    let again = again.as_str().unwrap();
    assert!(again.contains("--install-id inst_"), "{again}");
    assert!(!again.contains(&install_id), "a new install ID: {again}");
    b.click("dialog[open] [data-action=done]").await;

    // The box enrolls with it: the notice goes, the status is RFDM's again.
    let state = tempfile::tempdir().unwrap();
    let new_id = again
        .split_whitespace()
        .skip_while(|w| *w != "--install-id")
        .nth(1)
        .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let refused = enroll(&cp, &install_id, elsewhere.path());
    assert!(!refused.status.success(), "the old install ID is void");
    let out = enroll(&cp, new_id, state.path());
    assert!(out.status.success(), "{out:?}");
    b.wait_js(
        "the waiting notice gone",
        "const w = document.querySelector('.enroll-wait');
         return w && w.hidden && document.querySelector('.device-title .badge-pending') === null",
        json!([]),
    )
    .await;

    // Many boxes: an enrollment token with a use budget, its command and QR.
    b.post("/back", json!({})).await;
    b.click("[data-action=add-device]").await;
    b.wait_js(
        "the add-device dialog again",
        "return document.querySelector('dialog[open] form.add-device') !== null",
        json!([]),
    )
    .await;
    b.click("dialog[open] input[name=mode][value=token]").await;
    b.type_into("dialog[open] input[name=name]", "line 3").await;
    b.type_into("dialog[open] input[name=labels]", "site=hamburg")
        .await;
    b.js(
        "const u = document.querySelector('dialog[open] input[name=max_uses]'); u.value = '2';",
        json!([]),
    )
    .await;
    b.click("dialog[open] [data-action=create]").await;
    let command = &shown_install_command(&b, "the token's install command and its QR code").await;
    let token = command
        .split_whitespace()
        .skip_while(|w| *w != "--enroll-token")
        .nth(1)
        .unwrap_or_else(|| panic!("no token in {command}"));
    let (_, tokens) = cp
        .get_json(&format!("/{WORKSPACE}/devices/v2/enrollment-tokens"), &key)
        .await;
    let t = &tokens["data"][0];
    assert_eq!(
        (t["name"].as_str(), t["max_uses"].as_u64()),
        (Some("line 3"), Some(2)),
        "{tokens}"
    );
    b.click("dialog[open] [data-action=done]").await;
    // A box enrolls with it: a new device with the token's labels, which the
    // fleet's filter finds by label.
    let boxdir = tempfile::tempdir().unwrap();
    let out = agent_cmd(&[
        "enroll",
        "--server",
        &cp.grpc_url(),
        "--enroll-token",
        token,
        "--device-name",
        "line-3-box-1",
        "--ca-file",
    ])
    .arg(cp.ca_path())
    .arg("--state-dir")
    .arg(boxdir.path())
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    b.wait_js(
        "the token's device in the fleet",
        "return [...document.querySelectorAll('tr[data-device-id] a.name')].some(a => a.textContent === 'line-3-box-1')",
        json!([]),
    )
    .await;
    b.type_into(".filter", "site=hamburg").await;
    let shown = b
        .wait_js(
            "only the hamburg device",
            "const rows = [...document.querySelectorAll('tr[data-device-id]')].filter(r => !r.hidden);
             return rows.length === 1 ? rows.map(r => r.innerText) : null",
            json!([]),
        )
        .await;
    let row = shown[0].as_str().unwrap();
    assert!(
        row.contains("line-3-box-1") && row.contains("site=hamburg"),
        "{row}"
    );

    let console = b.console().await;
    let bad: Vec<&String> = console
        .iter()
        .filter(|m| m.contains("Refused to") || m.contains("Uncaught") || m.contains("TypeError"))
        .collect();
    assert!(bad.is_empty(), "console: {console:#?}");
    b.quit().await;
}

async fn rest(cp: &ControlPlane, key: &str, method: Method, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .request(method, format!("{}/{WORKSPACE}/{path}", cp.rest))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// The rollouts pages in the real browser: a rollout to an enrolled agent
/// completes and its device page lists what it runs; a rollout to a box
/// that is not connected stays running and is paused, resumed and aborted
/// through the page's dialogs.
#[tokio::test(flavor = "multi_thread")]
async fn rollouts_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_tools() else {
        assert!(
            std::env::var_os("OUTPOST_CI").is_none(),
            "OUTPOST_CI is set but chromium/chromedriver are not installed"
        );
        eprintln!("skipped: chromium/chromedriver not installed");
        return;
    };
    let cp = ControlPlane::in_process().await;
    cp.create_workspace(WORKSPACE, &[]);
    let key = cp.api_key(WORKSPACE, &[]);
    let (publisher, _) = outpost_common::artifact::SigningKey::generate().unwrap();
    let public = publisher.public_key().to_string();
    cp.add_publisher_key(WORKSPACE, &public);

    // One box that runs an agent, one that never connects.
    let (online, install) = create(&cp, &key, "cam-online", "edge").await;
    let (offline, _) = create(&cp, &key, "cam-offline", "edge").await;
    for (id, site) in [(&online, "berlin"), (&offline, "depot")] {
        rest(
            &cp,
            &key,
            Method::PATCH,
            &format!("devices/v2/{id}"),
            json!({"labels": {"site": site}}),
        )
        .await;
    }
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install, state.path()).status.success());
    let _agent = AgentProc::run_with(
        state.path(),
        "2s",
        &["--publisher-key", &public],
        &[("OUTPOST_NVML_LIBRARY", "off")],
    );
    publish_signed(&cp, WORKSPACE, &key, &publisher, "detector", "1.0.0").await;
    // One running rollout per artifact: the other box waits for another.
    publish_signed(&cp, WORKSPACE, &key, &publisher, "pipeline", "2.0").await;
    let done = rest(
        &cp,
        &key,
        Method::POST,
        "devices/v2/rollouts",
        json!({"artifact": "detector@1.0.0", "selector": ["site=berlin"]}),
    )
    .await;
    let stuck = rest(
        &cp,
        &key,
        Method::POST,
        "devices/v2/rollouts",
        json!({"artifact": "pipeline@2.0", "selector": ["site=depot"]}),
    )
    .await;
    let (done, stuck) = (done["id"].as_str().unwrap(), stuck["id"].as_str().unwrap());

    let driver = ChromeDriver::start(&chromedriver).await;
    let b = Browser::open(&driver, &chromium).await;
    b.sign_in(&cp.rest, &key).await;

    // The list, from the top bar: both rollouts; the first completes.
    b.click(".nav a[href='#/rollouts']").await;
    b.wait_js(
        "both rollouts listed, the first completed",
        "const rows = [...document.querySelectorAll('tr[data-rollout-id]')];
         const s = id => (rows.find(r => r.dataset.rolloutId === id) || {}).dataset;
         return rows.length === 2 && s(arguments[0]) && s(arguments[0]).state === 'completed'
             && s(arguments[1]) && s(arguments[1]).state === 'running';",
        json!([done, stuck]),
    )
    .await;
    // The list has device counts, not devices: the row shows them.
    b.wait_js(
        "the completed rollout's row counts its device",
        "const row = document.querySelector(`tr[data-rollout-id='${arguments[0]}']`);
         const cell = row && row.querySelector(\"td[data-label='Devices']\");
         return cell && cell.textContent === '1 of 1 succeeded';",
        json!([done]),
    )
    .await;

    // The completed one: its wave done, its device succeeded, no actions left.
    b.click(&format!("tr[data-rollout-id='{done}'] a.name"))
        .await;
    let page = b
        .wait_js(
            "the completed rollout's page",
            "const p = document.querySelector('.rollout-page');
             const d = p && p.querySelector('tr[data-device-id]');
             if (!d || d.dataset.state !== 'succeeded') return null;
             return { title: p.querySelector('h1').textContent,
                      waves: [...p.querySelectorAll('.wave')].map(w => w.dataset.state),
                      actions: p.querySelectorAll('.actions button').length,
                      device: d.dataset.deviceId };",
            json!([]),
        )
        .await;
    assert_eq!(page["title"], "detector@1.0.0");
    assert_eq!(page["device"], online.as_str());
    assert_eq!(page["actions"], 0);
    assert!(
        page["waves"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w == "done"),
        "{page}"
    );

    // Its device page lists what the box runs.
    b.click(&format!("tr[data-device-id='{online}'] a.name"))
        .await;
    let artifacts = b
        .wait_js(
            "the device's installed artifacts",
            "const f = [...document.querySelectorAll('.fact')].find(f => f.querySelector('dt').textContent === 'Artifacts');
             return f ? f.querySelector('dd').textContent : null;",
            json!([]),
        )
        .await;
    assert_eq!(artifacts, "detector@1.0.0");

    // The one waiting for an offline box: pause, resume, abort, each behind a dialog.
    b.goto(&format!("{}/#/rollouts/{stuck}", cp.rest)).await;
    for (action, state) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("abort", "aborted"),
    ] {
        b.wait_js(
            &format!("the {action} button"),
            "return document.querySelector(`.rollout-page [data-action=${arguments[0]}]`) !== null",
            json!([action]),
        )
        .await;
        b.click(&format!(".rollout-page [data-action={action}]"))
            .await;
        b.wait_js(
            "the dialog",
            "return document.querySelector('dialog[open]') !== null",
            json!([]),
        )
        .await;
        b.click("dialog[open] button[type=submit]").await;
        b.wait_js(
            &format!("the rollout {state}"),
            "const b = document.querySelector('.rollout-page .device-title .badge');
             return b && b.textContent === arguments[0] && !document.querySelector('dialog[open]');",
            json!([state]),
        )
        .await;
        let (_, r) = cp
            .get_json(&format!("/{WORKSPACE}/devices/v2/rollouts/{stuck}"), &key)
            .await;
        assert_eq!(r["state"], state);
    }
    assert_eq!(
        b.js(
            "return document.querySelectorAll('.rollout-page .actions button').length",
            json!([])
        )
        .await,
        0
    );
    let errors = b.console().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.quit().await;
}

/// Issue 21, defect 4: what a device says is data on the page too. Markup
/// and terminal controls in its hello and logs show as the exact text, and
/// nothing of it runs or becomes an element.
#[tokio::test(flavor = "multi_thread")]
async fn a_devices_hostile_strings_are_text_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_tools() else {
        assert!(
            std::env::var_os("OUTPOST_CI").is_none(),
            "OUTPOST_CI is set but chromium/chromedriver are not installed"
        );
        eprintln!("skipped: chromium/chromedriver not installed");
        return;
    };
    let cp = ControlPlane::in_process().await;
    cp.create_workspace(WORKSPACE, &[]);
    let key = cp.api_key(WORKSPACE, &[]);
    let (device, install) = create(&cp, &key, "plain-name", "edge").await;
    let strings = &HostileStrings::PAGE;
    let _box = hostile_box(&cp, &install, strings).await;

    let driver = ChromeDriver::start(&chromedriver).await;
    let b = Browser::open(&driver, &chromium).await;
    b.sign_in(&cp.rest, &key).await;
    b.goto(&format!("{}/#/devices/{device}", cp.rest)).await;
    let shown = b
        .wait_js(
            "the device's facts and its log line",
            "const fact = k => { const f = [...document.querySelectorAll('.fact')]
                 .find(f => f.querySelector('dt').textContent === k);
               return f && f.querySelector('dd').textContent; };
             const msg = document.querySelector('table.logs td.msg');
             const svc = document.querySelector(\"table.logs td[data-label='Service']\");
             if (!fact('Hostname') || !msg) return null;
             return { hostname: fact('Hostname'), platform: fact('Platform'),
                      agent: fact('Agent'), message: msg.textContent,
                      service: svc && svc.textContent };",
            json!([]),
        )
        .await;
    assert_eq!(shown["hostname"], strings.hostname, "{shown}");
    assert_eq!(
        shown["platform"],
        format!("{} {}", strings.os, strings.os_version),
        "{shown}"
    );
    assert_eq!(shown["agent"], strings.agent_version, "{shown}");
    assert_eq!(shown["service"], strings.service, "{shown}");
    // NUL is stored as U+FFFD (PostgreSQL cannot store it in text).
    assert_eq!(
        shown["message"],
        strings.message.replace('\0', "\u{fffd}"),
        "{shown}"
    );
    // Nothing ran, nothing became an element.
    let ran = b
        .js(
            "return { pwned: window.__pwned === undefined ? null : window.__pwned,
                      injected: document.querySelectorAll('img[src=x], svg[onload], main script, b').length };",
            json!([]),
        )
        .await;
    assert_eq!(ran, json!({"pwned": null, "injected": 0}));
    let errors: Vec<String> = b
        .console()
        .await
        .into_iter()
        .filter(|l| l.starts_with("SEVERE"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.quit().await;
}
