//! The embedded backend: one SQLite file in the data directory, WAL mode so
//! the admin CLI can work on it while `serve` runs.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
}

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
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

fn json_vec<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing our own plain structs and vectors cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn device_from_row(row: &SqliteRow) -> StoreResult<Device> {
    let facts: Option<String> = row.try_get("facts")?;
    Ok(Device {
        id: row.try_get("id")?,
        workspace: row.try_get("workspace")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        device_type: row.try_get("device_type")?,
        enabled: row.try_get("enabled")?,
        created_at: row.try_get("created_at")?,
        facts: facts
            .as_deref()
            .map(|f| json_vec(f, "device facts"))
            .transpose()?,
        session_id: row.try_get("session_id")?,
        last_heartbeat: row.try_get("last_heartbeat")?,
        cert_expires_at: row.try_get("cert_expires_at")?,
        workflow_id: row.try_get("workflow_id")?,
        offline_mode: row.try_get("offline_mode")?,
        config_version: row.try_get::<i64, _>("config_version")?.max(0) as u64,
        config_applied_version: row.try_get::<i64, _>("config_applied_version")?.max(0) as u64,
    })
}

fn sample_from_row(row: &SqliteRow) -> StoreResult<TelemetrySample> {
    let u = |name: &str| -> StoreResult<u64> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
    let temps: String = row.try_get("temperatures")?;
    let gpus: String = row.try_get("gpus")?;
    Ok(TelemetrySample {
        seq: u("seq")?,
        timestamp: row.try_get("ts")?,
        cpu_percent: row.try_get::<f64, _>("cpu_percent")? as f32,
        memory_used_bytes: u("memory_used_bytes")?,
        memory_total_bytes: u("memory_total_bytes")?,
        swap_used_bytes: u("swap_used_bytes")?,
        swap_total_bytes: u("swap_total_bytes")?,
        disk_used_bytes: u("disk_used_bytes")?,
        disk_total_bytes: u("disk_total_bytes")?,
        network_rx_bytes: u("network_rx_bytes")?,
        network_tx_bytes: u("network_tx_bytes")?,
        load_1m: row.try_get("load_1m")?,
        load_5m: row.try_get("load_5m")?,
        load_15m: row.try_get("load_15m")?,
        uptime_secs: u("uptime_secs")?,
        temperatures: json_vec(&temps, "temperatures")?,
        gpus: json_vec(&gpus, "gpus")?,
    })
}

