//! Nothing lost: the real binaries under crashes, outages, a full spool and
//! flipped bytes on disk.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

struct Setup {
    cp: ControlPlane,
    key: String,
    device: String,
    state: tempfile::TempDir,
    data: PathBuf,
    _tmp: tempfile::TempDir,
}

async fn setup(name: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cp = ControlPlane::start_in(&data, &[]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, name).await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    Setup {
        cp,
        key,
        device,
        state,
        data,
        _tmp: tmp,
    }
}

/// Appends `line N` lines to a file, one per call.
struct LogWriter {
    path: PathBuf,
    written: u64,
}

impl LogWriter {
    fn new(path: PathBuf) -> Self {
        std::fs::File::create(&path).unwrap();
        Self { path, written: 0 }
    }
    fn write(&mut self, n: u64) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap();
        for _ in 0..n {
            self.written += 1;
            writeln!(f, "line {}", self.written).unwrap();
        }
    }
    /// logrotate's default: rename, then a new file at the path.
    fn rotate(&mut self) {
        std::fs::rename(&self.path, self.path.with_extension("log.1")).unwrap();
        std::fs::File::create(&self.path).unwrap();
    }
    fn expected(&self) -> Vec<String> {
        (1..=self.written).map(|i| format!("line {i}")).collect()
    }
}

/// The follower starts at the end of the file, so lines written before it
/// runs are not shipped: markers are written until one is acknowledged.
async fn follower_running(state: &Path, log: &LogWriter) {
    wait_until("the log follower runs", TIMEOUT, || async {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log.path)
            .unwrap();
        writeln!(f, "marker").unwrap();
        let s = status_json(state);
        (s["spool"]["logs_acked_seq"].as_u64() >= Some(1)).then_some(())
    })
    .await;
}

/// Waits until the agent has every line acknowledged.
async fn logs_acked(state: &Path, lines: u64) {
    wait_until(&format!("{lines} log lines acked"), TIMEOUT, || async {
        let s = status_json(state);
        (s["spool"]["logs_acked_seq"].as_u64() >= Some(lines)).then_some(())
    })
    .await;
}

fn seqs(samples: &[Value]) -> Vec<u64> {
    samples.iter().map(|s| s["seq"].as_u64().unwrap()).collect()
}

/// The counted lines (markers left out; there must be some).
fn messages(logs: &[Value]) -> Vec<String> {
    let all: Vec<String> = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    let markers = all.iter().take_while(|m| *m == "marker").count();
    assert!(markers >= 1, "{all:?}");
    all[markers..].to_vec()
}

/// How many lines the agent has spooled in all (markers included).
fn logs_spooled(state: &Path) -> u64 {
    let s = status_json(state);
    s["spool"]["logs_acked_seq"].as_u64().unwrap_or(0)
        + s["spool"]["logs_pending"].as_u64().unwrap_or(0)
}

