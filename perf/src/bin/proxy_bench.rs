//! `cargo xtask bench proxy`: the terminator (TLS + WebSocket relay) in both io modes, side by
//! side in one run.
//!
//! Layout. The bench process is the load generator: TLS WebSocket clients and a fast
//! WebSocket echo node (hand-written, tokio, one thread), pinned to `--client-cpu`. Each
//! proxy under test is a child process (this binary, hidden `serve` subcommand) with one
//! terminator worker, pinned to `--proxy-cpu`. So the proxy's RSS and CPU time are its own
//! (read from `/proc/<pid>/status` and `/proc/<pid>/stat`), and the two sides never share a
//! core. The echo node's 101 and echoes cost the load generator, not the proxy.
//!
//! Cases (both modes each):
//! - `tls_handshakes_per_s`: full connections per second, each one a TCP connect, a full
//!   TLS 1.3 handshake (ECDSA P-256 certificate, X25519 like the HAProxy anchor's OpenSSL
//!   client, no resumption: the client keeps no sessions), the WebSocket upgrade (the proxy
//!   connects to the node and checks its 101), one message echoed, and a close (WebSocket
//!   close both ways, then TLS/TCP close). `--concurrency` cycles run at once. The client
//!   pins the certificate (byte comparison) instead of a webpki path check but still
//!   verifies the handshake signature.
//! - `ws_messages_per_s`: `--ws-conns` established connections, each sending a small
//!   JSON-RPC text frame and waiting for its echo (ping-pong), for `--seconds` or
//!   `--max-messages` in total, whichever comes first.
//! - `idle_conn_bytes`: a fresh proxy process; `--warm-conns` connections are opened and
//!   kept (pools and tables grow), then the baseline RSS is read; then `--idle-conns` more
//!   are opened (handshake, upgrade, one echo each) and left idle; after a settle time the
//!   RSS is read again. Reported: (RSS after - baseline) / idle-conns. The proxy child also
//!   counts its live heap blocks by exact allocation size (a counting allocator, on in this
//!   case only), printed as what dominates per connection. Every 50th idle connection echoes
//!   once more at the end to prove the connections are all alive and proxied. Kernel socket
//!   buffers are not in RSS (nor in HAProxy's anchor figure).
//!
//! `tls_handshakes_per_s` and `ws_messages_per_s` run `--rounds` times, modes interleaved,
//! the median is reported together with the proxy's CPU use while measuring (when the proxy
//! is below ~95%, the load generator was the limit).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use proxy::{
    handshake::{accept_key, Limits},
    maglev::{MaglevRing, RingMember},
    terminator::{
        handler::ListenerCtx,
        io::IoMode,
        server::{ConnLimits, ListenerSpec, Terminator},
        tls::{CertSource, SniResolver, TlsAcceptor},
        upstream::{Upstream, UpstreamSet, UpstreamTable},
    },
};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        Resumption,
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

const SERVER_NAME: &str = "eu.example.test";
const MESSAGE: &[u8] =
    br#"{"id":1,"method":"call","params":["database","get_dynamic_global_properties",[]]}"#;
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// HAProxy 2.6 anchors measured on this kind of machine (TOOLCHAIN.md).
const HAPROXY_HANDSHAKES: f64 = 1600.0;
const HAPROXY_IDLE_BYTES: f64 = 16.0 * 1024.0;

