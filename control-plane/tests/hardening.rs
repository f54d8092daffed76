//! Issue 21, end to end: the agent's files are private whatever the umask
//! (defect 9), and strings a device sends reach an operator's terminal
//! escaped through `outpostctl`, exact in its JSON (defect 4).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// The agent binary started by `sh` under umask 000.
fn agent_umask_000(args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(agent_bin())
        .args(args)
        .env("OUTPOST_LOG", "info");
    for v in ["https_proxy", "HTTPS_PROXY"] {
        c.env_remove(v);
    }
    c
}

/// Every file and directory under `dir` with a group or other bit set.
fn not_private(dir: &Path, found: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push(format!("{} {mode:o}", e.path().display()));
        }
        if e.file_type().unwrap().is_dir() {
            not_private(&e.path(), found);
        }
    }
}

fn files_under(dir: &Path, found: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            files_under(&e.path(), found);
        } else {
            found.push(e.path().display().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_files_are_private_under_umask_000() {
    let mut cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (_device, install) = cp.create_device("acme", &key, "umask").await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let o = agent_umask_000(&[
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
    .output()
    .unwrap();
    assert!(o.status.success(), "{o:?}");
    // Offline from here: what the agent spools stays in the spool.
    cp.stop();
    let log = tmp.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let mut run = agent_umask_000(&["run", "--interval", "100ms", "--state-dir"])
        .arg(&state)
        .arg("--log-file")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Lines appended once the agent follows the file.
    wait_until("spooled samples and log lines", TIMEOUT, || async {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"a line with device data\n").unwrap();
        let s = std::fs::read_to_string(state.join("status.json")).ok()?;
        let s: Value = serde_json::from_str(&s).ok()?;
        (s["pending_samples"].as_u64() > Some(0) && s["pending_logs"].as_u64() > Some(0))
            .then_some(())
    })
    .await;
    signal_term(&mut run);
    let mut files = Vec::new();
    files_under(&state, &mut files);
    for want in [
        "device.key",
        "identity.json",
        "api-key",
        "status.json",
        ".seg",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(want)),
            "{want} missing: {files:?}"
        );
    }
    assert!(
        files
            .iter()
            .any(|f| f.contains("spool/logs") && f.ends_with(".seg")),
        "{files:?}"
    );
    let mut open = Vec::new();
    not_private(&state, &mut open);
    assert!(open.is_empty(), "readable by group or others: {open:?}");
}

fn signal_term(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

const HOSTILE: &HostileStrings = &HostileStrings::TERMINAL;
const HOSTNAME: &str = HOSTILE.hostname;
const OS: &str = HOSTILE.os;
const AGENT_VERSION: &str = HOSTILE.agent_version;
const MESSAGE: &str = HOSTILE.message;

/// Characters no human output of outpostctl may carry.
fn raw_controls(s: &str) -> Vec<char> {
    s.chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

fn ctl(cp: &ControlPlane, key: &str, args: &[&str]) -> String {
    let o = Command::new(ctl_bin())
        .args(args)
        .env("OUTPOST_URL", &cp.rest)
        .env("OUTPOST_API_KEY", key)
        .env("OUTPOST_WORKSPACE", "acme")
        .env_remove("OUTPOST_CA_FILE")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "outpostctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn outpostctl_shows_a_devices_hostile_strings_escaped_and_its_json_exact() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install) = cp.create_device("acme", &key, "plain-name").await;
    // A box of this test's own: enrolls, says hello with hostile facts and
    // ships one hostile log line.
    let _open = hostile_box(&cp, &install, HOSTILE).await;

    // Tables and log lines: escaped, nothing raw.
    let list = ctl(&cp, &key, &["devices", "list"]);
    assert!(raw_controls(&list).is_empty(), "{list:?}");
    assert!(list.contains("0.1\\x1b[31m"), "{list}");
    let get = ctl(&cp, &key, &["devices", "get", &device]);
    assert!(raw_controls(&get).is_empty(), "{get:?}");
    assert!(
        get.contains("cam\\x1b[2J\\x1b]0;owned\\x07-1"),
        "hostname escaped: {get}"
    );
    assert!(get.contains("Linux\\u{202e}exe.txt 12\\x9b31m"), "{get}");
    let logs = ctl(&cp, &key, &["logs", &device]);
    assert!(raw_controls(&logs).is_empty(), "{logs:?}");
    assert_eq!(logs.lines().count(), 1, "one record, one line: {logs:?}");
    assert!(
        // NUL is stored as U+FFFD (PostgreSQL cannot store it in text).
        logs.contains("svc\\x1b[8m: boom\\x1b[2J\u{fffd}nul\\rcr\\x08bs\\nsecond line\\u{202e}"),
        "{logs}"
    );
    let watch = ctl(&cp, &key, &["watch", "--once"]);
    assert!(raw_controls(&watch).is_empty(), "{watch:?}");

    // JSON: the exact strings.
    let get: Value =
        serde_json::from_str(&ctl(&cp, &key, &["devices", "get", &device, "-o", "json"])).unwrap();
    assert_eq!(get["hostname"], HOSTNAME);
    assert_eq!(get["platform"], OS);
    assert_eq!(get["agent_version"], AGENT_VERSION);
    let json_text = ctl(&cp, &key, &["logs", &device, "-o", "json"]);
    assert!(raw_controls(&json_text).is_empty(), "{json_text:?}");
    let logs: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(
        logs["data"][0]["message"],
        MESSAGE.replace('\0', "\u{fffd}")
    );
    assert_eq!(logs["data"][0]["service"], HOSTILE.service);
}
