//! Sans-IO WebSocket frames (RFC 6455 §5): write a frame (masked or not), parse one from the
//! start of a byte buffer as bytes arrive, and build or read a close frame's code and reason.
//!
//! The relay passes frames through untouched; this is for the places that speak WebSocket
//! themselves: close frames to clients (1001 going away, 1012 restart), the benchmark's load
//! generator and echo node, and the test kit.
#![forbid(unsafe_code)]

use std::ops::Range;

/// FIN bit of the first header byte.
const FIN: u8 = 0x80;
/// RSV1..3: only meaningful with a negotiated extension, and none is ever negotiated here.
const RSV: u8 = 0x70;
/// MASK bit of the second header byte.
const MASKED: u8 = 0x80;
/// Longest payload of a control frame (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes (§5.2); the reserved ones are a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    /// The opcode of the low four bits of a header's first byte, `None` when reserved.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits & 0x0f {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xa => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xa,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes of payload.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Close codes (§7.4.1 and the IANA registry) the proxy and its tests send.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    /// The server goes down (shutdown, listener removed).
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The service restarts; the client should reconnect.
    pub const SERVICE_RESTART: u16 = 1012;

    /// Whether `code` may appear in a close frame: the registered codes except the ones
    /// reserved for reporting (1004, 1005, 1006, 1015), and the application range 3000-4999.
    pub fn is_valid(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Why bytes are not a valid frame. Each is a protocol error: close with 1002 (or 1009 for
/// [`FrameError::TooLarge`], 1007 for [`FrameError::CloseReasonNotUtf8`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1..3 set without a negotiated extension.
    #[error("reserved bits set in a frame header ({byte:#04x})")]
    ReservedBits { byte: u8 },
    /// Opcodes 3-7 and 0xb-0xf are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A close, ping or pong frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame with {0} bytes of payload (at most 125)")]
    ControlTooLong(u64),
    /// The length is not in its shortest form (§5.2 requires it), or uses the top bit.
    #[error("payload length {0} not in its shortest encoding")]
    NonMinimalLength(u64),
    /// Longer than the caller accepts.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: u64 },
    /// A close payload of one byte: a code needs two.
    #[error("close payload of one byte")]
    CloseTruncated,
    /// A close code that must not be sent (e.g. 1005, 1006) or is unassigned.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// The close reason must be UTF-8.
    #[error("close reason is not UTF-8")]
    CloseReasonNotUtf8,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    /// The masking key; clients must mask, servers must not (§5.1; the caller checks).
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes of the header itself (2 to 14).
    pub header_len: usize,
}

impl FrameHeader {
    /// Header and payload together.
    pub fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// A complete frame at the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    /// Where the payload is in the buffer (still masked if the frame is).
    pub payload: Range<usize>,
}

impl Frame {
    /// Bytes of the buffer this frame takes (drain them after use).
    pub fn len(&self) -> usize {
        self.payload.end
    }

    /// Never true: a frame has at least its two-byte header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The payload, unmasked.
    pub fn payload_unmasked(&self, buf: &[u8]) -> Vec<u8> {
        let mut p = buf[self.payload.clone()].to_vec();
        if let Some(key) = self.header.mask {
            apply_mask(&mut p, key);
        }
        p
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` until enough bytes are there.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & RSV != 0 {
        return Err(FrameError::ReservedBits { byte: b0 });
    }
    let opcode = Opcode::from_bits(b0).ok_or(FrameError::ReservedOpcode(b0 & 0x0f))?;
    let fin = b0 & FIN != 0;
    let short = u64::from(b1 & 0x7f);
    if opcode.is_control() {
        // Checked before the extended length: a control frame never has one.
        if !fin {
            return Err(FrameError::FragmentedControl);
        }
        if short > MAX_CONTROL_PAYLOAD as u64 {
            return Err(FrameError::ControlTooLong(short));
        }
    }
    let (payload_len, mut header_len) = match short {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([b[0], b[1]]));
            if len < 126 {
                return Err(FrameError::NonMinimalLength(len));
            }
            (len, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if len <= 0xffff || len >> 63 != 0 {
                return Err(FrameError::NonMinimalLength(len));
            }
            (len, 10)
        }
        n => (n, 2),
    };
    let mask = if b1 & MASKED != 0 {
        let Some(k) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Parses the frame at the start of `buf`: `Ok(None)` until the whole frame is there. A
/// payload over `max_payload` is an error as soon as the header shows it.
pub fn parse_frame(buf: &[u8], max_payload: u64) -> Result<Option<Frame>, FrameError> {
    let Some(header) = parse_header(buf)? else {
        return Ok(None);
    };
    if header.payload_len > max_payload {
        return Err(FrameError::TooLarge {
            len: header.payload_len,
            max: max_payload,
        });
    }
    if (buf.len() as u64) < header.frame_len() {
        return Ok(None);
    }
    // Fits in the buffer, so in usize.
    let end = header.frame_len() as usize;
    Ok(Some(Frame {
        header,
        payload: header.header_len..end,
    }))
}

/// XORs `data` with the masking key (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Appends one frame to `out`, masked with `mask` if given (clients mask, servers do not).
/// Control frames must be final and at most 125 bytes: that is the caller's contract.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    debug_assert!(!opcode.is_control() || (fin && payload.len() <= MAX_CONTROL_PAYLOAD));
    out.push(if fin { FIN } else { 0 } | opcode.bits());
    let m = if mask.is_some() { MASKED } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            let at = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[at..], key);
        }
        None => out.extend_from_slice(payload),
    }
}

/// A close frame's payload: the code, then as much of `reason` as fits in a control frame
/// (cut at a character boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// Appends a final close frame with `code` and `reason` to `out`.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    encode_frame(out, true, Opcode::Close, &close_payload(code, reason), mask);
}

/// The code and reason of an (unmasked) close payload; `None` for an empty one (no code).
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::CloseTruncated),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::is_valid(code) {
                return Err(FrameError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::CloseReasonNotUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Follows frame boundaries in one direction of a relayed WebSocket stream without keeping
/// its bytes, so that the proxy can end that direction between two frames (a close frame
/// may only go there). Feed it every byte in order.
#[derive(Debug, Clone, Default)]
pub struct FrameCursor {
    /// Bytes of a header not complete yet (at most 14).
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The stream is not WebSocket framing: no boundary is ever reported again.
    lost: bool,
}

impl FrameCursor {
    /// Whether the bytes fed so far end exactly between two frames.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.header_len == 0 && self.remaining == 0
    }

    /// Feeds `chunk`. With `stop_at_boundary`, stops at the first frame boundary (possibly
    /// the start) and returns how many bytes it consumed: forward those, then the stream may
    /// end. Without, consumes the whole chunk.
    pub fn advance(&mut self, chunk: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        loop {
            if self.lost {
                return chunk.len();
            }
            if self.remaining > 0 {
                let take = self.remaining.min((chunk.len() - i) as u64);
                i += take as usize;
                self.remaining -= take;
                if self.remaining > 0 {
                    return i;
                }
                continue;
            }
            if self.header_len == 0 && stop_at_boundary {
                return i;
            }
            if i == chunk.len() {
                return i;
            }
            // One header byte at a time: headers are 2 to 14 bytes, payloads are skipped whole.
            self.header[self.header_len] = chunk[i];
            self.header_len += 1;
            i += 1;
            match parse_header(&self.header[..self.header_len]) {
                Ok(Some(h)) => {
                    self.header_len = 0;
                    self.remaining = h.payload_len;
                }
                Ok(None) if self.header_len < self.header.len() => {}
                Ok(None) | Err(_) => {
                    self.lost = true;
                    return chunk.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
