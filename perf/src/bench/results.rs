//! A scenario's results: `perf/results/<scenario>.json`
//! (`{"scenario":..,"machine":..,"cases":[{"name":..,"value":..,"unit":..,"peer":..,"ratio":..}]}`)
//! and the same cases as a markdown table (`<scenario>.md`, also printed).
//!
//! `peer` says who a figure belongs to (`xdp-proxy`, `haproxy`, `nftables`...); `ratio` is
//! this proxy's figure over that peer's for the same case (so > 1 is better for this proxy
//! when more is better), `null` on this proxy's own rows or where no peer figure exists.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::Serialize;

/// Where a bench writes when told nothing else: the committed results.
pub const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

/// One figure.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub peer: String,
    pub ratio: Option<f64>,
}

impl Case {
    pub fn new(name: impl Into<String>, value: f64, unit: &str, peer: &str) -> Self {
        Case {
            name: name.into(),
            value,
            unit: unit.into(),
            peer: peer.into(),
            ratio: None,
        }
    }

    pub fn ratio(mut self, ratio: Option<f64>) -> Self {
        self.ratio = ratio.filter(|r| r.is_finite());
        self
    }
}

#[derive(Serialize)]
struct Results<'a> {
    scenario: &'a str,
    machine: Machine,
    /// `true` for a `--quick` run (smaller, noisier).
    quick: bool,
    cases: &'a [Case],
}

/// The machine a run was measured on.
#[derive(Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub date: String,
}

impl Machine {
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            date,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{}, {} CPUs, Linux {}, {}",
            self.cpu, self.cpus, self.kernel, self.date
        )
    }
}

/// Writes `<dir>/<scenario>.json` and `<dir>/<scenario>.md` (the table under a heading and
/// the machine line, plus `notes` lines), prints the markdown, and returns the JSON path.
pub fn write(
    dir: &Path,
    scenario: &str,
    quick: bool,
    cases: &[Case],
    notes: &[String],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let machine = Machine::here();
    let md = markdown(scenario, &machine, quick, cases, notes);
    println!("\n{md}");
    let json = dir.join(format!("{scenario}.json"));
    let body = serde_json::to_string_pretty(&Results {
        scenario,
        machine,
        quick,
        cases,
    })?;
    std::fs::write(&json, body + "\n").with_context(|| format!("writing {}", json.display()))?;
    let md_path = dir.join(format!("{scenario}.md"));
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("results: {} and {}", json.display(), md_path.display());
    Ok(json)
}

/// The table: one row per case, in order.
pub fn markdown(
    scenario: &str,
    machine: &Machine,
    quick: bool,
    cases: &[Case],
    notes: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### `{scenario}`{}\n",
        if quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(s, "Measured on: {}.\n", machine.line());
    s.push_str("| case | peer | value | unit | this proxy / peer |\n");
    s.push_str("|---|---|---:|---|---:|\n");
    for c in cases {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            c.name,
            c.peer,
            format_value(c.value),
            c.unit,
            c.ratio.map_or("".into(), |r| format!("{r:.2}×"))
        );
    }
    if !notes.is_empty() {
        s.push('\n');
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// Thousands separated, at most a few significant decimals.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v.abs() >= 1000.0 {
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `ours / theirs` when both are positive (higher is better), else `None`.
pub fn ratio_higher_better(ours: f64, theirs: f64) -> Option<f64> {
    (ours > 0.0 && theirs > 0.0).then(|| ours / theirs)
}

/// `theirs / ours` when both are positive (lower is better, e.g. latency, bytes).
pub fn ratio_lower_better(ours: f64, theirs: f64) -> Option<f64> {
    (ours > 0.0 && theirs > 0.0).then(|| theirs / ours)
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_for_people() {
        assert_eq!(format_value(1_234_567.4), "1,234,567");
        assert_eq!(format_value(-12_000.0), "-12,000");
        assert_eq!(format_value(999.6), "1000");
        assert_eq!(format_value(42.25), "42.2");
        assert_eq!(format_value(0.5), "0.50");
        assert_eq!(format_value(f64::NAN), "-");
    }

    #[test]
    fn ratios_say_better_above_one() {
        assert_eq!(ratio_higher_better(200.0, 100.0), Some(2.0));
        assert_eq!(ratio_lower_better(2.0, 4.0), Some(2.0));
        assert_eq!(ratio_higher_better(0.0, 100.0), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn the_table_and_json_carry_every_case() {
        let dir = std::env::temp_dir().join(format!("bench-results-{}", std::process::id()));
        let cases = vec![
            Case::new("cycles_per_s", 5000.0, "1/s", "xdp-proxy"),
            Case::new("cycles_per_s", 2500.0, "1/s", "haproxy").ratio(Some(2.0)),
        ];
        let json = write(&dir, "demo", true, &cases, &["a note".into()]).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["scenario"], "demo");
        assert_eq!(v["cases"][1]["peer"], "haproxy");
        assert_eq!(v["cases"][1]["ratio"], 2.0);
        assert!(v["cases"][0]["ratio"].is_null());
        let md = std::fs::read_to_string(dir.join("demo.md")).unwrap();
        assert!(
            md.contains("| cycles_per_s | haproxy | 2,500 | 1/s | 2.00× |"),
            "{md}"
        );
        assert!(md.contains("- a note"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
