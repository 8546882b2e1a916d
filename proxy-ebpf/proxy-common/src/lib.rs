//! Types and pure helpers shared by the XDP program (`proxy-ebpf`) and userspace (`proxy`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so both sides agree on the
//! layout byte for byte. Addresses are kept as the raw 32-bit words read from the packet
//! (network byte order in memory); IPv4 uses word 0 and leaves the others zero.
#![no_std]

pub mod csum;
pub mod hash;
pub mod ports;

/// Map names, shared so the loader and the program cannot drift apart.
pub mod map_names {
    pub const BACKENDS: &str = "BACKENDS";
    pub const RING: &str = "RING";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_SLOTS4: &str = "FLOW_SLOTS4";
    pub const NAT_SLOTS4: &str = "NAT_SLOTS4";
    pub const NAT_REVERSE: &str = "NAT_REVERSE";
    pub const SETTINGS: &str = "SETTINGS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const REASONS: &str = "REASONS";
    pub const HOPS_BY_BACKEND: &str = "HOPS_BY_BACKEND";
    pub const HOPS_BY_CLIENT: &str = "HOPS_BY_CLIENT";
    pub const NAT_PORTS: &str = "NAT_PORTS";
    pub const VIP_KEYS: &str = "VIP_KEYS";
    pub const VIP_METAS: &str = "VIP_METAS";
    pub const VIP_INDEX: &str = "VIP_INDEX";
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "proxy_xdp";
/// A program that only returns XDP_PASS: the benchmark's baseline.
pub const BASELINE_PROGRAM_NAME: &str = "xdp_pass_baseline";
/// Benchmark-only program: one `FLOWS4` lookup, the floor of any kernel-hash-map flow table.
pub const LOOKUP_FLOOR_PROGRAM_NAME: &str = "xdp_lookup_floor";

/// Most VIPs (address, port, protocol) one balancer serves; the ring map holds one ring each.
pub const MAX_VIPS: u32 = 64;
/// Most backends over all pools; a backend id indexes the `BACKENDS` array.
pub const MAX_BACKENDS: u32 = 4096;
/// Default number of tracked flows (forward and reverse tables each).
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Maglev ring size used unless configured otherwise (prime).
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// A ring slot with no backend (all backends drained or removed).
pub const EMPTY_SLOT: u32 = u32::MAX;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A VIP's identity, what a packet is addressed to (`VIP_KEYS`, found via `VIP_INDEX`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    /// Network byte order, as in the packet.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// The VIP hashes only the client address, so a client keeps its backend across connections.
/// Slots of `VIP_INDEX`, the open-addressing index from a VIP key to its number: a power of
/// two, four per possible VIP, so probe sequences stay short.
pub const VIP_INDEX_SLOTS: u32 = 4 * MAX_VIPS;
/// How many slots from its hash a VIP's index entry may sit (linear probing).
pub const VIP_INDEX_PROBES: u32 = 8;
/// An index slot never used: a lookup stops here.
pub const VIP_INDEX_EMPTY: u32 = 0;
/// An index slot whose VIP was removed: a lookup goes on past it, an insert may reuse it.
pub const VIP_INDEX_REMOVED: u32 = u32::MAX;

/// The `VIP_INDEX` slot of probe `i` for a VIP key. Index entries hold `vip_num + 1`.
#[inline(always)]
pub fn vip_index_slot(key: &VipKey, i: u32) -> u32 {
    (hash::vip_hash(key).wrapping_add(i)) & (VIP_INDEX_SLOTS - 1)
}

pub const VIP_HASH_SOURCE_ONLY: u32 = 1 << 0;
/// The VIP is served by the userspace terminator: XDP only admits and passes it up.
pub const VIP_PASS_TO_STACK: u32 = 1 << 1;
/// The listener was removed and drains: its flows finish, new flows are not taken (their
/// packets pass to the stack, as for an address that is no VIP).
pub const VIP_DRAINING: u32 = 1 << 2;

/// A VIP's ring and flags (`VIP_METAS`, by VIP number).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index of the VIP's rings in `RING` and of its counters in `COUNTERS`.
    pub vip_num: u32,
    pub flags: u32,
    /// Which of the VIP's two ring copies packets use (0 or 1). The control plane updates
    /// the other copy, then flips this in one map update: no packet sees a half-written ring.
    pub active_ring: u32,
    pub pad: u32,
}

