//! Raw Ethernet frames for XDP fixture tests: build, parse, verify checksums, diff.
//!
//! The load balancer's fixture table feeds exact frames to the XDP program through
//! `BPF_PROG_TEST_RUN` and compares its output with an expected frame byte for byte.
//! Both frames are made with [`PacketBuilder`], so every length and checksum is
//! computed instead of written by hand. [`verify_checksums`] re-checks on its own a
//! frame the program rewrote (full NAT: addresses and ports changed, checksums updated
//! incrementally), and [`hex_diff`] turns a mismatch into a readable failure message.
//!
//! Supported: Ethernet II with at most one 802.1Q tag, IPv4 (options, fragment fields)
//! and IPv6 without extension headers, TCP (no options), UDP, ICMP and ICMPv6, and raw
//! bytes for any other protocol (for example IP-in-IP). Uses std only.
//!
//! ```text
//! use std::net::Ipv4Addr;
//! let ip = Ip::v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 200, 1, 1));
//! let input = PacketBuilder::tcp(ip, 31337, 80, tcp_flags::SYN).payload(b"hi").build();
//! let parsed = parse(&input).unwrap();
//! assert_eq!(parsed.dport, Some(80));
//! verify_checksums(&input).unwrap();
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of an untagged Ethernet II header.
pub const ETH_HEADER_LEN: usize = 14;
/// Extra bytes an 802.1Q tag adds to the Ethernet header.
pub const VLAN_TAG_LEN: usize = 4;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;

const IPV4_HEADER_LEN: usize = 20;
const IPV4_MAX_OPTIONS_LEN: usize = 40;
const IPV6_HEADER_LEN: usize = 40;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const IPV4_FLAG_DF: u16 = 0x4000;
const IPV4_FLAG_MF: u16 = 0x2000;
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;

/// TCP header flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

// ---------------------------------------------------------------------------
// Checksum arithmetic (RFC 1071)
// ---------------------------------------------------------------------------

/// Adds `data` to `acc` as a sequence of big-endian 16-bit words.
///
/// The sum is kept unfolded in a `u64` (it cannot overflow for any real packet) and
/// folded once at the end by [`fold`]. A trailing odd byte counts as the high byte of
/// a word whose low byte is zero, so in a region made of several chunks only the last
/// chunk may have odd length.
fn ones_sum(acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum = acc;
    for word in &mut chunks {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// Folds the carries of an unfolded sum back into 16 bits (end-around carry).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (RFC 1071): the one's complement of the one's
/// complement sum of its 16-bit big-endian words, an odd last byte padded with zero.
///
/// Computed over a header whose checksum field is zero it gives the value to store;
/// computed over a header that already holds a correct checksum it gives 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(ones_sum(0, data))
}

/// Unfolded sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793/768 for IPv4,
/// RFC 8200 section 8.1 for IPv6). `len` is the upper-layer length.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let addrs = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ones_sum(ones_sum(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => ones_sum(ones_sum(0, &s.octets()), &d.octets()),
        _ => unreachable!("pseudo-header with mixed address families"),
    };
    // IPv4 carries a 16-bit length and IPv6 a 32-bit one; as words both add the same.
    let len = len as u64;
    addrs + u64::from(proto) + (len >> 16) + (len & 0xffff)
}

// ---------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------

/// Network layer of a built packet: the address family and both addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ip {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl Ip {
    /// IPv4 addresses; accepts `Ipv4Addr` or `[u8; 4]`.
    pub fn v4(src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>) -> Self {
        Ip::V4 {
            src: src.into(),
            dst: dst.into(),
        }
    }

    /// IPv6 addresses; accepts `Ipv6Addr`, `[u16; 8]` or `[u8; 16]`.
    pub fn v6(src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>) -> Self {
        Ip::V6 {
            src: src.into(),
            dst: dst.into(),
        }
    }

    pub fn src(&self) -> IpAddr {
        match *self {
            Ip::V4 { src, .. } => IpAddr::V4(src),
            Ip::V6 { src, .. } => IpAddr::V6(src),
        }
    }

    pub fn dst(&self) -> IpAddr {
        match *self {
            Ip::V4 { dst, .. } => IpAddr::V4(dst),
            Ip::V6 { dst, .. } => IpAddr::V6(dst),
        }
    }

    pub fn is_v6(&self) -> bool {
        matches!(self, Ip::V6 { .. })
    }
}

/// Transport layer of a built packet. The builder's payload follows its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// 20-byte TCP header, data offset 5, no options; window from the builder.
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP echo request over IPv4 (type 8), ICMPv6 echo request over IPv6 (type 128).
    IcmpEcho {
        id: u16,
        seq: u16,
    },
    /// Any ICMP or ICMPv6 message: type, code and the 4 bytes after the checksum
    /// (e.g. the next-hop MTU of "fragmentation needed"). Checksum is computed.
    Icmp {
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
    },
    /// No transport header: the payload is written verbatim after the IP header and
    /// `proto` goes into the protocol / next-header field. No checksum is computed.
    Raw {
        proto: u8,
    },
}

impl L4 {
    fn header_len(&self) -> usize {
        match self {
            L4::Tcp { .. } => TCP_HEADER_LEN,
            L4::Udp { .. } => UDP_HEADER_LEN,
            L4::IcmpEcho { .. } | L4::Icmp { .. } => ICMP_HEADER_LEN,
            L4::Raw { .. } => 0,
        }
    }

    fn proto(&self, v6: bool) -> u8 {
        match *self {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::IcmpEcho { .. } | L4::Icmp { .. } if v6 => IPPROTO_ICMPV6,
            L4::IcmpEcho { .. } | L4::Icmp { .. } => IPPROTO_ICMP,
            L4::Raw { proto } => proto,
        }
    }
}

/// Describes one Ethernet frame; [`PacketBuilder::build`] turns it into bytes.
///
/// Fields are public so fixture tables can tweak a clone directly; the chainable
/// setters do the same and check their arguments. Fields that only apply to one
/// address family (IPv4 id/options/fragments/IHL, IPv6 flow label) are ignored by
/// the other one.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketBuilder {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// 802.1Q VLAN id (0..=4095); PCP and DEI are written as 0.
    pub vlan: Option<u16>,
    pub ip: Ip,
    pub l4: L4,
    /// Bytes after the transport header (for `L4::Raw`, everything after IP).
    pub payload: Vec<u8>,
    /// IPv4 TTL or IPv6 hop limit. Default 64.
    pub ttl: u8,
    /// IPv4 TOS byte or IPv6 traffic class. Default 0.
    pub tos: u8,
    /// IPv4 identification. Default 0.
    pub ipv4_id: u16,
    /// IPv4 options; zero-padded (End of Option List) to a multiple of 4 on build.
    pub ipv4_options: Vec<u8>,
    /// IPv4 DF flag. Default true.
    pub dont_fragment: bool,
    /// IPv4 MF flag. Default false.
    pub more_fragments: bool,
    /// IPv4 fragment offset in 8-byte units (0..=8191). Default 0.
    pub frag_offset: u16,
    /// Written into the IPv4 IHL nibble instead of the real header length.
    pub ihl_override: Option<u8>,
    /// Write 0 ("no checksum", only legal over IPv4) as the UDP checksum.
    pub udp_zero_checksum: bool,
    /// IPv6 flow label (20 bits). Default 0.
    pub flow_label: u32,
    /// TCP window. Default 65535.
    pub tcp_window: u16,
    /// Written as the TCP/UDP/ICMP checksum instead of the computed one.
    pub l4_checksum_override: Option<u16>,
}

impl PacketBuilder {
    /// A packet with default MACs (02:00:00:00:00:01 -> 02:00:00:00:00:02), no VLAN,
    /// TTL 64, DF set, IPv4 id 0, TCP window 65535 and an empty payload.
    pub fn new(ip: Ip, l4: L4) -> Self {
        PacketBuilder {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            ip,
            l4,
            payload: Vec::new(),
            ttl: 64,
            tos: 0,
            ipv4_id: 0,
            ipv4_options: Vec::new(),
            dont_fragment: true,
            more_fragments: false,
            frag_offset: 0,
            ihl_override: None,
            udp_zero_checksum: false,
            flow_label: 0,
            tcp_window: 65535,
            l4_checksum_override: None,
        }
    }

