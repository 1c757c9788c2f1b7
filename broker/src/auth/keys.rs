//! API keys for `POST /publish`: the file `--api-keys-file` names, one key
//! per line as `NAME KEY [PATTERNS]`.
//!
//! `#` starts a comment; blank lines are ignored; PATTERNS is a
//! comma-separated list of topic patterns the key may publish to (all
//! topics when absent). A presented key is compared with every configured
//! key in constant time (no early exit, no length shortcut), so response
//! timing tells an attacker nothing about how close a guess was.

use std::sync::Arc;

use ringcast_core::auth::{Access, Grant};
use ringcast_core::pattern::parse_list;

/// Shortest key accepted: 128 bits of hex or base64.
const MIN_KEY_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: Arc<str>,
    key: Box<[u8]>,
    publish: Access,
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// Parses the file's text; the error names the line.
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let mut keys: Vec<ApiKey> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = |what: &str| format!("line {}: {what}", n + 1);
            let (name, key, patterns) = match fields[..] {
                [name, key] => (name, key, None),
                [name, key, patterns] => (name, key, Some(patterns)),
                _ => return Err(at("expected NAME KEY [PATTERNS]")),
            };
            if key.len() < MIN_KEY_LEN {
                return Err(at(&format!(
                    "key {name:?} is shorter than {MIN_KEY_LEN} characters"
                )));
            }
            if keys.iter().any(|k| &*k.name == name) {
                return Err(at(&format!("key name {name:?} is used twice")));
            }
            if keys.iter().any(|k| *k.key == *key.as_bytes()) {
                return Err(at(&format!("key {name:?} repeats another key")));
            }
            let publish = match patterns {
                None => Access::All,
                Some(p) => Access::Topics(
                    parse_list(p.split(','))
                        .map_err(|e| at(&format!("bad pattern {e}")))?
                        .into(),
                ),
            };
            keys.push(ApiKey {
                name: Arc::from(name),
                key: key.as_bytes().into(),
                publish,
            });
        }
        Ok(ApiKeys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key `presented` is, compared with every key in constant time.
    pub fn find(&self, presented: &[u8]) -> Option<&ApiKey> {
        let mut found = None;
        for k in &self.keys {
            if ct_eq(&k.key, presented) {
                found = Some(k);
            }
        }
        found
    }
}

impl ApiKey {
    /// What publishing with this key may do: its subject is `key:NAME`.
    pub fn grant(&self) -> Grant {
        Grant::new(
            Some(Arc::from(format!("key:{}", self.name))),
            Access::none(),
            self.publish.clone(),
            None,
        )
    }
}

/// Equal, in time that depends only on the lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_format() {
        let keys = ApiKeys::parse(
            "# ops keys\n\nfeeder  0123456789abcdef0123\t  # the price feeder\n\
             trains fedcba9876543210fedc trains.>,stations.*\n",
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        let f = keys.find(b"0123456789abcdef0123").unwrap();
        assert_eq!(&*f.name, "feeder");
        assert!(f.grant().publish.allows("anything"));
        let t = keys.find(b"fedcba9876543210fedc").unwrap().grant();
        assert!(t.publish.allows("trains.ICE.1") && !t.publish.allows("ticker.A"));
        assert_eq!(t.subject.as_deref(), Some("key:trains"));
        assert!(keys.find(b"0123456789abcdef012").is_none(), "a prefix");
        assert!(keys.find(b"0123456789abcdef01234").is_none(), "longer");
        assert!(keys.find(b"").is_none());
    }

    #[test]
    fn bad_files_name_the_line() {
        for (text, want) in [
            ("a", "line 1: expected"),
            ("a b c d", "line 1: expected"),
            ("\na short", "line 2: key \"a\" is shorter"),
            (
                "a 0123456789abcdef\na 0123456789abcdeX",
                "line 2: key name \"a\" is used twice",
            ),
            (
                "a 0123456789abcdef\nb 0123456789abcdef",
                "line 2: key \"b\" repeats",
            ),
            ("a 0123456789abcdef x..y", "line 1: bad pattern"),
        ] {
            let e = ApiKeys::parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
        assert!(ct_eq(b"", b""));
        // 256 bytes apart in length: the length xor wraps to 0 as u8.
        assert!(!ct_eq(&[0u8; 256], b""));
    }
}
