//! Loading the XDP program, attaching it, and writing the control plane's state into its maps.
//!
//! Maps are pinned under bpffs (one directory per instance) so that restarting the userspace
//! process reuses the flow tables: established flows keep their backend and NAT port.

pub mod links;
pub mod test_run;

use std::{
    collections::HashMap as StdHashMap,
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use proxy_common::{
    map_names, Backend, Counters, Reason, Settings, VipKey, VipMeta, BASELINE_PROGRAM_NAME,
    COUNTER_SLOTS, DEFAULT_MAX_FLOWS, LOOKUP_FLOOR_PROGRAM_NAME, MAX_BACKENDS, MAX_VIPS,
    PROGRAM_NAME,
};
use tracing::{info, warn};

use crate::{balancer::MapWriter, maglev::RingDelta};

/// The compiled XDP object, built by `proxy/build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf.o"));

// The XDP program's flow and NAT tables are read like a seqlock with plain loads, which is
// sound only where the CPU keeps loads in order (x86-64); BPF gives the reader no cheap
// barrier (see proxy-ebpf/src/flows.rs). The kernel JITs the program for the CPU this
// loader runs on, so the loader's target is the data plane's.
#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "the XDP data plane targets x86-64 only: its table readers rely on x86's load ordering \
     (see proxy-ebpf/src/flows.rs)"
);

/// Root of all pin directories (the config checks `pin_dir` against it).
pub use crate::config::BPFFS;

/// Errors of the kernel data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// bpffs is not mounted and could not be mounted.
    #[error("bpffs is not mounted at {BPFFS} and mounting it failed (are you root?)")]
    Bpffs {
        #[source]
        io_error: io::Error,
    },
    /// The pin directory could not be created.
    #[error("failed to create pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        io_error: io::Error,
    },
    /// The object failed to load (verifier rejection, missing privileges...).
    #[error("failed to load the XDP object (the verifier log is in the source error)")]
    Load(#[source] Box<EbpfError>),
    /// The program failed to load or attach.
    #[error("XDP program failed: {what}")]
    Program {
        what: String,
        #[source]
        source: Box<ProgramError>,
    },
    /// The object has no XDP program of that name.
    #[error("XDP program `{name}` is missing from the object or is not an XDP program")]
    ProgramMissing { name: &'static str },
    /// A map is missing or has the wrong type.
    #[error("map `{name}` is missing or has an unexpected type")]
    MapMissing { name: &'static str },
    /// A map operation failed.
    #[error("map `{name}`: {what}")]
    Map {
        name: &'static str,
        what: String,
        #[source]
        source: Box<MapError>,
    },
    /// A pinned map has another layout than this build's (left by another version).
    #[error(
        "pinned map {name} in {path} has {found_key}-byte keys and {found_value}-byte values, \
         this version uses {want_key} and {want_value}: it was made by another version; stop \
         the proxy and run `proxy detach --forget-flows` (it removes that directory; \
         established flows are lost)"
    )]
    PinnedLayoutChanged {
        path: PathBuf,
        name: &'static str,
        found_key: u32,
        found_value: u32,
        want_key: u32,
        want_value: u32,
    },
    /// Pinned maps were made for a different flow limit (the IPv4 flow table's size).
    #[error(
        "pinned maps in {path} hold an IPv4 flow table of {pinned} slots, max_flows asks for \
         {wanted}; stop the proxy and run `proxy detach --forget-flows` (it removes that \
         directory; established flows are lost) or keep the old max_flows"
    )]
    FlowTableSizeChanged {
        path: PathBuf,
        pinned: u32,
        wanted: u32,
    },
    /// Pinned maps were made for a different ring size.
    #[error(
        "pinned maps in {path} were created with ring size {pinned}, config asks for {wanted}; \
         stop the proxy and run `proxy detach --forget-flows` (it removes that directory; \
         established flows are lost) or keep the old size"
    )]
    RingSizeChanged {
        path: PathBuf,
        pinned: u32,
        wanted: u32,
    },
    /// A VIP or backend index is out of the map's range.
    #[error("{what} {index} is out of range (max {max})")]
    OutOfRange {
        what: &'static str,
        index: u32,
        max: u32,
    },
    /// The interface does not exist.
    #[error("interface `{name}` not found")]
    NoInterface { name: String },
}

fn map_err(name: &'static str, what: impl Into<String>) -> impl FnOnce(MapError) -> DataPlaneError {
    let what = what.into();
    move |source| DataPlaneError::Map {
        name,
        what,
        source: Box::new(source),
    }
}

