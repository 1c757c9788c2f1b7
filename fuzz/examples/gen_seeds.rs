//! Writes the hand-written seeds, `seeds/<target>/hw-*`.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`
//!
//! Deterministic; rerun after changing it and commit the result. Seeds found
//! by fuzzing (named by their SHA-1, as libFuzzer names them) live next to
//! these and are not touched.

use std::fs;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::BytesMut;
use ringcast_proto::frame::{encode_frame, OpCode};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame, masked with `KEY` if `masked`.
fn frame(masked: bool, fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&mut out, fin, op, masked.then_some(KEY), payload);
    out.to_vec()
}

/// `[len][sizes]`, the chunk-plan prefix the targets read.
fn plan(sizes: &[u8]) -> Vec<u8> {
    assert!(sizes.len() <= 15);
    let mut v = vec![sizes.len() as u8];
    v.extend_from_slice(sizes);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

struct Out {
    root: &'static Path,
    count: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, data: Vec<u8>) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("hw-{name}")), data).unwrap();
        self.count += 1;
    }
}

const GOOD_REQ: &str = "GET /echo?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn http_head(o: &mut Out) {
    let t = "http_head";
    let dflt = 0x80u8;
    let req = GOOD_REQ.as_bytes();
    o.put(t, "upgrade-oneshot", cat(&[&[dflt], &plan(&[]), req]));
    o.put(t, "upgrade-bytewise", cat(&[&[dflt], &plan(&[1]), req]));
    o.put(
        t,
        "upgrade-ragged",
        cat(&[&[dflt], &plan(&[3, 1, 7, 0, 2, 40]), req]),
    );
    // The blank line straddling two reads, every way.
    for (i, cut) in [1usize, 2, 3].into_iter().enumerate() {
        let head = req.len() - cut;
        o.put(
            t,
            &format!("terminator-straddle-{i}"),
            cat(&[&[dflt], &plan(&[u8::try_from(head).unwrap(), 1]), req]),
        );
    }
    o.put(
        t,
        "origin-subprotocols",
        cat(&[
            &[dflt],
            &plan(&[]),
            GOOD_REQ
                .replace(
                    "\r\n\r\n",
                    "\r\nOrigin: https://OK.example\r\nSec-WebSocket-Protocol: x, chat\r\nSec-WebSocket-Protocol: ringcast.v1\r\n\r\n",
                )
                .as_bytes(),
        ]),
    );
    o.put(
        t,
        "origin-rejected",
        cat(&[
            &[dflt],
            &plan(&[]),
            GOOD_REQ
                .replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n")
                .as_bytes(),
        ]),
    );
    let variants: &[(&str, &str, &str)] = &[
        ("post", "GET", "POST"),
        ("http10", "HTTP/1.1", "HTTP/1.0"),
        ("no-host", "Host: example.com\r\n", ""),
        ("version-8", "Version: 13", "Version: 8"),
        ("bad-key", "dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
        (
            "key-not-b64",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "!!!!!!!!!!!!!!!!!!!!!!!!",
        ),
        (
            "two-keys",
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version",
        ),
        (
            "two-versions",
            "\r\n\r\n",
            "\r\nsec-websocket-version: 13\r\n\r\n",
        ),
        ("no-upgrade", "Upgrade: websocket\r\n", ""),
        ("bare-lf", "\r\n", "\n"),
        ("http2-version", "HTTP/1.1", "HTTP/2.0"),
        (
            "tab-and-spaces",
            "Host: example.com",
            "Host:\t example.com \t",
        ),
        ("non-ascii-value", "keep-alive", "k\u{e9}\u{ff}ep"),
        (
            "absolute-target",
            "/echo?x=1",
            "http://example.com/echo?x=1",
        ),
    ];
    for (name, from, to) in variants {
        o.put(
            t,
            name,
            cat(&[
                &[dflt],
                &plan(&[]),
                GOOD_REQ.replacen(from, to, 1).as_bytes(),
            ]),
        );
    }
    o.put(
        t,
        "raw-latin1-value",
        cat(&[
            &[dflt],
            &plan(&[]),
            b"GET / HTTP/1.1\r\nHost: \xe9\xff\r\n\r\n",
        ]),
    );
    o.put(t, "leading-crlf", cat(&[&[dflt], &plan(&[]), b"\r\n", req]));
    o.put(
        t,
        "trailing-frames",
        cat(&[
            &[dflt],
            &plan(&[50]),
            req,
            b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
        ]),
    );
    o.put(
        t,
        "tls-hello",
        cat(&[
            &[dflt],
            &plan(&[]),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ]),
    );
    o.put(
        t,
        "tls-hello-trickled",
        cat(&[
            &[dflt],
            &plan(&[3]),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ]),
    );
    // Small limits: max_headers = 2, max_head = 16 << 3 = 128.
    o.put(
        t,
        "too-many-headers",
        cat(&[
            &[0x32],
            &plan(&[]),
            b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
        ]),
    );
    o.put(t, "too-large-trickled", cat(&[&[0x32], &plan(&[5]), req]));
    o.put(
        t,
        "too-large-no-end",
        cat(&[&[0x10], &plan(&[]), &[b'a'; 40]]),
    );
    o.put(
        t,
        "zero-headers-allowed",
        cat(&[&[0x30], &plan(&[]), b"GET / HTTP/1.1\r\n\r\n"]),
    );
    o.put(
        t,
        "obs-fold",
        cat(&[
            &[dflt],
            &plan(&[]),
            b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
        ]),
    );
}

