//! The installer on temporary directories with real signed payloads (tars
//! built here, manifests signed with a generated key).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use outpost_common::artifact::{FORMAT_TAR, MANIFEST_SCHEMA, Manifest, SigningKey};
use outpost_proto::v1::{ArtifactSignature, DesiredArtifact};

use super::install::{self, Installer, Step};
use super::plan::Outcome;

struct Box_ {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    key: SigningKey,
    lines: Arc<Mutex<Vec<String>>>,
}

enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A tar whose entry names are written raw (the builder would refuse the
/// bad ones this test needs).
fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        let (name, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match e {
            E::File(n, d) => (n, d, tar::EntryType::Regular, None),
            E::Dir(n) => (n, b"", tar::EntryType::Directory, None),
            E::Symlink(n, t) => (n, b"", tar::EntryType::Symlink, Some(t)),
            E::Hardlink(n, t) => (n, b"", tar::EntryType::Link, Some(t)),
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(match kind {
            tar::EntryType::Directory => 0o755,
            _ if name.ends_with(".sh") => 0o755,
            _ => 0o644,
        });
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn good_tar(version: &str) -> Vec<u8> {
    let app = format!("app {version}\n");
    tar(&[
        E::Dir("bin"),
        E::File("bin/app", app.as_bytes()),
        E::Symlink("bin/run", "app"),
        E::Symlink("top", "bin/../bin/app"),
        E::File("health.sh", b"#!/bin/sh\necho healthy from the script\n"),
    ])
}

impl Box_ {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Self {
            _tmp: tmp,
            root,
            key: SigningKey::generate().unwrap().0,
            lines: Arc::default(),
        }
    }

    fn installer(&self) -> Installer {
        let lines = self.lines.clone();
        Installer::new(
            self.root.join("artifacts"),
            self.root.join("staging"),
            vec![self.key.public_key()],
            1 << 30,
            Arc::new(move |name: &str, sev, line| {
                lines.lock().unwrap().push(format!("{name} {sev} {line}"))
            }),
        )
    }

    fn log(&self) -> PathBuf {
        self.root.join("post-install.log")
    }

    /// A desired entry for `payload`, signed by `key`, its payload staged.
    fn stage(
        &self,
        inst: &Installer,
        key: &SigningKey,
        version: &str,
        payload: &[u8],
        health: Option<&str>,
    ) -> DesiredArtifact {
        let m = Manifest {
            schema: MANIFEST_SCHEMA,
            name: "det".into(),
            version: version.into(),
            format: FORMAT_TAR.into(),
            size: payload.len() as u64,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, payload)),
            post_install: Some(format!(
                "echo post-install {version}; echo {version} >> {}",
                self.log().display()
            )),
            health_command: health.map(str::to_string),
            health_window_secs: 5,
            created_at: "2026-12-03T10:00:00Z".into(),
        };
        let json = m.to_json();
        let sig = key.sign(&json);
        std::fs::create_dir_all(&inst.staging).unwrap();
        std::fs::write(inst.part("det", version), payload).unwrap();
        DesiredArtifact {
            name: "det".into(),
            version: version.into(),
            manifest_json: json,
            signature: Some(ArtifactSignature {
                public_key: sig.public_key.to_string(),
                signature: sig.signature,
            }),
            rollout_id: format!("r-{version}"),
        }
    }

    async fn install(&self, inst: &Arc<Installer>, version: &str, health: Option<&str>) -> Outcome {
        let d = self.stage(inst, &self.key, version, &good_tar(version), health);
        inst.install(&d, |_| {}).await.unwrap()
    }

    fn post_installs(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

fn dir(inst: &Installer) -> PathBuf {
    inst.artifact_dir("det")
}

/// `current` names a complete release of `version`.
fn assert_current(inst: &Installer, version: &str) {
    assert_eq!(inst.current("det").as_deref(), Some(version));
    let app = std::fs::read_to_string(dir(inst).join("current/bin/app")).unwrap();
    assert_eq!(app, format!("app {version}\n"));
    assert_eq!(
        std::fs::read_to_string(dir(inst).join("current/bin/run")).unwrap(),
        app
    );
}

fn releases(inst: &Installer) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir(inst).join("releases"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn installs_switch_current_and_keep_one_previous_release() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    assert_eq!(
        b.install(&inst, "1.0", Some("test -f bin/app && echo healthy"))
            .await,
        Outcome::Succeeded
    );
    assert_current(&inst, "1.0");
    assert_eq!(
        b.install(&inst, "2.0", Some("./health.sh")).await,
        Outcome::Succeeded
    );
    assert_current(&inst, "2.0");
    assert_eq!(
        releases(&inst),
        ["1.0", "2.0"],
        "the previous release is kept"
    );
    assert_eq!(b.install(&inst, "3.0", None).await, Outcome::Succeeded);
    assert_eq!(
        releases(&inst),
        ["2.0", "3.0"],
        "older releases are removed"
    );
    assert!(dir(&inst).join("manifests/3.0.json").is_file());
    assert!(!dir(&inst).join("manifests/1.0.json").exists());
    assert!(
        !inst.part("det", "3.0").exists(),
        "the staging file is removed"
    );
    assert_eq!(b.post_installs(), "1.0\n2.0\n3.0\n");
    let j = inst.journal("det").unwrap();
    assert_eq!(
        (j.step, j.version.as_str(), j.previous.as_deref()),
        (Step::Succeeded, "3.0", Some("2.0"))
    );
    assert_eq!(inst.installed(), [("det".to_string(), "3.0".to_string())]);
    // Command output went to the sink (the device's logs).
    let lines = b.lines.lock().unwrap().clone();
    assert!(lines.contains(&"det info healthy".to_string()), "{lines:?}");
    assert!(
        lines.contains(&"det info healthy from the script".to_string()),
        "an executable in the bundle stays executable: {lines:?}"
    );
    assert!(
        lines.contains(&"det info post-install 2.0".to_string()),
        "{lines:?}"
    );
    // Private: the journal and the artifacts directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir(&inst).join("state.json")), 0o600);
    assert_eq!(mode(&dir(&inst)), 0o700);
}

#[tokio::test]
async fn untrusted_keys_and_no_keys_are_refused_before_anything_is_unpacked() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    let other = SigningKey::generate().unwrap().0;
    let d = b.stage(&inst, &other, "1.0", &good_tar("1.0"), None);
    let out = inst.install(&d, |_| {}).await.unwrap();
    assert!(
        matches!(&out, Outcome::Failed(e) if e.contains("not signed by a trusted")),
        "{out:?}"
    );
    assert!(releases(&inst).is_empty());
    assert_eq!(inst.current("det"), None);
    let mut none = b.installer();
    none.keys.clear();
    let err = none
        .check(&b.stage(&inst, &b.key, "1.0", &good_tar("1.0"), None))
        .unwrap_err();
    assert_eq!(err, "no publisher key configured");
}

#[tokio::test]
async fn a_payload_that_does_not_match_its_hash_is_refused() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    assert_eq!(b.install(&inst, "1.0", None).await, Outcome::Succeeded);
    let d = b.stage(&inst, &b.key, "2.0", &good_tar("2.0"), None);
    let mut bytes = std::fs::read(inst.part("det", "2.0")).unwrap();
    bytes[600] ^= 1;
    std::fs::write(inst.part("det", "2.0"), &bytes).unwrap();
    let out = inst.install(&d, |_| {}).await.unwrap();
    assert!(
        matches!(&out, Outcome::BadPayload(e) if e.contains("SHA-256")),
        "{out:?}"
    );
    assert_current(&inst, "1.0");
    assert_eq!(releases(&inst), ["1.0"]);
    assert!(
        !inst.part("det", "2.0").exists(),
        "a bad payload is not resumed from"
    );
}

