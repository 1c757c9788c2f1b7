//! Client commands on `GET /ws` (docs/protocol.md), sans I/O.
//!
//! One JSON object per text frame. Parsing borrows from the frame: `data` is
//! kept as a slice of the received `Bytes` (validated as JSON, never turned
//! into a tree and re-serialised), and `id` as its raw JSON text so the
//! reply echoes it exactly. Every malformed command maps to an error code;
//! the connection stays open.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::topic;

/// A command's `id`: a JSON number or string, kept as its raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub Bytes);

/// A well-formed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe {
        topic: String,
        since: Option<u64>,
        id: Option<Id>,
    },
    Unsubscribe {
        topic: String,
        id: Option<Id>,
    },
    Publish {
        topic: String,
        /// The raw JSON value, a slice of the frame it arrived in.
        data: Bytes,
        id: Option<Id>,
    },
}

/// The `code` of an `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    BadJson,
    /// A required field is missing or has the wrong type.
    BadRequest,
    /// `op` is not one of the known commands.
    UnknownOp,
    /// The topic name breaks the topic rules.
    BadTopic,
    /// `since` is older than the retained history (sent before replay).
    HistoryGap,
    /// The message is over the broker's size limit.
    TooBig,
    /// A limit was reached (subscriptions on this connection, topics on
    /// the broker).
    Limit,
    /// The broker is too busy to take this now; retry later.
    Overloaded,
    /// No valid credentials for this.
    Unauthorized,
    /// The credentials do not allow this.
    Forbidden,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::HistoryGap => "history_gap",
            ErrorCode::TooBig => "too_big",
            ErrorCode::Limit => "limit",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// A refused command: what goes into the `error` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
    /// The command's `id`, when it could be read.
    pub id: Option<Id>,
}

