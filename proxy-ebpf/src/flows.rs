//! The forward flow table. IPv4 flows live in `FLOW_SLOTS4`, a set-associative table in an
//! array map (see `proxy_common::FlowSlot4` for the slot protocol): finding a flow is a few
//! inlined array reads, with no kernel hash-map call on the per-packet path. IPv6 flows live
//! in the kernel LRU hash map `FLOWS`. Callers hold a `FlowKey`; these functions pick the
//! table.
//!
//! Memory ordering. Other CPUs write the slots while they are read, so readers never hold a
//! reference to a slot: they read its fields through raw pointers, with volatile loads, which
//! the compiler keeps in program order. A reader checks a slot like a seqlock (tag, then key
//! and state, then the tag again: `Found::still_ours`); writers claim and publish the tag
//! with BPF atomics that every JIT makes fully ordered (`atomic`). The reader side has no
//! barrier: BPF has no standalone fence instruction, its ordered instructions are atomic
//! read-modify-writes (two per lookup would make every CPU write the same cache lines on the
//! fast path) and the load-acquire of cpu v4 (Linux 6.15+; this program is built for v3).
//! The JIT turns BPF loads into plain CPU loads, so the re-check is sound where the CPU keeps
//! loads in order: x86-64 (TSO). On a weakly ordered CPU (arm64 and others) loads may be
//! satisfied out of order and a reader could pair a tag with another flow's state. The data
//! plane therefore targets x86-64 only; the loader refuses to build elsewhere
//! (`proxy/src/ebpf/mod.rs`).

use core::ptr::{addr_of, addr_of_mut, read_volatile};

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
        // SAFETY: a map value pointer, valid for this program run; 8-byte aligned.
        self.tag_at.is_null() || unsafe { read_volatile(self.tag_at) } == self.tag
    }
}

/// The slot's tag word (its first field: 8-byte aligned map memory).
#[inline(always)]
fn tag_of(slot: *mut FlowSlot4) -> *mut u64 {
    // SAFETY: only computes the field address of a valid map value pointer.
    unsafe { addr_of_mut!((*slot).tag) }
}

/// The slot's state (its flow's entry).
#[inline(always)]
fn state_of(slot: *mut FlowSlot4) -> *mut FlowState {
    // SAFETY: only computes the field address of a valid map value pointer.
    unsafe { addr_of_mut!((*slot).state) }
}

/// The slot's tag as it is now.
///
/// # Safety
/// `slot` must be a map value pointer valid for this program run.
#[inline(always)]
unsafe fn tag_now(slot: *mut FlowSlot4) -> u64 {
    // SAFETY: the caller's contract; the tag is 8-byte aligned map memory.
    unsafe { read_volatile(tag_of(slot)) }
}

/// Whether a slot's key is the IPv4 flow `b`, read field by field in place (no key copy on
/// the stack, no reference to memory other CPUs write).
///
/// # Safety
/// `slot` must be a map value pointer valid for this program run.
#[inline(always)]
unsafe fn same_key(slot: *mut FlowSlot4, b: &FlowKey) -> bool {
    // SAFETY: the caller's contract; field addresses of an aligned struct.
    let (src, dst, sport, dport) = unsafe {
        let a = addr_of!((*slot).key);
        (
            read_volatile(addr_of!((*a).src)),
            read_volatile(addr_of!((*a).dst)),
            read_volatile(addr_of!((*a).sport)),
            read_volatile(addr_of!((*a).dport)),
        )
    };
    (src ^ b.src[0]) | (dst ^ b.dst[0]) | (sport ^ b.sport) as u32 | (dport ^ b.dport) as u32 == 0
        // SAFETY: as above.
        && unsafe { read_volatile(addr_of!((*slot).key.proto)) } == b.proto
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
        // SAFETY: map value pointer valid for this run.
        if unsafe { tag_now(slot) } == tag && unsafe { same_key(slot, k) } {
            return Some(Found {
                state: state_of(slot),
                tag_at: tag_of(slot),
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
            // SAFETY: map value pointer valid for this run.
            let t = unsafe { tag_now(slot) };
            // SAFETY: as above.
            if t == tag && unsafe { same_key(slot, k) } {
                victim = i;
                victim_tag = t;
                same = true;
                break;
            }
            let age = match t {
                SLOT_BUSY => continue,
                SLOT_EMPTY => 0,
                // SAFETY: as above; a racing writer only skews the choice of victim.
                _ => unsafe { read_volatile(addr_of!((*slot).state.last_seen)) }.saturating_add(1),
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
        let old = unsafe { read_volatile(state_of(slot) as *const u64) };
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
        // SAFETY: map value pointer valid for this run.
        if unsafe { tag_now(slot) } == tag && unsafe { same_key(slot, k) } {
            // SAFETY: as above. Fails harmlessly if a writer took the slot meanwhile.
            unsafe { cas_u64(tag_of(slot), tag, SLOT_EMPTY) };
        }
    }
}
