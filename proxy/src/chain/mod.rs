//! The BitShares chain as the proxy and its simulators see it: the timing parameters
//! ([`ChainParams`]), chain time (`YYYY-MM-DDTHH:MM:SS`, [`parse_chain_time`]) and the block
//! schedule of a chain that misses no slot ([`Schedule`]: slots, maintenances, skipped slots).
//!
//! Pure: no I/O, no clock. The health rules judge nodes with it, and the node simulator
//! (`perf/src/node_sim`) and the rules' randomized tests produce their chains with it, so
//! there is one model of when blocks are due.

mod schedule;
mod time;

pub use schedule::{Schedule, ScheduledBlock};
pub use time::{format_chain_time, parse_chain_time};

/// Chain timing parameters, from `get_global_properties` → `parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainParams {
    /// `parameters.block_interval` in milliseconds: time between block slots (mainnet
    /// 3,000). Real chains have whole seconds; shorter intervals are for simulated chains.
    pub block_interval_ms: u64,
    /// `parameters.maintenance_interval`: seconds between maintenances (mainnet 3,600).
    pub maintenance_interval_secs: u32,
    /// `parameters.maintenance_skip_slots`: slots skipped after a maintenance block (mainnet 3).
    pub maintenance_skip_slots: u32,
}

impl ChainParams {
    /// BitShares mainnet: 3 s blocks, hourly maintenance, 3 skipped slots.
    pub const BITSHARES_MAINNET: ChainParams = ChainParams {
        block_interval_ms: 3_000,
        maintenance_interval_secs: 3_600,
        maintenance_skip_slots: 3,
    };

    /// Longest block interval [`ChainParams::validate`] accepts.
    pub const MAX_BLOCK_INTERVAL_MS: u64 = 3_600_000;
    /// Most skipped slots [`ChainParams::validate`] accepts.
    pub const MAX_SKIP_SLOTS: u32 = 1_000;
    /// Longest maintenance interval [`ChainParams::validate`] accepts (a leap year).
    pub const MAX_MAINTENANCE_INTERVAL_SECS: u32 = 366 * 86_400;

    /// Parameters as a node reports them: every interval in whole seconds.
    pub fn from_secs(
        block_interval_secs: u32,
        maintenance_interval_secs: u32,
        maintenance_skip_slots: u32,
    ) -> Self {
        Self {
            block_interval_ms: u64::from(block_interval_secs) * 1000,
            maintenance_interval_secs,
            maintenance_skip_slots,
        }
    }

    /// A simulated chain (node simulator, tests): mainnet's 3 skipped slots, with blocks
    /// every `block_interval_ms` and maintenance every `maintenance_interval_secs`.
    pub const fn simulated(block_interval_ms: u64, maintenance_interval_secs: u32) -> Self {
        Self {
            block_interval_ms,
            maintenance_interval_secs,
            maintenance_skip_slots: Self::BITSHARES_MAINNET.maintenance_skip_slots,
        }
    }

    /// `block_interval` as a node reports it: whole seconds, rounded up (a simulated
    /// 100 ms chain reports 1 s; 0 stays 0).
    pub fn block_interval_secs(&self) -> u32 {
        u32::try_from(self.block_interval_ms.div_ceil(1000)).unwrap_or(u32::MAX)
    }

    /// Rejects parameters that cannot describe a running chain: no block interval, an
    /// interval above an hour, more than 1,000 skipped slots, or maintenances so close that
    /// the maintenance block and its skipped slots would run into the next one. The rules and
    /// the schedule never panic on bad parameters (their answers are then meaningless); this
    /// is for what a node or a command line says.
    pub fn validate(&self) -> Result<(), ChainError> {
        let invalid = |field, reason| Err(ChainError::InvalidParams { field, reason });
        if self.block_interval_ms == 0 {
            return invalid("block_interval", "must be above 0");
        }
        if self.block_interval_ms > Self::MAX_BLOCK_INTERVAL_MS {
            return invalid("block_interval", "must be at most one hour");
        }
        if self.maintenance_skip_slots > Self::MAX_SKIP_SLOTS {
            return invalid("maintenance_skip_slots", "must be at most 1000");
        }
        if self.maintenance_interval_secs > Self::MAX_MAINTENANCE_INTERVAL_SECS {
            return invalid("maintenance_interval", "must be at most 366 days");
        }
        let shortest = (u64::from(self.maintenance_skip_slots) + 2) * self.block_interval_ms;
        if u64::from(self.maintenance_interval_secs) * 1000 < shortest {
            return invalid(
                "maintenance_interval",
                "must be at least maintenance_skip_slots + 2 block intervals",
            );
        }
        Ok(())
    }
}

impl Default for ChainParams {
    fn default() -> Self {
        Self::BITSHARES_MAINNET
    }
}

/// Errors of the chain model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The text is not shaped like `YYYY-MM-DDTHH:MM:SS` (exactly 19 ASCII characters,
    /// digits and separators in place, no zone suffix).
    #[error("bad chain time {input:?}: {reason}")]
    BadTimeFormat {
        /// The offending text (at most 40 characters of it).
        input: String,
        /// What is wrong with its shape.
        reason: &'static str,
    },
    /// The text is well formed but a field is out of range: month 13, February 29 of a
    /// common year, hour 24, second 60, ...
    #[error("bad chain time {input:?}: {field} {value} is out of range")]
    FieldOutOfRange {
        /// The offending text (at most 40 characters of it).
        input: String,
        /// Which field: `month`, `day`, `hour`, `minute` or `second`.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// Parameters no chain can run with (from [`ChainParams::validate`]).
    #[error("invalid {field}: {reason}")]
    InvalidParams {
        /// The parameter's name, as in `get_global_properties`.
        field: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_validation() {
        let mainnet = ChainParams::BITSHARES_MAINNET;
        assert!(mainnet.validate().is_ok());
        assert_eq!(ChainParams::default(), mainnet);
        assert_eq!(ChainParams::from_secs(3, 3600, 3), mainnet);
        assert_eq!(mainnet.block_interval_secs(), 3);
        let fast = ChainParams::simulated(100, 2);
        assert!(fast.validate().is_ok());
        assert_eq!(fast.block_interval_secs(), 1);
        assert_eq!(ChainParams::from_secs(0, 0, 0).block_interval_secs(), 0);
        assert_eq!(
            ChainParams::from_secs(u32::MAX, 1, 1).block_interval_secs(),
            u32::MAX
        );
        let field_of = |p: ChainParams| match p.validate() {
            Err(ChainError::InvalidParams { field, .. }) => field,
            other => panic!("{p:?}: {other:?}"),
        };
        assert_eq!(
            field_of(ChainParams::from_secs(0, 3600, 3)),
            "block_interval"
        );
        assert_eq!(field_of(ChainParams::from_secs(0, 0, 0)), "block_interval");
        assert_eq!(
            field_of(ChainParams::from_secs(3601, 7200, 0)),
            "block_interval"
        );
        assert_eq!(
            field_of(ChainParams::from_secs(1, 3600, 1001)),
            "maintenance_skip_slots"
        );
        assert_eq!(
            field_of(ChainParams::from_secs(3, 367 * 86_400, 3)),
            "maintenance_interval"
        );
        // 1 s blocks, 3 skipped: the maintenance block and its gap need 5 s.
        assert_eq!(
            field_of(ChainParams::from_secs(1, 4, 3)),
            "maintenance_interval"
        );
        assert!(ChainParams::from_secs(1, 5, 3).validate().is_ok());
        assert!(ChainParams::from_secs(3, 3, 0)
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("invalid maintenance_interval: "));
    }
}
