//! The embedded backend: one SQLite file in the data directory, WAL mode so
//! the admin CLI can work on it while `serve` runs, and SQLite's
//! [`Dialect`]: one writer at a time, so no row locks; telemetry in
//! multi-row `INSERT`s across a whole commit group.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use std::sync::LazyLock;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Sqlite, Transaction};

use super::common::*;
use super::sql::{AbortOnDrop, Dialect, SqlStore, Texts};
use super::*;

/// The store on one SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

/// WAL pages (4 KiB; 64 MiB) after which a commit checkpoints the WAL into
/// the database file itself (SQLite's default: 1000). Under a fleet's
/// telemetry the same B-tree pages are rewritten by commit after commit; a
/// larger WAL copies each page once per checkpoint instead of once per 1000
/// pages written. Measured in BENCHMARKS.md: at 110,000 samples/s offered,
/// 1000 pages fell behind (95,000/s acked, p99 3 s); 16384 kept up. With
/// the [`checkpointer`] doing the copying, this is the backstop: the commit
/// that crosses it copies only what arrived since the checkpointer's last
/// pass, and lets the next one start the WAL over.
const WAL_AUTOCHECKPOINT_PAGES: &str = "16384";

/// How long a writer waits for its turn before it fails (`SQLITE_BUSY`, or
/// the write connection's acquire timeout).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the [`checkpointer`] copies the WAL into the database file.
/// At 100 ms it copied hot pages more often (~25 % more bytes written per
/// sample) and was no faster than 400 ms (BENCHMARKS.md, 2026-12-04).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(400);

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) `DATA_DIR/outpost.db` and runs migrations.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        let path = data_dir.join("outpost.db");
        private_files(&path)?;
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we ack it to an agent.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // 16 MiB of page cache per connection (SQLite's default is 2 MiB):
            // the telemetry B-trees' hot pages stay in memory instead of
            // being read back from the OS on every insert.
            .pragma("cache_size", "-16384")
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES);
        let pool_options = || {
            SqlitePoolOptions::new()
                // sqlx pings a connection before handing it out (a round
                // trip to its worker thread, on every store call): a
                // liveness check for network databases, none needed for a
                // file this process has open. (It still pings on release,
                // which settles queued rollbacks; `usable` relies on that.)
                .test_before_acquire(false)
                .before_acquire(|conn, _| Box::pin(async move { Ok(usable(conn)) }))
        };
        let pool = pool_options()
            .max_connections(8)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        // Write transactions take turns on one connection, as SQLite's one
        // write lock would make them anyway, so that its page cache stays
        // valid from one commit to the next: a connection that finds the
        // database changed by another since its last transaction drops its
        // whole cache and reads every page again. A turn is waited for as
        // long as the lock would have been (the busy timeout).
        let write_pool = pool_options()
            .max_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(opts.clone())
            .await?;
        // Its statements are not logged: one every 400 ms, for the life
        // of the process. Without it the store still works (commits then
        // checkpoint by themselves).
        let background = match opts.clone().disable_statement_logging().connect().await {
            Ok(conn) => Some(AbortOnDrop(tokio::spawn(checkpointer(conn)).abort_handle())),
            Err(e) => {
                tracing::warn!(
                    "no background WAL checkpoints: {e} (commits checkpoint by themselves)"
                );
                None
            }
        };
        Ok(Self {
            pool,
            write_pool,
            _background: background,
        })
    }
}

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`], on a
/// connection of its own. A commit that crosses the autocheckpoint size
/// runs the checkpoint itself, holding the write lock meanwhile: up to
/// 64 MiB of pages copied and the file synced while every writer (ingest
/// acks, a retention batch) waits. Measured before this: a 2,000-row
/// retention delete that took 301 ms. A PASSIVE checkpoint takes no write
/// lock and waits for nobody; commits go on appending while it copies.
/// The automatic checkpoint stays on beside it: only a writer can start
/// the WAL over, and only when every frame in it has been copied, which
/// under steady ingest a concurrent checkpoint never quite reaches. (An
/// earlier try that turned the automatic one off was slower: BENCHMARKS.md.)
async fn checkpointer(mut conn: sqlx::SqliteConnection) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let done = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await;
        match done {
            Ok(_) if failing => {
                tracing::info!("WAL checkpoints work again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!(
                    "WAL checkpoint failed: {e} (commits checkpoint by themselves meanwhile)"
                );
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Whether a pooled connection can be handed out again. SQLite rolls a
/// transaction back by itself on some errors (`SQLITE_FULL`, `SQLITE_IOERR`,
/// `SQLITE_NOMEM`); sqlx's own `ROLLBACK` then fails ("no
/// transaction is active") and leaves its transaction depth at 1, so every
/// later `begin` on that connection would fail ("non-zero transaction
/// depth") long after the disk has space again. Such a connection is closed
/// and the pool opens a fresh one. (sqlx pings a connection when it is
/// released, after any queued rollback, so the depth read here is settled.)
fn usable(conn: &mut sqlx::SqliteConnection) -> bool {
    use sqlx::Connection;
    if conn.is_in_transaction() {
        tracing::warn!(
            "closing a database connection left inside a transaction SQLite had already \
             rolled back (after a write error); a fresh one replaces it"
        );
        return false;
    }
    true
}

/// The database holds hashed secrets and every device's data: it is created
/// 0600 whatever the umask (SQLite creates the `-wal` and `-shm` files with
/// the database file's mode), and an existing one left more open by an older
/// version is narrowed to 0600 with its `-wal`/`-shm`.
fn private_files(db: &Path) -> StoreResult<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |what: &Path, e: std::io::Error| {
        StoreError::Invalid(format!("cannot secure {}: {e}", what.display()))
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)
        .map_err(|e| io(db, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        match std::fs::metadata(file) {
            Ok(m) if m.permissions().mode() & 0o777 != 0o600 => {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| io(file, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(file, e)),
        }
    }
    Ok(())
}

impl Dialect for Sqlite {
    /// Every transaction here writes: take the write lock up front, so
    /// concurrent ones wait (busy timeout) instead of failing with
    /// SQLITE_BUSY when a read snapshot goes stale.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    /// One writer: a transaction that reads and then writes sees no other
    /// writer in between.
    const ROW_LOCK: Option<&'static str> = None;
    /// The max seq per device first (a PK probe each), then that row.
    const ID_LIST: &'static str = "SELECT value AS id FROM json_each($1)";
    const LATEST_TELEMETRY: &'static str = "SELECT t.* FROM \
         (SELECT value AS id, (SELECT MAX(seq) FROM telemetry WHERE device_id = value) AS top \
          FROM json_each($1)) l \
         JOIN telemetry t ON t.device_id = l.id AND t.seq = l.top";

    fn texts() -> &'static Texts {
        static TEXTS: LazyLock<Texts> = LazyLock::new(Texts::new::<Sqlite>);
        &TEXTS
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    /// As a JSON array, for `json_each`.
    fn bind_ids<'q>(
        q: sqlx::query::Query<'q, Sqlite, <Sqlite as sqlx::Database>::Arguments>,
        ids: &'q [String],
    ) -> sqlx::query::Query<'q, Sqlite, <Sqlite as sqlx::Database>::Arguments> {
        q.bind(to_json(&ids))
    }

    /// Event ids come from one writer in commit order: nothing to lock.
    async fn lock_events(_: &mut Transaction<'static, Sqlite>, _: &str) -> StoreResult<()> {
        Ok(())
    }

    async fn insert_telemetry(
        tx: &mut Transaction<'static, Sqlite>,
        rows: &[(&str, &TelemetrySample)],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        insert_rows(tx, rows, received_at).await
    }

    /// One writer at a time (`BEGIN IMMEDIATE`): nothing to lock.
    async fn lock_rollups(_: &mut Transaction<'static, Sqlite>, _: &[&str]) -> StoreResult<()> {
        Ok(())
    }

    const JSON_ROWS: &'static str = "SELECT value AS r FROM json_each($1)";

    /// `->>` gives SQL values of the JSON's own types.
    fn json_field(k: usize, _: SqlType) -> String {
        format!("r ->> {k}")
    }

    const KEY_LIST: &'static str =
        "SELECT value ->> 0 AS device_id, value ->> 1 AS bucket FROM json_each($1)";

    /// As a JSON array of `[device, bucket]` pairs, for `json_each`.
    fn bind_keys<'q>(
        q: sqlx::query::Query<'q, Sqlite, <Sqlite as sqlx::Database>::Arguments>,
        keys: &[(&str, i64)],
    ) -> sqlx::query::Query<'q, Sqlite, <Sqlite as sqlx::Database>::Arguments> {
        q.bind(to_json(&keys))
    }

    async fn insert_logs(
        pool: &SqlitePool,
        device_id: &str,
        logs: &[LogRecord],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        let mut tx = pool.begin_with(Self::BEGIN).await?;
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
}

/// Rows per multi-row telemetry INSERT, largest first (19 parameters a row;
/// SQLite allows 32766). A group of N rows takes a few statements instead of
/// N: each statement is a round trip to sqlx's SQLite worker thread, and
/// that thread is the ingest bottleneck. Few sizes, so sqlx's statement
/// cache keeps every prepared form.
const INSERT_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// The statement for `rows` rows, one of [`INSERT_SIZES`] (built once,
/// constant text: sqlx caches their prepared forms).
fn telemetry_insert(size_index: usize) -> &'static str {
    static TEXTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        let columns: Vec<&str> = TELEMETRY_COLUMNS
            .iter()
            .map(TelemetryColumn::name)
            .collect();
        let row = format!("({})", vec!["?"; columns.len()].join(", "));
        INSERT_SIZES
            .iter()
            .map(|&n| {
                format!(
                    "INSERT INTO telemetry ({}) VALUES {} ON CONFLICT (device_id, seq) DO NOTHING",
                    columns.join(", "),
                    vec![row.as_str(); n].join(", "),
                )
            })
            .collect()
    });
    &TEXTS[size_index]
}

/// Inserts (device, sample) rows with as few statements as
/// [`INSERT_SIZES`] allow; rows already stored are skipped. Returns how many
/// were new.
async fn insert_rows(
    tx: &mut Transaction<'static, Sqlite>,
    rows: &[(&str, &TelemetrySample)],
    received_at: UnixMillis,
) -> StoreResult<u64> {
    let mut stored = 0;
    let mut rest = rows;
    for (k, &size) in INSERT_SIZES.iter().enumerate() {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            let mut q = sqlx::query(telemetry_insert(k));
            for &(device, s) in chunk {
                for c in &TELEMETRY_COLUMNS {
                    q = match c {
                        TelemetryColumn::DeviceId => q.bind(device),
                        TelemetryColumn::ReceivedAt => q.bind(received_at),
                        TelemetryColumn::Int(_, get, _) => q.bind(get(s)),
                        TelemetryColumn::Float(_, get, _) => q.bind(get(s)),
                        TelemetryColumn::Json(_, get, _) => q.bind(get(s)),
                    };
                }
            }
            stored += q.execute(&mut **tx).await?.rows_affected();
            rest = tail;
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// What SQLite does by itself on `SQLITE_FULL` or an I/O error — end the
    /// transaction under sqlx's feet — done by hand: the connection must
    /// not come back from the pool still "inside" it (every later `begin`
    /// on it would fail).
    #[tokio::test]
    async fn a_connection_whose_transaction_sqlite_ended_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::<Sqlite>::open(dir.path()).await.unwrap();
        // On the one write connection: were it not replaced, no write
        // would ever succeed again.
        {
            let mut tx = store.write_pool.begin().await.unwrap();
            sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
            // Dropped: sqlx's own ROLLBACK fails ("no transaction is
            // active") and its transaction depth stays 1.
        }
        for i in 0..10 {
            // As every write transaction of ours begins.
            let tx = store
                .write_pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .unwrap_or_else(|e| panic!("transaction {i} after it: {e}"));
            tx.commit().await.unwrap();
        }
    }

    /// A megabyte committed is far below the size at which a commit
    /// checkpoints by itself; in WAL mode the database file changes only
    /// at a checkpoint, so its growth is the checkpointer's doing.
    #[tokio::test]
    async fn the_checkpointer_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outpost.db");
        let store = SqlStore::<Sqlite>::open(dir.path()).await.unwrap();
        sqlx::query("CREATE TABLE scratch (b BLOB NOT NULL)")
            .execute(&store.pool)
            .await
            .unwrap();
        let before = std::fs::metadata(&db).unwrap().len();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
             INSERT INTO scratch SELECT randomblob(1024) FROM n",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&db).unwrap().len() < before + 1_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes",
                std::fs::metadata(&db).unwrap().len()
            );
            tokio::time::sleep(CHECKPOINT_EVERY / 4).await;
        }
    }

    #[tokio::test]
    async fn files_an_older_version_left_open_are_narrowed_to_0600() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outpost.db");
        for f in ["outpost.db", "outpost.db-wal"] {
            let path = dir.path().join(f);
            std::fs::write(&path, b"").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        private_files(&db).unwrap();
        for f in ["outpost.db", "outpost.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(!dir.path().join("outpost.db-shm").exists(), "none made up");
        // And a store opened over it works.
        std::fs::remove_file(dir.path().join("outpost.db-wal")).unwrap();
        SqlStore::<Sqlite>::open(dir.path()).await.unwrap();
    }
}
