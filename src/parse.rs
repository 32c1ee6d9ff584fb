//! Parsing: one log line to events (SPEC §1 and §2).
//!
//! A line is decoded in one pass into borrowed fields. Every field the SPEC validates is read
//! leniently (a wrong type is remembered, not an error), so that a bad event is an *invalid
//! event* with a reason while only broken JSON, a non-object or a non-array `events` make the
//! whole line *malformed*. Strings are `Cow`: they borrow from the line unless JSON escapes
//! (Go writes `\u0026` for `&`) force a copy.

use crate::timestamp::{parse_rfc3339, Timestamp};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// A field that must be a string: absent, a string, or some other JSON value.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum StrField<'a> {
    #[default]
    Missing,
    Str(Cow<'a, str>),
    NotString,
}

/// `target` as far as the SPEC reads it.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum TargetField<'a> {
    #[default]
    Missing,
    NotObject,
    Object {
        repository: StrField<'a>,
        has_tag: bool,
        has_digest: bool,
    },
}

/// `actor` as far as the SPEC reads it.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum ActorField<'a> {
    #[default]
    Missing,
    NotObject,
    Object {
        name: StrField<'a>,
        user_type: StrField<'a>,
    },
}

/// The fields of one event object, not yet validated.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RawEvent<'a> {
    pub id: StrField<'a>,
    pub timestamp: StrField<'a>,
    pub action: StrField<'a>,
    pub target: TargetField<'a>,
    pub actor: ActorField<'a>,
}

/// One element of an envelope's `events` array.
#[derive(Debug, Clone, PartialEq)]
pub enum Element<'a> {
    Event(RawEvent<'a>),
    NotObject,
}

/// What one line holds.
#[derive(Debug, PartialEq)]
pub enum ParsedLine<'a> {
    /// Only whitespace.
    Blank,
    /// Not a valid line; the reason goes to `rejects.jsonl`.
    Malformed(String),
    /// A line that is itself one event.
    Single(RawEvent<'a>),
    /// A webhook body: the elements of its `events` array.
    Envelope(Vec<Element<'a>>),
}

/// An event that passed SPEC §2.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent<'a> {
    pub id: Cow<'a, str>,
    pub timestamp: Timestamp,
    pub action: Cow<'a, str>,
    pub repository: Cow<'a, str>,
    pub has_tag: bool,
    pub has_digest: bool,
    pub actor_name: Option<Cow<'a, str>>,
    pub actor_user_type: Option<Cow<'a, str>>,
}

/// Why an event is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("event is not a JSON object")]
    NotObject,
    #[error("id is missing, not a string or empty")]
    Id,
    #[error("timestamp is missing or not a string")]
    TimestampType,
    #[error("{0}")]
    Timestamp(#[from] crate::timestamp::TimestampError),
    #[error("action is missing or not a string")]
    Action,
    #[error("target is missing or not an object")]
    Target,
    #[error("target.repository is missing, not a string or empty")]
    Repository,
}

impl<'a> RawEvent<'a> {
    /// Applies SPEC §2.
    pub fn validate(self) -> Result<ValidEvent<'a>, InvalidEvent> {
        let id = match self.id {
            StrField::Str(s) if !s.is_empty() => s,
            _ => return Err(InvalidEvent::Id),
        };
        let timestamp = match &self.timestamp {
            StrField::Str(s) => parse_rfc3339(s)?,
            _ => return Err(InvalidEvent::TimestampType),
        };
        let action = match self.action {
            StrField::Str(s) => s,
            _ => return Err(InvalidEvent::Action),
        };
        let (repository, has_tag, has_digest) = match self.target {
            TargetField::Object {
                repository: StrField::Str(r),
                has_tag,
                has_digest,
            } if !r.is_empty() => (r, has_tag, has_digest),
            TargetField::Object { .. } => return Err(InvalidEvent::Repository),
            _ => return Err(InvalidEvent::Target),
        };
        let (actor_name, actor_user_type) = match self.actor {
            ActorField::Object { name, user_type } => (into_str(name), into_str(user_type)),
            _ => (None, None),
        };
        Ok(ValidEvent {
            id,
            timestamp,
            action,
            repository,
            has_tag,
            has_digest,
            actor_name,
            actor_user_type,
        })
    }
}

