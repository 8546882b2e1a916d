//! The kernel side survives the process: long-lived TCP connections through an `l4` VIP keep
//! exchanging data while `proxy run` is stopped, stays down for seconds and starts again, and
//! new connections during the gap are forwarded by the kernel on the unchanged ring. The
//! second process adopts the pinned link: same link, its own program (atomic replacement).
//! `proxy detach --forget-flows` then takes the program off and removes the pins.
//!
//! Real binary, real kernels: client namespace → balancer namespace (XDP attached natively,
//! the proxy started there with nsenter) → one node namespace. Root only; CI runs as root.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use proxy::{
    admin::{call, Request},
    ebpf::{links::link_pin_path, DataPlane},
};
use proxy_tests::{
    config::{Backend, ConfigBuilder},
    line_echo::LineEcho,
    netns,
    proxy_run::ProxyRun,
    storm::{storm, StormServer},
    tempdir::TempDir,
    topology::{self, Lab, LB_CLIENT_DEV},
};

const ECHO_PORT: u16 = 81;
const NODE_ECHO_PORT: u16 = 8081;
const STORM_PORT: u16 = 80;
const NODE_STORM_PORT: u16 = 8080;
const LONG_LIVED: usize = 20;
/// How long no `proxy run` exists.
const GAP: Duration = Duration::from_secs(4);

/// Removes the test's pins (and so any link left attached) even when the test fails.
struct PinGuard(String);
impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = DataPlane::remove_pins(Path::new(&self.0));
    }
}

/// Long-lived connections, each sending a numbered line every 20 ms and checking its echo.
struct Talkers {
    stop: Arc<AtomicBool>,
    exchanged: Arc<AtomicU64>,
    handles: Vec<thread::JoinHandle<Result<(), String>>>,
}

impl Talkers {
    fn start(lab: &Lab, n: usize) -> Talkers {
        let target = SocketAddr::from((topology::VIP, ECHO_PORT));
        let streams: Vec<TcpStream> = netns::run_in(&lab.client, move || {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .expect("enter client namespace")
        .expect("long-lived connections");
        let stop = Arc::new(AtomicBool::new(false));
        let exchanged = Arc::new(AtomicU64::new(0));
        let handles = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                let (stop, exchanged) = (stop.clone(), exchanged.clone());
                thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(3)))
                        .map_err(|e| e.to_string())?;
                    let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
                    let mut line = String::new();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let msg = format!("conn {i} message {seq}\n");
                        s.write_all(msg.as_bytes())
                            .map_err(|e| format!("conn {i} write {seq}: {e}"))?;
                        line.clear();
                        reader
                            .read_line(&mut line)
                            .map_err(|e| format!("conn {i} read {seq}: {e}"))?;
                        if line != msg {
                            return Err(format!("conn {i}: sent {msg:?}, got {line:?}"));
                        }
                        exchanged.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                        thread::sleep(Duration::from_millis(20));
                    }
                    Ok(())
                })
            })
            .collect();
        Talkers {
            stop,
            exchanged,
            handles,
        }
    }

    fn exchanged(&self) -> u64 {
        self.exchanged.load(Ordering::Relaxed)
    }

    /// Stops them; every connection's error, if any.
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .filter_map(|h| h.join().expect("talker panicked").err())
            .collect()
    }
}

/// `bpftool link show pinned PIN`: (link id, program id).
fn link_ids(pin: &Path) -> (u64, u64) {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    (v["id"].as_u64().unwrap(), v["prog_id"].as_u64().unwrap())
}

fn answers(socket: &Path) -> bool {
    call(socket, &Request::List).is_ok()
}

