//! The OpenAPI 3 document of the REST API. Paths come from the
//! `#[utoipa::path]` attribute on each handler and are collected by the
//! router itself (`utoipa_axum::OpenApiRouter`), so a route cannot exist
//! without being documented. Each handler names exactly one camelCase
//! `operation_id` (generated clients name their functions after it; the
//! tests below hold the table) and lists the error responses it shares with
//! the others by name ([`BadRequest`], [`Unauthorized`], ...), declared once
//! here. `docs/openapi.json` is this document, checked by a test
//! (`OUTPOST_BLESS=1 cargo test -p outpost-control-plane openapi` rewrites
//! it).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::response::Response;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToResponse, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outpost operator API",
        description = "Deployment Manager compatible device API (see README). Authenticate with a \
            workspace API key as `?api_key=KEY` or `Authorization: Bearer KEY`. Scopes: \
            `device:read` for reads, `device:update` for writes; keys without a scopes list have \
            both. Device-scoped keys reach only their own device's routes and there only read: \
            operator controls (PATCH, DELETE, install-id, connections/reset, config writes) need \
            a workspace key. Two different keys in one request (query and header) are a 400. The \
            key and its scope are checked before the path's resource, the query and the body.",
        license(name = "Apache-2.0")
    ),
    components(
        schemas(ErrorBody, AuthErrorBody, LabelSelector),
        responses(BadRequest, Unauthorized, Forbidden, NotFound, Conflict, TelemetryRateLimited, LogsRateLimited)
    ),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
    tags(
        (name = "devices", description = "Devices of a workspace"),
        (name = "telemetry", description = "Telemetry reads (60/min per device, bursts of 10)"),
        (name = "logs", description = "Device logs (5/min per client IP, 50/min overall)"),
        (name = "config", description = "Versioned device configuration"),
        (name = "audit", description = "The operator audit trail"),
        (name = "artifacts", description = "Signed artifacts devices install (docs/artifacts.md)"),
        (name = "health", description = "Probes (no authentication)"),
        (name = "downloads", description = "The agent installer and release tarballs (no authentication)")
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("api_key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Handler-level errors (400, 403, 404, 429 on telemetry).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// Authentication and workspace-validation failures (401).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthErrorBody {
    pub error: AuthErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthErrorDetail {
    pub message: String,
    /// Always 401.
    pub status: u16,
    /// Always `OAuthException`.
    #[serde(rename = "type")]
    pub kind: String,
    pub hint: String,
}

/// A response many operations share: declared once under
/// `components/responses` (the doc comment is its description) and listed
/// by name in a handler's `responses(...)`, which adds a reference to it
/// under its status.
macro_rules! shared_response {
    ($(#[doc = $doc:literal])* $status:literal => $name:ident($body:ty)) => {
        $(#[doc = $doc])*
        #[derive(ToResponse)]
        #[allow(dead_code)]
        pub struct $name($body);

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([(
                    $status.to_string(),
                    RefOr::Ref(Ref::from_response_name(stringify!($name))),
                )])
            }
        }
    };
}

shared_response! {
    /// Invalid parameter or body; the message names it
    "400" => BadRequest(ErrorBody)
}
shared_response! {
    /// Missing or invalid API key
    "401" => Unauthorized(AuthErrorBody)
}
shared_response! {
    /// Missing scope, device-scoped key elsewhere or writing, or feature gate
    "403" => Forbidden(ErrorBody)
}
shared_response! {
    /// Device (or source/config version) not found, or in another workspace
    "404" => NotFound(ErrorBody)
}
shared_response! {
    /// The resource's state does not allow it (exists with other content, in use, already done)
    "409" => Conflict(ErrorBody)
}
shared_response! {
    /// Telemetry rate limit; see Retry-After
    "429" => TelemetryRateLimited(ErrorBody)
}
shared_response! {
    /// Logs rate limit; plain-string body; see Retry-After
    "429" => LogsRateLimited(String)
}

/// `/{workspace}/devices/v2/...`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct WorkspacePath {
    /// Workspace name.
    workspace: String,
}

/// `/{workspace}/devices/v2/{device_id}/...`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct DevicePath {
    /// Workspace name.
    workspace: String,
    /// Device id.
    device_id: String,
}

/// Cursor pagination, pages of 1 to 500 (default 50).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `pagination.next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// Cursor pagination, pages of 1 to 100 (default 20).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ShortPageQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `pagination.next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// Cursor pagination, pages of 1 to 1000 (default 100).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LongPageQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `pagination.next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// `direction` of a paged list.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum DirectionParam {
    Forward,
    Backward,
}

