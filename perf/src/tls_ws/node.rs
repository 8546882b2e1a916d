//! The node behind every peer in the `tls-ws` bench: a WebSocket server that echoes calls
//! (ping-pong and connection cycles) and, like a BitShares node, answers
//! `set_subscribe_callback` and `get_objects ["2.1.0"]` and then pushes notices for that
//! object; here as fast as the connection takes them (the push case measures how many
//! notices a proxy relays per second, not a chain's block rate).
//!
//! It runs on its own thread with a single-threaded tokio runtime, on the load generator's
//! CPU (the thread inherits the bench's CPU affinity), so what it costs is on the load
//! generator's side of the figures.

use std::{io, net::SocketAddr};

use proxy::{
    handshake::accept_key,
    websocket::{self, Opcode},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedWriteHalf, TcpListener, TcpStream},
    sync::mpsc,
};

/// Largest message the node takes.
const MAX_MESSAGE: u64 = 1 << 20;
/// Notices per write while pushing.
const PUSH_BATCH: usize = 8;

/// Starts the node on 127.0.0.1 (a free port); it runs until the process exits.
pub fn spawn_bench_node() -> io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("bench-node".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(l) = TcpListener::from_std(l) else {
                    return;
                };
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = serve(s).await;
                    });
                }
            })
        })?;
    Ok(addr)
}

enum Out {
    Frame(Vec<u8>),
    StartPush,
    Close(Vec<u8>),
}

async fn serve(s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let (mut r, mut w) = s.into_split();
    let mut buf = Vec::with_capacity(4096);
    let head_len = loop {
        if let Some(p) = buf.windows(4).position(|x| x == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 16 * 1024 || r.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    buf.drain(..head_len);
    let Some(key) = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    }) else {
        w.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    w.write_all(resp.as_bytes()).await?;

    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(w, rx));
    loop {
        let Some(f) = websocket::parse_frame(&buf, MAX_MESSAGE).map_err(io::Error::other)? else {
            buf.reserve(4096);
            if r.read_buf(&mut buf).await? == 0 {
                break;
            }
            continue;
        };
        let mut payload = buf[f.payload.clone()].to_vec();
        if let Some(mask) = f.header.mask {
            websocket::apply_mask(&mut payload, mask);
        }
        buf.drain(..f.len());
        let out = match f.header.opcode {
            Opcode::Close => {
                let _ = tx.send(Out::Close(payload));
                break;
            }
            Opcode::Ping => frame(Opcode::Pong, &payload),
            Opcode::Text if contains(&payload, b"set_subscribe_callback") => {
                frame(Opcode::Text, &answer(&payload, "null"))
            }
            Opcode::Text if contains(&payload, b"get_objects") => {
                let _ = tx.send(Out::Frame(frame(
                    Opcode::Text,
                    &answer(&payload, &format!("[{}]", object(0))),
                )));
                let _ = tx.send(Out::StartPush);
                continue;
            }
            Opcode::Text | Opcode::Binary => frame(f.header.opcode, &payload),
            _ => continue,
        };
        if tx.send(Out::Frame(out)).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Writes answers in order; once pushing, writes notices whenever no answer waits.
async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Out>) -> io::Result<()> {
    let mut pushing = false;
    let mut n: u64 = 1;
    let mut batch = Vec::new();
    loop {
        let next = if pushing {
            match rx.try_recv() {
                Ok(o) => Some(o),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
            }
        } else {
            match rx.recv().await {
                Some(o) => Some(o),
                None => return Ok(()),
            }
        };
        match next {
            Some(Out::Frame(f)) => w.write_all(&f).await?,
            Some(Out::StartPush) => pushing = true,
            Some(Out::Close(payload)) => {
                w.write_all(&frame(Opcode::Close, &payload)).await?;
                let _ = w.shutdown().await;
                return Ok(());
            }
            None => {
                batch.clear();
                for _ in 0..PUSH_BATCH {
                    let notice = format!(r#"{{"method":"notice","params":[7,[[{}]]]}}"#, object(n));
                    websocket::encode_frame(
                        &mut batch,
                        true,
                        Opcode::Text,
                        notice.as_bytes(),
                        None,
                    );
                    n += 1;
                }
                w.write_all(&batch).await?;
            }
        }
    }
}

fn frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    websocket::encode_frame(&mut out, true, opcode, payload, None);
    out
}

/// `{"id":<the call's id>,"jsonrpc":"2.0","result":<result>}`.
fn answer(call: &[u8], result: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(call);
    let id = text
        .split_once("\"id\":")
        .map(|(_, rest)| {
            rest.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "0".into());
    format!(r#"{{"id":{id},"jsonrpc":"2.0","result":{result}}}"#).into_bytes()
}

/// The dynamic global properties object (2.1.0) at head block `n`: what a node pushes to
/// every subscribed wallet each block (about 400 bytes).
fn object(n: u64) -> String {
    format!(
        r#"{{"id":"2.1.0","head_block_number":{},"head_block_id":"{:040x}","time":"2026-12-02T12:00:00","current_witness":"1.6.{}","next_maintenance_time":"2026-12-02T13:00:00","last_budget_time":"2026-12-02T12:00:00","witness_budget":90000000,"accounts_registered_this_interval":{},"recently_missed_count":0,"current_aslot":{},"recent_slots_filled":"340282366920938463463374607431768211455","dynamic_flags":0,"last_irreversible_block_num":{}}}"#,
        70_000_000 + n,
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        n % 27,
        n % 50,
        80_000_000 + n,
        70_000_000 + n.saturating_sub(15)
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_the_call_id() {
        let a = answer(br#"{"id":102,"method":"call","params":[]}"#, "[1]");
        assert_eq!(a, br#"{"id":102,"jsonrpc":"2.0","result":[1]}"#);
        assert!(String::from_utf8(answer(b"{}", "null"))
            .unwrap()
            .starts_with(r#"{"id":0,"#));
        assert!(object(5).contains(r#""head_block_number":70000005"#));
    }
}
