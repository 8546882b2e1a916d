//! A randomized, seeded BitShares chain and node simulator for the rules'
//! tests (test builds only; the release binary does not carry it).
//!
//! The chain follows [`crate::chain::Schedule`] (slot grid, maintenance
//! blocks, skipped slots after them), except random missed slots (seeded
//! xorshift, at most `max_consecutive_missed` in a row; a missed maintenance
//! slot makes the next block the maintenance block). Each block reaches the
//! nodes after a random propagation delay, and nodes misbehave on purpose
//! ([`Behavior`]). Simulated time is in milliseconds.

use super::HeadSample;
use crate::chain::{ChainParams, Schedule};

/// Seeded xorshift64* generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator; seed 0 is replaced by a fixed non-zero constant.
    pub fn new(seed: u64) -> Self {
        Self {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `ppm` / 1,000,000.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        self.below(1_000_000) < u64::from(ppm)
    }
}

/// What chain to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSpec {
    /// Chain timing.
    pub params: ChainParams,
    /// Time of the first block (rounded down to the slot grid).
    pub start_unix: i64,
    /// Simulated duration after the first block.
    pub duration_secs: u32,
    /// Probability of a missed slot, in parts per million.
    pub missed_slot_ppm: u32,
    /// Never more than this many missed slots in a row.
    pub max_consecutive_missed: u32,
    /// Blocks reach nodes 0..=this many ms after their slot time.
    pub max_propagation_ms: u32,
    /// Random seed.
    pub seed: u64,
}

impl ChainSpec {
    /// One mainnet day from 2026-11-23T00:00:00 with 1 % missed slots,
    /// never two in a row, and up to 900 ms propagation.
    pub fn mainnet_day(seed: u64) -> Self {
        Self {
            params: ChainParams::BITSHARES_MAINNET,
            start_unix: 1_795_392_000,
            duration_secs: 86_400,
            missed_slot_ppm: 10_000,
            max_consecutive_missed: 1,
            max_propagation_ms: 900,
            seed,
        }
    }
}

/// A simulated block and the chain state right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimBlock {
    /// Block number.
    pub number: u64,
    /// Block timestamp (its slot time).
    pub time_unix: i64,
    /// `next_maintenance_time` as a node reports it with this block as head.
    pub next_maintenance_time_unix: i64,
    /// Whether this is a maintenance block.
    pub is_maintenance: bool,
    /// When nodes have it, in ms since the epoch (non-decreasing).
    pub arrives_at_ms: i64,
}

/// A pre-generated chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    blocks: Vec<SimBlock>,
    missed_slots: u64,
}

impl Chain {
    /// Generates the chain described by `spec` (memory grows with
    /// `duration_secs / block_interval`: about 1 MiB per simulated day).
    pub fn generate(spec: ChainSpec) -> Self {
        // The slot grid, the maintenance blocks and the skipped slots come from the chain
        // model; this adds the random misses and the propagation delays.
        let schedule = Schedule::new(spec.params);
        let start = schedule.slot_at_or_before(spec.start_unix.saturating_mul(1000));
        let end = start.saturating_add(i64::from(spec.duration_secs).saturating_mul(1000));
        let block = |number, time_ms: i64, is_maintenance, arrives_at_ms| SimBlock {
            number,
            time_unix: time_ms.div_euclid(1000),
            next_maintenance_time_unix: schedule.next_maintenance_after(time_ms).div_euclid(1000),
            is_maintenance,
            arrives_at_ms,
        };
        let mut rng = XorShift64::new(spec.seed);
        let mut number = 1_000_000u64;
        let mut blocks = vec![block(number, start, false, start)];
        let (mut previous, mut last_arrival) = (start, start);
        let (mut missed_run, mut missed_slots) = (0u32, 0u64);
        let mut slot = schedule.next_slot_after(start, false);
        while slot <= end && slot != i64::MAX {
            if missed_run < spec.max_consecutive_missed && rng.chance_ppm(spec.missed_slot_ppm) {
                missed_run += 1;
                missed_slots += 1;
                slot = schedule.next_slot_after(slot, false);
                continue;
            }
            missed_run = 0;
            number += 1;
            let is_maintenance = schedule.is_maintenance_block(previous, slot);
            let propagation =
                i64::try_from(rng.below(u64::from(spec.max_propagation_ms) + 1)).unwrap_or(0);
            let arrives_at_ms = slot.saturating_add(propagation).max(last_arrival);
            last_arrival = arrives_at_ms;
            blocks.push(block(number, slot, is_maintenance, arrives_at_ms));
            previous = slot;
            slot = schedule.next_slot_after(slot, is_maintenance);
        }
        Self {
            blocks,
            missed_slots,
        }
    }

