//! Backend health: chain-aware rules (`rules`), probes (`checks`), the per-backend record
//! (`Board`, pure) and the probe tasks (`Supervisor`). The control plane turns the board's
//! answer into an effective weight; an unhealthy backend leaves the ring, but its pinned
//! flows are left alone (a lagging node still serves its clients until they reconnect).

pub mod checks;
pub mod pool;
pub mod rules;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};

use checks::{AgentReport, Answer, ProbeError};
use rules::{
    judge, BackendState, EjectorConfig, HeadSample, HealthState, PassiveEjector, RuleConfig,
    Transition, Verdict,
};

use crate::{balancer::Balancer, chain::ChainParams};

/// Settings from the config (`[pools.NAME.health]`); re-exported where the health code
/// always found them.
pub use crate::config::health::HealthConfig;

/// Chain timing set in the config; `None` means read it from the node.
fn chain_override(cfg: &HealthConfig) -> Option<ChainParams> {
    let d = ChainParams::BITSHARES_MAINNET;
    (cfg.block_interval_secs.is_some()
        || cfg.maintenance_interval_secs.is_some()
        || cfg.maintenance_skip_slots.is_some())
    .then(|| {
        ChainParams::from_secs(
            cfg.block_interval_secs.unwrap_or(d.block_interval_secs()),
            cfg.maintenance_interval_secs
                .unwrap_or(d.maintenance_interval_secs),
            cfg.maintenance_skip_slots
                .unwrap_or(d.maintenance_skip_slots),
        )
    })
}

/// The rule parameters a pool's settings ask for, over the chain's defaults.
fn rule_config(cfg: &HealthConfig, params: &ChainParams) -> RuleConfig {
    let mut r = RuleConfig::for_chain(params);
    r.rise = cfg.rise;
    r.fall = cfg.fall;
    if let Some(m) = cfg.margin_secs {
        r.margin_secs = m;
    }
    if let Some(l) = cfg.max_lag_blocks {
        r.max_lag_blocks = l;
    }
    r
}

/// One probe round's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub probe: Result<Answer, ProbeError>,
    pub agent: Option<Result<AgentReport, ProbeError>>,
}

/// What the board knows about one backend.
#[derive(Debug, Clone)]
struct Tracked {
    state: HealthState,
    params: ChainParams,
    last_sample: Option<HeadSample>,
    agent: Option<AgentReport>,
    agent_error: Option<ProbeError>,
    up_since: Option<i64>,
}

/// A connection attempt from the data path (the terminator), for passive ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectEvent {
    pub pool: String,
    pub backend: String,
    pub ok: bool,
}

/// Health of every backend (pure: fed by probe results and data-path connect results, read
/// by the control plane).
#[derive(Debug, Default)]
pub struct Board {
    configs: HashMap<String, HealthConfig>,
    tracked: HashMap<(String, String), Tracked>,
    /// Passive ejection works for every pool, checked or not.
    ejectors: HashMap<(String, String), PassiveEjector>,
}

impl Board {
    pub fn new(configs: HashMap<String, HealthConfig>) -> Self {
        Self {
            configs,
            tracked: HashMap::new(),
            ejectors: HashMap::new(),
        }
    }

    /// Records a data-path connect result; true when the backend was just ejected.
    pub fn connect_result(&mut self, ev: &ConnectEvent, now_unix: i64) -> bool {
        let key = (ev.pool.clone(), ev.backend.clone());
        if ev.ok {
            if let Some(e) = self.ejectors.get_mut(&key) {
                e.on_connect_success(now_unix);
            }
            return false;
        }
        self.ejectors
            .entry(key)
            .or_insert_with(|| PassiveEjector::new(EjectorConfig::default()))
            .on_connect_failure(now_unix)
    }

    /// Whether some ejection is running or just ended (weights need re-applying).
    pub fn ejections_pending(&self, now_unix: i64) -> bool {
        self.ejectors
            .values()
            .any(|e| e.ejected_until().is_some_and(|u| u + 2 >= now_unix))
    }

    pub fn set_configs(&mut self, configs: HashMap<String, HealthConfig>) {
        self.configs = configs;
        let pools: HashSet<String> = self.configs.keys().cloned().collect();
        self.tracked.retain(|(p, _), _| pools.contains(p));
    }

