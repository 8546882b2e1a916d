//! Bytes both ways between client and backend: bounded buffers (a slow reader stops the
//! other side's reads: backpressure), half-close (a FIN one way keeps the other way open),
//! and an idle timeout enforced by shutting the sockets down.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    net::Shutdown,
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    io::{buffer_of, give_back, take_large, Io, SMALL_BUF},
    move_off::{Close, MoveOff},
};
use crate::websocket::{self, FrameCursor};

/// How long a client told to leave (or a node mid-frame) gets before the connection is cut.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// Quiet this long, a connection is put to rest ([`Io::rest`]: TLS keys go back to bytes).
/// Short, as re-expanding costs about a microsecond; a node's notice every few seconds
/// pays that per notice, and an idle connection keeps only what it needs.
const REST_AFTER: Duration = Duration::from_millis(500);

/// Moving this connection off its node (see `move_off`): what the relay watches.
#[derive(Debug)]
pub struct Leave {
    pub rx: watch::Receiver<Option<MoveOff>>,
    pub seq: u64,
    /// Frame boundaries of the node → client direction, fed everything sent since the `101`.
    pub cursor: FrameCursor,
}

/// The node → client direction's state, shared with the leave watcher.
#[derive(Debug, Default)]
struct Down {
    cursor: RefCell<FrameCursor>,
    /// Asked to leave: forward up to the next frame boundary, then close.
    leaving: Cell<bool>,
    /// Waiting for the node's next bytes (nothing half-forwarded).
    parked: Cell<bool>,
    /// The close frame went out: nothing more may be written to the client.
    closed: Cell<bool>,
    /// The close frame to send when leaving.
    close: Cell<Option<Close>>,
}

/// How a relay ended and what it carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Client to backend.
    pub up_bytes: u64,
    /// Backend to client.
    pub down_bytes: u64,
    pub idle_timeout: bool,
    /// Closed to move the client off a sick node.
    pub moved_off: bool,
    /// A read or write failed (reset) rather than ending with EOF.
    pub reset: bool,
}

/// One direction of the relay: where bytes come from and go to, the activity clock both
/// directions share, this direction's byte count, and (node → client) the leave state.
struct Leg<'a, A, B> {
    from: &'a A,
    to: &'a B,
    last: &'a Cell<Instant>,
    total: &'a Cell<u64>,
    down: Option<&'a Down>,
}

// Not derived: the derive would ask `A: Copy, B: Copy`, and it is only references.
impl<A, B> Clone for Leg<'_, A, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, B> Copy for Leg<'_, A, B> {}

/// What one burst of [`forward`] left the copy loop to do.
enum Burst {
    /// Bytes went through (or none were there yet): wait for the next ones.
    Again,
    /// The source ended (true: a clean EOF) or a write failed (false).
    End(bool),
    /// The client was closed for leaving: nothing more to do.
    Closed,
}

/// Copies `from` → `to` until EOF, then half-closes `to`. Returns true on a clean EOF.
///
/// An idle connection sits in `from.ready()` and holds nothing else: the read and write
/// that follow run in a boxed future (one allocation per burst, a few tens of nanoseconds
/// against microseconds of syscalls and crypto), because an async fn's state is as large as
/// its largest await, kept for every connection however idle.
async fn copy<A: Io, B: Io>(leg: Leg<'_, A, B>) -> bool {
    // After a read that filled its buffer, data is flowing: use a large buffer. After a
    // short read, go back to a small one. Both come from the worker's pool per burst.
    let mut flowing = false;
    let clean = loop {
        if let Some(d) = leg.down {
            d.parked.set(true);
        }
        if leg.from.ready().await.is_err() {
            break false;
        }
        match Box::pin(forward(leg, &mut flowing)).await {
            Burst::Again => {}
            Burst::End(clean) => break clean,
            Burst::Closed => return true,
        }
    };
    if !leg.down.is_some_and(|d| d.closed.get()) {
        let _ = leg.to.shutdown(Shutdown::Write);
    }
    clean
}

