//! One client connection: read and validate the first request (with a deadline), pick the
//! client's node, connect (retrying on refusal before any byte was forwarded), forward the
//! request in its canonical form (never the client's head bytes), check the node's `101`,
//! then relay.
//!
//! Everything sent to the client on failure is a short fixed text: never a backend address
//! and never an internal error string.

use std::{
    cell::Cell,
    net::{Shutdown, SocketAddr},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use metrics::counter;
use tracing::debug;

use super::{
    io::Io,
    net::Connector,
    relay::{relay, Leave},
    upstream::{Upstream, UpstreamTable},
};
use crate::{
    handshake::{self, Decision},
    observe::{catalog, Meters, StatsBoard},
};

/// Per-listener settings shared by all connections.
pub struct ListenerCtx {
    pub name: String,
    /// Where the listener's numbers go and its `/stats` pages come from.
    pub observe: Observe,
    pub limits: handshake::Limits,
    pub upstreams: UpstreamTable,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A listener's link to what operators see: its pool's meters (by backend) and the
/// published `/stats` pages.
#[derive(Debug, Clone, Default)]
pub struct Observe {
    /// The listener's pool (backend names are unique within a pool only).
    pub pool: String,
    pub meters: Arc<Meters>,
    pub stats: StatsBoard,
}

/// Why a connection ended early (for metrics and debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    ClientGone,
    Rejected(u16),
    HandshakeTimeout,
    NoBackend,
    BadUpstreamAnswer,
    Stats,
    Relayed,
}

/// Reads into `buf` until `done` says it has what it needs, the peer closes, or `deadline`
/// passes (then the socket's read side is shut down: a pending io_uring read cannot be
/// dropped). Returns `(result, timed_out)`.
async fn read_until<S: Io, T>(
    s: &S,
    buf: &mut Vec<u8>,
    deadline: Duration,
    mut done: impl FnMut(&[u8]) -> Option<T>,
) -> (Option<T>, bool) {
    let timed_out = Cell::new(false);
    let reading = async {
        let mut chunk = Vec::with_capacity(2048);
        loop {
            if s.ready().await.is_err() {
                return None;
            }
            let (res, c) = s.read(chunk).await;
            chunk = c;
            match res {
                Ok(n) if n > 0 => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(t) = done(buf) {
                        return Some(t);
                    }
                }
                _ => return None,
            }
        }
    };
    tokio::pin!(reading);
    let sleep = tokio::time::sleep(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            r = &mut reading => return (r, timed_out.get()),
            _ = &mut sleep, if !timed_out.get() => {
                timed_out.set(true);
                let _ = s.shutdown(Shutdown::Read);
            }
        }
    }
}

async fn send_and_close<S: Io>(s: &S, bytes: Vec<u8>) {
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown(Shutdown::Write);
}

/// Serves one accepted client connection to the end.
pub async fn handle<S: Io + 'static, K: Connector>(
    client: Rc<S>,
    peer: SocketAddr,
    ctx: Arc<ListenerCtx>,
    connector: &K,
) -> Ending {
    // Boxed: the handshake's state (head buffer, parsers, connects, timers) is freed when
    // the relay starts, instead of sizing the task every idle connection keeps.
    let (backend, up, leave) = match Box::pin(open(&client, peer, &ctx, connector)).await {
        Ok(opened) => opened,
        Err(ending) => return ending,
    };
    let client_count = meters(&ctx, &up).client();
    let outcome = relay(client, backend, ctx.idle_timeout, leave).await;
    if outcome.moved_off {
        counter!(catalog::MOVED_OFF, "pool" => ctx.observe.pool.clone(), "backend" => up.name.clone()).increment(1);
    }
    drop(client_count);
    let labels = |direction: &'static str| {
        [
            ("pool", ctx.observe.pool.clone()),
            ("backend", up.name.clone()),
            ("direction", direction.to_string()),
        ]
    };
    counter!(catalog::BACKEND_BYTES, &labels("up")).increment(outcome.up_bytes);
    counter!(catalog::BACKEND_BYTES, &labels("down")).increment(outcome.down_bytes);
    if outcome.idle_timeout {
        backend_error(&ctx, &up, "idle_timeout");
    } else if outcome.reset {
        backend_error(&ctx, &up, "reset");
    }
    Ending::Relayed
}

/// What [`open`] hands the relay: the node's stream, the node, and what the relay watches
/// to move the client off.
type Opened<K> = (Rc<<K as Connector>::Stream>, Upstream, Option<Leave>);

