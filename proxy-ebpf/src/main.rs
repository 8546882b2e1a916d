//! The XDP data plane. For an `l4` VIP: find the client's flow in the LRU flow table or pick
//! a backend from the VIP's Maglev ring and pin it, then full-NAT the packet to the backend.
//! Replies from backends are translated back to the client. Everything else passes unchanged.
#![no_std]
#![no_main]
// Compare-and-swap on map memory (see `atomic`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod atomic;
mod counters;
mod flows;
mod forward;
mod maps;
mod nat;
mod parse;
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
    hash, ring_index, Backend, FlowKey, FlowState, NatKey, NatState, Reason, Settings, VipKey,
    VipMeta, BACKEND_PRESENT, EMPTY_SLOT, FAMILY_V4, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT,
    NAT_CLAIM_GRACE_TICKS, PROTO_TCP, VIP_HASH_SOURCE_ONLY, VIP_INDEX_EMPTY, VIP_INDEX_PROBES,
    VIP_INDEX_REMOVED, VIP_PASS_TO_STACK,
};

use counters::{flow_packet, reason};
use maps::{BACKENDS, RING, SETTINGS, VIP_INDEX, VIP_KEYS, VIP_METAS};
use parse::{same_addr, NotOurs, Packet, TCP_FIN, TCP_RST, TCP_SYN};
use rewrite::Translation;

/// How many NAT source ports a new flow tries before giving up.
const NAT_PORT_PROBES: u32 = 8;

#[xdp]
pub fn proxy_xdp(ctx: XdpContext) -> u32 {
    match try_proxy(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

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
    if let Some(vip) = find_vip(&sc.vip) {
        if vip.flags & VIP_PASS_TO_STACK != 0 {
            reason(Reason::PassTerminator);
            return Err(xdp_action::XDP_PASS);
        }
        return to_backend(pkt, sc, vip, settings, now);
    }
    // Replies are addressed to the NAT address; skip the reverse lookup for anything else.
    if same_addr(&pkt.key.dst, &snat_of(pkt, settings)) {
        return Err(to_client(ctx, pkt, sc, settings, now));
    }
    reason(Reason::PassNotVip);
    Err(xdp_action::XDP_PASS)
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    let (start, end) = parse::bounds(ctx);
    (end - start) as u64
}

#[inline(always)]
fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id).filter(|b| b.flags & BACKEND_PRESENT != 0)
}

