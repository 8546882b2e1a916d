//! The peers under test, each in processes of its own pinned to the peer CPU: this proxy
//! in either io mode (a child running this binary's hidden `serve` role, one terminator
//! worker), HAProxy 2.6 and nginx from Debian, configured the same way:
//! - the same ECDSA P-256 certificate, TLS 1.3 only, X25519 only, session cache on
//!   (the clients do not resume, so every connection is a full handshake anyway);
//! - one worker thread/process, pinned to the peer CPU;
//! - the same node behind them, WebSocket tunnelling (the upgrade is passed to the node and
//!   its 101 relayed, then bytes both ways), no access log.
//!
//! CPU time and RSS are summed over a peer's processes. nginx runs without its master
//! process (`master_process off`: the worker's event loop in one process), so it dies with
//! the bench even on SIGKILL (its worker would outlive a killed master); it serves the same
//! way.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use proxy::terminator::io::IoMode;
use proxy_tests::procfs::{cpu_seconds, rss_bytes};

use super::{child::ProxyProc, SERVER_NAME};
use crate::bench::cleanup::die_with_parent;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    Epoll,
    Uring,
    Haproxy,
    Nginx,
}

impl PeerKind {
    /// The `peer` of the results.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Epoll => "xdp-proxy",
            PeerKind::Uring => "xdp-proxy-uring",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Nginx => "nginx",
        }
    }

    /// A name for people.
    pub fn label(self) -> &'static str {
        match self {
            PeerKind::Epoll => "this proxy (epoll)",
            PeerKind::Uring => "this proxy (io_uring)",
            PeerKind::Haproxy => "HAProxy 2.6",
            PeerKind::Nginx => "nginx 1.22",
        }
    }

    pub fn parse(s: &str) -> Result<PeerKind> {
        Ok(match s {
            "epoll" | "xdp-proxy" => PeerKind::Epoll,
            "uring" | "xdp-proxy-uring" => PeerKind::Uring,
            "haproxy" => PeerKind::Haproxy,
            "nginx" => PeerKind::Nginx,
            other => bail!("unknown peer `{other}` (epoll, uring, haproxy, nginx)"),
        })
    }

    pub fn is_ours(self) -> bool {
        matches!(self, PeerKind::Epoll | PeerKind::Uring)
    }
}

/// Where the bench's certificate is.
pub struct CertFiles {
    /// certbot layout: `fullchain.pem` and `privkey.pem`.
    pub dir: PathBuf,
}

impl CertFiles {
    fn fullchain(&self) -> PathBuf {
        self.dir.join("fullchain.pem")
    }
    fn privkey(&self) -> PathBuf {
        self.dir.join("privkey.pem")
    }
    /// HAProxy's `crt` wants certificate and key in one file.
    fn combined(&self) -> Result<PathBuf> {
        let path = self.dir.join("combined.pem");
        let mut pem = std::fs::read(self.fullchain())?;
        pem.extend(std::fs::read(self.privkey())?);
        std::fs::write(&path, pem)?;
        Ok(path)
    }
}

enum Procs {
    Ours(ProxyProc),
    External {
        child: Child,
        what: &'static str,
        /// Kills and reaps it on Ctrl-C (disarmed by a normal stop).
        reaper: crate::bench::cleanup::CleanupGuard,
    },
}

/// A running peer.
pub struct Peer {
    pub kind: PeerKind,
    pub addr: SocketAddr,
    procs: Procs,
    _dir: proxy_tests::tempdir::TempDir,
    /// Removes the directory on Ctrl-C too (the TempDir only on drop).
    _dir_cleanup: crate::bench::cleanup::CleanupGuard,
}

impl Peer {
    /// Starts `kind` in front of `node`, pinned to `cpu`, and waits until it accepts.
    /// `count_heap`: this proxy only, count its live heap by size (the idle case).
    pub fn start(
        kind: PeerKind,
        node: SocketAddr,
        cert: &CertFiles,
        cpu: Option<usize>,
        count_heap: bool,
    ) -> Result<Peer> {
        let dir = proxy_tests::tempdir::TempDir::new(kind.name())?;
        let path = dir.path().to_path_buf();
        let dir_cleanup = crate::bench::cleanup::on_exit(
            format!("{} directory {}", kind.label(), path.display()),
            move || {
                let _ = std::fs::remove_dir_all(&path);
            },
        );
        let (procs, addr) = match kind {
            PeerKind::Epoll | PeerKind::Uring => {
                let mode = if kind == PeerKind::Uring {
                    IoMode::Uring
                } else {
                    IoMode::Epoll
                };
                let p = ProxyProc::start(mode, node, &cert.dir, cpu, count_heap)?;
                let addr = p.addr;
                (Procs::Ours(p), addr)
            }
            PeerKind::Haproxy => {
                let port = free_port()?;
                let cfg = dir.path().join("haproxy.cfg");
                std::fs::write(&cfg, haproxy_config(port, node, &cert.combined()?, cpu))?;
                let mut cmd = Command::new("haproxy");
                cmd.arg("-db").arg("-f").arg(&cfg);
                (external(cmd, "haproxy", dir.path(), cpu)?, local(port))
            }
            PeerKind::Nginx => {
                let port = free_port()?;
                let cfg = dir.path().join("nginx.conf");
                std::fs::write(&cfg, nginx_config(port, node, cert, dir.path(), cpu))?;
                let mut cmd = Command::new("nginx");
                cmd.arg("-p").arg(dir.path()).arg("-c").arg(&cfg);
                (external(cmd, "nginx", dir.path(), cpu)?, local(port))
            }
        };
        let mut peer = Peer {
            kind,
            addr,
            procs,
            _dir: dir,
            _dir_cleanup: dir_cleanup,
        };
        peer.wait_listening()?;
        Ok(peer)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Procs::External { child, what, .. } = &mut self.procs {
                if let Some(st) = child.try_wait()? {
                    bail!(
                        "{what} exited with {st} before listening; its log: {}",
                        self._dir.path().join("stderr.log").display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} does not accept on {} after 10 s",
                    self.kind.label(),
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The peer's processes: the main one and its children (nginx's worker).
    pub fn pids(&self) -> Vec<u32> {
        let main = match &self.procs {
            Procs::Ours(p) => p.pid(),
            Procs::External { child, .. } => child.id(),
        };
        let mut pids = vec![main];
        let mut i = 0;
        while i < pids.len() {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pids[i]))
                .unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
            i += 1;
        }
        pids
    }

