//! Worker threads: one single-threaded runtime per core (io_uring or epoll), each with its
//! own `SO_REUSEPORT` listener per listening address, so the kernel spreads connections
//! over cores and no lock is shared on the accept path.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use super::{
    handler::{handle, ListenerCtx},
    io::{Io, IoMode},
    net::{Connector, EpollConnector, UringConnector},
    tls::{TlsAcceptor, TlsIo},
};

/// A listening address served by the terminator.
#[derive(Clone)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub ctx: Arc<ListenerCtx>,
    /// `None`: a plain `ws` listener.
    pub tls: Option<TlsAcceptor>,
}

/// Connection limits shared by all workers.
#[derive(Debug)]
pub struct ConnLimits {
    pub max_total: usize,
    pub max_per_client: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_client,
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or None when a limit is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_client {
            drop(map);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    pub fn active(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// Held for the life of a connection; gives its slot back on drop.
struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Live client sockets of one worker, so a shutdown deadline can close them. Ids come from
/// one counter per worker: a worker accepts on several listeners into the same registry.
#[derive(Clone, Default)]
struct LiveSockets {
    fds: Rc<RefCell<HashMap<u64, RawFd>>>,
    next_id: Rc<Cell<u64>>,
}

impl LiveSockets {
    /// Admits a just-accepted connection (limits) and registers its socket; None when a
    /// limit is reached (the caller drops, i.e. closes, the stream).
    fn admit(
        &self,
        limits: &Arc<ConnLimits>,
        peer: SocketAddr,
        fd: RawFd,
    ) -> Option<(ConnSlot, LiveGuard)> {
        let slot = limits.admit(peer.ip())?;
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        self.fds.borrow_mut().insert(id, fd);
        Some((
            slot,
            LiveGuard {
                live: self.clone(),
                id,
            },
        ))
    }

    fn is_empty(&self) -> bool {
        self.fds.borrow().is_empty()
    }
}

/// A running terminator.
pub struct Terminator {
    threads: Vec<JoinHandle<()>>,
    control: Arc<Control>,
    pub mode: IoMode,
    pub local_addrs: Vec<SocketAddr>,
    pub limits: Arc<ConnLimits>,
    /// Duplicates of every listening socket, per listener in `start`'s order: what an
    /// upgrade hands to the next process (the sockets themselves, so no connect is refused).
    shared: Vec<Vec<OwnedFd>>,
}

/// How the workers are told to stop.
#[derive(Debug, Default)]
struct Control {
    /// Stop accepting.
    stop: AtomicBool,
    /// The listening sockets belong to the next process now: stop accepting without shutting
    /// them down (that would stop its accepts too), and let live connections run until
    /// `force` instead of the shutdown grace.
    handed_over: AtomicBool,
    /// Close what is still live.
    force: AtomicBool,
}

/// Whether this kernel lets us run the io_uring mode (containers and seccomp profiles often
/// don't; older kernels lack features): the missing feature otherwise.
pub fn uring_available() -> Result<(), String> {
    super::uring::probe()
}

/// `auto`: io_uring when the kernel allows it, else epoll (logged with the reason).
pub fn pick_mode(requested: Option<IoMode>) -> IoMode {
    let (mode, fallback) = decide_mode(requested, uring_available);
    if let Some(line) = fallback {
        warn!("{line}");
    }
    mode
}

/// The pure part of [`pick_mode`]: the mode, and the log line when `auto` falls back to
/// epoll (it names what the kernel lacks and what the mode needs). The probe runs only
/// for `auto`: an explicit mode is taken as asked, and a ring that cannot be made then
/// fails the start with its own error.
pub fn decide_mode(
    requested: Option<IoMode>,
    probe: impl FnOnce() -> Result<(), String>,
) -> (IoMode, Option<String>) {
    match requested {
        Some(m) => (m, None),
        None => match probe() {
            Ok(()) => (IoMode::Uring, None),
            Err(why) => (
                IoMode::Epoll,
                Some(format!(
                    "io_uring mode unavailable ({why}; it needs {}); using epoll",
                    super::uring::needs()
                )),
            ),
        },
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl Terminator {
    /// Binds every listener once per worker and starts the workers.
    pub fn start(
        mode: IoMode,
        workers: usize,
        listeners: Vec<ListenerSpec>,
        limits: Arc<ConnLimits>,
        grace: Duration,
    ) -> io::Result<Self> {
        let none = listeners.iter().map(|_| Vec::new()).collect();
        Self::start_inheriting(mode, workers, listeners, limits, grace, none)
    }

    /// As [`Terminator::start`], but listener `i` first serves the listening sockets in
    /// `inherited[i]` (an earlier process's, handed over in an upgrade), spread over the
    /// workers; a worker left without one binds its own (`SO_REUSEPORT`).
    pub fn start_inheriting(
        mode: IoMode,
        workers: usize,
        mut listeners: Vec<ListenerSpec>,
        limits: Arc<ConnLimits>,
        grace: Duration,
        mut inherited: Vec<Vec<std::net::TcpListener>>,
    ) -> io::Result<Self> {
        let workers = workers.max(1);
        if mode == IoMode::Uring {
            uring_available().map_err(|why| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring mode: {why} (it needs {})", super::uring::needs()),
                )
            })?;
        }
        inherited.resize_with(listeners.len(), Vec::new);
        let mut per_worker: Vec<Vec<(std::net::TcpListener, ListenerSpec)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::new();
        let mut shared = Vec::new();
        for (spec, given) in listeners.iter_mut().zip(inherited) {
            let mut socks: Vec<std::net::TcpListener> = given;
            for s in &socks {
                s.set_nonblocking(true)?;
            }
            // Port 0 (tests): the first bind picks the port, the other workers reuse it.
            if socks.is_empty() {
                socks.push(bind_reuseport(spec.addr)?);
            }
            spec.addr = socks[0].local_addr()?;
            while socks.len() < workers {
                socks.push(bind_reuseport(spec.addr)?);
            }
            local_addrs.push(spec.addr);
            shared.push(
                socks
                    .iter()
                    .map(|s| s.as_fd().try_clone_to_owned())
                    .collect::<io::Result<Vec<_>>>()?,
            );
            for (i, sock) in socks.into_iter().enumerate() {
                per_worker[i % workers].push((sock, spec.clone()));
            }
        }
        let control = Arc::new(Control::default());
        let mut threads = Vec::new();
        for (i, socks) in per_worker.into_iter().enumerate() {
            let control = control.clone();
            let limits = limits.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("term-{i}"))
                    .spawn(move || match mode {
                        IoMode::Epoll => run_epoll(socks, limits, control, grace),
                        IoMode::Uring => run_uring(socks, limits, control, grace),
                    })?,
            );
        }
        info!(?mode, workers, "terminator started");
        Ok(Self {
            threads,
            control,
            mode,
            local_addrs,
            limits,
            shared,
        })
    }

    /// Duplicates of the listening sockets of listener `i` (in `start`'s order), for the
    /// next process.
    pub fn listening_sockets(&self, i: usize) -> io::Result<Vec<OwnedFd>> {
        self.shared
            .get(i)
            .map(|fds| fds.iter().map(|fd| fd.try_clone()).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Stops accepting, lets live connections finish up to the grace period, then closes
    /// them; returns when every worker is done.
    pub fn shutdown(self) {
        self.control.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// The listening sockets went to the next process: stops accepting on them without
    /// shutting them down; live connections go on until [`HandedOver::close`].
    pub fn hand_over(self) -> HandedOver {
        self.control.handed_over.store(true, Ordering::SeqCst);
        self.control.stop.store(true, Ordering::SeqCst);
        HandedOver {
            threads: self.threads,
            control: self.control,
            limits: self.limits,
        }
    }
}

/// A terminator whose listening sockets were handed over, serving its live connections.
pub struct HandedOver {
    threads: Vec<JoinHandle<()>>,
    control: Arc<Control>,
    limits: Arc<ConnLimits>,
}

impl HandedOver {
    /// Live connections (of every instance sharing the limits).
    pub fn active(&self) -> usize {
        self.limits.active()
    }

    /// Closes whatever is still live and returns when every worker is done.
    pub fn close(self) {
        self.control.force.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn serve_conn<S: Io + 'static, K: Connector>(
    stream: S,
    peer: SocketAddr,
    spec: ListenerSpec,
    connector: Rc<K>,
    admitted: (ConnSlot, LiveGuard),
) -> impl std::future::Future<Output = ()> {
    let ListenerSpec { ctx, tls, .. } = spec;
    // An async block over what it needs, not an async fn: a fn's future stores its
    // arguments twice (as passed and as moved into the body) for the connection's life.
    // `admitted` (the limits' count, the live-socket entry) is released when it ends.
    async move {
        let _admitted = &admitted;
        match tls {
            Some(acceptor) => {
                // Boxed: the handshake's state is freed once done (the task keeps its
                // largest await for as long as the connection lives).
                let accepting = Box::pin(TlsIo::accept(stream, &acceptor, ctx.handshake_timeout));
                let Ok(tls) = accepting.await else {
                    return;
                };
                drop(acceptor);
                handle(Rc::new(tls), peer, ctx, &*connector).await;
            }
            None => {
                handle(Rc::new(stream), peer, ctx, &*connector).await;
            }
        }
    }
}

/// Waits for `stop`; then shuts the listeners (ending pending accepts) unless they were
/// handed over to the next process. Answers whether they were.
async fn wait_for_stop(listener_fds: &[RawFd], control: &Control) -> bool {
    while !control.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handed_over = control.handed_over.load(Ordering::SeqCst);
    if !handed_over {
        for fd in listener_fds {
            // SAFETY: shutdown(2) on a listening socket this worker owns: pending accepts fail.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
    }
    handed_over
}

/// Waits for live connections up to `grace` (after a hand-over: until `force`), then shuts
/// those down too.
async fn drain(live: &LiveSockets, control: &Control, handed_over: bool, grace: Duration) {
    let deadline = Instant::now() + grace;
    let done = || {
        live.is_empty()
            || if handed_over {
                control.force.load(Ordering::SeqCst)
            } else {
                Instant::now() >= deadline
            }
    };
    while !done() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for fd in live.fds.borrow().values() {
        // SAFETY: these fds stay open while registered (removed before the stream drops).
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
    }
    // Most handlers end at once on the shut-down client socket. One still waiting on its node
    // (a connect, a `101`, a node that never closes) must not hold the shutdown: what is left
    // after this is dropped with the runtime, which closes both of its sockets.
    let hard = Instant::now() + FORCED_CLOSE_WAIT;
    while !live.is_empty() && Instant::now() < hard {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long handlers get to notice their client socket was shut down after the grace.
const FORCED_CLOSE_WAIT: Duration = Duration::from_millis(500);

/// Registers a client socket for the shutdown deadline for as long as it is alive.
struct LiveGuard {
    live: LiveSockets,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.fds.borrow_mut().remove(&self.id);
    }
}

fn run_epoll(
    socks: Vec<(std::net::TcpListener, ListenerSpec)>,
    limits: Arc<ConnLimits>,
    control: Arc<Control>,
    grace: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!("epoll worker failed to start: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let live = LiveSockets::default();
        let connector = Rc::new(EpollConnector);
        let mut fds = Vec::new();
        let mut accepts = Vec::new();
        // Held until the listeners are shut down: an accept loop that ends early (stop seen
        // after an accept, or an error) must not close a socket whose fd number
        // `wait_for_stop` still shuts down; the number could belong to another listener's
        // connection by then.
        let mut held = Vec::new();
        for (std_listener, spec) in socks {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                continue;
            };
            let listener = Rc::new(listener);
            fds.push(listener.as_raw_fd());
            held.push(listener.clone());
            accepts.push(tokio::task::spawn_local(accept_loop(
                false,
                move || {
                    let l = listener.clone();
                    async move { l.accept().await }
                },
                |f| {
                    tokio::task::spawn_local(f);
                },
                spec,
                Shared::new(&live, &limits, &connector, &control),
            )));
        }
        let handed_over = wait_for_stop(&fds, &control).await;
        // No accept after this: the listeners are shut, or the next process's now (our
        // copies close here; the sockets live on in that process).
        for a in accepts {
            a.abort();
        }
        drop(held);
        drain(&live, &control, handed_over, grace).await;
    });
}

/// A stream an accept loop hands to a connection handler.
trait Accepted: Io + 'static {
    fn no_delay(&self);
}

impl Accepted for tokio::net::TcpStream {
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl Accepted for super::uring::UringStream {
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

/// What every accept loop of a worker shares.
struct Shared<K> {
    live: LiveSockets,
    limits: Arc<ConnLimits>,
    connector: Rc<K>,
    control: Arc<Control>,
}

impl<K> Shared<K> {
    fn new(
        live: &LiveSockets,
        limits: &Arc<ConnLimits>,
        connector: &Rc<K>,
        control: &Arc<Control>,
    ) -> Self {
        Self {
            live: live.clone(),
            limits: limits.clone(),
            connector: connector.clone(),
            control: control.clone(),
        }
    }
}

/// One listener's accept loop, for either runtime (`accept` and `spawn` are its own): admits
/// each connection (limits, the live registry) and spawns its handler, until `stop` (with
/// `drains`: until `accept` fails after `stop`).
async fn accept_loop<S, K, A, Fut>(
    drains: bool,
    mut accept: A,
    spawn: impl Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>),
    spec: ListenerSpec,
    Shared {
        live,
        limits,
        connector,
        control,
    }: Shared<K>,
) where
    S: Accepted,
    K: Connector + 'static,
    A: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<(S, SocketAddr)>>,
{
    let mut errors = AcceptErrors::default();
    loop {
        if control.stop.load(Ordering::SeqCst) && !drains {
            break;
        }
        let accepted = accept().await;
        // A source that drains (io_uring) ends with an error once it was stopped: what it
        // took before that is served.
        if accepted.is_err() && drains && control.stop.load(Ordering::SeqCst) {
            break;
        }
        let Some((stream, peer)) = errors.take(accepted).await else {
            continue;
        };
        stream.no_delay();
        let Some((slot, guard)) = live.admit(&limits, peer, stream.as_raw_fd()) else {
            continue;
        };
        let (spec, connector) = (spec.clone(), connector.clone());
        // The future itself, not an async block around it: a block would keep its own
        // copy of every argument for the connection's whole life.
        spawn(Box::pin(serve_conn(
            stream,
            peer,
            spec,
            connector,
            (slot, guard),
        )));
    }
}

/// A failed `accept` (out of file descriptors, out of memory, a connection reset while
/// queued) must not end the accept loop: the listener would stop serving for good. Back off
/// briefly so that a persistent error (EMFILE until connections close) does not spin, and
/// log once per streak.
#[derive(Debug, Default)]
struct AcceptErrors {
    streak: u32,
}

impl AcceptErrors {
    /// The accepted connection, or None after the back-off for a failed accept.
    async fn take<T>(&mut self, accepted: std::io::Result<T>) -> Option<T> {
        match accepted {
            Ok(a) => {
                self.streak = 0;
                Some(a)
            }
            Err(e) => {
                tokio::time::sleep(self.on_error(&e)).await;
                None
            }
        }
    }

    fn on_error(&mut self, e: &std::io::Error) -> Duration {
        if self.streak == 0 {
            tracing::warn!("accept failed, retrying: {e}");
        }
        self.streak = self.streak.saturating_add(1);
        // 1, 2, 4 ... ms, at most 100 ms.
        Duration::from_millis((1u64 << self.streak.min(7)).min(100))
    }
}

fn run_uring(
    socks: Vec<(std::net::TcpListener, ListenerSpec)>,
    limits: Arc<ConnLimits>,
    control: Arc<Control>,
    grace: Duration,
) {
    let served = super::uring::block_on(super::uring::RingConfig::default(), async move {
        let live = LiveSockets::default();
        let connector = Rc::new(UringConnector);
        let mut fds = Vec::new();
        // Held until the listeners are shut down (see `run_epoll`).
        let mut held = Vec::new();
        let mut accepts = Vec::new();
        for (std_listener, spec) in socks {
            fds.push(std_listener.as_raw_fd());
            let listener = match super::uring::UringListener::from_std(std_listener) {
                Ok(l) => Rc::new(l),
                Err(e) => {
                    warn!("io_uring worker: listener: {e}");
                    continue;
                }
            };
            held.push(listener.clone());
            accepts.push(tokio::task::spawn_local(accept_loop(
                true,
                move || {
                    let l = listener.clone();
                    async move { l.accept().await }
                },
                |f| {
                    tokio::task::spawn_local(f);
                },
                spec,
                Shared::new(&live, &limits, &connector, &control),
            )));
        }
        let handed_over = wait_for_stop(&fds, &control).await;
        // Cancel the multishot accepts and serve what they took before the cancellation
        // (after a hand-over, the rest of the queue is the next process's).
        for l in &held {
            l.stop_accepting();
        }
        for a in accepts {
            let abort = a.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), a)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        drop(held);
        drain(&live, &control, handed_over, grace).await;
    });
    if let Err(e) = served {
        warn!("io_uring worker failed to start: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_accept_backs_off_and_a_good_one_resets() {
        let mut errors = AcceptErrors::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let waits: Vec<u128> = (0..9)
            .map(|_| errors.on_error(&emfile).as_millis())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 100, 100, 100]);
        assert_eq!(errors.take(Ok(7)).await, Some(7));
        assert_eq!(errors.streak, 0, "a good accept starts the back-off over");
        let failed: Option<()> = errors.take(Err(emfile)).await;
        assert_eq!((failed, errors.streak), (None, 1));
    }

    /// What every connection keeps for its whole life, however idle: the state of its
    /// task. The relay's idle wait is small and the rest is boxed while it runs (see
    /// `relay::copy`); an await put in the wrong place, or an argument kept twice, grows
    /// every connection (this was 3,088 bytes; 1,336 for epoll and 1,360 for io_uring now,
    /// the relay's rest timer included).
    #[test]
    fn the_task_every_connection_keeps_stays_small() {
        fn future_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let epoll = future_size(serve_conn::<tokio::net::TcpStream, EpollConnector>);
        let uring = future_size(serve_conn::<super::super::uring::UringStream, UringConnector>);
        assert!(epoll <= 1400, "epoll connection task: {epoll} bytes");
        assert!(uring <= 1400, "io_uring connection task: {uring} bytes");
    }

    #[test]
    fn auto_falls_back_to_epoll_naming_the_missing_feature() {
        let missing = || {
            Err("IORING_SETUP_SINGLE_ISSUER|COOP_TASKRUN is not supported (needs Linux 6.0)".into())
        };
        let (mode, line) = decide_mode(None, missing);
        assert_eq!(mode, IoMode::Epoll);
        let line = line.expect("a fallback is logged");
        assert!(line.contains("COOP_TASKRUN is not supported"), "{line}");
        assert!(line.contains("using epoll"), "{line}");

        assert_eq!(decide_mode(None, || Ok(())), (IoMode::Uring, None));
        let never = || -> Result<(), String> { panic!("an explicit mode is not probed") };
        assert_eq!(
            decide_mode(Some(IoMode::Epoll), never),
            (IoMode::Epoll, None)
        );
        assert_eq!(
            decide_mode(Some(IoMode::Uring), never),
            (IoMode::Uring, None)
        );
    }

    #[test]
    fn auto_on_this_kernel_follows_the_real_probe() {
        // `pick_mode` wires the real probe into `decide_mode`: io_uring exactly when this
        // kernel has every feature (the uring tests say which it has).
        let expected = match uring_available() {
            Ok(()) => IoMode::Uring,
            Err(_) => IoMode::Epoll,
        };
        assert_eq!(pick_mode(None), expected);
        assert_eq!(pick_mode(Some(IoMode::Epoll)), IoMode::Epoll);
    }
}