    pub fn config(&self, pool: &str) -> Option<&HealthConfig> {
        self.configs.get(pool)
    }

    /// Forgets backends that no longer exist.
    pub fn retain(&mut self, live: &HashSet<(String, String)>) {
        self.tracked.retain(|k, _| live.contains(k));
        self.ejectors.retain(|k, _| live.contains(k));
    }

    /// The best head among the pool's backends that are not down (the lag reference).
    fn best_head(&self, pool: &str, except: &str) -> Option<u64> {
        self.tracked
            .iter()
            .filter(|((p, n), t)| p == pool && n != except && t.state.state() != BackendState::Down)
            .filter_map(|(_, t)| t.last_sample.map(|s| s.head_block_number))
            .max()
    }

    /// Records one probe round; returns the state change, if any.
    pub fn record(
        &mut self,
        pool: &str,
        name: &str,
        outcome: Outcome,
        now_unix: i64,
    ) -> Option<Transition> {
        let cfg = self.configs.get(pool)?.clone();
        let override_params = chain_override(&cfg);
        let best = self.best_head(pool, name);
        let t = self
            .tracked
            .entry((pool.to_string(), name.to_string()))
            .or_insert_with(|| {
                let params = override_params.unwrap_or_default();
                Tracked {
                    state: HealthState::new(&rule_config(&cfg, &params)),
                    params,
                    last_sample: None,
                    agent: None,
                    agent_error: None,
                    up_since: None,
                }
            });
        if let Some(agent) = outcome.agent {
            match agent {
                Ok(r) => {
                    t.agent = Some(r);
                    t.agent_error = None;
                }
                Err(e) => t.agent_error = Some(e),
            }
        }
        let verdict = match outcome.probe {
            Err(e) if e.kind.is_bad_answer() => Verdict::BadAnswer {
                reason: e.to_string(),
            },
            Err(e) => Verdict::Unreachable {
                reason: e.to_string(),
            },
            Ok(answer) => {
                if let (Some(p), None) = (answer.params, override_params) {
                    t.params = p;
                }
                match answer.sample {
                    Some(sample) => {
                        t.last_sample = Some(sample);
                        judge(&t.params, &rule_config(&cfg, &t.params), &sample, best)
                    }
                    None => Verdict::Healthy,
                }
            }
        };
        if verdict.is_healthy() {
            if let Some(e) = self.ejectors.get_mut(&(pool.to_string(), name.to_string())) {
                e.on_active_check_passed(now_unix);
            }
        }
        let change = t.state.record_at(now_unix, verdict);
        if let Some(tr) = change {
            t.up_since = (tr.to == BackendState::Up).then_some(now_unix);
        }
        change
    }

    /// Whether the backend should take new flows, and its slow-start share (per mille).
    pub fn desired(&self, pool: &str, name: &str, now_unix: i64) -> (bool, u32) {
        let key = (pool.to_string(), name.to_string());
        if self
            .ejectors
            .get(&key)
            .is_some_and(|e| e.is_ejected(now_unix))
        {
            return (false, 1000);
        }
        let Some(t) = self.tracked.get(&key) else {
            return (true, 1000);
        };
        // Unknown (just added, or just started) fails open: the first failures decide.
        let mut available = t.state.state() != BackendState::Down;
        let mut ramp = 1000u32;
        if let (Some(since), Some(cfg)) = (t.up_since, self.configs.get(pool)) {
            let elapsed = now_unix.saturating_sub(since).max(0) as u64;
            ramp = rules::slow_start_weight(1000, elapsed, cfg.slow_start_secs);
        }
        match t.agent {
            Some(AgentReport::Down) | Some(AgentReport::Drain) => available = false,
            Some(AgentReport::WeightPercent(p)) => ramp = ramp * p / 100,
            _ => {}
        }
        if ramp == 0 {
            available = false;
        }
        (available, ramp.max(1))
    }

    /// Whether any backend is still ramping up (the control plane then re-applies weights).
    pub fn ramping(&self, now_unix: i64) -> bool {
        self.tracked.iter().any(
            |((pool, _), t)| match (t.up_since, self.configs.get(pool)) {
                (Some(s), Some(c)) => {
                    c.slow_start_secs > 0 && now_unix.saturating_sub(s) <= c.slow_start_secs as i64
                }
                _ => false,
            },
        )
    }

