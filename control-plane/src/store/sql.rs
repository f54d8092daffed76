//! The SQL backends' one implementation of [`Store`]. Every statement is
//! written once, with `$N` placeholders: PostgreSQL's own, and sqlx's SQLite
//! driver binds `$N` to the N-th argument too. What really differs between
//! SQLite and PostgreSQL sits behind [`Dialect`] (`sqlite.rs`,
//! `postgres.rs`), as vector keeps its disk buffer once behind a narrow
//! `Filesystem` trait.
//!
//! Concurrency. SQLite has one writer: every transaction here writes and
//! starts with `BEGIN IMMEDIATE`, so a transaction that reads and then
//! writes sees no other writer in between. With PostgreSQL several replicas
//! write at once, and each statement below is written so that it stays
//! correct there: either a single conditional `UPDATE` (PostgreSQL
//! row-locks the row and re-checks the `WHERE` clause against the newest
//! committed version, so two replicas cannot both succeed), or a read that
//! takes the dialect's row lock ([`Dialect::ROW_LOCK`]) before the write.
//!
//! Lock order, to stay free of deadlocks: the device row first, then its
//! certificates and keys, then (last) the device's event lock
//! ([`Dialect::lock_events`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::LazyLock;

use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Transaction, Type,
};

use super::common::*;
use super::rollup::{self, Agg, HOUR, Overlap, TIERS, Tier};
use super::*;

/// What differs between the SQL databases the store runs on, implemented by
/// sqlx's database types themselves. Everything else is [`SqlStore`].
pub trait Dialect: Database {
    /// Starts a transaction. Every transaction of the store writes.
    const BEGIN: &'static str;
    /// Appended to a read whose result decides a write in the same
    /// transaction, to lock the rows read until commit. `None` where one
    /// writer runs at a time and nothing needs locking — which also lets a
    /// group of enrollments share one transaction.
    const ROW_LOCK: Option<&'static str>;
    /// The statement behind [`Store::latest_telemetry`]: `SELECT t.*` of
    /// the newest telemetry row of each device id in the list bound by
    /// [`Dialect::bind_ids`] as `$1`.
    const LATEST_TELEMETRY: &'static str;
    /// A subquery of the ids in the list bound by [`Dialect::bind_ids`] as
    /// `$1`, one `id` column.
    const ID_LIST: &'static str;

    /// The statement texts built from this dialect ([`Texts::new`]), built
    /// once so sqlx's statement cache keeps their prepared forms.
    fn texts() -> &'static Texts;
    /// Rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
    /// Binds a list of ids as one parameter.
    fn bind_ids<'q>(
        q: sqlx::query::Query<'q, Self, Self::Arguments>,
        ids: &'q [String],
    ) -> sqlx::query::Query<'q, Self, Self::Arguments>;
    /// Taken in `tx` before an event of the device is appended.
    fn lock_events(
        tx: &mut Transaction<'static, Self>,
        device_id: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Stores (device, sample) rows in `tx`, ignoring any (device, seq)
    /// already stored (or repeated in `rows`: the first stays); returns how
    /// many were new.
    fn insert_telemetry(
        tx: &mut Transaction<'static, Self>,
        rows: &[(&str, &TelemetrySample)],
        received_at: UnixMillis,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Taken in `tx` before a device's rollup rows are read to be merged
    /// into, so two replicas storing samples of one device merge one after
    /// the other (devices in a stable order, so no cycle can form).
    fn lock_rollups(
        tx: &mut Transaction<'static, Self>,
        device_ids: &[&str],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// A subquery of one column `r`: the elements of the JSON array bound
    /// as `$1`.
    const JSON_ROWS: &'static str;
    /// Element `k` of the JSON array `r`, as a value of `ty`.
    fn json_field(k: usize, ty: SqlType) -> String;
    /// A subquery of the (device_id, bucket) pairs bound by
    /// [`Dialect::bind_keys`] from `$1`.
    const KEY_LIST: &'static str;
    /// Binds (device, bucket) pairs as [`Dialect::KEY_LIST`] reads them.
    fn bind_keys<'q>(
        q: sqlx::query::Query<'q, Self, Self::Arguments>,
        keys: &[(&str, i64)],
    ) -> sqlx::query::Query<'q, Self, Self::Arguments>;
    /// [`Store::insert_logs`].
    fn insert_logs(
        pool: &Pool<Self>,
        device_id: &str,
        logs: &[LogRecord],
        received_at: UnixMillis,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
}

/// Keys bound per statement that reads rows by (device, key) pairs.
const ROLLUP_KEY_CHUNK: usize = 500;

/// Raw history one backfill step rolls up: whole hours.
const BACKFILL_CHUNK_MS: i64 = 6 * 3_600_000;

/// Retention deletes, `$1` the device, `$2` the cut-off, `$3` the batch.
const PRUNE_RAW: &str = "DELETE FROM telemetry WHERE device_id = $1 AND seq IN \
     (SELECT seq FROM telemetry WHERE device_id = $1 AND ts < $2 LIMIT $3)";
const PRUNE_LOGS: &str = "DELETE FROM logs WHERE device_id = $1 AND seq IN \
     (SELECT seq FROM logs WHERE device_id = $1 AND ts < $2 LIMIT $3)";
static PRUNE_TIER: LazyLock<[String; 2]> = LazyLock::new(|| {
    TIERS.map(|t| {
        format!(
            "DELETE FROM {0} WHERE device_id = $1 AND bucket IN \
             (SELECT bucket FROM {0} WHERE device_id = $1 AND bucket < $2 LIMIT $3)",
            t.table
        )
    })
});
/// `$1` the cut-off, `$2` the batch.
const PRUNE_EVENTS: &str =
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < $1 LIMIT $2)";

/// Devices per `INSERT` of a rollout's devices.
const ROLLOUT_DEVICE_CHUNK: usize = 500;

/// A [`Store`] on a SQL database of dialect `D`.
pub struct SqlStore<D: Dialect> {
    pub(super) pool: Pool<D>,
    /// Where write transactions ([`SqlStore::begin`]) run: on SQLite a pool
    /// of one connection (see `sqlite.rs`), on PostgreSQL `pool` itself.
    pub(super) write_pool: Pool<D>,
    /// Work the backend runs beside its callers (SQLite's checkpointer),
    /// stopped when the store is dropped.
    pub(super) _background: Option<AbortOnDrop>,
}

/// A spawned task that ends when this is dropped.
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A live (not deleted) device of a workspace.
const DEVICE_LIVE: &str = device_select!("WHERE workspace = $1 AND id = $2 AND deleted_at IS NULL");

/// Statement texts that a dialect completes, built once per dialect.
pub struct Texts {
    /// [`DEVICE_LIVE`], locked.
    device_locked: String,
    /// A device's loss totals, locked.
    loss_locked: String,
    /// Locks a device's row, where rows are locked.
    lock_device: Option<String>,
    /// Per tier ([`TIERS`]): its rows of the (device, bucket) pairs bound
    /// by [`Dialect::bind_keys`].
    tier_keyed: [String; 2],
    /// Per tier: a device's rows in [`$2`, `$3`), in bucket order.
    tier_range: [String; 2],
    /// Per tier: the upsert of the rows bound as one JSON text `$1`
    /// ([`tier_upsert`]).
    tier_upsert: [String; 2],
    /// Per device of the id list `$1`, its highest stored telemetry seq.
    telemetry_tops: String,
    /// Which of the (device, seq) pairs bound by [`Dialect::bind_keys`]
    /// are stored.
    telemetry_stored: String,
    /// What runs on the devices of the id list `$1`.
    device_artifacts: String,
    /// An artifact's row, locked.
    artifact_locked: String,
}

impl Texts {
    pub(super) fn new<D: Dialect>() -> Self {
        let lock = D::ROW_LOCK.unwrap_or("");
        Texts {
            device_artifacts: format!(
                "SELECT device_id, name, version FROM device_artifacts \
                 WHERE device_id IN ({}) ORDER BY device_id, name",
                D::ID_LIST
            ),
            device_locked: format!("{DEVICE_LIVE}{lock}"),
            loss_locked: format!(
                "SELECT telemetry_dropped, logs_dropped, spool_corrupt, logs_rate_limited \
                 FROM devices WHERE id = $1{lock}"
            ),
            artifact_locked: format!(
                "SELECT * FROM artifacts WHERE workspace = $1 AND name = $2 AND version = $3{lock}"
            ),
            lock_device: D::ROW_LOCK.map(|l| format!("SELECT 1 FROM devices WHERE id = $1{l}")),
            tier_range: TIERS.map(|t| {
                format!(
                    "SELECT * FROM {} WHERE device_id = $1 AND bucket >= $2 AND bucket < $3 \
                     ORDER BY bucket",
                    t.table
                )
            }),
            telemetry_tops: format!(
                "SELECT k.id AS device_id, \
                 (SELECT MAX(seq) FROM telemetry t WHERE t.device_id = k.id) AS seq \
                 FROM ({}) AS k",
                D::ID_LIST
            ),
            telemetry_stored: format!(
                "SELECT k.device_id, k.bucket AS seq FROM ({}) AS k WHERE EXISTS \
                 (SELECT 1 FROM telemetry t WHERE t.device_id = k.device_id AND t.seq = k.bucket)",
                D::KEY_LIST
            ),
            tier_upsert: TIERS.map(|t| tier_upsert(t, D::JSON_ROWS, D::json_field)),
            tier_keyed: TIERS.map(|t| {
                format!(
                    "SELECT t.* FROM ({}) AS k CROSS JOIN {} AS t \
                     WHERE t.device_id = k.device_id AND t.bucket = k.bucket",
                    D::KEY_LIST,
                    t.table
                )
            }),
        }
    }
}

/// What a device status filter binds.
fn status_name(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Online => "online",
        DeviceStatus::Offline => "offline",
        DeviceStatus::Unknown => "unknown",
    }
}

