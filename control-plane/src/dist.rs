//! The agent release tarballs this control plane hands out (`--agent-dist`,
//! default `DATA_DIR/dist`): `GET /downloads/index.json`, `GET
//! /downloads/<file>`, and the index embedded in `GET /install.sh`.
//!
//! Only files named as `scripts/release.sh` names them
//! (`outpost-agent-<version>-<arch>.tar.gz`) are listed, and only listed
//! names are served: a request names a file of the index, never a path.
//! The directory is scanned at start and again whenever it is asked for the
//! index and its listing (names, sizes, modification times) changed; a file
//! whose size and time did not change keeps its SHA-256.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// The control plane's own version: its agent is listed first.
const OWN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One tarball of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DistFile {
    /// The file name, as `GET /downloads/{file}` takes it.
    pub file: String,
    /// `uname -m` of the boxes it is for (`x86_64`, `aarch64`).
    pub arch: String,
    pub version: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// What a scan saw of one file; a change of either means hash again.
type Stamp = (String, u64, Option<SystemTime>);

#[derive(Default)]
struct Scan {
    stamps: Vec<Stamp>,
    files: Vec<DistFile>,
}

/// The distribution directory.
pub struct AgentDist {
    dir: PathBuf,
    scan: Mutex<Scan>,
}

/// `outpost-agent-<version>-<arch>.tar.gz` → (version, arch). The version
/// starts with a digit and may hold `[0-9A-Za-z.+-]`; the arch is
/// `[a-z0-9_]`: nothing a shell or URL would need quoting for.
pub fn parse_name(name: &str) -> Option<(&str, &str)> {
    if name.len() > 128 {
        return None;
    }
    let stem = name
        .strip_prefix("outpost-agent-")?
        .strip_suffix(".tar.gz")?;
    let (version, arch) = stem.rsplit_once('-')?;
    let version_ok = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
    let arch_ok = !arch.is_empty()
        && arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    (version_ok && arch_ok).then_some((version, arch))
}

/// A pre-release identifier: numbers order as numbers, below words.
type PreId = (bool, u64, String);

/// Semantic-version precedence: the numeric core, then a release above its
/// pre-releases (`1.2.0` > `1.2.0-rc.2` > `1.2.0-rc.1`); build metadata
/// (`+…`) does not count.
fn version_key(v: &str) -> (Vec<u64>, bool, Vec<PreId>) {
    let v = v.split('+').next().unwrap_or(v);
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let core = core.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    let pre_ids = pre
        .map(|p| {
            p.split('.')
                .map(|id| match id.parse::<u64>() {
                    Ok(n) => (false, n, String::new()),
                    Err(_) => (true, 0, id.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    (core, pre.is_none(), pre_ids)
}

impl AgentDist {
    /// Opens `dir` (it need not exist: an empty index) and scans it.
    pub fn new(dir: PathBuf) -> Self {
        let dist = Self {
            dir,
            scan: Mutex::new(Scan::default()),
        };
        let files = dist.index();
        tracing::info!(
            dir = %dist.dir.display(),
            tarballs = files.len(),
            "agent downloads"
        );
        dist
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tarballs, rescanned if the directory changed: this control
    /// plane's version first, then newest first; per arch the first is the
    /// one `install.sh` takes. Blocking (reads and hashes files).
    pub fn index(&self) -> Vec<DistFile> {
        let stamps = self.stamps();
        // A poisoned lock only means another scan panicked; its data is a
        // complete earlier scan or the default, both usable.
        let mut scan = self.scan.lock().unwrap_or_else(|p| p.into_inner());
        if scan.stamps == stamps {
            return scan.files.clone();
        }
        let mut files = Vec::new();
        for (name, size, mtime) in &stamps {
            let Some((version, arch)) = parse_name(name) else {
                continue;
            };
            let unchanged = scan
                .stamps
                .iter()
                .any(|s| &s.0 == name && s.1 == *size && &s.2 == mtime);
            let known = scan.files.iter().find(|f| &f.file == name);
            let sha256 = match (unchanged, known) {
                (true, Some(f)) => f.sha256.clone(),
                _ => match sha256_file(&self.dir.join(name)) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(file = %name, "agent download skipped: {e}");
                        continue;
                    }
                },
            };
            files.push(DistFile {
                file: name.clone(),
                arch: arch.to_string(),
                version: version.to_string(),
                sha256,
                size: *size,
            });
        }
        files.sort_by(|a, b| {
            (b.version == OWN_VERSION)
                .cmp(&(a.version == OWN_VERSION))
                .then_with(|| version_key(&b.version).cmp(&version_key(&a.version)))
                .then_with(|| a.file.cmp(&b.file))
        });
        *scan = Scan {
            stamps,
            files: files.clone(),
        };
        files
    }

    /// The path of a file the index lists; `None` for any other name.
    pub fn path_of(&self, file: &str) -> Option<PathBuf> {
        parse_name(file)?;
        self.index()
            .iter()
            .any(|f| f.file == file)
            .then(|| self.dir.join(file))
    }

    /// Names, sizes and times of the regular files that look like tarballs.
    fn stamps(&self) -> Vec<Stamp> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if parse_name(&name).is_none() {
                continue;
            }
            // Follows symlinks: a release directory may link its tarballs.
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue;
            };
            if meta.is_file() {
                out.push((name, meta.len(), meta.modified().ok()));
            }
        }
        out.sort();
        out
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_semver_precedence() {
        let mut v = [
            "1.2.0",
            "1.2.0-rc.1",
            "1.10.0",
            "1.2.0-rc.2",
            "1.2.0-alpha",
            "1.2.0-rc.10",
            "1.9.9+build.5",
        ];
        v.sort_by_key(|x| version_key(x));
        assert_eq!(
            v,
            [
                "1.2.0-alpha",
                "1.2.0-rc.1",
                "1.2.0-rc.2",
                "1.2.0-rc.10",
                "1.2.0",
                "1.9.9+build.5",
                "1.10.0"
            ]
        );
    }

    #[test]
    fn only_release_names_are_taken() {
        assert_eq!(
            parse_name("outpost-agent-0.1.0-x86_64.tar.gz"),
            Some(("0.1.0", "x86_64"))
        );
        assert_eq!(
            parse_name("outpost-agent-1.2.0-rc.1-aarch64.tar.gz"),
            Some(("1.2.0-rc.1", "aarch64"))
        );
        for bad in [
            "outpost-agent-0.1.0-x86_64.tar",
            "outpost-agent-x86_64.tar.gz",
            "../outpost-agent-0.1.0-x86_64.tar.gz",
            "outpost-agent-0.1.0/x-x86_64.tar.gz",
            "outpost-agent-0.1.0-X86.tar.gz",
            "outpost-agent-0.1'0-x86_64.tar.gz",
            "outpost-agent-v1-x86_64.tar.gz",
            "other-0.1.0-x86_64.tar.gz",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_index_follows_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let dist = AgentDist::new(dir.path().join("missing"));
        assert!(dist.index().is_empty());

        let dist = AgentDist::new(dir.path().to_path_buf());
        std::fs::write(dir.path().join("outpost-agent-0.0.9-x86_64.tar.gz"), b"old").unwrap();
        std::fs::write(
            dir.path()
                .join(format!("outpost-agent-{OWN_VERSION}-x86_64.tar.gz")),
            b"own",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("outpost-agent-0.2.0-aarch64.tar.gz")).unwrap();
        let index = dist.index();
        assert_eq!(index.len(), 2, "{index:?}");
        assert_eq!(index[0].version, OWN_VERSION, "own version first");
        assert_eq!(
            index[1].sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, b"old"))
        );
        assert!(dist.path_of("notes.txt").is_none());
        assert!(dist.path_of("outpost-agent-0.2.0-aarch64.tar.gz").is_none());
        assert!(dist.path_of("outpost-agent-0.0.9-x86_64.tar.gz").is_some());

        std::fs::remove_file(dir.path().join("outpost-agent-0.0.9-x86_64.tar.gz")).unwrap();
        assert_eq!(dist.index().len(), 1);
        assert!(dist.path_of("outpost-agent-0.0.9-x86_64.tar.gz").is_none());
    }
}
