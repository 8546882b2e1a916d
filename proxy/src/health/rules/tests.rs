//! The rules over simulated days: judging and damping together, against healthy, stalled,
//! lagging and flapping nodes on a chain with missed slots and maintenance gaps.

use super::sim::{Behavior, Chain, ChainSpec, Node, Probe, XorShift64};
use super::*;
use crate::chain::format_chain_time;

const MAINNET: ChainParams = ChainParams::BITSHARES_MAINNET;

fn verdict_of(cfg: &RuleConfig, probe: &Probe) -> Verdict {
    match &probe.sample {
        Some(sample) => judge(&MAINNET, cfg, sample, probe.best_head),
        None => Verdict::Unreachable {
            reason: "connect timed out".into(),
        },
    }
}

/// Checks `node` every `interval_ms` from the chain's first block to its
/// last, handing each probe to `f`.
fn run_day(chain: &Chain, node: &mut Node, interval_ms: i64, mut f: impl FnMut(&Probe)) {
    let first = chain.blocks().first().map_or(0, |b| b.time_unix) * 1000;
    let last = chain.blocks().last().map_or(0, |b| b.time_unix) * 1000;
    let mut at = first + interval_ms;
    while at <= last {
        f(&node.check(chain, at));
        at += interval_ms;
    }
}

/// A node behaving as `behavior` (seed 3, round trips up to 300 ms), checked every 5 s through
/// `chain` from state Unknown: the state it ends in and how many checks there were.
fn judged_every_5s(chain: &Chain, cfg: &RuleConfig, behavior: Behavior) -> (HealthState, u64) {
    let mut node = Node::new(behavior, 3, 300);
    let mut state = HealthState::new(cfg);
    let mut checks = 0;
    run_day(chain, &mut node, 5_000, |probe| {
        checks += 1;
        state.record(verdict_of(cfg, probe));
    });
    (state, checks)
}

#[derive(Debug, Default)]
struct DayStats {
    checks: u64,
    stale: u64,
    downs: u64,
    max_age_normal: i64,
    max_age_near_maintenance: i64,
    min_headroom: i64,
}

fn healthy_day(chain: &Chain, interval_ms: i64, seed: u64) -> DayStats {
    let cfg = RuleConfig::default();
    let mut node = Node::new(Behavior::Healthy, seed, 300);
    let mut state = HealthState::new(&cfg);
    let mut stats = DayStats {
        min_headroom: i64::MAX,
        ..DayStats::default()
    };
    run_day(chain, &mut node, interval_ms, |probe| {
        let sample = probe.sample.expect("a healthy node answers");
        let verdict = verdict_of(&cfg, probe);
        let age = sample.head_age_secs();
        let allowed = i64::from(max_head_age(&MAINNET, &cfg, &sample));
        if near_maintenance(&MAINNET, &cfg, &sample) {
            stats.max_age_near_maintenance = stats.max_age_near_maintenance.max(age);
        } else {
            stats.max_age_normal = stats.max_age_normal.max(age);
        }
        stats.min_headroom = stats.min_headroom.min(allowed - age);
        stats.checks += 1;
        if !verdict.is_healthy() {
            stats.stale += 1;
        }
        if let Some(t) = state.record(verdict) {
            if t.to == BackendState::Down {
                stats.downs += 1;
            }
        }
    });
    stats
}

// 1. A simulated day, checks every 5 s and every 1 s: no false downs.
#[test]
fn simulated_day_has_no_false_downs() {
    for seed in [1u64, 2, 3] {
        let chain = Chain::generate(ChainSpec::mainnet_day(seed));
        assert_eq!(chain.maintenance_block_times().len(), 24);
        assert!(chain.missed_slots() > 200, "{}", chain.missed_slots());
        for interval_ms in [5_000, 1_000] {
            let stats = healthy_day(&chain, interval_ms, seed * 7 + 1);
            eprintln!("seed {seed} every {interval_ms} ms: {stats:?}");
            assert_eq!(stats.downs, 0, "false down: {stats:?}");
            assert_eq!(stats.stale, 0, "false stale verdicts: {stats:?}");
            assert!(stats.max_age_normal <= 12);
            assert!(stats.max_age_near_maintenance <= 18);
            // The maintenance gap really happened and was seen: older
            // heads than anywhere else in the day.
            assert!(stats.max_age_near_maintenance > stats.max_age_normal + 2);
            if interval_ms == 1_000 {
                assert!(stats.max_age_near_maintenance >= 12, "{stats:?}");
            }
        }
    }
}