    /// All blocks, oldest first.
    pub fn blocks(&self) -> &[SimBlock] {
        &self.blocks
    }

    /// Randomly missed slots (not counting maintenance skips).
    pub fn missed_slots(&self) -> u64 {
        self.missed_slots
    }

    /// Timestamps of the maintenance blocks.
    pub fn maintenance_block_times(&self) -> Vec<i64> {
        self.blocks
            .iter()
            .filter(|b| b.is_maintenance)
            .map(|b| b.time_unix)
            .collect()
    }

    /// Index of the newest block that has reached nodes by `at_ms`.
    pub fn head_index_at(&self, at_ms: i64) -> Option<usize> {
        self.blocks
            .partition_point(|b| b.arrives_at_ms <= at_ms)
            .checked_sub(1)
    }

    /// The newest block that has reached nodes by `at_ms`.
    pub fn head_at(&self, at_ms: i64) -> Option<&SimBlock> {
        self.head_index_at(at_ms).and_then(|i| self.blocks.get(i))
    }
}

/// How a simulated node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Follows the chain.
    Healthy,
    /// Follows the chain until `at_unix`, then its head stops advancing.
    StalledFrom {
        /// When it stalls.
        at_unix: i64,
    },
    /// A slow node: always reports the block `blocks` before the real head.
    BehindBlocks {
        /// How many blocks behind.
        blocks: u64,
    },
    /// On a minority fork: fresh head time, but a block number `blocks`
    /// lower than the real head's.
    ForkBehind {
        /// How many blocks behind.
        blocks: u64,
    },
    /// Answers like a healthy node for `up_checks` checks, then does not
    /// answer for `down_checks` checks, and so on.
    Flapping {
        /// Checks answered.
        up_checks: u32,
        /// Checks unanswered.
        down_checks: u32,
    },
}

/// The result of checking a simulated node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// When the check was sent (ms).
    pub sent_at_ms: i64,
    /// The answer, or `None` if the node did not answer.
    pub sample: Option<HeadSample>,
    /// The head number a healthy peer had at the same moment.
    pub best_head: Option<u64>,
}

/// A simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    behavior: Behavior,
    rng: XorShift64,
    max_latency_ms: u32,
    checks: u64,
}

impl Node {
    /// A node; each check's round trip takes 2..=`max_latency_ms` ms,
    /// split between request and response.
    pub fn new(behavior: Behavior, seed: u64, max_latency_ms: u32) -> Self {
        Self {
            behavior,
            rng: XorShift64::new(seed),
            max_latency_ms,
            checks: 0,
        }
    }

