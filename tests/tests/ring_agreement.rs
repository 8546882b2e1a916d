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
    fixture::{xdp as action, PinDir},
    netns::{run_in, unique_prefix, NetNs},
    packet::{parse, tcp_flags, Ip, PacketBuilder},
    rng::Rng,
};

const CONFIG: &str = r#"
[balancer]
interfaces = ["lo"]
snat_v4 = "192.0.2.254"
snat_v6 = "2001:db8:ff::1"
nat_ports = [10000, 60000]
pin_dir = "PIN_DIR"

[[listener]]
name = "rpc-l4"
address = "203.0.113.10:8090"
mode = "l4"
pool = "eu"
hash = "source"

[[listener]]
name = "wss"
address = "203.0.113.10:443"
mode = "ws"
pool = "eu"

[[listener]]
name = "rpc6-l4"
address = "[2001:db8:10::10]:8090"
mode = "l4"
pool = "eu6"
hash = "source"

[[listener]]
name = "wss6"
address = "[2001:db8:10::10]:443"
mode = "ws"
pool = "eu6"

[pools.eu]
backends = [
  { name = "node-a", address = "198.51.100.11:8090", weight = 100 },
  { name = "node-b", address = "198.51.100.12:8090", weight = 100 },
  { name = "node-c", address = "198.51.100.13:8090", weight = 200 },
  { name = "node-d", address = "198.51.100.14:8090", weight = 50 },
]

[pools.eu6]
backends = [
  { name = "node-a6", address = "[2001:db8:b::11]:8090", weight = 1 },
  { name = "node-b6", address = "[2001:db8:b::12]:8090", weight = 1 },
  { name = "node-c6", address = "[2001:db8:b::13]:8090", weight = 2 },
]
"#;

#[test]
fn terminator_and_kernel_choose_the_same_node() {
    let pins = PinDir::new(&format!("{}-ring", unique_prefix())).expect("pin dir");
    let text = CONFIG.replace("PIN_DIR", &pins.path().display().to_string());
    let config = Config::parse(&text, "ring_agreement").expect("config");
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
