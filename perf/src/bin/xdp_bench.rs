//! `cargo xtask bench xdp`: cost of the XDP data plane per packet, measured in the kernel with
//! BPF_PROG_TEST_RUN (`repeat` runs per call; the kernel reports the mean per run), against an
//! XDP program that only returns XDP_PASS.
//!
//! Cases, each measured `--rounds` times (interleaved, median taken):
//! - `baseline`: `xdp_pass_baseline` on a TCP packet;
//! - `lru_hit`: a TCP ACK of a flow that is already pinned (flow table hit, full NAT,
//!   checksum updates, FIB lookup, MAC rewrite, XDP_REDIRECT);
//! - `new_flow`: a TCP SYN with `tcp_idle_timeout_ticks = 0` (and UDP 0), so every run finds the
//!   flow entry expired and redoes the whole new-flow work: VIP lookup, 5-tuple hash, ring
//!   slot, NAT port claim in the reverse table (compare-and-swap, publish), flow insert
//!   (compare-and-swap, publish). Compared with a truly new flow it does one extra
//!   reverse-table release (the expired flow's NAT port is freed first) and its flow insert
//!   replaces an entry instead of filling an empty slot;
//! - `reply`: a backend reply translated back to the client;
//! - `lookup_floor`: `xdp_lookup_floor`, which only looks the `lru_hit` packet's flow up in
//!   the IPv4 flow table (bucket hash, probe of the bucket) and returns. Not a path of the
//!   data plane: the floor under `lru_hit`, reported so its ratio can be read against it.
//!
//! BPF_PROG_TEST_RUN does not restore the packet between repetitions: run 2 sees the frame run
//! 1 rewrote. To measure the same path on every run, the setup makes the translation an
//! identity ("mirror" setup): the VIP address and port are also the backend's, the SNAT
//! address is the client's and a new flow keeps the client's own port (port preservation), and the input
//! frames already carry the MACs the FIB lookup yields. The program does all of its work
//! (lookups, hashing, checksum updates, stores) but writes back the same bytes. After every
//! measurement the bench checks the counters: exactly `repeat` packets took the intended path
//! (forwarded / new flow / reply translated), so a measurement of the wrong path fails loudly.
//!
//! The FIB lookups need routes and neighbours: the bench builds a namespace `pxt<pid>-bench`
//! (two veth pairs, permanent neighbour entries, removed at exit) and runs from a thread that
//! entered it, pinned to one CPU.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    os::fd::RawFd,
    path::PathBuf,
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use proxy::{
    balancer::{backend_entry, vip_key},
    config::Protocol,
    ebpf::{kernel_tick_ns, test_run::run_xdp, CounterTotals, DataPlane, LoadOptions},
    maglev::{MaglevRing, RingMember},
};
use proxy_common::{
    ticks_from_ns, Reason, Settings, VipMeta, DEFAULT_RING_SIZE, LAST_SEEN_REFRESH_NS,
    NEXT_HOP_TTL_NS,
};
use proxy_perf::bench::{
    cleanup,
    results::{self, Case},
};
use proxy_tests::{
    fixture::{
        fmt_mac, neighbour_args, test_run_unsupported, xdp, PinDir, BK_DEV, BK_DEV_MAC, BK_PEER,
        CLI_DEV, CLI_DEV_MAC, CLI_PEER,
    },
    netns::{ifindex, run_in, unique_prefix, veth_pair, NetNs},
    packet::{hex_diff, tcp_flags, Ip, PacketBuilder},
};

