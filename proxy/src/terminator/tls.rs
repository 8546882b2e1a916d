//! TLS termination with rustls' unbuffered API, driven by hand over the `Io` trait (the
//! io_uring streams do not implement tokio's AsyncRead/AsyncWrite, and the buffers stay
//! ours); after a TLS 1.3 handshake our own record layer (`record`) takes over.
//! Certificates per server name from certbot's layout (`<dir>/fullchain.pem`,
//! `<dir>/privkey.pem`), swapped without a restart.
//!
//! SNI is required: no SNI, an IP literal or an unknown name fails the handshake with an
//! alert, unless a default certificate is configured.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    fmt, io,
    net::Shutdown,
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    server::{
        ClientHello, ResolvesServerCert, ServerSessionMemoryCache, UnbufferedServerConnection,
    },
    sign::CertifiedKey,
    unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus},
    ServerConfig,
};
use tracing::{info, warn};

use super::{
    io::{buffer_of, give_back, Io, SMALL_BUF},
    record::{Alert, CatchTrafficSecrets, Opened, RecordError, Tls13Records, TrafficSecrets},
};
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
        // After a TLS 1.3 handshake our record layer takes the keys over (see `record`).
        config.enable_secret_extraction = true;
        config.key_log = Arc::new(CatchTrafficSecrets);
        Self {
            config: Arc::new(config),
            resolver,
        }
    }
}

/// A TLS session over a stream, usable by the two relay directions at once.
///
/// On rustls' unbuffered API: the ciphertext and plaintext buffers are ours and exist only
/// while bytes are in flight, so an idle session holds none (the buffered `ServerConnection`
/// keeps a 4 KiB receive buffer for its whole life). Between two operations `incoming` holds
/// at most a partial record: every operation runs rustls (or, after a TLS 1.3 handshake, our
/// record layer) until it needs more bytes.
pub struct TlsIo<S: Io> {
    io: S,
    tls: RefCell<Session>,
    /// Received ciphertext not yet processed.
    incoming: RefCell<Vec<u8>>,
    /// Decrypted bytes the reader had no room for.
    plain: RefCell<Vec<u8>>,
    /// Records to send, in the order rustls made them (sequence numbers).
    outgoing: RefCell<Vec<u8>>,
    /// Serialises socket writes: both directions may need to send TLS records.
    writing: tokio::sync::Mutex<()>,
    /// close_notify (or a TCP EOF) received.
    eof: Cell<bool>,
}

/// Who handles the records: rustls during the handshake and for TLS 1.2; our own layer for
/// TLS 1.3 afterwards (see `record`: what an idle session keeps is much smaller). Both are
/// boxed, so the session is no larger than the one it has.
enum Session {
    Rustls(Box<Handshaking>),
    Tls13(Box<Tls13Records>),
    /// Only while switching from one to the other.
    Switching,
}

/// A rustls session, and the traffic secrets caught from its handshake (see `record`).
struct Handshaking {
    conn: UnbufferedServerConnection,
    secrets: TrafficSecrets,
}

