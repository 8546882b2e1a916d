//! When blocks are due on a chain that misses no slot, following graphene's slot rules:
//!
//! * block slots are multiples of `block_interval` since the Unix epoch;
//! * maintenance times are multiples of `maintenance_interval` since the epoch (graphene
//!   advances `next_maintenance_time` by whole intervals, so they stay aligned once the chain
//!   has run one maintenance);
//! * the maintenance block is the first block at or after a maintenance time; it already
//!   reports the *next* maintenance time: a head block's `next_maintenance_time` is always
//!   the first maintenance time strictly after the block's own time;
//! * after the maintenance block the chain skips `maintenance_skip_slots` slots, so the next
//!   block comes `(1 + skip) × interval` later.
//!
//! Times are Unix milliseconds (chains in tests may have sub-second blocks). Everything is a
//! pure function of the time, so two nodes in sync agree on the head block, as real ones do.
//! Meant for times between the years 0 and 9999 and parameters that pass
//! [`ChainParams::validate`]; outside that the answers are meaningless.

use super::ChainParams;

/// The block schedule of one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    params: ChainParams,
    /// Block interval, ms (at least 1).
    interval: i64,
    /// Maintenance interval, ms (at least 1 s).
    maintenance: i64,
    /// Slots skipped after each maintenance block.
    skip: i64,
}

/// A block of the schedule, located by its maintenance period: what a node reports while
/// it is the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScheduledBlock {
    /// The maintenance period: the block is at or after the maintenance block of
    /// maintenance `period` (at `period × maintenance_interval` since the epoch) and before
    /// the next maintenance block.
    pub period: i64,
    /// Blocks since that maintenance block (0: this is the maintenance block).
    pub index: i64,
    /// The block's slot time, Unix ms (a multiple of the block interval).
    pub time_ms: i64,
    /// `next_maintenance_time` while this block is the head, Unix ms.
    pub next_maintenance_ms: i64,
    /// Slot time of the period's maintenance block (graphene's `last_budget_time`), Unix ms.
    pub period_start_ms: i64,
    /// Blocks in this period, maintenance block included.
    pub period_blocks: i64,
}

impl ScheduledBlock {
    /// Whether this is a maintenance block (`dynamic_flags & 1`).
    pub fn is_maintenance(&self) -> bool {
        self.index == 0
    }
}

impl Schedule {
    /// The schedule of a chain with these parameters.
    pub fn new(params: ChainParams) -> Self {
        Self {
            params,
            interval: i64::try_from(params.block_interval_ms.max(1)).unwrap_or(i64::MAX),
            maintenance: i64::from(params.maintenance_interval_secs.max(1)) * 1000,
            skip: i64::from(params.maintenance_skip_slots),
        }
    }

    /// The parameters it was made from.
    pub fn params(&self) -> ChainParams {
        self.params
    }

    /// Time between slots, ms.
    pub fn block_interval_ms(&self) -> i64 {
        self.interval
    }

    /// Time between maintenances, ms.
    pub fn maintenance_interval_ms(&self) -> i64 {
        self.maintenance
    }

    /// The latest slot at or before `t_ms`.
    pub fn slot_at_or_before(&self, t_ms: i64) -> i64 {
        t_ms.saturating_sub(t_ms.rem_euclid(self.interval))
    }

    /// `next_maintenance_time` of a node whose head block has slot time `block_ms`: the
    /// first maintenance time strictly after it.
    pub fn next_maintenance_after(&self, block_ms: i64) -> i64 {
        block_ms
            .div_euclid(self.maintenance)
            .saturating_add(1)
            .saturating_mul(self.maintenance)
    }

    /// Whether a block at `block_ms` that follows a block at `previous_ms` is a maintenance
    /// block: the first block at or after the maintenance time the previous one announced
    /// (also when the maintenance slot itself was missed).
    pub fn is_maintenance_block(&self, previous_ms: i64, block_ms: i64) -> bool {
        block_ms >= self.next_maintenance_after(previous_ms)
    }