/// `RING` index of slot 0 of copy `copy` of VIP `vip_num`'s ring, in rings (multiply by the
/// ring size for slots).
pub const fn ring_index(vip_num: u32, copy: u32) -> u32 {
    vip_num * 2 + (copy & 1)
}

/// The backend exists (a zeroed entry is an unused or removed slot).
pub const BACKEND_PRESENT: u8 = 1 << 0;

/// Value of the `BACKENDS` array, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub flags: u8,
}

/// Key of the forward flow table: the client's 5-tuple as it arrives at the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// Key of the IPv4 flow table (`FLOWS4`): the client 5-tuple in 16 bytes. The kernel hashes
/// the whole key on every lookup, and most traffic is IPv4, so IPv4 flows do not pay for
/// the 40 bytes of `FlowKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: u32,
    pub dst: u32,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl FlowKey4 {
    /// The IPv4 key of an IPv4 `FlowKey`.
    #[inline(always)]
    pub const fn of(k: &FlowKey) -> FlowKey4 {
        FlowKey4 {
            src: k.src[0],
            dst: k.dst[0],
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            pad: [0; 3],
        }
    }
}

/// One slot of the IPv4 flow table (`FLOW_SLOTS4`): a set-associative table in an array
/// map, `FLOW_WAYS` slots per bucket. The data plane finds a flow with a few inlined array
/// reads instead of a kernel hash-map call (the call alone costs more than twice an
/// XDP_PASS program).
///
/// `tag` says what the slot holds: `SLOT_EMPTY`, `SLOT_BUSY` while a writer fills it, or
/// `slot_tag(hash)` of the key it holds. Writers claim a slot by compare-and-swap of the tag
/// to `SLOT_BUSY`, write key and state, then publish the tag; readers compare the tag, the
/// key, read the state and check the tag again, so they never use a half-written slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot4 {
    pub tag: u64,
    pub key: FlowKey4,
    pub state: FlowState,
}

pub const SLOT_EMPTY: u64 = 0;
pub const SLOT_BUSY: u64 = u64::MAX;
/// Slots per bucket of the IPv4 flow table. When all are taken, a new flow replaces the
/// least recently seen (LRU within the bucket).
pub const FLOW_WAYS: u32 = 4;

/// The tag of a slot holding a key with this bucket hash (never empty, never busy).
pub const fn slot_tag(hash: u32) -> u64 {
    ((hash as u64) << 1) | 1
}

/// Slots of the IPv4 flow table for a flow limit: the next power of two, at least 4
/// buckets, at most 2^27.
pub const fn flow_slots4(max_flows: u32) -> u32 {
    let n = if max_flows < 4 * FLOW_WAYS {
        4 * FLOW_WAYS
    } else if max_flows > 1 << 27 {
        1 << 27
    } else {
        max_flows
    };
    n.next_power_of_two()
}

/// Slots of the IPv4 reverse NAT table: twice the flow table's, in buckets of `NAT_WAYS`.
/// Live NAT entries never outnumber live flows, so at most half the slots are live; a port
/// the allocator hands out (`ports`) is unusable only while all the slots of its bucket hold
/// live entries of other tuples (the allocator then takes the next port).
pub const fn nat_slots4(flow_slots: u32) -> u32 {
    2 * flow_slots
}

/// The client sent a FIN.
pub const FLOW_FIN_CLIENT: u8 = 1 << 0;
/// The backend sent a FIN.
pub const FLOW_FIN_BACKEND: u8 = 1 << 1;

/// Value of the forward flow table: where the flow is pinned and how it is translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Backend id (< `MAX_BACKENDS`).
    pub backend: u16,
    /// Which of the family's SNAT addresses the flow uses (index into `Settings::snat_v4`
    /// or `snat_v6`).
    pub snat: u8,
    pub pad: u8,
    /// Source port on the balancer side (network byte order).
    pub nat_port: u16,
    pub fin: u8,
    /// The VIP the flow belongs to (`VipMeta::vip_num`, < `MAX_VIPS`): a packet of a known
    /// flow is checked against `VIP_KEYS` instead of looking its VIP up again.
    pub vip_num: u8,
    /// Kernel jiffies (`bpf_jiffies64`) of the last packet, refreshed at most once a second.
    pub last_seen: u64,
}

