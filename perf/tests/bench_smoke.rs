//! The load generator and the TLS WebSocket bench, really run: `wss-load` against a
//! simulated BitShares node in every mode, and `tls-ws-bench` in a tiny configuration
//! against every peer (this proxy in both io modes, HAProxy and nginx, which `cargo xtask
//! setup` installs), checking what they write.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct NodeSim(Child);

impl Drop for NodeSim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node-sim with 50 ms blocks on a free port; waits until it accepts.
fn node_sim() -> (NodeSim, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_node-sim"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--block-interval-ms", "50"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start node-sim");
    let node = NodeSim(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "node-sim does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (node, port)
}

fn wss_load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wss-load"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run wss-load")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "wss-load failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("wss-load --json prints JSON")
}

#[test]
fn wss_load_drives_a_node_in_every_mode_and_refuses_bad_input() {
    let (_node, port) = node_sim();
    let url = format!("ws://127.0.0.1:{port}/ws");
    for (mode, at_least) in [("pingpong", 100), ("cycles", 20), ("subscribe", 20)] {
        let v = json_of(&wss_load(&[
            &url, "--mode", mode, "-c", "4", "-d", "1", "--json",
        ]));
        let ops = v["ops"].as_u64().unwrap();
        assert!(ops >= at_least, "{mode}: only {ops} operations: {v}");
        assert_eq!(v["errors"], 0, "{mode}: {v}");
        if mode != "subscribe" {
            let p50 = v["latency_us"]["p50"].as_f64().unwrap();
            let p99 = v["latency_us"]["p99"].as_f64().unwrap();
            assert!(p50 > 0.0 && p99 >= p50, "{mode}: {v}");
        }
    }
    // A paced run keeps to its rate (2 clients, 100/s for 1 s: about 100 calls).
    let v = json_of(&wss_load(&[
        &url, "-c", "2", "-d", "1", "--rate", "100", "--json",
    ]));
    let ops = v["ops"].as_u64().unwrap();
    assert!((80..=110).contains(&ops), "paced at 100/s, got {ops}");
    // A call mix: every message is sent (node-sim answers each with its own id).
    let v = json_of(&wss_load(&[
        &url,
        "-c",
        "1",
        "--max-ops",
        "10",
        "-m",
        r#"{"id":1,"method":"call","params":["database","get_chain_id",[]]}"#,
        "-m",
        r#"{"id":2,"method":"call","params":["database","get_dynamic_global_properties",[]]}"#,
        "--json",
    ]));
    assert_eq!(v["ops"], 10, "{v}");

    let bad = wss_load(&["https://example.org/"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("must start with wss:// or ws://"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // TLS to a plain WebSocket port: a clear handshake error, nothing counted as done.
    let tls = wss_load(&[&format!("wss://127.0.0.1:{port}/"), "--insecure", "-d", "1"]);
    assert!(!tls.status.success());
    let err = String::from_utf8_lossy(&tls.stderr);
    assert!(err.contains("TLS handshake"), "{err}");
}

fn bench(out: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_tls-ws-bench"))
        .arg("--out-dir")
        .arg(out)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run tls-ws-bench");
    assert!(
        o.status.success(),
        "tls-ws-bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn cases(path: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("results written")).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn value(cases: &[serde_json::Value], name: &str, peer: &str) -> f64 {
    cases
        .iter()
        .find(|c| c["name"] == name && c["peer"] == peer)
        .unwrap_or_else(|| panic!("no {name} for {peer}"))["value"]
        .as_f64()
        .unwrap()
}

#[test]
fn the_tls_ws_bench_measures_every_peer_with_the_same_load() {
    let dir = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
    let peers = ["xdp-proxy", "xdp-proxy-uring", "haproxy", "nginx"];
    bench(
        &dir,
        &[
            "--quick",
            "--seconds",
            "0.4",
            "--clients",
            "10,40",
            "--push-clients",
            "40",
            "--cycle-concurrency",
            "4",
        ],
    );
    let c = cases(&dir.join("tls-ws.json"));
    for p in peers {
        for case in [
            "cycles_per_s",
            "msgs_10_per_s",
            "msgs_40_per_s",
            "push_40_per_s",
        ] {
            assert!(value(&c, case, p) > 0.0, "{case} {p}");
        }
        assert!(value(&c, "msgs_40_p99_us", p) >= value(&c, "msgs_40_p50_us", p));
        let cpu = value(&c, "msgs_10_peer_cpu", p);
        assert!(cpu > 0.0 && cpu <= 110.0, "{p}: peer CPU {cpu}%");
    }
    // Ratios: this proxy (epoll) over each other peer, on the peer rows.
    let r = c
        .iter()
        .find(|x| x["name"] == "cycles_per_s" && x["peer"] == "haproxy")
        .unwrap();
    let expect = value(&c, "cycles_per_s", "xdp-proxy") / value(&c, "cycles_per_s", "haproxy");
    assert!((r["ratio"].as_f64().unwrap() - expect).abs() < 0.01 * expect);
    for svg in [
        "tls-ws-latency-10.svg",
        "tls-ws-throughput.svg",
        "tls-ws-cycles.svg",
    ] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("HAProxy 2.6"),
            "{svg}"
        );
    }
    let md = std::fs::read_to_string(dir.join("tls-ws.md")).unwrap();
    assert!(
        md.contains("| vs haproxy |") && md.contains("| vs nginx |"),
        "{md}"
    );

    bench(
        &dir,
        &[
            "--scenario",
            "idle",
            "--idle-counts",
            "60",
            "--warm-conns",
            "5",
        ],
    );
    let c = cases(&dir.join("idle.json"));
    for p in peers {
        let b = value(&c, "idle_60_bytes_per_conn", p);
        // An idle TLS WebSocket costs every peer something, and not megabytes.
        assert!(b > 0.0 && b < 1_000_000.0, "{p}: {b} B per idle connection");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
