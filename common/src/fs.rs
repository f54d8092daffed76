//! Files that must not be half-written and directories that must stay
//! private.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` via `path.tmp` and a rename, with `mode`. When
/// `durable`, the file and the directory entry are fsynced: after a crash or
/// power loss the path holds either the old or the new content.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    replace(path, bytes, mode, durable, false)
}

/// [`replace_file`]; `give_away`: the new file goes to the directory's
/// owner before it takes `path`'s place.
fn replace(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durable: bool,
    give_away: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    if give_away {
        give_to_dir_owner(&tmp)?;
    }
    std::fs::rename(&tmp, path)?;
    if durable && let Some(Ok(dir)) = path.parent().map(std::fs::File::open) {
        dir.sync_all()?;
    }
    Ok(())
}

/// A file written into a directory another user owns (root running
/// `outpost-agent enroll` or an admin command in a service's state
/// directory) goes to the directory's owner, so the service can still read
/// its own key. Only root can give files away: for anyone else (writing
/// into a group-writable directory) the file stays theirs, as before.
fn give_to_dir_owner(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = file.parent() else {
        return Ok(());
    };
    let (d, f) = (std::fs::metadata(dir)?, std::fs::metadata(file)?);
    if d.uid() != f.uid() {
        match std::os::unix::fs::chown(file, Some(d.uid()), Some(d.gid())) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            other => other?,
        }
    }
    Ok(())
}

/// Durable [`replace_file`], for identity files (keys, certificates): a file
/// written into a directory another user owns goes to that owner. (Not in
/// [`replace_file`] itself: the spool's ledger is rewritten on every ack.)
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, bytes, mode, true, true)
}

/// Creates `dir` and its parents; a directory created here gets mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Fails when group or others may read `path` (for private keys).
pub fn ensure_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {mode:o}; a private key must not be readable by group or others (chmod 600)",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_written_into_another_users_directory_is_theirs() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        create_private_dir(&sub).unwrap();
        if std::os::unix::fs::chown(&sub, Some(4242), Some(4343)).is_err() {
            eprintln!("skipped: giving a directory away needs root");
            return;
        }
        let p = sub.join("device.key");
        write_atomic(&p, b"secret", 0o600).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4343));
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn replaces_whole_files_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!p.with_extension("tmp").exists());
        ensure_private(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            ensure_private(&p)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
    }

    #[test]
    fn private_dirs_are_0700() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        create_private_dir(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
