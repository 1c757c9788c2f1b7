//! The broker's bounds on what clients make it hold, end to end: how long
//! and how much history it retains (`--history-ttl`, `--history-budget`)
//! and how much work one shard may queue for another (`--mesh-queue`).
//! Whatever a bound drops or refuses, the client is told: a `gap` notice, a
//! new epoch, an `overloaded` error or a `503` with `Retry-After`.
//!
//! No timing assertions: a wait for the broker to act (the TTL running out)
//! is a [`wait_until`] on its metrics, bounded by the harness.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcast_e2e::{client_frame, metric_sum, wait_until, Broker, HttpConn, RawWs};
use ringcast_proto::frame::OpCode;
use serde_json::Value;

/// How long a flooding test keeps trying to overload the broker.
const FLOOD_FOR: Duration = Duration::from_secs(20);
/// Publishes in one pipelined burst. Their replies (about 115 bytes for an
/// `overloaded` error) stay well under the 64 KiB of replies the broker
/// lets a connection queue before it counts it as not reading.
const BURST: usize = 300;

/// The next message must be `message` `seq` on `topic`.
fn expect_message(ws: &mut RawWs, topic: &str, seq: u64) {
    let m = ws.next_json();
    assert!(
        m["op"] == "message" && m["topic"] == topic && m["seq"] == seq,
        "expected message {seq} on {topic}, got {m}"
    );
}

/// The next message must be the `gap` notice for `topic`: seqs after
/// `since` and before `first_seq` are gone.
fn expect_gap(ws: &mut RawWs, topic: &str, since: u64, first_seq: u64) {
    let g = ws.next_json();
    assert!(
        g["op"] == "gap"
            && g["topic"] == topic
            && g["since"] == since
            && g["first_seq"] == first_seq
            && g["id"] == format!("s:{topic}"),
        "expected gap on {topic} (since {since}, first_seq {first_seq}), got {g}"
    );
}

fn unsubscribe(ws: &mut RawWs, topic: &str) {
    ws.send_text(&format!(
        r#"{{"op":"unsubscribe","topic":"{topic}","id":"u:{topic}"}}"#
    ));
    let r = ws.next_json();
    assert!(
        r["op"] == "unsubscribed" && r["id"] == format!("u:{topic}"),
        "expected unsubscribed from {topic}, got {r}"
    );
}

/// The epoch a fresh subscription to `topic` reports (the subscription
/// is dropped again, so the topic's fate is untouched).
fn epoch_of(ws: &mut RawWs, topic: &str) -> String {
    let r = ws.subscribe(topic, None);
    unsubscribe(ws, topic);
    r["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch in {r}"))
        .to_string()
}

/// The epoch of a topic created again after it was dropped: the broker's
/// epoch `base` with an incarnation suffix.
fn assert_new_incarnation(base: &str, again: &str, topic: &str) {
    let n = again
        .strip_prefix(base)
        .and_then(|s| s.strip_prefix('.'))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        matches!(n, Some(n) if n > 0),
        "{topic} was dropped and created again: its epoch {again:?} should be {base:?}.N"
    );
}

fn dropped(addr: SocketAddr, reason: &str) -> i64 {
    metric_sum(
        addr,
        "ringcast_history_dropped_total",
        &format!("reason=\"{reason}\""),
    )
}