fn client_handshake(o: &mut Out) {
    let t = "client_handshake";
    // cfg: bit0 offers ringcast.v1, bit1 offers chat, max_head = 64 << bits 2..4.
    let big = 4 << 2; // 1024
    let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n";
    o.put(t, "ok", cat(&[&[big], &plan(&[]), ok.as_bytes()]));
    o.put(t, "ok-bytewise", cat(&[&[big], &plan(&[1]), ok.as_bytes()]));
    o.put(
        t,
        "ok-then-frame",
        cat(&[&[big], &plan(&[20, 3]), ok.as_bytes(), b"\x81\x02hi"]),
    );
    let proto = ok.replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Protocol: ringcast.v1\r\n\r\n",
    );
    o.put(
        t,
        "protocol-offered",
        cat(&[&[big | 1], &plan(&[]), proto.as_bytes()]),
    );
    o.put(
        t,
        "protocol-not-offered",
        cat(&[&[big | 2], &plan(&[]), proto.as_bytes()]),
    );
    o.put(
        t,
        "protocol-non-utf8",
        cat(&[
            &[big | 3],
            &plan(&[]),
            ok.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: ")
                .as_bytes(),
            b"\xff\xfe\r\n\r\n",
        ]),
    );
    o.put(
        t,
        "bad-accept",
        cat(&[
            &[big],
            &plan(&[]),
            ok.replace("{accept}", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
                .as_bytes(),
        ]),
    );
    o.put(
        t,
        "no-upgrade",
        cat(&[
            &[big],
            &plan(&[]),
            ok.replace("Upgrade: websocket\r\n", "").as_bytes(),
        ]),
    );
    o.put(
        t,
        "tokens-and-case",
        cat(&[
            &[big],
            &plan(&[]),
            ok.replace("Upgrade\r\n", "keep-alive ,  UPGRADE\r\n")
                .replace("websocket", "WebSocket")
                .as_bytes(),
        ]),
    );
    o.put(
        t,
        "not-found",
        cat(&[
            &[big],
            &plan(&[]),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n",
        ]),
    );
    o.put(
        t,
        "bare-lf",
        cat(&[&[big], &plan(&[]), ok.replace("\r\n", "\n").as_bytes()]),
    );
    // max_head = 64: trickled in, the head is refused.
    o.put(
        t,
        "too-large-trickled",
        cat(&[&[0], &plan(&[16]), ok.as_bytes()]),
    );
    // Known issue: the same head in one read is accepted (RINGCAST_FUZZ_STRICT=1 flags it).
    o.put(
        t,
        "too-large-oneshot",
        cat(&[&[0], &plan(&[]), ok.as_bytes()]),
    );
    o.put(
        t,
        "garbage",
        cat(&[&[big], &plan(&[]), b"SSH-2.0-OpenSSH_9.6\r\n\r\n"]),
    );
    o.put(
        t,
        "status-999",
        cat(&[&[big], &plan(&[]), b"HTTP/1.1 999 X\r\n\r\n"]),
    );
}

