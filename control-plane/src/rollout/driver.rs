//! The rollout driver: the thin I/O around the rules of `rollout.rs`. On
//! every replica a task wakes on reports and operator actions
//! ([`crate::AppState::rollout_wake`]) and at least every [`TICK`], loads
//! the running rollouts with their current wave tallied in the store (no
//! devices loaded), asks [`super::decide`] for each, and applies the
//! step as one conditional `UPDATE` — when two replicas decide the same
//! step, one applies it, and only that one pushes the newly released
//! devices their desired artifacts (its own sessions directly, the other
//! replicas' over the bus).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::AppState;
use crate::store::{Rollout, RunningRollout, StoreResult, now_ms};

/// How often running rollouts are looked at without a wake-up (wave
/// timeouts are judged at this resolution).
pub const TICK: Duration = Duration::from_secs(1);

/// Runs until `stop` resolves.
pub async fn run(state: Arc<AppState>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        match tick(&state, now_ms()).await {
            Ok(0) => {}
            // Something moved: look again at once (the next step may be due).
            Ok(_) => state.rollout_wake.notify_one(),
            Err(e) => tracing::warn!("rollout driver: {e}"),
        }
        tokio::select! {
            _ = state.rollout_wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = &mut stop => return,
        }
    }
}

/// One look at every running rollout at `now`; returns how many steps this
/// replica applied.
pub async fn tick(state: &AppState, now: i64) -> StoreResult<usize> {
    let mut applied = 0;
    for RunningRollout { rollout: r, wave } in state.store.running_rollouts().await? {
        let Some(t) = super::decide(&r.view(), &wave, now) else {
            continue;
        };
        if !state.store.apply_rollout_transition(&r.id, &t, now).await? {
            // Another replica applied this step (or an operator acted).
            continue;
        }
        applied += 1;
        tracing::info!(
            rollout = %r.id,
            artifact = %format!("{}@{}", r.artifact_name, r.artifact_version),
            state = %t.state,
            wave = t.current_wave + 1,
            reason = t.reason.as_deref().unwrap_or(""),
            "rollout step"
        );
        if let Some(wave) = t.starts_wave() {
            // The devices are read only now, to tell the new wave's.
            if let Some(full) = state.store.get_rollout(&r.workspace, &r.id).await? {
                release(state, &full, wave);
            }
        }
    }
    Ok(applied)
}

/// Pushes the desired artifacts to the live sessions of wave `wave`'s
/// devices, on every replica.
pub fn release(state: &AppState, r: &Rollout, wave: u32) {
    let devices: Vec<String> = r
        .devices
        .iter()
        .filter(|d| d.wave == wave)
        .map(|d| d.device_id.clone())
        .collect();
    state.live.push_desired(&devices);
}