#[inline(always)]
fn expired(fin: u8, last_seen: u64, now: u64, proto: u8, s: &Settings) -> bool {
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

/// A flow entry as read once: the first word of `FlowState` (backend, NAT port, FIN bits and
/// VIP number, little-endian as on the BPF target) and the time it was last seen.
struct Seen {
    word: u64,
    last_seen: u64,
}

impl Seen {
    /// Reads the entry; None if its slot changed hands while being read.
    #[inline(always)]
    fn read(found: &flows::Found) -> Option<Seen> {
        // SAFETY: map value pointer valid for this run; FlowState is 8-byte aligned and
        // starts with the packed word.
        let seen = unsafe {
            Seen {
                word: core::ptr::read_volatile(found.state as *const u64),
                last_seen: (*found.state).last_seen,
            }
        };
        found.still_ours().then_some(seen)
    }
    #[inline(always)]
    fn backend(&self) -> u32 {
        self.word as u32
    }
    #[inline(always)]
    fn nat_port(&self) -> u16 {
        (self.word >> 32) as u16
    }
    #[inline(always)]
    fn fin(&self) -> u8 {
        (self.word >> 48) as u8
    }
    #[inline(always)]
    fn vip_num(&self) -> u32 {
        (self.word >> 56) as u32
    }
}

/// Records a packet of a live flow: FIN flags, and the time at most every refresh interval.
#[inline(always)]
fn touch(found: &flows::Found, seen: &Seen, fin_bit: u8, tcp_flags: u8, now: u64, s: &Settings) {
    if tcp_flags & TCP_FIN != 0 && seen.fin() & fin_bit == 0 {
        set_fin(found, seen, fin_bit);
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
#[inline(never)]
fn set_fin(found: &flows::Found, seen: &Seen, fin_bit: u8) {
    const FIN_BITS: u64 = 0xff << 48;
    let mut expected = seen.word;
    for _ in 0..3 {
        // SAFETY: map value pointer valid for this run, 8-byte aligned.
        if unsafe {
            atomic::cas_u64(
                found.state as *mut u64,
                expected,
                expected | (fin_bit as u64) << 48,
            )
        } {
            return;
        }
        // SAFETY: as above.
        let now = unsafe { core::ptr::read_volatile(found.state as *const u64) };
        if now & !FIN_BITS != seen.word & !FIN_BITS {
            return;
        }
        expected = now;
    }
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

#[inline(always)]
fn snat_of(pkt: &Packet, s: &Settings) -> [u32; 4] {
    if pkt.key.family == FAMILY_V4 {
        [s.snat_v4, 0, 0, 0]
    } else {
        [s.snat_v6[0], s.snat_v6[1], s.snat_v6[2], s.snat_v6[3]]
    }
}

#[inline(always)]
fn copy4(a: &[u32; 4]) -> [u32; 4] {
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
    let b = match backend(backend_id) {
        Some(b)
            if vip_still_serves(vip_num, pkt)
                && !expired(seen.fin(), seen.last_seen, now, pkt.key.proto, s) =>
        {
            b
        }
        _ => {
            sc.stale = 1;
            sc.state.backend = backend_id;
            sc.state.nat_port = nat_port;
            return None;
        }
    };
    touch(&found, &seen, FLOW_FIN_CLIENT, pkt.tcp_flags, now, s);
    let hop = Hop {
        backend_id,
        vip_num,
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
        src: snat_of(pkt, s),
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
        nat_key_for(&mut sc.nat, hop.backend_id, hop.nat_port, pkt, s);
        nat::remove(&sc.nat, s);
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
        // Its VIP or backend was removed or it timed out: free the old NAT port first.
        nat_key_for(&mut sc.nat, sc.state.backend, sc.state.nat_port, pkt, s);
        nat::remove(&sc.nat, s);
    }
    // The 5-tuple hash also seeds the NAT port search; computed once.
    let tuple_hash = hash::five_tuple_hash(&pkt.key);
    let ring_hash = if vip.flags & VIP_HASH_SOURCE_ONLY != 0 {
        hash::source_hash(&pkt.key.src, pkt.key.family)
    } else {
        tuple_hash
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
        vip_num: vip.vip_num,
        claimed: now as u32,
    };
    let nat_port = allocate_nat_port(sc, pkt, b, s, tuple_hash, now);
    if nat_port == 0 {
        return Reason::DropNatPortsExhausted as u32;
    }
    sc.state = FlowState {
        backend: id,
        nat_port,
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
/// bucket busy.
// Not inlined, and not called from `pin_flow`: frames of nested calls add up on the 512-byte
// stack, sibling calls do not.
#[inline(never)]
fn insert_flow(pkt: &Packet, sc: &mut Scratch, s: &Settings) -> bool {
    flows::insert(&pkt.key, &sc.state, s).is_ok()
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
        // SAFETY: pin_flow returns PINNED or a valid Reason discriminant.
        reason(unsafe { core::mem::transmute::<u32, Reason>(pinned) });
        return Err(xdp_action::XDP_DROP);
    }
    if !insert_flow(pkt, sc, s) {
        // The NAT port stays claimed until a later probe finds it stale.
        reason(Reason::DropNatPortsExhausted);
        return Err(xdp_action::XDP_DROP);
    }
    let backend_id = sc.state.backend;
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
fn nat_key_for(nat: &mut NatKey, backend_id: u32, nat_port: u16, pkt: &Packet, s: &Settings) {
    let (addr, port) = match backend(backend_id) {
        Some(b) => (copy4(&b.addr), b.port),
        None => ([0; 4], 0),
    };
    *nat = NatKey {
        backend_addr: addr,
        snat_addr: snat_of(pkt, s),
        backend_port: port,
        nat_port,
        proto: pkt.key.proto,
        family: pkt.key.family,
        pad: [0; 2],
    };
}

/// Claims a balancer source port for a new flow towards backend `b`, recording the reverse
/// mapping `sc.reverse`. Ports are unique per (backend address, port), so the range is
/// reused per backend; the search starts at a port picked by the flow's 5-tuple hash
/// `start`. Returns the port (network order) or 0 when none is free.
#[inline(always)]
fn allocate_nat_port(
    sc: &mut Scratch,
    pkt: &Packet,
    b: &Backend,
    s: &Settings,
    start: u32,
    now: u64,
) -> u16 {
    let min = s.nat_port_min as u32;
    let max = s.nat_port_max as u32;
    if max < min || min == 0 {
        return 0;
    }
    let Some(range) = NonZeroU32::new(max - min + 1) else {
        return 0;
    };
    sc.nat = NatKey {
        backend_addr: copy4(&b.addr),
        snat_addr: snat_of(pkt, s),
        backend_port: b.port,
        nat_port: 0,
        proto: pkt.key.proto,
        family: pkt.key.family,
        pad: [0; 2],
    };
    for i in 0..NAT_PORT_PROBES {
        let port = (min + start.wrapping_add(i.wrapping_mul(7919)) % range) as u16;
        sc.nat.nat_port = port.to_be();
        let (same_key, observed) = match nat::claim(&sc.nat, &sc.reverse, s, &mut sc.holder) {
            nat::Claim::Claimed => return sc.nat.nat_port,
            nat::Claim::Busy => continue,
            nat::Claim::Held { same_key, observed } => (same_key, observed),
        };
        // Taken: by this very flow (a retransmitted first packet), by a live flow, or left
        // behind by one that was evicted or re-pinned.
        let h = &sc.holder;
        if same_key
            && same_addr(&h.client_addr, &pkt.key.src)
            && h.client_port == pkt.key.sport
            && same_addr(&h.vip_addr, &pkt.key.dst)
            && h.vip_port == pkt.key.dport
        {
            return sc.nat.nat_port;
        }
        if holder_is_stale(pkt, sc, s, same_key, now)
            && nat::take_over(&sc.nat, &sc.reverse, s, observed)
        {
            return sc.nat.nat_port;
        }
    }
    0
}

/// Whether the holder of a NAT key being claimed (`sc.holder`) is stale: its flow is gone
/// or timed out, or moved to another backend or, when it holds this very key (`same_key`),
/// to another port. An IPv4 holder of another key in the same slot whose flow is still on its backend
/// counts as live.
// Not inlined: the flow lookup would otherwise be unrolled into every NAT port probe, each
// copy with its own stack slots.
#[inline(never)]
fn holder_is_stale(pkt: &Packet, sc: &mut Scratch, s: &Settings, same_key: bool, now: u64) -> bool {
    let h = &sc.holder;
    sc.owner = FlowKey {
        src: copy4(&h.client_addr),
        dst: copy4(&h.vip_addr),
        sport: h.client_port,
        dport: h.vip_port,
        proto: pkt.key.proto,
        family: pkt.key.family,
        pad: [0; 2],
    };
    let holder_backend = h.backend;
    match flows::get(&sc.owner, s).and_then(|f| Seen::read(&f)) {
        // A flow that timed out (closed or idle) is over: its next packet would be pinned
        // anew, so its port is free.
        Some(f) => {
            f.backend() != holder_backend
                || (same_key && f.nat_port() != sc.nat.nat_port)
                || expired(f.fin(), f.last_seen, now, pkt.key.proto, s)
        }
        // Its flow is missing: gone, or being pinned on another CPU right now (the NAT port
        // is claimed just before the flow entry is written).
        None => (now as u32).wrapping_sub(h.claimed) > NAT_CLAIM_GRACE_TICKS,
    }
}

/// Backend -> balancer NAT address: translate back to VIP -> client.
#[inline(never)]
fn to_client(ctx: &XdpContext, pkt: &Packet, sc: &mut Scratch, s: &Settings, now: u64) -> u32 {
    sc.nat = NatKey {
        backend_addr: copy4(&pkt.key.src),
        snat_addr: copy4(&pkt.key.dst),
        backend_port: pkt.key.sport,
        nat_port: pkt.key.dport,
        proto: pkt.key.proto,
        family: pkt.key.family,
        pad: [0; 2],
    };
    if !nat::read(&sc.nat, s, &mut sc.reverse) {
        // Not a NAT flow of ours: the balancer's own traffic.
        reason(Reason::PassNotVip);
        return xdp_action::XDP_PASS;
    }
    sc.flow = FlowKey {
        src: copy4(&sc.reverse.client_addr),
        dst: copy4(&sc.reverse.vip_addr),
        sport: sc.reverse.client_port,
        dport: sc.reverse.vip_port,
        proto: pkt.key.proto,
        family: pkt.key.family,
        pad: [0; 2],
    };
    let Some(found) = flows::get(&sc.flow, s) else {
        // The client side is gone (evicted): the stack answers the backend (with a RST).
        nat::remove(&sc.nat, s);
        reason(Reason::PassNotVip);
        return xdp_action::XDP_PASS;
    };
    let Some(seen) = Seen::read(&found) else {
        // Its slot is being given to another flow right now: as if evicted.
        reason(Reason::PassNotVip);
        return xdp_action::XDP_PASS;
    };
    // A reply from a backend the flow no longer uses (it was removed and the flow re-pinned,
    // possibly to the same NAT port) must not reach the client either.
    if seen.nat_port() != pkt.key.dport
        || seen.backend() != sc.reverse.backend
        || expired(seen.fin(), seen.last_seen, now, pkt.key.proto, s)
    {
        // The client's flow moved on to another mapping: this reply belongs to nobody.
        nat::remove(&sc.nat, s);
        reason(Reason::PassNotVip);
        return xdp_action::XDP_PASS;
    }
    touch(&found, &seen, FLOW_FIN_BACKEND, pkt.tcp_flags, now, s);
    if pkt.tcp_flags & TCP_RST != 0 {
        nat::remove(&sc.nat, s);
        flows::remove(&sc.flow, s);
    }
    flow_packet(
        sc.reverse.vip_num,
        sc.reverse.backend,
        frame_len(ctx),
        false,
        false,
    );
    sc.t = Translation {
        src: copy4(&sc.reverse.vip_addr),
        dst: copy4(&sc.reverse.client_addr),
        sport: sc.reverse.vip_port,
        dport: sc.reverse.client_port,
    };
    if !rewrite::apply(ctx, pkt, &sc.t) {
        reason(Reason::DropMalformed);
        return xdp_action::XDP_DROP;
    }
    forward::send(ctx, pkt, &sc.t, forward::CLIENT_HOP, now, s)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
