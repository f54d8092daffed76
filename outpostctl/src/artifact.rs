//! `outpostctl artifact keygen | publish | list` (docs/artifacts.md).
//!
//! `publish` packs the given paths into an uncompressed tar (regular files,
//! directories and relative symlinks that stay inside the release; owner 0,
//! mtime 0, so the same tree packs to the same bytes), hashes it while it is
//! written to a temporary file, signs the manifest's exact JSON with the
//! publisher key, stores the manifest, then streams the tar as the payload.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use outpost_common::artifact::{FORMAT_TAR, MANIFEST_SCHEMA, Manifest, SigningKey};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::Api;
use crate::cli::{Format, PublishArgs};
use crate::error::{Error, Result};
use crate::show::{self, Table};

/// `artifact keygen --out FILE`: a new publisher key pair; the private key
/// to FILE (PKCS#8 PEM, mode 0600, never over an existing file), the public
/// key as the last line of standard output.
pub fn keygen(out: &Path) -> Result<()> {
    let (key, pem) =
        SigningKey::generate().map_err(|e| Error::Usage(format!("cannot make a key: {e}")))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Usage(format!(
                "{} exists; refusing to overwrite a key (choose another --out)",
                out.display()
            )),
            _ => Error::Usage(format!("cannot create {}: {e}", out.display())),
        })?;
    // The umask may have taken bits from 0600 at creation; the mode is
    // exactly 0600 whatever it is.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(pem.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Usage(format!("cannot write {}: {e}", out.display())))?;
    let public = key.public_key().to_string();
    eprintln!(
        "outpostctl: wrote the private key to {} (keep it secret); an admin trusts the public \
         key on the control plane's host with: outpost-control-plane publisher-key add \
         --workspace WORKSPACE {public}",
        out.display()
    );
    show::line(&public)
}

/// `artifact list`.
pub async fn list(api: &Api, format: Format) -> Result<()> {
    let answer = api.get(&["artifacts"], &[]).await?;
    let items = answer["data"]
        .as_array()
        .ok_or_else(|| Error::Protocol("a list without \"data\"".into()))?;
    match format {
        Format::Json => show::json(&answer),
        Format::Table => {
            let mut t = Table::new(vec![
                "NAME",
                "VERSION",
                "STATE",
                "SIZE",
                "SHA256",
                "CREATED",
                "PUBLISHER",
            ]);
            t.right = vec![3];
            for a in items {
                let sha = show::text(&a["sha256"]);
                t.rows.push(vec![
                    show::text(&a["name"]),
                    show::text(&a["version"]),
                    show::text(&a["state"]),
                    a["size"]
                        .as_u64()
                        .map(show::bytes)
                        .unwrap_or_else(|| "-".into()),
                    sha.chars().take(12).collect(),
                    show::text(&a["created_at"]),
                    show::text(&a["public_key"]),
                ]);
            }
            t.print()
        }
    }
}

