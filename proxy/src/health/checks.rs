//! Active probes, one connection each: TCP connect, WebSocket handshake, the BitShares
//! `get_dynamic_global_properties` call over HTTP POST or over the websocket, and the agent
//! feed (a node's own report of up/down/drain/weight).

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use super::rules::HeadSample;
use crate::chain::{ChainError, ChainParams};

pub use crate::config::health::ProbeKind;

/// Why a probe failed: a kind, to count failures by (`proxy_health_probe_failures_total`),
/// and a detail for `proxy backends list`. Shown as `kind: detail`. Never sent to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.label())]
pub struct ProbeError {
    /// What went wrong.
    pub kind: ProbeErrorKind,
    /// The specifics (an OS error, the field's name, the node's error message...).
    pub detail: String,
}

impl ProbeError {
    /// An error of `kind` with `detail`.
    pub fn new(kind: ProbeErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    fn missing(field: &str) -> Self {
        Self::new(ProbeErrorKind::BadField, format!("no {field}"))
    }
}

/// The kinds of probe failure, by what the probe got (or did not get) from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeErrorKind {
    /// The TCP connect failed (refused, unreachable, reset).
    Connect,
    /// No complete answer within the probe's timeout.
    Timeout,
    /// The WebSocket upgrade failed.
    WsHandshake,
    /// Sending or reading failed, or the node closed the connection before answering.
    Io,
    /// The answer is not HTTP/1.x, or has no body.
    BadHttp,
    /// The HTTP status is not 200.
    HttpStatus,
    /// The answer is not JSON.
    BadJson,
    /// The node answered with a JSON-RPC error.
    RpcError,
    /// A field the probe needs is missing or has the wrong type (`result`,
    /// `head_block_number`, `parameters.block_interval`, ...).
    BadField,
    /// A chain time (`time`, `next_maintenance_time`) that does not parse.
    BadTime,
    /// Chain parameters no chain can run with (`block_interval` 0, ...).
    BadParams,
    /// The agent's answer is not `up`, `down`, `drain` or `NN%`.
    AgentFormat,
}

impl ProbeErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ProbeErrorKind; 12] = [
        Self::Connect,
        Self::Timeout,
        Self::WsHandshake,
        Self::Io,
        Self::BadHttp,
        Self::HttpStatus,
        Self::BadJson,
        Self::RpcError,
        Self::BadField,
        Self::BadTime,
        Self::BadParams,
        Self::AgentFormat,
    ];

    /// A stable snake_case name, for metric labels and `why`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::WsHandshake => "ws_handshake",
            Self::Io => "io",
            Self::BadHttp => "bad_http",
            Self::HttpStatus => "http_status",
            Self::BadJson => "bad_json",
            Self::RpcError => "rpc_error",
            Self::BadField => "bad_field",
            Self::BadTime => "bad_time",
            Self::BadParams => "bad_params",
            Self::AgentFormat => "agent_format",
        }
    }

    /// Whether the node answered, but wrongly (a bad answer rather than an unreachable
    /// node).
    pub fn is_bad_answer(self) -> bool {
        !matches!(
            self,
            Self::Connect | Self::Timeout | Self::WsHandshake | Self::Io
        )
    }
}

impl From<ChainError> for ProbeError {
    fn from(e: ChainError) -> Self {
        let kind = match e {
            ChainError::BadTimeFormat { .. } | ChainError::FieldOutOfRange { .. } => {
                ProbeErrorKind::BadTime
            }
            ChainError::InvalidParams { .. } => ProbeErrorKind::BadParams,
        };
        Self::new(kind, e.to_string())
    }
}

/// `map_err` helper: an error of `kind` whose detail is the source error's text.
fn with_kind<E: std::fmt::Display>(kind: ProbeErrorKind) -> impl FnOnce(E) -> ProbeError {
    move |e| ProbeError::new(kind, e.to_string())
}

/// What a successful probe learned.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rtt: Duration,
    /// BitShares probes: the head.
    pub sample: Option<HeadSample>,
    /// BitShares probes, when asked: the chain's timing parameters.
    pub params: Option<ChainParams>,
}

const DGP: &str =
    r#"{"id":1,"method":"call","params":["database","get_dynamic_global_properties",[]]}"#;
