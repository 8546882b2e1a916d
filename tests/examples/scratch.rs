use proxy::ebpf::{test_run::run_xdp, DataPlane, LoadOptions};
use proxy_common::*;
use proxy_tests::{fixture::PinDir, netns::*, packet::*};
use std::net::Ipv4Addr;

fn main() -> anyhow::Result<()> {
    let ns = NetNs::new("scr")?;
    veth_pair(&ns, "cli0", &ns, "cli0p")?;
    veth_pair(&ns, "bk0", &ns, "bk0p")?;
    for d in ["cli0", "cli0p", "bk0", "bk0p"] {
        ns.ip(&["link", "set", d, "up"])?;
    }
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "cli0"])?;
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "bk0"])?;
    ns.ip(&[
        "neigh",
        "add",
        "198.51.100.11",
        "lladdr",
        "02:bb:00:00:00:11",
        "dev",
        "bk0",
        "nud",
        "permanent",
    ])?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    let cli = ifindex(&ns, "cli0")?;
    println!("cli0 ifindex {cli}");
    let pin = PinDir::new("pxt-scratch")?;
    let p = pin.path().to_path_buf();
    let r = run_in(&ns, move || -> anyhow::Result<()> {
        let mut o = LoadOptions::new(&p, 13);
        o.max_flows = 1024;
        let mut dp = DataPlane::load(&o)?;
        dp.set_settings(&Settings {
            snat_v4: u32::from_ne_bytes([198, 51, 100, 1]),
            nat_port_min: 20000,
            nat_port_max: 29999,
            tcp_idle_timeout_ns: 300_000_000_000,
            udp_idle_timeout_ns: 30_000_000_000,
            ..Default::default()
        })?;
        dp.set_backend(
            1,
            &Backend {
                addr: v4_words([198, 51, 100, 11]),
                port: 8080u16.to_be(),
                family: 4,
                flags: BACKEND_PRESENT,
            },
        )?;
        dp.set_vip(
            &VipKey {
                addr: v4_words([203, 0, 113, 10]),
                port: 80u16.to_be(),
                proto: 6,
                family: 4,
            },
            &VipMeta {
                vip_num: 0,
                flags: 0,
            },
        )?;
        let deltas: Vec<_> = (0..13)
            .map(|s| proxy::maglev::RingDelta { slot: s, id: 1 })
            .collect();
        dp.write_ring_delta(0, &deltas)?;
        let fd = dp.program_fd()?;
        let pkt = PacketBuilder::tcp(
            Ip::v4(Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(203, 0, 113, 10)),
            40000,
            80,
            tcp_flags::SYN,
        )
        .build();
        for len in [0usize, 13, 14] {
            println!(
                "len {len}: {:?}",
                run_xdp(fd, &pkt[..len], 0, 1).map(|o| o.action)
            );
        }
        let o = run_xdp(fd, &pkt, cli, 1)?;
        println!("action {} \n{}", o.action, hex_diff(&pkt, &o.packet));
        let o = run_xdp(fd, &pkt, cli, 10)?;
        println!("repeat 10 action {}", o.action);
        println!("{:?}", dp.reasons()?);
        println!("{:?}", dp.counters(0)?);
        Ok(())
    })?;
    r
}
