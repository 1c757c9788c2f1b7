//! Topic patterns: what a token or an API key allows.
//!
//! A pattern is a topic name whose segments may also be `*` (exactly one
//! segment) or, as the last segment only, `>` (one or more segments):
//! `ticker.*` matches `ticker.AAPL` but not `ticker.a.b` or `ticker`;
//! `trains.>` matches `trains.ICE` and `trains.ICE.seats` but not `trains`.
//! These are NATS's subject wildcards, which operators of push brokers
//! already know. Matching walks both names once, segment by segment, with
//! no allocation: it runs on every subscribe and publish of a client with
//! limited rights.

use std::fmt;

use crate::topic::MAX_TOPIC_LEN;

/// A parsed, valid topic pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern(Box<str>);

/// Why a pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatternError {
    Empty,
    TooLong,
    /// A character a topic cannot hold (and not a wildcard segment).
    BadChar,
    EmptySegment,
    /// `*` or `>` inside a segment (`a*`), or `>` before the end.
    BadWildcard,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatternError::Empty => "pattern is empty",
            PatternError::TooLong => "pattern is longer than 255 bytes",
            PatternError::BadChar => "pattern may only contain A-Z a-z 0-9 _ . : - and wildcards",
            PatternError::EmptySegment => "pattern has an empty dot-separated segment",
            PatternError::BadWildcard => {
                "`*` and `>` must be whole segments, and `>` only the last one"
            }
        })
    }
}

impl std::error::Error for PatternError {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.len() > MAX_TOPIC_LEN {
            return Err(PatternError::TooLong);
        }
        let segments = s.split('.').count();
        for (i, seg) in s.split('.').enumerate() {
            match seg {
                "" => return Err(PatternError::EmptySegment),
                "*" => {}
                ">" if i + 1 == segments => {}
                _ if seg.contains(['*', '>']) => return Err(PatternError::BadWildcard),
                _ => {
                    let ok = seg
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'-'));
                    if !ok {
                        return Err(PatternError::BadChar);
                    }
                }
            }
        }
        Ok(Pattern(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` (a valid topic name) matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut pat = self.0.split('.');
        let mut top = topic.split('.');
        loop {
            match (pat.next(), top.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(t)) if p == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

/// Whether any of `patterns` matches `topic`. Nothing listed, nothing
/// allowed.
pub fn any_matches(patterns: &[Pattern], topic: &str) -> bool {
    patterns.iter().any(|p| p.matches(topic))
}

/// Parses a list of patterns (e.g. a token's claim, a comma-separated
/// flag), refusing the whole list if one is invalid: a typo must not widen
/// or silently narrow what is allowed.
pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<Pattern>, String> {
    items
        .into_iter()
        .map(|s| {
            Pattern::parse(s).map_err(|e| {
                // Quoted in a client-visible refusal: bounded.
                let shown: String = s.chars().take(64).collect();
                let more = if shown.len() < s.len() { "..." } else { "" };
                format!("{shown:?}{more}: {e}")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The reference: the definition read literally, by recursion over
    /// segment lists.
    fn reference(pattern: &[&str], topic: &[&str]) -> bool {
        match (pattern.split_first(), topic.split_first()) {
            (None, None) => true,
            (Some((&">", [])), Some(_)) => true,
            (Some((&"*", p)), Some((_, t))) => reference(p, t),
            (Some((p0, p)), Some((t0, t))) if p0 == t0 => reference(p, t),
            _ => false,
        }
    }

    fn check(pattern: &str, topic: &str) -> bool {
        let p = Pattern::parse(pattern).unwrap();
        let want = reference(
            &pattern.split('.').collect::<Vec<_>>(),
            &topic.split('.').collect::<Vec<_>>(),
        );
        assert_eq!(p.matches(topic), want, "{pattern} vs {topic}");
        want
    }

    #[test]
    fn the_documented_examples() {
        assert!(check("ticker.*", "ticker.AAPL"));
        assert!(!check("ticker.*", "ticker.a.b"));
        assert!(!check("ticker.*", "ticker"));
        assert!(check("trains.>", "trains.ICE"));
        assert!(check("trains.>", "trains.ICE.seats"));
        assert!(!check("trains.>", "trains"));
        assert!(check(">", "anything.at.all"));
        assert!(check("*.AAPL", "ticker.AAPL"));
        assert!(check("a.b", "a.b"));
        assert!(!check("a.b", "a.bc"));
        assert!(!check("a.b", "a"));
        assert!(!check("a", "a.b"));
        assert!(check("demo.>", "demo.ticker"));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for (bad, why) in [
            ("", PatternError::Empty),
            ("a..b", PatternError::EmptySegment),
            (".a", PatternError::EmptySegment),
            ("a.", PatternError::EmptySegment),
            ("a*", PatternError::BadWildcard),
            ("a.>.b", PatternError::BadWildcard),
            ("a>", PatternError::BadWildcard),
            ("a b", PatternError::BadChar),
            ("a/b", PatternError::BadChar),
        ] {
            assert_eq!(Pattern::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(Pattern::parse(&"a".repeat(256)), Err(PatternError::TooLong));
        assert!(parse_list(["a.*", "b.>"]).is_ok());
        assert!(parse_list(["a.*", "b..c"]).unwrap_err().contains("b..c"));
    }

    #[test]
    fn nothing_listed_nothing_allowed() {
        assert!(!any_matches(&[], "a"));
        let ps = parse_list(["x.*", "a"]).unwrap();
        assert!(any_matches(&ps, "a"));
        assert!(any_matches(&ps, "x.y"));
        assert!(!any_matches(&ps, "b"));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("ab".to_string()),
            "[a-c]{1,3}",
        ]
    }

    fn pattern_segment() -> impl Strategy<Value = String> {
        prop_oneof![segment(), Just("*".to_string())]
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(
            mut pat in proptest::collection::vec(pattern_segment(), 1..5),
            tail in any::<bool>(),
            top in proptest::collection::vec(segment(), 1..6),
        ) {
            if tail {
                pat.push(">".to_string());
            }
            let (pattern, topic) = (pat.join("."), top.join("."));
            check(&pattern, &topic);
        }
    }
}
