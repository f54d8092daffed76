//! Agent configuration: flags > `OUTPOST_*` environment > TOML file
//! (`/etc/outpost/agent.toml` when present, or `--config`) > defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::link::{LinkError, ServerUrl, Trust};
use crate::proxy::{ProxySettings, ProxyUrl};
use crate::spool::Fsync;

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
    /// Enrollment token (oet_…) that enrolls many boxes; instead of --install-id.
    #[arg(long, env = "OUTPOST_ENROLL_TOKEN", conflicts_with = "install_id")]
    pub enroll_token: Option<String>,
    /// With --enroll-token: this box's device name [default: its hostname].
    #[arg(long, env = "OUTPOST_DEVICE_NAME")]
    pub device_name: Option<String>,
    /// Trust the control plane's CA from this PEM file.
    #[arg(long, env = "OUTPOST_CA_FILE", conflicts_with = "ca_fingerprint")]
    pub ca_file: Option<PathBuf>,
    /// Trust the control plane's CA by its fingerprint, sha256:<hex>.
    #[arg(long, env = "OUTPOST_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,
    /// Telemetry interval, e.g. 10s, 1m [default: 10s].
    #[arg(long, env = "OUTPOST_INTERVAL", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Follow this log file (repeatable; `OUTPOST_LOG_FILES` takes a comma-separated list).
    #[arg(long = "log-file", env = "OUTPOST_LOG_FILES", value_delimiter = ',')]
    pub log_files: Vec<PathBuf>,
    /// Ship this systemd unit's journal (repeatable; `OUTPOST_JOURNAL_UNITS` comma-separated).
    #[arg(
        long = "journal-unit",
        env = "OUTPOST_JOURNAL_UNITS",
        value_delimiter = ','
    )]
    pub journal_units: Vec<String>,
    /// Bound on the disk spool, e.g. 64MiB [default: 64MiB]; a quarter is for telemetry.
    #[arg(long, env = "OUTPOST_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<String>,
    /// When spooled records are forced to disk: always, never, or an interval like 1s [default: always].
    #[arg(long, env = "OUTPOST_SPOOL_FSYNC")]
    pub spool_fsync: Option<String>,
    /// Log lines per second kept per source (bursts up to 10x) [default: 100].
    #[arg(long, env = "OUTPOST_LOG_RATE_LIMIT")]
    pub log_rate_limit: Option<u32>,
    /// The agent's own log level: error, warn, info, debug, or a filter like
    /// `outpost_agent=debug,info` [default: info, or OUTPOST_LOG].
    #[arg(long, env = "OUTPOST_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Trust artifacts signed by this publisher key, ed25519:<base64> (repeatable;
    /// `OUTPOST_PUBLISHER_KEYS` comma-separated). Without one, no artifact is installed.
    #[arg(
        long = "publisher-key",
        env = "OUTPOST_PUBLISHER_KEYS",
        value_delimiter = ','
    )]
    pub publisher_keys: Vec<String>,
    /// Where artifacts are installed [default: STATE_DIR/artifacts].
    #[arg(long, env = "OUTPOST_ARTIFACTS_DIR")]
    pub artifacts_dir: Option<PathBuf>,
    /// Disk an artifact may take (payload plus unpacked copy), e.g. 2GiB [default: 2GiB].
    #[arg(long, env = "OUTPOST_ARTIFACT_DISK_BUDGET")]
    pub artifact_disk_budget: Option<String>,
    /// Reach the control plane through this HTTP proxy (CONNECT),
    /// http://[USER:PASS@]HOST:PORT; "" for none [default: https_proxy or
    /// HTTPS_PROXY]. Hosts in no_proxy / NO_PROXY are reached directly.
    #[arg(long)]
    pub proxy: Option<String>,
    /// The offline provisioning payload of this box, as scanned from the QR
    /// code the control plane printed for it (docs/provisioning.md): sets
    /// the server, install ID and CA fingerprint. `@FILE` reads it from a
    /// file, `-` from standard input.
    #[arg(
        long,
        env = "OUTPOST_OFFLINE_PAYLOAD",
        conflicts_with_all = ["server", "install_id", "enroll_token", "ca_file", "ca_fingerprint"]
    )]
    pub offline_payload: Option<String>,
}

