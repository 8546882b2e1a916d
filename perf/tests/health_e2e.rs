//! Health feeds end to end with simulated BitShares nodes: the real probes (BitShares call
//! over the websocket), the rules, the control plane (`ControlPlane`, fed the events `proxy
//! run` feeds it) and the terminator, on loopback.
//! A stalled node leaves the ring after its head-age allowance plus `fall` checks; clients
//! pinned to healthy nodes are untouched; the node comes back after `rise` checks.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use proxy::{
    config::{Config, IoChoice},
    health::{checks::unix_now, pool::ChainState, rules::BackendState},
    plane::{upstream_set, Event, Inputs},
};
use proxy_perf::node_sim::{Control, NodeSim, NodeSimConfig, NodeSimHandle};
use proxy_tests::{
    clients::{ws_client_from, WsClient},
    config::{Backend, ConfigBuilder},
    plane::{start_plane, TestPlane},
    ports::free_port,
    terminator::init_crypto,
};

const INTERVAL_MS: u64 = 250;
const FALL: u64 = 2;

fn config(port: u16, nodes: &[SocketAddr]) -> Config {
    config_with(port, nodes, &[])
}

/// `config` with more `[pools.eu.health]` settings.
fn config_with(port: u16, nodes: &[SocketAddr], extra: &[(&str, i64)]) -> Config {
    let backends: Vec<Backend> = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| Backend::new(format!("node-{}", i + 1), a).weight(100))
        .collect();
    let health = "pools.eu.health";
    let builder = ConfigBuilder::loopback()
        .terminator(1, 1)
        .connection_limits(1000, 100)
        .listener("wss", format!("127.0.0.1:{port}"), "ws", "eu")
        .pool("eu", &backends)
        .set(health, "check", "bitshares-ws")
        .set(health, "interval_ms", INTERVAL_MS as i64)
        .set(health, "timeout_ms", 500)
        .set(health, "rise", 2)
        .set(health, "fall", FALL as i64)
        .set(health, "margin_secs", 1);
    extra
        .iter()
        .fold(builder, |b, (k, v)| b.set(health, k, *v))
        .build("health e2e")
}

type Plane = TestPlane;

/// Three simulated nodes: 1 s blocks, maintenance every 30 s (a shortened mainnet).
async fn spawn_nodes() -> (Vec<NodeSimHandle>, Vec<SocketAddr>) {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let config = NodeSimConfig {
            // What `node_sim_name` answers: a client behind the proxy can tell its node.
            name: format!("node-{i}"),
            ..NodeSimConfig::fast(1_000, 30)
        };
        nodes.push(NodeSim::spawn(config).await.expect("node sim"));
    }
    let addrs = nodes.iter().map(|n| n.addr).collect();
    (nodes, addrs)
}

/// Feeds probe reports to the plane (what `proxy run` does, with the wall clock's `now`:
/// the simulated nodes and the probes run in real time) until `done` or `limit`.
async fn pump_until(
    plane: &mut Plane,
    inputs: &mut Inputs,
    limit: Duration,
    mut done: impl FnMut(&Plane) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done(plane) {
            return Some(started.elapsed());
        }
        if let Ok(Some(r)) =
            tokio::time::timeout(Duration::from_millis(100), inputs.health.recv()).await
        {
            plane.handle(Event::Health(r), unix_now());
        }
    }
    None
}

fn available(plane: &Plane, name: &str) -> bool {
    plane
        .balancer()
        .backends("eu")
        .unwrap()
        .iter()
        .find(|b| b.name == name)
        .unwrap()
        .available
}

/// The node the terminator picks first for a client at 127.0.0.`src`.
fn choice(plane: &Plane, src: u8) -> String {
    let set = upstream_set(plane.balancer(), plane.listener("wss").unwrap()).unwrap();
    set.candidates([127, 0, 0, src].into())[0].name.clone()
}

/// A websocket client through the proxy from 127.0.0.`src` that calls `get_chain_id`.
fn rpc_client(src: u8, proxy: SocketAddr) -> WsClient {
    ws_client_from(src, proxy, Duration::from_secs(5)).expect("upgrade through the proxy")
}

