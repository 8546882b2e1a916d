//! The health probes' answer parsing on an arbitrary JSON-RPC answer body, as a node sends it
//! to `get_dynamic_global_properties` / `get_global_properties`: JSON, then `result_of`,
//! `parse_dgp` (which parses both chain times), `parse_params`, and the rules applied to what
//! was parsed (`judge` with the answer's own chain parameters, whatever they are).
//! Also: every chain time the parser accepts formats back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::{
    chain::{format_chain_time, parse_chain_time, ChainParams},
    health::{
        checks::{parse_dgp, parse_params, result_of},
        rules::{judge, RuleConfig},
    },
};
use serde_json::Value;

fn chain_time_round_trip(s: &str) {
    if let Ok(t) = parse_chain_time(s) {
        assert_eq!(
            format_chain_time(t),
            s,
            "accepted chain time does not format back"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(result) = result_of(answer) else {
        return;
    };
    for field in ["time", "next_maintenance_time"] {
        if let Some(s) = result.get(field).and_then(Value::as_str) {
            chain_time_round_trip(s);
        }
    }
    let params = parse_params(&result).ok();
    // The local clock at the answer: the head's own time give or take a few blocks, or far
    // off, picked by the answer's length so every case gets tried.
    let head = result
        .get("time")
        .and_then(Value::as_str)
        .and_then(|s| parse_chain_time(s).ok())
        .unwrap_or(0);
    let observed_at = match data.len() % 4 {
        0 => head,
        1 => head.saturating_add(7),
        2 => head.saturating_sub(400),
        _ => i64::MAX - (data.len() as i64),
    };
    if let Ok(sample) = parse_dgp(&result, observed_at) {
        let params = params.unwrap_or(ChainParams::BITSHARES_MAINNET);
        let cfg = RuleConfig::for_chain(&params);
        for best in [
            None,
            Some(sample.head_block_number),
            Some(sample.head_block_number.wrapping_add(u64::MAX / 2)),
        ] {
            let _ = judge(&params, &cfg, &sample, best);
        }
    }
});
