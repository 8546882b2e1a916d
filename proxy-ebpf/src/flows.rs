//! The forward flow table, split by family: IPv4 flows live in `FLOWS4` under a 16-byte
//! key, IPv6 flows in `FLOWS` under the full `FlowKey`. Callers hold a `FlowKey`; these
//! functions pick the table.

use aya_ebpf::bindings::BPF_ANY;
use proxy_common::{FlowKey, FlowKey4, FlowState, FAMILY_V4};

use crate::maps::{FLOWS, FLOWS4};

/// The flow's entry, writable in place.
#[inline(always)]
pub fn get(k: &FlowKey) -> Option<*mut FlowState> {
    if k.family == FAMILY_V4 {
        FLOWS4.get_ptr_mut(&FlowKey4::of(k))
    } else {
        FLOWS.get_ptr_mut(k)
    }
}

/// Inserts or replaces the flow's entry.
#[inline(always)]
pub fn insert(k: &FlowKey, state: &FlowState) -> Result<(), ()> {
    let r = if k.family == FAMILY_V4 {
        FLOWS4.insert(&FlowKey4::of(k), state, BPF_ANY as u64)
    } else {
        FLOWS.insert(k, state, BPF_ANY as u64)
    };
    r.map_err(|_| ())
}

#[inline(always)]
pub fn remove(k: &FlowKey) {
    let _ = if k.family == FAMILY_V4 {
        FLOWS4.remove(&FlowKey4::of(k))
    } else {
        FLOWS.remove(k)
    };
}
