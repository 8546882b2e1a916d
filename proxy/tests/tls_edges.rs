//! TLS edge cases against the in-process terminator, driven by Debian's real tools
//! (`openssl s_client`, `curl`), in both io modes: SNI required, wrong names refused with an
//! alert, TLS 1.1 refused by the proxy itself, TLS 1.2 and 1.3 both served with ALPN
//! `http/1.1`, session resumption for both versions, `/stats` over HTTPS and the fixed 400
//! for a plain GET on a WebSocket path.
//!
//! `cargo xtask setup` installs the tools (`openssl`, `curl`); a case whose tool is missing
//! is skipped with a printed reason, never silently passed.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use proxy::{
    observe::{
        page::{BackendView, PoolView, Quantiles, RegionView},
        Pages, StatsBoard,
    },
    terminator::{
        handler::Observe,
        io::IoMode,
        server::Terminator,
        tls::{SniResolver, TlsAcceptor},
    },
};
use proxy_tests::{
    certs::TestCert,
    clients::{assert_binary_echo, assert_text_echo, wss_client, WssClient},
    echo::echo_node,
    tempdir::TempDir,
    terminator::{io_modes as modes, upstream_table, TerminatorBuilder, TestListener},
};

const NAME: &str = "eu.example.test";
const LISTENER: &str = "wss-edges";
/// Every external tool run is bounded: a hang is a failure, not a stuck test.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// A terminator with one TLS listener serving `eu.example.test` (certbot layout, rcgen
/// self-signed ECDSA P-256 certificate), no default certificate, relaying to an echo node.
struct Proxy {
    t: Option<Terminator>,
    port: u16,
    node: SocketAddr,
    /// The certificate, which is its own CA for `-CAfile` / `--cacert`.
    ca: PathBuf,
    dir: TempDir,
}

impl Proxy {
    fn start(mode: IoMode, tag: &str) -> Self {
        let dir = TempDir::new(&format!("tls-{tag}-{mode:?}")).unwrap();
        let cert = TestCert::write(&dir.path().join("live").join(NAME), NAME).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &cert.cert_pem).unwrap();
        let resolver = SniResolver::load(&[cert.source()], None).unwrap();
        let node = echo_node();
        let t = TerminatorBuilder::new(mode)
            .grace(Duration::from_millis(200))
            .listener(
                TestListener::new(LISTENER, upstream_table(&[("node-a", node)]))
                    .observe(published_stats())
                    .tls(TlsAcceptor::new(resolver)),
            )
            .start()
            .expect("terminator starts");
        let port = t.local_addrs[0].port();
        Self {
            t: Some(t),
            port,
            node,
            ca,
            dir,
        }
    }

    fn connect_arg(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.t.take() {
            t.shutdown();
        }
    }
}

/// Whether `tool` can be run; prints why a case is skipped when not.
fn have(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        proxy_tests::skip::skipped(&format!(
            "`{tool}` is not installed (run `cargo xtask setup`)"
        ));
    }
    ok
}

struct Run {
    success: bool,
    /// stdout and stderr together (s_client splits its messages over both).
    text: String,
}

/// Runs a command with `input` on stdin (then EOF), killed after [`TOOL_TIMEOUT`].
fn run(cmd: &mut Command, input: &[u8]) -> Run {
    run_paced(cmd, &[(input, Duration::ZERO)])
}

/// Runs a command with stdin written in pieces, each followed by its pause, then EOF (an
/// interactive client's lines arrive one at a time); killed after [`TOOL_TIMEOUT`].
fn run_paced(cmd: &mut Command, pieces: &[(&[u8], Duration)]) -> Run {
    let mut script = Vec::new();
    for (bytes, pause) in pieces {
        script.push((bytes.to_vec(), *pause));
    }
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {shown}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        for (bytes, pause) in script {
            let _ = stdin.write_all(&bytes);
            let _ = stdin.flush();
            thread::sleep(pause);
        }
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > TOOL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {TOOL_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    let mut text = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    text.push_str(&String::from_utf8_lossy(&err_t.join().unwrap()));
    Run {
        success: status.success(),
        text,
    }
}

/// `openssl s_client` against the proxy with `args` added; stdin is `input` then EOF.
fn s_client(p: &Proxy, args: &[&str], input: &[u8]) -> Run {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &p.connect_arg()])
        .arg("-CAfile")
        .arg(&p.ca)
        .args(args);
    run(&mut cmd, input)
}

