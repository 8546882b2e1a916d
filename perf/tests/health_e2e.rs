//! Health feeds end to end with simulated BitShares nodes: the real probes (BitShares call
//! over the websocket), the rules, the control plane and the terminator, on loopback.
//! A stalled node leaves the ring after its head-age allowance plus `fall` checks; clients
//! pinned to healthy nodes are untouched; the node comes back after `rise` checks.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use proxy::{
    balancer::{Balancer, MemoryMaps},
    config::Config,
    control::{apply_connect_event, apply_health, health_configs},
    health::{rules::BackendState, Board, Report, Supervisor},
    terminator::{
        io::IoMode,
        listener_specs, listener_specs_with_events,
        server::{ConnLimits, ListenerSpec, Terminator},
        upstream_set,
    },
};
use proxy_perf::node_sim::{Control, NodeSim, NodeSimConfig};
use tokio::sync::mpsc::Receiver;

const INTERVAL_MS: u64 = 250;
const FALL: u64 = 2;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(port: u16, nodes: &[SocketAddr]) -> Config {
    let backends: String = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "  {{ name = \"node-{}\", address = \"{a}\", weight = 100 }},\n",
                i + 1
            )
        })
        .collect();
    let text = format!(
        r#"
[balancer]
interfaces = ["lo"]
snat_v4 = "192.0.2.254"
ring_size = 1009

[[listener]]
name = "wss"
address = "127.0.0.1:{port}"
mode = "ws"
pool = "eu"

[pools.eu]
backends = [
{backends}]

[pools.eu.health]
check = "bitshares-ws"
interval_ms = {INTERVAL_MS}
timeout_ms = 500
rise = 2
fall = {FALL}
margin_secs = 1
"#
    );
    Config::parse(&text, "health e2e").expect("config")
}

struct Plane {
    balancer: Balancer,
    maps: MemoryMaps,
    board: Board,
    terminated: Vec<(proxy::config::ListenerConfig, ListenerSpec)>,
    rx: Receiver<Report>,
}

impl Plane {
    /// Applies probe reports (what `proxy run`'s loop does) until `done` or `limit`.
    async fn pump_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Plane) -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if done(self) {
                return Some(started.elapsed());
            }
            if let Ok(Some(r)) =
                tokio::time::timeout(Duration::from_millis(100), self.rx.recv()).await
            {
                apply_health(
                    r,
                    &mut self.board,
                    &mut self.balancer,
                    &mut self.maps,
                    &self.terminated,
                );
            }
        }
        None
    }

    fn available(&self, name: &str) -> bool {
        self.balancer
            .backends("eu")
            .unwrap()
            .iter()
            .find(|b| b.name == name)
            .unwrap()
            .available
    }

    fn choice(&self, src: u8) -> String {
        let (l, _) = &self.terminated[0];
        let set = upstream_set(&self.balancer, l).unwrap();
        set.candidates([127, 0, 0, src].into())[0].name.clone()
    }
}

/// A websocket client through the proxy from 127.0.0.`src` that calls `get_chain_id`.
fn rpc_client(src: u8, proxy: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, src], 0)).into())
        .unwrap();
    sock.connect(&proxy.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tungstenite::client(format!("ws://{proxy}/"), s)
        .expect("upgrade through the proxy")
        .0
}

