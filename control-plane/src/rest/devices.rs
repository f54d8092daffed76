//! `/{workspace}/devices/v2` and `/{workspace}/devices/v2/{deviceId}`:
//! list, create, get, update, delete, connection reset, new install ID.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::labels::{self, Labels, MAX_LABELS, Selector};
use crate::live::Cut;
use crate::store::{
    Device, DeviceListQuery, DevicePatch, DeviceStatus, EnrollmentState, FEATURE_DEVICE_AIO,
    FEATURE_LITE_MODE, NewDevice, UnixMillis, now_ms,
};
use crate::{AppState, admin, device_config, ids};

use super::auth::{Caller, Scope, Target, authorized_device};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::pagination::{Page, decode_cursor, page, parse_limit};
use super::params::{ApiJson, Params, check_text, format_time};
use super::telemetry::SampleView;

/// A device as the REST API shows it (RFDM field names).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: DeviceStatus,
    /// `enrolled`, `pending` (waiting for the box to enroll) or
    /// `install_id_expired` (waiting, but its install ID has expired: issue
    /// a new one). An Outpost extension.
    pub enrollment: EnrollmentState,
    /// While the device waits for enrollment: when its install ID expires.
    pub install_id_expires_at: Option<String>,
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
    /// Kubernetes-style `key: value` labels (docs/provisioning.md).
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: crate::labels::Labels,
    pub created_at: String,
    pub enabled: bool,
    pub certificate_expires_at: Option<String>,
    pub workflow_id: Option<String>,
    pub offline_mode: bool,
    pub config_version: u64,
    pub config_applied_version: u64,
    /// The newest stored sample (an Outpost extension: the fleet table's
    /// CPU, memory and disk). Only on list and get; null before the first.
    pub latest_telemetry: Option<SampleView>,
    /// What runs on the box, artifact name → version, as its agent last
    /// said (docs/artifacts.md). Only on list and get.
    pub artifacts: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Hardware {
    pub processor: Option<String>,
    pub gpu: Option<String>,
    pub total_memory_mb: Option<u64>,
    pub total_disk_space_mb: Option<u64>,
}