/// One read from `from` and its write to `to`.
async fn forward<A: Io, B: Io>(leg: Leg<'_, A, B>, flowing: &mut bool) -> Burst {
    let Leg {
        from,
        to,
        last,
        total,
        down,
    } = leg;
    let buf = if *flowing {
        take_large()
    } else {
        buffer_of(SMALL_BUF)
    };
    let (res, mut buf) = from.read_ready(buf).await;
    if matches!(&res, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
        // The readiness was stale: back to waiting, without the buffer.
        give_back(buf);
        return Burst::Again;
    }
    if let Some(d) = down {
        d.parked.set(false);
        if d.closed.get() {
            // The watcher closed the client while this read was pending.
            give_back(buf);
            return Burst::Closed;
        }
    }
    let n = match res {
        Ok(n) if n > 0 => n,
        other => {
            give_back(buf);
            return Burst::End(other.is_ok());
        }
    };
    *flowing = n == buf.capacity();
    last.set(Instant::now());
    total.set(total.get() + n as u64);
    // Leaving: forward up to the end of the current frame only.
    let stop = down.is_some_and(|d| {
        let mut c = d.cursor.borrow_mut();
        if d.leaving.get() {
            buf.truncate(c.advance(&buf[..n], true));
            c.at_boundary()
        } else {
            c.advance(&buf[..n], false);
            false
        }
    });
    let (res, buf) = if buf.is_empty() {
        (Ok(()), buf)
    } else {
        to.write_all(buf).await
    };
    give_back(buf);
    if res.is_err() {
        return Burst::End(false);
    }
    last.set(Instant::now());
    if let (true, Some(d)) = (stop, down) {
        close_client(to, from, d).await;
        return Burst::Closed;
    }
    Burst::Again
}

/// Sends the client the leave request's close frame (1012 "service restart" off a sick
/// node, 1001 "going away" after an upgrade) at a frame boundary, then TLS close_notify and
/// FIN, and cuts the node off.
async fn close_client<C: Io, B: Io>(client: &C, backend: &B, d: &Down) {
    if d.closed.replace(true) {
        return;
    }
    let close = d.close.get().unwrap_or(Close::NODE_OUT_OF_SYNC);
    let mut frame = Vec::with_capacity(32);
    websocket::encode_close(&mut frame, close.code, close.reason, None);
    let _ = client.write_all(frame).await;
    let _ = client.shutdown(Shutdown::Write);
    let _ = backend.shutdown(Shutdown::Both);
}

