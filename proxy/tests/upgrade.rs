//! `proxy upgrade` on a running `proxy run` serving `wss`: the real binary in a network
//! namespace of its own (XDP on that namespace's loopback), 1,000 live WebSocket clients on
//! the old process, and new `wss` connections in a loop all the while.
//!
//! - An upgrade whose new process rejects its config, or whose binary exits before it is
//!   ready, changes nothing: the command says why and the old process serves on.
//! - Two upgrades at once: one goes ahead, the other is refused.
//! - The new process takes the listening sockets over: the connect loop sees zero refused or
//!   reset connects; the 1,000 live clients keep exchanging messages through the grace, then
//!   each gets a close 1001 and a clean TLS end; the old process then exits by itself.
//!
//! Root only (BPF, network namespaces); CI runs as root.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use proxy::admin::{call, Request};
use proxy_tests::{
    certs::TestCert,
    clients::{wss_client, WssClient},
    config::{Backend, ConfigBuilder},
    echo::echo_node,
    netns::{run_in, NetNs},
    proxy_run::ProxyRun,
    tempdir::TempDir,
};
use tungstenite::{protocol::frame::coding::CloseCode, Message};

const PORT: u16 = 18443;
const NAME: &str = "wss.upgrade.test";
const LIVE: usize = 1000;
const GRACE_SECS: u64 = 8;
const CLOSE_WINDOW_SECS: u64 = 2;

fn config_text(dir: &Path, pin_dir: &str, node: SocketAddr, cert_dir: &Path, io: &str) -> String {
    ConfigBuilder::new(&["lo"])
        .set("terminator", "io", io)
        .set("balancer", "ring_size", 1009)
        .set("balancer", "max_flows", 1024)
        .set("balancer", "pin_dir", pin_dir)
        .terminator(2, 2)
        .set("terminator", "upgrade_grace_secs", GRACE_SECS as i64)
        .set(
            "terminator",
            "upgrade_close_window_secs",
            CLOSE_WINDOW_SECS as i64,
        )
        .set("terminator", "max_connections", 4000)
        .set("terminator", "max_connections_per_client", 4000)
        .set(
            "admin",
            "socket",
            dir.join("admin.sock").display().to_string(),
        )
        .tls_listener(
            "wss",
            format!("127.0.0.1:{PORT}"),
            "eu",
            &[(NAME, cert_dir)],
        )
        .pool("eu", &[Backend::new("node-a", node)])
        .text()
}

