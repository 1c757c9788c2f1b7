//! XOR masking of frame payloads (RFC 6455 section 5.3).
//!
//! Every byte a client sends is masked, so unmasking sits on the read path
//! of every frame. The byte-at-a-time loop is kept as the reference; the
//! fast paths process 8, 16 or 32 bytes per step and are checked against it
//! for every length, key rotation and alignment (see the tests). The
//! `unmask` bench in `bench/` compares each against a plain `memcpy`.
//!
//! All functions take an `offset`: the position of `buf[0]` within the frame
//! payload. Payloads arrive in pieces, and the key phase must continue where
//! the previous piece stopped.

use std::sync::OnceLock;

/// Rotates `key` so that index 0 is the key byte for payload position `offset`.
#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    // One `ror`: `[u8; 4]::rotate_left` compiles to memmove calls.
    u32::from_le_bytes(key)
        .rotate_right(8 * (offset & 3) as u32)
        .to_le_bytes()
}

/// The reference: one byte at a time.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
}

/// Eight bytes at a time through `u64`, aligned so every load is aligned.
pub fn apply_mask_word(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // SAFETY: u64 has no invalid bit patterns; align_to_mut splits the slice
    // into an unaligned head, aligned u64 body and tail without overlap.
    let (head, body, tail) = unsafe { buf.align_to_mut::<u64>() };
    apply_mask_scalar(head, key, offset);
    let k = rotate(key, offset + head.len());
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    for w in body.iter_mut() {
        *w ^= word;
    }
    // The body length is a multiple of 8, so the phase after it is the
    // phase after the head.
    apply_mask_scalar(tail, key, offset + head.len());
}

/// 32-byte chunks written as plain array code that LLVM turns into SIMD for
/// whatever target the crate is built for; no `unsafe`, no detection.
pub fn apply_mask_portable(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let k = rotate(key, offset);
    let mut pattern = [0u8; 32];
    for (i, p) in pattern.iter_mut().enumerate() {
        *p = k[i & 3];
    }
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for (b, m) in chunk.iter_mut().zip(pattern.iter()) {
            *b ^= m;
        }
    }
    // A chunk is a multiple of 4 long, so the remainder starts at phase 0 of `k`.
    apply_mask_scalar(chunks.into_remainder(), k, 0);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support SSE2 (every x86_64 CPU does).
    #[target_feature(enable = "sse2")]
    pub unsafe fn apply_mask_sse2(buf: &mut [u8], key: [u8; 4], offset: usize) {
        let k = super::rotate(key, offset);
        let m = _mm_set1_epi32(i32::from_ne_bytes(k));
        let mut chunks = buf.chunks_exact_mut(16);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), m));
        }
        super::apply_mask_word(chunks.into_remainder(), k, 0);
    }

    /// # Safety
    /// The CPU must support AVX2 (checked at run time by the dispatcher).
    #[target_feature(enable = "avx2")]
    pub unsafe fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
        let k = super::rotate(key, offset);
        let m = _mm256_set1_epi32(i32::from_ne_bytes(k));
        let mut chunks = buf.chunks_exact_mut(32);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr() as *mut __m256i;
            _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), m));
        }
        super::apply_mask_word(chunks.into_remainder(), k, 0);
    }
}

/// SSE2, 16 bytes per step. Falls back to the portable path off x86_64.
pub fn apply_mask_sse2(buf: &mut [u8], key: [u8; 4], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe {
        x86::apply_mask_sse2(buf, key, offset)
    }
    #[cfg(not(target_arch = "x86_64"))]
    apply_mask_portable(buf, key, offset)
}

/// AVX2, 32 bytes per step, if the CPU has it; otherwise SSE2/portable.
pub fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 support was just detected.
        return unsafe { x86::apply_mask_avx2(buf, key, offset) };
    }
    apply_mask_sse2(buf, key, offset)
}

type MaskFn = fn(&mut [u8], [u8; 4], usize);

/// The fastest implementation this CPU supports, with its name; detected
/// once.
fn chosen() -> &'static (&'static str, MaskFn) {
    static CHOSEN: OnceLock<(&'static str, MaskFn)> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY (in the closure): AVX2 support was just detected.
            return ("avx2", |b, k, o| unsafe { x86::apply_mask_avx2(b, k, o) });
        }
        #[cfg(target_arch = "x86_64")]
        return ("sse2", apply_mask_sse2);
        #[allow(unreachable_code)]
        ("portable", apply_mask_portable)
    })
}

/// The name of the implementation [`apply_mask`] dispatches to on this CPU.
pub fn implementation() -> &'static str {
    chosen().0
}

/// Applies (or removes: XOR is its own inverse) the mask, using the fastest
/// implementation this CPU supports. Short buffers skip the dispatch.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() < 16 {
        return apply_mask_scalar(buf, key, offset);
    }
    (chosen().1)(buf, key, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMPLS: [(&str, MaskFn); 5] = [
        ("word", apply_mask_word),
        ("portable", apply_mask_portable),
        ("sse2", apply_mask_sse2),
        ("avx2", apply_mask_avx2),
        ("dispatch", apply_mask),
    ];

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + 7) as u8).collect()
    }

    /// Every fast path equals the reference for every length 0..=1024,
    /// every key rotation and every start alignment within a 32-byte line.
    #[test]
    fn fast_paths_equal_reference_exhaustively() {
        let key = [0x12, 0x9a, 0xfe, 0x01];
        let backing = data(1024 + 32);
        for len in 0..=1024 {
            for offset in 0..4 {
                for start in [0usize, 1, 3, 7, 13, 31] {
                    let mut want = backing[start..start + len].to_vec();
                    apply_mask_scalar(&mut want, key, offset);
                    for (name, f) in IMPLS {
                        let mut got = backing.clone();
                        f(&mut got[start..start + len], key, offset);
                        assert_eq!(
                            &got[start..start + len],
                            &want[..],
                            "{name} len={len} offset={offset} start={start}"
                        );
                        // Nothing outside the slice was touched.
                        assert_eq!(&got[..start], &backing[..start]);
                        assert_eq!(&got[start + len..], &backing[start + len..]);
                    }
                }
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [1, 2, 3, 4];
        let mut whole = data(300);
        let mut pieces = whole.clone();
        apply_mask(&mut whole, key, 0);
        let mut pos = 0;
        for step in [1, 2, 5, 17, 64, 100, 111] {
            let end = (pos + step).min(pieces.len());
            apply_mask(&mut pieces[pos..end], key, pos);
            pos = end;
        }
        assert_eq!(pos, 300);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn mask_is_an_involution() {
        let orig = data(777);
        let mut buf = orig.clone();
        apply_mask(&mut buf, [9, 8, 7, 6], 2);
        assert_ne!(buf, orig);
        apply_mask(&mut buf, [9, 8, 7, 6], 2);
        assert_eq!(buf, orig);
    }

    proptest::proptest! {
        #[test]
        fn dispatch_equals_reference(
            v in proptest::collection::vec(proptest::num::u8::ANY, 0..5000),
            key in proptest::array::uniform4(proptest::num::u8::ANY),
            offset in 0usize..64,
        ) {
            let mut a = v.clone();
            let mut b = v;
            apply_mask_scalar(&mut a, key, offset);
            apply_mask(&mut b, key, offset);
            proptest::prop_assert_eq!(a, b);
        }
    }
}
