//! Time and process lifecycle of the real binary: the slowloris guard,
//! keep-alive pings and the idle timeout, graceful shutdown on SIGTERM and
//! SIGINT (close 1001, exit 0, cut after the grace period), a busy port,
//! invalid configurations and the start-up banner.
//!
//! Timing assertions are only lower bounds that follow from the configured
//! timeouts ("not before") and generous upper bounds ("eventually").

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringcast_e2e::{broker_binary, metric_sum, tcp, wait_until, Broker, HttpConn, RawWs};
use ringcast_proto::frame::OpCode;

/// Upper bound for anything that must "eventually" happen.
const WAIT: Duration = Duration::from_secs(5);

/// Reads until EOF (or reset) within [`WAIT`]; returns the bytes read.
fn read_to_eof(s: &mut TcpStream, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("{what}: no EOF within {WAIT:?} ({e}); read {out:?}"),
        }
    }
}

/// The next frame must be a close; returns its code.
fn expect_close_code(ws: &mut RawWs, what: &str) -> u16 {
    ws.stream.set_read_timeout(Some(WAIT)).unwrap();
    match ws.read_frame() {
        Some((true, OpCode::Close, p)) if p.len() >= 2 => u16::from_be_bytes([p[0], p[1]]),
        other => panic!("{what}: expected a close frame, got {other:?}"),
    }
}

fn echo_works(ws: &mut RawWs, msg: &str) {
    ws.send_frame(true, OpCode::Text, msg.as_bytes());
    loop {
        match ws.read_frame() {
            Some((_, OpCode::Ping, p)) => ws.send_frame(true, OpCode::Pong, &p),
            Some(frame) => {
                assert_eq!(frame, (true, OpCode::Text, msg.as_bytes().to_vec()));
                return;
            }
            None => panic!("connection closed instead of echoing {msg:?}"),
        }
    }
}

/// Runs the binary to completion (killing it after `timeout`): exit code,
/// stdout, stderr.
fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(broker_binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast");
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringcast {args:?} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

#[test]
fn slowloris_half_a_head_is_cut_after_the_handshake_timeout() {
    let broker = Broker::start(&["--shards", "1", "--handshake-timeout", "300ms"]);
    let start = Instant::now();
    let mut half = tcp(broker.addr);
    half.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .unwrap();
    let mut silent = tcp(broker.addr);
    read_to_eof(&mut half, "half a request head");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "cut after {:?}, before the 300ms handshake timeout",
        start.elapsed()
    );
    read_to_eof(&mut silent, "a connection that sends nothing");
    // The broker still serves.
    echo_works(&mut RawWs::connect(broker.addr, "/echo"), "after slowloris");
}

