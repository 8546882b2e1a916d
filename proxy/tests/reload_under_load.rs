//! 1,000 live WebSocket connections keep exchanging messages across a reload that adds one
//! backend and drains another: zero dropped, zero messages lost; new connections follow the
//! new pool. Runs the same code path as `proxy run` on SIGHUP (reconcile pools, then swap the
//! terminator's tables), with the control plane writing to in-memory maps.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use proxy::{
    balancer::{Balancer, MemoryMaps},
    config::Config,
    terminator::{
        io::IoMode,
        listener_specs,
        server::{ConnLimits, Terminator},
        upstream_set,
    },
};
use tungstenite::Message;

/// WebSocket nodes on one tokio thread: greet with their name, then echo.
fn start_nodes(names: &[&str]) -> Vec<SocketAddr> {
    let listeners: Vec<(String, std::net::TcpListener)> = names
        .iter()
        .map(|n| (n.to_string(), TcpListener::bind("127.0.0.1:0").unwrap()))
        .collect();
    let addrs = listeners
        .iter()
        .map(|(_, l)| l.local_addr().unwrap())
        .collect();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            for (name, l) in listeners {
                l.set_nonblocking(true).unwrap();
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        let name = name.clone();
                        tokio::spawn(async move {
                            let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                                return;
                            };
                            if ws
                                .send(tokio_tungstenite::tungstenite::Message::text(name))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            while let Some(Ok(m)) = ws.next().await {
                                if m.is_text() && ws.send(m).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                });
            }
            std::future::pending::<()>().await;
        });
    });
    addrs
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(port: u16, nodes: &[(&str, SocketAddr, u32)]) -> Config {
    let backends: String = nodes
        .iter()
        .map(|(n, a, w)| format!("  {{ name = \"{n}\", address = \"{a}\", weight = {w} }},\n"))
        .collect();
    let text = format!(
        r#"
[balancer]
interfaces = ["lo"]
snat_v4 = "192.0.2.254"
ring_size = 1009

[terminator]
max_connections = 4000
max_connections_per_client = 4000

[[listener]]
name = "wss"
address = "127.0.0.1:{port}"
mode = "ws"
pool = "eu"

[pools.eu]
backends = [
{backends}]
"#
    );
    Config::parse(&text, "reload test").expect("config")
}

/// Connects from 127.0.0.`src` (all of 127/8 is loopback): different client addresses
/// land on different nodes, as real clients do.
fn connect_from(src: u8, addr: SocketAddr) -> (tungstenite::WebSocket<TcpStream>, String) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, src], 0)).into())
        .unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), s).expect("upgrade");
    let name = ws
        .read()
        .expect("greeting")
        .into_text()
        .unwrap()
        .to_string();
    (ws, name)
}

#[test]
fn thousand_connections_survive_a_reload_that_adds_and_drains() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let nodes = start_nodes(&["node-a", "node-b", "node-c"]);
    let port = free_port();
    let before = config(
        port,
        &[("node-a", nodes[0], 100), ("node-b", nodes[1], 100)],
    );
    let after = config(
        port,
        &[
            ("node-a", nodes[0], 0),
            ("node-b", nodes[1], 100),
            ("node-c", nodes[2], 100),
        ],
    );

    for mode in [IoMode::Epoll, IoMode::Uring] {
        let mut maps = MemoryMaps::default();
        let mut balancer = Balancer::from_config(&before, &mut maps).unwrap();
        let specs = listener_specs(&before, &balancer).unwrap();
        let t = Terminator::start(
            mode,
            2,
            specs.iter().map(|(_, s)| s.clone()).collect(),
            ConnLimits::new(4000, 4000),
            Duration::from_secs(2),
        )
        .unwrap();
        let addr = t.local_addrs[0];

        // 1,000 connections over 10 client threads.
        let stop = Arc::new(AtomicBool::new(false));
        let exchanged = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut workers = Vec::new();
        for w in 0..10 {
            let (stop, exchanged, ready_tx) = (stop.clone(), exchanged.clone(), ready_tx.clone());
            workers.push(thread::spawn(
                move || -> Result<BTreeMap<String, usize>, String> {
                    let mut conns: Vec<(tungstenite::WebSocket<TcpStream>, String)> = (0..100u8)
                        .map(|i| connect_from(2 + (w as u8 * 100 + i) % 250, addr))
                        .collect();
                    let mut by_node = BTreeMap::new();
                    for (_, n) in &conns {
                        *by_node.entry(n.clone()).or_insert(0) += 1;
                    }
                    ready_tx.send(()).unwrap();
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for (i, (ws, node)) in conns.iter_mut().enumerate() {
                            let msg = format!("w{w} c{i} r{round}");
                            ws.send(Message::text(msg.clone()))
                                .map_err(|e| format!("send on {node}: {e}"))?;
                            let back = ws
                                .read()
                                .map_err(|e| format!("read on {node} after round {round}: {e}"))?;
                            if back.to_text().ok() != Some(msg.as_str()) {
                                return Err(format!(
                                    "{node}: lost or reordered message in round {round}"
                                ));
                            }
                            exchanged.fetch_add(1, Ordering::Relaxed);
                        }
                        round += 1;
                    }
                    Ok(by_node)
                },
            ));
        }
        for _ in 0..10 {
            ready_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("clients connected");
        }
        thread::sleep(Duration::from_millis(500));
        let before_reload = exchanged.load(Ordering::Relaxed);

        // The reload: node-c added, node-a drained.
        let changes = balancer.reconcile_pools(&after, &mut maps).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        for (l, spec) in &specs {
            spec.ctx
                .upstreams
                .replace(upstream_set(&balancer, l).unwrap());
        }
        thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let mut on_a = 0;
        for w in workers {
            let by_node = w
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{mode:?}: a connection broke: {e}"));
            on_a += by_node.get("node-a").copied().unwrap_or(0);
        }
        assert!(
            (150..=850).contains(&on_a),
            "{mode:?}: {on_a} of 1000 connections on node-a: the client addresses did not spread"
        );
        let total = exchanged.load(Ordering::Relaxed);
        eprintln!("{mode:?}: {total} messages echoed over 1,000 connections ({before_reload} before the reload), none lost; {on_a} connections stayed on drained node-a");
        assert!(
            total > before_reload + 1000,
            "{mode:?}: traffic stalled across the reload"
        );

        // New connections: none on the drained node, some on the new one.
        let mut fresh = BTreeMap::new();
        for i in 0..120u8 {
            let (mut ws, name) = connect_from(2 + i, addr);
            *fresh.entry(name).or_insert(0) += 1;
            let _ = ws.close(None);
        }
        assert!(
            !fresh.contains_key("node-a"),
            "{mode:?}: drained node got new connections: {fresh:?}"
        );
        assert!(
            fresh.get("node-c").copied().unwrap_or(0) > 0,
            "{mode:?}: the added node got none: {fresh:?}"
        );
        t.shutdown();
    }
}
