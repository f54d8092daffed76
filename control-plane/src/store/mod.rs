//! Persistence. [`Store`] is the one seam every backend implements (SQLite
//! embedded by default; PostgreSQL for several replicas). Handlers and the
//! gRPC service only ever see this trait and the plain model types below.

mod common;
pub mod postgres;
pub mod rollup;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use serde::{Deserialize, Serialize};

use crate::labels::{Labels, Selector};

/// Unix time in milliseconds, UTC.
pub type UnixMillis = i64;

pub fn now_ms() -> UnixMillis {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// The change breaks a rule of the data (e.g. too many labels after a
    /// merge); the message says which.
    #[error("{0}")]
    Invalid(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Log severities, syslog order (journald priorities 7..0). Filters select a
/// level and everything more severe.
pub const SEVERITIES: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// Rank of a severity in [`SEVERITIES`]; unknown text ranks as `info`.
pub fn severity_rank(severity: &str) -> i64 {
    SEVERITIES.iter().position(|s| *s == severity).unwrap_or(1) as i64
}

/// Workspace feature flags (reference/001).
pub const FEATURE_DEVICE_AIO: &str = "deviceAio";
pub const FEATURE_LITE_MODE: &str = "roboflowLiteMode";
pub const KNOWN_FEATURES: &[&str] = &[FEATURE_DEVICE_AIO, FEATURE_LITE_MODE];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub name: String,
    pub features: Vec<String>,
    pub created_at: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub workspace: String,
    pub key_hash: String,
    /// `None`: legacy key with every scope.
    pub scopes: Option<Vec<String>>,
    /// `Some`: a device-scoped key, usable only on that device's routes.
    pub device_id: Option<String>,
    pub created_at: UnixMillis,
}

/// An API key as administrators see it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: String,
    pub workspace: String,
    pub scopes: Option<Vec<String>>,
    pub device_id: Option<String>,
    pub created_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub workspace: String,
    pub scopes: Option<Vec<String>>,
    pub device_id: Option<String>,
}

/// What the agent reports about its box (hello and enrollment).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceFacts {
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel_version: String,
    pub architecture: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub disk_total_bytes: u64,
    pub gpus: Vec<GpuInfo>,
    pub agent_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    pub uuid: String,
    pub memory_total_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: String,
    pub workspace: String,
    pub name: String,
    pub description: String,
    pub device_type: String,
    pub workflow_id: Option<String>,
    pub offline_mode: bool,
    /// Becomes config version 1.
    pub config: serde_json::Value,
    pub install_id_hash: String,
    pub install_id_expires_at: UnixMillis,
    pub created_at: UnixMillis,
    /// Validated ([`crate::labels::validate`]).
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub id: String,
    pub workspace: String,
    pub name: String,
    pub description: String,
    pub device_type: String,
    pub enabled: bool,
    pub created_at: UnixMillis,
    pub facts: Option<DeviceFacts>,
    pub session_id: Option<String>,
    pub last_heartbeat: Option<UnixMillis>,
    pub cert_expires_at: Option<UnixMillis>,
    pub workflow_id: Option<String>,
    pub offline_mode: bool,
    /// Current config version (0: none yet).
    pub config_version: u64,
    /// Last version the agent reported as applied.
    pub config_applied_version: u64,
    /// While the device waits for enrollment (never enrolled, or reset by
    /// force): when its install ID expires.
    pub awaiting_enrollment_until: Option<UnixMillis>,
    pub labels: Labels,
}

/// What PATCH may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct DevicePatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    /// A JSON merge patch of the labels: a value sets the key, `None`
    /// removes it. Applied under the device's row lock; a result that
    /// breaks the label rules is `StoreError::Invalid`.
    pub labels: Option<std::collections::BTreeMap<String, Option<String>>>,
}

/// One version of a device's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigVersion {
    pub version: u64,
    pub config: serde_json::Value,
    pub created_at: UnixMillis,
}

/// Something that happened to a device, for the events route.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub timestamp: UnixMillis,
    pub kind: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct EventQuery {
    pub device_id: String,
    /// Continue after (forward) or before (backward) this event id.
    pub after_id: Option<i64>,
    pub direction: Direction,
    pub limit: u32,
}

/// The actor of administrative actions taken on the host (`outpost-control-plane
/// workspace …`, `api-key …`).
pub const AUDIT_ACTOR_ADMIN_CLI: &str = "admin-cli";

/// One operator action for the audit trail. Never a key, token, install ID,
/// query string or request body: only what names the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub timestamp: UnixMillis,
    /// `None`: the path named no valid workspace.
    pub workspace: Option<String>,
    /// An API key id, [`AUDIT_ACTOR_ADMIN_CLI`], or `None` (not authenticated).
    pub actor: Option<String>,
    /// The REST operation's OpenAPI `operationId`, or the admin command's.
    pub action: String,
    /// The resource acted on (device id, key id, workspace …).
    pub target: Option<String>,
    /// The HTTP status answered (admin actions: 200 done, 400/404/409/500 refused).
    pub status: u16,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
}

