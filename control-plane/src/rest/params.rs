//! Request parsing with REST-shaped errors: query strings, JSON bodies and
//! time parameters all fail as 400 `{"error": "..."}`.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;

use super::error::ApiError;
use crate::store::{Direction, UnixMillis};

/// The query string as a map; malformed → 400.
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
}

impl Params {
    /// The query string of `uri`, or `None` when it is malformed.
    pub fn from_uri(uri: &axum::http::Uri) -> Option<Self> {
        Query::<HashMap<String, String>>::try_from_uri(uri)
            .ok()
            .map(|q| Params(q.0))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Self::from_uri(&parts.uri).ok_or_else(|| ApiError::bad_request("malformed query string"))
    }
}

/// A JSON body; malformed or wrongly typed → 400 naming the problem.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::bad_request(
                "request body must be JSON with Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid request body: {}",
                e.body_text()
            ))),
        }
    }
}

/// Refuses control characters (C0 with NUL, ESC, newline and tab; DEL;
/// C1) in a string an operator gives: names and descriptions end up on
/// operators' terminals and pages, where ESC sequences rewrite the screen.
/// 400 naming the field.
pub fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{field} must not contain control characters (U+0000-U+001F, U+007F-U+009F)"
        )));
    }
    Ok(())
}

/// Parses a sequence number (`after_seq`, `Last-Event-ID`): 0 to
/// `i64::MAX`, as the store keeps them.
pub fn parse_seq(name: &str, raw: &str) -> Result<u64, ApiError> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be an integer from 0 to {}", i64::MAX))
        })
}

/// Parses a time parameter: RFC 3339 (`2026-11-23T10:00:00Z`) or unix seconds.
pub fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<UnixMillis>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    if let Ok(secs) = raw.parse::<i64>() {
        return secs
            .checked_mul(1000)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{name} is out of range")));
    }
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map(|t| Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be an RFC 3339 date-time (e.g. 2026-01-31T12:00:00Z) or unix seconds"
            ))
        })
}

/// Parses `direction`: `forward` or `backward` (default).
pub fn parse_direction(raw: Option<&str>) -> Result<Direction, ApiError> {
    match raw {
        None => Ok(Direction::default()),
        Some("forward") => Ok(Direction::Forward),
        Some("backward") => Ok(Direction::Backward),
        Some(_) => Err(ApiError::bad_request(
            "direction must be forward or backward",
        )),
    }
}

/// Parses an optional time window; `start_time` must not be after `end_time`.
pub fn parse_window(params: &Params) -> Result<(Option<UnixMillis>, Option<UnixMillis>), ApiError> {
    let start = parse_time("start_time", params.get("start_time"))?;
    let end = parse_time("end_time", params.get("end_time"))?;
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(ApiError::bad_request(
            "start_time must not be after end_time",
        ));
    }
    Ok((start, end))
}

/// Formats unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_time(ms: UnixMillis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_0_to_i64_max() {
        assert_eq!(parse_seq("after_seq", "0").unwrap(), 0);
        assert_eq!(
            parse_seq("after_seq", "9223372036854775807").unwrap(),
            i64::MAX as u64
        );
        for bad in ["9223372036854775808", "-1", "", "null", "1.5"] {
            match parse_seq("after_seq", bad) {
                Err(ApiError::BadRequest(m)) => assert!(m.starts_with("after_seq "), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in ["\u{1b}[2J", "a\0", "\u{7f}", "\u{9b}", "a\nb", "\t", "\r"] {
            match check_text("name", bad) {
                Err(ApiError::BadRequest(m)) => assert!(m.starts_with("name "), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        for ok in ["", "Kamera Süd", "東京 ✓", "a\u{a0}b", "quote\"s"] {
            assert!(check_text("name", ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn times_parse_and_format() {
        assert_eq!(parse_time("t", None).unwrap(), None);
        assert_eq!(
            parse_time("t", Some("1700000000")).unwrap(),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("t", Some("2023-11-14T22:13:20Z")).unwrap(),
            Some(1_700_000_000_000)
        );
        assert!(parse_time("start_time", Some("yesterday")).is_err());
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
