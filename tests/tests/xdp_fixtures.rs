//! Katran-style fixture table for the XDP data plane, run through BPF_PROG_TEST_RUN.
//!
//! Each case feeds one exact Ethernet frame to the loaded program and compares the verdict and
//! the whole output frame byte for byte with an expected frame. Expected frames are built with
//! `PacketBuilder` from the header values the program must produce (backend chosen from the
//! Maglev ring the test wrote, NAT port from the backend's port space in rotating order, MACs from the
//! permanent neighbour entries below); nothing is copied from the program's output. Every
//! rewritten frame must also pass `verify_checksums`. Per case the test also checks that
//! exactly one `REASONS` slot moved (the expected one) and the exact change of the
//! `COUNTERS` of every VIP and backend in the setup.
//!
//! **The table is ordered and stateful.** All cases run in order against one loaded program
//! and one set of maps. Stateless cases (parsing, pass/drop rules) come first; after them come
//! sequences in which a case relies on flows pinned by earlier cases, e.g. "flow A: ACK (LRU
//! hit)" needs "flow A: SYN" to have run. A case may carry control-plane changes (`before`)
//! that are applied just before its packet (ring rewrite, backend removal). Do not reorder
//! the stateful part or run a case on its own.
//!
//! Topology, in a namespace `pxt<pid>-fix` (deleted on drop, also on panic):
//!
//! ```text
//!   clients 192.0.2.10/.11, 2001:db8:c::10        backends 198.51.100.11.., 2001:db8:b::11..
//!        (permanent neigh)                                 (permanent neigh)
//!   cli0p <--veth--> cli0 192.0.2.1/24          bk0 198.51.100.1/24 <--veth--> bk0p
//!                         2001:db8:c::1/64          2001:db8:b::1/64
//! ```
//!
//! Client packets enter on `cli0`, backend replies on `bk0` (the test-run context's
//! `ingress_ifindex`); the program's `bpf_fib_lookup` resolves against this namespace because
//! the test runs on a thread that `setns`ed into it. Nothing has a route out of the namespace.
//! Settings: SNAT 198.51.100.1 / 2001:db8:b::1, NAT ports 20000..=29999, TCP idle 300 s, UDP
//! idle 30 s, and `closing_timeout_ticks = 0` so that the closing state (FIN both ways) is
//! observable: the next client packet after both FINs finds its flow expired.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use proxy::{
    balancer::addr_words,
    ebpf::{test_run::run_xdp, CounterTotals, DataPlane, LoadOptions},
    maglev::{MaglevRing, RingDelta},
};
use proxy_common::{
    backend_counter_index, hash, FlowKey, Reason, Settings, EMPTY_SLOT, PROTO_TCP, PROTO_UDP,
    VIP_HASH_SOURCE_ONLY, VIP_PASS_TO_STACK,
};
use proxy_tests::{
    fixture::{
        fmt_mac, lab_neighbours, neighbour_args, ring_members, test_run_unsupported,
        write_lab_maps, xdp, Fixture, LabBackend, LabVip, PinDir, Side, BK_DEV, BK_DEV_MAC,
        BK_PEER, CLI_DEV, CLI_DEV_MAC, CLI_PEER,
    },
    netns::{ifindex, run_in, unique_prefix, veth_pair, NetNs},
    packet::{tcp_flags, truncate, Ip, PacketBuilder, IPPROTO_TCP, IPPROTO_UDP},
};

// ---------------------------------------------------------------------------
// Setup: devices, addresses, neighbours, VIPs, backends
// ---------------------------------------------------------------------------

const RING_SIZE: u32 = 251;
const NAT_PORT_MIN: u16 = 20_000;
const NAT_PORT_MAX: u16 = 29_999;

const CLI_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x02];
const BK_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x02];

const SNAT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SNAT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);

const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const CLIENT4B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10));
const CLIENTS: [(IpAddr, [u8; 6]); 3] = [
    (CLIENT4, [0x02, 0xcc, 0, 0, 0, 0x10]),
    (CLIENT4B, [0x02, 0xcc, 0, 0, 0, 0x11]),
    (CLIENT6, [0x02, 0xcc, 0, 0, 0x06, 0x10]),
];

fn client_mac(addr: IpAddr) -> [u8; 6] {
    CLIENTS
        .iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, m)| *m)
        .unwrap_or_else(|| panic!("{addr} is not a test client"))
}

const fn b4(id: u32, o: [u8; 4], port: u16, mac: Option<[u8; 6]>, side: Side) -> LabBackend {
    LabBackend {
        id,
        addr: IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3])),
        port,
        mac,
        side,
    }
}

const fn b6(id: u32, last: u16, port: u16, mac: [u8; 6]) -> LabBackend {
    LabBackend {
        id,
        addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, last)),
        port,
        mac: Some(mac),
        side: Side::Backend,
    }
}

const fn mac(last: u8) -> [u8; 6] {
    [0x02, 0xbb, 0, 0, 0, last]
}

static BACKENDS: [LabBackend; 12] = [
    b4(1, [198, 51, 100, 11], 8080, Some(mac(0x11)), Side::Backend),
    b4(2, [198, 51, 100, 12], 8080, Some(mac(0x12)), Side::Backend),
    b4(3, [198, 51, 100, 13], 8080, Some(mac(0x13)), Side::Backend),
    b4(10, [198, 51, 100, 11], 5353, Some(mac(0x11)), Side::Backend),
    b4(11, [198, 51, 100, 12], 5353, Some(mac(0x12)), Side::Backend),
    b6(20, 0x11, 8080, [0x02, 0xbb, 0, 0, 0x06, 0x11]),
    b6(21, 0x12, 8080, [0x02, 0xbb, 0, 0, 0x06, 0x12]),
    b6(22, 0x13, 5353, [0x02, 0xbb, 0, 0, 0x06, 0x13]),
    // One-armed: reachable through the client-facing device, so forwarding is XDP_TX.
    b4(
        30,
        [192, 0, 2, 100],
        8080,
        Some([0x02, 0xcc, 0, 0, 0x01, 0]),
        Side::Client,
    ),
    // Routed (198.51.100.0/24 is connected) but no neighbour entry.
    b4(31, [198, 51, 100, 99], 8080, None, Side::Backend),
    b4(40, [198, 51, 100, 14], 8080, Some(mac(0x14)), Side::Backend),
    b4(41, [198, 51, 100, 15], 8080, Some(mac(0x15)), Side::Backend),
];