/// Key of the reverse NAT table: a reply as it arrives from a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub backend_addr: [u32; 4],
    pub snat_addr: [u32; 4],
    pub backend_port: u16,
    pub nat_port: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// Key of the IPv4 reverse NAT table (`NAT_SLOTS4`): a reply as it arrives from a backend,
/// in 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey4 {
    pub backend_addr: u32,
    pub snat_addr: u32,
    pub backend_port: u16,
    pub nat_port: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl NatKey4 {
    /// The IPv4 key of an IPv4 `NatKey`.
    #[inline(always)]
    pub const fn of(k: &NatKey) -> NatKey4 {
        NatKey4 {
            backend_addr: k.backend_addr[0],
            snat_addr: k.snat_addr[0],
            backend_port: k.backend_port,
            nat_port: k.nat_port,
            proto: k.proto,
            pad: [0; 3],
        }
    }
}

/// Slots per bucket of the IPv4 reverse NAT table.
pub const NAT_WAYS: u32 = 4;

/// One slot of the IPv4 reverse NAT table: set-associative, `NAT_WAYS` slots per bucket
/// (claiming a NAT port is one compare-and-swap on a slot's tag, atomic against other
/// CPUs), same slot protocol as `FlowSlot4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatSlot4 {
    pub tag: u64,
    pub key: NatKey4,
    pub state: NatState,
}

/// Value of the reverse NAT table: how to translate a reply back to the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatState {
    pub client_addr: [u32; 4],
    pub vip_addr: [u32; 4],
    pub client_port: u16,
    pub vip_port: u16,
    pub backend: u32,
    pub vip_num: u8,
    /// The SNAT address index and NAT port (network order) of the entry's own key, so a
    /// writer that replaces a stale entry of another key can give that key's port back.
    pub snat: u8,
    pub nat_port: u16,
    /// Jiffies (low 32 bits) when the entry was claimed. A new flow claims its NAT port a
    /// moment before its flow entry exists; a holder whose flow is missing counts as stale
    /// only once it is older than that moment (`NAT_CLAIM_GRACE_TICKS`).
    pub claimed: u32,
}

/// See `NatState::claimed`.
pub const NAT_CLAIM_GRACE_TICKS: u32 = 2;

/// NAT ports taken by a backend: `Settings::nat_space_stride` u64 words per backend id (see
/// `ports`).
pub const NAT_SPACES: u32 = MAX_BACKENDS;

/// The single entry of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Slots per VIP ring (prime); ring of VIP n starts at n * ring_size.
    pub ring_size: u32,
    pub flags: u32,
    /// A flow's `last_seen` is rewritten at most this often (ticks), so the entries of busy
    /// flows stay mostly read-only across CPUs.
    pub last_seen_refresh_ticks: u32,
    /// How long a cached next hop is used before the FIB is asked again, in ticks. 0 asks
    /// the FIB for every packet.
    pub next_hop_ttl_ticks: u32,
    /// Source addresses for full NAT towards IPv4 backends (raw words); the first
    /// `snat_v4_count` are used. Each one adds a port range to every backend's port space.
    pub snat_v4: [u32; ports::MAX_SNAT_ADDRS],
    /// The same towards IPv6 backends.
    pub snat_v6: [[u32; 4]; ports::MAX_SNAT_ADDRS],
    pub snat_v4_count: u8,
    pub snat_v6_count: u8,
    pub pad: u16,
    /// NAT source port range, host byte order, inclusive.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Timeouts in kernel ticks (jiffies): the data plane reads the clock with
    /// `bpf_jiffies64`, which the verifier inlines into one load. Userspace converts from
    /// seconds with the tick length the kernel reports (`ticks_from_ns`).
    pub tcp_idle_timeout_ticks: u64,
    pub udp_idle_timeout_ticks: u64,
    /// How long a flow's entry lingers after FIN both ways, so the last ACKs still find it.
    /// Its NAT port is given back at the second FIN already (`ports`).
    pub closing_timeout_ticks: u64,
    /// Buckets of the IPv4 flow table minus one (a power of two minus one). Written by the
    /// loader from the table it created, whatever the caller of `set_settings` passes.
    pub flow_bucket_mask: u32,
    /// Secret seed of the IPv4 flow table's bucket hash, drawn once when the table is
    /// created and kept with the pinned maps.
    pub table_seed: u32,
    /// u64 words per backend in `NAT_PORTS` (`ports::nat_space_stride`). Written by the
    /// loader from the map it created.
    pub nat_space_stride: u32,
    pub pad2: u32,
}

