//! NAT port policy: which balancer source port (and SNAT address) a new flow gets towards
//! its backend, and when a port comes back.
//!
//! Every backend has its own port space (`proxy_common::ports`, in `NAT_PORTS`): the tuple
//! towards a node only has to be unique towards that node, and each SNAT address adds a full
//! port range. A new flow takes the space's next free position in rotating order, then
//! claims the reverse NAT entry of that tuple (`nat::claim`), which stays the arbiter: a
//! port whose entry is held by a live flow is never handed out twice.
//!
//! A port comes back when its flow is over: at the second FIN (the flow entry lingers for
//! the last ACKs, but the port is free for the next flow: the rotating order reuses it last),
//! at a RST, when the flow is re-pinned (timed out, its VIP or backend gone, or a SYN on a
//! closed flow: the client reused its 5-tuple), when its flow entry is evicted, and, for
//! flows that timed out without anyone noticing, when a full space is searched for stale
//! holders (`reclaim`).

use core::num::NonZeroU32;

use proxy_common::{
    hash,
    ports::{self, Space, Words},
    FlowKey, NatKey, Settings, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT, NAT_CLAIM_GRACE_TICKS,
};

use crate::{
    atomic::{cas_u64, clear_bits_u64, set_bits_u64},
    expired, flows,
    maps::NAT_PORTS,
    nat,
    parse::Packet,
    Scratch, Seen,
};

/// Searches of the port space one new flow may do: each gives a port back when its reverse
/// entry turns out to be taken by a live flow of another tuple (hash collision) or busy.
const CLAIM_TRIES: u32 = 4;
/// Positions a full space checks for stale holders before the new flow is dropped.
const RECLAIM_PROBES: u32 = 16;

/// `allocate` found no port.
pub const NO_PORT: u32 = u32::MAX;
/// `allocate` found the space full: `reclaim` may free some.
pub const PORTS_FULL: u32 = u32::MAX - 1;

/// Both FIN bits: the flow is closed and its port was given back.
pub const FIN_BOTH: u8 = FLOW_FIN_CLIENT | FLOW_FIN_BACKEND;

/// The port-space words in map memory.
struct MapWords;

impl Words for MapWords {
    #[inline(always)]
    fn load(&self, i: u32) -> u64 {
        match NAT_PORTS.get_ptr(i) {
            // SAFETY: map value pointer valid for this run, 8-byte aligned.
            Some(p) => unsafe { core::ptr::read_volatile(p) },
            None => u64::MAX,
        }
    }
    #[inline(always)]
    fn compare_swap(&self, i: u32, old: u64, new: u64) -> bool {
        match NAT_PORTS.get_ptr_mut(i) {
            // SAFETY: as above.
            Some(p) => unsafe { cas_u64(p, old, new) },
            None => false,
        }
    }
    #[inline(always)]
    fn set_bits(&self, i: u32, bits: u64) {
        if let Some(p) = NAT_PORTS.get_ptr_mut(i) {
            // SAFETY: as above.
            unsafe { set_bits_u64(p, bits) };
        }
    }
    #[inline(always)]
    fn clear_bits(&self, i: u32, bits: u64) {
        if let Some(p) = NAT_PORTS.get_ptr_mut(i) {
            // SAFETY: as above.
            unsafe { clear_bits_u64(p, bits) };
        }
    }
    #[inline(always)]
    fn store(&self, i: u32, v: u64) {
        if let Some(p) = NAT_PORTS.get_ptr_mut(i) {
            // SAFETY: as above. A hint: a racing store only moves the cursor elsewhere.
            unsafe { core::ptr::write_volatile(p, v) };
        }
    }
}

/// The port space of backend `id` for a family.
#[inline(always)]
fn space(id: u32, family: u8, s: &Settings) -> Option<Space> {
    Space::of(id, s.nat_space_stride, s.nat_positions(family))
}

/// Gives back the port a flow of backend `id` held (`port` in network order).
#[inline(never)]
pub fn give_back(id: u32, snat: u8, port: u16, family: u8, s: &Settings) {
    let range = s.nat_port_range();
    let port = u16::from_be(port);
    if (snat as u32) >= s.snat_count(family) || port < s.nat_port_min || port > s.nat_port_max {
        return;
    }
    if let Some(sp) = space(id, family, s) {
        ports::release(
            &MapWords,
            sp,
            ports::position(snat as u32, port, s.nat_port_min, range),
        );
    }
}