/// Cursor pagination in either direction, pages of 1 to 500 (default 50).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DirectedPageQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `pagination.next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// `backward` (default, newest first) or `forward`.
    #[param(inline)]
    direction: Option<DirectionParam>,
}

/// Cursor pagination in either direction, pages of 1 to 1000 (default 100).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LongDirectedPageQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `pagination.next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// `backward` (default, newest first) or `forward`.
    #[param(inline)]
    direction: Option<DirectionParam>,
}

/// A label selector: `key=value` or `key`.
#[derive(ToSchema)]
#[schema(value_type = String, min_length = 1)]
#[allow(dead_code)]
pub struct LabelSelector(String);

/// `status` filter of the device list.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum StatusParam {
    Online,
    Offline,
    Unknown,
}

/// A device type: `edge` or `ai1`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub enum TypeParam {
    #[serde(rename = "edge")]
    Edge,
    #[serde(rename = "ai1")]
    Ai1,
}

/// `time_period` of bucketed telemetry.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub enum PeriodParam {
    #[serde(rename = "1h")]
    H1,
    #[serde(rename = "6h")]
    H6,
    #[serde(rename = "12h")]
    H12,
    #[serde(rename = "24h")]
    H24,
    #[serde(rename = "7d")]
    D7,
    #[serde(rename = "30d")]
    D30,
}

/// A time window: RFC 3339 date-time or unix seconds; start inclusive, end exclusive.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct WindowQuery {
    #[param(min_length = 1)]
    start_time: Option<String>,
    #[param(min_length = 1)]
    end_time: Option<String>,
}

/// Filters of the device list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQuery {
    /// `online`, `offline` or `unknown`.
    #[param(inline)]
    status: Option<StatusParam>,
    /// `edge` or `ai1`.
    #[param(rename = "type", inline)]
    device_type: Option<TypeParam>,
    /// Only devices with exactly this name (names need not be unique).
    name: Option<String>,
    /// `key=value` (the label has that value) or `key` (the device has the
    /// label); repeatable, every one must match.
    #[param(value_type = Option<Vec<LabelSelector>>)]
    label: Option<Vec<String>>,
}

/// Bucketed telemetry.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PeriodQuery {
    /// `1h` (1 MINUTE buckets), `6h` (5 MINUTE), `12h` (10 MINUTE), `24h` (15 MINUTE, default),
    /// `7d` (1 HOUR), `30d` (1 DAY).
    #[param(inline)]
    time_period: Option<PeriodParam>,
}

/// Log filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LogFilterQuery {
    /// Exact service (unit or file) name.
    service: Option<String>,
    /// This severity and above: debug, info, notice, warning, error, critical, alert, emergency.
    severity: Option<String>,
    /// Follow: the lines stored after this seq, oldest first (not with `cursor`).
    #[param(maximum = 9223372036854775807_i64, nullable = false)]
    after_seq: Option<u64>,
}

/// A config version.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct VersionQuery {
    /// A past version; the current one when absent.
    #[param(minimum = 1)]
    version: Option<u64>,
}

/// Audit trail filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditFilterQuery {
    /// Only this action (an operationId such as `deleteDevice`, or an admin action).
    #[param(pattern = "^[A-Za-z][A-Za-z0-9]{0,63}$")]
    action: Option<String>,
}

/// The document as served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = super::routes().into_openapi();
    authenticated_operations_may_be_400(&mut doc);
    doc
}