#[derive(Parser, Debug, Clone)]
#[command(about = "XDP data-plane cost per packet via BPF_PROG_TEST_RUN")]
struct Args {
    /// Where `xdp.json` and `xdp.md` go.
    #[arg(long, default_value = proxy_perf::bench::results::DEFAULT_DIR)]
    out_dir: PathBuf,
    /// A smaller, faster version (fewer runs per call, three rounds).
    #[arg(long)]
    quick: bool,
    /// Program runs per BPF_PROG_TEST_RUN call (the kernel reports the mean); default
    /// 1,000,000 (quick: 300,000).
    #[arg(long)]
    repeat: Option<u32>,
    /// Measurements per case; the median is reported (the baseline moves by a few ns from
    /// one measurement to the next on a virtual machine). Default 9 (quick: 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// CPU to pin the measuring thread to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    /// Measure only this case (and the baseline), e.g. under `perf record`; writes no JSON.
    #[arg(long, value_parser = ["lru_hit", "new_flow", "reply", "lookup_floor"])]
    only: Option<String>,
}

/// Measured cases, in the order each round runs them.
const CASES: [&str; 5] = ["baseline", "lru_hit", "new_flow", "reply", "lookup_floor"];

const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 0x10];
const VIP_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x10];

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_PORT: u16 = 40_000;
/// VIP and (mirror setup) its only backend.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP_PORT: u16 = 80;
const VIP_NUM: u32 = 0;
const BACKEND_ID: u32 = 1;

const TARGET_LRU_HIT: f64 = 2.5;
const TARGET_NEW_FLOW: f64 = 5.0;

struct CaseResult {
    name: &'static str,
    ns_per_pkt: f64,
    ratio: f64,
}

fn build_namespace() -> Result<NetNs> {
    let ns = NetNs::new("bench")?;
    veth_pair(&ns, CLI_DEV, &ns, CLI_PEER)?;
    veth_pair(&ns, BK_DEV, &ns, BK_PEER)?;
    ns.ip(&["link", "set", CLI_DEV, "address", &fmt_mac(CLI_DEV_MAC)])?;
    ns.ip(&["link", "set", BK_DEV, "address", &fmt_mac(BK_DEV_MAC)])?;
    for dev in [CLI_DEV, CLI_PEER, BK_DEV, BK_PEER] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", CLI_DEV])?;
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", BK_DEV])?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    for (addr, mac, dev) in [(CLIENT, CLIENT_MAC, CLI_DEV), (VIP, VIP_MAC, BK_DEV)] {
        ns.ip(&neighbour_args(&addr.to_string(), &fmt_mac(mac), dev))?;
    }
    Ok(ns)
}

/// Settings of the mirror setup; `idle_ns` is the TCP and UDP idle timeout. Everything else
/// as the proxy writes it (`balancer::settings_from`).
fn settings(idle_ns: u64) -> Settings {
    let tick = kernel_tick_ns();
    let ticks = |ns: u64| ticks_from_ns(ns, tick);
    Settings {
        // A range around the client's port: a new flow keeps the client's own port when it
        // is free (it always is here: the expired flow gives it back first), so the
        // translation stays an identity, and the port space has room, as in real use (a
        // one-port space would fill and empty its bitmap summaries on every run).
        nat_port_min: CLIENT_PORT - 1_000,
        nat_port_max: CLIENT_PORT + 1_000,
        tcp_idle_timeout_ticks: ticks(idle_ns),
        udp_idle_timeout_ticks: ticks(idle_ns),
        closing_timeout_ticks: ticks(10_000_000_000),
        next_hop_ttl_ticks: ticks(NEXT_HOP_TTL_NS) as u32,
        last_seen_refresh_ticks: ticks(LAST_SEEN_REFRESH_NS) as u32,
        ..Settings::default().with_snat_v4(u32::from_ne_bytes(CLIENT.octets()))
    }
}

const IDLE_NS: u64 = 300_000_000_000;

fn configure(dp: &mut DataPlane) -> Result<()> {
    dp.set_settings(&settings(IDLE_NS))?;
    dp.set_backend(
        BACKEND_ID,
        &backend_entry(SocketAddr::from((VIP, VIP_PORT))),
    )?;
    dp.set_vip(
        &vip_key(SocketAddr::from((VIP, VIP_PORT)), Protocol::Tcp),
        &VipMeta {
            vip_num: VIP_NUM,
            flags: 0,
            ..VipMeta::default()
        },
    )?;
    let mut ring = MaglevRing::new(dp.ring_size())?;
    let delta = ring.rebuild(&[RingMember::new(BACKEND_ID, "backend-1", 1)])?;
    dp.write_ring_delta(VIP_NUM, &delta)?;
    Ok(())
}

