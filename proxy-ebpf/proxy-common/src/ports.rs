//! NAT port spaces: which balancer source ports towards one backend are taken.
//!
//! A tuple towards a node only has to be unique towards that node, so every backend has its
//! own space of `positions = snat_count * port_range` positions (position `v` is SNAT address
//! `v / range`, port `min + v % range`). A space is a three-level bitmap in the `NAT_PORTS`
//! array map, `stride` u64 words per backend id:
//!
//! ```text
//! base + 0            cursor: where the next search starts (a hint, written without atomics)
//! base + 1            reclaim cursor: where the next search for stale holders starts (a hint)
//! base + 2            top: bit j set = summary word j is full
//! base + 3 + j        summary j (j < 64): bit k set = bitmap word 64 j + k is full
//! base + 67 + i       bitmap word i: bit b set = position 64 i + b is taken
//! ```
//!
//! Taking a port is bounded work whatever the occupancy: one bitmap word, one summary word
//! and the top word locate the first free position at or after the cursor (circularly), and
//! one compare-and-swap claims it. So a new flow finds a port whenever one is free (the old
//! scheme, a fixed number of random probes, failed more and more often past half full), and
//! ports are handed out in rotating order: a port that was just given back is reused last,
//! which gives the node the longest time to forget the previous connection on that tuple.
//!
//! Positions past the space's end and words past its bitmap are kept "taken" (`init_space`),
//! so no search ever returns them. Summary bits are hints that may lag: a writer that fills
//! a word sets its summary bit and then re-reads the word, clearing the bit again if a
//! release freed a position meanwhile; a release clears the position, then the summary bit,
//! then the top bit. A searcher that meets a summary bit that lied repairs it and retries.
//!
//! The algorithm is generic over `Words`, so userspace tests run it against plain atomics
//! and the XDP program against map memory.

/// Most SNAT addresses per address family (`Settings::snat_v4`, `snat_v6`).
pub const MAX_SNAT_ADDRS: usize = 4;
/// Summary words per space: 64 × 64 bitmap words of 64 positions = 262,144 positions, enough
/// for `MAX_SNAT_ADDRS` × 65,536 ports.
pub const NAT_SUMMARY_WORDS: u32 = 64;
/// Most positions of one space.
pub const NAT_MAX_POSITIONS: u32 = NAT_SUMMARY_WORDS * 64 * 64;
/// Offset of the cursor, top, summary and bitmap words in a space.
const CURSOR: u32 = 0;
const RECLAIM: u32 = 1;
const TOP: u32 = 2;
const SUMMARY: u32 = 3;
const BITMAP: u32 = SUMMARY + NAT_SUMMARY_WORDS;
/// Searches (each with one compare-and-swap) before `take` gives up on contention.
const TAKE_TRIES: u32 = 4;

/// u64 words per space for a space of `positions` positions.
pub const fn nat_space_stride(positions: u32) -> u32 {
    BITMAP + positions.div_ceil(64)
}

/// Positions of a space: SNAT addresses × ports in the range `min..=max`.
pub const fn nat_positions(port_min: u16, port_max: u16, snat_count: u32) -> u32 {
    if port_max < port_min {
        return 0;
    }
    (port_max as u32 - port_min as u32 + 1) * snat_count
}

/// Word storage shared between CPUs: map memory in the XDP program, atomics in tests.
/// Every operation is sequentially consistent. A word out of range reads as all taken and
/// refuses writes.
pub trait Words {
    fn load(&self, i: u32) -> u64;
    fn compare_swap(&self, i: u32, old: u64, new: u64) -> bool;
    fn set_bits(&self, i: u32, bits: u64);
    fn clear_bits(&self, i: u32, bits: u64);
    /// A plain store (used for the cursor hint only).
    fn store(&self, i: u32, v: u64);
}

/// One backend's port space: its first word in the map and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub base: u32,
    pub positions: u32,
}

impl Space {
    /// Space of backend `id` with `stride` words per space. None if the geometry is not one
    /// `init_space` could have written (no positions, or more than a stride holds).
    #[inline(always)]
    pub fn of(id: u32, stride: u32, positions: u32) -> Option<Space> {
        if positions == 0 || positions > NAT_MAX_POSITIONS || nat_space_stride(positions) > stride {
            return None;
        }
        Some(Space {
            base: id.checked_mul(stride)?,
            positions,
        })
    }
}

