//! From nothing to a box on the fleet with the real binaries: the control
//! plane serves `install.sh` and the agent tarballs of its `--agent-dist`,
//! and the install command it hands out installs (into a bare directory tree,
//! `install.sh --root`) the binary whose SHA-256 the index names, then waits
//! for the agent to enroll and connect.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A release tarball as scripts/release.sh lays it out
/// (`outpost-agent-VERSION-ARCH/{outpost-agent,install.sh,outpost-agent.service}`),
/// with the agent binary this test run built. Returns its name.
fn make_tarball(dist: &Path, version: &str) -> String {
    let arch = String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let name = format!("outpost-agent-{version}-{arch}");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(agent_bin(), dir.join("outpost-agent")).unwrap();
    for f in ["install.sh", "outpost-agent.service"] {
        std::fs::copy(repo().join("systemd").join(f), dir.join(f)).unwrap();
    }
    std::fs::create_dir_all(dist).unwrap();
    let out = Command::new("tar")
        .arg("-C")
        .arg(work.path())
        .args(["-I", "gzip -1", "-cf"])
        .arg(dist.join(format!("{name}.tar.gz")))
        .arg(&name)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    format!("{name}.tar.gz")
}

async fn create(cp: &ControlPlane, key: &str, name: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/acme/devices/v2", cp.rest))
        .bearer_auth(key)
        .json(&serde_json::json!({"device_name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

/// Runs an install command as the control plane gave it, without `sudo` and
/// into `root` (plus `extra` arguments).
fn run_install_command(command: &str, root: &Path, extra: &str) -> Output {
    let command = command.replacen("| sudo sh -s --", "| sh -s --", 1);
    assert!(!command.contains("sudo"), "{command}");
    Command::new("sh")
        .arg("-c")
        .arg(format!("{command} --root {} {extra}", root.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_command_downloads_checks_installs_and_waits_for_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dist = tmp.path().join("dist");
    let tarball = make_tarball(&dist, env!("CARGO_PKG_VERSION"));
    let dist_arg = dist.to_str().unwrap();

    // Without --public-rest-url: today's command, and a hint naming what is missing.
    let mut cp = ControlPlane::start_in(&data, &["--agent-dist", dist_arg]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let created = create(&cp, &key, "first").await;
    let command = created["installCommand"].as_str().unwrap();
    assert!(
        command.starts_with("sudo sh install.sh --server "),
        "{command}"
    );
    let hint = created["hint"].as_str().unwrap();
    assert!(hint.contains("--public-rest-url"), "{hint}");
    assert!(!hint.contains("no agent tarball"), "{hint}");

    // With it (same ports again): the one-liner.
    let (rest, grpc) = cp.addrs();
    cp.stop();
    let rest_url = format!("http://{rest}");
    let cp = ControlPlane::start_at(
        &data,
        &rest,
        &grpc,
        &["--agent-dist", dist_arg, "--public-rest-url", &rest_url],
    );
    let created = create(&cp, &key, "box").await;
    assert!(created.get("hint").is_none(), "{created}");
    let command = created["installCommand"].as_str().unwrap().to_string();
    let install_id = created["installId"].as_str().unwrap();
    assert_eq!(
        command,
        format!(
            "curl -fsSL {rest_url}/install.sh | sudo sh -s -- --server {} --install-id {install_id} --ca-fingerprint {}",
            cp.grpc_url(),
            cp.fingerprint
        )
    );

    // The index names the tarball with its SHA-256; other names are not served.
    let http = reqwest::Client::new();
    let index: Value = http
        .get(format!("{rest_url}/downloads/index.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sha = sha256_hex(&dist.join(&tarball));
    assert_eq!(index[0]["file"], tarball.as_str(), "{index}");
    assert_eq!(index[0]["sha256"], sha.as_str(), "{index}");
    assert_eq!(index.as_array().unwrap().len(), 1, "{index}");
    std::fs::write(dist.join("secret.txt"), "no").unwrap();
    for path in [
        "secret.txt",
        "..%2Fdata%2Fpki%2Fca.key",
        "outpost-agent-9.9.9-x86_64.tar.gz",
    ] {
        let s = http
            .get(format!("{rest_url}/downloads/{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 404, "{path}");
    }

    // The command as given (minus sudo), into a bare tree, not waiting.
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let out = run_install_command(&command, &root, "--no-wait");
    assert!(out.status.success(), "{}", text(&out));
    let installed = root.join("usr/bin/outpost-agent");
    assert_eq!(sha256_hex(&installed), sha256_hex(&agent_bin()));
    let env = std::fs::read_to_string(root.join("etc/outpost/agent.env")).unwrap();
    assert!(
        env.contains(&format!("OUTPOST_INSTALL_ID={install_id}")),
        "{env}"
    );
    assert!(
        root.join("etc/systemd/system/outpost-agent.service")
            .exists()
    );

    // Start the installed agent as the unit would (its env file, its state
    // dir), and run the command again, waiting: it reports the device.
    let state = root.join("var/lib/outpost-agent");
    let mut agent = Command::new(&installed);
    agent
        .args(["run", "--interval", "1s", "--state-dir"])
        .arg(&state)
        .env("OUTPOST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for line in env.lines() {
        let (k, v) = line.split_once('=').unwrap();
        agent.env(k, v);
    }
    let mut agent = agent.spawn().unwrap();
    let out = run_install_command(&command, &root, "--wait --wait-timeout 30");
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{}", text(&out));
    let device_id = created["deviceId"].as_str().unwrap();
    assert!(
        text(&out).contains(&format!("enrolled as {device_id}, connected")),
        "{}",
        text(&out)
    );

    // A script served now carries the index as it is now; a tarball that
    // changes after that is refused, and nothing is installed.
    let script = http
        .get(format!("{rest_url}/install.sh"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let script_path = tmp.path().join("install.sh");
    std::fs::write(&script_path, script).unwrap();
    let mut bytes = std::fs::read(dist.join(&tarball)).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(dist.join(&tarball), bytes).unwrap();
    let root2 = tmp.path().join("root2");
    let out = Command::new("sh")
        .arg(&script_path)
        .args(["--root", root2.to_str().unwrap(), "--no-wait"])
        .args(["--server", &cp.grpc_url(), "--install-id", install_id])
        .args(["--ca-fingerprint", &cp.fingerprint])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("refusing to install it"),
        "{}",
        text(&out)
    );
    assert!(!root2.join("usr/bin/outpost-agent").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_tarball_the_hint_says_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cp = ControlPlane::start_in(&data, &["--public-rest-url", "https://cp.example.com"]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let created = create(&cp, &key, "box").await;
    assert!(
        created["installCommand"]
            .as_str()
            .unwrap()
            .starts_with("sudo sh install.sh "),
        "{created}"
    );
    let hint = created["hint"].as_str().unwrap();
    assert!(hint.contains("no agent tarball in"), "{hint}");
    assert!(hint.contains("scripts/release.sh --into"), "{hint}");
    assert!(hint.contains(data.join("dist").to_str().unwrap()), "{hint}");
    // The index is empty, and the served script then needs --binary.
    let index: Value = reqwest::get(format!("{}/downloads/index.json", cp.rest))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index, serde_json::json!([]));
}

fn agent_out(args: &[&str], state: &Path) -> Output {
    agent_cmd(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("run the agent")
}

/// A forced reset revokes the box's certificate; `check` says so (exit 1);
/// `enroll --install-id NEW` on the box brings the same device back in place
/// (another device's install ID is refused), and the daemon, never
/// restarted, reconnects with the new identity and goes on numbering where
/// it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_forced_reset_is_finished_on_the_box_without_restarting_the_agent() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "box").await;
    let (_, other_install_id) = cp.create_device("acme", &key, "other").await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = enroll(&cp, &install_id, &state);
    assert!(out.status.success(), "{}", text(&out));
    let mut agent = AgentProc::run(&state, "200ms");
    wait_until("the first acks", TIMEOUT, || async {
        let s = status_json(&state);
        (s["link"] == "connected" && s["acked_seq"].as_u64() >= Some(3)).then_some(())
    })
    .await;
    let out = agent_out(&["check"], &state);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("certificate accepted by the control plane"),
        "{}",
        text(&out)
    );
    let out = agent_out(&["enroll", "--install-id", &other_install_id], &state);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("give --force"), "{}", text(&out));
    // Operator keys and device keys are listed apart.
    let list = cp.admin(&["api-key", "list", "--workspace", "acme"]);
    let operator = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        operator.starts_with("# operator keys of acme\n"),
        "{operator}"
    );
    assert!(
        !operator.contains(&format!("device={device}")),
        "{operator}"
    );
    assert!(
        text(&list).contains("1 device keys not shown"),
        "{}",
        text(&list)
    );
    let list = cp.admin(&["api-key", "list", "--workspace", "acme", "--device-keys"]);
    let device_keys = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        device_keys.contains(&format!("device={device}")),
        "{device_keys}"
    );

    // Forced reset.
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/acme/devices/v2/{device}/connections/reset?force=true",
            cp.rest
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reset: Value = resp.json().await.unwrap();
    let new_install_id = reset["installId"].as_str().unwrap().to_string();
    let acked_before = wait_until("the agent to see the revocation", TIMEOUT, || async {
        let s = status_json(&state);
        let revoked = s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked"));
        (s["link"] != "connected" && revoked).then(|| s["acked_seq"].as_u64().unwrap())
    })
    .await;
    let out = agent_out(&["check"], &state);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL certificate revoked"),
        "{}",
        text(&out)
    );
    // With an install ID that is not the device's: refused, identity kept.
    let out = agent_out(&["enroll", "--install-id", &other_install_id], &state);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("belongs to another device"),
        "{}",
        text(&out)
    );
    // `check` with the first install ID (replaced by the reset's) and with
    // the new one.
    let out = agent_out(&["check", "--install-id", &install_id], &state);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL install ID unknown"),
        "{}",
        text(&out)
    );
    let out = agent_out(&["check", "--install-id", &new_install_id], &state);
    assert_eq!(out.status.code(), Some(1), "still revoked: {}", text(&out));
    assert!(
        text(&out).contains("ok   install ID accepted"),
        "{}",
        text(&out)
    );

    let out = agent_out(&["enroll", "--install-id", &new_install_id], &state);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("enrolled again as device {device}")),
        "{}",
        text(&out)
    );
    wait_until(
        "the daemon to reconnect with the new identity",
        TIMEOUT,
        || async {
            let s = status_json(&state);
            (s["link"] == "connected" && s["acked_seq"].as_u64() > Some(acked_before + 2))
                .then_some(())
        },
    )
    .await;
    assert!(agent.try_exit().is_none(), "the daemon was not restarted");
    let out = agent_out(&["check"], &state);
    assert!(out.status.success(), "{}", text(&out));
    // One device, its samples numbered on without a restart from 1.
    let samples = all_samples(&cp, "acme", &key, &device).await;
    let seqs: Vec<u64> = samples.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(*seqs.last().unwrap() > acked_before, "{seqs:?}");
    assert_eq!(seqs[0], 1, "{seqs:?}");
    agent.terminate();
}

/// `serve` on a data dir, expected to refuse: its output.
fn serve_refused(data_dir: &Path) -> String {
    let mut cmd = Command::new(cp_bin());
    cmd.args(["serve", "--data-dir"]).arg(data_dir).args([
        "--rest-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ]);
    if let Some(url) = test_database(data_dir) {
        cmd.args(["--database-url", &url]);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    text(&out)
}

fn copy_ca(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("pki")).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(from.join("pki").join(f), to.join("pki").join(f)).unwrap();
    }
}

/// The database records the CA of the first control plane on it; one with
/// another CA (a replica whose CA was not copied, a data dir whose CA was
/// swapped) or none refuses to start, naming the recorded fingerprint and
/// what to copy. With OUTPOST_TEST_DATABASE_URL the replica shares a
/// PostgreSQL database; without, it is the same SQLite data dir.
#[test]
fn a_control_plane_with_another_ca_than_its_database_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, elsewhere) = (tmp.path().join("first"), tmp.path().join("elsewhere"));
    let mut cp = ControlPlane::start_in(&first, &[]);
    let recorded = cp.fingerprint.clone();
    cp.stop();
    let saved = tmp.path().join("first-ca");
    copy_ca(&first, &saved);
    let mut other = ControlPlane::start_in(&elsewhere, &[]);
    assert_ne!(other.fingerprint, recorded);
    other.stop();

    // The replica: its own data dir on the same database (PostgreSQL), or
    // the same data dir (SQLite).
    let replica = if std::env::var("OUTPOST_TEST_DATABASE_URL").is_ok() {
        let replica = tmp.path().join("replica");
        std::fs::create_dir_all(&replica).unwrap();
        std::fs::copy(
            first.join(".test-database-url"),
            replica.join(".test-database-url"),
        )
        .unwrap();
        // No CA at all: refused, and none is created.
        let said = serve_refused(&replica);
        assert!(said.contains(&recorded), "{said}");
        assert!(said.contains("has no CA"), "{said}");
        assert!(!replica.join("pki/ca.crt").exists());
        replica
    } else {
        first.clone()
    };
    copy_ca(&elsewhere, &replica);
    let said = serve_refused(&replica);
    assert!(
        said.contains(&format!("belongs to the device CA {recorded}")),
        "{said}"
    );
    assert!(said.contains(&other.fingerprint), "{said}");
    assert!(said.contains("copy ca.crt and ca.key"), "{said}");

    // With the right CA it starts.
    copy_ca(&saved, &replica);
    let mut cp = ControlPlane::start_in(&replica, &[]);
    assert_eq!(cp.fingerprint, recorded);
    cp.stop();
}

/// Only `serve` creates a data directory: an admin command pointed at one
/// that does not exist refuses and creates nothing.
#[test]
fn admin_commands_refuse_a_data_dir_that_does_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("outpost-data");
    for args in [
        &["workspace", "create", "acme"][..],
        &["workspace", "list"][..],
        &["api-key", "create", "--workspace", "acme"][..],
    ] {
        let out = Command::new(cp_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&missing)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out).contains("no data directory"),
            "{args:?}: {}",
            text(&out)
        );
        assert!(!missing.exists(), "{args:?} created it");
    }
    // `serve` prints where install commands send agents.
    let cp = ControlPlane::start_in(&missing, &[]);
    drop(cp);
    assert!(missing.is_dir());
}

