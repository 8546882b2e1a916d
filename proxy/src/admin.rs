//! The admin API: one JSON request and one JSON answer per line over a unix socket
//! (root-only by file mode), used by `proxy backends list|add|drain|remove|weight`.
//!
//! The socket task only parses and forwards requests; the main loop, which owns the control
//! plane, applies them one at a time and answers.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::{
        fs::{DirBuilderExt, PermissionsExt},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::ebpf::NatOccupancy;

/// Default socket path (the config owns it: `[admin] socket`).
pub use crate::config::DEFAULT_SOCKET;
/// Longest request line accepted.
const MAX_REQUEST: usize = 16 * 1024;

/// A request, as sent by the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Every pool's backends with state and counters.
    List,
    /// A new backend (weight defaults to 100).
    Add {
        pool: String,
        name: String,
        address: SocketAddr,
        weight: Option<u32>,
    },
    /// Weight 0: no new connections, live ones continue.
    Drain { pool: String, name: String },
    /// Out of the pool: flows pinned to it are re-balanced on their next packet.
    Remove { pool: String, name: String },
    /// A new weight.
    Weight {
        pool: String,
        name: String,
        weight: u32,
    },
    /// The region as `/stats.json` shows it (for `proxy check`).
    Status,
    /// Start `binary` (default: the path this proxy was started from) as the new process,
    /// hand it the listening sockets, and drain (`proxy upgrade`).
    Upgrade { binary: Option<PathBuf> },
}

/// One backend in a `list` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendRow {
    pub pool: String,
    pub name: String,
    pub id: u32,
    pub address: SocketAddr,
    pub weight: u32,
    /// `active`, `drained`.
    pub state: String,
    /// Why it is in that state (health detail once health feeds run).
    pub why: String,
    pub packets: u64,
    pub new_flows: u64,
    /// NAT ports taken and available; None when the backend has no port space (only
    /// `tls`/`ws` listeners use it, or no SNAT address for its family). Absent in answers
    /// of older proxies.
    #[serde(default)]
    pub nat_ports: Option<NatOccupancy>,
}

/// The answer to any request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    /// What happened, or why not.
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendRow>,
    /// The answer to `Status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<crate::observe::page::RegionView>>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
            backends: Vec::new(),
            status: None,
        }
    }
    pub fn err(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            backends: Vec::new(),
            status: None,
        }
    }
}

/// A request waiting for the main loop, with where to send the answer.
pub type Pending = (Request, oneshot::Sender<Response>);

/// Binds a listening socket at `path` (replacing a stale one) that has mode 0600 from the
/// moment it exists there: root only, since the API changes what the balancer does. A chmod
/// after binding at `path` would leave a window in which anyone could connect; so the socket
/// is bound and chmodded in a fresh 0700 directory beside `path`, then renamed into place.
fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let staging = dir.join(format!(".admin-{}", std::process::id()));
    // Left by an earlier run that died with the same pid.
    let _ = std::fs::remove_dir_all(&staging);
    // The umask can only narrow 0700.
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let tmp = staging.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Listens on `path` (replacing a stale socket), forwarding requests to `tx`.
/// Serves the admin socket in a task of the current runtime; requests arrive on the receiver.
pub fn spawn(path: PathBuf) -> mpsc::Receiver<Pending> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(e) = serve(path.clone(), tx).await {
            tracing::error!(socket = %path.display(), "admin API stopped: {e}");
        }
    });
    rx
}

pub async fn serve(path: PathBuf, tx: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let listener = bind_private(&path)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    info!(socket = %path.display(), "admin API listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(rd)
                .take(MAX_REQUEST as u64 * 64)
                .lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let response = if line.len() > MAX_REQUEST {
                    Response::err("request too long")
                } else {
                    match serde_json::from_str::<Request>(&line) {
                        Err(e) => Response::err(format!("bad request: {e}")),
                        Ok(req) => {
                            let (otx, orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                Response::err("shutting down")
                            } else {
                                orx.await.unwrap_or_else(|_| Response::err("shutting down"))
                            }
                        }
                    }
                };
                let mut out = serde_json::to_vec(&response).unwrap_or_default();
                out.push(b'\n');
                if wr.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Errors of the CLI side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The proxy is not running, or runs with another socket path.
    #[error("cannot connect to the admin socket {path} (is `proxy run` running? see `admin.socket` in its config)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("admin socket I/O failed")]
    Io(#[from] std::io::Error),
    /// The answer was not JSON.
    #[error("unreadable answer from the proxy: {0}")]
    Answer(String),
    /// The proxy refused the request (the message says why).
    #[error("refused: {0}")]
    Refused(String),
}

/// Sends one request and waits for the answer (blocking; for the CLI).
pub fn call(path: &Path, req: &Request) -> Result<Response, ClientError> {
    call_waiting(path, req, Duration::from_secs(30))
}

/// As [`call`], waiting up to `wait` for the answer (an upgrade takes seconds).
pub fn call_waiting(path: &Path, req: &Request, wait: Duration) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    s.set_read_timeout(Some(wait))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Answer(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Answer(format!("{e}: {answer:?}")))
}

/// `proxy backends ...`: what the operator asks for on the command line.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every backend with weight, state, why, and counters.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a backend to a pool (no restart, nobody dropped).
    Add {
        pool: String,
        name: String,
        address: SocketAddr,
        #[arg(long, default_value_t = 100)]
        weight: u32,
    },
    /// No new connections; live ones continue.
    Drain { pool: String, name: String },
    /// Remove from the pool; its pinned flows are re-balanced.
    Remove { pool: String, name: String },
    /// Set a new weight (0 = drain).
    Weight {
        pool: String,
        name: String,
        weight: u32,
    },
}

