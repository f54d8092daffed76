//! The command line (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "outpostctl",
    version,
    about = "Operator CLI for an Outpost control plane (its REST API)",
    after_help = "Exit codes: 0 ok, 1 the server refused or answered wrongly, 2 usage, 3 connection/TLS.\n\
                  See docs/outpostctl.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Conn,
    /// `table` for people, `json` for scripts (the server's JSON).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

/// Where and as whom.
#[derive(Args)]
pub struct Conn {
    /// The control plane's REST URL, http:// or https://.
    #[arg(long, env = "OUTPOST_URL", global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The API key (prefer the environment variable: arguments show in `ps`).
    #[arg(
        long,
        env = "OUTPOST_API_KEY",
        global = true,
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// The workspace.
    #[arg(long, env = "OUTPOST_WORKSPACE", global = true, value_name = "NAME")]
    pub workspace: Option<String>,
    /// Trust only this CA (PEM) for https:// instead of the system's roots.
    #[arg(long, env = "OUTPOST_CA_FILE", global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// List, show, create and delete devices.
    #[command(subcommand)]
    Devices(Devices),
    /// Same as `devices list`.
    Ls(ListArgs),
    /// Same as `devices delete`.
    Rm { device: String },
    /// Reset a device's connection: a fresh device API key (the previous one
    /// stops working) and, if the agent is connected, a certificate rotation.
    Reset {
        device: String,
        /// The box is compromised: revoke every certificate and key now, cut
        /// its streams, and issue a new install ID.
        #[arg(long)]
        force: bool,
    },
    /// A device's log lines, oldest first; --follow keeps printing new ones.
    Logs(LogsArgs),
    /// Stream a device's telemetry samples as they arrive (until the device
    /// is deleted or the key revoked; Ctrl-C stops).
    Telemetry(TelemetryArgs),
    /// A live table of the fleet, redrawn every --interval (q quits).
    Watch(WatchArgs),
    /// The workspace's operator audit trail.
    #[command(subcommand)]
    Audit(Audit),
    /// Signed artifacts: publisher keys, publishing, listing (docs/artifacts.md).
    #[command(subcommand)]
    Artifact(Artifact),
    /// Release an artifact version to matching devices, wave by wave.
    #[command(subcommand)]
    Rollout(Rollout),
}

