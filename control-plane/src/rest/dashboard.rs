//! The web dashboard (issue #7): a handful of static files embedded in the
//! binary and served at `/` and `/assets/{name}`. Everything it shows comes
//! from the REST API, called by the page itself with the operator's API key
//! in an `Authorization` header (the key lives in the tab's session storage,
//! never in a URL). See `docs/dashboard.md`.
//!
//! Every response carries a strict Content-Security-Policy (scripts, styles
//! and fetches from this origin only; no inline code), `nosniff`, no
//! referrer, and no framing. Files are revalidated on every load
//! (`Cache-Control: no-cache`) against a strong ETag (128 bits of the
//! SHA-256 of their bytes), so an upgraded control plane never serves stale
//! scripts.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use crate::AppState;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../assets/dashboard/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page itself, served at `/`.
const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// Everything under `/assets/`.
const ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("util.js", JS),
    asset!("chart.js", JS),
    asset!("fleet.js", JS),
    asset!("device.js", JS),
    asset!("enroll.js", JS),
    asset!("rollouts.js", JS),
    asset!("qrcode.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// What the page may load and talk to: this origin only, nothing inline.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<Arc<AppState>> {
    routes()
}

/// The routes need no state; generic so tests can run them bare.
fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a, &headers),
        None => ApiError::not_found("no such dashboard asset").into_response(),
    }
}

/// The strong ETag of each file (by name), computed once.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(ASSETS)
            .map(|a| {
                let digest = ring::digest::digest(&ring::digest::SHA256, a.body);
                (
                    a.name,
                    format!("\"{}\"", hex::encode(&digest.as_ref()[..16])),
                )
            })
            .collect()
    });
    // Every asset is in the map: it is built from the same two constants.
    tags.get(asset.name).map(String::as_str).unwrap_or("\"\"")
}

fn serve(asset: &Asset, req: &HeaderMap) -> Response {
    let tag = etag(asset);
    let fresh = req
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut headers = security_headers();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(tag) {
        headers.insert(ETAG, v);
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    (headers, asset.body).into_response()
}

fn security_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(tag) = if_none_match {
            req = req.header(IF_NONE_MATCH, tag);
        }
        routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header(resp: &Response, name: HeaderName) -> &str {
        resp.headers()
            .get(&name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn index_is_html_with_a_strict_policy() {
        let resp = get("/", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, CONTENT_TYPE),
            "text/html; charset=utf-8",
            "content type"
        );
        let csp = header(&resp, CONTENT_SECURITY_POLICY);
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(!csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(header(&resp, X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(header(&resp, REFERRER_POLICY), "no-referrer");
        assert_eq!(header(&resp, X_FRAME_OPTIONS), "DENY");
        assert_eq!(header(&resp, CACHE_CONTROL), "no-cache");
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let html = std::str::from_utf8(&body).unwrap();
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains(r#"<script type="module" src="/assets/app.js">"#));
        // Nothing inline: the policy would block it.
        assert!(!html.contains("<style"), "no inline styles");
        assert!(!html.contains("style="), "no inline styles");
        assert!(!html.contains("<script>"), "no inline scripts");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no remote assets"
        );
    }

    #[tokio::test]
    async fn assets_have_their_content_types() {
        for (path, want) in [
            ("/assets/app.js", "text/javascript; charset=utf-8"),
            ("/assets/chart.js", "text/javascript; charset=utf-8"),
            ("/assets/app.css", "text/css; charset=utf-8"),
            ("/assets/favicon.svg", "image/svg+xml"),
        ] {
            let resp = get(path, None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&resp, CONTENT_TYPE), want, "{path}");
            assert_eq!(header(&resp, X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
            assert!(header(&resp, ETAG).starts_with('"'), "{path}");
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_404() {
        for path in ["/assets/nope.js", "/assets/..%2Fsrc%2Fmain.rs", "/assets/"] {
            let resp = get(path, None).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn a_matching_etag_is_304() {
        let first = get("/assets/app.js", None).await;
        let tag = header(&first, ETAG).to_string();
        let again = get("/assets/app.js", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&again, ETAG), tag);
        let other = get("/assets/app.js", Some("\"something-else\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        // `import … from './x.js'` in any script must name an embedded file.
        let mut imports = 0;
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for (i, m) in text.match_indices(" from '") {
                let rest = &text[i + m.len()..];
                let spec = &rest[..rest.find('\'').unwrap()];
                let name = spec
                    .strip_prefix("./")
                    .unwrap_or_else(|| panic!("{}: import of {spec} is not local", a.name));
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{} imports {name}, which is not embedded",
                    a.name
                );
                imports += 1;
            }
        }
        assert!(imports >= 5, "imports found: {imports}");
    }
}
