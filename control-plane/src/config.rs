//! `serve` configuration: flags > `OUTPOST_*` environment > TOML file > defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default device certificate lifetime (SPEC §2).
pub const DEFAULT_DEVICE_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long after expiry a certificate may still rotate (SPEC §2).
pub const DEFAULT_EXPIRED_CERT_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default install ID lifetime (SPEC §2).
pub const DEFAULT_INSTALL_ID_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_DATA_DIR: &str = "outpost-data";
pub const DEFAULT_REST_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_GRPC_LISTEN: &str = "0.0.0.0:8443";

/// Options of `serve`, each settable by flag, environment variable or file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the options below (kebab-case keys).
    #[arg(long, env = "OUTPOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the database and the CA live [default: ./outpost-data].
    #[arg(long, env = "OUTPOST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Operator REST API address [default: 127.0.0.1:8080].
    #[arg(long, env = "OUTPOST_REST_LISTEN")]
    pub rest_listen: Option<SocketAddr>,
    /// Device gRPC (mTLS) address [default: 0.0.0.0:8443].
    #[arg(long, env = "OUTPOST_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// DNS names / IPs for the gRPC server certificate (repeatable)
    /// [default: localhost, 127.0.0.1, ::1 and this host's name].
    #[arg(
        long = "server-name",
        env = "OUTPOST_SERVER_NAMES",
        value_delimiter = ','
    )]
    pub server_names: Vec<String>,
    /// URL agents use to reach the gRPC service, shown in install commands
    /// [default: https://<first server name>:<grpc port>].
    #[arg(long, env = "OUTPOST_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// URL boxes and operators reach the REST API at, usually a TLS reverse
    /// proxy (`https://outpost.example.com`); with it and an agent tarball in
    /// `--agent-dist`, install commands are `curl -fsSL URL/install.sh | sudo sh -s -- …`.
    #[arg(long, env = "OUTPOST_PUBLIC_REST_URL")]
    pub public_rest_url: Option<String>,
    /// Directory of agent release tarballs (`scripts/release.sh --into DIR`)
    /// served at `/downloads/` [default: DATA_DIR/dist].
    #[arg(long, env = "OUTPOST_AGENT_DIST")]
    pub agent_dist: Option<PathBuf>,
    /// Lifetime of device certificates, e.g. `7d`, `12h`, `15s` [default: 7d].
    #[arg(long, env = "OUTPOST_DEVICE_CERT_LIFETIME", value_parser = humantime::parse_duration)]
    pub device_cert_lifetime: Option<Duration>,
    /// Lifetime of a new install ID [default: 7d].
    #[arg(long, env = "OUTPOST_INSTALL_ID_TTL", value_parser = humantime::parse_duration)]
    pub install_id_ttl: Option<Duration>,
    /// How long after expiry a device certificate may still be used to
    /// rotate (and nothing else) [default: 30d].
    #[arg(long, env = "OUTPOST_EXPIRED_CERT_GRACE", value_parser = humantime::parse_duration)]
    pub expired_cert_grace: Option<Duration>,
    /// PostgreSQL URL (`postgres://user@host/db`) to run on PostgreSQL, e.g.
    /// with several replicas [default: SQLite in the data dir].
    #[arg(long, env = "OUTPOST_DATABASE_URL")]
    pub database_url: Option<String>,
    /// How long telemetry samples are kept [default: 30d].
    #[arg(long, env = "OUTPOST_TELEMETRY_RETENTION", value_parser = humantime::parse_duration)]
    pub telemetry_retention: Option<Duration>,
    /// How long the 1-minute telemetry rollups are kept: the 1h-to-7d
    /// views past raw retention [default: 90d].
    #[arg(long, env = "OUTPOST_TELEMETRY_1M_RETENTION", value_parser = humantime::parse_duration)]
    pub telemetry_1m_retention: Option<Duration>,
    /// How long the 1-hour telemetry rollups are kept: the 24h-and-longer
    /// views [default: 730d].
    #[arg(long, env = "OUTPOST_TELEMETRY_1H_RETENTION", value_parser = humantime::parse_duration)]
    pub telemetry_1h_retention: Option<Duration>,
    /// How long log lines are kept [default: 7d].
    #[arg(long, env = "OUTPOST_LOG_RETENTION", value_parser = humantime::parse_duration)]
    pub log_retention: Option<Duration>,
    /// How long device events are kept [default: 90d].
    #[arg(long, env = "OUTPOST_EVENT_RETENTION", value_parser = humantime::parse_duration)]
    pub event_retention: Option<Duration>,
    /// How long operator audit entries are kept [default: 365d].
    #[arg(long, env = "OUTPOST_AUDIT_RETENTION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<Duration>,
    /// A file holding a bearer token that may scrape `/metrics` for every
    /// workspace (Prometheus' `bearer_token_file`). Without it, `/metrics`
    /// takes a workspace API key with the device:read scope.
    #[arg(long, env = "OUTPOST_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// How often `/metrics` re-renders its per-device families from the
    /// store while scraped; scrapes are served from memory in between.
    /// `0s`: render on every scrape [default: 10s].
    #[arg(long, env = "OUTPOST_METRICS_REFRESH", value_parser = humantime::parse_duration)]
    pub metrics_refresh: Option<Duration>,
    /// Largest artifact payload accepted, e.g. `4GiB`, `500MiB`, or bytes
    /// [default: 4GiB].
    #[arg(long, env = "OUTPOST_MAX_ARTIFACT_SIZE", value_parser = parse_byte_size)]
    pub max_artifact_size: Option<u64>,
    /// Artifact downloads (FetchArtifact) served at once by this replica;
    /// more are refused as busy and retried by the agents [default: 64].
    #[arg(long, env = "OUTPOST_MAX_ARTIFACT_DOWNLOADS")]
    pub max_artifact_downloads: Option<usize>,
    /// Connections the device (gRPC) listener holds at once, TLS handshakes
    /// included; lowered to fit the open-file limit [default: 50000].
    #[arg(long, env = "OUTPOST_GRPC_MAX_CONNECTIONS")]
    pub grpc_max_connections: Option<usize>,
    /// Device-listener connections one source address (IPv6: one /64) holds
    /// at once; boxes behind one NAT address share it [default: 1024].
    #[arg(long, env = "OUTPOST_GRPC_MAX_CONNECTIONS_PER_IP")]
    pub grpc_max_connections_per_ip: Option<usize>,
    /// Connections the REST listener holds at once [default: 4096].
    #[arg(long, env = "OUTPOST_REST_MAX_CONNECTIONS")]
    pub rest_max_connections: Option<usize>,
    /// REST connections one source address holds at once [default: 256].
    #[arg(long, env = "OUTPOST_REST_MAX_CONNECTIONS_PER_IP")]
    pub rest_max_connections_per_ip: Option<usize>,
    /// TLS handshakes in progress at once from one source address on the
    /// device listener [default: 32].
    #[arg(long, env = "OUTPOST_MAX_PENDING_HANDSHAKES_PER_IP")]
    pub max_pending_handshakes_per_ip: Option<usize>,
    /// Apply the per-address caps to loopback peers too (by default the host
    /// itself, and a reverse proxy on it, are exempt).
    #[arg(long, env = "OUTPOST_CONNECTION_LIMITS_ON_LOOPBACK")]
    pub connection_limits_on_loopback: bool,
    /// How long a device-listener peer has to send its TLS ClientHello
    /// [default: 5s].
    #[arg(long, env = "OUTPOST_TLS_CLIENT_HELLO_TIMEOUT", value_parser = humantime::parse_duration)]
    pub tls_client_hello_timeout: Option<Duration>,
    /// How long a whole TLS handshake may take [default: 10s].
    #[arg(long, env = "OUTPOST_TLS_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Option<Duration>,
    /// How long a new connection may go without its first request (gRPC:
    /// the HTTP/2 preface and first stream, after the handshake) [default: 10s].
    #[arg(long, env = "OUTPOST_FIRST_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    pub first_request_timeout: Option<Duration>,
    /// How long a connection may have no request or stream in flight (an
    /// agent's session is one, for as long as it lasts) [default: 60s].
    #[arg(long, env = "OUTPOST_IDLE_CONNECTION_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_connection_timeout: Option<Duration>,
    /// The longest a device-listener connection without a client
    /// certificate (enrollment) lives [default: 60s].
    #[arg(long, env = "OUTPOST_UNAUTHENTICATED_CONNECTION_LIFETIME", value_parser = humantime::parse_duration)]
    pub unauthenticated_connection_lifetime: Option<Duration>,
    /// How long a REST client has to send a request's line and headers (also
    /// how long an HTTP/1 keep-alive connection may wait for its next
    /// request) [default: 10s].
    #[arg(long, env = "OUTPOST_HTTP_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub http_header_read_timeout: Option<Duration>,
    /// Test hook: how long one chunk of a download may wait on a device
    /// that does not read [default: 60s, `artifacts::SEND_STALL_TIMEOUT`].
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub artifact_send_stall_timeout: Option<Duration>,
    /// A reverse proxy's address or network (`10.0.0.5`, `10.0.0.0/8`,
    /// `fd00::/8`; repeatable): REST requests from these peers are taken to
    /// come from the right-most address of `X-Forwarded-For` that is not a
    /// trusted proxy (rate limits, audit trail). From other peers the header
    /// is ignored [default: none].
    #[arg(
        long = "trusted-proxy",
        env = "OUTPOST_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,
}