/// Every authenticated operation can answer 400 before its handler runs:
/// the key extractor refuses a malformed query string or path and two
/// different keys (`?api_key=` and `Authorization`) in one request.
fn authenticated_operations_may_be_400(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            // `security(())` (an empty requirement) marks the open routes.
            let open = op
                .security
                .as_ref()
                .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
            if !open {
                op.responses
                    .responses
                    .entry("400".to_string())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name("BadRequest")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
    }

    #[test]
    fn openapi_document_is_committed_and_current() {
        let generated = format!("{}\n", document().to_pretty_json().unwrap());
        if std::env::var_os("OUTPOST_BLESS").is_some() {
            std::fs::write(committed_path(), &generated).unwrap();
        }
        let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run OUTPOST_BLESS=1 cargo test -p outpost-control-plane openapi"
        );
    }

    /// Every operation's id. Generated clients name their functions after
    /// these: a change here is a breaking change for them.
    const OPERATION_IDS: &[(&str, &str, &str)] = &[
        ("get", "/healthz", "checkLiveness"),
        ("get", "/readyz", "checkReadiness"),
        ("get", "/install.sh", "getInstallScript"),
        ("get", "/downloads/index.json", "listDownloads"),
        ("get", "/downloads/{file}", "downloadFile"),
        ("get", "/{workspace}/devices/v2", "listDevices"),
        ("post", "/{workspace}/devices/v2", "createDevice"),
        (
            "get",
            "/{workspace}/devices/v2/default-config",
            "getDefaultConfig",
        ),
        ("get", "/{workspace}/devices/v2/{device_id}", "getDevice"),
        (
            "patch",
            "/{workspace}/devices/v2/{device_id}",
            "updateDevice",
        ),
        (
            "delete",
            "/{workspace}/devices/v2/{device_id}",
            "deleteDevice",
        ),
        (
            "get",
            "/{workspace}/devices/v2/{device_id}/telemetry",
            "getTelemetrySeries",
        ),
        (
            "get",
            "/{workspace}/devices/v2/{device_id}/telemetry/raw",
            "getRawTelemetry",
        ),
        (
            "get",
            "/{workspace}/devices/v2/{device_id}/telemetry/stream",
            "streamTelemetry",
        ),
        (
            "get",
            "/{workspace}/devices/v2/{device_id}/logs",
            "listLogs",
        ),
        (
            "get",
            "/{workspace}/devices/v2/{device_id}/events",
            "listEvents",
        ),
        (
            "get",
            "/{workspace}/devices/v2/{device_id}/config",
            "getDeviceConfig",
        ),
        (
            "put",
            "/{workspace}/devices/v2/{device_id}/config",
            "putDeviceConfig",
        ),
        (
            "patch",
            "/{workspace}/devices/v2/{device_id}/config",
            "patchDeviceConfig",
        ),
        (
            "get",
            "/{workspace}/devices/v2/{device_id}/config/versions",
            "listDeviceConfigVersions",
        ),
        (
            "post",
            "/{workspace}/devices/v2/{device_id}/connections/reset",
            "resetConnection",
        ),
        (
            "post",
            "/{workspace}/devices/v2/{device_id}/install-id",
            "newInstallId",
        ),
        ("get", "/{workspace}/devices/v2/audit", "listAuditEntries"),
        (
            "get",
            "/{workspace}/devices/v2/enrollment-tokens",
            "listEnrollmentTokens",
        ),
        (
            "post",
            "/{workspace}/devices/v2/enrollment-tokens",
            "createEnrollmentToken",
        ),
        (
            "delete",
            "/{workspace}/devices/v2/enrollment-tokens/{token_id}",
            "revokeEnrollmentToken",
        ),
        ("get", "/{workspace}/devices/v2/artifacts", "listArtifacts"),
        (
            "post",
            "/{workspace}/devices/v2/artifacts",
            "createArtifact",
        ),
        (
            "get",
            "/{workspace}/devices/v2/artifacts/{name}/{version}",
            "getArtifact",
        ),
        (
            "delete",
            "/{workspace}/devices/v2/artifacts/{name}/{version}",
            "deleteArtifact",
        ),
        (
            "put",
            "/{workspace}/devices/v2/artifacts/{name}/{version}/payload",
            "uploadArtifactPayload",
        ),
        ("get", "/{workspace}/devices/v2/rollouts", "listRollouts"),
        ("post", "/{workspace}/devices/v2/rollouts", "createRollout"),
        (
            "get",
            "/{workspace}/devices/v2/rollouts/{rollout_id}",
            "getRollout",
        ),
        (
            "post",
            "/{workspace}/devices/v2/rollouts/{rollout_id}/pause",
            "pauseRollout",
        ),
        (
            "post",
            "/{workspace}/devices/v2/rollouts/{rollout_id}/resume",
            "resumeRollout",
        ),
        (
            "post",
            "/{workspace}/devices/v2/rollouts/{rollout_id}/abort",
            "abortRollout",
        ),
        (
            "post",
            "/{workspace}/devices/v2/rollouts/{rollout_id}/approve",
            "approveRollout",
        ),
    ];

    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// `getDevice`: a lower-case start, letters and digits, and at least one
    /// capital (a verb and a noun), so no snake_case or one-word function
    /// name (utoipa's fallback) passes.
    fn is_camel_case_id(id: &str) -> bool {
        id.starts_with(|c: char| c.is_ascii_lowercase())
            && id.chars().all(|c| c.is_ascii_alphanumeric())
            && id.chars().any(|c| c.is_ascii_uppercase())
    }

    #[test]
    fn camel_case_ids_are_told_apart_from_function_names() {
        for good in ["getDevice", "listDeviceConfigVersions", "checkLiveness"] {
            assert!(is_camel_case_id(good), "{good}");
        }
        for bad in ["get_one", "healthz", "list", "GetDevice", "get-device", ""] {
            assert!(!is_camel_case_id(bad), "{bad}");
        }
    }

    #[test]
    fn every_operation_has_one_unique_camel_case_id() {
        let doc: serde_json::Value = serde_json::to_value(document()).unwrap();
        let mut ids = std::collections::BTreeMap::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                assert!(
                    is_camel_case_id(id),
                    "{method} {path}: operationId {id:?} is not camelCase verbNoun"
                );
                if let Some((m, p)) = ids.insert(id.to_string(), (method.clone(), path.clone())) {
                    panic!("operationId {id} names both {m} {p} and {method} {path}");
                }
            }
        }
        let published: std::collections::BTreeSet<(String, String, String)> = ids
            .into_iter()
            .map(|(id, (method, path))| (method, path, id))
            .collect();
        let wanted: std::collections::BTreeSet<(String, String, String)> = OPERATION_IDS
            .iter()
            .map(|(m, p, id)| (m.to_string(), p.to_string(), id.to_string()))
            .collect();
        assert_eq!(published, wanted, "operationIds differ from the table");
    }

    /// utoipa keeps the last of several `operation_id`s and falls back to
    /// the function's name without one: each `#[utoipa::path]` in `rest/`
    /// names exactly one, and not its function's name.
    #[test]
    fn each_handler_names_exactly_one_operation_id() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rest");
        // Split so that this test's own text is no match.
        let needle = concat!("#[utoipa", "::path(");
        let mut handlers = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            for (at, _) in text.match_indices(needle) {
                let rest = &text[at..];
                let fn_at = rest
                    .find("async fn ")
                    .unwrap_or_else(|| panic!("{file}: no handler after #[utoipa::path]"));
                let attribute = &rest[..fn_at];
                let name: String = rest[fn_at + "async fn ".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let ids: Vec<&str> = attribute
                    .match_indices("operation_id = \"")
                    .map(|(i, m)| {
                        let tail = &attribute[i + m.len()..];
                        &tail[..tail.find('"').unwrap()]
                    })
                    .collect();
                assert_eq!(ids.len(), 1, "{file}: {name} names operation ids {ids:?}");
                assert_ne!(ids[0], name, "{file}: {name}'s id is its function name");
                handlers += 1;
            }
        }
        assert_eq!(handlers, OPERATION_IDS.len(), "one handler per operation");
    }

    /// The 4xx answers are declared once, under `components/responses`, and
    /// referenced from each operation; every reference resolves.
    #[test]
    fn error_responses_are_shared_components() {
        let doc: serde_json::Value = serde_json::to_value(document()).unwrap();
        let shared = doc["components"]["responses"].as_object().unwrap();
        for name in ["BadRequest", "Unauthorized", "Forbidden", "NotFound"] {
            assert!(shared.contains_key(name), "components/responses/{name}");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    if status.starts_with('4') {
                        assert!(
                            response.get("$ref").is_some(),
                            "{method} {path} {status} is declared inline"
                        );
                    }
                }
                // Public operations (probes, downloads) declare `security: [{}]`.
                let public = op["security"] == serde_json::json!([{}]);
                if !public {
                    assert!(op["responses"]["401"].is_object(), "{method} {path} 401");
                    assert!(op["responses"]["403"].is_object(), "{method} {path} 403");
                }
            }
        }
        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.iter().any(|r| r.starts_with("#/components/responses/")));
        for r in all {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {r}"));
            assert!(doc.pointer(pointer).is_some(), "{r} resolves to nothing");
        }
    }

    #[test]
    fn openapi_document_covers_every_route_and_method() {
        let doc: serde_json::Value = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let dev = "/{workspace}/devices/v2/{device_id}";
        let want: &[(&str, &[&str])] = &[
            ("/healthz", &["get"]),
            ("/readyz", &["get"]),
            ("/{workspace}/devices/v2", &["get", "post"]),
            ("/{workspace}/devices/v2/default-config", &["get"]),
            (dev, &["get", "patch", "delete"]),
        ];
        for (path, methods) in want {
            for m in *methods {
                assert!(paths[*path].get(*m).is_some(), "{m} {path} undocumented");
            }
        }
        for tail in [
            "telemetry",
            "telemetry/raw",
            "logs",
            "events",
            "config",
            "config/versions",
        ] {
            assert!(paths.contains_key(&format!("{dev}/{tail}")), "{tail}");
        }
        for tail in ["connections/reset", "install-id"] {
            assert!(
                paths[&format!("{dev}/{tail}")].get("post").is_some(),
                "{tail}"
            );
        }
        assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
        assert!(doc["components"]["schemas"]["DeviceView"].is_object());
    }
}