/// The text of `--offline-payload`: itself, `@FILE`'s contents, or stdin's
/// for `-` (bounded: a QR code holds less than 3 KB).
fn read_offline_payload(arg: &str) -> Result<String, ConfigError> {
    use std::io::Read;
    let limit = outpost_common::offline::MAX_LEN as u64 + 1;
    let mut text = String::new();
    let read = match arg {
        "-" => std::io::stdin()
            .take(limit)
            .read_to_string(&mut text)
            .map_err(|e| format!("offline payload from standard input: {e}")),
        _ => match arg.strip_prefix('@') {
            Some(path) => std::fs::File::open(path)
                .and_then(|f| f.take(limit).read_to_string(&mut text))
                .map_err(|e| format!("offline payload file {path}: {e}")),
            None => {
                text = arg.to_string();
                Ok(0)
            }
        },
    };
    read.map_err(ConfigError::Invalid)?;
    Ok(text)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    state_dir: Option<PathBuf>,
    server: Option<String>,
    install_id: Option<String>,
    enroll_token: Option<String>,
    device_name: Option<String>,
    ca_file: Option<PathBuf>,
    ca_fingerprint: Option<String>,
    interval: Option<String>,
    log_files: Option<Vec<PathBuf>>,
    journal_units: Option<Vec<String>>,
    spool_max_bytes: Option<String>,
    spool_fsync: Option<String>,
    log_rate_limit: Option<u32>,
    log_level: Option<String>,
    publisher_keys: Option<Vec<String>>,
    artifacts_dir: Option<PathBuf>,
    artifact_disk_budget: Option<String>,
    proxy: Option<String>,
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
    /// An enrollment token (instead of an install ID).
    pub enroll_token: Option<String>,
    /// The device name asked for with an enrollment token.
    pub device_name: Option<String>,
    pub trust: Option<Trust>,
    pub interval: Duration,
    pub log_files: Vec<PathBuf>,
    pub journal_units: Vec<String>,
    pub spool_max_bytes: u64,
    pub spool_fsync: Fsync,
    pub log_rate_limit: u32,
    pub log_level: Option<String>,
    /// Publisher keys whose signed artifacts this box installs.
    pub publisher_keys: Vec<outpost_common::artifact::PublicKey>,
    pub artifacts_dir: PathBuf,
    pub artifact_disk_budget: u64,
    /// The HTTP CONNECT proxy for the link, and what bypasses it.
    pub proxy: ProxySettings,
}

pub const DEFAULT_ARTIFACT_DISK_BUDGET: u64 = 2 << 30;

pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_LOG_RATE_LIMIT: u32 = 100;

/// `65536`, `64KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Names where a value given as a flag or its environment variable came
/// from: the flag when it is on the command line, else the variable.
fn flag_or_env(flag: &str, env: &str) -> String {
    let prefix = format!("{flag}=");
    let on_command_line = std::env::args().any(|a| a == flag || a.starts_with(&prefix));
    if on_command_line || std::env::var_os(env).is_none() {
        flag.to_string()
    } else {
        format!("{env} (environment)")
    }
}

impl AgentConfig {
    /// What this box enrolls with, if anything is configured.
    pub fn grant(&self) -> Option<crate::enroll::Grant<'_>> {
        if let Some(token) = &self.enroll_token {
            return Some(crate::enroll::Grant::Token {
                token,
                device_name: self.device_name.as_deref(),
            });
        }
        self.install_id
            .as_deref()
            .map(crate::enroll::Grant::InstallId)
    }
}

