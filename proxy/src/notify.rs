//! systemd's readiness protocol (`sd_notify(3)`) without libsystemd: when the service manager
//! set `NOTIFY_SOCKET`, state lines (`READY=1`, `RELOADING=1`, `STOPPING=1`, `MAINPID=n`,
//! `STATUS=...`) go to it as one datagram each call. The variable names a filesystem path or,
//! with a leading `@`, an abstract socket address. Without the variable every call is a no-op,
//! so `proxy run` behaves the same outside systemd.
//!
//! The unit (config/systemd/xdp-proxy.service) is `Type=notify` with `NotifyAccess=all`: a
//! replacement process started by an upgrade reports `MAINPID=` from its own pid.

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    path::Path,
};

use tracing::warn;

/// Environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Where state lines go: the socket named by `NOTIFY_SOCKET` (or given explicitly).
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier of `NOTIFY_SOCKET`; `Ok(None)` when the variable is unset or empty (not
    /// started by systemd, or not as a notify service).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os(NOTIFY_SOCKET_ENV) {
            Some(v) if !v.is_empty() => match v.to_str() {
                Some(s) => Notifier::new(s).map(Some),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{NOTIFY_SOCKET_ENV} is not UTF-8: {v:?}"),
                )),
            },
            _ => Ok(None),
        }
    }

    /// A notifier sending to `address`: a socket path, or `@name` for the abstract address
    /// `name` (as systemd writes it).
    pub fn new(address: &str) -> io::Result<Notifier> {
        let addr = match address.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None if address.starts_with('/') => SocketAddr::from_pathname(Path::new(address))?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{NOTIFY_SOCKET_ENV}={address:?}: neither an absolute path nor @abstract"
                    ),
                ))
            }
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends `state` (newline-separated `KEY=value` lines) as one datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("notify socket took {sent} of {} bytes", state.len()),
            ));
        }
        Ok(())
    }
}

/// `READY=1` with a status line: startup finished, or a reload did.
pub fn ready_state(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

/// `RELOADING=1` with the `CLOCK_MONOTONIC` time in µs that systemd (>= 253) pairs with the
/// reload; `READY=1` ends the reload.
pub fn reloading_state() -> String {
    format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
        monotonic_usec()
    )
}

/// `STOPPING=1`: shutdown began.
pub const STOPPING: &str = "STOPPING=1\nSTATUS=shutting down";

/// `MAINPID=pid`: the service's main process is now `pid` (a process taking over on upgrade).
pub fn main_pid_state(pid: u32) -> String {
    format!("MAINPID={pid}")
}

/// Sends `state` to `NOTIFY_SOCKET` if set. Failing to notify never stops the proxy: a
/// failure is logged (systemd will then time the start out, which says more than we could).
pub fn notify(state: &str) {
    let sent = Notifier::from_env().and_then(|n| match n {
        Some(n) => n.send(state),
        None => Ok(()),
    });
    if let Err(e) = sent {
        warn!("cannot notify systemd ({state:?}): {e}");
    }
}

/// [`notify`] of [`ready_state`].
pub fn ready(status: &str) {
    notify(&ready_state(status));
}

/// [`notify`] of [`reloading_state`].
pub fn reloading() {
    notify(&reloading_state());
}

/// [`notify`] of [`STOPPING`].
pub fn stopping() {
    notify(STOPPING);
}

/// [`notify`] of [`main_pid_state`] (for the process that takes over on upgrade).
pub fn main_pid(pid: u32) {
    notify(&main_pid_state(pid));
}

/// `STATUS=` values are single lines.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer for the call; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a datagram from the notifier");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_each_state_as_one_datagram_to_a_socket_path() {
        let dir = std::env::temp_dir().join(format!("notify-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();

        n.send(&ready_state("serving 2 listeners\non eth0"))
            .unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=serving 2 listeners on eth0");

        n.send(&reloading_state()).unwrap();
        let reloading = recv(&server);
        let lines: Vec<&str> = reloading.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .expect("MONOTONIC_USEC= second")
            .parse()
            .unwrap();
        assert!(usec > 0 && usec <= monotonic_usec(), "{usec}");

        n.send(STOPPING).unwrap();
        assert_eq!(recv(&server), "STOPPING=1\nSTATUS=shutting down");
        n.send(&main_pid_state(4242)).unwrap();
        assert_eq!(recv(&server), "MAINPID=4242");
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_address_written_with_an_at_sign() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("xdp-proxy-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.send(&ready_state("ready")).unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=ready");
    }

    #[test]
    fn a_relative_address_is_refused_and_a_missing_socket_is_an_error() {
        let err = Notifier::new("relative/path").unwrap_err();
        assert!(
            err.to_string().contains("neither an absolute path"),
            "{err}"
        );
        let gone = Notifier::new("/nonexistent/xdp-proxy-notify.sock").unwrap();
        assert!(gone.send("READY=1").is_err());
    }
}
