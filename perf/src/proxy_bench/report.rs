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
    let both = |f: &dyn Fn(usize) -> f64| [f(0), f(1)];
    row(
        "full TLS 1.3 connections/s (hs+101+echo)",
        both(&|i| hs_sum[i].rate),
        &format!("~{HAPROXY_HANDSHAKES:.0}/s (client-bound)"),
    );
    percent_row(
        "  proxy CPU while measuring",
        both(&|i| hs_sum[i].proxy_cpu),
        "66%",
    );
    row(
        "  per proxy CPU-second",
        both(&|i| hs_sum[i].rate / hs_sum[i].proxy_cpu.max(1e-9)),
        "",
    );
    row(
        &format!("ws messages/s ({} conns, ping-pong)", args.ws_conns),
        both(&|i| msg_sum[i].rate),
        "(52,600 keep-alive HTTPS req/s)",
    );
    percent_row(
        "  proxy CPU while measuring",
        both(&|i| msg_sum[i].proxy_cpu),
        "",
    );
    row(
        &format!("RSS bytes per idle TLS ws conn ({})", args.idle_conns),
        both(&|i| idle[i].rss_bytes_per_conn),
        &format!("{HAPROXY_IDLE_BYTES:.0}"),
    );
    row(
        "  of which live heap (counted)",
        both(&|i| idle[i].heap_bytes_per_conn),
        "",
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
    let mut add = |mode: IoMode, name: &str, value: f64, unit| {
        let name = format!("{}_{name}", mode_name(mode));
        cases.push(Case { name, value, unit });
    };
    let percent = |share: f64| (share * 1000.0).round() / 10.0;
    for (&m, t) in modes.iter().zip(hs_sum) {
        add(m, "tls_handshakes_per_s", t.rate.round(), "1/s");
    }
    for (&m, t) in modes.iter().zip(msg_sum) {
        add(m, "ws_messages_per_s", t.rate.round(), "1/s");
    }
    for (&m, r) in modes.iter().zip(idle) {
        add(m, "idle_conn_bytes", r.rss_bytes_per_conn.round(), "B");
    }
    // Context for the figures above: how busy the proxy was, and its counted heap.
    for (i, &m) in modes.iter().enumerate() {
        add(
            m,
            "tls_handshakes_proxy_cpu",
            percent(hs_sum[i].proxy_cpu),
            "%",
        );
        add(
            m,
            "ws_messages_proxy_cpu",
            percent(msg_sum[i].proxy_cpu),
            "%",
        );
        add(
            m,
            "idle_conn_heap_bytes",
            idle[i].heap_bytes_per_conn.round(),
            "B",
        );
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

/// A table row: the label, the io_uring and epoll figures, then the anchor (if any).
fn row(label: &str, v: [f64; 2], anchor: &str) {
    println!(
        "{label:<42} {:>12.0} {:>12.0}{}",
        v[0],
        v[1],
        anchor_column(anchor)
    );
}

/// A row of CPU shares (1.0 = one core), shown in percent.
fn percent_row(label: &str, v: [f64; 2], anchor: &str) {
    println!(
        "{label:<42} {:>11.0}% {:>11.0}%{}",
        v[0] * 100.0,
        v[1] * 100.0,
        anchor_column(anchor)
    );
}

fn anchor_column(anchor: &str) -> String {
    if anchor.is_empty() {
        String::new()
    } else {
        format!("   {anchor}")
    }
}
