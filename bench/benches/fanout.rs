//! The fan-out path without sockets: encode a `message` frame once, then
//! queue the same `Bytes` on N subscribers' outboxes (what a shard does for
//! each delivered message), against a per-subscriber encode as the naive
//! baseline; and the same through the whole engine (`engine_publish`:
//! command parsing, owner, topic log, delivery, outputs). Outboxes are
//! drained between iterations so they never fill.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_core::outbox::Outbox;
use ringcast_core::wire::{client, reply};
use ringcast_core::{AllowAll, Engine, Grant, Limits, Msg, Placement, Route, ShardId, Transport};

/// One shard: nothing ever leaves it.
struct Alone;

impl Route for Alone {
    fn try_send(&mut self, _: ShardId, msg: Msg) -> Result<(), Msg> {
        Err(msg)
    }
    fn send(&mut self, _: ShardId, _: Msg) {}
}

fn drain(outboxes: &mut [Outbox], scratch: &mut Vec<Bytes>) {
    for o in outboxes {
        o.take_batch(scratch, 64);
        o.written(scratch.iter().map(Bytes::len).sum());
        scratch.clear();
    }
}

fn fanout(c: &mut Criterion) {
    let topic: Arc<str> = Arc::from("ticker.AAPL");
    let data = br#"{"price":187.31,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#; // 64 bytes
    assert_eq!(data.len(), 64);
    let mut group = c.benchmark_group("fanout");
    for n in [1usize, 100, 1000] {
        let mut outboxes: Vec<Outbox> = (0..n).map(|_| Outbox::new(1 << 20)).collect();
        let mut scratch = Vec::with_capacity(64);
        group.throughput(Throughput::Elements(n as u64));
        let mut seq = 0u64;
        group.bench_with_input(BenchmarkId::new("encode_once", n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                let frame = reply::message(&topic, seq, black_box(data));
                for o in &mut outboxes {
                    o.push_message(&topic, seq, frame.clone(), false).unwrap();
                }
                drain(&mut outboxes, &mut scratch);
            })
        });
        group.bench_with_input(BenchmarkId::new("encode_per_subscriber", n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                for o in &mut outboxes {
                    let frame = reply::message(&topic, seq, black_box(data));
                    o.push_message(&topic, seq, frame, false).unwrap();
                }
                drain(&mut outboxes, &mut scratch);
            })
        });
        // The engine: one publish command in, n deliveries out.
        let now = Instant::now();
        let mut engine = Engine::new(
            0,
            Placement::new(1, [1, 2, 3, 4]),
            Limits::default(),
            "bench",
            Alone,
            Box::new(AllowAll),
        );
        let subs: Vec<_> = (0..n)
            .map(|_| {
                let c = engine.open(Grant::default());
                engine.set_transport(c, Transport::WebSocket);
                let cmd = Bytes::from(client::subscribe(&topic));
                engine.command(c, &cmd, now);
                c
            })
            .collect();
        let publisher = engine.open(Grant::default());
        engine.set_transport(publisher, Transport::WebSocket);
        let mut cmd = Vec::new();
        client::publish(&mut cmd, &topic, data);
        let cmd = Bytes::from(cmd);
        group.bench_with_input(BenchmarkId::new("engine_publish", n), &n, |b, _| {
            b.iter(|| {
                engine.command(publisher, black_box(&cmd), now);
                while engine.poll_output().is_some() {}
                for &c in &subs {
                    engine.take_batch(c, &mut scratch, 64);
                    engine.written(c, scratch.iter().map(Bytes::len).sum());
                    scratch.clear();
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = ringcast_bench::config();
    targets = fanout
}
criterion_main!(benches);
