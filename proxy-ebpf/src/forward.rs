//! Sending a translated packet on: next hop from the kernel FIB (cached for a second per
//! backend and per client address), then XDP_TX back out of the interface it came in on, or
//! XDP_REDIRECT to another one.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_redirect, generated::bpf_fib_lookup as fib_lookup_helper},
    programs::XdpContext,
    EbpfContext,
};
use proxy_common::{HopKey, NextHop, Reason, FAMILY_V4, NEXT_HOP_TTL_NS};

use crate::{
    counters::reason,
    maps::{HOPS_BY_BACKEND, HOPS_BY_CLIENT},
    parse::{header, Packet, ETH_LEN},
    rewrite::Translation,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where `send` finds (and caches) the next hop.
pub const CLIENT_HOP: u32 = u32::MAX;

/// Asks the FIB for the next hop towards `t.dst`.
#[inline(always)]
fn fib(ctx: &XdpContext, pkt: &Packet, t: &Translation, now: u64) -> Option<NextHop> {
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
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64).then_some(NextHop {
        dmac: params.dmac,
        smac: params.smac,
        ifindex: params.ifindex,
        expires_ns: now + NEXT_HOP_TTL_NS,
    })
}

/// Sends the translated packet towards backend `hop_slot`, or towards the client when
/// `hop_slot` is `CLIENT_HOP`, using the cached next hop while it is fresh.
#[inline(never)]
pub fn send(ctx: &XdpContext, pkt: &Packet, t: &Translation, hop_slot: u32, now: u64) -> u32 {
    let cached = if hop_slot == CLIENT_HOP {
        let key = HopKey {
            addr: [t.dst[0], t.dst[1], t.dst[2], t.dst[3]],
            family: pkt.family,
            pad: [0; 3],
        };
        HOPS_BY_CLIENT.get_ptr_mut(&key)
    } else {
        HOPS_BY_BACKEND.get_ptr_mut(hop_slot)
    };
    let mut hop = NextHop::default();
    let mut fresh = false;
    if let Some(h) = cached {
        // SAFETY: map value pointer valid for this run; plain data.
        let h = unsafe { &*h };
        if h.expires_ns > now {
            hop.dmac = h.dmac;
            hop.smac = h.smac;
            hop.ifindex = h.ifindex;
            fresh = true;
        }
    }
    if !fresh {
        let Some(found) = fib(ctx, pkt, t, now) else {
            // No neighbour entry yet, forwarding off, unreachable...: the translated packet
            // goes to the stack, which resolves the neighbour and forwards it (or answers
            // with ICMP).
            reason(Reason::PassNoRoute);
            return xdp_action::XDP_PASS;
        };
        hop = found;
        if hop_slot == CLIENT_HOP {
            let key = HopKey {
                addr: [t.dst[0], t.dst[1], t.dst[2], t.dst[3]],
                family: pkt.family,
                pad: [0; 3],
            };
            let _ = HOPS_BY_CLIENT.insert(&key, &hop, 0);
        } else if let Some(h) = cached {
            // SAFETY: as above; a racing refresh on another CPU writes the same answer.
            unsafe { *h = hop };
        }
    }
    let Some(eth) = header::<ETH_LEN>(ctx, 0) else {
        reason(Reason::DropMalformed);
        return xdp_action::XDP_DROP;
    };
    let d = hop.dmac;
    let m = hop.smac;
    eth.set(0, u32::from_ne_bytes([d[0], d[1], d[2], d[3]]));
    eth.set(4, u32::from_ne_bytes([d[4], d[5], m[0], m[1]]));
    eth.set(8, u32::from_ne_bytes([m[2], m[3], m[4], m[5]]));
    let done = if hop_slot == CLIENT_HOP {
        Reason::ReplyTranslated
    } else {
        Reason::Forwarded
    };
    reason(done);
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
        if action != xdp_action::XDP_REDIRECT {
            reason(Reason::DropRedirectFailed);
        }
        action
    }
}
