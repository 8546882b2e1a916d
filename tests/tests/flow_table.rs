//! The IPv4 flow table (`FLOW_SLOTS4`, a set-associative table in an array map) through the
//! real program with BPF_PROG_TEST_RUN: a full bucket gives its least recently seen flow up
//! to a new one, RST frees a slot, the table and its hash seed survive a restart of the
//! userspace process, and a changed flow limit under pinned maps is refused.
//!
//! Whether a packet found its flow is read from the VIP's counters (new flows, LRU misses),
//! so no routes are needed: forwarded packets end as XDP_PASS (no next hop) either way.
//! Root only; CI runs as root.

use std::{
    net::{Ipv4Addr, SocketAddr},
    thread::sleep,
    time::Duration,
};

use proxy::{
    balancer::vip_key,
    config::Protocol,
    ebpf::{
        kernel_tick_ns, test_run::run_xdp, CounterTotals, DataPlane, DataPlaneError, LoadOptions,
    },
    maglev::{MaglevRing, RingMember},
};
use proxy_common::{
    hash::table_hash4, ticks_from_ns, v4_words, Backend, FlowKey4, Settings, VipKey, VipMeta,
    BACKEND_PRESENT, FAMILY_V4, FLOW_WAYS, PROTO_TCP,
};
use proxy_tests::{
    fixture::{test_run_unsupported, PinDir},
    netns::unique_prefix,
    packet::{tcp_flags, Ip, PacketBuilder},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const BACKEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP_PORT: u16 = 80;
const RING_SIZE: u32 = 1009;
/// 64 slots: 16 buckets of 4.
const MAX_FLOWS: u32 = 64;

/// A loaded and configured data plane with pins named after `name`, or None (with the reason
/// printed) when the kernel cannot run BPF_PROG_TEST_RUN for XDP.
fn lab(name: &str, max_flows: u32) -> Option<(PinDir, DataPlane)> {
    let pins = PinDir::new(&format!("{}-{name}", unique_prefix())).expect("pin dir");
    let mut dp = load(&pins, max_flows).expect("load");
    if let Some(why) = test_run_unsupported(dp.program_fd().unwrap()).unwrap() {
        proxy_tests::skip::skipped(&why);
        return None;
    }
    configure(&mut dp);
    Some((pins, dp))
}

/// Narrows the NAT port range to `min..=max`.
fn nat_ports(dp: &mut DataPlane, min: u16, max: u16) {
    let mut s = dp.settings().expect("settings");
    s.nat_port_min = min;
    s.nat_port_max = max;
    dp.set_settings(&s).expect("settings");
}

fn load(pins: &PinDir, max_flows: u32) -> Result<DataPlane, DataPlaneError> {
    let mut opts = LoadOptions::new(pins.path(), RING_SIZE);
    opts.max_flows = max_flows;
    DataPlane::load(&opts)
}

fn configure(dp: &mut DataPlane) {
    let tick = kernel_tick_ns();
    let ticks = |ns: u64| ticks_from_ns(ns, tick);
    dp.set_settings(&Settings {
        nat_port_min: 20_000,
        nat_port_max: 29_999,
        tcp_idle_timeout_ticks: ticks(300_000_000_000),
        udp_idle_timeout_ticks: ticks(30_000_000_000),
        closing_timeout_ticks: ticks(10_000_000_000),
        ..Settings::default().with_snat_v4(u32::from_ne_bytes([198, 51, 100, 1]))
    })
    .expect("settings");
    dp.set_backend(
        1,
        &Backend {
            addr: v4_words(BACKEND.octets()),
            port: 8080u16.to_be(),
            family: FAMILY_V4,
            flags: BACKEND_PRESENT,
        },
    )
    .expect("backend");
    dp.set_vip(
        &vip_key(SocketAddr::from((VIP, VIP_PORT)), Protocol::Tcp),
        &VipMeta::default(),
    )
    .expect("vip");
    let mut ring = MaglevRing::new(RING_SIZE).expect("ring");
    let delta = ring
        .rebuild(&[RingMember::new(1, "backend-1", 1)])
        .expect("rebuild");
    dp.write_ring_delta(0, &delta).expect("ring write");
}

fn packet(cport: u16, flags: u8) -> Vec<u8> {
    PacketBuilder::tcp(Ip::v4(CLIENT, VIP), cport, VIP_PORT, flags).build()
}

/// Runs one packet; returns how the VIP's counters moved.
fn send(dp: &DataPlane, cport: u16, flags: u8) -> CounterTotals {
    let before = dp.counters(0).expect("counters");
    run_xdp(dp.program_fd().expect("fd"), &packet(cport, flags), 1, 1).expect("test run");
    let after = dp.counters(0).expect("counters");
    CounterTotals {
        packets: after.packets - before.packets,
        bytes: after.bytes - before.bytes,
        new_flows: after.new_flows - before.new_flows,
        lru_misses: after.lru_misses - before.lru_misses,
    }
}

/// `n` client ports whose flows share one bucket of the table.
fn ports_in_one_bucket(settings: &Settings, n: usize) -> Vec<u16> {
    let bucket = |port: u16| {
        let k = FlowKey4 {
            src: u32::from_ne_bytes(CLIENT.octets()),
            dst: u32::from_ne_bytes(VIP.octets()),
            sport: port.to_be(),
            dport: VIP_PORT.to_be(),
            proto: PROTO_TCP,
            pad: [0; 3],
        };
        table_hash4(&k, settings.table_seed) & settings.flow_bucket_mask
    };
    let target = bucket(40_000);
    (40_000..u16::MAX)
        .filter(|p| bucket(*p) == target)
        .take(n)
        .collect()
}

#[test]
fn full_bucket_evicts_least_recently_seen_and_table_survives_restart() {
    let Some((pins, mut dp)) = lab("flowtable", MAX_FLOWS) else {
        return;
    };
    let settings = dp.settings().expect("settings");
    assert_ne!(settings.table_seed, 0, "the loader draws a hash seed");
    assert_eq!(settings.flow_bucket_mask, 64 / FLOW_WAYS - 1);

    let ports = ports_in_one_bucket(&settings, FLOW_WAYS as usize + 1);
    let (oldest, rest) = ports.split_first().expect("ports");
    let (newcomer, others) = rest.split_last().expect("ports");

    // The oldest flow first, then (a few ticks later) three more: the bucket is full.
    assert_eq!(send(&dp, *oldest, tcp_flags::SYN).new_flows, 1);
    sleep(Duration::from_nanos(kernel_tick_ns() * 3));
    for p in others {
        assert_eq!(send(&dp, *p, tcp_flags::SYN).new_flows, 1, "port {p}");
    }
    assert_eq!(dp.flow_count().unwrap(), FLOW_WAYS as usize);
    for p in others.iter().chain([oldest]) {
        let c = send(&dp, *p, tcp_flags::ACK);
        assert_eq!((c.packets, c.new_flows), (1, 0), "port {p} is known");
    }

    // A fifth flow in the same bucket takes the slot of the least recently seen one. The
    // ACKs above refreshed nobody's time (refreshes happen at most once per interval), so
    // that is still the oldest flow.
    assert_eq!(send(&dp, *newcomer, tcp_flags::SYN).new_flows, 1);
    assert_eq!(dp.flow_count().unwrap(), FLOW_WAYS as usize);
    for p in others {
        assert_eq!(send(&dp, *p, tcp_flags::ACK).new_flows, 0, "port {p} kept");
    }
    let c = send(&dp, *oldest, tcp_flags::ACK);
    assert_eq!(
        (c.new_flows, c.lru_misses),
        (1, 1),
        "the evicted flow is pinned again, counted as an LRU miss"
    );

    // RST forgets a flow at once and frees its slot.
    let gone = others[0];
    send(&dp, gone, tcp_flags::RST | tcp_flags::ACK);
    assert_eq!(dp.flow_count().unwrap(), FLOW_WAYS as usize - 1);
    assert_eq!(send(&dp, gone, tcp_flags::ACK).new_flows, 1);

    // A restart of the userspace process keeps table and seed: flows are still found.
    drop(dp);
    let mut dp = load(&pins, MAX_FLOWS).expect("reload");
    assert_eq!(dp.settings().unwrap().table_seed, settings.table_seed);
    for p in &others[1..] {
        assert_eq!(
            send(&dp, *p, tcp_flags::ACK).new_flows,
            0,
            "port {p} after restart"
        );
    }
    drop(dp);

    // Another flow limit would need another table: refused, pinned flows untouched.
    match load(&pins, MAX_FLOWS * 4) {
        Err(DataPlaneError::FlowTableSizeChanged {
            pinned: 64,
            wanted: 256,
            ..
        }) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a changed flow limit under pinned maps was accepted"),
    }
}

/// The VIP index (open addressing in an array map, written by userspace, probed by the
/// program): all `MAX_VIPS` VIPs are reachable, removing some leaves the rest reachable
/// (lookups probe past removed entries), and a re-added VIP is found again.
#[test]
fn vip_index_reaches_every_vip_through_removals() {
    // Room for every flow: this test is about VIPs, not about full tables.
    let Some((_pins, mut dp)) = lab("vipindex", 4096) else {
        return;
    };
    let n = proxy_common::MAX_VIPS;
    let vip = |i: u32| Ipv4Addr::new(198, 51, 101, i as u8);
    let key = |i: u32| VipKey {
        addr: v4_words(vip(i).octets()),
        port: VIP_PORT.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
    };
    let mut ring = MaglevRing::new(RING_SIZE).expect("ring");
    let delta = ring
        .rebuild(&[RingMember::new(1, "backend-1", 1)])
        .expect("rebuild");
    for i in 0..n {
        dp.set_vip(
            &key(i),
            &VipMeta {
                vip_num: i,
                ..VipMeta::default()
            },
        )
        .unwrap_or_else(|e| panic!("vip {i}: {e}"));
        dp.write_ring_delta(i, &delta).expect("ring");
    }
    // A new flow to VIP i is counted on VIP number i, and only there.
    let mut cport = 50_000u16;
    let mut new_flow_to = |dp: &DataPlane, i: u32| {
        cport += 1;
        let frame =
            PacketBuilder::tcp(Ip::v4(CLIENT, vip(i)), cport, VIP_PORT, tcp_flags::SYN).build();
        let before = dp.counters(i).expect("counters").new_flows;
        run_xdp(dp.program_fd().expect("fd"), &frame, 1, 1).expect("test run");
        dp.counters(i).expect("counters").new_flows - before
    };
    for i in 0..n {
        assert_eq!(new_flow_to(&dp, i), 1, "VIP {i} of {n} is reachable");
    }
    for i in (0..n).step_by(2) {
        dp.remove_vip(&key(i)).expect("remove");
    }
    for i in 0..n {
        let expect = u64::from(i % 2 == 1);
        assert_eq!(
            new_flow_to(&dp, i),
            expect,
            "VIP {i} after removing the even ones"
        );
    }
    dp.set_vip(
        &key(4),
        &VipMeta {
            vip_num: 4,
            ..VipMeta::default()
        },
    )
    .expect("re-add");
    assert_eq!(new_flow_to(&dp, 4), 1, "re-added VIP 4");
}

/// NAT ports are reclaimed from flows that are over: with a one-port NAT range, a second
/// flow to the same backend finds no port while the first one lives, and takes its port
/// once the first has timed out (its entry is still in the table).
#[test]
fn nat_port_of_a_timed_out_flow_is_reused() {
    let Some((_pins, mut dp)) = lab("natreuse", 4096) else {
        return;
    };
    nat_ports(&mut dp, 20_000, 20_000);
    let exhausted = || dp.reasons().expect("reasons")[&proxy_common::Reason::DropNatPortsExhausted];

    assert_eq!(send(&dp, 41_000, tcp_flags::SYN).new_flows, 1, "first flow");
    let before = exhausted();
    assert_eq!(
        send(&dp, 41_001, tcp_flags::SYN).new_flows,
        0,
        "no port left"
    );
    assert_eq!(exhausted(), before + 1, "counted as NAT ports exhausted");

    // Every flow times out at once: the first flow's port is free again.
    let mut s = dp.settings().expect("settings");
    s.tcp_idle_timeout_ticks = 0;
    dp.set_settings(&s).expect("settings");
    assert_eq!(
        send(&dp, 41_001, tcp_flags::SYN).new_flows,
        1,
        "port reused"
    );
}

/// A removed `l4` listener drains: flagged `VIP_DRAINING`, its established flows keep going to
/// their node while a new flow's first packet passes to the stack as for no VIP; once the
/// drain ends (the VIP is removed) the old flow is gone too.
#[test]
fn draining_vip_keeps_its_flows_and_takes_no_new_ones() {
    let Some((_pins, mut dp)) = lab("drain", 4096) else {
        return;
    };
    let not_vip =
        |dp: &DataPlane| dp.reasons().expect("reasons")[&proxy_common::Reason::PassNotVip];
    assert_eq!(
        send(&dp, 42_000, tcp_flags::SYN).new_flows,
        1,
        "flow before the drain"
    );

    let key = VipKey {
        addr: v4_words(VIP.octets()),
        port: VIP_PORT.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
    };
    let draining = VipMeta {
        flags: proxy_common::VIP_DRAINING,
        ..VipMeta::default()
    };
    dp.set_vip(&key, &draining).expect("drain");

    let old = send(&dp, 42_000, tcp_flags::ACK);
    assert_eq!(
        (old.packets, old.new_flows),
        (1, 0),
        "the live flow is still forwarded"
    );
    let before = not_vip(&dp);
    let new = send(&dp, 42_001, tcp_flags::SYN);
    assert_eq!(
        (new.packets, new.new_flows),
        (0, 0),
        "a new flow is not taken"
    );
    assert_eq!(
        not_vip(&dp),
        before + 1,
        "it passes to the stack as for no VIP"
    );

    dp.remove_vip(&key).expect("drain over");
    let before = not_vip(&dp);
    assert_eq!(
        send(&dp, 42_000, tcp_flags::ACK).packets,
        0,
        "drain over: flow gone"
    );
    assert_eq!(not_vip(&dp), before + 1);
}

/// The tables under writers on two CPUs at once: a small flow table (evicting constantly) and
/// a small NAT port range (ports reclaimed from evicted flows), new flows and packets of
/// known flows interleaved on both CPUs. Afterwards: no NAT port is shared by two flows in
/// the table, and every flow in it finds its own NAT entry pointing back at it.
#[test]
fn tables_stay_consistent_under_writers_on_two_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        proxy_tests::skip::skipped(&format!("needs 2 CPUs, this machine has {cpus}"));
        return;
    }
    // 256 flow slots (64 buckets), 512 NAT slots.
    let Some((_pins, mut dp)) = lab("stress", 256) else {
        return;
    };
    nat_ports(&mut dp, 20_000, 20_399);
    let fd = dp.program_fd().unwrap();

    const PER_CPU: u16 = 6_000;
    let workers: Vec<_> = (0..2u8)
        .map(|cpu| {
            std::thread::spawn(move || {
                proxy_tests::cpu::pin_to_cpu(cpu as usize).expect("pin to a CPU");
                // Each CPU its own clients, so no flow is pinned on both at once.
                let client = Ipv4Addr::new(192, 0, 2, 100 + cpu);
                let packet = |port: u16, flags: u8| {
                    PacketBuilder::tcp(Ip::v4(client, VIP), port, VIP_PORT, flags).build()
                };
                for i in 0..PER_CPU {
                    let port = 10_000 + i;
                    run_xdp(fd, &packet(port, tcp_flags::SYN), 1, 1).expect("test run");
                    // A packet of a recent flow (a hit, or a re-pin if it was evicted).
                    let recent = 10_000 + i / 2;
                    run_xdp(fd, &packet(recent, tcp_flags::ACK), 1, 1).expect("test run");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }

    let settings = dp.settings().expect("settings");
    let flows: Vec<_> = dp
        .ipv4_flow_slots()
        .expect("flow slots")
        .into_iter()
        .filter(|f| f.tag != proxy_common::SLOT_EMPTY && f.tag != proxy_common::SLOT_BUSY)
        .collect();
    let nat = dp.ipv4_nat_slots().expect("nat slots");
    assert!(
        flows.len() > 200,
        "the flow table is full: {} flows",
        flows.len()
    );
    let backend_addr = u32::from_ne_bytes(BACKEND.octets());
    let mut ports = std::collections::HashMap::new();
    for f in &flows {
        assert_eq!(f.state.backend, 1);
        if let Some(other) = ports.insert(f.state.nat_port, f.key) {
            panic!(
                "NAT port {} is used by two flows: {:?} and {:?}",
                u16::from_be(f.state.nat_port),
                other,
                f.key
            );
        }
        let key = proxy_common::NatKey4 {
            backend_addr,
            snat_addr: settings.snat_v4[0],
            backend_port: 8080u16.to_be(),
            nat_port: f.state.nat_port,
            proto: PROTO_TCP,
            pad: [0; 3],
        };
        let h = proxy_common::hash::nat_hash4(&key, settings.table_seed);
        let buckets = nat.len() as u32 / proxy_common::NAT_WAYS;
        let base = ((h & (buckets - 1)) * proxy_common::NAT_WAYS) as usize;
        let slot = nat[base..base + proxy_common::NAT_WAYS as usize]
            .iter()
            .find(|slot| slot.tag == proxy_common::slot_tag(h) && slot.key == key)
            .unwrap_or_else(|| panic!("flow {:?}: its NAT entry is missing", f.key));
        assert_eq!(
            (slot.state.client_addr[0], slot.state.client_port),
            (f.key.src, f.key.sport),
            "flow {:?}: its NAT entry belongs to another client",
            f.key
        );
    }
}

// ---------------------------------------------------------------------------------------
// NAT port spaces (`proxy_common::ports`, `NAT_PORTS`): per backend, per SNAT address, a
// port whenever one is free, ports back at RST and at the second FIN.
// ---------------------------------------------------------------------------------------

const SNAT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SNAT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// A SYN from client port `cport` to `vip`: the NAT source address and port it was
/// translated to, or None if the program dropped it (counted as NAT ports exhausted).
fn open_to(dp: &DataPlane, vip: Ipv4Addr, cport: u16) -> Option<(Ipv4Addr, u16)> {
    let frame = PacketBuilder::tcp(Ip::v4(CLIENT, vip), cport, VIP_PORT, tcp_flags::SYN).build();
    let before = dp.reasons().expect("reasons")[&proxy_common::Reason::DropNatPortsExhausted];
    let out = run_xdp(dp.program_fd().expect("fd"), &frame, 1, 1).expect("test run");
    let after = dp.reasons().expect("reasons")[&proxy_common::Reason::DropNatPortsExhausted];
    if out.action == proxy_tests::fixture::xdp::DROP {
        assert_eq!(
            after,
            before + 1,
            "a dropped SYN is counted as NAT ports exhausted"
        );
        return None;
    }
    assert_eq!(after, before, "forwarded, not counted as a drop");
    let p = proxy_tests::packet::parse(&out.packet).expect("translated frame parses");
    let std::net::IpAddr::V4(src) = p.src else {
        panic!("IPv4 in, IPv4 out")
    };
    Some((src, p.sport.expect("TCP")))
}

fn open(dp: &DataPlane, cport: u16) -> Option<(Ipv4Addr, u16)> {
    open_to(dp, VIP, cport)
}

/// The backend's reply to a flow's NAT address and port (what the node sends back).
fn reply(dp: &DataPlane, nat: (Ipv4Addr, u16), flags: u8) -> proxy::ebpf::test_run::TestRunOutput {
    let frame =
        PacketBuilder::tcp(Ip::v4(BACKEND, nat.0), 8080, nat.1, flags | tcp_flags::ACK).build();
    run_xdp(dp.program_fd().expect("fd"), &frame, 1, 1).expect("test run")
}

fn occupancy(dp: &DataPlane, id: u32) -> proxy::ebpf::NatOccupancy {
    dp.nat_occupancy(id)
        .expect("read")
        .expect("backend has a port space")
}

/// Fills a 1,000-port range, frees all but `keep` flows at random (RST), and checks that
/// every freed port is found again by new flows, none handed out twice or while held, then
/// that the full range drops the next SYN while live flows keep being forwarded. At 0 %,
/// 50 %, 90 % and 99.9 % occupancy.
#[test]
fn every_free_port_is_found_at_any_occupancy() {
    // A flow table big enough that no bucket overflows (an evicted flow gives its port back).
    let Some((_pins, mut dp)) = lab("natfill", 1 << 16) else {
        return;
    };
    const RANGE: u16 = 1000;
    nat_ports(&mut dp, 20_000, 20_000 + RANGE - 1);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_cport = 10_000u16;
    for keep in [0usize, 500, 900, 999] {
        // Fill the range.
        let mut live: Vec<(u16, u16)> = Vec::new();
        for _ in 0..RANGE {
            next_cport += 1;
            let (src, port) = open(&dp, next_cport).unwrap_or_else(|| {
                let w = dp.nat_space_words(1).unwrap();
                panic!(
                    "keep {keep}: flow {} of the fill found no port ({:?}) head {:x?} words {:x?}",
                    live.len(),
                    occupancy(&dp, 1),
                    &w[..5],
                    &w[67..84]
                )
            });
            assert_eq!(src, SNAT);
            assert!(
                (20_000..20_000 + RANGE).contains(&port),
                "port {port} in range"
            );
            live.push((next_cport, port));
        }
        let mut ports: Vec<u16> = live.iter().map(|l| l.1).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), RANGE as usize, "no port handed out twice");
        assert_eq!(occupancy(&dp, 1).taken, RANGE as u32);
        assert_eq!(
            open(&dp, next_cport + 1),
            None,
            "full: the next SYN is dropped"
        );

        // Free all but `keep`, chosen at random.
        for i in (1..live.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            live.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        let freed: Vec<(u16, u16)> = live.split_off(keep);
        for (cport, _) in &freed {
            send(&dp, *cport, tcp_flags::RST | tcp_flags::ACK);
        }
        assert_eq!(occupancy(&dp, 1).taken, keep as u32, "occupancy after RSTs");

        // Every freed port is found, each once, never one a live flow holds.
        let held: std::collections::HashSet<u16> = live.iter().map(|l| l.1).collect();
        let mut got = std::collections::HashSet::new();
        for _ in 0..freed.len() {
            next_cport += 1;
            let (_, port) = open(&dp, next_cport)
                .unwrap_or_else(|| panic!("at {keep} live flows a free port was not found"));
            assert!(!held.contains(&port), "port {port} is held by a live flow");
            assert!(got.insert(port), "port {port} handed out twice");
            live.push((next_cport, port));
        }
        assert_eq!(open(&dp, next_cport + 1), None, "full again");
        // Exhaustion does not touch live flows: their packets are still forwarded.
        for (cport, _) in live.iter().take(20) {
            let c = send(&dp, *cport, tcp_flags::ACK);
            assert_eq!(
                (c.packets, c.new_flows),
                (1, 0),
                "live flow {cport} forwarded"
            );
        }
        // Reset for the next level.
        for (cport, _) in &live {
            send(&dp, *cport, tcp_flags::RST | tcp_flags::ACK);
        }
        assert_eq!(occupancy(&dp, 1).taken, 0);
    }
}

/// A one-port range: the second FIN gives the port back at once (the flow's entry lingers
/// for the last ACKs, 10 s here), and a client that reuses its 5-tuple after the close
/// (SYN on a closed flow) starts a new flow, counted as one.
#[test]
fn fin_both_ways_gives_the_port_back_and_a_reused_tuple_is_a_new_flow() {
    let Some((_pins, mut dp)) = lab("natfin", 4096) else {
        return;
    };
    nat_ports(&mut dp, 20_000, 20_000);
    let a = open(&dp, 41_000).expect("first flow");
    assert_eq!(open(&dp, 41_001), None, "one port, taken");
    send(&dp, 41_000, tcp_flags::FIN | tcp_flags::ACK);
    assert_eq!(occupancy(&dp, 1).taken, 1, "one FIN: still open");
    let r = reply(&dp, a, tcp_flags::FIN);
    assert_ne!(r.action, proxy_tests::fixture::xdp::DROP);
    assert_eq!(occupancy(&dp, 1).taken, 0, "second FIN: the port is back");
    // The last ACK of the closed flow still goes through (its entry lingers).
    let c = send(&dp, 41_000, tcp_flags::ACK);
    assert_eq!((c.packets, c.new_flows), (1, 0), "last ACK forwarded");

    // Another client takes the port now.
    assert_eq!(open(&dp, 41_001), Some(a), "the freed port is reused");
    // The first client reuses its 5-tuple: a new flow, counted, which needs a port of its
    // own; none is free, so it is dropped and counted. Once the other flow resets, it gets it.
    assert_eq!(
        open(&dp, 41_000),
        None,
        "a new connection on the closed tuple needs a port"
    );
    send(&dp, 41_001, tcp_flags::RST | tcp_flags::ACK);
    let before = dp.counters(0).unwrap().new_flows;
    assert_eq!(
        open(&dp, 41_000),
        Some(a),
        "SYN on the closed tuple: a new flow"
    );
    assert_eq!(
        dp.counters(0).unwrap().new_flows,
        before + 1,
        "counted as a new flow"
    );
}

/// Each backend has its own port space: the same two NAT ports serve two flows towards
/// each of two backends; a second SNAT address doubles every space.
#[test]
fn ports_are_per_backend_and_per_snat_address() {
    let Some((_pins, mut dp)) = lab("natspaces", 4096) else {
        return;
    };
    nat_ports(&mut dp, 20_000, 20_001);
    // VIP 1 -> backend 2 only.
    let vip2 = Ipv4Addr::new(198, 51, 100, 20);
    dp.set_backend(
        2,
        &Backend {
            addr: v4_words(Ipv4Addr::new(203, 0, 113, 20).octets()),
            port: 8080u16.to_be(),
            family: FAMILY_V4,
            flags: BACKEND_PRESENT,
        },
    )
    .expect("backend 2");
    dp.set_vip(
        &vip_key(SocketAddr::from((vip2, VIP_PORT)), Protocol::Tcp),
        &VipMeta {
            vip_num: 1,
            ..VipMeta::default()
        },
    )
    .expect("vip 2");
    let mut ring = MaglevRing::new(RING_SIZE).expect("ring");
    let delta = ring
        .rebuild(&[RingMember::new(2, "backend-2", 1)])
        .expect("rebuild");
    dp.write_ring_delta(1, &delta).expect("ring write");

    let to_1: Vec<_> = (0..2)
        .map(|i| open(&dp, 42_000 + i).expect("backend 1"))
        .collect();
    let to_2: Vec<_> = (0..2)
        .map(|i| open_to(&dp, vip2, 42_100 + i).expect("backend 2"))
        .collect();
    assert_eq!(to_1, to_2, "the same NAT ports towards each backend");
    assert_eq!(open(&dp, 42_002), None, "backend 1's space is full");
    assert_eq!(open_to(&dp, vip2, 42_102), None, "so is backend 2's");
    assert_eq!(
        occupancy(&dp, 1),
        proxy::ebpf::NatOccupancy {
            taken: 2,
            capacity: 2
        }
    );

    // A second SNAT address: two more ports per backend, from the new address.
    let mut s = dp.settings().expect("settings");
    s.snat_v4[1] = u32::from_ne_bytes(SNAT2.octets());
    s.snat_v4_count = 2;
    dp.set_settings(&s).expect("settings");
    // The spaces were rebuilt for the new geometry; the live flows' reverse entries keep
    // their ports from being handed out again.
    let more: Vec<_> = (0..2)
        .map(|i| open(&dp, 42_010 + i).expect("room on the second address"))
        .collect();
    assert!(more.iter().all(|(src, _)| *src == SNAT2), "{more:?}");
    assert_eq!(
        open(&dp, 42_012),
        None,
        "two addresses x two ports, all taken"
    );
    // Replies to the second address find their client.
    let r = reply(&dp, more[0], 0);
    let p = proxy_tests::packet::parse(&r.packet).expect("parses");
    assert_eq!(
        (p.src, p.dport),
        (std::net::IpAddr::V4(VIP), Some(42_010)),
        "reply to {more:?} translated back to the client"
    );
    // Live flows of the first address keep their ports: still forwarded as known flows.
    for i in 0..2 {
        assert_eq!(send(&dp, 42_000 + i, tcp_flags::ACK).new_flows, 0);
    }
}
