//! Upgrades that refuse nobody: the running process starts the new binary, hands it its
//! listening sockets themselves (the fds, over a private unix socket, `SCM_RIGHTS`), and
//! once the new process serves, stops accepting and drains.
//!
//! ```text
//! proxy upgrade ──admin──► old: spawns `<binary> run … --takeover S`, listens on S (0600)
//! new ──connect S──► old: offer (listener names, addresses, their sockets; the /metrics one)
//! new: config, XDP (adopts the pinned link), terminators on the inherited sockets
//! new ──"ready"──► old ──"ok"──► new: binds the admin socket; old: stops accepting, drains
//! ```
//! A new process that rejects its config, cannot load its program or exits before it is
//! ready changes nothing: the old one keeps its listeners and serves on, and the upgrade
//! command says why. One upgrade at a time.
//!
//! The messages are `SOCK_SEQPACKET` records (boundaries kept, descriptors attached to the
//! record that carries them): a JSON header, then the descriptors in chunks.

use std::{
    collections::HashMap,
    ffi::OsString,
    io,
    mem::{size_of, MaybeUninit},
    net::SocketAddr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Descriptors per record (the kernel takes at most 253).
const FDS_PER_RECORD: usize = 128;
/// Longest record.
const MAX_RECORD: usize = 64 * 1024;
/// How long the new process may take to connect and then to get ready (loading and
/// verifying the XDP program takes seconds).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// One listener's sockets in an offer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OfferedListener {
    pub name: String,
    pub address: SocketAddr,
    pub sockets: usize,
}

/// The header of an offer; the descriptors follow in its order (listeners', then metrics').
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct OfferHeader {
    pid: u32,
    listeners: Vec<OfferedListener>,
    metrics: Option<SocketAddr>,
}

/// What the old process hands over.
#[derive(Debug, Default)]
pub struct Offer {
    pub listeners: Vec<(OfferedListener, Vec<OwnedFd>)>,
    pub metrics: Option<(SocketAddr, OwnedFd)>,
}

/// What the new process got: listening sockets by listener name (with the address they
/// are bound to), and the `/metrics` one.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: HashMap<String, (SocketAddr, Vec<std::net::TcpListener>)>,
    pub metrics: Option<(SocketAddr, std::net::TcpListener)>,
    /// The old process.
    pub from_pid: u32,
}

impl Inherited {
    /// The sockets of listener `name` if they are bound to `address` (a listener whose
    /// address changed gets new ones).
    pub fn take_listener(&mut self, name: &str, address: SocketAddr) -> Vec<std::net::TcpListener> {
        match self.listeners.remove(name) {
            Some((addr, socks)) if addr == address => socks,
            _ => Vec::new(),
        }
    }

    /// The `/metrics` socket if it is bound to `address`.
    pub fn take_metrics(&mut self, address: SocketAddr) -> Option<std::net::TcpListener> {
        match self.metrics.take() {
            Some((addr, sock)) if addr == address => Some(sock),
            _ => None,
        }
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned from here on.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok((addr, size_of::<libc::sockaddr_un>() as libc::socklen_t))
}

/// Waits until `fd` is readable, at most `timeout`; false on timeout.
fn readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = cvt(unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) })?;
    Ok(n > 0)
}

/// Sends one record with `fds` attached.
fn send_record(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    // SAFETY: msghdr is plain data; all zeroes is valid and fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: the control buffer has room for one header with `fds` (CMSG_SPACE); the
        // pointers CMSG_FIRSTHDR/CMSG_DATA return lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), bytes);
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one record and the descriptors attached to it (owned from here on). An empty
/// record with no descriptors means the peer closed.
fn recv_record(sock: RawFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; MAX_RECORD];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_RECORD * size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![MaybeUninit::<u8>::zeroed(); space];
    // SAFETY: plain data; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space;
    // SAFETY: msg points at live buffers; MSG_CMSG_CLOEXEC keeps received fds from leaking
    // into children.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`, within
    // msg_controllen; each SCM_RIGHTS payload is an array of fds now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..bytes / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off in transit"));
    }
    data.truncate(n as usize);
    Ok((data, fds))
}

/// The pid of the process at the other end of a unix socket.
fn peer_pid(sock: RawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_PEERCRED) into a ucred of the size given.
    cvt(unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(cred.pid as u32)
}

// ---------------------------------------------------------------------------------------
// The old process's side.

/// How to start the new process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary to start (default: the path this process was started from).
    pub binary: PathBuf,
    /// Its arguments (this process's own `run …` arguments; `--takeover S` is added).
    pub args: Vec<OsString>,
    /// Where the private hand-over socket goes (beside the admin socket).
    pub socket_dir: PathBuf,
}

