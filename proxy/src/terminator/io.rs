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
    /// Waits until a read would not block (epoll), so no buffer is held by idle
    /// connections. With io_uring it returns at once: the read itself waits.
    async fn ready(&self) -> io::Result<()>;
    /// Reads at most `buf.capacity()` bytes into `buf` (cleared first); `Ok(0)` is EOF.
    async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Writes the whole buffer.
    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Io for tokio::net::TcpStream {
    async fn ready(&self) -> io::Result<()> {
        self.readable().await
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

/// Relay buffers: a small one for occasional messages, a large pooled one while data flows.
/// Neither is held while a read waits: both runtimes' reads let go of the caller's buffer
/// until bytes are there.
pub const SMALL_BUF: usize = 2 * 1024;
pub const LARGE_BUF: usize = 32 * 1024;
const POOL_MAX: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of `cap` bytes (a pooled one when it is a large one): how a reader gets
/// its buffer back after waiting without it.
pub fn buffer_of(cap: usize) -> Vec<u8> {
    if cap == LARGE_BUF {
        take_large()
    } else {
        Vec::with_capacity(cap)
    }
}

/// A large buffer from this thread's pool.
pub fn take_large() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(LARGE_BUF))
}

/// Returns a buffer to the pool (small or odd-sized ones are simply freed). Pooled buffers
/// are empty: a taker appends to what it gets.
pub fn give_back(mut buf: Vec<u8>) {
    buf.clear();
    if buf.capacity() == LARGE_BUF {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_come_back_empty() {
        // Readers append to the buffer they take: a pooled one holding old bytes would
        // send them again.
        let mut b = take_large();
        b.extend_from_slice(b"old bytes");
        give_back(b);
        let b = take_large();
        assert!(b.is_empty() && b.capacity() == LARGE_BUF);
    }
}
