//! The one-shot commands of the `proxy` binary (everything but `run`), so that `main.rs`
//! stays CLI parsing plus the event adapter of `run`.

use std::{path::Path, process::ExitCode};

use anyhow::Context;

use crate::{
    admin::{self, Request},
    config::Config,
    ebpf,
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
