//! `proxy`: run the balancer, or check a configuration file. The control plane lives in the
//! library (`proxy::plane`); `run` only turns signals, sockets and timers into its events.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use proxy::{
    cli,
    config::{Config, IoChoice},
    ebpf::{DataPlane, LoadOptions},
    health::checks::unix_now,
    logging::{self, LogFormat},
    plane::{install_metrics_exporter, ControlPlane, Event, Outcome, PlaneOptions},
    terminator::tls::check_certificates,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

#[derive(Parser)]
#[command(version, about = "eBPF/XDP-assisted L4 proxy for blockchain API nodes")]
struct Cli {
    /// Log lines on stderr: text (colours only on a terminal) or json (one object per line).
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP data plane, attach it and serve until SIGINT/SIGTERM (SIGHUP reloads the file).
    Run {
        #[arg(short, long, default_value = "/etc/xdp-proxy/proxy.toml")]
        config: PathBuf,
        /// Seconds between counter summaries in the log (0: never).
        #[arg(long, default_value_t = 10)]
        stats_interval: u64,
        /// Terminator I/O: io_uring, epoll, or auto (io_uring when the kernel allows it).
        /// Overrides `terminator.io`.
        #[arg(long, value_enum)]
        io: Option<IoChoice>,
    },
    /// Take the XDP program off the interfaces (it stays attached after `run` exits).
    Detach {
        #[arg(short, long, default_value = "/etc/xdp-proxy/proxy.toml")]
        config: PathBuf,
        /// Also remove the pinned maps: established L4 flows and their NAT ports are forgotten.
        #[arg(long)]
        forget_flows: bool,
    },
    /// Validate a configuration file and report every problem.
    CheckConfig { file: PathBuf },
    /// Nagios/icinga plugin: the running proxy's health in one line, exit 0/1/2/3.
    Check {
        #[arg(long, default_value = proxy::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        thresholds: proxy::observe::check::Thresholds,
    },
    /// Inspect and change backends of a running proxy (admin socket).
    Backends {
        /// Admin socket of the running proxy (`admin.socket` in its config).
        #[arg(long, global = true, default_value = proxy::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        action: proxy::admin::Command,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { file } => cli::check_config(&file),
        Command::Detach {
            config,
            forget_flows,
        } => cli::detach(&config, forget_flows),
        Command::Check { socket, thresholds } => return cli::nagios_check(&socket, &thresholds),
        Command::Backends { socket, action } => action.run(&socket).map_err(Into::into),
        Command::Run {
            config,
            stats_interval,
            io,
        } => run(&config, stats_interval, io),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(cli.log_format, &e);
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, stats_interval: u64, io_flag: Option<IoChoice>) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Config::load(path, check_certificates)?;
    let b = &config.balancer;
    let dp = DataPlane::load(&LoadOptions::from_config(b))
        .context("loading the XDP data plane (needs root and a kernel with BPF/XDP)")?;
    let options = PlaneOptions {
        io: io_flag.unwrap_or(config.terminator.io),
        stats_interval_secs: stats_interval,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let plane = rt.block_on(serve(path, &config, dp, options))?;
    let mut dp = plane.shutdown();
    let _ = std::fs::remove_file(&config.admin.socket);
    dp.release(!config.balancer.keep_attached);
    info!("stopped");
    Ok(())
}

/// The adapter: signals, the admin socket, probe and connect results and a one-second timer
/// become the plane's events, each with the wall clock's `now`.
async fn serve(
    path: &std::path::Path,
    config: &Config,
    dp: DataPlane,
    options: PlaneOptions,
) -> Result<ControlPlane<DataPlane>> {
    if let Some(addr) = config.admin.metrics {
        install_metrics_exporter(addr)?;
    }
    let (mut plane, mut inputs) = ControlPlane::new(config, dp, options, unix_now())?;
    for iface in &config.balancer.interfaces {
        plane
            .maps_mut()
            .attach_pinned(iface)
            .with_context(|| format!("attaching XDP to {iface}"))?;
    }
    let mut admin_rx = proxy::admin::spawn(config.admin.socket.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (event, reply) = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match Config::load(path, check_certificates) {
                Ok(new) => (Event::Reload(Box::new(new)), None),
                Err(e) => {
                    error!("reload rejected, keeping the running config: {e}");
                    continue;
                }
            },
            Some((req, reply)) = admin_rx.recv() => (Event::Admin(req), Some(reply)),
            Some(report) = inputs.health.recv() => (Event::Health(report), None),
            Some(ev) = inputs.connects.recv() => (Event::Connect(ev), None),
            _ = tick.tick() => (Event::Tick, None),
        };
        if let (Outcome::Admin(answer), Some(reply)) = (plane.handle(event, unix_now()), reply) {
            let _ = reply.send(answer);
        }
    }
    Ok(plane)
}