fn backend(id: u32) -> &'static LabBackend {
    BACKENDS
        .iter()
        .find(|b| b.id == id)
        .unwrap_or_else(|| panic!("no backend {id}"))
}

const V4_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const V6_VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);

const fn vip6(num: u32, port: u16, proto: u8, m: &'static [u32]) -> LabVip {
    LabVip {
        num,
        addr: IpAddr::V6(V6_VIP),
        port,
        proto,
        flags: 0,
        members: m,
    }
}

static TCP4: LabVip = LabVip::v4(0, 10, 80, PROTO_TCP, 0, &[1, 2]);
static UDP4: LabVip = LabVip::v4(1, 10, 53, PROTO_UDP, 0, &[10, 11]);
static TCP6: LabVip = vip6(2, 80, PROTO_TCP, &[20, 21]);
static UDP6: LabVip = vip6(3, 53, PROTO_UDP, &[22]);
static TERMINATED: LabVip = LabVip::v4(4, 10, 443, PROTO_TCP, VIP_PASS_TO_STACK, &[]);
static SOURCE_HASH: LabVip = LabVip::v4(5, 11, 80, PROTO_TCP, VIP_HASH_SOURCE_ONLY, &[1, 2, 3]);
static ONE_ARMED: LabVip = LabVip::v4(6, 12, 80, PROTO_TCP, 0, &[30]);
static NO_NEIGH: LabVip = LabVip::v4(7, 13, 80, PROTO_TCP, 0, &[31]);
static EMPTY_RING: LabVip = LabVip::v4(8, 14, 80, PROTO_TCP, 0, &[]);
static RING_CHANGE: LabVip = LabVip::v4(9, 15, 80, PROTO_TCP, 0, &[1]);
static REMOVAL: LabVip = LabVip::v4(10, 16, 80, PROTO_TCP, 0, &[40]);
static MISMATCH: LabVip = LabVip::v4(11, 17, 80, PROTO_TCP, 0, &[20]);
static WITHDRAWN: LabVip = LabVip::v4(12, 18, 80, PROTO_TCP, 0, &[41]);

static VIPS: [&LabVip; 13] = [
    &TCP4,
    &UDP4,
    &TCP6,
    &UDP6,
    &TERMINATED,
    &SOURCE_HASH,
    &ONE_ARMED,
    &NO_NEIGH,
    &EMPTY_RING,
    &RING_CHANGE,
    &REMOVAL,
    &MISMATCH,
    &WITHDRAWN,
];

fn ip(src: IpAddr, dst: IpAddr) -> Ip {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ip::v4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ip::v6(s, d),
        _ => panic!("mixed address families {src} -> {dst}"),
    }
}

fn snat_for(addr: IpAddr) -> IpAddr {
    if addr.is_ipv4() {
        IpAddr::V4(SNAT4)
    } else {
        IpAddr::V6(SNAT6)
    }
}

fn settings() -> Settings {
    proxy_tests::fixture::lab_settings((NAT_PORT_MIN, NAT_PORT_MAX), SNAT4, SNAT6)
}

