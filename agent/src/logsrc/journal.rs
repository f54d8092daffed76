//! One journald unit, through a `journalctl --follow --output=json` child.
//!
//! No libsystemd: the crate forbids `unsafe`, and the journal's file format is
//! not ours to parse. `journalctl` gives one JSON object per entry with its
//! cursor, which is the resume position. Arguments:
//!
//! ```text
//! journalctl --follow --output=json --no-pager --all --unit=UNIT (--after-cursor=CURSOR | --lines=0)
//! ```
//!
//! `--all` because without it `journalctl` prints fields over 4096 bytes as
//! `null`; we cut messages ourselves ([`bound_line`]). JSON lines longer than
//! [`MAX_JSON_LINE_BYTES`] are skipped (with a warning) so one entry cannot
//! take unbounded memory.

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use super::{LogLine, Position, bound_line, now_ms, severity_from_priority};

/// Longest `journalctl` output line (one JSON entry) read; longer ones are
/// skipped. A message as a JSON byte array takes up to 4 bytes per byte.
pub const MAX_JSON_LINE_BYTES: usize = 1024 * 1024;

/// How long a `journalctl` that closed its output may take to exit before
/// it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Reads one unit's journal entries from a `journalctl` child process. The
/// child is killed when the reader is dropped.
#[derive(Debug)]
pub struct JournalReader {
    unit: String,
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// The output line read so far; kept across cancelled [`next`](Self::next)
    /// calls.
    buf: Vec<u8>,
    /// The current output line is over [`MAX_JSON_LINE_BYTES`]: discarding
    /// it up to its newline.
    oversized: bool,
    /// The output ended; `next` returns `None` from now on.
    done: bool,
}

impl JournalReader {
    /// Starts `journalctl` (`journalctl` is its path: "journalctl" in
    /// production) following `unit`: after the cursor in `resume`, or from
    /// now on without one (`--lines=0`, no history on first start). A
    /// [`Position::File`] is a caller mistake: logged, treated as `None`.
    ///
    /// Must be called within a tokio runtime (the child's stderr is logged at
    /// warn level by a spawned task).
    pub fn spawn(
        journalctl: &Path,
        unit: &str,
        resume: Option<Position>,
    ) -> io::Result<JournalReader> {
        let mut child = Command::new(journalctl)
            .args(command_args(unit, resume.as_ref()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("journalctl stdout was not captured"))?;
        if let Some(stderr) = child.stderr.take() {
            let unit = unit.to_owned();
            tokio::spawn(async move {
                let mut stderr = BufReader::new(stderr);
                let mut line = Vec::new();
                // Ends at EOF, i.e. when the child exits or is killed.
                while let Ok(n) = stderr.read_until(b'\n', &mut line).await {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&line);
                    tracing::warn!(unit = %unit, "journalctl: {}", text.trim_end());
                    line.clear();
                }
            });
        }
        Ok(JournalReader {
            unit: unit.to_owned(),
            child,
            stdout: BufReader::new(stdout),
            buf: Vec::new(),
            oversized: false,
            done: false,
        })
    }

