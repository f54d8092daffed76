//! The one place where REST errors become HTTP responses, with the two body
//! shapes of reference/000.

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 401 with the structured OAuthException body.
    Unauthorized {
        message: String,
        hint: String,
    },
    BadRequest(String),
    Forbidden(String),
    NotFound(String),
    /// 409: the resource's state does not allow it (the message says why).
    Conflict(String),
    /// 429. `plain`: the logs limiter answers with a plain-string body.
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
        plain: bool,
    },
    /// 503: a capacity limit of this replica (the message says which).
    Unavailable(String),
    /// A failure on our side; the detail goes to the log, not the client.
    Internal(String),
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::BadRequest(m.into())
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::Forbidden(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub fn unauthorized(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::Unauthorized {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => ApiError::bad_request(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// Handled above; kept so the match stays exhaustive without a panic.
fn unreachable_429() -> (StatusCode, serde_json::Value) {
    (
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": "rate limit exceeded"}),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::TooManyRequests {
            message,
            retry_after_secs,
            plain,
        } = self
        {
            let retry = [(
                axum::http::header::RETRY_AFTER,
                retry_after_secs.max(1).to_string(),
            )];
            return if plain {
                let mut resp = (StatusCode::TOO_MANY_REQUESTS, retry, message).into_response();
                resp.extensions_mut().insert(PlainErrorBody);
                resp
            } else {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    retry,
                    Json(json!({"error": message})),
                )
                    .into_response()
            };
        }
        let (status, body) = match self {
            ApiError::Unauthorized { message, hint } => (
                StatusCode::UNAUTHORIZED,
                json!({"error": {"message": message, "status": 401, "type": "OAuthException", "hint": hint}}),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error": m})),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, json!({"error": m})),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, json!({"error": m})),
            ApiError::TooManyRequests { .. } => unreachable_429(),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, json!({"error": m})),
            ApiError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal error; see the control plane's log"}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// Marks the one error answered as plain text on purpose: the logs
/// limiter's 429 (reference/000).
#[derive(Debug, Clone, Copy)]
pub struct PlainErrorBody;

/// Errors made below the handlers (body limit 413, 405, timeouts, axum's
/// extractor rejections) come as text or empty; this outermost layer gives
/// them the documented shape `{"error": "<message>"}`, keeping status and
/// headers (`Allow`, `Retry-After`, `x-request-id`). JSON errors and the
/// marked plain 429 pass as they are.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error())
        || is_json
        || resp.extensions().get::<PlainErrorBody>().is_some()
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // These bodies are short messages; a longer one is replaced by the
    // status's reason.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = (status, Json(json!({ "error": message }))).into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}
