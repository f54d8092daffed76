//! `/{workspace}/devices/v2` and `/{workspace}/devices/v2/{deviceId}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::ids;
use crate::store::{
    Device, DeviceListQuery, DeviceStatus, FEATURE_DEVICE_AIO, NewDevice, UnixMillis, now_ms,
};

use super::auth::{Caller, Scope, Target};
use super::error::ApiError;
use super::pagination::{Page, decode_cursor, page, parse_limit};
use super::params::{ApiJson, Params, format_time};

/// A device as the REST API shows it (RFDM field names).
#[derive(Debug, Serialize)]
pub struct DeviceView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: DeviceStatus,
    pub last_heartbeat: Option<String>,
    pub platform: Option<String>,
    pub platform_release: Option<String>,
    pub platform_version: Option<String>,
    pub architecture: Option<String>,
    pub hostname: Option<String>,
    pub agent_version: Option<String>,
    #[serde(rename = "type")]
    pub device_type: String,
    pub hardware: Hardware,
    pub tags: Vec<String>,
    pub created_at: String,
    pub enabled: bool,
    pub certificate_expires_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Hardware {
    pub processor: Option<String>,
    pub gpu: Option<String>,
    pub total_memory_mb: Option<u64>,
    pub total_disk_space_mb: Option<u64>,
}

impl DeviceView {
    pub fn new(d: Device, now: UnixMillis) -> Self {
        let status = d.status(now);
        let f = d.facts;
        let text = |pick: fn(&crate::store::DeviceFacts) -> &String| {
            f.as_ref().map(pick).filter(|s| !s.is_empty()).cloned()
        };
        let gpu = f.as_ref().and_then(|f| {
            let names: Vec<&str> = f.gpus.iter().map(|g| g.name.as_str()).collect();
            (!names.is_empty()).then(|| names.join(", "))
        });
        DeviceView {
            status,
            last_heartbeat: d.last_heartbeat.map(format_time),
            platform: text(|f| &f.os_name),
            platform_release: text(|f| &f.kernel_version),
            platform_version: text(|f| &f.os_version),
            architecture: text(|f| &f.architecture),
            hostname: text(|f| &f.hostname),
            agent_version: text(|f| &f.agent_version),
            hardware: Hardware {
                processor: text(|f| &f.cpu_model),
                gpu,
                total_memory_mb: f.as_ref().map(|f| f.memory_total_bytes / (1024 * 1024)),
                total_disk_space_mb: f.as_ref().map(|f| f.disk_total_bytes / (1024 * 1024)),
            },
            id: d.id,
            name: d.name,
            description: d.description,
            device_type: d.device_type,
            tags: Vec::new(),
            created_at: format_time(d.created_at),
            enabled: d.enabled,
            certificate_expires_at: d.cert_expires_at.map(format_time),
        }
    }
}

/// Looks a device up in the caller's workspace; another workspace's device
/// is indistinguishable from a missing one (404).
pub async fn load_device(state: &AppState, caller: &Caller, id: &str) -> Result<Device, ApiError> {
    if !ids::is_valid_device_id(id) {
        return Err(ApiError::not_found("device not found"));
    }
    state
        .store
        .get_device(&caller.workspace, id)
        .await?
        .ok_or_else(|| ApiError::not_found("device not found"))
}

pub async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
) -> Result<Json<DeviceView>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Device(&device_id))?;
    let device = load_device(&state, &caller, &device_id).await?;
    Ok(Json(DeviceView::new(device, now_ms())))
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    params: Params,
) -> Result<Json<Page<DeviceView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    let limit = parse_limit(params.get("limit"), 50, 500)?;
    let after: Option<(UnixMillis, String)> = decode_cursor(params.get("cursor"))?;
    let rows = state
        .store
        .list_devices(&DeviceListQuery {
            workspace: caller.workspace.clone(),
            after,
            limit: limit + 1,
        })
        .await?;
    let now = now_ms();
    Ok(Json(page(
        rows,
        limit,
        |d| (d.created_at, d.id.clone()),
        |d| DeviceView::new(d, now),
    )))
}

#[derive(Debug, Deserialize)]
pub struct CreateDevice {
    device_name: Option<String>,
    device_type: Option<String>,
    description: Option<String>,
    workflow_id: Option<String>,
    offline_mode: Option<bool>,
    #[serde(rename = "sourceDeviceId")]
    source_device_id: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedDevice {
    device_id: String,
    install_id: String,
    install_id_expires_at: String,
    /// Enrolls a box with the CA fingerprint pinned; paste it on the device.
    install_command: String,
    ca_fingerprint: String,
    server_url: String,
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateDevice>,
) -> Result<(StatusCode, Json<CreatedDevice>), ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    let name = body
        .device_name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("device_name is required"))?;
    if name.chars().count() > 128 {
        return Err(ApiError::bad_request(
            "device_name must be at most 128 characters",
        ));
    }
    let description = body.description.unwrap_or_default();
    if description.chars().count() > 1024 {
        return Err(ApiError::bad_request(
            "description must be at most 1024 characters",
        ));
    }
    let device_type = body.device_type.unwrap_or_else(|| "edge".into());
    match device_type.as_str() {
        "edge" => {}
        "ai1" => {
            let ws = state
                .store
                .get_workspace(&caller.workspace)
                .await?
                .ok_or_else(|| ApiError::not_found("workspace not found"))?;
            if !ws.features.iter().any(|f| f == FEATURE_DEVICE_AIO) {
                return Err(ApiError::forbidden(
                    "creating ai1 devices requires the deviceAio feature on this workspace",
                ));
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "device_type must be \"edge\" or \"ai1\", not {other:?}"
            )));
        }
    }
    // Not built yet (offline provisioning, workflows, duplication): refuse
    // plainly rather than ignore what the caller asked for.
    if body.offline_mode == Some(true)
        || body.workflow_id.is_some()
        || body.source_device_id.is_some()
    {
        return Err(ApiError::bad_request(
            "offline_mode, workflow_id and sourceDeviceId are not supported by this control plane version",
        ));
    }
    let now = now_ms();
    let id = ids::new_device_id();
    let install_id = ids::new_install_id();
    let expires = now + state.install_id_ttl.as_millis() as i64;
    state
        .store
        .create_device(&NewDevice {
            id: id.clone(),
            workspace: caller.workspace.clone(),
            name,
            description,
            device_type,
            install_id_hash: ids::hash_secret(&install_id),
            install_id_expires_at: expires,
            created_at: now,
        })
        .await?;
    let fingerprint = state.ca.fingerprint().to_string();
    let install_command = format!(
        "outpost-agent enroll --server {} --install-id {install_id} --ca-fingerprint {fingerprint}",
        state.public_url
    );
    Ok((
        StatusCode::CREATED,
        Json(CreatedDevice {
            device_id: id,
            install_id,
            install_id_expires_at: format_time(expires),
            install_command,
            ca_fingerprint: fingerprint,
            server_url: state.public_url.clone(),
        }),
    ))
}
