//! Who is calling: derived from the verified client certificate alone, then
//! checked against the store on every RPC.

use tonic::{Request, Status};

use crate::AppState;
use crate::pki::parse_device_cert;

use super::store_status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub workspace: String,
    pub device_id: String,
    pub serial: String,
}

/// Requires a client certificate whose serial the store knows, not revoked,
/// of an enabled device. The TLS layer has already verified the chain to our
/// CA and the validity period.
pub async fn authenticate<T>(
    state: &AppState,
    request: &Request<T>,
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
    if record.revoked {
        return Err(Status::unauthenticated("this certificate has been revoked"));
    }
    if record.device_id != info.device_id || record.workspace != info.workspace {
        tracing::warn!(serial = %info.serial, "certificate identity does not match its record");
        return Err(Status::unauthenticated(
            "certificate identity does not match its record",
        ));
    }
    if !record.device_enabled {
        return Err(Status::permission_denied(
            "this device is disabled by an operator",
        ));
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
    })
}