/// How to load the data plane.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Directory under bpffs for this instance's pinned maps.
    pub pin_dir: PathBuf,
    pub ring_size: u32,
    pub max_flows: u32,
    /// Positions of the largest backend NAT port space: ports per SNAT address × SNAT
    /// addresses of the family that has more (`proxy_common::ports::nat_positions`). Sizes
    /// `NAT_PORTS`.
    pub nat_positions: u32,
}

/// Ports in the default NAT range (`balancer.nat_ports`), one SNAT address.
const DEFAULT_NAT_POSITIONS: u32 = proxy_common::ports::nat_positions(1_024, 65_535, 1);

impl LoadOptions {
    pub fn new(pin_dir: impl Into<PathBuf>, ring_size: u32) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            ring_size,
            max_flows: DEFAULT_MAX_FLOWS,
            nat_positions: DEFAULT_NAT_POSITIONS,
        }
    }

    /// What a `[balancer]` section asks for.
    pub fn from_config(b: &crate::config::BalancerConfig) -> Self {
        let snats = b.snat_v4.len().max(b.snat_v6.len()).max(1) as u32;
        Self {
            pin_dir: b.pin_dir.clone(),
            ring_size: b.ring_size,
            max_flows: b.max_flows,
            nat_positions: proxy_common::ports::nat_positions(
                b.nat_ports[0],
                b.nat_ports[1],
                snats,
            ),
        }
    }
}

pub use crate::balancer::NatOccupancy;

/// Counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterTotals {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub lru_misses: u64,
}

/// How an interface ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

/// What [`DataPlane::attach_pinned`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// A new pinned link, in this mode.
    New(AttachMode),
    /// An earlier process's pinned link, now running this process's program.
    Adopted,
}

/// The loaded XDP program and its maps.
pub struct DataPlane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    ring_size: u32,
    /// Slots of the IPv4 flow table, and the secret seed of its bucket hash.
    flow_slots: u32,
    table_seed: u32,
    /// Words per backend in `NAT_PORTS`, and whether every present backend's space must be
    /// written afresh (the map is new, or its geometry changed) at the next settings write.
    nat_stride: u32,
    nat_spaces_stale: bool,
    /// Attachments that end with this process (tests, benches).
    attached: Vec<(String, XdpLinkId)>,
    /// Attachments pinned in bpffs, which outlive it (`proxy run`).
    held: Vec<links::HeldLink>,
}

fn xdp<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, DataPlaneError> {
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataPlaneError::ProgramMissing { name })
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataPlaneError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataPlaneError::ProgramMissing { name })
}

/// Key and value sizes of every pinned map, as this build defines them.
fn pinned_layout() -> [(&'static str, usize, usize); 13] {
    use proxy_common::*;
    use std::mem::size_of;
    [
        (map_names::SETTINGS, 4, size_of::<Settings>()),
        (map_names::VIP_INDEX, 4, 4),
        (map_names::VIP_KEYS, 4, size_of::<VipKey>()),
        (map_names::VIP_METAS, 4, size_of::<VipMeta>()),
        (map_names::BACKENDS, 4, size_of::<Backend>()),
        (map_names::RING, 4, 4),
        (map_names::FLOW_SLOTS4, 4, size_of::<FlowSlot4>()),
        (
            map_names::FLOWS,
            size_of::<FlowKey>(),
            size_of::<FlowState>(),
        ),
        (map_names::NAT_SLOTS4, 4, size_of::<NatSlot4>()),
        (
            map_names::NAT_REVERSE,
            size_of::<NatKey>(),
            size_of::<NatState>(),
        ),
        (map_names::COUNTERS, 4, size_of::<Counters>()),
        (map_names::REASONS, 4, 8),
        (map_names::NAT_PORTS, 4, 8),
    ]
}

/// Refuses pinned maps whose layout differs from this build's (another version's pins):
/// reusing them would fail in the verifier or, worse, misread flows.
fn check_pinned_layout(pin_dir: &Path) -> Result<(), DataPlaneError> {
    for (name, key, value) in pinned_layout() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name, "open pinned"))?;
        if (info.key_size(), info.value_size()) != (key as u32, value as u32) {
            return Err(DataPlaneError::PinnedLayoutChanged {
                path: pin_dir.to_path_buf(),
                name,
                found_key: info.key_size(),
                found_value: info.value_size(),
                want_key: key as u32,
                want_value: value as u32,
            });
        }
    }
    Ok(())
}

