//! outpost-agent: enrolls an edge box with its install ID, keeps its key on
//! the box and streams telemetry to the control plane over mTLS.
//!
//! - [`enroll`]: key generation, CSR, enrollment
//! - [`core`]: every decision of a running agent (timers, link, rotation,
//!   drain, backoff), free of I/O; [`driver`]: the one loop around it;
//!   [`daemon`]: the agent's host for it; [`session`]: opening a session
//! - [`uplink`]: delivery state (seq, backlog, acks) over the disk spool
//! - [`collect`]: sysinfo readings
//! - [`link`]: server URL, TLS trust, gRPC channel; [`proxy`]: the HTTP
//!   CONNECT proxy it may go through
//! - [`state`]: the state directory
#![forbid(unsafe_code)]

pub mod artifact;
pub mod backoff;
pub mod check;
pub mod clock;
pub mod collect;
pub mod config;
pub mod core;
pub mod daemon;
pub mod driver;
pub mod enroll;
pub mod failpoint;
pub mod link;
pub mod logship;
pub mod logsrc;
pub mod notify;
pub mod proxy;
pub mod rotate;
pub mod session;
pub mod spool;
pub mod state;
pub mod status;
pub mod uplink;

/// Exit status when the control plane refused enrollment: the install ID is
/// wrong, spent or expired, and retrying cannot help.
pub const EXIT_ENROLL_REFUSED: u8 = 3;
/// Exit status after the device was deleted: credentials are wiped and
/// restarting cannot help (systemd's `RestartPreventExitStatus=`).
pub const EXIT_DECOMMISSIONED: u8 = 4;
/// Exit status when the certificate expired beyond the control plane's grace
/// window: the box needs a new install ID.
pub const EXIT_CREDENTIALS_EXPIRED: u8 = 5;
/// Exit status for configuration errors.
pub const EXIT_CONFIG: u8 = 2;
/// Exit statuses when the control plane refused an enrollment token, one per
/// reason: no such token; every use spent; expired; revoked by an operator.
pub const EXIT_TOKEN_UNKNOWN: u8 = 6;
pub const EXIT_TOKEN_EXHAUSTED: u8 = 7;
pub const EXIT_TOKEN_EXPIRED: u8 = 8;
pub const EXIT_TOKEN_REVOKED: u8 = 9;
