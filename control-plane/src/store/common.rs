//! Backend-independent helpers shared by the SQL backends: JSON encoding of
//! the TEXT columns, integer clamping, and row → model conversion written
//! against [`Cols`], which any sqlx row type whose database decodes the few
//! plain types we store provides.
//!
//! The conversions rely on the backends naming their columns identically and
//! storing integers as 64-bit (SQLite `INTEGER`, PostgreSQL `BIGINT`).

use super::rollup::{Agg, CounterPoint, Tier};
use super::*;

pub(super) fn json_vec<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing our own plain structs and vectors cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The databases store signed 64-bit integers; counters beyond i64::MAX
/// saturate.
pub(super) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored (non-negative) count back as `u64`.
fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// Typed access to a result row by column name.
pub(super) trait Cols {
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn flag(&self, col: &str) -> StoreResult<bool>;
    fn float(&self, col: &str) -> StoreResult<f64>;
    fn opt_float(&self, col: &str) -> StoreResult<Option<f64>>;
}

impl<R> Cols for R
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    String: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    bool: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    f64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    fn int(&self, col: &str) -> StoreResult<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> StoreResult<bool> {
        Ok(self.try_get(col)?)
    }
    fn float(&self, col: &str) -> StoreResult<f64> {
        Ok(self.try_get(col)?)
    }
    fn opt_float(&self, col: &str) -> StoreResult<Option<f64>> {
        Ok(self.try_get(col)?)
    }
}

/// `SELECT <device columns> FROM devices <tail>`, built at compile time.
macro_rules! device_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, workspace, name, description, device_type, enabled, created_at, ",
            "facts, session_id, last_heartbeat, cert_expires_at, workflow_id, offline_mode, ",
            "config_version, config_applied_version, labels, ",
            // Set while the device waits for its (first or post-reset)
            // enrollment: an unspent install ID and no certificate.
            "CASE WHEN install_id_hash IS NOT NULL AND NOT install_spent ",
            "AND cert_expires_at IS NULL THEN install_id_expires_at END AS awaiting_until ",
            "FROM devices ",
            $tail
        )
    };
}
pub(super) use device_select;

pub(super) fn workspace_from_row(r: &impl Cols) -> StoreResult<Workspace> {
    Ok(Workspace {
        name: r.text("name")?,
        features: json_vec(&r.text("features")?, "workspace features")?,
        created_at: r.int("created_at")?,
    })
}

fn scopes(r: &impl Cols) -> StoreResult<Option<Vec<String>>> {
    r.opt_text("scopes")?
        .as_deref()
        .map(|s| json_vec(s, "api key scopes"))
        .transpose()
}

pub(super) fn api_key_info_from_row(r: &impl Cols) -> StoreResult<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        id: r.text("id")?,
        workspace: r.text("workspace")?,
        scopes: scopes(r)?,
        device_id: r.opt_text("device_id")?,
        created_at: r.int("created_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

pub(super) fn api_key_record_from_row(r: &impl Cols) -> StoreResult<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.text("id")?,
        workspace: r.text("workspace")?,
        scopes: scopes(r)?,
        device_id: r.opt_text("device_id")?,
    })
}

/// A row of [`device_select!`].
pub(super) fn device_from_row(r: &impl Cols) -> StoreResult<Device> {
    Ok(Device {
        id: r.text("id")?,
        workspace: r.text("workspace")?,
        name: r.text("name")?,
        description: r.text("description")?,
        device_type: r.text("device_type")?,
        enabled: r.flag("enabled")?,
        created_at: r.int("created_at")?,
        facts: r
            .opt_text("facts")?
            .as_deref()
            .map(|f| json_vec(f, "device facts"))
            .transpose()?,
        session_id: r.opt_text("session_id")?,
        last_heartbeat: r.opt_int("last_heartbeat")?,
        cert_expires_at: r.opt_int("cert_expires_at")?,
        workflow_id: r.opt_text("workflow_id")?,
        offline_mode: r.flag("offline_mode")?,
        config_version: u(r.int("config_version")?),
        config_applied_version: u(r.int("config_applied_version")?),
        awaiting_enrollment_until: r.opt_int("awaiting_until")?,
        labels: json_vec(&r.text("labels")?, "device labels")?,
    })
}

