//! A TCP node for long-lived connections in a namespace: echoes whatever it reads, on a
//! thread per connection, until the peer closes. Counts the connections it accepted.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
};

use anyhow::{Context, Result};

use crate::netns::{self, NetNs};

/// The echo server; its threads end with the process (tests are short).
pub struct LineEcho {
    accepted: Arc<AtomicU64>,
}

impl LineEcho {
    /// Listens on `addr:port` inside `ns`.
    pub fn start(ns: &NetNs, addr: Ipv4Addr, port: u16) -> Result<LineEcho> {
        let listener = netns::run_in(ns, move || {
            TcpListener::bind(SocketAddr::from((addr, port)))
        })
        .context("enter node namespace")?
        .context("echo listener")?;
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                counter.fetch_add(1, Ordering::Relaxed);
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(LineEcho { accepted })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}
