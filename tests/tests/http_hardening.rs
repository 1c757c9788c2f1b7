//! The HTTP/1.1 front end against hostile and ordinary clients: request
//! smuggling (RFC 9112 section 6 read strictly), chunked bodies,
//! `Expect: 100-continue`, `HEAD`, absolute-form targets, `Host`, the
//! health check at the connection limit, and JSON nesting limits.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use ringcast_e2e::{http_exchange, read_head_bytes, tcp, Broker, HttpConn, RawWs};
use ringcast_proto::chunked;
use ringcast_proto::frame::OpCode;
use serde_json::{json, Value};

/// The retained messages of `topic` (a short poll).
fn retained(addr: SocketAddr, topic: &str) -> Value {
    let r = HttpConn::connect(addr).get(&format!("/poll/{topic}?since=0&timeout_ms=0"));
    assert_eq!(r.status, 200, "{}", r.body_text());
    r.json()
}

/// A request that would publish `1` to `topic` if it were ever parsed.
fn hidden(topic: &str) -> String {
    format!("POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1")
}

/// Sends `raw`, half-closes and reads to the end: the server must answer
/// exactly one `400` and close.
fn assert_one_400(addr: SocketAddr, raw: &str, what: &str) {
    let resp = http_exchange(addr, raw.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 400 "), "{what}: {resp:?}");
    assert_eq!(
        resp.matches("HTTP/1.1 ").count(),
        1,
        "{what}: more than one response: {resp:?}"
    );
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{what}: {resp:?}"
    );
}

#[test]
fn smuggling_attempts_get_400_and_nothing_behind_them_runs() {
    let broker = Broker::start(&["--shards", "2"]);
    let addr = broker.addr;
    let cases: Vec<(&str, String)> = vec![
        (
            "two different Content-Lengths",
            format!(
                "POST /publish/smug.cl HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: {}\r\n\r\n1{}",
                1 + hidden("smug.cl.hidden").len(),
                hidden("smug.cl.hidden")
            ),
        ),
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /publish/smug.te HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                hidden("smug.te.hidden")
            ),
        ),
        (
            "Transfer-Encoding before Content-Length",
            format!(
                "POST /publish/smug.te2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{}",
                hidden("smug.te2.hidden")
            ),
        ),
        (
            "Content-Length: +5",
            format!(
                "POST /publish/smug.plus HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n1{}",
                hidden("smug.plus.hidden")
            ),
        ),
        (
            "Content-Length: 5, 6",
            format!(
                "POST /publish/smug.list HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n1{}",
                hidden("smug.list.hidden")
            ),
        ),
        (
            "GET with a Content-Length body",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
                hidden("smug.get.hidden").len(),
                hidden("smug.get.hidden")
            ),
        ),
        (
            "GET with a chunked body",
            {
                let mut body = Vec::new();
                chunked::encode(hidden("smug.getc.hidden").as_bytes(), &[7], &mut body);
                format!(
                    "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                    String::from_utf8(body).unwrap()
                )
            },
        ),
        (
            "an upgrade with a body",
            format!(
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Content-Length: {}\r\n\r\n{}",
                hidden("smug.ws.hidden").len(),
                hidden("smug.ws.hidden")
            ),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST /publish/smug.h10 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                hidden("smug.h10.hidden")
            ),
        ),
        (
            "a coding other than chunked",
            format!(
                "POST /publish/smug.gz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{}",
                hidden("smug.gz.hidden")
            ),
        ),
        (
            "a malformed chunk",
            format!(
                "POST /publish/smug.chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n1\n0\r\n\r\n{}",
                hidden("smug.chunk.hidden")
            ),
        ),
    ];
    for (what, raw) in &cases {
        assert_one_400(addr, raw, what);
    }
    // Another method with a body: its 404 or 405, and closed all the same.
    for (target, status) in [("/healthz", 405), ("/nope", 404), ("/", 405)] {
        let raw = format!(
            "PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
            hidden("smug.put.hidden").len(),
            hidden("smug.put.hidden")
        );
        let resp = http_exchange(addr, raw.as_bytes());
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status} ")),
            "PUT {target}: {resp}"
        );
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "PUT {target}: {resp}");
    }
    for topic in [
        "smug.put.hidden",
        "smug.cl",
        "smug.cl.hidden",
        "smug.te",
        "smug.te.hidden",
        "smug.te2",
        "smug.te2.hidden",
        "smug.plus",
        "smug.plus.hidden",
        "smug.list",
        "smug.list.hidden",
        "smug.get.hidden",
        "smug.getc.hidden",
        "smug.ws.hidden",
        "smug.h10",
        "smug.h10.hidden",
        "smug.gz",
        "smug.gz.hidden",
        "smug.chunk",
        "smug.chunk.hidden",
    ] {
        assert_eq!(retained(addr, topic), json!([]), "{topic} was published to");
    }
    // Equal duplicates are one length: accepted.
    let mut c = HttpConn::connect(addr);
    c.send_raw(
        b"POST /publish/smug.same HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(c.read_response().unwrap().json(), json!({ "seq": 1 }));
    // A GET with `Content-Length: 0` has no body and stays alive.
    c.send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.read_response().unwrap().status, 200);
}

