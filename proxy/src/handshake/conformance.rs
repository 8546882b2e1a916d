//! The conformance table for the first request: hostile and malformed requests with the
//! exact status each must get, plus the request builders it uses. Public (hidden) so the
//! terminator's integration tests can send every case through real sockets in both io modes.
#![allow(missing_docs)]
// Test data built from known-good literals: the parser's no-panic lints do not apply here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use super::*;

/// The sample nonce of RFC 6455 §1.3.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Its accept value, from the same section.
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The fields of a minimal valid upgrade.
pub const WS_FIELDS: [&str; 5] = [
    "Host: node.example:8090",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
];

/// What Chromium sends for `new WebSocket("wss://api.bts.example/ws")`.
pub const BROWSER: &[u8] = b"GET /ws HTTP/1.1\r\n\
    Host: api.bts.example\r\n\
    Connection: Upgrade\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
    Upgrade: websocket\r\n\
    Origin: https://wallet.bts.example\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9\r\n\
    Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    \r\n";

pub const RPC_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"call","params":["database","get_dynamic_global_properties",[]]}"#;

pub fn request(request_line: &str, fields: &[&str]) -> Vec<u8> {
    let mut s = format!("{request_line}\r\n");
    for f in fields {
        s.push_str(f);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

pub fn field_name(f: &str) -> &str {
    f.split(':').next().unwrap_or_default()
}

/// An upgrade with `request_line`, the good fields minus those named `drop`, plus `add`.
pub fn ws_line(request_line: &str, drop: &str, add: &[&str]) -> Vec<u8> {
    let mut fields: Vec<&str> = WS_FIELDS
        .iter()
        .copied()
        .filter(|f| !field_name(f).eq_ignore_ascii_case(drop))
        .collect();
    fields.extend_from_slice(add);
    request(request_line, &fields)
}

pub fn ws(drop: &str, add: &[&str]) -> Vec<u8> {
    ws_line("GET /ws HTTP/1.1", drop, add)
}

/// A JSON-RPC POST with a matching Content-Length, minus fields named `drop`, plus `add`.
pub fn post(drop: &str, add: &[&str], body: &str) -> Vec<u8> {
    let length = format!("Content-Length: {}", body.len());
    let mut fields: Vec<&str> = ["Host: node.example", "Content-Type: application/json"]
        .into_iter()
        .chain([length.as_str()])
        .filter(|f| !field_name(f).eq_ignore_ascii_case(drop))
        .collect();
    fields.extend_from_slice(add);
    let mut out = request("POST / HTTP/1.1", &fields);
    out.extend_from_slice(body.as_bytes());
    out
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub struct Case {
    pub name: &'static str,
    pub req: Vec<u8>,
    pub limits: Limits,
    pub status: u16,
    pub extra: Vec<(&'static str, String)>,
    /// Decided by bytes after a complete request, so not reproducible byte by byte.
    pub trailing: bool,
}

pub fn case(name: &'static str, req: Vec<u8>, status: u16) -> Case {
    Case {
        name,
        req,
        limits: Limits::default(),
        status,
        extra: Vec::new(),
        trailing: false,
    }
}

impl Case {
    pub fn allow(mut self, v: &str) -> Self {
        self.extra.push(("Allow", v.to_owned()));
        self
    }
    pub fn ws_version(mut self) -> Self {
        self.extra.push(("Sec-WebSocket-Version", "13".to_owned()));
        self
    }
    pub fn no_post(mut self) -> Self {
        self.limits.allow_json_rpc_post = false;
        self
    }
    pub fn trailing(mut self) -> Self {
        self.trailing = true;
        self
    }
}

pub fn hostile_cases() -> Vec<Case> {
    let big_head = {
        let pad = format!("X-Pad: {}", "a".repeat(9 * 1024));
        ws("", &[pad.as_str()])
    };
    let many_headers = {
        let names: Vec<String> = (0..100).map(|i| format!("X-H{i}: v")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        ws("", &refs)
    };
    let upgrade_then_frame = cat(&[
        &ws("", &[]),
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    ]);
    let two_upgrades = cat(&[&ws("", &[]), &ws("", &[])]);
    vec![
        case("empty line", b"\r\n".to_vec(), 400),
        case("empty lines", b"\r\n\r\n".to_vec(), 400),
        case("bare LF empty line", b"\n".to_vec(), 400),
        case(
            "empty line before request",
            cat(&[b"\r\n", &ws("", &[])]),
            400,
        ),
        case(
            "TLS ClientHello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            400,
        ),
        case("binary garbage", b"\x00\xff\xfe\x01\r\n\r\n".to_vec(), 400),
        case("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(), 400),
        case("NUL in header value", ws("", &["X-Pad: a\0b"]), 400),
        case(
            "control byte in header value",
            ws("", &["X-Pad: a\x01b"]),
            400,
        ),
        case(
            "NUL in request target",
            ws_line("GET /w\0s HTTP/1.1", "", &[]),
            400,
        ),
        case(
            "request line without version",
            ws_line("GET /ws", "", &[]),
            400,
        ),
        case(
            "request line is only a method",
            ws_line("GET", "", &[]),
            400,
        ),
        case(
            "double space in request line",
            ws_line("GET  /ws HTTP/1.1", "", &[]),
            400,
        ),
        case(
            "CR without LF",
            b"GET /ws HTTP/1.1\rHost: a\r\n\r\n".to_vec(),
            400,
        ),
        case(
            "HTTP/1.0 upgrade",
            ws_line("GET /ws HTTP/1.0", "", &[]),
            400,
        ),
        case(
            "HTTP/1.0 POST",
            cat(&[b"POST / HTTP/1.0", &post("", &[], "{}")[15..]]),
            400,
        ),
        case("HTTP/2.0", ws_line("GET /ws HTTP/2.0", "", &[]), 505),
        case(
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            505,
        ),
        case("HTTP/1.2", ws_line("GET /ws HTTP/1.2", "", &[]), 505),
        case(
            "HTTP/3.0 with bare LF",
            b"GET /ws HTTP/3.0\nHost: a\n\n".to_vec(),
            505,
        ),
        case(
            "lowercase version",
            ws_line("GET /ws http/1.1", "", &[]),
            400,
        ),
        case(
            "version without minor",
            ws_line("GET /ws HTTP/2", "", &[]),
            400,
        ),
        case(
            "junk after version",
            ws_line("GET /ws HTTP/1.1x", "", &[]),
            400,
        ),
        case("lowercase get", ws_line("get /ws HTTP/1.1", "", &[]), 405).allow("GET, POST"),
        case(
            "absolute-form target",
            ws_line("GET http://node.example/ws HTTP/1.1", "", &[]),
            400,
        ),
        case("asterisk target", ws_line("GET * HTTP/1.1", "", &[]), 400),
        case(
            "fragment in target",
            ws_line("GET /ws#top HTTP/1.1", "", &[]),
            400,
        ),
        case(
            "non-ASCII target",
            cat(&[b"GET /ws\xc3\xa9 HTTP/1.1\r\n", &ws("", &[])[18..]]),
            400,
        ),
        case("missing Host", ws("host", &[]), 400),
        case("two Hosts", ws("", &["Host: other.example"]), 400),
        case("empty Host", ws("host", &["Host:"]), 400),
        case(
            "Host with a path",
            ws("host", &["Host: node.example/ws"]),
            400,
        ),
        case(
            "Host with userinfo",
            ws("host", &["Host: user@node.example"]),
            400,
        ),
        case(
            "non-UTF-8 Host",
            cat(&[
                &ws("host", &[])[..18],
                b"Host: n\xffde\r\n",
                &ws("host", &[])[18..],
            ]),
            400,
        ),
        case("missing Upgrade", ws("upgrade", &[]), 400),
        case("Upgrade: h2c", ws("upgrade", &["Upgrade: h2c"]), 400),
        case(
            "Upgrade: websocket2",
            ws("upgrade", &["Upgrade: websocket2"]),
            400,
        ),
        case("missing Connection", ws("connection", &[]), 400),
        case(
            "Connection without upgrade",
            ws("connection", &["Connection: keep-alive"]),
            400,
        ),
        case(
            "Connection: upgraded",
            ws("connection", &["Connection: upgraded"]),
            400,
        ),
        case(
            "version 8",
            ws("sec-websocket-version", &["Sec-WebSocket-Version: 8"]),
            426,
        )
        .ws_version(),
        case("version missing", ws("sec-websocket-version", &[]), 426).ws_version(),
        case(
            "version 13, 8",
            ws("sec-websocket-version", &["Sec-WebSocket-Version: 13, 8"]),
            426,
        )
        .ws_version(),
        case(
            "two version fields",
            ws("", &["Sec-WebSocket-Version: 8"]),
            426,
        )
        .ws_version(),
        case(
            "version 013",
            ws("sec-websocket-version", &["Sec-WebSocket-Version: 013"]),
            426,
        )
        .ws_version(),
        case("key missing", ws("sec-websocket-key", &[]), 400),
        case(
            "key empty",
            ws("sec-websocket-key", &["Sec-WebSocket-Key:"]),
            400,
        ),
        case(
            "key not base64",
            ws(
                "sec-websocket-key",
                &["Sec-WebSocket-Key: not*base64*at*all*!!!!!"],
            ),
            400,
        ),
        case(
            "key 15 bytes",
            ws(
                "sec-websocket-key",
                &["Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0O"],
            ),
            400,
        ),
        case(
            "key 17 bytes",
            ws(
                "sec-websocket-key",
                &["Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0ODxA="],
            ),
            400,
        ),
        case(
            "key unpadded",
            ws(
                "sec-websocket-key",
                &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"],
            ),
            400,
        ),
        case(
            "key with non-zero padding bits",
            ws(
                "sec-websocket-key",
                &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR=="],
            ),
            400,
        ),
        case(
            "key url-safe alphabet",
            ws(
                "sec-websocket-key",
                &["Sec-WebSocket-Key: -_-_-_-_-_-_-_-_-_-_-w=="],
            ),
            400,
        ),
        case(
            "two keys",
            ws("", &["Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0ODw=="]),
            400,
        ),
        case("path /admin", ws_line("GET /admin HTTP/1.1", "", &[]), 404),
        case("path /ws/", ws_line("GET /ws/ HTTP/1.1", "", &[]), 404),
        case("path /WS", ws_line("GET /WS HTTP/1.1", "", &[]), 404),
        case(
            "percent-encoded path",
            ws_line("GET /%77s HTTP/1.1", "", &[]),
            404,
        ),
        case(
            "path traversal",
            ws_line("GET /ws/../admin HTTP/1.1", "", &[]),
            404,
        ),
        case(
            "GET with Transfer-Encoding",
            ws("", &["Transfer-Encoding: chunked"]),
            400,
        ),
        case(
            "GET with a body length",
            ws("", &["Content-Length: 5"]),
            400,
        ),
        case(
            "POST without Content-Type",
            post("content-type", &[], RPC_BODY),
            415,
        ),
        case(
            "POST text/plain",
            post("content-type", &["Content-Type: text/plain"], RPC_BODY),
            415,
        ),
        case(
            "POST application/jsonx",
            post("content-type", &["Content-Type: application/jsonx"], "{}"),
            415,
        ),
        case(
            "POST two Content-Types",
            post("", &["Content-Type: application/json"], "{}"),
            400,
        ),
        case("POST without length", post("content-length", &[], ""), 411),
        case(
            "POST too big",
            post("content-length", &["Content-Length: 65537"], ""),
            413,
        ),
        case(
            "POST length overflows",
            post(
                "content-length",
                &["Content-Length: 99999999999999999999999999"],
                "",
            ),
            413,
        ),
        case(
            "POST chunked",
            post(
                "content-length",
                &["Transfer-Encoding: chunked"],
                "2\r\n{}\r\n0\r\n\r\n",
            ),
            400,
        ),
        case(
            "POST Transfer-Encoding and Content-Length",
            post("", &["Transfer-Encoding: chunked"], "{}"),
            400,
        ),
        case(
            "POST duplicate equal lengths",
            post("", &["Content-Length: 2"], "{}"),
            400,
        ),
        case(
            "POST conflicting lengths",
            post("", &["Content-Length: 3"], "{}"),
            400,
        ),
        case(
            "POST non-numeric length",
            post("content-length", &["Content-Length: abc"], ""),
            400,
        ),
        case(
            "POST signed length",
            post("content-length", &["Content-Length: +2"], "{}"),
            400,
        ),
        case(
            "POST negative length",
            post("content-length", &["Content-Length: -1"], ""),
            400,
        ),
        case(
            "POST length list",
            post("content-length", &["Content-Length: 2, 2"], "{}"),
            400,
        ),
        case(
            "POST empty length",
            post("content-length", &["Content-Length:"], ""),
            400,
        ),
        case(
            "POST with Upgrade",
            post("", &["Upgrade: h2c", "Connection: Upgrade"], "{}"),
            400,
        ),
        case(
            "POST with unknown Expect",
            post("", &["Expect: 200-ok"], "{}"),
            417,
        ),
        case(
            "POST bytes after the body",
            cat(&[&post("", &[], "{}"), b"GET / HTTP/1.1\r\n"]),
            400,
        )
        .trailing(),
        case("POST when disabled", post("", &[], "{}"), 405)
            .no_post()
            .allow("GET"),
        case("PUT", ws_line("PUT /ws HTTP/1.1", "", &[]), 405).allow("GET, POST"),
        case("DELETE", ws_line("DELETE / HTTP/1.1", "", &[]), 405).allow("GET, POST"),
        case("OPTIONS *", ws_line("OPTIONS * HTTP/1.1", "", &[]), 405).allow("GET, POST"),
        case("HEAD", ws_line("HEAD /ws HTTP/1.1", "", &[]), 405).allow("GET, POST"),
        case(
            "CONNECT",
            ws_line("CONNECT node.example:443 HTTP/1.1", "", &[]),
            405,
        )
        .allow("GET, POST"),
        case("TRACE", ws_line("TRACE / HTTP/1.1", "", &[]), 405).allow("GET, POST"),
        case("PATCH", ws_line("PATCH / HTTP/1.1", "", &[]), 405).allow("GET, POST"),
        case(
            "unknown method token",
            ws_line("BREW /ws HTTP/1.1", "", &[]),
            405,
        )
        .allow("GET, POST"),
        case(
            "PUT when POST is disabled",
            ws_line("PUT /ws HTTP/1.1", "", &[]),
            405,
        )
        .no_post()
        .allow("GET"),
        case("HEAD /stats", ws_line("HEAD /stats HTTP/1.1", "", &[]), 405).allow("GET, POST"),
        case("9 KiB head", big_head, 431),
        case(
            "head without end past the limit",
            b"GET /ws HTTP/1.1\r\nX: "
                .iter()
                .copied()
                .chain([b'a'; 9000])
                .collect(),
            431,
        ),
        case("100 headers", many_headers, 431),
        case(
            "pipelined frame after upgrade head",
            upgrade_then_frame,
            400,
        )
        .trailing(),
        case("two pipelined upgrades", two_upgrades, 400).trailing(),
        case("header name with space", ws("", &["Bad Header: x"]), 400),
        case("obs-fold", ws("", &["X-Folded: a", " continued"]), 400),
        case(
            "obs-fold with tab",
            ws("", &["X-Folded: a", "\tcontinued"]),
            400,
        ),
        case(
            "space before colon",
            ws("host", &["Host : node.example"]),
            400,
        ),
        case("header line without colon", ws("", &["NoColonHere"]), 400),
        case("empty header name", ws("", &[": value"]), 400),
        // Ambiguous framing: refused rather than normalised (module docs of `handshake`).
        case(
            "two Hosts, equal",
            ws("", &["Host: node.example:8090"]),
            400,
        ),
        case(
            "two Hosts, differently cased names",
            ws("", &["hOST: node.example:8090"]),
            400,
        ),
        case(
            "two Hosts with bare LF",
            b"GET /ws HTTP/1.1\nHost: a\nHost: b\nUpgrade: websocket\nConnection: upgrade\n\
              Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"
                .to_vec(),
            400,
        ),
        case(
            "obs-fold in Host",
            ws("host", &["Host: node", " .example"]),
            400,
        ),
        case(
            "obs-fold with bare LF",
            b"GET /ws HTTP/1.1\nHost: a\nX-Folded: a\n b\nUpgrade: websocket\n\
              Connection: upgrade\nSec-WebSocket-Version: 13\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"
                .to_vec(),
            400,
        ),
        case("CR without LF in a field", ws("", &["X-A: a\rb"]), 400),
        case(
            "tab before colon",
            ws("", &["Transfer-Encoding\t: chunked"]),
            400,
        ),
        case(
            "GET two zero lengths",
            ws("", &["Content-Length: 0", "Content-Length: 0"]),
            400,
        ),
        case(
            "GET Content-Length and Transfer-Encoding",
            ws("", &["Content-Length: 0", "Transfer-Encoding: chunked"]),
            400,
        ),
        case(
            "POST Transfer-Encoding: identity",
            post("", &["Transfer-Encoding: identity"], "{}"),
            400,
        ),
        case(
            "POST Transfer-Encoding before Content-Length",
            post(
                "content-length",
                &["Transfer-Encoding: chunked", "Content-Length: 2"],
                "{}",
            ),
            400,
        ),
        case(
            "POST obs-folded length",
            post("content-length", &["Content-Length:", " 2"], "{}"),
            400,
        ),
        case(
            "POST length with a space inside",
            post("content-length", &["Content-Length: 1 2"], "{}"),
            400,
        ),
        case(
            "POST conflicting lengths, differently cased names",
            post("", &["content-length: 3"], "{}"),
            400,
        ),
        case(
            "POST conflicting lengths with bare LF",
            b"POST / HTTP/1.1\nHost: a\nContent-Type: application/json\nContent-Length: 2\n\
              Content-Length: 3\n\n{}"
                .to_vec(),
            400,
        ),
    ]
}

/// An accepted request whose head is not canonical, and exactly what the node must receive
/// for it (canonical head, then any body as sent).
pub struct Normalised {
    pub name: &'static str,
    pub req: Vec<u8>,
    pub forwarded: Vec<u8>,
}

fn normalised(name: &'static str, req: &[u8], forwarded: &[u8]) -> Normalised {
    Normalised {
        name,
        req: req.to_vec(),
        forwarded: forwarded.to_vec(),
    }
}

/// The accepted-but-ambiguous inputs and the canonical bytes each becomes (module docs of
/// `handshake`, "the canonical head"). Every row is accepted with default limits.
pub fn normalised_cases() -> Vec<Normalised> {
    let canonical_ws = ws("", &[]);
    vec![
        normalised("already canonical", &canonical_ws, &canonical_ws),
        normalised("browser", BROWSER, BROWSER),
        normalised(
            "bare LF line endings",
            b"GET /ws HTTP/1.1\nHost: node.example:8090\nUpgrade: websocket\nConnection: Upgrade\n\
              Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n",
            &canonical_ws,
        ),
        normalised(
            "CRLF and bare LF mixed",
            b"GET /ws HTTP/1.1\r\nHost: node.example:8090\nUpgrade: websocket\r\n\
              Connection: Upgrade\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\r\n",
            &canonical_ws,
        ),
        normalised(
            "odd spacing and mixed-case names",
            b"GET /ws?x=1 HTTP/1.1\r\nhOST:node.example\r\nUPGRADE: \t WebSocket \t\r\n\
              connection:keep-alive,  Upgrade   \r\nsec-websocket-version:\t13\r\n\
              SEC-WEBSOCKET-KEY:   dGhlIHNhbXBsZSBub25jZQ==\t\r\nUser-Agent: a  b\tc \r\n\r\n",
            b"GET /ws?x=1 HTTP/1.1\r\nhOST: node.example\r\nUPGRADE: WebSocket\r\n\
              connection: keep-alive,  Upgrade\r\nsec-websocket-version: 13\r\n\
              SEC-WEBSOCKET-KEY: dGhlIHNhbXBsZSBub25jZQ==\r\nUser-Agent: a  b\tc\r\n\r\n",
        ),
        normalised(
            "empty values and obs-text",
            &ws("", &["X-Empty:", "X-Blank: \t ", "X-Latin1: caf\u{e9}"]),
            &ws("", &["X-Empty:", "X-Blank:", "X-Latin1: caf\u{e9}"]),
        ),
        normalised(
            "POST length with leading zeros",
            &post("content-length", &["Content-Length: 0002"], "{}"),
            &post("", &[], "{}"),
        ),
        normalised(
            "POST with bare LF and a CRLF body",
            b"POST / HTTP/1.1\nHost: node.example\nContent-Type:application/json\n\
              Content-Length: 4\n\n{}\r\n",
            &post("", &[], "{}\r\n"),
        ),
    ]
}
