//! The agent feed (`proxy::health::checks::parse_agent`) on an arbitrary body: no panic, and a
//! weight it accepts is a percentage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::health::checks::{parse_agent, AgentReport};

fuzz_target!(|data: &[u8]| {
    // The poller reads the body as text, replacing invalid UTF-8 (checks::agent).
    let body = String::from_utf8_lossy(data);
    if let Ok(AgentReport::WeightPercent(p)) = parse_agent(&body) {
        assert!(p <= 100, "weight {p}% accepted");
    }
});
