//! The forward flow table. IPv4 flows live in `FLOW_SLOTS4`, a set-associative table in an
//! array map (see `proxy_common::FlowSlot4` for the slot protocol): finding a flow is a few
//! inlined array reads, with no kernel hash-map call on the per-packet path. IPv6 flows live
//! in the kernel LRU hash map `FLOWS`. Callers hold a `FlowKey`; these functions pick the
//! table.

use aya_ebpf::bindings::BPF_ANY;
use proxy_common::{
    hash::table_hash, slot_tag, FlowKey, FlowKey4, FlowSlot4, FlowState, Settings, FAMILY_V4,
    FLOW_WAYS, SLOT_BUSY, SLOT_EMPTY,
};

use crate::{
    atomic::{cas_u64, publish_u64},
    maps::{FLOWS, FLOW_SLOTS4},
};

/// A flow found in the table.
pub struct Found {
    pub state: *mut FlowState,
    /// The IPv4 slot's tag and the value it had when the key matched (null for IPv6).
    tag_at: *mut u64,
    tag: u64,
}

impl Found {
    /// Whether the slot still holds the flow: checked after reading the state, so a reader
    /// racing with a writer that replaces the slot drops what it read.
    #[inline(always)]
    pub fn still_ours(&self) -> bool {
        // SAFETY: a map value pointer, valid for this program run.
        self.tag_at.is_null() || unsafe { core::ptr::read_volatile(self.tag_at) } == self.tag
    }
}

/// The slot's tag word (its first field: 8-byte aligned map memory).
#[inline(always)]
fn tag_of(slot: *mut FlowSlot4) -> *mut u64 {
    // SAFETY: only computes the field address of a valid map value pointer.
    unsafe { core::ptr::addr_of_mut!((*slot).tag) }
}

/// Whether a slot's key is the IPv4 flow `b` (compared in place: no key copy on the stack).
#[inline(always)]
fn same_key(a: &FlowKey4, b: &FlowKey) -> bool {
    (a.src ^ b.src[0])
        | (a.dst ^ b.dst[0])
        | (a.sport ^ b.sport) as u32
        | (a.dport ^ b.dport) as u32
        == 0
        && a.proto == b.proto
}

/// First slot index of the IPv4 flow's bucket and the tag its slot carries.
#[inline(always)]
fn bucket(k: &FlowKey, s: &Settings) -> (u32, u64) {
    let h = table_hash(k.src[0], k.dst[0], k.sport, k.dport, k.proto, s.table_seed);
    ((h & s.flow_bucket_mask) * FLOW_WAYS, slot_tag(h))
}

#[inline(always)]
fn get4(k: &FlowKey, s: &Settings) -> Option<Found> {
    let (base, tag) = bucket(k, s);
    for i in 0..FLOW_WAYS {
        let slot = FLOW_SLOTS4.get_ptr_mut(base + i)?;
        // SAFETY: map value pointer valid for this run; plain data.
        let sl = unsafe { &mut *slot };
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(&sl.tag) } == tag && same_key(&sl.key, k) {
            return Some(Found {
                state: &mut sl.state,
                tag_at: &mut sl.tag,
                tag,
            });
        }
    }
    None
}

/// The flow's entry, writable in place (check `Found::still_ours` after reading it).
#[inline(always)]
pub fn get(k: &FlowKey, s: &Settings) -> Option<Found> {
    if k.family == FAMILY_V4 {
        get4(k, s)
    } else {
        FLOWS.get_ptr_mut(k).map(|state| Found {
            state,
            tag_at: core::ptr::null_mut(),
            tag: 0,
        })
    }
}

/// Inserts or replaces the flow's entry. An IPv4 flow takes its key's slot, else an empty
/// one, else the bucket's least recently seen: then the evicted flow's state word (its first
/// 8 bytes: backend, SNAT index, NAT port, FIN bits) is returned, so its port can be given
/// back; 0 when no other flow was evicted (a live flow's NAT port is never 0). Err when
/// racing writers kept every slot busy.
#[inline(always)]
pub fn insert(k: &FlowKey, state: &FlowState, s: &Settings) -> Result<u64, ()> {
    if k.family != FAMILY_V4 {
        // The kernel's LRU evicts without telling: such ports come back through `reclaim`.
        return FLOWS
            .insert(k, state, BPF_ANY as u64)
            .map(|_| 0)
            .map_err(|_| ());
    }
    let (base, tag) = bucket(k, s);
    // Two passes: a writer on another CPU may take the chosen slot between choice and claim.
    for _ in 0..2 {
        let mut victim = FLOW_WAYS;
        let mut victim_tag = SLOT_BUSY;
        let mut oldest = u64::MAX;
        let mut same = false;
        for i in 0..FLOW_WAYS {
            let Some(slot) = FLOW_SLOTS4.get_ptr_mut(base + i) else {
                return Err(());
            };
            // SAFETY: map value pointer valid for this run; plain data.
            let sl = unsafe { &*slot };
            // SAFETY: as above.
            let t = unsafe { core::ptr::read_volatile(&sl.tag) };
            if t == tag && same_key(&sl.key, k) {
                victim = i;
                victim_tag = t;
                same = true;
                break;
            }
            let age = match t {
                SLOT_BUSY => continue,
                SLOT_EMPTY => 0,
                _ => sl.state.last_seen.saturating_add(1),
            };
            if age < oldest {
                oldest = age;
                victim = i;
                victim_tag = t;
            }
        }
        if victim == FLOW_WAYS {
            continue;
        }
        let Some(slot) = FLOW_SLOTS4.get_ptr_mut(base + victim) else {
            return Err(());
        };
        // SAFETY: map memory, aligned (see `tag_of`).
        if !unsafe { cas_u64(tag_of(slot), victim_tag, SLOT_BUSY) } {
            continue;
        }
        // The slot is ours now: what it held stays put until overwritten below. Read
        // whatever the case and masked (a conditional read leaves LLVM free to use an
        // undefined register the verifier refuses).
        // SAFETY: the slot is ours; FlowState is 8-byte aligned and starts with the word.
        let old =
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*slot).state) as *const u64) };
        let evicted = if same || victim_tag == SLOT_EMPTY {
            0
        } else {
            old
        };
        // SAFETY: the slot is ours until the tag is published.
        unsafe {
            (*slot).key = FlowKey4::of(k);
            (*slot).state = *state;
        }
        // Publish: a full barrier, so readers that see the tag see key and state.
        // SAFETY: as above.
        unsafe { publish_u64(tag_of(slot), tag) };
        return Ok(evicted);
    }
    Err(())
}

/// Removes the flow (every IPv4 slot holding its key: two CPUs pinning the same new flow at
/// once may both have inserted it).
#[inline(always)]
pub fn remove(k: &FlowKey, s: &Settings) {
    if k.family != FAMILY_V4 {
        let _ = FLOWS.remove(k);
        return;
    }
    let (base, tag) = bucket(k, s);
    for i in 0..FLOW_WAYS {
        let Some(slot) = FLOW_SLOTS4.get_ptr_mut(base + i) else {
            return;
        };
        // SAFETY: map value pointer valid for this run; plain data.
        if unsafe { core::ptr::read_volatile(&(*slot).tag) } == tag
            && same_key(unsafe { &(*slot).key }, k)
        {
            // SAFETY: as above. Fails harmlessly if a writer took the slot meanwhile.
            unsafe { cas_u64(tag_of(slot), tag, SLOT_EMPTY) };
        }
    }
}
