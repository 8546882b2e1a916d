//! Sockets on the worker's ring: a TCP stream whose reads come from one multishot receive
//! (armed while the reader waits, bytes in the worker's provided buffers) and whose writes
//! are sends of the caller's buffer; a listener fed by one multishot accept.

use std::{
    cell::Cell,
    future::poll_fn,
    io,
    net::{Shutdown, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    task::Poll,
};

use io_uring::{cqueue, opcode, types};

use super::driver::{self, Completion};
use crate::terminator::io::{buffer_of, give_back, shutdown_fd, Io};

/// A one-shot operation in flight; dropping it orphans the slot (the kernel may still be
/// using the kept buffer, which the slot frees at completion).
struct Once {
    key: Option<usize>,
}

impl Once {
    fn start(entry: io_uring::squeue::Entry, keep: Option<Vec<u8>>) -> Self {
        Self {
            key: Some(driver::with(|d| d.start_once(entry, keep))),
        }
    }

    async fn wait(mut self) -> (Completion, Option<Vec<u8>>) {
        let key = self.key.expect("an operation is awaited once");
        let out = poll_fn(|cx| driver::with(|d| d.poll_once(key, cx))).await;
        self.key = None;
        out
    }
}

impl Drop for Once {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            driver::try_with(|d| d.forget_once(key));
        }
    }
}

fn result(c: Completion) -> io::Result<usize> {
    if c.res < 0 {
        Err(io::Error::from_raw_os_error(-c.res))
    } else {
        Ok(c.res as usize)
    }
}

/// What a reader has not taken yet of the last buffer it got.
#[derive(Debug, Clone, Copy)]
struct Partial {
    bid: u16,
    start: usize,
    end: usize,
}

/// A connected TCP socket served by the worker's ring.
pub struct UringStream {
    fd: OwnedFd,
    /// The multishot receive's slot.
    recv: usize,
    partial: Cell<Option<Partial>>,
    /// EOF or an error seen by the receive: every later read answers it.
    ended: Cell<Option<i32>>,
}

impl UringStream {
    /// Takes over a connected socket (made blocking: the ring does the waiting).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        // SAFETY: the descriptor comes from a stream we own and consume.
        let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
        Ok(Self::from_fd(fd))
    }

    fn from_fd(fd: OwnedFd) -> Self {
        Self {
            fd,
            recv: driver::with(|d| d.new_multi(true)),
            partial: Cell::new(None),
            ended: Cell::new(None),
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.fd).set_nodelay(on)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(&self.fd)
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an inet socket"))
    }

    /// Copies what it can of the pending buffer into `buf`; gives the buffer back once
    /// taken whole.
    fn take_partial(&self, buf: &mut Vec<u8>, p: Partial) -> usize {
        let room = buf.capacity() - buf.len();
        let n = room.min(p.end - p.start);
        driver::with(|d| {
            let bufs = d.bufs();
            buf.extend_from_slice(&bufs.bytes(p.bid, p.end)[p.start..p.start + n]);
            if p.start + n == p.end {
                bufs.recycle(p.bid);
                self.partial.set(None);
            } else {
                self.partial.set(Some(Partial {
                    start: p.start + n,
                    ..p
                }));
            }
        });
        n
    }

    /// The multishot receive's next completion, taken or only looked at (see
    /// `Driver::poll_multi`), arming the receive when it is not.
    fn poll_receive(&self, cx: &std::task::Context<'_>, take: bool) -> Option<Completion> {
        driver::with(|d| {
            let (front, armed) = d.poll_multi(self.recv, cx, take);
            if front.is_none() && !armed {
                d.arm(self.recv, driver::recv_multi(self.fd.as_raw_fd()));
            }
            front
        })
    }

    /// The ring ran out of buffers: one plain receive into a buffer of our own.
    async fn read_own(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let cap = buf.capacity() as u32;
        let entry =
            opcode::Recv::new(types::Fd(self.fd.as_raw_fd()), buf.as_mut_ptr(), cap).build();
        let (c, keep) = Once::start(entry, Some(buf)).wait().await;
        let mut buf = keep.expect("the receive's buffer comes back");
        let r = result(c);
        if let Ok(n) = r {
            // SAFETY: the kernel wrote `n` bytes (at most the capacity) into the buffer.
            unsafe { buf.set_len(n) };
        }
        (r, buf)
    }
}

