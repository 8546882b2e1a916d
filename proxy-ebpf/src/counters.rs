//! Per-CPU counter updates: no atomics, no locks; userspace sums the CPUs.

use proxy_common::{backend_counter_index, Reason};

use crate::maps::{COUNTERS, REASONS};

#[inline(always)]
pub fn reason(r: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(r as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn bump(index: u32, bytes: u64, new_flow: bool, miss: bool) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            // Most packets are neither: skip the read-modify-writes of zero.
            if new_flow {
                (*c).new_flows += 1;
            }
            if miss {
                (*c).lru_misses += 1;
            }
        }
    }
}

#[inline(always)]
pub fn flow_packet(vip_num: u32, backend: u32, bytes: u64, new_flow: bool, miss: bool) {
    bump(vip_num, bytes, new_flow, miss);
    bump(backend_counter_index(backend), bytes, new_flow, false);
}
