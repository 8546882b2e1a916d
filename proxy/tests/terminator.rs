//! The terminator with real clients and servers on loopback, in both io modes: a
//! tungstenite WebSocket client (plain and over rustls) through the proxy to WebSocket echo
//! nodes.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use proxy::{
    handshake::Limits,
    terminator::{
        io::IoMode,
        server::Terminator,
        tls::{SniResolver, TlsAcceptor},
    },
    websocket::{encode_frame, Opcode},
};
use proxy_tests::{
    certs::TestCert,
    clients::{assert_binary_echo, assert_text_echo, ws_client, wss_client},
    echo::echo_node,
    procfs,
    tempdir::TempDir,
    terminator::{io_modes as modes, upstream_table, TerminatorBuilder, TestListener},
};
use tungstenite::Message;

/// The listener the tests start, relaying to `nodes`.
fn listener(nodes: &[(&str, SocketAddr)]) -> TestListener {
    TestListener::new("wss-test", upstream_table(nodes))
}

/// Two workers, 64 connections per client.
fn start(mode: IoMode, listener: TestListener) -> (Terminator, SocketAddr) {
    start_limited(mode, listener, 64)
}

fn start_limited(
    mode: IoMode,
    listener: TestListener,
    per_client: usize,
) -> (Terminator, SocketAddr) {
    let t = TerminatorBuilder::new(mode)
        .workers(2)
        .limits(1000, per_client)
        .listener(listener)
        .start()
        .expect("terminator starts");
    let addr = t.local_addrs[0];
    (t, addr)
}

#[test]
fn websocket_messages_pass_byte_exact_in_both_modes() {
    let node = echo_node();
    for mode in modes() {
        let (t, addr) = start(mode, listener(&[("node-a", node)]));
        let mut ws = ws_client(addr);
        ws.send(Message::text(
            "{\"id\":1,\"method\":\"call\",\"params\":[\"database\",\"get_chain_id\",[]]}",
        ))
        .unwrap();
        assert!(ws
            .read()
            .unwrap()
            .to_text()
            .unwrap()
            .contains("get_chain_id"));
        // A large message: many TCP segments and relay buffers.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_binary_echo(&mut ws, &big, &format!("{mode:?}"));
        // A fragmented message (continuation frames) passes untouched: the node reassembles.
        for i in 0..50 {
            let m = format!("message {i}");
            assert_text_echo(&mut ws, &m);
        }
        ws.close(None).unwrap();
        t.shutdown();
    }
}

#[test]
fn handshake_fed_byte_by_byte_then_fragmented_frames() {
    let node = echo_node();
    for mode in modes() {
        let (t, addr) = start(mode, listener(&[("node-a", node)]));
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        let head = "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        for b in head.as_bytes() {
            s.write_all(&[*b]).unwrap();
        }
        let mut resp = [0u8; 12];
        s.read_exact(&mut resp).unwrap();
        assert_eq!(&resp, b"HTTP/1.1 101", "{mode:?}");
        let mut rest = Vec::new();
        while !rest.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            rest.push(b[0]);
        }
        // "Hel" + "lo" as two masked frames (FIN=0 text, then FIN=1 continuation).
        let frame = |fin: bool, opcode: Opcode, payload: &[u8]| {
            let mut f = Vec::new();
            encode_frame(&mut f, fin, opcode, payload, Some([1, 2, 3, 4]));
            f
        };
        s.write_all(&frame(false, Opcode::Text, b"Hel")).unwrap();
        s.write_all(&frame(true, Opcode::Continuation, b"lo"))
            .unwrap();
        let mut echo = [0u8; 7];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(
            &echo, b"\x81\x05Hello",
            "{mode:?}: the node's unmasked reply"
        );
        drop(s);
        t.shutdown();
    }
}

#[test]
fn json_rpc_post_with_half_close() {
    let node = echo_node();
    for mode in modes() {
        let (t, addr) = start(mode, listener(&[("node-a", node)]));
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let body =
            r#"{"id":1,"method":"call","params":["database","get_dynamic_global_properties",[]]}"#;
        write!(s, "POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{mode:?}: {resp}");
        assert!(
            resp.ends_with(body),
            "{mode:?}: the answer after our FIN is lost: {resp}"
        );
        t.shutdown();
    }
}