const GP: &str = r#"{"id":2,"method":"call","params":["database","get_global_properties",[]]}"#;

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs one probe within `timeout`.
pub async fn probe(
    kind: ProbeKind,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    want_params: bool,
) -> Result<Answer, ProbeError> {
    let started = Instant::now();
    let work = async {
        match kind {
            ProbeKind::Tcp => {
                TcpStream::connect(addr)
                    .await
                    .map_err(with_kind(ProbeErrorKind::Connect))?;
                Ok::<_, ProbeError>((None, None))
            }
            ProbeKind::Ws => {
                let (mut ws, _) = ws_connect(addr, path).await?;
                let _ = ws.close(None).await;
                Ok((None, None))
            }
            ProbeKind::BitsharesWs => {
                let (mut ws, _) = ws_connect(addr, path).await?;
                let dgp = ws_call(&mut ws, DGP, 1).await?;
                let params = if want_params {
                    Some(parse_params(&ws_call(&mut ws, GP, 2).await?)?)
                } else {
                    None
                };
                let _ = ws.close(None).await;
                Ok((Some(parse_dgp(&dgp, unix_now())?), params))
            }
            ProbeKind::BitsharesHttp => {
                let dgp = http_call(addr, path, DGP).await?;
                let params = if want_params {
                    Some(parse_params(&http_call(addr, path, GP).await?)?)
                } else {
                    None
                };
                Ok((Some(parse_dgp(&dgp, unix_now())?), params))
            }
        }
    };
    let (sample, params) = tokio::time::timeout(timeout, work).await.map_err(|_| {
        ProbeError::new(
            ProbeErrorKind::Timeout,
            format!("no answer within {timeout:?}"),
        )
    })??;
    Ok(Answer {
        rtt: started.elapsed(),
        sample,
        params,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(addr: SocketAddr, path: &str) -> Result<(Ws, u16), ProbeError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(with_kind(ProbeErrorKind::Connect))?;
    let url = format!("ws://{addr}{path}");
    let (ws, resp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(with_kind(ProbeErrorKind::WsHandshake))?;
    Ok((ws, resp.status().as_u16()))
}

async fn ws_call(ws: &mut Ws, request: &str, id: u64) -> Result<Value, ProbeError> {
    ws.send(Message::text(request))
        .await
        .map_err(|e| ProbeError::new(ProbeErrorKind::Io, format!("send: {e}")))?;
    // Subscription notices may come first: skip anything that is not our answer.
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| ProbeError::new(ProbeErrorKind::Io, format!("read: {e}")))?;
        let Ok(text) = msg.to_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return Err(ProbeError::new(
                ProbeErrorKind::BadJson,
                "answer is not JSON",
            ));
        };
        if v.get("id").and_then(Value::as_u64) == Some(id) {
            return result_of(v);
        }
    }
    Err(ProbeError::new(
        ProbeErrorKind::Io,
        "connection closed before the answer",
    ))
}

/// The `result` of a JSON-RPC answer, or the node's error (its message, cut to 120
/// characters).
pub fn result_of(v: Value) -> Result<Value, ProbeError> {
    if let Some(e) = v.get("error") {
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("error");
        return Err(ProbeError::new(
            ProbeErrorKind::RpcError,
            msg.chars().take(120).collect::<String>(),
        ));
    }
    v.get("result")
        .cloned()
        .ok_or_else(|| ProbeError::missing("result"))
}

/// One JSON-RPC call over HTTP/1.1 POST (connection closed after the answer).
async fn http_call(addr: SocketAddr, path: &str, body: &str) -> Result<Value, ProbeError> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(with_kind(ProbeErrorKind::Connect))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| ProbeError::new(ProbeErrorKind::Io, format!("send: {e}")))?;
    let mut buf = Vec::new();
    // Bounded: a health answer is small.
    (&mut s)
        .take(1 << 20)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| ProbeError::new(ProbeErrorKind::Io, format!("read: {e}")))?;
    http_result(&buf)
}

/// The JSON-RPC result in a whole HTTP/1.1 answer (`buf`: status line, headers, body).
pub fn http_result(buf: &[u8]) -> Result<Value, ProbeError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => {
            return Err(ProbeError::new(
                ProbeErrorKind::BadHttp,
                "malformed HTTP answer",
            ))
        }
    };
    if resp.code != Some(200) {
        return Err(ProbeError::new(
            ProbeErrorKind::HttpStatus,
            format!("HTTP status {}", resp.code.unwrap_or(0)),
        ));
    }
    let v: Value = serde_json::from_slice(buf.get(head_len..).unwrap_or_default())
        .map_err(|_| ProbeError::new(ProbeErrorKind::BadJson, "answer is not JSON"))?;
    result_of(v)
}

