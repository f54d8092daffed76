//! `Enroll` with an enrollment token: the control plane creates the device
//! (the token's workspace, labels and type; the given name or the box's
//! hostname), then signs the CSR as for an install ID. One use of the token
//! is spent in the transaction that creates the device (`Store` conditional
//! update), so the budget holds across concurrent enrollments and replicas.
//! A retry with the same key (lost response) finds the device its first
//! attempt created (the token's binding of that key) and spends nothing.

use outpost_proto::reason;
use outpost_proto::v1::{EnrollRequest, EnrollResponse};
use tonic::Status;

use crate::AppState;
use crate::ids;
use crate::pki::VerifiedCsr;
use crate::store::{
    EnrollmentCommit, EnrollmentToken, NewCert, NewDevice, TokenEnrollment, TokenState, now_ms,
};

use super::commit::EnrollOutcome;
use super::{store_status, store_unavailable};

const SPENT: &str = "this box already enrolled with this token and connected; to enroll it again \
     remove its state directory and use a token with uses left";

/// A refusal the agent can tell apart: the message and the `outpost-reason`.
fn refused(state: TokenState) -> Status {
    let (message, why) = match state {
        TokenState::Exhausted => (
            "enrollment token exhausted: every use of this token has been spent; ask an operator for another",
            reason::TOKEN_EXHAUSTED,
        ),
        TokenState::Expired => (
            "enrollment token expired; ask an operator for another",
            reason::TOKEN_EXPIRED,
        ),
        TokenState::Revoked => (
            "enrollment token revoked by an operator",
            reason::TOKEN_REVOKED,
        ),
        // Not a refusal; kept total for the match.
        TokenState::Active => ("enrollment token unknown", reason::TOKEN_UNKNOWN),
    };
    with_reason(Status::permission_denied(message), why)
}

fn unknown() -> Status {
    with_reason(
        Status::permission_denied(
            "enrollment token unknown: no such token (check for typos; tokens are shown once)",
        ),
        reason::TOKEN_UNKNOWN,
    )
}

fn with_reason(mut status: Status, why: &'static str) -> Status {
    status.metadata_mut().insert(
        reason::METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(why),
    );
    status
}

/// The device's name: the one asked for, else the box's hostname, else a
/// name from the device id.
fn device_name(req: &EnrollRequest, device_id: &str) -> Result<String, Status> {
    let asked = req.device_name.trim();
    if !asked.is_empty() {
        if asked.chars().count() > 128 {
            return Err(Status::invalid_argument(
                "device_name must be at most 128 characters",
            ));
        }
        if asked.chars().any(char::is_control) {
            return Err(Status::invalid_argument(
                "device_name must not contain control characters",
            ));
        }
        return Ok(asked.to_string());
    }
    let host = req
        .facts
        .as_ref()
        .map(|f| f.hostname.trim())
        .unwrap_or_default();
    // The box's own hostname is data: a control character in it does not
    // become part of a name that reaches operators' terminals.
    if !host.is_empty() && host.chars().count() <= 128 && !host.chars().any(char::is_control) {
        return Ok(host.to_string());
    }
    Ok(format!("device-{device_id}"))
}

pub async fn enroll(state: &AppState, req: EnrollRequest) -> Result<EnrollResponse, Status> {
    let token = req.enroll_token.trim();
    if !token.starts_with(ids::ENROLL_TOKEN_PREFIX) || token.len() > 128 {
        return Err(unknown());
    }
    let csr =
        VerifiedCsr::from_der(&req.csr_der).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let token_hash = ids::hash_secret(token);
    // A first attempt can lose a race with a concurrent attempt of the same
    // key (the store refuses the second binding): then the binding exists
    // and the second pass is a retry.
    for _ in 0..2 {
        let t = state
            .store
            .find_enrollment_token(&token_hash)
            .await
            .map_err(store_status)?
            .ok_or_else(unknown)?;
        match attempt(state, &req, &t, &csr).await? {
            Attempt::Done(r) => return Ok(r),
            Attempt::Raced => continue,
        }
    }
    Err(store_unavailable())
}

