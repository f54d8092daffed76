//! Signed artifacts: the manifest a publisher signs, publisher keys, and
//! signature checks. One definition for the three programs that touch an
//! artifact: `outpostctl` signs, the control plane refuses what no trusted
//! key signed, and the agent checks again before it unpacks anything — so a
//! compromised control plane cannot make a box run something no trusted
//! publisher signed ([docs/artifacts.md]).
//!
//! The signature covers the manifest's exact bytes (`manifest_json`), which
//! travel unchanged from `outpostctl` through the store to the box; nobody
//! re-serialises a manifest and then checks a signature over it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The manifest format this code writes and reads.
pub const MANIFEST_SCHEMA: u32 = 1;
/// Payload format: an uncompressed POSIX tar of the published files.
pub const FORMAT_TAR: &str = "tar";
/// Longest health window a manifest may ask for.
pub const MAX_HEALTH_WINDOW_SECS: u64 = 3600;
/// Longest command string.
pub const MAX_COMMAND_LEN: usize = 4096;
/// Largest manifest, in bytes.
pub const MAX_MANIFEST_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactError {
    #[error("invalid public key: {0}")]
    PublicKey(String),
    #[error("invalid signing key: {0}")]
    SigningKey(String),
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("the manifest is not signed by a trusted publisher key")]
    Untrusted,
    #[error("bad signature: {0}")]
    Signature(String),
}

/// An Ed25519 publisher public key, written `ed25519:<base64 of 32 bytes>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::str::FromStr for PublicKey {
    type Err = ArtifactError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s.trim().strip_prefix("ed25519:").ok_or_else(|| {
            ArtifactError::PublicKey("expected ed25519:<base64 of 32 bytes>".into())
        })?;
        let raw = B64
            .decode(b64)
            .map_err(|e| ArtifactError::PublicKey(format!("not base64: {e}")))?;
        let bytes: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| {
            ArtifactError::PublicKey(format!("{} bytes, an Ed25519 key has 32", v.len()))
        })?;
        Ok(PublicKey(bytes))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A publisher's private key: PKCS#8 v2 (as ring writes it), kept in a PEM
/// file (`PRIVATE KEY`) of mode 0600.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key())
    }
}

impl SigningKey {
    /// A new random key, and its PKCS#8 document as PEM (what to store).
    pub fn generate() -> Result<(Self, String), ArtifactError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| ArtifactError::SigningKey("the system RNG failed".into()))?;
        let pem = pem_encode(doc.as_ref());
        Ok((Self::from_pkcs8(doc.as_ref())?, pem))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ArtifactError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|pair| SigningKey { pair })
            .map_err(|e| ArtifactError::SigningKey(format!("not an Ed25519 PKCS#8 key: {e}")))
    }

    /// Reads the PEM written by [`SigningKey::generate`].
    pub fn from_pem(text: &str) -> Result<Self, ArtifactError> {
        let body: String = text
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PRIVATE KEY-----")
            .collect();
        if body.is_empty() {
            return Err(ArtifactError::SigningKey(
                "no -----BEGIN PRIVATE KEY----- block".into(),
            ));
        }
        let der = B64
            .decode(body)
            .map_err(|e| ArtifactError::SigningKey(format!("not base64: {e}")))?;
        Self::from_pkcs8(&der)
    }

    pub fn public_key(&self) -> PublicKey {
        let mut b = [0u8; 32];
        b.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(b)
    }

    /// Signs `manifest_json` (the exact bytes that will be uploaded).
    pub fn sign(&self, manifest_json: &str) -> Signature {
        Signature {
            public_key: self.public_key(),
            signature: B64.encode(self.pair.sign(manifest_json.as_bytes())),
        }
    }
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// A signature over a manifest's bytes, and the key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub public_key: PublicKey,
    /// Base64 of the 64-byte Ed25519 signature.
    pub signature: String,
}

