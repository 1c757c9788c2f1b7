//! The live demo: the page at `GET /`, the `--demo` feeder's topics and
//! payloads, and the broker epoch the page uses to survive restarts.

use std::io::Read;

use ringcast_e2e::{tcp, Broker, HttpConn, RawWs};
use ringcast_proto::frame::OpCode;
use serde_json::Value;

const SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "NVDA", "SAP", "ASML"];

#[test]
fn the_page_is_served_at_root_and_self_contained() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = HttpConn::connect(broker.addr);
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let page = r.body_text();
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..40]);
    // Self-contained: nothing loaded from another host, no separate files.
    for needle in [
        "http://",
        "https://",
        "<script src",
        "rel=\"stylesheet\"",
        "@import",
    ] {
        assert!(!page.contains(needle), "the page contains {needle:?}");
    }
    for needle in [
        "demo.ticker",
        "demo.seats",
        "new WebSocket",
        "new EventSource",
        "/poll/",
    ] {
        assert!(page.contains(needle), "the page uses {needle:?}");
    }
    // Kept alive like the other routes: the next request on the same
    // connection is served.
    assert_eq!(c.get("/healthz").status, 200);
    // Query strings (the transport switch) select the same page.
    assert_eq!(c.get("/?transport=sse").body, r.body);
}

#[test]
fn post_to_root_is_405() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = HttpConn::connect(broker.addr);
    let r = c.post("/", b"{}");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    c.expect_eof();
}

#[test]
fn demo_feeds_ticks_with_consecutive_seqs_and_the_documented_shape() {
    let broker = Broker::start(&["--demo", "--shards", "2", "--history-messages", "1000"]);
    assert!(
        broker.banner.contains("demo               on"),
        "{}",
        broker.banner
    );
    let mut ws = RawWs::connect(broker.addr, "/ws");
    ws.send_frame(
        true,
        OpCode::Text,
        br#"{"op":"subscribe","topic":"demo.ticker","since":0,"id":1}"#,
    );
    let sub = ws.next_json();
    assert_eq!(
        (sub["op"].as_str(), sub["id"].as_u64()),
        (Some("subscribed"), Some(1))
    );
    let mut seqs = Vec::new();
    let mut symbols = std::collections::HashSet::new();
    // The replay from seq 1, then live ticks (the harness bounds each read).
    while seqs.len() < 30 {
        let m = ws.next_json();
        assert_eq!(
            (m["op"].as_str(), m["topic"].as_str()),
            (Some("message"), Some("demo.ticker"))
        );
        seqs.push(m["seq"].as_u64().unwrap());
        let d = &m["data"];
        let symbol = d["symbol"].as_str().unwrap();
        assert!(SYMBOLS.contains(&symbol), "{d}");
        symbols.insert(symbol.to_string());
        assert!(d["name"].is_string(), "{d}");
        let [price, open, change, pct] = ["price", "open", "change", "change_pct"]
            .map(|k| d[k].as_f64().unwrap_or_else(|| panic!("{k} in {d}")));
        assert!(price > 0.0 && open > 0.0, "{d}");
        assert!((price - open - change).abs() < 1e-6, "{d}");
        assert!((pct - change / open * 100.0).abs() < 0.0051, "{d}");
    }
    assert_eq!(
        seqs,
        (1..=30).collect::<Vec<_>>(),
        "every seq once, in order, from 1"
    );
    assert_eq!(
        symbols.len(),
        SYMBOLS.len(),
        "the first step shows every symbol"
    );
}

