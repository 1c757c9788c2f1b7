//! The HTTP baselines on the same pub/sub core: long-polling
//! (`GET /poll/{topic}`) and Server-Sent Events (`GET /sse/{topic}`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use ringcast_e2e::{metric_sum, tcp, wait_until, Broker, HttpConn, SseStream};
use serde_json::Value;

fn publish(addr: SocketAddr, topic: &str, data: &str) -> u64 {
    let r = HttpConn::connect(addr).post(&format!("/publish/{topic}"), data.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body_text());
    r.json()["seq"].as_u64().unwrap()
}

fn seqs(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["op"] == "message")
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn poll_answers_at_once_with_what_is_retained() {
    let broker = Broker::start(&["--shards", "4"]);
    for i in 1..=3 {
        assert_eq!(publish(broker.addr, "p.now", &format!("{{\"n\": {i}}}")), i);
    }
    let mut c = HttpConn::connect(broker.addr);
    let r = c.get("/poll/p.now?since=0&timeout_ms=0");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let epoch = r.header("ringcast-epoch").expect("Ringcast-Epoch header");
    assert_eq!(epoch.len(), 16, "{epoch}");
    let v = r.json();
    assert_eq!(seqs(&v), [1, 2, 3]);
    assert_eq!(v[0]["topic"], "p.now");
    // data byte for byte, inside the same message object as on /ws
    assert!(
        r.body_text().contains(r#""data":{"n": 1}"#),
        "{}",
        r.body_text()
    );
    // Same keep-alive connection: only what is newer than `since`.
    let v = c.get("/poll/p.now?since=2&timeout_ms=0").json();
    assert_eq!(seqs(&v), [3]);
    // Short poll with nothing new: an empty array at once.
    assert_eq!(c.get("/poll/p.now?since=3&timeout_ms=0").body, b"[]");
}

#[test]
fn long_poll_is_held_until_a_message_arrives() {
    let broker = Broker::start(&["--shards", "4"]);
    let addr = broker.addr;
    publish(addr, "p.held", "1");
    let waiter = std::thread::spawn(move || {
        // 60 s: only a publish can end it before the harness' 10 s read timeout.
        HttpConn::connect(addr).get("/poll/p.held?since=1&timeout_ms=60000")
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "the poll must wait for a message");
    publish(addr, "p.held", r#""second""#);
    let r = waiter.join().unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(seqs(&v), [2]);
    assert_eq!(v[0]["data"], "second");
}

/// The request deadline (`--handshake-timeout`) covers receiving a
/// request, not holding it: a poll held past it is answered, not cut.
#[test]
fn a_poll_is_held_past_the_request_deadline() {
    let broker = Broker::start(&["--shards", "1", "--handshake-timeout", "1s"]);
    let mut c = HttpConn::connect(broker.addr);
    let r = c.get("/poll/p.held?timeout_ms=2500");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!([]));
    let addr = broker.addr;
    let publisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        publish(addr, "p.held", "7")
    });
    let r = c.get("/poll/p.held?since=0&timeout_ms=5000");
    assert_eq!(seqs(&r.json()), [1], "the same keep-alive connection");
    assert_eq!(publisher.join().unwrap(), 1);
}

#[test]
fn long_poll_times_out_with_an_empty_array() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = HttpConn::connect(broker.addr);
    let r = c.get("/poll/p.quiet?since=0&timeout_ms=200");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"[]"[..]));
    // The connection is still usable.
    publish(broker.addr, "p.quiet", "7");
    assert_eq!(
        seqs(&c.get("/poll/p.quiet?since=0&timeout_ms=0").json()),
        [1]
    );
}

/// Answers larger than the outbox (a single message bigger than it),
/// pipelined by a client that reads only after sending them all: every
/// answer arrives whole and in order (an answer is owed, never dropped);
/// the broker just takes the next request once the previous answer has
/// drained.
#[test]
fn pipelined_poll_answers_larger_than_the_outbox_all_arrive() {
    let broker = Broker::start(&[
        "--shards",
        "1",
        "--outbox-size",
        "64KiB",
        "--history-bytes",
        "4MiB",
    ]);
    let big = format!("\"{}\"", "x".repeat(100 * 1024));
    for _ in 0..3 {
        publish(broker.addr, "p.big", &big);
    }
    let mut c = HttpConn::connect(broker.addr);
    let req = b"GET /poll/p.big?since=0&timeout_ms=0 HTTP/1.1\r\nHost: t\r\n\r\n";
    c.send_raw(&req.repeat(4));
    for _ in 0..4 {
        let r = c.read_response().expect("a whole answer");
        assert_eq!(r.status, 200);
        // Capped at the outbox size, but never empty: one message.
        assert_eq!(seqs(&r.json()), [1]);
        assert!(r.body.len() > 100 * 1024, "{}", r.body.len());
    }
}