    /// The unit followed, as configured.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// The next entry; `None` once `journalctl` has exited (the caller
    /// restarts it, with backoff, from the last stored cursor). Lines that
    /// are not journal entries are skipped with a warning.
    ///
    /// Cancel safe: the only await reads into a buffer kept in `self`, so
    /// used in `tokio::select!` no entry is lost or split.
    pub async fn next(&mut self) -> Option<io::Result<LogLine>> {
        loop {
            if self.done {
                return None;
            }
            let line = match self.read_line().await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.done = true;
                    self.reap().await;
                    return None;
                }
                Err(e) => return Some(Err(e)),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_entry(&line, &self.unit) {
                Ok(entry) => return Some(Ok(entry)),
                Err(why) => {
                    tracing::warn!(unit = %self.unit, "skipping journalctl output line: {why}")
                }
            }
        }
    }

    /// One output line without its newline; `None` at EOF. Cancel safe:
    /// `fill_buf` reads nothing when cancelled, and everything after it is
    /// synchronous.
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let available = self.stdout.fill_buf().await?;
            if available.is_empty() {
                // EOF; a last line without a newline still counts.
                let oversized = std::mem::take(&mut self.oversized);
                let line = std::mem::take(&mut self.buf);
                return Ok((!oversized && !line.is_empty()).then_some(line));
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let piece = &available[..newline.unwrap_or(available.len())];
            if !self.oversized {
                if self.buf.len() + piece.len() > MAX_JSON_LINE_BYTES {
                    tracing::warn!(
                        unit = %self.unit,
                        "skipping a journalctl output line longer than {MAX_JSON_LINE_BYTES} bytes"
                    );
                    self.oversized = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(piece);
                }
            }
            let consumed = newline.map_or(available.len(), |i| i + 1);
            self.stdout.consume(consumed);
            if newline.is_some() {
                if std::mem::take(&mut self.oversized) {
                    continue;
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
        }
    }

    /// Collects the child's exit status after its output ended (killing it
    /// if it does not exit), and logs it.
    async fn reap(&mut self) {
        let status = match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                if let Err(e) = self.child.start_kill() {
                    tracing::warn!(unit = %self.unit, error = %e, "cannot kill journalctl");
                }
                self.child.wait().await
            }
        };
        match status {
            Ok(s) if s.success() => tracing::info!(unit = %self.unit, "journalctl exited"),
            Ok(s) => tracing::warn!(unit = %self.unit, status = %s, "journalctl exited"),
            Err(e) => {
                tracing::warn!(unit = %self.unit, error = %e, "journalctl: cannot get exit status")
            }
        }
    }
}

/// The `journalctl` arguments for `unit`, resuming after `resume`'s cursor.
fn command_args(unit: &str, resume: Option<&Position>) -> Vec<String> {
    let mut args = vec![
        "--follow".to_owned(),
        "--output=json".to_owned(),
        "--no-pager".to_owned(),
        "--all".to_owned(),
        format!("--unit={unit}"),
    ];
    match resume {
        Some(Position::Journal { cursor }) => args.push(format!("--after-cursor={cursor}")),
        Some(Position::File { .. }) => {
            tracing::warn!(
                unit,
                "file position given for a journal unit; starting at its end"
            );
            args.push("--lines=0".to_owned());
        }
        None => args.push("--lines=0".to_owned()),
    }
    args
}

/// One `journalctl --output=json` line as a [`LogLine`] of `unit`. Errors say
/// why the line is not a usable entry.
fn parse_entry(line: &[u8], unit: &str) -> Result<LogLine, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("not a JSON object".into());
    };
    let cursor = match fields.get("__CURSOR") {
        Some(Value::String(c)) if !c.is_empty() => c.clone(),
        _ => return Err("no __CURSOR".into()),
    };
    let mut message = match fields.get("MESSAGE") {
        None | Some(Value::Null) => String::new(),
        Some(v) => field_text(v).ok_or("MESSAGE is neither text nor bytes")?,
    };
    if message.ends_with('\n') {
        message.pop();
        if message.ends_with('\r') {
            message.pop();
        }
    }
    // Missing or unreadable PRIORITY: info.
    let severity = fields
        .get("PRIORITY")
        .and_then(field_text)
        .and_then(|p| p.trim().parse::<u8>().ok())
        .map_or("info", severity_from_priority);
    // journalctl always gives it; if not, the time we read it.
    let timestamp_ms = fields
        .get("__REALTIME_TIMESTAMP")
        .and_then(Value::as_str)
        .and_then(|us| us.trim().parse::<i64>().ok())
        .map_or_else(now_ms, |us| us / 1000);
    Ok(LogLine {
        timestamp_ms,
        service: unit.to_owned(),
        severity,
        message: bound_line(message),
        position: Position::Journal { cursor },
    })
}

