//! Telemetry history reads (issue 18): one device with 30 days of samples
//! at 10 s and one at 1 s, written through the real store in the agent's
//! batch sizes (so the rollup tiers are kept as ingest keeps them); then the
//! API's `30d` (1-day buckets) and `7d` (1-hour buckets) views are read
//! repeatedly from the tiers, and once folded from raw for comparison; then
//! raw retention of 7 days runs (the longest delete batch is how long it
//! held the writer) and the 30d view is read again. One
//! JSON line per backend and device; SQLite always, PostgreSQL with
//! `OUTPOST_BENCH_DATABASE_URL`. `bench/history.sh` runs it.
//!
//!   cargo run --release -p outpost-control-plane --example history -- [READS]

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::*;
use outpost_control_plane::store::*;

const DAY: i64 = 86_400_000;
/// Where the 30 days end (any fixed time: the store takes the window).
const END: i64 = 1_767_225_600_000;

fn sample(seq: u64, interval_ms: i64) -> TelemetrySample {
    let ts = END - 30 * DAY + seq as i64 * interval_ms;
    // A reboot every ~5 days: the network counters restart.
    let since_boot = seq % (5 * DAY as u64 / interval_ms as u64);
    TelemetrySample {
        seq,
        timestamp: ts,
        cpu_percent: (seq % 100) as f32 * 0.93,
        memory_used_bytes: 3_000_000_000 + seq * 4096 % 1_000_000,
        memory_total_bytes: 8_000_000_000,
        swap_used_bytes: 0,
        swap_total_bytes: 2_000_000_000,
        disk_used_bytes: 40_000_000_000 + seq * 512,
        disk_total_bytes: 120_000_000_000,
        network_rx_bytes: since_boot * 123_456,
        network_tx_bytes: since_boot * 65_432,
        load_1m: 0.42,
        load_5m: 0.37,
        load_15m: 0.30,
        uptime_secs: since_boot * interval_ms as u64 / 1000,
        temperatures: ["Package id 0", "Core 0", "Core 1", "Composite"]
            .iter()
            .enumerate()
            .map(|(i, s)| Temperature {
                sensor: s.to_string(),
                celsius: 40.0 + i as f32 + (seq % 7) as f32,
            })
            .collect(),
        gpus: vec![],
    }
}

/// 30 days at `interval_ms` in batches of 256; samples per second.
async fn fill(store: &Arc<dyn Store>, device: &str, interval_ms: i64) -> (u64, f64) {
    let n = (30 * DAY / interval_ms) as u64;
    let t = Instant::now();
    for start in (1..=n).step_by(256) {
        let batch: Vec<_> = (start..(start + 256).min(n + 1))
            .map(|s| sample(s, interval_ms))
            .collect();
        store.insert_telemetry(device, &batch, 0).await.unwrap();
    }
    (n, n as f64 / t.elapsed().as_secs_f64())
}

/// The median and worst of `reads` reads of the window's buckets, in ms.
async fn read(
    store: &Arc<dyn Store>,
    device: &str,
    days: i64,
    bucket_ms: i64,
    reads: usize,
) -> (f64, f64, usize) {
    let mut took: Vec<Duration> = Vec::with_capacity(reads);
    let mut buckets = 0;
    for _ in 0..reads {
        let t = Instant::now();
        buckets = store
            .telemetry_buckets(device, END - days * DAY, END, bucket_ms)
            .await
            .unwrap()
            .len();
        took.push(t.elapsed());
    }
    took.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    (ms(took[took.len() / 2]), ms(took[took.len() - 1]), buckets)
}

async fn run(store: Arc<dyn Store>, backend: &str, reads: usize, size: impl AsyncSize) {
    for (device, interval_ms) in [("every10s", 10_000), ("every1s", 1_000)] {
        bench_device(&store, device).await;
        let before = size.bytes().await;
        let (n, sps) = fill(&store, device, interval_ms).await;
        let after = size.bytes().await;
        let (d30, d30_max, n30) = read(&store, device, 30, DAY, reads).await;
        let (d7, d7_max, n7) = read(&store, device, 7, 3_600_000, reads).await;
        // The same 30 days folded from the raw samples (a bucket size no
        // tier tiles): what every read cost before the tiers.
        let (raw30, _, _) = read(&store, device, 30, DAY + 1, 3).await;
        // Raw retention of 7 days over the 30: 23 days of raw rows go, in
        // batches, each its own transaction; the tiers keep answering.
        let t = Instant::now();
        let pruned = store
            .prune(&Retention {
                telemetry_before: END - 7 * DAY,
                minute_before: 0,
                hour_before: 0,
                logs_before: 0,
                events_before: 0,
            })
            .await
            .unwrap();
        let prune_took = t.elapsed();
        let (_, _, n30_after) = read(&store, device, 30, DAY, 1).await;
        let batch_ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
        println!(
            "{}",
            serde_json::json!({
                "backend": backend, "device": device, "samples": n,
                "samples_per_sec_single_writer": sps.round(),
                "bytes_per_sample_with_tiers": (after - before) as f64 / n as f64,
                "bytes_per_device_month": after - before,
                "30d_ms_median": d30, "30d_ms_max": d30_max, "30d_buckets": n30,
                "7d_ms_median": d7, "7d_ms_max": d7_max, "7d_buckets": n7,
                "30d_from_raw_ms_median": raw30, "reads": reads,
                "retention_rows": pruned.telemetry, "retention_batches": pruned.batches,
                "retention_longest_batch_ms": batch_ms(pruned.longest_batch),
                "retention_mean_batch_ms": batch_ms(prune_took.div_f64(pruned.batches.max(1) as f64)),
                "30d_buckets_after_retention": n30_after,
            })
        );
    }
}

/// How big the store is now.
trait AsyncSize {
    fn bytes(&self) -> impl std::future::Future<Output = u64>;
}

struct SqliteFile(std::path::PathBuf);

impl AsyncSize for SqliteFile {
    async fn bytes(&self) -> u64 {
        sqlite_size(&self.0).await
    }
}

struct PgTables(sqlx::PgPool);

impl AsyncSize for PgTables {
    /// The telemetry tables, their indexes and TOAST included.
    async fn bytes(&self) -> u64 {
        sqlx::query("VACUUM ANALYZE")
            .execute(&self.0)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT pg_total_relation_size('telemetry') + pg_total_relation_size('telemetry_1m') \
             + pg_total_relation_size('telemetry_1h')",
        )
        .fetch_one(&self.0)
        .await
        .unwrap();
        n as u64
    }
}

#[tokio::main]
async fn main() {
    let reads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    run(
        sqlite,
        "sqlite",
        reads,
        SqliteFile(dir.path().to_path_buf()),
    )
    .await;
    let Ok(base) = std::env::var("OUTPOST_BENCH_DATABASE_URL") else {
        return;
    };
    let url = outpost_control_plane::store::postgres::fresh_test_database(&base).await;
    let pg: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    run(pg, "postgres", reads, PgTables(pool)).await;
}
