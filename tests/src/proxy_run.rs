//! A `proxy run` child process for tests that need the real binary (signals, restarts,
//! upgrades): started in a network namespace with `nsenter` (not `ip netns exec`, which
//! would give it a private mount namespace and so a private bpffs), its log in a file, and
//! killed on drop if it is still running.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::NetNs;

/// A running `proxy run`.
pub struct ProxyRun {
    child: Child,
    log: PathBuf,
}

impl ProxyRun {
    /// Starts `bin run --config config` inside `ns` (the host's when `None`), stderr and
    /// stdout appended to `log`.
    pub fn start(bin: &Path, ns: Option<&NetNs>, config: &Path, log: &Path) -> Result<ProxyRun> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{}", ns.name()))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(["run", "--stats-interval", "0", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting proxy run (is util-linux's nsenter installed?)")?;
        Ok(ProxyRun {
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready` holds (polled every 50 ms), failing with the log if the process
    /// exits first or `timeout` passes.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("proxy run exited with {status}; its log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "proxy run not ready after {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        if rc != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "proxy run still running after {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a successful exit.
    pub fn stop(mut self) -> Result<()> {
        self.signal(libc::SIGTERM)?;
        let status = self.wait_exit(Duration::from_secs(30))?;
        if !status.success() {
            bail!("proxy run exited with {status}; its log:\n{}", self.log());
        }
        Ok(())
    }
}

impl Drop for ProxyRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
