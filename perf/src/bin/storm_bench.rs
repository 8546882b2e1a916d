//! `cargo xtask bench storm`: new TCP connections per second through the XDP full-NAT data
//! plane against nftables DNAT (kernel conntrack) on the same veth lab, in the same run.
//!
//! The lab (`proxy_tests::topology`): client namespace → balancer namespace → one node
//! namespace whose server answers one line and closes first (its side of every tuple then
//! sits in TIME_WAIT, as behind an HTTP server with `Connection: close`). The client opens
//! connections as fast as they complete on many threads (`proxy_tests::storm`).
//!
//! Rounds alternate between the peers (XDP, nftables, XDP, ...); each round builds a fresh
//! lab, so neither peer inherits the other's TIME_WAIT or conntrack state. The XDP data plane
//! runs with the default configuration (only interfaces, NAT address, listener and pool are
//! given). For every round the bench records connections/s, failures, NAT-port drops, the
//! slowest second, and the machine's CPU time (busy and softirq, where XDP and netfilter
//! run on veth) from /proc/stat: client, balancer and node share this machine's cores, so
//! the CPU figures say how busy the machine was, not which side was the limit.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Parser;
use proxy::{
    balancer::Balancer,
    config::Config,
    ebpf::{DataPlane, LoadOptions},
};
use proxy_common::Reason;
use proxy_perf::bench::cleanup;
use proxy_tests::{
    netns::{self, unique_prefix},
    storm::{l4_config, storm, StormReport, StormServer, NODE_PORT, VIP_PORT as PORT},
    topology::{self, Lab},
};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "New connections/s: XDP full NAT vs nftables DNAT, same lab, same run")]
struct Args {
    /// Seconds per round.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Rounds per peer (interleaved).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Client threads.
    #[arg(long, default_value_t = 48)]
    workers: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/storm.json"))]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Peer {
    Xdp,
    Nftables,
}

#[derive(Debug, Serialize)]
struct Round {
    peer: Peer,
    connections_per_sec: f64,
    completed: u64,
    failed: u64,
    node_accepted: u64,
    /// XDP only: SYNs dropped for want of a NAT port.
    nat_port_drops: Option<u64>,
    slowest_second: u64,
    cpu_busy_share: f64,
    cpu_softirq_share: f64,
}

/// Busy and softirq jiffies of all CPUs, and the total.
fn cpu_times() -> Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, v.get(6).copied().unwrap_or(0), total))
}

