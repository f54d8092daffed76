#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_control_plane::admin::Admin;
use outpost_control_plane::{config, server};

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
    Serve(Box<config::ServeArgs>),
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
    /// Manage the artifact publisher keys a workspace trusts (on this host).
    PublisherKey {
        #[command(subcommand)]
        command: PublisherKeyCommand,
    },
}

#[derive(Subcommand)]
enum PublisherKeyCommand {
    /// Trust a publisher key (ed25519:<base64>, as `outpostctl artifact keygen` prints it).
    Add {
        #[arg(long)]
        workspace: String,
        key: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List the publisher keys a workspace trusts.
    List {
        #[arg(long)]
        workspace: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Stop trusting a publisher key (artifacts it signed stay stored).
    Remove {
        #[arg(long)]
        workspace: String,
        key: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

/// The data directory the admin commands work on (also while `serve` runs).
#[derive(clap::Args)]
struct DataDir {
    #[arg(long, env = "OUTPOST_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// PostgreSQL URL (postgres://…) when the control plane runs on PostgreSQL.
    #[arg(long, env = "OUTPOST_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum WorkspaceCommand {
    /// Create a workspace.
    Create {
        name: String,
        /// Feature flag to enable: deviceAio, roboflowLiteMode (repeatable).
        #[arg(long = "feature")]
        features: Vec<String>,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List workspaces and their features.
    List {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Turn feature flags on or off.
    Features {
        name: String,
        /// Feature to turn on (repeatable).
        #[arg(long)]
        enable: Vec<String>,
        /// Feature to turn off (repeatable).
        #[arg(long)]
        disable: Vec<String>,
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create an API key; prints its id alone on the first line and the
    /// plaintext key as the last line of stdout.
    Create {
        #[arg(long)]
        workspace: String,
        /// device:read or device:update (repeatable). None: a legacy key with every scope.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List a workspace's operator keys (ids and scopes; keys themselves are
    /// not stored); device keys, minted at enrollment, with --device-keys.
    List {
        #[arg(long)]
        workspace: String,
        /// List the device-scoped keys (one per enrolled device) instead.
        #[arg(long)]
        device_keys: bool,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Revoke a key by id: it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        dir: DataDir,
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
                let cfg = config::ServeConfig::resolve(*args)?;
                server::run(cfg, outpost_common::shutdown_signal()).await
            }
            Command::Workspace { command } => workspace(command).await,
            Command::ApiKey { command } => api_key(command).await,
            Command::PublisherKey { command } => publisher_key(command).await,
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

type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

async fn workspace(command: WorkspaceCommand) -> CliResult {
    match command {
        WorkspaceCommand::Create {
            name,
            features,
            dir,
        } => {
            Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .create_workspace(&name, &features)
                .await?;
            println!("created workspace {name}");
        }
        WorkspaceCommand::List { dir } => {
            for ws in Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .list_workspaces()
                .await?
            {
                let features = if ws.features.is_empty() {
                    "-".to_string()
                } else {
                    ws.features.join(",")
                };
                println!(
                    "{}\t{}\tcreated {}",
                    ws.name,
                    features,
                    time_text(ws.created_at)
                );
            }
        }
        WorkspaceCommand::Features {
            name,
            enable,
            disable,
            dir,
        } => {
            if enable.is_empty() && disable.is_empty() {
                return Err("give --enable FEATURE and/or --disable FEATURE".into());
            }
            let now = Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .set_features(&name, &enable, &disable)
                .await?;
            println!(
                "workspace {name} features: {}",
                if now.is_empty() {
                    "-".to_string()
                } else {
                    now.join(",")
                }
            );
        }
    }
    Ok(())
}

async fn api_key(command: ApiKeyCommand) -> CliResult {
    match command {
        ApiKeyCommand::Create {
            workspace,
            scopes,
            dir,
        } => {
            let (id, key) = Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .create_api_key(&workspace, &scopes)
                .await?;
            let scope_text = if scopes.is_empty() {
                "all scopes (legacy)".to_string()
            } else {
                scopes.join(", ")
            };
            println!("{id}");
            eprintln!(
                "created API key {id} for workspace {workspace} with {scope_text}; the key (last line) is shown only once"
            );
            println!("{key}");
        }
        ApiKeyCommand::List {
            workspace,
            device_keys,
            dir,
        } => {
            let keys = Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .list_api_keys(&workspace)
                .await?;
            let (device, operator): (Vec<_>, Vec<_>) =
                keys.into_iter().partition(|k| k.device_id.is_some());
            let shown = if device_keys {
                println!(
                    "# device keys of {workspace} (minted at enrollment and resets; one live per device)"
                );
                device
            } else {
                println!("# operator keys of {workspace}");
                if !device.is_empty() {
                    eprintln!(
                        "({} device keys not shown; --device-keys lists them)",
                        device.len()
                    );
                }
                operator
            };
            for k in shown {
                let scopes = k
                    .scopes
                    .map(|s| s.join(","))
                    .unwrap_or_else(|| "all(legacy)".into());
                let bound = k
                    .device_id
                    .map(|d| format!("device={d}"))
                    .unwrap_or_else(|| "workspace".into());
                let state = match k.revoked_at {
                    Some(t) => format!("revoked {}", time_text(t)),
                    None => "active".into(),
                };
                println!(
                    "{}\t{}\t{}\t{}\tcreated {}",
                    k.id,
                    scopes,
                    bound,
                    state,
                    time_text(k.created_at)
                );
            }
        }
        ApiKeyCommand::Revoke { id, dir } => {
            Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .revoke_api_key(&id)
                .await?;
            println!("revoked API key {id}");
        }
    }
    Ok(())
}

async fn publisher_key(command: PublisherKeyCommand) -> CliResult {
    match command {
        PublisherKeyCommand::Add {
            workspace,
            key,
            dir,
        } => {
            let (key, added) = Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .add_publisher_key(&workspace, &key)
                .await?;
            if added {
                println!("workspace {workspace} trusts {key}");
            } else {
                println!("workspace {workspace} trusted {key} already");
            }
        }
        PublisherKeyCommand::List { workspace, dir } => {
            let keys = Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .list_publisher_keys(&workspace)
                .await?;
            println!("# publisher keys {workspace} trusts");
            for k in keys {
                println!("{}\tadded {}", k.public_key, time_text(k.added_at));
            }
        }
        PublisherKeyCommand::Remove {
            workspace,
            key,
            dir,
        } => {
            let key = Admin::open(&dir.data_dir, dir.database_url.as_deref())
                .await?
                .remove_publisher_key(&workspace, &key)
                .await?;
            println!("workspace {workspace} no longer trusts {key}");
        }
    }
    Ok(())
}
