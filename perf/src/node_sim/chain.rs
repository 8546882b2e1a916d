//! The simulated chain: the chain model's schedule ([`proxy::chain::Schedule`]: slots,
//! maintenances, skipped slots, one model for the proxy and the simulator) plus what only a
//! simulated node needs: block numbers, block ids, witnesses and the `2.1.0` object.
//!
//! Everything is a pure function of the time, so two simulators with the same parameters
//! and clock agree on the head block, as real nodes in sync do. The block numbers are
//! anchored so that the maintenance block of the first maintenance at or after
//! 2025-01-01T00:00:00Z is block [`ANCHOR_BLOCK`] (close to the real mainnet head of that
//! day).

use proxy::chain::{format_chain_time, Schedule, ScheduledBlock};
use serde::Serialize;

pub use proxy::chain::ChainParams;

/// BitShares mainnet chain id.
pub const MAINNET_CHAIN_ID: &str =
    "4018d7844c78f6a6c41c6a552b898022310fc5dec06da467ee7905a8dad512c8";

/// Unix time (ms) the block numbering is anchored to: 2025-01-01T00:00:00Z.
pub const ANCHOR_UNIX_MS: i64 = 1_735_689_600_000;
/// Number of the first maintenance block at or after [`ANCHOR_UNIX_MS`].
pub const ANCHOR_BLOCK: i64 = 93_000_000;
/// `current_aslot` − `head_block_number` (the slots mainnet missed before the anchor).
const ASLOT_OFFSET: u64 = 1_764_312;
/// `recent_slots_filled` of a chain that missed none of its last 128 slots.
const ALL_SLOTS_FILLED: &str = "340282366920938463463374607431768211455";
/// Witness pay per block (satoshis of BTS), used for `witness_budget`.
const WITNESS_PAY_PER_BLOCK: u64 = 35_000;

/// Active witnesses ("1.6.N"); the producer of block `n` is `WITNESSES[n % len]`.
pub(crate) const WITNESSES: [u32; 27] = [
    12, 16, 17, 22, 27, 31, 35, 42, 45, 61, 64, 69, 70, 71, 86, 89, 90, 92, 102, 109, 113, 114,
    118, 120, 121, 125, 131,
];
/// Active committee members ("1.5.N").
pub(crate) const COMMITTEE: [u32; 11] = [14, 15, 21, 23, 29, 31, 37, 41, 44, 47, 52];

/// One block of the simulated chain, with what `2.1.0` reports while it is the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    /// `head_block_number`.
    pub num: u64,
    /// Slot time, Unix milliseconds (a multiple of the block interval).
    pub time_ms: i64,
    /// This is a maintenance block (`dynamic_flags` 1).
    pub maintenance: bool,
    /// `next_maintenance_time`, Unix milliseconds (whole seconds).
    pub next_maintenance_ms: i64,
    /// Time of the maintenance block that opened this maintenance period
    /// (`last_budget_time`), Unix milliseconds.
    pub last_maintenance_ms: i64,
    /// Blocks since that maintenance block (0 on the maintenance block itself).
    pub blocks_since_maintenance: u64,
    /// Blocks in this maintenance period, maintenance block included.
    pub period_blocks: u64,
}

impl Block {
    /// `head_block_id`: 40 hex digits, the first 8 the block number (as in graphene).
    pub fn id(&self) -> String {
        block_id(self.num)
    }

    /// `time` as the node prints it ("YYYY-MM-DDTHH:MM:SS", UTC).
    pub fn time(&self) -> String {
        format_time(self.time_ms)
    }

    /// The `2.1.0` dynamic global properties object while this block is the head.
    pub fn dynamic_global_properties(&self) -> DynamicGlobalProperties {
        let num = self.num;
        let left = self
            .period_blocks
            .saturating_sub(self.blocks_since_maintenance);
        DynamicGlobalProperties {
            id: "2.1.0",
            head_block_number: num,
            head_block_id: self.id(),
            time: self.time(),
            current_witness: format!("1.6.{}", WITNESSES[(num % WITNESSES.len() as u64) as usize]),
            next_maintenance_time: format_time(self.next_maintenance_ms),
            last_vote_tally_time: format_time(self.last_maintenance_ms),
            last_budget_time: format_time(self.last_maintenance_ms),
            witness_budget: WITNESS_PAY_PER_BLOCK * left,
            total_pob: 0,
            total_inactive: 0,
            accounts_registered_this_interval: self.blocks_since_maintenance / 97,
            recently_missed_count: 0,
            current_aslot: num + ASLOT_OFFSET,
            recent_slots_filled: ALL_SLOTS_FILLED,
            dynamic_flags: u32::from(self.maintenance),
            last_irreversible_block_num: num.saturating_sub(14 + num % 3),
        }
    }
}

