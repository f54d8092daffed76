//! Enrollment: the box's key is generated (or reused, after an interrupted
//! attempt) on the box; only a CSR leaves it. The install ID is spent once the
//! agent has connected with the certificate it gets back.

use outpost_proto::v1::{
    CheckEnrollmentRequest, CheckEnrollmentResponse, DeviceFacts, EnrollRequest,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::link::{self, LinkError, ServerUrl, Trust};
use crate::proxy::ProxySettings;
use crate::state::{Identity, StateDir, StateError};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "this box is already enrolled as device {device_id}; remove {state_dir} to enroll again"
    )]
    AlreadyEnrolled {
        device_id: String,
        state_dir: String,
    },
    /// The control plane said no: retrying with the same install ID is futile.
    #[error("enrollment refused: {0}")]
    Refused(String),
    /// The control plane refused the enrollment token, for this reason.
    #[error("enrollment refused: {1}")]
    TokenRefused(TokenRefusal, String),
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("unexpected enrollment response: {0}")]
    BadResponse(String),
    /// Re-enrollment of a box whose identity the control plane still takes.
    #[error(
        "this box is enrolled as device {device_id} and its certificate is still valid; give --force to replace its identity anyway (the spool and sequence numbers are kept)"
    )]
    StillValid { device_id: String },
}

impl EnrollError {
    /// Whether another attempt could succeed (network trouble, server busy).
    pub fn is_transient(&self) -> bool {
        match self {
            EnrollError::Link(LinkError::Rpc(s)) => matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ),
            EnrollError::Link(LinkError::Connect { .. }) => true,
            _ => false,
        }
    }
}

/// Why an enrollment token was refused (the control plane's
/// `outpost-reason`); each has its own exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Exhausted,
    Expired,
    Revoked,
}

impl TokenRefusal {
    fn from_reason(reason: &str) -> Option<Self> {
        use outpost_proto::reason;
        match reason {
            reason::TOKEN_UNKNOWN => Some(Self::Unknown),
            reason::TOKEN_EXHAUSTED => Some(Self::Exhausted),
            reason::TOKEN_EXPIRED => Some(Self::Expired),
            reason::TOKEN_REVOKED => Some(Self::Revoked),
            _ => None,
        }
    }

    /// The agent's exit status for this refusal (README).
    pub fn exit_status(self) -> u8 {
        match self {
            Self::Unknown => crate::EXIT_TOKEN_UNKNOWN,
            Self::Exhausted => crate::EXIT_TOKEN_EXHAUSTED,
            Self::Expired => crate::EXIT_TOKEN_EXPIRED,
            Self::Revoked => crate::EXIT_TOKEN_REVOKED,
        }
    }
}

/// What a box enrolls with: its own install ID, or an enrollment token
/// shared by many boxes (the control plane creates the device).
#[derive(Debug, Clone, Copy)]
pub enum Grant<'a> {
    InstallId(&'a str),
    Token {
        token: &'a str,
        device_name: Option<&'a str>,
    },
}

pub async fn enroll(
    state: &StateDir,
    server: &ServerUrl,
    proxy: &ProxySettings,
    grant: Grant<'_>,
    trust: &Trust,
    facts: DeviceFacts,
) -> Result<Identity, EnrollError> {
    if let Some(id) = state.identity()? {
        return Err(EnrollError::AlreadyEnrolled {
            device_id: id.device_id,
            state_dir: state.root().display().to_string(),
        });
    }
    let key = state.load_or_create_key()?;
    let issued = request_certificate(server, proxy, grant, trust, facts, &key, "").await?;
    let identity = Identity {
        device_id: issued.device_id,
        workspace: issued.workspace,
        server: server.to_string(),
        enrolled_at_unix_ms: crate::clock::system_ms(),
    };
    state.save_enrollment(
        &identity,
        &issued.chain_pem,
        &issued.ca_pem,
        &issued.api_key,
    )?;
    Ok(identity)
}

/// What `Enroll` answered, checked: the certificate is for `key` and the CA
/// bundle holds the CA `trust` names.
struct Issued {
    device_id: String,
    workspace: String,
    chain_pem: String,
    ca_pem: String,
    api_key: String,
}

async fn request_certificate(
    server: &ServerUrl,
    proxy: &ProxySettings,
    grant: Grant<'_>,
    trust: &Trust,
    facts: DeviceFacts,
    key: &rcgen::KeyPair,
    current_device_id: &str,
) -> Result<Issued, EnrollError> {
    let mut params = rcgen::CertificateParams::default();
    // The control plane ignores the CSR's subject; this only helps humans
    // reading a captured CSR.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, facts.hostname.clone());
    let csr = params
        .serialize_request(key)
        .map_err(|e| EnrollError::BadResponse(format!("cannot build CSR: {e}")))?;

    let tls = link::client_config(trust, None)?;
    let channel = link::connect_via(server, proxy, tls).await?;
    let mut request = EnrollRequest {
        csr_der: csr.der().to_vec(),
        facts: Some(facts),
        current_device_id: current_device_id.to_string(),
        ..Default::default()
    };
    match grant {
        Grant::InstallId(id) => request.install_id = id.trim().to_string(),
        Grant::Token { token, device_name } => {
            request.enroll_token = token.trim().to_string();
            request.device_name = device_name.unwrap_or_default().trim().to_string();
        }
    }
    let response = link::client(channel)
        .enroll(request)
        .await
        .map_err(|status| {
            let why = status
                .metadata()
                .get(outpost_proto::reason::METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(TokenRefusal::from_reason);
            match (status.code(), why) {
                (tonic::Code::PermissionDenied, Some(why)) => {
                    EnrollError::TokenRefused(why, status.message().to_string())
                }
                (
                    tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
                    | tonic::Code::NotFound,
                    _,
                ) => EnrollError::Refused(status.message().to_string()),
                _ => EnrollError::Link(LinkError::Rpc(status)),
            }
        })?
        .into_inner();
    crate::failpoint::hit(crate::failpoint::ENROLL_RESPONSE_RECEIVED);

    if response.certificate_chain_der.is_empty() || response.ca_bundle_der.is_empty() {
        return Err(EnrollError::BadResponse(
            "no certificate or CA bundle".into(),
        ));
    }
    if !response.ca_bundle_der.iter().any(|ca| trust.accepts_ca(ca)) {
        return Err(EnrollError::BadResponse(
            "the control plane's CA bundle does not contain the CA this agent was told to \
             trust; when the control plane signs device certificates with an intermediate CA, \
             give the agent that intermediate (its certificate with --ca-file, or its \
             fingerprint), not the root above it (certs/README.md)"
                .into(),
        ));
    }
    // Check that the certificate is really for our key before storing it.
    let leaf = CertificateDer::from(response.certificate_chain_der[0].clone());
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| EnrollError::BadResponse(format!("unparseable certificate: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(EnrollError::BadResponse(
            "the certificate is not for this device's key".into(),
        ));
    }
    Ok(Issued {
        device_id: response.device_id,
        workspace: response.workspace,
        chain_pem: pem_chain(&response.certificate_chain_der),
        ca_pem: pem_chain(&response.ca_bundle_der),
        api_key: response.device_api_key,
    })
}

