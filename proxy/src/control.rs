//! Control-plane reactions shared by `proxy run` and the tests: health reports become
//! effective weights (ring deltas to the data plane), and every pool change is mirrored into
//! the terminator's tables. Generic over the map writer, so tests run them without a kernel.

use std::collections::HashMap;

use metrics::gauge;
use tracing::{error, info};

use crate::{
    balancer::{Balancer, BalancerError, MapWriter},
    config::{Config, ListenerConfig},
    health::{checks::unix_now, Board, ConnectEvent, HealthConfig, Report},
    terminator::{self, server::ListenerSpec},
};

pub fn refresh_terminator(balancer: &Balancer, terminated: &[(ListenerConfig, ListenerSpec)]) {
    for (l, spec) in terminated {
        match terminator::upstream_set(balancer, l) {
            Ok(set) => spec.ctx.upstreams.replace(set),
            Err(e) => error!("listener {}: {e}", l.name),
        }
    }
}

pub fn health_configs(config: &Config) -> HashMap<String, HealthConfig> {
    config
        .pools
        .iter()
        .filter_map(|(name, p)| p.health.clone().map(|h| (name.clone(), h)))
        .collect()
}

/// Applies a probe report: health state, then the backend's effective weight.
pub fn apply_health<W: MapWriter>(
    report: Report,
    board: &mut Board,
    balancer: &mut Balancer,
    maps: &mut W,
    terminated: &[(ListenerConfig, ListenerSpec)],
) {
    let now = unix_now();
    if let Some(change) = board.record(&report.pool, &report.name, report.outcome, now) {
        let why = board.why(&report.pool, &report.name).unwrap_or_default();
        info!(pool = %report.pool, backend = %report.name, "health: {change}: {why}");
    }
    apply_desired(
        &report.pool,
        &report.name,
        board,
        balancer,
        maps,
        terminated,
        now,
    );
}

pub fn apply_desired<W: MapWriter>(
    pool: &str,
    name: &str,
    board: &Board,
    balancer: &mut Balancer,
    maps: &mut W,
    terminated: &[(ListenerConfig, ListenerSpec)],
    now: i64,
) {
    let (available, ramp) = board.desired(pool, name, now);
    gauge!("proxy_backend_up", "backend" => name.to_string()).set(if available {
        1.0
    } else {
        0.0
    });
    match balancer.set_health(pool, name, available, ramp, maps) {
        Ok(true) => refresh_terminator(balancer, terminated),
        Ok(false) => {}
        // Removed meanwhile: its probe stops at the next sync.
        Err(BalancerError::NoBackend { .. }) | Err(BalancerError::NoPool(_)) => {}
        Err(e) => error!(pool, backend = name, "applying health failed: {e:#}"),
    }
}

/// Applies a data-path connect result (passive ejection).
pub fn apply_connect_event<W: MapWriter>(
    ev: ConnectEvent,
    board: &mut Board,
    balancer: &mut Balancer,
    maps: &mut W,
    terminated: &[(ListenerConfig, ListenerSpec)],
) {
    let now = unix_now();
    if board.connect_result(&ev, now) {
        info!(pool = %ev.pool, backend = %ev.backend, "passive health: ejected after failed connects");
        apply_desired(
            &ev.pool,
            &ev.backend,
            board,
            balancer,
            maps,
            terminated,
            now,
        );
    }
}

/// Re-applies weights while some backend is in slow start.
pub fn tick_ramps<W: MapWriter>(
    board: &Board,
    balancer: &mut Balancer,
    maps: &mut W,
    terminated: &[(ListenerConfig, ListenerSpec)],
    now: i64,
) {
    if !board.ramping(now + 1) && !board.ejections_pending(now) {
        return;
    }
    let names: Vec<(String, String)> = balancer
        .pools()
        .flat_map(|(p, bs)| bs.iter().map(move |b| (p.to_string(), b.name.clone())))
        .collect();
    for (p, n) in names {
        apply_desired(&p, &n, board, balancer, maps, terminated, now);
    }
}
