//! Backend choice for the terminator: the listener's Maglev ring (the same table the XDP
//! program uses) keyed by the client address, so a client keeps its node across reconnects
//! and across balancer replicas. The control plane swaps the whole table atomically.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
};

use proxy_common::{hash::source_hash, EMPTY_SLOT};

use crate::{balancer::addr_words, health::ConnectEvent, maglev::MaglevRing};

/// A node the terminator may connect to. The address never leaves the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub id: u32,
    pub name: String,
    pub addr: SocketAddr,
}

/// One consistent view: a ring and the backends its slots name.
#[derive(Debug, Clone)]
pub struct UpstreamSet {
    pub ring: MaglevRing,
    pub backends: HashMap<u32, Upstream>,
}

/// How many nodes a connection tries when the chosen one refuses.
pub const MAX_ATTEMPTS: usize = 3;

/// The ring hash of a client address: exactly what the XDP program computes for a VIP
/// with source-address hashing.
pub fn client_hash(ip: IpAddr) -> u32 {
    let (words, family) = addr_words(ip);
    source_hash(&words, family)
}

impl UpstreamSet {
    /// The client's node first, then fallbacks for retries (other ring slots derived from
    /// the same hash, so retries are deterministic too), without duplicates.
    pub fn candidates(&self, client: IpAddr) -> Vec<&Upstream> {
        let hash = client_hash(client);
        let mut out: Vec<&Upstream> = Vec::with_capacity(MAX_ATTEMPTS);
        for i in 0..(MAX_ATTEMPTS as u32 * 8) {
            if out.len() == MAX_ATTEMPTS {
                break;
            }
            // Probe i > 0: a different slot, spread by an odd multiplier.
            let h = hash.wrapping_add(i.wrapping_mul(0x9e37_79b9));
            let id = self.ring.lookup(h);
            if id == EMPTY_SLOT {
                break;
            }
            if let Some(b) = self.backends.get(&id) {
                if !out.iter().any(|o| o.id == id) {
                    out.push(b);
                }
            }
        }
        out
    }
}

/// The shared, swappable table of one listener, and where connect results go (passive
/// health: the control plane ejects a node that keeps refusing).
#[derive(Debug, Clone)]
pub struct UpstreamTable {
    set: Arc<RwLock<Arc<UpstreamSet>>>,
    events: Option<(String, tokio::sync::mpsc::Sender<ConnectEvent>)>,
    /// Requests to move clients off sick nodes (see `move_off`).
    pub move_offs: Arc<super::move_off::MoveOffs>,
}

impl UpstreamTable {
    pub fn new(set: UpstreamSet) -> Self {
        Self {
            set: Arc::new(RwLock::new(Arc::new(set))),
            events: None,
            move_offs: Arc::default(),
        }
    }

    /// Connect results of this listener's pool `pool` are sent to `tx` (dropped when full:
    /// the data path never waits for the control plane).
    pub fn with_events(
        mut self,
        pool: String,
        tx: tokio::sync::mpsc::Sender<ConnectEvent>,
    ) -> Self {
        self.events = Some((pool, tx));
        self
    }

    /// The current view (cheap: one Arc clone).
    pub fn current(&self) -> Arc<UpstreamSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the whole view at once: readers see the old or the new, never a mix.
    pub fn replace(&self, set: UpstreamSet) {
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// Reports a connect attempt to `backend`.
    pub fn report(&self, backend: &str, ok: bool) {
        if let Some((pool, tx)) = &self.events {
            let _ = tx.try_send(ConnectEvent {
                pool: pool.clone(),
                backend: backend.to_string(),
                ok,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::RingMember;

    fn set(n: u32) -> UpstreamSet {
        let mut ring = MaglevRing::new(1009).unwrap();
        let members: Vec<RingMember> = (0..n)
            .map(|i| RingMember {
                id: i,
                name: format!("node-{i}"),
                weight: 1,
            })
            .collect();
        ring.rebuild(&members).unwrap();
        let backends = (0..n)
            .map(|i| {
                (
                    i,
                    Upstream {
                        id: i,
                        name: format!("node-{i}"),
                        addr: SocketAddr::from(([192, 0, 2, i as u8 + 1], 8090)),
                    },
                )
            })
            .collect();
        UpstreamSet { ring, backends }
    }

    #[test]
    fn first_candidate_is_the_ring_choice_and_retries_differ() {
        let s = set(4);
        for last in 1..=200u8 {
            let ip = IpAddr::from([198, 51, 100, last]);
            let c = s.candidates(ip);
            assert_eq!(c.len(), MAX_ATTEMPTS);
            assert_eq!(c[0].id, s.ring.lookup(client_hash(ip)));
            assert!(c[1].id != c[0].id && c[2].id != c[0].id && c[1].id != c[2].id);
            assert_eq!(s.candidates(ip)[0].id, c[0].id, "not deterministic");
        }
    }

    #[test]
    fn single_backend_and_empty_ring() {
        assert_eq!(set(1).candidates(IpAddr::from([198, 51, 100, 7])).len(), 1);
        assert!(set(0)
            .candidates(IpAddr::from([198, 51, 100, 7]))
            .is_empty());
    }
}
