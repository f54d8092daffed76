//! Small pieces both Outpost programs need, kept in one place: files that
//! must survive a crash (and stay private), TOML config files that reject
//! unknown keys, process start-up (crypto provider, logging) and stop signals.
#![forbid(unsafe_code)]

pub mod artifact;
pub mod fs;
pub mod offline;

use std::path::{Path, PathBuf};

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Includes unknown keys when the target type denies them.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Reads and parses a TOML config file.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

/// Process start-up shared by both binaries: installs `ring` as the one
/// rustls crypto provider (before any TLS config exists) and logs to stderr
/// at the level in `OUTPOST_LOG` (default `info`; one that does not parse is
/// reported and `info` used), with colours only on a terminal.
pub fn init_process() -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| "a rustls crypto provider was already installed".to_string())?;
    let env = std::env::var("OUTPOST_LOG").ok();
    let (filter, bad_env) = match env.as_deref().map(parse_log_filter) {
        None => (default_log_filter(), None),
        Some(Ok(filter)) => (filter, None),
        Some(Err(e)) => (default_log_filter(), Some(e)),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set(handle);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    if let Some(e) = bad_env {
        tracing::warn!("OUTPOST_LOG: {e}; logging at info");
    }
    Ok(())
}

/// The log filter: comma-separated `level` (the default for every target)
/// and `target=level` directives, e.g. `info`, `outpost_agent=debug,warn`.
/// This is `tracing_subscriber`'s `Targets` filter: the same syntax as
/// `RUST_LOG` without span and field directives (and without the regex
/// engine those need: ~180 KB, 6 % of the agent's code).
pub type LogFilter = tracing_subscriber::filter::Targets;

fn default_log_filter() -> LogFilter {
    LogFilter::new().with_default(tracing::Level::INFO)
}

/// Parses a log filter ([`LogFilter`]), with a message that names the spec.
pub fn parse_log_filter(spec: &str) -> Result<LogFilter, String> {
    spec.trim()
        .parse()
        .map_err(|e| format!("log level {spec:?} is not valid: {e}"))
}

type FilterHandle = tracing_subscriber::reload::Handle<LogFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Replaces the log filter (`info`, `debug`, `outpost_agent=debug,info`, …)
/// at run time, e.g. on SIGHUP.
pub fn set_log_filter(spec: &str) -> Result<(), String> {
    let filter = parse_log_filter(spec)?;
    let handle = LOG_FILTER.get().ok_or("logging is not initialised")?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log level: {e}"))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::error!("cannot install a SIGTERM handler ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        name: String,
    }

    #[test]
    fn unknown_keys_and_missing_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "nmae = \"x\"\n").unwrap();
        let err = read_toml::<Cfg>(&p).unwrap_err().to_string();
        assert!(err.contains("nmae") && err.contains("c.toml"), "{err}");
        let err = read_toml::<Cfg>(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }

    #[test]
    fn log_filters_take_levels_and_target_directives_and_name_a_bad_spec() {
        use tracing::level_filters::LevelFilter;
        let f = parse_log_filter("outpost_agent=debug,warn").unwrap();
        assert!(f.would_enable("outpost_agent::link", &tracing::Level::DEBUG));
        assert!(!f.would_enable("h2::proto", &tracing::Level::INFO));
        assert!(f.would_enable("h2::proto", &tracing::Level::WARN));
        assert_eq!(
            parse_log_filter(" debug ").unwrap().default_level(),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(
            parse_log_filter("off").unwrap().default_level(),
            Some(LevelFilter::OFF)
        );
        for bad in ["outpost_agent=loud", "a=b=c", "x=info=debug"] {
            let err = parse_log_filter(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("not valid"),
                "{err}"
            );
        }
    }
}
