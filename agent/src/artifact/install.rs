//! Installing an artifact on the box: the directory layout, the journal,
//! the checks (signature, room, SHA-256, tar entries), unpack, the switch of
//! `current`, the post-install and health commands, rollback and start-up
//! recovery (docs/artifacts.md, "The box").
//!
//! ```text
//! ARTIFACTS_DIR/NAME/releases/V/…   ARTIFACTS_DIR/NAME/manifests/V.json
//! ARTIFACTS_DIR/NAME/current -> releases/V   ARTIFACTS_DIR/NAME/state.json
//! STAGING/NAME@VERSION.part
//! ```
//!
//! `current` only ever points at a directory that was renamed into place
//! complete, and is switched by renaming a `current.tmp` symlink over it.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_common::artifact::{Manifest, PublicKey, Signature};
use outpost_proto::v1::DesiredArtifact;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use super::plan::Outcome;
use crate::failpoint;

/// Crash points of an install, in order (`OUTPOST_AGENT_CRASH_AT`).
pub const POINTS: &[&str] = &[
    DOWNLOADED,
    VERIFIED,
    UNPACKED,
    SWITCHED,
    POST_INSTALLED,
    HEALTH,
];
/// Half the payload is in staging (a download cut half-way: not in
/// [`POINTS`], which are the steps after the download).
pub const DOWNLOAD_HALF: &str = "artifact-download-half";
/// The payload is complete in staging; nothing checked yet.
pub const DOWNLOADED: &str = "artifact-downloaded";
/// Signature and SHA-256 checked; nothing unpacked.
pub const VERIFIED: &str = "artifact-verified";
/// `releases/V` is in place; `current` not switched.
pub const UNPACKED: &str = "artifact-unpacked";
/// `current` points at the new release; post-install not run.
pub const SWITCHED: &str = "artifact-switched";
/// The post-install ran; the health command not yet.
pub const POST_INSTALLED: &str = "artifact-post-installed";
/// The health command is running.
pub const HEALTH: &str = "artifact-health";

/// `PATH` of the post-install and health commands (their environment is
/// this, `HOME=/`, `LANG=C.UTF-8` and the `OUTPOST_ARTIFACT_*` variables).
pub const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The longest a post-install may run (also on rollback).
pub const POST_INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// An install step, recorded in `state.json` before it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Downloading,
    Unpacking,
    Switching,
    PostInstall,
    Verifying,
    Succeeded,
    Failed,
    RolledBack,
}

impl Step {
    /// Steps after which `current` may point at the new release.
    pub fn switched(self) -> bool {
        matches!(self, Step::Switching | Step::PostInstall | Step::Verifying)
    }
}