/// An audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub entry: NewAuditEntry,
}

#[derive(Debug, Clone)]
pub struct AuditQuery {
    pub workspace: String,
    /// Inclusive.
    pub start: Option<UnixMillis>,
    /// Exclusive.
    pub end: Option<UnixMillis>,
    pub action: Option<String>,
    /// Continue after (forward) or before (backward) this entry id.
    pub after_id: Option<i64>,
    pub direction: Direction,
    pub limit: u32,
}

/// One device's samples, for [`Store::insert_telemetry_many`].
#[derive(Debug, Clone)]
pub struct DeviceSamples {
    pub device_id: String,
    pub samples: Vec<TelemetrySample>,
}

/// What an agent reports it lost, as running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossTotals {
    pub telemetry_dropped: u64,
    pub logs_dropped: u64,
    pub corrupt: u64,
    pub logs_rate_limited: u64,
}

/// Rows one retention `DELETE` removes at most, each in its own
/// transaction. On SQLite that transaction holds the one writer: ~6 ms on
/// average for 1,000 raw rows in `bench/history.sh`, the longest 16–54 ms
/// (BENCHMARKS.md, "Retention and the writer").
pub const PRUNE_BATCH: i64 = 1000;

/// Retention cut-offs: rows older than these times go.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Raw samples.
    pub telemetry_before: UnixMillis,
    /// Rollup tier rows, by bucket start: 1-minute and 1-hour.
    pub minute_before: UnixMillis,
    pub hour_before: UnixMillis,
    pub logs_before: UnixMillis,
    pub events_before: UnixMillis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneCounts {
    pub telemetry: u64,
    pub telemetry_1m: u64,
    pub telemetry_1h: u64,
    pub logs: u64,
    pub events: u64,
    /// Delete statements that removed rows, and the longest one's latency.
    /// Each is its own transaction of at most `PRUNE_BATCH` rows; on SQLite
    /// the latency is its wait for the write lock plus the time it held it
    /// (ingest waits behind it), with no other writer just the latter.
    pub batches: u64,
    pub longest_batch: std::time::Duration,
}

/// One step of filling the rollup tiers from raw history that predates
/// them ([`Store::rollup_backfill_step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillStep {
    pub device_id: String,
    /// Raw samples rolled up in this step.
    pub samples: u64,
    /// The device's tiers are whole up to here.
    pub through: UnixMillis,
    /// The device is done.
    pub finished: bool,
}

/// One log line as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub seq: u64,
    pub timestamp: UnixMillis,
    pub service: String,
    pub severity: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct LogQuery {
    pub device_id: String,
    pub start: Option<UnixMillis>,
    pub end: Option<UnixMillis>,
    pub service: Option<String>,
    pub severity: Option<String>,
    /// Continue with entries older than this (timestamp, seq).
    pub before: Option<(UnixMillis, u64)>,
    /// Instead: entries stored after this seq, oldest first (followers)…
    pub after_seq: Option<u64>,
    /// …up to this seq (inclusive).
    pub until_seq: Option<u64>,
    pub limit: u32,
}

/// Aggregates of the samples whose timestamp falls in one bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryBucket {
    pub start: UnixMillis,
    pub samples: u64,
    pub cpu_percent_avg: f64,
    pub cpu_percent_max: f64,
    pub memory_used_bytes_avg: f64,
    pub memory_total_bytes: u64,
    pub disk_used_bytes_avg: f64,
    pub disk_total_bytes: u64,
    /// Bytes counted within the bucket: the increases of the cumulative
    /// counters between consecutive samples, a reset (reboot) counting what
    /// came after it (`rollup::increase`).
    pub network_rx_bytes: u64,
    pub network_tx_bytes: u64,
    pub load_1m_avg: f64,
    pub temperature_max_celsius: Option<f64>,
    pub gpu_utilization_percent_avg: Option<f64>,
    pub gpu_memory_used_bytes_avg: Option<f64>,
}

/// A session that starts, for [`Store::sessions_opened`].
#[derive(Debug, Clone)]
pub struct SessionOpen {
    pub device_id: String,
    pub session_id: String,
    pub facts: DeviceFacts,
    /// What runs on the box, (name, version), from its hello; `None`
    /// leaves the stored list as it is.
    pub installed: Option<Vec<(String, String)>>,
    /// Whether the certificates a rotation superseded retire now (the
    /// session uses the current certificate).
    pub retire_superseded: bool,
    pub now: UnixMillis,
}

/// A session that ended, for [`Store::sessions_closed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    pub device_id: String,
    pub session_id: String,
    /// Its last heartbeat, if it had one.
    pub last_heartbeat: Option<UnixMillis>,
}

/// A heartbeat of a device's session, written by
/// [`Store::session_heartbeats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub device_id: String,
    pub session_id: String,
    pub at: UnixMillis,
}

/// A device counts as online while it has a session whose last sign of life
/// is younger than this. Agents heartbeat every 10 s by default.
pub const ONLINE_WINDOW_MS: i64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Online,
    Offline,
    Unknown,
}

