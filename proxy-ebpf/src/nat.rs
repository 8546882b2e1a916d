//! The reverse NAT table: reply 5-tuple (backend -> balancer NAT address and port) -> the
//! client it belongs to. IPv4 entries live in `NAT_SLOTS4`, a set-associative table in an
//! array map (`NAT_WAYS` slots per bucket, see `proxy_common::NatSlot4`): claiming a port is
//! one compare-and-swap and a reply finds its client with inlined array reads. IPv6 entries live in the kernel LRU hash map
//! `NAT_REVERSE`. Callers hold a `NatKey`; these functions pick the table.
//!
//! Slots are read like `flows` reads its slots (volatile field reads through raw pointers,
//! tag re-checked after the state is copied), with the same memory-ordering argument and the
//! same x86-64-only target (see `flows`).

use core::ptr::{addr_of, addr_of_mut, read_volatile};

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use proxy_common::{
    hash::table_hash, nat_slots4, slot_tag, NatKey, NatKey4, NatSlot4, NatState, Settings,
    FAMILY_V4, FLOW_WAYS, NAT_WAYS, SLOT_BUSY, SLOT_EMPTY,
};

use crate::{
    atomic::{cas_u64, publish_u64},
    maps::{NAT_REVERSE, NAT_SLOTS4},
};

/// First slot of the IPv4 key's bucket and the tag a slot carries when it holds the key.
#[inline(always)]
fn bucket_of(k: &NatKey, s: &Settings) -> (u32, u64) {
    let h = table_hash(
        k.backend_addr[0],
        k.snat_addr[0],
        k.backend_port,
        k.nat_port,
        k.proto,
        s.table_seed,
    );
    let buckets = nat_slots4((s.flow_bucket_mask + 1) * FLOW_WAYS) / NAT_WAYS;
    ((h & (buckets - 1)) * NAT_WAYS, slot_tag(h))
}

/// The slot holding the IPv4 key, and its tag.
#[inline(always)]
fn find(k: &NatKey, s: &Settings) -> Option<(*mut NatSlot4, u64)> {
    let (base, tag) = bucket_of(k, s);
    for i in 0..NAT_WAYS {
        let slot = NAT_SLOTS4.get_ptr_mut(base + i)?;
        // SAFETY: map value pointer valid for this run.
        if unsafe { tag_now(slot) } == tag && unsafe { same_key(slot, k) } {
            return Some((slot, tag));
        }
    }
    None
}

#[inline(always)]
fn tag_of(slot: *mut NatSlot4) -> *mut u64 {
    // SAFETY: only computes the field address of a valid map value pointer.
    unsafe { addr_of_mut!((*slot).tag) }
}

/// The slot's tag as it is now.
///
/// # Safety
/// `slot` must be a map value pointer valid for this program run.
#[inline(always)]
unsafe fn tag_now(slot: *mut NatSlot4) -> u64 {
    // SAFETY: the caller's contract; the tag is 8-byte aligned map memory.
    unsafe { read_volatile(tag_of(slot)) }
}

/// Whether a slot's key is the IPv4 key `b`, read field by field in place (no key copy on the
/// stack, no reference to memory other CPUs write).
///
/// # Safety
/// `slot` must be a map value pointer valid for this program run.
#[inline(always)]
unsafe fn same_key(slot: *mut NatSlot4, b: &NatKey) -> bool {
    // SAFETY: the caller's contract; field addresses of an aligned struct.
    let (backend_addr, snat_addr, backend_port, nat_port) = unsafe {
        let a = addr_of!((*slot).key);
        (
            read_volatile(addr_of!((*a).backend_addr)),
            read_volatile(addr_of!((*a).snat_addr)),
            read_volatile(addr_of!((*a).backend_port)),
            read_volatile(addr_of!((*a).nat_port)),
        )
    };
    (backend_addr ^ b.backend_addr[0])
        | (snat_addr ^ b.snat_addr[0])
        | (backend_port ^ b.backend_port) as u32
        | (nat_port ^ b.nat_port) as u32
        == 0
        // SAFETY: as above.
        && unsafe { read_volatile(addr_of!((*slot).key.proto)) } == b.proto
}

