//! Limits and refusals of the real binary: frame and message sizes (1009
//! from the header alone), every HTTP rejection as a complete response
//! followed by the server's close, the Origin allowlist, subprotocol
//! negotiation and the per-shard connection limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcast_e2e::{read_head_bytes, tcp, Broker, RawWs};
use ringcast_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};

/// How long a test waits for a response or an EOF that must come.
const WAIT: Duration = Duration::from_secs(5);

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A valid upgrade request for `path` with extra header lines (each ending
/// in CRLF) before the blank line.
fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `request` and reads until the server closes. Returns the response
/// and whether the server ended the connection (EOF) within [`WAIT`].
fn exchange(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut s = tcp(addr);
    s.set_read_timeout(Some(WAIT)).unwrap();
    // The server may answer (and stop reading) before a large request is
    // fully written; a failed write is then fine, the response is what counts.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Checks a complete refusal: status line, `Content-Length` matching the
/// body, `Connection: close`, and the server closed the connection.
/// Returns the head.
fn assert_refused(addr: SocketAddr, request: &[u8], status: u16, what: &str) -> String {
    let (resp, closed) = exchange(addr, request);
    assert_complete(&resp, status, what);
    assert!(closed, "{what}: the server did not close after {status}");
    resp.split_once("\r\n\r\n").unwrap().0.to_string()
}

fn assert_complete(resp: &str, status: u16, what: &str) {
    let prefix = format!("HTTP/1.1 {status} ");
    assert!(
        resp.starts_with(&prefix),
        "{what}: expected {status}, got {resp:?}"
    );
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: response head not terminated: {resp:?}"));
    let length: usize = header(head, "content-length")
        .unwrap_or_else(|| panic!("{what}: no Content-Length: {head:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{what}: bad Content-Length: {head:?}"));
    assert_eq!(
        length,
        body.len(),
        "{what}: Content-Length vs body {body:?}"
    );
    assert!(!body.is_empty(), "{what}: the body should say why");
    assert_eq!(
        header(head, "connection").map(|v| v.to_ascii_lowercase()),
        Some("close".to_string()),
        "{what}: {head:?}"
    );
}

/// The value of header `name` in a response head (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends an upgrade request and reads the response head; the connection
/// stays open. Returns the head and the stream.
fn upgrade_head(addr: SocketAddr, request: &str) -> (String, TcpStream) {
    let mut s = tcp(addr);
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    (String::from_utf8(read_head_bytes(&mut s)).unwrap(), s)
}

/// Asserts a 101 with the right accept key and that the WebSocket works.
fn assert_upgraded(addr: SocketAddr, request: &str, what: &str) -> String {
    let (head, mut s) = upgrade_head(addr, request);
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "{what}: expected 101, got {head:?}"
    );
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(ACCEPT),
        "{what}"
    );
    s.write_all(&ringcast_e2e::client_frame(true, OpCode::Text, b"hi"))
        .unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"\x81\x02hi", "{what}: echo after the upgrade");
    head
}

/// A masked frame header announcing `len` payload bytes, no payload.
fn header_only(fin: bool, opcode: OpCode, len: u64) -> Vec<u8> {
    let h = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: Some([0x5a, 0xa5, 0x3c, 0xc3]),
        payload_len: len,
    };
    let mut out = [0u8; MAX_HEADER_LEN];
    let n = h.encode(&mut out);
    out[..n].to_vec()
}

/// The next frame must be a close with `code`, then EOF, both within WAIT.
fn expect_close_then_eof(ws: &mut RawWs, code: u16, what: &str) {
    ws.stream.set_read_timeout(Some(WAIT)).unwrap();
    match ws.read_frame() {
        Some((true, OpCode::Close, p)) if p.len() >= 2 => {
            assert_eq!(u16::from_be_bytes([p[0], p[1]]), code, "{what}: close code")
        }
        other => panic!("{what}: expected close {code}, got {other:?}"),
    }
    ws.expect_eof();
}

fn echo_ok(ws: &mut RawWs, opcode: OpCode, data: &[u8], what: &str) {
    match ws.read_frame() {
        Some((true, op, got)) if op == opcode && got == data => {}
        Some((fin, op, got)) => panic!(
            "{what}: expected {opcode:?} echo of {} bytes, got fin={fin} {op:?} {} bytes",
            data.len(),
            got.len()
        ),
        None => panic!("{what}: connection closed instead of an echo"),
    }
}