#[test]
fn l4_flows_survive_a_stopped_proxy_and_the_next_start_adopts_the_link() {
    let tag = format!("{}r", netns::unique_prefix());
    let lab = Lab::new(&tag, 1).expect("lab (needs root)");
    let pin_dir = format!("/sys/fs/bpf/{tag}");
    let _pins = PinGuard(pin_dir.clone());
    let dir = TempDir::new("restart").expect("temp dir");
    let node = &lab.nodes[0];
    let echo = LineEcho::start(&node.ns, node.addr, NODE_ECHO_PORT).expect("echo node");
    let storm_node =
        StormServer::start(&node.ns, node.addr, NODE_STORM_PORT, 2).expect("storm node");
    let socket = dir.path().join("admin.sock");
    let config = ConfigBuilder::new(&lab.lb_interfaces())
        .set("balancer", "snat_v4", topology::SNAT_ADDR.to_string())
        .set("balancer", "pin_dir", pin_dir.as_str())
        .set("balancer", "max_flows", 65_536)
        .set("admin", "socket", socket.display().to_string())
        .listener(
            "echo",
            format!("{}:{ECHO_PORT}", topology::VIP),
            "l4",
            "echo",
        )
        .listener(
            "storm",
            format!("{}:{STORM_PORT}", topology::VIP),
            "l4",
            "storm",
        )
        .pool(
            "echo",
            &[Backend::new(
                "node-1",
                format!("{}:{NODE_ECHO_PORT}", node.addr),
            )],
        )
        .pool(
            "storm",
            &[Backend::new(
                "node-1s",
                format!("{}:{NODE_STORM_PORT}", node.addr),
            )],
        )
        .text();
    let config_path = dir.path().join("proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_proxy"));
    let log = dir.path().join("proxy.log");
    let pin = link_pin_path(Path::new(&pin_dir), LB_CLIENT_DEV);

    let mut first = ProxyRun::start(bin, Some(&lab.lb), &config_path, &log).expect("first run");
    first
        .wait_until(Duration::from_secs(60), || answers(&socket))
        .expect("first proxy ready");
    let (link_before, prog_before) = link_ids(&pin);

    let talkers = Talkers::start(&lab, LONG_LIVED);
    // New connections all the way through: before the stop, the gap and the next start.
    let storm_ns = &lab.client;
    let stormer = thread::scope(|scope| {
        let storm_run = scope.spawn(|| {
            storm(
                storm_ns,
                SocketAddr::from((topology::VIP, STORM_PORT)),
                4,
                Duration::from_secs(1) + GAP + Duration::from_secs(4),
            )
            .expect("storm")
        });
        thread::sleep(Duration::from_secs(1));
        let before_stop = talkers.exchanged();
        assert!(
            before_stop > 0,
            "the long-lived connections exchange nothing"
        );
        first.stop().expect("first proxy stops cleanly");
        assert!(pin.exists(), "the link is not pinned at {}", pin.display());
        let stopped = Instant::now();
        let at_stop = talkers.exchanged();
        thread::sleep(GAP);
        let during_gap = talkers.exchanged() - at_stop;

        let mut second =
            ProxyRun::start(bin, Some(&lab.lb), &config_path, &log).expect("second run");
        second
            .wait_until(Duration::from_secs(60), || answers(&socket))
            .expect("second proxy ready");
        let down_for = stopped.elapsed();
        let (link_after, prog_after) = link_ids(&pin);
        thread::sleep(Duration::from_secs(1));
        (
            storm_run.join().expect("storm thread"),
            second,
            during_gap,
            down_for,
            (link_after, prog_after),
        )
    });
    let (report, second, during_gap, down_for, (link_after, prog_after)) = stormer;
    let exchanged = talkers.exchanged();
    let errors = talkers.finish();
    println!(
        "restart: proxy down {down_for:?}; {LONG_LIVED} long-lived connections exchanged \
         {exchanged} messages ({during_gap} while no proxy ran); new connections: {} completed, \
         {} failed, per second {:?}, slowest {:?}; link {link_before}→{link_after}, program \
         {prog_before}→{prog_after}",
        report.completed, report.failed, report.per_second, report.slowest
    );
    assert!(
        errors.is_empty(),
        "long-lived connections broke: {errors:?}"
    );
    assert!(
        during_gap > (LONG_LIVED as u64) * 10,
        "the long-lived connections stalled while no proxy ran: {during_gap} messages"
    );
    assert_eq!(
        report.failed, 0,
        "new connections failed: {:?}",
        report.errors
    );
    assert!(
        report.stalled_seconds().is_empty(),
        "seconds without a new connection: {:?} (per second {:?})",
        report.stalled_seconds(),
        report.per_second
    );
    assert!(
        report.slowest < Duration::from_millis(900),
        "a new connection waited {:?}: a SYN was lost around the restart",
        report.slowest
    );
    assert!(storm_node.accepted() >= report.completed);
    assert_eq!(echo.accepted(), LONG_LIVED as u64);
    assert_eq!(
        link_after, link_before,
        "the second process made a new link"
    );
    assert_ne!(
        prog_after, prog_before,
        "the second process did not put its own program on the link"
    );
    assert!(
        second.log().contains("XDP adopted"),
        "the second process did not say it adopted the link:\n{}",
        second.log()
    );

    // Stopping again leaves it attached; `proxy detach` takes it off and forgets the flows.
    second.stop().expect("second proxy stops cleanly");
    let attached = |what: &str| {
        let out = lab.lb.ip(&["link", "show", "dev", LB_CLIENT_DEV]).unwrap();
        assert!(out.contains("xdp"), "{what}: {out}");
    };
    attached("still attached after the second stop");
    let out = Command::new(bin)
        .args(["detach", "--forget-flows", "--config"])
        .arg(&config_path)
        .output()
        .expect("proxy detach");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "proxy detach: {out:?}");
    assert!(said.contains(LB_CLIENT_DEV), "proxy detach said: {said}");
    let out = lab.lb.ip(&["link", "show", "dev", LB_CLIENT_DEV]).unwrap();
    assert!(!out.contains("xdp"), "still attached after detach: {out}");
    assert!(!Path::new(&pin_dir).exists(), "pins left in {pin_dir}");
}