// 1b. Harsher: 3 % missed slots, up to two in a row (also right after the
// maintenance gap), checks every second. Single stale verdicts may occur
// when two missed slots follow the maintenance gap; fall=3 absorbs them.
#[test]
fn harsh_day_with_double_missed_slots_has_no_false_downs() {
    let chain = Chain::generate(ChainSpec {
        missed_slot_ppm: 30_000,
        max_consecutive_missed: 2,
        ..ChainSpec::mainnet_day(11)
    });
    for interval_ms in [5_000, 2_000, 1_000] {
        let stats = healthy_day(&chain, interval_ms, 5);
        eprintln!("harsh day every {interval_ms} ms: {stats:?}");
        assert_eq!(stats.downs, 0, "{stats:?}");
        assert!(stats.max_age_normal <= 12, "{stats:?}");
    }
}

// 1c. Worst case: 30 % missed slots, up to two in a row, so the slot
// after the maintenance gap is often missed too (up to two of them).
// A healthy head then reaches 18 s + latency: a check may land 1 s over the
// 18 s allowance, for at most ~1.2 s, i.e. at most two stale 1 s checks in
// a row, which fall = 3 absorbs.
#[test]
fn worst_case_missed_slots_next_to_maintenance_cause_no_downs() {
    let chain = Chain::generate(ChainSpec {
        missed_slot_ppm: 300_000,
        max_consecutive_missed: 2,
        ..ChainSpec::mainnet_day(3)
    });
    let gaps_after_maintenance: Vec<i64> = chain
        .blocks()
        .windows(2)
        .filter(|w| w[0].is_maintenance)
        .map(|w| w[1].time_unix - w[0].time_unix)
        .collect();
    assert!(gaps_after_maintenance.contains(&15));
    assert!(gaps_after_maintenance.contains(&18));
    for interval_ms in [5_000, 1_000] {
        let stats = healthy_day(&chain, interval_ms, 17);
        eprintln!("worst case every {interval_ms} ms: {stats:?}");
        assert_eq!(stats.downs, 0, "{stats:?}");
        assert!(stats.max_age_normal <= 12, "{stats:?}");
        assert!(stats.max_age_near_maintenance <= 19, "{stats:?}");
        if interval_ms == 1_000 {
            assert!(stats.max_age_near_maintenance >= 15, "{stats:?}");
        }
    }
}

/// Runs a node that stalls at `stall_at` and returns
/// `(allowance_end, down_observed_at)`: the first whole second at which
/// the frozen head's age exceeds its allowance, and the observed time of
/// the check that took the node Down.
fn stall_run(chain: &Chain, cfg: &RuleConfig, stall_at: i64, phase_ms: i64) -> (i64, i64) {
    let interval_ms = 5_000;
    let mut node = Node::new(Behavior::StalledFrom { at_unix: stall_at }, 99, 300);
    let mut state = HealthState::new(cfg);
    let mut at = (stall_at - 120) * 1000 + phase_ms;
    let mut allowed_seen = None;
    loop {
        let probe = node.check(chain, at);
        let sample = probe.sample.expect("a stalled node still answers");
        let verdict = verdict_of(cfg, &probe);
        if sample.observed_at_unix < stall_at {
            assert!(verdict.is_healthy(), "before the stall: {verdict}");
        }
        if matches!(verdict, Verdict::Stale { .. }) {
            let allowed = max_head_age(&MAINNET, cfg, &sample);
            // Head-anchored window: the allowance of a frozen head is constant.
            assert_eq!(*allowed_seen.get_or_insert(allowed), allowed);
        }
        let transition = state.record(verdict);
        if let Some(t) = transition {
            assert!(at / 1000 < stall_at || t.to == BackendState::Down, "{t}");
            if t.to == BackendState::Down {
                let allowed = max_head_age(&MAINNET, cfg, &sample);
                let end = sample.head_block_time_unix + i64::from(allowed) + 1;
                return (end, sample.observed_at_unix);
            }
        }
        at += interval_ms;
        assert!(at / 1000 < stall_at + 300, "never went down");
    }
}

