//! UTF-8 validation: `simdutf8::basic` vs `std::str::from_utf8` vs our
//! incremental `Utf8Validator`, fed the whole input at once and in 4 KiB
//! pieces (as a text message arriving over several reads would be), on
//! ASCII and on mixed multibyte text.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcast_bench::{ascii_text, config, label, mixed_text, PIECE, SIZES};
use ringcast_proto::utf8::Utf8Validator;

fn validate_whole(input: &[u8]) -> bool {
    let mut v = Utf8Validator::new();
    v.feed(input).is_ok() && v.finish().is_ok()
}

fn validate_pieces(input: &[u8]) -> bool {
    let mut v = Utf8Validator::new();
    for piece in input.chunks(PIECE) {
        if v.feed(piece).is_err() {
            return false;
        }
    }
    v.finish().is_ok()
}

fn utf8(c: &mut Criterion) {
    type Gen = fn(usize) -> Vec<u8>;
    let texts: [(&str, Gen); 2] = [("ascii", ascii_text), ("mixed", mixed_text)];
    for (kind, gen) in texts {
        for n in SIZES {
            let input = gen(n);
            // Correctness check of the inputs and of every validator, once,
            // outside the measurement.
            assert!(simdutf8::basic::from_utf8(&input).is_ok());
            assert!(validate_whole(&input) && validate_pieces(&input));

            let mut group = c.benchmark_group(format!("utf8/{kind}/{}", label(n)));
            group.throughput(Throughput::Bytes(n as u64));
            group.bench_function("simdutf8", |b| {
                b.iter(|| simdutf8::basic::from_utf8(black_box(&input)).is_ok())
            });
            group.bench_function("std", |b| {
                b.iter(|| std::str::from_utf8(black_box(&input)).is_ok())
            });
            group.bench_function("validator_whole", |b| {
                b.iter(|| validate_whole(black_box(&input)))
            });
            // Up to 4 KiB the input is a single piece: identical to the
            // case above, so it is only run where it differs.
            if n > PIECE {
                group.bench_function("validator_4KiB_pieces", |b| {
                    b.iter(|| validate_pieces(black_box(&input)))
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = utf8
}
criterion_main!(benches);
