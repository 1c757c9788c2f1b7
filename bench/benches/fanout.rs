//! The fan-out path without sockets: encode a `message` frame once, then
//! queue the same `Bytes` on N subscribers' outboxes (what a shard does for
//! each delivered message), against a per-subscriber encode as the naive
//! baseline. Outboxes are drained between iterations so they never fill.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::outbox::Outbox;
use ringcast_core::wire::reply;

fn drain(outboxes: &[Outbox], scratch: &mut Vec<Bytes>) {
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
        let outboxes: Vec<Outbox> = (0..n).map(|_| Outbox::new(1 << 20)).collect();
        let mut scratch = Vec::with_capacity(64);
        group.throughput(Throughput::Elements(n as u64));
        let mut seq = 0u64;
        group.bench_with_input(BenchmarkId::new("encode_once", n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                let frame = reply::message(&topic, seq, black_box(data));
                for o in &outboxes {
                    o.push_message(&topic, seq, frame.clone(), false).unwrap();
                }
                drain(&outboxes, &mut scratch);
            })
        });
        group.bench_with_input(BenchmarkId::new("encode_per_subscriber", n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                for o in &outboxes {
                    let frame = reply::message(&topic, seq, black_box(data));
                    o.push_message(&topic, seq, frame, false).unwrap();
                }
                drain(&outboxes, &mut scratch);
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