/// SQLite stores signed 64-bit integers; counters beyond i64::MAX saturate.
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `SELECT <device columns> FROM devices <tail>`, built at compile time.
macro_rules! device_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, workspace, name, description, device_type, enabled, created_at, ",
            "facts, session_id, last_heartbeat, cert_expires_at, workflow_id, offline_mode, ",
            "config_version, config_applied_version FROM devices ",
            $tail
        )
    };
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
        row.map(|r| {
            let features: String = r.try_get("features")?;
            Ok(Workspace {
                name: r.try_get("name")?,
                features: json_vec(&features, "workspace features")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn list_workspaces(&self) -> StoreResult<Vec<Workspace>> {
        let rows = sqlx::query("SELECT name, features, created_at FROM workspaces ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let features: String = r.try_get("features")?;
                Ok(Workspace {
                    name: r.try_get("name")?,
                    features: json_vec(&features, "workspace features")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
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
        rows.iter()
            .map(|r| {
                let scopes: Option<String> = r.try_get("scopes")?;
                Ok(ApiKeyInfo {
                    id: r.try_get("id")?,
                    workspace: r.try_get("workspace")?,
                    scopes: scopes
                        .as_deref()
                        .map(|s| json_vec(s, "api key scopes"))
                        .transpose()?,
                    device_id: r.try_get("device_id")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
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
        row.map(|r| {
            let scopes: Option<String> = r.try_get("scopes")?;
            Ok(ApiKeyRecord {
                id: r.try_get("id")?,
                workspace: r.try_get("workspace")?,
                scopes: scopes
                    .as_deref()
                    .map(|s| json_vec(s, "api key scopes"))
                    .transpose()?,
                device_id: r.try_get("device_id")?,
            })
        })
        .transpose()
    }

    async fn create_device(&self, d: &NewDevice) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
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
        row.map(|r| {
            Ok(Enrollment {
                device_id: r.try_get("id")?,
                workspace: r.try_get("workspace")?,
                enabled: r.try_get("enabled")?,
                expires_at: r
                    .try_get::<Option<i64>, _>("install_id_expires_at")?
                    .unwrap_or(0),
                bound_key_sha256: r.try_get("install_key_sha256")?,
                spent: r.try_get("install_spent")?,
            })
        })
        .transpose()
    }

    async fn complete_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let bound = sqlx::query(
            "UPDATE devices SET install_key_sha256 = ?1, current_cert_serial = ?2, cert_expires_at = ?3 \
             WHERE id = ?4 AND install_spent = 0 \
             AND (install_key_sha256 IS NULL OR install_key_sha256 = ?1)",
        )
        .bind(&c.key_sha256)
        .bind(&c.cert.serial)
        .bind(c.cert.not_after)
        .bind(&c.device_id)
        .execute(&mut *tx)
        .await?;
        if bound.rows_affected() != 1 {
            return Err(StoreError::Conflict(
                "install ID was used or bound to another key meanwhile".into(),
            ));
        }
        // A retried enrollment (lost response) supersedes the earlier,
        // never-used certificate.
        revoke_device_certs(&mut tx, &c.device_id, c.now).await?;
        sqlx::query(
            "INSERT INTO device_certs (serial, device_id, not_before, not_after, issued_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&c.cert.serial)
        .bind(&c.device_id)
        .bind(c.cert.not_before)
        .bind(c.cert.not_after)
        .bind(c.now)
        .execute(&mut *tx)
        .await?;
        revoke_device_keys(&mut tx, &c.device_id, c.now, i64::MAX).await?;
        let k = &c.device_api_key;
        insert_api_key(&mut tx, k).await?;
        insert_event(
            &mut tx,
            &c.device_id,
            &k.workspace,
            c.now,
            "enrolled",
            &serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_cert(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        let row = sqlx::query(
            "SELECT c.serial, c.device_id, c.revoked_at, c.superseded_at, d.workspace, d.enabled, d.install_spent, d.deleted_at \
             FROM device_certs c JOIN devices d ON d.id = c.device_id WHERE c.serial = ?",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(CertRecord {
                serial: r.try_get("serial")?,
                device_id: r.try_get("device_id")?,
                workspace: r.try_get("workspace")?,
                revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
                device_enabled: r.try_get("enabled")?,
                device_deleted: r.try_get::<Option<i64>, _>("deleted_at")?.is_some(),
                superseded_at: r.try_get("superseded_at")?,
                install_spent: r.try_get("install_spent")?,
            })
        })
        .transpose()
    }

    async fn rotate_cert(&self, c: &RotationCommit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
        let mut stored = 0;
        for s in samples {
            let res = sqlx::query(
                "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_percent, \
                 memory_used_bytes, memory_total_bytes, swap_used_bytes, swap_total_bytes, \
                 disk_used_bytes, disk_total_bytes, network_rx_bytes, network_tx_bytes, \
                 load_1m, load_5m, load_15m, uptime_secs, temperatures, gpus) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (device_id, seq) DO NOTHING",
            )
            .bind(device_id)
            .bind(i(s.seq))
            .bind(s.timestamp)
            .bind(received_at)
            .bind(s.cpu_percent as f64)
            .bind(i(s.memory_used_bytes))
            .bind(i(s.memory_total_bytes))
            .bind(i(s.swap_used_bytes))
            .bind(i(s.swap_total_bytes))
            .bind(i(s.disk_used_bytes))
            .bind(i(s.disk_total_bytes))
            .bind(i(s.network_rx_bytes))
            .bind(i(s.network_tx_bytes))
            .bind(s.load_1m)
            .bind(s.load_5m)
            .bind(s.load_15m)
            .bind(i(s.uptime_secs))
            .bind(to_json(&s.temperatures))
            .bind(to_json(&s.gpus))
            .execute(&mut *tx)
            .await?;
            stored += res.rows_affected();
        }
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
        let mut tx = self.pool.begin().await?;
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
        let before = LossTotals {
            telemetry_dropped: row.try_get::<i64, _>(0)?.max(0) as u64,
            logs_dropped: row.try_get::<i64, _>(1)?.max(0) as u64,
            corrupt: row.try_get::<i64, _>(2)?.max(0) as u64,
            logs_rate_limited: row.try_get::<i64, _>(3)?.max(0) as u64,
        };
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
        // Totals restart when a box re-enrolls with a fresh state dir: only
        // growth is news.
        let grew = |now: u64, then: u64| now.saturating_sub(then);
        let delta = LossTotals {
            telemetry_dropped: grew(t.telemetry_dropped, before.telemetry_dropped),
            logs_dropped: grew(t.logs_dropped, before.logs_dropped),
            corrupt: grew(t.corrupt, before.corrupt),
            logs_rate_limited: grew(t.logs_rate_limited, before.logs_rate_limited),
        };
        let any = delta != LossTotals::default();
        if any {
            insert_event(
                &mut tx,
                device_id,
                workspace,
                now,
                "data_lost",
                &serde_json::json!({
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
                }),
            )
            .await?;
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
    async fn update_device(
        &self,
        workspace: &str,
        id: &str,
        patch: &DevicePatch,
        now: UnixMillis,
    ) -> StoreResult<Option<Device>> {
        let mut tx = self.pool.begin().await?;
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
        if !changed.is_empty() {
            insert_event(
                &mut tx,
                id,
                workspace,
                now,
                "updated",
                &serde_json::Value::Object(changed),
            )
            .await?;
        }
        if let Some(enabled) = patch.enabled.filter(|e| *e != before.enabled) {
            let kind = if enabled { "enabled" } else { "disabled" };
            insert_event(&mut tx, id, workspace, now, kind, &serde_json::json!({})).await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(Event {
                    id: r.try_get("id")?,
                    timestamp: r.try_get("ts")?,
                    kind: r.try_get("kind")?,
                    detail: json_vec(&detail, "event detail")?,
                })
            })
            .collect()
    }

    async fn insert_logs(
        &self,
        device_id: &str,
        logs: &[LogRecord],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
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
        rows.iter()
            .map(|r| {
                Ok(LogRecord {
                    seq: r.try_get::<i64, _>("seq")?.max(0) as u64,
                    timestamp: r.try_get("ts")?,
                    service: r.try_get("service")?,
                    severity: r.try_get("severity")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
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
        rows.iter()
            .map(|r| {
                Ok(TelemetryBucket {
                    start: r.try_get("bucket")?,
                    samples: r.try_get::<i64, _>("n")?.max(0) as u64,
                    cpu_percent_avg: r.try_get("cpu_avg")?,
                    cpu_percent_max: r.try_get("cpu_max")?,
                    memory_used_bytes_avg: r.try_get("mem_avg")?,
                    memory_total_bytes: r.try_get::<i64, _>("mem_total")?.max(0) as u64,
                    disk_used_bytes_avg: r.try_get("disk_avg")?,
                    disk_total_bytes: r.try_get::<i64, _>("disk_total")?.max(0) as u64,
                    network_rx_bytes: r.try_get::<i64, _>("rx")?.max(0) as u64,
                    network_tx_bytes: r.try_get::<i64, _>("tx")?.max(0) as u64,
                    load_1m_avg: r.try_get("load_avg")?,
                    temperature_max_celsius: r.try_get("temp_max")?,
                    gpu_utilization_percent_avg: r.try_get("gpu_util")?,
                    gpu_memory_used_bytes_avg: r.try_get("gpu_mem")?,
                })
            })
            .collect()
    }
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

fn config_from_row(row: &SqliteRow) -> StoreResult<ConfigVersion> {
    let config: String = row.try_get("config")?;
    Ok(ConfigVersion {
        version: row.try_get::<i64, _>("version")?.max(0) as u64,
        config: json_vec(&config, "device config")?,
        created_at: row.try_get("created_at")?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store
            .create_workspace(&Workspace {
                name: "acme".into(),
                features: vec![],
                created_at: 1,
            })
            .await
            .unwrap();
        (dir, store)
    }

    fn new_device(id: &str, created_at: i64) -> NewDevice {
        NewDevice {
            id: id.into(),
            workspace: "acme".into(),
            name: format!("dev {id}"),
            description: String::new(),
            device_type: "edge".into(),
            install_id_hash: format!("hash-{id}"),
            install_id_expires_at: i64::MAX,
            workflow_id: None,
            offline_mode: false,
            config: serde_json::json!({"k": id}),
            created_at,
        }
    }

    fn commit(device: &str, key: &str, serial: &str) -> EnrollmentCommit {
        EnrollmentCommit {
            device_id: device.into(),
            key_sha256: key.into(),
            cert: NewCert {
                serial: serial.into(),
                not_before: 0,
                not_after: 10,
            },
            device_api_key: NewApiKey {
                id: format!("k-{serial}"),
                workspace: "acme".into(),
                key_hash: format!("kh-{serial}"),
                scopes: None,
                device_id: Some(device.into()),
                created_at: 1,
            },
            now: 5,
        }
    }

    fn sample(seq: u64) -> TelemetrySample {
        TelemetrySample {
            seq,
            timestamp: 1000 * seq as i64,
            cpu_percent: seq as f32,
            temperatures: vec![Temperature {
                sensor: "cpu".into(),
                celsius: 40.0,
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn telemetry_is_stored_once_per_seq() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        assert_eq!(
            s.insert_telemetry("d1", &[sample(1), sample(2)], 0)
                .await
                .unwrap(),
            2
        );
        // A retry of the same batch plus one new sample stores only the new one.
        assert_eq!(
            s.insert_telemetry("d1", &[sample(1), sample(2), sample(3)], 0)
                .await
                .unwrap(),
            1
        );
        assert_eq!(s.last_telemetry_seq("d1").await.unwrap(), 3);
        let q = TelemetryQuery {
            device_id: "d1".into(),
            start: None,
            end: None,
            after_seq: None,
            direction: Direction::Forward,
            limit: 10,
        };
        let rows = s.query_telemetry(&q).await.unwrap();
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(rows[0], sample(1), "round-trips every field");
        let back = s
            .query_telemetry(&TelemetryQuery {
                direction: Direction::Backward,
                after_seq: Some(3),
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(back.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 1]);
        let window = s
            .query_telemetry(&TelemetryQuery {
                start: Some(2000),
                end: Some(3000),
                ..q
            })
            .await
            .unwrap();
        assert_eq!(window.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
    }

    #[tokio::test]
    async fn install_id_binds_to_the_first_key_and_retries_revoke_the_unused_cert() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        s.complete_enrollment(&commit("d1", "keyA", "s1"))
            .await
            .unwrap();
        let e = s.find_enrollment("hash-d1").await.unwrap().unwrap();
        assert_eq!(e.bound_key_sha256.as_deref(), Some("keyA"));
        // Same key again (response lost): allowed, and the first cert dies.
        s.complete_enrollment(&commit("d1", "keyA", "s2"))
            .await
            .unwrap();
        assert!(s.get_cert("s1").await.unwrap().unwrap().revoked);
        assert!(!s.get_cert("s2").await.unwrap().unwrap().revoked);
        // The first device key was replaced too.
        assert!(s.find_api_key("kh-s1").await.unwrap().is_none());
        assert!(s.find_api_key("kh-s2").await.unwrap().is_some());
        // Another key: conflict.
        assert!(matches!(
            s.complete_enrollment(&commit("d1", "keyB", "s3")).await,
            Err(StoreError::Conflict(_))
        ));
        // Once spent, even the bound key is refused.
        s.spend_install_id("d1").await.unwrap();
        assert!(matches!(
            s.complete_enrollment(&commit("d1", "keyA", "s4")).await,
            Err(StoreError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn sessions_drive_status_and_a_stale_close_does_not_end_a_new_session() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        let now = 1_000_000;
        let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
        assert_eq!(dev.status(now), DeviceStatus::Unknown);
        s.session_opened("d1", "sA", &DeviceFacts::default(), now)
            .await
            .unwrap();
        s.session_opened("d1", "sB", &DeviceFacts::default(), now)
            .await
            .unwrap();
        s.session_closed("d1", "sA", now).await.unwrap();
        let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
        assert_eq!(dev.status(now + 1), DeviceStatus::Online);
        assert_eq!(
            dev.status(now + ONLINE_WINDOW_MS),
            DeviceStatus::Offline,
            "silent sessions go offline"
        );
        s.session_closed("d1", "sB", now).await.unwrap();
        let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
        assert_eq!(dev.status(now + 1), DeviceStatus::Offline);
    }

    #[tokio::test]
    async fn devices_list_in_pages_within_their_workspace() {
        let (_d, s) = store().await;
        s.create_workspace(&Workspace {
            name: "other".into(),
            features: vec![],
            created_at: 1,
        })
        .await
        .unwrap();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.create_device(&new_device(id, 10 + i as i64))
                .await
                .unwrap();
        }
        let mut foreign = new_device("z", 5);
        foreign.workspace = "other".into();
        s.create_device(&foreign).await.unwrap();
        let first = s
            .list_devices(&DeviceListQuery {
                workspace: "acme".into(),
                after: None,
                limit: 2,
                status: None,
                device_type: None,
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let rest = s
            .list_devices(&DeviceListQuery {
                workspace: "acme".into(),
                after: Some((first[1].created_at, first[1].id.clone())),
                limit: 2,
                status: None,
                device_type: None,
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            rest.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            vec!["c"]
        );
        assert!(s.get_device("acme", "z").await.unwrap().is_none());
        assert!(s.set_device_enabled("acme", "a", false).await.unwrap());
        assert!(!s.get_device("acme", "a").await.unwrap().unwrap().enabled);
        assert!(!s.set_device_enabled("acme", "z", false).await.unwrap());
    }

    #[tokio::test]
    async fn duplicate_workspace_is_a_conflict() {
        let (_d, s) = store().await;
        let err = s
            .create_workspace(&Workspace {
                name: "acme".into(),
                features: vec![],
                created_at: 2,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));
    }

    fn list_query(
        status: Option<DeviceStatus>,
        device_type: Option<&str>,
        now: i64,
    ) -> DeviceListQuery {
        DeviceListQuery {
            workspace: "acme".into(),
            after: None,
            limit: 100,
            status,
            device_type: device_type.map(String::from),
            now,
        }
    }

    #[tokio::test]
    async fn list_filters_by_status_and_type() {
        let (_d, s) = store().await;
        let mut ai = new_device("ai", 1);
        ai.device_type = "ai1".into();
        s.create_device(&ai).await.unwrap();
        s.create_device(&new_device("on", 2)).await.unwrap();
        s.create_device(&new_device("off", 3)).await.unwrap();
        let now = 1_000_000;
        s.session_opened("on", "s1", &DeviceFacts::default(), now)
            .await
            .unwrap();
        s.session_opened("off", "s2", &DeviceFacts::default(), now)
            .await
            .unwrap();
        s.session_closed("off", "s2", now).await.unwrap();
        let ids = |v: Vec<Device>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
        let q = |st, t| list_query(st, t, now + 1);
        assert_eq!(
            ids(s
                .list_devices(&q(Some(DeviceStatus::Online), None))
                .await
                .unwrap()),
            vec!["on"]
        );
        assert_eq!(
            ids(s
                .list_devices(&q(Some(DeviceStatus::Offline), None))
                .await
                .unwrap()),
            vec!["off"]
        );
        assert_eq!(
            ids(s
                .list_devices(&q(Some(DeviceStatus::Unknown), None))
                .await
                .unwrap()),
            vec!["ai"]
        );
        assert_eq!(
            ids(s.list_devices(&q(None, Some("ai1"))).await.unwrap()),
            vec!["ai"]
        );
        assert_eq!(
            ids(s.list_devices(&q(None, Some("edge"))).await.unwrap()),
            vec!["on", "off"]
        );
        // The same filter agrees with Device::status when heartbeats go stale.
        let later = list_query(
            Some(DeviceStatus::Offline),
            None,
            now + ONLINE_WINDOW_MS + 1,
        );
        assert_eq!(
            ids(s.list_devices(&later).await.unwrap()),
            vec!["on", "off"]
        );
    }

    #[tokio::test]
    async fn configs_are_versioned_and_applied_versions_recorded() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        let v1 = s.get_config("d1", None).await.unwrap().unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.config, serde_json::json!({"k": "d1"}));
        let v2 = s
            .put_config(
                "acme",
                "d1",
                &serde_json::json!({"telemetry_interval_secs": 5}),
                10,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(s.get_config("d1", None).await.unwrap().unwrap(), v2);
        assert_eq!(s.get_config("d1", Some(1)).await.unwrap().unwrap(), v1);
        assert!(s.get_config("d1", Some(9)).await.unwrap().is_none());
        let all = s.list_configs("d1", None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|c| c.version).collect::<Vec<_>>(),
            vec![2, 1]
        );
        let older = s.list_configs("d1", Some(2), 10).await.unwrap();
        assert_eq!(older.iter().map(|c| c.version).collect::<Vec<_>>(), vec![1]);
        assert!(
            s.put_config("other", "d1", &serde_json::json!({}), 10)
                .await
                .unwrap()
                .is_none()
        );
        s.config_applied("d1", 2, 11).await.unwrap();
        s.config_applied("d1", 2, 12).await.unwrap(); // repeated ack: one event
        assert_eq!(
            s.get_device("acme", "d1")
                .await
                .unwrap()
                .unwrap()
                .config_applied_version,
            2
        );
        let kinds: Vec<String> = s
            .list_events(&EventQuery {
                device_id: "d1".into(),
                after_id: None,
                direction: Direction::Forward,
                limit: 100,
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec!["created", "config_changed", "config_applied"]);
    }

    #[tokio::test]
    async fn delete_hides_the_device_and_revokes_everything() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        s.complete_enrollment(&commit("d1", "keyA", "s1"))
            .await
            .unwrap();
        assert!(s.delete_device("acme", "d1", 50).await.unwrap());
        assert!(
            !s.delete_device("acme", "d1", 51).await.unwrap(),
            "already gone"
        );
        assert!(s.get_device("acme", "d1").await.unwrap().is_none());
        assert!(s.device_workspace("d1").await.unwrap().is_none());
        let cert = s.get_cert("s1").await.unwrap().unwrap();
        assert!(cert.revoked && cert.device_deleted);
        assert!(s.find_api_key("kh-s1").await.unwrap().is_none());
        assert!(s.find_enrollment("hash-d1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn patch_records_what_changed() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        let patch = DevicePatch {
            name: Some("renamed".into()),
            enabled: Some(false),
            ..Default::default()
        };
        let d = s
            .update_device("acme", "d1", &patch, 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.name, "renamed");
        assert!(!d.enabled);
        assert!(
            s.update_device("acme", "nope", &patch, 5)
                .await
                .unwrap()
                .is_none()
        );
        let events = s
            .list_events(&EventQuery {
                device_id: "d1".into(),
                after_id: None,
                direction: Direction::Backward,
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(events[0].kind, "disabled");
        assert_eq!(events[1].kind, "updated");
        assert_eq!(events[1].detail["name"]["to"], "renamed");
    }

    #[tokio::test]
    async fn reissued_install_id_voids_the_old_one_and_its_binding() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        s.complete_enrollment(&commit("d1", "keyA", "s1"))
            .await
            .unwrap();
        s.spend_install_id("d1").await.unwrap();
        assert!(
            s.reissue_install_id("acme", "d1", "new-hash", i64::MAX, 9)
                .await
                .unwrap()
        );
        assert!(s.find_enrollment("hash-d1").await.unwrap().is_none());
        let e = s.find_enrollment("new-hash").await.unwrap().unwrap();
        assert!(!e.spent && e.bound_key_sha256.is_none());
        s.complete_enrollment(&commit("d1", "keyB", "s2"))
            .await
            .unwrap();
        assert!(
            s.get_cert("s1").await.unwrap().unwrap().revoked,
            "re-enrollment revokes the old cert"
        );
    }

    #[tokio::test]
    async fn logs_page_newest_first_with_filters() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        let line = |seq: u64, ts: i64, service: &str, severity: &str| LogRecord {
            seq,
            timestamp: ts,
            service: service.into(),
            severity: severity.into(),
            message: format!("line {seq}"),
        };
        let logs = vec![
            line(1, 100, "nginx", "info"),
            line(2, 200, "app", "error"),
            line(3, 200, "app", "warning"),
            line(4, 300, "nginx", "debug"),
        ];
        assert_eq!(s.insert_logs("d1", &logs, 0).await.unwrap(), 4);
        assert_eq!(
            s.insert_logs("d1", &logs[..2], 0).await.unwrap(),
            0,
            "deduped"
        );
        let q = LogQuery {
            device_id: "d1".into(),
            start: None,
            end: None,
            service: None,
            severity: None,
            before: None,
            limit: 10,
        };
        let seqs = |v: Vec<LogRecord>| v.into_iter().map(|l| l.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.query_logs(&q).await.unwrap()), vec![4, 3, 2, 1]);
        let page2 = LogQuery {
            before: Some((200, 3)),
            ..q.clone()
        };
        assert_eq!(seqs(s.query_logs(&page2).await.unwrap()), vec![2, 1]);
        let warn_up = LogQuery {
            severity: Some("warning".into()),
            ..q.clone()
        };
        assert_eq!(seqs(s.query_logs(&warn_up).await.unwrap()), vec![3, 2]);
        let nginx = LogQuery {
            service: Some("nginx".into()),
            start: Some(150),
            ..q
        };
        assert_eq!(seqs(s.query_logs(&nginx).await.unwrap()), vec![4]);
    }

    #[tokio::test]
    async fn telemetry_buckets_aggregate_per_bucket() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        let mk =
            |seq: u64, ts: i64, cpu: f32, rx: u64, temp: f32, gpu: Option<f32>| TelemetrySample {
                seq,
                timestamp: ts,
                cpu_percent: cpu,
                memory_used_bytes: 100 * seq,
                memory_total_bytes: 1000,
                network_rx_bytes: rx,
                temperatures: vec![
                    Temperature {
                        sensor: "a".into(),
                        celsius: temp,
                    },
                    Temperature {
                        sensor: "b".into(),
                        celsius: temp - 10.0,
                    },
                ],
                gpus: gpu
                    .map(|u| {
                        vec![GpuSample {
                            utilization_percent: u,
                            memory_used_bytes: 7,
                            ..Default::default()
                        }]
                    })
                    .unwrap_or_default(),
                ..Default::default()
            };
        let samples = vec![
            mk(1, 0, 10.0, 1000, 40.0, Some(50.0)),
            mk(2, 30_000, 30.0, 1500, 45.0, None),
            mk(3, 60_000, 50.0, 2000, 50.0, Some(10.0)),
            mk(4, 200_000, 70.0, 9000, 60.0, None), // outside the window
        ];
        s.insert_telemetry("d1", &samples, 0).await.unwrap();
        let b = s.telemetry_buckets("d1", 0, 120_000, 60_000).await.unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].start, b[0].samples), (0, 2));
        assert_eq!(b[0].cpu_percent_avg, 20.0);
        assert_eq!(b[0].cpu_percent_max, 30.0);
        assert_eq!(b[0].memory_used_bytes_avg, 150.0);
        assert_eq!(b[0].network_rx_bytes, 500);
        assert_eq!(b[0].temperature_max_celsius, Some(45.0));
        assert_eq!(
            b[0].gpu_utilization_percent_avg,
            Some(50.0),
            "samples without GPUs do not count"
        );
        assert_eq!((b[1].start, b[1].samples), (60_000, 1));
        assert_eq!(b[1].gpu_memory_used_bytes_avg, Some(7.0));
    }

    #[tokio::test]
    async fn deleting_a_device_records_its_decommission_and_revokes_its_certs() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        s.complete_enrollment(&commit("d1", "key", "serial-1"))
            .await
            .unwrap();
        assert!(s.delete_device("acme", "d1", 50).await.unwrap());
        let events = s
            .list_events(&EventQuery {
                device_id: "d1".into(),
                after_id: None,
                direction: Direction::Forward,
                limit: 100,
            })
            .await
            .unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds.last(), Some(&"decommissioned"), "{kinds:?}");
        let cert = s.get_cert("serial-1").await.unwrap().unwrap();
        assert!(cert.revoked && cert.device_deleted);
        assert!(!s.delete_device("acme", "d1", 60).await.unwrap(), "once");
    }

    #[tokio::test]
    async fn loss_reports_record_growth_once_and_retention_prunes() {
        let (_d, s) = store().await;
        s.create_device(&new_device("d1", 1)).await.unwrap();
        let t = |dropped, corrupt| LossTotals {
            telemetry_dropped: dropped,
            logs_dropped: 0,
            corrupt,
            logs_rate_limited: 0,
        };
        assert!(!s.record_loss("d1", "acme", &t(0, 0), 10).await.unwrap());
        assert!(s.record_loss("d1", "acme", &t(7, 1), 11).await.unwrap());
        assert!(
            !s.record_loss("d1", "acme", &t(7, 1), 12).await.unwrap(),
            "same totals"
        );
        assert!(s.record_loss("d1", "acme", &t(9, 1), 13).await.unwrap());
        let q = EventQuery {
            device_id: "d1".into(),
            after_id: None,
            direction: Direction::Forward,
            limit: 100,
        };
        let lost: Vec<_> = s
            .list_events(&q)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "data_lost")
            .collect();
        assert_eq!(lost.len(), 2);
        assert_eq!(lost[0].detail["telemetry_dropped"], 7);
        assert_eq!(lost[0].detail["corrupt"], 1);
        assert_eq!(lost[1].detail["telemetry_dropped"], 2, "the increase");
        assert_eq!(lost[1].detail["totals"]["telemetry_dropped"], 9);

        s.insert_telemetry("d1", &[sample(1), sample(2), sample(3)], 0)
            .await
            .unwrap();
        let line = |seq: u64, ts: i64| LogRecord {
            seq,
            timestamp: ts,
            service: "app".into(),
            severity: "info".into(),
            message: format!("line {seq}"),
        };
        s.insert_logs("d1", &[line(1, 100), line(2, 5000)], 0)
            .await
            .unwrap();
        assert_eq!(s.last_log_seq("d1").await.unwrap(), 2);
        let c = s
            .prune(&Retention {
                telemetry_before: 2500, // samples are at 1000 * seq
                logs_before: 1000,
                events_before: 12,
            })
            .await
            .unwrap();
        assert_eq!(
            c,
            PruneCounts {
                telemetry: 2,
                logs: 1,
                events: c.events
            }
        );
        assert!(c.events >= 2, "created and the first loss report: {c:?}");
        assert_eq!(s.last_telemetry_seq("d1").await.unwrap(), 3);
        assert_eq!(s.last_log_seq("d1").await.unwrap(), 2);
        let left = s.list_events(&q).await.unwrap();
        assert!(left.iter().all(|e| e.timestamp >= 12), "{left:?}");
    }
}
