//! The agent's state directory: its key (never leaves the box), certificate,
//! CA bundle, identity and counters. Every write is atomic (temporary file,
//! fsync, rename), so a crash leaves either the old or the new file.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::failpoint;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who this box is, as recorded at enrollment. Written last: its presence
/// means the enrollment is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub device_id: String,
    pub workspace: String,
    pub server: String,
    pub enrolled_at_unix_ms: i64,
}

/// What `outpost-agent status` shows about a running daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    pub pid: u32,
    pub link: String,
    pub last_connected_unix_ms: Option<i64>,
    /// When the control plane last acknowledged telemetry, and up to which seq.
    #[serde(default)]
    pub last_ack_unix_ms: Option<i64>,
    #[serde(default)]
    pub acked_seq: u64,
    /// When the daemon plans to rotate the current certificate.
    #[serde(default)]
    pub next_rotation_unix_ms: Option<i64>,
    pub last_error: Option<String>,
    pub pending_samples: u64,
    pub dropped_samples: u64,
    #[serde(default)]
    pub pending_logs: u64,
    #[serde(default)]
    pub logs_acked_seq: u64,
    #[serde(default)]
    pub dropped_logs: u64,
    #[serde(default)]
    pub rate_limited_logs: u64,
    #[serde(default)]
    pub corrupt_records: u64,
    pub next_seq: u64,
    pub updated_unix_ms: i64,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating with mode 0700) the state directory.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        outpost_common::fs::create_private_dir(root).map_err(io_err(root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn key_path(&self) -> PathBuf {
        self.root.join("device.key")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.root.join("device.crt")
    }
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    pub fn api_key_path(&self) -> PathBuf {
        self.root.join("api-key")
    }
    fn identity_path(&self) -> PathBuf {
        self.root.join("identity.json")
    }
    fn seq_path(&self) -> PathBuf {
        self.root.join("telemetry.seq")
    }
    fn status_path(&self) -> PathBuf {
        self.root.join("status.json")
    }

    pub fn identity(&self) -> Result<Option<Identity>, StateError> {
        let path = self.identity_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Invalid {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Loads the device key, or creates and persists a new ECDSA P-256 key
    /// (mode 0600) when there is none. Reusing a key left by an interrupted
    /// enrollment lets the retry be recognised by the control plane.
    pub fn load_or_create_key(&self) -> Result<rcgen::KeyPair, StateError> {
        let path = self.key_path();
        match std::fs::read_to_string(&path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| StateError::Invalid {
                path,
                message: format!("unreadable device key: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(|e| StateError::Invalid {
                    path: path.clone(),
                    message: format!("key generation failed: {e}"),
                })?;
                write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
                Ok(key)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Records a completed enrollment: CA bundle, certificate chain, device
    /// API key, then the identity (last, as the commit point).
    pub fn save_enrollment(
        &self,
        identity: &Identity,
        chain_pem: &str,
        ca_pem: &str,
        api_key: &str,
    ) -> Result<(), StateError> {
        write_atomic(&self.ca_path(), ca_pem.as_bytes(), 0o600)?;
        write_atomic(&self.cert_path(), chain_pem.as_bytes(), 0o600)?;
        write_atomic(&self.api_key_path(), api_key.as_bytes(), 0o600)?;
        let json = serde_json::to_vec_pretty(identity).map_err(|e| StateError::Invalid {
            path: self.identity_path(),
            message: e.to_string(),
        })?;
        write_atomic(&self.identity_path(), &json, 0o600)
    }

    fn next_key_path(&self) -> PathBuf {
        self.root.join("device.key.next")
    }
    fn next_cert_path(&self) -> PathBuf {
        self.root.join("device.crt.next")
    }
    fn floor_path(&self) -> PathBuf {
        self.root.join("clock.floor")
    }

    /// A new key for a rotation, saved (0600) next to the current one.
    pub fn create_next_key(&self) -> Result<rcgen::KeyPair, StateError> {
        let path = self.next_key_path();
        let key = rcgen::KeyPair::generate().map_err(|e| StateError::Invalid {
            path: path.clone(),
            message: format!("key generation failed: {e}"),
        })?;
        write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
        Ok(key)
    }

    /// Makes the rotated identity current: the new certificate is saved next
    /// to the old one, then key and certificate are renamed into place.
    /// [`StateDir::recover_rotation`] completes this after a crash.
    pub fn commit_rotation(&self, chain_pem: &str, api_key: &str) -> Result<(), StateError> {
        write_atomic(&self.next_cert_path(), chain_pem.as_bytes(), 0o600)?;
        failpoint::hit(failpoint::ROTATE_CERT_WRITTEN);
        rename(&self.next_key_path(), &self.key_path())?;
        failpoint::hit(failpoint::ROTATE_KEY_SWAPPED);
        rename(&self.next_cert_path(), &self.cert_path())?;
        failpoint::hit(failpoint::ROTATE_CERT_SWAPPED);
        write_atomic(&self.api_key_path(), api_key.as_bytes(), 0o600)
    }

    /// Finishes or discards a rotation a crash interrupted, so that
    /// `device.key` and `device.crt` always belong together.
    pub fn recover_rotation(&self) -> Result<(), StateError> {
        let (key_next, cert_next) = (self.next_key_path(), self.next_cert_path());
        let load_key = |p: &Path| -> Option<rcgen::KeyPair> {
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(p).ok()?).ok()
        };
        let load_cert =
            |p: &Path| -> Option<CertificateDer<'static>> { CertificateDer::from_pem_file(p).ok() };
        if let Some(next_cert) = load_cert(&cert_next) {
            if load_key(&key_next).is_some_and(|k| cert_matches_key(&next_cert, &k)) {
                tracing::info!("completing an interrupted key rotation");
                rename(&key_next, &self.key_path())?;
                rename(&cert_next, &self.cert_path())?;
                return Ok(());
            }
            if load_key(&self.key_path()).is_some_and(|k| cert_matches_key(&next_cert, &k)) {
                tracing::info!("completing an interrupted key rotation");
                rename(&cert_next, &self.cert_path())?;
                return Ok(());
            }
        }
        // Anything else left over is a rotation that never got its certificate.
        for p in [&cert_next, &key_next] {
            match std::fs::remove_file(p) {
                Ok(()) => {
                    tracing::info!(path = %p.display(), "discarded an unfinished key rotation")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(p)(e)),
            }
        }
        Ok(())
    }

    /// When the current certificate was saved (its file's mtime), unix ms.
    pub fn cert_saved_ms(&self) -> Option<i64> {
        let modified = std::fs::metadata(self.cert_path()).ok()?.modified().ok()?;
        Some(
            modified
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_millis() as i64,
        )
    }

    /// The persisted clock floor (last known-good time), unix ms.
    pub fn clock_floor(&self) -> Option<i64> {
        std::fs::read_to_string(self.floor_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn save_clock_floor(&self, ms: i64) -> Result<(), StateError> {
        write_atomic(&self.floor_path(), ms.to_string().as_bytes(), 0o600)
    }

    /// Removes every credential (key, certificates, API key, identity): the
    /// device was deleted. Counters and status stay for the record.
    pub fn wipe_credentials(&self) -> Result<(), StateError> {
        for path in [
            self.identity_path(),
            self.key_path(),
            self.cert_path(),
            self.api_key_path(),
            self.ca_path(),
            self.next_key_path(),
            self.next_cert_path(),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(())
    }

    /// The next telemetry sequence number (1 for a new device).
    pub fn next_seq(&self) -> Result<u64, StateError> {
        let path = self.seq_path();
        match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| StateError::Invalid {
                path,
                message: "not a sequence number".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(1),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn save_next_seq(&self, next: u64) -> Result<(), StateError> {
        write_atomic(&self.seq_path(), next.to_string().as_bytes(), 0o600)
    }

    /// Status is informational and rewritten often: replaced atomically but
    /// without fsync, to spare flash storage.
    pub fn save_status(&self, status: &RuntimeStatus) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(status).map_err(|e| StateError::Invalid {
            path: self.status_path(),
            message: e.to_string(),
        })?;
        replace_file(&self.status_path(), &json, 0o600, false)
    }

    pub fn status(&self) -> Option<RuntimeStatus> {
        let bytes = std::fs::read(self.status_path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StateError> {
    std::fs::rename(from, to).map_err(io_err(to))?;
    if let Some(Ok(d)) = to.parent().map(std::fs::File::open) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Whether `cert` certifies `key`'s public key.
pub fn cert_matches_key(cert: &CertificateDer<'_>, key: &rcgen::KeyPair) -> bool {
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
        .unwrap_or(false)
}

/// Writes via a temporary file, fsync and rename (see `outpost_common::fs`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    outpost_common::fs::write_atomic(path, bytes, mode).map_err(io_err(path))
}

fn replace_file(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<(), StateError> {
    outpost_common::fs::replace_file(path, bytes, mode, durable).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("s")).unwrap();
        let k1 = state.load_or_create_key().unwrap();
        let k2 = state.load_or_create_key().unwrap();
        assert_eq!(k1.public_key_raw(), k2.public_key_raw());
        let mode = std::fs::metadata(state.key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(state.root())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn identity_is_absent_until_enrollment_completes() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.identity().unwrap(), None);
        let id = Identity {
            device_id: "d".into(),
            workspace: "w".into(),
            server: "https://x:1".into(),
            enrolled_at_unix_ms: 1,
        };
        state.save_enrollment(&id, "chain", "ca", "opk_x").unwrap();
        assert_eq!(state.identity().unwrap(), Some(id));
        let mode = std::fs::metadata(state.api_key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn seq_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.next_seq().unwrap(), 1);
        state.save_next_seq(42).unwrap();
        let again = StateDir::open(dir.path()).unwrap();
        assert_eq!(again.next_seq().unwrap(), 42);
    }

    /// A device key and a certificate for it (self-signed stands in for the CA's).
    fn pair() -> (rcgen::KeyPair, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        (key, cert.pem())
    }

    fn current_pair_matches(state: &StateDir) -> bool {
        let key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(state.key_path()).unwrap()).unwrap();
        let cert = CertificateDer::from_pem_file(state.cert_path()).unwrap();
        cert_matches_key(&cert, &key)
    }

    /// A crash at every step of a rotation leaves a matching key and
    /// certificate after recovery: the old pair or the new one.
    #[test]
    fn a_crash_at_any_step_of_a_rotation_leaves_a_usable_identity() {
        for crash_after in 0..=3 {
            let dir = tempfile::tempdir().unwrap();
            let state = StateDir::open(dir.path()).unwrap();
            let (old_key, old_cert) = pair();
            write_atomic(&state.key_path(), old_key.serialize_pem().as_bytes(), 0o600).unwrap();
            write_atomic(&state.cert_path(), old_cert.as_bytes(), 0o644).unwrap();
            // The rotation, step by step, stopping after `crash_after` steps.
            let new_key = state.create_next_key().unwrap();
            let new_cert = rcgen::CertificateParams::default()
                .self_signed(&new_key)
                .unwrap()
                .pem();
            let steps: [&dyn Fn(); 3] = [
                &|| write_atomic(&state.next_cert_path(), new_cert.as_bytes(), 0o644).unwrap(),
                &|| rename(&state.next_key_path(), &state.key_path()).unwrap(),
                &|| rename(&state.next_cert_path(), &state.cert_path()).unwrap(),
            ];
            for step in steps.iter().take(crash_after) {
                step();
            }
            state.recover_rotation().unwrap();
            assert!(
                current_pair_matches(&state),
                "crash after step {crash_after}"
            );
            assert!(!state.next_key_path().exists() && !state.next_cert_path().exists());
            let key_now = std::fs::read_to_string(state.key_path()).unwrap();
            let rotated = key_now == new_key.serialize_pem();
            assert_eq!(
                rotated,
                crash_after >= 1,
                "step {crash_after}: new pair once its cert was saved"
            );
        }
    }
}