fn stall_times(chain: &Chain) -> Vec<i64> {
    let mut times = Vec::new();
    let last = chain.blocks().last().map_or(0, |b| b.time_unix);
    for m in chain.maintenance_block_times() {
        if m + 330 > last {
            continue; // the chain itself ends there
        }
        for offset in [
            -40, -25, -13, -7, -3, -1, 0, 1, 2, 4, 7, 11, 12, 13, 16, 20, 30,
        ] {
            times.push(m + offset);
        }
    }
    let mut rng = XorShift64::new(4242);
    let start = chain.blocks()[0].time_unix;
    for _ in 0..60 {
        times.push(start + 300 + i64::try_from(rng.below(3 * 3600)).unwrap());
    }
    times
}

// 2. A stalled node goes Down within two check intervals (5 s) after its
// allowance runs out, with fall = 2. With the default fall = 3 it takes up
// to three intervals: the k-th stale check comes at most k intervals after
// the allowance ran out.
#[test]
fn stalled_node_goes_down_soon_after_its_allowance() {
    let chain = Chain::generate(ChainSpec {
        duration_secs: 4 * 3600,
        ..ChainSpec::mainnet_day(21)
    });
    let mut rng = XorShift64::new(7);
    for fall in [2u32, 3] {
        let cfg = RuleConfig {
            fall,
            ..RuleConfig::default()
        };
        let mut worst = i64::MIN;
        let mut worst_from_stall = i64::MIN;
        let times = stall_times(&chain);
        for &stall_at in &times {
            let phase = i64::try_from(rng.below(5_000)).unwrap();
            let (end, down) = stall_run(&chain, &cfg, stall_at, phase);
            assert!(down >= end, "down before the allowance ran out");
            let late = down - end;
            assert!(
                late <= i64::from(fall) * 5,
                "stall at {stall_at}: {late} s late"
            );
            worst = worst.max(late);
            let allowed = end - 1 - chain.head_at(stall_at * 1000).unwrap().time_unix;
            worst_from_stall = worst_from_stall.max(down - (stall_at + allowed));
        }
        eprintln!(
            "fall {fall}: {} stalls, down at most {worst} s after the allowance ran out \
             ({worst_from_stall} s after stall time + allowance)",
            times.len()
        );
    }
}

#[test]
fn lagging_nodes_in_the_simulator() {
    let chain = Chain::generate(ChainSpec::mainnet_day(31));
    let cfg = RuleConfig::default();

    // A node on a minority fork, 10 blocks behind with a fresh head time:
    // Lagging from the first check, Down after exactly `fall` checks.
    let mut node = Node::new(Behavior::ForkBehind { blocks: 10 }, 3, 300);
    let mut state = HealthState::new(&cfg);
    let mut down_after = None;
    let mut checks = 0;
    run_day(&chain, &mut node, 5_000, |probe| {
        let verdict = verdict_of(&cfg, probe);
        checks += 1;
        assert!(matches!(verdict, Verdict::Lagging { behind_blocks, .. } if behind_blocks >= 10));
        if state.record(verdict).is_some() {
            down_after.get_or_insert(checks);
        }
    });
    assert_eq!(down_after, Some(3));
    assert_eq!(state.transitions(), 1);
    assert!(state.why().starts_with("down: lagging"), "{}", state.why());

    // A slow node whose head is 10 blocks (30 s) old: out as well
    // (stale first, since its head is older than any allowance).
    let mut node = Node::new(Behavior::BehindBlocks { blocks: 10 }, 3, 300);
    let mut state = HealthState::new(&cfg);
    let warm_up_ms = (chain.blocks()[0].time_unix + 60) * 1000;
    run_day(&chain, &mut node, 5_000, |probe| {
        let verdict = verdict_of(&cfg, probe);
        if probe.sent_at_ms > warm_up_ms {
            assert!(!verdict.is_healthy());
        }
        state.record(verdict);
    });
    // Up during the first minute (when 10 blocks back is the first
    // block), then Down for good.
    assert_eq!(state.state(), BackendState::Down);
    assert_eq!(state.transitions(), 2);

    // 3 blocks behind on a fork: fine all day.
    let mut node = Node::new(Behavior::ForkBehind { blocks: 3 }, 3, 300);
    let mut state = HealthState::new(&cfg);
    run_day(&chain, &mut node, 5_000, |probe| {
        assert!(verdict_of(&cfg, probe).is_healthy());
        state.record(verdict_of(&cfg, probe));
    });
    assert!(state.is_up());
    assert_eq!(state.transitions(), 1);

    // A slow node 1 block behind: fine all day at 5 s checks too.
    let (state, _) = judged_every_5s(&chain, &cfg, Behavior::BehindBlocks { blocks: 1 });
    assert!(state.is_up());
    assert_eq!(state.transitions(), 1, "{}", state.why());
}

