//! What operators look at, end to end: a control plane with a `ws` listener in front of three
//! simulated BitShares nodes, real health probes and real WebSocket clients, then
//! - `/stats` rendered by headless Chromium (Debian `chromium`): the backend table shows live
//!   numbers that change between two loads; a screenshot goes to
//!   `target/operator-view/stats.png`;
//! - `/stats` and `/stats.json` name no backend address or port;
//! - `promtool check metrics` (Debian `prometheus`) passes on a live scrape of `/metrics`;
//! - a real Prometheus server scrapes the proxy and answers `histogram_quantile(0.99, ...)`
//!   over the latency histograms for every backend;
//! - every query of the Grafana dashboard in `config/` names series the proxy exports.
//!
//! One test in its own process: the Prometheus recorder is global.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use proxy::{
    config::{Config, IoChoice},
    health::{checks::unix_now, rules::BackendState},
    observe::catalog,
    plane::{install_metrics_exporter, upstream_set, Event, Inputs},
};
use proxy_perf::node_sim::{NodeSim, NodeSimConfig};
use proxy_tests::{
    clients::{ws_client_from, WsClient},
    config::{Backend, ConfigBuilder},
    plane::{start_plane, TestPlane},
    ports::free_port,
    terminator::init_crypto,
};

const NODES: usize = 3;

fn config(port: u16, metrics: SocketAddr, nodes: &[SocketAddr]) -> Config {
    let backends: Vec<Backend> = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| Backend::new(format!("node-{}", i + 1), a))
        .collect();
    let health = "pools.eu.health";
    ConfigBuilder::loopback()
        .set("admin", "metrics", metrics.to_string())
        .terminator(1, 1)
        .listener("wss", format!("127.0.0.1:{port}"), "ws", "eu")
        .pool("eu", &backends)
        .set(health, "check", "bitshares-ws")
        .set(health, "interval_ms", 250)
        .set(health, "timeout_ms", 500)
        .set(health, "rise", 2)
        .set(health, "fall", 2)
        .set(health, "margin_secs", 1)
        .build("operator view")
}

type Plane = TestPlane;

/// Runs the plane as `proxy run` does (probe reports, a one-second tick, wall-clock `now`)
/// for `d`.
async fn pump(plane: &mut Plane, inputs: &mut Inputs, d: Duration) {
    let until = tokio::time::Instant::now() + d;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return,
            Some(r) = inputs.health.recv() => { plane.handle(Event::Health(r), unix_now()); }
            Some(c) = inputs.connects.recv() => { plane.handle(Event::Connect(c), unix_now()); }
            _ = tick.tick() => { plane.handle(Event::Tick, unix_now()); }
        }
    }
}

/// Runs blocking `f` on another thread while the plane, the simulated nodes and the metrics
/// exporter (tasks of this runtime) keep running.
async fn off_thread<T: Send + 'static>(
    plane: &mut Plane,
    inputs: &mut Inputs,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let mut h = tokio::task::spawn_blocking(f);
    loop {
        tokio::select! {
            r = &mut h => return r.expect("blocking work panicked"),
            _ = pump(plane, inputs, Duration::from_millis(50)) => {}
        }
    }
}

/// One request over plain HTTP; returns (head, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: stats.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP answer");
    (head.to_string(), body.to_string())
}

/// A WebSocket client through the proxy from 127.0.0.`src` that completes one call.
fn client(src: u8, proxy: SocketAddr) -> WsClient {
    let mut ws =
        ws_client_from(src, proxy, Duration::from_secs(5)).expect("upgrade through the proxy");
    ws.send(tungstenite::Message::text(
        r#"{"id":1,"method":"call","params":["database","get_chain_id",[]]}"#,
    ))
    .unwrap();
    loop {
        let m = ws.read().expect("answer");
        if m.to_text().is_ok_and(|t| t.contains("\"id\":1")) {
            return ws;
        }
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/operator-view")
        .to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        proxy_tests::skip::skipped(&format!(
            "part needing `{tool}`: not installed (run `cargo xtask setup`)"
        ));
    }
    ok
}

/// Headless Chromium with the flags this closed network needs.
fn chromium(profile: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1100,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stderr(Stdio::null());
    c
}

