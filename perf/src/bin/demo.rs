//! `cargo xtask demo`: the proxy on a built-in default that a newcomer can watch and poke.
//! Builds the lab (client, balancer and three node namespaces), starts a simulated BitShares
//! node in each, runs the real `proxy` binary with `config/demo.toml` inside the balancer
//! namespace, checks that requests flow (JSON-RPC through XDP, and a `wss://` client through
//! the TLS terminator), links this host to the balancer so a browser here can open `/stats`,
//! prints what to try, and cleans up on Ctrl-C or after `--duration`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
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
use proxy_perf::{
    demo::{https_get, wss_landing, DemoCert, HostLink, WssSite, HOST_DEV},
    node_sim::{NodeSim, NodeSimConfig},
};
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

/// A simulated BitShares node in `ns` (JSON-RPC over HTTP POST and WebSocket on
/// `addr:8080`, control endpoint on 127.0.0.1:9000 inside the namespace), on its own thread.
fn start_sim_node(ns: &NetNs, addr: Ipv4Addr, name: String) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns_name = ns.name().to_string();
    let entered = {
        let path = format!("/var/run/netns/{ns_name}");
        std::fs::File::open(&path).with_context(|| format!("opening {path}"))?
    };
    thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a namespace fd we opened.
        if unsafe { libc::setns(entered.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let _ = tx.send(Err(format!(
                "setns into {ns_name}: {}",
                std::io::Error::last_os_error()
            )));
            return;
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            // 1 s blocks and a maintenance every minute: a quick mainnet to watch.
            let config = NodeSimConfig {
                name: name.clone(),
                listen: SocketAddr::from((addr, NODE_PORT)),
                control: Some(SocketAddr::from(([127, 0, 0, 1], 9000))),
                ..NodeSimConfig::fast(1_000, 60)
            };
            match NodeSim::spawn(config).await {
                Ok(handle) => {
                    let _ = tx.send(Ok(()));
                    let _keep = handle;
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{name}: {e}")));
                }
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .context("node simulator did not start")?
        .map_err(anyhow::Error::msg)
}

const DGP: &str =
    r#"{"id":1,"method":"call","params":["database","get_dynamic_global_properties",[]]}"#;

fn get(client: &NetNs, port: u16) -> Result<String> {
    netns::run_in(client, move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((topology::VIP, port)),
            Duration::from_secs(3),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(
            s,
            "POST / HTTP/1.1\r\nhost: demo\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{DGP}",
            DGP.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).context("answer is not JSON")?;
        Ok(format!("head {}", v["result"]["head_block_number"]))
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

/// Loads the demo config; first writes the demo certificate its `tls` listener names, unless
/// a valid one from an earlier run is there (so a browser that trusts it keeps trusting it).
fn load_config(path: &std::path::Path) -> Result<(proxy::config::Config, WssSite)> {
    use proxy::{config::Config, terminator::tls::check_certificates};
    let text = std::fs::read_to_string(path)?;
    let parsed = Config::parse(&text, &path.display().to_string())?;
    let site = WssSite::from_config(&parsed)
        .context("config/demo.toml has no IPv4 tls listener with a certificate")?;
    if let Ok(config) = Config::load(path, check_certificates) {
        println!("demo certificate: {} (reused)", site.cert.dir.display());
        return Ok((config, site));
    }
    DemoCert::generate(&site.cert.dir, &site.server_name, site.vip())?;
    println!(
        "demo certificate: {} (new demo CA: {})",
        site.cert.dir.display(),
        site.cert.ca().display()
    );
    Ok((Config::load(path, check_certificates)?, site))
}

/// A `wss://` client from the client namespace; retried while health checks bring the nodes
/// into the terminator's table.
fn check_wss(lab: &Lab, site: &WssSite) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let landing = loop {
        let s = site.clone();
        let result = netns::run_in(&lab.client, move || {
            wss_landing(&s.cert, s.addr, &s.server_name)
        })?;
        match result {
            Ok(l) => break l,
            Err(e) if Instant::now() > deadline => return Err(e.context("the wss:// check")),
            Err(_) => thread::sleep(Duration::from_millis(500)),
        }
    };
    println!(
        "  wss://{}/ws  TLS ended by the proxy ({}), WebSocket to a node: landed on {}, subscribed, notice at head {}",
        site.server_name, site.listener, landing.node, landing.head
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config_path = root().join("config/demo.toml");
    let (config, site) = load_config(&config_path)?;
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
        start_sim_node(&node.ns, node.addr, format!("node-{}", node.index))?;
    }
    // The tls listener binds the VIP in the balancer namespace (XDP passes its port to the
    // stack), and this host reaches it over its own link.
    lab.lb
        .ip(&["addr", "add", &format!("{}/32", site.vip()), "dev", "lo"])?;
    let host_link = HostLink::new(&lab.lb, site.vip())?;
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
    // Ready once its admin socket answers: that is after XDP is attached (loading and
    // verifying the program takes a few seconds).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proxy.0.try_wait()? {
            bail!(
                "the proxy exited with {status}; its log:\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        let ready = Command::new(&proxy_bin)
            .args(["backends", "--socket"])
            .arg(&config.admin.socket)
            .arg("list")
            .output()
            .is_ok_and(|o| o.status.success());
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the proxy did not answer on {} within a minute; its log:\n{}",
                config.admin.socket.display(),
                std::fs::read_to_string(&log)?
            );
        }
        thread::sleep(Duration::from_millis(250));
    }

    println!("checking: 12 JSON-RPC calls to each listener through XDP ...");
    for (port, what) in [
        (80u16, "five-tuple hash (spreads connections)"),
        (81, "source hash (a client keeps its node)"),
    ] {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..12 {
            *seen.entry(get(&lab.client, port)?).or_default() += 1;
        }
        println!("  {}:{port}  {what}: answers {seen:?}", topology::VIP);
    }
    println!("checking: a wss:// client in the client namespace, /stats from this host ...");
    check_wss(&lab, &site)?;
    let (status, body) = https_get(&site.cert, site.addr, &site.server_name, "/stats")
        .context("GET /stats from this host over the demo link")?;
    println!(
        "  https://{}/stats from this host: {status} ({} bytes)",
        site.vip(),
        body.len()
    );
    // Where they went (new flows per node) and what the health checks say.
    thread::sleep(Duration::from_millis(1500));
    let list = Command::new(&proxy_bin)
        .args(["backends", "--socket"])
        .arg(&config.admin.socket)
        .arg("list")
        .output()
        .context("proxy backends list")?;
    println!(
        "\n{}{}",
        String::from_utf8_lossy(&list.stdout),
        String::from_utf8_lossy(&list.stderr)
    );
    let cl = lab.client.name();
    let lb = lab.lb.name();
    let pins = config.balancer.pin_dir.display();
    println!(
        "\nThe demo is running: three simulated BitShares nodes (1 s blocks, maintenance every minute)\
         \nbehind the VIP, health-checked with get_dynamic_global_properties. Try, as root:\n\
         \n  ip netns exec {cl} curl -s -d '{dgp}' http://{vip}/      # JSON-RPC through XDP\
         \n  ip netns exec {n1} curl -s -X POST 127.0.0.1:9000/control/stall   # node-1 stops producing\
         \n  ip netns exec {n1} curl -s -X POST 127.0.0.1:9000/control/resume  # ... and catches up\
         \n  ip netns exec {lb} ip link show lb-c                 # 'prog/xdp' = native XDP attached\
         \n  bpftool map dump pinned {pins}/REASONS               # per-CPU packet counts by reason\
         \n  tail -f {log}                    # the proxy's log, counters every 5 s\
         \n  {bin} backends --socket {sock} list                      # state, weight, counters\
         \n  {bin} backends --socket {sock} drain demo node-3        # no new flows; live ones continue\
         \n  ip netns exec {lb} curl -s 127.0.0.1:9100/metrics | grep ^proxy_   # Prometheus\
         \n  edit config/demo.toml (weights), then: pkill -HUP -x proxy   # live reload of pools\
         \n\nThe wss:// side, from this machine (link {hdev} {haddr} -> {lbaddr} in the balancer, route to {vip}):\
         \n  open https://{vip}/stats in a browser on this machine (certificate: {ca}; trust it as an authority, or accept the warning)\
         \n  curl --cacert {ca} https://{vip}/stats.json\
         \n  curl --cacert {ca} --resolve {host}:443:{vip} https://{host}/stats\
         \n  ip netns exec {cl} curl -s --cacert {ca} --resolve {host}:443:{vip} -H 'content-type: application/json' -d '{dgp}' https://{host}/   # JSON-RPC over TLS\
         \n\nCtrl-C (or the end of --duration) stops the proxy and removes the namespaces, the link and its route.",
        vip = topology::VIP,
        log = log.display(),
        bin = proxy_bin.display(),
        dgp = DGP,
        n1 = lab.nodes[0].ns.name(),
        sock = config.admin.socket.display(),
        hdev = HOST_DEV,
        haddr = host_link.host_addr,
        lbaddr = host_link.lb_addr,
        ca = site.cert.ca().display(),
        host = site.server_name,
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
    drop(host_link);
    drop(lab);
    println!("done: namespaces, the host link and its route removed");
    Ok(())
}
