//! Moving clients off a sick node. When a node leaves the ring for a health reason, the
//! control plane asks for its terminated clients to go; each relayed WebSocket connection on
//! the node then closes at its own moment, spread evenly over a window (the healthy nodes
//! see no reconnect storm): a close frame 1012 ("service restart") between two frames of
//! the node → client direction, TLS close_notify, then the connection ends. The clients
//! reconnect and land on in-sync nodes.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

/// One request: from `started`, within `window`, with this close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveOff {
    pub started: Instant,
    pub window: Duration,
    pub close: Close,
}

/// The close frame a leaving client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

impl Close {
    /// Its node fell sick: 1012 ("service restart"), reconnect.
    pub const NODE_OUT_OF_SYNC: Close = Close {
        code: crate::websocket::close_code::SERVICE_RESTART,
        reason: "node out of sync",
    };
    /// This process was upgraded and its grace is over: 1001 ("going away"), reconnect
    /// (to the new process).
    pub const GOING_AWAY: Close = Close {
        code: crate::websocket::close_code::GOING_AWAY,
        reason: "proxy upgraded",
    };
}

impl MoveOff {
    /// When connection number `seq` leaves: evenly spread (a multiplicative hash of the
    /// sequence number scatters consecutive connections over the window).
    pub fn due(&self, seq: u64) -> Instant {
        let ms = self.window.as_millis() as u64;
        let offset = if ms == 0 {
            0
        } else {
            seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) % ms
        };
        self.started + Duration::from_millis(offset)
    }
}

/// The requests of one listener's pool, by backend name.
#[derive(Debug, Default)]
pub struct MoveOffs {
    by_backend: Mutex<HashMap<String, watch::Sender<Option<MoveOff>>>>,
    next_seq: AtomicU64,
}

impl MoveOffs {
    /// What a connection on `backend` watches, and its sequence number for the spread.
    pub fn watch(&self, backend: &str) -> (watch::Receiver<Option<MoveOff>>, u64) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut m = self.by_backend.lock().unwrap_or_else(|e| e.into_inner());
        let rx = m
            .entry(backend.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        (rx, seq)
    }

    /// Asks every connection on `backend` now to leave within `window`.
    pub fn request(&self, backend: &str, window: Duration, now: Instant) {
        let m = self.by_backend.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = m.get(backend) {
            tx.send_replace(Some(MoveOff {
                started: now,
                window,
                close: Close::NODE_OUT_OF_SYNC,
            }));
        }
    }

    /// Asks every connection, on any backend, to leave within `window` with `close`.
    pub fn request_all(&self, window: Duration, now: Instant, close: Close) {
        let m = self.by_backend.lock().unwrap_or_else(|e| e.into_inner());
        for tx in m.values() {
            tx.send_replace(Some(MoveOff {
                started: now,
                window,
                close,
            }));
        }
    }

    /// The node is back: connections made from now on stay (and pending departures are
    /// called off).
    pub fn cancel(&self, backend: &str) {
        let m = self.by_backend.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = m.get(backend) {
            tx.send_replace(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn departures_spread_evenly_over_the_window() {
        let t0 = Instant::now();
        let m = MoveOff {
            started: t0,
            window: Duration::from_secs(10),
            close: Close::NODE_OUT_OF_SYNC,
        };
        let mut per_second = [0u32; 10];
        for seq in 0..1000 {
            let d = m.due(seq) - t0;
            assert!(d < Duration::from_secs(10));
            per_second[d.as_secs() as usize] += 1;
        }
        for n in per_second {
            assert!((70..=130).contains(&n), "{per_second:?}");
        }
        let zero = MoveOff {
            started: t0,
            window: Duration::ZERO,
            close: Close::GOING_AWAY,
        };
        assert_eq!(zero.due(5), t0);
    }

    #[tokio::test]
    async fn watchers_see_requests_and_cancels() {
        let offs = MoveOffs::default();
        let (mut rx, a) = offs.watch("node-1");
        let (_, b) = offs.watch("node-1");
        assert_ne!(a, b);
        let now = Instant::now();
        offs.request("node-1", Duration::from_secs(3), now);
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().unwrap().started, now);
        offs.cancel("node-1");
        rx.changed().await.unwrap();
        assert!(rx.borrow().is_none());
        // A request for a node nobody watches is nothing.
        offs.request("node-2", Duration::from_secs(3), now);
    }
}
