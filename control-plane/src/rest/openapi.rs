//! The OpenAPI 3 document of the REST API. Paths come from the
//! `#[utoipa::path]` attribute on each handler and are collected by the
//! router itself (`utoipa_axum::OpenApiRouter`), so a route cannot exist
//! without being documented. `docs/openapi.json` is this document, checked by
//! a test (`OUTPOST_BLESS=1 cargo test -p outpost-control-plane openapi`
//! rewrites it).

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outpost operator API",
        description = "Deployment Manager compatible device API (see README). Authenticate with a \
            workspace API key as `?api_key=KEY` or `Authorization: Bearer KEY`. Scopes: \
            `device:read` for reads, `device:update` for writes; keys without a scopes list have \
            both. Device-scoped keys reach only their own device.",
        license(name = "Apache-2.0")
    ),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
    tags(
        (name = "devices", description = "Devices of a workspace"),
        (name = "telemetry", description = "Telemetry reads (60/min per device, bursts of 10)"),
        (name = "logs", description = "Device logs (5/min per client IP, 50/min overall)"),
        (name = "config", description = "Versioned device configuration"),
        (name = "health", description = "Probes (no authentication)")
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

/// Cursor pagination.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// Page size.
    limit: Option<u32>,
    /// `pagination.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Cursor pagination in either direction.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DirectedPageQuery {
    /// Page size.
    limit: Option<u32>,
    /// `pagination.next_cursor` of the previous page.
    cursor: Option<String>,
    /// `backward` (default, newest first) or `forward`.
    direction: Option<String>,
}

/// A time window: RFC 3339 date-time or unix seconds; start inclusive, end exclusive.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct WindowQuery {
    start_time: Option<String>,
    end_time: Option<String>,
}

/// Filters of the device list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQuery {
    /// `online`, `offline` or `unknown`.
    status: Option<String>,
    /// `edge` or `ai1`.
    #[param(rename = "type")]
    device_type: Option<String>,
}

/// Bucketed telemetry.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PeriodQuery {
    /// `1h` (1 MINUTE buckets), `6h` (5 MINUTE), `12h` (10 MINUTE), `24h` (15 MINUTE, default),
    /// `7d` (1 HOUR), `30d` (1 DAY).
    time_period: Option<String>,
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
    after_seq: Option<u64>,
}

/// A config version.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct VersionQuery {
    /// A past version; the current one when absent.
    version: Option<u64>,
}

/// The document as served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    super::routes().into_openapi()
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
