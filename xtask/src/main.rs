//! `cargo xtask <task>`: everything a developer or CI runs, in one place.
//!
//! xtask itself depends on nothing that needs the eBPF toolchain, so `setup` works on a
//! fresh machine before anything else can build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod fuzz;
mod package;

/// Debian packages the project needs (eBPF toolchain, network tools for tests and demo,
/// peers for benchmarks).
const APT_PACKAGES: &[&str] = &[
    "rustc-web",               // rustc for bpfel-unknown-none (TOOLCHAIN.md)
    "libstd-rust-web-dev-bpf", // prebuilt core for BPF targets
    "rust-web-clippy",         // clippy matching rustc-web: lints the eBPF crate (`test`)
    "llvm-22-dev",             // bpf-linker links against it
    "iproute2",                // ip netns / ip link for tests and demo
    "ethtool",                 // GRO on veth peers (XDP_REDIRECT delivery)
    "iputils-ping",
    "curl",
    "openssl", // `openssl s_client` in the TLS edge-case tests (proxy/tests/tls_edges.rs)
    "bpftool",
    "procps",     // sysctl in the test namespaces (forwarding, accept_local)
    "util-linux", // nsenter: the demo runs the proxy in the balancer namespace
    "nftables",   // the DNAT peer of `cargo xtask bench storm`
    "haproxy",    // the `mode tcp` peer of `cargo xtask bench l4` (HAProxy 2.6)
    "prometheus", // promtool and a real Prometheus server for the metrics tests
    "chromium",   // renders /stats headless in the operator-view test
    "dpkg-dev",   // dpkg-shlibdeps: the Depends of `cargo xtask package`
    "binutils",   // strip: the packaged binary
    "systemd",    // systemd-analyze verify of the packaged unit (proxy/tests/package.rs)
    "adduser",    // the package's postinst creates the xdp-proxy user with it
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian's compiler and its prebuilt `core` for BPF (as in proxy/build.rs), and the clippy
/// built with that compiler.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the project needs (idempotent; fast when already done). Root.
    Setup,
    /// Setup, then formatting, lints and the whole test suite (root-only tests included).
    Test,
    /// Setup, then the demo: namespaces, three backend nodes, the proxy with XDP attached.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Setup, then the fuzz targets in tests/fuzz (all in turn, or one), 60 s each by default.
    Fuzz {
        /// One target (`handshake`, `upgrade_response`, `health_answer`, `agent_feed`,
        /// `config`, `xdp`); default: every target in turn.
        target: Option<String>,
        /// Stop each target after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Stop each target after this many executions.
        #[arg(long)]
        runs: Option<u64>,
    },
    /// Setup, then the Debian package target/debian/xdp-proxy_<version>_<arch>.deb (release
    /// binary, systemd unit, example config, man pages, completions).
    Package {
        /// Package this `proxy` binary (a release build of this tree) instead of building
        /// one; setup is then skipped too (the package test passes cargo's own build).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Setup, then a benchmark scenario: `xdp`, `proxy` or `storm`.
    Bench {
        scenario: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup(),
        Task::Test => {
            setup()?;
            test(&root)
        }
        Task::Demo { duration } => {
            setup()?;
            let args: Vec<String> = duration
                .map(|secs| vec!["--duration".into(), secs.to_string()])
                .unwrap_or_default();
            build_proxy_release(&root)?;
            run_perf_bin(&root, "demo", &args)
        }
        Task::Fuzz {
            target,
            seconds,
            runs,
        } => {
            setup()?;
            fuzz::fuzz(&root, target.as_deref(), seconds, runs)
        }
        Task::Package { binary } => {
            if binary.is_none() {
                setup()?;
            }
            let deb = package::package(&root, binary.as_deref())?;
            // The last line of stdout: where the package is (the package test reads it).
            println!("{}", deb.display());
            Ok(())
        }
        Task::Bench { scenario, args } => {
            setup()?;
            let Some((_, bin, _)) = BENCHES.iter().find(|(name, _, _)| *name == scenario) else {
                let known: Vec<String> = BENCHES
                    .iter()
                    .map(|(name, _, what)| format!("{name}: {what}"))
                    .collect();
                bail!(
                    "unknown bench scenario `{scenario}`; known:\n  {}",
                    known.join("\n  ")
                );
            };
            run_perf_bin(&root, bin, &args)
        }
    }
}

/// `cargo build --release` of the `proxy` binary (the demo and the package ship it).
fn build_proxy_release(root: &Path) -> Result<()> {
    cargo(
        root,
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "proxy",
            "--bin",
            "proxy",
        ],
    )
}

/// `cargo run` of one of `perf/`'s binaries (release, locked) with `args`.
fn run_perf_bin(root: &Path, bin: &str, args: &[String]) -> Result<()> {
    let mut a = vec![
        "run",
        "--release",
        "--locked",
        "-p",
        "proxy-perf",
        "--bin",
        bin,
        "--",
    ];
    a.extend(args.iter().map(String::as_str));
    cargo(root, &a)
}

