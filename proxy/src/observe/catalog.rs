//! Every Prometheus series the proxy exports: name, kind, unit and help text in one table,
//! so the exporter describes them all and tests (and the Grafana dashboard's check) can
//! list them. Backend series carry `pool` and `backend` labels: backend names are unique
//! within a pool only.

use metrics::Unit;

pub const CONNECT_SECONDS: &str = "proxy_backend_connect_seconds";
pub const TIME_TO_101_SECONDS: &str = "proxy_backend_time_to_101_seconds";
pub const HEALTH_CHECK_SECONDS: &str = "proxy_health_check_seconds";
pub const ACTIVE_CONNECTIONS: &str = "proxy_backend_active_connections";
pub const BACKEND_BYTES: &str = "proxy_backend_bytes_total";
pub const BACKEND_ERRORS: &str = "proxy_backend_errors_total";
pub const HANDSHAKE_REJECTS: &str = "proxy_handshake_rejects_total";
pub const MOVED_OFF: &str = "proxy_clients_moved_off_total";
pub const BACKEND_UP: &str = "proxy_backend_up";
pub const BACKEND_HEALTH: &str = "proxy_backend_health";
pub const BACKEND_WEIGHT: &str = "proxy_backend_weight";
pub const BACKEND_HEAD_BLOCK: &str = "proxy_backend_head_block";
pub const BACKEND_HEAD_AGE: &str = "proxy_backend_head_age_seconds";
pub const POOL_BEST_HEAD: &str = "proxy_pool_best_head_block";
pub const POOL_CHAIN_STATE: &str = "proxy_pool_chain_state";
pub const POOL_NODES_UP: &str = "proxy_pool_nodes_up";
pub const POOL_PANIC: &str = "proxy_pool_panic";
pub const RING_VERSION: &str = "proxy_ring_version";
pub const PROBE_FAILURES: &str = "proxy_health_probe_failures_total";
pub const AGENT_FAILURES: &str = "proxy_health_agent_failures_total";
pub const XDP_VIP_PACKETS: &str = "proxy_xdp_vip_packets_total";
pub const XDP_VIP_BYTES: &str = "proxy_xdp_vip_bytes_total";
pub const XDP_VIP_NEW_FLOWS: &str = "proxy_xdp_vip_new_flows_total";
pub const XDP_VIP_LRU_MISSES: &str = "proxy_xdp_vip_lru_misses_total";
pub const XDP_BACKEND_PACKETS: &str = "proxy_xdp_backend_packets_total";
pub const XDP_BACKEND_BYTES: &str = "proxy_xdp_backend_bytes_total";
pub const XDP_BACKEND_NEW_FLOWS: &str = "proxy_xdp_backend_new_flows_total";
pub const XDP_BY_REASON: &str = "proxy_xdp_packets_by_reason_total";
pub const XDP_NAT_PORTS_IN_USE: &str = "proxy_xdp_nat_ports_in_use";
pub const XDP_NAT_PORTS_CAPACITY: &str = "proxy_xdp_nat_ports_capacity";

