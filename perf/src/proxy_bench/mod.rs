//! `cargo xtask bench proxy` (the `proxy-bench` binary): the terminator (TLS + WebSocket relay) in both io modes, side by
//! side in one run.
//!
//! Layout. The bench process is the load generator: TLS WebSocket clients and a fast
//! WebSocket echo node (the test kit's, tokio, one thread), pinned to `--client-cpu`. Each
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
//!
//! Modules: `child` (the proxy process and its `serve` side), `client` (the TLS WebSocket
//! clients), `load` (throughput windows), `idle` (the memory case), `heap` (the child's
//! counting allocator), `report` (table and JSON).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{ensure, Result};
use clap::{Parser, Subcommand};
use proxy::terminator::io::IoMode;
use proxy_tests::{
    certs::TestCert, echo::spawn_echo_nodes, tempdir::TempDir, terminator::init_crypto,
};
use rustls::pki_types::CertificateDer;

use child::ProxyProc;
use idle::idle_case;
use load::{handshake_window, message_window, open_many, summarize, Throughput, Window};

mod child;
mod client;
pub mod heap;
mod idle;
mod load;
mod report;

/// The name the bench certificate is for, and the clients ask for.
const SERVER_NAME: &str = "eu.example.test";

#[derive(Parser, Debug)]
#[command(about = "Terminator benchmark: io_uring vs epoll, TLS + WebSocket")]
pub struct Args {
    #[command(subcommand)]
    pub serve: Option<Role>,
    /// Where to write the JSON results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/proxy.json"))]
    pub out: PathBuf,
    /// Length of one measurement window (handshakes, messages).
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Measurement windows per case and mode (modes interleaved; the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Connection cycles in flight at once in the handshake case.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Established connections in the message case.
    #[arg(long, default_value_t = 50)]
    pub ws_conns: usize,
    /// Upper bound on messages per window (all connections together).
    #[arg(long, default_value_t = 5_000_000)]
    pub max_messages: u64,
    /// Idle connections measured in the memory case.
    #[arg(long, default_value_t = 4000)]
    pub idle_conns: usize,
    /// Connections opened and kept before the memory baseline.
    #[arg(long, default_value_t = 100)]
    pub warm_conns: usize,
    /// CPU for the proxy under test.
    #[arg(long, default_value_t = 0)]
    pub proxy_cpu: usize,
    /// CPU for the load generator (clients and echo node).
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Key exchange offered by the clients: `x25519` (like the HAProxy anchor's OpenSSL
    /// 3.0 client) or `default` (rustls' list, X25519MLKEM768 first, like current browsers).
    #[arg(long, default_value = "x25519", value_parser = ["x25519", "default"])]
    pub kx: String,
}

#[derive(Subcommand, Debug)]
pub enum Role {
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

/// The bench binary's `main`: the `serve` role in a child, otherwise the whole run.
pub fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Role::Serve {
        mode,
        node,
        cert_dir,
        cpu,
        count_heap,
    }) = args.serve
    {
        return child::serve(&mode, node, cert_dir, cpu, count_heap);
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
    init_crypto();

    let (proxy_cpu, client_cpu) = if online_cpus() >= 2 {
        ensure!(args.proxy_cpu != args.client_cpu, "use two different CPUs");
        (Some(args.proxy_cpu), Some(args.client_cpu))
    } else {
        eprintln!("warning: one CPU only; proxy and load generator share it");
        (None, None)
    };
    if let Some(c) = client_cpu {
        // Before the echo node starts: its thread inherits the CPU.
        proxy_tests::cpu::pin_to_cpu(c)?;
    }
    let tmp = TempDir::new("proxy-bench")?;
    // rcgen's default key: ECDSA P-256 with SHA-256.
    let cert = TestCert::write(&tmp.path().join("live").join(SERVER_NAME), SERVER_NAME)?;
    let cert_dir = cert.dir.clone();
    let tls = client::tls_connector(CertificateDer::from(cert.cert_der), &args.kx)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let node = spawn_echo_nodes(&[None])?[0];
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
                show_window("connections", modes[i], &w);
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
                show_window("messages", modes[i], &w);
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

    report::report(&args, modes, &hs_sum, &msg_sum, &idle)
}

fn show_window(what: &str, mode: IoMode, w: &Window) {
    eprintln!(
        "  {} {what}: {:.0}/s (CPU: proxy {:.0}%, load generator {:.0}%)",
        mode_name(mode),
        w.rate(),
        w.proxy_cpu * 100.0,
        w.client_cpu * 100.0
    );
}

fn mode_name(m: IoMode) -> &'static str {
    match m {
        IoMode::Uring => "uring",
        IoMode::Epoll => "epoll",
    }
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
