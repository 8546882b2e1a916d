//! The memory case: what an idle TLS WebSocket connection costs the proxy, in RSS and in
//! live heap by allocation size.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{ensure, Context, Result};
use proxy::terminator::io::IoMode;
use proxy_tests::procfs::rss_bytes;
use tokio_rustls::TlsConnector;

use super::{child::ProxyProc, heap::heap_bytes, load::open_many, Args};

pub struct IdleResult {
    pub rss_bytes_per_conn: f64,
    pub heap_bytes_per_conn: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    /// Allocation sizes by live bytes added per connection: (size, bytes, blocks),
    /// largest first.
    pub top_sizes: Vec<(usize, f64, f64)>,
}

/// A fresh proxy child (counting its heap): `--warm-conns` kept open, the baseline read,
/// then `--idle-conns` more opened and left idle; what each idle connection costs.
pub async fn idle_case(
    mode: IoMode,
    args: &Args,
    node: SocketAddr,
    cert_dir: &Path,
    tls: &TlsConnector,
    proxy_cpu: Option<usize>,
) -> Result<IdleResult> {
    let mut proxy = ProxyProc::start(mode, node, cert_dir, proxy_cpu, true)?;
    let warm = open_many(proxy.addr, tls, args.warm_conns, 32).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.stats()?;
    let rss_before = rss_bytes(proxy.pid())?;
    ensure!(
        before.active == args.warm_conns,
        "warm connections not live"
    );
    let mut idle = open_many(proxy.addr, tls, args.idle_conns, 64).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_after = rss_bytes(proxy.pid())?;
    let after = proxy.stats()?;
    ensure!(
        after.active == args.warm_conns + args.idle_conns,
        "{} connections live on the proxy, expected {}",
        after.active,
        args.warm_conns + args.idle_conns
    );
    // Alive and proxied: a sample echoes once more.
    for c in idle.iter_mut().step_by(50) {
        c.echo().await.context("an idle connection died")?;
    }
    let n = args.idle_conns as f64;
    let mut top: Vec<(usize, f64, f64)> = after
        .heap
        .iter()
        .filter(|(&size, _)| size != 0)
        .map(|(&size, &blocks)| {
            let dn = (blocks - before.heap.get(&size).copied().unwrap_or(0)) as f64 / n;
            (size, dn * size as f64, dn)
        })
        .filter(|(_, db, _)| *db >= 8.0)
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let heap_delta = heap_bytes(&after.heap) - heap_bytes(&before.heap);
    drop(idle);
    drop(warm);
    proxy.stop()?;
    Ok(IdleResult {
        rss_bytes_per_conn: (rss_after as f64 - rss_before as f64) / n,
        heap_bytes_per_conn: heap_delta as f64 / n,
        rss_before,
        rss_after,
        top_sizes: top,
    })
}
