//! `cargo xtask demo` in short: the demo binary for a few seconds, as root. The JSON-RPC
//! checks through XDP, the `wss://` client through the TLS terminator (which node it landed
//! on), `/stats` from this host over the demo's link, the printed hints, and that
//! `--duration` leaves nothing behind (namespaces, the host link, its route).
//!
//! Needs `target/release/proxy` (built by the same `cargo test --release` run, or by
//! `cargo build --release -p proxy`), root, BPF and network namespaces.

use std::process::{Command, Stdio};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demo_runs_the_wss_path_and_cleans_up() {
    let proxy_bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/proxy");
    assert!(
        proxy_bin.exists(),
        "{} is not built: run `cargo build --release -p proxy` (the demo runs that binary)",
        proxy_bin.display()
    );
    let child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--duration", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the demo");
    let demo_ns = format!("pxt{}-demo-", child.id());
    let out = child.wait_with_output().expect("demo output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{stdout}"))
    };
    let wss = line("wss://wss.demo.test/ws");
    assert!(
        ["node-1", "node-2", "node-3"]
            .iter()
            .any(|n| wss.contains(&format!("landed on {n},"))),
        "{wss}"
    );
    assert!(wss.contains("notice at head "), "{wss}");
    assert!(
        line("https://203.0.113.10/stats from this host:").contains("HTTP/1.1 200"),
        "{stdout}"
    );
    assert!(line("open https://203.0.113.10/stats in a browser").contains("chain.pem"));
    assert!(line("curl --cacert").contains("https://203.0.113.10/stats"));
    assert!(stdout.contains("done: namespaces, the host link and its route removed"));

    // Nothing left: the demo's namespaces carry its pid, the link and route are fixed names.
    assert!(
        !ip(&["netns", "list"]).contains(&demo_ns),
        "demo namespaces left behind"
    );
    assert!(
        ip(&["link", "show", "xdpdemo-host"]).is_empty(),
        "host link left behind"
    );
    assert!(
        !ip(&["-4", "route", "show"]).contains("203.0.113.10"),
        "host route to the VIP left behind"
    );
}
