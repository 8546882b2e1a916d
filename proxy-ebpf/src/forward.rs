//! Sending a translated packet on: next hop from the kernel FIB (cached for a second per
//! backend and per client address), then XDP_TX back out of the interface it came in on, or
//! XDP_REDIRECT to another one.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_redirect, generated::bpf_fib_lookup as fib_lookup_helper},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
    EbpfContext,
};
use proxy_common::{HopKey, NextHop, Reason, Settings, FAMILY_V4};

use crate::{
    counters::reason,
    maps::{HOPS_BY_BACKEND, HOPS_BY_CLIENT},
    parse::{header, Packet, ETH_LEN},
    rewrite::Translation,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Working memory of `refresh`, kept off the 512-byte stack (the FIB lookup's parameter
/// block alone is 64 bytes).
#[repr(C)]
pub struct FibScratch {
    params: bpf_fib_lookup,
    hop: NextHop,
    key: HopKey,
}

#[map(name = "FIB_SCRATCH")]
static FIB_SCRATCH: PerCpuArray<FibScratch> = PerCpuArray::with_max_entries(1, 0);

/// Where `send` finds (and caches) the next hop.
pub const CLIENT_HOP: u32 = u32::MAX;

/// Asks the FIB for the next hop towards `t.dst` and caches the answer for `hop_slot` until
/// `expires`. False when the FIB has no complete answer.
// Not inlined: this runs about once a second per destination, not per packet.
// Key and value by reference: by value they would be copied from the per-CPU scratch onto
// the 512-byte stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(never)]
fn refresh(ctx: &XdpContext, pkt: &Packet, t: &Translation, hop_slot: u32, expires: u64) -> bool {
    let Some(fs) = FIB_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch, used by this program run only.
    let fs = unsafe { &mut *fs };
    let params = &mut fs.params;
    // SAFETY: bpf_fib_lookup is plain old data; zero is a valid value of every field.
    unsafe { core::ptr::write_bytes(params as *mut bpf_fib_lookup, 0, 1) };
    params.l4_protocol = pkt.key.proto;
    params.sport = t.sport;
    params.dport = t.dport;
    params.ifindex = ctx.ingress_ifindex() as u32;
    if pkt.key.family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = t.src[0];
        params.__bindgen_anon_4.ipv4_dst = t.dst[0];
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = t.src;
        params.__bindgen_anon_4.ipv6_dst = t.dst;
    }
    // SAFETY: params is per-CPU map memory of the helper's struct size.
    let rc = unsafe {
        fib_lookup_helper(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return false;
    }
    fs.hop = NextHop {
        dmac: params.dmac,
        smac: params.smac,
        ifindex: params.ifindex,
        expires,
    };
    if hop_slot == CLIENT_HOP {
        fs.key = hop_key(pkt, t);
        HOPS_BY_CLIENT.insert(&fs.key, &fs.hop, 0).is_ok()
    } else if let Some(h) = HOPS_BY_BACKEND.get_ptr_mut(hop_slot) {
        // SAFETY: map value pointer valid for this run; a racing refresh on another CPU
        // writes the same answer.
        unsafe {
            (*h).dmac = fs.hop.dmac;
            (*h).smac = fs.hop.smac;
            (*h).ifindex = fs.hop.ifindex;
            (*h).expires = expires;
        }
        true
    } else {
        false
    }
}

#[inline(always)]
fn hop_key(pkt: &Packet, t: &Translation) -> HopKey {
    HopKey {
        addr: [t.dst[0], t.dst[1], t.dst[2], t.dst[3]],
        family: pkt.key.family,
        pad: [0; 3],
    }
}

/// The cache entry of the next hop towards `hop_slot`.
// The key by reference, as the helper takes it: no move of the key into the call.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn cached(pkt: &Packet, t: &Translation, hop_slot: u32) -> Option<*mut NextHop> {
    if hop_slot == CLIENT_HOP {
        HOPS_BY_CLIENT.get_ptr_mut(&hop_key(pkt, t))
    } else {
        HOPS_BY_BACKEND.get_ptr_mut(hop_slot)
    }
}

/// Sends the translated packet towards backend `hop_slot`, or towards the client when
/// `hop_slot` is `CLIENT_HOP`, using the cached next hop while it is fresh.
// Inlined: one call less per packet (every return pays for the CPU's return-stack
// mitigations), and it takes more arguments than a BPF function may.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    t: &Translation,
    hop_slot: u32,
    now: u64,
    s: &Settings,
) -> u32 {
    let mut entry = cached(pkt, t, hop_slot);
    // SAFETY: map value pointers stay valid for this run.
    let fresh = entry.is_some_and(|h| unsafe { (*h).expires } > now);
    if !fresh {
        if !refresh(ctx, pkt, t, hop_slot, now + s.next_hop_ttl_ticks as u64) {
            // No neighbour entry yet, forwarding off, unreachable...: the translated packet
            // goes to the stack, which resolves the neighbour and forwards it (or answers
            // with ICMP).
            reason(Reason::PassNoRoute);
            return xdp_action::XDP_PASS;
        }
        entry = cached(pkt, t, hop_slot);
    }
    let Some(hop) = entry else {
        reason(Reason::PassNoRoute);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: as above; plain data.
    let hop = unsafe { &*hop };
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