/// Index of the lowest set bit of a non-zero word. Branch-free: the BPF instruction set has
/// no count-trailing-zeros, and every branch doubles the paths the verifier walks, so it is
/// the population count (bit arithmetic) of the bits below the lowest set one.
#[inline(always)]
pub fn lowest_bit(x: u64) -> u32 {
    #[cfg(not(target_arch = "bpf"))]
    {
        x.trailing_zeros()
    }
    #[cfg(target_arch = "bpf")]
    {
        // The constants are read through a volatile load: LLVM would otherwise recognise
        // the pattern as count-trailing-zeros and lower that to a table lookup in memory.
        let k = [
            0x5555_5555_5555_5555u64,
            0x3333_3333_3333_3333,
            0x0f0f_0f0f_0f0f_0f0f,
            0x0101_0101_0101_0101,
        ];
        // SAFETY: reads of a local array.
        let [m1, m2, m4, h01] = unsafe { core::ptr::read_volatile(&k) };
        let mut y = (x & x.wrapping_neg()).wrapping_sub(1);
        y -= (y >> 1) & m1;
        y = (y & m2) + ((y >> 2) & m2);
        y = (y + (y >> 4)) & m4;
        (y.wrapping_mul(h01) >> 56) as u32
    }
}

/// Bits at and above `from` (0..=64; 64 gives none).
#[inline(always)]
fn from_bit(from: u32) -> u64 {
    if from >= 64 {
        0
    } else {
        u64::MAX << from
    }
}

/// Records that bitmap word `i` is full (and its summary word, if that filled too). Each
/// bit set is re-checked, so a release that raced with it is never hidden.
#[inline(always)]
fn mark_full<W: Words>(w: &W, sp: Space, i: u32) {
    let j = i / 64;
    let bit = 1u64 << (i % 64);
    w.set_bits(sp.base + SUMMARY + j, bit);
    if w.load(sp.base + BITMAP + i) != u64::MAX {
        w.clear_bits(sp.base + SUMMARY + j, bit);
        return;
    }
    if w.load(sp.base + SUMMARY + j) == u64::MAX {
        w.set_bits(sp.base + TOP, 1 << j);
        if w.load(sp.base + SUMMARY + j) != u64::MAX {
            w.clear_bits(sp.base + TOP, 1 << j);
        }
    }
}

/// What one search found.
enum Found {
    /// A position that was free when its word was read.
    Free(u32),
    /// Every position is taken.
    Full,
    /// A summary bit lied (repaired): search again.
    Retry,
}

/// The lowest free position of bitmap word `i`, or a repair of the summary that sent us there.
#[inline(always)]
fn free_in_word<W: Words>(w: &W, sp: Space, i: u32) -> Found {
    let free = !w.load(sp.base + BITMAP + i);
    if free == 0 {
        mark_full(w, sp, i);
        return Found::Retry;
    }
    Found::Free(i * 64 + lowest_bit(free))
}

/// The first free position at or after `start`, circularly.
#[inline(always)]
fn search<W: Words>(w: &W, sp: Space, start: u32) -> Found {
    let i0 = start / 64;
    // The rest of the cursor's own word.
    let here = !w.load(sp.base + BITMAP + i0) & from_bit(start % 64);
    if here != 0 {
        return Found::Free(i0 * 64 + lowest_bit(here));
    }
    // Later words of the same summary group.
    let j0 = i0 / 64;
    let later = !w.load(sp.base + SUMMARY + j0) & from_bit(i0 % 64 + 1);
    if later != 0 {
        return free_in_word(w, sp, j0 * 64 + lowest_bit(later));
    }
    // Later groups, then from the start.
    let top = !w.load(sp.base + TOP);
    let groups = if top & from_bit(j0 + 1) != 0 {
        top & from_bit(j0 + 1)
    } else {
        top
    };
    if groups == 0 {
        return Found::Full;
    }
    let j = lowest_bit(groups);
    let words = !w.load(sp.base + SUMMARY + j);
    if words == 0 {
        // The group filled up after its top bit was read: repair, search again.
        w.set_bits(sp.base + TOP, 1 << j);
        if w.load(sp.base + SUMMARY + j) != u64::MAX {
            w.clear_bits(sp.base + TOP, 1 << j);
        }
        return Found::Retry;
    }
    free_in_word(w, sp, j * 64 + lowest_bit(words))
}

