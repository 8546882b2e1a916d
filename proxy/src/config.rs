//! The TOML configuration: balancer settings, listeners (VIPs) and backend pools.
//!
//! Parsing is strict (unknown keys are errors, with line and column from the TOML parser);
//! `validate` then checks what TOML cannot: names, families, ranges, references.
//!
//! A leaf: it imports nothing but `maglev`, so every other module can depend on it. Checks
//! that read the files a config names (certificates) live with the code that reads them and
//! are handed to `Config::load`.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub mod health;

pub use health::HealthConfig;

use crate::maglev::{is_prime, MAX_RING_SIZE};

/// Root of all pin directories (bpffs).
pub const BPFFS: &str = "/sys/fs/bpf";
/// Default path of the admin API's Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/xdp-proxy/admin.sock";

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type (the message has line and column).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// The file parses but is not a usable configuration.
    #[error("{path}: invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, problems: Vec<String> },
}

fn default_ring_size() -> u32 {
    proxy_common::DEFAULT_RING_SIZE
}
fn default_max_flows() -> u32 {
    proxy_common::DEFAULT_MAX_FLOWS
}
fn default_nat_ports() -> [u16; 2] {
    // Every unprivileged port, so a client's own source port can be kept (`nat_ports` in
    // the XDP program): clients' ephemeral ranges (Linux 32768-60999, others 49152-65535)
    // are inside it. The NAT address is dedicated to NAT, so the balancer's own
    // connections never take ports from it.
    [1_024, 65_535]
}
fn default_tcp_idle() -> u64 {
    900
}
fn default_udp_idle() -> u64 {
    60
}
fn default_closing() -> u64 {
    10
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/xdp-proxy/default")
}
fn default_weight() -> u32 {
    100
}

/// One address or a list of them (`snat_v4 = "192.0.2.1"` or `snat_v4 = ["192.0.2.1", ...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses<A>(pub Vec<A>);

impl<A> Default for Addresses<A> {
    fn default() -> Self {
        Addresses(Vec::new())
    }
}

impl<A> Addresses<A> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, A> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<'de, A> Deserialize<'de> for Addresses<A>
where
    A: std::str::FromStr,
    A::Err: std::fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<A>(std::marker::PhantomData<A>);
        impl<'de, A> serde::de::Visitor<'de> for Visit<A>
        where
            A: std::str::FromStr,
            A::Err: std::fmt::Display,
        {
            type Value = Addresses<A>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an IP address or a list of IP addresses")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse()
                    .map(|a| Addresses(vec![a]))
                    .map_err(|e| E::custom(format!("`{v}`: {e}")))
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<Self::Value, S::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(
                        v.parse()
                            .map_err(|e| serde::de::Error::custom(format!("`{v}`: {e}")))?,
                    );
                }
                Ok(Addresses(out))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// `[balancer]`: the kernel data plane.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    /// Interfaces the XDP program attaches to: where clients arrive and where backends answer.
    pub interfaces: Vec<String>,
    /// Source address(es) of NAT'ed packets towards IPv4 backends; each must route back to
    /// this host. One address or a list of up to four: every address adds a full port range
    /// to each backend's NAT port space.
    #[serde(default)]
    pub snat_v4: Addresses<Ipv4Addr>,
    /// The same towards IPv6 backends.
    #[serde(default)]
    pub snat_v6: Addresses<Ipv6Addr>,
    /// NAT source port range, inclusive.
    #[serde(default = "default_nat_ports")]
    pub nat_ports: [u16; 2],
    /// Maglev ring size per VIP (a prime).
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    /// Flow table capacity (entries; LRU beyond that).
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_secs: u64,
    #[serde(default = "default_udp_idle")]
    pub udp_idle_timeout_secs: u64,
    /// How long a TCP flow is kept after FIN both ways.
    #[serde(default = "default_closing")]
    pub closing_timeout_secs: u64,
    /// bpffs directory for this instance's pinned maps (and pinned XDP links).
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Leave the XDP program attached when `proxy run` exits (its links are pinned in
    /// `pin_dir`), so L4 flows keep forwarding through restarts and upgrades; the next start
    /// adopts it. `false`: detach at exit. `proxy detach` removes it either way.
    #[serde(default = "default_true")]
    pub keep_attached: bool,
}

