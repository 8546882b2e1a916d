//! The `tls-ws` scenario: connection cycles, ping-pong at each client count, and server
//! push, every peer in every round; then the table, JSON and plots.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use proxy_tests::procfs::cpu_seconds;

use super::{
    peers::{Peer, PeerKind},
    Args, Setup, SETTLE,
};
use crate::{
    bench::{
        plot::{write_svg, BarChart, LineChart, Scale},
        progress::Progress,
        results::{self, median, ratio_higher_better, ratio_lower_better, Case},
    },
    wss_load::{self, Latency, Load, Report, WsClient},
};

/// After a push window's subscribers are reset: time for the peer, the node and the kernel
/// to tear their connections down and free the buffers before the next window.
const PUSH_SETTLE: Duration = Duration::from_millis(500);

/// One measurement window of one peer.
pub struct Window {
    pub report: Report,
    /// The peer's CPU time over wall time (1.0 = one core busy).
    pub peer_cpu: f64,
    /// The same for the load generator side (clients and node).
    pub loadgen_cpu: f64,
}

impl Window {
    fn per_cpu_second(&self) -> f64 {
        if self.peer_cpu > 0.0 {
            self.report.rate() / self.peer_cpu
        } else {
            0.0
        }
    }
}

/// CPU of both sides around `f`.
async fn measured<F, T>(peer: &Peer, f: F) -> Result<(T, f64, f64)>
where
    F: std::future::Future<Output = Result<T>>,
{
    let p0 = peer.cpu_seconds()?;
    let o0 = cpu_seconds(std::process::id())?;
    let t0 = Instant::now();
    let out = f.await?;
    let secs = t0.elapsed().as_secs_f64().max(1e-6);
    let peer_cpu = (peer.cpu_seconds()? - p0) / secs;
    let loadgen = (cpu_seconds(std::process::id())? - o0) / secs;
    Ok((out, peer_cpu, loadgen))
}

/// Windows by case, then by peer.
type Windows = BTreeMap<String, BTreeMap<&'static str, Vec<Window>>>;