fn call_chain_id(ws: &mut tungstenite::WebSocket<TcpStream>, id: u64) -> Result<(), String> {
    let req = format!(r#"{{"id":{id},"method":"call","params":["database","get_chain_id",[]]}}"#);
    ws.send(tungstenite::Message::text(req))
        .map_err(|e| e.to_string())?;
    loop {
        let m = ws.read().map_err(|e| e.to_string())?;
        let Ok(text) = m.to_text() else { continue };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v["id"] == id {
            return v["result"]
                .as_str()
                .map(|_| ())
                .ok_or_else(|| format!("bad answer {text}"));
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn stalled_node_leaves_and_comes_back_without_touching_others() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        // 1 s blocks, maintenance every 30 s: a shortened mainnet.
        nodes.push(
            NodeSim::spawn(NodeSimConfig::fast(1_000, 30))
                .await
                .expect("node sim"),
        );
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let config = config(free_port(), &addrs);
    let mut maps = MemoryMaps::default();
    let balancer = Balancer::from_config(&config, &mut maps).unwrap();
    let terminated = listener_specs(&config, &balancer).unwrap();
    let term = Terminator::start(
        IoMode::Epoll,
        1,
        terminated.iter().map(|(_, s)| s.clone()).collect(),
        ConnLimits::new(1000, 100),
        Duration::from_millis(200),
    )
    .unwrap();
    let proxy = term.local_addrs[0];
    let board = Board::new(health_configs(&config));
    let (mut supervisor, rx) = Supervisor::new();
    supervisor.sync(&balancer, &board);
    let mut plane = Plane {
        balancer,
        maps,
        board,
        terminated,
        rx,
    };

    let all_up = |p: &Plane| {
        (1..=3).all(|i| p.board.state("eu", &format!("node-{i}")) == Some(BackendState::Up))
    };
    plane
        .pump_until(Duration::from_secs(5), all_up)
        .await
        .expect("all nodes up");

    // A client of node-2 keeps calling while node-1 stalls and recovers.
    let healthy_src = (2..250u8).find(|s| plane.choice(*s) == "node-2").unwrap();
    let victim_src = (2..250u8).find(|s| plane.choice(*s) == "node-1").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let (stop2, calls2) = (stop.clone(), calls.clone());
    let steady = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut ws = rpc_client(healthy_src, proxy);
        let mut id = 1;
        while !stop2.load(Ordering::Relaxed) {
            call_chain_id(&mut ws, id)?;
            calls2.fetch_add(1, Ordering::Relaxed);
            id += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    });

    nodes[0].set_mode(Control::Stall).await.unwrap();
    let stalled_at = Instant::now();
    let took = plane
        .pump_until(Duration::from_secs(15), |p| !p.available("node-1"))
        .await
        .expect("the stalled node was never taken out");
    eprintln!("node-1 out of the ring {took:?} after it stalled");
    // Allowance: 2 × 1 s + 1 s margin away from maintenance, (1 + 3) × 1 s + 1 s around it
    // (5 s at most). Head times are whole seconds and the frozen head was up to a block old:
    // + 2 s. Then `fall` checks, and 1 s of scheduling slack for a loaded CI machine.
    let bound = Duration::from_secs(5 + 2 + 1) + Duration::from_millis(FALL * INTERVAL_MS);
    assert!(took <= bound, "taken out after {took:?}, bound {bound:?}");
    assert!(
        took >= Duration::from_secs(2),
        "taken out after {took:?}: before the allowance could run out"
    );
    assert!(plane.available("node-2") && plane.available("node-3"));
    assert!(
        plane.board.why("eu", "node-1").unwrap().contains("stale"),
        "{:?}",
        plane.board.why("eu", "node-1")
    );

    // New clients of node-1 now go elsewhere, and really get answers.
    assert_ne!(plane.choice(victim_src), "node-1");
    let served = tokio::task::spawn_blocking(move || {
        let mut ws = rpc_client(victim_src, proxy);
        call_chain_id(&mut ws, 7)
    })
    .await
    .unwrap();
    served.expect("a client of the stalled node is served by another");

    nodes[0].set_mode(Control::Resume).await.unwrap();
    let back = plane
        .pump_until(Duration::from_secs(5), |p| p.available("node-1"))
        .await;
    assert!(back.is_some(), "node-1 did not come back after resuming");
    assert_eq!(
        plane.choice(victim_src),
        "node-1",
        "a recovered node gets its clients back"
    );

    stop.store(true, Ordering::Relaxed);
    steady
        .await
        .unwrap()
        .expect("the healthy node's client was disturbed");
    assert!(
        calls.load(Ordering::Relaxed) > 20,
        "too few calls to prove anything: {}",
        calls.load(Ordering::Relaxed)
    );
    let _ = stalled_at;
    drop(supervisor);
    tokio::task::spawn_blocking(move || term.shutdown())
        .await
        .unwrap();
}

/// Passive health: a node that refuses connections is ejected after a few failed connects
/// seen by the terminator, even without active checks; its clients are served elsewhere
/// meanwhile (retry), and after the backoff it gets traffic again.
#[tokio::test(flavor = "current_thread")]
async fn refusing_node_is_ejected_by_failed_connects() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            NodeSim::spawn(NodeSimConfig::fast(1_000, 30))
                .await
                .expect("node sim"),
        );
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // No [pools.eu.health]: only the data path reports.
    let mut config = config(free_port(), &addrs);
    config.pools.get_mut("eu").unwrap().health = None;
    let mut maps = MemoryMaps::default();
    let mut balancer = Balancer::from_config(&config, &mut maps).unwrap();
    let (tx, mut events) = tokio::sync::mpsc::channel(64);
    let terminated = listener_specs_with_events(&config, &balancer, Some(tx)).unwrap();
    let term = Terminator::start(
        IoMode::Uring,
        1,
        terminated.iter().map(|(_, s)| s.clone()).collect(),
        ConnLimits::new(1000, 100),
        Duration::from_millis(200),
    )
    .unwrap();
    let proxy = term.local_addrs[0];
    let mut board = Board::new(health_configs(&config));
    let choice = |b: &Balancer, src: u8| {
        upstream_set(b, &terminated[0].0)
            .unwrap()
            .candidates([127, 0, 0, src].into())[0]
            .name
            .clone()
    };
    let victims: Vec<u8> = (2..250u8)
        .filter(|s| choice(&balancer, *s) == "node-1")
        .take(4)
        .collect();
    assert_eq!(victims.len(), 4);

    nodes[0].set_mode(Control::Refuse).await.unwrap();
    for (i, src) in victims.iter().enumerate() {
        let src = *src;
        tokio::task::spawn_blocking(move || {
            let mut ws = rpc_client(src, proxy);
            call_chain_id(&mut ws, 1)
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("client {i} of the refusing node was not served by another: {e}")
        });
        while let Ok(ev) = events.try_recv() {
            apply_connect_event(ev, &mut board, &mut balancer, &mut maps, &terminated);
        }
    }
    let node1 = |b: &Balancer| {
        b.backends("eu")
            .unwrap()
            .iter()
            .find(|x| x.name == "node-1")
            .unwrap()
            .available
    };
    assert!(
        !node1(&balancer),
        "three failed connects did not eject node-1: {:?}",
        board.why("eu", "node-1")
    );
    assert_ne!(
        choice(&balancer, victims[0]),
        "node-1",
        "the terminator still picks the ejected node"
    );
    assert!(board.why("eu", "node-1").unwrap().contains("ejected"));

    // The node accepts again; after the backoff the ring takes it back.
    nodes[0].set_mode(Control::Accept).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    proxy::control::tick_ramps(
        &board,
        &mut balancer,
        &mut maps,
        &terminated,
        proxy::health::checks::unix_now(),
    );
    assert!(node1(&balancer), "node-1 not re-admitted after its backoff");
    assert_eq!(choice(&balancer, victims[0]), "node-1");
    tokio::task::spawn_blocking(move || term.shutdown())
        .await
        .unwrap();
}

