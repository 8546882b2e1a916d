//! The control plane as `proxy run` builds it, with in-memory maps in place of the kernel's,
//! so its terminator listeners, reloads and health events run in an ordinary test.

use std::net::SocketAddr;

use proxy::{
    balancer::MemoryMaps,
    config::{Config, IoChoice},
    plane::{ControlPlane, Inputs, PlaneOptions},
};

pub type TestPlane = ControlPlane<MemoryMaps>;

/// The plane for `config` with terminator I/O `io`, its clock at `now`; no log summaries.
/// Returns it with its inputs (health reports, connect results) and the first address of
/// the listener named `listener`.
pub fn start_plane(
    config: &Config,
    io: IoChoice,
    now: i64,
    listener: &str,
) -> (TestPlane, Inputs, SocketAddr) {
    let options = PlaneOptions {
        io,
        stats_interval_secs: 0,
    };
    let (plane, inputs) = ControlPlane::new(config, MemoryMaps::default(), options, now)
        .unwrap_or_else(|e| panic!("the plane does not start: {e}"));
    let addr = plane
        .listener_addrs(listener)
        .unwrap_or_else(|| panic!("no listener {listener}"))[0];
    (plane, inputs, addr)
}
