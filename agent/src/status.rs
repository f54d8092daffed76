//! `outpost-agent status [--json]`: what support needs to know about this
//! box, read from the state directory (it works whether or not the daemon
//! runs, and never touches the network).

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::state::{StateDir, StateError};

/// The status report; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct Report {
    pub enrolled: bool,
    pub state_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The current certificate; `None` when unreadable (see `problems`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
    /// When the daemon plans the next rotation (RFC 3339), as it last wrote.
    pub next_rotation: Option<String>,
    /// Seconds until then (negative: overdue).
    pub next_rotation_in_secs: Option<i64>,
    pub daemon: Daemon,
    /// connected, connecting, disconnected, expired, decommissioned, stopped,
    /// or down when no daemon runs.
    pub link: String,
    pub last_error: Option<String>,
    pub last_connected: Option<String>,
    pub last_ack: Option<String>,
    pub acked_seq: u64,
    pub next_seq: u64,
    pub spool: Spool,
    /// Installed artifacts and their latest install (`outpost-agent status`
    /// fills this from the artifacts directory).
    pub artifacts: Vec<ArtifactStatus>,
    /// Things that are wrong with the state directory.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ArtifactStatus {
    pub name: String,
    /// The version `current` points at.
    pub current: Option<String>,
    /// The latest install: its version, step (journal) and error.
    pub last_version: Option<String>,
    pub last_step: Option<String>,
    pub last_error: Option<String>,
}

/// Every artifact under `dir`, by name.
pub fn artifacts(dir: &std::path::Path) -> Vec<ArtifactStatus> {
    let view = crate::artifact::install::Installer::new(
        dir.to_path_buf(),
        dir.to_path_buf(),
        Vec::new(),
        0,
        std::sync::Arc::new(|_: &str, _, _| {}),
    );
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let j = view.journal(&name);
            ArtifactStatus {
                current: view.current(&name),
                last_version: j.as_ref().map(|j| j.version.clone()),
                last_step: j.as_ref().and_then(|j| {
                    serde_json::to_value(j.step)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                }),
                last_error: j.and_then(|j| j.error),
                name,
            }
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Certificate {
    /// Lowercase hex, as the control plane records it.
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    /// Seconds until expiry (negative: expired).
    pub expires_in_secs: i64,
}

#[derive(Debug, Serialize)]
pub struct Daemon {
    pub running: bool,
    pub pid: Option<u32>,
    /// When the daemon last wrote its status (RFC 3339).
    pub updated: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Spool {
    /// Samples measured and not yet acknowledged.
    pub pending: u64,
    /// Samples dropped because the spool was full.
    pub dropped: u64,
    /// Log lines read and not yet acknowledged.
    pub logs_pending: u64,
    /// Every log line up to this seq is acknowledged (or dropped).
    pub logs_acked_seq: u64,
    /// Log lines dropped because the spool was full.
    pub logs_dropped: u64,
    /// Log lines over their source's rate limit.
    pub logs_rate_limited: u64,
    /// Records lost to corrupt bytes on disk.
    pub corrupt: u64,
}

/// Unix ms as RFC 3339 (seconds).
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whether a process with this pid exists (Linux /proc).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads the report from a state directory.
pub fn report(state: &StateDir) -> Result<Report, StateError> {
    let now = crate::clock::system_ms();
    let identity = state.identity()?;
    let mut problems = Vec::new();
    let certificate = match &identity {
        None => None,
        Some(_) => match read_certificate(state, now) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("certificate: {e}"));
                None
            }
        },
    };
    let runtime = state.status();
    let running = runtime.as_ref().is_some_and(|s| alive(s.pid));
    let rt = runtime.clone().unwrap_or_default();
    Ok(Report {
        enrolled: identity.is_some(),
        state_dir: state.root().display().to_string(),
        device_id: identity.as_ref().map(|i| i.device_id.clone()),
        workspace: identity.as_ref().map(|i| i.workspace.clone()),
        server: identity.as_ref().map(|i| i.server.clone()),
        certificate,
        next_rotation: rt.next_rotation_unix_ms.map(rfc3339),
        next_rotation_in_secs: rt.next_rotation_unix_ms.map(|t| (t - now) / 1000),
        daemon: Daemon {
            running,
            pid: runtime.as_ref().filter(|_| running).map(|s| s.pid),
            updated: runtime.as_ref().map(|s| rfc3339(s.updated_unix_ms)),
        },
        link: if running {
            rt.link.clone()
        } else if runtime.is_some() {
            "down".into()
        } else {
            "never started".into()
        },
        last_error: rt.last_error.clone(),
        last_connected: rt.last_connected_unix_ms.map(rfc3339),
        last_ack: rt.last_ack_unix_ms.map(rfc3339),
        acked_seq: rt.acked_seq,
        next_seq: rt.next_seq.max(state.next_seq()?),
        spool: Spool {
            pending: rt.pending_samples,
            dropped: rt.dropped_samples,
            logs_pending: rt.pending_logs,
            logs_acked_seq: rt.logs_acked_seq,
            logs_dropped: rt.dropped_logs,
            logs_rate_limited: rt.rate_limited_logs,
            corrupt: rt.corrupt_records,
        },
        artifacts: Vec::new(),
        problems,
    })
}

