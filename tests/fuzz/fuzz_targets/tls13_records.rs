//! Our TLS 1.3 record layer (`proxy::terminator::record`) on what a peer may send after the
//! handshake: well-formed records of any inner type (application data, alerts, KeyUpdates,
//! anything else), raw garbage, all cut into arbitrary pieces. No panic; what it delivers is
//! a prefix of the application data sent, in order; an error stops it for good; what it
//! sends back (KeyUpdates) opens cleanly on the peer's side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::terminator::record::{fuzz_pair, Opened};

fuzz_target!(|data: &[u8]| {
    let Some((&cipher, mut ops)) = data.split_first() else {
        return;
    };
    let (mut server, mut client) = fuzz_pair(cipher);
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    // Ops: [op, len, bytes...]
    let mut cuts = Vec::new();
    while let [op, len, rest @ ..] = ops {
        let n = usize::from(*len).min(rest.len());
        let (body, next) = rest.split_at(n);
        ops = next;
        match op % 6 {
            0 => {
                client.fuzz_send(23, body, &mut wire);
                sent.extend_from_slice(body);
            }
            1 => wire.extend_from_slice(body),
            2 => {
                if let Some((&kind, content)) = body.split_first() {
                    // Type 0 cannot be sent: zeros at the end are padding (RFC 8446 §5.4).
                    let kind = kind.max(1);
                    client.fuzz_send(kind, content, &mut wire);
                    if kind == 23 {
                        sent.extend_from_slice(content);
                    }
                }
            }
            3 => client.fuzz_send(
                22,
                &[24, 0, 0, 1, body.first().map_or(0, |b| b & 1)],
                &mut wire,
            ),
            4 => client.fuzz_send(21, &[1, 0], &mut wire),
            _ => cuts.extend(body.iter().map(|&b| usize::from(b) + 1)),
        }
    }
    let mut incoming = Vec::new();
    let mut out = Vec::new();
    let mut got = Vec::new();
    let mut at = 0;
    let mut cut = cuts.iter().cycle();
    while at < wire.len() {
        let n = cut
            .next()
            .copied()
            .unwrap_or(wire.len())
            .min(wire.len() - at);
        incoming.extend_from_slice(&wire[at..at + n]);
        at += n;
        match server.open(&mut incoming, &mut out, |p| got.extend_from_slice(p)) {
            Ok(Opened::NeedMore) => assert!(incoming.len() < 5 + (1 << 14) + 256),
            Ok(Opened::CloseNotify) | Err(_) => break,
        }
    }
    assert!(
        sent.starts_with(&got),
        "delivered {got:02x?} is not a prefix of what was sent, {sent:02x?}"
    );
    let mut back = Vec::new();
    let answer = client.open(&mut out, &mut Vec::new(), |p| back.extend_from_slice(p));
    assert_eq!(
        answer,
        Ok(Opened::NeedMore),
        "our KeyUpdates open on the peer"
    );
    assert!(back.is_empty() && out.is_empty());
});