/// The probes against a simulated node: BitShares over HTTP POST and over the websocket
/// (with chain parameters read from the node), and the plain websocket handshake.
#[tokio::test(flavor = "current_thread")]
async fn probes_read_the_chain_from_a_simulated_node() {
    use proxy::health::checks::{probe, ProbeKind};
    let node = NodeSim::spawn(NodeSimConfig::fast(1_000, 30))
        .await
        .expect("node sim");
    let t = Duration::from_secs(3);
    for kind in [ProbeKind::BitsharesHttp, ProbeKind::BitsharesWs] {
        let a = probe(kind, node.addr, "/", t, true)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let s = a.sample.expect("head sample");
        assert!(s.head_block_number > 0);
        assert!(
            s.head_age_secs() <= 3,
            "{kind:?}: head {}s old",
            s.head_age_secs()
        );
        assert!(s.next_maintenance_time_unix > s.head_block_time_unix);
        let p = a.params.expect("chain params from get_global_properties");
        assert_eq!(
            (
                p.block_interval_secs,
                p.maintenance_interval_secs,
                p.maintenance_skip_slots
            ),
            (1, 30, 3)
        );
    }
    probe(ProbeKind::Ws, node.addr, "/ws", t, false)
        .await
        .expect("websocket handshake");
    node.set_mode(Control::Refuse).await.unwrap();
    assert!(probe(ProbeKind::BitsharesHttp, node.addr, "/", t, false)
        .await
        .is_err());
}