fn read_certificate(state: &StateDir, now: i64) -> Result<Certificate, String> {
    let (chain, _) = crate::enroll::load_client_identity(state).map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("empty certificate file")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let v = crate::rotate::validity(leaf)?;
    Ok(Certificate {
        serial: hex::encode(cert.raw_serial()),
        not_before: rfc3339(v.not_before_ms),
        not_after: rfc3339(v.not_after_ms),
        expires_in_secs: (v.not_after_ms - now) / 1000,
    })
}

impl Report {
    /// The human-readable form, one `label: value` per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| out.push_str(&format!("{:<14}{v}\n", format!("{k}:")));
        if !self.enrolled {
            line("enrolled", &format!("no (state dir {})", self.state_dir));
            return out;
        }
        line("enrolled", "yes");
        for (k, v) in [
            ("device", &self.device_id),
            ("workspace", &self.workspace),
            ("server", &self.server),
        ] {
            line(k, v.as_deref().unwrap_or("?"));
        }
        if let Some(c) = &self.certificate {
            line("cert serial", &c.serial);
            line(
                "cert expires",
                &format!("{} (in {})", c.not_after, secs(c.expires_in_secs)),
            );
        }
        if let (Some(t), Some(s)) = (&self.next_rotation, self.next_rotation_in_secs) {
            line("rotates", &format!("{t} (in {})", secs(s)));
        }
        line(
            "daemon",
            &match self.daemon.pid {
                Some(pid) => format!("running (pid {pid})"),
                None => "not running".into(),
            },
        );
        line("link", &self.link);
        if let Some(e) = &self.last_error {
            line("last error", e);
        }
        line("last ack", self.last_ack.as_deref().unwrap_or("never"));
        let sp = &self.spool;
        line(
            "backlog",
            &format!(
                "{} samples unacked, {} dropped; {} log lines unacked, {} dropped, {} over rate; {} corrupt",
                sp.pending,
                sp.dropped,
                sp.logs_pending,
                sp.logs_dropped,
                sp.logs_rate_limited,
                sp.corrupt
            ),
        );
        line("next seq", &self.next_seq.to_string());
        for a in &self.artifacts {
            let mut v = format!("{} {}", a.name, a.current.as_deref().unwrap_or("(none)"));
            if let (Some(ver), Some(step)) = (&a.last_version, &a.last_step) {
                v.push_str(&format!(" (last: {ver} {step}"));
                if let Some(e) = &a.last_error {
                    v.push_str(&format!(": {e}"));
                }
                v.push(')');
            }
            line("artifact", &v);
        }
        for p in &self.problems {
            line("problem", p);
        }
        out
    }
}

/// `90061` → `1d 1h 1m 1s`; negative values read "-…" (overdue/expired).
fn secs(s: i64) -> String {
    let sign = if s < 0 { "-" } else { "" };
    let d = Duration::from_secs(s.unsigned_abs());
    format!("{sign}{}", humantime::format_duration(d))
}