    /// TCP segment with seq and ack 0 (see [`Self::seq`], [`Self::ack`]).
    pub fn tcp(ip: Ip, sport: u16, dport: u16, flags: u8) -> Self {
        Self::new(
            ip,
            L4::Tcp {
                sport,
                dport,
                flags,
                seq: 0,
                ack: 0,
            },
        )
    }

    pub fn udp(ip: Ip, sport: u16, dport: u16) -> Self {
        Self::new(ip, L4::Udp { sport, dport })
    }

    /// ICMP / ICMPv6 echo request with id 0 and seq 0 (see [`Self::echo_id`], [`Self::seq`]).
    pub fn icmp_echo(ip: Ip) -> Self {
        Self::new(ip, L4::IcmpEcho { id: 0, seq: 0 })
    }

    /// Any ICMP / ICMPv6 message; put the quoted packet, if any, in the payload.
    pub fn icmp(ip: Ip, icmp_type: u8, code: u8, rest: [u8; 4]) -> Self {
        Self::new(
            ip,
            L4::Icmp {
                icmp_type,
                code,
                rest,
            },
        )
    }

    /// IP packet whose payload is written verbatim with protocol number `proto`.
    pub fn raw(ip: Ip, proto: u8) -> Self {
        Self::new(ip, L4::Raw { proto })
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// # Panics
    /// If `id` does not fit in the 12-bit VLAN id.
    pub fn vlan(mut self, id: u16) -> Self {
        assert!(id <= 0x0fff, "VLAN id {id} does not fit in 12 bits");
        self.vlan = Some(id);
        self
    }

    /// Replaces the addresses (and possibly the family), keeping everything else.
    pub fn ip(mut self, ip: Ip) -> Self {
        self.ip = ip;
        self
    }

    pub fn l4(mut self, l4: L4) -> Self {
        self.l4 = l4;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// IPv4 TTL; for IPv6 this is the hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Same field as [`Self::ttl`], named for IPv6 readers.
    pub fn hop_limit(self, hop_limit: u8) -> Self {
        self.ttl(hop_limit)
    }

    /// IPv4 TOS byte or IPv6 traffic class.
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    pub fn ipv4_id(mut self, id: u16) -> Self {
        self.ipv4_id = id;
        self
    }

    /// Raw IPv4 option bytes, zero-padded to 4 bytes on build (IHL grows to match).
    ///
    /// # Panics
    /// If the padded options exceed the 40 bytes IHL can describe.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len() <= IPV4_MAX_OPTIONS_LEN,
            "IPv4 options are {} bytes, at most {IPV4_MAX_OPTIONS_LEN} fit",
            options.len()
        );
        self.ipv4_options = options.to_vec();
        self
    }

    /// Marks the packet as an IPv4 fragment: MF flag and offset in 8-byte units.
    ///
    /// Also clears DF, since a fragment by definition was allowed to be fragmented;
    /// call [`Self::dont_fragment`] afterwards to force it back on. The transport
    /// checksum is still computed over this packet's own bytes; only the first
    /// fragment (offset 0) should normally carry an `L4` header, so use
    /// [`PacketBuilder::raw`] for later fragments.
    ///
    /// # Panics
    /// If `offset` does not fit in 13 bits.
    pub fn fragment(mut self, more_fragments: bool, offset: u16) -> Self {
        assert!(
            offset <= IPV4_FRAG_OFFSET_MASK,
            "fragment offset {offset} does not fit in 13 bits"
        );
        self.more_fragments = more_fragments;
        self.frag_offset = offset;
        self.dont_fragment = false;
        self
    }

    pub fn dont_fragment(mut self, df: bool) -> Self {
        self.dont_fragment = df;
        self
    }

    /// Writes `ihl` into the IPv4 IHL nibble regardless of the real header length,
    /// to make a deliberately malformed packet. Total length still counts the bytes
    /// actually written; the header checksum covers the `ihl * 4` bytes the field
    /// claims (at least 20, at most what the packet holds), so IHL is the only lie.
    ///
    /// # Panics
    /// If `ihl` does not fit in 4 bits.
    pub fn ihl(mut self, ihl: u8) -> Self {
        assert!(ihl <= 0x0f, "IHL {ihl} does not fit in 4 bits");
        self.ihl_override = Some(ihl);
        self
    }

    /// UDP checksum 0, meaning "not computed" over IPv4 (invalid over IPv6).
    pub fn udp_zero_checksum(mut self) -> Self {
        self.udp_zero_checksum = true;
        self
    }

    /// # Panics
    /// If `label` does not fit in 20 bits.
    pub fn flow_label(mut self, label: u32) -> Self {
        assert!(
            label <= 0xfffff,
            "flow label {label:#x} does not fit in 20 bits"
        );
        self.flow_label = label;
        self
    }

    /// Forces the TCP/UDP/ICMP checksum field to `csum` (no effect for `L4::Raw`).
    pub fn l4_checksum(mut self, csum: u16) -> Self {
        self.l4_checksum_override = Some(csum);
        self
    }