/// Subscribes a raw WebSocket to `topic`.
fn subscriber(addr: SocketAddr, topic: &str) -> RawWs {
    let mut ws = RawWs::connect(addr, "/ws");
    let cmd = json!({ "op": "subscribe", "topic": topic }).to_string();
    ws.send_frame(true, OpCode::Text, cmd.as_bytes());
    assert_eq!(ws.next_json()["op"], "subscribed");
    ws
}

#[test]
fn chunked_publishes_are_delivered_and_bounded() {
    let broker = Broker::start(&[
        "--shards",
        "2",
        "--max-message-size",
        "4KiB",
        "--max-frame-size",
        "4KiB",
    ]);
    let addr = broker.addr;
    let mut sub = subscriber(addr, "ch.t");
    let data = json!({ "text": "x".repeat(1000), "n": [1, 2, 3] }).to_string();
    let mut body = Vec::new();
    chunked::encode(data.as_bytes(), &[1, 300, 17], &mut body);
    let head = "POST /publish/ch.t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut c = HttpConn::connect(addr);
    // Trickled: the head, then the body in small writes.
    c.send_raw(head.as_bytes());
    for piece in body.chunks(97) {
        c.send_raw(piece);
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.json()), (200, json!({ "seq": 1 })));
    let m = sub.next_json();
    assert_eq!(
        (m["op"].as_str(), m["seq"].as_u64()),
        (Some("message"), Some(1))
    );
    assert_eq!(m["data"].to_string(), data);
    // Extensions and trailers, then a pipelined request on the same
    // connection: it is read after the body, not inside it.
    c.send_raw(
        b"POST /publish/ch.t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          1;ext=1\r\n[\r\n2\r\n7]\r\n0\r\nX-Trailer: yes\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(c.read_response().unwrap().json(), json!({ "seq": 2 }));
    assert_eq!(c.read_response().unwrap().body, b"ok\n");
    assert_eq!(sub.next_json()["data"], json!([7]));
    // Over --max-message-size: 413 and closed, even if the chunk size
    // alone says so.
    for raw in [
        format!("{head}1001\r\n"),
        format!("{head}800\r\n{}\r\n801\r\n", "1".repeat(0x800)),
    ] {
        let mut c = HttpConn::connect(addr);
        c.send_raw(raw.as_bytes());
        assert_eq!(c.read_response().unwrap().status, 413);
        c.expect_eof();
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let broker = Broker::start(&["--shards", "1"]);
    let addr = broker.addr;
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    for (framing, body) in [
        ("Content-Length: 7\r\n", b"[1,2,3]".to_vec()),
        ("Transfer-Encoding: chunked\r\n", {
            let mut b = Vec::new();
            chunked::encode(b"[1,2,3]", &[3], &mut b);
            b
        }),
    ] {
        let mut c = HttpConn::connect(addr);
        let started = Instant::now();
        c.send_raw(
            format!(
                "POST /publish/ex.t HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n{framing}\r\n"
            )
            .as_bytes(),
        );
        let mut interim = vec![0u8; CONTINUE.len()];
        c.stream.read_exact(&mut interim).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&interim),
            String::from_utf8_lossy(CONTINUE),
            "{framing}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{framing}");
        c.send_raw(&body);
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200, "{framing}: {}", r.body_text());
    }
    // The body already sent with the head: no 100, just the answer.
    let mut c = HttpConn::connect(addr);
    c.send_raw(b"POST /publish/ex.t HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n3");
    let mut first = [0u8; 12];
    c.stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Refused before the body: a final status instead of 100, and closed.
    let mut c = HttpConn::connect(addr);
    c.send_raw(
        b"POST /publish/ex.t HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999999\r\n\r\n",
    );
    assert_eq!(c.read_response().unwrap().status, 413);
    c.expect_eof();
}