/// A non-zero random u32 from the kernel (zero means "no seed yet" in pinned settings).
fn random_seed() -> u32 {
    let mut buf = [0u8; 4];
    loop {
        // SAFETY: buf is a valid out-buffer of its length.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        let seed = u32::from_ne_bytes(buf);
        if n == 4 && seed != 0 {
            return seed;
        }
    }
}

/// Length of a kernel tick (jiffy) in ns: the resolution of the coarse clocks is exactly one
/// tick. The data plane keeps time in jiffies, so timeouts are written in ticks.
pub fn kernel_tick_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: res is a valid out-pointer for the call.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    let ns = res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64;
    if rc != 0 || ns == 0 {
        // Cannot happen on Linux; 4 ms (HZ=250) is the common kernel default.
        return 4_000_000;
    }
    ns
}

/// Mounts bpffs at /sys/fs/bpf when it is not there yet (fresh boots of minimal systems).
pub fn ensure_bpffs() -> Result<(), DataPlaneError> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let path = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: statfs is plain integers; all zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string path and a valid out-pointer for the call.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DataPlaneError::Bpffs {
            io_error: io::Error::last_os_error(),
        });
    }
    info!(path = BPFFS, "mounted bpffs");
    Ok(())
}

impl DataPlane {
    /// Loads the program and creates (or reuses pinned) maps. Needs root.
    /// Minimum kernel: 5.12 (BPF atomic compare-and-swap on map values: 5.12; bpf_link XDP
    /// attach: 5.9; bounded loops: 5.3).
    pub fn load(opts: &LoadOptions) -> Result<Self, DataPlaneError> {
        ensure_bpffs()?;
        check_pinned_layout(&opts.pin_dir)?;
        std::fs::create_dir_all(&opts.pin_dir).map_err(|io_error| DataPlaneError::PinDir {
            path: opts.pin_dir.clone(),
            io_error,
        })?;
        let flow_slots = proxy_common::flow_slots4(opts.max_flows);
        // Two copies per VIP (see `VipMeta::active_ring`).
        let ring_entries =
            (2 * MAX_VIPS)
                .checked_mul(opts.ring_size)
                .ok_or(DataPlaneError::OutOfRange {
                    what: "ring size",
                    index: opts.ring_size,
                    max: u32::MAX / (2 * MAX_VIPS),
                })?;
        // NAT port spaces are soft state (the reverse NAT table decides who holds a port):
        // a pinned map of another geometry is replaced, and the spaces rebuilt empty.
        let nat_positions = opts
            .nat_positions
            .clamp(1, proxy_common::ports::NAT_MAX_POSITIONS);
        let nat_stride = proxy_common::ports::nat_space_stride(nat_positions);
        let nat_entries = proxy_common::NAT_SPACES * nat_stride;
        let nat_pin = opts.pin_dir.join(map_names::NAT_PORTS);
        let mut nat_spaces_stale = !nat_pin.exists();
        if !nat_spaces_stale {
            let info = aya::maps::MapInfo::from_pin(&nat_pin)
                .map_err(map_err(map_names::NAT_PORTS, "open pinned"))?;
            if info.max_entries() != nat_entries {
                info!(
                    pinned = info.max_entries(),
                    wanted = nat_entries,
                    "NAT port range or SNAT addresses changed: rebuilding the NAT port spaces"
                );
                std::fs::remove_file(&nat_pin).map_err(|io_error| DataPlaneError::PinDir {
                    path: nat_pin.clone(),
                    io_error,
                })?;
                nat_spaces_stale = true;
            }
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_dir)
            .map_max_entries(map_names::NAT_PORTS, nat_entries)
            .map_max_entries(map_names::RING, ring_entries)
            .map_max_entries(map_names::FLOWS, opts.max_flows)
            .map_max_entries(map_names::FLOW_SLOTS4, flow_slots)
            .map_max_entries(map_names::NAT_SLOTS4, proxy_common::nat_slots4(flow_slots))
            .map_max_entries(map_names::NAT_REVERSE, opts.max_flows)
            .load(OBJECT)
            .map_err(|e| DataPlaneError::Load(Box::new(e)))?;
        let prog = xdp_mut(&mut ebpf, PROGRAM_NAME)?;
        prog.load().map_err(|e| DataPlaneError::Program {
            what: "verifier rejected proxy_xdp".into(),
            source: Box::new(e),
        })?;
        let mut dp = Self {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            ring_size: opts.ring_size,
            flow_slots,
            table_seed: 0,
            nat_stride,
            nat_spaces_stale,
            attached: Vec::new(),
            held: Vec::new(),
        };
        let current = dp.settings()?;
        if current.ring_size != 0 && current.ring_size != opts.ring_size {
            return Err(DataPlaneError::RingSizeChanged {
                path: opts.pin_dir.clone(),
                pinned: current.ring_size,
                wanted: opts.ring_size,
            });
        }
        let pinned_slots = if current.flow_bucket_mask == 0 {
            0
        } else {
            (current.flow_bucket_mask + 1) * proxy_common::FLOW_WAYS
        };
        if pinned_slots != 0 && pinned_slots != flow_slots {
            return Err(DataPlaneError::FlowTableSizeChanged {
                path: opts.pin_dir.clone(),
                pinned: pinned_slots,
                wanted: flow_slots,
            });
        }
        // The seed stays with the table: flows pinned before a restart are found after it.
        dp.table_seed = match current.table_seed {
            0 => random_seed(),
            seed => seed,
        };
        // The table is usable from the first packet, before the caller's settings arrive.
        dp.set_settings(&current)?;
        Ok(dp)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// Loads the XDP_PASS baseline program (benchmarks only) and returns its fd.
    pub fn load_baseline(&mut self) -> Result<RawFd, DataPlaneError> {
        self.load_bench_program(BASELINE_PROGRAM_NAME)
    }

    /// Loads the lookup-floor program (benchmarks only: one FLOWS4 lookup) and returns its fd.
    pub fn load_lookup_floor(&mut self) -> Result<RawFd, DataPlaneError> {
        self.load_bench_program(LOOKUP_FLOOR_PROGRAM_NAME)
    }

    fn load_bench_program(&mut self, name: &'static str) -> Result<RawFd, DataPlaneError> {
        let prog = xdp_mut(&mut self.ebpf, name)?;
        prog.load().map_err(|e| DataPlaneError::Program {
            what: format!("verifier rejected {name}"),
            source: Box::new(e),
        })?;
        self.fd_of(name)
    }

    /// The main program's file descriptor (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&self) -> Result<RawFd, DataPlaneError> {
        self.fd_of(PROGRAM_NAME)
    }