fn contiguous_from_one(seqs: &[u64]) -> bool {
    seqs.first() == Some(&1) && seqs.windows(2).all(|w| w[1] == w[0] + 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_killed_for_ten_seconds_loses_no_sample_and_no_log_line() {
    let Setup {
        mut cp,
        key,
        device,
        state,
        data,
        _tmp,
    } = setup("chaos-cp").await;
    let logs = tempfile::tempdir().unwrap();
    let mut log = LogWriter::new(logs.path().join("app.log"));
    let log_arg = log.path.to_str().unwrap().to_string();
    let _agent = AgentProc::run_with(state.path(), "1s", &["--log-file", &log_arg], &[]);
    follower_running(state.path(), &log).await;
    let markers = logs_spooled(state.path());
    log.write(20);

    let (rest, grpc) = cp.addrs();
    cp.kill9();
    drop(cp);
    // ~10 s down while samples and lines pile up (and the file rotates).
    for i in 0..10 {
        log.write(15);
        if i == 5 {
            log.rotate();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let pending = status_json(state.path())["spool"]["pending"]
        .as_u64()
        .unwrap();
    assert!(pending >= 5, "samples spooled during the outage: {pending}");

    let cp = ControlPlane::start_at(&data, &rest, &grpc, &[]);
    log.write(10);
    logs_acked(state.path(), markers + log.written).await;
    wait_until("samples of the outage stored", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["spool"]["pending"] == 0 && s["acked_seq"].as_u64() >= Some(12)).then_some(())
    })
    .await;
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs = seqs(&samples);
    assert!(contiguous_from_one(&seqs), "every seq once: {seqs:?}");
    let stored = all_logs(&cp, "acme", &key, &device).await;
    assert_eq!(
        messages(&stored),
        log.expected(),
        "every line once, in order"
    );
    assert_eq!(stored[0]["service"], "app.log");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_batch_comes_back_without_gap_or_duplicate() {
    let Setup {
        cp,
        key,
        device,
        state,
        _tmp,
        ..
    } = setup("chaos-agent").await;
    let logs = tempfile::tempdir().unwrap();
    let mut log = LogWriter::new(logs.path().join("app.log"));
    let log_arg = log.path.to_str().unwrap().to_string();
    let args = ["--log-file", log_arg.as_str()];
    let mut agent = AgentProc::run_with(state.path(), "100ms", &args, &[]);
    follower_running(state.path(), &log).await;
    let markers = logs_spooled(state.path());
    for round in 0..4 {
        // Lines and samples are flowing when the agent dies.
        for _ in 0..5 {
            log.write(40);
            tokio::time::sleep(Duration::from_millis(50 + 37 * round)).await;
        }
        agent.kill9();
        log.write(25); // written while the agent is dead
        agent = AgentProc::run_with(state.path(), "100ms", &args, &[]);
    }
    log.write(5);
    logs_acked(state.path(), markers + log.written).await;
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs = seqs(&samples);
    assert!(seqs.len() > 10, "{seqs:?}");
    assert!(contiguous_from_one(&seqs), "no gap, no duplicate: {seqs:?}");
    let stored = all_logs(&cp, "acme", &key, &device).await;
    assert_eq!(messages(&stored), log.expected());
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_spool_overflowing_during_an_outage_counts_the_drops_exactly() {
    let Setup {
        mut cp,
        key,
        device,
        state,
        data,
        _tmp,
    } = setup("chaos-full").await;
    let _agent = AgentProc::run_with(state.path(), "100ms", &["--spool-max-bytes", "64KiB"], &[]);
    wait_until("connected", TIMEOUT, || async {
        (status_json(state.path())["acked_seq"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    let (rest, grpc) = cp.addrs();
    cp.kill9();
    drop(cp);
    // 16 KiB for telemetry: at 10 samples/s it overflows within seconds.
    wait_until("the spool overflows", TIMEOUT, || async {
        (status_json(state.path())["spool"]["dropped"].as_u64() >= Some(30)).then_some(())
    })
    .await;
    // Every sample taken so far (and dropped or kept) is below this seq.
    let backlog_end = status_json(state.path())["next_seq"].as_u64().unwrap() - 1;
    let cp = ControlPlane::start_at(&data, &rest, &grpc, &[]);
    // Drained: the store acknowledged everything kept through the outage.
    // (Not "pending is small": sampling goes on at 10/s, and on a loaded
    // machine a few samples are always waiting for their ack.)
    let st = wait_until("drained", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["link"] == "connected" && s["acked_seq"].as_u64() >= Some(backlog_end)).then_some(s)
    })
    .await;
    let dropped = st["spool"]["dropped"].as_u64().unwrap();
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs = seqs(&samples);
    let last = *seqs.last().unwrap();
    // Every seq up to the last stored is either stored or counted as dropped,
    // and what was dropped is the oldest of the outage: one run of seqs.
    let missing: Vec<u64> = (1..=last).filter(|s| !seqs.contains(s)).collect();
    assert_eq!(missing.len() as u64, dropped, "{missing:?}");
    assert!(missing.windows(2).all(|w| w[1] == w[0] + 1), "{missing:?}");
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "no duplicate");
    // Reported to the control plane: the device's events add up to it.
    let total = wait_until("loss reported", TIMEOUT, || async {
        let (_, ev) = cp
            .get_json(&format!("/acme/devices/v2/{device}/events?limit=500"), &key)
            .await;
        let sum: u64 = ev["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "data_lost")
            .map(|e| e["detail"]["telemetry_dropped"].as_u64().unwrap())
            .sum();
        (sum == dropped).then_some(sum)
    })
    .await;
    assert_eq!(total, missing.len() as u64);
}

/// Offsets of the records in a spool segment (by their magic, "OPS1").
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let magic = 0x4f50_5331u32.to_le_bytes();
    (0..bytes.len().saturating_sub(4))
        .filter(|&i| bytes[i..i + 4] == magic)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_bytes_in_the_spool_are_skipped_and_counted() {
    let Setup {
        mut cp,
        key,
        device,
        state,
        data,
        _tmp,
    } = setup("chaos-bits").await;
    let (rest, grpc) = cp.addrs();
    cp.stop();
    drop(cp);
    // Offline: samples go to the spool only.
    let mut agent = AgentProc::run(state.path(), "100ms");
    wait_until("20 samples spooled", TIMEOUT, || async {
        (status_json(state.path())["spool"]["pending"].as_u64() >= Some(20)).then_some(())
    })
    .await;
    assert!(agent.terminate().success());
    let pending = status_json(state.path())["spool"]["pending"]
        .as_u64()
        .unwrap();
    let dir = state.path().join("spool/telemetry");
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    assert!(offsets.len() >= 12, "{}", offsets.len());
    bytes[offsets[3] + 30] ^= 0x10; // a payload byte of the 4th record
    bytes[offsets[9] + 13] ^= 0x01; // the length of the 10th
    std::fs::write(&seg, &bytes).unwrap();

    let cp = ControlPlane::start_at(&data, &rest, &grpc, &[]);
    let _agent = AgentProc::run(state.path(), "1h");
    let st = wait_until("the rest delivered", TIMEOUT, || async {
        let s = status_json(state.path());
        (s["link"] == "connected" && s["spool"]["pending"] == 0).then_some(s)
    })
    .await;
    assert_eq!(st["spool"]["corrupt"], 2, "{st}");
    let seqs = seqs(&all_samples(&cp, "acme", &key, &device).await);
    assert_eq!(seqs.len() as u64, pending - 2, "{seqs:?}");
    assert!(!seqs.contains(&4) && !seqs.contains(&10), "{seqs:?}");
    wait_until("corruption reported", TIMEOUT, || async {
        let (_, ev) = cp
            .get_json(&format!("/acme/devices/v2/{device}/events?limit=500"), &key)
            .await;
        ev["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "data_lost" && e["detail"]["corrupt"] == 2)
            .then_some(())
    })
    .await;
}

/// A PostgreSQL server of this test's own (`.ci/postgres.sh`), to stop and
/// start under a running control plane.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    url: String,
}

impl PrivatePostgres {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/postgres.sh")
    }

    fn run(&self, cmd: &str) -> String {
        let out = std::process::Command::new("bash")
            .arg(Self::script())
            .arg(cmd)
            .arg(self.dir.path())
            .output()
            .expect("run .ci/postgres.sh");
        assert!(
            out.status.success(),
            "postgres.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start() -> Self {
        let mut pg = Self {
            dir: tempfile::tempdir().unwrap(),
            url: String::new(),
        };
        let env = pg.run("start");
        pg.url = env
            .trim()
            .strip_prefix("export OUTPOST_TEST_DATABASE_URL=")
            .expect("postgres.sh prints the URL")
            .to_string();
        pg
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

async fn readyz(cp: &ControlPlane) -> Option<u16> {
    reqwest::Client::new()
        .get(format!("{}/readyz", cp.rest))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// PostgreSQL stopped for 15 s under a running control plane with a
/// streaming agent: `/readyz` answers 503 while it is down, nothing is acked
/// that is not stored (an acked sample leaves the agent's spool: a gap
/// would show it), and once the database is back every sample is stored
/// exactly once. Runs in CI's PostgreSQL round (a server of its own).
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_acks_nothing_unstored_and_loses_nothing() {
    if std::env::var_os("OUTPOST_TEST_DATABASE_URL").is_none() {
        eprintln!("runs in the PostgreSQL round (OUTPOST_TEST_DATABASE_URL unset)");
        return;
    }
    let pg = PrivatePostgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Admin commands (workspace, key) find the database by this marker.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(".test-database-url"), &pg.url).unwrap();
    let mut cmd = std::process::Command::new(cp_bin());
    cmd.args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--rest-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--database-url", &pg.url]);
    let cp = ControlPlane::spawn(cmd, &data);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "db-outage").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let _agent = AgentProc::run(state.path(), "200ms");
    wait_until("samples acked", TIMEOUT, || async {
        (status_json(state.path())["acked_seq"].as_u64() >= Some(5)).then_some(())
    })
    .await;
    assert_eq!(readyz(&cp).await, Some(200));

    pg.run("stop");
    let down = std::time::Instant::now();
    wait_until("/readyz says 503", TIMEOUT, || async {
        (readyz(&cp).await == Some(503)).then_some(())
    })
    .await;
    let acked_early = status_json(state.path())["acked_seq"].as_u64().unwrap();
    // The outage itself: 15 s down while the agent keeps sampling.
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(down.elapsed())).await;
    let s = status_json(state.path());
    let acked_during = s["acked_seq"].as_u64().unwrap();
    assert!(
        s["spool"]["pending"].as_u64().unwrap() >= 20,
        "samples wait in the spool while the database is down: {s}"
    );
    // A commit already in flight when the server stopped may have been
    // answered; nothing after it.
    assert!(
        acked_during <= acked_early + 5,
        "acked while the database was down: {acked_early} → {acked_during}"
    );
    assert_eq!(readyz(&cp).await, Some(503));

    pg.run("start");
    wait_until("/readyz is 200 again", TIMEOUT, || async {
        (readyz(&cp).await == Some(200)).then_some(())
    })
    .await;
    let target = acked_during + 75;
    wait_until("the outage's samples are acked", TIMEOUT, || async {
        (status_json(state.path())["acked_seq"].as_u64() >= Some(target)).then_some(())
    })
    .await;
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs = seqs(&samples);
    assert!(
        seqs.len() as u64 >= target,
        "{} stored, {target} acked",
        seqs.len()
    );
    assert!(contiguous_from_one(&seqs), "every seq once: {seqs:?}");
}

/// A tmpfs of its own at `path` (root only): a disk this test can fill
/// without filling the machine's. Unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Writes `path` until its file system has no byte left (big writes, then
/// smaller ones down to single bytes); returns how many bytes it took.
fn fill_disk(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for size in [1 << 20, 4096, 1] {
        let chunk = vec![0xa5u8; size];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    written
}

/// Waits for a line of the log that says all of `needles`.
async fn log_says(log: &Path, needles: &[&str]) {
    wait_until(&format!("the log says {needles:?}"), TIMEOUT, || async {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
            .then_some(())
    })
    .await;
}

/// Samples acked by the agent, and waiting in its spool.
fn acked_and_pending(state: &Path) -> (u64, u64) {
    let s = status_json(state);
    (
        s["acked_seq"].as_u64().unwrap(),
        s["spool"]["pending"].as_u64().unwrap(),
    )
}

/// While the store cannot write, the agent's samples wait in its spool:
/// nothing more is acked than was in flight when the trouble began.
async fn nothing_acked_while_failing(state: &Path, acked_before: u64) -> u64 {
    wait_until("samples wait in the spool", TIMEOUT, || async {
        (acked_and_pending(state).1 >= 15).then_some(())
    })
    .await;
    let (acked, _) = acked_and_pending(state);
    assert!(
        acked <= acked_before + 5,
        "acked while the store could not write: {acked_before} → {acked}"
    );
    acked
}

/// Waits until everything the agent has sampled so far is acked.
async fn all_acked_again(state: &Path) {
    let (acked, pending) = acked_and_pending(state);
    let target = acked + pending;
    // The agent's link never lived long enough to count as healthy, so its
    // backoff may have grown toward its 60 s cap during the outage.
    wait_until("the spooled samples are acked", 4 * TIMEOUT, || async {
        (acked_and_pending(state).0 >= target).then_some(())
    })
    .await;
}

/// The embedded SQLite's two ways of refusing a write under a running
/// control plane with a streaming agent: another process holding the write
/// lock past the busy timeout (`SQLITE_BUSY`), then a full disk
/// (`SQLITE_FULL`, on a tmpfs of the test's own; root only). Each time the
/// log says what is wrong, nothing is acked that is not stored, and once the
/// lock is let go / the space returns every sample is stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_busy_and_a_full_disk_ack_nothing_unstored_and_recover() {
    if std::env::var_os("OUTPOST_TEST_DATABASE_URL").is_some() {
        eprintln!("about the embedded SQLite: runs in the SQLite round");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    let tmpfs = Tmpfs::mount(&disk, "48m");
    if tmpfs.is_none() {
        // The pool's recovery itself is also pinned without root
        // (store::sqlite's tests); CI runs as root.
        assert!(
            std::env::var_os("OUTPOST_TEST_REQUIRE_TMPFS").is_none(),
            "cannot mount a tmpfs, and OUTPOST_TEST_REQUIRE_TMPFS is set"
        );
        eprintln!("cannot mount a tmpfs (not root?): the full-disk part is left out");
    }
    let data = disk.join("data");
    let log = tmp.path().join("control-plane.log");
    let mut cmd = std::process::Command::new(cp_bin());
    cmd.args(["serve", "--data-dir"]).arg(&data).args([
        "--rest-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ]);
    let cp =
        ControlPlane::spawn_logging_to(cmd, &data, std::fs::File::create(&log).unwrap().into());
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "sqlite-outage").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let _agent = AgentProc::run(state.path(), "200ms");
    wait_until("samples acked", TIMEOUT, || async {
        (acked_and_pending(state.path()).0 >= 5).then_some(())
    })
    .await;

    // 1. SQLITE_BUSY: a write lock held past the control plane's 10 s busy
    // timeout (a backup tool or a hand-run `sqlite3` doing the same).
    use sqlx::Connection;
    let mut other = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(data.join("outpost.db")),
    )
    .await
    .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let (acked_before, _) = acked_and_pending(state.path());
    log_says(&log, &["telemetry not stored", "database is locked"]).await;
    nothing_acked_while_failing(state.path(), acked_before).await;
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    all_acked_again(state.path()).await;

    // 2. SQLITE_FULL: the disk holding the database fills up. Commits go
    // on (and are acked: they are durable) while they fit into the space
    // the WAL file already has; the checkpointer cannot grow the database
    // file, so the WAL cannot start over, and soon a commit must grow it.
    // From that first failed commit on, nothing is acked.
    if let Some(tmpfs) = &tmpfs {
        let filler = tmpfs.path.join("filler");
        assert!(fill_disk(&filler) > 0);
        log_says(&log, &["telemetry not stored", "database or disk is full"]).await;
        let (acked_before, _) = acked_and_pending(state.path());
        nothing_acked_while_failing(state.path(), acked_before).await;
        std::fs::remove_file(&filler).unwrap();
        all_acked_again(state.path()).await;
    }

    // Acked before the store is read: everything acked by then is stored.
    let (acked, _) = acked_and_pending(state.path());
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs = seqs(&samples);
    assert!(contiguous_from_one(&seqs), "every seq once: {seqs:?}");
    assert!(
        seqs.len() as u64 >= acked,
        "every acked sample is stored: {} stored, {acked} acked",
        seqs.len()
    );
}