#[test]
fn history_ttl_drops_old_messages_with_a_gap_and_forgets_idle_topics() {
    let broker = Broker::start(&["--shards", "2", "--history-ttl", "2s"]);
    let addr = broker.addr;
    // `ttl.held` keeps a subscriber throughout; `ttl.idle` has none.
    let mut held = RawWs::connect(addr, "/ws");
    held.subscribe("ttl.held", None);
    let mut p = RawWs::connect(addr, "/ws");
    for seq in 1..=3 {
        assert_eq!(p.publish("ttl.held", &seq.to_string()), seq);
        assert_eq!(p.publish("ttl.idle", &seq.to_string()), seq);
        expect_message(&mut held, "ttl.held", seq);
    }
    let mut r = RawWs::connect(addr, "/ws");
    let idle_epoch = epoch_of(&mut r, "ttl.idle");
    assert!(metric_sum(addr, "ringcast_retained_bytes", "") > 0);

    // Both histories run out of time (no publish in between).
    wait_until("both topics' history expired", || dropped(addr, "ttl") == 2);
    assert_eq!(metric_sum(addr, "ringcast_retained_bytes", ""), 0);
    assert_eq!(dropped(addr, "budget"), 0);

    // The held topic goes on from seq 4; a resume from before it is told
    // that 1..=3 are gone, then gets what remains.
    for seq in 4..=5 {
        assert_eq!(p.publish("ttl.held", &seq.to_string()), seq);
        expect_message(&mut held, "ttl.held", seq);
    }
    for since in [0, 2] {
        let mut late = RawWs::connect(addr, "/ws");
        late.subscribe("ttl.held", Some(since));
        expect_gap(&mut late, "ttl.held", since, 4);
        expect_message(&mut late, "ttl.held", 4);
        expect_message(&mut late, "ttl.held", 5);
    }

    // The idle topic was forgotten: it restarts at seq 1, in a new epoch.
    assert_eq!(p.publish("ttl.idle", "\"again\""), 1);
    assert_new_incarnation(&idle_epoch, &epoch_of(&mut r, "ttl.idle"), "ttl.idle");
}

#[test]
fn history_budget_evicts_the_topic_published_to_longest_ago() {
    // One shard, so every topic shares its budget: two ~1 KiB messages fit
    // in it, a third does not.
    let broker = Broker::start(&["--shards", "1", "--history-budget", "3000"]);
    let addr = broker.addr;
    let data = format!("\"{}\"", "b".repeat(1000));
    let mut p = RawWs::connect(addr, "/ws");
    let mut r = RawWs::connect(addr, "/ws");

    // `budget.idle` retains two messages and has no subscriber.
    assert_eq!(p.publish("budget.idle", &data), 1);
    assert_eq!(p.publish("budget.idle", &data), 2);
    let idle_epoch = epoch_of(&mut r, "budget.idle");
    assert_eq!(dropped(addr, "budget"), 0);

    // A publish elsewhere goes over the budget: `budget.idle`, the topic
    // published to longest ago, loses its history (and, idle, is forgotten).
    let mut held = RawWs::connect(addr, "/ws");
    held.subscribe("budget.held", None);
    assert_eq!(p.publish("budget.held", &data), 1);
    expect_message(&mut held, "budget.held", 1);
    assert_eq!(dropped(addr, "budget"), 1);

    // Now `budget.held` is the oldest: a newer topic pushes its history out.
    assert_eq!(p.publish("budget.fresh", &data), 1);
    assert_eq!(p.publish("budget.fresh", &data), 2);
    assert_eq!(dropped(addr, "budget"), 2);

    // A resume of `budget.held` from the start is told seq 1 is gone; the
    // topic itself lives on (it has a subscriber): the next seq is 2.
    let mut late = RawWs::connect(addr, "/ws");
    late.subscribe("budget.held", Some(0));
    expect_gap(&mut late, "budget.held", 0, 2);
    assert_eq!(p.publish("budget.held", &data), 2);
    expect_message(&mut held, "budget.held", 2);
    expect_message(&mut late, "budget.held", 2);
    assert_eq!(dropped(addr, "budget"), 3, "budget.fresh was the oldest");

    // The forgotten idle topic restarts at seq 1, in a new epoch.
    assert_eq!(p.publish("budget.idle", &data), 1);
    assert_new_incarnation(&idle_epoch, &epoch_of(&mut r, "budget.idle"), "budget.idle");
    let retained = metric_sum(addr, "ringcast_retained_bytes", "");
    assert!(
        retained > 0 && retained <= 3000,
        "ringcast_retained_bytes {retained} with a 3000-byte budget"
    );
}

/// What a pipelined flood of publishes got back.
#[derive(Debug, Default)]
struct Flood {
    published: usize,
    overloaded: usize,
}

