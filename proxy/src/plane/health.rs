//! Health reports become effective weights: probe results and data-path connect results go
//! to the board, the board's verdict goes to the balancer (ring deltas to the maps), and every
//! ring change is mirrored into the terminator's upstream tables.

use std::{collections::HashMap, time::Duration};

use tracing::{error, info, warn};

use super::{ControlPlane, DataPath};
use crate::{
    balancer::BalancerError,
    config::{health::OnUnhealthy, Config, HealthConfig},
    health::{
        pool::{self, ChainState, PoolDecision},
        BackendHealth, ConnectEvent, Report,
    },
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
        self.apply_pool(&report.pool, now);
    }

    /// A data-path connect result (passive ejection).
    pub fn on_connect(&mut self, ev: ConnectEvent, now: i64) {
        if self.board.connect_result(&ev, now) {
            info!(pool = %ev.pool, backend = %ev.backend, "passive health: ejected after failed connects");
            self.apply_pool(&ev.pool, now);
        }
    }

    /// Re-applies weights while some backend is in slow start or an ejection runs out.
    pub(super) fn tick_ramps(&mut self, now: i64) {
        if !self.board.ramping(now + 1) && !self.board.ejections_pending(now) {
            return;
        }
        let pools: Vec<String> = self.balancer.pools().map(|(p, _)| p.to_string()).collect();
        for p in pools {
            self.apply_pool(&p, now);
        }
    }

    /// Each node's own verdict, then the pool's (chain halt, panic threshold), to the ring.
    pub(super) fn apply_pool(&mut self, pool: &str, now: i64) {
        let Some(members) = self.balancer.backends(pool) else {
            return;
        };
        let was: Vec<bool> = members.iter().map(|m| m.available).collect();
        let own: Vec<(String, bool, u32, bool, BackendHealth)> = members
            .iter()
            .map(|m| {
                let (available, ramp) = self.board.desired(pool, &m.name, now);
                let h = self.board.view(pool, &m.name, now);
                (m.name.clone(), available, ramp, m.weight == 0, h)
            })
            .collect();
        let move_off = self.board.config(pool).and_then(|c| {
            (c.on_unhealthy == OnUnhealthy::Close)
                .then(|| Duration::from_secs(c.move_off_window_secs))
        });
        let threshold = self
            .board
            .config(pool)
            .map_or(0, |c| c.panic_threshold_percent);
        let decision = pool::decide(
            &own.iter()
                .map(|(name, available, _, drained, h)| pool::Member {
                    name,
                    available: *available,
                    drained: *drained,
                    health: h,
                })
                .collect::<Vec<_>>(),
            threshold,
        );
        self.log_pool_change(pool, &decision, now);
        let mut changed = false;
        for ((name, available, ramp, _, _), was) in own.iter().zip(was) {
            let available = *available || decision.keeps(name);
            // Out of the ring for its health: its terminated clients move to in-sync nodes.
            match (was, available, move_off) {
                (true, false, Some(window)) => {
                    info!(pool, backend = %name, window_secs = window.as_secs(), "moving its clients off (close 1012, spread over the window)");
                    self.listeners.move_off(pool, name, Some(window));
                }
                (false, true, _) => self.listeners.move_off(pool, name, None),
                _ => {}
            }
            match self
                .balancer
                .set_health(pool, name, available, *ramp, &mut self.maps)
            {
                Ok(c) => changed |= c,
                // Removed meanwhile: its probe stops at the next sync.
                Err(BalancerError::NoBackend { .. }) | Err(BalancerError::NoPool(_)) => {}
                Err(e) => error!(pool, backend = %name, "applying health failed: {e:#}"),
            }
        }
        if changed {
            self.listeners.refresh(&self.balancer);
        }
        self.pool_decisions.insert(pool.to_string(), decision);
    }

    /// Says loudly when a pool enters or leaves a chain halt or its panic threshold.
    fn log_pool_change(&self, pool: &str, new: &PoolDecision, now: i64) {
        let old = self.pool_decisions.get(pool);
        let was_halted = old.is_some_and(|d| matches!(d.chain, ChainState::Halted { .. }));
        let halted = matches!(new.chain, ChainState::Halted { .. });
        if halted && !was_halted {
            warn!(pool, kept_in = ?new.kept_in, "{}: every answering node is stale at the same head; they all stay in", new.chain.describe(now));
        } else if was_halted && !halted {
            info!(pool, "chain resumed: {}", new.chain.describe(now));
        }
        let was_panic = old.is_some_and(|d| d.panic);
        if new.panic && (!was_panic || old.map(|d| &d.kept_in) != Some(&new.kept_in)) {
            warn!(pool, kept_in = ?new.kept_in, "panic threshold: too few healthy nodes; the least-bad ones stay in the ring");
        } else if was_panic && !new.panic {
            info!(pool, "panic over: enough healthy nodes again");
        }
    }
}
