//! Deterministic BitShares chain model: which block is the head at a given time.
//!
//! The model follows graphene's slot rules:
//!
//! * block slots are multiples of `block_interval` since the Unix epoch;
//! * maintenance times are multiples of `maintenance_interval` since the epoch
//!   (graphene advances `next_maintenance_time` by whole intervals, so they stay
//!   aligned once the chain has run one maintenance);
//! * the maintenance block is the first block at or after a maintenance time; it
//!   carries `dynamic_flags & 1` and already reports the *next* maintenance time;
//! * after it the chain skips `maintenance_skip_slots` slots, so the next block
//!   comes `(1 + skip) × interval` later;
//! * no other slot is missed.
//!
//! Everything is a pure function of the time, so two simulators with the same
//! parameters and clock agree on the head block, as real nodes in sync do. The
//! block numbers are anchored so that the maintenance block of the first
//! maintenance at or after 2025-01-01T00:00:00Z is block [`ANCHOR_BLOCK`] (close
//! to the real mainnet head of that day).

use serde::Serialize;

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

/// Chain timing parameters, as `get_global_properties` → `parameters` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ChainParams {
    /// Milliseconds between block slots (mainnet 3000). Sub-second values are
    /// for fast tests; the node then reports `block_interval` rounded up to 1 s.
    pub block_interval_ms: u64,
    /// Seconds between maintenances (mainnet 3600).
    pub maintenance_interval_secs: u64,
    /// Slots skipped after each maintenance block (mainnet 3).
    pub maintenance_skip_slots: u64,
}

impl Default for ChainParams {
    fn default() -> Self {
        Self::MAINNET
    }
}

impl ChainParams {
    /// BitShares mainnet: 3 s blocks, hourly maintenance, 3 skipped slots.
    pub const MAINNET: ChainParams = ChainParams {
        block_interval_ms: 3000,
        maintenance_interval_secs: 3600,
        maintenance_skip_slots: 3,
    };

    /// Rejects parameters the model cannot run: a zero interval, or maintenances
    /// so close that the skipped slots would run into the next one.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_interval_ms == 0 || self.block_interval_ms > 3_600_000 {
            return Err("block interval must be between 1 ms and 1 hour".into());
        }
        if self.maintenance_skip_slots > 1000 {
            return Err("maintenance_skip_slots must be at most 1000".into());
        }
        let min = (self.maintenance_skip_slots + 2) * self.block_interval_ms;
        if self.maintenance_interval_secs.saturating_mul(1000) < min {
            return Err(format!(
                "maintenance interval must be at least (skip + 2) block intervals ({min} ms)"
            ));
        }
        if self.maintenance_interval_secs > 366 * 86_400 {
            return Err("maintenance interval must be at most a year".into());
        }
        Ok(())
    }

    /// `block_interval` as the node reports it: whole seconds, rounded up, at least 1.
    pub fn block_interval_secs_reported(&self) -> u64 {
        self.block_interval_ms.div_ceil(1000).max(1)
    }

    fn bi(&self) -> i64 {
        self.block_interval_ms as i64
    }
    fn mi(&self) -> i64 {
        self.maintenance_interval_secs as i64 * 1000
    }
    fn skip(&self) -> i64 {
        self.maintenance_skip_slots as i64
    }
}

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

/// The closed-form chain: block at a time, block by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    params: ChainParams,
    /// Index of the anchor maintenance (maintenance k happens at k × interval).
    k_anchor: i64,
}

impl Chain {
    /// The chain for `params` (call [`ChainParams::validate`] first; invalid
    /// parameters give meaningless but non-panicking answers).
    pub fn new(params: ChainParams) -> Self {
        let mut params = params;
        params.block_interval_ms = params.block_interval_ms.max(1);
        params.maintenance_interval_secs = params.maintenance_interval_secs.max(1);
        let k_anchor = ceil_div(ANCHOR_UNIX_MS, params.mi());
        Chain { params, k_anchor }
    }

    pub fn params(&self) -> ChainParams {
        self.params
    }

    /// Time of maintenance `k` (`next_maintenance_time` values).
    fn maint_time(&self, k: i64) -> i64 {
        k * self.params.mi()
    }

    /// Time of the maintenance block of maintenance `k`: the first slot at or after it.
    fn maint_block_time(&self, k: i64) -> i64 {
        let bi = self.params.bi();
        ceil_div(self.maint_time(k), bi) * bi
    }

    /// Number of the maintenance block of maintenance `k`.
    fn maint_block_num(&self, k: i64) -> i64 {
        let p = &self.params;
        let slots = (self.maint_block_time(k) - self.maint_block_time(self.k_anchor)) / p.bi();
        ANCHOR_BLOCK + slots - p.skip() * (k - self.k_anchor)
    }

    /// Block `j` of period `k` (`j` = 0 is the maintenance block).
    fn block(&self, k: i64, j: i64) -> Block {
        let p = &self.params;
        let mk = self.maint_block_time(k);
        let time_ms = if j == 0 {
            mk
        } else {
            mk + (p.skip() + j) * p.bi()
        };
        let n0 = self.maint_block_num(k);
        Block {
            num: (n0 + j).max(1) as u64,
            time_ms,
            maintenance: j == 0,
            next_maintenance_ms: self.maint_time(k + 1),
            last_maintenance_ms: mk,
            blocks_since_maintenance: j as u64,
            period_blocks: (self.maint_block_num(k + 1) - n0) as u64,
        }
    }