/// Creates the namespace with both veth pairs, addresses, routes and neighbours.
fn build_namespace() -> anyhow::Result<NetNs> {
    let ns = NetNs::new("fix")?;
    veth_pair(&ns, CLI_DEV, &ns, CLI_PEER)?;
    veth_pair(&ns, BK_DEV, &ns, BK_PEER)?;
    for (dev, mac) in [
        (CLI_DEV, CLI_DEV_MAC),
        (CLI_PEER, CLI_PEER_MAC),
        (BK_DEV, BK_DEV_MAC),
        (BK_PEER, BK_PEER_MAC),
    ] {
        ns.ip(&["link", "set", dev, "address", &fmt_mac(mac)])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", CLI_DEV])?;
    ns.ip(&["addr", "add", "2001:db8:c::1/64", "dev", CLI_DEV, "nodad"])?;
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", BK_DEV])?;
    ns.ip(&["addr", "add", "2001:db8:b::1/64", "dev", BK_DEV, "nodad"])?;
    // bpf_fib_lookup refuses to route for an ingress device that does not forward.
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    for (addr, mac, side) in lab_neighbours(&CLIENTS, &BACKENDS) {
        ns.ip(&neighbour_args(
            &addr.to_string(),
            &fmt_mac(mac),
            side.dev(),
        ))?;
    }
    Ok(ns)
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

/// A control-plane change applied before a case's packet.
#[derive(Debug)]
enum Control {
    WriteRing { vip: u32, delta: Vec<RingDelta> },
    ClearBackend(u32),
    RemoveVip(&'static LabVip),
}

/// Expected change of one `COUNTERS` slot; bytes must grow by `packets * frame length`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Delta {
    packets: u64,
    new_flows: u64,
    lru_misses: u64,
}

struct Case {
    fixture: Fixture,
    ingress: Side,
    before: Vec<Control>,
    /// The one `REASONS` slot this packet must increment.
    reason: Reason,
    /// Expected `COUNTERS` changes by slot; every other watched slot must not move.
    counters: Vec<(u32, Delta)>,
}

/// A client connection to a VIP.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: IpAddr,
    cport: u16,
    vip: &'static LabVip,
}

impl Flow {
    fn key(&self) -> FlowKey {
        let (src, family) = addr_words(self.client);
        FlowKey {
            src,
            dst: addr_words(self.vip.addr).0,
            sport: self.cport.to_be(),
            dport: self.vip.port.to_be(),
            proto: self.vip.proto,
            family,
            pad: [0; 2],
        }
    }

    /// A packet from the client to the VIP (TCP with `flags`, or UDP).
    fn packet(&self, flags: u8) -> PacketBuilder {
        let ip = ip(self.client, self.vip.addr);
        let b = if self.vip.proto == PROTO_TCP {
            PacketBuilder::tcp(ip, self.cport, self.vip.port, flags)
                .seq(0x1000_0000)
                .ack(if flags & tcp_flags::ACK != 0 {
                    0x2000_0000
                } else {
                    0
                })
        } else {
            PacketBuilder::udp(ip, self.cport, self.vip.port)
        };
        b.macs(client_mac(self.client), CLI_DEV_MAC).ttl(61)
    }
}

/// Where a flow is pinned.
#[derive(Clone, Copy, Debug)]
struct Pin {
    backend: &'static LabBackend,
    nat_port: u16,
}

fn vip_slot(vip: &LabVip) -> u32 {
    vip.num
}

fn backend_slot(b: &LabBackend) -> u32 {
    backend_counter_index(b.id)
}

fn fwd_counters(flow: &Flow, pin: &Pin, new_flow: bool, miss: bool) -> Vec<(u32, Delta)> {
    vec![
        (
            vip_slot(flow.vip),
            Delta {
                packets: 1,
                new_flows: new_flow as u64,
                lru_misses: miss as u64,
            },
        ),
        (
            backend_slot(pin.backend),
            Delta {
                packets: 1,
                new_flows: new_flow as u64,
                lru_misses: 0,
            },
        ),
    ]
}

/// Builds the table while modelling what the program must do: which ring slot a flow hashes to
/// and which NAT ports are taken.
struct Model {
    /// The rings as the table starts (what `configure` writes).
    initial_rings: HashMap<u32, MaglevRing>,
    /// The rings as of the case being built.
    rings: HashMap<u32, MaglevRing>,
    /// Per backend id: the NAT ports its flows hold, and where the next search starts.
    spaces: HashMap<u32, (HashSet<u16>, u32)>,
    live_flows: HashSet<(IpAddr, u16, u32)>,
    cases: Vec<Case>,
    pending: Vec<Control>,
}

impl Model {
    fn new() -> Model {
        let mut rings = HashMap::new();
        for v in VIPS {
            let ring = v
                .initial_ring(RING_SIZE)
                .expect("prime ring size, valid members");
            rings.insert(v.num, ring);
        }
        Model {
            initial_rings: rings.clone(),
            rings,
            spaces: HashMap::new(),
            live_flows: HashSet::new(),
            cases: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The backend in the VIP's ring slot for this flow's hash.
    fn ring_pick(&self, flow: &Flow) -> &'static LabBackend {
        let source_only = flow.vip.flags & VIP_HASH_SOURCE_ONLY != 0;
        let h = hash::flow_hash(&flow.key(), source_only);
        let slots = self.rings[&flow.vip.num].slots();
        let id = slots[(h % RING_SIZE) as usize];
        assert_ne!(id, EMPTY_SLOT, "test bug: {flow:?} hashes to an empty slot");
        backend(id)
    }

    /// Pins a new flow: ring pick, then the backend's first free NAT port at or after its
    /// cursor (the program's port spaces hand ports out in rotating order, per backend).
    fn pin(&mut self, flow: &Flow) -> Pin {
        let b = self.ring_pick(flow);
        let range = u32::from(NAT_PORT_MAX - NAT_PORT_MIN) + 1;
        let (taken, cursor) = self.spaces.entry(b.id).or_default();
        let v = (0..range)
            .map(|i| (*cursor + i) % range)
            .find(|v| !taken.contains(&(NAT_PORT_MIN + *v as u16)))
            .expect("test bug: every NAT port taken");
        let port = NAT_PORT_MIN + v as u16;
        taken.insert(port);
        *cursor = (v + 1) % range;
        self.live_flows
            .insert((flow.client, flow.cport, flow.vip.num));
        Pin {
            backend: b,
            nat_port: port,
        }
    }

    /// The flow is over (RST, FIN both ways, re-pin): its NAT port is free again.
    fn unpin(&mut self, flow: &Flow, pin: &Pin) {
        if let Some((taken, _)) = self.spaces.get_mut(&pin.backend.id) {
            taken.remove(&pin.nat_port);
        }
        self.live_flows
            .remove(&(flow.client, flow.cport, flow.vip.num));
    }

    /// Rebuilds a VIP's ring; the delta is written before the next case.
    fn set_ring(&mut self, vip: &LabVip, ids: &[u32]) {
        let delta = self
            .rings
            .get_mut(&vip.num)
            .expect("known vip")
            .rebuild(&ring_members(ids))
            .expect("valid members");
        assert!(!delta.is_empty(), "test bug: ring change changes nothing");
        self.pending.push(Control::WriteRing {
            vip: vip.num,
            delta,
        });
    }

    fn clear_backend(&mut self, id: u32) {
        self.pending.push(Control::ClearBackend(id));
    }

    fn remove_vip(&mut self, vip: &'static LabVip) {
        self.pending.push(Control::RemoveVip(vip));
    }

    fn push(
        &mut self,
        fixture: Fixture,
        ingress: Side,
        reason: Reason,
        counters: Vec<(u32, Delta)>,
    ) {
        self.cases.push(Case {
            fixture,
            ingress,
            before: std::mem::take(&mut self.pending),
            reason,
            counters,
        });
    }

    /// A packet the program must pass or drop untouched, counting only `reason`.
    fn untouched(&mut self, description: &str, input: Vec<u8>, action: u32, reason: Reason) {
        self.push(
            Fixture::unchanged(description, input, action),
            Side::Client,
            reason,
            Vec::new(),
        );
    }

    /// Client -> VIP, translated to the pinned backend. `new_flow`/`miss`: the counters the
    /// program must bump. The verdict follows from where the backend sits.
    fn forward(
        &mut self,
        description: &str,
        flow: &Flow,
        pkt: PacketBuilder,
        pin: &Pin,
        new_flow: bool,
        miss: bool,
    ) {
        let b = pin.backend;
        let (action, reason, macs) = match (b.mac, b.side) {
            (None, _) => (xdp::PASS, Reason::PassNoRoute, (pkt.src_mac, pkt.dst_mac)),
            (Some(m), Side::Client) => (xdp::TX, Reason::Forwarded, (CLI_DEV_MAC, m)),
            (Some(m), Side::Backend) => (xdp::REDIRECT, Reason::Forwarded, (BK_DEV_MAC, m)),
        };
        let expected = pkt
            .clone()
            .ip(ip(snat_for(flow.client), b.addr))
            .ports(pin.nat_port, b.port)
            .macs(macs.0, macs.1)
            .build();
        let counters = fwd_counters(flow, pin, new_flow, miss);
        self.push(
            Fixture::new(description, pkt.build(), action, expected),
            Side::Client,
            reason,
            counters,
        );
    }

    /// A reply the pinned backend sends to the balancer's NAT address and port.
    fn reply_packet(flow: &Flow, pin: &Pin, flags: u8) -> PacketBuilder {
        let b = pin.backend;
        let ip = ip(b.addr, snat_for(flow.client));
        let pkt = if flow.vip.proto == PROTO_TCP {
            PacketBuilder::tcp(ip, b.port, pin.nat_port, flags)
                .seq(0x2000_0000)
                .ack(0x1000_0001)
        } else {
            PacketBuilder::udp(ip, b.port, pin.nat_port)
        };
        pkt.macs(
            b.mac.expect("reply from a backend with a MAC"),
            b.side.dev_mac(),
        )
        .ttl(64)
    }

    /// Backend -> NAT address, translated back to VIP -> client.
    fn reply(&mut self, description: &str, flow: &Flow, pin: &Pin, pkt: PacketBuilder) {
        let action = if pin.backend.side == Side::Client {
            xdp::TX
        } else {
            xdp::REDIRECT
        };
        let expected = pkt
            .clone()
            .ip(ip(flow.vip.addr, flow.client))
            .ports(flow.vip.port, flow.cport)
            .macs(CLI_DEV_MAC, client_mac(flow.client))
            .build();
        let one = Delta {
            packets: 1,
            ..Delta::default()
        };
        self.push(
            Fixture::new(description, pkt.build(), action, expected),
            pin.backend.side,
            Reason::ReplyTranslated,
            vec![(vip_slot(flow.vip), one), (backend_slot(pin.backend), one)],
        );
    }

    /// A packet from a backend the program must pass untouched.
    fn reply_untouched(&mut self, description: &str, pkt: PacketBuilder, side: Side) {
        self.push(
            Fixture::unchanged(description, pkt.build(), xdp::PASS),
            side,
            Reason::PassNotVip,
            Vec::new(),
        );
    }
}

/// A client port from `from` upward for which `pred` holds.
fn find_port(from: u16, pred: impl Fn(u16) -> bool) -> u16 {
    (from..u16::MAX)
        .find(|p| pred(*p))
        .expect("test bug: no port satisfies the condition")
}

const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n";
const DNS_QUERY: &[u8] =
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01";

fn stateless_cases(m: &mut Model) {
    use xdp::{DROP, PASS};
    let v4 = IpAddr::V4(V4_VIP);
    let tcp4 = PacketBuilder::tcp(ip(CLIENT4, v4), 40_000, 80, tcp_flags::SYN)
        .macs(client_mac(CLIENT4), CLI_DEV_MAC);
    let tcp6 = PacketBuilder::tcp(ip(CLIENT6, IpAddr::V6(V6_VIP)), 40_000, 80, tcp_flags::SYN)
        .macs(client_mac(CLIENT6), CLI_DEV_MAC);

    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&client_mac(CLIENT4));
    arp.extend_from_slice(&0x0806u16.to_be_bytes());
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&client_mac(CLIENT4));
    arp.extend_from_slice(&[192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 203, 0, 113, 10]);
    m.untouched(
        "ARP request (not IP) passes unchanged",
        arp,
        PASS,
        Reason::PassNotIp,
    );

    let tagged = tcp4.clone().vlan(100).build();
    m.untouched(
        "truncated Ethernet header: 802.1Q ethertype but the tag is cut (16 bytes)",
        truncate(&tagged, 16),
        DROP,
        Reason::DropMalformed,
    );
    m.untouched(
        "truncated IPv4 header (19 of 20 bytes)",
        truncate(&tcp4.build(), 14 + 19),
        DROP,
        Reason::DropMalformed,
    );
    m.untouched(
        "truncated IPv6 header (39 of 40 bytes)",
        truncate(&tcp6.build(), 14 + 39),
        DROP,
        Reason::DropMalformed,
    );
    let tcp_hdr = &tcp4.build()[14 + 20..14 + 20 + 19];
    m.untouched(
        "truncated TCP header over IPv4 (19 bytes, IP lengths consistent)",
        PacketBuilder::raw(ip(CLIENT4, v4), IPPROTO_TCP)
            .macs(client_mac(CLIENT4), CLI_DEV_MAC)
            .payload(tcp_hdr)
            .build(),
        DROP,
        Reason::DropMalformed,
    );
    m.untouched(
        "truncated TCP header over IPv6 (19 bytes, IP lengths consistent)",
        PacketBuilder::raw(ip(CLIENT6, IpAddr::V6(V6_VIP)), IPPROTO_TCP)
            .macs(client_mac(CLIENT6), CLI_DEV_MAC)
            .payload(tcp_hdr)
            .build(),
        DROP,
        Reason::DropMalformed,
    );
    m.untouched(
        "truncated UDP header over IPv4 (7 bytes, IP lengths consistent)",
        PacketBuilder::raw(ip(CLIENT4, v4), IPPROTO_UDP)
            .macs(client_mac(CLIENT4), CLI_DEV_MAC)
            .payload(&[0x9c, 0x40, 0x00, 0x35, 0x00, 0x0f, 0x00])
            .build(),
        DROP,
        Reason::DropMalformed,
    );
    m.untouched(
        "IPv4 IHL 4 (below the minimum of 5)",
        tcp4.clone().ihl(4).build(),
        DROP,
        Reason::DropMalformed,
    );
    m.untouched(
        "IPv4 IHL 15 (60-byte header) in a 40-byte IP packet",
        tcp4.clone().ihl(15).build(),
        DROP,
        Reason::DropMalformed,
    );
    let with_data = tcp4.clone().flags(tcp_flags::ACK).payload(HTTP_GET).build();
    m.untouched(
        "IPv4 total length larger than the frame (last 4 bytes cut)",
        truncate(&with_data, with_data.len() - 4),
        DROP,
        Reason::DropMalformed,
    );
    let mut short_total = tcp4.build();
    short_total[14 + 2..14 + 4].copy_from_slice(&16u16.to_be_bytes());
    m.untouched(
        "IPv4 total length 16, shorter than its header",
        short_total,
        DROP,
        Reason::DropMalformed,
    );
    let mut v5 = tcp4.build();
    v5[14] = 0x55;
    m.untouched(
        "IP version 5 under the IPv4 ethertype",
        v5,
        DROP,
        Reason::DropMalformed,
    );
    let mut v4_in_v6 = tcp6.build();
    v4_in_v6[14] = 0x45;
    m.untouched(
        "IP version 4 under the IPv6 ethertype",
        v4_in_v6,
        DROP,
        Reason::DropMalformed,
    );
    let mut doff4 = tcp4.build();
    doff4[14 + 20 + 12] = 0x40;
    m.untouched(
        "TCP data offset 4 (below the minimum of 5)",
        doff4,
        DROP,
        Reason::DropMalformed,
    );

    m.untouched(
        "IPv4 first fragment (MF, offset 0) of UDP to the UDP VIP passes to the stack",
        PacketBuilder::udp(ip(CLIENT4, v4), 40_001, 53)
            .macs(client_mac(CLIENT4), CLI_DEV_MAC)
            .payload(&[0xab; 64])
            .fragment(true, 0)
            .build(),
        PASS,
        Reason::PassFragment,
    );
    m.untouched(
        "IPv4 later fragment (offset 185) to the VIP passes to the stack",
        PacketBuilder::raw(ip(CLIENT4, v4), IPPROTO_UDP)
            .macs(client_mac(CLIENT4), CLI_DEV_MAC)
            .payload(&[0xcd; 48])
            .fragment(false, 185)
            .build(),
        PASS,
        Reason::PassFragment,
    );
    m.untouched(
        "ICMP echo request to the VIP passes",
        PacketBuilder::icmp_echo(ip(CLIENT4, v4))
            .macs(client_mac(CLIENT4), CLI_DEV_MAC)
            .echo_id(7)
            .payload(b"ping")
            .build(),
        PASS,
        Reason::PassOtherProto,
    );
    m.untouched(
        "ICMPv6 echo request to the IPv6 VIP passes",
        PacketBuilder::icmp_echo(ip(CLIENT6, IpAddr::V6(V6_VIP)))
            .macs(client_mac(CLIENT6), CLI_DEV_MAC)
            .echo_id(7)
            .payload(b"ping")
            .build(),
        PASS,
        Reason::PassOtherProto,
    );
    // Hop-by-hop options header (next header TCP, PadN) followed by a TCP SYN to port 80.
    let mut hbh = vec![IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&tcp6.build()[14 + 40..]);
    m.untouched(
        "IPv6 hop-by-hop extension header before TCP to the IPv6 VIP passes",
        PacketBuilder::raw(ip(CLIENT6, IpAddr::V6(V6_VIP)), 0)
            .macs(client_mac(CLIENT6), CLI_DEV_MAC)
            .payload(&hbh)
            .build(),
        PASS,
        Reason::PassOtherProto,
    );
    m.untouched(
        "TCP to an address that is no VIP passes",
        tcp4.clone()
            .ip(ip(CLIENT4, "203.0.113.99".parse().unwrap()))
            .build(),
        PASS,
        Reason::PassNotVip,
    );
    m.untouched(
        "TCP to the VIP address on a port that is no VIP passes",
        tcp4.clone().ports(40_000, 8080).build(),
        PASS,
        Reason::PassNotVip,
    );
    m.untouched(
        "UDP to the TCP VIP's port (protocol is part of the VIP) passes",
        PacketBuilder::udp(ip(CLIENT4, v4), 40_000, 80)
            .macs(client_mac(CLIENT4), CLI_DEV_MAC)
            .payload(DNS_QUERY)
            .build(),
        PASS,
        Reason::PassNotVip,
    );
    m.untouched(
        "TCP to a VIP_PASS_TO_STACK VIP (443) passes unchanged",
        tcp4.clone().ports(40_000, 443).build(),
        PASS,
        Reason::PassTerminator,
    );
    m.untouched(
        "TCP SYN to a VIP whose ring slots are all EMPTY is dropped",
        Flow {
            client: CLIENT4,
            cport: 40_000,
            vip: &EMPTY_RING,
        }
        .packet(tcp_flags::SYN)
        .build(),
        DROP,
        Reason::DropNoBackend,
    );
    m.untouched(
        "TCP SYN to an IPv4 VIP whose ring holds an IPv6 backend is dropped",
        Flow {
            client: CLIENT4,
            cport: 40_000,
            vip: &MISMATCH,
        }
        .packet(tcp_flags::SYN)
        .build(),
        DROP,
        Reason::DropFamilyMismatch,
    );
}

