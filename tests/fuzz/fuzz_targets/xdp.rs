//! The XDP program's packet path: the real `proxy_xdp` object, loaded once with VIPs, rings and
//! backends like the fixture table's (tests/tests/xdp_fixtures.rs), runs every input through
//! BPF_PROG_TEST_RUN. Checked per packet: the verdict is DROP, PASS, TX or REDIRECT (ABORTED
//! means a map the program relies on was missing), the frame keeps its length (full NAT never
//! grows or shrinks it), a frame sent out (TX, REDIRECT) comes from a device's MAC address,
//! and a frame the program rewrote carries a valid IPv4 header checksum
//! and TCP/UDP checksum whenever the frame it was given did (incremental updates keep an
//! error that was already there, so only valid inputs can be held to it).
//!
//! An input is either a raw Ethernet frame or, so that the fuzzer reaches the deep paths
//! (new flow, known flow, FIN/RST handling, replies, NAT port reuse) although it sees no
//! coverage of the kernel code, a packet described field by field: addresses and ports drawn
//! mostly from the ones the maps know, any TCP flags, VLAN, IPv4 options and fragments,
//! optionally a few bytes overwritten afterwards. The maps keep their state across inputs,
//! so flows opened by one input are continued, closed or evicted by later ones (the flow
//! table is small on purpose: 4,096 flows).
//!
//! Needs root. Everything lives in a private network namespace and a private bpffs mount made
//! by `unshare` at start: nothing is left behind when the process ends, however it ends.
#![no_main]

use std::{
    cell::RefCell,
    ffi::CString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
    process::Command,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use proxy::ebpf::{test_run::run_xdp, DataPlane, LoadOptions, BPFFS};
use proxy_common::{Settings, PROTO_TCP, PROTO_UDP, VIP_HASH_SOURCE_ONLY, VIP_PASS_TO_STACK};
use proxy_tests::{
    fixture::{
        fmt_mac, lab_neighbours, neighbour_args, write_lab_maps, xdp, LabBackend, LabVip, Side,
        BK_DEV, BK_DEV_MAC, CLI_DEV, CLI_DEV_MAC,
    },
    packet::{verify_checksums, Ip, PacketBuilder, L4},
};

const SNAT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SNAT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
const NAT_PORT_MIN: u16 = 20_000;
const NAT_PORT_MAX: u16 = 20_511;
const RING_SIZE: u32 = 251;
const MAX_FLOWS: u32 = 4_096;
/// Largest frame an input may make (a full Ethernet frame); BPF_PROG_TEST_RUN refuses
/// frames shorter than an Ethernet header or longer than a page less its headroom.
const MAX_FRAME: usize = 1_514;
const MIN_FRAME: usize = 14;

const CLIENTS4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 10),
    Ipv4Addr::new(192, 0, 2, 11),
    Ipv4Addr::new(192, 0, 2, 12),
];
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10);

const fn b4(id: u32, last: u8, port: u16, mac: Option<[u8; 6]>) -> LabBackend {
    LabBackend {
        id,
        addr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)),
        port,
        mac,
        side: Side::Backend,
    }
}

const fn b6(id: u32, last: u16, port: u16) -> LabBackend {
    LabBackend {
        id,
        addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, last)),
        port,
        mac: Some([0x02, 0xbb, 0, 0, 0x06, last as u8]),
        side: Side::Backend,
    }
}

static BACKENDS: [LabBackend; 9] = [
    b4(1, 11, 8080, Some([0x02, 0xbb, 0, 0, 0, 11])),
    b4(2, 12, 8080, Some([0x02, 0xbb, 0, 0, 0, 12])),
    b4(10, 11, 5353, Some([0x02, 0xbb, 0, 0, 0, 11])),
    b4(11, 12, 5353, Some([0x02, 0xbb, 0, 0, 0, 12])),
    b6(20, 0x11, 8080),
    b6(21, 0x12, 8080),
    b6(22, 0x13, 5353),
    // One-armed: reached through the client-facing device, so forwarding is XDP_TX.
    LabBackend {
        id: 30,
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)),
        port: 8080,
        mac: Some([0x02, 0xcc, 0, 0, 0x01, 0]),
        side: Side::Client,
    },
    // Routed, but without a neighbour entry: the translated packet goes to the kernel.
    b4(31, 99, 8080, None),
];

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);