/// `ARTIFACTS_DIR/NAME/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: String,
    #[serde(default)]
    pub rollout_id: String,
    pub step: Step,
    /// `current` before the switch (none on a first install).
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// Where output lines of the post-install and health commands go:
/// `(artifact name, severity, line)`.
pub type LineSink = Arc<dyn Fn(&str, &'static str, String) + Send + Sync>;

/// A test hook: the install stops (as if the process died) right after the
/// crash point of this name, before anything else is written.
#[derive(Debug)]
pub struct Interrupted;

/// Tests: failures injected into the file work, which the kernel's ENOSPC
/// or EIO would cause (hard to provoke reliably, as root even more so).
#[derive(Debug, Default)]
pub struct Faults {
    /// Switching `current` to this version (`Some(None)`: removing
    /// `current`) fails, as many times as the count.
    pub switch_to: Option<(Option<String>, u32)>,
    /// Saving a journal in this step fails, as many times as the count.
    pub save: Option<(Step, u32)>,
}

pub struct Installer {
    pub dir: PathBuf,
    pub staging: PathBuf,
    pub keys: Vec<PublicKey>,
    pub budget: u64,
    pub sink: LineSink,
    /// Tests: stop after this crash point (see [`Interrupted`]).
    pub stop_after: Option<&'static str>,
    /// Tests: injected failures (see [`Faults`]); none by default.
    pub faults: std::sync::Mutex<Faults>,
}

fn io(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

impl Installer {
    pub fn new(
        dir: PathBuf,
        staging: PathBuf,
        keys: Vec<PublicKey>,
        budget: u64,
        sink: LineSink,
    ) -> Self {
        Self {
            dir,
            staging,
            keys,
            budget,
            sink,
            stop_after: None,
            faults: std::sync::Mutex::default(),
        }
    }

    /// Whether an injected fault says this switch fails (and counts it).
    fn switch_fault(&self, version: Option<&str>) -> bool {
        let mut f = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        match &mut f.switch_to {
            Some((v, n)) if v.as_deref() == version && *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Whether an injected fault says saving this step fails (and counts it).
    fn save_fault(&self, step: Step) -> bool {
        let mut f = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        match &mut f.save {
            Some((s, n)) if *s == step && *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn point(&self, name: &'static str) -> Result<(), Interrupted> {
        failpoint::hit(name);
        if self.stop_after == Some(name) {
            return Err(Interrupted);
        }
        Ok(())
    }

    pub fn artifact_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn part(&self, name: &str, version: &str) -> PathBuf {
        self.staging.join(format!("{name}@{version}.part"))
    }

    pub fn release(&self, name: &str, version: &str) -> PathBuf {
        self.artifact_dir(name).join("releases").join(version)
    }

    /// The version `current` points at.
    pub fn current(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.artifact_dir(name).join("current")).ok()?;
        Some(target.file_name()?.to_str()?.to_string())
    }

    /// Every artifact's current version, by name.
    pub fn installed(&self) -> Vec<(String, String)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                Some((name.clone(), self.current(&name)?))
            })
            .collect();
        out.sort();
        out
    }

    pub fn journal(&self, name: &str) -> Option<Journal> {
        let b = std::fs::read(self.artifact_dir(name).join("state.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn save_journal(&self, name: &str, j: &Journal) -> Result<(), String> {
        let dir = self.artifact_dir(name);
        outpost_common::fs::create_private_dir(&dir).map_err(|e| io("cannot create", &dir, e))?;
        let path = dir.join("state.json");
        if self.save_fault(j.step) {
            return Err(format!("cannot write {}: injected failure", path.display()));
        }
        let bytes = serde_json::to_vec_pretty(j).map_err(|e| e.to_string())?;
        outpost_common::fs::replace_file(&path, &bytes, 0o600, true)
            .map_err(|e| io("cannot write", &path, e))?;
        tracing::info!(artifact = %name, version = %j.version, step = ?j.step, "artifact step");
        Ok(())
    }

    /// Checks a desired entry against the box's own publisher keys and
    /// returns its manifest.
    pub fn check(&self, d: &DesiredArtifact) -> Result<Manifest, String> {
        if self.keys.is_empty() {
            return Err("no publisher key configured".into());
        }
        let sig = d
            .signature
            .as_ref()
            .ok_or("the desired artifact carries no signature")?;
        let sig = Signature {
            public_key: sig
                .public_key
                .parse()
                .map_err(|e| format!("signature: {e}"))?,
            signature: sig.signature.clone(),
        };
        let m = outpost_common::artifact::verify(&d.manifest_json, &sig, &self.keys)
            .map_err(|e| e.to_string())?;
        if m.name != d.name || m.version != d.version {
            return Err(format!(
                "the signed manifest is {}, not {}@{}",
                m.id(),
                d.name,
                d.version
            ));
        }
        Ok(m)
    }

    /// Whether the payload plus its unpacked copy fit the budget and the
    /// filesystem (what is already downloaded counts as taken).
    pub fn check_room(&self, m: &Manifest) -> Result<(), String> {
        let need = m.size.saturating_mul(2);
        if need > self.budget {
            return Err(format!(
                "{} needs {need} bytes (payload plus unpacked), over the artifact disk budget of {} bytes",
                m.id(),
                self.budget
            ));
        }
        let have = std::fs::metadata(self.part(&m.name, &m.version))
            .map(|md| md.len().min(m.size))
            .unwrap_or(0);
        let need_now = need - have;
        if let Some(free) = free_space(&self.dir)
            && need_now > free
        {
            return Err(format!(
                "{} needs {need_now} more bytes (payload plus unpacked), the filesystem has {free} bytes free",
                m.id()
            ));
        }
        Ok(())
    }

    /// Records the download step (before the first byte is written).
    pub fn begin(&self, d: &DesiredArtifact) -> Result<(), String> {
        self.no_pending_rollback(&d.name)?;
        outpost_common::fs::create_private_dir(&self.staging)
            .map_err(|e| io("cannot create", &self.staging, e))?;
        self.save_journal(
            &d.name,
            &Journal {
                version: d.version.clone(),
                rollout_id: d.rollout_id.clone(),
                step: Step::Downloading,
                previous: None,
                error: None,
            },
        )
    }

    /// A journal still in a switched step outside an install is a rollback
    /// whose switch back failed: it is retried at the next start, and its
    /// journal must not be overwritten meanwhile (nor `previous` taken from a
    /// `current` that names the release being rolled back).
    fn no_pending_rollback(&self, name: &str) -> Result<(), String> {
        match self.journal(name) {
            Some(j) if j.step.switched() => Err(format!(
                "the rollback of {name}@{} is pending (retried at the next start): {}",
                j.version,
                j.error.as_deref().unwrap_or("interrupted")
            )),
            _ => Ok(()),
        }
    }

    fn fail(
        &self,
        d: &DesiredArtifact,
        step: Step,
        previous: Option<String>,
        error: String,
    ) -> Outcome {
        tracing::warn!(artifact = %d.name, version = %d.version, "install failed: {error}");
        // A bad payload is not resumed from by a later try.
        let _ = std::fs::remove_file(self.part(&d.name, &d.version));
        let _ = self.save_journal(
            &d.name,
            &Journal {
                version: d.version.clone(),
                rollout_id: d.rollout_id.clone(),
                step,
                previous,
                error: Some(error.clone()),
            },
        );
        if step == Step::RolledBack {
            Outcome::RolledBack(error)
        } else {
            Outcome::Failed(error)
        }
    }

    /// Installs a downloaded payload: every step after the download. `stage`
    /// hears "verifying" when the health window starts.
    pub async fn install(
        self: &Arc<Self>,
        d: &DesiredArtifact,
        stage: impl Fn(&'static str),
    ) -> Result<Outcome, Interrupted> {
        self.point(DOWNLOADED)?;
        if let Err(e) = self.no_pending_rollback(&d.name) {
            return Ok(Outcome::Failed(e));
        }
        let m = match self.check(d) {
            Ok(m) => m,
            Err(e) => return Ok(self.fail(d, Step::Failed, None, e)),
        };
        let journal = |step, previous: Option<String>| Journal {
            version: d.version.clone(),
            rollout_id: d.rollout_id.clone(),
            step,
            previous,
            error: None,
        };
        // Verify, check and unpack: file work, off the async threads.
        let me = self.clone();
        let m2 = m.clone();
        let verified = tokio::task::spawn_blocking(move || me.verify_payload(&m2))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if let Err(e) = verified {
            self.fail(d, Step::Failed, None, e.clone());
            return Ok(Outcome::BadPayload(e));
        }
        self.point(VERIFIED)?;
        if let Err(e) = self.save_journal(&d.name, &journal(Step::Unpacking, None)) {
            return Ok(self.fail(d, Step::Failed, None, e));
        }
        let me = self.clone();
        let m2 = m.clone();
        let unpacked = tokio::task::spawn_blocking(move || me.unpack(&m2))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if let Err(e) = unpacked {
            return Ok(self.fail(d, Step::Failed, None, e));
        }
        tracing::info!(artifact = %d.name, version = %d.version, "unpacked");
        self.point(UNPACKED)?;
        let previous = self.current(&d.name);
        if let Err(e) = self.save_journal(&d.name, &journal(Step::Switching, previous.clone())) {
            return Ok(self.fail(d, Step::Failed, previous, e));
        }
        if let Err(e) = self.switch(&d.name, Some(&d.version)) {
            return Ok(self.rollback(d, previous, format!("switch: {e}")).await);
        }
        tracing::info!(artifact = %d.name, version = %d.version, ?previous, "current switched");
        self.point(SWITCHED)?;
        let dir = self.release(&d.name, &d.version);
        if let Err(e) = self.save_journal(&d.name, &journal(Step::PostInstall, previous.clone())) {
            return Ok(self.rollback(d, previous, e).await);
        }
        if let Some(cmd) = &m.post_install
            && let Err(e) = self
                .run(&m, "post-install", cmd, &dir, POST_INSTALL_TIMEOUT)
                .await
        {
            return Ok(self.rollback(d, previous, e).await);
        }
        self.point(POST_INSTALLED)?;
        if let Err(e) = self.save_journal(&d.name, &journal(Step::Verifying, previous.clone())) {
            return Ok(self.rollback(d, previous, e).await);
        }
        stage("verifying");
        self.point(HEALTH)?;
        if let Some(cmd) = &m.health_command {
            let window = Duration::from_secs(m.health_window_secs);
            if let Err(e) = self.run(&m, "health check", cmd, &dir, window).await {
                return Ok(self.rollback(d, previous, e).await);
            }
        }
        // Reported succeeded only once journaled (else a restart would roll
        // back what the control plane was told runs): one retry, then a
        // rollback.
        let done = journal(Step::Succeeded, previous.clone());
        if let Err(e) = self.save_journal(&d.name, &done) {
            tracing::warn!(artifact = %d.name, version = %d.version, "cannot record the success ({e}); trying again");
            if let Err(e) = self.save_journal(&d.name, &done) {
                let reason = format!("healthy, but the success could not be recorded: {e}");
                return Ok(self.rollback(d, previous, reason).await);
            }
        }
        tracing::info!(artifact = %d.name, version = %d.version, "installed and healthy");
        self.clean(&d.name, &d.version, previous.as_deref());
        Ok(Outcome::Succeeded)
    }

    /// Back to `previous` (or no `current` at all on a first install), its
    /// post-install run again; the failed release is removed.
    async fn rollback(
        &self,
        d: &DesiredArtifact,
        previous: Option<String>,
        reason: String,
    ) -> Outcome {
        tracing::warn!(artifact = %d.name, version = %d.version, ?previous, "rolling back: {reason}");
        let mut reason = reason;
        let back = self
            .switch(&d.name, previous.as_deref())
            .or_else(|_| self.switch(&d.name, previous.as_deref()));
        if let Err(e) = back {
            // Twice failed: `current` may still name the new release: it is kept, and the
            // journal stays in a switched step so that the next start
            // retries the rollback (nothing is reported rolled back).
            let back = previous.as_deref().unwrap_or("no release");
            let reason = format!(
                "{reason}; switching back to {back} failed ({e}): the rollback is retried at the next start"
            );
            tracing::warn!(artifact = %d.name, version = %d.version, "{reason}");
            let _ = std::fs::remove_file(self.part(&d.name, &d.version));
            let _ = self.save_journal(
                &d.name,
                &Journal {
                    version: d.version.clone(),
                    rollout_id: d.rollout_id.clone(),
                    step: Step::Switching,
                    previous,
                    error: Some(reason.clone()),
                },
            );
            return Outcome::RollbackPending(reason);
        } else if let Some(prev) = &previous
            && let Some(m) = self.kept_manifest(&d.name, prev)
            && let Some(cmd) = &m.post_install
            && let Err(e) = self
                .run(
                    &m,
                    "post-install",
                    cmd,
                    &self.release(&d.name, prev),
                    POST_INSTALL_TIMEOUT,
                )
                .await
        {
            reason = format!("{reason}; the previous release's post-install failed: {e}");
        }
        if previous.as_deref() != Some(d.version.as_str()) {
            let _ = std::fs::remove_dir_all(self.release(&d.name, &d.version));
            let _ = std::fs::remove_file(self.manifest_path(&d.name, &d.version));
        }
        self.fail(d, Step::RolledBack, previous, reason)
    }

    /// Start-up recovery of one artifact: a journal past the switch and not
    /// finished rolls back ("interrupted by a restart"); leftovers of an
    /// unpack are removed. Returns the journal as it stands afterwards.
    pub async fn recover(&self, name: &str) -> Option<Journal> {
        let dir = self.artifact_dir(name);
        let _ = std::fs::remove_file(dir.join("current.tmp"));
        if let Ok(rd) = std::fs::read_dir(dir.join("releases")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let j = self.journal(name)?;
        if !j.step.switched() {
            return Some(j);
        }
        // A rollback whose switch back failed says why it was rolling back.
        let reason = match &j.error {
            // The first reason only, however many starts failed to switch back.
            Some(e) => {
                let first = e.split("; switching back to").next().unwrap_or(e);
                format!(
                    "{} (rolled back at start)",
                    first.trim_end_matches(" (rolled back at start)")
                )
            }
            None => "interrupted by a restart".into(),
        };
        let d = DesiredArtifact {
            name: name.to_string(),
            version: j.version.clone(),
            rollout_id: j.rollout_id.clone(),
            ..Default::default()
        };
        self.rollback(&d, j.previous.clone(), reason).await;
        self.journal(name)
    }

    /// Recovers every artifact (see [`Installer::recover`]).
    pub async fn recover_all(&self) -> Vec<(String, Journal)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        let mut out = Vec::new();
        for n in names {
            if let Some(j) = self.recover(&n).await {
                out.push((n, j));
            }
        }
        out
    }

    fn manifest_path(&self, name: &str, version: &str) -> PathBuf {
        self.artifact_dir(name)
            .join("manifests")
            .join(format!("{version}.json"))
    }

    /// A kept release's manifest (checked when it was installed).
    fn kept_manifest(&self, name: &str, version: &str) -> Option<Manifest> {
        let s = std::fs::read_to_string(self.manifest_path(name, version)).ok()?;
        Manifest::parse(&s).ok()
    }

    /// The payload SHA-256 a kept release was installed from.
    pub fn kept_sha256(&self, name: &str, version: &str) -> Option<String> {
        self.kept_manifest(name, version).map(|m| m.sha256)
    }

    /// Size and SHA-256 of the complete payload.
    pub fn verify_payload(&self, m: &Manifest) -> Result<(), String> {
        let part = self.part(&m.name, &m.version);
        let mut f = std::fs::File::open(&part).map_err(|e| io("cannot open", &part, e))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| io("cannot read", &part, e))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            ctx.update(&buf[..n]);
        }
        if len != m.size {
            return Err(format!(
                "payload is {len} bytes, the manifest says {}",
                m.size
            ));
        }
        let got = hex::encode(ctx.finish());
        if got != m.sha256 {
            return Err(format!(
                "payload SHA-256 {got} does not match the manifest's {}",
                m.sha256
            ));
        }
        Ok(())
    }

    /// Checks every entry, then unpacks into `releases/.V.tmp` and renames it
    /// to `releases/V`; keeps the manifest as `manifests/V.json`.
    pub fn unpack(&self, m: &Manifest) -> Result<(), String> {
        let part = self.part(&m.name, &m.version);
        check_tar(&part)?;
        let releases = self.artifact_dir(&m.name).join("releases");
        outpost_common::fs::create_private_dir(&releases)
            .map_err(|e| io("cannot create", &releases, e))?;
        // `.V.tmp`: a version starts with [A-Za-z0-9], so no release is
        // ever named like an unpack in progress.
        let tmp = releases.join(format!(".{}.tmp", m.version));
        let _ = std::fs::remove_dir_all(&tmp);
        outpost_common::fs::create_private_dir(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        let f = std::fs::File::open(&part).map_err(|e| io("cannot open", &part, e))?;
        let mut ar = tar::Archive::new(f);
        ar.set_overwrite(false);
        ar.unpack(&tmp).map_err(|e| format!("unpack: {e}"))?;
        // On disk before the rename: after a power loss `current` must not
        // name a release of empty or missing files.
        sync_tree(&tmp)?;
        let dest = releases.join(&m.version);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| io("cannot remove", &dest, e))?;
        }
        std::fs::rename(&tmp, &dest).map_err(|e| io("cannot rename into", &dest, e))?;
        sync_dir(&releases);
        let manifests = self.artifact_dir(&m.name).join("manifests");
        outpost_common::fs::create_private_dir(&manifests)
            .map_err(|e| io("cannot create", &manifests, e))?;
        let mp = self.manifest_path(&m.name, &m.version);
        outpost_common::fs::replace_file(&mp, m.to_json().as_bytes(), 0o600, true)
            .map_err(|e| io("cannot write", &mp, e))?;
        Ok(())
    }

    /// Points `current` at `releases/V` (or removes it for `None`): a
    /// `current.tmp` symlink renamed over `current`.
    pub fn switch(&self, name: &str, version: Option<&str>) -> Result<(), String> {
        let dir = self.artifact_dir(name);
        let current = dir.join("current");
        if self.switch_fault(version) {
            return Err(format!(
                "cannot switch {}: injected failure",
                current.display()
            ));
        }
        match version {
            Some(v) => {
                let tmp = dir.join("current.tmp");
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(Path::new("releases").join(v), &tmp)
                    .map_err(|e| io("cannot create", &tmp, e))?;
                std::fs::rename(&tmp, &current)
                    .map_err(|e| io("cannot rename over", &current, e))?;
            }
            None => match std::fs::remove_file(&current) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("cannot remove", &current, e));
                }
                _ => {}
            },
        }
        sync_dir(&dir);
        Ok(())
    }

    /// After a success: releases other than current and previous go, and the
    /// staging file.
    fn clean(&self, name: &str, version: &str, previous: Option<&str>) {
        let keep = |v: &str| v == version || Some(v) == previous;
        let dir = self.artifact_dir(name);
        if let Ok(rd) = std::fs::read_dir(dir.join("releases")) {
            for e in rd.flatten() {
                if !e.file_name().to_str().is_some_and(keep) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(dir.join("manifests")) {
            for e in rd.flatten() {
                let f = e.file_name();
                let v = f.to_str().and_then(|f| f.strip_suffix(".json"));
                if !v.is_some_and(keep) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_file(self.part(name, version));
    }

    /// Runs `cmd` with `sh -c` in `cwd` within `limit`; its output lines go
    /// to the sink. On timeout the process group is killed.
    async fn run(
        &self,
        m: &Manifest,
        what: &str,
        cmd: &str,
        cwd: &Path,
        limit: Duration,
    ) -> Result<(), String> {
        tracing::info!(artifact = %m.name, version = %m.version, "running the {what}: {cmd}");
        let mut c = tokio::process::Command::new("sh");
        // Not the agent's environment (agent.env holds the enrollment token
        // and the install ID): a minimal one, and the artifact's own.
        c.arg("-c")
            .arg(cmd)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", COMMAND_PATH)
            .env("HOME", "/")
            .env("LANG", "C.UTF-8")
            .env("OUTPOST_ARTIFACT_NAME", &m.name)
            .env("OUTPOST_ARTIFACT_VERSION", &m.version)
            .env("OUTPOST_ARTIFACT_DIR", cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = c
            .spawn()
            .map_err(|e| format!("the {what} did not start: {e}"))?;
        let mut readers = Vec::new();
        let out = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
        let err = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
        for (stream, severity) in [(out, "info"), (err, "warning")] {
            let Some(stream) = stream else { continue };
            let sink = self.sink.clone();
            let name = m.name.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    sink(&name, severity, crate::logsrc::bound_line(l));
                }
            }));
        }
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("the {what}: {e}")),
            Err(_) => {
                kill_group(&child);
                let _ = child.kill().await;
                for r in readers {
                    r.abort();
                }
                return Err(format!(
                    "the {what} did not finish within {}s",
                    limit.as_secs()
                ));
            }
        };
        // The group ends with its leader (a daemonised grandchild holding the
        // pipes must not hold the install up).
        kill_group(&child);
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
        }
        if status.success() {
            Ok(())
        } else {
            Err(format!("the {what} failed ({status})"))
        }
    }
}

