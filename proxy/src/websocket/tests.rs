use super::*;

/// RFC 6455 §5.7's masking key.
const KEY: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

/// RFC 6455 §5.7's examples: (description, bytes, fin, opcode, mask, payload).
#[expect(clippy::type_complexity, reason = "a plain table")]
#[rustfmt::skip]
const RFC_EXAMPLES: &[(&str, &[u8], bool, Opcode, Option<[u8; 4]>, &[u8])] = &[
    ("unmasked text", b"\x81\x05Hello", true, Opcode::Text, None, b"Hello"),
    ("masked text", b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", true, Opcode::Text, KEY, b"Hello"),
    ("first fragment", b"\x01\x03Hel", false, Opcode::Text, None, b"Hel"),
    ("last fragment", b"\x80\x02lo", true, Opcode::Continuation, None, b"lo"),
    ("unmasked ping", b"\x89\x05Hello", true, Opcode::Ping, None, b"Hello"),
    ("masked pong", b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", true, Opcode::Pong, KEY, b"Hello"),
];

#[test]
fn rfc_examples_parse_and_encode_to_the_same_bytes() {
    for &(what, bytes, fin, opcode, mask, payload) in RFC_EXAMPLES {
        let f = parse_frame(bytes, 1 << 20)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: incomplete"));
        assert_eq!(
            (f.header.fin, f.header.opcode, f.header.mask),
            (fin, opcode, mask),
            "{what}"
        );
        assert_eq!(f.len(), bytes.len(), "{what}");
        assert_eq!(f.payload_unmasked(bytes), payload, "{what}");
        let mut out = Vec::new();
        encode_frame(&mut out, fin, opcode, payload, mask);
        assert_eq!(out, bytes, "{what}");
    }
}

#[test]
fn rfc_length_examples() {
    // 256 bytes: 16-bit length; 64 KiB: 64-bit length.
    let mut out = Vec::new();
    encode_frame(&mut out, true, Opcode::Binary, &[0u8; 256], None);
    assert_eq!(out[..4], [0x82, 0x7e, 0x01, 0x00]);
    out.clear();
    encode_frame(&mut out, true, Opcode::Binary, &vec![0u8; 65536], None);
    assert_eq!(out[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
}

#[test]
fn every_length_encoding_round_trips_masked_and_unmasked() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70_000] {
        for mask in [None, Some([0xde, 0xad, 0xbe, 0xef])] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut buf = Vec::new();
            encode_frame(&mut buf, true, Opcode::Binary, &payload, mask);
            // Trailing bytes of the next frame do not belong to this one.
            buf.extend_from_slice(b"\x81\x00");
            let f = parse_frame(&buf, 1 << 20).unwrap().unwrap();
            assert_eq!(f.len(), buf.len() - 2, "len {len}");
            assert_eq!(f.header.payload_len, len as u64);
            assert_eq!(f.header.mask, mask);
            assert_eq!(f.payload_unmasked(&buf), payload, "len {len} {mask:?}");
            if mask.is_some() && len > 0 {
                assert_ne!(&buf[f.payload.clone()], payload.as_slice(), "not masked");
            }
        }
    }
}

#[test]
fn every_prefix_of_a_frame_needs_more_bytes() {
    for len in [3usize, 200, 66_000] {
        let mut buf = Vec::new();
        encode_frame(
            &mut buf,
            true,
            Opcode::Text,
            &vec![b'x'; len],
            Some([1, 2, 3, 4]),
        );
        // Byte by byte through the header, then a few cuts in the payload.
        let cuts = (0..20.min(buf.len())).chain([buf.len() / 2, buf.len() - 1]);
        for cut in cuts {
            assert_eq!(
                parse_frame(&buf[..cut], 1 << 20),
                Ok(None),
                "len {len} cut {cut}"
            );
        }
        assert!(parse_frame(&buf, 1 << 20).unwrap().is_some());
    }
    // The header alone is known before the payload arrives.
    let h = parse_header(&[0x82, 0x7e, 0x01, 0x00]).unwrap().unwrap();
    assert_eq!((h.payload_len, h.header_len, h.frame_len()), (256, 4, 260));
    assert_eq!(parse_header(&[0x82]), Ok(None));
    assert_eq!(parse_header(&[0x82, 0xfe, 0x01, 0x00, 1, 2, 3]), Ok(None));
}

#[test]
fn malformed_headers_are_protocol_errors() {
    use FrameError::*;
    let top_bit = 0x8000_0000_0000_0001;
    let too_large = TooLarge {
        len: 1 << 32,
        max: 1 << 20,
    };
    #[rustfmt::skip]
    let cases: &[(&str, &[u8], FrameError)] = &[
        ("RSV1 set", b"\xc1\x00", ReservedBits { byte: 0xc1 }),
        ("RSV3 set", b"\x92\x00", ReservedBits { byte: 0x92 }),
        ("opcode 3", b"\x83\x00", ReservedOpcode(3)),
        ("opcode 0xb", b"\x8b\x00", ReservedOpcode(0xb)),
        ("opcode 0xf, no FIN", b"\x0f\x00", ReservedOpcode(0xf)),
        ("fragmented ping", b"\x09\x00", FragmentedControl),
        ("fragmented close", b"\x08\x02\x03\xe8", FragmentedControl),
        ("ping, 16-bit length", b"\x89\x7e\x00\x7e", ControlTooLong(126)),
        ("close, 64-bit length", b"\x88\x7f", ControlTooLong(127)),
        ("16-bit length of 5", b"\x81\x7e\x00\x05", NonMinimalLength(5)),
        ("64-bit length of 200", b"\x82\x7f\0\0\0\0\0\0\0\xc8", NonMinimalLength(200)),
        ("64-bit top bit", b"\x82\x7f\x80\0\0\0\0\0\0\x01", NonMinimalLength(top_bit)),
        // Refused as soon as the header shows it, before the payload arrives.
        ("over the limit", b"\x82\x7f\0\0\0\x01\0\0\0\0", too_large),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(parse_frame(bytes, 1 << 20).as_ref(), Err(want), "{what}");
        // Errors show as soon as the header shows them: the same with more bytes after.
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(&[0u8; 16]);
        assert_eq!(
            parse_frame(&longer, 1 << 20).as_ref(),
            Err(want),
            "{what} + 16"
        );
    }
}

#[test]
fn close_payloads() {
    let mut out = Vec::new();
    encode_close(&mut out, close_code::GOING_AWAY, "shutting down", None);
    let f = parse_frame(&out, 125).unwrap().unwrap();
    assert_eq!((f.header.fin, f.header.opcode), (true, Opcode::Close));
    let payload = f.payload_unmasked(&out);
    assert_eq!(&payload[..2], &[0x03, 0xe9], "1001 big-endian");
    assert_eq!(parse_close(&payload), Ok(Some((1001, "shutting down"))));

    // A masked close from a client.
    out.clear();
    encode_close(
        &mut out,
        close_code::SERVICE_RESTART,
        "",
        Some([9, 8, 7, 6]),
    );
    let f = parse_frame(&out, 125).unwrap().unwrap();
    assert_eq!(parse_close(&f.payload_unmasked(&out)), Ok(Some((1012, ""))));

    // A long reason is cut to fit a control frame, at a character boundary.
    let long = "é".repeat(100);
    let p = close_payload(close_code::NORMAL, &long);
    assert!(p.len() <= MAX_CONTROL_PAYLOAD, "{}", p.len());
    assert_eq!(p.len(), 2 + 122, "61 two-byte characters");
    let (_, reason) = parse_close(&p).unwrap().unwrap();
    assert_eq!(reason, "é".repeat(61));
    out.clear();
    encode_close(&mut out, close_code::NORMAL, &long, None);
    assert!(parse_frame(&out, 125).unwrap().is_some());

    assert_eq!(parse_close(b""), Ok(None));
    for (payload, want) in [
        (&b"\x03"[..], FrameError::CloseTruncated),
        (b"\x03\xed", FrameError::InvalidCloseCode(1005)),
        (b"\x03\xee", FrameError::InvalidCloseCode(1006)),
        (b"\x03\xe7", FrameError::InvalidCloseCode(999)),
        (b"\x13\x88", FrameError::InvalidCloseCode(5000)),
        (b"\x03\xe8\xff\xfe", FrameError::CloseReasonNotUtf8),
    ] {
        assert_eq!(parse_close(payload), Err(want), "{payload:?}");
    }
    for ok in [1000, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999] {
        assert!(close_code::is_valid(ok), "{ok}");
    }
}

#[test]
fn cursor_finds_boundaries_across_any_split() {
    let mut stream = Vec::new();
    encode_frame(&mut stream, true, Opcode::Text, b"hello", None);
    let first = stream.len();
    encode_frame(&mut stream, false, Opcode::Binary, &[7u8; 300], None);
    let second = stream.len();
    encode_frame(
        &mut stream,
        true,
        Opcode::Continuation,
        &[1u8; 70_000],
        None,
    );
    let ends = [first, second, stream.len()];
    for split in [1usize, 2, 3, 13, 1000, stream.len()] {
        let mut c = FrameCursor::default();
        let mut seen = Vec::new();
        let mut at = 0;
        for chunk in stream.chunks(split) {
            assert_eq!(c.advance(chunk, false), chunk.len());
            at += chunk.len();
            if c.at_boundary() {
                seen.push(at);
            }
        }
        let expected: Vec<usize> = ends
            .iter()
            .copied()
            .filter(|e| e % split == 0 || *e == stream.len())
            .collect();
        assert_eq!(seen, expected, "split {split}");
    }
    // Stopping: from mid-frame, consume exactly to the end of the current frame.
    let mut c = FrameCursor::default();
    assert_eq!(c.advance(&stream[..4], false), 4);
    assert!(!c.at_boundary());
    assert_eq!(c.advance(&stream[4..], true), first - 4);
    assert!(c.at_boundary());
    assert_eq!(
        c.advance(&stream[first..], true),
        0,
        "already at a boundary"
    );
}

#[test]
fn cursor_gives_up_on_bytes_that_are_not_frames() {
    let mut c = FrameCursor::default();
    // Reserved bits set: not WebSocket framing.
    assert_eq!(c.advance(&[0xF1, 0x00, 1, 2], false), 4);
    assert!(!c.at_boundary());
    assert_eq!(c.advance(&[0x81, 0x00], true), 2);
    assert!(!c.at_boundary());
}