/// The fields we know, as raw JSON. `None` only when the field is absent:
/// plain `Option` would also map an explicit `null` to `None`, and
/// `"data": null` is a valid message.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one command from a text frame's payload (already valid UTF-8).
pub fn parse(frame: &Bytes) -> Result<Command, CommandError> {
    let fail = |code, message: &str, id: Option<Id>| CommandError {
        code,
        message: message.to_string(),
        id,
    };
    let is_object = frame.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = if is_object {
        serde_json::from_slice::<Fields>(frame).map_err(|e| format!("invalid JSON: {e}"))
    } else if validate_data(frame) {
        Err("a command must be a JSON object".to_string())
    } else {
        Err("invalid JSON".to_string())
    };
    let fields = parsed.map_err(|message| CommandError {
        code: ErrorCode::BadJson,
        message,
        id: None,
    })?;
    let id = match fields.id {
        None => None,
        Some(raw) => {
            let text = raw.get();
            let is_string = text.starts_with('"');
            // Any JSON number, even one no machine type holds (1e400): the
            // raw value is already valid JSON, so its first byte decides.
            let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
            if !(is_string || is_number) {
                return Err(fail(
                    ErrorCode::BadRequest,
                    "id must be a number or a string",
                    None,
                ));
            }
            Some(Id(frame.slice_ref(raw.get().as_bytes())))
        }
    };
    let string_field = |raw: Option<&RawValue>, name: &str| -> Result<String, CommandError> {
        let raw = raw.ok_or_else(|| {
            fail(
                ErrorCode::BadRequest,
                &format!("missing field \"{name}\""),
                id.clone(),
            )
        })?;
        serde_json::from_str::<String>(raw.get()).map_err(|_| {
            fail(
                ErrorCode::BadRequest,
                &format!("\"{name}\" must be a string"),
                id.clone(),
            )
        })
    };
    let op = string_field(fields.op, "op")?;
    let topic_of = |raw| -> Result<String, CommandError> {
        let t = string_field(raw, "topic")?;
        topic::validate(&t).map_err(|e| fail(ErrorCode::BadTopic, e.message(), id.clone()))?;
        Ok(t)
    };
    match op.as_str() {
        "subscribe" => {
            let topic = topic_of(fields.topic)?;
            let since = match fields.since {
                None => None,
                Some(raw) if raw.get() == "null" => None,
                Some(raw) => Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
                    fail(
                        ErrorCode::BadRequest,
                        "\"since\" must be a non-negative integer",
                        id.clone(),
                    )
                })?),
            };
            Ok(Command::Subscribe { topic, since, id })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            topic: topic_of(fields.topic)?,
            id,
        }),
        "publish" => {
            let topic = topic_of(fields.topic)?;
            let data = fields
                .data
                .ok_or_else(|| fail(ErrorCode::BadRequest, "missing field \"data\"", id.clone()))?;
            Ok(Command::Publish {
                topic,
                data: frame.slice_ref(data.get().as_bytes()),
                id,
            })
        }
        other => Err(fail(
            ErrorCode::UnknownOp,
            &format!(
                "unknown op {:?} (expected subscribe, unsubscribe or publish)",
                truncate(other, 64)
            ),
            id,
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Validates an HTTP publish body as one JSON value (any type).
pub fn validate_data(body: &[u8]) -> bool {
    serde_json::from_slice::<&RawValue>(body).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        parse(&Bytes::copy_from_slice(s.as_bytes()))
    }

    fn code(s: &str) -> ErrorCode {
        p(s).unwrap_err().code
    }

    #[test]
    fn the_contract_examples_parse() {
        assert_eq!(
            p(r#"{"op":"subscribe","topic":"ticker.AAPL"}"#),
            Ok(Command::Subscribe {
                topic: "ticker.AAPL".into(),
                since: None,
                id: None
            })
        );
        assert_eq!(
            p(r#"{"op":"subscribe","topic":"ticker.AAPL","since":41,"id":7}"#),
            Ok(Command::Subscribe {
                topic: "ticker.AAPL".into(),
                since: Some(41),
                id: Some(Id(Bytes::from_static(b"7")))
            })
        );
        assert_eq!(
            p(r#"{"op":"unsubscribe","topic":"ticker.AAPL","id":"u-1"}"#),
            Ok(Command::Unsubscribe {
                topic: "ticker.AAPL".into(),
                id: Some(Id(Bytes::from_static(b"\"u-1\"")))
            })
        );
    }

    #[test]
    fn publish_data_is_the_exact_bytes_sent() {
        let frame = Bytes::from_static(
            br#"{ "data" : {"price": 187.310, "x":[1,2]} , "op":"publish","topic":"t"}"#,
        );
        let Ok(Command::Publish { data, .. }) = parse(&frame) else {
            panic!()
        };
        assert_eq!(&data[..], br#"{"price": 187.310, "x":[1,2]}"#);
        // Zero-copy: the slice points into the frame.
        assert!(
            data.as_ptr() >= frame.as_ptr()
                && data.as_ptr() < frame.as_ptr().wrapping_add(frame.len())
        );
        for scalar in ["1", "\"s\"", "null", "true", "[]"] {
            let cmd = p(&format!(
                r#"{{"op":"publish","topic":"t","data":{scalar}}}"#
            ))
            .unwrap();
            assert!(matches!(cmd, Command::Publish { data, .. } if &data[..] == scalar.as_bytes()));
        }
    }

    #[test]
    fn every_malformed_command_has_a_code() {
        assert_eq!(code("not json"), ErrorCode::BadJson);
        assert_eq!(code("{\"op\":"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code("42"), ErrorCode::BadJson);
        assert_eq!(code("{}"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"dance"}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"op":"subscribe"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"op":"subscribe","topic":7}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topic":"a b"}"#),
            ErrorCode::BadTopic
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topic":""}"#),
            ErrorCode::BadTopic
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topic":"t","since":-1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topic":"t","since":"4"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"publish","topic":"t"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"publish","topic":"t","id":{}}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn ids_are_numbers_or_strings_of_any_size() {
        for bad in ["{}", "[1]", "null", "true"] {
            let cmd = format!(r#"{{"op":"publish","topic":"t","data":1,"id":{bad}}}"#);
            assert_eq!(code(&cmd), ErrorCode::BadRequest, "{bad}");
        }
        for good in ["1e400", "-0.5", "\"x\"", "18446744073709551616"] {
            let cmd = format!(r#"{{"op":"publish","topic":"t","data":1,"id":{good}}}"#);
            assert!(p(&cmd).is_ok(), "{good}");
        }
    }

    #[test]
    fn errors_carry_the_id_when_readable() {
        let e = p(r#"{"op":"nope","id":"abc"}"#).unwrap_err();
        assert_eq!(e.id, Some(Id(Bytes::from_static(b"\"abc\""))));
        let e = p(r#"{"op":"subscribe","topic":"bad topic","id":12}"#).unwrap_err();
        assert_eq!(e.id, Some(Id(Bytes::from_static(b"12"))));
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        assert!(p(r#"{"op":"subscribe","topic":"t","future":{"x":1}}"#).is_ok());
    }

    #[test]
    fn http_bodies() {
        assert!(validate_data(b" {\"a\":1} "));
        assert!(validate_data(b"3"));
        assert!(!validate_data(b"{"));
        assert!(!validate_data(b"1 2"));
        assert!(!validate_data(b""));
    }
}
