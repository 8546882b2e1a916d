//! Fixture cases for the XDP program: an input frame, the verdict and the exact output frame
//! expected from BPF_PROG_TEST_RUN, and how to compare them with a readable failure message.
//! Also the bits every kernel-side test or benchmark needs: XDP verdict names, a unique pin
//! directory that removes itself, a probe for BPF_PROG_TEST_RUN support, and the labs' shared
//! set-up (devices, VIP and backend tables, permanent neighbours).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::RawFd,
    path::PathBuf,
};

use proxy::{
    balancer::{addr_words, backend_entry},
    ebpf::{test_run::run_xdp, DataPlane, BPFFS},
    maglev::{MaglevRing, RingError, RingMember},
};
use proxy_common::{Settings, VipKey, VipMeta};

use crate::packet::{hex_diff, verify_checksums};

/// XDP verdicts (`enum xdp_action`).
pub mod xdp {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;

    /// `XDP_PASS` etc., or the number for anything else.
    pub fn name(action: u32) -> String {
        match action {
            ABORTED => "XDP_ABORTED".into(),
            DROP => "XDP_DROP".into(),
            PASS => "XDP_PASS".into(),
            TX => "XDP_TX".into(),
            REDIRECT => "XDP_REDIRECT".into(),
            other => format!("unknown verdict {other}"),
        }
    }
}

/// One packet through the program: what goes in and what must come out.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub description: String,
    pub input: Vec<u8>,
    pub expected_action: u32,
    /// The whole frame as the program must leave it (equal to `input` when untouched).
    pub expected_output: Vec<u8>,
}

impl Fixture {
    pub fn new(
        description: impl Into<String>,
        input: Vec<u8>,
        expected_action: u32,
        expected_output: Vec<u8>,
    ) -> Self {
        Fixture {
            description: description.into(),
            input,
            expected_action,
            expected_output,
        }
    }

    /// A packet the program must leave byte for byte as it is.
    pub fn unchanged(description: impl Into<String>, input: Vec<u8>, expected_action: u32) -> Self {
        let expected_output = input.clone();
        Self::new(description, input, expected_action, expected_output)
    }

    /// Whether the program is expected to rewrite the frame.
    pub fn rewrites(&self) -> bool {
        self.input != self.expected_output
    }

