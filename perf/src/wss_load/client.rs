//! One client connection: TCP connect, TLS handshake (for `wss://`), the WebSocket upgrade
//! (101 and `Sec-WebSocket-Accept` checked), then JSON-RPC text messages.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use proxy::{
    handshake::accept_key,
    websocket::{self, close_code, FrameHeader, Opcode},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::target::Target;

/// The client's mask (RFC 6455 requires one; which one does not matter for load).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Largest frame a client takes from the server.
const MAX_PAYLOAD: u64 = 16 << 20;
/// Largest response head.
const MAX_HEAD: usize = 16 * 1024;
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An upgraded WebSocket connection.
pub struct WsClient {
    s: Box<dyn Stream>,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// The server ended the stream.
    eof: bool,
}

/// A frame from the server.
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
}

impl WsClient {
    /// Connects and upgrades.
    pub async fn open(t: &Target) -> Result<WsClient> {
        let tcp = TcpStream::connect(t.addr)
            .await
            .with_context(|| format!("connecting to {}", t.addr))?;
        tcp.set_nodelay(true)?;
        let mut s: Box<dyn Stream> = match &t.tls {
            Some(tls) => Box::new(
                tls.connect(t.server_name.clone(), tcp)
                    .await
                    .context("TLS handshake")?,
            ),
            None => Box::new(tcp),
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            t.url.path,
            t.url.host_header()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let n = read_head(&mut s, &mut buf).await?;
        check_upgrade(&buf[..n])?;
        buf.drain(..n);
        Ok(WsClient {
            s,
            buf,
            out: Vec::with_capacity(256),
            eof: false,
        })
    }

    pub async fn send_text(&mut self, payload: &[u8]) -> Result<()> {
        self.send(Opcode::Text, payload).await
    }

    async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> Result<()> {
        self.out.clear();
        websocket::encode_frame(&mut self.out, true, opcode, payload, Some(MASK));
        self.s.write_all(&self.out).await?;
        Ok(())
    }

    /// The next data frame; pings are answered, a close is an error.
    pub async fn recv(&mut self) -> Result<Frame> {
        loop {
            let f = self.next_frame().await?;
            match f.header.opcode {
                Opcode::Ping => self.send(Opcode::Pong, &f.payload).await?,
                Opcode::Pong => {}
                Opcode::Close => bail!("the server closed: {}", describe_close(&f.payload)),
                _ => return Ok(f),
            }
        }
    }

    async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = websocket::parse_frame(&self.buf, MAX_PAYLOAD)? {
                ensure!(f.header.mask.is_none(), "masked frame from the server");
                let payload = self.buf[f.payload.clone()].to_vec();
                self.buf.drain(..f.len());
                return Ok(Frame {
                    header: f.header,
                    payload,
                });
            }
            self.buf.reserve(4096);
            if self.s.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
                bail!("the connection ended (EOF)");
            }
        }
    }

    /// Sends `msg` and returns the next data frame's payload (a text frame is required).
    pub async fn call(&mut self, msg: &[u8]) -> Result<Vec<u8>> {
        self.send_text(msg).await?;
        let f = self.recv().await?;
        ensure!(
            f.header.fin && f.header.opcode == Opcode::Text,
            "expected a whole text frame, got {:?} (fin {})",
            f.header.opcode,
            f.header.fin
        );
        Ok(f.payload)
    }

    /// Sends a call and waits for the answer with the same JSON-RPC `id`, skipping notices
    /// that arrive in between.
    pub async fn call_id(&mut self, id: u64, msg: &[u8]) -> Result<Vec<u8>> {
        self.send_text(msg).await?;
        let want = format!("\"id\":{id}");
        loop {
            let f = self.recv().await?;
            if contains(&f.payload, want.as_bytes()) {
                ensure!(
                    !contains(&f.payload, b"\"error\""),
                    "call {id} failed: {}",
                    String::from_utf8_lossy(&f.payload)
                );
                return Ok(f.payload);
            }
        }
    }

    /// WebSocket close both ways (frames in between are skipped), then TLS close_notify and
    /// the end of the stream, within `limit`.
    pub async fn close(mut self, limit: Duration) -> Result<()> {
        let r = tokio::time::timeout(limit, async {
            let close = websocket::close_payload(close_code::NORMAL, "");
            self.send(Opcode::Close, &close).await?;
            // Until the server's close frame; a server that ends the connection without
            // one (some do) has closed too.
            loop {
                match self.next_frame().await {
                    Ok(f) if f.header.opcode == Opcode::Close => break,
                    Ok(_) => {}
                    Err(_) if self.eof => return anyhow::Ok(()),
                    Err(e) => return Err(e),
                }
            }
            let _ = self.s.shutdown().await;
            let mut rest = [0u8; 4096];
            loop {
                match self.s.read(&mut rest).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    // The WebSocket close handshake is complete, so nothing can be cut
                    // off: a TCP close without TLS close_notify (nginx, at times) is fine.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
            }
            anyhow::Ok(())
        })
        .await;
        r.context("close timed out")?
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn describe_close(payload: &[u8]) -> String {
    if payload.len() >= 2 {
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        format!("code {code} {}", String::from_utf8_lossy(&payload[2..]))
    } else {
        "no code".into()
    }
}

async fn read_head<S: AsyncRead + Unpin + ?Sized>(s: &mut S, buf: &mut Vec<u8>) -> Result<usize> {
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(p + 4);
        }
        ensure!(buf.len() < MAX_HEAD, "response head over {MAX_HEAD} bytes");
        buf.reserve(1024);
        if s.read_buf(buf).await? == 0 {
            bail!("the server closed before answering the upgrade");
        }
    }
}

/// A `101 Switching Protocols` with the right `Sec-WebSocket-Accept`.
fn check_upgrade(head: &[u8]) -> Result<()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head).context("unparsable upgrade response")?;
    let code = resp.code.unwrap_or(0);
    ensure!(
        code == 101,
        "upgrade refused: {code} {}",
        resp.reason.unwrap_or("")
    );
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value)
        .context("101 without Sec-WebSocket-Accept")?;
    ensure!(
        accept == accept_key(WS_KEY).as_bytes(),
        "wrong Sec-WebSocket-Accept"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_answers_are_checked() {
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(WS_KEY)
        );
        check_upgrade(ok.as_bytes()).unwrap();
        let e = check_upgrade(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap_err();
        assert!(format!("{e:#}").contains("503"), "{e:#}");
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
        assert!(check_upgrade(wrong.as_bytes()).is_err());
        assert!(check_upgrade(b"HTTP/1.1 101 OK\r\n\r\n").is_err());
    }
}
