//! What ringcast keeps in Redis, and the two Lua scripts that touch it.
//!
//! Per topic `T` under prefix `P` (the `{T}` hash tag keeps a topic's keys
//! and channel in one Redis Cluster slot):
//! - `P:{T}:m`, a hash: `e` the stream's epoch, `s` the last seq;
//! - `P:{T}:s`, a stream of the retained messages, entry id `<seq>-0`,
//!   field `d` the message's JSON;
//! - channel `P:{T}`: every message as `<seq> <epoch> <json>`.
//!
//! A publish is one script: Redis runs one script at a time, so two nodes
//! publishing to a topic at once still get strictly increasing seqs, and
//! the channel carries them in seq order. Numbering and fan-out are never
//! two steps (a node dying between them would lose the message).

use bytes::Bytes;
use redis::Value;
use sha1::{Digest, Sha1};

use ringcast_core::Head;

/// Assigns the next seq, retains the message, publishes it. A topic
/// without its hash (never published, or expired, or a Redis that lost
/// its data) gets a new epoch from the server's clock and an empty stream.
///
/// KEYS: stream, meta. ARGV: data, max retained, stream TTL s, meta TTL s,
/// channel. Returns `{seq, epoch}`.
pub const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  local t = redis.call('TIME')
  epoch = string.format('%08x%08x', tonumber(t[1]), tonumber(t[2]))
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
  redis.call('DEL', KEYS[1])
end
local seq = redis.call('HINCRBY', KEYS[2], 's', 1)
if tonumber(ARGV[2]) > 0 then
  redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'd', ARGV[1])
  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
end
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
redis.call('PUBLISH', ARGV[5], seq .. ' ' .. epoch .. ' ' .. ARGV[1])
return {seq, epoch}
";

/// Where a topic's stream stands, and the newest retained entries after
/// `after` (all of them when the caller's epoch is not the stream's).
/// Creates the epoch if the topic has none yet, so that a subscriber
/// learns the epoch the first publish will use.
///
/// KEYS: stream, meta. ARGV: the caller's epoch (or ''), after, max
/// entries, meta TTL s. Returns `{epoch, last, seq, data, seq, data...}`,
/// oldest entry first.
pub const HEAD: &str = r"
local m = redis.call('HMGET', KEYS[2], 'e', 's')
local epoch, last = m[1], tonumber(m[2])
if not epoch then
  local t = redis.call('TIME')
  epoch = string.format('%08x%08x', tonumber(t[1]), tonumber(t[2]))
  last = 0
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
  redis.call('DEL', KEYS[1])
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
end
local after = tonumber(ARGV[2])
if epoch ~= ARGV[1] then after = 0 end
local out = {epoch, last}
if last > after and tonumber(ARGV[3]) > 0 then
  local min = '-'
  if after > 0 then min = (after + 1) .. '-0' end
  local entries = redis.call('XREVRANGE', KEYS[1], '+', min, 'COUNT', ARGV[3])
  for i = #entries, 1, -1 do
    local e = entries[i]
    out[#out + 1] = tonumber(string.match(e[1], '^(%d+)'))
    out[#out + 1] = e[2][2]
  end
end
return out
";

/// The SHA1 `EVALSHA` names a script by.
pub fn sha(script: &str) -> String {
    Sha1::digest(script.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn stream(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:s", self.prefix)
    }

    pub fn meta(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:m", self.prefix)
    }

    pub fn channel(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}", self.prefix)
    }

    /// The topic a channel name carries, if it is one of ours.
    pub fn topic<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')
    }
}

use ringcast_core::wire::cluster::epoch;
pub use ringcast_core::wire::cluster::parse_message;

/// The publish script's `{seq, epoch}`.
pub fn parse_published(v: &Value) -> Option<u64> {
    match v {
        Value::Array(items) => match items.first()? {
            Value::Int(seq) if *seq > 0 => Some(*seq as u64),
            _ => None,
        },
        _ => None,
    }
}

/// The head script's answer.
pub fn parse_head(v: &Value) -> Option<Head> {
    let Value::Array(items) = v else {
        return None;
    };
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(i) if *i >= 0 => Some(*i as u64),
        _ => None,
    };
    let epoch = epoch(&bytes(items.first()?)?)?;
    let last_seq = int(items.get(1)?)?;
    let mut entries = Vec::with_capacity(items.len().saturating_sub(2) / 2);
    for pair in items[2..].chunks(2) {
        let [seq, data] = pair else {
            return None;
        };
        entries.push((int(seq)?, Bytes::from(bytes(data)?)));
    }
    Some(Head {
        epoch,
        last_seq,
        after: None,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_topic_hash_tag() {
        let k = Keys::new("rc");
        assert_eq!(k.stream("a.b"), "rc:{a.b}:s");
        assert_eq!(k.meta("a.b"), "rc:{a.b}:m");
        assert_eq!(k.channel("a.b"), "rc:{a.b}");
        assert_eq!(k.topic("rc:{a.b}"), Some("a.b"));
        assert_eq!(k.topic("other:{a.b}"), None);
    }

    #[test]
    fn heads_parse() {
        let v = Value::Array(vec![
            Value::BulkString(b"0123abcd".to_vec()),
            Value::Int(7),
            Value::Int(6),
            Value::BulkString(b"6".to_vec()),
            Value::Int(7),
            Value::BulkString(b"\"7\"".to_vec()),
        ]);
        let h = parse_head(&v).unwrap();
        assert_eq!((&*h.epoch, h.last_seq), ("0123abcd", 7));
        assert_eq!(h.entries[1], (7, Bytes::from_static(b"\"7\"")));
        assert_eq!(sha("return 1").len(), 40);
    }
}
