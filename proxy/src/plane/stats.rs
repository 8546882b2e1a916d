//! What the plane reads back from the data plane: counters for `proxy backends list`, the
//! Prometheus export and the periodic log summary, and each backend's NAT port occupancy
//! (gauges, and a warning in the log when ports run short).

use std::{collections::HashMap, net::SocketAddr};

use metrics::{counter, gauge};
use proxy_common::{backend_counter_index, Reason};
use tracing::{info, warn};

use crate::{
    balancer::{Balancer, MapWriter, MemoryMaps},
    ebpf::{CounterTotals, DataPlane, NatOccupancy},
    observe::catalog,
};

/// A map writer whose counters can be read back (the kernel maps, or the in-memory copy,
/// which counts nothing).
pub trait DataPath: MapWriter {
    /// Per-CPU counters of one VIP or backend index, summed.
    fn counters(&self, index: u32) -> Result<CounterTotals, Self::Error>;
    /// Packets by pass/drop reason, summed over CPUs.
    fn reasons(&self) -> Result<HashMap<Reason, u64>, Self::Error>;
    /// How many of backend `id`'s NAT ports are taken; None if it has no port space.
    fn nat_occupancy(&self, id: u32) -> Result<Option<NatOccupancy>, Self::Error>;
}

impl DataPath for DataPlane {
    fn counters(&self, index: u32) -> Result<CounterTotals, Self::Error> {
        DataPlane::counters(self, index)
    }
    fn reasons(&self) -> Result<HashMap<Reason, u64>, Self::Error> {
        DataPlane::reasons(self)
    }
    fn nat_occupancy(&self, id: u32) -> Result<Option<NatOccupancy>, Self::Error> {
        DataPlane::nat_occupancy(self, id)
    }
}

impl DataPath for MemoryMaps {
    fn counters(&self, _index: u32) -> Result<CounterTotals, Self::Error> {
        Ok(CounterTotals::default())
    }
    fn reasons(&self) -> Result<HashMap<Reason, u64>, Self::Error> {
        Ok(HashMap::new())
    }
    fn nat_occupancy(&self, id: u32) -> Result<Option<NatOccupancy>, Self::Error> {
        Ok(self.nat.get(&id).copied())
    }
}

/// The Prometheus listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting the metrics listener on {addr}: {source}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// The `/metrics` listener: its socket can be handed to an upgrade's new process.
pub struct MetricsServer {
    pub addr: SocketAddr,
    socket: std::net::TcpListener,
    task: tokio::task::AbortHandle,
}

impl MetricsServer {
    /// Stops serving (after an upgrade handed the socket over: scrapes go to the new
    /// process only).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// A duplicate of the listening socket, for the next process.
    pub fn socket(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.socket.as_fd().try_clone_to_owned()
    }
}

/// Serves `/metrics` on `addr` for the whole process (one global recorder). Runs inside a
/// tokio runtime.
/// Latency series are histograms with the same buckets everywhere, so that replicas' series
/// can be summed (`sum by (le)`), unlike summaries.
pub fn install_metrics_exporter(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
    install_metrics_exporter_on(addr, None)
}

/// As [`install_metrics_exporter`], serving `inherited` (the socket an earlier process
/// handed over in an upgrade) when given, instead of binding `addr`.
pub fn install_metrics_exporter_on(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
) -> Result<MetricsServer, MetricsError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| MetricsError { addr, source };
    let socket = match inherited {
        Some(s) => s,
        None => std::net::TcpListener::bind(addr).map_err(|e| err(e.into()))?,
    };
    socket.set_nonblocking(true).map_err(|e| err(e.into()))?;
    let listener =
        tokio::net::TcpListener::from_std(socket.try_clone().map_err(|e| err(e.into()))?)
            .map_err(|e| err(e.into()))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&crate::observe::latency::BUCKETS)
        .map_err(|e| err(e.into()))?
        .install_recorder()
        .map_err(|e| err(e.into()))?;
    crate::observe::catalog::describe_all();
    let task = tokio::spawn(super::metrics_http::serve(listener, handle)).abort_handle();
    info!(%addr, "Prometheus metrics at /metrics");
    Ok(MetricsServer { addr, socket, task })
}

