//! `/{workspace}/devices/v2/rollouts`: releasing an artifact version to the
//! devices a label selector matches, wave by wave (docs/artifacts.md). The
//! rules are `crate::rollout`; the driver moves running rollouts on.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use outpost_common::artifact::{self, PublicKey};
use serde::{Deserialize, Serialize};

use crate::labels::{MAX_LABELS, Selector};
use crate::rollout::{self, Action, DeviceState, RolloutState};
use crate::store::{
    ARTIFACT_READY, DeviceListQuery, NewRollout, Rollout, RolloutListQuery, RolloutSummary,
    StoreError, now_ms,
};
use crate::{AppState, ids};

use super::auth::{Caller, Scope, Target};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::pagination::{Page, decode_cursor, page, parse_limit};
use super::params::{ApiJson, Params, format_time};

/// Devices one rollout may hold.
const MAX_ROLLOUT_DEVICES: usize = 100_000;
/// Devices read per store page while matching the selector.
const PAGE: u32 = 500;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// `name@version` of a ready artifact.
    artifact: String,
    /// Label selectors (`key=value` or `key`), all must match; at least one.
    selector: Vec<String>,
    /// Cumulative wave sizes (`1`, `25%`); the last must be `100%`.
    /// Default `["100%"]`.
    waves: Option<Vec<String>>,
    /// Failures (`failed`, `rolled_back`) a wave may have before the
    /// rollout pauses. Default 0.
    max_failures: Option<u32>,
    /// How long a wave may take before the next starts without its
    /// unfinished devices (`10m`, `90s`). Default `10m`.
    wave_timeout: Option<String>,
    /// Pause for `approve` after each wave but the last.
    approve_waves: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WaveView {
    /// 1-based.
    index: u32,
    /// The spec as given (`1`, `25%`).
    spec: String,
    /// Devices in this wave.
    size: u64,
    /// `done`, `current`, `waiting` or `skipped` (after an abort).
    state: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutDeviceView {
    device_id: String,
    name: String,
    /// 1-based.
    wave: u32,
    /// `pending`, `downloading`, `installing`, `verifying`, `succeeded`,
    /// `failed` or `rolled_back`.
    state: String,
    error: Option<String>,
    updated_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutView {
    id: String,
    /// `name@version`.
    artifact: String,
    /// `running`, `paused`, `completed` or `aborted`.
    state: String,
    /// Why it is paused (`awaiting approval`, the failures) or aborted.
    reason: Option<String>,
    selector: Vec<String>,
    waves: Vec<WaveView>,
    max_failures: u32,
    wave_timeout: String,
    approve_waves: bool,
    /// 1-based index of the newest started wave.
    current_wave: u32,
    created_at: String,
    updated_at: String,
    /// Its devices per state: every device state, zeros included.
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    device_counts: BTreeMap<&'static str, u64>,
    /// Devices in the rollout.
    devices_total: u64,
    /// Every device, in wave order: in `GET rollouts/{id}` only (the list
    /// has the counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<Vec<RolloutDeviceView>>,
}

impl RolloutView {
    /// `counts`: (0-based wave, state, devices).
    fn build(
        r: Rollout,
        counts: &[(u32, DeviceState, u64)],
        devices: Option<Vec<RolloutDeviceView>>,
    ) -> Self {
        let waves = r
            .waves
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let i = i as u32;
                let state = if i < r.current_wave || r.state == RolloutState::Completed {
                    "done"
                } else if i == r.current_wave {
                    "current"
                } else if r.state == RolloutState::Aborted {
                    "skipped"
                } else {
                    "waiting"
                };
                WaveView {
                    index: i + 1,
                    spec: spec.clone(),
                    size: counts
                        .iter()
                        .filter(|(w, _, _)| *w == i)
                        .map(|(_, _, n)| n)
                        .sum(),
                    state,
                }
            })
            .collect();
        let mut device_counts: BTreeMap<&'static str, u64> =
            DeviceState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for (_, state, n) in counts {
            *device_counts.entry(state.as_str()).or_default() += n;
        }
        RolloutView {
            artifact: format!("{}@{}", r.artifact_name, r.artifact_version),
            state: r.state.as_str().to_string(),
            waves,
            max_failures: r.max_failures,
            wave_timeout: rollout::format_wave_timeout(r.wave_timeout_ms),
            approve_waves: r.approve_waves,
            current_wave: r.current_wave + 1,
            created_at: format_time(r.created_at),
            updated_at: format_time(r.updated_at),
            devices_total: counts.iter().map(|(_, _, n)| n).sum(),
            device_counts,
            devices,
            id: r.id,
            reason: r.reason,
            selector: r.selector,
        }
    }

    /// A rollout with its devices (`GET rollouts/{id}`, the actions).
    fn new(mut r: Rollout) -> Self {
        let mut counts: Vec<(u32, DeviceState, u64)> = Vec::new();
        for d in &r.devices {
            match counts
                .iter_mut()
                .find(|(w, s, _)| *w == d.wave && *s == d.state)
            {
                Some(c) => c.2 += 1,
                None => counts.push((d.wave, d.state, 1)),
            }
        }
        let devices = std::mem::take(&mut r.devices)
            .into_iter()
            .map(|d| RolloutDeviceView {
                device_id: d.device_id,
                name: d.name,
                wave: d.wave + 1,
                state: d.state.as_str().to_string(),
                error: d.error,
                updated_at: format_time(d.updated_at),
            })
            .collect();
        Self::build(r, &counts, Some(devices))
    }

    /// A listed rollout: the counts, not the devices.
    fn summary(s: RolloutSummary) -> Self {
        Self::build(s.rollout, &s.counts, None)
    }
}