fn call_chain_id(ws: &mut WsClient, id: u64) -> Result<(), String> {
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
    init_crypto();
    let (nodes, addrs) = spawn_nodes().await;
    let config = config(free_port(), &addrs);
    let (mut plane, mut inputs, proxy) = start_plane(&config, IoChoice::Epoll, unix_now(), "wss");

    let all_up = |p: &Plane| {
        (1..=3).all(|i| p.board().state("eu", &format!("node-{i}")) == Some(BackendState::Up))
    };
    pump_until(&mut plane, &mut inputs, Duration::from_secs(5), all_up)
        .await
        .expect("all nodes up");

    // A client of node-2 keeps calling while node-1 stalls and recovers.
    let healthy_src = (2..250u8).find(|s| choice(&plane, *s) == "node-2").unwrap();
    let victim_src = (2..250u8).find(|s| choice(&plane, *s) == "node-1").unwrap();
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
    let took = pump_until(&mut plane, &mut inputs, Duration::from_secs(15), |p| {
        !available(p, "node-1")
    })
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
    assert!(available(&plane, "node-2") && available(&plane, "node-3"));
    assert!(
        plane.board().why("eu", "node-1").unwrap().contains("stale"),
        "{:?}",
        plane.board().why("eu", "node-1")
    );

    // New clients of node-1 now go elsewhere, and really get answers.
    assert_ne!(choice(&plane, victim_src), "node-1");
    let served = tokio::task::spawn_blocking(move || {
        let mut ws = rpc_client(victim_src, proxy);
        call_chain_id(&mut ws, 7)
    })
    .await
    .unwrap();
    served.expect("a client of the stalled node is served by another");

    nodes[0].set_mode(Control::Resume).await.unwrap();
    let back = pump_until(&mut plane, &mut inputs, Duration::from_secs(5), |p| {
        available(p, "node-1")
    })
    .await;
    assert!(back.is_some(), "node-1 did not come back after resuming");
    assert_eq!(
        choice(&plane, victim_src),
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
    tokio::task::spawn_blocking(move || plane.shutdown())
        .await
        .unwrap();
}

/// Passive health: a node that refuses connections is ejected after a few failed connects
/// seen by the terminator, even without active checks; its clients are served elsewhere
/// meanwhile (retry), and after the backoff it gets traffic again.
#[tokio::test(flavor = "current_thread")]
async fn refusing_node_is_ejected_by_failed_connects() {
    init_crypto();
    let (nodes, addrs) = spawn_nodes().await;
    // No [pools.eu.health]: only the data path reports.
    let mut config = config(free_port(), &addrs);
    config.pools.get_mut("eu").unwrap().health = None;
    let (mut plane, mut inputs, proxy) = start_plane(&config, IoChoice::Uring, unix_now(), "wss");
    // The plane's clock: connect results arrive "now"; the backoff is then run out by
    // advancing it, not by sleeping.
    let t0 = unix_now();
    let victims: Vec<u8> = (2..250u8)
        .filter(|s| choice(&plane, *s) == "node-1")
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
        while let Ok(ev) = inputs.connects.try_recv() {
            plane.handle(Event::Connect(ev), t0);
        }
    }
    assert!(
        !available(&plane, "node-1"),
        "three failed connects did not eject node-1: {:?}",
        plane.board().why("eu", "node-1")
    );
    assert_ne!(
        choice(&plane, victims[0]),
        "node-1",
        "the terminator still picks the ejected node"
    );
    assert!(plane
        .board()
        .why("eu", "node-1")
        .unwrap()
        .contains("ejected"));
    // A tick inside the backoff changes nothing.
    plane.handle(Event::Tick, t0);
    assert!(!available(&plane, "node-1"));

    // The node accepts again; after the backoff (1 s for a first ejection) the ring takes
    // it back on the next tick.
    nodes[0].set_mode(Control::Accept).await.unwrap();
    plane.handle(Event::Tick, t0 + 2);
    assert!(
        available(&plane, "node-1"),
        "node-1 not re-admitted after its backoff"
    );
    assert_eq!(choice(&plane, victims[0]), "node-1");
    tokio::task::spawn_blocking(move || plane.shutdown())
        .await
        .unwrap();
}

/// The probes against a simulated node: BitShares over HTTP POST and over the websocket
/// (with chain parameters read from the node), and the plain websocket handshake.
#[tokio::test(flavor = "current_thread")]
async fn probes_read_the_chain_from_a_simulated_node() {
    use proxy::health::checks::{probe, ProbeErrorKind, ProbeKind};
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
                p.block_interval_secs(),
                p.maintenance_interval_secs,
                p.maintenance_skip_slots
            ),
            (1, 30, 3)
        );
        // One model: what the probe read is what the simulator runs.
        assert_eq!(p, node.chain().params());
    }
    probe(ProbeKind::Ws, node.addr, "/ws", t, false)
        .await
        .expect("websocket handshake");
    node.set_mode(Control::Refuse).await.unwrap();
    assert_eq!(
        probe(ProbeKind::BitsharesHttp, node.addr, "/", t, false)
            .await
            .unwrap_err()
            .kind,
        ProbeErrorKind::Connect
    );
}