enum Attempt {
    Done(EnrollResponse),
    /// The store refused the use because this key was bound meanwhile.
    Raced,
}

async fn attempt(
    state: &AppState,
    req: &EnrollRequest,
    t: &EnrollmentToken,
    csr: &VerifiedCsr,
) -> Result<Attempt, Status> {
    let now = now_ms();
    if t.state(now) == TokenState::Revoked {
        return Err(refused(TokenState::Revoked));
    }
    let bound = state
        .store
        .token_binding(&t.id, &csr.public_key_sha256)
        .await
        .map_err(store_status)?;
    let (device_id, create) = match bound {
        // A retry: the same device, no second use (even if that use was
        // the last one, or the token expired since).
        Some(device_id) => {
            match state
                .store
                .get_device(&t.workspace, &device_id)
                .await
                .map_err(store_status)?
            {
                None => {
                    return Err(Status::permission_denied(
                        "the device this box enrolled as has been deleted (decommissioned)",
                    ));
                }
                Some(d) if !d.enabled => {
                    return Err(Status::permission_denied(
                        "the device this box enrolled as is disabled",
                    ));
                }
                Some(_) => {}
            }
            (device_id, None)
        }
        None => {
            let st = t.state(now);
            if st != TokenState::Active {
                return Err(refused(st));
            }
            let id = ids::new_device_id();
            let device = NewDevice {
                id: id.clone(),
                workspace: t.workspace.clone(),
                name: device_name(req, &id)?,
                description: format!("enrolled with token {}", t.id),
                device_type: t.device_type.clone(),
                workflow_id: None,
                offline_mode: false,
                config: crate::device_config::default_config(),
                install_id_hash: String::new(),
                install_id_expires_at: 0,
                created_at: now,
                labels: t.labels.clone(),
            };
            (id, Some(device))
        }
    };
    let retry = create.is_none();
    let issued = state
        .ca
        .sign_device_csr(
            csr,
            &t.workspace,
            &device_id,
            state.device_cert_lifetime,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| {
            tracing::error!("signing failed: {e}");
            Status::internal("could not sign the certificate")
        })?;
    let (api_key, device_api_key) = crate::admin::mint_device_key(&t.workspace, &device_id, now);
    let commit = EnrollmentCommit {
        device_id: device_id.clone(),
        key_sha256: csr.public_key_sha256.clone(),
        cert: NewCert {
            serial: issued.serial.clone(),
            not_before: issued.not_before.unix_timestamp() * 1000,
            not_after: issued.not_after.unix_timestamp() * 1000,
        },
        device_api_key,
        now,
        token: Some(TokenEnrollment {
            token_id: t.id.clone(),
            create,
        }),
    };
    match state.enrollment_writer.write(commit).await {
        EnrollOutcome::Stored => {}
        EnrollOutcome::Conflict if retry => return Err(Status::permission_denied(SPENT)),
        EnrollOutcome::Conflict => {
            // Name why: re-read the token (a use raced us to the last one,
            // or it was revoked or expired meanwhile), else a binding of
            // this key appeared.
            let now = now_ms();
            let again = state
                .store
                .find_enrollment_token(&ids::hash_secret(req.enroll_token.trim()))
                .await
                .map_err(store_status)?
                .ok_or_else(unknown)?;
            let bound = state
                .store
                .token_binding(&t.id, &csr.public_key_sha256)
                .await
                .map_err(store_status)?;
            if bound.is_some() {
                return Ok(Attempt::Raced);
            }
            return Err(match again.state(now) {
                TokenState::Active => {
                    Status::unavailable("the enrollment could not be stored; retry")
                }
                st => refused(st),
            });
        }
        EnrollOutcome::StoreFailed => return Err(store_unavailable()),
    }
    tracing::info!(
        device = %device_id,
        workspace = %t.workspace,
        token = %t.id,
        serial = %issued.serial,
        retry,
        "device enrolled with an enrollment token"
    );
    Ok(Attempt::Done(super::enroll::response(
        state,
        device_id,
        t.workspace.clone(),
        issued.der,
        api_key,
    )))
}
