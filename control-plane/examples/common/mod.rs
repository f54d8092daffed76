//! What the store benchmarks (`storage_size`, `history`) share: a device to
//! write to, and the size of a SQLite store.

use std::sync::Arc;

use outpost_control_plane::store::*;

/// Workspace `bench` (if missing) and device `id` in it.
pub async fn bench_device(store: &Arc<dyn Store>, id: &str) {
    store
        .create_workspace(&Workspace {
            name: "bench".into(),
            features: vec![],
            created_at: 0,
        })
        .await
        .ok();
    store
        .create_device(&NewDevice {
            id: id.into(),
            workspace: "bench".into(),
            name: id.into(),
            description: String::new(),
            device_type: "edge".into(),
            install_id_hash: format!("x{id}"),
            install_id_expires_at: i64::MAX,
            workflow_id: None,
            offline_mode: false,
            config: serde_json::json!({}),
            created_at: 0,
            labels: Default::default(),
        })
        .await
        .unwrap();
}

/// The SQLite database file's size after its WAL has been checkpointed into
/// it and truncated (the WAL is a reused, fixed-size file: counting it would
/// measure the checkpoint interval, not the data).
pub async fn sqlite_size(dir: &std::path::Path) -> u64 {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("outpost.db"))
        .connect()
        .await
        .unwrap();
    // The store's own checkpointer may be in a pass: then this one is
    // answered busy at once, and tried again.
    for attempt in 1.. {
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if busy == 0 {
            break;
        }
        assert!(attempt < 200, "the checkpoint stayed blocked");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(conn);
    std::fs::metadata(dir.join("outpost.db")).unwrap().len()
}
