//! Latency histograms with fixed buckets, shared by the Prometheus export (which sums them
//! across replicas, so the buckets must be the same everywhere) and the `/stats` page (which
//! reads p50/p99 from them).
//!
//! Recording is a few relaxed atomic adds: the terminator's workers record on their own
//! threads while the control plane reads snapshots.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Upper bounds (seconds) of the buckets: 100 µs to 10 s in 1-2.5-5 steps. Prometheus adds
/// `+Inf`; here the last counter holds everything above 10 s.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// One latency series: counts per bucket (the last one is the overflow), their count and sum.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    /// Sum in nanoseconds (an atomic f64 would need a CAS loop).
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.partition_point(|le| *le < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a histogram's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub buckets: [u64; BUCKETS.len() + 1],
    pub count: u64,
    pub sum_ns: u64,
}

impl Snapshot {
    /// What was recorded since `earlier` (counters only grow; a smaller one counts as 0).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            count: self.count.saturating_sub(earlier.count),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// The `q` quantile (0..=1) in seconds, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations. Above the last
    /// bound the answer is that bound (the overflow bucket has no upper edge).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            let upto = below + n;
            if *n > 0 && upto as f64 >= rank {
                let Some(hi) = BUCKETS.get(i) else {
                    return Some(BUCKETS[BUCKETS.len() - 1]);
                };
                let lo = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let within = (rank - below as f64) / *n as f64;
                return Some(lo + (hi - lo) * within);
            }
            below = upto;
        }
        Some(BUCKETS[BUCKETS.len() - 1])
    }

    /// Mean in seconds, `None` without observations.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ns as f64 / 1e9 / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn values_land_in_the_bucket_of_their_upper_bound() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100)); // exactly on a bound: that bucket (le)
        h.record(Duration::from_micros(101));
        h.record(ms(10_000));
        h.record(ms(10_001)); // overflow
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[BUCKETS.len() - 1], 1);
        assert_eq!(s.buckets[BUCKETS.len()], 1);
        assert_eq!(s.count, 4);
        assert_eq!(
            s.sum_ns,
            100_000 + 101_000 + 10_000_000_000 + 10_001_000_000
        );
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        // 100 values in (25 ms, 50 ms]: the median is halfway through that bucket.
        for _ in 0..100 {
            h.record(ms(30));
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap();
        assert!((p50 - 0.0375).abs() < 1e-9, "{p50}");
        assert!((s.quantile(1.0).unwrap() - 0.05).abs() < 1e-9);
        // One slow outlier in 100 moves p99 only to the top of the common bucket; two move it up.
        h.record(ms(2_000));
        let s = h.snapshot();
        assert!(s.quantile(0.99).unwrap() <= 0.05);
        h.record(ms(2_000));
        h.record(ms(2_000));
        let p99 = h.snapshot().quantile(0.99).unwrap();
        assert!(p99 > 1.0 && p99 <= 2.5, "{p99}");
        assert!((h.snapshot().mean().unwrap() - (3.0 + 6.0) / 103.0).abs() < 1e-9);
    }

    #[test]
    fn overflow_reports_the_last_bound_and_since_subtracts() {
        let h = Histogram::default();
        h.record(ms(60_000));
        let first = h.snapshot();
        assert_eq!(first.quantile(0.5), Some(10.0));
        h.record(ms(1));
        let delta = h.snapshot().since(&first);
        assert_eq!(delta.count, 1);
        assert!(delta.quantile(0.5).unwrap() <= 0.001);
    }
}
