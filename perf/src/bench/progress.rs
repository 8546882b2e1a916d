//! Progress lines on stderr: which step of how many runs now, and an estimate of what is
//! left (from the planned step lengths, corrected by how long the steps so far really took).

use std::time::{Duration, Instant};

pub struct Progress {
    scenario: String,
    /// Planned seconds of every step, in order.
    plan: Vec<f64>,
    done: usize,
    started: Instant,
}

impl Progress {
    /// `plan`: the expected length of each step, in seconds.
    pub fn new(scenario: &str, plan: Vec<f64>) -> Progress {
        let total: f64 = plan.iter().sum();
        eprintln!(
            "[{scenario}] {} steps, about {} planned",
            plan.len(),
            human(total)
        );
        Progress {
            scenario: scenario.into(),
            plan,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Announces the next step.
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        let left = self.estimate_left(self.started.elapsed());
        eprintln!(
            "[{} {}/{}, ~{} left] {what}",
            self.scenario,
            self.done,
            self.plan.len().max(self.done),
            human(left)
        );
    }

    /// What is left after `elapsed`: the planned rest (this step included), scaled by how the
    /// steps so far compared with their plan.
    fn estimate_left(&self, elapsed: Duration) -> f64 {
        let before = self.done.saturating_sub(1).min(self.plan.len());
        let planned_before: f64 = self.plan[..before].iter().sum();
        let rest: f64 = self.plan[before..].iter().sum();
        let pace = if planned_before > 0.5 {
            (elapsed.as_secs_f64() / planned_before).clamp(0.5, 4.0)
        } else {
            1.0
        };
        rest * pace
    }

    pub fn finish(&self) {
        eprintln!(
            "[{}] done in {}",
            self.scenario,
            human(self.started.elapsed().as_secs_f64())
        );
    }
}

fn human(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_the_real_pace() {
        let mut p = Progress::new("t", vec![10.0, 10.0, 10.0]);
        p.done = 1;
        assert_eq!(p.estimate_left(Duration::ZERO), 30.0);
        p.done = 2;
        // The first step took twice its plan: the rest is expected to as well.
        assert_eq!(p.estimate_left(Duration::from_secs(20)), 40.0);
        p.done = 3;
        assert_eq!(p.estimate_left(Duration::from_secs(20)), 10.0);
        // Faster than planned: the rest is expected faster too (at most twice).
        assert_eq!(p.estimate_left(Duration::from_secs(5)), 5.0);
        assert_eq!(human(75.0), "1m15s");
    }
}