#[derive(Subcommand)]
pub enum Rollout {
    /// Start a rollout; the last line of standard output is its id.
    Create(RolloutCreateArgs),
    /// A rollout, its waves and devices.
    Get { id: String },
    /// The workspace's rollouts, newest first.
    #[command(visible_alias = "ls")]
    List {
        /// At most this many rollouts [default: all].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// No new wave starts until resume.
    Pause { id: String },
    /// Go on, accepting the current wave's failures so far.
    Resume { id: String },
    /// Stop for good (devices that started keep the artifact).
    Abort { id: String },
    /// Start the next wave of a rollout awaiting approval.
    Approve { id: String },
}

#[derive(Args)]
pub struct RolloutCreateArgs {
    /// NAME@VERSION of a published (ready) artifact.
    #[arg(long)]
    pub artifact: String,
    /// A label selector, key=value or key (repeatable: all must match).
    #[arg(long, required = true, value_name = "SELECTOR")]
    pub selector: Vec<String>,
    /// Cumulative wave sizes, comma-separated; the last must be 100%.
    #[arg(long, default_value = "1,25%,100%")]
    pub waves: String,
    /// Failures a wave may have before the rollout pauses.
    #[arg(long, default_value_t = 0)]
    pub max_failures: u32,
    /// How long a wave may take before the next starts without its
    /// unfinished devices [server default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub wave_timeout: Option<String>,
    /// Pause for `rollout approve` after each wave but the last.
    #[arg(long)]
    pub approve_waves: bool,
}

#[derive(Subcommand)]
pub enum Artifact {
    /// A new publisher key pair: the private key to FILE (PKCS#8 PEM, mode
    /// 0600, never over an existing file), the public key (ed25519:…) as the
    /// last line of standard output. Needs no control plane.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Pack PATHs into an uncompressed tar, sign its manifest and upload
    /// both; the last line of standard output is NAME@VERSION.
    Publish(PublishArgs),
    /// The workspace's artifacts.
    #[command(visible_alias = "ls")]
    List,
}

#[derive(Args)]
pub struct PublishArgs {
    /// Artifact name: [a-z0-9][a-z0-9._-]{0,63}.
    #[arg(long)]
    pub name: String,
    /// Version: [A-Za-z0-9][A-Za-z0-9._+-]{0,63}.
    #[arg(long)]
    pub version: String,
    /// The private key from `artifact keygen`.
    #[arg(long, value_name = "FILE")]
    pub sign_key: PathBuf,
    /// Run in the release directory once it is current; must exit 0 within
    /// --health-window, or the box rolls back.
    #[arg(long, value_name = "CMD")]
    pub health_command: Option<String>,
    /// How long the health command may take [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub health_window: Option<Duration>,
    /// Run in the release directory after the switch (and again for the
    /// previous release on rollback).
    #[arg(long, value_name = "CMD")]
    pub post_install: Option<String>,
    /// Files and directories to publish; each becomes its own name at the
    /// top of the artifact (`./model` → `model/…`).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Subcommand)]
pub enum Audit {
    /// Every audit entry, oldest first, as JSON lines or CSV on standard
    /// output (compliance evidence); all pages, streamed.
    Export(AuditExportArgs),
}

#[derive(Args)]
pub struct AuditExportArgs {
    /// jsonl (one JSON object a line) or csv (a header line, then RFC 4180 records).
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Entries at or after this time: RFC 3339, unix seconds, or a duration
    /// ago (`30d`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Entries before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only this action (an operationId such as deleteDevice, or createApiKey …).
    #[arg(long)]
    pub action: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
pub enum Devices {
    /// Every device of the workspace (all pages, or --limit).
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// One device (by id or unique name, as everywhere).
    Get { device: String },
    /// A new install ID for a device (the previous one stops working): to
    /// enroll a box that never did, or whose install ID expired.
    InstallId { device: String },
    /// Create a device; prints its install ID and install command.
    Create {
        /// The device's name.
        name: String,
        /// edge (default) or ai1.
        #[arg(long = "type", value_name = "TYPE")]
        device_type: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        workflow_id: Option<String>,
        /// ai1 devices only (needs the roboflowLiteMode feature).
        #[arg(long)]
        offline_mode: bool,
        /// Start from this device's current config.
        #[arg(long, value_name = "DEVICE")]
        source_device: Option<String>,
    },
    /// Delete a device: its certificates and keys are revoked at once.
    #[command(visible_alias = "rm")]
    Delete { device: String },
}

#[derive(Args)]
pub struct ListArgs {
    /// At most this many devices.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Only devices with this status: online, offline or unknown.
    #[arg(long)]
    pub status: Option<String>,
    /// Only devices of this type: edge or ai1.
    #[arg(long = "type", value_name = "TYPE")]
    pub device_type: Option<String>,
    /// Only devices with exactly this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only devices with this label: `key=value`, or `key` for any value
    /// (repeatable; all must match).
    #[arg(short = 'l', long = "label", value_name = "KEY[=VALUE]")]
    pub labels: Vec<String>,
    /// Devices per request (the server allows up to 500).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub page_size: u32,
}

#[derive(Args)]
pub struct LogsArgs {
    pub device: String,
    /// The newest this many lines (with --follow: to start with).
    #[arg(long, short = 'n', default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Lines at or after this time: RFC 3339, unix seconds, or a duration
    /// ago (`15m`, `2h`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Lines before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only this service (a file name or a journald unit).
    #[arg(long)]
    pub service: Option<String>,
    /// This severity and worse (debug … emergency).
    #[arg(long)]
    pub severity: Option<String>,
    /// Keep polling for new lines.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// How often --follow asks. The server allows 5 log requests a minute
    /// per client; a 429 is waited out (Retry-After).
    #[arg(long, default_value = "12s", value_parser = parse_interval)]
    pub interval: Duration,
}

#[derive(Args)]
pub struct TelemetryArgs {
    pub device: String,
    /// Replay stored samples after this seq first (otherwise only new ones).
    #[arg(long, value_name = "SEQ")]
    pub after_seq: Option<u64>,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Redraw this often.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one frame and exit (no full-screen mode; for scripts).
    #[arg(long)]
    pub once: bool,
}

/// `2s`, `500ms`, `1m`; at least 100 ms.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 2s, 500ms, 1m)"))?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
