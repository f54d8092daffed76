//! Getting the agent onto a box, public like a download page (no key):
//! `GET /install.sh` (systemd/install.sh with this control plane's download
//! address and index written in), `GET /downloads/index.json` and `GET
//! /downloads/{file}` (the tarballs of `--agent-dist`, see `dist.rs`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::dist::DistFile;

use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;

/// The installer as committed; [`render_install_script`] fills in two lines.
pub const INSTALL_SCRIPT: &str = include_str!("../../../systemd/install.sh");
const URL_LINE: &str = "DOWNLOAD_URL=\"\"";
const INDEX_LINE: &str = "DOWNLOAD_INDEX=\"\"";

/// `install.sh` with `DOWNLOAD_URL` (where the tarballs are) and
/// `DOWNLOAD_INDEX` (one `file arch version sha256` line per tarball) set.
/// Every value is from `dist::parse_name`, hex, or a URL checked by the
/// configuration (or [`safe_url`]): nothing needs quoting inside `'…'`.
pub fn render_install_script(downloads_url: &str, index: &[DistFile]) -> String {
    let lines: Vec<String> = index
        .iter()
        .map(|f| format!("{} {} {} {}", f.file, f.arch, f.version, f.sha256))
        .collect();
    INSTALL_SCRIPT
        .lines()
        .map(|line| match line {
            URL_LINE => format!("DOWNLOAD_URL='{downloads_url}'"),
            INDEX_LINE => format!("DOWNLOAD_INDEX='{}'", lines.join("\n")),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A base URL built from a request's `Host` when no `--public-rest-url` is
/// set; `None` unless it is a plain host[:port].
fn safe_url(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    ok.then(|| format!("http://{host}"))
}

/// The index, read off the runtime's blocking pool (it may hash files).
async fn index(state: &AppState) -> Result<Vec<DistFile>, ApiError> {
    let dist = state.dist.clone();
    tokio::task::spawn_blocking(move || dist.index())
        .await
        .map_err(|e| ApiError::Internal(format!("download index: {e}")))
}

/// The agent installer. Run on a box as the install command shows: `curl
/// -fsSL URL/install.sh | sudo sh -s -- --server … --install-id …
/// --ca-fingerprint …`; it downloads the tarball for the box's `uname -m`
/// from `/downloads/` and checks its SHA-256 against the index written into
/// it.
#[utoipa::path(
    get,
    path = "/install.sh",
    operation_id = "getInstallScript",
    tag = "downloads",
    security(()),
    responses((status = 200, description = "The installer (POSIX sh)", body = String, content_type = "text/x-shellscript"))
)]
pub async fn install_script(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let files = index(&state).await?;
    let base = state
        .public_rest_url
        .clone()
        .or_else(|| safe_url(&headers))
        .map(|u| format!("{u}/downloads"))
        .unwrap_or_default();
    let script = render_install_script(&base, &files);
    Ok((
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        script,
    )
        .into_response())
}

/// The agent tarballs this control plane serves, this control plane's
/// version first.
#[utoipa::path(
    get,
    path = "/downloads/index.json",
    operation_id = "listDownloads",
    tag = "downloads",
    security(()),
    responses((status = 200, description = "Success", body = Vec<DistFile>))
)]
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Vec<DistFile>>, ApiError> {
    Ok(Json(index(&state).await?))
}

/// One tarball of the index (`outpost-agent-VERSION-ARCH.tar.gz`).
#[utoipa::path(
    get,
    path = "/downloads/{file}",
    operation_id = "downloadFile",
    tag = "downloads",
    security(()),
    params(("file" = String, Path, description = "A file name from the index")),
    responses(
        (status = 200, description = "The tarball", content_type = "application/gzip"),
        NotFound,
    )
)]
pub async fn file(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let dist = state.dist.clone();
    let name = file.clone();
    let path = tokio::task::spawn_blocking(move || dist.path_of(&name))
        .await
        .map_err(|e| ApiError::Internal(format!("download index: {e}")))?
        .ok_or_else(|| ApiError::not_found(format!("no download named {file:?}")))?;
    let f = tokio::fs::File::open(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError::not_found(format!("no download named {file:?}"))
        } else {
            ApiError::Internal(format!("{}: {e}", path.display()))
        }
    })?;
    let len = f
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?
        .len();
    // Streamed from the file: a download costs a buffer, not the tarball.
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_has_the_lines_it_is_rendered_through() {
        assert_eq!(INSTALL_SCRIPT.lines().filter(|l| *l == URL_LINE).count(), 1);
        assert_eq!(
            INSTALL_SCRIPT.lines().filter(|l| *l == INDEX_LINE).count(),
            1
        );
        let f = DistFile {
            file: "outpost-agent-0.1.0-x86_64.tar.gz".into(),
            arch: "x86_64".into(),
            version: "0.1.0".into(),
            sha256: "ab".repeat(32),
            size: 1,
        };
        let s = render_install_script("https://cp.example.com/downloads", &[f.clone(), f]);
        assert!(s.contains("DOWNLOAD_URL='https://cp.example.com/downloads'"));
        assert!(s.contains(&format!(
            "DOWNLOAD_INDEX='outpost-agent-0.1.0-x86_64.tar.gz x86_64 0.1.0 {}\noutpost",
            "ab".repeat(32)
        )));
    }
}
