//! Damping verdicts into a backend state: rise/fall counters, transitions, and the one-line
//! explanation `proxy backends list` shows.

use std::fmt;

use super::{RuleConfig, Verdict};

/// A backend's damped health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Not decided yet (just added, or the proxy just started).
    Unknown,
    /// Serving traffic.
    Up,
    /// Taken out of rotation.
    Down,
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendState::Unknown => "unknown",
            BackendState::Up => "up",
            BackendState::Down => "down",
        })
    }
}

/// A change of [`BackendState`], returned by [`HealthState::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state before.
    pub from: BackendState,
    /// The state after.
    pub to: BackendState,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// Rise/fall state machine of one backend.
///
/// * Up → Down after `fall` consecutive unhealthy verdicts.
/// * Down → Up after `rise` consecutive healthy verdicts.
/// * [`HealthState::new`] starts in `Unknown`, which becomes Up on the
///   **first** healthy verdict (a restarted proxy serves at once instead of
///   waiting `rise` checks) and Down after `fall` consecutive unhealthy ones.
///   Only Up counts as routable ([`HealthState::is_up`]).
///   [`HealthState::starting_in`] starts Down (conservative: `rise` checks
///   needed) or Up (optimistic) instead.
///
/// Consequence: Up and Down alternate no faster than every `fall` (Up→Down)
/// and `rise` (Down→Up) checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    state: BackendState,
    consecutive_ok: u32,
    consecutive_failed: u32,
    checks: u64,
    failed_checks: u64,
    transitions: u64,
    last_verdict: Option<Verdict>,
    last_transition: Option<Transition>,
    changed_at_unix: Option<i64>,
}

impl HealthState {
    /// A fresh backend in `Unknown`.
    pub fn new(cfg: &RuleConfig) -> Self {
        Self::starting_in(cfg, BackendState::Unknown)
    }

    /// A fresh backend in the given state.
    pub fn starting_in(cfg: &RuleConfig, state: BackendState) -> Self {
        Self {
            rise: cfg.rise.max(1),
            fall: cfg.fall.max(1),
            state,
            consecutive_ok: 0,
            consecutive_failed: 0,
            checks: 0,
            failed_checks: 0,
            transitions: 0,
            last_verdict: None,
            last_transition: None,
            changed_at_unix: None,
        }
    }

    /// Records a verdict; returns the transition it caused, if any.
    pub fn record(&mut self, verdict: Verdict) -> Option<Transition> {
        self.apply(verdict, None)
    }

    /// Like [`HealthState::record`], also remembering when a transition
    /// happened ([`HealthState::changed_at_unix`], e.g. for slow start).
    pub fn record_at(&mut self, now_unix: i64, verdict: Verdict) -> Option<Transition> {
        self.apply(verdict, Some(now_unix))
    }

    fn apply(&mut self, verdict: Verdict, now_unix: Option<i64>) -> Option<Transition> {
        self.checks = self.checks.saturating_add(1);
        let healthy = verdict.is_healthy();
        if healthy {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_failed = 0;
        } else {
            self.consecutive_failed = self.consecutive_failed.saturating_add(1);
            self.consecutive_ok = 0;
            self.failed_checks = self.failed_checks.saturating_add(1);
        }
        self.last_verdict = Some(verdict);
        let next = match (self.state, healthy) {
            (BackendState::Unknown, true) => BackendState::Up,
            (BackendState::Down, true) if self.consecutive_ok >= self.rise => BackendState::Up,
            (BackendState::Unknown | BackendState::Up, false)
                if self.consecutive_failed >= self.fall =>
            {
                BackendState::Down
            }
            (same, _) => same,
        };
        if next == self.state {
            return None;
        }
        let transition = Transition {
            from: self.state,
            to: next,
        };
        self.state = next;
        self.transitions = self.transitions.saturating_add(1);
        self.last_transition = Some(transition);
        if now_unix.is_some() {
            self.changed_at_unix = now_unix;
        }
        Some(transition)
    }

    /// The current state.
    pub fn state(&self) -> BackendState {
        self.state
    }

    /// Whether the backend should receive traffic (state Up).
    pub fn is_up(&self) -> bool {
        self.state == BackendState::Up
    }

