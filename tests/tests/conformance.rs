//! RFC 6455 behaviour of the real binary that the Autobahn suite does not
//! pin down: exact payload-length boundaries up to the 16 MiB default limit,
//! UTF-8 split at every byte across frames, byte-by-byte delivery, the close
//! code table, control frames behind a large echo, and the TCP close that
//! must follow every close frame.

use std::io::{Read, Write};
use std::time::Duration;

use ringcast_e2e::{client_frame, tcp, Broker, RawWs};
use ringcast_proto::frame::OpCode;

/// The default `--max-message-size` (and `--max-frame-size`).
const MAX_MESSAGE: usize = 16 << 20;

/// `len` bytes of valid UTF-8 mixing 1-, 2-, 3- and 4-byte code points.
fn text_payload(len: usize) -> Vec<u8> {
    const UNIT: &str = "aé€𝄞"; // 1 + 2 + 3 + 4 bytes
    let mut s = String::with_capacity(len);
    while s.len() + UNIT.len() <= len {
        s.push_str(UNIT);
    }
    while s.len() < len {
        s.push('x');
    }
    assert_eq!(s.len(), len);
    s.into_bytes()
}

/// `len` bytes that are not a repeating short pattern (so a misplaced chunk
/// or a wrong mask phase shows up).
fn binary_payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

fn payload(opcode: OpCode, len: usize) -> Vec<u8> {
    match opcode {
        OpCode::Text => text_payload(len),
        _ => binary_payload(len),
    }
}

/// Compares without dumping megabytes on failure.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: echoed {} bytes, sent {}; first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

/// Reads the next frame and checks it is the unfragmented echo of `want`.
fn expect_echo(ws: &mut RawWs, opcode: OpCode, want: &[u8], what: &str) {
    let (fin, op, got) = ws
        .read_frame()
        .unwrap_or_else(|| panic!("{what}: connection closed instead of an echo"));
    assert!(fin, "{what}: echo must be one unfragmented frame");
    assert_eq!(op, opcode, "{what}: echo opcode");
    assert_same(&got, want, what);
}

/// Sends `data` as `parts` fragments (the first carries `opcode`, the rest
/// are continuations; the fragments may be empty).
fn send_fragmented(ws: &mut RawWs, opcode: OpCode, data: &[u8], parts: usize) {
    let step = data.len().div_ceil(parts).max(1);
    let mut chunks: Vec<&[u8]> = data.chunks(step).collect();
    while chunks.len() < parts {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        let op = if i == 0 { opcode } else { OpCode::Continuation };
        ws.send_frame(i == last, op, chunk);
    }
}

/// The next frame must be a close with `code`, and then the server must
/// end the TCP connection.
fn expect_close_then_eof(ws: &mut RawWs, code: u16, what: &str) {
    match ws.read_frame() {
        Some((true, OpCode::Close, p)) => {
            assert!(p.len() >= 2, "{what}: close frame without a code");
            let got = u16::from_be_bytes([p[0], p[1]]);
            assert_eq!(got, code, "{what}: close code (reason {:?})", {
                String::from_utf8_lossy(&p[2..])
            });
            assert!(
                std::str::from_utf8(&p[2..]).is_ok(),
                "{what}: close reason must be UTF-8"
            );
        }
        other => panic!("{what}: expected close {code}, got {other:?}"),
    }
    ws.expect_eof();
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn connect(broker: &Broker) -> RawWs {
    RawWs::connect(broker.addr, "/echo")
}

#[test]
fn echo_length_boundaries_single_and_fragmented() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    for opcode in [OpCode::Text, OpCode::Binary] {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 65537] {
            let data = payload(opcode, len);
            ws.send_frame(true, opcode, &data);
            expect_echo(&mut ws, opcode, &data, &format!("{opcode:?} {len} single"));
            for parts in [2, 3] {
                send_fragmented(&mut ws, opcode, &data, parts);
                expect_echo(
                    &mut ws,
                    opcode,
                    &data,
                    &format!("{opcode:?} {len} in {parts} fragments"),
                );
            }
        }
        // Fragments whose own lengths sit on the 7/16/64-bit boundaries
        // (text fragments split code points: that is allowed).
        let sizes = [0usize, 125, 126, 127, 65535, 65536];
        let data = payload(opcode, sizes.iter().sum());
        let mut at = 0;
        for (i, n) in sizes.iter().enumerate() {
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            ws.send_frame(i == sizes.len() - 1, op, &data[at..at + n]);
            at += n;
        }
        expect_echo(
            &mut ws,
            opcode,
            &data,
            &format!("{opcode:?} boundary-sized fragments"),
        );
    }
}