impl Settings {
    /// The NAT address `i` of a family (`i` is taken modulo `MAX_SNAT_ADDRS`).
    #[inline(always)]
    pub fn snat_addr(&self, family: u8, i: u8) -> [u32; 4] {
        let i = i as usize & (ports::MAX_SNAT_ADDRS - 1);
        if family == FAMILY_V4 {
            [self.snat_v4[i], 0, 0, 0]
        } else {
            let a = &self.snat_v6[i];
            [a[0], a[1], a[2], a[3]]
        }
    }

    /// How many NAT addresses a family has.
    #[inline(always)]
    pub fn snat_count(&self, family: u8) -> u32 {
        if family == FAMILY_V4 {
            self.snat_v4_count as u32
        } else {
            self.snat_v6_count as u32
        }
    }

    /// Ports per NAT address (0 for an empty range).
    #[inline(always)]
    pub fn nat_port_range(&self) -> u32 {
        ports::nat_positions(self.nat_port_min, self.nat_port_max, 1)
    }

    /// Positions of a backend's port space for a family (`ports`).
    #[inline(always)]
    pub fn nat_positions(&self, family: u8) -> u32 {
        ports::nat_positions(
            self.nat_port_min,
            self.nat_port_max,
            self.snat_count(family),
        )
    }

    /// Sets a single IPv4 NAT address (tests and benchmarks).
    pub fn with_snat_v4(mut self, addr: u32) -> Self {
        self.snat_v4 = [addr, 0, 0, 0];
        self.snat_v4_count = 1;
        self
    }

    /// Sets a single IPv6 NAT address (tests and benchmarks).
    pub fn with_snat_v6(mut self, addr: [u32; 4]) -> Self {
        self.snat_v6 = [addr, [0; 4], [0; 4], [0; 4]];
        self.snat_v6_count = 1;
        self
    }
}

/// `ns` rounded up to whole ticks of `tick_ns` (a timeout never shrinks by rounding).
pub const fn ticks_from_ns(ns: u64, tick_ns: u64) -> u64 {
    if tick_ns == 0 {
        return ns;
    }
    ns.div_ceil(tick_ns)
}

/// A cached FIB answer: where packets to one destination leave and with which MACs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
    /// Re-asked from the FIB at this jiffy: neighbour changes show within
    /// `Settings::next_hop_ttl_ticks`.
    pub expires: u64,
}

/// How long a cached next hop is used before the FIB is asked again.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;
/// How often at most a busy flow's `last_seen` is rewritten.
pub const LAST_SEEN_REFRESH_NS: u64 = 1_000_000_000;
/// Client destinations whose next hop is cached.
pub const CLIENT_HOP_ENTRIES: u32 = 65_536;

/// Key of the client next-hop cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HopKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub pad: [u8; 3],
}

/// Per-CPU counters for one VIP or one backend (slot in the `COUNTERS` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Flow entries created.
    pub new_flows: u64,
    /// Non-SYN TCP packets that found no flow entry (state lost: eviction, restart, timeout).
    pub lru_misses: u64,
}

/// `COUNTERS` index of backend `id`; VIPs use `0..MAX_VIPS`.
pub const fn backend_counter_index(id: u32) -> u32 {
    MAX_VIPS + id
}

/// Size of the `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = MAX_VIPS + MAX_BACKENDS;

/// Why a packet was passed or dropped; index into the per-CPU `REASONS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    PassNotIp = 0,
    PassFragment,
    PassOtherProto,
    PassNotVip,
    PassTerminator,
    PassNoRoute,
    DropMalformed,
    DropNoBackend,
    DropNatPortsExhausted,
    DropFamilyMismatch,
    DropRedirectFailed,
    Forwarded,
    ReplyTranslated,
}