impl<D> SqlStore<D>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    D::Arguments: IntoArguments<D>,
    for<'q> i64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<i64>: Encode<'q, D>,
    for<'q> bool: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<bool>: Encode<'q, D>,
    for<'q> f64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<f64>: Encode<'q, D>,
    for<'q> String: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<String>: Encode<'q, D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> Option<&'q str>: Encode<'q, D>,
    for<'q> &'q str: ColumnIndex<D::Row>,
    usize: ColumnIndex<D::Row>,
{
    /// Stores (device, sample) rows and merges the new ones into the rollup
    /// tiers, in one transaction. Returns how many were new.
    async fn store_samples(
        &self,
        rows: &[(&str, &TelemetrySample)],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut devices: Vec<&str> = rows.iter().map(|&(d, _)| d).collect();
        devices.sort_unstable();
        devices.dedup();
        let mut tx = self.begin().await?;
        D::lock_rollups(&mut tx, &devices).await?;
        // The rows that go in: each (device, seq) not stored yet, once, the
        // first of any repeats (the one the insert keeps). Found before the
        // insert rather than returned by it: rows handed back one by one
        // cost more than the insert (sqlx's SQLite worker sends each row
        // over a channel). The lock (one writer on SQLite) keeps it true
        // until the commit.
        let mut seen = Self::stored_keys(&mut tx, &devices, rows).await?;
        let new: Vec<(&str, &TelemetrySample)> = rows
            .iter()
            .filter(|&&(d, s)| seen.insert((d, i(s.seq))))
            .copied()
            .collect();
        let inserted = D::insert_telemetry(&mut tx, rows, received_at).await?;
        if inserted != new.len() as u64 {
            // Cannot happen under the lock; the tiers would be off.
            return Err(StoreError::Corrupt(format!(
                "telemetry insert stored {inserted} rows, {} expected",
                new.len()
            )));
        }
        Self::roll_up(&mut tx, &new).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Which of `rows`' (device, seq) are stored already. Per device, seqs
    /// above the highest stored one are new (an agent's seqs only grow);
    /// only the others (a resend) are looked up one by one.
    async fn stored_keys<'a>(
        tx: &mut Transaction<'static, D>,
        devices: &[&'a str],
        rows: &[(&'a str, &TelemetrySample)],
    ) -> StoreResult<HashSet<(&'a str, i64)>> {
        let ids: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        let tops = D::bind_ids(sqlx::query(D::texts().telemetry_tops.as_str()), &ids)
            .fetch_all(&mut **tx)
            .await?;
        let mut top: HashMap<String, i64> = HashMap::with_capacity(tops.len());
        for r in &tops {
            if let Some(seq) = r.opt_int("seq")? {
                top.insert(r.text("device_id")?, seq);
            }
        }
        let doubtful: Vec<(&str, i64)> = rows
            .iter()
            .map(|&(d, s)| (d, i(s.seq)))
            .filter(|(d, seq)| top.get(*d).is_some_and(|t| seq <= t))
            .collect();
        let mut stored = HashSet::new();
        for chunk in doubtful.chunks(ROLLUP_KEY_CHUNK) {
            let found = D::bind_keys(sqlx::query(D::texts().telemetry_stored.as_str()), chunk)
                .fetch_all(&mut **tx)
                .await?;
            let found: HashSet<(String, i64)> = found
                .iter()
                .map(|r| Ok((r.text("device_id")?, r.int("seq")?)))
                .collect::<StoreResult<_>>()?;
            stored.extend(
                chunk
                    .iter()
                    .filter(|&&(d, seq)| found.contains(&(d.to_string(), seq))),
            );
        }
        Ok(stored)
    }

    /// Merges newly stored samples into every tier, finest first (an hour
    /// row recomputed reads the minute rows written just before). A row the
    /// new samples interleave with is recomputed from its source.
    async fn roll_up(
        tx: &mut Transaction<'static, D>,
        new: &[(&str, &TelemetrySample)],
    ) -> StoreResult<()> {
        for (k, tier) in TIERS.iter().enumerate() {
            let parts = rollup::partials(*tier, new.iter().copied());
            let mut stored: HashMap<(String, i64), Agg> = HashMap::with_capacity(parts.len());
            let keys: Vec<(&str, i64)> = parts.iter().map(|(key, _)| *key).collect();
            for chunk in keys.chunks(ROLLUP_KEY_CHUNK) {
                let rows = D::bind_keys(sqlx::query(D::texts().tier_keyed[k].as_str()), chunk)
                    .fetch_all(&mut **tx)
                    .await?;
                for r in &rows {
                    let (bucket, agg) = tier_row(r)?;
                    stored.insert((r.text("device_id")?, bucket), agg);
                }
            }
            let mut out = Vec::with_capacity(parts.len());
            for ((device, bucket), part) in parts {
                let merged = match stored.remove(&(device.to_string(), bucket)) {
                    None => Some(part),
                    Some(old) => match old.clone().merge(&part) {
                        Ok(m) => Some(m),
                        Err(Overlap) => {
                            rollup::count_recomputed(*tier);
                            // The new samples are in raw already, so a whole
                            // source gives at least both counts; less means
                            // retention deleted part of it.
                            let whole = old.n + part.n;
                            match Self::recompute(tx, *tier, device, bucket).await? {
                                Some(a) if a.n >= whole => Some(a),
                                _ => {
                                    let mut a = old;
                                    a.absorb(&part);
                                    Some(a)
                                }
                            }
                        }
                    },
                };
                out.extend(merged.map(|a| (device, bucket, a)));
            }
            Self::upsert_tier(tx, *tier, &out).await?;
        }
        Ok(())
    }

    /// A tier row computed again from what it summarises: the raw samples
    /// of its bucket for the finest tier, else the finer tier's rows.
    async fn recompute(
        tx: &mut Transaction<'static, D>,
        tier: Tier,
        device_id: &str,
        bucket: UnixMillis,
    ) -> StoreResult<Option<Agg>> {
        let end = bucket + tier.width_ms;
        Ok(match tier.finer() {
            None => {
                let samples = Self::raw_between(&mut **tx, device_id, bucket, end).await?;
                Agg::of_samples(&samples)
            }
            Some(finer) => {
                let rows = Self::tier_between(&mut **tx, finer, device_id, bucket, end).await?;
                Agg::fold(rows.into_iter().map(|(_, a)| a))
            }
        })
    }

    /// Runs a retention delete (see [`PRUNE_RAW`]) batch after batch until
    /// a batch comes back short; returns the rows deleted.
    async fn delete_batched(
        &self,
        sql: &str,
        device: Option<&str>,
        before: UnixMillis,
        stats: &mut PruneCounts,
    ) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            if let Some(d) = device {
                q = q.bind(d);
            }
            let started = std::time::Instant::now();
            let res = q
                .bind(before)
                .bind(PRUNE_BATCH)
                .execute(&self.write_pool)
                .await?;
            let n = D::rows_affected(&res);
            if n > 0 {
                stats.batches += 1;
                stats.longest_batch = stats.longest_batch.max(started.elapsed());
            }
            total += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// A device's raw samples with timestamps in [start, end).
    async fn raw_between(
        conn: &mut D::Connection,
        device_id: &str,
        start: UnixMillis,
        end: UnixMillis,
    ) -> StoreResult<Vec<TelemetrySample>> {
        let rows =
            sqlx::query("SELECT * FROM telemetry WHERE device_id = $1 AND ts >= $2 AND ts < $3")
                .bind(device_id)
                .bind(start)
                .bind(end)
                .fetch_all(&mut *conn)
                .await?;
        rows.iter().map(sample_from_row).collect()
    }

    /// A device's rows of `tier` with buckets in [start, end), in order.
    async fn tier_between(
        conn: &mut D::Connection,
        tier: Tier,
        device_id: &str,
        start: UnixMillis,
        end: UnixMillis,
    ) -> StoreResult<Vec<(UnixMillis, Agg)>> {
        let rows = sqlx::query(D::texts().tier_range[tier.index()].as_str())
            .bind(device_id)
            .bind(start)
            .bind(end)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(tier_row).collect()
    }

    /// Writes tier rows (replacing any stored), as few statements as
    /// [`TIER_UPSERT_SIZES`] allow.
    async fn upsert_tier(
        tx: &mut Transaction<'static, D>,
        tier: Tier,
        rows: &[(&str, UnixMillis, Agg)],
    ) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(D::texts().tier_upsert[tier.index()].as_str())
            .bind(tier_rows_json(rows))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A device's config: a given version, or the current one.
    async fn config_on(
        conn: &mut D::Connection,
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
        .fetch_optional(&mut *conn)
        .await?;
        row.as_ref().map(config_from_row).transpose()
    }

    /// The highest seq a `SELECT MAX(seq) … WHERE device_id = $1` finds
    /// (`LAST_TELEMETRY_SEQ`, `LAST_LOG_SEQ`; 0: none).
    async fn last_seq_on(
        conn: &mut D::Connection,
        sql: &'static str,
        device_id: &str,
    ) -> StoreResult<u64> {
        let seq: Option<i64> = sqlx::query_scalar(sql)
            .bind(device_id)
            .fetch_one(&mut *conn)
            .await?;
        Ok(stored_u64(seq))
    }

    /// The desired state of a device (see `Store::desired_artifacts`).
    async fn desired_on(
        conn: &mut D::Connection,
        device_id: &str,
    ) -> StoreResult<Vec<DesiredArtifact>> {
        // Released to the device: its wave started and the rollout is not
        // aborted, or the device started on it already (an abort does not
        // take back what a device has). Per name, the newest such rollout
        // decides, whether or not its artifact is still stored: the
        // artifacts are LEFT JOINed so that deleting the newest released
        // version leaves the name out (the device keeps what it has) rather
        // than making an older rollout's version desired, which would
        // downgrade every reconnecting device with no waves and no health
        // gate (docs/artifacts.md). Likewise when the key that signed it is
        // no longer one of the workspace's publisher keys: a removed key
        // stops delivery.
        let rows = sqlx::query(
            "SELECT r.id, r.artifact_name, r.artifact_version, a.manifest_json, \
             k.public_key, a.signature FROM rollout_devices d \
             JOIN rollouts r ON r.id = d.rollout_id \
             LEFT JOIN artifacts a ON a.workspace = r.workspace AND a.name = r.artifact_name \
                  AND a.version = r.artifact_version \
             LEFT JOIN publisher_keys k ON k.workspace = r.workspace \
                  AND k.public_key = a.public_key \
             WHERE d.device_id = $1 \
             AND ((d.wave <= r.current_wave AND r.state <> 'aborted') OR d.state <> 'pending') \
             ORDER BY r.created_at DESC, r.id DESC",
        )
        .bind(device_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut seen: Vec<String> = Vec::new();
        let mut out: Vec<DesiredArtifact> = Vec::new();
        for r in &rows {
            let name = r.text("artifact_name")?;
            if seen.contains(&name) {
                continue;
            }
            seen.push(name.clone());
            let (Some(manifest_json), Some(public_key), Some(signature)) = (
                r.opt_text("manifest_json")?,
                r.opt_text("public_key")?,
                r.opt_text("signature")?,
            ) else {
                // The newest release of this name was deleted, or its key
                // is no longer trusted.
                continue;
            };
            out.push(DesiredArtifact {
                name,
                version: r.text("artifact_version")?,
                manifest_json,
                public_key,
                signature,
                rollout_id: r.text("id")?,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn begin(&self) -> Result<Transaction<'static, D>, sqlx::Error> {
        self.write_pool.begin_with(D::BEGIN).await
    }

    /// An artifact's row, locked (where rows are locked) until `tx` ends.
    async fn artifact_locked(
        tx: &mut Transaction<'static, D>,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<Option<ArtifactRecord>> {
        let row = sqlx::query(D::texts().artifact_locked.as_str())
            .bind(workspace)
            .bind(name)
            .bind(version)
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(artifact_from_row).transpose()
    }

    /// The state of an artifact, its row locked as [`Self::artifact_locked`].
    async fn artifact_state_locked(
        tx: &mut Transaction<'static, D>,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<Option<String>> {
        Ok(Self::artifact_locked(tx, workspace, name, version)
            .await?
            .map(|a| a.state))
    }

    async fn delete_chunks_in(
        tx: &mut Transaction<'static, D>,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM artifact_chunks WHERE workspace = $1 AND name = $2 AND version = $3",
        )
        .bind(workspace)
        .bind(name)
        .bind(version)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Takes the device's row lock for the rest of the transaction, where
    /// rows are locked. Nothing happens when there is no such device.
    async fn lock_device(tx: &mut Transaction<'static, D>, device_id: &str) -> StoreResult<()> {
        if let Some(sql) = &D::texts().lock_device {
            sqlx::query(sql.as_str())
                .bind(device_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Forgets which box keys enrolled `device` with a token: once the
    /// device's install ID is replaced (a new one, or a forced reset), a
    /// token retry with an old key must not re-enroll it (it would undo the
    /// reset and bind the device to the old key).
    async fn unbind_token_keys(tx: &mut Transaction<'static, D>, device: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM enrollment_token_bindings WHERE device_id = $1")
            .bind(device)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// An enrollment's writes inside `tx`: `Conflict` (and nothing written)
    /// if the install ID was spent or bound to another key meanwhile.
    async fn enroll_in(tx: &mut Transaction<'static, D>, c: &EnrollmentCommit) -> StoreResult<()> {
        if let Some(t) = &c.token
            && let Some(device) = &t.create
        {
            Self::spend_token_in(tx, &t.token_id, &c.key_sha256, device, c.now).await?;
        }
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
        .execute(&mut **tx)
        .await?;
        if D::rows_affected(&bound) != 1 {
            return Err(StoreError::Conflict(
                "install ID was used or bound to another key meanwhile".into(),
            ));
        }
        // A retried enrollment (lost response) supersedes the earlier,
        // never-used certificate.
        Self::revoke_device_certs(tx, &c.device_id, c.now).await?;
        Self::insert_cert(tx, &c.device_id, &c.cert, c.now).await?;
        Self::revoke_device_keys(tx, &c.device_id, c.now, i64::MAX).await?;
        let k = &c.device_api_key;
        Self::api_key_insert(k).execute(&mut **tx).await?;
        Self::insert_event(
            tx,
            &c.device_id,
            &k.workspace,
            c.now,
            "enrolled",
            &match &c.token {
                Some(t) => serde_json::json!({ "token_id": t.token_id }),
                None => serde_json::json!({}),
            },
        )
        .await
    }

    /// A token enrollment's first use inside `tx`: `Conflict`, with nothing
    /// written, when this key was bound meanwhile or the token has no use
    /// left (exhausted, expired, revoked); else one use is spent, the device
    /// created and (token, key) bound to it.
    async fn spend_token_in(
        tx: &mut Transaction<'static, D>,
        token_id: &str,
        key_sha256: &str,
        device: &NewDevice,
        now: UnixMillis,
    ) -> StoreResult<()> {
        // SQLite (one writer, maybe a group in one transaction) sees every
        // earlier binding here; on PostgreSQL a concurrent attempt with the
        // same key fails on the binding's primary key below instead.
        let bound: Option<String> = sqlx::query_scalar(
            "SELECT device_id FROM enrollment_token_bindings \
             WHERE token_id = $1 AND key_sha256 = $2",
        )
        .bind(token_id)
        .bind(key_sha256)
        .fetch_optional(&mut **tx)
        .await?;
        if bound.is_some() {
            return Err(StoreError::Conflict(
                "this key was bound to a device by a concurrent attempt".into(),
            ));
        }
        // The budget: one conditional UPDATE. PostgreSQL row-locks the token
        // and re-checks the WHERE clause against the newest committed
        // version, so concurrent uses (any replica) queue on the row and
        // exactly max_uses of them succeed; SQLite has one writer.
        let spent = sqlx::query(
            "UPDATE enrollment_tokens SET uses = uses + 1 \
             WHERE id = $1 AND uses < max_uses AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(token_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        if D::rows_affected(&spent) != 1 {
            return Err(StoreError::Conflict(
                "the enrollment token has no use left".into(),
            ));
        }
        Self::insert_device_in(tx, device).await?;
        let bind = sqlx::query(
            "INSERT INTO enrollment_token_bindings (token_id, key_sha256, device_id, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_id)
        .bind(key_sha256)
        .bind(&device.id)
        .bind(now)
        .execute(&mut **tx)
        .await;
        match bind {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(
                "this key was bound to a device by a concurrent attempt".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Inserts a device, its config version 1, its labels and its
    /// `created` event.
    async fn insert_device_in(tx: &mut Transaction<'static, D>, d: &NewDevice) -> StoreResult<()> {
        // A token-made device has no install ID: NULL hash and expiry.
        let (hash, expires) = if d.install_id_hash.is_empty() {
            (None, None)
        } else {
            (
                Some(d.install_id_hash.as_str()),
                Some(d.install_id_expires_at),
            )
        };
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
        .bind(hash)
        .bind(expires)
        .bind(&d.workflow_id)
        .bind(d.offline_mode)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO device_configs (device_id, version, config, created_at) \
             VALUES ($1, 1, $2, $3)",
        )
        .bind(&d.id)
        .bind(to_json(&d.config))
        .bind(d.created_at)
        .execute(&mut **tx)
        .await?;
        Self::set_labels_in(tx, &d.id, &d.labels).await?;
        let created = serde_json::json!({});
        Self::insert_event(tx, &d.id, &d.workspace, d.created_at, "created", &created).await
    }

    /// Replaces a device's labels: the JSON column and the rows filters use.
    async fn set_labels_in(
        tx: &mut Transaction<'static, D>,
        device_id: &str,
        labels: &crate::labels::Labels,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET labels = $1 WHERE id = $2")
            .bind(to_json(labels))
            .bind(device_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM device_labels WHERE device_id = $1")
            .bind(device_id)
            .execute(&mut **tx)
            .await?;
        for (k, v) in labels {
            sqlx::query("INSERT INTO device_labels (device_id, key, value) VALUES ($1, $2, $3)")
                .bind(device_id)
                .bind(k)
                .bind(v)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn insert_cert(
        tx: &mut Transaction<'static, D>,
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
        tx: &mut Transaction<'static, D>,
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
        tx: &mut Transaction<'static, D>,
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

    /// The insert of a new API key, bound.
    fn api_key_insert(k: &NewApiKey) -> sqlx::query::Query<'static, D, D::Arguments> {
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
    }

    /// Appends an event, under the dialect's event lock.
    /// A rollout row with its devices.
    async fn rollout_with_devices(&self, row: &D::Row) -> StoreResult<Rollout> {
        let mut r = rollout_from_row(row)?;
        let rows = sqlx::query(
            "SELECT rd.device_id, COALESCE(d.name, '') AS name, rd.wave, rd.state, rd.error, \
             rd.updated_at FROM rollout_devices rd LEFT JOIN devices d ON d.id = rd.device_id \
             WHERE rd.rollout_id = $1 ORDER BY rd.wave, rd.device_id",
        )
        .bind(&r.id)
        .fetch_all(&self.pool)
        .await?;
        r.devices = rows
            .iter()
            .map(rollout_device_from_row)
            .collect::<StoreResult<_>>()?;
        Ok(r)
    }

    async fn upsert_device_artifact(
        tx: &mut Transaction<'static, D>,
        device_id: &str,
        name: &str,
        version: &str,
        now: UnixMillis,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO device_artifacts (device_id, name, version, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (device_id, name) \
             DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(device_id)
        .bind(name)
        .bind(version)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// [`Self::session_opened_in`] in a transaction of its own.
    async fn session_opened_alone(&self, o: &SessionOpen) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        Self::session_opened_in(&mut tx, o).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Opens one session in `tx` (see [`Store::sessions_opened`]). Lock
    /// order: the device row, its certificates, its artifacts, its events.
    /// `NotFound` (nothing written) when the device is gone.
    async fn session_opened_in(
        tx: &mut Transaction<'static, D>,
        o: &SessionOpen,
    ) -> StoreResult<()> {
        let ws: Option<String> = sqlx::query_scalar(
            "UPDATE devices SET session_id = $1, last_heartbeat = $2, facts = $3, \
             install_spent = TRUE WHERE id = $4 RETURNING workspace",
        )
        .bind(&o.session_id)
        .bind(o.now)
        .bind(to_json(&o.facts))
        .bind(&o.device_id)
        .fetch_optional(&mut **tx)
        .await?;
        let ws = ws.ok_or(StoreError::NotFound)?;
        if o.retire_superseded {
            Self::retire_superseded_in(tx, &o.device_id, o.now).await?;
        }
        if let Some(installed) = &o.installed {
            Self::replace_device_artifacts_in(tx, &o.device_id, installed, o.now).await?;
        }
        let detail = serde_json::json!({});
        Self::insert_event(tx, &o.device_id, &ws, o.now, "connected", &detail).await
    }

    async fn retire_superseded_in(
        tx: &mut Transaction<'static, D>,
        device_id: &str,
        now: UnixMillis,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE device_certs SET revoked_at = $1 \
             WHERE device_id = $2 AND superseded_at IS NOT NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Replaces the device's artifact list (its row lock taken already).
    async fn replace_device_artifacts_in(
        tx: &mut Transaction<'static, D>,
        device_id: &str,
        installed: &[(String, String)],
        now: UnixMillis,
    ) -> StoreResult<()> {
        sqlx::query("DELETE FROM device_artifacts WHERE device_id = $1")
            .bind(device_id)
            .execute(&mut **tx)
            .await?;
        for (name, version) in installed {
            Self::upsert_device_artifact(tx, device_id, name, version, now).await?;
        }
        Ok(())
    }

    /// [`Self::session_closed_in`] in a transaction of its own.
    async fn session_closed_alone(&self, e: &SessionEnd, now: UnixMillis) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        Self::session_closed_in(&mut tx, e, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends one session in `tx` if it is still the device's current one
    /// (a stale close from the replica that held an old session changes
    /// nothing), with its last heartbeat and a `disconnected` event.
    async fn session_closed_in(
        tx: &mut Transaction<'static, D>,
        e: &SessionEnd,
        now: UnixMillis,
    ) -> StoreResult<()> {
        // CASE, not MAX: SQLite's MAX(NULL, x) is NULL.
        let ws: Option<String> = sqlx::query_scalar(
            "UPDATE devices SET session_id = NULL, last_heartbeat = CASE \
             WHEN $3 IS NOT NULL AND (last_heartbeat IS NULL OR last_heartbeat < $3) THEN $3 \
             ELSE last_heartbeat END \
             WHERE id = $1 AND session_id = $2 RETURNING workspace",
        )
        .bind(&e.device_id)
        .bind(&e.session_id)
        .bind(e.last_heartbeat)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(ws) = ws {
            let detail = serde_json::json!({});
            Self::insert_event(tx, &e.device_id, &ws, now, "disconnected", &detail).await?;
        }
        Ok(())
    }

    async fn insert_event(
        tx: &mut Transaction<'static, D>,
        device_id: &str,
        workspace: &str,
        ts: UnixMillis,
        kind: &str,
        detail: &serde_json::Value,
    ) -> StoreResult<()> {
        D::lock_events(tx, device_id).await?;
        sqlx::query(
            "INSERT INTO events (device_id, workspace, ts, kind, detail) \
             VALUES ($1, $2, $3, $4, $5)",
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
}

/// A stored seq or version back as `u64` (0: none).
fn stored_u64(v: Option<i64>) -> u64 {
    v.unwrap_or(0).max(0) as u64
}

#[async_trait::async_trait]
impl<D> Store for SqlStore<D>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    D::Arguments: IntoArguments<D>,
    for<'q> i64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<i64>: Encode<'q, D>,
    for<'q> bool: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<bool>: Encode<'q, D>,
    for<'q> f64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<f64>: Encode<'q, D>,
    for<'q> String: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<String>: Encode<'q, D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> Option<&'q str>: Encode<'q, D>,
    for<'q> &'q str: ColumnIndex<D::Row>,
    usize: ColumnIndex<D::Row>,
    for<'q> Vec<u8>: Decode<'q, D> + Type<D>,
    for<'q> &'q [u8]: Encode<'q, D> + Type<D>,
{
    async fn create_workspace(&self, ws: &Workspace) -> StoreResult<()> {
        let res =
            sqlx::query("INSERT INTO workspaces (name, features, created_at) VALUES ($1, $2, $3)")
                .bind(&ws.name)
                .bind(to_json(&ws.features))
                .bind(ws.created_at)
                .execute(&self.write_pool)
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

    async fn ca_fingerprint(&self) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT fingerprint FROM ca_meta WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|r| r.text("fingerprint")).transpose()
    }

    async fn record_ca_fingerprint(
        &self,
        fingerprint: &str,
        now: UnixMillis,
    ) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO ca_meta (id, fingerprint, recorded_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(fingerprint)
        .bind(now)
        .execute(&self.write_pool)
        .await?;
        let row = sqlx::query("SELECT fingerprint FROM ca_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        row.text("fingerprint")
    }

    async fn list_workspaces(&self) -> StoreResult<Vec<Workspace>> {
        // On PostgreSQL `name` has the "C" collation: byte order, as on SQLite.
        let rows = sqlx::query("SELECT name, features, created_at FROM workspaces ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(workspace_from_row).collect()
    }

    async fn set_workspace_features(&self, name: &str, features: &[String]) -> StoreResult<bool> {
        let res = sqlx::query("UPDATE workspaces SET features = $1 WHERE name = $2")
            .bind(to_json(&features))
            .bind(name)
            .execute(&self.write_pool)
            .await?;
        Ok(D::rows_affected(&res) == 1)
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
                .execute(&self.write_pool)
                .await?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()> {
        Self::api_key_insert(key).execute(&self.write_pool).await?;
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
        let mut tx = self.begin().await?;
        Self::insert_device_in(&mut tx, d).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_device(&self, workspace: &str, id: &str) -> StoreResult<Option<Device>> {
        let row = sqlx::query(DEVICE_LIVE)
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
        // On PostgreSQL `id` has the "C" collation: ids order as bytes, as
        // on SQLite.
        const Q: &str = device_select!(
            "WHERE workspace = $1 AND deleted_at IS NULL \
             AND ($2 IS NULL OR created_at > $2 OR (created_at = $2 AND id > $3)) \
             AND ($5 IS NULL \
                  OR ($5 = 'online' AND session_id IS NOT NULL AND last_heartbeat > $6) \
                  OR ($5 = 'offline' AND last_heartbeat IS NOT NULL \
                      AND NOT (session_id IS NOT NULL AND last_heartbeat > $6)) \
                  OR ($5 = 'unknown' AND last_heartbeat IS NULL)) \
             AND ($7 IS NULL OR device_type = $7) \
             AND ($8 IS NULL OR name = $8)"
        );
        // One EXISTS per label selector, its key (and value) bound from $9.
        let mut sql = String::from(Q);
        let mut n = 9;
        for sel in &q.labels {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM device_labels l \
                 WHERE l.device_id = devices.id AND l.key = ${n}"
            ));
            n += 1;
            if sel.value.is_some() {
                sql.push_str(&format!(" AND l.value = ${n}"));
                n += 1;
            }
            sql.push(')');
        }
        sql.push_str(" ORDER BY created_at, id LIMIT $4");
        let (after_ts, after_id) = match &q.after {
            Some((ts, id)) => (Some(*ts), Some(id.as_str())),
            None => (None, None),
        };
        // Only constant text and placeholder numbers went into `sql`; every
        // key and value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&q.workspace)
            .bind(after_ts)
            .bind(after_id)
            .bind(q.limit as i64)
            .bind(q.status.map(status_name))
            .bind(q.now - ONLINE_WINDOW_MS)
            .bind(&q.device_type)
            .bind(&q.name);
        for sel in &q.labels {
            query = query.bind(&sel.key);
            if let Some(v) = &sel.value {
                query = query.bind(v);
            }
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn update_device(
        &self,
        workspace: &str,
        id: &str,
        patch: &DevicePatch,
        now: UnixMillis,
    ) -> StoreResult<Option<Device>> {
        let mut tx = self.begin().await?;
        // Read-then-write: the "before" state decides which events are
        // recorded, so it is read locked. Without the lock two replicas
        // disabling the same device would both record "disabled".
        let Some(before) = sqlx::query(D::texts().device_locked.as_str())
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
        let mut labels_after = None;
        if let Some(merge) = &patch.labels {
            let labels = crate::labels::merge(&before.labels, merge)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            Self::set_labels_in(&mut tx, id, &labels).await?;
            labels_after = Some(labels);
        }
        for (kind, detail) in patch_events(&before, patch, labels_after.as_ref()) {
            Self::insert_event(&mut tx, id, workspace, now, kind, &detail).await?;
        }
        let after = sqlx::query(DEVICE_LIVE)
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
        if D::rows_affected(&res) != 1 {
            return Ok(false);
        }
        Self::revoke_device_certs(&mut tx, id, now).await?;
        Self::revoke_device_keys(&mut tx, id, now, i64::MAX).await?;
        let detail = serde_json::json!({});
        Self::insert_event(&mut tx, id, workspace, now, "decommissioned", &detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn replace_device_key(&self, key: &NewApiKey, now: UnixMillis) -> StoreResult<()> {
        let device_id = key
            .device_id
            .as_deref()
            .ok_or_else(|| StoreError::Conflict("a device key needs a device".into()))?;
        let mut tx = self.begin().await?;
        // Serialize with other key replacements of the device: otherwise two
        // replicas could each revoke the old key but not the other's new one
        // (not yet committed when their UPDATE ran), leaving two live keys.
        // A missing device is not an error here.
        Self::lock_device(&mut tx, device_id).await?;
        Self::revoke_device_keys(&mut tx, device_id, now, i64::MAX).await?;
        Self::api_key_insert(key).execute(&mut *tx).await?;
        let detail = serde_json::json!({});
        Self::insert_event(&mut tx, device_id, &key.workspace, now, "reset", &detail).await?;
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
        if D::rows_affected(&res) != 1 {
            return Ok(false);
        }
        Self::unbind_token_keys(&mut tx, id).await?;
        let detail = serde_json::json!({});
        Self::insert_event(&mut tx, id, workspace, now, "install_id_issued", &detail).await?;
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
        let detail = serde_json::json!({"version": version});
        Self::insert_event(&mut tx, id, workspace, now, "config_changed", &detail).await?;
        tx.commit().await?;
        Ok(Some(ConfigVersion {
            version: stored_u64(Some(version)),
            config: config.clone(),
            created_at: now,
        }))
    }

    async fn get_config(
        &self,
        device_id: &str,
        version: Option<u64>,
    ) -> StoreResult<Option<ConfigVersion>> {
        let mut conn = self.pool.acquire().await?;
        Self::config_on(&mut conn, device_id, version).await
    }

    async fn list_configs(
        &self,
        device_id: &str,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<ConfigVersion>> {
        let rows = sqlx::query(
            "SELECT version, config, created_at FROM device_configs \
             WHERE device_id = $1 AND ($2 IS NULL OR version < $2) \
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
        let mut tx = self.begin().await?;
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
            let detail = serde_json::json!({"version": version});
            Self::insert_event(&mut tx, device_id, &ws, now, "config_applied", &detail).await?;
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
        Self::insert_event(&mut tx, device_id, workspace, now, kind, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_events(&self, q: &EventQuery) -> StoreResult<Vec<Event>> {
        const FORWARD: &str = "SELECT id, ts, kind, detail FROM events WHERE device_id = $1 \
             AND ($2 IS NULL OR id > $2) ORDER BY id ASC LIMIT $3";
        const BACKWARD: &str = "SELECT id, ts, kind, detail FROM events WHERE device_id = $1 \
             AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3";
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
        D::insert_logs(&self.write_pool, device_id, logs, received_at).await
    }

    async fn query_logs(&self, q: &LogQuery) -> StoreResult<Vec<LogRecord>> {
        if let Some(after) = q.after_seq {
            let rows = sqlx::query(
                "SELECT seq, ts, service, severity, message FROM logs WHERE device_id = $1 \
                 AND seq > $2 AND ($3 IS NULL OR ts >= $3) AND ($4 IS NULL OR ts < $4) \
                 AND ($5 IS NULL OR service = $5) AND ($6 IS NULL OR severity_rank >= $6) \
                 AND ($8 IS NULL OR seq <= $8) ORDER BY seq ASC LIMIT $7",
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
             AND ($2 IS NULL OR ts >= $2) AND ($3 IS NULL OR ts < $3) \
             AND ($4 IS NULL OR service = $4) AND ($5 IS NULL OR severity_rank >= $5) \
             AND ($6 IS NULL OR ts < $6 OR (ts = $6 AND seq < $7)) \
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
        if bucket_ms <= 0 {
            return Ok(Vec::new()); // no period has such buckets
        }
        let mut conn = self.pool.acquire().await?;
        let rows = match Tier::for_bucket(bucket_ms) {
            Some(tier) => Self::tier_between(&mut conn, tier, device_id, start, end).await?,
            // Finer than every tier (no API period asks for it): from raw.
            None => {
                let mut samples = Self::raw_between(&mut conn, device_id, start, end).await?;
                samples.sort_by_key(|s| (s.timestamp, s.seq));
                samples.iter().map(|s| (s.timestamp, Agg::of(s))).collect()
            }
        };
        Ok(rollup::buckets(rows, bucket_ms))
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

    async fn create_enrollment_token(&self, t: &NewEnrollmentToken) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, workspace, token_hash, name, max_uses, \
             expires_at, labels, device_type, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&t.id)
        .bind(&t.workspace)
        .bind(&t.token_hash)
        .bind(&t.name)
        .bind(i(t.max_uses))
        .bind(t.expires_at)
        .bind(to_json(&t.labels))
        .bind(&t.device_type)
        .bind(t.created_at)
        .execute(&self.write_pool)
        .await?;
        Ok(())
    }

    async fn list_enrollment_tokens(&self, workspace: &str) -> StoreResult<Vec<EnrollmentToken>> {
        let rows = sqlx::query(
            "SELECT * FROM enrollment_tokens WHERE workspace = $1 \
             ORDER BY created_at DESC, id",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(enrollment_token_from_row).collect()
    }

    async fn revoke_enrollment_token(
        &self,
        workspace: &str,
        id: &str,
        now: UnixMillis,
    ) -> StoreResult<Option<EnrollmentToken>> {
        // Conditional: a second revocation keeps the first's time. A use
        // racing the revocation is ordered by the token's row lock.
        sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = $1 \
             WHERE workspace = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(workspace)
        .bind(id)
        .execute(&self.write_pool)
        .await?;
        let row = sqlx::query("SELECT * FROM enrollment_tokens WHERE workspace = $1 AND id = $2")
            .bind(workspace)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(enrollment_token_from_row).transpose()
    }

    async fn find_enrollment_token(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<EnrollmentToken>> {
        let row = sqlx::query("SELECT * FROM enrollment_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(enrollment_token_from_row).transpose()
    }

    async fn token_binding(&self, token_id: &str, key_sha256: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT device_id FROM enrollment_token_bindings \
             WHERE token_id = $1 AND key_sha256 = $2",
        )
        .bind(token_id)
        .bind(key_sha256)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn complete_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        Self::enroll_in(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn complete_enrollments(
        &self,
        commits: &[EnrollmentCommit],
    ) -> StoreResult<Vec<StoreResult<()>>> {
        if D::ROW_LOCK.is_some() {
            return complete_enrollments_side_by_side(self, commits).await;
        }
        // One writer: one transaction, one fsync for the group. A conflict
        // leaves its enrollment unwritten (its guarded UPDATE changed
        // nothing) and the others go on; any other error rolls the whole
        // group back.
        let mut tx = self.begin().await?;
        let mut each = Vec::with_capacity(commits.len());
        for c in commits {
            match Self::enroll_in(&mut tx, c).await {
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
        let mut tx = self.begin().await?;
        // Serialize rotations of one device. Unlocked, two replicas rotating
        // at once would each mark only the certificates committed before
        // their UPDATE as superseded, leaving both new certificates current
        // (and each one's new key unrevoked by the other).
        Self::lock_device(&mut tx, &c.device_id).await?;
        Self::insert_cert(&mut tx, &c.device_id, &c.cert, c.now).await?;
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
        Self::revoke_device_keys(&mut tx, &c.device_id, c.now, c.revoke_keys_before).await?;
        Self::api_key_insert(&c.device_api_key)
            .execute(&mut *tx)
            .await?;
        let detail = serde_json::json!({"serial": c.cert.serial, "previous_serial": c.old_serial});
        Self::insert_event(
            &mut tx,
            &c.device_id,
            &c.workspace,
            c.now,
            "rotated",
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn retire_superseded(&self, device_id: &str, now: UnixMillis) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        Self::retire_superseded_in(&mut tx, device_id, now).await?;
        tx.commit().await?;
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
        // The UPDATE takes the device row lock first, so this orders with
        // enrollments and rotations of the device.
        let res = sqlx::query(
            "UPDATE devices SET install_id_hash = $1, install_id_expires_at = $2, \
             install_key_sha256 = NULL, install_spent = FALSE, session_id = NULL, \
             cert_expires_at = NULL \
             WHERE workspace = $3 AND id = $4 AND deleted_at IS NULL",
        )
        .bind(install_id_hash)
        .bind(expires_at)
        .bind(workspace)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if D::rows_affected(&res) != 1 {
            return Ok(false);
        }
        Self::unbind_token_keys(&mut tx, id).await?;
        Self::revoke_device_certs(&mut tx, id, now).await?;
        Self::revoke_device_keys(&mut tx, id, now, i64::MAX).await?;
        let detail = serde_json::json!({"forced_reset": true});
        Self::insert_event(&mut tx, id, workspace, now, "revoked", &detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn spend_install_id(&self, device_id: &str) -> StoreResult<()> {
        // One statement: the row lock orders it against complete_enrollment,
        // whose conditional update then sees the install ID spent.
        sqlx::query("UPDATE devices SET install_spent = TRUE WHERE id = $1")
            .bind(device_id)
            .execute(&self.write_pool)
            .await?;
        Ok(())
    }

    async fn sessions_opened(&self, opens: &[SessionOpen]) -> Vec<StoreResult<()>> {
        if D::ROW_LOCK.is_some() || opens.len() < 2 {
            let mut each = Vec::with_capacity(opens.len());
            for chunk in opens.chunks(SIDE_BY_SIDE) {
                let runs = chunk.iter().map(|o| self.session_opened_alone(o));
                each.extend(futures_util::future::join_all(runs).await);
            }
            return each;
        }
        // One writer: one transaction for the group. A device that is gone
        // fails alone (its UPDATE changed nothing); any other error rolls
        // the group back and each open is tried on its own.
        let group = async {
            let mut tx = self.begin().await?;
            let mut each = Vec::with_capacity(opens.len());
            for o in opens {
                match Self::session_opened_in(&mut tx, o).await {
                    Err(StoreError::NotFound) => each.push(Err(StoreError::NotFound)),
                    Err(e) => return Err(e),
                    Ok(()) => each.push(Ok(())),
                }
            }
            tx.commit().await?;
            StoreResult::Ok(each)
        };
        match group.await {
            Ok(each) => each,
            Err(e) => {
                tracing::warn!(
                    sessions = opens.len(),
                    "session opens: group failed ({e}); one by one"
                );
                let mut each = Vec::with_capacity(opens.len());
                for o in opens {
                    each.push(self.session_opened_alone(o).await);
                }
                each
            }
        }
    }

    async fn session_heartbeats(&self, beats: &[Heartbeat]) -> StoreResult<u64> {
        if beats.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let mut changed = 0;
        let mut rest = beats;
        while !rest.is_empty() {
            // The largest statement size that fits: few distinct texts, so
            // sqlx's statement cache keeps every prepared form.
            let (index, size) = HEARTBEAT_SIZES
                .iter()
                .copied()
                .enumerate()
                .find(|(_, n)| *n <= rest.len())
                .unwrap_or((HEARTBEAT_SIZES.len() - 1, 1));
            let (chunk, tail) = rest.split_at(size);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(heartbeat_update(index)));
            for b in chunk {
                q = q.bind(&b.device_id).bind(&b.session_id).bind(b.at);
            }
            changed += D::rows_affected(&q.execute(&mut *tx).await?);
            rest = tail;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn sessions_closed(&self, ends: &[SessionEnd], now: UnixMillis) -> Vec<StoreResult<()>> {
        if D::ROW_LOCK.is_some() || ends.len() < 2 {
            // Several writers: one short transaction per device (one over
            // many devices' rows could deadlock with another replica's),
            // a few at a time so the pool stays free for other work.
            let mut each = Vec::with_capacity(ends.len());
            for chunk in ends.chunks(SIDE_BY_SIDE) {
                let runs = chunk.iter().map(|e| self.session_closed_alone(e, now));
                each.extend(futures_util::future::join_all(runs).await);
            }
            return each;
        }
        let group = async {
            let mut tx = self.begin().await?;
            for e in ends {
                Self::session_closed_in(&mut tx, e, now).await?;
            }
            tx.commit().await?;
            StoreResult::Ok(())
        };
        match group.await {
            Ok(()) => ends.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                tracing::warn!(
                    sessions = ends.len(),
                    "session ends: group failed ({e}); one by one"
                );
                let mut each = Vec::with_capacity(ends.len());
                for end in ends {
                    each.push(self.session_closed_alone(end, now).await);
                }
                each
            }
        }
    }

    async fn insert_telemetry(
        &self,
        device_id: &str,
        samples: &[TelemetrySample],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        let rows: Vec<(&str, &TelemetrySample)> = samples.iter().map(|s| (device_id, s)).collect();
        self.store_samples(&rows, received_at).await
    }

    async fn insert_telemetry_many(
        &self,
        batches: &[DeviceSamples],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        // The whole group as rows: one-sample batches from many devices
        // still share statements.
        let rows: Vec<(&str, &TelemetrySample)> = batches
            .iter()
            .flat_map(|b| b.samples.iter().map(|s| (b.device_id.as_str(), s)))
            .collect();
        self.store_samples(&rows, received_at).await
    }

    async fn last_telemetry_seq(&self, device_id: &str) -> StoreResult<u64> {
        let mut conn = self.pool.acquire().await?;
        Self::last_seq_on(&mut conn, LAST_TELEMETRY_SEQ, device_id).await
    }

    async fn last_log_seq(&self, device_id: &str) -> StoreResult<u64> {
        let mut conn = self.pool.acquire().await?;
        Self::last_seq_on(&mut conn, LAST_LOG_SEQ, device_id).await
    }

    async fn session_view(&self, device_id: &str) -> StoreResult<SessionView> {
        // Four reads on one connection: one pool round trip, not four.
        let mut conn = self.pool.acquire().await?;
        Ok(SessionView {
            last_telemetry_seq: Self::last_seq_on(&mut conn, LAST_TELEMETRY_SEQ, device_id).await?,
            last_log_seq: Self::last_seq_on(&mut conn, LAST_LOG_SEQ, device_id).await?,
            config: Self::config_on(&mut conn, device_id, None).await?,
            desired: Self::desired_on(&mut conn, device_id).await?,
        })
    }

    async fn record_loss(
        &self,
        device_id: &str,
        workspace: &str,
        t: &LossTotals,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        // Read-then-write, read locked: two replicas handling reports of
        // the same totals must not both compute the same increase from the
        // same old totals and record it twice.
        let Some(row) = sqlx::query(D::texts().loss_locked.as_str())
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
            Self::insert_event(&mut tx, device_id, workspace, now, "data_lost", &detail).await?;
        }
        tx.commit().await?;
        Ok(any)
    }

    async fn prune(&self, cutoff: &Retention) -> StoreResult<PruneCounts> {
        // Per device, so each delete walks the (device_id, ts) index, and in
        // batches of PRUNE_BATCH, so each holds the writer briefly. Replicas
        // pruning at once just find less to delete.
        let devices: Vec<String> = sqlx::query_scalar("SELECT id FROM devices")
            .fetch_all(&self.pool)
            .await?;
        // Raw history the tiers have not been filled from yet stays until
        // they have (the tiers outlive raw).
        let backfilling: HashSet<String> =
            sqlx::query_scalar("SELECT device_id FROM telemetry_rollup_backfill")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        let mut counts = PruneCounts::default();
        for id in &devices {
            let d = Some(id.as_str());
            if !backfilling.contains(id) {
                counts.telemetry += self
                    .delete_batched(PRUNE_RAW, d, cutoff.telemetry_before, &mut counts)
                    .await?;
            }
            counts.telemetry_1m += self
                .delete_batched(&PRUNE_TIER[0], d, cutoff.minute_before, &mut counts)
                .await?;
            counts.telemetry_1h += self
                .delete_batched(&PRUNE_TIER[1], d, cutoff.hour_before, &mut counts)
                .await?;
            counts.logs += self
                .delete_batched(PRUNE_LOGS, d, cutoff.logs_before, &mut counts)
                .await?;
        }
        counts.events = self
            .delete_batched(PRUNE_EVENTS, None, cutoff.events_before, &mut counts)
            .await?;
        Ok(counts)
    }

    async fn rollup_backfill_step(&self) -> StoreResult<Option<BackfillStep>> {
        let Some(row) = sqlx::query(
            "SELECT device_id, next_ts, until_ts FROM telemetry_rollup_backfill \
             ORDER BY device_id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let device = row.text("device_id")?;
        let until = row.int("until_ts")?;
        // Whole hours, so that every minute and hour row of the chunk is
        // computed from all of its samples and simply replaces what ingest
        // may have merged into it meanwhile.
        let start = HOUR.bucket(row.int("next_ts")?);
        let end = start.saturating_add(BACKFILL_CHUNK_MS);
        let mut tx = self.begin().await?;
        D::lock_rollups(&mut tx, &[device.as_str()]).await?;
        let samples = Self::raw_between(&mut *tx, &device, start, end).await?;
        let new: Vec<(&str, &TelemetrySample)> =
            samples.iter().map(|s| (device.as_str(), s)).collect();
        for tier in TIERS {
            let rows: Vec<(&str, UnixMillis, Agg)> = rollup::partials(tier, new.iter().copied())
                .into_iter()
                .map(|((d, b), a)| (d, b, a))
                .collect();
            Self::upsert_tier(&mut tx, tier, &rows).await?;
        }
        // Skip the gaps: the next chunk starts at the next sample.
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(ts) FROM telemetry WHERE device_id = $1 AND ts >= $2")
                .bind(&device)
                .bind(end)
                .fetch_one(&mut *tx)
                .await?;
        let finished = next.is_none_or(|n| n > until);
        if finished {
            sqlx::query("DELETE FROM telemetry_rollup_backfill WHERE device_id = $1")
                .bind(&device)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(
                "UPDATE telemetry_rollup_backfill SET next_ts = $2 \
                 WHERE device_id = $1 AND next_ts < $2",
            )
            .bind(&device)
            .bind(next)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(BackfillStep {
            device_id: device,
            samples: samples.len() as u64,
            through: if finished { until } else { end },
            finished,
        }))
    }

    async fn rollup_backfill_pending(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_rollup_backfill")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn query_telemetry(&self, q: &TelemetryQuery) -> StoreResult<Vec<TelemetrySample>> {
        const FORWARD: &str = "SELECT * FROM telemetry WHERE device_id = $1 \
             AND ($2 IS NULL OR ts >= $2) AND ($3 IS NULL OR ts < $3) \
             AND ($4 IS NULL OR seq > $4) ORDER BY seq ASC LIMIT $5";
        const BACKWARD: &str = "SELECT * FROM telemetry WHERE device_id = $1 \
             AND ($2 IS NULL OR ts >= $2) AND ($3 IS NULL OR ts < $3) \
             AND ($4 IS NULL OR seq < $4) ORDER BY seq DESC LIMIT $5";
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
        let rows = D::bind_ids(sqlx::query(D::LATEST_TELEMETRY), device_ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.text("device_id")?, sample_from_row(r)?)))
            .collect()
    }

    async fn insert_audit(&self, e: &NewAuditEntry) -> StoreResult<()> {
        // Under the event lock of a key no device id can have: with
        // PostgreSQL, replicas append one at a time, so ids grow in commit
        // order and a reader paging by id never passes an entry that
        // commits later with a smaller id.
        let mut tx = self.begin().await?;
        D::lock_events(&mut tx, AUDIT_LOCK_KEY).await?;
        sqlx::query(
            "INSERT INTO audit_log (ts, workspace, actor, action, target, status, request_id, \
             client_addr) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.timestamp)
        .bind(&e.workspace)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(i64::from(e.status))
        .bind(&e.request_id)
        .bind(&e.client_addr)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        const FORWARD: &str = "SELECT * FROM audit_log WHERE workspace = $1 \
             AND ($2 IS NULL OR id > $2) AND ($3 IS NULL OR ts >= $3) \
             AND ($4 IS NULL OR ts < $4) AND ($5 IS NULL OR action = $5) \
             ORDER BY id ASC LIMIT $6";
        const BACKWARD: &str = "SELECT * FROM audit_log WHERE workspace = $1 \
             AND ($2 IS NULL OR id < $2) AND ($3 IS NULL OR ts >= $3) \
             AND ($4 IS NULL OR ts < $4) AND ($5 IS NULL OR action = $5) \
             ORDER BY id DESC LIMIT $6";
        let sql = match q.direction {
            Direction::Forward => FORWARD,
            Direction::Backward => BACKWARD,
        };
        let rows = sqlx::query(sql)
            .bind(&q.workspace)
            .bind(q.after_id)
            .bind(q.start)
            .bind(q.end)
            .bind(&q.action)
            .bind(q.limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn prune_audit(&self, before: UnixMillis) -> StoreResult<u64> {
        let res = sqlx::query("DELETE FROM audit_log WHERE ts < $1")
            .bind(before)
            .execute(&self.write_pool)
            .await?;
        Ok(D::rows_affected(&res))
    }

    async fn api_key_workspace(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT workspace FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    // ---- artifacts and publisher keys (issue 20) ----

    async fn add_publisher_key(
        &self,
        workspace: &str,
        public_key: &str,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "INSERT INTO publisher_keys (workspace, public_key, added_at) VALUES ($1, $2, $3) \
             ON CONFLICT (workspace, public_key) DO NOTHING",
        )
        .bind(workspace)
        .bind(public_key)
        .bind(now)
        .execute(&self.write_pool)
        .await?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn remove_publisher_key(&self, workspace: &str, public_key: &str) -> StoreResult<bool> {
        let res =
            sqlx::query("DELETE FROM publisher_keys WHERE workspace = $1 AND public_key = $2")
                .bind(workspace)
                .bind(public_key)
                .execute(&self.write_pool)
                .await?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn list_publisher_keys(&self, workspace: &str) -> StoreResult<Vec<PublisherKeyRecord>> {
        let rows = sqlx::query(
            "SELECT public_key, added_at FROM publisher_keys WHERE workspace = $1 \
             ORDER BY added_at, public_key",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PublisherKeyRecord {
                    public_key: r.text("public_key")?,
                    added_at: r.int("added_at")?,
                })
            })
            .collect()
    }

    async fn create_artifact(&self, a: &ArtifactRecord) -> StoreResult<bool> {
        // One conditional INSERT: with several replicas, one of two equal
        // creations inserts and the other finds the row.
        let res = sqlx::query(
            "INSERT INTO artifacts (workspace, name, version, manifest_json, public_key, \
             signature, size, sha256, state, created_at, uploaded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (workspace, name, version) DO NOTHING",
        )
        .bind(&a.workspace)
        .bind(&a.name)
        .bind(&a.version)
        .bind(&a.manifest_json)
        .bind(&a.public_key)
        .bind(&a.signature)
        .bind(i(a.size))
        .bind(&a.sha256)
        .bind(&a.state)
        .bind(a.created_at)
        .bind(a.uploaded_at)
        .execute(&self.write_pool)
        .await?;
        if D::rows_affected(&res) == 1 {
            return Ok(true);
        }
        match self.get_artifact(&a.workspace, &a.name, &a.version).await? {
            Some(old) if old.manifest_json == a.manifest_json => Ok(false),
            Some(_) => Err(StoreError::Conflict(format!(
                "{}@{} exists with another manifest",
                a.name, a.version
            ))),
            // Deleted in between: the caller may retry.
            None => Err(StoreError::Conflict(format!(
                "{}@{} was deleted meanwhile",
                a.name, a.version
            ))),
        }
    }

    async fn get_artifact(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<Option<ArtifactRecord>> {
        let row = sqlx::query(
            "SELECT * FROM artifacts WHERE workspace = $1 AND name = $2 AND version = $3",
        )
        .bind(workspace)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(artifact_from_row).transpose()
    }

    async fn list_artifacts(&self, workspace: &str) -> StoreResult<Vec<ArtifactRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM artifacts WHERE workspace = $1 ORDER BY name, created_at, version",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(artifact_from_row).collect()
    }

    async fn put_artifact_chunk(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
        idx: u64,
        data: &[u8],
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let state = Self::artifact_state_locked(&mut tx, workspace, name, version).await?;
        match state.as_deref() {
            None => return Err(StoreError::NotFound),
            Some(ARTIFACT_AWAITING_PAYLOAD) => {}
            Some(_) => {
                return Err(StoreError::Conflict(format!(
                    "{name}@{version} has its payload already"
                )));
            }
        }
        sqlx::query(
            "INSERT INTO artifact_chunks (workspace, name, version, idx, data) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (workspace, name, version, idx) DO UPDATE SET data = excluded.data",
        )
        .bind(workspace)
        .bind(name)
        .bind(version)
        .bind(i(idx))
        .bind(data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn discard_artifact_chunks(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let state = Self::artifact_state_locked(&mut tx, workspace, name, version).await?;
        if state.as_deref() == Some(ARTIFACT_AWAITING_PAYLOAD) {
            Self::delete_chunks_in(&mut tx, workspace, name, version).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mark_artifact_ready(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
        now: UnixMillis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let Some(a) = Self::artifact_locked(&mut tx, workspace, name, version).await? else {
            return Err(StoreError::NotFound);
        };
        if a.state != ARTIFACT_AWAITING_PAYLOAD {
            return Err(StoreError::Conflict(format!(
                "{name}@{version} has its payload already"
            )));
        }
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) AS bytes \
             FROM artifact_chunks WHERE workspace = $1 AND name = $2 AND version = $3",
        )
        .bind(workspace)
        .bind(name)
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
        let (n, bytes) = (row.int("n")?, row.int("bytes")?);
        let want_chunks = a.size.div_ceil(ARTIFACT_CHUNK_SIZE as u64);
        if n != i(want_chunks) || bytes != i(a.size) {
            return Err(StoreError::Conflict(format!(
                "the stored payload of {name}@{version} is {bytes} bytes in {n} chunks, \
                 the manifest says {} bytes",
                a.size
            )));
        }
        sqlx::query(
            "UPDATE artifacts SET state = $4, uploaded_at = $5 \
             WHERE workspace = $1 AND name = $2 AND version = $3",
        )
        .bind(workspace)
        .bind(name)
        .bind(version)
        .bind(ARTIFACT_READY)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn read_artifact_chunk(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
        idx: u64,
    ) -> StoreResult<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT data FROM artifact_chunks \
             WHERE workspace = $1 AND name = $2 AND version = $3 AND idx = $4",
        )
        .bind(workspace)
        .bind(name)
        .bind(version)
        .bind(i(idx))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn delete_artifact(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        // The artifact's row lock first: a rollout being created for it
        // (which reads the artifact the same way) waits or is waited for.
        if Self::artifact_state_locked(&mut tx, workspace, name, version)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        let in_use: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rollouts WHERE workspace = $1 AND artifact_name = $2 \
             AND artifact_version = $3 AND state IN ('running', 'paused')",
        )
        .bind(workspace)
        .bind(name)
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
        if in_use > 0 {
            return Err(StoreError::Conflict(format!(
                "{name}@{version} is used by a running or paused rollout"
            )));
        }
        Self::delete_chunks_in(&mut tx, workspace, name, version).await?;
        sqlx::query("DELETE FROM artifacts WHERE workspace = $1 AND name = $2 AND version = $3")
            .bind(workspace)
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- rollouts and what runs on devices (issue 20) ----

    async fn create_rollout(&self, r: &NewRollout) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        // The partial unique index `rollouts_one_active` holds one running
        // or paused rollout per (workspace, artifact name): of two replicas
        // creating at once, the second waits for the first and fails here.
        let res = sqlx::query(
            "INSERT INTO rollouts (id, workspace, artifact_name, artifact_version, selector, \
             waves, max_failures, wave_timeout_ms, approve_waves, state, reason, current_wave, \
             wave_started_at, accepted_failures, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'running', NULL, 0, $10, 0, $10, $10)",
        )
        .bind(&r.id)
        .bind(&r.workspace)
        .bind(&r.artifact_name)
        .bind(&r.artifact_version)
        .bind(to_json(&r.selector))
        .bind(to_json(&r.waves))
        .bind(i64::from(r.max_failures))
        .bind(r.wave_timeout_ms)
        .bind(r.approve_waves)
        .bind(r.created_at)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "another rollout of {} is running or paused",
                    r.artifact_name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        // Multi-row inserts of ROLLOUT_DEVICE_CHUNK devices each (2 + 2 per
        // device parameters, far below either backend's limit), not one
        // statement per device: a rollout may hold 100 000 devices.
        for chunk in r.devices.chunks(ROLLOUT_DEVICE_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, ${}, ${}, 'pending', NULL, $2)", 3 + 2 * i, 4 + 2 * i))
                .collect();
            let sql = format!(
                "INSERT INTO rollout_devices (rollout_id, device_id, wave, state, error, \
                 updated_at) VALUES {}",
                values.join(", ")
            );
            // Only placeholders are formatted in; every value is bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&r.id)
                .bind(r.created_at);
            for (device, wave) in chunk {
                q = q.bind(device).bind(i64::from(*wave));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_rollout(&self, workspace: &str, id: &str) -> StoreResult<Option<Rollout>> {
        let row = sqlx::query(concat!(
            rollout_select!(),
            " WHERE workspace = $1 AND id = $2"
        ))
        .bind(workspace)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(self.rollout_with_devices(&row).await?)),
            None => Ok(None),
        }
    }

    async fn list_rollouts(&self, q: &RolloutListQuery) -> StoreResult<Vec<RolloutSummary>> {
        // No cursor: before the end of time (no rollout is created then).
        let (before_at, before_id) = q.before.clone().unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(concat!(
            rollout_select!(),
            " WHERE workspace = $1 AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(&q.workspace)
        .bind(before_at)
        .bind(&before_id)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|row| {
                Ok(RolloutSummary {
                    rollout: rollout_from_row(row)?,
                    counts: Vec::new(),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let (Some(newest), Some(oldest)) = (out.first(), out.last()) else {
            return Ok(out);
        };
        // The page's devices counted in one query: the page is the
        // workspace's rollouts between its newest and oldest keys.
        let rows = sqlx::query(
            "SELECT rd.rollout_id, rd.wave, rd.state, COUNT(*) AS n \
             FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
             WHERE r.workspace = $1 \
             AND (r.created_at < $2 OR (r.created_at = $2 AND r.id <= $3)) \
             AND (r.created_at > $4 OR (r.created_at = $4 AND r.id >= $5)) \
             GROUP BY rd.rollout_id, rd.wave, rd.state",
        )
        .bind(&q.workspace)
        .bind(newest.rollout.created_at)
        .bind(&newest.rollout.id)
        .bind(oldest.rollout.created_at)
        .bind(&oldest.rollout.id)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let id = r.text("rollout_id")?;
            let state = r.text("state")?;
            let state = crate::rollout::DeviceState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("rollout device state {state}")))?;
            if let Some(s) = out.iter_mut().find(|s| s.rollout.id == id) {
                s.counts
                    .push((count32(r, "wave")?, state, r.int("n")?.max(0) as u64));
            }
        }
        for s in &mut out {
            s.counts
                .sort_by_key(|(wave, state, _)| (*wave, state.rank()));
        }
        Ok(out)
    }

    async fn running_rollouts(&self) -> StoreResult<Vec<RunningRollout>> {
        use crate::rollout::{DeviceState, DeviceView, WaveTally};
        let rows = sqlx::query(concat!(
            rollout_select!(),
            " WHERE state = 'running' ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|row| {
                Ok(RunningRollout {
                    rollout: rollout_from_row(row)?,
                    wave: WaveTally::default(),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        if out.is_empty() {
            return Ok(out);
        }
        // The current waves' devices counted, not loaded: unfinished ones,
        // and the failures (rare) read to name the newest.
        let rows = sqlx::query(
            "SELECT rd.rollout_id, rd.state, COUNT(*) AS n \
             FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
             WHERE r.state = 'running' AND rd.wave = r.current_wave \
             AND rd.state NOT IN ('succeeded', 'failed', 'rolled_back') \
             GROUP BY rd.rollout_id, rd.state",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let id = row.text("rollout_id")?;
            if let Some(r) = out.iter_mut().find(|r| r.rollout.id == id) {
                r.wave.unfinished += row.int("n")?.max(0) as u64;
            }
        }
        let rows = sqlx::query(
            "SELECT rd.rollout_id, rd.device_id, rd.wave, rd.state, rd.error, rd.updated_at \
             FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
             WHERE r.state = 'running' AND rd.wave = r.current_wave \
             AND rd.state IN ('failed', 'rolled_back')",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let id = row.text("rollout_id")?;
            let state = row.text("state")?;
            let d = DeviceView {
                device_id: row.text("device_id")?,
                wave: count32(row, "wave")?,
                state: DeviceState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("rollout device state {state}")))?,
                error: row.opt_text("error")?,
                updated_at: row.int("updated_at")?,
            };
            if let Some(r) = out.iter_mut().find(|r| r.rollout.id == id) {
                r.wave.failures += 1;
                r.wave.note_failure(&d);
            }
        }
        Ok(out)
    }

    async fn rollout_counts(&self) -> StoreResult<RolloutCounts> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM rollouts GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = RolloutCounts::default();
        for r in &rows {
            counts
                .rollouts
                .push((r.text("state")?, r.int("n")?.max(0) as u64));
        }
        let rows = sqlx::query(
            "SELECT r.id, r.artifact_name, r.artifact_version, d.state, COUNT(*) AS n \
             FROM rollouts r JOIN rollout_devices d ON d.rollout_id = r.id \
             WHERE r.state IN ('running', 'paused') \
             GROUP BY r.id, r.artifact_name, r.artifact_version, d.state \
             ORDER BY r.id, d.state",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            counts.devices.push((
                r.text("id")?,
                format!(
                    "{}@{}",
                    r.text("artifact_name")?,
                    r.text("artifact_version")?
                ),
                r.text("state")?,
                r.int("n")?.max(0) as u64,
            ));
        }
        Ok(counts)
    }

    async fn apply_rollout_transition(
        &self,
        id: &str,
        t: &crate::rollout::Transition,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE rollouts SET state = $1, reason = $2, current_wave = $3, \
             wave_started_at = $4, accepted_failures = $5, updated_at = $6 \
             WHERE id = $7 AND state = $8 AND current_wave = $9",
        )
        .bind(t.state.as_str())
        .bind(t.reason.as_deref())
        .bind(i64::from(t.current_wave))
        .bind(t.wave_started_at)
        .bind(i64::from(t.accepted_failures))
        .bind(now)
        .bind(id)
        .bind(t.from_state.as_str())
        .bind(i64::from(t.from_wave))
        .execute(&self.write_pool)
        .await?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn record_artifact_report(
        &self,
        device_id: &str,
        workspace: &str,
        report: &ArtifactReport,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        use crate::rollout::DeviceState;
        let mut tx = self.begin().await?;
        // The device row first (the store's lock order), as the hello's
        // replacement of `device_artifacts` takes it: two sessions of one
        // device cannot interleave their writes of its artifacts.
        Self::lock_device(&mut tx, device_id).await?;
        // Only forward: the row moves when its state ranks below the
        // report's (one conditional UPDATE, safe across replicas).
        let res = sqlx::query(
            "UPDATE rollout_devices SET state = $1, error = $2, updated_at = $3 \
             WHERE rollout_id = $4 AND device_id = $5 \
             AND (CASE state WHEN 'pending' THEN 0 WHEN 'downloading' THEN 1 \
                  WHEN 'installing' THEN 2 WHEN 'verifying' THEN 3 ELSE 4 END) < $6 \
             AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = $4 AND r.workspace = $7 \
                  AND r.artifact_name = $8 AND r.artifact_version = $9)",
        )
        .bind(report.state.as_str())
        .bind(report.error.as_deref())
        .bind(now)
        .bind(&report.rollout_id)
        .bind(device_id)
        .bind(i64::from(report.state.rank()))
        .bind(workspace)
        .bind(&report.name)
        .bind(&report.version)
        .execute(&mut *tx)
        .await?;
        let moved = D::rows_affected(&res) == 1;
        let kind = match report.state {
            DeviceState::Succeeded => Some("artifact_installed"),
            DeviceState::Failed => Some("artifact_failed"),
            DeviceState::RolledBack => Some("artifact_rolled_back"),
            _ => None,
        };
        if moved && let Some(kind) = kind {
            let detail = serde_json::json!({
                "artifact": format!("{}@{}", report.name, report.version),
                "rollout_id": report.rollout_id,
                "error": report.error,
            });
            Self::insert_event(&mut tx, device_id, workspace, now, kind, &detail).await?;
        }
        for (name, version) in &report.installed {
            Self::upsert_device_artifact(&mut tx, device_id, name, version, now).await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn set_device_artifacts(
        &self,
        device_id: &str,
        installed: &[(String, String)],
        now: UnixMillis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        Self::lock_device(&mut tx, device_id).await?;
        Self::replace_device_artifacts_in(&mut tx, device_id, installed, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn device_artifacts(
        &self,
        device_ids: &[String],
    ) -> StoreResult<Vec<(String, String, String)>> {
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = D::bind_ids(
            sqlx::query(D::texts().device_artifacts.as_str()),
            device_ids,
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.text("device_id")?, r.text("name")?, r.text("version")?)))
            .collect()
    }

    async fn desired_artifacts(&self, device_id: &str) -> StoreResult<Vec<DesiredArtifact>> {
        let mut conn = self.pool.acquire().await?;
        Self::desired_on(&mut conn, device_id).await
    }
}

const LAST_TELEMETRY_SEQ: &str = "SELECT MAX(seq) FROM telemetry WHERE device_id = $1";
const LAST_LOG_SEQ: &str = "SELECT MAX(seq) FROM logs WHERE device_id = $1";

fn artifact_from_row<R>(r: &R) -> StoreResult<ArtifactRecord>
where
    R: Cols,
{
    Ok(ArtifactRecord {
        workspace: r.text("workspace")?,
        name: r.text("name")?,
        version: r.text("version")?,
        manifest_json: r.text("manifest_json")?,
        public_key: r.text("public_key")?,
        signature: r.text("signature")?,
        size: r.int("size")?.max(0) as u64,
        sha256: r.text("sha256")?,
        state: r.text("state")?,
        created_at: r.int("created_at")?,
        uploaded_at: r.opt_int("uploaded_at")?,
    })
}

/// The event-lock key of the audit log: a space is in no device id.
const AUDIT_LOCK_KEY: &str = " audit_log";

/// Transactions one batch runs at once on PostgreSQL (half its pool).
const SIDE_BY_SIDE: usize = 8;

/// Heartbeats per `UPDATE … FROM (VALUES …)`, largest first (3 parameters
/// each, far below either backend's limit).
const HEARTBEAT_SIZES: [usize; 4] = [256, 32, 4, 1];

/// The statement for [`HEARTBEAT_SIZES`]`[index]` heartbeats: a device's
/// `last_heartbeat` moves forward only, and only for its current session
/// (a late batch from the replica that held an old session changes
/// nothing). Both backends name a bare `VALUES` list's columns `column1…`.
fn heartbeat_update(index: usize) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        HEARTBEAT_SIZES
            .iter()
            .map(|&n| {
                let values: Vec<String> = (0..n)
                    .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                    .collect();
                format!(
                    "UPDATE devices SET last_heartbeat = v.column3 FROM (VALUES {}) AS v \
                     WHERE devices.id = v.column1 AND devices.session_id = v.column2 \
                     AND (devices.last_heartbeat IS NULL OR devices.last_heartbeat < v.column3)",
                    values.join(", ")
                )
            })
            .collect()
    });
    texts[index].as_str()
}
