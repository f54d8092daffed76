//! The offline provisioning payload (`offlineProvisioningQrPayload`,
//! docs/provisioning.md): what the control plane prints as a QR code for an
//! offline AI1 box, and what the box reads back when it is scanned
//! (`outpost-agent enroll --offline-payload`). One definition for both
//! ends; the reader trusts nothing in it (a QR code is whatever was
//! printed, or whatever someone pasted).

use serde::{Deserialize, Serialize};

/// The payload format this code writes and reads.
pub const VERSION: u32 = 1;
/// Longer text is refused before it is parsed (a QR code holds < 3 KB).
pub const MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OfflinePayload {
    pub v: u32,
    /// The device gRPC endpoint, `https://host:port`.
    pub server: String,
    pub workspace: String,
    pub device_id: String,
    /// The one-time install ID (a secret until it is spent).
    pub install_id: String,
    /// `sha256:<64 hex>` of the CA certificate, pinned at enrollment.
    pub ca_fingerprint: String,
}

impl OfflinePayload {
    /// The compact JSON the control plane hands out.
    pub fn to_json(&self) -> String {
        // A struct of strings and a number always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a scanned payload, refusing anything not exactly version 1 with
    /// sane fields. The message names what is wrong and never repeats the
    /// install ID.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_LEN {
            return Err(format!(
                "the offline payload is {} bytes; at most {MAX_LEN} are expected",
                text.len()
            ));
        }
        let text = text.trim();
        // The version first, so a newer format is named as such rather than
        // as a field this reader does not know.
        let v = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("the offline payload is not JSON: {e}"))?
            .get("v")
            .and_then(serde_json::Value::as_u64);
        match v {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "the offline payload is version {v}; this agent reads version {VERSION} (upgrade the agent)"
                ));
            }
            None => return Err("the offline payload has no version (\"v\")".into()),
        }
        let p: Self = serde_json::from_str(text)
            .map_err(|e| format!("the offline payload is malformed: {e}"))?;
        check_server(&p.server)?;
        check_token("workspace", &p.workspace, 64)?;
        check_token("deviceId", &p.device_id, 64)?;
        if p.install_id.is_empty()
            || p.install_id.len() > 128
            || !p.install_id.bytes().all(token_byte)
        {
            return Err("the offline payload's installId is malformed".into());
        }
        let hex = p.ca_fingerprint.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the offline payload's caFingerprint is not sha256:<64 hex digits>".into());
        }
        Ok(p)
    }
}

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn check_token(field: &str, v: &str, max: usize) -> Result<(), String> {
    if v.is_empty() || v.len() > max || !v.bytes().all(token_byte) {
        return Err(format!(
            "the offline payload's {field} {:?} is malformed (1 to {max} of a-z, A-Z, 0-9, - and _)",
            v.escape_debug().to_string()
        ));
    }
    Ok(())
}

/// `https://host[:port]`, printable ASCII, no path beyond `/`.
fn check_server(s: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "the offline payload's server {:?} is not an https://host:port URL",
            s.escape_debug().to_string()
        ))
    };
    let Some(rest) = s.strip_prefix("https://") else {
        return bad();
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty()
        || s.len() > 512
        || host.contains(['/', '@', '?', '#'])
        || !host.bytes().all(|b| b.is_ascii_graphic())
    {
        return bad();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OfflinePayload {
        OfflinePayload {
            v: VERSION,
            server: "https://cp.example.com:8443".into(),
            workspace: "acme".into(),
            device_id: "k3abc".into(),
            install_id: "inst_0123456789abcdef".into(),
            ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
        }
    }

    #[test]
    fn round_trips_the_documented_shape() {
        let json = sample().to_json();
        assert!(json.starts_with(r#"{"v":1,"server":"https://cp.example.com:8443","workspace":"acme","deviceId":"k3abc","installId":"#), "{json}");
        assert_eq!(OfflinePayload::parse(&json).unwrap(), sample());
        assert_eq!(
            OfflinePayload::parse(&format!("  {json}\n")).unwrap(),
            sample()
        );
    }

    #[test]
    fn refuses_what_it_cannot_trust_naming_why() {
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::to_value(sample()).unwrap();
            edit(&mut v);
            OfflinePayload::parse(&v.to_string()).unwrap_err()
        };
        let cases: Vec<(String, &str)> = vec![
            (with(&|v| v["v"] = 2.into()), "version 2"),
            (
                with(&|v| v.as_object_mut().unwrap().retain(|k, _| k != "v")),
                "no version",
            ),
            (with(&|v| v["server"] = "http://cp:80".into()), "server"),
            (with(&|v| v["server"] = "https://user@cp".into()), "server"),
            (
                with(&|v| v["server"] = "https://cp/\u{1b}[2J".into()),
                "server",
            ),
            (with(&|v| v["workspace"] = "../etc".into()), "workspace"),
            (with(&|v| v["installId"] = "".into()), "installId"),
            (
                with(&|v| v["caFingerprint"] = "sha256:zz".into()),
                "caFingerprint",
            ),
            (with(&|v| v["extra"] = 1.into()), "malformed"),
            (OfflinePayload::parse("not json").unwrap_err(), "not JSON"),
            (
                OfflinePayload::parse(&" ".repeat(5000)).unwrap_err(),
                "at most",
            ),
        ];
        for (err, want) in cases {
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(
                !err.contains("inst_0123"),
                "the install ID stays out: {err}"
            );
        }
    }
}
