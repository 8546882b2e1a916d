//! `cargo xtask bench tls-ws` and `cargo xtask bench idle` (the `tls-ws-bench` binary): this
//! proxy in both io modes against HAProxy 2.6 and nginx from Debian, with the same load
//! generator ([`crate::wss_load`]) and the same node behind each, in the same run.
//!
//! Layout. The bench process is the load generator and the node ([`node`]), pinned to
//! `--client-cpu`. Every peer runs in processes of its own, with one worker, pinned to
//! `--proxy-cpu` ([`peers`]), so the peer's CPU time and RSS are its own, read from /proc.
//! For every window the bench records the peer's CPU time and its own (load generator and
//! node), so each figure says which side was the limit.
//!
//! `tls-ws` cases, each in `--rounds` windows, peers interleaved within a round; the
//! median over rounds is reported, latency percentiles from all rounds' samples together:
//! - `cycles`: full connection cycles (TCP, TLS 1.3 full handshake with X25519 and ECDSA
//!   P-256, upgrade, one call, WebSocket close both ways, TLS/TCP close), `--cycle-concurrency`
//!   in flight;
//! - `msgs_<N>`: ping-pong of a small JSON-RPC call on N established connections (`--clients`,
//!   10, 100 and 1,000), round trip latency;
//! - `push_<N>`: the node pushes subscription notices as fast as they are taken to N
//!   subscribed connections; notices relayed per second.
//!
//! `idle`: per peer, a fresh process; `--warm-conns` connections are opened first (pools and
//! tables grow) and the RSS read, then connections are added up to each of `--idle-counts`
//! (1,000 and 9,000: a process here holds at most 20,000 open files, and each proxied
//! connection holds two) and left idle; RSS delta / connections at each count. A sample
//! echoes afterwards to prove they are alive and proxied. This proxy also counts its live
//! heap by allocation size, printed as what an idle connection holds.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand};
use proxy_tests::{certs::TestCert, tempdir::TempDir, terminator::init_crypto};
use rustls::pki_types::CertificateDer;

mod cases;
mod child;
pub mod heap;
mod idle;
mod node;
mod peers;

use peers::{CertFiles, PeerKind};

/// The name the bench certificate is for, and the clients ask for.
const SERVER_NAME: &str = "eu.example.test";

#[derive(Parser, Debug)]
#[command(about = "TLS WebSocket bench: this proxy (epoll, io_uring) vs HAProxy and nginx")]
pub struct Args {
    #[command(subcommand)]
    pub serve: Option<Role>,
    /// `tls-ws` (throughput and latency) or `idle` (memory per idle connection).
    #[arg(long, default_value = "tls-ws", value_parser = ["tls-ws", "idle"])]
    pub scenario: String,
    /// A smaller, faster version (one round, short windows, fewer idle connections).
    #[arg(long)]
    pub quick: bool,
    /// Where `<scenario>.json`, `.md` and the plots go.
    #[arg(long, default_value = crate::bench::results::DEFAULT_DIR)]
    pub out_dir: PathBuf,
    /// Peers, in this order (`epoll`, `uring`, `haproxy`, `nginx`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "epoll,uring,haproxy,nginx"
    )]
    pub peers: Vec<String>,
    /// Length of one measurement window, seconds (quick: 1.5).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Windows per case and peer (quick: 1).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Connection cycles in flight at once.
    #[arg(long, default_value_t = 16)]
    pub cycle_concurrency: usize,
    /// Established connections of the ping-pong cases (the plot draws throughput against them).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub clients: Vec<usize>,
    /// Subscribed connections of the push case.
    #[arg(long, default_value_t = 1000)]
    pub push_clients: usize,
    /// Idle connection counts of the memory case (quick: the first only).
    #[arg(long, value_delimiter = ',', default_value = "1000,9000")]
    pub idle_counts: Vec<usize>,
    /// Connections opened and kept before the memory baseline.
    #[arg(long, default_value_t = 100)]
    pub warm_conns: usize,
    /// CPU for the peer under test.
    #[arg(long, default_value_t = 0)]
    pub proxy_cpu: usize,
    /// CPU for the load generator and the node.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Key exchange offered by the clients: `x25519` or `default` (rustls' list,
    /// X25519MLKEM768 first; the peers here only take X25519).
    #[arg(long, default_value = "x25519", value_parser = ["x25519", "default"])]
    pub kx: String,
}