/// The head sample in a `get_dynamic_global_properties` result, stamped `observed_at_unix`.
pub fn parse_dgp(v: &Value, observed_at_unix: i64) -> Result<HeadSample, ProbeError> {
    let num = v
        .get("head_block_number")
        .and_then(Value::as_u64)
        .ok_or_else(|| ProbeError::missing("head_block_number"))?;
    let time = v
        .get("time")
        .and_then(Value::as_str)
        .ok_or_else(|| ProbeError::missing("time"))?;
    let next = v
        .get("next_maintenance_time")
        .and_then(Value::as_str)
        .ok_or_else(|| ProbeError::missing("next_maintenance_time"))?;
    Ok(HeadSample::from_chain_fields(
        observed_at_unix,
        num,
        time,
        next,
    )?)
}

/// The chain's timing parameters in a `get_global_properties` result, validated.
pub fn parse_params(v: &Value) -> Result<ChainParams, ProbeError> {
    let p = v
        .get("parameters")
        .ok_or_else(|| ProbeError::missing("parameters"))?;
    let get = |k: &str| {
        p.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ProbeError::missing(&format!("parameters.{k}")))
    };
    let params = ChainParams::from_secs(
        get("block_interval")?,
        get("maintenance_interval")?,
        get("maintenance_skip_slots")?,
    );
    params.validate()?;
    Ok(params)
}

/// What a node's agent says about itself (HAProxy's agent-check, done simply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentReport {
    Up,
    Down,
    Drain,
    /// Percent of the configured weight (0-100).
    WeightPercent(u32),
}

/// Parses an agent answer body: `up`, `down`, `drain`, `NN%` (case-insensitive, first word).
pub fn parse_agent(body: &str) -> Result<AgentReport, ProbeError> {
    let word = body
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let bad = |detail: String| ProbeError::new(ProbeErrorKind::AgentFormat, detail);
    match word.as_str() {
        "up" | "ready" => Ok(AgentReport::Up),
        "down" | "stopped" | "fail" => Ok(AgentReport::Down),
        "drain" | "maint" => Ok(AgentReport::Drain),
        w if w.ends_with('%') => w
            .trim_end_matches('%')
            .parse::<u32>()
            .ok()
            .filter(|p| *p <= 100)
            .map(AgentReport::WeightPercent)
            .ok_or_else(|| {
                bad(format!(
                    "bad weight `{}`",
                    w.chars().take(20).collect::<String>()
                ))
            }),
        "" => Err(bad("empty agent answer".into())),
        w => Err(bad(format!(
            "unknown agent word `{}`",
            w.chars().take(20).collect::<String>()
        ))),
    }
}