    /// # Panics
    /// If the transport is not TCP or UDP.
    pub fn ports(mut self, new_sport: u16, new_dport: u16) -> Self {
        match &mut self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => {
                *sport = new_sport;
                *dport = new_dport;
            }
            other => panic!("PacketBuilder::ports on {other:?}"),
        }
        self
    }

    /// Stores `value` in the transport header field `field` picks, or panics naming
    /// `setter` when the transport has no such field.
    fn set_l4_field<T>(
        mut self,
        setter: &str,
        value: T,
        field: impl FnOnce(&mut L4) -> Option<&mut T>,
    ) -> Self {
        match field(&mut self.l4) {
            Some(slot) => *slot = value,
            None => panic!("PacketBuilder::{setter} on {:?}", self.l4),
        }
        self
    }

    /// # Panics
    /// If the transport is not TCP.
    pub fn flags(self, new_flags: u8) -> Self {
        self.set_l4_field("flags", new_flags, |l4| match l4 {
            L4::Tcp { flags, .. } => Some(flags),
            _ => None,
        })
    }

    /// TCP sequence number, or the ICMP echo sequence number.
    ///
    /// # Panics
    /// If the transport is neither, or an echo sequence number exceeds 16 bits.
    pub fn seq(mut self, new_seq: u32) -> Self {
        match &mut self.l4 {
            L4::Tcp { seq, .. } => *seq = new_seq,
            L4::IcmpEcho { seq, .. } => {
                *seq = u16::try_from(new_seq).expect("ICMP echo seq is 16 bits")
            }
            other => panic!("PacketBuilder::seq on {other:?}"),
        }
        self
    }

    /// # Panics
    /// If the transport is not TCP.
    pub fn ack(self, new_ack: u32) -> Self {
        self.set_l4_field("ack", new_ack, |l4| match l4 {
            L4::Tcp { ack, .. } => Some(ack),
            _ => None,
        })
    }

    /// # Panics
    /// If the transport is not TCP.
    pub fn window(mut self, window: u16) -> Self {
        assert!(
            matches!(self.l4, L4::Tcp { .. }),
            "PacketBuilder::window on {:?}",
            self.l4
        );
        self.tcp_window = window;
        self
    }

    /// # Panics
    /// If the transport is not an ICMP echo.
    pub fn echo_id(self, new_id: u16) -> Self {
        self.set_l4_field("echo_id", new_id, |l4| match l4 {
            L4::IcmpEcho { id, .. } => Some(id),
            _ => None,
        })
    }

    /// The frame as bytes, with every length and checksum filled in.
    ///
    /// # Panics
    /// If the packet is too long for its length fields (65535 bytes of IPv4 total
    /// length, IPv6 payload length or UDP length), or IPv4 options exceed 40 bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.build_into(&mut out);
        out
    }

    /// Like [`Self::build`] but reuses `out` (cleared first), for benchmarks.
    pub fn build_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let l4_len = self.l4.header_len() + self.payload.len();

        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        if let Some(vid) = self.vlan {
            assert!(vid <= 0x0fff, "VLAN id {vid} does not fit in 12 bits");
            push16(out, ETHERTYPE_VLAN);
            push16(out, vid);
        }
        let ethertype = if self.ip.is_v6() {
            ETHERTYPE_IPV6
        } else {
            ETHERTYPE_IPV4
        };
        push16(out, ethertype);

        let l3 = out.len();
        let proto = self.l4.proto(self.ip.is_v6());
        match self.ip {
            Ip::V4 { src, dst } => self.push_ipv4_header(out, src, dst, proto, l4_len),
            Ip::V6 { src, dst } => self.push_ipv6_header(out, src, dst, proto, l4_len),
        }

        let l4 = out.len();
        self.push_l4_header(out, l4_len);
        out.extend_from_slice(&self.payload);

        if let Some((field, csum)) = self.computed_l4_checksum(&out[l4..]) {
            out[l4 + field..l4 + field + 2].copy_from_slice(&csum.to_be_bytes());
        }
        // Last, because a too-large IHL override makes the header checksum cover
        // transport bytes.
        if let Ip::V4 { .. } = self.ip {
            let ihl = usize::from(out[l3] & 0x0f);
            let covered = (ihl * 4).clamp(IPV4_HEADER_LEN, out.len() - l3);
            let csum = internet_checksum(&out[l3..l3 + covered]);
            out[l3 + 10..l3 + 12].copy_from_slice(&csum.to_be_bytes());
        }
    }

    fn push_ipv4_header(
        &self,
        out: &mut Vec<u8>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        l4_len: usize,
    ) {
        let options_len = self.ipv4_options.len().div_ceil(4) * 4;
        assert!(
            options_len <= IPV4_MAX_OPTIONS_LEN,
            "IPv4 options are {options_len} bytes padded, at most {IPV4_MAX_OPTIONS_LEN} fit"
        );
        assert!(
            self.frag_offset <= IPV4_FRAG_OFFSET_MASK,
            "fragment offset {} does not fit in 13 bits",
            self.frag_offset
        );
        let header_len = IPV4_HEADER_LEN + options_len;
        let ihl = match self.ihl_override {
            Some(ihl) => {
                assert!(ihl <= 0x0f, "IHL {ihl} does not fit in 4 bits");
                ihl
            }
            None => (header_len / 4) as u8,
        };
        let total = u16::try_from(header_len + l4_len).expect("IPv4 total length over 65535");
        let mut frag = self.frag_offset;
        if self.dont_fragment {
            frag |= IPV4_FLAG_DF;
        }
        if self.more_fragments {
            frag |= IPV4_FLAG_MF;
        }

        out.push(0x40 | ihl);
        out.push(self.tos);
        push16(out, total);
        push16(out, self.ipv4_id);
        push16(out, frag);
        out.push(self.ttl);
        out.push(proto);
        push16(out, 0); // header checksum, filled in at the end of build
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
        out.extend_from_slice(&self.ipv4_options);
        out.resize(out.len() + options_len - self.ipv4_options.len(), 0);
    }

    fn push_ipv6_header(
        &self,
        out: &mut Vec<u8>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        l4_len: usize,
    ) {
        assert!(
            self.flow_label <= 0xfffff,
            "flow label {:#x} does not fit in 20 bits",
            self.flow_label
        );
        let payload_len = u16::try_from(l4_len).expect("IPv6 payload length over 65535");
        let first_word = (6u32 << 28) | (u32::from(self.tos) << 20) | self.flow_label;
        out.extend_from_slice(&first_word.to_be_bytes());
        push16(out, payload_len);
        out.push(proto);
        out.push(self.ttl);
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
    }

    /// Writes the transport header with a zero checksum.
    fn push_l4_header(&self, out: &mut Vec<u8>, l4_len: usize) {
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => {
                push16(out, sport);
                push16(out, dport);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&ack.to_be_bytes());
                out.push(((TCP_HEADER_LEN / 4) as u8) << 4);
                out.push(flags);
                push16(out, self.tcp_window);
                push16(out, 0); // checksum
                push16(out, 0); // urgent pointer
            }
            L4::Udp { sport, dport } => {
                push16(out, sport);
                push16(out, dport);
                push16(out, u16::try_from(l4_len).expect("UDP length over 65535"));
                push16(out, 0); // checksum
            }
            L4::IcmpEcho { id, seq } => {
                let icmp_type = if self.ip.is_v6() {
                    ICMPV6_ECHO_REQUEST
                } else {
                    ICMP_ECHO_REQUEST
                };
                out.extend_from_slice(&[icmp_type, 0, 0, 0]);
                push16(out, id);
                push16(out, seq);
            }
            L4::Icmp {
                icmp_type,
                code,
                rest,
            } => {
                out.extend_from_slice(&[icmp_type, code, 0, 0]);
                out.extend_from_slice(&rest);
            }
            L4::Raw { .. } => {}
        }
    }

    /// Where the transport checksum goes in `segment` and its value, if it has one.
    fn computed_l4_checksum(&self, segment: &[u8]) -> Option<(usize, u16)> {
        let v6 = self.ip.is_v6();
        let pseudo = || {
            pseudo_header_sum(
                self.ip.src(),
                self.ip.dst(),
                self.l4.proto(v6),
                segment.len(),
            )
        };
        let (field, computed) = match self.l4 {
            L4::Tcp { .. } => (16, !fold(ones_sum(pseudo(), segment))),
            L4::Udp { .. } if self.udp_zero_checksum => (6, 0),
            // A computed 0 is sent as 0xffff, since 0 means "no checksum" (RFC 768).
            L4::Udp { .. } => match !fold(ones_sum(pseudo(), segment)) {
                0 => (6, 0xffff),
                csum => (6, csum),
            },
            // ICMPv6 has a pseudo-header, ICMP for IPv4 does not.
            L4::IcmpEcho { .. } | L4::Icmp { .. } if v6 => (2, !fold(ones_sum(pseudo(), segment))),
            L4::IcmpEcho { .. } | L4::Icmp { .. } => (2, internet_checksum(segment)),
            L4::Raw { .. } => return None,
        };
        Some((field, self.l4_checksum_override.unwrap_or(computed)))
    }
}

fn push16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// The first `len` bytes of `pkt` (all of it if shorter), e.g. to emulate a
/// snapped or truncated frame.
pub fn truncate(pkt: &[u8], len: usize) -> Vec<u8> {
    pkt[..len.min(pkt.len())].to_vec()
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Summary of a parsed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN id of the 802.1Q tag, if any.
    pub vlan: Option<u16>,
    /// Ethertype after any VLAN tag.
    pub ethertype: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 protocol or IPv6 next header.
    pub proto: u8,
    pub ttl_or_hop_limit: u8,
    /// IPv4 MF flag (always false for IPv6).
    pub more_fragments: bool,
    /// IPv4 fragment offset in 8-byte units (always 0 for IPv6).
    pub frag_offset: u16,
    /// TCP/UDP ports; `None` for other protocols and non-first fragments.
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub tcp_flags: Option<u8>,
    /// ICMP/ICMPv6 type and code.
    pub icmp_type_code: Option<(u8, u8)>,
    /// Bytes after the transport header (after the IP header when there is none),
    /// up to the end of the IP packet; Ethernet padding is not included.
    pub payload: Vec<u8>,
}

struct EthView {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
    l3: usize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn parse_eth(frame: &[u8]) -> Result<EthView, String> {
    if frame.len() < ETH_HEADER_LEN {
        return Err(format!(
            "truncated Ethernet header: {} bytes, need {ETH_HEADER_LEN}",
            frame.len()
        ));
    }
    let mut view = EthView {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        vlan: None,
        ethertype: be16(frame, 12),
        l3: ETH_HEADER_LEN,
    };
    if view.ethertype == ETHERTYPE_VLAN {
        if frame.len() < ETH_HEADER_LEN + VLAN_TAG_LEN {
            return Err(format!(
                "truncated 802.1Q tag: {} bytes, need {}",
                frame.len(),
                ETH_HEADER_LEN + VLAN_TAG_LEN
            ));
        }
        view.vlan = Some(be16(frame, 14) & 0x0fff);
        view.ethertype = be16(frame, 16);
        view.l3 = ETH_HEADER_LEN + VLAN_TAG_LEN;
    }
    Ok(view)
}

/// IP version an ethertype announces, or an error for anything else.
fn ip_version(ethertype: u16) -> Result<u8, String> {
    match ethertype {
        ETHERTYPE_IPV4 => Ok(4),
        ETHERTYPE_IPV6 => Ok(6),
        other => Err(format!("unsupported ethertype 0x{other:04x}")),
    }
}

/// An IP packet, with `payload` cut at the length its header declares.
struct IpView<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ttl: u8,
    /// IPv4 header including options, or the fixed IPv6 header.
    header: &'a [u8],
    payload: &'a [u8],
    more_fragments: bool,
    frag_offset: u16,
}

impl IpView<'_> {
    fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }
}