    /// Compares a test run's verdict and frame with the expectation. A rewritten frame must also
    /// carry correct IPv4 header and TCP/UDP checksums. The error says what differs, with a hex
    /// diff of the frames.
    pub fn check(&self, action: u32, output: &[u8]) -> Result<(), String> {
        let mut problems = Vec::new();
        if action != self.expected_action {
            problems.push(format!(
                "verdict: expected {}, got {}",
                xdp::name(self.expected_action),
                xdp::name(action)
            ));
        }
        if output != self.expected_output.as_slice() {
            problems.push(format!(
                "output frame differs from the expected one:\n{}",
                hex_diff(&self.expected_output, output)
            ));
        }
        if self.rewrites() {
            if let Err(e) = verify_checksums(output) {
                problems.push(format!("rewritten frame has a bad checksum: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// A pin directory `/sys/fs/bpf/<name>` that is removed (with the maps pinned in it) on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/<name>`; removes leftovers of an earlier run with the same name first.
    pub fn new(name: &str) -> io::Result<PinDir> {
        let path = PathBuf::from(BPFFS).join(name);
        DataPlane::remove_pins(&path)?;
        Ok(PinDir { path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = DataPlane::remove_pins(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

/// Why BPF_PROG_TEST_RUN cannot be used, if the kernel lacks it for XDP (then callers skip);
/// `Ok(None)` when it works. Any other failure is returned as an error.
pub fn test_run_unsupported(prog_fd: RawFd) -> io::Result<Option<String>> {
    // A minimal non-IP frame: every program must be able to run on it.
    let mut frame = vec![0u8; 60];
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    match run_xdp(prog_fd, &frame, 0, 1) {
        Ok(_) => Ok(None),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTSUP) | Some(libc::ENOSYS) | Some(524 /* ENOTSUPP */)
            ) =>
        {
            Ok(Some(format!(
                "the kernel does not support BPF_PROG_TEST_RUN for XDP programs: {e}"
            )))
        }
        Err(e) => Err(e),
    }
}

/// Kernel settings of the XDP labs (fixture table, fuzz target): NAT ports `min..=max`,
/// one SNAT address per family, 300 s TCP / 30 s UDP idle timeouts, closing flows expire at
/// once.
pub fn lab_settings(
    nat_ports: (u16, u16),
    snat4: std::net::Ipv4Addr,
    snat6: std::net::Ipv6Addr,
) -> proxy_common::Settings {
    let tick = proxy::ebpf::kernel_tick_ns();
    let ticks = |ns: u64| proxy_common::ticks_from_ns(ns, tick);
    proxy_common::Settings {
        nat_port_min: nat_ports.0,
        nat_port_max: nat_ports.1,
        tcp_idle_timeout_ticks: ticks(300_000_000_000),
        udp_idle_timeout_ticks: ticks(30_000_000_000),
        closing_timeout_ticks: 0,
        next_hop_ttl_ticks: ticks(proxy_common::NEXT_HOP_TTL_NS) as u32,
        last_seen_refresh_ticks: ticks(proxy_common::LAST_SEEN_REFRESH_NS) as u32,
        ..proxy_common::Settings::default()
            .with_snat_v4(u32::from_ne_bytes(snat4.octets()))
            .with_snat_v6(proxy_common::v6_words(snat6.octets()))
    }
}

// ---------------------------------------------------------------------------
// The XDP labs' set-up (fixture table, fuzz target, benchmark): devices, tables, neighbours
// ---------------------------------------------------------------------------

/// The balancer's client-facing device and its veth peer.
pub const CLI_DEV: &str = "cli0";
pub const CLI_PEER: &str = "cli0p";
/// The balancer's backend-facing device and its veth peer.
pub const BK_DEV: &str = "bk0";
pub const BK_PEER: &str = "bk0p";
pub const CLI_DEV_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];
pub const BK_DEV_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];

/// Which device of the balancer a packet arrives on / a neighbour sits behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    pub fn dev(self) -> &'static str {
        match self {
            Side::Client => CLI_DEV,
            Side::Backend => BK_DEV,
        }
    }

    pub fn dev_mac(self) -> [u8; 6] {
        match self {
            Side::Client => CLI_DEV_MAC,
            Side::Backend => BK_DEV_MAC,
        }
    }
}

/// A backend of a lab: its `BACKENDS` entry and its permanent neighbour entry.
#[derive(Debug)]
pub struct LabBackend {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// Permanent neighbour entry; `None`: no neighbour, so `bpf_fib_lookup` fails.
    pub mac: Option<[u8; 6]>,
    pub side: Side,
}

/// A VIP of a lab and the backends of its initial ring.
#[derive(Debug)]
pub struct LabVip {
    pub num: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub flags: u32,
    /// Backend ids of the initial ring; empty: every slot EMPTY_SLOT.
    pub members: &'static [u32],
}

impl LabVip {
    /// The IPv4 VIP 203.0.113.`last` (TEST-NET-3, where the labs put their IPv4 VIPs).
    pub const fn v4(
        num: u32,
        last: u8,
        port: u16,
        proto: u8,
        flags: u32,
        members: &'static [u32],
    ) -> LabVip {
        LabVip {
            num,
            addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, last)),
            port,
            proto,
            flags,
            members,
        }
    }

    pub fn key(&self) -> VipKey {
        let (addr, family) = addr_words(self.addr);
        VipKey {
            addr,
            port: self.port.to_be(),
            proto: self.proto,
            family,
        }
    }

    /// The ring of `ring_size` slots its members fill.
    pub fn initial_ring(&self, ring_size: u32) -> Result<MaglevRing, RingError> {
        let mut ring = MaglevRing::new(ring_size)?;
        ring.rebuild(&ring_members(self.members))?;
        Ok(ring)
    }
}

/// Ring members of weight 1 named `backend-<id>`.
pub fn ring_members(ids: &[u32]) -> Vec<RingMember> {
    ids.iter()
        .map(|&id| RingMember::new(id, format!("backend-{id}"), 1))
        .collect()
}

/// Writes `settings`, every backend and every VIP with the whole of its initial ring into
/// the maps.
pub fn write_lab_maps<'v>(
    dp: &mut DataPlane,
    settings: &Settings,
    backends: &[LabBackend],
    vips: impl IntoIterator<Item = &'v LabVip>,
    ring_size: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    dp.set_settings(settings)?;
    for b in backends {
        dp.set_backend(b.id, &backend_entry(SocketAddr::new(b.addr, b.port)))?;
    }
    for v in vips {
        let meta = VipMeta {
            vip_num: v.num,
            flags: v.flags,
            ..VipMeta::default()
        };
        dp.set_vip(&v.key(), &meta)?;
        // Every slot, empty ones included: a fresh RING map is all zeroes (backend 0).
        dp.write_ring_delta(v.num, &v.initial_ring(ring_size)?.full_delta())?;
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`, as `ip` takes a MAC address.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `ip` arguments of a permanent neighbour entry: `addr` at `mac` behind `dev`.
pub fn neighbour_args<'a>(addr: &'a str, mac: &'a str, dev: &'a str) -> [&'a str; 9] {
    [
        "neigh",
        "add",
        addr,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]
}

/// The permanent neighbours of a lab: the clients behind the client device, then every
/// backend that has a MAC; an address listed twice keeps its first entry.
pub fn lab_neighbours(
    clients: &[(IpAddr, [u8; 6])],
    backends: &[LabBackend],
) -> Vec<(IpAddr, [u8; 6], Side)> {
    let mut neighbours: Vec<(IpAddr, [u8; 6], Side)> = Vec::new();
    let clients = clients.iter().map(|&(a, m)| (a, Some(m), Side::Client));
    let backends = backends.iter().map(|b| (b.addr, b.mac, b.side));
    for (addr, mac, side) in clients.chain(backends) {
        if let Some(mac) = mac {
            if !neighbours.iter().any(|(a, _, _)| *a == addr) {
                neighbours.push((addr, mac, side));
            }
        }
    }
    neighbours
}