#[tokio::test]
async fn bundles_that_reach_outside_the_release_are_refused_naming_the_entry() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            tar(&[E::File("ok", b"1"), E::File("../x", b"evil")]),
            "\"../x\"",
        ),
        (tar(&[E::File("/tmp/outpost-evil-x", b"evil")]), "absolute"),
        (tar(&[E::Dir("a"), E::Symlink("a/l", "../../x")]), "\"a/l\""),
        (
            tar(&[E::File("ok", b"1"), E::Hardlink("h", "ok")]),
            "hard link",
        ),
        (tar(&[E::Symlink("d", "/etc")]), "\"d\""),
        (
            tar(&[E::Symlink("d", "."), E::File("d/y", b"1")]),
            "\"d/y\"",
        ),
        // The symlink after the entry below it: still refused.
        (
            tar(&[E::File("d/y", b"1"), E::Symlink("d", ".")]),
            "\"d/y\"",
        ),
        // Textually inside, but `a` is `.`: `a/..` is `releases/`.
        (
            tar(&[E::Symlink("a", "."), E::Symlink("b", "a/..")]),
            "\"b\"",
        ),
        (
            tar(&[E::Symlink("b", "a/.."), E::Symlink("a", ".")]),
            "\"b\"",
        ),
        // … and to /etc, through ten `a/`.
        (
            tar(&[
                E::Symlink("a", "."),
                E::Symlink(
                    "etc",
                    "a/a/a/a/a/a/a/a/a/a/../../../../../../../../../../etc",
                ),
            ]),
            "\"etc\"",
        ),
        // A directory replaced by a later entry of the same name.
        (tar(&[E::Dir("d"), E::Symlink("d", "/etc")]), "\"d\""),
    ];
    for (payload, named) in cases {
        let b = Box_::new();
        let inst = Arc::new(b.installer());
        assert_eq!(b.install(&inst, "1.0", None).await, Outcome::Succeeded);
        let d = b.stage(&inst, &b.key, "2.0", &payload, None);
        let out = inst.install(&d, |_| {}).await.unwrap();
        assert!(
            matches!(&out, Outcome::Failed(e) if e.contains(named)),
            "{named}: {out:?}"
        );
        assert_current(&inst, "1.0");
        assert_eq!(releases(&inst), ["1.0"], "{named}: nothing unpacked");
        assert!(!b.root.join("artifacts/det/releases/x").exists());
        assert!(!b.root.join("artifacts/det/x").exists());
        assert!(!b.root.join("artifacts/x").exists());
        assert!(!Path::new("/tmp/outpost-evil-x").exists());
        assert_eq!(inst.journal("det").unwrap().step, Step::Failed);
    }
}

