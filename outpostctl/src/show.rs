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

/// Pretty JSON on standard output (exact: see [`json_text`]).
pub fn json(v: &Value) -> Result<()> {
    line(&json_text(
        &serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()),
    ))
}

/// Compact JSON, one value a line (streams and follows).
pub fn json_line(v: &Value) -> Result<()> {
    line(&json_text(&v.to_string()))
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

/// `s` as it may reach a terminal: every character that could move the
/// cursor, start an escape sequence, cut the line or reorder the text is
/// shown escaped — C0 (ESC, NUL, CR, BS, tab, newline, …), DEL, C1
/// (U+0080–U+009F, e.g. the one-byte CSI), the bidirectional controls
/// (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069) and the line and
/// paragraph separators (U+2028/9). `\n`, `\r`, `\t` for those three,
/// `\x1b` for the rest below U+0100, `\u{202e}` above: one record stays one
/// line, and nothing a device sends is obeyed by the operator's terminal.
/// Every device-originated string outpostctl prints for humans goes
/// through this (JSON output does not: it stays exact).
pub fn safe(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Whether [`safe`] escapes `c`.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// JSON text with what a terminal would obey escaped as `\uXXXX`: DEL, C1
/// and the bidirectional controls (serde_json already escapes C0). They can
/// only occur inside strings, where the escape means the same character:
/// the value parses back exactly.
pub fn json_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (needs_escape(c) && !c.is_ascii_control()) || c == '\u{7f}' {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod safe_tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(text(&Value::from("cam\u{1b}[2J1")), "cam\\x1b[2J1");
        assert_eq!(text(&Value::from("a\nb")), "a\\nb");
        assert_eq!(text(&Value::from("Kamera 7 ü")), "Kamera 7 ü");
        assert_eq!(
            safe("nul\0 bs\x08 cr\r tab\t del\x7f csi\u{9b} osc\u{1b}]0;t\u{7}"),
            "nul\\x00 bs\\x08 cr\\r tab\\t del\\x7f csi\\x9b osc\\x1b]0;t\\x07"
        );
        assert_eq!(
            safe("evil\u{202e}gpj.exe \u{2066}x\u{2069} \u{200f}\u{2028}"),
            "evil\\u{202e}gpj.exe \\u{2066}x\\u{2069} \\u{200f}\\u{2028}"
        );
        // Printable text outside ASCII is kept, as are backslashes.
        assert_eq!(safe("温度 ≥ 80 °C, C:\\temp"), "温度 ≥ 80 °C, C:\\temp");
        // Idempotent: what it prints has nothing left to escape.
        let once = safe("a\u{1b}b\u{9b}\u{202e}");
        assert_eq!(safe(&once), once);
        assert!(!once.chars().any(needs_escape));
    }

    #[test]
    fn json_text_escapes_what_serde_json_leaves_and_parses_back_exactly() {
        let v = Value::from("a\u{1b}b\u{9b}c\u{7f}d\u{202e}e ü");
        let text = json_text(&v.to_string());
        assert_eq!(text, r#""a\u001bb\u009bc\u007fd\u202ee ü""#);
        assert!(!text.chars().any(needs_escape));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
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
                    *x = (*x).max(safe(cell).chars().count());
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
        let cells: Vec<String> = cells.iter().map(|c| safe(c)).collect();
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

/// Key/value lines, keys padded to the longest; values through [`safe`].
pub fn pairs(pairs: &[(&str, String)]) -> Result<()> {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in pairs {
        line(&format!("{:<w$} {}", format!("{k}:"), safe(v)))?;
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