/// Transport protocol of a listener.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How a listener is served.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Forwarded by XDP (full NAT).
    L4,
    /// TLS terminated in userspace (XDP passes it up).
    Tls,
    /// Plain WebSocket terminated in userspace (XDP passes it up).
    Ws,
}

/// What the flow hash covers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HashKey {
    /// Addresses, ports and protocol: connections spread independently.
    #[default]
    FiveTuple,
    /// The client address only: a client keeps its node across connections.
    Source,
}

/// `[[listener]]`: one VIP.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    pub mode: ListenerMode,
    pub pool: String,
    #[serde(default)]
    pub hash: HashKey,
    /// `tls`/`ws`: request paths accepted for the WebSocket upgrade (or JSON-RPC POST).
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// `tls`/`ws`: also pass plain JSON-RPC over HTTP POST through.
    #[serde(default = "default_true")]
    pub allow_json_rpc_post: bool,
    /// `tls` only: certificates by server name.
    pub tls: Option<ListenerTls>,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}
fn default_paths() -> Vec<String> {
    vec!["/".into(), "/ws".into()]
}
fn default_true() -> bool {
    true
}

/// `[listener.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub certificates: Vec<CertConfig>,
    /// Served when SNI is missing or unknown; without it such handshakes fail (SNI forced).
    pub default_certificate: Option<String>,
}

/// One server name and its certbot directory (`fullchain.pem`, `privkey.pem`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    pub server_name: String,
    pub dir: PathBuf,
}

/// `--io` / `terminator.io`. The default is epoll because the terminator bench measured
/// it faster here (3,606 vs 2,909 TLS connections/s, 70.5k vs 60.2k messages/s) and lighter
/// per idle connection (11.3 KB vs 15.1 KB); `auto` picks io_uring when the kernel allows it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoChoice {
    Auto,
    Uring,
    #[default]
    Epoll,
}

/// `[terminator]`: the userspace TLS/WebSocket side.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TerminatorConfig {
    pub io: IoChoice,
    /// Worker threads (one runtime each); 0 = one per core.
    pub workers: usize,
    /// A proxied connection holds two file descriptors; keep this under half the fd limit.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_head_bytes: usize,
    pub handshake_timeout_secs: u64,
    pub connect_timeout_ms: u64,
    pub idle_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// After an upgrade, how long the old process lets its live connections run (wallet
    /// sessions last hours) before it closes them (WebSocket close 1001, at a frame boundary).
    pub upgrade_grace_secs: u64,
    /// Those closes are spread over this many seconds, so the clients do not all reconnect
    /// at once.
    pub upgrade_close_window_secs: u64,
}

impl Default for TerminatorConfig {
    fn default() -> Self {
        Self {
            io: IoChoice::Epoll,
            workers: 0,
            max_connections: 8_000,
            max_connections_per_client: 64,
            max_head_bytes: 8 * 1024,
            handshake_timeout_secs: 10,
            connect_timeout_ms: 2_000,
            idle_timeout_secs: 600,
            shutdown_grace_secs: 15,
            upgrade_grace_secs: 6 * 3600,
            upgrade_close_window_secs: 30,
        }
    }
}

/// One backend node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Stable name: it decides the node's place on the ring and is what `/stats` shows.
    pub name: String,
    pub address: SocketAddr,
    /// Relative weight; 0 drains the node (no new flows, existing ones continue).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `[pools.NAME]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub backends: Vec<BackendConfig>,
    /// Active checks; without them every backend counts as healthy.
    pub health: Option<HealthConfig>,
}