/// The `2.1.0` object, fields in the order the real node prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DynamicGlobalProperties {
    pub id: &'static str,
    pub head_block_number: u64,
    pub head_block_id: String,
    pub time: String,
    pub current_witness: String,
    pub next_maintenance_time: String,
    pub last_vote_tally_time: String,
    pub last_budget_time: String,
    pub witness_budget: u64,
    pub total_pob: u64,
    pub total_inactive: u64,
    pub accounts_registered_this_interval: u64,
    pub recently_missed_count: u64,
    pub current_aslot: u64,
    pub recent_slots_filled: &'static str,
    pub dynamic_flags: u32,
    pub last_irreversible_block_num: u64,
}

/// The simulated chain: the schedule of [`proxy::chain::Schedule`] with block numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    schedule: Schedule,
    /// The period of the anchor maintenance (the first at or after [`ANCHOR_UNIX_MS`]).
    k_anchor: i64,
}

impl Chain {
    /// The chain for `params` (call [`ChainParams::validate`] first; invalid parameters give
    /// meaningless but non-panicking answers).
    pub fn new(params: ChainParams) -> Self {
        let schedule = Schedule::new(params);
        let first_at_or_after = schedule.next_maintenance_after(ANCHOR_UNIX_MS - 1);
        let k_anchor = first_at_or_after / schedule.maintenance_interval_ms();
        Chain { schedule, k_anchor }
    }

    pub fn params(&self) -> ChainParams {
        self.schedule.params()
    }

    /// The block the schedule has there, numbered.
    fn numbered(&self, b: ScheduledBlock) -> Block {
        let num = ANCHOR_BLOCK + self.schedule.blocks_between(self.k_anchor, b.period) + b.index;
        Block {
            num: num.max(1) as u64,
            time_ms: b.time_ms,
            maintenance: b.is_maintenance(),
            next_maintenance_ms: b.next_maintenance_ms,
            last_maintenance_ms: b.period_start_ms,
            blocks_since_maintenance: b.index as u64,
            period_blocks: b.period_blocks as u64,
        }
    }

    /// The head block at `t_ms` (Unix ms): the last block whose slot time is ≤ `t_ms`.
    pub fn head_at(&self, t_ms: i64) -> Block {
        self.numbered(self.schedule.head_at(t_ms))
    }

    /// Block number `num` (numbers below the model's first block clamp to it).
    pub fn block_by_num(&self, num: u64) -> Block {
        let n = num.min(i64::MAX as u64 / 4) as i64;
        self.numbered(self.schedule.offset(self.k_anchor, n - ANCHOR_BLOCK))
    }

    /// Slot time of the first block after `t_ms`.
    pub fn next_block_time(&self, t_ms: i64) -> i64 {
        self.schedule.next_block_time(t_ms)
    }
}

/// 64-bit mixer (splitmix64 finaliser): deterministic pseudo-random bits.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Block id: the block number in the first 4 bytes, then 16 pseudo-random bytes.
pub fn block_id(num: u64) -> String {
    format!(
        "{:08x}{:016x}{:016x}",
        num as u32,
        mix64(num),
        mix64(num ^ 0x5bd1_e995_0000_0000)
    )
}