static VIPS: [LabVip; 10] = [
    LabVip::v4(0, 10, 80, PROTO_TCP, 0, &[1, 2]),
    LabVip::v4(1, 10, 53, PROTO_UDP, 0, &[10, 11]),
    LabVip {
        num: 2,
        addr: IpAddr::V6(VIP6),
        port: 80,
        proto: PROTO_TCP,
        flags: 0,
        members: &[20, 21],
    },
    LabVip {
        num: 3,
        addr: IpAddr::V6(VIP6),
        port: 53,
        proto: PROTO_UDP,
        flags: 0,
        members: &[22],
    },
    LabVip::v4(4, 10, 443, PROTO_TCP, VIP_PASS_TO_STACK, &[]),
    LabVip::v4(5, 11, 80, PROTO_TCP, VIP_HASH_SOURCE_ONLY, &[1, 2]),
    LabVip::v4(6, 12, 80, PROTO_TCP, 0, &[30]),
    LabVip::v4(7, 13, 80, PROTO_TCP, 0, &[31]),
    LabVip::v4(8, 14, 80, PROTO_TCP, 0, &[]),
    // An IPv4 VIP whose only backend is IPv6.
    LabVip::v4(9, 17, 80, PROTO_TCP, 0, &[20]),
];

/// The loaded program and the interfaces packets arrive on.
struct Lab {
    /// Owns the program and maps; kept alive for `prog_fd`.
    _dp: DataPlane,
    prog_fd: RawFd,
    cli_ifindex: u32,
    bk_ifindex: u32,
}

thread_local! {
    /// Filled by the init block; libFuzzer calls init and every input on the same thread.
    static LAB: RefCell<Option<Lab>> = const { RefCell::new(None) };
}

/// Verdicts seen, by `xdp_action`, and rewritten frames whose checksums were checked: printed
/// at exit, so a run shows that the inputs reached the forwarding paths.
static VERDICTS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static CHECKED: AtomicU64 = AtomicU64::new(0);

extern "C" fn print_verdicts() {
    let n: Vec<String> = (0..5u32)
        .map(|a| format!("{} {}", xdp::name(a), VERDICTS[a as usize].load(Relaxed)))
        .collect();
    eprintln!(
        "xdp fuzz target: verdicts: {}; rewritten frames with checksums verified: {}",
        n.join(", "),
        CHECKED.load(Relaxed)
    );
}

fn fail(what: &str) -> ! {
    eprintln!("xdp fuzz target: {what}");
    std::process::exit(2)
}