impl Command {
    /// Sends the request to the proxy at `socket` and prints the answer (blocking).
    pub fn run(self, socket: &Path) -> Result<(), ClientError> {
        let (req, json) = match self {
            Command::List { json } => (Request::List, json),
            Command::Add {
                pool,
                name,
                address,
                weight,
            } => (
                Request::Add {
                    pool,
                    name,
                    address,
                    weight: Some(weight),
                },
                false,
            ),
            Command::Drain { pool, name } => (Request::Drain { pool, name }, false),
            Command::Remove { pool, name } => (Request::Remove { pool, name }, false),
            Command::Weight { pool, name, weight } => {
                (Request::Weight { pool, name, weight }, false)
            }
        };
        let answer = call(socket, &req)?;
        if json {
            let text = serde_json::to_string_pretty(&answer)
                .map_err(|e| ClientError::Answer(e.to_string()))?;
            println!("{text}");
        } else if !answer.backends.is_empty() {
            print!("{}", render_table(&answer.backends));
        } else {
            println!("{}", answer.message);
        }
        if !answer.ok {
            return Err(ClientError::Refused(answer.message));
        }
        Ok(())
    }
}

/// A fixed-width table of backends for the terminal.
pub fn render_table(rows: &[BackendRow]) -> String {
    let mut out = format!(
        "{:<10} {:<16} {:>4} {:<40} {:>7} {:<8} {:>12} {:>10} {:>20}  {}\n",
        "POOL",
        "NAME",
        "ID",
        "ADDRESS",
        "WEIGHT",
        "STATE",
        "PACKETS",
        "NEW FLOWS",
        "NAT PORTS",
        "WHY"
    );
    for r in rows {
        let nat = r
            .nat_ports
            .as_ref()
            .map_or_else(|| "-".into(), nat_ports_text);
        out += &format!(
            "{:<10} {:<16} {:>4} {:<40} {:>7} {:<8} {:>12} {:>10} {:>20}  {}\n",
            r.pool,
            r.name,
            r.id,
            r.address.to_string(),
            r.weight,
            r.state,
            r.packets,
            r.new_flows,
            nat,
            r.why
        );
    }
    out
}

/// `taken/capacity (P%)`, the percentage rounded down so that 100% means full.
pub fn nat_ports_text(o: &NatOccupancy) -> String {
    let percent = (o.taken as u64 * 100)
        .checked_div(o.capacity as u64)
        .unwrap_or(0);
    format!("{}/{} ({percent}%)", o.taken, o.capacity)
}