    /// Index of the maintenance period a time falls in.
    fn period_at(&self, t_ms: i64) -> i64 {
        let k = t_ms.div_euclid(self.params.mi());
        if self.maint_block_time(k) > t_ms {
            k - 1
        } else {
            k
        }
    }

    /// The head block at `t_ms` (Unix ms): the last block whose slot time is ≤ `t_ms`.
    pub fn head_at(&self, t_ms: i64) -> Block {
        let p = &self.params;
        let k = self.period_at(t_ms);
        let first_after = self.maint_block_time(k) + (1 + p.skip()) * p.bi();
        if t_ms < first_after {
            self.block(k, 0)
        } else {
            self.block(k, 1 + (t_ms - first_after) / p.bi())
        }
    }

    /// Block number `num` (numbers below the model's first block clamp to it).
    pub fn block_by_num(&self, num: u64) -> Block {
        let p = &self.params;
        let n = num.min(i64::MAX as u64 / 4) as i64;
        let per = (p.mi() / p.bi() - p.skip()).max(1);
        let mut k = self.k_anchor + (n - ANCHOR_BLOCK).div_euclid(per);
        // The estimate is off by at most a period or two (rounding of slot times).
        while self.maint_block_num(k) > n {
            k -= 1;
        }
        while self.maint_block_num(k + 1) <= n {
            k += 1;
        }
        self.block(k, n - self.maint_block_num(k))
    }

    /// Slot time of the first block after `t_ms`.
    pub fn next_block_time(&self, t_ms: i64) -> i64 {
        let head = self.head_at(t_ms);
        self.block_by_num(head.num + 1).time_ms
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
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
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Parses a graphene time ("YYYY-MM-DDTHH:MM:SS", UTC) into Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> ChainParams {
        ChainParams {
            block_interval_ms: 100,
            maintenance_interval_secs: 2,
            maintenance_skip_slots: 3,
        }
    }

    #[test]
    fn time_round_trip() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00");
        assert_eq!(format_time(ANCHOR_UNIX_MS), "2025-01-01T00:00:00");
        assert_eq!(format_time(951_782_400_999), "2000-02-29T00:00:00");
        assert_eq!(parse_time("2024-02-29T23:59:59"), Some(1_709_251_199));
        for s in [0i64, 86_399, 951_782_400, 1_735_689_600, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(s * 1000)), Some(s));
        }
        assert_eq!(parse_time("2024-13-01T00:00:00"), None);
        assert_eq!(parse_time("2024-01-01 00:00:00"), None);
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
        assert!(ChainParams::MAINNET.validate().is_ok());
        assert!(fast().validate().is_ok());
        let bad = ChainParams {
            block_interval_ms: 1000,
            maintenance_interval_secs: 4,
            maintenance_skip_slots: 3,
        };
        assert!(bad.validate().is_err());
        assert_eq!(fast().block_interval_secs_reported(), 1);
        assert_eq!(ChainParams::MAINNET.block_interval_secs_reported(), 3);
    }

    #[test]
    fn anchor_block_is_a_maintenance_block() {
        let c = Chain::new(ChainParams::MAINNET);
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

    /// Walks the chain block by block over several maintenances and checks the
    /// slot rules, for aligned and unaligned intervals.
    #[test]
    fn walk_follows_slot_rules() {
        for p in [
            fast(),
            ChainParams::MAINNET,
            ChainParams {
                block_interval_ms: 700,
                maintenance_interval_secs: 5,
                maintenance_skip_slots: 2,
            },
        ] {
            let c = Chain::new(p);
            let bi = p.block_interval_ms as i64;
            let start = c.head_at(1_760_000_000_123);
            let mut prev = start.clone();
            let mut maints = 0;
            for _ in 0..(p.maintenance_interval_secs * 3000 / p.block_interval_ms) {
                let next = c.block_by_num(prev.num + 1);
                assert_eq!(next.num, prev.num + 1);
                assert_eq!(next.time_ms % bi, 0);
                let gap = next.time_ms - prev.time_ms;
                if prev.maintenance {
                    assert_eq!(gap, (1 + p.maintenance_skip_slots as i64) * bi, "{p:?}");
                } else {
                    assert_eq!(gap, bi, "{p:?}");
                }
                if next.maintenance {
                    maints += 1;
                    // The first slot at or after the previous next_maintenance_time,
                    // which then advances by exactly one interval.
                    assert!(next.time_ms >= prev.next_maintenance_ms);
                    assert!(next.time_ms - bi < prev.next_maintenance_ms);
                    assert_eq!(
                        next.next_maintenance_ms,
                        prev.next_maintenance_ms + p.maintenance_interval_secs as i64 * 1000
                    );
                } else {
                    assert_eq!(next.next_maintenance_ms, prev.next_maintenance_ms);
                }
                assert!(next.next_maintenance_ms > next.time_ms);
                // head_at agrees with block_by_num at and just before each slot.
                assert_eq!(c.head_at(next.time_ms), next);
                assert_eq!(c.head_at(next.time_ms - 1), prev);
                assert_eq!(c.next_block_time(prev.time_ms), next.time_ms);
                prev = next;
            }
            assert!(maints >= 2, "{p:?}");
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
