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

/// The L4 checksum after the address part of the pseudo-header changed.
#[inline(always)]
fn pseudo_header_update(check: u16, pkt: &Packet, t: &Translation) -> u16 {
    if pkt.family == FAMILY_V4 {
        let c = csum::replace_u32(check, pkt.src[0], t.src[0]);
        csum::replace_u32(c, pkt.dst[0], t.dst[0])
    } else {
        let c = csum::replace_u128(check, &pkt.src, &t.src);
        csum::replace_u128(c, &pkt.dst, &t.dst)
    }
}

#[inline(always)]
fn ports_update(check: u16, pkt: &Packet, t: &Translation) -> u16 {
    let c = csum::replace_u16(check, pkt.sport, t.sport);
    csum::replace_u16(c, pkt.dport, t.dport)
}

/// Rewrites the packet; false if its headers vanished (cannot happen after parsing).
#[inline(always)]
pub fn apply(ctx: &XdpContext, pkt: &Packet, t: &Translation) -> bool {
    apply_inner(ctx, pkt, t).is_some()
}

#[inline(always)]
fn apply_inner(ctx: &XdpContext, pkt: &Packet, t: &Translation) -> Option<()> {
    if pkt.family == FAMILY_V4 {
        let ip = header::<IPV4_LEN>(ctx, pkt.l3_off as usize)?;
        let mut c: u16 = ip.get(10);
        c = csum::replace_u32(c, pkt.src[0], t.src[0]);
        c = csum::replace_u32(c, pkt.dst[0], t.dst[0]);
        ip.set(10, c);
        ip.set(12, t.src[0]);
        ip.set(16, t.dst[0]);
    } else {
        let ip = header::<IPV6_LEN>(ctx, pkt.l3_off as usize)?;
        ip.set_addr6(8, &t.src);
        ip.set_addr6(24, &t.dst);
    }
    if pkt.proto == PROTO_TCP {
        let tcp = header::<TCP_LEN>(ctx, pkt.l4_off as usize)?;
        let c = ports_update(pseudo_header_update(tcp.get(16), pkt, t), pkt, t);
        tcp.set(0, t.sport);
        tcp.set(2, t.dport);
        tcp.set(16, c);
    } else {
        let udp = header::<UDP_LEN>(ctx, pkt.l4_off as usize)?;
        let old: u16 = udp.get(6);
        udp.set(0, t.sport);
        udp.set(2, t.dport);
        // An IPv4 UDP checksum of zero means "none" and stays none.
        if !(pkt.family == FAMILY_V4 && old == 0) {
            let mut c = ports_update(pseudo_header_update(old, pkt, t), pkt, t);
            // UDP sends a computed zero as all ones (zero means "no checksum").
            if c == 0 {
                c = 0xffff;
            }
            udp.set(6, c);
        }
    }
    Some(())
}
