//! `fanout`: S subscribers over T topics, P publishers at a fixed total
//! rate, open loop.
//!
//! Timeline (the main thread drives it):
//!
//! 1. *Setup*: subscriber `i` connects to broker `i % N` (of the
//!    `--broker` list) and subscribes to topic `i % T`; publisher `p`
//!    connects to `--publish-broker` `p % M`, or without one to broker
//!    `(p + 1) % N`, another node than subscriber `p`'s. Nothing is published before every subscriber has
//!    its `subscribed`.
//! 2. *Run*: message `k` is due at `start + k / R` and goes to topic
//!    `k % T` through publisher `k % P`. The schedule never waits for the
//!    broker (open loop): a publisher that falls behind sends what is due in
//!    a batch. Each `data` carries its *scheduled* time, and subscribers
//!    record `arrival - scheduled` in an HDR histogram, so a stall anywhere
//!    (broker, network, the load generator itself) shows up as latency
//!    instead of silently lowering the offered rate (no coordinated
//!    omission). How late the publishers actually wrote is measured too
//!    (`send lag`), to tell load generator lag from broker latency.
//! 3. *Drain*: the publishers report how many messages each topic got;
//!    subscribers have until `--drain` to receive the rest. Whatever is
//!    still missing then is `lost`.
//! 4. *Stop*: connections close, counts and histograms are merged.
//!
//! Delivery is checked per subscriber from the topic's `seq` alone (1, 2,
//! 3, … with no gap, duplicate or reordering), whichever node delivered
//! it: in a cluster a topic's seq is the cluster's, so the same checks
//! hold, and the report also sums them per broker.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ringcast_core::units::parse_duration;
use tokio::sync::{watch, Semaphore};

use super::{
    join_all, random_prefix, recv_until, share, spawn_runtime_thread, sub_broker, thread_window,
    Common,
};
use crate::procs::{self, us_per, Per, Usage};
use crate::proto::{self, Incoming};
use crate::report::{limit, FanoutReport, LoadgenUsage, WireReport};
use crate::stats::{Latency, SeqCounts, SeqTracker};
use crate::sys::{self, mono_ns, thread_cpu, HostSample, HostUsage, ThreadUsage};
use crate::transport::{PubClient, PubConn, Result, SubConn, Transport, Wire};

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Subscriber connections; subscriber i subscribes to topic i % topics.
    #[arg(long, default_value_t = 100)]
    pub subs: usize,
    /// Topics.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Publisher connections; message k goes out on publisher k % publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Total publish rate over all publishers and topics, messages/s.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to publish (`10s`, `500ms`, `2m`).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Bytes of each message's `data`: a JSON object with the scheduled
    /// send time, padded to this size (minimum about 30).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// After publishing stops, how long to wait for late deliveries.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Connection attempts in flight at once during setup.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Topics are PREFIX.0 … PREFIX.N-1. Default: `lg.<random>`, so every
    /// topic starts at seq 1 (seq accounting assumes that).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Exit with status 3 unless every expected message reached every
    /// subscriber exactly once and in order.
    #[arg(long)]
    pub require_perfect: bool,
}

