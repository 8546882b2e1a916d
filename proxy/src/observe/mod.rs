//! What operators look at: per-backend latency and client counts (recorded by the data
//! paths, read by the control plane), the public `/stats` page built from them, and the
//! catalogue of Prometheus series.
//!
//! The data paths only record into [`Meters`]; the control plane renders the page once a
//! second and publishes the bytes on a [`StatsBoard`] that the terminator serves as they are.

pub mod catalog;
pub mod check;
pub mod latency;
pub mod page;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use latency::Histogram;

/// One backend's meters. Each is recorded twice: into the in-process histogram the
/// `/stats` page reads, and into the Prometheus series (handles registered once here, so a
/// record is a few atomic adds, not a label lookup).
#[derive(Debug)]
pub struct BackendMeters {
    pub connect: Histogram,
    pub time_to_101: Histogram,
    pub health_rtt: Histogram,
    clients: AtomicI64,
    prom: PromHandles,
}

struct PromHandles {
    connect: metrics::Histogram,
    time_to_101: metrics::Histogram,
    health_rtt: metrics::Histogram,
    clients: metrics::Gauge,
}

impl std::fmt::Debug for PromHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PromHandles")
    }
}

impl BackendMeters {
    fn new(pool: &str, backend: &str) -> Self {
        let labels = [("pool", pool.to_string()), ("backend", backend.to_string())];
        Self {
            connect: Histogram::default(),
            time_to_101: Histogram::default(),
            health_rtt: Histogram::default(),
            clients: AtomicI64::new(0),
            prom: PromHandles {
                connect: metrics::histogram!(catalog::CONNECT_SECONDS, &labels),
                time_to_101: metrics::histogram!(catalog::TIME_TO_101_SECONDS, &labels),
                health_rtt: metrics::histogram!(catalog::HEALTH_CHECK_SECONDS, &labels),
                clients: metrics::gauge!(catalog::ACTIVE_CONNECTIONS, &labels),
            },
        }
    }

    /// Time to a connected socket to the node.
    pub fn record_connect(&self, d: Duration) {
        self.connect.record(d);
        self.prom.connect.record(d.as_secs_f64());
    }

    /// Time from the request sent to the node's `101`.
    pub fn record_time_to_101(&self, d: Duration) {
        self.time_to_101.record(d);
        self.prom.time_to_101.record(d.as_secs_f64());
    }

    /// A health check's round trip.
    pub fn record_health_rtt(&self, d: Duration) {
        self.health_rtt.record(d);
        self.prom.health_rtt.record(d.as_secs_f64());
    }

    /// A client connection relayed to this node; the guard counts it until dropped.
    pub fn client(self: &Arc<Self>) -> ClientGuard {
        self.clients.fetch_add(1, Ordering::Relaxed);
        self.prom.clients.increment(1.0);
        ClientGuard(Arc::clone(self))
    }

    /// Client connections relayed to this node now.
    pub fn clients(&self) -> i64 {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Counts one live client connection (see [`BackendMeters::client`]).
#[derive(Debug)]
pub struct ClientGuard(Arc<BackendMeters>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
        self.0.prom.clients.decrement(1.0);
    }
}

/// Every backend's meters, by (pool, backend name): names are unique within a pool only.
#[derive(Debug, Default)]
pub struct Meters {
    by_backend: RwLock<HashMap<(String, String), Arc<BackendMeters>>>,
}

impl Meters {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The meters of a backend, made on first use.
    pub fn backend(&self, pool: &str, backend: &str) -> Arc<BackendMeters> {
        let key = (pool.to_string(), backend.to_string());
        if let Some(m) = self.read().get(&key) {
            return Arc::clone(m);
        }
        let mut w = self.by_backend.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            w.entry(key)
                .or_insert_with(|| Arc::new(BackendMeters::new(pool, backend))),
        )
    }

    /// The meters of a backend if anything was recorded for it.
    pub fn get(&self, pool: &str, backend: &str) -> Option<Arc<BackendMeters>> {
        self.read()
            .get(&(pool.to_string(), backend.to_string()))
            .cloned()
    }

    /// Forgets backends that are gone (their series stop growing; live connections keep
    /// their own handle until they end).
    pub fn retain(&self, live: impl Fn(&str, &str) -> bool) {
        let mut w = self.by_backend.write().unwrap_or_else(|e| e.into_inner());
        w.retain(|(p, b), _| live(p, b));
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), Arc<BackendMeters>>> {
        // A panic elsewhere cannot leave a map of counters inconsistent: keep reading.
        self.by_backend.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The rendered `/stats` documents, as complete HTTP responses.
#[derive(Debug, Clone, Default)]
pub struct Pages {
    pub html: Arc<[u8]>,
    pub json: Arc<[u8]>,
}

impl Pages {
    /// The two documents of a view as complete HTTP responses.
    pub fn render(view: &page::RegionView) -> Self {
        Self {
            html: response("200 OK", "text/html; charset=utf-8", &page::html(view)).into(),
            json: response("200 OK", "application/json", &page::json(view)).into(),
        }
    }

    /// What is served before the first view is published (the first tick).
    fn not_ready() -> Self {
        let r: Arc<[u8]> = response(
            "503 Service Unavailable",
            "text/plain",
            "stats not ready yet\n",
        )
        .into();
        Self {
            html: Arc::clone(&r),
            json: r,
        }
    }
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Where the control plane publishes the pages and the terminator picks them up.
#[derive(Debug, Clone)]
pub struct StatsBoard(Arc<Mutex<Pages>>);

impl Default for StatsBoard {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Pages::not_ready())))
    }
}

impl StatsBoard {
    pub fn publish(&self, pages: Pages) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = pages;
    }

    /// The current pages (cheap: two reference counts).
    pub fn current(&self) -> Pages {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
