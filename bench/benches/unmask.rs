//! Unmasking (XOR with the 4-byte key) per implementation, against a plain
//! `memcpy` of the same size as the ceiling: both read and write every byte
//! once, so a good unmask should come close to it. (It is a reference, not a
//! hard bound: the copy touches 2N distinct bytes, source and destination,
//! where the in-place unmask touches N.)
//!
//! The per-implementation cases mask a page-aligned buffer at key phase 0,
//! the best case (see `Buf` for why the address is pinned down).
//! `dispatch_misaligned` and `dispatch_phase1` run the dispatcher the way
//! the decoder really calls it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcast_bench::{binary, config, label, Buf, KEY, SIZES};
use ringcast_proto::mask;

type MaskFn = fn(&mut [u8], [u8; 4], usize);

const IMPLS: [(&str, MaskFn); 6] = [
    ("scalar", mask::apply_mask_scalar),
    ("word", mask::apply_mask_word),
    ("portable", mask::apply_mask_portable),
    ("sse2", mask::apply_mask_sse2),
    ("avx2", mask::apply_mask_avx2),
    ("dispatch", mask::apply_mask),
];

fn unmask(c: &mut Criterion) {
    eprintln!("apply_mask dispatches to: {}", mask::implementation());
    for n in SIZES {
        let mut group = c.benchmark_group(format!("unmask/{}", label(n)));
        group.throughput(Throughput::Bytes(n as u64));
        let data = binary(n);

        let src = Buf::new(&data, 0);
        let mut dst = Buf::new(&data, 0);
        group.bench_function("memcpy", |b| {
            b.iter(|| {
                black_box(dst.as_mut_slice()).copy_from_slice(black_box(src.as_slice()));
            })
        });

        let mut buf = Buf::new(&data, 0);
        for (name, f) in IMPLS {
            group.bench_function(name, |b| {
                // Masking twice restores the data; the contents do not
                // matter to any implementation anyway.
                b.iter(|| f(black_box(buf.as_mut_slice()), black_box(KEY), black_box(0)))
            });
        }
        // Where payloads really sit: after a 2-byte header and 4-byte key
        // the payload of a small frame starts 6 bytes into the read buffer,
        // and a frame read in pieces continues at a non-zero key phase.
        let mut misaligned = Buf::new(&data, 6);
        group.bench_function("dispatch_misaligned", |b| {
            b.iter(|| {
                mask::apply_mask(
                    black_box(misaligned.as_mut_slice()),
                    black_box(KEY),
                    black_box(0),
                )
            })
        });
        group.bench_function("dispatch_phase1", |b| {
            b.iter(|| mask::apply_mask(black_box(buf.as_mut_slice()), black_box(KEY), black_box(1)))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = unmask
}
criterion_main!(benches);
