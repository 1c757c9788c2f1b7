//! Criterion benches live in `benches/`; this crate holds what they share:
//! the payload sizes, deterministic inputs and the criterion settings that
//! keep a full `cargo bench -p ringcast-bench` run to a few minutes on a
//! 2-core machine.
//!
//! Nothing here asserts anything about time: the numbers are written up in
//! `docs/benchmarks.md`, never checked by a test.

use std::time::Duration;

use criterion::Criterion;

/// Payload sizes every protocol-core bench runs at: the smallest frames,
/// the largest control frame (125 B, the 7-bit length limit), a typical
/// push message, a large message, and a bulk transfer.
pub const SIZES: [usize; 5] = [16, 125, 1 << 10, 16 << 10, 1 << 20];

/// Piece size for the incremental validator's "fed in pieces" case: a
/// plausible read size. In the mixed text many pieces end inside a code
/// point (see the `pieces_of_mixed_text_end_mid_code_point` test).
pub const PIECE: usize = 4 << 10;

/// A fixed, non-trivial mask key.
pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Human-readable size label used in bench ids: `16B`, `1KiB`, `1MiB`.
pub fn label(n: usize) -> String {
    if n >= 1 << 20 && (n >> 20) << 20 == n {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && (n >> 10) << 10 == n {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// Settings shared by all benches: short warm-up and measurement (the run
/// has ~100 cases and should stay under ~6 minutes on 2 cores, build
/// included), no plots (they cost time per case; the write-up uses the
/// medians from `target/criterion`, formatted by the `bench-tables` bin).
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
        .without_plots()
}

/// `n` bytes of arbitrary binary data.
pub fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(31) + 7) as u8).collect()
}

/// A byte buffer whose start address is chosen, not left to the allocator:
/// `misalign` bytes past a 4096-byte boundary. `malloc` only promises 16
/// bytes, so with a plain `Vec` a 32-byte vector loop crosses a cache line
/// on every other store in some runs and on none in others, which shows up
/// as run-to-run differences of up to 2x at 1 KiB.
pub struct Buf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    const ALIGN: usize = 4096;

    pub fn new(data: &[u8], misalign: usize) -> Self {
        let mut mem = vec![0u8; data.len() + Self::ALIGN + misalign];
        let start = mem.as_ptr().align_offset(Self::ALIGN) + misalign;
        mem[start..start + data.len()].copy_from_slice(data);
        Buf {
            mem,
            start,
            len: data.len(),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

const ASCII_SEED: &str = "{\"topic\":\"prices.eu\",\"seq\":1234567,\
\"body\":\"The quick brown fox jumps over the lazy dog; pack my box with \
five dozen liquor jugs.\"}\n";

/// Mostly non-ASCII: 2-byte (Greek, Cyrillic, accented Latin), 3-byte (CJK,
/// euro sign) and 4-byte (emoji, musical symbols) code points with some
/// ASCII between them, so every validator path is exercised.
const MIXED_SEED: &str = "κόσμε Привет мир héllo wörld 中文字符测试 €100 \
日本語のテキスト 🎉🚀 𝄞 한국어 텍스트 ñandú ¿qué? Ελληνικά ";

/// Exactly `n` bytes of valid UTF-8 built by repeating `seed`, cut at a
/// code point boundary and padded with ASCII spaces.
fn text_from(seed: &str, n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n + seed.len());
    while s.len() < n {
        s.push_str(seed);
    }
    let mut cut = n;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    while s.len() < n {
        s.push(' ');
    }
    debug_assert_eq!(s.len(), n);
    s.into_bytes()
}

/// `n` bytes of ASCII text (JSON-like push messages).
pub fn ascii_text(n: usize) -> Vec<u8> {
    text_from(ASCII_SEED, n)
}

/// `n` bytes of mixed multibyte UTF-8 text.
pub fn mixed_text(n: usize) -> Vec<u8> {
    text_from(MIXED_SEED, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_have_the_exact_size_and_are_valid() {
        for n in SIZES {
            assert_eq!(binary(n).len(), n);
            let a = ascii_text(n);
            assert_eq!(a.len(), n);
            assert!(a.is_ascii());
            let m = mixed_text(n);
            assert_eq!(m.len(), n);
            assert!(std::str::from_utf8(&m).is_ok());
        }
    }

    #[test]
    fn mixed_text_is_mostly_multibyte() {
        let m = mixed_text(1 << 16);
        let non_ascii = m.iter().filter(|b| !b.is_ascii()).count();
        assert!(non_ascii * 2 > m.len(), "{non_ascii} of {}", m.len());
    }

    #[test]
    fn pieces_of_mixed_text_end_mid_code_point() {
        let m = mixed_text(1 << 20);
        let cut_inside = m
            .chunks(PIECE)
            .filter(|c| std::str::from_utf8(c).is_err())
            .count();
        assert!(cut_inside > 0);
    }

    #[test]
    fn buf_is_placed_as_asked() {
        for misalign in [0, 6, 16] {
            let data = binary(1000);
            let mut b = Buf::new(&data, misalign);
            assert_eq!(b.as_slice(), &data[..]);
            assert_eq!(b.as_mut_slice().as_ptr() as usize % 4096, misalign);
        }
    }

    #[test]
    fn labels() {
        assert_eq!(label(16), "16B");
        assert_eq!(label(125), "125B");
        assert_eq!(label(1024), "1KiB");
        assert_eq!(label(16 << 10), "16KiB");
        assert_eq!(label(1 << 20), "1MiB");
    }
}
