//! Header parsing with verifier-safe bounds checks: each header is bounds-checked once through
//! `header`, and its fields are then read at constant offsets from that same pointer (the
//! verifier only trusts accesses it can relate to the checked pointer).

use aya_ebpf::programs::XdpContext;
use proxy_common::{FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

pub const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const TCP_LEN: usize = 20;
pub const UDP_LEN: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
}

/// A header field type: a plain integer, valid for any bit pattern the packet holds. Sealed:
/// `Header` reads and writes nothing else.
///
/// Every 16- and 32-bit field of the headers parsed here sits at an even offset from the
/// start of the frame (VLAN tags and IPv4 options are multiples of 4 bytes), and frames
/// start at an even address: drivers place them after a 256-byte headroom or at an skb's
/// data, plus NET_IP_ALIGN (0 or 2), which is the layout the verifier itself assumes when
/// it checks packet-access alignment on strict-alignment machines. So fields are accessed in
/// aligned 16-bit halves: one BPF load or store per half, where an unaligned access compiles
/// to one per byte (and on x86-64 and arm64 even an odd frame start would only make these
/// accesses unaligned, which those CPUs and the verifier allow).
pub trait Field: sealed::Sealed + Copy {
    /// Reads the field at `p`.
    ///
    /// # Safety
    /// `p` must be valid for reads of `size_of::<Self>()` bytes and 2-byte aligned when the
    /// field is wider than a byte.
    unsafe fn read_at(p: *const u8) -> Self;
    /// Writes the field at `p`.
    ///
    /// # Safety
    /// As for `read_at`, for writes.
    unsafe fn write_at(self, p: *mut u8);
}

impl Field for u8 {
    #[inline(always)]
    unsafe fn read_at(p: *const u8) -> u8 {
        // SAFETY: the caller's contract.
        unsafe { p.read() }
    }
    #[inline(always)]
    unsafe fn write_at(self, p: *mut u8) {
        // SAFETY: the caller's contract.
        unsafe { p.write(self) }
    }
}

impl Field for u16 {
    #[inline(always)]
    unsafe fn read_at(p: *const u8) -> u16 {
        // SAFETY: the caller's contract (2 bytes, 2-byte aligned).
        unsafe { (p as *const u16).read() }
    }
    #[inline(always)]
    unsafe fn write_at(self, p: *mut u8) {
        // SAFETY: the caller's contract (2 bytes, 2-byte aligned).
        unsafe { (p as *mut u16).write(self) }
    }
}

impl Field for u32 {
    #[inline(always)]
    unsafe fn read_at(p: *const u8) -> u32 {
        // SAFETY: the caller's contract (4 bytes, 2-byte aligned): two aligned halves.
        let (lo, hi) = unsafe { (u16::read_at(p) as u32, u16::read_at(p.add(2)) as u32) };
        // Little-endian target: the first half is the low one in memory order.
        lo | hi << 16
    }
    #[inline(always)]
    unsafe fn write_at(self, p: *mut u8) {
        // SAFETY: as in `read_at`.
        unsafe {
            (self as u16).write_at(p);
            ((self >> 16) as u16).write_at(p.add(2));
        }
    }
}

/// A checked pointer to `N` bytes at `off` into the packet.
#[derive(Clone, Copy)]
pub struct Header<const N: usize>(*mut u8);

impl<const N: usize> Header<N> {
    /// Reads an integer field at a constant offset inside the header. Only scalars: copying
    /// an aggregate makes LLVM call a byte-by-byte `memcpy` the verifier walks per byte.
    #[inline(always)]
    pub fn get<T: Field>(self, off: usize) -> T {
        debug_assert!(off + core::mem::size_of::<T>() <= N);
        // SAFETY: `header` checked that N bytes are inside the packet; alignment as explained
        // at `Field`.
        unsafe { T::read_at(self.0.add(off)) }
    }

    /// Writes an integer field at a constant offset inside the header.
    #[inline(always)]
    pub fn set<T: Field>(self, off: usize, v: T) {
        debug_assert!(off + core::mem::size_of::<T>() <= N);
        // SAFETY: as in `get`; XDP packet memory is writable.
        unsafe { v.write_at(self.0.add(off)) }
    }

    #[inline(always)]
    pub fn get_addr6(self, off: usize) -> [u32; 4] {
        [
            self.get(off),
            self.get(off + 4),
            self.get(off + 8),
            self.get(off + 12),
        ]
    }

    #[inline(always)]
    pub fn set_addr6(self, off: usize, a: &[u32; 4]) {
        self.set(off, a[0]);
        self.set(off + 4, a[1]);
        self.set(off + 8, a[2]);
        self.set(off + 12, a[3]);
    }
}

/// Packet start and end. Volatile loads: otherwise LLVM hoists them out of non-inlined
/// functions into 32-bit arguments, and the verifier forbids arithmetic on `data_end`.
#[inline(always)]
pub fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: ctx.ctx is the kernel-provided xdp_md.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

/// The `N` bytes at `off`, if the packet is long enough.
#[inline(always)]
pub fn header<const N: usize>(ctx: &XdpContext, off: usize) -> Option<Header<N>> {
    let (start, end) = bounds(ctx);
    if start + off + N > end {
        return None;
    }
    Some(Header((start + off) as *mut u8))
}

