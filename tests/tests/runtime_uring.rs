//! The completion loop (`--runtime uring`) end to end against the real
//! binary, on what is its own: partial sends to a slow reader, accepts
//! that learn the peer's address, hostile input, timeouts and shutdown.
//! Every other suite in `tests/` runs on it too (it is the default).

use std::io::{Read, Write};
use std::time::Duration;

use ringcast_e2e::{http_exchange, tcp, tcp_with_rcvbuf, Broker, RawWs};
use ringcast_proto::frame::OpCode;

fn broker(extra: &[&str]) -> Broker {
    let mut args = vec!["--runtime", "uring", "--shards", "1"];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

#[test]
fn healthz_keep_alive_and_metrics() {
    let b = broker(&[]);
    assert!(b.banner.contains("uring"), "{}", b.banner);
    let r = http_exchange(b.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("ok\n"), "{r}");
    // Keep-alive: two requests on one connection.
    let r = http_exchange(
        b.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
    let r = http_exchange(b.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("ringcast_connections{shard=\"0\""), "{r}");
    let r = http_exchange(b.addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

/// The per-IP limits need each peer's address, which a multishot accept
/// cannot give: the loop then arms single-shot accepts with an address
/// slot each. Two shards, so that the count crosses shards.
#[test]
fn per_ip_limits_see_the_peer_address() {
    let b = Broker::start(&["--shards", "2", "--max-connections-per-ip", "3"]);
    let open: Vec<RawWs> = (0..3).map(|_| RawWs::connect(b.addr, "/ws")).collect();
    let r = http_exchange(
        b.addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("too many connections from this address"), "{r}");
    // `/healthz` is exempt.
    let r = http_exchange(b.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    drop(open);
    ringcast_e2e::wait_until("the address's connections are released", || {
        http_exchange(
            b.addr,
            b"GET /poll/x?timeout_ms=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .starts_with("HTTP/1.1 200")
    });
}

#[test]
fn echo_sizes_fragments_ping_and_close() {
    let b = broker(&[]);
    let mut ws = RawWs::connect(b.addr, "/echo");
    for size in [
        0usize,
        1,
        125,
        126,
        4095,
        4096,
        65535,
        65536,
        300_000,
        2 << 20,
    ] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        ws.send_frame(true, OpCode::Binary, &payload);
        let (fin, op, p) = ws.read_frame().expect("echo");
        assert!(fin);
        assert_eq!(op, OpCode::Binary);
        assert!(p == payload, "size {size}: got {} bytes", p.len());
    }
    ws.send_text("héllo");
    assert_eq!(
        ws.read_frame().unwrap(),
        (true, OpCode::Text, "héllo".as_bytes().to_vec())
    );
    // Fragmented, with a ping in the middle; the frames cut at every byte.
    let mut wire = ringcast_e2e::client_frame(false, OpCode::Text, b"frag");
    wire.extend(ringcast_e2e::client_frame(true, OpCode::Ping, b"p!"));
    wire.extend(ringcast_e2e::client_frame(
        false,
        OpCode::Continuation,
        b"men",
    ));
    wire.extend(ringcast_e2e::client_frame(
        true,
        OpCode::Continuation,
        b"ted",
    ));
    for byte in &wire {
        ws.send_raw(std::slice::from_ref(byte));
        ws.stream.flush().unwrap();
    }
    assert_eq!(
        ws.read_frame().unwrap(),
        (true, OpCode::Pong, b"p!".to_vec())
    );
    assert_eq!(
        ws.read_frame().unwrap(),
        (true, OpCode::Text, b"fragmented".to_vec())
    );
    // Invalid UTF-8: 1007.
    let mut bad = RawWs::connect(b.addr, "/echo");
    bad.send_frame(true, OpCode::Text, b"\xff\xfe");
    assert_eq!(bad.expect_close().0, Some(1007));
    bad.expect_eof();
    // The close handshake: our close is echoed, then the TCP connection ends.
    ws.send_frame(true, OpCode::Close, b"\x03\xe8bye");
    assert_eq!(ws.expect_close().0, Some(1000));
    ws.expect_eof();
}

#[test]
fn pubsub_subscribe_publish_since_and_fan_out() {
    let b = broker(&[]);
    let mut subs: Vec<RawWs> = (0..50).map(|_| RawWs::connect(b.addr, "/ws")).collect();
    for s in &mut subs {
        s.subscribe("t.a", None);
    }
    let mut publisher = RawWs::connect(b.addr, "/ws");
    for n in 1..=3u64 {
        let seq = publisher.publish("t.a", &format!("{{\"n\":{n}}}"));
        assert_eq!(seq, n);
    }
    let mut first: Option<Vec<u8>> = None;
    for s in &mut subs {
        for n in 1..=3u64 {
            let (_, op, p) = s.read_frame().unwrap();
            assert_eq!(op, OpCode::Text);
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            assert_eq!(v["op"], "message", "{v}");
            assert_eq!(v["seq"], n, "{v}");
            assert_eq!(v["data"]["n"], n, "{v}");
            if n == 1 {
                // One frame, encoded once: the same bytes for everyone.
                match &first {
                    None => first = Some(p),
                    Some(f) => assert_eq!(f, &p),
                }
            }
        }
    }
    // Resume: since 1 replays 2 and 3, then live messages follow.
    let mut late = RawWs::connect(b.addr, "/ws");
    late.subscribe("t.a", Some(1));
    for n in 2..=3u64 {
        let v = late.next_json();
        assert_eq!(
            (v["op"].as_str(), v["seq"].as_u64()),
            (Some("message"), Some(n))
        );
    }
    assert_eq!(publisher.publish("t.a", "4"), 4);
    let v = late.next_json();
    assert_eq!(v["seq"], 4, "{v}");
    // A bad command gets an error reply, and the connection stays.
    let v = late.command(&serde_json::json!({"op": "nope"}));
    assert_eq!(v["op"], "error", "{v}");
    // Closing a subscriber ends its subscription; the others go on.
    drop(subs.pop());
    assert_eq!(publisher.publish("t.a", "5"), 5);
    assert_eq!(subs[0].next_json()["seq"], 4);
    assert_eq!(subs[0].next_json()["seq"], 5);
}

#[test]
fn a_slow_reader_gets_every_byte_through_partial_sends() {
    let b = broker(&[]);
    // A small receive window: the broker's sendmsg writes part of the
    // message, and the rest goes in later sends, in order.
    let stream = tcp_with_rcvbuf(b.addr, 4096);
    let mut ws = RawWs::handshake(stream, "/echo");
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    ws.send_frame(true, OpCode::Binary, &payload);
    std::thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    // Read slowly at first.
    for _ in 0..20 {
        let n = ws.stream.read(&mut chunk).unwrap();
        got.extend_from_slice(&chunk[..n]);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(got.len() < payload.len());
    // The rest at full speed: header (10 bytes) then the payload.
    while got.len() < payload.len() + 10 {
        let mut big = vec![0u8; 65536];
        let n = ws.stream.read(&mut big).unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&big[..n]);
    }
    assert_eq!(&got[..2], &[0x82, 127]);
    assert!(got[10..] == payload[..], "the payload arrived intact");
}

#[test]
fn a_slow_subscriber_is_disconnected_and_others_are_served() {
    let b = broker(&["--outbox-size", "64KiB"]);
    let stream = tcp_with_rcvbuf(b.addr, 4096);
    let mut slow = RawWs::handshake(stream, "/ws");
    slow.subscribe("t.slow", None);
    let mut fast = RawWs::connect(b.addr, "/ws");
    fast.subscribe("t.slow", None);
    let mut publisher = RawWs::connect(b.addr, "/ws");
    // More than the kernel's socket buffers on loopback take (they grow to
    // megabytes), so the outbox fills.
    let data = format!("\"{}\"", "x".repeat(100_000));
    for n in 1..=200u64 {
        publisher.send_text(&format!(
            r#"{{"op":"publish","topic":"t.slow","data":{data}}}"#
        ));
        let v = fast.next_json();
        assert_eq!(v["seq"], n, "the fast subscriber gets every message");
    }
    // The slow one, read now, gets what fit, then close 1008.
    let (code, reason) = slow.expect_close();
    assert_eq!(code, Some(1008), "{reason}");
}

#[test]
fn hostile_input_is_refused_with_the_right_answer() {
    let b = broker(&["--max-frame-size", "1KiB", "--max-message-size", "4KiB"]);
    // Not a WebSocket upgrade (no key): 400, connection closed.
    let r = http_exchange(
        b.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Not HTTP at all (a TLS ClientHello): 400 at once.
    let r = http_exchange(b.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // A head past --max-head-size: 431.
    let mut big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    big.extend_from_slice(b"\r\n\r\n");
    let r = http_exchange(b.addr, &big);
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // A frame over --max-frame-size: 1009, from its header alone.
    let mut ws = RawWs::connect(b.addr, "/echo");
    let frame = ringcast_e2e::client_frame(true, OpCode::Binary, &[0u8; 2000]);
    ws.send_raw(&frame[..8]);
    assert_eq!(ws.expect_close().0, Some(1009));
    ws.expect_eof();
    // An unmasked frame: 1002.
    let mut ws = RawWs::connect(b.addr, "/ws");
    ws.send_raw(b"\x81\x02hi");
    assert_eq!(ws.expect_close().0, Some(1002));
    // The broker still serves.
    let r = http_exchange(b.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[test]
fn handshake_timeout_and_shutdown_close_1001() {
    let mut b = broker(&["--handshake-timeout", "300ms"]);
    // A client that never finishes its head is cut by the sweep.
    let mut s = tcp(b.addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() < Duration::from_secs(5));
    // SIGTERM: every WebSocket gets 1001, and the broker exits 0.
    let mut ws = RawWs::connect(b.addr, "/ws");
    ws.subscribe("t.x", None);
    b.signal(libc::SIGTERM);
    assert_eq!(ws.expect_close().0, Some(1001));
    ws.send_frame(true, OpCode::Close, b"\x03\xe9");
    let status = b.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}");
}
