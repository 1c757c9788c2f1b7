//! The load generator against the real broker: a short `compare` run that
//! must deliver every message exactly once on every transport, its output
//! formats, what it does when the broker is unreachable, closes, or
//! disappears mid-run, and driving several brokers (`--broker` repeated,
//! `--publish-broker`) and reporting the CPU of other processes (`--pid`).
//! Runs are a few seconds each, bounded, and on loopback.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ringcast_e2e::{loadgen_binary, metric_sum, Broker};
use serde_json::Value;

/// Every loadgen process in these tests ends within this long, or the
/// test kills it and fails.
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits for `child` at most [`LIMIT`], then collects its output.
fn finish(mut child: Child) -> Run {
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringcast-loadgen did not stop within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        status,
        stdout,
        stderr,
    }
}

/// The loadgen with exactly `args` (several `--broker`s, say), its
/// output piped.
fn spawn_args(args: &[&str]) -> Child {
    Command::new(loadgen_binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringcast-loadgen")
}

fn spawn(broker: &str, args: &[&str]) -> Child {
    spawn_args(&[&["--broker", broker], args].concat())
}

fn loadgen(broker: &Broker, args: &[&str]) -> Run {
    finish(spawn(&format!("http://{}", broker.addr), args))
}

/// The tail of a short `compare` that must be perfect: 2 topics, 2
/// publishers at 100 msg/s for 1 s.
const TWO_TOPIC_RUN: &[&str] = &[
    "--topics",
    "2",
    "--publishers",
    "2",
    "--rate",
    "100",
    "--duration",
    "1s",
    "--drain",
    "10s",
    "--pause",
    "100ms",
    "--require-perfect",
];

/// A `--json` run with exactly `args` that must succeed: its output and
/// its one JSON document.
fn json_run(args: &[&str]) -> (Run, Value) {
    let run = finish(spawn_args(args));
    assert!(run.status.success(), "{}\n{}", run.stderr, run.stdout);
    let doc = serde_json::from_str(&run.stdout).expect("one JSON document");
    (run, doc)
}

/// The checks every transport's entry must pass: everything published
/// reached every subscriber once, in order, with no gap.
fn assert_perfect(r: &Value) {
    let name = r["transport"].as_str().unwrap();
    let t = &r["totals"];
    let expected = t["expected"].as_u64().unwrap();
    assert!(expected > 0, "{name}: nothing expected: {r}");
    assert_eq!(t["delivered"].as_u64(), Some(expected), "{name}: {t}");
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "unexpected",
        "skipped_notified",
    ] {
        assert_eq!(t[k].as_u64(), Some(0), "{name}: {k} in {t}");
    }
    assert_eq!(r["wrong_topic"], 0, "{name}");
    assert_eq!(r["drain_complete"], true, "{name}");
    assert_eq!(r["subscribers_perfect"], r["subs"], "{name}");
    assert!(
        r["latency"]["count"].as_u64().unwrap() >= expected,
        "{name}"
    );
}