impl Launch {
    /// This process's own command line, without an earlier `--takeover <path>`.
    pub fn from_current(binary: Option<PathBuf>, socket_dir: PathBuf) -> io::Result<Launch> {
        let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
        if let Some(i) = args.iter().position(|a| a == "--takeover") {
            args.drain(i..(i + 2).min(args.len()));
        }
        let binary = match binary {
            Some(b) => b,
            None => STARTED_FROM
                .get()
                .cloned()
                .map_or_else(std::env::current_exe, Ok)?,
        };
        Ok(Launch {
            binary,
            args,
            socket_dir,
        })
    }
}

static STARTED_FROM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Records the path this binary was started from, before a package upgrade replaces the
/// file (afterwards `/proc/self/exe` names the deleted old inode). Call at start.
pub fn remember_binary() {
    if let Ok(p) = std::env::current_exe() {
        let _ = STARTED_FROM.set(p);
    }
}

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the new process exited with {0} before it was ready (its log lines are in this proxy's log); this process keeps serving")]
    Exited(std::process::ExitStatus),
    #[error("the new process failed: {0}; this process keeps serving")]
    Failed(String),
    #[error(
        "the new process was not ready within {0:?}; it was stopped and this process keeps serving"
    )]
    Timeout(Duration),
    #[error("hand-over socket: {0}; this process keeps serving")]
    Io(#[from] io::Error),
}

