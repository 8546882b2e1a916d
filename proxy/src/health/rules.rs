//! Chain-aware health rules for BitShares API backends.
//!
//! Everything here is pure: no I/O, no clocks, no async. The caller runs the
//! checks (`get_dynamic_global_properties`), stamps each answer with the local
//! time it arrived, and feeds the result through these rules:
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
//! whole-second age exceeds the allowance.

use std::fmt;

/// Chain timing parameters, from `get_global_properties` → `parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainParams {
    /// `parameters.block_interval`: seconds between block slots (mainnet 3).
    pub block_interval_secs: u32,
    /// `parameters.maintenance_interval`: seconds between maintenances (mainnet 3600).
    pub maintenance_interval_secs: u32,
    /// `parameters.maintenance_skip_slots`: slots skipped after a maintenance block (mainnet 3).
    pub maintenance_skip_slots: u32,
}

impl ChainParams {
    /// BitShares mainnet: 3 s blocks, hourly maintenance, 3 skipped slots.
    pub const BITSHARES_MAINNET: ChainParams = ChainParams {
        block_interval_secs: 3,
        maintenance_interval_secs: 3600,
        maintenance_skip_slots: 3,
    };

    /// Rejects parameters that cannot describe a running chain. The rules
    /// themselves never panic on bad parameters; this is for config loading.
    pub fn validate(&self) -> Result<(), HealthError> {
        if self.block_interval_secs == 0 {
            return Err(HealthError::InvalidConfig {
                field: "block_interval",
                reason: "must be at least 1 second",
            });
        }
        if self.maintenance_interval_secs < self.block_interval_secs {
            return Err(HealthError::InvalidConfig {
                field: "maintenance_interval",
                reason: "must be at least one block interval",
            });
        }
        Ok(())
    }
}

impl Default for ChainParams {
    fn default() -> Self {
        Self::BITSHARES_MAINNET
    }
}

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
    ) -> Result<Self, HealthError> {
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

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// The text is not shaped like `YYYY-MM-DDTHH:MM:SS` (exactly 19 ASCII
    /// characters, digits and separators in place, no zone suffix).
    #[error("bad chain time {input:?}: {reason}")]
    BadTimeFormat {
        /// The offending text (at most 40 characters of it).
        input: String,
        /// What is wrong with its shape.
        reason: &'static str,
    },
    /// The text is well formed but a field is out of range: month 13,
    /// February 29 of a common year, hour 24, second 60, ...
    #[error("bad chain time {input:?}: {field} {value} is out of range")]
    FieldOutOfRange {
        /// The offending text (at most 40 characters of it).
        input: String,
        /// Which field: `month`, `day`, `hour`, `minute` or `second`.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// A configuration value that the rules cannot work with (from
    /// [`ChainParams::validate`], [`RuleConfig::validate`] or
    /// [`EjectorConfig::validate`]).
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
}

fn excerpt(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses a BitShares chain time, `"YYYY-MM-DDTHH:MM:SS"` in UTC without a
/// zone suffix, into unix seconds.
///
/// Strict: exactly that shape, ASCII digits only, month 1–12, day valid for
/// the month (proleptic Gregorian leap years), hour 0–23, minute and second
/// 0–59 (the chain never emits leap seconds). Years 0000–9999 are accepted;
/// years before 1970 give negative values.
pub fn parse_chain_time(s: &str) -> Result<i64, HealthError> {
    let bad = |reason| HealthError::BadTimeFormat {
        input: excerpt(s),
        reason,
    };
    let b = s.as_bytes();
    if b.len() != 19 {
        return Err(bad("expected exactly 19 characters, YYYY-MM-DDTHH:MM:SS"));
    }
    for (at, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        if b.get(at) != Some(&sep) {
            return Err(bad("separators must be YYYY-MM-DDTHH:MM:SS"));
        }
    }
    let field = |from: usize, to: usize| -> Result<u32, HealthError> {
        let digits = b.get(from..to).unwrap_or_default();
        let mut value = 0u32;
        for &d in digits {
            if !d.is_ascii_digit() {
                return Err(bad("date and time fields must be decimal digits"));
            }
            value = value * 10 + u32::from(d - b'0');
        }
        Ok(value)
    };
    let year = field(0, 4)?;
    let month = field(5, 7)?;
    let day = field(8, 10)?;
    let hour = field(11, 13)?;
    let minute = field(14, 16)?;
    let second = field(17, 19)?;

    let out_of_range = |field, value| HealthError::FieldOutOfRange {
        input: excerpt(s),
        field,
        value,
    };
    if !(1..=12).contains(&month) {
        return Err(out_of_range("month", month));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(out_of_range("day", day));
    }
    if hour > 23 {
        return Err(out_of_range("hour", hour));
    }
    if minute > 59 {
        return Err(out_of_range("minute", minute));
    }
    if second > 59 {
        return Err(out_of_range("second", second));
    }
    let days = days_from_civil(i64::from(year), month, day);
    Ok(days * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

/// Formats unix seconds as a chain time, `"YYYY-MM-DDTHH:MM:SS"` (UTC). The
/// inverse of [`parse_chain_time`] for years 0000–9999; never panics.
pub fn format_chain_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Years are counted
/// from March so that the leap day is the last day of the counting year; a
/// 400-year era has 146,097 days.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era.saturating_mul(400);
    (if month <= 2 { year + 1 } else { year }, month, day)
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
        let window = u64::from(params.block_interval_secs)
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

fn saturate_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
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
    let interval = u64::from(params.block_interval_secs);
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

/// A backend's damped health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Not decided yet (just added, or the proxy just started).
    Unknown,
    /// Serving traffic.
    Up,
    /// Taken out of rotation.
    Down,
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendState::Unknown => "unknown",
            BackendState::Up => "up",
            BackendState::Down => "down",
        })
    }
}

