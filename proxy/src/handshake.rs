//! Sans-IO validation of the first HTTP/1.1 request on a client connection, and of the
//! backend's `101 Switching Protocols` answer to a WebSocket upgrade.
//!
//! The terminator reads client bytes into a growing buffer and calls [`inspect`] after
//! every read. It acts on the first answer that is not [`Decision::NeedMore`]:
//!
//! * [`Decision::Upgrade`]: send its canonical `head` (not the client's bytes) to the
//!   backend, read its answer into a buffer and call [`check_upgrade_response`] until it
//!   returns `Ok(Some(_))`; only then relay in both directions. A client must not send
//!   frames before it has seen the 101 (RFC 6455 §4.1), so client bytes that arrive in a
//!   later read before that point are a protocol violation and the connection should be
//!   closed.
//! * [`Decision::JsonRpcPost`]: send its canonical `head`, then the body (the client's
//!   bytes `head_len..total_len`).
//! * [`Decision::Stats`]: answer the request locally.
//! * [`Decision::Reject`]: send [`Reject::response`] and close.
//!
//! While waiting the caller enforces its own deadline ([`timeout_response`], 408) and
//! never buffers more than `max_head_bytes + max_post_body` bytes: past
//! `max_head_bytes` without a complete head, [`inspect`] already answers 431.
//!
//! # Checks, in order (the first that fails decides)
//!
//! 1. Framing ([RFC 9112]): a request starting with an empty line is refused with 400
//!    (the SHOULD-ignore of §2.2 is not needed by any WebSocket or JSON-RPC client). The
//!    head is parsed with `httparse` (bare LF line endings are accepted as `httparse`
//!    accepts them, and the node gets CRLF: see "the canonical head" below). More than
//!    `max_head_bytes` without the end of the head, or more than [`MAX_HEADERS`] fields
//!    → 431. A well-formed request line whose version is
//!    `HTTP/d.d` but neither 1.0 nor 1.1 (e.g. `HTTP/2.0`, the HTTP/2 preface) → 505.
//!    Every other syntax error (bad tokens, NUL or other control bytes, obs-fold,
//!    whitespace before the colon, header line without a colon) → 400.
//! 2. `GET /stats` or `/stats.json` (any query, HTTP/1.0 or 1.1) → [`Decision::Stats`].
//! 3. `HTTP/1.0` → 400 (HTTP/1.1 is required, for `Host` and `Upgrade` semantics).
//! 4. Method (case-sensitive): `GET`, or `POST` when [`Limits::allow_json_rpc_post`];
//!    anything else → 405 with `Allow: GET, POST` (or `Allow: GET`).
//! 5. Request target: only origin-form (`/path[?query]`, visible ASCII, no `#`);
//!    absolute-form, authority-form and `*` → 400.
//! 6. The path (before `?`, compared byte for byte, not decoded) must be one of
//!    [`Limits::allowed_paths`] → else 404.
//! 7. Exactly one `Host` field whose value is a non-empty `host[:port]` → else 400.
//! 8. `GET` (WebSocket opening handshake, RFC 6455 §4.2.1):
//!    * `Transfer-Encoding`, or a `Content-Length` other than one `0` → 400;
//!    * `Upgrade` lists the token `websocket` (case-insensitive; several fields and comma
//!      lists allowed) → else 400. A plain GET without upgrade is a 400 rather than a
//!      426, as nothing but WebSocket is served on these paths;
//!    * `Connection` lists the token `upgrade` (e.g. `keep-alive, Upgrade`) → else 400;
//!    * `Sec-WebSocket-Version` is exactly `13` (one value over all fields) → else 426
//!      with `Sec-WebSocket-Version: 13` (RFC 6455 §4.4), also when missing;
//!    * exactly one `Sec-WebSocket-Key`, canonical padded standard base64 of 16 bytes →
//!      else 400;
//!    * no byte after the head (nothing may be pipelined before the 101) → else 400.
//! 9. `POST` (JSON-RPC over HTTP):
//!    * `Transfer-Encoding` present → 400 (no chunked bodies, no CL/TE smuggling);
//!    * an `Upgrade` field → 400 (no protocol switch on a relayed POST);
//!    * `Content-Length`: missing → 411; more than one field (even equal), empty, or
//!      not only digits (sign, list, spaces inside) → 400; larger than
//!      [`Limits::max_post_body`] → 413;
//!    * `Content-Type`: exactly one, media type `application/json` (case-insensitive,
//!      parameters allowed); missing or another type → 415; several fields → 400;
//!    * `Expect`: only `100-continue` is accepted → else 417;
//!    * then wait for the whole body ([`Decision::NeedMore`]); bytes beyond it → 400
//!      (one request per connection before relaying).
//!
//! Not checked here: `Origin` (the API is public), `Sec-WebSocket-Protocol` and
//! `Sec-WebSocket-Extensions` (negotiated end to end with the backend).
//!
//! # What the node receives: the canonical head
//!
//! The head sent to the node is re-serialised from what was parsed and accepted, never the
//! client's bytes, so the node cannot read a framing the checks above did not see:
//!
//! * request line `METHOD SP target SP HTTP/1.1 CRLF`, the target byte for byte;
//! * every field, in the order received, as `Name: value CRLF`: the name as the client
//!   spelled it (names are case-insensitive, RFC 9110 §5.1, so there is nothing to gain
//!   from re-casing them, and a node that logs them sees what the client sent), one space
//!   after the colon, the value without leading or trailing whitespace (an empty value
//!   is written `Name:` with nothing after the colon); `Content-Length` is written from
//!   the parsed number (`002` → `2`);
//! * then one empty line (`CRLF`).
//!
//! Every field is kept, hop-by-hop ones included: after the first request the connection
//! is relayed end to end, so `Connection`/`Upgrade` and the rest belong to the client and
//! the node. The proxy adds no field (no `X-Forwarded-For`); one sent by the client is
//! passed on as it is.
//!
//! The ambiguous framings, each decided one way (rows in [`conformance`]):
//!
//! | input | decision |
//! | --- | --- |
//! | bare LF line endings (all or some lines) | normalised: the node gets CRLF (RFC 9112 §2.2 lets a recipient accept them; re-serialising leaves no room for a node to split lines differently) |
//! | CR not followed by LF | 400 |
//! | obs-fold (a field line starting with SP/HTAB) | 400 (RFC 9112 §5.2 allows rejecting) |
//! | whitespace between field name and colon | 400 (RFC 9112 §5.1 requires it) |
//! | two `Host` fields (equal or not, any case) | 400 |
//! | `Transfer-Encoding` with `Content-Length` | 400 (any `Transfer-Encoding` is refused) |
//! | two `Content-Length` fields (equal or not), or a list | 400 |
//! | whitespace around a field value, none after the colon | normalised |
//! | leading zeros in `Content-Length` | normalised |
//!
//! Every rejection text is a fixed short string: input is never echoed.
//! The module does no I/O, allocates little, and never panics on any input.
//!
//! [RFC 9112]: https://www.rfc-editor.org/rfc/rfc9112
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// Default for [`Limits::max_head_bytes`].
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8192;
/// Default for [`Limits::max_post_body`] (64 KiB).
pub const DEFAULT_MAX_POST_BODY: usize = 64 * 1024;
/// Most header fields accepted in a request or in the backend's 101; more → 431 / error.
pub const MAX_HEADERS: usize = 64;
/// Largest head accepted from the backend in [`check_upgrade_response`].
pub const MAX_UPSTREAM_HEAD_BYTES: usize = 8192;
/// The path answered locally by [`Decision::Stats`] (for `GET`).
pub const STATS_PATH: &str = "/stats";
/// The JSON twin of [`STATS_PATH`].
pub const STATS_JSON_PATH: &str = "/stats.json";
/// The GUID that RFC 6455 §1.3 appends to the key before hashing.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a client's first request may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line, fields and the final empty line); longer → 431.
    pub max_head_bytes: usize,
    /// Paths accepted, compared exactly with the part of the target before `?`.
    pub allowed_paths: Vec<String>,
    /// Whether a JSON-RPC `POST` is relayed; if not, `POST` gets 405.
    pub allow_json_rpc_post: bool,
    /// Largest `Content-Length` of a JSON-RPC `POST`; larger → 413.
    pub max_post_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            allowed_paths: vec!["/".to_owned(), "/ws".to_owned()],
            allow_json_rpc_post: true,
            max_post_body: DEFAULT_MAX_POST_BODY,
        }
    }
}

