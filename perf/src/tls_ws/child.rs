//! The proxy under test in a child process (this binary's hidden `serve` subcommand), so
//! its RSS and CPU time are its own; and the bench's handle on it. They talk over the
//! child's stdin and stdout, one line at a time.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use proxy::terminator::{
    io::IoMode,
    tls::{CertSource, SniResolver, TlsAcceptor},
};
use proxy_tests::terminator::{init_crypto, upstream_table, TerminatorBuilder, TestListener};

use super::{
    heap::{self, HeapSizes},
    SERVER_NAME,
};

/// A proxy under test in its own process.
pub struct ProxyProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub addr: SocketAddr,
}

/// What the child reports on a `stats` line.
pub struct ProxyStats {
    /// Live connections.
    pub active: usize,
    pub heap: HeapSizes,
}

impl ProxyProc {
    pub fn start(
        mode: IoMode,
        node: SocketAddr,
        cert_dir: &Path,
        cpu: Option<usize>,
        count_heap: bool,
    ) -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve")
            .args([
                "--mode",
                if mode == IoMode::Uring {
                    "uring"
                } else {
                    "epoll"
                },
            ])
            .args(["--node", &node.to_string()])
            .arg("--cert-dir")
            .arg(cert_dir);
        if let Some(c) = cpu {
            cmd.args(["--cpu", &c.to_string()]);
        }
        if count_heap {
            cmd.arg("--count-heap");
        }
        crate::bench::cleanup::die_with_parent(&mut cmd);
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stats(&mut self) -> Result<ProxyStats> {
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

    pub fn stop(mut self) -> Result<()> {
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

/// The `serve` role, in the child: one terminator worker with a TLS listener for
/// [`SERVER_NAME`] relaying to `node`, until stdin closes. Prints `READY <port>`, then
/// answers each `stats` line with `STATS <live connections> <size>:<blocks> ...`.
pub fn serve(
    mode: &str,
    node: SocketAddr,
    cert_dir: PathBuf,
    cpu: Option<usize>,
    count_heap: bool,
) -> Result<()> {
    if count_heap {
        heap::count_heap();
    }
    if let Some(c) = cpu {
        proxy_tests::cpu::pin_to_cpu(c)?;
    }
    init_crypto();
    let mode = if mode == "uring" {
        IoMode::Uring
    } else {
        IoMode::Epoll
    };
    let cert = CertSource {
        server_name: SERVER_NAME.into(),
        dir: cert_dir,
    };
    let resolver = SniResolver::load(&[cert], None)?;
    let listener = TestListener::new("bench", upstream_table(&[("node", node)]))
        .tls(TlsAcceptor::new(resolver))
        .timeouts(
            Duration::from_secs(10),
            Duration::from_secs(2),
            Duration::from_secs(3600),
        );
    let t = TerminatorBuilder::new(mode)
        .limits(1_000_000, 1_000_000)
        .grace(Duration::from_millis(100))
        .listener(listener)
        .start()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", t.local_addrs[0].port())?;
    out.flush()?;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim() == "stats" {
            let mut s = format!("STATS {}", t.limits.active());
            for (size, n) in heap::heap_snapshot() {
                s.push_str(&format!(" {size}:{n}"));
            }
            writeln!(out, "{s}")?;
            out.flush()?;
        }
    }
    t.shutdown();
    Ok(())
}
