//! The artifact worker's decisions, free of I/O (as [`crate::core`]): per
//! artifact name, what to do next given the desired entry, what is
//! installed, what failed, and what the downloads and installs report. Time
//! is passed in; the worker ([`super::worker`]) carries out the
//! [`Action`]s.
//!
//! Rules (docs/artifacts.md, "The box"):
//! - a desired version equal to `current` is reported `succeeded` at once,
//!   unless the desired manifest's SHA-256 differs from the one `current`
//!   was installed from (other bytes under the same version): `failed`;
//! - a `name@version` that failed (or was rolled back) for a rollout is not
//!   tried again for that rollout; its report is repeated instead;
//! - transfer errors are retried with jittered exponential backoff, forever
//!   (a new link retries at once); they are never a failure;
//! - a new desired version while a download runs cancels the download and
//!   starts the new one; while an install runs (verify … health) the install
//!   finishes first, then the newest desired entry is looked at again;
//! - a name no longer listed is left as it is (a download of it stops).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use outpost_proto::v1::DesiredArtifact;
use tokio::time::Instant;

use crate::backoff::Reconnect;

/// Download progress is reported at most this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A state for the control plane (`ArtifactReport.state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub name: String,
    pub version: String,
    pub rollout_id: String,
    pub state: &'static str,
    pub error: String,
    pub bytes_done: u64,
}

/// How an install ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Nothing was switched.
    Failed(String),
    /// A failure after the switch, and switching back failed too: `current`
    /// may still name the failed release until the next start retries the
    /// rollback (reported `failed`; what runs is unknown until then).
    RollbackPending(String),
    /// Switched, then back to the previous release.
    RolledBack(String),
    /// The payload did not match its manifest (size or SHA-256); nothing
    /// was switched and the staging file is removed. After a resumed
    /// download it is fetched once more from zero before this is `failed`.
    BadPayload(String),
}

#[derive(Debug, Clone)]
pub enum Event {
    /// The control plane's desired set (replaces the previous one).
    Desired(Vec<DesiredArtifact>),
    /// A link is up: waiting downloads retry now.
    LinkUp,
    Progress {
        name: String,
        version: String,
        /// The download this is about ([`Action::Fetch`]'s): a cancelled
        /// one's late events are ignored, even when the same version is
        /// fetched again since.
        download: u64,
        bytes: u64,
    },
    /// The payload is complete on disk.
    Downloaded {
        name: String,
        version: String,
        /// Part of it was on disk before this download (resumed).
        resumed: bool,
        /// The download this is about ([`Action::Fetch`]'s): a cancelled
        /// one's late events are ignored, even when the same version is
        /// fetched again since.
        download: u64,
    },
    /// Link dropped, control plane busy, short stream: retry later.
    TransferError {
        name: String,
        version: String,
        /// The download this is about ([`Action::Fetch`]'s): a cancelled
        /// one's late events are ignored, even when the same version is
        /// fetched again since.
        download: u64,
        error: String,
    },
    /// Refused before anything was switched (signature, room, keys).
    Refused {
        name: String,
        version: String,
        /// The download this is about ([`Action::Fetch`]'s): a cancelled
        /// one's late events are ignored, even when the same version is
        /// fetched again since.
        download: u64,
        error: String,
    },
    /// The install reached a step the control plane sees ("verifying").
    Stage {
        name: String,
        state: &'static str,
    },
    Installed {
        name: String,
        outcome: Outcome,
    },
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Check (signature, room) and download (resuming) this artifact; answered
    /// by `Progress`, then `Downloaded`, `TransferError` or `Refused`.
    Fetch {
        d: DesiredArtifact,
        /// Names this download in its events (unique within the plan).
        download: u64,
    },
    /// Stop the download of `name@version` (a newer version is wanted).
    Cancel {
        name: String,
        version: String,
    },
    /// Verify, unpack, switch, post-install, health; answered by `Installed`.
    Install(DesiredArtifact),
    Report(Report),
}

#[derive(Debug)]
enum Work {
    Idle,
    Fetching {
        d: DesiredArtifact,
        reported_at: Option<Instant>,
        download: u64,
    },
    Waiting {
        d: DesiredArtifact,
        retry_at: Instant,
    },
    Installing {
        d: DesiredArtifact,
        /// The payload came from a resumed download.
        resumed: bool,
    },
}