/// What a publisher signs. Unknown fields are refused (a field this version
/// does not understand could change what installing means).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub name: String,
    pub version: String,
    /// Payload format ([`FORMAT_TAR`]).
    pub format: String,
    /// Payload size in bytes.
    pub size: u64,
    /// SHA-256 of the payload, lowercase hex.
    pub sha256: String,
    /// Run (`sh -c`, in the release directory) after `current` points at
    /// the release; on rollback the previous release's runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<String>,
    /// Must exit 0 within `health_window_secs` (in the release directory),
    /// or the release is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_command: Option<String>,
    #[serde(default = "default_health_window")]
    pub health_window_secs: u64,
    /// RFC 3339.
    pub created_at: String,
}

fn default_health_window() -> u64 {
    10
}

impl Manifest {
    /// Parses and checks a manifest's bytes (not its signature).
    pub fn parse(manifest_json: &str) -> Result<Manifest, ArtifactError> {
        if manifest_json.len() > MAX_MANIFEST_LEN {
            return Err(ArtifactError::Manifest(format!(
                "{} bytes, at most {MAX_MANIFEST_LEN}",
                manifest_json.len()
            )));
        }
        let m: Manifest = serde_json::from_str(manifest_json)
            .map_err(|e| ArtifactError::Manifest(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), ArtifactError> {
        let bad = |m: String| Err(ArtifactError::Manifest(m));
        if self.schema != MANIFEST_SCHEMA {
            return bad(format!(
                "schema {} (this version reads {MANIFEST_SCHEMA})",
                self.schema
            ));
        }
        check_name(&self.name).map_err(ArtifactError::Manifest)?;
        check_version(&self.version).map_err(ArtifactError::Manifest)?;
        if self.format != FORMAT_TAR {
            return bad(format!(
                "format {:?} (expected {FORMAT_TAR:?})",
                self.format
            ));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return bad("sha256 must be 64 lowercase hex digits".into());
        }
        for (what, cmd) in [
            ("post_install", &self.post_install),
            ("health_command", &self.health_command),
        ] {
            if let Some(c) = cmd
                && (c.trim().is_empty() || c.len() > MAX_COMMAND_LEN || c.contains('\0'))
            {
                return bad(format!(
                    "{what} must be non-empty, at most {MAX_COMMAND_LEN} bytes, without NUL"
                ));
            }
        }
        if self.health_window_secs == 0 || self.health_window_secs > MAX_HEALTH_WINDOW_SECS {
            return bad(format!(
                "health_window_secs must be 1..={MAX_HEALTH_WINDOW_SECS}"
            ));
        }
        Ok(())
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The JSON a publisher signs.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An artifact name: a path component on every box, so `[a-z0-9]` first,
/// then `[a-z0-9._-]`, at most 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "artifact name {name:?}: 1-64 characters of [a-z0-9._-], starting with [a-z0-9]"
        ))
    }
}

/// A version: also a path component, so `[A-Za-z0-9]` first, then
/// `[A-Za-z0-9._+-]`, at most 64 characters.
pub fn check_version(version: &str) -> Result<(), String> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "artifact version {version:?}: 1-64 characters of [A-Za-z0-9._+-], starting with [A-Za-z0-9]"
        ))
    }
}

/// Splits `name@version`, checking both.
pub fn parse_id(id: &str) -> Result<(String, String), String> {
    let (n, v) = id
        .split_once('@')
        .ok_or_else(|| format!("{id:?}: expected NAME@VERSION"))?;
    check_name(n)?;
    check_version(v)?;
    Ok((n.to_string(), v.to_string()))
}

/// Checks that `sig` is a valid signature over `manifest_json` by one of
/// `trusted`, then parses the manifest. The key named in the signature must
/// itself be trusted (a signature by another key is [`ArtifactError::Untrusted`]).
pub fn verify(
    manifest_json: &str,
    sig: &Signature,
    trusted: &[PublicKey],
) -> Result<Manifest, ArtifactError> {
    if !trusted.contains(&sig.public_key) {
        return Err(ArtifactError::Untrusted);
    }
    let raw = B64
        .decode(&sig.signature)
        .map_err(|e| ArtifactError::Signature(format!("not base64: {e}")))?;
    UnparsedPublicKey::new(&ED25519, sig.public_key.as_bytes())
        .verify(manifest_json.as_bytes(), &raw)
        .map_err(|_| {
            ArtifactError::Signature(format!(
                "does not verify with {} over these manifest bytes",
                sig.public_key
            ))
        })?;
    Manifest::parse(manifest_json)
}