/// Sends `n` publishes with ids (over 64 topics, so most shards own some)
/// in one pipelined burst from a new `/ws` connection, then reads the
/// replies: exactly one per publish, in command order, each `published`
/// or an `overloaded` error carrying the publish's id.
fn ws_flood(addr: SocketAddr, tag: &str, n: usize) -> Flood {
    let mut ws = RawWs::connect(addr, "/ws");
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}:{i}")).collect();
    let mut burst = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let cmd = format!(
            r#"{{"op":"publish","topic":"flood.{}","data":{i},"id":"{id}"}}"#,
            i % 64
        );
        burst.extend(client_frame(true, OpCode::Text, cmd.as_bytes()));
    }
    // A last command whose reply must follow the publishes' (none extra).
    let end = format!(r#"{{"op":"unsubscribe","topic":"end","id":"{tag}:end"}}"#);
    burst.extend(client_frame(true, OpCode::Text, end.as_bytes()));
    let mut writer = ws.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&burst).unwrap());
    let mut flood = Flood::default();
    for id in &ids {
        let r = ws.next_json();
        assert_eq!(r["id"], **id, "one reply per publish, in order: {r}");
        match r["op"].as_str() {
            Some("published") => flood.published += 1,
            Some("error") if r["code"] == "overloaded" => flood.overloaded += 1,
            _ => panic!("a publish got neither published nor overloaded: {r}"),
        }
    }
    let r = ws.next_json();
    assert!(
        r["op"] == "unsubscribed" && r["id"] == format!("{tag}:end"),
        "after the publishes' replies: {r}"
    );
    sender.join().unwrap();
    flood
}

#[test]
fn a_full_mesh_queue_refuses_websocket_publishes_with_overloaded() {
    let broker = Broker::start(&["--shards", "2", "--mesh-queue", "1"]);
    let addr = broker.addr;
    let end = Instant::now() + FLOOD_FOR;
    let mut total = Flood::default();
    let mut round = 0;
    while total.overloaded == 0 {
        assert!(
            Instant::now() < end,
            "no publish refused in {round} floods ({} published)",
            total.published
        );
        let f = ws_flood(addr, &format!("r{round}"), BURST);
        total.published += f.published;
        total.overloaded += f.overloaded;
        round += 1;
    }
    assert!(total.published > 0, "the mesh refused everything");
    assert_eq!(
        metric_sum(addr, "ringcast_overloaded_total", ""),
        total.overloaded as i64,
        "ringcast_overloaded_total counts every refusal"
    );
}

#[test]
fn a_full_mesh_queue_answers_http_publish_503_with_retry_after() {
    let broker = Broker::start(&["--shards", "2", "--mesh-queue", "1"]);
    let addr = broker.addr;
    // WebSocket floods keep the queues between the shards full...
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                ws_flood(addr, &format!("bg{round}"), BURST);
                round += 1;
            }
        })
    };
    // ...while bursts of POSTs on many connections at once publish to
    // topics all over the shards, until one is refused.
    let mut conns: Vec<HttpConn> = (0..16).map(|_| HttpConn::connect(addr)).collect();
    let end = Instant::now() + FLOOD_FOR;
    let mut refused = None;
    let mut ok = 0;
    let mut round = 0;
    while refused.is_none() {
        assert!(
            Instant::now() < end,
            "no POST refused in {round} bursts ({ok} published)"
        );
        for (i, c) in conns.iter_mut().enumerate() {
            c.send_post(&format!("/publish/http.{i}"), round.to_string().as_bytes());
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let r = c
                .read_response()
                .unwrap_or_else(|| panic!("POST /publish/http.{i}: no response"));
            match r.status {
                200 => {
                    assert!(r.json()["seq"].is_u64(), "{}", r.body_text());
                    ok += 1;
                }
                503 => {
                    // (An error response may end its connection.)
                    *c = HttpConn::connect(addr);
                    refused.get_or_insert(r);
                }
                _ => panic!("POST /publish/http.{i}: {} {}", r.status, r.body_text()),
            }
        }
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let r = refused.unwrap();
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "a 503 says when to retry: {:?}",
        r.headers
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: Value = r.json();
    assert_eq!(
        (&v["op"], &v["code"]),
        (&"error".into(), &"overloaded".into()),
        "{v}"
    );
    assert!(metric_sum(addr, "ringcast_overloaded_total", "") >= 1);
}
