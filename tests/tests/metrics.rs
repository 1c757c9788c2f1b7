//! `GET /metrics`: Prometheus text whose numbers follow what happened.

use std::collections::HashMap;

use ringcast_e2e::{http_exchange, metric_sum_in, Broker, HttpConn, RawWs};
use ringcast_proto::frame::OpCode;

fn scrape(broker: &Broker) -> String {
    let resp = http_exchange(broker.addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

#[test]
fn metrics_follow_the_traffic() {
    let broker = Broker::start(&["--shards", "4"]);
    let mut subs: Vec<RawWs> = (0..5).map(|_| RawWs::connect(broker.addr, "/ws")).collect();
    for s in &mut subs {
        s.send_frame(true, OpCode::Text, br#"{"op":"subscribe","topic":"m.t"}"#);
        assert_eq!(s.next_json()["op"], "subscribed");
    }
    let mut echo = RawWs::connect(broker.addr, "/echo");
    let mut http = HttpConn::connect(broker.addr);
    for i in 0..3 {
        assert_eq!(
            http.post("/publish/m.t", i.to_string().as_bytes()).status,
            200
        );
    }
    for s in &mut subs {
        for _ in 0..3 {
            assert_eq!(s.next_json()["op"], "message");
        }
    }
    http_exchange(broker.addr, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    http_exchange(broker.addr, b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n");
    // A client that breaks the protocol gets 1002, counted.
    let mut bad = RawWs::connect(broker.addr, "/echo");
    bad.send_raw(b"\x81\x01x"); // unmasked
    assert_eq!(bad.expect_close().0, Some(1002));
    bad.expect_eof();
    drop(bad);

    let m = scrape(&broker);
    let expect: HashMap<(&str, &str), i64> = [
        (("ringcast_connections", "transport=\"websocket\""), 5),
        (("ringcast_connections", "transport=\"echo\""), 1),
        (("ringcast_subscriptions", ""), 5),
        (("ringcast_topics", ""), 1),
        (("ringcast_messages_published_total", ""), 3),
        (("ringcast_messages_delivered_total", ""), 15),
        (("ringcast_http_errors_total", "reason=\"not_found\""), 1),
        (
            (
                "ringcast_http_errors_total",
                "reason=\"unsupported_version\"",
            ),
            1,
        ),
        (("ringcast_close_codes_sent_total", "code=\"1002\""), 1),
    ]
    .into_iter()
    .collect();
    for ((name, label), want) in &expect {
        assert_eq!(
            metric_sum_in(&m, name, label),
            *want,
            "{name}{{{label}}} in\n{m}"
        );
    }
    assert!(metric_sum_in(&m, "ringcast_connections_accepted_total", "") >= 10);
    assert!(metric_sum_in(&m, "ringcast_bytes_in_total", "") > 0);
    assert!(metric_sum_in(&m, "ringcast_bytes_out_total", "") > 0);
    // Every family has HELP and TYPE.
    for family in [
        "ringcast_connections",
        "ringcast_messages_delivered_total",
        "ringcast_slow_consumers_total",
    ] {
        assert!(m.contains(&format!("# HELP {family} ")), "{family}");
        assert!(m.contains(&format!("# TYPE {family} ")), "{family}");
    }
    // Closing the subscribers brings the gauges back down.
    drop(subs);
    echo.send_frame(true, OpCode::Close, &1000u16.to_be_bytes());
    echo.expect_close();
    echo.expect_eof();
    drop(echo);
    let mut settled = String::new();
    for _ in 0..100 {
        settled = scrape(&broker);
        if metric_sum_in(&settled, "ringcast_subscriptions", "") == 0
            && metric_sum_in(&settled, "ringcast_connections", "transport=\"websocket\"") == 0
            && metric_sum_in(&settled, "ringcast_connections", "transport=\"echo\"") == 0
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        metric_sum_in(&settled, "ringcast_subscriptions", ""),
        0,
        "{settled}"
    );
    assert_eq!(
        metric_sum_in(&settled, "ringcast_connections", "transport=\"websocket\""),
        0
    );
    assert_eq!(
        metric_sum_in(&settled, "ringcast_connections", "transport=\"echo\""),
        0
    );
}

/// A buffer ring too small for a turn's reads runs dry: every byte still
/// arrives (the recvs are re-armed after the turn), and `/metrics` says
/// so, which is how an operator learns to raise `--recv-buffers`.
#[test]
fn exhausted_receive_buffers_lose_nothing_and_are_counted() {
    let broker = Broker::start(&[
        "--shards",
        "1",
        "--recv-buffers",
        "2",
        "--read-buffer",
        "512",
    ]);
    let mut clients: Vec<RawWs> = (0..4)
        .map(|_| RawWs::connect(broker.addr, "/echo"))
        .collect();
    let payloads: Vec<Vec<u8>> = (0..4u8)
        .map(|i| {
            (0..64 * 1024)
                .map(|j| (j as u8).wrapping_mul(7) ^ i)
                .collect()
        })
        .collect();
    for (c, p) in clients.iter_mut().zip(&payloads) {
        c.send_frame(true, OpCode::Binary, p);
    }
    for (c, p) in clients.iter_mut().zip(&payloads) {
        let (fin, op, got) = c.read_frame().expect("the echo");
        assert!(fin && op == OpCode::Binary);
        assert!(
            got == *p,
            "a 64 KiB echo through two 512-byte buffers came back different"
        );
    }
    let m = scrape(&broker);
    let exhausted = metric_sum_in(
        &m,
        "ringcast_loop_events_total",
        "event=\"recv_buffers_exhausted\"",
    );
    assert!(exhausted > 0, "{m}");
    assert!(metric_sum_in(&m, "ringcast_loop_events_total", "event=\"sends\"") > 0);
}
