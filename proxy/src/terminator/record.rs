//! TLS 1.3 records after the handshake, without rustls' connection: rustls does the
//! handshake, then hands over the traffic keys (`dangerous_into_kernel_connection`), and
//! this layer seals and opens the records itself (RFC 8446 §5).
//!
//! Why: an idle `wss` connection is mostly TLS state. rustls keeps its whole connection
//! (about 1.1 KB inline) and both directions' AEAD contexts expanded for the session's
//! life (about 1.7 KB with aws-lc's key schedules and GHASH tables). Here a direction keeps
//! its key as bytes (tens of bytes) and expands it only while records flow: the relay calls
//! [`Tls13Records::rest`] once a connection has gone quiet.
//!
//! A KeyUpdate (the peer's, or ours before our key wears out) derives the next key from
//! the direction's traffic secret (§7.2), which rustls hands out only to a `KeyLog` while
//! the handshake runs: [`CatchTrafficSecrets`] takes it there. rustls' `KernelConnection`
//! could derive it too, but keeps about 1 KB per session for that. TLS 1.2 sessions stay on
//! rustls throughout.

use std::cell::RefCell;

use aws_lc_rs::{
    aead::{self, Aad, LessSafeKey, Nonce, UnboundKey},
    hkdf,
};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, KeyLog};
use zeroize::Zeroize;

/// Record content types (RFC 8446 §5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message type of a KeyUpdate (§4.6.3).
const KEY_UPDATE: u8 = 24;
const HEADER: usize = 5;
const TAG: usize = 16;
/// Largest plaintext per record, and what a ciphertext may add to it (§5.2).
const MAX_PLAIN: usize = 1 << 14;
const MAX_CIPHER: usize = MAX_PLAIN + 256;
/// Records sealed under one AES-GCM key before it is replaced (rustls' limit for
/// AES-128-GCM; RFC 8446 §5.5 allows 2^24.5).
const AES_GCM_LIMIT: u64 = 1 << 23;

/// Alert descriptions this layer sends (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Alert {
    CloseNotify = 0,
    UnexpectedMessage = 10,
    BadRecordMac = 20,
    RecordOverflow = 22,
    DecodeError = 50,
    InternalError = 80,
}

/// A record the peer sent that ends the session, and the alert it earns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TLS: {what}")]
pub struct RecordError {
    pub alert: Alert,
    pub what: String,
}

fn fail(alert: Alert, what: impl Into<String>) -> RecordError {
    RecordError {
        alert,
        what: what.into(),
    }
}

/// How [`Tls13Records::open`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Every whole record was read; what is left (if anything) is part of the next one.
    NeedMore,
    /// The peer sent close_notify: nothing after it is read.
    CloseNotify,
}

/// What [`Tls13Records::open_record`] found at the front of the received bytes.
enum Record {
    /// Not all of it has come yet.
    Partial,
    /// A record of this many bytes was read.
    Read(usize),
    CloseNotify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes128Gcm => &aead::AES_128_GCM,
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// The suite's hash, for HKDF.
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Self::Aes256Gcm => hkdf::HKDF_SHA384,
            Self::Aes128Gcm | Self::Chacha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }

    fn limit(self) -> u64 {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => AES_GCM_LIMIT,
            Self::Chacha20Poly1305 => u64::MAX,
        }
    }
}

/// A traffic secret as rustls logged it (a hash's length: 32 or 48 bytes).
#[derive(Clone)]
pub struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    fn new(b: &[u8]) -> Option<Self> {
        let mut bytes = [0; 48];
        bytes.get_mut(..b.len())?.copy_from_slice(b);
        Some(Self {
            bytes,
            len: b.len() as u8,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// A handshake's two application traffic secrets, as far as caught.
#[derive(Default)]
pub struct TrafficSecrets {
    pub client: Option<Secret>,
    pub server: Option<Secret>,
}

impl TrafficSecrets {
    /// Adds what the handshake step that just ran on this thread logged.
    pub fn catch(&mut self) {
        CAUGHT.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(s) = c.client.take() {
                self.client = Some(s);
            }
            if let Some(s) = c.server.take() {
                self.server = Some(s);
            }
        });
    }
}

thread_local! {
    static CAUGHT: RefCell<TrafficSecrets> = RefCell::new(TrafficSecrets::default());
}

const CLIENT_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

/// The `KeyLog` of our server config: keeps a handshake's application traffic secrets on
/// this thread until [`TrafficSecrets::catch`] takes them. rustls logs them inside the
/// `process_tls_records` call that derives them, so the session whose step just ran is the
/// one they belong to (and takeover checks that they give rustls' keys).
#[derive(Debug)]
pub struct CatchTrafficSecrets;

impl KeyLog for CatchTrafficSecrets {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_SECRET || label == SERVER_SECRET
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAUGHT.with(|c| {
            let mut c = c.borrow_mut();
            match label {
                CLIENT_SECRET => c.client = Secret::new(secret),
                SERVER_SECRET => c.server = Secret::new(secret),
                _ => {}
            }
        });
    }
}