#[tokio::test]
async fn a_failed_health_check_rolls_back_and_reruns_the_old_post_install() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    assert_eq!(
        b.install(&inst, "1.0", Some("true")).await,
        Outcome::Succeeded
    );
    let out = b.install(&inst, "2.0", Some("echo sick >&2; exit 3")).await;
    assert!(
        matches!(&out, Outcome::RolledBack(e) if e.contains("health check")),
        "{out:?}"
    );
    assert_current(&inst, "1.0");
    assert_eq!(
        b.post_installs(),
        "1.0\n2.0\n1.0\n",
        "the old post-install ran again"
    );
    assert_eq!(releases(&inst), ["1.0"]);
    let j = inst.journal("det").unwrap();
    assert_eq!(j.step, Step::RolledBack);
    assert!(
        b.lines
            .lock()
            .unwrap()
            .contains(&"det warning sick".to_string())
    );
    // `outpost-agent status` shows it.
    let st = crate::status::artifacts(&inst.dir);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].current.as_deref(), Some("1.0"));
    assert_eq!(st[0].last_version.as_deref(), Some("2.0"));
    assert_eq!(st[0].last_step.as_deref(), Some("rolled_back"));
    assert!(
        st[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("health check")
    );
    // A health command past its window is killed and rolled back.
    let mut slow = b.stage(&inst, &b.key, "3.0", &good_tar("3.0"), None);
    let mut m = Manifest::parse(&slow.manifest_json).unwrap();
    m.health_command = Some("sleep 30".into());
    m.health_window_secs = 1;
    slow.manifest_json = m.to_json();
    let sig = b.key.sign(&slow.manifest_json);
    slow.signature = Some(ArtifactSignature {
        public_key: sig.public_key.to_string(),
        signature: sig.signature,
    });
    let t = std::time::Instant::now();
    let out = inst.install(&slow, |_| {}).await.unwrap();
    assert!(
        matches!(&out, Outcome::RolledBack(e) if e.contains("within 1s")),
        "{out:?}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
    assert_current(&inst, "1.0");
}

#[tokio::test]
async fn a_first_install_that_fails_its_health_leaves_no_current() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    let out = b.install(&inst, "1.0", Some("false")).await;
    assert!(matches!(out, Outcome::RolledBack(_)), "{out:?}");
    assert_eq!(inst.current("det"), None);
    assert!(releases(&inst).is_empty());
}

#[tokio::test]
async fn the_disk_budget_refuses_with_both_numbers() {
    let b = Box_::new();
    let mut inst = b.installer();
    inst.budget = 1000;
    let d = b.stage(&inst, &b.key, "1.0", &good_tar("1.0"), None);
    let m = inst.check(&d).unwrap();
    let err = inst.check_room(&m).unwrap_err();
    assert!(
        err.contains(&format!("{}", m.size * 2)) && err.contains("1000"),
        "{err}"
    );
    inst.budget = m.size * 2;
    inst.check_room(&m).unwrap();
}

