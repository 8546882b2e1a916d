//! Latency in an HDR histogram: microseconds, 3 significant digits, 1 µs to 100 s.

use hdrhistogram::Histogram;

/// The percentiles every report and plot shows.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

#[derive(Clone)]
pub struct Latency {
    h: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            h: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

impl Latency {
    pub fn record(&mut self, d: std::time::Duration) {
        // Saturates at the top bound instead of failing on an outlier.
        self.h.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides: cannot fail.
        let _ = self.h.add(&other.h);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The latency at percentile `p` (0-100), in microseconds (0 when empty).
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.h.is_empty() {
            0.0
        } else {
            self.h.value_at_percentile(p) as f64
        }
    }

    pub fn max_us(&self) -> f64 {
        self.h.max() as f64
    }

    pub fn mean_us(&self) -> f64 {
        self.h.mean()
    }

    /// `p50 1.2 ms, p99 ..., p99.9 ..., max ...`.
    pub fn summary(&self) -> String {
        if self.h.is_empty() {
            return "no samples".into();
        }
        format!(
            "p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
            human_us(self.percentile_us(50.0)),
            human_us(self.percentile_us(90.0)),
            human_us(self.percentile_us(99.0)),
            human_us(self.percentile_us(99.9)),
            human_us(self.max_us())
        )
    }
}

pub fn human_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn percentiles_come_from_the_samples() {
        let mut l = Latency::default();
        for i in 1..=1000u64 {
            l.record(Duration::from_micros(i * 10));
        }
        let p50 = l.percentile_us(50.0);
        assert!((4990.0..=5010.0).contains(&p50), "{p50}");
        let p99 = l.percentile_us(99.0);
        assert!((9890.0..=9910.0).contains(&p99), "{p99}");
        let mut m = Latency::default();
        m.record(Duration::from_secs(1000)); // beyond the bound: saturates
        l.add(&m);
        assert_eq!(l.count(), 1001);
        assert!(l.max_us() >= 99_000_000.0);
        assert_eq!(Latency::default().percentile_us(99.0), 0.0);
        assert_eq!(human_us(1500.0), "1.50 ms");
    }
}
