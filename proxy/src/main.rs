//! `proxy`: run the balancer, or check a configuration file. The control plane lives in the
//! library (`proxy::plane`), and so does `run`'s adapter (`proxy::run`): this is CLI parsing.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use proxy::{
    cli,
    config::IoChoice,
    logging::{self, LogFormat},
};

#[derive(Parser)]
#[command(version, about = "eBPF/XDP-assisted L4 proxy for blockchain API nodes")]
struct Cli {
    /// Log lines on stderr: text (colours only on a terminal) or json (one object per line).
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP data plane, attach it and serve until SIGINT/SIGTERM (SIGHUP reloads the file).
    Run {
        #[arg(short, long, default_value = "/etc/xdp-proxy/proxy.toml")]
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
        #[arg(long, default_value = proxy::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The new binary (default: the path the running proxy was started from).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Take the XDP program off the interfaces (it stays attached after `run` exits).
    Detach {
        #[arg(short, long, default_value = "/etc/xdp-proxy/proxy.toml")]
        config: PathBuf,
        /// Also remove the pinned maps: established L4 flows and their NAT ports are forgotten.
        #[arg(long)]
        forget_flows: bool,
    },
    /// Validate a configuration file and report every problem.
    CheckConfig { file: PathBuf },
    /// Nagios/icinga plugin: the running proxy's health in one line, exit 0/1/2/3.
    Check {
        #[arg(long, default_value = proxy::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        thresholds: proxy::observe::check::Thresholds,
    },
    /// Inspect and change backends of a running proxy (admin socket).
    Backends {
        /// Admin socket of the running proxy (`admin.socket` in its config).
        #[arg(long, global = true, default_value = proxy::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        action: proxy::admin::Command,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { file } => cli::check_config(&file),
        Command::Detach {
            config,
            forget_flows,
        } => cli::detach(&config, forget_flows),
        Command::Check { socket, thresholds } => return cli::nagios_check(&socket, &thresholds),
        Command::Backends { socket, action } => action.run(&socket).map_err(Into::into),
        Command::Upgrade { socket, binary } => cli::upgrade(&socket, binary),
        Command::Run {
            config,
            stats_interval,
            io,
            takeover,
        } => proxy::run::run(&proxy::run::RunArgs {
            config,
            stats_interval,
            io,
            takeover,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(cli.log_format, &e);
            ExitCode::FAILURE
        }
    }
}