#[tokio::test]
async fn a_crash_at_any_step_recovers_to_a_complete_release() {
    for (k, point) in install::POINTS.iter().enumerate() {
        let b = Box_::new();
        let inst = Arc::new(b.installer());
        assert_eq!(
            b.install(&inst, "1.0", Some("true")).await,
            Outcome::Succeeded
        );
        let mut crashing = b.installer();
        crashing.stop_after = Some(point);
        let crashing = Arc::new(crashing);
        let d = b.stage(&crashing, &b.key, "2.0", &good_tar("2.0"), Some("true"));
        assert!(crashing.install(&d, |_| {}).await.is_err(), "{point}");
        // The restart.
        let restarted = Arc::new(b.installer());
        let recovered = restarted.recover_all().await;
        let j = restarted.journal("det").unwrap();
        assert_eq!(recovered, vec![("det".to_string(), j.clone())]);
        let switched = k >= 3; // SWITCHED and later
        if switched {
            assert_eq!(j.step, Step::RolledBack, "{point}");
            assert_eq!(j.error.as_deref(), Some("interrupted by a restart"));
            assert_current(&restarted, "1.0");
            assert_eq!(releases(&restarted), ["1.0"], "{point}");
            assert!(
                b.post_installs().ends_with("1.0\n"),
                "{point}: {}",
                b.post_installs()
            );
        } else {
            assert!(
                matches!(j.step, Step::Succeeded | Step::Unpacking),
                "{point}: {j:?}"
            );
            assert_current(&restarted, "1.0");
            // Before the switch: the install resumes (unpacking from scratch).
            let out = restarted.install(&d, |_| {}).await.unwrap();
            assert_eq!(out, Outcome::Succeeded, "{point}");
            assert_current(&restarted, "2.0");
            assert_eq!(releases(&restarted), ["1.0", "2.0"]);
        }
        assert!(!dir(&restarted).join("current.tmp").exists());
        assert!(releases(&restarted).iter().all(|r| !r.starts_with('.')));
    }
}

async fn next_report(h: &mut super::worker::Handle) -> outpost_proto::v1::ArtifactReport {
    tokio::time::timeout(std::time::Duration::from_secs(10), h.reports.recv())
        .await
        .expect("a report within 10 s")
        .expect("the worker runs")
}

#[tokio::test]
async fn the_worker_recovers_at_start_and_reports_what_it_decides() {
    use super::worker::{self, ToWorker};
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    assert_eq!(
        b.install(&inst, "1.0", Some("true")).await,
        Outcome::Succeeded
    );
    // A crash during the health window of 2.0.
    let mut crashing = b.installer();
    crashing.stop_after = Some(install::HEALTH);
    let crashing = Arc::new(crashing);
    let d2 = b.stage(&crashing, &b.key, "2.0", &good_tar("2.0"), Some("true"));
    assert!(crashing.install(&d2, |_| {}).await.is_err());
    // The restarted agent: recovery rolls back and says so.
    let (sink, lines) = worker::line_channel();
    let mut w = b.installer();
    w.sink = sink;
    let mut h = worker::spawn(w, lines);
    let r = next_report(&mut h).await;
    assert_eq!(
        (r.state.as_str(), r.version.as_str()),
        ("rolled_back", "2.0")
    );
    assert_eq!(r.error, "interrupted by a restart");
    assert_eq!(r.installed.len(), 1);
    assert_eq!(r.installed[0].version, "1.0");
    assert_current(&inst, "1.0");
    // 2.0 for the same rollout is not tried again; 1.0 is current.
    let d1 = b.stage(&inst, &b.key, "1.0", &good_tar("1.0"), None);
    h.tx.send(ToWorker::Desired(vec![d2.clone()])).unwrap();
    let r = next_report(&mut h).await;
    assert_eq!(
        (r.state.as_str(), r.version.as_str()),
        ("rolled_back", "2.0")
    );
    h.tx.send(ToWorker::Desired(vec![d1])).unwrap();
    let r = next_report(&mut h).await;
    assert_eq!((r.state.as_str(), r.version.as_str()), ("succeeded", "1.0"));
}

