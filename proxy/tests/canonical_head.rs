//! What a real node receives through the terminator: the canonical head the validator
//! accepted, never the client's bytes. A raw TCP "node" records every byte the proxy sends
//! it and answers like a node would (101, or 200 to a POST); each row of the normalised
//! table goes through both io modes.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{mpsc, Arc, Once},
    thread,
    time::Duration,
};

use proxy::{
    handshake::{accept_key, conformance::normalised_cases, Limits},
    maglev::{MaglevRing, RingMember},
    terminator::{
        handler::ListenerCtx,
        io::IoMode,
        server::{ConnLimits, ListenerSpec, Terminator},
        upstream::{Upstream, UpstreamSet, UpstreamTable},
    },
};

/// Reads one request (head and `Content-Length` body) and returns its bytes and the head
/// fields, or `None` if the peer closed first.
fn read_request(s: &mut TcpStream) -> Option<(Vec<u8>, HashMap<String, String>)> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = req.parse(&got) {
            let fields: HashMap<String, String> = req
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect();
            let body_len: usize = fields
                .get("content-length")
                .map_or(0, |v| v.parse().unwrap());
            if got.len() >= head_len + body_len {
                return Some((got, fields));
            }
        }
    }
}

/// A node that sends every request's bytes to the returned channel, then answers it.
fn recording_node() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let Some((bytes, fields)) = read_request(&mut s) else {
                continue;
            };
            let answer = match fields.get("sec-websocket-key") {
                Some(key) => format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(key)
                ),
                None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_owned(),
            };
            let _ = s.write_all(answer.as_bytes());
            let _ = tx.send(bytes);
        }
    });
    (addr, rx)
}

fn one_node(addr: SocketAddr) -> UpstreamTable {
    let mut ring = MaglevRing::new(1009).unwrap();
    ring.rebuild(&[RingMember {
        id: 0,
        name: "node-a".into(),
        weight: 1,
    }])
    .unwrap();
    let up = Upstream {
        id: 0,
        name: "node-a".into(),
        addr,
    };
    UpstreamTable::new(UpstreamSet {
        ring,
        backends: HashMap::from([(0, up)]),
    })
}

fn start(mode: IoMode, upstreams: UpstreamTable) -> (Terminator, SocketAddr) {
    static CRYPTO: Once = Once::new();
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
    let ctx = Arc::new(ListenerCtx {
        name: "canonical-test".into(),
        observe: Default::default(),
        limits: Limits::default(),
        upstreams,
        handshake_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(10),
    });
    let spec = ListenerSpec {
        addr: "127.0.0.1:0".parse().unwrap(),
        ctx,
        tls: None,
    };
    let t = Terminator::start(
        mode,
        1,
        vec![spec],
        ConnLimits::new(100, 16),
        Duration::from_millis(300),
    )
    .expect("terminator starts");
    let addr = t.local_addrs[0];
    (t, addr)
}

#[test]
fn the_node_receives_the_canonical_head_in_both_modes() {
    let cases = normalised_cases();
    let (node, received) = recording_node();
    for mode in [IoMode::Epoll, IoMode::Uring] {
        let (t, addr) = start(mode, one_node(node));
        for c in &cases {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&c.req).unwrap();
            let got = received
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("{mode:?} {}: nothing reached the node", c.name));
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&c.forwarded),
                "{mode:?} {}",
                c.name
            );
            // The client gets the node's answer: the request really was relayed.
            let mut answer = [0u8; 12];
            s.read_exact(&mut answer).unwrap();
            let status = if c.req.starts_with(b"POST") {
                b"HTTP/1.1 200"
            } else {
                b"HTTP/1.1 101"
            };
            assert_eq!(&answer, status, "{mode:?} {}", c.name);
        }
        t.shutdown();
    }
}
