//! Who is calling: derived from the verified client certificate alone, then
//! checked against the store on every RPC.

use tonic::{Request, Status};

use crate::AppState;
use crate::live::Cut;
use crate::pki::parse_device_cert;

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
    if record.device_deleted {
        return Err(cut_status(Cut::Deleted));
    }
    if record.revoked {
        return Err(cut_status(Cut::Revoked));
    }
    let now = crate::store::now_ms();
    if let Some(at) = record.superseded_at
        && now - at > ROTATION_GRACE_MS
    {
        return Err(cut_status(Cut::Revoked));
    }
    // The TLS layer lets certificates that expired within the grace window
    // through; they may only rotate.
    if info.not_after_unix * 1000 < now && expired == Expired::Refuse {
        return Err(cut_status(Cut::Expired));
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
