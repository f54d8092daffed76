//! Compiles the device wire contract in `proto/` with protox (pure Rust), so no
//! `protoc` is needed on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["outpost/device/v1/device.proto"];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Small per-stream buffers: see `codec::SmallBufferCodec`.
        .codec_path("crate::codec::SmallBufferCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
