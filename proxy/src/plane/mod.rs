//! The control plane as one object. `ControlPlane` owns the balancer and its map writer, the
//! health board and probe supervisor, and the terminator listeners with their certificates;
//! `proxy run` and the tests drive it with the same events.
//!
//! Every handler takes `now` (unix seconds) from its caller: nothing here reads the wall
//! clock, so tests drive the timing logic (slow start, ejection backoff, periodic jobs) with a
//! virtual one.

mod admin;
mod health;
mod listeners;
mod metrics_http;
mod public;
mod reload;
mod stats;

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tracing::{info, warn};

pub use listeners::upstream_set;
pub use reload::{
    diff_listeners, ListenerChange, ListenerChangeKind, ListenerError, ListenerFailure,
    ReloadChanges, ReloadError,
};
pub use stats::{
    install_metrics_exporter, install_metrics_exporter_on, DataPath, MetricsError, MetricsServer,
};

use crate::{
    admin::{Request, Response},
    balancer::{Balancer, BalancerError},
    config::{Config, IoChoice, ListenerConfig},
    health::{Board, ConnectEvent, Report, Supervisor},
    observe::{Meters, StatsBoard},
    terminator::SetupError,
};

/// Room for data-path connect results; more are dropped (passive health is best effort).
const CONNECT_EVENTS: usize = 4096;

/// Something that happened, for [`ControlPlane::handle`].
#[derive(Debug)]
pub enum Event {
    /// A probe round's result.
    Health(Report),
    /// A connect attempt seen by the terminator (passive health).
    Connect(ConnectEvent),
    /// An operator's request from the admin socket.
    Admin(Request),
    /// A new, already parsed and validated configuration (SIGHUP).
    Reload(Box<Config>),
    /// Certificate files may have changed: swap those whose files did.
    CertificatesChanged,
    /// Time passed (about once a second): slow-start ramps, ejection ends, periodic jobs.
    Tick,
}

/// What handling an event produced, for the caller to pass on.
#[derive(Debug)]
pub enum Outcome {
    /// Applied; nothing to answer.
    Done,
    /// The answer to an admin request.
    Admin(Response),
    /// What a reload changed, or why it was refused.
    Reloaded(Result<ReloadChanges, ReloadError>),
    /// Server names whose certificates were swapped.
    Certificates(Vec<String>),
}

/// Where the plane's asynchronous inputs arrive; the caller turns them into events.
pub struct Inputs {
    pub health: mpsc::Receiver<Report>,
    pub connects: mpsc::Receiver<ConnectEvent>,
}

/// How `proxy run` was started (flags that override or add to the file).
#[derive(Debug, Clone, Copy)]
pub struct PlaneOptions {
    /// Terminator I/O (`--io`, else `terminator.io`).
    pub io: IoChoice,
    /// Seconds between counter summaries in the log (0: never).
    pub stats_interval_secs: u64,
}