fn stateful_cases(m: &mut Model) {
    use tcp_flags::{ACK, FIN, PSH, RST, SYN};

    // Two IPv4 TCP flows to the 5-tuple VIP that the ring sends to different backends.
    let a = Flow {
        client: CLIENT4,
        cport: 41_000,
        vip: &TCP4,
    };
    let b_port = find_port(41_001, |p| {
        m.ring_pick(&Flow { cport: p, ..a }).id != m.ring_pick(&a).id
    });
    let b = Flow { cport: b_port, ..a };
    let pin_a = m.pin(&a);
    m.forward(
        "flow A: IPv4 TCP SYN to the VIP, new flow, full NAT, REDIRECT to the backend device",
        &a,
        a.packet(SYN),
        &pin_a,
        true,
        false,
    );
    m.forward(
        "flow A: TCP ACK with data (LRU hit: same backend, same NAT port)",
        &a,
        a.packet(ACK | PSH).payload(HTTP_GET),
        &pin_a,
        false,
        false,
    );
    let pin_b = m.pin(&b);
    m.forward(
        "flow B: IPv4 TCP SYN hashing to the other backend",
        &b,
        b.packet(SYN),
        &pin_b,
        true,
        false,
    );
    m.reply(
        "flow A: backend reply (SYN-ACK) translated back to VIP -> client",
        &a,
        &pin_a,
        Model::reply_packet(&a, &pin_a, SYN | ACK),
    );
    let mut stray = Model::reply_packet(&a, &pin_a, ACK);
    stray = stray.ports(pin_a.backend.port, pin_a.nat_port.wrapping_add(1));
    if m.spaces[&pin_a.backend.id]
        .0
        .contains(&pin_a.nat_port.wrapping_add(1))
    {
        panic!("test bug: stray reply port is in use");
    }
    m.reply_untouched(
        "reply to the NAT address on a port no flow owns passes unchanged",
        stray,
        Side::Backend,
    );

    let c = Flow { cport: 41_100, ..a };
    let pin_c = m.pin(&c);
    m.forward(
        "flow C: VLAN-tagged (id 100) IPv4 TCP SYN, tag kept",
        &c,
        c.packet(SYN).vlan(100),
        &pin_c,
        true,
        false,
    );
    let d = Flow { cport: 41_200, ..a };
    let pin_d = m.pin(&d);
    m.forward(
        "flow D: IPv4 with options (router alert) TCP SYN, options kept",
        &d,
        d.packet(SYN).ipv4_options(&[0x94, 0x04, 0x00, 0x00]),
        &pin_d,
        true,
        false,
    );

    let e = Flow {
        client: CLIENT4,
        cport: 41_300,
        vip: &UDP4,
    };
    let pin_e = m.pin(&e);
    m.forward(
        "flow E: IPv4 UDP to the UDP VIP",
        &e,
        e.packet(0).payload(DNS_QUERY),
        &pin_e,
        true,
        false,
    );
    m.reply(
        "flow E: UDP reply translated back to the client",
        &e,
        &pin_e,
        Model::reply_packet(&e, &pin_e, 0).payload(b"\x12\x34\x81\x80answer"),
    );
    let f = Flow { cport: 41_301, ..e };
    let pin_f = m.pin(&f);
    m.forward(
        "flow F: IPv4 UDP with checksum 0 (none): stays 0 after NAT",
        &f,
        f.packet(0).payload(DNS_QUERY).udp_zero_checksum(),
        &pin_f,
        true,
        false,
    );

    let g = Flow {
        client: CLIENT6,
        cport: 41_400,
        vip: &TCP6,
    };
    let pin_g = m.pin(&g);
    m.forward(
        "flow G: IPv6 TCP SYN to the IPv6 VIP, full NAT to an IPv6 backend",
        &g,
        g.packet(SYN),
        &pin_g,
        true,
        false,
    );
    m.forward(
        "flow G: IPv6 TCP ACK with data (LRU hit)",
        &g,
        g.packet(ACK | PSH).payload(HTTP_GET),
        &pin_g,
        false,
        false,
    );
    m.reply(
        "flow G: IPv6 backend reply translated back to the client",
        &g,
        &pin_g,
        Model::reply_packet(&g, &pin_g, SYN | ACK),
    );
    let h = Flow {
        client: CLIENT6,
        cport: 41_500,
        vip: &UDP6,
    };
    let pin_h = m.pin(&h);
    m.forward(
        "flow H: IPv6 UDP to the IPv6 UDP VIP",
        &h,
        h.packet(0).payload(DNS_QUERY),
        &pin_h,
        true,
        false,
    );
    m.reply(
        "flow H: IPv6 UDP reply translated back to the client",
        &h,
        &pin_h,
        Model::reply_packet(&h, &pin_h, 0).payload(b"\x12\x34\x81\x80answer"),
    );

    // Source-only hashing: two ports of one client whose 5-tuple hashes would pick different
    // backends still land on the backend of the client address.
    let s1 = Flow {
        client: CLIENT4B,
        cport: 42_000,
        vip: &SOURCE_HASH,
    };
    let five_tuple_pick = |m: &Model, f: &Flow| {
        let h = hash::five_tuple_hash(&f.key());
        m.rings[&f.vip.num].slots()[(h % RING_SIZE) as usize]
    };
    let s2_port = find_port(42_001, |p| {
        five_tuple_pick(m, &Flow { cport: p, ..s1 }) != five_tuple_pick(m, &s1)
    });
    let s2 = Flow {
        cport: s2_port,
        ..s1
    };
    let pin_s1 = m.pin(&s1);
    let pin_s2 = m.pin(&s2);
    assert_eq!(pin_s1.backend.id, pin_s2.backend.id, "source-only model");
    m.forward(
        "flow S1: source-hash VIP, client port 42000",
        &s1,
        s1.packet(SYN),
        &pin_s1,
        true,
        false,
    );
    m.forward(
        "flow S2: source-hash VIP, same client, another port: same backend as S1",
        &s2,
        s2.packet(SYN),
        &pin_s2,
        true,
        false,
    );

    // One-armed: the backend sits behind the ingress device: XDP_TX, both ways.
    let o = Flow {
        client: CLIENT4,
        cport: 43_000,
        vip: &ONE_ARMED,
    };
    let pin_o = m.pin(&o);
    m.forward(
        "flow O: backend behind the ingress device: XDP_TX",
        &o,
        o.packet(SYN),
        &pin_o,
        true,
        false,
    );
    m.reply(
        "flow O: reply arriving on and leaving by the client device: XDP_TX",
        &o,
        &pin_o,
        Model::reply_packet(&o, &pin_o, SYN | ACK),
    );

    let n = Flow {
        client: CLIENT4,
        cport: 43_100,
        vip: &NO_NEIGH,
    };
    let pin_n = m.pin(&n);
    m.forward(
        "flow N: backend without a neighbour entry: XDP_PASS with the NATed packet, MACs untouched",
        &n,
        n.packet(SYN),
        &pin_n,
        true,
        false,
    );

    // Ring change: a pinned flow keeps its backend, a new flow follows the new ring.
    let p = Flow {
        client: CLIENT4,
        cport: 44_000,
        vip: &RING_CHANGE,
    };
    let pin_p = m.pin(&p);
    assert_eq!(pin_p.backend.id, 1);
    m.forward(
        "flow P: SYN, ring holds only backend 1",
        &p,
        p.packet(SYN),
        &pin_p,
        true,
        false,
    );
    m.set_ring(&RING_CHANGE, &[2]);
    m.forward(
        "flow P: ACK after the ring was rewritten to backend 2: LRU hit keeps backend 1",
        &p,
        p.packet(ACK),
        &pin_p,
        false,
        false,
    );
    let q = Flow { cport: 44_001, ..p };
    let pin_q = m.pin(&q);
    assert_eq!(pin_q.backend.id, 2);
    m.forward(
        "flow Q: new SYN follows the new ring to backend 2",
        &q,
        q.packet(SYN),
        &pin_q,
        true,
        false,
    );

    // Backend removal: the pinned flow is re-balanced on its next packet.
    let r = Flow {
        client: CLIENT4,
        cport: 45_000,
        vip: &REMOVAL,
    };
    let pin_r = m.pin(&r);
    assert_eq!(pin_r.backend.id, 40);
    m.forward(
        "flow R: SYN pinned to backend 40",
        &r,
        r.packet(SYN),
        &pin_r,
        true,
        false,
    );
    m.clear_backend(40);
    m.set_ring(&REMOVAL, &[41]);
    // The re-pin gives the old port back to backend 40's space (its reverse entry cannot
    // be found once the backend's address is gone; it stays behind, harmlessly).
    m.unpin(&r, &pin_r);
    let pin_r2 = m.pin(&r);
    assert_eq!(pin_r2.backend.id, 41);
    m.forward(
        "flow R: ACK after backend 40 was removed: re-pinned to backend 41 (new flow, LRU miss)",
        &r,
        r.packet(ACK),
        &pin_r2,
        true,
        true,
    );
    m.reply(
        "flow R: reply from the new backend 41 translated",
        &r,
        &pin_r2,
        Model::reply_packet(&r, &pin_r2, ACK),
    );
    m.reply_untouched(
        "flow R: late reply from removed backend 40 to the old NAT port passes unchanged",
        Model::reply_packet(&r, &pin_r, ACK),
        Side::Backend,
    );

    // A withdrawn VIP: its pinned flows stop at once, although their entries are still in
    // the flow table (known flows are checked against VIP_KEYS, not looked up in VIPS).
    let w = Flow {
        client: CLIENT4,
        cport: 45_500,
        vip: &WITHDRAWN,
    };
    let pin_w = m.pin(&w);
    m.forward("flow W: SYN pinned", &w, w.packet(SYN), &pin_w, true, false);
    m.forward(
        "flow W: ACK hits the flow table",
        &w,
        w.packet(ACK),
        &pin_w,
        false,
        false,
    );
    m.remove_vip(&WITHDRAWN);
    m.untouched(
        "flow W: ACK after its VIP was withdrawn passes unchanged",
        w.packet(ACK).build(),
        xdp::PASS,
        Reason::PassNotVip,
    );

    // RST forgets the flow at once.
    let t = Flow {
        client: CLIENT4,
        cport: 46_000,
        vip: &TCP4,
    };
    let pin_t = m.pin(&t);
    m.forward("flow T: SYN", &t, t.packet(SYN), &pin_t, true, false);
    m.forward(
        "flow T: client RST is forwarded and removes the flow",
        &t,
        t.packet(RST | ACK),
        &pin_t,
        false,
        false,
    );
    m.unpin(&t, &pin_t);
    m.reply_untouched(
        "flow T: backend packet after the RST finds no NAT entry and passes unchanged",
        Model::reply_packet(&t, &pin_t, ACK),
        Side::Backend,
    );
    let pin_t2 = m.pin(&t);
    m.forward(
        "flow T: ACK after the RST is an LRU miss and gets a fresh mapping",
        &t,
        t.packet(ACK),
        &pin_t2,
        true,
        true,
    );

    // FIN both ways: the flow is closing and, with closing_timeout_ticks = 0, expired.
    let u = Flow {
        client: CLIENT4,
        cport: 47_000,
        vip: &TCP4,
    };
    let pin_u = m.pin(&u);
    m.forward("flow U: SYN", &u, u.packet(SYN), &pin_u, true, false);
    m.forward(
        "flow U: client FIN (LRU hit)",
        &u,
        u.packet(FIN | ACK),
        &pin_u,
        false,
        false,
    );
    m.reply(
        "flow U: backend FIN translated; the flow is now closing",
        &u,
        &pin_u,
        Model::reply_packet(&u, &pin_u, FIN | ACK),
    );
    m.unpin(&u, &pin_u);
    let pin_u2 = m.pin(&u);
    m.forward(
        "flow U: last ACK after FIN both ways (closing timeout 0 elapsed): re-pinned, LRU miss",
        &u,
        u.packet(ACK),
        &pin_u2,
        true,
        true,
    );
}

