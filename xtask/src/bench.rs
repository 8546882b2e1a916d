//! `cargo xtask bench [SCENARIO] [--quick]`: builds the bench binaries once, runs the
//! scenarios in turn with progress and an estimate of what is left, then collects the latest
//! table of every scenario into `<results>/README.md` and (not for --quick) the README's
//! performance section.
//!
//! Each scenario's binary cleans up what it started (namespaces, pins, peers) itself, also
//! on Ctrl-C (the terminal sends SIGINT to the whole process group) and on SIGTERM (which
//! this process forwards to the running scenario, then waits for it).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::cargo;

/// A scenario: name, binary in perf/, its own arguments, what it measures, and about how
/// long it runs (seconds: full, quick).
struct Scenario {
    name: &'static str,
    bin: &'static str,
    args: &'static [&'static str],
    what: &'static str,
    secs: (u64, u64),
    /// Part of `cargo xtask bench` with no scenario.
    in_all: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "xdp",
        bin: "xdp-bench",
        args: &[],
        what: "ns/packet of the XDP paths against XDP_PASS (BPF_PROG_TEST_RUN)",
        secs: (15, 4),
        in_all: true,
    },
    Scenario {
        name: "l4",
        bin: "l4-bench",
        args: &[],
        what: "L4 forwarding: XDP full NAT vs nftables DNAT vs HAProxy mode tcp",
        secs: (360, 50),
        in_all: true,
    },
    Scenario {
        name: "tls-ws",
        bin: "tls-ws-bench",
        args: &["--scenario", "tls-ws"],
        what:
            "wss:// cycles, messages, latency, push: this proxy (epoll, io_uring) vs HAProxy, nginx",
        secs: (330, 75),
        in_all: true,
    },
    Scenario {
        name: "idle",
        bin: "tls-ws-bench",
        args: &["--scenario", "idle"],
        what: "memory per idle wss connection at 1,000 and 9,000, every peer",
        secs: (60, 15),
        in_all: true,
    },
    Scenario {
        name: "maglev",
        bin: "maglev-bench",
        args: &[],
        what: "Maglev ring rebuild time and slots moved when a backend leaves",
        secs: (12, 3),
        in_all: true,
    },
    Scenario {
        name: "storm",
        bin: "storm-bench",
        args: &[],
        what: "new connections/s for 60 s rounds: XDP full NAT vs nftables DNAT (issue 13)",
        secs: (130, 130),
        in_all: false,
    },
];

static CHILD: AtomicU32 = AtomicU32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn bench(root: &Path, scenario: Option<&str>, quick: bool, args: &[String]) -> Result<()> {
    let chosen: Vec<&Scenario> = match scenario {
        None | Some("all") => SCENARIOS.iter().filter(|s| s.in_all).collect(),
        Some(name) => match SCENARIOS.iter().find(|s| s.name == name) {
            Some(s) => vec![s],
            None => {
                let known: Vec<String> = SCENARIOS
                    .iter()
                    .map(|s| format!("{}: {}", s.name, s.what))
                    .collect();
                bail!(
                    "unknown bench scenario `{name}`; known:\n  {}",
                    known.join("\n  ")
                );
            }
        },
    };
    if !args.is_empty() && chosen.len() > 1 {
        bail!("arguments after -- go to one scenario's binary; name the scenario");
    }
    let out_dir: PathBuf = if quick {
        root.join("target/bench-quick")
    } else {
        root.join("perf/results")
    };
    let built = Instant::now();
    let mut build = vec!["build", "--release", "--locked", "-p", "proxy-perf"];
    let mut bins: Vec<&str> = chosen.iter().map(|s| s.bin).collect();
    bins.dedup();
    for b in &bins {
        build.extend(["--bin", b]);
    }
    cargo(root, &build)?;
    eprintln!("bench: built in {:.0?}", built.elapsed());
    install_signal_forwarding();

    let est = |s: &Scenario| if quick { s.secs.1 } else { s.secs.0 };
    let started = Instant::now();
    for (i, s) in chosen.iter().enumerate() {
        let left: u64 = chosen[i..].iter().map(|s| est(s)).sum();
        eprintln!(
            "\n=== bench {}/{}: {} ({}), about {} s; about {} left in all ===",
            i + 1,
            chosen.len(),
            s.name,
            s.what,
            est(s),
            human(left)
        );
        let mut cmd = Command::new(root.join("target/release").join(s.bin));
        cmd.current_dir(root).args(s.args);
        if s.name != "storm" {
            cmd.arg("--out-dir").arg(&out_dir);
            if quick {
                cmd.arg("--quick");
            }
        } else if quick {
            cmd.args(["--seconds", "10"]);
        }
        cmd.args(args);
        let t = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {}", s.bin))?;
        CHILD.store(child.id(), Ordering::SeqCst);
        let status = child.wait()?;
        CHILD.store(0, Ordering::SeqCst);
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!(
                "interrupted during `{}`; it cleaned up after itself",
                s.name
            );
        }
        if !status.success() {
            bail!("bench `{}` failed with {status}", s.name);
        }
        eprintln!("=== {} done in {:.0?} ===", s.name, t.elapsed());
    }
    eprintln!(
        "\nbench: {} scenario(s) in {} (build not counted); results in {}",
        chosen.len(),
        human(started.elapsed().as_secs()),
        out_dir.display()
    );
    // The tables of every scenario that has results in this directory (the latest run of
    // each), and after a full run the README's performance section.
    let all: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| s.in_all && out_dir.join(format!("{}.md", s.name)).exists())
        .collect();
    let summary = summarize(&out_dir, &all, quick)?;
    if !quick {
        update_readme(&root.join("README.md"), &summary)?;
    }
    Ok(())
}

