//! The listeners the plane serves, and the terminator instance behind each `tls`/`ws` one.
//! One instance per listener, so a reload can stop or replace a listener alone: it stops
//! accepting and its live connections finish within the shutdown grace, while the other
//! listeners keep running untouched.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{error, info};

use crate::{
    balancer::Balancer,
    config::{Config, IoChoice, ListenerConfig, ListenerMode, TerminatorConfig},
    health::ConnectEvent,
    observe::{Meters, StatsBoard},
    terminator::{
        self,
        handler::Observe,
        io::IoMode,
        server::{pick_mode, ConnLimits, ListenerSpec, Terminator},
        upstream::{Upstream, UpstreamSet},
        SetupError,
    },
};

/// The terminator's view of a listener's pool (ring and members), from the balancer's
/// current state: the plane hands it over, the terminator never reads the balancer.
pub fn upstream_set(
    balancer: &Balancer,
    listener: &ListenerConfig,
) -> Result<UpstreamSet, SetupError> {
    let ring = balancer
        .ring(&listener.name)
        .ok_or_else(|| SetupError::NoRing(listener.name.clone()))?
        .clone();
    let backends: HashMap<u32, Upstream> = balancer
        .backends(&listener.pool)
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b.id,
                Upstream {
                    id: b.id,
                    name: b.name.clone(),
                    addr: b.address,
                },
            )
        })
        .collect();
    Ok(UpstreamSet { ring, backends })
}

/// A listener as served now.
struct Served {
    config: ListenerConfig,
    /// `tls`/`ws` only: the terminator's tables and certificates, and its workers.
    terminated: Option<(ListenerSpec, Terminator)>,
}

pub(super) struct Listeners {
    served: BTreeMap<String, Served>,
    /// Settings of instances started from now on (a reload's `[terminator]` applies to the
    /// listeners it starts).
    terminator: TerminatorConfig,
    requested: IoChoice,
    /// Picked when the first terminator listener starts (probing io_uring logs once).
    mode: Option<IoMode>,
    /// One connection limit for every instance.
    limits: Arc<ConnLimits>,
    grace: Duration,
    events: mpsc::Sender<ConnectEvent>,
    /// Instances of removed or replaced listeners, finishing their live connections.
    draining: Vec<JoinHandle<()>>,
    /// What every listener records into and serves `/stats` from.
    meters: Arc<Meters>,
    stats: StatsBoard,
    /// Listening sockets an earlier process handed over, not yet taken by a listener.
    inherited: crate::upgrade::Inherited,
}

impl Listeners {
    pub(super) fn start(
        config: &Config,
        balancer: &Balancer,
        events: mpsc::Sender<ConnectEvent>,
        io: IoChoice,
        (meters, stats): (Arc<Meters>, StatsBoard),
        inherited: crate::upgrade::Inherited,
    ) -> Result<Self, SetupError> {
        let t = &config.terminator;
        let mut me = Self {
            served: BTreeMap::new(),
            terminator: t.clone(),
            requested: io,
            mode: None,
            limits: ConnLimits::new(t.max_connections, t.max_connections_per_client),
            grace: Duration::from_secs(t.shutdown_grace_secs),
            events,
            draining: Vec::new(),
            meters,
            stats,
            inherited,
        };
        for l in &config.listeners {
            let served = me.serve(l, balancer)?;
            me.served.insert(l.name.clone(), served);
        }
        Ok(me)
    }

    /// Starts serving `l` (a terminator instance for `tls`/`ws`; XDP serves `l4` alone).
    fn serve(&mut self, l: &ListenerConfig, balancer: &Balancer) -> Result<Served, SetupError> {
        if l.mode == ListenerMode::L4 {
            return Ok(Served {
                config: l.clone(),
                terminated: None,
            });
        }
        let spec = terminator::listener_spec(
            l,
            &self.terminator,
            upstream_set(balancer, l)?,
            Observe {
                pool: l.pool.clone(),
                meters: Arc::clone(&self.meters),
                stats: self.stats.clone(),
            },
            Some(self.events.clone()),
        )?;
        let requested = self.requested;
        let mode = *self
            .mode
            .get_or_insert_with(|| pick_mode(terminator::requested_mode(requested)));
        let workers = match self.terminator.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let inherited = self.inherited.take_listener(&l.name, l.address);
        let took_over = inherited.len();
        let instance = Terminator::start_inheriting(
            mode,
            workers,
            vec![spec.clone()],
            self.limits.clone(),
            self.grace,
            vec![inherited],
        )
        .map_err(SetupError::Start)?;
        if took_over > 0 {
            info!(listener = %l.name, addr = %l.address, sockets = took_over, "terminator listener started on the sockets handed over");
        } else {
            info!(listener = %l.name, addr = %l.address, "terminator listener started");
        }
        Ok(Served {
            config: l.clone(),
            terminated: Some((spec, instance)),
        })
    }

    /// Serves a listener not served yet.
    pub(super) fn add(
        &mut self,
        l: &ListenerConfig,
        balancer: &Balancer,
    ) -> Result<(), SetupError> {
        let served = self.serve(l, balancer)?;
        self.served.insert(l.name.clone(), served);
        Ok(())
    }

    /// Replaces a listener: the new one starts first (same address: `SO_REUSEPORT` lets both
    /// listen), then the old one stops accepting and drains. If the new one cannot start, the
    /// old one keeps serving.
    pub(super) fn replace(
        &mut self,
        l: &ListenerConfig,
        balancer: &Balancer,
    ) -> Result<(), SetupError> {
        let served = self.serve(l, balancer)?;
        if let Some(old) = self.served.insert(l.name.clone(), served) {
            self.drain(old);
        }
        Ok(())
    }

