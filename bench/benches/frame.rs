//! Frame decode and encode through the public protocol API.
//!
//! - decode: one complete masked client frame through a server-role
//!   `WebSocket::poll` (header parse, size/role checks, split off the read
//!   buffer, unmask, UTF-8 validation for text). `poll` consumes the buffer,
//!   so each iteration gets a fresh copy of a template built in the
//!   (untimed) setup of `iter_batched`; the resulting event is dropped
//!   outside the measurement too. The copy starts on a cache line (as a
//!   page-aligned io_uring read buffer would), so the payload sits at a
//!   fixed +6, +8 or +14 bytes from it and runs are comparable.
//! - encode: `encode_frame` into a reused `BytesMut`, unmasked (server
//!   role) and masked (client role: copy, then mask in place).
//!
//! Throughput is payload bytes per second (headers are 2-14 bytes extra).

use std::hint::black_box;

use bytes::{Buf, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast_bench::{ascii_text, binary, config, label, mixed_text, KEY, SIZES};
use ringcast_proto::frame::{encode_frame, OpCode};
use ringcast_proto::websocket::{Event, Limits, Role, WebSocket};

fn masked_frame(opcode: OpCode, payload: &[u8]) -> BytesMut {
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, true, opcode, Some(KEY), payload);
    wire
}

/// A copy of `wire` in a fresh buffer whose first byte starts a cache line.
fn read_buffer(wire: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(wire.len() + 64);
    let pad = buf.as_ptr().align_offset(64);
    buf.resize(pad, 0);
    buf.advance(pad);
    buf.extend_from_slice(wire);
    buf
}

fn decode(c: &mut Criterion) {
    type Gen = fn(usize) -> Vec<u8>;
    let cases: [(&str, OpCode, Gen); 3] = [
        ("binary", OpCode::Binary, binary),
        ("text_ascii", OpCode::Text, ascii_text),
        ("text_mixed", OpCode::Text, mixed_text),
    ];
    for n in SIZES {
        let mut group = c.benchmark_group(format!("frame_decode/{}", label(n)));
        group.throughput(Throughput::Bytes(n as u64));
        // Large inputs: let criterion hold fewer prepared copies at once.
        let batch = if n >= 16 << 10 {
            BatchSize::LargeInput
        } else {
            BatchSize::SmallInput
        };
        for (name, opcode, gen) in cases {
            let payload = gen(n);
            let wire = masked_frame(opcode, &payload);
            // The same connection decodes every frame: after a complete
            // single-frame message it is back in its idle state.
            let mut ws = WebSocket::new(Role::Server, Limits::default());

            // Correctness check, once, outside the measurement.
            let mut buf = read_buffer(&wire);
            assert_eq!(buf.as_ptr() as usize % 64, 0);
            let ev = ws.poll(&mut buf).expect("valid frame").expect("complete");
            let got = match ev {
                Event::Binary(b) | Event::Text(b) => b,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(&got[..], &payload[..]);
            assert!(buf.is_empty());

            group.bench_function(name, |b| {
                b.iter_batched(
                    || read_buffer(&wire),
                    |mut buf| {
                        let ev = ws.poll(black_box(&mut buf));
                        (buf, ev)
                    },
                    batch,
                )
            });
        }
        group.finish();
    }
}

fn encode(c: &mut Criterion) {
    for n in SIZES {
        let mut group = c.benchmark_group(format!("frame_encode/{}", label(n)));
        group.throughput(Throughput::Bytes(n as u64));
        let payload = binary(n);
        let mut out = BytesMut::with_capacity(n + 14);
        group.bench_function("server_unmasked", |b| {
            b.iter(|| {
                out.clear();
                encode_frame(
                    black_box(&mut out),
                    true,
                    OpCode::Binary,
                    None,
                    black_box(&payload),
                );
            })
        });
        group.bench_function("client_masked", |b| {
            b.iter(|| {
                out.clear();
                encode_frame(
                    black_box(&mut out),
                    true,
                    OpCode::Binary,
                    black_box(Some(KEY)),
                    black_box(&payload),
                );
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, encode
}
criterion_main!(benches);
