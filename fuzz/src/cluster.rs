//! The cluster channel message (`<seq> <epoch> <json>`, from Redis):
//! never a panic; what it accepts is exactly a positive seq, an epoch of
//! letters and digits, and the rest of the input as the data.

use ringcast_core::wire::cluster::parse_message;

pub fn cluster_message(data: &[u8]) {
    let Some((seq, epoch, body)) = parse_message(data) else {
        return;
    };
    assert!(seq > 0);
    assert!(!epoch.is_empty() && epoch.len() <= 32);
    assert!(epoch.bytes().all(|b| b.is_ascii_alphanumeric()));
    let head = format!("{seq} {epoch} ");
    assert!(data.len() >= body.len());
    assert_eq!(&data[data.len() - body.len()..], &body[..]);
    // The seq may have been written with leading zeros or a `+`; the
    // epoch and the separators are exact.
    let prefix = &data[..data.len() - body.len()];
    assert!(
        prefix.ends_with(format!(" {epoch} ").as_bytes()),
        "{prefix:?} vs {head}"
    );
}
