//! The API listener: accepting (and refusing), HTTP POST JSON-RPC, WebSocket
//! sessions with pushed notices, the block ticker, and `Die`.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::http::{self, Head};
use super::rpc::{self, RpcCtx, Session};
use super::{AcceptorCmd, Shared};

/// Idle limit while waiting for (the rest of) an HTTP request.
const IDLE: Duration = Duration::from_secs(60);
/// Largest HTTP request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

impl Shared {
    /// Answers one request (or batch) against the currently reported head.
    pub(crate) fn answer(&self, sess: &mut Session, text: &[u8]) -> String {
        let head = self.head_tx.borrow().clone();
        let ctx = RpcCtx {
            chain: &self.chain,
            head: &head,
            statics: &self.statics,
            now_ms: self.now_ms(),
            node_name: &self.name,
        };
        rpc::handle_text(&ctx, sess, text)
    }

    fn slow(&self) -> Duration {
        Duration::from_millis(self.slow_ms.load(Ordering::Relaxed))
    }
}

/// Owns the API listener; drops it on `Refuse` and binds the same address again on `Accept`.
pub(crate) async fn acceptor(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut cmds: mpsc::Receiver<AcceptorCmd>,
) {
    let mut listener = Some(listener);
    let mut shutdown = shared.shutdown_tx.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let cmd = match &listener {
            Some(l) => tokio::select! {
                r = l.accept() => {
                    match r {
                        Ok((stream, peer)) => {
                            shared.connections_total.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(connection(stream, peer, shared.clone()));
                        }
                        Err(e) => {
                            // Out of descriptors and the like: back off a little.
                            debug!(node = %shared.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    continue;
                }
                c = cmds.recv() => c,
                _ = shutdown.changed() => break,
            },
            None => tokio::select! {
                c = cmds.recv() => c,
                _ = shutdown.changed() => break,
            },
        };
        match cmd {
            None => break,
            Some(AcceptorCmd::Refuse(ack)) => {
                if listener.take().is_some() {
                    debug!(node = %shared.name, addr = %shared.addr, "listener closed (refuse)");
                }
                let _ = ack.send(Ok(()));
            }
            Some(AcceptorCmd::Accept(ack)) => {
                let r = if listener.is_some() {
                    Ok(())
                } else {
                    match TcpListener::bind(shared.addr).await {
                        Ok(l) => {
                            debug!(node = %shared.name, addr = %shared.addr, "listening again (accept)");
                            listener = Some(l);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                };
                let _ = ack.send(r);
            }
        }
    }
}

/// Publishes the reported head whenever it changes: at each block slot, at
/// flap phase changes, and right after mode changes.
pub(crate) async fn ticker(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown_tx.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let next = shared.publish();
        let wait = (next - shared.now_ms()).clamp(1, 60_000) as u64;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = shared.wake.notified() => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// Counts a live connection for as long as it lives.
struct Live<'a>(&'a AtomicUsize);

impl<'a> Live<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Live(c)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _live = Live::new(&shared.connections);
    debug!(node = %shared.name, %peer, "connection opened");
    let _ = stream.set_nodelay(true);
    let mut die = shared.die_tx.subscribe();
    let mut shutdown = shared.shutdown_tx.subscribe();
    if *shutdown.borrow_and_update() {
        return;
    }
    die.borrow_and_update();
    let how = tokio::select! {
        r = serve(&mut stream, &shared) => match r {
            Ok(()) => "closed".to_string(),
            Err(e) => format!("error: {e}"),
        },
        _ = die.changed() => {
            // Abortive close: the peer sees a reset, as when a node crashes.
            let _ = stream.set_zero_linger();
            "killed (die)".to_string()
        }
        _ = shutdown.changed() => "shutdown".to_string(),
    };
    debug!(node = %shared.name, %peer, how, "connection ended");
}

/// Serves HTTP requests until the connection closes or upgrades to a WebSocket.
async fn serve(stream: &mut TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    loop {
        let Some(head) = http::read_head(stream, &mut buf, IDLE).await? else {
            return Ok(());
        };
        buf.drain(..head.len);
        if head.method == "GET" && head.has_token("upgrade", "websocket") {
            return serve_ws(stream, buf, head, shared).await;
        }
        let keep = head.keep_alive();
        if head.method != "POST" {
            let body = b"expected a JSON-RPC POST or a websocket upgrade\n";
            let status = if head.method == "GET" { 400 } else { 405 };
            let resp = http::response(status, "text/plain", body, false, &[("Allow", "GET, POST")]);
            stream.write_all(&resp).await?;
            return stream.shutdown().await;
        }
        let len = match head.content_length() {
            Ok(Some(n)) if n <= MAX_BODY => n,
            Ok(Some(_)) => return refuse_request(stream, 413).await,
            Ok(None) if head.header("transfer-encoding").is_some() => {
                return refuse_request(stream, 411).await
            }
            Ok(None) => 0,
            Err(()) => return refuse_request(stream, 400).await,
        };
        if buf.len() < len && head.has_token("expect", "100-continue") {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = http::read_body(stream, &mut buf, len, IDLE).await?;
        let mut sess = Session::new(false, shared.subscribers.clone());
        let answer = shared.answer(&mut sess, &body);
        let slow = shared.slow();
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        let resp = http::response(200, "application/json", answer.as_bytes(), keep, &[]);
        stream.write_all(&resp).await?;
        if !keep {
            return stream.shutdown().await;
        }
    }
}

async fn refuse_request(stream: &mut TcpStream, status: u16) -> io::Result<()> {
    let resp = http::response(status, "text/plain", b"", false, &[]);
    stream.write_all(&resp).await?;
    stream.shutdown().await
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

/// Completes the RFC 6455 handshake and runs a WebSocket JSON-RPC session.
async fn serve_ws(
    stream: &mut TcpStream,
    leftover: Vec<u8>,
    head: Head,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let (path, _) = http::split_target(&head.path);
    if path != "/" && path != "/ws" {
        return refuse_request(stream, 404).await;
    }
    if head.header("sec-websocket-version") != Some("13") {
        let resp = http::response(
            426,
            "text/plain",
            b"",
            false,
            &[("Sec-WebSocket-Version", "13")],
        );
        stream.write_all(&resp).await?;
        return stream.shutdown().await;
    }
    let key = match head.header("sec-websocket-key") {
        Some(k) if head.has_token("connection", "upgrade") && !k.is_empty() => k,
        _ => return refuse_request(stream, 400).await,
    };
    let accept = derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(resp.as_bytes()).await?;

    let mut ws = WebSocketStream::from_partially_read(stream, leftover, Role::Server, None).await;
    let mut sess = Session::new(true, shared.subscribers.clone());
    let mut head_rx = shared.head_tx.subscribe();
    // Answers held back by `Slow`, with the instant each is due.
    let mut pending: VecDeque<(Instant, String)> = VecDeque::new();
    loop {
        let due = pending.front().map(|p| p.0);
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.into_bytes(),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue, // ping/pong: answered by tungstenite
                    Some(Err(e)) => return Err(ws_err(e)),
                };
                let had = sess.wants_blocks();
                let answer = shared.answer(&mut sess, &text);
                if !had && sess.wants_blocks() {
                    // Push from the next change on, not the last one seen.
                    head_rx.borrow_and_update();
                }
                let slow = shared.slow();
                if slow.is_zero() && pending.is_empty() {
                    ws.send(Message::Text(answer)).await.map_err(ws_err)?;
                } else {
                    pending.push_back((Instant::now() + slow, answer));
                }
            }
            r = head_rx.changed(), if sess.wants_blocks() => {
                if r.is_err() {
                    break;
                }
                let upd = head_rx.borrow_and_update().clone();
                let notices = sess.notices(&upd);
                if !notices.is_empty() {
                    for n in notices {
                        ws.feed(Message::Text(n)).await.map_err(ws_err)?;
                    }
                    ws.flush().await.map_err(ws_err)?;
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                while pending.front().is_some_and(|p| p.0 <= now) {
                    if let Some((_, a)) = pending.pop_front() {
                        ws.feed(Message::Text(a)).await.map_err(ws_err)?;
                    }
                }
                ws.flush().await.map_err(ws_err)?;
            }
        }
    }
    // Completes the closing handshake when the client started it.
    let _ = ws.close(None).await;
    Ok(())
}
