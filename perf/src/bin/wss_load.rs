//! `wss-load`: load for a `wss://` JSON-RPC service (a BitShares API node, or the proxy in
//! front of it). Connection cycles, request/response, or subscriptions; latency in HDR
//! histograms. See `proxy_perf::wss_load` for what each mode does, and the README.
//!
//! ```text
//! wss-load wss://node.example.org/ws --mode pingpong --concurrency 100 --duration 30
//! wss-load wss://eu.example.test/ --connect 10.0.0.5:443 --ca ca.pem --mode cycles --rate 200
//! ```

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use proxy_perf::wss_load::{self, Load, Report, Target, Trust};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Full connection cycles: TCP, TLS 1.3 (no resumption), upgrade, one call, close.
    Cycles,
    /// Established connections, each a call and its answer at a time.
    Pingpong,
    /// Subscribe (set_subscribe_callback + get_objects 2.1.0) and count pushed notices.
    Subscribe,
}

#[derive(Parser, Debug)]
#[command(
    name = "wss-load",
    about = "Load generator for wss:// JSON-RPC services: connection cycles, request/response, subscriptions",
    version
)]
struct Args {
    /// The service, `wss://host[:port]/path` or `ws://...`.
    url: String,
    #[arg(long, value_enum, default_value_t = Mode::Pingpong)]
    mode: Mode,
    /// Concurrent clients (connections, or cycles in flight).
    #[arg(long, short = 'c', default_value_t = 10)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Operations per second over all clients (calls or cycles); default: as fast as the
    /// server answers. Latency is then counted from when each call was due.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many operations in total.
    #[arg(long)]
    max_ops: Option<u64>,
    /// A JSON-RPC call to send; repeat for a mix (clients use them in turn). Default:
    /// get_dynamic_global_properties.
    #[arg(long = "message", short = 'm')]
    messages: Vec<String>,
    /// Read calls from a file, one per line (added to --message).
    #[arg(long)]
    messages_file: Option<PathBuf>,
    /// Connect to this address instead of resolving the URL's host (SNI and Host stay the
    /// URL's).
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Trust the CA certificates in this PEM file instead of the public roots.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (handshake signatures are still verified).
    #[arg(long)]
    insecure: bool,
    /// Key exchange offered: `x25519`, or `default` (rustls' list, X25519MLKEM768 first).
    #[arg(long, default_value = "default", value_parser = ["x25519", "default"])]
    kx: String,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Connections opened at once while setting up pingpong/subscribe.
    #[arg(long, default_value_t = 64)]
    open_parallel: usize,
    /// Require every answer to equal its call (an echo server behind the proxy).
    #[arg(long)]
    expect_echo: bool,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Output {
    url: String,
    mode: Mode,
    concurrency: usize,
    seconds: f64,
    ops: u64,
    ops_per_sec: f64,
    errors: u64,
    first_error: Option<String>,
    /// Percentiles (`p50` ... `p99.99`) and `max`, in microseconds.
    latency_us: serde_json::Map<String, serde_json::Value>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be positive"
    );
    if let Some(r) = args.rate {
        ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut messages: Vec<Vec<u8>> = args
        .messages
        .iter()
        .map(|m| m.as_bytes().to_vec())
        .collect();
    if let Some(f) = &args.messages_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        messages.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.as_bytes().to_vec()),
        );
    }
    if messages.is_empty() {
        messages.push(wss_load::DEFAULT_CALL.as_bytes().to_vec());
    }
    let trust = match (&args.ca, args.insecure) {
        (Some(ca), _) => Trust::CaFile(ca.clone()),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::PublicRoots,
    };
    let target = Arc::new(Target::new(&args.url, args.connect, trust, &args.kx)?);
    let load = Load {
        max_ops: args.max_ops,
        rate: args.rate,
        messages: Arc::new(messages),
        expect_echo: args.expect_echo,
        ..Load::new(args.concurrency, Duration::from_secs_f64(args.duration))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    eprintln!(
        "wss-load: {:?} against {} ({}), {} clients, {:.1} s{}",
        args.mode,
        args.url,
        target.addr,
        args.concurrency,
        args.duration,
        args.rate.map_or(String::new(), |r| format!(", {r:.0}/s"))
    );
    let report = rt.block_on(run(args.mode, target, &load, args.open_parallel))?;
    let out = Output {
        url: args.url.clone(),
        mode: args.mode,
        concurrency: args.concurrency,
        seconds: report.secs,
        ops: report.ops,
        ops_per_sec: report.rate(),
        errors: report.errors,
        first_error: report.first_error.clone(),
        latency_us: wss_load::hist::PERCENTILES
            .iter()
            .map(|p| (format!("p{p}"), report.latency.percentile_us(*p)))
            .chain([("max".to_string(), report.latency.max_us())])
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let what = match args.mode {
            Mode::Cycles => "connection cycles",
            Mode::Pingpong => "calls answered",
            Mode::Subscribe => "notices received",
        };
        println!(
            "{} {what} in {:.1} s: {:.0}/s, {} errors",
            report.ops,
            report.secs,
            report.rate(),
            report.errors
        );
        let lat = match args.mode {
            Mode::Cycles => "cycle time",
            Mode::Pingpong | Mode::Subscribe => "round trip",
        };
        if args.mode != Mode::Subscribe {
            println!("{lat}: {}", report.latency.summary());
        }
        if let Some(e) = &report.first_error {
            println!("first error: {e}");
        }
    }
    if report.ops == 0 {
        bail!(
            "nothing succeeded{}",
            report
                .first_error
                .map_or(String::new(), |e| format!(": {e}"))
        );
    }
    Ok(())
}

async fn run(mode: Mode, target: Arc<Target>, load: &Load, parallel: usize) -> Result<Report> {
    match mode {
        Mode::Cycles => wss_load::cycles(target, load).await,
        Mode::Pingpong => {
            let conns = wss_load::open_many(target, load.concurrency, parallel).await?;
            let (r, back) = wss_load::pingpong(conns, load).await?;
            wss_load::close_all(back).await;
            Ok(r)
        }
        Mode::Subscribe => {
            let conns = wss_load::open_many(target, load.concurrency, parallel).await?;
            let conns = wss_load::subscribe(conns, parallel).await?;
            // A second of reading first, so buffered notices do not count as a rate.
            let (r, back) =
                wss_load::push(conns, Duration::from_secs(1), load.duration, &mut || {}).await?;
            wss_load::close_all(back).await;
            Ok(r)
        }
    }
}