/// A journald JSON field value as text: a string; an array of byte values
/// (journald's form for binary data), converted lossily; or an array of those
/// (a field present several times), joined with newlines.
fn field_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            let bytes = items
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        Value::Array(items) => items
            .iter()
            .map(field_text)
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join("\n")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::logsrc::MAX_LINE_BYTES;

    /// Held while writing an executable and spawning it. Otherwise a test
    /// forking between another test's write and its exec passes the write
    /// handle on to its child, and that exec fails with ETXTBSY. (Spawn
    /// returns once the child has exec'd, which closes inherited handles.)
    static SPAWN_LOCK: Mutex<()> = Mutex::new(());

    const ENTRIES: &str = r#"{"__CURSOR":"s=abc;i=1","__REALTIME_TIMESTAMP":"1700000000123456","PRIORITY":"6","MESSAGE":"hello","_SYSTEMD_UNIT":"nginx.service"}
{"__CURSOR":"s=abc;i=2","__REALTIME_TIMESTAMP":"1700000001000999","PRIORITY":"3","MESSAGE":"upstream failed\n"}
this is not json {
{"__CURSOR":"s=abc;i=3","__REALTIME_TIMESTAMP":"1700000002000000","MESSAGE":[104,105,32,255,10]}
{"__REALTIME_TIMESTAMP":"1700000003000000","MESSAGE":"no cursor"}
["not", "an", "object"]
   "#;
    /// Printed last, without a newline.
    const LAST: &str = r#"{"__CURSOR":"s=abc;i=4","__REALTIME_TIMESTAMP":"1700000004000000","PRIORITY":"0","MESSAGE":"last, no newline"}"#;

    /// A fake `journalctl` in `dir`: writes its arguments to `dir/args`, one
    /// per line, says something on stderr, runs `body`, exits.
    fn fake_journalctl(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("journalctl");
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\necho 'fake journalctl: hello on stderr' >&2\n{body}\n"
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn spawn_fake(dir: &Path, body: &str, unit: &str, resume: Option<Position>) -> JournalReader {
        let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let script = fake_journalctl(dir, body);
        JournalReader::spawn(&script, unit, resume).unwrap()
    }

    fn args(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("args"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    async fn collect(reader: &mut JournalReader) -> Vec<LogLine> {
        let mut out = Vec::new();
        while let Some(line) = reader.next().await {
            out.push(line.unwrap());
        }
        out
    }

    fn cursor(c: &str) -> Position {
        Position::Journal { cursor: c.into() }
    }

    #[tokio::test]
    async fn logsrc_journal_parses_entries_and_ends_when_child_exits() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!("cat <<'EOF'\n{ENTRIES}\nEOF\nprintf '%s' '{LAST}'");
        let mut reader = spawn_fake(dir.path(), &body, "nginx.service", None);
        assert_eq!(reader.unit(), "nginx.service");
        let lines = collect(&mut reader).await;
        assert!(reader.next().await.is_none(), "stays ended");

        assert_eq!(
            args(dir.path()),
            [
                "--follow",
                "--output=json",
                "--no-pager",
                "--all",
                "--unit=nginx.service",
                "--lines=0"
            ]
        );
        let expected = [
            (1_700_000_000_123, "info", "hello", "s=abc;i=1"),
            (1_700_000_001_000, "error", "upstream failed", "s=abc;i=2"),
            (1_700_000_002_000, "info", "hi \u{fffd}", "s=abc;i=3"),
            (
                1_700_000_004_000,
                "emergency",
                "last, no newline",
                "s=abc;i=4",
            ),
        ];
        assert_eq!(lines.len(), expected.len(), "{lines:?}");
        for (line, (ts, severity, message, c)) in lines.iter().zip(expected) {
            assert_eq!(
                *line,
                LogLine {
                    timestamp_ms: ts,
                    service: "nginx.service".into(),
                    severity,
                    message: message.into(),
                    position: cursor(c),
                }
            );
        }
    }

    #[tokio::test]
    async fn logsrc_journal_resumes_after_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let line = r#"{"__CURSOR":"s=abc;i=8","__REALTIME_TIMESTAMP":"5000","PRIORITY":"4","MESSAGE":"w"}"#;
        let body = format!("echo '{line}'");
        let mut reader = spawn_fake(
            dir.path(),
            &body,
            "app.service",
            Some(cursor("s=abc;i=7;b=x;m=1;t=2;x=3")),
        );
        let lines = collect(&mut reader).await;
        assert_eq!(
            args(dir.path()),
            [
                "--follow",
                "--output=json",
                "--no-pager",
                "--all",
                "--unit=app.service",
                "--after-cursor=s=abc;i=7;b=x;m=1;t=2;x=3"
            ]
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].severity, "warning");
        assert_eq!(lines[0].timestamp_ms, 5);
        assert_eq!(lines[0].service, "app.service");
        assert_eq!(lines[0].position, cursor("s=abc;i=8"));
    }

    #[tokio::test]
    async fn logsrc_journal_child_failing_to_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-journalctl");
        assert!(JournalReader::spawn(&missing, "x.service", None).is_err());
    }

    #[tokio::test]
    async fn logsrc_journal_next_is_cancel_safe_mid_line() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let mut reader = {
            let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let status = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(status.success());
            let script = fake_journalctl(dir.path(), "exec cat \"$(dirname \"$0\")/fifo\"");
            JournalReader::spawn(&script, "u.service", None).unwrap()
        };
        // Opening a FIFO for writing waits for its reader (the child's cat).
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let entry = r#"{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"1000","MESSAGE":"whole"}"#;
        let (head, tail) = entry.split_at(20);
        std::io::Write::write_all(&mut writer, head.as_bytes()).unwrap();

        // Cancel `next` until it has taken in the first half of the line.
        tokio::time::timeout(Duration::from_secs(30), async {
            while reader.buf.len() < head.len() {
                tokio::select! {
                    biased;
                    r = reader.next() => panic!("a half line is no entry: {r:?}"),
                    () = tokio::task::yield_now() => {}
                }
            }
        })
        .await
        .expect("the child passes the first half on");
        assert_eq!(reader.buf, head.as_bytes());

        std::io::Write::write_all(&mut writer, format!("{tail}\n").as_bytes()).unwrap();
        drop(writer);
        let lines = collect(&mut reader).await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].message, "whole");
        assert_eq!(lines[0].position, cursor("c1"));
    }

    #[test]
    fn logsrc_journal_parse_entry_details() {
        // Multi-valued field, byte array, long message, bad PRIORITY.
        let long = "m".repeat(MAX_LINE_BYTES + 3);
        let line = serde_json::json!({
            "__CURSOR": "c",
            "__REALTIME_TIMESTAMP": "2000",
            "PRIORITY": "x",
            "MESSAGE": long,
        })
        .to_string();
        let entry = parse_entry(line.as_bytes(), "u").unwrap();
        assert_eq!(entry.severity, "info");
        assert!(entry.message.ends_with(" …[truncated 3 bytes]"));

        let line = r#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"2000","PRIORITY":"9","MESSAGE":["a",[98,99]]}"#;
        let entry = parse_entry(line.as_bytes(), "u").unwrap();
        assert_eq!(entry.message, "a\nbc");
        assert_eq!(entry.severity, "debug");

        let line = r#"{"__CURSOR":"c","MESSAGE":[1,256]}"#;
        assert!(parse_entry(line.as_bytes(), "u").is_err());
        let line = r#"{"__CURSOR":"c","MESSAGE":{"x":1}}"#;
        assert!(parse_entry(line.as_bytes(), "u").is_err());
        assert!(parse_entry(b"{\"MESSAGE\":\"no cursor\"}", "u").is_err());
        assert!(parse_entry(b"\xff\xfe", "u").is_err());
    }
}