/// A rollout's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct RolloutPath {
    workspace: String,
    rollout_id: String,
}

fn conflict(m: impl Into<String>) -> ApiError {
    ApiError::Conflict(m.into())
}

#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/rollouts",
    operation_id = "createRollout",
    tag = "artifacts",
    params(WorkspacePath),
    request_body = CreateRollout,
    responses(
        (status = 201, description = "Created; its first wave has started", body = RolloutView),
        BadRequest,
        Unauthorized,
        Forbidden,
        Conflict,
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    request: Request,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    // Authorisation before the body is read: a key without the scope gets
    // 403 whatever it sends, never a 400 about the body.
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    let ApiJson(body) = ApiJson::<CreateRollout>::from_request(request, &()).await?;
    let (name, version) = outpost_common::artifact::parse_id(&body.artifact)
        .map_err(|e| ApiError::bad_request(format!("artifact: {e}")))?;
    if body.selector.is_empty() {
        return Err(ApiError::bad_request(
            "selector: at least one label selector (key=value or key)",
        ));
    }
    if body.selector.len() > MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "selector: at most {MAX_LABELS} label selectors"
        )));
    }
    let selectors = body
        .selector
        .iter()
        .map(|s| Selector::parse(s).map_err(|e| ApiError::bad_request(format!("selector: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let wave_specs = body.waves.unwrap_or_else(|| vec!["100%".into()]);
    let specs = rollout::parse_waves(&wave_specs).map_err(ApiError::bad_request)?;
    let wave_timeout_ms = match body.wave_timeout.as_deref() {
        Some(t) => rollout::parse_wave_timeout(t).map_err(ApiError::bad_request)?,
        None => rollout::DEFAULT_WAVE_TIMEOUT_MS,
    };
    let artifact = state
        .store
        .get_artifact(&caller.workspace, &name, &version)
        .await?
        .ok_or_else(|| ApiError::bad_request(format!("artifact {name}@{version} not found")))?;
    if artifact.state != ARTIFACT_READY {
        return Err(ApiError::bad_request(format!(
            "artifact {name}@{version} is not ready (its payload has not been uploaded)"
        )));
    }
    // Its signature again, against the keys trusted now: an artifact signed
    // by a key removed since it was published is not released.
    let trusted: Vec<PublicKey> = state
        .store
        .list_publisher_keys(&caller.workspace)
        .await?
        .into_iter()
        .filter_map(|k| k.public_key.parse().ok())
        .collect();
    let no_longer = |why: String| {
        ApiError::bad_request(format!(
            "artifact {name}@{version} is signed by {}, which {why}",
            artifact.public_key
        ))
    };
    let sig = artifact::Signature {
        public_key: artifact
            .public_key
            .parse()
            .map_err(|e| no_longer(format!("is not a valid key: {e}")))?,
        signature: artifact.signature.clone(),
    };
    artifact::verify(&artifact.manifest_json, &sig, &trusted).map_err(|e| match e {
        artifact::ArtifactError::Untrusted => no_longer(format!(
            "this workspace no longer trusts (publisher-key add --workspace {} KEY on the \
             control plane's host trusts it again)",
            caller.workspace
        )),
        e => no_longer(format!("does not verify its manifest: {e}")),
    })?;
    let now = now_ms();
    let devices = matching_devices(&state, &caller.workspace, selectors, now).await?;
    if devices.is_empty() {
        return Err(ApiError::bad_request(format!(
            "no device matches the selector {}",
            body.selector.join(",")
        )));
    }
    let id = format!("ro_{}", ids::new_device_id());
    let (kept, assigned) = rollout::assign_waves(&id, &devices, &specs);
    let new = NewRollout {
        id: id.clone(),
        workspace: caller.workspace.clone(),
        artifact_name: name,
        artifact_version: version,
        selector: body.selector,
        waves: kept.iter().map(|s| s.to_string()).collect(),
        max_failures: body.max_failures.unwrap_or(0),
        wave_timeout_ms,
        approve_waves: body.approve_waves.unwrap_or(false),
        created_at: now,
        devices: assigned,
    };
    match state.store.create_rollout(&new).await {
        Ok(()) => {}
        Err(StoreError::Conflict(m)) => return Err(conflict(m)),
        Err(e) => return Err(e.into()),
    }
    caller.audit_target(&id);
    let r = load(&state, &caller.workspace, &id).await?;
    rollout::driver::release(&state, &r, 0);
    state.rollout_wake.notify_one();
    Ok((StatusCode::CREATED, Json(RolloutView::new(r))))
}

/// Every live device of the workspace the selectors match, at `now`.
async fn matching_devices(
    state: &AppState,
    workspace: &str,
    labels: Vec<Selector>,
    now: i64,
) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = state
            .store
            .list_devices(&DeviceListQuery {
                workspace: workspace.to_string(),
                after: after.clone(),
                limit: PAGE,
                status: None,
                device_type: None,
                name: None,
                labels: labels.clone(),
                now,
            })
            .await?;
        let full = page.len() as u32 == PAGE;
        after = page.last().map(|d| (d.created_at, d.id.clone()));
        out.extend(page.into_iter().map(|d| d.id));
        if out.len() > MAX_ROLLOUT_DEVICES {
            return Err(ApiError::bad_request(format!(
                "the selector matches more than {MAX_ROLLOUT_DEVICES} devices"
            )));
        }
        if !full {
            return Ok(out);
        }
    }
}

async fn load(state: &AppState, workspace: &str, id: &str) -> Result<Rollout, ApiError> {
    let valid = id.len() <= 64 && id.strip_prefix("ro_").is_some_and(ids::is_valid_device_id);
    if !valid {
        return Err(ApiError::not_found("rollout not found"));
    }
    state
        .store
        .get_rollout(workspace, id)
        .await?
        .ok_or_else(|| ApiError::not_found("rollout not found"))
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/rollouts",
    operation_id = "listRollouts",
    tag = "artifacts",
    params(WorkspacePath, PageQuery),
    responses(
        (status = 200, description = "Success, newest first; each rollout with its \
            `device_counts` and `devices_total`, not its `devices`", body = Page<RolloutView>),
        BadRequest,
        Unauthorized,
        Forbidden,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    params: Params,
) -> Result<Json<Page<RolloutView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    let limit = parse_limit(params.get("limit"), 50, 500)?;
    let before: Option<(i64, String)> = decode_cursor(params.get("cursor"))?;
    let rows = state
        .store
        .list_rollouts(&RolloutListQuery {
            workspace: caller.workspace.clone(),
            before,
            limit: limit + 1,
        })
        .await?;
    Ok(Json(page(
        rows,
        limit,
        |s| (s.rollout.created_at, s.rollout.id.clone()),
        RolloutView::summary,
    )))
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/rollouts/{rollout_id}",
    operation_id = "getRollout",
    tag = "artifacts",
    params(RolloutPath),
    responses(
        (status = 200, description = "Success", body = RolloutView),
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    Ok(Json(RolloutView::new(
        load(&state, &caller.workspace, &id).await?,
    )))
}

/// An operator action: decided by the rules from the stored rollout, then
/// applied conditionally (a rollout that moved meanwhile is decided again).
async fn act(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: Action,
) -> Result<Json<RolloutView>, ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    for _ in 0..3 {
        let r = load(state, &caller.workspace, id).await?;
        let now = now_ms();
        let t = rollout::act(&r.view(), &r.wave_tally(), action, now).map_err(|e| conflict(e.0))?;
        if state.store.apply_rollout_transition(id, &t, now).await? {
            caller.audit_target(id);
            if let Some(wave) = t.starts_wave() {
                rollout::driver::release(state, &r, wave);
            }
            if t.state == RolloutState::Aborted {
                // Released devices that had not started are no longer
                // given this version (an older release, or nothing, is
                // desired again): tell their live sessions now, before
                // they start on it.
                let devices: Vec<String> = r
                    .devices
                    .iter()
                    .filter(|d| d.wave <= r.current_wave && d.state == DeviceState::Pending)
                    .map(|d| d.device_id.clone())
                    .collect();
                state.live.push_desired(&devices);
            }
            state.rollout_wake.notify_one();
            return Ok(Json(RolloutView::new(
                load(state, &caller.workspace, id).await?,
            )));
        }
    }
    Err(conflict("the rollout keeps changing; try again"))
}

/// Pauses a running rollout (no new wave starts; devices already asked go on).
/// 409 when the rollout's state does not allow it (the message names it).
#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/rollouts/{rollout_id}/pause",
    operation_id = "pauseRollout",
    tag = "artifacts",
    params(RolloutPath),
    responses(
        (status = 200, description = "Done", body = RolloutView),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
    )
)]
pub async fn pause(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    act(&state, &caller, &id, Action::Pause).await
}