/// Why the plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Writing the initial state to the maps failed.
    #[error("writing the initial state to the maps")]
    Balancer(#[source] BalancerError),
    /// A terminator listener could not start.
    #[error("starting the terminator")]
    Terminator(#[source] SetupError),
}

/// Jobs that run every `period` seconds on `Tick`.
#[derive(Debug)]
struct Every {
    period: i64,
    next: i64,
}

impl Every {
    /// `period` 0 never runs; otherwise first at `first`.
    fn new(period: u64, first: i64) -> Self {
        Self {
            period: period as i64,
            next: first,
        }
    }

    fn due(&mut self, now: i64) -> bool {
        if self.period <= 0 || now < self.next {
            return false;
        }
        self.next = now + self.period;
        true
    }
}

/// Seconds between certificate file checks (certbot renews in place).
const CERT_POLL_SECS: u64 = 5;
/// Seconds between NAT occupancy checks (the log warning) and, if `/metrics` is served,
/// Prometheus exports of the kernel counters.
const METRICS_SECS: u64 = 2;

/// The control plane: see the module documentation.
pub struct ControlPlane<M: DataPath> {
    balancer: Balancer,
    maps: M,
    board: Board,
    supervisor: Supervisor,
    listeners: listeners::Listeners,
    /// Whether `/metrics` is served (the export runs with the NAT check).
    export_metrics: bool,
    metrics: Every,
    nat_alarms: stats::NatAlarms,
    stats_log: Every,
    cert_poll: Every,
    /// Removed `l4` listeners whose flows finish, with the time their drain ends.
    l4_drains: Vec<(String, i64)>,
    /// The shutdown grace: how long a removed listener's connections may finish.
    grace_secs: u64,
    /// Pools of the running configuration (a pool gone from it leaves once unused).
    configured_pools: BTreeSet<String>,
    /// What the data paths record (latency, clients), by backend.
    meters: Arc<Meters>,
    /// The `/stats` pages the terminator serves, rendered every tick.
    stats_board: StatsBoard,
    health_gauges: public::HealthGauges,
    /// Each pool's last decision (chain state, panic, nodes kept in).
    pool_decisions: std::collections::HashMap<String, crate::health::pool::PoolDecision>,
}

impl<M: DataPath> ControlPlane<M> {
    /// Writes `config` to `maps`, starts the terminator listeners and the health probes.
    /// Runs inside a tokio runtime (the probes are tasks).
    pub fn new(
        config: &Config,
        maps: M,
        options: PlaneOptions,
        now: i64,
    ) -> Result<(Self, Inputs), StartError> {
        Self::new_inheriting(
            config,
            maps,
            options,
            now,
            crate::upgrade::Inherited::default(),
        )
    }

    /// As [`ControlPlane::new`], with the listening sockets an earlier process handed over
    /// (an upgrade): the terminator listeners serve those instead of binding new ones.
    pub fn new_inheriting(
        config: &Config,
        mut maps: M,
        options: PlaneOptions,
        now: i64,
        inherited: crate::upgrade::Inherited,
    ) -> Result<(Self, Inputs), StartError> {
        let balancer = Balancer::from_config(config, &mut maps).map_err(StartError::Balancer)?;
        for (name, num, pool) in balancer.vips() {
            info!(listener = name, vip = num, pool, "listener ready");
        }
        let (connect_tx, connects) = mpsc::channel(CONNECT_EVENTS);
        let meters = Meters::new();
        let stats_board = StatsBoard::default();
        let listeners = listeners::Listeners::start(
            config,
            &balancer,
            connect_tx,
            options.io,
            (Arc::clone(&meters), stats_board.clone()),
            inherited,
        )
        .map_err(StartError::Terminator)?;
        let board = Board::new(health::configs(config));
        let (mut supervisor, health) = Supervisor::new();
        supervisor.sync(&balancer, &board);
        let mut plane = Self {
            balancer,
            maps,
            board,
            supervisor,
            listeners,
            export_metrics: config.admin.metrics.is_some(),
            metrics: Every::new(METRICS_SECS, now),
            nat_alarms: stats::NatAlarms::default(),
            stats_log: Every::new(
                options.stats_interval_secs,
                now + options.stats_interval_secs as i64,
            ),
            cert_poll: Every::new(CERT_POLL_SECS, now + CERT_POLL_SECS as i64),
            l4_drains: Vec::new(),
            grace_secs: config.terminator.shutdown_grace_secs,
            configured_pools: config.pools.keys().cloned().collect(),
            meters,
            stats_board,
            health_gauges: public::HealthGauges::default(),
            pool_decisions: Default::default(),
        };
        plane.publish_stats(now);
        Ok((plane, Inputs { health, connects }))
    }

    /// Handles one event at `now` (unix seconds).
    pub fn handle(&mut self, event: Event, now: i64) -> Outcome {
        match event {
            Event::Health(report) => {
                self.on_health(report, now);
                Outcome::Done
            }
            Event::Connect(ev) => {
                self.on_connect(ev, now);
                Outcome::Done
            }
            Event::Admin(req) => Outcome::Admin(self.on_admin(req, now)),
            Event::Reload(config) => Outcome::Reloaded(self.on_reload(&config, now)),
            Event::CertificatesChanged => {
                Outcome::Certificates(self.listeners.reload_certificates())
            }
            Event::Tick => {
                self.on_tick(now);
                Outcome::Done
            }
        }
    }

    /// Slow-start ramps and ejection ends, then whatever periodic job is due.
    pub fn on_tick(&mut self, now: i64) {
        self.tick_ramps(now);
        self.finish_l4_drains(now);
        self.publish_stats(now);
        if self.metrics.due(now) {
            // One read of the NAT port spaces serves both the warning and the gauges.
            let nat = stats::read_nat(&self.maps, &self.balancer);
            for r in self.nat_alarms.update(&nat) {
                warn!("{}", r.warning());
            }
            if self.export_metrics {
                stats::export_metrics(&self.maps, &self.balancer, &nat);
            }
        }
        if self.stats_log.due(now) {
            stats::log_stats(&self.maps, &self.balancer);
        }
        if self.cert_poll.due(now) {
            self.listeners.reload_certificates();
        }
    }

    /// Renders the `/stats` pages (and, when `/metrics` is served, the health, chain and ring
    /// gauges) from the state at `now`.
    fn publish_stats(&mut self, now: i64) {
        let view = public::region_view(
            &self.balancer,
            &self.board,
            &self.meters,
            &self.pool_decisions,
            now,
        );
        if self.export_metrics {
            self.health_gauges
                .export(&self.balancer, &self.board, &view, now);
        }
        self.stats_board
            .publish(crate::observe::Pages::render(&view));
    }

    /// The data paths' meters (latency, clients) by backend.
    pub fn meters(&self) -> &Arc<Meters> {
        &self.meters
    }

    /// A pool's last decision: chain state, panic threshold, nodes kept in.
    pub fn pool_decision(&self, pool: &str) -> Option<&crate::health::pool::PoolDecision> {
        self.pool_decisions.get(pool)
    }

    /// The `/stats` pages as published now.
    pub fn stats_pages(&self) -> crate::observe::Pages {
        self.stats_board.current()
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The map writer, e.g. to attach the XDP program after the initial state is written.
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The configuration a listener runs with now.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.config(name)
    }

    /// Where a terminator listener accepts (empty for `l4` listeners: XDP serves those).
    pub fn listener_addrs(&self, name: &str) -> Option<&[SocketAddr]> {
        self.listeners.local_addrs(name)
    }

    /// Stops the probes and the terminator: no new connections, live ones get the shutdown
    /// grace (listeners replaced earlier finish theirs too). Returns the map writer.
    pub fn shutdown(self) -> M {
        drop(self.supervisor);
        self.listeners.shutdown();
        self.maps
    }

    /// The listening sockets of the terminator listeners, for an upgrade's new process.
    pub fn offer(&self) -> std::io::Result<crate::upgrade::Offer> {
        Ok(crate::upgrade::Offer {
            listeners: self.listeners.offer()?,
            metrics: None,
        })
    }

    /// After an upgrade handed the sockets over: the health probes stop, nothing more is
    /// written to the maps (they are the new process's), and the live connections drain
    /// (see `Listeners::drain_handed_over`). Blocks until they are gone.
    pub fn drain_handed_over(self, grace: Duration, window: Duration) -> M {
        drop(self.supervisor);
        self.listeners.drain_handed_over(grace, window);
        self.maps
    }
}

/// Configurations for tests of the plane on in-memory maps.
#[cfg(test)]
pub(crate) mod test_config {
    use crate::config::Config;

    /// One `l4` listener `rpc` on 203.0.113.10:8090 to pool `eu` of `backends` (name,
    /// address).
    pub fn l4(backends: &[(&str, &str)]) -> Config {
        let list: Vec<String> = backends
            .iter()
            .map(|(name, addr)| format!("{{ name = \"{name}\", address = \"{addr}\" }}"))
            .collect();
        let text = format!(
            "[balancer]\ninterfaces = [\"eth0\"]\nsnat_v4 = \"192.0.2.254\"\nring_size = 1009\n\n\
             [[listener]]\nname = \"rpc\"\naddress = \"203.0.113.10:8090\"\nmode = \"l4\"\npool = \"eu\"\n\n\
             [pools.eu]\nbackends = [{}]\n",
            list.join(", ")
        );
        Config::parse(&text, "test").expect("test config")
    }
}

#[cfg(test)]
mod tests {
    use super::{ControlPlane, Every, PlaneOptions};
    use crate::{balancer::MemoryMaps, config::IoChoice, ebpf::NatOccupancy};

    #[test]
    fn periodic_jobs_run_on_the_ticks_they_are_due() {
        let mut every = Every::new(5, 100);
        let due: Vec<i64> = (95..=112).filter(|t| every.due(*t)).collect();
        assert_eq!(due, [100, 105, 110]);
        let mut never = Every::new(0, 0);
        assert!(!(0..100).any(|t| never.due(t)));
    }

    /// The NAT check runs on ticks at its cadence even without `/metrics`.
    #[test]
    fn ticks_check_nat_occupancy_every_two_seconds() {
        let config = super::test_config::l4(&[("a", "192.0.2.11:8090")]);
        assert!(config.admin.metrics.is_none());
        let options = PlaneOptions {
            io: IoChoice::Epoll,
            stats_interval_secs: 0,
        };
        let (mut plane, _inputs) =
            ControlPlane::new(&config, MemoryMaps::default(), options, 100).unwrap();
        let id = plane.balancer().backends("eu").unwrap()[0].id;
        let set = |plane: &mut ControlPlane<MemoryMaps>, taken| {
            let nat = NatOccupancy {
                taken,
                capacity: 1000,
            };
            plane.maps_mut().nat.insert(id, nat);
        };
        set(&mut plane, 900);
        plane.on_tick(100);
        assert!(plane.nat_alarms.warned("eu", "a"));
        set(&mut plane, 100);
        plane.on_tick(101);
        assert!(plane.nat_alarms.warned("eu", "a"), "not due at 101");
        plane.on_tick(102);
        assert!(!plane.nat_alarms.warned("eu", "a"), "re-armed at 102");
    }
}