/// Everything before the relay: reads and checks the client's request, answers what is not
/// relayed, connects to a node and forwards the request, checks the node's 101.
async fn open<S: Io + 'static, K: Connector>(
    client: &Rc<S>,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    connector: &K,
) -> Result<Opened<K>, Ending> {
    let mut head = Vec::new();
    let limits = &ctx.limits;
    let (decision, timed_out) =
        read_until(
            &**client,
            &mut head,
            ctx.handshake_timeout,
            |b| match handshake::inspect(b, limits) {
                Decision::NeedMore => None,
                d => Some(d),
            },
        )
        .await;
    let decision = match decision {
        Some(d) => d,
        None if timed_out => {
            counter!(catalog::HANDSHAKE_REJECTS, "listener" => ctx.name.clone(), "status" => "408")
                .increment(1);
            send_and_close(&**client, handshake::timeout_response()).await;
            return Err(Ending::HandshakeTimeout);
        }
        None => return Err(Ending::ClientGone),
    };
    // What the node gets: the validator's canonical head (see `handshake`), then any body.
    let (forward, ws_key) = match decision {
        Decision::NeedMore => unreachable!("read_until only returns final decisions"),
        Decision::Reject(r) => {
            counter!(catalog::HANDSHAKE_REJECTS, "listener" => ctx.name.clone(), "status" => r.status.to_string()).increment(1);
            send_and_close(&**client, r.response()).await;
            return Err(Ending::Rejected(r.status));
        }
        Decision::Stats { json, .. } => {
            let pages = ctx.observe.stats.current();
            let page = if json { pages.json } else { pages.html };
            send_and_close(&**client, page.to_vec()).await;
            return Err(Ending::Stats);
        }
        Decision::Upgrade {
            head: canonical,
            key,
            ..
        } => (canonical, Some(key)),
        Decision::JsonRpcPost {
            head: mut canonical,
            head_len,
            total_len,
            ..
        } => {
            canonical.extend_from_slice(&head[head_len..total_len]);
            (canonical, None)
        }
    };
    // The client's bytes are not kept for the life of the connection.
    drop(head);

    let set = ctx.upstreams.current();
    let mut chosen: Option<(Rc<K::Stream>, Upstream)> = None;
    for up in set.candidates(peer.ip()) {
        let started = Instant::now();
        match connector.connect(up.addr, ctx.connect_timeout).await {
            Ok(s) => {
                ctx.upstreams.report(&up.name, true);
                meters(ctx, up).record_connect(started.elapsed());
                chosen = Some((Rc::new(s), up.clone()));
                break;
            }
            Err(e) => {
                ctx.upstreams.report(&up.name, false);
                let kind = if e.kind() == std::io::ErrorKind::TimedOut {
                    "connect_timeout"
                } else {
                    "refused"
                };
                backend_error(ctx, up, kind);
                debug!(listener = %ctx.name, backend = %up.name, error = %e, "connect failed, trying the next node");
            }
        }
    }
    let Some((backend, up)) = chosen else {
        send_and_close(&**client, handshake::overloaded_response()).await;
        return Err(Ending::NoBackend);
    };
    let requested_at = Instant::now();
    let (res, _) = backend.write_all(forward).await;
    if res.is_err() {
        backend_error(ctx, &up, "reset");
        send_and_close(&**client, bad_gateway()).await;
        return Err(Ending::BadUpstreamAnswer);
    }
    let mut leave = None;
    if let Some(key) = ws_key {
        let mut answer = Vec::new();
        let (head_len, _) = read_until(&*backend, &mut answer, ctx.handshake_timeout, |b| {
            match handshake::check_upgrade_response(b, &key) {
                Ok(Some(n)) => Some(Some(n)),
                Ok(None) => None,
                Err(_) => Some(None),
            }
        })
        .await;
        let Some(Some(head_len)) = head_len else {
            backend_error(ctx, &up, "bad_upstream_answer");
            send_and_close(&**client, bad_gateway()).await;
            return Err(Ending::BadUpstreamAnswer);
        };
        meters(ctx, &up).record_time_to_101(requested_at.elapsed());
        // A WebSocket client can be moved off a node that falls sick: watch for it, and
        // follow the node's frames from the first byte after the 101.
        let (rx, seq) = ctx.upstreams.move_offs.watch(&up.name);
        let mut cursor = crate::websocket::FrameCursor::default();
        cursor.advance(answer.get(head_len..).unwrap_or_default(), false);
        leave = Some(Leave { rx, seq, cursor });
        // The 101 and anything the node sent right after it.
        let (res, _) = client.write_all(answer).await;
        if res.is_err() {
            return Err(Ending::ClientGone);
        }
    }
    Ok((backend, up, leave))
}

fn bad_gateway() -> Vec<u8> {
    let body = "bad gateway\n";
    format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn meters(ctx: &ListenerCtx, up: &Upstream) -> Arc<crate::observe::BackendMeters> {
    ctx.observe.meters.backend(&ctx.observe.pool, &up.name)
}

fn backend_error(ctx: &ListenerCtx, up: &Upstream, kind: &'static str) {
    counter!(
        catalog::BACKEND_ERRORS,
        "pool" => ctx.observe.pool.clone(),
        "backend" => up.name.clone(),
        "kind" => kind
    )
    .increment(1);
}