#[derive(Parser, Debug)]
#[command(about = "Terminator benchmark: io_uring vs epoll, TLS + WebSocket")]
struct Args {
    #[command(subcommand)]
    serve: Option<Role>,
    /// Where to write the JSON results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/proxy.json"))]
    out: PathBuf,
    /// Length of one measurement window (handshakes, messages).
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Measurement windows per case and mode (modes interleaved; the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connection cycles in flight at once in the handshake case.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Established connections in the message case.
    #[arg(long, default_value_t = 50)]
    ws_conns: usize,
    /// Upper bound on messages per window (all connections together).
    #[arg(long, default_value_t = 5_000_000)]
    max_messages: u64,
    /// Idle connections measured in the memory case.
    #[arg(long, default_value_t = 4000)]
    idle_conns: usize,
    /// Connections opened and kept before the memory baseline.
    #[arg(long, default_value_t = 100)]
    warm_conns: usize,
    /// CPU for the proxy under test.
    #[arg(long, default_value_t = 0)]
    proxy_cpu: usize,
    /// CPU for the load generator (clients and echo node).
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Key exchange offered by the clients: `x25519` (like the HAProxy anchor's OpenSSL
    /// 3.0 client) or `default` (rustls' list, X25519MLKEM768 first, like current browsers).
    #[arg(long, default_value = "x25519", value_parser = ["x25519", "default"])]
    kx: String,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Internal: run one proxy under test (started by the bench itself).
    #[command(hide = true)]
    Serve {
        #[arg(long, value_parser = ["uring", "epoll"])]
        mode: String,
        #[arg(long)]
        node: SocketAddr,
        /// certbot-style directory holding fullchain.pem and privkey.pem.
        #[arg(long)]
        cert_dir: PathBuf,
        #[arg(long)]
        cpu: Option<usize>,
        /// Count live heap bytes by size class.
        #[arg(long)]
        count_heap: bool,
    },
}

// ---------------------------------------------------------------------------------------
// Heap accounting (proxy child only, `--count-heap`): live blocks per exact allocation
// size, in a fixed lock-free table (no allocation inside the allocator).

const SLOTS: usize = 4096;

struct CountingAlloc;

static COUNT_HEAP: AtomicBool = AtomicBool::new(false);
/// Allocation size owning each slot (0: free).
static SLOT_SIZE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Live blocks of that size.
static SLOT_BLOCKS: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];
/// Live bytes of sizes that found no slot (table full).
static OTHER_BYTES: AtomicI64 = AtomicI64::new(0);

fn slot_of(size: usize) -> Option<usize> {
    let mut i = (size as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as usize >> 20 & (SLOTS - 1);
    for _ in 0..64 {
        match SLOT_SIZE[i].load(Ordering::Relaxed) {
            k if k == size => return Some(i),
            0 => {
                match SLOT_SIZE[i].compare_exchange(0, size, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Some(i),
                    Err(k) if k == size => return Some(i),
                    Err(_) => {}
                }
            }
            _ => {}
        }
        i = (i + 1) & (SLOTS - 1);
    }
    None
}

fn account(size: usize, sign: i64) {
    if size == 0 || !COUNT_HEAP.load(Ordering::Relaxed) {
        return;
    }
    match slot_of(size) {
        Some(i) => {
            SLOT_BLOCKS[i].fetch_add(sign, Ordering::Relaxed);
        }
        None => {
            OTHER_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts on the side.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        account(layout.size(), -1);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(layout.size(), -1);
            account(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Live blocks per allocation size; size 0 holds the bytes of sizes not tracked.
type HeapSizes = HashMap<usize, i64>;

fn heap_snapshot() -> HeapSizes {
    let mut m: HeapSizes = (0..SLOTS)
        .filter_map(|i| {
            let size = SLOT_SIZE[i].load(Ordering::Relaxed);
            let blocks = SLOT_BLOCKS[i].load(Ordering::Relaxed);
            (size != 0 && blocks != 0).then_some((size, blocks))
        })
        .collect();
    m.insert(0, OTHER_BYTES.load(Ordering::Relaxed));
    m
}

fn heap_bytes(m: &HeapSizes) -> i64 {
    m.iter()
        .map(|(&size, &n)| if size == 0 { n } else { size as i64 * n })
        .sum()
}

// ---------------------------------------------------------------------------------------
// Process plumbing.

fn pin_to_cpu(cpu: usize) -> Result<()> {
    Ok(proxy_tests::cpu::pin_to_cpu(cpu)?)
}

fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// user + system CPU time of a process (all threads), in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

fn mode_name(m: IoMode) -> &'static str {
    match m {
        IoMode::Uring => "uring",
        IoMode::Epoll => "epoll",
    }
}

/// A proxy under test in its own process.
struct ProxyProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

struct ProxyStats {
    active: usize,
    heap: HeapSizes,
}

impl ProxyProc {
    fn start(
        mode: IoMode,
        node: SocketAddr,
        cert_dir: &Path,
        cpu: Option<usize>,
        count_heap: bool,
    ) -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve")
            .args(["--mode", mode_name(mode)])
            .args(["--node", &node.to_string()])
            .arg("--cert-dir")
            .arg(cert_dir);
        if let Some(c) = cpu {
            cmd.args(["--cpu", &c.to_string()]);
        }
        if count_heap {
            cmd.arg("--count-heap");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the proxy child")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let port: u16 = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("proxy child did not start: {line:?}"))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stats(&mut self) -> Result<ProxyStats> {
        let stdin = self.stdin.as_mut().context("child stdin closed")?;
        stdin.write_all(b"stats\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let mut it = line.split_whitespace();
        ensure!(it.next() == Some("STATS"), "bad stats line {line:?}");
        let active: usize = it.next().context("no active")?.parse()?;
        let heap = it
            .map(|kv| {
                let (size, n) = kv.split_once(':').context("bad heap entry")?;
                Ok((size.parse()?, n.parse()?))
            })
            .collect::<Result<HeapSizes>>()?;
        Ok(ProxyStats { active, heap })
    }

    fn stop(mut self) -> Result<()> {
        drop(self.stdin.take()); // EOF: the child shuts the terminator down and exits
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait()? {
                ensure!(st.success(), "proxy child exited with {st}");
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("proxy child did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `serve` role: one terminator worker until stdin closes.
fn serve(
    mode: &str,
    node: SocketAddr,
    cert_dir: PathBuf,
    cpu: Option<usize>,
    count_heap: bool,
) -> Result<()> {
    if count_heap {
        COUNT_HEAP.store(true, Ordering::SeqCst);
    }
    if let Some(c) = cpu {
        pin_to_cpu(c)?;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mode = if mode == "uring" {
        IoMode::Uring
    } else {
        IoMode::Epoll
    };
    let resolver = SniResolver::load(
        &[CertSource {
            server_name: SERVER_NAME.into(),
            dir: cert_dir,
        }],
        None,
    )?;
    let mut ring = MaglevRing::new(1009).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    ring.rebuild(&[RingMember {
        id: 0,
        name: "node".into(),
        weight: 1,
    }])
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let upstreams = UpstreamTable::new(UpstreamSet {
        ring,
        backends: [(
            0,
            Upstream {
                id: 0,
                name: "node".into(),
                addr: node,
            },
        )]
        .into_iter()
        .collect(),
    });
    let ctx = Arc::new(ListenerCtx {
        name: "bench".into(),
        observe: Default::default(),
        limits: Limits::default(),
        upstreams,
        handshake_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3600),
    });
    let spec = ListenerSpec {
        addr: "127.0.0.1:0".parse()?,
        ctx,
        tls: Some(TlsAcceptor::new(resolver)),
    };
    let t = Terminator::start(
        mode,
        1,
        vec![spec],
        ConnLimits::new(1_000_000, 1_000_000),
        Duration::from_millis(100),
    )?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", t.local_addrs[0].port())?;
    out.flush()?;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim() == "stats" {
            let mut s = format!("STATS {}", t.limits.active());
            for (size, n) in heap_snapshot() {
                s.push_str(&format!(" {size}:{n}"));
            }
            writeln!(out, "{s}")?;
            out.flush()?;
        }
    }
    t.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The load generator: a WebSocket echo node and TLS WebSocket clients.

/// Reads until `buf` holds a complete HTTP head; returns its length.
async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<usize> {
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(p + 4);
        }
        ensure!(buf.len() < 16 * 1024, "head too large");
        buf.reserve(2048);
        if s.read_buf(buf).await? == 0 {
            bail!("eof before the end of the head");
        }
    }
}

/// A complete WebSocket frame at the start of a buffer.
struct Frame {
    /// FIN bit and opcode (the first byte).
    fin_op: u8,
    payload: std::ops::Range<usize>,
    /// Length of the whole frame.
    total: usize,
    mask: Option<[u8; 4]>,
}

/// The frame at the start of `buf`, if it is complete.
fn parse_frame(buf: &[u8]) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < at + 4 {
            return None;
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < at + len {
        return None;
    }
    Some(Frame {
        fin_op: buf[0],
        payload: at..at + len,
        total: at + len,
        mask,
    })
}

fn put_frame(out: &mut Vec<u8>, fin_op: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(fin_op);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// One node connection: the RFC 6455 handshake, then every data frame echoed unmasked; a
/// close frame is answered and the connection closed.
async fn node_conn(mut s: TcpStream) -> Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let head_len = read_head(&mut s, &mut buf).await?;
    let head = std::str::from_utf8(&buf[..head_len])?;
    let key = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .context("no key")?;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    s.write_all(answer.as_bytes()).await?;
    buf.drain(..head_len);
    let mut out = Vec::with_capacity(1024);
    loop {
        while let Some(Frame {
            fin_op,
            payload: range,
            total,
            mask,
        }) = parse_frame(&buf)
        {
            let mut payload = buf[range].to_vec();
            if let Some(k) = mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= k[i % 4];
                }
            }
            buf.drain(..total);
            match fin_op & 0x0f {
                0x8 => {
                    put_frame(&mut out, 0x88, &payload, None);
                    s.write_all(&out).await?;
                    s.shutdown().await?;
                    return Ok(());
                }
                0x9 => put_frame(&mut out, 0x8a, &payload, None),
                0xa => {}
                _ => put_frame(&mut out, fin_op, &payload, None),
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        buf.reserve(4096);
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// The echo node on its own thread (same CPU as the clients), so it keeps answering while
/// the bench's main thread does something else (e.g. waits for a proxy child to stop,
/// which needs the node to see FINs).
fn echo_node() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("echo-node".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(l) = TcpListener::from_std(l) else {
                    return;
                };
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = node_conn(s).await;
                    });
                }
            })
        })?;
    Ok(addr)
}

/// Accepts exactly the bench certificate (byte comparison) and verifies the handshake
/// signatures with it, like any client.
#[derive(Debug)]
struct PinnedCert {
    der: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_connector(cert_der: CertificateDer<'static>, kx: &str) -> Result<TlsConnector> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if kx == "x25519" {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            der: cert_der,
            provider,
        }))
        .with_no_client_auth();
    // Every connection is a full handshake.
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A client WebSocket over TLS through the proxy.
struct WsClient {
    s: TlsStream<TcpStream>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl WsClient {
    /// TCP connect, TLS handshake, upgrade (101 checked).
    async fn open(proxy: SocketAddr, tls: &TlsConnector) -> Result<Self> {
        let tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME)?.to_owned();
        let mut s = tls.connect(name, tcp).await?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let n = read_head(&mut s, &mut buf).await?;
        ensure!(
            buf.starts_with(b"HTTP/1.1 101"),
            "upgrade refused: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        buf.drain(..n);
        Ok(Self {
            s,
            buf,
            out: Vec::with_capacity(256),
        })
    }

    async fn send(&mut self, fin_op: u8, payload: &[u8]) -> Result<()> {
        self.out.clear();
        put_frame(
            &mut self.out,
            fin_op,
            payload,
            Some([0x37, 0xfa, 0x21, 0x3d]),
        );
        self.s.write_all(&self.out).await?;
        Ok(())
    }

    /// The next frame: (fin+opcode, payload).
    async fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if let Some(Frame {
                fin_op: op,
                payload: range,
                total,
                mask,
            }) = parse_frame(&self.buf)
            {
                ensure!(mask.is_none(), "masked frame from the server");
                let payload = self.buf[range].to_vec();
                self.buf.drain(..total);
                return Ok((op, payload));
            }
            self.buf.reserve(4096);
            if self.s.read_buf(&mut self.buf).await? == 0 {
                bail!("eof");
            }
        }
    }

    /// Sends `MESSAGE`, checks the echo.
    async fn echo(&mut self) -> Result<()> {
        self.send(0x81, MESSAGE).await?;
        let (op, payload) = self.recv().await?;
        ensure!(op == 0x81 && payload == MESSAGE, "wrong echo");
        Ok(())
    }

    /// WebSocket close both ways, then TLS close_notify and EOF.
    async fn close(mut self) -> Result<()> {
        self.send(0x88, &1000u16.to_be_bytes()).await?;
        let (op, _) = self.recv().await?;
        ensure!(op == 0x88, "no close frame back");
        let _ = self.s.shutdown().await;
        let mut rest = Vec::new();
        let _ = self.s.read_to_end(&mut rest).await;
        Ok(())
    }
}

async fn full_cycle(proxy: SocketAddr, tls: &TlsConnector) -> Result<()> {
    let mut c = WsClient::open(proxy, tls).await?;
    c.echo().await?;
    c.close().await
}

struct Window {
    count: u64,
    errors: u64,
    secs: f64,
    /// Proxy CPU time over wall time (1.0 = one core busy).
    proxy_cpu: f64,
    /// The same for the load generator (clients and node).
    client_cpu: f64,
    first_error: Option<String>,
}

impl Window {
    fn rate(&self) -> f64 {
        self.count as f64 / self.secs
    }
}

/// Connection cycles with `concurrency` in flight for `secs`.
async fn handshake_window(
    proxy: &ProxyProc,
    tls: &TlsConnector,
    concurrency: usize,
    secs: f64,
) -> Result<Window> {
    let addr = proxy.addr;
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(proxy.pid())?;
    let own0 = cpu_seconds(std::process::id())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (tls, count, errors) = (tls.clone(), count.clone(), errors.clone());
        tasks.spawn(async move {
            let mut first_error = None;
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(5), full_cycle(addr, &tls)).await {
                    Ok(Ok(())) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if first_error.is_none() {
                            first_error = Some(match other {
                                Ok(Err(e)) => format!("{e:#}"),
                                _ => "cycle timed out".to_string(),
                            });
                        }
                    }
                }
            }
            first_error
        });
    }
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        if let Some(e) = r? {
            first_error.get_or_insert(e);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(proxy.pid())? - cpu0;
    let own = cpu_seconds(std::process::id())? - own0;
    Ok(Window {
        count: count.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs,
        proxy_cpu: cpu / secs,
        client_cpu: own / secs,
        first_error,
    })
}

