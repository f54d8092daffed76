//! outpostctl: the operator's command-line client of the REST API.
//!
//! Exit codes: 0 ok, 1 the server refused (its message is printed) or
//! answered something unexpected, 2 usage, 3 no answer (connection, TLS).
#![forbid(unsafe_code)]

mod api;
mod artifact;
mod audit;
mod cli;
mod devices;
mod error;
mod logs;
mod rollout;
mod show;
mod telemetry;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::api::Api;
use crate::cli::{Cli, Command, Conn};
use crate::error::{Error, Result};

fn main() -> ExitCode {
    // Usage errors exit 2 here (clap), --help and --version 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpostctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) | Err(Error::OutputClosed) => ExitCode::SUCCESS,
        Err(e) => {
            // The server's messages may quote what a device sent.
            eprintln!("outpostctl: {}", show::safe(&e.to_string()));
            e.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let format = cli.output;
    // The one command that needs no control plane.
    if let Command::Artifact(cli::Artifact::Keygen { out }) = &cli.command {
        return artifact::keygen(out);
    }
    let mut api = connect(cli.conn)?;
    match cli.command {
        Command::Devices(cmd) => devices::run(&api, cmd, format).await,
        Command::Ls(args) => devices::list(&api, args, format).await,
        Command::Rm { device } => devices::delete(&api, &device, format).await,
        Command::Reset { device, force } => devices::reset(&api, &device, force, format).await,
        Command::Logs(args) => logs::run(&mut api, args, format).await,
        Command::Telemetry(mut args) => {
            args.device = api.device_id(&args.device).await?;
            telemetry::run(&api, args, format).await
        }
        Command::Watch(args) => watch::run(&api, args, format).await,
        Command::Audit(cli::Audit::Export(args)) => audit::export(&api, args).await,
        Command::Artifact(cli::Artifact::Keygen { out }) => artifact::keygen(&out),
        Command::Artifact(cli::Artifact::Publish(args)) => {
            artifact::publish(&api, args, format).await
        }
        Command::Artifact(cli::Artifact::List) => artifact::list(&api, format).await,
        Command::Rollout(cmd) => rollout::run(&api, cmd, format).await,
    }
}

/// The client from the flags/environment; a missing one is a usage error
/// naming both.
fn connect(conn: Conn) -> Result<Api> {
    let missing = |what: &str, flag: &str, var: &str| {
        Error::Usage(format!("{what} is missing: pass {flag} or set {var}"))
    };
    let url = conn
        .url
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| missing("the control plane URL", "--url", "OUTPOST_URL"))?;
    let key = conn
        .api_key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| missing("the API key", "--api-key", "OUTPOST_API_KEY"))?;
    let workspace = conn
        .workspace
        .filter(|w| !w.trim().is_empty())
        .ok_or_else(|| missing("the workspace", "--workspace", "OUTPOST_WORKSPACE"))?;
    Api::new(
        url.trim(),
        key.trim().to_string(),
        workspace.trim().to_string(),
        conn.ca_file.as_deref(),
    )
}