const SMALL_LIMITS: [&str; 6] = [
    "--shards",
    "1",
    "--max-frame-size",
    "1KiB",
    "--max-message-size",
    "4KiB",
];

#[test]
fn frame_and_message_at_the_limits_echo() {
    let broker = Broker::start(&SMALL_LIMITS);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    for opcode in [OpCode::Text, OpCode::Binary] {
        let frame = vec![b'f'; 1024];
        ws.send_frame(true, opcode, &frame);
        echo_ok(&mut ws, opcode, &frame, "frame of exactly --max-frame-size");
        // 4 x 1024 = --max-message-size, with control frames in between
        // (they do not count towards the message).
        let message = vec![b'm'; 4096];
        for (i, chunk) in message.chunks(1024).enumerate() {
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            ws.send_frame(false, op, chunk);
            ws.send_frame(true, OpCode::Ping, &[b'p'; 125]);
        }
        ws.send_frame(true, OpCode::Continuation, b"");
        for _ in 0..4 {
            assert_eq!(ws.read_frame(), Some((true, OpCode::Pong, vec![b'p'; 125])));
        }
        echo_ok(
            &mut ws,
            opcode,
            &message,
            "message of exactly --max-message-size",
        );
    }
}

#[test]
fn frame_over_max_frame_size_gets_1009_from_its_header() {
    let broker = Broker::start(&SMALL_LIMITS);
    // Only the header is sent: the close must come without the payload.
    for (opcode, len) in [
        (OpCode::Binary, 1025u64),
        (OpCode::Text, 1025),
        (OpCode::Binary, 65_535),
        (OpCode::Binary, 1 << 30),
        (OpCode::Text, (1 << 62) + 1),
    ] {
        let mut ws = RawWs::connect(broker.addr, "/echo");
        ws.send_raw(&header_only(true, opcode, len));
        expect_close_then_eof(&mut ws, 1009, &format!("{opcode:?} frame of {len}"));
    }
    // A non-final first fragment or a continuation over the frame limit.
    let mut ws = RawWs::connect(broker.addr, "/echo");
    ws.send_raw(&header_only(false, OpCode::Binary, 2000));
    expect_close_then_eof(&mut ws, 1009, "first fragment over the frame limit");
    let mut ws = RawWs::connect(broker.addr, "/echo");
    ws.send_frame(false, OpCode::Binary, b"start");
    ws.send_raw(&header_only(true, OpCode::Continuation, 1025));
    expect_close_then_eof(&mut ws, 1009, "continuation over the frame limit");
}

#[test]
fn message_over_max_message_size_gets_1009_from_the_header() {
    let broker = Broker::start(&SMALL_LIMITS);
    for opcode in [OpCode::Text, OpCode::Binary] {
        let mut ws = RawWs::connect(broker.addr, "/echo");
        for i in 0..4 {
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            ws.send_frame(false, op, &[b'a'; 1000]);
        }
        // 4000 + 97 = 4097: one byte over; only the header is sent.
        ws.send_raw(&header_only(true, OpCode::Continuation, 97));
        expect_close_then_eof(&mut ws, 1009, &format!("{opcode:?} message of 4097"));
    }
}

#[test]
fn default_limits_refuse_16mib_plus_one() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    ws.send_raw(&header_only(true, OpCode::Binary, (16 << 20) + 1));
    expect_close_then_eof(&mut ws, 1009, "single frame of 16 MiB + 1");
    // 8 MiB, then a continuation header that makes it 16 MiB + 1.
    let mut ws = RawWs::connect(broker.addr, "/echo");
    ws.send_frame(false, OpCode::Binary, &vec![7u8; 8 << 20]);
    ws.send_raw(&header_only(true, OpCode::Continuation, (8 << 20) + 1));
    expect_close_then_eof(&mut ws, 1009, "fragmented message of 16 MiB + 1");
}

