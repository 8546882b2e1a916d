//! Incremental Internet checksum updates (RFC 1624) for rewritten headers.
//!
//! Values are the raw 16/32-bit words as they sit in packet memory: one's complement sums are
//! byte-order independent as long as old value, new value and checksum use the same order.

/// Folds a 32-bit one's complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// What replacing a 32-bit word adds to a checksum's one's complement sum: `~old + new`
/// per 16-bit half. Deltas add up (as long as the total fits in 32 bits: thousands of words)
/// and are applied once with `apply`: one fold instead of one per field.
#[inline(always)]
pub fn delta_u32(old: u32, new: u32) -> u32 {
    (!(old as u16) as u32) + (!((old >> 16) as u16) as u32) + (new & 0xffff) + (new >> 16)
}

/// `delta_u32` for a 16-bit word.
#[inline(always)]
pub fn delta_u16(old: u16, new: u16) -> u32 {
    (!old as u32) + new as u32
}

/// `delta_u32` for a 128-bit address.
#[inline(always)]
pub fn delta_u128(old: &[u32; 4], new: &[u32; 4]) -> u32 {
    delta_u32(old[0], new[0])
        + delta_u32(old[1], new[1])
        + delta_u32(old[2], new[2])
        + delta_u32(old[3], new[3])
}

/// The checksum after changes whose deltas sum to `delta`: HC' = ~(~HC + delta).
#[inline(always)]
pub fn apply(check: u16, delta: u32) -> u16 {
    // Two folds: `!check + delta` may carry into bit 32 only if delta is near 2^32, which
    // a header's worth of deltas never is.
    !fold((!check as u32) + delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain RFC 1071 checksum over native-order 16-bit words, the reference.
    fn full(words: &[u16]) -> u16 {
        let sum: u32 = words.iter().map(|w| *w as u32).sum();
        !fold(sum)
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..10_000 {
            let mut words: [u16; 12] = core::array::from_fn(|_| next() as u16);
            let check = full(&words);
            // Change words 2..4 (a 32-bit field) and word 7 (a port).
            let old32 = (words[2] as u32) | ((words[3] as u32) << 16);
            let new32 = next();
            words[2] = new32 as u16;
            words[3] = (new32 >> 16) as u16;
            let old16 = words[7];
            let new16 = next() as u16;
            words[7] = new16;
            let summed = apply(check, delta_u32(old32, new32) + delta_u16(old16, new16));
            let reference = full(&words);
            // 0x0000 and 0xffff are the same value in one's complement.
            let same =
                |a: u16, b: u16| a == b || (a == 0xffff && b == 0) || (a == 0 && b == 0xffff);
            assert!(
                same(summed, reference),
                "summed deltas {summed:#06x} vs full {reference:#06x}"
            );
        }
    }
}
