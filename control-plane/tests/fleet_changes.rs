//! Changing what runs on the fleet (issue 20), end to end: the real
//! `outpost-control-plane`, `outpost-agent` and `outpostctl` binaries, real
//! TLS on 127.0.0.1, real signed artifacts unpacked into real directories.
//! With `OUTPOST_TEST_DATABASE_URL` the control plane runs on PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WS: &str = "acme";
/// Installing includes a health window; a rollout of two waves takes a few.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// A control plane with workspace `acme`, an operator key, and a publisher
/// key the workspace trusts.
struct Fleet {
    cp: ControlPlane,
    key: String,
    tmp: tempfile::TempDir,
    /// The trusted publisher's private key file and public key.
    sign_key: PathBuf,
    public_key: String,
}

/// A box: its device id, state dir, artifacts dir and running agent.
struct BoxUnderTest {
    id: String,
    state: PathBuf,
    artifacts: PathBuf,
    agent: Option<AgentProc>,
    public_keys: Vec<String>,
}

impl Fleet {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let token_file = tmp.path().join("scrape-token");
        std::fs::write(&token_file, SCRAPE_TOKEN).unwrap();
        let cp = ControlPlane::start_in(
            &tmp.path().join("data"),
            &["--metrics-token-file", token_file.to_str().unwrap()],
        );
        cp.create_workspace(WS, &[]);
        let key = cp.api_key(WS, &["device:read", "device:update"]);
        let (sign_key, public_key) = keygen(tmp.path(), "publisher.pem");
        let out = cp.admin(&["publisher-key", "add", "--workspace", WS, &public_key]);
        assert!(out.status.success(), "{}", stderr(&out));
        Fleet {
            cp,
            key,
            tmp,
            sign_key,
            public_key,
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(ctl_bin())
            .args(args)
            .env("OUTPOST_URL", &self.cp.rest)
            .env("OUTPOST_API_KEY", &self.key)
            .env("OUTPOST_WORKSPACE", WS)
            .env_remove("OUTPOST_CA_FILE")
            .output()
            .expect("run outpostctl")
    }

    /// The last line of a successful outpostctl run.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "outpostctl {args:?}: {}",
            stderr(&out)
        );
        last_line(&out)
    }

    /// A release directory with `VERSION` holding `version` and the given
    /// extra files, published as `name@version` with `extra` flags.
    fn publish(&self, name: &str, version: &str, extra: &[&str]) -> String {
        let dir = self.release_dir(name, version);
        let mut args = vec![
            "artifact",
            "publish",
            "--name",
            name,
            "--version",
            version,
            "--sign-key",
        ];
        let key = self.sign_key.to_str().unwrap().to_string();
        args.push(&key);
        args.extend_from_slice(extra);
        let path = dir.join("app");
        let path = path.to_str().unwrap().to_string();
        args.push(&path);
        self.ctl_ok(&args)
    }

    fn release_dir(&self, name: &str, version: &str) -> PathBuf {
        let dir = self.tmp.path().join(format!("src-{name}-{version}"));
        std::fs::create_dir_all(dir.join("app/bin")).unwrap();
        std::fs::write(dir.join("app/VERSION"), version).unwrap();
        std::fs::write(dir.join("app/bin/run.sh"), "#!/bin/sh\necho running\n").unwrap();
        dir
    }

    /// A device labelled `labels`, enrolled and running with `public_keys`
    /// as the keys it trusts.
    async fn device(&self, name: &str, labels: Value, public_keys: &[&str]) -> BoxUnderTest {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "devices/v2",
                Some(json!({"device_name": name, "device_type": "edge", "labels": labels})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["deviceId"].as_str().unwrap().to_string();
        let install = body["installId"].as_str().unwrap();
        let state = self.tmp.path().join(format!("state-{name}"));
        let out = enroll(&self.cp, install, &state);
        assert!(out.status.success(), "{}", stderr(&out));
        let mut b = BoxUnderTest {
            id,
            artifacts: state.join("artifacts"),
            state,
            agent: None,
            public_keys: public_keys.iter().map(|s| s.to_string()).collect(),
        };
        b.start(&[]);
        b
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}/{WS}/{path}", self.cp.rest))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn rollout(&self, id: &str) -> Value {
        let out = self.ctl(&["-o", "json", "rollout", "get", id]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the rollout satisfies `f`; returns it.
    async fn wait_rollout(&self, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let r = wait_until_or(what, ROLLOUT_TIMEOUT, || {
            let r = self.rollout(id);
            let ok = f(&r);
            last = r.clone();
            async move { ok.then_some(r) }
        })
        .await;
        r.unwrap_or_else(|| panic!("timed out waiting for {what}: {last:#}"))
    }
}

/// Polls like [`wait_until`] but returns `None` at the deadline.
async fn wait_until_or<T, F, Fut>(_what: &str, timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl BoxUnderTest {
    fn start(&mut self, env: &[(&str, &str)]) {
        let mut args: Vec<&str> = Vec::new();
        for k in &self.public_keys {
            args.extend(["--publisher-key", k]);
        }
        self.agent = Some(AgentProc::run_with(&self.state, "1s", &args, env));
    }

    /// What `current` points at: the release's VERSION file (a complete
    /// release always has one), or None without a current release.
    fn current(&self, name: &str) -> Option<String> {
        let cur = self.artifacts.join(name).join("current");
        std::fs::symlink_metadata(&cur).ok()?;
        Some(
            std::fs::read_to_string(cur.join("app/VERSION"))
                .unwrap_or_else(|e| panic!("current of {name} is not a complete release: {e}")),
        )
    }
}

fn keygen(dir: &Path, file: &str) -> (PathBuf, String) {
    let path = dir.join(file);
    let out = Command::new(ctl_bin())
        .args(["artifact", "keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let public = last_line(&out);
    assert!(public.starts_with("ed25519:"), "{public}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key file is private");
    (path, public)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A device's entry in a rollout's JSON.
fn device_of<'a>(r: &'a Value, device: &str) -> &'a Value {
    r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == device)
        .unwrap_or_else(|| panic!("{device} is not in {r:#}"))
}

fn device_state<'a>(r: &'a Value, device: &str) -> &'a str {
    device_of(r, device)["state"].as_str().unwrap()
}