fn into_str(f: StrField<'_>) -> Option<Cow<'_, str>> {
    match f {
        StrField::Str(s) => Some(s),
        _ => None,
    }
}

impl ValidEvent<'_> {
    /// `actor.name` when it is a string.
    pub fn name(&self) -> Option<&str> {
        self.actor_name.as_deref()
    }

    /// `actor.user_type` when it is a string.
    pub fn user_type(&self) -> Option<&str> {
        self.actor_user_type.as_deref()
    }
}

/// True for a line of nothing but whitespace.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Parses one line (without its `\n`; a trailing `\r` is allowed and ignored as whitespace).
pub fn parse_line(line: &[u8]) -> ParsedLine<'_> {
    if is_blank(line) {
        return ParsedLine::Blank;
    }
    // One UTF-8 check of the whole line (fast on ASCII) lets serde_json borrow every string
    // without checking each again; invalid UTF-8 anywhere makes the line malformed either way.
    let Ok(text) = std::str::from_utf8(line) else {
        return ParsedLine::Malformed("line is not valid UTF-8".into());
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = match TopLevel::deserialize(&mut de).and_then(|t| de.end().map(|()| t)) {
        Ok(t) => t,
        Err(e) => return ParsedLine::Malformed(format!("invalid JSON: {e}")),
    };
    match parsed {
        TopLevel::NotObject => ParsedLine::Malformed("line is not a JSON object".into()),
        TopLevel::EventsNotArray => {
            ParsedLine::Malformed("envelope's events is not an array".into())
        }
        TopLevel::Envelope(elements) => ParsedLine::Envelope(elements),
        TopLevel::Single(event) => ParsedLine::Single(event),
    }
}

// ---- serde plumbing: hand-written visitors so that no type mismatch fails the line ----

enum TopLevel<'a> {
    NotObject,
    EventsNotArray,
    Envelope(Vec<Element<'a>>),
    Single(RawEvent<'a>),
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum EventKey {
    Id,
    Timestamp,
    Action,
    Target,
    Actor,
    Events,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum TargetKey {
    Repository,
    Tag,
    Digest,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ActorKey {
    Name,
    UserType,
    #[serde(other)]
    Other,
}

/// Drains whatever follows so the deserializer stays in step; used for every wrong-type branch.
macro_rules! wrong_type_visits {
    ($out:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($out)
        }
    };
}

macro_rules! wrong_type_strings {
    ($out:expr) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($out)
        }
    };
}

macro_rules! wrong_type_maps {
    ($out:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($out)
        }
    };
}

impl<'de> Deserialize<'de> for StrField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrField::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrField::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(StrField::Str(Cow::Owned(v)))
            }
            wrong_type_visits!(StrField::NotString);
            wrong_type_maps!(StrField::NotString);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for TargetField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TargetField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut repository = StrField::Missing;
                let (mut has_tag, mut has_digest) = (false, false);
                while let Some(key) = map.next_key::<TargetKey>()? {
                    match key {
                        TargetKey::Repository => repository = map.next_value()?,
                        TargetKey::Tag => {
                            map.next_value::<IgnoredAny>()?;
                            has_tag = true;
                        }
                        TargetKey::Digest => {
                            map.next_value::<IgnoredAny>()?;
                            has_digest = true;
                        }
                        TargetKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(TargetField::Object {
                    repository,
                    has_tag,
                    has_digest,
                })
            }
            wrong_type_visits!(TargetField::NotObject);
            wrong_type_strings!(TargetField::NotObject);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ActorField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ActorField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut name, mut user_type) = (StrField::Missing, StrField::Missing);
                while let Some(key) = map.next_key::<ActorKey>()? {
                    match key {
                        ActorKey::Name => name = map.next_value()?,
                        ActorKey::UserType => user_type = map.next_value()?,
                        ActorKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(ActorField::Object { name, user_type })
            }
            wrong_type_visits!(ActorField::NotObject);
            wrong_type_strings!(ActorField::NotObject);
        }
        d.deserialize_any(V)
    }
}

