//! `[pools.NAME.health]`: the settings of a pool's active checks. The checks themselves live
//! in `crate::health`; the settings live here so the config parses without the health code.

use serde::Deserialize;

/// Default `rise`: consecutive passes that bring a backend back.
pub const DEFAULT_RISE: u32 = 2;
/// Default `fall`: consecutive failures that take a backend out.
pub const DEFAULT_FALL: u32 = 3;

fn default_interval() -> u64 {
    2_000
}
fn default_timeout() -> u64 {
    1_500
}
fn default_rise() -> u32 {
    DEFAULT_RISE
}
fn default_fall() -> u32 {
    DEFAULT_FALL
}
fn default_path() -> String {
    "/".into()
}
fn default_panic_threshold() -> u32 {
    DEFAULT_PANIC_THRESHOLD_PERCENT
}

/// Below this share of a pool's nodes in the ring, the least-bad ones stay in (Envoy's panic
/// threshold): a region serves slightly stale data rather than none.
pub const DEFAULT_PANIC_THRESHOLD_PERCENT: u32 = 50;

/// Which probe a pool runs.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    Tcp,
    Ws,
    BitsharesHttp,
    BitsharesWs,
}

/// `[pools.NAME.health]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub check: ProbeKind,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Request path of ws / HTTP probes.
    #[serde(default = "default_path")]
    pub path: String,
    /// Seconds added to the head-age allowance.
    pub margin_secs: Option<u32>,
    /// A backend this many blocks behind the best healthy head is out.
    pub max_lag_blocks: Option<u64>,
    /// Chain parameters; read from the node (`get_global_properties`) unless set here.
    pub block_interval_secs: Option<u32>,
    pub maintenance_interval_secs: Option<u32>,
    pub maintenance_skip_slots: Option<u32>,
    /// Re-admitted backends ramp from 10% to 100% of their weight over this long.
    #[serde(default)]
    pub slow_start_secs: u64,
    /// Agent feed: the node answers `GET /agent` on this port with up/down/drain/NN%.
    pub agent_port: Option<u16>,
    /// When fewer than this percentage of the pool's nodes would stay in the ring, the
    /// least-bad nodes (answering, only stale or lagging) stay in; 0 turns it off. A chain
    /// halt (every answering node stale at the same head) keeps all of them in.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold_percent: u32,
    /// What happens to the terminated clients of a node that leaves the ring for a health
    /// reason (stale, lagging, down; not a drain): `close` (a WebSocket close 1012 so they
    /// reconnect to an in-sync node, spread over `move_off_window_secs`) or `keep`.
    #[serde(default)]
    pub on_unhealthy: OnUnhealthy,
    #[serde(default = "default_move_off_window")]
    pub move_off_window_secs: u64,
}

/// See [`HealthConfig::on_unhealthy`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnhealthy {
    #[default]
    Close,
    Keep,
}

fn default_move_off_window() -> u64 {
    30
}

impl HealthConfig {
    /// Problems for `check-config`, each naming its key under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.move_off_window_secs > 3600 {
            p.push(format!(
                "{at}.move_off_window_secs = {}: at most 3600",
                self.move_off_window_secs
            ));
        }
        if self.panic_threshold_percent > 100 {
            p.push(format!(
                "{at}.panic_threshold_percent = {}: at most 100",
                self.panic_threshold_percent
            ));
        }
        if self.interval_ms < 100 {
            p.push(format!(
                "{at}.interval_ms = {}: at least 100",
                self.interval_ms
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms.max(100) * 10 {
            p.push(format!(
                "{at}.timeout_ms = {}: between 1 and 10 intervals",
                self.timeout_ms
            ));
        }
        if self.rise == 0 || self.fall == 0 {
            p.push(format!("{at}.rise/fall: at least 1"));
        }
        if !self.path.starts_with('/') {
            p.push(format!("{at}.path: starts with `/`"));
        }
        if self.block_interval_secs == Some(0) {
            p.push(format!("{at}.block_interval_secs: at least 1"));
        }
        p
    }
}