    fn fd_of(&self, name: &'static str) -> Result<RawFd, DataPlaneError> {
        let prog = xdp(&self.ebpf, name)?;
        let fd = prog.fd().map_err(|e| DataPlaneError::Program {
            what: "program not loaded".into(),
            source: Box::new(e),
        })?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Attaches to `iface` in native mode, falling back to generic mode with a warning. The
    /// attachment ends with this process (or [`DataPlane::detach_all`]).
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode, DataPlaneError> {
        let (link, mode) = self.attach_link(iface)?;
        self.attached.push((iface.to_string(), link));
        Ok(mode)
    }

    fn attach_link(&mut self, iface: &str) -> Result<(XdpLinkId, AttachMode), DataPlaneError> {
        let prog = xdp_mut(&mut self.ebpf, PROGRAM_NAME)?;
        let (link, mode) = match prog.attach(iface, XdpMode::Driver) {
            Ok(link) => (link, AttachMode::Native),
            Err(native_err) => {
                warn!(iface, error = %native_err, "native XDP attach failed; falling back to generic (skb) mode, which is much slower");
                let link =
                    prog.attach(iface, XdpMode::Skb)
                        .map_err(|e| DataPlaneError::Program {
                            what: format!("attach to {iface}"),
                            source: Box::new(e),
                        })?;
                (link, AttachMode::Generic)
            }
        };
        info!(iface, ?mode, "XDP attached");
        Ok((link, mode))
    }

    /// Attaches to `iface` through a link pinned next to the maps, so the program keeps
    /// forwarding after this process exits. A link pinned by an earlier process is adopted:
    /// this build's program replaces the running one atomically and the maps stay. A pinned
    /// link that cannot be used (its interface was re-created) is replaced by a new one.
    pub fn attach_pinned(&mut self, iface: &str) -> Result<Attachment, DataPlaneError> {
        let pin = links::link_pin_path(&self.pin_dir, iface);
        let prog = xdp_mut(&mut self.ebpf, PROGRAM_NAME)?;
        match links::adopt(prog, iface, &pin) {
            Ok(held) => {
                info!(iface, "XDP adopted: the pinned link now runs this program");
                self.held.push(held);
                return Ok(Attachment::Adopted);
            }
            Err(links::AdoptError::Missing) => {}
            Err(links::AdoptError::Unusable(why)) => {
                warn!(iface, %why, "pinned XDP link unusable; attaching afresh");
                std::fs::remove_file(&pin).map_err(|io_error| DataPlaneError::PinDir {
                    path: pin.clone(),
                    io_error,
                })?;
            }
        }
        let (id, mode) = self.attach_link(iface)?;
        let prog = xdp_mut(&mut self.ebpf, PROGRAM_NAME)?;
        let link = prog.take_link(id).map_err(|e| DataPlaneError::Program {
            what: format!("take the link of {iface}"),
            source: Box::new(e),
        })?;
        let held = links::pin(iface, link, &pin).map_err(|io_error| DataPlaneError::PinDir {
            path: pin.clone(),
            io_error,
        })?;
        self.held.push(held);
        Ok(Attachment::New(mode))
    }

    /// Interfaces attached through pinned links, which stay attached after this process.
    pub fn pinned_interfaces(&self) -> Vec<String> {
        self.held.iter().map(|h| h.iface.clone()).collect()
    }

    /// Detaches from every interface this process attached: process-bound attachments now,
    /// pinned ones only when `unpin` (their pins are removed; otherwise the kernel keeps
    /// forwarding with the maps as they are).
    pub fn release(&mut self, unpin: bool) {
        self.detach_all();
        for held in self.held.drain(..) {
            if unpin {
                match std::fs::remove_file(&held.pin) {
                    Ok(()) => info!(iface = held.iface, "XDP detached (pinned link removed)"),
                    Err(e) => {
                        warn!(iface = held.iface, error = %e, "removing the pinned XDP link failed")
                    }
                }
            } else {
                info!(
                    iface = held.iface,
                    "XDP stays attached (pinned link): flows keep forwarding until the next start or `proxy detach`"
                );
            }
            drop(held.link);
        }
    }

    /// Detaches the process-bound attachments (also happens when the process exits: links
    /// are fds). Pinned ones stay: see [`DataPlane::release`].
    pub fn detach_all(&mut self) {
        let Ok(prog) = xdp_mut(&mut self.ebpf, PROGRAM_NAME) else {
            return;
        };
        for (iface, link) in self.attached.drain(..) {
            match prog.detach(link) {
                Ok(()) => info!(iface, "XDP detached"),
                Err(e) => warn!(iface, error = %e, "XDP detach failed"),
            }
        }
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, DataPlaneError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataPlaneError::MapMissing { name })?;
        Array::try_from(map).map_err(map_err(name, "open"))
    }

