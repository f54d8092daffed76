//! The shared backend: one PostgreSQL database that several control-plane
//! replicas use at once, and PostgreSQL's [`Dialect`]: row locks where a
//! transaction reads before it writes, an advisory lock that keeps each
//! device's event ids in commit order, and one `UNNEST` statement per batch
//! of telemetry or logs.
//!
//! The row lock is `FOR NO KEY UPDATE`, the lock a plain `UPDATE` of non-key
//! columns takes: it serializes against every other change to the device
//! but, unlike `FOR UPDATE`, does not block the foreign-key checks of
//! concurrent telemetry and log inserts for the same device.

use std::str::FromStr;
use std::sync::LazyLock;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::{AssertSqlSafe, Connection, Postgres, Transaction};

use super::common::*;
use super::sql::{Dialect, SqlStore, Texts};
use super::*;

/// The store on a PostgreSQL database.
pub type PgStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
    /// Connects to the database at `url` (a pool of up to 16 connections)
    /// and runs the migrations. Replicas starting together are fine: the
    /// migrator holds an advisory lock while it works.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        // NOTICEs (the migrator's `CREATE TABLE IF NOT EXISTS` says
        // "relation already exists" on every start) are not for operators;
        // warnings and errors still come through.
        let opts = PgConnectOptions::from_str(url)?.options([("client_min_messages", "warning")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // While the database is unreachable a store call fails after
            // this long (no ack; `/readyz` 503) instead of sqlx's default
            // 30 s. The first connection is retried below for as long.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(opts);
        // A database still starting (brought up with the control plane):
        // up to ~30 s, as sqlx's default would wait.
        let mut tries = 1;
        loop {
            match pool.acquire().await {
                Ok(_) => break,
                Err(e @ (sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))) if tries < 6 => {
                    tracing::warn!("the database is not reachable yet ({e}); retrying");
                    tries += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            write_pool: pool.clone(),
            pool,
            _background: None,
        })
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

impl Dialect for Postgres {
    const BEGIN: &'static str = "BEGIN";
    const ROW_LOCK: Option<&'static str> = Some(" FOR NO KEY UPDATE");
    const ID_LIST: &'static str = "SELECT unnest($1::TEXT[]) AS id";
    const LATEST_TELEMETRY: &'static str = "SELECT t.* FROM unnest($1::TEXT[]) AS l(id) \
         CROSS JOIN LATERAL (SELECT * FROM telemetry WHERE device_id = l.id \
         ORDER BY seq DESC LIMIT 1) t";

    fn texts() -> &'static Texts {
        static TEXTS: LazyLock<Texts> = LazyLock::new(Texts::new::<Postgres>);
        &TEXTS
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    /// As a `TEXT[]`.
    fn bind_ids<'q>(
        q: sqlx::query::Query<'q, Postgres, <Postgres as sqlx::Database>::Arguments>,
        ids: &'q [String],
    ) -> sqlx::query::Query<'q, Postgres, <Postgres as sqlx::Database>::Arguments> {
        q.bind(ids)
    }

    /// Event ids come from an identity sequence, and with several writers a
    /// sequence hands out ids in `nextval` order, not commit order: a reader
    /// paging forward by id could see id 11 before id 10 commits and then
    /// never see 10. So the id is drawn under a per-device transaction
    /// advisory lock, held to commit: per device (the only scope events are
    /// read in), ids become visible in increasing order, as on SQLite.
    /// Callers take this lock last (after any row locks) so no cycle can
    /// form.
    async fn lock_events(
        tx: &mut Transaction<'static, Postgres>,
        device_id: &str,
    ) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(EVENT_LOCK_CLASS)
            .bind(device_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// One statement for rows of any number of devices; see `insert_logs`
    /// for the dedupe.
    async fn insert_telemetry(
        tx: &mut Transaction<'static, Postgres>,
        rows: &[(&str, &TelemetrySample)],
        received_at: UnixMillis,
    ) -> StoreResult<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut q = sqlx::query(telemetry_insert());
        for c in &TELEMETRY_COLUMNS {
            q = match c {
                TelemetryColumn::DeviceId => {
                    q.bind(rows.iter().map(|&(d, _)| d).collect::<Vec<_>>())
                }
                TelemetryColumn::ReceivedAt => q.bind(received_at),
                TelemetryColumn::Int(_, get, _) => q.bind(column(rows, get)),
                TelemetryColumn::Float(_, get, _) => q.bind(column(rows, get)),
                TelemetryColumn::Json(_, get, _) => q.bind(column(rows, get)),
            };
        }
        Ok(q.execute(&mut **tx).await?.rows_affected())
    }

    /// A transaction advisory lock per device, taken in the order of the
    /// lock keys themselves (hash collisions cannot make a cycle).
    async fn lock_rollups(
        tx: &mut Transaction<'static, Postgres>,
        device_ids: &[&str],
    ) -> StoreResult<()> {
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1, k) FROM \
             (SELECT DISTINCT hashtext(id) AS k FROM unnest($2::TEXT[]) AS id ORDER BY k) s",
        )
        .bind(ROLLUP_LOCK_CLASS)
        .bind(device_ids)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    const JSON_ROWS: &'static str = "SELECT r FROM jsonb_array_elements($1::jsonb) AS r";

    fn json_field(k: usize, ty: SqlType) -> String {
        let ty = match ty {
            SqlType::Text => "TEXT",
            SqlType::Int => "BIGINT",
            SqlType::Real => "DOUBLE PRECISION",
        };
        format!("(r ->> {k})::{ty}")
    }

    const KEY_LIST: &'static str =
        "SELECT * FROM unnest($1::TEXT[], $2::BIGINT[]) AS k(device_id, bucket)";

    /// As a `TEXT[]` and a `BIGINT[]`.
    fn bind_keys<'q>(
        q: sqlx::query::Query<'q, Postgres, <Postgres as sqlx::Database>::Arguments>,
        keys: &[(&str, i64)],
    ) -> sqlx::query::Query<'q, Postgres, <Postgres as sqlx::Database>::Arguments> {
        let devices: Vec<String> = keys.iter().map(|&(d, _)| d.to_string()).collect();
        let buckets: Vec<i64> = keys.iter().map(|&(_, b)| b).collect();
        q.bind(devices).bind(buckets)
    }

    async fn insert_logs(
        pool: &PgPool,
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
        .execute(pool)
        .await?;
        Ok(res.rows_affected())
    }
}

