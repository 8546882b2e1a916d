//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with integer weights.
//!
//! Builds the lookup table shared by the XDP program and the userspace TLS terminator: a flow
//! hash picks `slots[hash % size]`, which holds a backend id. The table depends only on the set
//! of (name, weight, id), so every balancer replica given the same pool builds identical bytes.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

/// Default table size: prime, and large enough for ~100 slots per backend at 655 backends.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Smallest accepted table size.
pub const MIN_RING_SIZE: u32 = 3;
/// Largest accepted table size (the largest prime below 2^24): 64 MiB of slots.
pub const MAX_RING_SIZE: u32 = 16_777_213;
/// Each weighted member needs at least this many slots on average. Below that, shares are
/// quantised too coarsely to mean anything; the paper recommends `size >= 100 * members`.
pub const MIN_SLOTS_PER_MEMBER: u32 = 10;
/// Held by every slot when no member has a weight above zero; never a valid member id.
pub const EMPTY_SLOT: u32 = u32::MAX;

/// A backend as the ring sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RingMember {
    /// What is stored in the slots: an index into the kernel's backend array, allocated by the
    /// control plane. Must be unique and must not be [`EMPTY_SLOT`].
    pub id: u32,
    /// Stable identity that alone determines the member's permutation; must be unique.
    pub name: String,
    /// Relative share of slots; 0 means drained (the member takes no slots).
    pub weight: u32,
}

impl RingMember {
    /// Convenience constructor.
    pub fn new(id: u32, name: impl Into<String>, weight: u32) -> Self {
        Self {
            id,
            name: name.into(),
            weight,
        }
    }
}

/// One slot whose owner changed in a rebuild: write `id` at index `slot` of the kernel array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RingDelta {
    /// Index into the table.
    pub slot: u32,
    /// New member id held by that slot (possibly [`EMPTY_SLOT`]).
    pub id: u32,
}

/// Why a ring could not be created or rebuilt. A failed call leaves the ring unchanged.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The table size is not prime; Maglev permutations only cover every slot for prime sizes.
    #[error("ring size {size} is not prime")]
    NotPrime {
        /// The rejected size.
        size: u32,
    },
    /// The table size is outside `MIN_RING_SIZE..=MAX_RING_SIZE`.
    #[error("ring size {size} is outside the supported range {min}..={max}", min = MIN_RING_SIZE, max = MAX_RING_SIZE)]
    SizeOutOfRange {
        /// The rejected size.
        size: u32,
    },
    /// Two members share a name, so their permutations (and identities) would collide.
    #[error("duplicate ring member name {name:?}")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// Two members share an id, so their slots would be indistinguishable.
    #[error("duplicate ring member id {id}")]
    DuplicateId {
        /// The repeated id.
        id: u32,
    },
    /// A member uses the id reserved for empty slots.
    #[error("ring member {name:?} uses id {id}, which is reserved for empty slots")]
    ReservedId {
        /// The offending member's name.
        name: String,
        /// The reserved id it used.
        id: u32,
    },
    /// Too many weighted members for the table size (see [`MIN_SLOTS_PER_MEMBER`]).
    #[error(
        "{members} weighted ring members need a ring of at least {per} slots each, but the size is {size}",
        per = MIN_SLOTS_PER_MEMBER
    )]
    TooManyMembers {
        /// Number of members with a weight above zero.
        members: usize,
        /// The ring size.
        size: u32,
    },
}

/// A Maglev lookup table of prime size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevRing {
    size: u32,
    slots: Vec<u32>,
}

impl Default for MaglevRing {
    /// An empty ring of [`DEFAULT_RING_SIZE`].
    fn default() -> Self {
        Self {
            size: DEFAULT_RING_SIZE,
            slots: vec![EMPTY_SLOT; DEFAULT_RING_SIZE as usize],
        }
    }
}

