//! Sending a translated packet on: next hop from the kernel FIB, then XDP_TX back out of the
//! interface it came in on, or XDP_REDIRECT to another one.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_redirect, generated::bpf_fib_lookup as fib_lookup_helper},
    programs::XdpContext,
    EbpfContext,
};
use proxy_common::{Reason, FAMILY_V4};

use crate::{
    counters::reason,
    parse::{header, Packet, ETH_LEN},
    rewrite::Translation,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(never)]
pub fn send(ctx: &XdpContext, pkt: &Packet, t: &Translation, done: Reason) -> u32 {
    // SAFETY: bpf_fib_lookup is plain old data; zero is a valid value of every field.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.l4_protocol = pkt.proto;
    params.sport = t.sport;
    params.dport = t.dport;
    params.ifindex = ctx.ingress_ifindex() as u32;
    if pkt.family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = t.src[0];
        params.__bindgen_anon_4.ipv4_dst = t.dst[0];
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = t.src;
        params.__bindgen_anon_4.ipv6_dst = t.dst;
    }
    // SAFETY: params lives on the stack for the duration of the call, size matches.
    let rc = unsafe {
        fib_lookup_helper(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // No neighbour entry yet, forwarding off, unreachable...: the translated packet goes
        // to the stack, which resolves the neighbour and forwards it (or answers with ICMP).
        reason(Reason::PassNoRoute);
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = header::<ETH_LEN>(ctx, 0) else {
        reason(Reason::DropMalformed);
        return xdp_action::XDP_DROP;
    };
    let d = params.dmac;
    let m = params.smac;
    eth.set(0, u32::from_ne_bytes([d[0], d[1], d[2], d[3]]));
    eth.set(4, u32::from_ne_bytes([d[4], d[5], m[0], m[1]]));
    eth.set(8, u32::from_ne_bytes([m[2], m[3], m[4], m[5]]));
    reason(done);
    if params.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect(params.ifindex, 0) } as u32;
        if action != xdp_action::XDP_REDIRECT {
            reason(Reason::DropRedirectFailed);
        }
        action
    }
}
