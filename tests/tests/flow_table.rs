//! The IPv4 flow table (`FLOW_SLOTS4`, a set-associative table in an array map) through the
//! real program with BPF_PROG_TEST_RUN: a full bucket gives its least recently seen flow up
//! to a new one, RST frees a slot, the table and its hash seed survive a restart of the
//! userspace process, and a changed flow limit under pinned maps is refused.
//!
//! Whether a packet found its flow is read from the VIP's counters (new flows, LRU misses),
//! so no routes are needed: forwarded packets end as XDP_PASS (no next hop) either way.
//! Root only; CI runs as root.

use std::{net::Ipv4Addr, thread::sleep, time::Duration};

use proxy::{
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
        eprintln!("skipped: {why}");
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
        snat_v4: u32::from_ne_bytes([198, 51, 100, 1]),
        nat_port_min: 20_000,
        nat_port_max: 29_999,
        tcp_idle_timeout_ticks: ticks(300_000_000_000),
        udp_idle_timeout_ticks: ticks(30_000_000_000),
        closing_timeout_ticks: ticks(10_000_000_000),
        ..Settings::default()
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
        &VipKey {
            addr: v4_words(VIP.octets()),
            port: VIP_PORT.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        },
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

/// The tables under writers on two CPUs at once: a small flow table (evicting constantly) and
/// a small NAT port range (ports reclaimed from evicted flows), new flows and packets of
/// known flows interleaved on both CPUs. Afterwards: no NAT port is shared by two flows in
/// the table, and every flow in it finds its own NAT entry pointing back at it.
#[test]
fn tables_stay_consistent_under_writers_on_two_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs 2 CPUs, this machine has {cpus}");
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
            snat_addr: settings.snat_v4,
            backend_port: 8080u16.to_be(),
            nat_port: f.state.nat_port,
            proto: PROTO_TCP,
            pad: [0; 3],
        };
        let h = proxy_common::hash::nat_hash4(&key, settings.table_seed);
        let mask = proxy_common::nat_slots4(nat.len() as u32 / 2) - 1;
        let slot = &nat[(h & mask) as usize];
        assert!(
            slot.tag == proxy_common::slot_tag(h) && slot.key == key,
            "flow {:?}: its NAT entry is missing",
            f.key
        );
        assert_eq!(
            (slot.state.client_addr[0], slot.state.client_port),
            (f.key.src, f.key.sport),
            "flow {:?}: its NAT entry belongs to another client",
            f.key
        );
    }
}
