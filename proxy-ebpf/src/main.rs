//! The XDP data plane. For an `l4` VIP: find the client's flow in the LRU flow table or pick
//! a backend from the VIP's Maglev ring and pin it, then full-NAT the packet to the backend.
//! Replies from backends are translated back to the client. Everything else passes unchanged.
#![no_std]
#![no_main]
// Compare-and-swap on map memory (see `atomic`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod atomic;
#[cfg(feature = "bench")]
mod bench;
mod counters;
mod flows;
mod forward;
mod maps;
mod nat;
mod nat_ports;
mod parse;
mod reply;
mod rewrite;

use core::num::NonZeroU32;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_jiffies64,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use proxy_common::{
    hash, ports::MAX_SNAT_ADDRS, ring_index, Backend, FlowKey, FlowState, NatKey, NatState, Reason,
    Settings, VipKey, VipMeta, BACKEND_PRESENT, EMPTY_SLOT, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT,
    PROTO_TCP, VIP_DRAINING, VIP_HASH_SOURCE_ONLY, VIP_INDEX_EMPTY, VIP_INDEX_PROBES,
    VIP_INDEX_REMOVED, VIP_PASS_TO_STACK,
};

use counters::{flow_packet, reason};
use maps::{BACKENDS, RING, SETTINGS, VIP_INDEX, VIP_KEYS, VIP_METAS};
use nat_ports::FIN_BOTH;
use parse::{same_addr, NotOurs, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use rewrite::Translation;

#[xdp]
pub fn proxy_xdp(ctx: XdpContext) -> u32 {
    match try_proxy(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

fn try_proxy(ctx: &XdpContext) -> Result<u32, ()> {
    let work = WORK.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU memory, used by this program run only; two disjoint fields. `parse`
    // fills every field of the packet.
    let (pkt, sc) = unsafe { (&mut (*work).pkt, &mut (*work).sc) };
    match parse::parse(ctx, pkt) {
        None => {}
        Some(why) => {
            let (r, action) = match why {
                NotOurs::NotIp => (Reason::PassNotIp, xdp_action::XDP_PASS),
                NotOurs::Fragment => (Reason::PassFragment, xdp_action::XDP_PASS),
                NotOurs::OtherProto => (Reason::PassOtherProto, xdp_action::XDP_PASS),
                NotOurs::Malformed => (Reason::DropMalformed, xdp_action::XDP_DROP),
            };
            reason(r);
            return Ok(action);
        }
    }
    let pkt: &Packet = pkt;
    let settings = SETTINGS.get(0).ok_or(())?;
    // Jiffies: the verifier inlines this helper into a single load.
    // SAFETY: no preconditions.
    let now = unsafe { bpf_jiffies64() };
    // Most packets belong to a known flow, and one table lookup settles them. One place
    // forwards both known and new flows: the inlined code exists once, and so does its
    // share of the 512-byte stack.
    let (b, hop) = match established(pkt, sc, settings, now) {
        Some(known) => known,
        None => match new_or_other(ctx, pkt, sc, settings, now) {
            Ok(pinned) => pinned,
            Err(action) => return Ok(action),
        },
    };
    Ok(forward(ctx, pkt, sc, settings, b, &hop))
}

/// A packet that is not of a known flow: the first of a new flow to an `l4` VIP (pinned
/// here, forwarded by the caller), a reply from a backend, or anything else (the verdict).
#[inline(always)]
fn new_or_other(
    ctx: &XdpContext,
    pkt: &Packet,
    sc: &mut Scratch,
    settings: &Settings,
    now: u64,
) -> Result<(&'static Backend, Hop), u32> {
    sc.vip = VipKey {
        addr: copy4(&pkt.key.dst),
        port: pkt.key.dport,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    // A draining VIP takes no new flow: its address is no VIP for a first packet.
    if let Some(vip) = find_vip(&sc.vip).filter(|v| v.flags & VIP_DRAINING == 0) {
        if vip.flags & VIP_PASS_TO_STACK != 0 {
            reason(Reason::PassTerminator);
            return Err(xdp_action::XDP_PASS);
        }
        return to_backend(pkt, sc, vip, settings, now);
    }
    // Replies are addressed to a NAT address; skip the reverse lookup for anything else.
    if is_snat_addr(pkt, settings) {
        return Err(reply::to_client(ctx, pkt, sc, settings, now));
    }
    reason(Reason::PassNotVip);
    Err(xdp_action::XDP_PASS)
}

#[inline(always)]
pub(crate) fn frame_len(ctx: &XdpContext) -> u64 {
    let (start, end) = parse::bounds(ctx);
    (end - start) as u64
}

#[inline(always)]
pub(crate) fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id).filter(|b| b.flags & BACKEND_PRESENT != 0)
}

#[inline(always)]
pub(crate) fn expired(fin: u8, last_seen: u64, now: u64, proto: u8, s: &Settings) -> bool {
    let timeout = if fin == FLOW_FIN_CLIENT | FLOW_FIN_BACKEND {
        s.closing_timeout_ticks
    } else if proto == PROTO_TCP {
        s.tcp_idle_timeout_ticks
    } else {
        s.udp_idle_timeout_ticks
    };
    // `>=`: a timeout of 0 expires at once even within one tick.
    now.saturating_sub(last_seen) >= timeout
}

/// A flow entry as read once: the first word of `FlowState` (backend, SNAT index, NAT port,
/// FIN bits and VIP number, little-endian as on the BPF target) and the time it was last
/// seen.
pub(crate) struct Seen {
    word: u64,
    last_seen: u64,
}

impl Seen {
    /// Reads the entry; None if its slot changed hands while being read.
    #[inline(always)]
    pub(crate) fn read(found: &flows::Found) -> Option<Seen> {
        // SAFETY: map value pointer valid for this run; FlowState is 8-byte aligned and
        // starts with the packed word. Volatile field reads: other CPUs write the entry, and
        // the reads must stay between the tag read and its re-check (see `flows`).
        let seen = unsafe {
            Seen {
                word: core::ptr::read_volatile(found.state as *const u64),
                last_seen: core::ptr::read_volatile(core::ptr::addr_of!((*found.state).last_seen)),
            }
        };
        found.still_ours().then_some(seen)
    }
    #[inline(always)]
    pub(crate) fn backend(&self) -> u32 {
        self.word as u32 & 0xffff
    }
    #[inline(always)]
    pub(crate) fn snat(&self) -> u8 {
        (self.word >> 16) as u8
    }
    #[inline(always)]
    pub(crate) fn nat_port(&self) -> u16 {
        (self.word >> 32) as u16
    }
    #[inline(always)]
    pub(crate) fn fin(&self) -> u8 {
        (self.word >> 48) as u8
    }
    #[inline(always)]
    fn vip_num(&self) -> u32 {
        (self.word >> 56) as u32
    }
}

/// Records a packet of a live flow: FIN flags, and the time at most every refresh interval.
/// The packet that closes the flow (the second FIN) gives its NAT port back: the entry
/// lingers for the last ACKs, the port is free for the next flow.
#[inline(always)]
pub(crate) fn touch(
    found: &flows::Found,
    seen: &Seen,
    fin_bit: u8,
    pkt: &Packet,
    now: u64,
    s: &Settings,
) {
    if pkt.tcp_flags & TCP_FIN != 0 && seen.fin() & fin_bit == 0 && set_fin(found, seen, fin_bit) {
        nat_ports::give_back(
            seen.backend(),
            seen.snat(),
            seen.nat_port(),
            pkt.key.family,
            s,
        );
    }
    if now.saturating_sub(seen.last_seen) > s.last_seen_refresh_ticks as u64 {
        // A racing writer only loses a timestamp (or another flow gains one).
        // SAFETY: as above.
        unsafe { (*found.state).last_seen = now };
    }
}

/// Sets a FIN bit in the flow's state word by compare-and-swap. A failed swap is retried
/// while only FIN bits changed (the other side's FIN, on another CPU); if the flow's
/// backend, NAT port or VIP changed, the slot went to another flow, which keeps its bits.
/// True if this swap closed the flow (both FIN bits now set): exactly one packet sees that.
#[inline(never)]
fn set_fin(found: &flows::Found, seen: &Seen, fin_bit: u8) -> bool {
    const FIN_BITS: u64 = 0xff << 48;
    let mut expected = seen.word;
    for _ in 0..3 {
        let new = expected | (fin_bit as u64) << 48;
        // SAFETY: map value pointer valid for this run, 8-byte aligned.
        if unsafe { atomic::cas_u64(found.state as *mut u64, expected, new) } {
            return (expected >> 48) as u8 != FIN_BOTH && (new >> 48) as u8 == FIN_BOTH;
        }
        // SAFETY: as above.
        let now = unsafe { core::ptr::read_volatile(found.state as *const u64) };
        if now & !FIN_BITS != seen.word & !FIN_BITS || now & (fin_bit as u64) << 48 != 0 {
            return false;
        }
        expected = now;
    }
    false
}

/// The VIP a packet is addressed to: probe `VIP_INDEX`, confirm in `VIP_KEYS`.
#[inline(always)]
fn find_vip(key: &VipKey) -> Option<&'static VipMeta> {
    for i in 0..VIP_INDEX_PROBES {
        let entry = *VIP_INDEX.get(proxy_common::vip_index_slot(key, i))?;
        if entry == VIP_INDEX_EMPTY {
            return None;
        }
        if entry == VIP_INDEX_REMOVED {
            continue;
        }
        let num = entry - 1;
        let k = VIP_KEYS.get(num)?;
        if same_addr(&k.addr, &key.addr)
            && k.port == key.port
            && k.proto == key.proto
            && k.family == key.family
        {
            return VIP_METAS.get(num);
        }
    }
    None
}

/// Whether VIP number `vip_num` is still the VIP this packet is addressed to.
#[inline(always)]
fn vip_still_serves(vip_num: u32, pkt: &Packet) -> bool {
    VIP_KEYS.get(vip_num).is_some_and(|k| {
        same_addr(&k.addr, &pkt.key.dst)
            && k.port == pkt.key.dport
            && k.proto == pkt.key.proto
            && k.family == pkt.key.family
    })
}

/// Per-CPU working memory for the keys and values of one packet: the BPF stack is 512 bytes
/// for the whole call chain, and these structs would not fit beside the parsed packet.
#[repr(C)]
pub struct Scratch {
    // What every forwarded packet touches first, next to the packet in the same value.
    pub t: Translation,
    /// Set by `established`: `flow` is in the table but no longer usable (its VIP or
    /// backend went away, or it timed out); `state` holds its old mapping.
    pub stale: u32,
    pub state: FlowState,
    pub vip: VipKey,
    pub flow: FlowKey,
    pub owner: FlowKey,
    pub nat: NatKey,
    pub reverse: NatState,
    /// The current holder of a NAT key being claimed.
    pub holder: NatState,
    /// The port-space position a new flow tries first (`nat_ports::allocate`), or
    /// `nat_ports::NO_PORT`.
    pub preferred: u32,
}

/// Per-CPU working memory of one program run: the parsed packet and the scratch structs.
/// One map value, so one lookup per packet.
#[repr(C)]
pub struct Work {
    pub pkt: Packet,
    pub sc: Scratch,
}

#[map(name = "WORK")]
static WORK: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

/// Whether a packet is addressed to one of the family's NAT addresses (a reply).
#[inline(always)]
fn is_snat_addr(pkt: &Packet, s: &Settings) -> bool {
    let n = s.snat_count(pkt.key.family);
    for i in 0..MAX_SNAT_ADDRS as u8 {
        if (i as u32) < n && same_addr(&pkt.key.dst, &s.snat_addr(pkt.key.family, i)) {
            return true;
        }
    }
    false
}

#[inline(always)]
pub(crate) fn copy4(a: &[u32; 4]) -> [u32; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// The fast path: a packet of a flow already pinned. Returns where it goes, or None when
/// the packet starts a flow (or restarts a stale one: `sc.stale`), which `to_backend`
/// handles.
#[inline(always)]
fn established(
    pkt: &Packet,
    sc: &mut Scratch,
    s: &Settings,
    now: u64,
) -> Option<(&'static Backend, Hop)> {
    sc.stale = 0;
    let found = flows::get(&pkt.key, s)?;
    let seen = Seen::read(&found)?;
    let vip_num = seen.vip_num();
    let backend_id = seen.backend();
    let nat_port = seen.nat_port();
    // A SYN on a flow that saw a FIN: the client reused its 5-tuple for a new connection.
    let reused = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && seen.fin() != 0
        && pkt.key.proto == PROTO_TCP;
    let b = match backend(backend_id) {
        Some(b)
            if vip_still_serves(vip_num, pkt)
                && !reused
                && !expired(seen.fin(), seen.last_seen, now, pkt.key.proto, s) =>
        {
            b
        }
        _ => {
            sc.stale = 1;
            sc.state.backend = backend_id as u16;
            sc.state.snat = seen.snat();
            sc.state.nat_port = nat_port;
            sc.state.fin = seen.fin();
            return None;
        }
    };
    touch(&found, &seen, FLOW_FIN_CLIENT, pkt, now, s);
    let hop = Hop {
        backend_id,
        vip_num,
        snat: seen.snat(),
        fin: seen.fin(),
        nat_port,
        now,
        count: Count::Known,
    };
    Some((b, hop))
}

/// How a forwarded packet is counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Count {
    Known,
    NewFlow,
    /// A new pin for a TCP packet without SYN: the flow was pinned before, but its entry
    /// was evicted (an LRU miss).
    NewFlowMissed,
}

/// Where a client packet goes, and how it is counted.
struct Hop {
    backend_id: u32,
    vip_num: u32,
    /// The flow's SNAT address index and its FIN bits before this packet.
    snat: u8,
    fin: u8,
    nat_port: u16,
    now: u64,
    count: Count,
}

/// Translates a client packet to backend `b` and sends it.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    sc: &mut Scratch,
    s: &Settings,
    b: &Backend,
    hop: &Hop,
) -> u32 {
    sc.t = Translation {
        src: s.snat_addr(pkt.key.family, hop.snat),
        dst: copy4(&b.addr),
        sport: hop.nat_port,
        dport: b.port,
    };
    flow_packet(
        hop.vip_num,
        hop.backend_id,
        frame_len(ctx),
        hop.count != Count::Known,
        hop.count == Count::NewFlowMissed,
    );
    if pkt.tcp_flags & TCP_RST != 0 {
        // The connection is over: forget it now (this RST still goes through).
        let pin = pin_word(hop.backend_id, hop.snat, hop.nat_port, hop.fin);
        release_flow(pkt, sc, s, pin);
        flows::remove(&pkt.key, s);
    }
    if !rewrite::apply(ctx, pkt, &sc.t) {
        reason(Reason::DropMalformed);
        return xdp_action::XDP_DROP;
    }
    forward::send(ctx, pkt, &sc.t, hop.backend_id, hop.now, s)
}