/// A change of [`BackendState`], returned by [`HealthState::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state before.
    pub from: BackendState,
    /// The state after.
    pub to: BackendState,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// Rise/fall state machine of one backend.
///
/// * Up → Down after `fall` consecutive unhealthy verdicts.
/// * Down → Up after `rise` consecutive healthy verdicts.
/// * [`HealthState::new`] starts in `Unknown`, which becomes Up on the
///   **first** healthy verdict (a restarted proxy serves at once instead of
///   waiting `rise` checks) and Down after `fall` consecutive unhealthy ones.
///   Only Up counts as routable ([`HealthState::is_up`]).
///   [`HealthState::starting_in`] starts Down (conservative: `rise` checks
///   needed) or Up (optimistic) instead.
///
/// Consequence: Up and Down alternate no faster than every `fall` (Up→Down)
/// and `rise` (Down→Up) checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    state: BackendState,
    consecutive_ok: u32,
    consecutive_failed: u32,
    checks: u64,
    failed_checks: u64,
    transitions: u64,
    last_verdict: Option<Verdict>,
    last_transition: Option<Transition>,
    changed_at_unix: Option<i64>,
}

impl HealthState {
    /// A fresh backend in `Unknown`.
    pub fn new(cfg: &RuleConfig) -> Self {
        Self::starting_in(cfg, BackendState::Unknown)
    }

    /// A fresh backend in the given state.
    pub fn starting_in(cfg: &RuleConfig, state: BackendState) -> Self {
        Self {
            rise: cfg.rise.max(1),
            fall: cfg.fall.max(1),
            state,
            consecutive_ok: 0,
            consecutive_failed: 0,
            checks: 0,
            failed_checks: 0,
            transitions: 0,
            last_verdict: None,
            last_transition: None,
            changed_at_unix: None,
        }
    }

    /// Records a verdict; returns the transition it caused, if any.
    pub fn record(&mut self, verdict: Verdict) -> Option<Transition> {
        self.apply(verdict, None)
    }

    /// Like [`HealthState::record`], also remembering when a transition
    /// happened ([`HealthState::changed_at_unix`], e.g. for slow start).
    pub fn record_at(&mut self, now_unix: i64, verdict: Verdict) -> Option<Transition> {
        self.apply(verdict, Some(now_unix))
    }