#[tokio::test]
async fn the_worker_without_a_publisher_key_reports_failed() {
    use super::worker::{self, ToWorker};
    let b = Box_::new();
    let inst = b.installer();
    let d = b.stage(&inst, &b.key, "1.0", &good_tar("1.0"), None);
    let (sink, lines) = worker::line_channel();
    let mut w = b.installer();
    w.sink = sink;
    w.keys.clear();
    let mut h = worker::spawn(w, lines);
    h.tx.send(ToWorker::Desired(vec![d])).unwrap();
    let r = next_report(&mut h).await;
    assert_eq!(r.state, "downloading");
    let r = next_report(&mut h).await;
    assert_eq!(r.state, "failed");
    assert_eq!(r.error, "no publisher key configured");
    assert_eq!(r.rollout_id, "r-1.0");
}

#[tokio::test]
async fn a_crash_inside_the_unpack_or_the_switch_leaves_nothing_half_done() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    assert_eq!(b.install(&inst, "1.0", None).await, Outcome::Succeeded);
    // Killed mid-unpack: a partial `.2.0.tmp`, the journal in `unpacking`;
    // and mid-switch: a `current.tmp` not yet renamed.
    let partial = dir(&inst).join("releases/.2.0.tmp/bin");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("app"), b"half").unwrap();
    std::os::unix::fs::symlink("releases/.2.0.tmp", dir(&inst).join("current.tmp")).unwrap();
    let j = install::Journal {
        version: "2.0".into(),
        rollout_id: "r".into(),
        step: Step::Unpacking,
        previous: None,
        error: None,
    };
    std::fs::write(
        dir(&inst).join("state.json"),
        serde_json::to_vec(&j).unwrap(),
    )
    .unwrap();
    let restarted = b.installer();
    assert_eq!(restarted.recover("det").await, Some(j));
    assert_eq!(releases(&restarted), ["1.0"]);
    assert!(
        std::fs::symlink_metadata(dir(&restarted).join("current.tmp")).is_err(),
        "the half-made link is gone"
    );
    assert_current(&restarted, "1.0");
}

#[tokio::test]
async fn a_failed_switch_back_keeps_the_release_and_retries_the_rollback_at_start() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    assert_eq!(
        b.install(&inst, "1.0", Some("true")).await,
        Outcome::Succeeded
    );
    // The health check fails, and so does switching back (twice: ENOSPC).
    inst.faults.lock().unwrap().switch_to = Some((Some("1.0".into()), 2));
    let out = b.install(&inst, "2.0", Some("exit 3")).await;
    assert!(
        matches!(&out, Outcome::RollbackPending(e) if e.contains("health check")
            && e.contains("switching back to 1.0 failed")
            && e.contains("retried at the next start")),
        "{out:?}"
    );
    // `current` still names 2.0: its release is kept, not deleted under it.
    assert_current(&inst, "2.0");
    assert_eq!(releases(&inst), ["1.0", "2.0"]);
    assert!(dir(&inst).join("manifests/2.0.json").is_file());
    let j = inst.journal("det").unwrap();
    assert!(j.step.switched(), "{j:?}");
    assert_eq!(j.previous.as_deref(), Some("1.0"));
    // Nothing else is installed over a pending rollback.
    let d3 = b.stage(&inst, &b.key, "3.0", &good_tar("3.0"), None);
    let err = inst.begin(&d3).unwrap_err();
    assert!(err.contains("rollback of det@2.0 is pending"), "{err}");
    let out = inst.install(&d3, |_| {}).await.unwrap();
    assert!(
        matches!(&out, Outcome::Failed(e) if e.contains("pending")),
        "{out:?}"
    );
    assert_current(&inst, "2.0");
    assert!(inst.journal("det").unwrap().step.switched());
    // A start that fails to switch back too keeps it pending, again.
    let failing = b.installer();
    failing.faults.lock().unwrap().switch_to = Some((Some("1.0".into()), 2));
    let j = failing.recover("det").await.unwrap();
    assert!(j.step.switched(), "{j:?}");
    assert_current(&failing, "2.0");
    assert_eq!(releases(&failing), ["1.0", "2.0"]);
    // The next start rolls back, saying why (once).
    let restarted = b.installer();
    let j = restarted.recover("det").await.unwrap();
    assert_eq!(j.step, Step::RolledBack);
    let e = j.error.unwrap();
    assert!(
        e.contains("health check") && e.contains("rolled back at start"),
        "{e}"
    );
    assert_eq!(e.matches("rolled back at start").count(), 1, "{e}");
    assert!(!e.contains("switching back"), "{e}");
    assert_current(&restarted, "1.0");
    assert_eq!(releases(&restarted), ["1.0"]);
    assert!(
        b.post_installs().ends_with("1.0\n2.0\n1.0\n"),
        "{}",
        b.post_installs()
    );
}