/// Client -> VIP, first packet of a flow (or of a stale one): pick a backend from the
/// VIP's ring and claim a NAT port. On success `sc.state` holds the new pin (for
/// `insert_flow`) and the result is `PINNED`, otherwise the `Reason` to drop for.
// Not inlined: its own stack frame (the BPF stack is 512 bytes for the whole call chain),
// and this runs once per flow, not per packet.
#[inline(never)]
fn pin_flow(pkt: &Packet, sc: &mut Scratch, vip: &VipMeta, s: &Settings, now: u64) -> u32 {
    if sc.stale != 0 {
        // Its VIP or backend was removed, it timed out or the client reused its 5-tuple:
        // free the old NAT port first.
        let st = sc.state;
        let pin = pin_word(st.backend as u32, st.snat, st.nat_port, st.fin);
        release_flow(pkt, sc, s, pin);
    }
    let ring_hash = if vip.flags & VIP_HASH_SOURCE_ONLY != 0 {
        hash::source_hash(&pkt.key.src, pkt.key.family)
    } else {
        hash::five_tuple_hash(&pkt.key)
    };
    let Some(id) = ring_slot(vip, ring_hash, s) else {
        return Reason::DropNoBackend as u32;
    };
    let Some(b) = backend(id) else {
        return Reason::DropNoBackend as u32;
    };
    if b.family != pkt.key.family {
        return Reason::DropFamilyMismatch as u32;
    }
    sc.reverse = NatState {
        client_addr: copy4(&pkt.key.src),
        vip_addr: copy4(&pkt.key.dst),
        client_port: pkt.key.sport,
        vip_port: pkt.key.dport,
        backend: id,
        vip_num: vip.vip_num as u8,
        snat: 0,
        nat_port: 0,
        claimed: now as u32,
    };
    let mut got = nat_ports::allocate(sc, pkt, id, s, now);
    // Every port taken: ports of flows that timed out without closing come back here, then
    // one more try.
    if got == nat_ports::PORTS_FULL && nat_ports::reclaim(pkt, sc, id, s, now) {
        got = nat_ports::allocate(sc, pkt, id, s, now);
    }
    if got == nat_ports::NO_PORT || got == nat_ports::PORTS_FULL {
        return Reason::DropNatPortsExhausted as u32;
    }
    sc.state = FlowState {
        backend: id as u16,
        snat: (got >> 16) as u8,
        pad: 0,
        nat_port: got as u16,
        fin: if pkt.tcp_flags & TCP_FIN != 0 {
            FLOW_FIN_CLIENT
        } else {
            0
        },
        vip_num: vip.vip_num as u8,
        last_seen: now,
    };
    PINNED
}

