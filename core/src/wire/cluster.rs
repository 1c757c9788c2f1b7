//! What nodes of a cluster say to each other through the backend: a
//! message on a topic's channel is `<seq> <epoch> <json>` (the publish
//! script in `broker/src/cluster/script.rs` writes it).
//!
//! The text comes from Redis, which anyone with its password can write
//! to: a payload that is not in this form, or an epoch that is not what
//! the scripts make, is refused rather than passed to clients.

use std::sync::Arc;

use bytes::Bytes;

/// An epoch as the scripts make it: 1 to 32 ASCII letters and digits.
pub fn epoch(v: &[u8]) -> Option<Arc<str>> {
    let ok = !v.is_empty() && v.len() <= 32 && v.iter().all(u8::is_ascii_alphanumeric);
    ok.then(|| std::str::from_utf8(v).ok().map(Arc::from))
        .flatten()
}

/// A message on a topic channel: `(seq, epoch, data)`. The data is not
/// checked here: the publishing node validated it.
pub fn parse_message(payload: &[u8]) -> Option<(u64, Arc<str>, Bytes)> {
    let mut parts = payload.splitn(3, |&b| b == b' ');
    let seq: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let epoch = epoch(parts.next()?)?;
    let data = Bytes::copy_from_slice(parts.next()?);
    (seq > 0).then_some((seq, epoch, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_junk_does_not() {
        let (seq, e, d) = parse_message(b"42 00ab12 {\"x\": 1 2}").unwrap();
        assert_eq!((seq, &*e, &d[..]), (42, "00ab12", &b"{\"x\": 1 2}"[..]));
        for bad in [
            &b"x 00ab {}"[..],
            b"1 a\"b {}",
            b"1 00ab",
            b"",
            b"0 00ab {}",
            b"-1 00ab {}",
        ] {
            assert_eq!(parse_message(bad), None, "{bad:?}");
        }
    }
}