    /// Human-readable state and reason, for `proxy backends list`.
    pub fn why(&self, pool: &str, name: &str) -> Option<String> {
        let key = (pool.to_string(), name.to_string());
        let ejected = self
            .ejectors
            .get(&key)
            .and_then(|e| e.ejected_until().map(|u| (u, e.ejections())));
        let Some(t) = self.tracked.get(&key) else {
            return ejected.map(|(u, n)| {
                format!("ejected after failed connects (ejection {n}, until unix {u})")
            });
        };
        let mut s = t.state.why();
        if let Some((u, n)) = ejected {
            s += &format!("; ejected after failed connects (ejection {n}, until unix {u})");
        }
        if let Some(a) = t.agent {
            s += &format!("; agent says {a:?}");
        }
        if let Some(e) = &t.agent_error {
            s += &format!("; agent: {e}");
        }
        Some(s)
    }

    /// What the `/stats` page and the metrics show of a backend's health.
    pub fn view(&self, pool: &str, name: &str, now_unix: i64) -> BackendHealth {
        let key = (pool.to_string(), name.to_string());
        let ejected = self
            .ejectors
            .get(&key)
            .is_some_and(|e| e.is_ejected(now_unix));
        let t = self.tracked.get(&key);
        BackendHealth {
            state: t.map(|t| t.state.state()),
            verdict: t.and_then(|t| t.state.last_verdict().cloned()),
            ejected,
            agent: t.and_then(|t| t.agent),
            head: t.and_then(|t| t.last_sample),
            changed_at_unix: t.and_then(|t| t.state.changed_at_unix()),
        }
    }

    pub fn state(&self, pool: &str, name: &str) -> Option<BackendState> {
        self.tracked
            .get(&(pool.to_string(), name.to_string()))
            .map(|t| t.state.state())
    }
}

/// A backend's health as the board sees it (see [`Board::view`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendHealth {
    /// None: no probe result yet, or the pool is not checked.
    pub state: Option<BackendState>,
    pub verdict: Option<rules::Verdict>,
    /// Ejected by passive health (failed connects) right now.
    pub ejected: bool,
    pub agent: Option<AgentReport>,
    /// The last head the node reported.
    pub head: Option<HeadSample>,
    pub changed_at_unix: Option<i64>,
}

/// A probe task's report.
#[derive(Debug)]
pub struct Report {
    pub pool: String,
    pub name: String,
    pub id: u32,
    pub outcome: Outcome,
}

/// The probe tasks: one per checked backend, restarted when the backend set changes.
pub struct Supervisor {
    tx: mpsc::Sender<Report>,
    tasks: HashMap<(String, String, u32), (SocketAddr, JoinHandle<()>)>,
}

impl Supervisor {
    pub fn new() -> (Self, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(256);
        (
            Self {
                tx,
                tasks: HashMap::new(),
            },
            rx,
        )
    }

    /// Starts probes for new backends of checked pools and stops those of removed ones.
    pub fn sync(&mut self, balancer: &Balancer, board: &Board) {
        let mut want = HashSet::new();
        for (pool, backends) in balancer.pools() {
            let Some(cfg) = board.config(pool) else {
                continue;
            };
            for b in backends {
                let key = (pool.to_string(), b.name.clone(), b.id);
                want.insert(key.clone());
                if self
                    .tasks
                    .get(&key)
                    .is_some_and(|(addr, _)| *addr == b.address)
                {
                    continue;
                }
                let handle = tokio::spawn(probe_loop(
                    key.clone(),
                    b.address,
                    cfg.clone(),
                    self.tx.clone(),
                ));
                if let Some((_, old)) = self.tasks.insert(key, (b.address, handle)) {
                    old.abort();
                }
            }
        }
        self.tasks.retain(|k, (_, h)| {
            let keep = want.contains(k);
            if !keep {
                h.abort();
            }
            keep
        });
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for (_, (_, h)) in self.tasks.drain() {
            h.abort();
        }
    }
}

/// Chain parameters are re-read every this many probes.
const PARAMS_EVERY: u64 = 100;

use crate::observe::catalog::{AGENT_FAILURES, PROBE_FAILURES};

