//! The control plane's view of the L4 balancer: VIPs, pools, backend ids and one Maglev ring
//! per VIP. Changes are computed here (pure) and pushed to a `MapWriter`: the kernel maps in
//! production, an in-memory copy in tests (Katran's "testing" switch).
//!
//! Order matters for flows in flight: a new backend is written before any ring slot names it;
//! a removed backend leaves every ring before its entry is cleared.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use proxy_common::{
    Backend, Settings, VipKey, VipMeta, BACKEND_PRESENT, FAMILY_V4, FAMILY_V6, MAX_BACKENDS,
    PROTO_TCP, PROTO_UDP, VIP_DRAINING, VIP_HASH_SOURCE_ONLY, VIP_PASS_TO_STACK,
};

use crate::{
    config::{BalancerConfig, Config, HashKey, ListenerConfig, ListenerMode, Protocol},
    maglev::{MaglevRing, RingDelta, RingError, RingMember},
};

/// Where the control plane's decisions go.
pub trait MapWriter {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Length of the data plane's clock tick in ns: timeouts are written to it in ticks.
    /// The writer knows its clock; the balancer never reads one.
    fn tick_ns(&self) -> u64;
    fn set_settings(&mut self, s: &Settings) -> Result<(), Self::Error>;
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), Self::Error>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), Self::Error>;
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), Self::Error>;
    /// Writes slots into copy `copy` (0 or 1) of a VIP's ring.
    fn write_ring_copy(
        &mut self,
        vip_num: u32,
        copy: u32,
        delta: &[RingDelta],
    ) -> Result<(), Self::Error>;
}

/// Errors of control-plane operations.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// No pool of that name.
    #[error("no pool named `{0}`")]
    NoPool(String),
    /// No backend of that name in the pool.
    #[error("no backend `{name}` in pool `{pool}`")]
    NoBackend { pool: String, name: String },
    /// A backend of that name already exists in the pool.
    #[error("backend `{name}` already exists in pool `{pool}`")]
    DuplicateBackend { pool: String, name: String },
    /// All backend ids are taken.
    #[error("backend table full ({MAX_BACKENDS} backends)")]
    BackendTableFull,
    /// All VIP slots are taken.
    #[error("too many listeners (max {})", proxy_common::MAX_VIPS)]
    TooManyVips,
    /// The ring could not be built.
    #[error("ring for listener `{listener}`")]
    Ring {
        listener: String,
        #[source]
        source: RingError,
    },
    /// The kernel (or test) map writer failed.
    #[error("writing the data plane maps failed")]
    Maps(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn maps<E: std::error::Error + Send + Sync + 'static>(e: E) -> BalancerError {
    BalancerError::Maps(Box::new(e))
}

/// A backend as the control plane tracks it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendState {
    pub id: u32,
    pub name: String,
    pub address: SocketAddr,
    /// Configured (or admin-set) weight; 0 = drained.
    pub weight: u32,
    /// What health checks say; true until they say otherwise (fail open at start).
    pub available: bool,
    /// Slow start after re-admission: share of `weight` in use, per mille.
    pub ramp_permille: u32,
}

impl BackendState {
    fn new(id: u32, name: &str, address: SocketAddr, weight: u32) -> Self {
        Self {
            id,
            name: name.into(),
            address,
            weight,
            available: true,
            ramp_permille: 1000,
        }
    }

    /// The weight the ring uses: 0 when drained or unhealthy, ramped during slow start.
    pub fn effective_weight(&self) -> u32 {
        if !self.available || self.weight == 0 {
            return 0;
        }
        let w = (self.weight as u64 * self.ramp_permille.min(1000) as u64 / 1000) as u32;
        w.max(1)
    }
}

#[derive(Debug)]
struct Vip {
    name: String,
    key: VipKey,
    meta: VipMeta,
    pool: String,
    ring: MaglevRing,
    /// Changes written to the kernel's ring so far (shown as the ring version).
    version: u64,
}

/// Hands out backend ids. Freed ids go to the back of the queue, so an id is reused only
/// after every other one: flows still pinned to a removed id are not silently handed to a
/// different node.
#[derive(Debug)]
struct IdAllocator {
    free: VecDeque<u32>,
}

impl IdAllocator {
    fn new() -> Self {
        Self {
            free: (0..MAX_BACKENDS).collect(),
        }
    }
    fn take(&mut self) -> Option<u32> {
        self.free.pop_front()
    }
    fn give_back(&mut self, id: u32) {
        self.free.push_back(id);
    }
}

/// VIPs, pools and rings, kept in step with the data plane maps.
#[derive(Debug)]
pub struct Balancer {
    ring_size: u32,
    vips: Vec<Vip>,
    /// Removed `l4` listeners whose flows still finish: the kernel keeps forwarding them
    /// (flagged `VIP_DRAINING`) and takes no new ones, until `finish_drain`.
    draining: Vec<Vip>,
    pools: BTreeMap<String, Vec<BackendState>>,
    ids: IdAllocator,
}

/// Raw address words and family of an IP address, as the maps hold them.
pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(a) => (proxy_common::v4_words(a.octets()), FAMILY_V4),
        IpAddr::V6(a) => (proxy_common::v6_words(a.octets()), FAMILY_V6),
    }
}