#[test]
fn slowloris_trickling_does_not_extend_the_handshake_deadline() {
    let broker = Broker::start(&["--shards", "1", "--handshake-timeout", "300ms"]);
    let mut s = tcp(broker.addr);
    let mut writer = s.try_clone().unwrap();
    let start = Instant::now();
    // One byte every 20 ms, forever (until the server cuts us).
    let trickle = std::thread::spawn(move || {
        let head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter();
        for &b in head.chain(std::iter::repeat(&b'z')) {
            if writer.write_all(&[b]).is_err() || start.elapsed() > WAIT * 2 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    read_to_eof(&mut s, "trickling client");
    assert!(start.elapsed() >= Duration::from_millis(250));
    drop(s);
    trickle.join().unwrap();
}

#[test]
fn handshake_timeout_does_not_apply_to_open_websockets() {
    let broker = Broker::start(&["--shards", "1", "--handshake-timeout", "200ms"]);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    std::thread::sleep(Duration::from_millis(700));
    echo_works(&mut ws, "still open well past the handshake timeout");
}

#[test]
fn idle_client_gets_a_ping_then_close_1001_then_eof() {
    let broker = Broker::start(&[
        "--shards",
        "1",
        "--ping-interval",
        "200ms",
        "--idle-timeout",
        "600ms",
        "--close-timeout",
        "300ms",
    ]);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    let start = Instant::now();
    ws.stream.set_read_timeout(Some(WAIT)).unwrap();
    let first = ws.read_frame();
    assert!(
        matches!(first, Some((true, OpCode::Ping, _))),
        "a silent client must be pinged first, got {first:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "ping too early"
    );
    // We never answer: close 1001 after the idle timeout.
    assert_eq!(expect_close_code(&mut ws, "idle timeout"), 1001);
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "closed after {:?}, before the 600ms idle timeout",
        start.elapsed()
    );
    // And we do not answer the close either: cut after --close-timeout.
    read_to_eof(&mut ws.stream, "idle client after the close");
}

#[test]
fn client_answering_pings_stays_connected_past_the_idle_timeout() {
    let broker = Broker::start(&[
        "--shards",
        "1",
        "--ping-interval",
        "200ms",
        "--idle-timeout",
        "600ms",
    ]);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    ws.stream.set_read_timeout(Some(WAIT)).unwrap();
    let start = Instant::now();
    let mut pings = 0;
    // Only pongs go out, for three idle timeouts.
    while start.elapsed() < Duration::from_millis(1800) {
        match ws.read_frame() {
            Some((true, OpCode::Ping, p)) => {
                pings += 1;
                ws.send_frame(true, OpCode::Pong, &p);
            }
            other => panic!(
                "expected only pings, got {other:?} after {:?}",
                start.elapsed()
            ),
        }
    }
    assert!(pings >= 3, "only {pings} pings in 1.8 s");
    echo_works(&mut ws, "alive after answering pings");
}

#[test]
fn client_sending_data_is_neither_pinged_nor_closed() {
    let broker = Broker::start(&[
        "--shards",
        "1",
        "--ping-interval",
        "500ms",
        "--idle-timeout",
        "1s",
    ]);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    ws.stream.set_read_timeout(Some(WAIT)).unwrap();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        let msg = format!("tick {i}");
        ws.send_frame(true, OpCode::Text, msg.as_bytes());
        assert_eq!(
            ws.read_frame(),
            Some((true, OpCode::Text, msg.into_bytes())),
            "a busy client got something other than its echo"
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(40));
    }
}

#[test]
fn sigterm_closes_every_websocket_with_1001_and_exits_0() {
    // A grace far longer than the wait below: exiting within WAIT means it
    // exited because the clients left, not because the grace ran out.
    let mut broker = Broker::start(&["--shards", "2", "--shutdown-grace", "60s"]);
    let mut clients: Vec<RawWs> = (0..8)
        .map(|_| RawWs::connect(broker.addr, "/echo"))
        .collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        echo_works(ws, &format!("client {i}"));
    }
    // Mid-fragmented-message and mid-HTTP-head connections too.
    clients[0].send_frame(false, OpCode::Text, b"half a message");
    let mut http = tcp(broker.addr);
    http.write_all(b"GET /echo HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));

    broker.signal(libc::SIGTERM);
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.stream.set_read_timeout(Some(WAIT)).unwrap();
        let (code, reason) = ws.expect_close();
        assert_eq!(code, Some(1001), "client {i}: close code ({reason})");
        ws.send_frame(true, OpCode::Close, &1001u16.to_be_bytes());
        ws.expect_eof();
    }
    drop(clients);
    read_to_eof(&mut http, "connection still in its HTTP head");
    drop(http);
    let status = broker.wait_exit(WAIT).unwrap_or_else(|| {
        panic!("still running {WAIT:?} after SIGTERM and every client gone (grace 60 s)")
    });
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let stderr = broker.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A long-poll held at SIGTERM is answered before its connection ends:
/// `200` with a JSON array (what arrived, here nothing) and
/// `Connection: close`, not a bare EOF.
#[test]
fn sigterm_answers_a_held_long_poll_before_closing() {
    let mut broker = Broker::start(&["--shards", "2", "--shutdown-grace", "60s"]);
    let addr = broker.addr;
    let mut poll = HttpConn::connect(addr);
    // Held far beyond WAIT: only the shutdown can answer it in time.
    poll.send_raw(b"GET /poll/shut.p?timeout_ms=30000 HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the poll is held", || {
        metric_sum(addr, "ringcast_polls_held", "") == 1
    });
    broker.signal(libc::SIGTERM);
    poll.stream.set_read_timeout(Some(WAIT)).unwrap();
    let r = poll
        .read_response()
        .expect("the held poll got no answer: the connection ended first");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(r.json().is_array(), "not a JSON array: {}", r.body_text());
    assert_eq!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("close"),
        "{:?}",
        r.headers
    );
    poll.expect_eof();
    drop(poll);
    let status = broker.wait_exit(WAIT).expect("still running after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_cuts_a_client_that_ignores_the_close_after_the_grace() {
    let mut broker = Broker::start(&["--shards", "2", "--shutdown-grace", "500ms"]);
    let mut polite = RawWs::connect(broker.addr, "/echo");
    let mut deaf = RawWs::connect(broker.addr, "/echo");
    echo_works(&mut polite, "polite");
    echo_works(&mut deaf, "deaf");
    broker.signal(libc::SIGTERM);
    let signalled = Instant::now();
    assert_eq!(expect_close_code(&mut polite, "polite"), 1001);
    polite.send_frame(true, OpCode::Close, &1001u16.to_be_bytes());
    polite.expect_eof();
    drop(polite);
    // The deaf client reads the close but never answers.
    assert_eq!(expect_close_code(&mut deaf, "deaf"), 1001);
    read_to_eof(&mut deaf.stream, "client ignoring the close");
    assert!(
        signalled.elapsed() >= Duration::from_millis(400),
        "cut after {:?}, before the 500ms grace",
        signalled.elapsed()
    );
    let status = broker
        .wait_exit(WAIT)
        .expect("broker still running after the grace period");
    assert_eq!(status.code(), Some(0), "exit status after the grace period");
    let stderr = broker.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sigint_shuts_down_like_sigterm() {
    let mut broker = Broker::start(&["--shards", "1"]);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    echo_works(&mut ws, "before SIGINT");
    broker.signal(libc::SIGINT);
    assert_eq!(expect_close_code(&mut ws, "SIGINT"), 1001);
    ws.send_frame(true, OpCode::Close, &1001u16.to_be_bytes());
    ws.expect_eof();
    drop(ws);
    let status = broker.wait_exit(WAIT).expect("still running after SIGINT");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn idle_broker_exits_0_on_sigterm() {
    let mut broker = Broker::start(&["--shards", "2"]);
    broker.signal(libc::SIGTERM);
    let status = broker.wait_exit(WAIT).expect("still running after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

fn assert_port_busy(addr: SocketAddr, what: &str) {
    let listen = addr.to_string();
    let (code, _out, err) = run_to_exit(&["--listen", &listen, "--shards", "2"], WAIT);
    assert!(
        matches!(code, Some(c) if c != 0),
        "{what}: second broker exited with {code:?}; stderr: {err}"
    );
    assert!(err.contains("already in use"), "{what}: stderr: {err}");
}

#[test]
fn second_broker_on_the_same_port_fails() {
    let broker = Broker::start(&["--shards", "2"]);
    assert_port_busy(broker.addr, "port held by another ringcast");
    // The first one is undisturbed.
    echo_works(&mut RawWs::connect(broker.addr, "/echo"), "first broker");

    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    assert_port_busy(plain.local_addr().unwrap(), "port held by a plain listener");
}

#[test]
fn invalid_config_exits_2_and_names_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--shards", "0"], "--shards"),
        (&["--max-connections", "0"], "--max-connections"),
        (
            &["--ping-interval", "2s", "--idle-timeout", "1s"],
            "--idle-timeout",
        ),
        (
            &["--ping-interval", "1s", "--idle-timeout", "1s"],
            "--idle-timeout",
        ),
        (&["--handshake-timeout", "0ms"], "--handshake-timeout"),
        (&["--close-timeout", "0"], "--close-timeout"),
        (&["--max-frame-size", "32MiB"], "--max-frame-size"),
        (&["--max-message-size", "0"], "--max-message-size"),
        (&["--max-head-size", "64"], "--max-head-size"),
        (&["--max-headers", "0"], "--max-headers"),
        (&["--outbox-size", "0"], "--outbox-size"),
        // Values that do not even parse (clap's usage errors are also 2).
        (&["--max-frame-size", "lots"], "--max-frame-size"),
        (&["--idle-timeout", "soon"], "--idle-timeout"),
        (&["--shards", "many"], "--shards"),
        (&["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, flag) in cases {
        let mut full = vec!["--listen", "127.0.0.1:0"];
        full.extend_from_slice(args);
        let (code, out, err) = run_to_exit(&full, WAIT);
        assert_eq!(code, Some(2), "{args:?}: exit code; stderr: {err}");
        assert!(
            err.contains(flag),
            "{args:?}: stderr does not name {flag}: {err}"
        );
        assert!(!out.contains("listening"), "{args:?}: it started: {out}");
    }
}

#[test]
fn banner_prints_every_limit() {
    let broker = Broker::start(&[
        "--shards",
        "2",
        "--max-connections",
        "77",
        "--handshake-timeout",
        "300ms",
        "--ping-interval",
        "7s",
        "--idle-timeout",
        "20s",
        "--close-timeout",
        "1500ms",
        "--shutdown-grace",
        "3s",
        "--max-frame-size",
        "64KiB",
        "--max-message-size",
        "1MiB",
        "--max-head-size",
        "2KiB",
        "--max-headers",
        "20",
        "--outbox-size",
        "256KiB",
        "--read-buffer",
        "8KiB",
        "--allowed-origins",
        "https://a.example,https://b.example",
        "--subprotocols",
        "chat.v1",
    ]);
    let banner = &broker.banner;
    for (name, value) in [
        ("shards", "2"),
        ("max-connections", "77"),
        ("handshake-timeout", "300ms"),
        ("ping-interval", "7s"),
        ("idle-timeout", "20s"),
        ("close-timeout", "1.5s"),
        ("shutdown-grace", "3s"),
        ("max-frame-size", "65536"),
        ("max-message-size", "1048576"),
        ("max-head-size", "2048"),
        ("max-headers", "20"),
        ("outbox-size", "262144"),
        ("read-buffer", "8192"),
        ("allowed-origins", "https://a.example,https://b.example"),
        ("subprotocols", "chat.v1"),
    ] {
        let line = banner
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("banner has no {name} line:\n{banner}"));
        assert!(
            line.split_whitespace().nth(1) == Some(value),
            "{name} should be {value}: {line:?}"
        );
    }
    assert!(
        banner.contains(&format!("ringcast listening on {}", broker.addr)),
        "{banner}"
    );
    // Defaults are printed too.
    let plain = Broker::start(&["--shards", "1"]);
    for needle in [
        "max-frame-size     16777216 bytes",
        "max-message-size   16777216 bytes",
        "max-head-size      8192 bytes",
        "max-headers        32",
        "idle-timeout       75s",
        "ping-interval      30s",
        "allowed-origins    (any)",
        "subprotocols       (none)",
    ] {
        assert!(
            plain.banner.contains(needle),
            "{needle:?} in\n{}",
            plain.banner
        );
    }
}

#[test]
fn sigterm_close_is_not_lost_behind_a_large_echo() {
    let mut broker = Broker::start(&["--shards", "1", "--shutdown-grace", "2s"]);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    // A 16 MiB echo is queued and still being written (we do not read yet)
    // when the shutdown starts: the 1001 must follow it, not be dropped.
    let data = vec![0x5au8; 16 << 20];
    ws.send_frame(true, OpCode::Binary, &data);
    // Wait (without consuming anything) until the echo starts to arrive:
    // it is then queued on the server and being written.
    ws.stream.set_read_timeout(Some(WAIT)).unwrap();
    ws.stream.peek(&mut [0u8; 2]).expect("the echo starts");
    broker.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    match ws.read_frame() {
        Some((true, OpCode::Binary, got)) => assert!(got == data, "echo corrupted"),
        other => panic!("expected the 16 MiB echo, got {:?}", other.map(|f| f.1)),
    }
    let next = ws.read_frame();
    assert!(
        matches!(&next, Some((true, OpCode::Close, p)) if p.starts_with(&1001u16.to_be_bytes())),
        "after the echo, expected close 1001, got {next:?}"
    );
    ws.send_frame(true, OpCode::Close, &1001u16.to_be_bytes());
    ws.expect_eof();
    drop(ws);
    let status = broker.wait_exit(WAIT).expect("still running after SIGTERM");
    assert_eq!(status.code(), Some(0));
}
