//! `Enroll`: install ID + CSR → device certificate. The install ID is bound
//! to the first CSR's key; a retry with that key (lost response) gets a fresh
//! certificate for the same device until the device has connected once.

use outpost_proto::v1::{
    CheckEnrollmentRequest, CheckEnrollmentResponse, EnrollRequest, EnrollResponse, Settings,
};
use tonic::{Request, Status};

use crate::AppState;
use crate::ids;
use crate::pki::VerifiedCsr;
use crate::store::{EnrollmentCommit, NewCert, now_ms};

use super::commit::EnrollOutcome;

use super::{HEARTBEAT_INTERVAL_SECS, TELEMETRY_INTERVAL_SECS, store_status, store_unavailable};

const SPENT: &str = "this install ID has already been used; ask an operator for a new one \
     (POST /{workspace}/devices/v2/{deviceId}/install-id)";

pub async fn enroll(state: &AppState, req: EnrollRequest) -> Result<EnrollResponse, Status> {
    if !req.enroll_token.trim().is_empty() {
        if !req.install_id.trim().is_empty() {
            return Err(Status::invalid_argument(
                "give either install_id or enroll_token, not both",
            ));
        }
        return super::enroll_token::enroll(state, req).await;
    }
    let install_id = req.install_id.trim();
    if !install_id.starts_with("inst_") || install_id.len() > 128 {
        return Err(Status::invalid_argument(
            "install_id must be the inst_… value from create-device",
        ));
    }
    let csr =
        VerifiedCsr::from_der(&req.csr_der).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let enrollment = state
        .store
        .find_enrollment(&ids::hash_secret(install_id))
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::permission_denied("unknown install ID"))?;
    let current = req.current_device_id.trim();
    if !current.is_empty() && current != enrollment.device_id {
        return Err(Status::permission_denied(format!(
            "this install ID belongs to another device than this box ({current}); ask for an install ID of device {current}"
        )));
    }
    let now = now_ms();
    if enrollment.spent {
        return Err(Status::permission_denied(SPENT));
    }
    if now >= enrollment.expires_at {
        return Err(Status::permission_denied(
            "this install ID has expired; ask an operator for a new one",
        ));
    }
    if !enrollment.enabled {
        return Err(Status::permission_denied(
            "this device is disabled by an operator",
        ));
    }
    if let Some(bound) = &enrollment.bound_key_sha256
        && *bound != csr.public_key_sha256
    {
        return Err(Status::permission_denied(
            "this install ID is already bound to another device key; ask an operator for a new one",
        ));
    }
    let issued = state
        .ca
        .sign_device_csr(
            &csr,
            &enrollment.workspace,
            &enrollment.device_id,
            state.device_cert_lifetime,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| {
            tracing::error!("signing failed: {e}");
            Status::internal("could not sign the certificate")
        })?;
    let (api_key, device_api_key) =
        crate::admin::mint_device_key(&enrollment.workspace, &enrollment.device_id, now);
    let commit = EnrollmentCommit {
        device_id: enrollment.device_id.clone(),
        key_sha256: csr.public_key_sha256.clone(),
        cert: NewCert {
            serial: issued.serial.clone(),
            not_before: issued.not_before.unix_timestamp() * 1000,
            not_after: issued.not_after.unix_timestamp() * 1000,
        },
        device_api_key,
        now,
        token: None,
    };
    match state.enrollment_writer.write(commit).await {
        EnrollOutcome::Stored => {}
        EnrollOutcome::Conflict => return Err(Status::permission_denied(SPENT)),
        EnrollOutcome::StoreFailed => return Err(store_unavailable()),
    }
    tracing::info!(
        device = %enrollment.device_id,
        workspace = %enrollment.workspace,
        serial = %issued.serial,
        "device enrolled"
    );
    Ok(response(
        state,
        enrollment.device_id,
        enrollment.workspace,
        issued.der,
        api_key,
    ))
}

/// The answer to a stored enrollment.
pub(super) fn response(
    state: &AppState,
    device_id: String,
    workspace: String,
    cert_der: Vec<u8>,
    device_api_key: String,
) -> EnrollResponse {
    EnrollResponse {
        device_id,
        workspace,
        certificate_chain_der: vec![cert_der, state.ca.cert_der().to_vec()],
        ca_bundle_der: vec![state.ca.cert_der().to_vec()],
        device_api_key,
        settings: Some(Settings {
            telemetry_interval_secs: TELEMETRY_INTERVAL_SECS,
            heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS,
        }),
    }
}

/// `CheckEnrollment`: the state of the presented certificate (if any) and of
/// the install ID asked about (if any), read-only.
pub async fn check_enrollment(
    state: &AppState,
    request: Request<CheckEnrollmentRequest>,
) -> Result<CheckEnrollmentResponse, Status> {
    let now = now_ms();
    let mut resp = CheckEnrollmentResponse::default();
    if let Some(leaf) = request.peer_certs().and_then(|c| c.first().cloned()) {
        resp.certificate = match crate::pki::parse_device_cert(&leaf) {
            Err(_) => "unknown".into(),
            Ok(info) => {
                let record = state
                    .store
                    .get_cert(&info.serial)
                    .await
                    .map_err(super::store_status)?;
                resp.device_id = info.device_id.clone();
                match record {
                    None => "unknown".into(),
                    Some(r) if r.device_id != info.device_id => "unknown".into(),
                    Some(r) => match super::auth::refusal(
                        &r,
                        info.not_after_unix,
                        now,
                        super::auth::Expired::Refuse,
                    ) {
                        Some(crate::live::Cut::Deleted) => "deleted".into(),
                        Some(crate::live::Cut::Revoked) => "revoked".into(),
                        Some(crate::live::Cut::Expired) => "expired".into(),
                        Some(crate::live::Cut::Disabled) => "disabled".into(),
                        None if !r.device_enabled => "disabled".into(),
                        None => "valid".into(),
                    },
                }
            }
        };
    }
    let install_id = request.get_ref().install_id.trim();
    if !install_id.is_empty() {
        let found = if install_id.starts_with("inst_") && install_id.len() <= 128 {
            state
                .store
                .find_enrollment(&ids::hash_secret(install_id))
                .await
                .map_err(super::store_status)?
        } else {
            None
        };
        resp.install_id = match found {
            None => "unknown".into(),
            Some(e) => {
                if resp.device_id.is_empty() {
                    resp.device_id = e.device_id.clone();
                }
                if e.spent {
                    "spent".into()
                } else if now >= e.expires_at {
                    "expired".into()
                } else if !e.enabled {
                    "disabled".into()
                } else {
                    "valid".into()
                }
            }
        };
    }
    Ok(resp)
}
