//! Rate limits of reference/000, with `governor` (GCRA):
//! - logs: 5 requests/min per client IP and 50/min across all clients;
//!   a 429 there has a plain-string body;
//! - telemetry reads: 60/min per device as a sustained rate (one a second)
//!   with bursts of up to 10, i.e. a burst refills over 10 seconds.
//!
//! The client IP is the TCP peer address, or, from a reverse proxy named by
//! `--trusted-proxy`, the address that proxy saw ([`client_ip`]; the audit
//! trail uses it too).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// The client's address: the TCP peer, unless the peer is a trusted proxy;
/// then the right-most address of `X-Forwarded-For` (all such headers, in
/// order) that is not a trusted proxy itself. Entries left of it are the
/// client's own claims and never believed; an entry that is not an address
/// ends the walk at the proxy that appended it. From peers that are not
/// trusted proxies the header is ignored.
pub fn client_ip(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[crate::config::Cidr],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// `203.0.113.7`, `2001:db8::1`, `203.0.113.7:4711`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

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

#[cfg(test)]
mod client_ip_tests {
    use super::*;
    use axum::http::HeaderMap;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn cidrs(list: &[&str]) -> Vec<crate::config::Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_taken_as_they_are() {
        let peer: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        let h = headers(&["203.0.113.7"]);
        assert_eq!(client_ip(peer, &h, &[]), ip("198.51.100.9"));
        assert_eq!(
            client_ip(peer, &h, &cidrs(&["10.0.0.0/8"])),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let trusted = cidrs(&["10.0.0.0/8", "fd00::/8"]);
        // The left-most entries are whatever the client sent.
        let h = headers(&["6.6.6.6, 203.0.113.7, 10.1.2.3"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.7"));
        // Several headers are one list, in order.
        let h = headers(&["6.6.6.6", "203.0.113.8", "10.9.9.9"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.8"));
        // IPv6 and ports.
        let h = headers(&["[2001:db8::1]:4711, fd00::5"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("2001:db8::1"));
        let h = headers(&["203.0.113.9:80"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.9"));
    }

    #[test]
    fn odd_headers_fall_back_to_the_last_trusted_hop() {
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let trusted = cidrs(&["10.0.0.0/8"]);
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), ip("10.0.0.2"));
        // Garbage right of the client: stop at the proxy that appended it.
        let h = headers(&["203.0.113.7, not-an-ip"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.2"));
        let h = headers(&["203.0.113.7, unknown, 10.0.0.7"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.7"));
        // Every hop trusted: the left-most.
        let h = headers(&["10.0.0.5, 10.0.0.6"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.5"));
    }

    #[test]
    fn networks_match_by_prefix() {
        let c: crate::config::Cidr = "192.168.4.0/22".parse().unwrap();
        assert!(c.contains(ip("192.168.7.255")));
        assert!(!c.contains(ip("192.168.8.0")));
        assert!(c.contains(ip("::ffff:192.168.5.1")));
        let one: crate::config::Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: crate::config::Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: crate::config::Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fdff::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "fd00::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<crate::config::Cidr>().is_err(), "{bad}");
        }
    }
}
