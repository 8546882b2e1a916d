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

/// The checksum after one 16-bit word changed from `old` to `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + new as u32;
    !fold(sum)
}

/// The checksum after a 32-bit word (an IPv4 address, two ports) changed.
#[inline(always)]
pub fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check as u32)
        + (!(old as u16) as u32)
        + (!((old >> 16) as u16) as u32)
        + (new & 0xffff)
        + (new >> 16);
    !fold(sum)
}

/// The checksum after a 128-bit address changed.
#[inline(always)]
pub fn replace_u128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    let mut c = check;
    c = replace_u32(c, old[0], new[0]);
    c = replace_u32(c, old[1], new[1]);
    c = replace_u32(c, old[2], new[2]);
    replace_u32(c, old[3], new[3])
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
            let inc = replace_u16(replace_u32(check, old32, new32), old16, new16);
            let reference = full(&words);
            // 0x0000 and 0xffff are the same value in one's complement.
            assert!(
                inc == reference
                    || (inc == 0xffff && reference == 0)
                    || (inc == 0 && reference == 0xffff),
                "incremental {inc:#06x} vs full {reference:#06x}"
            );
        }
    }
}
