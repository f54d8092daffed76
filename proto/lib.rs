//! The Outpost device wire contract (`outpost.device.v1`), generated at build
//! time from `proto/outpost/device/v1/device.proto`.
#![forbid(unsafe_code)]

/// `outpost.device.v1`: messages and the `DeviceService` client and server.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("outpost.device.v1");
}

/// The protobuf codec of every device RPC: prost with small buffers.
///
/// tonic allocates an encode and a decode buffer per stream up front (8 KiB
/// each by default). A device holds a session, a telemetry and a log stream
/// whose messages are a few hundred bytes (acks: a few bytes), so at 10,000
/// connected devices the defaults alone pin ~480 MiB on the control plane.
/// Buffers start at 512 bytes here and grow as a message needs.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::ProstCodec;

    /// Initial buffer size per stream and direction.
    pub const BUFFER_BYTES: usize = 512;
    /// Encoded bytes after which a stream yields to the transport.
    pub const YIELD_BYTES: usize = 32 * 1024;

    #[derive(Debug, Clone, Copy, Default)]
    pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Codec for SmallBufferCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
        type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_BYTES, YIELD_BYTES))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_BYTES, YIELD_BYTES))
        }
    }
}

/// Upper bound for any decoded device message. Telemetry batches are small
/// (a sample is well under 1 KiB); anything bigger is a broken or hostile peer.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Largest number of samples accepted in one telemetry batch.
pub const MAX_SAMPLES_PER_BATCH: usize = 512;

/// GPUs per sample at most (the agent reports the first this many).
pub const MAX_GPUS: usize = 16;

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
    /// Enrollment with a token refused: no such token.
    pub const TOKEN_UNKNOWN: &str = "token-unknown";
    /// Enrollment with a token refused: every use is spent.
    pub const TOKEN_EXHAUSTED: &str = "token-exhausted";
    /// Enrollment with a token refused: the token expired.
    pub const TOKEN_EXPIRED: &str = "token-expired";
    /// Enrollment with a token refused: an operator revoked it.
    pub const TOKEN_REVOKED: &str = "token-revoked";
    /// The control plane is shedding load (artifact downloads): retry
    /// later with backoff; nothing failed.
    pub const BUSY: &str = "busy";
}