/// The entry of `name` while download number `download` of `version` is the
/// one under way (events of a cancelled or older download are ignored).
fn fetching<'a>(
    entries: &'a mut BTreeMap<String, Entry>,
    name: &str,
    version: &str,
    download: u64,
) -> Option<&'a mut Entry> {
    let e = entries.get_mut(name)?;
    matches!(&e.work, Work::Fetching { d, download: n, .. } if d.version == version && *n == download)
        .then_some(e)
}

struct Entry {
    desired: Option<DesiredArtifact>,
    current: Option<String>,
    /// The payload SHA-256 `current` was installed from (its kept manifest).
    current_sha256: Option<String>,
    work: Work,
    /// (version, rollout) → the failed or rolled_back report.
    failed: BTreeMap<(String, String), Report>,
    /// (version, rollout) fetched again from zero after a bad payload.
    refetched: Option<(String, String)>,
    backoff: Reconnect,
}

/// What the worker knows at start about one artifact.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub current: Option<String>,
    /// The payload SHA-256 of `current`'s kept manifest.
    pub current_sha256: Option<String>,
    /// Failed or rolled-back installs (from the journal, or recovery).
    pub failed: Vec<Report>,
}

pub struct Plan {
    entries: BTreeMap<String, Entry>,
    out: VecDeque<Action>,
    seed: u64,
    /// The last download's number ([`Action::Fetch`]).
    downloads: u64,
}

impl Plan {
    /// `known`: per name, from the journals after start-up recovery;
    /// `seed`: the backoff jitter's (tests replay one).
    pub fn new(known: BTreeMap<String, Known>, seed: u64) -> Self {
        let mut p = Plan {
            entries: BTreeMap::new(),
            out: VecDeque::new(),
            seed,
            downloads: 0,
        };
        for (name, k) in known {
            let e = p.entry(&name);
            e.current = k.current;
            e.current_sha256 = k.current_sha256;
            for r in k.failed {
                e.failed
                    .insert((r.version.clone(), r.rollout_id.clone()), r);
            }
        }
        p
    }