    /// Stops a listener: no new connections; live ones finish within the grace.
    pub(super) fn remove(&mut self, name: &str) {
        if let Some(old) = self.served.remove(name) {
            self.drain(old);
        }
    }

    fn drain(&mut self, old: Served) {
        if let Some((_, instance)) = old.terminated {
            info!(listener = %old.config.name, "terminator listener stops accepting; live connections drain");
            // `shutdown` blocks for up to the grace period: not on the plane's thread.
            self.draining
                .push(std::thread::spawn(move || instance.shutdown()));
        }
        self.draining.retain(|h| !h.is_finished());
    }

    /// Mirrors the balancer's pools into every terminator listener's upstream table.
    pub(super) fn refresh(&self, balancer: &Balancer) {
        for s in self.served.values() {
            let Some((spec, _)) = &s.terminated else {
                continue;
            };
            match upstream_set(balancer, &s.config) {
                Ok(set) => spec.ctx.upstreams.replace(set),
                Err(e) => error!("listener {}: {e}", s.config.name),
            }
        }
    }

    /// Asks the clients of `backend` on every listener of `pool` to leave within `window`
    /// (None: the node is back, nobody leaves).
    pub(super) fn move_off(&self, pool: &str, backend: &str, window: Option<Duration>) {
        for s in self.served.values().filter(|s| s.config.pool == pool) {
            let Some((spec, _)) = &s.terminated else {
                continue;
            };
            let offs = &spec.ctx.upstreams.move_offs;
            match window {
                Some(w) => offs.request(backend, w, std::time::Instant::now()),
                None => offs.cancel(backend),
            }
        }
    }

    /// Swaps certificates whose files changed; returns their server names.
    pub(super) fn reload_certificates(&self) -> Vec<String> {
        self.served
            .values()
            .filter_map(|s| s.terminated.as_ref())
            .filter_map(|(spec, _)| spec.tls.as_ref())
            .flat_map(|tls| tls.resolver.reload_changed())
            .collect()
    }

    pub(super) fn configs(&self) -> impl Iterator<Item = &ListenerConfig> {
        self.served.values().map(|s| &s.config)
    }

    pub(super) fn config(&self, name: &str) -> Option<&ListenerConfig> {
        self.served.get(name).map(|s| &s.config)
    }

    pub(super) fn local_addrs(&self, name: &str) -> Option<&[SocketAddr]> {
        self.served.get(name).map(|s| match &s.terminated {
            Some((_, t)) => t.local_addrs.as_slice(),
            None => &[],
        })
    }

    /// A later reload's `[terminator]` settings, for the listeners it starts.
    pub(super) fn set_terminator_config(&mut self, t: &TerminatorConfig) {
        self.terminator = t.clone();
    }

    /// The listening sockets of every terminator listener, for the next process.
    pub(super) fn offer(
        &self,
    ) -> std::io::Result<Vec<(crate::upgrade::OfferedListener, Vec<std::os::fd::OwnedFd>)>> {
        let mut out = Vec::new();
        for s in self.served.values() {
            let Some((_, t)) = &s.terminated else {
                continue;
            };
            let fds = t.listening_sockets(0)?;
            out.push((
                crate::upgrade::OfferedListener {
                    name: s.config.name.clone(),
                    address: s.config.address,
                    sockets: fds.len(),
                },
                fds,
            ));
        }
        Ok(out)
    }

    /// After an upgrade: stops accepting (the sockets are the next process's), lets live
    /// connections run for `grace`, then asks the WebSocket clients still here to leave
    /// (close 1001 at a frame boundary, TLS close_notify) spread over `window`, and closes
    /// what is left after that. Blocks until every connection is gone.
    pub(super) fn drain_handed_over(self, grace: Duration, window: Duration) {
        let mut specs = Vec::new();
        let mut instances = Vec::new();
        for (_, s) in self.served {
            if let Some((spec, t)) = s.terminated {
                specs.push(spec);
                instances.push(t.hand_over());
            }
        }
        let live = || instances.first().map_or(0, |i| i.active());
        info!(
            connections = live(),
            grace_secs = grace.as_secs(),
            "handed over: no new connections here; live ones continue"
        );
        let wait = |limit: Duration| {
            let deadline = std::time::Instant::now() + limit;
            while live() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        wait(grace);
        if live() > 0 {
            info!(
                connections = live(),
                window_secs = window.as_secs(),
                "upgrade grace over: closing the remaining connections (1001 going away)"
            );
            let now = std::time::Instant::now();
            for spec in &specs {
                spec.ctx.upstreams.move_offs.request_all(
                    window,
                    now,
                    crate::terminator::move_off::Close::GOING_AWAY,
                );
            }
            // The relay cuts a client that does not answer its close after a few seconds.
            wait(window + Duration::from_secs(6));
        }
        for i in instances {
            i.close();
        }
        for d in self.draining {
            let _ = d.join();
        }
    }

    /// Stops every instance in parallel (each waits out the same grace) and waits for all,
    /// including those still draining after a reload.
    pub(super) fn shutdown(self) {
        let mut stops = self.draining;
        let mut any = !stops.is_empty();
        for (_, s) in self.served {
            if let Some((_, instance)) = s.terminated {
                any = true;
                stops.push(std::thread::spawn(move || instance.shutdown()));
            }
        }
        if any {
            info!("shutting down: no new connections; live ones get the grace period");
        }
        for s in stops {
            let _ = s.join();
        }
    }
}
