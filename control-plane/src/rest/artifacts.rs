//! `/{workspace}/devices/v2/artifacts`: signed artifacts (docs/artifacts.md).
//! A publisher first posts the manifest and its signature, which must verify
//! with a publisher key the workspace trusts (added on the host, never over
//! REST), then puts the payload, which is streamed into the store in chunks
//! while it is hashed: it becomes `ready` only when its size and SHA-256 are
//! the manifest's.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use outpost_common::artifact::{self, Manifest, PublicKey};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::store::{
    ARTIFACT_AWAITING_PAYLOAD, ARTIFACT_CHUNK_SIZE, ARTIFACT_READY, ArtifactRecord, StoreError,
    now_ms,
};

use super::auth::{Caller, Scope, Target};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::params::{ApiJson, format_time};

/// How long an upload may go without a byte arriving.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The publisher's signature over the manifest's exact bytes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureBody {
    /// `ed25519:<base64>`; a key the workspace trusts.
    public_key: String,
    /// Base64 of the 64-byte Ed25519 signature.
    signature: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateArtifact {
    /// The manifest JSON exactly as signed (a string, not an object).
    manifest: String,
    signature: SignatureBody,
}

/// An artifact version as listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArtifactView {
    name: String,
    version: String,
    /// Payload bytes.
    size: u64,
    /// SHA-256 of the payload, lowercase hex.
    sha256: String,
    /// `awaiting_payload` or `ready`.
    state: String,
    /// The publisher key that signed it.
    public_key: String,
    created_at: String,
    uploaded_at: Option<String>,
    post_install: Option<String>,
    health_command: Option<String>,
    health_window_secs: u64,
}

impl ArtifactView {
    fn new(a: ArtifactRecord) -> Self {
        // Stored manifests were checked at creation; a row that no longer
        // parses (a future schema) still lists, without its commands.
        let m = Manifest::parse(&a.manifest_json).ok();
        ArtifactView {
            post_install: m.as_ref().and_then(|m| m.post_install.clone()),
            health_command: m.as_ref().and_then(|m| m.health_command.clone()),
            health_window_secs: m.as_ref().map_or(0, |m| m.health_window_secs),
            name: a.name,
            version: a.version,
            size: a.size,
            sha256: a.sha256,
            state: a.state,
            public_key: a.public_key,
            created_at: format_time(a.created_at),
            uploaded_at: a.uploaded_at.map(format_time),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArtifactList {
    data: Vec<ArtifactView>,
}

/// An artifact version's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ArtifactPath {
    workspace: String,
    /// Artifact name.
    name: String,
    /// Artifact version.
    version: String,
}

/// Stores a signed manifest; the payload follows with `uploadArtifactPayload`.
#[utoipa::path(
    post,
    path = "/{workspace}/devices/v2/artifacts",
    operation_id = "createArtifact",
    tag = "artifacts",
    params(WorkspacePath),
    request_body = CreateArtifact,
    responses(
        (status = 201, description = "Created, awaiting its payload", body = ArtifactView),
        (status = 200, description = "The same manifest was stored already", body = ArtifactView),
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
) -> Result<(StatusCode, Json<ArtifactView>), ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    let ApiJson(body) = ApiJson::<CreateArtifact>::from_request(request, &()).await?;
    let sig = artifact::Signature {
        public_key: body
            .signature
            .public_key
            .parse()
            .map_err(|e| ApiError::bad_request(format!("signature.public_key: {e}")))?,
        signature: body.signature.signature,
    };
    let trusted: Vec<PublicKey> = state
        .store
        .list_publisher_keys(&caller.workspace)
        .await?
        .into_iter()
        .filter_map(|k| k.public_key.parse().ok())
        .collect();
    let manifest = artifact::verify(&body.manifest, &sig, &trusted).map_err(|e| match e {
        artifact::ArtifactError::Untrusted => ApiError::bad_request(format!(
            "{} is not a publisher key this workspace trusts (an admin adds it on the control \
             plane's host: outpost-control-plane publisher-key add --workspace {} KEY)",
            sig.public_key, caller.workspace
        )),
        e => ApiError::bad_request(e.to_string()),
    })?;
    // Commands are shown to operators (`outpostctl artifact list`, the
    // dashboard): no terminal escapes; newlines and tabs of a multi-line
    // script stay.
    for (field, cmd) in [
        ("post_install", &manifest.post_install),
        ("health_command", &manifest.health_command),
    ] {
        if cmd.as_deref().is_some_and(|c| {
            c.chars()
                .any(|ch| ch.is_control() && ch != '\n' && ch != '\t')
        }) {
            return Err(ApiError::bad_request(format!(
                "manifest {field} must not contain control characters other than newline and tab"
            )));
        }
    }
    if manifest.size > state.artifacts.max_size {
        return Err(ApiError::bad_request(format!(
            "the payload is {} bytes; this control plane takes at most {} (--max-artifact-size)",
            manifest.size, state.artifacts.max_size
        )));
    }
    let record = ArtifactRecord {
        workspace: caller.workspace.clone(),
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        manifest_json: body.manifest,
        public_key: sig.public_key.to_string(),
        signature: sig.signature,
        size: manifest.size,
        sha256: manifest.sha256.clone(),
        state: ARTIFACT_AWAITING_PAYLOAD.into(),
        created_at: now_ms(),
        uploaded_at: None,
    };
    caller.audit_target(&manifest.id());
    let created = match state.store.create_artifact(&record).await {
        Ok(c) => c,
        Err(StoreError::Conflict(m)) => return Err(ApiError::Conflict(m)),
        Err(e) => return Err(e.into()),
    };
    let stored = get_record(&state, &caller.workspace, &record.name, &record.version).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ArtifactView::new(stored))))
}

