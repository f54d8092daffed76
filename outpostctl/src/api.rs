//! The REST client: one `reqwest` client (rustls, ring provider), the API
//! key in the `Authorization` header only, server errors turned into the
//! server's own message.

use std::path::Path;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode, Url};
use serde_json::Value;

use crate::error::{Error, Result, describe};

const USER_AGENT: &str = concat!("outpostctl/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The control plane answers within 30 s or gives up itself (503).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// One-shot commands wait out 429s up to this long in all, then fail.
const MAX_RATE_WAIT: Duration = Duration::from_secs(60);
/// A 429 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Server messages longer than this are cut (an HTML error page, say).
const MAX_MESSAGE: usize = 500;

/// Where and as whom: the resolved `--url`, `--api-key`, `--workspace`.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: Url,
    workspace: String,
    key: String,
    /// `logs --follow`: wait out every 429, quietly.
    patient: bool,
}

/// The answer to opening a stream.
pub enum Opened {
    Stream(Response),
    /// The server refused; `retry_after` when it said when to come back.
    Refused {
        error: Error,
        retry_after: Option<Duration>,
    },
}

impl Api {
    pub fn new(url: &str, key: String, workspace: String, ca_file: Option<&Path>) -> Result<Self> {
        let base = Url::parse(url).map_err(|e| {
            Error::Usage(format!(
                "--url / OUTPOST_URL {url:?} is not a URL ({e}); e.g. http://127.0.0.1:8080"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Usage(format!(
                "--url / OUTPOST_URL must be an http:// or https:// URL, not {url:?}"
            )));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(Error::Usage(
                "--url / OUTPOST_URL must not carry credentials; give the key with OUTPOST_API_KEY"
                    .into(),
            ));
        }
        if workspace.is_empty() {
            return Err(Error::Usage(
                "the workspace is empty: pass --workspace or set OUTPOST_WORKSPACE".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(30))
            // An API does not redirect; following one could carry the key
            // somewhere else. A 3xx is reported with its Location instead.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Usage(format!("cannot read --ca-file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Usage(format!("--ca-file {}: {}", path.display(), describe(&e)))
            })?;
            if certs.is_empty() {
                return Err(Error::Usage(format!(
                    "--ca-file {} holds no PEM certificate",
                    path.display()
                )));
            }
            // Like curl's --cacert: this CA only, not the system's roots.
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::Connection(format!("cannot set up HTTP/TLS: {}", describe(&e))))?;
        Ok(Api {
            http,
            base,
            workspace,
            key,
            patient: false,
        })
    }

    pub fn workspace(&self) -> &str {
        &self.workspace
    }

    /// From now on, wait out every 429 without a notice (long-running
    /// pollers: the wait is the rate the server allows).
    pub fn set_patient(&mut self) {
        self.patient = true;
    }

    /// `{url}/{workspace}/devices/v2/{segments…}`, each segment
    /// percent-encoded.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        // `new` checked that the URL can be a base, so this is always Ok.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .push(&self.workspace)
                .extend(["devices", "v2"])
                .extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Value> {
        self.call(Method::GET, segments, query, None)
            .await?
            .ok_or_else(|| Error::Protocol("an empty answer where JSON was expected".into()))
    }

    /// A paged list route: every item (or the first `limit`), walking
    /// `next_cursor` with pages of up to `max_page`; returns the items in the
    /// server's order with the last page's `pagination`.
    pub async fn pages(
        &self,
        segments: &[&str],
        filters: &[(&str, String)],
        limit: Option<u32>,
        max_page: u32,
    ) -> Result<(Vec<Value>, Value)> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let want = match limit {
                Some(l) => (l as usize)
                    .saturating_sub(items.len())
                    .min(max_page as usize) as u32,
                None => max_page,
            };
            let mut query: Vec<(&str, String)> = filters.to_vec();
            query.push(("limit", want.max(1).to_string()));
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let mut page = self.get(segments, &query).await?;
            let Some(data) = page.get_mut("data").and_then(Value::as_array_mut) else {
                return Err(Error::Protocol("a list without \"data\"".into()));
            };
            items.append(data);
            let pagination = page.get("pagination").cloned().unwrap_or(Value::Null);
            let full = limit.is_some_and(|l| items.len() >= l as usize);
            match pagination["next_cursor"].as_str() {
                Some(c) if !full && pagination["has_more"].as_bool() != Some(false) => {
                    cursor = Some(c.to_string())
                }
                _ => return Ok((items, pagination)),
            }
        }
    }

    /// A device named by its id or by its name (which must then be unique
    /// in the workspace): its id.
    pub async fn device_id(&self, device: &str) -> Result<String> {
        match self.get(&[device], &[]).await {
            // Only a device whose id it is: `audit`, `enrollment-tokens` or
            // `.` are other routes that answer 200 too.
            Ok(d) if d["id"].as_str() == Some(device) => return Ok(device.to_string()),
            Ok(_) | Err(Error::Server { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        let page = self
            .get(&[], &[("name", device.to_string()), ("limit", "10".into())])
            .await?;
        let ids: Vec<&str> = page["data"]
            .as_array()
            .ok_or_else(|| Error::Protocol("a list without \"data\"".into()))?
            .iter()
            .filter_map(|d| d["id"].as_str())
            .collect();
        match ids.as_slice() {
            [] => Err(Error::Server {
                status: 404,
                message: format!("no device has the id or name {device:?}"),
            }),
            [id] => Ok(id.to_string()),
            more => Err(Error::Usage(format!(
                "{}{} devices are named {device:?}: name one by its id ({})",
                more.len(),
                if page["pagination"]["has_more"].as_bool() == Some(true) {
                    "+"
                } else {
                    ""
                },
                more.join(", ")
            ))),
        }
    }

    /// One request; `None` for an empty success (204). 429s are waited out
    /// (`Retry-After`) up to a minute in all, or forever once `patient`.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        let url = self.url(segments, query);
        let mut waited = Duration::ZERO;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&self.key)
                .header(ACCEPT, "application/json")
                .timeout(REQUEST_TIMEOUT);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Error::Connection(describe(&e)))?;
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                let wait = retry_after(&resp).unwrap_or(DEFAULT_RETRY_AFTER);
                if self.patient || waited + wait <= MAX_RATE_WAIT {
                    if !self.patient {
                        eprintln!(
                            "outpostctl: rate limited by the server; retrying in {}s",
                            wait.as_secs()
                        );
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                    continue;
                }
            }
            return read_answer(resp).await;
        }
    }

    /// PUTs the file at `path` (`len` bytes) as `application/octet-stream`,
    /// streamed from disk (never whole in memory); no overall timeout, as
    /// a large payload takes as long as the link needs.
    pub async fn put_file(&self, segments: &[&str], path: &Path, len: u64) -> Result<Value> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            64 * 1024,
        ));
        let resp = self
            .http
            .put(self.url(segments, &[]))
            .bearer_auth(&self.key)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::Connection(describe(&e)))?;
        read_answer(resp)
            .await?
            .ok_or_else(|| Error::Protocol("an empty answer where JSON was expected".into()))
    }

    /// Opens a Server-Sent Events stream (no overall timeout: it is meant
    /// to stay open). `last_event_id` resumes after that event.
    pub async fn open_stream(
        &self,
        segments: &[&str],
        last_event_id: Option<u64>,
    ) -> Result<Opened> {
        let mut req = self
            .http
            .get(self.url(segments, &[]))
            .bearer_auth(&self.key)
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Connection(describe(&e)))?;
        if !resp.status().is_success() {
            let retry_after = retry_after(&resp);
            return Ok(match read_answer(resp).await {
                Err(error) => Opened::Refused { error, retry_after },
                Ok(_) => Opened::Refused {
                    error: Error::Protocol("a non-success status without an error".into()),
                    retry_after,
                },
            });
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !content_type.starts_with("text/event-stream") {
            return Err(Error::Protocol(format!(
                "expected an event stream (text/event-stream), got {content_type:?}"
            )));
        }
        Ok(Opened::Stream(resp))
    }
}

fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.clamp(1, 3600)))
}

/// A success becomes its JSON (`None` when empty); anything else becomes
/// `Error::Server` with the server's message.
async fn read_answer(resp: Response) -> Result<Option<Value>> {
    let status = resp.status();
    if status.is_redirection() {
        let to = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        return Err(Error::Server {
            status: status.as_u16(),
            message: format!("redirected to {to}; if that is the control plane, use it as --url"),
        });
    }
    let text = resp
        .text()
        .await
        .map_err(|e| Error::Connection(describe(&e)))?;
    if status.is_success() {
        if text.trim().is_empty() {
            return Ok(None);
        }
        return serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::Protocol(format!(
                "HTTP {status} with a body that is not JSON ({e}): {}",
                cut(text.trim())
            ))
        });
    }
    Err(Error::Server {
        status: status.as_u16(),
        message: server_message(status, &text),
    })
}

/// The server's message from either error shape (`{"error":"…"}` or the
/// 401 `{"error":{"message","hint",…}}`), or the plain-text body (the logs
/// limiter's 429), or the status's reason.
pub fn server_message(status: StatusCode, body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        match &v["error"] {
            Value::String(s) => return s.clone(),
            Value::Object(o) => {
                let message = o.get("message").and_then(Value::as_str);
                let hint = o
                    .get("hint")
                    .and_then(Value::as_str)
                    .filter(|h| !h.is_empty());
                match (message, hint) {
                    (Some(m), Some(h)) => return format!("{m} ({h})"),
                    (Some(m), None) => return m.to_string(),
                    _ => {}
                }
            }
            _ => {}
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let text = body.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        cut(text)
    }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(url: &str) -> Api {
        Api::new(url, "opk_secret".into(), "acme".into(), None).unwrap()
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_segments() {
        let a = api("http://127.0.0.1:8080");
        assert_eq!(
            a.url(&["dev1", "logs"], &[("limit", "5".into())]).as_str(),
            "http://127.0.0.1:8080/acme/devices/v2/dev1/logs?limit=5"
        );
        let b = api("https://cp.example.com/outpost/");
        assert_eq!(
            b.url(&["a b/c"], &[]).as_str(),
            "https://cp.example.com/outpost/acme/devices/v2/a%20b%2Fc"
        );
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for u in [
            "",
            "127.0.0.1:8080",
            "ftp://x",
            "mailto:a@b",
            "http://u:p@h/",
        ] {
            match Api::new(u, "k".into(), "acme".into(), None) {
                Err(Error::Usage(_)) => {}
                Err(e) => panic!("{u}: {e}"),
                Ok(_) => panic!("{u}: accepted"),
            }
        }
    }

    #[test]
    fn server_messages_from_every_error_shape() {
        let s = StatusCode::NOT_FOUND;
        assert_eq!(
            server_message(s, r#"{"error":"device not found"}"#),
            "device not found"
        );
        assert_eq!(
            server_message(
                StatusCode::UNAUTHORIZED,
                r#"{"error":{"message":"Invalid API key","status":401,"type":"OAuthException","hint":"Get a key"}}"#
            ),
            "Invalid API key (Get a key)"
        );
        assert_eq!(
            server_message(StatusCode::TOO_MANY_REQUESTS, "Too many requests.\n"),
            "Too many requests."
        );
        assert_eq!(server_message(StatusCode::BAD_GATEWAY, ""), "Bad Gateway");
        assert_eq!(
            server_message(s, &"x".repeat(600)).chars().count(),
            MAX_MESSAGE + 1
        );
    }
}
