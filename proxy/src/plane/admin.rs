//! Admin requests (`proxy backends ...`) applied to the plane, one at a time.

use tracing::info;

use super::{ControlPlane, DataPath};
use crate::{
    admin::{log_refusal, BackendRow, Request, Response},
    balancer::Balancer,
    health::Board,
};
use proxy_common::backend_counter_index;

impl<M: DataPath> ControlPlane<M> {
    /// Applies a request to the balancer and the terminator's tables; answers it.
    pub fn on_admin(&mut self, req: Request, now: i64) -> Response {
        let (balancer, maps) = (&mut self.balancer, &mut self.maps);
        let result = match &req {
            Request::List => {
                return Response {
                    backends: backend_rows(balancer, maps, &self.board),
                    ..Response::ok("ok")
                }
            }
            Request::Status => {
                let view = super::public::region_view(
                    balancer,
                    &self.board,
                    &self.meters,
                    &self.pool_decisions,
                    now,
                );
                return Response {
                    status: Some(Box::new(view)),
                    ..Response::ok("ok")
                };
            }
            Request::Upgrade { .. } => {
                return Response::err("upgrades are run by `proxy run`'s event loop")
            }
            Request::Add {
                pool,
                name,
                address,
                weight,
            } => balancer
                .add_backend(pool, name, *address, weight.unwrap_or(100), maps)
                .map(|id| format!("added {name} to {pool} (id {id})")),
            Request::Drain { pool, name } => balancer
                .set_weight(pool, name, 0, maps)
                .map(|_| format!("drained {name} in {pool}")),
            Request::Remove { pool, name } => balancer
                .remove_backend(pool, name, maps)
                .map(|_| format!("removed {name} from {pool}")),
            Request::Weight { pool, name, weight } => balancer
                .set_weight(pool, name, *weight, maps)
                .map(|_| format!("{name} in {pool}: weight {weight}")),
        };
        let response = match result {
            Ok(msg) => {
                info!("admin: {msg}");
                self.listeners.refresh(&self.balancer);
                Response::ok(msg)
            }
            Err(e) => {
                let why = format!("{e:#}");
                log_refusal(&req, &why);
                Response::err(why)
            }
        };
        // Added or removed backends of checked pools get (or lose) their probes.
        self.supervisor.sync(&self.balancer, &self.board);
        response
    }
}

fn backend_rows<M: DataPath>(balancer: &Balancer, maps: &M, board: &Board) -> Vec<BackendRow> {
    let mut rows = Vec::new();
    for (pool, backends) in balancer.pools() {
        for be in backends {
            let c = maps
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
                // Unreadable counts as unknown: the list still answers.
                nat_ports: maps.nat_occupancy(be.id).ok().flatten(),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use crate::{
        admin::Request,
        balancer::MemoryMaps,
        config::IoChoice,
        ebpf::NatOccupancy,
        plane::{ControlPlane, PlaneOptions},
    };

    #[test]
    fn list_shows_each_backends_nat_ports() {
        let config =
            crate::plane::test_config::l4(&[("a", "192.0.2.11:8090"), ("b", "192.0.2.12:8090")]);
        let options = PlaneOptions {
            io: IoChoice::Epoll,
            stats_interval_secs: 0,
        };
        let (mut plane, _inputs) =
            ControlPlane::new(&config, MemoryMaps::default(), options, 0).unwrap();
        let a = plane.balancer().backends("eu").unwrap()[0].clone();
        assert_eq!(a.name, "a");
        let taken = NatOccupancy {
            taken: 1234,
            capacity: 22768,
        };
        plane.maps_mut().nat.insert(a.id, taken);
        let rows = plane.on_admin(Request::List, 0).backends;
        let nat: Vec<(&str, Option<NatOccupancy>)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.nat_ports))
            .collect();
        assert_eq!(nat, [("a", Some(taken)), ("b", None)]);
    }
}
