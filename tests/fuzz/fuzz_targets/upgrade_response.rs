//! The node's `101` check (`proxy::handshake::check_upgrade_response`) on arbitrary backend
//! bytes: no panic, an accepted head lies within the buffer, and a prefix never contradicts
//! the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::handshake::{accept_key, check_upgrade_response};

/// The RFC 6455 example key; the seed corpus carries its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let whole = check_upgrade_response(data, KEY);
    if let Ok(Some(n)) = whole {
        assert!(
            n <= data.len(),
            "head of {n} bytes in a buffer of {}",
            data.len()
        );
        let head = String::from_utf8_lossy(&data[..n]);
        assert!(
            head.contains(&accept_key(KEY)),
            "accepted without the accept value"
        );
    }
    let cut = data.first().map_or(0, |&b| usize::from(b) * 31) % (data.len() + 1);
    let part = check_upgrade_response(&data[..cut], KEY);
    assert!(
        part == Ok(None) || part == whole || (part.is_ok() && whole.is_ok()),
        "prefix of {cut} bytes gave {part:?}, the whole {whole:?}"
    );
});
