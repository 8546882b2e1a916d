//! End to end through real kernels: client namespace → balancer namespace (XDP attached
//! natively on its veths) → backend namespaces running real TCP servers.
//!
//! One test (the steps share one lab): spread of 3,000 connections by weight, then
//! long-lived connections that keep exchanging data while a backend is added and another
//! drained, then new connections that avoid the drained one.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use proxy::{
    balancer::Balancer,
    config::Config,
    ebpf::{AttachMode, DataPlane, LoadOptions},
};
use proxy_common::backend_counter_index;
use proxy_tests::{
    config::{Backend, ConfigBuilder},
    netns::{self, NetNs},
    topology::{self, Lab},
};

const PORT: u16 = 80;
const NODE_PORT: u16 = 8080;
const POOL: &str = "e2e";

/// A TCP server in `ns` that greets each connection with its name, then echoes.
fn start_node_server(ns: &NetNs, addr: Ipv4Addr, name: String) {
    let listener = netns::run_in(ns, move || TcpListener::bind((addr, NODE_PORT)))
        .expect("enter node namespace")
        .expect("bind node server");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let name = name.clone();
            thread::spawn(move || {
                if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

fn config_text(lab: &Lab, pin_dir: &str) -> String {
    let backends: Vec<Backend> = lab
        .nodes
        .iter()
        .zip([100, 100, 200])
        .map(|(node, weight)| {
            let address = format!("{}:{NODE_PORT}", node.addr);
            Backend::new(format!("node-{}", node.index), address).weight(weight)
        })
        .collect();
    ConfigBuilder::new(&lab.lb_interfaces())
        .set("balancer", "snat_v4", topology::SNAT_ADDR.to_string())
        .set("balancer", "nat_ports", vec![10000, 60000])
        .set("balancer", "ring_size", 65537)
        .set("balancer", "pin_dir", pin_dir)
        .listener("rpc", format!("{}:{PORT}", topology::VIP), "l4", POOL)
        .pool(POOL, &backends)
        .text()
}

/// Connects from the client namespace and returns the greeting's node name.
fn connect(stream: &mut TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("greeting from node");
    line.trim().to_string()
}

fn spread(client: &NetNs, count: usize) -> BTreeMap<String, usize> {
    netns::run_in(client, move || {
        let vip = SocketAddr::from((topology::VIP, PORT));
        let mut by_node = BTreeMap::new();
        for i in 0..count {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i} to the VIP failed: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            *by_node.entry(connect(&mut s)).or_insert(0) += 1;
        }
        by_node
    })
    .expect("enter client namespace")
}

/// Removes the test's pinned maps even when the test fails.
struct PinGuard(String);
impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = DataPlane::remove_pins(std::path::Path::new(&self.0));
    }
}

