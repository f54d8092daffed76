//! The shared backend: one PostgreSQL database that several control-plane
//! replicas use at once.
//!
//! The SQL mirrors the SQLite backend statement for statement; where SQLite
//! gets correctness for free from its single writer (a transaction that reads
//! and then writes sees no other writer in between), this backend either
//! relies on a single conditional `UPDATE` (PostgreSQL row-locks the row and
//! re-checks the `WHERE` clause against the newest committed version, so two
//! replicas cannot both succeed), or locks the device row first with
//! `SELECT … FOR NO KEY UPDATE`. `NO KEY UPDATE` is the lock a plain `UPDATE`
//! of non-key columns takes: it serializes against every other change to the
//! device but, unlike `FOR UPDATE`, does not block the foreign-key checks of
//! concurrent telemetry and log inserts for the same device.
//!
//! Lock order, to stay free of deadlocks: the device row first, then its
//! certificates and keys, then (last) the device's event lock (see
//! [`insert_event`]).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Postgres, Transaction};

use super::common::*;
use super::*;

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` (a pool of up to 16 connections)
    /// and runs the migrations. Replicas starting together are fine: the
    /// migrator holds an advisory lock while it works.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// For tests: creates an empty database `outpost_test_<random hex>` on the
/// server of `base_url` (any database there that the user may connect to,
/// e.g. `postgres://postgres@127.0.0.1:54329/postgres`, with a user allowed
/// to `CREATE DATABASE`) and returns the URL of the new database, so that
/// each test (or end-to-end harness) gets a database of its own.
///
/// # Panics
///
/// When the server cannot be reached or refuses; see
/// [`try_fresh_test_database`] for the fallible form.
pub async fn fresh_test_database(base_url: &str) -> String {
    match try_fresh_test_database(base_url).await {
        Ok(url) => url,
        // A test helper: failing to set up the test database fails the test.
        Err(e) => panic!("creating a test database on {base_url}: {e}"),
    }
}

/// [`fresh_test_database`], returning errors instead of panicking.
pub async fn try_fresh_test_database(base_url: &str) -> StoreResult<String> {
    let name = format!("outpost_test_{}", hex::encode(rand::random::<[u8; 8]>()));
    let mut conn = PgConnection::connect(base_url).await?;
    // `name` is our own lowercase hex identifier: nothing to inject.
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(with_database(base_url, &name))
}