/// Takes the first free position at or after the space's cursor (circularly) and moves the
/// cursor past it. None when every position is taken (or, rarely, when writers on other
/// CPUs won `TAKE_TRIES` races in a row).
#[inline(always)]
pub fn take<W: Words>(w: &W, sp: Space) -> Option<u32> {
    let cursor = w.load(sp.base + CURSOR) as u32;
    let mut start = if cursor < sp.positions { cursor } else { 0 };
    for _ in 0..TAKE_TRIES {
        let v = match search(w, sp, start) {
            Found::Free(v) => v,
            Found::Full => return None,
            Found::Retry => continue,
        };
        if v >= sp.positions {
            // Only a space `init_space` never prepared has free bits out there.
            return None;
        }
        let i = v / 64;
        let bit = 1u64 << (v % 64);
        let old = w.load(sp.base + BITMAP + i);
        if old & bit != 0 || !w.compare_swap(sp.base + BITMAP + i, old, old | bit) {
            // Another CPU took it (or another bit of the word) first.
            start = v;
            continue;
        }
        if old | bit == u64::MAX {
            mark_full(w, sp, i);
        }
        let next = if v + 1 >= sp.positions { 0 } else { v + 1 };
        w.store(sp.base + CURSOR, next as u64);
        return Some(v);
    }
    None
}

/// Takes position `v` if it is free (the first choice of a new flow, see `nat_ports`).
#[inline(always)]
pub fn take_at<W: Words>(w: &W, sp: Space, v: u32) -> bool {
    if v >= sp.positions {
        return false;
    }
    let i = v / 64;
    let bit = 1u64 << (v % 64);
    let old = w.load(sp.base + BITMAP + i);
    if old & bit != 0 || !w.compare_swap(sp.base + BITMAP + i, old, old | bit) {
        return false;
    }
    if old | bit == u64::MAX {
        mark_full(w, sp, i);
    }
    true
}

/// Gives position `v` back.
#[inline(always)]
pub fn release<W: Words>(w: &W, sp: Space, v: u32) {
    if v >= sp.positions {
        return;
    }
    let i = v / 64;
    let j = i / 64;
    w.clear_bits(sp.base + BITMAP + i, 1 << (v % 64));
    // Clearing a summary bit that is already clear is skipped: a writer that sets it later
    // re-reads the word and sees this release.
    if w.load(sp.base + SUMMARY + j) & (1 << (i % 64)) != 0 {
        w.clear_bits(sp.base + SUMMARY + j, 1 << (i % 64));
    }
    if w.load(sp.base + TOP) & (1 << j) != 0 {
        w.clear_bits(sp.base + TOP, 1 << j);
    }
}

/// Where to look for `n` positions held by flows that are over but never gave their port
/// back (idle timeouts; the XDP program checks them when a space is full): the reclaim
/// cursor, which moves on by `n`.
#[inline(always)]
pub fn reclaim_start<W: Words>(w: &W, sp: Space, n: u32) -> u32 {
    let c = w.load(sp.base + RECLAIM) as u32;
    let start = if c < sp.positions { c } else { 0 };
    let next = start + n;
    w.store(
        sp.base + RECLAIM,
        if next >= sp.positions { 0 } else { next } as u64,
    );
    start
}

/// Whether every position seems taken (the top word says so; it may lag a release by a
/// moment, never an allocation).
#[inline(always)]
pub fn looks_full<W: Words>(w: &W, sp: Space) -> bool {
    w.load(sp.base + TOP) == u64::MAX
}

/// Whether position `v` is taken.
#[inline(always)]
pub fn is_taken<W: Words>(w: &W, sp: Space, v: u32) -> bool {
    w.load(sp.base + BITMAP + v / 64) & (1 << (v % 64)) != 0
}

/// Position of SNAT address `snat` and port `port` (host order) in a space of ports
/// `min..`, `range` ports per address.
#[inline(always)]
pub fn position(snat: u32, port: u16, min: u16, range: u32) -> u32 {
    snat * range + (port.wrapping_sub(min) as u32)
}

/// The words of an empty space of `positions` positions in a stride of `stride` words:
/// every position free, everything past the end taken. Userspace writes this when a backend
/// id gets a new address or the geometry changes.
pub fn init_space(positions: u32, stride: u32, out: &mut [u64]) {
    let bitmap_words = stride.saturating_sub(BITMAP);
    for (n, word) in out.iter_mut().enumerate().take(stride as usize) {
        let n = n as u32;
        *word = match n {
            CURSOR | RECLAIM => 0,
            TOP => {
                // Groups with no word inside the space are full.
                let groups = positions.div_ceil(64 * 64);
                from_bit(groups)
            }
            _ if n < BITMAP => {
                let j = n - SUMMARY;
                let first_word = j * 64;
                let words = positions.div_ceil(64);
                // Words past the space are full.
                if first_word + 64 <= words {
                    0
                } else if first_word >= words {
                    u64::MAX
                } else {
                    from_bit(words - first_word)
                }
            }
            _ => {
                let i = n - BITMAP;
                debug_assert!(i < bitmap_words);
                let first = i * 64;
                if first + 64 <= positions {
                    0
                } else if first >= positions {
                    u64::MAX
                } else {
                    from_bit(positions - first)
                }
            }
        };
    }
    // A last word that is entirely past the end is full: its summary bit says so (above).
    // A partial last word is not full, whatever its tail.
}