/// The VIPS map key of a listener.
pub fn vip_key(address: SocketAddr, protocol: Protocol) -> VipKey {
    let (addr, family) = addr_words(address.ip());
    VipKey {
        addr,
        port: address.port().to_be(),
        proto: match protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family,
    }
}

/// Kernel settings from the `[balancer]` section, with times in kernel ticks of `tick_ns`
/// nanoseconds (`MapWriter::tick_ns`).
pub fn settings_from(b: &BalancerConfig, tick_ns: u64) -> Settings {
    let ticks = |secs: u64| {
        proxy_common::ticks_from_ns(Duration::from_secs(secs).as_nanos() as u64, tick_ns)
    };
    let ns_ticks = |ns: u64| proxy_common::ticks_from_ns(ns, tick_ns);
    Settings {
        ring_size: b.ring_size,
        snat_v4: std::array::from_fn(|i| {
            b.snat_v4
                .0
                .get(i)
                .map(|a| u32::from_ne_bytes(a.octets()))
                .unwrap_or(0)
        }),
        snat_v6: std::array::from_fn(|i| {
            b.snat_v6
                .0
                .get(i)
                .map(|a| proxy_common::v6_words(a.octets()))
                .unwrap_or_default()
        }),
        // `Config::problems` refuses more than `MAX_SNAT_ADDRS`.
        snat_v4_count: b.snat_v4.len().min(proxy_common::ports::MAX_SNAT_ADDRS) as u8,
        snat_v6_count: b.snat_v6.len().min(proxy_common::ports::MAX_SNAT_ADDRS) as u8,
        nat_port_min: b.nat_ports[0],
        nat_port_max: b.nat_ports[1],
        tcp_idle_timeout_ticks: ticks(b.tcp_idle_timeout_secs),
        udp_idle_timeout_ticks: ticks(b.udp_idle_timeout_secs),
        closing_timeout_ticks: ticks(b.closing_timeout_secs),
        next_hop_ttl_ticks: ns_ticks(proxy_common::NEXT_HOP_TTL_NS) as u32,
        last_seen_refresh_ticks: ns_ticks(proxy_common::LAST_SEEN_REFRESH_NS) as u32,
        ..Default::default()
    }
}

/// The BACKENDS map entry of a present backend.
pub fn backend_entry(address: SocketAddr) -> Backend {
    let (addr, family) = addr_words(address.ip());
    Backend {
        addr,
        port: address.port().to_be(),
        family,
        flags: BACKEND_PRESENT,
    }
}

fn vip_flags(l: &ListenerConfig) -> u32 {
    let mut flags = 0;
    if l.hash == HashKey::Source {
        flags |= VIP_HASH_SOURCE_ONLY;
    }
    if l.mode != ListenerMode::L4 {
        flags |= VIP_PASS_TO_STACK;
    }
    flags
}

/// One pool change made by a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolChange {
    pub pool: String,
    pub kind: PoolChangeKind,
}

/// What changed in a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChangeKind {
    PoolAdded,
    PoolRemoved,
    BackendAdded {
        name: String,
    },
    /// Same name, new address: a new backend id (pinned flows do not follow the name).
    BackendMoved {
        name: String,
    },
    Reweighted {
        name: String,
        from: u32,
        to: u32,
    },
    BackendRemoved {
        name: String,
    },
}

impl std::fmt::Display for PoolChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pool = &self.pool;
        match &self.kind {
            PoolChangeKind::PoolAdded => write!(f, "pool {pool}: added"),
            PoolChangeKind::PoolRemoved => write!(f, "pool {pool}: removed"),
            PoolChangeKind::BackendAdded { name } => write!(f, "pool {pool}: backend {name} added"),
            PoolChangeKind::BackendMoved { name } => write!(f, "pool {pool}: backend {name} moved"),
            PoolChangeKind::Reweighted { name, from, to } => {
                write!(f, "pool {pool}: backend {name} weight {from} -> {to}")
            }
            PoolChangeKind::BackendRemoved { name } => {
                write!(f, "pool {pool}: backend {name} removed")
            }
        }
    }
}

impl Balancer {
    pub fn new(ring_size: u32) -> Self {
        Self {
            ring_size,
            vips: Vec::new(),
            draining: Vec::new(),
            pools: BTreeMap::new(),
            ids: IdAllocator::new(),
        }
    }

    /// Builds the whole state from a validated config and writes it.
    pub fn from_config<W: MapWriter>(config: &Config, w: &mut W) -> Result<Self, BalancerError> {
        let mut bal = Self::new(config.balancer.ring_size);
        let tick_ns = w.tick_ns();
        w.set_settings(&settings_from(&config.balancer, tick_ns))
            .map_err(maps)?;
        for (name, pool) in &config.pools {
            let mut members = Vec::new();
            // Ids in name order: replicas given the same pools write byte-identical rings,
            // whatever order the file lists backends in.
            let mut sorted: Vec<_> = pool.backends.iter().collect();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            for be in sorted {
                let id = bal.ids.take().ok_or(BalancerError::BackendTableFull)?;
                w.set_backend(id, &backend_entry(be.address))
                    .map_err(maps)?;
                members.push(BackendState::new(id, &be.name, be.address, be.weight));
            }
            bal.pools.insert(name.clone(), members);
        }
        for l in &config.listeners {
            bal.add_listener(l, w)?;
        }
        Ok(bal)
    }

