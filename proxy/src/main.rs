//! `proxy`: run the balancer, or check a configuration file. The control plane lives in the
//! library (`proxy::plane`); `run` only turns signals, sockets and timers into its events.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;

use proxy::{
    cli::{self, Cli, Command},
    config::{Config, IoChoice},
    ebpf::{DataPlane, LoadOptions},
    health::checks::unix_now,
    logging,
    plane::{install_metrics_exporter, ControlPlane, Event, Outcome, PlaneOptions},
    terminator::tls::check_certificates,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { file } => cli::check_config(&file),
        Command::Check { socket, thresholds } => return cli::nagios_check(&socket, &thresholds),
        Command::Backends { socket, action } => action.run(&socket).map_err(Into::into),
        Command::GenerateAssets { dir } => cli::generate_assets(&dir),
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
    proxy::notify::stopping();
    let mut dp = plane.shutdown();
    let _ = std::fs::remove_file(&config.admin.socket);
    info!("shutting down: detaching XDP (pinned maps keep established flows for a restart)");
    dp.detach_all();
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
            .attach(iface)
            .with_context(|| format!("attaching XDP to {iface}"))?;
    }
    let mut admin_rx = proxy::admin::spawn(config.admin.socket.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::task::yield_now().await; // the admin task binds its socket on its first poll
    proxy::notify::ready("serving: XDP attached, listeners up");
    loop {
        let (event, reply) = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                proxy::notify::reloading();
                match Config::load(path, check_certificates) {
                    Ok(new) => (Event::Reload(Box::new(new)), None),
                    Err(e) => {
                        error!("reload rejected, keeping the running config: {e}");
                        proxy::notify::ready("reload rejected, serving the previous config");
                        continue;
                    }
                }
            }
            Some((req, reply)) = admin_rx.recv() => (Event::Admin(req), Some(reply)),
            Some(report) = inputs.health.recv() => (Event::Health(report), None),
            Some(ev) = inputs.connects.recv() => (Event::Connect(ev), None),
            _ = tick.tick() => (Event::Tick, None),
        };
        let reload = matches!(event, Event::Reload(_));
        if let (Outcome::Admin(answer), Some(reply)) = (plane.handle(event, unix_now()), reply) {
            let _ = reply.send(answer);
        }
        if reload {
            proxy::notify::ready("serving: configuration reloaded");
        }
    }
    Ok(plane)
}
