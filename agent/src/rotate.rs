//! Key rotation. When: ~2/3 into the certificate's life, jittered and clamped
//! (a pure function, tested below). How: a new key written next to the old
//! one, a CSR over the current mTLS link (`ResetConnection`), the new
//! certificate written next to the old one, then two renames. A crash at any
//! point leaves either the old or the new pair usable, and
//! [`StateDir::recover_rotation`] finishes or discards a half-done rotation
//! at the next start.

use outpost_proto::v1::ResetConnectionRequest;
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use rustls::pki_types::CertificateDer;
use tonic::transport::Channel;

use crate::link::LinkError;
use crate::state::{StateDir, StateError};

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("rotation failed: {0}")]
    Invalid(String),
}

/// Validity of the current certificate, unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

/// Reads the validity of a DER certificate.
pub fn validity(der: &[u8]) -> Result<Validity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let v = cert.validity();
    Ok(Validity {
        not_before_ms: v.not_before.timestamp() * 1000,
        not_after_ms: v.not_after.timestamp() * 1000,
    })
}

/// When to rotate a certificate valid from `start` (its not-before, or when
/// we obtained it if later: certificates are backdated) until `not_after`:
/// at 2/3 of that span, moved by `jitter` (-1..=1) times 5 % of it so a fleet
/// spreads out, and never before half of it or within its last tenth.
pub fn rotation_due_ms(start_ms: i64, not_after_ms: i64, jitter: f64) -> i64 {
    let life = (not_after_ms - start_ms).max(1);
    let target = start_ms + life * 2 / 3 + (jitter.clamp(-1.0, 1.0) * life as f64 * 0.05) as i64;
    let earliest = start_ms + life / 2;
    let latest = (not_after_ms - life / 10).max(earliest);
    target.clamp(earliest, latest)
}

/// Rotates the device key over `client` and commits the new identity.
pub async fn rotate(
    state: &StateDir,
    client: &mut DeviceServiceClient<Channel>,
) -> Result<(), RotateError> {
    let key = state.create_next_key()?;
    crate::failpoint::hit(crate::failpoint::ROTATE_KEY_WRITTEN);
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| RotateError::Invalid(format!("cannot build CSR: {e}")))?;
    let resp = client
        .reset_connection(ResetConnectionRequest {
            csr_der: csr.der().to_vec(),
        })
        .await
        .map_err(LinkError::from)?
        .into_inner();
    let leaf = resp
        .certificate_chain_der
        .first()
        .ok_or_else(|| RotateError::Invalid("no certificate in the answer".into()))?;
    crate::failpoint::hit(crate::failpoint::ROTATE_CERT_ISSUED);
    if !crate::state::cert_matches_key(&CertificateDer::from(leaf.clone()), &key) {
        return Err(RotateError::Invalid(
            "the new certificate is not for the new key".into(),
        ));
    }
    state.commit_rotation(
        &crate::enroll::pem_chain(&resp.certificate_chain_der),
        &resp.device_api_key,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_two_thirds_in_with_bounded_jitter() {
        let day = 86_400_000;
        assert_eq!(rotation_due_ms(0, 3 * day, 0.0), 2 * day);
        let early = rotation_due_ms(0, 3 * day, -1.0);
        let late = rotation_due_ms(0, 3 * day, 1.0);
        assert!(early < 2 * day && late > 2 * day);
        assert!(late - early <= (3 * day) / 10 + 1);
        // Clamps hold for any jitter.
        for j in [-50.0, -1.0, 0.0, 1.0, 50.0] {
            let t = rotation_due_ms(1000, 16_000, j);
            assert!((1000 + 7_500..=16_000 - 1_500).contains(&t), "{t}");
        }
        // A certificate already past its due time rotates at once (due <= now).
        assert!(rotation_due_ms(0, 15_000, 0.0) < 15_000);
    }

    #[test]
    fn reads_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 2);
        let cert = p.self_signed(&key).unwrap();
        let v = validity(cert.der()).unwrap();
        assert_eq!(v.not_before_ms, 1_577_836_800_000);
        assert_eq!(v.not_after_ms - v.not_before_ms, 86_400_000);
    }
}