/// `artifact publish`.
pub async fn publish(api: &Api, args: PublishArgs, format: Format) -> Result<()> {
    outpost_common::artifact::check_name(&args.name).map_err(Error::Usage)?;
    outpost_common::artifact::check_version(&args.version).map_err(Error::Usage)?;
    let pem = std::fs::read_to_string(&args.sign_key).map_err(|e| {
        Error::Usage(format!(
            "cannot read --sign-key {}: {e}",
            args.sign_key.display()
        ))
    })?;
    let key = SigningKey::from_pem(&pem)
        .map_err(|e| Error::Usage(format!("--sign-key {}: {e}", args.sign_key.display())))?;
    let health_window_secs = match args.health_window {
        None => 10,
        Some(d) if d.as_secs() >= 1 && d.subsec_nanos() == 0 => d.as_secs(),
        Some(_) => {
            return Err(Error::Usage(
                "--health-window must be whole seconds, at least 1s".into(),
            ));
        }
    };

    let tmp = TempFile::new()?;
    let (size, sha256, entries) = pack(&args.paths, tmp.path())?;
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        name: args.name.clone(),
        version: args.version.clone(),
        format: FORMAT_TAR.into(),
        size,
        sha256,
        post_install: args.post_install,
        health_command: args.health_command,
        health_window_secs,
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    manifest
        .validate()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let manifest_json = manifest.to_json();
    let sig = key.sign(&manifest_json);
    eprintln!(
        "outpostctl: packed {entries} entries, {} ({size} bytes), sha256 {}",
        show::bytes(size),
        manifest.sha256
    );
    let created = api
        .call(
            Method::POST,
            &["artifacts"],
            &[],
            Some(&json!({
                "manifest": manifest_json,
                "signature": {
                    "public_key": sig.public_key.to_string(),
                    "signature": sig.signature,
                },
            })),
        )
        .await?
        .unwrap_or(Value::Null);
    let done = if created["state"] == "ready" {
        created
    } else {
        api.put_file(
            &["artifacts", &args.name, &args.version, "payload"],
            tmp.path(),
            size,
        )
        .await?
    };
    match format {
        Format::Json => show::json(&done),
        Format::Table => show::line(&manifest.id()),
    }
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Result<Self> {
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "outpostctl-artifact-{}-{nonce}.tar",
            std::process::id()
        ));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::Usage(format!("cannot create {}: {e}", path.display())))?;
        Ok(TempFile(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: ring::digest::Context,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Packs `paths` into the tar at `out`; returns (size, sha256, entries).
fn pack(paths: &[PathBuf], out: &Path) -> Result<(u64, String, usize)> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(out)
        .map_err(|e| Error::Usage(format!("cannot write {}: {e}", out.display())))?;
    let writer = Hashing {
        inner: BufWriter::new(file),
        hash: ring::digest::Context::new(&ring::digest::SHA256),
        len: 0,
    };
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    let mut tops = HashSet::new();
    let mut entries = 0;
    let mut links = BTreeMap::new();
    for p in paths {
        let name = top_name(p)?;
        if !tops.insert(name.clone()) {
            return Err(Error::Usage(format!(
                "two paths would both be {name:?} in the artifact"
            )));
        }
        add(&mut tar, p, Path::new(&name), &mut entries, &mut links)?;
    }
    // Every symlink against all the others, as the box will judge them.
    outpost_common::artifact::check_symlinks(&links).map_err(|(link, why)| {
        Error::Usage(format!(
            "{}: {why} (only relative links that stay inside the artifact)",
            link.display()
        ))
    })?;
    let io = |e: std::io::Error| Error::Usage(format!("cannot write the archive: {e}"));
    let mut writer = tar.into_inner().map_err(io)?;
    writer.flush().map_err(io)?;
    let Hashing { inner, hash, len } = writer;
    inner
        .into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    let sha = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((len, sha, entries))
}

/// The name a published path gets at the top of the artifact: its last
/// component (`./model/` → `model`; `.` → the current directory's name).
fn top_name(p: &Path) -> Result<String> {
    let named = match p.file_name() {
        Some(n) => Some(n.to_os_string()),
        None => std::fs::canonicalize(p)
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_os_string())),
    };
    named
        .and_then(|n| n.into_string().ok())
        .filter(|n| n != ".." && !n.is_empty())
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: name a file or directory (not / or ..), in UTF-8",
                p.display()
            ))
        })
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Adds `src` as `name` (recursively for a directory, in name order).
fn add<W: Write>(
    tar: &mut tar::Builder<W>,
    src: &Path,
    name: &Path,
    entries: &mut usize,
    links: &mut BTreeMap<PathBuf, PathBuf>,
) -> Result<()> {
    let bad = |what: String| Error::Usage(format!("{}: {what}", src.display()));
    let io = |e: std::io::Error| Error::Usage(format!("{}: {e}", src.display()));
    let meta = std::fs::symlink_metadata(src).map_err(io)?;
    let ft = meta.file_type();
    *entries += 1;
    if ft.is_dir() {
        let mut h = header(tar::EntryType::Directory, meta.permissions().mode(), 0);
        tar.append_data(&mut h, name, std::io::empty())
            .map_err(io)?;
        let mut children: Vec<_> = std::fs::read_dir(src)
            .map_err(io)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        children.sort();
        for c in children {
            add(tar, &src.join(&c), &name.join(&c), entries, links)?;
        }
    } else if ft.is_file() {
        let mut h = header(
            tar::EntryType::Regular,
            meta.permissions().mode(),
            meta.len(),
        );
        let f = File::open(src).map_err(io)?;
        tar.append_data(&mut h, name, f).map_err(io)?;
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(io)?;
        if target.has_root() {
            return Err(bad(format!(
                "a symlink to {} (only relative links that stay inside the artifact)",
                target.display()
            )));
        }
        links.insert(name.to_path_buf(), target.clone());
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, name, &target).map_err(io)?;
    } else {
        return Err(bad(
            "not a regular file, directory or symlink (devices, sockets and FIFOs are not published)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_must_stay_inside_the_artifact_through_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.tar");
        std::fs::write(&out, "").unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("lib")).unwrap();
        std::fs::write(model.join("w.bin"), "w").unwrap();
        std::os::unix::fs::symlink("../w.bin", model.join("lib/w")).unwrap();
        std::os::unix::fs::symlink("../../model", model.join("lib/top")).unwrap();
        pack(std::slice::from_ref(&model), &out).unwrap();
        let refused = |links: &[(&str, &str)], named: &str| {
            let m = dir.path().join("m");
            let _ = std::fs::remove_dir_all(&m);
            std::fs::create_dir_all(&m).unwrap();
            for (l, t) in links {
                std::os::unix::fs::symlink(t, m.join(l)).unwrap();
            }
            let e = pack(std::slice::from_ref(&m), &out)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{named}: a symlink")) && e.contains("leaves"),
                "{e}"
            );
        };
        refused(&[("up", "../..")], "m/up");
        // Textually inside (m/b → a/../.. climbs two of its three levels),
        // but `a` is `m` itself: `a/../..` is above the artifact.
        refused(&[("a", "."), ("b", "a/../..")], "m/b");
        let deep = format!("{}{}etc", "a/".repeat(10), "../".repeat(10));
        refused(&[("a", "."), ("etc", &deep)], "m/etc");
    }

    #[test]
    fn packing_is_deterministic_and_refuses_what_a_box_would() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("b.txt"), "bee").unwrap();
        std::fs::write(model.join("sub/a.bin"), [0u8, 1, 2]).unwrap();
        std::os::unix::fs::symlink("sub/a.bin", model.join("link")).unwrap();
        let out1 = dir.path().join("1.tar");
        let out2 = dir.path().join("2.tar");
        std::fs::write(&out1, "").unwrap();
        std::fs::write(&out2, "").unwrap();
        let (size, sha, n) = pack(std::slice::from_ref(&model), &out1).unwrap();
        assert_eq!(n, 5);
        // Touching mtimes changes nothing: the same tree, the same bytes.
        std::fs::write(model.join("b.txt"), "bee").unwrap();
        assert_eq!(
            pack(std::slice::from_ref(&model), &out2).unwrap(),
            (size, sha, n)
        );
        assert_eq!(std::fs::read(&out1).unwrap(), std::fs::read(&out2).unwrap());
        let mut archive = tar::Archive::new(File::open(&out1).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert_eq!(e.header().uid().unwrap(), 0);
                assert_eq!(e.header().mtime().unwrap(), 0);
                e.path().unwrap().display().to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "model",
                "model/b.txt",
                "model/link",
                "model/sub",
                "model/sub/a.bin"
            ]
        );

        std::os::unix::fs::symlink("/etc/passwd", model.join("escape")).unwrap();
        let e = pack(std::slice::from_ref(&model), &out1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/passwd"), "{e}");
        std::fs::remove_file(model.join("escape")).unwrap();
        let e = pack(&[model.clone(), model.clone()], &out1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("both"), "{e}");
    }

    #[test]
    fn keygen_writes_a_0600_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("publisher.pem");
        keygen(&out).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pem = std::fs::read_to_string(&out).unwrap();
        SigningKey::from_pem(&pem).unwrap();
        let e = keygen(&out).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), pem);
    }
}