/// Runs the old side of an upgrade to its end (blocking: call it on a thread of its own):
/// starts the new process, hands it `offer`, and answers its pid once it is ready. On any
/// failure the new process is stopped.
pub fn hand_over(launch: &Launch, offer: Offer) -> Result<u32, UpgradeError> {
    let dir = launch
        .socket_dir
        .join(format!(".upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    let path = dir.join("s");
    let result = (|| {
        let listener = seqpacket()?;
        let (addr, len) = unix_addr(&path)?;
        // SAFETY: bind/listen on our own socket with a valid sockaddr_un.
        cvt(unsafe {
            libc::bind(
                listener.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                len,
            )
        })?;
        // SAFETY: as above.
        cvt(unsafe { libc::listen(listener.as_raw_fd(), 1) })?;
        let mut child = Command::new(&launch.binary)
            .args(&launch.args)
            .arg("--takeover")
            .arg(&path)
            .spawn()
            .map_err(|source| UpgradeError::Spawn {
                binary: launch.binary.clone(),
                source,
            })?;
        let outcome = converse(&listener, &mut child, offer);
        if outcome.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        outcome
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Waits for `fd` to become readable while `child` runs, at most `timeout`.
fn wait_readable(fd: RawFd, child: &mut Child, timeout: Duration) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + timeout;
    loop {
        if readable(fd, Duration::from_millis(100))? {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(UpgradeError::Exited(status));
        }
        if Instant::now() >= deadline {
            return Err(UpgradeError::Timeout(timeout));
        }
    }
}

fn converse(listener: &OwnedFd, child: &mut Child, offer: Offer) -> Result<u32, UpgradeError> {
    wait_readable(listener.as_raw_fd(), child, READY_TIMEOUT)?;
    // SAFETY: accept(2) on our listening socket; the fd is owned from here on.
    let conn = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh fd from accept4.
    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
    let peer = peer_pid(conn.as_raw_fd())?;
    if peer != child.id() {
        return Err(UpgradeError::Failed(format!(
            "pid {peer} connected to the hand-over socket, not the new process ({})",
            child.id()
        )));
    }
    let header = OfferHeader {
        pid: std::process::id(),
        listeners: offer.listeners.iter().map(|(l, _)| l.clone()).collect(),
        metrics: offer.metrics.as_ref().map(|(a, _)| *a),
    };
    let mut fds: Vec<RawFd> = offer
        .listeners
        .iter()
        .flat_map(|(_, fds)| fds.iter().map(|f| f.as_raw_fd()))
        .collect();
    fds.extend(offer.metrics.as_ref().map(|(_, f)| f.as_raw_fd()));
    let header = serde_json::to_vec(&header).map_err(io::Error::other)?;
    send_record(conn.as_raw_fd(), &header, &[])?;
    for chunk in fds.chunks(FDS_PER_RECORD) {
        send_record(conn.as_raw_fd(), b"fds", chunk)?;
    }
    // Our copies close with `offer`; the sockets live on in both processes.
    drop(offer);
    wait_readable(conn.as_raw_fd(), child, READY_TIMEOUT)?;
    let (answer, _) = recv_record(conn.as_raw_fd())?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.strip_prefix("failed ") {
        _ if answer == "ready" => {
            send_record(conn.as_raw_fd(), b"ok", &[])?;
            Ok(child.id())
        }
        Some(why) => {
            let _ = child.wait();
            Err(UpgradeError::Failed(why.to_string()))
        }
        None if answer.is_empty() => match child.wait() {
            Ok(status) => Err(UpgradeError::Exited(status)),
            Err(e) => Err(UpgradeError::Io(e)),
        },
        None => Err(UpgradeError::Failed(format!(
            "unexpected answer {answer:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// The new process's side.

/// The new process's end of the hand-over socket.
pub struct Takeover {
    conn: OwnedFd,
}

impl Takeover {
    /// Connects to the old process's hand-over socket and receives its offer.
    pub fn connect(path: &Path) -> io::Result<(Takeover, Inherited)> {
        let conn = seqpacket()?;
        let (addr, len) = unix_addr(path)?;
        // SAFETY: connect(2) on our socket with a valid sockaddr_un.
        cvt(unsafe {
            libc::connect(
                conn.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                len,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", path.display())))?;
        let (header, _) = recv_record(conn.as_raw_fd())?;
        let header: OfferHeader = serde_json::from_slice(&header)
            .map_err(|e| io::Error::other(format!("bad offer: {e}")))?;
        let wanted = header.listeners.iter().map(|l| l.sockets).sum::<usize>()
            + usize::from(header.metrics.is_some());
        let mut fds = Vec::with_capacity(wanted);
        while fds.len() < wanted {
            let (_, got) = recv_record(conn.as_raw_fd())?;
            if got.is_empty() {
                return Err(io::Error::other(format!(
                    "the offer ended after {} of {wanted} sockets",
                    fds.len()
                )));
            }
            fds.extend(got);
        }
        let mut fds = fds.into_iter();
        let mut inherited = Inherited {
            from_pid: header.pid,
            ..Inherited::default()
        };
        for l in header.listeners {
            let socks = fds
                .by_ref()
                .take(l.sockets)
                .map(std::net::TcpListener::from)
                .collect();
            inherited.listeners.insert(l.name, (l.address, socks));
        }
        if let (Some(addr), Some(fd)) = (header.metrics, fds.next()) {
            inherited.metrics = Some((addr, std::net::TcpListener::from(fd)));
        }
        Ok((Takeover { conn }, inherited))
    }

    /// Tells the old process this one serves, and waits for it to step back.
    pub fn ready(self) -> io::Result<()> {
        send_record(self.conn.as_raw_fd(), b"ready", &[])?;
        if !readable(self.conn.as_raw_fd(), Duration::from_secs(30))? {
            return Err(io::Error::other("the old process did not answer `ready`"));
        }
        let (answer, _) = recv_record(self.conn.as_raw_fd())?;
        if answer != b"ok" {
            return Err(io::Error::other(format!(
                "the old process answered {:?}",
                String::from_utf8_lossy(&answer)
            )));
        }
        Ok(())
    }

    /// Tells the old process why this one gives up (it keeps serving).
    pub fn failed(self, why: &str) {
        let mut msg = format!("failed {why}").into_bytes();
        msg.truncate(MAX_RECORD);
        let _ = send_record(self.conn.as_raw_fd(), &msg, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_descriptors_in_chunks() {
        let (a, b) = {
            let mut fds = [0; 2];
            // SAFETY: socketpair(2) into a two-element array.
            cvt(unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            })
            .unwrap();
            // SAFETY: fresh fds we own.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let listeners: Vec<std::net::TcpListener> = (0..300)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let raw: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        send_record(a.as_raw_fd(), b"head", &[]).unwrap();
        for chunk in raw.chunks(FDS_PER_RECORD) {
            send_record(a.as_raw_fd(), b"fds", chunk).unwrap();
        }
        let (head, none) = recv_record(b.as_raw_fd()).unwrap();
        assert_eq!((head.as_slice(), none.len()), (&b"head"[..], 0));
        let mut got = Vec::new();
        while got.len() < 300 {
            let (_, fds) = recv_record(b.as_raw_fd()).unwrap();
            assert!(fds.len() <= FDS_PER_RECORD);
            got.extend(fds);
        }
        // The same sockets, in order: each received fd is bound where the sent one is.
        for (sent, fd) in listeners.iter().zip(got) {
            let recv = std::net::TcpListener::from(fd);
            assert_eq!(recv.local_addr().unwrap(), sent.local_addr().unwrap());
        }
        drop(a);
        let (eof, fds) = recv_record(b.as_raw_fd()).unwrap();
        assert!(eof.is_empty() && fds.is_empty());
    }

    #[test]
    fn launch_drops_an_earlier_takeover_argument() {
        let l = Launch::from_current(Some("/usr/bin/proxy".into()), "/run".into()).unwrap();
        assert!(!l.args.iter().any(|a| a == "--takeover"));
        assert_eq!(l.binary, PathBuf::from("/usr/bin/proxy"));
    }

    #[test]
    fn inherited_sockets_follow_name_and_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut inh = Inherited::default();
        inh.listeners.insert("wss".into(), (addr, vec![l]));
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(inh.take_listener("wss", other).is_empty(), "moved listener");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        inh.listeners.insert("wss".into(), (addr, vec![l]));
        assert_eq!(inh.take_listener("wss", addr).len(), 1);
        assert!(inh.take_listener("wss", addr).is_empty(), "taken once");
    }
}
