//! The replicas' bus: operator actions ([`LiveEvent`]) travel between
//! control-plane replicas through PostgreSQL's LISTEN/NOTIFY on the
//! `outpost_live` channel, so revoking a device on replica A cuts its streams
//! on replica B within the notification latency (milliseconds). Each replica
//! tags what it publishes with its own id and ignores its own notifications.
//! Only used with PostgreSQL; an embedded SQLite control plane is one replica.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;

use crate::AppState;
use crate::live::LiveEvent;

pub const CHANNEL: &str = "outpost_live";

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(flatten)]
    event: LiveEvent,
}

/// Starts publishing this replica's actions and applying the others'.
pub async fn start(state: Arc<AppState>, url: &str) -> Result<(), sqlx::Error> {
    let origin = crate::ids::new_internal_id();
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    state.live.set_publisher(tx);
    tokio::spawn(publish(pool, origin.clone(), rx));
    tokio::spawn(listen(state, listener, origin));
    Ok(())
}

async fn publish(pool: PgPool, origin: String, mut rx: mpsc::UnboundedReceiver<LiveEvent>) {
    while let Some(first) = rx.recv().await {
        // Everything queued meanwhile goes in one round: operator actions
        // first (a revocation must not wait behind telemetry signals), then
        // the telemetry signals merged per device (highest seq), so a slow
        // database makes the batches bigger instead of the queue longer.
        let mut urgent = Vec::new();
        let mut committed: HashMap<String, u64> = HashMap::new();
        let mut take = |event: LiveEvent| match event {
            LiveEvent::Committed { devices } => {
                for (device, seq) in devices {
                    let top = committed.entry(device).or_default();
                    *top = (*top).max(seq);
                }
            }
            other => urgent.push(other),
        };
        take(first);
        while let Ok(event) = rx.try_recv() {
            take(event);
        }
        let committed: Vec<(String, u64)> = committed.into_iter().collect();
        let signals =
            committed
                .chunks(crate::live::COMMITTED_PER_EVENT)
                .map(|c| LiveEvent::Committed {
                    devices: c.to_vec(),
                });
        for event in urgent.into_iter().chain(signals) {
            notify(&pool, &origin, event).await;
        }
    }
}

async fn notify(pool: &PgPool, origin: &str, event: LiveEvent) {
    let payload = match serde_json::to_string(&Envelope {
        origin: origin.to_string(),
        event,
    }) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("live event not encodable: {e}");
            return;
        }
    };
    // Retry briefly: a lost revocation would leave a stream open elsewhere.
    for attempt in 0..5u32 {
        match sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&payload)
            .execute(pool)
            .await
        {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(attempt, "live event not published yet: {e}");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}

async fn listen(state: Arc<AppState>, mut listener: PgListener, origin: String) {
    loop {
        // recv() reconnects by itself after a lost connection (and says so).
        let n = match listener.recv().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("replica bus: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let env: Envelope = match serde_json::from_str(n.payload()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("replica bus: unreadable event ({e})");
                continue;
            }
        };
        if env.origin == origin {
            continue;
        }
        tracing::debug!(event = ?env.event, "live event from another replica");
        match &env.event {
            LiveEvent::Config { device, version } => {
                match state.store.get_config(device, Some(*version)).await {
                    Ok(Some(c)) => state.live.push_config_local(device, &c),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%device, "config for a live push not read: {e}"),
                }
            }
            other => state.live.apply(other),
        }
    }
}