/// On PostgreSQL an admin command says what it did and nothing more: no
/// `relation "_sqlx_migrations" already exists` notice from the migrator.
#[test]
fn admin_commands_on_postgres_print_no_notices() {
    if std::env::var("OUTPOST_TEST_DATABASE_URL").is_err() {
        return; // SQLite has no notices; CI runs this on PostgreSQL
    }
    let cp = ControlPlane::start();
    for _ in 0..2 {
        let out = cp.admin(&["workspace", "list"]);
        assert!(out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("already exists"), "{err}");
        assert!(err.trim().is_empty(), "{err}");
    }
}

/// The install command run again after a forced reset restarts the service
/// with the new install ID configured: `run` sees the control plane no
/// longer takes its certificate and enrolls again in place.
#[tokio::test(flavor = "multi_thread")]
async fn run_with_a_new_install_id_re_enrolls_a_revoked_box_in_place() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "box").await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    assert!(enroll(&cp, &install_id, &state).status.success());
    let mut agent = AgentProc::run(&state, "200ms");
    let acked = wait_until("the first acks", TIMEOUT, || async {
        let s = status_json(&state);
        let acked = s["acked_seq"].as_u64().unwrap_or(0);
        (acked >= 2).then_some(acked)
    })
    .await;
    agent.terminate();
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/acme/devices/v2/{device}/connections/reset?force=true",
            cp.rest
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reset: Value = resp.json().await.unwrap();
    let new_install_id = reset["installId"].as_str().unwrap();

    let mut agent = AgentProc::run_with(&state, "200ms", &["--install-id", new_install_id], &[]);
    wait_until("the agent back as the same device", TIMEOUT, || async {
        let s = status_json(&state);
        (s["link"] == "connected"
            && s["device_id"] == device.as_str()
            && s["acked_seq"].as_u64() > Some(acked + 1))
        .then_some(())
    })
    .await;
    // Running again with the (now spent) install ID changes nothing.
    agent.terminate();
    let serial = status_json(&state)["certificate"]["serial"].clone();
    let mut agent = AgentProc::run_with(&state, "200ms", &["--install-id", new_install_id], &[]);
    wait_until("connected again", TIMEOUT, || async {
        (status_json(&state)["link"] == "connected").then_some(())
    })
    .await;
    assert_eq!(status_json(&state)["certificate"]["serial"], serial);
    agent.terminate();
}