/// Where a device is in its enrollment (an Outpost extension next to the
/// RFDM `status`, which stays online|offline|unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentState {
    /// It holds a certificate.
    Enrolled,
    /// Waiting for the box to enroll with its install ID.
    Pending,
    /// Waiting, but the install ID has expired: issue a new one.
    InstallIdExpired,
}

impl Device {
    pub fn enrollment(&self, now: UnixMillis) -> EnrollmentState {
        match self.awaiting_enrollment_until {
            None => EnrollmentState::Enrolled,
            Some(until) if now < until => EnrollmentState::Pending,
            Some(_) => EnrollmentState::InstallIdExpired,
        }
    }

    /// `unknown` until the first connection; then `online` while a session is
    /// live and heartbeating, else `offline`.
    pub fn status(&self, now: UnixMillis) -> DeviceStatus {
        match self.last_heartbeat {
            None => DeviceStatus::Unknown,
            Some(hb) if self.session_id.is_some() && now - hb < ONLINE_WINDOW_MS => {
                DeviceStatus::Online
            }
            Some(_) => DeviceStatus::Offline,
        }
    }
}

/// The enrollment view of a device, looked up by install-ID hash.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub device_id: String,
    pub workspace: String,
    pub enabled: bool,
    pub expires_at: UnixMillis,
    pub bound_key_sha256: Option<String>,
    pub spent: bool,
}

/// Everything that must change atomically when an enrollment succeeds.
#[derive(Debug, Clone)]
pub struct EnrollmentCommit {
    pub device_id: String,
    pub key_sha256: String,
    pub cert: NewCert,
    pub device_api_key: NewApiKey,
    pub now: UnixMillis,
    /// Set when the box enrolls with an enrollment token instead of an
    /// install ID.
    pub token: Option<TokenEnrollment>,
}

/// The enrollment-token part of an [`EnrollmentCommit`].
#[derive(Debug, Clone)]
pub struct TokenEnrollment {
    pub token_id: String,
    /// A first use: spend one use of the token (conditionally: `Conflict`
    /// and nothing written when none is left, or the token was revoked or
    /// expired), create this device, bind (token, key) → device. `None`: a
    /// retry with a key already bound to `EnrollmentCommit::device_id`.
    pub create: Option<NewDevice>,
}

/// An enrollment token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentToken {
    pub id: String,
    pub workspace: String,
    pub name: String,
    pub max_uses: u64,
    pub uses: u64,
    pub expires_at: Option<UnixMillis>,
    pub labels: Labels,
    pub device_type: String,
    pub created_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Active,
    Exhausted,
    Expired,
    Revoked,
}