/// What kind of series a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// name, kind, unit, help.
pub const SERIES: &[(&str, Kind, Option<Unit>, &str)] = &[
    (CONNECT_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Time for the terminator to connect to a backend node, per pool and backend."),
    (TIME_TO_101_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Time from the WebSocket upgrade request sent to a node to its 101 answer."),
    (HEALTH_CHECK_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Round trip of a successful health check (JSON-RPC call) to a node."),
    (ACTIVE_CONNECTIONS, Kind::Gauge, None, "Client connections the terminator relays to a node now."),
    (BACKEND_BYTES, Kind::Counter, Some(Unit::Bytes), "Bytes relayed by the terminator, by direction (up: client to node)."),
    (BACKEND_ERRORS, Kind::Counter, None, "Terminator errors towards a node, by kind (refused, connect_timeout, reset, idle_timeout, bad_upstream_answer)."),
    (MOVED_OFF, Kind::Counter, None, "Client connections closed (1012) to move them off a node that left the ring for a health reason."),
    (HANDSHAKE_REJECTS, Kind::Counter, None, "Client first requests refused by the terminator, by HTTP status."),
    (BACKEND_UP, Kind::Gauge, None, "1 when the backend takes new connections (healthy, not ejected, not drained by its agent)."),
    (BACKEND_HEALTH, Kind::Gauge, None, "1 for the backend's current health state and reason (state-set: the other combinations read 0)."),
    (BACKEND_WEIGHT, Kind::Gauge, None, "The backend's effective weight in its listeners' rings (0: out of the ring)."),
    (BACKEND_HEAD_BLOCK, Kind::Gauge, None, "Head block number a node reported at its last health check."),
    (BACKEND_HEAD_AGE, Kind::Gauge, Some(Unit::Seconds), "Age of the node's head block at its last health check."),
    (POOL_BEST_HEAD, Kind::Gauge, None, "Highest head block number reported by any node of the pool."),
    (POOL_CHAIN_STATE, Kind::Gauge, None, "1 for the pool's chain state (advancing, halted, unknown); the others read 0."),
    (POOL_NODES_UP, Kind::Gauge, None, "Nodes of the pool that take new connections."),
    (POOL_PANIC, Kind::Gauge, None, "1 while fewer of the pool's nodes are healthy than its panic threshold (the least-bad stay in)."),
    (RING_VERSION, Kind::Gauge, None, "Version of a listener's Maglev ring: grows by one at every change written to the kernel."),
    (PROBE_FAILURES, Kind::Counter, None, "Failed active health probes, by pool, backend and kind of failure (connect, timeout, bad_json, rpc_error, ...)."),
    (AGENT_FAILURES, Kind::Counter, None, "Failed agent polls, by pool, backend and kind of failure."),
    (XDP_VIP_PACKETS, Kind::Counter, None, "Packets the XDP program handled for an l4 listener's VIP."),
    (XDP_VIP_BYTES, Kind::Counter, Some(Unit::Bytes), "Bytes the XDP program handled for an l4 listener's VIP."),
    (XDP_VIP_NEW_FLOWS, Kind::Counter, None, "Flows the XDP program pinned to a backend for an l4 listener."),
    (XDP_VIP_LRU_MISSES, Kind::Counter, None, "Packets of an l4 listener that were not the first of their flow but found no flow entry (pinned again)."),
    (XDP_BACKEND_PACKETS, Kind::Counter, None, "Packets the XDP program forwarded to a backend."),
    (XDP_BACKEND_BYTES, Kind::Counter, Some(Unit::Bytes), "Bytes the XDP program forwarded to a backend."),
    (XDP_BACKEND_NEW_FLOWS, Kind::Counter, None, "Flows the XDP program pinned to a backend."),
    (XDP_BY_REASON, Kind::Counter, None, "Packets seen by the XDP program, by verdict reason."),
    (XDP_NAT_PORTS_IN_USE, Kind::Gauge, None, "NAT ports of a backend's port space held by flows."),
    (XDP_NAT_PORTS_CAPACITY, Kind::Gauge, None, "NAT ports in a backend's port space (ports per SNAT address times SNAT addresses)."),
];

/// Describes every series to the installed recorder (HELP and unit lines).
pub fn describe_all() {
    for (name, kind, unit, help) in SERIES {
        match (kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(*name, *u, *help),
            (Kind::Counter, None) => metrics::describe_counter!(*name, *help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(*name, *u, *help),
            (Kind::Gauge, None) => metrics::describe_gauge!(*name, *help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(*name, *u, *help),
            (Kind::Histogram, None) => metrics::describe_histogram!(*name, *help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for (name, kind, unit, help) in SERIES {
            assert!(seen.insert(*name), "{name} listed twice");
            assert!(name.starts_with("proxy_"), "{name}");
            assert!(!help.is_empty());
            assert_eq!(
                *kind == Kind::Counter,
                name.ends_with("_total"),
                "{name}: counters, and only counters, end in _total"
            );
            match unit {
                Some(Unit::Seconds) => assert!(name.contains("_seconds"), "{name}"),
                Some(Unit::Bytes) => assert!(name.contains("_bytes"), "{name}"),
                _ => {}
            }
        }
    }
}
