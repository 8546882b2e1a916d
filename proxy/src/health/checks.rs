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

use super::rules::{ChainParams, HeadSample};

pub use crate::config::health::ProbeKind;

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

/// Runs one probe within `timeout`. Errors are short texts for `why` (never sent to clients).
pub async fn probe(
    kind: ProbeKind,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    want_params: bool,
) -> Result<Answer, String> {
    let started = Instant::now();
    let work = async {
        match kind {
            ProbeKind::Tcp => {
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                Ok::<_, String>((None, None))
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
                Ok((Some(parse_dgp(&dgp)?), params))
            }
            ProbeKind::BitsharesHttp => {
                let dgp = http_call(addr, path, DGP).await?;
                let params = if want_params {
                    Some(parse_params(&http_call(addr, path, GP).await?)?)
                } else {
                    None
                };
                Ok((Some(parse_dgp(&dgp)?), params))
            }
        }
    };
    let (sample, params) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    Ok(Answer {
        rtt: started.elapsed(),
        sample,
        params,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(addr: SocketAddr, path: &str) -> Result<(Ws, u16), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let url = format!("ws://{addr}{path}");
    let (ws, resp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| format!("websocket handshake: {e}"))?;
    Ok((ws, resp.status().as_u16()))
}

async fn ws_call(ws: &mut Ws, request: &str, id: u64) -> Result<Value, String> {
    ws.send(Message::text(request))
        .await
        .map_err(|e| format!("send: {e}"))?;
    // Subscription notices may come first: skip anything that is not our answer.
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| format!("read: {e}"))?;
        let Ok(text) = msg.to_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return Err("answer is not JSON".into());
        };
        if v.get("id").and_then(Value::as_u64) == Some(id) {
            return result_of(v);
        }
    }
    Err("connection closed before the answer".into())
}

/// The `result` of a JSON-RPC answer, or the node's `error` as text. Public for the fuzz
/// targets (tests/fuzz).
pub fn result_of(v: Value) -> Result<Value, String> {
    if let Some(e) = v.get("error") {
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("error");
        return Err(format!(
            "node error: {}",
            msg.chars().take(120).collect::<String>()
        ));
    }
    v.get("result")
        .cloned()
        .ok_or_else(|| "answer has no result".into())
}

/// One JSON-RPC call over HTTP/1.1 POST (connection closed after the answer).
async fn http_call(addr: SocketAddr, path: &str, body: &str) -> Result<Value, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    // Bounded: a health answer is small.
    (&mut s)
        .take(1 << 20)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err("malformed HTTP answer".into()),
    };
    if resp.code != Some(200) {
        return Err(format!("HTTP status {}", resp.code.unwrap_or(0)));
    }
    let v: Value =
        serde_json::from_slice(&buf[head_len..]).map_err(|_| "answer is not JSON".to_string())?;
    result_of(v)
}

/// The head sample in a `get_dynamic_global_properties` result. Public for the fuzz targets.
pub fn parse_dgp(v: &Value) -> Result<HeadSample, String> {
    let num = v
        .get("head_block_number")
        .and_then(Value::as_u64)
        .ok_or("no head_block_number")?;
    let time = v.get("time").and_then(Value::as_str).ok_or("no time")?;
    let next = v
        .get("next_maintenance_time")
        .and_then(Value::as_str)
        .ok_or("no next_maintenance_time")?;
    HeadSample::from_chain_fields(unix_now(), num, time, next).map_err(|e| e.to_string())
}

/// The chain's timing in a `get_global_properties` result. Public for the fuzz targets.
pub fn parse_params(v: &Value) -> Result<ChainParams, String> {
    let p = v.get("parameters").ok_or("no parameters")?;
    let get = |k: &str| {
        p.get(k)
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .ok_or(format!("no parameters.{k}"))
    };
    let params = ChainParams {
        block_interval_secs: get("block_interval")?,
        maintenance_interval_secs: get("maintenance_interval")?,
        maintenance_skip_slots: get("maintenance_skip_slots")?,
    };
    params.validate().map_err(|e| e.to_string())?;
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
pub fn parse_agent(body: &str) -> Result<AgentReport, String> {
    let word = body
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
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
            .ok_or_else(|| format!("bad weight `{w}`")),
        "" => Err("empty agent answer".into()),
        w => Err(format!(
            "unknown agent word `{}`",
            w.chars().take(20).collect::<String>()
        )),
    }
}

/// Polls the agent: `GET /agent` on `addr`, body as in `parse_agent`.
pub async fn agent(addr: SocketAddr, timeout: Duration) -> Result<AgentReport, String> {
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("agent connect: {e}"))?;
        s.write_all(
            format!("GET /agent HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| format!("agent send: {e}"))?;
        let mut buf = Vec::new();
        (&mut s)
            .take(4096)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("agent read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .ok_or("agent answer has no body")?;
        parse_agent(body)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "agent: no answer".to_string())?
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
        assert!(agent(agent_server("banana").await, t).await.is_err());
        let closed = {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap()
        };
        assert!(agent(closed, t).await.unwrap_err().contains("connect"));
        // The TCP probe too.
        assert!(probe(ProbeKind::Tcp, closed, "/", t, false).await.is_err());
        assert!(
            probe(ProbeKind::Tcp, agent_server("up").await, "/", t, false)
                .await
                .is_ok()
        );
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
        let s = parse_dgp(&v).unwrap();
        assert_eq!(s.head_block_number, 123);
        assert!(parse_dgp(&serde_json::json!({"head_block_number": "x"})).is_err());
        let p = parse_params(&serde_json::json!({"parameters":{"block_interval":3,"maintenance_interval":3600,"maintenance_skip_slots":3}})).unwrap();
        assert_eq!(p, ChainParams::BITSHARES_MAINNET);
        assert!(parse_params(&serde_json::json!({"parameters":{"block_interval":0,"maintenance_interval":3600,"maintenance_skip_slots":3}})).is_err());
        assert!(
            result_of(serde_json::json!({"id":1,"error":{"message":"boom"}}))
                .unwrap_err()
                .contains("boom")
        );
    }
}