    fn add_listener<W: MapWriter>(
        &mut self,
        l: &ListenerConfig,
        w: &mut W,
    ) -> Result<(), BalancerError> {
        // A listener taking back a draining one's address or name ends that drain first: one
        // VIP per key in the kernel, and the new listener serves its flows from now on.
        let key = vip_key(l.address, l.protocol);
        let ended: Vec<String> = self
            .draining
            .iter()
            .filter(|d| d.key == key || d.name == l.name)
            .map(|d| d.name.clone())
            .collect();
        for name in ended {
            self.finish_drain(&name, w)?;
        }
        let used: Vec<u32> = self
            .vips
            .iter()
            .chain(&self.draining)
            .map(|v| v.meta.vip_num)
            .collect();
        let vip_num = (0..proxy_common::MAX_VIPS)
            .find(|n| !used.contains(n))
            .ok_or(BalancerError::TooManyVips)?;
        let flags = vip_flags(l);
        let ring = MaglevRing::new(self.ring_size).map_err(|source| BalancerError::Ring {
            listener: l.name.clone(),
            source,
        })?;
        let vip = Vip {
            name: l.name.clone(),
            key: vip_key(l.address, l.protocol),
            meta: VipMeta {
                vip_num,
                flags,
                ..VipMeta::default()
            },
            pool: l.pool.clone(),
            ring,
            version: 1,
        };
        self.vips.push(vip);
        let idx = self.vips.len() - 1;
        let members = self.members(&self.vips[idx].pool);
        let v = &mut self.vips[idx];
        v.ring
            .rebuild(&members)
            .map_err(|source| BalancerError::Ring {
                listener: v.name.clone(),
                source,
            })?;
        // Rings first, then the VIP entry: the VIP never exists with an empty ring. The
        // kernel's copies may hold anything (zeros = backend 0 in a fresh map, an old ring in
        // pinned maps after a restart): write every slot of both, deltas after that.
        let v = &self.vips[idx];
        let full = v.ring.full_delta();
        w.write_ring_copy(v.meta.vip_num, 0, &full).map_err(maps)?;
        w.write_ring_copy(v.meta.vip_num, 1, &full).map_err(maps)?;
        w.set_vip(&v.key, &v.meta).map_err(maps)
    }

