//! `node-sim`: simulated BitShares API nodes (HTTP POST + WebSocket JSON-RPC on
//! one port) with a deterministic chain and run-time faults.
//!
//! ```text
//! node-sim --listen 127.0.0.1:8090 --control 127.0.0.1:9090 --nodes 3
//! curl -s -d '{"id":1,"method":"call","params":["database","get_dynamic_global_properties",[]]}' 127.0.0.1:8090
//! curl -s -X POST '127.0.0.1:9091/control/lag?blocks=20'
//! ```
//!
//! With `--nodes N`, node `i` listens on port + i (and control port + i); port 0
//! picks free ports. One line per node goes to stdout once it listens:
//! `node-sim name=<name> addr=<addr> control=<addr|->`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use proxy_perf::node_sim::{ChainParams, Control, HeavyPush, NodeSim, NodeSimConfig};

#[derive(Parser, Debug)]
#[command(
    name = "node-sim",
    about = "Simulated BitShares API nodes for tests, demos and benchmarks"
)]
struct Args {
    /// API address (HTTP POST JSON-RPC and WebSocket on / or /ws).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Control endpoint address (POST /control/stall, GET /control/state, ...); none if absent.
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Number of nodes; node i uses port + i on both addresses.
    #[arg(long, default_value_t = 1)]
    nodes: u16,
    /// Name in logs and /control/state (suffixed with -i when --nodes > 1).
    #[arg(long, default_value = "node-sim")]
    name: String,

    /// Block interval, seconds.
    #[arg(long, default_value_t = 3)]
    block_interval: u64,
    /// Block interval in milliseconds (overrides --block-interval; e.g. 200 for fast tests).
    #[arg(long)]
    block_interval_ms: Option<u64>,
    /// Maintenance interval, seconds.
    #[arg(long, default_value_t = 3600)]
    maintenance_interval: u32,
    /// Slots skipped after each maintenance block.
    #[arg(long, default_value_t = 3)]
    maintenance_skip_slots: u32,
    /// Added to the wall clock to get the chain time (may be negative).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    time_offset_secs: i64,

    /// Start stalled.
    #[arg(long)]
    stall: bool,
    /// Start lagging this many blocks.
    #[arg(long)]
    lag: Option<u64>,
    /// Start flapping healthy/stalled with this period.
    #[arg(long)]
    flap_period_ms: Option<u64>,
    /// Delay every answer.
    #[arg(long)]
    slow_ms: Option<u64>,
    /// Start with the API listener closed (POST /control/accept opens it).
    #[arg(long)]
    refuse: bool,
    /// Heavy push: extra objects per block for subscribers.
    #[arg(long)]
    heavy_objects: Option<u32>,
    /// Heavy push: approximate bytes per object.
    #[arg(long, default_value_t = 512)]
    heavy_bytes: u32,
    /// Heavy push: objects per notice message.
    #[arg(long, default_value_t = 1)]
    heavy_per_notice: u32,

    /// Log filter (RUST_LOG wins when set); `debug` logs every connection.
    #[arg(long, default_value = "info")]
    log: String,
}

fn shift(addr: SocketAddr, i: u16) -> Result<SocketAddr> {
    let mut a = addr;
    if a.port() != 0 {
        let port = a.port().checked_add(i).context("port out of range")?;
        a.set_port(port);
    }
    Ok(a)
}

fn initial_controls(a: &Args) -> Vec<Control> {
    let mut c = Vec::new();
    if let Some(n) = a.lag {
        c.push(Control::Lag(n));
    }
    if let Some(p) = a.flap_period_ms {
        c.push(Control::Flap(Duration::from_millis(p)));
    }
    if a.stall {
        c.push(Control::Stall);
    }
    if let Some(ms) = a.slow_ms {
        c.push(Control::Slow(Duration::from_millis(ms)));
    }
    if let Some(n) = a.heavy_objects {
        c.push(Control::Heavy(HeavyPush {
            objects_per_block: n,
            object_bytes: a.heavy_bytes,
            objects_per_notice: a.heavy_per_notice,
        }));
    }
    if a.refuse {
        c.push(Control::Refuse);
    }
    c
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("bad --log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let chain = ChainParams {
        block_interval_ms: args
            .block_interval_ms
            .unwrap_or(args.block_interval.saturating_mul(1000)),
        maintenance_interval_secs: args.maintenance_interval,
        maintenance_skip_slots: args.maintenance_skip_slots,
    };
    chain.validate().context("chain parameters")?;

    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let name = if args.nodes > 1 {
            format!("{}-{i}", args.name)
        } else {
            args.name.clone()
        };
        let config = NodeSimConfig {
            name: name.clone(),
            listen: shift(args.listen, i)?,
            control: args.control.map(|c| shift(c, i)).transpose()?,
            chain,
            time_offset_secs: args.time_offset_secs,
            initial: initial_controls(&args),
        };
        let node = NodeSim::spawn(config)
            .await
            .with_context(|| format!("starting {name}"))?;
        let control = node
            .control_addr
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        println!("node-sim name={name} addr={} control={control}", node.addr);
        nodes.push(node);
    }
    std::io::stdout().flush()?;
    tracing::info!(
        nodes = nodes.len(),
        head = nodes[0].head().num,
        "node simulators running"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}
