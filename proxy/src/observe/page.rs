//! The public `/stats` page: a region's nodes by name, their health in words, chain head and
//! lag, latency and clients. Pure: a [`RegionView`] in, HTML or JSON out. The view holds
//! names only; whoever builds it never puts a backend address in it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Seconds between the page's own refreshes.
pub const REFRESH_SECS: u32 = 5;

/// Everything the page shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegionView {
    /// Unix seconds the view was taken.
    pub generated_at_unix: i64,
    pub clients: i64,
    pub nodes_up: usize,
    pub nodes: usize,
    pub pools: Vec<PoolView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolView {
    pub name: String,
    /// `advancing`, `halted` or `unknown`.
    pub chain_state: String,
    /// The chain state in words, e.g. "chain halted at block 93000120 for 95 s".
    pub chain_note: String,
    pub best_head_block: Option<u64>,
    pub best_head_age_secs: Option<i64>,
    pub clients: i64,
    pub nodes_up: usize,
    /// Fewer healthy nodes than the panic threshold: the least-bad are kept in.
    pub panic: bool,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendView {
    pub name: String,
    /// `up`, `down`, `unknown`, `ejected`, `drained`, `kept` (out by its own health, kept in
    /// by a chain halt or the panic threshold).
    pub state: String,
    /// Why, in words.
    pub reason: String,
    /// Whether it takes new connections.
    pub available: bool,
    pub head_block: Option<u64>,
    pub head_age_secs: Option<i64>,
    /// Blocks behind the pool's best head.
    pub lag_blocks: Option<u64>,
    pub connect_ms: Quantiles,
    pub health_rtt_ms: Quantiles,
    pub clients: i64,
    /// Seconds since the last state change (None: no change seen since the proxy started).
    pub in_state_secs: Option<i64>,
}

/// p50 and p99 in milliseconds (None: no observation yet).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Quantiles {
    pub fn of(s: &super::latency::Snapshot) -> Self {
        Self {
            p50: s.quantile(0.5).map(|v| v * 1e3),
            p99: s.quantile(0.99).map(|v| v * 1e3),
        }
    }
}

/// `/stats.json` body.
pub fn json(view: &RegionView) -> String {
    serde_json::to_string_pretty(view).unwrap_or_else(|_| "{}".into())
}

/// `/stats` body: one self-contained document (inline CSS, no scripts, no external assets)
/// that refreshes itself and reads on a phone.
pub fn html(view: &RegionView) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>Node status</title><style>{CSS}</style></head><body>\
         <h1>Node status</h1><div class=\"cards\">{}{}{}</div>",
        card("Clients", &view.clients.to_string(), ""),
        card(
            "Nodes up",
            &format!("{} / {}", view.nodes_up, view.nodes),
            if view.nodes_up < view.nodes {
                "warn"
            } else {
                ""
            }
        ),
        card("Updated", &utc(view.generated_at_unix), ""),
    );
    for p in &view.pools {
        pool(&mut h, p);
    }
    let _ = writeln!(
        h,
        "<footer>Refreshes every {REFRESH_SECS} s. Machine-readable: <a href=\"/stats.json\">/stats.json</a>.</footer></body></html>"
    );
    h
}

fn pool(h: &mut String, p: &PoolView) {
    let chain_class = match p.chain_state.as_str() {
        "advancing" => "ok",
        "halted" => "bad",
        _ => "warn",
    };
    let _ = write!(
        h,
        "<section><h2>{}</h2><div class=\"cards\">{}{}{}{}</div>",
        esc(&p.name),
        card("Chain", &p.chain_note, chain_class),
        card(
            "Best head",
            &p.best_head_block.map_or("–".into(), |b| b.to_string()),
            ""
        ),
        card(
            "Head age",
            &p.best_head_age_secs.map_or("–".into(), secs),
            ""
        ),
        card(
            "Nodes up",
            &format!("{} / {}", p.nodes_up, p.backends.len()),
            if p.nodes_up < p.backends.len() {
                "warn"
            } else {
                ""
            }
        ),
    );
    h.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Node</th><th>State</th><th>Head block</th>\
         <th>Head age</th><th>Lag</th><th>Connect p50 / p99</th><th>Check RTT p50 / p99</th>\
         <th>Clients</th><th>In state</th></tr></thead><tbody>",
    );
    for b in &p.backends {
        let class = match b.state.as_str() {
            "up" => "ok",
            "down" | "ejected" => "bad",
            _ => "warn",
        };
        let _ = write!(
            h,
            "<tr><td class=\"name\">{}</td><td><span class=\"pill {class}\">{}</span><div class=\"why\">{}</div></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&b.name),
            esc(&b.state),
            esc(&b.reason),
            b.head_block.map_or("–".into(), |n| n.to_string()),
            b.head_age_secs.map_or("–".into(), secs),
            b.lag_blocks.map_or("–".into(), |n| format!("{n} blocks")),
            pair(b.connect_ms),
            pair(b.health_rtt_ms),
            b.clients,
            b.in_state_secs.map_or("since start".into(), secs),
        );
    }
    h.push_str("</tbody></table></div></section>");
}