fn dump_dom(url: &str, profile: &Path) -> String {
    let out = chromium(profile)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium --dump-dom failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows of the backend table, as text.
fn table_rows(dom: &str) -> Vec<String> {
    dom.split("<tr>")
        .skip(2) // before the table, the header row
        .map(|r| r.split("</tr>").next().unwrap_or("").to_string())
        .collect()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Metric names a PromQL expression uses (`proxy_...`), histogram suffixes folded.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("proxy_") {
        let start = i + off;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

fn prom_query(prom: SocketAddr, q: &str) -> serde_json::Value {
    let enc: String = q
        .bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect();
    let (_, body) = http_get(prom, &format!("/api/v1/query?query={enc}"));
    // Prometheus may answer chunked; the JSON object is between the first `{` and last `}`.
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad answer ({e}): {body}"))
}

#[tokio::test(flavor = "current_thread")]
async fn stats_page_prometheus_and_dashboard_show_the_live_region() {
    init_crypto();
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(
            NodeSim::spawn(NodeSimConfig::fast(1_000, 30))
                .await
                .expect("node sim"),
        );
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = config(free_port(), metrics, &addrs);
    install_metrics_exporter(metrics).expect("metrics exporter");
    let (mut plane, mut inputs, proxy) = start_plane(&config, IoChoice::Epoll, unix_now(), "wss");
    let started = Instant::now();
    while !(1..=NODES)
        .all(|i| plane.board().state("eu", &format!("node-{i}")) == Some(BackendState::Up))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nodes never came up"
        );
        pump(&mut plane, &mut inputs, Duration::from_millis(200)).await;
    }

    // Clients on every node: sources whose first choice covers all three.
    let set = upstream_set(plane.balancer(), plane.listener("wss").unwrap()).unwrap();
    let mut sources = Vec::new();
    for i in 1..=NODES {
        let name = format!("node-{i}");
        let found: Vec<u8> = (2..250u8)
            .filter(|s| set.candidates([127, 0, 0, *s].into())[0].name == name)
            .take(3)
            .collect();
        assert!(!found.is_empty(), "no source lands on {name}");
        sources.extend(found);
    }
    // Live clients stay open; a churn thread keeps new connections coming (the latency
    // histograms' rates must be non-zero over Prometheus' window).
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, srcs) = (stop.clone(), sources.clone());
    let churn = tokio::task::spawn_blocking(move || {
        let live: Vec<_> = srcs.iter().map(|s| client(*s, proxy)).collect();
        while !stop2.load(Ordering::Relaxed) {
            for s in &srcs {
                drop(client(*s, proxy));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        drop(live);
    });
    pump(&mut plane, &mut inputs, Duration::from_secs(3)).await;

    // `/stats.json`: every backend up, with head, latency and clients; no address anywhere.
    let (head, json_body) = off_thread(&mut plane, &mut inputs, move || {
        http_get(proxy, "/stats.json")
    })
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, html_body) =
        off_thread(&mut plane, &mut inputs, move || http_get(proxy, "/stats")).await;
    assert!(head.contains("text/html"), "{head}");
    for doc in [&json_body, &html_body] {
        assert!(!doc.contains("127.0.0.1"), "an address in /stats:\n{doc}");
        for a in &addrs {
            assert!(
                !doc.contains(&format!(":{}", a.port())),
                "a node port in /stats"
            );
        }
    }
    let v: serde_json::Value = serde_json::from_str(&json_body).unwrap();
    let backends = v["pools"][0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), NODES);
    for b in backends {
        assert_eq!(b["state"], "up", "{b}");
        assert!(b["head_block"].as_u64().is_some(), "{b}");
        assert!(b["health_rtt_ms"]["p50"].as_f64().is_some(), "{b}");
        assert!(b["connect_ms"]["p99"].as_f64().is_some(), "{b}");
        assert!(b["clients"].as_i64().unwrap() >= 1, "{b}");
    }
    assert!(v["clients"].as_i64().unwrap() >= sources.len() as i64);

    // Prometheus: scrape, promtool, a real server's quantile query, the dashboard's names.
    let (_, scrape) = off_thread(&mut plane, &mut inputs, move || {
        http_get(metrics, "/metrics")
    })
    .await;
    std::fs::write(artifacts().join("metrics.txt"), &scrape).unwrap();
    if have("promtool") {
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        let out = p.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        std::fs::write(artifacts().join("promtool.txt"), &text).unwrap();
        assert!(out.status.success(), "promtool check metrics:\n{text}");
        eprintln!("promtool check metrics: ok {text}");
    }
    for line in [
        "# HELP proxy_backend_connect_seconds",
        "# TYPE proxy_backend_connect_seconds histogram",
        "proxy_backend_connect_seconds_bucket{pool=\"eu\",backend=\"node-1\",le=\"0.0001\"}",
    ] {
        assert!(scrape.contains(line), "missing {line:?} in the scrape");
    }
    // Every series in the scrape is in the catalogue, with its HELP text.
    for line in scrape.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            catalog::SERIES.iter().any(|(n, ..)| *n == name),
            "{name} is exported but not in observe::catalog"
        );
        assert!(
            scrape.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/grafana-dashboard.json"),
    )
    .expect("config/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(
        exprs.len() >= 8,
        "the dashboard has {} queries",
        exprs.len()
    );
    for e in &exprs {
        for name in metric_names(e) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                catalog::SERIES.iter().any(|(n, ..)| *n == base),
                "dashboard query `{e}` names `{name}`, which the proxy does not export"
            );
        }
    }

    if have("prometheus") {
        let prom: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = artifacts().join("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: proxy\n    static_configs:\n      - targets: ['{metrics}']\n"
            ),
        )
        .unwrap();
        let _server = Killed(
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={prom}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("log.txt")).unwrap())
                .spawn()
                .expect("start prometheus"),
        );
        let queries = [
            "histogram_quantile(0.99, sum by (le, backend) (rate(proxy_backend_connect_seconds_bucket[1m])))",
            "histogram_quantile(0.99, sum by (le, backend) (rate(proxy_backend_time_to_101_seconds_bucket[1m])))",
            "histogram_quantile(0.99, sum by (le, backend) (rate(proxy_health_check_seconds_bucket[1m])))",
        ];
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut last = serde_json::Value::Null;
        'wait: loop {
            pump(&mut plane, &mut inputs, Duration::from_secs(1)).await;
            let mut all = true;
            let mut answers: Vec<String> = Vec::new();
            for q in queries {
                let r = off_thread(&mut plane, &mut inputs, move || prom_query(prom, q)).await;
                let per_backend = r["data"]["result"]
                    .as_array()
                    .map(|rs| {
                        rs.iter()
                            .filter(|s| {
                                s["value"][1]
                                    .as_str()
                                    .and_then(|v| v.parse::<f64>().ok())
                                    .is_some_and(|v| v.is_finite() && v > 0.0)
                            })
                            .count()
                    })
                    .unwrap_or(0);
                if per_backend < NODES {
                    all = false;
                    last = r;
                    break;
                }
                answers.push(format!("{q}\n  -> {r}"));
            }
            if all {
                let report = answers.join("\n");
                std::fs::write(artifacts().join("prometheus-queries.txt"), &report).unwrap();
                eprintln!("Prometheus:\n{report}");
                break 'wait;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus has no p99 for every backend: {last}"
            );
        }
    }

    // Chromium: two loads a few seconds apart show live numbers; a screenshot for people.
    if have("chromium") {
        let profile = artifacts().join("chromium-profile");
        let url = format!("http://{proxy}/stats");
        let (u, p) = (url.clone(), profile.clone());
        let first = off_thread(&mut plane, &mut inputs, move || dump_dom(&u, &p)).await;
        pump(&mut plane, &mut inputs, Duration::from_secs(3)).await;
        let (u, p) = (url.clone(), profile.clone());
        let second = off_thread(&mut plane, &mut inputs, move || dump_dom(&u, &p)).await;
        for i in 1..=NODES {
            assert!(
                first.contains(&format!("node-{i}")),
                "node-{i} missing:\n{first}"
            );
        }
        let (a, b) = (table_rows(&first), table_rows(&second));
        assert_eq!(a.len(), NODES, "{first}");
        assert!(
            a != b,
            "the table did not change between two loads:\n{first}"
        );
        let shot = artifacts().join("stats.png");
        let _ = std::fs::remove_file(&shot);
        let (u, p, out) = (url.clone(), profile.clone(), shot.clone());
        let ok = off_thread(&mut plane, &mut inputs, move || {
            chromium(&p)
                .arg(format!("--screenshot={}", out.display()))
                .arg(&u)
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success()
        })
        .await;
        assert!(ok && std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));
        eprintln!("screenshot: {}", shot.display());
    }

    stop.store(true, Ordering::Relaxed);
    churn.await.unwrap();
    drop(plane.shutdown());
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}
