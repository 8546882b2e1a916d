//! The region as operators and users see it: the `/stats` view built from the balancer,
//! the health board and the data paths' meters, published for the terminator to serve, and
//! the health/chain gauges of the Prometheus export. Names only: a backend's address never
//! reaches the view (reasons that came from a failed connect are scrubbed of it too).

use std::collections::HashMap;

use metrics::gauge;

use crate::{
    balancer::{BackendState as Member, Balancer},
    health::{
        checks::AgentReport,
        pool::{ChainState, PoolDecision},
        rules::BackendState,
        rules::Verdict,
        Board,
    },
    observe::{
        catalog,
        page::{BackendView, PoolView, Quantiles, RegionView},
        Meters,
    },
};

/// The view of the whole region at `now`.
pub(super) fn region_view(
    balancer: &Balancer,
    board: &Board,
    meters: &Meters,
    decisions: &HashMap<String, PoolDecision>,
    now: i64,
) -> RegionView {
    let mut pools = Vec::new();
    for (pool, members) in balancer.pools() {
        let d = decisions.get(pool);
        pools.push(pool_view(pool, members, board, meters, d, now));
    }
    RegionView {
        generated_at_unix: now,
        clients: pools.iter().map(|p| p.clients).sum(),
        nodes_up: pools.iter().map(|p| p.nodes_up).sum(),
        nodes: pools.iter().map(|p| p.backends.len()).sum(),
        pools,
    }
}

fn pool_view(
    pool: &str,
    members: &[Member],
    board: &Board,
    meters: &Meters,
    decision: Option<&PoolDecision>,
    now: i64,
) -> PoolView {
    let healths: Vec<_> = members
        .iter()
        .map(|m| board.view(pool, &m.name, now))
        .collect();
    let best = healths
        .iter()
        .filter_map(|h| h.head)
        .max_by_key(|s| (s.head_block_number, s.observed_at_unix));
    let backends: Vec<BackendView> = members
        .iter()
        .zip(&healths)
        .map(|(m, h)| {
            let meter = meters.get(pool, &m.name);
            let snap =
                |f: fn(&crate::observe::BackendMeters) -> crate::observe::latency::Snapshot| {
                    meter
                        .as_ref()
                        .map(|x| Quantiles::of(&f(x)))
                        .unwrap_or_default()
                };
            let (mut state, mut reason) = state_words(m, h);
            if let Some(d) = decision.filter(|d| d.keeps(&m.name)) {
                let why = match d.chain {
                    ChainState::Halted { .. } => "kept in: the chain halted",
                    _ => "kept in: too few healthy nodes (panic threshold)",
                };
                (state, reason) = ("kept", format!("{why}; {reason}"));
            }
            BackendView {
                name: m.name.clone(),
                state: state.to_string(),
                reason: scrub(&reason, m),
                available: m.effective_weight() > 0,
                head_block: h.head.map(|s| s.head_block_number),
                head_age_secs: h
                    .head
                    .map(|s| now - s.head_block_time_unix)
                    .map(|a| a.max(0)),
                lag_blocks: match (h.head, best) {
                    (Some(s), Some(b)) => {
                        Some(b.head_block_number.saturating_sub(s.head_block_number))
                    }
                    _ => None,
                },
                connect_ms: snap(|x| x.connect.snapshot()),
                health_rtt_ms: snap(|x| x.health_rtt.snapshot()),
                clients: meter.as_ref().map_or(0, |x| x.clients()),
                in_state_secs: h.changed_at_unix.map(|t| (now - t).max(0)),
            }
        })
        .collect();
    let (chain_state, chain_note) = match decision.map(|d| d.chain) {
        Some(c @ ChainState::Halted { .. }) | Some(c @ ChainState::Advancing { .. }) => {
            (c.label(), c.describe(now))
        }
        _ => ("unknown", "no head reported yet".to_string()),
    };
    let panic = decision.is_some_and(|d| d.panic);
    PoolView {
        name: pool.to_string(),
        chain_state: chain_state.into(),
        chain_note: if panic {
            format!("{chain_note}; too few healthy nodes: the least-bad stay in")
        } else {
            chain_note
        },
        panic,
        best_head_block: best.map(|b| b.head_block_number),
        best_head_age_secs: best.map(|b| (now - b.head_block_time_unix).max(0)),
        clients: backends.iter().map(|b| b.clients).sum(),
        nodes_up: backends.iter().filter(|b| b.available).count(),
        backends,
    }
}