impl DeviceView {
    pub fn new(d: Device, now: UnixMillis) -> Self {
        // A disabled device's streams are being cut (within a second): it
        // is not online, also in the answer to the PATCH that disabled it.
        let status = match d.status(now) {
            DeviceStatus::Online if !d.enabled => DeviceStatus::Offline,
            s => s,
        };
        let enrollment = d.enrollment(now);
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
            enrollment,
            install_id_expires_at: d.awaiting_enrollment_until.map(format_time),
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
            labels: d.labels,
            created_at: format_time(d.created_at),
            enabled: d.enabled,
            certificate_expires_at: d.cert_expires_at.map(format_time),
            workflow_id: d.workflow_id,
            offline_mode: d.offline_mode,
            config_version: d.config_version,
            config_applied_version: d.config_applied_version,
            latest_telemetry: None,
            artifacts: Default::default(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/{device_id}",
    operation_id = "getDevice",
    tag = "devices",
    params(DevicePath),
    responses(
        (status = 200, description = "Success", body = DeviceView),
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
) -> Result<Json<DeviceView>, ApiError> {
    let device = authorized_device(&state, &caller, Scope::DeviceRead, &device_id).await?;
    let mut views = [DeviceView::new(device, now_ms())];
    with_latest_telemetry(&state, &mut views).await?;
    let [view] = views;
    Ok(Json(view))
}

/// Fills each view's `latest_telemetry` and `artifacts` (one store query
/// each for all).
async fn with_latest_telemetry(state: &AppState, views: &mut [DeviceView]) -> Result<(), ApiError> {
    let ids: Vec<String> = views.iter().map(|v| v.id.clone()).collect();
    let mut latest: std::collections::HashMap<String, _> = state
        .store
        .latest_telemetry(&ids)
        .await?
        .into_iter()
        .collect();
    for v in views.iter_mut() {
        v.latest_telemetry = latest.remove(&v.id).map(SampleView::from);
    }
    for (device, name, version) in state.store.device_artifacts(&ids).await? {
        if let Some(v) = views.iter_mut().find(|v| v.id == device) {
            v.artifacts.insert(name, version);
        }
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2",
    operation_id = "listDevices",
    tag = "devices",
    params(WorkspacePath, PageQuery, ListQuery),
    responses(
        (status = 200, description = "Success", body = Page<DeviceView>),
        BadRequest,
        Unauthorized,
        Forbidden,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    params: Params,
    uri: axum::http::Uri,
) -> Result<Json<Page<DeviceView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    let labels = label_selectors(&uri)?;
    let limit = parse_limit(params.get("limit"), 50, 500)?;
    let after: Option<(UnixMillis, String)> = decode_cursor(params.get("cursor"))?;
    let status = match params.get("status") {
        None => None,
        Some("online") => Some(DeviceStatus::Online),
        Some("offline") => Some(DeviceStatus::Offline),
        Some("unknown") => Some(DeviceStatus::Unknown),
        Some(_) => {
            return Err(ApiError::bad_request(
                "status must be online, offline or unknown",
            ));
        }
    };
    let device_type = match params.get("type") {
        None => None,
        Some(t @ ("edge" | "ai1")) => Some(t.to_string()),
        Some(_) => return Err(ApiError::bad_request("type must be edge or ai1")),
    };
    let now = now_ms();
    let rows = state
        .store
        .list_devices(&DeviceListQuery {
            workspace: caller.workspace.clone(),
            after,
            limit: limit + 1,
            status,
            device_type,
            name: params.get("name").map(String::from),
            labels,
            now,
        })
        .await?;
    let mut page = page(
        rows,
        limit,
        |d| (d.created_at, d.id.clone()),
        |d| DeviceView::new(d, now),
    );
    with_latest_telemetry(&state, &mut page.data).await?;
    Ok(Json(page))
}

/// Every `label=` of the query string (repeatable: all must match), parsed.
fn label_selectors(uri: &axum::http::Uri) -> Result<Vec<Selector>, ApiError> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    let selectors = pairs
        .0
        .iter()
        .filter(|(k, _)| k == "label")
        .map(|(_, v)| {
            Selector::parse(v).map_err(|e| ApiError::bad_request(format!("label filter: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if selectors.len() > MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LABELS} label filters"
        )));
    }
    Ok(selectors)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateDevice {
    /// 1 to 128 characters, no control characters.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 128)]
    device_name: Option<String>,
    // `edge` (default) or `ai1` (the enum's description; a doc comment
    // here would make utoipa wrap it in an allOf with an object).
    #[schema(inline, value_type = Option<super::openapi::TypeParam>)]
    device_type: Option<String>,
    /// At most 1024 characters, no control characters.
    #[schema(max_length = 1024)]
    description: Option<String>,
    /// At most 256 bytes, no control characters.
    #[schema(max_length = 256)]
    workflow_id: Option<String>,
    offline_mode: Option<bool>,
    #[serde(rename = "sourceDeviceId")]
    source_device_id: Option<String>,
    /// Kubernetes-style labels, at most 32.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    labels: Option<Labels>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedDevice {
    device_id: String,
    install_id: String,
    install_id_expires_at: String,
    /// Enrolls a box with the CA fingerprint pinned; paste it on the device.
    install_command: String,
    /// What the control plane lacks for a one-line `curl … | sh` install.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    ca_fingerprint: String,
    server_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    offline_provisioning_qr_payload: Option<String>,
}

/// Lowercase, runs of non-alphanumerics collapsed to `-`, trimmed.
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2",
    operation_id = "createDevice",
    tag = "devices",
    params(WorkspacePath),
    request_body = CreateDevice,
    responses(
        (status = 201, description = "Created", body = CreatedDevice),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    request: Request,
) -> Result<(StatusCode, Json<CreatedDevice>), ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    // The body only once the caller may write (scope before validation).
    let ApiJson(body) = ApiJson::<CreateDevice>::from_request(request, &()).await?;
    let labels = body.labels.unwrap_or_default();
    labels::validate(&labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
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
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "device_name must not contain control characters",
        ));
    }
    let description = body.description.unwrap_or_default();
    check_text("description", &description)?;
    if description.chars().count() > 1024 {
        return Err(ApiError::bad_request(
            "description must be at most 1024 characters",
        ));
    }
    let workflow_id = body
        .workflow_id
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty());
    if let Some(w) = &workflow_id {
        check_text("workflow_id", w)?;
    }
    if workflow_id.as_ref().is_some_and(|w| w.len() > 256) {
        return Err(ApiError::bad_request(
            "workflow_id must be at most 256 characters",
        ));
    }
    let device_type = body.device_type.unwrap_or_else(|| "edge".into());
    if device_type != "edge" && device_type != "ai1" {
        return Err(ApiError::bad_request(format!(
            "device_type must be \"edge\" or \"ai1\", not {device_type:?}"
        )));
    }
    let offline_mode = body.offline_mode.unwrap_or(false);
    let ws = state
        .store
        .get_workspace(&caller.workspace)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace not found"))?;
    let has = |f: &str| ws.features.iter().any(|x| x == f);
    if device_type == "ai1" && !has(FEATURE_DEVICE_AIO) {
        return Err(ApiError::forbidden(
            "creating ai1 devices requires the deviceAio feature on this workspace",
        ));
    }
    if offline_mode {
        if device_type != "ai1" {
            return Err(ApiError::bad_request(
                "offline_mode is only valid for ai1 devices",
            ));
        }
        if !has(FEATURE_LITE_MODE) {
            return Err(ApiError::forbidden(
                "offline_mode requires the roboflowLiteMode feature on this workspace",
            ));
        }
    }
    let config = match &body.source_device_id {
        Some(source) => source_config(&state, &caller.workspace, source).await?,
        None => device_config::default_config(),
    };
    if device_type == "ai1"
        && workflow_id.is_none()
        && body.source_device_id.is_none()
        && !slugify(&name).chars().any(|c| c.is_ascii_alphanumeric())
    {
        return Err(ApiError::bad_request(
            "device_name must contain at least one letter or digit (its slug names the ai1 device)",
        ));
    }

    let now = now_ms();
    let id = ids::new_device_id();
    caller.audit_target(&id);
    let install = fresh_install_id(&state, now);
    let (install_id, expires) = (install.plain.clone(), install.expires_at);
    state
        .store
        .create_device(&NewDevice {
            id: id.clone(),
            workspace: caller.workspace.clone(),
            name,
            description,
            device_type: device_type.clone(),
            workflow_id,
            offline_mode,
            config,
            install_id_hash: install.hash,
            install_id_expires_at: expires,
            created_at: now,
            labels,
        })
        .await?;
    let offline_provisioning_qr_payload = (device_type == "ai1" && offline_mode)
        .then(|| qr_payload(&state, &caller.workspace, &id, &install_id));
    let (install_command, hint) = install_command(&state, &caller.workspace, &install_id).await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedDevice {
            install_command,
            hint,
            device_id: id,
            install_id,
            install_id_expires_at: format_time(expires),
            ca_fingerprint: state.ca.fingerprint().to_string(),
            server_url: state.public_url.clone(),
            offline_provisioning_qr_payload,
        }),
    ))
}