/// Polls the agent: `GET /agent` on `addr`, body as in `parse_agent`.
pub async fn agent(addr: SocketAddr, timeout: Duration) -> Result<AgentReport, ProbeError> {
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(with_kind(ProbeErrorKind::Connect))?;
        s.write_all(
            format!("GET /agent HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| ProbeError::new(ProbeErrorKind::Io, format!("send: {e}")))?;
        let mut buf = Vec::new();
        (&mut s)
            .take(4096)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| ProbeError::new(ProbeErrorKind::Io, format!("read: {e}")))?;
        let text = String::from_utf8_lossy(&buf);
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .ok_or_else(|| ProbeError::new(ProbeErrorKind::BadHttp, "answer has no body"))?;
        parse_agent(body)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ProbeError::new(ProbeErrorKind::Timeout, "no answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server answering with `body`.
    async fn agent_server(body: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn agent_feed_over_the_network() {
        let t = Duration::from_secs(2);
        assert_eq!(
            agent(agent_server("drain\n").await, t).await,
            Ok(AgentReport::Drain)
        );
        assert_eq!(
            agent(agent_server("25%").await, t).await,
            Ok(AgentReport::WeightPercent(25))
        );
        assert_eq!(
            agent(agent_server("banana").await, t)
                .await
                .unwrap_err()
                .kind,
            ProbeErrorKind::AgentFormat
        );
        let closed = {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let refused = agent(closed, t).await.unwrap_err();
        assert_eq!(refused.kind, ProbeErrorKind::Connect);
        assert!(refused.to_string().starts_with("connect: "), "{refused}");
        // The TCP probe too.
        assert_eq!(
            probe(ProbeKind::Tcp, closed, "/", t, false)
                .await
                .unwrap_err()
                .kind,
            ProbeErrorKind::Connect
        );
        assert!(
            probe(ProbeKind::Tcp, agent_server("up").await, "/", t, false)
                .await
                .is_ok()
        );
    }

    /// A WebSocket server that answers each text message with `reply` (None: closes the
    /// connection instead).
    async fn ws_server(reply: Option<&'static str>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if !msg.is_text() {
                            continue;
                        }
                        match reply {
                            Some(text) => {
                                let _ = ws.send(Message::text(text)).await;
                            }
                            None => return,
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn websocket_failures_have_their_kind() {
        let t = Duration::from_secs(2);
        let kind = |addr| async move {
            probe(ProbeKind::BitsharesWs, addr, "/", t, false)
                .await
                .unwrap_err()
                .kind
        };
        // A plain HTTP server refuses the upgrade.
        assert_eq!(
            kind(agent_server("up").await).await,
            ProbeErrorKind::WsHandshake
        );
        assert_eq!(
            probe(ProbeKind::Ws, agent_server("up").await, "/", t, false)
                .await
                .unwrap_err()
                .kind,
            ProbeErrorKind::WsHandshake
        );
        // Upgraded, then closed before the answer.
        assert_eq!(kind(ws_server(None).await).await, ProbeErrorKind::Io);
        // Answers that are not what the probe asked for.
        assert_eq!(
            kind(ws_server(Some("{oops")).await).await,
            ProbeErrorKind::BadJson
        );
        assert_eq!(
            kind(ws_server(Some(r#"{"id":1,"error":{"message":"busy"}}"#)).await).await,
            ProbeErrorKind::RpcError
        );
        assert_eq!(
            kind(ws_server(Some(r#"{"id":1,"result":{"head_block_number":1}}"#)).await).await,
            ProbeErrorKind::BadField
        );
        assert_eq!(
            kind(ws_server(Some(r#"{"id":1,"result":{"head_block_number":1,"time":"now","next_maintenance_time":"later"}}"#)).await).await,
            ProbeErrorKind::BadTime
        );
    }

    /// A listener that accepts and never answers: the probe runs into its timeout.
    #[tokio::test]
    async fn silent_node_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let t = Duration::from_millis(200);
        let e = probe(ProbeKind::BitsharesHttp, addr, "/", t, false)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Timeout, "{e}");
        assert_eq!(
            agent(addr, t).await.unwrap_err().kind,
            ProbeErrorKind::Timeout
        );
    }

    #[test]
    fn kinds_have_stable_distinct_labels() {
        let labels: Vec<&str> = ProbeErrorKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(
            labels,
            [
                "connect",
                "timeout",
                "ws_handshake",
                "io",
                "bad_http",
                "http_status",
                "bad_json",
                "rpc_error",
                "bad_field",
                "bad_time",
                "bad_params",
                "agent_format"
            ]
        );
        let unreachable: Vec<ProbeErrorKind> = ProbeErrorKind::ALL
            .into_iter()
            .filter(|k| !k.is_bad_answer())
            .collect();
        assert_eq!(
            unreachable,
            [
                ProbeErrorKind::Connect,
                ProbeErrorKind::Timeout,
                ProbeErrorKind::WsHandshake,
                ProbeErrorKind::Io
            ]
        );
        let e = ProbeError::new(ProbeErrorKind::HttpStatus, "HTTP status 503");
        assert_eq!(e.to_string(), "http_status: HTTP status 503");
    }

    /// Each parser's bad inputs, with the kind they must give.
    #[test]
    fn bad_answers_give_their_kind() {
        use serde_json::json;
        use ProbeErrorKind::*;
        let kind_of = |r: Result<Value, ProbeError>| r.unwrap_err().kind;
        // result_of: JSON-RPC envelope.
        assert_eq!(
            kind_of(result_of(json!({"id":1,"error":{"message":"boom"}}))),
            RpcError
        );
        assert_eq!(
            kind_of(result_of(json!({"id":1,"error":"weird"}))),
            RpcError
        );
        assert_eq!(kind_of(result_of(json!({"id":1}))), BadField);
        let long = "x".repeat(500);
        let e = result_of(json!({"error":{"message": long}})).unwrap_err();
        assert_eq!(e.detail.len(), 120);
        // http_result: the HTTP layer, then the envelope.
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"result\":42}";
        assert_eq!(http_result(ok).unwrap(), json!(42));
        for (answer, kind) in [
            (&b"garbage\r\n\r\n"[..], BadHttp),
            (b"HTTP/1.1 200 OK\r\nContent-Le", BadHttp),
            (b"", BadHttp),
            (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", HttpStatus),
            (b"HTTP/1.1 404 Not Found\r\n\r\n{\"result\":1}", HttpStatus),
            (b"HTTP/1.1 200 OK\r\n\r\n<html>", BadJson),
            (b"HTTP/1.1 200 OK\r\n\r\n", BadJson),
            (
                b"HTTP/1.1 200 OK\r\n\r\n{\"error\":{\"message\":\"no\"}}",
                RpcError,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n{\"id\":1}", BadField),
        ] {
            assert_eq!(
                kind_of(http_result(answer)),
                kind,
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
        // parse_dgp: fields, then chain times.
        let dgp = |v: Value| parse_dgp(&v, 0).unwrap_err().kind;
        let t = "2026-11-23T19:57:27";
        assert_eq!(
            dgp(json!({"time": t, "next_maintenance_time": t})),
            BadField
        );
        assert_eq!(
            dgp(json!({"head_block_number": "1", "time": t, "next_maintenance_time": t})),
            BadField
        );
        assert_eq!(
            dgp(json!({"head_block_number": 1, "next_maintenance_time": t})),
            BadField
        );
        assert_eq!(
            dgp(json!({"head_block_number": 1, "time": 5, "next_maintenance_time": t})),
            BadField
        );
        assert_eq!(dgp(json!({"head_block_number": 1, "time": t})), BadField);
        assert_eq!(
            dgp(json!({"head_block_number": 1, "time": "soon", "next_maintenance_time": t})),
            BadTime
        );
        assert_eq!(
            dgp(
                json!({"head_block_number": 1, "time": t, "next_maintenance_time": "2026-02-30T00:00:00"})
            ),
            BadTime
        );
        assert_eq!(dgp(json!(null)), BadField);
        // parse_params: fields, then validation.
        let params = |v: Value| parse_params(&v).unwrap_err().kind;
        let p = |bi: Value, mi: Value, skip: Value| json!({"parameters": {"block_interval": bi, "maintenance_interval": mi, "maintenance_skip_slots": skip}});
        assert_eq!(params(json!({})), BadField);
        assert_eq!(params(p(json!(3), json!(3600), json!(null))), BadField);
        assert_eq!(params(p(json!("3"), json!(3600), json!(3))), BadField);
        assert_eq!(params(p(json!(-3), json!(3600), json!(3))), BadField);
        assert_eq!(
            params(p(json!(3), json!(5_000_000_000u64), json!(3))),
            BadField
        );
        assert_eq!(params(p(json!(0), json!(3600), json!(3))), BadParams);
        assert_eq!(params(p(json!(3), json!(6), json!(3))), BadParams);
        let e = parse_params(&p(json!(3), json!(3600), json!(2000))).unwrap_err();
        assert_eq!(e.kind, BadParams);
        assert!(
            e.to_string()
                .starts_with("bad_params: invalid maintenance_skip_slots"),
            "{e}"
        );
        // parse_agent.
        for body in ["", "  \n", "explode", "150%", "-5%", "x%", "%"] {
            assert_eq!(parse_agent(body).unwrap_err().kind, AgentFormat, "{body:?}");
        }
        let e = parse_agent(&"y".repeat(1000)).unwrap_err();
        assert!(e.to_string().len() < 60, "{e}");
    }

    #[test]
    fn agent_words() {
        assert_eq!(parse_agent("up\n"), Ok(AgentReport::Up));
        assert_eq!(parse_agent("DRAIN"), Ok(AgentReport::Drain));
        assert_eq!(parse_agent("down maintenance"), Ok(AgentReport::Down));
        assert_eq!(parse_agent("75%"), Ok(AgentReport::WeightPercent(75)));
        assert!(parse_agent("150%").is_err());
        assert!(parse_agent("").is_err());
        assert!(parse_agent("explode").is_err());
    }

    #[test]
    fn dgp_and_params_parse_and_reject_garbage() {
        let v: Value = serde_json::from_str(
            r#"{"head_block_number":123,"time":"2026-11-23T19:57:27","next_maintenance_time":"2026-11-23T20:00:00"}"#,
        )
        .unwrap();
        let s = parse_dgp(&v, 1_795_463_850).unwrap();
        assert_eq!(s.head_block_number, 123);
        assert_eq!(s.observed_at_unix, 1_795_463_850);
        assert_eq!(s.head_age_secs(), 3);
        assert!(parse_dgp(&serde_json::json!({"head_block_number": "x"}), 0).is_err());
        let p = parse_params(&serde_json::json!({"parameters":{"block_interval":3,"maintenance_interval":3600,"maintenance_skip_slots":3}})).unwrap();
        assert_eq!(p, ChainParams::BITSHARES_MAINNET);
        assert!(parse_params(&serde_json::json!({"parameters":{"block_interval":0,"maintenance_interval":3600,"maintenance_skip_slots":3}})).is_err());
        assert_eq!(
            result_of(serde_json::json!({"id":1,"error":{"message":"boom"}}))
                .unwrap_err()
                .to_string(),
            "rpc_error: boom"
        );
    }
}
