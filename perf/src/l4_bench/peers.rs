//! The three peers the l4 bench forwards through, each set up in the lab's balancer
//! namespace: the XDP full-NAT data plane, nftables DNAT, and HAProxy in `mode tcp`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use proxy::{
    balancer::Balancer,
    config::Config,
    ebpf::{DataPlane, LoadOptions},
};
use proxy_common::Reason;
use proxy_tests::{
    netns,
    storm::{l4_config, NODE_PORT, VIP_PORT},
    topology::{self, Lab},
};

use super::isolation::set_affinity;
use crate::bench::cleanup::{self, CleanupGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Xdp,
    Nftables,
    Haproxy,
}

impl Peer {
    pub const ALL: [Peer; 3] = [Peer::Xdp, Peer::Nftables, Peer::Haproxy];

    /// The `peer` of its rows in the results.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Xdp => "xdp-proxy",
            Peer::Nftables => "nftables",
            Peer::Haproxy => "haproxy",
        }
    }
}

/// A peer set up in a lab; dropping it takes it down again.
pub enum Running {
    Xdp {
        // Declaration order is drop order: detach and close the maps, then remove the pins.
        dp: DataPlane,
        _pins: CleanupGuard,
    },
    /// The table lives in the balancer namespace and goes with it.
    Nftables,
    Haproxy(Haproxy),
}

impl Running {
    pub fn start(peer: Peer, lab: &Lab, tag: &str, cpu: usize) -> Result<Running> {
        match peer {
            Peer::Xdp => start_xdp(lab, tag),
            Peer::Nftables => start_nftables(lab, tag),
            Peer::Haproxy => Haproxy::start(lab, tag, cpu).map(Running::Haproxy),
        }
    }

    /// The XDP program's verdict counters (`Reason` → packets), for the progress lines.
    pub fn xdp_verdicts(&self) -> Option<Vec<(Reason, u64)>> {
        match self {
            Running::Xdp { dp, .. } => {
                let r = dp.reasons().ok()?;
                Some(
                    Reason::ALL
                        .iter()
                        .map(|k| (*k, r.get(k).copied().unwrap_or(0)))
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// HAProxy's pid (for its own CPU time).
    pub fn haproxy_pid(&self) -> Option<u32> {
        match self {
            Running::Haproxy(h) => Some(h.child.id()),
            _ => None,
        }
    }
}

fn start_xdp(lab: &Lab, tag: &str) -> Result<Running> {
    let pin_dir = format!("/sys/fs/bpf/{tag}");
    let pins = {
        let dir = pin_dir.clone();
        cleanup::on_exit(format!("pins {dir}"), move || {
            let _ = DataPlane::remove_pins(Path::new(&dir));
        })
    };
    let config = Config::parse(&l4_config(lab, &pin_dir), "l4-bench")?;
    let ifaces = lab.lb_interfaces();
    let dp = netns::run_in(&lab.lb, move || -> Result<DataPlane> {
        let mut dp = DataPlane::load(&LoadOptions::from_config(&config.balancer))?;
        Balancer::from_config(&config, &mut dp)?;
        for iface in &ifaces {
            dp.attach(iface)
                .with_context(|| format!("attaching XDP to {iface}"))?;
        }
        Ok(dp)
    })??;
    Ok(Running::Xdp { dp, _pins: pins })
}

fn start_nftables(lab: &Lab, tag: &str) -> Result<Running> {
    let rules = format!(
        "table ip l4bench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
         ip daddr {} tcp dport {VIP_PORT} dnat to {}:{NODE_PORT}\n  }}\n}}\n",
        topology::VIP,
        lab.nodes[0].addr
    );
    let file = std::env::temp_dir().join(format!("{tag}.nft"));
    std::fs::write(&file, rules)?;
    let loaded = lab
        .lb
        .exec("nft", &["-f", &file.to_string_lossy()])
        .context("loading the nftables DNAT rule (is nftables installed?)");
    let _ = std::fs::remove_file(&file);
    loaded?;
    Ok(Running::Nftables)
}

/// HAProxy 2.6 in `mode tcp`, one thread pinned to the peer CPU, listening on the VIP
/// (put on the balancer's loopback; the client already routes it there).
pub struct Haproxy {
    child: Child,
    files: Vec<PathBuf>,
    guard: Option<CleanupGuard>,
}

impl Haproxy {
    fn start(lab: &Lab, tag: &str, cpu: usize) -> Result<Haproxy> {
        lab.lb
            .ip(&["addr", "add", &format!("{}/32", topology::VIP), "dev", "lo"])?;
        let dir = std::env::temp_dir();
        let cfg = dir.join(format!("{tag}-haproxy.cfg"));
        let log = dir.join(format!("{tag}-haproxy.log"));
        // maxconn: the 20,000-fd limit of these machines (TOOLCHAIN.md).
        let text = format!(
            "global\n  nbthread 1\n  cpu-map 1/1 {cpu}\n  maxconn 9000\n\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
             listen l4\n  bind {vip}:{VIP_PORT}\n  server node {node}:{NODE_PORT}\n",
            vip = topology::VIP,
            node = lab.nodes[0].addr,
        );
        std::fs::write(&cfg, text)?;
        let files = vec![cfg.clone(), log.clone()];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", lab.lb.name(), "haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        cleanup::die_with_parent(&mut cmd);
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: sched_setaffinity is async-signal-safe and affects only the child.
            unsafe {
                cmd.pre_exec(move || set_affinity(0, cpu));
            }
        }
        // `ip netns exec` execs haproxy in place: the child's pid is HAProxy's.
        let child = cmd
            .spawn()
            .context("starting haproxy (apt-get install haproxy)")?;
        let pid = child.id() as i32;
        let guard = {
            let files = files.clone();
            cleanup::on_exit(format!("haproxy (pid {pid})"), move || {
                // SAFETY: kill has no memory preconditions; pid is our child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                for f in &files {
                    let _ = std::fs::remove_file(f);
                }
            })
        };
        let mut h = Haproxy {
            child,
            files,
            guard: Some(guard),
        };
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = h.child.try_wait()? {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("haproxy exited at start with {status}: {}", err.trim());
        }
        Ok(h)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(g) = self.guard.take() {
            g.disarm();
        }
    }
}