pub async fn run(args: &Args, setup: &Setup) -> Result<()> {
    let secs = args.seconds();
    let rounds = args.rounds();
    let n_peers = setup.peers.len();
    let mut plan = vec![2.0; n_peers]; // start and warm up
    plan.extend(vec![secs; rounds * n_peers]); // cycles
    plan.extend(vec![
        1.0 + 0.001 * args.clients.iter().sum::<usize>() as f64;
        n_peers
    ]);
    plan.extend(vec![secs; rounds * n_peers * args.clients.len()]);
    plan.extend(vec![secs; rounds * n_peers]); // push
    let mut progress = Progress::new("tls-ws", plan);
    println!(
        "tls-ws bench: peers {} on CPU {}, load generator and node on CPU {}; {rounds} x {secs:.1} s windows, kx {}",
        setup
            .peers
            .iter()
            .map(|p| p.label())
            .collect::<Vec<_>>()
            .join(", "),
        setup.proxy_cpu.map_or("-".into(), |c| c.to_string()),
        args.client_cpu,
        args.kx
    );

    let mut peers = Vec::new();
    for &kind in &setup.peers {
        progress.step(&format!("starting {} and warming up", kind.label()));
        let peer = Peer::start(kind, setup.node, &setup.cert, setup.proxy_cpu, false)?;
        let target = setup.target(peer.addr, &args.kx)?;
        let warm = wss_load::cycles(
            target.clone(),
            &Load {
                expect_echo: true,
                ..Load::new(args.cycle_concurrency, Duration::from_millis(500))
            },
        )
        .await?;
        if warm.ops == 0 {
            bail!(
                "{} completes no connection cycle: {}",
                kind.label(),
                warm.first_error.unwrap_or_default()
            );
        }
        peers.push((peer, target));
    }

    let mut windows: Windows = BTreeMap::new();
    let mut keep = |case: &str, peer: PeerKind, w: Window| {
        eprintln!(
            "    {:<22} {case:<10} {:>9.0}/s  peer CPU {:>3.0}%  load generator CPU {:>3.0}%  {}",
            peer.label(),
            w.report.rate(),
            100.0 * w.peer_cpu,
            100.0 * w.loadgen_cpu,
            if case.starts_with("push") {
                String::new()
            } else {
                w.report.latency.summary()
            }
        );
        windows
            .entry(case.to_string())
            .or_default()
            .entry(peer.name())
            .or_default()
            .push(w);
    };

    let cycle_load = Load {
        expect_echo: true,
        ..Load::new(args.cycle_concurrency, Duration::from_secs_f64(secs))
    };
    for round in 1..=rounds {
        for (peer, target) in &peers {
            progress.step(&format!(
                "round {round}/{rounds}: {} connection cycles",
                peer.kind.label()
            ));
            let (r, pc, lc) = measured(peer, wss_load::cycles(target.clone(), &cycle_load)).await?;
            check(&r, peer.kind, "cycles", r.ops / 100)?;
            keep(
                "cycles",
                peer.kind,
                Window {
                    report: r,
                    peer_cpu: pc,
                    loadgen_cpu: lc,
                },
            );
        }
    }

    // Established connections per peer and client count.
    let mut conns: Vec<Vec<Vec<WsClient>>> = Vec::new();
    for (peer, target) in &peers {
        progress.step(&format!(
            "opening {} connections to {}",
            args.clients.iter().sum::<usize>(),
            peer.kind.label()
        ));
        let mut per_count = Vec::new();
        for &n in &args.clients {
            per_count.push(wss_load::open_many(target.clone(), n, 32).await?);
        }
        conns.push(per_count);
    }
    tokio::time::sleep(SETTLE).await;
    for round in 1..=rounds {
        for (ci, &n) in args.clients.iter().enumerate() {
            for (pi, (peer, _)) in peers.iter().enumerate() {
                let case = format!("msgs_{n}");
                progress.step(&format!(
                    "round {round}/{rounds}: {} ping-pong on {n} connections",
                    peer.kind.label()
                ));
                let load = Load {
                    expect_echo: true,
                    ..Load::new(n, Duration::from_secs_f64(secs))
                };
                let c = std::mem::take(&mut conns[pi][ci]);
                let ((r, back), pc, lc) = measured(peer, wss_load::pingpong(c, &load)).await?;
                check(&r, peer.kind, &case, 0)?;
                conns[pi][ci] = back;
                keep(
                    &case,
                    peer.kind,
                    Window {
                        report: r,
                        peer_cpu: pc,
                        loadgen_cpu: lc,
                    },
                );
            }
        }
    }

    // Push: one peer's subscribers at a time. A subscribed connection nobody reads fills
    // every socket buffer on its path (megabytes); every peer's 1,000 at once passed the
    // kernel's `tcp_mem` limit, and TCP memory pressure then stalled whole windows (peer
    // and load generator both mostly idle). So each window subscribes its own connections
    // (the matching client count's the first time, fresh ones after) and resets them after.
    let push_case = format!("push_{}", args.push_clients);
    let reuse = args.clients.iter().position(|&n| n == args.push_clients);
    for round in 1..=rounds {
        for (pi, (peer, target)) in peers.iter().enumerate() {
            progress.step(&format!(
                "round {round}/{rounds}: {} pushing to {} subscribers",
                peer.kind.label(),
                args.push_clients
            ));
            let c = match reuse {
                Some(ci) if round == 1 => std::mem::take(&mut conns[pi][ci]),
                _ => wss_load::open_many(target.clone(), args.push_clients, 32).await?,
            };
            let c = wss_load::subscribe(c, 64).await?;
            let mut marks: Vec<Result<(f64, f64, Instant)>> = Vec::new();
            let mut mark = || {
                marks.push((|| {
                    Ok((
                        peer.cpu_seconds()?,
                        cpu_seconds(std::process::id())?,
                        Instant::now(),
                    ))
                })())
            };
            let lead_in = Duration::from_secs_f64(if args.quick { 0.5 } else { 1.0 });
            let (r, back) =
                wss_load::push(c, lead_in, Duration::from_secs_f64(secs), &mut mark).await?;
            let [Ok(a), Ok(b)] =
                <[_; 2]>::try_from(marks).map_err(|_| anyhow::anyhow!("two marks"))?
            else {
                bail!("reading CPU time around the push window failed");
            };
            let wall = (b.2 - a.2).as_secs_f64().max(1e-6);
            let (pc, lc) = ((b.0 - a.0) / wall, (b.1 - a.1) / wall);
            check(&r, peer.kind, &push_case, 0)?;
            // Megabytes are queued towards them: a clean close would read it all first.
            // Dropped, they are reset, and the kernel frees their buffers.
            drop(back);
            tokio::time::sleep(PUSH_SETTLE).await;
            keep(
                &push_case,
                peer.kind,
                Window {
                    report: r,
                    peer_cpu: pc,
                    loadgen_cpu: lc,
                },
            );
        }
    }
    for c in conns.into_iter().flatten() {
        let (failed, first) = wss_load::close_all(c).await;
        if failed > 0 {
            eprintln!(
                "warning: {failed} connections did not close cleanly; first: {}",
                first.unwrap_or_default()
            );
        }
    }
    for (peer, _) in peers {
        peer.stop()?;
    }
    progress.finish();
    report(args, setup, &windows)
}