/// A root CA and an intermediate signed by it, PEM (certificate, key).
fn root_and_intermediate() -> ((String, String), (String, String)) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_params = |cn: &str, depth: u8| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(depth));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Test Root", 1);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&root_params, &root_key);
    let mid_key = KeyPair::generate().unwrap();
    let mid = ca_params("Test Intermediate", 0)
        .signed_by(&mid_key, &issuer)
        .unwrap();
    (
        (root.pem(), root_key.serialize_pem()),
        (mid.pem(), mid_key.serialize_pem()),
    )
}

/// A control plane run on an intermediate CA (certs/README): the agent
/// enrolls when it trusts that intermediate; given the root above it, it
/// says what to give instead.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_given_the_root_above_an_intermediate_ca_says_to_give_the_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pki = data.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ((root_pem, _), (mid_pem, mid_key)) = root_and_intermediate();
    std::fs::write(pki.join("ca.crt"), &mid_pem).unwrap();
    std::fs::write(pki.join("ca.key"), &mid_key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let root_file = tmp.path().join("root.crt");
    std::fs::write(&root_file, &root_pem).unwrap();
    let cp = ControlPlane::start_in(&data, &[]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (_, install_id) = cp.create_device("acme", &key, "behind-mid").await;

    let state = tempfile::tempdir().unwrap();
    let out = agent_cmd(&[
        "enroll",
        "--server",
        &cp.grpc_url(),
        "--install-id",
        &install_id,
        "--ca-file",
    ])
    .arg(&root_file)
    .arg("--state-dir")
    .arg(state.path())
    .output()
    .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("CA bundle does not contain") && said.contains("intermediate"),
        "{said}"
    );
    // The intermediate itself: enrolled.
    let out = enroll(&cp, &install_id, state.path());
    assert!(out.status.success(), "{}", text(&out));
}