/// Kills the command's process group (`kill -KILL -PGID`: no `unsafe`).
fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// fsyncs every regular file and directory below `dir`, then `dir` itself
/// (symlinks are written with their directory).
fn sync_tree(dir: &Path) -> Result<(), String> {
    let rd = std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))?;
    for e in rd {
        let e = e.map_err(|e| io("cannot read", dir, e))?;
        let path = e.path();
        let ft = e.file_type().map_err(|e| io("cannot stat", &path, e))?;
        if ft.is_dir() {
            sync_tree(&path)?;
        } else if ft.is_file() {
            match std::fs::File::open(&path).and_then(|f| f.sync_all()) {
                // A file the bundle made unreadable (mode 0o111, an agent
                // not running as root): the directory sync is all we can do.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                r => r.map_err(|e| io("cannot sync", &path, e))?,
            }
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Free bytes on the filesystem holding `dir` (its nearest existing
/// ancestor), by the longest matching mount point.
fn free_space(dir: &Path) -> Option<u64> {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let p = p.canonicalize().ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list().ok()?;
    disks
        .iter()
        .filter(|d| p.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}

/// Checks every entry of the tar at `path` before anything is written: only
/// regular files, directories and symlinks whose target stays inside the
/// release; relative paths without `..`; nothing under a symlink. All
/// entries are collected first, so the order of the entries in the tar does
/// not matter; symlink targets are resolved through the bundle's other
/// symlinks ([`outpost_common::artifact::check_symlinks`]).
pub fn check_tar(path: &Path) -> Result<(), String> {
    use std::collections::BTreeMap;
    let f = std::fs::File::open(path).map_err(|e| io("cannot open", path, e))?;
    let mut ar = tar::Archive::new(f);
    // Clean path → (the entry's name as written, whether a directory).
    let mut paths: BTreeMap<PathBuf, (String, bool)> = BTreeMap::new();
    let mut links: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for entry in ar.entries().map_err(|e| format!("not a tar: {e}"))? {
        let entry = entry.map_err(|e| format!("not a tar: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("bad entry path: {e}"))?
            .into_owned();
        let shown = raw.display().to_string();
        let refuse = |why: &str| Err(format!("tar entry {shown:?}: {why}"));
        let mut depth: Vec<&std::ffi::OsStr> = Vec::new();
        for c in raw.components() {
            match c {
                Component::Normal(s) => depth.push(s),
                Component::CurDir => {}
                Component::ParentDir => return refuse("a path with .. is refused"),
                Component::RootDir | Component::Prefix(_) => {
                    return refuse("an absolute path is refused");
                }
            }
        }
        let kind = entry.header().entry_type();
        if depth.is_empty() {
            if kind.is_dir() {
                continue; // "./"
            }
            return refuse("an empty path is refused");
        }
        let clean: PathBuf = depth.iter().collect();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("tar entry {shown:?}: bad link target: {e}"))?
                    .ok_or_else(|| format!("tar entry {shown:?}: a symlink without a target"))?;
                links.insert(clean.clone(), target.into_owned());
            }
            tar::EntryType::Link => return refuse("hard links are refused"),
            other => return refuse(&format!("entry type {other:?} is refused")),
        }
        // The same path twice: only a directory may repeat (a second entry
        // could replace a checked one, e.g. a directory by a symlink).
        let is_dir = kind.is_dir();
        if let Some((_, was_dir)) = paths.insert(clean, (shown.clone(), is_dir))
            && !(is_dir && was_dir)
        {
            return refuse("the same path twice is refused");
        }
    }
    for (clean, (shown, _)) in &paths {
        if links.keys().any(|l| clean.starts_with(l) && clean != l) {
            return Err(format!(
                "tar entry {shown:?}: a path through a symlink is refused"
            ));
        }
    }
    outpost_common::artifact::check_symlinks(&links).map_err(|(link, why)| {
        let shown = paths
            .get(&link)
            .map_or_else(|| link.display().to_string(), |(s, _)| s.clone());
        format!("tar entry {shown:?}: {why}")
    })
}