/// An IP network (`10.0.0.0/8`) or one address (`10.0.0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IP address or network (10.0.0.0/8, fd00::/8)");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Default of `--max-artifact-size`.
pub const DEFAULT_MAX_ARTIFACT_SIZE: u64 = 4 << 30;
/// Default of `--max-artifact-downloads`.
pub const DEFAULT_MAX_ARTIFACT_DOWNLOADS: usize = 64;

/// `4GiB`, `500MiB`, `64KiB`, `4G`, `1048576`: binary units.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4GiB, 500MiB, 1048576)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (B, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

mod opt_byte_size {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Bytes(u64),
            Text(String),
        }
        match Option::<Size>::deserialize(d)? {
            None => Ok(None),
            Some(Size::Bytes(n)) => Ok(Some(n)),
            Some(Size::Text(t)) => super::parse_byte_size(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The same options as they appear in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    rest_listen: Option<SocketAddr>,
    grpc_listen: Option<SocketAddr>,
    server_names: Option<Vec<String>>,
    public_url: Option<String>,
    public_rest_url: Option<String>,
    agent_dist: Option<PathBuf>,
    #[serde(default, with = "opt_duration")]
    device_cert_lifetime: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    install_id_ttl: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    expired_cert_grace: Option<Duration>,
    database_url: Option<String>,
    #[serde(default, with = "opt_duration")]
    telemetry_retention: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    telemetry_1m_retention: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    telemetry_1h_retention: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    log_retention: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    event_retention: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    audit_retention: Option<Duration>,
    metrics_token_file: Option<PathBuf>,
    #[serde(default, with = "opt_duration")]
    metrics_refresh: Option<Duration>,
    #[serde(default, with = "opt_byte_size")]
    max_artifact_size: Option<u64>,
    max_artifact_downloads: Option<usize>,
    grpc_max_connections: Option<usize>,
    grpc_max_connections_per_ip: Option<usize>,
    rest_max_connections: Option<usize>,
    rest_max_connections_per_ip: Option<usize>,
    max_pending_handshakes_per_ip: Option<usize>,
    connection_limits_on_loopback: Option<bool>,
    #[serde(default, with = "opt_duration")]
    tls_client_hello_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    tls_handshake_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    first_request_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    idle_connection_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    unauthenticated_connection_lifetime: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    http_header_read_timeout: Option<Duration>,
    trusted_proxies: Option<Vec<Cidr>>,
}

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `--metrics-refresh`'s default.
pub const DEFAULT_METRICS_REFRESH: Duration = Duration::from_secs(10);

/// Fully resolved `serve` settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub rest_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub server_names: Vec<String>,
    pub public_url: Option<String>,
    /// Where boxes reach REST (no trailing slash); see [`ServeArgs`].
    pub public_rest_url: Option<String>,
    /// Agent tarballs served at `/downloads/`.
    pub agent_dist: PathBuf,
    pub device_cert_lifetime: Duration,
    pub install_id_ttl: Duration,
    pub expired_cert_grace: Duration,
    pub retention: RetentionConfig,
    pub database_url: Option<String>,
    pub metrics_token_file: Option<PathBuf>,
    /// `--metrics-refresh` (zero: no cache).
    pub metrics_refresh: Duration,
    /// Largest artifact payload accepted (`--max-artifact-size`).
    pub max_artifact_size: u64,
    /// Concurrent artifact downloads (`--max-artifact-downloads`).
    pub max_artifact_downloads: usize,
    /// How long a download's send may wait on its device.
    pub artifact_send_stall_timeout: Duration,
    /// Connection caps and timeouts of both listeners.
    pub connections: ConnectionConfig,
    /// Reverse proxies whose `X-Forwarded-For` REST believes.
    pub trusted_proxies: Vec<Cidr>,
}

