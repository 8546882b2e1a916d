//! What the plane reads back from the data plane: counters for `proxy backends list`, the
//! Prometheus export and the periodic log summary.

use std::{collections::HashMap, net::SocketAddr};

use metrics::{counter, gauge};
use proxy_common::{backend_counter_index, Reason};
use tracing::{info, warn};

use crate::{
    balancer::{Balancer, MapWriter, MemoryMaps},
    ebpf::{CounterTotals, DataPlane},
};

/// A map writer whose counters can be read back (the kernel maps, or the in-memory copy,
/// which counts nothing).
pub trait DataPath: MapWriter {
    /// Per-CPU counters of one VIP or backend index, summed.
    fn counters(&self, index: u32) -> Result<CounterTotals, Self::Error>;
    /// Packets by pass/drop reason, summed over CPUs.
    fn reasons(&self) -> Result<HashMap<Reason, u64>, Self::Error>;
}

impl DataPath for DataPlane {
    fn counters(&self, index: u32) -> Result<CounterTotals, Self::Error> {
        DataPlane::counters(self, index)
    }
    fn reasons(&self) -> Result<HashMap<Reason, u64>, Self::Error> {
        DataPlane::reasons(self)
    }
}

impl DataPath for MemoryMaps {
    fn counters(&self, _index: u32) -> Result<CounterTotals, Self::Error> {
        Ok(CounterTotals::default())
    }
    fn reasons(&self) -> Result<HashMap<Reason, u64>, Self::Error> {
        Ok(HashMap::new())
    }
}

/// The Prometheus listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting the metrics listener on {addr}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    #[source]
    source: metrics_exporter_prometheus::BuildError,
}

/// Serves `/metrics` on `addr` for the whole process (one global recorder). Runs inside a
/// tokio runtime.
pub fn install_metrics_exporter(addr: SocketAddr) -> Result<(), MetricsError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|source| MetricsError { addr, source })?;
    info!(%addr, "Prometheus metrics at /metrics");
    Ok(())
}

/// Publishes the kernel's per-CPU counters (summed) as Prometheus counters.
pub(super) fn export_metrics<M: DataPath>(maps: &M, balancer: &Balancer) {
    for (name, num, _) in balancer.vips() {
        if let Ok(c) = maps.counters(num) {
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
            if let Ok(c) = maps.counters(backend_counter_index(be.id)) {
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
    if let Ok(r) = maps.reasons() {
        for (reason, n) in r {
            counter!("proxy_xdp_packets_by_reason_total", "reason" => reason.label()).absolute(n);
        }
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
