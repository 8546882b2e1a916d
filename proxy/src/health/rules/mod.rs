//! Chain-aware health rules for BitShares API backends.
//!
//! Everything here is pure: no I/O, no clocks, no async. The caller runs the
//! checks (`get_dynamic_global_properties`), stamps each answer with the local
//! time it arrived, and feeds the result through these rules (the chain's
//! parameters and time format live in [`crate::chain`]):
//!
//! * [`judge`] turns one answer into a [`Verdict`]: is the head block fresh
//!   enough ([`max_head_age`]) and close enough to the best backend's head?
//! * [`HealthState`] damps verdicts with rise/fall counters into an up/down
//!   state, and explains itself ([`HealthState::why`]) for `proxy backends list`.
//! * [`PassiveEjector`] ejects a backend whose connects fail on the data path,
//!   with exponential backoff, until an active check passes again.
//! * [`slow_start_weight`] ramps a re-admitted backend's weight from 10 % to 100 %.
//!
//! # Why the allowance depends on the maintenance schedule
//!
//! BitShares produces a block every `block_interval` seconds (3 on mainnet).
//! The first block at or after `next_maintenance_time` is the maintenance
//! block; after it the chain skips `maintenance_skip_slots` slots (3 on
//! mainnet), so the next block comes `(1 + skip) × interval` = 12 s later.
//! A fixed "head must be at most 6 s old" rule therefore sees every healthy
//! node stale for about 6 s once an hour, long enough for HAProxy-style
//! checks (every 2 s, fall 3) to take it down: that is how the old checker
//! flapped.
//!
//! [`max_head_age`] allows `interval × (1 + skip) + margin` (18 s on mainnet)
//! when the head block lies within `maintenance_window_secs` of a maintenance
//! time, and `interval × 2 + margin` (12 s) otherwise.
//!
//! The window is anchored on the **head block's timestamp**, not on the wall
//! clock. The long gap only ever follows a head block that is the maintenance
//! block (or the block just before it, while the node applies maintenance).
//! Because the allowance depends only on what the node reported, a node whose
//! head is frozen keeps the same allowance for ever: once its head is too old
//! it stays too old, and the fall counter is never reset by the wall clock
//! walking into a maintenance window. A wall-clock anchored window would
//! briefly re-admit a node that stalled half a minute before maintenance (see
//! the test `now_anchored_window_would_readmit_a_stalled_node`).
//!
//! # Whole seconds
//!
//! Chain times have one-second resolution and so does `observed_at_unix`. An
//! age equal to the allowance is still fine; a node is stale once its
//! whole-second age exceeds the allowance. The chain model counts in
//! milliseconds (simulated chains may have sub-second blocks); the rules use
//! `block_interval` in whole seconds as a node reports it
//! ([`ChainParams::block_interval_secs`], rounded up).

mod eject;
mod judge;
#[cfg(test)]
pub(crate) mod sim;
mod state;
#[cfg(test)]
mod tests;

pub use eject::{slow_start_weight, EjectorConfig, PassiveEjector};
pub use judge::{judge, max_head_age, near_maintenance, HeadSample, Verdict, MAX_FUTURE_HEAD_SECS};
pub use state::{BackendState, HealthState, Transition};

use crate::chain::ChainParams;

/// Errors of the health rules' settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// A configuration value that the rules cannot work with (from
    /// [`RuleConfig::validate`] or [`EjectorConfig::validate`]).
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
}

/// Tunables of the health rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleConfig {
    /// Seconds added to every head-age allowance for propagation, answer
    /// latency, clock skew and missed slots (default 6: two missed slots).
    pub margin_secs: u32,
    /// A backend this many blocks **or more** behind the best head is
    /// [`Verdict::Lagging`] (default 10, i.e. 30 s of blocks on mainnet).
    /// 0 disables the lag rule.
    pub max_lag_blocks: u64,
    /// Consecutive healthy verdicts that bring a Down backend Up (default 2).
    /// 0 counts as 1.
    pub rise: u32,
    /// Consecutive unhealthy verdicts that take a backend Down (default 3).
    /// 0 counts as 1.
    pub fall: u32,
    /// How far from a maintenance time (before or after) the head block may
    /// be for the maintenance allowance to apply. Default
    /// `2 × (1 + skip) × interval` (24 s on mainnet).
    pub maintenance_window_secs: u32,
}

impl RuleConfig {
    /// Default `margin_secs`.
    pub const DEFAULT_MARGIN_SECS: u32 = 6;
    /// Default `max_lag_blocks`.
    pub const DEFAULT_MAX_LAG_BLOCKS: u64 = 10;
    /// Default `rise`.
    pub const DEFAULT_RISE: u32 = crate::config::health::DEFAULT_RISE;
    /// Default `fall`.
    pub const DEFAULT_FALL: u32 = crate::config::health::DEFAULT_FALL;

    /// The defaults, with the maintenance window derived from `params`.
    pub fn for_chain(params: &ChainParams) -> Self {
        let window = u64::from(params.block_interval_secs())
            .saturating_mul(1 + u64::from(params.maintenance_skip_slots))
            .saturating_mul(2);
        Self {
            margin_secs: Self::DEFAULT_MARGIN_SECS,
            max_lag_blocks: Self::DEFAULT_MAX_LAG_BLOCKS,
            rise: Self::DEFAULT_RISE,
            fall: Self::DEFAULT_FALL,
            maintenance_window_secs: saturate_u32(window),
        }
    }

    /// Rejects `rise == 0` and `fall == 0` (the rules treat them as 1, but a
    /// config file saying 0 is most likely a mistake).
    pub fn validate(&self) -> Result<(), HealthError> {
        if self.rise == 0 {
            return Err(HealthError::InvalidConfig {
                field: "rise",
                reason: "must be at least 1",
            });
        }
        if self.fall == 0 {
            return Err(HealthError::InvalidConfig {
                field: "fall",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}

impl Default for RuleConfig {
    /// [`RuleConfig::for_chain`] of [`ChainParams::BITSHARES_MAINNET`].
    fn default() -> Self {
        Self::for_chain(&ChainParams::BITSHARES_MAINNET)
    }
}

pub(crate) fn saturate_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