/// How many symlink expansions one target may take (as Linux's 40).
const MAX_SYMLINK_EXPANSIONS: u32 = 40;

/// Checks the symlinks of a bundle: `links` maps each symlink entry (a
/// relative path inside the release, without `.` or `..`) to its target.
/// Each target is resolved lexically from the link's directory, the way the
/// kernel would once the bundle is unpacked: a component that names another
/// symlink entry of the bundle is replaced by *its* target first (so `a -> .`
/// with `b -> a/..` resolves to the release's parent and is refused). The
/// result must stay inside the release root. Order-independent: every link
/// is judged against all of them. Returns the first offending link (in path
/// order) and why.
pub fn check_symlinks(
    links: &std::collections::BTreeMap<std::path::PathBuf, std::path::PathBuf>,
) -> Result<(), (std::path::PathBuf, String)> {
    for (link, target) in links {
        let refuse = |why: String| Err((link.clone(), why));
        if target.as_os_str().is_empty() {
            return refuse("a symlink without a target".into());
        }
        if target.has_root() {
            return refuse(format!(
                "a symlink to the absolute path {}",
                target.display()
            ));
        }
        let mut budget = MAX_SYMLINK_EXPANSIONS;
        let parent = link.parent().unwrap_or(std::path::Path::new(""));
        let resolved = resolve(Vec::new(), parent, links, &mut budget)
            .and_then(|dir| resolve(dir, target, links, &mut budget));
        if let Err(why) = resolved {
            return refuse(format!("a symlink to {}: {why}", target.display()));
        }
    }
    Ok(())
}

