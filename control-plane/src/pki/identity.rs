//! Reading a device identity back out of a (TLS-verified) client certificate.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// What a device certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertInfo {
    pub workspace: String,
    pub device_id: String,
    /// Lowercase hex of the DER serial bytes.
    pub serial: String,
    pub not_after_unix: i64,
}

const URI_PREFIX: &str = "urn:outpost:";

pub(crate) fn device_uri(workspace: &str, device_id: &str) -> String {
    format!("{URI_PREFIX}{workspace}:device:{device_id}")
}

fn parse_device_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let (workspace, device_id) = rest.split_once(":device:")?;
    if workspace.is_empty() || device_id.is_empty() || device_id.contains(':') {
        return None;
    }
    Some((workspace.to_string(), device_id.to_string()))
}

/// Extracts workspace, device id and serial from a DER certificate. The chain
/// and validity must already have been verified (by the TLS layer).
pub fn parse_device_cert(der: &[u8]) -> Result<DeviceCertInfo, String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("unparseable client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or("client certificate has no subjectAltName")?;
    let (workspace, device_id) = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) => parse_device_uri(u),
            _ => None,
        })
        .ok_or("client certificate carries no urn:outpost device identity")?;
    Ok(DeviceCertInfo {
        workspace,
        device_id,
        serial: hex::encode(cert.raw_serial()),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_uri_round_trips_and_rejects_lookalikes() {
        let uri = device_uri("acme", "abc");
        assert_eq!(parse_device_uri(&uri), Some(("acme".into(), "abc".into())));
        assert_eq!(parse_device_uri("urn:other:acme:device:abc"), None);
        assert_eq!(parse_device_uri("urn:outpost:acme:device:"), None);
        assert_eq!(parse_device_uri("urn:outpost::device:abc"), None);
        assert_eq!(parse_device_uri("urn:outpost:acme:device:a:b"), None);
    }
}
