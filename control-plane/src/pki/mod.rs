//! The control plane's certificate authority: creates or loads the CA, issues
//! the gRPC server certificate and signs device CSRs.
//!
//! Files under `DATA_DIR/pki/`: `ca.crt` (public), `ca.key` (mode 0600). An
//! operator who brings an own intermediate CA places its certificate and key
//! there before the first start (see `certs/README.md`).

mod identity;

pub use identity::{DeviceCertInfo, parse_device_cert};

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use time::OffsetDateTime;

use crate::ids::sha256_hex;

/// Certificates are backdated by this much so that devices with slightly slow
/// clocks accept them at once.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The CA key: PKCS#8, or SEC1 (P-256) wrapped into PKCS#8 here.
fn read_ca_key(key_pem: &str) -> Result<KeyPair, PkiError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let convert = "convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in ca.key -out ca.key.pk8` and use that";
    match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) {
        Ok(PrivateKeyDer::Sec1(sec1)) => {
            let pkcs8 = p256_sec1_to_pkcs8(sec1.secret_sec1_der());
            KeyPair::try_from(pkcs8.as_slice()).map_err(|_| {
                PkiError::Invalid(format!(
                    "the CA key is an EC key in SEC1 form (BEGIN EC PRIVATE KEY) but not a P-256 one this control plane can use: give an ECDSA P-256 key; {convert}"
                ))
            })
        }
        Ok(PrivateKeyDer::Pkcs8(_)) => KeyPair::from_pem(key_pem).map_err(|e| {
            PkiError::Invalid(format!(
                "the CA key could not be used ({e}): it must be an ECDSA P-256 (or P-384, Ed25519, RSA) key in PKCS#8"
            ))
        }),
        Ok(_) => Err(PkiError::Invalid(format!(
            "the CA key is in a form this control plane does not read (e.g. BEGIN RSA PRIVATE KEY): {convert}"
        ))),
        Err(e) => Err(PkiError::Invalid(format!(
            "the CA key is not a PEM private key ({e}); it must be PKCS#8 (BEGIN PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY)"
        ))),
    }
}

/// PKCS#8 `PrivateKeyInfo` around a SEC1 `ECPrivateKey`, naming P-256
/// (RFC 5915 §1, RFC 5208). ring checks the curve and public key inside.
fn p256_sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }
    // SEQUENCE { OID id-ecPublicKey, OID prime256v1 }
    const ALGORITHM: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(ALGORITHM);
    body.extend(der(0x04, sec1));
    der(0x30, &body)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate freshly signed for a device.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: Vec<u8>,
    /// Lowercase hex of the DER serial bytes; the key of the certificate in the store.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// A device CSR whose signature has been verified.
pub struct VerifiedCsr {
    params: CertificateSigningRequestParams,
    /// SHA-256 (hex) of the CSR's public key: what an install ID is bound to.
    pub public_key_sha256: String,
}

impl VerifiedCsr {
    /// Parses a DER CSR and checks its key type (see [`ACCEPTED_KEYS`]) and
    /// its self-signature (proof of key possession).
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        check_csr_key(der)?;
        let csr_der = CertificateSigningRequestDer::from(der);
        let params = CertificateSigningRequestParams::from_der(&csr_der)
            .map_err(|e| PkiError::Invalid(format!("invalid CSR: {e}")))?;
        let public_key_sha256 = sha256_hex(rcgen::PublicKeyData::der_bytes(&params.public_key));
        Ok(Self {
            params,
            public_key_sha256,
        })
    }
}

/// The device key types the control plane signs (and TLS verifies).
pub const ACCEPTED_KEYS: &str =
    "ECDSA P-256 (what the agent generates), ECDSA P-384, Ed25519, or RSA of 2048 to 8192 bits";

/// Refuses a CSR whose key is of a type or size the device service cannot
/// verify, naming it — before the signature check, which would otherwise
/// fail on such a key as a bare "invalid signature". A CSR that does not
/// parse is left to that check's message.
fn check_csr_key(der: &[u8]) -> Result<(), PkiError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    let Ok((_, csr)) = X509CertificationRequest::from_der(der) else {
        return Ok(());
    };
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    let refuse = |what: String| {
        Err(PkiError::Invalid(format!(
            "the CSR's key is {what}; accepted keys: {ACCEPTED_KEYS}"
        )))
    };
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let m = rsa.modulus;
                let m = &m[m.iter().take_while(|b| **b == 0).count()..];
                m.first()
                    .map_or(0, |top| m.len() * 8 - top.leading_zeros() as usize)
            }
            _ => 0,
        };
        if !(2048..=8192).contains(&bits) {
            return refuse(format!("RSA of {bits} bits"));
        }
        Ok(())
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) => refuse(format!("ECDSA on the curve {c}")),
            None => refuse("ECDSA without a named curve".into()),
        }
    } else if *alg == OID_SIG_ED25519 {
        Ok(())
    } else {
        refuse(format!("of the type {alg}"))
    }
}

