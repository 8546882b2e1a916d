//! TLS termination with rustls, driven by hand over the `Io` trait (tokio-uring streams do
//! not implement tokio's AsyncRead/AsyncWrite). Certificates per server name from certbot's
//! layout (`<dir>/fullchain.pem`, `<dir>/privkey.pem`), swapped without a restart.
//!
//! SNI is required: no SNI, an IP literal or an unknown name fails the handshake with an
//! alert, unless a default certificate is configured.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    fmt, io,
    io::{Read, Write},
    net::Shutdown,
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
    ServerConfig, ServerConnection,
};
use tracing::{info, warn};

use super::io::{Io, SMALL_BUF};
use crate::config::Config;

/// Errors loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A PEM file could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file holds no certificate or no private key.
    #[error("{path}: {what}")]
    Content { path: PathBuf, what: &'static str },
    /// rustls rejected the key.
    #[error("{path}: unsupported private key")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// One server name and the certbot directory holding its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    pub server_name: String,
    pub dir: PathBuf,
}

fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads `fullchain.pem` and `privkey.pem` from a certbot directory.
pub fn load_certified_key(dir: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let chain_path = dir.join("fullchain.pem");
    let key_path = dir.join("privkey.pem");
    let chain_pem = read_file(&chain_path)?;
    let key_pem = read_file(&key_path)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::Content {
            path: chain_path,
            what: "no certificate found",
        });
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or(CertError::Content {
            path: key_path.clone(),
            what: "no private key found",
        })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|source| {
        CertError::Key {
            path: key_path,
            source,
        }
    })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// `check-config`'s certificate checks, run when a config is loaded: every listener's
/// certificates load and are valid for their server name. Each problem starts with the key
/// it is about, so `Config::load` can give its line and column.
pub fn check_certificates(config: &Config) -> Vec<String> {
    let mut p = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        for (j, c) in tls.certificates.iter().enumerate() {
            let at = format!("listener[{i}].tls.certificates[{j}]");
            match load_certified_key(&c.dir) {
                Err(e) => p.push(format!(
                    "{at}.dir: {e} (certbot layout: fullchain.pem + privkey.pem)"
                )),
                Ok(key) => {
                    let Some(leaf) = key.cert.first() else {
                        continue;
                    };
                    let valid = webpki::EndEntityCert::try_from(leaf)
                        .ok()
                        .is_some_and(|ee| {
                            rustls::pki_types::ServerName::try_from(c.server_name.as_str())
                                .is_ok_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok())
                        });
                    if !valid {
                        p.push(format!(
                            "{at}.server_name: the certificate in {} is not valid for `{}` (hint: wrong directory, or the certificate lacks this name)",
                            c.dir.display(),
                            c.server_name
                        ));
                    }
                }
            }
        }
    }
    p
}

fn mtimes(dir: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |f: &str| {
        std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok()
    };
    (m("fullchain.pem"), m("privkey.pem"))
}

struct Entry {
    source: CertSource,
    key: Arc<CertifiedKey>,
    seen: (Option<SystemTime>, Option<SystemTime>),
}

/// Certificates by server name, swappable while connections use the old ones.
pub struct SniResolver {
    by_name: RwLock<HashMap<String, Entry>>,
    default_name: Option<String>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("default_name", &self.default_name)
            .finish_non_exhaustive()
    }
}

impl SniResolver {
    /// Loads every source; fails on the first broken one (at start-up nothing runs yet).
    pub fn load(
        sources: &[CertSource],
        default_name: Option<String>,
    ) -> Result<Arc<Self>, CertError> {
        let mut by_name = HashMap::new();
        for s in sources {
            let key = load_certified_key(&s.dir)?;
            by_name.insert(
                s.server_name.to_ascii_lowercase(),
                Entry {
                    source: s.clone(),
                    key,
                    seen: mtimes(&s.dir),
                },
            );
        }
        Ok(Arc::new(Self {
            by_name: RwLock::new(by_name),
            default_name: default_name.map(|n| n.to_ascii_lowercase()),
        }))
    }

    /// Reloads certificates whose files changed. A broken new file keeps the old certificate
    /// (and is logged); live connections are never touched. Returns the names swapped.
    pub fn reload_changed(&self) -> Vec<String> {
        let mut swapped = Vec::new();
        let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        for (name, entry) in map.iter_mut() {
            let now = mtimes(&entry.source.dir);
            if now == entry.seen {
                continue;
            }
            entry.seen = now;
            match load_certified_key(&entry.source.dir) {
                Ok(key) => {
                    entry.key = key;
                    info!(server_name = %name, "certificate reloaded");
                    swapped.push(name.clone());
                }
                Err(e) => {
                    warn!(server_name = %name, error = %e, "new certificate files are broken; keeping the old certificate")
                }
            }
        }
        swapped
    }

    fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        let hit = name.and_then(|n| map.get(&n.to_ascii_lowercase()));
        hit.or_else(|| self.default_name.as_ref().and_then(|d| map.get(d)))
            .map(|e| e.key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls gives no server name for a missing SNI or an IP literal.
        self.lookup(hello.server_name())
    }
}

/// The rustls configuration of a listener.
#[derive(Clone, Debug)]
pub struct TlsAcceptor {
    pub config: Arc<ServerConfig>,
    pub resolver: Arc<SniResolver>,
}

impl TlsAcceptor {
    /// TLS 1.2 and 1.3, ALPN `http/1.1`, session resumption on (stateful cache + tickets).
    pub fn new(resolver: Arc<SniResolver>) -> Self {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(16 * 1024);
        if let Ok(t) = rustls::crypto::aws_lc_rs::Ticketer::new() {
            config.ticketer = t;
        }
        // Small buffers: websocket clients are mostly idle.
        config.send_tls13_tickets = 1;
        Self {
            config: Arc::new(config),
            resolver,
        }
    }
}

/// A TLS session over a stream, usable by the two relay directions at once.
pub struct TlsIo<S: Io> {
    io: S,
    tls: RefCell<ServerConnection>,
    /// Serialises socket writes: both directions may need to send TLS records.
    writing: tokio::sync::Mutex<()>,
    eof: Cell<bool>,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: Io> TlsIo<S> {
    /// Runs the handshake (bounded by `deadline`).
    pub async fn accept(io: S, acceptor: &TlsAcceptor, deadline: Duration) -> io::Result<Self> {
        let conn = ServerConnection::new(acceptor.config.clone()).map_err(tls_err)?;
        let this = Self {
            io,
            tls: RefCell::new(conn),
            writing: tokio::sync::Mutex::new(()),
            eof: Cell::new(false),
        };
        let timed_out = Cell::new(false);
        let result = {
            let hs = async {
                loop {
                    this.flush().await?;
                    if !this.tls.borrow().is_handshaking() {
                        return Ok(());
                    }
                    let (res, _) = this.fill(Vec::with_capacity(SMALL_BUF * 2)).await;
                    if !res? {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "eof during TLS handshake",
                        ));
                    }
                }
            };
            tokio::pin!(hs);
            let sleep = tokio::time::sleep(deadline);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    r = &mut hs => break r,
                    _ = &mut sleep, if !timed_out.get() => {
                        timed_out.set(true);
                        let _ = this.io.shutdown(Shutdown::Read);
                    }
                }
            }
        };
        match result {
            Ok(()) => Ok(this),
            Err(e) if timed_out.get() => Err(io::Error::new(io::ErrorKind::TimedOut, e)),
            Err(e) => Err(e),
        }
    }

    /// Writes out whatever TLS records are pending.
    async fn flush(&self) -> io::Result<()> {
        let _guard = self.writing.lock().await;
        loop {
            let mut out = Vec::new();
            {
                let mut tls = self.tls.borrow_mut();
                while tls.wants_write() {
                    tls.write_tls(&mut out)?;
                }
            }
            if out.is_empty() {
                return Ok(());
            }
            let (res, _) = self.io.write_all(out).await;
            res?;
        }
    }

    /// Reads ciphertext into `buf` (up to its capacity) and processes it; false on EOF.
    /// Sends an alert on a TLS error. Returns the buffer (emptied) to the caller, so an idle
    /// connection's pending read holds only the caller's buffer, not one of its own.
    async fn fill(&self, buf: Vec<u8>) -> (io::Result<bool>, Vec<u8>) {
        if let Err(e) = self.io.ready().await {
            return (Err(e), buf);
        }
        let (res, mut buf) = self.io.read(buf).await;
        let n = match res {
            Ok(0) => {
                buf.clear();
                return (Ok(false), buf);
            }
            Ok(n) => n,
            Err(e) => {
                buf.clear();
                return (Err(e), buf);
            }
        };
        let result = {
            let mut tls = self.tls.borrow_mut();
            let mut rd = &buf[..n];
            let mut r = Ok(());
            while !rd.is_empty() {
                if let Err(e) = tls.read_tls(&mut rd) {
                    r = Err(e);
                    break;
                }
                if let Err(e) = tls.process_new_packets() {
                    r = Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    break;
                }
            }
            r
        };
        buf.clear();
        if let Err(e) = result {
            let _ = self.flush().await; // the alert
            return (Err(e), buf);
        }
        (Ok(true), buf)
    }

    /// The negotiated server name (for logs and per-name stats).
    pub fn server_name(&self) -> Option<String> {
        self.tls.borrow().server_name().map(str::to_string)
    }
}