/// Logs a refused admin request (the caller sees the message too).
pub fn log_refusal(req: &Request, why: &str) {
    warn!(?req, why, "admin request refused");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let reqs = [
            Request::List,
            Request::Add {
                pool: "eu".into(),
                name: "n4".into(),
                address: "192.0.2.14:8090".parse().unwrap(),
                weight: Some(50),
            },
            Request::Drain {
                pool: "eu".into(),
                name: "n1".into(),
            },
            Request::Remove {
                pool: "eu".into(),
                name: "n1".into(),
            },
            Request::Weight {
                pool: "eu".into(),
                name: "n2".into(),
                weight: 7,
            },
        ];
        for r in reqs {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        }
        assert!(serde_json::from_str::<Request>(
            r#"{"cmd":"drain","pool":"eu","name":"n","force":true}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
    }

    /// The socket's name appears in its directory only by a rename, after which its mode
    /// never changes: so it is 0600 from the first moment anyone can reach it. (Bound at its
    /// path and chmodded after, the name would appear by IN_CREATE and change by IN_ATTRIB.)
    #[test]
    fn admin_socket_appears_with_its_final_mode() {
        let tmp = proxy_tests::tempdir::TempDir::new("admin-mode").unwrap();
        let dir = tmp.path();
        let path = dir.join("admin.sock");
        // A stale socket to replace, as after a crash.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let cdir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ATTRIB;
        // SAFETY: `cdir` is a valid NUL-terminated path for the call's duration.
        let wd = unsafe { libc::inotify_add_watch(fd, cdir.as_ptr(), mask) };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );

        let listener = bind_private(&path).unwrap();

        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(
            n > 0,
            "no inotify events: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: we own `fd`.
        unsafe { libc::close(fd) };
        let (mut events, mut off) = (Vec::new(), 0usize);
        let head = std::mem::size_of::<libc::inotify_event>();
        while off + head <= n as usize {
            // SAFETY: the kernel wrote a whole event header at `off`; read unaligned.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
            let name = &buf[off + head..off + head + ev.len as usize];
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string();
            events.push((name, ev.mask));
            off += head + ev.len as usize;
        }
        let ours: Vec<u32> = events
            .iter()
            .filter(|(name, _)| name == "admin.sock")
            .map(|(_, m)| *m)
            .collect();
        assert!(
            ours.iter().any(|m| m & libc::IN_MOVED_TO != 0),
            "the socket was not renamed into place: {events:?}"
        );
        assert!(
            ours.iter()
                .all(|m| m & (libc::IN_CREATE | libc::IN_ATTRIB) == 0),
            "the socket appeared or changed mode at its path: {events:?}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // It is the listener's socket, and the staging directory is gone.
        let client = UnixStream::connect(&path).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        drop(client);
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("admin.sock")]);
    }

    fn row(name: &str, nat_ports: Option<NatOccupancy>) -> BackendRow {
        BackendRow {
            pool: "eu".into(),
            name: name.into(),
            id: 3,
            address: "192.0.2.11:8090".parse().unwrap(),
            weight: 100,
            state: "active".into(),
            why: "in the ring".into(),
            packets: 42,
            new_flows: 7,
            nat_ports,
        }
    }

    #[test]
    fn table_shows_nat_ports_or_a_dash() {
        let rows = [
            row(
                "n1",
                Some(NatOccupancy {
                    taken: 1234,
                    capacity: 22768,
                }),
            ),
            row(
                "n2",
                Some(NatOccupancy {
                    taken: 22767,
                    capacity: 22768,
                }),
            ),
            row("n3", None),
        ];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].contains("NAT PORTS"), "{table}");
        assert!(
            lines[1].contains(" 1234/22768 (5%)  in the ring"),
            "{table}"
        );
        // Rounded down: 100% only when none is left.
        assert!(
            lines[2].contains(" 22767/22768 (99%)  in the ring"),
            "{table}"
        );
        assert!(lines[3].contains(" -  in the ring"), "{table}");
        // The columns line up whatever the cell holds.
        let at = |l: &str| l.find("  in the ring").unwrap();
        assert_eq!(at(lines[1]), at(lines[3]));
        assert_eq!(lines[0].find("  WHY").unwrap(), at(lines[1]));
    }

    #[test]
    fn nat_ports_text_survives_an_empty_space() {
        let empty = NatOccupancy {
            taken: 0,
            capacity: 0,
        };
        assert_eq!(nat_ports_text(&empty), "0/0 (0%)");
    }

    #[test]
    fn rows_without_nat_ports_from_older_proxies_still_parse() {
        let new = row(
            "n1",
            Some(NatOccupancy {
                taken: 9,
                capacity: 10,
            }),
        );
        let text = serde_json::to_string(&new).unwrap();
        assert!(
            text.contains(r#""nat_ports":{"taken":9,"capacity":10}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<BackendRow>(&text).unwrap(), new);
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("nat_ports");
        let parsed: BackendRow = serde_json::from_value(old).unwrap();
        assert_eq!(parsed.nat_ports, None);
    }

    #[tokio::test]
    async fn socket_forwards_requests_and_answers() {
        let path = std::env::temp_dir().join(format!("pxt-admin-{}.sock", std::process::id()));
        let (tx, mut rx) = mpsc::channel::<Pending>(4);
        tokio::spawn(serve(path.clone(), tx));
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(Response::ok(format!("got {req:?}")));
            }
        });
        for _ in 0..50 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let p = path.clone();
        let answer = tokio::task::spawn_blocking(move || call(&p, &Request::List))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.ok);
        assert_eq!(answer.message, "got List");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let p = path.clone();
        let bad = tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(&p).unwrap();
            s.write_all(b"{not json}\n").unwrap();
            let mut a = String::new();
            BufReader::new(s).read_line(&mut a).unwrap();
            a
        })
        .await
        .unwrap();
        assert!(bad.contains("bad request"), "{bad}");
        let _ = std::fs::remove_file(&path);
    }
}
