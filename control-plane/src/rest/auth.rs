//! API-key authentication and authorization for every `/{workspace}/…` route.
//! Handlers take a [`Caller`] and call [`Caller::require`], or, for a route
//! of one device, [`authorized_device`]; nothing else in the REST layer looks
//! at keys or scopes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;

use crate::AppState;
use crate::admin::{SCOPE_DEVICE_READ, SCOPE_DEVICE_UPDATE};
use crate::ids;
use crate::store::Device;

use super::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    DeviceRead,
    DeviceUpdate,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::DeviceRead => SCOPE_DEVICE_READ,
            Scope::DeviceUpdate => SCOPE_DEVICE_UPDATE,
        }
    }
}

/// What a request touches: the whole workspace (list, create) or one device.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Workspace,
    Device(&'a str),
}

/// An authenticated API key, already checked against the path's workspace.
#[derive(Debug, Clone)]
pub struct Caller {
    pub workspace: String,
    scopes: Option<Vec<String>>,
    device_id: Option<String>,
    /// The key's hash, to check later that it is still valid (long streams).
    pub key_hash: String,
    /// The audit entry of this request, where it has one.
    audit: Option<super::audit::AuditSlot>,
}

impl Caller {
    /// Names the resource a create made as the target of its audit entry.
    pub fn audit_target(&self, id: &str) {
        if let Some(slot) = &self.audit {
            slot.set_target(id);
        }
    }

    /// Checks scope, then device binding. A key with no scopes list has every
    /// scope (legacy); a device-scoped key reaches only its own device, and
    /// there only reads: a box cannot undo what an operator did to it.
    pub fn require(&self, scope: Scope, target: Target<'_>) -> Result<(), ApiError> {
        if let Some(scopes) = &self.scopes
            && !scopes.iter().any(|s| s == scope.as_str())
        {
            return Err(ApiError::forbidden(format!(
                "this API key lacks the required scope {}",
                scope.as_str()
            )));
        }
        if let Some(bound) = &self.device_id {
            match target {
                Target::Workspace => {
                    return Err(ApiError::forbidden(
                        "a device-scoped API key cannot use workspace-wide routes",
                    ));
                }
                Target::Device(id) if id != bound => {
                    return Err(ApiError::forbidden(
                        "a device-scoped API key can only access its own device",
                    ));
                }
                Target::Device(_) if scope == Scope::DeviceUpdate => {
                    return Err(ApiError::forbidden(DEVICE_KEY_READS_ONLY));
                }
                Target::Device(_) => {}
            }
        }
        Ok(())
    }
}

/// The 403 of a device-scoped key on a write of its own device.
pub const DEVICE_KEY_READS_ONLY: &str = "a device-scoped API key (the one a box keeps in \
     STATE_DIR/api-key) only reads its own device; operator controls (enable/disable, rename, \
     labels, delete, install ID, connection reset, config writes) need a workspace API key \
     with the device:update scope";

/// Checks scope and device binding, then looks the device up in the
/// caller's workspace. Another workspace's device is indistinguishable from a
/// missing one (404). Every per-device route starts here.
pub async fn authorized_device(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    id: &str,
) -> Result<Device, ApiError> {
    caller.require(scope, Target::Device(id))?;
    if !ids::is_valid_device_id(id) {
        return Err(ApiError::not_found("device not found"));
    }
    state
        .store
        .get_device(&caller.workspace, id)
        .await?
        .ok_or_else(|| ApiError::not_found("device not found"))
}

const HINT: &str =
    "Pass a workspace API key as ?api_key=KEY or an Authorization: Bearer KEY header.";

