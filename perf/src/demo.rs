//! The demo's `wss://` path (`cargo xtask demo`, `src/bin/demo.rs`): a demo CA and a
//! certificate in certbot's layout, a link from this host into the balancer namespace so
//! a browser here can open the proxy's `/stats`, and the clients that show the path works
//! (a WebSocket client that subscribes and says which node it landed on, and an HTTPS GET).
//!
//! ```text
//!  this host: xdpdemo-host (198.51.100.249/30) ══ lb-h (198.51.100.250/30) [balancer, VIP 203.0.113.10 on lo]
//!             route 203.0.113.10/32 via 198.51.100.250
//! ```
//! Documentation addresses only, and a /30 this host has no route for yet (the first free
//! of [`LINK_CANDIDATES`]: machines do use documentation ranges, e.g. a lab's 192.0.2.0/24);
//! the balancer namespace gets no route beyond that /30.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message};

use proxy_tests::netns::NetNs;

/// The host's end of the link into the balancer namespace.
pub const HOST_DEV: &str = "xdpdemo-host";
/// The balancer's end of that link.
pub const LB_HOST_DEV: &str = "lb-h";
/// The /30s the host link may use (network addresses), in order of preference: host `.1`,
/// balancer `.2` of each.
pub const LINK_CANDIDATES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 248),
    Ipv4Addr::new(203, 0, 113, 248),
    Ipv4Addr::new(192, 0, 2, 248),
];

/// The demo's certificate files, in certbot's layout.
#[derive(Debug, Clone)]
pub struct DemoCert {
    /// `<dir>/fullchain.pem` and `<dir>/privkey.pem`, as a `[listener.tls]` entry names it.
    pub dir: PathBuf,
}

impl DemoCert {
    /// The demo CA (certbot's `chain.pem`): what a client trusts (`curl --cacert`).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("chain.pem")
    }

    /// Writes a new demo CA and a certificate it signs for `server_name` and `ip` into
    /// `dir`: `cert.pem`, `chain.pem` (the CA), `fullchain.pem`, `privkey.pem` (mode 0600).
    pub fn generate(dir: &Path, server_name: &str, ip: Ipv4Addr) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "xdp-proxy demo CA (this machine only)");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key)?;

        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec![server_name.to_string(), ip.to_string()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, server_name.to_string());
        let leaf = leaf.signed_by(&key, &ca, &ca_key)?;

        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write("cert.pem", &leaf.pem())?;
        write("chain.pem", &ca.pem())?;
        write("fullchain.pem", &format!("{}{}", leaf.pem(), ca.pem()))?;
        // The key is readable by its owner only, from the moment it exists.
        let private = dir.join("privkey.pem");
        let _ = std::fs::remove_file(&private);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&private)
            .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()))
            .with_context(|| format!("writing {}", private.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// A rustls client config that trusts only the demo CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let pem = std::fs::read(self.ca()).with_context(|| format!("{}", self.ca().display()))?;
        let ca = CertificateDer::from_pem_slice(&pem)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", self.ca().display()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca)?;
        Ok(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }

    fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let name = ServerName::try_from(server_name.to_string())?;
        let conn = rustls::ClientConnection::new(self.client_config()?, name)?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }
}

/// The config's first `tls` listener: where `wss://` clients go.
#[derive(Debug, Clone)]
pub struct WssSite {
    pub listener: String,
    /// The listener's address (an IPv4 VIP).
    pub addr: SocketAddr,
    /// Its first certificate's server name.
    pub server_name: String,
    pub cert: DemoCert,
}

impl WssSite {
    /// The first `tls` listener of `config` with an IPv4 address, if any.
    pub fn from_config(config: &proxy::config::Config) -> Option<Self> {
        config.listeners.iter().find_map(|l| {
            let cert = l.tls.as_ref()?.certificates.first()?;
            l.address.is_ipv4().then(|| Self {
                listener: l.name.clone(),
                addr: l.address,
                server_name: cert.server_name.clone(),
                cert: DemoCert {
                    dir: cert.dir.clone(),
                },
            })
        })
    }

    pub fn vip(&self) -> Ipv4Addr {
        match self.addr.ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => unreachable!("from_config keeps IPv4 listeners only"),
        }
    }
}

/// Runs `ip` with `args` in this (the host's) namespace.
fn host_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this host routes `addr` by anything more specific than its default route.
fn host_routes(addr: Ipv4Addr) -> Result<bool> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "match", &addr.to_string()])
        .output()
        .context("running ip (iproute2)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with("default")))
}

/// The veth from this host into the balancer namespace and the host's route to `vip`
/// through it. Dropping it deletes the veth (both ends) and with it the route.
pub struct HostLink {
    /// This host's address on the link.
    pub host_addr: Ipv4Addr,
    /// The balancer's address on the link (the route's next hop).
    pub lb_addr: Ipv4Addr,
}

