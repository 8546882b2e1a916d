//! The worker's ring: operations are queued as they are made and submitted together, once
//! per pass of the worker's task queue (and before it sleeps), so one `io_uring_enter`
//! carries the reads and writes of every connection that made progress in that pass.
//!
//! Completions are routed by `user_data`, the key of the operation's slot. A one-shot
//! operation's slot holds its result (and any buffer the kernel reads from) until the future
//! takes it; a multishot one's holds a queue. A future dropped while its operation is in
//! flight leaves the slot behind as an orphan, freed (with its buffer) by the final
//! completion: the kernel never writes into memory we gave back.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use super::buf_ring::BufRing;

/// `IORING_ENTER_GETEVENTS` (the crate does not export its `sys` constants).
const ENTER_GETEVENTS: u32 = 1;

/// `user_data` of operations whose completion nobody waits for (cancellations).
const IGNORED: u64 = u64::MAX;

/// Sizes of a worker's ring.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Submission queue entries (the completion queue gets twice that, and the kernel
    /// keeps overflowing completions rather than dropping them).
    pub sq_entries: u32,
    /// Provided receive buffers (a power of two) and their size.
    pub buffers: u16,
    pub buf_size: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        // 256 × 16 KiB = 4 MiB per worker, shared by all its connections: a buffer is held
        // only from a receive's completion until its bytes were copied out. 16 KiB rather
        // than 4: a receive takes at most one buffer, and a node pushing to many
        // subscribers then went out in 4 KiB sends and TLS records (push cost 30% more
        // CPU per notice than with 16 KiB, same memory; ping-pong unchanged). When the
        // ring runs dry a reader falls back to a receive into its own buffer.
        Self {
            sq_entries: 1024,
            buffers: 256,
            buf_size: 16 * 1024,
        }
    }
}

/// A multishot receive that holds more completed buffers than this is cancelled until the
/// reader catches up: a slow writer on the other side must stop our reads (backpressure),
/// not pile the peer's bytes up in the worker's buffers.
pub const MAX_QUEUED: usize = 4;

/// One completion: the result and the CQE flags.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub res: i32,
    pub flags: u32,
}

enum Slot {
    /// A one-shot operation; `keep` is memory the kernel reads or writes until it completes.
    Once {
        waker: Option<Waker>,
        done: Option<Completion>,
        keep: Option<Vec<u8>>,
        orphan: bool,
    },
    /// A multishot receive or accept.
    Multi {
        waker: Option<Waker>,
        queue: VecDeque<Completion>,
        /// The kernel still holds the request (its last completion had `F_MORE`).
        armed: bool,
        cancelling: bool,
        /// Our side is gone: free the slot (and recycle buffers) once it is disarmed.
        orphan: bool,
        /// Receives draw buffers: cancel past [`MAX_QUEUED`] (accepts don't).
        bounded: bool,
    },
}

/// A worker's io_uring with its buffer ring. Field order is drop order: the ring closes
/// before the buffers it may write to are unmapped.
pub struct Driver {
    ring: IoUring,
    bufs: BufRing,
    slots: Slab<Slot>,
    /// Entries pushed since the last submit.
    queued: usize,
    /// The driver task, woken when the first entry of a batch is queued.
    task: Option<Waker>,
    eventfd: OwnedFd,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's driver. Panics outside an io_uring worker (a programming error:
/// streams are made and used on their worker only).
pub fn with<R>(f: impl FnOnce(&mut Driver) -> R) -> R {
    DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        f(d.as_mut().expect("io_uring stream used outside its worker"))
    })
}

/// As [`with`], but does nothing where no driver is installed: for `Drop`, which may run
/// after the worker's ring was closed (the kernel let go of everything by then).
pub fn try_with(f: impl FnOnce(&mut Driver)) {
    DRIVER.with(|d| {
        if let Ok(mut d) = d.try_borrow_mut() {
            if let Some(d) = d.as_mut() {
                f(d);
            }
        }
    });
}