/// Waits until this connection's turn to leave its node comes (never without `leave`);
/// answers the close frame to send.
async fn leave_due(leave: &mut Option<Leave>) -> Close {
    // By reference: moved in, it would be stored again in this future's state.
    let Some(l) = leave else {
        return std::future::pending().await;
    };
    loop {
        let request = *l.rx.borrow_and_update();
        match request {
            Some(m) => {
                // Boxed: a leave request is rare, and every idle connection waits here.
                Box::pin(tokio::time::sleep_until(m.due(l.seq).into())).await;
                if let Some(now) = *l.rx.borrow() {
                    return now.close;
                }
            }
            None => {
                if l.rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Relays until both directions ended, or nothing moved for `idle`. With `leave`, a request
/// to move clients off the node closes the connection between two of the node's frames.
#[allow(clippy::manual_async_fn)] // on purpose: see the body's first comment
pub fn relay<C: Io, B: Io>(
    client: Rc<C>,
    backend: Rc<B>,
    idle: Duration,
    mut leave: Option<Leave>,
) -> impl std::future::Future<Output = RelayOutcome> {
    // An async block, not an async fn: a fn's future keeps its arguments twice.
    async move {
        let last = Cell::new(Instant::now());
        let up = Cell::new(0u64);
        let down = Cell::new(0u64);
        let watched = leave.is_some();
        let state = Down::default();
        if let Some(l) = &leave {
            *state.cursor.borrow_mut() = l.cursor.clone();
        }
        let work = async {
            tokio::join!(
                copy(Leg {
                    from: &*client,
                    to: &*backend,
                    last: &last,
                    total: &up,
                    down: None,
                }),
                copy(Leg {
                    from: &*backend,
                    to: &*client,
                    last: &last,
                    total: &down,
                    down: watched.then_some(&state),
                })
            )
        };
        let leaver = async {
            state.close.set(Some(leave_due(&mut leave).await));
            state.leaving.set(true);
            if state.parked.get() && state.cursor.borrow().at_boundary() {
                Box::pin(close_client(&*client, &*backend, &state)).await;
            }
            // A client that does not answer the close, or a node stuck mid-frame: cut.
            Box::pin(tokio::time::sleep(LEAVE_GRACE)).await;
            let _ = client.shutdown(Shutdown::Both);
            let _ = backend.shutdown(Shutdown::Both);
            std::future::pending::<()>().await;
        };
        tokio::pin!(leaver);
        tokio::pin!(work);
        let check = (idle / 4).max(Duration::from_millis(50));
        // Ends when nothing moved for `idle`; on the way, puts the connection to rest once
        // per quiet spell of `REST_AFTER`. One timer: its deadline is the next of the two
        // that can still come, moved when traffic resumes after a rest (this is polled
        // whenever the relay is, so it sees `last` change).
        let timer = tokio::time::sleep(REST_AFTER.min(check));
        tokio::pin!(timer);
        // `last` as it was when the connection was last put to rest.
        let mut rested = None;
        // The deadline accounts for the latest traffic.
        let mut armed = true;
        let quiet_watch = std::future::poll_fn(|cx| loop {
            if !armed && rested != Some(last.get()) {
                let wake = timer.deadline().min((last.get() + REST_AFTER).into());
                timer.as_mut().reset(wake);
                armed = true;
            }
            std::task::ready!(timer.as_mut().poll(cx));
            let quiet = last.get().elapsed();
            if quiet >= REST_AFTER && rested != Some(last.get()) {
                rested = Some(last.get());
                client.rest();
                backend.rest();
            }
            if quiet >= idle {
                return std::task::Poll::Ready(());
            }
            let mut wake = Instant::now() + check;
            armed = rested != Some(last.get());
            if armed {
                wake = wake.min(last.get() + REST_AFTER);
            }
            timer.as_mut().reset(wake.into());
        });
        tokio::pin!(quiet_watch);
        let mut idle_timeout = false;
        let (clean_up, clean_down) = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = &mut leaver => {}
                _ = &mut quiet_watch, if !idle_timeout => {
                    // Shutting down completes the pending reads (with io_uring, dropping
                    // them would not).
                    idle_timeout = true;
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = backend.shutdown(Shutdown::Both);
                }
            }
        };
        let moved_off = state.leaving.get();
        RelayOutcome {
            up_bytes: up.get(),
            down_bytes: down.get(),
            idle_timeout,
            moved_off,
            reset: !(idle_timeout || moved_off || clean_up && clean_down),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::terminator::io::buffers_out;

    /// A connected pair on loopback: (ours, the peer's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, _) = l.accept().await.unwrap();
        (ours, peer)
    }

    /// A socket that counts how often the relay put it to rest.
    struct Counted(TcpStream, Cell<u32>);

    impl std::os::fd::AsRawFd for Counted {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }

    impl Io for Counted {
        async fn ready(&self) -> std::io::Result<()> {
            Io::ready(&self.0).await
        }
        async fn read(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
            Io::read(&self.0, buf).await
        }
        async fn read_ready(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
            Io::read_ready(&self.0, buf).await
        }
        async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
            Io::write_all(&self.0, buf).await
        }
        fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
            Io::shutdown(&self.0, how)
        }
        fn rest(&self) {
            self.1.set(self.1.get() + 1);
        }
    }

    /// A connection quiet for `REST_AFTER` is put to rest once (both sides), not again
    /// while it stays quiet, and again after the next quiet spell; traffic in between
    /// does not.
    #[tokio::test]
    async fn a_quiet_relay_is_put_to_rest_once_per_quiet_spell() {
        let (client, mut client_peer) = pair().await;
        let (backend, mut node) = pair().await;
        let client = Rc::new(Counted(client, Cell::new(0)));
        let backend = Rc::new(Counted(backend, Cell::new(0)));
        let relay = relay(
            client.clone(),
            backend.clone(),
            Duration::from_secs(60),
            None,
        );
        let local = async {
            let mut got = [0u8; 8];
            let rests = || (client.1.get(), backend.1.get());
            // Busy: a message every 100 ms for longer than REST_AFTER.
            for i in 0..8u8 {
                AsyncWriteExt::write_all(&mut client_peer, &[i])
                    .await
                    .unwrap();
                node.read_exact(&mut got[..1]).await.unwrap();
                tokio::time::sleep(REST_AFTER / 5).await;
            }
            assert_eq!(rests(), (0, 0), "a busy connection is not put to rest");
            tokio::time::sleep(REST_AFTER * 2).await;
            assert_eq!(rests(), (1, 1), "quiet: put to rest");
            tokio::time::sleep(REST_AFTER * 2).await;
            assert_eq!(rests(), (1, 1), "still quiet: not again");
            AsyncWriteExt::write_all(&mut node, b"x").await.unwrap();
            client_peer.read_exact(&mut got[..1]).await.unwrap();
            tokio::time::sleep(REST_AFTER * 2).await;
            assert_eq!(rests(), (2, 2), "the next quiet spell");
            AsyncWriteExt::shutdown(&mut client_peer).await.unwrap();
            AsyncWriteExt::shutdown(&mut node).await.unwrap();
        };
        let (outcome, ()) = tokio::join!(relay, local);
        assert!(!outcome.reset && !outcome.idle_timeout, "{outcome:?}");
    }

    /// Between messages the relay waits in `ready()` and holds no buffer in either
    /// direction; bytes after the pause still pass, in order, and EOFs end it cleanly.
    #[tokio::test]
    async fn an_idle_relay_holds_no_buffer_and_goes_on_after_the_pause() {
        let (client, mut client_peer) = pair().await;
        let (backend, mut node) = pair().await;
        let relay = relay(
            Rc::new(client),
            Rc::new(backend),
            Duration::from_secs(60),
            None,
        );
        let local = async {
            let mut got = [0u8; 64];
            for round in 0..3u8 {
                let up = [b'u', round];
                AsyncWriteExt::write_all(&mut client_peer, &up)
                    .await
                    .unwrap();
                node.read_exact(&mut got[..2]).await.unwrap();
                assert_eq!(&got[..2], &up);
                // More than a small buffer holds: two reads, the second a large buffer.
                let down: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + round).collect();
                AsyncWriteExt::write_all(&mut node, &down).await.unwrap();
                let mut back = vec![0u8; down.len()];
                client_peer.read_exact(&mut back).await.unwrap();
                assert_eq!(back, down, "round {round}: bytes in order");
                tokio::time::sleep(Duration::from_millis(30)).await;
                assert_eq!(
                    buffers_out(),
                    0,
                    "round {round}: an idle relay holds a buffer"
                );
            }
            AsyncWriteExt::shutdown(&mut client_peer).await.unwrap();
            assert_eq!(
                AsyncReadExt::read(&mut node, &mut got).await.unwrap(),
                0,
                "half-close passes"
            );
            AsyncWriteExt::shutdown(&mut node).await.unwrap();
            assert_eq!(
                AsyncReadExt::read(&mut client_peer, &mut got)
                    .await
                    .unwrap(),
                0
            );
        };
        let (outcome, ()) = tokio::join!(relay, local);
        assert_eq!(outcome.up_bytes, 6);
        assert_eq!(outcome.down_bytes, 15_000);
        assert!(!outcome.reset && !outcome.idle_timeout, "{outcome:?}");
        assert_eq!(buffers_out(), 0);
    }
}