impl HostLink {
    pub fn new(lb: &NetNs, vip: Ipv4Addr) -> Result<Self> {
        // Left over from a demo that was killed: the name (and its /30) must be free.
        let _ = host_ip(&["link", "del", HOST_DEV]);
        let mut free = None;
        for net in LINK_CANDIDATES {
            let [a, b, c, d] = net.octets();
            let (host, peer) = (Ipv4Addr::new(a, b, c, d + 1), Ipv4Addr::new(a, b, c, d + 2));
            if !host_routes(host)? && !host_routes(peer)? {
                free = Some((host, peer));
                break;
            }
        }
        let Some((host_addr, lb_addr)) = free else {
            bail!(
                "this host already routes every /30 the demo could use for its link ({LINK_CANDIDATES:?})"
            );
        };
        host_ip(&[
            "link",
            "add",
            HOST_DEV,
            "type",
            "veth",
            "peer",
            "name",
            LB_HOST_DEV,
            "netns",
            lb.name(),
        ])?;
        let link = Self { host_addr, lb_addr };
        host_ip(&["addr", "add", &format!("{host_addr}/30"), "dev", HOST_DEV])?;
        host_ip(&["link", "set", HOST_DEV, "up"])?;
        lb.ip(&["addr", "add", &format!("{lb_addr}/30"), "dev", LB_HOST_DEV])?;
        lb.ip(&["link", "set", LB_HOST_DEV, "up"])?;
        host_ip(&[
            "route",
            "replace",
            &format!("{vip}/32"),
            "via",
            &lb_addr.to_string(),
            "dev",
            HOST_DEV,
        ])?;
        Ok(link)
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // Deleting one end deletes the pair and the route through it.
        let _ = host_ip(&["link", "del", HOST_DEV]);
    }
}

/// What a `wss://` client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    /// The node that answered (its simulator name).
    pub node: String,
    /// The head block number in the first subscription notice.
    pub head: u64,
}

fn read_json(
    ws: &mut tungstenite::WebSocket<impl Read + Write>,
    mut wanted: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Message::Text(text) = ws.read().context("reading from the WebSocket")? {
            let v: Value = serde_json::from_str(&text).context("a message that is not JSON")?;
            if wanted(&v) {
                return Ok(v);
            }
        }
    }
    bail!("no expected message within 5 s")
}

/// Connects to `wss://<server_name>/ws` at `addr` (trusting only the demo CA), asks which
/// node it is talking to, subscribes (`set_subscribe_callback`) and waits for a notice.
pub fn wss_landing(cert: &DemoCert, addr: SocketAddr, server_name: &str) -> Result<Landing> {
    let tls = cert.connect(addr, server_name)?;
    let (mut ws, response) = tungstenite::client(format!("wss://{server_name}/ws"), tls)
        .context("WebSocket upgrade through the proxy")?;
    if response.status() != 101 {
        bail!("upgrade answered {}", response.status());
    }
    let call = |id: u32, api: &str, method: &str, args: Value| {
        Message::text(
            serde_json::json!({"id": id, "method": "call", "params": [api, method, args]})
                .to_string(),
        )
    };
    ws.send(call(1, "login", "node_sim_name", serde_json::json!([])))?;
    let answer = read_json(&mut ws, |v| v["id"] == 1)?;
    let node = answer["result"]
        .as_str()
        .with_context(|| format!("node_sim_name answered {answer}"))?
        .to_string();
    ws.send(call(
        2,
        "database",
        "set_subscribe_callback",
        serde_json::json!([7, true]),
    ))?;
    read_json(&mut ws, |v| v["id"] == 2)?;
    let notice = read_json(&mut ws, |v| v["method"] == "notice" && v["params"][0] == 7)?;
    let head = notice["params"][1][0][0]["head_block_number"]
        .as_u64()
        .with_context(|| format!("a notice without a head: {notice}"))?;
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(Landing { node, head })
}

/// `GET <path>` over HTTPS at `addr` with SNI `server_name`: the status line and the body.
pub fn https_get(
    cert: &DemoCert,
    addr: SocketAddr,
    server_name: &str,
    path: &str,
) -> Result<(String, Vec<u8>)> {
    let mut tls = cert.connect(addr, server_name)?;
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
    )?;
    tls.flush()?;
    let mut all = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            // The proxy closes after the answer without a TLS close_notify.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !all.is_empty() => break,
            Err(e) => return Err(e).context("reading the answer"),
        }
    }
    let text = String::from_utf8_lossy(&all);
    let Some((head, _)) = text.split_once("\r\n\r\n") else {
        bail!("no complete HTTP answer ({} bytes)", all.len());
    };
    let status = head.lines().next().unwrap_or_default().to_string();
    let body = all[head.len() + 4..].to_vec();
    Ok((status, body))
}