fn parse_ip(pkt: &[u8], version: u8) -> Result<IpView<'_>, String> {
    if version == 4 {
        parse_ipv4(pkt)
    } else {
        parse_ipv6(pkt)
    }
}

fn parse_ipv4(pkt: &[u8]) -> Result<IpView<'_>, String> {
    if pkt.len() < IPV4_HEADER_LEN {
        return Err(format!(
            "truncated IPv4 header: {} bytes, need {IPV4_HEADER_LEN}",
            pkt.len()
        ));
    }
    if pkt[0] >> 4 != 4 {
        return Err(format!("IPv4 version field is {}", pkt[0] >> 4));
    }
    let ihl = usize::from(pkt[0] & 0x0f);
    if ihl < 5 {
        return Err(format!("IPv4 IHL {ihl} is below the minimum of 5"));
    }
    let header_len = ihl * 4;
    if header_len > pkt.len() {
        return Err(format!(
            "truncated IPv4 header: IHL says {header_len} bytes, {} present",
            pkt.len()
        ));
    }
    let total = usize::from(be16(pkt, 2));
    if total < header_len {
        return Err(format!(
            "IPv4 total length {total} is shorter than the {header_len}-byte header"
        ));
    }
    if total > pkt.len() {
        return Err(format!(
            "truncated IPv4 packet: total length {total}, {} bytes present",
            pkt.len()
        ));
    }
    let frag = be16(pkt, 6);
    Ok(IpView {
        src: IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15])),
        dst: IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19])),
        proto: pkt[9],
        ttl: pkt[8],
        header: &pkt[..header_len],
        payload: &pkt[header_len..total],
        more_fragments: frag & IPV4_FLAG_MF != 0,
        frag_offset: frag & IPV4_FRAG_OFFSET_MASK,
    })
}

fn parse_ipv6(pkt: &[u8]) -> Result<IpView<'_>, String> {
    if pkt.len() < IPV6_HEADER_LEN {
        return Err(format!(
            "truncated IPv6 header: {} bytes, need {IPV6_HEADER_LEN}",
            pkt.len()
        ));
    }
    if pkt[0] >> 4 != 6 {
        return Err(format!("IPv6 version field is {}", pkt[0] >> 4));
    }
    let end = IPV6_HEADER_LEN + usize::from(be16(pkt, 4));
    if end > pkt.len() {
        return Err(format!(
            "truncated IPv6 packet: payload length says {end} bytes in all, {} present",
            pkt.len()
        ));
    }
    let addr = |at: usize| -> IpAddr {
        let octets: [u8; 16] = pkt[at..at + 16].try_into().unwrap();
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Ok(IpView {
        src: addr(8),
        dst: addr(24),
        proto: pkt[6],
        ttl: pkt[7],
        header: &pkt[..IPV6_HEADER_LEN],
        payload: &pkt[IPV6_HEADER_LEN..end],
        more_fragments: false,
        frag_offset: 0,
    })
}

#[derive(Default)]
struct L4View {
    sport: Option<u16>,
    dport: Option<u16>,
    tcp_flags: Option<u8>,
    icmp_type_code: Option<(u8, u8)>,
    header_len: usize,
}

fn is_icmp(proto: u8, header: &[u8]) -> bool {
    let v6 = header[0] >> 4 == 6;
    (proto == IPPROTO_ICMP && !v6) || (proto == IPPROTO_ICMPV6 && v6)
}

fn parse_l4(ip: &IpView<'_>) -> Result<L4View, String> {
    // Only the first fragment carries the transport header.
    if ip.frag_offset != 0 {
        return Ok(L4View::default());
    }
    let seg = ip.payload;
    let need = |what: &str, len: usize| {
        if seg.len() < len {
            Err(format!(
                "truncated {what} header: {} bytes, need {len}",
                seg.len()
            ))
        } else {
            Ok(())
        }
    };
    match ip.proto {
        IPPROTO_TCP => {
            need("TCP", TCP_HEADER_LEN)?;
            let data_offset = usize::from(seg[12] >> 4) * 4;
            if data_offset < TCP_HEADER_LEN {
                return Err(format!("TCP data offset {data_offset} is below 20"));
            }
            need("TCP (with options)", data_offset)?;
            Ok(L4View {
                sport: Some(be16(seg, 0)),
                dport: Some(be16(seg, 2)),
                tcp_flags: Some(seg[13]),
                header_len: data_offset,
                ..L4View::default()
            })
        }
        IPPROTO_UDP => {
            need("UDP", UDP_HEADER_LEN)?;
            Ok(L4View {
                sport: Some(be16(seg, 0)),
                dport: Some(be16(seg, 2)),
                header_len: UDP_HEADER_LEN,
                ..L4View::default()
            })
        }
        proto if is_icmp(proto, ip.header) => {
            need("ICMP", ICMP_HEADER_LEN)?;
            Ok(L4View {
                icmp_type_code: Some((seg[0], seg[1])),
                header_len: ICMP_HEADER_LEN,
                ..L4View::default()
            })
        }
        _ => Ok(L4View::default()),
    }
}

/// Parses Ethernet (one optional 802.1Q tag), IPv4 (with options) or IPv6 (no
/// extension headers), and TCP/UDP/ICMP/ICMPv6. Fails on truncated or
/// inconsistent headers and on non-IP ethertypes.
pub fn parse(frame: &[u8]) -> Result<Parsed, String> {
    let eth = parse_eth(frame)?;
    let ip = parse_ip(&frame[eth.l3..], ip_version(eth.ethertype)?)?;
    let l4 = parse_l4(&ip)?;
    Ok(Parsed {
        src_mac: eth.src_mac,
        dst_mac: eth.dst_mac,
        vlan: eth.vlan,
        ethertype: eth.ethertype,
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        ttl_or_hop_limit: ip.ttl,
        more_fragments: ip.more_fragments,
        frag_offset: ip.frag_offset,
        sport: l4.sport,
        dport: l4.dport,
        tcp_flags: l4.tcp_flags,
        icmp_type_code: l4.icmp_type_code,
        payload: ip.payload[l4.header_len..].to_vec(),
    })
}

// ---------------------------------------------------------------------------
// Checksum verification
// ---------------------------------------------------------------------------

/// Recomputes every checksum in the frame: IPv4 header, TCP, UDP (a zero UDP
/// checksum over IPv4 means "none" and is accepted), ICMP and ICMPv6, descending
/// into IP-in-IP (protocols 4 and 41). Returns an error naming the first wrong
/// checksum with the expected and found values.
///
/// A field is accepted when the one's complement sum over its region is 0xffff,
/// i.e. the receiver's check, so both encodings of zero (0x0000 and 0xffff) pass
/// where RFC 1624 incremental updates may produce either. Transport checksums of
/// IPv4 fragments are skipped: they cover the reassembled datagram. Truncated
/// packets are an error, since their checksums cannot be checked.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let eth = parse_eth(frame)?;
    verify_ip(&frame[eth.l3..], ip_version(eth.ethertype)?, "")
}

fn verify_ip(pkt: &[u8], version: u8, ctx: &str) -> Result<(), String> {
    let ip = parse_ip(pkt, version).map_err(|e| format!("{ctx}{e}"))?;
    if version == 4 {
        check_field(ctx, "IPv4 header", 0, ip.header, 10, false)?;
    }
    if ip.is_fragment() {
        return Ok(());
    }
    let seg = ip.payload;
    let pseudo = || pseudo_header_sum(ip.src, ip.dst, ip.proto, seg.len());
    let need = |what: &str, len: usize| {
        if seg.len() < len {
            Err(format!(
                "{ctx}truncated {what} header: {} bytes, need {len}",
                seg.len()
            ))
        } else {
            Ok(())
        }
    };
    match ip.proto {
        IPPROTO_TCP => {
            need("TCP", TCP_HEADER_LEN)?;
            check_field(ctx, "TCP", pseudo(), seg, 16, false)
        }
        IPPROTO_UDP => {
            need("UDP", UDP_HEADER_LEN)?;
            let udp_len = usize::from(be16(seg, 4));
            if udp_len != seg.len() {
                return Err(format!(
                    "{ctx}UDP length field is {udp_len} but the IP payload is {} bytes",
                    seg.len()
                ));
            }
            match (be16(seg, 6), version) {
                (0, 4) => Ok(()),
                (0, _) => Err(format!(
                    "{ctx}UDP checksum is 0 (none), which IPv6 forbids; expected 0x{:04x}",
                    udp_checksum_value(pseudo(), seg)
                )),
                _ => check_field(ctx, "UDP", pseudo(), seg, 6, true),
            }
        }
        IPPROTO_ICMP if version == 4 => {
            need("ICMP", 4)?;
            check_field(ctx, "ICMP", 0, seg, 2, false)
        }
        IPPROTO_ICMPV6 if version == 6 => {
            need("ICMPv6", 4)?;
            check_field(ctx, "ICMPv6", pseudo(), seg, 2, false)
        }
        IPPROTO_IPIP => verify_ip(seg, 4, &format!("{ctx}inner ")),
        IPPROTO_IPV6 => verify_ip(seg, 6, &format!("{ctx}inner ")),
        _ => Ok(()),
    }
}

