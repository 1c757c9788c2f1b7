//! `echo`: closed-loop round trips against `/echo`, every byte verified.
//! N connections each send M binary messages with up to `window` in
//! flight; checks the broker's echo path (not pub/sub). Connection `i`
//! goes to `--broker` `i % N` and runs on thread `i % --threads`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use ringcast_proto::frame::OpCode;
use ringcast_proto::websocket::Event;

use super::{share, spawn_runtime_thread, Common};
use crate::report::{limit, EchoReport, LoadgenUsage};
use crate::stats::Latency;
use crate::sys::{self, mono_ns, ThreadClock, ThreadUsage};
use crate::transport::ws::WsClient;
use crate::transport::Result;

#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Messages per connection.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
}

pub fn run(common: &Common, args: &EchoArgs) -> Result<EchoReport> {
    if args.conns == 0 || args.conns > 10_000 || args.messages > 100_000_000 {
        return Err("--conns must be in 1..=10000 and --messages at most 100000000".into());
    }
    let start = Instant::now();
    let cpu_before = sys::self_cpu();
    // Connection `i` on thread `i % --threads`; no thread without one.
    let n_threads = common.threads.min(args.conns);
    let threads: Vec<_> = (0..n_threads)
        .map(|t| {
            let mine = share(args.conns, n_threads, t);
            let (common, args) = (common.clone(), args.clone());
            spawn_runtime_thread(format!("echo-{t}"), move || echo_thread(common, args, mine))
        })
        .collect();
    let mut rtt = Latency::new();
    let mut total = 0;
    let mut thread_usage = Vec::with_capacity(n_threads);
    for t in threads {
        let (r, n, cpu) = t
            .join()
            .map_err(|_| "an echo thread panicked".to_string())??;
        rtt.merge(&r);
        total += n;
        thread_usage.push(cpu);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = sys::self_cpu().saturating_sub(cpu_before);
    let mut loadgen = LoadgenUsage::new(cpu.as_secs_f64(), secs, thread_usage);
    let limits = limit::judge(
        &mut loadgen,
        &[],
        limit::Setup {
            threads: common.threads,
            publishers: 0,
        },
    );
    Ok(EchoReport {
        brokers: common.shares(args.conns, 0),
        conns: args.conns,
        messages: args.messages,
        payload_bytes: args.payload,
        window: args.window.max(1),
        verified: total,
        seconds: secs,
        messages_per_s: total as f64 / secs,
        round_trip: rtt.summary(),
        loadgen,
        limits,
    })
}

/// Runs the echo connections `mine` to the end; their round trips, how
/// many echoes were verified, and the thread's CPU.
async fn echo_thread(
    common: Common,
    args: EchoArgs,
    mine: Vec<usize>,
) -> Result<(Latency, u64, ThreadUsage)> {
    let clock = ThreadClock::start();
    let rtt = Rc::new(RefCell::new(Latency::new()));
    let mut tasks = Vec::new();
    for i in mine {
        let (common, args, rtt) = (common.clone(), args.clone(), rtt.clone());
        tasks.push(tokio::task::spawn_local(async move {
            echo_conn(&common, i, &args, &rtt).await
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| format!("echo task: {e}"))??;
    }
    let rtt = rtt.borrow().clone();
    Ok((rtt, total, clock.stop()))
}

async fn echo_conn(
    common: &Common,
    i: usize,
    args: &EchoArgs,
    rtt: &RefCell<Latency>,
) -> Result<u64> {
    let opts = common.connect_opts(i, 64 * 1024);
    let mut c = WsClient::connect(common.sub_endpoint(i), "/echo", &opts).await?;
    let body: Vec<u8> = (0..args.payload).map(|i| b'a' + (i % 26) as u8).collect();
    let window = args.window.max(1);
    let mut sent_at = VecDeque::with_capacity(window);
    let (mut sent, mut received) = (0, 0);
    while received < args.messages {
        while sent < args.messages && sent - received < window {
            c.queue(OpCode::Binary, &body);
            sent_at.push_back(mono_ns());
            sent += 1;
        }
        c.flush().await?;
        match c.next_message().await? {
            Event::Binary(p) if p[..] == body[..] => {
                let t = sent_at.pop_front().expect("in flight");
                rtt.borrow_mut().record_ns(mono_ns() - t);
                received += 1;
            }
            Event::Binary(_) => return Err("echo differs from what was sent".into()),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    c.close_now().await;
    Ok(received as u64)
}
