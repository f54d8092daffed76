//! The operator audit trail on the REST side: [`record`] is a middleware
//! around every route that answers each mutating call (POST, PUT, PATCH,
//! DELETE on a documented route) with one audit entry, and [`list`] is
//! `GET /{workspace}/devices/v2/audit`.
//!
//! An entry holds the time, the actor (the API key's *id*), the workspace and
//! target from the path, the action (the route's OpenAPI `operationId`, from
//! a table built out of the OpenAPI document, so a new route is audited
//! without touching this file), the status answered, the request id
//! (`x-request-id`, kept when the client sent a sane one, else generated;
//! echoed on every response) and the TCP peer address. Never the key, a
//! token, an install ID, the query string or the body.
//!
//! Unauthenticated (401) and unauthorized (403) attempts on mutating routes
//! are recorded too, with no actor: that is the evidence of someone probing
//! a workspace. Because anyone can cause them, entries without an actor are
//! rate limited per replica ([`UNATTRIBUTED_PER_SEC`], bursts of
//! [`UNATTRIBUTED_BURST`]); what is over is counted, not stored.
//!
//! The handler runs in a task of its own and the entry is written after it,
//! before the response goes out: a client that hangs up neither cancels a
//! mutation half-way nor loses its entry, and an entry is readable once the
//! response arrives. A failed audit write never fails the request: it is
//! logged and counted (`outpost_audit_entries_total{result="failed"}`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;

use crate::AppState;
use crate::store::{AuditEntry, AuditQuery, NewAuditEntry, now_ms};

use super::auth::{Caller, Scope, Target};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::pagination::{Page, decode_cursor, page, parse_limit};
use super::params::{Params, format_time, parse_direction, parse_window};

/// The request id header, read and echoed.
pub const REQUEST_ID: &str = "x-request-id";

/// Entries without an actor (401/403 before a key was known) per second and
/// replica, and their burst.
pub const UNATTRIBUTED_PER_SEC: u32 = 10;
pub const UNATTRIBUTED_BURST: u32 = 100;

/// Longest id or path segment kept in an entry.
const MAX_FIELD: usize = 128;

/// What the middleware needs: the store and metrics, and the table of
/// audited operations.
pub struct AuditContext {
    state: Arc<AppState>,
    /// (method, route template) → operationId, for the mutating methods.
    operations: HashMap<(Method, String), String>,
    unattributed: DefaultDirectRateLimiter,
}

impl AuditContext {
    /// The table comes from the OpenAPI document: every documented POST,
    /// PUT, PATCH and DELETE operation.
    pub fn new(state: Arc<AppState>, doc: &utoipa::openapi::OpenApi) -> Self {
        Self {
            state,
            operations: mutating_operations(doc),
            unattributed: RateLimiter::direct(
                Quota::per_second(NonZeroU32::new(UNATTRIBUTED_PER_SEC).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(UNATTRIBUTED_BURST).unwrap_or(NonZeroU32::MIN)),
            ),
        }
    }
}

/// (method, path) → operationId of every mutating operation of `doc`.
pub fn mutating_operations(doc: &utoipa::openapi::OpenApi) -> HashMap<(Method, String), String> {
    let mut out = HashMap::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ];
        for (method, op) in ops {
            if let Some(id) = op.as_ref().and_then(|o| o.operation_id.clone()) {
                out.insert((method, path.clone()), id);
            }
        }
    }
    out
}

/// What handlers add to the entry of their request: the caller's key id
/// (set by the [`Caller`] extractor) and, where the path does not name the
/// target (a create), the new resource's id.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<SlotFields>>);

#[derive(Debug, Default)]
struct SlotFields {
    actor: Option<String>,
    target: Option<String>,
}

impl AuditSlot {
    fn with<T>(&self, f: impl FnOnce(&mut SlotFields) -> T) -> T {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent (two plain fields).
        let mut fields = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut fields)
    }
    pub fn set_actor(&self, key_id: &str) {
        self.with(|f| f.actor = Some(clip(key_id)));
    }
    pub fn set_target(&self, id: &str) {
        self.with(|f| f.target = Some(clip(id)));
    }
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_FIELD).collect()
}

