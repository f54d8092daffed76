//! Reconnect pacing: exponential with full jitter (via `backon`), so a fleet
//! that lost its control plane does not come back in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

pub const MIN_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A connection that lived this long counts as healthy: the next failure
/// starts again from the smallest delay.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Attempts after a healthy link's loss that wait at most [`QUICK_MAX`]: a
/// control plane restarting (an upgrade, a failover) is back within
/// seconds, and a fleet that backed off exponentially from the first
/// refusal came back long after it (BENCHMARKS.md, restart storm). Eight
/// attempts cover ~25 s; then the exponential schedule starts over.
pub const QUICK_RETRIES: u32 = 8;
/// The longest wait of a quick attempt; each is jittered into
/// `[QUICK_MAX / 2, QUICK_MAX]` so a fleet does not retry in lockstep.
pub const QUICK_MAX: Duration = Duration::from_secs(4);

/// Delays for successive reconnect attempts; never runs out.
pub struct Reconnect {
    seed: u64,
    inner: backon::ExponentialBackoff,
    /// Quick attempts left ([`Reconnect::quick_retries`]).
    quick_left: u32,
    /// Jitter state for the quick attempts' cap.
    jitter: u64,
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
            quick_left: 0,
            jitter: seed,
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
        let delay = self.inner.next().unwrap_or(MAX_DELAY);
        if self.quick_left == 0 {
            return delay;
        }
        self.quick_left -= 1;
        if self.quick_left == 0 {
            // The quick attempts are spent: exponential from the start.
            self.reset();
        }
        let half = QUICK_MAX / 2;
        let cap = half + half.mul_f64(self.unit());
        delay.min(cap)
    }

    /// Back to the smallest delay (after a healthy connection).
    pub fn reset(&mut self) {
        self.seed = self.seed.wrapping_add(1);
        self.inner = Self::build(self.seed);
    }

    /// The next `n` delays are at most [`QUICK_MAX`] (after a healthy
    /// link's loss).
    pub fn quick_retries(&mut self, n: u32) {
        self.quick_left = n;
    }

    /// A number in [0, 1) from the seed (SplitMix64).
    fn unit(&mut self) -> f64 {
        self.jitter = self.jitter.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits as a fraction: exact in an f64.
        (z >> 11) as f64 / (1u64 << 53) as f64
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
    fn quick_retries_stay_short_then_the_schedule_starts_over() {
        let mut r = Reconnect::with_seed(3);
        r.quick_retries(QUICK_RETRIES);
        let quick: Vec<Duration> = (0..QUICK_RETRIES).map(|_| r.next_delay()).collect();
        assert!(
            quick[0] >= MIN_DELAY && quick[0] <= MIN_DELAY * 2,
            "{quick:?}"
        );
        assert!(quick.iter().all(|d| *d <= QUICK_MAX), "{quick:?}");
        // Jittered: not all the same.
        assert!(quick[3..].windows(2).any(|w| w[0] != w[1]), "{quick:?}");
        let total: Duration = quick.iter().sum();
        assert!(
            total >= Duration::from_secs(15),
            "covers a restart: {total:?}"
        );
        // Then exponential again from the smallest step.
        let next = r.next_delay();
        assert!(next >= MIN_DELAY && next <= MIN_DELAY * 2, "{next:?}");
        let later: Vec<Duration> = (0..6).map(|_| r.next_delay()).collect();
        assert!(later[5] > QUICK_MAX, "grows again: {later:?}");
    }

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