fn device_wave(r: &Value, device: &str) -> u64 {
    device_of(r, device)["wave"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_wave_rollout_completes_and_every_box_runs_the_new_release() {
    let f = Fleet::start();
    let pk = f.public_key.clone();
    let a = f.device("cam-1", json!({"site": "berlin"}), &[&pk]).await;
    let b = f.device("cam-2", json!({"site": "berlin"}), &[&pk]).await;
    let other = f.device("cam-3", json!({"site": "paris"}), &[&pk]).await;

    assert_eq!(
        f.publish(
            "detector",
            "1.0.0",
            &["--health-command", "test -f app/VERSION"]
        ),
        "detector@1.0.0"
    );
    let listed = f.ctl(&["-o", "json", "artifact", "list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("1.0.0"));

    let id = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "detector@1.0.0",
        "--selector",
        "site=berlin",
        "--waves",
        "1,100%",
    ]);
    let r = f
        .wait_rollout(&id, "the rollout to complete", |r| {
            r["state"] == "completed"
        })
        .await;
    assert_eq!(r["artifact"], "detector@1.0.0");
    assert_eq!(r["devices"].as_array().unwrap().len(), 2, "{r:#}");
    for d in [&a, &b] {
        assert_eq!(device_state(&r, &d.id), "succeeded", "{r:#}");
        assert_eq!(d.current("detector").as_deref(), Some("1.0.0"));
    }
    // One device in each wave (numbered from 1).
    let mut waves = [device_wave(&r, &a.id), device_wave(&r, &b.id)];
    waves.sort();
    assert_eq!(waves, [1, 2]);
    // The box outside the selector was not touched.
    assert_eq!(other.current("detector"), None);

    // The device shows what it runs, and an event says it was installed.
    let (_, dev) = f
        .send(reqwest::Method::GET, &format!("devices/v2/{}", a.id), None)
        .await;
    assert_eq!(dev["artifacts"]["detector"], "1.0.0", "{dev:#}");
    let (_, events) = f
        .send(
            reqwest::Method::GET,
            &format!("devices/v2/{}/events", a.id),
            None,
        )
        .await;
    assert!(
        events.to_string().contains("artifact_installed"),
        "{events:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_health_check_rolls_the_first_box_back_and_pauses_before_the_second_wave() {
    let f = Fleet::start();
    let pk = f.public_key.clone();
    let a = f.device("cam-1", json!({"site": "berlin"}), &[&pk]).await;
    let b = f.device("cam-2", json!({"site": "berlin"}), &[&pk]).await;
    // Version 1 everywhere; its post-install leaves a trace each time it runs.
    let trace = "echo \"$(cat app/VERSION)\" >> ../../post-install.log";
    f.publish("detector", "1", &["--post-install", trace]);
    let first = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "detector@1",
        "--selector",
        "site=berlin",
    ]);
    f.wait_rollout(&first, "version 1 everywhere", |r| {
        r["state"] == "completed"
    })
    .await;

    // Version 2 cannot pass its health check.
    f.publish(
        "detector",
        "2",
        &[
            "--post-install",
            trace,
            "--health-command",
            "echo 'model failed to load' >&2; exit 3",
            "--health-window",
            "3s",
        ],
    );
    let id = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "detector@2",
        "--selector",
        "site=berlin",
        "--waves",
        "1,100%",
        "--max-failures",
        "0",
    ]);
    let r = f
        .wait_rollout(&id, "the rollout to pause", |r| r["state"] == "paused")
        .await;
    let (first_box, second_box) = if device_wave(&r, &a.id) == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(device_state(&r, &first_box.id), "rolled_back", "{r:#}");
    assert_eq!(device_state(&r, &second_box.id), "pending", "{r:#}");
    assert!(
        r["reason"].as_str().unwrap_or_default().contains("failure"),
        "{r:#}"
    );
    // Both boxes run version 1: the first was switched back, the second never moved.
    assert_eq!(first_box.current("detector").as_deref(), Some("1"));
    assert_eq!(second_box.current("detector").as_deref(), Some("1"));
    // The old release's post-install ran again after the switch back.
    let log =
        std::fs::read_to_string(first_box.artifacts.join("detector/post-install.log")).unwrap();
    assert_eq!(log.lines().collect::<Vec<_>>(), ["1", "2", "1"], "{log}");
    let err = device_of(&r, &first_box.id)["error"].to_string();
    assert!(err.contains("health"), "{err}");

    // Aborting it leaves everything as it is.
    f.ctl_ok(&["rollout", "abort", &id]);
    assert_eq!(f.rollout(&id)["state"], "aborted");
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_signatures_are_refused_by_the_control_plane_and_by_the_box() {
    let f = Fleet::start();
    // A key nobody trusts: the control plane refuses the manifest.
    let (rogue_key, rogue_public) = keygen(f.tmp.path(), "rogue.pem");
    let dir = f.release_dir("detector", "6.6.6");
    let out = f.ctl(&[
        "artifact",
        "publish",
        "--name",
        "detector",
        "--version",
        "6.6.6",
        "--sign-key",
        rogue_key.to_str().unwrap(),
        dir.join("app").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("trusts"), "{}", stderr(&out));

    // A control plane that trusts it (compromised, or misconfigured): the box,
    // which trusts only the real publisher, refuses it and installs nothing.
    let out =
        f.cp.admin(&["publisher-key", "add", "--workspace", WS, &rogue_public]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pk = f.public_key.clone();
    let a = f.device("cam-1", json!({"site": "berlin"}), &[&pk]).await;
    let out = f.ctl(&[
        "artifact",
        "publish",
        "--name",
        "detector",
        "--version",
        "6.6.6",
        "--sign-key",
        rogue_key.to_str().unwrap(),
        dir.join("app").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "detector@6.6.6",
        "--selector",
        "site=berlin",
    ]);
    let r = f
        .wait_rollout(&id, "the box to refuse", |r| {
            device_state(r, &a.id) == "failed"
        })
        .await;
    let err = r["devices"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("trusted"), "{err}");
    assert_eq!(a.current("detector"), None);
    assert!(!a.artifacts.join("detector/releases/6.6.6").exists());
}

/// A tar whose one entry is named `name` (written raw: the tar crate
/// refuses to build such paths).
fn tar_with_entry(name: &str, body: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_with_a_path_outside_its_release_is_refused() {
    use outpost_common::artifact::{FORMAT_TAR, MANIFEST_SCHEMA, Manifest, SigningKey};
    let f = Fleet::start();
    let pk = f.public_key.clone();
    let a = f.device("cam-1", json!({"site": "berlin"}), &[&pk]).await;
    let key = SigningKey::from_pem(&std::fs::read_to_string(&f.sign_key).unwrap()).unwrap();

    for (version, entry) in [("1", "../../escaped"), ("2", "/tmp/outpost-escaped")] {
        let payload = tar_with_entry(entry, b"owned\n");
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA,
            name: "evil".into(),
            version: version.into(),
            format: FORMAT_TAR.into(),
            size: payload.len() as u64,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &payload)),
            post_install: None,
            health_command: None,
            health_window_secs: 10,
            created_at: "2026-12-03T12:00:00Z".into(),
        }
        .to_json();
        let sig = key.sign(&manifest);
        let (status, body) = f
            .send(
                reqwest::Method::POST,
                "devices/v2/artifacts",
                Some(json!({"manifest": manifest, "signature": sig})),
            )
            .await;
        assert!(status == 201 || status == 200, "{status} {body}");
        let resp = reqwest::Client::new()
            .put(format!(
                "{}/{WS}/devices/v2/artifacts/evil/{version}/payload",
                f.cp.rest
            ))
            .bearer_auth(&f.key)
            .header("content-type", "application/octet-stream")
            .body(payload)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let id = f.ctl_ok(&[
            "rollout",
            "create",
            "--artifact",
            &format!("evil@{version}"),
            "--selector",
            "site=berlin",
        ]);
        let r = f
            .wait_rollout(&id, "the box to refuse the bundle", |r| {
                device_state(r, &a.id) == "failed"
            })
            .await;
        let err = r["devices"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains(entry), "the refusal names the entry: {err}");
        assert_eq!(a.current("evil"), None);
        // The failure paused it; another version needs it out of the way.
        f.ctl_ok(&["rollout", "abort", &id]);
    }
    assert!(!a.artifacts.join("escaped").exists());
    assert!(!a.state.join("escaped").exists());
    assert!(!Path::new("/tmp/outpost-escaped").exists());
}