/// For tests: drops a database made by [`fresh_test_database`] (`url` is
/// what it returned), disconnecting whoever is still connected to it.
pub async fn drop_test_database(base_url: &str, url: &str) -> StoreResult<()> {
    let opts = PgConnectOptions::from_str(url)?;
    let Some(name) = opts
        .get_database()
        .filter(|n| is_test_database_name(n))
        .map(str::to_owned)
    else {
        return Err(StoreError::Conflict(format!(
            "{url:?} is not a database made by fresh_test_database"
        )));
    };
    let mut conn = PgConnection::connect(base_url).await?;
    // Checked above: `outpost_test_` and lowercase hex only.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

fn is_test_database_name(name: &str) -> bool {
    name.strip_prefix("outpost_test_").is_some_and(|hex| {
        !hex.is_empty()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `url` with its database (the path) replaced by `database`; the query
/// string is kept.
fn with_database(url: &str, database: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let root = match head[authority_start..].find('/') {
        Some(p) => &head[..authority_start + p],
        None => head,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

/// Takes the device's row lock for the rest of the transaction (see the
/// module docs). Nothing happens when there is no such device.
async fn lock_device(tx: &mut Transaction<'_, Postgres>, device_id: &str) -> StoreResult<()> {
    sqlx::query("SELECT 1 FROM devices WHERE id = $1 FOR NO KEY UPDATE")
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl PgStore {
    /// One statement for rows of any number of devices (atomic on its own).
    async fn insert_rows(
        &self,
        rows: &[(&str, &TelemetrySample)],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        let mut devs = Vec::with_capacity(n);
        let (mut seq, mut ts, mut cpu) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut mem_used, mut mem_total, mut swap_used, mut swap_total) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut disk_used, mut disk_total, mut rx, mut tx) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut l1, mut l5, mut l15, mut uptime) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut temps, mut gpus) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (d, s) in rows {
            devs.push(d.to_string());
            seq.push(i(s.seq));
            ts.push(s.timestamp);
            cpu.push(s.cpu_percent as f64);
            mem_used.push(i(s.memory_used_bytes));
            mem_total.push(i(s.memory_total_bytes));
            swap_used.push(i(s.swap_used_bytes));
            swap_total.push(i(s.swap_total_bytes));
            disk_used.push(i(s.disk_used_bytes));
            disk_total.push(i(s.disk_total_bytes));
            rx.push(i(s.network_rx_bytes));
            tx.push(i(s.network_tx_bytes));
            l1.push(s.load_1m);
            l5.push(s.load_5m);
            l15.push(s.load_15m);
            uptime.push(i(s.uptime_secs));
            temps.push(to_json(&s.temperatures));
            gpus.push(to_json(&s.gpus));
        }
        // One statement for the batch; see insert_logs for the dedupe.
        let res = sqlx::query(
            "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_percent, \
             memory_used_bytes, memory_total_bytes, swap_used_bytes, swap_total_bytes, \
             disk_used_bytes, disk_total_bytes, network_rx_bytes, network_tx_bytes, \
             load_1m, load_5m, load_15m, uptime_secs, temperatures, gpus) \
             SELECT dev, seq, ts, $2, cpu, mu, mt, su, st, du, dt, rx, tx, l1, l5, l15, up, \
                    temps, gpus \
             FROM UNNEST($1::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::DOUBLE PRECISION[], \
                         $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], \
                         $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[], \
                         $14::DOUBLE PRECISION[], $15::DOUBLE PRECISION[], \
                         $16::DOUBLE PRECISION[], $17::BIGINT[], $18::TEXT[], $19::TEXT[]) \
                  AS b(dev, seq, ts, cpu, mu, mt, su, st, du, dt, rx, tx, l1, l5, l15, up, \
                       temps, gpus) \
             ORDER BY dev, seq \
             ON CONFLICT (device_id, seq) DO NOTHING",
        )
        .bind(devs)
        .bind(received_at)
        .bind(seq)
        .bind(ts)
        .bind(cpu)
        .bind(mem_used)
        .bind(mem_total)
        .bind(swap_used)
        .bind(swap_total)
        .bind(disk_used)
        .bind(disk_total)
        .bind(rx)
        .bind(tx)
        .bind(l1)
        .bind(l5)
        .bind(l15)
        .bind(uptime)
        .bind(temps)
        .bind(gpus)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn create_workspace(&self, ws: &Workspace) -> StoreResult<()> {
        let res =
            sqlx::query("INSERT INTO workspaces (name, features, created_at) VALUES ($1, $2, $3)")
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
        let row = sqlx::query("SELECT name, features, created_at FROM workspaces WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    async fn list_workspaces(&self) -> StoreResult<Vec<Workspace>> {
        // `name` has the "C" collation: byte order, as on SQLite.
        let rows = sqlx::query("SELECT name, features, created_at FROM workspaces ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(workspace_from_row).collect()
    }

    async fn set_workspace_features(&self, name: &str, features: &[String]) -> StoreResult<bool> {
        let res = sqlx::query("UPDATE workspaces SET features = $1 WHERE name = $2")
            .bind(to_json(&features))
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn list_api_keys(&self, workspace: &str) -> StoreResult<Vec<ApiKeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, workspace, scopes, device_id, created_at, revoked_at FROM api_keys \
             WHERE workspace = $1 ORDER BY created_at DESC, id",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_info_from_row).collect()
    }

    async fn revoke_api_key(&self, id: &str, now: UnixMillis) -> StoreResult<bool> {
        // Conditional update: of two concurrent revocations one sees the
        // other's revoked_at on its re-check and reports false.
        let res =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, workspace, key_hash, scopes, device_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
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
             WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_key_record_from_row).transpose()
    }

    async fn create_device(&self, d: &NewDevice) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO devices (id, workspace, name, description, device_type, created_at, \
             install_id_hash, install_id_expires_at, workflow_id, offline_mode, config_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1)",
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
        sqlx::query(
            "INSERT INTO device_configs (device_id, version, config, created_at) \
             VALUES ($1, 1, $2, $3)",
        )
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
        const Q: &str = device_select!("WHERE workspace = $1 AND id = $2 AND deleted_at IS NULL");
        let row = sqlx::query(Q)
            .bind(workspace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn device_workspace(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar(
                "SELECT workspace FROM devices WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    async fn list_devices(&self, q: &DeviceListQuery) -> StoreResult<Vec<Device>> {
        // `id` has the "C" collation: ids order as bytes, as on SQLite.
        const Q: &str = device_select!(
            "WHERE workspace = $1 AND deleted_at IS NULL \
             AND ($2::BIGINT IS NULL OR created_at > $2 \
                  OR (created_at = $2 AND id > $3)) \
             AND ($5::TEXT IS NULL \
                  OR ($5 = 'online' AND session_id IS NOT NULL AND last_heartbeat > $6) \
                  OR ($5 = 'offline' AND last_heartbeat IS NOT NULL \
                      AND NOT (session_id IS NOT NULL AND last_heartbeat > $6)) \
                  OR ($5 = 'unknown' AND last_heartbeat IS NULL)) \
             AND ($7::TEXT IS NULL OR device_type = $7) \
             ORDER BY created_at, id LIMIT $4"
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

    async fn update_device(
        &self,
        workspace: &str,
        id: &str,
        patch: &DevicePatch,
        now: UnixMillis,
    ) -> StoreResult<Option<Device>> {
        let mut tx = self.pool.begin().await?;
        // Read-then-write: the "before" state decides which events are
        // recorded, so lock the row while we read it. Without the lock two
        // replicas disabling the same device would both record "disabled".
        const LOCK: &str = device_select!(
            "WHERE workspace = $1 AND id = $2 AND deleted_at IS NULL FOR NO KEY UPDATE"
        );
        const Q: &str = device_select!("WHERE workspace = $1 AND id = $2 AND deleted_at IS NULL");
        let Some(before) = sqlx::query(LOCK)
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
            "UPDATE devices SET name = COALESCE($1, name), \
             description = COALESCE($2, description), enabled = COALESCE($3, enabled) \
             WHERE id = $4",
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
        let mut tx = self.pool.begin().await?;
        // Conditional update (deleted_at IS NULL) holding the row lock to
        // the end: of two concurrent deletes only one succeeds and records
        // the decommission.
        let res = sqlx::query(
            "UPDATE devices SET deleted_at = $1, install_id_hash = NULL, session_id = NULL \
             WHERE workspace = $2 AND id = $3 AND deleted_at IS NULL",
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
        // Serialize with other key replacements of the device: otherwise two
        // replicas could each revoke the old key but not the other's new one
        // (not yet committed when their UPDATE ran), leaving two live keys.
        // A missing device is not an error here, as on SQLite.
        lock_device(&mut tx, device_id).await?;
        revoke_device_keys(&mut tx, device_id, now, i64::MAX).await?;
        insert_api_key(&mut tx, key).await?;
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
        // One statement; its row lock (held to commit) orders it against a
        // concurrent enrollment's conditional update of the same row.
        let res = sqlx::query(
            "UPDATE devices SET install_id_hash = $1, install_id_expires_at = $2, \
             install_key_sha256 = NULL, install_spent = FALSE \
             WHERE workspace = $3 AND id = $4 AND deleted_at IS NULL",
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
        // Single-statement increment: a concurrent put_config waits for our
        // row lock and then increments the version we committed, so
        // versions stay unique and gapless across replicas.
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE devices SET config_version = config_version + 1 \
             WHERE workspace = $1 AND id = $2 AND deleted_at IS NULL RETURNING config_version",
        )
        .bind(workspace)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(version) = version else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO device_configs (device_id, version, config, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
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
            "SELECT c.version, c.config, c.created_at \
             FROM device_configs c JOIN devices d ON d.id = c.device_id \
             WHERE c.device_id = $1 AND c.version = COALESCE($2, d.config_version)",
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
             WHERE device_id = $1 AND ($2::BIGINT IS NULL OR version < $2) \
             ORDER BY version DESC LIMIT $3",
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
        // Conditional update: a repeated ack racing on another replica
        // re-checks `<>` against our committed value and records nothing.
        let ws: Option<String> = sqlx::query_scalar(
            "UPDATE devices SET config_applied_version = $1 \
             WHERE id = $2 AND config_applied_version <> $1 RETURNING workspace",
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
        const FORWARD: &str = "SELECT id, ts, kind, detail FROM events WHERE device_id = $1 \
             AND ($2::BIGINT IS NULL OR id > $2) ORDER BY id ASC LIMIT $3";
        const BACKWARD: &str = "SELECT id, ts, kind, detail FROM events WHERE device_id = $1 \
             AND ($2::BIGINT IS NULL OR id < $2) ORDER BY id DESC LIMIT $3";
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
        if logs.is_empty() {
            return Ok(0);
        }
        let mut seq = Vec::with_capacity(logs.len());
        let mut ts = Vec::with_capacity(logs.len());
        let mut service = Vec::with_capacity(logs.len());
        let mut severity = Vec::with_capacity(logs.len());
        let mut rank = Vec::with_capacity(logs.len());
        let mut message = Vec::with_capacity(logs.len());
        for l in logs {
            seq.push(i(l.seq));
            ts.push(l.timestamp);
            service.push(l.service.as_str());
            severity.push(l.severity.as_str());
            rank.push(severity_rank(&l.severity));
            message.push(l.message.as_str());
        }
        // One statement for the batch. ON CONFLICT DO NOTHING also skips a
        // seq repeated within the batch, and waits for (then skips) a row
        // another replica is inserting: each line is counted once. Rows go
        // in seq order so two overlapping batches cannot deadlock.
        let res = sqlx::query(
            "INSERT INTO logs (device_id, seq, ts, received_at, service, severity, \
             severity_rank, message) \
             SELECT $1, seq, ts, $2, service, severity, severity_rank, message \
             FROM UNNEST($3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[], \
                         $8::TEXT[]) \
                  AS b(seq, ts, service, severity, severity_rank, message) \
             ORDER BY seq \
             ON CONFLICT (device_id, seq) DO NOTHING",
        )
        .bind(device_id)
        .bind(received_at)
        .bind(seq)
        .bind(ts)
        .bind(service)
        .bind(severity)
        .bind(rank)
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }

    async fn query_logs(&self, q: &LogQuery) -> StoreResult<Vec<LogRecord>> {
        if let Some(after) = q.after_seq {
            let rows = sqlx::query(
                "SELECT seq, ts, service, severity, message FROM logs WHERE device_id = $1 \
                 AND seq > $2 AND ($3::BIGINT IS NULL OR ts >= $3) AND ($4::BIGINT IS NULL OR ts < $4) \
                 AND ($5::TEXT IS NULL OR service = $5) \
                 AND ($6::BIGINT IS NULL OR severity_rank >= $6) \
                 AND ($8::BIGINT IS NULL OR seq <= $8) ORDER BY seq ASC LIMIT $7",
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
            "SELECT seq, ts, service, severity, message FROM logs WHERE device_id = $1 \
             AND ($2::BIGINT IS NULL OR ts >= $2) AND ($3::BIGINT IS NULL OR ts < $3) \
             AND ($4::TEXT IS NULL OR service = $4) \
             AND ($5::BIGINT IS NULL OR severity_rank >= $5) \
             AND ($6::BIGINT IS NULL OR ts < $6 OR (ts = $6 AND seq < $7)) \
             ORDER BY ts DESC, seq DESC LIMIT $8",
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
        // As on SQLite; AVG/SUM of BIGINT give NUMERIC here, hence the casts,
        // and the JSON arrays are taken apart with jsonb_array_elements.
        let rows = sqlx::query(
            "SELECT (ts / $4) * $4 AS bucket, COUNT(*) AS n, \
             AVG(cpu_percent) AS cpu_avg, MAX(cpu_percent) AS cpu_max, \
             AVG(memory_used_bytes)::DOUBLE PRECISION AS mem_avg, \
             MAX(memory_total_bytes) AS mem_total, \
             AVG(disk_used_bytes)::DOUBLE PRECISION AS disk_avg, \
             MAX(disk_total_bytes) AS disk_total, \
             MAX(network_rx_bytes) - MIN(network_rx_bytes) AS rx, \
             MAX(network_tx_bytes) - MIN(network_tx_bytes) AS tx, \
             AVG(load_1m) AS load_avg, \
             MAX((SELECT MAX((e->>'celsius')::DOUBLE PRECISION) \
                  FROM jsonb_array_elements(temperatures::jsonb) e)) AS temp_max, \
             AVG((SELECT AVG((e->>'utilization_percent')::DOUBLE PRECISION) \
                  FROM jsonb_array_elements(gpus::jsonb) e)) AS gpu_util, \
             AVG((SELECT SUM((e->>'memory_used_bytes')::NUMERIC) \
                  FROM jsonb_array_elements(gpus::jsonb) e))::DOUBLE PRECISION AS gpu_mem \
             FROM telemetry WHERE device_id = $1 AND ts >= $2 AND ts < $3 \
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

    async fn find_enrollment(&self, install_id_hash: &str) -> StoreResult<Option<Enrollment>> {
        let row = sqlx::query(
            "SELECT id, workspace, enabled, install_id_expires_at, install_key_sha256, \
             install_spent FROM devices WHERE install_id_hash = $1 AND deleted_at IS NULL",
        )
        .bind(install_id_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    async fn complete_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // The bind is one conditional UPDATE. Two replicas enrolling with
        // different keys: the second waits for the first's row lock, then
        // re-checks the WHERE clause against the committed binding and
        // fails (Conflict). The row lock is held to commit, so the rest of
        // the transaction (revoking the earlier certificate and key) sees
        // whatever an earlier enrollment with the same key committed.
        let bound = sqlx::query(
            "UPDATE devices SET install_key_sha256 = $1, current_cert_serial = $2, \
             cert_expires_at = $3 \
             WHERE id = $4 AND NOT install_spent \
             AND (install_key_sha256 IS NULL OR install_key_sha256 = $1)",
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
        insert_cert(&mut tx, &c.device_id, &c.cert, c.now).await?;
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
            "SELECT c.serial, c.device_id, c.revoked_at, c.superseded_at, d.workspace, \
             d.enabled, d.install_spent, d.deleted_at \
             FROM device_certs c JOIN devices d ON d.id = c.device_id WHERE c.serial = $1",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cert_from_row).transpose()
    }

    async fn rotate_cert(&self, c: &RotationCommit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // Serialize rotations of one device. Unlocked, two replicas rotating
        // at once would each mark only the certificates committed before
        // their UPDATE as superseded, leaving both new certificates current
        // (and each one's new key unrevoked by the other).
        lock_device(&mut tx, &c.device_id).await?;
        insert_cert(&mut tx, &c.device_id, &c.cert, c.now).await?;
        sqlx::query(
            "UPDATE device_certs SET superseded_at = COALESCE(superseded_at, $1) \
             WHERE device_id = $2 AND serial <> $3 AND revoked_at IS NULL",
        )
        .bind(c.now)
        .bind(&c.device_id)
        .bind(&c.cert.serial)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE devices SET current_cert_serial = $1, cert_expires_at = $2 WHERE id = $3",
        )
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
            "UPDATE device_certs SET revoked_at = $1 \
             WHERE device_id = $2 AND superseded_at IS NOT NULL AND revoked_at IS NULL",
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
        // The UPDATE takes the device row lock first, so this orders with
        // enrollments and rotations of the device as on SQLite.
        let res = sqlx::query(
            "UPDATE devices SET install_id_hash = $1, install_id_expires_at = $2, \
             install_key_sha256 = NULL, install_spent = FALSE, session_id = NULL \
             WHERE workspace = $3 AND id = $4 AND deleted_at IS NULL",
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
        // One statement: the row lock orders it against complete_enrollment,
        // whose conditional update then sees the install ID spent.
        sqlx::query("UPDATE devices SET install_spent = TRUE WHERE id = $1")
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
            "UPDATE devices SET session_id = $1, last_heartbeat = $2, facts = $3, \
             install_spent = TRUE WHERE id = $4 RETURNING workspace",
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
        sqlx::query("UPDATE devices SET last_heartbeat = $1 WHERE id = $2 AND session_id = $3")
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
        // Conditional on the session still being current: a stale close from
        // the replica that held the old session changes nothing.
        let ws: Option<String> = sqlx::query_scalar(
            "UPDATE devices SET session_id = NULL WHERE id = $1 AND session_id = $2 \
             RETURNING workspace",
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
        let rows: Vec<_> = samples.iter().map(|s| (device_id, s)).collect();
        self.insert_rows(&rows, received_at).await
    }

    async fn insert_telemetry_many(
        &self,
        batches: &[DeviceSamples],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        let rows: Vec<_> = batches
            .iter()
            .flat_map(|b| b.samples.iter().map(|s| (b.device_id.as_str(), s)))
            .collect();
        self.insert_rows(&rows, received_at).await
    }

    async fn last_telemetry_seq(&self, device_id: &str) -> StoreResult<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM telemetry WHERE device_id = $1")
                .bind(device_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    async fn last_log_seq(&self, device_id: &str) -> StoreResult<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM logs WHERE device_id = $1")
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
        // Read-then-write: lock the row so that two replicas handling
        // reports of the same totals do not both compute the same increase
        // from the same old totals and record it twice.
        let Some(row) = sqlx::query(
            "SELECT telemetry_dropped, logs_dropped, spool_corrupt, logs_rate_limited \
             FROM devices WHERE id = $1 FOR NO KEY UPDATE",
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
            "UPDATE devices SET telemetry_dropped = $1, logs_dropped = $2, spool_corrupt = $3, \
             logs_rate_limited = $4 WHERE id = $5",
        )
        .bind(i(t.telemetry_dropped))
        .bind(i(t.logs_dropped))
        .bind(i(t.corrupt))
        .bind(i(t.logs_rate_limited))
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
        // Per device, so each delete walks the (device_id, ts) index and
        // holds its locks briefly. Replicas pruning at once just find less
        // to delete.
        let devices: Vec<String> = sqlx::query_scalar("SELECT id FROM devices")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = PruneCounts::default();
        for d in &devices {
            counts.telemetry +=
                sqlx::query("DELETE FROM telemetry WHERE device_id = $1 AND ts < $2")
                    .bind(d)
                    .bind(cutoff.telemetry_before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            counts.logs += sqlx::query("DELETE FROM logs WHERE device_id = $1 AND ts < $2")
                .bind(d)
                .bind(cutoff.logs_before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        counts.events = sqlx::query("DELETE FROM events WHERE ts < $1")
            .bind(cutoff.events_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(counts)
    }

    async fn query_telemetry(&self, q: &TelemetryQuery) -> StoreResult<Vec<TelemetrySample>> {
        const FORWARD: &str = "SELECT * FROM telemetry WHERE device_id = $1 \
             AND ($2::BIGINT IS NULL OR ts >= $2) AND ($3::BIGINT IS NULL OR ts < $3) \
             AND ($4::BIGINT IS NULL OR seq > $4) \
             ORDER BY seq ASC LIMIT $5";
        const BACKWARD: &str = "SELECT * FROM telemetry WHERE device_id = $1 \
             AND ($2::BIGINT IS NULL OR ts >= $2) AND ($3::BIGINT IS NULL OR ts < $3) \
             AND ($4::BIGINT IS NULL OR seq < $4) \
             ORDER BY seq DESC LIMIT $5";
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
        const Q: &str = "SELECT t.* FROM unnest($1::TEXT[]) AS l(id) \
             CROSS JOIN LATERAL (SELECT * FROM telemetry WHERE device_id = l.id \
             ORDER BY seq DESC LIMIT 1) t";
        let rows = sqlx::query(Q)
            .bind(device_ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((sqlx::Row::try_get(r, "device_id")?, sample_from_row(r)?)))
            .collect()
    }
}

async fn insert_cert(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    cert: &NewCert,
    now: UnixMillis,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO device_certs (serial, device_id, not_before, not_after, issued_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&cert.serial)
    .bind(device_id)
    .bind(cert.not_before)
    .bind(cert.not_after)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn revoke_device_certs(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    now: UnixMillis,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE device_certs SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(device_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes the device's live API keys created before `before`.
async fn revoke_device_keys(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    now: UnixMillis,
    before: UnixMillis,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 \
         WHERE device_id = $2 AND revoked_at IS NULL AND created_at < $3",
    )
    .bind(now)
    .bind(device_id)
    .bind(before)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_api_key(tx: &mut Transaction<'_, Postgres>, k: &NewApiKey) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, workspace, key_hash, scopes, device_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
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

/// First key of the advisory locks that order each device's events
/// (`'outp'` as a big-endian i32); the second key is the device id's hash.
const EVENT_LOCK_CLASS: i32 = 0x6f75_7470;

/// Appends an event. Event ids come from an identity sequence, and with
/// several writers a sequence hands out ids in `nextval` order, not commit
/// order: a reader paging forward by id could see id 11 before id 10 commits
/// and then never see 10. So the id is drawn under a per-device transaction
/// advisory lock, held to commit: per device (the only scope events are read
/// in), ids become visible in increasing order, as on SQLite. Callers take
/// this lock last (after any row locks) so no cycle can form.
async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    device_id: &str,
    workspace: &str,
    ts: UnixMillis,
    kind: &str,
    detail: &serde_json::Value,
) -> StoreResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(EVENT_LOCK_CLASS)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO events (device_id, workspace, ts, kind, detail) VALUES ($1, $2, $3, $4, $5)",
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

    #[test]
    fn test_database_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:54329/postgres", "x"),
            "postgres://postgres@127.0.0.1:54329/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
        assert_eq!(
            with_database("postgresql://h?host=/tmp/pg", "x"),
            "postgresql://h/x?host=/tmp/pg"
        );
        assert!(is_test_database_name("outpost_test_0a1b"));
        assert!(!is_test_database_name("outpost_test_"));
        assert!(!is_test_database_name("outpost_test_x; DROP"));
        assert!(!is_test_database_name("postgres"));
    }
}