/// Writes the pin `pin_flow` chose into the flow table; false if racing writers kept the
/// bucket busy (the new flow's port is then given back). A live flow that had to give way
/// (the bucket's least recently seen) gives its port back too.
// Not inlined, and not called from `pin_flow`: frames of nested calls add up on the 512-byte
// stack, sibling calls do not.
#[inline(never)]
fn insert_flow(pkt: &Packet, sc: &mut Scratch, s: &Settings) -> bool {
    match flows::insert(&pkt.key, &sc.state, s) {
        Ok(word) => {
            if word >> 32 & 0xffff != 0 {
                let fin = (word >> 48) as u8;
                if fin != FIN_BOTH {
                    nat_ports::give_back(
                        word as u32 & 0xffff,
                        (word >> 16) as u8,
                        (word >> 32) as u16,
                        pkt.key.family,
                        s,
                    );
                }
            }
            true
        }
        Err(()) => {
            let st = sc.state;
            let pin = pin_word(st.backend as u32, st.snat, st.nat_port, 0);
            release_flow(pkt, sc, s, pin);
            false
        }
    }
}

/// A flow's mapping as the first word of its `FlowState`: backend, SNAT index, NAT port (network
/// order), FIN bits.
#[inline(always)]
fn pin_word(backend_id: u32, snat: u8, nat_port: u16, fin: u8) -> u64 {
    (backend_id & 0xffff) as u64
        | (snat as u64) << 16
        | (nat_port as u64) << 32
        | (fin as u64) << 48
}

