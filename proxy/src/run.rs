//! `proxy run`: the adapter between the operating system and the control plane. Signals,
//! the admin socket, probe and connect results and a one-second timer become the plane's
//! events, each with the wall clock's `now`; an upgrade (`proxy upgrade` or SIGUSR2) hands
//! the listening sockets to a new process and drains (see `upgrade`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::oneshot,
};
use tracing::{error, info, warn};

use crate::{
    admin::{Request, Response},
    config::{Config, IoChoice},
    ebpf::{DataPlane, LoadOptions},
    health::checks::unix_now,
    notify,
    plane::{install_metrics_exporter_on, ControlPlane, Event, Outcome, PlaneOptions},
    terminator::tls::check_certificates,
    upgrade::{self, Inherited, Launch, Takeover},
};

/// What `proxy run` was asked for.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub config: PathBuf,
    /// Seconds between counter summaries in the log (0: never).
    pub stats_interval: u64,
    /// `--io`, over `terminator.io`.
    pub io: Option<IoChoice>,
    /// Started by an upgrade: the old process's hand-over socket.
    pub takeover: Option<PathBuf>,
}

/// How the event loop ended.
enum Ending {
    /// SIGINT/SIGTERM.
    Stopped,
    /// The listening sockets went to the new process `pid`.
    HandedOver { pid: u32 },
}

/// Runs the proxy until a signal stops it or an upgrade replaces it.
pub fn run(args: &RunArgs) -> Result<()> {
    upgrade::remember_binary();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (mut takeover, inherited) = match &args.takeover {
        Some(socket) => {
            let (t, inherited) = Takeover::connect(socket)
                .context("receiving the listening sockets from the running proxy")?;
            info!(
                from = inherited.from_pid,
                "taking over from the running proxy"
            );
            (Some(t), inherited)
        }
        None => (None, Inherited::default()),
    };
    let result = run_with(args, &mut takeover, inherited);
    if let (Err(e), Some(t)) = (&result, takeover.take()) {
        t.failed(&format!("{e:#}"));
    }
    result
}

