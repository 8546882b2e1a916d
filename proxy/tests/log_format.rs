//! The real `proxy` binary's log lines with stderr piped (as under systemd, or `2> file`):
//! no ANSI colour escapes in text mode, and one JSON object per line, each with `level` and
//! `message`, in `--log-format json` mode.
//!
//! Two ways to get log lines: `check-config` on a broken file (only the final error; no
//! root needed), and `proxy run` on a config whose XDP interface does not exist in a
//! namespace of its own (it loads the data plane, starts a listener, logs, then fails
//! fast; needs root, like the other `proxy run` tests).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use proxy_tests::netns::NetNs;

fn proxy(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_proxy"));
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pxt{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn assert_no_escapes(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("\x1b["),
        "colour escapes on a piped stderr:\n{stderr}"
    );
}

/// Every stderr line is a JSON object with string `level` and `message`; returns them.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nwhole stderr:\n{stderr}"));
            assert!(v["level"].is_string(), "no level: {line}");
            assert!(v["message"].is_string(), "no message: {line}");
            v
        })
        .collect();
    assert!(!lines.is_empty(), "no log lines at all");
    lines
}

fn has(lines: &[serde_json::Value], level: &str, message_part: &str) -> bool {
    lines.iter().any(|v| {
        v["level"] == level
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains(message_part))
    })
}

#[test]
fn check_config_errors_fit_files_and_shippers() {
    let scratch = Scratch::new("logfmt-check");
    let bad = scratch.0.join("bad.toml");
    std::fs::write(&bad, "[balancer]\ninterfaces = []\n").unwrap();
    let bad = bad.to_str().unwrap();

    let text = proxy(&["check-config", bad]).output().unwrap();
    assert!(!text.status.success());
    assert_no_escapes(&text);
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("balancer.interfaces"),
        "{stderr}"
    );

    // The flag is global: before or after the subcommand.
    for args in [
        ["--log-format", "json", "check-config", bad],
        ["check-config", "--log-format", "json", bad],
    ] {
        let json = proxy(&args).output().unwrap();
        assert!(!json.status.success());
        assert_no_escapes(&json);
        let lines = json_lines(&json);
        assert!(has(&lines, "ERROR", "balancer.interfaces"), "{lines:?}");
    }

    // Filtering every event away does not swallow the error that ends the process.
    let quiet = proxy(&["--log-format", "json", "check-config", bad])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(has(&json_lines(&quiet), "ERROR", "balancer.interfaces"));

    let wrong = proxy(&["--log-format", "xml", "check-config", bad])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("text, json"));
}

fn failing_run_config(dir: &Path, pin_dir: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[balancer]
interfaces = ["pxt-missing0"]
ring_size = 1009
max_flows = 1024
pin_dir = "{pin_dir}"

[terminator]
workers = 1
shutdown_grace_secs = 1

[admin]
socket = "{}"

[[listener]]
name = "logs"
address = "127.0.0.1:18090"
mode = "ws"
pool = "eu"

[pools.eu]
backends = [{{ name = "node-a", address = "127.0.0.1:9001" }}]
"#,
            dir.join("admin.sock").display()
        ),
    )
    .unwrap();
    path
}

/// `proxy run` in a namespace of its own, failing at the XDP attach.
fn failing_run(ns: &NetNs, dir: &Path, format: &str) -> Output {
    let pin_dir = format!("/sys/fs/bpf/{}-{format}", ns.name());
    let config = failing_run_config(dir, &pin_dir);
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_proxy")])
        .args(["--log-format", format, "run", "--stats-interval", "0"])
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("running proxy run");
    let _ = proxy::ebpf::DataPlane::remove_pins(Path::new(&pin_dir));
    assert!(
        !out.status.success(),
        "proxy run should fail on a missing interface:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn run_logs_fit_files_and_shippers() {
    let ns = match NetNs::new("logfmt") {
        Ok(ns) => ns,
        Err(e) => panic!("this test needs root for a network namespace and BPF: {e:#}"),
    };
    let scratch = Scratch::new("logfmt-run");

    let text = failing_run(&ns, &scratch.0, "text");
    assert_no_escapes(&text);
    let stderr = String::from_utf8_lossy(&text.stderr);
    // Real events went through the subscriber (so escapes had a chance to appear).
    assert!(
        stderr.contains("INFO") && stderr.contains("terminator listener started"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: attaching XDP to pxt-missing0"),
        "{stderr}"
    );

    let json = failing_run(&ns, &scratch.0, "json");
    assert_no_escapes(&json);
    let lines = json_lines(&json);
    assert!(
        has(&lines, "INFO", "terminator listener started"),
        "{lines:?}"
    );
    assert!(
        has(&lines, "ERROR", "attaching XDP to pxt-missing0"),
        "{lines:?}"
    );
    // Event fields sit at the top level, next to the message.
    assert!(
        lines
            .iter()
            .any(|v| v["listener"] == "logs" && v["timestamp"].is_string()),
        "{lines:?}"
    );
}