// 4. Flapping is damped by rise/fall.
#[test]
fn flapping_node_alternating_every_check_never_goes_down() {
    let chain = Chain::generate(ChainSpec::mainnet_day(41));
    let cfg = RuleConfig::default();
    let flapping = Behavior::Flapping {
        up_checks: 1,
        down_checks: 1,
    };
    let (state, checks) = judged_every_5s(&chain, &cfg, flapping);
    // Unknown -> Up at the first healthy answer, then nothing: never two
    // failures in a row, let alone three.
    assert_eq!(checks, 17_280);
    assert_eq!(state.transitions(), 1);
    assert!(state.is_up());

    // Started Down instead, it never comes up: never two successes in a row.
    let mut state = HealthState::starting_in(&cfg, BackendState::Down);
    for i in 0..10_000 {
        let v = if i % 2 == 0 {
            Verdict::Healthy
        } else {
            Verdict::Unreachable {
                reason: "refused".into(),
            }
        };
        assert_eq!(state.record(v), None);
    }
}

#[test]
fn transitions_never_come_faster_than_rise_and_fall_allow() {
    let cfg = RuleConfig::default();
    // The fastest possible flapping: 3 failures, 2 successes, repeated.
    let chain = Chain::generate(ChainSpec {
        duration_secs: 3600,
        ..ChainSpec::mainnet_day(43)
    });
    let flapping = Behavior::Flapping {
        up_checks: 2,
        down_checks: 3,
    };
    let (state, checks) = judged_every_5s(&chain, &cfg, flapping);
    // At most one transition per `min(rise, fall)` checks, plus the first.
    assert!(
        state.transitions() <= 1 + checks / 2,
        "{}",
        state.transitions()
    );
    assert!(state.transitions() >= checks / 5, "{}", state.transitions());

    // Random verdict sequences: every Up->Down needs `fall` checks since
    // the previous transition and every Down->Up needs `rise`.
    for (rise, fall) in [(2u32, 3u32), (1, 1), (3, 2), (5, 5)] {
        let cfg = RuleConfig {
            rise,
            fall,
            ..RuleConfig::default()
        };
        let mut rng = XorShift64::new(u64::from(rise * 10 + fall));
        let mut state = HealthState::new(&cfg);
        let mut since_last = u64::MAX;
        let mut transitions = 0u64;
        for _ in 0..100_000 {
            let v = if rng.below(100) < 60 {
                Verdict::Healthy
            } else {
                Verdict::Stale {
                    age_secs: 30,
                    allowed_secs: 12,
                }
            };
            since_last = since_last.saturating_add(1);
            if let Some(t) = state.record(v) {
                transitions += 1;
                match (t.from, t.to) {
                    (BackendState::Up, BackendState::Down) => {
                        assert!(since_last >= u64::from(fall));
                    }
                    (BackendState::Down, BackendState::Up) => {
                        assert!(since_last >= u64::from(rise));
                    }
                    (BackendState::Unknown, _) => assert_eq!(transitions, 1),
                    other => panic!("impossible transition {other:?}"),
                }
                since_last = 0;
            }
        }
        assert!(transitions <= 1 + 100_000 / u64::from(rise.min(fall)));
    }
}

