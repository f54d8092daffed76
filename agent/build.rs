//! Records the build time: the agent never trusts a wall clock earlier than
//! the moment its binary was built (boxes without an RTC boot in 1970).

fn main() {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    println!("cargo:rustc-env=OUTPOST_BUILD_UNIX_MS={ms}");
    println!("cargo:rerun-if-changed=build.rs");
}