    pub fn settings(&mut self) -> Result<Settings, DataPlaneError> {
        self.array::<Settings>(map_names::SETTINGS)?
            .get(&0, 0)
            .map_err(map_err(map_names::SETTINGS, "read"))
    }

    /// Writes the settings; ring size, flow-table and NAT port-space geometry are the loaded
    /// maps' own. When the NAT port range or SNAT addresses change, every present backend's
    /// port space is rebuilt empty (ports of live flows are then protected by the reverse NAT
    /// table, which the data plane checks before handing a port out).
    pub fn set_settings(&mut self, settings: &Settings) -> Result<(), DataPlaneError> {
        let old = self.settings()?;
        let mut s = *settings;
        s.ring_size = self.ring_size;
        s.flow_bucket_mask = self.flow_slots / proxy_common::FLOW_WAYS - 1;
        s.table_seed = self.table_seed;
        s.nat_space_stride = self.nat_stride;
        let geometry = |s: &Settings| {
            (
                s.nat_port_min,
                s.nat_port_max,
                s.snat_v4_count,
                s.snat_v6_count,
                s.nat_space_stride,
            )
        };
        let rebuild = self.nat_spaces_stale || geometry(&old) != geometry(&s);
        if rebuild {
            // Spaces first, so no packet sees the new geometry over old bits.
            let present: Vec<(u32, u8)> = self
                .array_values::<Backend>(map_names::BACKENDS)?
                .iter()
                .enumerate()
                .filter(|(_, b)| b.flags & proxy_common::BACKEND_PRESENT != 0)
                .map(|(id, b)| (id as u32, b.family))
                .collect();
            for (id, family) in present {
                self.init_nat_space(id, s.nat_positions(family))?;
            }
            self.nat_spaces_stale = false;
        }
        self.array::<Settings>(map_names::SETTINGS)?
            .set(0, s, 0)
            .map_err(map_err(map_names::SETTINGS, "write"))
    }