    fn members(&self, pool: &str) -> Vec<RingMember> {
        self.pools
            .get(pool)
            .map(|bs| {
                bs.iter()
                    .map(|b| RingMember {
                        id: b.id,
                        name: b.name.clone(),
                        weight: b.effective_weight(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Rebuilds a live VIP's ring: the delta goes into the copy packets are not using, the
    /// VIP entry flips to it in one map update, then the other copy catches up. A packet
    /// sees the old ring or the new one, never a mix.
    fn rebuild_vip<W: MapWriter>(&mut self, idx: usize, w: &mut W) -> Result<usize, BalancerError> {
        let members = self.members(&self.vips[idx].pool);
        let vip = &mut self.vips[idx];
        let delta = vip
            .ring
            .rebuild(&members)
            .map_err(|source| BalancerError::Ring {
                listener: vip.name.clone(),
                source,
            })?;
        if delta.is_empty() {
            return Ok(0);
        }
        let old = vip.meta.active_ring & 1;
        let new = old ^ 1;
        w.write_ring_copy(vip.meta.vip_num, new, &delta)
            .map_err(maps)?;
        vip.meta.active_ring = new;
        vip.version += 1;
        w.set_vip(&vip.key, &vip.meta).map_err(maps)?;
        w.write_ring_copy(vip.meta.vip_num, old, &delta)
            .map_err(maps)?;
        Ok(delta.len())
    }

    /// Rebuilds the rings of every VIP served by `pool`; returns the number of slots written.
    fn rebuild_pool<W: MapWriter>(
        &mut self,
        pool: &str,
        w: &mut W,
    ) -> Result<usize, BalancerError> {
        let mut written = 0;
        for idx in 0..self.vips.len() {
            if self.vips[idx].pool == pool {
                written += self.rebuild_vip(idx, w)?;
            }
        }
        Ok(written)
    }

    /// Adds a backend to a pool at runtime; returns its id.
    pub fn add_backend<W: MapWriter>(
        &mut self,
        pool: &str,
        name: &str,
        address: SocketAddr,
        weight: u32,
        w: &mut W,
    ) -> Result<u32, BalancerError> {
        let members = self
            .pools
            .get(pool)
            .ok_or_else(|| BalancerError::NoPool(pool.into()))?;
        if members.iter().any(|b| b.name == name) {
            return Err(BalancerError::DuplicateBackend {
                pool: pool.into(),
                name: name.into(),
            });
        }
        let id = self.ids.take().ok_or(BalancerError::BackendTableFull)?;
        if let Err(e) = w.set_backend(id, &backend_entry(address)) {
            self.ids.give_back(id);
            return Err(maps(e));
        }
        self.pools
            .get_mut(pool)
            .expect("checked above")
            .push(BackendState::new(id, name, address, weight));
        self.rebuild_pool(pool, w)?;
        Ok(id)
    }

    /// Sets a backend's weight; 0 drains it (pinned flows continue, no new ones).
    pub fn set_weight<W: MapWriter>(
        &mut self,
        pool: &str,
        name: &str,
        weight: u32,
        w: &mut W,
    ) -> Result<(), BalancerError> {
        let b = self.backend_mut(pool, name)?;
        b.weight = weight;
        self.rebuild_pool(pool, w)?;
        Ok(())
    }

    /// Removes a backend: it leaves the rings, then its entry is cleared, so flows pinned to
    /// it are re-balanced on their next packet.
    pub fn remove_backend<W: MapWriter>(
        &mut self,
        pool: &str,
        name: &str,
        w: &mut W,
    ) -> Result<(), BalancerError> {
        let members = self
            .pools
            .get_mut(pool)
            .ok_or_else(|| BalancerError::NoPool(pool.into()))?;
        let pos = members.iter().position(|b| b.name == name).ok_or_else(|| {
            BalancerError::NoBackend {
                pool: pool.into(),
                name: name.into(),
            }
        })?;
        let removed = members.remove(pos);
        self.rebuild_pool(pool, w)?;
        w.set_backend(removed.id, &Backend::default())
            .map_err(maps)?;
        self.ids.give_back(removed.id);
        Ok(())
    }

    fn backend_mut(&mut self, pool: &str, name: &str) -> Result<&mut BackendState, BalancerError> {
        self.pools
            .get_mut(pool)
            .ok_or_else(|| BalancerError::NoPool(pool.into()))?
            .iter_mut()
            .find(|b| b.name == name)
            .ok_or_else(|| BalancerError::NoBackend {
                pool: pool.into(),
                name: name.into(),
            })
    }

    /// Health says a backend is (un)available, with a slow-start share; rebuilds the rings
    /// only when the effective weight changes. Returns whether it did.
    pub fn set_health<W: MapWriter>(
        &mut self,
        pool: &str,
        name: &str,
        available: bool,
        ramp_permille: u32,
        w: &mut W,
    ) -> Result<bool, BalancerError> {
        let b = self.backend_mut(pool, name)?;
        let before = b.effective_weight();
        b.available = available;
        b.ramp_permille = ramp_permille.min(1000);
        if b.effective_weight() == before {
            return Ok(false);
        }
        self.rebuild_pool(pool, w)?;
        Ok(true)
    }

    /// Brings pools in line with a reloaded config: adds pools, adds, moves, re-weights and
    /// removes backends. Pools gone from the file stay until no listener uses them
    /// (`remove_pool`); listeners are the caller's job (`put_listener`, `remove_listener`).
    pub fn reconcile_pools<W: MapWriter>(
        &mut self,
        config: &Config,
        w: &mut W,
    ) -> Result<Vec<PoolChange>, BalancerError> {
        let mut changes = Vec::new();
        for (pool, new) in &config.pools {
            let change = |kind| PoolChange {
                pool: pool.clone(),
                kind,
            };
            if !self.pools.contains_key(pool) {
                self.pools.insert(pool.clone(), Vec::new());
                changes.push(change(PoolChangeKind::PoolAdded));
            }
            for be in &new.backends {
                let current = self.pools[pool].iter().find(|b| b.name == be.name).cloned();
                let name = be.name.clone();
                match current {
                    None => {
                        self.add_backend(pool, &be.name, be.address, be.weight, w)?;
                        changes.push(change(PoolChangeKind::BackendAdded { name }));
                    }
                    Some(cur) if cur.address != be.address => {
                        // A new address is a new backend: pinned flows must not follow the name.
                        self.remove_backend(pool, &be.name, w)?;
                        self.add_backend(pool, &be.name, be.address, be.weight, w)?;
                        changes.push(change(PoolChangeKind::BackendMoved { name }));
                    }
                    Some(cur) if cur.weight != be.weight => {
                        self.set_weight(pool, &be.name, be.weight, w)?;
                        changes.push(change(PoolChangeKind::Reweighted {
                            name,
                            from: cur.weight,
                            to: be.weight,
                        }));
                    }
                    Some(_) => {}
                }
            }
            let gone: Vec<String> = self.pools[pool]
                .iter()
                .filter(|b| !new.backends.iter().any(|n| n.name == b.name))
                .map(|b| b.name.clone())
                .collect();
            for name in gone {
                self.remove_backend(pool, &name, w)?;
                changes.push(change(PoolChangeKind::BackendRemoved { name }));
            }
        }
        Ok(changes)
    }

    /// Removes a pool no listener uses any more: its backends leave the maps.
    pub fn remove_pool<W: MapWriter>(
        &mut self,
        pool: &str,
        w: &mut W,
    ) -> Result<(), BalancerError> {
        let names: Vec<String> = self
            .backends(pool)
            .ok_or_else(|| BalancerError::NoPool(pool.into()))?
            .iter()
            .map(|b| b.name.clone())
            .collect();
        for name in names {
            self.remove_backend(pool, &name, w)?;
        }
        self.pools.remove(pool);
        Ok(())
    }

    /// Adds a listener, or brings an existing one in line with `l`. Same address: updated in
    /// place (the VIP never disappears, so its pinned flows continue); a new address: the old
    /// VIP goes, the new one comes.
    pub fn put_listener<W: MapWriter>(
        &mut self,
        l: &ListenerConfig,
        w: &mut W,
    ) -> Result<(), BalancerError> {
        match self.vips.iter().position(|v| v.name == l.name) {
            Some(idx) if self.vips[idx].key == vip_key(l.address, l.protocol) => {
                self.vips[idx].pool = l.pool.clone();
                self.vips[idx].meta.flags = vip_flags(l);
                self.rebuild_vip(idx, w)?;
                let v = &self.vips[idx];
                w.set_vip(&v.key, &v.meta).map_err(maps)
            }
            Some(_) => {
                self.remove_listener(&l.name, w)?;
                self.add_listener(l, w)
            }
            None => self.add_listener(l, w),
        }
    }

    /// Removes a listener's VIP; its number is free again (rings are rewritten in full on reuse).
    pub fn remove_listener<W: MapWriter>(
        &mut self,
        name: &str,
        w: &mut W,
    ) -> Result<(), BalancerError> {
        if let Some(idx) = self.vips.iter().position(|v| v.name == name) {
            let v = self.vips.remove(idx);
            w.remove_vip(&v.key).map_err(maps)?;
        }
        Ok(())
    }

    /// Stops a listener taking new connections while its live ones finish: an `l4` VIP stays
    /// in the kernel flagged `VIP_DRAINING` (its pinned flows keep their node) until
    /// `finish_drain`; any other VIP goes at once (its terminator instance drains itself).
    /// Returns whether the listener now drains.
    pub fn drain_listener<W: MapWriter>(
        &mut self,
        name: &str,
        w: &mut W,
    ) -> Result<bool, BalancerError> {
        let Some(idx) = self.vips.iter().position(|v| v.name == name) else {
            return Ok(false);
        };
        if self.vips[idx].meta.flags & VIP_PASS_TO_STACK != 0 {
            self.remove_listener(name, w)?;
            return Ok(false);
        }
        let mut v = self.vips.remove(idx);
        v.meta.flags |= VIP_DRAINING;
        let written = w.set_vip(&v.key, &v.meta).map_err(maps);
        self.draining.push(v);
        written.map(|()| true)
    }

    /// Ends a drain: the VIP leaves the kernel, and with it the flows that were still open.
    pub fn finish_drain<W: MapWriter>(
        &mut self,
        name: &str,
        w: &mut W,
    ) -> Result<(), BalancerError> {
        if let Some(idx) = self.draining.iter().position(|v| v.name == name) {
            let v = self.draining.remove(idx);
            w.remove_vip(&v.key).map_err(maps)?;
        }
        Ok(())
    }

    /// (listener name, pool) of every draining listener.
    pub fn draining(&self) -> impl Iterator<Item = (&str, &str)> {
        self.draining
            .iter()
            .map(|v| (v.name.as_str(), v.pool.as_str()))
    }

    /// Whether a listener of this name is configured (VIP written).
    pub fn has_listener(&self, name: &str) -> bool {
        self.vips.iter().any(|v| v.name == name)
    }

    pub fn backends(&self, pool: &str) -> Option<&[BackendState]> {
        self.pools.get(pool).map(Vec::as_slice)
    }

    pub fn pools(&self) -> impl Iterator<Item = (&str, &[BackendState])> {
        self.pools.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// (listener name, vip number, pool) of every VIP.
    pub fn vips(&self) -> impl Iterator<Item = (&str, u32, &str)> {
        self.vips
            .iter()
            .map(|v| (v.name.as_str(), v.meta.vip_num, v.pool.as_str()))
    }

    /// (listener name, ring version, pool) of every VIP: the version grows by one at every
    /// ring change written to the kernel.
    pub fn ring_versions(&self) -> impl Iterator<Item = (&str, u64, &str)> {
        self.vips
            .iter()
            .map(|v| (v.name.as_str(), v.version, v.pool.as_str()))
    }

    /// The ring of a listener (the terminator uses the same table).
    pub fn ring(&self, listener: &str) -> Option<&MaglevRing> {
        self.vips
            .iter()
            .find(|v| v.name == listener)
            .map(|v| &v.ring)
    }
}

impl MemoryMaps {
    /// The ring copy packets of VIP `vip_num` use now.
    pub fn active_ring(&self, vip_num: u32) -> &std::collections::HashMap<u32, u32> {
        let active = self
            .vips
            .values()
            .find(|m| m.vip_num == vip_num)
            .map(|m| m.active_ring)
            .unwrap_or(0);
        &self.rings[&proxy_common::ring_index(vip_num, active)]
    }
}

/// How many of a backend's NAT ports are taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NatOccupancy {
    /// Ports held by flows (including flows that timed out and were not reclaimed yet).
    pub taken: u32,
    /// Ports per SNAT address × SNAT addresses of the backend's family.
    pub capacity: u32,
}

impl NatOccupancy {
    /// Taken share, 0.0 to 1.0 (0 for an empty space).
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.taken as f64 / self.capacity as f64
        }
    }
}

/// The tick `MemoryMaps` claims: 4 ms, the common kernel default (HZ=250).
pub const MEMORY_TICK_NS: u64 = 4_000_000;

/// An in-memory copy of the maps: runs the control plane without a kernel.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    pub settings: Settings,
    pub vips: std::collections::HashMap<VipKey, VipMeta>,
    pub backends: std::collections::HashMap<u32, Backend>,
    pub rings: std::collections::HashMap<u32, std::collections::HashMap<u32, u32>>,
    /// Every write in order, to check ordering rules.
    pub log: Vec<String>,
    /// NAT port occupancy per backend id, as tests set it (the kernel counts it; nothing
    /// here does).
    pub nat: std::collections::HashMap<u32, NatOccupancy>,
}

impl MapWriter for MemoryMaps {
    type Error = std::convert::Infallible;
    fn tick_ns(&self) -> u64 {
        MEMORY_TICK_NS
    }
    fn set_settings(&mut self, s: &Settings) -> Result<(), Self::Error> {
        self.settings = *s;
        self.log.push("settings".into());
        Ok(())
    }
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), Self::Error> {
        self.vips.insert(*key, *meta);
        self.log.push(format!("vip {}", meta.vip_num));
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), Self::Error> {
        self.vips.remove(key);
        self.log.push("remove vip".into());
        Ok(())
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), Self::Error> {
        self.backends.insert(id, *b);
        self.log.push(format!(
            "backend {id} {}",
            if b.flags & BACKEND_PRESENT != 0 {
                "set"
            } else {
                "cleared"
            }
        ));
        Ok(())
    }
    fn write_ring_copy(
        &mut self,
        vip_num: u32,
        copy: u32,
        delta: &[RingDelta],
    ) -> Result<(), Self::Error> {
        let ring = self
            .rings
            .entry(proxy_common::ring_index(vip_num, copy))
            .or_default();
        for d in delta {
            ring.insert(d.slot, d.id);
        }
        self.log
            .push(format!("ring {vip_num}.{copy} +{}", delta.len()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{tests::config_with_rpc, Config};

    /// `rpc` (`l4`) and `wss` (terminated, source hash) on pool `eu` of two equal backends.
    fn conf() -> String {
        config_with_rpc(
            "eu",
            r#"
[[listener]]
name = "wss"
address = "203.0.113.10:443"
mode = "ws"
pool = "eu"
hash = "source"

[pools.eu]
backends = [
  { name = "a", address = "192.0.2.11:8090", weight = 1 },
  { name = "b", address = "192.0.2.12:8090", weight = 1 },
]
"#,
        )
    }

    fn owners(m: &MemoryMaps, vip: u32) -> BTreeMap<u32, usize> {
        let mut c = BTreeMap::new();
        for id in m.active_ring(vip).values() {
            *c.entry(*id).or_default() += 1;
        }
        c
    }

    #[test]
    fn snat_lists_reach_the_settings() {
        let text = crate::config::tests::GOOD.replace(
            "snat_v4 = \"192.0.2.254\"",
            "snat_v4 = [\"192.0.2.254\", \"192.0.2.253\"]\nsnat_v6 = \"2001:db8::1\"",
        );
        let two = Config::parse(&text, "t").unwrap();
        let s = settings_from(&two.balancer, 4_000_000);
        assert_eq!((s.snat_v4_count, s.snat_v6_count), (2, 1));
        assert_eq!(s.snat_v4[1], u32::from_ne_bytes([192, 0, 2, 253]));
    }

    #[test]
    fn initial_state_is_written_ring_before_vip() {
        let config = Config::parse(&conf(), "t").unwrap();
        let mut m = MemoryMaps::default();
        let bal = Balancer::from_config(&config, &mut m).unwrap();
        assert_eq!(m.vips.len(), 2);
        assert_eq!(m.backends.len(), 2);
        assert_eq!(m.active_ring(0).len(), 1009);
        let copy0 = m.log.iter().position(|l| l == "ring 0.0 +1009").unwrap();
        let copy1 = m.log.iter().position(|l| l == "ring 0.1 +1009").unwrap();
        let vip_pos = m.log.iter().position(|l| l == "vip 0").unwrap();
        assert!(
            copy0 < vip_pos && copy1 < vip_pos,
            "both full copies before the VIP: {:?}",
            m.log
        );
        assert_eq!(m.rings[&0], m.rings[&1]);
        let wss = m.vips[&vip_key("203.0.113.10:443".parse().unwrap(), Protocol::Tcp)];
        assert_eq!(wss.flags, VIP_HASH_SOURCE_ONLY | VIP_PASS_TO_STACK);
        assert_eq!(
            bal.ring("rpc").unwrap().slots(),
            bal.ring("wss").unwrap().slots()
        );
        assert_eq!(m.settings.nat_port_min, 1_024);
    }

    #[test]
    fn add_drain_remove_keep_write_order() {
        let config = Config::parse(&conf(), "t").unwrap();
        let mut m = MemoryMaps::default();
        let mut bal = Balancer::from_config(&config, &mut m).unwrap();
        m.log.clear();
        let c = bal
            .add_backend("eu", "c", "192.0.2.13:8090".parse().unwrap(), 1, &mut m)
            .unwrap();
        assert_eq!(
            m.log[0],
            format!("backend {c} set"),
            "backend before ring: {:?}",
            m.log
        );
        let o = owners(&m, 0);
        assert_eq!(o.len(), 3);
        assert!(o.values().all(|n| (300..=373).contains(n)), "{o:?}");

        bal.set_weight("eu", "a", 0, &mut m).unwrap();
        let a_id = bal
            .backends("eu")
            .unwrap()
            .iter()
            .find(|b| b.name == "a")
            .unwrap()
            .id;
        assert!(
            !owners(&m, 0).contains_key(&a_id),
            "drained backend still owns slots"
        );
        assert_eq!(
            m.backends[&a_id].flags, BACKEND_PRESENT,
            "drained backend must stay present for pinned flows"
        );

        m.log.clear();
        bal.remove_backend("eu", "a", &mut m).unwrap();
        assert_eq!(
            m.log.last().unwrap(),
            &format!("backend {a_id} cleared"),
            "{:?}",
            m.log
        );
        assert!(matches!(
            bal.remove_backend("eu", "a", &mut m),
            Err(BalancerError::NoBackend { .. })
        ));
        assert!(matches!(
            bal.add_backend("eu", "b", "192.0.2.99:1".parse().unwrap(), 1, &mut m),
            Err(BalancerError::DuplicateBackend { .. })
        ));
    }

    #[test]
    fn reload_reconciles_pools() {
        let config = Config::parse(&conf(), "t").unwrap();
        let mut m = MemoryMaps::default();
        let mut bal = Balancer::from_config(&config, &mut m).unwrap();
        let text = conf().replace(
            r#"{ name = "b", address = "192.0.2.12:8090", weight = 1 },"#,
            r#"{ name = "c", address = "192.0.2.13:8090", weight = 2 },"#,
        );
        let new = Config::parse(&text, "t").unwrap();
        let changes: Vec<String> = bal
            .reconcile_pools(&new, &mut m)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            vec!["pool eu: backend c added", "pool eu: backend b removed"]
        );
        let names: Vec<_> = bal
            .backends("eu")
            .unwrap()
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert!(bal.reconcile_pools(&new, &mut m).unwrap().is_empty());
    }

    #[test]
    fn replicas_write_identical_rings_whatever_the_backend_order() {
        let swapped = conf().replace(
            r#"  { name = "a", address = "192.0.2.11:8090", weight = 1 },
  { name = "b", address = "192.0.2.12:8090", weight = 1 },"#,
            r#"  { name = "b", address = "192.0.2.12:8090", weight = 1 },
  { name = "a", address = "192.0.2.11:8090", weight = 1 },"#,
        );
        assert_ne!(swapped, conf());
        let (mut m1, mut m2) = (MemoryMaps::default(), MemoryMaps::default());
        Balancer::from_config(&Config::parse(&conf(), "t").unwrap(), &mut m1).unwrap();
        Balancer::from_config(&Config::parse(&swapped, "t").unwrap(), &mut m2).unwrap();
        assert_eq!(m1.rings, m2.rings);
        assert_eq!(m1.backends, m2.backends);
    }

    #[test]
    fn a_listener_with_an_empty_pool_writes_empty_slots() {
        let text = conf().replace(
            r#"pool = "eu"
hash = "source""#,
            r#"pool = "none"
hash = "source""#,
        ) + "\n[pools.none]\nbackends = []\n";
        let config = Config::parse(&text, "t").unwrap();
        let mut m = MemoryMaps::default();
        Balancer::from_config(&config, &mut m).unwrap();
        let ring = m.active_ring(1);
        assert_eq!(ring.len(), 1009, "every slot written");
        assert!(ring.values().all(|&id| id == proxy_common::EMPTY_SLOT));
    }

    #[test]
    fn unhealthy_backends_leave_the_ring_and_ramp_back() {
        let config = Config::parse(&conf(), "t").unwrap();
        let mut m = MemoryMaps::default();
        let mut bal = Balancer::from_config(&config, &mut m).unwrap();
        let a = bal.backends("eu").unwrap()[0].id;
        assert!(bal.set_health("eu", "a", false, 1000, &mut m).unwrap());
        assert!(!owners(&m, 0).contains_key(&a));
        assert!(
            !bal.set_health("eu", "a", false, 1000, &mut m).unwrap(),
            "no change, no rebuild"
        );
        bal.set_weight("eu", "a", 10, &mut m).unwrap();
        bal.set_weight("eu", "b", 10, &mut m).unwrap();
        assert!(bal.set_health("eu", "a", true, 100, &mut m).unwrap());
        let o = owners(&m, 0);
        let share = o[&a] as f64 / 1009.0;
        assert!(
            share > 0.05 && share < 0.15,
            "slow start at 10%: share {share}"
        );
        bal.set_health("eu", "a", true, 1000, &mut m).unwrap();
        assert!((owners(&m, 0)[&a] as i64 - 504).abs() < 10);
    }

    #[test]
    fn live_ring_changes_flip_between_two_copies() {
        let config = Config::parse(&conf(), "t").unwrap();
        let mut m = MemoryMaps::default();
        let mut bal = Balancer::from_config(&config, &mut m).unwrap();
        m.log.clear();
        bal.set_weight("eu", "a", 0, &mut m).unwrap();
        // Per VIP: fill the unused copy, flip the VIP to it, then catch up the old copy.
        let vip0: Vec<&str> = m
            .log
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with("ring 0.") || *l == "vip 0")
            .collect();
        assert_eq!(vip0.len(), 3, "{:?}", m.log);
        assert!(vip0[0].starts_with("ring 0.1 "), "{vip0:?}");
        assert_eq!(vip0[1], "vip 0");
        assert!(vip0[2].starts_with("ring 0.0 "), "{vip0:?}");
        let meta = m.vips.values().find(|v| v.vip_num == 0).unwrap();
        assert_eq!(meta.active_ring, 1);
        assert_eq!(
            m.rings[&0], m.rings[&1],
            "both copies hold the new ring afterwards"
        );
        // No change, no writes, no flip.
        m.log.clear();
        bal.set_weight("eu", "a", 0, &mut m).unwrap();
        assert!(m.log.is_empty(), "{:?}", m.log);
    }

    #[test]
    fn listeners_are_added_updated_in_place_and_removed() {
        let config = Config::parse(&conf(), "t").unwrap();
        let mut m = MemoryMaps::default();
        let mut bal = Balancer::from_config(&config, &mut m).unwrap();
        let text = format!("{}\n[[listener]]\nname = \"rpc2\"\naddress = \"203.0.113.11:8090\"\nmode = \"l4\"\npool = \"eu\"\n", conf());
        let new = Config::parse(&text, "t").unwrap();
        let mut rpc2 = new.listeners.last().unwrap().clone();
        bal.put_listener(&rpc2, &mut m).unwrap();
        assert!(bal.has_listener("rpc2"));
        assert_eq!(m.vips.len(), 3);
        assert_eq!(
            bal.ring("rpc2").unwrap().slots(),
            bal.ring("rpc").unwrap().slots()
        );
        // Same address, new hash: the VIP entry is rewritten, never removed.
        m.log.clear();
        rpc2.hash = HashKey::Source;
        bal.put_listener(&rpc2, &mut m).unwrap();
        assert!(!m.log.iter().any(|l| l == "remove vip"), "{:?}", m.log);
        let key = vip_key(rpc2.address, rpc2.protocol);
        assert_eq!(
            m.vips[&key].flags & VIP_HASH_SOURCE_ONLY,
            VIP_HASH_SOURCE_ONLY
        );
        // A new address: the old VIP goes.
        rpc2.address = "203.0.113.12:8090".parse().unwrap();
        bal.put_listener(&rpc2, &mut m).unwrap();
        assert!(!m.vips.contains_key(&key));
        assert_eq!(m.vips.len(), 3);
        bal.remove_listener("rpc2", &mut m).unwrap();
        assert!(!bal.has_listener("rpc2"));
        assert_eq!(m.vips.len(), 2);
    }

    #[test]
    fn draining_listener_keeps_its_number_until_its_address_is_taken_back() {
        let config = Config::parse(&conf(), "t").unwrap();
        let mut m = MemoryMaps::default();
        let mut bal = Balancer::from_config(&config, &mut m).unwrap();
        let rpc = config.listeners[0].clone();
        let key = vip_key(rpc.address, rpc.protocol);
        let num = m.vips[&key].vip_num;
        // A terminator VIP does not drain in the kernel: its instance drains itself.
        assert!(!bal.drain_listener("wss", &mut m).unwrap());
        assert!(!bal.has_listener("wss"));
        assert_eq!(m.vips.len(), 1);

        assert!(bal.drain_listener("rpc", &mut m).unwrap());
        assert!(!bal.has_listener("rpc"));
        assert_eq!(m.vips[&key].flags & VIP_DRAINING, VIP_DRAINING);
        // Its number stays taken while it drains.
        let mut other = rpc.clone();
        other.name = "other".into();
        other.address = "203.0.113.20:8090".parse().unwrap();
        bal.put_listener(&other, &mut m).unwrap();
        assert_ne!(bal.vips().find(|v| v.0 == "other").unwrap().1, num);
        // The address served again: the drain ends and the new listener owns the key.
        bal.put_listener(&rpc, &mut m).unwrap();
        assert_eq!(bal.draining().count(), 0);
        assert_eq!(m.vips[&key].flags & VIP_DRAINING, 0);
        assert!(bal.has_listener("rpc"));
    }

    #[test]
    fn removed_ids_are_not_reused_at_once() {
        let config = Config::parse(&conf(), "t").unwrap();
        let mut m = MemoryMaps::default();
        let mut bal = Balancer::from_config(&config, &mut m).unwrap();
        let a_id = bal.backends("eu").unwrap()[0].id;
        bal.remove_backend("eu", "a", &mut m).unwrap();
        let new_id = bal
            .add_backend("eu", "a2", "192.0.2.20:8090".parse().unwrap(), 1, &mut m)
            .unwrap();
        assert_ne!(new_id, a_id);
    }
}