    fn apply(&mut self, verdict: Verdict, now_unix: Option<i64>) -> Option<Transition> {
        self.checks = self.checks.saturating_add(1);
        let healthy = verdict.is_healthy();
        if healthy {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_failed = 0;
        } else {
            self.consecutive_failed = self.consecutive_failed.saturating_add(1);
            self.consecutive_ok = 0;
            self.failed_checks = self.failed_checks.saturating_add(1);
        }
        self.last_verdict = Some(verdict);
        let next = match (self.state, healthy) {
            (BackendState::Unknown, true) => BackendState::Up,
            (BackendState::Down, true) if self.consecutive_ok >= self.rise => BackendState::Up,
            (BackendState::Unknown | BackendState::Up, false)
                if self.consecutive_failed >= self.fall =>
            {
                BackendState::Down
            }
            (same, _) => same,
        };
        if next == self.state {
            return None;
        }
        let transition = Transition {
            from: self.state,
            to: next,
        };
        self.state = next;
        self.transitions = self.transitions.saturating_add(1);
        self.last_transition = Some(transition);
        if now_unix.is_some() {
            self.changed_at_unix = now_unix;
        }
        Some(transition)
    }

    /// The current state.
    pub fn state(&self) -> BackendState {
        self.state
    }

    /// Whether the backend should receive traffic (state Up).
    pub fn is_up(&self) -> bool {
        self.state == BackendState::Up
    }

    /// The most recent verdict.
    pub fn last_verdict(&self) -> Option<&Verdict> {
        self.last_verdict.as_ref()
    }

    /// The most recent transition.
    pub fn last_transition(&self) -> Option<Transition> {
        self.last_transition
    }

    /// When the most recent transition happened, if it was recorded with
    /// [`HealthState::record_at`].
    pub fn changed_at_unix(&self) -> Option<i64> {
        self.changed_at_unix
    }

    /// Healthy verdicts in a row (0 after an unhealthy one).
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_ok
    }

    /// Unhealthy verdicts in a row (0 after a healthy one).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failed
    }

    /// Verdicts recorded so far.
    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// Unhealthy verdicts recorded so far.
    pub fn failed_checks(&self) -> u64 {
        self.failed_checks
    }

    /// Transitions so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// One line for `proxy backends list`: the state, progress towards the
    /// next transition, and the last verdict.
    pub fn why(&self) -> String {
        let Some(verdict) = &self.last_verdict else {
            return format!("{}: not checked yet", self.state);
        };
        let (ok, failed) = (self.consecutive_ok, self.consecutive_failed);
        match (self.state, verdict.is_healthy()) {
            (BackendState::Up, true) => format!("up: healthy ({ok} checks in a row)"),
            (BackendState::Up, false) => {
                format!("up, failing {failed}/{}: {verdict}", self.fall)
            }
            (BackendState::Down, false) => {
                format!("down: {verdict} ({failed} failed checks in a row)")
            }
            (BackendState::Down, true) => {
                format!("down, recovering {ok}/{}: healthy", self.rise)
            }
            (BackendState::Unknown, _) => {
                format!("unknown, failing {failed}/{}: {verdict}", self.fall)
            }
        }
    }
}

/// Tunables of [`PassiveEjector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EjectorConfig {
    /// Consecutive failed connects that eject a backend (default 3). 0 counts as 1.
    pub failure_threshold: u32,
    /// Length of the first ejection (default 1 s).
    pub base_backoff_secs: u64,
    /// Longest ejection (default 60 s).
    pub max_backoff_secs: u64,
}

impl EjectorConfig {
    /// Rejects a zero base or a cap below the base.
    pub fn validate(&self) -> Result<(), HealthError> {
        if self.base_backoff_secs == 0 {
            return Err(HealthError::InvalidConfig {
                field: "base_backoff_secs",
                reason: "must be at least 1 second",
            });
        }
        if self.max_backoff_secs < self.base_backoff_secs {
            return Err(HealthError::InvalidConfig {
                field: "max_backoff_secs",
                reason: "must not be below base_backoff_secs",
            });
        }
        Ok(())
    }
}

impl Default for EjectorConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_backoff_secs: 1,
            max_backoff_secs: 60,
        }
    }
}

/// Passive outlier detection from the data path.
///
/// `failure_threshold` consecutive failed connects eject the backend for
/// `base_backoff_secs`. When that ejection ends the backend is on probation:
/// its **first** failed connect ejects it again, for twice as long each time
/// (1, 2, 4, ... s, capped at `max_backoff_secs`). Probation and backoff end
/// only when an active check passes ([`PassiveEjector::on_active_check_passed`]),
/// which also lifts a running ejection. A successful connect resets the
/// failure count but not the backoff. Failures reported while ejected (late
/// in-flight connects) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveEjector {
    cfg: EjectorConfig,
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<i64>,
    last_active_pass_unix: Option<i64>,
}