/// What became of the holder of a reverse entry (`sc.holder`, its flow key in `sc.owner`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Its flow is live on this very mapping: the port is in use.
    Live,
    /// Its flow is gone, closed or moved on: the port was given back when that happened.
    Gone,
    /// Its flow timed out without closing: the port is still taken in the bitmap, and the
    /// flow entry is still there.
    Expired,
}

/// The state of the holder of reverse entry `sc.nat` (copied into `sc.holder`). `same_key`:
/// the entry is under this very key (otherwise it shares the slot: a hash collision).
// Not inlined: the flow lookup would otherwise be unrolled into every try, each copy with
// its own stack slots.
#[inline(never)]
pub fn holder_state(pkt: &Packet, sc: &mut Scratch, s: &Settings, now: u64) -> Holder {
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
    let holder_port = h.nat_port;
    let holder_snat = h.snat;
    match flows::get(&sc.owner, s).and_then(|f| Seen::read(&f)) {
        Some(f) => {
            if f.backend() != holder_backend
                || f.nat_port() != holder_port
                || f.snat() != holder_snat
            {
                // Re-pinned: the old port was given back then.
                Holder::Gone
            } else if f.fin() == FIN_BOTH {
                Holder::Gone
            } else if expired(f.fin(), f.last_seen, now, pkt.key.proto, s) {
                Holder::Expired
            } else {
                Holder::Live
            }
        }
        // Its flow is missing: removed or evicted (the port was given back then), or being
        // pinned on another CPU right now (the NAT port is claimed just before the flow
        // entry is written).
        None if (now as u32).wrapping_sub(sc.holder.claimed) > NAT_CLAIM_GRACE_TICKS => {
            Holder::Gone
        }
        None => Holder::Live,
    }
}

/// After replacing an `Expired` holder of another tuple: its flow is over, so its entry goes
/// and its port comes back.
#[inline(always)]
fn retire_expired(sc: &Scratch, family: u8, s: &Settings) {
    flows::remove(&sc.owner, s);
    give_back(
        sc.holder.backend,
        sc.holder.snat,
        sc.holder.nat_port,
        family,
        s,
    );
}

/// Claims a balancer source address and port for a new flow towards backend `b` (id `id`),
/// recording the reverse mapping `sc.reverse`. Returns `(snat << 16) | port` (port in
/// network order), `PORTS_FULL` when every port of the space is taken, or `NO_PORT` when
/// none could be claimed.
// Not inlined: its own frame (the BPF stack is 512 bytes for the whole call chain), walked
// by the verifier apart from the rest of the new-flow path.
#[inline(never)]
pub fn allocate(sc: &mut Scratch, pkt: &Packet, id: u32, s: &Settings, now: u64) -> u32 {
    let Some(b) = crate::backend(id) else {
        return NO_PORT;
    };
    let family = pkt.key.family;
    let Some(sp) = space(id, family, s) else {
        return NO_PORT;
    };
    sc.nat = NatKey {
        backend_addr: copy4(&b.addr),
        snat_addr: [0; 4],
        backend_port: b.port,
        nat_port: 0,
        proto: pkt.key.proto,
        family,
        pad: [0; 2],
    };
    if ports::looks_full(&MapWords, sp) {
        // The caller looks for ports of flows that timed out without closing (`reclaim`,
        // a call of its own: nested under this one the frames would not fit the stack).
        return PORTS_FULL;
    }
    // First choice: the client's own source port (on one of the SNAT addresses, picked by
    // the client's address). A node then sees a client that reuses its port for a new
    // connection on the tuple it saw before, with that client's own increasing sequence
    // numbers and timestamps, as with plain DNAT: a node that closed first holds the tuple in
    // TIME_WAIT for a minute and refuses a SYN from another client whose timestamps are older
    // (PAWS), which is what reusing ports across clients runs into under a storm.
    sc.preferred = NO_PORT;
    let cport = u16::from_be(pkt.key.sport);
    if let (Some(range), Some(n)) = (
        NonZeroU32::new(s.nat_port_range()),
        NonZeroU32::new(s.snat_count(family)),
    ) {
        if cport >= s.nat_port_min && cport <= s.nat_port_max {
            // One address (the common case) needs no hash.
            let snat = if n.get() == 1 {
                0
            } else {
                hash::source_hash(&pkt.key.src, family) % n
            };
            sc.preferred = snat * range.get() + (cport - s.nat_port_min) as u32;
        }
    }
    for _ in 0..CLAIM_TRIES {
        let got = try_port(sc, pkt, id, s, now);
        if got != RETRY {
            return got;
        }
    }
    NO_PORT
}

