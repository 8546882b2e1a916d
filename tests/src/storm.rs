//! Connection storms: many short TCP connections as fast as they complete, the way wallets
//! reconnect after a node or a balancer comes back. A node server that answers one line and
//! closes first (like an HTTP server with `Connection: close`), and a client that opens,
//! sends, reads to the end and opens again on many threads, counting every second.
//!
//! Used by the storm test (`tests/l4_storm.rs`) and by `cargo xtask bench storm`, which runs
//! the same storm through the XDP data plane and through nftables DNAT.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    config::{Backend, ConfigBuilder},
    netns::{self, NetNs},
    topology::{self, Lab},
};

/// The VIP's port and the node's port in a storm lab.
pub const VIP_PORT: u16 = 80;
pub const NODE_PORT: u16 = 8080;

/// The proxy's configuration for a storm through one `l4` VIP to the lab's nodes, with
/// defaults for everything else (NAT ports, timeouts, table sizes): only interfaces, NAT
/// address, listener and pool are given.
pub fn l4_config(lab: &Lab, pin_dir: &str) -> String {
    let backends: Vec<Backend> = lab
        .nodes
        .iter()
        .map(|n| {
            Backend::new(
                format!("node-{}", n.index),
                format!("{}:{NODE_PORT}", n.addr),
            )
        })
        .collect();
    ConfigBuilder::new(&lab.lb_interfaces())
        .set("balancer", "snat_v4", topology::SNAT_ADDR.to_string())
        .set("balancer", "pin_dir", pin_dir)
        .listener(
            "rpc",
            format!("{}:{VIP_PORT}", topology::VIP),
            "l4",
            "storm",
        )
        .pool("storm", &backends)
        .text()
}

/// A node server in a namespace: answers each connection's first line with a short response
/// and closes its side first. Counts the connections it accepted.
pub struct StormServer {
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl StormServer {
    /// Listens on `addr:port` inside `ns` with `threads` accepting threads.
    pub fn start(ns: &NetNs, addr: Ipv4Addr, port: u16, threads: usize) -> Result<StormServer> {
        let listener = netns::run_in(ns, move || -> Result<TcpListener> {
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            sock.set_reuse_address(true)?;
            sock.bind(&SocketAddr::from((addr, port)).into())?;
            // A deep accept queue: a storm arrives faster than one thread accepts.
            sock.listen(4096)?;
            Ok(sock.into())
        })
        .context("enter node namespace")?
        .context("node listener")?;
        listener.set_nonblocking(true)?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..threads {
            let listener = listener.try_clone()?;
            let (accepted, stop) = (accepted.clone(), stop.clone());
            handles.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            serve_one(conn);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_micros(200));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(1)),
                    }
                }
            }));
        }
        Ok(StormServer {
            accepted,
            stop,
            threads: handles,
            addr: SocketAddr::from((addr, port)),
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StormServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One request line in, one response out, then the server closes first.
fn serve_one(conn: TcpStream) {
    let mut conn = conn;
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                got += n;
                if buf[..got].contains(&b'\n') {
                    break;
                }
            }
        }
    }
    let _ = conn.write_all(b"ok\n");
}

/// What a storm did.
#[derive(Debug, Clone, Default)]
pub struct StormReport {
    /// Connections that completed (connected, answered, closed by the server).
    pub completed: u64,
    /// Connections that failed (connect timeout, refused, reset, short answer).
    pub failed: u64,
    /// Completed connections in each whole second of the run (those that finished after
    /// the end are in `completed` only).
    pub per_second: Vec<u64>,
    pub elapsed: Duration,
    /// The first failures, for the report.
    pub errors: Vec<String>,
    /// The longest a completed connection took, connect to close (a SYN that waited for a
    /// retransmission shows here as a second or more).
    pub slowest: Duration,
}

impl StormReport {
    /// Completed connections per second over the run.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whole seconds in which no connection completed.
    pub fn stalled_seconds(&self) -> Vec<usize> {
        self.per_second
            .iter()
            .enumerate()
            .filter(|(_, n)| **n == 0)
            .map(|(i, _)| i)
            .collect()
    }
}

/// Opens connections to `target` from `ns` on `workers` threads for `duration`: connect,
/// send a line, read to the end. Every connection that is started is finished or counted
/// as failed before this returns.
pub fn storm(
    ns: &NetNs,
    target: SocketAddr,
    workers: usize,
    duration: Duration,
) -> Result<StormReport> {
    let seconds = duration.as_secs().max(1) as usize;
    // Connections started before the end finish after it: room for their completions.
    let per_second: Arc<Vec<AtomicU64>> =
        Arc::new((0..seconds + 30).map(|_| AtomicU64::new(0)).collect());
    let failed = Arc::new(AtomicU64::new(0));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = Instant::now();
    let handles = netns::run_in(ns, {
        let (per_second, failed, errors, slowest_us) = (
            per_second.clone(),
            failed.clone(),
            errors.clone(),
            slowest_us.clone(),
        );
        move || {
            // Threads started here are in the namespace too (they inherit it).
            (0..workers)
                .map(|_| {
                    let (per_second, failed, errors, slowest_us) = (
                        per_second.clone(),
                        failed.clone(),
                        errors.clone(),
                        slowest_us.clone(),
                    );
                    thread::spawn(move || {
                        while start.elapsed() < duration {
                            let began = Instant::now();
                            match one_connection(target) {
                                Ok(()) => {
                                    let took = began.elapsed().as_micros() as u64;
                                    slowest_us.fetch_max(took, Ordering::Relaxed);
                                    let s = start.elapsed().as_secs() as usize;
                                    if let Some(c) = per_second.get(s) {
                                        c.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Err(e) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    let mut errors = errors.lock().unwrap();
                                    if errors.len() < 10 {
                                        errors.push(format!(
                                            "{:.1}s: {e}",
                                            start.elapsed().as_secs_f64()
                                        ));
                                    }
                                }
                            }
                        }
                    })
                })
                .collect::<Vec<_>>()
        }
    })
    .context("enter client namespace")?;
    for h in handles {
        let _ = h.join();
    }
    let elapsed = start.elapsed();
    let mut per_second: Vec<u64> = per_second
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let completed = per_second.iter().sum();
    per_second.truncate(seconds);
    let errors = errors.lock().unwrap().clone();
    Ok(StormReport {
        completed,
        failed: failed.load(Ordering::Relaxed),
        per_second,
        elapsed,
        errors,
        slowest: Duration::from_micros(slowest_us.load(Ordering::Relaxed)),
    })
}

fn one_connection(target: SocketAddr) -> std::io::Result<()> {
    // Long enough for two SYN retransmissions: a storm test wants to see drops in the
    // counters, not as client timeouts.
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(7))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET\n")?;
    let mut answer = Vec::with_capacity(8);
    s.read_to_end(&mut answer)?;
    if answer != b"ok\n" {
        return Err(std::io::Error::other(format!("answer {answer:?}")));
    }
    Ok(())
}
