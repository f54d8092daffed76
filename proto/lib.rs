//! The Outpost device wire contract (`outpost.device.v1`), generated at build
//! time from `proto/outpost/device/v1/device.proto`.
#![forbid(unsafe_code)]

/// `outpost.device.v1`: messages and the `DeviceService` client and server.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("outpost.device.v1");
}

/// Upper bound for any decoded device message. Telemetry batches are small
/// (a sample is well under 1 KiB); anything bigger is a broken or hostile peer.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Largest number of samples accepted in one telemetry batch.
pub const MAX_SAMPLES_PER_BATCH: usize = 512;

/// Temperatures per sample at most.
pub const MAX_TEMPERATURES_PER_SAMPLE: usize = 64;

/// Log lines per batch at most.
pub const MAX_LOGS_PER_BATCH: usize = 1024;

/// Longest log message the control plane stores, in bytes (the agent cuts
/// longer lines to this with a marker).
pub const MAX_LOG_MESSAGE_BYTES: usize = 16 * 1024;

/// Why the control plane refused or cut a device's call, carried in the
/// `outpost-reason` response metadata so the agent can act on it (a gRPC
/// code alone cannot tell "disabled, keep trying" from "deleted, stop").
pub mod reason {
    pub const METADATA_KEY: &str = "outpost-reason";
    /// The device was deleted: wipe credentials and stop for good.
    pub const DECOMMISSIONED: &str = "decommissioned";
    /// Disabled by an operator: may be enabled again, keep retrying.
    pub const DISABLED: &str = "disabled";
    /// This certificate was revoked (rotation, forced reset).
    pub const REVOKED: &str = "revoked";
    /// The certificate expired: rotate (within the grace window) or re-enroll.
    pub const EXPIRED: &str = "expired";
}