/// Bench scenarios: name, binary in `perf/`, what it measures.
const BENCHES: &[(&str, &str, &str)] = &[
    (
        "xdp",
        "xdp-bench",
        "ns/packet of the XDP paths against XDP_PASS (BPF_PROG_TEST_RUN)",
    ),
    (
        "proxy",
        "proxy-bench",
        "terminator, io_uring vs epoll: TLS handshakes, messages, idle memory",
    ),
    (
        "storm",
        "storm-bench",
        "new connections/s: XDP full NAT vs nftables DNAT on the same lab",
    ),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(root).args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        if Path::new("/usr/bin/apt-get").exists() {
            if !is_root() {
                bail!("missing packages {missing:?}: run `cargo xtask setup` as root");
            }
            eprintln!("setup: installing {}", missing.join(" "));
            run(Command::new("apt-get").args(["update", "-q"]))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        } else {
            eprintln!(
                "setup: not a Debian system; install a rustup nightly with rust-src and clippy, \
                 bpf-linker, iproute2 and ethtool yourself (the build then uses -Z build-std=core)"
            );
        }
    }
    if !bpf_linker_ok() {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "install",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        ]);
        if Path::new("/usr/lib/llvm-22").is_dir() {
            // /usr/bin/llvm-config is an older LLVM; point the build at LLVM 22.
            cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22").args([
                "--no-default-features",
                "--features",
                "llvm-22",
            ]);
        }
        run(&mut cmd)?;
    }
    fuzz::ensure_cargo_fuzz()?;
    eprintln!("setup: ok");
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    // cargo install puts it in ~/.cargo/bin, which may not be on a CI shell's PATH.
    let home_bin = std::env::var("HOME")
        .map(|h| format!("{h}/.cargo/bin/bpf-linker"))
        .unwrap_or_default();
    ["bpf-linker", home_bin.as_str()].iter().any(|bin| {
        Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
            .unwrap_or(false)
    })
}

fn test(root: &Path) -> Result<()> {
    cargo(root, &["fmt", "--all", "--check"]).context("run `cargo fmt --all` to fix formatting")?;
    cargo(
        root,
        &[
            "clippy",
            "--locked",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    clippy_bpf(root)?;
    // Tests that cannot run here record why (tests/src/skip.rs); they are reported as
    // skipped, never counted among the passed.
    let skip_log = root.join("target/skipped-tests.txt");
    let _ = std::fs::remove_file(&skip_log);
    let cargo_path = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tested = run(Command::new(cargo_path)
        .current_dir(root)
        .env("PROXY_SKIP_LOG", &skip_log)
        .args(["test", "--locked", "--release"]));
    report_skips(&skip_log);
    tested?;
    // Every fuzz target briefly (seeds plus what the fuzzer finds in that time).
    fuzz::fuzz(root, None, Some(fuzz::CI_SECONDS), None)?;
    Ok(())
}

/// Prints the tests that skipped themselves and why.
fn report_skips(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        println!("skipped tests: none");
        return;
    }
    println!("skipped tests: {}", lines.len());
    for l in lines {
        let (test, why) = l.split_once('\t').unwrap_or((l, ""));
        println!("  SKIPPED {test}: {why}");
    }
}

/// Clippy for the eBPF crate on its own target, `bpfel-unknown-none` (the workspace clippy
/// above never compiles it: it is no_std, no_main and not a default member), without and
/// with its `bench` programs. Same two routes as proxy/build.rs: Debian's clippy with
/// Debian's rustc and prebuilt BPF `core`, or a rustup nightly with rust-src.
fn clippy_bpf(root: &Path) -> Result<()> {
    let debian = Path::new(DEBIAN_CARGO_CLIPPY).exists()
        && Path::new(DEBIAN_RUSTC).exists()
        && Path::new(DEBIAN_BPF_CORE).is_dir();
    for features in [&[][..], &["--features", "bench"][..]] {
        let mut cmd = if debian {
            // cargo-clippy runs `cargo check` with the clippy-driver beside it, which must
            // be built by the same rustc as the sysroot's `core`: hence Debian's rustc.
            let mut c = Command::new(DEBIAN_CARGO_CLIPPY);
            c.arg("clippy")
                .env("RUSTC", DEBIAN_RUSTC)
                .env("RUSTC_BOOTSTRAP", "aya_ebpf,proxy_ebpf");
            c
        } else {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo", "clippy", "-Z", "build-std=core"]);
            c
        };
        for var in ["RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS"] {
            cmd.env_remove(var);
        }
        cmd.current_dir(root)
            .args(["--locked", "--release", "-p", "proxy-ebpf"])
            .args(["--target", "bpfel-unknown-none"])
            .args(features)
            .args(["--", "-D", "warnings"]);
        run(&mut cmd).context(if debian {
            "clippy for the eBPF crate failed (Debian route)"
        } else {
            "clippy for the eBPF crate failed (nightly route: needs rust-src and clippy)"
        })?;
    }
    Ok(())
}
