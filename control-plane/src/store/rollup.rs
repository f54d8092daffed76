//! Telemetry rollups: what the bucketed series keep of the raw samples, as
//! numbers that merge. Pure: no I/O. The store (`sql.rs`) keeps one [`Agg`]
//! per device and bucket of each [`Tier`] and merges a commit's new samples
//! into them in the same transaction; `telemetry_buckets` folds tier rows into
//! the API's buckets with the same [`Agg::merge`].
//!
//! The computation a tier must reproduce is [`Agg::of_samples`] over the raw
//! samples whose timestamp falls in the bucket, ordered by (timestamp, seq):
//! counts, sums and maxima, and for the cumulative network counters the
//! increase between consecutive samples, where a value lower than the one
//! before is a reset and counts whole (Prometheus' `increase()`, without its
//! extrapolation). Increases between the last sample of one bucket and the
//! first of the next belong to neither, so a coarse bucket is its fine rows
//! merged in order plus the increases across their boundaries — which is why
//! an `Agg` keeps its first and last counter points.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use super::{TelemetryBucket, TelemetrySample, UnixMillis};

/// A rollup tier: one row per device and `width_ms` bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// As `/metrics` and the API name it.
    pub name: &'static str,
    pub table: &'static str,
    pub width_ms: i64,
}

pub const MINUTE: Tier = Tier {
    name: "1m",
    table: "telemetry_1m",
    width_ms: 60_000,
};
pub const HOUR: Tier = Tier {
    name: "1h",
    table: "telemetry_1h",
    width_ms: 3_600_000,
};
/// Finest first: an hour row is recomputed from its minute rows.
pub const TIERS: [Tier; 2] = [MINUTE, HOUR];

impl Tier {
    /// The start of the bucket `ts` falls in.
    pub fn bucket(&self, ts: UnixMillis) -> UnixMillis {
        ts.div_euclid(self.width_ms) * self.width_ms
    }

    /// Where the tier is in [`TIERS`].
    pub fn index(&self) -> usize {
        usize::from(self.width_ms != MINUTE.width_ms)
    }

    /// The tier an (overlapped) row is recomputed from: `None`, the raw
    /// samples.
    pub fn finer(&self) -> Option<Tier> {
        TIERS[..self.index()].last().copied()
    }

    /// The coarsest tier whose buckets tile buckets of `bucket_ms`.
    pub fn for_bucket(bucket_ms: i64) -> Option<Tier> {
        TIERS
            .iter()
            .rev()
            .find(|t| bucket_ms > 0 && bucket_ms % t.width_ms == 0)
            .copied()
    }
}

/// Rows recomputed from their source because new samples interleaved
/// with the ones they held, per tier (`/metrics`).
static RECOMPUTED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

pub fn count_recomputed(tier: Tier) {
    RECOMPUTED[tier.index()].fetch_add(1, AtomicOrdering::Relaxed);
}

/// Rows of `tier` recomputed since the process started.
pub fn recomputed(tier: Tier) -> u64 {
    RECOMPUTED[tier.index()].load(AtomicOrdering::Relaxed)
}

/// One sample's cumulative network counters, where it stands in the order
/// (timestamp, seq) that increases are taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterPoint {
    pub ts: UnixMillis,
    pub seq: u64,
    pub rx: u64,
    pub tx: u64,
}

impl CounterPoint {
    fn key(&self) -> (UnixMillis, u64) {
        (self.ts, self.seq)
    }
}

/// The increase of a cumulative counter from `before` to `after`: a lower
/// value is a reset (a reboot), after which the counter counted `after`.
pub fn increase(before: u64, after: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// The aggregates of a set of samples that do not interleave with another
/// set's in (timestamp, seq) order. Floats are sums, so merging is exact up
/// to rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct Agg {
    pub n: u64,
    pub cpu_sum: f64,
    pub cpu_max: f64,
    pub mem_sum: f64,
    pub mem_total_max: u64,
    pub disk_sum: f64,
    pub disk_total_max: u64,
    pub load_sum: f64,
    /// Hottest sensor; `None` while no sample had one.
    pub temp_max: Option<f64>,
    /// Samples that had GPUs, and the sums over them of the mean
    /// utilisation and of the memory used across the sample's GPUs.
    pub gpu_n: u64,
    pub gpu_util_sum: f64,
    pub gpu_mem_sum: f64,
    pub first: CounterPoint,
    pub last: CounterPoint,
    /// Increases between consecutive samples of the set.
    pub rx_inc: u64,
    pub tx_inc: u64,
}

/// Two sets whose samples interleave: their merge needs the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap;