#[tokio::test]
async fn a_first_install_whose_current_cannot_be_removed_is_kept_for_the_next_start() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    inst.faults.lock().unwrap().switch_to = Some((None, 2));
    let out = b.install(&inst, "1.0", Some("false")).await;
    assert!(
        matches!(&out, Outcome::RollbackPending(e) if e.contains("switching back to no release failed")),
        "{out:?}"
    );
    assert_current(&inst, "1.0");
    assert_eq!(releases(&inst), ["1.0"]);
    let restarted = b.installer();
    assert_eq!(
        restarted.recover("det").await.unwrap().step,
        Step::RolledBack
    );
    assert_eq!(restarted.current("det"), None);
    assert!(releases(&restarted).is_empty());
}

#[tokio::test]
async fn one_failed_switch_back_is_retried_at_once() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    assert_eq!(b.install(&inst, "1.0", None).await, Outcome::Succeeded);
    inst.faults.lock().unwrap().switch_to = Some((Some("1.0".into()), 1));
    let out = b.install(&inst, "2.0", Some("false")).await;
    assert!(matches!(out, Outcome::RolledBack(_)), "{out:?}");
    assert_current(&inst, "1.0");
    assert_eq!(releases(&inst), ["1.0"]);
}

#[tokio::test]
async fn success_is_reported_only_once_journaled() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    assert_eq!(b.install(&inst, "1.0", None).await, Outcome::Succeeded);
    // One failed write of the journal: retried, succeeded.
    inst.faults.lock().unwrap().save = Some((Step::Succeeded, 1));
    assert_eq!(b.install(&inst, "2.0", None).await, Outcome::Succeeded);
    assert_eq!(inst.journal("det").unwrap().step, Step::Succeeded);
    assert_current(&inst, "2.0");
    // Two: rolled back before anything is reported (a restart would have
    // rolled back what the control plane was told runs).
    inst.faults.lock().unwrap().save = Some((Step::Succeeded, 2));
    let out = b.install(&inst, "3.0", None).await;
    assert!(
        matches!(&out, Outcome::RolledBack(e) if e.contains("success could not be recorded")),
        "{out:?}"
    );
    assert_current(&inst, "2.0");
    assert_eq!(releases(&inst), ["1.0", "2.0"]);
    let j = inst.journal("det").unwrap();
    assert_eq!((j.step, j.version.as_str()), (Step::RolledBack, "3.0"));
    // A restart changes nothing.
    let restarted = b.installer();
    restarted.recover("det").await;
    assert_current(&restarted, "2.0");
}

#[tokio::test]
async fn commands_get_a_minimal_environment_not_the_agents() {
    let b = Box_::new();
    let inst = Arc::new(b.installer());
    // The test binary runs with cargo's CARGO_* variables (as the agent runs
    // with agent.env's OUTPOST_ENROLL_TOKEN): none of them may leak.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    assert_eq!(
        b.install(&inst, "1.0", Some("env | sed 's/^/env /'")).await,
        Outcome::Succeeded
    );
    let lines = b.lines.lock().unwrap().clone();
    let vars: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("det info env "))
        .collect();
    let release = dir(&inst).join("releases/1.0");
    for want in [
        format!("PATH={}", install::COMMAND_PATH),
        "HOME=/".into(),
        "LANG=C.UTF-8".into(),
        "OUTPOST_ARTIFACT_NAME=det".into(),
        "OUTPOST_ARTIFACT_VERSION=1.0".into(),
        format!("OUTPOST_ARTIFACT_DIR={}", release.display()),
    ] {
        assert!(vars.contains(&want.as_str()), "{want} in {vars:?}");
    }
    let names: Vec<&str> = vars.iter().filter_map(|v| v.split('=').next()).collect();
    for name in &names {
        assert!(
            [
                "PATH",
                "HOME",
                "LANG",
                "OUTPOST_ARTIFACT_NAME",
                "OUTPOST_ARTIFACT_VERSION",
                "OUTPOST_ARTIFACT_DIR",
                // What sh itself sets.
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD",
            ]
            .contains(name),
            "{name} leaked into the command's environment: {vars:?}"
        );
    }
}
