//! Blocking WebSocket clients (tungstenite) through a proxy under test: plain, from a
//! chosen loopback source address, and over rustls trusting one test certificate.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

pub type WsClient = tungstenite::WebSocket<TcpStream>;
pub type WssClient =
    tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

use tungstenite::{Message, WebSocket};

/// How long a client read waits before the test fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` and upgrades; panics (failing the test) if that does not work.
pub fn ws_client(addr: SocketAddr) -> WsClient {
    let s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let (ws, resp) =
        tungstenite::client(format!("ws://{addr}/"), s).expect("upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

/// Connects from 127.0.0.`src` (all of 127/8 is loopback), so clients at different
/// addresses land on different nodes as real clients do, and upgrades.
pub fn ws_client_from(
    src: u8,
    addr: SocketAddr,
    read_timeout: Duration,
) -> Result<WsClient, String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    sock.bind(&SocketAddr::from(([127, 0, 0, src], 0)).into())
        .map_err(|e| format!("bind 127.0.0.{src}: {e}"))?;
    sock.connect(&addr.into())
        .map_err(|e| format!("connect: {e}"))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    tungstenite::client(format!("ws://{addr}/"), s)
        .map(|(ws, _)| ws)
        .map_err(|e| format!("upgrade: {e}"))
}

/// A TLS WebSocket client for `name` at `addr` that trusts only `ca_pem` (the test
/// certificate is its own CA); the error says which step failed.
pub fn wss_client(addr: SocketAddr, name: &str, ca_pem: &[u8]) -> Result<WssClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(c.map_err(|e| format!("CA file: {e}"))?)
            .map_err(|e| format!("CA: {e}"))?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| format!("server name {name}: {e}"))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), server_name)
        .map_err(|e| format!("TLS client: {e}"))?;
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tungstenite::client(
        format!("wss://{name}/"),
        rustls::StreamOwned::new(conn, tcp),
    )
    .map(|(ws, _)| ws)
    .map_err(|e| e.to_string())
}

/// Sends `text` and asserts the same text comes back (the echo node's answer).
pub fn assert_text_echo<S: Read + Write>(ws: &mut WebSocket<S>, text: &str) {
    ws.send(Message::text(text)).expect("send a text message");
    let back = ws.read().expect("read the echo");
    assert_eq!(back.into_text().expect("a text echo").as_str(), text);
}

/// Sends `data` as one binary message and asserts it comes back byte for byte; `ctx` says
/// which case failed.
pub fn assert_binary_echo<S: Read + Write>(ws: &mut WebSocket<S>, data: &[u8], ctx: &str) {
    ws.send(Message::binary(data.to_vec()))
        .expect("send a binary message");
    let back = ws.read().expect("read the echo").into_data();
    assert!(back == data, "{ctx}: large message corrupted");
}