/// Installs a driver on this thread; it lives until [`uninstall`].
pub fn install(config: RingConfig) -> io::Result<()> {
    let driver = Driver::new(config)?;
    DRIVER.with(|d| *d.borrow_mut() = Some(driver));
    Ok(())
}

/// Cancels what is still in flight, waits briefly for the kernel to let go, and closes the
/// ring. If anything is still held after that, the buffer memory is leaked, never reused.
pub fn uninstall() {
    let Some(mut driver) = DRIVER.with(|d| d.borrow_mut().take()) else {
        return;
    };
    driver.cancel_all();
    let deadline = Instant::now() + Duration::from_millis(500);
    while !driver.slots.is_empty() && Instant::now() < deadline {
        driver.enter();
        if driver.dispatch() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if !driver.slots.is_empty() {
        let Driver {
            ring, bufs, slots, ..
        } = driver;
        drop(ring);
        std::mem::forget(bufs);
        std::mem::forget(slots);
    }
}

/// A handle on the eventfd the kernel signals when completions are ready (the driver task
/// waits on it).
pub fn eventfd() -> io::Result<OwnedFd> {
    with(|d| d.eventfd.try_clone())
}

/// Submits what is queued and dispatches what completed. Called by the driver task and
/// before the worker sleeps.
pub fn flush() {
    with(|d| d.flush());
}

/// Registers the driver task's waker; true when entries wait to be submitted.
pub fn poll_pending_submit(cx: &Context<'_>) -> bool {
    with(|d| {
        d.task = Some(cx.waker().clone());
        d.queued > 0
    })
}

impl Driver {
    fn new(config: RingConfig) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            // Not DEFER_TASKRUN: the worker sleeps in epoll on the ring's eventfd, and with
            // DEFER_TASKRUN some kernels signal that eventfd late (seen: 10-26 ms on 6.18, as
            // if deferred by RCU), one stall per round trip. COOP_TASKRUN also runs
            // completion work only when the worker enters the kernel, without an interrupt,
            // and wakes it at once when it sleeps.
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(config.sq_entries * 2)
            .build(config.sq_entries)?;
        let bufs = BufRing::register(&ring, config.buffers, config.buf_size)?;
        // SAFETY: eventfd(2); the result is checked before it is owned.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Self {
            ring,
            bufs,
            slots: Slab::with_capacity(1024),
            queued: 0,
            task: None,
            eventfd,
        })
    }

    /// Queues an entry (submitting first if the queue is full).
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry's memory (buffers, fds) is owned by its slot or by the
            // buffer ring until its completion.
            let pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
            if pushed {
                break;
            }
            self.enter();
        }
        self.queued += 1;
        if self.queued == 1 {
            if let Some(w) = &self.task {
                w.wake_by_ref();
            }
        }
    }

    /// One `io_uring_enter`: submits everything queued and runs the kernel's pending
    /// completion work (COOP_TASKRUN queues it for the worker's next entry into the kernel).
    /// It never waits: the worker sleeps in epoll, woken by the ring's eventfd.
    fn enter(&mut self) {
        let to_submit = self.ring.submission().len() as u32;
        // SAFETY: plain io_uring_enter with no extra argument.
        let r = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(to_submit, 0, ENTER_GETEVENTS, None)
        };
        match r {
            Ok(_) => self.queued = self.ring.submission().len(),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            // EBUSY/EAGAIN: the completion queue is full; dispatch, then try again.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {}
            Err(e) => tracing::warn!("io_uring_enter failed: {e}"),
        }
    }

    fn flush(&mut self) {
        // Bounded: a completion storm must not starve the worker's tasks.
        // Another round only when the kernel says more completion work is pending (or the
        // queue filled up while dispatching): the woken tasks have not run yet, so there is
        // nothing new to submit.
        for _ in 0..8 {
            self.enter();
            self.dispatch();
            let mut sq = self.ring.submission();
            sq.sync();
            if sq.is_empty() && !sq.taskrun() {
                break;
            }
        }
    }

    /// Routes completions to their slots; answers how many there were.
    fn dispatch(&mut self) -> usize {
        let mut n = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            n += 1;
            let key = cqe.user_data();
            if key == IGNORED {
                continue;
            }
            self.complete(
                key as usize,
                Completion {
                    res: cqe.result(),
                    flags: cqe.flags(),
                },
            );
        }
        n
    }

    fn complete(&mut self, key: usize, c: Completion) {
        if cqueue::buffer_select(c.flags).is_some() {
            self.bufs.taken();
        }
        let Some(slot) = self.slots.get_mut(key) else {
            // Never: slots live until their final completion.
            tracing::warn!(key, "io_uring completion for a free slot");
            return;
        };
        match slot {
            Slot::Once {
                waker,
                done,
                orphan,
                ..
            } => {
                if *orphan {
                    self.slots.remove(key);
                } else {
                    *done = Some(c);
                    if let Some(w) = waker.take() {
                        w.wake();
                    }
                }
            }
            Slot::Multi {
                waker,
                queue,
                armed,
                cancelling,
                orphan,
                bounded,
            } => {
                if !cqueue::more(c.flags) {
                    *armed = false;
                    *cancelling = false;
                }
                if *orphan {
                    let disarmed = !*armed;
                    if let Some(bid) = cqueue::buffer_select(c.flags) {
                        self.bufs.recycle(bid);
                    } else if !*bounded && c.res >= 0 {
                        close_accepted(c.res);
                    }
                    if disarmed {
                        self.slots.remove(key);
                    }
                    return;
                }
                // A cancelled multishot ends with ECANCELED: not news for the reader.
                if !(c.res == -libc::ECANCELED && cqueue::buffer_select(c.flags).is_none()) {
                    queue.push_back(c);
                }
                let cancel = *bounded && *armed && !*cancelling && queue.len() > MAX_QUEUED;
                if cancel {
                    *cancelling = true;
                }
                if let Some(w) = waker.take() {
                    w.wake();
                }
                if cancel {
                    self.push_cancel(key);
                }
            }
        }
    }

    /// Cancels every request still in flight (at worker exit).
    fn cancel_all(&mut self) {
        let keys: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                matches!(
                    s,
                    Slot::Multi { armed: true, .. } | Slot::Once { done: None, .. }
                )
            })
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.push_cancel(k);
        }
    }

    /// Queues the cancellation of the request in slot `key`.
    fn push_cancel(&mut self, key: usize) {
        self.push(
            opcode::AsyncCancel::new(key as u64)
                .build()
                .user_data(IGNORED),
        );
    }

    /// Starts a one-shot operation; `keep` stays alive until it completes.
    pub fn start_once(&mut self, entry: squeue::Entry, keep: Option<Vec<u8>>) -> usize {
        let key = self.slots.insert(Slot::Once {
            waker: None,
            done: None,
            keep,
            orphan: false,
        });
        self.push(entry.user_data(key as u64));
        key
    }

    /// The result of one-shot operation `key` (and its kept buffer), once completed.
    pub fn poll_once(
        &mut self,
        key: usize,
        cx: &Context<'_>,
    ) -> Poll<(Completion, Option<Vec<u8>>)> {
        let Some(Slot::Once {
            waker, done, keep, ..
        }) = self.slots.get_mut(key)
        else {
            unreachable!("poll of a slot that is not a one-shot operation");
        };
        match done.take() {
            Some(c) => {
                let keep = keep.take();
                self.slots.remove(key);
                Poll::Ready((c, keep))
            }
            None => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// The future of `key` was dropped before its completion: nobody wants the result, so
    /// the request is cancelled (a send to a peer that never reads would otherwise hold its
    /// socket and buffer for good); the slot goes at the final completion.
    pub fn forget_once(&mut self, key: usize) {
        match self.slots.get_mut(key) {
            Some(Slot::Once { done: Some(_), .. }) => {
                self.slots.remove(key);
            }
            Some(Slot::Once { orphan, waker, .. }) => {
                *orphan = true;
                *waker = None;
                self.push_cancel(key);
            }
            _ => {}
        }
    }

    /// A new multishot slot (not yet armed).
    pub fn new_multi(&mut self, bounded: bool) -> usize {
        self.slots.insert(Slot::Multi {
            waker: None,
            queue: VecDeque::new(),
            armed: false,
            cancelling: false,
            orphan: false,
            bounded,
        })
    }

    /// Arms multishot slot `key` with `entry` unless it is armed already.
    pub fn arm(&mut self, key: usize, entry: squeue::Entry) {
        if let Some(Slot::Multi { armed, .. }) = self.slots.get_mut(key) {
            if !*armed {
                *armed = true;
                self.push(entry.user_data(key as u64));
            }
        }
    }

    /// The front completion of multishot slot `key`, taken (`take`) or only looked at (a
    /// readiness wait); when there is none, the waker is kept. Also says whether the
    /// request is still armed.
    pub fn poll_multi(
        &mut self,
        key: usize,
        cx: &Context<'_>,
        take: bool,
    ) -> (Option<Completion>, bool) {
        let Some(Slot::Multi {
            waker,
            queue,
            armed,
            ..
        }) = self.slots.get_mut(key)
        else {
            unreachable!("poll of a slot that is not multishot");
        };
        let front = if take {
            queue.pop_front()
        } else {
            queue.front().copied()
        };
        if front.is_none() {
            *waker = Some(cx.waker().clone());
        }
        (front, *armed)
    }

    /// The next completion of multishot slot `key` if it carries bytes (a reader with room
    /// left takes several at once); EOF and errors stay queued for the next read.
    pub fn next_data(&mut self, key: usize) -> Option<Completion> {
        let Some(Slot::Multi { queue, .. }) = self.slots.get_mut(key) else {
            return None;
        };
        match queue.front() {
            Some(c) if c.res > 0 && cqueue::buffer_select(c.flags).is_some() => queue.pop_front(),
            _ => None,
        }
    }

    /// Cancels multishot slot `key` if it is armed; what completed before stays queued.
    pub fn cancel_multi(&mut self, key: usize) {
        if let Some(Slot::Multi {
            armed: true,
            cancelling,
            ..
        }) = self.slots.get_mut(key)
        {
            if !*cancelling {
                *cancelling = true;
                self.push_cancel(key);
            }
        }
    }

    /// Our side of multishot slot `key` is gone: recycle what it holds, cancel it if armed,
    /// free it once the kernel let go.
    pub fn drop_multi(&mut self, key: usize) {
        let Some(Slot::Multi {
            queue,
            armed,
            orphan,
            waker,
            bounded,
            ..
        }) = self.slots.get_mut(key)
        else {
            return;
        };
        *orphan = true;
        *waker = None;
        let mut held = Vec::new();
        for c in queue.drain(..) {
            match cqueue::buffer_select(c.flags) {
                Some(bid) => held.push(bid),
                // An accepted connection nobody will serve (the listener is going away).
                None if !*bounded && c.res >= 0 => close_accepted(c.res),
                None => {}
            }
        }
        let armed = *armed;
        for bid in held {
            self.bufs.recycle(bid);
        }
        if armed {
            self.cancel_multi(key);
        } else {
            self.slots.remove(key);
        }
    }

    pub fn bufs(&mut self) -> &mut BufRing {
        &mut self.bufs
    }

    /// Slots in use (operations in flight or completed and not yet taken).
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }
}

fn close_accepted(fd: i32) {
    // SAFETY: an accept's result is a new descriptor that nothing else owns.
    unsafe { libc::close(fd) };
}

/// A multishot receive on `fd` drawing from the worker's buffer ring.
pub fn recv_multi(fd: RawFd) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), super::buf_ring::GROUP).build()
}

/// A multishot accept on listening socket `fd` (the new sockets are blocking, close-on-exec).
pub fn accept_multi(fd: RawFd) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(fd))
        .flags(libc::SOCK_CLOEXEC)
        .build()
}