impl AgentConfig {
    pub fn resolve(mut args: AgentArgs) -> Result<Self, ConfigError> {
        // The scanned payload stands for the three flags it replaces.
        let from_payload = args.offline_payload.is_some();
        if let Some(arg) = args.offline_payload.take() {
            let p = outpost_common::offline::OfflinePayload::parse(&read_offline_payload(&arg)?)
                .map_err(ConfigError::Invalid)?;
            args.server = Some(p.server);
            args.install_id = Some(p.install_id);
            args.ca_fingerprint = Some(p.ca_fingerprint);
        }
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
        let config_source = match &args.config {
            Some(p) => format!("ca-fingerprint in {}", p.display()),
            None => format!("ca-fingerprint in {DEFAULT_CONFIG_FILE}"),
        };
        let (ca_file, ca_fp, fp_source) = if args.ca_file.is_some() || args.ca_fingerprint.is_some()
        {
            let source = if from_payload {
                "the offline payload's caFingerprint".to_string()
            } else {
                flag_or_env("--ca-fingerprint", "OUTPOST_CA_FINGERPRINT")
            };
            (args.ca_file, args.ca_fingerprint, source)
        } else {
            (file.ca_file, file.ca_fingerprint, config_source)
        };
        let trust = match (ca_file, ca_fp) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give either ca-file or ca-fingerprint, not both".into(),
                ));
            }
            (Some(f), None) => Some(Trust::from_ca_file(&f)?),
            (None, Some(fp)) => Some(Trust::from_fingerprint(&fp, &fp_source)?),
            (None, None) => None,
        };
        let spool_max_bytes = match args.spool_max_bytes.or(file.spool_max_bytes) {
            Some(s) => parse_bytes(&s)
                .map_err(|e| ConfigError::Invalid(format!("spool-max-bytes: {e}")))?,
            None => DEFAULT_SPOOL_MAX_BYTES,
        };
        if spool_max_bytes < 64 << 10 {
            return Err(ConfigError::Invalid(
                "spool-max-bytes must be at least 64KiB".into(),
            ));
        }
        let spool_fsync = match args.spool_fsync.or(file.spool_fsync) {
            Some(s) => s
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("spool-fsync: {e}")))?,
            None => Fsync::Always,
        };
        let log_rate_limit = args
            .log_rate_limit
            .or(file.log_rate_limit)
            .unwrap_or(DEFAULT_LOG_RATE_LIMIT);
        if log_rate_limit == 0 {
            return Err(ConfigError::Invalid(
                "log-rate-limit must be at least 1 line per second".into(),
            ));
        }
        // Lists: the flags (or env) replace the file's list.
        let log_files = if args.log_files.is_empty() {
            file.log_files.unwrap_or_default()
        } else {
            args.log_files
        };
        let journal_units = if args.journal_units.is_empty() {
            file.journal_units.unwrap_or_default()
        } else {
            args.journal_units
        };
        if let Some(u) = journal_units
            .iter()
            .find(|u| u.is_empty() || u.starts_with('-'))
        {
            return Err(ConfigError::Invalid(format!(
                "journal unit {u:?} is not a unit name"
            )));
        }
        let log_level = args.log_level.or(file.log_level);
        if let Some(l) = &log_level
            && let Err(e) = outpost_common::parse_log_filter(l)
        {
            return Err(ConfigError::Invalid(format!("log-level: {e}")));
        }
        let install_id = args
            .install_id
            .or(file.install_id)
            .filter(|s| !s.trim().is_empty());
        let enroll_token = args
            .enroll_token
            .or(file.enroll_token)
            .filter(|s| !s.trim().is_empty());
        if install_id.is_some() && enroll_token.is_some() {
            return Err(ConfigError::Invalid(
                "give either install-id or enroll-token, not both".into(),
            ));
        }
        let device_name = args
            .device_name
            .or(file.device_name)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let publisher_keys = if args.publisher_keys.is_empty() {
            file.publisher_keys.unwrap_or_default()
        } else {
            args.publisher_keys
        };
        let publisher_keys = publisher_keys
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                k.parse::<outpost_common::artifact::PublicKey>()
                    .map_err(|e| ConfigError::Invalid(format!("publisher key {k:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let artifact_disk_budget = match args.artifact_disk_budget.or(file.artifact_disk_budget) {
            Some(s) => parse_bytes(&s)
                .map_err(|e| ConfigError::Invalid(format!("artifact-disk-budget: {e}")))?,
            None => DEFAULT_ARTIFACT_DISK_BUDGET,
        };
        let state_dir = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let artifacts_dir = args
            .artifacts_dir
            .or(file.artifacts_dir)
            .unwrap_or_else(|| state_dir.join("artifacts"));
        let file_source = match &args.config {
            Some(p) => format!("proxy in {}", p.display()),
            None => format!("proxy in {DEFAULT_CONFIG_FILE}"),
        };
        let proxy = resolve_proxy(
            args.proxy,
            ProxySettings::proxy_from_env(),
            file.proxy.map(|p| (p, file_source)),
            ProxySettings::no_proxy_from_env(),
        )?;
        Ok(Self {
            proxy,
            publisher_keys,
            artifacts_dir,
            artifact_disk_budget,
            install_id,
            enroll_token,
            device_name,
            log_level,
            log_files,
            journal_units,
            spool_max_bytes,
            spool_fsync,
            log_rate_limit,
            state_dir,
            server,
            trust,
            interval,
        })
    }
}