#[test]
fn echo_large_messages_1mib_and_4mib() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    for len in [1usize << 20, 4 << 20] {
        for opcode in [OpCode::Text, OpCode::Binary] {
            let data = payload(opcode, len);
            ws.send_frame(true, opcode, &data);
            expect_echo(&mut ws, opcode, &data, &format!("{opcode:?} {len} single"));
            send_fragmented(&mut ws, opcode, &data, 5);
            expect_echo(&mut ws, opcode, &data, &format!("{opcode:?} {len} x5"));
        }
    }
}

#[test]
fn echo_exactly_16mib_text() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    let data = text_payload(MAX_MESSAGE);
    ws.send_frame(true, OpCode::Text, &data);
    expect_echo(&mut ws, OpCode::Text, &data, "16 MiB text single frame");
    send_fragmented(&mut ws, OpCode::Text, &data, 16);
    expect_echo(&mut ws, OpCode::Text, &data, "16 MiB text in 16 fragments");
}

#[test]
fn echo_exactly_16mib_binary() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    let data = binary_payload(MAX_MESSAGE);
    ws.send_frame(true, OpCode::Binary, &data);
    expect_echo(&mut ws, OpCode::Binary, &data, "16 MiB binary single frame");
    send_fragmented(&mut ws, OpCode::Binary, &data, 3);
    expect_echo(
        &mut ws,
        OpCode::Binary,
        &data,
        "16 MiB binary in 3 fragments",
    );
}

#[test]
fn utf8_split_at_every_byte_position_across_two_frames() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    let text = "κόσμε ok € 𝄞 ü中文🎉!".as_bytes();
    for cut in 0..=text.len() {
        ws.send_frame(false, OpCode::Text, &text[..cut]);
        ws.send_frame(true, OpCode::Continuation, &text[cut..]);
        expect_echo(&mut ws, OpCode::Text, text, &format!("cut at {cut}"));
    }
    // Three frames: every pair of cuts.
    for a in 0..=text.len() {
        for b in a..=text.len() {
            ws.send_frame(false, OpCode::Text, &text[..a]);
            ws.send_frame(false, OpCode::Continuation, &text[a..b]);
            ws.send_frame(true, OpCode::Continuation, &text[b..]);
        }
    }
    for a in 0..=text.len() {
        for b in a..=text.len() {
            expect_echo(&mut ws, OpCode::Text, text, &format!("cuts at {a},{b}"));
        }
    }
}