/// `[admin]`: the operator's side.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unix socket of the admin API (`proxy backends ...`).
    pub socket: PathBuf,
    /// Prometheus `/metrics` listener; keep it on a private address.
    pub metrics: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            metrics: None,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub balancer: BalancerConfig,
    #[serde(default)]
    pub terminator: TerminatorConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(rename = "listener", default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
}

impl Config {
    /// Reads, parses and validates a file, then checks the files it names with
    /// `file_checks` (certificates: `terminator::tls::check_certificates`). Those checks are
    /// passed in so the config does not depend on the code that reads the files; their
    /// problems name keys like the others and get the same line and column.
    pub fn load(
        path: &Path,
        file_checks: impl FnOnce(&Config) -> Vec<String>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        let config = Self::parse(&text, &origin)?;
        let problems = file_checks(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin,
                problems: locate_all(&text, problems),
            })
        }
    }

    /// Parses and validates; `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems: locate_all(text, problems),
            })
        }
    }

    /// Every semantic problem, each naming the key it is about.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let b = &self.balancer;
        if b.interfaces.is_empty() {
            p.push("balancer.interfaces: list at least one interface to attach XDP to".into());
        }
        if !is_prime(b.ring_size) || b.ring_size > MAX_RING_SIZE {
            p.push(format!(
                "balancer.ring_size = {}: must be a prime up to {MAX_RING_SIZE} (e.g. 65537, 131071)",
                b.ring_size
            ));
        } else if 2 * (proxy_common::MAX_VIPS as u64) * (b.ring_size as u64) > u32::MAX as u64 {
            p.push(format!(
                "balancer.ring_size = {}: too large for {} VIPs",
                b.ring_size,
                proxy_common::MAX_VIPS
            ));
        }
        let [lo, hi] = b.nat_ports;
        if lo == 0 || lo > hi {
            p.push(format!(
                "balancer.nat_ports = [{lo}, {hi}]: need 1 <= first <= last"
            ));
        }
        let max = proxy_common::ports::MAX_SNAT_ADDRS;
        for (key, list) in [
            (
                "snat_v4",
                b.snat_v4.iter().map(|a| IpAddr::V4(*a)).collect::<Vec<_>>(),
            ),
            (
                "snat_v6",
                b.snat_v6.iter().map(|a| IpAddr::V6(*a)).collect(),
            ),
        ] {
            if list.len() > max {
                p.push(format!(
                    "balancer.{key}: at most {max} addresses ({} given)",
                    list.len()
                ));
            }
            let mut seen = HashSet::new();
            for a in &list {
                if !seen.insert(a) {
                    p.push(format!("balancer.{key}: {a} is listed twice"));
                }
                if a.is_unspecified() || a.is_multicast() {
                    p.push(format!("balancer.{key}: {a} cannot be a source address"));
                }
            }
        }
        if b.max_flows < 1024 {
            p.push(format!(
                "balancer.max_flows = {}: at least 1024",
                b.max_flows
            ));
        }
        if b.tcp_idle_timeout_secs == 0 || b.udp_idle_timeout_secs == 0 {
            p.push("balancer.*_idle_timeout_secs: must be > 0".into());
        }
        if !b.pin_dir.starts_with(BPFFS) {
            p.push(format!(
                "balancer.pin_dir = {:?}: must be under {}",
                b.pin_dir, BPFFS
            ));
        }
        let t = &self.terminator;
        if t.max_connections == 0 || t.max_connections_per_client == 0 {
            p.push("terminator.max_connections*: must be > 0".into());
        }
        if t.max_head_bytes < 1024 || t.max_head_bytes > 64 * 1024 {
            p.push(format!(
                "terminator.max_head_bytes = {}: between 1024 and 65536",
                t.max_head_bytes
            ));
        }
        if t.handshake_timeout_secs == 0 || t.connect_timeout_ms == 0 || t.idle_timeout_secs == 0 {
            p.push("terminator.*timeout*: must be > 0".into());
        }
        if self.listeners.len() > proxy_common::MAX_VIPS as usize {
            p.push(format!(
                "listener: at most {} listeners",
                proxy_common::MAX_VIPS
            ));
        }
        let mut names = HashSet::new();
        let mut vips = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listener[{i}]");
            if !names.insert(&l.name) {
                p.push(format!("{at}.name: duplicate listener name"));
            }
            if !vips.insert((l.address, l.protocol)) {
                p.push(format!(
                    "{at}.address: {} / {:?} is used by another listener",
                    l.address, l.protocol
                ));
            }
            if l.address.port() == 0 {
                p.push(format!("{at}.address: port 0 is not a listening port"));
            }
            let Some(pool) = self.pools.get(&l.pool) else {
                p.push(format!(
                    "{at}.pool: no pool named `{}` (known: {})",
                    l.pool,
                    self.pool_names()
                ));
                continue;
            };
            match (l.mode, &l.tls) {
                (ListenerMode::Tls, None) => p.push(format!(
                    "{at}: mode = \"tls\" needs [listener.tls] certificates"
                )),
                (ListenerMode::Tls, Some(t)) => {
                    if t.certificates.is_empty() {
                        p.push(format!("{at}.tls.certificates: list at least one"));
                    }
                    if let Some(d) = &t.default_certificate {
                        if !t.certificates.iter().any(|c| &c.server_name == d) {
                            p.push(format!("{at}.tls.default_certificate: `{d}` is not one of the certificates' server names"));
                        }
                    }
                }
                (_, Some(_)) => p.push(format!("{at}.tls: only for mode = \"tls\"")),
                _ => {}
            }
            if l.mode != ListenerMode::L4 && l.protocol != Protocol::Tcp {
                p.push(format!("{at}.protocol: tls/ws listeners are TCP"));
            }
            if l.paths.iter().any(|p| !p.starts_with('/')) {
                p.push(format!("{at}.paths: every path starts with `/`"));
            }
            if l.mode == ListenerMode::L4 {
                let family_v4 = l.address.is_ipv4();
                if family_v4 && b.snat_v4.is_empty() {
                    p.push(format!("{at}: an IPv4 l4 listener needs balancer.snat_v4"));
                }
                if !family_v4 && b.snat_v6.is_empty() {
                    p.push(format!("{at}: an IPv6 l4 listener needs balancer.snat_v6"));
                }
                for be in &pool.backends {
                    if be.address.is_ipv4() != family_v4 {
                        p.push(format!(
                            "{at}: backend `{}` of pool `{}` is {} but the listener is {} (full NAT does not translate families)",
                            be.name,
                            l.pool,
                            family(be.address.ip()),
                            family(l.address.ip())
                        ));
                    }
                }
            }
        }
        let mut backend_total = 0usize;
        for (name, pool) in &self.pools {
            let mut seen = HashSet::new();
            let mut addrs = HashSet::new();
            for (i, be) in pool.backends.iter().enumerate() {
                let at = format!("pools.{name}.backends[{i}]");
                if be.name.is_empty() || be.name.len() > 64 {
                    p.push(format!("{at}.name: 1 to 64 characters"));
                }
                if !seen.insert(&be.name) {
                    p.push(format!(
                        "{at}.name: duplicate backend name `{}` in pool `{name}`",
                        be.name
                    ));
                }
                if !addrs.insert(be.address) {
                    p.push(format!(
                        "{at}.address: {} appears twice in pool `{name}`",
                        be.address
                    ));
                }
                if be.address.port() == 0 {
                    p.push(format!("{at}.address: port must be 1-65535"));
                }
                if be.weight > 1_000_000 {
                    p.push(format!("{at}.weight = {}: at most 1000000", be.weight));
                }
            }
            backend_total += pool.backends.len();
            if let Some(h) = &pool.health {
                p.extend(h.problems(&format!("pools.{name}.health")));
            }
        }
        if backend_total > proxy_common::MAX_BACKENDS as usize {
            p.push(format!(
                "pools: {backend_total} backends in all, at most {}",
                proxy_common::MAX_BACKENDS
            ));
        }
        p
    }

    fn pool_names(&self) -> String {
        let names: Vec<&str> = self.pools.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// Prefixes each problem with `line:column` of the key it names (the problem text starts
/// with a dotted key path such as `pools.eu.backends[1].name`).
fn locate_all(text: &str, problems: Vec<String>) -> Vec<String> {
    let doc = toml_edit::ImDocument::parse(text).ok();
    problems
        .into_iter()
        .map(|p| {
            let path = p.split([':', ' ']).next().unwrap_or("");
            match doc
                .as_ref()
                .and_then(|d| locate(d, path))
                .map(|off| line_col(text, off))
            {
                Some((line, col)) => format!("line {line}, column {col}: {p}"),
                None => p,
            }
        })
        .collect()
}

/// Byte offset of the item a dotted path (`a.b[2].c`) names, as precisely as the document
/// allows (the key itself when it exists, else the closest enclosing item).
fn locate(doc: &toml_edit::ImDocument<&str>, path: &str) -> Option<usize> {
    use toml_edit::{Item, TableLike, Value};
    let mut table: Option<&dyn TableLike> = Some(doc.as_table());
    let mut best = None;
    let segs: Vec<&str> = path.split('.').collect();
    for (n, seg) in segs.iter().enumerate() {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*seg, None),
        };
        let Some((k, item)) = table.and_then(|t| t.get_key_value(key)) else {
            return best;
        };
        best = k.span().map(|r| r.start).or(best);
        table = item.as_table_like();
        if let Some(i) = index {
            match item {
                Item::ArrayOfTables(a) => {
                    let t = a.get(i)?;
                    best = t.span().map(|r| r.start).or(best);
                    table = Some(t as &dyn TableLike);
                }
                Item::Value(Value::Array(arr)) => {
                    let v = arr.get(i)?;
                    best = v.span().map(|r| r.start).or(best);
                    return walk_inline(v, &segs[n + 1..].join("."), best);
                }
                _ => return best,
            }
        }
    }
    best
}