/// Ping-pong on established connections for `secs` or `max` messages in total.
async fn message_window(
    proxy: &ProxyProc,
    conns: Vec<WsClient>,
    secs: f64,
    max: u64,
) -> Result<(Window, Vec<WsClient>)> {
    let count = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(proxy.pid())?;
    let own0 = cpu_seconds(std::process::id())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let per_conn = max.div_ceil(conns.len().max(1) as u64);
    let mut tasks = JoinSet::new();
    for mut c in conns {
        let count = count.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while n < per_conn && Instant::now() < deadline {
                c.echo().await?;
                n += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(c)
        });
    }
    let mut back = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(c) => back.push(c),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(proxy.pid())? - cpu0;
    let own = cpu_seconds(std::process::id())? - own0;
    Ok((
        Window {
            count: count.load(Ordering::Relaxed),
            errors,
            secs,
            proxy_cpu: cpu / secs,
            client_cpu: own / secs,
            first_error,
        },
        back,
    ))
}

/// Opens `n` connections (handshake, upgrade, one echo each), `parallel` at a time.
async fn open_many(
    proxy: SocketAddr,
    tls: &TlsConnector,
    n: usize,
    parallel: usize,
) -> Result<Vec<WsClient>> {
    let mut out = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && tasks.len() < parallel {
            let tls = tls.clone();
            tasks.spawn(async move {
                let mut c = WsClient::open(proxy, &tls).await?;
                c.echo().await?;
                anyhow::Ok(c)
            });
            started += 1;
        }
        let c = tasks.join_next().await.context("no task")??;
        out.push(c.context("opening an idle connection")?);
    }
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Throughput {
    rate: f64,
    proxy_cpu: f64,
}

