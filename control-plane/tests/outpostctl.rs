//! `outpostctl` end to end: the real binary against the real control plane
//! (and, where it needs data, a real enrolled agent). Outputs are read as
//! JSON (`-o json`) or as the table a person sees.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Logs are limited to 5 requests a minute per client, and outpostctl waits
/// out a 429: a follow can take a Retry-After (≤ 12 s) longer.
const LOGS_TIMEOUT: Duration = Duration::from_secs(90);

/// outpostctl configured from the environment, as an operator would.
fn ctl(cp: &ControlPlane, key: &str, args: &[&str]) -> Command {
    let mut c = Command::new(ctl_bin());
    c.args(args)
        .env("OUTPOST_URL", &cp.rest)
        .env("OUTPOST_API_KEY", key)
        .env("OUTPOST_WORKSPACE", "acme")
        .env_remove("OUTPOST_CA_FILE");
    c
}

fn output(cp: &ControlPlane, key: &str, args: &[&str]) -> Output {
    ctl(cp, key, args).output().expect("run outpostctl")
}

/// Standard output of a run that must succeed.
fn ok(cp: &ControlPlane, key: &str, args: &[&str]) -> String {
    let o = output(cp, key, args);
    assert!(
        o.status.success(),
        "outpostctl {args:?}: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The JSON a successful `-o json` run prints.
fn json(cp: &ControlPlane, key: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = ok(cp, key, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Exit code and standard error of a run that must fail.
fn fails(cp: &ControlPlane, key: &str, args: &[&str]) -> (i32, String) {
    let o = output(cp, key, args);
    assert!(!o.status.success(), "outpostctl {args:?} succeeded");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stderr).unwrap(),
    )
}

/// A long-running outpostctl (follow, stream): its standard output line by
/// line, its standard error collected.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    printed: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Reads standard error to its end; joined once the process exited, so
    /// `stderr` then holds everything it wrote.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn outpostctl");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running {
            child,
            lines,
            printed: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line printed that satisfies `want` (every line is kept in
    /// `printed`).
    fn wait_line(&mut self, what: &str, within: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "waiting for {what}: {e:?}\nprinted: {:#?}\nstderr: {}",
                    self.printed,
                    self.stderr()
                ),
            }
        }
    }

    /// The exit status, waiting up to `within`.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The pipe's last writer is gone: the reader ends at EOF.
                if let Some(reader) = self.stderr_reader.take() {
                    reader.join().unwrap();
                }
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "outpostctl did not exit; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> (ControlPlane, String) {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    (cp, key)
}

/// A device with an enrolled agent running (a sample every second).
async fn device_with_agent(
    cp: &ControlPlane,
    key: &str,
    name: &str,
    args: &[&str],
) -> (String, tempfile::TempDir, AgentProc) {
    let (device, install_id) = cp.create_device("acme", key, name).await;
    let state = tempfile::tempdir().unwrap();
    let out = enroll(cp, &install_id, state.path());
    assert!(out.status.success(), "{out:?}");
    let agent = AgentProc::run_with(state.path(), "1s", args, &[]);
    (device, state, agent)
}

fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// `key: value` from a pairs listing.
fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key:?} in {out}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_create_list_get_delete_round_trip() {
    let (cp, key) = start();
    let created = json(
        &cp,
        &key,
        &["devices", "create", "gate-1", "--description", "front gate"],
    );
    let id = created["deviceId"].as_str().unwrap().to_string();
    let install_id = created["installId"].as_str().unwrap();
    assert!(install_id.starts_with("inst_"), "{created}");
    assert!(
        created["installCommand"]
            .as_str()
            .unwrap()
            .contains(install_id),
        "{created}"
    );
    // The table a person sees.
    let out = ok(&cp, &key, &["devices", "create", "gate-2"]);
    let id2 = field(&out, "device id");
    assert!(field(&out, "install id").starts_with("inst_"), "{out}");
    assert!(
        field(&out, "install command").contains("install.sh"),
        "{out}"
    );
    let id3 = json(
        &cp,
        &key,
        &["devices", "create", "gate-3", "--type", "edge"],
    )["deviceId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut all = vec![id.clone(), id2.clone(), id3.clone()];
    all.sort();

    // Every page, two devices at a time.
    let list = json(&cp, &key, &["devices", "list", "--page-size", "2"]);
    assert_eq!(ids(&list), all);
    assert_eq!(list["pagination"]["has_more"], false);
    let some = json(
        &cp,
        &key,
        &["devices", "list", "--limit", "2", "--page-size", "1"],
    );
    assert_eq!(some["data"].as_array().unwrap().len(), 2);
    assert_eq!(some["pagination"]["has_more"], true);
    let table = ok(&cp, &key, &["devices", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    let row = lines.iter().find(|l| l.contains(&id)).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        ["gate-1", id.as_str(), "edge", "pending", "never"]
    );

    let d = json(&cp, &key, &["devices", "get", &id]);
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["name"], "gate-1");
    assert_eq!(d["description"], "front gate");
    assert_eq!(d["status"], "unknown");
    assert_eq!(d["enrollment"], "pending");
    let shown = ok(&cp, &key, &["devices", "get", &id]);
    assert_eq!(field(&shown, "description"), "front gate");
    assert_eq!(field(&shown, "status"), "pending");

    let out = ok(&cp, &key, &["devices", "delete", &id]);
    assert_eq!(out.trim(), format!("deleted {id}"));
    let (code, err) = fails(&cp, &key, &["devices", "get", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no device has the id or name"), "{err}");
    let list = json(&cp, &key, &["devices", "list"]);
    let mut left = vec![id2, id3];
    left.sort();
    assert_eq!(ids(&list), left);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_refusals_print_the_servers_message_and_exit_1() {
    let (cp, key) = start();
    let (code, err) = fails(&cp, &key, &["devices", "get", "aaaaaaaaaaaaaaaaaaaa"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no device has the id or name") && err.contains("404"),
        "{err}"
    );

    let (code, err) = fails(&cp, "opk_not_a_key", &["devices", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("Invalid API key"), "{err}");
    assert!(!err.contains("opk_not_a_key"), "the key leaked: {err}");

    let (code, err) = fails(&cp, &key, &["devices", "create", "x", "--type", "toaster"]);
    assert_eq!(code, 1);
    assert!(err.contains("device_type must be"), "{err}");

    let reader = cp.api_key("acme", &["device:read"]);
    let (code, err) = fails(&cp, &reader, &["devices", "create", "x"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("403") && err.contains("device:update"),
        "{err}"
    );

    // Another workspace's name with this key: the 401's message and hint.
    let mut other = ctl(&cp, &key, &["devices", "list"]);
    other.env("OUTPOST_WORKSPACE", "elsewhere");
    let o = other.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not belong"), "{err}");

    // A usage error is 2, before any request.
    let (code, err) = fails(&cp, &key, &["logs", "x", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_hands_out_a_fresh_device_key() {
    let (cp, key) = start();
    let (device, _) = cp.create_device("acme", &key, "resettable").await;
    let token = json(&cp, &key, &["reset", &device]);
    assert_eq!(token["deviceId"], device.as_str());
    assert_eq!(token["tenantId"], "acme");
    let device_key = token["apiKey"].as_str().unwrap().to_string();
    assert!(device_key.starts_with("opk_"), "{token}");
    // The fresh key reads its own device, and only that.
    assert_eq!(
        json(&cp, &device_key, &["devices", "get", &device])["id"],
        device.as_str()
    );
    let (code, _) = fails(&cp, &device_key, &["devices", "list"]);
    assert_eq!(code, 1);

    // A person's view; the previous device key stops working.
    let out = ok(&cp, &key, &["reset", &device]);
    assert!(field(&out, "device api key").starts_with("opk_"), "{out}");
    assert_eq!(field(&out, "rotation requested"), "no", "{out}");
    let (code, err) = fails(&cp, &device_key, &["devices", "get", &device]);
    assert_eq!(code, 1);
    assert!(err.contains("Invalid API key"), "{err}");

    // Forced: a new install ID as well.
    let forced = json(&cp, &key, &["reset", &device, "--force"]);
    assert!(
        forced["installId"].as_str().unwrap().starts_with("inst_"),
        "{forced}"
    );
}

/// Appends lines to the file the agent follows.
fn append(path: &Path, lines: &[&str]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_follow_print_every_line_once() {
    let (cp, key) = start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::File::create(&log).unwrap();
    let log_arg = log.to_str().unwrap().to_string();
    let (device, state, _agent) =
        device_with_agent(&cp, &key, "logger", &["--log-file", &log_arg]).await;
    // The follower starts at the end of the file: markers until one is
    // acknowledged, then the lines of the test.
    wait_until("the log follower runs", TIMEOUT, || async {
        append(&log, &["marker"]);
        let s = status_json(state.path());
        (s["spool"]["logs_acked_seq"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    append(&log, &["first line", "an error happened", "third line"]);
    // Stored once the newest line is the last one written (outpostctl waits
    // out the logs rate limit by itself).
    wait_until("the lines are stored", LOGS_TIMEOUT, || async {
        let newest = json(&cp, &key, &["logs", &device, "--limit", "1"]);
        (newest["data"][0]["message"] == "third line").then_some(())
    })
    .await;

    let got = json(&cp, &key, &["logs", &device, "--limit", "3"]);
    let messages: Vec<&str> = got["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["third line", "an error happened", "first line"],
        "newest first, as the server answers"
    );
    assert_eq!(got["data"][0]["service"], "app.log");

    // Follow: the newest lines first (oldest first on screen), then lines
    // written afterwards, each exactly once.
    let mut follow = Running::spawn(ctl(
        &cp,
        &key,
        &[
            "logs",
            &device,
            "--follow",
            "--limit",
            "2",
            "--interval",
            "1s",
        ],
    ));
    let line = follow.wait_line("the first line shown", LOGS_TIMEOUT, |_| true);
    assert!(line.ends_with("app.log: an error happened"), "{line}");
    assert!(
        line.contains(" error "),
        "severity guessed from the text: {line}"
    );
    follow.wait_line("third line", LOGS_TIMEOUT, |l| l.ends_with("third line"));
    append(&log, &["after 1", "after 2"]);
    follow.wait_line("after 1", LOGS_TIMEOUT, |l| l.ends_with("app.log: after 1"));
    follow.wait_line("after 2", LOGS_TIMEOUT, |l| l.ends_with("app.log: after 2"));
    append(&log, &["after 3"]);
    follow.wait_line("after 3", LOGS_TIMEOUT, |l| l.ends_with("app.log: after 3"));
    let shown: Vec<&str> = follow
        .printed
        .iter()
        .map(|l| l.rsplit(": ").next().unwrap())
        .collect();
    assert_eq!(
        shown,
        [
            "an error happened",
            "third line",
            "after 1",
            "after 2",
            "after 3"
        ],
        "stderr: {}",
        follow.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_once_shows_an_enrolled_device_with_a_running_agent() {
    let (cp, key) = start();
    let (device, _state, _agent) = device_with_agent(&cp, &key, "gate-cam", &[]).await;
    let (idle, _) = cp.create_device("acme", &key, "spare").await;
    let view = wait_until("online with a sample", TIMEOUT, || async {
        let (status, d) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        assert_eq!(status, 200, "{d}");
        (d["status"] == "online" && d["latest_telemetry"].is_object()).then_some(d)
    })
    .await;

    let out = ok(&cp, &key, &["watch", "--once"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("workspace acme, 2 devices (1 online, 0 offline, 1 unknown)"),
        "{out}"
    );
    assert!(lines[1].starts_with("NAME"), "{out}");
    // Sorted by name: gate-cam, then spare.
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        cells[..5],
        ["gate-cam", device.as_str(), "online", cells[3], "ago"],
        "{out}"
    );
    for (i, what) in [(5, "cpu"), (6, "memory"), (7, "disk")] {
        let p: f64 = cells[i]
            .parse()
            .unwrap_or_else(|_| panic!("{what} % in {out}"));
        assert!((0.0..=100.0).contains(&p), "{what} {p}");
    }
    assert_eq!(cells[8], view["agent_version"].as_str().unwrap(), "{out}");
    assert_eq!(cells[9], "in", "certificate expiry: {out}");
    let spare: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(
        spare,
        [
            "spare",
            idle.as_str(),
            "unknown",
            "never",
            "-",
            "-",
            "-",
            "-",
            "-"
        ]
    );

    let frame = json(&cp, &key, &["watch", "--once"]);
    assert_eq!(frame["data"].as_array().unwrap().len(), 2);
}

fn seq_of(line: &str) -> u64 {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_streams_samples_and_ends_when_the_device_is_deleted() {
    let (cp, key) = start();
    let (device, _state, _agent) = device_with_agent(&cp, &key, "streamer", &[]).await;

    // A person's view: a header, then one row per new sample.
    let mut table = Running::spawn(ctl(&cp, &key, &["telemetry", &device]));
    let header = table.wait_line("the header", TIMEOUT, |_| true);
    assert!(header.trim_start().starts_with("SEQ"), "{header}");
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let row = table.wait_line("a sample row", TIMEOUT, |_| true);
        let cells: Vec<&str> = row.split_whitespace().collect();
        seqs.push(cells[0].parse::<u64>().unwrap_or_else(|_| panic!("{row}")));
        let cpu: f64 = cells[2].parse().unwrap_or_else(|_| panic!("cpu in {row}"));
        assert!((0.0..=100.0).contains(&cpu), "{row}");
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Scripts: JSON lines, replaying the stored samples after seq 0 first.
    let mut replay = Running::spawn(ctl(
        &cp,
        &key,
        &["telemetry", &device, "-o", "json", "--after-seq", "0"],
    ));
    let replayed: Vec<u64> = (0..4)
        .map(|_| seq_of(&replay.wait_line("a sample", TIMEOUT, |_| true)))
        .collect();
    assert_eq!(replayed, [1, 2, 3, 4]);

    ok(&cp, &key, &["devices", "delete", &device]);
    for s in [&mut table, &mut replay] {
        let st = s.wait_exit(TIMEOUT);
        assert_eq!(st.code(), Some(0), "stderr: {}", s.stderr());
        assert!(s.stderr().contains("device_deleted"), "{}", s.stderr());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_resumes_after_the_control_plane_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut cp = ControlPlane::start_in(&data, &[]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, _state, _agent) = device_with_agent(&cp, &key, "survivor", &[]).await;
    let mut stream = Running::spawn(ctl(&cp, &key, &["telemetry", &device, "-o", "json"]));
    let first = seq_of(&stream.wait_line("a sample", TIMEOUT, |_| true));

    // A graceful stop (the stream ends with `server_stopping`), then a
    // crash (the connection just breaks): both times the agent reconnects
    // and resends, and the stream resumes after its last seq, so every seq
    // shows once, with no gap across the outages.
    let (rest, grpc) = cp.addrs();
    let mut seqs = vec![first];
    for (round, graceful) in [true, false].into_iter().enumerate() {
        if graceful {
            assert!(cp.stop().success());
        } else {
            cp.kill9();
        }
        drop(cp);
        cp = ControlPlane::start_at(&data, &rest, &grpc, &[]);
        while stream.stderr().matches("reconnected").count() <= round
            || seqs.len() < 6 * (round + 1)
        {
            seqs.push(seq_of(&stream.wait_line("a sample", TIMEOUT, |_| true)));
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{seqs:?}\n{}",
        stream.stderr()
    );
    let err = stream.stderr();
    assert!(err.contains("server_stopping"), "{err}");
    assert_eq!(err.matches("reconnected").count(), 2, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_ends_when_the_api_key_is_revoked() {
    let (cp, key) = start();
    let (device, _state, _agent) = device_with_agent(&cp, &key, "revoked", &[]).await;
    let out = cp.admin(&[
        "api-key",
        "create",
        "--workspace",
        "acme",
        "--scope",
        "device:read",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let key_id = text
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap()
        .to_string();
    let reader = text.lines().last().unwrap().to_string();

    let mut stream = Running::spawn(ctl(&cp, &reader, &["telemetry", &device, "-o", "json"]));
    seq_of(&stream.wait_line("a sample", TIMEOUT, |_| true));
    let out = cp.admin(&["api-key", "revoke", &key_id]);
    assert!(out.status.success(), "{out:?}");
    let st = stream.wait_exit(TIMEOUT);
    assert_eq!(st.code(), Some(0), "stderr: {}", stream.stderr());
    assert!(
        stream.stderr().contains("stream ended: api_key_revoked"),
        "{}",
        stream.stderr()
    );
}

/// The full-screen `watch` in a real pseudo-terminal (util-linux `script`):
/// it draws the fleet, quits on `q`, and leaves the terminal as it found it
/// (cursor shown, alternate screen left).
#[tokio::test(flavor = "multi_thread")]
async fn watch_draws_full_screen_and_restores_the_terminal_on_q() {
    let (cp, key) = start();
    let (device, _) = cp.create_device("acme", &key, "screen-cam").await;
    let inner = format!(
        "stty cols 120 rows 20; exec {} watch --interval 200ms",
        ctl_bin().display()
    );
    let mut script = Command::new("script");
    script
        .args(["-qfec", &inner, "/dev/null"])
        .env("OUTPOST_URL", &cp.rest)
        .env("OUTPOST_API_KEY", &key)
        .env("OUTPOST_WORKSPACE", "acme");
    // Killed if the test fails: the pty closes and watch gets SIGHUP.
    let mut child = KillOnDrop(
        script
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run script (util-linux)"),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    // Two frames with the device: it redraws.
    while String::from_utf8_lossy(&screen)
        .matches(device.as_str())
        .count()
        < 2
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => screen.extend(bytes),
            Err(e) => panic!("{e:?}: {}", String::from_utf8_lossy(&screen)),
        }
    }
    child.0.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "watch did not quit on q");
        std::thread::sleep(Duration::from_millis(20));
    };
    while let Ok(bytes) = rx.recv_timeout(Duration::from_secs(5)) {
        screen.extend(bytes);
    }
    assert!(status.success(), "{status:?}");
    let screen = String::from_utf8_lossy(&screen);
    assert!(
        screen.contains("\x1b[?1049h"),
        "entered the alternate screen"
    );
    assert!(screen.contains("screen-cam"), "{screen}");
    assert!(screen.contains("unknown"), "{screen}");
    let tail = &screen[screen.rfind(device.as_str()).unwrap()..];
    assert!(
        tail.contains("\x1b[?25h") && tail.contains("\x1b[?1049l"),
        "cursor shown and alternate screen left at the end: {tail:?}"
    );
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_by_name_install_ids_and_the_short_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_in(&tmp.path().join("data"), &["--install-id-ttl", "5s"]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let create = |name: &str| {
        json(&cp, &key, &["devices", "create", name])["deviceId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let twin_a = create("twin");
    let twin_b = create("twin");
    let gate = create("gate 7");
    // By name, where it is unique.
    let d = json(&cp, &key, &["devices", "get", "gate 7"]);
    assert_eq!(d["id"], gate.as_str());
    // An ambiguous name is a usage error naming the candidates.
    let (code, err) = fails(&cp, &key, &["devices", "get", "twin"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("2 devices are named \"twin\"")
            && err.contains(&twin_a)
            && err.contains(&twin_b),
        "{err}"
    );
    // A name that is also a route's: still looked up as a name.
    let audit = create("audit");
    let d = json(&cp, &key, &["devices", "get", "audit"]);
    assert_eq!(d["id"], audit.as_str(), "{d}");
    let (code, err) = fails(&cp, &key, &["devices", "get", "nobody"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no device has the id or name \"nobody\""),
        "{err}"
    );
    // `ls` at the top, with a name filter.
    let listed = json(&cp, &key, &["ls", "--name", "twin"]);
    let mut twins = vec![twin_a.clone(), twin_b.clone()];
    twins.sort();
    assert_eq!(ids(&listed), twins);

    // Never enrolled: pending, until its install ID expires.
    let expired = wait_until("the install ID expires", TIMEOUT, || async {
        let d = json(&cp, &key, &["devices", "get", &gate]);
        (d["enrollment"] == "install_id_expired").then_some(d)
    })
    .await;
    assert_eq!(expired["status"], "unknown", "RFDM status unchanged");
    let table = ok(&cp, &key, &["devices", "list", "--name", "gate 7"]);
    assert!(table.contains("install ID expired"), "{table}");
    // A new install ID (by name): pending again, and it enrolls the box.
    let out = ok(&cp, &key, &["devices", "install-id", "gate 7"]);
    assert_eq!(field(&out, "device id"), gate);
    let install_id = field(&out, "install id");
    assert!(install_id.starts_with("inst_"), "{out}");
    assert!(
        field(&out, "install command").contains(&install_id),
        "{out}"
    );
    let d = json(&cp, &key, &["devices", "get", &gate]);
    assert_eq!(d["enrollment"], "pending", "{d}");
    assert!(d["install_id_expires_at"].is_string(), "{d}");
    let state = tempfile::tempdir().unwrap();
    let enrolled = enroll(&cp, &install_id, state.path());
    assert!(enrolled.status.success(), "{enrolled:?}");
    let d = json(&cp, &key, &["devices", "get", "gate 7"]);
    assert_eq!(d["enrollment"], "enrolled", "{d}");
    assert!(d["install_id_expires_at"].is_null(), "{d}");

    // `rm` at the top, by name.
    let out = ok(&cp, &key, &["rm", "gate 7"]);
    assert_eq!(out.trim(), format!("deleted {gate}"));
    let (code, _) = fails(&cp, &key, &["devices", "get", &gate]);
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_keygen_publish_and_list() {
    use std::os::unix::fs::PermissionsExt;
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("publisher.pem");
    let pem_arg = pem.to_str().unwrap();

    // keygen needs no control plane; the key file is 0600 and never overwritten.
    let out = Command::new(ctl_bin())
        .args(["artifact", "keygen", "--out", pem_arg])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let public = stdout.lines().last().unwrap().to_string();
    assert!(public.starts_with("ed25519:"), "{stdout}");
    let mode = std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (code, err) = fails(&cp, &key, &["artifact", "keygen", "--out", pem_arg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refusing to overwrite"), "{err}");

    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("weights")).unwrap();
    std::fs::write(model.join("weights/w.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::write(model.join("health.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    std::os::unix::fs::symlink("weights/w.bin", model.join("current.bin")).unwrap();
    let publish = [
        "artifact",
        "publish",
        "--name",
        "detector",
        "--version",
        "1.0.0",
        "--sign-key",
        pem_arg,
        "--health-command",
        "./health.sh",
        "--health-window",
        "15s",
        "--post-install",
        "true",
        model.to_str().unwrap(),
    ];

    // Not trusted yet: the server's refusal, exit 1.
    let (code, err) = fails(&cp, &key, &publish);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not a publisher key this workspace trusts"),
        "{err}"
    );

    cp.add_publisher_key("acme", &public);
    let out = ok(&cp, &key, &publish);
    assert_eq!(out.lines().last(), Some("detector@1.0.0"), "{out}");

    let list = json(&cp, &key, &["artifact", "list"]);
    let a = &list["data"][0];
    assert_eq!(a["name"], "detector", "{list}");
    assert_eq!(a["version"], "1.0.0");
    assert_eq!(a["state"], "ready");
    assert_eq!(a["health_command"], "./health.sh");
    assert_eq!(a["health_window_secs"], 15);
    assert_eq!(a["post_install"], "true");
    assert_eq!(a["public_key"], public.as_str());
    assert!(a["size"].as_u64().unwrap() > 300_000, "{a}");
    let table = ok(&cp, &key, &["artifact", "list"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("detector"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("1.0.0") && row.contains("ready"), "{table}");

    // The same version with other contents: 409, and nothing changes.
    std::fs::write(model.join("health.sh"), "#!/bin/sh\nexit 1\n").unwrap();
    let (code, err) = fails(&cp, &key, &publish);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("409"), "{err}");
    assert_eq!(json(&cp, &key, &["artifact", "list"])["data"], list["data"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_create_get_list_and_actions() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("publisher.pem");
    let out = ok(
        &cp,
        &key,
        &["artifact", "keygen", "--out", pem.to_str().unwrap()],
    );
    cp.add_publisher_key("acme", out.lines().last().unwrap());
    let payload = dir.path().join("model.bin");
    std::fs::write(&payload, b"weights").unwrap();
    ok(
        &cp,
        &key,
        &[
            "artifact",
            "publish",
            "--name",
            "detector",
            "--version",
            "1.0",
            "--sign-key",
            pem.to_str().unwrap(),
            payload.to_str().unwrap(),
        ],
    );
    for name in ["cam1", "cam2"] {
        let (id, _) = cp.create_device("acme", &key, name).await;
        let resp = reqwest::Client::new()
            .patch(format!("{}/acme/devices/v2/{id}", cp.rest))
            .bearer_auth(&key)
            .json(&serde_json::json!({"labels": {"site": "a"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let create = [
        "rollout",
        "create",
        "--artifact",
        "detector@1.0",
        "--selector",
        "site=a",
        "--waves",
        "1,100%",
        "--approve-waves",
        "--wave-timeout",
        "5m",
    ];
    let out = ok(&cp, &key, &create);
    let id = out.lines().last().unwrap().to_string();
    assert!(id.starts_with("ro_"), "{out}");
    assert!(
        out.contains("detector@1.0") && out.contains("running"),
        "{out}"
    );
    // Another of the same artifact: the server's 409, exit 1.
    let (code, err) = fails(&cp, &key, &create);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("409"), "{err}");

    // -o json is the REST answer unchanged.
    let got = json(&cp, &key, &["rollout", "get", &id]);
    let (_, rest) = cp
        .get_json(&format!("/acme/devices/v2/rollouts/{id}"), &key)
        .await;
    assert_eq!(got, rest);
    assert_eq!(got["wave_timeout"], "5m");
    let table = ok(&cp, &key, &["rollout", "get", &id]);
    assert!(table.contains("cam1") && table.contains("cam2"), "{table}");
    assert!(table.contains("2 pending"), "{table}");
    let list = ok(&cp, &key, &["rollout", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("1/2") && l.contains("2 pending")),
        "{list}"
    );
    // The list's -o json: the REST items (device counts, no devices).
    let listed = json(&cp, &key, &["rollout", "list", "--limit", "1"]);
    let (_, rest) = cp.get_json("/acme/devices/v2/rollouts", &key).await;
    assert_eq!(listed["data"][0], rest["data"][0]);
    assert_eq!(listed["data"][0]["devices_total"], 2);

    let (code, err) = fails(&cp, &key, &["rollout", "approve", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("running"), "{err}");
    assert!(ok(&cp, &key, &["rollout", "pause", &id]).contains("paused"));
    assert!(ok(&cp, &key, &["rollout", "resume", &id]).contains("running"));
    assert_eq!(
        json(&cp, &key, &["rollout", "abort", &id])["state"],
        "aborted"
    );
    let (code, _) = fails(&cp, &key, &["rollout", "get", "ro_unknown"]);
    assert_eq!(code, 1);
}