impl BoxUnderTest {
    /// Waits for the agent to end (a crash point aborts it).
    async fn wait_exit(&mut self) {
        let agent = self.agent.as_mut().unwrap();
        wait_until("the agent to exit", TIMEOUT, || {
            let exited = agent.try_exit().is_some();
            async move { exited.then_some(()) }
        })
        .await;
        self.agent = None;
    }

    fn stop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.terminate();
        }
    }
}

/// Random bytes: nothing for a transport to compress.
fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    std::fs::write(path, &data).unwrap();
    data
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_cut_half_way_resumes_from_the_bytes_on_disk() {
    let f = Fleet::start();
    let pk = f.public_key.clone();
    let mut a = f.device("cam-1", json!({"site": "berlin"}), &[&pk]).await;
    a.stop();
    a.start(&[("OUTPOST_AGENT_CRASH_AT", "artifact-download-half")]);

    let src = f.tmp.path().join("big");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/VERSION"), "1").unwrap();
    let weights = random_file(&src.join("app/weights.bin"), 24 << 20);
    let key = f.sign_key.to_str().unwrap().to_string();
    let app = src.join("app").to_str().unwrap().to_string();
    f.ctl_ok(&[
        "artifact",
        "publish",
        "--name",
        "big",
        "--version",
        "1",
        "--sign-key",
        &key,
        &app,
    ]);
    let (_, art) = f
        .send(reqwest::Method::GET, "devices/v2/artifacts/big/1", None)
        .await;
    let size = art["size"].as_u64().unwrap();
    let id = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "big@1",
        "--selector",
        "site=berlin",
    ]);

    // The agent dies with half the payload in staging.
    a.wait_exit().await;
    let part = a.state.join("staging/big@1.part");
    let have = std::fs::metadata(&part).unwrap().len();
    assert!(have >= size / 2 && have < size, "{have} of {size}");
    let served_before = served_bytes(&f).await;

    // Started again, it fetches only what it lacks.
    a.start(&[]);
    let r = f
        .wait_rollout(&id, "the install to finish", |r| r["state"] == "completed")
        .await;
    assert_eq!(device_state(&r, &a.id), "succeeded", "{r:#}");
    let installed = std::fs::read(a.artifacts.join("big/current/app/weights.bin")).unwrap();
    assert!(
        installed == weights,
        "the installed file is the published one"
    );
    let resumed = served_bytes(&f).await - served_before;
    assert!(
        resumed <= size - have + (1 << 20),
        "after the restart {resumed} bytes were served for the {} missing",
        size - have
    );
    assert!(
        !part.exists(),
        "the staging file is removed after the install"
    );
}

