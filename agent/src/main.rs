#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_agent::config::{AgentArgs, AgentConfig};
use outpost_agent::daemon::{self, AgentError};
use outpost_agent::enroll::{self, EnrollError};
use outpost_agent::state::StateDir;
use outpost_agent::{
    EXIT_CONFIG, EXIT_CREDENTIALS_EXPIRED, EXIT_DECOMMISSIONED, EXIT_ENROLL_REFUSED,
};

/// Outpost agent: enrolls this box and streams its telemetry to the control plane.
#[derive(Parser)]
#[command(name = "outpost-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(clap::Args)]
struct EnrollArgs {
    /// On an enrolled box: replace its identity even though the control
    /// plane still takes its certificate (without it, only a revoked,
    /// expired or unknown identity is replaced). Device, spool and sequence
    /// numbers are kept either way.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(clap::Args)]
struct GpusArgs {
    /// Print JSON: the wire sample per GPU with NVML's answer per metric and
    /// the Jetson sysfs reading.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this box with a one-time install ID or an enrollment token; on
    /// an enrolled box whose identity was revoked (forced reset) or expired,
    /// enroll it again in place with a new install ID.
    Enroll(EnrollArgs),
    /// Run the daemon (enrolls first when not enrolled and an install ID is configured).
    Run(AgentArgs),
    /// Check configuration, state, clock and reachability; one line per
    /// finding, exit 1 when something is wrong.
    Check(AgentArgs),
    /// Show enrollment, certificate, next rotation, link state and backlog
    /// (exit 1 when not enrolled).
    Status(StatusArgs),
    /// Show the GPUs found (NVML, Jetson sysfs) and one reading of each;
    /// needs no configuration or enrollment.
    Gpus(GpusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = outpost_common::init_process() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let mut json = false;
    let mut force = false;
    let (command, args) = match cli.command {
        Command::Enroll(a) => {
            force = a.force;
            ("enroll", a.agent)
        }
        Command::Run(a) => ("run", a),
        Command::Check(a) => ("check", a),
        Command::Status(a) => {
            json = a.json;
            ("status", a.agent)
        }
        Command::Gpus(a) => return gpus(a.json),
    };
    let cfg = match AgentConfig::resolve(args.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if command == "status" {
        return status(&cfg, json);
    }
    if let Some(level) = &cfg.log_level
        && let Err(e) = outpost_common::set_log_filter(level)
    {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // One thread: the agent's work is a few milliseconds per sample, and
    // every worker thread would cost its stack and a malloc arena in RSS.
    // (A wedged main loop thus also stops the watchdog pinger, as it should.)
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Boxed: the daemon's future (state machines of every await below it) is
    // built once on the heap instead of being moved across the main stack.
    runtime.block_on(Box::pin(async move {
        match command {
            "enroll" => enroll_once(&cfg, force).await,
            "check" => outpost_agent::check::run(&cfg).await,
            _ => run(cfg, args).await,
        }
    }))
}

async fn enroll_once(cfg: &AgentConfig, force: bool) -> ExitCode {
    let state = match StateDir::open(&cfg.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(Some(_)) = state.identity() {
        return reenroll_once(cfg, &state, force).await;
    }
    let (Some(server), Some(grant), Some(trust)) = (&cfg.server, cfg.grant(), &cfg.trust) else {
        eprintln!(
            "error: enroll needs --server, --install-id (or --enroll-token) and one of --ca-file / --ca-fingerprint"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let facts = match outpost_agent::collect::Collector::new() {
        Ok(c) => c.facts(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match enroll::enroll(&state, server, &cfg.proxy, grant, trust, facts).await {
        Ok(id) => {
            println!(
                "enrolled as device {} in workspace {}; state in {}",
                id.device_id,
                id.workspace,
                state.root().display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ EnrollError::Refused(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_ENROLL_REFUSED)
        }
        Err(EnrollError::TokenRefused(why, message)) => {
            eprintln!("error: enrollment refused: {message}");
            ExitCode::from(why.exit_status())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `enroll` on an enrolled box: a new install ID replaces the identity in
/// place (see `enroll::reenroll`).
async fn reenroll_once(cfg: &AgentConfig, state: &StateDir, force: bool) -> ExitCode {
    let Some(install_id) = &cfg.install_id else {
        eprintln!(
            "error: this box is enrolled; to enroll it again (after a forced reset, or a certificate expired past the grace window) give the new --install-id"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let facts = match outpost_agent::collect::Collector::new() {
        Ok(c) => c.facts(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match enroll::reenroll(
        state,
        cfg.server.as_ref(),
        &cfg.proxy,
        install_id,
        cfg.trust.as_ref(),
        facts,
        force,
    )
    .await
    {
        Ok(id) => {
            println!(
                "enrolled again as device {} in workspace {}; spool and sequence numbers kept in {} (a running agent picks the new identity up on its next connection attempt)",
                id.device_id,
                id.workspace,
                state.root().display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ EnrollError::Refused(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_ENROLL_REFUSED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: AgentConfig, args: AgentArgs) -> ExitCode {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        outpost_common::shutdown_signal().await;
        tracing::info!("stop requested");
        outpost_agent::notify::stopping();
        let _ = stop_tx.send(true);
    });
    // SIGHUP: read the configuration again (flags and environment are as
    // they were at start; the file may have changed).
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match AgentConfig::resolve(args.clone()) {
                        Ok(c) => {
                            let _ = reload_tx.send(c).await;
                        }
                        Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e}"),
                    }
                }
            });
        }
        Err(e) => tracing::warn!("cannot install a SIGHUP handler ({e}); reloading is off"),
    }
    let signals = daemon::Signals {
        stop: stop_rx,
        reload: reload_rx,
    };
    match daemon::run(cfg, signals).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Enroll(e @ EnrollError::Refused(_))) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_ENROLL_REFUSED)
        }
        Err(AgentError::Enroll(EnrollError::TokenRefused(why, message))) => {
            eprintln!("error: enrollment refused: {message}");
            ExitCode::from(why.exit_status())
        }
        Err(e @ AgentError::CredentialsExpired) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CREDENTIALS_EXPIRED)
        }
        Err(e @ AgentError::Decommissioned) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_DECOMMISSIONED)
        }
        Err(e @ AgentError::Config(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(cfg: &AgentConfig, json: bool) -> ExitCode {
    let state = match StateDir::open(&cfg.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match outpost_agent::status::report(&state) {
        Ok(mut r) => {
            r.artifacts = outpost_agent::status::artifacts(&cfg.artifacts_dir);
            r
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render());
    }
    // 1: not enrolled, so scripts can tell without parsing.
    if report.enrolled {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `outpost-agent gpus [--json]`: what the GPU readers find on this box.
fn gpus(json: bool) -> ExitCode {
    let mut gpus =
        outpost_agent::collect::gpus::Gpus::discover(&outpost_agent::collect::sysfs_root());
    if json {
        match serde_json::to_string_pretty(&gpus.report_json()) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    println!("{}", gpus.summary());
    for s in gpus.sample() {
        println!(
            "gpu {}: {} {} util {:.1}% mem {}/{} MiB temp {:.1} C power {:.1}/{:.1} W clock {}/{} MHz",
            s.index,
            s.name,
            s.uuid,
            s.utilization_percent,
            s.memory_used_bytes >> 20,
            s.memory_total_bytes >> 20,
            s.temperature_celsius,
            s.power_watts,
            s.power_limit_watts,
            s.clock_mhz,
            s.max_clock_mhz
        );
    }
    ExitCode::SUCCESS
}
