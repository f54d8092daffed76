//! Following one log file by path, across rotations.
//!
//! [`FileFollower::poll`] reads what was appended since the last call with
//! positioned reads (`pread`) on an open handle, and returns complete lines.
//! At the end of the open file it looks at the path:
//! - the handle's file is shorter than our read offset → truncated
//!   (copytruncate, `> file`): read it again from 0;
//! - the path names another inode → rotated by rename (or deleted and
//!   recreated): everything up to the old file's end has been read by now, a
//!   last line without a newline is emitted, and the new file is read from 0;
//! - the path is gone → keep the handle (a writer may still append to the
//!   deleted file) and say nothing; a file that appears later is read from 0.
//!
//! Limits, as with `tail -F`: lines written to the old file after we switched
//! away from it are lost; a truncated file that grew past our offset again
//! before a poll is not seen as truncated; with copytruncate, lines written
//! between our last poll and the copy are only in the copy. A saved position
//! names an inode, which the filesystem may reuse for another file after a
//! delete; `PATH.1` is the only rotated name looked at on resume (not
//! `PATH.1.gz`, nor dated names).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{LogLine, MAX_LINE_BYTES, Position, bound_with_dropped, guess_severity, now_ms};

/// Bytes read per `pread`.
const CHUNK_BYTES: usize = 64 * 1024;
/// Bytes read at most per [`FileFollower::poll`], so a writer faster than us
/// (or one endless line) cannot keep a poll going forever.
const MAX_BYTES_PER_POLL: u64 = 4 * 1024 * 1024;
/// Bytes of an unfinished line kept in memory: enough to cut at
/// [`MAX_LINE_BYTES`] at a char boundary; the rest is only counted.
const LINE_KEEP_BYTES: usize = MAX_LINE_BYTES + 4;

/// The file being read.
#[derive(Debug)]
struct Open {
    file: File,
    inode: u64,
    /// Offset of the next byte to read. Bytes before it are either in
    /// returned lines or in the unfinished line.
    read_pos: u64,
}

/// Where to start when the path is opened next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// At the file's end (first start, no saved position).
    End,
    /// At a saved position (see [`FileFollower::new`]).
    At { inode: u64, offset: u64 },
    /// At 0: the file appeared or replaced the one we read.
    Beginning,
}

/// Follows one file by path. See the [module docs](self).
#[derive(Debug)]
pub struct FileFollower {
    path: PathBuf,
    service: String,
    open: Option<Open>,
    /// How to open `path` when `open` is `None`.
    start: Start,
    /// The unfinished line: bytes after the last newline read (at most
    /// [`LINE_KEEP_BYTES`]; more are counted in `line_dropped`).
    line: Vec<u8>,
    line_dropped: u64,
    /// The last byte of the unfinished line, kept or not (for a `\r` that
    /// was only counted).
    line_last: Option<u8>,
    /// An over-long unfinished line was already returned (bounded) at the
    /// end of the file: the rest of it, up to its newline, is discarded.
    skipping: bool,
}