/// Copies a state field by field (a whole-struct copy becomes a byte-wise memcpy call), with
/// volatile reads and through raw pointers: either side may be a slot other CPUs use.
///
/// # Safety
/// `from` and `to` must point to `NatState`s in map memory valid for this program run, `to`
/// writable and not read by another CPU unless its slot is marked busy.
#[inline(always)]
unsafe fn copy_state(from: *const NatState, to: *mut NatState) {
    // SAFETY: the caller's contract; field addresses of aligned structs.
    unsafe {
        let ca = addr_of!((*from).client_addr);
        let va = addr_of!((*from).vip_addr);
        (*to).client_addr = [
            read_volatile(addr_of!((*ca)[0])),
            read_volatile(addr_of!((*ca)[1])),
            read_volatile(addr_of!((*ca)[2])),
            read_volatile(addr_of!((*ca)[3])),
        ];
        (*to).vip_addr = [
            read_volatile(addr_of!((*va)[0])),
            read_volatile(addr_of!((*va)[1])),
            read_volatile(addr_of!((*va)[2])),
            read_volatile(addr_of!((*va)[3])),
        ];
        (*to).client_port = read_volatile(addr_of!((*from).client_port));
        (*to).vip_port = read_volatile(addr_of!((*from).vip_port));
        (*to).backend = read_volatile(addr_of!((*from).backend));
        (*to).vip_num = read_volatile(addr_of!((*from).vip_num));
        (*to).snat = read_volatile(addr_of!((*from).snat));
        (*to).nat_port = read_volatile(addr_of!((*from).nat_port));
        (*to).claimed = read_volatile(addr_of!((*from).claimed));
    }
}

/// The slot's state.
#[inline(always)]
fn state_of(slot: *mut NatSlot4) -> *mut NatState {
    // SAFETY: only computes the field address of a valid map value pointer.
    unsafe { addr_of_mut!((*slot).state) }
}

/// Copies the key's entry into `out`; false if there is none.
#[inline(always)]
pub fn read(k: &NatKey, s: &Settings, out: &mut NatState) -> bool {
    if k.family != FAMILY_V4 {
        // SAFETY: a map value valid for this run (the kernel replaces hash-map values whole,
        // never in place).
        return match unsafe { NAT_REVERSE.get(k) } {
            Some(v) => {
                // SAFETY: as above.
                unsafe { copy_state(v, out) };
                true
            }
            None => false,
        };
    }
    let Some((slot, tag)) = find(k, s) else {
        return false;
    };
    // SAFETY: map value pointer valid for this run.
    unsafe { copy_state(state_of(slot), out) };
    // The slot may have been handed to another key while it was copied.
    // SAFETY: as above.
    unsafe { tag_now(slot) == tag }
}

/// Removes the key's entry, if it is there.
#[inline(always)]
pub fn remove(k: &NatKey, s: &Settings) {
    if k.family != FAMILY_V4 {
        let _ = NAT_REVERSE.remove(k);
        return;
    }
    if let Some((slot, tag)) = find(k, s) {
        // SAFETY: aligned map memory. Fails harmlessly if a writer took the slot meanwhile.
        unsafe { cas_u64(tag_of(slot), tag, SLOT_EMPTY) };
    }
}

/// Removes the key's entry if it still belongs to the client `addr`:`port` (network order):
/// a port given back at a flow's close may already map another client's flow.
#[inline(always)]
pub fn remove_for_client(k: &NatKey, s: &Settings, addr: &[u32; 4], port: u16) {
    // Volatile field reads: `st` may be a slot other CPUs write.
    let mine = |st: *const NatState| {
        // SAFETY: `st` is a map value valid for this run (both callers below).
        unsafe {
            read_volatile(addr_of!((*st).client_port)) == port
                && (read_volatile(addr_of!((*st).client_addr[0])) ^ addr[0])
                    | (read_volatile(addr_of!((*st).client_addr[1])) ^ addr[1])
                    | (read_volatile(addr_of!((*st).client_addr[2])) ^ addr[2])
                    | (read_volatile(addr_of!((*st).client_addr[3])) ^ addr[3])
                    == 0
        }
    };
    if k.family != FAMILY_V4 {
        // SAFETY: a map value valid for this run.
        if unsafe { NAT_REVERSE.get(k) }.is_some_and(|v| mine(v)) {
            let _ = NAT_REVERSE.remove(k);
        }
        return;
    }
    let Some((slot, tag)) = find(k, s) else {
        return;
    };
    if mine(state_of(slot)) {
        // SAFETY: aligned map memory. Fails harmlessly if a writer took the slot meanwhile.
        unsafe { cas_u64(tag_of(slot), tag, SLOT_EMPTY) };
    }
}