    /// The most recent verdict.
    pub fn last_verdict(&self) -> Option<&Verdict> {
        self.last_verdict.as_ref()
    }

    /// The most recent transition.
    pub fn last_transition(&self) -> Option<Transition> {
        self.last_transition
    }

    /// When the most recent transition happened, if it was recorded with
    /// [`HealthState::record_at`].
    pub fn changed_at_unix(&self) -> Option<i64> {
        self.changed_at_unix
    }

    /// Healthy verdicts in a row (0 after an unhealthy one).
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_ok
    }

    /// Unhealthy verdicts in a row (0 after a healthy one).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failed
    }

    /// Verdicts recorded so far.
    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// Unhealthy verdicts recorded so far.
    pub fn failed_checks(&self) -> u64 {
        self.failed_checks
    }

    /// Transitions so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// One line for `proxy backends list`: the state, progress towards the
    /// next transition, and the last verdict.
    pub fn why(&self) -> String {
        let Some(verdict) = &self.last_verdict else {
            return format!("{}: not checked yet", self.state);
        };
        let (ok, failed) = (self.consecutive_ok, self.consecutive_failed);
        match (self.state, verdict.is_healthy()) {
            (BackendState::Up, true) => format!("up: healthy ({ok} checks in a row)"),
            (BackendState::Up, false) => {
                format!("up, failing {failed}/{}: {verdict}", self.fall)
            }
            (BackendState::Down, false) => {
                format!("down: {verdict} ({failed} failed checks in a row)")
            }
            (BackendState::Down, true) => {
                format!("down, recovering {ok}/{}: healthy", self.rise)
            }
            (BackendState::Unknown, _) => {
                format!("unknown, failing {failed}/{}: {verdict}", self.fall)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_state_start_and_why() {
        let cfg = RuleConfig::default();
        let mut state = HealthState::new(&cfg);
        assert_eq!(state.state(), BackendState::Unknown);
        assert!(!state.is_up());
        assert_eq!(state.why(), "unknown: not checked yet");
        let stale = Verdict::Stale {
            age_secs: 20,
            allowed_secs: 12,
        };
        // Unknown -> Down after `fall` failures.
        assert_eq!(state.record(stale.clone()), None);
        assert_eq!(
            state.why(),
            "unknown, failing 1/3: stale: head block is 20 s old, 12 s allowed"
        );
        assert_eq!(state.record(stale.clone()), None);
        let t = state.record_at(1_000, stale.clone()).unwrap();
        assert_eq!(t.to_string(), "unknown -> down");
        assert_eq!(state.changed_at_unix(), Some(1_000));
        assert_eq!(
            state.why(),
            "down: stale: head block is 20 s old, 12 s allowed (3 failed checks in a row)"
        );
        // Down -> Up after `rise` successes.
        assert_eq!(state.record(Verdict::Healthy), None);
        assert_eq!(state.why(), "down, recovering 1/2: healthy");
        let t = state.record_at(1_010, Verdict::Healthy).unwrap();
        assert_eq!((t.from, t.to), (BackendState::Down, BackendState::Up));
        assert_eq!(state.changed_at_unix(), Some(1_010));
        assert_eq!(state.why(), "up: healthy (2 checks in a row)");
        let lag = Verdict::Lagging {
            behind_blocks: 12,
            max: 10,
        };
        assert_eq!(state.record(lag.clone()), None);
        assert_eq!(
            state.why(),
            "up, failing 1/3: lagging: 12 blocks behind the best head (limit 10)"
        );
        assert_eq!(state.last_verdict(), Some(&lag));
        assert_eq!(state.checks(), 6);
        assert_eq!(state.failed_checks(), 4);
        assert_eq!(state.transitions(), 2);
        assert_eq!(state.consecutive_failures(), 1);
        assert_eq!(state.consecutive_successes(), 0);

        // Unknown -> Up on the very first healthy verdict.
        let mut state = HealthState::new(&cfg);
        let t = state.record(Verdict::Healthy).unwrap();
        assert_eq!((t.from, t.to), (BackendState::Unknown, BackendState::Up));
        // Started Down: needs `rise` successes.
        let mut state = HealthState::starting_in(&cfg, BackendState::Down);
        assert_eq!(state.record(Verdict::Healthy), None);
        assert!(state.record(Verdict::Healthy).is_some());
    }
}