impl FileFollower {
    /// Follows `path`. Never fails: a missing or unreadable file is looked
    /// for again at each [`poll`](Self::poll).
    ///
    /// `resume` is the position of the last line the caller stored:
    /// - `None` (first start): reading begins at the current END of the file
    ///   (no history is shipped), or at 0 for a file that does not exist yet.
    /// - `Some(Position::File { inode, offset })`: if `path` has that inode,
    ///   reading continues at `offset` (at 0 if the file is now shorter:
    ///   truncated). If `path` has another inode but `PATH.1` has that one
    ///   (logrotate while we were down), the rest of `PATH.1` is read first,
    ///   then `path` from 0. Otherwise `path` is read from 0.
    /// - `Some(Position::Journal { .. })` is a caller mistake; it is logged
    ///   and treated as `None`.
    pub fn new(path: PathBuf, resume: Option<Position>) -> Self {
        let service = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string_lossy().into_owned());
        let start = match resume {
            None => Start::End,
            Some(Position::File { inode, offset }) => Start::At { inode, offset },
            Some(Position::Journal { .. }) => {
                tracing::warn!(path = %path.display(), "journal position given for a file; starting at its end");
                Start::End
            }
        };
        let mut follower = FileFollower {
            path,
            service,
            open: None,
            start,
            line: Vec::new(),
            line_dropped: 0,
            line_last: None,
            skipping: false,
        };
        // Open now so that "the end" is the end at start-up, not at the
        // first poll. Failing here is fine: poll tries again.
        if let Err(e) = follower.open_path() {
            tracing::warn!(path = %follower.path.display(), error = %e, "cannot open log file yet");
        }
        follower
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads up to `max_lines` complete lines appended since the last call
    /// (fewer if no more are there right now; empty if the file is missing).
    /// A line's [`Position`] is just after it, in the file it came from.
    ///
    /// An unfinished last line is kept for a later call, unless it is already
    /// longer than [`MAX_LINE_BYTES`]: then it is returned bounded and the
    /// rest of it, up to its newline, is discarded.
    ///
    /// An error (opening, reading, `stat`) is returned only when no line was
    /// read in this call; otherwise the lines are returned and the failing
    /// step is retried (and reported) at the next call.
    pub fn poll(&mut self, max_lines: usize) -> io::Result<Vec<LogLine>> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut budget = MAX_BYTES_PER_POLL;
        while out.len() < max_lines && budget > 0 {
            match self.step(&mut chunk, &mut out, max_lines, &mut budget) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(path = %self.path.display(), error = %e, "log file read stopped early");
                    break;
                }
            }
        }
        Ok(out)
    }

    /// One read or one look at the path. `Ok(true)`: call again.
    fn step(
        &mut self,
        chunk: &mut [u8],
        out: &mut Vec<LogLine>,
        max_lines: usize,
        budget: &mut u64,
    ) -> io::Result<bool> {
        if self.open.is_none() && !self.open_path()? {
            return Ok(false); // not there (yet)
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(false); // unreachable: open_path returned true
        };

        let want = chunk
            .len()
            .min(usize::try_from(*budget).unwrap_or(usize::MAX));
        let n = open.file.read_at(&mut chunk[..want], open.read_pos)?;
        if n > 0 {
            *budget -= n as u64;
            let (inode, base) = (open.inode, open.read_pos);
            let used = self.feed(&chunk[..n], inode, base, out, max_lines);
            if let Some(open) = self.open.as_mut() {
                open.read_pos += used as u64;
            }
            return Ok(true);
        }

        // At the end of the open file.
        let (inode, read_pos) = (open.inode, open.read_pos);
        if !self.skipping && (self.line.len() > MAX_LINE_BYTES || self.line_dropped > 0) {
            // An over-long line still being written: return what we have.
            out.push(self.take_line(inode, read_pos));
            self.skipping = true;
            if out.len() >= max_lines {
                return Ok(false);
            }
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(false); // unreachable: nothing above closes it
        };
        if open.file.metadata()?.len() < read_pos {
            tracing::info!(path = %self.path.display(), "log file truncated; reading it from the start");
            open.read_pos = 0;
            self.reset_line();
            return Ok(true);
        }
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.ino() != inode => {
                tracing::info!(path = %self.path.display(), "log file rotated; following the new file");
                if !self.skipping && (!self.line.is_empty() || self.line_dropped > 0) {
                    // The old file ended without a newline: nothing will
                    // complete this line any more.
                    out.push(self.take_line(inode, read_pos));
                }
                self.reset_line();
                self.open = None;
                self.start = Start::Beginning;
                Ok(true)
            }
            Ok(_) => Ok(false), // nothing new
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false), // deleted: keep the handle
            Err(e) => Err(e),
        }
    }

    /// Consumes `data` (read at file offset `base` of file `inode`) into
    /// lines until `out` holds `max_lines`; returns the bytes consumed.
    fn feed(
        &mut self,
        data: &[u8],
        inode: u64,
        base: u64,
        out: &mut Vec<LogLine>,
        max_lines: usize,
    ) -> usize {
        let mut i = 0;
        while i < data.len() && out.len() < max_lines {
            match data[i..].iter().position(|&b| b == b'\n') {
                Some(j) => {
                    let end = i + j + 1; // just after the newline
                    if self.skipping {
                        // The tail of a line already returned.
                        self.reset_line();
                    } else {
                        self.push_bytes(&data[i..i + j]);
                        out.push(self.take_line(inode, base + end as u64));
                    }
                    i = end;
                }
                None => {
                    if !self.skipping {
                        self.push_bytes(&data[i..]);
                    }
                    i = data.len();
                }
            }
        }
        i
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else { return };
        let room = LINE_KEEP_BYTES.saturating_sub(self.line.len());
        let keep = room.min(bytes.len());
        self.line.extend_from_slice(&bytes[..keep]);
        self.line_dropped += (bytes.len() - keep) as u64;
        self.line_last = Some(last);
    }

    /// Turns the unfinished line into a [`LogLine`] ending at `offset`.
    fn take_line(&mut self, inode: u64, offset: u64) -> LogLine {
        let mut bytes = std::mem::take(&mut self.line);
        let mut dropped = self.line_dropped;
        if self.line_last == Some(b'\r') {
            // CRLF: the '\r' is not part of the message.
            if dropped > 0 {
                dropped -= 1;
            } else {
                bytes.pop();
            }
        }
        self.reset_line();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let message = bound_with_dropped(text, dropped);
        LogLine {
            timestamp_ms: now_ms(),
            service: self.service.clone(),
            severity: guess_severity(&message),
            message,
            position: Position::File { inode, offset },
        }
    }

    fn reset_line(&mut self) {
        self.line.clear();
        self.line_dropped = 0;
        self.line_last = None;
        self.skipping = false;
    }

    /// Opens the file to read according to `self.start`. `Ok(false)` when
    /// there is none yet.
    fn open_path(&mut self) -> io::Result<bool> {
        let Some((file, meta)) = open_with_meta(&self.path)? else {
            if let Start::At { inode, offset } = self.start {
                // Rotated while we were down, and nothing at the path yet?
                if self.try_resume_rotated(inode, offset)? {
                    return Ok(true);
                }
            }
            // Whatever appears at the path later is new: all of it.
            self.start = Start::Beginning;
            return Ok(false);
        };
        let (inode, len) = (meta.ino(), meta.len());
        let read_pos = match self.start {
            Start::End => len,
            Start::Beginning => 0,
            Start::At {
                inode: saved,
                offset,
            } => {
                if saved == inode {
                    if len >= offset { offset } else { 0 }
                } else if self.try_resume_rotated(saved, offset)? {
                    return Ok(true);
                } else {
                    0
                }
            }
        };
        self.open = Some(Open {
            file,
            inode,
            read_pos,
        });
        self.start = Start::Beginning;
        Ok(true)
    }

    /// Opens `PATH.1` at `offset` if it is the file with `inode`.
    fn try_resume_rotated(&mut self, inode: u64, offset: u64) -> io::Result<bool> {
        let mut rotated = self.path.as_os_str().to_owned();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        let Some((file, meta)) = open_with_meta(&rotated)? else {
            return Ok(false);
        };
        if meta.ino() != inode {
            return Ok(false);
        }
        tracing::info!(path = %rotated.display(), "log file rotated while stopped; finishing the old file first");
        self.open = Some(Open {
            file,
            inode,
            read_pos: if meta.len() >= offset { offset } else { 0 },
        });
        // The path is read from 0 once PATH.1 is done (its inode differs).
        self.start = Start::Beginning;
        Ok(true)
    }
}

