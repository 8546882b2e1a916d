//! A real terminator on loopback for tests and the bench: listeners on free ports with an
//! upstream table built from `(name, address)` pairs, started with [`TerminatorBuilder`].

use std::{collections::HashMap, io, net::SocketAddr, sync::Arc, sync::Once, time::Duration};

use proxy::{
    handshake::Limits,
    maglev::{MaglevRing, RingMember},
    terminator::{
        handler::{ListenerCtx, Observe},
        io::IoMode,
        server::{ConnLimits, ListenerSpec, Terminator},
        tls::TlsAcceptor,
        upstream::{Upstream, UpstreamSet, UpstreamTable},
    },
};

/// Installs rustls' process-wide crypto provider (aws-lc-rs, as `proxy run` does), once.
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// Both io modes, in the order the tests run them.
pub fn io_modes() -> [IoMode; 2] {
    [IoMode::Epoll, IoMode::Uring]
}

/// An upstream table of the given nodes, weight 1 each, ids in order, on a 1009-slot ring.
pub fn upstream_table(nodes: &[(&str, SocketAddr)]) -> UpstreamTable {
    let members: Vec<RingMember> = nodes
        .iter()
        .zip(0..)
        .map(|((name, _), id)| RingMember {
            id,
            name: name.to_string(),
            weight: 1,
        })
        .collect();
    let mut ring = MaglevRing::new(1009).expect("1009 is a valid ring size");
    ring.rebuild(&members).expect("ring over the test nodes");
    let backends: HashMap<u32, Upstream> = nodes
        .iter()
        .zip(0..)
        .map(|((name, addr), id)| {
            let up = Upstream {
                id,
                name: name.to_string(),
                addr: *addr,
            };
            (id, up)
        })
        .collect();
    UpstreamTable::new(UpstreamSet { ring, backends })
}

/// One listener on 127.0.0.1 (a free port) with test-sized timeouts by default: handshake
/// 800 ms, backend connect 500 ms, idle 30 s.
pub struct TestListener {
    pub name: String,
    /// Meters and published `/stats` pages (none by default).
    pub observe: Observe,
    pub upstreams: UpstreamTable,
    pub tls: Option<TlsAcceptor>,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl TestListener {
    pub fn new(name: &str, upstreams: UpstreamTable) -> Self {
        TestListener {
            name: name.into(),
            observe: Observe::default(),
            upstreams,
            tls: None,
            handshake_timeout: Duration::from_millis(800),
            connect_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(30),
        }
    }

    pub fn observe(mut self, observe: Observe) -> Self {
        self.observe = observe;
        self
    }

    pub fn tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    pub fn timeouts(mut self, handshake: Duration, connect: Duration, idle: Duration) -> Self {
        (
            self.handshake_timeout,
            self.connect_timeout,
            self.idle_timeout,
        ) = (handshake, connect, idle);
        self
    }

    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    fn spec(self) -> ListenerSpec {
        let ctx = Arc::new(ListenerCtx {
            name: self.name,
            observe: self.observe,
            limits: Limits::default(),
            upstreams: self.upstreams,
            handshake_timeout: self.handshake_timeout,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
        });
        ListenerSpec {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ctx,
            tls: self.tls,
        }
    }
}

/// A terminator as the tests start it: by default one worker, 1,000 connections in all
/// and per client, 300 ms shutdown grace.
pub struct TerminatorBuilder {
    mode: IoMode,
    workers: usize,
    max_connections: usize,
    max_per_client: usize,
    grace: Duration,
    listeners: Vec<TestListener>,
}

impl TerminatorBuilder {
    pub fn new(mode: IoMode) -> Self {
        TerminatorBuilder {
            mode,
            workers: 1,
            max_connections: 1000,
            max_per_client: 1000,
            grace: Duration::from_millis(300),
            listeners: Vec::new(),
        }
    }

    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    pub fn limits(mut self, max_connections: usize, max_per_client: usize) -> Self {
        (self.max_connections, self.max_per_client) = (max_connections, max_per_client);
        self
    }

    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn listener(mut self, listener: TestListener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Starts it; `local_addrs` holds the listeners' addresses in the order they were added.
    pub fn start(self) -> io::Result<Terminator> {
        init_crypto();
        let specs = self.listeners.into_iter().map(TestListener::spec).collect();
        Terminator::start(
            self.mode,
            self.workers,
            specs,
            ConnLimits::new(self.max_connections, self.max_per_client),
            self.grace,
        )
    }
}