/// HKDF-Expand-Label (§7.1) with an empty context.
fn expand_label(
    alg: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    out: &mut [u8],
) -> Result<(), RecordError> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    hkdf::Prk::new_less_safe(alg, secret)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| fail(Alert::InternalError, "HKDF-Expand-Label failed"))
}

/// One direction's traffic key: the bytes and the secret they come from always, the
/// expanded AEAD context only while records flow.
struct TrafficKey {
    cipher: Cipher,
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
    secret: Secret,
    expanded: Option<LessSafeKey>,
}

impl Drop for TrafficKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl TrafficKey {
    /// The key of `secret` (§7.3).
    fn derive(cipher: Cipher, secret: Secret) -> Result<Self, RecordError> {
        let mut this = Self {
            cipher,
            key: [0; 32],
            iv: [0; 12],
            seq: 0,
            secret,
            expanded: None,
        };
        let alg = cipher.hkdf();
        let key_len = cipher.algorithm().key_len();
        expand_label(
            alg,
            this.secret.as_bytes(),
            b"key",
            &mut this.key[..key_len],
        )?;
        expand_label(alg, this.secret.as_bytes(), b"iv", &mut this.iv)?;
        Ok(this)
    }

    /// The next key after a KeyUpdate (§7.2).
    fn next(&self) -> Result<Self, RecordError> {
        let mut next = self.secret.clone();
        let len = usize::from(next.len);
        expand_label(
            self.cipher.hkdf(),
            self.secret.as_bytes(),
            b"traffic upd",
            &mut next.bytes[..len],
        )?;
        Self::derive(self.cipher, next)
    }

    /// rustls' key for this direction, checked against the one derived from the caught
    /// secret (so a secret caught from another session can never be used).
    fn new(
        seq: u64,
        secrets: ConnectionTrafficSecrets,
        secret: Option<Secret>,
    ) -> Result<Self, RecordError> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return Err(fail(Alert::InternalError, "unsupported TLS 1.3 cipher")),
        };
        let secret =
            secret.ok_or_else(|| fail(Alert::InternalError, "traffic secret not caught"))?;
        let mut this = Self::derive(cipher, secret)?;
        let key_len = cipher.algorithm().key_len();
        if key.as_ref() != &this.key[..key_len] || iv.as_ref() != this.iv {
            return Err(fail(
                Alert::InternalError,
                "the caught traffic secret does not give rustls' key",
            ));
        }
        this.seq = seq;
        Ok(this)
    }

    /// The AEAD context, expanded now if it was put to rest.
    fn aead(&mut self) -> Result<&LessSafeKey, RecordError> {
        if self.expanded.is_none() {
            let alg = self.cipher.algorithm();
            let unbound = UnboundKey::new(alg, &self.key[..alg.key_len()])
                .map_err(|_| fail(Alert::InternalError, "cannot expand the traffic key"))?;
            self.expanded = Some(LessSafeKey::new(unbound));
        }
        Ok(self.expanded.as_ref().expect("just expanded"))
    }

    /// The per-record nonce (§5.3): the IV xor the sequence number, which then advances.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.seq == u64::MAX {
            return Err(fail(
                Alert::InternalError,
                "record sequence number exhausted",
            ));
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// A TLS 1.3 server session's record layer, from the end of the handshake on.
pub struct Tls13Records {
    rx: TrafficKey,
    tx: TrafficKey,
    /// Records sealed under one key before ours is replaced (the cipher's limit; tests set
    /// it low).
    tx_limit: u64,
    /// A fatal alert or close_notify went out: nothing more may be sealed.
    closed: bool,
    /// The peer's close_notify came: nothing more is read.
    peer_closed: bool,
    /// KeyUpdates taken from the peer and made by us (a rare event worth seeing in tests).
    pub rx_updates: u32,
    pub tx_updates: u32,
}