#[test]
fn chopped_delivery_one_byte_writes() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    let text = "héllo wörld € 𝄞".as_bytes();
    let medium = binary_payload(300); // 16-bit length header
    let big = text_payload(70_000); // 64-bit length header
    let mut wire = Vec::new();
    wire.extend(client_frame(true, OpCode::Text, text));
    wire.extend(client_frame(true, OpCode::Binary, &medium));
    // A fragmented text message with a ping between its fragments, cut
    // inside a code point.
    wire.extend(client_frame(false, OpCode::Text, &text[..2]));
    wire.extend(client_frame(true, OpCode::Ping, b"chopped"));
    wire.extend(client_frame(false, OpCode::Continuation, &text[2..14]));
    wire.extend(client_frame(true, OpCode::Continuation, &text[14..]));
    wire.extend(client_frame(true, OpCode::Text, &big[..70_000]));
    wire.extend(client_frame(
        true,
        OpCode::Close,
        &close_payload(1000, b"bye"),
    ));
    // Write from another thread so the echoes can be read concurrently.
    let mut stream = ws.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for b in wire {
            stream.write_all(&[b]).unwrap();
        }
    });
    expect_echo(&mut ws, OpCode::Text, text, "chopped text");
    expect_echo(&mut ws, OpCode::Binary, &medium, "chopped 300-byte binary");
    assert_eq!(
        ws.read_frame(),
        Some((true, OpCode::Pong, b"chopped".to_vec())),
        "pong for the chopped ping"
    );
    expect_echo(&mut ws, OpCode::Text, text, "chopped fragmented text");
    expect_echo(&mut ws, OpCode::Text, &big, "chopped 70000-byte text");
    expect_close_then_eof(&mut ws, 1000, "chopped close");
    writer.join().unwrap();
}

#[test]
fn many_pipelined_messages_echo_in_order() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    let mut wire = Vec::new();
    for i in 0..2000u32 {
        let op = if i % 2 == 0 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        wire.extend(client_frame(true, op, format!("message {i}").as_bytes()));
    }
    ws.send_raw(&wire);
    for i in 0..2000u32 {
        let op = if i % 2 == 0 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        expect_echo(&mut ws, op, format!("message {i}").as_bytes(), "pipelined");
    }
}

#[test]
fn frames_in_the_same_write_as_the_upgrade_request() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut s = tcp(broker.addr);
    let mut wire = format!(
        "GET /echo HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        broker.addr
    )
    .into_bytes();
    wire.extend(client_frame(true, OpCode::Text, b"early"));
    wire.extend(client_frame(true, OpCode::Close, &close_payload(1000, b"")));
    s.write_all(&wire).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("server must close after the close reply");
    let text = String::from_utf8_lossy(&got);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    let frames = &got[head.len() + 4..];
    assert_eq!(frames, b"\x81\x05early\x88\x02\x03\xe8", "{text:?}");
}

#[test]
fn invalid_utf8_closes_1007_then_eof() {
    let broker = Broker::start(&["--shards", "1"]);
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "single frame",
            vec![client_frame(true, OpCode::Text, b"abc\xffdef")],
        ),
        (
            "overlong encoding",
            vec![client_frame(true, OpCode::Text, b"\xc0\xaf")],
        ),
        (
            "UTF-16 surrogate",
            vec![client_frame(true, OpCode::Text, b"\xed\xa0\x80")],
        ),
        (
            "above U+10FFFF",
            vec![client_frame(true, OpCode::Text, b"\xf4\x90\x80\x80")],
        ),
        (
            "code point cut at the end of the message",
            vec![client_frame(true, OpCode::Text, b"ab\xe2\x82")],
        ),
        (
            "cut code point at the end of fragmented message",
            vec![
                client_frame(false, OpCode::Text, b"ok \xf0\x9d"),
                client_frame(true, OpCode::Continuation, b"\x84"),
            ],
        ),
        (
            // Fail fast: the message is never finished, yet 1007 arrives.
            "invalid byte in an unfinished fragmented message",
            vec![client_frame(false, OpCode::Text, b"\xce\xba\xff")],
        ),
        (
            "invalid byte in a continuation",
            vec![
                client_frame(false, OpCode::Text, b"fine"),
                client_frame(true, OpCode::Continuation, b"\x80"),
            ],
        ),
    ];
    for (what, frames) in cases {
        let mut ws = connect(&broker);
        for f in frames {
            ws.send_raw(&f);
        }
        expect_close_then_eof(&mut ws, 1007, what);
    }
    // Fail fast inside one frame: only the first part of its payload (with
    // the bad byte) is sent; the close must come without the rest.
    let mut ws = connect(&broker);
    let mut text = b"valid prefix \xff ".to_vec();
    text.extend(vec![b'a'; 100_000]);
    let frame = client_frame(true, OpCode::Text, &text);
    ws.send_raw(&frame[..4096]);
    expect_close_then_eof(&mut ws, 1007, "invalid byte early in a partly sent frame");
}

