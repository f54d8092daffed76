//! End to end with the real binaries: create a device over REST, enroll the
//! agent with its install ID, watch telemetry arrive, stop and restart.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn device_enrolls_and_streams_telemetry_end_to_end() {
    let cp = ControlPlane::start();
    let mode = std::fs::metadata(cp.data_dir.join("pki/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "CA key is private");
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "cam-1").await;

    let (status, body) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "unknown", "never connected yet");

    let state = tempfile::tempdir().unwrap();
    let out = enroll(&cp, &install_id, state.path());
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_mode = std::fs::metadata(state.path().join("device.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "device key is private");

    let mut agent = AgentProc::run(state.path(), "200ms");
    let samples = wait_until("5 samples", TIMEOUT, || async {
        let s = all_samples(&cp, "acme", &key, &device).await;
        (s.len() >= 5).then_some(s)
    })
    .await;
    let seqs: Vec<u64> = samples.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[0], 1, "a new device starts at seq 1");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous: {seqs:?}"
    );
    let mem = meminfo_total_bytes();
    for s in &samples {
        assert_eq!(
            s["memory_total_bytes"].as_u64().unwrap(),
            mem,
            "memory total is this machine's"
        );
        let used = s["memory_used_bytes"].as_u64().unwrap();
        assert!(used > 0 && used <= mem);
        let cpu = s["cpu_percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cpu), "cpu {cpu}");
        assert!(s["disk_total_bytes"].as_u64().unwrap() > 0);
        assert!(s["disk_used_bytes"].as_u64().unwrap() <= s["disk_total_bytes"].as_u64().unwrap());
        assert!(s["load_average"]["1m"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["gpus"], serde_json::json!([]), "no GPU on this machine");
        assert!(s["temperatures"].is_array());
        assert!(s["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    let (_, body) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    assert_eq!(body["status"], "online");
    assert!(body["last_heartbeat"].is_string());
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(body["hostname"], hostname.trim());
    assert_eq!(body["architecture"], std::env::consts::ARCH);
    assert_eq!(
        body["hardware"]["total_memory_mb"].as_u64().unwrap(),
        mem / (1024 * 1024)
    );
    assert_eq!(body["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(body["certificate_expires_at"].is_string());

    // A clean stop: exit 0 and offline at once (the session closes).
    assert!(agent.terminate().success(), "agent exits 0 on SIGTERM");
    wait_until("offline after SIGTERM", TIMEOUT, || async {
        let (_, b) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        (b["status"] == "offline").then_some(())
    })
    .await;
    let before = all_samples(&cp, "acme", &key, &device).await;
    let max_before = before
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .max()
        .unwrap();

    // Restart: numbering continues, nothing is stored twice.
    let mut agent = AgentProc::run(state.path(), "200ms");
    let after = wait_until("samples after restart", TIMEOUT, || async {
        let s = all_samples(&cp, "acme", &key, &device).await;
        (s.len() >= before.len() + 3).then_some(s)
    })
    .await;
    let seqs: Vec<u64> = after.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "strictly increasing, no duplicates: {seqs:?}"
    );
    assert!(
        seqs[before.len()] > max_before,
        "seqs are not reused after a restart"
    );

    // A hard kill: the control plane notices the dead connection.
    agent.kill9();
    wait_until("offline after SIGKILL", TIMEOUT, || async {
        let (_, b) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        (b["status"] == "offline").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn install_ids_are_single_use_and_checked() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "cam-2").await;

    // Wrong install ID: refused, with its own exit status.
    let state = tempfile::tempdir().unwrap();
    let out = enroll(&cp, "inst_00000000000000000000000000000000", state.path());
    assert_eq!(
        out.status.code(),
        Some(outpost_agent::EXIT_ENROLL_REFUSED as i32)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown install ID"));

    // Right one, then the agent connects once: the install ID is spent.
    let out = enroll(&cp, &install_id, state.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut agent = AgentProc::run(state.path(), "1s");
    wait_until("online", TIMEOUT, || async {
        let (_, b) = cp
            .get_json(&format!("/acme/devices/v2/{device}"), &key)
            .await;
        (b["status"] == "online").then_some(())
    })
    .await;
    agent.terminate();

    let other = tempfile::tempdir().unwrap();
    let out = enroll(&cp, &install_id, other.path());
    assert_eq!(
        out.status.code(),
        Some(outpost_agent::EXIT_ENROLL_REFUSED as i32)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already been used"), "{stderr}");

    // Enrolling an enrolled state dir whose certificate the control plane
    // still takes is refused without --force (install.rs: re-enrollment).
    let out = enroll(&cp, &install_id, state.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is enrolled as device") && stderr.contains("give --force"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_refuses_a_control_plane_it_was_not_told_to_trust() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (_, install_id) = cp.create_device("acme", &key, "cam-3").await;

    // A CA file from somewhere else.
    let foreign = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let foreign_ca = foreign.path().join("ca.crt");
    std::fs::write(&foreign_ca, ca.cert.pem()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = agent_cmd(&[
        "enroll",
        "--server",
        &cp.grpc_url(),
        "--install-id",
        &install_id,
        "--ca-file",
    ])
    .arg(&foreign_ca)
    .arg("--state-dir")
    .arg(state.path())
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS error") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );

    // A wrong pinned fingerprint.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = agent_cmd(&[
        "enroll",
        "--server",
        &cp.grpc_url(),
        "--install-id",
        &install_id,
    ])
    .args(["--ca-fingerprint", &wrong, "--state-dir"])
    .arg(state.path())
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pinned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The right fingerprint works, and the install ID was not burnt by the failures.
    let out = agent_cmd(&[
        "enroll",
        "--server",
        &cp.grpc_url(),
        "--install-id",
        &install_id,
    ])
    .args(["--ca-fingerprint", &cp.fingerprint, "--state-dir"])
    .arg(state.path())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::fs::read_to_string(state.path().join("ca.crt")).unwrap();
    let original = std::fs::read_to_string(cp.ca_path()).unwrap();
    assert_eq!(
        saved.trim().replace("\r\n", "\n"),
        original.trim().replace("\r\n", "\n"),
        "the pinned CA is saved for later connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_stops_cleanly_and_keeps_its_ca_and_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut cp = ControlPlane::start_in(&dir, &[]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, _) = cp.create_device("acme", &key, "kept").await;
    let fp = cp.fingerprint.clone();
    assert!(cp.stop().success(), "exit 0 on SIGTERM");
    drop(cp);
    let cp = ControlPlane::start_in(&dir, &[]);
    assert_eq!(cp.fingerprint, fp, "same CA after a restart");
    let (status, _) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_rides_out_a_control_plane_restart_without_losing_or_repeating_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut cp = ControlPlane::start_in(&dir, &[]);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "survivor").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let _agent = AgentProc::run(state.path(), "200ms");
    wait_until("first samples", TIMEOUT, || async {
        (all_samples(&cp, "acme", &key, &device).await.len() >= 3).then_some(())
    })
    .await;

    // Down for a while: the agent keeps sampling into its backlog.
    let rest_port = cp.rest.rsplit(':').next().unwrap().to_string();
    let grpc_port = cp.grpc_port;
    assert!(cp.stop().success());
    drop(cp);
    let agent_status = || {
        let out = agent_cmd(&["status", "--state-dir"])
            .arg(state.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut pending_seen = 0;
    wait_until(
        "samples queued while the control plane is down",
        TIMEOUT,
        || {
            let text = agent_status();
            pending_seen = text
                .lines()
                .find_map(|l| l.strip_prefix("backlog:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            async move { (pending_seen >= 5).then_some(()) }
        },
    )
    .await;

    let cp = ControlPlane::start_at(
        &dir,
        &format!("127.0.0.1:{rest_port}"),
        &format!("127.0.0.1:{grpc_port}"),
        &[],
    );
    // Everything taken during the outage arrives: contiguous, once each.
    let samples = wait_until("backlog delivered after restart", TIMEOUT, || async {
        let s = all_samples(&cp, "acme", &key, &device).await;
        let seqs: Vec<u64> = s.iter().map(|x| x["seq"].as_u64().unwrap()).collect();
        (seqs.len() >= 3 + pending_seen as usize + 2).then_some(seqs)
    })
    .await;
    assert_eq!(samples[0], 1);
    assert!(
        samples.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap and no duplicate across the outage: {samples:?}"
    );
    let (_, body) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    assert_eq!(body["status"], "online");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_takes_settings_from_env_and_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("from-env");
    let cfg = tmp.path().join("cp.toml");
    std::fs::write(
        &cfg,
        "grpc-listen = \"127.0.0.1:0\"\ndevice-cert-lifetime = \"1h\"\nrest-listen = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(cp_bin());
    cmd.arg("serve")
        .env("OUTPOST_CONFIG", &cfg)
        .env("OUTPOST_DATA_DIR", &dir)
        // The environment beats the file's unusable port 1.
        .env("OUTPOST_REST_LISTEN", "127.0.0.1:0");
    if let Some(url) = test_database(&dir) {
        cmd.env("OUTPOST_DATABASE_URL", url);
    }
    let cp = ControlPlane::spawn(cmd, &dir);
    assert!(
        dir.join("pki/ca.crt").exists(),
        "data dir taken from OUTPOST_DATA_DIR"
    );
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "short-lived").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let (_, body) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    let expires = time::OffsetDateTime::parse(
        body["certificate_expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::minutes(55) && left <= time::Duration::hours(1),
        "device-cert-lifetime from the file: {left}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_changes_reach_a_connected_agent_at_once() {
    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "tunable").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let _agent = AgentProc::run(state.path(), "200ms");
    let applied = |want: u64| {
        let cp = &cp;
        let key = &key;
        let device = &device;
        async move {
            wait_until(
                &format!("config version {want} applied"),
                TIMEOUT,
                || async {
                    let (_, b) = cp
                        .get_json(&format!("/acme/devices/v2/{device}"), key)
                        .await;
                    (b["config_applied_version"] == want).then_some(())
                },
            )
            .await
        }
    };
    applied(1).await; // the initial config, at session start

    let put = |cfg: serde_json::Value| {
        let url = format!("{}/acme/devices/v2/{device}/config", cp.rest);
        let key = key.clone();
        async move {
            let r = reqwest::Client::new()
                .put(url)
                .bearer_auth(key)
                .json(&cfg)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    put(serde_json::json!({"telemetry_interval_secs": 1})).await;
    applied(2).await;
    let since = all_samples(&cp, "acme", &key, &device).await.len();
    let slow = wait_until("3 samples at the new interval", TIMEOUT, || async {
        let s = all_samples(&cp, "acme", &key, &device).await;
        (s.len() >= since + 4).then(|| s[since + 1..].to_vec())
    })
    .await;
    let ts: Vec<time::OffsetDateTime> = slow
        .iter()
        .map(|s| {
            time::OffsetDateTime::parse(
                s["timestamp"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        })
        .collect();
    for w in ts.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= time::Duration::milliseconds(900),
            "samples {gap} apart under a 1 s interval"
        );
    }
    // Removing the key gives the agent its own interval back.
    put(serde_json::json!({})).await;
    applied(3).await;
    let (_, events) = cp
        .get_json(&format!("/acme/devices/v2/{device}/events"), &key)
        .await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"config_changed") && kinds.contains(&"config_applied"),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    if test_database(&dir).is_some() {
        return; // PostgreSQL: no database files here.
    }
    // umask 000: files created without an explicit mode would be 0666.
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(cp_bin())
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .args([
            "--rest-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ]);
    let cp = ControlPlane::spawn(cmd, &dir);
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    cp.create_device("acme", &key, "cam-1").await;
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "the data dir");
    for f in [
        "outpost.db",
        "outpost.db-wal",
        "outpost.db-shm",
        "pki/ca.key",
    ] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
}