#[test]
fn l4_balancing_add_and_drain_without_breaking_connections() {
    let tag = format!("{}e", netns::unique_prefix());
    let mut lab = Lab::new(&tag, 3).expect("lab");
    for node in &lab.nodes {
        start_node_server(&node.ns, node.addr, format!("node-{}", node.index));
    }
    let pin_dir = format!("/sys/fs/bpf/{tag}");
    let _pins = PinGuard(pin_dir.clone());
    let config = Config::parse(&config_text(&lab, &pin_dir), "e2e").expect("config");

    let ifaces = lab.lb_interfaces();
    let (mut dp, mut balancer) = netns::run_in(&lab.lb, move || {
        let b = &config.balancer;
        let mut dp = DataPlane::load(&LoadOptions::from_config(b)).expect("load XDP");
        let balancer = Balancer::from_config(&config, &mut dp).expect("initial maps");
        for iface in &ifaces {
            let mode = dp.attach(iface).expect("attach");
            assert_eq!(
                mode,
                AttachMode::Native,
                "veth supports native XDP; {iface} fell back"
            );
        }
        (dp, balancer)
    })
    .expect("enter balancer namespace");

    // 1. Spread by weight (100:100:200), within ±10% of each node's share.
    let total = 3000;
    let by_node = spread(&lab.client, total);
    let expected = [("node-1", 0.25), ("node-2", 0.25), ("node-3", 0.5)];
    for (name, share) in expected {
        let got = *by_node.get(name).unwrap_or(&0) as f64;
        let want = share * total as f64;
        assert!(
            (got - want).abs() <= 0.10 * want,
            "{name}: {got} connections, want {want} ±10%; all: {by_node:?}"
        );
    }
    assert_eq!(by_node.values().sum::<usize>(), total);
    let vip_counters = dp.counters(0).unwrap();
    assert!(vip_counters.new_flows >= total as u64, "{vip_counters:?}");

    // 2. Long-lived connections exchange data while node-4 is added and node-1 drained.
    let long_lived = 40;
    let streams: Vec<TcpStream> = netns::run_in(&lab.client, move || {
        (0..long_lived)
            .map(|_| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((topology::VIP, PORT)),
                    Duration::from_secs(5),
                )
                .expect("long-lived connect")
            })
            .collect()
    })
    .expect("enter client namespace");
    let stop = Arc::new(AtomicBool::new(false));
    let exchanged = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        let stop = stop.clone();
        let exchanged = exchanged.clone();
        workers.push(thread::spawn(move || -> Result<(String, u64), String> {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let node = connect(&mut s);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("conn {i:03} message {n:08}\n");
                s.write_all(msg.as_bytes())
                    .map_err(|e| format!("conn {i} ({node}) write: {e}"))?;
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back)
                    .map_err(|e| format!("conn {i} ({node}) read after {n}: {e}"))?;
                if back != msg.as_bytes() {
                    return Err(format!("conn {i} ({node}): echo mismatch at {n}"));
                }
                n += 1;
                exchanged.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
            Ok((node, n))
        }));
    }
    thread::sleep(Duration::from_millis(500));

    let n4 = lab.add_node().expect("node 4");
    let node4 = &lab.nodes[n4 - 1];
    start_node_server(&node4.ns, node4.addr, "node-4".into());
    let dev = topology::lb_node_dev(n4);
    dp = netns::run_in(&lab.lb, move || {
        dp.attach(&dev).expect("attach node-4 link");
        dp
    })
    .expect("enter balancer namespace");
    balancer
        .add_backend(
            POOL,
            "node-4",
            SocketAddr::from((node4.addr, NODE_PORT)),
            100,
            &mut dp,
        )
        .expect("add node-4");
    thread::sleep(Duration::from_millis(500));
    let before_drain = exchanged.load(Ordering::Relaxed);
    balancer
        .set_weight(POOL, "node-1", 0, &mut dp)
        .expect("drain node-1");
    let node1_id = balancer
        .backends(POOL)
        .unwrap()
        .iter()
        .find(|b| b.name == "node-1")
        .unwrap()
        .id;
    let node1_flows_at_drain = dp
        .counters(backend_counter_index(node1_id))
        .unwrap()
        .new_flows;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let mut on_node1 = 0;
    for w in workers {
        let (node, n) = w
            .join()
            .expect("worker panicked")
            .expect("a long-lived connection broke");
        assert!(n > 50, "a connection to {node} only exchanged {n} messages");
        if node == "node-1" {
            on_node1 += 1;
        }
    }
    assert!(
        on_node1 > 0,
        "no long-lived connection landed on node-1; the drain was not exercised"
    );
    assert!(
        exchanged.load(Ordering::Relaxed) > before_drain + long_lived as u64,
        "traffic stalled after the drain"
    );

    // 3. New connections avoid the drained node and reach the added one.
    let after = spread(&lab.client, 600);
    assert_eq!(
        after.get("node-1"),
        None,
        "drained node-1 got new connections: {after:?}"
    );
    let n4_share = *after.get("node-4").unwrap_or(&0);
    assert!(
        n4_share >= 75,
        "node-4 got {n4_share} of 600 (expected about 150): {after:?}"
    );
    let node1_flows_now = dp
        .counters(backend_counter_index(node1_id))
        .unwrap()
        .new_flows;
    assert_eq!(
        node1_flows_now, node1_flows_at_drain,
        "the kernel pinned new flows to drained node-1"
    );

    dp.detach_all();
}