/// The outcome of trying to claim a key.
pub enum Claim {
    /// The key is now ours, holding the given state.
    Claimed,
    /// A writer on another CPU is busy with the bucket: try another port.
    Busy,
    /// Someone holds the key (`same_key`), or, IPv4, every slot of its bucket holds another
    /// key (one of them is reported); their state was copied out.
    /// `observed` and `way` are what `take_over` needs to replace them.
    Held {
        same_key: bool,
        observed: u64,
        way: u32,
    },
}

/// Inserts `state` under `k` if the key is free and (IPv4) its bucket has an empty slot;
/// atomic against other CPUs claiming the same slot. Otherwise copies the holder's state
/// into `holder`.
#[inline(always)]
pub fn claim(k: &NatKey, state: &NatState, s: &Settings, holder: &mut NatState) -> Claim {
    if k.family != FAMILY_V4 {
        if NAT_REVERSE.insert(k, state, BPF_NOEXIST as u64).is_ok() {
            return Claim::Claimed;
        }
        return if read(k, s, holder) {
            Claim::Held {
                same_key: true,
                observed: 0,
                way: 0,
            }
        } else {
            Claim::Busy
        };
    }
    let (base, tag) = bucket_of(k, s);
    // Loops with early exits only: every extra variable carried through a loop multiplies
    // the paths the verifier walks.
    for i in 0..NAT_WAYS {
        let Some(slot) = NAT_SLOTS4.get_ptr_mut(base + i) else {
            return Claim::Busy;
        };
        // SAFETY: map value pointer valid for this run.
        let t = unsafe { tag_now(slot) };
        // SAFETY: as above.
        if t == tag && unsafe { same_key(slot, k) } {
            return held(slot, t, true, i, holder);
        }
    }
    for i in 0..NAT_WAYS {
        let Some(slot) = NAT_SLOTS4.get_ptr_mut(base + i) else {
            return Claim::Busy;
        };
        // SAFETY: as above.
        if unsafe { tag_now(slot) } == SLOT_EMPTY {
            return if write(slot, SLOT_EMPTY, tag, k, state) {
                Claim::Claimed
            } else {
                Claim::Busy
            };
        }
    }
    // Every slot holds another key: report one, picked by the key's hash.
    let way = (tag >> 1) as u32 & (NAT_WAYS - 1);
    let Some(slot) = NAT_SLOTS4.get_ptr_mut(base + way) else {
        return Claim::Busy;
    };
    // SAFETY: as above.
    let t = unsafe { tag_now(slot) };
    held(slot, t, false, way, holder)
}

/// Copies the holder of `slot` (tag `t` when read) out.
#[inline(always)]
fn held(slot: *mut NatSlot4, t: u64, same_key: bool, way: u32, holder: &mut NatState) -> Claim {
    if t == SLOT_EMPTY || t == SLOT_BUSY {
        return Claim::Busy;
    }
    // SAFETY: map value pointer valid for this run.
    unsafe { copy_state(state_of(slot), holder) };
    // SAFETY: as above.
    if unsafe { tag_now(slot) } != t {
        return Claim::Busy;
    }
    Claim::Held {
        same_key,
        observed: t,
        way,
    }
}

/// Replaces the holder `claim` reported (found stale) with `state` under `k`. False if the
/// slot changed since.
#[inline(always)]
pub fn take_over(k: &NatKey, state: &NatState, s: &Settings, observed: u64, way: u32) -> bool {
    if k.family != FAMILY_V4 {
        return NAT_REVERSE.insert(k, state, BPF_ANY as u64).is_ok();
    }
    let (base, tag) = bucket_of(k, s);
    let Some(slot) = NAT_SLOTS4.get_ptr_mut(base + (way & (NAT_WAYS - 1))) else {
        return false;
    };
    write(slot, observed, tag, k, state)
}

/// Claims the slot from tag `from` to busy, fills it, publishes `tag`.
#[inline(always)]
fn write(slot: *mut NatSlot4, from: u64, tag: u64, k: &NatKey, state: &NatState) -> bool {
    // SAFETY: aligned map memory.
    if !unsafe { cas_u64(tag_of(slot), from, SLOT_BUSY) } {
        return false;
    }
    // SAFETY: the slot is ours until the tag is published.
    unsafe {
        (*slot).key = NatKey4::of(k);
        copy_state(state, state_of(slot));
        // Readers that see the tag see key and state (a full barrier).
        publish_u64(tag_of(slot), tag);
    }
    true
}
