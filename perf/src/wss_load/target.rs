//! Where the load goes: a `ws://` or `wss://` URL, the address to connect to (resolved from
//! the URL or given), and how the server's certificate is checked.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::Path,
    sync::Arc,
};

use anyhow::{bail, ensure, Context, Result};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        Resumption,
    },
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

/// A parsed `ws://` / `wss://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl WsUrl {
    pub fn parse(url: &str) -> Result<WsUrl> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            bail!("`{url}`: the URL must start with wss:// or ws://");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        ensure!(!authority.is_empty(), "`{url}`: no host");
        ensure!(
            !authority.contains('@'),
            "`{url}`: credentials in the URL are not supported"
        );
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .with_context(|| format!("`{url}`: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().with_context(|| format!("`{url}`: bad port"))?,
                None if after.is_empty() => default_port,
                None => bail!("`{url}`: junk after the host"),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .with_context(|| format!("`{url}`: bad port `{p}`"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        ensure!(!host.is_empty(), "`{url}`: no host");
        Ok(WsUrl {
            tls,
            host,
            port,
            path: path.to_string(),
        })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// How the server's certificate is checked.
pub enum Trust {
    /// The Mozilla roots (webpki-roots): a public deployment.
    PublicRoots,
    /// CA certificates from a PEM file.
    CaFile(std::path::PathBuf),
    /// Exactly this certificate (byte comparison); the handshake signature is still verified.
    Pinned(CertificateDer<'static>),
    /// Anything (the handshake signature is still verified): a lab with a self-signed cert.
    Insecure,
}

/// Everything a client needs to reach the server.
pub struct Target {
    pub url: WsUrl,
    pub addr: SocketAddr,
    /// `None` for `ws://`.
    pub tls: Option<TlsConnector>,
    pub server_name: ServerName<'static>,
}

impl Target {
    /// `connect`: the address to use instead of resolving the URL's host (the URL's name is
    /// still sent as SNI and Host). `kx`: `x25519` or `default` (rustls' list).
    pub fn new(url: &str, connect: Option<SocketAddr>, trust: Trust, kx: &str) -> Result<Target> {
        let url = WsUrl::parse(url)?;
        let addr = match connect {
            Some(a) => a,
            None => (url.host.as_str(), url.port)
                .to_socket_addrs()
                .with_context(|| format!("resolving {}", url.host))?
                .next()
                .with_context(|| format!("{} has no address", url.host))?,
        };
        let server_name = ServerName::try_from(url.host.clone())
            .with_context(|| format!("`{}` is not a valid server name", url.host))?;
        let tls = if url.tls {
            Some(tls_connector(trust, kx)?)
        } else {
            None
        };
        Ok(Target {
            url,
            addr,
            tls,
            server_name,
        })
    }
}

/// A TLS 1.3 client configuration without session resumption: every connection is a full
/// handshake, as a new visitor's is.
pub fn tls_connector(trust: Trust, kx: &str) -> Result<TlsConnector> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    match kx {
        "x25519" => provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        "default" => {}
        other => bail!("unknown key exchange `{other}` (x25519 or default)"),
    }
    let provider = Arc::new(provider);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match trust {
        Trust::PublicRoots => {
            let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => builder
            .with_root_certificates(load_roots(&path)?)
            .with_no_client_auth(),
        Trust::Pinned(der) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                pinned: Some(der),
                provider,
            }))
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                pinned: None,
                provider,
            }))
            .with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("{}: bad PEM", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
        n += 1;
    }
    ensure!(n > 0, "{}: no certificate in it", path.display());
    Ok(roots)
}

/// A pinned certificate (or, with none, any certificate); handshake signatures are verified
/// either way, so the client does the server-side work a real client causes.
#[derive(Debug)]
struct Verifier {
    pinned: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(der) if end_entity.as_ref() != der.as_ref() => Err(
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ),
            _ => Ok(ServerCertVerified::assertion()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_reject_junk() {
        let u = WsUrl::parse("wss://node.example.org/ws").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "node.example.org", 443, "/ws")
        );
        assert_eq!(u.host_header(), "node.example.org");
        let u = WsUrl::parse("ws://127.0.0.1:8090").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8090, "/"));
        assert_eq!(u.host_header(), "127.0.0.1:8090");
        let u = WsUrl::parse("wss://[::1]:9443/a?b=c").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9443, "/a?b=c")
        );
        assert_eq!(u.host_header(), "[::1]:9443");
        for bad in [
            "https://x/",
            "wss://",
            "wss://:443/",
            "wss://h:port/",
            "wss://u@h/",
            "wss://[::1/",
        ] {
            assert!(WsUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
