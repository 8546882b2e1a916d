//! The `proxy` command line ([`Cli`]) and its one-shot commands (everything but `run`), so
//! that `main.rs` stays the event adapter of `run`. The definitions live in the library so
//! that the man pages and shell completions are generated from the real CLI
//! (`proxy generate-assets DIR`, called by `cargo xtask package`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use crate::{
    admin::{self, Request},
    config::{Config, IoChoice},
    ebpf,
    logging::LogFormat,
    observe::check::{self, Thresholds},
    terminator::tls::check_certificates,
};

/// Where `proxy run` reads its configuration unless told otherwise (the Debian package's
/// conffile).
pub const DEFAULT_CONFIG: &str = "/etc/xdp-proxy/proxy.toml";

#[derive(Parser)]
#[command(
    name = "proxy",
    version,
    about = "eBPF/XDP-assisted L4 proxy for blockchain API nodes"
)]
pub struct Cli {
    /// Log lines on stderr: text (colours only on a terminal) or json (one object per line).
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load the XDP data plane, attach it and serve until SIGINT/SIGTERM (SIGHUP reloads the file).
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Seconds between counter summaries in the log (0: never).
        #[arg(long, default_value_t = 10)]
        stats_interval: u64,
        /// Terminator I/O: io_uring, epoll, or auto (io_uring when the kernel allows it).
        /// Overrides `terminator.io`.
        #[arg(long, value_enum)]
        io: Option<IoChoice>,
        /// Set by `proxy upgrade`: take the listening sockets over from the running proxy.
        #[arg(long, hide = true)]
        takeover: Option<PathBuf>,
    },
    /// Replace the running proxy by a new binary without refusing a connection: the new
    /// process gets the listening sockets, the old one drains (also: SIGUSR2 to `run`).
    Upgrade {
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The new binary (default: the path the running proxy was started from).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Take the XDP program off the interfaces (it stays attached after `run` exits).
    Detach {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Also remove the pinned maps: established L4 flows and their NAT ports are forgotten.
        #[arg(long)]
        forget_flows: bool,
    },
    /// Validate a configuration file and report every problem.
    CheckConfig { file: PathBuf },
    /// Nagios/icinga plugin: the running proxy's health in one line, exit 0/1/2/3.
    Check {
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        thresholds: Thresholds,
    },
    /// Inspect and change backends of a running proxy (admin socket).
    Backends {
        /// Admin socket of the running proxy (`admin.socket` in its config).
        #[arg(long, global = true, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        action: admin::Command,
    },
    /// Write the man pages and shell completions into DIR (packaging; see `cargo xtask package`).
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
}

/// Files [`generate_assets`] writes besides the man pages (`proxy.1`, `proxy-run.1`, ...):
/// completions for bash, zsh and fish, named as their vendor directories expect.
pub const COMPLETIONS: [(clap_complete::Shell, &str); 3] = [
    (clap_complete::Shell::Bash, "proxy.bash"),
    (clap_complete::Shell::Zsh, "_proxy"),
    (clap_complete::Shell::Fish, "proxy.fish"),
];

/// `proxy generate-assets DIR`: a man page for the command and one for each visible
/// subcommand (`proxy.1`, `proxy-run.1`, `proxy-backends-list.1`, ...), and the completions
/// of [`COMPLETIONS`], all from the clap definitions above.
pub fn generate_assets(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let mut visible = without_hidden_subcommands(Cli::command());
    for (shell, file) in COMPLETIONS {
        let path = dir.join(file);
        let mut out =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_complete::generate(shell, &mut visible, "proxy", &mut out);
    }
    Ok(())
}

/// `cmd` as completions should offer it: clap_complete lists hidden subcommands too
/// (`generate-assets`), so the top level is rebuilt from its visible parts. Global arguments
/// reach the subcommands when clap builds the result.
fn without_hidden_subcommands(cmd: clap::Command) -> clap::Command {
    clap::Command::new("proxy")
        .version(env!("CARGO_PKG_VERSION"))
        .about(cmd.get_about().cloned().unwrap_or_default())
        .subcommand_required(cmd.is_subcommand_required_set())
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// `proxy check-config FILE`: every problem, or a one-line summary.
pub fn check_config(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file, check_certificates)?;
    let backends: usize = config.pools.values().map(|p| p.backends.len()).sum();
    println!(
        "{}: ok ({} listeners, {} pools, {} backends)",
        file.display(),
        config.listeners.len(),
        config.pools.len(),
        backends
    );
    Ok(())
}

/// `proxy detach`: removes the pinned XDP links of the instance `file` configures (the
/// program leaves its interfaces), and with `forget_flows` its pinned maps too.
pub fn detach(file: &Path, forget_flows: bool) -> anyhow::Result<()> {
    let config = Config::load(file, |_| Vec::new())?;
    let pin_dir = &config.balancer.pin_dir;
    let detached = ebpf::links::detach_pinned(pin_dir)
        .with_context(|| format!("removing the pinned links in {}", pin_dir.display()))?;
    if detached.is_empty() {
        println!("no pinned XDP link in {}", pin_dir.display());
    } else {
        println!("XDP detached from {}", detached.join(", "));
    }
    if forget_flows {
        ebpf::DataPlane::remove_pins(pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
        println!("removed {} (flow tables forgotten)", pin_dir.display());
    }
    Ok(())
}

/// `proxy upgrade`: asks the running proxy to start the new binary and hand it the
/// listening sockets; prints the outcome.
pub fn upgrade(socket: &Path, binary: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    // Starting, loading and verifying the new program takes seconds; the proxy gives up on
    // the new process after `upgrade::READY_TIMEOUT`.
    let wait = crate::upgrade::READY_TIMEOUT + std::time::Duration::from_secs(10);
    let answer = admin::call_waiting(socket, &Request::Upgrade { binary }, wait)?;
    if !answer.ok {
        anyhow::bail!("{}", answer.message);
    }
    println!("{}", answer.message);
    Ok(())
}

/// `proxy check`: a nagios/icinga plugin. Asks the running proxy for its region view over the
/// admin socket, prints one status line with perfdata, exits 0/1/2/3.
pub fn nagios_check(socket: &Path, t: &Thresholds) -> ExitCode {
    let (status, line) = match admin::call(socket, &Request::Status) {
        Ok(r) => match r.status {
            Some(view) => check::evaluate(&view, t),
            None => check::unknown(&format!("the proxy gave no status: {}", r.message)),
        },
        Err(e) => check::unknown(&format!("{e}")),
    };
    println!("{line}");
    ExitCode::from(status as u8)
}
