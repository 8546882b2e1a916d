//! `cargo xtask bench l4`: L4 forwarding on the veth lab (client → balancer → node) through
//! three peers in the same run: the XDP full-NAT data plane, nftables DNAT and HAProxy
//! `mode tcp`. Rounds alternate between the peers; every peer-round builds a fresh lab.
//!
//! Per peer-round, with the balancer's NAPI kthreads (and HAProxy) on the peer CPU and
//! everything else on the load generator's CPU ([`isolation`]):
//! - small packets: many connections doing 64-byte request/response; packets/s are the
//!   packets that entered the balancer (transmitted by the client's and the node's veth);
//! - large payloads: a few connections streaming to a sink on the node, Gbit/s of payload;
//! - new connections: a connection storm (`proxy_tests::storm`), full cycles per second;
//! - the balancer's CPU per packet: busy time of the peer CPU over packets, and how busy
//!   each side was, so every figure says which side was the limit.

pub mod isolation;
pub mod load;
pub mod peers;

use std::{
    net::SocketAddr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use proxy_tests::{
    netns::{unique_prefix, NetNs},
    procfs,
    storm::{storm, StormServer, NODE_PORT, VIP_PORT},
    topology::{self, Lab},
};

use self::{
    isolation::CpuTimes,
    load::{Mode, NodeServer},
    peers::{Peer, Running},
};
use crate::bench::{
    cleanup,
    progress::Progress,
    results::{self, median, ratio_higher_better, ratio_lower_better, Case},
};

/// What to run (the binary's flags).
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    /// Seconds per measured window.
    pub seconds: f64,
    /// Rounds per peer (interleaved).
    pub rounds: usize,
    pub out_dir: PathBuf,
    /// The balancer's CPU (NAPI kthreads of its veths, HAProxy).
    pub proxy_cpu: usize,
    /// The load generator's CPU (clients, node servers, their veths' NAPI kthreads).
    pub client_cpu: usize,
    /// Storm client threads.
    pub workers: usize,
    /// Request/response connections and message size.
    pub small_connections: usize,
    pub small_bytes: usize,
    /// Streaming connections.
    pub large_connections: usize,
    /// Leave NAPI as it is (softirq on the sending CPU): to see what isolation changes.
    pub no_threaded_napi: bool,
    /// The peers to run (all three unless narrowed for a look at one).
    pub peers: Vec<Peer>,
}

/// Warm-up before a window (connections open, windows grow).
const WARMUP: Duration = Duration::from_millis(500);
/// Pause after a lab is deleted.
const SETTLE: Duration = Duration::from_secs(1);
/// Bytes per write of a stream.
const CHUNK: usize = 64 * 1024;

/// What one measured window cost.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    secs: f64,
    /// Packets that entered the balancer.
    packets: u64,
    /// Packets the lab's veths dropped (rx or tx, both ends).
    dropped: u64,
    /// Busy time of the balancer's CPU (/proc/stat: everything that ran there).
    balancer_busy_ns: f64,
    /// The same over the window's length (1.0 = the whole CPU).
    balancer_share: f64,
    /// CPU time of the balancer's own threads (its veths' NAPI kthreads, HAProxy): less
    /// than `balancer_busy_ns` by what else ran on that CPU (softirq work outside them,
    /// timers, other processes).
    threads_ns: f64,
    threads_share: f64,
    loadgen_share: f64,
    /// HAProxy's own CPU time over the window's length.
    haproxy_share: Option<f64>,
}

impl Window {
    fn packets_per_s(&self) -> f64 {
        self.packets as f64 / self.secs.max(1e-9)
    }

    fn ns_per_packet(&self) -> f64 {
        if self.packets == 0 {
            return 0.0;
        }
        self.balancer_busy_ns / self.packets as f64
    }

    fn threads_ns_per_packet(&self) -> f64 {
        if self.packets == 0 {
            return 0.0;
        }
        self.threads_ns / self.packets as f64
    }
}

/// One peer-round's figures.
#[derive(Clone, Debug)]
struct Round {
    peer: Peer,
    small_messages_per_s: f64,
    small: Window,
    large_gbit_s: f64,
    large: Window,
    connections_per_s: f64,
    failed_connections: u64,
    storm: Window,
}

/// The counters a window is the difference of.
struct Snapshot {
    at: Instant,
    packets: u64,
    dropped: u64,
    balancer_own_s: f64,
    balancer: CpuTimes,
    loadgen: CpuTimes,
    haproxy_s: Option<f64>,
}