/// `try_port` took a port it could not use: take the next one.
const RETRY: u32 = u32::MAX - 2;

/// One try of `allocate` (whose `sc.nat` names the backend): takes the space's next free
/// port and claims its reverse entry.
// Not inlined: all of its paths end in one scalar, so the verifier walks each try once
// instead of every combination of the tries' outcomes.
#[inline(never)]
fn try_port(sc: &mut Scratch, pkt: &Packet, id: u32, s: &Settings, now: u64) -> u32 {
    let family = pkt.key.family;
    let Some(range) = NonZeroU32::new(s.nat_port_range()) else {
        return NO_PORT;
    };
    let Some(sp) = space(id, family, s) else {
        return NO_PORT;
    };
    let v = take_port(sp.base, sp.positions, sc.preferred);
    sc.preferred = NO_PORT;
    if v == NO_PORT {
        return NO_PORT;
    }
    let snat = (v / range) as u8;
    let port = ((s.nat_port_min as u32 + v % range) as u16).to_be();
    sc.nat.snat_addr = s.snat_addr(family, snat);
    sc.nat.nat_port = port;
    sc.reverse.snat = snat;
    sc.reverse.nat_port = port;
    let (same_key, observed, way) = match nat::claim(&sc.nat, &sc.reverse, s, &mut sc.holder) {
        nat::Claim::Claimed => return (snat as u32) << 16 | port as u32,
        nat::Claim::Busy => {
            ports::release(&MapWords, sp, v);
            return RETRY;
        }
        nat::Claim::Held {
            same_key,
            observed,
            way,
        } => (same_key, observed, way),
    };
    let holder = holder_state(pkt, sc, s, now);
    if holder != Holder::Live && nat::take_over(&sc.nat, &sc.reverse, s, observed, way) {
        if holder == Holder::Expired && !same_key {
            retire_expired(sc, family, s);
        }
        return (snat as u32) << 16 | port as u32;
    }
    if !same_key {
        // The port is free but its reverse bucket is full of live flows: leave it for later.
        ports::release(&MapWords, sp, v);
    }
    // Same key and live: the port is in use after all (given back twice by racing
    // writers); it stays taken.
    RETRY
}

/// Takes position `preferred` if it is free, else the next free one (`ports::take`). In a
/// frame of its own, so the verifier walks it with scalar arguments.
#[inline(never)]
fn take_port(base: u32, positions: u32, preferred: u32) -> u32 {
    let sp = Space { base, positions };
    if preferred != NO_PORT && ports::take_at(&MapWords, sp, preferred) {
        return preferred;
    }
    ports::take(&MapWords, sp).unwrap_or(NO_PORT)
}

/// A full space: checks `RECLAIM_PROBES` taken positions from the reclaim cursor and gives
/// back those whose flows are over (timed out without FIN or RST). True if any came back.
#[inline(never)]
pub fn reclaim(pkt: &Packet, sc: &mut Scratch, id: u32, s: &Settings, now: u64) -> bool {
    let family = pkt.key.family;
    let Some(range) = NonZeroU32::new(s.nat_port_range()) else {
        return false;
    };
    let Some(sp) = space(id, family, s) else {
        return false;
    };
    let start = ports::reclaim_start(&MapWords, sp, RECLAIM_PROBES);
    let mut freed = false;
    for i in 0..RECLAIM_PROBES {
        let v = start + i;
        if v >= sp.positions || !ports::is_taken(&MapWords, sp, v) {
            continue;
        }
        let snat = (v / range) as u8;
        sc.nat.snat_addr = s.snat_addr(family, snat);
        sc.nat.nat_port = ((s.nat_port_min as u32 + v % range) as u16).to_be();
        if !nat::read(&sc.nat, s, &mut sc.holder) {
            continue;
        }
        let holder = holder_state(pkt, sc, s, now);
        if holder == Holder::Live {
            continue;
        }
        if holder == Holder::Expired {
            flows::remove(&sc.owner, s);
        }
        // The entry goes too: the next claimer of the port finds its slot empty.
        nat::remove(&sc.nat, s);
        ports::release(&MapWords, sp, v);
        freed = true;
    }
    freed
}

#[inline(always)]
fn copy4(a: &[u32; 4]) -> [u32; 4] {
    [a[0], a[1], a[2], a[3]]
}