fn frame_header(o: &mut Out) {
    let t = "frame_header";
    let cases: &[(&str, &[u8])] = &[
        ("text-5", b"\x81\x05"),
        ("masked", b"\x81\x85\x37\xfa\x21\x3d"),
        ("len16", b"\x82\x7e\x01\x00"),
        ("len16-masked", b"\x82\xfe\xff\xff\x01\x02\x03\x04"),
        ("len64", b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (
            "len64-max-masked",
            b"\x02\xff\x7f\xff\xff\xff\xff\xff\xff\xff\x01\x02\x03\x04",
        ),
        ("len64-msb", b"\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00"),
        ("len16-nonminimal", b"\x82\x7e\x00\x7d"),
        (
            "len64-nonminimal",
            b"\x82\x7f\x00\x00\x00\x00\x00\x00\xff\xff",
        ),
        ("ping-125", b"\x89\x7d"),
        ("ping-126", b"\x89\x7e\x00\x7e"),
        ("close-fragmented", b"\x08\x00"),
        ("reserved-opcode-3", b"\x83\x00"),
        ("reserved-opcode-f", b"\x8f\x00"),
        ("rsv-all", b"\xf1\x00"),
        ("continuation", b"\x00\x80\x00\x00\x00\x00"),
        ("one-byte", b"\x81"),
        ("truncated-len64", b"\x82\x7f\x00\x00"),
        ("truncated-mask", b"\x81\x80\x01\x02"),
    ];
    for (name, bytes) in cases {
        o.put(t, name, bytes.to_vec());
    }
}

fn websocket(o: &mut Out, t: &str, masked: bool) {
    use OpCode::*;
    let f = |fin, op, p: &[u8]| frame(masked, fin, op, p);
    // [flags][max_frame/4][max_message/4][plan][wire]; flags bit 3 = default limits.
    let dflt = |plan_: &[u8], wire: Vec<u8>| cat(&[&[0x08, 0, 0], &plan(plan_), &wire]);
    let small =
        |mf: u8, mm: u8, plan_: &[u8], wire: Vec<u8>| cat(&[&[0x00, mf, mm], &plan(plan_), &wire]);
    let with_byte0 = |mut v: Vec<u8>, f: &dyn Fn(u8) -> u8| {
        v[0] = f(v[0]);
        v
    };

    o.put(t, "text", dflt(&[], f(true, Text, "héllo".as_bytes())));
    o.put(
        t,
        "text-bytewise",
        dflt(&[1], f(true, Text, "héllo wörld €𝄞".as_bytes())),
    );
    o.put(
        t,
        "fragmented-with-ping",
        dflt(
            &[1, 2, 3, 5, 8],
            cat(&[
                &f(false, Text, b"frag"),
                &f(true, Ping, b"p"),
                &f(false, Continuation, b"men"),
                &f(true, Continuation, b"ted"),
                &f(true, Pong, b""),
                &f(true, Binary, &[0, 1, 2, 255]),
            ]),
        ),
    );
    let text = "κόσμε€𝄞!".as_bytes();
    o.put(
        t,
        "utf8-split-across-fragments",
        dflt(
            &[3],
            cat(&[
                &f(false, Text, &text[..3]),
                &f(false, Continuation, &text[3..14]),
                &f(true, Continuation, &text[14..]),
            ]),
        ),
    );
    o.put(
        t,
        "empty-fragments",
        dflt(
            &[],
            cat(&[
                &f(false, Text, b""),
                &f(false, Continuation, b""),
                &f(true, Continuation, b""),
            ]),
        ),
    );
    o.put(
        t,
        "close-normal",
        dflt(
            &[1],
            cat(&[
                &f(true, Close, b"\x03\xe8bye"),
                &f(true, Text, b"after close"),
            ]),
        ),
    );
    o.put(t, "close-empty", dflt(&[], f(true, Close, b"")));
    o.put(t, "close-1-byte", dflt(&[], f(true, Close, b"\x03")));
    o.put(t, "close-1005", dflt(&[], f(true, Close, b"\x03\xed")));
    o.put(t, "close-4999", dflt(&[], f(true, Close, b"\x13\x87")));
    o.put(
        t,
        "close-bad-reason",
        dflt(&[], f(true, Close, b"\x03\xe8\xff\xfe")),
    );
    o.put(
        t,
        "invalid-utf8-fail-fast",
        dflt(
            &[1],
            f(false, Text, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xf4\x90\x80\x80"),
        ),
    );
    o.put(
        t,
        "invalid-utf8-oneshot",
        dflt(&[], f(true, Text, b"ok \xed\xa0\x80 surrogate")),
    );
    o.put(
        t,
        "utf8-cut-at-end",
        dflt(&[], f(true, Text, b"ab\xe2\x82")),
    );
    o.put(
        t,
        "rsv1",
        dflt(&[], with_byte0(f(true, Text, b"x"), &|b| b | 0x40)),
    );
    o.put(
        t,
        "reserved-opcode",
        dflt(&[], with_byte0(f(true, Binary, b"x"), &|_| 0x83)),
    );
    o.put(
        t,
        "unexpected-continuation",
        dflt(&[], f(true, Continuation, b"x")),
    );
    o.put(
        t,
        "expected-continuation",
        dflt(&[2], cat(&[&f(false, Text, b"a"), &f(true, Binary, b"b")])),
    );
    o.put(
        t,
        "ping-fragmented",
        dflt(&[], with_byte0(f(true, Ping, b""), &|b| b & 0x7f)),
    );
    o.put(
        t,
        "wrong-masking",
        dflt(&[], frame(!masked, true, Text, b"x")),
    );
    // max_frame = 100, max_message = 148.
    o.put(
        t,
        "frame-too-big",
        small(25, 37, &[], f(true, Binary, &[7; 101])),
    );
    o.put(
        t,
        "message-too-big",
        small(
            25,
            37,
            &[64],
            cat(&[
                &f(false, Binary, &[1; 100]),
                &f(true, Continuation, &[2; 51]),
            ]),
        ),
    );
    o.put(
        t,
        "len16-within-limits",
        small(255, 255, &[200, 1], f(true, Binary, &[9; 300])),
    );
    o.put(
        t,
        "zero-limits",
        small(0, 0, &[], cat(&[&f(true, Text, b""), &f(true, Ping, b"x")])),
    );
    // We close (flags bit 0) before piece 1, then the peer's ping and close arrive.
    o.put(
        t,
        "we-close-first",
        cat(&[
            &[0x08 | 0x01 | 0x10, 0, 0],
            &plan(&[6]),
            &f(true, Ping, b"p"),
            &f(true, Close, b"\x03\xe9"),
        ]),
    );
    // We ping (bit 1) and close (bit 0) before piece 0, then a protocol error.
    o.put(
        t,
        "we-ping-close-then-error",
        cat(&[
            &[0x08 | 0x03, 0, 0],
            &plan(&[]),
            &f(true, Continuation, b"x"),
        ]),
    );
    o.put(
        t,
        "we-ping",
        cat(&[
            &[0x08 | 0x02 | 0x20, 0, 0],
            &plan(&[4]),
            &f(true, Binary, b"0123456789"),
        ]),
    );
}

fn utf8(o: &mut Out) {
    let t = "utf8";
    let s = "ascii κόσμε €𝄞 中文 \u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}".as_bytes();
    o.put(t, "valid-oneshot", cat(&[&plan(&[]), s]));
    o.put(t, "valid-bytewise", cat(&[&plan(&[1]), s]));
    o.put(t, "valid-ragged", cat(&[&plan(&[2, 0, 3, 1, 5]), s]));
    let bad: &[(&str, &[u8])] = &[
        ("surrogate", b"\xce\xba\xed\xa0\x80edited"),
        ("above-10ffff", b"\xf4\x90\x80\x80"),
        ("overlong-2", b"\xc0\xaf"),
        ("overlong-3", b"\xe0\x80\xafabc"),
        ("overlong-4", b"\xf0\x8f\xbf\xbfxyz"),
        ("ff", b"\xff"),
        ("cut-at-end", b"ok\xe2\x82"),
        ("lone-continuation", b"a\x80b"),
        ("f5", b"\xf5\x80\x80\x80"),
    ];
    for (name, b) in bad {
        o.put(t, name, cat(&[&plan(&[1]), b]));
        o.put(t, &format!("{name}-oneshot"), cat(&[&plan(&[]), b]));
    }
    o.put(t, "empty", vec![]);
}

fn command(o: &mut Out) {
    let t = "command";
    let deep = format!(
        r#"{{"op":"publish","topic":"t","data":{}1{}}}"#,
        "[".repeat(130),
        "]".repeat(130)
    );
    let topic_255 = format!(r#"{{"op":"subscribe","topic":"{}"}}"#, "a".repeat(255));
    let topic_256 = format!(r#"{{"op":"subscribe","topic":"{}"}}"#, "a".repeat(256));
    let long_op = format!(r#"{{"op":"{}","id":"abc"}}"#, "é".repeat(40));
    let cases: &[(&str, &str)] = &[
        ("subscribe", r#"{"op":"subscribe","topic":"ticker.AAPL"}"#),
        (
            "subscribe-since-id",
            r#"{"op":"subscribe","topic":"ticker.AAPL","since":41,"id":7}"#,
        ),
        (
            "subscribe-since-null",
            r#"{"op":"subscribe","topic":"a:b-c_d.e","since":null,"id":"s"}"#,
        ),
        (
            "subscribe-since-max",
            r#"{"op":"subscribe","topic":"t","since":18446744073709551615}"#,
        ),
        (
            "subscribe-since-overflow",
            r#"{"op":"subscribe","topic":"t","since":18446744073709551616}"#,
        ),
        (
            "subscribe-since-float",
            r#"{"op":"subscribe","topic":"t","since":1e2}"#,
        ),
        (
            "subscribe-since-negative",
            r#"{"op":"subscribe","topic":"t","since":-1}"#,
        ),
        (
            "unsubscribe",
            r#"{"op":"unsubscribe","topic":"ticker.AAPL","id":"u-1"}"#,
        ),
        (
            "publish",
            r#"{ "data" : {"price": 187.310, "x":[1,2]} , "op":"publish","topic":"t"}"#,
        ),
        (
            "publish-null",
            r#"{"op":"publish","topic":"t","data":null,"id":-0.5e-3}"#,
        ),
        (
            "publish-string-escapes",
            r#"{"op":"publish","topic":"t","data":"\u0000\"\\\n\ud83d\ude00 é"}"#,
        ),
        ("publish-deep", &deep),
        // Known issue: accepted, relayed, refused by strict JSON parsers.
        (
            "publish-lone-surrogate",
            r#"{"op":"publish","topic":"t","data":"\ude00","id":"\ud800"}"#,
        ),
        ("publish-no-data", r#"{"op":"publish","topic":"t"}"#),
        (
            "escaped-op",
            r#"{"op":"\u0070ublish","topic":"t","data":1}"#,
        ),
        ("escaped-topic", r#"{"op":"subscribe","topic":"a\u002eb"}"#),
        ("topic-255", &topic_255),
        ("topic-256", &topic_256),
        (
            "topic-empty-segment",
            r#"{"op":"subscribe","topic":"a..b"}"#,
        ),
        ("topic-space", r#"{"op":"subscribe","topic":"a b","id":12}"#),
        ("topic-number", r#"{"op":"subscribe","topic":7}"#),
        ("unknown-op-long", &long_op),
        ("unknown-op-control", r#"{"op":"\u0001\u001f\"","id":1}"#),
        ("op-number", r#"{"op":5}"#),
        ("id-object", r#"{"op":"publish","topic":"t","id":{}}"#),
        ("id-huge", r#"{"op":"subscribe","topic":"t","id":1e400}"#),
        (
            "id-bigint",
            r#"{"op":"subscribe","topic":"t","id":123456789012345678901234567890}"#,
        ),
        (
            "duplicate-keys",
            r#"{"op":"subscribe","op":"publish","topic":"t"}"#,
        ),
        (
            "unknown-fields",
            r#"{"op":"subscribe","topic":"t","future":{"x":[1,{"y":null}]}}"#,
        ),
        ("empty-object", "{}"),
        ("array", "[1,2]"),
        ("number", "42"),
        ("not-json", "not json"),
        ("truncated", r#"{"op":"#),
        ("trailing", r#"{"op":"subscribe","topic":"t"} {}"#),
        (
            "whitespace",
            " \t\r\n{\n\"op\" : \"unsubscribe\" ,\"topic\":\"x\"}\n",
        ),
        ("bom", "\u{feff}{\"op\":\"subscribe\",\"topic\":\"t\"}"),
        ("empty", ""),
    ];
    for (name, text) in cases {
        o.put(t, name, text.as_bytes().to_vec());
    }
}

fn mask(o: &mut Out) {
    let t = "mask";
    // [key: 4][offset][align][split][bytes]
    for (name, off, align, split, len) in [
        ("empty", 0u8, 0u8, 0u8, 0usize),
        ("short", 1, 3, 2, 15),
        ("sixteen", 2, 0, 16, 16),
        ("odd-33", 3, 7, 17, 33),
        ("long-257", 5, 13, 100, 257),
        ("long-1000", 255, 31, 255, 1000),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        o.put(t, name, cat(&[&KEY, &[off, align, split], &data]));
    }
}

// ---------------------------------------------------------------------------
// engine: scenarios written as ops (`ringcast_fuzz::engine::encode`).

fn engine(o: &mut Out) {
    use ringcast_fuzz::engine::{encode, Kind, Op, Since};
    let t = "engine";
    let connect = |shard: u8, kind: Kind, topic: u8, since: Since| Op::Connect {
        shard,
        kind,
        topic,
        since,
        resume: None,
    };
    let sub = |client: u16, topic: u8, since: Since| Op::Subscribe {
        client,
        topic,
        since,
        id: true,
    };
    let publish = |client: u16, topic: u8, size: u16| Op::Publish {
        client,
        topic,
        id: true,
        size,
    };
    let http = |shard: u8, topic: u8, size: u16| Op::HttpPublish {
        shard,
        topic,
        token: true,
        size,
    };
    let mesh = || {
        vec![
            Op::Deliver {
                src: 0,
                dst: 1,
                n: 60,
            },
            Op::Deliver {
                src: 1,
                dst: 0,
                n: 60,
            },
            Op::Deliver {
                src: 0,
                dst: 1,
                n: 60,
            },
        ]
    };
    let write = |client: u16| Op::Write {
        client,
        max: 8,
        part: 0,
    };
    let writes = |clients: u16| {
        (0..clients)
            .flat_map(|c| [write(c), write(c), write(c)])
            .collect::<Vec<_>>()
    };
    let cat = |parts: Vec<Vec<Op>>| parts.concat();

    // Subscribers on both shards, publishes from both, all delivered.
    let ops = cat(vec![
        vec![
            connect(0, Kind::Ws, 0, Since::None),
            connect(1, Kind::Ws, 0, Since::None),
            sub(0, 0, Since::None),
            sub(1, 0, Since::None),
            sub(1, 1, Since::None),
        ],
        mesh(),
        vec![publish(0, 0, 10), publish(1, 1, 20), http(1, 0, 5)],
        mesh(),
        writes(2),
        vec![Op::Unsubscribe {
            client: 1,
            topic: 0,
            id: true,
        }],
        mesh(),
        vec![publish(0, 0, 3), sub(1, 0, Since::Last)],
        mesh(),
        writes(2),
    ]);
    o.put(t, "pubsub-two-shards", encode(0x00, 0x3f, &ops));

    // A resume into a small history: the gap, then the replay.
    let ops = cat(vec![
        (0..6).map(|i| http(i % 2, 2, 40 * i as u16)).collect(),
        mesh(),
        vec![
            connect(1, Kind::Ws, 0, Since::None),
            sub(0, 2, Since::Zero),
            sub(0, 0, Since::Value(3)),
        ],
        mesh(),
        writes(1),
        vec![sub(0, 1, Since::Value(u64::MAX))],
        mesh(),
        writes(1),
    ]);
    o.put(t, "resume-gap-replay", encode(0x00, 0x1f, &ops));

    // Disconnect: a client that never writes, closed with 1008.
    let ops = cat(vec![
        vec![
            connect(0, Kind::Ws, 0, Since::None),
            connect(1, Kind::Sse, 1, Since::None),
            sub(0, 1, Since::None),
        ],
        mesh(),
        (0..6).map(|_| http(1, 1, 90)).collect(),
        mesh(),
        vec![publish(0, 1, 5)],
        mesh(),
        writes(2),
    ]);
    o.put(t, "slow-disconnect", encode(0x00, 0x00, &ops));

    // Conflation with a bounded mesh: held messages and dropped
    // deliveries, noticed in order. Topic 0 is shard 1's; the subscriber
    // is on shard 0 and never writes.
    let one = || Op::Deliver {
        src: 1,
        dst: 0,
        n: 1,
    };
    let ops = cat(vec![
        vec![connect(0, Kind::Ws, 0, Since::None), sub(0, 0, Since::None)],
        mesh(),
        mesh(),
        // 1 is queued, 2 held.
        vec![http(1, 0, 30), one(), http(1, 0, 30), one()],
        // 3 waits in the mesh, 4 is dropped (a queue of one).
        vec![http(1, 0, 30), http(1, 0, 30), one()],
        // 5: the notice for 4 goes behind the held message.
        vec![http(1, 0, 30), one()],
        writes(1),
    ]);
    o.put(t, "conflate-mesh-drop", encode(0x03, 0x30, &ops));

    // Long-polling and SSE beside each other, with a resume.
    let ops = cat(vec![
        vec![
            http(0, 0, 8),
            http(1, 0, 8),
            connect(1, Kind::Poll, 0, Since::None),
            connect(0, Kind::Sse, 0, Since::Zero),
            Op::Poll {
                client: 0,
                topic: 0,
            },
        ],
        mesh(),
        vec![Op::PollAnswer { client: 0 }, http(0, 0, 8)],
        mesh(),
        vec![
            Op::Poll {
                client: 0,
                topic: 0,
            },
            http(1, 0, 8),
        ],
        mesh(),
        vec![
            Op::PollAnswer { client: 0 },
            write(1),
            write(1),
            Op::Connect {
                shard: 1,
                kind: Kind::Sse,
                topic: 0,
                since: Since::Last,
                resume: Some(1),
            },
        ],
        mesh(),
        writes(3),
    ]);
    o.put(t, "poll-and-sse", encode(0x02, 0x2f, &ops));

    // TTL and a small history budget: expiry, eviction, incarnations.
    let ops = cat(vec![
        (0..4).map(|i| http(0, i as u8, 120)).collect(),
        vec![
            Op::Advance { ms: 600 },
            http(1, 1, 120),
            Op::Advance { ms: 600 },
            Op::Timeout {
                shard: 0,
                early: false,
            },
            Op::Timeout {
                shard: 1,
                early: false,
            },
            connect(0, Kind::Ws, 0, Since::None),
            sub(0, 0, Since::Value(1)),
            sub(0, 1, Since::Zero),
        ],
        mesh(),
        writes(1),
        vec![
            Op::Advance { ms: 2000 },
            Op::Timeout {
                shard: 0,
                early: true,
            },
        ],
    ]);
    o.put(t, "ttl-budget", encode(0x60, 0xff, &ops));

    // Limits: two topics per shard, one subscription per connection.
    let ops = cat(vec![
        vec![
            connect(0, Kind::Ws, 0, Since::None),
            connect(1, Kind::Poll, 0, Since::None),
        ],
        (0..6).map(|i| http(i % 2, i, 4)).collect(),
        mesh(),
        (0..4).map(|i| sub(0, i, Since::None)).collect(),
        mesh(),
        vec![Op::Poll {
            client: 1,
            topic: 5,
        }],
        mesh(),
        writes(1),
        vec![Op::PollAnswer { client: 1 }],
    ]);
    o.put(t, "limits", encode(0x18, 0x3f, &ops));

    // A bounded mesh refuses: overloaded, for publishes and subscribes.
    let ops = cat(vec![
        vec![connect(1, Kind::Ws, 0, Since::None)],
        (0..6).map(|i| publish(0, i as u8, 2)).collect(),
        (0..3).map(|i| sub(0, i, Since::Zero)).collect(),
        mesh(),
        mesh(),
        writes(1),
    ]);
    o.put(t, "overloaded", encode(0x02, 0x3f, &ops));

    // The regressions of the engine's simulator (core/tests/sim/regress.rs),
    // as inputs. Topics 0 ("a") and 2 ("c:1") are shard 1's, 1 ("b.x") is
    // shard 0's.
    let d10 = || Op::Deliver {
        src: 1,
        dst: 0,
        n: 60,
    };
    let d01 = || Op::Deliver {
        src: 0,
        dst: 1,
        n: 60,
    };

    // A held poll with replayed messages, then a delivery the mesh drops:
    // the notice must not go in front of them.
    let ops = vec![
        http(1, 0, 5),
        http(1, 0, 5),
        connect(0, Kind::Poll, 0, Since::None),
        Op::Poll {
            client: 0,
            topic: 0,
        },
        d01(),
        d10(),
        http(1, 0, 5),
        http(1, 0, 5),
        d10(),
        http(1, 0, 5),
        d10(),
        Op::PollAnswer { client: 0 },
    ];
    o.put(t, "poll-mesh-drop", encode(0x02, 0x3f, &ops));

    // A long-poll answered (timeout) before its subscription went live,
    // then the next one: the stale answer must not resume it.
    let ops = vec![
        connect(0, Kind::Poll, 0, Since::None),
        Op::Poll {
            client: 0,
            topic: 0,
        },
        Op::PollAnswer { client: 0 },
        Op::Poll {
            client: 0,
            topic: 0,
        },
        http(1, 0, 5),
        d01(),
        d10(),
        Op::PollAnswer { client: 0 },
    ];
    o.put(t, "poll-stale-answer", encode(0x00, 0x3f, &ops));

    // An eager reader hands over a command while a subscribe waits for
    // its owner: it runs in turn once the answer is in.
    let ops = cat(vec![
        vec![
            connect(0, Kind::Ws, 0, Since::None),
            sub(0, 0, Since::None),
            Op::Unsubscribe {
                client: 0,
                topic: 0,
                id: true,
            },
            publish(0, 1, 3),
            d01(),
            d10(),
        ],
        writes(1),
    ]);
    o.put(t, "eager-behind-subscribe", encode(0x80, 0x3f, &ops));

    // Disconnect: the client's own publish does not fit; its `published`
    // reply and a later resume must not follow the close.
    let ops = cat(vec![
        vec![connect(1, Kind::Ws, 0, Since::None), sub(0, 0, Since::None)],
        (0..3).map(|_| publish(0, 0, 100)).collect(),
        vec![sub(0, 2, Since::Zero)],
        writes(1),
    ]);
    o.put(t, "slow-own-publish", encode(0x00, 0x31, &ops));

    // The same while a resume waits for its owner.
    let ops = cat(vec![
        (0..3).map(|_| http(1, 0, 5)).collect(),
        vec![
            connect(0, Kind::Ws, 0, Since::None),
            sub(0, 1, Since::None),
            sub(0, 0, Since::Zero),
        ],
        (0..3).map(|_| http(0, 1, 150)).collect(),
        vec![d01(), d10()],
        writes(1),
    ]);
    o.put(t, "slow-pending-replay", encode(0x00, 0x31, &ops));

    // Conflation, two resumes, nothing written: the second replay's first
    // frame is held; its next, smaller one must not overtake it.
    let ops = cat(vec![
        vec![
            http(1, 0, 150),
            http(1, 2, 100),
            http(1, 2, 20),
            connect(1, Kind::Ws, 0, Since::None),
            sub(0, 0, Since::Zero),
            sub(0, 2, Since::Zero),
        ],
        writes(1),
    ]);
    o.put(t, "conflate-replay", encode(0x01, 0x70, &ops));

    // Templated and malformed commands, an eager reader, pipelined
    // publishes past the pending bound.
    let mut ops = vec![connect(1, Kind::Ws, 0, Since::None)];
    for (i, (tmpl, f)) in [
        (0, 3),
        (3, 1),
        (4, 2),
        (2, 5),
        (9, 0),
        (5, 1),
        (6, 2),
        (7, 3),
        (8, 4),
        (1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        ops.push(Op::Raw {
            client: 0,
            text: template_text(tmpl, i as u8, f),
        });
        if i % 3 == 2 {
            ops.extend(mesh());
        }
    }
    ops.extend((0..4).map(|i| publish(0, i, 1)));
    ops.extend(mesh());
    ops.extend(writes(1));
    o.put(t, "commands-eager", encode(0x80, 0x0c, &ops));
}

/// The target's own templates, as raw frames (op 13).
fn template_text(t: u8, topic: u8, f: u8) -> Vec<u8> {
    let topic = ["a", "b.x", "c:1", "ro.d", "secret.e", "f-g_h"][topic as usize % 6];
    match t {
        0 => format!(r#"{{"op":"subscribe","topic":"{topic}","since":{f},"id":{f}}}"#),
        1 => format!(r#"{{"op":"subscribe","topic":"{topic}","since":null,"x":[1,{{}}]}}"#),
        2 => format!(r#"{{"op":"unsubscribe","topic":"{topic}","id":"u{f}"}}"#),
        3 => {
            format!(r#"{{"op":"publish","topic":"{topic}","data":[{f},{{"k":null}}],"id":1e400}}"#)
        }
        4 => format!(r#"{{"op":"publish","topic":"{topic}","data":"zz"}}"#),
        5 => format!(r#"{{"op":"subscribe","topic":"{topic}.","since":1,"id":{f}}}"#),
        6 => format!(r#"{{"op":"publish","topic":"{topic}","id":{f}}}"#),
        7 => format!(r#"{{"op":"subscribe","topic":"{topic}","since":-1,"id":{f}}}"#),
        8 => format!(r#" {{ "topic" : "{topic}" , "op" : "unsubscribe" }} "#),
        _ => r#"{"op":"xyz","id":""q"}"#.to_string(),
    }
    .into_bytes()
}

fn chunked(o: &mut Out) {
    let t = "chunked";
    for (name, limit, sizes, body) in [
        ("simple", 32u8, &[][..], &b"5\r\nhello\r\n0\r\n\r\n"[..]),
        (
            "rfc-example",
            32,
            &[3, 1, 7][..],
            b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n",
        ),
        (
            "extensions",
            32,
            &[1][..],
            b"5;a=1;b=\"x y\"\r\nhello\r\n3 ; c\r\nabc\r\n0;last\r\n\r\n",
        ),
        (
            "trailers",
            32,
            &[2, 9][..],
            b"2\r\n{}\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n",
        ),
        (
            "next-request",
            32,
            &[][..],
            b"1\r\n1\r\n0\r\n\r\nPOST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1",
        ),
        ("uppercase-hex", 255, &[][..], b"A\r\n0123456789\r\nFf\r\n"),
        (
            "leading-zeros",
            32,
            &[][..],
            b"00000005\r\nhello\r\n0000\r\n\r\n",
        ),
        ("over-limit", 1, &[][..], b"9\r\n123456789\r\n0\r\n\r\n"),
        ("huge-size", 255, &[][..], b"ffffffffffffffffffffffff\r\n"),
        ("bare-lf", 32, &[][..], b"5\nhello\r\n0\r\n\r\n"),
        ("missing-crlf", 32, &[][..], b"5\r\nhelloX0\r\n\r\n"),
        ("signed", 32, &[][..], b"+5\r\nhello\r\n0\r\n\r\n"),
        ("hex-prefix", 32, &[][..], b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("space-then-junk", 32, &[][..], b"5 x\r\nhello\r\n0\r\n\r\n"),
        ("ctl-in-ext", 32, &[][..], b"5;a\x01\r\nhello\r\n0\r\n\r\n"),
        ("trailer-bare-lf", 32, &[][..], b"0\r\nX: y\n\r\n"),
        ("empty", 32, &[][..], b""),
        (
            "byte-at-a-time",
            32,
            &[1][..],
            b"3\r\nabc\r\n2;x\r\nde\r\n0\r\nT: 1\r\n\r\n",
        ),
    ] {
        o.put(t, name, cat(&[&[limit], &plan(sizes), body]));
    }
}

fn pattern(o: &mut Out) {
    let t = "pattern";
    let long = |n: usize| "a".repeat(n);
    let mut cases: Vec<(String, Vec<u8>)> = [
        // docs/security.md's table, and core/src/pattern.rs's examples.
        ("ticker-star", "ticker.*\nticker.AAPL"),
        ("ticker-star-deeper", "ticker.*\nticker.a.b"),
        ("ticker-star-shorter", "ticker.*\nticker"),
        ("trains-tail", "trains.>\ntrains.ICE"),
        ("trains-tail-deeper", "trains.>\ntrains.ICE.seats"),
        ("trains-tail-shorter", "trains.>\ntrains"),
        ("star-first", "*.seats\nICE.seats"),
        ("star-first-deeper", "*.seats\nICE.1.seats"),
        ("tail-alone", ">\nanything.at.all"),
        ("demo", "demo.>\ndemo.ticker"),
        ("exact", "a.b\na.b"),
        ("exact-prefix", "a.b\na.bc"),
        ("exact-shorter", "a.b\na"),
        ("exact-longer", "a\na.b"),
        ("alphabet", "A-Z_0:9.*\nA-Z_0:9.x"),
        ("stars", "*.*.*\na.b.c"),
        ("star-then-tail", "*.>\na.b.c"),
        // Lists, as --anonymous-subscribe and a claim give them.
        ("list", "x.*,a,demo.>\nx.y"),
        ("list-bad-second", "a.*,b..c\na.b"),
        ("list-empty-items", ",\na"),
        ("list-trailing-comma", "a,\na"),
        // Refused patterns.
        ("empty", "\na"),
        ("empty-segment", "a..b\na.b"),
        ("leading-dot", ".a\na"),
        ("trailing-dot", "a.\na"),
        ("star-in-segment", "a*\na"),
        ("tail-not-last", "a.>.b\na.x.b"),
        ("tail-first", ">.a\nx.a"),
        ("tail-in-segment", "a>\na"),
        ("star-tail", "*>\nx"),
        ("double-star", "**\nx"),
        ("double-tail", ">>\nx"),
        ("space", "a b\na b"),
        ("slash", "a/b\na"),
        ("unicode", "\u{e4}.*\n\u{e4}.b"),
        // Topics that are not topics.
        ("topic-trailing-dot", "a.*\na."),
        ("topic-empty-segment", "a.>\na..b"),
        ("topic-star", "*\n*"),
        ("topic-tail", ">\n>"),
        ("topic-wildcards", "a.*\na.*"),
        ("topic-empty", "a\n"),
        ("no-topic", "a.b"),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s.as_bytes().to_vec()))
    .collect();
    // At the length limit and just past it.
    let p255 = format!("{}.*", long(253));
    let p256 = format!("{}.*", long(254));
    cases.push((
        "len-255".into(),
        format!("{p255}\n{}.b", long(253)).into_bytes(),
    ));
    cases.push((
        "len-256".into(),
        format!("{p256}\n{}.b", long(254)).into_bytes(),
    ));
    cases.push((
        "len-255-exact".into(),
        format!("{0}\n{0}", long(255)).into_bytes(),
    ));
    let stars = format!("{}*", "*.".repeat(127));
    cases.push((
        "many-segments".into(),
        format!("{stars}\n{}x", "x.".repeat(127)).into_bytes(),
    ));
    cases.push(("not-utf8".into(), b"a.\xff\na.b".to_vec()));
    for (name, data) in cases {
        o.put(t, &name, data);
    }
}

fn token(o: &mut Out) {
    use ringcast_fuzz::token::{sign, HEADER, SECRET};
    let t = "token";
    // `[mode][leeway][bytes]`; NOW is 4_000_000_000.
    let put = |o: &mut Out, name: &str, mode: u8, leeway: u8, bytes: &[u8]| {
        o.put(t, name, cat(&[&[mode, leeway], bytes]));
    };
    let claims: &[(&str, &str)] = &[
        (
            "good",
            r#"{"sub":"alice","exp":4000000060,"subscribe":["ticker.*"],"publish":["chat.>"]}"#,
        ),
        ("good-minimal", r#"{"sub":"a","exp":4000000001}"#),
        (
            "good-many",
            r#"{"sub":"svc","exp":4000003600,"iat":3999999000,"nbf":1,"subscribe":[">","*.x","a.b.c"],"publish":[],"x":{"y":[1,2]}}"#,
        ),
        ("exp-in-leeway", r#"{"sub":"a","exp":3999999996}"#),
        ("exp-at-leeway", r#"{"sub":"a","exp":3999999995}"#),
        ("exp-missing", r#"{"sub":"a"}"#),
        ("exp-string", r#"{"sub":"a","exp":"never"}"#),
        ("exp-float", r#"{"sub":"a","exp":4000000060.0}"#),
        ("exp-negative", r#"{"sub":"a","exp":-1}"#),
        ("exp-null", r#"{"sub":"a","exp":null}"#),
        // Regressions: `exp + leeway` overflowed in `verify`; an expiry no
        // Instant can hold panicked in the engine.
        ("exp-u64-max", r#"{"sub":"a","exp":18446744073709551615}"#),
        ("exp-huge", r#"{"sub":"a","exp":10000000000000000000}"#),
        ("exp-past-u64", r#"{"sub":"a","exp":18446744073709551616}"#),
        (
            "iat-future",
            r#"{"sub":"a","exp":4000000060,"iat":4000000006}"#,
        ),
        (
            "iat-in-leeway",
            r#"{"sub":"a","exp":4000000060,"iat":4000000005}"#,
        ),
        ("iat-string", r#"{"sub":"a","exp":4000000060,"iat":"0"}"#),
        (
            "nbf-string",
            r#"{"sub":"a","exp":4000000060,"nbf":"99999999999"}"#,
        ),
        (
            "nbf-future",
            r#"{"sub":"a","exp":4000000060,"nbf":4000000000}"#,
        ),
        ("nbf-float", r#"{"sub":"a","exp":4000000060,"nbf":1.5}"#),
        ("sub-missing", r#"{"exp":4000000060}"#),
        ("sub-empty", r#"{"sub":"","exp":4000000060}"#),
        ("sub-number", r#"{"sub":5,"exp":4000000060}"#),
        ("sub-null", r#"{"sub":null,"exp":4000000060}"#),
        ("sub-escaped", r#"{"sub":"\u00fc\n","exp":4000000060}"#),
        ("sub-twice", r#"{"sub":"a","sub":"b","exp":4000000060}"#),
        ("exp-twice", r#"{"sub":"a","exp":4000000060,"exp":1}"#),
        (
            "subscribe-bad",
            r#"{"sub":"a","exp":4000000060,"subscribe":["a..b"]}"#,
        ),
        (
            "subscribe-string",
            r#"{"sub":"a","exp":4000000060,"subscribe":"a.*"}"#,
        ),
        (
            "subscribe-number",
            r#"{"sub":"a","exp":4000000060,"subscribe":[1]}"#,
        ),
        (
            "subscribe-null",
            r#"{"sub":"a","exp":4000000060,"subscribe":null}"#,
        ),
        (
            "publish-tail-middle",
            r#"{"sub":"a","exp":4000000060,"publish":["a.>.b"]}"#,
        ),
        (
            "unknown-huge-number",
            r#"{"sub":"a","exp":4000000060,"x":1e400}"#,
        ),
        (
            "unknown-surrogate",
            r#"{"sub":"a","exp":4000000060,"x":"\ud800"}"#,
        ),
        ("sub-surrogate", r#"{"sub":"\ud800","exp":4000000060}"#),
        ("not-json", "not json"),
        ("array", "[]"),
        ("null", "null"),
        ("empty", ""),
        ("unclosed", r#"{"sub":"a","exp":4000000060"#),
    ];
    for (name, c) in claims {
        put(o, &format!("claims-{name}"), 1, 5, c.as_bytes());
    }
    let deep = format!(
        r#"{{"sub":"a","exp":4000000060,"x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    put(o, "claims-unknown-deep", 1, 5, deep.as_bytes());
    put(
        o,
        "claims-no-leeway",
        1,
        0,
        br#"{"sub":"a","exp":4000000001}"#,
    );
    put(
        o,
        "claims-big-leeway",
        1,
        255,
        br#"{"sub":"a","exp":3999999746}"#,
    );

    // --jwt-issuer (mode bit 2) and --jwt-audience (bit 3).
    let iss_aud: &[(&str, u8, &str)] = &[
        (
            "both",
            13,
            r#"{"sub":"a","exp":4000000060,"iss":"https://issuer.example","aud":"ringcast"}"#,
        ),
        (
            "aud-list",
            9,
            r#"{"sub":"a","exp":4000000060,"aud":["other","ringcast"]}"#,
        ),
        (
            "iss-list",
            5,
            r#"{"sub":"a","exp":4000000060,"iss":["https://issuer.example"]}"#,
        ),
        (
            "wrong-iss",
            5,
            r#"{"sub":"a","exp":4000000060,"iss":"https://evil.example"}"#,
        ),
        ("missing-aud", 9, r#"{"sub":"a","exp":4000000060}"#),
        ("aud-number", 9, r#"{"sub":"a","exp":4000000060,"aud":1}"#),
    ];
    for (name, mode, c) in iss_aud {
        put(o, &format!("issuer-{name}"), *mode, 5, c.as_bytes());
    }

    // Headers (mode 2: header, 0x00, claims), signed with the right secret.
    let good = br#"{"sub":"a","exp":4000000060,"subscribe":["a.*"]}"#;
    for (name, header) in [
        ("hs256", &br#"{"alg":"HS256"}"#[..]),
        ("none", br#"{"alg":"none","typ":"JWT"}"#),
        ("hs384", br#"{"alg":"HS384"}"#),
        ("rs256", br#"{"alg":"RS256"}"#),
        ("lowercase", br#"{"alg":"hs256"}"#),
        ("no-alg", br#"{"typ":"JWT"}"#),
        ("alg-twice", br#"{"alg":"HS256","alg":"none"}"#),
        ("crit", br#"{"alg":"HS256","crit":["exp"]}"#),
        (
            "kid-jku",
            br#"{"alg":"HS256","kid":"k","jku":"https://x.example/keys"}"#,
        ),
        ("typ-other", br#"{"alg":"HS256","typ":"at+jwt"}"#),
        ("not-json", b"garbage"),
        ("not-utf8", b"{\"alg\":\"HS256\",\"x\":\"\xff\"}"),
        ("empty", b""),
    ] {
        put(
            o,
            &format!("header-{name}"),
            2,
            5,
            &cat(&[header, b"\0", good]),
        );
    }

    // Another secret's signature (mode 3).
    put(o, "other-secret", 3, 5, good);

    // Any string (mode 0), around a token signed with the right secret.
    let valid = sign(HEADER, good, SECRET);
    let (message, sig) = valid.rsplit_once('.').unwrap();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        message.split('.').nth(1).unwrap()
    );
    // Claims whose base64url has both `-` and `_`, to try standard base64.
    let std_b64 = sign(HEADER, br#"{"sub":"a??>~","exp":4000000060}"#, SECRET);
    assert!(std_b64.contains('-') && std_b64.contains('_'), "{std_b64}");
    let mut flipped = valid.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    for (name, s) in [
        ("valid", valid.clone()),
        ("valid-dot", format!("{valid}.")),
        ("valid-padded", format!("{valid}=")),
        ("valid-space", format!(" {valid}")),
        ("valid-bearer", format!("Bearer {valid}")),
        (
            "valid-std-base64",
            std_b64.replace('-', "+").replace('_', "/"),
        ),
        ("sig-flipped", String::from_utf8(flipped).unwrap()),
        ("sig-empty", format!("{message}.")),
        (
            "sig-truncated",
            format!("{message}.{}", &sig[..sig.len() - 2]),
        ),
        ("alg-none", none),
        ("two-parts", message.to_string()),
        ("four-parts", format!("{message}.{sig}.{sig}")),
        ("not-a-token", "not a token".into()),
        ("dots", "..".into()),
        ("empty", String::new()),
    ] {
        put(o, &format!("raw-{name}"), 0, 5, s.as_bytes());
    }
}

fn main() {
    let root: &'static Path = Box::leak(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .into_boxed_path(),
    );
    let mut o = Out { root, count: 0 };
    http_head(&mut o);
    client_handshake(&mut o);
    frame_header(&mut o);
    websocket(&mut o, "websocket_server", true);
    websocket(&mut o, "websocket_client", false);
    utf8(&mut o);
    command(&mut o);
    mask(&mut o);
    engine(&mut o);
    chunked(&mut o);
    pattern(&mut o);
    token(&mut o);
    println!("wrote {} seeds under {}", o.count, root.display());
}