/// First key of the advisory locks that order each device's events
/// (`'outp'` as a big-endian i32); the second key is the device id's hash.
const EVENT_LOCK_CLASS: i32 = 0x6f75_7470;
/// The advisory lock class of a device's rollup rows.
const ROLLUP_LOCK_CLASS: i32 = 0x6f75_7471;

/// One column of the rows, for `UNNEST`.
fn column<T>(rows: &[(&str, &TelemetrySample)], get: &fn(&TelemetrySample) -> T) -> Vec<T> {
    rows.iter().map(|&(_, s)| get(s)).collect()
}

/// The telemetry insert: one parameter per [`TELEMETRY_COLUMNS`] entry, in
/// order, an array each but `received_at`; rows in (device, seq) order, as
/// `insert_logs` orders them.
fn telemetry_insert() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        let (mut names, mut select, mut arrays, mut unnested) = (vec![], vec![], vec![], vec![]);
        for (k, c) in TELEMETRY_COLUMNS.iter().enumerate() {
            let (name, param) = (c.name(), format!("${}", k + 1));
            names.push(name);
            let ty = match c {
                TelemetryColumn::ReceivedAt => {
                    select.push(param);
                    continue;
                }
                TelemetryColumn::DeviceId | TelemetryColumn::Json(..) => "TEXT",
                TelemetryColumn::Int(..) => "BIGINT",
                TelemetryColumn::Float(..) => "DOUBLE PRECISION",
            };
            select.push(name.to_string());
            arrays.push(format!("{param}::{ty}[]"));
            unnested.push(name);
        }
        format!(
            // In order (locks taken in key order), a repeated seq's first
            // occurrence first: it is the one stored, as the rollups assume.
            "INSERT INTO telemetry ({}) SELECT {} FROM UNNEST({}) WITH ORDINALITY \
             AS b({}, ord) ORDER BY device_id, seq, ord ON CONFLICT (device_id, seq) DO NOTHING",
            names.join(", "),
            select.join(", "),
            arrays.join(", "),
            unnested.join(", "),
        )
    });
    &TEXT
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