impl Reason {
    pub const COUNT: u32 = 13;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassFragment,
        Reason::PassOtherProto,
        Reason::PassNotVip,
        Reason::PassTerminator,
        Reason::PassNoRoute,
        Reason::DropMalformed,
        Reason::DropNoBackend,
        Reason::DropNatPortsExhausted,
        Reason::DropFamilyMismatch,
        Reason::DropRedirectFailed,
        Reason::Forwarded,
        Reason::ReplyTranslated,
    ];

    /// The reason with this discriminant (its `REASONS` index), if there is one. A `match`,
    /// not an index into `ALL`: LLVM turns it into one range check, where a table would be
    /// a `.rodata` load in the BPF program.
    pub const fn from_u32(v: u32) -> Option<Reason> {
        let r = match v {
            0 => Reason::PassNotIp,
            1 => Reason::PassFragment,
            2 => Reason::PassOtherProto,
            3 => Reason::PassNotVip,
            4 => Reason::PassTerminator,
            5 => Reason::PassNoRoute,
            6 => Reason::DropMalformed,
            7 => Reason::DropNoBackend,
            8 => Reason::DropNatPortsExhausted,
            9 => Reason::DropFamilyMismatch,
            10 => Reason::DropRedirectFailed,
            11 => Reason::Forwarded,
            12 => Reason::ReplyTranslated,
            _ => return None,
        };
        Some(r)
    }

    /// Stable metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassFragment => "pass_fragment",
            Reason::PassOtherProto => "pass_other_proto",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassTerminator => "pass_terminator",
            Reason::PassNoRoute => "pass_no_route",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropNatPortsExhausted => "drop_nat_ports_exhausted",
            Reason::DropFamilyMismatch => "drop_family_mismatch",
            Reason::DropRedirectFailed => "drop_redirect_failed",
            Reason::Forwarded => "forwarded",
            Reason::ReplyTranslated => "reply_translated",
        }
    }
}

/// Raw address words for an IPv4 address given as octets.
pub const fn v4_words(octets: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Raw address words for an IPv6 address given as octets.
pub const fn v6_words(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are repr(C), Copy, contain only integers and have no implicit padding
    // (checked by the size assertions below).
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VipMeta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowSlot4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatSlot4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NextHop {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HopKey {}
}

// No implicit padding anywhere: the kernel hashes keys byte by byte.
const _: () = {
    assert!(core::mem::size_of::<VipKey>() == 20);
    assert!(core::mem::size_of::<VipMeta>() == 16);
    assert!(core::mem::size_of::<Backend>() == 20);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowState>() == 16);
    assert!(core::mem::size_of::<NatKey>() == 40);
    assert!(core::mem::size_of::<NatState>() == 48);
    assert!(core::mem::size_of::<Settings>() == 144);
    assert!(core::mem::size_of::<FlowKey4>() == 16);
    assert!(core::mem::size_of::<FlowSlot4>() == 40);
    assert!(core::mem::size_of::<NatKey4>() == 16);
    assert!(core::mem::size_of::<NatSlot4>() == 72);
    // The data plane reads backend, SNAT index, NAT port, FIN bits and VIP number as one
    // word.
    assert!(core::mem::align_of::<FlowState>() == 8);
    assert!(core::mem::offset_of!(FlowState, snat) == 2);
    assert!(core::mem::offset_of!(FlowState, nat_port) == 4);
    assert!(core::mem::offset_of!(FlowState, fin) == 6);
    assert!(core::mem::offset_of!(FlowState, vip_num) == 7);
    assert!(core::mem::size_of::<Counters>() == 32);
    assert!(core::mem::size_of::<NextHop>() == 24);
    assert!(core::mem::size_of::<HopKey>() == 20);
};

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn reason_from_u32_inverts_the_discriminant() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "ALL is in discriminant order");
            assert_eq!(Reason::from_u32(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_u32(Reason::COUNT), None);
        assert_eq!(Reason::from_u32(u32::MAX), None);
    }
}
