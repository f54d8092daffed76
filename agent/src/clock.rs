//! The agent's clock: the system clock, but never earlier than a floor —
//! the binary's build time, raised to the last known-good time (persisted;
//! the control plane's time at each session start). A box without an RTC
//! that boots in 1970 still verifies certificates and stamps samples sanely.
//! A system clock running ahead of the control plane's (by more than
//! [`SKEW_WARNING_MS`]) is not trusted either: from the session start on,
//! the clock reads the control plane's time then plus the monotonic time
//! since, until the system clock agrees again (NTP caught up). The control
//! plane refuses samples stamped more than a day ahead of its own clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;

/// When this binary was built, unix ms.
pub const BUILD_TIME_MS: i64 = match i64::from_str_radix(env!("OUTPOST_BUILD_UNIX_MS"), 10) {
    Ok(v) => v,
    Err(_) => 0,
};

/// How far behind the control plane the local clock may be before we say so.
const SKEW_WARNING_MS: i64 = 5 * 60 * 1000;

/// The system's wall-clock time, unix ms (0 if it reads before 1970).
pub fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct Clock {
    floor_ms: AtomicI64,
    source: fn() -> i64,
    /// The last known-good time and when (monotonic) it was seen.
    anchor: Mutex<Option<(i64, Instant)>>,
}

impl Clock {
    /// A clock over the system time with the build time and `persisted` as floor.
    pub fn new(persisted_floor_ms: Option<i64>) -> Arc<Self> {
        Self::with_source(persisted_floor_ms, system_ms)
    }

    /// The same over another time source (tests inject a broken clock).
    pub fn with_source(persisted_floor_ms: Option<i64>, source: fn() -> i64) -> Arc<Self> {
        Arc::new(Self {
            floor_ms: AtomicI64::new(BUILD_TIME_MS.max(persisted_floor_ms.unwrap_or(0))),
            source,
            anchor: Mutex::new(None),
        })
    }

    pub fn now_ms(&self) -> i64 {
        let system = (self.source)();
        // A poisoned lock only means a panic elsewhere mid-update of a Copy
        // value: the value is still whole.
        let anchor = *self.anchor.lock().unwrap_or_else(|e| e.into_inner());
        let now = match anchor {
            Some((good_ms, at)) => {
                let elapsed = i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX);
                let known = good_ms.saturating_add(elapsed);
                if system.saturating_sub(known) > SKEW_WARNING_MS {
                    known
                } else {
                    system
                }
            }
            None => system,
        };
        now.max(self.floor_ms.load(Ordering::Relaxed))
    }

    pub fn floor_ms(&self) -> i64 {
        self.floor_ms.load(Ordering::Relaxed)
    }

    /// A time known to be good (the authenticated server's): the clock never
    /// reads earlier than it again. Returns the new floor.
    pub fn observe_good_time(&self, good_ms: i64) -> i64 {
        let local = (self.source)();
        if good_ms - local > SKEW_WARNING_MS {
            tracing::warn!(
                behind_secs = (good_ms - local) / 1000,
                "the system clock is behind the control plane's; using the control plane's time as a floor (is NTP running?)"
            );
        }
        if local - good_ms > SKEW_WARNING_MS {
            tracing::warn!(
                ahead_secs = (local - good_ms) / 1000,
                "the system clock is ahead of the control plane's; stamping with the control plane's time (is NTP running?)"
            );
        }
        *self.anchor.lock().unwrap_or_else(|e| e.into_inner()) = Some((good_ms, Instant::now()));
        self.floor_ms.fetch_max(good_ms, Ordering::Relaxed);
        self.floor_ms()
    }
}

impl TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_millis(
            u64::try_from(self.now_ms()).unwrap_or(0),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nineteen_seventy() -> i64 {
        86_400_000
    }

    #[test]
    fn never_earlier_than_build_time_or_known_good_time() {
        const { assert!(BUILD_TIME_MS > 1_700_000_000_000, "build time recorded") };
        let c = Clock::with_source(None, nineteen_seventy);
        assert_eq!(c.now_ms(), BUILD_TIME_MS);
        let later = BUILD_TIME_MS + 3_600_000;
        assert_eq!(c.observe_good_time(later), later);
        assert_eq!(c.now_ms(), later);
        assert_eq!(
            c.observe_good_time(BUILD_TIME_MS),
            later,
            "the floor never goes down"
        );
        let persisted = Clock::with_source(Some(later), nineteen_seventy);
        assert_eq!(persisted.now_ms(), later);
        // A correct system clock ahead of the floor wins.
        let ok = Clock::new(None);
        assert!(ok.now_ms() >= system_ms() - 1000);
    }

    fn a_year_ahead() -> i64 {
        system_ms() + 365 * 86_400_000
    }

    #[test]
    fn a_system_clock_ahead_of_the_control_plane_yields_to_it() {
        let c = Clock::with_source(None, a_year_ahead);
        assert!(
            c.now_ms() > system_ms() + 300 * 86_400_000,
            "nothing known yet"
        );
        let good = system_ms();
        c.observe_good_time(good);
        let now = c.now_ms();
        assert!(
            (good..good + 60_000).contains(&now),
            "stamps follow the control plane's time: {now} vs {good}"
        );
        // A system clock within the tolerance keeps its own reading.
        let ok = Clock::new(None);
        ok.observe_good_time(system_ms() - 60_000);
        assert!(ok.now_ms() >= system_ms() - 1000);
    }
}