#[test]
fn http_rejections_are_complete_responses_then_close() {
    let broker = Broker::start(&["--shards", "1"]);
    let addr = broker.addr;
    let good = upgrade("/echo", "");
    let many_headers: String = (0..33).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "head over 8 KiB",
            upgrade("/echo", &format!("X-Big: {}\r\n", "b".repeat(9000))).into_bytes(),
            431,
        ),
        ("8 KiB+ without a line end", vec![b'G'; 9000], 431),
        (
            "33 headers",
            upgrade("/echo", &many_headers).into_bytes(),
            431,
        ),
        (
            "Sec-WebSocket-Version 8",
            good.replace("Version: 13", "Version: 8").into_bytes(),
            426,
        ),
        (
            "Sec-WebSocket-Version missing",
            good.replace("Sec-WebSocket-Version: 13\r\n", "")
                .into_bytes(),
            426,
        ),
        (
            "Sec-WebSocket-Version repeated",
            upgrade("/echo", "Sec-WebSocket-Version: 13\r\n").into_bytes(),
            426,
        ),
        (
            "no Upgrade header",
            good.replace("Upgrade: websocket\r\n", "").into_bytes(),
            400,
        ),
        (
            "Upgrade is not websocket",
            good.replace("Upgrade: websocket", "Upgrade: h2c")
                .into_bytes(),
            400,
        ),
        (
            "Connection lacks upgrade",
            good.replace("Connection: Upgrade", "Connection: keep-alive")
                .into_bytes(),
            400,
        ),
        (
            "plain GET /echo",
            b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "key of 5 bytes",
            good.replace(KEY, "c2hvcnQ=").into_bytes(),
            400,
        ),
        (
            "key not base64",
            good.replace(KEY, "!!!!").into_bytes(),
            400,
        ),
        (
            "key missing",
            good.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "")
                .into_bytes(),
            400,
        ),
        (
            "key repeated",
            upgrade("/echo", &format!("Sec-WebSocket-Key: {KEY}\r\n")).into_bytes(),
            400,
        ),
        (
            "no Host",
            good.replace("Host: 127.0.0.1\r\n", "").into_bytes(),
            400,
        ),
        ("POST /echo", good.replace("GET", "POST").into_bytes(), 405),
        ("PUT /echo", good.replace("GET", "PUT").into_bytes(), 405),
        (
            "HTTP/1.0",
            good.replace("HTTP/1.1", "HTTP/1.0").into_bytes(),
            505,
        ),
        (
            "unknown path with upgrade",
            upgrade("/nope", "").into_bytes(),
            404,
        ),
        (
            "GET an unknown path",
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            404,
        ),
        (
            "POST / (the demo page)",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        (
            "POST /healthz",
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        (
            "TLS ClientHello bytes",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x8e\x00\xff\r\n\r\n".to_vec(),
            400,
        ),
        ("request line only a method", b"GET\r\n\r\n".to_vec(), 400),
        (
            "HTTP/9.9",
            b"GET /echo HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "header without a colon",
            good.replace("Host: 127.0.0.1", "Host 127.0.0.1")
                .into_bytes(),
            400,
        ),
        ("binary noise", b"\x00\x01\x02\xfe\xff\n\n".to_vec(), 400),
    ];
    for (what, request, status) in cases {
        let head = assert_refused(addr, &request, status, what);
        match status {
            426 => assert_eq!(
                header(&head, "sec-websocket-version"),
                Some("13"),
                "{what}: {head}"
            ),
            // `GET`, or `GET, HEAD` where HEAD is answered too.
            405 => assert!(
                matches!(header(&head, "allow"), Some("GET" | "GET, HEAD")),
                "{what}: {head}"
            ),
            _ => {}
        }
        assert!(
            header(&head, "sec-websocket-accept").is_none(),
            "{what}: a refusal must not accept: {head}"
        );
    }
    // And the broker is still fine.
    assert_upgraded(addr, &good, "after all the refusals");
}

#[test]
fn upgrade_accepts_token_lists_any_case_and_a_query() {
    let broker = Broker::start(&["--shards", "1"]);
    let addr = broker.addr;
    let good = upgrade("/echo", "");
    for (what, req) in [
        ("query string", upgrade("/echo?room=1&x=y", "")),
        (
            "lower-case names, mixed-case values",
            good.replace("Upgrade: websocket", "upgrade: WebSocket")
                .replace("Connection: Upgrade", "connection: UPGRADE")
                .replace("Sec-WebSocket-Key", "sec-websocket-key")
                .replace("Sec-WebSocket-Version", "SEC-WEBSOCKET-VERSION"),
        ),
        (
            "Connection token list",
            good.replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"),
        ),
        (
            "extra headers a browser sends",
            upgrade(
                "/echo",
                "User-Agent: test\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
            ),
        ),
    ] {
        let head = assert_upgraded(addr, &req, what);
        // No extension is ever negotiated.
        assert_eq!(header(&head, "sec-websocket-extensions"), None, "{what}");
    }
    let (resp, closed) = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_complete(&resp, 200, "healthz");
    assert!(closed, "healthz: the server did not close");
    assert!(resp.ends_with("\r\n\r\nok\n"), "{resp:?}");
}