/// A chain halt is not a node failure: all three nodes stall at (nearly) the same head, so each
/// one's own verdict turns stale, yet all of them stay in the ring and clients keep reading;
/// `/stats.json` says the chain halted. When the nodes resume together, the halt is over.
#[tokio::test(flavor = "current_thread")]
async fn a_chain_halt_keeps_the_pool_serving() {
    init_crypto();
    let (nodes, addrs) = spawn_nodes().await;
    let config = config(free_port(), &addrs);
    let (mut plane, mut inputs, proxy) = start_plane(&config, IoChoice::Epoll, unix_now(), "wss");
    let state_of_all = |p: &Plane, s: BackendState| {
        (1..=3).all(|i| p.board().state("eu", &format!("node-{i}")) == Some(s))
    };
    pump_until(&mut plane, &mut inputs, Duration::from_secs(5), |p| {
        state_of_all(p, BackendState::Up)
    })
    .await
    .expect("all nodes up");

    for n in &nodes {
        n.set_mode(Control::Stall).await.unwrap();
    }
    pump_until(&mut plane, &mut inputs, Duration::from_secs(20), |p| {
        state_of_all(p, BackendState::Down)
    })
    .await
    .expect("every node's own verdict turns stale");
    for i in 1..=3 {
        assert!(
            available(&plane, &format!("node-{i}")),
            "node-{i} left the ring during a chain halt"
        );
    }
    let d = plane.pool_decision("eu").expect("a pool decision").clone();
    assert!(
        matches!(d.chain, ChainState::Halted { .. }),
        "{:?}",
        d.chain
    );
    assert_eq!(d.kept_in.len(), 3, "{d:?}");
    // Clients still read state through the proxy.
    tokio::task::spawn_blocking(move || {
        let mut ws = rpc_client(2, proxy);
        call_chain_id(&mut ws, 1)
    })
    .await
    .unwrap()
    .expect("a call during the halt");
    plane.handle(Event::Tick, unix_now());
    let pages = plane.stats_pages();
    let body = String::from_utf8_lossy(&pages.json);
    let json: serde_json::Value =
        serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["pools"][0]["chain_state"], "halted", "{json}");
    assert!(
        json["pools"][0]["chain_note"]
            .as_str()
            .unwrap()
            .starts_with("chain halted at block "),
        "{json}"
    );
    assert_eq!(json["pools"][0]["backends"][0]["state"], "kept", "{json}");

    for n in &nodes {
        n.set_mode(Control::Resume).await.unwrap();
    }
    pump_until(&mut plane, &mut inputs, Duration::from_secs(10), |p| {
        state_of_all(p, BackendState::Up)
            && p.pool_decision("eu").is_some_and(|d| {
                matches!(d.chain, ChainState::Advancing { .. }) && d.kept_in.is_empty()
            })
    })
    .await
    .expect("the chain resumes and the halt is over");
    drop(plane.shutdown());
    for n in nodes {
        n.shutdown().await;
    }
}

/// An async WebSocket client through the proxy from 127.0.0.`src`.
async fn async_client(
    src: u8,
    proxy: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from(([127, 0, 0, src], 0))).unwrap();
    let stream = sock.connect(proxy).await.expect("connect to the proxy");
    tokio_tungstenite::client_async(format!("ws://{proxy}/"), stream)
        .await
        .expect("upgrade through the proxy")
        .0
}