/// The value a UDP checksum field should hold, given the region with any value in
/// the field already zeroed out of the sum.
fn udp_checksum_value(pseudo: u64, seg: &[u8]) -> u16 {
    let without_field = ones_sum(pseudo, seg) - u64::from(be16(seg, 6));
    match !fold(without_field) {
        0 => 0xffff,
        csum => csum,
    }
}

/// Checks the 16-bit checksum at `region[field..]`, summed with `pseudo`.
fn check_field(
    ctx: &str,
    what: &str,
    pseudo: u64,
    region: &[u8],
    field: usize,
    udp: bool,
) -> Result<(), String> {
    let found = be16(region, field);
    let total = ones_sum(pseudo, region);
    if fold(total) == 0xffff {
        return Ok(());
    }
    let expected = if udp {
        udp_checksum_value(pseudo, region)
    } else {
        // The field is word-aligned, so it entered the sum as exactly one term.
        !fold(total - u64::from(found))
    };
    Err(format!(
        "{ctx}{what} checksum wrong: expected 0x{expected:04x}, found 0x{found:04x}"
    ))
}

// ---------------------------------------------------------------------------
// Diff for failure messages
// ---------------------------------------------------------------------------

/// A readable report of where `got` first differs from `expected`: the offset,
/// the header field there (decoded from `expected`), both byte values, how many
/// bytes differ, and a hex dump of the surrounding rows with `^^` under every
/// differing byte. Says so if the two are identical.
pub fn hex_diff(expected: &[u8], got: &[u8]) -> String {
    const ROW: usize = 16;
    let max_len = expected.len().max(got.len());
    let differs = |i: usize| expected.get(i) != got.get(i);
    let Some(first) = (0..max_len).find(|&i| differs(i)) else {
        return format!("packets are identical ({} bytes)", expected.len());
    };
    let count = (0..max_len).filter(|&i| differs(i)).count();
    let byte = |pkt: &[u8], i: usize| pkt.get(i).map_or("--".to_string(), |b| format!("{b:02x}"));
    let field = describe_offset(expected, first)
        .map(|f| format!(" [{f}]"))
        .unwrap_or_default();

    let mut s = String::new();
    let _ = writeln!(
        s,
        "first difference at offset {first} (0x{first:04x}){field}: expected {}, got {}",
        byte(expected, first),
        byte(got, first)
    );
    let _ = writeln!(
        s,
        "lengths: expected {}, got {}; {count} byte(s) differ",
        expected.len(),
        got.len()
    );
    // One row of context before the first difference and two after.
    let start = (first / ROW).saturating_sub(1) * ROW;
    let end = max_len.min((first / ROW + 3) * ROW);
    for row in (start..end).step_by(ROW) {
        let cols = row..(row + ROW).min(end);
        for (label, pkt) in [("exp", expected), ("got", got)] {
            let _ = write!(s, "  {label} {row:04x}:");
            for i in cols.clone() {
                let _ = write!(s, " {}", byte(pkt, i));
            }
            s.push('\n');
        }
        if cols.clone().any(differs) {
            let mut marks = String::from("           ");
            for i in cols {
                marks.push_str(if differs(i) { " ^^" } else { "   " });
            }
            s.push_str(marks.trim_end());
            s.push('\n');
        }
    }
    s
}

/// Names the header field at `off` in `frame`, decoding leniently so that even a
/// truncated or odd frame gets a best-effort answer.
fn describe_offset(frame: &[u8], off: usize) -> Option<String> {
    let name = |s: &str| Some(s.to_string());
    if off >= frame.len() {
        return name("past the end of the expected frame");
    }
    if off < 6 {
        return name("Ethernet dst MAC");
    }
    if off < 12 {
        return name("Ethernet src MAC");
    }
    let mut ethertype = be16(frame.get(..14)?, 12);
    let mut l3 = ETH_HEADER_LEN;
    if ethertype == ETHERTYPE_VLAN {
        if off < 14 {
            return name("802.1Q TPID");
        }
        if off < 16 {
            return name("802.1Q TCI");
        }
        ethertype = be16(frame.get(..18)?, 16);
        l3 = ETH_HEADER_LEN + VLAN_TAG_LEN;
    }
    if off < l3 {
        return name("ethertype");
    }
    let ip = &frame[l3..];
    let rel = off - l3;
    match ethertype {
        ETHERTYPE_IPV4 => {
            let field = match rel {
                0 => "IPv4 version/IHL",
                1 => "IPv4 TOS",
                2 | 3 => "IPv4 total length",
                4 | 5 => "IPv4 identification",
                6 | 7 => "IPv4 flags/fragment offset",
                8 => "IPv4 TTL",
                9 => "IPv4 protocol",
                10 | 11 => "IPv4 header checksum",
                12..=15 => "IPv4 src address",
                16..=19 => "IPv4 dst address",
                _ => "",
            };
            if !field.is_empty() {
                return name(field);
            }
            let header_len = (usize::from(ip[0] & 0x0f) * 4).max(IPV4_HEADER_LEN);
            if rel < header_len {
                return name("IPv4 options");
            }
            let total = usize::from(be16(ip, 2));
            if rel >= total {
                return name("bytes after the IPv4 packet");
            }
            if be16(ip, 6) & IPV4_FRAG_OFFSET_MASK != 0 {
                return Some(format!("IPv4 fragment payload byte {}", rel - header_len));
            }
            Some(describe_l4(
                ip[9],
                false,
                &ip[header_len..],
                rel - header_len,
            ))
        }
        ETHERTYPE_IPV6 => {
            let field = match rel {
                0..=3 => "IPv6 version/traffic class/flow label",
                4 | 5 => "IPv6 payload length",
                6 => "IPv6 next header",
                7 => "IPv6 hop limit",
                8..=23 => "IPv6 src address",
                24..=39 => "IPv6 dst address",
                _ => "",
            };
            if !field.is_empty() {
                return name(field);
            }
            let end = IPV6_HEADER_LEN + usize::from(be16(ip, 4));
            if rel >= end {
                return name("bytes after the IPv6 packet");
            }
            Some(describe_l4(
                ip[6],
                true,
                &ip[IPV6_HEADER_LEN..],
                rel - IPV6_HEADER_LEN,
            ))
        }
        _ => None,
    }
}

