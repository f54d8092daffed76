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
    seed: u64,
    inner: backon::ExponentialBackoff,
}

impl Reconnect {
    /// A schedule with a random jitter seed: without one (no `std`
    /// feature) backon uses a fixed seed, and a whole fleet would retry in
    /// lockstep.
    pub fn new() -> Self {
        Self::with_seed(rand::random())
    }

    /// A schedule whose jitter comes from `seed` (tests replay one).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            inner: Self::build(seed),
        }
    }

    fn build(seed: u64) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .with_jitter_seed(seed)
            .without_max_times()
            .build()
    }

    pub fn next_delay(&mut self) -> Duration {
        self.inner.next().unwrap_or(MAX_DELAY)
    }

    /// Back to the smallest delay (after a healthy connection).
    pub fn reset(&mut self) {
        self.seed = self.seed.wrapping_add(1);
        self.inner = Self::build(self.seed);
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