/// Publishes the kernel's per-CPU counters (summed) as Prometheus counters, and the NAT
/// occupancy read this round as gauges.
pub(super) fn export_metrics<M: DataPath>(maps: &M, balancer: &Balancer, nat: &[NatReading]) {
    for (name, num, _) in balancer.vips() {
        if let Ok(c) = maps.counters(num) {
            let l = [("listener", name.to_string())];
            counter!(catalog::XDP_VIP_PACKETS, &l).absolute(c.packets);
            counter!(catalog::XDP_VIP_BYTES, &l).absolute(c.bytes);
            counter!(catalog::XDP_VIP_NEW_FLOWS, &l).absolute(c.new_flows);
            counter!(catalog::XDP_VIP_LRU_MISSES, &l).absolute(c.lru_misses);
        }
    }
    for (pool, backends) in balancer.pools() {
        for be in backends {
            if let Ok(c) = maps.counters(backend_counter_index(be.id)) {
                let l = [("pool", pool.to_string()), ("backend", be.name.clone())];
                counter!(catalog::XDP_BACKEND_PACKETS, &l).absolute(c.packets);
                counter!(catalog::XDP_BACKEND_BYTES, &l).absolute(c.bytes);
                counter!(catalog::XDP_BACKEND_NEW_FLOWS, &l).absolute(c.new_flows);
            }
        }
    }
    if let Ok(r) = maps.reasons() {
        for (reason, n) in r {
            counter!(catalog::XDP_BY_REASON, "reason" => reason.label()).absolute(n);
        }
    }
    for r in nat {
        let labels = [("pool", r.pool.clone()), ("backend", r.backend.clone())];
        gauge!(catalog::XDP_NAT_PORTS_IN_USE, &labels).set(r.occupancy.taken as f64);
        gauge!(catalog::XDP_NAT_PORTS_CAPACITY, &labels).set(r.occupancy.capacity as f64);
    }
}

/// One backend's NAT port occupancy, by name (never by address: this reaches logs and
/// metrics).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NatReading {
    pub pool: String,
    pub backend: String,
    pub occupancy: NatOccupancy,
}

impl NatReading {
    /// The log line for a backend that crossed the warning level: who, how full, what to do.
    pub fn warning(&self) -> String {
        format!(
            "backend {} in pool {}: {} NAT ports taken (warning at {NAT_WARN_PERCENT}%); new \
             flows to it are dropped when none is free. Add SNAT addresses \
             (balancer.snat_v4 / balancer.snat_v6, up to {} each), widen balancer.nat_ports, \
             or add another node to the pool",
            self.backend,
            self.pool,
            crate::admin::nat_ports_text(&self.occupancy),
            proxy_common::ports::MAX_SNAT_ADDRS,
        )
    }
}

/// Reads the NAT occupancy of every backend that has a port space. A backend whose read
/// fails is left out this round (as if it had none).
pub(super) fn read_nat<M: DataPath>(maps: &M, balancer: &Balancer) -> Vec<NatReading> {
    let mut readings = Vec::new();
    for (pool, backends) in balancer.pools() {
        for be in backends {
            if let Ok(Some(occupancy)) = maps.nat_occupancy(be.id) {
                readings.push(NatReading {
                    pool: pool.to_string(),
                    backend: be.name.clone(),
                    occupancy,
                });
            }
        }
    }
    readings
}

/// Share of a backend's NAT ports, in percent, at which the log warns.
pub(super) const NAT_WARN_PERCENT: u64 = 80;
/// Share it must fall below before a new crossing warns again, so that a backend hovering
/// around the warning level warns once, not at every check.
pub(super) const NAT_REARM_PERCENT: u64 = 70;

/// The warning state of one backend's NAT ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct NatAlarm {
    /// Warned, and not below [`NAT_REARM_PERCENT`] since.
    warned: bool,
}

impl NatAlarm {
    /// Takes a reading; true when it crosses [`NAT_WARN_PERCENT`] (the moment to warn).
    pub fn observe(&mut self, o: NatOccupancy) -> bool {
        // Integers: exact at the thresholds, whatever the capacity.
        let at_least = |percent: u64| o.taken as u64 * 100 >= o.capacity as u64 * percent;
        if self.warned {
            self.warned = at_least(NAT_REARM_PERCENT);
            false
        } else {
            self.warned = o.capacity > 0 && at_least(NAT_WARN_PERCENT);
            self.warned
        }
    }
}

/// A [`NatAlarm`] per backend, keyed by pool and name.
#[derive(Debug, Default)]
pub(super) struct NatAlarms(HashMap<(String, String), NatAlarm>);

impl NatAlarms {
    /// Takes one round of readings; returns those that crossed the warning level. A backend
    /// with no reading (removed, or no port space any more) starts over.
    pub fn update<'r>(&mut self, readings: &'r [NatReading]) -> Vec<&'r NatReading> {
        let mut next = HashMap::with_capacity(readings.len());
        let mut crossed = Vec::new();
        for r in readings {
            let key = (r.pool.clone(), r.backend.clone());
            let mut alarm = self.0.remove(&key).unwrap_or_default();
            if alarm.observe(r.occupancy) {
                crossed.push(r);
            }
            next.insert(key, alarm);
        }
        self.0 = next;
        crossed
    }

    /// Whether a backend was warned about and has not fallen below the re-arm level since.
    #[cfg(test)]
    pub fn warned(&self, pool: &str, backend: &str) -> bool {
        self.0
            .get(&(pool.to_string(), backend.to_string()))
            .is_some_and(|a| a.warned)
    }
}