/// A flow of this packet's 5-tuple is over (RST, re-pin, failed insert): its reverse entry
/// goes, if it is still this client's, and its port comes back unless the flow closed (both
/// FINs) and gave it back then. `pin`: its mapping (`pin_word`).
#[inline(never)]
fn release_flow(pkt: &Packet, sc: &mut Scratch, s: &Settings, pin: u64) {
    let backend_id = pin as u32 & 0xffff;
    let snat = (pin >> 16) as u8;
    let nat_port = (pin >> 32) as u16;
    let fin = (pin >> 48) as u8;
    nat_key_for(&mut sc.nat, backend_id, snat, nat_port, pkt, s);
    nat::remove_for_client(&sc.nat, s, &pkt.key.src, pkt.key.sport);
    if fin != FIN_BOTH {
        nat_ports::give_back(backend_id, snat, nat_port, pkt.key.family, s);
    }
}

/// `pin_flow` succeeded (any other value is a drop `Reason`).
const PINNED: u32 = u32::MAX;

/// Client -> VIP, first packet of a flow: pin it; the caller translates and sends.
#[inline(always)]
fn to_backend(
    pkt: &Packet,
    sc: &mut Scratch,
    vip: &VipMeta,
    s: &Settings,
    now: u64,
) -> Result<(&'static Backend, Hop), u32> {
    let pinned = pin_flow(pkt, sc, vip, s, now);
    if pinned != PINNED {
        // pin_flow returns PINNED or a Reason's discriminant; the fallback never happens.
        reason(Reason::from_u32(pinned).unwrap_or(Reason::DropNoBackend));
        return Err(xdp_action::XDP_DROP);
    }
    if !insert_flow(pkt, sc, s) {
        reason(Reason::DropNatPortsExhausted);
        return Err(xdp_action::XDP_DROP);
    }
    let backend_id = sc.state.backend as u32;
    let Some(b) = backend(backend_id) else {
        reason(Reason::DropNoBackend);
        return Err(xdp_action::XDP_DROP);
    };
    let count = if pkt.key.proto == PROTO_TCP && pkt.tcp_flags & TCP_SYN == 0 {
        Count::NewFlowMissed
    } else {
        Count::NewFlow
    };
    let hop = Hop {
        backend_id,
        vip_num: vip.vip_num,
        snat: sc.state.snat,
        fin: sc.state.fin,
        nat_port: sc.state.nat_port,
        now,
        count,
    };
    Ok((b, hop))
}

/// The backend id in the VIP's ring slot for this hash.
#[inline(always)]
fn ring_slot(vip: &VipMeta, hash: u32, s: &Settings) -> Option<u32> {
    // NonZero: a `%` the compiler cannot prove safe becomes a panic call the verifier rejects.
    let size = NonZeroU32::new(s.ring_size)?;
    let index = ring_index(vip.vip_num, vip.active_ring) * s.ring_size + hash % size;
    let id = *RING.get(index)?;
    (id != EMPTY_SLOT).then_some(id)
}

/// Fills `nat` with the reverse-table key of a pinned flow (the reply the backend will send).
#[inline(always)]
fn nat_key_for(
    nat: &mut NatKey,
    backend_id: u32,
    snat: u8,
    nat_port: u16,
    pkt: &Packet,
    s: &Settings,
) {
    let (addr, port) = match backend(backend_id) {
        Some(b) => (copy4(&b.addr), b.port),
        None => ([0; 4], 0),
    };
    *nat = NatKey {
        backend_addr: addr,
        snat_addr: s.snat_addr(pkt.key.family, snat),
        backend_port: port,
        nat_port,
        proto: pkt.key.proto,
        family: pkt.key.family,
        pad: [0; 2],
    };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
