//! 1,000 live WebSocket connections keep exchanging messages across a reload that adds one
//! backend and drains another: zero dropped, zero messages lost; new connections follow the
//! new pool. The reload is the event `proxy run` sends its `ControlPlane` on SIGHUP, with the
//! plane writing to in-memory maps. A second test adds, removes and replaces listeners under
//! live connections.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use proxy::{
    balancer::{PoolChange, PoolChangeKind},
    config::{Config, IoChoice},
    plane::{Event, ListenerChangeKind, Outcome, ReloadChanges},
};
use proxy_tests::{
    clients::{ws_client_from, WsClient},
    config::{Backend, ConfigBuilder},
    echo::greeting_nodes,
    plane::{start_plane, TestPlane},
    ports::{free_port, free_ports_on},
    terminator::init_crypto,
};
use tungstenite::Message;

fn config(port: u16, nodes: &[(&str, SocketAddr, u32)]) -> Config {
    let backends: Vec<Backend> = nodes
        .iter()
        .map(|(n, a, w)| Backend::new(*n, a).weight(*w))
        .collect();
    ConfigBuilder::loopback()
        .terminator(2, 2)
        .connection_limits(4000, 4000)
        .listener("wss", format!("127.0.0.1:{port}"), "ws", "eu")
        .pool("eu", &backends)
        .build("reload test")
}

/// What SIGHUP does once the file is parsed.
fn reload(plane: &mut TestPlane, config: &Config) -> ReloadChanges {
    match plane.handle(Event::Reload(Box::new(config.clone())), 0) {
        Outcome::Reloaded(Ok(changes)) => changes,
        other => panic!("reload: {other:?}"),
    }
}