/// The config a duplicate starts from: the source's current config. The
/// source must be in the caller's workspace (403 otherwise) and exist (404).
async fn source_config(
    state: &AppState,
    workspace: &str,
    source: &str,
) -> Result<serde_json::Value, ApiError> {
    if !ids::is_valid_device_id(source) {
        return Err(ApiError::not_found("source device not found"));
    }
    match state.store.device_workspace(source).await? {
        None => Err(ApiError::not_found("source device not found")),
        Some(ws) if ws != workspace => Err(ApiError::forbidden(
            "sourceDeviceId belongs to another workspace",
        )),
        Some(_) => Ok(state
            .store
            .get_config(source, None)
            .await?
            .map(|c| c.config)
            .unwrap_or_else(device_config::default_config)),
    }
}

/// A fresh install ID: the plaintext (shown once), its stored hash and expiry.
struct InstallId {
    plain: String,
    hash: String,
    expires_at: UnixMillis,
}

fn fresh_install_id(state: &AppState, now: UnixMillis) -> InstallId {
    let plain = ids::new_install_id();
    InstallId {
        hash: ids::hash_secret(&plain),
        expires_at: now + state.install_id_ttl.as_millis() as i64,
        plain,
    }
}

/// The command that installs and enrolls a box, CA fingerprint pinned, and
/// a hint when it cannot be the one-liner: `curl -fsSL
/// PUBLIC_REST_URL/install.sh | sudo sh -s -- …` needs `--public-rest-url`
/// and an agent tarball to download; without them it is run in an unpacked
/// agent release (`systemd/install.sh`, docs/install.md).
pub(super) async fn install_command(
    state: &AppState,
    workspace: &str,
    install_id: &str,
) -> (String, Option<String>) {
    grant_install_command(state, workspace, "--install-id", install_id).await
}