/// Fails the run when a window had more than `allowed` errors.
fn check(r: &Report, peer: PeerKind, case: &str, allowed: u64) -> Result<()> {
    if r.errors > allowed {
        bail!(
            "{} {case}: {} errors for {} successes; first: {}",
            peer.label(),
            r.errors,
            r.ops,
            r.first_error.as_deref().unwrap_or("-")
        );
    }
    if r.ops == 0 {
        bail!("{} {case}: nothing measured", peer.label());
    }
    Ok(())
}

struct Summary {
    rate: f64,
    per_cpu: f64,
    peer_cpu: f64,
    loadgen_cpu: f64,
    latency: Latency,
}

fn summarize(ws: &[Window]) -> Summary {
    let mut latency = Latency::default();
    for w in ws {
        latency.add(&w.report.latency);
    }
    let m = |f: &dyn Fn(&Window) -> f64| median(&ws.iter().map(f).collect::<Vec<_>>());
    Summary {
        rate: m(&|w| w.report.rate()),
        per_cpu: m(&|w| w.per_cpu_second()),
        peer_cpu: m(&|w| w.peer_cpu),
        loadgen_cpu: m(&|w| w.loadgen_cpu),
        latency,
    }
}

fn report(args: &Args, setup: &Setup, windows: &Windows) -> Result<()> {
    let ours = setup
        .peers
        .iter()
        .copied()
        .find(|p| *p == PeerKind::Epoll)
        .or_else(|| setup.peers.iter().copied().find(|p| p.is_ours()));
    let mut cases = Vec::new();
    let mut sums: BTreeMap<(String, &'static str), Summary> = BTreeMap::new();
    for (case, by_peer) in windows {
        for (&peer, ws) in by_peer {
            sums.insert((case.clone(), peer), summarize(ws));
        }
    }
    let mut order: Vec<String> = vec!["cycles".into()];
    order.extend(args.clients.iter().map(|n| format!("msgs_{n}")));
    order.push(format!("push_{}", args.push_clients));
    for case in &order {
        // (metric, unit, value, higher is better; None: context, no ratio)
        type Metric = (
            &'static str,
            &'static str,
            fn(&Summary) -> f64,
            Option<bool>,
        );
        let mut metrics: Vec<Metric> = vec![
            ("per_s", "1/s", |s| s.rate, Some(true)),
            ("per_peer_cpu_s", "1/CPU-s", |s| s.per_cpu, Some(true)),
            ("peer_cpu", "%", |s| 100.0 * s.peer_cpu, None),
            ("loadgen_cpu", "%", |s| 100.0 * s.loadgen_cpu, None),
        ];
        if case == "cycles" {
            metrics.push((
                "p99_ms",
                "ms",
                |s| s.latency.percentile_us(99.0) / 1000.0,
                Some(false),
            ));
        } else if case.starts_with("msgs_") {
            metrics.push((
                "p50_us",
                "µs",
                |s| s.latency.percentile_us(50.0),
                Some(false),
            ));
            metrics.push((
                "p99_us",
                "µs",
                |s| s.latency.percentile_us(99.0),
                Some(false),
            ));
            metrics.push((
                "p99.9_us",
                "µs",
                |s| s.latency.percentile_us(99.9),
                Some(false),
            ));
        }
        for (metric, unit, f, better) in metrics {
            let ours_v = ours
                .and_then(|o| sums.get(&(case.clone(), o.name())))
                .map(f);
            for &peer in &setup.peers {
                let Some(s) = sums.get(&(case.clone(), peer.name())) else {
                    continue;
                };
                let v = f(s);
                let ratio = match (better, ours_v) {
                    (Some(_), Some(_)) if Some(peer) == ours => None,
                    (Some(true), Some(o)) => ratio_higher_better(o, v),
                    (Some(false), Some(o)) => ratio_lower_better(o, v),
                    _ => None,
                };
                cases.push(
                    Case::new(format!("{case}_{metric}"), round_sig(v), unit, peer.name())
                        .ratio(ratio.map(|r| (r * 1000.0).round() / 1000.0)),
                );
            }
        }
    }
    let mut notes = vec![
        format!(
            "Peers: {}. One worker each, pinned to CPU {}; the load generator (wss_load) and the node on CPU {}.",
            setup.peers.iter().map(|p| p.label()).collect::<Vec<_>>().join(", "),
            setup.proxy_cpu.map_or("-".into(), |c| c.to_string()),
            args.client_cpu
        ),
        format!(
            "{} round(s) of {:.1} s windows per case and peer, peers interleaved; medians over rounds, latency percentiles over all rounds' samples.",
            args.rounds(),
            args.seconds()
        ),
        "cycles: TCP + TLS 1.3 full handshake (X25519, ECDSA P-256) + upgrade + one call + close; msgs_N: ping-pong on N connections; push_N: notices pushed by the node to N subscribers.".into(),
        "The ratio column is this proxy (epoll, the default mode) over the peer: above 1 is better for this proxy (for latency: the peer's over ours).".into(),
        "peer_cpu / loadgen_cpu: share of one core each side used; a side near 100% was the limit.".into(),
    ];
    // The io_uring mode against epoll and HAProxy, per CPU-second (issue 12's targets).
    if let Some(u) = setup.peers.iter().find(|p| **p == PeerKind::Uring) {
        for case in &order {
            let get = |p: &str| sums.get(&(case.clone(), p)).map(|s| s.per_cpu);
            if let (Some(uv), Some(ev)) = (get(u.name()), get(PeerKind::Epoll.name())) {
                let vs_h = get(PeerKind::Haproxy.name())
                    .map_or(String::new(), |h| format!(", {:.2}× HAProxy", uv / h));
                notes.push(format!(
                    "io_uring {case} per CPU-second: {:.2}× epoll{vs_h}.",
                    uv / ev
                ));
            }
        }
    }
    results::write(&args.out_dir, "tls-ws", args.quick, &cases, &notes)?;
    plots(args, setup, &sums)
}

/// `tls-ws-latency-<N>.svg` (round trip by percentile, a line per peer),
/// `tls-ws-throughput.svg` (messages per peer-CPU-second against clients) and
/// `tls-ws-cycles.svg` (connection cycles, absolute and per CPU-second).
fn plots(
    args: &Args,
    setup: &Setup,
    sums: &BTreeMap<(String, &'static str), Summary>,
) -> Result<()> {
    let dir = &args.out_dir;
    let quick = if args.quick { " (quick run)" } else { "" };
    for &n in &args.clients {
        let mut chart = LineChart::latency(
            &format!("Ping-pong round trip, {n} connections{quick}"),
            "round trip (ms)",
        )
        .y_scale(Scale::Log);
        for &peer in &setup.peers {
            if let Some(s) = sums.get(&(format!("msgs_{n}"), peer.name())) {
                let pts = wss_load::hist::PERCENTILES
                    .iter()
                    .map(|&p| (p, s.latency.percentile_us(p) / 1000.0))
                    .collect();
                chart = chart.series(peer.label(), pts);
            }
        }
        write_svg(
            &dir.join(format!("tls-ws-latency-{n}.svg")),
            &chart.to_svg(),
        )?;
    }
    let mut chart = LineChart::new(
        &format!("Relayed messages per peer CPU-second{quick}"),
        "concurrent connections (ping-pong)",
        "messages per CPU-second",
    )
    .x_scale(Scale::Log);
    for &peer in &setup.peers {
        let pts = args
            .clients
            .iter()
            .filter_map(|&n| {
                sums.get(&(format!("msgs_{n}"), peer.name()))
                    .map(|s| (n as f64, s.per_cpu))
            })
            .collect();
        chart = chart.series(peer.label(), pts);
    }
    write_svg(&dir.join("tls-ws-throughput.svg"), &chart.to_svg())?;
    let bars = |f: fn(&Summary) -> f64| {
        setup
            .peers
            .iter()
            .filter_map(|p| {
                sums.get(&("cycles".to_string(), p.name()))
                    .map(|s| (p.label().to_string(), f(s)))
            })
            .collect::<Vec<_>>()
    };
    let chart = BarChart::new(
        &format!("Full TLS 1.3 connection cycles{quick}"),
        "cycles per second",
    )
    .group("per second", bars(|s| s.rate))
    .group("per peer CPU-second", bars(|s| s.per_cpu));
    write_svg(&dir.join("tls-ws-cycles.svg"), &chart.to_svg())?;
    Ok(())
}

/// Four significant digits are more than any window's noise.
fn round_sig(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let mag = 10f64.powi(3 - v.abs().log10().floor() as i32);
    (v * mag).round() / mag
}
