//! A line parser built on serde_json, for tests only: the oracle the scanner ([`super::scan`])
//! is held to, since serde_json's idea of valid JSON is the reference.

use super::{ActorField, Element, ParsedLine, RawEvent, StrField, TargetField};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Parses a line as the serde_json-based parser did; the reason of a malformed line is serde_json's.
pub fn parse_line_serde(line: &[u8]) -> ParsedLine<'_> {
    if super::is_blank(line) {
        return ParsedLine::Blank;
    }
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
                // The dataset's fields are not read here (see the agreement test).
                Ok(TargetField::Object {
                    repository,
                    has_tag,
                    has_digest,
                    tag: Default::default(),
                    digest: Default::default(),
                    media_type: Default::default(),
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
                // `user` is not read here (see the agreement test).
                Ok(ActorField::Object {
                    name,
                    user_type,
                    user: Default::default(),
                })
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
