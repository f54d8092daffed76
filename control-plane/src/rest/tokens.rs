//! `/{workspace}/devices/v2/enrollment-tokens`: tokens that enroll many
//! boxes (golden images, factory flashing). The token is shown once at
//! creation; the store keeps its SHA-256 (as install IDs and API keys).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::labels::{self, Labels};
use crate::store::{EnrollmentToken, FEATURE_DEVICE_AIO, NewEnrollmentToken, TokenState, now_ms};
use crate::{AppState, ids};

use super::auth::{Caller, Scope, Target};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::params::{ApiJson, check_text, format_time};

/// Uses per token at most.
const MAX_USES: u64 = 100_000;
/// Expiry at most a year out.
const MAX_EXPIRES_IN_SECS: u64 = 366 * 24 * 3600;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 128 characters, no control characters.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 128)]
    name: Option<String>,
    /// How many boxes may enroll with it (1 to 100000).
    #[schema(required = true, nullable = false, minimum = 1, maximum = 100000)]
    max_uses: Option<u64>,
    /// Seconds until it expires (at most 366 days); never when absent.
    #[schema(minimum = 1, maximum = 31622400)]
    expires_in_secs: Option<u64>,
    /// Labels every device enrolled with it gets.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    labels: Option<Labels>,
    // `edge` (default) or `ai1` (the enum's description).
    #[schema(inline, value_type = Option<super::openapi::TypeParam>)]
    device_type: Option<String>,
}

/// A token as listed (never the token itself).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    id: String,
    name: String,
    max_uses: u64,
    uses: u64,
    uses_left: u64,
    state: TokenState,
    expires_at: Option<String>,
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    labels: Labels,
    device_type: String,
    created_at: String,
    revoked_at: Option<String>,
}

impl TokenView {
    fn new(t: EnrollmentToken, now: i64) -> Self {
        TokenView {
            state: t.state(now),
            uses_left: t.max_uses.saturating_sub(t.uses),
            id: t.id,
            name: t.name,
            max_uses: t.max_uses,
            uses: t.uses,
            expires_at: t.expires_at.map(format_time),
            labels: t.labels,
            device_type: t.device_type,
            created_at: format_time(t.created_at),
            revoked_at: t.revoked_at.map(format_time),
        }
    }
}

/// The creation answer: the only time the token is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    id: String,
    /// `oet_…`; shown once, stored hashed.
    token: String,
    name: String,
    max_uses: u64,
    uses: u64,
    expires_at: Option<String>,
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    labels: Labels,
    device_type: String,
    /// Enrolls a box with the CA fingerprint pinned (`systemd/install.sh`,
    /// or the one-line download form; see `hint`).
    #[serde(rename = "installCommand")]
    install_command: String,
    /// What the control plane lacks for the one-line `curl … | sh` form.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/enrollment-tokens",
    operation_id = "createEnrollmentToken",
    tag = "devices",
    params(WorkspacePath),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created", body = CreatedToken),
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
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    let ApiJson(body) = ApiJson::<CreateToken>::from_request(request, &()).await?;
    let name = body
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    check_text("name", &name)?;
    if name.chars().count() > 128 {
        return Err(ApiError::bad_request("name must be at most 128 characters"));
    }
    let max_uses = body
        .max_uses
        .ok_or_else(|| ApiError::bad_request("max_uses is required"))?;
    if !(1..=MAX_USES).contains(&max_uses) {
        return Err(ApiError::bad_request(format!(
            "max_uses must be 1 to {MAX_USES}"
        )));
    }
    if body
        .expires_in_secs
        .is_some_and(|s| s == 0 || s > MAX_EXPIRES_IN_SECS)
    {
        return Err(ApiError::bad_request(format!(
            "expires_in_secs must be 1 to {MAX_EXPIRES_IN_SECS}"
        )));
    }
    let labels = body.labels.unwrap_or_default();
    labels::validate(&labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let device_type = body.device_type.unwrap_or_else(|| "edge".into());
    if device_type != "edge" && device_type != "ai1" {
        return Err(ApiError::bad_request(format!(
            "device_type must be \"edge\" or \"ai1\", not {device_type:?}"
        )));
    }
    let ws = state
        .store
        .get_workspace(&caller.workspace)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace not found"))?;
    if device_type == "ai1" && !ws.features.iter().any(|f| f == FEATURE_DEVICE_AIO) {
        return Err(ApiError::forbidden(
            "creating ai1 devices requires the deviceAio feature on this workspace",
        ));
    }
    let now = now_ms();
    let token = ids::new_enroll_token();
    let expires_at = body
        .expires_in_secs
        .map(|s| now.saturating_add((s as i64).saturating_mul(1000)));
    let t = NewEnrollmentToken {
        id: ids::new_enroll_token_id(),
        workspace: caller.workspace.clone(),
        token_hash: ids::hash_secret(&token),
        name,
        max_uses,
        expires_at,
        labels,
        device_type,
        created_at: now,
    };
    state.store.create_enrollment_token(&t).await?;
    caller.audit_target(&t.id);
    let (install_command, hint) =
        super::devices::grant_install_command(&state, &caller.workspace, "--enroll-token", &token)
            .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            install_command,
            hint,
            id: t.id,
            token,
            name: t.name,
            max_uses,
            uses: 0,
            expires_at: expires_at.map(format_time),
            labels: t.labels,
            device_type: t.device_type,
        }),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    data: Vec<TokenView>,
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/enrollment-tokens",
    operation_id = "listEnrollmentTokens",
    tag = "devices",
    params(WorkspacePath),
    responses(
        (status = 200, description = "Success", body = TokenList),
        Unauthorized,
        Forbidden,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<TokenList>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    let now = now_ms();
    let data = state
        .store
        .list_enrollment_tokens(&caller.workspace)
        .await?
        .into_iter()
        .map(|t| TokenView::new(t, now))
        .collect();
    Ok(Json(TokenList { data }))
}

/// A token's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TokenPath {
    workspace: String,
    token_id: String,
}

#[utoipa::path(
    delete,
    path = "/{workspace}/devices/v2/enrollment-tokens/{token_id}",
    operation_id = "revokeEnrollmentToken",
    tag = "devices",
    params(TokenPath),
    responses(
        (status = 200, description = "Revoked (or already revoked)", body = TokenView),
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, token_id)): Path<(String, String)>,
) -> Result<Json<TokenView>, ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    if !ids::is_valid_device_id(&token_id) {
        return Err(ApiError::not_found("enrollment token not found"));
    }
    let now = now_ms();
    let t = state
        .store
        .revoke_enrollment_token(&caller.workspace, &token_id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("enrollment token not found"))?;
    Ok(Json(TokenView::new(t, now)))
}
