//! `proxy`: run the balancer, or one of the one-shot commands. The command line is defined in
//! the library (`proxy::cli`, so that man pages and completions come from it), and so are the
//! control plane (`proxy::plane`) and `run`'s adapter (`proxy::run`): this is dispatch.

use std::process::ExitCode;

use clap::Parser;

use proxy::{
    cli::{self, Cli, Command},
    logging,
    run::{run, RunArgs},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { file } => cli::check_config(&file),
        Command::Check { socket, thresholds } => return cli::nagios_check(&socket, &thresholds),
        Command::Backends { socket, action } => action.run(&socket).map_err(Into::into),
        Command::GenerateAssets { dir } => cli::generate_assets(&dir),
        Command::Detach {
            config,
            forget_flows,
        } => cli::detach(&config, forget_flows),
        Command::Upgrade { socket, binary } => cli::upgrade(&socket, binary),
        Command::Run {
            config,
            stats_interval,
            io,
            takeover,
        } => run(&RunArgs {
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