/// HTTP/1.1 requests keep the connection: two pipelined requests get two
/// responses on one connection, and `Connection: close` on the second ends it.
#[test]
fn plain_http_keeps_the_connection_alive() {
    let broker = Broker::start(&["--shards", "1"]);
    let (resp, closed) = exchange(
        broker.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(closed, "the second request asked for close");
    let first = resp.find("HTTP/1.1 200 OK").unwrap();
    let second = resp[first + 1..]
        .find("HTTP/1.1 200 OK")
        .map(|i| i + first + 1);
    assert!(second.is_some(), "two responses expected: {resp:?}");
    let (one, two) = resp.split_at(second.unwrap());
    assert!(one.contains("Connection: keep-alive\r\n"), "{one:?}");
    assert!(two.contains("Connection: close\r\n"), "{two:?}");
}

#[test]
fn head_size_and_header_count_limits_are_inclusive() {
    let broker = Broker::start(&[
        "--shards",
        "1",
        "--max-head-size",
        "1KiB",
        "--max-headers",
        "8",
    ]);
    let addr = broker.addr;
    // Pad a valid upgrade request to exactly `total` bytes of head.
    let padded = |total: usize| {
        let base = upgrade("/echo", "X-Pad: \r\n");
        let pad = total
            .checked_sub(base.len())
            .expect("base request fits the limit");
        let req = upgrade("/echo", &format!("X-Pad: {}\r\n", "p".repeat(pad)));
        assert_eq!(req.len(), total);
        req
    };
    assert_upgraded(addr, &padded(1024), "head of exactly --max-head-size");
    assert_refused(addr, padded(1025).as_bytes(), 431, "head one byte over");

    // The upgrade request has 5 headers; 3 more make --max-headers.
    let extra = |n: usize| -> String { (0..n).map(|i| format!("X-E{i}: v\r\n")).collect() };
    assert_upgraded(addr, &upgrade("/echo", &extra(3)), "exactly 8 headers");
    assert_refused(
        addr,
        upgrade("/echo", &extra(4)).as_bytes(),
        431,
        "9 headers",
    );
}

#[test]
fn allowed_origins_refuse_foreign_and_accept_listed() {
    let broker = Broker::start(&[
        "--shards",
        "1",
        "--allowed-origins",
        "https://good.example,https://also.example",
    ]);
    let addr = broker.addr;
    for origin in ["https://evil.example", "null", "https://good.example.evil"] {
        let req = upgrade("/echo", &format!("Origin: {origin}\r\n"));
        assert_refused(addr, req.as_bytes(), 403, &format!("Origin {origin}"));
    }
    for origin in ["https://good.example", "https://also.example"] {
        let req = upgrade("/echo", &format!("Origin: {origin}\r\n"));
        assert_upgraded(addr, &req, &format!("Origin {origin}"));
    }
    // Non-browser clients send no Origin: allowed.
    assert_upgraded(addr, &upgrade("/echo", ""), "no Origin");

    // Without the flag any origin is fine.
    let open = Broker::start(&["--shards", "1"]);
    assert_upgraded(
        open.addr,
        &upgrade("/echo", "Origin: https://evil.example\r\n"),
        "no allowlist",
    );
}

#[test]
fn subprotocol_is_echoed_only_when_offered_and_supported() {
    let broker = Broker::start(&["--shards", "1", "--subprotocols", "chat.v2,chat.v1"]);
    let addr = broker.addr;
    let proto = |extra: &str| {
        let head = assert_upgraded(addr, &upgrade("/echo", extra), extra);
        header(&head, "sec-websocket-protocol").map(str::to_string)
    };
    // The server's preference wins among the offered.
    assert_eq!(
        proto("Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n").as_deref(),
        Some("chat.v2")
    );
    assert_eq!(
        proto("Sec-WebSocket-Protocol: chat.v1\r\n").as_deref(),
        Some("chat.v1")
    );
    assert_eq!(
        proto("Sec-WebSocket-Protocol: x\r\nSec-WebSocket-Protocol: chat.v1\r\n").as_deref(),
        Some("chat.v1"),
        "offers spread over two header lines"
    );
    assert_eq!(proto("Sec-WebSocket-Protocol: unknown, other\r\n"), None);
    assert_eq!(proto(""), None, "nothing offered, nothing selected");

    // A broker without --subprotocols never selects one.
    let plain = Broker::start(&["--shards", "1"]);
    let head = assert_upgraded(
        plain.addr,
        &upgrade("/echo", "Sec-WebSocket-Protocol: chat.v1\r\n"),
        "no --subprotocols",
    );
    assert_eq!(header(&head, "sec-websocket-protocol"), None);
}

#[test]
fn max_connections_per_shard_gives_503_and_keeps_the_others() {
    let broker = Broker::start(&["--shards", "1", "--max-connections", "3"]);
    let addr = broker.addr;
    let mut open: Vec<RawWs> = (0..3).map(|_| RawWs::connect(addr, "/echo")).collect();
    for _ in 0..2 {
        assert_refused(addr, upgrade("/echo", "").as_bytes(), 503, "4th connection");
    }
    for (i, ws) in open.iter_mut().enumerate() {
        let msg = format!("still here {i}");
        ws.send_frame(true, OpCode::Text, msg.as_bytes());
        echo_ok(ws, OpCode::Text, msg.as_bytes(), "one of the first three");
    }
    // One leaves: its slot is reusable (once the server has seen it go).
    let mut leaving = open.pop().unwrap();
    leaving.send_frame(true, OpCode::Close, &1000u16.to_be_bytes());
    expect_close_then_eof(&mut leaving, 1000, "leaving client");
    drop(leaving);
    let end = Instant::now() + WAIT;
    loop {
        let (head, _s) = upgrade_head(addr, &upgrade("/echo", ""));
        if head.starts_with("HTTP/1.1 101 ") {
            break;
        }
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(Instant::now() < end, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
    for ws in &mut open {
        ws.send_frame(true, OpCode::Binary, b"x");
        echo_ok(ws, OpCode::Binary, b"x", "after the slot was reused");
    }
}

/// Input that can never become an HTTP request (a TLS ClientHello, binary
/// noise) is refused with 400 at once, not left to the handshake timeout.
/// The timeout is set far beyond `WAIT`, so only an early answer passes.
#[test]
fn non_http_bytes_get_400_without_waiting_for_a_blank_line() {
    let broker = Broker::start(&["--shards", "1", "--handshake-timeout", "60s"]);
    let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    assert_refused(broker.addr, tls_hello, 400, "TLS ClientHello");
    assert_refused(broker.addr, b"\x00\x01\x02\x03", 400, "binary noise");
    assert_refused(
        broker.addr,
        b"GET / HTTP/1.1\r\nno colon here\r\n",
        400,
        "header line without a colon",
    );
}

/// A message in progress must arrive whole within `--message-timeout`:
/// a client that sends the header of a 1 MiB text frame and then trickles
/// its payload a byte every 100 ms (each byte resetting the idle clock) is
/// closed with 1008 "message timeout" instead of being kept for as long
/// as it trickles.
#[test]
fn a_trickled_message_is_closed_after_the_message_timeout() {
    let broker = Broker::start(&["--shards", "1", "--message-timeout", "1s"]);
    for path in ["/ws", "/echo"] {
        let mut ws = RawWs::connect(broker.addr, path);
        let head = header_only(true, OpCode::Text, 1 << 20);
        let mask: [u8; 4] = head[head.len() - 4..].try_into().unwrap();
        let mut writer = ws.stream.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let trickle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Then masked spaces: valid UTF-8, never the whole message.
                let payload = (0..).map(|i| b' ' ^ mask[i % 4]);
                for b in std::iter::once(head).chain(payload.map(|b| vec![b])) {
                    if stop.load(Ordering::Relaxed) || writer.write_all(&b).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        ws.stream.set_read_timeout(Some(WAIT)).unwrap();
        let got = ws.try_read_frame();
        stop.store(true, Ordering::Relaxed);
        trickle.join().unwrap();
        match got {
            Ok(Some((true, OpCode::Close, p))) if p.len() >= 2 => {
                assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1008, "{path}: close code");
                assert_eq!(
                    String::from_utf8_lossy(&p[2..]),
                    "message timeout",
                    "{path}: close reason"
                );
            }
            Ok(other) => panic!("{path}: expected close 1008, got {other:?}"),
            Err(e) => panic!("{path}: no close {WAIT:?} into a trickled message ({e})"),
        }
    }
}
