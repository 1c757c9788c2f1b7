//! Topic names (../shared/protocol.md, "Topics").
//!
//! `[A-Za-z0-9_.:-]`, 1 to 255 bytes, dot-separated non-empty segments.
//! Because the alphabet needs no JSON escaping, a validated topic can be
//! copied into encoded messages as is.

/// Why a topic name was refused; the text goes into the `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    BadChar,
    EmptySegment,
}

impl TopicError {
    pub fn message(self) -> &'static str {
        match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 255 bytes",
            TopicError::BadChar => "topic may only contain A-Z a-z 0-9 _ . : -",
            TopicError::EmptySegment => "topic has an empty dot-separated segment",
        }
    }
}

pub const MAX_TOPIC_LEN: usize = 255;

pub fn validate(topic: &str) -> Result<(), TopicError> {
    let b = topic.as_bytes();
    if b.is_empty() {
        return Err(TopicError::Empty);
    }
    if b.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'))
    {
        return Err(TopicError::BadChar);
    }
    if topic.split('.').any(str::is_empty) {
        return Err(TopicError::EmptySegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        for ok in [
            "ticker.AAPL",
            "a",
            "train:ICE-123.seats",
            "x_y",
            &"a".repeat(255),
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(validate(""), Err(TopicError::Empty));
        assert_eq!(validate(&"a".repeat(256)), Err(TopicError::TooLong));
        for bad in ["a b", "a/b", "é", "a\"b", "a\\b", "*", "a\nb"] {
            assert_eq!(validate(bad), Err(TopicError::BadChar), "{bad}");
        }
        for bad in [".a", "a.", "a..b", "."] {
            assert_eq!(validate(bad), Err(TopicError::EmptySegment), "{bad}");
        }
    }
}