#[test]
fn valid_close_codes_are_echoed_then_tcp_closed() {
    let broker = Broker::start(&["--shards", "1"]);
    for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 3000, 4000, 4999] {
        let mut ws = connect(&broker);
        ws.send_frame(true, OpCode::Text, b"before");
        expect_echo(&mut ws, OpCode::Text, b"before", "before close");
        ws.send_frame(true, OpCode::Close, &close_payload(code, b"a reason"));
        // Anything after our close must be ignored (never echoed).
        ws.send_frame(true, OpCode::Text, b"after close");
        expect_close_then_eof(&mut ws, code, &format!("close {code}"));
    }
    // An empty close gets an empty close.
    let mut ws = connect(&broker);
    ws.send_frame(true, OpCode::Close, b"");
    assert_eq!(ws.read_frame(), Some((true, OpCode::Close, vec![])));
    ws.expect_eof();
    // A 123-byte UTF-8 reason (the most a close frame can carry).
    let mut ws = connect(&broker);
    let reason = "é".repeat(61) + "x";
    assert_eq!(reason.len(), 123);
    ws.send_frame(true, OpCode::Close, &close_payload(1000, reason.as_bytes()));
    expect_close_then_eof(&mut ws, 1000, "close with 123-byte reason");
}

#[test]
fn invalid_close_codes_get_1002() {
    let broker = Broker::start(&["--shards", "1"]);
    for code in [
        0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut ws = connect(&broker);
        ws.send_frame(true, OpCode::Close, &close_payload(code, b""));
        expect_close_then_eof(&mut ws, 1002, &format!("close code {code}"));
    }
}

#[test]
fn one_byte_close_payload_gets_1002() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    ws.send_frame(true, OpCode::Close, b"\x03");
    expect_close_then_eof(&mut ws, 1002, "1-byte close payload");
}

#[test]
fn close_reason_not_utf8_gets_1007() {
    let broker = Broker::start(&["--shards", "1"]);
    for reason in [&b"\xff\xfe"[..], b"ok\xc3", b"\xed\xbf\xbf"] {
        let mut ws = connect(&broker);
        ws.send_frame(true, OpCode::Close, &close_payload(1000, reason));
        expect_close_then_eof(&mut ws, 1007, &format!("reason {reason:?}"));
    }
}

#[test]
fn ping_gets_pong_with_the_same_payload() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    let max: Vec<u8> = (0..125u8).collect();
    for p in [&b""[..], b"hello", b"\x00\xff binary \x80", &max] {
        ws.send_frame(true, OpCode::Ping, p);
        assert_eq!(
            ws.read_frame(),
            Some((true, OpCode::Pong, p.to_vec())),
            "ping {p:?}"
        );
    }
    // Between the fragments of a message: the pong comes first, the
    // message is still assembled.
    ws.send_frame(false, OpCode::Binary, b"frag");
    ws.send_frame(true, OpCode::Ping, b"mid");
    ws.send_frame(false, OpCode::Continuation, b"men");
    ws.send_frame(true, OpCode::Ping, b"mid2");
    ws.send_frame(true, OpCode::Continuation, b"ted");
    assert_eq!(ws.read_frame(), Some((true, OpCode::Pong, b"mid".to_vec())));
    assert_eq!(
        ws.read_frame(),
        Some((true, OpCode::Pong, b"mid2".to_vec()))
    );
    expect_echo(
        &mut ws,
        OpCode::Binary,
        b"fragmented",
        "message around pings",
    );
}