/// Connection caps and timeouts of both listeners (docs/connection-limits.md); the
/// defaults are [`ConnectionConfig::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionConfig {
    pub grpc_max_connections: usize,
    pub grpc_max_connections_per_ip: usize,
    pub rest_max_connections: usize,
    pub rest_max_connections_per_ip: usize,
    pub max_pending_handshakes_per_ip: usize,
    /// Per-address caps apply to loopback peers too.
    pub limit_loopback: bool,
    pub tls_client_hello_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub first_request_timeout: Duration,
    pub idle_connection_timeout: Duration,
    pub unauthenticated_connection_lifetime: Duration,
    pub http_header_read_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            grpc_max_connections: 50_000,
            grpc_max_connections_per_ip: 1024,
            rest_max_connections: 4096,
            rest_max_connections_per_ip: 256,
            max_pending_handshakes_per_ip: 32,
            limit_loopback: false,
            tls_client_hello_timeout: s(5),
            tls_handshake_timeout: s(10),
            first_request_timeout: s(10),
            idle_connection_timeout: s(60),
            unauthenticated_connection_lifetime: s(60),
            http_header_read_timeout: s(10),
        }
    }
}

impl ConnectionConfig {
    fn resolve(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let d = Self::default();
        let count = |name: &str, a: Option<usize>, f: Option<usize>, def: usize| {
            let v = a.or(f).unwrap_or(def);
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
            Ok(v)
        };
        let dur = |name: &str, a: Option<Duration>, f: Option<Duration>, def: Duration| {
            let v = a.or(f).unwrap_or(def);
            if v.is_zero() {
                return Err(ConfigError::Invalid(format!("{name} must be more than 0")));
            }
            Ok(v)
        };
        let c = Self {
            grpc_max_connections: count(
                "grpc-max-connections",
                args.grpc_max_connections,
                file.grpc_max_connections,
                d.grpc_max_connections,
            )?,
            grpc_max_connections_per_ip: count(
                "grpc-max-connections-per-ip",
                args.grpc_max_connections_per_ip,
                file.grpc_max_connections_per_ip,
                d.grpc_max_connections_per_ip,
            )?,
            rest_max_connections: count(
                "rest-max-connections",
                args.rest_max_connections,
                file.rest_max_connections,
                d.rest_max_connections,
            )?,
            rest_max_connections_per_ip: count(
                "rest-max-connections-per-ip",
                args.rest_max_connections_per_ip,
                file.rest_max_connections_per_ip,
                d.rest_max_connections_per_ip,
            )?,
            max_pending_handshakes_per_ip: count(
                "max-pending-handshakes-per-ip",
                args.max_pending_handshakes_per_ip,
                file.max_pending_handshakes_per_ip,
                d.max_pending_handshakes_per_ip,
            )?,
            limit_loopback: args.connection_limits_on_loopback
                || file.connection_limits_on_loopback.unwrap_or(false),
            tls_client_hello_timeout: dur(
                "tls-client-hello-timeout",
                args.tls_client_hello_timeout,
                file.tls_client_hello_timeout,
                d.tls_client_hello_timeout,
            )?,
            tls_handshake_timeout: dur(
                "tls-handshake-timeout",
                args.tls_handshake_timeout,
                file.tls_handshake_timeout,
                d.tls_handshake_timeout,
            )?,
            first_request_timeout: dur(
                "first-request-timeout",
                args.first_request_timeout,
                file.first_request_timeout,
                d.first_request_timeout,
            )?,
            idle_connection_timeout: dur(
                "idle-connection-timeout",
                args.idle_connection_timeout,
                file.idle_connection_timeout,
                d.idle_connection_timeout,
            )?,
            unauthenticated_connection_lifetime: dur(
                "unauthenticated-connection-lifetime",
                args.unauthenticated_connection_lifetime,
                file.unauthenticated_connection_lifetime,
                d.unauthenticated_connection_lifetime,
            )?,
            http_header_read_timeout: dur(
                "http-header-read-timeout",
                args.http_header_read_timeout,
                file.http_header_read_timeout,
                d.http_header_read_timeout,
            )?,
        };
        if c.tls_client_hello_timeout > c.tls_handshake_timeout {
            return Err(ConfigError::Invalid(
                "tls-client-hello-timeout must not exceed tls-handshake-timeout".into(),
            ));
        }
        Ok(c)
    }
}