impl<S: Io> AsRawFd for TlsIo<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl<S: Io> Io for TlsIo<S> {
    async fn ready(&self) -> io::Result<()> {
        if self
            .tls
            .borrow_mut()
            .process_new_packets()
            .map(|s| s.plaintext_bytes_to_read() > 0)
            .unwrap_or(true)
        {
            return Ok(());
        }
        self.io.ready().await
    }

    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        if buf.capacity() == 0 {
            // The buffer also takes ciphertext: a zero-sized read would look like EOF.
            buf.reserve_exact(SMALL_BUF);
        }
        loop {
            if self.eof.get() {
                return (Ok(0), buf);
            }
            let got = {
                let mut tls = self.tls.borrow_mut();
                let cap = buf.capacity();
                buf.resize(cap, 0);
                let r = tls.reader().read(&mut buf);
                match r {
                    Ok(n) => {
                        buf.truncate(n);
                        if n == 0 {
                            // close_notify received: clean EOF.
                            self.eof.set(true);
                        }
                        Some(Ok(n))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        buf.clear();
                        None
                    }
                    Err(e) => {
                        buf.clear();
                        Some(Err(e))
                    }
                }
            };
            if let Some(r) = got {
                return (r, buf);
            }
            // Session tickets, key updates: answer before waiting for more.
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
            // No plaintext yet: the caller's (empty) buffer takes the ciphertext.
            let (res, b) = self.fill(buf).await;
            buf = b;
            match res {
                Ok(true) => {}
                Ok(false) => {
                    // TCP EOF without close_notify: treat as EOF (clients often do this).
                    self.eof.set(true);
                    return (Ok(0), buf);
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if let Err(e) = self.tls.borrow_mut().writer().write_all(&buf) {
            return (Err(e), buf);
        }
        let r = self.flush().await;
        (r, buf)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            // close_notify is tiny: send it without waiting, then the TCP FIN.
            let mut out = Vec::new();
            {
                let mut tls = self.tls.borrow_mut();
                tls.send_close_notify();
                while tls.wants_write() {
                    if tls.write_tls(&mut out).is_err() {
                        break;
                    }
                }
            }
            if !out.is_empty() {
                // SAFETY: send(2) with MSG_DONTWAIT on our socket and a live buffer.
                unsafe {
                    libc::send(
                        self.io.as_raw_fd(),
                        out.as_ptr().cast(),
                        out.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
            }
        }
        self.io.shutdown(how)
    }
}

#[cfg(test)]
mod tests {
    use proxy_tests::{certs::TestCert, tempdir::TempDir};

    use super::*;
    use crate::config::tests::GOOD;

    #[test]
    fn certificates_are_checked_against_their_server_name() {
        let dir = TempDir::new("cfgcert").unwrap();
        let cert_dir = dir.path().join("eu");
        TestCert::write(&cert_dir, "eu.example.test").unwrap();
        let listener = |name: &str| {
            format!(
                "\n[[listener]]\nname = \"wss\"\naddress = \"203.0.113.10:443\"\nmode = \"tls\"\npool = \"eu\"\n[listener.tls]\ncertificates = [ {{ server_name = \"{name}\", dir = \"{}\" }} ]\n",
                cert_dir.display()
            )
        };
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, format!("{GOOD}{}", listener("eu.example.test"))).unwrap();
        Config::load(&file, check_certificates).expect("matching certificate");
        std::fs::write(&file, format!("{GOOD}{}", listener("us.example.test"))).unwrap();
        let err = Config::load(&file, check_certificates)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not valid for `us.example.test`"), "{err}");
        assert!(
            err.contains("line 24, column 20: listener[1].tls.certificates[0].server_name"),
            "located at the key: {err}"
        );
        std::fs::write(cert_dir.join("privkey.pem"), b"junk").unwrap();
        std::fs::write(&file, format!("{GOOD}{}", listener("eu.example.test"))).unwrap();
        let err = Config::load(&file, check_certificates)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no private key"), "{err}");
    }
}