    /// The first slot a block may take after the block at `block_ms`: the next slot, or
    /// `1 + maintenance_skip_slots` slots later after a maintenance block.
    pub fn next_slot_after(&self, block_ms: i64, is_maintenance: bool) -> i64 {
        let slots = if is_maintenance { 1 + self.skip } else { 1 };
        block_ms.saturating_add(slots.saturating_mul(self.interval))
    }

    /// Time of maintenance `k` (`k × maintenance_interval`), ms.
    pub fn maintenance_time(&self, k: i64) -> i64 {
        k * self.maintenance
    }

    /// Slot time of the maintenance block of maintenance `k`: the first slot at or after it.
    pub fn maintenance_block_time(&self, k: i64) -> i64 {
        ceil_div(self.maintenance_time(k), self.interval) * self.interval
    }

    /// The period the head block at `t_ms` belongs to: the last maintenance whose
    /// maintenance block is at or before `t_ms`.
    pub fn period_at(&self, t_ms: i64) -> i64 {
        let k = t_ms.div_euclid(self.maintenance);
        if self.maintenance_block_time(k) > t_ms {
            k - 1
        } else {
            k
        }
    }

    /// Blocks from the maintenance block of period `from` up to, not including, that of
    /// period `to` (negative when `to` is earlier).
    pub fn blocks_between(&self, from: i64, to: i64) -> i64 {
        let slots =
            (self.maintenance_block_time(to) - self.maintenance_block_time(from)) / self.interval;
        slots - self.skip * (to - from)
    }

    /// Block `index` of period `period` (0 is the maintenance block). An index past the
    /// period's end gives a time that belongs to a later period: use [`Schedule::offset`].
    pub fn block(&self, period: i64, index: i64) -> ScheduledBlock {
        let start = self.maintenance_block_time(period);
        let time_ms = if index == 0 {
            start
        } else {
            start + (self.skip + index) * self.interval
        };
        ScheduledBlock {
            period,
            index,
            time_ms,
            next_maintenance_ms: self.maintenance_time(period + 1),
            period_start_ms: start,
            period_blocks: self.blocks_between(period, period + 1),
        }
    }

    /// The head block of an in-sync node at `t_ms`: the last block whose slot time is at or
    /// before `t_ms`.
    pub fn head_at(&self, t_ms: i64) -> ScheduledBlock {
        let period = self.period_at(t_ms);
        let first_after = self.next_slot_after(self.maintenance_block_time(period), true);
        if t_ms < first_after {
            self.block(period, 0)
        } else {
            self.block(period, 1 + (t_ms - first_after) / self.interval)
        }
    }

    /// The block `blocks` blocks after the maintenance block of period `from` (before it,
    /// if negative).
    pub fn offset(&self, from: i64, blocks: i64) -> ScheduledBlock {
        let per_period = (self.maintenance / self.interval - self.skip).max(1);
        let mut period = from + blocks.div_euclid(per_period);
        // The estimate is off by at most a period or two (slot times round up).
        while self.blocks_between(from, period) > blocks {
            period -= 1;
        }
        while self.blocks_between(from, period + 1) <= blocks {
            period += 1;
        }
        self.block(period, blocks - self.blocks_between(from, period))
    }

    /// Slot time of the first block after `t_ms`.
    pub fn next_block_time(&self, t_ms: i64) -> i64 {
        let head = self.head_at(t_ms);
        self.offset(head.period, head.index + 1).time_ms
    }
}