/// A client's request id is kept when it is 1-128 characters of
/// `[A-Za-z0-9._:-]` (no room for log or terminal injection).
fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_FIELD
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    ok.then(|| s.to_string())
}

/// `{workspace}` and the target of a route template, read off the request
/// path: its other parameter, or its others joined with `@` (an artifact's
/// `{name}/{version}` is `name@version`, as everywhere else).
fn path_params(template: &str, path: &str) -> (Option<String>, Option<String>) {
    let mut workspace = None;
    let mut others: Vec<&str> = Vec::new();
    for (t, p) in template.split('/').zip(path.split('/')) {
        let Some(name) = t.strip_prefix('{').and_then(|n| n.strip_suffix('}')) else {
            continue;
        };
        if name == "workspace" {
            workspace = crate::ids::is_valid_workspace_name(p).then(|| p.to_string());
        } else if !p.is_empty() {
            others.push(p);
        }
    }
    let target = (!others.is_empty()).then(|| clip(&others.join("@")));
    (workspace, target)
}

/// The middleware (see the module documentation).
pub async fn record(
    State(ctx): State<Arc<AuditContext>>,
    mut req: Request,
    next: Next,
) -> Response {
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(sane_request_id)
        .unwrap_or_else(|| format!("req_{}", crate::ids::new_internal_id()));
    let header = HeaderValue::from_str(&request_id).ok();
    if let Some(h) = &header {
        req.headers_mut().insert(REQUEST_ID, h.clone());
    }
    let action = req.extensions().get::<MatchedPath>().and_then(|m| {
        ctx.operations
            .get(&(req.method().clone(), m.as_str().to_string()))
            .map(|op| (op.clone(), m.as_str().to_owned()))
    });
    let mut resp = match action {
        None => next.run(req).await,
        Some((action, template)) => {
            let (workspace, target) = path_params(&template, req.uri().path());
            // The peer (`ip:port`), or the client a trusted proxy forwarded
            // (its address only: the proxy does not pass the port on).
            let client_addr = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| {
                let ip = super::limits::client_ip(c.0, req.headers(), &ctx.state.trusted_proxies);
                if ip == c.0.ip() {
                    c.0.to_string()
                } else {
                    ip.to_string()
                }
            });
            let slot = AuditSlot::default();
            req.extensions_mut().insert(slot.clone());
            let request_id = request_id.clone();
            let ctx = ctx.clone();
            let task = tokio::spawn(async move {
                let handler = tokio::spawn(next.run(req));
                let resp = match handler.await {
                    Ok(resp) => resp,
                    Err(e) => {
                        tracing::error!(%action, "handler failed: {e}");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                };
                let (actor, slot_target) = slot.with(|f| (f.actor.take(), f.target.take()));
                let entry = NewAuditEntry {
                    timestamp: now_ms(),
                    workspace,
                    actor,
                    action,
                    target: slot_target.or(target),
                    status: resp.status().as_u16(),
                    request_id: Some(request_id),
                    client_addr,
                };
                write(&ctx, entry).await;
                resp
            });
            match task.await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::error!("audited request failed: {e}");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
    };
    if let Some(h) = header {
        resp.headers_mut().insert(REQUEST_ID, h);
    }
    resp
}

async fn write(ctx: &AuditContext, entry: NewAuditEntry) {
    let counter = &ctx.state.metrics.audit_entries;
    if entry.actor.is_none() {
        if ctx.unattributed.check().is_err() {
            counter.with_label_values(&["rate_limited"]).inc();
            return;
        }
        // Probing evidence is kept for workspaces that exist: made-up
        // names in the path cannot fill the trail.
        let known = match &entry.workspace {
            Some(ws) => matches!(ctx.state.store.get_workspace(ws).await, Ok(Some(_))),
            None => false,
        };
        if !known {
            counter.with_label_values(&["unknown_workspace"]).inc();
            return;
        }
    }
    match ctx.state.store.insert_audit(&entry).await {
        Ok(()) => counter.with_label_values(&["stored"]).inc(),
        Err(e) => {
            counter.with_label_values(&["failed"]).inc();
            tracing::warn!(
                action = %entry.action,
                status = entry.status,
                request_id = entry.request_id.as_deref().unwrap_or(""),
                "audit entry not stored: {e}"
            );
        }
    }
}

/// One audit entry as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntryView {
    id: i64,
    timestamp: String,
    /// The API key id, `admin-cli`, or null (the caller was not authenticated).
    actor: Option<String>,
    workspace: Option<String>,
    /// The operationId of the REST operation, or the admin command.
    action: String,
    /// The device (or other resource) acted on.
    target: Option<String>,
    /// The HTTP status answered.
    status: u16,
    request_id: Option<String>,
    client_address: Option<String>,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        let AuditEntry { id, entry } = e;
        AuditEntryView {
            id,
            timestamp: format_time(entry.timestamp),
            actor: entry.actor,
            workspace: entry.workspace,
            action: entry.action,
            target: entry.target,
            status: entry.status,
            request_id: entry.request_id,
            client_address: entry.client_addr,
        }
    }
}

