//! The `/metrics` HTTP endpoint: a minimal HTTP/1.1 server over the Prometheus recorder's
//! handle, on a listening socket the plane owns (so that an upgrade can hand it over, which
//! the exporter's built-in listener does not allow). One request per connection.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// A scraper that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often histograms are compacted (the recorder leaves it to its owner).
const UPKEEP: Duration = Duration::from_secs(5);

/// Serves scrapes until the process ends.
pub(super) async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(conn, &handle)).await;
        });
    }
}

/// What a request head asks for: `GET /metrics` gets the scrape.
fn route(head: &[u8]) -> (&'static str, bool) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => match (req.method, req.path) {
            (Some("GET"), Some(p)) if p == "/metrics" || p.starts_with("/metrics?") => {
                ("200 OK", true)
            }
            (Some("GET"), _) => ("404 Not Found", false),
            _ => ("405 Method Not Allowed", false),
        },
        _ => ("400 Bad Request", false),
    }
}

async fn answer(mut conn: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, scrape) = route(&head);
    let body = if scrape {
        handle.render()
    } else {
        format!("{status}\n")
    };
    let content_type = if scrape {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    let out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(out.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn only_get_metrics_is_a_scrape() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("200 OK", true)
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            ("200 OK", true)
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), ("404 Not Found", false));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            ("405 Method Not Allowed", false)
        );
        assert_eq!(
            route(b"\x00\x01garbage\r\n\r\n"),
            ("400 Bad Request", false)
        );
    }
}