    fn entry(&mut self, name: &str) -> &mut Entry {
        let seed = self.seed.wrapping_add(self.entries.len() as u64);
        self.entries
            .entry(name.to_string())
            .or_insert_with(|| Entry {
                desired: None,
                current: None,
                current_sha256: None,
                work: Work::Idle,
                failed: BTreeMap::new(),
                refetched: None,
                backoff: Reconnect::with_seed(seed),
            })
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When [`Plan::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.work {
                Work::Waiting { retry_at, .. } => Some(retry_at),
                _ => None,
            })
            .min()
    }

    /// The version `name` runs now, as far as the plan knows.
    pub fn current(&self, name: &str) -> Option<&str> {
        self.entries.get(name)?.current.as_deref()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            if let Work::Waiting { d, retry_at } = &e.work
                && now >= *retry_at
            {
                let d = d.clone();
                self.downloads += 1;
                let download = self.downloads;
                self.out.push_back(Action::Fetch {
                    d: d.clone(),
                    download,
                });
                e.work = Work::Fetching {
                    d,
                    reported_at: Some(now),
                    download,
                };
            }
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Desired(list) => {
                // Names and versions become paths on the box: anything else is
                // ignored (the signed manifest must match them too).
                let list: Vec<DesiredArtifact> = list
                    .into_iter()
                    .filter(|d| {
                        let ok = outpost_common::artifact::check_name(&d.name).is_ok()
                            && outpost_common::artifact::check_version(&d.version).is_ok();
                        if !ok {
                            tracing::warn!(name = ?d.name, version = ?d.version, "desired artifact ignored: not a valid name and version");
                        }
                        ok
                    })
                    .collect();
                let names: Vec<String> = list.iter().map(|d| d.name.clone()).collect();
                for d in list {
                    let name = d.name.clone();
                    self.entry(&name).desired = Some(d);
                    self.reconcile(&name, now);
                }
                // Names no longer listed: left as they are; a download stops.
                let dropped: Vec<String> = self
                    .entries
                    .keys()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                for name in dropped {
                    let e = self.entry(&name);
                    e.desired = None;
                    if let Work::Fetching { d, .. } | Work::Waiting { d, .. } = &e.work {
                        let version = d.version.clone();
                        e.work = Work::Idle;
                        self.out.push_back(Action::Cancel { name, version });
                    }
                }
            }
            Event::LinkUp => {
                for e in self.entries.values_mut() {
                    if let Work::Waiting { retry_at, .. } = &mut e.work {
                        *retry_at = now;
                    }
                }
                self.handle_timeout(now);
            }
            Event::Progress {
                name,
                version,
                download,
                bytes,
            } => {
                let Some(e) = fetching(&mut self.entries, &name, &version, download) else {
                    return;
                };
                if let Work::Fetching { d, reported_at, .. } = &mut e.work {
                    // Bytes arrived: the transfer works again.
                    e.backoff.reset();
                    if reported_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= PROGRESS_EVERY)
                    {
                        *reported_at = Some(now);
                        let r = report(d, "downloading", String::new(), bytes);
                        self.out.push_back(Action::Report(r));
                    }
                }
            }
            Event::Downloaded {
                name,
                version,
                resumed,
                download,
            } => {
                let Some(e) = fetching(&mut self.entries, &name, &version, download) else {
                    return;
                };
                if let Work::Fetching { d, .. } = &e.work {
                    let d = d.clone();
                    self.out
                        .push_back(Action::Report(report(&d, "installing", String::new(), 0)));
                    self.out.push_back(Action::Install(d.clone()));
                    e.work = Work::Installing { d, resumed };
                }
            }
            Event::TransferError {
                name,
                version,
                download,
                error,
            } => {
                let Some(e) = fetching(&mut self.entries, &name, &version, download) else {
                    return;
                };
                if let Work::Fetching { d, .. } = &e.work {
                    let delay = e.backoff.next_delay();
                    tracing::info!(artifact = %name, version = %d.version, "download interrupted ({error}); retrying in {:.1}s", delay.as_secs_f64());
                    e.work = Work::Waiting {
                        d: d.clone(),
                        retry_at: now + delay,
                    };
                }
            }
            Event::Refused {
                name,
                version,
                download,
                error,
            } => {
                let Some(e) = fetching(&mut self.entries, &name, &version, download) else {
                    return;
                };
                if let Work::Fetching { d, .. } = &e.work {
                    let r = report(d, "failed", error, 0);
                    e.failed
                        .insert((d.version.clone(), d.rollout_id.clone()), r.clone());
                    e.work = Work::Idle;
                    self.out.push_back(Action::Report(r));
                }
            }
            Event::Stage { name, state } => {
                if let Some(Entry {
                    work: Work::Installing { d, .. },
                    ..
                }) = self.entries.get(&name)
                {
                    let r = report(d, state, String::new(), 0);
                    self.out.push_back(Action::Report(r));
                }
            }
            Event::Installed { name, outcome } => {
                let Some(e) = self.entries.get_mut(&name) else {
                    return;
                };
                let Work::Installing { d, resumed } = std::mem::replace(&mut e.work, Work::Idle)
                else {
                    return;
                };
                let key = (d.version.clone(), d.rollout_id.clone());
                let still_wanted = e
                    .desired
                    .as_ref()
                    .is_some_and(|w| w.version == d.version && w.rollout_id == d.rollout_id);
                if let Outcome::BadPayload(err) = &outcome
                    && resumed
                    && still_wanted
                    && e.refetched.as_ref() != Some(&key)
                {
                    // Bytes appended to a stale staging file (another
                    // upload of the version, a torn write): once from zero.
                    tracing::warn!(artifact = %name, version = %d.version, "{err}; downloading it again from the start");
                    e.refetched = Some(key);
                    self.reconcile(&name, now);
                    return;
                }
                let r = match outcome {
                    Outcome::Succeeded => {
                        e.current = Some(d.version.clone());
                        e.current_sha256 = manifest_sha256(&d);
                        report(&d, "succeeded", String::new(), 0)
                    }
                    Outcome::Failed(err) | Outcome::BadPayload(err) => report(&d, "failed", err, 0),
                    Outcome::RollbackPending(err) => {
                        // Not "already on the old version" for a later
                        // desired entry: the install refuses until the
                        // next start has rolled back.
                        e.current = None;
                        e.current_sha256 = None;
                        report(&d, "failed", err, 0)
                    }
                    Outcome::RolledBack(err) => report(&d, "rolled_back", err, 0),
                };
                if r.state != "succeeded" {
                    e.failed.insert(key, r.clone());
                }
                self.out.push_back(Action::Report(r));
                // Something newer was asked for while this one installed.
                let newer = e
                    .desired
                    .as_ref()
                    .is_some_and(|w| w.version != d.version || w.rollout_id != d.rollout_id);
                if newer {
                    self.reconcile(&name, now);
                }
            }
        }
    }

    /// Decides what `name` needs given its desired entry.
    fn reconcile(&mut self, name: &str, now: Instant) {
        let e = self.entry(name);
        let Some(want) = e.desired.clone() else {
            return;
        };
        match &mut e.work {
            Work::Installing { .. } => return, // looked at again when it ends
            Work::Fetching { d, .. } | Work::Waiting { d, .. } if d.version == want.version => {
                // Same download; a new rollout asking for it takes it over.
                *d = want;
                return;
            }
            Work::Fetching { d, .. } | Work::Waiting { d, .. } => {
                let version = d.version.clone();
                e.work = Work::Idle;
                self.out.push_back(Action::Cancel {
                    name: name.to_string(),
                    version,
                });
            }
            Work::Idle => {}
        }
        let e = self.entry(name);
        if e.current.as_deref() == Some(want.version.as_str()) {
            // The same version from other bytes (re-published under the same
            // version on another control plane, or a reset store): neither
            // "already installed" nor installed over the running release.
            if let (Some(have), Some(wanted)) = (&e.current_sha256, manifest_sha256(&want))
                && *have != wanted
            {
                let error = format!(
                    "{}@{} runs here from a payload with SHA-256 {have}; the desired manifest says {wanted}: publish it as a new version",
                    want.name, want.version
                );
                let r = report(&want, "failed", error, 0);
                self.out.push_back(Action::Report(r));
                return;
            }
            let r = report(&want, "succeeded", String::new(), 0);
            self.out.push_back(Action::Report(r));
            return;
        }
        if let Some(r) = e
            .failed
            .get(&(want.version.clone(), want.rollout_id.clone()))
        {
            let r = Report {
                rollout_id: want.rollout_id.clone(),
                ..r.clone()
            };
            self.out.push_back(Action::Report(r));
            return;
        }
        e.backoff.reset();
        self.downloads += 1;
        let download = self.downloads;
        let e = self.entry(name);
        e.work = Work::Fetching {
            d: want.clone(),
            reported_at: Some(now),
            download,
        };
        self.out.push_back(Action::Report(report(
            &want,
            "downloading",
            String::new(),
            0,
        )));
        self.out.push_back(Action::Fetch { d: want, download });
    }
}

/// The payload SHA-256 a desired entry's manifest names (unchecked here: it
/// is only compared; the install verifies the signature).
fn manifest_sha256(d: &DesiredArtifact) -> Option<String> {
    outpost_common::artifact::Manifest::parse(&d.manifest_json)
        .ok()
        .map(|m| m.sha256)
}

fn report(d: &DesiredArtifact, state: &'static str, error: String, bytes_done: u64) -> Report {
    Report {
        name: d.name.clone(),
        version: d.version.clone(),
        rollout_id: d.rollout_id.clone(),
        state,
        error,
        bytes_done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn want(name: &str, version: &str, rollout: &str) -> DesiredArtifact {
        DesiredArtifact {
            name: name.into(),
            version: version.into(),
            rollout_id: rollout.into(),
            ..Default::default()
        }
    }

    /// The download under way for `name` (0: none).
    fn fetching(p: &Plan, name: &str) -> u64 {
        match p.entries.get(name).map(|e| &e.work) {
            Some(Work::Fetching { download, .. }) => *download,
            _ => 0,
        }
    }

    fn drain(p: &mut Plan) -> Vec<Action> {
        std::iter::from_fn(|| p.poll_action()).collect()
    }

    fn states(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Fetch { d, .. } => format!("fetch {}", d.version),
                Action::Cancel { version, .. } => format!("cancel {version}"),
                Action::Install(d) => format!("install {}", d.version),
                Action::Report(r) => format!("{} {} {}", r.state, r.version, r.bytes_done),
            })
            .collect()
    }

    #[test]
    fn a_new_artifact_downloads_installs_and_succeeds() {
        let t0 = Instant::now();
        let mut p = Plan::new(BTreeMap::new(), 1);
        p.handle(Event::Desired(vec![want("det", "1.0", "r1")]), t0);
        assert_eq!(states(&drain(&mut p)), ["downloading 1.0 0", "fetch 1.0"]);
        // Progress inside the throttle window is not reported; later it is.
        p.handle(
            Event::Progress {
                name: "det".into(),
                version: "1.0".into(),
                download: fetching(&p, "det"),
                bytes: 10,
            },
            t0 + SEC,
        );
        assert!(drain(&mut p).is_empty());
        p.handle(
            Event::Progress {
                name: "det".into(),
                version: "1.0".into(),
                download: fetching(&p, "det"),
                bytes: 20,
            },
            t0 + 6 * SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["downloading 1.0 20"]);
        p.handle(
            Event::Downloaded {
                name: "det".into(),
                version: "1.0".into(),
                resumed: false,
                download: fetching(&p, "det"),
            },
            t0 + 7 * SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["installing 1.0 0", "install 1.0"]);
        p.handle(
            Event::Stage {
                name: "det".into(),
                state: "verifying",
            },
            t0 + 8 * SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["verifying 1.0 0"]);
        p.handle(
            Event::Installed {
                name: "det".into(),
                outcome: Outcome::Succeeded,
            },
            t0 + 9 * SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["succeeded 1.0 0"]);
        assert_eq!(p.current("det"), Some("1.0"));
        // The same desired set again (a new session): succeeded at once.
        p.handle(
            Event::Desired(vec![want("det", "1.0", "r1")]),
            t0 + 10 * SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["succeeded 1.0 0"]);
    }

    #[test]
    fn names_and_versions_that_are_not_path_components_are_ignored() {
        let t0 = Instant::now();
        let mut p = Plan::new(BTreeMap::new(), 1);
        p.handle(
            Event::Desired(vec![
                want("det", "../../etc/x", "r1"),
                want("../x", "1.0", "r1"),
                want("cam", "1.0", "r1"),
            ]),
            t0,
        );
        assert_eq!(states(&drain(&mut p)), ["downloading 1.0 0", "fetch 1.0"]);
        assert!(p.entries.keys().eq(["cam"]));
    }

    #[test]
    fn the_current_version_is_reported_succeeded_at_once() {
        let t0 = Instant::now();
        let known = BTreeMap::from([(
            "det".to_string(),
            Known {
                current: Some("2.0".into()),
                current_sha256: None,
                failed: vec![],
            },
        )]);
        let mut p = Plan::new(known, 1);
        p.handle(Event::Desired(vec![want("det", "2.0", "r9")]), t0);
        let a = drain(&mut p);
        assert_eq!(states(&a), ["succeeded 2.0 0"]);
        assert!(matches!(&a[0], Action::Report(r) if r.rollout_id == "r9"));
    }

    #[test]
    fn transfer_errors_back_off_forever_and_a_link_retries_at_once() {
        let t0 = Instant::now();
        let mut p = Plan::new(BTreeMap::new(), 7);
        p.handle(Event::Desired(vec![want("det", "1.0", "r1")]), t0);
        drain(&mut p);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..30 {
            p.handle(
                Event::TransferError {
                    name: "det".into(),
                    version: "1.0".into(),
                    download: fetching(&p, "det"),
                    error: "busy".into(),
                },
                now,
            );
            assert!(
                drain(&mut p).is_empty(),
                "a transfer error is never reported"
            );
            let at = p.poll_timeout().expect("a retry is scheduled");
            assert!(at > now);
            waits.push(at - now);
            p.handle_timeout(at - Duration::from_millis(1));
            assert!(drain(&mut p).is_empty(), "not before it is due");
            p.handle_timeout(at);
            assert_eq!(states(&drain(&mut p)), ["fetch 1.0"]);
            now = at;
        }
        assert!(waits[0] <= 2 * SEC, "{waits:?}");
        assert!(waits[12] >= 60 * SEC, "grows to the ceiling: {waits:?}");
        assert!(waits.iter().all(|w| *w <= 120 * SEC), "{waits:?}");
        // Bytes arriving reset the backoff.
        p.handle(
            Event::Progress {
                name: "det".into(),
                version: "1.0".into(),
                download: fetching(&p, "det"),
                bytes: 1,
            },
            now,
        );
        drain(&mut p);
        p.handle(
            Event::TransferError {
                name: "det".into(),
                version: "1.0".into(),
                download: fetching(&p, "det"),
                error: "x".into(),
            },
            now,
        );
        assert!(p.poll_timeout().unwrap() - now <= 2 * SEC);
        // A new link: retry at once.
        p.handle(Event::LinkUp, now + SEC / 10);
        assert_eq!(states(&drain(&mut p)), ["fetch 1.0"]);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_failed_version_is_not_retried_for_the_same_rollout() {
        let t0 = Instant::now();
        let mut p = Plan::new(BTreeMap::new(), 1);
        p.handle(Event::Desired(vec![want("det", "1.0", "r1")]), t0);
        p.handle(
            Event::Downloaded {
                name: "det".into(),
                version: "1.0".into(),
                resumed: false,
                download: fetching(&p, "det"),
            },
            t0,
        );
        drain(&mut p);
        p.handle(
            Event::Installed {
                name: "det".into(),
                outcome: Outcome::RolledBack("health check exited 1".into()),
            },
            t0 + SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["rolled_back 1.0 0"]);
        p.handle(Event::Desired(vec![want("det", "1.0", "r1")]), t0 + 2 * SEC);
        let a = drain(&mut p);
        assert_eq!(states(&a), ["rolled_back 1.0 0"], "repeated, not retried");
        assert!(matches!(&a[0], Action::Report(r) if r.error == "health check exited 1"));
        // Another rollout asking for it tries again.
        p.handle(Event::Desired(vec![want("det", "1.0", "r2")]), t0 + 3 * SEC);
        assert_eq!(states(&drain(&mut p)), ["downloading 1.0 0", "fetch 1.0"]);
        // A refusal before the switch is `failed`, and not retried either.
        p.handle(
            Event::Refused {
                name: "det".into(),
                version: "1.0".into(),
                download: fetching(&p, "det"),
                error: "no room".into(),
            },
            t0 + 4 * SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["failed 1.0 0"]);
        p.handle(Event::Desired(vec![want("det", "1.0", "r2")]), t0 + 5 * SEC);
        assert_eq!(states(&drain(&mut p)), ["failed 1.0 0"]);
    }

    #[test]
    fn failures_known_at_start_are_not_retried() {
        let t0 = Instant::now();
        let r = Report {
            name: "det".into(),
            version: "1.1".into(),
            rollout_id: "r1".into(),
            state: "rolled_back",
            error: "interrupted by a restart".into(),
            bytes_done: 0,
        };
        let known = BTreeMap::from([(
            "det".to_string(),
            Known {
                current: Some("1.0".into()),
                current_sha256: None,
                failed: vec![r],
            },
        )]);
        let mut p = Plan::new(known, 1);
        p.handle(Event::Desired(vec![want("det", "1.1", "r1")]), t0);
        assert_eq!(states(&drain(&mut p)), ["rolled_back 1.1 0"]);
    }

    #[test]
    fn a_newer_version_cancels_a_download_but_waits_for_an_install() {
        let t0 = Instant::now();
        let mut p = Plan::new(BTreeMap::new(), 1);
        p.handle(Event::Desired(vec![want("det", "1.0", "r1")]), t0);
        drain(&mut p);
        p.handle(Event::Desired(vec![want("det", "2.0", "r2")]), t0 + SEC);
        assert_eq!(
            states(&drain(&mut p)),
            ["cancel 1.0", "downloading 2.0 0", "fetch 2.0"]
        );
        // The cancelled download's late events are ignored.
        p.handle(
            Event::Downloaded {
                name: "det".into(),
                version: "1.0".into(),
                resumed: false,
                download: fetching(&p, "det"),
            },
            t0 + 2 * SEC,
        );
        assert!(drain(&mut p).is_empty());
        p.handle(
            Event::Downloaded {
                name: "det".into(),
                version: "2.0".into(),
                resumed: false,
                download: fetching(&p, "det"),
            },
            t0 + 2 * SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["installing 2.0 0", "install 2.0"]);
        // 3.0 arrives while 2.0 installs: 2.0 finishes first.
        p.handle(Event::Desired(vec![want("det", "3.0", "r3")]), t0 + 3 * SEC);
        assert!(drain(&mut p).is_empty());
        p.handle(
            Event::Installed {
                name: "det".into(),
                outcome: Outcome::Succeeded,
            },
            t0 + 4 * SEC,
        );
        assert_eq!(
            states(&drain(&mut p)),
            ["succeeded 2.0 0", "downloading 3.0 0", "fetch 3.0"]
        );
        // Dropped from the desired set: the download stops, nothing else.
        p.handle(Event::Desired(vec![]), t0 + 5 * SEC);
        assert_eq!(states(&drain(&mut p)), ["cancel 3.0"]);
        assert_eq!(p.current("det"), Some("2.0"));
    }

    #[test]
    fn a_cancelled_downloads_late_event_is_ignored_when_the_version_returns() {
        let t0 = Instant::now();
        let mut p = Plan::new(BTreeMap::new(), 1);
        p.handle(Event::Desired(vec![want("det", "1.0", "r1")]), t0);
        drain(&mut p);
        let first = fetching(&p, "det");
        // The name leaves the desired set (the download is cancelled, its
        // staging file removed), then comes back at the same version.
        p.handle(Event::Desired(vec![]), t0 + SEC);
        assert_eq!(states(&drain(&mut p)), ["cancel 1.0"]);
        p.handle(Event::Desired(vec![want("det", "1.0", "r1")]), t0 + 2 * SEC);
        let a = drain(&mut p);
        assert_eq!(states(&a), ["downloading 1.0 0", "fetch 1.0"]);
        let second = fetching(&p, "det");
        assert!(
            matches!(&a[1], Action::Fetch { download, .. } if *download == second)
                && second != first
        );
        // The first download's events, late: ignored (no install of a
        // half-written payload, no failure).
        for ev in [
            Event::Progress {
                name: "det".into(),
                version: "1.0".into(),
                download: first,
                bytes: 5,
            },
            Event::Downloaded {
                name: "det".into(),
                version: "1.0".into(),
                resumed: false,
                download: first,
            },
            Event::Refused {
                name: "det".into(),
                version: "1.0".into(),
                download: first,
                error: "x".into(),
            },
            Event::TransferError {
                name: "det".into(),
                version: "1.0".into(),
                download: first,
                error: "x".into(),
            },
        ] {
            p.handle(ev, t0 + 10 * SEC);
            assert!(drain(&mut p).is_empty());
        }
        assert_eq!(fetching(&p, "det"), second, "the new download goes on");
        p.handle(
            Event::Downloaded {
                name: "det".into(),
                version: "1.0".into(),
                resumed: false,
                download: second,
            },
            t0 + 11 * SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["installing 1.0 0", "install 1.0"]);
    }

    #[test]
    fn the_current_version_from_other_bytes_is_not_reported_succeeded() {
        use outpost_common::artifact::{FORMAT_TAR, MANIFEST_SCHEMA, Manifest};
        let signed = |sha: &str| {
            let mut d = want("det", "2.0", "r9");
            d.manifest_json = Manifest {
                schema: MANIFEST_SCHEMA,
                name: "det".into(),
                version: "2.0".into(),
                format: FORMAT_TAR.into(),
                size: 10,
                sha256: sha.repeat(32),
                post_install: None,
                health_command: None,
                health_window_secs: 10,
                created_at: "2026-12-03T10:00:00Z".into(),
            }
            .to_json();
            d
        };
        let t0 = Instant::now();
        let known = BTreeMap::from([(
            "det".to_string(),
            Known {
                current: Some("2.0".into()),
                current_sha256: Some("aa".repeat(32)),
                failed: vec![],
            },
        )]);
        let mut p = Plan::new(known, 1);
        p.handle(Event::Desired(vec![signed("aa")]), t0);
        assert_eq!(states(&drain(&mut p)), ["succeeded 2.0 0"]);
        p.handle(Event::Desired(vec![signed("bb")]), t0 + SEC);
        let a = drain(&mut p);
        assert_eq!(
            states(&a),
            ["failed 2.0 0"],
            "neither succeeded nor reinstalled"
        );
        assert!(
            matches!(&a[0], Action::Report(r) if r.error.contains(&"aa".repeat(32))
                && r.error.contains(&"bb".repeat(32))
                && r.error.contains("new version")),
            "{a:?}"
        );
        assert_eq!(p.current("det"), Some("2.0"));
    }

    #[test]
    fn a_bad_payload_after_a_resumed_download_is_fetched_once_more_from_zero() {
        let t0 = Instant::now();
        let mut p = Plan::new(BTreeMap::new(), 1);
        p.handle(Event::Desired(vec![want("det", "1.0", "r1")]), t0);
        drain(&mut p);
        let downloaded = |p: &Plan, resumed| Event::Downloaded {
            name: "det".into(),
            version: "1.0".into(),
            resumed,
            download: fetching(p, "det"),
        };
        let bad = || Event::Installed {
            name: "det".into(),
            outcome: Outcome::BadPayload("payload SHA-256 x does not match".into()),
        };
        p.handle(downloaded(&p, true), t0 + SEC);
        assert_eq!(states(&drain(&mut p)), ["installing 1.0 0", "install 1.0"]);
        p.handle(bad(), t0 + 2 * SEC);
        assert_eq!(
            states(&drain(&mut p)),
            ["downloading 1.0 0", "fetch 1.0"],
            "not failed: fetched again"
        );
        // The second try (from zero, the staging file was removed) is bad
        // too: failed, and not retried again.
        p.handle(downloaded(&p, true), t0 + 3 * SEC);
        drain(&mut p);
        p.handle(bad(), t0 + 4 * SEC);
        let a = drain(&mut p);
        assert_eq!(states(&a), ["failed 1.0 0"]);
        assert!(matches!(&a[0], Action::Report(r) if r.error.contains("SHA-256")));
        // A download that was not resumed fails at once.
        p.handle(Event::Desired(vec![want("det", "1.0", "r2")]), t0 + 5 * SEC);
        drain(&mut p);
        p.handle(downloaded(&p, false), t0 + 6 * SEC);
        drain(&mut p);
        p.handle(bad(), t0 + 7 * SEC);
        assert_eq!(states(&drain(&mut p)), ["failed 1.0 0"]);
    }

    #[test]
    fn after_a_failed_switch_back_the_old_version_is_not_taken_as_running() {
        let t0 = Instant::now();
        let known = BTreeMap::from([(
            "det".to_string(),
            Known {
                current: Some("1.0".into()),
                ..Default::default()
            },
        )]);
        let mut p = Plan::new(known, 1);
        p.handle(Event::Desired(vec![want("det", "2.0", "r2")]), t0);
        drain(&mut p);
        p.handle(
            Event::Downloaded {
                name: "det".into(),
                version: "2.0".into(),
                resumed: false,
                download: fetching(&p, "det"),
            },
            t0,
        );
        drain(&mut p);
        p.handle(
            Event::Installed {
                name: "det".into(),
                outcome: Outcome::RollbackPending("switching back to 1.0 failed".into()),
            },
            t0 + SEC,
        );
        assert_eq!(states(&drain(&mut p)), ["failed 2.0 0"]);
        assert_eq!(p.current("det"), None);
        // 1.0 asked for again: not "succeeded at once" (2.0 may still run).
        p.handle(Event::Desired(vec![want("det", "1.0", "r3")]), t0 + 2 * SEC);
        assert_eq!(states(&drain(&mut p)), ["downloading 1.0 0", "fetch 1.0"]);
    }
}
