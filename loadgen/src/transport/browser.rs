//! Browser-sized WebSocket upgrade requests (`--upgrade-header-bytes N`).
//!
//! A browser's upgrade request carries far more than RFC 6455 needs: a
//! `User-Agent`, `Accept-Encoding`, `Accept-Language`, `Cache-Control`,
//! `Pragma` and whatever cookies the site set, often 1 to 2 KiB in all. A
//! server that keeps any of that per connection (the head's buffer, parsed
//! header copies) pays for it on every idle connection, so the broker's
//! memory per connection is measured with such requests too. These are the
//! headers Chromium sends on an upgrade, minus `Origin` (the broker may
//! check it) and `Sec-WebSocket-Extensions` (the client speaks no
//! extension), with a `Cookie` filled with random characters so that the
//! extra headers come to exactly N bytes, every line and its CRLF counted.

use rand::Rng;

/// Every header but the cookie, as Chromium 126 on Linux sends them.
const FIXED: &str = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en-US;q=0.9,en;q=0.8,de;q=0.7\r\n\
Cache-Control: no-cache\r\n\
Pragma: no-cache\r\n";

/// The cookie's start: an analytics id and a preference, as a site sets
/// them; the session value after it fills the rest.
const COOKIE: &str = "Cookie: _ga=GA1.1.";

/// `GA1.1.` is followed by two 10-digit numbers, then `; theme=dark;
/// session=` and at least one character of session.
const COOKIE_MIDDLE: usize = 10 + 1 + 10;
const COOKIE_SESSION: &str = "; theme=dark; session=";

/// The smallest `--upgrade-header-bytes` (every header, a one-character
/// session value).
pub const MIN_BYTES: usize =
    FIXED.len() + COOKIE.len() + COOKIE_MIDDLE + COOKIE_SESSION.len() + 1 + 2;

/// The largest: far past any browser, and past the broker's default
/// `--max-head-size` (8 KiB), to test that limit too.
pub const MAX_BYTES: usize = 64 * 1024;

/// Checks an `--upgrade-header-bytes` value: 0 (off) or
/// [`MIN_BYTES`]..=[`MAX_BYTES`].
pub fn validate(n: usize) -> Result<(), String> {
    if n == 0 || (MIN_BYTES..=MAX_BYTES).contains(&n) {
        Ok(())
    } else {
        Err(format!(
            "--upgrade-header-bytes must be 0 (off) or in {MIN_BYTES}..={MAX_BYTES} (the \
             browser headers alone take {MIN_BYTES}), got {n}"
        ))
    }
}

/// `n` bytes of browser headers, each line ending in CRLF, for one
/// connection (the cookie's values are random, as every browser's are
/// its own). `n` must pass [`validate`] and not be 0.
pub fn headers(n: usize) -> Vec<u8> {
    assert!(n >= MIN_BYTES, "validated: {n} >= {MIN_BYTES}");
    let mut rng = rand::thread_rng();
    let mut out = Vec::with_capacity(n);
    out.extend_from_slice(FIXED.as_bytes());
    out.extend_from_slice(COOKIE.as_bytes());
    let id: u32 = rng.gen_range(1_000_000_000..=u32::MAX);
    let at: u32 = rng.gen_range(1_700_000_000..2_000_000_000);
    out.extend_from_slice(format!("{id}.{at}").as_bytes());
    out.extend_from_slice(COOKIE_SESSION.as_bytes());
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    while out.len() < n - 2 {
        out.push(CHARS[rng.gen_range(0..CHARS.len())]);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `request` (a complete head, ending in the blank line) with `extra`
/// (whole header lines) before its blank line.
pub fn with_headers(request: &[u8], extra: &[u8]) -> Vec<u8> {
    let head = request
        .strip_suffix(b"\r\n")
        .expect("a request head ends in a blank line");
    let mut out = Vec::with_capacity(request.len() + extra.len());
    out.extend_from_slice(head);
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_come_to_exactly_the_asked_size() {
        // As `--help` and docs/loadgen.md give it.
        assert_eq!(MIN_BYTES, 318);
        for n in [MIN_BYTES, MIN_BYTES + 1, 1000, 1700, 4096, MAX_BYTES] {
            let h = headers(n);
            assert_eq!(h.len(), n);
            let text = std::str::from_utf8(&h).unwrap();
            assert!(text.ends_with("\r\n") && !text.ends_with("\r\n\r\n"));
            let lines: Vec<&str> = text.trim_end().split("\r\n").collect();
            let names: Vec<&str> = lines
                .iter()
                .map(|l| l.split_once(": ").expect(l).0)
                .collect();
            assert_eq!(
                names,
                [
                    "User-Agent",
                    "Accept-Encoding",
                    "Accept-Language",
                    "Cache-Control",
                    "Pragma",
                    "Cookie"
                ]
            );
            let cookie = lines[5].strip_prefix("Cookie: ").unwrap();
            let pairs: Vec<&str> = cookie.split("; ").collect();
            assert_eq!(pairs.len(), 3, "{cookie}");
            assert!(pairs[0].starts_with("_ga=GA1.1."), "{cookie}");
            assert!(pairs[2].len() > "session=".len(), "{cookie}");
        }
        // Each connection's cookie is its own.
        assert_ne!(headers(1700), headers(1700));
    }

    #[test]
    fn sizes_are_checked() {
        validate(0).unwrap();
        validate(MIN_BYTES).unwrap();
        validate(1700).unwrap();
        validate(MAX_BYTES).unwrap();
        for bad in [1, MIN_BYTES - 1, MAX_BYTES + 1] {
            let e = validate(bad).unwrap_err();
            assert!(e.contains("--upgrade-header-bytes must be 0"), "{e}");
        }
    }

    #[test]
    fn the_upgrade_request_carries_them_and_still_parses() {
        let (_, request) =
            ringcast_proto::handshake::ClientHandshake::new("127.0.0.1:1", "/ws", &[]);
        let extra = headers(1700);
        let full = with_headers(&request, &extra);
        assert_eq!(full.len(), request.len() + 1700);
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut parsed);
        let n = match req.parse(&full).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete"),
        };
        assert_eq!(n, full.len());
        let names: Vec<&str> = req.headers.iter().map(|h| h.name).collect();
        // The handshake's own headers first, all still there.
        for h in [
            "Host",
            "Upgrade",
            "Sec-WebSocket-Key",
            "Cookie",
            "User-Agent",
        ] {
            assert!(names.contains(&h), "{names:?}");
        }
        // Within the broker's default --max-headers (32).
        assert!(names.len() <= 12, "{names:?}");
    }
}