    /// Writes backend `id`'s NAT port space empty, for `positions` positions.
    fn init_nat_space(&mut self, id: u32, positions: u32) -> Result<(), DataPlaneError> {
        let stride = self.nat_stride;
        let mut words = vec![0u64; stride as usize];
        proxy_common::ports::init_space(positions, stride, &mut words);
        let mut map = self.array::<u64>(map_names::NAT_PORTS)?;
        for (i, w) in words.into_iter().enumerate() {
            map.set(id * stride + i as u32, w, 0)
                .map_err(map_err(map_names::NAT_PORTS, "write"))?;
        }
        Ok(())
    }

    /// Entry `index` of array map `name`, read through a shared borrow (the readers below
    /// run while the control plane holds the data plane immutably).
    fn read_entry<V: aya::Pod>(&self, name: &'static str, index: u32) -> Result<V, DataPlaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataPlaneError::MapMissing { name })?;
        let array: Array<_, V> = Array::try_from(map).map_err(map_err(name, "open"))?;
        array.get(&index, 0).map_err(map_err(name, "read"))
    }

    /// The raw words of backend `id`'s NAT port space (diagnostics and tests).
    pub fn nat_space_words(&self, id: u32) -> Result<Vec<u64>, DataPlaneError> {
        let stride = self.nat_stride;
        (0..stride)
            .map(|i| self.read_entry::<u64>(map_names::NAT_PORTS, id * stride + i))
            .collect()
    }

    /// How many of backend `id`'s NAT ports are taken; None if it has no port space (not
    /// present, or no SNAT address for its family).
    pub fn nat_occupancy(&self, id: u32) -> Result<Option<NatOccupancy>, DataPlaneError> {
        if id >= MAX_BACKENDS {
            return Ok(None);
        }
        let b: Backend = self.read_entry(map_names::BACKENDS, id)?;
        if b.flags & proxy_common::BACKEND_PRESENT == 0 {
            return Ok(None);
        }
        let s: Settings = self.read_entry(map_names::SETTINGS, 0)?;
        let positions = s.nat_positions(b.family);
        if positions == 0 {
            return Ok(None);
        }
        Ok(Some(NatOccupancy {
            taken: proxy_common::ports::taken_count(positions, &self.nat_space_words(id)?),
            capacity: positions,
        }))
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataPlaneError> {
        if id >= MAX_BACKENDS {
            return Err(DataPlaneError::OutOfRange {
                what: "backend id",
                index: id,
                max: MAX_BACKENDS - 1,
            });
        }
        let old = self
            .array::<Backend>(map_names::BACKENDS)?
            .get(&id, 0)
            .map_err(map_err(map_names::BACKENDS, "read"))?;
        let present = |b: &Backend| b.flags & proxy_common::BACKEND_PRESENT != 0;
        let same_node = present(&old)
            && (old.addr, old.port, old.family) == (backend.addr, backend.port, backend.family);
        if present(backend) && !same_node {
            // A new node under this id: its flows start from an empty port space, written
            // before the data plane can pin a flow to it.
            let positions = self.settings()?.nat_positions(backend.family);
            self.init_nat_space(id, positions)?;
        }
        self.array::<Backend>(map_names::BACKENDS)?
            .set(id, *backend, 0)
            .map_err(map_err(map_names::BACKENDS, "write"))
    }

    /// Marks a backend removed: flows pinned to it are re-balanced on their next packet.
    pub fn clear_backend(&mut self, id: u32) -> Result<(), DataPlaneError> {
        self.set_backend(id, &Backend::default())
    }

    /// Adds a VIP or updates its meta (ring flips). The data plane finds it through
    /// `VIP_INDEX` (key -> number), `VIP_KEYS` and `VIP_METAS` (by number); key and meta are
    /// written before the index entry that makes them reachable.
    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataPlaneError> {
        if meta.vip_num >= MAX_VIPS {
            return Err(DataPlaneError::OutOfRange {
                what: "vip number",
                index: meta.vip_num,
                max: MAX_VIPS - 1,
            });
        }
        self.array::<VipMeta>(map_names::VIP_METAS)?
            .set(meta.vip_num, *meta, 0)
            .map_err(map_err(map_names::VIP_METAS, "write"))?;
        self.array::<VipKey>(map_names::VIP_KEYS)?
            .set(meta.vip_num, *key, 0)
            .map_err(map_err(map_names::VIP_KEYS, "write"))?;
        let (found, free) = self.vip_index_find(key)?;
        if let Some((_, num)) = found {
            if num == meta.vip_num {
                return Ok(());
            }
        }
        // Not indexed yet (or indexed under another number, which stays behind harmlessly:
        // lookups check the key stored under a number).
        let slot = match (found, free) {
            (Some((slot, _)), _) => slot,
            (None, Some(slot)) => slot,
            (None, None) => {
                return Err(DataPlaneError::OutOfRange {
                    what: "VIP index probe sequence (too many VIPs hash alike)",
                    index: proxy_common::VIP_INDEX_PROBES,
                    max: proxy_common::VIP_INDEX_PROBES - 1,
                })
            }
        };
        self.array::<u32>(map_names::VIP_INDEX)?
            .set(slot, meta.vip_num + 1, 0)
            .map_err(map_err(map_names::VIP_INDEX, "write"))
    }

    /// Removes a VIP: its index entry, its key (its flows stop matching on their next
    /// packet) and its meta.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataPlaneError> {
        let (found, _) = self.vip_index_find(key)?;
        let Some((slot, num)) = found else {
            return Ok(());
        };
        self.array::<u32>(map_names::VIP_INDEX)?
            .set(slot, proxy_common::VIP_INDEX_REMOVED, 0)
            .map_err(map_err(map_names::VIP_INDEX, "write"))?;
        self.array::<VipKey>(map_names::VIP_KEYS)?
            .set(num, VipKey::default(), 0)
            .map_err(map_err(map_names::VIP_KEYS, "write"))?;
        self.array::<VipMeta>(map_names::VIP_METAS)?
            .set(num, VipMeta::default(), 0)
            .map_err(map_err(map_names::VIP_METAS, "write"))
    }