/// Taken positions of a space whose words are `words` (its stride), ignoring what lies past
/// the end.
pub fn taken_count(positions: u32, words: &[u64]) -> u32 {
    let mut n = 0;
    for (i, w) in words.iter().skip(BITMAP as usize).enumerate() {
        let first = i as u32 * 64;
        if first >= positions {
            break;
        }
        let mask = if first + 64 <= positions {
            u64::MAX
        } else {
            !from_bit(positions - first)
        };
        n += (w & mask).count_ones();
    }
    n
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::{collections::HashSet, sync::Arc, vec::Vec};

    /// Spaces in plain atomics, laid out as in the map.
    struct Atomics(Vec<AtomicU64>);

    impl Atomics {
        fn new(spaces: u32, positions: u32) -> (Atomics, u32) {
            let stride = nat_space_stride(positions);
            let mut words = std::vec![0u64; (spaces * stride) as usize];
            for s in 0..spaces {
                let at = (s * stride) as usize;
                init_space(positions, stride, &mut words[at..at + stride as usize]);
            }
            (
                Atomics(words.into_iter().map(AtomicU64::new).collect()),
                stride,
            )
        }
        fn snapshot(&self, sp: Space, stride: u32) -> Vec<u64> {
            self.0[sp.base as usize..(sp.base + stride) as usize]
                .iter()
                .map(|w| w.load(SeqCst))
                .collect()
        }
    }

    impl Words for Atomics {
        fn load(&self, i: u32) -> u64 {
            self.0.get(i as usize).map_or(u64::MAX, |w| w.load(SeqCst))
        }
        fn compare_swap(&self, i: u32, old: u64, new: u64) -> bool {
            self.0
                .get(i as usize)
                .is_some_and(|w| w.compare_exchange(old, new, SeqCst, SeqCst).is_ok())
        }
        fn set_bits(&self, i: u32, bits: u64) {
            if let Some(w) = self.0.get(i as usize) {
                w.fetch_or(bits, SeqCst);
            }
        }
        fn clear_bits(&self, i: u32, bits: u64) {
            if let Some(w) = self.0.get(i as usize) {
                w.fetch_and(!bits, SeqCst);
            }
        }
        fn store(&self, i: u32, v: u64) {
            if let Some(w) = self.0.get(i as usize) {
                w.store(v, SeqCst);
            }
        }
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Fills a space to `taken` of `positions` (the positions taken chosen at random by
    /// releasing a random subset of a full space), then checks that every free position is
    /// found, each once, and that a full space says so.
    fn fill_then_drain(positions: u32, taken: u32, seed: u64) {
        let (w, stride) = Atomics::new(2, positions);
        let sp = Space::of(1, stride, positions).unwrap();
        let other = Space::of(0, stride, positions).unwrap();
        for _ in 0..positions {
            take(&w, sp).expect("an empty space has room");
        }
        assert_eq!(take(&w, sp), None, "full");
        let mut rng = Rng(seed);
        let mut order: Vec<u32> = (0..positions).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let freed: HashSet<u32> = order[..(positions - taken) as usize]
            .iter()
            .copied()
            .collect();
        for &v in &freed {
            release(&w, sp, v);
        }
        assert_eq!(
            taken_count(positions, &w.snapshot(sp, stride)),
            taken,
            "occupancy after releases"
        );
        let mut got = HashSet::new();
        for _ in 0..freed.len() {
            let v = take(&w, sp).expect("a free position exists and must be found");
            assert!(freed.contains(&v), "{v} was not free");
            assert!(got.insert(v), "{v} handed out twice");
        }
        assert_eq!(take(&w, sp), None, "full again");
        // The neighbouring space is untouched.
        assert_eq!(taken_count(positions, &w.snapshot(other, stride)), 0);
        assert_eq!(take(&w, other), Some(0));
    }

    #[test]
    fn every_free_position_is_found_at_any_occupancy() {
        // Small ranges with a partial last word, one word, and several summary groups.
        for positions in [1, 63, 64, 1000, 5000, 2 * 22_768] {
            for per_mille in [0u32, 500, 900, 999] {
                let taken = positions * per_mille / 1000;
                fill_then_drain(positions, taken, 0x9e37_79b9_7f4a_7c15 ^ positions as u64);
            }
        }
        // 99.9 % of 5000: exactly five free.
        fill_then_drain(5000, 4995, 7);
    }

    #[test]
    fn the_largest_space_fills_and_empties() {
        fill_then_drain(NAT_MAX_POSITIONS, NAT_MAX_POSITIONS - 3, 11);
    }

    #[test]
    fn ports_rotate_a_released_port_is_reused_last() {
        let (w, stride) = Atomics::new(1, 100);
        let sp = Space::of(0, stride, 100).unwrap();
        assert_eq!(take(&w, sp), Some(0));
        assert_eq!(take(&w, sp), Some(1));
        release(&w, sp, 0);
        // The cursor moves on: 2..99 come before 0 again.
        for want in 2..100 {
            assert_eq!(take(&w, sp), Some(want));
        }
        assert_eq!(take(&w, sp), Some(0));
        assert_eq!(take(&w, sp), None);
    }

    #[test]
    fn geometry_out_of_bounds_is_refused() {
        assert_eq!(Space::of(0, nat_space_stride(100), 0), None);
        assert_eq!(Space::of(0, nat_space_stride(100), 200), None);
        assert_eq!(
            Space::of(0, nat_space_stride(100), NAT_MAX_POSITIONS + 1),
            None
        );
        assert_eq!(nat_positions(10_000, 32_767, 2), 45_536);
        assert_eq!(nat_positions(2, 1, 1), 0);
        assert_eq!(position(1, 10_005, 10_000, 22_768), 22_773);
    }

    /// The branch-free variant the BPF build uses.
    fn lowest_bit_swar(x: u64) -> u32 {
        let mut y = (x & x.wrapping_neg()).wrapping_sub(1);
        y -= (y >> 1) & 0x5555_5555_5555_5555;
        y = (y & 0x3333_3333_3333_3333) + ((y >> 2) & 0x3333_3333_3333_3333);
        y = (y + (y >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
        (y.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
    }

    #[test]
    fn lowest_bit_matches_trailing_zeros() {
        for b in 0..64 {
            assert_eq!(lowest_bit_swar(1 << b), b);
            assert_eq!(lowest_bit_swar(u64::MAX << b), b);
        }
        let mut rng = Rng(3);
        for _ in 0..10_000 {
            let x = rng.next() >> (rng.next() % 64);
            if x != 0 {
                assert_eq!(lowest_bit(x), x.trailing_zeros());
                assert_eq!(lowest_bit_swar(x), x.trailing_zeros());
            }
        }
        assert_eq!(lowest_bit(1 << 63), 63);
    }

    /// Two to four threads take and release at random from one small space: no position is
    /// ever held twice, and at the end the bitmap agrees with what the threads hold.
    #[test]
    fn concurrent_takers_never_share_a_position() {
        const POSITIONS: u32 = 300;
        let (w, stride) = Atomics::new(1, POSITIONS);
        let w = Arc::new(w);
        let sp = Space::of(0, stride, POSITIONS).unwrap();
        let owners: Arc<Vec<AtomicU64>> =
            Arc::new((0..POSITIONS).map(|_| AtomicU64::new(0)).collect());
        let threads: Vec<_> = (1..=4u64)
            .map(|t| {
                let (w, owners) = (w.clone(), owners.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng(t * 0x1234_5677);
                    let mut held: Vec<u32> = Vec::new();
                    for _ in 0..200_000 {
                        if rng.next() & 1 == 0 && held.len() < 100 {
                            if let Some(v) = take(&*w, sp) {
                                let prev = owners[v as usize].swap(t, SeqCst);
                                assert_eq!(
                                    prev, 0,
                                    "position {v} taken by {t} while {prev} holds it"
                                );
                                held.push(v);
                            }
                        } else if !held.is_empty() {
                            let v = held.swap_remove((rng.next() % held.len() as u64) as usize);
                            assert_eq!(owners[v as usize].swap(0, SeqCst), t);
                            release(&*w, sp, v);
                        }
                    }
                    held.len() as u32
                })
            })
            .collect();
        let held: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let snap = w.snapshot(sp, stride);
        assert_eq!(taken_count(POSITIONS, &snap), held);
        // The summaries never hide a free position: the rest can all be taken.
        for _ in held..POSITIONS {
            assert!(take(&*w, sp).is_some(), "a free position was hidden");
        }
        assert_eq!(take(&*w, sp), None);
    }
}