/// Opens `path` for reading with its metadata (of the opened file, not of
/// whatever the path names a moment later). `None` if it does not exist.
fn open_with_meta(path: &Path) -> io::Result<Option<(File, std::fs::Metadata)>> {
    match File::open(path) {
        Ok(file) => {
            let meta = file.metadata()?;
            Ok(Some((file, meta)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;
    use crate::logsrc::MAX_LINE_BYTES;

    fn append(path: &Path, data: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(data).unwrap();
    }

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    fn messages(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.message.as_str()).collect()
    }

    fn rotated(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    #[test]
    fn logsrc_file_first_start_begins_at_end_and_sees_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"old 1\nold 2\n");
        let mut f = FileFollower::new(path.clone(), None);
        assert_eq!(f.path(), path);
        assert!(f.poll(100).unwrap().is_empty());

        append(&path, b"new 1\nERROR new 2\n");
        let lines = f.poll(100).unwrap();
        assert_eq!(messages(&lines), ["new 1", "ERROR new 2"]);
        assert_eq!(lines[0].service, "app.log");
        assert_eq!(lines[0].severity, "info");
        assert_eq!(lines[1].severity, "error");
        assert!(lines[0].timestamp_ms > 1_600_000_000_000);
        let ino = inode(&path);
        assert_eq!(
            lines[0].position,
            Position::File {
                inode: ino,
                offset: 18
            }
        );
        assert_eq!(
            lines[1].position,
            Position::File {
                inode: ino,
                offset: 30
            }
        );
        assert!(f.poll(100).unwrap().is_empty());

        append(&path, b"new 3\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["new 3"]);
    }

    #[test]
    fn logsrc_file_missing_file_is_read_from_start_when_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.log");
        let mut f = FileFollower::new(path.clone(), None);
        assert!(f.poll(100).unwrap().is_empty());
        append(&path, b"first\nsecond\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["first", "second"]);
    }

    #[test]
    fn logsrc_file_max_lines_is_respected_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"1\n2\n3\n4\n5\n");
        assert_eq!(messages(&f.poll(2).unwrap()), ["1", "2"]);
        assert!(f.poll(0).unwrap().is_empty());
        assert_eq!(messages(&f.poll(2).unwrap()), ["3", "4"]);
        assert_eq!(messages(&f.poll(2).unwrap()), ["5"]);
    }

    #[test]
    fn logsrc_file_partial_line_held_until_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"complete\nhalf a ");
        assert_eq!(messages(&f.poll(100).unwrap()), ["complete"]);
        assert!(f.poll(100).unwrap().is_empty());
        append(&path, b"line");
        assert!(f.poll(100).unwrap().is_empty());
        append(&path, b"\n");
        let lines = f.poll(100).unwrap();
        assert_eq!(messages(&lines), ["half a line"]);
        assert_eq!(
            lines[0].position,
            Position::File {
                inode: inode(&path),
                offset: 21
            }
        );
    }

    #[test]
    fn logsrc_file_rename_rotation_finishes_old_file_then_reads_new_from_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"before\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["before"]);

        // logrotate: rename, the writer still appends to the old file until
        // it reopens, and a new file is created at the path.
        let old = rotated(&path);
        std::fs::rename(&path, &old).unwrap();
        append(&old, b"late 1\nlate 2\n");
        append(&path, b"fresh 1\n");
        let (old_ino, new_ino) = (inode(&old), inode(&path));
        assert_ne!(old_ino, new_ino);

        let lines = f.poll(100).unwrap();
        assert_eq!(messages(&lines), ["late 1", "late 2", "fresh 1"]);
        assert_eq!(
            lines[1].position,
            Position::File {
                inode: old_ino,
                offset: 21
            }
        );
        assert_eq!(
            lines[2].position,
            Position::File {
                inode: new_ino,
                offset: 8
            }
        );
        append(&path, b"fresh 2\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["fresh 2"]);
    }

    #[test]
    fn logsrc_file_rotation_emits_unterminated_last_line_of_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"a\nno newline");
        assert_eq!(messages(&f.poll(100).unwrap()), ["a"]);
        std::fs::rename(&path, rotated(&path)).unwrap();
        append(&path, b"b\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["no newline", "b"]);
    }

    #[test]
    fn logsrc_file_copytruncate_restarts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"line one\nline two\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["line one", "line two"]);

        std::fs::copy(&path, rotated(&path)).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, b"after\n");
        let lines = f.poll(100).unwrap();
        assert_eq!(messages(&lines), ["after"]);
        assert_eq!(
            lines[0].position,
            Position::File {
                inode: inode(&path),
                offset: 6
            }
        );
    }

    #[test]
    fn logsrc_file_deleted_file_keeps_handle_then_follows_recreated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        // A writer holding the file open keeps appending after the delete.
        let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
        writer.write_all(b"a\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        writer.write_all(b"b\n").unwrap();
        assert_eq!(messages(&f.poll(100).unwrap()), ["a", "b"]);
        assert!(f.poll(100).unwrap().is_empty());
        assert!(f.poll(100).unwrap().is_empty());

        append(&path, b"c\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["c"]);
    }

    #[test]
    fn logsrc_file_resume_across_restart_no_duplicates_no_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"1\n2\n3\npart");
        let lines = f.poll(2).unwrap();
        assert_eq!(messages(&lines), ["1", "2"]);
        let saved = lines[1].position.clone();
        drop(f);

        // Written while the agent was down.
        append(&path, b"ial\n4\n");
        let mut f = FileFollower::new(path.clone(), Some(saved));
        assert_eq!(messages(&f.poll(100).unwrap()), ["3", "partial", "4"]);
        assert!(f.poll(100).unwrap().is_empty());
    }

    #[test]
    fn logsrc_file_resume_after_rotation_while_down_reads_rest_of_dot_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"seen\n");
        let saved = f.poll(100).unwrap().pop().unwrap().position;
        drop(f);

        append(&path, b"unseen old\n");
        std::fs::rename(&path, rotated(&path)).unwrap();
        append(&path, b"new 1\nnew 2\n");

        let mut f = FileFollower::new(path.clone(), Some(saved));
        let lines = f.poll(100).unwrap();
        assert_eq!(messages(&lines), ["unseen old", "new 1", "new 2"]);
        assert_eq!(
            lines[0].position,
            Position::File {
                inode: inode(&rotated(&path)),
                offset: 16
            }
        );
    }

    #[test]
    fn logsrc_file_resume_after_rotation_while_down_before_new_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"seen\n");
        let saved = Position::File {
            inode: inode(&path),
            offset: 5,
        };
        append(&path, b"unseen\n");
        std::fs::rename(&path, rotated(&path)).unwrap();

        let mut f = FileFollower::new(path.clone(), Some(saved));
        assert_eq!(messages(&f.poll(100).unwrap()), ["unseen"]);
        append(&path, b"new\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["new"]);
    }

    #[test]
    fn logsrc_file_resume_with_unknown_inode_reads_from_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"x\ny\n");
        let saved = Position::File {
            inode: inode(&path) + 1_000_000,
            offset: 2,
        };
        let mut f = FileFollower::new(path.clone(), Some(saved));
        assert_eq!(messages(&f.poll(100).unwrap()), ["x", "y"]);
    }

    #[test]
    fn logsrc_file_resume_on_truncated_file_reads_from_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"short\n");
        let saved = Position::File {
            inode: inode(&path),
            offset: 100,
        };
        let mut f = FileFollower::new(path.clone(), Some(saved));
        assert_eq!(messages(&f.poll(100).unwrap()), ["short"]);
    }

    #[test]
    fn logsrc_file_long_line_is_bounded_with_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        // Longer than one read chunk, so it arrives in pieces.
        let long = "x".repeat(CHUNK_BYTES * 2);
        append(&path, format!("{long}\nshort\n").as_bytes());
        let lines = f.poll(100).unwrap();
        assert_eq!(messages(&lines)[1], "short");
        let cut = long.len() - MAX_LINE_BYTES;
        assert_eq!(
            lines[0].message,
            format!("{} …[truncated {cut} bytes]", &long[..MAX_LINE_BYTES])
        );
        assert_eq!(
            lines[0].position,
            Position::File {
                inode: inode(&path),
                offset: long.len() as u64 + 1
            }
        );
    }

    #[test]
    fn logsrc_file_long_partial_line_is_emitted_bounded_and_its_rest_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        let head = "y".repeat(MAX_LINE_BYTES + 100);
        append(&path, head.as_bytes());
        let lines = f.poll(100).unwrap();
        assert_eq!(
            messages(&lines),
            [format!(
                "{} …[truncated 100 bytes]",
                &head[..MAX_LINE_BYTES]
            )]
        );
        append(&path, b"rest of it");
        assert!(f.poll(100).unwrap().is_empty());
        append(&path, b" still\nnext\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["next"]);
    }

    #[test]
    fn logsrc_file_crlf_is_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"windows\r\nsplit\r");
        assert_eq!(messages(&f.poll(100).unwrap()), ["windows"]);
        append(&path, b"\nbare\rcr inside\n\r\n");
        let lines = f.poll(100).unwrap();
        assert_eq!(messages(&lines), ["split", "bare\rcr inside", ""]);
        assert_eq!(
            lines[2].position,
            Position::File {
                inode: inode(&path),
                offset: 33
            }
        );
    }

    #[test]
    fn logsrc_file_invalid_utf8_is_converted_lossily() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"bad \xff\xfe byte\n\xc3\xa9t\xc3\xa9\n");
        assert_eq!(
            messages(&f.poll(100).unwrap()),
            ["bad \u{fffd}\u{fffd} byte", "été"]
        );
    }

    #[test]
    fn logsrc_file_multibyte_char_split_across_polls_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"");
        let mut f = FileFollower::new(path.clone(), None);
        append(&path, b"caf\xc3");
        assert!(f.poll(100).unwrap().is_empty());
        append(&path, b"\xa9\n");
        assert_eq!(messages(&f.poll(100).unwrap()), ["café"]);
    }
}
