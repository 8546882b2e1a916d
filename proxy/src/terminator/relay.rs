//! Bytes both ways between client and backend: bounded buffers (a slow reader stops the
//! other side's reads: backpressure), half-close (a FIN one way keeps the other way open),
//! and an idle timeout enforced by shutting the sockets down.

use std::{
    cell::Cell,
    net::Shutdown,
    rc::Rc,
    time::{Duration, Instant},
};

use super::io::{give_back, take_large, Io, LARGE_BUF, SMALL_BUF};

/// How a relay ended and what it carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Client to backend.
    pub up_bytes: u64,
    /// Backend to client.
    pub down_bytes: u64,
    pub idle_timeout: bool,
    /// A read or write failed (reset) rather than ending with EOF.
    pub reset: bool,
}

/// Copies `from` → `to` until EOF, then half-closes `to`. Returns true on a clean EOF.
async fn copy<A: Io, B: Io>(from: &A, to: &B, last: &Cell<Instant>, total: &Cell<u64>) -> bool {
    let mut small = Vec::with_capacity(SMALL_BUF);
    // After a read that filled its buffer, data is flowing: use a large pooled buffer.
    // After a short read, go back to the small one before waiting (io_uring pins the
    // buffer of a pending read; an idle websocket should pin little).
    let mut flowing = false;
    let clean = loop {
        if from.ready().await.is_err() {
            break false;
        }
        let buf = if flowing {
            take_large()
        } else {
            std::mem::take(&mut small)
        };
        let (res, buf) = from.read(buf).await;
        let n = match res {
            Ok(n) if n > 0 => n,
            other => {
                restore(buf, &mut small);
                break other.is_ok();
            }
        };
        flowing = n == buf.capacity();
        last.set(Instant::now());
        total.set(total.get() + n as u64);
        let (res, buf) = to.write_all(buf).await;
        restore(buf, &mut small);
        if res.is_err() {
            break false;
        }
        last.set(Instant::now());
    };
    let _ = to.shutdown(Shutdown::Write);
    clean
}

fn restore(buf: Vec<u8>, small: &mut Vec<u8>) {
    if buf.capacity() == LARGE_BUF {
        give_back(buf);
    } else {
        *small = buf;
        if small.capacity() < SMALL_BUF {
            small.reserve_exact(SMALL_BUF);
        }
    }
}

/// Relays until both directions ended, or nothing moved for `idle`.
pub async fn relay<C: Io, B: Io>(client: Rc<C>, backend: Rc<B>, idle: Duration) -> RelayOutcome {
    let last = Cell::new(Instant::now());
    let up = Cell::new(0u64);
    let down = Cell::new(0u64);
    let work = async {
        tokio::join!(
            copy(&*client, &*backend, &last, &up),
            copy(&*backend, &*client, &last, &down)
        )
    };
    tokio::pin!(work);
    let check = (idle / 4).max(Duration::from_millis(50));
    let mut idle_timeout = false;
    let (clean_up, clean_down) = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep(check), if !idle_timeout => {
                if last.get().elapsed() >= idle {
                    // Shutting down completes the pending reads (with io_uring, dropping
                    // them would not).
                    idle_timeout = true;
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = backend.shutdown(Shutdown::Both);
                }
            }
        }
    };
    RelayOutcome {
        up_bytes: up.get(),
        down_bytes: down.get(),
        idle_timeout,
        reset: !(idle_timeout || clean_up && clean_down),
    }
}