/// As [`install_command`], for a grant given as `flag secret`
/// (`--install-id inst_…` or `--enroll-token oet_…`). One `--publisher-key`
/// per publisher key the workspace trusts now (docs/artifacts.md).
pub(super) async fn grant_install_command(
    state: &AppState,
    workspace: &str,
    flag: &str,
    secret: &str,
) -> (String, Option<String>) {
    let mut args = format!(
        "--server {} {flag} {secret} --ca-fingerprint {}",
        state.public_url,
        state.ca.fingerprint()
    );
    match state.store.list_publisher_keys(workspace).await {
        Ok(keys) => {
            for k in keys {
                // Re-rendered from the parsed key: only `ed25519:` and
                // base64 characters reach the shell command.
                if let Ok(k) = k.public_key.parse::<outpost_common::artifact::PublicKey>() {
                    args.push_str(&format!(" --publisher-key {k}"));
                }
            }
        }
        Err(e) => tracing::warn!("install command without publisher keys: {e}"),
    }
    let dist = state.dist.clone();
    let tarballs = tokio::task::spawn_blocking(move || dist.index().len())
        .await
        .unwrap_or(0);
    let dir = state.dist.dir().display();
    let missing = match (&state.public_rest_url, tarballs) {
        (Some(url), 1..) => {
            return (
                format!("curl -fsSL {url}/install.sh | sudo sh -s -- {args}"),
                None,
            );
        }
        (Some(_), 0) => format!("no agent tarball in {dir} (scripts/release.sh --into {dir})"),
        (None, 1..) => {
            "no --public-rest-url (the address boxes reach this REST API at)".to_string()
        }
        (None, 0) => format!(
            "no --public-rest-url (the address boxes reach this REST API at) and no agent tarball in {dir} (scripts/release.sh --into {dir})"
        ),
    };
    (
        format!("sudo sh install.sh {args}"),
        Some(format!(
            "run it in an unpacked agent release; for a one-line download-and-install command the control plane needs: {missing}"
        )),
    )
}

/// What an offline AI1 box scans to enroll: compact JSON (see
/// docs/provisioning.md).
fn qr_payload(state: &AppState, workspace: &str, device_id: &str, install_id: &str) -> String {
    outpost_common::offline::OfflinePayload {
        v: outpost_common::offline::VERSION,
        server: state.public_url.clone(),
        workspace: workspace.to_string(),
        device_id: device_id.to_string(),
        install_id: install_id.to_string(),
        ca_fingerprint: state.ca.fingerprint().to_string(),
    }
    .to_json()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDevice {
    /// 1 to 128 characters, no control characters.
    #[schema(min_length = 1, max_length = 128)]
    name: Option<String>,
    /// At most 1024 characters, no control characters.
    #[schema(max_length = 1024)]
    description: Option<String>,
    enabled: Option<bool>,
    /// A JSON merge patch of the labels: `"key": "value"` sets, `"key":
    /// null` removes, keys not named stay.
    #[schema(value_type = Option<std::collections::BTreeMap<String, Option<String>>>)]
    labels: Option<std::collections::BTreeMap<String, Option<String>>>,
}

#[utoipa::path(
    patch,
    path = "/{workspace}/devices/v2/{device_id}",
    operation_id = "updateDevice",
    tag = "devices",
    params(DevicePath),
    request_body = UpdateDevice,
    responses(
        (status = 200, description = "Success", body = DeviceView),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    request: Request,
) -> Result<Json<DeviceView>, ApiError> {
    authorized_device(&state, &caller, Scope::DeviceUpdate, &device_id).await?;
    let ApiJson(body) = ApiJson::<UpdateDevice>::from_request(request, &()).await?;
    if body.name.is_none()
        && body.description.is_none()
        && body.enabled.is_none()
        && body.labels.is_none()
    {
        return Err(ApiError::bad_request(
            "nothing to update: give name, description, enabled or labels",
        ));
    }
    if let Some(patch) = &body.labels {
        // Each key and value here; the count after the merge in the store
        // (under the device's lock).
        for (k, v) in patch {
            labels::validate_key(k).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if let Some(v) = v {
                labels::validate_value(k, v).map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
        }
    }
    let name = body.name.map(|n| n.trim().to_string());
    if name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.chars().count() > 128)
    {
        return Err(ApiError::bad_request("name must be 1 to 128 characters"));
    }
    if name
        .as_ref()
        .is_some_and(|n| n.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "name must not contain control characters",
        ));
    }
    if let Some(d) = &body.description {
        check_text("description", d)?;
    }
    if body
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1024)
    {
        return Err(ApiError::bad_request(
            "description must be at most 1024 characters",
        ));
    }
    let now = now_ms();
    let disabling = body.enabled == Some(false);
    let device = state
        .store
        .update_device(
            &caller.workspace,
            &device_id,
            &DevicePatch {
                name,
                description: body.description,
                enabled: body.enabled,
                labels: body.labels,
            },
            now,
        )
        .await?
        .ok_or_else(|| ApiError::not_found("device not found"))?;
    if disabling {
        state.live.disconnect(&device_id, Cut::Disabled);
    }
    Ok(Json(DeviceView::new(device, now)))
}

