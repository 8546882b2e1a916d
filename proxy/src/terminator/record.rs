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
//! rustls' `KernelConnection` stays for what it alone knows: the traffic secrets, to
//! derive the next keys on a KeyUpdate (the peer's, or ours before our key wears out).
//! TLS 1.2 sessions stay on rustls throughout.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{
    kernel::KernelConnection, server::ServerConnectionData, ConnectionTrafficSecrets,
    ExtractedSecrets,
};
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

    fn limit(self) -> u64 {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => AES_GCM_LIMIT,
            Self::Chacha20Poly1305 => u64::MAX,
        }
    }
}

/// One direction's traffic key: the bytes always, the expanded AEAD context only while
/// records flow.
struct TrafficKey {
    cipher: Cipher,
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
    expanded: Option<LessSafeKey>,
}

impl Drop for TrafficKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl TrafficKey {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Self, RecordError> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return Err(fail(Alert::InternalError, "unsupported TLS 1.3 cipher")),
        };
        let mut this = Self {
            cipher,
            key: [0; 32],
            iv: [0; 12],
            seq,
            expanded: None,
        };
        let (k, v) = (key.as_ref(), iv.as_ref());
        if k.len() != cipher.algorithm().key_len() || v.len() != this.iv.len() {
            return Err(fail(Alert::InternalError, "traffic key of the wrong size"));
        }
        this.key[..k.len()].copy_from_slice(k);
        this.iv.copy_from_slice(v);
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
    kernel: KernelConnection<ServerConnectionData>,
    /// Records sealed under one key before ours is replaced (the cipher's limit; tests set
    /// it low).
    tx_limit: u64,
    /// A fatal alert or close_notify went out: nothing more may be sealed.
    closed: bool,
    /// KeyUpdates taken from the peer and made by us (a rare event worth seeing in tests).
    pub rx_updates: u32,
    pub tx_updates: u32,
}

impl Tls13Records {
    /// Takes over from rustls: the secrets it extracted and what derives the next ones.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, RecordError> {
        let rx = TrafficKey::new(secrets.rx.0, secrets.rx.1)?;
        let tx = TrafficKey::new(secrets.tx.0, secrets.tx.1)?;
        let tx_limit = tx.cipher.limit();
        Ok(Self {
            rx,
            tx,
            kernel,
            tx_limit,
            closed: false,
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
        let mut at = 0;
        let result = loop {
            let rest = &mut incoming[at..];
            if rest.len() < HEADER {
                break Ok(Opened::NeedMore);
            }
            let header: [u8; HEADER] = rest[..HEADER].try_into().expect("five bytes");
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != APPLICATION_DATA {
                break Err(fail(
                    Alert::UnexpectedMessage,
                    format!("record of type {} after the handshake", header[0]),
                ));
            }
            if len > MAX_CIPHER {
                break Err(fail(Alert::RecordOverflow, "record too long"));
            }
            if rest.len() < HEADER + len {
                break Ok(Opened::NeedMore);
            }
            at += HEADER + len;
            if len < TAG + 1 {
                break Err(fail(Alert::DecodeError, "record too short"));
            }
            let nonce = match self.rx.next_nonce() {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            let aead = match self.rx.aead() {
                Ok(k) => k,
                Err(e) => break Err(e),
            };
            let Ok(inner) =
                aead.open_in_place(nonce, Aad::from(header), &mut rest[HEADER..HEADER + len])
            else {
                break Err(fail(Alert::BadRecordMac, "record failed authentication"));
            };
            // TLSInnerPlaintext: content, then the real type, then zero padding.
            let Some(end) = inner.iter().rposition(|&b| b != 0) else {
                break Err(fail(
                    Alert::UnexpectedMessage,
                    "record without content type",
                ));
            };
            let (kind, content) = (inner[end], &inner[..end]);
            if content.len() > MAX_PLAIN {
                break Err(fail(Alert::RecordOverflow, "plaintext too long"));
            }
            match kind {
                APPLICATION_DATA => deliver(content),
                ALERT => match content {
                    [_, 0] => break Ok(Opened::CloseNotify),
                    // user_canceled: a close_notify follows.
                    [_, 90] => {}
                    [_, d] => {
                        // A fatal alert: the peer is gone, answer nothing.
                        self.closed = true;
                        break Err(fail(Alert::CloseNotify, format!("peer sent alert {d}")));
                    }
                    _ => break Err(fail(Alert::DecodeError, "malformed alert")),
                },
                HANDSHAKE => {
                    let content = content.to_vec();
                    if let Err(e) = self.handshake(&content, out) {
                        break Err(e);
                    }
                }
                other => {
                    break Err(fail(
                        Alert::UnexpectedMessage,
                        format!("inner content type {other} after the handshake"),
                    ))
                }
            }
        };
        incoming.drain(..at);
        result
    }

    /// Post-handshake messages from a client: only KeyUpdate is valid here (we ask for no
    /// client certificate, and a client sends no tickets).
    fn handshake(&mut self, mut msgs: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
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
            let (seq, secrets) = self
                .kernel
                .update_rx_secret()
                .map_err(|e| fail(Alert::InternalError, e.to_string()))?;
            self.rx = TrafficKey::new(seq, secrets)?;
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
        let (seq, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(|e| fail(Alert::InternalError, e.to_string()))?;
        self.tx = TrafficKey::new(seq, secrets)?;
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
