//! The agent as a systemd service: the notify protocol against a real unix
//! datagram socket (`NOTIFY_SOCKET`), the watchdog following the main loop's
//! health, SIGHUP reloading the configuration, and `outpost-agent check`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A socket standing in for systemd's notify socket.
struct NotifySocket {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        Self {
            sock,
            path,
            _dir: dir,
        }
    }

    /// The next datagram within `timeout` (None: nothing came).
    fn next(&self, timeout: Duration) -> Option<(Instant, String)> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )),
            Err(_) => None,
        }
    }

    /// Waits for a datagram containing `what`, returning those before it.
    fn wait_for(&self, what: &str) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(m) = self.next(Duration::from_secs(1)) {
                if m.1.lines().any(|l| l == what) {
                    return seen;
                }
                seen.push(m);
            }
        }
        panic!("no {what} within {TIMEOUT:?}; got {seen:?}");
    }
}

fn run_agent(
    state: &Path,
    notify: &NotifySocket,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> Child {
    agent_cmd(&["run", "--interval", "1s", "--state-dir"])
        .arg(state)
        .args(args)
        .env("NOTIFY_SOCKET", &notify.path)
        .envs(extra_env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn enrolled() -> (ControlPlane, tempfile::TempDir) {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (_, install_id) = cp.create_device("acme", &key, "svc").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    (cp, state)
}

fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_ready_watchdog_pace_and_stopping() {
    let (_cp, state) = enrolled().await;
    let notify = NotifySocket::new();
    let mut agent = run_agent(state.path(), &notify, &[("WATCHDOG_USEC", "1000000")], &[]);
    notify.wait_for("READY=1");
    // WATCHDOG=1 at about half of WATCHDOG_USEC: never a gap near the timeout.
    let mut pings = Vec::new();
    while pings.len() < 6 {
        let (at, msg) = notify
            .next(Duration::from_secs(2))
            .expect("watchdog pings keep coming");
        if msg.lines().any(|l| l == "WATCHDOG=1") {
            pings.push(at);
        }
    }
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap < Duration::from_millis(900),
            "gap {gap:?} too close to the 1 s timeout"
        );
        assert!(
            gap > Duration::from_millis(200),
            "gap {gap:?}: pinging far too often"
        );
    }
    signal(&agent, "TERM");
    notify.wait_for("STOPPING=1");
    let st = wait_exit(&mut agent);
    assert!(st.success(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wedged_main_loop_stops_the_watchdog() {
    let (_cp, state) = enrolled().await;
    let notify = NotifySocket::new();
    let mut agent = run_agent(
        state.path(),
        &notify,
        &[
            ("WATCHDOG_USEC", "1000000"),
            (outpost_agent::notify::WEDGE_ENV, "3s"),
        ],
        &[],
    );
    notify.wait_for("READY=1");
    notify.wait_for("WATCHDOG=1");
    // After the wedge, the pings stop for good (systemd would restart us).
    let deadline = Instant::now() + TIMEOUT;
    let mut last_ping = Instant::now();
    loop {
        match notify.next(Duration::from_secs(3)) {
            Some((at, m)) if m.contains("WATCHDOG=1") => last_ping = at,
            Some(_) => {}
            None => break, // 3 s without a ping: three timeouts' worth
        }
        assert!(Instant::now() < deadline, "pings never stopped");
    }
    assert!(last_ping.elapsed() >= Duration::from_secs(3));
    let _ = agent.kill();
    let _ = agent.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_interval_and_log_sources() {
    let (cp, state) = enrolled().await;
    let key = cp.api_key("acme", &[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "interval = \"1h\"\n").unwrap();
    let log = dir.path().join("late.log");
    std::fs::write(&log, "").unwrap();
    let notify = NotifySocket::new();
    let mut agent = agent_cmd(&["run", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(state.path())
        .env("NOTIFY_SOCKET", &notify.path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    notify.wait_for("READY=1");
    std::fs::write(
        &cfg,
        format!(
            "interval = \"200ms\"\nlog-files = [\"{}\"]\nlog-level = \"debug\"\n",
            log.display()
        ),
    )
    .unwrap();
    signal(&agent, "HUP");
    notify.wait_for("RELOADING=1");
    notify.wait_for("READY=1");
    // The new interval: samples arrive (there were none at 1 h).
    let device = {
        let s = status_json(state.path());
        s["device_id"].as_str().unwrap().to_string()
    };
    wait_until("samples at the reloaded interval", TIMEOUT, || async {
        (all_samples(&cp, "acme", &key, &device).await.len() >= 3).then_some(())
    })
    .await;
    // The new log source is followed.
    wait_until("the new log file shipped", TIMEOUT, || async {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"hello after reload\n"))
            .unwrap();
        let s = status_json(state.path());
        (s["spool"]["logs_acked_seq"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    signal(&agent, "TERM");
    assert!(wait_exit(&mut agent).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_each_problem_on_its_own_line() {
    let (mut cp, state) = enrolled().await;
    let out = agent_cmd(&["check", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok   enrolled as"), "{text}");
    assert!(text.contains("reachable, TLS verified"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");

    // A readable key and an unreachable control plane: two FAIL lines, exit 1.
    let key = state.path().join("device.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    cp.stop();
    let out = agent_cmd(&["check", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 2, "{text}");
    assert!(fails[0].contains("chmod 600"), "{text}");
    assert!(fails[1].contains("control plane"), "{text}");

    // Not enrolled and nothing configured.
    let empty = tempfile::tempdir().unwrap();
    let out = agent_cmd(&["check", "--state-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL not enrolled"));
}