/// How long stored data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Raw samples.
    pub telemetry: Duration,
    /// Rollup tiers.
    pub telemetry_1m: Duration,
    pub telemetry_1h: Duration,
    pub logs: Duration,
    pub events: Duration,
    pub audit: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            telemetry: Duration::from_secs(30 * DAY),
            telemetry_1m: Duration::from_secs(90 * DAY),
            telemetry_1h: Duration::from_secs(730 * DAY),
            logs: Duration::from_secs(7 * DAY),
            events: Duration::from_secs(90 * DAY),
            audit: Duration::from_secs(365 * DAY),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    File(#[from] outpost_common::ConfigFileError),
    #[error("{0}")]
    Invalid(String),
}

impl ServeConfig {
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => outpost_common::read_toml::<FileConfig>(path)?,
            None => FileConfig::default(),
        };
        let parse = |s: &str| -> SocketAddr {
            // The defaults are literals above; parsing them cannot fail.
            s.parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        let connections = ConnectionConfig::resolve(&args, &file)?;
        let server_names = if !args.server_names.is_empty() {
            args.server_names
        } else {
            file.server_names.unwrap_or_else(default_server_names)
        };
        if server_names.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one server name is required".into(),
            ));
        }
        let device_cert_lifetime = args
            .device_cert_lifetime
            .or(file.device_cert_lifetime)
            .unwrap_or(DEFAULT_DEVICE_CERT_LIFETIME);
        if device_cert_lifetime < Duration::from_secs(5) {
            return Err(ConfigError::Invalid(
                "device-cert-lifetime must be at least 5s".into(),
            ));
        }
        let public_rest_url = args
            .public_rest_url
            .or(file.public_rest_url)
            .map(|u| check_public_rest_url(&u))
            .transpose()?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let max_artifact_size = args
            .max_artifact_size
            .or(file.max_artifact_size)
            .unwrap_or(DEFAULT_MAX_ARTIFACT_SIZE);
        if max_artifact_size == 0 {
            return Err(ConfigError::Invalid(
                "max-artifact-size must be at least 1 byte".into(),
            ));
        }
        let max_artifact_downloads = args
            .max_artifact_downloads
            .or(file.max_artifact_downloads)
            .unwrap_or(DEFAULT_MAX_ARTIFACT_DOWNLOADS);
        if max_artifact_downloads == 0 {
            return Err(ConfigError::Invalid(
                "max-artifact-downloads must be at least 1".into(),
            ));
        }
        let trusted_proxies = if args.trusted_proxies.is_empty() {
            file.trusted_proxies.unwrap_or_default()
        } else {
            args.trusted_proxies
        };
        Ok(Self {
            connections,
            trusted_proxies,
            max_artifact_size,
            max_artifact_downloads,
            artifact_send_stall_timeout: args
                .artifact_send_stall_timeout
                .unwrap_or(crate::artifacts::SEND_STALL_TIMEOUT),
            agent_dist: args
                .agent_dist
                .or(file.agent_dist)
                .unwrap_or_else(|| data_dir.join("dist")),
            public_rest_url,
            data_dir,
            rest_listen: args
                .rest_listen
                .or(file.rest_listen)
                .unwrap_or_else(|| parse(DEFAULT_REST_LISTEN)),
            grpc_listen: args
                .grpc_listen
                .or(file.grpc_listen)
                .unwrap_or_else(|| parse(DEFAULT_GRPC_LISTEN)),
            server_names,
            public_url: args
                .public_url
                .or(file.public_url)
                .map(|u| check_public_url(&u))
                .transpose()?,
            device_cert_lifetime,
            install_id_ttl: args
                .install_id_ttl
                .or(file.install_id_ttl)
                .unwrap_or(DEFAULT_INSTALL_ID_TTL),
            expired_cert_grace: args
                .expired_cert_grace
                .or(file.expired_cert_grace)
                .unwrap_or(DEFAULT_EXPIRED_CERT_GRACE),
            database_url: args.database_url.or(file.database_url),
            metrics_token_file: args.metrics_token_file.or(file.metrics_token_file),
            metrics_refresh: args
                .metrics_refresh
                .or(file.metrics_refresh)
                .unwrap_or(DEFAULT_METRICS_REFRESH),
            retention: {
                let d = RetentionConfig::default();
                RetentionConfig {
                    telemetry: args
                        .telemetry_retention
                        .or(file.telemetry_retention)
                        .unwrap_or(d.telemetry),
                    telemetry_1m: args
                        .telemetry_1m_retention
                        .or(file.telemetry_1m_retention)
                        .unwrap_or(d.telemetry_1m),
                    telemetry_1h: args
                        .telemetry_1h_retention
                        .or(file.telemetry_1h_retention)
                        .unwrap_or(d.telemetry_1h),
                    logs: args.log_retention.or(file.log_retention).unwrap_or(d.logs),
                    events: args
                        .event_retention
                        .or(file.event_retention)
                        .unwrap_or(d.events),
                    audit: args
                        .audit_retention
                        .or(file.audit_retention)
                        .unwrap_or(d.audit),
                }
            },
        })
    }
}