/// Formats Unix milliseconds as a graphene time ("YYYY-MM-DDTHH:MM:SS", UTC, floor to seconds).
pub fn format_time(ms: i64) -> String {
    format_chain_time(ms.div_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proxy::chain::parse_chain_time;

    fn fast() -> ChainParams {
        ChainParams::simulated(100, 2)
    }

    #[test]
    fn time_round_trip() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00");
        assert_eq!(format_time(ANCHOR_UNIX_MS), "2025-01-01T00:00:00");
        assert_eq!(format_time(951_782_400_999), "2000-02-29T00:00:00");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59");
        assert_eq!(parse_chain_time("2024-02-29T23:59:59"), Ok(1_709_251_199));
        for s in [0i64, 86_399, 951_782_400, 1_735_689_600, 4_102_444_800] {
            assert_eq!(parse_chain_time(&format_time(s * 1000)), Ok(s));
            assert_eq!(parse_chain_time(&format_time(s * 1000 + 999)), Ok(s));
        }
        assert!(parse_chain_time("2024-13-01T00:00:00").is_err());
        assert!(parse_chain_time("2024-01-01 00:00:00").is_err());
    }

    #[test]
    fn block_id_starts_with_number() {
        let id = block_id(93_000_123);
        assert_eq!(id.len(), 40);
        assert!(id.starts_with(&format!("{:08x}", 93_000_123)));
        assert_ne!(block_id(1), block_id(2));
    }

    #[test]
    fn params_validation() {
        assert!(ChainParams::BITSHARES_MAINNET.validate().is_ok());
        assert!(fast().validate().is_ok());
        let bad = ChainParams::simulated(1000, 4);
        assert!(bad.validate().is_err());
        assert_eq!(fast().block_interval_secs(), 1);
        assert_eq!(ChainParams::BITSHARES_MAINNET.block_interval_secs(), 3);
    }

    #[test]
    fn anchor_block_is_a_maintenance_block() {
        let c = Chain::new(ChainParams::BITSHARES_MAINNET);
        let b = c.head_at(ANCHOR_UNIX_MS);
        assert_eq!(b.num, ANCHOR_BLOCK as u64);
        assert!(b.maintenance);
        assert_eq!(b.next_maintenance_ms, ANCHOR_UNIX_MS + 3_600_000);
        // Mainnet: 1200 slots an hour, 3 skipped.
        assert_eq!(b.period_blocks, 1197);
        // Before the anchor, the previous period's last block.
        let prev = c.head_at(ANCHOR_UNIX_MS - 1);
        assert_eq!(prev.num, ANCHOR_BLOCK as u64 - 1);
        assert_eq!(prev.next_maintenance_ms, ANCHOR_UNIX_MS);
        assert_eq!(prev.time_ms, ANCHOR_UNIX_MS - 3000);
    }

    /// Block numbers follow the schedule: consecutive, and `head_at` and `block_by_num`
    /// agree at and just before every slot, for aligned and unaligned intervals (the slot
    /// rules themselves are tested with `proxy::chain::Schedule`).
    #[test]
    fn numbers_follow_the_schedule() {
        for p in [
            fast(),
            ChainParams::BITSHARES_MAINNET,
            ChainParams {
                block_interval_ms: 700,
                maintenance_interval_secs: 5,
                maintenance_skip_slots: 2,
            },
        ] {
            let (c, s) = (Chain::new(p), Schedule::new(p));
            let mut prev = c.head_at(1_760_000_000_123);
            let mut maintenances = 0;
            for _ in 0..(u64::from(p.maintenance_interval_secs) * 3000 / p.block_interval_ms) {
                let next = c.block_by_num(prev.num + 1);
                assert_eq!(next.num, prev.num + 1);
                assert_eq!(
                    next.time_ms,
                    s.next_slot_after(prev.time_ms, prev.maintenance),
                    "{p:?}"
                );
                assert_eq!(
                    next.maintenance,
                    s.is_maintenance_block(prev.time_ms, next.time_ms)
                );
                if next.maintenance {
                    maintenances += 1;
                    assert_eq!(prev.blocks_since_maintenance + 1, prev.period_blocks);
                }
                assert_eq!(c.head_at(next.time_ms), next);
                assert_eq!(c.head_at(next.time_ms - 1), prev);
                assert_eq!(c.next_block_time(prev.time_ms), next.time_ms);
                prev = next;
            }
            assert!(maintenances >= 2, "{p:?}");
        }
    }

    #[test]
    fn dgp_fields() {
        let c = Chain::new(fast());
        let b = c.head_at(1_760_000_000_000);
        let d = b.dynamic_global_properties();
        assert_eq!(d.head_block_number, b.num);
        assert_eq!(d.last_irreversible_block_num + 14 + b.num % 3, b.num);
        assert_eq!(d.dynamic_flags, u32::from(b.maintenance));
        assert!(d.current_witness.starts_with("1.6."));
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["id"], "2.1.0");
        assert_eq!(v["head_block_id"].as_str().unwrap().len(), 40);
    }
}
