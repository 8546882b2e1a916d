//! Full-NAT header rewriting with incremental checksum updates (IPv4 header checksum and the
//! TCP/UDP checksum, whose pseudo-header covers both addresses).

use aya_ebpf::programs::XdpContext;
use proxy_common::{csum, FAMILY_V4, PROTO_TCP};

use crate::parse::{header, Packet, IPV4_LEN, IPV6_LEN, TCP_LEN, UDP_LEN};

/// The new addresses and ports of a translated packet (raw network-order values).
pub struct Translation {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
}

/// What the address change adds to a checksum (the IPv4 header's, and through the
/// pseudo-header every L4 checksum).
#[inline(always)]
fn addresses_delta(pkt: &Packet, t: &Translation) -> u32 {
    if pkt.key.family == FAMILY_V4 {
        csum::delta_u32(pkt.key.src[0], t.src[0]) + csum::delta_u32(pkt.key.dst[0], t.dst[0])
    } else {
        addresses_delta6(pkt, t)
    }
}

/// The IPv6 part of `addresses_delta`. Not inlined: sixteen address words spill into stack
/// slots that the IPv4 path would otherwise pay for in every caller's frame. The volatile
/// reads keep LLVM from passing the arrays by value (BPF has no stack arguments).
#[inline(never)]
fn addresses_delta6(pkt: &Packet, t: &Translation) -> u32 {
    let mut sum = 0;
    for i in 0..4 {
        // SAFETY: in-bounds reads of the arguments.
        let (a, b, c, d) = unsafe {
            (
                core::ptr::read_volatile(&pkt.key.src[i]),
                core::ptr::read_volatile(&t.src[i]),
                core::ptr::read_volatile(&pkt.key.dst[i]),
                core::ptr::read_volatile(&t.dst[i]),
            )
        };
        sum += csum::delta_u32(a, b) + csum::delta_u32(c, d);
    }
    sum
}

/// What the whole translation adds to the L4 checksum: addresses and ports. Summed first
/// and folded once, which keeps the dependency chain short.
#[inline(always)]
fn l4_delta(addresses: u32, pkt: &Packet, t: &Translation) -> u32 {
    addresses + csum::delta_u16(pkt.key.sport, t.sport) + csum::delta_u16(pkt.key.dport, t.dport)
}

/// Rewrites the packet; false if its headers vanished (cannot happen after parsing).
#[inline(always)]
pub fn apply(ctx: &XdpContext, pkt: &Packet, t: &Translation) -> bool {
    apply_inner(ctx, pkt, t).is_some()
}

#[inline(always)]
fn apply_inner(ctx: &XdpContext, pkt: &Packet, t: &Translation) -> Option<()> {
    let addresses = addresses_delta(pkt, t);
    if pkt.key.family == FAMILY_V4 {
        let ip = header::<IPV4_LEN>(ctx, pkt.l3_off as usize)?;
        ip.set(10, csum::apply(ip.get(10), addresses));
        ip.set(12, t.src[0]);
        ip.set(16, t.dst[0]);
    } else {
        let ip = header::<IPV6_LEN>(ctx, pkt.l3_off as usize)?;
        ip.set_addr6(8, &t.src);
        ip.set_addr6(24, &t.dst);
    }
    if pkt.key.proto == PROTO_TCP {
        let tcp = header::<TCP_LEN>(ctx, pkt.l4_off as usize)?;
        let c = csum::apply(tcp.get(16), l4_delta(addresses, pkt, t));
        tcp.set(0, t.sport);
        tcp.set(2, t.dport);
        tcp.set(16, c);
    } else {
        let udp = header::<UDP_LEN>(ctx, pkt.l4_off as usize)?;
        let old: u16 = udp.get(6);
        udp.set(0, t.sport);
        udp.set(2, t.dport);
        // An IPv4 UDP checksum of zero means "none" and stays none.
        if !(pkt.key.family == FAMILY_V4 && old == 0) {
            let mut c = csum::apply(old, l4_delta(addresses, pkt, t));
            // UDP sends a computed zero as all ones (zero means "no checksum").
            if c == 0 {
                c = 0xffff;
            }
            udp.set(6, c);
        }
    }
    Some(())
}
