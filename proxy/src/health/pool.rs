//! Decisions about a pool as a whole, on top of each node's own verdict.
//!
//! - A chain halt is not a node failure: when every answering node is stale at (nearly) the
//!   same head, the chain itself stopped. All of them stay in: clients still read state and
//!   the nodes resume together.
//! - A panic threshold (as Envoy has): when fewer than a configured share of the nodes would
//!   stay in the ring, the least-bad ones (answering, only stale or lagging; the highest head
//!   first) stay in. A lone stalled or lagging node in a healthy pool still leaves.
//!
//! Nodes that do not answer, answer nonsense, are ejected after failed connects, drained by
//! the operator or by their agent are never kept in: they cannot serve.
//! Pure: the caller passes what the board knows.

use super::{
    checks::AgentReport,
    rules::{HeadSample, Verdict},
    BackendHealth,
};

/// Heads this close (in blocks) count as the same head for a halt.
const HALT_HEAD_SPREAD: u64 = 1;

/// One node of the pool as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub name: &'a str,
    /// What the node's own health says (before this decision).
    pub available: bool,
    /// Weight 0 by the operator: out of the count and never kept in.
    pub drained: bool,
    pub health: &'a BackendHealth,
}

/// What the pool's chain is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainState {
    /// No node answered with a head yet.
    Unknown,
    Advancing {
        head: u64,
        head_time_unix: i64,
    },
    /// Every answering node is stale at this head.
    Halted {
        head: u64,
        head_time_unix: i64,
    },
}

impl ChainState {
    pub fn label(&self) -> &'static str {
        match self {
            ChainState::Unknown => "unknown",
            ChainState::Advancing { .. } => "advancing",
            ChainState::Halted { .. } => "halted",
        }
    }

    /// In words, for the log and `/stats`: "chain halted at block N for 95 s".
    pub fn describe(&self, now_unix: i64) -> String {
        match *self {
            ChainState::Unknown => "no head reported yet".into(),
            ChainState::Advancing {
                head,
                head_time_unix,
            } => format!(
                "advancing: head {head}, {} s old",
                (now_unix - head_time_unix).max(0)
            ),
            ChainState::Halted {
                head,
                head_time_unix,
            } => format!(
                "chain halted at block {head} for {} s",
                (now_unix - head_time_unix).max(0)
            ),
        }
    }
}

/// The pool's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDecision {
    pub chain: ChainState,
    /// Nodes kept in the ring although their own health says out.
    pub kept_in: Vec<String>,
    /// Fewer than the threshold would have stayed in (a halt is not a panic).
    pub panic: bool,
}

impl PoolDecision {
    pub fn keeps(&self, name: &str) -> bool {
        self.kept_in.iter().any(|n| n == name)
    }
}