/// The install command of a workspace that trusts publisher keys carries
/// them; install.sh checks each and writes them to agent.env for the agent
/// (`OUTPOST_PUBLISHER_KEYS`), and on an enrolled box replaces just that line.
#[tokio::test(flavor = "multi_thread")]
async fn publisher_keys_travel_from_the_workspace_to_the_box() {
    let cp = ControlPlane::in_process().await;
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (k1, _) = outpost_common::artifact::SigningKey::generate().unwrap();
    let (k2, _) = outpost_common::artifact::SigningKey::generate().unwrap();
    let (k1, k2) = (k1.public_key().to_string(), k2.public_key().to_string());
    cp.add_publisher_key("acme", &k1);
    cp.add_publisher_key("acme", &k2);
    let created = create(&cp, &key, "box").await;
    let command = created["installCommand"].as_str().unwrap();
    assert!(command.starts_with("sudo sh install.sh "), "{command}");
    let args: Vec<&str> = command["sudo sh install.sh ".len()..].split(' ').collect();
    let keys: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--publisher-key")
        .map(|w| w[1])
        .collect();
    let mut want = vec![k1.as_str(), k2.as_str()];
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want, "{command}");

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let script = repo().join("systemd/install.sh");
    let install = |extra: &[&str]| {
        Command::new("sh")
            .arg(&script)
            .args(["--root", root.to_str().unwrap(), "--no-wait", "--binary"])
            .arg(agent_bin())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = install(&args);
    assert!(out.status.success(), "{}", text(&out));
    let env_file = root.join("etc/outpost/agent.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.lines()
            .any(|l| l == format!("OUTPOST_PUBLISHER_KEYS={}", keys.join(","))),
        "{env}"
    );

    // Enrolled (an identity in the state dir): the key list alone changes.
    let state = root.join("var/lib/outpost-agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("identity.json"), "{}").unwrap();
    let out = install(&["--publisher-key", &k2]);
    assert!(out.status.success(), "{}", text(&out));
    let after = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        after.contains(&format!("OUTPOST_PUBLISHER_KEYS={k2}\n")),
        "{after}"
    );
    assert_eq!(
        after.matches("OUTPOST_PUBLISHER_KEYS=").count(),
        1,
        "{after}"
    );
    assert!(
        after.contains("OUTPOST_INSTALL_ID="),
        "the rest stays: {after}"
    );

    // Malformed or smuggling keys: refused by name, nothing written.
    for bad in [
        "ed25519:short".to_string(),
        "rsa:AAAA".to_string(),
        format!("{k1},OUTPOST_SERVER=https://evil.example"),
        format!("{k1}\nLD_PRELOAD=/tmp/x.so"),
    ] {
        let out = install(&["--publisher-key", &bad]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", text(&out));
        assert!(text(&out).contains("--publisher-key"), "{}", text(&out));
        assert_eq!(
            std::fs::read_to_string(&env_file).unwrap(),
            after,
            "{bad:?}"
        );
    }
}