fn run_round(peer: Peer, n: usize, args: &Args) -> Result<Round> {
    let tag = format!("{}b{n}", unique_prefix());
    let lab = Lab::new(&tag, 1)?;
    let server = StormServer::start(&lab.nodes[0].ns, lab.nodes[0].addr, NODE_PORT, 4)?;
    let pin_dir = format!("/sys/fs/bpf/{tag}");
    let target = SocketAddr::from((topology::VIP, PORT));
    let dp = match peer {
        Peer::Xdp => {
            let config = Config::parse(&l4_config(&lab, &pin_dir), "storm-bench")?;
            let ifaces = lab.lb_interfaces();
            let dp = netns::run_in(&lab.lb, move || -> Result<DataPlane> {
                let mut dp = DataPlane::load(&LoadOptions::from_config(&config.balancer))?;
                Balancer::from_config(&config, &mut dp)?;
                for iface in &ifaces {
                    dp.attach(iface)?;
                }
                Ok(dp)
            })??;
            Some(dp)
        }
        Peer::Nftables => {
            let rules = format!(
                "table ip storm {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
                 ip daddr {} tcp dport {PORT} dnat to {}:{NODE_PORT}\n  }}\n}}\n",
                topology::VIP,
                topology::node_addr(1)
            );
            let file = std::env::temp_dir().join(format!("{tag}.nft"));
            std::fs::write(&file, rules)?;
            lab.lb
                .exec("nft", &["-f", &file.to_string_lossy()])
                .context("loading the nftables DNAT rule (is nftables installed?)")?;
            let _ = std::fs::remove_file(&file);
            None
        }
    };
    let drops = |dp: &DataPlane| {
        dp.reasons()
            .map(|r| r[&Reason::DropNatPortsExhausted])
            .unwrap_or(0)
    };
    let drops_before = dp.as_ref().map(drops);
    let cpu_before = cpu_times()?;
    eprintln!("storm bench: round {n}, {peer:?}, {} s ...", args.seconds);
    let report: StormReport = storm(
        &lab.client,
        target,
        args.workers,
        Duration::from_secs(args.seconds),
    )?;
    let cpu_after = cpu_times()?;
    std::thread::sleep(Duration::from_millis(200));
    let nat_port_drops = dp
        .as_ref()
        .zip(drops_before)
        .map(|(dp, before)| drops(dp) - before);
    drop(dp);
    let _ = DataPlane::remove_pins(std::path::Path::new(&pin_dir));
    let total = (cpu_after.2 - cpu_before.2).max(1) as f64;
    let round = Round {
        peer,
        connections_per_sec: report.rate(),
        completed: report.completed,
        failed: report.failed,
        node_accepted: server.accepted(),
        nat_port_drops,
        slowest_second: report.per_second.iter().copied().min().unwrap_or(0),
        cpu_busy_share: (cpu_after.0 - cpu_before.0) as f64 / total,
        cpu_softirq_share: (cpu_after.1 - cpu_before.1) as f64 / total,
    };
    eprintln!(
        "  {:.0} connections/s, {} failed, slowest second {}, NAT drops {:?}, CPU busy {:.0}% (softirq {:.0}%)",
        round.connections_per_sec,
        round.failed,
        round.slowest_second,
        round.nat_port_drops,
        100.0 * round.cpu_busy_share,
        100.0 * round.cpu_softirq_share
    );
    if !report.errors.is_empty() {
        eprintln!("  first failures: {:?}", report.errors);
    }
    Ok(round)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Serialize)]
struct Output<'a> {
    scenario: &'static str,
    seconds: u64,
    workers: usize,
    rounds: &'a [Round],
    xdp_connections_per_sec: f64,
    nftables_connections_per_sec: f64,
    ratio: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("storm-bench needs root (namespaces, XDP, nftables)");
    }
    // Ctrl-C or SIGTERM mid-round: delete this run's namespaces and pins (`pxt<pid>*`) too,
    // not only on the normal path (Drop).
    let _sweep = cleanup::sweep_labs(&unique_prefix());
    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        for peer in [Peer::Xdp, Peer::Nftables] {
            rounds.push(run_round(peer, rounds.len(), &args)?);
        }
    }
    let of = |p: Peer| {
        median(
            rounds
                .iter()
                .filter(|r| r.peer == p)
                .map(|r| r.connections_per_sec)
                .collect(),
        )
    };
    let (xdp, nft) = (of(Peer::Xdp), of(Peer::Nftables));
    println!(
        "\nnew connections/s, {} s per round, median of {}:",
        args.seconds, args.rounds
    );
    println!("| peer | connections/s | ratio |");
    println!("|------|---------------|-------|");
    println!(
        "| XDP full NAT (default config) | {xdp:.0} | {:.2} |",
        xdp / nft
    );
    println!("| nftables DNAT | {nft:.0} | 1.00 |");
    let xdp_drops: u64 = rounds.iter().filter_map(|r| r.nat_port_drops).sum();
    println!("XDP NAT-port drops: {xdp_drops}");
    let out = Output {
        scenario: "storm",
        seconds: args.seconds,
        workers: args.workers,
        rounds: &rounds,
        xdp_connections_per_sec: xdp,
        nftables_connections_per_sec: nft,
        ratio: xdp / nft,
    };
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)? + "\n")?;
    println!("wrote {}", args.out.display());
    Ok(())
}
