//! Device configuration: `GET|PUT …/{id}/config`, its version history, and
//! the workspace's default config.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use serde::Serialize;

use crate::store::{ConfigVersion, now_ms};
use crate::{AppState, device_config};

use super::auth::{Caller, Scope, Target, authorized_device};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::pagination::{Page, decode_cursor, page, parse_limit};
use super::params::{ApiJson, Params, format_time};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConfigView {
    version: u64,
    #[schema(value_type = Object)]
    config: serde_json::Value,
    created_at: String,
}

impl From<ConfigVersion> for ConfigView {
    fn from(c: ConfigVersion) -> Self {
        ConfigView {
            version: c.version,
            config: c.config,
            created_at: format_time(c.created_at),
        }
    }
}

/// The answer to a config write: the stored version, and what the operator
/// should know about it (keys the agent does not act on, likely typos).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WrittenConfig {
    #[serde(flatten)]
    stored: ConfigView,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CurrentConfig {
    #[serde(flatten)]
    current: ConfigView,
    /// The last version the agent reported as applied (0: none yet).
    applied_version: u64,
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/{device_id}/config",
    operation_id = "getDeviceConfig",
    tag = "config",
    params(DevicePath, VersionQuery),
    responses(
        (status = 200, description = "Success", body = CurrentConfig),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<CurrentConfig>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Device(&device_id))?;
    let version = match params.get("version") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| ApiError::bad_request("version must be a positive integer"))?,
        ),
    };
    let device = authorized_device(&state, &caller, Scope::DeviceRead, &device_id).await?;
    let config = state
        .store
        .get_config(&device.id, version)
        .await?
        .ok_or_else(|| ApiError::not_found("config version not found"))?;
    Ok(Json(CurrentConfig {
        current: config.into(),
        applied_version: device.config_applied_version,
    }))
}

#[utoipa::path(
    put,
    path = "/{workspace}/devices/v2/{device_id}/config",
    operation_id = "putDeviceConfig",
    tag = "config",
    params(DevicePath),
    request_body = Object,
    responses(
        (status = 200, description = "Success; `warnings` names keys the agent does not act on", body = WrittenConfig),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    request: Request,
) -> Result<Json<WrittenConfig>, ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Device(&device_id))?;
    let ApiJson(config) = ApiJson::<serde_json::Value>::from_request(request, &()).await?;
    device_config::validate(&config).map_err(ApiError::bad_request)?;
    authorized_device(&state, &caller, Scope::DeviceUpdate, &device_id).await?;
    write(&state, &caller.workspace, &device_id, config).await
}

/// Stores a validated config as the next version and pushes it live.
async fn write(
    state: &AppState,
    workspace: &str,
    device_id: &str,
    config: serde_json::Value,
) -> Result<Json<WrittenConfig>, ApiError> {
    let warnings = device_config::warnings(&config);
    let stored = state
        .store
        .put_config(workspace, device_id, &config, now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("device not found"))?;
    state.live.push_config(device_id, &stored);
    Ok(Json(WrittenConfig {
        stored: stored.into(),
        warnings,
    }))
}

/// Changes some keys of the current config: a JSON merge patch (RFC 7396;
/// `null` removes a key), stored as the next version. Content-Type
/// `application/merge-patch+json` or `application/json`. Two patches racing
/// on the same version: the later one is computed from the version it read.
#[utoipa::path(
    patch,
    path = "/{workspace}/devices/v2/{device_id}/config",
    operation_id = "patchDeviceConfig",
    tag = "config",
    params(DevicePath),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Success; `warnings` names keys the agent does not act on", body = WrittenConfig),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn patch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    request: Request,
) -> Result<Json<WrittenConfig>, ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Device(&device_id))?;
    let ApiJson(patch) = ApiJson::<serde_json::Value>::from_request(request, &()).await?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "a config patch must be a JSON object (RFC 7396 merge patch; null removes a key)",
        ));
    }
    let device = authorized_device(&state, &caller, Scope::DeviceUpdate, &device_id).await?;
    let mut config = state
        .store
        .get_config(&device.id, None)
        .await?
        .map(|c| c.config)
        .unwrap_or_else(device_config::default_config);
    device_config::merge_patch(&mut config, &patch);
    device_config::validate(&config).map_err(ApiError::bad_request)?;
    write(&state, &caller.workspace, &device_id, config).await
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/{device_id}/config/versions",
    operation_id = "listDeviceConfigVersions",
    tag = "config",
    params(DevicePath, ShortPageQuery),
    responses(
        (status = 200, description = "Success", body = Page<ConfigView>),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn versions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<Page<ConfigView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Device(&device_id))?;
    let limit = parse_limit(params.get("limit"), 20, 100)?;
    let before: Option<u64> = decode_cursor(params.get("cursor"))?;
    let device = authorized_device(&state, &caller, Scope::DeviceRead, &device_id).await?;
    let rows = state
        .store
        .list_configs(&device.id, before, limit + 1)
        .await?;
    Ok(Json(page(rows, limit, |c| c.version, ConfigView::from)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DefaultConfig {
    #[schema(value_type = Object)]
    config: serde_json::Value,
    /// Keys the agent acts on, with their rule.
    #[schema(value_type = Object)]
    known_keys: serde_json::Map<String, serde_json::Value>,
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/default-config",
    operation_id = "getDefaultConfig",
    tag = "config",
    params(WorkspacePath),
    responses(
        (status = 200, description = "Success", body = DefaultConfig),
        Unauthorized,
        Forbidden,
    )
)]
pub async fn default_config(caller: Caller) -> Result<Json<DefaultConfig>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    Ok(Json(DefaultConfig {
        config: device_config::default_config(),
        known_keys: device_config::KNOWN_KEYS
            .iter()
            .map(|(k, rule)| (k.to_string(), serde_json::Value::String(rule.to_string())))
            .collect(),
    }))
}