/// A real client: curl sends `Expect: 100-continue` for a large upload and
/// would wait (here: 10 s) for the 100. Skipped where curl is missing.
#[test]
fn curl_large_upload_with_expect() {
    let Ok(v) = std::process::Command::new("curl").arg("--version").output() else {
        eprintln!("curl not found; skipped");
        return;
    };
    if !v.status.success() {
        return;
    }
    let broker = Broker::start(&["--shards", "1"]);
    let data = format!("\"{}\"", "y".repeat(2 << 20));
    let path = std::env::temp_dir().join(format!("ringcast-curl-{}.json", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    for (name, extra) in [
        ("length", vec![]),
        ("chunked", vec!["-H", "Transfer-Encoding: chunked"]),
    ] {
        let started = Instant::now();
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-v",
                "--expect100-timeout",
                "10",
                "-H",
                "Expect: 100-continue",
            ])
            .args(extra)
            .arg("--data-binary")
            .arg(format!("@{}", path.display()))
            .arg(format!("http://{}/publish/curl.t", broker.addr))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains("HTTP/1.1 100 Continue"), "{name}: {stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("\"seq\""),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{name}: waited for the 100"
        );
    }
    let _ = std::fs::remove_file(&path);
}

/// Reads a response head (to the blank line) from `s`, byte by byte.
fn read_head(s: &mut impl Read) -> String {
    String::from_utf8(read_head_bytes(s)).unwrap()
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"))
}