/// Private network namespace and bpffs for this process (gone when it exits).
fn private_namespaces() {
    // SAFETY: plain syscalls with constant arguments; the process is still single-threaded
    // (libFuzzer runs init before it starts any thread), which unsharing the mount
    // namespace for the whole process needs.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) };
    if rc != 0 {
        fail(&format!(
            "unshare(CLONE_NEWNET | CLONE_NEWNS) failed: {} (the XDP target needs root)",
            std::io::Error::last_os_error()
        ));
    }
    let root = CString::new("/").expect("no NUL");
    let bpffs = CString::new(BPFFS).expect("no NUL");
    let bpf = CString::new("bpf").expect("no NUL");
    // SAFETY: valid C strings, null data; makes this namespace's mounts private so the bpffs
    // mounted next is seen by this process only.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        fail(&format!(
            "making mounts private failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: valid C strings, no data argument.
    let rc = unsafe {
        libc::mount(
            bpf.as_ptr(),
            bpffs.as_ptr(),
            bpf.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        fail(&format!(
            "mounting a private bpffs on {BPFFS} failed: {}",
            std::io::Error::last_os_error()
        ));
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run `ip` (iproute2): {e}")));
    if !out.status.success() {
        fail(&format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
}

fn sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        fail(&format!("writing {path}: {e}"));
    }
}

fn ifindex(dev: &str) -> u32 {
    let name = CString::new(dev).expect("no NUL");
    // SAFETY: a valid C string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        fail(&format!("no device {dev}"));
    }
    idx
}

/// Two veth pairs, addresses, forwarding and permanent neighbours, as in the fixture table.
fn build_network() -> (u32, u32) {
    ip(&["link", "set", "lo", "up"]);
    for (dev, peer, mac) in [
        (CLI_DEV, "cli0p", CLI_DEV_MAC),
        (BK_DEV, "bk0p", BK_DEV_MAC),
    ] {
        ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
        ip(&["link", "set", dev, "address", &fmt_mac(mac)]);
        ip(&["link", "set", dev, "up"]);
        ip(&["link", "set", peer, "up"]);
    }
    ip(&["addr", "add", "192.0.2.1/24", "dev", CLI_DEV]);
    ip(&["addr", "add", "2001:db8:c::1/64", "dev", CLI_DEV, "nodad"]);
    ip(&["addr", "add", "198.51.100.1/24", "dev", BK_DEV]);
    ip(&["addr", "add", "2001:db8:b::1/64", "dev", BK_DEV, "nodad"]);
    // bpf_fib_lookup refuses to route for an ingress device that does not forward.
    sysctl("/proc/sys/net/ipv4/ip_forward", "1");
    sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1");
    let mut clients: Vec<(IpAddr, [u8; 6])> = CLIENTS4
        .iter()
        .enumerate()
        .map(|(i, a)| (IpAddr::V4(*a), [0x02, 0xcc, 0, 0, 0, 0x10 + i as u8]))
        .collect();
    clients.push((IpAddr::V6(CLIENT6), [0x02, 0xcc, 0, 0, 0x06, 0x10]));
    for (addr, mac, side) in lab_neighbours(&clients, &BACKENDS) {
        ip(&neighbour_args(
            &addr.to_string(),
            &fmt_mac(mac),
            side.dev(),
        ));
    }
    (ifindex(CLI_DEV), ifindex(BK_DEV))
}

fn settings() -> Settings {
    proxy_tests::fixture::lab_settings((NAT_PORT_MIN, NAT_PORT_MAX), SNAT4, SNAT6)
}

fn load() -> Lab {
    private_namespaces();
    let (cli_ifindex, bk_ifindex) = build_network();
    let mut opts = LoadOptions::new(format!("{BPFFS}/proxy-fuzz"), RING_SIZE);
    opts.max_flows = MAX_FLOWS;
    opts.nat_positions = proxy_common::ports::nat_positions(NAT_PORT_MIN, NAT_PORT_MAX, 1);
    let mut dp =
        DataPlane::load(&opts).unwrap_or_else(|e| fail(&format!("loading the XDP program: {e:#}")));
    // SAFETY: registers a plain function without arguments.
    unsafe { libc::atexit(print_verdicts) };
    if let Err(e) = write_lab_maps(&mut dp, &settings(), &BACKENDS, &VIPS, RING_SIZE) {
        fail(&format!("writing the maps: {e}"));
    }
    let prog_fd = dp
        .program_fd()
        .unwrap_or_else(|e| fail(&format!("program fd: {e}")));
    Lab {
        _dp: dp,
        prog_fd,
        cli_ifindex,
        bk_ifindex,
    }
}

/// An address the maps know (client, VIP, SNAT, backend) most of the time, any other one
/// sometimes.
fn pick_v4(u: &mut Unstructured<'_>, known: &[Ipv4Addr]) -> Ipv4Addr {
    let i = u.choose_index(known.len() + 1).unwrap_or(0);
    match known.get(i) {
        Some(a) => *a,
        None => Ipv4Addr::from(u.arbitrary::<u32>().unwrap_or(0)),
    }
}

fn pick_port(u: &mut Unstructured<'_>, known: &[u16]) -> u16 {
    let i = u.choose_index(known.len() + 1).unwrap_or(0);
    match known.get(i) {
        Some(p) => *p,
        None => u.arbitrary().unwrap_or(0),
    }
}

/// A packet described field by field by the input (see the module docs).
fn described_packet(u: &mut Unstructured<'_>) -> Vec<u8> {
    let v4_known: Vec<Ipv4Addr> = CLIENTS4
        .iter()
        .copied()
        .chain(VIPS.iter().filter_map(|v| match v.addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }))
        .chain(BACKENDS.iter().filter_map(|b| match b.addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }))
        .chain([SNAT4])
        .collect();
    let ports: Vec<u16> = VIPS
        .iter()
        .map(|v| v.port)
        .chain(BACKENDS.iter().map(|b| b.port))
        .chain([40_000, 40_001, NAT_PORT_MIN, NAT_PORT_MIN + 1, NAT_PORT_MAX])
        .collect();
    let v6 = u.ratio(1, 5).unwrap_or(false);
    let ip = if v6 {
        let v6_known = [
            CLIENT6,
            VIP6,
            SNAT6,
            Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x11),
        ];
        let pick = |u: &mut Unstructured<'_>| {
            let i = u.choose_index(v6_known.len() + 1).unwrap_or(0);
            v6_known
                .get(i)
                .copied()
                .unwrap_or_else(|| Ipv6Addr::from(u.arbitrary::<u128>().unwrap_or(0)))
        };
        let src = pick(u);
        let dst = pick(u);
        Ip::v6(src, dst)
    } else {
        Ip::v4(pick_v4(u, &v4_known), pick_v4(u, &v4_known))
    };
    let sport = pick_port(u, &ports);
    let dport = pick_port(u, &ports);
    let l4 = match u.choose_index(8).unwrap_or(0) {
        0..=3 => L4::Tcp {
            sport,
            dport,
            flags: u.arbitrary().unwrap_or(0x02),
            seq: u.arbitrary().unwrap_or(0),
            ack: u.arbitrary().unwrap_or(0),
        },
        4 | 5 => L4::Udp { sport, dport },
        6 => L4::IcmpEcho {
            id: u.arbitrary().unwrap_or(0),
            seq: u.arbitrary().unwrap_or(0),
        },
        _ => L4::Raw {
            proto: u.arbitrary().unwrap_or(0),
        },
    };
    let mut b = PacketBuilder::new(ip, l4)
        .macs([0x02, 0xcc, 0, 0, 0, 0x10], CLI_DEV_MAC)
        .ttl(u.arbitrary().unwrap_or(64));
    if u.ratio(1, 8).unwrap_or(false) {
        b = b.vlan(u.int_in_range(0..=4095).unwrap_or(0));
    }
    if !v6 {
        if u.ratio(1, 8).unwrap_or(false) {
            let n = u.int_in_range(0..=40).unwrap_or(0);
            let opts = u.bytes(n).unwrap_or_default().to_vec();
            b = b.ipv4_options(&opts);
        }
        if u.ratio(1, 16).unwrap_or(false) {
            b = b.fragment(
                u.arbitrary().unwrap_or(false),
                u.int_in_range(0..=8191).unwrap_or(0),
            );
        }
        if u.ratio(1, 32).unwrap_or(false) {
            b = b.ihl(u.int_in_range(0..=15).unwrap_or(5));
        }
        if matches!(l4, L4::Udp { .. }) && u.ratio(1, 8).unwrap_or(false) {
            b = b.udp_zero_checksum();
        }
    }
    let n = u.int_in_range(0..=64).unwrap_or(0);
    b = b.payload(u.bytes(n).unwrap_or_default());
    let mut frame = b.build();
    // Now and then a few bytes overwritten, checksums no longer fixed up.
    let writes = if u.ratio(1, 4).unwrap_or(false) {
        u.int_in_range(1..=4).unwrap_or(1)
    } else {
        0
    };
    for _ in 0..writes {
        let at = u.choose_index(frame.len()).unwrap_or(0);
        frame[at] = u.arbitrary().unwrap_or(0);
    }
    frame
}

