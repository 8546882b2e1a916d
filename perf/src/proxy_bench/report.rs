//! The results: a table beside the HAProxy anchors on stdout, and the JSON file
//! (`perf/results/proxy.json` unless `--out` says otherwise).

use anyhow::{Context, Result};
use proxy::terminator::io::IoMode;
use serde::Serialize;

use super::{idle::IdleResult, load::Throughput, mode_name, Args};

/// HAProxy 2.6 anchors measured on this kind of machine (TOOLCHAIN.md).
const HAPROXY_HANDSHAKES: f64 = 1600.0;
const HAPROXY_IDLE_BYTES: f64 = 16.0 * 1024.0;

#[derive(Serialize)]
struct Case {
    name: String,
    value: f64,
    unit: &'static str,
}

#[derive(Serialize)]
struct Results {
    scenario: &'static str,
    cases: Vec<Case>,
}

/// Prints the table and writes the JSON; modes in the order of the figures.
pub fn report(
    args: &Args,
    modes: [IoMode; 2],
    hs_sum: &[Throughput],
    msg_sum: &[Throughput],
    idle: &[IdleResult],
) -> Result<()> {
    println!();
    println!(
        "{:<42} {:>12} {:>12}   HAProxy 2.6 anchor",
        "case (median)", "io_uring", "epoll"
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}   ~{HAPROXY_HANDSHAKES:.0}/s (client-bound)",
        "full TLS 1.3 connections/s (hs+101+echo)", hs_sum[0].rate, hs_sum[1].rate
    );
    println!(
        "{:<42} {:>11.0}% {:>11.0}%   66%",
        "  proxy CPU while measuring",
        hs_sum[0].proxy_cpu * 100.0,
        hs_sum[1].proxy_cpu * 100.0
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}",
        "  per proxy CPU-second",
        hs_sum[0].rate / hs_sum[0].proxy_cpu.max(1e-9),
        hs_sum[1].rate / hs_sum[1].proxy_cpu.max(1e-9)
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}   (52,600 keep-alive HTTPS req/s)",
        format!("ws messages/s ({} conns, ping-pong)", args.ws_conns),
        msg_sum[0].rate,
        msg_sum[1].rate
    );
    println!(
        "{:<42} {:>11.0}% {:>11.0}%",
        "  proxy CPU while measuring",
        msg_sum[0].proxy_cpu * 100.0,
        msg_sum[1].proxy_cpu * 100.0
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}   {HAPROXY_IDLE_BYTES:.0}",
        format!("RSS bytes per idle TLS ws conn ({})", args.idle_conns),
        idle[0].rss_bytes_per_conn,
        idle[1].rss_bytes_per_conn
    );
    println!(
        "{:<42} {:>12.0} {:>12.0}",
        "  of which live heap (counted)", idle[0].heap_bytes_per_conn, idle[1].heap_bytes_per_conn
    );
    for (m, r) in modes.iter().zip(idle) {
        println!(
            "\n{} heap added per idle connection, by exact allocation size:",
            mode_name(*m)
        );
        for (size, bytes, blocks) in r.top_sizes.iter().take(12) {
            println!("  {size:>7} B x {blocks:>4.2} = {bytes:>6.0} B");
        }
    }

    let mut cases = Vec::new();
    for (i, m) in modes.iter().enumerate() {
        let p = mode_name(*m);
        cases.push(Case {
            name: format!("{p}_tls_handshakes_per_s"),
            value: hs_sum[i].rate.round(),
            unit: "1/s",
        });
    }
    for (i, m) in modes.iter().enumerate() {
        cases.push(Case {
            name: format!("{}_ws_messages_per_s", mode_name(*m)),
            value: msg_sum[i].rate.round(),
            unit: "1/s",
        });
    }
    for (i, m) in modes.iter().enumerate() {
        cases.push(Case {
            name: format!("{}_idle_conn_bytes", mode_name(*m)),
            value: idle[i].rss_bytes_per_conn.round(),
            unit: "B",
        });
    }
    // Context for the figures above: how busy the proxy was, and its counted heap.
    for (i, m) in modes.iter().enumerate() {
        let p = mode_name(*m);
        cases.push(Case {
            name: format!("{p}_tls_handshakes_proxy_cpu"),
            value: (hs_sum[i].proxy_cpu * 1000.0).round() / 10.0,
            unit: "%",
        });
        cases.push(Case {
            name: format!("{p}_ws_messages_proxy_cpu"),
            value: (msg_sum[i].proxy_cpu * 1000.0).round() / 10.0,
            unit: "%",
        });
        cases.push(Case {
            name: format!("{p}_idle_conn_heap_bytes"),
            value: idle[i].heap_bytes_per_conn.round(),
            unit: "B",
        });
    }
    let results = Results {
        scenario: "proxy",
        cases,
    };
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, format!("{}\n", serde_json::to_string(&results)?))
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("\nwrote {}", args.out.display());
    Ok(())
}
