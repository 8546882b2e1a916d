//! Cleanup that also runs on Ctrl-C and SIGTERM: a bench registers what it must undo
//! (namespaces, pins, peer processes, nftables tables) and gets a guard; the guard undoes it
//! on drop (normal end, error, panic), and the signal handler undoes every registered action
//! still pending before the process exits with 130.
//!
//! Peer processes should in addition be started with [`die_with_parent`], so that even a
//! SIGKILLed bench leaves none behind.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, Once,
};

type Action = Box<dyn FnOnce() + Send>;

static PENDING: Mutex<Vec<(u64, String, Action)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);
static HANDLER: Once = Once::new();

/// Undoes its action when dropped, unless [`CleanupGuard::disarm`]ed.
pub struct CleanupGuard {
    id: u64,
}

/// Registers `what` (a name for the log) to be undone by `action` on drop of the guard or on
/// a termination signal, whichever comes first.
pub fn on_exit(what: impl Into<String>, action: impl FnOnce() + Send + 'static) -> CleanupGuard {
    install_handler();
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock().push((id, what.into(), Box::new(action)));
    CleanupGuard { id }
}

impl CleanupGuard {
    /// Forgets the action (it was undone another way).
    pub fn disarm(self) {
        take(self.id);
        std::mem::forget(self);
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if let Some((_, _, action)) = take(self.id) {
            action();
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<(u64, String, Action)>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

fn take(id: u64) -> Option<(u64, String, Action)> {
    let mut v = lock();
    let i = v.iter().position(|(x, _, _)| *x == id)?;
    Some(v.remove(i))
}

/// Undoes every pending action, newest first (what was set up last is torn down first).
pub fn run_all() {
    loop {
        let Some((_, what, action)) = lock().pop() else {
            return;
        };
        eprintln!("cleanup: {what}");
        action();
    }
}

fn install_handler() {
    HANDLER.call_once(|| {
        let r = ctrlc::set_handler(|| {
            eprintln!("\ninterrupted: cleaning up");
            run_all();
            std::process::exit(130);
        });
        if let Err(e) = r {
            eprintln!("warning: no Ctrl-C cleanup handler ({e}); an interrupted bench may leave state behind");
        }
    });
}

/// Deletes network namespace `name` if it still exists (quietly: a cleanup action may run
/// after the namespace's own guard already removed it).
pub fn delete_netns(name: &str) {
    if std::path::Path::new("/run/netns").join(name).exists() {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// For `Command::pre_exec`: the child gets SIGKILL when the bench (its parent thread) dies.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Registers a sweep of every network namespace (`/var/run/netns`) and bpffs pin
/// (`/sys/fs/bpf`) whose name starts with `prefix` (not followed by a digit, so `pxt12`
/// leaves `pxt123...` alone): also what a lab was still building when the signal came.
pub fn sweep_labs(prefix: &str) -> CleanupGuard {
    let prefix = prefix.to_string();
    on_exit(format!("namespaces and pins named {prefix}*"), move || {
        let ours = |name: &str| named_by(name, &prefix);
        let names = |dir: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter(|n| ours(n))
                        .collect()
                })
                .unwrap_or_default()
        };
        for ns in names("/var/run/netns") {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns])
                .status();
        }
        for pin in names("/sys/fs/bpf") {
            let _ = std::fs::remove_dir_all(std::path::Path::new("/sys/fs/bpf").join(pin));
        }
    })
}

/// `name` starts with `prefix` and does not go on with a digit (`pxt12-a`, not `pxt123-a`).
fn named_by(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::AtomicUsize, Arc};

    use super::*;

    #[test]
    fn the_sweep_takes_only_this_pids_names() {
        assert!(named_by("pxt12-l0-cl", "pxt12"));
        assert!(named_by("pxt12b3", "pxt12"));
        assert!(!named_by("pxt123-l0-cl", "pxt12"));
        assert!(!named_by("xdp-proxy", "pxt12"));
    }

    #[test]
    fn guards_undo_once_in_reverse_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (log.clone(), log.clone());
        let ga = on_exit("a", move || a.lock().unwrap().push("a"));
        let _gb = on_exit("b", move || b.lock().unwrap().push("b"));
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let gc = on_exit("c", move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        gc.disarm();
        drop(ga);
        assert_eq!(*log.lock().unwrap(), ["a"]);
        run_all();
        assert_eq!(*log.lock().unwrap(), ["a", "b"]);
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }
}
