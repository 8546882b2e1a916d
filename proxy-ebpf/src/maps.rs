//! Every map the data plane uses, with what it holds. Names match `proxy_common::map_names`;
//! the loader pins them by name under bpffs so a userspace restart keeps the flow tables.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use proxy_common::{
    Backend, Counters, FlowKey, FlowSlot4, FlowState, HopKey, NatKey, NatSlot4, NatState, NextHop,
    Settings, VipKey, VipMeta, CLIENT_HOP_ENTRIES, COUNTER_SLOTS, DEFAULT_MAX_FLOWS, MAX_BACKENDS,
    MAX_VIPS, VIP_INDEX_SLOTS,
};

/// VIP key -> VIP number, an open-addressing index (linear probing, `vip_index_slot`):
/// entries are `vip_num + 1`, `VIP_INDEX_EMPTY` or `VIP_INDEX_REMOVED`. Written by the
/// control plane only; finding a VIP is a few inlined array reads, not a hash-map call.
#[map(name = "VIP_INDEX")]
pub static VIP_INDEX: Array<u32> = Array::pinned(VIP_INDEX_SLOTS, 0);

/// VIP number -> its key, all zero when the number is unused. The index lookup confirms its
/// candidates here, and a packet of a known flow is checked against this (its VIP removed,
/// or the number reused by another VIP, invalidates the flow).
#[map(name = "VIP_KEYS")]
pub static VIP_KEYS: Array<VipKey> = Array::pinned(MAX_VIPS, 0);

/// VIP number -> ring copy in use and flags.
#[map(name = "VIP_METAS")]
pub static VIP_METAS: Array<VipMeta> = Array::pinned(MAX_VIPS, 0);

/// Backend id -> address and port. A zeroed entry is a removed backend.
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);

/// Maglev rings, two copies per VIP, back to back: slot s of copy c of VIP n is at
/// (2n + c) * ring_size + s. The loader sizes it to 2 * MAX_VIPS * ring_size; only changed
/// slots are ever written, to the copy packets are not using.
#[map(name = "RING")]
pub static RING: Array<u32> = Array::pinned(1, 0);

/// IPv4 client 5-tuple -> pinned backend and NAT port: the set-associative table of
/// `proxy_common::FlowSlot4`, shared by all CPUs (replies and retransmits may arrive on any
/// CPU). The loader sizes it (a power of two). Use through `flows`.
#[map(name = "FLOW_SLOTS4")]
pub static FLOW_SLOTS4: Array<FlowSlot4> = Array::pinned(1, 0);

/// The same for IPv6 flows, in a kernel LRU hash map (per-CPU LRU lists, so eviction takes
/// no global lock). Use through `flows`.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::pinned(DEFAULT_MAX_FLOWS, BPF_F_NO_COMMON_LRU);

/// IPv4 reply 5-tuple (backend -> balancer NAT address and port) -> the client it belongs
/// to: the direct-mapped table of `proxy_common::NatSlot4`, twice as many slots as
/// `FLOW_SLOTS4` (`nat_slots4`). The loader sizes it. Use through `nat`.
#[map(name = "NAT_SLOTS4")]
pub static NAT_SLOTS4: Array<NatSlot4> = Array::pinned(1, 0);

/// The same for IPv6 replies, in a kernel LRU hash map. Use through `nat`.
#[map(name = "NAT_REVERSE")]
pub static NAT_REVERSE: LruHashMap<NatKey, NatState> =
    LruHashMap::pinned(DEFAULT_MAX_FLOWS, BPF_F_NO_COMMON_LRU);

/// Which NAT ports each backend's flows hold: one port space of `Settings::nat_space_stride`
/// words per backend id (`proxy_common::ports`). The loader sizes it. Use through
/// `nat_ports`.
#[map(name = "NAT_PORTS")]
pub static NAT_PORTS: Array<u64> = Array::pinned(1, 0);

/// Entry 0: ring size, NAT addresses and port range, timeouts.
#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Per-CPU counters: VIPs at 0..MAX_VIPS, backends after them. Raw numbers; rates are the
/// reader's job.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Per-CPU packet counts by `proxy_common::Reason`.
#[map(name = "REASONS")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(proxy_common::Reason::COUNT, 0);

/// Next hop towards backend id n, cached from the FIB (a FIB lookup per packet would cost
/// more than the rest of the fast path together).
#[map(name = "HOPS_BY_BACKEND")]
pub static HOPS_BY_BACKEND: Array<NextHop> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Next hop towards a client address (the reply path), cached from the FIB.
#[map(name = "HOPS_BY_CLIENT")]
pub static HOPS_BY_CLIENT: LruHashMap<HopKey, NextHop> =
    LruHashMap::with_max_entries(CLIENT_HOP_ENTRIES, BPF_F_NO_COMMON_LRU);
