//! The io_uring data path, on the `io-uring` crate: one ring per worker thread, set up with
//! `SINGLE_ISSUER | COOP_TASKRUN` (completion work runs when the worker enters the kernel,
//! so no interrupt reschedules it), multishot accept, multishot receive into a
//! provided-buffer ring, and submissions batched per pass of the worker's task queue.
//!
//! Timers, channels and the rest of async come from a tokio current-thread runtime on the
//! same thread: the ring's eventfd is one of its epoll sources, and the runtime's park hook
//! submits what the pass queued before the thread sleeps.
//!
//! Why not tokio-uring (used before): it has no multishot operations, no provided buffers
//! and no COOP_TASKRUN, so every read was a submission of its own with a buffer parked in
//! the kernel, and its completions came by inter-processor interrupt (20% of the worker's
//! cycles in `perf/results/profile.md`). Its last release is from 2024 and unmaintained.

pub mod buf_ring;
pub mod driver;
pub mod stream;

use std::{future::Future, io};

pub use driver::RingConfig;
pub use stream::{UringListener, UringStream};

/// The kernel features the io_uring mode needs, each with the Linux version that has it.
const NEEDS: &str = "io_uring with SINGLE_ISSUER|COOP_TASKRUN (Linux 6.0), a provided-buffer ring (5.19), multishot accept (5.19) and receive (6.0)";

/// Checks at start-up that this kernel (and its seccomp policy) allows everything the mode
/// uses: a ring with the flags, a registered buffer ring. The error names the feature that
/// is missing. Checked once per process, on a thread of its own: the kernel tears a ring
/// down with task work aimed at the thread that made it, which would interrupt (EINTR) a
/// blocking call with a timeout on the caller's thread.
pub fn probe() -> Result<(), String> {
    static RESULT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    RESULT
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("uring-probe".into())
                .spawn(probe_here)
                .map_err(|e| format!("cannot start the probe thread: {e}"))
                .and_then(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err("the probe panicked".into()))
                })
        })
        .clone()
}

fn probe_here() -> Result<(), String> {
    let ring = io_uring::IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(8);
    let ring = match ring {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(format!(
                "IORING_SETUP_SINGLE_ISSUER|COOP_TASKRUN is not supported (needs Linux 6.0): {e}"
            ))
        }
        Err(e) => return Err(format!("io_uring_setup failed: {e}")),
    };
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_ok() {
        use io_uring::opcode;
        for (code, name) in [
            (opcode::Recv::CODE, "IORING_OP_RECV (5.6)"),
            (opcode::Send::CODE, "IORING_OP_SEND (5.6)"),
            (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT (5.5)"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL (5.5)"),
        ] {
            if !probe.is_supported(code) {
                return Err(format!("{name} is not supported"));
            }
        }
    }
    buf_ring::BufRing::register(&ring, 2, 4096)
        .map_err(|e| format!("provided-buffer rings are not supported (needs Linux 5.19): {e}"))?;
    Ok(())
}

/// What the mode needs, for error messages.
pub fn needs() -> &'static str {
    NEEDS
}

/// Runs `fut` on this thread with a ring of its own: a tokio current-thread runtime and
/// local task set for everything else, the driver task dispatching completions.
pub fn block_on<F: Future>(config: RingConfig, fut: F) -> io::Result<F::Output> {
    driver::install(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(driver::flush)
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            driver::uninstall();
            return Err(e);
        }
    };
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, async {
        let driver_task = tokio::task::spawn_local(drive());
        let out = fut.await;
        driver_task.abort();
        out
    });
    // Tasks (and their sockets) go first, then the ring.
    drop(local);
    drop(rt);
    driver::uninstall();
    Ok(out)
}

/// Waits for completions (the eventfd) or for a batch to submit, then flushes.
async fn drive() {
    let efd = driver::eventfd().and_then(|fd| {
        // SAFETY: the descriptor is ours (a duplicate), open for as long as the AsyncFd.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
    });
    let Ok(efd) = efd else {
        tracing::warn!("io_uring worker: cannot watch the ring's eventfd");
        return;
    };
    loop {
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(Ok(mut ready)) = efd.poll_read_ready(cx) {
                // The counter is never read: epoll watches it edge-triggered, and every
                // signal is a new edge (the kernel saturates the counter, it never blocks).
                // That saves a read(2) per wake-up.
                ready.clear_ready();
                return std::task::Poll::Ready(());
            }
            if driver::poll_pending_submit(cx) {
                return std::task::Poll::Ready(());
            }
            std::task::Poll::Pending
        })
        .await;
        driver::flush();
        // Let the woken tasks run before the next flush (they queue the next batch). Not
        // `tokio::task::yield_now`: that defers the wake-up behind a poll of epoll.
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                return std::task::Poll::Ready(());
            }
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        })
        .await;
    }
}
#[cfg(test)]
mod tests;
