//! What the data path's connect results do (passive ejection with backoff) and how a
//! re-admitted backend's weight ramps back up (slow start).

use super::HealthError;

/// Tunables of [`PassiveEjector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EjectorConfig {
    /// Consecutive failed connects that eject a backend (default 3). 0 counts as 1.
    pub failure_threshold: u32,
    /// Length of the first ejection (default 1 s).
    pub base_backoff_secs: u64,
    /// Longest ejection (default 60 s).
    pub max_backoff_secs: u64,
}

impl EjectorConfig {
    /// Rejects a zero base or a cap below the base.
    pub fn validate(&self) -> Result<(), HealthError> {
        if self.base_backoff_secs == 0 {
            return Err(HealthError::InvalidConfig {
                field: "base_backoff_secs",
                reason: "must be at least 1 second",
            });
        }
        if self.max_backoff_secs < self.base_backoff_secs {
            return Err(HealthError::InvalidConfig {
                field: "max_backoff_secs",
                reason: "must not be below base_backoff_secs",
            });
        }
        Ok(())
    }
}

impl Default for EjectorConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_backoff_secs: 1,
            max_backoff_secs: 60,
        }
    }
}

/// Passive outlier detection from the data path.
///
/// `failure_threshold` consecutive failed connects eject the backend for
/// `base_backoff_secs`. When that ejection ends the backend is on probation:
/// its **first** failed connect ejects it again, for twice as long each time
/// (1, 2, 4, ... s, capped at `max_backoff_secs`). Probation and backoff end
/// only when an active check passes ([`PassiveEjector::on_active_check_passed`]),
/// which also lifts a running ejection. A successful connect resets the
/// failure count but not the backoff. Failures reported while ejected (late
/// in-flight connects) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveEjector {
    cfg: EjectorConfig,
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<i64>,
    last_active_pass_unix: Option<i64>,
}

impl PassiveEjector {
    /// A backend with a clean record.
    pub fn new(cfg: EjectorConfig) -> Self {
        Self {
            cfg,
            consecutive_failures: 0,
            ejections: 0,
            ejected_until: None,
            last_active_pass_unix: None,
        }
    }

