//! The reverse NAT table: reply 5-tuple (backend -> balancer NAT address and port) -> the
//! client it belongs to. IPv4 entries live in `NAT_SLOTS4`, a set-associative table in an
//! array map (`NAT_WAYS` slots per bucket, see `proxy_common::NatSlot4`): claiming a port is
//! one compare-and-swap and a reply finds its client with inlined array reads. IPv6 entries live in the kernel LRU hash map
//! `NAT_REVERSE`. Callers hold a `NatKey`; these functions pick the table.

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
        // SAFETY: map value pointer valid for this run; plain data.
        if unsafe { core::ptr::read_volatile(&(*slot).tag) } == tag
            && same_key(unsafe { &(*slot).key }, k)
        {
            return Some((slot, tag));
        }
    }
    None
}

#[inline(always)]
fn tag_of(slot: *mut NatSlot4) -> *mut u64 {
    // SAFETY: only computes the field address of a valid map value pointer.
    unsafe { core::ptr::addr_of_mut!((*slot).tag) }
}

/// Whether a slot's key is the IPv4 key `b` (compared in place: no key copy on the stack).
#[inline(always)]
fn same_key(a: &NatKey4, b: &NatKey) -> bool {
    (a.backend_addr ^ b.backend_addr[0])
        | (a.snat_addr ^ b.snat_addr[0])
        | (a.backend_port ^ b.backend_port) as u32
        | (a.nat_port ^ b.nat_port) as u32
        == 0
        && a.proto == b.proto
}

/// Field by field: a whole-struct copy becomes a byte-wise memcpy call.
#[inline(always)]
fn copy_state(from: &NatState, to: &mut NatState) {
    to.client_addr = [
        from.client_addr[0],
        from.client_addr[1],
        from.client_addr[2],
        from.client_addr[3],
    ];
    to.vip_addr = [
        from.vip_addr[0],
        from.vip_addr[1],
        from.vip_addr[2],
        from.vip_addr[3],
    ];
    to.client_port = from.client_port;
    to.vip_port = from.vip_port;
    to.backend = from.backend;
    to.vip_num = from.vip_num;
    to.snat = from.snat;
    to.nat_port = from.nat_port;
    to.claimed = from.claimed;
}

/// Copies the key's entry into `out`; false if there is none.
#[inline(always)]
pub fn read(k: &NatKey, s: &Settings, out: &mut NatState) -> bool {
    if k.family != FAMILY_V4 {
        // SAFETY: plain data read of a map value valid for this run.
        return match unsafe { NAT_REVERSE.get(k) } {
            Some(v) => {
                copy_state(v, out);
                true
            }
            None => false,
        };
    }
    let Some((slot, tag)) = find(k, s) else {
        return false;
    };
    // SAFETY: map value pointer valid for this run; plain data.
    let sl = unsafe { &*slot };
    copy_state(&sl.state, out);
    // The slot may have been handed to another key while it was copied.
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&sl.tag) == tag }
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
    let mine = |st: &NatState| {
        st.client_port == port
            && (st.client_addr[0] ^ addr[0])
                | (st.client_addr[1] ^ addr[1])
                | (st.client_addr[2] ^ addr[2])
                | (st.client_addr[3] ^ addr[3])
                == 0
    };
    if k.family != FAMILY_V4 {
        // SAFETY: plain data read of a map value valid for this run.
        if unsafe { NAT_REVERSE.get(k) }.is_some_and(mine) {
            let _ = NAT_REVERSE.remove(k);
        }
        return;
    }
    let Some((slot, tag)) = find(k, s) else {
        return;
    };
    // SAFETY: map value pointer valid for this run; plain data.
    if mine(unsafe { &(*slot).state }) {
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
        // SAFETY: map value pointer valid for this run; plain data.
        let t = unsafe { core::ptr::read_volatile(&(*slot).tag) };
        if t == tag && same_key(unsafe { &(*slot).key }, k) {
            return held(slot, t, true, i, holder);
        }
    }
    for i in 0..NAT_WAYS {
        let Some(slot) = NAT_SLOTS4.get_ptr_mut(base + i) else {
            return Claim::Busy;
        };
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(&(*slot).tag) } == SLOT_EMPTY {
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
    let t = unsafe { core::ptr::read_volatile(&(*slot).tag) };
    held(slot, t, false, way, holder)
}

/// Copies the holder of `slot` (tag `t` when read) out.
#[inline(always)]
fn held(slot: *mut NatSlot4, t: u64, same_key: bool, way: u32, holder: &mut NatState) -> Claim {
    if t == SLOT_EMPTY || t == SLOT_BUSY {
        return Claim::Busy;
    }
    // SAFETY: map value pointer valid for this run; plain data.
    copy_state(unsafe { &(*slot).state }, holder);
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&(*slot).tag) } != t {
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
        copy_state(state, &mut (*slot).state);
        // Readers that see the tag see key and state (a full barrier).
        publish_u64(tag_of(slot), tag);
    }
    true
}