/// Asks for `/stats` and keeps reading until the proxy closes: s_client then has seen
/// everything the server sent after the handshake, TLS 1.3 session tickets included.
const STATS_REQUEST: &[u8] = b"GET /stats HTTP/1.1\r\nHost: eu.example.test\r\n\r\n";

fn assert_handshake_ok(r: &Run, version: &str, ctx: &str) {
    assert!(r.success, "{ctx}: s_client failed:\n{}", r.text);
    assert!(
        r.text.contains("-----BEGIN CERTIFICATE-----") && r.text.contains("CN = rcgen"),
        "{ctx}: no certificate received:\n{}",
        r.text
    );
    assert!(
        r.text.contains("Verify return code: 0 (ok)") && !r.text.contains("SSL alert number"),
        "{ctx}: certificate not verified:\n{}",
        r.text
    );
    assert!(
        r.text.contains(&format!("New, {version},")),
        "{ctx}: not a new {version} session:\n{}",
        r.text
    );
    assert!(
        r.text.contains("ALPN protocol: http/1.1"),
        "{ctx}: ALPN http/1.1 not negotiated:\n{}",
        r.text
    );
}

/// Refused by the server: s_client fails, received an alert (`SSL alert number` is OpenSSL's
/// wording for an alert read from the peer) naming one of `alerts`, and got no certificate.
fn assert_refused_with_alert(r: &Run, alerts: &[&str], ctx: &str) {
    assert!(
        !r.success,
        "{ctx}: the handshake succeeded but must not:\n{}",
        r.text
    );
    assert!(
        r.text.contains("SSL alert number"),
        "{ctx}: no alert received from the proxy:\n{}",
        r.text
    );
    assert!(
        alerts.iter().any(|a| r.text.contains(a)),
        "{ctx}: expected one of {alerts:?}:\n{}",
        r.text
    );
    assert!(
        r.text.contains("no peer certificate available") && !r.text.contains("BEGIN CERTIFICATE"),
        "{ctx}: a certificate was sent:\n{}",
        r.text
    );
}

#[test]
fn s_client_with_sni_verifies_and_negotiates_http11_on_tls12_and_tls13() {
    if !have("openssl", &["version"]) {
        return;
    }
    for mode in modes() {
        let p = Proxy::start(mode, "ok");
        let common = [
            "-servername",
            NAME,
            "-verify_return_error",
            "-verify_hostname",
            NAME,
            "-alpn",
            "http/1.1",
        ];
        // Default (whatever the client prefers): TLS 1.3.
        let r = s_client(&p, &common, b"");
        assert_handshake_ok(&r, "TLSv1.3", &format!("{mode:?} default"));
        for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
            let mut args = common.to_vec();
            args.push(flag);
            let r = s_client(&p, &args, b"");
            assert_handshake_ok(&r, version, &format!("{mode:?} {flag}"));
        }
        // TLS 1.2 picks an ECDHE-ECDSA AEAD suite (the certificate is P-256).
        let mut args = common.to_vec();
        args.push("-tls1_2");
        let r = s_client(&p, &args, b"");
        assert!(
            r.text.contains("Cipher is ECDHE-ECDSA-"),
            "{mode:?}: TLS 1.2 suite:\n{}",
            r.text
        );
    }
}

