//! CSRs as enrollment and rotation receive them; those that verify are
//! signed by a CA made once per run.
#![no_main]
use std::sync::LazyLock;

static CA: LazyLock<(tempfile::TempDir, outpost_control_plane::pki::Ca)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = outpost_control_plane::pki::Ca::load_or_create(&dir.path().join("pki"))
        .expect("a CA");
    (dir, ca)
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_control_plane::fuzzing::csr(data, &CA.1));