#[test]
fn unsolicited_pong_is_ignored() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    ws.send_frame(true, OpCode::Pong, b"nobody asked");
    ws.send_frame(true, OpCode::Pong, b"");
    ws.send_frame(false, OpCode::Text, b"still ");
    ws.send_frame(true, OpCode::Pong, b"mid-message");
    ws.send_frame(true, OpCode::Continuation, b"working");
    // The first frame back is the echo: no reply to the pongs, no close.
    expect_echo(&mut ws, OpCode::Text, b"still working", "after pongs");
    ws.send_frame(true, OpCode::Ping, b"p");
    assert_eq!(ws.read_frame(), Some((true, OpCode::Pong, b"p".to_vec())));
}

/// A masked frame with RSV bits set.
fn frame_with_rsv(rsv: u8, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut f = client_frame(true, opcode, payload);
    f[0] |= rsv << 4;
    f
}

#[test]
fn protocol_errors_close_1002_then_eof() {
    let broker = Broker::start(&["--shards", "1"]);
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("unmasked text".into(), b"\x81\x05hello".to_vec()),
        ("unmasked ping".into(), b"\x89\x00".to_vec()),
        ("unmasked close".into(), b"\x88\x02\x03\xe8".to_vec()),
        (
            "RSV1".into(),
            frame_with_rsv(0b100, OpCode::Text, b"compressed?"),
        ),
        ("RSV2".into(), frame_with_rsv(0b010, OpCode::Binary, b"x")),
        ("RSV3".into(), frame_with_rsv(0b001, OpCode::Binary, b"x")),
        (
            "RSV on ping".into(),
            frame_with_rsv(0b111, OpCode::Ping, b""),
        ),
        (
            "continuation without a message".into(),
            client_frame(true, OpCode::Continuation, b"orphan"),
        ),
        (
            "non-final continuation without a message".into(),
            client_frame(false, OpCode::Continuation, b"orphan"),
        ),
        (
            "text inside a fragmented text message".into(),
            [
                client_frame(false, OpCode::Text, b"a"),
                client_frame(true, OpCode::Text, b"b"),
            ]
            .concat(),
        ),
        (
            "binary inside a fragmented text message".into(),
            [
                client_frame(false, OpCode::Text, b"a"),
                client_frame(false, OpCode::Continuation, b"b"),
                client_frame(true, OpCode::Binary, b"c"),
            ]
            .concat(),
        ),
        (
            "continuation after a finished message".into(),
            [
                client_frame(true, OpCode::Text, b"done"),
                client_frame(true, OpCode::Continuation, b"more"),
            ]
            .concat(),
        ),
        (
            "fragmented ping".into(),
            client_frame(false, OpCode::Ping, b"p"),
        ),
        (
            "fragmented close".into(),
            client_frame(false, OpCode::Close, b"\x03\xe8"),
        ),
        (
            "fragmented pong".into(),
            client_frame(false, OpCode::Pong, b""),
        ),
        (
            "ping with 126 bytes".into(),
            client_frame(true, OpCode::Ping, &[b'p'; 126]),
        ),
        (
            "close with 126 bytes".into(),
            client_frame(true, OpCode::Close, &close_payload(1000, &[b'r'; 124])),
        ),
        (
            "pong with 16-bit length 125".into(),
            // Header only: 16-bit length on a control frame.
            vec![0x8a, 0xfe, 0x00, 0x7d, key[0], key[1], key[2], key[3]],
        ),
        (
            "16-bit length that fits in 7 bits".into(),
            vec![0x82, 0xfe, 0x00, 0x05, key[0], key[1], key[2], key[3]],
        ),
        (
            "64-bit length that fits in 16 bits".into(),
            vec![
                0x82, 0xff, 0, 0, 0, 0, 0, 0, 0x01, 0x00, key[0], key[1], key[2], key[3],
            ],
        ),
        (
            "64-bit length with the top bit set".into(),
            vec![
                0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0x10, key[0], key[1], key[2], key[3],
            ],
        ),
    ];
    for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        cases.push((
            format!("reserved opcode {op}"),
            vec![0x80 | op, 0x80, key[0], key[1], key[2], key[3]],
        ));
    }
    for (what, bytes) in cases {
        let mut ws = connect(&broker);
        ws.send_raw(&bytes);
        // "continuation after a finished message" gets its echo first.
        if what.starts_with("continuation after") {
            expect_echo(&mut ws, OpCode::Text, b"done", &what);
        }
        expect_close_then_eof(&mut ws, 1002, &what);
    }
}

