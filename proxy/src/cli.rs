//! The one-shot commands of the `proxy` binary (everything but `run`), so that `main.rs`
//! stays CLI parsing plus the event adapter of `run`.

use std::{path::Path, process::ExitCode};

use crate::{
    admin::{self, Request},
    config::Config,
    observe::check::{self, Thresholds},
    terminator::tls::check_certificates,
};

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