impl Agg {
    /// One sample.
    pub fn of(s: &TelemetrySample) -> Agg {
        let temp_max = s
            .temperatures
            .iter()
            .map(|t| f64::from(t.celsius))
            .reduce(f64::max);
        let (gpu_n, gpu_util_sum, gpu_mem_sum) = if s.gpus.is_empty() {
            (0, 0.0, 0.0)
        } else {
            let util: f64 = s
                .gpus
                .iter()
                .map(|g| f64::from(g.utilization_percent))
                .sum();
            let mem: f64 = s.gpus.iter().map(|g| g.memory_used_bytes as f64).sum();
            (1, util / s.gpus.len() as f64, mem)
        };
        let point = CounterPoint {
            ts: s.timestamp,
            seq: s.seq,
            rx: s.network_rx_bytes,
            tx: s.network_tx_bytes,
        };
        Agg {
            n: 1,
            cpu_sum: f64::from(s.cpu_percent),
            cpu_max: f64::from(s.cpu_percent),
            mem_sum: s.memory_used_bytes as f64,
            mem_total_max: s.memory_total_bytes,
            disk_sum: s.disk_used_bytes as f64,
            disk_total_max: s.disk_total_bytes,
            load_sum: s.load_1m,
            temp_max,
            gpu_n,
            gpu_util_sum,
            gpu_mem_sum,
            first: point,
            last: point,
            rx_inc: 0,
            tx_inc: 0,
        }
    }

    /// The raw computation: samples in any order (sorted here by
    /// (timestamp, seq)); `None` for none.
    pub fn of_samples<'a>(samples: impl IntoIterator<Item = &'a TelemetrySample>) -> Option<Agg> {
        let mut sorted: Vec<&TelemetrySample> = samples.into_iter().collect();
        sorted.sort_by_key(|s| (s.timestamp, s.seq));
        Agg::fold(sorted.into_iter().map(Agg::of))
    }

    /// Aggregates in (first, last) order that do not interleave, merged.
    pub fn fold(aggs: impl IntoIterator<Item = Agg>) -> Option<Agg> {
        let mut out: Option<Agg> = None;
        for a in aggs {
            out = Some(match out {
                None => a,
                Some(acc) => acc.then(&a),
            });
        }
        out
    }

    /// `self` followed by `later`, which must come wholly after it (else
    /// the counter increase across the seam is not the one the samples
    /// give: callers check with [`Agg::merge`]).
    fn then(mut self, later: &Agg) -> Agg {
        // Saturating: counters may be anything up to i64::MAX, and a device
        // flipping one between 0 and the top would overflow a plain sum.
        self.rx_inc = self
            .rx_inc
            .saturating_add(increase(self.last.rx, later.first.rx))
            .saturating_add(later.rx_inc);
        self.tx_inc = self
            .tx_inc
            .saturating_add(increase(self.last.tx, later.first.tx))
            .saturating_add(later.tx_inc);
        self.last = later.last;
        self.add_values(later);
        self
    }

    fn add_values(&mut self, o: &Agg) {
        self.n += o.n;
        self.cpu_sum += o.cpu_sum;
        self.cpu_max = self.cpu_max.max(o.cpu_max);
        self.mem_sum += o.mem_sum;
        self.mem_total_max = self.mem_total_max.max(o.mem_total_max);
        self.disk_sum += o.disk_sum;
        self.disk_total_max = self.disk_total_max.max(o.disk_total_max);
        self.load_sum += o.load_sum;
        self.temp_max = match (self.temp_max, o.temp_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.gpu_n += o.gpu_n;
        self.gpu_util_sum += o.gpu_util_sum;
        self.gpu_mem_sum += o.gpu_mem_sum;
    }

    /// Adds `o`'s counts, sums and maxima but not its counter increases:
    /// for a late sample that interleaves with a row whose source (raw
    /// samples, finer rows) retention has already deleted, so that the row
    /// cannot be recomputed. Its averages stay exact; the increases it
    /// brings across its neighbours are unknown and left out.
    pub fn absorb(&mut self, o: &Agg) {
        self.add_values(o);
    }

    /// Two sets merged, in whichever order they come; [`Overlap`] when
    /// their samples interleave (or one sample is in both).
    pub fn merge(self, other: &Agg) -> Result<Agg, Overlap> {
        if self.last.key().cmp(&other.first.key()) == Ordering::Less {
            Ok(self.then(other))
        } else if other.last.key() < self.first.key() {
            Ok(other.clone().then(&self))
        } else {
            Err(Overlap)
        }
    }

    /// What the API shows for a bucket starting at `start`.
    pub fn bucket(&self, start: UnixMillis) -> TelemetryBucket {
        let n = self.n.max(1) as f64;
        let gpu_n = (self.gpu_n > 0).then_some(self.gpu_n as f64);
        TelemetryBucket {
            start,
            samples: self.n,
            cpu_percent_avg: self.cpu_sum / n,
            cpu_percent_max: self.cpu_max,
            memory_used_bytes_avg: self.mem_sum / n,
            memory_total_bytes: self.mem_total_max,
            disk_used_bytes_avg: self.disk_sum / n,
            disk_total_bytes: self.disk_total_max,
            network_rx_bytes: self.rx_inc,
            network_tx_bytes: self.tx_inc,
            load_1m_avg: self.load_sum / n,
            temperature_max_celsius: self.temp_max,
            gpu_utilization_percent_avg: gpu_n.map(|g| self.gpu_util_sum / g),
            gpu_memory_used_bytes_avg: gpu_n.map(|g| self.gpu_mem_sum / g),
        }
    }
}