#[test]
fn reserved_opcode_inside_a_fragmented_message_is_1002() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    ws.send_frame(false, OpCode::Binary, b"start");
    ws.send_raw(&[0x83, 0x80, 1, 2, 3, 4]);
    expect_close_then_eof(&mut ws, 1002, "reserved opcode mid-message");
}

#[test]
fn server_closes_tcp_after_close_handshake_even_if_client_keeps_it_open() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    ws.send_frame(true, OpCode::Close, &close_payload(1000, b"done"));
    // We never shut our side down; the server still ends the connection.
    ws.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    expect_close_then_eof(&mut ws, 1000, "client-initiated close");
}

/// A frame as `RawWs::read_frame` returns it: (fin, opcode, payload).
type Frame = (bool, OpCode, Vec<u8>);

/// A 16 MiB binary message and `control` in one write, read back nothing
/// until both are sent: the large echo is queued and still being written
/// when `control` is processed. Returns the broker, the client, and the
/// frames that followed (the echo checked and removed), read until `stop`
/// frames arrived or the connection ended.
fn large_echo_then(control: &[u8], stop: usize) -> (Broker, RawWs, Vec<Frame>) {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = connect(&broker);
    let data = binary_payload(MAX_MESSAGE);
    let mut wire = client_frame(true, OpCode::Binary, &data);
    wire.extend_from_slice(control);
    ws.send_raw(&wire);
    ws.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut echoed = false;
    let mut others = Vec::new();
    while others.len() < stop {
        // read_frame panics when its read times out; say what that means.
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ws.read_frame()))
            .unwrap_or_else(|_| {
                panic!(
                    "nothing more within 5 s (echo seen: {echoed}, then {:?})",
                    others.iter().map(|f: &Frame| f.1).collect::<Vec<_>>()
                )
            });
        match next {
            Some((true, OpCode::Binary, p)) if !echoed => {
                assert_same(&p, &data, "large echo");
                echoed = true;
            }
            Some(frame) => others.push(frame),
            None => break,
        }
    }
    assert!(echoed, "the 16 MiB message was not echoed");
    (broker, ws, others)
}

#[test]
fn pong_is_not_lost_behind_a_large_echo() {
    let ping = client_frame(true, OpCode::Ping, b"still there?");
    let (_broker, _ws, frames) = large_echo_then(&ping, 1);
    assert_eq!(
        frames,
        vec![(true, OpCode::Pong, b"still there?".to_vec())],
        "the ping sent right after a 16 MiB message got no pong"
    );
}

#[test]
fn close_reply_is_not_lost_behind_a_large_echo() {
    let close = client_frame(true, OpCode::Close, &close_payload(1000, b""));
    let (_broker, mut ws, frames) = large_echo_then(&close, 1);
    assert_eq!(
        frames,
        vec![(true, OpCode::Close, 1000u16.to_be_bytes().to_vec())],
        "close sent right after a 16 MiB message: no close reply before EOF"
    );
    ws.expect_eof();
}

#[test]
fn protocol_error_close_is_not_lost_behind_a_large_echo() {
    let (_broker, mut ws, frames) = large_echo_then(b"\x81\x02hi", 1); // unmasked
    assert!(
        matches!(&frames[..], [(true, OpCode::Close, p)] if p.starts_with(&1002u16.to_be_bytes())),
        "unmasked frame right after a 16 MiB message: expected close 1002, got {:?}",
        frames.iter().map(|f| (f.1, f.2.len())).collect::<Vec<_>>()
    );
    ws.expect_eof();
}
