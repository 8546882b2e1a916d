//! The load generator's clients: TLS 1.3 WebSocket connections through the proxy, each a
//! TCP connect, a full handshake (no resumption), the upgrade, then echoed messages.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{bail, ensure, Result};
use proxy::websocket::{self, close_code, FrameHeader, Opcode};
use proxy_tests::echo::read_head;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        Resumption,
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use super::SERVER_NAME;

/// The message every client sends and expects back.
pub const MESSAGE: &[u8] =
    br#"{"id":1,"method":"call","params":["database","get_dynamic_global_properties",[]]}"#;
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Largest frame a client takes from the server (the echoes are small).
const MAX_PAYLOAD: u64 = 1 << 20;

/// Accepts exactly the bench certificate (byte comparison) and verifies the handshake
/// signatures with it, like any client.
#[derive(Debug)]
pub struct PinnedCert {
    der: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub fn tls_connector(cert_der: CertificateDer<'static>, kx: &str) -> Result<TlsConnector> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if kx == "x25519" {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            der: cert_der,
            provider,
        }))
        .with_no_client_auth();
    // Every connection is a full handshake.
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A client WebSocket over TLS through the proxy.
pub struct WsClient {
    s: TlsStream<TcpStream>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl WsClient {
    /// TCP connect, TLS handshake, upgrade (101 checked).
    pub async fn open(proxy: SocketAddr, tls: &TlsConnector) -> Result<Self> {
        let tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME)?.to_owned();
        let mut s = tls.connect(name, tcp).await?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let n = read_head(&mut s, &mut buf).await?;
        ensure!(
            buf.starts_with(b"HTTP/1.1 101"),
            "upgrade refused: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        buf.drain(..n);
        Ok(Self {
            s,
            buf,
            out: Vec::with_capacity(256),
        })
    }

    async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> Result<()> {
        self.out.clear();
        websocket::encode_frame(&mut self.out, true, opcode, payload, Some(MASK));
        self.s.write_all(&self.out).await?;
        Ok(())
    }

    /// The next frame: its header and (unmasked) payload.
    async fn recv(&mut self) -> Result<(FrameHeader, Vec<u8>)> {
        loop {
            if let Some(f) = websocket::parse_frame(&self.buf, MAX_PAYLOAD)? {
                ensure!(f.header.mask.is_none(), "masked frame from the server");
                let payload = self.buf[f.payload.clone()].to_vec();
                self.buf.drain(..f.len());
                return Ok((f.header, payload));
            }
            self.buf.reserve(4096);
            if self.s.read_buf(&mut self.buf).await? == 0 {
                bail!("eof");
            }
        }
    }

    /// Sends `MESSAGE`, checks the echo.
    pub async fn echo(&mut self) -> Result<()> {
        self.send(Opcode::Text, MESSAGE).await?;
        let (h, payload) = self.recv().await?;
        ensure!(
            h.fin && h.opcode == Opcode::Text && payload == MESSAGE,
            "wrong echo"
        );
        Ok(())
    }

    /// WebSocket close both ways, then TLS close_notify and EOF.
    pub async fn close(mut self) -> Result<()> {
        let close = websocket::close_payload(close_code::NORMAL, "");
        self.send(Opcode::Close, &close).await?;
        let (h, _) = self.recv().await?;
        ensure!(h.opcode == Opcode::Close, "no close frame back");
        let _ = self.s.shutdown().await;
        let mut rest = Vec::new();
        let _ = self.s.read_to_end(&mut rest).await;
        Ok(())
    }
}

pub async fn full_cycle(proxy: SocketAddr, tls: &TlsConnector) -> Result<()> {
    let mut c = WsClient::open(proxy, tls).await?;
    c.echo().await?;
    c.close().await
}