/// A poller far behind gets the history in answers of at most
/// `--outbox-size` bytes, and all of it by polling on with the last seq.
#[test]
fn a_poller_far_behind_pages_through_the_history() {
    let broker = Broker::start(&[
        "--shards",
        "2",
        "--outbox-size",
        "64KiB",
        "--history-bytes",
        "4MiB",
    ]);
    let data = format!("\"{}\"", "y".repeat(8 * 1024));
    for _ in 0..40 {
        publish(broker.addr, "p.page", &data);
    }
    let mut c = HttpConn::connect(broker.addr);
    let (mut since, mut got, mut answers) = (0, Vec::new(), 0);
    while since < 40 {
        let r = c.get(&format!("/poll/p.page?since={since}&timeout_ms=0"));
        assert!(r.body.len() <= 64 * 1024, "{}", r.body.len());
        let s = seqs(&r.json());
        assert!(!s.is_empty());
        since = *s.last().unwrap();
        got.extend(s);
        answers += 1;
    }
    assert_eq!(got, (1..=40).collect::<Vec<u64>>());
    assert!(answers >= 5, "{answers} answers for 320 KiB");
}

#[test]
fn poll_reports_a_gap_before_what_is_retained() {
    let broker = Broker::start(&["--shards", "2", "--history-messages", "2"]);
    for i in 0..5 {
        publish(broker.addr, "p.gap", &i.to_string());
    }
    let v = HttpConn::connect(broker.addr)
        .get("/poll/p.gap?since=0&timeout_ms=0")
        .json();
    assert_eq!(v[0]["op"], "gap");
    assert_eq!(
        (v[0]["since"].as_u64(), v[0]["first_seq"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(seqs(&v), [4, 5]);
}

#[test]
fn poll_errors_are_clear() {
    let broker = Broker::start(&["--shards", "1", "--max-poll-timeout", "5s"]);
    let mut c = HttpConn::connect(broker.addr);
    for (path, code) in [
        ("/poll/p.e?since=-1", "bad_request"),
        ("/poll/p.e?since=abc", "bad_request"),
        ("/poll/p.e?timeout_ms=x", "bad_request"),
        ("/poll/p.e?timeout_ms=6000", "bad_request"),
        ("/poll/bad%20topic", "bad_topic"),
        ("/poll/a..b", "bad_topic"),
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["code"], code, "{path}");
    }
    let mut c = HttpConn::connect(broker.addr);
    c.send_raw(b"POST /poll/p.e HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
}

/// A held poll whose client leaves is freed at once, not when its 60 s
/// run out; a client that only half-closes gets its (empty) answer at once.
#[test]
fn a_client_that_leaves_mid_hold_frees_it_at_once() {
    let broker = Broker::start(&["--shards", "1"]);
    let addr = broker.addr;
    let req = b"GET /poll/p.gone?timeout_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n";

    let mut gone = tcp(addr);
    gone.write_all(req).unwrap();
    wait_until("the poll is held", || {
        metric_sum(addr, "ringcast_polls_held", "") == 1
    });
    drop(gone);
    wait_until("the hold is freed well before 60 s", || {
        metric_sum(addr, "ringcast_polls_held", "") == 0
    });

    let mut half = tcp(addr);
    half.write_all(req).unwrap();
    wait_until("the poll is held", || {
        metric_sum(addr, "ringcast_polls_held", "") == 1
    });
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    half.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n[]"), "{answer}");
    assert_eq!(metric_sum(addr, "ringcast_polls_held", ""), 0);

    // Nothing of them is left subscribed: a publish reaches a new poller
    // as seq 1 and nobody else.
    assert_eq!(publish(addr, "p.gone", "1"), 1);
    let r = HttpConn::connect(addr).get("/poll/p.gone?since=0&timeout_ms=0");
    assert_eq!(seqs(&r.json()), [1]);
}

#[test]
fn held_polls_are_bounded_per_shard() {
    let broker = Broker::start(&["--shards", "1", "--max-polls", "2"]);
    let addr = broker.addr;
    // Exactly the bound is held: both holders are admitted...
    let holders: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                HttpConn::connect(addr).get("/poll/p.b?since=0&timeout_ms=60000")
            })
        })
        .collect();
    wait_until("both polls are held", || {
        metric_sum(addr, "ringcast_polls_held", "") == 2
    });
    // ...and the next one is refused at once.
    let refused = HttpConn::connect(addr).get("/poll/p.b?since=0&timeout_ms=100");
    assert_eq!(refused.status, 503);
    assert!(refused.body_text().contains("too many held polls"));
    publish(addr, "p.b", "1");
    for h in holders {
        let r = h.join().unwrap();
        assert_eq!((r.status, seqs(&r.json())), (200, vec![1]));
    }
}