/// Counts a failed probe or agent poll in `counter`.
fn count_failure(counter: &'static str, key: &(String, String, u32), e: &ProbeError) {
    metrics::counter!(
        counter,
        "pool" => key.0.clone(),
        "backend" => key.1.clone(),
        "kind" => e.kind.label()
    )
    .increment(1);
}

async fn probe_loop(
    key: (String, String, u32),
    addr: SocketAddr,
    cfg: HealthConfig,
    tx: mpsc::Sender<Report>,
) {
    let interval = Duration::from_millis(cfg.interval_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let want_params = chain_override(&cfg).is_none() && n.is_multiple_of(PARAMS_EVERY);
        let probe = checks::probe(cfg.check, addr, &cfg.path, timeout, want_params).await;
        // The round trip of a good answer is recorded by the plane (`Meters`).
        if let Err(e) = &probe {
            count_failure(PROBE_FAILURES, &key, e);
        }
        let agent = match cfg.agent_port {
            Some(port) => Some(checks::agent(SocketAddr::new(addr.ip(), port), timeout).await),
            None => None,
        };
        if let Some(Err(e)) = &agent {
            count_failure(AGENT_FAILURES, &key, e);
        }
        n += 1;
        let report = Report {
            pool: key.0.clone(),
            name: key.1.clone(),
            id: key.2,
            outcome: Outcome { probe, agent },
        };
        if tx.send(report).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        toml::from_str(
            r#"check = "bitshares-ws"
               rise = 2
               fall = 2
               slow_start_secs = 10
               block_interval_secs = 3
               maintenance_interval_secs = 3600
               maintenance_skip_slots = 3"#,
        )
        .unwrap()
    }

    fn answer(head: u64, age: i64, now: i64) -> Outcome {
        Outcome {
            probe: Ok(Answer {
                rtt: Duration::from_millis(1),
                sample: Some(HeadSample {
                    observed_at_unix: now,
                    head_block_number: head,
                    head_block_time_unix: now - age,
                    next_maintenance_time_unix: now + 1800,
                }),
                params: None,
            }),
            agent: None,
        }
    }

    #[test]
    fn stale_node_goes_down_after_fall_and_ramps_back() {
        let mut b = Board::new(HashMap::from([("eu".to_string(), cfg())]));
        let now = 1_800_000_000;
        assert_eq!(
            b.desired("eu", "a", now),
            (true, 1000),
            "unknown fails open"
        );
        b.record("eu", "a", answer(100, 1, now), now);
        b.record("eu", "b", answer(100, 1, now), now);
        assert!(b
            .record("eu", "a", answer(100, 60, now + 3), now + 3)
            .is_none());
        let down = b
            .record("eu", "a", answer(100, 63, now + 6), now + 6)
            .expect("down after fall = 2");
        assert_eq!(down.to, BackendState::Down);
        assert!(!b.desired("eu", "a", now + 6).0);
        assert!(
            b.why("eu", "a").unwrap().contains("down"),
            "{:?}",
            b.why("eu", "a")
        );
        b.record("eu", "a", answer(110, 1, now + 9), now + 9);
        let up = b
            .record("eu", "a", answer(111, 1, now + 12), now + 12)
            .expect("up after rise = 2");
        assert_eq!(up.to, BackendState::Up);
        let (avail, ramp) = b.desired("eu", "a", now + 12);
        assert!(avail && ramp <= 150, "slow start begins near 10%: {ramp}");
        assert!(b.ramping(now + 15));
        assert_eq!(b.desired("eu", "a", now + 30), (true, 1000));
    }

    #[test]
    fn lagging_node_is_out_and_agent_can_drain() {
        let no_slow_start = HealthConfig {
            slow_start_secs: 0,
            ..cfg()
        };
        let mut b = Board::new(HashMap::from([("eu".to_string(), no_slow_start)]));
        let now = 1_800_000_000;
        for i in 0..3 {
            b.record(
                "eu",
                "best",
                answer(1000 + i, 1, now + i as i64),
                now + i as i64,
            );
            b.record(
                "eu",
                "slow",
                answer(985 + i, 1, now + i as i64),
                now + i as i64,
            );
        }
        assert_eq!(b.state("eu", "slow"), Some(BackendState::Down));
        assert_eq!(b.state("eu", "best"), Some(BackendState::Up));
        let drained = Outcome {
            agent: Some(Ok(AgentReport::Drain)),
            ..answer(1003, 1, now + 3)
        };
        b.record("eu", "best", drained, now + 3);
        assert!(!b.desired("eu", "best", now + 3).0, "agent drain");
        let half = Outcome {
            agent: Some(Ok(AgentReport::WeightPercent(50))),
            ..answer(1004, 1, now + 4)
        };
        b.record("eu", "best", half, now + 4);
        assert_eq!(b.desired("eu", "best", now + 4), (true, 500));
    }

    #[test]
    fn failed_connects_eject_until_an_active_check_passes() {
        let mut b = Board::new(HashMap::from([("eu".to_string(), cfg())]));
        let fail = ConnectEvent {
            pool: "eu".into(),
            backend: "a".into(),
            ok: false,
        };
        let t = 1_800_000_000;
        assert!(!b.connect_result(&fail, t));
        assert!(!b.connect_result(&fail, t));
        assert!(b.connect_result(&fail, t), "third failure ejects");
        assert!(!b.desired("eu", "a", t).0);
        assert!(b.why("eu", "a").unwrap().contains("ejected"));
        assert!(b.ejections_pending(t));
        // An active pass lifts it at once.
        b.record("eu", "a", answer(100, 1, t), t);
        assert!(b.desired("eu", "a", t).0);
        // Unchecked pools are ejected too (and recover when the backoff ends).
        let other = ConnectEvent {
            pool: "us".into(),
            backend: "x".into(),
            ok: false,
        };
        for _ in 0..3 {
            b.connect_result(&other, t);
        }
        assert!(!b.desired("us", "x", t).0);
        assert!(b.desired("us", "x", t + 5).0);
    }

    #[test]
    fn probe_failures_are_counted_by_kind() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let key = ("eu".to_string(), "node-1".to_string(), 7);
        metrics::with_local_recorder(&recorder, || {
            crate::observe::catalog::describe_all();
            let refused = ProbeError::new(checks::ProbeErrorKind::Connect, "refused");
            count_failure(PROBE_FAILURES, &key, &refused);
            count_failure(PROBE_FAILURES, &key, &refused);
            let late = ProbeError::new(checks::ProbeErrorKind::Timeout, "no answer");
            count_failure(PROBE_FAILURES, &key, &late);
            let word = ProbeError::new(checks::ProbeErrorKind::AgentFormat, "banana");
            count_failure(AGENT_FAILURES, &key, &word);
        });
        let text = handle.render();
        for line in [
            "# HELP proxy_health_probe_failures_total Failed active health probes",
            "# TYPE proxy_health_probe_failures_total counter",
            r#"proxy_health_probe_failures_total{pool="eu",backend="node-1",kind="connect"} 2"#,
            r#"proxy_health_probe_failures_total{pool="eu",backend="node-1",kind="timeout"} 1"#,
            r#"proxy_health_agent_failures_total{pool="eu",backend="node-1",kind="agent_format"} 1"#,
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn unreachable_counts_as_failure() {
        let mut b = Board::new(HashMap::from([("eu".to_string(), cfg())]));
        let fail = || Outcome {
            probe: Err(ProbeError::new(
                checks::ProbeErrorKind::Connect,
                "Connection refused",
            )),
            agent: None,
        };
        b.record("eu", "a", fail(), 1);
        let t = b.record("eu", "a", fail(), 2).unwrap();
        assert_eq!(t.to, BackendState::Down);
        assert_eq!(
            b.why("eu", "a").unwrap(),
            "down: unreachable: connect: Connection refused (2 failed checks in a row)"
        );
        // A node that answers wrongly is a bad answer, not an unreachable node.
        let wrong = Outcome {
            probe: Err(ProbeError::new(
                checks::ProbeErrorKind::BadTime,
                "bad chain time \"soon\"",
            )),
            agent: Some(Err(ProbeError::new(
                checks::ProbeErrorKind::AgentFormat,
                "unknown agent word `banana`",
            ))),
        };
        b.record("eu", "a", wrong, 3);
        assert_eq!(
            b.why("eu", "a").unwrap(),
            "down: bad answer: bad_time: bad chain time \"soon\" (3 failed checks in a row); \
             agent: agent_format: unknown agent word `banana`"
        );
    }
}
