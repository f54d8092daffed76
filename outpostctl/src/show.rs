//! Human output: standard output lines, tables, sizes, ages, percentages.

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::error::Result;

/// Writes one line to standard output (a closed pipe ends the program
/// quietly, see `Error::OutputClosed`).
pub fn line(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Pretty JSON on standard output.
pub fn json(v: &Value) -> Result<()> {
    line(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()))
}

/// Compact JSON, one value a line (streams and follows).
pub fn json_line(v: &Value) -> Result<()> {
    line(&v.to_string())
}

/// A text field, or `-` when absent, null or empty. Control characters
/// (escape sequences a hostile box could put in its name or logs) are shown
/// escaped, never sent to the terminal.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => safe(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        _ => "-".to_string(),
    }
}

/// `s` with its control characters but tab escaped (`\u{1b}`, `\n`).
pub fn safe(s: &str) -> String {
    let unsafe_char = |c: char| c.is_control() && c != '\t';
    if !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod safe_tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(text(&Value::from("cam\u{1b}[2J1")), "cam\\u{1b}[2J1");
        assert_eq!(text(&Value::from("a\nb")), "a\\nb");
        assert_eq!(text(&Value::from("Kamera 7 ü")), "Kamera 7 ü");
        assert_eq!(safe("key\tvalue"), "key\tvalue");
    }
}

/// A column table: columns padded to their widest cell, two spaces apart.
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// Columns aligned to the right (numbers).
    pub right: Vec<usize>,
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Self {
        Table {
            headers,
            rows: Vec::new(),
            right: Vec::new(),
        }
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(x) = w.get_mut(i) {
                    *x = (*x).max(cell.chars().count());
                }
            }
        }
        w
    }

    /// Where each column starts (in characters).
    pub fn offsets(&self) -> Vec<usize> {
        let mut at = 0;
        self.widths()
            .into_iter()
            .map(|w| {
                let o = at;
                at += w + 2;
                o
            })
            .collect()
    }

    fn render_row(&self, widths: &[usize], cells: &[String]) -> String {
        let mut out = String::new();
        for (i, w) in widths.iter().enumerate() {
            let cell = cells.get(i).map(String::as_str).unwrap_or("");
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if self.right.contains(&i) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if i + 1 < widths.len() {
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.trim_end().to_string()
    }

    /// The header line, then one line per row.
    pub fn lines(&self) -> Vec<String> {
        let widths = self.widths();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        std::iter::once(self.render_row(&widths, &headers))
            .chain(self.rows.iter().map(|r| self.render_row(&widths, r)))
            .collect()
    }

    pub fn print(&self) -> Result<()> {
        for l in self.lines() {
            line(&l)?;
        }
        Ok(())
    }
}

/// Key/value lines, keys padded to the longest.
pub fn pairs(pairs: &[(&str, String)]) -> Result<()> {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in pairs {
        line(&format!("{:<w$} {v}", format!("{k}:")))?;
    }
    Ok(())
}

/// `1.5 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `used / total` as a percentage; `None` when the total is 0 or absent.
pub fn percent(used: &Value, total: &Value) -> Option<f64> {
    let (u, t) = (used.as_f64()?, total.as_f64()?);
    (t > 0.0).then(|| u / t * 100.0)
}

pub fn pct(p: Option<f64>) -> String {
    p.map(|p| format!("{p:.1}")).unwrap_or_else(|| "-".into())
}

/// Parses the server's RFC 3339 times.
pub fn time(v: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v.as_str()?).ok()
}

/// A short duration: `45s`, `12m`, `3h5m`, `6d23h`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long ago `t` was: `12s ago`, `never` without a time.
pub fn ago(t: &Value, now: SystemTime) -> String {
    match time(t) {
        None => "never".into(),
        Some(t) => match now.duration_since(t) {
            Ok(d) => format!("{} ago", short(d)),
            Err(_) => "just now".into(),
        },
    }
}

/// Time left until `t`: `in 6d23h`, `expired 2h ago`, `-` without a time.
pub fn until(t: &Value, now: SystemTime) -> String {
    match time(t) {
        None => "-".into(),
        Some(t) => match t.duration_since(now) {
            Ok(d) => format!("in {}", short(d)),
            Err(e) => format!("expired {} ago", short(e.duration())),
        },
    }
}

/// A time as RFC 3339 with milliseconds (what the server takes and gives).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_pad_and_align() {
        let mut t = Table::new(vec!["NAME", "CPU%"]);
        t.right = vec![1];
        t.rows.push(vec!["camera-1".into(), "5.0".into()]);
        t.rows.push(vec!["x".into(), "100.0".into()]);
        assert_eq!(
            t.lines(),
            vec!["NAME       CPU%", "camera-1    5.0", "x         100.0"]
        );
        assert_eq!(t.offsets(), vec![0, 10]);
    }

    #[test]
    fn sizes_percentages_and_ages() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(pct(percent(&json!(1), &json!(4))), "25.0");
        assert_eq!(pct(percent(&json!(1), &json!(0))), "-");
        assert_eq!(short(Duration::from_secs(59)), "59s");
        assert_eq!(short(Duration::from_secs(3 * 3600 + 5 * 60)), "3h5m");
        assert_eq!(short(Duration::from_secs(7 * 86400 - 3600)), "6d23h");
        let now = humantime::parse_rfc3339("2026-01-01T00:00:10Z").unwrap();
        assert_eq!(ago(&json!("2026-01-01T00:00:00.000Z"), now), "10s ago");
        assert_eq!(ago(&Value::Null, now), "never");
        assert_eq!(until(&json!("2026-01-01T01:00:10.000Z"), now), "in 1h0m");
        assert_eq!(
            until(&json!("2025-12-31T23:00:10Z"), now),
            "expired 1h0m ago"
        );
        assert_eq!(rfc3339(now), "2026-01-01T00:00:10.000Z");
        assert_eq!(text(&json!("")), "-");
        assert_eq!(text(&json!(true)), "yes");
    }
}
