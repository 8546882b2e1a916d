//! A provided-buffer ring: the pool a worker's receives draw from. The kernel picks a buffer
//! only when bytes arrive, so a connection waiting for data holds none; the worker copies
//! the bytes out and gives the buffer back at once.

use std::{io, ptr::NonNull, sync::atomic::AtomicU16, sync::atomic::Ordering};

use io_uring::{types::BufRingEntry, IoUring};

/// The buffer group id of the worker's one ring.
pub const GROUP: u16 = 0;

/// Ring entries (a power of two) and their backing memory, owned together: the kernel
/// reads entries and writes into buffers until the ring is unregistered or closed.
pub struct BufRing {
    /// `entries` × `BufRingEntry`, page aligned (mmap), shared with the kernel.
    ring: NonNull<BufRingEntry>,
    ring_bytes: usize,
    /// The buffers, `entries` × `buf_size`, contiguous; never moved or resized.
    slab: NonNull<u8>,
    slab_bytes: usize,
    entries: u16,
    buf_size: u32,
    /// Our producer index; published to the kernel through the ring's tail.
    tail: u16,
    /// Buffers currently lent out (taken by the kernel and not yet recycled).
    pub lent: usize,
}

fn map(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping; checked for failure below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl BufRing {
    /// Maps and registers a ring of `entries` buffers of `buf_size` bytes as [`GROUP`]. The
    /// memory is populated up front (MAP_POPULATE), so the worker's footprint does not grow
    /// as the ring turns over.
    pub fn register(uring: &IoUring, entries: u16, buf_size: u32) -> io::Result<Self> {
        assert!(
            entries.is_power_of_two(),
            "ring entries must be a power of two"
        );
        let ring_bytes = entries as usize * std::mem::size_of::<BufRingEntry>();
        let slab_bytes = entries as usize * buf_size as usize;
        let ring = map(ring_bytes)?.cast::<BufRingEntry>();
        let slab = match map(slab_bytes) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: unmapping what we just mapped.
                unsafe { libc::munmap(ring.as_ptr().cast(), ring_bytes) };
                return Err(e);
            }
        };
        let mut this = Self {
            ring,
            ring_bytes,
            slab,
            slab_bytes,
            entries,
            buf_size,
            tail: 0,
            lent: entries as usize,
        };
        // SAFETY: the ring memory lives as long as `this`, which the driver drops only after
        // the io_uring is closed (see `Driver`'s field order).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                ring.as_ptr() as u64,
                entries,
                GROUP,
                0,
            )?;
        }
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// The first `len` bytes of buffer `bid`, as the kernel wrote them.
    pub fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_size as usize);
        // SAFETY: in bounds of the slab (checked above); the kernel is done with a buffer
        // once its completion was posted, and it is not handed back until `recycle`.
        unsafe {
            std::slice::from_raw_parts(
                self.slab
                    .as_ptr()
                    .add(bid as usize * self.buf_size as usize),
                len,
            )
        }
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        // SAFETY: the index is masked into the ring; we are the only producer.
        let entry = unsafe { &mut *self.ring.as_ptr().add((self.tail & mask) as usize) };
        entry.set_addr(self.slab.as_ptr() as u64 + bid as u64 * self.buf_size as u64);
        entry.set_len(self.buf_size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.lent -= 1;
    }

    /// Makes pushed entries visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field of the ring's first entry (the kernel's layout), aligned u16.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The kernel took a buffer (a completion carried its id).
    pub fn taken(&mut self) {
        self.lent += 1;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: our own mappings; the ring fd is closed by now (the driver drops it first),
        // so the kernel no longer touches them.
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_bytes);
            libc::munmap(self.slab.as_ptr().cast(), self.slab_bytes);
        }
    }
}