#[test]
fn retries_another_node_when_the_chosen_one_refuses() {
    let node = echo_node();
    // A port with nothing listening: connection refused.
    let dead = {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    for mode in modes() {
        let (t, addr) = start(mode, listener(&[("dead", dead), ("alive", node)]));
        for _ in 0..5 {
            let mut ws = ws_client(addr);
            assert_text_echo(&mut ws, "ping");
        }
        t.shutdown();
    }
}

#[test]
fn rejects_bad_handshakes_with_fixed_texts() {
    let node = echo_node();
    for mode in modes() {
        let (t, addr) = start(mode, listener(&[("node-a", node)]));
        for (req, status) in [
            ("GET /admin HTTP/1.1\r\nHost: t\r\n\r\n", "404"),
            ("DELETE / HTTP/1.1\r\nHost: t\r\n\r\n", "405"),
            ("GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", "426"),
            ("\x16\x03\x01 not http\r\n\r\n", "400"),
        ] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{mode:?} {req:?} -> {resp:?}");
            assert!(!resp.contains("127.0.0.1"), "a backend address leaked: {resp}");
        }
        // Slowloris: a head that never ends gets 408 at the deadline.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
        let started = Instant::now();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 408"), "{mode:?}: {resp:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        t.shutdown();
    }
}

#[test]
fn idle_timeout_closes_both_sides() {
    let node = echo_node();
    for mode in modes() {
        let idle = Duration::from_millis(400);
        let (t, addr) = start(mode, listener(&[("node-a", node)]).idle_timeout(idle));
        let mut ws = ws_client(addr);
        assert_text_echo(&mut ws, "still here");
        let started = Instant::now();
        let r = ws.read();
        assert!(
            r.is_err() || r.unwrap().is_close(),
            "{mode:?}: idle connection not closed"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{mode:?}: {waited:?}"
        );
        t.shutdown();
    }
}

#[test]
fn per_client_limit_and_graceful_shutdown() {
    let node = echo_node();
    for mode in modes() {
        let (t, addr) = start_limited(mode, listener(&[("node-a", node)]), 2);
        let mut a = ws_client(addr);
        let _b = ws_client(addr);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            c.read(&mut buf).unwrap_or(0),
            0,
            "{mode:?}: a third connection from one client was served"
        );
        assert_text_echo(&mut a, "ok");
        // SIGTERM path: stop accepting; live connections are closed after the grace period.
        let started = Instant::now();
        t.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?}: shutdown hung"
        );
        let r = a.read();
        assert!(
            r.is_err() || r.unwrap().is_close(),
            "{mode:?}: live connection survived shutdown"
        );
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "{mode:?}: still accepting"
        );
    }
}

#[test]
fn tls_per_sni_certificates_and_reload_in_both_modes() {
    let node = echo_node();
    let dir = TempDir::new("certs").unwrap();
    let write_cert = |name: &str| TestCert::write(&dir.path().join(name), name).unwrap();
    for mode in modes() {
        let eu = write_cert("eu.example.test");
        let us = write_cert("us.example.test");
        let (eu_pem, us_pem) = (eu.cert_pem.as_bytes(), us.cert_pem.as_bytes());
        let resolver = SniResolver::load(&[eu.source(), us.source()], None).unwrap();
        let acceptor = TlsAcceptor::new(resolver.clone());
        let (t, addr) = start(mode, listener(&[("node-a", node)]).tls(acceptor));
        for (name, pem) in [("eu.example.test", eu_pem), ("us.example.test", us_pem)] {
            let mut ws =
                wss_client(addr, name, pem).unwrap_or_else(|e| panic!("{mode:?} {name}: {e}"));
            assert_text_echo(&mut ws, name);
        }
        // Unknown name: no certificate, the handshake fails with an alert.
        assert!(
            wss_client(addr, "other.example.test", eu_pem).is_err(),
            "{mode:?}"
        );
        // A live connection survives a certificate swap; new handshakes get the new one;
        // a broken file keeps the old certificate.
        let mut live = wss_client(addr, "eu.example.test", eu_pem).unwrap();
        let fresh = write_cert("eu.example.test");
        // Changes are seen by modification time: stamp them later instead of sleeping
        // past the file system's timestamp granularity.
        touch_later(&fresh.dir.join("fullchain.pem"), 10);
        touch_later(&fresh.dir.join("privkey.pem"), 10);
        let fresh_pem = fresh.cert_pem.as_bytes();
        assert_eq!(
            resolver.reload_changed(),
            vec!["eu.example.test".to_string()]
        );
        assert_text_echo(&mut live, "after reload");
        assert!(
            wss_client(addr, "eu.example.test", fresh_pem).is_ok(),
            "{mode:?}: new certificate not served"
        );
        assert!(
            wss_client(addr, "eu.example.test", eu_pem).is_err(),
            "{mode:?}: old certificate still served"
        );
        std::fs::write(fresh.dir.join("privkey.pem"), b"garbage").unwrap();
        touch_later(&fresh.dir.join("privkey.pem"), 20);
        assert!(resolver.reload_changed().is_empty());
        assert!(
            wss_client(addr, "eu.example.test", fresh_pem).is_ok(),
            "{mode:?}: broken file replaced a good certificate"
        );
        drop(live);
        t.shutdown();
    }
}

/// Sets a file's modification time `secs` seconds ahead of now.
fn touch_later(path: &std::path::Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}

fn rss_bytes() -> u64 {
    procfs::rss_bytes(std::process::id()).unwrap()
}

