//! The control endpoint: plain HTTP on its own address, one request per connection.
//!
//! | request | effect |
//! |---|---|
//! | `GET /control/state` | JSON: name, mode, reported head, chain head, params, connection counts |
//! | `POST /control/stall` | head stops advancing (answers keep coming, old head) |
//! | `POST /control/resume` | healthy head again (clears stall, lag, flap) |
//! | `POST /control/lag?blocks=N` | report the block N behind the chain head (0 = healthy) |
//! | `POST /control/flap?period_ms=P` | alternate healthy/stalled every P ms |
//! | `POST /control/slow?ms=M` | delay every answer by M ms (0 = off) |
//! | `POST /control/refuse` | close the API listener (connects are refused) |
//! | `POST /control/accept` | listen again |
//! | `POST /control/die` | reset every live API connection (RST) |
//! | `POST /control/heavy?objects_per_block=N&bytes=M[&per_notice=K]` | heavy push |
//! | `POST /control/normal` | normal push (one notice per block) |
//! | `POST /control/reset` | everything back to defaults |
//!
//! Every `POST` answers `200` with the state document, `400` with
//! `{"error": ...}` on bad parameters.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::http;
use super::{Control, HeavyPush, Shared};

/// Parses `/control/<name>` with its query pairs into a [`Control`].
pub fn parse(name: &str, query: &[(String, String)]) -> Result<Control, String> {
    let get = |keys: &[&str]| -> Option<&str> {
        query
            .iter()
            .find(|(k, _)| keys.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    };
    let num = |keys: &[&str], default: Option<u64>| -> Result<u64, String> {
        match get(keys) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("{}: not a number: {v:?}", keys[0])),
            None => default.ok_or_else(|| format!("missing parameter {}", keys[0])),
        }
    };
    Ok(match name {
        "stall" => Control::Stall,
        "resume" => Control::Resume,
        "lag" => Control::Lag(num(&["blocks", "n"], None)?),
        "flap" => {
            let p = num(&["period_ms", "ms"], None)?;
            if p == 0 {
                return Err("period_ms must be > 0".into());
            }
            Control::Flap(Duration::from_millis(p))
        }
        "slow" => Control::Slow(Duration::from_millis(num(&["ms"], None)?)),
        "refuse" => Control::Refuse,
        "accept" => Control::Accept,
        "die" => Control::Die,
        "heavy" => {
            let objects = num(&["objects_per_block", "objects"], Some(100))?;
            let bytes = num(&["bytes", "object_bytes"], Some(512))?;
            let per = num(&["per_notice", "objects_per_notice"], Some(1))?;
            if !(1..=100_000).contains(&objects) || !(1..=100_000).contains(&per) {
                return Err("objects_per_block and per_notice must be 1..=100000".into());
            }
            if bytes > 1 << 20 {
                return Err("bytes must be at most 1 MiB".into());
            }
            Control::Heavy(HeavyPush {
                objects_per_block: objects as u32,
                object_bytes: bytes as u32,
                objects_per_notice: per as u32,
            })
        }
        "normal" => Control::Normal,
        "reset" => Control::Reset,
        other => return Err(format!("unknown control {other:?}")),
    })
}

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown_tx.subscribe();
    if *shutdown.borrow_and_update() {
        return;
    }
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    tokio::spawn(request(stream, shared.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn request(mut stream: TcpStream, shared: Arc<Shared>) {
    let idle = Duration::from_secs(10);
    let mut buf = Vec::new();
    let head = match http::read_head(&mut stream, &mut buf, idle).await {
        Ok(Some(h)) => h,
        _ => return,
    };
    buf.drain(..head.len);
    if let Ok(Some(n)) = head.content_length() {
        if n > 64 * 1024
            || http::read_body(&mut stream, &mut buf, n, idle)
                .await
                .is_err()
        {
            return;
        }
    }
    let (path, query) = http::split_target(&head.path);
    let (status, body) = route(&head.method, path, &query, &shared).await;
    let resp = http::response(status, "application/json", body.as_bytes(), false, &[]);
    let _ = stream.write_all(&resp).await;
    let _ = stream.shutdown().await;
}

async fn route(
    method: &str,
    path: &str,
    query: &[(String, String)],
    shared: &Shared,
) -> (u16, String) {
    let err = |status: u16, msg: String| (status, json!({ "error": msg }).to_string());
    let Some(name) = path.strip_prefix("/control/") else {
        return err(404, format!("no such endpoint {path}"));
    };
    if name == "state" {
        return if method == "GET" {
            (200, shared.state_json().to_string())
        } else {
            err(405, "use GET".into())
        };
    }
    let control = match parse(name, query) {
        Ok(c) => c,
        Err(e) if e.starts_with("unknown control") => return err(404, e),
        Err(e) => return err(400, e),
    };
    if method != "POST" {
        return err(405, "use POST".into());
    }
    match shared.apply(control).await {
        Ok(_) => (200, shared.state_json().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => err(400, e.to_string()),
        Err(e) => err(500, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        http::split_target(s).1
    }

    #[test]
    fn parses_controls() {
        assert_eq!(parse("stall", &[]), Ok(Control::Stall));
        assert_eq!(parse("lag", &q("?blocks=7")), Ok(Control::Lag(7)));
        assert!(parse("lag", &[]).is_err());
        assert!(parse("lag", &q("?blocks=x")).is_err());
        assert_eq!(
            parse("flap", &q("?period_ms=500")),
            Ok(Control::Flap(Duration::from_millis(500)))
        );
        assert!(parse("flap", &q("?period_ms=0")).is_err());
        assert_eq!(
            parse("slow", &q("?ms=250")),
            Ok(Control::Slow(Duration::from_millis(250)))
        );
        assert_eq!(
            parse("heavy", &q("?objects_per_block=50&bytes=2000")),
            Ok(Control::Heavy(HeavyPush {
                objects_per_block: 50,
                object_bytes: 2000,
                objects_per_notice: 1
            }))
        );
        assert!(parse("heavy", &q("?objects_per_block=0")).is_err());
        assert!(parse("explode", &[]).is_err());
    }
}