impl Tls13Records {
    /// Takes over from rustls: the keys and sequence numbers it extracted, and the traffic
    /// secrets caught during the handshake (client's: what we receive).
    pub fn new(
        secrets: ExtractedSecrets,
        mut traffic: TrafficSecrets,
    ) -> Result<Self, RecordError> {
        let rx = TrafficKey::new(secrets.rx.0, secrets.rx.1, traffic.client.take())?;
        let tx = TrafficKey::new(secrets.tx.0, secrets.tx.1, traffic.server.take())?;
        let tx_limit = tx.cipher.limit();
        Ok(Self {
            rx,
            tx,
            tx_limit,
            closed: false,
            peer_closed: false,
            rx_updates: 0,
            tx_updates: 0,
        })
    }

    #[cfg(test)]
    pub fn set_tx_limit(&mut self, limit: u64) {
        self.tx_limit = limit;
    }

    /// Frees the expanded AEAD contexts (an idle connection keeps only key bytes); the next
    /// record expands them again.
    pub fn rest(&mut self) {
        self.rx.expanded = None;
        self.tx.expanded = None;
    }

    /// Whether an AEAD context is expanded (tests: a rested session holds none).
    #[cfg(test)]
    pub fn is_expanded(&self) -> bool {
        self.rx.expanded.is_some() || self.tx.expanded.is_some()
    }

    /// Opens every whole record at the front of `incoming` (and removes them), passing
    /// application data to `deliver` in order. A KeyUpdate asking for ours queues it in
    /// `out`. Stops at close_notify. On an error the caller sends [`Self::alert`].
    pub fn open(
        &mut self,
        incoming: &mut Vec<u8>,
        out: &mut Vec<u8>,
        mut deliver: impl FnMut(&[u8]),
    ) -> Result<Opened, RecordError> {
        if self.peer_closed {
            incoming.clear();
            return Ok(Opened::CloseNotify);
        }
        let mut at = 0;
        let result = loop {
            match self.open_record(&mut incoming[at..], out, &mut deliver) {
                Ok(Record::Partial) => break Ok(Opened::NeedMore),
                Ok(Record::Read(n)) => at += n,
                Ok(Record::CloseNotify) => {
                    // What follows close_notify is ignored (§6.1).
                    self.peer_closed = true;
                    at = incoming.len();
                    break Ok(Opened::CloseNotify);
                }
                // The session ends here: nothing after the bad record is read.
                Err(e) => {
                    at = incoming.len();
                    break Err(e);
                }
            }
        };
        incoming.drain(..at);
        result
    }

    /// Opens the record at the front of `rest`, if it is whole.
    fn open_record(
        &mut self,
        rest: &mut [u8],
        out: &mut Vec<u8>,
        deliver: &mut impl FnMut(&[u8]),
    ) -> Result<Record, RecordError> {
        let Some(header) = rest.first_chunk::<HEADER>().copied() else {
            return Ok(Record::Partial);
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != APPLICATION_DATA {
            return Err(fail(
                Alert::UnexpectedMessage,
                format!("record of type {} after the handshake", header[0]),
            ));
        }
        if len > MAX_CIPHER {
            return Err(fail(Alert::RecordOverflow, "record too long"));
        }
        let Some(sealed) = rest.get_mut(HEADER..HEADER + len) else {
            return Ok(Record::Partial);
        };
        if len < TAG + 1 {
            return Err(fail(Alert::DecodeError, "record too short"));
        }
        let nonce = self.rx.next_nonce()?;
        let inner = self
            .rx
            .aead()?
            .open_in_place(nonce, Aad::from(header), sealed)
            .map_err(|_| fail(Alert::BadRecordMac, "record failed authentication"))?;
        // TLSInnerPlaintext: content, then the real type, then zero padding.
        let end = inner
            .iter()
            .rposition(|&b| b != 0)
            .ok_or_else(|| fail(Alert::UnexpectedMessage, "record without content type"))?;
        let (kind, content) = (inner[end], &inner[..end]);
        if content.len() > MAX_PLAIN {
            return Err(fail(Alert::RecordOverflow, "plaintext too long"));
        }
        match kind {
            APPLICATION_DATA => deliver(content),
            ALERT => match content {
                [_, 0] => return Ok(Record::CloseNotify),
                // user_canceled: a close_notify follows.
                [_, 90] => {}
                [_, d] => {
                    // A fatal alert: the peer is gone, answer nothing.
                    self.closed = true;
                    return Err(fail(Alert::CloseNotify, format!("peer sent alert {d}")));
                }
                _ => return Err(fail(Alert::DecodeError, "malformed alert")),
            },
            HANDSHAKE => self.handshake(content, out)?,
            other => {
                return Err(fail(
                    Alert::UnexpectedMessage,
                    format!("inner content type {other} after the handshake"),
                ))
            }
        }
        Ok(Record::Read(HEADER + len))
    }

    /// Post-handshake messages from a client: only KeyUpdate is valid here (we ask for no
    /// client certificate, and a client sends no tickets).
    fn handshake(&mut self, mut msgs: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if msgs.is_empty() {
            // §5.1: handshake records are never empty.
            return Err(fail(Alert::UnexpectedMessage, "empty handshake record"));
        }
        while !msgs.is_empty() {
            let [kind, a, b, c, body @ ..] = msgs else {
                return Err(fail(
                    Alert::UnexpectedMessage,
                    "fragmented handshake message",
                ));
            };
            let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
            if body.len() < len {
                return Err(fail(
                    Alert::UnexpectedMessage,
                    "fragmented handshake message",
                ));
            }
            if *kind != KEY_UPDATE {
                return Err(fail(
                    Alert::UnexpectedMessage,
                    format!("handshake message {kind} after the handshake"),
                ));
            }
            let requested = match &body[..len] {
                [0] => false,
                [1] => true,
                _ => return Err(fail(Alert::DecodeError, "malformed KeyUpdate")),
            };
            // §5.1: a KeyUpdate ends its record (the keys change after it).
            if body.len() > len {
                return Err(fail(Alert::UnexpectedMessage, "data after a KeyUpdate"));
            }
            self.rx = self.rx.next()?;
            self.rx_updates += 1;
            if requested && !self.closed {
                self.update_tx(out)?;
            }
            msgs = &body[len..];
        }
        Ok(())
    }

    /// Sends our KeyUpdate (under the old key), then switches to the next key.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        self.tx = self.tx.next()?;
        self.tx_updates += 1;
        Ok(())
    }

