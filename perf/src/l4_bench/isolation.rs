//! Keeping the balancer's work on its own core, and reading what each core spent.
//!
//! On veth the receiving device's NAPI poll (XDP, netfilter, forwarding, the TCP stack)
//! runs in softirq on the CPU that *sent* the frame, so client, balancer and node would all
//! be charged to whichever core transmitted. Threaded NAPI turns each device's poll into a
//! kthread (`napi/<dev>-<id>`) that can be pinned: the balancer's devices to the peer core,
//! the client's and node's devices to the load generator's core.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use proxy_tests::netns::NetNs;

/// Enables threaded NAPI on `dev` in `ns` and pins its new kthreads to `cpu`; returns their
/// pids. Fails (the caller says so in the results) when the device has no NAPI or the
/// kernel refuses.
pub fn threaded_napi(ns: &NetNs, dev: &str, cpu: usize) -> Result<Vec<i32>> {
    let comm = format!("napi/{dev}-");
    let before = napi_threads(&comm);
    let path = format!("/sys/class/net/{dev}/threaded");
    // `ip netns exec` mounts the namespace's own sysfs: /sys/class/net shows its devices.
    ns.exec("sh", &["-c", &format!("echo 1 > {path} && cat {path}")])
        .with_context(|| format!("enabling threaded NAPI on {dev} in {}", ns.name()))
        .and_then(|v| match v.trim() {
            "1" => Ok(()),
            other => bail!("{path} reads {other:?} after writing 1"),
        })?;
    let new: Vec<i32> = napi_threads(&comm).difference(&before).copied().collect();
    if new.is_empty() {
        bail!(
            "threaded NAPI on {dev}: no new `{comm}*` kthread appeared (does the device run NAPI?)"
        );
    }
    for &pid in &new {
        set_affinity(pid, cpu)
            .with_context(|| format!("pinning {comm}* (pid {pid}) to CPU {cpu}"))?;
    }
    Ok(new)
}

/// Pids of kthreads whose name starts with `prefix`.
fn napi_threads(prefix: &str) -> BTreeSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .collect()
}

/// Pins thread or process `pid` (0: the calling thread) to `cpu`.
pub fn set_affinity(pid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Lets the calling thread run on every online CPU again.
pub fn allow_all_cpus() {
    // SAFETY: sysconf has no preconditions; cpu_set_t is plain data.
    unsafe {
        let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..n.min(libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Busy and total jiffies of one CPU (busy = total - idle - iowait), from /proc/stat.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    /// `cpu`'s line of /proc/stat.
    pub fn read(cpu: usize) -> Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let label = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label.as_str()))
            .with_context(|| format!("no `{label}` line in /proc/stat"))?;
        Ok(parse_cpu_line(line))
    }

    /// Busy share of `self - earlier` (0..=1).
    pub fn busy_share_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        self.busy.saturating_sub(earlier.busy) as f64 / total
    }

    /// Busy nanoseconds of `self - earlier`.
    pub fn busy_ns_since(&self, earlier: &CpuTimes) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.busy.saturating_sub(earlier.busy) as f64 * 1e9 / hz
    }
}

/// `cpuN user nice system idle iowait irq softirq steal guest guest_nice`; guest time is
/// already inside user, so only the first eight count.
fn parse_cpu_line(line: &str) -> CpuTimes {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    CpuTimes {
        busy: total - idle,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_leaves_out_idle_iowait_and_guest() {
        let t = parse_cpu_line("cpu1 100 5 50 800 20 1 24 0 30 0");
        assert_eq!(t.total, 1000);
        assert_eq!(t.busy, 180);
        let later = parse_cpu_line("cpu1 200 5 100 850 20 1 24 0 30 0");
        assert!((later.busy_share_since(&t) - 150.0 / 200.0).abs() < 1e-9);
    }
}
