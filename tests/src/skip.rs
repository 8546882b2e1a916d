//! Skipping a test that cannot run here, counted as skipped rather than passed.
//!
//! The test harness has no runtime skip: a test that returns early reports `ok`. So every
//! skip goes through [`skipped`], which prints why and appends a line to the file named by
//! `PROXY_SKIP_LOG` (set by `cargo xtask test`), and `xtask` reports the skipped tests after
//! the run, apart from the passed ones.

use std::io::Write;

/// Env var naming the file skips are recorded in.
pub const SKIP_LOG_ENV: &str = "PROXY_SKIP_LOG";

/// Records that the current test (or a named part of it) is skipped, and why.
pub fn skipped(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("SKIPPED {test}: {why}");
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    // Several test binaries append at once: one short write per line keeps lines whole.
    let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_printed_and_recorded_with_the_test_name() {
        let log = std::env::temp_dir().join(format!("skip-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        // The only test of this crate that touches the environment.
        std::env::set_var(SKIP_LOG_ENV, &log);
        std::thread::Builder::new()
            .name("some::test".into())
            .spawn(|| skipped("no\tchromium\nhere"))
            .unwrap()
            .join()
            .unwrap();
        std::env::remove_var(SKIP_LOG_ENV);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "some::test\tno chromium here\n");
        let _ = std::fs::remove_file(&log);
    }
}