/// `http(s)://host[:port][/prefix]`, nothing a shell would need quoted
/// (it goes into install commands and `install.sh`); the trailing `/` is
/// dropped.
fn check_public_rest_url(url: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        ConfigError::Invalid(format!(
            "public-rest-url {url:?} {why} (e.g. https://outpost.example.com)"
        ))
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with https:// or http://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("has no host"));
    }
    if !rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~:/[]%".contains(c))
    {
        return Err(bad("holds characters other than a host, port and path"));
    }
    if url.starts_with("http://") && !is_loopback_authority(rest) {
        return Err(bad(
            "must be https:// (the install command pipes the script it serves into `sudo sh`: \
             over plain HTTP anyone on the way could run code as root on the box); http:// is \
             taken for loopback only",
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// `--public-url`: the device endpoint agents are sent to, written into
/// install commands that run as root, so nothing but `https://HOST[:PORT]`.
fn check_public_url(url: &str) -> Result<String, ConfigError> {
    let rest = url.strip_prefix("https://").unwrap_or_default();
    let authority = rest.trim_end_matches('/');
    let ok = !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c));
    if !ok {
        return Err(ConfigError::Invalid(format!(
            "public-url {url:?} must be https://HOST[:PORT], the address boxes reach the device \
             service at (e.g. https://outpost.example.com:8443)"
        )));
    }
    Ok(format!("https://{authority}"))
}

/// Whether `host[:port][/path]` names this machine (localhost, 127/8, ::1).
fn is_loopback_authority(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_server_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    names
}

/// Opens the store: PostgreSQL when `database_url` is given, else SQLite in
/// `data_dir` (created 0700).
pub async fn open_store(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
) -> Result<std::sync::Arc<dyn crate::store::Store>, Box<dyn std::error::Error + Send + Sync>> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(std::sync::Arc::new(crate::store::PgStore::connect(url).await?))
        }
        Some(url) => Err(format!(
            "database-url must be a postgres:// URL (got {:?}); leave it out for SQLite in the data dir",
            url.split('@').next_back().unwrap_or("")
        )
        .into()),
        None => {
            crate::pki::create_private_dir(data_dir)?;
            Ok(std::sync::Arc::new(
                crate::store::SqliteStore::open(data_dir).await?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_is_an_https_host_and_port() {
        assert_eq!(
            check_public_url("https://cp.example.com:8443/").unwrap(),
            "https://cp.example.com:8443"
        );
        assert!(check_public_url("https://[::1]:8443").is_ok());
        for bad in [
            "http://cp.example.com:8443",
            "https://",
            "https://cp.example.com/path",
            "https://cp;reboot",
            "https://cp$(id)",
            "cp.example.com:8443",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_rest_url_is_https_unless_loopback() {
        for ok in [
            "https://outpost.example.com",
            "https://outpost.example.com:8443/outpost/",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert!(check_public_rest_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://outpost.example.com",
            "http://10.0.0.5:8080",
            "http://localhost.evil.example",
            "ftp://x",
        ] {
            assert!(check_public_rest_url(bad).is_err(), "{bad}");
        }
        let e = check_public_rest_url("http://10.0.0.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be https://"), "{e}");
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.toml");
        std::fs::write(
            &path,
            "data-dir = \"/srv/outpost\"\nrest-listen = \"0.0.0.0:9000\"\ndevice-cert-lifetime = \"1h\"\n",
        )
        .unwrap();
        let cfg = ServeConfig::resolve(ServeArgs {
            config: Some(path),
            rest_listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/outpost"));
        assert_eq!(cfg.rest_listen.port(), 7000);
        assert_eq!(cfg.grpc_listen.port(), 8443);
        assert_eq!(cfg.device_cert_lifetime, Duration::from_secs(3600));
        assert_eq!(cfg.install_id_ttl, DEFAULT_INSTALL_ID_TTL);
    }

    #[test]
    fn public_rest_url_is_checked_and_the_dist_dir_follows_the_data_dir() {
        let cfg = ServeConfig::resolve(ServeArgs {
            data_dir: Some("/srv/o".into()),
            public_rest_url: Some("https://cp.example.com/outpost/".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            cfg.public_rest_url.as_deref(),
            Some("https://cp.example.com/outpost")
        );
        assert_eq!(cfg.agent_dist, PathBuf::from("/srv/o/dist"));
        for bad in [
            "cp.example.com",
            "https://",
            "https://a b",
            "https://x/'$(id)'",
            "http://x/?a=1",
        ] {
            let err = ServeConfig::resolve(ServeArgs {
                public_rest_url: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains("public-rest-url"), "{bad}: {err}");
        }
    }

    #[test]
    fn byte_sizes_take_binary_units() {
        assert_eq!(parse_byte_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_byte_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_byte_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_byte_size("1048576").unwrap(), 1 << 20);
        for bad in ["", "GiB", "4 parsecs", "-1", "99999999999TiB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.toml");
        std::fs::write(&path, "max-artifact-size = \"1GiB\"\n").unwrap();
        let cfg = ServeConfig::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.max_artifact_size, 1 << 30);
        assert_eq!(cfg.max_artifact_downloads, DEFAULT_MAX_ARTIFACT_DOWNLOADS);
    }

    #[test]
    fn connection_limits_come_from_flags_and_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.toml");
        std::fs::write(
            &path,
            "grpc-max-connections = 2000\nidle-connection-timeout = \"30s\"\nconnection-limits-on-loopback = true\n",
        )
        .unwrap();
        let cfg = ServeConfig::resolve(ServeArgs {
            config: Some(path),
            grpc_max_connections: Some(3000),
            ..Default::default()
        })
        .unwrap();
        let c = cfg.connections;
        assert_eq!(c.grpc_max_connections, 3000);
        assert_eq!(c.idle_connection_timeout, Duration::from_secs(30));
        assert!(c.limit_loopback);
        assert_eq!(
            c.rest_max_connections_per_ip,
            ConnectionConfig::default().rest_max_connections_per_ip
        );
        assert!(
            !ServeConfig::resolve(ServeArgs::default())
                .unwrap()
                .connections
                .limit_loopback
        );
        for bad in [
            ServeArgs {
                rest_max_connections: Some(0),
                ..Default::default()
            },
            ServeArgs {
                first_request_timeout: Some(Duration::ZERO),
                ..Default::default()
            },
            ServeArgs {
                tls_client_hello_timeout: Some(Duration::from_secs(20)),
                ..Default::default()
            },
        ] {
            assert!(ServeConfig::resolve(bad).is_err());
        }
    }

    #[test]
    fn unknown_file_keys_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.toml");
        std::fs::write(&path, "data-dri = \"/x\"\n").unwrap();
        let err = ServeConfig::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("data-dri"), "{err}");
    }
}
