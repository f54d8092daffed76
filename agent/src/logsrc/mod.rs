//! Log sources: lines from followed files ([`FileFollower`]) and journald
//! units ([`JournalReader`]), each with the [`Position`] to resume after it.
//! Spooling, delivery and rate limiting live elsewhere; the caller persists a
//! line's position once the line itself is safely stored, and passes the
//! last persisted position back at the next start.
//!
//! Choices:
//! - **First start begins at the end.** Without a saved position a file is
//!   followed from its end at construction and journald from `--lines=0`:
//!   installing the agent must not ship a box's whole history. A file that
//!   does not exist yet is read from its beginning once it appears (all of it
//!   is new).
//! - **Rotation.** A file is followed by path. When the path names another
//!   inode (logrotate's default rename + create, or delete + recreate), the
//!   open handle is read to its end first (a writer may still be appending
//!   to it), then the new file is read from offset 0. When the file is
//!   shorter than our offset (copytruncate, `> file`), reading restarts at 0.
//!   A deleted file keeps being read through the open handle, quietly. On
//!   resume, a position whose inode is now `PATH.1` (rotated while the agent
//!   was down) finishes `PATH.1` before the new file. See [`mod@file`] for the
//!   limits of this.
//! - **journald through `journalctl`.** The crate forbids `unsafe`, so no
//!   libsystemd FFI: a `journalctl --follow --output=json` child process per
//!   unit, read line by line; its cursor is the position. The child is
//!   killed when the reader is dropped; when it exits the reader ends and the
//!   caller restarts it (with backoff) from the last cursor.
//! - **Bounded lines.** Messages longer than [`MAX_LINE_BYTES`] are cut (see
//!   [`bound_line`]); invalid UTF-8 is converted lossily.

pub mod file;
pub mod journal;

pub use file::FileFollower;
pub use journal::JournalReader;

/// Syslog severities, lowest first; the wire/storage names.
pub const SEVERITIES: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// Longest message kept, in bytes; longer lines are cut at a char boundary
/// and get the suffix `" …[truncated N bytes]"` (N = bytes cut), so a bounded
/// message is at most this plus the suffix.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Our severity name for a journald/syslog `PRIORITY` (0 emerg … 7 debug);
/// anything above 7 is `"debug"`.
pub fn severity_from_priority(p: u8) -> &'static str {
    match p {
        0 => "emergency",
        1 => "alert",
        2 => "critical",
        3 => "error",
        4 => "warning",
        5 => "notice",
        6 => "info",
        _ => "debug",
    }
}

/// A guess at a plain-text line's severity, for files. The line is split into
/// words (runs of ASCII letters and digits) and compared case-insensitively:
/// `crit`/`critical`/`fatal`/`panic` → critical, `error`/`err` → error,
/// `warn`/`warning` → warning, `debug` → debug, else info. When several
/// match, the most severe wins ("debug: error in x" is an error). Only whole
/// words count: "errors", "terror" or "E0001" do not.
pub fn guess_severity(line: &str) -> &'static str {
    let mut found: Option<usize> = None; // index into SEVERITIES
    for word in line
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() <= 8)
    {
        let rank = if ["crit", "critical", "fatal", "panic"]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
        {
            5
        } else if ["error", "err"]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
        {
            4
        } else if ["warn", "warning"]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
        {
            3
        } else if word.eq_ignore_ascii_case("debug") {
            0
        } else {
            continue;
        };
        found = Some(found.map_or(rank, |f| f.max(rank)));
    }
    SEVERITIES[found.unwrap_or(1)]
}

/// Applies the [`MAX_LINE_BYTES`] rule: a longer `s` is cut at the last char
/// boundary at or before `MAX_LINE_BYTES` and gets `" …[truncated N bytes]"`.
pub fn bound_line(s: String) -> String {
    bound_with_dropped(s, 0)
}

/// [`bound_line`] for a line of which `dropped` further bytes were already
/// discarded while reading (they count in N, and force the cut).
pub(crate) fn bound_with_dropped(mut s: String, dropped: u64) -> String {
    if s.len() <= MAX_LINE_BYTES && dropped == 0 {
        return s;
    }
    let mut cut = s.len().min(MAX_LINE_BYTES);
    while !s.is_char_boundary(cut) {
        cut -= 1; // terminates: 0 is always a char boundary
    }
    let n = (s.len() - cut) as u64 + dropped;
    s.truncate(cut);
    s.push_str(&format!(" …[truncated {n} bytes]"));
    s
}