#[test]
fn compare_delivers_every_message_once_on_every_transport() {
    let broker = Broker::start(&["--shards", "2"]);
    let dir = std::env::temp_dir().join(format!("ringcast-lg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("compare.svg");
    let pid = broker.pid().to_string();
    let run = loadgen(
        &broker,
        &[
            "--json",
            "--broker-pid",
            &pid,
            "--poll-interval",
            "50ms",
            "--plot",
            svg.to_str().unwrap(),
            "compare",
            "--subs",
            "24",
            "--topics",
            "3",
            "--publishers",
            "2",
            "--rate",
            "150",
            "--duration",
            "2s",
            "--drain",
            "10s",
            "--pause",
            "200ms",
            "--payload",
            "100",
            "--require-perfect",
        ],
    );
    assert!(
        run.status.success(),
        "{:?}\n{}\n{}",
        run.status,
        run.stderr,
        run.stdout
    );
    let doc: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(doc["scenario"], "compare");
    let runs = doc["transports"].as_array().unwrap();
    let names: Vec<&str> = runs
        .iter()
        .map(|r| r["transport"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ws", "long-poll", "short-poll", "sse"]);
    for r in runs {
        assert_perfect(r);
        // Each delivery costs at least the data itself on the wire.
        let w = &r["wire"];
        assert!(
            w["down_bytes_per_delivery"].as_f64().unwrap() > 100.0,
            "{w}"
        );
        assert!(r["broker"]["cpu_seconds"].as_f64().unwrap() > 0.0);
    }
    // WebSocket and SSE make no request after setup; polling makes them.
    let req = |i: usize| runs[i]["wire"]["requests_per_delivery"].as_f64().unwrap();
    assert_eq!(req(0), 0.0);
    assert_eq!(req(3), 0.0);
    assert!(req(1) > 0.0 && req(2) > 0.0, "{} {}", req(1), req(2));
    assert_eq!(runs[2]["poll_interval_ms"], 50);
    let svg = std::fs::read_to_string(&svg).expect("the plot was written");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(svg.starts_with("<svg"));
    for name in names {
        assert!(svg.contains(name), "plot lacks {name}");
    }
}

#[test]
fn http_publishing_and_csv_output() {
    let broker = Broker::start(&["--shards", "2"]);
    let run = loadgen(
        &broker,
        &[
            "--csv",
            "--publish-via",
            "http",
            "compare",
            "--transports",
            "long-poll,sse",
            "--subs",
            "10",
            "--rate",
            "200",
            "--duration",
            "1s",
            "--pause",
            "100ms",
            "--require-perfect",
        ],
    );
    assert!(run.status.success(), "{}\n{}", run.stderr, run.stdout);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (line, transport) in lines[1..].iter().zip(["long-poll", "sse"]) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), header.len(), "{line}");
        assert_eq!(f[col("transport")], transport);
        assert_eq!(f[col("publish_via")], "http");
        assert_eq!(f[col("lost")], "0", "{line}");
        assert_eq!(f[col("delivery_ratio")], "1.000000", "{line}");
        let pub_bytes: f64 = f[col("publisher_bytes_per_publish")].parse().unwrap();
        assert!(pub_bytes > 100.0, "a POST has a head: {line}");
    }
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for transport in ["ws", "long-poll", "sse"] {
        let run = finish(spawn(
            &format!("http://127.0.0.1:{port}"),
            &[
                "--transport",
                transport,
                "fanout",
                "--subs",
                "2",
                "--duration",
                "1s",
            ],
        ));
        assert_eq!(run.status.code(), Some(1), "{transport}: {}", run.stderr);
        assert!(
            run.stderr.contains("broker unreachable")
                && run.stderr.contains("is the broker running?"),
            "{transport}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "no report on failure");
    }
}

/// Starts a long fanout run and waits until it is publishing.
fn start_long_run(broker: &Broker, transport: &str) -> Child {
    let mut child = spawn(
        &format!("http://{}", broker.addr),
        &[
            "--transport",
            transport,
            "fanout",
            "--subs",
            "8",
            "--rate",
            "200",
            "--duration",
            "30s",
        ],
    );
    // Progress lines go to stderr; read until publishing starts.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains("publishing") {
        assert!(
            Instant::now() < deadline,
            "loadgen never started publishing"
        );
        let n = stderr.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "loadgen exited early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    child.stderr = Some(stderr);
    std::thread::sleep(Duration::from_millis(500));
    child
}

#[test]
fn a_broker_that_disappears_mid_run_fails_the_run_with_the_reason() {
    for transport in ["ws", "long-poll", "short-poll", "sse"] {
        let broker = Broker::start(&["--shards", "1"]);
        let child = start_long_run(&broker, transport);
        broker.signal(libc::SIGKILL);
        // The run was to publish for 30 s: status 1 and "mid-run" say it
        // stopped because the broker went away, not because it was done.
        let run = finish(child);
        assert_eq!(run.status.code(), Some(1), "{transport}: {}", run.stderr);
        assert!(
            run.stderr.contains("mid-run"),
            "{transport}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{transport}: no report on failure");
    }
}

#[test]
fn a_broker_that_shuts_down_mid_run_fails_the_run_with_its_close_code() {
    let mut broker = Broker::start(&["--shards", "1"]);
    let child = start_long_run(&broker, "ws");
    broker.signal(libc::SIGTERM);
    let run = finish(child);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("mid-run") && run.stderr.contains("close 1001"),
        "{}",
        run.stderr
    );
    assert!(broker.wait_exit(Duration::from_secs(15)).is_some());
}

#[test]
fn bad_flags_are_clear_errors_before_any_connection() {
    let cases: [(&str, &[&str], &str); 6] = [
        (
            "http://127.0.0.1:9",
            &["--poll-interval", "0s", "compare"],
            "--poll-interval must be",
        ),
        // Any broker address is accepted, but a loopback source address
        // cannot reach a remote one.
        (
            "http://10.1.2.3:80",
            &["--source-ips", "127.0.0.2", "fanout"],
            "a loopback source reaches loopback addresses only",
        ),
        // A watched process that is not there fails before connecting.
        (
            "http://127.0.0.1:9",
            &["--pid", "redis=4000000000", "fanout"],
            "--pid redis=4000000000: cannot read /proc/4000000000/stat",
        ),
        (
            "http://127.0.0.1:9",
            &["--broker-pid", "1", "--pid", "init=1", "fanout"],
            "process 1 is named twice",
        ),
        ("http://127.0.0.1:9/ws", &["fanout"], "takes no path"),
        (
            "http://127.0.0.1:9",
            &["--csv", "echo"],
            "--csv and --plot apply to",
        ),
    ];
    for (broker, args, want) in cases {
        let run = finish(spawn(broker, args));
        assert_eq!(run.status.code(), Some(1), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{args:?}: {}", run.stderr);
        assert!(
            !run.stderr.contains("unreachable"),
            "{args:?}: it tried to connect"
        );
    }
}

/// `--broker` given twice for one broker, under two names: subscribers
/// alternate between them, each publisher goes to the other name than the
/// subscriber of its index, the report says so, and every message arrives
/// once, in order, whichever name its subscriber used.
#[test]
fn two_broker_urls_split_subscribers_and_publishers_and_lose_nothing() {
    let broker = Broker::start(&["--shards", "2"]);
    let port = broker.addr.port();
    let (a, b) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    );
    let pid = broker.pid().to_string();
    let mut args = vec![
        "--broker",
        &a,
        "--broker",
        &b,
        "--broker-pid",
        &pid,
        "--json",
    ];
    args.extend([
        "--publish-via",
        "http",
        "compare",
        "--transports",
        "ws,sse,long-poll",
    ]);
    args.extend(["--subs", "6"]);
    let (run, doc) = json_run(&[&args, TWO_TOPIC_RUN].concat());
    assert!(run.stderr.contains("to 2 brokers ("), "{}", run.stderr);
    for r in doc["transports"].as_array().unwrap() {
        assert_perfect(r);
        let name = r["transport"].as_str().unwrap();
        let shares = r["brokers"].as_array().unwrap();
        assert_eq!(shares.len(), 2, "{name}: {r}");
        for (share, url) in shares.iter().zip([&a, &b]) {
            assert_eq!(share["url"], url.as_str(), "{name}");
            assert_eq!(share["subscribers"], 3, "{name}: {share}");
            assert_eq!(share["publishers"], 1, "{name}: {share}");
            let t = &share["totals"];
            assert!(t["expected"].as_u64().unwrap() > 0, "{name}: {share}");
            assert_eq!(t["delivered"], t["expected"], "{name}: {share}");
            assert_eq!(t["lost"], 0, "{name}: {share}");
        }
        // One broker process, named twice: its CPU is the broker's.
        assert_eq!(r["processes"][0]["name"], "broker", "{name}");
        assert_eq!(r["broker"]["pids"][0], broker.pid(), "{name}");
    }
}

/// Two independent brokers (no shared backend, so nothing crosses between
/// them): subscriber 0 on A (topic 0), subscriber 1 on B (topic 1). The
/// publisher goes to the node after subscriber 0's, B, so only B's
/// subscriber gets its topic; with `--publish-broker A` only A's does.
/// That shows where each transport connected, subscribers and publishers.
#[test]
fn every_transport_connects_where_the_assignment_says() {
    let (a, b) = (
        Broker::start(&["--shards", "1"]),
        Broker::start(&["--shards", "1"]),
    );
    let (url_a, url_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    for (publish_broker, publish_via, served) in [(None, "ws", 1), (Some(&url_a), "http", 0)] {
        let mut args = vec!["--broker", &url_a, "--broker", &url_b];
        if let Some(p) = publish_broker {
            args.extend(["--publish-broker", p]);
        }
        args.extend([
            "--json",
            "--publish-via",
            publish_via,
            "compare",
            "--subs",
            "2",
        ]);
        args.extend(["--topics", "2", "--rate", "40", "--duration", "500ms"]);
        args.extend([
            "--drain",
            "500ms",
            "--pause",
            "100ms",
            "--poll-interval",
            "20ms",
        ]);
        let (_, doc) = json_run(&args);
        let runs = doc["transports"].as_array().unwrap();
        assert_eq!(runs.len(), 4);
        for r in runs {
            let name = r["transport"].as_str().unwrap();
            let shares = r["brokers"].as_array().unwrap();
            assert_eq!(shares.len(), 2, "{name}: {r}");
            for (i, share) in shares.iter().enumerate() {
                assert_eq!(share["subscribers"], 1, "{name}: {share}");
                assert_eq!(
                    share["publishers"],
                    u64::from(i == served),
                    "{name}: {share}"
                );
                let t = &share["totals"];
                let expected = t["expected"].as_u64().unwrap();
                assert!(expected > 0, "{name}: {share}");
                let want = if i == served { expected } else { 0 };
                assert_eq!(t["delivered"], want, "{name} via {publish_via}: {share}");
                assert_eq!(t["lost"], expected - want, "{name}: {share}");
                assert_eq!(t["duplicated"], 0, "{name}: {share}");
                assert_eq!(t["out_of_order"], 0, "{name}: {share}");
            }
        }
    }
}

/// `--pid NAME=PID`: another process's CPU is in the report beside the
/// broker's, and the sum of both is the cluster's.
#[test]
fn a_named_process_is_reported_with_the_cluster_sum() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    let (bpid, spid) = (broker.pid().to_string(), sleeper.id().to_string());
    let run = loadgen(
        &broker,
        &[
            "--json",
            "--broker-pid",
            &bpid,
            "--pid",
            &format!("self={spid}"),
            "fanout",
            "--subs",
            "4",
            "--rate",
            "100",
            "--duration",
            "500ms",
            "--require-perfect",
        ],
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(run.status.success(), "{}\n{}", run.stderr, run.stdout);
    let doc: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    let r = &doc["transports"][0];
    assert_perfect(r);
    let procs = r["processes"].as_array().unwrap();
    let names: Vec<&str> = procs.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["broker", "self"]);
    let me = &procs[1];
    assert_eq!(me["pid"].as_u64(), Some(u64::from(sleeper.id())));
    assert_eq!(me["broker"], false);
    for k in ["cpu_seconds", "busy_percent", "cpu_us_per_delivery"] {
        assert!(me[k].as_f64().unwrap() >= 0.0, "{k}: {me}");
    }
    assert!(me["rss_after_kib"].as_u64().unwrap() > 0, "{me}");
    let cluster = &r["cluster"];
    assert_eq!(cluster["processes"], 2);
    let sum: f64 = procs
        .iter()
        .map(|p| p["cpu_us_per_delivery"].as_f64().unwrap())
        .sum();
    let total = cluster["cpu_us_per_delivery"].as_f64().unwrap();
    // (Half a second may be below the kernel's CPU tick: both may be 0.)
    assert!((total - sum).abs() < 1e-6, "{total} vs {sum}");
}

/// Issue 11, failure case 8: the loadgen drives a real cluster (two nodes
/// on one `redis-server`), subscribers spread over both nodes, publishers
/// on the other node, every transport; it reports no loss, no duplicate,
/// no reordering, and the CPU of every process, Redis included.
#[test]
fn the_loadgen_drives_a_two_node_cluster_and_reports_every_process() {
    let redis = ringcast_e2e::redis::RedisServer::start();
    let url = redis.url();
    let args = ["--shards", "2", "--redis", &url, "--redis-prefix", "lg"];
    let (a, b) = (Broker::start(&args), Broker::start(&args));
    let (ua, ub) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let (pa, pb, pr) = (a.pid().to_string(), b.pid().to_string(), redis.pid());
    let redis_pid = format!("redis={pr}");
    let mut args = vec!["--broker", &ua, "--broker", &ub, "--broker-pid", &pa];
    args.extend([
        "--broker-pid",
        &pb,
        "--pid",
        &redis_pid,
        "--json",
        "compare",
    ]);
    args.extend(["--transports", "ws,sse,long-poll", "--subs", "8"]);
    let (_, doc) = json_run(&[&args, TWO_TOPIC_RUN].concat());
    for r in doc["transports"].as_array().unwrap() {
        assert_perfect(r);
        let name = r["transport"].as_str().unwrap();
        for share in r["brokers"].as_array().unwrap() {
            assert_eq!(share["subscribers"], 4, "{name}: {share}");
            assert_eq!(share["publishers"], 1, "{name}: {share}");
            let t = &share["totals"];
            assert!(t["expected"].as_u64().unwrap() > 0, "{name}: {share}");
            assert_eq!(t["delivered"], t["expected"], "{name}: {share}");
        }
        let names: Vec<&str> = r["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(names.contains(&"redis"), "{name}: {names:?}");
        assert!(r["cluster"].is_object(), "{name}: {r}");
    }
    // The messages really went through Redis: both nodes counted them.
    for node in [&a, &b] {
        assert!(metric_sum(node.addr, "ringcast_redis_messages_received_total", "") > 0);
    }
}

/// `--threads 2`, spelled after the scenario as before it was global:
/// subscribers and publishers each on two threads, every message exactly
/// once, and each thread's CPU (and who was the limit) in the report;
/// `echo` spreads its connections the same way.
#[test]
fn two_threads_deliver_everything_once_and_report_each_threads_cpu() {
    let broker = Broker::start(&["--shards", "1"]);
    let (url, pid) = (format!("http://{}", broker.addr), broker.pid().to_string());
    let mut args = vec!["--broker", &url, "--broker-pid", &pid, "--json", "fanout"];
    args.extend(["--threads", "2", "--subs", "20", "--topics", "3"]);
    args.extend(["--publishers", "3", "--rate", "200", "--duration", "1s"]);
    args.extend(["--drain", "10s", "--require-perfect"]);
    let (_, doc) = json_run(&args);
    let r = &doc["transports"][0];
    assert_perfect(r);
    assert_eq!(r["brokers"][0]["publishers"], 3);
    let threads = r["loadgen"]["threads"].as_array().unwrap();
    let names: Vec<&str> = threads
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["subs-0", "subs-1", "pubs-0", "pubs-1"]);
    for t in threads {
        assert!(t["wall_seconds"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["cpu_seconds"].as_f64().unwrap() >= 0.0, "{t}");
        assert!(t["busy_percent"].as_f64().unwrap() >= 0.0, "{t}");
    }
    assert!(r["loadgen"]["was_limit"].is_boolean(), "{}", r["loadgen"]);
    assert!(r["limits"].is_array(), "{r}");
    let busiest = &r["processes"][0]["busiest_thread"];
    assert!(busiest["name"].is_string(), "{}", r["processes"]);

    let run = loadgen(
        &broker,
        &[
            "--threads",
            "2",
            "echo",
            "--conns",
            "3",
            "--messages",
            "200",
        ],
    );
    assert!(run.status.success(), "{}\n{}", run.stderr, run.stdout);
    assert!(
        run.stdout.contains("verified   600 echoes"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("  loadgen threads  echo-0 ") && run.stdout.contains(", echo-1 "),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("  limit            "), "{}", run.stdout);
}

/// `conns` with browser-sized upgrade requests (issue 12): every
/// connection opens and subscribes, and beside the broker's RSS the
/// report gives the kernel's memory for the broker's end of each
/// connection (found by its local port) and the machine's slab growth.
/// Past the broker's `--max-head-size` the same flag gets the upgrade
/// refused: the bytes really are on the wire.
#[test]
fn conns_with_browser_sized_upgrades_reports_kernel_socket_memory() {
    let broker = Broker::start(&["--shards", "1"]);
    let (url, pid) = (format!("http://{}", broker.addr), broker.pid().to_string());
    let mut args = vec!["--broker", &url, "--broker-pid", &pid, "--json"];
    args.extend(["--upgrade-header-bytes", "1700", "conns", "--conns", "200"]);
    args.extend(["--topics", "10", "--settle", "200ms", "--threads", "2"]);
    let (_, doc) = json_run(&args);
    assert_eq!(doc["conns"], 200);
    assert_eq!(doc["upgrade_header_bytes"], 1700);
    let s = &doc["broker_sockets"];
    assert_eq!(s["sockets"], 200, "{s}");
    assert_eq!(s["ports"][0], broker.addr.port(), "{s}");
    for k in [
        "held_bytes",
        "rmem_alloc",
        "wmem_queued",
        "fwd_alloc",
        "optmem",
    ] {
        assert!(s[k].as_u64().is_some(), "{k}: {s}");
    }
    let held = s["held_bytes"].as_u64().unwrap() as f64;
    assert_eq!(s["held_per_socket_bytes"].as_f64(), Some(held / 200.0));
    assert!(s["rcvbuf_avg"].as_f64().unwrap() > 0.0, "{s}");
    assert!(doc["broker_rss_delta_per_conn_kib"].is_number(), "{doc}");
    assert!(doc["host_slab_delta_per_conn_kib"].is_number(), "{doc}");
    let threads: Vec<&str> = doc["loadgen"]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(threads, ["conns-0", "conns-1"]);

    let run = loadgen(
        &broker,
        &["--upgrade-header-bytes", "9000", "conns", "--conns", "1"],
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("connection 0: WebSocket upgrade on /ws refused"),
        "{}",
        run.stderr
    );
}
