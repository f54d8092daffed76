#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_control_plane::{admin, config, server};

/// Outpost control plane: device CA, device gRPC service (mTLS) and operator REST API.
#[derive(Parser)]
#[command(name = "outpost-control-plane", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve(config::ServeArgs),
    /// Manage workspaces (on this host, against the data directory).
    Workspace {
        #[command(subcommand)]
        command: WorkspaceCommand,
    },
    /// Manage operator API keys (on this host, against the data directory).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
}

#[derive(Subcommand)]
enum WorkspaceCommand {
    /// Create a workspace.
    Create {
        name: String,
        /// Feature flag to enable: deviceAio, roboflowLiteMode (repeatable).
        #[arg(long = "feature")]
        features: Vec<String>,
        #[arg(long, env = "OUTPOST_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create an API key; prints the plaintext key as the last line.
    Create {
        #[arg(long)]
        workspace: String,
        /// device:read or device:update (repeatable). None: a legacy key with every scope.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long, env = "OUTPOST_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = outpost_common::init_process() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let cfg = config::ServeConfig::resolve(args)?;
                server::run(cfg, outpost_common::shutdown_signal()).await
            }
            Command::Workspace {
                command: WorkspaceCommand::Create { name, features, data_dir },
            } => {
                admin::create_workspace(&data_dir, &name, &features).await?;
                println!("created workspace {name}");
                Ok(())
            }
            Command::ApiKey {
                command: ApiKeyCommand::Create { workspace, scopes, data_dir },
            } => {
                let key = admin::create_api_key(&data_dir, &workspace, &scopes).await?;
                let scope_text = if scopes.is_empty() { "all scopes (legacy)".to_string() } else { scopes.join(", ") };
                println!("created API key for workspace {workspace} with {scope_text}; it is shown only once:");
                println!("{key}");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
