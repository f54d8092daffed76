//! Who is calling: derived from the verified client certificate alone, then
//! checked against the store on every RPC.

use tonic::{Request, Status};

use crate::AppState;
use crate::live::Cut;
use crate::pki::parse_device_cert;
use crate::store::{CertRecord, UnixMillis};

use super::store_status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub workspace: String,
    pub device_id: String,
    pub serial: String,
    /// A rotation replaced this certificate (it works for a grace period).
    pub superseded: bool,
}

/// How long a superseded certificate keeps working after a rotation when the
/// new one is not used (e.g. the agent crashed before saving it).
pub const ROTATION_GRACE_MS: i64 = 10 * 60 * 1000;

/// Whether an expired (but within the grace window) certificate is accepted:
/// only for `ResetConnection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Refuse,
    Allow,
}

/// Requires a client certificate whose serial the store knows, not revoked,
/// of an enabled device. The TLS layer has already verified the chain to our
/// CA and the validity period.
pub async fn authenticate<T>(
    state: &AppState,
    request: &Request<T>,
    expired: Expired,
) -> Result<DeviceIdentity, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "a client certificate is required for this RPC: enroll the device first",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required for this RPC"))?;
    let info = parse_device_cert(leaf).map_err(Status::unauthenticated)?;
    let record = state
        .store
        .get_cert(&info.serial)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            Status::unauthenticated("this certificate is unknown to the control plane")
        })?;
    if let Some(cut) = refusal(
        &record,
        info.not_after_unix,
        crate::store::now_ms(),
        expired,
    ) {
        return Err(cut_status(cut));
    }
    if record.device_id != info.device_id || record.workspace != info.workspace {
        tracing::warn!(serial = %info.serial, "certificate identity does not match its record");
        return Err(Status::unauthenticated(
            "certificate identity does not match its record",
        ));
    }
    if !record.device_enabled {
        return Err(cut_status(Cut::Disabled));
    }
    if !record.install_spent {
        // First authenticated call: the install ID can never be used again.
        state
            .store
            .spend_install_id(&record.device_id)
            .await
            .map_err(store_status)?;
    }
    Ok(DeviceIdentity {
        workspace: info.workspace,
        device_id: info.device_id,
        serial: info.serial,
        superseded: record.superseded_at.is_some(),
    })
}

/// Why a certificate the store knows may not be used at `now`, if so: its
/// device is deleted, it is revoked, a rotation replaced it more than
/// [`ROTATION_GRACE_MS`] ago, or it has expired (`not_after_unix`, seconds)
/// and the RPC is not a rotation.
pub(crate) fn refusal(
    record: &CertRecord,
    not_after_unix: i64,
    now: UnixMillis,
    expired: Expired,
) -> Option<Cut> {
    if record.device_deleted {
        return Some(Cut::Deleted);
    }
    if record.revoked {
        return Some(Cut::Revoked);
    }
    if let Some(at) = record.superseded_at
        && now - at > ROTATION_GRACE_MS
    {
        return Some(Cut::Revoked);
    }
    // The TLS layer lets certificates that expired within the grace window
    // through; they may only rotate.
    if not_after_unix * 1000 < now && expired == Expired::Refuse {
        return Some(Cut::Expired);
    }
    None
}

/// The status a refused or cut device gets, with the machine-readable reason
/// in the `outpost-reason` metadata.
pub fn cut_status(cut: Cut) -> Status {
    use outpost_proto::reason;
    let (mut status, why) = match cut {
        Cut::Deleted => (
            Status::permission_denied(
                "this device has been deleted (decommissioned); its credentials are void",
            ),
            reason::DECOMMISSIONED,
        ),
        Cut::Disabled => (
            Status::permission_denied("this device is disabled by an operator"),
            reason::DISABLED,
        ),
        Cut::Revoked => (
            Status::unauthenticated("this certificate has been revoked"),
            reason::REVOKED,
        ),
        Cut::Expired => (
            Status::unauthenticated(
                "this certificate has expired: rotate it with ResetConnection (allowed within the grace window)",
            ),
            reason::EXPIRED,
        ),
    };
    status.metadata_mut().insert(
        reason::METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(why),
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CertRecord {
        CertRecord {
            serial: "01".into(),
            device_id: "d1".into(),
            workspace: "acme".into(),
            revoked: false,
            device_enabled: true,
            device_deleted: false,
            install_spent: true,
            superseded_at: None,
        }
    }

    const NOW: UnixMillis = 1_700_000_000_000;
    /// Valid for another day.
    const NOT_AFTER: i64 = NOW / 1000 + 86_400;

    #[test]
    fn a_superseded_certificate_works_for_the_grace_period_only() {
        let rotated = |ago: i64| CertRecord {
            superseded_at: Some(NOW - ago),
            ..record()
        };
        for expired in [Expired::Refuse, Expired::Allow] {
            assert_eq!(refusal(&record(), NOT_AFTER, NOW, expired), None);
            assert_eq!(refusal(&rotated(0), NOT_AFTER, NOW, expired), None);
            assert_eq!(
                refusal(&rotated(ROTATION_GRACE_MS), NOT_AFTER, NOW, expired),
                None,
                "the last millisecond of the grace"
            );
            assert_eq!(
                refusal(&rotated(ROTATION_GRACE_MS + 1), NOT_AFTER, NOW, expired),
                Some(Cut::Revoked)
            );
        }
    }

    #[test]
    fn an_expired_certificate_may_only_rotate() {
        let expired_at = NOW / 1000 - 1;
        assert_eq!(
            refusal(&record(), expired_at, NOW, Expired::Refuse),
            Some(Cut::Expired)
        );
        assert_eq!(refusal(&record(), expired_at, NOW, Expired::Allow), None);
        // Up to and including its last second it is valid.
        assert_eq!(refusal(&record(), NOW / 1000, NOW, Expired::Refuse), None);
    }

    #[test]
    fn deletion_and_revocation_refuse_whatever_the_time() {
        let deleted = CertRecord {
            device_deleted: true,
            revoked: true,
            ..record()
        };
        assert_eq!(
            refusal(&deleted, NOT_AFTER, NOW, Expired::Allow),
            Some(Cut::Deleted),
            "deletion is named first"
        );
        let revoked = CertRecord {
            revoked: true,
            ..record()
        };
        assert_eq!(
            refusal(&revoked, NOT_AFTER, NOW, Expired::Allow),
            Some(Cut::Revoked)
        );
    }
}