#[test]
fn no_sni_and_wrong_sni_get_an_alert() {
    if !have("openssl", &["version"]) {
        return;
    }
    for mode in modes() {
        let p = Proxy::start(mode, "sni");
        for (args, ctx) in [
            (vec!["-noservername"], "no SNI"),
            (vec!["-servername", "other.example.test"], "wrong SNI"),
            // An IP literal is not a valid SNI host name: treated as no name.
            (vec!["-servername", "127.0.0.1"], "IP literal as name"),
        ] {
            for version in ["-tls1_3", "-tls1_2"] {
                let mut a = args.clone();
                a.push(version);
                let r = s_client(&p, &a, b"");
                assert_refused_with_alert(
                    &r,
                    &[
                        "alert access denied",
                        "alert handshake failure",
                        "alert unrecognized name",
                    ],
                    &format!("{mode:?} {ctx} {version}"),
                );
            }
        }
        // The listener still serves the right name afterwards.
        let r = s_client(&p, &["-servername", NAME, "-alpn", "http/1.1"], b"");
        assert_handshake_ok(&r, "TLSv1.3", &format!("{mode:?} after refusals"));
    }
}

#[test]
fn tls11_is_refused_by_the_proxy() {
    if !have("openssl", &["version"]) {
        return;
    }
    for mode in modes() {
        let p = Proxy::start(mode, "tls11");
        // SECLEVEL=0 lets Debian's OpenSSL offer TLS 1.1 at all, so the refusal we see is the
        // proxy's alert, not a local "no protocols available".
        let r = s_client(
            &p,
            &[
                "-servername",
                NAME,
                "-tls1_1",
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ],
            b"",
        );
        // rustls answers a ClientHello without TLS 1.2 or 1.3 with `handshake_failure`
        // (RFC 8446 suggests `protocol_version`; either is a refusal by the proxy).
        assert_refused_with_alert(
            &r,
            &["alert handshake failure", "alert protocol version"],
            &format!("{mode:?} -tls1_1"),
        );
        assert!(
            r.text.contains("Protocol  : TLSv1.1"),
            "{mode:?}: the client did not offer TLS 1.1:\n{}",
            r.text
        );
        assert!(
            !r.text.contains("no protocols available"),
            "{mode:?}: the client refused locally, the proxy was not tested:\n{}",
            r.text
        );
    }
}

#[test]
fn alpn_without_http11_is_refused() {
    if !have("openssl", &["version"]) {
        return;
    }
    for mode in modes() {
        let p = Proxy::start(mode, "alpn");
        // An h2-only client cannot talk to this listener: a clean alert, not a hang.
        let r = s_client(&p, &["-servername", NAME, "-alpn", "h2"], b"");
        assert_refused_with_alert(
            &r,
            &["alert no application protocol"],
            &format!("{mode:?} -alpn h2"),
        );
        // Offering both picks http/1.1.
        let r = s_client(&p, &["-servername", NAME, "-alpn", "h2,http/1.1"], b"");
        assert_handshake_ok(&r, "TLSv1.3", &format!("{mode:?} -alpn h2,http/1.1"));
    }
}

#[test]
fn session_resumption_on_tls12_and_tls13() {
    if !have("openssl", &["version"]) {
        return;
    }
    for mode in modes() {
        let p = Proxy::start(mode, "resume");
        for (version, name) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
            let sess = p.dir.path().join(format!("session{version}.pem"));
            let _ = std::fs::remove_file(&sess);
            let ctx = format!("{mode:?} {version}");
            let base = [
                "-servername",
                NAME,
                "-alpn",
                "http/1.1",
                "-ign_eof",
                version,
            ];
            let mut first = base.to_vec();
            first.push("-sess_out");
            first.push(sess.to_str().unwrap());
            let r = s_client(&p, &first, STATS_REQUEST);
            assert!(r.success, "{ctx}: first connection:\n{}", r.text);
            assert!(
                r.text.contains(&format!("New, {name},")),
                "{ctx}:\n{}",
                r.text
            );
            assert!(
                r.text.contains("HTTP/1.1 200"),
                "{ctx}: /stats not answered:\n{}",
                r.text
            );
            assert!(
                std::fs::metadata(&sess)
                    .map(|m| m.len() > 0)
                    .unwrap_or(false),
                "{ctx}: no session saved:\n{}",
                r.text
            );
            let mut second = base.to_vec();
            second.push("-sess_in");
            second.push(sess.to_str().unwrap());
            let r = s_client(&p, &second, STATS_REQUEST);
            assert!(r.success, "{ctx}: resumed connection:\n{}", r.text);
            assert!(
                r.text.contains(&format!("Reused, {name},")),
                "{ctx}: session not resumed:\n{}",
                r.text
            );
            assert!(
                r.text.contains("HTTP/1.1 200"),
                "{ctx}: /stats not answered on the resumed session:\n{}",
                r.text
            );
        }
    }
}

