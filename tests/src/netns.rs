//! Network namespaces for tests and benchmarks: create, configure with `ip`, enter from a
//! dedicated thread, and always delete again.
//!
//! Every namespace name starts with [`unique_prefix`] (`pxt<pid>`), so parallel runs of the
//! suite do not collide, and [`NetNs`] deletes its namespace on `Drop`, also when a test
//! fails or panics. Devices inside a namespace are private to it, so device names only need
//! to be unique per namespace (and at most 15 bytes long, [`MAX_DEV_NAME`]).
//!
//! `bpf_fib_lookup` and BPF_PROG_TEST_RUN's `ingress_ifindex` resolve against the network
//! namespace of the *calling thread*. Enter a namespace with [`run_in`] (a fresh std thread)
//! rather than on a thread that owns a tokio runtime or is shared with other tests.
//!
//! ```text
//! let ns = NetNs::new("fix")?;
//! veth_pair(&ns, "cli0", &ns, "cli0p")?;
//! ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "cli0"])?;
//! let idx = ifindex(&ns, "cli0")?;
//! let out = run_in(&ns, move || do_something_in_the_namespace(idx))?;
//! ```

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

use anyhow::{bail, Context, Result};

/// Longest network device name Linux accepts (IFNAMSIZ - 1).
pub const MAX_DEV_NAME: usize = 15;

/// Where `ip netns add` bind-mounts the namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// The prefix of every namespace this process creates: `pxt<pid>`.
pub fn unique_prefix() -> String {
    format!("pxt{}", std::process::id())
}

fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs a command and returns its stdout; the error names the command and carries stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let shown = describe(program, args);
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("failed to start `{shown}` (is iproute2 installed?)"))?;
    if !status.success() {
        bail!(
            "`{shown}` failed with {status}: {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// A network namespace named `<prefix>-<suffix>`, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<unique_prefix()>-<suffix>` and brings its loopback up. Needs root.
    pub fn new(suffix: &str) -> Result<NetNs> {
        let name = format!("{}-{suffix}", unique_prefix());
        run("ip", &["netns", "add", &name])
            .with_context(|| format!("creating network namespace {name} (needs root)"))?;
        // From here on Drop cleans up, whatever fails next.
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `ip netns exec <name> <cmd> <args>` and returns its stdout.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Moves the calling thread into this namespace (`setns(CLONE_NEWNET)`). Only the calling
    /// thread moves; threads it spawns later inherit the namespace. Do this on a thread of your
    /// own ([`run_in`]) that runs no async runtime.
    pub fn enter_current_thread(&self) -> Result<()> {
        let path = format!("{NETNS_RUN_DIR}/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", self.name));
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys the devices in it (and their veth peers elsewhere).
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

fn check_dev_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_DEV_NAME {
        bail!("device name `{name}` must be 1..={MAX_DEV_NAME} bytes");
    }
    Ok(())
}

/// Creates a veth pair: `name_a` in `ns_a` and its peer `name_b` in `ns_b` (may be the same
/// namespace). Both ends are left down.
pub fn veth_pair(ns_a: &NetNs, name_a: &str, ns_b: &NetNs, name_b: &str) -> Result<()> {
    check_dev_name(name_a)?;
    check_dev_name(name_b)?;
    ns_a.ip(&[
        "link",
        "add",
        name_a,
        "type",
        "veth",
        "peer",
        "name",
        name_b,
        "netns",
        ns_b.name(),
    ])
    .map(|_| ())
}

/// The interface index of `dev` in `ns`.
pub fn ifindex(ns: &NetNs, dev: &str) -> Result<u32> {
    // One line per device: "<index>: <name>[@peer]: <flags> ...".
    let out = ns.ip(&["-o", "link", "show", "dev", dev])?;
    out.split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("no ifindex in `ip -o link show dev {dev}` output: {out:?}"))
}

/// Runs `f` on a new std thread that first enters `ns`, and returns its result. A panic in
/// `f` is resumed on the calling thread (so test assertions inside `f` fail the test).
pub fn run_in<T, F>(ns: &NetNs, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("{NETNS_RUN_DIR}/{}", ns.name());
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let name = ns.name().to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<T> {
            // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into {name}"));
            }
            drop(file);
            Ok(f())
        })
        .context("spawning the namespace thread")?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use std::{panic::AssertUnwindSafe, path::Path};

    use super::*;

    fn exists(name: &str) -> bool {
        Path::new(NETNS_RUN_DIR).join(name).exists()
    }

    #[test]
    fn run_in_sees_the_namespace_and_propagates_panics() {
        let ns = NetNs::new("kit").expect("create namespace (root?)");
        let name = ns.name().to_string();
        assert!(name.starts_with(&unique_prefix()), "{name}");
        assert!(exists(&name), "{name} was not created");
        veth_pair(&ns, "kit0", &ns, "kit1").expect("veth pair");
        let idx = ifindex(&ns, "kit0").expect("ifindex");
        // SAFETY: a valid NUL-terminated name.
        let seen =
            run_in(&ns, || unsafe { libc::if_nametoindex(c"kit0".as_ptr()) }).expect("run_in");
        assert_eq!(seen, idx, "the thread did not see the namespace's device");
        let err = ns.ip(&["link", "show", "dev", "nosuchdev"]).unwrap_err();
        assert!(format!("{err:#}").contains("nosuchdev"), "{err:#}");
        let panicked =
            std::panic::catch_unwind(AssertUnwindSafe(|| run_in(&ns, || panic!("expected"))));
        assert!(
            panicked.is_err(),
            "a panic inside run_in must reach the caller"
        );
        drop(ns);
        assert!(!exists(&name), "{name} survived its guard");
    }

    #[test]
    fn namespace_is_deleted_when_its_owner_panics() {
        let mut name = String::new();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let ns = NetNs::new("kitp").expect("create namespace (root?)");
            name = ns.name().to_string();
            panic!("expected");
        }));
        assert!(result.is_err());
        assert!(
            !name.is_empty() && !exists(&name),
            "{name} survived a panic"
        );
    }
}