impl FanoutArgs {
    pub fn validate(&self) -> Result<()> {
        let bounded = [
            ("--subs", self.subs, 1, 200_000),
            ("--topics", self.topics, 1, 100_000),
            ("--publishers", self.publishers, 1, 1_000),
            ("--connect-concurrency", self.connect_concurrency, 1, 10_000),
            ("--payload", self.payload, 0, 16 << 20),
        ];
        for (flag, v, lo, hi) in bounded {
            if v < lo || v > hi {
                return Err(format!("{flag} must be in {lo}..={hi}, got {v}"));
            }
        }
        if !(self.rate > 0.0 && self.rate <= 10_000_000.0) {
            return Err(format!(
                "--rate must be in (0, 10000000] msg/s, got {}",
                self.rate
            ));
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(3600) {
            return Err("--duration must be in (0, 1h]".into());
        }
        if self.drain > Duration::from_secs(600) {
            return Err("--drain must be at most 10m".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Setup,
    Run { start_ns: u64, end_ns: u64 },
    Drain,
    Stop,
}

enum Note {
    SubsReady,
    PubsReady,
    Published(Box<PubResult>),
    Drained,
    SubResult(Box<SubResult>),
    Fatal(String),
}

struct PubResult {
    sent_per_topic: Vec<u64>,
    /// What the publisher connections moved while publishing.
    wire: Wire,
    lag: Latency,
    /// First and last write (0 and 0: this thread wrote nothing).
    first_ns: u64,
    last_ns: u64,
    cpu: Duration,
}

impl PubResult {
    fn new(topics: usize) -> PubResult {
        PubResult {
            sent_per_topic: vec![0; topics],
            wire: Wire::default(),
            lag: Latency::new(),
            first_ns: 0,
            last_ns: 0,
            cpu: Duration::ZERO,
        }
    }

    /// Adds another publisher thread's result to this one.
    fn merge(&mut self, o: &PubResult) {
        for (a, b) in self.sent_per_topic.iter_mut().zip(&o.sent_per_topic) {
            *a += b;
        }
        self.wire.add(&o.wire);
        self.lag.merge(&o.lag);
        if o.first_ns != 0 && (self.first_ns == 0 || o.first_ns < self.first_ns) {
            self.first_ns = o.first_ns;
        }
        self.last_ns = self.last_ns.max(o.last_ns);
        self.cpu += o.cpu;
    }
}

/// How many threads the publishers get: `--threads`, but no thread
/// without a publisher.
fn publisher_threads(threads: usize, publishers: usize) -> usize {
    threads.min(publishers).max(1)
}

/// The messages one publisher thread sends, in schedule order, with the
/// slot (index into the thread's own publishers) each goes out on:
/// message `k` goes out on publisher `k % P`, so a thread holding
/// publishers `mine` (ascending) sends `k = round * P + p` for each `p`
/// of `mine`, round after round.
struct Schedule<'a> {
    mine: &'a [usize],
    publishers: u64,
    round: u64,
    slot: usize,
}

impl<'a> Schedule<'a> {
    fn new(mine: &'a [usize], publishers: usize) -> Schedule<'a> {
        assert!(!mine.is_empty(), "a publisher thread has a publisher");
        Schedule {
            mine,
            publishers: publishers as u64,
            round: 0,
            slot: 0,
        }
    }

    /// The next message: its number `k` and the slot it goes out on.
    fn peek(&self) -> (u64, usize) {
        (
            self.round * self.publishers + self.mine[self.slot] as u64,
            self.slot,
        )
    }

    fn advance(&mut self) {
        self.slot += 1;
        if self.slot == self.mine.len() {
            self.slot = 0;
            self.round += 1;
        }
    }
}

struct SubResult {
    /// (subscriber index, its counts).
    per_sub: Vec<(usize, SeqCounts)>,
    latency: Latency,
    wrong_topic: u64,
    wire: Wire,
}

/// State shared by the subscriber tasks of one thread.
struct SubShared {
    latency: Latency,
    trackers: Vec<SeqTracker>,
    complete: Vec<bool>,
    ready: usize,
    wrong_topic: u64,
    unstamped: u64,
    /// Bytes and requests after each subscriber's `subscribed`.
    wire: Wire,
}

/// What the main thread needs to drive everybody.
#[derive(Clone)]
struct Ctl {
    notes: mpsc::Sender<Note>,
    phase: watch::Receiver<Phase>,
    /// Per topic: how many were published; set at the start of Drain.
    expected: Arc<Vec<AtomicU64>>,
}

impl Ctl {
    fn fatal(&self, msg: String) {
        let _ = self.notes.send(Note::Fatal(msg));
    }

    fn stopping(&self) -> bool {
        *self.phase.borrow() == Phase::Stop
    }
}

pub fn run(common: &Common, args: &FanoutArgs) -> Result<FanoutReport> {
    args.validate()?;
    let prefix = args.topic_prefix.clone().unwrap_or_else(random_prefix);
    let topics: Arc<Vec<String>> =
        Arc::new((0..args.topics).map(|i| format!("{prefix}.{i}")).collect());
    let (note_tx, notes) = mpsc::channel();
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let expected: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.topics).map(|_| AtomicU64::new(0)).collect());
    let ctl = Ctl {
        notes: note_tx,
        phase: phase_rx,
        expected,
    };

    common.progress(format!(
        "fanout: connecting {} subscribers over {} topics ({prefix}.*) and {} publisher(s) to {}",
        args.subs,
        args.topics,
        args.publishers,
        common.brokers_text()
    ));
    let setup_started = Instant::now();
    let sub_threads = common.threads;
    let pub_threads = publisher_threads(common.threads, args.publishers);
    let mut threads = Vec::new();
    for t in 0..sub_threads {
        let mine = share(args.subs, sub_threads, t);
        let (common, args, topics, ctl) =
            (common.clone(), args.clone(), topics.clone(), ctl.clone());
        threads.push(spawn_runtime_thread(format!("subs-{t}"), move || {
            measured(
                ctl.clone(),
                subscriber_thread(common, args, topics, ctl, mine),
            )
        }));
    }
    for t in 0..pub_threads {
        let mine = share(args.publishers, pub_threads, t);
        let (common, args, topics, ctl) =
            (common.clone(), args.clone(), topics.clone(), ctl.clone());
        threads.push(spawn_runtime_thread(format!("pubs-{t}"), move || {
            measured(
                ctl.clone(),
                publisher_thread(common, args, topics, ctl, mine),
            )
        }));
    }

    // Setup: everyone connected and subscribed.
    let deadline = setup_started + common.setup_timeout;
    let (mut subs_ready, mut pubs_ready) = (0, 0);
    while subs_ready < sub_threads || pubs_ready < pub_threads {
        match recv_until(
            &notes,
            deadline,
            "connecting and subscribing (--setup-timeout)",
        )? {
            Note::SubsReady => subs_ready += 1,
            Note::PubsReady => pubs_ready += 1,
            Note::Fatal(e) => return Err(e),
            _ => {}
        }
    }
    let setup = setup_started.elapsed();
    common.progress(format!(
        "fanout: {} subscribed in {:.2} s; publishing {} msg/s of {} B for {:?}",
        args.subs,
        setup.as_secs_f64(),
        args.rate,
        args.payload,
        args.duration
    ));

    // Run.
    let procs_before = procs::sample(&common.procs)?;
    let cpu_before = sys::self_cpu();
    let host_before = HostSample::read();
    let wall_start = Instant::now();
    let start_ns = mono_ns() + 20_000_000;
    let end_ns = start_ns + args.duration.as_nanos() as u64;
    phase_tx.send_replace(Phase::Run { start_ns, end_ns });
    let deadline = Instant::now() + args.duration + Duration::from_secs(30);
    let bar = progress_bar(common, args);
    let mut published = PubResult::new(args.topics);
    let mut pubs_done = 0;
    while pubs_done < pub_threads {
        let tick = (Instant::now() + Duration::from_millis(100)).min(deadline);
        match recv_until(&notes, tick, "") {
            Ok(Note::Published(p)) => {
                published.merge(&p);
                pubs_done += 1;
            }
            Ok(Note::Fatal(e)) => {
                bar.abandon();
                return Err(e);
            }
            Ok(_) => {}
            Err(_) if Instant::now() >= deadline => {
                bar.abandon();
                return Err("timed out waiting for the publishers to finish".into());
            }
            Err(_) => bar.set_position(wall_start.elapsed().as_millis() as u64),
        }
    }
    bar.finish_and_clear();
    for (slot, &n) in ctl.expected.iter().zip(&published.sent_per_topic) {
        slot.store(n, Ordering::Release);
    }
    let publish_end = Instant::now();

    // Drain.
    phase_tx.send_replace(Phase::Drain);
    let drain_deadline = publish_end + args.drain;
    let mut drained = 0;
    let mut drain_complete = true;
    while drained < sub_threads {
        match recv_until(&notes, drain_deadline, "") {
            Ok(Note::Drained) => drained += 1,
            Ok(Note::Fatal(e)) => return Err(e),
            Ok(_) => {}
            Err(_) => {
                drain_complete = false;
                break;
            }
        }
    }
    let drain = publish_end.elapsed();
    let wall = wall_start.elapsed();
    let cpu = sys::self_cpu().saturating_sub(cpu_before);
    let procs_after = procs::sample(&common.procs)?;
    let loadgen_util = cpu.as_secs_f64() / wall.as_secs_f64();
    let host_after = HostSample::read();

    // Stop and collect.
    phase_tx.send_replace(Phase::Stop);
    let mut latency = Latency::new();
    let mut per_sub = Vec::with_capacity(args.subs);
    let mut wrong_topic = 0;
    let mut sub_wire = Wire::default();
    let mut results = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while results < sub_threads {
        match recv_until(&notes, deadline, "collecting results")? {
            Note::SubResult(r) => {
                results += 1;
                latency.merge(&r.latency);
                per_sub.extend(r.per_sub);
                wrong_topic += r.wrong_topic;
                sub_wire.add(&r.wire);
            }
            Note::Fatal(e) => return Err(e),
            _ => {}
        }
    }
    let thread_usage = join_all(threads);

    let mut totals = SeqCounts::default();
    let mut brokers = common.shares(args.subs, args.publishers);
    for (i, c) in &per_sub {
        totals.add(c);
        brokers[sub_broker(*i, common.brokers.len())]
            .totals
            .get_or_insert_with(SeqCounts::default)
            .add(c);
    }
    let usage = Usage::between(
        &common.procs,
        &procs_before,
        &procs_after,
        wall,
        Per::Delivery(totals.delivered),
    );
    let host = host_before
        .zip(host_after)
        .map(|(a, b)| HostUsage::between(&a, &b, loadgen_util + usage.cores()));
    let sent: u64 = published.sent_per_topic.iter().sum();
    let mut data = Vec::new();
    proto::stamped_data(&mut data, start_ns, args.payload);
    let mut loadgen = LoadgenUsage::new(cpu.as_secs_f64(), wall.as_secs_f64(), thread_usage);
    let limits = limit::judge(
        &mut loadgen,
        &usage.processes,
        limit::Setup {
            threads: common.threads,
            publishers: args.publishers,
        },
    );
    Ok(FanoutReport {
        transport: common.transport,
        publish_via: common.publish_via,
        poll_hold_ms: (common.transport == Transport::LongPoll)
            .then_some(common.poll_hold.as_millis() as u64),
        poll_interval_ms: (common.transport == Transport::ShortPoll)
            .then_some(common.poll_interval.as_millis() as u64),
        brokers,
        token: common.token.is_some(),
        upgrade_header_bytes: common.upgrade_header_bytes,
        subs: args.subs,
        topics: args.topics,
        publishers: args.publishers,
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        payload_bytes: data.len(),
        topic_prefix: prefix,
        setup_s: setup.as_secs_f64(),
        published: sent,
        publish_rate: rate(sent, (published.last_ns - published.first_ns) as f64 / 1e9),
        send_lag: published.lag.summary(),
        publisher_cpu_s: published.cpu.as_secs_f64(),
        totals,
        subscribers_perfect: per_sub.iter().filter(|(_, c)| c.perfect()).count(),
        worst_lost: per_sub.iter().map(|(_, c)| c.lost).max().unwrap_or(0),
        wrong_topic,
        deliveries_per_s: totals.delivered as f64 / args.duration.as_secs_f64(),
        latency: latency.summary(),
        latency_curve: latency.curve(),
        wire: WireReport::new(sub_wire, published.wire, totals.delivered, sent),
        drain_s: drain.as_secs_f64(),
        drain_complete,
        window_s: wall.as_secs_f64(),
        broker_cpu_us_per_delivery: usage
            .broker
            .as_ref()
            .map(|b| us_per(b.cpu_seconds, totals.delivered)),
        usage,
        loadgen_cpu_us_per_delivery: us_per(cpu.as_secs_f64(), totals.delivered),
        loadgen,
        host,
        limits,
    })
}

/// Runs a thread's work `f` and measures the thread's CPU from the start
/// of publishing to the stop (the window the report's CPU figures cover).
async fn measured(ctl: Ctl, f: impl std::future::Future<Output = ()>) -> Option<ThreadUsage> {
    let window = tokio::task::spawn_local(thread_window(
        ctl.phase.clone(),
        |p| !matches!(p, Phase::Setup),
        |p| *p == Phase::Stop,
    ));
    f.await;
    window.await.ok().flatten()
}

/// A bar over the publishing window on stderr; invisible when stderr is
/// not a terminal (CI logs, `2>file`).
fn progress_bar(common: &Common, args: &FanoutArgs) -> ProgressBar {
    let bar = ProgressBar::new(args.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {elapsed_precise} / {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(common.transport.name());
    bar.set_message(format!("{:.0?} at {} msg/s", args.duration, args.rate));
    bar
}

/// The rate of `n` messages whose first and last were `secs` apart (n
/// messages span n-1 intervals).
fn rate(n: u64, secs: f64) -> f64 {
    if n <= 1 || secs <= 0.0 {
        n as f64
    } else {
        (n - 1) as f64 / secs
    }
}

async fn subscriber_thread(
    common: Common,
    args: FanoutArgs,
    topics: Arc<Vec<String>>,
    ctl: Ctl,
    mine: Vec<usize>,
) {
    let n = mine.len();
    let shared = Rc::new(RefCell::new(SubShared {
        latency: Latency::new(),
        trackers: vec![SeqTracker::new(); n],
        complete: vec![false; n],
        ready: 0,
        wrong_topic: 0,
        unstamped: 0,
        wire: Wire::default(),
    }));
    let per_thread = args.connect_concurrency.div_ceil(common.threads).max(1);
    let gate = Rc::new(Semaphore::new(per_thread));
    let ready = Rc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(n);
    for (slot, &i) in mine.iter().enumerate() {
        let topic_ix = i % args.topics;
        let (common, topics, ctl, shared, gate, ready) = (
            common.clone(),
            topics.clone(),
            ctl.clone(),
            shared.clone(),
            gate.clone(),
            ready.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            subscriber(common, i, slot, &topics[topic_ix], ctl, shared, gate, ready).await
        }));
    }

    // Setup: report once every subscriber of this thread is live.
    while shared.borrow().ready < n {
        ready.notified().await;
    }
    let _ = ctl.notes.send(Note::SubsReady);

    // Drain: report once every subscriber has every published seq.
    let mut phase = ctl.phase.clone();
    let _ = phase
        .wait_for(|p| matches!(p, Phase::Drain | Phase::Stop))
        .await;
    let tick = Duration::from_millis(2);
    loop {
        if ctl.stopping() {
            break;
        }
        let done = {
            let mut sh = shared.borrow_mut();
            let sh = &mut *sh;
            let mut all = true;
            for (slot, &i) in mine.iter().enumerate() {
                if sh.complete[slot] {
                    continue;
                }
                let want = ctl.expected[i % args.topics].load(Ordering::Acquire);
                let t = &sh.trackers[slot];
                if t.complete(want) {
                    sh.complete[slot] = true;
                } else {
                    all = false;
                }
            }
            all
        };
        if done {
            let _ = ctl.notes.send(Note::Drained);
            break;
        }
        tokio::time::sleep(tick).await;
    }

    // Stop: wait for the tasks to close their connections, then report.
    let _ = phase.wait_for(|p| *p == Phase::Stop).await;
    for t in tasks {
        let _ = t.await;
    }
    let sh = shared.borrow();
    let per_sub = mine
        .iter()
        .enumerate()
        .map(|(slot, &i)| {
            let want = ctl.expected[i % args.topics].load(Ordering::Acquire);
            (i, sh.trackers[slot].counts(want))
        })
        .collect();
    if sh.unstamped > 0 {
        common.progress(format!(
            "warning: {} messages without a send stamp (not from this run's publishers?)",
            sh.unstamped
        ));
    }
    let _ = ctl.notes.send(Note::SubResult(Box::new(SubResult {
        per_sub,
        latency: sh.latency.clone(),
        wrong_topic: sh.wrong_topic,
        wire: sh.wire,
    })));
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    common: Common,
    i: usize,
    slot: usize,
    topic: &str,
    ctl: Ctl,
    shared: Rc<RefCell<SubShared>>,
    gate: Rc<Semaphore>,
    ready: Rc<tokio::sync::Notify>,
) {
    let who = match common.brokers.len() {
        1 => format!("subscriber {i} (topic {topic})"),
        _ => format!(
            "subscriber {i} (topic {topic}, on {})",
            common.sub_endpoint(i).url
        ),
    };
    let permit = gate.acquire().await.expect("semaphore open");
    let mut conn = match common.connect(i, 16 * 1024).await {
        Ok(c) => c,
        Err(e) => return ctl.fatal(format!("{who}: {e}")),
    };
    if let Err(e) = conn.subscribe(topic).await {
        return ctl.fatal(format!("{who}: {e}"));
    }
    loop {
        let msg = match conn.recv().await {
            Ok(m) => m,
            Err(e) => return ctl.fatal(format!("{who}: while subscribing: {e}")),
        };
        match proto::parse(&msg) {
            Ok(Incoming::Subscribed { topic: t }) if t == topic => break,
            Ok(Incoming::Error { code, message }) => {
                return ctl.fatal(format!("{who}: subscribe refused: {code}: {message}"))
            }
            Ok(_) => {}
            Err(e) => return ctl.fatal(format!("{who}: {e}")),
        }
    }
    drop(permit);
    shared.borrow_mut().ready += 1;
    ready.notify_one();
    // Setup (connect, upgrade, subscribe) is not what a message costs.
    let base = conn.wire();

    let mut phase = ctl.phase.clone();
    loop {
        tokio::select! {
            biased;
            r = conn.recv() => {
                let first = match r {
                    Ok(m) => m,
                    Err(e) => {
                        if !ctl.stopping() {
                            ctl.fatal(format!("{who}: mid-run: {e}{}", slow_hint(&e)));
                        }
                        return;
                    }
                };
                let mut sh = shared.borrow_mut();
                if let Err(e) = on_message(&mut sh, slot, topic, &first) {
                    return ctl.fatal(format!("{who}: {e}"));
                }
                // Release the read buffer's share before reading again, so
                // it is reused instead of reallocated.
                drop(first);
                // Everything else that arrived with it, without re-polling.
                for _ in 0..1024 {
                    match SubConn::try_recv(&mut conn) {
                        Ok(Some(m)) => {
                            if let Err(e) = on_message(&mut sh, slot, topic, &m) {
                                return ctl.fatal(format!("{who}: {e}"));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            if !ctl.stopping() {
                                ctl.fatal(format!("{who}: mid-run: {e}{}", slow_hint(&e)));
                            }
                            return;
                        }
                    }
                }
            }
            r = phase.changed() => {
                if r.is_err() || *phase.borrow() == Phase::Stop {
                    break;
                }
            }
        }
    }
    shared.borrow_mut().wire.add(&conn.wire().since(&base));
    SubConn::close(conn).await;
}

/// What a subscriber dropped mid-run most likely means.
fn slow_hint(e: &str) -> &'static str {
    if e.contains("1008") {
        "\n  Close 1008 is ringcast's slow-consumer policy: this subscriber's queue passed the \
         broker's --outbox-size. If the load generator's own CPU is near one core, it is the \
         slow consumer: lower --rate or --subs, or give it more cores (--threads)."
    } else if e.contains("EOF") {
        "\n  The broker ended the connection without a close frame: it stopped or crashed, or \
         dropped a slow SSE or HTTP client (see the broker's log and --outbox-size)."
    } else {
        ""
    }
}

fn on_message(sh: &mut SubShared, slot: usize, topic: &str, msg: &[u8]) -> Result<()> {
    match proto::parse(msg)? {
        Incoming::Message {
            topic: t,
            seq,
            data,
        } => {
            if t != topic {
                sh.wrong_topic += 1;
                return Ok(());
            }
            match proto::stamp_of(data) {
                Some(stamp) => sh.latency.record_ns(mono_ns().saturating_sub(stamp)),
                None => sh.unstamped += 1,
            }
            sh.trackers[slot].record(seq);
        }
        Incoming::Skipped { from, to, .. } => sh.trackers[slot].record_skipped(from, to),
        Incoming::Error { code, message } => {
            return Err(format!("broker error mid-run: {code}: {message}"))
        }
        _ => {}
    }
    Ok(())
}

/// Publishes on the publishers `mine` (their share of the schedule, see
/// [`Schedule`]).
async fn publisher_thread(
    common: Common,
    args: FanoutArgs,
    topics: Arc<Vec<String>>,
    ctl: Ctl,
    mine: Vec<usize>,
) {
    let mut conns = Vec::with_capacity(mine.len());
    for &p in &mine {
        // Publishers use source addresses after the subscribers'.
        match common.connect_pub(p, args.subs + p).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                let to = &common.pub_endpoint(p).url;
                return ctl.fatal(format!("publisher {p} (to {to}): {e}"));
            }
        }
    }
    let _ = ctl.notes.send(Note::PubsReady);
    let mut phase = ctl.phase.clone();
    let Ok(p) = phase
        .wait_for(|p| matches!(p, Phase::Run { .. } | Phase::Stop))
        .await
        .map(|p| *p)
    else {
        return;
    };
    let Phase::Run { start_ns, end_ns } = p else {
        return;
    };