/// State and reason in words, most telling first: drained by the operator, ejected by failed
/// connects, the agent's word, then the health checks.
fn state_words(m: &Member, h: &crate::health::BackendHealth) -> (&'static str, String) {
    if m.weight == 0 {
        return ("drained", "drained by the operator (weight 0)".into());
    }
    if h.ejected {
        return ("ejected", "ejected after failed connects".into());
    }
    match h.agent {
        Some(AgentReport::Down) => return ("down", "its agent reports down".into()),
        Some(AgentReport::Drain) => return ("drained", "its agent asks to drain".into()),
        _ => {}
    }
    let state = match h.state {
        Some(BackendState::Up) => "up",
        Some(BackendState::Down) => "down",
        Some(BackendState::Unknown) | None => "unknown",
    };
    let reason = match &h.verdict {
        None if h.state.is_none() => "not checked yet".to_string(),
        None => "no answer yet".to_string(),
        Some(v) => v.to_string(),
    };
    (state, reason)
}

/// The metric label for why a backend is in its state.
fn reason_label(m: &Member, h: &crate::health::BackendHealth) -> &'static str {
    if m.weight == 0 {
        return "drained";
    }
    if h.ejected {
        return "ejected";
    }
    match (h.agent, &h.verdict) {
        (Some(AgentReport::Down), _) => "agent_down",
        (Some(AgentReport::Drain), _) => "agent_drain",
        (_, None) => "not_checked",
        (_, Some(Verdict::Healthy)) => "healthy",
        (_, Some(Verdict::Stale { .. })) => "stale",
        (_, Some(Verdict::Lagging { .. })) => "lagging",
        (_, Some(Verdict::Unreachable { .. })) => "unreachable",
        (_, Some(Verdict::BadAnswer { .. })) => "bad_answer",
    }
}

/// Removes the backend's address from a text (a failed connect's message may carry it).
fn scrub(text: &str, m: &Member) -> String {
    text.replace(&m.address.to_string(), "[node]")
        .replace(&m.address.ip().to_string(), "[node]")
}

/// Health, chain and ring gauges: state sets are written in full (1 for the current value,
/// 0 for the ones seen before), so a state change never leaves two series at 1.
#[derive(Debug, Default)]
pub(super) struct HealthGauges {
    health: HashMap<(String, String), (&'static str, &'static str)>,
    chain: HashMap<String, &'static str>,
}

impl HealthGauges {
    pub(super) fn export(
        &mut self,
        balancer: &Balancer,
        board: &Board,
        view: &RegionView,
        now: i64,
    ) {
        for (pool, members) in balancer.pools() {
            for m in members {
                let h = board.view(pool, &m.name, now);
                let state = state_words(m, &h).0;
                let reason = reason_label(m, &h);
                let labels = [("pool", pool.to_string()), ("backend", m.name.clone())];
                gauge!(catalog::BACKEND_UP, &labels).set(if m.effective_weight() > 0 {
                    1.0
                } else {
                    0.0
                });
                gauge!(catalog::BACKEND_WEIGHT, &labels).set(m.effective_weight() as f64);
                if let Some(s) = h.head {
                    gauge!(catalog::BACKEND_HEAD_BLOCK, &labels).set(s.head_block_number as f64);
                    gauge!(catalog::BACKEND_HEAD_AGE, &labels)
                        .set((now - s.head_block_time_unix).max(0) as f64);
                }
                let key = (pool.to_string(), m.name.clone());
                if let Some((s0, r0)) = self.health.insert(key, (state, reason)) {
                    if (s0, r0) != (state, reason) {
                        gauge!(catalog::BACKEND_HEALTH, "pool" => pool.to_string(), "backend" => m.name.clone(), "state" => s0, "reason" => r0).set(0.0);
                    }
                }
                gauge!(catalog::BACKEND_HEALTH, "pool" => pool.to_string(), "backend" => m.name.clone(), "state" => state, "reason" => reason).set(1.0);
            }
        }
        for p in &view.pools {
            let state: &'static str = match p.chain_state.as_str() {
                "advancing" => "advancing",
                "halted" => "halted",
                _ => "unknown",
            };
            if let Some(old) = self.chain.insert(p.name.clone(), state) {
                if old != state {
                    gauge!(catalog::POOL_CHAIN_STATE, "pool" => p.name.clone(), "state" => old)
                        .set(0.0);
                }
            }
            gauge!(catalog::POOL_CHAIN_STATE, "pool" => p.name.clone(), "state" => state).set(1.0);
            gauge!(catalog::POOL_NODES_UP, "pool" => p.name.clone()).set(p.nodes_up as f64);
            gauge!(catalog::POOL_PANIC, "pool" => p.name.clone()).set(if p.panic {
                1.0
            } else {
                0.0
            });
            if let Some(b) = p.best_head_block {
                gauge!(catalog::POOL_BEST_HEAD, "pool" => p.name.clone()).set(b as f64);
            }
        }
        for (listener, version, pool) in balancer.ring_versions() {
            gauge!(catalog::RING_VERSION, "listener" => listener.to_string(), "pool" => pool.to_string())
                .set(version as f64);
        }
    }
}