fn card(label: &str, value: &str, class: &str) -> String {
    format!(
        "<div class=\"card {class}\"><div class=\"label\">{}</div><div class=\"value\">{}</div></div>",
        esc(label),
        esc(value)
    )
}

fn pair(q: Quantiles) -> String {
    match (q.p50, q.p99) {
        (Some(a), Some(b)) => format!("{} / {}", ms(a), ms(b)),
        _ => "–".into(),
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

fn secs(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

fn utc(unix: i64) -> String {
    let t = unix.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02} UTC", t / 3600, t / 60 % 60, t % 60)
}

/// HTML text escape: node names and reasons come from the config and from nodes' answers.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "\
:root{color-scheme:light dark;--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--line:#8884}\
body{font:15px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;padding:12px;max-width:1100px}\
h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.15em;margin:1.2em 0 .4em}\
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid var(--line);border-radius:8px;padding:6px 12px;min-width:7em}\
.card .label{font-size:.8em;opacity:.75}.card .value{font-size:1.15em;font-weight:600}\
.card.ok .value{color:var(--ok)}.card.warn .value{color:var(--warn)}.card.bad .value{color:var(--bad)}\
.scroll{overflow-x:auto;margin-top:8px}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);white-space:nowrap;vertical-align:top}\
th{font-size:.8em;opacity:.75;font-weight:600}td.name{font-weight:600}\
.why{font-size:.8em;opacity:.75;white-space:normal;max-width:22em}\
.pill{display:inline-block;border-radius:10px;padding:0 8px;color:#fff;font-size:.85em}\
.pill.ok{background:var(--ok)}.pill.warn{background:var(--warn)}.pill.bad{background:var(--bad)}\
footer{margin-top:1.5em;font-size:.8em;opacity:.7}";

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RegionView {
        RegionView {
            generated_at_unix: 1_764_000_000,
            clients: 7,
            nodes_up: 1,
            nodes: 2,
            pools: vec![PoolView {
                name: "eu".into(),
                chain_state: "advancing".into(),
                chain_note: "advancing".into(),
                best_head_block: Some(93_000_100),
                best_head_age_secs: Some(1),
                clients: 7,
                nodes_up: 1,
                panic: false,
                backends: vec![
                    BackendView {
                        name: "node-<a>".into(),
                        state: "up".into(),
                        reason: "healthy".into(),
                        available: true,
                        head_block: Some(93_000_100),
                        head_age_secs: Some(1),
                        lag_blocks: Some(0),
                        connect_ms: Quantiles {
                            p50: Some(0.4),
                            p99: Some(1.9),
                        },
                        health_rtt_ms: Quantiles::default(),
                        clients: 7,
                        in_state_secs: Some(4000),
                    },
                    BackendView {
                        name: "b".into(),
                        state: "down".into(),
                        reason: "head block 95 s old".into(),
                        available: false,
                        head_block: Some(93_000_060),
                        head_age_secs: Some(95),
                        lag_blocks: Some(40),
                        connect_ms: Quantiles::default(),
                        health_rtt_ms: Quantiles::default(),
                        clients: 0,
                        in_state_secs: None,
                    },
                ],
            }],
        }
    }

    #[test]
    fn html_shows_the_numbers_escaped_and_self_contained() {
        let h = html(&view());
        assert!(h.contains("node-&lt;a&gt;") && !h.contains("node-<a>"));
        for s in [
            "93000100",
            "40 blocks",
            "95 s",
            "0.40 ms / 1.90 ms",
            "66 min",
            "1 / 2",
            "head block 95 s old",
            "http-equiv=\"refresh\"",
            "name=\"viewport\"",
        ] {
            assert!(h.contains(s), "missing {s:?}");
        }
        assert!(!h.contains("http://") && !h.contains("https://") && !h.contains("<script"));
    }

    #[test]
    fn json_round_trips_the_view() {
        let v: serde_json::Value = serde_json::from_str(&json(&view())).unwrap();
        assert_eq!(v["pools"][0]["backends"][1]["lag_blocks"], 40);
        assert_eq!(v["pools"][0]["backends"][0]["connect_ms"]["p99"], 1.9);
        assert_eq!(v["nodes_up"], 1);
    }
}