/// OpenSSL's KeyUpdate mid-session (s_client's `K`: it updates its key and asks for ours):
/// our record layer takes it and answers with its own, and the `/stats` answer that
/// follows passes under the new keys both ways.
#[test]
fn an_openssl_key_update_mid_session_is_answered() {
    if !have("openssl", &["version"]) {
        return;
    }
    for mode in modes() {
        let p = Proxy::start(mode, "keyupdate");
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &p.connect_arg()])
            .arg("-CAfile")
            .arg(&p.ca)
            .args(["-servername", NAME, "-alpn", "http/1.1", "-tls1_3"]);
        let r = run_paced(
            &mut cmd,
            &[
                (b"K\n", Duration::from_millis(300)),
                (STATS_REQUEST, Duration::from_millis(1500)),
            ],
        );
        let ctx = format!("{mode:?}");
        assert!(
            r.text.contains("KEYUPDATE"),
            "{ctx}: no KeyUpdate sent:\n{}",
            r.text
        );
        assert!(
            r.text.contains("HTTP/1.1 200"),
            "{ctx}: /stats not answered after the KeyUpdate:\n{}",
            r.text
        );
        assert!(
            !r.text.contains("SSL alert number") && !r.text.contains(":error:"),
            "{ctx}: TLS error:\n{}",
            r.text
        );
    }
}

/// The terminator serves what the control plane published: here one view naming the node.
fn published_stats() -> Observe {
    let stats = StatsBoard::default();
    let node = BackendView {
        name: "node-a".into(),
        state: "up".into(),
        reason: "healthy".into(),
        available: true,
        head_block: Some(93_000_000),
        head_age_secs: Some(1),
        lag_blocks: Some(0),
        connect_ms: Quantiles::default(),
        health_rtt_ms: Quantiles::default(),
        clients: 0,
        in_state_secs: None,
    };
    stats.publish(Pages::render(&RegionView {
        generated_at_unix: 1_764_000_000,
        clients: 0,
        nodes_up: 1,
        nodes: 1,
        pools: vec![PoolView {
            name: "eu".into(),
            chain_state: "advancing".into(),
            chain_note: "advancing".into(),
            best_head_block: Some(93_000_000),
            best_head_age_secs: Some(1),
            clients: 0,
            nodes_up: 1,
            panic: false,
            backends: vec![node],
        }],
    }));
    Observe {
        pool: "eu".into(),
        stats,
        ..Observe::default()
    }
}

