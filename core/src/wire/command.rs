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

/// Nesting (arrays and objects) a published `data` may have by default
/// (`--max-json-depth`): deeper values are refused, so that no
/// subscriber's recursive JSON parser is the one to overflow its stack.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Longest `id` (its raw JSON text, quotes included) a command may carry.
/// Every reply echoes the `id`, and a reply must fit the room a connection
/// has for replies; a longer `id` is refused with `bad_request` ("id too
/// long"), not echoed, instead of a reply that could not be sent.
pub const MAX_ID_LEN: usize = 256;

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
    /// `{"op":"connect","token":T}`: present credentials (the first
    /// command under `--auth jwt`). `None`: no `token` string; the engine
    /// refuses that as a bad connect.
    Connect {
        token: Option<String>,
        id: Option<Id>,
    },
    /// `{"op":"refresh","token":T}`: replace the token of a live
    /// connection (same `sub`).
    Refresh {
        token: Option<String>,
        id: Option<Id>,
    },
}

impl Command {
    /// The command's `id`, if it had one.
    pub fn id(&self) -> Option<&Id> {
        match self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Publish { id, .. }
            | Command::Connect { id, .. }
            | Command::Refresh { id, .. } => id.as_ref(),
        }
    }
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
    /// Too many commands or publishes per second; slow down.
    RateLimited,
    /// The cluster backend (Redis) cannot be reached: nothing was done;
    /// retry later.
    Unavailable,
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
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
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
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one command from a text frame's payload (already valid UTF-8),
/// with the default `data` depth limit.
pub fn parse(frame: &Bytes) -> Result<Command, CommandError> {
    parse_limited(frame, DEFAULT_MAX_JSON_DEPTH)
}

/// [`parse`], refusing a publish whose `data` nests deeper than
/// `max_depth` ([`json_depth`]) with `bad_json`.
pub fn parse_limited(frame: &Bytes, max_depth: usize) -> Result<Command, CommandError> {
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
            if text.len() > MAX_ID_LEN {
                return Err(fail(ErrorCode::BadRequest, &id_too_long(), None));
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
            if json_depth(data.get().as_bytes()) > max_depth {
                return Err(fail(ErrorCode::BadJson, &too_deep(max_depth), id));
            }
            Ok(Command::Publish {
                topic,
                data: frame.slice_ref(data.get().as_bytes()),
                id,
            })
        }
        "connect" | "refresh" => {
            let token = fields
                .token
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
            Ok(if op == "connect" {
                Command::Connect { token, id }
            } else {
                Command::Refresh { token, id }
            })
        }
        other => Err(fail(
            ErrorCode::UnknownOp,
            &format!(
                "unknown op {:?} (expected subscribe, unsubscribe, publish, connect or refresh)",
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

fn id_too_long() -> String {
    format!("id too long (at most {MAX_ID_LEN} bytes)")
}

/// The message refusing a `data` nested deeper than `max_depth`.
pub fn too_deep(max_depth: usize) -> String {
    format!("data nested deeper than {max_depth} levels (the broker's --max-json-depth)")
}

/// Validates an HTTP publish body as one JSON value (any type).
pub fn validate_data(body: &[u8]) -> bool {
    serde_json::from_slice::<&RawValue>(body).is_ok()
}

/// How deeply a JSON text nests arrays and objects: 0 for a scalar, 1 for
/// `[1]` or `{}`, 2 for `[[1]]`. One pass over the bytes, no recursion and
/// no allocation (serde_json validates nesting of any depth without
/// recursing, so the depth is counted here); brackets inside strings do
/// not count. Meant for text already validated as JSON; on anything else
/// it still ends and returns some number.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
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
    fn json_depth_counts_nesting_outside_strings() {
        for (json, depth) in [
            ("1", 0),
            ("\"[[[{\"", 0),
            ("[]", 1),
            ("{}", 1),
            ("[1,[2,[3]],{\"a\":[4]}]", 3),
            ("{\"a\":\"]]]\\\"[[[[\",\"b\":[{}]}", 3),
            ("  [ [ ] , [ [ ] ] ]  ", 3),
        ] {
            assert_eq!(json_depth(json.as_bytes()), depth, "{json}");
        }
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(json_depth(deep.as_bytes()), 100_000);
    }

    #[test]
    fn data_deeper_than_the_limit_is_refused_with_bad_json() {
        let nested = |n: usize| {
            format!(
                r#"{{"op":"publish","topic":"t","data":{}1{},"id":3}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(p(&nested(DEFAULT_MAX_JSON_DEPTH)).is_ok());
        let e = p(&nested(DEFAULT_MAX_JSON_DEPTH + 1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        assert!(e.message.contains("64"), "{}", e.message);
        assert_eq!(e.id, Some(Id(Bytes::from_static(b"3"))));
        // Far past serde_json's own recursion limit: no stack overflow, an
        // error.
        let e = p(&nested(200_000)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        let frame = Bytes::from(nested(3));
        assert!(parse_limited(&frame, 3).is_ok());
        assert_eq!(
            parse_limited(&frame, 2).unwrap_err().code,
            ErrorCode::BadJson
        );
        // The command object itself does not count: data is measured.
        let sub = Bytes::from_static(br#"{"op":"subscribe","topic":"t","x":[[[1]]]}"#);
        assert!(parse_limited(&sub, 0).is_ok());
    }

    #[test]
    fn overlong_ids_are_refused_not_echoed() {
        let id = format!("\"{}\"", "x".repeat(MAX_ID_LEN - 2));
        let ok = format!(r#"{{"op":"publish","topic":"t","data":1,"id":{id}}}"#);
        assert!(p(&ok).is_ok());
        let long = format!("\"{}\"", "x".repeat(MAX_ID_LEN - 1));
        let e = p(&format!(r#"{{"op":"subscribe","topic":"t","id":{long}}}"#)).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
        assert!(e.message.contains("id too long"), "{}", e.message);
        let digits = "9".repeat(MAX_ID_LEN + 1);
        let e = p(&format!(
            r#"{{"op":"subscribe","topic":"t","id":{digits}}}"#
        ))
        .unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
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