    /// Walks the key's probe sequence in `VIP_INDEX` as the data plane does: the slot and
    /// number of its entry if present, and the first slot an insert may use.
    #[allow(clippy::type_complexity)]
    fn vip_index_find(
        &mut self,
        key: &VipKey,
    ) -> Result<(Option<(u32, u32)>, Option<u32>), DataPlaneError> {
        let index = self.array::<u32>(map_names::VIP_INDEX)?;
        let mut entries = Vec::new();
        for i in 0..proxy_common::VIP_INDEX_PROBES {
            let slot = proxy_common::vip_index_slot(key, i);
            let entry = index
                .get(&slot, 0)
                .map_err(map_err(map_names::VIP_INDEX, "read"))?;
            entries.push((slot, entry));
        }
        let keys = self.array::<VipKey>(map_names::VIP_KEYS)?;
        let mut free = None;
        for (slot, entry) in entries {
            match entry {
                proxy_common::VIP_INDEX_EMPTY => {
                    return Ok((None, free.or(Some(slot))));
                }
                proxy_common::VIP_INDEX_REMOVED => {
                    free = free.or(Some(slot));
                }
                n => {
                    let num = n - 1;
                    let k = keys
                        .get(&num, 0)
                        .map_err(map_err(map_names::VIP_KEYS, "read"))?;
                    if &k == key {
                        return Ok((Some((slot, num)), free));
                    }
                }
            }
        }
        Ok((None, free))
    }

    /// Writes changed slots into one copy of VIP `vip_num`'s ring (see `VipMeta::active_ring`).
    pub fn write_ring_copy(
        &mut self,
        vip_num: u32,
        copy: u32,
        delta: &[RingDelta],
    ) -> Result<(), DataPlaneError> {
        let base = proxy_common::ring_index(vip_num, copy) * self.ring_size;
        let mut ring = self.array::<u32>(map_names::RING)?;
        for d in delta {
            ring.set(base + d.slot, d.id, 0)
                .map_err(map_err(map_names::RING, "write slot"))?;
        }
        Ok(())
    }

    /// Writes the same slots into both copies (set-up and tests; live changes go through
    /// the control plane's copy-and-flip).
    pub fn write_ring_delta(
        &mut self,
        vip_num: u32,
        delta: &[RingDelta],
    ) -> Result<(), DataPlaneError> {
        self.write_ring_copy(vip_num, 0, delta)?;
        self.write_ring_copy(vip_num, 1, delta)
    }

    /// Reads back one copy of a VIP's ring (tests and diagnostics).
    pub fn read_ring(&mut self, vip_num: u32, copy: u32) -> Result<Vec<u32>, DataPlaneError> {
        let base = proxy_common::ring_index(vip_num, copy) * self.ring_size;
        let size = self.ring_size;
        let ring = self.array::<u32>(map_names::RING)?;
        (0..size)
            .map(|s| {
                ring.get(&(base + s), 0)
                    .map_err(map_err(map_names::RING, "read slot"))
            })
            .collect()
    }

