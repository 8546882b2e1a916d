//! Socket tests: real listeners on 127.0.0.1, HTTP and WebSocket clients.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use super::*;
use proxy::chain::parse_chain_time as parse_time;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const T: Duration = Duration::from_secs(5);

/// A fast chain whose hourly maintenance stays out of the way of short tests.
fn fast_no_maint() -> NodeSimConfig {
    NodeSimConfig::fast(100, 3600)
}

/// Sends one raw HTTP request (Connection: close) and returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = timeout(T, TcpStream::connect(addr)).await.unwrap().unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(T, s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// JSON-RPC `call` over HTTP POST; returns the whole answer.
async fn post_call(addr: SocketAddr, api: Value, method: &str, args: Value) -> Value {
    let req = json!({"id": 1, "method": "call", "params": [api, method, args]});
    let (status, body) = http(addr, "POST", "/", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn dgp(addr: SocketAddr) -> Value {
    post_call(
        addr,
        json!("database"),
        "get_dynamic_global_properties",
        json!([]),
    )
    .await["result"]
        .clone()
}

async fn head_num(addr: SocketAddr) -> u64 {
    dgp(addr).await["head_block_number"].as_u64().unwrap()
}

async fn control(node: &NodeSimHandle, method: &str, path: &str) -> (u16, Value) {
    let (status, body) = http(node.control_addr.unwrap(), method, path, "").await;
    (status, serde_json::from_str(&body).unwrap())
}

async fn ws_connect(url: &str) -> Ws {
    timeout(T, connect_async(url)).await.unwrap().unwrap().0
}

/// A websocket to `node` subscribed to object notices with callback `cb`.
async fn subscribed(node: &NodeSimHandle, cb: u64, clear_filter: bool) -> Ws {
    let mut ws = ws_connect(&node.ws_url()).await;
    let args = json!([cb, clear_filter]);
    ws_call(
        &mut ws,
        1,
        json!("database"),
        "set_subscribe_callback",
        args,
    )
    .await;
    ws
}

/// Next text message, parsed (panics on close, error or timeout).
async fn ws_recv(ws: &mut Ws) -> Value {
    loop {
        match timeout(T, ws.next()).await.expect("message in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sends a `call` and returns its answer, skipping notices in between.
async fn ws_call(ws: &mut Ws, id: u64, api: Value, method: &str, args: Value) -> Value {
    let req = json!({"id": id, "method": "call", "params": [api, method, args]});
    ws.send(Message::Text(req.to_string())).await.unwrap();
    loop {
        let v = ws_recv(ws).await;
        if v["id"] == json!(id) {
            return v;
        }
    }
}

fn num_of(v: &Value) -> u64 {
    v["head_block_number"].as_u64().unwrap()
}

#[tokio::test]
async fn http_post_dynamic_global_properties() {
    let node = NodeSim::spawn(fast_no_maint()).await.unwrap();
    let d = dgp(node.addr).await;
    assert_eq!(d["id"], "2.1.0");
    let num = num_of(&d);
    let id = d["head_block_id"].as_str().unwrap();
    assert_eq!(id.len(), 40);
    assert!(id.starts_with(&format!("{:08x}", num as u32)));
    let time = parse_time(d["time"].as_str().unwrap()).expect("time parses");
    let nmt = parse_time(d["next_maintenance_time"].as_str().unwrap()).unwrap();
    assert!(nmt > time);
    parse_time(d["last_budget_time"].as_str().unwrap()).unwrap();
    // Real clock: the head is (about) now.
    let now = wall_ms() / 1000;
    assert!((now - time).abs() <= 2, "head time {time}, now {now}");
    assert!(d["current_witness"].as_str().unwrap().starts_with("1.6."));
    let lib = d["last_irreversible_block_num"].as_u64().unwrap();
    assert!((14..=16).contains(&(num - lib)));
    for f in [
        "witness_budget",
        "accounts_registered_this_interval",
        "recently_missed_count",
        "current_aslot",
        "dynamic_flags",
    ] {
        assert!(d[f].is_u64(), "{f}");
    }
    assert!(d["recent_slots_filled"]
        .as_str()
        .unwrap()
        .bytes()
        .all(|c| c.is_ascii_digit()));

    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(head_num(node.addr).await > num, "head advances");

    // Keep-alive: two requests on one connection, then a batch.
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let body = r#"{"id":5,"method":"call","params":["database","get_chain_id",[]]}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(format!("{req}{req}").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while got
        .windows(MAINNET_CHAIN_ID.len())
        .filter(|w| *w == MAINNET_CHAIN_ID.as_bytes())
        .count()
        < 2
    {
        let mut b = [0u8; 4096];
        let n = timeout(T, s.read(&mut b)).await.unwrap().unwrap();
        assert!(n > 0, "connection kept open");
        got.extend_from_slice(&b[..n]);
    }
    let batch = r#"[{"id":1,"method":"call","params":["database","get_chain_id",[]]},{"id":2,"method":"call","params":["database","get_objects",[["2.0.0"]]]}]"#;
    let (_, body) = http(node.addr, "POST", "/", batch).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["result"], MAINNET_CHAIN_ID);
    assert_eq!(v[1]["result"][0]["parameters"]["block_interval"], 1);
    assert_eq!(
        v[1]["result"][0]["parameters"]["maintenance_interval"],
        3600
    );
    node.shutdown().await;
}

#[tokio::test]
async fn websocket_session() {
    let node = NodeSim::spawn(fast_no_maint()).await.unwrap();
    let mut ws = ws_connect(&format!("ws://{}/", node.addr)).await;
    let r = ws_call(&mut ws, 1, json!(1), "login", json!(["", ""])).await;
    assert_eq!(r, json!({"id": 1, "jsonrpc": "2.0", "result": true}));
    let r = ws_call(&mut ws, 2, json!(1), "database", json!([])).await;
    assert_eq!(r["result"], 2);
    let r = ws_call(&mut ws, 3, json!(1), "network_broadcast", json!([])).await;
    assert_eq!(r["result"], 3);
    let r = ws_call(&mut ws, 4, json!(2), "get_chain_id", json!([])).await;
    assert_eq!(r["result"], MAINNET_CHAIN_ID);
    let r = ws_call(
        &mut ws,
        5,
        json!(2),
        "get_objects",
        json!([["2.1.0", "9.9.9"]]),
    )
    .await;
    assert_eq!(r["result"][0]["id"], "2.1.0");
    assert!(r["result"][1].is_null());
    let r = ws_call(&mut ws, 6, json!(2), "get_config", json!([])).await;
    assert_eq!(r["result"]["GRAPHENE_ADDRESS_PREFIX"], "BTS");
    let r = ws_call(&mut ws, 7, json!(2), "no_such_method", json!([])).await;
    assert_eq!(r["error"]["code"], 1);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no_such_method"));
    assert!(r.get("result").is_none());

    let r = ws_call(
        &mut ws,
        8,
        json!(2),
        "set_subscribe_callback",
        json!([42, true]),
    )
    .await;
    assert!(r["result"].is_null());
    assert_eq!(node.subscribers(), 1);
    let mut heads = Vec::new();
    while heads.len() < 3 {
        let v = ws_recv(&mut ws).await;
        assert_eq!(v["method"], "notice");
        assert_eq!(v["params"][0], 42);
        let obj = &v["params"][1][0][0];
        assert_eq!(obj["id"], "2.1.0");
        heads.push(num_of(obj));
    }
    assert!(heads.windows(2).all(|w| w[1] > w[0]), "{heads:?}");

    // A transaction broadcast with a callback is confirmed in a later block.
    let trx = json!({"ref_block_num": 1, "operations": []});
    let r = ws_call(
        &mut ws,
        9,
        json!(3),
        "broadcast_transaction_with_callback",
        json!([77, trx]),
    )
    .await;
    assert!(r["result"].is_null());
    loop {
        let v = ws_recv(&mut ws).await;
        if v["params"][0] == 77 {
            assert_eq!(v["params"][1][0]["trx"], trx);
            break;
        }
    }
    drop(ws);
    // Another path is not a websocket endpoint.
    assert!(connect_async(format!("ws://{}/nope", node.addr))
        .await
        .is_err());
    node.shutdown().await;
}

/// Block interval 100 ms, maintenance every 2 s, 3 skipped slots: every
/// maintenance block carries dynamic_flags 1, is followed by a 400 ms gap, and
/// moves next_maintenance_time by exactly 2 s.
#[tokio::test]
async fn maintenance_schedule() {
    let node = NodeSim::spawn(NodeSimConfig::fast(100, 2)).await.unwrap();
    let mut ws = subscribed(&node, 1, false).await;
    let start = Instant::now();
    let mut seen: Vec<(Instant, Value)> = Vec::new();
    while start.elapsed() < Duration::from_millis(4500) {
        let v = ws_recv(&mut ws).await;
        seen.push((Instant::now(), v["params"][1][0][0].clone()));
    }
    let chain = node.chain();
    let mut maint = Vec::new();
    for pair in seen.windows(2) {
        let ((t0, a), (t1, b)) = (&pair[0], &pair[1]);
        let (na, nb) = (num_of(a), num_of(b));
        assert_eq!(nb, na + 1, "every block is pushed");
        let nmt_a = parse_time(a["next_maintenance_time"].as_str().unwrap()).unwrap();
        let nmt_b = parse_time(b["next_maintenance_time"].as_str().unwrap()).unwrap();
        let time_b = parse_time(b["time"].as_str().unwrap()).unwrap();
        assert!(nmt_b > time_b);
        if b["dynamic_flags"] == 1 {
            maint.push(nb);
            // The maintenance block lands on the maintenance time (aligned slots).
            assert_eq!(time_b, nmt_a);
            assert_eq!(nmt_b, nmt_a + 2);
        } else {
            assert_eq!(b["dynamic_flags"], 0);
            assert_eq!(nmt_b, nmt_a);
        }
        // Slot gaps from the model: (1 + skip) intervals after a maintenance block.
        let gap = chain.block_by_num(nb).time_ms - chain.block_by_num(na).time_ms;
        if a["dynamic_flags"] == 1 {
            assert_eq!(gap, 400);
            // ... and on the wire: the next notice comes ~400 ms later.
            let wire = t1.duration_since(*t0);
            assert!(
                wire >= Duration::from_millis(250),
                "gap after maintenance {wire:?}"
            );
        } else {
            assert_eq!(gap, 100);
        }
    }
    assert!(maint.len() >= 2, "maintenance blocks seen: {maint:?}");
    // 2 s / 100 ms = 20 slots, 3 of them skipped.
    assert!(maint.windows(2).all(|w| w[1] - w[0] == 17), "{maint:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn control_stall_resume_lag() {
    let node = NodeSim::spawn(fast_no_maint()).await.unwrap();
    let (status, state) = control(&node, "POST", "/control/stall").await;
    assert_eq!(status, 200);
    assert_eq!(state["mode"]["head"]["state"], "stalled");
    let h1 = head_num(node.addr).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(head_num(node.addr).await, h1, "stalled head does not move");
    assert!(node.chain_head().num >= h1 + 3);

    control(&node, "POST", "/control/resume").await;
    let before = node.chain_head().num;
    let h2 = head_num(node.addr).await;
    assert!(
        h2 >= before && h2 > h1 + 2,
        "resumed head catches up: {h1} -> {h2}"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(head_num(node.addr).await > h2);

    let (status, _) = control(&node, "POST", "/control/lag?blocks=5").await;
    assert_eq!(status, 200);
    let before = node.chain_head().num;
    let d = dgp(node.addr).await;
    let after = node.chain_head().num;
    let got = num_of(&d);
    assert!(
        before - 5 <= got && got <= after - 5,
        "{before} {got} {after}"
    );
    // The reported time is that block's time.
    let t = parse_time(d["time"].as_str().unwrap()).unwrap();
    assert_eq!(t, node.chain().block_by_num(got).time_ms / 1000);
    let (_, state) = control(&node, "GET", "/control/state").await;
    assert_eq!(
        state["mode"]["head"],
        json!({"state": "lagging", "blocks": 5})
    );

    // Bad requests.
    assert_eq!(control(&node, "POST", "/control/lag").await.0, 400);
    assert_eq!(control(&node, "POST", "/control/explode").await.0, 404);
    assert_eq!(control(&node, "GET", "/control/stall").await.0, 405);

    // Flap: alternate healthy and stalled.
    node.set_mode(Control::Flap(Duration::from_millis(300)))
        .await
        .unwrap();
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1300) {
        samples.push((node.head().num, node.chain_head().num));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples.iter().any(|(h, c)| h == c), "healthy phases");
    assert!(samples.iter().any(|(h, c)| c - h >= 2), "stalled phases");
    node.shutdown().await;
}

#[tokio::test]
async fn control_slow() {
    let node = NodeSim::spawn(fast_no_maint()).await.unwrap();
    let mut ws = ws_connect(&node.ws_url()).await;
    let (status, state) = control(&node, "POST", "/control/slow?ms=300").await;
    assert_eq!(status, 200);
    assert_eq!(state["mode"]["slow_ms"], 300);

    let t = Instant::now();
    dgp(node.addr).await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "HTTP {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    ws_call(&mut ws, 1, json!("database"), "get_chain_id", json!([])).await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "WS {:?}",
        t.elapsed()
    );

    node.set_mode(Control::Slow(Duration::ZERO)).await.unwrap();
    let t = Instant::now();
    ws_call(&mut ws, 2, json!("database"), "get_chain_id", json!([])).await;
    dgp(node.addr).await;
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "fast again {:?}",
        t.elapsed()
    );
    node.shutdown().await;
}

#[tokio::test]
async fn control_refuse_accept() {
    let node = NodeSim::spawn(fast_no_maint()).await.unwrap();
    let mut ws = ws_connect(&node.ws_url()).await;
    let (status, state) = control(&node, "POST", "/control/refuse").await;
    assert_eq!(status, 200);
    assert_eq!(state["mode"]["accepting"], false);
    let err = TcpStream::connect(node.addr)
        .await
        .expect_err("connect refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Live connections are untouched.
    let r = ws_call(&mut ws, 1, json!("database"), "get_chain_id", json!([])).await;
    assert_eq!(r["result"], MAINNET_CHAIN_ID);

    let (status, state) = control(&node, "POST", "/control/accept").await;
    assert_eq!(status, 200);
    assert_eq!(state["mode"]["accepting"], true);
    assert!(head_num(node.addr).await > 0);
    node.shutdown().await;
}

#[tokio::test]
async fn control_die() {
    let node = NodeSim::spawn(fast_no_maint()).await.unwrap();
    let mut ws = subscribed(&node, 1, true).await;
    ws_recv(&mut ws).await; // notices flowing
    assert_eq!(node.connections(), 1);

    let (status, _) = control(&node, "POST", "/control/die").await;
    assert_eq!(status, 200);
    // The client sees the stream end: an error (reset) or EOF, never a close frame exchange.
    let ended = timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => continue, // notices sent before the reset
                other => return other,
            }
        }
    })
    .await
    .expect("websocket dropped");
    assert!(
        matches!(ended, None | Some(Err(_))),
        "abrupt end, got {ended:?}"
    );
    // The node itself keeps serving.
    assert!(head_num(node.addr).await > 0);
    let deadline = Instant::now() + T;
    while node.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.connections(), 0);
    node.shutdown().await;
}