#[utoipa::path(
    delete,
    path = "/{workspace}/devices/v2/{device_id}",
    operation_id = "deleteDevice",
    tag = "devices",
    params(DevicePath),
    responses(
        (status = 204, description = "Deleted: certificates and keys revoked"),
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorized_device(&state, &caller, Scope::DeviceUpdate, &device_id).await?;
    if !state
        .store
        .delete_device(&caller.workspace, &device_id, now_ms())
        .await?
    {
        return Err(ApiError::not_found("device not found"));
    }
    state.live.disconnect(&device_id, Cut::Deleted);
    Ok(StatusCode::NO_CONTENT)
}

/// reference/004's connection token, plus what Outpost did about it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionToken {
    device_id: String,
    tenant_id: String,
    api_key: String,
    environment: String,
    /// A connected agent was asked to rotate its key now.
    rotation_requested: bool,
    /// Forced reset only: every credential was revoked; enroll again with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    install_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    install_id_expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    install_command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

/// `connections/reset` options (documentation; parsed from the query string).
#[derive(utoipa::IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct ResetQuery {
    /// `true`: the box is compromised — revoke every certificate and key at
    /// once, cut its streams, and issue a new install ID.
    force: Option<bool>,
}

#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/{device_id}/connections/reset",
    operation_id = "resetConnection",
    tag = "devices",
    params(DevicePath, ResetQuery),
    responses(
        (status = 200, description = "Success", body = ConnectionToken),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn reset_connection(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<ConnectionToken>, ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Device(&device_id))?;
    let force = match params.get("force") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("force must be true or false")),
    };
    authorized_device(&state, &caller, Scope::DeviceUpdate, &device_id).await?;
    let now = now_ms();
    let (api_key, device_key) = admin::mint_device_key(&caller.workspace, &device_id, now);
    let mut token = ConnectionToken {
        device_id: device_id.clone(),
        tenant_id: caller.workspace.clone(),
        api_key: api_key.clone(),
        environment: state.public_url.clone(),
        rotation_requested: false,
        install_id: None,
        install_id_expires_at: None,
        install_command: None,
        hint: None,
    };
    if force {
        let InstallId {
            plain: install_id,
            hash,
            expires_at: expires,
        } = fresh_install_id(&state, now);
        if !state
            .store
            .force_reset(&caller.workspace, &device_id, &hash, expires, now)
            .await?
        {
            return Err(ApiError::not_found("device not found"));
        }
        state.live.disconnect(&device_id, Cut::Revoked);
        let (command, hint) = install_command(&state, &caller.workspace, &install_id).await;
        token.install_command = Some(command);
        token.hint = hint;
        token.install_id_expires_at = Some(format_time(expires));
        token.install_id = Some(install_id);
    }
    state.store.replace_device_key(&device_key, now).await?;
    if !force {
        token.rotation_requested = state.live.push_rotate(&device_id);
    }
    Ok(Json(token))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewInstallId {
    device_id: String,
    install_id: String,
    install_id_expires_at: String,
    install_command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/{device_id}/install-id",
    operation_id = "newInstallId",
    tag = "devices",
    params(DevicePath),
    responses(
        (status = 200, description = "Success", body = NewInstallId),
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn new_install_id(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
) -> Result<Json<NewInstallId>, ApiError> {
    authorized_device(&state, &caller, Scope::DeviceUpdate, &device_id).await?;
    let now = now_ms();
    let InstallId {
        plain: install_id,
        hash,
        expires_at: expires,
    } = fresh_install_id(&state, now);
    if !state
        .store
        .reissue_install_id(&caller.workspace, &device_id, &hash, expires, now)
        .await?
    {
        return Err(ApiError::not_found("device not found"));
    }
    let (install_command, hint) = install_command(&state, &caller.workspace, &install_id).await;
    Ok(Json(NewInstallId {
        install_command,
        hint,
        device_id,
        install_id,
        install_id_expires_at: format_time(expires),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slugify("Factory Floor #2"), "factory-floor-2");
        assert_eq!(slugify("  --Cam__1--  "), "cam-1");
        assert_eq!(slugify("!!!"), "");
        assert_eq!(slugify("日本"), "");
    }
}
