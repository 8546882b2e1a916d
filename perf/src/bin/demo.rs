//! `cargo xtask demo`: the proxy on a built-in default that a newcomer can watch and poke.
//! Builds the lab (client, balancer and three node namespaces), starts a small HTTP server on
//! each node, runs the real `proxy` binary with `config/demo.toml` inside the balancer
//! namespace, checks that requests flow, prints what to try, and cleans up on Ctrl-C.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use proxy_tests::{
    netns::{self, NetNs},
    topology::{self, Lab},
};

#[derive(Parser)]
struct Args {
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
}

const NODE_PORT: u16 = 8080;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("perf/ has a parent")
        .to_path_buf()
}

/// A minimal HTTP/1.1 server in `ns` answering every request with the node's name.
fn start_http_node(ns: &NetNs, addr: Ipv4Addr, name: String) -> Result<()> {
    let listener = netns::run_in(ns, move || TcpListener::bind((addr, NODE_PORT)))?
        .with_context(|| format!("binding {name}"))?;
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let name = name.clone();
            thread::spawn(move || serve_http(conn, &name));
        }
    });
    Ok(())
}

fn serve_http(mut conn: TcpStream, name: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("hello from {name}\n");
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn get(client: &NetNs, port: u16) -> Result<String> {
    netns::run_in(client, move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((topology::VIP, port)),
            Duration::from_secs(3),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: demo\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp.lines().last().unwrap_or_default().to_string())
    })?
}

struct ProxyProcess(Child);
impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // SIGTERM: the proxy detaches XDP and exits.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config_path = root().join("config/demo.toml");
    let config = proxy::config::Config::load(&config_path)?;
    let proxy_bin = root().join("target/release/proxy");
    if !proxy_bin.exists() {
        bail!("{} not built: run `cargo xtask demo`", proxy_bin.display());
    }
    let _ = proxy::ebpf::DataPlane::remove_pins(&config.balancer.pin_dir);

    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .context("installing Ctrl-C handler")?;

    println!("building the lab: client, balancer and 3 node namespaces ...");
    let lab = Lab::new("demo", 3)?;
    for node in &lab.nodes {
        start_http_node(&node.ns, node.addr, format!("node-{}", node.index))?;
    }
    let log = root().join("target/demo-proxy.log");
    let log_file = std::fs::File::create(&log)?;
    // nsenter, not `ip netns exec`: the latter gives the proxy a private mount namespace, and
    // its pinned maps would be invisible to bpftool (and gone on restart).
    let child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.lb.name()))
        .arg(&proxy_bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .args(["--stats-interval", "5"])
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting the proxy")?;
    let mut proxy = ProxyProcess(child);
    thread::sleep(Duration::from_millis(1500));
    if let Some(status) = proxy.0.try_wait()? {
        bail!(
            "the proxy exited with {status}; its log:\n{}",
            std::fs::read_to_string(&log)?
        );
    }

    println!("checking: 12 requests to each listener through XDP ...");
    for (port, what) in [
        (80u16, "five-tuple hash (spreads connections)"),
        (81, "source hash (a client keeps its node)"),
    ] {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..12 {
            *seen.entry(get(&lab.client, port)?).or_default() += 1;
        }
        println!("  {}:{port}  {what}: {seen:?}", topology::VIP);
    }
    let cl = lab.client.name();
    let lb = lab.lb.name();
    let pins = config.balancer.pin_dir.display();
    println!(
        "\nThe demo is running. Try, in another shell (as root):\n\
         \n  ip netns exec {cl} curl -s http://{vip}/            # a new node per connection, by weight 1:1:2\
         \n  for i in 1 2 3 4 5; do ip netns exec {cl} curl -s http://{vip}:81/; done   # sticky\
         \n  ip netns exec {lb} ip link show lb-c                 # 'prog/xdp' = native XDP attached\
         \n  bpftool map dump pinned {pins}/REASONS               # per-CPU packet counts by reason\
         \n  tail -f {log}                    # the proxy's log, counters every 5 s\
         \n  {bin} backends --socket {sock} list                      # state, weight, counters\
         \n  {bin} backends --socket {sock} drain demo node-3        # no new flows; live ones continue\
         \n  ip netns exec {lb} curl -s 127.0.0.1:9100/metrics | grep ^proxy_   # Prometheus\
         \n  edit config/demo.toml (weights), then: pkill -HUP -x proxy   # live reload of pools\
         \n\nCtrl-C stops the proxy and removes the namespaces.",
        vip = topology::VIP,
        log = log.display(),
        bin = proxy_bin.display(),
        sock = config.admin.socket.display(),
    );
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs(d));
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(status) = proxy.0.try_wait()? {
            bail!("the proxy exited with {status}; see {}", log.display());
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("stopping ...");
    drop(proxy);
    let _ = proxy::ebpf::DataPlane::remove_pins(&config.balancer.pin_dir);
    drop(lab);
    println!("done: namespaces removed");
    Ok(())
}