/// A row of `enrollment_tokens` (every column but `token_hash`).
pub(super) fn enrollment_token_from_row(r: &impl Cols) -> StoreResult<EnrollmentToken> {
    Ok(EnrollmentToken {
        id: r.text("id")?,
        workspace: r.text("workspace")?,
        name: r.text("name")?,
        max_uses: u(r.int("max_uses")?),
        uses: u(r.int("uses")?),
        expires_at: r.opt_int("expires_at")?,
        labels: json_vec(&r.text("labels")?, "token labels")?,
        device_type: r.text("device_type")?,
        created_at: r.int("created_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

/// Columns `id, workspace, enabled, install_id_expires_at,
/// install_key_sha256, install_spent` of `devices`.
pub(super) fn enrollment_from_row(r: &impl Cols) -> StoreResult<Enrollment> {
    Ok(Enrollment {
        device_id: r.text("id")?,
        workspace: r.text("workspace")?,
        enabled: r.flag("enabled")?,
        expires_at: r.opt_int("install_id_expires_at")?.unwrap_or(0),
        bound_key_sha256: r.opt_text("install_key_sha256")?,
        spent: r.flag("install_spent")?,
    })
}

/// Columns `serial, device_id, revoked_at, superseded_at` of a certificate
/// joined with `workspace, enabled, install_spent, deleted_at` of its device.
pub(super) fn cert_from_row(r: &impl Cols) -> StoreResult<CertRecord> {
    Ok(CertRecord {
        serial: r.text("serial")?,
        device_id: r.text("device_id")?,
        workspace: r.text("workspace")?,
        revoked: r.opt_int("revoked_at")?.is_some(),
        device_enabled: r.flag("enabled")?,
        device_deleted: r.opt_int("deleted_at")?.is_some(),
        superseded_at: r.opt_int("superseded_at")?,
        install_spent: r.flag("install_spent")?,
    })
}

/// The loss-total columns of `devices`.
pub(super) fn loss_totals_from_row(r: &impl Cols) -> StoreResult<LossTotals> {
    Ok(LossTotals {
        telemetry_dropped: u(r.int("telemetry_dropped")?),
        logs_dropped: u(r.int("logs_dropped")?),
        corrupt: u(r.int("spool_corrupt")?),
        logs_rate_limited: u(r.int("logs_rate_limited")?),
    })
}

/// The `data_lost` event for totals that went from `before` to `t`, if any
/// of them grew. Totals restart when a box re-enrolls with a fresh state dir:
/// only growth is news.
pub(super) fn loss_event(before: &LossTotals, t: &LossTotals) -> Option<serde_json::Value> {
    let grew = |now: u64, then: u64| now.saturating_sub(then);
    let delta = LossTotals {
        telemetry_dropped: grew(t.telemetry_dropped, before.telemetry_dropped),
        logs_dropped: grew(t.logs_dropped, before.logs_dropped),
        corrupt: grew(t.corrupt, before.corrupt),
        logs_rate_limited: grew(t.logs_rate_limited, before.logs_rate_limited),
    };
    (delta != LossTotals::default()).then(|| {
        serde_json::json!({
            "telemetry_dropped": delta.telemetry_dropped,
            "logs_dropped": delta.logs_dropped,
            "corrupt": delta.corrupt,
            "logs_rate_limited": delta.logs_rate_limited,
            "totals": {
                "telemetry_dropped": t.telemetry_dropped,
                "logs_dropped": t.logs_dropped,
                "corrupt": t.corrupt,
                "logs_rate_limited": t.logs_rate_limited,
            },
        })
    })
}

/// What changed between `before` and the patch, as `(kind, detail)` events
/// in the order they are recorded.
pub(super) fn patch_events(
    before: &Device,
    patch: &DevicePatch,
    labels_after: Option<&crate::labels::Labels>,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut events = Vec::new();
    let mut changed = serde_json::Map::new();
    if let Some(n) = patch.name.as_ref().filter(|n| **n != before.name) {
        changed.insert(
            "name".into(),
            serde_json::json!({"from": before.name, "to": n}),
        );
    }
    if let Some(d) = patch
        .description
        .as_ref()
        .filter(|d| **d != before.description)
    {
        changed.insert("description".into(), serde_json::json!({"to": d}));
    }
    if let Some(l) = labels_after.filter(|l| **l != before.labels) {
        changed.insert(
            "labels".into(),
            serde_json::json!({"from": before.labels, "to": l}),
        );
    }
    if !changed.is_empty() {
        events.push(("updated", serde_json::Value::Object(changed)));
    }
    if let Some(enabled) = patch.enabled.filter(|e| *e != before.enabled) {
        let kind = if enabled { "enabled" } else { "disabled" };
        events.push((kind, serde_json::json!({})));
    }
    events
}

/// One column of the `telemetry` table: how a row fills it, and how a
/// stored value goes back into a sample.
pub(super) enum TelemetryColumn {
    /// `device_id`: the device the sample is of.
    DeviceId,
    /// `received_at`: when the batch arrived.
    ReceivedAt,
    Int(
        &'static str,
        fn(&TelemetrySample) -> i64,
        fn(&mut TelemetrySample, i64),
    ),
    Float(
        &'static str,
        fn(&TelemetrySample) -> f64,
        fn(&mut TelemetrySample, f64),
    ),
    /// A JSON array in a TEXT column.
    Json(
        &'static str,
        fn(&TelemetrySample) -> String,
        fn(&mut TelemetrySample, &str) -> StoreResult<()>,
    ),
}

impl TelemetryColumn {
    pub(super) fn name(&self) -> &'static str {
        match self {
            DeviceId => "device_id",
            ReceivedAt => "received_at",
            Int(n, ..) | Float(n, ..) | Json(n, ..) => n,
        }
    }
}

use TelemetryColumn::{DeviceId, Float, Int, Json, ReceivedAt};

/// A `u64` field in the column of its name.
macro_rules! count {
    ($f:ident) => {
        Int(stringify!($f), |s| i(s.$f), |s, v| s.$f = u(v))
    };
}
/// An `f64` field in the column of its name.
macro_rules! real {
    ($f:ident) => {
        Float(stringify!($f), |s| s.$f, |s, v| s.$f = v)
    };
}
/// A vector field as JSON in the column of its name.
macro_rules! json_array {
    ($f:ident) => {
        Json(
            stringify!($f),
            |s| to_json(&s.$f),
            |s, v| json_vec(v, stringify!($f)).map(|x| s.$f = x),
        )
    };
}

/// The telemetry columns, in the table's order: the one list of them.
/// Every telemetry insert, its binds and [`sample_from_row`] are built from
/// it. Inserts list the columns in this order because it is the table's:
/// SQLite then builds each record from the bound values without moving
/// them around first.
pub(super) const TELEMETRY_COLUMNS: [TelemetryColumn; 19] = [
    DeviceId,
    count!(seq),
    Int("ts", |s| s.timestamp, |s, v| s.timestamp = v),
    ReceivedAt,
    Float(
        "cpu_percent",
        |s| s.cpu_percent.into(),
        |s, v| s.cpu_percent = v as f32,
    ),
    count!(memory_used_bytes),
    count!(memory_total_bytes),
    count!(swap_used_bytes),
    count!(swap_total_bytes),
    count!(disk_used_bytes),
    count!(disk_total_bytes),
    count!(network_rx_bytes),
    count!(network_tx_bytes),
    real!(load_1m),
    real!(load_5m),
    real!(load_15m),
    count!(uptime_secs),
    Json("temperatures", temperatures_to_json, |s, v| {
        temperatures_from_json(v).map(|x| s.temperatures = x)
    }),
    json_array!(gpus),
];

/// Temperatures as `[["sensor", celsius], …]`: the key names are not
/// repeated for every sensor of every sample (issue 18; 19 bytes a sensor,
/// ~130 of a typical edge box's sample).
fn temperatures_to_json(s: &TelemetrySample) -> String {
    let pairs: Vec<(&str, f32)> = s
        .temperatures
        .iter()
        .map(|t| (t.sensor.as_str(), t.celsius))
        .collect();
    to_json(&pairs)
}

/// [`temperatures_to_json`]'s pairs, or the objects (`[{"sensor", "celsius"}]`)
/// that rows written before it hold.
fn temperatures_from_json(v: &str) -> StoreResult<Vec<Temperature>> {
    match serde_json::from_str::<Vec<(String, f32)>>(v) {
        Ok(pairs) => Ok(pairs
            .into_iter()
            .map(|(sensor, celsius)| Temperature { sensor, celsius })
            .collect()),
        Err(_) => json_vec(v, "temperatures"),
    }
}

/// A row of `SELECT * FROM telemetry`.
pub(super) fn sample_from_row(r: &impl Cols) -> StoreResult<TelemetrySample> {
    let mut s = TelemetrySample::default();
    for c in &TELEMETRY_COLUMNS {
        match c {
            DeviceId | ReceivedAt => {}
            Int(name, _, set) => set(&mut s, r.int(name)?),
            Float(name, _, set) => set(&mut s, r.float(name)?),
            Json(name, _, set) => set(&mut s, &r.text(name)?)?,
        }
    }
    Ok(s)
}

/// Columns `version, config, created_at` of `device_configs`.
pub(super) fn config_from_row(r: &impl Cols) -> StoreResult<ConfigVersion> {
    Ok(ConfigVersion {
        version: u(r.int("version")?),
        config: json_vec(&r.text("config")?, "device config")?,
        created_at: r.int("created_at")?,
    })
}

/// Columns `id, ts, kind, detail` of `events`.
pub(super) fn event_from_row(r: &impl Cols) -> StoreResult<Event> {
    Ok(Event {
        id: r.int("id")?,
        timestamp: r.int("ts")?,
        kind: r.text("kind")?,
        detail: json_vec(&r.text("detail")?, "event detail")?,
    })
}

/// A row of `audit_log`.
pub(super) fn audit_from_row(r: &impl Cols) -> StoreResult<AuditEntry> {
    let status = r.int("status")?;
    Ok(AuditEntry {
        id: r.int("id")?,
        entry: NewAuditEntry {
            timestamp: r.int("ts")?,
            workspace: r.opt_text("workspace")?,
            actor: r.opt_text("actor")?,
            action: r.text("action")?,
            target: r.opt_text("target")?,
            status: u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("audit status {status}")))?,
            request_id: r.opt_text("request_id")?,
            client_addr: r.opt_text("client_addr")?,
        },
    })
}

/// Columns `seq, ts, service, severity, message` of `logs`.
pub(super) fn log_from_row(r: &impl Cols) -> StoreResult<LogRecord> {
    Ok(LogRecord {
        seq: u(r.int("seq")?),
        timestamp: r.int("ts")?,
        service: r.text("service")?,
        severity: r.text("severity")?,
        message: r.text("message")?,
    })
}

/// `SELECT <rollout columns> FROM rollouts`, for `concat!`.
macro_rules! rollout_select {
    () => {
        "SELECT id, workspace, artifact_name, artifact_version, selector, waves, max_failures, \
         wave_timeout_ms, approve_waves, state, reason, current_wave, wave_started_at, \
         accepted_failures, created_at, updated_at FROM rollouts"
    };
}
pub(super) use rollout_select;

pub(super) fn count32(r: &impl Cols, col: &str) -> StoreResult<u32> {
    u32::try_from(r.int(col)?).map_err(|_| StoreError::Corrupt(format!("{col} out of range")))
}

pub(super) fn rollout_from_row(r: &impl Cols) -> StoreResult<Rollout> {
    let state = r.text("state")?;
    Ok(Rollout {
        id: r.text("id")?,
        workspace: r.text("workspace")?,
        artifact_name: r.text("artifact_name")?,
        artifact_version: r.text("artifact_version")?,
        selector: json_vec(&r.text("selector")?, "rollout selector")?,
        waves: json_vec(&r.text("waves")?, "rollout waves")?,
        max_failures: count32(r, "max_failures")?,
        wave_timeout_ms: r.int("wave_timeout_ms")?,
        approve_waves: r.flag("approve_waves")?,
        state: crate::rollout::RolloutState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("rollout state {state:?}")))?,
        reason: r.opt_text("reason")?,
        current_wave: count32(r, "current_wave")?,
        wave_started_at: r.int("wave_started_at")?,
        accepted_failures: count32(r, "accepted_failures")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        devices: Vec::new(),
    })
}

