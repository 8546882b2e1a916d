//! SIGHUP to a running `proxy run`: the built binary serves a `ws` listener in a network
//! namespace of its own (XDP on that namespace's loopback), the file gains a backend and a
//! listener, and after the signal the backend shows up over the admin socket and the new
//! listener accepts. Needs root (BPF, network namespaces).

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use proxy::admin::{call, Request, Response};
use proxy_tests::{
    config::{Backend, ConfigBuilder},
    netns::{run_in, NetNs},
};

const FIRST: u16 = 18080;
const SECOND: u16 = 18081;

fn config_text(dir: &Path, pin_dir: &str, backends: &[&str], listeners: &[(&str, u16)]) -> String {
    let backends: Vec<Backend> = backends
        .iter()
        .zip(9001..)
        .map(|(n, port)| Backend::new(*n, format!("127.0.0.1:{port}")))
        .collect();
    let mut b = ConfigBuilder::new(&["lo"])
        .set("balancer", "ring_size", 1009)
        .set("balancer", "max_flows", 1024)
        .set("balancer", "pin_dir", pin_dir)
        .terminator(1, 1)
        .set(
            "admin",
            "socket",
            dir.join("admin.sock").display().to_string(),
        );
    for (name, port) in listeners {
        b = b.listener(name, format!("127.0.0.1:{port}"), "ws", "eu");
    }
    b.pool("eu", &backends).text()
}

/// Kills the proxy if the test ends before it exits, and removes the test's files.
struct Running {
    child: Child,
    dir: PathBuf,
    pin_dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = proxy::ebpf::DataPlane::remove_pins(&self.pin_dir);
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Backend names in `eu`, once the admin socket answers.
fn backends(socket: &Path) -> Option<Vec<String>> {
    let answer: Response = call(socket, &Request::List).ok()?;
    Some(answer.backends.into_iter().map(|b| b.name).collect())
}

/// `proxy check` (the nagios plugin) against `socket`: exit code and its line.
fn nagios(socket: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
        .arg("check")
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("running proxy check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn accepts(ns: &NetNs, port: u16) -> bool {
    run_in(ns, move || {
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_ok()
    })
    .expect("running in the namespace")
}

/// Polls `f` until it is true or `limit` passes (the process runs in real time).
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn sighup_reloads_the_running_proxy() {
    let ns = NetNs::new("hup").expect("network namespace (needs root)");
    let dir = std::env::temp_dir().join(format!("{}-hup", ns.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let pin_dir = format!("/sys/fs/bpf/{}", ns.name());
    let path = dir.join("proxy.toml");
    let socket = dir.join("admin.sock");
    std::fs::write(
        &path,
        config_text(&dir, &pin_dir, &["node-a"], &[("first", FIRST)]),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            env!("CARGO_BIN_EXE_proxy"),
            "run",
        ])
        .arg("--config")
        .arg(&path)
        .args(["--stats-interval", "0"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting proxy run");
    let mut proxy = Running {
        child,
        dir: dir.clone(),
        pin_dir: pin_dir.clone().into(),
    };
    let log_text = || std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();

    assert!(
        wait_for(Duration::from_secs(60), || backends(&socket).is_some()),
        "the admin socket never answered; log:\n{}",
        log_text()
    );
    assert_eq!(backends(&socket).unwrap(), ["node-a"]);
    assert!(accepts(&ns, FIRST), "log:\n{}", log_text());
    assert!(!accepts(&ns, SECOND));

    std::fs::write(
        &path,
        config_text(
            &dir,
            &pin_dir,
            &["node-a", "node-b"],
            &[("first", FIRST), ("second", SECOND)],
        ),
    )
    .unwrap();
    signal(&proxy.child, libc::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || backends(&socket)
            .is_some_and(|b| b == ["node-a", "node-b"])),
        "the added backend never showed up: {:?}; log:\n{}",
        backends(&socket),
        log_text()
    );
    assert!(
        wait_for(Duration::from_secs(5), || accepts(&ns, SECOND)),
        "the added listener does not accept; log:\n{}",
        log_text()
    );
    assert!(accepts(&ns, FIRST), "the unchanged listener stopped");

    // The nagios plugin reads the same proxy: OK with both nodes, WARNING with one drained.
    let (code, line) = nagios(&socket);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("XDP-PROXY OK - 2/2 nodes up"), "{line}");
    assert!(line.contains("| nodes_up=2;;;0;2 "), "{line}");
    let drained = call(
        &socket,
        &Request::Drain {
            pool: "eu".into(),
            name: "node-b".into(),
        },
    )
    .unwrap();
    assert!(drained.ok, "{drained:?}");
    let (code, line) = nagios(&socket);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("XDP-PROXY WARNING - eu: 1/2 nodes up"),
        "{line}"
    );

    signal(&proxy.child, libc::SIGTERM);
    assert!(
        wait_for(Duration::from_secs(10), || proxy
            .child
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "proxy did not exit after SIGTERM"
    );
    let status = proxy.child.wait().unwrap();
    assert!(status.success(), "{status}; log:\n{}", log_text());
    assert!(!socket.exists(), "the admin socket was left behind");
    let (code, line) = nagios(&socket);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("XDP-PROXY UNKNOWN - "), "{line}");
}