fn describe_l4(proto: u8, v6: bool, seg: &[u8], rel: usize) -> String {
    let field = match proto {
        IPPROTO_TCP => match rel {
            0 | 1 => "TCP src port",
            2 | 3 => "TCP dst port",
            4..=7 => "TCP sequence number",
            8..=11 => "TCP acknowledgment number",
            12 => "TCP data offset",
            13 => "TCP flags",
            14 | 15 => "TCP window",
            16 | 17 => "TCP checksum",
            18 | 19 => "TCP urgent pointer",
            _ => {
                let data_offset = seg
                    .get(12)
                    .map_or(TCP_HEADER_LEN, |b| usize::from(b >> 4) * 4);
                if rel < data_offset {
                    "TCP options"
                } else {
                    return format!("TCP payload byte {}", rel - data_offset);
                }
            }
        },
        IPPROTO_UDP => match rel {
            0 | 1 => "UDP src port",
            2 | 3 => "UDP dst port",
            4 | 5 => "UDP length",
            6 | 7 => "UDP checksum",
            _ => return format!("UDP payload byte {}", rel - UDP_HEADER_LEN),
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 if v6 == (proto == IPPROTO_ICMPV6) => match rel {
            0 => "ICMP type",
            1 => "ICMP code",
            2 | 3 => "ICMP checksum",
            4..=7 => "ICMP header data (echo id/seq)",
            _ => return format!("ICMP payload byte {}", rel - ICMP_HEADER_LEN),
        },
        _ => return format!("IP payload byte {rel} (protocol {proto})"),
    };
    field.to_string()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Ip {
        Ip::v4([10, 0, 0, 1], [10, 200, 1, 1])
    }

    fn v6() -> Ip {
        Ip::v6(
            "fc00::1".parse::<Ipv6Addr>().unwrap(),
            "fc00:2307::1337".parse::<Ipv6Addr>().unwrap(),
        )
    }

    fn ip4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    /// RFC 1624 eqn. 3, word by word: HC' = ~(~HC + ~m + m'). This is what the XDP
    /// program does when it rewrites fields, so the tests use it to emulate NAT.
    fn csum_update(csum: u16, old: &[u8], new: &[u8]) -> u16 {
        assert_eq!(old.len(), new.len());
        let mut sum = u64::from(!csum);
        for (o, n) in old.chunks(2).zip(new.chunks(2)) {
            sum += u64::from(!be16(o, 0)) + u64::from(be16(n, 0));
        }
        !fold(sum)
    }

    /// Overwrites `len` bytes at `at` and patches the checksums at `csum_at`.
    fn rewrite(pkt: &mut [u8], at: usize, new: &[u8], csum_at: &[usize]) {
        let old = pkt[at..at + new.len()].to_vec();
        for &c in csum_at {
            let updated = csum_update(be16(pkt, c), &old, new);
            pkt[c..c + 2].copy_from_slice(&updated.to_be_bytes());
        }
        pkt[at..at + new.len()].copy_from_slice(new);
    }

    #[test]
    fn rfc1071_example_checksum() {
        // RFC 1071 section 3: the words sum to 0xddf2, so the checksum is !0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(ones_sum(0, &data)), 0xddf2);
        assert_eq!(internet_checksum(&data), 0x220d);
    }

    #[test]
    fn well_known_ipv4_header_checksum() {
        // 192.168.0.1 -> 192.168.0.199, UDP, total length 115: checksum 0xb861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&hdr), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(internet_checksum(&hdr), 0);
    }

    #[test]
    fn checksum_edge_cases() {
        assert_eq!(internet_checksum(&[]), 0xffff);
        // An odd last byte is the high half of a zero-padded word.
        assert_eq!(internet_checksum(&[0x01]), 0xfeff);
        assert_eq!(internet_checksum(&[0x12, 0x34, 0x56]), !0x6834);
        // Carries wrap around: 0xffff + 0x0001 = 0x0001 in one's complement.
        assert_eq!(internet_checksum(&[0xff, 0xff, 0x00, 0x01]), !0x0001);
    }

    #[test]
    fn tcp_v4_layout_and_round_trip() {
        let pkt = PacketBuilder::tcp(v4(), 31337, 80, tcp_flags::SYN | tcp_flags::ACK)
            .seq(0x01020304)
            .ack(0x0a0b0c0d)
            .ipv4_id(0x1234)
            .payload(b"katran")
            .build();
        assert_eq!(pkt.len(), 14 + 20 + 20 + 6);
        assert_eq!(&pkt[12..14], &[0x08, 0x00]);
        assert_eq!(pkt[14], 0x45);
        assert_eq!(be16(&pkt, 16), 20 + 20 + 6, "IPv4 total length");
        assert_eq!(be16(&pkt, 18), 0x1234, "IPv4 id");
        assert_eq!(be16(&pkt, 20), 0x4000, "DF only");
        assert_eq!(pkt[22], 64, "default TTL");
        assert_eq!(pkt[23], IPPROTO_TCP);
        assert_eq!(pkt[34 + 12], 0x50, "data offset 5");
        assert_eq!(be16(&pkt, 34 + 14), 65535, "default window");
        assert_eq!(internet_checksum(&pkt[14..34]), 0);

        let p = parse(&pkt).unwrap();
        assert_eq!(p.src_mac, [0x02, 0, 0, 0, 0, 1]);
        assert_eq!(p.dst_mac, [0x02, 0, 0, 0, 0, 2]);
        assert_eq!(p.vlan, None);
        assert_eq!(p.ethertype, ETHERTYPE_IPV4);
        assert_eq!(p.src, ip4([10, 0, 0, 1]));
        assert_eq!(p.dst, ip4([10, 200, 1, 1]));
        assert_eq!(p.proto, IPPROTO_TCP);
        assert_eq!(p.sport, Some(31337));
        assert_eq!(p.dport, Some(80));
        assert_eq!(p.tcp_flags, Some(tcp_flags::SYN | tcp_flags::ACK));
        assert_eq!(p.ttl_or_hop_limit, 64);
        assert_eq!(p.payload, b"katran");
        assert!(!p.more_fragments);
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn tcp_v6_layout_and_round_trip() {
        let pkt = PacketBuilder::tcp(v6(), 1025, 443, tcp_flags::PSH | tcp_flags::ACK)
            .hop_limit(7)
            .tos(0xb8)
            .flow_label(0xabcde)
            .payload(b"odd")
            .build();
        assert_eq!(pkt.len(), 14 + 40 + 20 + 3);
        assert_eq!(&pkt[12..14], &[0x86, 0xdd]);
        assert_eq!(&pkt[14..18], &[0x6b, 0x8a, 0xbc, 0xde]);
        assert_eq!(be16(&pkt, 18), 23, "IPv6 payload length");
        assert_eq!(pkt[20], IPPROTO_TCP);
        assert_eq!(pkt[21], 7);

        let p = parse(&pkt).unwrap();
        assert_eq!(p.src, v6().src());
        assert_eq!(p.dst, v6().dst());
        assert_eq!(p.sport, Some(1025));
        assert_eq!(p.dport, Some(443));
        assert_eq!(p.tcp_flags, Some(tcp_flags::PSH | tcp_flags::ACK));
        assert_eq!(p.ttl_or_hop_limit, 7);
        assert_eq!(p.payload, b"odd");
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn udp_v4_and_v6_round_trip() {
        for ip in [v4(), v6()] {
            let pkt = PacketBuilder::udp(ip, 5353, 53)
                .payload(&[1, 2, 3, 4, 5])
                .build();
            let l4 = if ip.is_v6() { 54 } else { 34 };
            assert_eq!(be16(&pkt, l4 + 4), 13, "UDP length");
            assert_ne!(be16(&pkt, l4 + 6), 0, "UDP checksum present");
            let p = parse(&pkt).unwrap();
            assert_eq!(p.proto, IPPROTO_UDP);
            assert_eq!((p.sport, p.dport), (Some(5353), Some(53)));
            assert_eq!(p.tcp_flags, None);
            assert_eq!(p.payload, [1, 2, 3, 4, 5]);
            verify_checksums(&pkt).unwrap();
        }
    }

    #[test]
    fn udp_zero_checksum_accepted_over_ipv4_only() {
        let pkt = PacketBuilder::udp(v4(), 1, 2)
            .payload(b"x")
            .udp_zero_checksum()
            .build();
        assert_eq!(be16(&pkt, 34 + 6), 0);
        verify_checksums(&pkt).unwrap();

        let pkt = PacketBuilder::udp(v6(), 1, 2)
            .payload(b"x")
            .udp_zero_checksum()
            .build();
        let err = verify_checksums(&pkt).unwrap_err();
        assert!(err.contains("UDP checksum is 0"), "{err}");
    }

    #[test]
    fn udp_computed_zero_checksum_is_sent_as_ffff() {
        // With a zero payload word the checksum is c; making that word c brings the
        // sum to 0xffff, so the computed checksum becomes 0 and must go out as 0xffff.
        let probe = PacketBuilder::udp(v4(), 1000, 2000)
            .payload(&[0, 0])
            .build();
        let c = be16(&probe, 34 + 6);
        let pkt = PacketBuilder::udp(v4(), 1000, 2000)
            .payload(&c.to_be_bytes())
            .build();
        assert_eq!(be16(&pkt, 34 + 6), 0xffff);
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn vlan_tag_round_trip() {
        let pkt = PacketBuilder::udp(v4(), 1, 2)
            .vlan(0xabc)
            .macs([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
            .build();
        assert_eq!(&pkt[0..6], &[7, 8, 9, 10, 11, 12]);
        assert_eq!(&pkt[6..12], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&pkt[12..18], &[0x81, 0x00, 0x0a, 0xbc, 0x08, 0x00]);
        assert_eq!(pkt.len(), 18 + 20 + 8);
        let p = parse(&pkt).unwrap();
        assert_eq!(p.vlan, Some(0xabc));
        assert_eq!(p.ethertype, ETHERTYPE_IPV4);
        assert_eq!(p.src_mac, [1, 2, 3, 4, 5, 6]);
        assert_eq!(p.dport, Some(2));
        verify_checksums(&pkt).unwrap();

        let pkt = PacketBuilder::tcp(v6(), 1, 2, 0).vlan(5).build();
        assert_eq!(&pkt[12..18], &[0x81, 0x00, 0x00, 0x05, 0x86, 0xdd]);
        assert_eq!(parse(&pkt).unwrap().vlan, Some(5));
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn ipv4_options_set_ihl_and_are_padded() {
        // Router Alert (4 bytes): IHL 6.
        let pkt = PacketBuilder::tcp(v4(), 1, 2, tcp_flags::SYN)
            .ipv4_options(&[0x94, 0x04, 0x00, 0x00])
            .payload(b"p")
            .build();
        assert_eq!(pkt[14], 0x46);
        assert_eq!(be16(&pkt, 16), 24 + 20 + 1);
        let p = parse(&pkt).unwrap();
        assert_eq!((p.sport, p.dport), (Some(1), Some(2)));
        assert_eq!(p.payload, b"p");
        verify_checksums(&pkt).unwrap();

        // Five bytes pad to eight: IHL 7, padding is zero (End of Option List).
        let pkt = PacketBuilder::udp(v4(), 3, 4)
            .ipv4_options(&[1, 1, 1, 1, 1])
            .build();
        assert_eq!(pkt[14], 0x47);
        assert_eq!(&pkt[34..42], &[1, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(parse(&pkt).unwrap().dport, Some(4));
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn ihl_override_is_the_only_lie() {
        let pkt = PacketBuilder::tcp(v4(), 1, 2, 0).ihl(6).build();
        assert_eq!(pkt[14], 0x46);
        assert_eq!(be16(&pkt, 16), 40, "total length counts real bytes");
        // The header checksum is right for the 24 bytes IHL claims...
        assert_eq!(internet_checksum(&pkt[14..38]), 0);
        // ...but the transport header is then misplaced.
        assert!(verify_checksums(&pkt).is_err());

        let pkt = PacketBuilder::tcp(v4(), 1, 2, 0).ihl(4).build();
        assert_eq!(pkt[14], 0x44);
        let err = parse(&pkt).unwrap_err();
        assert!(err.contains("IHL 4"), "{err}");
    }

    #[test]
    fn fragments() {
        let first = PacketBuilder::udp(v4(), 1111, 2222)
            .payload(&[0xaa; 16])
            .fragment(true, 0)
            .ipv4_id(77)
            .build();
        assert_eq!(be16(&first, 20), 0x2000, "MF set, DF cleared, offset 0");
        let p = parse(&first).unwrap();
        assert!(p.more_fragments);
        assert_eq!(p.frag_offset, 0);
        assert_eq!((p.sport, p.dport), (Some(1111), Some(2222)));

        let later = PacketBuilder::raw(v4(), IPPROTO_UDP)
            .payload(&[0xbb; 8])
            .fragment(false, 3)
            .build();
        assert_eq!(be16(&later, 20), 0x0003);
        let p = parse(&later).unwrap();
        assert!(!p.more_fragments);
        assert_eq!(p.frag_offset, 3);
        assert_eq!(p.proto, IPPROTO_UDP);
        assert_eq!((p.sport, p.dport), (None, None));
        assert_eq!(p.payload, [0xbb; 8]);

        let df_forced = PacketBuilder::tcp(v4(), 1, 2, 0)
            .fragment(true, 0x1fff)
            .dont_fragment(true)
            .build();
        assert_eq!(be16(&df_forced, 20), 0x7fff);

        // Only the IPv4 header checksum can be checked on a fragment.
        verify_checksums(&first).unwrap();
        verify_checksums(&later).unwrap();
        let mut bad = later.clone();
        bad[22] ^= 1;
        assert!(verify_checksums(&bad).unwrap_err().contains("IPv4 header"));
    }

    #[test]
    fn icmp_echo_v4_and_v6() {
        let pkt = PacketBuilder::icmp_echo(v4())
            .echo_id(0x4242)
            .seq(7)
            .payload(b"ping")
            .build();
        assert_eq!(pkt[23], IPPROTO_ICMP);
        assert_eq!(&pkt[34..36], &[8, 0]);
        assert_eq!(be16(&pkt, 38), 0x4242);
        assert_eq!(be16(&pkt, 40), 7);
        assert_eq!(
            internet_checksum(&pkt[34..]),
            0,
            "no pseudo-header for ICMPv4"
        );
        let p = parse(&pkt).unwrap();
        assert_eq!(p.icmp_type_code, Some((8, 0)));
        assert_eq!(p.sport, None);
        assert_eq!(p.payload, b"ping");
        verify_checksums(&pkt).unwrap();

        let pkt = PacketBuilder::icmp_echo(v6()).payload(b"ping6").build();
        assert_eq!(pkt[20], IPPROTO_ICMPV6);
        assert_eq!(pkt[54], 128);
        let p = parse(&pkt).unwrap();
        assert_eq!(p.icmp_type_code, Some((128, 0)));
        assert_eq!(p.payload, b"ping6");
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn icmp_with_quoted_packet() {
        // "Fragmentation needed" quoting the start of an earlier packet.
        let quoted = PacketBuilder::tcp(v4(), 1, 2, 0).build()[14..42].to_vec();
        let pkt = PacketBuilder::icmp(Ip::v4([10, 0, 0, 254], [10, 0, 0, 1]), 3, 4, [0, 0, 5, 220])
            .payload(&quoted)
            .build();
        let p = parse(&pkt).unwrap();
        assert_eq!(p.icmp_type_code, Some((3, 4)));
        assert_eq!(p.payload, quoted);
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn verify_rejects_flipped_tcp_payload_byte() {
        let mut pkt = PacketBuilder::tcp(v4(), 1, 2, tcp_flags::ACK)
            .payload(b"hello")
            .build();
        let last = pkt.len() - 1;
        pkt[last] ^= 0x20;
        let err = verify_checksums(&pkt).unwrap_err();
        assert!(err.starts_with("TCP checksum wrong"), "{err}");
        assert!(
            err.contains("expected 0x") && err.contains("found 0x"),
            "{err}"
        );
    }

    #[test]
    fn verify_rejects_flipped_ipv4_header_byte() {
        let mut pkt = PacketBuilder::udp(v4(), 1, 2).build();
        pkt[14 + 8] = 63; // TTL changed without fixing the checksum
        let err = verify_checksums(&pkt).unwrap_err();
        assert!(err.starts_with("IPv4 header checksum wrong"), "{err}");
    }

    #[test]
    fn verify_rejects_wrong_udpv6_checksum() {
        let good = PacketBuilder::udp(v6(), 1, 2).payload(b"data").build();
        let csum = be16(&good, 54 + 6);
        let bad = PacketBuilder::udp(v6(), 1, 2)
            .payload(b"data")
            .l4_checksum(csum ^ 0x0100)
            .build();
        let err = verify_checksums(&bad).unwrap_err();
        assert_eq!(
            err,
            format!(
                "UDP checksum wrong: expected 0x{csum:04x}, found 0x{:04x}",
                csum ^ 0x0100
            )
        );
    }

    #[test]
    fn verify_reports_udp_length_mismatch() {
        let mut pkt = PacketBuilder::udp(v4(), 1, 2).payload(b"abc").build();
        pkt[34 + 5] += 1;
        let err = verify_checksums(&pkt).unwrap_err();
        assert!(err.contains("UDP length field is 12"), "{err}");
    }

    #[test]
    fn verify_accepts_both_zero_encodings() {
        // Incremental updates may leave 0xffff where a fresh computation gives 0x0000.
        let mut data = vec![0u8; 20];
        data[0] = 0xff;
        data[1] = 0xff;
        // The sum without the checksum field is 0xffff, so the checksum is 0x0000.
        let region_sum = fold(ones_sum(0, &data));
        assert_eq!(region_sum, 0xffff);
        check_field("", "test", 0, &data, 10, false).unwrap();
        data[10] = 0xff;
        data[11] = 0xff;
        check_field("", "test", 0, &data, 10, false).unwrap();
    }

    #[test]
    fn full_nat_rewrite_with_incremental_updates_verifies() {
        // Client -> VIP, rewritten by the LB to LB address -> backend.
        let input = PacketBuilder::tcp(v4(), 31337, 80, tcp_flags::ACK)
            .seq(42)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        let expected = PacketBuilder::tcp(
            Ip::v4([10, 0, 13, 37], [10, 0, 0, 2]),
            40001,
            8080,
            tcp_flags::ACK,
        )
        .seq(42)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
        .build();

        let mut got = input.clone();
        let (ip_csum, tcp_csum) = (14 + 10, 34 + 16);
        rewrite(&mut got, 14 + 12, &[10, 0, 13, 37], &[ip_csum, tcp_csum]);
        rewrite(&mut got, 14 + 16, &[10, 0, 0, 2], &[ip_csum, tcp_csum]);
        rewrite(&mut got, 34, &40001u16.to_be_bytes(), &[tcp_csum]);
        rewrite(&mut got, 36, &8080u16.to_be_bytes(), &[tcp_csum]);
        verify_checksums(&got).unwrap();
        assert_eq!(got, expected, "{}", hex_diff(&expected, &got));

        // A rewrite that forgets the ports in the TCP checksum is caught.
        let mut buggy = input.clone();
        rewrite(&mut buggy, 14 + 12, &[10, 0, 13, 37], &[ip_csum, tcp_csum]);
        rewrite(&mut buggy, 34, &40001u16.to_be_bytes(), &[]);
        assert!(verify_checksums(&buggy)
            .unwrap_err()
            .starts_with("TCP checksum wrong"));
    }

    #[test]
    fn full_nat_rewrite_udp_v6_verifies() {
        let new_ip = Ip::v6(
            "fc00:1::1".parse::<Ipv6Addr>().unwrap(),
            "fc00:2::2".parse::<Ipv6Addr>().unwrap(),
        );
        let input = PacketBuilder::udp(v6(), 5000, 53).payload(b"q").build();
        let expected = PacketBuilder::udp(new_ip, 6000, 5353).payload(b"q").build();
        let mut got = input.clone();
        let udp_csum = 54 + 6;
        if let Ip::V6 { src, dst } = new_ip {
            rewrite(&mut got, 22, &src.octets(), &[udp_csum]);
            rewrite(&mut got, 38, &dst.octets(), &[udp_csum]);
        }
        rewrite(&mut got, 54, &6000u16.to_be_bytes(), &[udp_csum]);
        rewrite(&mut got, 56, &5353u16.to_be_bytes(), &[udp_csum]);
        verify_checksums(&got).unwrap();
        assert_eq!(got, expected, "{}", hex_diff(&expected, &got));
    }

    #[test]
    fn ip_in_ip_is_verified_recursively() {
        let inner = PacketBuilder::tcp(v4(), 1, 2, tcp_flags::SYN)
            .payload(b"in")
            .build();
        let outer_ip = Ip::v4([172, 16, 0, 1], [172, 16, 0, 2]);
        let pkt = PacketBuilder::raw(outer_ip, IPPROTO_IPIP)
            .payload(&inner[14..])
            .build();
        let p = parse(&pkt).unwrap();
        assert_eq!(p.proto, IPPROTO_IPIP);
        assert_eq!(p.payload, &inner[14..]);
        verify_checksums(&pkt).unwrap();

        let mut bad = pkt.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let err = verify_checksums(&bad).unwrap_err();
        assert!(err.starts_with("inner TCP checksum wrong"), "{err}");

        let inner6 = PacketBuilder::udp(v6(), 1, 2).build();
        let pkt = PacketBuilder::raw(
            Ip::v6([0xfc00, 0, 0, 0, 0, 0, 0, 9], [0xfc00, 0, 0, 0, 0, 0, 0, 8]),
            IPPROTO_IPV6,
        )
        .payload(&inner6[14..])
        .build();
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn raw_payload_is_verbatim() {
        let pkt = PacketBuilder::raw(v6(), 253).payload(&[9, 8, 7]).build();
        assert_eq!(&pkt[54..], &[9, 8, 7]);
        let p = parse(&pkt).unwrap();
        assert_eq!(p.proto, 253);
        assert_eq!(p.payload, [9, 8, 7]);
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut pkt = PacketBuilder::udp(v4(), 1, 2).build();
        pkt.resize(60, 0); // minimum Ethernet frame size
        let p = parse(&pkt).unwrap();
        assert!(p.payload.is_empty());
        verify_checksums(&pkt).unwrap();
    }

    #[test]
    fn truncate_and_truncated_packets() {
        let pkt = PacketBuilder::tcp(v4(), 1, 2, 0).payload(&[0; 10]).build();
        let short = truncate(&pkt, 40);
        assert_eq!(short, &pkt[..40]);
        assert_eq!(truncate(&pkt, 1000), pkt);
        assert!(truncate(&pkt, 0).is_empty());

        let err = parse(&short).unwrap_err();
        assert!(err.contains("truncated IPv4 packet"), "{err}");
        assert!(verify_checksums(&short).is_err());
        assert!(parse(&truncate(&pkt, 10)).unwrap_err().contains("Ethernet"));
        let v6pkt = PacketBuilder::udp(v6(), 1, 2).build();
        assert!(parse(&truncate(&v6pkt, 50)).unwrap_err().contains("IPv6"));
    }

    #[test]
    fn parse_rejects_non_ip_and_bad_version() {
        let mut arp = vec![0xff; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert!(parse(&arp).unwrap_err().contains("0x0806"));
        assert!(verify_checksums(&arp).is_err());

        let mut pkt = PacketBuilder::udp(v4(), 1, 2).build();
        pkt[14] = 0x65;
        assert!(parse(&pkt).unwrap_err().contains("version"));
    }

    #[test]
    fn hex_diff_points_at_first_difference() {
        let expected = PacketBuilder::tcp(v4(), 1, 2, 0).build();
        assert_eq!(
            hex_diff(&expected, &expected),
            "packets are identical (54 bytes)"
        );

        let mut got = expected.clone();
        got[30] ^= 0xff; // first byte of the IPv4 destination address
        got[50] ^= 0x01; // TCP checksum
        let report = hex_diff(&expected, &got);
        let first_line = report.lines().next().unwrap();
        assert_eq!(
            first_line,
            "first difference at offset 30 (0x001e) [IPv4 dst address]: expected 0a, got f5"
        );
        assert!(report.contains("2 byte(s) differ"), "{report}");
        // The marker sits under column 14 of row 0x0010.
        let got_row = report
            .lines()
            .position(|l| l.starts_with("  got 0010:"))
            .unwrap();
        let marks = report.lines().nth(got_row + 1).unwrap();
        assert_eq!(marks.find("^^"), Some(11 + 14 * 3 + 1));
        assert_eq!(marks.matches("^^").count(), 1);
    }

    #[test]
    fn hex_diff_reports_length_mismatch() {
        let expected = PacketBuilder::udp(v4(), 1, 2).payload(b"abcd").build();
        let got = truncate(&expected, expected.len() - 2);
        let report = hex_diff(&expected, &got);
        assert!(
            report.starts_with(
                "first difference at offset 44 (0x002c) [UDP payload byte 2]: expected 63, got --"
            ),
            "{report}"
        );
        assert!(
            report.contains("lengths: expected 46, got 44; 2 byte(s) differ"),
            "{report}"
        );
    }

    #[test]
    fn describe_offset_names_fields() {
        let pkt = PacketBuilder::tcp(v6(), 1, 2, 0)
            .vlan(3)
            .payload(b"xy")
            .build();
        assert_eq!(describe_offset(&pkt, 0).unwrap(), "Ethernet dst MAC");
        assert_eq!(describe_offset(&pkt, 14).unwrap(), "802.1Q TCI");
        assert_eq!(describe_offset(&pkt, 16).unwrap(), "ethertype");
        assert_eq!(describe_offset(&pkt, 18 + 7).unwrap(), "IPv6 hop limit");
        assert_eq!(describe_offset(&pkt, 58 + 16).unwrap(), "TCP checksum");
        assert_eq!(
            describe_offset(&pkt, 58 + 21).unwrap(),
            "TCP payload byte 1"
        );
    }

    #[test]
    #[should_panic(expected = "VLAN id")]
    fn vlan_id_out_of_range_panics() {
        let _ = PacketBuilder::udp(v4(), 1, 2).vlan(4096);
    }

    #[test]
    #[should_panic(expected = "PacketBuilder::window")]
    fn tcp_only_setter_on_udp_panics() {
        let _ = PacketBuilder::udp(v4(), 1, 2).window(1);
    }
}
