//! `proxy`: run the balancer, or check a configuration file.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use metrics::{counter, gauge};
use proxy::{
    admin::{BackendRow, Request, Response},
    balancer::{settings_from, Balancer},
    config::{Config, IoChoice, ListenerConfig},
    control::{apply_connect_event, apply_health, health_configs, refresh_terminator, tick_ramps},
    ebpf::{DataPlane, LoadOptions},
    health::{checks::unix_now, Board, Supervisor},
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
    /// Inspect and change backends of a running proxy (admin socket).
    Backends {
        /// Admin socket of the running proxy (`admin.socket` in its config).
        #[arg(long, global = true, default_value = proxy::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        action: BackendsCmd,
    },
}

#[derive(Subcommand)]
enum BackendsCmd {
    /// Every backend with weight, state, why, and counters.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a backend to a pool (no restart, nobody dropped).
    Add {
        pool: String,
        name: String,
        address: std::net::SocketAddr,
        #[arg(long, default_value_t = 100)]
        weight: u32,
    },
    /// No new connections; live ones continue.
    Drain { pool: String, name: String },
    /// Remove from the pool; its pinned flows are re-balanced.
    Remove { pool: String, name: String },
    /// Set a new weight (0 = drain).
    Weight {
        pool: String,
        name: String,
        weight: u32,
    },
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
        Command::Backends { socket, action } => backends(&socket, action),
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

fn backends(socket: &std::path::Path, action: BackendsCmd) -> Result<()> {
    let (req, json) = match action {
        BackendsCmd::List { json } => (Request::List, json),
        BackendsCmd::Add {
            pool,
            name,
            address,
            weight,
        } => (
            Request::Add {
                pool,
                name,
                address,
                weight: Some(weight),
            },
            false,
        ),
        BackendsCmd::Drain { pool, name } => (Request::Drain { pool, name }, false),
        BackendsCmd::Remove { pool, name } => (Request::Remove { pool, name }, false),
        BackendsCmd::Weight { pool, name, weight } => {
            (Request::Weight { pool, name, weight }, false)
        }
    };
    let answer = proxy::admin::call(socket, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if !answer.backends.is_empty() {
        print!("{}", proxy::admin::render_table(&answer.backends));
    } else {
        println!("{}", answer.message);
    }
    if !answer.ok {
        anyhow::bail!("refused: {}", answer.message);
    }
    Ok(())
}

/// Applies an admin request to the control plane and the terminator's tables.
fn apply_admin(
    req: Request,
    balancer: &mut Balancer,
    dp: &mut DataPlane,
    board: &Board,
    terminated: &[(ListenerConfig, ListenerSpec)],
) -> Response {
    let result = match &req {
        Request::List => {
            return Response {
                backends: backend_rows(balancer, dp, board),
                ..Response::ok("ok")
            }
        }
        Request::Add {
            pool,
            name,
            address,
            weight,
        } => balancer
            .add_backend(pool, name, *address, weight.unwrap_or(100), dp)
            .map(|id| format!("added {name} to {pool} (id {id})")),
        Request::Drain { pool, name } => balancer
            .set_weight(pool, name, 0, dp)
            .map(|_| format!("drained {name} in {pool}")),
        Request::Remove { pool, name } => balancer
            .remove_backend(pool, name, dp)
            .map(|_| format!("removed {name} from {pool}")),
        Request::Weight { pool, name, weight } => balancer
            .set_weight(pool, name, *weight, dp)
            .map(|_| format!("{name} in {pool}: weight {weight}")),
    };
    match result {
        Ok(msg) => {
            info!("admin: {msg}");
            refresh_terminator(balancer, terminated);
            Response::ok(msg)
        }
        Err(e) => {
            let why = format!("{e:#}");
            proxy::admin::log_refusal(&req, &why);
            Response::err(why)
        }
    }
}

fn backend_rows(balancer: &Balancer, dp: &DataPlane, board: &Board) -> Vec<BackendRow> {
    let mut rows = Vec::new();
    for (pool, backends) in balancer.pools() {
        for be in backends {
            let c = dp
                .counters(backend_counter_index(be.id))
                .unwrap_or_default();
            let health_why = board.why(pool, &be.name);
            let (state, why) = if be.weight == 0 {
                (
                    "drained",
                    "weight 0: no new connections, live ones continue".to_string(),
                )
            } else if !be.available {
                ("down", health_why.unwrap_or_default())
            } else if board.config(pool).is_none() {
                (
                    "active",
                    "in the ring (no health checks configured)".to_string(),
                )
            } else {
                (
                    "active",
                    health_why.unwrap_or_else(|| "not checked yet".into()),
                )
            };
            rows.push(BackendRow {
                pool: pool.to_string(),
                name: be.name.clone(),
                id: be.id,
                address: be.address,
                weight: be.weight,
                state: state.into(),
                why,
                packets: c.packets,
                new_flows: c.new_flows,
            });
        }
    }
    rows
}

/// Publishes the kernel's per-CPU counters (summed) as Prometheus counters.
fn export_xdp_counters(dp: &DataPlane, balancer: &Balancer) {
    for (name, num, _) in balancer.vips() {
        if let Ok(c) = dp.counters(num) {
            let l = name.to_string();
            counter!("proxy_xdp_vip_packets_total", "listener" => l.clone()).absolute(c.packets);
            counter!("proxy_xdp_vip_bytes_total", "listener" => l.clone()).absolute(c.bytes);
            counter!("proxy_xdp_vip_new_flows_total", "listener" => l.clone())
                .absolute(c.new_flows);
            counter!("proxy_xdp_vip_lru_misses_total", "listener" => l).absolute(c.lru_misses);
        }
    }
    for (_, backends) in balancer.pools() {
        for be in backends {
            if let Ok(c) = dp.counters(backend_counter_index(be.id)) {
                counter!("proxy_xdp_backend_packets_total", "backend" => be.name.clone())
                    .absolute(c.packets);
                counter!("proxy_xdp_backend_bytes_total", "backend" => be.name.clone())
                    .absolute(c.bytes);
                counter!("proxy_xdp_backend_new_flows_total", "backend" => be.name.clone())
                    .absolute(c.new_flows);
            }
            gauge!("proxy_backend_weight", "backend" => be.name.clone()).set(be.weight as f64);
        }
    }
    if let Ok(r) = dp.reasons() {
        for (reason, n) in r {
            counter!("proxy_xdp_packets_by_reason_total", "reason" => reason.label()).absolute(n);
        }
    }
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
    // Data-path connect results for passive health (bounded: dropped when full).
    let (connect_tx, mut connect_rx) = tokio::sync::mpsc::channel(4096);
    let specs =
        terminator::listener_specs_with_events(&config, &balancer, Some(connect_tx.clone()))?;
    let choice = match io_flag {
        Some(IoFlag::Auto) => IoChoice::Auto,
        Some(IoFlag::Uring) => IoChoice::Uring,
        Some(IoFlag::Epoll) => IoChoice::Epoll,
        None => config.terminator.io,
    };
    let t = &config.terminator;
    let workers = if t.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        t.workers
    };
    // One limit for every terminator instance (listeners added by a reload get their own).
    let limits = ConnLimits::new(t.max_connections, t.max_connections_per_client);
    let grace = Duration::from_secs(t.shutdown_grace_secs);
    let mode = if specs.is_empty() {
        None
    } else {
        Some(pick_mode(terminator::requested_mode(choice)))
    };
    let mut terms: Vec<Terminator> = Vec::new();
    if let Some(mode) = mode {
        terms.push(
            Terminator::start(
                mode,
                workers,
                specs.iter().map(|(_, s)| s.clone()).collect(),
                limits.clone(),
                grace,
            )
            .map_err(terminator::SetupError::Start)?,
        );
    }
    let mut terminated: Vec<(ListenerConfig, ListenerSpec)> = specs;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin_socket = config.admin.socket.clone();
    let metrics_addr = config.admin.metrics;
    rt.block_on(async {
        if let Some(addr) = metrics_addr {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .with_context(|| format!("starting the metrics listener on {addr}"))?;
            info!(%addr, "Prometheus metrics at /metrics");
        }
        let (admin_tx, mut admin_rx) = tokio::sync::mpsc::channel(16);
        let socket = admin_socket.clone();
        tokio::spawn(async move {
            if let Err(e) = proxy::admin::serve(socket.clone(), admin_tx).await {
                error!(socket = %socket.display(), "admin API stopped: {e}");
            }
        });
        let mut metrics_tick = tokio::time::interval(Duration::from_secs(2));
        let mut board = Board::new(health_configs(&config));
        let (mut supervisor, mut health_rx) = Supervisor::new();
        supervisor.sync(&balancer, &board);
        let mut ramp_tick = tokio::time::interval(Duration::from_secs(1));
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
                    if let Some(new) = reload(path, &mut balancer, &mut dp) {
                        board.set_configs(health_configs(&new));
                        // tls/ws listeners added by the reload get terminator workers.
                        let mut added = new.clone();
                        added.listeners.retain(|l| !terminated.iter().any(|(t, _)| t.name == l.name));
                        match terminator::listener_specs_with_events(&added, &balancer, Some(connect_tx.clone())) {
                            Ok(specs) if !specs.is_empty() => {
                                let m = pick_mode(terminator::requested_mode(choice));
                                match Terminator::start(m, workers, specs.iter().map(|(_, s)| s.clone()).collect(), limits.clone(), grace) {
                                    Ok(t) => {
                                        for (l, _) in &specs {
                                            info!(listener = %l.name, "reload: terminator listener started");
                                        }
                                        terms.push(t);
                                        terminated.extend(specs);
                                    }
                                    Err(e) => error!("reload: starting new listeners failed: {e}"),
                                }
                            }
                            Ok(_) => {}
                            Err(e) => error!("reload: new listeners: {e:#}"),
                        }
                    }
                    refresh_terminator(&balancer, &terminated);
                    supervisor.sync(&balancer, &board);
                    // Certificates renewed in place are swapped now rather than at the next poll.
                    for (_, spec) in &terminated {
                        if let Some(tls) = &spec.tls {
                            tls.resolver.reload_changed();
                        }
                    }
                }
                Some((req, reply)) = admin_rx.recv() => {
                    let _ = reply.send(apply_admin(req, &mut balancer, &mut dp, &board, &terminated));
                    supervisor.sync(&balancer, &board);
                }
                Some(ev) = connect_rx.recv() => {
                    apply_connect_event(ev, &mut board, &mut balancer, &mut dp, &terminated);
                }
                Some(report) = health_rx.recv() => {
                    apply_health(report, &mut board, &mut balancer, &mut dp, &terminated);
                }
                _ = ramp_tick.tick() => tick_ramps(&board, &mut balancer, &mut dp, &terminated, unix_now()),
                _ = metrics_tick.tick(), if metrics_addr.is_some() => export_xdp_counters(&dp, &balancer),
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
    if !terms.is_empty() {
        info!("shutting down: no new connections; live ones get the grace period");
        // In parallel: each instance waits out the same grace period.
        let stops: Vec<_> = terms
            .into_iter()
            .map(|t| std::thread::spawn(move || t.shutdown()))
            .collect();
        for s in stops {
            let _ = s.join();
        }
    }
    let _ = std::fs::remove_file(&admin_socket);
    info!("shutting down: detaching XDP (pinned maps keep established flows for a restart)");
    dp.detach_all();
    Ok(())
}

/// Reloads the config file; returns it when it was valid and applied.
fn reload(path: &std::path::Path, balancer: &mut Balancer, dp: &mut DataPlane) -> Option<Config> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("reload rejected, keeping the running config: {e}");
            return None;
        }
    };
    if let Err(e) = dp.set_settings(&settings_from(
        &config.balancer,
        proxy::ebpf::kernel_tick_ns(),
    )) {
        error!("reload: writing settings failed: {e}");
        return None;
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
    Some(config)
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