pub(super) fn rollout_device_from_row(r: &impl Cols) -> StoreResult<RolloutDevice> {
    let state = r.text("state")?;
    Ok(RolloutDevice {
        device_id: r.text("device_id")?,
        name: r.text("name")?,
        wave: count32(r, "wave")?,
        state: crate::rollout::DeviceState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("rollout device state {state:?}")))?,
        error: r.opt_text("error")?,
        updated_at: r.int("updated_at")?,
    })
}

/// The columns of a rollup tier's row, in the order `bind_tier_row` binds
/// them (migrations `*_rollups.sql`).
pub(super) const TIER_COLUMNS: [&str; 24] = [
    "device_id",
    "bucket",
    "n",
    "cpu_sum",
    "cpu_max",
    "mem_sum",
    "mem_total_max",
    "disk_sum",
    "disk_total_max",
    "load_sum",
    "temp_max",
    "gpu_n",
    "gpu_util_sum",
    "gpu_mem_sum",
    "first_ts",
    "first_seq",
    "first_rx",
    "first_tx",
    "last_ts",
    "last_seq",
    "last_rx",
    "last_tx",
    "rx_inc",
    "tx_inc",
];

/// A rollup tier's row: its bucket and aggregates.
pub(super) fn tier_row(r: &impl Cols) -> StoreResult<(UnixMillis, Agg)> {
    let point = |p: &str| -> StoreResult<CounterPoint> {
        Ok(CounterPoint {
            ts: r.int(&format!("{p}_ts"))?,
            seq: u(r.int(&format!("{p}_seq"))?),
            rx: u(r.int(&format!("{p}_rx"))?),
            tx: u(r.int(&format!("{p}_tx"))?),
        })
    };
    Ok((
        r.int("bucket")?,
        Agg {
            n: u(r.int("n")?),
            cpu_sum: r.float("cpu_sum")?,
            cpu_max: r.float("cpu_max")?,
            mem_sum: r.float("mem_sum")?,
            mem_total_max: u(r.int("mem_total_max")?),
            disk_sum: r.float("disk_sum")?,
            disk_total_max: u(r.int("disk_total_max")?),
            load_sum: r.float("load_sum")?,
            temp_max: r.opt_float("temp_max")?,
            gpu_n: u(r.int("gpu_n")?),
            gpu_util_sum: r.float("gpu_util_sum")?,
            gpu_mem_sum: r.float("gpu_mem_sum")?,
            first: point("first")?,
            last: point("last")?,
            rx_inc: u(r.int("rx_inc")?),
            tx_inc: u(r.int("tx_inc")?),
        },
    ))
}