/// Walks `path` from `dir` (components below the release root), expanding
/// the bundle's symlink entries as it meets them.
fn resolve<'a>(
    mut dir: Vec<std::ffi::OsString>,
    path: &'a std::path::Path,
    links: &'a std::collections::BTreeMap<std::path::PathBuf, std::path::PathBuf>,
    budget: &mut u32,
) -> Result<Vec<std::ffi::OsString>, String> {
    use std::path::Component;
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if dir.pop().is_none() {
                    return Err("it leaves the release".into());
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("it leaves the release (an absolute path)".into());
            }
            Component::Normal(s) => {
                dir.push(s.to_os_string());
                let here: std::path::PathBuf = dir.iter().collect();
                if let Some(t) = links.get(&here) {
                    if *budget == 0 {
                        return Err("too many levels of symlinks (a loop?)".into());
                    }
                    *budget -= 1;
                    dir.pop();
                    dir = resolve(dir, t, links, budget)
                        .map_err(|e| format!("through {}: {e}", here.display()))?;
                }
            }
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(
        pairs: &[(&str, &str)],
    ) -> std::collections::BTreeMap<std::path::PathBuf, std::path::PathBuf> {
        pairs.iter().map(|(l, t)| (l.into(), t.into())).collect()
    }

    #[test]
    fn symlinks_are_resolved_through_the_bundles_own_symlinks() {
        // Plain links that stay inside.
        check_symlinks(&links(&[
            ("bin/run", "app"),
            ("top", "bin/../bin/app"),
            ("model/lib/current", "../../model"),
            ("a", "."),
            ("b", "a/a/bin"),
            ("c", "b"),
        ]))
        .unwrap();
        // Textually fine, but `a` is `.`: `a/..` is the release's parent.
        let (l, why) = check_symlinks(&links(&[("a", "."), ("b", "a/..")])).unwrap_err();
        assert_eq!(l, std::path::Path::new("b"));
        assert!(why.contains("leaves the release"), "{why}");
        // Order-independent: the link named first in the bundle can be the bad one.
        let (l, _) = check_symlinks(&links(&[("z", "."), ("b", "z/..")])).unwrap_err();
        assert_eq!(l, std::path::Path::new("b"));
        // The same to /etc.
        let deep = format!("{}{}etc", "a/".repeat(10), "../".repeat(10));
        let (l, why) = check_symlinks(&links(&[("a", "."), ("etc", &deep)])).unwrap_err();
        assert_eq!(l, std::path::Path::new("etc"));
        assert!(why.contains("leaves the release"), "{why}");
        // Through a link that itself climbs.
        let (l, _) = check_symlinks(&links(&[("d/up", ".."), ("d/x", "up/../y")])).unwrap_err();
        assert_eq!(l, std::path::Path::new("d/x"));
        // Loops, absolute and empty targets, plain `..` escapes.
        let (_, why) = check_symlinks(&links(&[("p", "q"), ("q", "p")])).unwrap_err();
        assert!(why.contains("too many levels"), "{why}");
        assert!(check_symlinks(&links(&[("d", "/etc")])).is_err());
        assert!(check_symlinks(&links(&[("d", "")])).is_err());
        assert!(check_symlinks(&links(&[("a/l", "../../x")])).is_err());
        assert!(check_symlinks(&links(&[("model", "..")])).is_err());
    }

    fn manifest() -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            name: "detector".into(),
            version: "1.2.0".into(),
            format: FORMAT_TAR.into(),
            size: 10,
            sha256: "ab".repeat(32),
            post_install: Some("./install.sh".into()),
            health_command: None,
            health_window_secs: 10,
            created_at: "2026-12-03T10:00:00Z".into(),
        }
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_over_the_same_bytes() {
        let (key, pem) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let json = manifest().to_json();
        let sig = key.sign(&json);
        let pk = key.public_key();
        assert_eq!(
            verify(&json, &sig, std::slice::from_ref(&pk)).unwrap(),
            manifest()
        );

        let (other, _) = SigningKey::generate().unwrap();
        assert_eq!(
            verify(&json, &sig, &[other.public_key()]),
            Err(ArtifactError::Untrusted)
        );
        // The same meaning in other bytes is not what was signed.
        let spaced = json.replace(",", ", ");
        assert!(matches!(
            verify(&spaced, &sig, std::slice::from_ref(&pk)),
            Err(ArtifactError::Signature(_))
        ));
        // A signature made by another key, claiming a trusted one.
        let forged = Signature {
            public_key: pk.clone(),
            signature: other.sign(&json).signature,
        };
        assert!(matches!(
            verify(&json, &forged, &[pk]),
            Err(ArtifactError::Signature(_))
        ));
    }

    #[test]
    fn public_keys_round_trip_and_bad_ones_are_named() {
        let (key, _) = SigningKey::generate().unwrap();
        let s = key.public_key().to_string();
        assert!(s.starts_with("ed25519:"));
        assert_eq!(s.parse::<PublicKey>().unwrap(), key.public_key());
        assert!("rsa:abc".parse::<PublicKey>().is_err());
        assert!("ed25519:AAAA".parse::<PublicKey>().is_err());
        assert!("ed25519:!!".parse::<PublicKey>().is_err());
    }

    #[test]
    fn names_and_versions_are_safe_path_components() {
        for ok in ["a", "detector", "yolo-v8.onnx", "x_1"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "A",
            "a/b",
            "-x",
            ".hidden",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["1", "1.2.0", "2.0.0-rc.1+build5", "V2"] {
            check_version(ok).unwrap();
        }
        for bad in ["", "..", ".1", "1/2", "1 2", "-1"] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_id("detector@1.2").unwrap(),
            ("detector".into(), "1.2".into())
        );
        assert!(parse_id("detector").is_err());
    }

    #[test]
    fn manifests_are_checked() {
        let ok = manifest();
        ok.validate().unwrap();
        let mut m = ok.clone();
        m.sha256 = "AB".repeat(32);
        assert!(m.validate().is_err());
        let mut m = ok.clone();
        m.health_window_secs = 0;
        assert!(m.validate().is_err());
        let mut m = ok.clone();
        m.format = "zip".into();
        assert!(m.validate().is_err());
        let mut m = ok.clone();
        m.post_install = Some("  ".into());
        assert!(m.validate().is_err());
        let unknown = ok.to_json().replace("{", "{\"run_as\":\"root\",");
        assert!(Manifest::parse(&unknown).is_err());
        assert!(Manifest::parse(&"x".repeat(MAX_MANIFEST_LEN + 1)).is_err());
    }
}
