//! `cargo xtask bench l4`: L4 forwarding through the XDP full-NAT data plane, nftables DNAT
//! and HAProxy `mode tcp` on the same veth lab, in the same run (`proxy_perf::l4_bench`):
//! new connections/s, small-packet packets/s, large-payload Gbit/s and the balancer's CPU
//! per packet, with the balancer isolated on its own core by threaded NAPI.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use proxy_perf::{
    bench::results::DEFAULT_DIR,
    l4_bench::{self, peers::Peer, Options},
};

#[derive(Parser, Debug)]
#[command(
    about = "L4 forwarding: XDP full NAT vs nftables DNAT vs HAProxy mode tcp, same lab, same run"
)]
struct Args {
    /// A smaller run (about 45 s): 1 round, 4 s windows, unless given.
    #[arg(long)]
    quick: bool,
    /// Seconds per measured window (default 10, quick 4).
    #[arg(long)]
    seconds: Option<f64>,
    /// Rounds per peer, interleaved (default 3, quick 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Where `l4.json` and `l4.md` go.
    #[arg(long, default_value = DEFAULT_DIR)]
    out_dir: PathBuf,
    /// The balancer's CPU (its veths' NAPI kthreads, HAProxy).
    #[arg(long, default_value_t = 0)]
    proxy_cpu: usize,
    /// The load generator's CPU (clients, node servers, their veths' NAPI kthreads).
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Storm client threads (new connections).
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Request/response connections (small packets).
    #[arg(long, default_value_t = 64)]
    small_connections: usize,
    /// Request and response size in bytes (small packets).
    #[arg(long, default_value_t = 64)]
    small_bytes: usize,
    /// Streaming connections (large payloads).
    #[arg(long, default_value_t = 4)]
    large_connections: usize,
    /// Leave the veths' NAPI in softirq on the sending CPU (not isolated; for comparison).
    #[arg(long)]
    no_threaded_napi: bool,
    /// Only these peers (xdp, nftables, haproxy), for a look at one; ratios need xdp.
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("l4-bench needs root (namespaces, XDP, nftables, threaded NAPI)");
    }
    if args.proxy_cpu == args.client_cpu {
        bail!("--proxy-cpu and --client-cpu must differ (the point is to isolate the balancer)");
    }
    let opts = Options {
        quick: args.quick,
        seconds: args.seconds.unwrap_or(if args.quick { 4.0 } else { 10.0 }),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        out_dir: args.out_dir,
        proxy_cpu: args.proxy_cpu,
        client_cpu: args.client_cpu,
        workers: args.workers,
        small_connections: args.small_connections,
        small_bytes: args.small_bytes,
        large_connections: args.large_connections,
        no_threaded_napi: args.no_threaded_napi,
        peers: match &args.peers {
            None => Peer::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| match n.as_str() {
                    "xdp" | "xdp-proxy" => Ok(Peer::Xdp),
                    "nftables" => Ok(Peer::Nftables),
                    "haproxy" => Ok(Peer::Haproxy),
                    other => bail!("unknown peer `{other}` (xdp, nftables, haproxy)"),
                })
                .collect::<Result<_>>()?,
        },
    };
    l4_bench::run(&opts)
}