impl Handshaking {
    /// rustls' `process_tls_records`, catching the secrets this step logged.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, rustls::server::ServerConnectionData> {
        let status = self.conn.process_tls_records(incoming);
        self.secrets.catch();
        status
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Where rustls stands after [`TlsIo::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// It needs more ciphertext (mid-handshake or mid-record).
    NeedMore,
    /// Handshake done, nothing left to read in what arrived.
    Idle,
    /// The session is over.
    Closed,
}

/// What an operation asks of rustls once it may write application data.
enum Action<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Decrypted bytes go to the reader's `dest` while it has room (and nothing older waits in
/// `plain`), the rest to `plain`: order is kept either way.
fn deliver(dest: Option<&mut Vec<u8>>, plain: &mut Vec<u8>, mut payload: &[u8]) {
    if let Some(d) = dest {
        if plain.is_empty() {
            let n = payload.len().min(d.capacity() - d.len());
            d.extend_from_slice(&payload[..n]);
            payload = &payload[n..];
        }
    }
    plain.extend_from_slice(payload);
}

/// Runs `encode` into the end of `out`, growing it to the size rustls asks for.
fn append_with<E>(
    out: &mut Vec<u8>,
    first_guess: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
    too_small: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut need = first_guess;
    loop {
        out.resize(start + need, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match too_small(&e) {
                Some(required) if required > need => need = required,
                _ => {
                    out.truncate(start);
                    return Err(e);
                }
            },
        }
    }
}

/// Room for `len` bytes of application data once encrypted: a record per 16 KiB, each with
/// its header, content type and tag (64 bytes is more than any suite adds).
fn sealed_size(len: usize) -> usize {
    len + (len / 16384 + 1) * 64
}

impl<S: Io> TlsIo<S> {
    /// Runs the handshake (bounded by `deadline`).
    pub async fn accept(io: S, acceptor: &TlsAcceptor, deadline: Duration) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(acceptor.config.clone()).map_err(tls_err)?;
        let this = Self {
            io,
            tls: RefCell::new(Session::Rustls(Box::new(Handshaking {
                conn,
                secrets: TrafficSecrets::default(),
            }))),
            incoming: RefCell::new(Vec::new()),
            plain: RefCell::new(Vec::new()),
            outgoing: RefCell::new(Vec::new()),
            writing: tokio::sync::Mutex::new(()),
            eof: Cell::new(false),
        };
        let timed_out = Cell::new(false);
        let result = {
            let hs = async {
                loop {
                    let progress = this.step(None, Action::Nothing).await?;
                    this.flush().await?;
                    match progress {
                        Progress::Idle => return Ok(()),
                        Progress::Closed => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "closed during TLS handshake",
                            ))
                        }
                        Progress::NeedMore => {}
                    }
                    if !this.fill(SMALL_BUF * 2).await? {
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
            Ok(()) => {
                this.take_over_tls13()?;
                // Records that came behind the client's Finished are still sealed in
                // `incoming` (rustls got none of them): open them now, so that between two
                // operations `incoming` holds at most a partial record again, and answer a
                // KeyUpdate among them.
                this.step(None, Action::Nothing).await?;
                this.flush().await?;
                Ok(this)
            }
            Err(e) if timed_out.get() => Err(io::Error::new(io::ErrorKind::TimedOut, e)),
            Err(e) => Err(e),
        }
    }

    /// Once a TLS 1.3 handshake is done (and its tickets queued), our record layer takes
    /// over from rustls.
    fn take_over_tls13(&self) -> io::Result<()> {
        let mut session = self.tls.borrow_mut();
        let Session::Rustls(hs) = &*session else {
            return Ok(());
        };
        if hs.conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Ok(());
        }
        let Session::Rustls(hs) = std::mem::replace(&mut *session, Session::Switching) else {
            unreachable!("matched above");
        };
        let Handshaking { conn, secrets } = *hs;
        // Its KernelConnection could derive KeyUpdates, but we do that from the caught
        // secrets: it is dropped here, with the rest of rustls' session.
        let (keys, _) = conn.dangerous_into_kernel_connection().map_err(tls_err)?;
        let records = Tls13Records::new(keys, secrets)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        *session = Session::Tls13(Box::new(records));
        Ok(())
    }

    /// Our TLS 1.3 record layer's share of [`Self::process`].
    fn process_tls13(
        &self,
        records: &mut Tls13Records,
        mut dest: Option<&mut Vec<u8>>,
        action: Action<'_>,
    ) -> io::Result<Progress> {
        let mut incoming = self.incoming.borrow_mut();
        let mut out = self.outgoing.borrow_mut();
        let opened = {
            let mut plain = self.plain.borrow_mut();
            records.open(&mut incoming, &mut out, |payload| {
                deliver(dest.as_deref_mut(), &mut plain, payload)
            })
        };
        if incoming.is_empty() && incoming.capacity() > 0 {
            // Nothing half-received: give the buffer back (idle sessions hold none).
            *incoming = Vec::new();
        }
        let invalid = |e: RecordError| io::Error::new(io::ErrorKind::InvalidData, e);
        match opened {
            Ok(Opened::NeedMore) => {}
            Ok(Opened::CloseNotify) => self.eof.set(true),
            Err(e) => {
                records.alert(e.alert, &mut out);
                return Err(invalid(e));
            }
        }
        match action {
            Action::Nothing => {}
            Action::Encrypt(data) => records
                .seal(data, &mut out)
                .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e))?,
            Action::CloseNotify => records.alert(Alert::CloseNotify, &mut out),
        }
        Ok(Progress::Idle)
    }

    /// [`Self::process`], and on a TLS error the alert rustls queued is sent before the
    /// error is returned.
    async fn step(&self, dest: Option<&mut Vec<u8>>, action: Action<'_>) -> io::Result<Progress> {
        match self.process(dest, action) {
            Ok(p) => Ok(p),
            Err(e) => {
                let _ = self.flush().await;
                Err(e)
            }
        }
    }

    /// Runs rustls over the received ciphertext until it needs more: decrypted bytes go to
    /// `dest` (up to its capacity) and then to `plain`, records to send to `outgoing`;
    /// `action` is done once application data may be written.
    fn process(&self, dest: Option<&mut Vec<u8>>, action: Action<'_>) -> io::Result<Progress> {
        match &mut *self.tls.borrow_mut() {
            Session::Rustls(tls) => self.process_rustls(tls, dest, action),
            Session::Tls13(records) => self.process_tls13(records, dest, action),
            Session::Switching => Err(io::Error::other("TLS session lost while switching")),
        }
    }

    /// rustls' share of [`Self::process`].
    fn process_rustls(
        &self,
        tls: &mut Handshaking,
        mut dest: Option<&mut Vec<u8>>,
        mut action: Action<'_>,
    ) -> io::Result<Progress> {
        let mut incoming = self.incoming.borrow_mut();
        loop {
            // Once a TLS 1.3 handshake is done, rustls gets no more records: what follows
            // the client's Finished is for our record layer, which takes over from the
            // traffic secrets of the handshake. A KeyUpdate right behind the Finished, taken
            // by rustls, would move its keys past those secrets (and its answer would be
            // lost with its session).
            let done13 = !tls.conn.is_handshaking()
                && tls.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
            let UnbufferedStatus { discard, state } = if done13 {
                tls.process(&mut [])
            } else {
                tls.process(&mut incoming)
            };
            let step: io::Result<Option<Progress>> = match state {
                Err(e) => Err(tls_err(e)),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    let mut plain = self.plain.borrow_mut();
                    let mut r = Ok(None);
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => deliver(dest.as_deref_mut(), &mut plain, record.payload),
                            Err(e) => {
                                r = Err(tls_err(e));
                                break;
                            }
                        }
                    }
                    r
                }
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    let mut out = self.outgoing.borrow_mut();
                    append_with(
                        &mut out,
                        0,
                        |b| enc.encode(b),
                        |e| match e {
                            EncodeError::InsufficientSize(s) => Some(s.required_size),
                            _ => None,
                        },
                    )
                    .map(|()| None)
                    .map_err(|e| io::Error::other(e.to_string()))
                }
                // `outgoing` is written, in order, by whoever flushes next.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Progress::NeedMore)),
                Ok(ConnectionState::PeerClosed) => {
                    self.eof.set(true);
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => Ok(Some(Progress::Closed)),
                Ok(ConnectionState::WriteTraffic(mut wt)) => {
                    let mut out = self.outgoing.borrow_mut();
                    let too_small = |e: &EncryptError| match e {
                        EncryptError::InsufficientSize(s) => Some(s.required_size),
                        _ => None,
                    };
                    let done = match std::mem::replace(&mut action, Action::Nothing) {
                        Action::Nothing => Ok(()),
                        Action::Encrypt(data) => append_with(
                            &mut out,
                            sealed_size(data.len()),
                            |b| wt.encrypt(data, b),
                            too_small,
                        ),
                        Action::CloseNotify => {
                            append_with(&mut out, 64, |b| wt.queue_close_notify(b), too_small)
                        }
                    };
                    done.map(|()| Some(Progress::Idle))
                        .map_err(|e| io::Error::other(e.to_string()))
                }
                // Early data is off; nothing else is expected.
                Ok(other) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected TLS state {other:?}"),
                )),
            };
            incoming.drain(..discard);
            if incoming.is_empty() && incoming.capacity() > 0 {
                // Nothing half-received: give the buffer back (idle sessions hold none).
                *incoming = Vec::new();
            }
            match step {
                Ok(None) => continue,
                Ok(Some(p)) => {
                    if matches!(action, Action::Encrypt(_)) && p != Progress::Idle {
                        return Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "TLS session cannot send application data",
                        ));
                    }
                    return Ok(p);
                }
                Err(e) => {
                    // The alert rustls queued for this error, if any.
                    for _ in 0..4 {
                        let UnbufferedStatus { state, .. } = tls.process(&mut []);
                        match state {
                            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                                let mut out = self.outgoing.borrow_mut();
                                let _ = append_with(
                                    &mut out,
                                    0,
                                    |b| enc.encode(b),
                                    |e| match e {
                                        EncodeError::InsufficientSize(s) => Some(s.required_size),
                                        _ => None,
                                    },
                                );
                            }
                            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                            _ => break,
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Writes out whatever records are queued (in order, also when both directions flush).
    async fn flush(&self) -> io::Result<()> {
        if self.outgoing.borrow().is_empty() {
            return Ok(());
        }
        let _guard = self.writing.lock().await;
        loop {
            let out = std::mem::take(&mut *self.outgoing.borrow_mut());
            if out.is_empty() {
                return Ok(());
            }
            let (res, _) = self.io.write_all(out).await;
            res?;
        }
    }

    /// [`Io::read`] (`wait`) or [`Io::read_ready`].
    async fn read_as(&self, mut buf: Vec<u8>, wait: bool) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve_exact(SMALL_BUF);
        }
        loop {
            {
                let mut plain = self.plain.borrow_mut();
                if !plain.is_empty() {
                    let n = plain.len().min(buf.capacity());
                    buf.extend_from_slice(&plain[..n]);
                    plain.drain(..n);
                    if plain.is_empty() {
                        *plain = Vec::new();
                    }
                    return (Ok(n), buf);
                }
            }
            if self.eof.get() {
                return (Ok(0), buf);
            }
            // Session tickets, key updates: answer before waiting for more (boxed, as the
            // other rare awaits here: the state machine of an idle read stays small).
            if !self.outgoing.borrow().is_empty() {
                if let Err(e) = Box::pin(self.flush()).await {
                    return (Err(e), buf);
                }
            }
            // Wait without the caller's (empty) buffer: an idle session holds none.
            let cap = buf.capacity();
            give_back(std::mem::take(&mut buf));
            let filled = self.fill_as(cap.max(SMALL_BUF * 2), wait).await;
            buf = buffer_of(cap);
            match filled {
                Ok(true) => {}
                // TCP EOF without close_notify: EOF (clients often do this).
                Ok(false) => self.eof.set(true),
                Err(e) => return (Err(e), buf),
            }
            match self.process(Some(&mut buf), Action::Nothing) {
                Ok(Progress::Closed) => self.eof.set(true),
                Ok(_) => {}
                Err(e) => {
                    let _ = Box::pin(self.flush()).await; // the alert
                    return (Err(e), buf);
                }
            }
            if !buf.is_empty() {
                let n = buf.len();
                return (Ok(n), buf);
            }
        }
    }

    /// Reads up to `cap` bytes of ciphertext into `incoming`; false on EOF.
    async fn fill(&self, cap: usize) -> io::Result<bool> {
        self.fill_as(cap, true).await
    }

    /// [`Self::fill`]; without `wait`, `Err(WouldBlock)` when the stream has nothing yet.
    async fn fill_as(&self, cap: usize, wait: bool) -> io::Result<bool> {
        let (res, chunk) = if wait {
            self.io.ready().await?;
            self.io.read(Vec::with_capacity(cap)).await
        } else {
            self.io.read_ready(Vec::with_capacity(cap)).await
        };
        match res? {
            0 => Ok(false),
            _ => {
                let mut incoming = self.incoming.borrow_mut();
                if incoming.is_empty() {
                    *incoming = chunk;
                } else {
                    incoming.extend_from_slice(&chunk);
                }
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
impl<S: Io> TlsIo<S> {
    /// Runs `f` on our TLS 1.3 record layer, if it took over.
    fn records<R>(&self, f: impl FnOnce(&mut Tls13Records) -> R) -> Option<R> {
        match &mut *self.tls.borrow_mut() {
            Session::Tls13(r) => Some(f(r)),
            _ => None,
        }
    }

    /// Bytes of buffer the session holds (what an idle one must not).
    fn held_bytes(&self) -> usize {
        self.incoming.borrow().capacity()
            + self.plain.borrow().capacity()
            + self.outgoing.borrow().capacity()
    }
}

impl<S: Io> AsRawFd for TlsIo<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl<S: Io> Io for TlsIo<S> {
    async fn ready(&self) -> io::Result<()> {
        if self.eof.get() || !self.plain.borrow().is_empty() {
            return Ok(());
        }
        self.io.ready().await
    }

    async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read_as(buf, true).await
    }

    fn rest(&self) {
        if let Ok(mut session) = self.tls.try_borrow_mut() {
            if let Session::Tls13(records) = &mut *session {
                records.rest();
            }
        }
    }

    async fn read_ready(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read_as(buf, false).await
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if let Err(e) = self.step(None, Action::Encrypt(&buf)).await {
            return (Err(e), buf);
        }
        let r = self.flush().await;
        (r, buf)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            // close_notify is tiny: send it without waiting (unless a flush is under way; it
            // sends it), then the TCP FIN.
            let _ = self.process(None, Action::CloseNotify);
            if let Ok(_guard) = self.writing.try_lock() {
                let out = std::mem::take(&mut *self.outgoing.borrow_mut());
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
        }
        self.io.shutdown(how)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use proxy_tests::{certs::TestCert, tempdir::TempDir};

    use super::*;
    use crate::config::tests::GOOD;
    use crate::terminator::{io::IoMode, uring};

    /// One exchange, then the session waits in a read: it must hold no buffer then.
    async fn exchange_then_idle<S: Io>(stream: S, acceptor: TlsAcceptor) {
        let tls = TlsIo::accept(stream, &acceptor, Duration::from_secs(5))
            .await
            .expect("handshake");
        let (r, got) = tls.read(Vec::with_capacity(SMALL_BUF)).await;
        assert_eq!((r.unwrap(), &got[..]), (4, &b"ping"[..]));
        let (r, _) = tls.write_all(b"pong".to_vec()).await;
        r.unwrap();
        let idle = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let held = tls.held_bytes();
            let _ = tls.shutdown(Shutdown::Both);
            held
        };
        let (read, held) = tokio::join!(tls.read(Vec::with_capacity(SMALL_BUF)), idle);
        assert_eq!(held, 0, "an idle TLS session holds {held} bytes of buffers");
        assert_eq!(read.0.unwrap(), 0, "the shut-down session reads EOF");
    }

    #[test]
    fn an_idle_session_holds_no_buffer_in_either_mode() {
        proxy_tests::terminator::init_crypto();
        let dir = TempDir::new("idletls").unwrap();
        let cert = TestCert::write(&dir.path().join("c"), "idle.example.test").unwrap();
        let source = CertSource {
            server_name: cert.server_name.clone(),
            dir: cert.dir.clone(),
        };
        let resolver = SniResolver::load(&[source], None).unwrap();
        let acceptor = TlsAcceptor::new(resolver);
        for mode in [IoMode::Epoll, IoMode::Uring] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let pem = cert.cert_pem.clone();
            let client = std::thread::spawn(move || {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let config = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from("idle.example.test").unwrap();
                let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
                let tcp = std::net::TcpStream::connect(addr).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                s.write_all(b"ping").unwrap();
                let mut pong = [0u8; 4];
                s.read_exact(&mut pong).unwrap();
                assert_eq!(&pong, b"pong");
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            });
            let (sock, _) = listener.accept().unwrap();
            let acceptor = acceptor.clone();
            match mode {
                IoMode::Epoll => {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        sock.set_nonblocking(true).unwrap();
                        let stream = tokio::net::TcpStream::from_std(sock).unwrap();
                        exchange_then_idle(stream, acceptor).await
                    });
                }
                IoMode::Uring => {
                    uring::block_on(uring::RingConfig::default(), async {
                        let stream = uring::UringStream::from_std(sock).unwrap();
                        exchange_then_idle(stream, acceptor).await
                    })
                    .unwrap();
                }
            }
            client.join().unwrap();
        }
    }

    /// What the server side of a record-layer test saw.
    #[derive(Debug, Default)]
    struct Seen {
        tls13: bool,
        echoed: usize,
        rx_updates: u32,
        tx_updates: u32,
        /// Put to rest after every echo, and no key was expanded then.
        rested_clean: bool,
        error: Option<io::ErrorKind>,
    }

    /// Echoes what it reads until EOF (or an error), putting the session to rest after
    /// each echo; with our record layer, our key is replaced every 4 records.
    async fn echo<S: Io>(stream: S, acceptor: TlsAcceptor) -> Seen {
        let tls = TlsIo::accept(stream, &acceptor, Duration::from_secs(5))
            .await
            .expect("handshake");
        let mut seen = Seen {
            tls13: tls.records(|r| r.set_tx_limit(4)).is_some(),
            rested_clean: true,
            ..Seen::default()
        };
        loop {
            let (r, buf) = tls.read(Vec::with_capacity(SMALL_BUF)).await;
            match r {
                Ok(0) => break,
                Ok(n) => seen.echoed += n,
                Err(e) => {
                    seen.error = Some(e.kind());
                    break;
                }
            }
            let (r, _) = tls.write_all(buf).await;
            r.expect("echo");
            tls.rest();
            if tls.records(|r| r.is_expanded()) == Some(true) {
                seen.rested_clean = false;
            }
        }
        if let Some((rx, tx)) = tls.records(|r| (r.rx_updates, r.tx_updates)) {
            (seen.rx_updates, seen.tx_updates) = (rx, tx);
        }
        let _ = tls.shutdown(Shutdown::Both);
        seen
    }

    /// Serves one connection from `listener` with [`echo`] in `mode`, while `client` runs.
    fn serve_echo(
        mode: IoMode,
        acceptor: &TlsAcceptor,
        client: impl FnOnce(std::net::SocketAddr) + Send + 'static,
    ) -> Seen {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || client(addr));
        let (sock, _) = listener.accept().unwrap();
        let acceptor = acceptor.clone();
        let seen = match mode {
            IoMode::Epoll => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    sock.set_nonblocking(true).unwrap();
                    echo(tokio::net::TcpStream::from_std(sock).unwrap(), acceptor).await
                }),
            IoMode::Uring => uring::block_on(uring::RingConfig::default(), async {
                echo(uring::UringStream::from_std(sock).unwrap(), acceptor).await
            })
            .unwrap(),
        };
        client.join().expect("client");
        seen
    }

    fn test_acceptor(name: &str) -> (TlsAcceptor, TestCert, TempDir) {
        proxy_tests::terminator::init_crypto();
        let dir = TempDir::new("records").unwrap();
        let cert = TestCert::write(&dir.path().join("c"), name).unwrap();
        let source = CertSource {
            server_name: cert.server_name.clone(),
            dir: cert.dir.clone(),
        };
        let resolver = SniResolver::load(&[source], None).unwrap();
        (TlsAcceptor::new(resolver), cert, dir)
    }

    fn client_config(
        pem: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: Option<&[rustls::SupportedCipherSuite]>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(suites) = suites {
            provider.cipher_suites = suites.to_vec();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A rustls client's session against the echo: small and large messages, a KeyUpdate
    /// of its own (asking for ours), then close_notify. Returns the bytes it checked.
    fn chat(config: Arc<rustls::ClientConfig>, name: &'static str, addr: std::net::SocketAddr) {
        let name = rustls::pki_types::ServerName::try_from(name).unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let round = |s: &mut rustls::StreamOwned<_, _>, msg: &[u8]| {
            s.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).unwrap();
            assert!(back == msg, "echoed bytes differ ({} bytes)", msg.len());
        };
        round(&mut s, b"ping");
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        round(&mut s, &big);
        if s.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            s.conn.refresh_traffic_keys().unwrap();
        }
        for i in 0..10u8 {
            round(&mut s, &[b'm', i]);
        }
        s.conn.send_close_notify();
        s.flush().unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "nothing after the last echo");
    }

    /// A client that puts a KeyUpdate and its first message right behind its Finished, in
    /// the same segment (as OpenSSL's s_client does when its `K` command is already
    /// waiting). Both are our record layer's to open: had rustls taken the KeyUpdate, its
    /// keys would be past the handshake's secrets; had they stayed sealed in the buffer,
    /// the first message would wait for bytes that never come. The session goes on.
    fn key_update_behind_finished(
        config: Arc<rustls::ClientConfig>,
        name: &'static str,
        addr: std::net::SocketAddr,
    ) {
        let name = rustls::pki_types::ServerName::try_from(name).unwrap();
        let mut conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        while conn.is_handshaking() {
            assert!(
                conn.read_tls(&mut tcp).unwrap() > 0,
                "server closed mid-handshake"
            );
            conn.process_new_packets().unwrap();
        }
        // Our Finished is queued, not sent: a KeyUpdate (asking for the server's) and the
        // first message go behind it, and all three leave in one write.
        conn.refresh_traffic_keys().unwrap();
        conn.writer().write_all(b"ping").unwrap();
        let mut flight = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut flight).unwrap();
        }
        tcp.write_all(&flight).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(
            &back, b"ping",
            "the message in the handshake's last segment"
        );
        for msg in [&b"after the update"[..], b"and once more"] {
            s.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg, "echoed under the updated keys");
        }
        s.conn.send_close_notify();
        s.flush().unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }

    /// A TLS 1.3 session with `suite` against the echo in `mode`, `client` driving it;
    /// checks that our record layer took over and nothing failed. Returns what the server
    /// saw and the case's name for messages.
    fn serve_tls13(
        mode: IoMode,
        acceptor: &TlsAcceptor,
        cert: &TestCert,
        suite: rustls::SupportedCipherSuite,
        client: fn(Arc<rustls::ClientConfig>, &'static str, std::net::SocketAddr),
    ) -> (Seen, String) {
        let config = client_config(&cert.cert_pem, &[&rustls::version::TLS13], Some(&[suite]));
        let seen = serve_echo(mode, acceptor, move |a| {
            client(config, "records.example.test", a)
        });
        let what = format!("{mode:?} {:?}", suite.suite());
        assert!(seen.tls13, "{what}: our record layer took over");
        assert_eq!(seen.error, None, "{what}");
        (seen, what)
    }

    #[test]
    fn a_key_update_right_behind_the_clients_finished_is_taken_in_either_mode() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        let (acceptor, cert, _dir) = test_acceptor("records.example.test");
        for mode in [IoMode::Epoll, IoMode::Uring] {
            for suite in [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384] {
                let (seen, what) =
                    serve_tls13(mode, &acceptor, &cert, suite, key_update_behind_finished);
                assert_eq!(seen.echoed, 4 + 16 + 13, "{what}");
            }
        }
    }

    /// After a TLS 1.3 handshake our record layer carries the session, for each TLS 1.3
    /// cipher: bytes pass exactly both ways (records up to 16 KiB), through the client's
    /// KeyUpdate (answered with ours) and ours every 4 records, with keys put to rest and
    /// expanded again between messages; close_notify ends it. TLS 1.2 stays on rustls.
    #[test]
    fn tls13_records_carry_sessions_through_key_updates_and_rest_in_either_mode() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        let (acceptor, cert, _dir) = test_acceptor("records.example.test");
        let suites = [
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        let expected = 4 + 40_000 + 20;
        for mode in [IoMode::Epoll, IoMode::Uring] {
            for suite in suites {
                let (seen, what) = serve_tls13(mode, &acceptor, &cert, suite, chat);
                assert_eq!(seen.echoed, expected, "{what}");
                assert_eq!(seen.rx_updates, 1, "{what}: the client's KeyUpdate");
                // 3 rounds of records before the update, 10 after: ours every 4 records,
                // and one answering the client's.
                assert!(
                    seen.tx_updates >= 4,
                    "{what}: {} of our KeyUpdates",
                    seen.tx_updates
                );
                assert!(
                    seen.rested_clean,
                    "{what}: a rested session keeps no expanded key"
                );
            }
            let config = client_config(&cert.cert_pem, &[&rustls::version::TLS12], None);
            let seen = serve_echo(mode, &acceptor, move |a| {
                chat(config, "records.example.test", a)
            });
            assert!(!seen.tls13, "{mode:?}: TLS 1.2 stays on rustls");
            assert_eq!(
                (seen.error, seen.echoed),
                (None, expected),
                "{mode:?} TLS 1.2"
            );
        }
    }

    /// Completes a TLS 1.3 handshake by hand and returns the client and its socket.
    fn handshake_by_hand(
        pem: &str,
        addr: std::net::SocketAddr,
    ) -> (rustls::ClientConnection, std::net::TcpStream) {
        let config = client_config(pem, &[&rustls::version::TLS13], None);
        let name = rustls::pki_types::ServerName::try_from("records.example.test").unwrap();
        let mut conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        (conn, tcp)
    }

    /// Broken records after the handshake: the session ends with an error, and the client
    /// gets the alert that says why.
    #[test]
    fn broken_tls13_records_end_the_session_with_the_right_alert() {
        use rustls::AlertDescription as A;
        let (acceptor, cert, _dir) = test_acceptor("records.example.test");
        type Break = fn(&mut Vec<u8>);
        let cases: [(&str, Break, A); 4] = [
            (
                "a flipped byte",
                |r| *r.last_mut().unwrap() ^= 1,
                A::BadRecordMac,
            ),
            ("a handshake record", |r| r[0] = 22, A::UnexpectedMessage),
            (
                "an oversized record",
                |r| r.splice(3..5, [0x48, 0]).for_each(drop),
                A::RecordOverflow,
            ),
            (
                "a record too short for its tag",
                |r| {
                    r.truncate(5 + 8);
                    r[3..5].copy_from_slice(&[0, 8]);
                },
                A::DecodeError,
            ),
        ];
        for mode in [IoMode::Epoll, IoMode::Uring] {
            for (what, broken, alert) in cases {
                let pem = cert.cert_pem.clone();
                let seen = serve_echo(mode, &acceptor, move |addr| {
                    let (mut conn, mut tcp) = handshake_by_hand(&pem, addr);
                    conn.writer().write_all(b"hello").unwrap();
                    let mut record = Vec::new();
                    conn.write_tls(&mut record).unwrap();
                    broken(&mut record);
                    tcp.write_all(&record).unwrap();
                    let got = loop {
                        match conn.read_tls(&mut tcp) {
                            Ok(0) | Err(_) => break None,
                            Ok(_) => {}
                        }
                        if let Err(e) = conn.process_new_packets() {
                            break Some(e);
                        }
                    };
                    assert_eq!(
                        got,
                        Some(rustls::Error::AlertReceived(alert)),
                        "{mode:?}, {what}"
                    );
                });
                assert!(seen.tls13, "{mode:?}, {what}");
                assert_eq!(seen.echoed, 0, "{mode:?}, {what}: nothing passed");
                assert_eq!(
                    seen.error,
                    Some(io::ErrorKind::InvalidData),
                    "{mode:?}, {what}"
                );
            }
        }
    }

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