/// What the proxy does with the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not enough bytes yet: feed more.
    NeedMore,
    /// A valid RFC 6455 upgrade: send `head` to the backend, then expect its 101 (see
    /// [`check_upgrade_response`]).
    Upgrade {
        /// Length of the client's request head, which is the whole buffer.
        head_len: usize,
        /// The canonical head to send to the node instead of the client's bytes (see the
        /// module docs).
        head: Vec<u8>,
        /// The `Sec-WebSocket-Key` value (without surrounding whitespace).
        key: String,
        /// The `Host` value (without surrounding whitespace).
        host: String,
    },
    /// A JSON-RPC over HTTP `POST`: send `head`, then the body (the buffer's bytes
    /// `head_len..total_len`) as received.
    JsonRpcPost {
        /// Length of the client's request head; the body follows it.
        head_len: usize,
        /// The canonical head to send to the node instead of the client's (module docs).
        head: Vec<u8>,
        /// `head_len` plus `Content-Length`: the whole buffer.
        total_len: usize,
        /// The `Host` value (without surrounding whitespace).
        host: String,
    },
    /// `GET /stats`: the proxy answers itself.
    Stats {
        /// Length of the request head.
        head_len: usize,
        /// `/stats.json` (or `/stats?format=json`): the JSON document, else the HTML page.
        json: bool,
    },
    /// Reject with this status; [`Reject::response`] gives the bytes to send before closing.
    Reject(Reject),
}

/// A refusal: an HTTP status, a fixed short text and any extra response fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status code.
    pub status: u16,
    /// Fixed short text sent as the body; never derived from the input.
    pub reason: &'static str,
    /// Extra response fields, e.g. `Allow` for 405 or `Sec-WebSocket-Version` for 426.
    pub extra_headers: Vec<(&'static str, String)>,
}

impl Reject {
    /// A rejection without extra fields.
    pub fn new(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            extra_headers: Vec::new(),
        }
    }

    /// The full response:
    /// `HTTP/1.1 {status} {Reason-Phrase}\r\nContent-Type: text/plain\r\nContent-Length: N\r\n`
    /// `Connection: close\r\n{extra}\r\n{reason}\n`.
    ///
    /// As the fields are public, the output is kept well-formed whatever they hold: a
    /// status outside 100..=599 is sent as 500, extra fields whose name is not a token or
    /// would change the framing (`Content-Length`, `Content-Type`, `Connection`,
    /// `Transfer-Encoding`) are dropped, and bytes other than visible ASCII, space and tab
    /// are removed from extra values.
    pub fn response(&self) -> Vec<u8> {
        let status = if (100..=599).contains(&self.status) {
            self.status
        } else {
            500
        };
        let body_len = self.reason.len().saturating_add(1);
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\nConnection: close\r\n",
            reason_phrase(status)
        );
        for (name, value) in &self.extra_headers {
            let reserved = [
                "content-length",
                "content-type",
                "connection",
                "transfer-encoding",
            ]
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r));
            if reserved || !is_token(name.as_bytes()) {
                continue;
            }
            out.push_str(name);
            out.push_str(": ");
            out.extend(
                value
                    .chars()
                    .filter(|&c| c == ' ' || c == '\t' || c.is_ascii_graphic()),
            );
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(self.reason);
        out.push('\n');
        out.into_bytes()
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.extra_headers.push((name, value.to_owned()));
        self
    }
}

/// Why the backend's answer to a forwarded upgrade is not an acceptable 101.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The response head is not valid HTTP/1.x syntax (bad status line, control bytes,
    /// obs-fold, malformed field).
    #[error("malformed upgrade response")]
    Malformed,
    /// The head did not end within [`MAX_UPSTREAM_HEAD_BYTES`], or it had more than
    /// [`MAX_HEADERS`] fields.
    #[error("upgrade response head too large")]
    TooLarge,
    /// The status was not 101 Switching Protocols (the code received is kept).
    #[error("upgrade response status {0} instead of 101")]
    Status(u16),
    /// A 101 in a version other than HTTP/1.1.
    #[error("upgrade response is not HTTP/1.1")]
    Version,
    /// No `Upgrade` field listing `websocket`.
    #[error("upgrade response lacks `Upgrade: websocket`")]
    MissingUpgrade,
    /// No `Connection` field listing `upgrade`.
    #[error("upgrade response lacks `Connection: upgrade`")]
    MissingConnection,
    /// No `Sec-WebSocket-Accept` field.
    #[error("upgrade response lacks `Sec-WebSocket-Accept`")]
    MissingAccept,
    /// `Sec-WebSocket-Accept` does not match the key, or appears more than once.
    #[error("upgrade response has a wrong `Sec-WebSocket-Accept`")]
    WrongAccept,
}