    let cpu0 = thread_cpu();
    let wire0: Vec<Wire> = conns.iter().map(PubConn::wire).collect();
    let interval = 1e9 / args.rate;
    let t_count = topics.len() as u64;
    let mut schedule = Schedule::new(&mine, args.publishers);
    let mut sent_per_topic = vec![0u64; topics.len()];
    let mut lag = Latency::new();
    let mut data = Vec::with_capacity(args.payload + 32);
    let mut due: Vec<u64> = Vec::with_capacity(1024);
    let (mut first_ns, mut last_ns) = (0, 0);
    // Below this the thread sleeps precisely (nanosleep) instead of on the
    // runtime's millisecond timer wheel.
    const SPIN_WINDOW: u64 = 2_000_000;
    loop {
        let next = start_ns + (schedule.peek().0 as f64 * interval) as u64;
        if next >= end_ns {
            break;
        }
        let now = mono_ns();
        if next > now + 20_000 {
            let wait = next - now;
            if wait > SPIN_WINDOW {
                tokio::time::sleep(Duration::from_nanos(wait - SPIN_WINDOW / 2)).await;
            } else {
                std::thread::sleep(Duration::from_nanos(wait));
            }
            continue;
        }
        // Everything due now, in one batch per publisher.
        due.clear();
        let now = mono_ns();
        while due.len() < 4096 {
            let (k, slot) = schedule.peek();
            let t = start_ns + (k as f64 * interval) as u64;
            if t > now || t >= end_ns {
                break;
            }
            let topic = (k % t_count) as usize;
            data.clear();
            proto::stamped_data(&mut data, t, args.payload);
            conns[slot].queue_publish(&topics[topic], &data);
            sent_per_topic[topic] += 1;
            due.push(t);
            schedule.advance();
        }
        for (c, p) in conns.iter_mut().zip(&mine) {
            if let Err(e) = PubConn::flush(c).await {
                return ctl.fatal(format!("publisher {p}: mid-run: {e}"));
            }
        }
        let written = mono_ns();
        if first_ns == 0 {
            first_ns = written;
        }
        last_ns = written;
        for &t in &due {
            lag.record_ns(written.saturating_sub(t));
        }
        if let Err(e) = check_replies(&mut conns, &mine) {
            return ctl.fatal(e);
        }
        // Let the runtime poll its driver (socket readiness for replies).
        tokio::task::yield_now().await;
    }
    // Answers to the last batch (HTTP publishing) count too.
    let settle = mono_ns() + 200_000_000;
    while mono_ns() < settle && pending_answers(&conns) {
        if let Err(e) = check_replies(&mut conns, &mine) {
            return ctl.fatal(e);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut wire = Wire::default();
    for (c, w0) in conns.iter().zip(&wire0) {
        wire.add(&c.wire().since(w0));
    }
    let _ = ctl.notes.send(Note::Published(Box::new(PubResult {
        sent_per_topic,
        wire,
        lag,
        first_ns,
        last_ns,
        cpu: thread_cpu().saturating_sub(cpu0),
    })));

    // Keep reading (errors, pings) until stop.
    while !ctl.stopping() {
        if let Err(e) = check_replies(&mut conns, &mine) {
            if !ctl.stopping() {
                ctl.fatal(e);
            }
            return;
        }
        for c in conns.iter_mut() {
            let _ = PubConn::flush(c).await;
        }
        tokio::select! {
            _ = phase.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    for c in conns {
        PubConn::close(c).await;
    }
}

/// Reads what the broker sent the publishers: a refused publish is fatal
/// (the run would measure something else than asked).
fn check_replies<C: PubConn>(conns: &mut [C], mine: &[usize]) -> Result<()> {
    for (c, p) in conns.iter_mut().zip(mine) {
        while let Some(msg) = c
            .try_recv()
            .map_err(|e| format!("publisher {p}: mid-run: {e}"))?
        {
            if let Incoming::Error { code, message } = proto::parse(&msg)? {
                return Err(format!(
                    "publisher {p}: broker refused a publish: {code}: {message}"
                ));
            }
        }
    }
    Ok(())
}

/// Whether an HTTP publisher still waits for answers.
fn pending_answers(conns: &[PubClient]) -> bool {
    conns.iter().any(|c| match c {
        PubClient::Http(h) => h.in_flight > 0,
        PubClient::Ws(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_per_delivery_cost() {
        assert_eq!(rate(1001, 1.0), 1000.0);
        assert_eq!(rate(1, 0.0), 1.0);
        assert_eq!(us_per(2.0, 1_000_000), 2.0);
        assert_eq!(us_per(2.0, 0), 0.0);
    }

    #[test]
    fn publishers_are_split_over_threads_and_every_message_goes_out_once() {
        assert_eq!(publisher_threads(1, 5), 1);
        assert_eq!(publisher_threads(4, 2), 2);
        assert_eq!(publisher_threads(3, 3), 3);
        for (publishers, threads) in [(1, 1), (5, 2), (4, 4), (7, 3), (2, 8)] {
            let n = publisher_threads(threads, publishers);
            let mut seen = Vec::new();
            for t in 0..n {
                let mine = share(publishers, n, t);
                let mut s = Schedule::new(&mine, publishers);
                let mut last = None;
                loop {
                    let (k, slot) = s.peek();
                    if k >= 100 {
                        break;
                    }
                    // In schedule order, on the publisher k % P.
                    assert!(last < Some(k), "P={publishers} N={n}: {last:?} then {k}");
                    assert_eq!(mine[slot], k as usize % publishers);
                    last = Some(k);
                    seen.push(k);
                    s.advance();
                }
            }
            seen.sort();
            assert_eq!(seen, (0..100).collect::<Vec<u64>>(), "P={publishers} N={n}");
        }
    }

    #[test]
    fn publisher_results_of_several_threads_add_up() {
        let mut all = PubResult::new(2);
        let one = PubResult {
            sent_per_topic: vec![3, 1],
            wire: Wire {
                up: 10,
                down: 1,
                requests: 0,
            },
            lag: Latency::new(),
            first_ns: 50,
            last_ns: 90,
            cpu: Duration::from_millis(2),
        };
        let two = PubResult {
            sent_per_topic: vec![1, 4],
            first_ns: 40,
            last_ns: 80,
            ..PubResult::new(2)
        };
        all.merge(&one);
        all.merge(&PubResult::new(2));
        all.merge(&two);
        assert_eq!(all.sent_per_topic, [4, 5]);
        assert_eq!((all.first_ns, all.last_ns), (40, 90));
        assert_eq!(all.wire.up, 10);
        assert_eq!(all.cpu, Duration::from_millis(2));
    }

    #[test]
    fn flags_are_bounded() {
        let ok = FanoutArgs {
            subs: 10,
            topics: 2,
            publishers: 1,
            rate: 100.0,
            duration: Duration::from_secs(1),
            payload: 64,
            drain: Duration::from_secs(1),
            connect_concurrency: 8,
            topic_prefix: None,
            require_perfect: false,
        };
        ok.validate().unwrap();
        let bad = FanoutArgs {
            rate: 0.0,
            ..ok.clone()
        };
        assert!(bad.validate().unwrap_err().contains("--rate"));
        let bad = FanoutArgs { subs: 0, ..ok };
        assert!(bad.validate().unwrap_err().contains("--subs"));
    }
}