impl AsRawFd for UringStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Io for UringStream {
    /// Waits until a completion of the multishot receive is queued (bytes, EOF or an
    /// error), holding nothing: the idle connection's wait, so that the read (and the
    /// caller's buffer) exists only once there is something to take.
    async fn ready(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let done = self.partial.get().is_some() || self.ended.get().is_some();
            if done || self.poll_receive(cx, false).is_some() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        let cap = buf.capacity().max(1);
        if let Some(p) = self.partial.get() {
            let n = self.take_partial(&mut buf, p);
            return (Ok(n), buf);
        }
        // While we wait, the caller's buffer goes back to the allocator: an idle connection
        // holds no buffer, in userspace or in the kernel.
        let mut held = Some(buf);
        let next = poll_fn(|cx| {
            if let Some(res) = self.ended.get() {
                return Poll::Ready(Err(res));
            }
            match self.poll_receive(cx, true) {
                Some(c) => Poll::Ready(Ok(c)),
                None => {
                    if let Some(b) = held.take() {
                        give_back(b);
                    }
                    Poll::Pending
                }
            }
        })
        .await;
        let mut buf = held.take().unwrap_or_else(|| buffer_of(cap));
        let c = match next {
            Ok(c) => c,
            Err(0) => return (Ok(0), buf),
            Err(e) => return (Err(io::Error::from_raw_os_error(e)), buf),
        };
        match (c.res, cqueue::buffer_select(c.flags)) {
            (n, Some(bid)) if n > 0 => {
                let mut p = Partial {
                    bid,
                    start: 0,
                    end: n as usize,
                };
                let mut n = self.take_partial(&mut buf, p);
                // Room left: take what else already arrived, in order.
                while buf.len() < buf.capacity() && self.partial.get().is_none() {
                    let Some(c) = driver::with(|d| d.next_data(self.recv)) else {
                        break;
                    };
                    p = Partial {
                        bid: cqueue::buffer_select(c.flags).expect("a data completion"),
                        start: 0,
                        end: c.res as usize,
                    };
                    n += self.take_partial(&mut buf, p);
                }
                (Ok(n), buf)
            }
            (0, bid) => {
                if let Some(bid) = bid {
                    driver::with(|d| d.bufs().recycle(bid));
                }
                self.ended.set(Some(0));
                (Ok(0), buf)
            }
            (e, _) if e == -libc::ENOBUFS => self.read_own(buf).await,
            (e, bid) => {
                if let Some(bid) = bid {
                    driver::with(|d| d.bufs().recycle(bid));
                }
                if e < 0 {
                    self.ended.set(Some(-e));
                    (Err(io::Error::from_raw_os_error(-e)), buf)
                } else {
                    (
                        Err(io::Error::other("receive completed without a buffer")),
                        buf,
                    )
                }
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut buf = buf;
        let mut done = 0;
        while done < buf.len() {
            let rest = &buf[done..];
            let entry = opcode::Send::new(
                types::Fd(self.fd.as_raw_fd()),
                rest.as_ptr(),
                rest.len().min(u32::MAX as usize) as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build();
            let (c, keep) = Once::start(entry, Some(buf)).wait().await;
            buf = keep.expect("the send's buffer comes back");
            match result(c) {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        shutdown_fd(self.fd.as_raw_fd(), how)
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        let partial = self.partial.take();
        driver::try_with(|d| {
            if let Some(p) = partial {
                d.bufs().recycle(p.bid);
            }
            d.drop_multi(self.recv);
        });
        // The fd closes after this; a receive still armed holds its own reference to the
        // socket until the cancellation (queued above) ends it.
    }
}

/// A listening socket fed by one multishot accept.
pub struct UringListener {
    fd: OwnedFd,
    accept: usize,
    /// [`UringListener::stop_accepting`] was called.
    stopped: Cell<bool>,
}

impl UringListener {
    /// Takes over a bound, listening socket.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(false)?;
        // SAFETY: the descriptor comes from a listener we own and consume.
        let fd = unsafe { OwnedFd::from_raw_fd(listener.into_raw_fd()) };
        Ok(Self {
            fd,
            accept: driver::with(|d| d.new_multi(false)),
            stopped: Cell::new(false),
        })
    }

    /// Cancels the multishot accept. Connections it took before the cancellation are still
    /// handed out by [`UringListener::accept`], which then fails with `ConnectionAborted`:
    /// after a hand-over, what the kernel gave this process is served, and the rest of
    /// the queue goes to the next process.
    pub fn stop_accepting(&self) {
        self.stopped.set(true);
        driver::with(|d| d.cancel_multi(self.accept));
    }

    /// The next connection and its peer address.
    pub async fn accept(&self) -> io::Result<(UringStream, SocketAddr)> {
        let fd = self.fd.as_raw_fd();
        let c = poll_fn(|cx| {
            driver::with(|d| {
                let (next, armed) = d.poll_multi(self.accept, cx, true);
                match next {
                    Some(c) => Poll::Ready(Ok(c)),
                    None if !armed && self.stopped.get() => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the listener stopped accepting",
                    ))),
                    None => {
                        if !armed {
                            d.arm(self.accept, driver::accept_multi(fd));
                        }
                        Poll::Pending
                    }
                }
            })
        })
        .await?;
        let fd = result(c)? as RawFd;
        // SAFETY: the accept's result is a new descriptor, ours now.
        let stream = UringStream::from_fd(unsafe { OwnedFd::from_raw_fd(fd) });
        let peer = stream.peer_addr()?;
        Ok((stream, peer))
    }
}

impl AsRawFd for UringListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for UringListener {
    fn drop(&mut self) {
        // Cancels the armed accept: after a hand-over, no connection is taken by a listener
        // this worker no longer serves.
        driver::try_with(|d| d.drop_multi(self.accept));
    }
}