// Fixed rejection texts.
const R_MALFORMED: &str = "bad request";
const R_VERSION_11: &str = "http/1.1 required";
const R_TARGET: &str = "bad request target";
const R_HOST: &str = "missing or bad host";
const R_UPGRADE: &str = "websocket upgrade required";
const R_KEY: &str = "bad websocket key";
const R_PIPELINED: &str = "at most one request before the upgrade";
const R_ONE_REQUEST: &str = "at most one request per connection";
const R_FRAMING: &str = "bad message framing";
const R_CONTENT_TYPE_DUP: &str = "bad content-type";
const R_NOT_FOUND: &str = "not found";
const R_METHOD: &str = "method not allowed";
const R_LENGTH: &str = "length required";
const R_TOO_LARGE: &str = "content too large";
const R_MEDIA: &str = "unsupported media type";
const R_EXPECT: &str = "expectation failed";
const R_WS_VERSION: &str = "upgrade required";
const R_HEAD_TOO_LARGE: &str = "request header fields too large";
const R_HTTP_VERSION: &str = "http version not supported";
const R_TIMEOUT: &str = "request timeout";
const R_OVERLOADED: &str = "service unavailable";

/// Decide what to do with the first request on a connection, given all bytes received so
/// far. Call again with the grown buffer each time bytes arrive; act on the first answer
/// that is not [`Decision::NeedMore`].
///
/// For every strict prefix of an acceptable request the answer is `NeedMore`, and feeding
/// a request in pieces gives the same decision as feeding it whole, except that bytes
/// arriving after an acceptable request in the same buffer turn it into a 400.
pub fn inspect(buf: &[u8], limits: &Limits) -> Decision {
    match inspect_inner(buf, limits) {
        Ok(decision) => decision,
        Err(reject) => Decision::Reject(reject),
    }
}

fn inspect_inner(buf: &[u8], limits: &Limits) -> Result<Decision, Reject> {
    match buf.first() {
        None => return Ok(Decision::NeedMore),
        Some(b'\r' | b'\n') => return Err(Reject::new(400, R_MALFORMED)),
        Some(_) => {}
    }
    let over_limit = buf.len() > limits.max_head_bytes;
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);

    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if over_limit => {
            return Err(Reject::new(431, R_HEAD_TOO_LARGE))
        }
        Ok(httparse::Status::Partial) => return Ok(Decision::NeedMore),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::new(431, R_HEAD_TOO_LARGE)),
        Err(httparse::Error::Version) => return unsupported_version(window, over_limit),
        Err(_) => return Err(Reject::new(400, R_MALFORMED)),
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let version = req.version.unwrap_or_default();
    let headers: &[httparse::Header<'_>] = req.headers;
    let path = target.split('?').next().unwrap_or_default();

    if method == "GET" && (path == STATS_PATH || path == STATS_JSON_PATH) {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let json = path == STATS_JSON_PATH || query.split('&').any(|kv| kv == "format=json");
        return Ok(Decision::Stats { head_len, json });
    }
    if version != 1 {
        return Err(Reject::new(400, R_VERSION_11));
    }
    let is_get = match method {
        "GET" => true,
        "POST" if limits.allow_json_rpc_post => false,
        _ => {
            let allow = if limits.allow_json_rpc_post {
                "GET, POST"
            } else {
                "GET"
            };
            return Err(Reject::new(405, R_METHOD).with_header("Allow", allow));
        }
    };
    let origin_form =
        target.starts_with('/') && target.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    if !origin_form {
        return Err(Reject::new(400, R_TARGET));
    }
    if !limits.allowed_paths.iter().any(|p| p == path) {
        return Err(Reject::new(404, R_NOT_FOUND));
    }
    let host = match single(headers, "host") {
        Ok(Some(h)) if is_valid_host(h) => String::from_utf8_lossy(h).into_owned(),
        _ => return Err(Reject::new(400, R_HOST)),
    };

    let request = Request {
        buf,
        head_len,
        line: RequestLine { method, target },
        headers,
        host,
    };
    if is_get {
        check_websocket(request)
    } else {
        check_post(request, limits)
    }
}

/// A request past the checks every method shares, for the method's own checks.
struct Request<'a> {
    /// All bytes read so far: the head, then whatever followed it.
    buf: &'a [u8],
    head_len: usize,
    line: RequestLine<'a>,
    headers: &'a [httparse::Header<'a>],
    /// The checked `Host` value.
    host: String,
}

/// The accepted request line, kept to write the canonical head.
#[derive(Clone, Copy)]
struct RequestLine<'a> {
    method: &'a str,
    target: &'a str,
}