/// Decides for one pool. `panic_threshold_percent` 0 turns the threshold off (a halt still
/// keeps the pool serving).
pub fn decide(members: &[Member<'_>], panic_threshold_percent: u32) -> PoolDecision {
    let counted: Vec<&Member<'_>> = members.iter().filter(|m| !m.drained).collect();
    let answering: Vec<(&Member<'_>, HeadSample)> = counted
        .iter()
        .filter_map(|m| {
            let s = m.health.head?;
            matches!(
                m.health.verdict,
                Some(Verdict::Healthy | Verdict::Stale { .. } | Verdict::Lagging { .. })
            )
            .then_some((*m, s))
        })
        .collect();
    let best = answering
        .iter()
        .map(|(_, s)| *s)
        .max_by_key(|s| (s.head_block_number, s.head_block_time_unix));
    let all_stale = answering
        .iter()
        .all(|(m, _)| matches!(m.health.verdict, Some(Verdict::Stale { .. })));
    let chain = match best {
        None => ChainState::Unknown,
        Some(b) => {
            let lowest = answering
                .iter()
                .map(|(_, s)| s.head_block_number)
                .min()
                .unwrap_or(b.head_block_number);
            if answering.len() >= 2 && all_stale && b.head_block_number - lowest <= HALT_HEAD_SPREAD
            {
                ChainState::Halted {
                    head: b.head_block_number,
                    head_time_unix: b.head_block_time_unix,
                }
            } else {
                ChainState::Advancing {
                    head: b.head_block_number,
                    head_time_unix: b.head_block_time_unix,
                }
            }
        }
    };
    // Candidates to keep: out by their own verdict, but answering with a real head and not
    // out for a reason that stops them serving.
    let mut candidates: Vec<(&Member<'_>, HeadSample)> = answering
        .iter()
        .filter(|(m, _)| !m.available && can_serve(m.health))
        .copied()
        .collect();
    candidates.sort_by(|(a, x), (b, y)| {
        (y.head_block_number, y.head_block_time_unix)
            .cmp(&(x.head_block_number, x.head_block_time_unix))
            .then_with(|| a.name.cmp(b.name))
    });
    if let ChainState::Halted { .. } = chain {
        return PoolDecision {
            chain,
            kept_in: candidates.iter().map(|(m, _)| m.name.to_string()).collect(),
            panic: false,
        };
    }
    let total = counted.len();
    let wanted = (total * panic_threshold_percent as usize).div_ceil(100);
    let have = counted.iter().filter(|m| m.available).count();
    let panic = panic_threshold_percent > 0 && total > 0 && have < wanted;
    let kept_in = if panic {
        candidates
            .iter()
            .take(wanted - have)
            .map(|(m, _)| m.name.to_string())
            .collect()
    } else {
        Vec::new()
    };
    PoolDecision {
        chain,
        kept_in,
        panic,
    }
}

/// Out only for being behind: not ejected, not stopped by its agent.
fn can_serve(h: &BackendHealth) -> bool {
    !h.ejected
        && !matches!(h.agent, Some(AgentReport::Down | AgentReport::Drain))
        && matches!(
            h.verdict,
            Some(Verdict::Stale { .. } | Verdict::Lagging { .. })
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::rules::BackendState;

    fn sample(head: u64, head_time: i64, now: i64) -> HeadSample {
        HeadSample {
            observed_at_unix: now,
            head_block_number: head,
            head_block_time_unix: head_time,
            next_maintenance_time_unix: now + 3600,
        }
    }

    fn node(state: BackendState, verdict: Verdict, head: Option<HeadSample>) -> BackendHealth {
        BackendHealth {
            state: Some(state),
            verdict: Some(verdict),
            ejected: false,
            agent: None,
            head,
            changed_at_unix: None,
        }
    }

    fn stale(age: i64) -> Verdict {
        Verdict::Stale {
            age_secs: age,
            allowed_secs: 18,
        }
    }

    fn members<'a>(names: &'a [&'a str], hs: &'a [BackendHealth]) -> Vec<Member<'a>> {
        names
            .iter()
            .zip(hs)
            .map(|(n, h)| Member {
                name: n,
                available: h.state == Some(BackendState::Up),
                drained: false,
                health: h,
            })
            .collect()
    }

    /// A chain timeline: three nodes follow the head; at t=1000 the chain halts at block
    /// 5000; 95 s later every node is stale at it.
    #[test]
    fn a_halted_chain_keeps_every_answering_node_in() {
        let now = 1095;
        let hs = [
            node(BackendState::Down, stale(95), Some(sample(5000, 1000, now))),
            node(BackendState::Down, stale(95), Some(sample(5000, 1000, now))),
            node(BackendState::Down, stale(96), Some(sample(4999, 999, now))),
        ];
        let d = decide(&members(&["a", "b", "c"], &hs), 50);
        assert_eq!(
            d.chain,
            ChainState::Halted {
                head: 5000,
                head_time_unix: 1000
            }
        );
        assert_eq!(d.chain.describe(now), "chain halted at block 5000 for 95 s");
        assert_eq!(d.kept_in, ["a", "b", "c"]);
        assert!(!d.panic);
        // With the threshold off too: a halt is not a node failure.
        assert_eq!(decide(&members(&["a", "b", "c"], &hs), 0).kept_in.len(), 3);
    }

    #[test]
    fn a_lone_stalled_node_still_leaves() {
        let now = 2000;
        let hs = [
            node(
                BackendState::Up,
                Verdict::Healthy,
                Some(sample(9000, 1999, now)),
            ),
            node(
                BackendState::Up,
                Verdict::Healthy,
                Some(sample(9000, 1999, now)),
            ),
            node(BackendState::Down, stale(60), Some(sample(8980, 1940, now))),
        ];
        let d = decide(&members(&["a", "b", "c"], &hs), 50);
        assert!(matches!(d.chain, ChainState::Advancing { head: 9000, .. }));
        assert!(d.kept_in.is_empty() && !d.panic);
    }

    #[test]
    fn below_the_threshold_the_least_bad_nodes_stay_in() {
        let now = 3000;
        let lag = |behind| Verdict::Lagging {
            behind_blocks: behind,
            max: 5,
        };
        let hs = [
            node(
                BackendState::Up,
                Verdict::Healthy,
                Some(sample(100, 2999, now)),
            ),
            node(BackendState::Down, lag(20), Some(sample(80, 2940, now))),
            node(BackendState::Down, lag(8), Some(sample(92, 2976, now))),
            node(
                BackendState::Down,
                Verdict::Unreachable {
                    reason: "connect: refused".into(),
                },
                Some(sample(100, 2999, now - 10)),
            ),
        ];
        // 4 nodes, 50%: two should serve; one does; the least behind joins it.
        let d = decide(&members(&["a", "b", "c", "d"], &hs), 50);
        assert!(d.panic);
        assert_eq!(d.kept_in, ["c"]);
        // 75%: three should; the unreachable node is never one of them.
        let d = decide(&members(&["a", "b", "c", "d"], &hs), 75);
        assert_eq!(d.kept_in, ["c", "b"]);
        // Off: nobody is kept.
        let d = decide(&members(&["a", "b", "c", "d"], &hs), 0);
        assert!(!d.panic && d.kept_in.is_empty());
    }

    #[test]
    fn ejected_agent_stopped_and_drained_nodes_are_never_kept() {
        let now = 4000;
        let mut ejected = node(BackendState::Down, stale(40), Some(sample(10, 3960, now)));
        ejected.ejected = true;
        let mut agent_down = node(BackendState::Down, stale(40), Some(sample(10, 3960, now)));
        agent_down.agent = Some(AgentReport::Down);
        let drained_node = node(BackendState::Down, stale(40), Some(sample(10, 3960, now)));
        let hs = [ejected, agent_down, drained_node];
        let mut ms = members(&["a", "b", "c"], &hs);
        ms[2].drained = true;
        let d = decide(&ms, 100);
        assert!(d.kept_in.is_empty(), "{d:?}");
    }

    #[test]
    fn no_answers_yet_is_unknown_and_keeps_nobody() {
        let hs = [BackendHealth {
            state: None,
            verdict: None,
            ejected: false,
            agent: None,
            head: None,
            changed_at_unix: None,
        }];
        let d = decide(&members(&["a"], &hs), 50);
        assert_eq!(d.chain, ChainState::Unknown);
        assert!(d.kept_in.is_empty());
    }
}
