//! Compare-and-swap and exchange on map memory. The BPF target's `core` has no CAS atomics
//! (BPF_CMPXCHG needs -mcpu=v3, which this program is built for), so these call the
//! compiler intrinsics that lower to BPF_ATOMIC instructions; the verifier accepts them on
//! map values since Linux 5.12.

use core::intrinsics::{atomic_cxchg, atomic_xchg, AtomicOrdering::SeqCst};

/// Replaces `*p` with `new` if it is `old`; true if it did. Sequentially consistent.
///
/// # Safety
/// `p` must be a valid, 8-byte aligned pointer into map memory.
#[inline(always)]
pub unsafe fn cas_u64(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: the caller's contract.
    unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, old, new).1 }
}

/// Stores `v` into `*p` with a full barrier (readers that see it see every earlier store).
///
/// # Safety
/// As for `cas_u64`.
#[inline(always)]
pub unsafe fn publish_u64(p: *mut u64, v: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        atomic_xchg::<u64, { SeqCst }>(p, v);
    }
}

/// `*p |= bits`, atomically. Sequentially consistent.
///
/// # Safety
/// As for `cas_u64`.
#[inline(always)]
pub unsafe fn set_bits_u64(p: *mut u64, bits: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::intrinsics::atomic_or::<u64, u64, { SeqCst }>(p, bits);
    }
}

/// `*p &= !bits`, atomically. Sequentially consistent.
///
/// # Safety
/// As for `cas_u64`.
#[inline(always)]
pub unsafe fn clear_bits_u64(p: *mut u64, bits: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::intrinsics::atomic_and::<u64, u64, { SeqCst }>(p, !bits);
    }
}
