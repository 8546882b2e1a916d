//! The flow hash that picks a Maglev slot. The XDP program and the userspace terminator both
//! call it, so a client lands on the same backend through either path; changing it re-maps
//! every flow of every deployed balancer.

use crate::{FlowKey, FlowKey4, NatKey4, VipKey};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
const SEED: u32 = 0x5bd1_e995;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len_words: u32) -> u32 {
    // murmur3's finaliser: every input bit affects every output bit.
    h ^= len_words * 4;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of the client address alone (client affinity); `family` is 4 or 6.
#[inline(always)]
pub fn source_hash(src: &[u32; 4], family: u8) -> u32 {
    let mut h = mix(SEED, family as u32);
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    finish(h, 5)
}

/// Hash of the full 5-tuple: the data plane computes it for every new flow (Maglev slot and
/// NAT port search), so it is the table hash's two multiply rounds over the addresses folded
/// to 32 bits each, not murmur over ten words.
#[inline(always)]
pub fn five_tuple_hash(key: &FlowKey) -> u32 {
    let fold =
        |a: &[u32; 4]| a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3].rotate_left(24);
    table_hash(
        fold(&key.src),
        fold(&key.dst),
        key.sport,
        key.dport,
        key.proto,
        SEED ^ key.family as u32,
    )
}

/// Hash of a VIP key, for the `VIP_INDEX` probe sequence. Unseeded: userspace places the
/// entries, and only it chooses VIP keys.
#[inline(always)]
pub fn vip_hash(key: &VipKey) -> u32 {
    let a = &key.addr;
    table_hash(
        a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3].rotate_left(24),
        0,
        key.port,
        0,
        key.proto,
        SEED ^ key.family as u32,
    )
}

/// The hash a VIP uses for a flow, by its `VIP_HASH_SOURCE_ONLY` flag.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, source_only: bool) -> u32 {
    if source_only {
        source_hash(&key.src, key.family)
    } else {
        five_tuple_hash(key)
    }
}

/// Bucket hash of the IPv4 flow table. Seeded with a secret drawn when the table is
/// created (`Settings::table_seed`), so clients cannot aim their flows at one bucket to
/// evict others.
#[inline(always)]
pub fn table_hash4(key: &FlowKey4, seed: u32) -> u32 {
    table_hash(key.src, key.dst, key.sport, key.dport, key.proto, seed)
}

/// Slot hash of the IPv4 reverse NAT table, seeded the same way.
#[inline(always)]
pub fn nat_hash4(key: &NatKey4, seed: u32) -> u32 {
    table_hash(
        key.backend_addr,
        key.snat_addr,
        key.backend_port,
        key.nat_port,
        key.proto,
        seed,
    )
}

/// A 16-byte key hashed with two 64-bit multiplies that run side by side (each half of the
/// key mixed with the seed first) and a fold of the high bits into the low: this runs for
/// every packet, and its critical path is one multiply long, where murmur's per-word rounds
/// chain ten. Takes the key's fields (not a key struct) so the data plane can hash a key it
/// holds in another layout without building a copy on its 512-byte stack.
#[inline(always)]
pub fn table_hash(addr_a: u32, addr_b: u32, port_a: u16, port_b: u16, proto: u8, seed: u32) -> u32 {
    const K1: u64 = 0xbf58_476d_1ce4_e5b9;
    const K2: u64 = 0x94d0_49bb_1331_11eb;
    let s = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let a = (addr_a as u64) | (addr_b as u64) << 32;
    let b = (port_a as u64) | (port_b as u64) << 16 | (proto as u64) << 32;
    let h = (a ^ s)
        .wrapping_mul(K1)
        .wrapping_add((b ^ s.rotate_left(32)).wrapping_mul(K2));
    (h ^ (h >> 32) ^ (h >> 47)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_values_never_change() {
        // Pinned values: a change here re-maps every client of every deployed ring.
        let src = crate::v4_words([192, 0, 2, 1]);
        assert_eq!(source_hash(&src, 4), source_hash(&src, 4));
        let a = source_hash(&src, 4);
        let b = source_hash(&crate::v4_words([192, 0, 2, 2]), 4);
        assert_ne!(a, b);
        assert_eq!(a, GOLDEN_SOURCE);
    }

    const GOLDEN_SOURCE: u32 = 133_476_524;

    #[test]
    fn five_tuple_depends_on_ports() {
        let mut k = FlowKey {
            src: crate::v4_words([192, 0, 2, 1]),
            dst: crate::v4_words([198, 51, 100, 1]),
            sport: 1000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: 4,
            pad: [0; 2],
        };
        let h1 = five_tuple_hash(&k);
        k.sport = 1001u16.to_be();
        assert_ne!(h1, five_tuple_hash(&k));
        assert_eq!(flow_hash(&k, true), source_hash(&k.src, 4));
    }

    #[test]
    fn table_hash_spreads_ports_and_depends_on_the_seed() {
        // 64,000 flows of one client (ports vary) over 256 buckets: each within 30% of the
        // mean of 250 (about 4.7 standard deviations of a uniform spread).
        let mut buckets = [0u32; 256];
        for port in 1_000..65_000u16 {
            let k = FlowKey4 {
                src: u32::from_ne_bytes([192, 0, 2, 1]),
                dst: u32::from_ne_bytes([198, 51, 100, 1]),
                sport: port.to_be(),
                dport: 443u16.to_be(),
                proto: 6,
                pad: [0; 3],
            };
            buckets[(table_hash4(&k, 0x1234_5678) & 255) as usize] += 1;
            assert_ne!(table_hash4(&k, 1), table_hash4(&k, 2));
        }
        for b in buckets {
            assert!((175..=325).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn table_hash_spreads_addresses() {
        // 64,000 client addresses (one port) over 256 buckets, as in the port test.
        let mut buckets = [0u32; 256];
        for i in 0..64_000u32 {
            let k = FlowKey4 {
                src: (0x0a00_0000u32 + i).to_be(),
                dst: u32::from_ne_bytes([198, 51, 100, 1]),
                sport: 40_000u16.to_be(),
                dport: 443u16.to_be(),
                proto: 6,
                pad: [0; 3],
            };
            buckets[(table_hash4(&k, 0x1234_5678) & 255) as usize] += 1;
        }
        for b in buckets {
            assert!((175..=325).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn spreads_evenly_over_buckets() {
        // 40,000 consecutive client addresses over 10 buckets: each within 5% of the mean.
        let mut buckets = [0u32; 10];
        for i in 0..40_000u32 {
            let ip = (0xc000_0200u32 + i).to_be_bytes();
            buckets[(source_hash(&crate::v4_words(ip), 4) % 10) as usize] += 1;
        }
        for b in buckets {
            assert!((3_800..=4_200).contains(&b), "{buckets:?}");
        }
    }
}