/// Connects from 127.0.0.`src`: different client addresses land on different nodes, as
/// real clients do.
fn connect_from(src: u8, addr: SocketAddr) -> (WsClient, String) {
    try_connect_from(src, addr).unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// Connects and reads the node's greeting (its name).
fn try_connect_from(src: u8, addr: SocketAddr) -> Result<(WsClient, String), String> {
    let mut ws = ws_client_from(src, addr, Duration::from_secs(10))?;
    let greeting = ws.read().map_err(|e| format!("greeting: {e}"))?;
    Ok((ws, greeting.into_text().unwrap().to_string()))
}

#[test]
fn thousand_connections_survive_a_reload_that_adds_and_drains() {
    init_crypto();
    let nodes = greeting_nodes(&["node-a", "node-b", "node-c"]);
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

    for mode in [IoChoice::Epoll, IoChoice::Uring] {
        let (mut plane, _inputs, addr) = start_plane(&before, mode, 0, "wss");

        // 1,000 connections over 10 client threads.
        let stop = Arc::new(AtomicBool::new(false));
        let exchanged = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut workers = Vec::new();
        for w in 0..10 {
            let (stop, exchanged, ready_tx) = (stop.clone(), exchanged.clone(), ready_tx.clone());
            workers.push(thread::spawn(
                move || -> Result<BTreeMap<String, usize>, String> {
                    let mut conns: Vec<(WsClient, String)> = (0..100u8)
                        .map(|i| connect_from((2 + (w * 100 + i as usize) % 250) as u8, addr))
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
        let changes = reload(&mut plane, &after);
        let eu = |kind| PoolChange {
            pool: "eu".into(),
            kind,
        };
        assert_eq!(
            changes.pools,
            [
                eu(PoolChangeKind::Reweighted {
                    name: "node-a".into(),
                    from: 100,
                    to: 0
                }),
                eu(PoolChangeKind::BackendAdded {
                    name: "node-c".into()
                }),
            ]
        );
        assert!(changes.listeners.is_empty(), "{changes:?}");
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
        plane.shutdown();
    }
}

fn listeners_config(listeners: &[(&str, u16, &str)], nodes: &[SocketAddr]) -> Config {
    let mut b = ConfigBuilder::loopback().terminator(1, 3);
    for (name, port, pool) in listeners {
        b = b.listener(name, local(*port), "ws", pool);
    }
    b.pool("eu", &[Backend::new("node-a", nodes[0])])
        .pool("us", &[Backend::new("node-b", nodes[1])])
        .build("listener reload test")
}

/// The listener test's own loopback address: the terminator binds with `SO_REUSEPORT`, so a
/// port handed out twice on one address would join the other test's listener.
const LISTENER_IP: [u8; 4] = [127, 0, 1, 1];

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((LISTENER_IP, port))
}

/// Waits until nothing accepts on `port` any more (the stopped instance's workers notice
/// within a poll interval).
fn wait_refused(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(local(port)).is_err() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port} still accepts after its listener was removed");
}

fn echo(ws: &mut WsClient, what: &str) -> Result<(), String> {
    ws.send(Message::text(what)).map_err(|e| e.to_string())?;
    match ws.read().map_err(|e| e.to_string())? {
        m if m.to_text().ok() == Some(what) => Ok(()),
        m => Err(format!("got {m:?}")),
    }
}

#[test]
fn reload_adds_removes_and_replaces_listeners_without_touching_the_others() {
    init_crypto();
    let nodes = greeting_nodes(&["node-a", "node-b"]);
    let [keep, gone, moved_from, moved_to, repooled, added] = free_ports_on(LISTENER_IP.into());
    let before = listeners_config(
        &[
            ("keep", keep, "eu"),
            ("gone", gone, "eu"),
            ("moved", moved_from, "eu"),
            ("repooled", repooled, "eu"),
        ],
        &nodes,
    );
    let after = listeners_config(
        &[
            ("keep", keep, "eu"),
            ("moved", moved_to, "eu"),
            ("repooled", repooled, "us"),
            ("added", added, "eu"),
        ],
        &nodes,
    );
    let (mut plane, _inputs, _) = start_plane(&before, IoChoice::Epoll, 0, "keep");
    // One live connection on every listener of the old file.
    let mut live: Vec<(u16, WsClient)> = [keep, gone, moved_from, repooled]
        .into_iter()
        .map(|port| {
            let (ws, node) = connect_from(2, local(port));
            assert_eq!(node, "node-a");
            (port, ws)
        })
        .collect();

    let changes = reload(&mut plane, &after);
    let kinds: Vec<(&str, ListenerChangeKind)> = changes
        .listeners
        .iter()
        .map(|c| (c.name.as_str(), c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("moved", ListenerChangeKind::Changed),
            ("repooled", ListenerChangeKind::Changed),
            ("added", ListenerChangeKind::Added),
            ("gone", ListenerChangeKind::Removed),
        ]
    );
    assert!(
        changes.pools.is_empty() && changes.failures.is_empty(),
        "{changes:?}"
    );
    assert_eq!(plane.listener("repooled").unwrap().pool, "us");

    // Removed and moved listeners stop accepting ...
    wait_refused(gone);
    wait_refused(moved_from);
    // ... while every live connection carries on: on listeners that went or changed (within
    // the shutdown grace) and on the one that did not change.
    for (port, ws) in &mut live {
        echo(ws, "still here").unwrap_or_else(|e| panic!("live connection on {port}: {e}"));
    }
    // New and moved listeners accept; the unchanged one still does.
    for port in [moved_to, added, keep] {
        assert_eq!(connect_from(3, local(port)).1, "node-a", "port {port}");
    }
    // The re-pooled listener (same address) sends new clients to its new pool once the old
    // instance has stopped accepting.
    let mut switched = false;
    for _ in 0..100 {
        if let Ok((_, node)) = try_connect_from(4, local(repooled)) {
            if node == "node-b" {
                switched = true;
                break;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(switched, "the re-pooled listener never served its new pool");
    for i in 0..20 {
        let (_, node) = connect_from(5 + i, local(repooled));
        assert_eq!(node, "node-b", "a new client reached the old instance");
    }
    // Reloading the same file again changes nothing.
    assert!(reload(&mut plane, &after).is_empty());
    drop(live);
    plane.shutdown();
}