/// Asks the control plane about this box's certificate (when `state` has
/// one) and an install ID (when not empty). Reads only.
pub async fn check_enrollment(
    state: &StateDir,
    server: &ServerUrl,
    proxy: &ProxySettings,
    trust: &Trust,
    install_id: &str,
) -> Result<CheckEnrollmentResponse, EnrollError> {
    let identity = match state.identity()? {
        Some(_) => Some(load_client_identity(state)?),
        None => None,
    };
    let clock = crate::clock::Clock::new(state.clock_floor());
    let tls = link::client_config_at(trust, identity, clock)?;
    let channel = link::connect_via(server, proxy, tls).await?;
    Ok(link::client(channel)
        .check_enrollment(CheckEnrollmentRequest {
            install_id: install_id.trim().to_string(),
        })
        .await
        .map_err(|s| EnrollError::Link(LinkError::Rpc(s)))?
        .into_inner())
}

/// Enrolls an enrolled box again with a new install ID, in place: same
/// device (the control plane refuses another device's install ID), spool and
/// sequence numbers kept; a new key. Without `force` only when the control
/// plane no longer takes the current certificate (revoked by a forced
/// reset, expired past the grace window, unknown). `server` and `trust`
/// default to the ones the box enrolled with.
pub async fn reenroll(
    state: &StateDir,
    server: Option<&ServerUrl>,
    proxy: &ProxySettings,
    install_id: &str,
    trust: Option<&Trust>,
    facts: DeviceFacts,
    force: bool,
) -> Result<Identity, EnrollError> {
    let Some(current) = state.identity()? else {
        return Err(EnrollError::BadResponse("not enrolled".into()));
    };
    let server = match server {
        Some(s) => s.clone(),
        None => ServerUrl::parse(&current.server)?,
    };
    let trust = match trust {
        Some(t) => t.clone(),
        None => Trust::from_ca_file(&state.ca_path())?,
    };
    if !force {
        match check_enrollment(state, &server, proxy, &trust, "").await {
            Ok(r) if r.certificate == "valid" => {
                return Err(EnrollError::StillValid {
                    device_id: current.device_id,
                });
            }
            Ok(_) => {}
            // A certificate expired past the grace window fails the handshake.
            Err(EnrollError::Link(e)) if link::is_expired_beyond_grace(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let key = state.create_next_key()?;
    let issued = request_certificate(
        &server,
        proxy,
        Grant::InstallId(install_id),
        &trust,
        facts,
        &key,
        &current.device_id,
    )
    .await?;
    if issued.device_id != current.device_id {
        return Err(EnrollError::BadResponse(format!(
            "the control plane enrolled device {} instead of this box's {}",
            issued.device_id, current.device_id
        )));
    }
    // The rotation's commit: key and certificate swap together (a crash
    // in between is completed at the next start), then the CA bundle, and
    // the identity last.
    state.commit_rotation(&issued.chain_pem, &issued.api_key)?;
    let identity = Identity {
        device_id: issued.device_id,
        workspace: issued.workspace,
        server: server.to_string(),
        enrolled_at_unix_ms: crate::clock::system_ms(),
    };
    state.save_enrollment(
        &identity,
        &issued.chain_pem,
        &issued.ca_pem,
        &issued.api_key,
    )?;
    Ok(identity)
}

pub fn pem_chain(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| {
            pem::encode_config(
                &pem::Pem::new("CERTIFICATE", d.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .collect()
}

/// Loads the device's chain and key for mTLS.
pub fn load_client_identity(
    state: &StateDir,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    EnrollError,
> {
    let cert_path = state.cert_path();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            EnrollError::State(StateError::Invalid {
                path: cert_path.clone(),
                message: format!("unreadable certificate: {e}"),
            })
        })?;
    let key_path = state.key_path();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        EnrollError::State(StateError::Invalid {
            path: key_path.clone(),
            message: format!("unreadable key: {e}"),
        })
    })?;
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn pem_chain_round_trips_through_the_rustls_parser() {
        let ders = vec![
            vec![1u8, 2, 3, 4, 5],
            (0..300).map(|i| (i % 256) as u8).collect(),
        ];
        let pem = pem_chain(&ders);
        let back: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(back, ders);
    }
}
