//! Rate limits of reference/000, with `governor` (GCRA):
//! - logs: 5 requests/min per client IP and 50/min across all clients;
//!   a 429 there has a plain-string body;
//! - telemetry reads: 60/min per device as a sustained rate (one a second)
//!   with bursts of up to 10, i.e. a burst refills over 10 seconds.
//!
//! The client IP is the TCP peer address; behind a reverse proxy every client
//! shares the proxy's budget (documented in the README).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

pub struct Limits {
    logs_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    logs_global: DefaultDirectRateLimiter,
    telemetry_per_device: DefaultKeyedRateLimiter<String>,
}

const LOGS_PER_IP_PER_MIN: NonZeroU32 = NonZeroU32::new(5).unwrap();
const LOGS_GLOBAL_PER_MIN: NonZeroU32 = NonZeroU32::new(50).unwrap();
const TELEMETRY_BURST: NonZeroU32 = NonZeroU32::new(10).unwrap();

/// The plain-string body of a logs 429 (reference/000).
pub const LOGS_429: &str = "Too many requests to the logs endpoint; retry later.";

impl Limits {
    pub fn new() -> Self {
        Self {
            logs_per_ip: RateLimiter::keyed(Quota::per_minute(LOGS_PER_IP_PER_MIN)),
            logs_global: RateLimiter::direct(Quota::per_minute(LOGS_GLOBAL_PER_MIN)),
            telemetry_per_device: RateLimiter::keyed(
                Quota::with_period(Duration::from_secs(1))
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(TELEMETRY_BURST),
            ),
        }
    }

    pub fn check_logs(&self, ip: IpAddr) -> Result<(), ApiError> {
        let now = DefaultClock::default().now();
        let deny = |wait: Duration| ApiError::TooManyRequests {
            message: LOGS_429.to_string(),
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
            plain: true,
        };
        self.logs_per_ip
            .check_key(&ip)
            .map_err(|n| deny(n.wait_time_from(now)))?;
        self.logs_global
            .check()
            .map_err(|n| deny(n.wait_time_from(now)))
    }

    pub fn check_telemetry(&self, workspace: &str, device_id: &str) -> Result<(), ApiError> {
        let now = DefaultClock::default().now();
        self.telemetry_per_device
            .check_key(&format!("{workspace}/{device_id}"))
            .map_err(|n| ApiError::TooManyRequests {
                message: "telemetry rate limit exceeded for this device: 60 requests per minute, bursts of 10"
                    .to_string(),
                retry_after_secs: n.wait_time_from(now).as_secs_f64().ceil() as u64,
                plain: false,
            })
    }

    /// Forgets idle keys so the maps stay small.
    pub fn prune(&self) {
        self.logs_per_ip.retain_recent();
        self.telemetry_per_device.retain_recent();
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_allow_five_per_ip_then_429_plain() {
        let l = Limits::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            l.check_logs(ip).unwrap();
        }
        match l.check_logs(ip) {
            Err(ApiError::TooManyRequests {
                plain,
                retry_after_secs,
                ..
            }) => {
                assert!(plain);
                assert!((1..=60).contains(&retry_after_secs));
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // Another client still has its own budget.
        l.check_logs("192.0.2.2".parse().unwrap()).unwrap();
    }

    #[test]
    fn logs_have_a_global_budget_of_fifty() {
        let l = Limits::new();
        let mut allowed = 0;
        for i in 0..60u8 {
            let ip: IpAddr = format!("198.51.100.{i}").parse().unwrap();
            if l.check_logs(ip).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 50);
    }

    #[test]
    fn telemetry_bursts_ten_per_device() {
        let l = Limits::new();
        for _ in 0..10 {
            l.check_telemetry("acme", "d1").unwrap();
        }
        assert!(matches!(
            l.check_telemetry("acme", "d1"),
            Err(ApiError::TooManyRequests { plain: false, .. })
        ));
        l.check_telemetry("acme", "d2").unwrap();
    }
}