pub(crate) use crate::clock::system_ms as now_ms;

/// A line read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Unix ms: journald's `__REALTIME_TIMESTAMP` / 1000; files: when the
    /// line was read (wall clock).
    pub timestamp_ms: i64,
    /// Files: the file name (last path component); journald: the unit name
    /// as configured (e.g. "nginx.service").
    pub service: String,
    /// One of [`SEVERITIES`]: journald's `PRIORITY`, or for files
    /// [`guess_severity`].
    pub severity: &'static str,
    /// Without the trailing newline (or CRLF), bounded by [`bound_line`].
    pub message: String,
    /// Where to resume AFTER this line.
    pub position: Position,
}

/// Where a source resumes; persisted by the caller (serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Position {
    /// The byte offset just after a line, in the file with this inode.
    File { inode: u64, offset: u64 },
    /// A journald cursor (`__CURSOR`), for `journalctl --after-cursor`.
    Journal { cursor: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logsrc_severity_from_priority_maps_syslog_levels() {
        let expected = [
            "emergency",
            "alert",
            "critical",
            "error",
            "warning",
            "notice",
            "info",
            "debug",
        ];
        for (p, name) in expected.iter().enumerate() {
            assert_eq!(severity_from_priority(p as u8), *name, "priority {p}");
            assert!(SEVERITIES.contains(name));
        }
        assert_eq!(severity_from_priority(8), "debug");
        assert_eq!(severity_from_priority(255), "debug");
    }

    #[test]
    fn logsrc_bound_line_keeps_short_lines() {
        assert_eq!(bound_line(String::new()), "");
        let exact = "a".repeat(MAX_LINE_BYTES);
        assert_eq!(bound_line(exact.clone()), exact);
    }

    #[test]
    fn logsrc_bound_line_cuts_long_lines_with_suffix() {
        let long = "a".repeat(MAX_LINE_BYTES + 10);
        let bounded = bound_line(long);
        assert_eq!(
            bounded,
            format!("{} …[truncated 10 bytes]", "a".repeat(MAX_LINE_BYTES))
        );
    }

    #[test]
    fn logsrc_bound_line_cuts_at_char_boundary() {
        // "é" is 2 bytes: one 'a' shifts every boundary to odd offsets, so
        // MAX_LINE_BYTES (even) falls inside a char.
        let s = format!("a{}", "é".repeat(MAX_LINE_BYTES));
        let total = s.len();
        let bounded = bound_line(s);
        let kept = MAX_LINE_BYTES - 1;
        let expected = format!(
            "a{} …[truncated {} bytes]",
            "é".repeat((kept - 1) / 2),
            total - kept
        );
        assert_eq!(bounded, expected);
    }

    #[test]
    fn logsrc_bound_with_dropped_counts_discarded_bytes() {
        assert_eq!(
            bound_with_dropped("abc".into(), 5),
            "abc …[truncated 5 bytes]"
        );
    }

    #[test]
    fn logsrc_guess_severity_words() {
        assert_eq!(guess_severity("all good"), "info");
        assert_eq!(guess_severity("ERROR: disk full"), "error");
        assert_eq!(guess_severity("[err] x"), "error");
        assert_eq!(guess_severity("level=Warning msg=slow"), "warning");
        assert_eq!(guess_severity("WARN slow"), "warning");
        assert_eq!(guess_severity("kernel panic"), "critical");
        assert_eq!(guess_severity("FATAL oops"), "critical");
        assert_eq!(guess_severity("crit: x"), "critical");
        assert_eq!(guess_severity("debug: x=1"), "debug");
        assert_eq!(guess_severity("debug: error in x"), "error");
        assert_eq!(guess_severity("no errors, terror, E0001"), "info");
    }

    #[test]
    fn logsrc_position_serde_round_trip() {
        for p in [
            Position::File {
                inode: 42,
                offset: 7,
            },
            Position::Journal {
                cursor: "s=abc;i=1".into(),
            },
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), p);
        }
    }
}