struct Meter<'a> {
    lab: &'a Lab,
    opts: &'a Options,
    haproxy: Option<u32>,
    /// The balancer's NAPI kthreads.
    napi: Vec<u32>,
}

impl Meter<'_> {
    fn snapshot(&self) -> Result<Snapshot> {
        let (cl, cl_drops) = link_counters(&self.lab.client, "cl")?;
        let (nic, nic_drops) = link_counters(&self.lab.nodes[0].ns, "nic")?;
        let mut dropped = cl_drops + nic_drops;
        for dev in self.lab.lb_interfaces() {
            dropped += link_counters(&self.lab.lb, &dev)?.1;
        }
        let packets = cl + nic;
        let haproxy_s = self
            .haproxy
            .map(procfs::cpu_seconds)
            .transpose()
            .context("HAProxy's CPU time")?;
        let mut balancer_own_s = haproxy_s.unwrap_or(0.0);
        for &pid in &self.napi {
            balancer_own_s += procfs::cpu_seconds(pid)
                .with_context(|| format!("CPU time of NAPI kthread {pid}"))?;
        }
        Ok(Snapshot {
            dropped,
            balancer_own_s,
            balancer: CpuTimes::read(self.opts.proxy_cpu)?,
            loadgen: CpuTimes::read(self.opts.client_cpu)?,
            at: Instant::now(),
            packets,
            haproxy_s,
        })
    }

    fn window(&self, a: &Snapshot) -> Result<Window> {
        let b = self.snapshot()?;
        let secs = (b.at - a.at).as_secs_f64();
        Ok(Window {
            secs,
            packets: b.packets.saturating_sub(a.packets),
            dropped: b.dropped.saturating_sub(a.dropped),
            balancer_busy_ns: b.balancer.busy_ns_since(&a.balancer),
            balancer_share: b.balancer.busy_share_since(&a.balancer),
            threads_ns: (b.balancer_own_s - a.balancer_own_s) * 1e9,
            threads_share: (b.balancer_own_s - a.balancer_own_s) / secs,
            loadgen_share: b.loadgen.busy_share_since(&a.loadgen),
            haproxy_share: a.haproxy_s.zip(b.haproxy_s).map(|(x, y)| (y - x) / secs),
        })
    }
}

