//! Bytes per stored sample and log line, on SQLite and (with
//! `OUTPOST_BENCH_DATABASE_URL`) PostgreSQL: writes N realistic samples and
//! lines for one device through the real store, in the agent's batch sizes,
//! and prints one JSON line per backend. `bench/storage.sh` runs it.
//!
//!   cargo run --release -p outpost-control-plane --example storage_size -- 100000

use std::sync::Arc;
use std::time::Instant;

mod common;

use common::*;
use outpost_control_plane::store::*;

fn sample(seq: u64) -> TelemetrySample {
    TelemetrySample {
        seq,
        timestamp: 1_700_000_000_000 + seq as i64 * 10_000,
        cpu_percent: (seq % 100) as f32 * 0.93,
        memory_used_bytes: 3_000_000_000 + seq * 4096 % 1_000_000,
        memory_total_bytes: 8_000_000_000,
        swap_used_bytes: 0,
        swap_total_bytes: 2_000_000_000,
        disk_used_bytes: 40_000_000_000 + seq * 512,
        disk_total_bytes: 120_000_000_000,
        network_rx_bytes: seq * 123_456,
        network_tx_bytes: seq * 65_432,
        load_1m: 0.42,
        load_5m: 0.37,
        load_15m: 0.30,
        uptime_secs: seq * 10,
        // A typical edge box: package, cores, NVMe, board.
        temperatures: [
            "Package id 0",
            "Core 0",
            "Core 1",
            "Core 2",
            "Core 3",
            "Composite",
            "acpitz",
        ]
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

fn line(seq: u64) -> LogRecord {
    LogRecord {
        seq,
        timestamp: 1_700_000_000_000 + seq as i64 * 100,
        service: "camera.service".into(),
        severity: if seq.is_multiple_of(10) {
            "warning"
        } else {
            "info"
        }
        .into(),
        message: format!(
            "frame {seq} processed in {} ms, 3 detections, queue depth 2",
            seq % 40
        ),
    }
}

/// Samples per second through one writer.
async fn fill_telemetry(store: &Arc<dyn Store>, n: u64) -> f64 {
    let t = Instant::now();
    for start in (1..=n).step_by(256) {
        let batch: Vec<_> = (start..(start + 256).min(n + 1)).map(sample).collect();
        store
            .insert_telemetry("benchdevice00000000", &batch, 0)
            .await
            .unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn fill_logs(store: &Arc<dyn Store>, n: u64) -> f64 {
    let t = Instant::now();
    for start in (1..=n).step_by(512) {
        let batch: Vec<_> = (start..(start + 512).min(n + 1)).map(line).collect();
        store
            .insert_logs("benchdevice00000000", &batch, 0)
            .await
            .unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    // SQLite: the database file's growth.
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    bench_device(&sqlite, "benchdevice00000000").await;
    let s0 = sqlite_size(dir.path()).await;
    let sps = fill_telemetry(&sqlite, n).await;
    let s1 = sqlite_size(dir.path()).await;
    let lps = fill_logs(&sqlite, n).await;
    drop(sqlite);
    let s2 = sqlite_size(dir.path()).await;
    println!(
        "{}",
        serde_json::json!({
            "backend": "sqlite", "samples": n, "log_lines": n,
            "bytes_per_sample": (s1 - s0) as f64 / n as f64,
            "bytes_per_line": (s2 - s1) as f64 / n as f64,
            "samples_per_sec_single_writer": sps.round(), "lines_per_sec_single_writer": lps.round(),
        })
    );
    let Ok(base) = std::env::var("OUTPOST_BENCH_DATABASE_URL") else {
        return;
    };
    let url = outpost_control_plane::store::postgres::fresh_test_database(&base).await;
    let pg = PgStore::connect(&url).await.unwrap();
    let pg: Arc<dyn Store> = Arc::new(pg);
    bench_device(&pg, "benchdevice00000000").await;
    let sps = fill_telemetry(&pg, n).await;
    let lps = fill_logs(&pg, n).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    let size = |t: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT pg_total_relation_size($1::regclass)")
                .bind(t)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (tel, logs) = (size("telemetry").await, size("logs").await);
    println!(
        "{}",
        serde_json::json!({
            "backend": "postgres", "samples": n, "log_lines": n,
            "bytes_per_sample": tel as f64 / n as f64,
            "bytes_per_line": logs as f64 / n as f64,
            "samples_per_sec_single_writer": sps.round(), "lines_per_sec_single_writer": lps.round(),
        })
    );
}