/// `action`: an operationId or admin action, e.g. `deleteDevice`.
fn parse_action(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw.starts_with(|c: char| c.is_ascii_alphabetic())
        && raw.chars().all(|c| c.is_ascii_alphanumeric());
    if !ok {
        return Err(ApiError::bad_request(
            "action must be an operationId such as deleteDevice (letters and digits, at most 64)",
        ));
    }
    Ok(Some(raw.to_string()))
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/audit",
    operation_id = "listAuditEntries",
    tag = "audit",
    params(WorkspacePath, DirectedPageQuery, WindowQuery, AuditFilterQuery),
    responses(
        (status = 200, description = "Success", body = Page<AuditEntryView>),
        BadRequest,
        Unauthorized,
        Forbidden,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    params: Params,
) -> Result<Json<Page<AuditEntryView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Workspace)?;
    let limit = parse_limit(params.get("limit"), 50, 500)?;
    let direction = parse_direction(params.get("direction"))?;
    let after_id: Option<i64> = decode_cursor(params.get("cursor"))?;
    let (start, end) = parse_window(&params)?;
    let action = parse_action(params.get("action"))?;
    let rows = state
        .store
        .list_audit(&AuditQuery {
            workspace: caller.workspace.clone(),
            start,
            end,
            action,
            after_id,
            direction,
            limit: limit + 1,
        })
        .await?;
    Ok(Json(page(rows, limit, |e| e.id, AuditEntryView::from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_read_workspace_and_last_parameter() {
        let t = "/{workspace}/devices/v2/{device_id}/config";
        assert_eq!(
            path_params(t, "/acme/devices/v2/abc123/config"),
            (Some("acme".into()), Some("abc123".into()))
        );
        assert_eq!(
            path_params("/{workspace}/devices/v2", "/acme/devices/v2"),
            (Some("acme".into()), None)
        );
        assert_eq!(
            path_params("/{workspace}/devices/v2", "/No%20Such/devices/v2").0,
            None,
            "an invalid workspace name is not recorded"
        );
        assert_eq!(
            path_params(
                "/{workspace}/devices/v2/artifacts/{name}/{version}/payload",
                "/acme/devices/v2/artifacts/detector/1.4.0/payload"
            ),
            (Some("acme".into()), Some("detector@1.4.0".into()))
        );
    }

    #[test]
    fn only_sane_request_ids_are_kept() {
        let ok = HeaderValue::from_static("abc-123_x:y.z");
        assert_eq!(sane_request_id(&ok).as_deref(), Some("abc-123_x:y.z"));
        for bad in ["", "a b", "a\u{1b}[31m", &"x".repeat(129)] {
            if let Ok(v) = HeaderValue::from_str(bad) {
                assert_eq!(sane_request_id(&v), None, "{bad:?}");
            }
        }
    }

    #[test]
    fn action_filter_is_validated() {
        assert_eq!(parse_action(None).unwrap(), None);
        assert_eq!(
            parse_action(Some("deleteDevice")).unwrap().as_deref(),
            Some("deleteDevice")
        );
        for bad in ["", "delete device", "1abc", "a;b"] {
            match parse_action(Some(bad)) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains("action"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