/// A long-polling client loop (poll, remember the last seq, poll again)
/// sees every message exactly once and in order, across shards.
#[test]
fn long_polling_clients_see_every_message_once() {
    let broker = Broker::start(&["--shards", "4", "--history-messages", "1000"]);
    let addr = broker.addr;
    const N: u64 = 200;
    let pollers: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let topic = format!("p.loop{}", i % 2);
                let mut c = HttpConn::connect(addr);
                let (mut since, mut got) = (0u64, Vec::new());
                while since < N {
                    let r = c.get(&format!("/poll/{topic}?since={since}&timeout_ms=5000"));
                    assert_eq!(r.status, 200);
                    for s in seqs(&r.json()) {
                        got.push(s);
                        since = s;
                    }
                }
                got
            })
        })
        .collect();
    let mut c0 = HttpConn::connect(addr);
    let mut c1 = HttpConn::connect(addr);
    for i in 0..N {
        assert_eq!(
            c0.post("/publish/p.loop0", i.to_string().as_bytes()).status,
            200
        );
        assert_eq!(
            c1.post("/publish/p.loop1", i.to_string().as_bytes()).status,
            200
        );
    }
    for p in pollers {
        assert_eq!(p.join().unwrap(), (1..=N).collect::<Vec<_>>());
    }
}

#[test]
fn sse_streams_with_proxy_headers_replay_and_live() {
    let broker = Broker::start(&["--shards", "4"]);
    for i in 1..=3 {
        publish(broker.addr, "s.t", &format!("[{i}]"));
    }
    let mut s = SseStream::open(broker.addr, "/sse/s.t?since=1", "");
    s.read_until(|t| t.contains("id: 3\n"));
    let head = s.text.split_once("\r\n\r\n").unwrap().0.to_string();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    for h in [
        "Content-Type: text/event-stream",
        "Cache-Control: no-cache",
        "X-Accel-Buffering: no",
    ] {
        assert!(head.contains(h), "{h} in {head}");
    }
    for i in 4..=50 {
        publish(broker.addr, "s.t", &format!("[{i}]"));
    }
    s.read_until(|t| t.contains("id: 50\n"));
    let mut events = s.events();
    // First, before the replay: `subscribed` with the broker's epoch.
    let (name, id, data) = events.remove(0);
    assert_eq!((name.as_str(), id), ("subscribed", None));
    assert_eq!(
        (&data["op"], &data["topic"]),
        (&"subscribed".into(), &"s.t".into())
    );
    let epoch = data["epoch"].as_str().unwrap();
    assert!(
        head.contains(&format!("Ringcast-Epoch: {epoch}\r\n")),
        "{head}"
    );
    let ids: Vec<u64> = events.iter().map(|e| e.1.unwrap()).collect();
    assert_eq!(
        ids,
        (2..=50).collect::<Vec<_>>(),
        "replay after since=1, then live, in order"
    );
    for (name, id, data) in &events {
        assert_eq!(name, "message");
        assert_eq!(data["op"], "message");
        assert_eq!(data["seq"].as_u64(), *id);
        assert_eq!(data["data"][0].as_u64(), *id);
    }
}

#[test]
fn sse_resumes_from_last_event_id() {
    let broker = Broker::start(&["--shards", "2"]);
    for i in 1..=5 {
        publish(broker.addr, "s.resume", &i.to_string());
    }
    // The header wins over the query (it is what a reconnecting EventSource sends).
    let mut s = SseStream::open(broker.addr, "/sse/s.resume?since=0", "Last-Event-ID: 3\r\n");
    s.read_until(|t| t.contains("id: 5\n"));
    let ids: Vec<u64> = s.events()[1..].iter().map(|e| e.1.unwrap()).collect();
    assert_eq!(ids, [4, 5]);
}

#[test]
fn sse_gap_and_heartbeat_events() {
    let broker = Broker::start(&[
        "--shards",
        "2",
        "--history-messages",
        "2",
        "--ping-interval",
        "200ms",
        "--idle-timeout",
        "1s",
    ]);
    for i in 1..=5 {
        publish(broker.addr, "s.gap", &i.to_string());
    }
    let mut s = SseStream::open(broker.addr, "/sse/s.gap?since=1", "");
    s.read_until(|t| t.contains("id: 5\n") && t.contains(": heartbeat\n"));
    let events = s.events();
    assert_eq!(events[0].0, "subscribed");
    let events = &events[1..];
    assert_eq!(events[0].0, "gap");
    assert_eq!(events[0].2["first_seq"], 4);
    let ids: Vec<u64> = events[1..].iter().map(|e| e.1.unwrap()).collect();
    assert_eq!(ids, [4, 5]);
}

#[test]
fn sse_errors_are_clear() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = HttpConn::connect(broker.addr);
    let r = c.get("/sse/bad%20topic");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("bad_topic"))
    );
    let mut c = HttpConn::connect(broker.addr);
    c.send_raw(b"GET /sse/s.x HTTP/1.1\r\nHost: t\r\nLast-Event-ID: soon\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("bad_request"))
    );
}
