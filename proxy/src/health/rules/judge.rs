//! Judging one answer: how old a head block may be (more around a maintenance, when the
//! chain skips slots) and how far behind the best backend's head a node may fall.

use std::fmt;

use super::{saturate_u32, RuleConfig};
use crate::chain::{format_chain_time, parse_chain_time, ChainError, ChainParams};

/// One answer to `get_dynamic_global_properties`, stamped with the local time
/// it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeadSample {
    /// Local unix time (seconds) when the check's answer arrived.
    pub observed_at_unix: i64,
    /// `head_block_number`.
    pub head_block_number: u64,
    /// `time` (the head block's timestamp), as unix seconds.
    pub head_block_time_unix: i64,
    /// `next_maintenance_time`, as unix seconds.
    pub next_maintenance_time_unix: i64,
}

impl HeadSample {
    /// Builds a sample from the raw fields of the answer, parsing the two chain
    /// times with [`parse_chain_time`].
    pub fn from_chain_fields(
        observed_at_unix: i64,
        head_block_number: u64,
        time: &str,
        next_maintenance_time: &str,
    ) -> Result<Self, ChainError> {
        Ok(Self {
            observed_at_unix,
            head_block_number,
            head_block_time_unix: parse_chain_time(time)?,
            next_maintenance_time_unix: parse_chain_time(next_maintenance_time)?,
        })
    }

    /// Age of the head block when the answer arrived; a head block "from the
    /// future" (clock skew) counts as age 0.
    pub fn head_age_secs(&self) -> i64 {
        self.observed_at_unix
            .saturating_sub(self.head_block_time_unix)
            .max(0)
    }
}

/// Whether the sample's head block lies within `maintenance_window_secs` of a
/// maintenance time: the upcoming one (`next_maintenance_time`, the head is
/// the last block before maintenance, or the node is busy applying the
/// maintenance block) or the one just passed (`next_maintenance_time -
/// maintenance_interval`, because `next_maintenance_time` jumps forward as
/// soon as the maintenance block is applied).
pub fn near_maintenance(params: &ChainParams, cfg: &RuleConfig, sample: &HeadSample) -> bool {
    let window = u64::from(cfg.maintenance_window_secs);
    let head = sample.head_block_time_unix;
    let next = sample.next_maintenance_time_unix;
    let previous = next.saturating_sub(i64::from(params.maintenance_interval_secs));
    head.abs_diff(next) <= window || head.abs_diff(previous) <= window
}

/// The largest head age (seconds) that still counts as fresh for `sample`.
///
/// * Around maintenance ([`near_maintenance`]): `interval × (1 + skip) +
///   margin` (18 s on mainnet): the skipped slots after the maintenance block
///   plus the margin, which covers one or two missed slots next to the gap
///   and the answer latency. Never less than the normal allowance.
/// * Otherwise: `interval × 2 + margin` (12 s on mainnet). A healthy head is
///   up to one interval old, two if a single slot was missed; the margin adds
///   two more missed slots' worth for latency, propagation and clock skew.
///   Tighter than the maintenance allowance so a stalled node is caught ~6 s
///   sooner during the other 3,550 s of the hour.
///
/// The window is anchored on the head block's time, so for a frozen head the
/// allowance never changes as the wall clock advances (see the module docs).
/// Saturates instead of overflowing on absurd parameters.
pub fn max_head_age(params: &ChainParams, cfg: &RuleConfig, sample: &HeadSample) -> u32 {
    let interval = u64::from(params.block_interval_secs());
    let margin = u64::from(cfg.margin_secs);
    let normal = interval.saturating_mul(2);
    let base = if near_maintenance(params, cfg, sample) {
        interval
            .saturating_mul(1 + u64::from(params.maintenance_skip_slots))
            .max(normal)
    } else {
        normal
    };
    saturate_u32(base.saturating_add(margin))
}

/// A head block more than this many seconds ahead of the local clock is not
/// clock skew but a broken answer (or a broken local clock): [`Verdict::BadAnswer`].
pub const MAX_FUTURE_HEAD_SECS: i64 = 300;

/// The outcome of one health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Fresh head, not lagging.
    Healthy,
    /// The head block is older than the allowance.
    Stale {
        /// Head age when the answer arrived (whole seconds, ≥ 0).
        age_secs: i64,
        /// The allowance from [`max_head_age`].
        allowed_secs: u32,
    },
    /// The head is `max` blocks or more behind the best backend's head.
    Lagging {
        /// How many blocks behind the best head.
        behind_blocks: u64,
        /// The configured limit, [`RuleConfig::max_lag_blocks`].
        max: u64,
    },
    /// No answer: connect refused, timeout, TLS or WebSocket failure (built
    /// by the caller).
    Unreachable {
        /// What went wrong, for `proxy backends list`.
        reason: String,
    },
    /// An answer that cannot be right: unparsable JSON, a JSON-RPC error,
    /// missing fields (built by the caller), or a head block far in the
    /// future (from [`judge`]).
    BadAnswer {
        /// What was wrong with it.
        reason: String,
    },
}

