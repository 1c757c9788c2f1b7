//! The timestamped payload publishers embed so that subscribers can
//! compute latency. The rest of the wire contract (commands, broker
//! objects) is `ringcast_core::wire::client`, written once for the broker
//! and the load generator.

use serde::Deserialize;

use ringcast_core::wire::client::leading_u64;
pub use ringcast_core::wire::client::{parse, publish, subscribe, Incoming};

/// The smallest `data` the timestamped payload can have for a given stamp:
/// `{"t":N,"p":""}`.
fn stamped_overhead(t_ns: u64) -> usize {
    r#"{"t":,"p":""}"#.len() + digits(t_ns)
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Appends the `data` of a timestamped publish, `{"t":T,"p":"xxx…"}`,
/// padded so that it is exactly `size` bytes (or as small as it can be when
/// `size` is below the overhead of about 30 bytes). `t` is the *scheduled*
/// send time in ns on the host's monotonic clock ([`crate::clock`]).
pub fn stamped_data(out: &mut Vec<u8>, t_ns: u64, size: usize) {
    let pad = size.saturating_sub(stamped_overhead(t_ns));
    out.extend_from_slice(br#"{"t":"#);
    out.extend_from_slice(t_ns.to_string().as_bytes());
    out.extend_from_slice(br#","p":""#);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(br#""}"#);
}

/// The scheduled send time of a stamped `data`, if it is one.
pub fn stamp_of(data: &[u8]) -> Option<u64> {
    if let Some(rest) = data.strip_prefix(br#"{"t":"#) {
        return leading_u64(rest).map(|(v, _)| v);
    }
    #[derive(Deserialize)]
    struct Stamp {
        t: u64,
    }
    serde_json::from_slice::<Stamp>(data).ok().map(|s| s.t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_payload_has_the_requested_size_and_round_trips() {
        for size in [0usize, 10, 40, 64, 100, 1000, 4096] {
            for t in [0u64, 9, 1_234_567_890_123] {
                let mut d = Vec::new();
                stamped_data(&mut d, t, size);
                assert_eq!(d.len(), size.max(stamped_overhead(t)), "size {size} t {t}");
                let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
                assert_eq!(v["t"], t);
                assert_eq!(stamp_of(&d), Some(t));
            }
        }
        let (mut cmd, mut data) = (Vec::new(), Vec::new());
        stamped_data(&mut data, 5, 64);
        publish(&mut cmd, "lg.0", &data);
        let v: serde_json::Value = serde_json::from_slice(&cmd).unwrap();
        assert_eq!(v["op"], "publish");
        assert_eq!(v["data"]["t"], 5);
        assert_eq!(stamp_of(br#"{"p":"", "t": 12}"#), Some(12));
        assert_eq!(stamp_of(br#""plain""#), None);
    }
}
