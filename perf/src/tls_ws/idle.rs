//! The `idle` scenario: what an idle `wss` connection costs each peer in RSS (and, for
//! this proxy, in live heap by allocation size).

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::{
    heap::heap_bytes,
    peers::{Peer, PeerKind},
    Args, Setup,
};
use crate::{
    bench::{
        plot::{write_svg, BarChart},
        progress::Progress,
        results::{self, ratio_lower_better, Case},
    },
    wss_load,
};

/// Time for the peer's memory to settle after opening connections.
const SETTLE: Duration = Duration::from_millis(1500);

pub async fn run(args: &Args, setup: &Setup) -> Result<()> {
    let counts = args.idle_counts();
    ensure!(
        !counts.is_empty() && counts[0] > 0,
        "no idle connection count"
    );
    let plan = setup
        .peers
        .iter()
        .map(|_| 3.0 + counts.last().copied().unwrap_or(0) as f64 / 1500.0)
        .collect();
    let mut progress = Progress::new("idle", plan);
    // (peer, count) -> bytes per connection
    let mut figures: Vec<(PeerKind, usize, f64)> = Vec::new();
    let mut notes = Vec::new();
    for &kind in &setup.peers {
        progress.step(&format!(
            "{}: {} warm, then up to {} idle connections",
            kind.label(),
            args.warm_conns,
            counts.last().unwrap()
        ));
        let mut peer = Peer::start(
            kind,
            setup.node,
            &setup.cert,
            setup.proxy_cpu,
            kind.is_ours(),
        )?;
        let target = setup.target(peer.addr, &args.kx)?;
        let warm = wss_load::open_many(target.clone(), args.warm_conns, 32).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss0 = peer.rss_bytes()?;
        let heap0 = match peer.ours() {
            Some(p) => Some(p.stats()?),
            None => None,
        };
        let mut idle = Vec::new();
        for &n in &counts {
            let more = wss_load::open_many(target.clone(), n - idle.len(), 64)
                .await
                .with_context(|| format!("{}: opening idle connections", kind.label()))?;
            idle.extend(more);
            tokio::time::sleep(SETTLE).await;
            let rss = peer.rss_bytes()?;
            let per = (rss as f64 - rss0 as f64) / n as f64;
            eprintln!(
                "    {:<22} {n:>6} idle: {per:>7.0} B/connection (RSS {} -> {} kB)",
                kind.label(),
                rss0 / 1024,
                rss / 1024
            );
            figures.push((kind, n, per));
            if let (Some(before), Some(p)) = (&heap0, peer.ours()) {
                let after = p.stats()?;
                ensure!(
                    after.active == args.warm_conns + n,
                    "{} connections live on the proxy, expected {}",
                    after.active,
                    args.warm_conns + n
                );
                let heap = (heap_bytes(&after.heap) - heap_bytes(&before.heap)) as f64 / n as f64;
                let mut top: Vec<(usize, f64)> = after
                    .heap
                    .iter()
                    .filter(|(&size, _)| size != 0)
                    .map(|(&size, &blocks)| {
                        let d = (blocks - before.heap.get(&size).copied().unwrap_or(0)) as f64;
                        (size, d * size as f64 / n as f64)
                    })
                    .filter(|(_, b)| *b >= 64.0)
                    .collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                let top: Vec<String> = top
                    .iter()
                    .take(6)
                    .map(|(size, b)| format!("{b:.0} B in {size}-byte blocks"))
                    .collect();
                notes.push(format!(
                    "{} at {n} idle: {heap:.0} B live heap per connection; largest: {}.",
                    kind.label(),
                    top.join(", ")
                ));
            }
        }
        // Alive and proxied: a sample answers once more.
        for c in idle.iter_mut().step_by(50) {
            c.call(wss_load::DEFAULT_CALL.as_bytes())
                .await
                .with_context(|| format!("{}: an idle connection died", kind.label()))?;
        }
        drop(idle);
        drop(warm);
        peer.stop()?;
    }
    progress.finish();
    let mut cases = Vec::new();
    for &(kind, n, per) in &figures {
        let ours = figures
            .iter()
            .find(|(k, m, _)| *k == PeerKind::Epoll && *m == n)
            .map(|f| f.2);
        let ratio = match ours {
            Some(o) if kind != PeerKind::Epoll => ratio_lower_better(o, per),
            _ => None,
        };
        cases.push(
            Case::new(
                format!("idle_{n}_bytes_per_conn"),
                per.round(),
                "B",
                kind.name(),
            )
            .ratio(ratio.map(|r| (r * 100.0).round() / 100.0)),
        );
    }
    notes.insert(
        0,
        format!(
            "RSS delta over {} warm connections, divided by the idle connections (TLS 1.3 + WebSocket upgraded, each answered one call); kernel socket buffers are not in RSS. Ratio: the peer's bytes over this proxy's (epoll).",
            args.warm_conns
        ),
    );
    results::write(&args.out_dir, "idle", args.quick, &cases, &notes)?;
    let mut chart = BarChart::new(
        &format!(
            "RSS per idle wss connection{}",
            if args.quick { " (quick run)" } else { "" }
        ),
        "bytes per connection",
    );
    for &n in &counts {
        let bars = figures
            .iter()
            .filter(|f| f.1 == n)
            .map(|f| (f.0.label().to_string(), f.2))
            .collect();
        chart = chart.group(format!("{n} idle connections"), bars);
    }
    write_svg(&args.out_dir.join("idle.svg"), &chart.to_svg())
}
