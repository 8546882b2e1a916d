//! The first-request validator (`proxy::handshake::inspect`) on arbitrary client bytes.
//!
//! Beyond "no panic": every rejection is a well-formed HTTP response with the decided status,
//! a decision covers no more bytes than it was given, and a prefix of the input never
//! contradicts the whole (it needs more, or decides the same; an acceptable request followed
//! by extra bytes may turn into a 400 only when the extra bytes arrive).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::handshake::{inspect, Decision, Limits};

/// Three sets of limits, picked by the first input byte: the defaults, tight ones, none.
fn limits(selector: u8) -> Limits {
    match selector % 3 {
        0 => Limits::default(),
        1 => Limits {
            max_head_bytes: 64,
            max_post_body: 4,
            allow_json_rpc_post: false,
            allowed_paths: vec![String::new(), "/stats".to_owned()],
        },
        _ => Limits {
            max_head_bytes: 0,
            max_post_body: 0,
            ..Limits::default()
        },
    }
}

fn assert_well_formed(bytes: &[u8], status: u16) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("rejection is not a complete HTTP response: {other:?}"),
    };
    assert_eq!(resp.code, Some(status), "rejection carries another status");
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .expect("rejection without Content-Length");
    assert_eq!(
        head_len + length,
        bytes.len(),
        "Content-Length does not match the body"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, buf)) = data.split_first() else {
        return;
    };
    let limits = limits(selector);
    let whole = inspect(buf, &limits);
    match &whole {
        Decision::Reject(r) => assert_well_formed(&r.response(), r.status),
        Decision::Upgrade { head_len, key, .. } => {
            assert_eq!(*head_len, buf.len());
            assert!(!key.is_empty());
        }
        Decision::JsonRpcPost {
            head_len,
            total_len,
            ..
        } => assert!(head_len <= total_len && *total_len == buf.len()),
        Decision::Stats { head_len, .. } => assert!(*head_len <= buf.len()),
        Decision::NeedMore => {}
    }
    // One prefix per input, at a place the fuzzer controls (the selector's high bits and
    // the length), so every cut point gets tried across the corpus.
    let cut = (usize::from(selector >> 2) * 7919) % (buf.len() + 1);
    let part = inspect(&buf[..cut], &limits);
    let pipelined = matches!(
        (&part, &whole),
        (
            Decision::Upgrade { .. } | Decision::JsonRpcPost { .. },
            Decision::Reject(r)
        ) if r.status == 400
    );
    assert!(
        part == Decision::NeedMore || part == whole || pipelined,
        "prefix of {cut} bytes decided {part:?}, the whole {} bytes {whole:?}",
        buf.len()
    );
});
