//! Agent configuration: flags > `OUTPOST_*` environment > TOML file
//! (`/etc/outpost/agent.toml` when present, or `--config`) > defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::link::{LinkError, ServerUrl, Trust};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/outpost/agent.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/outpost-agent";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Options shared by `enroll`, `run` and `status`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// TOML config file [default: /etc/outpost/agent.toml if it exists].
    #[arg(long, env = "OUTPOST_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory: key, certificate, counters [default: /var/lib/outpost-agent].
    #[arg(long, env = "OUTPOST_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Control plane device endpoint, https://HOST:PORT.
    #[arg(long, env = "OUTPOST_SERVER")]
    pub server: Option<String>,
    /// One-time install ID from create-device (inst_…).
    #[arg(long, env = "OUTPOST_INSTALL_ID")]
    pub install_id: Option<String>,
    /// Trust the control plane's CA from this PEM file.
    #[arg(long, env = "OUTPOST_CA_FILE", conflicts_with = "ca_fingerprint")]
    pub ca_file: Option<PathBuf>,
    /// Trust the control plane's CA by its fingerprint, sha256:<hex>.
    #[arg(long, env = "OUTPOST_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,
    /// Telemetry interval, e.g. 10s, 1m [default: 10s].
    #[arg(long, env = "OUTPOST_INTERVAL", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    state_dir: Option<PathBuf>,
    server: Option<String>,
    install_id: Option<String>,
    ca_file: Option<PathBuf>,
    ca_fingerprint: Option<String>,
    interval: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    File(#[from] outpost_common::ConfigFileError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Link(#[from] LinkError),
}

/// Resolved agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub server: Option<ServerUrl>,
    pub install_id: Option<String>,
    pub trust: Option<Trust>,
    pub interval: Duration,
}

impl AgentConfig {
    pub fn resolve(args: AgentArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(p) => outpost_common::read_toml::<FileConfig>(p)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                outpost_common::read_toml::<FileConfig>(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => FileConfig::default(),
        };
        let interval = match args.interval {
            Some(d) => d,
            None => match &file.interval {
                Some(s) => humantime::parse_duration(s)
                    .map_err(|e| ConfigError::Invalid(format!("interval {s:?}: {e}")))?,
                None => DEFAULT_INTERVAL,
            },
        };
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::Invalid(
                "interval must be between 100ms and 24h".into(),
            ));
        }
        let server = args
            .server
            .or(file.server)
            .map(|s| ServerUrl::parse(&s))
            .transpose()?;
        // Flags and env win over the file as a pair: a CA file on the command
        // line replaces a fingerprint from the file, and the other way round.
        let (ca_file, ca_fp) = if args.ca_file.is_some() || args.ca_fingerprint.is_some() {
            (args.ca_file, args.ca_fingerprint)
        } else {
            (file.ca_file, file.ca_fingerprint)
        };
        let trust = match (ca_file, ca_fp) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give either ca-file or ca-fingerprint, not both".into(),
                ));
            }
            (Some(f), None) => Some(Trust::from_ca_file(&f)?),
            (None, Some(fp)) => Some(Trust::from_fingerprint(&fp)?),
            (None, None) => None,
        };
        Ok(Self {
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            server,
            install_id: args
                .install_id
                .or(file.install_id)
                .filter(|s| !s.trim().is_empty()),
            trust,
            interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "server = \"https://cp:8443\"\ninterval = \"30s\"\nstate-dir = \"/srv/a\"\nca-fingerprint = \"sha256:{}\"\n",
                "00".repeat(32)
            ),
        )
        .unwrap();
        let cfg = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            interval: Some(Duration::from_secs(2)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.server.unwrap().port, 8443);
        assert_eq!(cfg.interval, Duration::from_secs(2));
        assert_eq!(cfg.state_dir, PathBuf::from("/srv/a"));
        assert!(matches!(cfg.trust, Some(Trust::Fingerprint(_))));
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "servr = \"https://cp:8443\"\n").unwrap();
        let err = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("servr"), "{err}");
    }

    #[test]
    fn bad_interval_is_refused() {
        let err = AgentConfig::resolve(AgentArgs {
            interval: Some(Duration::from_millis(1)),
            state_dir: Some("/tmp/x".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("interval"), "{err}");
    }
}
