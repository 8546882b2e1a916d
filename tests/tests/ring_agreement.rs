//! The terminator and the XDP program pick the same node for a client: the terminator's
//! choice (userspace Maglev table, client-address hash) is compared with where the kernel
//! program NATs a SYN from that client (BPF_PROG_TEST_RUN), for 10,000 random IPv4 and
//! 1,000 random IPv6 client addresses on the same pool.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proxy::{
    balancer::Balancer,
    config::Config,
    ebpf::{test_run::run_xdp, DataPlane, LoadOptions},
    plane::upstream_set,
};
use proxy_tests::{
    config::{Backend, ConfigBuilder},
    fixture::{xdp as action, PinDir},
    netns::{run_in, unique_prefix, NetNs},
    packet::{parse, tcp_flags, Ip, PacketBuilder},
    rng::Rng,
};

/// Two VIPs (IPv4, IPv6), each with an `l4` listener hashing by source and a `ws` one.
fn config(pin_dir: &str) -> Config {
    let eu = [
        ("a", 11, 100),
        ("b", 12, 100),
        ("c", 13, 200),
        ("d", 14, 50),
    ]
    .map(|(n, host, w)| {
        Backend::new(format!("node-{n}"), format!("198.51.100.{host}:8090")).weight(w)
    });
    let eu6 = [("a6", 11, 1), ("b6", 12, 1), ("c6", 13, 2)].map(|(n, host, w)| {
        Backend::new(format!("node-{n}"), format!("[2001:db8:b::{host}]:8090")).weight(w)
    });
    ConfigBuilder::new(&["lo"])
        .set("balancer", "snat_v4", "192.0.2.254")
        .set("balancer", "snat_v6", "2001:db8:ff::1")
        .set("balancer", "nat_ports", vec![10000, 60000])
        .set("balancer", "pin_dir", pin_dir)
        .listener("rpc-l4", "203.0.113.10:8090", "l4", "eu")
        .listener_key("hash", "source")
        .listener("wss", "203.0.113.10:443", "ws", "eu")
        .listener("rpc6-l4", "[2001:db8:10::10]:8090", "l4", "eu6")
        .listener_key("hash", "source")
        .listener("wss6", "[2001:db8:10::10]:443", "ws", "eu6")
        .pool("eu", &eu)
        .pool("eu6", &eu6)
        .build("ring_agreement")
}

#[test]
fn terminator_and_kernel_choose_the_same_node() {
    let pins = PinDir::new(&format!("{}-ring", unique_prefix())).expect("pin dir");
    let config = config(&pins.path().display().to_string());
    let ns = NetNs::new("ring").expect("namespace");
    let mismatches = run_in(&ns, move || {
        let b = &config.balancer;
        let mut dp = DataPlane::load(&LoadOptions {
            max_flows: 65_536,
            ..LoadOptions::from_config(b)
        })
        .expect("load");
        let balancer = Balancer::from_config(&config, &mut dp).expect("maps");
        let fd = dp.program_fd().expect("fd");
        let mut rng = Rng::new(0x5eed_1234_abcd_0001);
        let mut mismatches = Vec::new();
        let mut checked = 0;
        for (l4, ws, count) in [("rpc-l4", "wss", 10_000), ("rpc6-l4", "wss6", 1_000)] {
            let listener = config.listeners.iter().find(|l| l.name == ws).unwrap();
            let set = upstream_set(&balancer, listener).expect("terminator view");
            let vip = config
                .listeners
                .iter()
                .find(|l| l.name == l4)
                .unwrap()
                .address;
            for _ in 0..count {
                let r = rng.next_u64();
                let client: IpAddr = match vip.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((r >> 32) as u32)),
                    IpAddr::V6(_) => {
                        IpAddr::V6(Ipv6Addr::from(((r as u128) << 64) | rng.next_u64() as u128))
                    }
                };
                let ip = match (client, vip.ip()) {
                    (IpAddr::V4(c), IpAddr::V4(v)) => Ip::v4(c, v),
                    (IpAddr::V6(c), IpAddr::V6(v)) => Ip::v6(c, v),
                    _ => unreachable!(),
                };
                let sport = 1024 + (r % 60_000) as u16;
                let syn = PacketBuilder::tcp(ip, sport, vip.port(), tcp_flags::SYN).build();
                let out = run_xdp(fd, &syn, 0, 1).expect("BPF_PROG_TEST_RUN");
                // No neighbours in this namespace: the NAT'ed packet goes to the stack (PASS).
                assert!(
                    out.action == action::PASS
                        || out.action == action::REDIRECT
                        || out.action == action::TX,
                    "unexpected verdict {}",
                    action::name(out.action)
                );
                let kernel = parse(&out.packet).expect("parse output").dst;
                let terminator = set.candidates(client)[0].addr.ip();
                if kernel != terminator {
                    mismatches.push(format!(
                        "{client}: kernel {kernel}, terminator {terminator}"
                    ));
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 11_000);
        mismatches
    })
    .expect("namespace thread");
    assert!(
        mismatches.is_empty(),
        "{} disagreements, first: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}
