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
            "facts, session_id, last_heartbeat, cert_expires_at FROM devices ",
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
             install_id_hash, install_id_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.id)
        .bind(&d.workspace)
        .bind(&d.name)
        .bind(&d.description)
        .bind(&d.device_type)
        .bind(d.created_at)
        .bind(&d.install_id_hash)
        .bind(d.install_id_expires_at)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, &d.id, &d.workspace, d.created_at, "created").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_device(&self, workspace: &str, id: &str) -> StoreResult<Option<Device>> {
        const Q: &str = device_select!("WHERE workspace = ? AND id = ?");
        let row = sqlx::query(Q)
            .bind(workspace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn list_devices(&self, q: &DeviceListQuery) -> StoreResult<Vec<Device>> {
        const Q: &str = device_select!(
            "WHERE workspace = ?1 AND (?2 IS NULL OR created_at > ?2 OR (created_at = ?2 AND id > ?3)) \
             ORDER BY created_at, id LIMIT ?4"
        );
        let (after_ts, after_id) = match &q.after {
            Some((ts, id)) => (Some(*ts), Some(id.as_str())),
            None => (None, None),
        };
        let rows = sqlx::query(Q)
            .bind(&q.workspace)
            .bind(after_ts)
            .bind(after_id)
            .bind(q.limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn set_device_enabled(
        &self,
        workspace: &str,
        id: &str,
        enabled: bool,
    ) -> StoreResult<bool> {
        let res = sqlx::query("UPDATE devices SET enabled = ? WHERE workspace = ? AND id = ?")
            .bind(enabled)
            .bind(workspace)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn find_enrollment(&self, install_id_hash: &str) -> StoreResult<Option<Enrollment>> {
        let row = sqlx::query(
            "SELECT id, workspace, enabled, install_id_expires_at, install_key_sha256, install_spent \
             FROM devices WHERE install_id_hash = ?",
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
        sqlx::query(
            "UPDATE device_certs SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
        )
        .bind(c.now)
        .bind(&c.device_id)
        .execute(&mut *tx)
        .await?;
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
        sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
        )
        .bind(c.now)
        .bind(&c.device_id)
        .execute(&mut *tx)
        .await?;
        let k = &c.device_api_key;
        sqlx::query(
            "INSERT INTO api_keys (id, workspace, key_hash, scopes, device_id, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&k.id)
        .bind(&k.workspace)
        .bind(&k.key_hash)
        .bind(k.scopes.as_ref().map(to_json))
        .bind(&k.device_id)
        .bind(k.created_at)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, &c.device_id, &k.workspace, c.now, "enrolled").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_cert(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        let row = sqlx::query(
            "SELECT c.serial, c.device_id, c.revoked_at, d.workspace, d.enabled, d.install_spent \
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
                install_spent: r.try_get("install_spent")?,
            })
        })
        .transpose()
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
        insert_event(&mut tx, device_id, &ws, now, "connected").await?;
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
            insert_event(&mut tx, device_id, &ws, now, "disconnected").await?;
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
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    device_id: &str,
    workspace: &str,
    ts: UnixMillis,
    kind: &str,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO events (device_id, workspace, ts, kind) VALUES (?, ?, ?, ?)")
        .bind(device_id)
        .bind(workspace)
        .bind(ts)
        .bind(kind)
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
}