#[tokio::test]
async fn control_heavy_push() {
    let node = NodeSim::spawn(fast_no_maint()).await.unwrap();
    let mut ws = subscribed(&node, 3, true).await;

    // Counts notices and distinct blocks over a window.
    async fn window(ws: &mut Ws, ms: u64) -> (usize, usize, usize) {
        let end = Instant::now() + Duration::from_millis(ms);
        let (mut notices, mut blocks, mut biggest) = (0, 0, 0);
        while let Ok(m) = tokio::time::timeout_at(end, ws.next()).await {
            let Some(Ok(Message::Text(t))) = m else {
                panic!("unexpected {m:?}")
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["method"] == "notice" {
                notices += 1;
                biggest = biggest.max(t.len());
                if v["params"][1][0][0]["id"] == "2.1.0" {
                    blocks += 1;
                }
            }
        }
        (notices, blocks, biggest)
    }

    let (n, b, _) = window(&mut ws, 600).await;
    assert!(
        b >= 3 && n == b,
        "normal: one notice per block ({n} notices, {b} blocks)"
    );

    let (status, state) = control(
        &node,
        "POST",
        "/control/heavy?objects_per_block=20&bytes=400",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(state["mode"]["heavy"]["objects_per_block"], 20);
    window(&mut ws, 150).await; // the block in flight may still be normal
    let (n, b, biggest) = window(&mut ws, 600).await;
    assert!(b >= 3, "{b} blocks");
    assert!(n >= b * 15, "heavy: {n} notices for {b} blocks");
    assert!(
        biggest >= 400,
        "objects of ~400 bytes, biggest notice {biggest}"
    );

    node.set_mode(Control::Normal).await.unwrap();
    window(&mut ws, 150).await;
    let (n, b, _) = window(&mut ws, 400).await;
    assert!(n <= b + 1, "normal again ({n} notices, {b} blocks)");
    node.shutdown().await;
}

#[tokio::test]
async fn instances_agree_on_the_head() {
    let a = NodeSim::spawn(fast_no_maint()).await.unwrap();
    let b = NodeSim::spawn(NodeSimConfig {
        initial: vec![Control::Lag(3)],
        ..fast_no_maint()
    })
    .await
    .unwrap();
    let (ha, hb) = (a.chain_head().num, b.chain_head().num);
    assert!(ha.abs_diff(hb) <= 1);
    assert!(a.head().num.abs_diff(b.head().num + 3) <= 1);
    // A time offset moves the head.
    let c = NodeSim::spawn(NodeSimConfig {
        time_offset_secs: -60,
        control: None,
        ..fast_no_maint()
    })
    .await
    .unwrap();
    assert!(c.control_addr.is_none());
    let behind = a.head().num - c.head().num;
    assert!((595..=605).contains(&behind), "{behind}");
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}
