//! `outpost-agent check`: what an installer or support person runs on a box.
//! One line per finding (`ok`, `warn` or `FAIL`); exit 1 when any check
//! failed. Read-only except for the TLS handshake with the control plane.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::AgentConfig;
use crate::state::StateDir;

#[derive(Debug, Default)]
pub struct Findings {
    lines: Vec<(Level, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Findings {
    fn ok(&mut self, s: impl Into<String>) {
        self.lines.push((Level::Ok, s.into()));
    }
    fn warn(&mut self, s: impl Into<String>) {
        self.lines.push((Level::Warn, s.into()));
    }
    fn fail(&mut self, s: impl Into<String>) {
        self.lines.push((Level::Fail, s.into()));
    }
    pub fn failed(&self) -> bool {
        self.lines.iter().any(|(l, _)| *l == Level::Fail)
    }
    pub fn render(&self) -> String {
        self.lines
            .iter()
            .map(|(l, s)| {
                let tag = match l {
                    Level::Ok => "ok  ",
                    Level::Warn => "warn",
                    Level::Fail => "FAIL",
                };
                format!("{tag} {s}\n")
            })
            .collect()
    }
}

/// Runs every check and prints the findings.
pub async fn run(cfg: &AgentConfig) -> ExitCode {
    let f = check(cfg).await;
    print!("{}", f.render());
    if f.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub async fn check(cfg: &AgentConfig) -> Findings {
    let mut f = Findings::default();
    f.ok(format!(
        "config: interval {}, {} log file(s), {} journal unit(s), spool {} bytes",
        humantime::format_duration(cfg.interval),
        cfg.log_files.len(),
        cfg.journal_units.len(),
        cfg.spool_max_bytes
    ));
    for p in &cfg.log_files {
        match std::fs::File::open(p) {
            Ok(_) => f.ok(format!("log file {} is readable", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => f.warn(format!(
                "log file {} does not exist yet (it is followed once it appears)",
                p.display()
            )),
            Err(e) => f.fail(format!("log file {}: {e}", p.display())),
        }
    }
    // Which GPUs telemetry will carry (NVML and Jetson sysfs, as `run` finds them).
    f.ok(format!(
        "gpu: {}",
        crate::collect::gpus::Gpus::discover(&crate::collect::sysfs_root()).summary()
    ));
    let state = match StateDir::open(&cfg.state_dir) {
        Ok(s) => s,
        Err(e) => {
            f.fail(format!("state dir: {e}"));
            return f;
        }
    };
    let now = crate::clock::system_ms();
    let floor = crate::clock::BUILD_TIME_MS.max(state.clock_floor().unwrap_or(0));
    if now < floor {
        f.warn(format!(
            "clock: the system time {} is before the last known-good time {}; the agent uses the latter until the clock is set (is NTP running?)",
            crate::status::rfc3339(now),
            crate::status::rfc3339(floor)
        ));
    } else {
        f.ok(format!("clock: {}", crate::status::rfc3339(now)));
    }
    let identity = match state.identity() {
        Ok(Some(id)) => {
            f.ok(format!(
                "enrolled as {} in workspace {} ({})",
                id.device_id,
                id.workspace,
                state.root().display()
            ));
            Some(id)
        }
        Ok(None) if cfg.grant().is_some() && cfg.server.is_some() && cfg.trust.is_some() => {
            f.ok("not enrolled yet; `run` enrolls with the configured install ID or enrollment token");
            None
        }
        Ok(None) => {
            f.fail(format!(
                "not enrolled ({} has no identity) and no install ID, server and CA are configured",
                state.root().display()
            ));
            return f;
        }
        Err(e) => {
            f.fail(format!("identity: {e}"));
            return f;
        }
    };
    let mut tls_identity = None;
    if identity.is_some() {
        if let Err(e) = outpost_common::fs::ensure_private(&state.key_path()) {
            f.fail(format!("device key: {e}"));
        }
        match crate::enroll::load_client_identity(&state) {
            Ok(pair) => {
                if let Some(leaf) = pair.0.first()
                    && let Ok(v) = crate::rotate::validity(leaf)
                {
                    let now = now.max(floor);
                    if v.not_after_ms < now {
                        f.warn(format!(
                            "certificate expired at {}: the agent rotates it on connect if the control plane's grace window allows, otherwise the box needs a new install ID",
                            crate::status::rfc3339(v.not_after_ms)
                        ));
                    } else if v.not_before_ms > now {
                        f.fail(format!(
                            "certificate not valid before {}: the clock is behind",
                            crate::status::rfc3339(v.not_before_ms)
                        ));
                    } else {
                        f.ok(format!(
                            "certificate valid until {}",
                            crate::status::rfc3339(v.not_after_ms)
                        ));
                    }
                }
                tls_identity = Some(pair);
            }
            Err(e) => f.fail(format!("device key and certificate: {e}")),
        }
    }
    // Reachability: TCP and a verified TLS handshake.
    let server = match (&cfg.server, &identity) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(id)) => crate::link::ServerUrl::parse(&id.server).ok(),
        (None, None) => None,
    };
    let trust = match (&identity, &cfg.trust) {
        (Some(_), _) => crate::link::Trust::from_ca_file(&state.ca_path()).ok(),
        (None, t) => t.clone(),
    };
    if let Some(server) = &server {
        proxy_finding(&mut f, &cfg.proxy, server);
    }
    match (server, trust) {
        (Some(server), Some(trust)) => {
            let clock = crate::clock::Clock::new(state.clock_floor());
            match crate::link::client_config_at(&trust, tls_identity, clock) {
                Ok(tls) => match tokio::time::timeout(
                    // Past the proxy's own bound, which names it.
                    Duration::from_secs(25),
                    crate::link::connect_via(&server, &cfg.proxy, tls),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        f.ok(format!("control plane {server} reachable, TLS verified"));
                        ask_control_plane(&mut f, cfg, &state, identity.is_some(), &server, &trust)
                            .await;
                    }
                    // The proxy's failure, named as such: the control
                    // plane was not reached at all.
                    Ok(Err(e @ crate::link::LinkError::Proxy { .. })) => {
                        f.fail(format!("{e} (the control plane {server} was not reached)"))
                    }
                    Ok(Err(e)) => f.fail(format!("control plane {server}: {e}")),
                    Err(_) => f.fail(format!("control plane {server}: no answer within 25 s")),
                },
                Err(e) => f.fail(format!("TLS setup: {e}")),
            }
        }
        _ => f.fail("no server or CA to check reachability with"),
    }
    let st = crate::status::report(&state).ok();
    if let Some(r) = st {
        let sp = &r.spool;
        let line = format!(
            "spool: {} samples and {} log lines waiting; dropped {} samples and {} lines; {} corrupt",
            sp.pending, sp.logs_pending, sp.dropped, sp.logs_dropped, sp.corrupt
        );
        if sp.dropped + sp.logs_dropped + sp.corrupt > 0 {
            f.warn(line);
        } else {
            f.ok(line);
        }
    }
    f
}

/// Which proxy, if any, the link to `server` goes through, and why.
fn proxy_finding(
    f: &mut Findings,
    p: &crate::proxy::ProxySettings,
    server: &crate::link::ServerUrl,
) {
    match (&p.proxy, p.for_target(&server.host, server.port)) {
        (None, _) if p.source.is_empty() => f.ok("proxy: none configured; connecting directly"),
        (None, _) => f.ok(format!(
            "proxy: none ({} is empty); connecting directly",
            p.source
        )),
        (Some(url), None) => f.ok(format!(
            "proxy: {url} (from {}) bypassed for {server}: NO_PROXY {:?} names it",
            p.source, p.no_proxy
        )),
        (Some(url), Some(_)) => f.ok(format!(
            "proxy: {server} through {url} (from {}; HTTP CONNECT)",
            p.source
        )),
    }
}

/// The control plane's word on this box's certificate and, when it matters
/// (not enrolled, or the certificate is no longer taken), the configured
/// install ID.
async fn ask_control_plane(
    f: &mut Findings,
    cfg: &AgentConfig,
    state: &StateDir,
    enrolled: bool,
    server: &crate::link::ServerUrl,
    trust: &crate::link::Trust,
) {
    let install_id = cfg.install_id.as_deref().unwrap_or("");
    let answer = match tokio::time::timeout(
        Duration::from_secs(15),
        crate::enroll::check_enrollment(state, server, &cfg.proxy, trust, install_id),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return f.fail(format!("control plane: cannot ask about this box: {e}")),
        Err(_) => return f.fail("control plane: no answer within 15 s"),
    };
    let renew = "enroll it again with a new install ID from an operator (outpost-agent enroll --install-id NEW, or the install command again)";
    let cert_ok = match answer.certificate.as_str() {
        "valid" => {
            f.ok("certificate accepted by the control plane");
            true
        }
        "" => !enrolled,
        "revoked" => {
            f.fail(format!(
                "certificate revoked by the control plane (a forced reset?): {renew}"
            ));
            false
        }
        "expired" => {
            f.warn(
                "certificate expired: the agent rotates it on connect if the grace window allows",
            );
            true
        }
        "disabled" => {
            f.fail("this device is disabled by an operator");
            false
        }
        "deleted" => {
            f.fail(format!("this device was deleted by an operator: {renew}"));
            false
        }
        other => {
            f.fail(format!(
                "certificate {other} to the control plane (another control plane's data?): {renew}"
            ));
            false
        }
    };
    if install_id.is_empty() || (enrolled && cert_ok) {
        return;
    }
    match answer.install_id.as_str() {
        "valid" => f.ok(if enrolled {
            "install ID accepted: `run` or `enroll` enrolls this box again with it"
        } else {
            "install ID accepted by the control plane"
        }),
        "spent" => f.fail("install ID already used: ask an operator for a new one"),
        "expired" => f.fail("install ID expired: ask an operator for a new one"),
        "disabled" => f.fail("install ID of a device disabled by an operator"),
        other => f.fail(format!(
            "install ID {other} to the control plane: check it, or ask an operator for a new one"
        )),
    }
}