/// What one measured case must leave behind, per run.
#[derive(Clone, Copy)]
struct Expect {
    action: u32,
    reason: Option<Reason>,
    new_flows: u64,
    vip_packets: u64,
}

struct Bench {
    dp: DataPlane,
    prog_fd: RawFd,
    baseline_fd: RawFd,
    floor_fd: RawFd,
    cli_ifindex: u32,
    bk_ifindex: u32,
    repeat: u32,
}

impl Bench {
    fn totals(&self) -> Result<(CounterTotals, HashMap<Reason, u64>)> {
        Ok((self.dp.counters(VIP_NUM)?, self.dp.reasons()?))
    }

    /// One BPF_PROG_TEST_RUN call of `repeat` runs; checks that every run took the intended
    /// path and left the frame as it was. Returns the kernel's mean ns per run.
    fn measure(&self, fd: RawFd, frame: &[u8], ifindex: u32, expect: Expect) -> Result<u32> {
        let (c0, r0) = self.totals()?;
        let out = run_xdp(fd, frame, ifindex, self.repeat).context("BPF_PROG_TEST_RUN")?;
        let (c1, r1) = self.totals()?;
        ensure!(
            out.action == expect.action,
            "verdict {} instead of {}",
            xdp::name(out.action),
            xdp::name(expect.action)
        );
        ensure!(
            out.packet == frame,
            "the mirror setup must leave the frame unchanged:\n{}",
            hex_diff(frame, &out.packet)
        );
        let n = u64::from(self.repeat);
        if let Some(reason) = expect.reason {
            let moved = r1[&reason] - r0[&reason];
            ensure!(
                moved == n,
                "{} of {n} runs counted as {}",
                moved,
                reason.label()
            );
        }
        ensure!(
            c1.packets - c0.packets == expect.vip_packets * n,
            "VIP counted {} packets for {n} runs",
            c1.packets - c0.packets
        );
        ensure!(
            c1.new_flows - c0.new_flows == expect.new_flows * n,
            "VIP counted {} new flows for {n} runs",
            c1.new_flows - c0.new_flows
        );
        Ok(out.duration_ns)
    }
}

fn median(v: &mut [u32]) -> f64 {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        f64::from(v[n / 2])
    } else {
        (f64::from(v[n / 2 - 1]) + f64::from(v[n / 2])) / 2.0
    }
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    Ok(proxy_tests::cpu::pin_to_cpu(cpu)?)
}

