//! The benchmark programs of `cargo xtask bench xdp` (feature `bench`), loaded by
//! `DataPlane::load_baseline` / `load_lookup_floor` for BPF_PROG_TEST_RUN only: never
//! attached to an interface.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use proxy_common::{FlowKey, FAMILY_V4};

use crate::{flows, maps::SETTINGS, parse};

/// Baseline for `cargo xtask bench xdp`: the cheapest possible XDP program. Never attached.
#[xdp]
pub fn xdp_pass_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Floor for `cargo xtask bench xdp`: what one packet costs when all it does is the
/// flow-table lookup of the fast path (an IPv4 TCP/UDP header without options is assumed;
/// the bench sends one). XDP_PASS when the flow is found, XDP_DROP when not. Never attached.
#[xdp]
pub fn xdp_lookup_floor(ctx: XdpContext) -> u32 {
    const L4_PORTS_END: usize = parse::ETH_LEN + parse::IPV4_LEN + 4;
    let Some(h) = parse::header::<L4_PORTS_END>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    let Some(s) = SETTINGS.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let key = FlowKey {
        src: [h.get(parse::ETH_LEN + 12), 0, 0, 0],
        dst: [h.get(parse::ETH_LEN + 16), 0, 0, 0],
        sport: h.get(parse::ETH_LEN + parse::IPV4_LEN),
        dport: h.get(parse::ETH_LEN + parse::IPV4_LEN + 2),
        proto: h.get(parse::ETH_LEN + 9),
        family: FAMILY_V4,
        pad: [0; 2],
    };
    match flows::get(&key, s) {
        Some(_) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_DROP,
    }
}