impl PassiveEjector {
    /// A backend with a clean record.
    pub fn new(cfg: EjectorConfig) -> Self {
        Self {
            cfg,
            consecutive_failures: 0,
            ejections: 0,
            ejected_until: None,
            last_active_pass_unix: None,
        }
    }

    /// Records a failed connect at `now`; returns true if it ejected the backend.
    pub fn on_connect_failure(&mut self, now: i64) -> bool {
        if self.is_ejected(now) {
            return false;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let on_probation = self.ejections > 0;
        if !on_probation && self.consecutive_failures < self.cfg.failure_threshold.max(1) {
            return false;
        }
        let backoff = i64::try_from(self.next_backoff_secs()).unwrap_or(i64::MAX);
        self.ejected_until = Some(now.saturating_add(backoff));
        self.ejections = self.ejections.saturating_add(1);
        self.consecutive_failures = 0;
        true
    }

    /// Records a successful connect at `now`: resets the failure count (and
    /// forgets an ejection that has already run out), keeps the backoff.
    pub fn on_connect_success(&mut self, now: i64) {
        self.consecutive_failures = 0;
        if !self.is_ejected(now) {
            self.ejected_until = None;
        }
    }

    /// An active health check passed at `now`: lifts any ejection and resets
    /// the backoff.
    pub fn on_active_check_passed(&mut self, now: i64) {
        self.consecutive_failures = 0;
        self.ejections = 0;
        self.ejected_until = None;
        self.last_active_pass_unix = Some(now);
    }

    /// Whether the data path should skip this backend at `now`.
    pub fn is_ejected(&self, now: i64) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// End of the current or most recent ejection (cleared by a pass or a
    /// later successful connect).
    pub fn ejected_until(&self) -> Option<i64> {
        self.ejected_until
    }

    /// Ejections since the last passing active check.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Failed connects in a row (since the last ejection or success).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When an active check last passed.
    pub fn last_active_pass_unix(&self) -> Option<i64> {
        self.last_active_pass_unix
    }

    /// How long the next ejection would last: `base × 2^ejections`, capped.
    pub fn next_backoff_secs(&self) -> u64 {
        let factor = 1u64.checked_shl(self.ejections).unwrap_or(u64::MAX);
        self.cfg
            .base_backoff_secs
            .saturating_mul(factor)
            .min(self.cfg.max_backoff_secs)
    }
}

/// Effective weight `since_up_secs` after re-admission: ramps linearly from
/// 10 % of `weight` at 0 to 100 % at `slow_start_secs`, rounding down but
/// never below 1 for a non-zero weight. `slow_start_secs == 0` disables slow
/// start.
pub fn slow_start_weight(weight: u32, since_up_secs: u64, slow_start_secs: u64) -> u32 {
    if weight == 0 || slow_start_secs == 0 || since_up_secs >= slow_start_secs {
        return weight;
    }
    let (w, t, s) = (
        u128::from(weight),
        u128::from(since_up_secs),
        u128::from(slow_start_secs),
    );
    // weight × (0.1 + 0.9 × t / s) = weight × (s + 9t) / 10s
    let effective = w * (s + 9 * t) / (10 * s);
    u32::try_from(effective).unwrap_or(weight).clamp(1, weight)
}

pub mod sim {
    //! A deterministic BitShares chain and node simulator, for tests of the
    //! rules here and of code built on them.
    //!
    //! The chain produces a block in every `block_interval` slot (slots are
    //! aligned to multiples of the interval since the epoch, as on the real
    //! chain), except random missed slots (seeded xorshift, at most
    //! `max_consecutive_missed` in a row). The first block at or after
    //! `next_maintenance_time` is a maintenance block: `next_maintenance_time`
    //! then moves to the next multiple of `maintenance_interval` after the
    //! block, and the following `maintenance_skip_slots` slots are skipped.
    //! Each block reaches the nodes after a random propagation delay.
    //! Simulated time is in milliseconds.

    use super::{ChainParams, HeadSample};

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
        spec: ChainSpec,
        blocks: Vec<SimBlock>,
        missed_slots: u64,
    }