impl EnrollmentToken {
    /// Revoked wins over expired, expired over exhausted.
    pub fn state(&self, now: UnixMillis) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if self.expires_at.is_some_and(|e| now >= e) {
            TokenState::Expired
        } else if self.uses >= self.max_uses {
            TokenState::Exhausted
        } else {
            TokenState::Active
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    pub id: String,
    pub workspace: String,
    /// SHA-256 of the token.
    pub token_hash: String,
    pub name: String,
    pub max_uses: u64,
    pub expires_at: Option<UnixMillis>,
    pub labels: Labels,
    pub device_type: String,
    pub created_at: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct NewCert {
    pub serial: String,
    pub not_before: UnixMillis,
    pub not_after: UnixMillis,
}

/// Everything that changes atomically when a device rotates its key.
#[derive(Debug, Clone)]
pub struct RotationCommit {
    pub device_id: String,
    pub workspace: String,
    /// The certificate the device authenticated with.
    pub old_serial: String,
    pub cert: NewCert,
    pub device_api_key: NewApiKey,
    /// Device keys created before this are revoked; younger ones (an
    /// operator's `connections/reset` moments ago) stay valid.
    pub revoke_keys_before: UnixMillis,
    pub now: UnixMillis,
}

/// A certificate as the store knows it, joined with its device's state.
#[derive(Debug, Clone)]
pub struct CertRecord {
    pub serial: String,
    pub device_id: String,
    pub workspace: String,
    pub revoked: bool,
    pub device_enabled: bool,
    pub device_deleted: bool,
    pub install_spent: bool,
    /// Set when a rotation replaced this certificate.
    pub superseded_at: Option<UnixMillis>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Temperature {
    pub sensor: String,
    pub celsius: f32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuSample {
    pub index: u32,
    pub name: String,
    pub utilization_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub temperature_celsius: f32,
    pub power_watts: f32,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub clock_mhz: u32,
    #[serde(default)]
    pub max_clock_mhz: u32,
    #[serde(default)]
    pub power_limit_watts: f32,
}

/// One telemetry sample as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetrySample {
    pub seq: u64,
    pub timestamp: UnixMillis,
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub network_rx_bytes: u64,
    pub network_tx_bytes: u64,
    pub load_1m: f64,
    pub load_5m: f64,
    pub load_15m: f64,
    pub uptime_secs: u64,
    pub temperatures: Vec<Temperature>,
    pub gpus: Vec<GpuSample>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Forward,
    #[default]
    Backward,
}

#[derive(Debug, Clone)]
pub struct TelemetryQuery {
    pub device_id: String,
    /// Inclusive.
    pub start: Option<UnixMillis>,
    /// Exclusive.
    pub end: Option<UnixMillis>,
    /// Continue after (forward) or before (backward) this seq.
    pub after_seq: Option<u64>,
    pub direction: Direction,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct DeviceListQuery {
    pub workspace: String,
    /// Continue after this (created_at, id) key.
    pub after: Option<(UnixMillis, String)>,
    pub limit: u32,
    pub status: Option<DeviceStatus>,
    pub device_type: Option<String>,
    /// Only devices with exactly this name.
    pub name: Option<String>,
    /// Every selector must match the device's labels.
    pub labels: Vec<Selector>,
    /// The time `status` is judged at.
    pub now: UnixMillis,
}

/// A rollout to create (devices already assigned to waves).
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub id: String,
    pub workspace: String,
    pub artifact_name: String,
    pub artifact_version: String,
    pub selector: Vec<String>,
    /// The wave specs kept (as given, e.g. `"25%"`).
    pub waves: Vec<String>,
    pub max_failures: u32,
    pub wave_timeout_ms: i64,
    pub approve_waves: bool,
    pub created_at: UnixMillis,
    /// (device id, 0-based wave).
    pub devices: Vec<(String, u32)>,
}

/// A rollout and its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: String,
    pub workspace: String,
    pub artifact_name: String,
    pub artifact_version: String,
    pub selector: Vec<String>,
    pub waves: Vec<String>,
    pub max_failures: u32,
    pub wave_timeout_ms: i64,
    pub approve_waves: bool,
    pub state: crate::rollout::RolloutState,
    pub reason: Option<String>,
    pub current_wave: u32,
    pub wave_started_at: UnixMillis,
    pub accepted_failures: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// In wave order, then by device id.
    pub devices: Vec<RolloutDevice>,
}

impl Rollout {
    /// What the rollout rules need of it.
    pub fn view(&self) -> crate::rollout::RolloutView {
        crate::rollout::RolloutView {
            state: self.state,
            reason: self.reason.clone(),
            current_wave: self.current_wave,
            wave_count: self.waves.len() as u32,
            wave_started_at: self.wave_started_at,
            wave_timeout_ms: self.wave_timeout_ms,
            max_failures: self.max_failures,
            accepted_failures: self.accepted_failures,
            approve_waves: self.approve_waves,
        }
    }

    /// Its current wave's tally, from its devices.
    pub fn wave_tally(&self) -> crate::rollout::WaveTally {
        crate::rollout::WaveTally::of(&self.device_views(), self.current_wave)
    }

    pub fn device_views(&self) -> Vec<crate::rollout::DeviceView> {
        self.devices
            .iter()
            .map(|d| crate::rollout::DeviceView {
                device_id: d.device_id.clone(),
                wave: d.wave,
                state: d.state,
                error: d.error.clone(),
                updated_at: d.updated_at,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDevice {
    pub device_id: String,
    pub name: String,
    pub wave: u32,
    pub state: crate::rollout::DeviceState,
    pub error: Option<String>,
    pub updated_at: UnixMillis,
}

/// A page of rollouts to list.
#[derive(Debug, Clone)]
pub struct RolloutListQuery {
    pub workspace: String,
    /// Continue with rollouts older than this (created_at, id) key.
    pub before: Option<(UnixMillis, String)>,
    pub limit: u32,
}

/// A listed rollout: its `devices` are empty; `counts` holds how many of
/// its devices are in each (0-based wave, state), pairs with none left out.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSummary {
    pub rollout: Rollout,
    pub counts: Vec<(u32, crate::rollout::DeviceState, u64)>,
}

/// A running rollout for the driver: `devices` empty, its current wave
/// tallied.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningRollout {
    pub rollout: Rollout,
    pub wave: crate::rollout::WaveTally,
}

/// An agent's report on one artifact (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactReport {
    pub name: String,
    pub version: String,
    pub rollout_id: String,
    pub state: crate::rollout::DeviceState,
    pub error: Option<String>,
    /// Every artifact's current version after this step (name, version).
    pub installed: Vec<(String, String)>,
}

/// What a session's start tells the device ([`Store::session_view`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub last_telemetry_seq: u64,
    pub last_log_seq: u64,
    pub config: Option<ConfigVersion>,
    pub desired: Vec<DesiredArtifact>,
}

/// One artifact a device should run.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredArtifact {
    pub name: String,
    pub version: String,
    pub manifest_json: String,
    pub public_key: String,
    pub signature: String,
    pub rollout_id: String,
}

/// For `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutCounts {
    /// (state, count).
    pub rollouts: Vec<(String, u64)>,
    /// (rollout id, `N@V`, device state, count) of running and paused
    /// rollouts.
    pub devices: Vec<(String, String, String, u64)>,
}