fn summarize(windows: &[Window], what: &str, mode: IoMode) -> Result<Throughput> {
    for w in windows {
        ensure!(
            w.errors * 100 <= w.count,
            "{} {what}: {} errors for {} successes (first: {})",
            mode_name(mode),
            w.errors,
            w.count,
            w.first_error.as_deref().unwrap_or("-")
        );
        if let Some(e) = &w.first_error {
            eprintln!(
                "warning: {} {what}: {} errors, first: {e}",
                mode_name(mode),
                w.errors
            );
        }
    }
    let mut rates: Vec<f64> = windows.iter().map(Window::rate).collect();
    let mut cpus: Vec<f64> = windows.iter().map(|w| w.proxy_cpu).collect();
    Ok(Throughput {
        rate: median(&mut rates),
        proxy_cpu: median(&mut cpus),
    })
}

struct IdleResult {
    rss_bytes_per_conn: f64,
    heap_bytes_per_conn: f64,
    rss_before: u64,
    rss_after: u64,
    /// Allocation sizes by live bytes added per connection: (size, bytes, blocks),
    /// largest first.
    top_sizes: Vec<(usize, f64, f64)>,
}

async fn idle_case(
    mode: IoMode,
    args: &Args,
    node: SocketAddr,
    cert_dir: &Path,
    tls: &TlsConnector,
    proxy_cpu: Option<usize>,
) -> Result<IdleResult> {
    let mut proxy = ProxyProc::start(mode, node, cert_dir, proxy_cpu, true)?;
    let warm = open_many(proxy.addr, tls, args.warm_conns, 32).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.stats()?;
    let rss_before = rss_bytes(proxy.pid())?;
    ensure!(
        before.active == args.warm_conns,
        "warm connections not live"
    );
    let mut idle = open_many(proxy.addr, tls, args.idle_conns, 64).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_after = rss_bytes(proxy.pid())?;
    let after = proxy.stats()?;
    ensure!(
        after.active == args.warm_conns + args.idle_conns,
        "{} connections live on the proxy, expected {}",
        after.active,
        args.warm_conns + args.idle_conns
    );
    // Alive and proxied: a sample echoes once more.
    for c in idle.iter_mut().step_by(50) {
        c.echo().await.context("an idle connection died")?;
    }
    let n = args.idle_conns as f64;
    let mut top: Vec<(usize, f64, f64)> = after
        .heap
        .iter()
        .filter(|(&size, _)| size != 0)
        .map(|(&size, &blocks)| {
            let dn = (blocks - before.heap.get(&size).copied().unwrap_or(0)) as f64 / n;
            (size, dn * size as f64, dn)
        })
        .filter(|(_, db, _)| *db >= 8.0)
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let heap_delta = heap_bytes(&after.heap) - heap_bytes(&before.heap);
    drop(idle);
    drop(warm);
    proxy.stop()?;
    Ok(IdleResult {
        rss_bytes_per_conn: (rss_after as f64 - rss_before as f64) / n,
        heap_bytes_per_conn: heap_delta as f64 / n,
        rss_before,
        rss_after,
        top_sizes: top,
    })
}

