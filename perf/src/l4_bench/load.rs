//! The l4 bench's load: a node server (echo for request/response, sink for streams) and
//! clients that keep many small round trips or a few large streams going until stopped.
//!
//! Sockets are opened inside their namespace (a socket keeps the namespace it was made in)
//! and then driven by one single-threaded tokio runtime each, so a whole side costs one
//! thread on the load generator's CPU (threads inherit the spawning thread's CPU mask).

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use proxy_tests::netns::{self, NetNs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a node server does with the bytes it reads.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Writes them back (request/response).
    Echo,
    /// Counts and drops them (streams).
    Sink,
}

/// A node server on one thread; counts the bytes it read. Stops (and closes every
/// connection) on drop.
pub struct NodeServer {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NodeServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: SocketAddr, mode: Mode) -> Result<NodeServer> {
        // std sets SO_REUSEADDR: the previous phase's listener on this port left TIME_WAITs.
        let listener = netns::run_in(ns, move || TcpListener::bind(addr))?
            .with_context(|| format!("node listener on {addr}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (s, b) = (stop.clone(), bytes.clone());
        let thread = thread::Builder::new()
            .name("l4-node".into())
            .spawn(move || serve(listener, mode, s, b))?;
        Ok(NodeServer {
            stop,
            bytes,
            thread: Some(thread),
        })
    }

    /// Bytes read from all connections so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn serve(listener: TcpListener, mode: Mode, stop: Arc<AtomicBool>, bytes: Arc<AtomicU64>) {
    let Ok(rt) = runtime() else { return };
    rt.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        while !stop.load(Ordering::Relaxed) {
            let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
            let Ok(Ok((mut conn, _))) = accepted else {
                continue;
            };
            let _ = conn.set_nodelay(true);
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    if matches!(mode, Mode::Echo) && conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    // Dropping the runtime drops every connection task: the sockets close.
}

/// Clients driving load until dropped: `count` is round trips (ping-pong) or bytes written
/// (streams).
pub struct Clients {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Clients {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until a connection from `ns` to `target` succeeds (the peer is up and forwards).
pub fn wait_ready(ns: &NetNs, target: SocketAddr, within: Duration) -> Result<()> {
    netns::run_in(ns, move || -> Result<()> {
        let start = Instant::now();
        loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > within => {
                    bail!("no connection to {target} within {within:?}: {e}")
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    })?
}

fn connect_all(ns: &NetNs, target: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let conns = netns::run_in(ns, move || -> io::Result<Vec<TcpStream>> {
        (0..n)
            .map(|_| {
                let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect()
    })?
    .with_context(|| format!("opening {n} connections to {target}"))?;
    Ok(conns)
}

/// `conns` connections from `ns` to `target`, each sending `size` bytes and waiting for
/// them to come back, again and again.
pub fn ping_pong(ns: &NetNs, target: SocketAddr, conns: usize, size: usize) -> Result<Clients> {
    drive(
        connect_all(ns, target, conns)?,
        move |mut s, count| async move {
            let msg = vec![0x5a_u8; size];
            let mut back = vec![0u8; size];
            loop {
                if s.write_all(&msg).await.is_err() || s.read_exact(&mut back).await.is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        },
    )
}

/// `conns` connections from `ns` to `target`, each writing `chunk`-byte buffers as fast
/// as they are taken.
pub fn stream(ns: &NetNs, target: SocketAddr, conns: usize, chunk: usize) -> Result<Clients> {
    drive(
        connect_all(ns, target, conns)?,
        move |mut s, count| async move {
            let buf = vec![0xa5_u8; chunk];
            while s.write_all(&buf).await.is_ok() {
                count.fetch_add(chunk as u64, Ordering::Relaxed);
            }
        },
    )
}

fn drive<F, Fut>(conns: Vec<TcpStream>, task: F) -> Result<Clients>
where
    F: Fn(tokio::net::TcpStream, Arc<AtomicU64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (st, c) = (stop.clone(), count.clone());
    let thread = thread::Builder::new()
        .name("l4-clients".into())
        .spawn(move || {
            let Ok(rt) = runtime() else { return };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                for s in conns {
                    let Ok(s) = tokio::net::TcpStream::from_std(s) else {
                        continue;
                    };
                    tokio::task::spawn_local(task(s, c.clone()));
                }
                while !st.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            // Dropping the LocalSet and runtime cancels the tasks and closes the sockets.
        })?;
    Ok(Clients {
        stop,
        count,
        thread: Some(thread),
    })
}