/// Size of a payload chunk in `artifact_chunks` (the last one is shorter).
pub const ARTIFACT_CHUNK_SIZE: usize = 256 * 1024;
/// An artifact waiting for its payload.
pub const ARTIFACT_AWAITING_PAYLOAD: &str = "awaiting_payload";
/// An artifact whose payload matched its manifest: devices may fetch it.
pub const ARTIFACT_READY: &str = "ready";

/// One artifact version as stored (docs/artifacts.md). `manifest_json` is
/// the manifest exactly as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactRecord {
    pub workspace: String,
    pub name: String,
    pub version: String,
    pub manifest_json: String,
    pub public_key: String,
    pub signature: String,
    pub size: u64,
    pub sha256: String,
    /// [`ARTIFACT_AWAITING_PAYLOAD`] or [`ARTIFACT_READY`].
    pub state: String,
    pub created_at: UnixMillis,
    pub uploaded_at: Option<UnixMillis>,
}

/// A publisher key a workspace trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublisherKeyRecord {
    pub public_key: String,
    pub added_at: UnixMillis,
}

/// The persistence seam. All methods are safe to call concurrently from
/// several tasks and (for shared backends) several replicas.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_workspace(&self, ws: &Workspace) -> StoreResult<()>;
    async fn get_workspace(&self, name: &str) -> StoreResult<Option<Workspace>>;
    async fn list_workspaces(&self) -> StoreResult<Vec<Workspace>>;
    /// The device CA fingerprint recorded for this database, if any.
    async fn ca_fingerprint(&self) -> StoreResult<Option<String>>;
    /// Records `fingerprint` unless one is recorded already; returns the
    /// recorded one (this, or the first replica's when it won a race).
    async fn record_ca_fingerprint(
        &self,
        fingerprint: &str,
        now: UnixMillis,
    ) -> StoreResult<String>;
    /// Replaces the feature list; false when the workspace does not exist.
    async fn set_workspace_features(&self, name: &str, features: &[String]) -> StoreResult<bool>;
    /// Every key of a workspace, newest first, revoked ones included.
    async fn list_api_keys(&self, workspace: &str) -> StoreResult<Vec<ApiKeyInfo>>;
    /// Revokes a key by id; false when no live key has that id.
    async fn revoke_api_key(&self, id: &str, now: UnixMillis) -> StoreResult<bool>;

    async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()>;
    /// A live (not revoked) key by the SHA-256 of its plaintext.
    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;

    async fn create_device(&self, device: &NewDevice) -> StoreResult<()>;
    async fn get_device(&self, workspace: &str, id: &str) -> StoreResult<Option<Device>>;
    /// The workspace of a (not deleted) device, whatever workspace asks.
    async fn device_workspace(&self, id: &str) -> StoreResult<Option<String>>;
    /// Oldest first by (created_at, id); returns up to `limit` devices.
    async fn list_devices(&self, q: &DeviceListQuery) -> StoreResult<Vec<Device>>;

    /// Enables or disables a device. Returns false when it does not exist.
    async fn set_device_enabled(
        &self,
        workspace: &str,
        id: &str,
        enabled: bool,
    ) -> StoreResult<bool> {
        let patch = DevicePatch {
            enabled: Some(enabled),
            ..Default::default()
        };
        Ok(self
            .update_device(workspace, id, &patch, now_ms())
            .await?
            .is_some())
    }
    /// Applies a PATCH; `None` when the device does not exist.
    async fn update_device(
        &self,
        workspace: &str,
        id: &str,
        patch: &DevicePatch,
        now: UnixMillis,
    ) -> StoreResult<Option<Device>>;
    /// Deletes a device: it disappears from the API, its certificates and
    /// keys are revoked, its install ID voided. The row stays (marked) so a
    /// returning agent can be told it was decommissioned.
    async fn delete_device(&self, workspace: &str, id: &str, now: UnixMillis) -> StoreResult<bool>;
    /// Replaces the device-scoped API key(s) with `key`.
    async fn replace_device_key(&self, key: &NewApiKey, now: UnixMillis) -> StoreResult<()>;
    /// Issues a new install ID (hash), voiding the old one and its binding.
    async fn reissue_install_id(
        &self,
        workspace: &str,
        id: &str,
        install_id_hash: &str,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<bool>;

    /// Stores a new config version; `None` when the device does not exist.
    async fn put_config(
        &self,
        workspace: &str,
        id: &str,
        config: &serde_json::Value,
        now: UnixMillis,
    ) -> StoreResult<Option<ConfigVersion>>;
    /// A given version, or the current one.
    async fn get_config(
        &self,
        device_id: &str,
        version: Option<u64>,
    ) -> StoreResult<Option<ConfigVersion>>;
    /// Versions older than `before` (all when `None`), newest first.
    async fn list_configs(
        &self,
        device_id: &str,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<ConfigVersion>>;
    /// The agent reports it runs `version`.
    async fn config_applied(
        &self,
        device_id: &str,
        version: u64,
        now: UnixMillis,
    ) -> StoreResult<()>;

    async fn record_event(
        &self,
        device_id: &str,
        workspace: &str,
        kind: &str,
        detail: &serde_json::Value,
        now: UnixMillis,
    ) -> StoreResult<()>;
    async fn list_events(&self, q: &EventQuery) -> StoreResult<Vec<Event>>;

    /// Stores log lines, ignoring any (device, seq) already stored. Durable
    /// when it returns.
    async fn insert_logs(
        &self,
        device_id: &str,
        logs: &[LogRecord],
        received_at: UnixMillis,
    ) -> StoreResult<u64>;
    /// Newest first.
    async fn query_logs(&self, q: &LogQuery) -> StoreResult<Vec<LogRecord>>;

    /// Samples in [start, end) aggregated into buckets of `bucket_ms`, oldest
    /// first; empty buckets are omitted. Read from the coarsest rollup tier
    /// that tiles the bucket (`rollup::Tier::for_bucket`); the answer is
    /// [`rollup::Agg::of_samples`] over each bucket's raw samples.
    async fn telemetry_buckets(
        &self,
        device_id: &str,
        start: UnixMillis,
        end: UnixMillis,
        bucket_ms: i64,
    ) -> StoreResult<Vec<TelemetryBucket>>;

    async fn find_enrollment(&self, install_id_hash: &str) -> StoreResult<Option<Enrollment>>;

    async fn create_enrollment_token(&self, t: &NewEnrollmentToken) -> StoreResult<()>;
    /// A workspace's tokens, newest first, revoked ones included.
    async fn list_enrollment_tokens(&self, workspace: &str) -> StoreResult<Vec<EnrollmentToken>>;
    /// Revokes a token (idempotent); `None` when the workspace has no such
    /// token, else the token as it is now.
    async fn revoke_enrollment_token(
        &self,
        workspace: &str,
        id: &str,
        now: UnixMillis,
    ) -> StoreResult<Option<EnrollmentToken>>;
    /// A token by the SHA-256 of its plaintext, whatever its state.
    async fn find_enrollment_token(&self, token_hash: &str)
    -> StoreResult<Option<EnrollmentToken>>;
    /// The device a use of the token created for this key (deleted devices
    /// included), if any.
    async fn token_binding(&self, token_id: &str, key_sha256: &str) -> StoreResult<Option<String>>;
    /// Binds the install ID to the key (if unbound), records the certificate
    /// and replaces the device API key, atomically. `Conflict` if the install
    /// ID was spent or bound to another key meanwhile.
    async fn complete_enrollment(&self, commit: &EnrollmentCommit) -> StoreResult<()>;
    /// Several enrollments (group commit), each with its own outcome as
    /// [`Store::complete_enrollment`] gives it, as if run one after the
    /// other. The outer error: nothing was stored. By default different
    /// devices' enrollments run side by side, each its own transaction
    /// (PostgreSQL commits concurrent transactions together), and one
    /// device's in order; SQLite has one writer and stores the whole group in
    /// one transaction.
    async fn complete_enrollments(
        &self,
        commits: &[EnrollmentCommit],
    ) -> StoreResult<Vec<StoreResult<()>>> {
        complete_enrollments_side_by_side(self, commits).await
    }

    async fn get_cert(&self, serial: &str) -> StoreResult<Option<CertRecord>>;
    /// Records a rotation: the new certificate becomes current, the old one
    /// is marked superseded, the device API key is replaced.
    async fn rotate_cert(&self, c: &RotationCommit) -> StoreResult<()>;
    /// Revokes superseded certificates once the current one has been used.
    async fn retire_superseded(&self, device_id: &str, now: UnixMillis) -> StoreResult<()>;
    /// Revokes every certificate and API key of the device and issues a new
    /// install ID (forced reset of a compromised box).
    async fn force_reset(
        &self,
        workspace: &str,
        id: &str,
        install_id_hash: &str,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    /// Marks the install ID as used up: the device has connected with its cert.
    async fn spend_install_id(&self, device_id: &str) -> StoreResult<()>;

    /// Opens each session: it becomes its device's current one (with the
    /// hello's facts, a fresh `last_heartbeat`, the install ID spent), what
    /// runs on the box is replaced by its hello's list (when given), the
    /// certificates a rotation superseded are retired (when asked), and a
    /// `connected` event is recorded. As [`Store::sessions_closed`]: one
    /// transaction for the group on SQLite (one by one if it fails), a few
    /// side by side on PostgreSQL. One result per open (`NotFound`: no
    /// such device), in order.
    async fn sessions_opened(&self, opens: &[SessionOpen]) -> Vec<StoreResult<()>>;

    /// One [`Store::sessions_opened`], facts only.
    async fn session_opened(
        &self,
        device_id: &str,
        session_id: &str,
        facts: &DeviceFacts,
        now: UnixMillis,
    ) -> StoreResult<()> {
        let open = SessionOpen {
            device_id: device_id.to_string(),
            session_id: session_id.to_string(),
            facts: facts.clone(),
            installed: None,
            retire_superseded: false,
            now,
        };
        self.sessions_opened(&[open])
            .await
            .pop()
            .unwrap_or(Err(StoreError::NotFound))
    }
    /// Records heartbeats in one transaction: each sets the device's
    /// `last_heartbeat` if its session is still the device's current one
    /// and the time is newer than the stored one. Returns how many devices
    /// changed. (Batched by [`crate::presence`], never one per heartbeat.)
    async fn session_heartbeats(&self, beats: &[Heartbeat]) -> StoreResult<u64>;
    /// Ends each session that is still its device's current one, recording
    /// its last heartbeat (if later than the stored one) in the same
    /// statement and a `disconnected` event. On SQLite the whole list is one
    /// transaction (a group from [`crate::grpc::commit::SessionCloseWriter`]:
    /// ten thousand sessions ending at a restart are a few commits, not ten
    /// thousand; if that transaction fails, each end is tried on its own);
    /// on PostgreSQL one transaction each, a few side by side. One result
    /// per end, in order.
    async fn sessions_closed(&self, ends: &[SessionEnd], now: UnixMillis) -> Vec<StoreResult<()>>;

    /// Stores samples, ignoring any (device, seq) already stored. Returns the
    /// number newly stored. Durable when it returns.
    async fn insert_telemetry(
        &self,
        device_id: &str,
        samples: &[TelemetrySample],
        received_at: UnixMillis,
    ) -> StoreResult<u64>;
    /// Several devices' batches in one transaction (group commit: one
    /// durable write for everything that arrived meanwhile). Returns the
    /// number newly stored.
    async fn insert_telemetry_many(
        &self,
        batches: &[DeviceSamples],
        received_at: UnixMillis,
    ) -> StoreResult<u64>;
    async fn last_telemetry_seq(&self, device_id: &str) -> StoreResult<u64>;
    /// The highest log seq stored for the device (0: none).
    async fn last_log_seq(&self, device_id: &str) -> StoreResult<u64>;
    /// What a session's start tells the device, read at once: where the
    /// store stands (last telemetry and log seq), the current config and
    /// the desired artifacts (as `desired_artifacts`).
    async fn session_view(&self, device_id: &str) -> StoreResult<SessionView>;
    /// Saves an agent's loss totals; when any grew, records a `data_lost`
    /// event with the increase. Returns whether it did.
    async fn record_loss(
        &self,
        device_id: &str,
        workspace: &str,
        totals: &LossTotals,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    /// Deletes telemetry (raw and tiers), logs and events older than the
    /// given times, in batches of at most [`PRUNE_BATCH`] rows per
    /// statement so that no delete holds the writer for long.
    async fn prune(&self, cutoff: &Retention) -> StoreResult<PruneCounts>;
    /// Rolls up the next hour-aligned chunk of raw history that predates
    /// the tiers (devices listed at the upgrade); `None` when nothing is
    /// left. Idempotent, safe beside ingest and on several replicas: the
    /// chunk's tier rows are computed from raw under the device's rollup
    /// lock.
    async fn rollup_backfill_step(&self) -> StoreResult<Option<BackfillStep>>;
    /// Devices whose backfill has not finished.
    async fn rollup_backfill_pending(&self) -> StoreResult<u64>;
    async fn query_telemetry(&self, q: &TelemetryQuery) -> StoreResult<Vec<TelemetrySample>>;
    /// The newest stored sample of each of these devices (devices with none
    /// are left out). One indexed lookup per device.
    async fn latest_telemetry(
        &self,
        device_ids: &[String],
    ) -> StoreResult<Vec<(String, TelemetrySample)>>;
    /// Appends an audit entry. Entry ids grow in commit order, also across
    /// replicas, so paging by id skips nothing.
    async fn insert_audit(&self, entry: &NewAuditEntry) -> StoreResult<()>;
    /// A workspace's audit entries by id, with the query's filters.
    async fn list_audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>>;
    /// Deletes audit entries older than `before`; returns how many.
    async fn prune_audit(&self, before: UnixMillis) -> StoreResult<u64>;
    /// The workspace of an API key (revoked or not) by id.
    async fn api_key_workspace(&self, id: &str) -> StoreResult<Option<String>>;

    // ---- artifacts and publisher keys (issue 20, docs/artifacts.md) ----

    /// Trusts `public_key` (canonical `ed25519:…` text) in the workspace;
    /// false when it was trusted already.
    async fn add_publisher_key(
        &self,
        workspace: &str,
        public_key: &str,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    /// false when the workspace did not trust that key.
    async fn remove_publisher_key(&self, workspace: &str, public_key: &str) -> StoreResult<bool>;
    /// Oldest first.
    async fn list_publisher_keys(&self, workspace: &str) -> StoreResult<Vec<PublisherKeyRecord>>;

    /// Stores a new artifact version (its state as given, normally
    /// `awaiting_payload`). true: created; false: the same manifest was
    /// stored already (nothing changed). `Conflict` when `name@version`
    /// exists with another manifest.
    async fn create_artifact(&self, a: &ArtifactRecord) -> StoreResult<bool>;
    async fn get_artifact(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<Option<ArtifactRecord>>;
    /// By name, then creation time.
    async fn list_artifacts(&self, workspace: &str) -> StoreResult<Vec<ArtifactRecord>>;
    /// Writes payload chunk `idx` (replacing one there) of an artifact that
    /// awaits its payload; `Conflict` when it is ready, `NotFound` when it
    /// does not exist.
    async fn put_artifact_chunk(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
        idx: u64,
        data: &[u8],
    ) -> StoreResult<()>;
    /// Forgets the chunks of an artifact that still awaits its payload (an
    /// upload that did not match); a ready artifact keeps them.
    async fn discard_artifact_chunks(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<()>;
    /// `awaiting_payload` → `ready`, when the stored chunks are exactly
    /// `size` bytes in `ceil(size / ARTIFACT_CHUNK_SIZE)` chunks. `Conflict`
    /// when it is ready already or the chunks do not add up, `NotFound`
    /// when it does not exist.
    async fn mark_artifact_ready(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
        now: UnixMillis,
    ) -> StoreResult<()>;
    /// Payload chunk `idx`; `None` past the end or when there is none.
    async fn read_artifact_chunk(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
        idx: u64,
    ) -> StoreResult<Option<Vec<u8>>>;
    /// Deletes the version and its payload. false when it does not exist;
    /// `Conflict` while a running or paused rollout uses it.
    async fn delete_artifact(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<bool>;

    // ---- rollouts and what runs on devices (issue 20, docs/artifacts.md) ----
    /// Creates a rollout with its devices in one transaction. `Conflict`
    /// when another running or paused rollout of the same artifact name
    /// exists in the workspace (a partial unique index decides between
    /// racing replicas).
    async fn create_rollout(&self, r: &NewRollout) -> StoreResult<()>;
    /// A rollout of the workspace with its devices.
    async fn get_rollout(&self, workspace: &str, id: &str) -> StoreResult<Option<Rollout>>;
    /// A page of a workspace's rollouts, newest first (`created_at`, then
    /// id, descending), each without its devices but with their counts
    /// per wave and state (one GROUP BY, the devices are not loaded).
    async fn list_rollouts(&self, q: &RolloutListQuery) -> StoreResult<Vec<RolloutSummary>>;
    /// Every running rollout of every workspace (the driver's work), each
    /// without its devices but with its current wave's tally (counted in
    /// the store; only the wave's failures are read).
    async fn running_rollouts(&self) -> StoreResult<Vec<RunningRollout>>;
    /// Counts of rollouts per state, and of each active or recent
    /// rollout's devices per state (for `/metrics`): (rollout id, artifact
    /// `N@V`, device state, count).
    async fn rollout_counts(&self) -> StoreResult<RolloutCounts>;
    /// Applies `t` as one conditional `UPDATE` (`WHERE id AND state AND
    /// current_wave` as `t` expects them); returns whether it applied.
    async fn apply_rollout_transition(
        &self,
        id: &str,
        t: &crate::rollout::Transition,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    /// Records an agent's report: the device's state in the rollout (only
    /// forward, and only for a rollout of that `name@version` the device is
    /// in), its event on such a move to an outcome, and what runs on it.
    /// Returns whether the rollout's device moved.
    async fn record_artifact_report(
        &self,
        device_id: &str,
        workspace: &str,
        report: &ArtifactReport,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    /// Replaces what runs on the device (its hello's `installed`).
    async fn set_device_artifacts(
        &self,
        device_id: &str,
        installed: &[(String, String)],
        now: UnixMillis,
    ) -> StoreResult<()>;
    /// What runs on these devices: (device id, name, version).
    async fn device_artifacts(
        &self,
        device_ids: &[String],
    ) -> StoreResult<Vec<(String, String, String)>>;
    /// The desired state of a device: per artifact name, the version of
    /// the newest rollout that released it to the device (docs/artifacts.md).
    async fn desired_artifacts(&self, device_id: &str) -> StoreResult<Vec<DesiredArtifact>>;
}

/// [`Store::complete_enrollments`]' default: different devices' enrollments
/// side by side, each its own transaction, and one device's in order.
async fn complete_enrollments_side_by_side<S: Store + ?Sized>(
    store: &S,
    commits: &[EnrollmentCommit],
) -> StoreResult<Vec<StoreResult<()>>> {
    let mut per_device: Vec<Vec<usize>> = Vec::new();
    let mut slot: std::collections::HashMap<&str, usize> = Default::default();
    for (i, c) in commits.iter().enumerate() {
        let k = *slot.entry(c.device_id.as_str()).or_insert_with(|| {
            per_device.push(Vec::new());
            per_device.len() - 1
        });
        per_device[k].push(i);
    }
    let runs = per_device.into_iter().map(|idxs| async move {
        let mut out = Vec::with_capacity(idxs.len());
        for i in idxs {
            out.push((i, store.complete_enrollment(&commits[i]).await));
        }
        out
    });
    let mut each: Vec<(usize, StoreResult<()>)> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    each.sort_by_key(|(i, _)| *i);
    Ok(each.into_iter().map(|(_, r)| r).collect())
}