    fn per_cpu<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<PerCpuArray<&MapData, V>, DataPlaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataPlaneError::MapMissing { name })?;
        PerCpuArray::try_from(map).map_err(map_err(name, "open"))
    }

    /// Counters of a VIP (index < MAX_VIPS) or backend (`backend_counter_index`), summed over CPUs.
    pub fn counters(&self, index: u32) -> Result<CounterTotals, DataPlaneError> {
        if index >= COUNTER_SLOTS {
            return Err(DataPlaneError::OutOfRange {
                what: "counter index",
                index,
                max: COUNTER_SLOTS - 1,
            });
        }
        let values = self
            .per_cpu::<Counters>(map_names::COUNTERS)?
            .get(&index, 0)
            .map_err(map_err(map_names::COUNTERS, "read"))?;
        Ok(values
            .iter()
            .fold(CounterTotals::default(), |t, c| CounterTotals {
                packets: t.packets + c.packets,
                bytes: t.bytes + c.bytes,
                new_flows: t.new_flows + c.new_flows,
                lru_misses: t.lru_misses + c.lru_misses,
            }))
    }

    /// Packets by pass/drop/forward reason, summed over CPUs.
    pub fn reasons(&self) -> Result<StdHashMap<Reason, u64>, DataPlaneError> {
        let map = self.per_cpu::<u64>(map_names::REASONS)?;
        let mut out = StdHashMap::new();
        for r in Reason::ALL {
            let v = map
                .get(&(r as u32), 0)
                .map_err(map_err(map_names::REASONS, "read"))?;
            out.insert(r, v.iter().sum());
        }
        Ok(out)
    }

    /// Every slot of the IPv4 flow table (walks the map: diagnostics and tests).
    pub fn ipv4_flow_slots(&self) -> Result<Vec<proxy_common::FlowSlot4>, DataPlaneError> {
        self.array_values(map_names::FLOW_SLOTS4)
    }

    /// Every slot of the IPv4 reverse NAT table (walks the map: diagnostics and tests).
    pub fn ipv4_nat_slots(&self) -> Result<Vec<proxy_common::NatSlot4>, DataPlaneError> {
        self.array_values(map_names::NAT_SLOTS4)
    }

    fn array_values<V: aya::Pod>(&self, name: &'static str) -> Result<Vec<V>, DataPlaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataPlaneError::MapMissing { name })?;
        let array: Array<_, V> = Array::try_from(map).map_err(map_err(name, "open"))?;
        array
            .iter()
            .map(|v| v.map_err(map_err(name, "read")))
            .collect()
    }

    /// Number of live entries in the forward flow table (walks the map: diagnostics only).
    pub fn flow_count(&self) -> Result<usize, DataPlaneError> {
        let v4 = self
            .ipv4_flow_slots()?
            .iter()
            .filter(|s| s.tag != proxy_common::SLOT_EMPTY && s.tag != proxy_common::SLOT_BUSY)
            .count();
        Ok(v4 + self.count_keys::<proxy_common::FlowKey>(map_names::FLOWS)?)
    }

    fn count_keys<K: aya::Pod>(&self, name: &'static str) -> Result<usize, DataPlaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataPlaneError::MapMissing { name })?;
        let flows: HashMap<_, K, proxy_common::FlowState> =
            HashMap::try_from(map).map_err(map_err(name, "open"))?;
        Ok(flows.keys().filter(|k| k.is_ok()).count())
    }

    /// Removes this instance's pinned maps (flow state is lost). For tests and `proxy unpin`.
    pub fn remove_pins(pin_dir: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(pin_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The control plane writes the real maps through this (the balancer only knows the trait).
impl MapWriter for DataPlane {
    type Error = DataPlaneError;
    fn tick_ns(&self) -> u64 {
        kernel_tick_ns()
    }
    fn set_settings(&mut self, s: &Settings) -> Result<(), Self::Error> {
        DataPlane::set_settings(self, s)
    }
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), Self::Error> {
        DataPlane::set_vip(self, key, meta)
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), Self::Error> {
        DataPlane::remove_vip(self, key)
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), Self::Error> {
        DataPlane::set_backend(self, id, b)
    }
    fn write_ring_copy(
        &mut self,
        vip_num: u32,
        copy: u32,
        delta: &[RingDelta],
    ) -> Result<(), Self::Error> {
        DataPlane::write_ring_copy(self, vip_num, copy, delta)
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.detach_all();
    }
}
