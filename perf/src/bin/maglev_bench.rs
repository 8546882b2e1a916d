//! `cargo xtask bench maglev`: the control plane's Maglev ring (`proxy::maglev`, the code the
//! balancer runs) at 10, 100 and 1,000 backends: how long a rebuild takes, how many slots
//! move when one backend leaves (against the 1/N a perfect consistent hash moves), how evenly
//! the slots are shared, and what a lookup costs.
//!
//! No peer runs this scenario: every row is this proxy's (`peer` = `xdp-proxy`, no ratio).

use std::{
    hint::black_box,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use proxy::maglev::{is_prime, MaglevRing, RingMember, MIN_SLOTS_PER_MEMBER};
use proxy_common::DEFAULT_RING_SIZE;
use proxy_perf::bench::{
    plot::{self, LineChart, Scale},
    progress::Progress,
    results::{self, median, Case},
};

const PEER: &str = "xdp-proxy";
const BACKENDS: [u32; 3] = [10, 100, 1000];

#[derive(Parser, Debug)]
#[command(about = "Maglev ring: rebuild time, slots moved when a backend leaves, lookup cost")]
struct Args {
    /// A short run (a few seconds, noisier timings).
    #[arg(long)]
    quick: bool,
    /// Where to write maglev.json, maglev.md and maglev.svg.
    #[arg(long, default_value = results::DEFAULT_DIR)]
    out_dir: PathBuf,
    /// Ring size (a prime); the default is the configuration's default `balancer.ring_size`.
    #[arg(long, default_value_t = DEFAULT_RING_SIZE)]
    ring_size: u32,
}

/// How long each measurement runs.
struct Budget {
    rebuild: Duration,
    min_rebuilds: usize,
    /// How many different backends are removed, one at a time, for "slots moved".
    victims: u32,
    lookup: Duration,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                rebuild: Duration::from_millis(500),
                min_rebuilds: 10,
                victims: 3,
                lookup: Duration::from_millis(200),
            }
        } else {
            Budget {
                rebuild: Duration::from_secs(3),
                min_rebuilds: 100,
                victims: 20,
                lookup: Duration::from_secs(1),
            }
        }
    }
}

/// `n` backends named like the ring's own tests (addresses), weight 1.
fn pool(n: u32) -> Vec<RingMember> {
    (0..n)
        .map(|i| RingMember::new(i, format!("10.0.{}.{}:443", i / 256, i % 256), 1))
        .collect()
}

fn without(members: &[RingMember], id: u32) -> Vec<RingMember> {
    members.iter().filter(|m| m.id != id).cloned().collect()
}

/// Median microseconds of `MaglevRing::rebuild`, and how many calls it is the median of.
/// Calls alternate between all backends and all but one (a different one each time), so
/// each returns a real delta, as a rebuild after a health change does.
fn rebuild_us(size: u32, members: &[RingMember], budget: &Budget) -> Result<(f64, usize)> {
    let n = members.len() as u32;
    let mut ring = MaglevRing::new(size)?;
    let mut sets = (0u32..).map(|i| {
        if i % 2 == 0 {
            members.to_vec()
        } else {
            without(members, (i / 2) % n)
        }
    });
    for set in sets.by_ref().take(4) {
        black_box(ring.rebuild(&set)?);
    }
    let mut samples = Vec::new();
    let started = Instant::now();
    while (started.elapsed() < budget.rebuild || samples.len() < budget.min_rebuilds)
        && samples.len() < 100_000
    {
        let set = sets.next().context("endless iterator ended")?;
        let t = Instant::now();
        let delta = ring.rebuild(black_box(&set))?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        black_box(delta);
    }
    Ok((median(&samples), samples.len()))
}

/// Mean number of slots whose owner changes when one backend leaves, over `victims` evenly
/// spread choices of the one that leaves.
fn slots_moved(size: u32, members: &[RingMember], victims: u32) -> Result<f64> {
    let n = members.len() as u32;
    let mut full = MaglevRing::new(size)?;
    full.rebuild(members)?;
    let victims = victims.clamp(1, n);
    let mut total = 0usize;
    for v in 0..victims {
        let id = members[(v * n / victims) as usize].id;
        let mut after = MaglevRing::new(size)?;
        after.rebuild(&without(members, id))?;
        let moved = full
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|(a, b)| a != b)
            .count();
        total += moved;
    }
    Ok(total as f64 / f64::from(victims))
}

