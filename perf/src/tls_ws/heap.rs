//! Heap accounting for the proxy child (`serve --count-heap`): live blocks per exact
//! allocation size, in a fixed lock-free table (no allocation inside the allocator).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering},
};

const SLOTS: usize = 4096;

/// The allocator of the bench binary (`#[global_allocator]` there): the system allocator,
/// counting live blocks by size once [`count_heap`] is called.
pub struct CountingAlloc;

static COUNT_HEAP: AtomicBool = AtomicBool::new(false);
/// Allocation size owning each slot (0: free).
static SLOT_SIZE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Live blocks of that size.
static SLOT_BLOCKS: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];
/// Live bytes of sizes that found no slot (table full).
static OTHER_BYTES: AtomicI64 = AtomicI64::new(0);

fn slot_of(size: usize) -> Option<usize> {
    let mut i = (size as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as usize >> 20 & (SLOTS - 1);
    for _ in 0..64 {
        match SLOT_SIZE[i].load(Ordering::Relaxed) {
            k if k == size => return Some(i),
            0 => {
                match SLOT_SIZE[i].compare_exchange(0, size, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Some(i),
                    Err(k) if k == size => return Some(i),
                    Err(_) => {}
                }
            }
            _ => {}
        }
        i = (i + 1) & (SLOTS - 1);
    }
    None
}

fn account(size: usize, sign: i64) {
    if size == 0 || !COUNT_HEAP.load(Ordering::Relaxed) {
        return;
    }
    match slot_of(size) {
        Some(i) => {
            SLOT_BLOCKS[i].fetch_add(sign, Ordering::Relaxed);
        }
        None => {
            OTHER_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts on the side.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        account(layout.size(), -1);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(layout.size(), -1);
            account(new_size, 1);
        }
        p
    }
}

/// Live blocks per allocation size; size 0 holds the bytes of sizes not tracked.
pub type HeapSizes = HashMap<usize, i64>;

pub fn heap_snapshot() -> HeapSizes {
    let mut m: HeapSizes = (0..SLOTS)
        .filter_map(|i| {
            let size = SLOT_SIZE[i].load(Ordering::Relaxed);
            let blocks = SLOT_BLOCKS[i].load(Ordering::Relaxed);
            (size != 0 && blocks != 0).then_some((size, blocks))
        })
        .collect();
    m.insert(0, OTHER_BYTES.load(Ordering::Relaxed));
    m
}

pub fn heap_bytes(m: &HeapSizes) -> i64 {
    m.iter()
        .map(|(&size, &n)| if size == 0 { n } else { size as i64 * n })
        .sum()
}

/// Starts counting (until the process exits).
pub fn count_heap() {
    COUNT_HEAP.store(true, Ordering::SeqCst);
}
