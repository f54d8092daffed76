//! Cursor pagination, shared by every list route: opaque cursors, one limit
//! rule, one response envelope.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub pagination: PageInfo,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PageInfo {
    pub next_cursor: Option<String>,
    pub has_more: bool,
    pub limit: u32,
    /// Logs with `after_seq` only: the `after_seq` of the next request (it
    /// moves past lines the filters skip, so a follower never rescans them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

/// Parses `limit`: default `default`, 1..=`max`.
pub fn parse_limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be an integer between 1 and {max}"
            ))),
        },
    }
}

pub fn encode_cursor<K: Serialize>(key: &K) -> String {
    // Serializing a tuple of plain values cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).unwrap_or_default())
}

pub fn decode_cursor<K: DeserializeOwned>(raw: Option<&str>) -> Result<Option<K>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let bytes = URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| ApiError::bad_request("malformed cursor"))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| ApiError::bad_request("malformed cursor"))
}

/// Builds a page from up to `limit + 1` fetched rows: the extra row only
/// tells that there is more.
pub fn page<R, T, K: Serialize>(
    mut rows: Vec<R>,
    limit: u32,
    key_of: impl Fn(&R) -> K,
    view: impl Fn(R) -> T,
) -> Page<T> {
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if has_more {
        rows.last().map(|r| encode_cursor(&key_of(r)))
    } else {
        None
    };
    Page {
        data: rows.into_iter().map(view).collect(),
        pagination: PageInfo {
            last_seq: None,
            next_cursor,
            has_more,
            limit,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_garbage_is_400() {
        let c = encode_cursor(&(42i64, "abc".to_string()));
        let back: Option<(i64, String)> = decode_cursor(Some(&c)).unwrap();
        assert_eq!(back, Some((42, "abc".to_string())));
        assert!(matches!(
            decode_cursor::<(i64, String)>(Some("!!!")),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            decode_cursor::<u64>(Some(&encode_cursor(&"text"))),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn page_sets_has_more_from_the_extra_row() {
        let p = page(vec![1, 2, 3], 2, |r| *r, |r| r * 10);
        assert_eq!(p.data, vec![10, 20]);
        assert!(p.pagination.has_more);
        let next: Option<i32> = decode_cursor(p.pagination.next_cursor.as_deref()).unwrap();
        assert_eq!(next, Some(2));
        let last = page(vec![1], 2, |r| *r, |r| r);
        assert!(!last.pagination.has_more);
        assert!(last.pagination.next_cursor.is_none());
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(parse_limit(None, 50, 500).unwrap(), 50);
        assert_eq!(parse_limit(Some("7"), 50, 500).unwrap(), 7);
        assert!(parse_limit(Some("0"), 50, 500).is_err());
        assert!(parse_limit(Some("501"), 50, 500).is_err());
        assert!(parse_limit(Some("x"), 50, 500).is_err());
    }
}