/// A node that pushes `total` bytes of binary messages as fast as the socket takes them,
/// like a subscription flood, and reports how much it managed to write.
fn pushing_node(total: usize) -> (SocketAddr, std::sync::mpsc::Receiver<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let tx = tx.clone();
            thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(s) else {
                    return;
                };
                let chunk = vec![0x5au8; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    if ws.send(Message::binary(chunk.clone())).is_err() {
                        break;
                    }
                    sent += chunk.len();
                    let _ = tx.send(sent);
                }
            });
        }
    });
    (addr, rx)
}

/// Runs the named test of this binary alone in a child process (for tests that measure the
/// process: its RSS must not include what parallel tests allocate). True in the child.
fn in_own_process(test: &str) -> bool {
    const ALONE: &str = "PROXY_TEST_IN_OWN_PROCESS";
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .status()
        .expect("re-run the test binary");
    assert!(status.success(), "{test} failed in its own process");
    false
}

#[test]
fn slow_reader_backpressure_keeps_memory_flat() {
    if !in_own_process("slow_reader_backpressure_keeps_memory_flat") {
        return;
    }
    for mode in modes() {
        let total = 256 * 1024 * 1024;
        let (node, progress) = pushing_node(total);
        let (t, addr) = start(mode, listener(&[("pusher", node)]));
        let mut ws = ws_client(addr);
        ws.send(Message::text("subscribe")).unwrap();
        let before = rss_bytes();
        // The client reads nothing for a while: the node must get stuck, not the proxy's
        // memory grow.
        thread::sleep(Duration::from_millis(1500));
        let mut pushed = 0;
        while let Ok(p) = progress.try_recv() {
            pushed = p;
        }
        let grown = rss_bytes().saturating_sub(before);
        assert!(
            pushed < total / 4,
            "{mode:?}: node pushed {pushed} bytes into a client that reads nothing"
        );
        assert!(
            grown < 16 * 1024 * 1024,
            "{mode:?}: memory grew {grown} bytes while the client was stalled"
        );
        // And the bytes are all there, in order, once the client reads.
        let mut got = 0usize;
        while got < 8 * 1024 * 1024 {
            let m = ws.read().unwrap().into_data();
            assert!(m.iter().all(|&b| b == 0x5a));
            got += m.len();
        }
        drop(ws);
        t.shutdown();
    }
}

/// The whole conformance table of hostile first requests, through real sockets, in both io
/// modes: each gets its exact status, a fixed text, and no backend address.
#[test]
fn conformance_table_through_the_server() {
    use proxy::handshake::conformance::hostile_cases;
    let node = echo_node();
    let cases: Vec<_> = hostile_cases()
        .into_iter()
        // Pipelined bytes are only seen when they arrive with the head: timing-dependent on a socket.
        .filter(|c| !c.trailing && c.limits == Limits::default())
        .collect();
    assert!(
        cases.len() >= 60,
        "only {} cases apply with default limits",
        cases.len()
    );
    for mode in modes() {
        let (t, addr) = start(mode, listener(&[("node-a", node)]));
        for c in &cases {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&c.req).unwrap();
            let mut resp = Vec::new();
            let _ = s.read_to_end(&mut resp);
            let text = String::from_utf8_lossy(&resp);
            assert!(
                text.starts_with(&format!("HTTP/1.1 {} ", c.status)),
                "{mode:?} {}: want {}, got {:?}",
                c.name,
                c.status,
                text.lines().next()
            );
            for (name, value) in &c.extra {
                assert!(
                    text.contains(&format!("{name}: {value}\r\n")),
                    "{mode:?} {}: missing {name}: {text}",
                    c.name
                );
            }
            assert!(
                !text.contains("127.0.0.1"),
                "{mode:?} {}: address leaked",
                c.name
            );
        }
        t.shutdown();
    }
}

/// One worker serving two listeners: graceful shutdown still finds every live connection
/// (they share the worker's registry, so their ids must not collide).
#[test]
fn shutdown_closes_live_connections_of_every_listener() {
    let node = echo_node();
    for mode in modes() {
        let spec = |name: &str| {
            TestListener::new(name, upstream_table(&[("node-a", node)])).timeouts(
                Duration::from_secs(2),
                Duration::from_millis(500),
                Duration::from_secs(30),
            )
        };
        let t = TerminatorBuilder::new(mode)
            .limits(100, 100)
            .listener(spec("a"))
            .listener(spec("b"))
            .start()
            .unwrap();
        let mut a = ws_client(t.local_addrs[0]);
        let mut b = ws_client(t.local_addrs[1]);
        for ws in [&mut a, &mut b] {
            assert_text_echo(ws, "hi");
        }
        let started = Instant::now();
        t.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?}: shutdown hung"
        );
        for ws in [&mut a, &mut b] {
            let r = ws.read();
            assert!(
                r.is_err() || r.unwrap().is_close(),
                "{mode:?}: a live connection survived shutdown"
            );
        }
    }
}