impl Args {
    fn seconds(&self) -> f64 {
        self.seconds.unwrap_or(if self.quick { 1.5 } else { 5.0 })
    }
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 1 } else { 3 })
    }
    fn idle_counts(&self) -> Vec<usize> {
        let mut v = self.idle_counts.clone();
        v.sort_unstable();
        if self.quick {
            v.truncate(1);
        }
        v
    }
}

#[derive(Subcommand, Debug)]
pub enum Role {
    /// Internal: run this proxy as the peer under test (started by the bench itself).
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

/// What every case needs.
pub struct Setup {
    pub peers: Vec<PeerKind>,
    pub node: SocketAddr,
    pub cert: CertFiles,
    pub cert_der: CertificateDer<'static>,
    pub proxy_cpu: Option<usize>,
    pub _tmp: TempDir,
}

impl Setup {
    /// A client target for a peer listening on `addr`.
    pub fn target(&self, addr: SocketAddr, kx: &str) -> Result<Arc<crate::wss_load::Target>> {
        let url = format!("wss://{SERVER_NAME}:{}/", addr.port());
        Ok(Arc::new(crate::wss_load::Target::new(
            &url,
            Some(addr),
            crate::wss_load::Trust::Pinned(self.cert_der.clone()),
            kx,
        )?))
    }
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
    ensure!(
        args.rounds() > 0 && args.seconds() > 0.0,
        "nothing to measure"
    );
    ensure!(!args.clients.is_empty() && args.clients.iter().all(|&c| c > 0));
    ensure!(args.cycle_concurrency > 0 && args.push_clients > 0);
    let peers: Vec<PeerKind> = args
        .peers
        .iter()
        .map(|p| PeerKind::parse(p))
        .collect::<Result<_>>()?;
    ensure!(!peers.is_empty(), "no peers");
    let need = if args.scenario == "idle" {
        2 * (args.idle_counts().last().copied().unwrap_or(0) + args.warm_conns) as u64
    } else {
        2 * (peers.len() * args.clients.iter().sum::<usize>()) as u64
    } + 256;
    ensure!(
        need <= nofile_limit(),
        "this run needs about {need} open files in the bench process; the limit is {}",
        nofile_limit()
    );
    init_crypto();
    let proxy_cpu = if online_cpus() >= 2 {
        ensure!(args.proxy_cpu != args.client_cpu, "use two different CPUs");
        proxy_tests::cpu::pin_to_cpu(args.client_cpu)
            .with_context(|| format!("pinning the load generator to CPU {}", args.client_cpu))?;
        Some(args.proxy_cpu)
    } else {
        eprintln!("warning: one CPU only; the peers and the load generator share it");
        None
    };
    let tmp = TempDir::new("tls-ws-bench")?;
    let tmp_path = tmp.path().to_path_buf();
    let _tmp_cleanup =
        crate::bench::cleanup::on_exit(format!("directory {}", tmp_path.display()), move || {
            let _ = std::fs::remove_dir_all(&tmp_path);
        });
    // rcgen's default key: ECDSA P-256 with SHA-256.
    let cert = TestCert::write(&tmp.path().join("live").join(SERVER_NAME), SERVER_NAME)?;
    // After pinning: the node's thread inherits the load generator's CPU.
    let node = node::spawn_bench_node()?;
    let setup = Setup {
        peers,
        node,
        cert: CertFiles {
            dir: cert.dir.clone(),
        },
        cert_der: CertificateDer::from(cert.cert_der),
        proxy_cpu,
        _tmp: tmp,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.scenario == "idle" {
        rt.block_on(idle::run(&args, &setup))
    } else {
        rt.block_on(cases::run(&args, &setup))
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

/// How long the load generator waits between opening connections and measuring.
pub const SETTLE: Duration = Duration::from_millis(300);
