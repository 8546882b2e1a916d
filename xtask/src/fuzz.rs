//! `cargo xtask fuzz [TARGET] [--seconds N] [--runs N]`: the libFuzzer targets in tests/fuzz,
//! built with cargo-fuzz and run one after the other. Seeds come from
//! tests/fuzz/corpus/<target>/ (committed); what the fuzzer adds goes to
//! target/fuzz/corpus/<target>/, crashing inputs to target/fuzz/artifacts/<target>/, each
//! run's output to target/fuzz/logs/<target>.log.
//!
//! Toolchain: the one `cargo xtask` runs on (stable), with `RUSTC_BOOTSTRAP=1` so that any
//! nightly-only flag cargo-fuzz passes is accepted (with `--sanitizer none` it passes none
//! today; ASan's `-Zsanitizer` works this way too), so a machine with only stable can fuzz.
//! `PROXY_FUZZ_TOOLCHAIN=nightly` uses the rustup nightly instead, and a failed stable build
//! is retried on the nightly when one is installed. No sanitizer: the parsers are safe Rust,
//! where what a fuzzer finds is a panic (overflow checks and debug assertions are on), and
//! ASan would slow every execution.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

/// The targets: name, what it feeds, libFuzzer's `-max_len` (longer than the parser's own
/// limit where it has one, so the limit itself is exercised).
pub const TARGETS: &[(&str, &str, usize)] = &[
    (
        "handshake",
        "first-request validator (handshake::inspect)",
        10_000,
    ),
    (
        "upgrade_response",
        "the node's 101 check (handshake::check_upgrade_response)",
        10_000,
    ),
    (
        "health_answer",
        "JSON-RPC health answers (result_of, parse_dgp, parse_params, judge)",
        4_096,
    ),
    ("agent_feed", "agent feed (parse_agent)", 256),
    ("config", "config loader (Config::parse)", 8_192),
    (
        "tls13_records",
        "TLS 1.3 records after the handshake (terminator::record)",
        20_000,
    ),
    (
        "xdp",
        "XDP packet path through BPF_PROG_TEST_RUN (root)",
        1_600,
    ),
];

/// Seconds per target when neither `--seconds` nor `--runs` is given.
pub const DEFAULT_SECONDS: u64 = 60;
/// Seconds per target in `cargo xtask test`.
pub const CI_SECONDS: u64 = 15;

const FUZZ_DIR: &str = "tests/fuzz";
const TARGET_DIR: &str = "target/fuzz";
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// How long a target ran and how it ended.
struct Outcome {
    executions: Option<u64>,
    seconds: f64,
    crash: Option<String>,
}

/// Installs cargo-fuzz when `cargo fuzz` is missing (idempotent, for `setup`).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new(cargo_bin())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz (a few minutes)");
    crate::run(Command::new(cargo_bin()).args(["install", "--locked", "cargo-fuzz"]))
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn nightly_installed() -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("nightly"))
        .unwrap_or(false)
}

/// `cargo fuzz build` on one route.
fn build_with(root: &Path, nightly: bool, target: Option<&str>) -> Result<()> {
    let mut cmd = if nightly {
        let mut c = Command::new("rustup");
        c.args(["run", "nightly", "cargo"]);
        // The outer cargo's toolchain must not leak into the nightly one.
        c.env_remove("RUSTUP_TOOLCHAIN").env_remove("RUSTC");
        c
    } else {
        let mut c = Command::new(cargo_bin());
        c.env("RUSTC_BOOTSTRAP", "1");
        c
    };
    cmd.current_dir(root)
        .args([
            "fuzz",
            "build",
            "--fuzz-dir",
            FUZZ_DIR,
            "--target-dir",
            TARGET_DIR,
        ])
        .args(["--sanitizer", "none"])
        .args(target);
    crate::run(&mut cmd)
}

fn build(root: &Path, target: Option<&str>) -> Result<()> {
    let forced = std::env::var("PROXY_FUZZ_TOOLCHAIN").ok();
    match forced.as_deref() {
        Some("nightly") => build_with(root, true, target),
        Some("stable") => build_with(root, false, target),
        Some(other) => bail!("PROXY_FUZZ_TOOLCHAIN={other}: use `stable` or `nightly`"),
        None => match build_with(root, false, target) {
            Ok(()) => Ok(()),
            Err(e) if nightly_installed() => {
                eprintln!("fuzz: the stable build failed ({e:#}); trying the rustup nightly");
                build_with(root, true, target)
            }
            Err(e) => Err(e).context(
                "building the fuzz targets on stable (RUSTC_BOOTSTRAP=1) failed, and no \
                 rustup nightly is installed to try instead",
            ),
        },
    }
}

