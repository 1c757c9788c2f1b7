//! The `pattern` target: topic patterns (`ringcast_core::pattern`), what a
//! token or an API key allows, checked against a reference written here
//! from the grammar in docs/security.md, independently of the core's code.
//!
//! Input layout: text (made valid UTF-8 first: a pattern arrives in a JSON
//! claim or a flag, both UTF-8). Up to the first `\n` is the pattern text,
//! the rest is the topic. The pattern text is parsed whole with
//! `Pattern::parse` and, split on `,`, as a list with `parse_list` (as
//! `--anonymous-subscribe` is).
//!
//! Checks:
//! - `Pattern::parse` accepts exactly what the grammar allows: dot-separated
//!   segments, `*` a whole segment, `>` only as the whole last segment, every
//!   other segment `[A-Za-z0-9_:-]+`, 1..=255 bytes in all; its error names
//!   a fault the text has (`Empty`, `TooLong` exactly; `EmptySegment`,
//!   `BadWildcard`, `BadChar` only when such a fault is there);
//! - `topic::validate` accepts exactly the same grammar without wildcards;
//! - `parse_list` succeeds exactly when every item is valid, keeps their
//!   order, and names the first bad item in its error;
//! - for a valid topic, `matches` and `any_matches` agree with a recursive
//!   reference matcher; `matches` never panics on any topic;
//! - a valid pattern matches the topics made by filling its wildcards in,
//!   and one without wildcards matches itself and nothing else.

use ringcast_core::pattern::{any_matches, parse_list, Pattern, PatternError};
use ringcast_core::topic;

/// The longest pattern or topic, in bytes.
const MAX_LEN: usize = 255;

fn name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'-')
}

/// The grammar of a pattern, read literally.
pub fn reference_valid(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_LEN {
        return false;
    }
    let segs: Vec<&str> = s.split('.').collect();
    let last = segs.len() - 1;
    segs.iter().enumerate().all(|(i, seg)| match *seg {
        "*" => true,
        ">" => i == last,
        _ => !seg.is_empty() && seg.bytes().all(name_byte),
    })
}

/// The grammar of a topic: a pattern without wildcards.
fn reference_topic(s: &str) -> bool {
    reference_valid(s) && !s.split('.').any(|seg| seg == "*" || seg == ">")
}

/// Whether `pattern` matches `topic`, by recursion over their segments:
/// `*` eats exactly one segment, a final `>` one or more, anything else
/// must be equal.
fn reference_match(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern, topic) {
        ([], []) => true,
        ([">"], [_, ..]) => true,
        (["*", p @ ..], [_, t @ ..]) => reference_match(p, t),
        ([p0, p @ ..], [t0, t @ ..]) => p0 == t0 && reference_match(p, t),
        _ => false,
    }
}

fn reference_matches(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    reference_match(&p, &t)
}

/// Checks `Pattern::parse(s)` against the grammar; the parsed pattern if
/// valid.
fn check_parse(s: &str) -> Option<Pattern> {
    let want = reference_valid(s);
    match Pattern::parse(s) {
        Ok(p) => {
            assert!(want, "parse accepted {s:?}, which the grammar refuses");
            assert_eq!(p.as_str(), s);
            assert_eq!(p.to_string(), s);
            Some(p)
        }
        Err(e) => {
            assert!(
                !want,
                "parse refused {s:?} ({e:?}), which the grammar allows"
            );
            assert!(!e.to_string().is_empty());
            let segs = || s.split('.');
            let fault = match e {
                PatternError::Empty => s.is_empty(),
                PatternError::TooLong => !s.is_empty() && s.len() > MAX_LEN,
                PatternError::EmptySegment => segs().any(str::is_empty),
                PatternError::BadWildcard => s.contains(['*', '>']),
                PatternError::BadChar => s
                    .bytes()
                    .any(|c| !name_byte(c) && !matches!(c, b'.' | b'*' | b'>')),
                _ => true,
            };
            assert!(fault, "{e:?} for {s:?}, which has no such fault");
            if s.is_empty() {
                assert_eq!(e, PatternError::Empty);
            } else if s.len() > MAX_LEN {
                assert_eq!(e, PatternError::TooLong, "{s:?}");
            }
            None
        }
    }
}

/// `pattern` with its wildcards filled in: `*` by `fill`, a final `>` by
/// `fill` repeated `tail` (>= 1) times.
fn instance(pattern: &str, fill: &str, tail: usize) -> String {
    pattern
        .split('.')
        .map(|seg| match seg {
            "*" => fill.to_string(),
            ">" => vec![fill; tail].join("."),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

pub fn pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (pat, topic) = text.split_once('\n').unwrap_or((&*text, ""));

    let whole = check_parse(pat);

    // The topic's own grammar, and matching (never a panic, valid or not).
    let topic_ok = topic::validate(topic).is_ok();
    assert_eq!(
        topic_ok,
        reference_topic(topic),
        "topic::validate({topic:?}) disagrees with the grammar"
    );
    if let Some(p) = &whole {
        let got = p.matches(topic);
        if topic_ok {
            assert_eq!(
                got,
                reference_matches(pat, topic),
                "{pat:?} matches {topic:?}: {got}"
            );
        }
        // Filled-in wildcards match; without wildcards, only itself.
        for (fill, tail) in [("x", 1), ("A-1", 3)] {
            let t = instance(pat, fill, tail);
            if t.len() <= MAX_LEN {
                assert!(topic::validate(&t).is_ok(), "{t:?}");
                assert!(p.matches(&t), "{pat:?} does not match its instance {t:?}");
            }
        }
        if !pat.contains(['*', '>']) {
            assert!(topic::validate(pat).is_ok());
            assert!(p.matches(pat));
            if topic_ok {
                assert_eq!(p.matches(topic), topic == pat);
            }
        }
        // One segment more or less than a pattern without `>` never matches.
        if !pat.ends_with('>') && pat.len() + 2 <= MAX_LEN {
            let longer = format!("{}.z", instance(pat, "x", 1));
            assert!(!p.matches(&longer), "{pat:?} matches {longer:?}");
        }
    }

    // As a list (a claim, a comma-separated flag).
    let items: Vec<&str> = pat.split(',').collect();
    let valid: Vec<Option<Pattern>> = items.iter().map(|s| check_parse(s)).collect();
    match parse_list(items.iter().copied()) {
        Ok(list) => {
            assert!(
                valid.iter().all(Option::is_some),
                "list of {items:?} accepted"
            );
            let strs: Vec<&str> = list.iter().map(Pattern::as_str).collect();
            assert_eq!(strs, items);
            let got = any_matches(&list, topic);
            if topic_ok {
                let want = items.iter().any(|p| reference_matches(p, topic));
                assert_eq!(got, want, "{items:?} vs {topic:?}");
            }
        }
        Err(msg) => {
            let first_bad = valid
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| panic!("list of valid {items:?} refused: {msg}"));
            // The item is quoted (at most 64 characters of it, then `...`).
            let item = items[first_bad];
            let cut: String = item.chars().take(64).collect();
            let more = if cut.len() < item.len() { "..." } else { "" };
            let shown = format!("{cut:?}{more}: ");
            assert!(
                msg.starts_with(&shown),
                "error {msg:?} does not name the first bad item {shown}"
            );
        }
    }
    assert!(!any_matches(&[], topic), "nothing listed, nothing allowed");
}