/// How a [`TIER_COLUMNS`] value is typed, for the dialects' JSON reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Text,
    Int,
    Real,
}

/// The type of `TIER_COLUMNS[k]`.
pub(super) fn tier_column_type(k: usize) -> SqlType {
    match TIER_COLUMNS[k] {
        "device_id" => SqlType::Text,
        "cpu_sum" | "cpu_max" | "mem_sum" | "disk_sum" | "load_sum" | "temp_max"
        | "gpu_util_sum" | "gpu_mem_sum" => SqlType::Real,
        _ => SqlType::Int,
    }
}

/// The upsert of any number of `tier` rows in one statement: `rows` a
/// subquery of one column `r` per row (a JSON array in [`TIER_COLUMNS`]
/// order, as [`tier_rows_json`] writes them), `field(k, type)` the
/// expression of element `k` of `r`. A row that exists is replaced (the
/// caller merged it). `WHERE true` is SQLite's way to tell an upsert's
/// `ON CONFLICT` from a join's.
pub(super) fn tier_upsert(
    tier: Tier,
    rows: &str,
    field: impl Fn(usize, SqlType) -> String,
) -> String {
    let values: Vec<String> = (0..TIER_COLUMNS.len())
        .map(|k| field(k, tier_column_type(k)))
        .collect();
    let set: Vec<String> = TIER_COLUMNS[2..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM ({}) AS j WHERE true \
         ON CONFLICT (device_id, bucket) DO UPDATE SET {}",
        tier.table,
        TIER_COLUMNS.join(", "),
        values.join(", "),
        rows,
        set.join(", ")
    )
}