/// The head the node receives (module docs, "the canonical head"). Called only on a
/// request that passed every check, so the version is HTTP/1.1 and a `Content-Length`
/// is only digits.
fn canonical_head(line: RequestLine<'_>, headers: &[httparse::Header<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(line.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(line.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers {
        out.extend_from_slice(h.name.as_bytes());
        out.push(b':');
        let mut value = trim_ows(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            // Digits only (checked); "0" stays, "002" becomes "2".
            while let [b'0', rest @ ..] = value {
                if rest.is_empty() {
                    break;
                }
                value = rest;
            }
        }
        if !value.is_empty() {
            out.push(b' ');
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `httparse` refused the version of a request line whose method and target were fine:
/// 505 for a well-formed `HTTP/d.d` (not 1.0 or 1.1), 400 for anything else, `NeedMore`
/// (or 431 past the limit) while the line is still incomplete.
fn unsupported_version(window: &[u8], over_limit: bool) -> Result<Decision, Reject> {
    let mut parts = window.splitn(3, |&b| b == b' ');
    let (Some(_method), Some(_target), Some(rest)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::new(400, R_MALFORMED));
    };
    for (i, &b) in rest.iter().enumerate() {
        let ok = match i {
            0 => b == b'H',
            1 | 2 => b == b'T',
            3 => b == b'P',
            4 => b == b'/',
            5 | 7 => b.is_ascii_digit(),
            6 => b == b'.',
            8 if b == b'\n' => return Err(Reject::new(505, R_HTTP_VERSION)),
            8 => b == b'\r',
            9 if b == b'\n' => return Err(Reject::new(505, R_HTTP_VERSION)),
            _ => false,
        };
        if !ok {
            return Err(Reject::new(400, R_MALFORMED));
        }
    }
    if over_limit {
        Err(Reject::new(431, R_HEAD_TOO_LARGE))
    } else {
        Ok(Decision::NeedMore)
    }
}

fn check_websocket(req: Request<'_>) -> Result<Decision, Reject> {
    if count(req.headers, "transfer-encoding") > 0 {
        return Err(Reject::new(400, R_FRAMING));
    }
    match single(req.headers, "content-length") {
        Ok(None) => {}
        Ok(Some(v)) if v == b"0" => {}
        _ => return Err(Reject::new(400, R_FRAMING)),
    }
    if !list_contains(req.headers, "upgrade", "websocket") {
        return Err(Reject::new(400, R_UPGRADE));
    }
    if !list_contains(req.headers, "connection", "upgrade") {
        return Err(Reject::new(400, R_UPGRADE));
    }
    let mut versions = list_items(req.headers, "sec-websocket-version");
    if versions.next() != Some(b"13".as_slice()) || versions.next().is_some() {
        return Err(Reject::new(426, R_WS_VERSION).with_header("Sec-WebSocket-Version", "13"));
    }
    let key = match single(req.headers, "sec-websocket-key") {
        Ok(Some(k)) if is_valid_key(k) => String::from_utf8_lossy(k).into_owned(),
        _ => return Err(Reject::new(400, R_KEY)),
    };
    if req.buf.len() > req.head_len {
        return Err(Reject::new(400, R_PIPELINED));
    }
    Ok(Decision::Upgrade {
        head_len: req.head_len,
        head: canonical_head(req.line, req.headers),
        key,
        host: req.host,
    })
}

fn check_post(req: Request<'_>, limits: &Limits) -> Result<Decision, Reject> {
    if count(req.headers, "transfer-encoding") > 0 || count(req.headers, "upgrade") > 0 {
        return Err(Reject::new(400, R_FRAMING));
    }
    let length = match single(req.headers, "content-length") {
        Ok(Some(v)) => v,
        Ok(None) => return Err(Reject::new(411, R_LENGTH)),
        Err(()) => return Err(Reject::new(400, R_FRAMING)),
    };
    if length.is_empty() || !length.iter().all(u8::is_ascii_digit) {
        return Err(Reject::new(400, R_FRAMING));
    }
    let body_len = match parse_decimal(length) {
        Some(n) if n <= limits.max_post_body => n,
        _ => return Err(Reject::new(413, R_TOO_LARGE)),
    };
    match single(req.headers, "content-type") {
        Ok(Some(v)) if is_json_media_type(v) => {}
        Ok(_) => return Err(Reject::new(415, R_MEDIA)),
        Err(()) => return Err(Reject::new(400, R_CONTENT_TYPE_DUP)),
    }
    if values(req.headers, "expect").any(|v| !v.eq_ignore_ascii_case(b"100-continue")) {
        return Err(Reject::new(417, R_EXPECT));
    }
    let Some(total_len) = req.head_len.checked_add(body_len) else {
        return Err(Reject::new(413, R_TOO_LARGE));
    };
    match req.buf.len().cmp(&total_len) {
        std::cmp::Ordering::Less => Ok(Decision::NeedMore),
        std::cmp::Ordering::Greater => Err(Reject::new(400, R_ONE_REQUEST)),
        std::cmp::Ordering::Equal => Ok(Decision::JsonRpcPost {
            head_len: req.head_len,
            head: canonical_head(req.line, req.headers),
            total_len,
            host: req.host,
        }),
    }
}

/// `base64(SHA-1(key + GUID))`: the `Sec-WebSocket-Accept` value for `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Validate the backend's answer to a forwarded upgrade whose `Sec-WebSocket-Key` was
/// `key`: `HTTP/1.1 101`, `Upgrade: websocket`, `Connection: upgrade` and the right
/// `Sec-WebSocket-Accept` (RFC 6455 §4.1, client steps 1–4; extensions and subprotocols
/// are left to the client, which sees the same response).
///
/// `Ok(None)`: the head is not complete yet, feed more. `Ok(Some(head_len))`: relay; bytes
/// after `head_len` are already WebSocket frames.
pub fn check_upgrade_response(buf: &[u8], key: &str) -> Result<Option<usize>, UpstreamError> {
    let window = buf.get(..MAX_UPSTREAM_HEAD_BYTES).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_UPSTREAM_HEAD_BYTES => {
            return Err(UpstreamError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(UpstreamError::TooLarge),
        Err(_) => return Err(UpstreamError::Malformed),
    };
    let code = resp.code.unwrap_or_default();
    if code != 101 {
        return Err(UpstreamError::Status(code));
    }
    if resp.version != Some(1) {
        return Err(UpstreamError::Version);
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    if !list_contains(headers, "upgrade", "websocket") {
        return Err(UpstreamError::MissingUpgrade);
    }
    if !list_contains(headers, "connection", "upgrade") {
        return Err(UpstreamError::MissingConnection);
    }
    match single(headers, "sec-websocket-accept") {
        Ok(None) => Err(UpstreamError::MissingAccept),
        Ok(Some(v)) if v == accept_key(key).as_bytes() => Ok(Some(head_len)),
        _ => Err(UpstreamError::WrongAccept),
    }
}

/// `408 Request Timeout`, for the caller's handshake deadline (slow or silent clients).
pub fn timeout_response() -> Vec<u8> {
    Reject::new(408, R_TIMEOUT).response()
}

/// `503 Service Unavailable`, for connection limits.
pub fn overloaded_response() -> Vec<u8> {
    Reject::new(503, R_OVERLOADED).response()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// RFC 9110 `tchar`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Trim optional whitespace (SP, HTAB) on both sides.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The values of every field called `name` (ASCII case-insensitive), trimmed.
fn values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| trim_ows(h.value))
}

fn count(headers: &[httparse::Header<'_>], name: &str) -> usize {
    values(headers, name).count()
}

/// `Ok(None)` when absent, `Ok(Some(value))` when present once, `Err` when repeated.
fn single<'a>(headers: &'a [httparse::Header<'a>], name: &'a str) -> Result<Option<&'a [u8]>, ()> {
    let mut it = values(headers, name);
    match (it.next(), it.next()) {
        (first, None) => Ok(first),
        (Some(_), Some(_)) | (None, Some(_)) => Err(()),
    }
}

/// The non-empty elements of the comma-separated lists in every field called `name`.
fn list_items<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    values(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

fn list_contains(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    list_items(headers, name).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// `uri-host [ ":" port ]` over the characters of reg-name, IPv4 and IP-literal.
fn is_valid_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// Canonical padded standard base64 that decodes to exactly 16 bytes (RFC 6455 §4.1).
fn is_valid_key(v: &[u8]) -> bool {
    v.len() == 24 && BASE64.decode(v).is_ok_and(|k| k.len() == 16)
}

fn is_json_media_type(v: &[u8]) -> bool {
    let media_type = v.split(|&b| b == b';').next().unwrap_or_default();
    trim_ows(media_type).eq_ignore_ascii_case(b"application/json")
}

/// Decimal digits to `usize`; `None` on overflow.
fn parse_decimal(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |acc, &d| {
        acc.checked_mul(10)?
            .checked_add(usize::from(d.checked_sub(b'0')?))
    })
}

#[doc(hidden)]
pub mod conformance;

#[cfg(test)]
mod tests {
    use super::conformance::*;
    use super::*;
    // The test kit's seeded generator: a failure replays from its seed.
    use proxy_tests::rng::Rng;

    /// Feeds `buf` one byte at a time; returns the first decision that is not NeedMore
    /// and the length at which it came.
    fn feed_bytewise(buf: &[u8], limits: &Limits) -> (Decision, usize) {
        for end in 1..=buf.len() {
            let d = inspect(&buf[..end], limits);
            if d != Decision::NeedMore {
                return (d, end);
            }
        }
        (Decision::NeedMore, buf.len())
    }

    #[test]
    fn hostile_table() {
        let cases = hostile_cases();
        assert!(cases.len() >= 30);
        for c in &cases {
            let d = inspect(&c.req, &c.limits);
            let Decision::Reject(r) = &d else {
                panic!("{}: expected {}, got {d:?}", c.name, c.status);
            };
            assert_eq!(r.status, c.status, "{}: {r:?}", c.name);
            assert_eq!(r.extra_headers, c.extra, "{}", c.name);
            // Same decision when the bytes trickle in.
            if !c.trailing {
                let (first, _) = feed_bytewise(&c.req, &c.limits);
                assert_eq!(first, d, "{}: byte-by-byte", c.name);
            }
            // The response is well-formed and carries the fields.
            let bytes = r.response();
            let text = String::from_utf8(bytes.clone()).unwrap();
            assert!(
                text.starts_with(&format!("HTTP/1.1 {} ", c.status)),
                "{}",
                c.name
            );
            for (name, value) in &c.extra {
                assert!(
                    text.contains(&format!("\r\n{name}: {value}\r\n")),
                    "{}",
                    c.name
                );
            }
            assert_well_formed(&bytes, c.status);
        }
    }

    #[test]
    fn table_unique_names() {
        let cases = hostile_cases();
        let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), cases.len());
    }

    /// What the node receives for an accepted request: the canonical head, then the body.
    fn forwarded(req: &[u8], d: &Decision) -> Option<Vec<u8>> {
        match d {
            Decision::Upgrade { head, .. } => Some(head.clone()),
            Decision::JsonRpcPost {
                head,
                head_len,
                total_len,
                ..
            } => Some(cat(&[head, &req[*head_len..*total_len]])),
            _ => None,
        }
    }

    /// The canonical form, checked line by line rather than against a second serialiser:
    /// CRLF everywhere, `Name: value` with one space and no whitespace around the value.
    fn assert_canonical(head: &[u8]) {
        // obs-text values are passed on as bytes; check the ASCII structure only.
        let ascii: Vec<u8> = head
            .iter()
            .map(|&b| if b.is_ascii() { b } else { b'?' })
            .collect();
        let text = std::str::from_utf8(&ascii).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text:?}");
        let body = &text[..text.len() - 2];
        assert!(!body.replace("\r\n", "").contains(['\r', '\n']), "{text:?}");
        let mut lines = body.split_terminator("\r\n");
        let line = lines.next().unwrap();
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 3, "{line:?}");
        assert_eq!(parts[2], "HTTP/1.1");
        for field in lines {
            let (name, value) = field.split_once(':').unwrap();
            assert!(is_token(name.as_bytes()), "{field:?}");
            if !value.is_empty() {
                let value = value
                    .strip_prefix(' ')
                    .unwrap_or_else(|| panic!("{field:?}"));
                assert_eq!(value, value.trim_matches([' ', '\t']), "{field:?}");
                assert!(!value.is_empty(), "{field:?}");
            }
        }
    }

    #[test]
    fn normalised_table() {
        let cases = normalised_cases();
        assert!(cases.len() >= 8);
        for c in &cases {
            let d = inspect(&c.req, &Limits::default());
            let got = forwarded(&c.req, &d).unwrap_or_else(|| panic!("{}: {d:?}", c.name));
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&c.forwarded),
                "{}",
                c.name
            );
            let (Decision::Upgrade { head, .. } | Decision::JsonRpcPost { head, .. }) = &d else {
                unreachable!()
            };
            assert_canonical(head);
            // Canonical is a fixed point: the node's bytes, inspected again, stay as they are.
            let again = inspect(&got, &Limits::default());
            assert_eq!(forwarded(&got, &again), Some(got.clone()), "{}", c.name);
            // Same decision when the bytes trickle in.
            assert_eq!(feed_bytewise(&c.req, &Limits::default()).0, d, "{}", c.name);
        }
    }

    /// Parses a response produced here and checks status, framing and body.
    fn assert_well_formed(bytes: &[u8], status: u16) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = resp.parse(bytes).unwrap() else {
            panic!("incomplete response");
        };
        assert_eq!(resp.code, Some(status));
        assert_eq!(resp.version, Some(1));
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name == "Content-Length")
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .unwrap();
        assert_eq!(bytes.len() - n, len);
        assert!(bytes.ends_with(b"\n"));
        assert!(resp
            .headers
            .iter()
            .any(|h| h.name == "Connection" && h.value == b"close"));
    }

    #[test]
    fn browser_upgrade() {
        assert_eq!(BROWSER.len(), 495);
        assert_eq!(
            inspect(BROWSER, &Limits::default()),
            Decision::Upgrade {
                head_len: 495,
                head: BROWSER.to_vec(),
                key: "x3JJHMbDL1EzLkh9GBhXDw==".to_owned(),
                host: "api.bts.example".to_owned(),
            }
        );
    }

    #[test]
    fn minimal_upgrade_on_root_and_ws() {
        for line in ["GET / HTTP/1.1", "GET /ws HTTP/1.1"] {
            let req = ws_line(line, "", &[]);
            assert_eq!(
                inspect(&req, &Limits::default()),
                Decision::Upgrade {
                    head_len: req.len(),
                    head: req.clone(),
                    key: KEY.to_owned(),
                    host: "node.example:8090".to_owned(),
                }
            );
        }
    }

    #[test]
    fn case_insensitive_names_and_values() {
        let req = request(
            "GET /ws HTTP/1.1",
            &[
                "hOST:   node.example  ",
                "UPGRADE: WebSocket",
                "connection: keep-alive, UPGRADE",
                "sec-websocket-version: 13",
                "SEC-WEBSOCKET-KEY: \tdGhlIHNhbXBsZSBub25jZQ==\t",
            ],
        );
        assert_eq!(
            inspect(&req, &Limits::default()),
            Decision::Upgrade {
                head_len: req.len(),
                // Names keep their case; values lose the whitespace around them.
                head: request(
                    "GET /ws HTTP/1.1",
                    &[
                        "hOST: node.example",
                        "UPGRADE: WebSocket",
                        "connection: keep-alive, UPGRADE",
                        "sec-websocket-version: 13",
                        "SEC-WEBSOCKET-KEY: dGhlIHNhbXBsZSBub25jZQ==",
                    ]
                ),
                key: KEY.to_owned(),
                host: "node.example".to_owned(),
            }
        );
    }

    #[test]
    fn token_lists_across_fields() {
        let req = request(
            "GET /ws HTTP/1.1",
            &[
                "Host: node.example",
                "Upgrade: foo/1, ,websocket",
                "Connection: keep-alive",
                "Connection: ,Upgrade",
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ],
        );
        assert!(matches!(
            inspect(&req, &Limits::default()),
            Decision::Upgrade { .. }
        ));
    }

    #[test]
    fn accepted_variants() {
        let ok = |req: Vec<u8>| {
            let d = inspect(&req, &Limits::default());
            assert!(
                matches!(d, Decision::Upgrade { head_len, .. } if head_len == req.len()),
                "{d:?}"
            );
        };
        ok(ws_line("GET /ws?api_key=abc&x=%20 HTTP/1.1", "", &[])); // query on an allowed path
        ok(ws_line("GET /?a HTTP/1.1", "", &[]));
        ok(ws("", &["Content-Length: 0"]));
        ok(ws("host", &["Host: [2001:db8::1]:8090"]));
        ok(ws("host", &["Host: 192.0.2.7"]));
        ok(ws("", &["X-Latin1: caf\u{e9}"])); // obs-text in an unrelated field
        ok(ws("", &["Sec-WebSocket-Protocol: chat", "Origin: null"]));
        // Bare LF line endings, as httparse accepts them (normalised: `normalised_table`).
        ok(
            b"GET /ws HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: upgrade\n\
              Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"
                .to_vec(),
        );
    }

    #[test]
    fn custom_paths() {
        let limits = Limits {
            allowed_paths: vec!["/bts".to_owned()],
            ..Limits::default()
        };
        assert!(matches!(
            inspect(&ws_line("GET /bts?x HTTP/1.1", "", &[]), &limits),
            Decision::Upgrade { .. }
        ));
        let d = inspect(&ws(" ", &[]), &limits);
        assert!(
            matches!(d, Decision::Reject(Reject { status: 404, .. })),
            "{d:?}"
        );
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        for req in [BROWSER.to_vec(), ws("", &[]), post("", &[], RPC_BODY)] {
            let whole = inspect(&req, &Limits::default());
            assert_ne!(whole, Decision::NeedMore);
            assert_eq!(feed_bytewise(&req, &Limits::default()), (whole, req.len()));
        }
    }

    #[test]
    fn every_prefix_of_a_valid_request_needs_more() {
        let valid = [
            BROWSER.to_vec(),
            ws("", &[]),
            ws_line("GET /ws?q=1 HTTP/1.1", "", &["Content-Length: 0"]),
            post("", &[], RPC_BODY),
            post("", &["Expect: 100-continue"], "{}"),
            post("", &[], ""),
            ws_line("GET /stats HTTP/1.1", "", &[]),
            b"GET /ws HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: upgrade\n\
              Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"
                .to_vec(),
        ];
        for limits in [
            Limits::default(),
            Limits {
                max_head_bytes: BROWSER.len(),
                ..Limits::default()
            },
        ] {
            for req in &valid {
                assert_ne!(inspect(req, &limits), Decision::NeedMore);
                for end in 0..req.len() {
                    assert_eq!(
                        inspect(&req[..end], &limits),
                        Decision::NeedMore,
                        "prefix {end}"
                    );
                }
            }
        }
    }

    #[test]
    fn head_limit_boundary() {
        let exact = Limits {
            max_head_bytes: BROWSER.len(),
            ..Limits::default()
        };
        assert!(matches!(inspect(BROWSER, &exact), Decision::Upgrade { .. }));
        let short = Limits {
            max_head_bytes: BROWSER.len() - 1,
            ..Limits::default()
        };
        let d = inspect(BROWSER, &short);
        assert!(
            matches!(d, Decision::Reject(Reject { status: 431, .. })),
            "{d:?}"
        );
        assert_eq!(
            inspect(&BROWSER[..BROWSER.len() - 1], &short),
            Decision::NeedMore
        );
        let zero = Limits {
            max_head_bytes: 0,
            ..Limits::default()
        };
        assert!(matches!(
            inspect(b"G", &zero),
            Decision::Reject(Reject { status: 431, .. })
        ));
        assert_eq!(inspect(b"", &zero), Decision::NeedMore);
    }

    #[test]
    fn stats() {
        let limits = Limits::default();
        for (req, json) in [
            (b"GET /stats HTTP/1.1\r\n\r\n".to_vec(), false),
            (
                b"GET /stats?format=json HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                true,
            ),
            (
                b"GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                true,
            ),
            (b"GET /stats?x=format=json HTTP/1.1\r\n\r\n".to_vec(), false),
            (b"GET /stats HTTP/1.0\r\n\r\n".to_vec(), false),
            (b"GET /stats HTTP/1.1\nAccept: */*\n\n".to_vec(), false),
        ] {
            assert_eq!(
                inspect(&req, &limits),
                Decision::Stats {
                    head_len: req.len(),
                    json
                }
            );
        }
        let no_post = Limits {
            allow_json_rpc_post: false,
            allowed_paths: Vec::new(),
            ..Limits::default()
        };
        let req = b"GET /stats HTTP/1.1\r\n\r\n";
        assert_eq!(
            inspect(req, &no_post),
            Decision::Stats {
                head_len: req.len(),
                json: false
            }
        );
        // Only the exact path: neighbours go through the normal checks.
        for req in [
            b"GET /stats/ HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
            b"POST /stats HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
        ] {
            let d = inspect(req, &limits);
            assert!(matches!(d, Decision::Reject(Reject { status: 404, .. })), "{d:?}");
        }
    }

    #[test]
    fn json_rpc_post_split_across_feeds() {
        let limits = Limits::default();
        let req = post("", &[], RPC_BODY);
        let head_len = req.len() - RPC_BODY.len();
        let expected = Decision::JsonRpcPost {
            head_len,
            head: req[..head_len].to_vec(),
            total_len: req.len(),
            host: "node.example".to_owned(),
        };
        assert_eq!(inspect(&req[..head_len - 2], &limits), Decision::NeedMore);
        assert_eq!(inspect(&req[..head_len], &limits), Decision::NeedMore);
        assert_eq!(inspect(&req[..head_len + 10], &limits), Decision::NeedMore);
        assert_eq!(inspect(&req[..req.len() - 1], &limits), Decision::NeedMore);
        assert_eq!(inspect(&req, &limits), expected);
    }

    #[test]
    fn json_rpc_post_variants() {
        let limits = Limits::default();
        let ok = |req: Vec<u8>, body_len: usize| match inspect(&req, &limits) {
            Decision::JsonRpcPost {
                head_len,
                total_len,
                host,
                ..
            } => {
                assert_eq!(total_len, req.len());
                assert_eq!(head_len + body_len, total_len);
                assert_eq!(host, "node.example");
            }
            d => panic!("{d:?}"),
        };
        ok(
            post(
                "content-type",
                &["Content-Type: Application/JSON ; charset=UTF-8"],
                "{}",
            ),
            2,
        );
        ok(post("", &["Expect: 100-Continue"], "{}"), 2);
        ok(post("", &[], ""), 0);
        ok(post("content-length", &["Content-Length: 002"], "{}"), 2);
        let body = "x".repeat(DEFAULT_MAX_POST_BODY);
        ok(post("", &[], &body), body.len());
        let mut req = post("", &[], "{}");
        req.splice(5..6, *b"/ws");
        ok(req, 2);
    }

    #[test]
    fn reject_response_bytes() {
        let r = Reject::new(405, "method not allowed").with_header("Allow", "GET, POST");
        assert_eq!(
            r.response(),
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\
              Connection: close\r\nAllow: GET, POST\r\n\r\nmethod not allowed\n"
        );
        let Decision::Reject(r) = inspect(&ws("sec-websocket-version", &[]), &Limits::default())
        else {
            panic!()
        };
        assert_eq!(
            r.response(),
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\
              Connection: close\r\nSec-WebSocket-Version: 13\r\n\r\nupgrade required\n"
        );
        assert_eq!(
            timeout_response(),
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\
              Connection: close\r\n\r\nrequest timeout\n"
        );
        assert_eq!(
            overloaded_response(),
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\
              Connection: close\r\n\r\nservice unavailable\n"
        );
    }

    #[test]
    fn reject_response_stays_well_formed() {
        let r = Reject {
            status: 1234,
            reason: "x",
            extra_headers: vec![
                ("X-Ok", "a\r\nSet-Cookie: evil\0\u{e9}".to_owned()),
                ("Bad Name", "v".to_owned()),
                ("", "v".to_owned()),
                ("content-length", "0".to_owned()),
                ("Connection", "keep-alive".to_owned()),
            ],
        };
        let bytes = r.response();
        assert_eq!(
            bytes,
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
              Connection: close\r\nX-Ok: aSet-Cookie: evil\r\n\r\nx\n"
        );
        assert_well_formed(&bytes, 500);
    }

    #[test]
    fn reject_texts_never_echo_input() {
        for c in hostile_cases() {
            if let Decision::Reject(r) = inspect(&c.req, &c.limits) {
                assert!(
                    r.reason.len() < 48 && !r.reason.contains("backend"),
                    "{}",
                    c.name
                );
                assert!(r.reason.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            }
        }
    }

    #[test]
    fn accept_key_rfc6455_example() {
        assert_eq!(accept_key(KEY), ACCEPT);
        assert_eq!(
            accept_key("x3JJHMbDL1EzLkh9GBhXDw=="),
            "HSmrc0sMlYUkAGmm5OPpG2HaGWk="
        );
    }

    fn response_101(fields: &[&str]) -> Vec<u8> {
        request("HTTP/1.1 101 Switching Protocols", fields)
    }

    const GOOD_101: [&str; 3] = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    ];

    #[test]
    fn upgrade_response_accepted() {
        let resp = response_101(&GOOD_101);
        assert_eq!(check_upgrade_response(&resp, KEY), Ok(Some(resp.len())));
        // A first frame may follow in the same read.
        let with_frame = cat(&[&resp, b"\x81\x05hello"]);
        assert_eq!(
            check_upgrade_response(&with_frame, KEY),
            Ok(Some(resp.len()))
        );
        // Incremental.
        for end in 0..resp.len() {
            assert_eq!(check_upgrade_response(&resp[..end], KEY), Ok(None), "{end}");
        }
        // Case-insensitive, lists, extensions and an empty reason phrase.
        let resp = request(
            "HTTP/1.1 101 ",
            &[
                "upgrade: WebSocket",
                "CONNECTION: keep-alive, upgrade",
                "sec-websocket-accept:  s3pPLMBiTxaQ9kYGzzhZRbK+xOo= ",
                "Sec-WebSocket-Extensions: permessage-deflate",
            ],
        );
        assert_eq!(check_upgrade_response(&resp, KEY), Ok(Some(resp.len())));
    }

    #[test]
    fn upgrade_response_rejected() {
        let without = |name: &str| -> Vec<&str> {
            GOOD_101
                .iter()
                .copied()
                .filter(|f| !field_name(f).eq_ignore_ascii_case(name))
                .collect()
        };
        let cases: Vec<(&str, Vec<u8>, UpstreamError)> = vec![
            (
                "200",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
                UpstreamError::Status(200),
            ),
            (
                "502",
                b"HTTP/1.1 502 Bad Gateway\r\n\r\n".to_vec(),
                UpstreamError::Status(502),
            ),
            (
                "HTTP/1.0 101",
                request("HTTP/1.0 101 Switching Protocols", &GOOD_101),
                UpstreamError::Version,
            ),
            (
                "wrong accept",
                response_101(&[
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    "Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=",
                ]),
                UpstreamError::WrongAccept,
            ),
            (
                "two accepts",
                response_101(
                    &[
                        &GOOD_101[..],
                        &["Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="],
                    ]
                    .concat(),
                ),
                UpstreamError::WrongAccept,
            ),
            (
                "missing accept",
                response_101(&without("sec-websocket-accept")),
                UpstreamError::MissingAccept,
            ),
            (
                "missing Upgrade",
                response_101(&without("upgrade")),
                UpstreamError::MissingUpgrade,
            ),
            (
                "Upgrade: h2c",
                response_101(&[&without("upgrade")[..], &["Upgrade: h2c"]].concat()),
                UpstreamError::MissingUpgrade,
            ),
            (
                "missing Connection",
                response_101(&without("connection")),
                UpstreamError::MissingConnection,
            ),
            (
                "oversize",
                response_101(
                    &[
                        &GOOD_101[..],
                        &[format!("X-Pad: {}", "a".repeat(9000)).as_str()],
                    ]
                    .concat(),
                ),
                UpstreamError::TooLarge,
            ),
            (
                "oversize without end",
                [
                    b"HTTP/1.1 101 Switching Protocols\r\nX: ".as_slice(),
                    &[b'a'; 9000],
                ]
                .concat(),
                UpstreamError::TooLarge,
            ),
            (
                "too many fields",
                response_101(
                    &(0..80)
                        .map(|i| format!("X-{i}: v"))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                ),
                UpstreamError::TooLarge,
            ),
            (
                "garbage",
                b"\x16\x03\x03\x00\x02\x02\x28".to_vec(),
                UpstreamError::Malformed,
            ),
            (
                "obs-fold",
                response_101(&[&GOOD_101[..], &["X-A: b", " c"]].concat()),
                UpstreamError::Malformed,
            ),
            (
                "two-digit status",
                b"HTTP/1.1 10 x\r\n\r\n".to_vec(),
                UpstreamError::Malformed,
            ),
        ];
        for (name, resp, err) in cases {
            assert_eq!(check_upgrade_response(&resp, KEY), Err(err), "{name}");
        }
        // The error texts are documented and stable enough to log.
        assert_eq!(
            UpstreamError::Status(200).to_string(),
            "upgrade response status 200 instead of 101"
        );
    }

    fn mutate(rng: &mut Rng, mut x: Vec<u8>) -> Vec<u8> {
        const INTERESTING: &[u8] = b"\r\n :,;\t\0\x7f\xff/?#*0123456789Hh.=";
        for _ in 0..=rng.below(4) {
            let at = rng.below(x.len() + 1);
            let byte = if rng.below(2) == 0 {
                INTERESTING[rng.below(INTERESTING.len())]
            } else {
                rng.next_u64() as u8
            };
            match rng.below(6) {
                0 if at < x.len() => x[at] = byte,
                1 => x.insert(at, byte),
                2 if at < x.len() => {
                    x.remove(at);
                }
                3 => x.truncate(at),
                4 => {
                    let len = rng.below(40).min(x.len() - at);
                    let piece = x[at..at + len].to_vec();
                    x.splice(at..at, piece);
                }
                _ => {}
            }
        }
        x
    }

    /// No panics on any input, every rejection is well-formed, and feeding in pieces never
    /// contradicts feeding whole.
    #[test]
    fn fuzz_inspect() {
        let seeds = [
            BROWSER.to_vec(),
            ws("", &[]),
            post("", &[], RPC_BODY),
            ws_line("GET /stats HTTP/1.1", "", &[]),
            ws_line("GET /ws HTTP/2.0", "", &[]),
            Vec::new(),
        ];
        let limits = [
            Limits::default(),
            Limits {
                max_head_bytes: 64,
                max_post_body: 4,
                allow_json_rpc_post: false,
                allowed_paths: vec![String::new(), "/stats".to_owned()],
            },
            Limits {
                max_head_bytes: 0,
                max_post_body: 0,
                ..Limits::default()
            },
        ];
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for i in 0..6000 {
            let x = if i % 10 == 9 {
                (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect()
            } else {
                {
                    let seed = seeds[rng.below(seeds.len())].clone();
                    mutate(&mut rng, seed)
                }
            };
            let l = &limits[rng.below(limits.len())];
            let whole = inspect(&x, l);
            if let Decision::Reject(r) = &whole {
                assert_well_formed(&r.response(), r.status);
            }
            if let Some(sent) = forwarded(&x, &whole) {
                let (Decision::Upgrade { head, .. } | Decision::JsonRpcPost { head, .. }) = &whole
                else {
                    unreachable!()
                };
                assert_canonical(head);
                // The canonical head may be a little longer than the client's ("a:b" gets a
                // space), so the fixed point is checked without the head limit.
                let unbounded = Limits {
                    max_head_bytes: usize::MAX,
                    ..l.clone()
                };
                assert_eq!(
                    forwarded(&sent, &inspect(&sent, &unbounded)),
                    Some(sent.clone())
                );
            }
            for _ in 0..6 {
                let end = rng.below(x.len() + 1);
                let part = inspect(&x[..end], l);
                let after_trailing = matches!(
                    (&part, &whole),
                    (
                        Decision::Upgrade { .. } | Decision::JsonRpcPost { .. },
                        Decision::Reject(Reject {
                            status: 400,
                            reason: R_PIPELINED | R_ONE_REQUEST,
                            ..
                        })
                    )
                );
                assert!(
                    part == Decision::NeedMore || part == whole || after_trailing,
                    "{:?}: {part:?} at {end} vs {whole:?}",
                    String::from_utf8_lossy(&x)
                );
            }
            let _ = check_upgrade_response(&x, KEY);
        }
    }

    #[test]
    fn fuzz_upgrade_response() {
        let seed = cat(&[&response_101(&GOOD_101), b"\x81\x00"]);
        let mut rng = Rng::new(42);
        for _ in 0..6000 {
            let x = mutate(&mut rng, seed.clone());
            let whole = check_upgrade_response(&x, KEY);
            let end = rng.below(x.len() + 1);
            let part = check_upgrade_response(&x[..end], KEY);
            assert!(part == Ok(None) || part == whole || (part.is_ok() && whole.is_ok()));
            if let Ok(Some(n)) = whole {
                assert!(n <= x.len());
            }
        }
    }
}