async fn get_record(
    state: &AppState,
    ws: &str,
    name: &str,
    version: &str,
) -> Result<ArtifactRecord, ApiError> {
    if artifact::check_name(name).is_err() || artifact::check_version(version).is_err() {
        return Err(not_found(name, version));
    }
    state
        .store
        .get_artifact(ws, name, version)
        .await?
        .ok_or_else(|| not_found(name, version))
}

fn not_found(name: &str, version: &str) -> ApiError {
    ApiError::not_found(format!("artifact {name}@{version} not found"))
}

/// Uploads the payload (`application/octet-stream`), streamed into the store.
#[utoipa::path(
    put,
    path = "/{workspace}/devices/v2/artifacts/{name}/{version}/payload",
    operation_id = "uploadArtifactPayload",
    tag = "artifacts",
    params(ArtifactPath),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The payload; its size and SHA-256 must be the manifest's"),
    responses(
        (status = 200, description = "Stored; the artifact is ready", body = ArtifactView),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
    )
)]
pub async fn upload_payload(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, name, version)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<ArtifactView>, ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    let ws = caller.workspace.clone();
    let a = get_record(&state, &ws, &name, &version).await?;
    // A declared length that is not the manifest's: refused before a byte
    // is read.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len != a.size
        && a.state != ARTIFACT_READY
    {
        return Err(ApiError::bad_request(format!(
            "the payload is {len} bytes (Content-Length), the manifest says {}",
            a.size
        )));
    }
    if a.state == ARTIFACT_READY {
        return Err(ApiError::Conflict(format!(
            "{name}@{version} has its payload already"
        )));
    }
    let Some(_upload) = state.artifacts.begin_upload(&ws, &name, &version) else {
        return Err(ApiError::Conflict(format!(
            "an upload of {name}@{version} is in progress"
        )));
    };
    match receive(&state, &a, body).await {
        Ok(()) => {}
        Err(e) => {
            // Nothing of a failed upload is kept.
            if let Err(d) = state
                .store
                .discard_artifact_chunks(&ws, &name, &version)
                .await
            {
                tracing::warn!("discarding the chunks of a failed upload: {d}");
            }
            return Err(e);
        }
    }
    match state
        .store
        .mark_artifact_ready(&ws, &name, &version, now_ms())
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict(m)) => return Err(ApiError::Conflict(m)),
        Err(StoreError::NotFound) => return Err(not_found(&name, &version)),
        Err(e) => return Err(e.into()),
    }
    let stored = get_record(&state, &ws, &name, &version).await?;
    Ok(Json(ArtifactView::new(stored)))
}