/// Tier rows as one JSON array of arrays in [`TIER_COLUMNS`] order, for
/// [`tier_upsert`]: one bound value however many rows (each statement costs
/// a round trip to SQLite's worker thread, more than its rows).
pub(super) fn tier_rows_json(rows: &[(&str, UnixMillis, Agg)]) -> String {
    use serde_json::Value;
    let int = |v: u64| Value::from(i(v));
    // Sums of validated (finite) samples are finite; `from` would write
    // anything else as null.
    let real = |v: f64| Value::from(v);
    let all: Vec<Value> = rows
        .iter()
        .map(|(device, bucket, a)| {
            let mut r = vec![
                Value::from(*device),
                Value::from(*bucket),
                int(a.n),
                real(a.cpu_sum),
                real(a.cpu_max),
                real(a.mem_sum),
                int(a.mem_total_max),
                real(a.disk_sum),
                int(a.disk_total_max),
                real(a.load_sum),
                a.temp_max.map_or(Value::Null, real),
                int(a.gpu_n),
                real(a.gpu_util_sum),
                real(a.gpu_mem_sum),
            ];
            for p in [a.first, a.last] {
                r.extend([Value::from(p.ts), int(p.seq), int(p.rx), int(p.tx)]);
            }
            r.extend([int(a.rx_inc), int(a.tx_inc)]);
            Value::Array(r)
        })
        .collect();
    Value::Array(all).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperatures_are_stored_as_pairs_and_rows_of_objects_still_read() {
        let s = TelemetrySample {
            temperatures: vec![
                Temperature {
                    sensor: "Core 0".into(),
                    celsius: 41.5,
                },
                Temperature {
                    sensor: "Core 0".into(),
                    celsius: 40.0,
                },
            ],
            ..Default::default()
        };
        let text = temperatures_to_json(&s);
        assert_eq!(text, r#"[["Core 0",41.5],["Core 0",40.0]]"#);
        assert_eq!(temperatures_from_json(&text).unwrap(), s.temperatures);
        let before = r#"[{"sensor":"Core 0","celsius":41.5},{"sensor":"Core 0","celsius":40.0}]"#;
        assert_eq!(temperatures_from_json(before).unwrap(), s.temperatures);
        assert!(matches!(
            temperatures_from_json(r#"{"x":1}"#),
            Err(StoreError::Corrupt(_))
        ));
    }
}
