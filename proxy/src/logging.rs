//! Where and how the proxy logs: tracing events on stderr, as text or as one JSON object per
//! line, so the same binary suits a terminal, a log file, journald and a log shipper.
//! `RUST_LOG` filters as usual (default `info`).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The shape of log lines on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal, so files and
    /// journald get no escape codes.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields at
    /// the top level (spans under `span`/`spans`).
    Json,
}

/// Installs the process-wide subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // JSON never carries colour codes, whatever stderr is.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Reports the error that ends the process: `error: ...` on stderr in text mode (as before
/// logging existed), a JSON log line at level ERROR in JSON mode, so a shipper that parses
/// every line still gets it (also when `RUST_LOG` filters errors out: then without the
/// timestamp the subscriber would add).
pub fn fatal(format: LogFormat, error: &dyn std::fmt::Display) {
    match format {
        LogFormat::Text => eprintln!("error: {error:#}"),
        LogFormat::Json if tracing::enabled!(tracing::Level::ERROR) => {
            tracing::error!("{error:#}")
        }
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({ "level": "ERROR", "message": format!("{error:#}") })
        ),
    }
}