/// The CA that signs device identities and the server certificate.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    fingerprint: String,
    not_before: OffsetDateTime,
}

impl Ca {
    /// Loads `ca.crt`/`ca.key` from `pki_dir`, creating a new ECDSA P-256 CA
    /// there when neither exists.
    pub fn load_or_create(pki_dir: &Path) -> Result<Self, PkiError> {
        let cert_path = pki_dir.join("ca.crt");
        let key_path = pki_dir.join("ca.key");
        create_private_dir(pki_dir)?;
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {}
            (false, false) => {
                let (cert_pem, key_pem) = generate_ca()?;
                // Key first: a crash between the two writes leaves no
                // certificate without its key.
                write_file_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
                write_file_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
                tracing::info!(path = %cert_path.display(), "created a new device CA");
            }
            (true, false) => {
                return Err(PkiError::Invalid(format!(
                    "{} exists but {} is missing",
                    cert_path.display(),
                    key_path.display()
                )));
            }
            (false, true) => {
                return Err(PkiError::Invalid(format!(
                    "{} exists but {} is missing",
                    key_path.display(),
                    cert_path.display()
                )));
            }
        }
        check_key_mode(&key_path)?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Builds a CA from PEM text (certificate and PKCS#8 key; a P-256 key
    /// in SEC1 form, `BEGIN EC PRIVATE KEY` as openssl writes it, is taken too).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        use rustls_pki_types::pem::PemObject;
        let key = read_ca_key(key_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("CA certificate is not valid PEM: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        let fingerprint = format!("sha256:{}", sha256_hex(&cert_der));
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| PkiError::Invalid(format!("CA certificate unparseable: {e}")))?;
        let not_before =
            OffsetDateTime::from_unix_timestamp(parsed.validity().not_before.timestamp())
                .map_err(|e| PkiError::Invalid(format!("CA validity: {e}")))?;
        Ok(Self {
            not_before,
            cert_der,
            cert_pem: cert_pem.to_string(),
            issuer,
            fingerprint,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `sha256:<hex>` of the CA certificate's DER: what agents pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Issues a TLS server certificate for `names` (DNS names or IP
    /// addresses). Returns the chain (leaf, CA) and the new private key.
    pub fn issue_server_cert(
        &self,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| "outpost".into()),
        );
        dn.push(DnType::OrganizationName, "Outpost");
        params.distinguished_name = dn;
        // Valid since the CA is: an agent whose clock is only floored at its
        // build time (no RTC, booted in 1970) still accepts it.
        params.not_before = self.not_before.min(now - BACKDATE);
        params.not_after = now + Duration::from_secs(365 * 24 * 3600);
        params.serial_number = Some(random_serial().0);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs a device certificate for a verified CSR. The subject comes from
    /// the control plane, never from the CSR: CN = device id, URI SAN
    /// `urn:outpost:<workspace>:device:<id>`, EKU clientAuth.
    pub fn sign_device_csr(
        &self,
        csr: &VerifiedCsr,
        workspace: &str,
        device_id: &str,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        dn.push(DnType::OrganizationName, workspace);
        params.distinguished_name = dn;
        let uri = identity::device_uri(workspace, device_id);
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|e| {
                PkiError::Invalid(format!("bad device URI: {e}"))
            })?)];
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.params.public_key, &self.issuer)?;
        Ok(IssuedCert {
            der: cert.der().to_vec(),
            serial: serial_hex,
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }
}

/// 16 random bytes, positive and without a leading zero byte, so that the DER
/// encoding is exactly these bytes and its hex is canonical.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

fn generate_ca() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let mut suffix = [0u8; 4];
    rand::rng().fill_bytes(&mut suffix);
    dn.push(
        DnType::CommonName,
        format!("Outpost Device CA {}", hex::encode(suffix)),
    );
    dn.push(DnType::OrganizationName, "Outpost");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
    params.serial_number = Some(random_serial().0);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Creates `dir` (and parents), mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    outpost_common::fs::create_private_dir(dir).map_err(io_err(dir))
}

fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    outpost_common::fs::write_atomic(path, bytes, mode).map_err(io_err(path))
}

fn check_key_mode(path: &Path) -> Result<(), PkiError> {
    outpost_common::fs::ensure_private(path).map_err(|e| PkiError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openssl's `ec` output (SEC1, `BEGIN EC PRIVATE KEY`) of the CA's own
    /// key is taken, and yields the same CA.
    #[test]
    fn a_sec1_ca_key_is_taken() {
        let Ok(v) = std::process::Command::new("openssl")
            .arg("version")
            .output()
        else {
            panic!("openssl is needed for this test");
        };
        assert!(v.status.success());
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&dir.path().join("pki")).unwrap();
        let key = dir.path().join("pki/ca.key");
        let out = std::process::Command::new("openssl")
            .args(["ec", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let sec1 = String::from_utf8(out.stdout).unwrap();
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        let cert = std::fs::read_to_string(dir.path().join("pki/ca.crt")).unwrap();
        let again = Ca::from_pem(&cert, &sec1).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let err = Ca::from_pem(
            &cert,
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("PKCS#8"), "{err}");
    }

    fn csr_for(key: &KeyPair) -> Vec<u8> {
        let params = CertificateParams::new(vec!["ignored.example".to_string()]).unwrap();
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn creates_ca_once_with_private_key_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let ca = Ca::load_or_create(&pki).unwrap();
        let mode = std::fs::metadata(pki.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Ca::load_or_create(&pki).unwrap();
        assert_eq!(
            ca.fingerprint(),
            again.fingerprint(),
            "second start reuses the CA"
        );
        assert!(ca.fingerprint().starts_with("sha256:"));
    }

    #[test]
    fn refuses_a_world_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        Ca::load_or_create(&pki).unwrap();
        std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = Ca::load_or_create(&pki).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn device_cert_binds_workspace_and_device_not_csr_subject() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = VerifiedCsr::from_der(&csr_for(&key)).unwrap();
        let now = OffsetDateTime::now_utc();
        let issued = ca
            .sign_device_csr(&csr, "acme", "dev123", Duration::from_secs(3600), now)
            .unwrap();
        let info = parse_device_cert(&issued.der).unwrap();
        assert_eq!(info.workspace, "acme");
        assert_eq!(info.device_id, "dev123");
        assert_eq!(info.serial, issued.serial);
        assert!(issued.not_before <= now - BACKDATE + Duration::from_secs(1));
        assert_eq!(
            issued.not_after.unix_timestamp(),
            (now + Duration::from_secs(3600)).unix_timestamp()
        );
    }

    /// CSRs made by `openssl req -new -newkey rsa:1024|rsa:2048|ec
    /// (secp521r1)`: keys rcgen cannot make.
    const RSA_1024: &[u8] = include_bytes!("testdata/rsa1024.csr.der");
    const RSA_2048: &[u8] = include_bytes!("testdata/rsa2048.csr.der");
    const P521: &[u8] = include_bytes!("testdata/p521.csr.der");

    #[test]
    fn csr_key_types_are_named_when_refused() {
        let err = VerifiedCsr::from_der(RSA_1024).err().unwrap().to_string();
        assert!(err.contains("RSA of 1024 bits"), "{err}");
        assert!(err.contains("accepted keys: ECDSA P-256"), "{err}");
        let err = VerifiedCsr::from_der(P521).err().unwrap().to_string();
        assert!(err.contains("curve 1.3.132.0.35"), "{err}");
        VerifiedCsr::from_der(RSA_2048).unwrap();
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            VerifiedCsr::from_der(&csr_for(&key)).unwrap();
        }
    }

    #[test]
    fn rejects_garbage_and_tampered_csrs() {
        assert!(VerifiedCsr::from_der(b"not a csr").is_err());
        let key = KeyPair::generate().unwrap();
        let mut der = csr_for(&key);
        let last = der.len() - 1;
        der[last] ^= 0xff; // breaks the signature
        assert!(VerifiedCsr::from_der(&der).is_err());
    }

    #[test]
    fn same_key_same_binding_hash() {
        let key = KeyPair::generate().unwrap();
        let a = VerifiedCsr::from_der(&csr_for(&key)).unwrap();
        let b = VerifiedCsr::from_der(&csr_for(&key)).unwrap();
        let other = VerifiedCsr::from_der(&csr_for(&KeyPair::generate().unwrap())).unwrap();
        assert_eq!(a.public_key_sha256, b.public_key_sha256);
        assert_ne!(a.public_key_sha256, other.public_key_sha256);
    }
}