/// Runs `target`, or every target in turn; fails if any crashed.
pub fn fuzz(
    root: &Path,
    target: Option<&str>,
    seconds: Option<u64>,
    runs: Option<u64>,
) -> Result<()> {
    let chosen: Vec<&(&str, &str, usize)> = match target {
        Some(t) => match TARGETS.iter().find(|(name, _, _)| *name == t) {
            Some(found) => vec![found],
            None => {
                let known: Vec<String> = TARGETS
                    .iter()
                    .map(|(name, what, _)| format!("{name}: {what}"))
                    .collect();
                bail!(
                    "unknown fuzz target `{t}`; known:\n  {}",
                    known.join("\n  ")
                );
            }
        },
        None => TARGETS.iter().collect(),
    };
    let seconds = match (seconds, runs) {
        (None, None) => Some(DEFAULT_SECONDS),
        (s, _) => s,
    };
    build(root, target)?;
    let mut crashed = Vec::new();
    for (name, what, max_len) in chosen {
        eprintln!(
            "fuzz {name} ({what}): {}",
            match (seconds, runs) {
                (Some(s), Some(r)) => format!("up to {s} s or {r} executions"),
                (Some(s), None) => format!("{s} s"),
                (None, Some(r)) => format!("{r} executions"),
                (None, None) => unreachable!("a default was set"),
            }
        );
        let o = run_target(root, name, *max_len, seconds, runs)?;
        let execs = o
            .executions
            .map_or("an unknown number of".to_string(), group_thousands);
        match &o.crash {
            None => eprintln!(
                "fuzz {name}: {execs} executions in {:.0} s, no crash",
                o.seconds
            ),
            Some(why) => {
                eprintln!(
                    "fuzz {name}: CRASH after {execs} executions in {:.0} s: {why}",
                    o.seconds
                );
                crashed.push(format!("{name}: {why}"));
            }
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzzing found {} crash(es):\n  {}\nReplay one with the target's binary in \
             {TARGET_DIR}/{TRIPLE}/release/ and the saved input; fix it and add the input as \
             a unit test next to the parser (README, \"Fuzzing\")",
            crashed.len(),
            crashed.join("\n  ")
        );
    }
    Ok(())
}

fn run_target(
    root: &Path,
    name: &str,
    max_len: usize,
    seconds: Option<u64>,
    runs: Option<u64>,
) -> Result<Outcome> {
    let bin = root
        .join(TARGET_DIR)
        .join(TRIPLE)
        .join("release")
        .join(name);
    let corpus = root.join(TARGET_DIR).join("corpus").join(name);
    let seeds = root.join(FUZZ_DIR).join("corpus").join(name);
    let artifacts = root.join(TARGET_DIR).join("artifacts").join(name);
    let logs = root.join(TARGET_DIR).join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{name}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new(&bin);
    // New inputs go to the first corpus directory; the committed seeds are only read.
    cmd.arg(&corpus)
        .arg(&seeds)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_len={max_len}"))
        .arg("-timeout=20")
        .arg("-print_final_stats=1");
    if let Some(s) = seconds {
        cmd.arg(format!("-max_total_time={s}"));
    }
    if let Some(r) = runs {
        cmd.arg(format!("-runs={r}"));
    }
    let started = Instant::now();
    let status = cmd
        .current_dir(root)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("failed to start {}", bin.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let executions = final_executions(&text);
    let crash = if status.success() {
        None
    } else {
        eprintln!(
            "--- from {} ---\n{}\n---",
            log_path.display(),
            crash_excerpt(&text)
        );
        Some(match saved_input(&text) {
            Some(path) => format!("input saved to {path} (log: {})", log_path.display()),
            None => format!(
                "{status} without a saved input (log: {})",
                log_path.display()
            ),
        })
    };
    Ok(Outcome {
        executions,
        seconds: elapsed,
        crash,
    })
}

/// Executions from libFuzzer's final statistics (`-print_final_stats=1`), or its `Done N runs`.
fn final_executions(log: &str) -> Option<u64> {
    let stat = log.lines().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|n| n.trim().parse().ok())
    });
    stat.or_else(|| {
        log.lines().find_map(|l| {
            l.strip_prefix("Done ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
    })
}

/// The panic message and libFuzzer's report (without a backtrace in between), or the last
/// lines when there is no panic (a target that could not start says why there).
fn crash_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out: Vec<&str> = Vec::new();
    if let Some(at) = lines.iter().rposition(|l| l.contains("panicked at")) {
        out.extend(lines[at..].iter().take(2));
    }
    match lines.iter().rposition(|l| l.contains("ERROR: libFuzzer")) {
        Some(at) => out.extend(lines[at..].iter().filter(|l| !l.starts_with("stat::"))),
        None => out.extend(&lines[lines.len().saturating_sub(15)..]),
    }
    out.join("\n")
}

/// Where libFuzzer wrote the crashing input (`Test unit written to PATH`).
fn saved_input(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, path)| path.trim().to_string())
    })
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let done = "#1048576\tpulse  cov: 5\nDone 1993718 runs in 11 second(s)\n";
        assert_eq!(final_executions(done), Some(1_993_718));
        let stats = "stat::number_of_executed_units: 42\nstat::average_exec_per_sec:     7\n";
        assert_eq!(final_executions(stats), Some(42));
        let crash = "==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/r/target/fuzz/artifacts/xdp/'; Test unit written to \
                     /r/target/fuzz/artifacts/xdp/crash-0a1b\nBase64: AAAA\n";
        assert_eq!(
            saved_input(crash).as_deref(),
            Some("/r/target/fuzz/artifacts/xdp/crash-0a1b")
        );
        assert_eq!(saved_input(done), None);
        let panic = "thread '<unnamed>' panicked at fuzz_targets/x.rs:9:5:\nweight 101% accepted\n\
                     stack backtrace:\n   0: std::panicking::begin_panic\n"
            .to_string()
            + crash;
        let excerpt = crash_excerpt(&panic);
        assert!(excerpt.contains("weight 101% accepted"), "{excerpt}");
        assert!(excerpt.contains("Test unit written to"), "{excerpt}");
        assert!(!excerpt.contains("begin_panic"), "{excerpt}");
        assert_eq!(group_thousands(10_000_000), "10,000,000");
        assert_eq!(group_thousands(999), "999");
    }
}