/// Everything inside the namespace: load, configure, measure. Returns ns/pkt medians by case.
fn run_bench(
    args: Args,
    pin_dir: PathBuf,
    cli_ifindex: u32,
    bk_ifindex: u32,
) -> Result<Vec<(&'static str, f64)>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = args.cpu.unwrap_or(cpus - 1);
    pin_to_cpu(cpu)?;

    let opts = LoadOptions::new(&pin_dir, DEFAULT_RING_SIZE);
    let mut dp = DataPlane::load(&opts).context("loading the XDP program")?;
    let baseline_fd = dp.load_baseline()?;
    let floor_fd = dp.load_lookup_floor()?;
    let prog_fd = dp.program_fd()?;
    if let Some(why) = test_run_unsupported(prog_fd)? {
        bail!("{why}");
    }
    configure(&mut dp)?;

    let ip = Ip::v4(CLIENT, VIP);
    // Client -> VIP as it must leave: egress bk0, to the backend's (= VIP's) MAC.
    let syn = PacketBuilder::tcp(ip, CLIENT_PORT, VIP_PORT, tcp_flags::SYN)
        .macs(BK_DEV_MAC, VIP_MAC)
        .build();
    let ack = PacketBuilder::tcp(ip, CLIENT_PORT, VIP_PORT, tcp_flags::ACK)
        .seq(1)
        .ack(1)
        .macs(BK_DEV_MAC, VIP_MAC)
        .build();
    // Backend -> NAT address (= client), leaving by cli0 to the client.
    let reply = PacketBuilder::tcp(
        Ip::v4(VIP, CLIENT),
        VIP_PORT,
        CLIENT_PORT,
        tcp_flags::ACK | tcp_flags::PSH,
    )
    .seq(1)
    .ack(1)
    .payload(b"HTTP/1.1 200 OK\r\n\r\n")
    .macs(CLI_DEV_MAC, CLIENT_MAC)
    .build();

    let mut b = Bench {
        dp,
        prog_fd,
        baseline_fd,
        floor_fd,
        cli_ifindex,
        bk_ifindex,
        repeat: args.repeat(),
    };
    // Pin the flow once (a real new flow), and warm up.
    let first = run_xdp(b.prog_fd, &syn, b.cli_ifindex, 1)?;
    ensure!(
        first.action == xdp::REDIRECT,
        "first SYN: {} instead of XDP_REDIRECT (FIB lookup failed?)",
        xdp::name(first.action)
    );

    let fwd = Expect {
        action: xdp::REDIRECT,
        reason: Some(Reason::Forwarded),
        new_flows: 0,
        vip_packets: 1,
    };
    let cases: Vec<&'static str> = CASES
        .iter()
        .copied()
        .filter(|c| {
            args.only
                .as_deref()
                .is_none_or(|o| o == *c || *c == "baseline")
        })
        .collect();
    // Passed up untouched: the baseline program, and the lookup floor's hit.
    let passed = Expect {
        action: xdp::PASS,
        reason: None,
        new_flows: 0,
        vip_packets: 0,
    };
    let mut samples: Vec<(&'static str, Vec<u32>)> =
        cases.iter().map(|n| (*n, Vec::new())).collect();
    let started = Instant::now();
    for _ in 0..args.rounds() {
        for (name, v) in samples.iter_mut() {
            let ns = match *name {
                "baseline" => b.measure(b.baseline_fd, &ack, b.cli_ifindex, passed)?,
                "lru_hit" => b.measure(b.prog_fd, &ack, b.cli_ifindex, fwd)?,
                // XDP_PASS means the flow was found (the program drops on a miss).
                "lookup_floor" => b.measure(b.floor_fd, &ack, b.cli_ifindex, passed)?,
                "reply" => b.measure(
                    b.prog_fd,
                    &reply,
                    b.bk_ifindex,
                    Expect {
                        reason: Some(Reason::ReplyTranslated),
                        ..fwd
                    },
                )?,
                "new_flow" => {
                    // Every run finds the flow expired: the full new-flow path (module docs).
                    b.dp.set_settings(&settings(0))?;
                    let ns = b.measure(
                        b.prog_fd,
                        &syn,
                        b.cli_ifindex,
                        Expect {
                            new_flows: 1,
                            ..fwd
                        },
                    );
                    b.dp.set_settings(&settings(IDLE_NS))?;
                    ns?
                }
                other => unreachable!("unknown case {other}"),
            };
            v.push(ns);
        }
    }
    eprintln!(
        "{} rounds x {} cases x {} runs on CPU {cpu} in {:.1?}",
        args.rounds(),
        cases.len(),
        args.repeat(),
        started.elapsed()
    );
    Ok(samples
        .into_iter()
        .map(|(n, mut v)| (n, median(&mut v)))
        .collect())
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.repeat
        .get_or_insert(if args.quick { 300_000 } else { 1_000_000 });
    args.rounds.get_or_insert(if args.quick { 3 } else { 9 });
    ensure!(args.rounds() > 0, "--rounds must be at least 1");
    if args.repeat() < 300_000 {
        eprintln!(
            "warning: --repeat {} is below 300,000; short runs overstate the cost",
            args.repeat()
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xdp-bench needs root (namespaces, bpffs, BPF_PROG_TEST_RUN)");
    }
    let mut progress = proxy_perf::bench::progress::Progress::new(
        "xdp",
        vec![
            1.0,
            args.rounds() as f64 * 5.0 * args.repeat() as f64 * 1.5e-7 + 1.0,
        ],
    );
    progress.step("namespace, pins, programs");
    let ns = build_namespace().context("setting up the bench namespace")?;
    // Also undone on Ctrl-C (NetNs and PinDir clean up on drop, not on a signal).
    let ns_name = ns.name().to_string();
    let _ns_cleanup = cleanup::on_exit(format!("namespace {ns_name}"), move || {
        cleanup::delete_netns(&ns_name)
    });
    let cli_ifindex = ifindex(&ns, CLI_DEV)?;
    let bk_ifindex = ifindex(&ns, BK_DEV)?;
    let pin = PinDir::new(&format!("{}-bench", unique_prefix()))?;
    let pin_path = pin.path().to_path_buf();
    let pin_undo = pin_path.clone();
    let _pin_cleanup = cleanup::on_exit(format!("pins {}", pin_undo.display()), move || {
        let _ = DataPlane::remove_pins(&pin_undo);
    });
    let bench_args = args.clone();
    progress.step(&format!(
        "{} rounds x {} cases x {} runs",
        args.rounds(),
        CASES.len(),
        args.repeat()
    ));
    let medians = run_in(&ns, move || {
        run_bench(bench_args, pin_path, cli_ifindex, bk_ifindex)
    })??;
    drop(pin);
    drop(ns);

    let get = |name: &str| {
        medians
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .expect("measured")
    };
    let baseline = get("baseline");
    ensure!(baseline > 0.0, "baseline measured 0 ns; raise --repeat");
    let ratio = |v: f64| (v / baseline * 1000.0).round() / 1000.0;
    let cases: Vec<CaseResult> = medians
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| *name != "baseline")
        .map(|name| CaseResult {
            name,
            ns_per_pkt: get(name),
            ratio: ratio(get(name)),
        })
        .collect();

    progress.finish();
    println!(
        "XDP data plane, BPF_PROG_TEST_RUN x {} (median of {})",
        args.repeat(),
        args.rounds()
    );
    println!("{:<10} {:>8} {:>8}  target", "case", "ns/pkt", "ratio");
    println!("{:<10} {:>8.1} {:>8.2}", "baseline", baseline, 1.0);
    for c in &cases {
        let target = match c.name {
            "lru_hit" => Some(TARGET_LRU_HIT),
            "new_flow" => Some(TARGET_NEW_FLOW),
            _ => None,
        };
        let verdict = match target {
            Some(t) if c.ratio <= t => format!("<= {t}x  met"),
            Some(t) => format!("<= {t}x  MISSED"),
            None => "-".to_string(),
        };
        println!(
            "{:<10} {:>8.1} {:>8.2}  {verdict}",
            c.name, c.ns_per_pkt, c.ratio
        );
    }

    if args.only.is_some() {
        println!("--only: not writing results");
        return Ok(());
    }
    let mut out = Vec::new();
    for c in &cases {
        let name = format!("{}_ns_per_packet", c.name);
        out.push(Case::new(&name, c.ns_per_pkt, "ns", "xdp-proxy"));
        out.push(Case::new(&name, baseline, "ns", "XDP_PASS").ratio(Some(c.ratio)));
    }
    let notes = vec![
        format!(
            "BPF_PROG_TEST_RUN, {} runs per call, median of {} rounds, cases interleaved.",
            args.repeat(),
            args.rounds()
        ),
        format!(
            "vs XDP_PASS: the case's cost in multiples of a program that only returns XDP_PASS, measured in the same rounds (lower is better; targets: lru_hit <= {TARGET_LRU_HIT}, new_flow <= {TARGET_NEW_FLOW})."
        ),
    ];
    results::write(&args.out_dir, "xdp", args.quick, &out, &notes)?;
    Ok(())
}

impl Args {
    fn repeat(&self) -> u32 {
        self.repeat.unwrap_or(1_000_000)
    }
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(9)
    }
}