    /// Records a failed connect at `now`; returns true if it ejected the backend.
    pub fn on_connect_failure(&mut self, now: i64) -> bool {
        if self.is_ejected(now) {
            return false;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let on_probation = self.ejections > 0;
        if !on_probation && self.consecutive_failures < self.cfg.failure_threshold.max(1) {
            return false;
        }
        let backoff = i64::try_from(self.next_backoff_secs()).unwrap_or(i64::MAX);
        self.ejected_until = Some(now.saturating_add(backoff));
        self.ejections = self.ejections.saturating_add(1);
        self.consecutive_failures = 0;
        true
    }

    /// Records a successful connect at `now`: resets the failure count (and
    /// forgets an ejection that has already run out), keeps the backoff.
    pub fn on_connect_success(&mut self, now: i64) {
        self.consecutive_failures = 0;
        if !self.is_ejected(now) {
            self.ejected_until = None;
        }
    }

    /// An active health check passed at `now`: lifts any ejection and resets
    /// the backoff.
    pub fn on_active_check_passed(&mut self, now: i64) {
        self.consecutive_failures = 0;
        self.ejections = 0;
        self.ejected_until = None;
        self.last_active_pass_unix = Some(now);
    }

    /// Whether the data path should skip this backend at `now`.
    pub fn is_ejected(&self, now: i64) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// End of the current or most recent ejection (cleared by a pass or a
    /// later successful connect).
    pub fn ejected_until(&self) -> Option<i64> {
        self.ejected_until
    }

    /// Ejections since the last passing active check.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Failed connects in a row (since the last ejection or success).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When an active check last passed.
    pub fn last_active_pass_unix(&self) -> Option<i64> {
        self.last_active_pass_unix
    }

    /// How long the next ejection would last: `base × 2^ejections`, capped.
    pub fn next_backoff_secs(&self) -> u64 {
        let factor = 1u64.checked_shl(self.ejections).unwrap_or(u64::MAX);
        self.cfg
            .base_backoff_secs
            .saturating_mul(factor)
            .min(self.cfg.max_backoff_secs)
    }
}

/// Effective weight `since_up_secs` after re-admission: ramps linearly from
/// 10 % of `weight` at 0 to 100 % at `slow_start_secs`, rounding down but
/// never below 1 for a non-zero weight. `slow_start_secs == 0` disables slow
/// start.
pub fn slow_start_weight(weight: u32, since_up_secs: u64, slow_start_secs: u64) -> u32 {
    if weight == 0 || slow_start_secs == 0 || since_up_secs >= slow_start_secs {
        return weight;
    }
    let (w, t, s) = (
        u128::from(weight),
        u128::from(since_up_secs),
        u128::from(slow_start_secs),
    );
    // weight × (0.1 + 0.9 × t / s) = weight × (s + 9t) / 10s
    let effective = w * (s + 9 * t) / (10 * s);
    u32::try_from(effective).unwrap_or(weight).clamp(1, weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 7. Passive ejection and slow start.
    #[test]
    fn passive_ejector_backoff_doubles_caps_and_clears() {
        let mut e = PassiveEjector::new(EjectorConfig::default());
        let mut now = 1_000;
        // Two failures are tolerated; the third ejects for 1 s.
        assert!(!e.on_connect_failure(now));
        assert!(!e.on_connect_failure(now));
        assert!(e.on_connect_failure(now));
        assert!(e.is_ejected(now));
        assert_eq!(e.ejected_until(), Some(now + 1));
        assert!(!e.is_ejected(now + 1));
        // Failures during an ejection are ignored.
        assert!(!e.on_connect_failure(now));
        assert_eq!(e.ejections(), 1);
        // On probation each single failure ejects for twice as long, up to 60 s.
        let mut lengths = vec![1];
        for _ in 0..9 {
            now = e.ejected_until().unwrap();
            assert!(!e.is_ejected(now));
            assert!(e.on_connect_failure(now));
            lengths.push(e.ejected_until().unwrap() - now);
        }
        assert_eq!(lengths, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // A successful connect does not reset the backoff...
        now = e.ejected_until().unwrap();
        e.on_connect_success(now);
        assert_eq!(e.ejected_until(), None);
        assert!(e.on_connect_failure(now));
        assert_eq!(e.ejected_until(), Some(now + 60));
        // ...an active check does, and lifts the ejection at once.
        e.on_active_check_passed(now + 5);
        assert!(!e.is_ejected(now + 5));
        assert_eq!(e.ejections(), 0);
        assert_eq!(e.last_active_pass_unix(), Some(now + 5));
        assert!(!e.on_connect_failure(now + 6));
        assert!(!e.on_connect_failure(now + 6));
        assert!(e.on_connect_failure(now + 6));
        assert_eq!(e.ejected_until(), Some(now + 7));
        // A success in between restarts the failure count.
        let mut e = PassiveEjector::new(EjectorConfig::default());
        for _ in 0..10 {
            assert!(!e.on_connect_failure(0));
            assert!(!e.on_connect_failure(0));
            e.on_connect_success(0);
        }
        assert_eq!(e.consecutive_failures(), 0);
        // Custom base and cap.
        let cfg = EjectorConfig {
            failure_threshold: 1,
            base_backoff_secs: 5,
            max_backoff_secs: 30,
        };
        assert!(cfg.validate().is_ok());
        let mut e = PassiveEjector::new(cfg);
        let mut got = Vec::new();
        let mut now = 0;
        for _ in 0..5 {
            assert!(e.on_connect_failure(now));
            got.push(e.ejected_until().unwrap() - now);
            now = e.ejected_until().unwrap();
        }
        assert_eq!(got, [5, 10, 20, 30, 30]);
        assert!(EjectorConfig {
            max_backoff_secs: 1,
            ..cfg
        }
        .validate()
        .is_err());
    }

    #[test]
    fn slow_start_ramps_from_ten_to_hundred_percent() {
        assert_eq!(slow_start_weight(100, 0, 60), 10);
        assert_eq!(slow_start_weight(100, 30, 60), 55);
        assert_eq!(slow_start_weight(100, 59, 60), 98);
        assert_eq!(slow_start_weight(100, 60, 60), 100);
        assert_eq!(slow_start_weight(100, 1_000, 60), 100);
        assert_eq!(slow_start_weight(100, 0, 0), 100);
        assert_eq!(slow_start_weight(0, 0, 60), 0);
        // Small weights never drop to zero.
        assert_eq!(slow_start_weight(1, 0, 60), 1);
        assert_eq!(slow_start_weight(5, 0, 60), 1);
        // Monotone and within [10 %, 100 %].
        let mut previous = 0;
        for t in 0..=120 {
            let w = slow_start_weight(1_000, t, 120);
            assert!(w >= previous && (100..=1_000).contains(&w), "{t}: {w}");
            previous = w;
        }
        assert_eq!(previous, 1_000);
    }
}