#[test]
fn demo_feeds_seat_counts_on_the_documented_topic() {
    let broker = Broker::start(&["--demo", "--shards", "2", "--history-messages", "1000"]);
    let mut c = HttpConn::connect(broker.addr);
    let mut since = 0;
    let mut trains = std::collections::HashMap::new();
    let mut seen = Vec::new();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < 8 {
        assert!(
            std::time::Instant::now() < end,
            "the feeder published only {seen:?} in 30 s"
        );
        let r = c.get(&format!("/poll/demo.seats?since={since}&timeout_ms=5000"));
        assert_eq!(r.status, 200);
        for m in r.json().as_array().unwrap() {
            assert_eq!(m["op"], "message", "{m}");
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, since + 1, "consecutive seqs");
            since = seq;
            seen.push(seq);
            let d = &m["data"];
            for k in ["train", "route", "departs"] {
                assert!(d[k].is_string(), "{k} in {d}");
            }
            let (seats, capacity) = (
                d["seats"].as_u64().unwrap(),
                d["capacity"].as_u64().unwrap(),
            );
            assert!(seats <= capacity && capacity > 0, "{d}");
            trains.insert(d["train"].as_str().unwrap().to_string(), seats);
        }
    }
    assert_eq!(
        trains.len(),
        4,
        "the first step shows every train: {trains:?}"
    );
}

#[test]
fn demo_is_set_by_flag_variable_or_file_and_printed() {
    let path = std::env::temp_dir().join(format!("ringcast-e2e-{}-demo.toml", std::process::id()));
    std::fs::write(&path, "demo = true\n").unwrap();
    let print = |args: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(ringcast_e2e::broker_binary());
        cmd.args(args)
            .arg("--print-config")
            .env_remove("RINGCAST_DEMO");
        if let Some(v) = env {
            cmd.env("RINGCAST_DEMO", v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(print(&[], None).contains("demo = false\n"));
    assert!(print(&["--demo"], None).contains("demo = true\n"));
    assert!(print(&[], Some("true")).contains("demo = true\n"));
    assert!(print(&["--config", path.to_str().unwrap()], None).contains("demo = true\n"));
}

#[test]
fn without_demo_nothing_is_fed() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = HttpConn::connect(broker.addr);
    let r = c.get("/poll/demo.ticker?since=0&timeout_ms=300");
    assert_eq!((r.status, r.body_text().as_str()), (200, "[]"));
}

/// The epoch a broker reports on `/ws`, in the poll header and in the SSE
/// head and `subscribed` event.
fn epochs(broker: &Broker) -> [String; 4] {
    let mut ws = RawWs::connect(broker.addr, "/ws");
    ws.send_frame(
        true,
        OpCode::Text,
        br#"{"op":"subscribe","topic":"e.t","since":0}"#,
    );
    let sub = ws.next_json();
    assert_eq!(sub["op"], "subscribed");
    let on_ws = sub["epoch"].as_str().unwrap().to_string();
    let r = HttpConn::connect(broker.addr).get("/poll/e.t?timeout_ms=0");
    let on_poll = r.header("ringcast-epoch").unwrap().to_string();
    let mut sse = tcp(broker.addr);
    std::io::Write::write_all(&mut sse, b"GET /sse/e.t HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = String::new();
    let mut chunk = [0u8; 4096];
    while !got.contains("event: subscribed\ndata: ") || !got.ends_with("\n\n") {
        let n = sse.read(&mut chunk).unwrap();
        assert!(n > 0, "SSE stream ended: {got}");
        got.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }
    let head_epoch = got
        .lines()
        .find_map(|l| l.strip_prefix("Ringcast-Epoch: "))
        .unwrap()
        .trim()
        .to_string();
    let data = got
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("the subscribed event");
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (event["op"].as_str(), event["topic"].as_str()),
        (Some("subscribed"), Some("e.t"))
    );
    [
        on_ws,
        on_poll,
        head_epoch,
        event["epoch"].as_str().unwrap().to_string(),
    ]
}

#[test]
fn the_epoch_names_the_instance_on_every_transport() {
    let a = Broker::start(&["--shards", "2"]);
    let ea = epochs(&a);
    assert!(
        ea[0].len() == 16 && ea[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "{ea:?}"
    );
    assert!(
        ea.iter().all(|e| *e == ea[0]),
        "one epoch per instance: {ea:?}"
    );
    // A restarted broker (new process, history gone, seqs from 1 again)
    // has another one: that is how a resuming client tells them apart.
    let b = Broker::start(&["--shards", "2"]);
    let eb = epochs(&b);
    assert!(eb.iter().all(|e| *e == eb[0]), "{eb:?}");
    assert_ne!(ea[0], eb[0]);
}
