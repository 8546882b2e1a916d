//! `proxy check`: a nagios/icinga plugin over the running proxy's region view. Exit 0/1/2/3
//! (OK/WARNING/CRITICAL/UNKNOWN), one status line, perfdata after `|`. Pure: a view in, a
//! verdict out.

use super::page::RegionView;

/// Thresholds of `proxy check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Thresholds {
    /// Best head older than this many seconds in any pool: WARNING.
    #[arg(long, default_value_t = 15)]
    pub warn_head_age: i64,
    /// Best head older than this many seconds in any pool: CRITICAL.
    #[arg(long, default_value_t = 60)]
    pub crit_head_age: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            warn_head_age: 15,
            crit_head_age: 60,
        }
    }
}

/// Nagios plugin states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// The plugin's answer: status and the one line to print.
pub fn evaluate(view: &RegionView, t: &Thresholds) -> (Status, String) {
    let mut status = Status::Ok;
    let mut problems = Vec::new();
    let mut worst_age: Option<i64> = None;
    for p in &view.pools {
        let n = p.backends.len();
        if p.nodes_up == 0 && n > 0 {
            status = status.max(Status::Critical);
            problems.push(format!("{}: no node up", p.name));
        } else if p.nodes_up < n {
            status = status.max(Status::Warning);
            problems.push(format!("{}: {}/{} nodes up", p.name, p.nodes_up, n));
        }
        if p.chain_state == "halted" {
            status = status.max(Status::Critical);
            problems.push(format!("{}: {}", p.name, p.chain_note));
        } else if p.panic {
            status = status.max(Status::Warning);
            problems.push(format!("{}: below the panic threshold", p.name));
        }
        if let Some(age) = p.best_head_age_secs {
            worst_age = Some(worst_age.map_or(age, |w| w.max(age)));
            if age >= t.crit_head_age {
                status = status.max(Status::Critical);
                problems.push(format!("{}: best head {age} s old", p.name));
            } else if age >= t.warn_head_age {
                status = status.max(Status::Warning);
                problems.push(format!("{}: best head {age} s old", p.name));
            }
        }
    }
    let summary = if problems.is_empty() {
        format!(
            "{}/{} nodes up, best head {} old, {} clients",
            view.nodes_up,
            view.nodes,
            worst_age.map_or("unknown".into(), |a| format!("{a} s")),
            view.clients
        )
    } else {
        problems.join("; ")
    };
    let perf = format!(
        "nodes_up={};;;0;{} head_age={};{};{};0 clients={};;;0",
        view.nodes_up,
        view.nodes,
        worst_age.map_or("U".into(), |a| format!("{a}s")),
        t.warn_head_age,
        t.crit_head_age,
        view.clients
    );
    (
        status,
        format!("XDP-PROXY {} - {summary} | {perf}", status.word()),
    )
}

/// The line for a proxy that cannot be asked.
pub fn unknown(why: &str) -> (Status, String) {
    (Status::Unknown, format!("XDP-PROXY UNKNOWN - {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::page::{BackendView, PoolView, Quantiles};

    fn view(up: usize, n: usize, age: Option<i64>, chain: &str) -> RegionView {
        let backend = |i: usize| BackendView {
            name: format!("node-{i}"),
            state: if i < up { "up" } else { "down" }.into(),
            reason: String::new(),
            available: i < up,
            head_block: None,
            head_age_secs: age,
            lag_blocks: None,
            connect_ms: Quantiles::default(),
            health_rtt_ms: Quantiles::default(),
            clients: 2,
            in_state_secs: None,
        };
        RegionView {
            generated_at_unix: 0,
            clients: 2 * n as i64,
            nodes_up: up,
            nodes: n,
            pools: vec![PoolView {
                name: "eu".into(),
                chain_state: chain.into(),
                chain_note: "chain halted at block 7 for 95 s".into(),
                best_head_block: Some(7),
                best_head_age_secs: age,
                clients: 2 * n as i64,
                nodes_up: up,
                panic: false,
                backends: (0..n).map(backend).collect(),
            }],
        }
    }

    #[test]
    fn states_follow_nodes_up_head_age_and_halts() {
        let t = Thresholds::default();
        let (s, line) = evaluate(&view(3, 3, Some(2), "advancing"), &t);
        assert_eq!(s, Status::Ok);
        assert_eq!(
            line,
            "XDP-PROXY OK - 3/3 nodes up, best head 2 s old, 6 clients | nodes_up=3;;;0;3 head_age=2s;15;60;0 clients=6;;;0"
        );
        assert_eq!(
            evaluate(&view(2, 3, Some(2), "advancing"), &t).0,
            Status::Warning
        );
        assert_eq!(
            evaluate(&view(3, 3, Some(20), "advancing"), &t).0,
            Status::Warning
        );
        assert_eq!(
            evaluate(&view(3, 3, Some(60), "advancing"), &t).0,
            Status::Critical
        );
        assert_eq!(
            evaluate(&view(0, 3, Some(2), "advancing"), &t).0,
            Status::Critical
        );
        let (s, line) = evaluate(&view(3, 3, Some(95), "halted"), &t);
        assert_eq!(s, Status::Critical);
        assert!(line.contains("chain halted at block 7 for 95 s"), "{line}");
        let (s, line) = evaluate(&view(3, 3, None, "unknown"), &t);
        assert_eq!(s, Status::Ok);
        assert!(line.contains("head_age=U;15;60;0"), "{line}");
        assert_eq!(unknown("no socket").0 as i32, 3);
    }
}