/// Logs the counters of every VIP and backend and the packets by reason.
pub(super) fn log_stats<M: DataPath>(maps: &M, balancer: &Balancer) {
    for (name, num, _) in balancer.vips() {
        if let Ok(c) = maps.counters(num) {
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
            if let Ok(c) = maps.counters(backend_counter_index(be.id)) {
                info!(pool, backend = %be.name, weight = be.weight, packets = c.packets, new_flows = c.new_flows, "backend counters");
            }
        }
    }
    match maps.reasons() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(taken: u32, capacity: u32) -> NatOccupancy {
        NatOccupancy { taken, capacity }
    }

    #[test]
    fn alarm_warns_once_per_crossing_of_80_percent() {
        let mut alarm = NatAlarm::default();
        // taken out of 1000, one reading per check.
        let takens = [
            0, 500, 799, 800, 950, 1000, 750, 700, 810, 699, 799, 800, 801,
        ];
        let warned: Vec<u32> = takens
            .iter()
            .filter(|t| alarm.observe(occ(**t, 1000)))
            .copied()
            .collect();
        // 800 is the first at 80%; hovering above 70% (750, 700, 810) does not warn again;
        // below 70% (699) re-arms, and 800 warns again.
        assert_eq!(warned, [800, 800]);
    }

    #[test]
    fn alarm_thresholds_are_exact_for_odd_capacities() {
        // 80% of 22768 is 18214.4: 18214 is below, 18215 is at or above.
        let mut alarm = NatAlarm::default();
        assert!(!alarm.observe(occ(18_214, 22_768)));
        assert!(alarm.observe(occ(18_215, 22_768)));
        // 70% is 15937.6: 15938 keeps the warning armed-off, 15937 re-arms.
        assert!(!alarm.observe(occ(15_938, 22_768)));
        assert!(
            !alarm.observe(occ(18_215, 22_768)),
            "not below 70% in between"
        );
        assert!(!alarm.observe(occ(15_937, 22_768)));
        assert!(alarm.observe(occ(18_215, 22_768)));
        // An empty space never warns.
        assert!(!NatAlarm::default().observe(occ(0, 0)));
    }

    /// The balancer's backends with the NAT occupancy the in-memory maps report.
    #[test]
    fn readings_name_backends_and_alarms_follow_each_one() {
        let config =
            crate::plane::test_config::l4(&[("a", "192.0.2.11:8090"), ("b", "192.0.2.12:8090")]);
        let mut maps = MemoryMaps::default();
        let balancer = Balancer::from_config(&config, &mut maps).unwrap();
        let id = |name: &str| {
            balancer
                .backends("eu")
                .unwrap()
                .iter()
                .find(|b| b.name == name)
                .unwrap()
                .id
        };
        let (a, b) = (id("a"), id("b"));
        let mut alarms = NatAlarms::default();
        let mut round = |maps: &MemoryMaps| -> Vec<String> {
            let readings = read_nat(maps, &balancer);
            alarms
                .update(&readings)
                .iter()
                .map(|r| r.backend.clone())
                .collect()
        };

        // No port space: no reading, no warning.
        assert!(read_nat(&maps, &balancer).is_empty());
        assert!(round(&maps).is_empty());

        maps.nat.insert(a, occ(900, 1000));
        maps.nat.insert(b, occ(100, 1000));
        let readings = read_nat(&maps, &balancer);
        assert_eq!(readings.len(), 2);
        let ra = readings.iter().find(|r| r.backend == "a").unwrap();
        assert_eq!((ra.pool.as_str(), ra.occupancy), ("eu", occ(900, 1000)));
        assert_eq!(round(&maps), ["a"]);
        assert!(round(&maps).is_empty(), "still full: warned already");

        maps.nat.insert(b, occ(850, 1000));
        assert_eq!(round(&maps), ["b"], "each backend has its own alarm");

        // a loses its port space (e.g. the l4 listener went away), then gets it back full:
        // that is a new crossing.
        maps.nat.remove(&a);
        assert!(round(&maps).is_empty());
        maps.nat.insert(a, occ(900, 1000));
        assert_eq!(round(&maps), ["a"]);
    }

    #[test]
    fn warning_names_the_backend_the_numbers_and_the_remedy() {
        let r = NatReading {
            pool: "eu".into(),
            backend: "node-1".into(),
            occupancy: occ(18_215, 22_768),
        };
        let text = r.warning();
        for part in [
            "backend node-1 in pool eu",
            "18215/22768 (80%) NAT ports taken",
            "balancer.snat_v4",
            "balancer.snat_v6",
            "balancer.nat_ports",
            "another node",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text:?}");
        }
    }
}