// 6. The old checker's failure mode.
#[test]
fn naive_six_second_rule_flaps_at_maintenance_but_ours_does_not() {
    let chain = Chain::generate(ChainSpec::mainnet_day(61));
    let maintenances = chain.maintenance_block_times();
    // HAProxy's defaults: inter 2 s, rise 2, fall 3.
    let cfg = RuleConfig::default();
    for interval_ms in [2_000, 1_000] {
        let mut node = Node::new(Behavior::Healthy, 8, 300);
        let mut naive = HealthState::new(&cfg);
        let mut ours = HealthState::new(&cfg);
        let (mut naive_stale, mut naive_downs, mut our_downs) = (0u64, 0u64, 0u64);
        run_day(&chain, &mut node, interval_ms, |probe| {
            let sample = probe.sample.unwrap();
            let age = sample.head_age_secs();
            let naive_verdict = if age > 6 {
                naive_stale += 1;
                // Every naive false alarm is right after a maintenance block.
                assert!(
                    maintenances
                        .iter()
                        .any(|&m| (0..=15).contains(&(sample.observed_at_unix - m))),
                    "naive stale away from maintenance at {}",
                    format_chain_time(sample.observed_at_unix)
                );
                Verdict::Stale {
                    age_secs: age,
                    allowed_secs: 6,
                }
            } else {
                Verdict::Healthy
            };
            if naive.record(naive_verdict)
                == Some(Transition {
                    from: BackendState::Up,
                    to: BackendState::Down,
                })
            {
                naive_downs += 1;
            }
            if let Some(t) = ours.record(verdict_of(&cfg, probe)) {
                if t.to == BackendState::Down {
                    our_downs += 1;
                }
            }
        });
        eprintln!(
            "every {interval_ms} ms: naive 6 s rule: {naive_stale} stale checks, \
             {naive_downs} false downs over {} maintenances; ours: {our_downs}",
            maintenances.len()
        );
        assert!(naive_downs >= 20, "{naive_downs}");
        assert_eq!(our_downs, 0);
    }
}

#[test]
fn no_panics_on_extreme_inputs() {
    let params = [
        MAINNET,
        ChainParams::from_secs(0, 0, 0),
        ChainParams::from_secs(u32::MAX, u32::MAX, u32::MAX),
        ChainParams {
            block_interval_ms: u64::MAX,
            ..ChainParams::from_secs(u32::MAX, u32::MAX, u32::MAX)
        },
    ];
    let cfgs = [
        RuleConfig::default(),
        RuleConfig {
            margin_secs: u32::MAX,
            max_lag_blocks: u64::MAX,
            rise: 0,
            fall: 0,
            maintenance_window_secs: u32::MAX,
        },
        RuleConfig::for_chain(&params[2]),
    ];
    let times = [i64::MIN, -1, 0, 1, 1_795_463_847, i64::MAX];
    for p in &params {
        for c in &cfgs {
            let mut state = HealthState::new(c);
            for &a in &times {
                for &b in &times {
                    for &n in &times {
                        let s = HeadSample {
                            observed_at_unix: a,
                            head_block_number: u64::MAX,
                            head_block_time_unix: b,
                            next_maintenance_time_unix: n,
                        };
                        let _ = max_head_age(p, c, &s);
                        let v = judge(p, c, &s, Some(0));
                        let _ = judge(p, c, &s, Some(u64::MAX));
                        let _ = v.to_string();
                        state.record(v);
                        let _ = state.why();
                    }
                }
            }
        }
    }
    assert!(params[1].validate().is_err());
    assert!(MAINNET.validate().is_ok());
    assert!(cfgs[1].validate().is_err());
    assert!(RuleConfig::default().validate().is_ok());
    // rise/fall 0 behave as 1.
    let mut state = HealthState::starting_in(&cfgs[1], BackendState::Up);
    let down = state.record(Verdict::Unreachable { reason: "x".into() });
    assert_eq!(down.map(|t| t.to), Some(BackendState::Down));
    assert_eq!(
        state.record(Verdict::Healthy).map(|t| t.to),
        Some(BackendState::Up)
    );
    // Ejector and slow start with absurd values.
    let mut e = PassiveEjector::new(EjectorConfig {
        failure_threshold: 0,
        base_backoff_secs: u64::MAX,
        max_backoff_secs: u64::MAX,
    });
    for now in [i64::MIN, 0, i64::MAX] {
        e.on_connect_failure(now);
        e.on_connect_success(now);
        let _ = e.is_ejected(now);
    }
    for _ in 0..200 {
        e.on_connect_failure(i64::MAX);
    }
    let _ = e.next_backoff_secs();
    assert_eq!(
        slow_start_weight(u32::MAX, u64::MAX - 1, u64::MAX),
        u32::MAX - 1
    );
    assert_eq!(slow_start_weight(u32::MAX, 0, u64::MAX), u32::MAX / 10);
}