/// `curl -i` over HTTPS to `path`; returns (status line, headers, body).
fn curl(p: &Proxy, path: &str) -> (String, String, String) {
    let url = format!("https://{NAME}:{}{path}", p.port);
    let resolve = format!("{NAME}:{}:127.0.0.1", p.port);
    let r = run(
        Command::new("curl")
            .args(["-sS", "-i", "--max-time", "5", "--resolve", &resolve])
            .arg("--cacert")
            .arg(&p.ca)
            .arg(&url),
        b"",
    );
    assert!(r.success, "curl {url} failed:\n{}", r.text);
    let (head, body) = r
        .text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in:\n{}", r.text));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

#[test]
fn curl_gets_stats_json_and_a_fixed_400_on_a_websocket_path() {
    if !have("curl", &["--version"]) {
        return;
    }
    for mode in modes() {
        let p = Proxy::start(mode, "curl");
        let (status, headers, body) = curl(&p, "/stats");
        assert_eq!(status, "HTTP/1.1 200 OK", "{mode:?}: {headers}\n{body}");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("content-type: text/html"),
            "{mode:?}: {headers}"
        );
        assert!(body.contains("node-a"), "{mode:?}: {body}");
        let (status, headers, body) = curl(&p, "/stats.json");
        assert_eq!(status, "HTTP/1.1 200 OK", "{mode:?}: {headers}\n{body}");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{mode:?}: {headers}"
        );
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{mode:?}: /stats is not JSON ({e}): {body:?}"));
        assert_eq!(
            json["pools"][0]["backends"][0]["name"], "node-a",
            "{mode:?}: {json}"
        );
        assert!(
            !body.contains(&p.node.ip().to_string()),
            "{mode:?}: backend address in /stats.json"
        );

        for path in ["/ws", "/"] {
            let (status, _, body) = curl(&p, path);
            assert_eq!(status, "HTTP/1.1 400 Bad Request", "{mode:?} {path}");
            assert_eq!(body, "websocket upgrade required\n", "{mode:?} {path}");
            assert!(
                !body.contains(&p.node.to_string()),
                "{mode:?}: backend address leaked"
            );
        }
        // A path the listener does not serve: 404, fixed text.
        let (status, _, body) = curl(&p, "/admin");
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{mode:?}");
        assert_eq!(body, "not found\n", "{mode:?}");
    }
}

#[test]
fn plain_http_and_a_stalled_handshake_are_closed() {
    for mode in modes() {
        let p = Proxy::start(mode, "plain");
        // Plain HTTP on the TLS port: not TLS, closed at once (an alert record at most,
        // never an HTTP answer).
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: eu.example.test\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let started = Instant::now();
        let _ = s.read_to_end(&mut got);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode:?}: plain HTTP kept open"
        );
        assert!(
            !got.starts_with(b"HTTP/"),
            "{mode:?}: answered plain HTTP on a TLS port"
        );
        if let Some(&first) = got.first() {
            assert_eq!(
                first, 0x15,
                "{mode:?}: only a TLS alert record may come back"
            );
        }

        // A client that starts a ClientHello and stalls is closed at the handshake deadline
        // (800 ms here).
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let waited = started.elapsed();
        assert_eq!(n, 0, "{mode:?}: bytes sent to a stalled handshake");
        assert!(
            waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
            "{mode:?}: closed after {waited:?}"
        );
    }
}

/// A rustls + tungstenite client through the proxy (verifying the certificate).
fn wss(p: &Proxy) -> WssClient {
    let pem = std::fs::read(&p.ca).unwrap();
    wss_client(SocketAddr::from(([127, 0, 0, 1], p.port)), NAME, &pem).expect("upgrade over TLS")
}

#[test]
fn tls_relay_is_byte_exact_for_large_and_small_messages_after_idle_periods() {
    for mode in modes() {
        let p = Proxy::start(mode, "relay");
        let mut ws = wss(&p);
        // Idle first: the relay waits with its small buffers (which also take ciphertext).
        thread::sleep(Duration::from_millis(300));
        for round in 0..3 {
            // Many full TLS records, read through buffers smaller than a record.
            let big: Vec<u8> = (0..3_000_000u32)
                .map(|i| (i.wrapping_mul(31).wrapping_add(round) % 251) as u8)
                .collect();
            assert_binary_echo(&mut ws, &big, &format!("{mode:?} round {round}"));
            for i in 0..20 {
                let m = format!("{{\"id\":{i},\"method\":\"call\",\"params\":[]}}");
                assert_text_echo(&mut ws, &m);
            }
            // Back to idle between rounds (epoll: stale readiness, buffer released).
            thread::sleep(Duration::from_millis(200));
        }
        ws.close(None).unwrap();
    }
}