/// Which node a client landed on (the simulator's `node_sim_name`).
async fn node_of(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> String {
    use futures_util::{SinkExt, StreamExt};
    ws.send(tungstenite::Message::text(
        r#"{"id":77,"method":"call","params":["login","node_sim_name",[]]}"#,
    ))
    .await
    .unwrap();
    loop {
        let m = ws.next().await.expect("an answer").expect("a frame");
        let Ok(text) = m.to_text() else { continue };
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        if v["id"] == 77 {
            return v["result"].as_str().unwrap_or_default().to_string();
        }
    }
}

/// Clients moved off a sick node: 200 live WebSocket clients on node-1; node-1 starts
/// lagging and leaves the ring; each client gets a close 1012 at its own moment within the
/// window, reconnects and lands on an in-sync node. Clients of the healthy nodes see nothing.
#[tokio::test(flavor = "current_thread")]
async fn clients_of_a_lagging_node_move_to_in_sync_nodes_within_the_window() {
    clients_move_off(IoChoice::Epoll).await;
}

/// The same through the io_uring terminator (when the kernel allows io_uring).
#[tokio::test(flavor = "current_thread")]
async fn clients_move_off_through_io_uring_too() {
    clients_move_off(IoChoice::Uring).await;
}

async fn clients_move_off(io: IoChoice) {
    use futures_util::StreamExt;
    const WINDOW_SECS: u64 = 3;
    init_crypto();
    let (nodes, addrs) = spawn_nodes().await;
    let config = config_with(
        free_port(),
        &addrs,
        &[
            ("max_lag_blocks", 3),
            ("move_off_window_secs", WINDOW_SECS as i64),
        ],
    );
    let (mut plane, mut inputs, proxy) = start_plane(&config, io, unix_now(), "wss");
    pump_until(&mut plane, &mut inputs, Duration::from_secs(5), |p| {
        (1..=3).all(|i| p.board().state("eu", &format!("node-{i}")) == Some(BackendState::Up))
    })
    .await
    .expect("all nodes up");
    let victims: Vec<u8> = (2..250u8)
        .filter(|s| choice(&plane, *s) == "node-1")
        .take(4)
        .collect();
    let bystanders: Vec<u8> = (2..250u8)
        .filter(|s| choice(&plane, *s) == "node-2")
        .take(2)
        .collect();
    assert_eq!((victims.len(), bystanders.len()), (4, 2));

    let mut moving = tokio::task::JoinSet::new();
    for i in 0..200 {
        let src = victims[i % victims.len()];
        let mut ws = async_client(src, proxy).await;
        assert_eq!(node_of(&mut ws).await, "node-1");
        moving.spawn(async move {
            // Wait for the close, then reconnect from the same address.
            let code = loop {
                match ws.next().await {
                    Some(Ok(tungstenite::Message::Close(f))) => {
                        break f.map(|f| u16::from(f.code));
                    }
                    Some(Ok(_)) => continue,
                    _ => break None,
                }
            };
            let at = Instant::now();
            let mut again = async_client(src, proxy).await;
            (code, at, node_of(&mut again).await)
        });
    }
    let mut staying = tokio::task::JoinSet::new();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    for i in 0..20 {
        let mut ws = async_client(bystanders[i % 2], proxy).await;
        assert_eq!(node_of(&mut ws).await, "node-2");
        let mut stop = stop_tx.subscribe();
        staying.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.recv() => return node_of(&mut ws).await,
                    m = ws.next() => match m {
                        Some(Ok(tungstenite::Message::Close(_))) | None | Some(Err(_)) => {
                            return "disturbed".to_string();
                        }
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
    }

    nodes[0].set_mode(Control::Lag(10)).await.unwrap();
    pump_until(&mut plane, &mut inputs, Duration::from_secs(15), |p| {
        !available(p, "node-1")
    })
    .await
    .expect("the lagging node leaves the ring");
    let out_at = Instant::now();
    // The plane keeps running while the clients move.
    let deadline = out_at + Duration::from_secs(WINDOW_SECS + 5);
    let mut moved = Vec::new();
    while moved.len() < 200 && Instant::now() < deadline {
        tokio::select! {
            Some(r) = moving.join_next() => moved.push(r.expect("client task")),
            _ = pump_until(&mut plane, &mut inputs, Duration::from_millis(200), |_| false) => {}
        }
    }
    assert_eq!(
        moved.len(),
        200,
        "not every client of node-1 moved within the window"
    );
    for (code, _, node) in &moved {
        assert_eq!(*code, Some(1012), "closed with {code:?}");
        assert!(
            node == "node-2" || node == "node-3",
            "reconnected to {node}"
        );
    }
    let first = moved.iter().map(|m| m.1).min().unwrap();
    let last = moved.iter().map(|m| m.1).max().unwrap();
    eprintln!(
        "200 clients moved between {:?} and {:?} after node-1 left",
        first.saturating_duration_since(out_at),
        last.saturating_duration_since(out_at)
    );
    assert!(
        last.duration_since(first) >= Duration::from_secs(WINDOW_SECS) / 2,
        "the departures were not spread over the window"
    );
    assert!(last.saturating_duration_since(out_at) <= Duration::from_secs(WINDOW_SECS + 2));

    let _ = stop_tx.send(());
    while let Some(r) = staying.join_next().await {
        assert_eq!(
            r.unwrap(),
            "node-2",
            "a client of a healthy node was disturbed"
        );
    }
    drop(plane.shutdown());
    for n in nodes {
        n.shutdown().await;
    }
}