/// Streams the body into chunks while hashing it; refuses it as soon as it
/// is longer than the manifest says, and at the end when its length or hash
/// differ.
async fn receive(state: &AppState, a: &ArtifactRecord, body: Body) -> Result<(), ApiError> {
    let mut stream = body.into_data_stream();
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf: Vec<u8> = Vec::with_capacity(ARTIFACT_CHUNK_SIZE.min(a.size as usize));
    let mut total: u64 = 0;
    let mut idx: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(UPLOAD_IDLE, stream.next()).await {
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "no payload bytes for {}s; upload again",
                    UPLOAD_IDLE.as_secs()
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!(
                    "the payload could not be read: {e}"
                )));
            }
            Ok(Some(Ok(b))) => b,
        };
        total += frame.len() as u64;
        if total > a.size {
            return Err(ApiError::bad_request(format!(
                "the payload is longer than the manifest's {} bytes",
                a.size
            )));
        }
        hash.update(&frame);
        let mut rest: &[u8] = &frame;
        while !rest.is_empty() {
            let take = (ARTIFACT_CHUNK_SIZE - buf.len()).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == ARTIFACT_CHUNK_SIZE {
                put_chunk(state, a, idx, &buf).await?;
                idx += 1;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        put_chunk(state, a, idx, &buf).await?;
    }
    if total != a.size {
        return Err(ApiError::bad_request(format!(
            "the payload is {total} bytes, the manifest says {}",
            a.size
        )));
    }
    let got = hex(hash.finish().as_ref());
    if got != a.sha256 {
        return Err(ApiError::bad_request(format!(
            "the payload's SHA-256 is {got}, the manifest says {}",
            a.sha256
        )));
    }
    Ok(())
}

async fn put_chunk(
    state: &AppState,
    a: &ArtifactRecord,
    idx: u64,
    data: &[u8],
) -> Result<(), ApiError> {
    match state
        .store
        .put_artifact_chunk(&a.workspace, &a.name, &a.version, idx, data)
        .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict(m)) => Err(ApiError::Conflict(m)),
        Err(StoreError::NotFound) => Err(not_found(&a.name, &a.version)),
        Err(e) => Err(e.into()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/artifacts",
    operation_id = "listArtifacts",
    tag = "artifacts",
    params(WorkspacePath),
    responses(
        (status = 200, description = "Success", body = ArtifactList),
        Unauthorized,
        Forbidden,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<ArtifactList>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    let data = state
        .store
        .list_artifacts(&caller.workspace)
        .await?
        .into_iter()
        .map(ArtifactView::new)
        .collect();
    Ok(Json(ArtifactList { data }))
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/artifacts/{name}/{version}",
    operation_id = "getArtifact",
    tag = "artifacts",
    params(ArtifactPath),
    responses(
        (status = 200, description = "Success", body = ArtifactView),
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, name, version)): Path<(String, String, String)>,
) -> Result<Json<ArtifactView>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    let a = get_record(&state, &caller.workspace, &name, &version).await?;
    Ok(Json(ArtifactView::new(a)))
}

/// Deletes a version and its payload; refused while a running or paused
/// rollout uses it.
#[utoipa::path(
    delete,
    path = "/{workspace}/devices/v2/artifacts/{name}/{version}",
    operation_id = "deleteArtifact",
    tag = "artifacts",
    params(ArtifactPath),
    responses(
        (status = 204, description = "Deleted"),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
    )
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, name, version)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::DeviceUpdate, Target::Workspace)?;
    if artifact::check_name(&name).is_err() || artifact::check_version(&version).is_err() {
        return Err(not_found(&name, &version));
    }
    match state
        .store
        .delete_artifact(&caller.workspace, &name, &version)
        .await
    {
        Ok(true) => {
            state.artifacts.forget(&caller.workspace, &name, &version);
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(not_found(&name, &version)),
        Err(StoreError::Conflict(m)) => Err(ApiError::Conflict(m)),
        Err(e) => Err(e.into()),
    }
}