#[test]
fn head_answers_headers_without_a_body() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut s = tcp(broker.addr);
    // HEAD then GET on one connection: had the HEAD response carried a
    // body, the GET's answer would not start right after its head.
    for path in ["/healthz", "/", "/metrics"] {
        s.write_all(
            format!(
                "HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200 "), "HEAD {path}: {head}");
        assert!(content_length(&head) > 0, "HEAD {path}: {head}");
        let next = read_head(&mut s);
        assert!(
            next.starts_with("HTTP/1.1 200 "),
            "after HEAD {path}: {next}"
        );
        let mut body = vec![0u8; content_length(&next)];
        s.read_exact(&mut body).unwrap();
        assert_eq!(body, b"ok\n");
    }
    // The streaming endpoints: 405 (Allow: GET), still without a body.
    for path in ["/sse/h.t", "/poll/h.t"] {
        let resp = http_exchange(
            broker.addr,
            format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert!(resp.starts_with("HTTP/1.1 405 "), "{resp}");
        assert!(resp.contains("Allow: GET\r\n"), "{resp}");
        assert!(
            resp.ends_with("\r\n\r\n"),
            "a body after a HEAD answer: {resp:?}"
        );
    }
    let resp = http_exchange(broker.addr, b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(resp.contains("Allow: GET, HEAD\r\n"), "{resp}");
}

#[test]
fn absolute_form_targets_and_host() {
    let broker = Broker::start(&["--shards", "2"]);
    let addr = broker.addr;
    let mut c = HttpConn::connect(addr);
    c.send_raw(
        b"GET http://broker.example:8080/healthz HTTP/1.1\r\nHost: broker.example:8080\r\n\r\n",
    );
    assert_eq!(c.read_response().unwrap().body, b"ok\n");
    c.send_raw(
        b"POST HTTP://broker.example/publish/abs.t?x=1 HTTP/1.1\r\nHost: broker.example\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(c.read_response().unwrap().json(), json!({ "seq": 1 }));
    c.send_raw(b"GET http://b/poll/abs.t?since=0&timeout_ms=0 HTTP/1.1\r\nHost: b\r\n\r\n");
    assert_eq!(c.read_response().unwrap().json()[0]["seq"], 1);
    // Host: missing or twice is a 400 and a close.
    assert_one_400(addr, "GET /healthz HTTP/1.1\r\n\r\n", "missing Host");
    assert_one_400(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "duplicate Host",
    );
    assert_one_400(
        addr,
        &format!(
            "POST /publish/abs.t HTTP/1.1\r\nContent-Length: 1\r\n\r\n1{}",
            hidden("abs.t")
        ),
        "a publish without Host",
    );
    // HTTP/1.0 needs no Host.
    let resp = http_exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert_eq!(retained(addr, "abs.t").as_array().unwrap().len(), 1);
}

#[test]
fn healthz_answers_at_the_connection_limit() {
    let broker = Broker::start(&["--shards", "1", "--max-connections", "2"]);
    let addr = broker.addr;
    // The limit is taken...
    let mut held: Vec<RawWs> = (0..2).map(|_| RawWs::connect(addr, "/echo")).collect();
    // ... and some connections past it sit idle in the slack.
    let mut idle: Vec<_> = (0..3).map(|_| tcp(addr)).collect();
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..3 {
        let resp = http_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok\n"), "{resp}");
        let resp = http_exchange(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            resp.starts_with("HTTP/1.1 200 ") && resp.ends_with("\r\n\r\n"),
            "{resp}"
        );
    }
    // Anything else is refused with 503, as before.
    for req in [
        &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /poll/x?timeout_ms=0 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let resp = http_exchange(addr, req);
        assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
    }
    // An idle connection past the limit is not kept for long.
    for s in &mut idle {
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle over-limit connection: {other:?}"),
        }
        let _ = s.shutdown(Shutdown::Both);
    }
    // The held ones were never disturbed.
    for ws in &mut held {
        ws.send_frame(true, OpCode::Text, b"still here");
        assert_eq!(ws.read_frame().unwrap().2, b"still here");
    }
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn deep_json_is_refused_on_both_paths() {
    let broker = Broker::start(&["--shards", "2"]);
    let addr = broker.addr;
    let mut sub = subscriber(addr, "deep.t");
    let mut ws = RawWs::connect(addr, "/ws");
    let publish = |depth: usize| {
        format!(
            r#"{{"op":"publish","topic":"deep.t","data":{},"id":"d{depth}"}}"#,
            nested(depth)
        )
    };
    ws.send_frame(true, OpCode::Text, publish(65).as_bytes());
    let e = ws.next_json();
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_json")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("64"), "{e}");
    assert_eq!(e["id"], "d65");
    // Far deeper than any recursive parser survives: the same answer.
    ws.send_frame(true, OpCode::Text, publish(100_000).as_bytes());
    assert_eq!(ws.next_json()["code"], "bad_json");
    ws.send_frame(true, OpCode::Text, publish(64).as_bytes());
    assert_eq!(ws.next_json()["op"], "published");
    assert_eq!(sub.next_json()["data"].to_string(), nested(64));
    // HTTP: 400 with the JSON error body; the connection stays.
    let mut c = HttpConn::connect(addr);
    for depth in [65, 100_000] {
        let r = c.post("/publish/deep.t", nested(depth).as_bytes());
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["code"], "bad_json");
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .contains("--max-json-depth"));
    }
    assert_eq!(c.post("/publish/deep.t", nested(64).as_bytes()).status, 200);
    assert_eq!(sub.next_json()["seq"], 2);

    // The limit is a flag.
    let small = Broker::start(&["--shards", "1", "--max-json-depth", "2"]);
    let mut c = HttpConn::connect(small.addr);
    assert_eq!(c.post("/publish/deep.s", b"{\"a\":[1]}").status, 200);
    assert_eq!(c.post("/publish/deep.s", b"{\"a\":[[1]]}").status, 400);
    assert_eq!(c.post("/publish/deep.s", b"\"[[[[[[\"").status, 200);
}

#[test]
fn an_id_too_long_to_echo_is_an_error_not_a_dropped_connection() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut ws = RawWs::connect(broker.addr, "/ws");
    let id = "i".repeat(100_000);
    let cmd = json!({ "op": "subscribe", "topic": "id.t", "id": id }).to_string();
    ws.send_frame(true, OpCode::Text, cmd.as_bytes());
    let e = ws.next_json();
    assert_eq!(
        (e["code"].as_str(), e.get("id")),
        (Some("bad_request"), None),
        "{e}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("id too long"),
        "{e}"
    );
    // The connection goes on.
    let cmd = json!({ "op": "subscribe", "topic": "id.t", "id": "short" }).to_string();
    ws.send_frame(true, OpCode::Text, cmd.as_bytes());
    let ok = ws.next_json();
    assert_eq!(
        (ok["op"].as_str(), ok["id"].as_str()),
        (Some("subscribed"), Some("short"))
    );
}
