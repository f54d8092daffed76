//! Device stream messages (telemetry, logs, hello) as they arrive on the
//! wire, through prost and the control plane's validation (`convert.rs`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_control_plane::fuzzing::wire(data));