/// Rows of one device's tier, in bucket order, folded into API buckets of
/// `bucket_ms` (a multiple of the tier's width). Rows of one tier never
/// interleave, so the fold never meets an [`Overlap`].
pub fn buckets(
    rows: impl IntoIterator<Item = (UnixMillis, Agg)>,
    bucket_ms: i64,
) -> Vec<TelemetryBucket> {
    let mut out: Vec<TelemetryBucket> = Vec::new();
    let mut open: Option<(UnixMillis, Agg)> = None;
    for (start, agg) in rows {
        let b = start.div_euclid(bucket_ms) * bucket_ms;
        open = Some(match open {
            Some((ob, acc)) if ob == b => (ob, acc.then(&agg)),
            Some((ob, acc)) => {
                out.push(acc.bucket(ob));
                (b, agg)
            }
            None => (b, agg),
        });
    }
    if let Some((b, acc)) = open {
        out.push(acc.bucket(b));
    }
    out
}

/// What one commit's new samples add to a tier: one [`Agg`] per (device,
/// bucket), keyed in order.
pub fn partials<'a>(
    tier: Tier,
    rows: impl IntoIterator<Item = (&'a str, &'a TelemetrySample)>,
) -> Vec<((&'a str, UnixMillis), Agg)> {
    let mut rows: Vec<(&str, UnixMillis, &TelemetrySample)> = rows
        .into_iter()
        .map(|(d, s)| (d, tier.bucket(s.timestamp), s))
        .collect();
    rows.sort_by_key(|&(d, b, s)| (d, b, s.timestamp, s.seq));
    let mut out: Vec<((&str, UnixMillis), Agg)> = Vec::new();
    for (d, b, s) in rows {
        let a = Agg::of(s);
        match out.last_mut() {
            Some((key, acc)) if *key == (d, b) => *acc = acc.clone().then(&a),
            _ => out.push(((d, b), a)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GpuSample, Temperature};

    fn sample(seq: u64, ts: i64, rx: u64) -> TelemetrySample {
        TelemetrySample {
            seq,
            timestamp: ts,
            cpu_percent: (seq % 100) as f32,
            memory_used_bytes: 1000 + seq,
            memory_total_bytes: 4000,
            disk_used_bytes: 10 * seq,
            disk_total_bytes: 9000,
            network_rx_bytes: rx,
            network_tx_bytes: 2 * rx,
            // Whole numbers, so that sums in any grouping are exact.
            load_1m: (seq % 7) as f64,
            ..Default::default()
        }
    }

    #[test]
    fn a_counter_reset_counts_what_came_after_it() {
        // 100 → 300 (+200), reboot → 50 (+50), → 80 (+30).
        let s = [
            sample(1, 0, 100),
            sample(2, 10, 300),
            sample(3, 20, 50),
            sample(4, 30, 80),
        ];
        let a = Agg::of_samples(&s).unwrap();
        assert_eq!(a.rx_inc, 280);
        assert_eq!(a.tx_inc, 560);
        assert_eq!(a.n, 4);
        // Out of order in, the same answer.
        let shuffled = [s[2].clone(), s[0].clone(), s[3].clone(), s[1].clone()];
        assert_eq!(Agg::of_samples(&shuffled).unwrap(), a);
    }

    #[test]
    fn merging_in_either_order_equals_the_whole_and_interleaving_is_refused() {
        let s: Vec<_> = (0..10)
            .map(|k| sample(k, k as i64 * 10, k * 7 % 5))
            .collect();
        let whole = Agg::of_samples(&s).unwrap();
        let head = Agg::of_samples(&s[..4]).unwrap();
        let tail = Agg::of_samples(&s[4..]).unwrap();
        assert_eq!(head.clone().merge(&tail).unwrap(), whole);
        assert_eq!(tail.clone().merge(&head).unwrap(), whole);
        let evens = Agg::of_samples(s.iter().step_by(2)).unwrap();
        let odds = Agg::of_samples(s.iter().skip(1).step_by(2)).unwrap();
        assert_eq!(evens.merge(&odds), Err(Overlap));
        // The same sample twice is an overlap too (never counted twice).
        assert_eq!(
            Agg::of(&s[3]).merge(&Agg::of(&s[3])),
            Err(Overlap),
            "a duplicate"
        );
    }

    #[test]
    fn equal_timestamps_are_ordered_by_seq() {
        let a = sample(5, 100, 10);
        let b = sample(6, 100, 30);
        let ab = Agg::of(&a).merge(&Agg::of(&b)).unwrap();
        assert_eq!(ab.rx_inc, 20);
        assert_eq!(Agg::of(&b).merge(&Agg::of(&a)).unwrap(), ab);
    }

    #[test]
    fn temperatures_and_gpus_aggregate_over_the_samples_that_have_them() {
        let mut a = sample(1, 0, 0);
        a.temperatures = vec![
            Temperature {
                sensor: "x".into(),
                celsius: 40.0,
            },
            Temperature {
                sensor: "y".into(),
                celsius: 70.0,
            },
        ];
        a.gpus = vec![
            GpuSample {
                utilization_percent: 20.0,
                memory_used_bytes: 100,
                ..Default::default()
            },
            GpuSample {
                utilization_percent: 60.0,
                memory_used_bytes: 300,
                ..Default::default()
            },
        ];
        let b = sample(2, 10, 0);
        let agg = Agg::of_samples([&a, &b]).unwrap();
        let bucket = agg.bucket(0);
        assert_eq!(bucket.temperature_max_celsius, Some(70.0));
        assert_eq!(bucket.gpu_utilization_percent_avg, Some(40.0));
        assert_eq!(bucket.gpu_memory_used_bytes_avg, Some(400.0));
        assert_eq!(bucket.samples, 2);
        let none = Agg::of(&b).bucket(0);
        assert_eq!(none.temperature_max_celsius, None);
        assert_eq!(none.gpu_utilization_percent_avg, None);
    }

    #[test]
    fn tier_rows_fold_into_coarser_buckets_with_the_increases_across_seams() {
        // Samples every 20 s over 3 hours, a reset in the middle.
        let s: Vec<_> = (0..540u64)
            .map(|k| {
                sample(
                    k,
                    k as i64 * 20_000,
                    if k < 300 { k * 10 } else { (k - 300) * 3 },
                )
            })
            .collect();
        let minutes = partials(MINUTE, s.iter().map(|x| ("d", x)));
        assert_eq!(minutes.len(), 180);
        for bucket_ms in [60_000, 300_000, 3_600_000, 86_400_000] {
            let from_tier = buckets(minutes.iter().map(|((_, b), a)| (*b, a.clone())), bucket_ms);
            let from_raw = buckets(
                s.iter()
                    .map(|x| (x.timestamp.div_euclid(bucket_ms) * bucket_ms, Agg::of(x))),
                bucket_ms,
            );
            assert_eq!(from_tier, from_raw, "{bucket_ms}");
        }
        let day = buckets(
            minutes.iter().map(|((_, b), a)| (*b, a.clone())),
            86_400_000,
        );
        assert_eq!(day[0].network_rx_bytes, 299 * 10 + 239 * 3);
    }

    #[test]
    fn increases_saturate_rather_than_overflow() {
        let top = i64::MAX as u64;
        let s: Vec<_> = (0..6u64)
            .map(|k| sample(k, k as i64, if k % 2 == 0 { 0 } else { top }))
            .collect();
        let a = Agg::of_samples(&s).unwrap();
        assert_eq!(a.rx_inc, u64::MAX);
    }

    #[test]
    fn the_coarsest_tier_that_tiles_a_bucket_is_chosen() {
        assert_eq!(Tier::for_bucket(60_000), Some(MINUTE));
        assert_eq!(Tier::for_bucket(900_000), Some(MINUTE));
        assert_eq!(Tier::for_bucket(3_600_000), Some(HOUR));
        assert_eq!(Tier::for_bucket(86_400_000), Some(HOUR));
        assert_eq!(Tier::for_bucket(30_000), None);
        assert_eq!(MINUTE.bucket(-1), -60_000, "before 1970 still floors");
        for (k, t) in TIERS.iter().enumerate() {
            assert_eq!(t.index(), k);
        }
        assert_eq!(MINUTE.finer(), None);
        assert_eq!(HOUR.finer(), Some(MINUTE));
    }
}