fn walk_inline(v: &toml_edit::Value, rest: &str, best: Option<usize>) -> Option<usize> {
    let rest = rest.trim_start_matches('.');
    if rest.is_empty() {
        return best;
    }
    let key = rest.split(['.', '[']).next().unwrap_or(rest);
    match v.as_inline_table().and_then(|t| t.get_key_value(key)) {
        Some((k, _)) => k.span().map(|r| r.start).or(best),
        None => best,
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|nl| offset - nl)
        .unwrap_or(offset + 1);
    (line, col)
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid config; other modules' tests build on it too.
    pub(crate) const GOOD: &str = r#"
[balancer]
interfaces = ["eth0"]
snat_v4 = "192.0.2.254"

[[listener]]
name = "rpc"
address = "203.0.113.10:8090"
mode = "l4"
pool = "eu"

[pools.eu]
backends = [
  { name = "node-a", address = "192.0.2.11:8090", weight = 100 },
  { name = "node-b", address = "192.0.2.12:8090" },
]
"#;

    /// A config for the balancer's and the reload's tests: `[balancer]` as in [`GOOD`] with a
    /// 1009-slot ring (in-memory rings stay small), the `l4` listener `rpc` on
    /// 203.0.113.10:8090 with backends from `rpc_pool`, then `rest` (listeners, pools).
    pub(crate) fn config_with_rpc(rpc_pool: &str, rest: &str) -> String {
        format!(
            r#"
[balancer]
interfaces = ["eth0"]
snat_v4 = "192.0.2.254"
ring_size = 1009

[[listener]]
name = "rpc"
address = "203.0.113.10:8090"
mode = "l4"
pool = "{rpc_pool}"
{rest}"#
        )
    }

    /// (what is wrong, the edit to GOOD, the exact first line of the report).
    const BAD: &[(&str, &str, &str, &str)] = &[
        ("duplicate backend name", "node-b", "node-a",
         "line 15, column 5: pools.eu.backends[1].name: duplicate backend name `node-a` in pool `eu`"),
        ("ring size not prime", "snat_v4 = \"192.0.2.254\"", "snat_v4 = \"192.0.2.254\"\nring_size = 65536",
         "line 5, column 1: balancer.ring_size = 65536: must be a prime up to 16777213 (e.g. 65537, 131071)"),
        ("unknown pool", "pool = \"eu\"", "pool = \"us\"",
         "line 10, column 1: listener[0].pool: no pool named `us` (known: eu)"),
        ("no interfaces", "interfaces = [\"eth0\"]", "interfaces = []",
         "line 3, column 1: balancer.interfaces: list at least one interface to attach XDP to"),
        ("nat ports reversed", "snat_v4 = \"192.0.2.254\"", "snat_v4 = \"192.0.2.254\"\nnat_ports = [40000, 30000]",
         "line 5, column 1: balancer.nat_ports = [40000, 30000]: need 1 <= first <= last"),
        ("pin dir outside bpffs", "snat_v4 = \"192.0.2.254\"", "snat_v4 = \"192.0.2.254\"\npin_dir = \"/tmp/x\"",
         "line 5, column 1: balancer.pin_dir = \"/tmp/x\": must be under /sys/fs/bpf"),
        ("missing snat", "snat_v4 = \"192.0.2.254\"", "",
         "line 6, column 1: listener[0]: an IPv4 l4 listener needs balancer.snat_v4"),
        ("listener port 0", "203.0.113.10:8090", "203.0.113.10:0",
         "line 8, column 1: listener[0].address: port 0 is not a listening port"),
        ("backend port 0", "192.0.2.12:8090", "192.0.2.12:0",
         "line 15, column 22: pools.eu.backends[1].address: port must be 1-65535"),
        ("weight too large", "weight = 100", "weight = 2000000",
         "line 14, column 51: pools.eu.backends[0].weight = 2000000: at most 1000000"),
        ("same backend address twice", "192.0.2.12:8090", "192.0.2.11:8090",
         "line 15, column 22: pools.eu.backends[1].address: 192.0.2.11:8090 appears twice in pool `eu`"),
        ("family mismatch", "192.0.2.12:8090", "[2001:db8::12]:8090",
         "line 6, column 1: listener[0]: backend `node-b` of pool `eu` is IPv6 but the listener is IPv4 (full NAT does not translate families)"),
        ("tls without certificates", "mode = \"l4\"", "mode = \"tls\"",
         "line 6, column 1: listener[0]: mode = \"tls\" needs [listener.tls] certificates"),
        ("path without slash", "pool = \"eu\"", "pool = \"eu\"\npaths = [\"ws\"]",
         "line 11, column 1: listener[0].paths: every path starts with `/`"),
        ("health interval too short", "]\n\"#", "]\n[pools.eu.health]\ncheck = \"tcp\"\ninterval_ms = 10\n\"#",
         "line 19, column 1: pools.eu.health.interval_ms = 10: at least 100"),
        ("empty backend name", "\"node-a\"", "\"\"",
         "line 14, column 5: pools.eu.backends[0].name: 1 to 64 characters"),
        ("too many snat addresses", "snat_v4 = \"192.0.2.254\"",
         "snat_v4 = [\"192.0.2.250\", \"192.0.2.251\", \"192.0.2.252\", \"192.0.2.253\", \"192.0.2.254\"]",
         "line 4, column 1: balancer.snat_v4: at most 4 addresses (5 given)"),
        ("snat address twice", "snat_v4 = \"192.0.2.254\"",
         "snat_v4 = [\"192.0.2.254\", \"192.0.2.254\"]",
         "line 4, column 1: balancer.snat_v4: 192.0.2.254 is listed twice"),
    ];

    #[test]
    fn snat_takes_one_address_or_a_list() {
        let one: Config = toml::from_str(GOOD).unwrap();
        assert_eq!(one.balancer.snat_v4.0, vec![Ipv4Addr::new(192, 0, 2, 254)]);
        let text = GOOD.replace(
            "snat_v4 = \"192.0.2.254\"",
            "snat_v4 = [\"192.0.2.254\", \"192.0.2.253\"]\nsnat_v6 = \"2001:db8::1\"",
        );
        let two: Config = toml::from_str(&text).unwrap();
        assert_eq!(two.balancer.snat_v4.len(), 2);
        assert!(two.problems().is_empty(), "{:?}", two.problems());
        let bad = GOOD.replace("192.0.2.254", "192.0.2.300");
        let err = toml::from_str::<Config>(&bad).unwrap_err().to_string();
        assert!(
            err.contains("`192.0.2.300`") && err.contains("invalid IPv4 address syntax"),
            "{err}"
        );
    }

    #[test]
    fn bad_configs_get_exact_messages() {
        assert!(BAD.len() >= 15);
        for (what, from, to, want) in BAD {
            let base = format!("{GOOD}\"#");
            let text = base.replacen(from, to, 1);
            let text = text.trim_end_matches("\"#");
            assert_ne!(text, GOOD.trim_end(), "{what}: the edit did not apply");
            let err = Config::parse(text, "bad.toml").expect_err(what).to_string();
            let first = err.lines().nth(1).unwrap_or("").trim_start_matches("  - ");
            assert_eq!(first, *want, "{what}: full report:\n{err}");
        }
    }

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(GOOD, "good.toml").unwrap();
        assert_eq!(c.balancer.ring_size, 65_537);
        assert_eq!(c.balancer.nat_ports, [1_024, 65_535]);
        assert_eq!(c.listeners[0].protocol, Protocol::Tcp);
        assert_eq!(c.listeners[0].hash, HashKey::FiveTuple);
        assert_eq!(c.pools["eu"].backends[1].weight, 100);
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let text = GOOD.replace("snat_v4 = ", "snat_v5 = ");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("snat_v5"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn weight_that_is_not_a_number() {
        let text = GOOD.replace("weight = 100", "weight = \"heavy\"");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("line 14"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let text = GOOD
            .replace("node-b", "node-a")
            .replace("ring_size", "x")
            .replace("pool = \"eu\"", "pool = \"us\"")
            .replace("snat_v4 = \"192.0.2.254\"", "ring_size = 65536");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("duplicate backend name `node-a`"), "{err}");
        // Located: the second backend's name is on line 15 of GOOD.
        assert!(
            err.contains("line 15, column 5: pools.eu.backends[1].name"),
            "{err}"
        );
        assert!(err.contains("ring_size = 65536"), "{err}");
        assert!(err.contains("no pool named `us`"), "{err}");
    }

    #[test]
    fn shipped_examples_stay_valid() {
        for (name, text) in [
            ("demo.toml", include_str!("../../config/demo.toml")),
            (
                "three-regions.toml",
                include_str!("../../config/three-regions.toml"),
            ),
            (
                "proxy.example.toml",
                include_str!("../../config/proxy.example.toml"),
            ),
        ] {
            let c = Config::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.listeners.is_empty() && !c.pools.is_empty(), "{name}");
        }
    }

    #[test]
    fn family_mismatch_and_missing_snat() {
        let text = GOOD
            .replace("192.0.2.12:8090", "[2001:db8::12]:8090")
            .replace("snat_v4 = \"192.0.2.254\"", "");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("needs balancer.snat_v4"), "{err}");
        assert!(err.contains("is IPv6 but the listener is IPv4"), "{err}");
    }
}
