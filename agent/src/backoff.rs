//! Reconnect pacing: exponential with full jitter (via `backon`), so a fleet
//! that lost its control plane does not come back in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

pub const MIN_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A connection that lived this long counts as healthy: the next failure
/// starts again from the smallest delay.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Delays for successive reconnect attempts; never runs out.
pub struct Reconnect {
    inner: backon::ExponentialBackoff,
}

impl Reconnect {
    pub fn new() -> Self {
        Self {
            inner: ExponentialBuilder::default()
                .with_min_delay(MIN_DELAY)
                .with_max_delay(MAX_DELAY)
                .with_factor(2.0)
                .with_jitter()
                // Without an explicit seed (no `std` feature) backon uses a
                // fixed one, and a whole fleet would retry in lockstep.
                .with_jitter_seed(rand::random())
                .without_max_times()
                .build(),
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        self.inner.next().unwrap_or(MAX_DELAY)
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_a_bounded_jittered_ceiling() {
        let mut r = Reconnect::new();
        let delays: Vec<Duration> = (0..20).map(|_| r.next_delay()).collect();
        assert!(
            delays[0] >= MIN_DELAY && delays[0] <= MIN_DELAY * 2,
            "{:?}",
            delays[0]
        );
        // backon adds up to one extra base delay of jitter.
        assert!(delays.iter().all(|d| *d <= MAX_DELAY * 2), "{delays:?}");
        assert!(delays[10] >= MAX_DELAY, "reaches the ceiling: {delays:?}");
    }

    #[test]
    fn two_agents_do_not_retry_in_lockstep() {
        let a: Vec<Duration> = {
            let mut r = Reconnect::new();
            (0..10).map(|_| r.next_delay()).collect()
        };
        let b: Vec<Duration> = {
            let mut r = Reconnect::new();
            (0..10).map(|_| r.next_delay()).collect()
        };
        assert_ne!(a, b, "jitter makes schedules differ");
    }
}
