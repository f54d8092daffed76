//! The embedded backend: one SQLite file in the data directory, WAL mode so
//! the admin CLI can work on it while `serve` runs.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::common::*;
use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
}

/// WAL pages (4 KiB; 64 MiB) after which a commit checkpoints the WAL into
/// the database file (SQLite's default: 1000). Under a fleet's telemetry
/// the same B-tree pages are rewritten by commit after commit; a larger WAL
/// copies each page once per checkpoint instead of once per 1000 pages
/// written, and stalls the writer for a checkpoint less often. Measured in
/// BENCHMARKS.md: at 110,000 samples/s offered, 1000 pages fell behind
/// (95,000/s acked, p99 3 s); 16384 kept up.
const WAL_AUTOCHECKPOINT_PAGES: &str = "16384";

impl SqliteStore {
    /// Opens (creating if needed) `DATA_DIR/outpost.db` and runs migrations.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        let path = data_dir.join("outpost.db");
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we ack it to an agent.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // 16 MiB of page cache per connection (SQLite's default is 2 MiB):
            // the telemetry B-trees' hot pages stay in memory instead of
            // being read back from the OS on every insert.
            .pragma("cache_size", "-16384")
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

impl SqliteStore {
    /// Every transaction here writes: take the write lock up front
    /// (`BEGIN IMMEDIATE`), so concurrent ones wait (busy timeout) instead
    /// of failing with SQLITE_BUSY when a read snapshot goes stale.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

/// Rows per multi-row telemetry INSERT, largest first (19 parameters a row;
/// SQLite allows 32766). A group of N rows takes a few statements instead of
/// N: each statement is a round trip to sqlx's SQLite worker thread, and
/// that thread is the ingest bottleneck. Few sizes, so sqlx's statement
/// cache keeps every prepared form.
const INSERT_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

const TELEMETRY_INSERT: &str = "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_percent, \
     memory_used_bytes, memory_total_bytes, swap_used_bytes, swap_total_bytes, \
     disk_used_bytes, disk_total_bytes, network_rx_bytes, network_tx_bytes, \
     load_1m, load_5m, load_15m, uptime_secs, temperatures, gpus) VALUES ";
const TELEMETRY_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const TELEMETRY_CONFLICT: &str = " ON CONFLICT (device_id, seq) DO NOTHING";

/// The statement for `rows` rows, one of [`INSERT_SIZES`] (built once,
/// constant text: sqlx caches their prepared forms).
fn telemetry_insert(size_index: usize) -> &'static str {
    static TEXTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        INSERT_SIZES
            .iter()
            .map(|&n| {
                let rows = vec![TELEMETRY_ROW; n].join(", ");
                format!("{TELEMETRY_INSERT}{rows}{TELEMETRY_CONFLICT}")
            })
            .collect()
    });
    &TEXTS[size_index]
}

/// Binds one sample's row to a telemetry INSERT.
macro_rules! bind_sample {
    ($q:expr, $device:expr, $s:expr, $received_at:expr) => {
        $q.bind($device.to_string())
            .bind(i($s.seq))
            .bind($s.timestamp)
            .bind($received_at)
            .bind($s.cpu_percent as f64)
            .bind(i($s.memory_used_bytes))
            .bind(i($s.memory_total_bytes))
            .bind(i($s.swap_used_bytes))
            .bind(i($s.swap_total_bytes))
            .bind(i($s.disk_used_bytes))
            .bind(i($s.disk_total_bytes))
            .bind(i($s.network_rx_bytes))
            .bind(i($s.network_tx_bytes))
            .bind($s.load_1m)
            .bind($s.load_5m)
            .bind($s.load_15m)
            .bind(i($s.uptime_secs))
            .bind(to_json(&$s.temperatures))
            .bind(to_json(&$s.gpus))
    };
}

