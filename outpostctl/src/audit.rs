//! `audit export`: every audit entry of the workspace (or those in
//! `--since`/`--until`, of one `--action`), oldest first, as JSON lines or
//! CSV, page by page as they arrive (nothing is held in memory).
//!
//! Entries are data from the server: control characters never reach the
//! terminal raw. JSON lines escape them (`\u001b`, also DEL and the C1
//! range, which JSON would allow raw); CSV quotes fields per RFC 4180,
//! shows control characters as `\u{1b}`, and puts a `'` before a field
//! starting with `=`, `+`, `-` or `@` so a spreadsheet does not run it as a
//! formula.

use serde_json::Value;

use crate::api::Api;
use crate::cli::{AuditExportArgs, ExportFormat};
use crate::error::{Error, Result};
use crate::logs::time_arg;
use crate::show;

/// The server's largest audit page.
const PAGE: u32 = 500;

/// The CSV columns, in order: the fields of an entry.
pub const CSV_COLUMNS: &[&str] = &[
    "id",
    "timestamp",
    "actor",
    "workspace",
    "action",
    "target",
    "status",
    "request_id",
    "client_address",
];

pub async fn export(api: &Api, args: AuditExportArgs) -> Result<()> {
    let now = std::time::SystemTime::now();
    let mut filters: Vec<(&str, String)> = vec![("direction", "forward".into())];
    if let Some(s) = &args.since {
        filters.push(("start_time", show::rfc3339(time_arg("--since", s, now)?)));
    }
    if let Some(s) = &args.until {
        filters.push(("end_time", show::rfc3339(time_arg("--until", s, now)?)));
    }
    if let Some(a) = args.action {
        filters.push(("action", a));
    }
    if args.format == ExportFormat::Csv {
        show::line(&CSV_COLUMNS.join(","))?;
    }
    let mut cursor: Option<String> = None;
    loop {
        let mut query = filters.clone();
        query.push(("limit", PAGE.to_string()));
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = api.get(&["audit"], &query).await?;
        let Some(data) = page.get("data").and_then(Value::as_array) else {
            return Err(Error::Protocol("a list without \"data\"".into()));
        };
        for entry in data {
            let line = match args.format {
                ExportFormat::Jsonl => json_line(entry),
                ExportFormat::Csv => csv_line(entry),
            };
            show::line(&line)?;
        }
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) if page["pagination"]["has_more"].as_bool() != Some(false) => {
                cursor = Some(c.to_string())
            }
            _ => return Ok(()),
        }
    }
}

/// Compact JSON with every control character escaped (`\uXXXX`: the value
/// parses back exactly; see `show::json_text`).
pub fn json_line(v: &Value) -> String {
    crate::show::json_text(&v.to_string())
}

/// One CSV record of an entry, in [`CSV_COLUMNS`] order.
pub fn csv_line(entry: &Value) -> String {
    CSV_COLUMNS
        .iter()
        .map(|col| csv_field(&entry[*col]))
        .collect::<Vec<_>>()
        .join(",")
}

fn csv_field(v: &Value) -> String {
    let raw = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut text = String::with_capacity(raw.len());
    if raw.starts_with(['=', '+', '-', '@']) {
        text.push('\'');
    }
    for c in raw.chars() {
        if c.is_control() {
            text.push_str(&c.escape_unicode().to_string());
        } else {
            text.push(c);
        }
    }
    if text.contains([',', '"']) || text != text.trim() {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_quotes_escapes_and_defuses() {
        let e = json!({
            "id": 7, "timestamp": "2026-01-01T00:00:00.000Z", "actor": null,
            "workspace": "acme", "action": "deleteDevice",
            "target": "a,\"b\"\u{1b}[31m", "status": 204,
            "request_id": "=HYPERLINK(1)", "client_address": "127.0.0.1:5"
        });
        assert_eq!(
            csv_line(&e),
            "7,2026-01-01T00:00:00.000Z,,acme,deleteDevice,\"a,\"\"b\"\"\\u{1b}[31m\",204,'=HYPERLINK(1),127.0.0.1:5"
        );
        assert_eq!(csv_field(&json!("line\nbreak")), "line\\u{a}break");
        assert_eq!(csv_field(&json!(" padded")), "\" padded\"");
    }

    #[test]
    fn json_lines_escape_every_control_character() {
        let line = json_line(&json!({"t": "a\u{1b}b\u{9b}c\u{7f}d"}));
        assert_eq!(line, r#"{"t":"a\u001bb\u009bc\u007fd"}"#);
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["t"], "a\u{1b}b\u{9b}c\u{7f}d");
        assert!(!line.chars().any(char::is_control));
    }
}