fuzz_target!(init: LAB.with(|l| *l.borrow_mut() = Some(load())), |data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (mode, ingress) = match u.arbitrary::<u8>() {
        Ok(b) => (b & 0x3, (b >> 2) % 3),
        Err(_) => return,
    };
    let frame = if mode == 0 {
        let rest = u.take_rest();
        rest[..rest.len().min(MAX_FRAME)].to_vec()
    } else {
        described_packet(&mut u)
    };
    if frame.len() < MIN_FRAME {
        return;
    }
    LAB.with(|l| {
        let l = l.borrow();
        let lab = l.as_ref().expect("init loaded the program");
        let ifindex = match ingress {
            0 => lab.cli_ifindex,
            1 => lab.bk_ifindex,
            _ => 0,
        };
        let out = run_xdp(lab.prog_fd, &frame, ifindex, 1)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed on a {}-byte frame: {e}", frame.len()));
        assert!(
            matches!(out.action, xdp::DROP | xdp::PASS | xdp::TX | xdp::REDIRECT),
            "verdict {} for {frame:02x?}",
            xdp::name(out.action)
        );
        VERDICTS[out.action as usize].fetch_add(1, Relaxed);
        assert_eq!(
            out.packet.len(),
            frame.len(),
            "frame changed length ({})",
            xdp::name(out.action)
        );
        if matches!(out.action, xdp::TX | xdp::REDIRECT) {
            // Sent out of one of the balancer's devices, so from its MAC address.
            let src_mac = &out.packet[6..12];
            assert!(
                src_mac == CLI_DEV_MAC || src_mac == BK_DEV_MAC,
                "{} with source MAC {src_mac:02x?}, not a device's",
                xdp::name(out.action)
            );
        }
        if out.packet != frame && verify_checksums(&frame).is_ok() {
            CHECKED.fetch_add(1, Relaxed);
            if let Err(e) = verify_checksums(&out.packet) {
                panic!(
                    "{} rewrote a frame with valid checksums into one with a bad checksum: {e}\n\
                     in:  {frame:02x?}\nout: {:02x?}",
                    xdp::name(out.action),
                    out.packet
                );
            }
        }
    });
});
