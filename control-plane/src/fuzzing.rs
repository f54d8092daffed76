//! Entry points for the fuzz targets (`fuzz/`, built by cargo-fuzz with
//! `--cfg fuzzing`; never in a normal build): each takes raw bytes as an
//! attacker would send them and runs the code that decodes them. A panic,
//! hang or runaway allocation here is a bug; an `Err` is the right answer.

use outpost_proto::v1 as pb;
use prost::Message;

use crate::grpc::convert;
use crate::rest::{pagination, params};

/// `now` for the timestamp window: fixed, so runs repeat.
const NOW_MS: i64 = 1_780_000_000_000;

/// A device's stream message as it arrives: telemetry, logs or a hello.
pub fn wire(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Ok(b) = pb::TelemetryBatch::decode(body) {
                let _ = convert::batch(b, NOW_MS);
            }
        }
        1 => {
            if let Ok(b) = pb::LogBatch::decode(body) {
                let _ = convert::log_batch(b, NOW_MS);
            }
        }
        _ => {
            if let Ok(h) = pb::Hello::decode(body) {
                let _ = convert::facts(h.facts);
            }
        }
    }
}

/// A query string as the REST API parses it: the parameters every list
/// route reads, and an opaque cursor of each key shape the routes use.
pub fn rest_query(data: &[u8]) {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = format!("/x?{q}").parse::<axum::http::Uri>() else {
        return;
    };
    let Some(p) = params::Params::from_uri(&uri) else {
        return;
    };
    let _ = params::parse_window(&p);
    let _ = params::parse_direction(p.get("direction"));
    let _ = pagination::parse_limit(p.get("limit"), 50, 500);
    let _ = pagination::decode_cursor::<(i64, String)>(p.get("cursor"));
    let _ = pagination::decode_cursor::<u64>(p.get("cursor"));
    let _ = pagination::decode_cursor::<(String, String)>(p.get("cursor"));
}

/// A CSR as enrollment and rotation receive it; one that verifies is
/// signed, as enrollment would.
pub fn csr(data: &[u8], ca: &crate::pki::Ca) {
    if let Ok(csr) = crate::pki::VerifiedCsr::from_der(data) {
        let now = time::OffsetDateTime::from_unix_timestamp(NOW_MS / 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let _ = ca.sign_device_csr(
            &csr,
            "acme",
            "k3device",
            std::time::Duration::from_secs(3600),
            now,
        );
    }
}
