//! `proxy`: run the balancer, or check a configuration file.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use proxy::{
    balancer::{settings_from, Balancer},
    config::{Config, IoChoice, ListenerConfig},
    ebpf::{DataPlane, LoadOptions},
    terminator::{
        self,
        server::{pick_mode, ConnLimits, ListenerSpec, Terminator},
    },
};
use proxy_common::{backend_counter_index, Reason};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(version, about = "eBPF/XDP-assisted L4 proxy for blockchain API nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IoFlag {
    Auto,
    Uring,
    Epoll,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP data plane, attach it and serve until SIGINT/SIGTERM (SIGHUP reloads pools).
    Run {
        #[arg(short, long, default_value = "/etc/xdp-proxy/proxy.toml")]
        config: PathBuf,
        /// Seconds between counter summaries in the log (0: never).
        #[arg(long, default_value_t = 10)]
        stats_interval: u64,
        /// Terminator I/O: io_uring, epoll, or auto (io_uring when the kernel allows it).
        /// Overrides `terminator.io`.
        #[arg(long, value_enum)]
        io: Option<IoFlag>,
    },
    /// Validate a configuration file and report every problem.
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run {
            config,
            stats_interval,
            io,
        } => run(&config, stats_interval, io),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> Result<()> {
    let config = Config::load(file)?;
    let backends: usize = config.pools.values().map(|p| p.backends.len()).sum();
    println!(
        "{}: ok ({} listeners, {} pools, {} backends)",
        file.display(),
        config.listeners.len(),
        config.pools.len(),
        backends
    );
    Ok(())
}

fn run(path: &std::path::Path, stats_interval: u64, io_flag: Option<IoFlag>) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Config::load(path)?;
    let b = &config.balancer;
    let mut dp = DataPlane::load(&LoadOptions {
        pin_dir: b.pin_dir.clone(),
        ring_size: b.ring_size,
        max_flows: b.max_flows,
    })
    .context("loading the XDP data plane (needs root and a kernel with BPF/XDP)")?;
    let mut balancer =
        Balancer::from_config(&config, &mut dp).context("writing the initial state to the maps")?;
    for iface in &b.interfaces {
        dp.attach(iface)
            .with_context(|| format!("attaching XDP to {iface}"))?;
    }
    for (name, num, pool) in balancer.vips() {
        info!(listener = name, vip = num, pool, "listener ready");
    }
    let specs = terminator::listener_specs(&config, &balancer)?;
    let mut terminated: Vec<(ListenerConfig, ListenerSpec)> = Vec::new();
    let term = if specs.is_empty() {
        None
    } else {
        let choice = match io_flag {
            Some(IoFlag::Auto) => IoChoice::Auto,
            Some(IoFlag::Uring) => IoChoice::Uring,
            Some(IoFlag::Epoll) => IoChoice::Epoll,
            None => config.terminator.io,
        };
        let mode = pick_mode(terminator::requested_mode(choice));
        let t = &config.terminator;
        let workers = if t.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            t.workers
        };
        let limits = ConnLimits::new(t.max_connections, t.max_connections_per_client);
        let started = Terminator::start(
            mode,
            workers,
            specs.iter().map(|(_, s)| s.clone()).collect(),
            limits,
            Duration::from_secs(t.shutdown_grace_secs),
        )
        .map_err(terminator::SetupError::Start)?;
        terminated = specs;
        Some(started)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let period = Duration::from_secs(stats_interval.max(1));
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        // certbot renews in place: poll the files' modification times.
        let mut cert_tick = tokio::time::interval(Duration::from_secs(5));
        cert_tick.tick().await;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    reload(path, &mut balancer, &mut dp);
                    for (l, spec) in &terminated {
                        match terminator::upstream_set(&balancer, l) {
                            Ok(set) => spec.ctx.upstreams.replace(set),
                            Err(e) => error!("reload: listener {}: {e}", l.name),
                        }
                    }
                }
                _ = cert_tick.tick() => {
                    for (_, spec) in &terminated {
                        if let Some(tls) = &spec.tls {
                            tls.resolver.reload_changed();
                        }
                    }
                }
                _ = tick.tick(), if stats_interval > 0 => log_stats(&dp, &balancer),
            }
        }
        anyhow::Ok(())
    })?;
    if let Some(t) = term {
        info!("shutting down: no new connections; live ones get the grace period");
        t.shutdown();
    }
    info!("shutting down: detaching XDP (pinned maps keep established flows for a restart)");
    dp.detach_all();
    Ok(())
}

fn reload(path: &std::path::Path, balancer: &mut Balancer, dp: &mut DataPlane) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("reload rejected, keeping the running config: {e}");
            return;
        }
    };
    if let Err(e) = dp.set_settings(&settings_from(&config.balancer)) {
        error!("reload: writing settings failed: {e}");
        return;
    }
    match balancer.reconcile_pools(&config, dp) {
        Ok(changes) if changes.is_empty() => info!("reload: no changes"),
        Ok(changes) => {
            for c in changes {
                info!("reload: {c}");
            }
        }
        Err(e) => error!("reload failed part way: {e:#}"),
    }
}

fn log_stats(dp: &DataPlane, balancer: &Balancer) {
    for (name, num, _) in balancer.vips() {
        if let Ok(c) = dp.counters(num) {
            info!(
                listener = name,
                packets = c.packets,
                bytes = c.bytes,
                new_flows = c.new_flows,
                lru_misses = c.lru_misses,
                "vip counters"
            );
        }
    }
    for (pool, backends) in balancer.pools() {
        for be in backends {
            if let Ok(c) = dp.counters(backend_counter_index(be.id)) {
                info!(pool, backend = %be.name, weight = be.weight, packets = c.packets, new_flows = c.new_flows, "backend counters");
            }
        }
    }
    match dp.reasons() {
        Ok(r) => {
            let line: Vec<String> = Reason::ALL
                .iter()
                .filter(|k| r.get(k).copied().unwrap_or(0) > 0)
                .map(|k| format!("{}={}", k.label(), r[k]))
                .collect();
            info!("packets by reason: {}", line.join(" "));
        }
        Err(e) => warn!("reading reasons failed: {e}"),
    }
}