/// Reads the key from `?api_key=` or `Authorization: Bearer`. Two different
/// keys (one each way) are a 400: which one is meant is not ours to guess.
fn presented_key(parts: &Parts) -> Result<Option<String>, ApiError> {
    let header = match parts.headers.get(axum::http::header::AUTHORIZATION) {
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthorized("Malformed Authorization header", HINT))?;
            let key = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| {
                    ApiError::unauthorized("Authorization header must use the Bearer scheme", HINT)
                })?;
            Some(key.trim().to_string())
        }
        None => None,
    };
    let query: Query<HashMap<String, String>> = Query::try_from_uri(&parts.uri)
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    let in_query = query.0.get("api_key").cloned();
    match (header, in_query) {
        (Some(h), Some(q)) if h != q => Err(ApiError::bad_request(
            "two different API keys: one in ?api_key= and one in the Authorization header; send one",
        )),
        (Some(h), _) => Ok(Some(h)),
        (None, q) => Ok(q),
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let Path(params): Path<HashMap<String, String>> = Path::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid path: {e}")))?;
        let workspace = params
            .get("workspace")
            .cloned()
            .ok_or_else(|| ApiError::Internal("route has no {workspace} segment".into()))?;
        let key = presented_key(parts)?
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Missing API key", HINT))?;
        let key_hash = ids::hash_secret(&key);
        let record = state
            .store
            .find_api_key(&key_hash)
            .await?
            .ok_or_else(|| ApiError::unauthorized("Invalid API key", HINT))?;
        if record.workspace != workspace {
            return Err(ApiError::unauthorized(
                "This API key does not belong to the requested workspace",
                "Use a key created for this workspace.",
            ));
        }
        // The key is this workspace's: it is the actor of the request's
        // audit entry, also when a scope check refuses it later. (Another
        // workspace's key id is not shown to this workspace.)
        let audit = parts.extensions.get::<super::audit::AuditSlot>().cloned();
        if let Some(slot) = &audit {
            slot.set_actor(&record.id);
        }
        Ok(Caller {
            workspace,
            scopes: record.scopes,
            device_id: record.device_id,
            key_hash,
            audit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: Option<&[&str]>, device: Option<&str>) -> Caller {
        Caller {
            workspace: "acme".into(),
            scopes: scopes.map(|s| s.iter().map(|x| x.to_string()).collect()),
            device_id: device.map(String::from),
            key_hash: String::new(),
            audit: None,
        }
    }

    #[test]
    fn legacy_key_has_every_scope() {
        let c = caller(None, None);
        assert!(c.require(Scope::DeviceRead, Target::Workspace).is_ok());
        assert!(c.require(Scope::DeviceUpdate, Target::Device("x")).is_ok());
    }

    #[test]
    fn missing_scope_is_403_naming_it() {
        let c = caller(Some(&["device:read"]), None);
        assert!(c.require(Scope::DeviceRead, Target::Workspace).is_ok());
        match c.require(Scope::DeviceUpdate, Target::Workspace) {
            Err(ApiError::Forbidden(m)) => assert!(m.contains("device:update"), "{m}"),
            other => panic!("expected 403, got {other:?}"),
        }
    }

    #[test]
    fn device_scoped_key_reaches_only_its_device() {
        let c = caller(Some(&["device:read", "device:update"]), Some("d1"));
        assert!(c.require(Scope::DeviceRead, Target::Device("d1")).is_ok());
        assert!(matches!(
            c.require(Scope::DeviceRead, Target::Device("d2")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            c.require(Scope::DeviceRead, Target::Workspace),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn device_scoped_key_only_reads_its_device() {
        let c = caller(Some(&["device:read", "device:update"]), Some("d1"));
        match c.require(Scope::DeviceUpdate, Target::Device("d1")) {
            Err(ApiError::Forbidden(m)) => assert!(m.contains("workspace API key"), "{m}"),
            other => panic!("expected 403, got {other:?}"),
        }
        // Another device's route still says so.
        match c.require(Scope::DeviceUpdate, Target::Device("d2")) {
            Err(ApiError::Forbidden(m)) => assert!(m.contains("its own device"), "{m}"),
            other => panic!("expected 403, got {other:?}"),
        }
    }
}