/// Reads the fields of an event object. At the top level an `events` key makes it an envelope;
/// inside an envelope `events` is just another unknown key.
fn visit_event_map<'de, A: MapAccess<'de>>(
    mut map: A,
    top_level: bool,
) -> Result<(RawEvent<'de>, Option<EventsArray<'de>>), A::Error> {
    let mut event = RawEvent::default();
    let mut events = None;
    while let Some(key) = map.next_key::<EventKey>()? {
        match key {
            EventKey::Id => event.id = map.next_value()?,
            EventKey::Timestamp => event.timestamp = map.next_value()?,
            EventKey::Action => event.action = map.next_value()?,
            EventKey::Target => event.target = map.next_value()?,
            EventKey::Actor => event.actor = map.next_value()?,
            EventKey::Events if top_level => events = Some(map.next_value()?),
            EventKey::Events | EventKey::Other => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok((event, events))
}

enum EventsArray<'a> {
    Array(Vec<Element<'a>>),
    NotArray,
}

impl<'de> Deserialize<'de> for EventsArray<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventsArray<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(e) = seq.next_element::<Element>()? {
                    out.push(e);
                }
                Ok(EventsArray::Array(out))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(EventsArray::NotArray)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(EventsArray::NotArray)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(EventsArray::NotArray)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(EventsArray::NotArray)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(EventsArray::NotArray)
            }
            wrong_type_strings!(EventsArray::NotArray);
            wrong_type_maps!(EventsArray::NotArray);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Element<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(Element::Event(visit_event_map(map, false)?.0))
            }
            wrong_type_visits!(Element::NotObject);
            wrong_type_strings!(Element::NotObject);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(match visit_event_map(map, true)? {
                    (_, Some(EventsArray::Array(elements))) => TopLevel::Envelope(elements),
                    (_, Some(EventsArray::NotArray)) => TopLevel::EventsNotArray,
                    (event, None) => TopLevel::Single(event),
                })
            }
            wrong_type_visits!(TopLevel::NotObject);
            wrong_type_strings!(TopLevel::NotObject);
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_EVENT: &str = r#"{"id":"a582a0f3-e620-43e6-8e98-ff850fc9d984","timestamp":"2023-01-25T14:45:54.17327+11:00","action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:af06","length":528,"repository":"root/test","url":"http://registry.test:5000/v2/root/test/manifests/sha256:af06","tag":"more-auth"},"request":{"id":"8ef8","addr":"172.16.123.1:56969","host":"registry.test:5000","method":"PUT","useragent":"docker/20.10.18"},"actor":{"name":"root","user_type":"personal_access_token"},"source":{"addr":"Jaimes-MBP:5000","instanceID":"45681f21"}}"#;

    fn single(line: &str) -> RawEvent<'_> {
        match parse_line(line.as_bytes()) {
            ParsedLine::Single(e) => e,
            other => panic!("not a single event: {other:?}"),
        }
    }

    #[test]
    fn seed_event_is_valid() {
        let e = single(SEED_EVENT).validate().unwrap();
        assert_eq!(e.id, "a582a0f3-e620-43e6-8e98-ff850fc9d984");
        assert_eq!(e.action, "push");
        assert_eq!(e.repository, "root/test");
        assert!(e.has_tag && e.has_digest);
        assert_eq!(e.name(), Some("root"));
        assert_eq!(e.user_type(), Some("personal_access_token"));
        assert_eq!(e.timestamp.to_rfc3339(), "2023-01-25T03:45:54.173270Z");
    }

    #[test]
    fn envelope_keeps_element_order_and_bad_elements() {
        let line = format!(r#"{{"events":[{SEED_EVENT}, 7, {{"id":""}}]}}"#);
        let ParsedLine::Envelope(els) = parse_line(line.as_bytes()) else {
            panic!("not an envelope")
        };
        assert_eq!(els.len(), 3);
        assert!(matches!(&els[0], Element::Event(e) if e.clone().validate().is_ok()));
        assert_eq!(els[1], Element::NotObject);
        assert!(
            matches!(&els[2], Element::Event(e) if e.clone().validate() == Err(InvalidEvent::Id))
        );
    }

    #[test]
    fn empty_envelope_has_no_events() {
        assert_eq!(
            parse_line(br#"{"events":[]}"#),
            ParsedLine::Envelope(vec![])
        );
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let e = single(r#"{"id":"a\u0026b","timestamp":"2023-01-25T14:45:54Z","action":"push","target":{"repository":"g/r\u00e9"},"actor":{"name":"J\u00c9","user_type":"build"}}"#)
            .validate()
            .unwrap();
        assert_eq!(e.id, "a&b");
        assert_eq!(e.repository, "g/ré");
        assert_eq!(e.name(), Some("JÉ"));
    }

    #[test]
    fn malformed_lines() {
        for (line, why) in [
            ("{", "invalid JSON"),
            ("[1,2]", "not a JSON object"),
            ("\"text\"", "not a JSON object"),
            ("42", "not a JSON object"),
            ("null", "not a JSON object"),
            (r#"{"events":{}}"#, "not an array"),
            (r#"{"events":null}"#, "not an array"),
            (r#"{"events":"x"}"#, "not an array"),
            ("{} {}", "invalid JSON"),
            ("{\"id\":\"\u{0}\"}", "invalid JSON"),
        ] {
            match parse_line(line.as_bytes()) {
                ParsedLine::Malformed(reason) => assert!(reason.contains(why), "{line}: {reason}"),
                other => panic!("{line} parsed as {other:?}"),
            }
        }
        assert!(matches!(
            parse_line(b"{\"id\":\"\xff\"}"),
            ParsedLine::Malformed(_)
        ));
    }

    #[test]
    fn blank_lines() {
        assert_eq!(parse_line(b""), ParsedLine::Blank);
        assert_eq!(parse_line(b" \t\r"), ParsedLine::Blank);
    }

    #[test]
    fn invalid_events_name_the_field() {
        let base = |patch: &str| {
            format!(
                r#"{{"id":"x","timestamp":"2023-01-25T14:45:54Z","action":"push","target":{{"repository":"r"}}{patch}}}"#
            )
        };
        let cases = [
            (
                r#"{"timestamp":"2023-01-25T14:45:54Z","action":"push","target":{"repository":"r"}}"#,
                InvalidEvent::Id,
            ),
            (&base(r#","id":5"#), InvalidEvent::Id),
            (&base(r#","timestamp":5"#), InvalidEvent::TimestampType),
            (
                &base(r#","timestamp":"yesterday""#),
                InvalidEvent::Timestamp(crate::timestamp::TimestampError::Shape),
            ),
            (&base(r#","action":null"#), InvalidEvent::Action),
            (&base(r#","target":[1]"#), InvalidEvent::Target),
            (
                &base(r#","target":{"repository":""}"#),
                InvalidEvent::Repository,
            ),
            (
                &base(r#","target":{"repository":{"a":1}}"#),
                InvalidEvent::Repository,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(single(line).validate(), Err(want), "{line}");
        }
    }

    #[test]
    fn tag_key_counts_even_when_null_and_actor_may_be_odd() {
        let e = single(r#"{"id":"x","timestamp":"2023-01-25T14:45:54Z","action":"delete","target":{"repository":"r","tag":null},"actor":"root","events2":1}"#)
            .validate()
            .unwrap();
        assert!(e.has_tag && !e.has_digest);
        assert_eq!(e.name(), None);
        let e = single(r#"{"id":"x","timestamp":"2023-01-25T14:45:54Z","action":"delete","target":{"repository":"r"},"actor":{"name":7,"user_type":"build"}}"#)
            .validate()
            .unwrap();
        assert_eq!(e.name(), None);
        assert_eq!(e.user_type(), Some("build"));
    }
}
