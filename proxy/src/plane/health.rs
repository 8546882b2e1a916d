//! Health reports become effective weights: probe results and data-path connect results go
//! to the board, the board's verdict goes to the balancer (ring deltas to the maps), and every
//! ring change is mirrored into the terminator's upstream tables.

use std::collections::HashMap;

use tracing::{error, info};

use super::{ControlPlane, DataPath};
use crate::{
    balancer::BalancerError,
    config::{Config, HealthConfig},
    health::{ConnectEvent, Report},
};

/// The health settings of every checked pool.
pub(super) fn configs(config: &Config) -> HashMap<String, HealthConfig> {
    config
        .pools
        .iter()
        .filter_map(|(name, p)| p.health.clone().map(|h| (name.clone(), h)))
        .collect()
}

impl<M: DataPath> ControlPlane<M> {
    /// A probe report: health state, then the backend's effective weight.
    pub fn on_health(&mut self, report: Report, now: i64) {
        if let Ok(answer) = &report.outcome.probe {
            self.meters
                .backend(&report.pool, &report.name)
                .record_health_rtt(answer.rtt);
        }
        if let Some(change) = self
            .board
            .record(&report.pool, &report.name, report.outcome, now)
        {
            let why = self
                .board
                .why(&report.pool, &report.name)
                .unwrap_or_default();
            info!(pool = %report.pool, backend = %report.name, "health: {change}: {why}");
        }
        self.apply_desired(&report.pool, &report.name, now);
    }

    /// A data-path connect result (passive ejection).
    pub fn on_connect(&mut self, ev: ConnectEvent, now: i64) {
        if self.board.connect_result(&ev, now) {
            info!(pool = %ev.pool, backend = %ev.backend, "passive health: ejected after failed connects");
            self.apply_desired(&ev.pool, &ev.backend, now);
        }
    }

    /// Re-applies weights while some backend is in slow start or an ejection runs out.
    pub(super) fn tick_ramps(&mut self, now: i64) {
        if !self.board.ramping(now + 1) && !self.board.ejections_pending(now) {
            return;
        }
        let names: Vec<(String, String)> = self
            .balancer
            .pools()
            .flat_map(|(p, bs)| bs.iter().map(move |b| (p.to_string(), b.name.clone())))
            .collect();
        for (p, n) in names {
            self.apply_desired(&p, &n, now);
        }
    }

    fn apply_desired(&mut self, pool: &str, name: &str, now: i64) {
        let (available, ramp) = self.board.desired(pool, name, now);
        match self
            .balancer
            .set_health(pool, name, available, ramp, &mut self.maps)
        {
            Ok(true) => self.listeners.refresh(&self.balancer),
            Ok(false) => {}
            // Removed meanwhile: its probe stops at the next sync.
            Err(BalancerError::NoBackend { .. }) | Err(BalancerError::NoPool(_)) => {}
            Err(e) => error!(pool, backend = name, "applying health failed: {e:#}"),
        }
    }
}