    impl Chain {
        /// Generates the chain described by `spec` (memory grows with
        /// `duration_secs / block_interval`: about 1 MiB per simulated day).
        pub fn generate(spec: ChainSpec) -> Self {
            let interval = i64::from(spec.params.block_interval_secs.max(1));
            let maintenance = i64::from(spec.params.maintenance_interval_secs.max(1));
            let start = spec
                .start_unix
                .saturating_sub(spec.start_unix.rem_euclid(interval));
            let end = start.saturating_add(i64::from(spec.duration_secs));
            let mut rng = XorShift64::new(spec.seed);
            let mut next_maintenance = start
                .div_euclid(maintenance)
                .saturating_add(1)
                .saturating_mul(maintenance);
            let mut number = 1_000_000u64;
            let first_arrival = start.saturating_mul(1000);
            let mut blocks = vec![SimBlock {
                number,
                time_unix: start,
                next_maintenance_time_unix: next_maintenance,
                is_maintenance: false,
                arrives_at_ms: first_arrival,
            }];
            let mut last_arrival = first_arrival;
            let (mut skip, mut missed_run, mut missed_slots) = (0u32, 0u32, 0u64);
            let mut slot = start;
            loop {
                slot = slot.saturating_add(interval);
                if slot > end || slot == i64::MAX {
                    break;
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                if missed_run < spec.max_consecutive_missed && rng.chance_ppm(spec.missed_slot_ppm)
                {
                    missed_run += 1;
                    missed_slots += 1;
                    continue;
                }
                missed_run = 0;
                number += 1;
                let is_maintenance = slot >= next_maintenance;
                if is_maintenance {
                    let late_by = (slot - next_maintenance) / maintenance;
                    next_maintenance = next_maintenance
                        .saturating_add(late_by.saturating_add(1).saturating_mul(maintenance));
                    skip = spec.params.maintenance_skip_slots;
                }
                let propagation =
                    i64::try_from(rng.below(u64::from(spec.max_propagation_ms) + 1)).unwrap_or(0);
                let arrives_at_ms = slot
                    .saturating_mul(1000)
                    .saturating_add(propagation)
                    .max(last_arrival);
                last_arrival = arrives_at_ms;
                blocks.push(SimBlock {
                    number,
                    time_unix: slot,
                    next_maintenance_time_unix: next_maintenance,
                    is_maintenance,
                    arrives_at_ms,
                });
            }
            Self {
                spec,
                blocks,
                missed_slots,
            }
        }

        /// The spec this chain was generated from.
        pub fn spec(&self) -> &ChainSpec {
            &self.spec
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
}

#[cfg(test)]
mod tests {
    use super::sim::{Behavior, Chain, ChainSpec, Node, Probe, XorShift64};
    use super::*;

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

    fn sample(observed: i64, head_time: i64, next_maintenance: i64) -> HeadSample {
        HeadSample {
            observed_at_unix: observed,
            head_block_number: 100,
            head_block_time_unix: head_time,
            next_maintenance_time_unix: next_maintenance,
        }
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
            assert!(
                matches!(verdict, Verdict::Lagging { behind_blocks, .. } if behind_blocks >= 10)
            );
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
        let mut node = Node::new(Behavior::BehindBlocks { blocks: 1 }, 3, 300);
        let mut state = HealthState::new(&cfg);
        run_day(&chain, &mut node, 5_000, |probe| {
            state.record(verdict_of(&cfg, probe));
        });
        assert!(state.is_up());
        assert_eq!(state.transitions(), 1, "{}", state.why());
    }

    // 4. Flapping is damped by rise/fall.
    #[test]
    fn flapping_node_alternating_every_check_never_goes_down() {
        let chain = Chain::generate(ChainSpec::mainnet_day(41));
        let cfg = RuleConfig::default();
        let mut node = Node::new(
            Behavior::Flapping {
                up_checks: 1,
                down_checks: 1,
            },
            3,
            300,
        );
        let mut state = HealthState::new(&cfg);
        let mut checks = 0u64;
        run_day(&chain, &mut node, 5_000, |probe| {
            checks += 1;
            state.record(verdict_of(&cfg, probe));
        });
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
        let mut node = Node::new(
            Behavior::Flapping {
                up_checks: 2,
                down_checks: 3,
            },
            3,
            300,
        );
        let mut state = HealthState::new(&cfg);
        let mut checks = 0u64;
        run_day(&chain, &mut node, 5_000, |probe| {
            checks += 1;
            state.record(verdict_of(&cfg, probe));
        });
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

    // 5. parse_chain_time.
    #[test]
    fn parse_chain_time_known_values() {
        assert_eq!(parse_chain_time("1970-01-01T00:00:00"), Ok(0));
        assert_eq!(parse_chain_time("1969-12-31T23:59:59"), Ok(-1));
        assert_eq!(parse_chain_time("2026-11-23T19:57:27"), Ok(1_795_463_847));
        assert_eq!(parse_chain_time("2026-11-23T00:00:00"), Ok(1_795_392_000));
        assert_eq!(parse_chain_time("2024-02-29T12:00:00"), Ok(1_709_208_000));
        assert_eq!(parse_chain_time("2000-03-01T00:00:00"), Ok(951_868_800));
        assert_eq!(parse_chain_time("2100-03-01T00:00:00"), Ok(4_107_542_400));
        assert_eq!(parse_chain_time("9999-12-31T23:59:59"), Ok(253_402_300_799));
        assert_eq!(parse_chain_time("0000-03-01T00:00:00"), Ok(-62_162_035_200));
        assert_eq!(parse_chain_time("2000-02-29T00:00:00"), Ok(951_782_400));
    }

    #[test]
    fn parse_chain_time_rejects_bad_input() {
        let out_of_range = |s: &str, f: &str| match parse_chain_time(s) {
            Err(HealthError::FieldOutOfRange { field, .. }) => assert_eq!(field, f, "{s}"),
            other => panic!("{s}: {other:?}"),
        };
        out_of_range("2023-02-29T00:00:00", "day");
        out_of_range("2100-02-29T00:00:00", "day");
        out_of_range("2026-04-31T00:00:00", "day");
        out_of_range("2026-01-00T00:00:00", "day");
        out_of_range("2026-13-01T00:00:00", "month");
        out_of_range("2026-00-01T00:00:00", "month");
        out_of_range("2026-01-01T24:00:00", "hour");
        out_of_range("2026-01-01T00:60:00", "minute");
        out_of_range("2026-01-01T00:00:60", "second");
        for bad in [
            "",
            "garbage",
            "2026-11-23 19:57:27",
            "2026-11-23T19:57:27Z",
            "2026-11-23T19:57:27.000",
            "2026/11/23T19:57:27",
            "2026-11-23T19-57-27",
            "+026-11-23T19:57:27",
            "2026-1a-23T19:57:27",
            "2026-11-23T19:57:2",
            "２026-11-23T19:57:2",
            "2026-11-23T19:57:\u{e9}",
            "2026-11-2\u{e9}19:57:27",
            "\"2026-11-23T19:57:27\"",
        ] {
            assert!(
                matches!(
                    parse_chain_time(bad),
                    Err(HealthError::BadTimeFormat { .. })
                ),
                "{bad:?}: {:?}",
                parse_chain_time(bad)
            );
        }
        let long = "x".repeat(1000);
        let err = parse_chain_time(&long).unwrap_err();
        assert!(err.to_string().len() < 150, "{err}");
    }

    #[test]
    fn parse_chain_time_fuzz_never_panics() {
        let alphabet = b"0123456789-T:Z .+x";
        let mut rng = XorShift64::new(77);
        let mut accepted = 0;
        for _ in 0..200_000 {
            // Mostly well-shaped strings with random digits, some mutated.
            let mut text: Vec<u8> = b"2026-11-23T19:57:27".to_vec();
            for byte in text.iter_mut() {
                if byte.is_ascii_digit() {
                    *byte = b'0' + u8::try_from(rng.below(10)).unwrap();
                }
            }
            if rng.below(4) == 0 {
                let at = usize::try_from(rng.below(19)).unwrap();
                let with = usize::try_from(rng.below(alphabet.len() as u64)).unwrap();
                text[at] = alphabet[with];
            }
            let text = String::from_utf8(text).unwrap();
            if let Ok(t) = parse_chain_time(&text) {
                accepted += 1;
                assert_eq!(format_chain_time(t), text);
            }
        }
        assert!(accepted > 100, "{accepted}");
        let mut bytes = Vec::new();
        for _ in 0..20_000 {
            bytes.clear();
            for _ in 0..rng.below(30) {
                bytes.push(u8::try_from(rng.below(256)).unwrap());
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_chain_time(&text);
        }
    }

    #[test]
    fn format_and_parse_round_trip() {
        let mut rng = XorShift64::new(5);
        let max = parse_chain_time("9999-12-31T23:59:59").unwrap();
        let min = parse_chain_time("0000-01-01T00:00:00").unwrap();
        let span = u64::try_from(max - min).unwrap();
        for _ in 0..20_000 {
            let t = min + i64::try_from(rng.below(span + 1)).unwrap();
            assert_eq!(parse_chain_time(&format_chain_time(t)), Ok(t));
        }
        // Every day of 1999..=2101 round-trips, so every leap rule is hit.
        let mut t = parse_chain_time("1999-01-01T00:00:00").unwrap();
        while t < parse_chain_time("2102-01-01T00:00:00").unwrap() {
            assert_eq!(
                parse_chain_time(&format_chain_time(t + 86_399)),
                Ok(t + 86_399)
            );
            t += 86_400;
        }
        assert_eq!(format_chain_time(1_795_463_847), "2026-11-23T19:57:27");
        // No panic at the extremes.
        let _ = format_chain_time(i64::MIN);
        let _ = format_chain_time(i64::MAX);
        let s = HeadSample::from_chain_fields(5, 7, "2026-11-23T19:57:27", "2026-11-23T20:00:00")
            .unwrap();
        assert_eq!(s.head_block_time_unix, 1_795_463_847);
        assert_eq!(s.next_maintenance_time_unix, 1_795_464_000);
        assert!(HeadSample::from_chain_fields(5, 7, "2026-11-23T19:57:27", "soon").is_err());
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
    fn no_panics_on_extreme_inputs() {
        let params = [
            MAINNET,
            ChainParams {
                block_interval_secs: 0,
                maintenance_interval_secs: 0,
                maintenance_skip_slots: 0,
            },
            ChainParams {
                block_interval_secs: u32::MAX,
                maintenance_interval_secs: u32::MAX,
                maintenance_skip_slots: u32::MAX,
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

    #[test]
    fn health_state_start_and_why() {
        let cfg = RuleConfig::default();
        let mut state = HealthState::new(&cfg);
        assert_eq!(state.state(), BackendState::Unknown);
        assert!(!state.is_up());
        assert_eq!(state.why(), "unknown: not checked yet");
        let stale = Verdict::Stale {
            age_secs: 20,
            allowed_secs: 12,
        };
        // Unknown -> Down after `fall` failures.
        assert_eq!(state.record(stale.clone()), None);
        assert_eq!(
            state.why(),
            "unknown, failing 1/3: stale: head block is 20 s old, 12 s allowed"
        );
        assert_eq!(state.record(stale.clone()), None);
        let t = state.record_at(1_000, stale.clone()).unwrap();
        assert_eq!(t.to_string(), "unknown -> down");
        assert_eq!(state.changed_at_unix(), Some(1_000));
        assert_eq!(
            state.why(),
            "down: stale: head block is 20 s old, 12 s allowed (3 failed checks in a row)"
        );
        // Down -> Up after `rise` successes.
        assert_eq!(state.record(Verdict::Healthy), None);
        assert_eq!(state.why(), "down, recovering 1/2: healthy");
        let t = state.record_at(1_010, Verdict::Healthy).unwrap();
        assert_eq!((t.from, t.to), (BackendState::Down, BackendState::Up));
        assert_eq!(state.changed_at_unix(), Some(1_010));
        assert_eq!(state.why(), "up: healthy (2 checks in a row)");
        let lag = Verdict::Lagging {
            behind_blocks: 12,
            max: 10,
        };
        assert_eq!(state.record(lag.clone()), None);
        assert_eq!(
            state.why(),
            "up, failing 1/3: lagging: 12 blocks behind the best head (limit 10)"
        );
        assert_eq!(state.last_verdict(), Some(&lag));
        assert_eq!(state.checks(), 6);
        assert_eq!(state.failed_checks(), 4);
        assert_eq!(state.transitions(), 2);
        assert_eq!(state.consecutive_failures(), 1);
        assert_eq!(state.consecutive_successes(), 0);

        // Unknown -> Up on the very first healthy verdict.
        let mut state = HealthState::new(&cfg);
        let t = state.record(Verdict::Healthy).unwrap();
        assert_eq!((t.from, t.to), (BackendState::Unknown, BackendState::Up));
        // Started Down: needs `rise` successes.
        let mut state = HealthState::starting_in(&cfg, BackendState::Down);
        assert_eq!(state.record(Verdict::Healthy), None);
        assert!(state.record(Verdict::Healthy).is_some());
    }

    // 7. Passive ejection and slow start.
    #[test]
    fn passive_ejector_backoff_doubles_caps_and_clears() {
        let mut e = PassiveEjector::new(EjectorConfig::default());
        let mut now = 1_000;
        // Two failures are tolerated; the third ejects for 1 s.
        assert!(!e.on_connect_failure(now));
        assert!(!e.on_connect_failure(now));
        assert!(e.on_connect_failure(now));
        assert!(e.is_ejected(now));
        assert_eq!(e.ejected_until(), Some(now + 1));
        assert!(!e.is_ejected(now + 1));
        // Failures during an ejection are ignored.
        assert!(!e.on_connect_failure(now));
        assert_eq!(e.ejections(), 1);
        // On probation each single failure ejects for twice as long, up to 60 s.
        let mut lengths = vec![1];
        for _ in 0..9 {
            now = e.ejected_until().unwrap();
            assert!(!e.is_ejected(now));
            assert!(e.on_connect_failure(now));
            lengths.push(e.ejected_until().unwrap() - now);
        }
        assert_eq!(lengths, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // A successful connect does not reset the backoff...
        now = e.ejected_until().unwrap();
        e.on_connect_success(now);
        assert_eq!(e.ejected_until(), None);
        assert!(e.on_connect_failure(now));
        assert_eq!(e.ejected_until(), Some(now + 60));
        // ...an active check does, and lifts the ejection at once.
        e.on_active_check_passed(now + 5);
        assert!(!e.is_ejected(now + 5));
        assert_eq!(e.ejections(), 0);
        assert_eq!(e.last_active_pass_unix(), Some(now + 5));
        assert!(!e.on_connect_failure(now + 6));
        assert!(!e.on_connect_failure(now + 6));
        assert!(e.on_connect_failure(now + 6));
        assert_eq!(e.ejected_until(), Some(now + 7));
        // A success in between restarts the failure count.
        let mut e = PassiveEjector::new(EjectorConfig::default());
        for _ in 0..10 {
            assert!(!e.on_connect_failure(0));
            assert!(!e.on_connect_failure(0));
            e.on_connect_success(0);
        }
        assert_eq!(e.consecutive_failures(), 0);
        // Custom base and cap.
        let cfg = EjectorConfig {
            failure_threshold: 1,
            base_backoff_secs: 5,
            max_backoff_secs: 30,
        };
        assert!(cfg.validate().is_ok());
        let mut e = PassiveEjector::new(cfg);
        let mut got = Vec::new();
        let mut now = 0;
        for _ in 0..5 {
            assert!(e.on_connect_failure(now));
            got.push(e.ejected_until().unwrap() - now);
            now = e.ejected_until().unwrap();
        }
        assert_eq!(got, [5, 10, 20, 30, 30]);
        assert!(EjectorConfig {
            max_backoff_secs: 1,
            ..cfg
        }
        .validate()
        .is_err());
    }

    #[test]
    fn slow_start_ramps_from_ten_to_hundred_percent() {
        assert_eq!(slow_start_weight(100, 0, 60), 10);
        assert_eq!(slow_start_weight(100, 30, 60), 55);
        assert_eq!(slow_start_weight(100, 59, 60), 98);
        assert_eq!(slow_start_weight(100, 60, 60), 100);
        assert_eq!(slow_start_weight(100, 1_000, 60), 100);
        assert_eq!(slow_start_weight(100, 0, 0), 100);
        assert_eq!(slow_start_weight(0, 0, 60), 0);
        // Small weights never drop to zero.
        assert_eq!(slow_start_weight(1, 0, 60), 1);
        assert_eq!(slow_start_weight(5, 0, 60), 1);
        // Monotone and within [10 %, 100 %].
        let mut previous = 0;
        for t in 0..=120 {
            let w = slow_start_weight(1_000, t, 120);
            assert!(w >= previous && (100..=1_000).contains(&w), "{t}: {w}");
            previous = w;
        }
        assert_eq!(previous, 1_000);
    }

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
}
