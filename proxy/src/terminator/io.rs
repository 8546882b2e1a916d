//! One small I/O interface over both runtimes, so the relay and TLS code is written once.
//!
//! Both take `&self` (a stream is shared by the two relay directions) and owned buffers
//! (io_uring needs the kernel to own the buffer while an operation is in flight).
//! Timeouts are never done by dropping a pending read: with io_uring that does not cancel
//! it. Callers shut the socket down instead, which completes the read with EOF.

use std::{cell::RefCell, io, net::Shutdown};

/// Selected at start-up: `--io uring|epoll|auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    Uring,
    Epoll,
}

/// A connected byte stream.
#[allow(async_fn_in_trait)] // single-threaded runtimes: futures need not be Send
pub trait Io: std::os::fd::AsRawFd {
    /// Waits until a read would not block (epoll: the socket is readable; io_uring: the
    /// multishot receive completed), holding nothing: this is where an idle connection
    /// waits, so that neither a buffer nor a read's state machine is kept for it.
    async fn ready(&self) -> io::Result<()>;
    /// Reads at most `buf.capacity()` bytes into `buf` (cleared first); `Ok(0)` is EOF.
    async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// As [`Io::read`] after [`Io::ready`], but `Err(WouldBlock)` instead of waiting when
    /// the readiness was stale (epoll's is until a read finds nothing), so that the caller
    /// goes back to waiting in `ready`, holding nothing (a TLS record half received stays
    /// in the session until the rest comes).
    async fn read_ready(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read(buf).await
    }
    /// Writes the whole buffer.
    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// The connection has gone quiet: free what the next bytes can rebuild cheaply (a TLS
    /// session's expanded record keys). Called by the relay, between two operations.
    fn rest(&self) {}
}

impl Io for tokio::net::TcpStream {
    async fn ready(&self) -> io::Result<()> {
        // Not `readable()`: its future (a waiter node, ~180 bytes) would be kept by every
        // idle connection; the stream's own read waker is enough, as each stream has one
        // reader at a time.
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        let cap = buf.capacity();
        loop {
            if let Err(e) = self.readable().await {
                return (Err(e), buf);
            }
            if buf.capacity() < cap {
                buf.reserve_exact(cap);
            }
            match self.try_read_buf(&mut buf) {
                Ok(n) => return (Ok(n), buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // tokio's readiness was stale (it is only cleared by a WouldBlock):
                    // this is where an idle connection waits. Wait without the buffer and
                    // allocate it again once data is there, so idle connections hold none.
                    buf = Vec::new();
                    continue;
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn read_ready(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve_exact(SMALL_BUF);
        }
        // A WouldBlock clears tokio's readiness: the next `ready` really waits.
        let r = self.try_read_buf(&mut buf);
        (r, buf)
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut done = 0;
        while done < buf.len() {
            if let Err(e) = self.writable().await {
                return (Err(e), buf);
            }
            match self.try_write(&buf[done..]) {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        shutdown_fd(std::os::fd::AsRawFd::as_raw_fd(self), how)
    }
}

pub(crate) fn shutdown_fd(fd: std::os::fd::RawFd, how: Shutdown) -> io::Result<()> {
    let how = match how {
        Shutdown::Read => libc::SHUT_RD,
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown(2) on a descriptor this stream owns.
    if unsafe { libc::shutdown(fd, how) } == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        // Already closed by the peer: nothing left to shut.
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            Ok(())
        } else {
            Err(e)
        }
    }
}

/// Relay buffers: a small one for occasional messages, a large one while data flows. Both
/// come from a per-worker pool only while bytes are in flight: no reader holds its buffer
/// while it waits, and the relay gives it back after each write.
pub const SMALL_BUF: usize = 2 * 1024;
pub const LARGE_BUF: usize = 32 * 1024;
/// Buffers kept per size and worker: bounds what the pool holds after a burst (8 MiB of
/// large ones, 2 MiB of small ones).
const POOL_MAX: usize = 256;
const SMALL_POOL_MAX: usize = 1024;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SMALL_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Relay-size buffers taken on this thread and not given back yet.
    static OUT: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

/// Relay-size buffers this thread took from the pool and has not given back (tests: what
/// idle connections hold must be none).
#[cfg(test)]
pub fn buffers_out() -> isize {
    OUT.with(|o| o.get())
}

fn count_out(_delta: isize) {
    #[cfg(test)]
    OUT.with(|o| o.set(o.get() + _delta));
}

/// An empty buffer of `cap` bytes (a pooled one for the two relay sizes): how a reader
/// gets its buffer back after waiting without it.
pub fn buffer_of(cap: usize) -> Vec<u8> {
    match cap {
        LARGE_BUF => take_large(),
        SMALL_BUF => {
            count_out(1);
            SMALL_POOL
                .with(|p| p.borrow_mut().pop())
                .unwrap_or_else(|| Vec::with_capacity(SMALL_BUF))
        }
        _ => Vec::with_capacity(cap),
    }
}

/// A large buffer from this thread's pool.
pub fn take_large() -> Vec<u8> {
    count_out(1);
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(LARGE_BUF))
}

/// Returns a buffer to the pool (odd-sized ones are simply freed). Pooled buffers are
/// empty: a taker appends to what it gets.
pub fn give_back(mut buf: Vec<u8>) {
    buf.clear();
    let (pool, max) = match buf.capacity() {
        LARGE_BUF => (&POOL, POOL_MAX),
        SMALL_BUF => (&SMALL_POOL, SMALL_POOL_MAX),
        _ => return,
    };
    count_out(-1);
    pool.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < max {
            p.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// epoll's readiness stays set after a read until one finds nothing: `read_ready` then
    /// says WouldBlock instead of waiting, and the next `ready` really waits.
    #[tokio::test]
    async fn a_stale_readiness_goes_back_to_waiting() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = l.accept().await.unwrap();
        AsyncWriteExt::write_all(&mut peer, b"ping").await.unwrap();
        Io::ready(&ours).await.unwrap();
        let (r, b) = ours.read_ready(Vec::with_capacity(SMALL_BUF)).await;
        assert_eq!((r.unwrap(), &b[..]), (4, &b"ping"[..]));
        Io::ready(&ours).await.unwrap(); // stale: nothing is there
        let (r, _) = ours.read_ready(b).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let wait = tokio::time::timeout(std::time::Duration::from_millis(50), Io::ready(&ours));
        assert!(wait.await.is_err(), "ready waits once a read found nothing");
        AsyncWriteExt::write_all(&mut peer, b"pong").await.unwrap();
        Io::ready(&ours).await.unwrap();
        let (r, b) = ours.read_ready(Vec::new()).await;
        assert_eq!((r.unwrap(), &b[..]), (4, &b"pong"[..]));
    }

    #[test]
    fn pooled_buffers_come_back_empty() {
        // Readers append to the buffer they take: a pooled one holding old bytes would
        // send them again.
        let mut b = take_large();
        b.extend_from_slice(b"old bytes");
        give_back(b);
        let b = take_large();
        assert!(b.is_empty() && b.capacity() == LARGE_BUF);

        let mut b = buffer_of(SMALL_BUF);
        b.extend_from_slice(b"old bytes");
        let at = b.as_ptr();
        give_back(b);
        let b = buffer_of(SMALL_BUF);
        assert_eq!(b.as_ptr(), at, "a small buffer is reused");
        assert!(b.is_empty() && b.capacity() == SMALL_BUF);
    }
}