impl Verdict {
    /// Whether this verdict counts as a success for rise/fall.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Verdict::Healthy)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Healthy => f.write_str("healthy"),
            Verdict::Stale {
                age_secs,
                allowed_secs,
            } => write!(
                f,
                "stale: head block is {age_secs} s old, {allowed_secs} s allowed"
            ),
            Verdict::Lagging { behind_blocks, max } => write!(
                f,
                "lagging: {behind_blocks} blocks behind the best head (limit {max})"
            ),
            Verdict::Unreachable { reason } => write!(f, "unreachable: {reason}"),
            Verdict::BadAnswer { reason } => write!(f, "bad answer: {reason}"),
        }
    }
}

/// Judges one answer.
///
/// In order: a head block more than [`MAX_FUTURE_HEAD_SECS`] ahead of
/// `observed_at_unix` is a [`Verdict::BadAnswer`]; a head age (negative ages
/// from clock skew count as 0) above [`max_head_age`] is [`Verdict::Stale`];
/// a head `max_lag_blocks` or more behind `best_head` (the best healthy
/// backend's head, if known) is [`Verdict::Lagging`]; otherwise
/// [`Verdict::Healthy`]. A backend ahead of `best_head` is not lagging.
pub fn judge(
    params: &ChainParams,
    cfg: &RuleConfig,
    sample: &HeadSample,
    best_head: Option<u64>,
) -> Verdict {
    let ahead = sample
        .head_block_time_unix
        .saturating_sub(sample.observed_at_unix);
    if ahead > MAX_FUTURE_HEAD_SECS {
        return Verdict::BadAnswer {
            reason: format!(
                "head block time {} is {ahead} s ahead of the local clock",
                format_chain_time(sample.head_block_time_unix)
            ),
        };
    }
    let age_secs = sample.head_age_secs();
    let allowed_secs = max_head_age(params, cfg, sample);
    if age_secs > i64::from(allowed_secs) {
        return Verdict::Stale {
            age_secs,
            allowed_secs,
        };
    }
    if let Some(best) = best_head {
        let behind_blocks = best.saturating_sub(sample.head_block_number);
        if cfg.max_lag_blocks > 0 && behind_blocks >= cfg.max_lag_blocks {
            return Verdict::Lagging {
                behind_blocks,
                max: cfg.max_lag_blocks,
            };
        }
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAINNET: ChainParams = ChainParams::BITSHARES_MAINNET;

    fn sample(observed: i64, head_time: i64, next_maintenance: i64) -> HeadSample {
        HeadSample {
            observed_at_unix: observed,
            head_block_number: 100,
            head_block_time_unix: head_time,
            next_maintenance_time_unix: next_maintenance,
        }
    }

    // 3. Lag: 10+ blocks behind is out, 3 behind is fine.
    #[test]
    fn lag_rule_judges_blocks_behind_best_head() {
        let cfg = RuleConfig::default();
        let mut s = sample(1_000_003, 1_000_000, 1_001_800);
        s.head_block_number = 1_000;
        for (best, healthy) in [(1_003, true), (1_009, true), (1_010, false), (1_025, false)] {
            let v = judge(&MAINNET, &cfg, &s, Some(best));
            assert_eq!(v.is_healthy(), healthy, "{best}: {v}");
            if !healthy {
                assert_eq!(
                    v,
                    Verdict::Lagging {
                        behind_blocks: best - 1_000,
                        max: 10
                    }
                );
            }
        }
        // Ahead of the best head, or no best head known: not lagging.
        assert!(judge(&MAINNET, &cfg, &s, Some(900)).is_healthy());
        assert!(judge(&MAINNET, &cfg, &s, None).is_healthy());
        // max_lag_blocks = 0 disables the rule.
        let off = RuleConfig {
            max_lag_blocks: 0,
            ..cfg
        };
        assert!(judge(&MAINNET, &off, &s, Some(u64::MAX)).is_healthy());
    }

    #[test]
    fn max_head_age_around_maintenance() {
        let cfg = RuleConfig::default();
        assert_eq!(cfg.maintenance_window_secs, 24);
        let m = 1_795_395_600; // 2026-11-23T01:00:00, a maintenance time
                               // Mid-hour: 2 × 3 + 6.
        assert_eq!(
            max_head_age(&MAINNET, &cfg, &sample(m - 1800, m - 1803, m)),
            12
        );
        // Head is the maintenance block; next_maintenance_time already moved on.
        assert_eq!(
            max_head_age(&MAINNET, &cfg, &sample(m + 12, m, m + 3600)),
            18
        );
        // Head just before maintenance (node applying the maintenance block).
        assert_eq!(max_head_age(&MAINNET, &cfg, &sample(m + 5, m - 3, m)), 18);
        // Window edges, both sides.
        assert_eq!(
            max_head_age(&MAINNET, &cfg, &sample(0, m + 24, m + 3600)),
            18
        );
        assert_eq!(
            max_head_age(&MAINNET, &cfg, &sample(0, m + 25, m + 3600)),
            12
        );
        assert_eq!(max_head_age(&MAINNET, &cfg, &sample(0, m - 24, m)), 18);
        assert_eq!(max_head_age(&MAINNET, &cfg, &sample(0, m - 25, m)), 12);
        // Skip 0: never tighter than the normal allowance.
        let no_skip = ChainParams {
            maintenance_skip_slots: 0,
            ..MAINNET
        };
        assert_eq!(max_head_age(&no_skip, &cfg, &sample(m, m, m + 3600)), 12);
        // The allowance ignores the wall clock.
        for observed in [i64::MIN, 0, m, m + 100_000, i64::MAX] {
            assert_eq!(
                max_head_age(&MAINNET, &cfg, &sample(observed, m, m + 3600)),
                18
            );
        }
    }

    #[test]
    fn now_anchored_window_would_readmit_a_stalled_node() {
        // A node whose head froze 40 s before maintenance.
        let cfg = RuleConfig::default();
        let m = 1_795_395_600;
        let head = m - 40;
        let now_anchored = |now: i64| -> i64 {
            if now.abs_diff(m) <= 24 {
                18
            } else {
                12
            }
        };
        // Wall-clock window: stale at m - 27 (age 13 > 12) but "fresh" at
        // m - 24 (age 16 <= 18): the fall counter would reset.
        assert!(m - 27 - head > now_anchored(m - 27));
        assert!(m - 24 - head <= now_anchored(m - 24));
        // Ours: once stale, stale for good.
        let mut was_stale = false;
        for now in head..head + 600 {
            let stale = !judge(&MAINNET, &cfg, &sample(now, head, m), None).is_healthy();
            assert!(stale || !was_stale, "re-admitted at {now}");
            was_stale = stale;
        }
        assert!(was_stale);
    }

    #[test]
    fn frozen_heads_stay_stale_everywhere_in_the_hour() {
        let cfg = RuleConfig::default();
        let m = 1_795_395_600;
        for head in (m - 3600..m + 3600).step_by(3) {
            let next = if head >= m { m + 3600 } else { m };
            let mut was_stale = false;
            for now in head..head + 120 {
                let stale = !judge(&MAINNET, &cfg, &sample(now, head, next), None).is_healthy();
                assert!(stale || !was_stale);
                was_stale = stale;
            }
            assert!(was_stale);
        }
    }

    #[test]
    fn judge_clock_skew_and_bad_answers() {
        let cfg = RuleConfig::default();
        let m = 1_795_395_600;
        // Head a few seconds in the future: age 0, healthy.
        let s = sample(m - 1000, m - 995, m);
        assert_eq!(s.head_age_secs(), 0);
        assert_eq!(judge(&MAINNET, &cfg, &s, Some(100)), Verdict::Healthy);
        // Five minutes ahead is still skew; more is a bad answer.
        assert!(judge(&MAINNET, &cfg, &sample(m - 1000, m - 700, m), None).is_healthy());
        let v = judge(&MAINNET, &cfg, &sample(m - 1000, m - 699, m), None);
        assert!(matches!(v, Verdict::BadAnswer { .. }), "{v}");
        // The boundary of the normal allowance.
        assert!(judge(&MAINNET, &cfg, &sample(m - 1000 + 12, m - 1000, m), None).is_healthy());
        assert_eq!(
            judge(&MAINNET, &cfg, &sample(m - 1000 + 13, m - 1000, m), None),
            Verdict::Stale {
                age_secs: 13,
                allowed_secs: 12
            }
        );
        // Stale wins over lagging.
        assert!(matches!(
            judge(&MAINNET, &cfg, &sample(m - 900, m - 1000, m), Some(1_000)),
            Verdict::Stale { .. }
        ));
    }

    #[test]
    fn head_sample_from_chain_fields() {
        let s = HeadSample::from_chain_fields(5, 7, "2026-11-23T19:57:27", "2026-11-23T20:00:00")
            .unwrap();
        assert_eq!(s.head_block_time_unix, 1_795_463_847);
        assert_eq!(s.next_maintenance_time_unix, 1_795_464_000);
        assert!(HeadSample::from_chain_fields(5, 7, "2026-11-23T19:57:27", "soon").is_err());
    }
}
