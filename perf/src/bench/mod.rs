//! What every `cargo xtask bench` scenario shares: the results file and table
//! ([`results`]), progress lines ([`progress`]), cleanup on Ctrl-C, SIGTERM and failure
//! ([`cleanup`]), and SVG plots ([`plot`]).

pub mod cleanup;
pub mod plot;
pub mod progress;
pub mod results;