/// What the data plane needs to know about a TCP or UDP packet.
#[derive(Default)]
pub struct Packet {
    /// The 5-tuple, laid out as the flow tables' key: a client packet's flow is looked up
    /// with this very key, nothing copied.
    pub key: FlowKey,
    /// Header offsets. Bytes: read back from the per-CPU map the packet lives in, a `u8` is
    /// bounded for the verifier, which allows adding it to the packet pointer.
    pub l3_off: u8,
    pub l4_off: u8,
    /// TCP flags byte, 0 for UDP.
    pub tcp_flags: u8,
}

/// Why parsing stopped before a TCP/UDP packet was found.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NotOurs {
    /// Not IPv4/IPv6 (ARP, LLDP...).
    NotIp,
    /// An IPv4 fragment: ports are not in every fragment, so the stack reassembles.
    Fragment,
    /// ICMP, IPv6 extension headers, anything but TCP/UDP.
    OtherProto,
    /// A header is cut short or self-contradictory.
    Malformed,
}

/// Parses into `out` (per-CPU map memory: the parsed packet stays off the 512-byte stack).
/// Inlined: a BPF call and its return cost more than the rest of parsing.
#[inline(always)]
pub fn parse(ctx: &XdpContext, out: &mut Packet) -> Option<NotOurs> {
    match parse_inner(ctx) {
        Ok(p) => {
            *out = p;
            None
        }
        Err(e) => Some(e),
    }
}

#[inline(always)]
fn parse_inner(ctx: &XdpContext) -> Result<Packet, NotOurs> {
    let eth = header::<ETH_LEN>(ctx, 0).ok_or(NotOurs::Malformed)?;
    let mut l3_off = ETH_LEN;
    let mut ethertype: u16 = eth.get(12);
    if ethertype == ETH_P_8021Q {
        let tagged = header::<{ ETH_LEN + 4 }>(ctx, 0).ok_or(NotOurs::Malformed)?;
        ethertype = tagged.get(16);
        l3_off += 4;
    }
    let (family, proto, l4_off, src, dst) = if ethertype == ETH_P_IP {
        parse_ipv4(ctx, l3_off)?
    } else if ethertype == ETH_P_IPV6 {
        parse_ipv6(ctx, l3_off)?
    } else {
        return Err(NotOurs::NotIp);
    };
    let (sport, dport, tcp_flags) = if proto == PROTO_TCP {
        let tcp = header::<TCP_LEN>(ctx, l4_off).ok_or(NotOurs::Malformed)?;
        let doff: u8 = tcp.get(12);
        if (doff >> 4) < 5 {
            return Err(NotOurs::Malformed);
        }
        (tcp.get(0), tcp.get(2), tcp.get(13))
    } else {
        let udp = header::<UDP_LEN>(ctx, l4_off).ok_or(NotOurs::Malformed)?;
        (udp.get(0), udp.get(2), 0)
    };
    Ok(Packet {
        key: FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
            family,
            pad: [0; 2],
        },
        // At most 18 + 60 (VLAN tag, IPv4 options).
        l3_off: l3_off as u8,
        l4_off: l4_off as u8,
        tcp_flags,
    })
}

type L3 = (u8, u8, usize, [u32; 4], [u32; 4]);

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<L3, NotOurs> {
    let ip = header::<IPV4_LEN>(ctx, l3).ok_or(NotOurs::Malformed)?;
    let vihl: u8 = ip.get(0);
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(NotOurs::Malformed);
    }
    let tot_len = u16::from_be(ip.get(2)) as usize;
    let (start, end) = bounds(ctx);
    let pkt_len = end - start;
    if tot_len < ihl * 4 || l3 + tot_len > pkt_len {
        return Err(NotOurs::Malformed);
    }
    // More-fragments flag or a non-zero offset.
    if u16::from_be(ip.get(6)) & 0x3fff != 0 {
        return Err(NotOurs::Fragment);
    }
    let proto: u8 = ip.get(9);
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(NotOurs::OtherProto);
    }
    let src: u32 = ip.get(12);
    let dst: u32 = ip.get(16);
    Ok((
        FAMILY_V4,
        proto,
        l3 + ihl * 4,
        [src, 0, 0, 0],
        [dst, 0, 0, 0],
    ))
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<L3, NotOurs> {
    let ip = header::<IPV6_LEN>(ctx, l3).ok_or(NotOurs::Malformed)?;
    let first: u8 = ip.get(0);
    if first >> 4 != 6 {
        return Err(NotOurs::Malformed);
    }
    let payload_len = u16::from_be(ip.get(4)) as usize;
    let (start, end) = bounds(ctx);
    let pkt_len = end - start;
    if l3 + IPV6_LEN + payload_len > pkt_len {
        return Err(NotOurs::Malformed);
    }
    // Extension headers (fragments included) go to the stack.
    let next: u8 = ip.get(6);
    if next != PROTO_TCP && next != PROTO_UDP {
        return Err(NotOurs::OtherProto);
    }
    Ok((
        FAMILY_V6,
        next,
        l3 + IPV6_LEN,
        ip.get_addr6(8),
        ip.get_addr6(24),
    ))
}

/// Address equality without `bcmp` (a library call the verifier would walk byte by byte).
#[inline(always)]
pub fn same_addr(a: &[u32; 4], b: &[u32; 4]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}