/// Inserts (device, sample) rows with as few statements as
/// [`INSERT_SIZES`] allow; rows already stored are skipped. Returns how many
/// were new.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    rows: &[(&str, &TelemetrySample)],
    received_at: UnixMillis,
) -> StoreResult<u64> {
    let mut stored = 0;
    let mut rest = rows;
    for (k, &size) in INSERT_SIZES.iter().enumerate() {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            let mut q = sqlx::query(telemetry_insert(k));
            for (device, s) in chunk {
                q = bind_sample!(q, device, s, received_at);
            }
            stored += q.execute(&mut **tx).await?.rows_affected();
            rest = tail;
        }
    }
    Ok(stored)
}

/// Inserts one device's samples in `tx`, ignoring seqs already stored.
async fn insert_samples(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    device_id: &str,
    samples: &[TelemetrySample],
    received_at: UnixMillis,
) -> StoreResult<u64> {
    let rows: Vec<(&str, &TelemetrySample)> = samples.iter().map(|s| (device_id, s)).collect();
    insert_rows(tx, &rows, received_at).await
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_workspace(&self, ws: &Workspace) -> StoreResult<()> {
        let res =
            sqlx::query("INSERT INTO workspaces (name, features, created_at) VALUES (?, ?, ?)")
                .bind(&ws.name)
                .bind(to_json(&ws.features))
                .bind(ws.created_at)
                .execute(&self.pool)
                .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(
                format!("workspace {:?} already exists", ws.name),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_workspace(&self, name: &str) -> StoreResult<Option<Workspace>> {
        let row = sqlx::query("SELECT name, features, created_at FROM workspaces WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    async fn list_workspaces(&self) -> StoreResult<Vec<Workspace>> {
        let rows = sqlx::query("SELECT name, features, created_at FROM workspaces ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(workspace_from_row).collect()
    }

    async fn set_workspace_features(&self, name: &str, features: &[String]) -> StoreResult<bool> {
        let res = sqlx::query("UPDATE workspaces SET features = ? WHERE name = ?")
            .bind(to_json(&features))
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn list_api_keys(&self, workspace: &str) -> StoreResult<Vec<ApiKeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, workspace, scopes, device_id, created_at, revoked_at FROM api_keys \
             WHERE workspace = ? ORDER BY created_at DESC, id",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_info_from_row).collect()
    }

    async fn revoke_api_key(&self, id: &str, now: UnixMillis) -> StoreResult<bool> {
        let res =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, workspace, key_hash, scopes, device_id, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.workspace)
        .bind(&key.key_hash)
        .bind(key.scopes.as_ref().map(to_json))
        .bind(&key.device_id)
        .bind(key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sqlx::query(
            "SELECT id, workspace, scopes, device_id FROM api_keys \
             WHERE key_hash = ? AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_key_record_from_row).transpose()
    }

    async fn create_device(&self, d: &NewDevice) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO devices (id, workspace, name, description, device_type, created_at, \
             install_id_hash, install_id_expires_at, workflow_id, offline_mode, config_version) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
        )
        .bind(&d.id)
        .bind(&d.workspace)
        .bind(&d.name)
        .bind(&d.description)
        .bind(&d.device_type)
        .bind(d.created_at)
        .bind(&d.install_id_hash)
        .bind(d.install_id_expires_at)
        .bind(&d.workflow_id)
        .bind(d.offline_mode)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO device_configs (device_id, version, config, created_at) VALUES (?, 1, ?, ?)")
            .bind(&d.id)
            .bind(to_json(&d.config))
            .bind(d.created_at)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            &d.id,
            &d.workspace,
            d.created_at,
            "created",
            &serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_device(&self, workspace: &str, id: &str) -> StoreResult<Option<Device>> {
        const Q: &str = device_select!("WHERE workspace = ? AND id = ? AND deleted_at IS NULL");
        let row = sqlx::query(Q)
            .bind(workspace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn device_workspace(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT workspace FROM devices WHERE id = ? AND deleted_at IS NULL")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn list_devices(&self, q: &DeviceListQuery) -> StoreResult<Vec<Device>> {
        const Q: &str = device_select!(
            "WHERE workspace = ?1 AND deleted_at IS NULL \
             AND (?2 IS NULL OR created_at > ?2 OR (created_at = ?2 AND id > ?3)) \
             AND (?5 IS NULL \
                  OR (?5 = 'online' AND session_id IS NOT NULL AND last_heartbeat > ?6) \
                  OR (?5 = 'offline' AND last_heartbeat IS NOT NULL \
                      AND NOT (session_id IS NOT NULL AND last_heartbeat > ?6)) \
                  OR (?5 = 'unknown' AND last_heartbeat IS NULL)) \
             AND (?7 IS NULL OR device_type = ?7) \
             ORDER BY created_at, id LIMIT ?4"
        );
        let (after_ts, after_id) = match &q.after {
            Some((ts, id)) => (Some(*ts), Some(id.as_str())),
            None => (None, None),
        };
        let status = q.status.map(|s| match s {
            DeviceStatus::Online => "online",
            DeviceStatus::Offline => "offline",
            DeviceStatus::Unknown => "unknown",
        });
        let rows = sqlx::query(Q)
            .bind(&q.workspace)
            .bind(after_ts)
            .bind(after_id)
            .bind(q.limit as i64)
            .bind(status)
            .bind(q.now - ONLINE_WINDOW_MS)
            .bind(&q.device_type)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn find_enrollment(&self, install_id_hash: &str) -> StoreResult<Option<Enrollment>> {
        let row = sqlx::query(
            "SELECT id, workspace, enabled, install_id_expires_at, install_key_sha256, install_spent \
             FROM devices WHERE install_id_hash = ? AND deleted_at IS NULL",
        )
        .bind(install_id_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    async fn complete_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        enroll_in(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn complete_enrollments(
        &self,
        commits: &[EnrollmentCommit],
    ) -> StoreResult<Vec<StoreResult<()>>> {
        // One transaction, one fsync for the group. A conflict leaves its
        // enrollment unwritten (its guarded UPDATE changed nothing) and the
        // others go on; any other error rolls the whole group back.
        let mut tx = self.begin().await?;
        let mut each = Vec::with_capacity(commits.len());
        for c in commits {
            match enroll_in(&mut tx, c).await {
                Err(StoreError::Conflict(m)) => each.push(Err(StoreError::Conflict(m))),
                Err(e) => return Err(e),
                Ok(()) => each.push(Ok(())),
            }
        }
        tx.commit().await?;
        Ok(each)
    }

    async fn get_cert(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        let row = sqlx::query(
            "SELECT c.serial, c.device_id, c.revoked_at, c.superseded_at, d.workspace, d.enabled, d.install_spent, d.deleted_at \
             FROM device_certs c JOIN devices d ON d.id = c.device_id WHERE c.serial = ?",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cert_from_row).transpose()
    }

    async fn rotate_cert(&self, c: &RotationCommit) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO device_certs (serial, device_id, not_before, not_after, issued_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&c.cert.serial)
        .bind(&c.device_id)
        .bind(c.cert.not_before)
        .bind(c.cert.not_after)
        .bind(c.now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE device_certs SET superseded_at = COALESCE(superseded_at, ?) \
             WHERE device_id = ? AND serial <> ? AND revoked_at IS NULL",
        )
        .bind(c.now)
        .bind(&c.device_id)
        .bind(&c.cert.serial)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE devices SET current_cert_serial = ?, cert_expires_at = ? WHERE id = ?")
            .bind(&c.cert.serial)
            .bind(c.cert.not_after)
            .bind(&c.device_id)
            .execute(&mut *tx)
            .await?;
        revoke_device_keys(&mut tx, &c.device_id, c.now, c.revoke_keys_before).await?;
        let k = &c.device_api_key;
        insert_api_key(&mut tx, k).await?;
        insert_event(
            &mut tx,
            &c.device_id,
            &c.workspace,
            c.now,
            "rotated",
            &serde_json::json!({"serial": c.cert.serial, "previous_serial": c.old_serial}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn retire_superseded(&self, device_id: &str, now: UnixMillis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE device_certs SET revoked_at = ? \
             WHERE device_id = ? AND superseded_at IS NOT NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(device_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn force_reset(
        &self,
        workspace: &str,
        id: &str,
        install_id_hash: &str,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let res = sqlx::query(
            "UPDATE devices SET install_id_hash = ?, install_id_expires_at = ?, install_key_sha256 = NULL, \
             install_spent = 0, session_id = NULL WHERE workspace = ? AND id = ? AND deleted_at IS NULL",
        )
        .bind(install_id_hash)
        .bind(expires_at)
        .bind(workspace)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        revoke_device_certs(&mut tx, id, now).await?;
        revoke_device_keys(&mut tx, id, now, i64::MAX).await?;
        insert_event(
            &mut tx,
            id,
            workspace,
            now,
            "revoked",
            &serde_json::json!({"forced_reset": true}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn spend_install_id(&self, device_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET install_spent = 1 WHERE id = ?")
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session_opened(
        &self,
        device_id: &str,
        session_id: &str,
        facts: &DeviceFacts,
        now: UnixMillis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let ws: Option<String> = sqlx::query_scalar(
            "UPDATE devices SET session_id = ?, last_heartbeat = ?, facts = ?, install_spent = 1 \
             WHERE id = ? RETURNING workspace",
        )
        .bind(session_id)
        .bind(now)
        .bind(to_json(facts))
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        let ws = ws.ok_or(StoreError::NotFound)?;
        insert_event(
            &mut tx,
            device_id,
            &ws,
            now,
            "connected",
            &serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session_heartbeat(
        &self,
        device_id: &str,
        session_id: &str,
        now: UnixMillis,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_heartbeat = ? WHERE id = ? AND session_id = ?")
            .bind(now)
            .bind(device_id)
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session_closed(
        &self,
        device_id: &str,
        session_id: &str,
        now: UnixMillis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let ws: Option<String> = sqlx::query_scalar(
            "UPDATE devices SET session_id = NULL WHERE id = ? AND session_id = ? RETURNING workspace",
        )
        .bind(device_id)
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(ws) = ws {
            insert_event(
                &mut tx,
                device_id,
                &ws,
                now,
                "disconnected",
                &serde_json::json!({}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_telemetry(
        &self,
        device_id: &str,
        samples: &[TelemetrySample],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let stored = insert_samples(&mut tx, device_id, samples, received_at).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn insert_telemetry_many(
        &self,
        batches: &[DeviceSamples],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        // The whole group as rows: one-sample batches from many devices
        // still share multi-row statements.
        let rows: Vec<(&str, &TelemetrySample)> = batches
            .iter()
            .flat_map(|b| b.samples.iter().map(|s| (b.device_id.as_str(), s)))
            .collect();
        let stored = insert_rows(&mut tx, &rows, received_at).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn last_telemetry_seq(&self, device_id: &str) -> StoreResult<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM telemetry WHERE device_id = ?")
                .bind(device_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    async fn last_log_seq(&self, device_id: &str) -> StoreResult<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM logs WHERE device_id = ?")
            .bind(device_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    async fn record_loss(
        &self,
        device_id: &str,
        workspace: &str,
        t: &LossTotals,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT telemetry_dropped, logs_dropped, spool_corrupt, logs_rate_limited \
             FROM devices WHERE id = ?",
        )
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        let before = loss_totals_from_row(&row)?;
        if before == *t {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE devices SET telemetry_dropped = ?, logs_dropped = ?, spool_corrupt = ?, \
             logs_rate_limited = ? WHERE id = ?",
        )
        .bind(t.telemetry_dropped as i64)
        .bind(t.logs_dropped as i64)
        .bind(t.corrupt as i64)
        .bind(t.logs_rate_limited as i64)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
        let event = loss_event(&before, t);
        let any = event.is_some();
        if let Some(detail) = event {
            insert_event(&mut tx, device_id, workspace, now, "data_lost", &detail).await?;
        }
        tx.commit().await?;
        Ok(any)
    }

    async fn prune(&self, cutoff: &Retention) -> StoreResult<PruneCounts> {
        // Per device, so each delete walks the (device_id, ts) index.
        let devices: Vec<String> = sqlx::query_scalar("SELECT id FROM devices")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = PruneCounts::default();
        for d in &devices {
            counts.telemetry += sqlx::query("DELETE FROM telemetry WHERE device_id = ? AND ts < ?")
                .bind(d)
                .bind(cutoff.telemetry_before)
                .execute(&self.pool)
                .await?
                .rows_affected();
            counts.logs += sqlx::query("DELETE FROM logs WHERE device_id = ? AND ts < ?")
                .bind(d)
                .bind(cutoff.logs_before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        counts.events = sqlx::query("DELETE FROM events WHERE ts < ?")
            .bind(cutoff.events_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(counts)
    }

    async fn query_telemetry(&self, q: &TelemetryQuery) -> StoreResult<Vec<TelemetrySample>> {
        const FORWARD: &str = "SELECT * FROM telemetry WHERE device_id = ?1 \
             AND (?2 IS NULL OR ts >= ?2) AND (?3 IS NULL OR ts < ?3) AND (?4 IS NULL OR seq > ?4) \
             ORDER BY seq ASC LIMIT ?5";
        const BACKWARD: &str = "SELECT * FROM telemetry WHERE device_id = ?1 \
             AND (?2 IS NULL OR ts >= ?2) AND (?3 IS NULL OR ts < ?3) AND (?4 IS NULL OR seq < ?4) \
             ORDER BY seq DESC LIMIT ?5";
        let sql = match q.direction {
            Direction::Forward => FORWARD,
            Direction::Backward => BACKWARD,
        };
        let rows = sqlx::query(sql)
            .bind(&q.device_id)
            .bind(q.start)
            .bind(q.end)
            .bind(q.after_seq.map(i))
            .bind(q.limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sample_from_row).collect()
    }

    async fn latest_telemetry(
        &self,
        device_ids: &[String],
    ) -> StoreResult<Vec<(String, TelemetrySample)>> {
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        // The max seq per device first (a PK probe each), then that row.
        const Q: &str = "SELECT t.* FROM \
             (SELECT value AS id, (SELECT MAX(seq) FROM telemetry WHERE device_id = value) AS top \
              FROM json_each(?1)) l \
             JOIN telemetry t ON t.device_id = l.id AND t.seq = l.top";
        let rows = sqlx::query(Q)
            .bind(to_json(&device_ids))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((sqlx::Row::try_get(r, "device_id")?, sample_from_row(r)?)))
            .collect()
    }
    async fn update_device(
        &self,
        workspace: &str,
        id: &str,
        patch: &DevicePatch,
        now: UnixMillis,
    ) -> StoreResult<Option<Device>> {
        let mut tx = self.begin().await?;
        const Q: &str = device_select!("WHERE workspace = ? AND id = ? AND deleted_at IS NULL");
        let Some(before) = sqlx::query(Q)
            .bind(workspace)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(device_from_row)
            .transpose()?
        else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE devices SET name = COALESCE(?, name), description = COALESCE(?, description), \
             enabled = COALESCE(?, enabled) WHERE id = ?",
        )
        .bind(&patch.name)
        .bind(&patch.description)
        .bind(patch.enabled)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        for (kind, detail) in patch_events(&before, patch) {
            insert_event(&mut tx, id, workspace, now, kind, &detail).await?;
        }
        let after = sqlx::query(Q)
            .bind(workspace)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(device_from_row)
            .transpose()?;
        tx.commit().await?;
        Ok(after)
    }

    async fn delete_device(&self, workspace: &str, id: &str, now: UnixMillis) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let res = sqlx::query(
            "UPDATE devices SET deleted_at = ?, install_id_hash = NULL, session_id = NULL \
             WHERE workspace = ? AND id = ? AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(workspace)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        revoke_device_certs(&mut tx, id, now).await?;
        revoke_device_keys(&mut tx, id, now, i64::MAX).await?;
        insert_event(
            &mut tx,
            id,
            workspace,
            now,
            "decommissioned",
            &serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn replace_device_key(&self, key: &NewApiKey, now: UnixMillis) -> StoreResult<()> {
        let device_id = key
            .device_id
            .as_deref()
            .ok_or_else(|| StoreError::Conflict("a device key needs a device".into()))?;
        let mut tx = self.begin().await?;
        revoke_device_keys(&mut tx, device_id, now, i64::MAX).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, workspace, key_hash, scopes, device_id, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.workspace)
        .bind(&key.key_hash)
        .bind(key.scopes.as_ref().map(to_json))
        .bind(device_id)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            device_id,
            &key.workspace,
            now,
            "reset",
            &serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reissue_install_id(
        &self,
        workspace: &str,
        id: &str,
        install_id_hash: &str,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let res = sqlx::query(
            "UPDATE devices SET install_id_hash = ?, install_id_expires_at = ?, \
             install_key_sha256 = NULL, install_spent = 0 \
             WHERE workspace = ? AND id = ? AND deleted_at IS NULL",
        )
        .bind(install_id_hash)
        .bind(expires_at)
        .bind(workspace)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        insert_event(
            &mut tx,
            id,
            workspace,
            now,
            "install_id_issued",
            &serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn put_config(
        &self,
        workspace: &str,
        id: &str,
        config: &serde_json::Value,
        now: UnixMillis,
    ) -> StoreResult<Option<ConfigVersion>> {
        let mut tx = self.begin().await?;
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE devices SET config_version = config_version + 1 \
             WHERE workspace = ? AND id = ? AND deleted_at IS NULL RETURNING config_version",
        )
        .bind(workspace)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(version) = version else {
            return Ok(None);
        };
        sqlx::query("INSERT INTO device_configs (device_id, version, config, created_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(version)
            .bind(to_json(config))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            id,
            workspace,
            now,
            "config_changed",
            &serde_json::json!({"version": version}),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(ConfigVersion {
            version: version.max(0) as u64,
            config: config.clone(),
            created_at: now,
        }))
    }

    async fn get_config(
        &self,
        device_id: &str,
        version: Option<u64>,
    ) -> StoreResult<Option<ConfigVersion>> {
        let row = sqlx::query(
            "SELECT c.version, c.config, c.created_at FROM device_configs c JOIN devices d ON d.id = c.device_id \
             WHERE c.device_id = ?1 AND c.version = COALESCE(?2, d.config_version)",
        )
        .bind(device_id)
        .bind(version.map(i))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(config_from_row).transpose()
    }

    async fn list_configs(
        &self,
        device_id: &str,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<ConfigVersion>> {
        let rows = sqlx::query(
            "SELECT version, config, created_at FROM device_configs \
             WHERE device_id = ?1 AND (?2 IS NULL OR version < ?2) ORDER BY version DESC LIMIT ?3",
        )
        .bind(device_id)
        .bind(before.map(i))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(config_from_row).collect()
    }

    async fn config_applied(
        &self,
        device_id: &str,
        version: u64,
        now: UnixMillis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let ws: Option<String> = sqlx::query_scalar(
            "UPDATE devices SET config_applied_version = ?1 \
             WHERE id = ?2 AND config_applied_version <> ?1 RETURNING workspace",
        )
        .bind(i(version))
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(ws) = ws {
            insert_event(
                &mut tx,
                device_id,
                &ws,
                now,
                "config_applied",
                &serde_json::json!({"version": version}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_event(
        &self,
        device_id: &str,
        workspace: &str,
        kind: &str,
        detail: &serde_json::Value,
        now: UnixMillis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        insert_event(&mut tx, device_id, workspace, now, kind, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_events(&self, q: &EventQuery) -> StoreResult<Vec<Event>> {
        const FORWARD: &str = "SELECT id, ts, kind, detail FROM events WHERE device_id = ?1 \
             AND (?2 IS NULL OR id > ?2) ORDER BY id ASC LIMIT ?3";
        const BACKWARD: &str = "SELECT id, ts, kind, detail FROM events WHERE device_id = ?1 \
             AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3";
        let sql = match q.direction {
            Direction::Forward => FORWARD,
            Direction::Backward => BACKWARD,
        };
        let rows = sqlx::query(sql)
            .bind(&q.device_id)
            .bind(q.after_id)
            .bind(q.limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn insert_logs(
        &self,
        device_id: &str,
        logs: &[LogRecord],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let mut stored = 0;
        for l in logs {
            let res = sqlx::query(
                "INSERT INTO logs (device_id, seq, ts, received_at, service, severity, severity_rank, message) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING",
            )
            .bind(device_id)
            .bind(i(l.seq))
            .bind(l.timestamp)
            .bind(received_at)
            .bind(&l.service)
            .bind(&l.severity)
            .bind(severity_rank(&l.severity))
            .bind(&l.message)
            .execute(&mut *tx)
            .await?;
            stored += res.rows_affected();
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn query_logs(&self, q: &LogQuery) -> StoreResult<Vec<LogRecord>> {
        if let Some(after) = q.after_seq {
            let rows = sqlx::query(
                "SELECT seq, ts, service, severity, message FROM logs WHERE device_id = ?1 \
                 AND seq > ?2 AND (?3 IS NULL OR ts >= ?3) AND (?4 IS NULL OR ts < ?4) \
                 AND (?5 IS NULL OR service = ?5) AND (?6 IS NULL OR severity_rank >= ?6) \
                 AND (?8 IS NULL OR seq <= ?8) ORDER BY seq ASC LIMIT ?7",
            )
            .bind(&q.device_id)
            .bind(i(after))
            .bind(q.start)
            .bind(q.end)
            .bind(&q.service)
            .bind(q.severity.as_deref().map(severity_rank))
            .bind(q.limit as i64)
            .bind(q.until_seq.map(i))
            .fetch_all(&self.pool)
            .await?;
            return rows.iter().map(log_from_row).collect();
        }
        let (before_ts, before_seq) = match q.before {
            Some((ts, seq)) => (Some(ts), Some(i(seq))),
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT seq, ts, service, severity, message FROM logs WHERE device_id = ?1 \
             AND (?2 IS NULL OR ts >= ?2) AND (?3 IS NULL OR ts < ?3) \
             AND (?4 IS NULL OR service = ?4) AND (?5 IS NULL OR severity_rank >= ?5) \
             AND (?6 IS NULL OR ts < ?6 OR (ts = ?6 AND seq < ?7)) \
             ORDER BY ts DESC, seq DESC LIMIT ?8",
        )
        .bind(&q.device_id)
        .bind(q.start)
        .bind(q.end)
        .bind(&q.service)
        .bind(q.severity.as_deref().map(severity_rank))
        .bind(before_ts)
        .bind(before_seq)
        .bind(q.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_from_row).collect()
    }

    async fn telemetry_buckets(
        &self,
        device_id: &str,
        start: UnixMillis,
        end: UnixMillis,
        bucket_ms: i64,
    ) -> StoreResult<Vec<TelemetryBucket>> {
        let rows = sqlx::query(
            "SELECT (ts / ?4) * ?4 AS bucket, COUNT(*) AS n, \
             AVG(cpu_percent) AS cpu_avg, MAX(cpu_percent) AS cpu_max, \
             AVG(memory_used_bytes) AS mem_avg, MAX(memory_total_bytes) AS mem_total, \
             AVG(disk_used_bytes) AS disk_avg, MAX(disk_total_bytes) AS disk_total, \
             MAX(network_rx_bytes) - MIN(network_rx_bytes) AS rx, \
             MAX(network_tx_bytes) - MIN(network_tx_bytes) AS tx, \
             AVG(load_1m) AS load_avg, \
             MAX((SELECT MAX(json_extract(value, '$.celsius')) FROM json_each(temperatures))) AS temp_max, \
             AVG((SELECT AVG(json_extract(value, '$.utilization_percent')) FROM json_each(gpus))) AS gpu_util, \
             AVG((SELECT SUM(json_extract(value, '$.memory_used_bytes')) FROM json_each(gpus))) AS gpu_mem \
             FROM telemetry WHERE device_id = ?1 AND ts >= ?2 AND ts < ?3 \
             GROUP BY bucket ORDER BY bucket",
        )
        .bind(device_id)
        .bind(start)
        .bind(end)
        .bind(bucket_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bucket_from_row).collect()
    }
}

/// An enrollment's writes inside `tx`: `Conflict` (and nothing written) if
/// the install ID was spent or bound to another key meanwhile.
async fn enroll_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    c: &EnrollmentCommit,
) -> StoreResult<()> {
    let bound = sqlx::query(
        "UPDATE devices SET install_key_sha256 = ?1, current_cert_serial = ?2, cert_expires_at = ?3 \
         WHERE id = ?4 AND install_spent = 0 \
         AND (install_key_sha256 IS NULL OR install_key_sha256 = ?1)",
    )
    .bind(&c.key_sha256)
    .bind(&c.cert.serial)
    .bind(c.cert.not_after)
    .bind(&c.device_id)
    .execute(&mut **tx)
    .await?;
    if bound.rows_affected() != 1 {
        return Err(StoreError::Conflict(
            "install ID was used or bound to another key meanwhile".into(),
        ));
    }
    // A retried enrollment (lost response) supersedes the earlier,
    // never-used certificate.
    revoke_device_certs(tx, &c.device_id, c.now).await?;
    sqlx::query(
        "INSERT INTO device_certs (serial, device_id, not_before, not_after, issued_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&c.cert.serial)
    .bind(&c.device_id)
    .bind(c.cert.not_before)
    .bind(c.cert.not_after)
    .bind(c.now)
    .execute(&mut **tx)
    .await?;
    revoke_device_keys(tx, &c.device_id, c.now, i64::MAX).await?;
    let k = &c.device_api_key;
    insert_api_key(tx, k).await?;
    insert_event(
        tx,
        &c.device_id,
        &k.workspace,
        c.now,
        "enrolled",
        &serde_json::json!({}),
    )
    .await?;
    Ok(())
}

async fn revoke_device_certs(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    device_id: &str,
    now: UnixMillis,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE device_certs SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(device_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes the device's live API keys created before `before`.
async fn revoke_device_keys(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    device_id: &str,
    now: UnixMillis,
    before: UnixMillis,
) -> StoreResult<()> {
    sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL AND created_at < ?")
        .bind(now)
        .bind(device_id)
        .bind(before)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_api_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    k: &NewApiKey,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, workspace, key_hash, scopes, device_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&k.id)
    .bind(&k.workspace)
    .bind(&k.key_hash)
    .bind(k.scopes.as_ref().map(to_json))
    .bind(&k.device_id)
    .bind(k.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    device_id: &str,
    workspace: &str,
    ts: UnixMillis,
    kind: &str,
    detail: &serde_json::Value,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO events (device_id, workspace, ts, kind, detail) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(device_id)
    .bind(workspace)
    .bind(ts)
    .bind(kind)
    .bind(to_json(detail))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
