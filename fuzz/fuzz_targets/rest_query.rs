//! REST query strings: parameters, time windows, limits and cursors.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_control_plane::fuzzing::rest_query(data));