fn run_with(args: &RunArgs, takeover: &mut Option<Takeover>, inherited: Inherited) -> Result<()> {
    let config = Config::load(&args.config, check_certificates)?;
    let dp = DataPlane::load(&LoadOptions::from_config(&config.balancer))
        .context("loading the XDP data plane (needs root and a kernel with BPF/XDP)")?;
    let options = PlaneOptions {
        io: args.io.unwrap_or(config.terminator.io),
        stats_interval_secs: args.stats_interval,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (plane, ending) = rt.block_on(serve(args, &config, dp, options, takeover, inherited))?;
    match ending {
        Ending::Stopped => {
            let mut dp = plane.shutdown();
            let _ = std::fs::remove_file(&config.admin.socket);
            dp.release(!config.balancer.keep_attached);
            info!("stopped");
        }
        Ending::HandedOver { pid } => {
            // The admin socket, the maps and the pinned links are the new process's now.
            // The drain blocks for the grace on a thread of its own, so that the runtime
            // still delivers the upgrade's answer to `proxy upgrade`.
            let t = &config.terminator;
            let (grace, window) = (
                Duration::from_secs(t.upgrade_grace_secs),
                Duration::from_secs(t.upgrade_close_window_secs),
            );
            let (tx, rx) = oneshot::channel();
            std::thread::spawn(move || {
                drop(plane.drain_handed_over(grace, window));
                let _ = tx.send(());
            });
            let _ = rt.block_on(rx);
            info!(new_pid = pid, "drained after the upgrade; exiting");
        }
    }
    Ok(())
}

/// An upgrade under way: its answer, and who asked (`proxy upgrade`; none for SIGUSR2).
type PendingUpgrade = (
    oneshot::Receiver<Result<u32, upgrade::UpgradeError>>,
    Option<oneshot::Sender<Response>>,
);

async fn serve(
    args: &RunArgs,
    config: &Config,
    dp: DataPlane,
    options: PlaneOptions,
    takeover: &mut Option<Takeover>,
    mut inherited: Inherited,
) -> Result<(ControlPlane<DataPlane>, Ending)> {
    let metrics = match config.admin.metrics {
        Some(addr) => Some(install_metrics_exporter_on(
            addr,
            inherited.take_metrics(addr),
        )?),
        None => None,
    };
    let (mut plane, mut inputs) =
        ControlPlane::new_inheriting(config, dp, options, unix_now(), inherited)?;
    for iface in &config.balancer.interfaces {
        plane
            .maps_mut()
            .attach_pinned(iface)
            .with_context(|| format!("attaching XDP to {iface}"))?;
    }
    let upgraded = match takeover.take() {
        Some(t) => {
            t.ready()
                .context("telling the running proxy this one is ready")?;
            info!("serving; the old process stops accepting and drains");
            true
        }
        None => false,
    };
    let mut admin_rx = crate::admin::spawn(config.admin.socket.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::task::yield_now().await; // the admin task binds its socket on its first poll
    if upgraded {
        // Under systemd (NotifyAccess=all) this process becomes the service's main one.
        notify::main_pid(std::process::id());
        notify::ready("serving: took over from the previous process");
    } else {
        notify::ready("serving: XDP attached, listeners up");
    }
    let mut upgrading: Option<PendingUpgrade> = None;
    let socket_dir = config
        .admin
        .socket
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let ending = loop {
        let (event, reply) = tokio::select! {
            _ = term.recv() => break Ending::Stopped,
            _ = int.recv() => break Ending::Stopped,
            _ = hup.recv() => {
                notify::reloading();
                match Config::load(&args.config, check_certificates) {
                    Ok(new) => (Event::Reload(Box::new(new)), None),
                    Err(e) => {
                        error!("reload rejected, keeping the running config: {e}");
                        notify::ready("reload rejected, serving the previous config");
                        continue;
                    }
                }
            }
            _ = usr2.recv() => {
                upgrading = begin_upgrade(&plane, metrics.as_ref(), None, &socket_dir, upgrading, None);
                continue;
            }
            Some(done) = upgrade_done(&mut upgrading) => {
                let (result, reply) = done;
                match finish_upgrade(result, reply) {
                    Some(pid) => {
                        if let Some(m) = &metrics {
                            m.stop();
                        }
                        break Ending::HandedOver { pid };
                    }
                    None => continue,
                }
            }
            Some((req, reply)) = admin_rx.recv() => match req {
                Request::Upgrade { binary } => {
                    upgrading = begin_upgrade(&plane, metrics.as_ref(), binary, &socket_dir, upgrading, Some(reply));
                    continue;
                }
                req => (Event::Admin(req), Some(reply)),
            },
            Some(report) = inputs.health.recv() => (Event::Health(report), None),
            Some(ev) = inputs.connects.recv() => (Event::Connect(ev), None),
            _ = tick.tick() => (Event::Tick, None),
        };
        let reload = matches!(event, Event::Reload(_));
        if let (Outcome::Admin(answer), Some(reply)) = (plane.handle(event, unix_now()), reply) {
            let _ = reply.send(answer);
        }
        if reload {
            notify::ready("serving: configuration reloaded");
        }
    };
    if matches!(ending, Ending::Stopped) {
        notify::stopping();
    }
    Ok((plane, ending))
}

/// Starts an upgrade on a thread of its own, unless one is under way (refused, not
/// interleaved). Answers what is under way afterwards.
fn begin_upgrade(
    plane: &ControlPlane<DataPlane>,
    metrics: Option<&crate::plane::MetricsServer>,
    binary: Option<PathBuf>,
    socket_dir: &Path,
    under_way: Option<PendingUpgrade>,
    reply: Option<oneshot::Sender<Response>>,
) -> Option<PendingUpgrade> {
    if under_way.is_some() {
        warn!("upgrade refused: another one is under way");
        if let Some(r) = reply {
            let _ = r.send(Response::err(
                "an upgrade is already under way; try again when it has finished",
            ));
        }
        return under_way;
    }
    let prepared = (|| -> std::io::Result<_> {
        let mut offer = plane.offer()?;
        if let Some(m) = metrics {
            offer.metrics = Some((m.addr, m.socket()?));
        }
        Ok((
            offer,
            Launch::from_current(binary, socket_dir.to_path_buf())?,
        ))
    })();
    let (offer, launch) = match prepared {
        Ok(p) => p,
        Err(e) => {
            error!("upgrade not started: {e}");
            if let Some(r) = reply {
                let _ = r.send(Response::err(format!("upgrade not started: {e}")));
            }
            return None;
        }
    };
    info!(binary = %launch.binary.display(), "upgrade: starting the new process");
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(upgrade::hand_over(&launch, offer));
    });
    Some((rx, reply))
}

/// The answer of the upgrade under way, once it comes.
async fn upgrade_done(
    upgrading: &mut Option<PendingUpgrade>,
) -> Option<(
    Result<u32, upgrade::UpgradeError>,
    Option<oneshot::Sender<Response>>,
)> {
    let (rx, _) = upgrading.as_mut()?;
    let result = rx.await.unwrap_or_else(|_| {
        Err(upgrade::UpgradeError::Failed(
            "the upgrade thread died".into(),
        ))
    });
    let (_, reply) = upgrading.take()?;
    Some((result, reply))
}

/// Reports an upgrade's end; the new process's pid if this one is to drain.
fn finish_upgrade(
    result: Result<u32, upgrade::UpgradeError>,
    reply: Option<oneshot::Sender<Response>>,
) -> Option<u32> {
    let (response, pid) = match result {
        Ok(pid) => {
            info!(
                new_pid = pid,
                "upgrade: the new process serves; this one drains"
            );
            (
                Response::ok(format!(
                    "upgraded: pid {pid} serves now; pid {} stops accepting and drains",
                    std::process::id()
                )),
                Some(pid),
            )
        }
        Err(e) => {
            error!("upgrade failed: {e}");
            (Response::err(format!("upgrade failed: {e}")), None)
        }
    };
    if let Some(r) = reply {
        let _ = r.send(response);
    }
    pid
}