/// Resumes a paused rollout, accepting the current wave's failures so far.
/// 409 when the rollout's state does not allow it (the message names it).
#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/rollouts/{rollout_id}/resume",
    operation_id = "resumeRollout",
    tag = "artifacts",
    params(RolloutPath),
    responses(
        (status = 200, description = "Done", body = RolloutView),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
    )
)]
pub async fn resume(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    act(&state, &caller, &id, Action::Resume).await
}

/// Aborts a running or paused rollout (devices that started keep the artifact).
/// 409 when the rollout's state does not allow it (the message names it).
#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/rollouts/{rollout_id}/abort",
    operation_id = "abortRollout",
    tag = "artifacts",
    params(RolloutPath),
    responses(
        (status = 200, description = "Done", body = RolloutView),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
    )
)]
pub async fn abort(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    act(&state, &caller, &id, Action::Abort).await
}

/// Starts the next wave of a rollout paused awaiting approval.
/// 409 when the rollout's state does not allow it (the message names it).
#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/rollouts/{rollout_id}/approve",
    operation_id = "approveRollout",
    tag = "artifacts",
    params(RolloutPath),
    responses(
        (status = 200, description = "Done", body = RolloutView),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
    )
)]
pub async fn approve(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    act(&state, &caller, &id, Action::Approve).await
}