    /// CPU seconds used so far by all its processes.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let mut sum = 0.0;
        for p in self.pids() {
            sum += cpu_seconds(p).with_context(|| format!("{} pid {p}", self.kind.label()))?;
        }
        Ok(sum)
    }

    /// RSS of all its processes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let mut sum = 0;
        for p in self.pids() {
            sum += rss_bytes(p)?;
        }
        Ok(sum)
    }

    /// This proxy's own handle (live connections, heap by size), if this is this proxy.
    pub fn ours(&mut self) -> Option<&mut ProxyProc> {
        match &mut self.procs {
            Procs::Ours(p) => Some(p),
            Procs::External { .. } => None,
        }
    }

    pub fn stop(self) -> Result<()> {
        match self.procs {
            Procs::Ours(p) => p.stop(),
            Procs::External {
                mut child,
                what,
                reaper,
            } => {
                reaper.disarm();
                // SIGTERM: both stop at once (HAProxy: hard stop; nginx: fast shutdown).
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if child.try_wait()?.is_some() {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("{what} did not stop on SIGTERM within 10 s");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn external(mut cmd: Command, what: &'static str, dir: &Path, cpu: Option<usize>) -> Result<Procs> {
    let log = std::fs::File::create(dir.join("stderr.log"))?;
    die_with_parent(&mut cmd);
    if let Some(cpu) = cpu {
        use std::os::unix::process::CommandExt;
        // SAFETY: sched_setaffinity only touches the child's own state.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {what} (run `cargo xtask setup` to install it)"))?;
    let pid = child.id() as i32;
    let reaper = crate::bench::cleanup::on_exit(format!("{what} (pid {pid})"), move || {
        // SAFETY: kill(2) and waitpid(2) on our own child, which nothing else reaps.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    });
    Ok(Procs::External {
        child,
        what,
        reaper,
    })
}

/// At most 20,000 open files per process here, two per proxied connection.
const MAX_CONNS: u32 = 9_900;
/// nginx counts both sides of a proxied connection against `worker_connections`.
const NGINX_CONNS: u32 = 2 * MAX_CONNS;

fn haproxy_config(port: u16, node: SocketAddr, pem: &Path, cpu: Option<usize>) -> String {
    let cpu_map = cpu.map_or(String::new(), |c| format!("    cpu-map 1/1 {c}\n"));
    format!(
        "global\n\
         \x20   nbthread 1\n\
         {cpu_map}\
         \x20   maxconn {MAX_CONNS}\n\
         \x20   tune.ssl.cachesize 20000\n\
         \x20   ssl-default-bind-options ssl-min-ver TLSv1.3\n\
         \x20   ssl-default-bind-curves X25519\n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 60s\n\
         \x20   timeout server 60s\n\
         \x20   timeout tunnel 1h\n\
         \x20   maxconn {MAX_CONNS}\n\
         frontend wss\n\
         \x20   bind 127.0.0.1:{port} ssl crt {} alpn http/1.1\n\
         \x20   default_backend nodes\n\
         backend nodes\n\
         \x20   server node {node}\n",
        pem.display()
    )
}

fn nginx_config(
    port: u16,
    node: SocketAddr,
    cert: &CertFiles,
    dir: &Path,
    cpu: Option<usize>,
) -> String {
    // worker_cpu_affinity takes a bit mask, CPU 0 rightmost.
    let affinity = cpu.map_or(String::new(), |c| {
        format!("worker_cpu_affinity 1{};\n", "0".repeat(c))
    });
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         {affinity}\
         worker_rlimit_nofile 20000;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections {NGINX_CONNS}; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {dir}/body;\n\
         \x20   proxy_temp_path {dir}/proxy;\n\
         \x20   map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
         \x20   upstream nodes {{ server {node}; }}\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port} ssl;\n\
         \x20       server_name {SERVER_NAME};\n\
         \x20       ssl_certificate {};\n\
         \x20       ssl_certificate_key {};\n\
         \x20       ssl_protocols TLSv1.3;\n\
         \x20       ssl_ecdh_curve X25519;\n\
         \x20       ssl_session_cache shared:bench:10m;\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://nodes;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Upgrade $http_upgrade;\n\
         \x20           proxy_set_header Connection $connection_upgrade;\n\
         \x20           proxy_set_header Host $host;\n\
         \x20           proxy_read_timeout 3600s;\n\
         \x20           proxy_send_timeout 3600s;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        cert.fullchain().display(),
        cert.privkey().display(),
        dir = dir.display()
    )
}