#[derive(Serialize)]
struct Case {
    name: String,
    value: f64,
    unit: &'static str,
}

#[derive(Serialize)]
struct Results {
    scenario: &'static str,
    cases: Vec<Case>,
}

fn write_cert(dir: &Path) -> Result<(PathBuf, CertificateDer<'static>)> {
    // rcgen's default key: ECDSA P-256 with SHA-256.
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let live = dir.join("live").join(SERVER_NAME);
    std::fs::create_dir_all(&live)?;
    std::fs::write(live.join("fullchain.pem"), ck.cert.pem())?;
    std::fs::write(live.join("privkey.pem"), ck.key_pair.serialize_pem())?;
    Ok((live, ck.cert.der().clone()))
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Role::Serve {
        mode,
        node,
        cert_dir,
        cpu,
        count_heap,
    }) = args.serve
    {
        return serve(&mode, node, cert_dir, cpu, count_heap);
    }
    ensure!(args.rounds > 0 && args.seconds > 0.0, "nothing to measure");
    ensure!(args.ws_conns > 0 && args.concurrency > 0 && args.idle_conns > 0);
    // This process holds a client socket and the node's socket per connection.
    let need = 2 * (args.idle_conns + args.warm_conns) as u64 + 256;
    ensure!(
        need <= nofile_limit(),
        "--idle-conns {} needs about {need} open files here; the limit is {}",
        args.idle_conns,
        nofile_limit()
    );
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let (proxy_cpu, client_cpu) = if online_cpus() >= 2 {
        ensure!(args.proxy_cpu != args.client_cpu, "use two different CPUs");
        (Some(args.proxy_cpu), Some(args.client_cpu))
    } else {
        eprintln!("warning: one CPU only; proxy and load generator share it");
        (None, None)
    };
    if let Some(c) = client_cpu {
        pin_to_cpu(c)?;
    }
    let tmp = TempDir(std::env::temp_dir().join(format!("proxy-bench-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0)?;
    let (cert_dir, cert_der) = write_cert(&tmp.0)?;
    let tls = tls_connector(cert_der, &args.kx)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let node = echo_node()?;
    let modes = [IoMode::Uring, IoMode::Epoll];

    println!(
        "proxy bench: 1 terminator worker on CPU {}, load generator on CPU {}; {} x {:.1} s windows per case, kx {}",
        proxy_cpu.map_or("-".into(), |c| c.to_string()),
        client_cpu.map_or("-".into(), |c| c.to_string()),
        args.rounds,
        args.seconds,
        args.kx
    );
    let mut procs = Vec::new();
    for m in modes {
        procs.push(ProxyProc::start(m, node, &cert_dir, proxy_cpu, false)?);
    }
    let mut hs: Vec<Vec<Window>> = vec![Vec::new(), Vec::new()];
    let mut msg: Vec<Vec<Window>> = vec![Vec::new(), Vec::new()];
    rt.block_on(async {
        // Warm-up: code paths, allocator, the node.
        for p in &procs {
            handshake_window(p, &tls, args.concurrency, 0.5).await?;
        }
        for _ in 0..args.rounds {
            for (i, p) in procs.iter().enumerate() {
                let w = handshake_window(p, &tls, args.concurrency, args.seconds).await?;
                eprintln!(
                    "  {} connections: {:.0}/s (CPU: proxy {:.0}%, load generator {:.0}%)",
                    mode_name(modes[i]),
                    w.rate(),
                    w.proxy_cpu * 100.0,
                    w.client_cpu * 100.0
                );
                hs[i].push(w);
            }
        }
        let mut conns = Vec::new();
        for p in &procs {
            conns.push(open_many(p.addr, &tls, args.ws_conns, 16).await?);
        }
        for _ in 0..args.rounds {
            for (i, p) in procs.iter().enumerate() {
                let c = std::mem::take(&mut conns[i]);
                let (w, back) = message_window(p, c, args.seconds, args.max_messages).await?;
                eprintln!(
                    "  {} messages: {:.0}/s (CPU: proxy {:.0}%, load generator {:.0}%)",
                    mode_name(modes[i]),
                    w.rate(),
                    w.proxy_cpu * 100.0,
                    w.client_cpu * 100.0
                );
                conns[i] = back;
                msg[i].push(w);
            }
        }
        for c in conns.into_iter().flatten() {
            let _ = c.close().await;
        }
        anyhow::Ok(())
    })?;
    for p in procs {
        p.stop()?;
    }
    let mut idle = Vec::new();
    for m in modes {
        let r = rt.block_on(idle_case(m, &args, node, &cert_dir, &tls, proxy_cpu))?;
        eprintln!(
            "  {} idle: {:.0} B/conn RSS ({} -> {} kB), {:.0} B/conn heap",
            mode_name(m),
            r.rss_bytes_per_conn,
            r.rss_before / 1024,
            r.rss_after / 1024,
            r.heap_bytes_per_conn
        );
        idle.push(r);
    }

    let hs_sum: Vec<Throughput> = modes
        .iter()
        .zip(&hs)
        .map(|(m, w)| summarize(w, "connections", *m))
        .collect::<Result<_>>()?;
    let msg_sum: Vec<Throughput> = modes
        .iter()
        .zip(&msg)
        .map(|(m, w)| summarize(w, "messages", *m))
        .collect::<Result<_>>()?;

    println!();
    println!(
        "{:<42} {:>12} {:>12}   HAProxy 2.6 anchor",
        "case (median)", "io_uring", "epoll"
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}   ~{HAPROXY_HANDSHAKES:.0}/s (client-bound)",
        "full TLS 1.3 connections/s (hs+101+echo)", hs_sum[0].rate, hs_sum[1].rate
    );
    println!(
        "{:<42} {:>11.0}% {:>11.0}%   66%",
        "  proxy CPU while measuring",
        hs_sum[0].proxy_cpu * 100.0,
        hs_sum[1].proxy_cpu * 100.0
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}",
        "  per proxy CPU-second",
        hs_sum[0].rate / hs_sum[0].proxy_cpu.max(1e-9),
        hs_sum[1].rate / hs_sum[1].proxy_cpu.max(1e-9)
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}   (52,600 keep-alive HTTPS req/s)",
        format!("ws messages/s ({} conns, ping-pong)", args.ws_conns),
        msg_sum[0].rate,
        msg_sum[1].rate
    );
    println!(
        "{:<42} {:>11.0}% {:>11.0}%",
        "  proxy CPU while measuring",
        msg_sum[0].proxy_cpu * 100.0,
        msg_sum[1].proxy_cpu * 100.0
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}   {HAPROXY_IDLE_BYTES:.0}",
        format!("RSS bytes per idle TLS ws conn ({})", args.idle_conns),
        idle[0].rss_bytes_per_conn,
        idle[1].rss_bytes_per_conn
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}",
        "  of which live heap (counted)", idle[0].heap_bytes_per_conn, idle[1].heap_bytes_per_conn
    );
    for (m, r) in modes.iter().zip(&idle) {
        println!(
            "\n{} heap added per idle connection, by exact allocation size:",
            mode_name(*m)
        );
        for (size, bytes, blocks) in r.top_sizes.iter().take(12) {
            println!("  {size:>7} B x {blocks:>4.2} = {bytes:>6.0} B");
        }
    }

    let mut cases = Vec::new();
    for (i, m) in modes.iter().enumerate() {
        let p = mode_name(*m);
        cases.push(Case {
            name: format!("{p}_tls_handshakes_per_s"),
            value: hs_sum[i].rate.round(),
            unit: "1/s",
        });
    }
    for (i, m) in modes.iter().enumerate() {
        cases.push(Case {
            name: format!("{}_ws_messages_per_s", mode_name(*m)),
            value: msg_sum[i].rate.round(),
            unit: "1/s",
        });
    }
    for (i, m) in modes.iter().enumerate() {
        cases.push(Case {
            name: format!("{}_idle_conn_bytes", mode_name(*m)),
            value: idle[i].rss_bytes_per_conn.round(),
            unit: "B",
        });
    }
    // Context for the figures above: how busy the proxy was, and its counted heap.
    for (i, m) in modes.iter().enumerate() {
        let p = mode_name(*m);
        cases.push(Case {
            name: format!("{p}_tls_handshakes_proxy_cpu"),
            value: (hs_sum[i].proxy_cpu * 1000.0).round() / 10.0,
            unit: "%",
        });
        cases.push(Case {
            name: format!("{p}_ws_messages_proxy_cpu"),
            value: (msg_sum[i].proxy_cpu * 1000.0).round() / 10.0,
            unit: "%",
        });
        cases.push(Case {
            name: format!("{p}_idle_conn_heap_bytes"),
            value: idle[i].heap_bytes_per_conn.round(),
            unit: "B",
        });
    }
    let results = Results {
        scenario: "proxy",
        cases,
    };
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, format!("{}\n", serde_json::to_string(&results)?))
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("\nwrote {}", args.out.display());
    Ok(())
}
