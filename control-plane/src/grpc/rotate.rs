//! `ResetConnection`: the device rotates its key over its current link. The
//! new certificate becomes current at once; the old one keeps working until
//! the new one opens a session (or `auth::ROTATION_GRACE_MS` passes), so a
//! crash in the middle of a rotation never locks a box out.

use outpost_proto::v1::{ResetConnectionRequest, ResetConnectionResponse};
use tonic::Status;

use crate::AppState;
use crate::pki::VerifiedCsr;
use crate::store::{NewCert, RotationCommit, now_ms};

use super::{DeviceIdentity, store_status};

pub async fn reset_connection(
    state: &AppState,
    id: &DeviceIdentity,
    req: ResetConnectionRequest,
) -> Result<ResetConnectionResponse, Status> {
    let csr =
        VerifiedCsr::from_der(&req.csr_der).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let issued = state
        .ca
        .sign_device_csr(
            &csr,
            &id.workspace,
            &id.device_id,
            state.device_cert_lifetime,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| {
            tracing::error!("signing failed: {e}");
            Status::internal("could not sign the certificate")
        })?;
    let now = now_ms();
    let (api_key, device_api_key) =
        crate::admin::mint_device_key(&id.workspace, &id.device_id, now);
    state
        .store
        .rotate_cert(&RotationCommit {
            device_id: id.device_id.clone(),
            workspace: id.workspace.clone(),
            old_serial: id.serial.clone(),
            cert: NewCert {
                serial: issued.serial.clone(),
                not_before: issued.not_before.unix_timestamp() * 1000,
                not_after: issued.not_after.unix_timestamp() * 1000,
            },
            device_api_key,
            revoke_keys_before: now - super::auth::ROTATION_GRACE_MS,
            now,
        })
        .await
        .map_err(store_status)?;
    tracing::info!(device = %id.device_id, serial = %issued.serial, previous = %id.serial, "certificate rotated");
    Ok(ResetConnectionResponse {
        certificate_chain_der: vec![issued.der, state.ca.cert_der().to_vec()],
        ca_bundle_der: vec![state.ca.cert_der().to_vec()],
        device_api_key: api_key,
    })
}