/// Removes the test's pins and stops a process the old one started, even on failure.
struct Cleanup {
    pin_dir: String,
    new_pid: Arc<Mutex<Option<u32>>>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = *self.new_pid.lock().unwrap() {
            // SAFETY: kill(2) on a pid this test learnt from the upgrade's answer.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = proxy::ebpf::DataPlane::remove_pins(Path::new(&self.pin_dir));
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is not serving: look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// `proxy upgrade` with `extra` arguments: (success, what it printed).
fn upgrade(socket: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args(["upgrade", "--socket"])
        .arg(socket)
        .args(extra)
        .output()
        .expect("running proxy upgrade");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// New `wss` connections in a loop: connect, one echo, close. Counts both outcomes.
#[derive(Default)]
struct ConnectLoop {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl ConnectLoop {
    fn run(&self, addr: SocketAddr, ca: &[u8]) {
        let started = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let result = wss_client(addr, NAME, ca).and_then(|mut ws| {
                ws.send(Message::text("hello")).map_err(|e| e.to_string())?;
                match ws.read().map_err(|e| e.to_string())? {
                    Message::Text(t) if t.as_str() == "hello" => {}
                    other => return Err(format!("echo: {other:?}")),
                }
                let _ = ws.close(None);
                Ok(())
            });
            match result {
                Ok(()) => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    let mut errs = self.errors.lock().unwrap();
                    if errs.len() < 10 {
                        errs.push(format!("{:.1}s: {e}", started.elapsed().as_secs_f64()));
                    }
                }
            }
        }
    }
}

/// How one live client ended.
#[derive(Debug, Default)]
struct LiveEnd {
    exchanged: u64,
    /// Messages echoed after the upgrade was done.
    after_upgrade: u64,
    close_code: Option<CloseCode>,
    clean: bool,
    error: Option<String>,
}

/// Round-robin over the live clients: one message each per round, until every one of them
/// was closed by the proxy (or failed).
fn talk(mut clients: Vec<WssClient>, upgraded: &AtomicBool, deadline: Instant) -> Vec<LiveEnd> {
    let mut ends: Vec<LiveEnd> = clients.iter().map(|_| LiveEnd::default()).collect();
    let mut open: Vec<bool> = vec![true; clients.len()];
    let mut seq = 0u64;
    while open.iter().any(|o| *o) && Instant::now() < deadline {
        seq += 1;
        for (i, ws) in clients.iter_mut().enumerate() {
            if !open[i] {
                continue;
            }
            let end = &mut ends[i];
            let msg = format!("client {i} message {seq}");
            if let Err(e) = ws.send(Message::text(msg.clone())) {
                // The close may already be on its way: read it below.
                if !matches!(
                    e,
                    tungstenite::Error::Protocol(_) | tungstenite::Error::Io(_)
                ) {
                    end.error = Some(format!("send: {e}"));
                    open[i] = false;
                    continue;
                }
            }
            match ws.read() {
                Ok(Message::Text(t)) if t.as_str() == msg => {
                    end.exchanged += 1;
                    if upgraded.load(Ordering::Relaxed) {
                        end.after_upgrade += 1;
                    }
                }
                Ok(Message::Close(frame)) => {
                    end.close_code = frame.map(|f| f.code);
                    // After the close: the TLS stream must end with close_notify.
                    end.clean = loop {
                        match ws.read() {
                            Ok(_) => continue,
                            Err(tungstenite::Error::ConnectionClosed)
                            | Err(tungstenite::Error::AlreadyClosed) => break true,
                            Err(e) => {
                                end.error = Some(format!("after close: {e}"));
                                break false;
                            }
                        }
                    };
                    open[i] = false;
                }
                Ok(other) => {
                    end.error = Some(format!("unexpected {other:?}"));
                    open[i] = false;
                }
                Err(e) => {
                    end.error = Some(format!("read: {e}"));
                    open[i] = false;
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    ends
}

#[test]
fn an_upgrade_hands_the_sockets_over_and_the_old_process_drains_epoll() {
    upgrade_under_load("epoll");
}

#[test]
fn an_upgrade_hands_the_sockets_over_and_the_old_process_drains_uring() {
    upgrade_under_load("uring");
}

fn upgrade_under_load(io: &str) {
    let ns = NetNs::new(&format!("upg-{io}")).expect("network namespace (needs root)");
    let dir = TempDir::new("upgrade").expect("temp dir");
    let pin_dir = format!("/sys/fs/bpf/{}", ns.name());
    let new_pid = Arc::new(Mutex::new(None));
    let _cleanup = Cleanup {
        pin_dir: pin_dir.clone(),
        new_pid: new_pid.clone(),
    };
    let cert = TestCert::write(&dir.path().join("cert"), NAME).expect("certificate");
    let ca = cert.cert_pem.clone().into_bytes();
    let node = run_in(&ns, echo_node).expect("echo node in the namespace");
    let config_path = dir.path().join("proxy.toml");
    let good = config_text(dir.path(), &pin_dir, node, &cert.dir, io);
    std::fs::write(&config_path, &good).unwrap();
    let socket = dir.path().join("admin.sock");
    let log = dir.path().join("proxy.log");
    let bin = Path::new(env!("CARGO_BIN_EXE_proxy"));
    let mut old = ProxyRun::start(bin, Some(&ns), &config_path, &log).expect("proxy run");
    old.wait_until(Duration::from_secs(60), || {
        call(&socket, &Request::List).is_ok()
    })
    .expect("the proxy is ready");
    let old_pid = old.pid();
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));

    // The live clients, and the connect loop on two threads, all inside the namespace.
    let clients: Vec<WssClient> = run_in(&ns, {
        let ca = ca.clone();
        move || {
            (0..LIVE)
                .map(|i| wss_client(addr, NAME, &ca).map_err(|e| format!("client {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        }
    })
    .expect("enter the namespace")
    .expect("1,000 live clients");
    let upgraded = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(120);
    let talker = thread::spawn({
        let upgraded = upgraded.clone();
        move || talk(clients, &upgraded, deadline)
    });
    let connects = Arc::new(ConnectLoop::default());
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (connects, ca) = (connects.clone(), ca.clone());
            run_in(&ns, move || thread::spawn(move || connects.run(addr, &ca)))
                .expect("enter the namespace")
        })
        .collect();
    thread::sleep(Duration::from_millis(500));

    // 1. A new process that rejects its config: nothing changes.
    std::fs::write(
        &config_path,
        "[balancer]\ninterfaces = [\"lo\"]\nbogus = 1\n",
    )
    .unwrap();
    let (ok, said) = upgrade(&socket, &[]);
    assert!(!ok, "an upgrade to a broken config succeeded: {said}");
    assert!(
        said.contains("bogus") && said.contains("keeps serving"),
        "the failed upgrade does not say why: {said}"
    );
    assert!(
        alive(old_pid),
        "the old process died with the failed upgrade"
    );
    assert!(
        call(&socket, &Request::List).is_ok(),
        "the old process's admin socket is gone after a failed upgrade"
    );
    std::fs::write(&config_path, &good).unwrap();
    // A new binary that exits before it is ready: nothing changes either.
    let (ok, said) = upgrade(&socket, &["--binary", "/bin/false"]);
    assert!(
        !ok && said.contains("exited") && said.contains("keeps serving"),
        "an upgrade to a binary that exits: {said}"
    );
    assert!(alive(old_pid) && call(&socket, &Request::List).is_ok());

    // 2. Two upgrades at once: one goes ahead, the other is refused.
    let racing: Vec<_> = (0..2)
        .map(|_| {
            let socket = socket.clone();
            thread::spawn(move || upgrade(&socket, &[]))
        })
        .collect();
    let answers: Vec<(bool, String)> = racing.into_iter().map(|h| h.join().unwrap()).collect();
    upgraded.store(true, Ordering::Relaxed);
    let upgraded_at = Instant::now();
    let winners: Vec<&String> = answers
        .iter()
        .filter(|(ok, _)| *ok)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(winners.len(), 1, "racing upgrades: {answers:?}");
    let refused = answers.iter().find(|(ok, _)| !*ok).expect("one refused");
    assert!(
        refused.1.contains("already under way"),
        "the second upgrade was not refused as such: {refused:?}"
    );
    let pid: u32 = winners[0]
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {:?}", winners[0]));
    *new_pid.lock().unwrap() = Some(pid);
    assert_ne!(pid, old_pid);
    assert!(alive(pid), "the new process is not running");
    assert!(
        call(&socket, &Request::List).is_ok(),
        "the new process does not answer on the admin socket"
    );

    // 3. The old process drains: alive through the grace, then exits by itself.
    thread::sleep(Duration::from_secs(2));
    assert!(alive(old_pid), "the old process left before the grace");
    let status = old
        .wait_exit(Duration::from_secs(GRACE_SECS + CLOSE_WINDOW_SECS + 30))
        .expect("the old process exits after the grace");
    let drained_after = upgraded_at.elapsed();
    assert!(status.success(), "the old process exited with {status}");
    let ends = talker.join().expect("talker");
    // New connections keep working on the new process alone.
    thread::sleep(Duration::from_secs(1));
    connects.stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }

    let ok = connects.ok.load(Ordering::Relaxed);
    let failed = connects.failed.load(Ordering::Relaxed);
    let errors: Vec<&LiveEnd> = ends.iter().filter(|e| e.error.is_some()).collect();
    let going_away = ends
        .iter()
        .filter(|e| e.close_code == Some(CloseCode::Away))
        .count();
    let clean = ends.iter().filter(|e| e.clean).count();
    let min_after = ends.iter().map(|e| e.after_upgrade).min().unwrap_or(0);
    println!(
        "upgrade ({io}): connect loop {ok} ok, {failed} failed; live clients: {going_away}/{LIVE} got \
         1001, {clean} clean TLS ends, each exchanged >= {min_after} messages after the upgrade; \
         old process exited {drained_after:?} after the upgrade"
    );
    assert_eq!(
        failed,
        0,
        "connects failed across the upgrade: {:?}",
        connects.errors.lock().unwrap()
    );
    assert!(ok > 20, "the connect loop hardly ran: {ok}");
    assert!(
        errors.is_empty(),
        "{} live clients broke, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(going_away, LIVE, "not every live client got a 1001");
    assert_eq!(clean, LIVE, "not every live client saw a clean TLS end");
    assert!(
        min_after >= 3,
        "a live client stopped exchanging during the grace: {min_after} messages"
    );
    assert!(
        drained_after >= Duration::from_secs(GRACE_SECS),
        "the old process closed its clients before the grace: {drained_after:?}"
    );
    let log_text = old.log();
    assert!(
        log_text.contains("handed over") && log_text.contains("started on the sockets handed over"),
        "the log does not tell the hand-over:\n{log_text}"
    );

    // The new process stops as any other.
    // SAFETY: kill(2) on the new process's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(30);
    while alive(pid) && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "the new process does not stop on SIGTERM");
    *new_pid.lock().unwrap() = None;
}