impl MaglevRing {
    /// Creates a ring of `size` slots, all [`EMPTY_SLOT`]. `size` must be a prime within
    /// `MIN_RING_SIZE..=MAX_RING_SIZE`.
    pub fn new(size: u32) -> Result<Self, RingError> {
        if !(MIN_RING_SIZE..=MAX_RING_SIZE).contains(&size) {
            return Err(RingError::SizeOutOfRange { size });
        }
        if !is_prime(size) {
            return Err(RingError::NotPrime { size });
        }
        Ok(Self {
            size,
            slots: vec![EMPTY_SLOT; size as usize],
        })
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The table, indexed by slot; each entry is a member id or [`EMPTY_SLOT`].
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Every slot as a delta, empty ones included: what a kernel copy needs when nothing in
    /// it can be trusted (a fresh map is all zeroes, backend 0; a pinned one may hold an old
    /// ring).
    pub fn full_delta(&self) -> Vec<RingDelta> {
        (0..self.size)
            .zip(&self.slots)
            .map(|(slot, &id)| RingDelta { slot, id })
            .collect()
    }

    /// The member id for a flow hash (or [`EMPTY_SLOT`] if the ring has no weighted member).
    pub fn lookup(&self, hash: u32) -> u32 {
        self.slots[(hash % self.size) as usize]
    }

    /// Recomputes the table for `members` and returns only the slots that changed, ascending by
    /// slot, so that just the delta needs writing to the kernel. On error the ring is unchanged.
    pub fn rebuild(&mut self, members: &[RingMember]) -> Result<Vec<RingDelta>, RingError> {
        let table = build_table(self.size, members)?;
        let delta = (0..self.size)
            .zip(self.slots.iter().zip(&table))
            .filter(|(_, (old, new))| old != new)
            .map(|(slot, (_, &id))| RingDelta { slot, id })
            .collect();
        self.slots = table;
        Ok(delta)
    }
}

/// Deterministic primality test by trial division (at most ~11k divisions for any `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Name hashing.
//
// STABILITY: these functions decide every member's permutation. Changing anything here (the
// constants, the seeds, the byte order, the mixing) changes every deployed ring, remaps almost
// every flow, and makes replicas running different versions disagree. Do not touch; the golden
// tests below exist to catch accidental changes.
// ---------------------------------------------------------------------------------------------

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Seed for the permutation offset: the ASCII bytes "maglev/o".
const OFFSET_SEED: u64 = u64::from_le_bytes(*b"maglev/o");
/// Seed for the permutation skip: the ASCII bytes "maglev/s".
const SKIP_SEED: u64 = u64::from_le_bytes(*b"maglev/s");

/// 64-bit FNV-1a, continuing from `state`.
fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// MurmurHash3's 64-bit finalizer: FNV alone mixes the last bytes poorly, which would bias
/// `% size` for names that differ only in a trailing digit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Seeded, platform-independent hash of a member name.
fn name_hash(name: &str, seed: u64) -> u64 {
    let seeded = fnv1a64(FNV_OFFSET_BASIS, &seed.to_le_bytes());
    fmix64(fnv1a64(seeded, name.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Table population.
// ---------------------------------------------------------------------------------------------

/// A member's walk through its permutation `(offset + j * skip) % size`, j = 0, 1, ...
struct Cursor {
    id: u32,
    slot: u32,
    skip: u32,
}

impl Cursor {
    fn new(member: &RingMember, size: u32) -> Self {
        let m = u64::from(size);
        // Both results are below `size`, so the casts are lossless.
        let offset = (name_hash(&member.name, OFFSET_SEED) % m) as u32;
        let skip = (name_hash(&member.name, SKIP_SEED) % (m - 1)) as u32 + 1;
        Self {
            id: member.id,
            slot: offset,
            skip,
        }
    }

    fn advance(&mut self, size: u32) {
        // slot < size and skip < size <= 2^24, so this cannot overflow.
        self.slot += self.skip;
        if self.slot >= size {
            self.slot -= size;
        }
    }
}

/// When a member next gets to claim a slot. Its k-th turn (k = 0, 1, ...) is due at virtual
/// time (k + 1/2) / weight, which hands out slots like Webster apportionment, so every member's
/// slot count is within about one of `size * weight / total_weight`. With equal weights this is
/// exactly the paper's round robin in name order. The global turn order is fixed by pairwise
/// comparisons, so removing a member only deletes its turns and leaves the others' order intact,
/// which keeps disruption low.
#[derive(PartialEq, Eq)]
struct Turn {
    taken: u32,
    weight: u32,
    index: u32,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest, so "greater" means "due earlier" (ties: lower index).
        // Compare (2k_a + 1) / w_a with (2k_b + 1) / w_b by cross-multiplying: 2k + 1 <= 2^25
        // and w < 2^32, so the products fit in u64.
        let due_self = (2 * u64::from(self.taken) + 1) * u64::from(other.weight);
        let due_other = (2 * u64::from(other.taken) + 1) * u64::from(self.weight);
        due_other
            .cmp(&due_self)
            .then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Checks `members` and returns the weighted ones sorted by name.
fn weighted_members(size: u32, members: &[RingMember]) -> Result<Vec<&RingMember>, RingError> {
    // Sorting first makes both the result and the reported error independent of input order.
    let mut sorted: Vec<&RingMember> = members.iter().collect();
    sorted.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = sorted.windows(2).find(|p| p[0].name == p[1].name) {
        return Err(RingError::DuplicateName {
            name: pair[0].name.clone(),
        });
    }
    let mut ids = HashSet::with_capacity(sorted.len());
    for m in &sorted {
        if m.id == EMPTY_SLOT {
            return Err(RingError::ReservedId {
                name: m.name.clone(),
                id: m.id,
            });
        }
        if !ids.insert(m.id) {
            return Err(RingError::DuplicateId { id: m.id });
        }
    }
    sorted.retain(|m| m.weight > 0);
    if sorted.len() as u64 * u64::from(MIN_SLOTS_PER_MEMBER) > u64::from(size) {
        return Err(RingError::TooManyMembers {
            members: sorted.len(),
            size,
        });
    }
    Ok(sorted)
}

/// Populates a fresh table of `size` (a valid prime) slots.
fn build_table(size: u32, members: &[RingMember]) -> Result<Vec<u32>, RingError> {
    let active = weighted_members(size, members)?;
    let mut slots = vec![EMPTY_SLOT; size as usize];
    // Occupancy bitmap: the probe loop below touches random slots ~size * ln(size) times, and
    // a bitmap 32x smaller than `slots` keeps those probes in cache (2.5x faster at MAX_RING_SIZE).
    let mut occupied = vec![0u64; (size as usize).div_ceil(64)];
    let mut cursors: Vec<Cursor> = active.iter().map(|m| Cursor::new(m, size)).collect();
    let mut turns: BinaryHeap<Turn> = (0u32..)
        .zip(&active)
        .map(|(index, m)| Turn {
            taken: 0,
            weight: m.weight,
            index,
        })
        .collect();
    // An empty heap means no weighted member: the table stays all EMPTY_SLOT.
    let mut filled = 0;
    while filled < size {
        let Some(mut turn) = turns.peek_mut() else {
            break;
        };
        let cursor = &mut cursors[turn.index as usize];
        // size is prime and 1 <= skip < size, so the permutation visits every slot and reaches
        // one of the empty slots that remain while filled < size.
        let mut slot = cursor.slot as usize;
        while occupied[slot / 64] & (1 << (slot % 64)) != 0 {
            cursor.advance(size);
            slot = cursor.slot as usize;
        }
        occupied[slot / 64] |= 1 << (slot % 64);
        slots[slot] = cursor.id;
        cursor.advance(size);
        filled += 1;
        // Dropping the PeekMut re-sifts the heap with the updated due time.
        turn.taken += 1;
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    #[test]
    fn full_delta_names_every_slot_in_order() {
        let mut ring = MaglevRing::new(1009).unwrap();
        ring.rebuild(&[RingMember::new(4, "a", 1), RingMember::new(9, "b", 1)])
            .unwrap();
        let full = ring.full_delta();
        assert_eq!(full.len(), 1009);
        for (i, d) in full.iter().enumerate() {
            assert_eq!((d.slot as usize, d.id), (i, ring.slots()[i]));
        }
        assert!(full.iter().any(|d| d.id == 4) && full.iter().any(|d| d.id == 9));
    }

    use super::*;

    const M: u32 = DEFAULT_RING_SIZE;

    fn pool(n: u32) -> Vec<RingMember> {
        (0..n)
            .map(|i| RingMember::new(i, format!("10.0.{}.{}:443", i / 256, i % 256), 1))
            .collect()
    }

    fn weighted(weights: &[u32]) -> Vec<RingMember> {
        (0u32..)
            .zip(weights)
            .map(|(i, &w)| RingMember::new(i * 7 + 3, format!("backend-{i}"), w))
            .collect()
    }

    fn build(size: u32, members: &[RingMember]) -> MaglevRing {
        let mut ring = MaglevRing::new(size).unwrap();
        ring.rebuild(members).unwrap();
        ring
    }

    fn count(ring: &MaglevRing, id: u32) -> usize {
        ring.slots().iter().filter(|&&s| s == id).count()
    }

    /// Deterministic Fisher-Yates with xorshift64, so tests need no extra dependency.
    fn shuffle<T>(items: &mut [T], mut seed: u64) {
        for i in (1..items.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            items.swap(i, (seed % (i as u64 + 1)) as usize);
        }
    }

    /// Largest relative deviation of any member's slot count from its weight share.
    fn max_share_deviation(ring: &MaglevRing, members: &[RingMember]) -> f64 {
        let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
        members
            .iter()
            .filter(|m| m.weight > 0)
            .map(|m| {
                let expected = f64::from(ring.size()) * f64::from(m.weight) / total as f64;
                (count(ring, m.id) as f64 - expected).abs() / expected
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn fills_every_slot_when_any_member_is_weighted() {
        for n in [1, 2, 7] {
            let ring = build(M, &pool(n));
            assert!(ring.slots().iter().all(|&s| s != EMPTY_SLOT), "n = {n}");
        }
        let mut one_left = pool(5);
        for m in &mut one_left[1..] {
            m.weight = 0;
        }
        let ring = build(M, &one_left);
        assert_eq!(count(&ring, one_left[0].id), M as usize);
    }

    #[test]
    fn all_slots_empty_without_weighted_members() {
        let fresh = MaglevRing::new(M).unwrap();
        assert!(fresh.slots().iter().all(|&s| s == EMPTY_SLOT));

        let mut ring = build(M, &pool(4));
        let mut drained = pool(4);
        for m in &mut drained {
            m.weight = 0;
        }
        ring.rebuild(&drained).unwrap();
        assert!(ring.slots().iter().all(|&s| s == EMPTY_SLOT));
        assert_eq!(ring.lookup(12345), EMPTY_SLOT);

        ring.rebuild(&pool(4)).unwrap();
        ring.rebuild(&[]).unwrap();
        assert!(ring.slots().iter().all(|&s| s == EMPTY_SLOT));
    }

    #[test]
    fn equal_weights_get_equal_shares() {
        for n in [2, 3, 10, 100] {
            let members = pool(n);
            let ring = build(M, &members);
            let dev = max_share_deviation(&ring, &members);
            assert!(dev <= 0.02, "n = {n}: max share deviation {dev}");
        }
    }

    #[test]
    fn mixed_weights_get_proportional_shares() {
        let cases: [&[u32]; 5] = [
            &[1, 2, 3, 4],
            &[1, 10],
            &[10, 1],
            &[100, 1, 50, 7, 7, 30, 2, 99, 64, 13],
            &[1_000_000, 3_000_000, 2_500_000],
        ];
        for weights in cases {
            let members = weighted(weights);
            let ring = build(M, &members);
            let dev = max_share_deviation(&ring, &members);
            assert!(
                dev <= 0.02,
                "weights {weights:?}: max share deviation {dev}"
            );
            assert!(ring.slots().iter().all(|&s| s != EMPTY_SLOT));
        }
    }

    /// Slots that changed owner, not counting those the removed member owned.
    fn extra_disruption(before: &MaglevRing, after: &MaglevRing, removed: u32) -> usize {
        before
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|(old, new)| old != new && **old != removed)
            .count()
    }

    #[test]
    fn removing_a_member_moves_few_other_slots() {
        for n in [3, 10, 100] {
            let members = pool(n);
            let before = build(M, &members);
            let limit = 1.2 / f64::from(n) * f64::from(M);
            for victim in [0, n / 2, n - 1] {
                let rest: Vec<RingMember> =
                    members.iter().filter(|m| m.id != victim).cloned().collect();
                let after = build(M, &rest);
                assert_eq!(count(&after, victim), 0);
                let extra = extra_disruption(&before, &after, victim);
                assert!(
                    extra as f64 <= limit,
                    "n = {n}, removed {victim}: {extra} extra slots moved (limit {limit})"
                );
            }
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut members = weighted(&[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9]);
        let reference = build(M, &members);
        for seed in 1..=5 {
            shuffle(&mut members, 0x9e37_79b9_7f4a_7c15 ^ seed);
            let fresh = build(M, &members);
            assert_eq!(fresh.slots(), reference.slots(), "seed {seed}");
        }
        // A ring with history ends up identical to a fresh one.
        let mut reused = build(M, &pool(30));
        reused.rebuild(&members).unwrap();
        assert_eq!(reused, reference);
    }

    #[test]
    fn drained_member_owns_nothing() {
        let mut members = pool(10);
        let before = build(M, &members);
        let drained_id = members[4].id;
        assert!(count(&before, drained_id) > 0);

        members[4].weight = 0;
        let after = build(M, &members);
        assert_eq!(count(&after, drained_id), 0);
        assert!(after.slots().iter().all(|&s| s != EMPTY_SLOT));
        // Draining is the same as removing, for the table.
        let removed: Vec<RingMember> = members
            .iter()
            .filter(|m| m.id != drained_id)
            .cloned()
            .collect();
        assert_eq!(build(M, &removed), after);
    }

    #[test]
    fn rebuild_returns_exactly_the_changed_slots() {
        let mut ring = MaglevRing::new(M).unwrap();
        let steps = [
            pool(5),
            pool(6),
            weighted(&[1, 2, 3]),
            weighted(&[1, 2, 0]),
            Vec::new(),
        ];
        for members in &steps {
            let mut expected = ring.slots().to_vec();
            let delta = ring.rebuild(members).unwrap();
            assert!(delta.windows(2).all(|d| d[0].slot < d[1].slot));
            for d in &delta {
                assert_ne!(expected[d.slot as usize], d.id, "unchanged slot in delta");
                expected[d.slot as usize] = d.id;
            }
            assert_eq!(expected, ring.slots());
            assert!(ring.rebuild(members).unwrap().is_empty());
        }
        // From empty, every slot is in the delta.
        let mut fresh = MaglevRing::new(M).unwrap();
        assert_eq!(fresh.rebuild(&pool(3)).unwrap().len(), M as usize);
    }

    #[test]
    fn lookup_uses_hash_modulo_size() {
        let ring = build(31, &weighted(&[1, 1, 1]));
        for hash in [0, 5, 30, 31, 100, u32::MAX] {
            assert_eq!(ring.lookup(hash), ring.slots()[(hash % 31) as usize]);
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        for size in [0, 1, 2, MAX_RING_SIZE + 2, u32::MAX] {
            assert_eq!(
                MaglevRing::new(size),
                Err(RingError::SizeOutOfRange { size })
            );
        }
        for size in [4, 9, 15, 65_536, 65_535, MAX_RING_SIZE - 1] {
            assert_eq!(MaglevRing::new(size), Err(RingError::NotPrime { size }));
        }
        for size in [3, 13, DEFAULT_RING_SIZE, MAX_RING_SIZE] {
            assert_eq!(MaglevRing::new(size).unwrap().size(), size);
        }
        assert_eq!(MaglevRing::default(), MaglevRing::new(M).unwrap());
    }

    #[test]
    fn rejects_bad_members_and_keeps_the_table() {
        let mut ring = build(M, &pool(3));
        let before = ring.clone();

        let mut dup_name = pool(3);
        dup_name[2].name = dup_name[0].name.clone();
        dup_name[2].weight = 0; // drained members are still checked
        assert_eq!(
            ring.rebuild(&dup_name),
            Err(RingError::DuplicateName {
                name: dup_name[0].name.clone()
            })
        );

        let mut dup_id = pool(3);
        dup_id[1].id = dup_id[2].id;
        assert_eq!(
            ring.rebuild(&dup_id),
            Err(RingError::DuplicateId { id: dup_id[2].id })
        );

        let mut reserved = pool(3);
        reserved[1].id = EMPTY_SLOT;
        assert_eq!(
            ring.rebuild(&reserved),
            Err(RingError::ReservedId {
                name: reserved[1].name.clone(),
                id: EMPTY_SLOT
            })
        );

        let mut small = MaglevRing::new(13).unwrap();
        assert_eq!(
            small.rebuild(&pool(2)),
            Err(RingError::TooManyMembers {
                members: 2,
                size: 13
            })
        );
        // Drained members do not count towards the limit.
        let mut one_weighted = pool(20);
        for m in &mut one_weighted[1..] {
            m.weight = 0;
        }
        assert!(small.rebuild(&one_weighted).is_ok());

        assert_eq!(ring, before);
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            RingError::NotPrime { size: 4 }.to_string(),
            "ring size 4 is not prime"
        );
        assert_eq!(
            RingError::SizeOutOfRange { size: 2 }.to_string(),
            "ring size 2 is outside the supported range 3..=16777213"
        );
        assert_eq!(
            RingError::TooManyMembers {
                members: 2,
                size: 13
            }
            .to_string(),
            "2 weighted ring members need a ring of at least 10 slots each, but the size is 13"
        );
    }

    #[test]
    fn is_prime_matches_known_values() {
        let small: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
        );
        assert!(is_prime(DEFAULT_RING_SIZE));
        assert!(is_prime(MAX_RING_SIZE));
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(561)); // Carmichael number
        assert!(!is_prime(65_521 * 65_519));
        assert!(!is_prime(u32::MAX));
        // MAX_RING_SIZE really is the largest prime below 2^24.
        assert!(((MAX_RING_SIZE + 1)..(1 << 24)).all(|n| !is_prime(n)));
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn golden_name_hashes() {
        assert_eq!(name_hash("a", OFFSET_SEED), 0x8068_7fb2_2426_d48d);
        assert_eq!(name_hash("a", SKIP_SEED), 0xa651_028c_d4af_3ae4);
        assert_eq!(
            name_hash("10.0.0.1:443", OFFSET_SEED),
            0x1227_96e2_30cf_9616
        );
        assert_eq!(name_hash("10.0.0.1:443", SKIP_SEED), 0x301f_ac84_42b4_9e31);
    }

    #[test]
    fn golden_table() {
        let members = [
            RingMember::new(10, "a", 1),
            RingMember::new(20, "b", 1),
            RingMember::new(30, "c", 1),
        ];
        let ring = build(31, &members);
        let expected: [u32; 31] = [
            20, 30, 10, 20, 10, 30, 30, 20, 20, 10, 20, 30, 10, 20, 10, 10, 20, 30, 30, 30, 20, 30,
            10, 30, 20, 10, 20, 10, 10, 30, 10,
        ];
        assert_eq!(ring.slots(), expected);

        let weighted = [
            RingMember::new(1, "a", 1),
            RingMember::new(2, "b", 2),
            RingMember::new(3, "c", 3),
        ];
        let ring = build(61, &weighted);
        let expected: [u32; 61] = [
            3, 1, 3, 2, 2, 3, 3, 3, 2, 1, 2, 3, 3, 3, 1, 3, 2, 3, 2, 3, 3, 2, 1, 3, 3, 2, 3, 1, 2,
            2, 3, 1, 3, 3, 2, 1, 3, 3, 2, 3, 2, 2, 2, 3, 1, 2, 3, 2, 3, 3, 3, 2, 1, 2, 3, 3, 3, 1,
            2, 3, 3,
        ];
        assert_eq!(ring.slots(), expected);
    }
}