/// Packets `dev` in `ns` transmitted, and packets it dropped (either way), from `stats64`.
fn link_counters(ns: &NetNs, dev: &str) -> Result<(u64, u64)> {
    let out = ns.ip(&["-j", "-s", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("`ip -j -s link` output")?;
    let st = &v[0]["stats64"];
    let tx = st["tx"]["packets"]
        .as_u64()
        .with_context(|| format!("no tx packets for {dev} in {out}"))?;
    let dropped =
        st["rx"]["dropped"].as_u64().unwrap_or(0) + st["tx"]["dropped"].as_u64().unwrap_or(0);
    Ok((tx, dropped))
}

/// Runs the whole scenario and writes `<out_dir>/l4.json` and `l4.md`.
pub fn run(opts: &Options) -> Result<()> {
    // Namespaces and pins of this process, also those of a lab half-built when a signal
    // comes (the per-lab guards below cover the normal path).
    let _sweep = cleanup::sweep_labs(&unique_prefix());
    // Everything this thread spawns from here on (clients, node servers, the storm) inherits
    // the load generator's CPU; the peer's pieces are moved to the peer CPU explicitly.
    isolation::set_affinity(0, opts.client_cpu)
        .with_context(|| format!("pinning the load generator to CPU {}", opts.client_cpu))?;
    let secs = opts.seconds;
    let per_peer_round = [secs + 2.5, secs + 0.7, secs + 1.5];
    let plan: Vec<f64> = (0..opts.rounds * opts.peers.len())
        .flat_map(|_| per_peer_round)
        .collect();
    let mut progress = Progress::new("l4", plan);
    let mut rounds = Vec::new();
    let mut notes = Vec::new();
    for r in 0..opts.rounds {
        for &peer in &opts.peers {
            let n = rounds.len();
            let round = run_peer_round(peer, r, n, opts, &mut progress, &mut notes)
                .with_context(|| format!("round {}, {}", r + 1, peer.name()))?;
            rounds.push(round);
        }
    }
    progress.finish();
    // Back to every CPU (the machine line counts the CPUs this thread may use).
    isolation::allow_all_cpus();
    let cases = cases(&rounds, &opts.peers);
    notes.extend(limit_notes(&rounds, &opts.peers));
    notes.push(format!(
        "{} round(s) per peer, interleaved, {secs} s windows, medians; balancer on CPU {}, load generator on CPU {}; \
         small: {} connections × {} B request/response; large: {} streams; storm: {} client threads; \
         packets = packets entering the balancer (client's and node's veth transmit counters); \
         balancer_cpu = busy time of the balancer's CPU (/proc/stat, sampled at the tick), \
         balancer_threads = CPU time of its veths' NAPI kthreads plus HAProxy's (all pinned there; \
         scheduler-exact, and what else ran on that CPU is left out), ns/packet = that / packets; \
         busy shares are of one CPU.",
        opts.rounds,
        opts.proxy_cpu,
        opts.client_cpu,
        opts.small_connections,
        opts.small_bytes,
        opts.large_connections,
        opts.workers
    ));
    results::write(&opts.out_dir, "l4", opts.quick, &cases, &notes)?;
    Ok(())
}

/// A lab whose namespaces are also deleted on a signal. Field order is drop order.
struct GuardedLab {
    lab: Lab,
    _guards: Vec<cleanup::CleanupGuard>,
}

impl GuardedLab {
    fn new(tag: &str) -> Result<GuardedLab> {
        let lab = Lab::new(tag, 1)?;
        // A loss-based congestion control, Linux's default cubic where the host allows it
        // in namespaces, else reno: the host may default to BBR, which keeps sending into a
        // full veth ring and turns a stream into retransmissions.
        for ns in [&lab.client, &lab.nodes[0].ns] {
            ns.sysctl("net.ipv4.tcp_congestion_control", "cubic")
                .or_else(|_| ns.sysctl("net.ipv4.tcp_congestion_control", "reno"))?;
        }
        let mut names: Vec<String> = vec![lab.client.name().into(), lab.lb.name().into()];
        names.extend(lab.nodes.iter().map(|n| n.ns.name().to_string()));
        let guards = names
            .into_iter()
            .map(|name| {
                cleanup::on_exit(format!("namespace {name}"), move || {
                    if std::path::Path::new("/var/run/netns").join(&name).exists() {
                        let _ = std::process::Command::new("ip")
                            .args(["netns", "del", &name])
                            .status();
                    }
                })
            })
            .collect();
        Ok(GuardedLab {
            lab,
            _guards: guards,
        })
    }
}

fn run_peer_round(
    peer: Peer,
    r: usize,
    n: usize,
    opts: &Options,
    progress: &mut Progress,
    notes: &mut Vec<String>,
) -> Result<Round> {
    let label = |what: &str| format!("round {}/{}, {}: {what}", r + 1, opts.rounds, peer.name());
    progress.step(&label("lab, peer, small packets"));
    let tag = format!("l{n}");
    let guarded = GuardedLab::new(&tag)?;
    let lab = &guarded.lab;
    let running = Running::start(
        peer,
        lab,
        &format!("{}-l4-{n}", unique_prefix()),
        opts.proxy_cpu,
    )?;
    let napi = if opts.no_threaded_napi {
        if n == 0 {
            notes.push("--no-threaded-napi: NAPI runs in softirq on the sending CPU, so the balancer's work is charged to whichever CPU sent and its CPU figures count HAProxy only".into());
        }
        Vec::new()
    } else {
        isolate(lab, opts, n == 0, notes)?
    };
    let meter = Meter {
        lab,
        opts,
        haproxy: running.haproxy_pid(),
        napi,
    };
    let node = SocketAddr::from((lab.nodes[0].addr, NODE_PORT));
    let target = SocketAddr::from((topology::VIP, VIP_PORT));
    let window = Duration::from_secs_f64(opts.seconds);

    // Small packets: request/response.
    let verdicts = running.xdp_verdicts();
    let (small_messages_per_s, small) = {
        let _server = NodeServer::start(&lab.nodes[0].ns, node, Mode::Echo)?;
        load::wait_ready(&lab.client, target, Duration::from_secs(5))?;
        let clients = load::ping_pong(
            &lab.client,
            target,
            opts.small_connections,
            opts.small_bytes,
        )?;
        thread::sleep(WARMUP);
        let (c0, s0) = (clients.count(), meter.snapshot()?);
        thread::sleep(window);
        let w = meter.window(&s0)?;
        let msgs = (clients.count() - c0) as f64 / w.secs;
        (msgs, w)
    };
    eprintln!(
        "  {:.0} round trips/s, {:.0} packets/s, {:.0} ns/packet ({:.0} by its threads), {}",
        small_messages_per_s,
        small.packets_per_s(),
        small.ns_per_packet(),
        small.threads_ns_per_packet(),
        cpu_part(&small),
    );
    eprint!("{}", verdicts_since(&running, &verdicts));

    // Large payloads: streams into a sink.
    progress.step(&label("large payloads"));
    let verdicts = running.xdp_verdicts();
    let (large_gbit_s, large) = {
        let server = NodeServer::start(&lab.nodes[0].ns, node, Mode::Sink)?;
        let _clients = load::stream(&lab.client, target, opts.large_connections, CHUNK)?;
        thread::sleep(WARMUP);
        let (b0, s0) = (server.bytes(), meter.snapshot()?);
        thread::sleep(window);
        let w = meter.window(&s0)?;
        let gbit = (server.bytes() - b0) as f64 * 8.0 / 1e9 / w.secs;
        (gbit, w)
    };
    eprintln!(
        "  {:.2} Gbit/s, {:.0} packets/s, {:.0} ns/packet ({:.0} by its threads), {}",
        large_gbit_s,
        large.packets_per_s(),
        large.ns_per_packet(),
        large.threads_ns_per_packet(),
        cpu_part(&large),
    );
    eprint!("{}", verdicts_since(&running, &verdicts));

    // New connections: the storm (last: it leaves TIME_WAITs behind).
    progress.step(&label("new connections"));
    let (report, storm_w) = {
        let _server = StormServer::start(&lab.nodes[0].ns, lab.nodes[0].addr, NODE_PORT, 4)?;
        let s0 = meter.snapshot()?;
        let report = storm(&lab.client, target, opts.workers, window)?;
        (report, meter.window(&s0)?)
    };
    eprintln!(
        "  {:.0} connections/s, {} failed, slowest connection {} ms, {}",
        report.rate(),
        report.failed,
        report.slowest.as_millis(),
        cpu_part(&storm_w),
    );
    if !report.errors.is_empty() {
        eprintln!("  first failures: {:?}", report.errors);
    }
    drop(running);
    drop(guarded);
    // The kernel dismantles a deleted namespace (and purges its TIME_WAIT sockets) in the
    // background: give it a moment before the next lab's window.
    thread::sleep(SETTLE);
    Ok(Round {
        peer,
        small_messages_per_s,
        small,
        large_gbit_s,
        large,
        connections_per_s: report.rate(),
        failed_connections: report.failed,
        storm: storm_w,
    })
}

/// The XDP verdicts that changed since `before`, e.g. `Forwarded +1200, ReplyTranslated +1180`.
fn verdicts_since(running: &Running, before: &Option<Vec<(proxy_common::Reason, u64)>>) -> String {
    let (Some(before), Some(now)) = (before, running.xdp_verdicts()) else {
        return String::new();
    };
    let parts: Vec<String> = now
        .iter()
        .zip(before)
        .filter(|((_, a), (_, b))| a > b)
        .map(|((r, a), (_, b))| format!("{r:?} +{}", a - b))
        .collect();
    format!("  XDP verdicts: {}\n", parts.join(", "))
}

fn cpu_part(w: &Window) -> String {
    format!(
        "balancer CPU {:.0}% busy (its threads {:.0}%{}), load generator CPU {:.0}% busy, {} dropped on the veths",
        100.0 * w.balancer_share,
        100.0 * w.threads_share,
        w.haproxy_share
            .map(|s| format!(", HAProxy {:.0}%", 100.0 * s))
            .unwrap_or_default(),
        100.0 * w.loadgen_share,
        w.dropped
    )
}

/// Threaded NAPI: the balancer's veths on the peer CPU, the client's and node's on the load
/// generator's. A device that refuses is reported (once, in the first round), not hidden.
/// Returns the balancer's NAPI kthreads.
fn isolate(lab: &Lab, opts: &Options, first: bool, notes: &mut Vec<String>) -> Result<Vec<u32>> {
    // (namespace, device, CPU, is the balancer's)
    let mut devices: Vec<(&NetNs, String, usize, bool)> = lab
        .lb_interfaces()
        .into_iter()
        .map(|d| (&lab.lb, d, opts.proxy_cpu, true))
        .collect();
    devices.push((&lab.client, "cl".into(), opts.client_cpu, false));
    devices.push((&lab.nodes[0].ns, "nic".into(), opts.client_cpu, false));
    let mut pinned = Vec::new();
    let mut balancer = Vec::new();
    let mut failed = false;
    for (ns, dev, cpu, ours) in devices {
        match isolation::threaded_napi(ns, &dev, cpu) {
            Ok(pids) => {
                pinned.push(format!("{dev}→CPU {cpu} ({} kthread)", pids.len()));
                if ours {
                    balancer.extend(pids.iter().map(|&p| p as u32));
                }
            }
            Err(e) => {
                failed = true;
                let note = format!(
                    "threaded NAPI could not be set up on {dev}: {e:#}; its receive work runs on the sending CPU, \
                     so the balancer's CPU figures are not isolated"
                );
                eprintln!("  NOTE: {note}");
                if first {
                    notes.push(note);
                }
            }
        }
    }
    if first {
        let line = format!("threaded NAPI: {}", pinned.join(", "));
        eprintln!("  {line}");
        if !failed {
            notes.push(format!("{line} (the balancer's veths on its CPU, the client's and node's on the load generator's)"));
        }
    }
    Ok(balancer)
}

/// The figures, each as xdp-proxy, nftables, haproxy rows (medians over rounds).
fn cases(rounds: &[Round], peers: &[Peer]) -> Vec<Case> {
    type Get = fn(&Round) -> f64;
    // name, unit, value, Some(higher is better) for a ratio against xdp-proxy
    let figures: &[(&str, &str, Get, Option<bool>)] = &[
        (
            "new_connections_per_s",
            "1/s",
            |r| r.connections_per_s,
            Some(true),
        ),
        (
            "small_packets_per_s",
            "1/s",
            |r| r.small.packets_per_s(),
            Some(true),
        ),
        (
            "small_round_trips_per_s",
            "1/s",
            |r| r.small_messages_per_s,
            Some(true),
        ),
        (
            "large_throughput_gbit_s",
            "Gbit/s",
            |r| r.large_gbit_s,
            Some(true),
        ),
        (
            "balancer_cpu_ns_per_packet",
            "ns",
            |r| r.small.ns_per_packet(),
            Some(false),
        ),
        (
            "balancer_cpu_ns_per_packet_large",
            "ns",
            |r| r.large.ns_per_packet(),
            Some(false),
        ),
        (
            "balancer_threads_ns_per_packet",
            "ns",
            |r| r.small.threads_ns_per_packet(),
            Some(false),
        ),
        (
            "balancer_threads_ns_per_packet_large",
            "ns",
            |r| r.large.threads_ns_per_packet(),
            Some(false),
        ),
        (
            "balancer_cpu_busy_small",
            "%",
            |r| 100.0 * r.small.balancer_share,
            None,
        ),
        (
            "loadgen_cpu_busy_small",
            "%",
            |r| 100.0 * r.small.loadgen_share,
            None,
        ),
        (
            "balancer_cpu_busy_large",
            "%",
            |r| 100.0 * r.large.balancer_share,
            None,
        ),
        (
            "loadgen_cpu_busy_large",
            "%",
            |r| 100.0 * r.large.loadgen_share,
            None,
        ),
        (
            "balancer_cpu_busy_connections",
            "%",
            |r| 100.0 * r.storm.balancer_share,
            None,
        ),
        (
            "loadgen_cpu_busy_connections",
            "%",
            |r| 100.0 * r.storm.loadgen_share,
            None,
        ),
        (
            "large_packets_per_s",
            "1/s",
            |r| r.large.packets_per_s(),
            None,
        ),
        (
            "failed_connections",
            "count",
            |r| r.failed_connections as f64,
            None,
        ),
        (
            "dropped_packets_small",
            "count",
            |r| r.small.dropped as f64,
            None,
        ),
        (
            "dropped_packets_large",
            "count",
            |r| r.large.dropped as f64,
            None,
        ),
    ];
    let of = |peer: Peer, get: Get| {
        let v: Vec<f64> = rounds.iter().filter(|r| r.peer == peer).map(get).collect();
        median(&v)
    };
    let mut cases = Vec::new();
    for &(name, unit, get, higher_better) in figures {
        let ours = of(Peer::Xdp, get);
        for &peer in peers {
            let value = of(peer, get);
            let ratio = match (peer, higher_better) {
                (Peer::Xdp, _) | (_, None) => None,
                (_, Some(true)) => ratio_higher_better(ours, value),
                (_, Some(false)) => ratio_lower_better(ours, value),
            };
            cases.push(Case::new(name, value, unit, peer.name()).ratio(ratio));
        }
    }
    type GetShare = fn(&Round) -> Option<f64>;
    let haproxy: [(&str, GetShare); 3] = [
        ("small", |r| r.small.haproxy_share),
        ("large", |r| r.large.haproxy_share),
        ("connections", |r| r.storm.haproxy_share),
    ];
    for (label, get) in haproxy {
        let v: Vec<f64> = rounds.iter().filter_map(get).map(|s| 100.0 * s).collect();
        if !v.is_empty() {
            cases.push(Case::new(
                format!("haproxy_process_cpu_busy_{label}"),
                median(&v),
                "%",
                Peer::Haproxy.name(),
            ));
        }
    }
    cases
}

/// Which side was the limit of each figure (a side at >= 90% of its CPU).
fn limit_notes(rounds: &[Round], peers: &[Peer]) -> Vec<String> {
    let mut notes = Vec::new();
    for (figure, get) in [
        (
            "small packets",
            (|r: &Round| r.small) as fn(&Round) -> Window,
        ),
        ("large payloads", |r| r.large),
        ("new connections", |r| r.storm),
    ] {
        let parts: Vec<String> = peers
            .iter()
            .map(|&p| {
                let w: Vec<Window> = rounds.iter().filter(|r| r.peer == p).map(get).collect();
                let b = median(&w.iter().map(|w| w.balancer_share).collect::<Vec<_>>());
                let l = median(&w.iter().map(|w| w.loadgen_share).collect::<Vec<_>>());
                let own = median(&w.iter().map(|w| w.threads_share).collect::<Vec<_>>());
                let other = if b - own > 0.15 {
                    format!(", of which its own threads only {:.0}%", 100.0 * own)
                } else {
                    String::new()
                };
                let limit = if l >= 0.9 && l >= b {
                    "load generator"
                } else if b >= 0.9 {
                    "balancer"
                } else {
                    "neither CPU saturated"
                };
                format!(
                    "{} {limit} (balancer CPU {:.0}%{other}, load generator {:.0}%)",
                    p.name(),
                    100.0 * b,
                    100.0 * l
                )
            })
            .collect();
        notes.push(format!("limit, {figure}: {}", parts.join("; ")));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(peer: Peer, conns: f64, busy_ns: f64) -> Round {
        let small = Window {
            secs: 1.0,
            packets: 1000,
            balancer_busy_ns: busy_ns,
            ..Window::default()
        };
        Round {
            peer,
            small_messages_per_s: 500.0,
            small,
            large_gbit_s: 1.0,
            large: Window::default(),
            connections_per_s: conns,
            failed_connections: 0,
            storm: Window::default(),
        }
    }

    #[test]
    fn ratios_say_better_for_xdp_above_one_and_take_medians() {
        let rounds = [
            round(Peer::Xdp, 300.0, 1e6),
            round(Peer::Nftables, 100.0, 3e6),
            round(Peer::Xdp, 200.0, 2e6),
            round(Peer::Nftables, 100.0, 3e6),
            round(Peer::Xdp, 100.0, 1e6),
        ];
        let cases = cases(&rounds, &[Peer::Xdp, Peer::Nftables]);
        let find = |name: &str, peer: &str| {
            cases
                .iter()
                .find(|c| c.name == name && c.peer == peer)
                .unwrap_or_else(|| panic!("no {name} for {peer}"))
        };
        let conns = find("new_connections_per_s", "xdp-proxy");
        assert_eq!((conns.value, conns.ratio), (200.0, None));
        assert_eq!(find("new_connections_per_s", "nftables").ratio, Some(2.0));
        // 1,000 ns/packet against 3,000: lower is better, so 3×.
        let ns = find("balancer_cpu_ns_per_packet", "nftables");
        assert_eq!((ns.value, ns.ratio), (3000.0, Some(3.0)));
        assert_eq!(find("balancer_cpu_busy_small", "nftables").ratio, None);
        assert!(!cases.iter().any(|c| c.peer == "haproxy"));
    }
}