/// The proxy setting: `--proxy` > `https_proxy`/`HTTPS_PROXY` > the file's
/// `proxy`. An empty flag or file value means no proxy; an empty variable
/// counts as unset.
fn resolve_proxy(
    flag: Option<String>,
    env: Option<(String, &'static str)>,
    file: Option<(String, String)>,
    no_proxy: String,
) -> Result<ProxySettings, ConfigError> {
    let (raw, source) = match (flag, env, file) {
        (Some(f), _, _) => (f, "--proxy".to_string()),
        (None, Some((v, name)), _) => (v, format!("{name} (environment)")),
        (None, None, Some((v, source))) => (v, source),
        (None, None, None) => return Ok(ProxySettings::default()),
    };
    if raw.trim().is_empty() {
        return Ok(ProxySettings {
            proxy: None,
            source,
            no_proxy,
        });
    }
    // The message must not echo the value: it may hold a password.
    let proxy =
        ProxyUrl::parse(&raw).map_err(|e| ConfigError::Invalid(format!("{source}: {e}")))?;
    Ok(ProxySettings {
        proxy: Some(proxy),
        source,
        no_proxy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_comes_from_the_flag_the_environment_or_the_file() {
        let env = || Some(("http://e:1".to_string(), "HTTPS_PROXY"));
        let file = || Some(("http://f:1".to_string(), "proxy in a.toml".to_string()));
        let host = |s: &ProxySettings| s.proxy.as_ref().map(|p| p.host.clone());
        let s =
            resolve_proxy(Some("http://u:pw@c:1".into()), env(), file(), String::new()).unwrap();
        assert_eq!(
            (host(&s).as_deref(), s.source.as_str()),
            (Some("c"), "--proxy")
        );
        let s = resolve_proxy(None, env(), file(), "x.lan".into()).unwrap();
        assert_eq!(host(&s).as_deref(), Some("e"));
        assert_eq!(s.source, "HTTPS_PROXY (environment)");
        assert_eq!(s.no_proxy, "x.lan");
        let s = resolve_proxy(None, None, file(), String::new()).unwrap();
        assert_eq!(
            (host(&s).as_deref(), s.source.as_str()),
            (Some("f"), "proxy in a.toml")
        );
        // "" on the command line: no proxy, whatever the environment says.
        let s = resolve_proxy(Some(String::new()), env(), None, String::new()).unwrap();
        assert_eq!((host(&s), s.source.as_str()), (None, "--proxy"));
        assert_eq!(
            resolve_proxy(None, None, None, String::new()).unwrap(),
            ProxySettings::default()
        );
        // A bad value is named by where it came from, never echoed.
        let e = resolve_proxy(
            Some("socks5://u:hunter2@p:1".into()),
            None,
            None,
            String::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--proxy: ") && !e.contains("hunter2"), "{e}");
    }

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
        assert!(matches!(cfg.trust, Some(Trust::Fingerprint { .. })));
    }

    #[test]
    fn an_offline_payload_stands_for_server_install_id_and_fingerprint() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        let payload = outpost_common::offline::OfflinePayload {
            v: outpost_common::offline::VERSION,
            server: "https://cp.example.com:8443".into(),
            workspace: "acme".into(),
            device_id: "k3abc".into(),
            install_id: "inst_abc".into(),
            ca_fingerprint: fp.clone(),
        }
        .to_json();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scanned.txt");
        std::fs::write(&file, format!("{payload}\n")).unwrap();
        for arg in [payload.clone(), format!("@{}", file.display())] {
            let cfg = AgentConfig::resolve(AgentArgs {
                offline_payload: Some(arg),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(cfg.server.unwrap().port, 8443);
            assert_eq!(cfg.install_id.as_deref(), Some("inst_abc"));
            assert!(matches!(cfg.trust, Some(Trust::Fingerprint { .. })));
        }
        let newer = payload.replace("\"v\":1", "\"v\":2");
        let err = AgentConfig::resolve(AgentArgs {
            offline_payload: Some(newer),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("version 2"), "{err}");
        let err = AgentConfig::resolve(AgentArgs {
            offline_payload: Some("@/nonexistent/scan".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/scan"), "{err}");
    }

    #[test]
    fn an_enrollment_token_comes_from_the_file_and_excludes_an_install_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "enroll-token = \"oet_x\"\ndevice-name = \"cam-1\"\n").unwrap();
        let cfg = AgentConfig::resolve(AgentArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            cfg.grant(),
            Some(crate::enroll::Grant::Token {
                token: "oet_x",
                device_name: Some("cam-1")
            })
        ));
        let both = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            install_id: Some("inst_y".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
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
    fn log_sources_and_spool_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "log-files = [\"/var/log/a.log\"]\njournal-units = [\"nginx.service\"]\nspool-max-bytes = \"8MiB\"\nspool-fsync = \"1s\"\n",
        )
        .unwrap();
        let cfg = AgentConfig::resolve(AgentArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.log_files, vec![PathBuf::from("/var/log/a.log")]);
        assert_eq!(cfg.journal_units, vec!["nginx.service".to_string()]);
        assert_eq!(cfg.spool_max_bytes, 8 << 20);
        assert_eq!(cfg.spool_fsync, Fsync::Interval(Duration::from_secs(1)));
        assert_eq!(cfg.log_rate_limit, DEFAULT_LOG_RATE_LIMIT);
        // Flags replace the file's lists.
        let cfg = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            log_files: vec!["/tmp/b.log".into(), "/tmp/c.log".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.log_files.len(), 2);
        assert_eq!(cfg.journal_units.len(), 1);
        for bad in ["12XB", "lots", "1KiB"] {
            let err = AgentConfig::resolve(AgentArgs {
                spool_max_bytes: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains("spool-max-bytes"), "{err}");
        }
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("65536"), Ok(65536));
    }

    #[test]
    fn publisher_keys_artifacts_dir_and_budget() {
        let key = outpost_common::artifact::SigningKey::generate()
            .unwrap()
            .0
            .public_key()
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!("publisher-keys = [\"{key}\"]\nstate-dir = \"/srv/a\"\nartifact-disk-budget = \"1GiB\"\n"),
        )
        .unwrap();
        let cfg = AgentConfig::resolve(AgentArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.publisher_keys.len(), 1);
        assert_eq!(cfg.publisher_keys[0].to_string(), key);
        assert_eq!(cfg.artifacts_dir, PathBuf::from("/srv/a/artifacts"));
        assert_eq!(cfg.artifact_disk_budget, 1 << 30);
        let cfg = AgentConfig::resolve(AgentArgs {
            state_dir: Some("/tmp/x".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(cfg.publisher_keys.is_empty());
        assert_eq!(cfg.artifact_disk_budget, DEFAULT_ARTIFACT_DISK_BUDGET);
        let err = AgentConfig::resolve(AgentArgs {
            state_dir: Some("/tmp/x".into()),
            publisher_keys: vec![key.clone(), "ed25519:short".into()],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("ed25519:short"), "{err}");
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

    #[test]
    fn a_log_level_is_checked_when_the_config_is_read() {
        let resolve = |level: &str| {
            AgentConfig::resolve(AgentArgs {
                log_level: Some(level.into()),
                state_dir: Some("/tmp/x".into()),
                ..Default::default()
            })
        };
        let cfg = resolve("outpost_agent=debug,warn").unwrap();
        assert_eq!(cfg.log_level.as_deref(), Some("outpost_agent=debug,warn"));
        let err = resolve("outpost_agent=chatty").unwrap_err().to_string();
        assert!(err.contains("log-level") && err.contains("chatty"), "{err}");
    }
}