/// The control plane's count of artifact payload bytes it has served.
async fn served_bytes(f: &Fleet) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", f.cp.rest))
        .bearer_auth(SCRAPE_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(SERVED_METRIC))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {SERVED_METRIC} in /metrics:\n{text}")) as u64
}

/// The scrape token: the control plane's own metrics are for it alone.
const SCRAPE_TOKEN: &str = "scrape-token-for-the-rollout-tests";

const SERVED_METRIC: &str = "outpost_artifact_bytes_served_total";

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_every_install_step_leaves_a_complete_release_and_finishes_or_rolls_back() {
    let f = Fleet::start();
    let pk = f.public_key.clone();
    let mut a = f.device("cam-1", json!({"site": "berlin"}), &[&pk]).await;
    f.publish("detector", "1", &[]);
    let first = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "detector@1",
        "--selector",
        "site=berlin",
    ]);
    f.wait_rollout(&first, "version 1", |r| r["state"] == "completed")
        .await;

    // Before the switch the install resumes; after it, the new release never
    // proved healthy, so the box goes back to the old one.
    let steps = [
        ("artifact-downloaded", "succeeded"),
        ("artifact-verified", "succeeded"),
        ("artifact-unpacked", "succeeded"),
        ("artifact-switched", "rolled_back"),
        ("artifact-post-installed", "rolled_back"),
        ("artifact-health", "rolled_back"),
    ];
    let mut running = "1".to_string();
    for (i, (point, outcome)) in steps.into_iter().enumerate() {
        let version = format!("{}", i + 2);
        f.publish("detector", &version, &["--health-command", "true"]);
        a.stop();
        a.start(&[("OUTPOST_AGENT_CRASH_AT", point)]);
        let id = f.ctl_ok(&[
            "rollout",
            "create",
            "--artifact",
            &format!("detector@{version}"),
            "--selector",
            "site=berlin",
        ]);
        a.wait_exit().await;
        let now = a.current("detector").unwrap();
        assert!(
            now == running || now == version,
            "{point}: current is {now}, neither {running} nor {version}"
        );

        a.start(&[]);
        let r = f
            .wait_rollout(&id, &format!("{point}: the install to end"), |r| {
                matches!(
                    device_state(r, &a.id),
                    "succeeded" | "rolled_back" | "failed"
                )
            })
            .await;
        assert_eq!(device_state(&r, &a.id), outcome, "{point}: {r:#}");
        let want = if outcome == "succeeded" {
            version.clone()
        } else {
            running.clone()
        };
        assert_eq!(
            a.current("detector").as_deref(),
            Some(want.as_str()),
            "{point}"
        );
        if outcome == "succeeded" {
            running = version;
        } else {
            f.ctl_ok(&["rollout", "abort", &id]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn waves_wait_for_approval_and_an_offline_box_installs_when_it_comes_back() {
    let f = Fleet::start();
    let pk = f.public_key.clone();
    let a = f.device("cam-1", json!({"site": "berlin"}), &[&pk]).await;
    let b = f.device("cam-2", json!({"site": "berlin"}), &[&pk]).await;
    let mut c = f.device("cam-3", json!({"site": "depot"}), &[&pk]).await;
    c.stop();
    f.publish("detector", "1", &[]);

    // With --approve-waves the rollout waits after the first wave.
    let id = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "detector@1",
        "--selector",
        "site=berlin",
        "--waves",
        "1,100%",
        "--approve-waves",
    ]);
    let r = f
        .wait_rollout(&id, "the first wave done, awaiting approval", |r| {
            r["state"] == "paused"
        })
        .await;
    assert_eq!(r["reason"], "awaiting approval", "{r:#}");
    let (first, second) = if device_wave(&r, &a.id) == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(device_state(&r, &first.id), "succeeded");
    assert_eq!(device_state(&r, &second.id), "pending");
    assert_eq!(
        second.current("detector"),
        None,
        "not released before approval"
    );
    // resume is not approve.
    assert!(!f.ctl(&["rollout", "resume", &id]).status.success());
    f.ctl_ok(&["rollout", "approve", &id]);
    let r = f
        .wait_rollout(&id, "the rollout completed", |r| r["state"] == "completed")
        .await;
    assert_eq!(device_state(&r, &second.id), "succeeded");
    assert_eq!(second.current("detector").as_deref(), Some("1"));

    // Boxes already on the version report it at once: nothing is installed again.
    let again = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "detector@1",
        "--selector",
        "site=berlin",
    ]);
    let r = f
        .wait_rollout(&again, "the same version again", |r| {
            r["state"] == "completed"
        })
        .await;
    assert_eq!(device_state(&r, &a.id), "succeeded");
    let releases: Vec<_> = std::fs::read_dir(a.artifacts.join("detector/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(releases, ["1"], "one release, installed once");

    // An offline box: the wave times out and the rollout completes without
    // it; the box installs when it comes back.
    let id = f.ctl_ok(&[
        "rollout",
        "create",
        "--artifact",
        "detector@1",
        "--selector",
        "site=depot",
        "--wave-timeout",
        "1s",
    ]);
    let r = f
        .wait_rollout(&id, "the rollout completed without the offline box", |r| {
            r["state"] == "completed"
        })
        .await;
    assert_eq!(device_state(&r, &c.id), "pending");
    c.start(&[]);
    f.wait_rollout(&id, "the box installed after coming back", |r| {
        device_state(r, &c.id) == "succeeded"
    })
    .await;
    assert_eq!(c.current("detector").as_deref(), Some("1"));
}