    /// Checks the node at `sent_at_ms`.
    pub fn check(&mut self, chain: &Chain, sent_at_ms: i64) -> Probe {
        let half = u64::from(self.max_latency_ms / 2);
        let request = i64::try_from(1 + self.rng.below(half)).unwrap_or(1);
        let response = i64::try_from(1 + self.rng.below(half)).unwrap_or(1);
        let seen_at = sent_at_ms.saturating_add(request);
        let answered_at = seen_at.saturating_add(response);
        let check_no = self.checks;
        self.checks = self.checks.saturating_add(1);
        let best_head = chain.head_at(seen_at).map(|b| b.number);
        let index = match self.behavior {
            Behavior::StalledFrom { at_unix } => {
                chain.head_index_at(seen_at.min(at_unix.saturating_mul(1000)))
            }
            Behavior::BehindBlocks { blocks } => chain
                .head_index_at(seen_at)
                .map(|i| i.saturating_sub(usize::try_from(blocks).unwrap_or(usize::MAX))),
            Behavior::Flapping {
                up_checks,
                down_checks,
            } => {
                let period = u64::from(up_checks) + u64::from(down_checks);
                if period > 0 && check_no % period >= u64::from(up_checks) {
                    None
                } else {
                    chain.head_index_at(seen_at)
                }
            }
            Behavior::Healthy | Behavior::ForkBehind { .. } => chain.head_index_at(seen_at),
        };
        let sample = index.and_then(|i| chain.blocks().get(i)).map(|b| {
            let lower = match self.behavior {
                Behavior::ForkBehind { blocks } => blocks,
                _ => 0,
            };
            HeadSample {
                observed_at_unix: answered_at.div_euclid(1000),
                head_block_number: b.number.saturating_sub(lower),
                head_block_time_unix: b.time_unix,
                next_maintenance_time_unix: b.next_maintenance_time_unix,
            }
        });
        Probe {
            sent_at_ms,
            sample,
            best_head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::format_chain_time;

    #[test]
    fn simulator_models_maintenance_like_the_chain() {
        let chain = Chain::generate(ChainSpec {
            missed_slot_ppm: 0,
            ..ChainSpec::mainnet_day(1)
        });
        let blocks = chain.blocks();
        // 28,800 slots after the first block, minus 3 skipped after each of
        // the 23 maintenances before the last block (which is the 24th).
        assert_eq!(chain.maintenance_block_times().len(), 24);
        assert_eq!(blocks.len(), 28_801 - 23 * 3);
        for pair in blocks.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(b.number, a.number + 1);
            let gap = b.time_unix - a.time_unix;
            assert_eq!(gap, if a.is_maintenance { 12 } else { 3 });
            assert!(b.arrives_at_ms >= a.arrives_at_ms);
            if b.is_maintenance {
                assert_eq!(b.time_unix % 3600, 0);
                assert_eq!(a.next_maintenance_time_unix, b.time_unix);
                assert_eq!(b.next_maintenance_time_unix, b.time_unix + 3600);
            }
        }
        // A missed maintenance slot: the next block is the maintenance block.
        let chain = Chain::generate(ChainSpec {
            missed_slot_ppm: 300_000,
            max_consecutive_missed: 1,
            ..ChainSpec::mainnet_day(2)
        });
        let late = chain
            .blocks()
            .iter()
            .filter(|b| b.is_maintenance && b.time_unix % 3600 != 0)
            .count();
        assert!(late > 0);
        for b in chain.blocks().iter().filter(|b| b.is_maintenance) {
            assert!(
                b.time_unix % 3600 <= 3,
                "{}",
                format_chain_time(b.time_unix)
            );
            assert_eq!(
                b.next_maintenance_time_unix,
                b.time_unix - b.time_unix % 3600 + 3600
            );
        }
    }

    /// Without missed slots the simulated chain is exactly the chain model's schedule.
    #[test]
    fn without_missed_slots_the_simulator_is_the_schedule() {
        // Starting mid-period: the simulator's first block never counts as a maintenance
        // block (nothing came before it).
        let day = ChainSpec::mainnet_day(9);
        let spec = ChainSpec {
            missed_slot_ppm: 0,
            duration_secs: 3 * 3600,
            start_unix: day.start_unix + 600,
            ..day
        };
        let chain = Chain::generate(spec);
        let schedule = Schedule::new(spec.params);
        let first = schedule.head_at(chain.blocks()[0].time_unix * 1000);
        for (i, b) in chain.blocks().iter().enumerate() {
            let expected = schedule.offset(first.period, first.index + i as i64);
            assert_eq!(b.time_unix * 1000, expected.time_ms, "block {i}");
            assert_eq!(
                b.next_maintenance_time_unix * 1000,
                expected.next_maintenance_ms
            );
            assert_eq!(b.is_maintenance, expected.is_maintenance());
        }
        assert_eq!(chain.maintenance_block_times().len(), 3);
    }
}
