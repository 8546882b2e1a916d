//! The config loader (`Config::parse`, what `Config::load` and `check-config` run on a file's
//! text) on arbitrary text: it returns the config or an error, never panics, and every error
//! message it builds (TOML errors, semantic problems located by line and column) can be shown.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    // `Config::load` reads the file with `read_to_string`: text that is not UTF-8 never
    // reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            assert!(
                config.problems().is_empty(),
                "accepted a config with problems"
            );
            let _ = proxy::ebpf::LoadOptions::from_config(&config.balancer);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});