/// The scenarios' tables, one after another, with their plots, as `<out>/README.md`.
fn summarize(out_dir: &Path, chosen: &[&Scenario], quick: bool) -> Result<String> {
    let mut md = String::new();
    for s in chosen {
        let table = std::fs::read_to_string(out_dir.join(format!("{}.md", s.name)))
            .with_context(|| format!("{} wrote no table", s.name))?;
        md.push_str(&table);
        let mut svgs: Vec<String> = std::fs::read_dir(out_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| {
                f.ends_with(".svg")
                    && (f
                        .strip_prefix(s.name)
                        .is_some_and(|r| r.starts_with(['.', '-'])))
            })
            .collect();
        svgs.sort();
        if !svgs.is_empty() {
            md.push_str("\nPlots: ");
            let links: Vec<String> = svgs
                .iter()
                .map(|f| format!("[{f}](perf/results/{f})"))
                .collect();
            md.push_str(&links.join(", "));
            md.push('\n');
        }
        md.push('\n');
    }
    let path = out_dir.join("README.md");
    let title = if quick {
        "# Benchmark results (quick run)\n\n"
    } else {
        "# Benchmark results\n\nThe latest full `cargo xtask bench`; JSON beside each table.\n\n"
    };
    std::fs::write(
        &path,
        format!("{title}{}", md.replace("](perf/results/", "](")),
    )?;
    eprintln!("bench: tables in {}", path.display());
    Ok(md)
}

const BEGIN: &str = "<!-- bench-results:begin (cargo xtask bench writes this part) -->";
const END: &str = "<!-- bench-results:end -->";

/// Replaces the README's part between the markers with the latest full run's tables.
fn update_readme(readme: &Path, tables: &str) -> Result<()> {
    let text = std::fs::read_to_string(readme)?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!("bench: README.md has no bench-results markers; not updated");
        return Ok(());
    };
    let tables = tables.replace("### `", "#### `");
    let new = format!("{}{BEGIN}\n{tables}{}", &text[..b], &text[e..]);
    std::fs::write(readme, new)?;
    eprintln!("bench: README.md performance section updated");
    Ok(())
}

fn install_signal_forwarding() {
    let r = ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let pid = CHILD.load(Ordering::SeqCst);
        if pid != 0 {
            // A terminal's Ctrl-C already reached the child (same process group); a SIGTERM
            // sent to this process alone did not: pass it on. Twice is harmless: the
            // child's handler cleans up once and exits.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    });
    if let Err(e) = r {
        eprintln!("warning: no signal handler ({e}); an interrupted bench is still cleaned up by the scenario itself on Ctrl-C");
    }
}

fn human(secs: u64) -> String {
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}