/// `a / b` rounded towards +∞ (`b > 0`).
fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAINNET: ChainParams = ChainParams::BITSHARES_MAINNET;
    /// 2026-11-23T01:00:00, a maintenance time on mainnet.
    const M: i64 = 1_795_395_600_000;

    fn fast() -> ChainParams {
        ChainParams::simulated(100, 2)
    }

    #[test]
    fn mainnet_hour_around_a_maintenance() {
        let s = Schedule::new(MAINNET);
        let maintenance = s.head_at(M);
        assert!(maintenance.is_maintenance());
        assert_eq!(maintenance.time_ms, M);
        assert_eq!(maintenance.next_maintenance_ms, M + 3_600_000);
        // 1,200 slots an hour, 3 of them skipped.
        assert_eq!(maintenance.period_blocks, 1_197);
        // Just before: the last block of the previous period, still announcing M.
        let before = s.head_at(M - 1);
        assert!(!before.is_maintenance());
        assert_eq!(before.time_ms, M - 3_000);
        assert_eq!(before.next_maintenance_ms, M);
        assert_eq!(s.next_maintenance_after(before.time_ms), M);
        assert!(s.is_maintenance_block(before.time_ms, M));
        assert!(!s.is_maintenance_block(M, M + 12_000));
        // The skipped slots: the maintenance block stays the head for 12 s.
        assert_eq!(s.head_at(M + 11_999), maintenance);
        assert_eq!(s.next_slot_after(M, true), M + 12_000);
        assert_eq!(s.next_slot_after(M, false), M + 3_000);
        assert_eq!(s.next_block_time(M), M + 12_000);
        let after = s.head_at(M + 12_000);
        assert_eq!((after.period, after.index), (maintenance.period, 1));
        assert_eq!(after.period_start_ms, M);
        // Mid-hour, on the slot grid.
        let mid = s.head_at(M + 1_800_001);
        assert_eq!(mid.time_ms, M + 1_800_000);
        assert_eq!(s.slot_at_or_before(M + 1_800_001), M + 1_800_000);
        assert_eq!(mid.next_maintenance_ms, M + 3_600_000);
        assert_eq!(s.next_maintenance_after(M), M + 3_600_000);
    }

    /// Walks the chain block by block over several maintenances and checks the slot rules,
    /// for aligned and unaligned intervals, against `head_at` and `offset`.
    #[test]
    fn walk_follows_slot_rules() {
        for p in [
            fast(),
            MAINNET,
            ChainParams {
                block_interval_ms: 700,
                maintenance_interval_secs: 5,
                maintenance_skip_slots: 2,
            },
        ] {
            assert!(p.validate().is_ok());
            let s = Schedule::new(p);
            let bi = s.block_interval_ms();
            let mut prev = s.head_at(1_760_000_000_123);
            let first = prev;
            let mut walked = 0;
            let mut maintenances = 0;
            for _ in 0..(u64::from(p.maintenance_interval_secs) * 3000 / p.block_interval_ms) {
                let next = s.offset(prev.period, prev.index + 1);
                walked += 1;
                assert_eq!(next.time_ms % bi, 0);
                assert_eq!(
                    next.time_ms,
                    s.next_slot_after(prev.time_ms, prev.is_maintenance())
                );
                assert_eq!(
                    next.is_maintenance(),
                    s.is_maintenance_block(prev.time_ms, next.time_ms)
                );
                if next.is_maintenance() {
                    maintenances += 1;
                    // The first slot at or after the announced maintenance time, which then
                    // advances by exactly one interval.
                    assert!(next.time_ms >= prev.next_maintenance_ms);
                    assert!(next.time_ms - bi < prev.next_maintenance_ms);
                    assert_eq!(
                        next.next_maintenance_ms,
                        prev.next_maintenance_ms + i64::from(p.maintenance_interval_secs) * 1000
                    );
                    assert_eq!(prev.index + 1, prev.period_blocks);
                } else {
                    assert_eq!(next.next_maintenance_ms, prev.next_maintenance_ms);
                    assert_eq!(next.period, prev.period);
                }
                assert_eq!(
                    next.next_maintenance_ms,
                    s.next_maintenance_after(next.time_ms)
                );
                // head_at agrees at and just before each slot.
                assert_eq!(s.head_at(next.time_ms), next);
                assert_eq!(s.head_at(next.time_ms - 1), prev);
                assert_eq!(s.next_block_time(prev.time_ms), next.time_ms);
                prev = next;
            }
            assert!(maintenances >= 2, "{p:?}");
            // Counting blocks across periods agrees with the walk, both ways.
            let from_first = s.blocks_between(first.period, prev.period) + prev.index - first.index;
            assert_eq!(from_first, walked, "{p:?}");
            assert_eq!(
                s.offset(
                    prev.period,
                    first.index - s.blocks_between(first.period, prev.period)
                ),
                first
            );
        }
    }
}