/// The largest backend's slot count over the even share `size / n`.
fn max_share_vs_ideal(size: u32, members: &[RingMember]) -> Result<f64> {
    let mut ring = MaglevRing::new(size)?;
    ring.rebuild(members)?;
    let mut counts = vec![0u32; members.len()];
    for &id in ring.slots() {
        counts[id as usize] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    Ok(f64::from(max) / (f64::from(size) / members.len() as f64))
}

/// Nanoseconds per `MaglevRing::lookup` of a random flow hash.
fn lookup_ns(size: u32, members: &[RingMember], budget: &Budget) -> Result<f64> {
    let mut ring = MaglevRing::new(size)?;
    ring.rebuild(members)?;
    // Precomputed hashes (xorshift32), so the loop times the lookup and not the generator.
    let mut x = 0x9e37_79b9u32;
    let hashes: Vec<u32> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect();
    let mut acc = 0u32;
    let mut done = 0u64;
    let started = Instant::now();
    while started.elapsed() < budget.lookup {
        for &h in &hashes {
            acc ^= ring.lookup(black_box(h));
        }
        done += hashes.len() as u64;
    }
    black_box(acc);
    Ok(started.elapsed().as_secs_f64() * 1e9 / done as f64)
}

/// The smallest prime at or above `n`.
fn prime_at_least(n: u32) -> u32 {
    (n..).find(|&p| is_prime(p)).unwrap_or(n)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let size = args.ring_size;
    MaglevRing::new(size).with_context(|| format!("--ring-size {size}"))?;
    if let Some(&n) = BACKENDS
        .iter()
        .find(|&&n| u64::from(n) * u64::from(MIN_SLOTS_PER_MEMBER) > u64::from(size))
    {
        bail!(
            "--ring-size {size} is too small for {n} backends (the ring needs {MIN_SLOTS_PER_MEMBER} \
             slots per backend); try {}",
            prime_at_least(n * 100)
        );
    }
    let budget = Budget::new(args.quick);
    let plan: Vec<f64> = BACKENDS
        .iter()
        .flat_map(|_| {
            [
                budget.rebuild.as_secs_f64() + 0.1,
                0.1 + f64::from(budget.victims) * 0.01,
            ]
        })
        .chain([budget.lookup.as_secs_f64()])
        .collect();
    let mut progress = Progress::new("maglev", plan);

    let mut cases = vec![Case::new("ring_size", f64::from(size), "slots", PEER)];
    let mut rebuilds = Vec::new();
    let mut rebuild_calls = Vec::new();
    for n in BACKENDS {
        let members = pool(n);
        progress.step(&format!("rebuild time, {n} backends, ring of {size}"));
        let (us, calls) = rebuild_us(size, &members, &budget)?;
        cases.push(Case::new(
            format!("rebuild_us_{n}_backends"),
            us,
            "µs",
            PEER,
        ));
        rebuilds.push((f64::from(n), us));
        rebuild_calls.push(calls);

        progress.step(&format!("slots moved when one of {n} backends leaves"));
        let moved = slots_moved(size, &members, budget.victims)?;
        let ideal = f64::from(size) / f64::from(n);
        cases.push(Case::new(
            format!("slots_moved_{n}_backends"),
            moved,
            "slots",
            PEER,
        ));
        cases.push(Case::new(
            format!("slots_moved_share_{n}_backends"),
            moved / f64::from(size) * 100.0,
            "% of ring",
            PEER,
        ));
        cases.push(Case::new(
            format!("slots_moved_vs_ideal_{n}_backends"),
            moved / ideal,
            "× ideal",
            PEER,
        ));
        cases.push(Case::new(
            format!("max_share_vs_ideal_{n}_backends"),
            max_share_vs_ideal(size, &members)?,
            "× ideal",
            PEER,
        ));
    }
    let lookup_n = BACKENDS[BACKENDS.len() - 1];
    progress.step(&format!("lookup, {lookup_n} backends"));
    cases.push(Case::new(
        format!("lookup_ns_{lookup_n}_backends"),
        lookup_ns(size, &pool(lookup_n), &budget)?,
        "ns/op",
        PEER,
    ));
    progress.finish();

    let largest = BACKENDS[BACKENDS.len() - 1];
    let per_backend = size / largest;
    let mut notes = vec![
        format!(
            "Ring of {size} slots{}. At {largest} backends that is {per_backend} slots each: above \
             the ring's floor of {MIN_SLOTS_PER_MEMBER}{}.",
            if size == DEFAULT_RING_SIZE {
                " (the default `balancer.ring_size`)"
            } else {
                ""
            },
            if per_backend < 100 {
                format!(
                    ", under the 100 the Maglev paper recommends (for that, `ring_size = {}`)",
                    prime_at_least(largest * 100)
                )
            } else {
                String::new()
            }
        ),
        format!(
            "rebuild_us: median of {} timed `MaglevRing::rebuild` calls (new table plus the delta \
             against the old one) after 4 warm-up calls; the calls alternate between all N \
             backends and N-1, a different one left out each time, so each returns a real delta.",
            rebuild_calls
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        format!(
            "slots_moved: slots whose owner differs between the ring of N backends and the ring \
             without one of them, mean over {} choices of the one removed. The ideal is size/N \
             (the leaver's own slots, which must move); vs_ideal = moved / ideal, 1.00 at best.",
            budget.victims
        ),
        "max_share_vs_ideal: the busiest backend's slots over size/N (1.00 is perfectly even)."
            .into(),
        "lookup_ns: `MaglevRing::lookup` (hash % size, one load) of precomputed random hashes."
            .into(),
        "No peer runs this scenario, so the ratio column is empty.".into(),
    ];
    if args.quick {
        notes.push("Quick run: shorter timing loops, fewer removals averaged.".into());
    }
    results::write(&args.out_dir, "maglev", args.quick, &cases, &notes)?;

    let chart = LineChart::new(
        &format!("Maglev ring rebuild, {size} slots"),
        "backends",
        "rebuild time (µs, median)",
    )
    .x_scale(Scale::Log)
    .series(PEER, rebuilds);
    let svg = args.out_dir.join("maglev.svg");
    plot::write_svg(&svg, &chart.to_svg())?;
    println!("plot: {}", svg.display());
    Ok(())
}
