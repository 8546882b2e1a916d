//! The echo node: the upstream the terminator tests and the proxy bench relay to. A
//! WebSocket server that echoes every message (fragmented ones reassembled into one frame),
//! answers pings and closes, and optionally greets each connection with its name first;
//! a JSON-RPC POST is answered with its own body once the client has half-closed.
//!
//! All nodes of one call share a thread with a single-threaded tokio runtime: thousands
//! of connections cost no threads, and the node keeps answering while the caller's thread
//! blocks (e.g. waits for a proxy to stop, which needs the node to see FINs).

use std::{io, net::SocketAddr};

use proxy::{
    handshake::accept_key,
    websocket::{self, close_code, Opcode},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Largest message a node takes (the tests send 3 MB ones).
const MAX_MESSAGE: u64 = 64 << 20;
/// Largest HTTP head a node reads.
const MAX_HEAD: usize = 16 * 1024;

/// One echo node on 127.0.0.1.
pub fn echo_node() -> SocketAddr {
    spawn_echo_nodes(&[None]).expect("start an echo node")[0]
}

/// Echo nodes that first send their name as a text message on every WebSocket connection,
/// so a client sees which node the proxy picked.
pub fn greeting_nodes(names: &[&str]) -> Vec<SocketAddr> {
    let greetings: Vec<Option<&str>> = names.iter().map(|n| Some(*n)).collect();
    spawn_echo_nodes(&greetings).expect("start greeting nodes")
}

/// One node per entry (with that greeting, if any), all on one new thread; their
/// addresses in order. They run until the process exits.
pub fn spawn_echo_nodes(greetings: &[Option<&str>]) -> io::Result<Vec<SocketAddr>> {
    let mut nodes = Vec::new();
    for g in greetings {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        nodes.push((l, g.map(str::to_string)));
    }
    let addrs = nodes
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<io::Result<_>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("echo-node".into())
        .spawn(move || {
            rt.block_on(async move {
                for (l, greeting) in nodes {
                    let Ok(l) = TcpListener::from_std(l) else {
                        return;
                    };
                    tokio::spawn(async move {
                        while let Ok((s, _)) = l.accept().await {
                            let greeting = greeting.clone();
                            tokio::spawn(async move {
                                let _ = serve(s, greeting.as_deref()).await;
                            });
                        }
                    });
                }
                std::future::pending::<()>().await;
            })
        })?;
    Ok(addrs)
}

/// Reads until `buf` holds a complete HTTP head; returns its length.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(p + 4);
        }
        if buf.len() >= MAX_HEAD {
            return Err(io::Error::other("head too large"));
        }
        buf.reserve(2048);
        if s.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn serve(mut s: TcpStream, greeting: Option<&str>) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let head_len = read_head(&mut s, &mut buf).await?;
    if buf.starts_with(b"POST ") {
        // Answers only after the client's FIN: proves the proxy relays a half-close.
        s.read_to_end(&mut buf).await?;
        let body = &buf[head_len..];
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        return s.shutdown().await;
    }
    let head = String::from_utf8_lossy(&buf[..head_len]);
    let key = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    });
    let Some(key) = key else {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return s.shutdown().await;
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    let mut out = answer.into_bytes();
    if let Some(g) = greeting {
        websocket::encode_frame(&mut out, true, Opcode::Text, g.as_bytes(), None);
    }
    buf.drain(..head_len);
    // A fragmented message being reassembled: its opcode and the payload so far.
    let mut message: Option<(Opcode, Vec<u8>)> = None;
    loop {
        loop {
            let frame = match websocket::parse_frame(&buf, MAX_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    websocket::encode_close(&mut out, close_code::PROTOCOL_ERROR, "", None);
                    s.write_all(&out).await?;
                    return Err(io::Error::other(e));
                }
            };
            let payload = frame.payload_unmasked(&buf);
            buf.drain(..frame.len());
            let h = frame.header;
            match h.opcode {
                Opcode::Close => {
                    websocket::encode_frame(&mut out, true, Opcode::Close, &payload, None);
                    s.write_all(&out).await?;
                    return s.shutdown().await;
                }
                Opcode::Ping => {
                    websocket::encode_frame(&mut out, true, Opcode::Pong, &payload, None)
                }
                Opcode::Pong => {}
                Opcode::Text | Opcode::Binary if h.fin => {
                    websocket::encode_frame(&mut out, true, h.opcode, &payload, None)
                }
                Opcode::Text | Opcode::Binary => message = Some((h.opcode, payload)),
                Opcode::Continuation => {
                    let Some((op, mut whole)) = message.take() else {
                        return Err(io::Error::other("continuation without a message"));
                    };
                    whole.extend_from_slice(&payload);
                    if h.fin {
                        websocket::encode_frame(&mut out, true, op, &whole, None);
                    } else {
                        message = Some((op, whole));
                    }
                }
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        buf.reserve(4096);
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
