//! The offline provisioning payload a box reads from a QR code: anything
//! that parses must write back to the same payload.
#![no_main]
use outpost_common::offline::OfflinePayload;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = OfflinePayload::parse(text) {
        assert_eq!(OfflinePayload::parse(&p.to_json()), Ok(p));
    }
});