    /// Appends `data` to `out` as application data records.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.closed {
            return Err(fail(Alert::InternalError, "the session is closed"));
        }
        out.reserve(data.len() + data.len().div_ceil(MAX_PLAIN).max(1) * (HEADER + 1 + TAG));
        for chunk in data.chunks(MAX_PLAIN) {
            if self.tx.seq >= self.tx_limit {
                self.update_tx(out)?;
            }
            self.seal_record(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Appends an alert record (close_notify or fatal); nothing is sealed after it.
    pub fn alert(&mut self, alert: Alert, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        let level = if alert == Alert::CloseNotify { 1 } else { 2 };
        let _ = self.seal_record(ALERT, &[level, alert as u8], out);
        self.closed = true;
    }

    fn seal_record(
        &mut self,
        kind: u8,
        content: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let len = content.len() + 1 + TAG;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let nonce = self.tx.next_nonce()?;
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.push(kind);
        let sealed = self.tx.aead().and_then(|k| {
            k.seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER..])
                .map_err(|_| fail(Alert::InternalError, "sealing failed"))
        });
        let tag = match sealed {
            Ok(t) => t,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// For the fuzz target: a server's record layer and a client's that talks to it, on fixed
/// secrets (no handshake). `cipher` picks one of the three TLS 1.3 ciphers.
#[doc(hidden)]
pub fn fuzz_pair(cipher: u8) -> (Tls13Records, Tls13Records) {
    let cipher = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ][usize::from(cipher % 3)];
    let len = if cipher == Cipher::Aes256Gcm { 48 } else { 32 };
    let key = |b: u8| TrafficKey::derive(cipher, Secret::new(&[b; 48][..len]).expect("48"));
    let side = |rx, tx| Tls13Records {
        rx: key(rx).expect("derive"),
        tx: key(tx).expect("derive"),
        tx_limit: 64,
        closed: false,
        peer_closed: false,
        rx_updates: 0,
        tx_updates: 0,
    };
    (side(1, 2), side(2, 1))
}

impl Tls13Records {
    /// For the fuzz target: seals a record of any inner type, as a peer would (after a
    /// KeyUpdate it sends, the next records use its next key).
    #[doc(hidden)]
    pub fn fuzz_send(&mut self, kind: u8, content: &[u8], out: &mut Vec<u8>) {
        if content.len() > MAX_PLAIN || self.seal_record(kind, content, out).is_err() {
            return;
        }
        if kind == HANDSHAKE && matches!(content, [KEY_UPDATE, 0, 0, 1, 0 | 1]) {
            self.tx = self.tx.next().expect("derive");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// RFC 8448 §3: the server's application traffic secret and the key and IV it gives.
    #[test]
    fn traffic_keys_derive_as_rfc_8448_says() {
        let secret = hex("a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43");
        let k = TrafficKey::derive(Cipher::Aes128Gcm, Secret::new(&secret).unwrap()).unwrap();
        assert_eq!(
            k.key[..16],
            hex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56")[..]
        );
        assert_eq!(k.iv[..], hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")[..]);
    }

    /// What a peer sends after close_notify is never delivered, however it arrives.
    #[test]
    fn nothing_after_close_notify_is_read() {
        let (mut server, mut client) = fuzz_pair(0);
        let mut wire = Vec::new();
        client.fuzz_send(APPLICATION_DATA, b"before", &mut wire);
        client.fuzz_send(ALERT, &[1, 0], &mut wire);
        client.fuzz_send(APPLICATION_DATA, b"after", &mut wire);
        let (mut got, mut out) = (Vec::new(), Vec::new());
        let r = server.open(&mut wire, &mut out, |p| got.extend_from_slice(p));
        assert_eq!((r, &got[..]), (Ok(Opened::CloseNotify), &b"before"[..]));
        assert!(wire.is_empty(), "the rest is dropped");
        client.fuzz_send(APPLICATION_DATA, b"later", &mut wire);
        let r = server.open(&mut wire, &mut out, |p| got.extend_from_slice(p));
        assert_eq!((r, &got[..]), (Ok(Opened::CloseNotify), &b"before"[..]));
    }

    /// Handshake records after the handshake: only a KeyUpdate, whole and last in its
    /// record; anything else is `unexpected_message` (or `decode_error`).
    #[test]
    fn only_whole_key_updates_pass_as_handshake_records() {
        let cases: [(&[u8], Alert); 5] = [
            (&[], Alert::UnexpectedMessage),
            (&[KEY_UPDATE, 0, 0, 1], Alert::UnexpectedMessage),
            (&[KEY_UPDATE, 0, 0, 1, 2], Alert::DecodeError),
            (&[KEY_UPDATE, 0, 0, 1, 0, 23], Alert::UnexpectedMessage),
            (&[4, 0, 0, 1, 0], Alert::UnexpectedMessage),
        ];
        for (content, alert) in cases {
            let (mut server, mut client) = fuzz_pair(1);
            let mut wire = Vec::new();
            client.fuzz_send(HANDSHAKE, content, &mut wire);
            let r = server.open(&mut wire, &mut Vec::new(), |_| {});
            assert_eq!(r.map_err(|e| e.alert), Err(alert), "{content:?}");
        }
        let (mut server, mut client) = fuzz_pair(2);
        let mut wire = Vec::new();
        client.fuzz_send(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1], &mut wire);
        client.fuzz_send(APPLICATION_DATA, b"new key", &mut wire);
        let (mut got, mut out) = (Vec::new(), Vec::new());
        let r = server.open(&mut wire, &mut out, |p| got.extend_from_slice(p));
        assert_eq!((r, &got[..]), (Ok(Opened::NeedMore), &b"new key"[..]));
        assert_eq!((server.rx_updates, server.tx_updates), (1, 1));
        let r = client.open(&mut out, &mut Vec::new(), |_| {});
        assert_eq!(
            (r, client.rx_updates),
            (Ok(Opened::NeedMore), 1),
            "ours opens"
        );
    }

    /// A secret that does not give rustls' key (another session's) is refused.
    #[test]
    fn a_secret_that_does_not_match_rustls_key_is_refused() {
        let secret = Secret::new(&[7; 48]).unwrap();
        let right = TrafficKey::derive(Cipher::Aes256Gcm, secret.clone()).unwrap();
        let secrets = |key: [u8; 32]| ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from(key),
            iv: rustls::crypto::cipher::Iv::new(right.iv),
        };
        let ok = TrafficKey::new(5, secrets(right.key), Some(secret.clone())).unwrap();
        assert_eq!(ok.seq, 5);
        let mut wrong = right.key;
        wrong[0] ^= 1;
        let err = TrafficKey::new(5, secrets(wrong), Some(secret))
            .err()
            .unwrap();
        assert!(err.what.contains("does not give rustls' key"), "{err}");
        let err = TrafficKey::new(5, secrets(right.key), None).err().unwrap();
        assert!(err.what.contains("not caught"), "{err}");
    }
}