// ---------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------

struct Lab {
    dp: DataPlane,
    prog_fd: std::os::fd::RawFd,
    cli_ifindex: u32,
    bk_ifindex: u32,
    watched: Vec<u32>,
}

impl Lab {
    fn ifindex(&self, side: Side) -> u32 {
        match side {
            Side::Client => self.cli_ifindex,
            Side::Backend => self.bk_ifindex,
        }
    }

    fn counters(&self) -> HashMap<u32, CounterTotals> {
        self.watched
            .iter()
            .map(|&i| (i, self.dp.counters(i).expect("read COUNTERS")))
            .collect()
    }

    fn reasons(&self) -> HashMap<Reason, u64> {
        self.dp.reasons().expect("read REASONS")
    }

    fn apply(&mut self, c: &Control) {
        match c {
            Control::WriteRing { vip, delta } => {
                self.dp.write_ring_delta(*vip, delta).expect("write ring")
            }
            Control::ClearBackend(id) => self.dp.clear_backend(*id).expect("clear backend"),
            Control::RemoveVip(v) => self.dp.remove_vip(&v.key()).expect("remove vip"),
        }
    }

    /// Runs one case; the error lists everything that did not match.
    fn run(&mut self, case: &Case) -> Result<(), String> {
        for c in &case.before {
            self.apply(c);
        }
        let fx = &case.fixture;
        let counters_before = self.counters();
        let reasons_before = self.reasons();
        let out = run_xdp(self.prog_fd, &fx.input, self.ifindex(case.ingress), 1)
            .map_err(|e| format!("BPF_PROG_TEST_RUN failed: {e}"))?;
        let mut problems = Vec::new();
        if let Err(e) = fx.check(out.action, &out.packet) {
            problems.push(e);
        }
        let reasons_after = self.reasons();
        for r in Reason::ALL {
            let delta = reasons_after[&r] - reasons_before[&r];
            let want = u64::from(r == case.reason);
            if delta != want {
                problems.push(format!(
                    "REASONS[{}] changed by {delta}, expected {want} (expected reason: {})",
                    r.label(),
                    case.reason.label()
                ));
            }
        }
        let counters_after = self.counters();
        let len = fx.input.len() as u64;
        for &slot in &self.watched {
            let want = case
                .counters
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, d)| *d)
                .unwrap_or_default();
            let (b, a) = (counters_before[&slot], counters_after[&slot]);
            let got = Delta {
                packets: a.packets - b.packets,
                new_flows: a.new_flows - b.new_flows,
                lru_misses: a.lru_misses - b.lru_misses,
            };
            let got_bytes = a.bytes - b.bytes;
            if got != want || got_bytes != want.packets * len {
                problems.push(format!(
                    "COUNTERS[{}] changed by {got:?} and {got_bytes} bytes, expected {want:?} and {} bytes",
                    slot_name(slot),
                    want.packets * len
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

fn slot_name(slot: u32) -> String {
    match VIPS.iter().find(|v| v.num == slot) {
        Some(v) => format!("vip {} ({}:{})", v.num, v.addr, v.port),
        None => format!("backend {}", slot - backend_counter_index(0)),
    }
}

fn configure(dp: &mut DataPlane, model: &Model) {
    write_lab_maps(dp, &settings(), &BACKENDS, VIPS, RING_SIZE).expect("write the maps");
    for v in VIPS {
        let slots = model.initial_rings[&v.num].slots();
        for copy in [0, 1] {
            assert_eq!(
                dp.read_ring(v.num, copy).expect("read ring"),
                slots,
                "ring copy {copy} of vip {}",
                v.num
            );
        }
    }
}

#[test]
fn xdp_fixture_table() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid,
        0,
        "the XDP fixture test needs root (namespaces, bpffs, BPF_PROG_TEST_RUN); CI runs it as root"
    );
    let ns = build_namespace().expect("set up the test namespace");
    let cli_ifindex = ifindex(&ns, CLI_DEV).expect("ifindex");
    let bk_ifindex = ifindex(&ns, BK_DEV).expect("ifindex");
    let pin = PinDir::new(&format!("{}-fix", unique_prefix())).expect("pin dir");
    let pin_path = pin.path().to_path_buf();

    let mut model = Model::new();
    stateless_cases(&mut model);
    let stateless = model.cases.len();
    stateful_cases(&mut model);
    assert!(model.cases.len() >= 30, "only {} cases", model.cases.len());

    let failures = run_in(&ns, move || {
        let mut opts = LoadOptions::new(&pin_path, RING_SIZE);
        opts.max_flows = 4096;
        let mut dp = DataPlane::load(&opts).expect("load the XDP program");
        let prog_fd = dp.program_fd().expect("program fd");
        if let Some(reason) = test_run_unsupported(prog_fd).expect("probe BPF_PROG_TEST_RUN") {
            proxy_tests::skip::skipped(&reason);
            return Vec::new();
        }
        configure(&mut dp, &model);
        let mut watched: Vec<u32> = VIPS.iter().map(|v| v.num).collect();
        watched.extend(BACKENDS.iter().map(backend_slot));
        let mut lab = Lab {
            dp,
            prog_fd,
            cli_ifindex,
            bk_ifindex,
            watched,
        };

        let mut failures = Vec::new();
        for (i, case) in model.cases.iter().enumerate() {
            let kind = if i < stateless { "" } else { " [stateful]" };
            match lab.run(case) {
                Ok(()) => eprintln!("ok   #{:02} {}{kind}", i + 1, case.fixture.description),
                Err(e) => {
                    eprintln!("FAIL #{:02} {}{kind}", i + 1, case.fixture.description);
                    failures.push(format!("#{} {}:\n{e}", i + 1, case.fixture.description));
                }
            }
        }

        // Frames shorter than an Ethernet header never reach the program: the kernel refuses.
        let short = run_xdp(prog_fd, &[0u8; 13], cli_ifindex, 1);
        if !matches!(&short, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
            failures.push(format!(
                "13-byte frame: expected the kernel to refuse with EINVAL, got {:?}",
                short.map(|o| o.action)
            ));
        }
        let flows = lab.dp.flow_count().expect("count flows");
        if flows != model.live_flows.len() {
            failures.push(format!(
                "FLOWS holds {flows} entries at the end, expected {} live flows",
                model.live_flows.len()
            ));
        }
        failures
    })
    .expect("run in the test namespace");
    drop(pin);
    drop(ns);
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
