//! Parsing: one log line to events (SPEC §1 and §2).
//!
//! A line is decoded in one pass into borrowed fields (by [`scan`]). Every field the SPEC
//! validates is read leniently (a wrong type is remembered, not an error), so that a bad event
//! is an *invalid event* with a reason while only broken JSON, a non-object or a non-array
//! `events` make the whole line *malformed*. Strings are `Cow`: they borrow from the line
//! unless JSON escapes (Go writes `\u0026` for `&`) force a copy.

pub mod chunk;
pub mod jwt;
mod scan;
#[cfg(test)]
mod serde_oracle;

use crate::timestamp::{parse_rfc3339, Timestamp};
use scan::{BytesError, TopLevel};
use std::borrow::Cow;

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
        /// Read for the events dataset only (`run --events`).
        tag: JsonText<'a>,
        digest: JsonText<'a>,
        media_type: JsonText<'a>,
    },
}

/// A string value as it stands in the line, its escapes not decoded; `None` when the key is
/// absent or its value is not a string. Fields only the events dataset shows are kept so: the
/// scanner passes over them as over any string it skips (a lone surrogate escape is allowed),
/// and they are decoded, leniently, only when a row is written.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct JsonText<'a>(pub Option<&'a str>);

impl<'a> JsonText<'a> {
    /// The decoded text; an escape that is not a Unicode scalar (a lone surrogate) becomes
    /// U+FFFD.
    pub fn decode(self) -> Option<Cow<'a, str>> {
        let raw = self.0?;
        if !raw.contains('\\') {
            return Some(Cow::Borrowed(raw));
        }
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        let hex4 = |chars: &mut std::str::Chars<'_>| -> Option<u32> {
            let digits: String = chars.by_ref().take(4).collect();
            (digits.len() == 4).then(|| u32::from_str_radix(&digits, 16).ok())?
        };
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let decoded = match chars.next() {
                Some('b') => '\u{8}',
                Some('f') => '\u{c}',
                Some('n') => '\n',
                Some('r') => '\r',
                Some('t') => '\t',
                Some('u') => {
                    let high = hex4(&mut chars).unwrap_or(0xFFFD);
                    if (0xD800..0xDC00).contains(&high) && chars.as_str().starts_with("\\u") {
                        let mut ahead = chars.clone();
                        ahead.nth(1);
                        match hex4(&mut ahead) {
                            Some(low) if (0xDC00..0xE000).contains(&low) => {
                                chars = ahead;
                                let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                                char::from_u32(c).unwrap_or('\u{FFFD}')
                            }
                            _ => '\u{FFFD}',
                        }
                    } else {
                        char::from_u32(high).unwrap_or('\u{FFFD}')
                    }
                }
                Some(other) => other,
                None => break,
            };
            out.push(decoded);
        }
        Some(Cow::Owned(out))
    }
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
        /// The JWT newer registries forward, read for the Redis export only.
        user: JsonText<'a>,
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
// Elements are moved into their line's vector once each; boxing the event would cost an
// allocation per event on the hot path instead.
#[allow(clippy::large_enum_variant)]
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
    /// A webhook body with too many elements to hold at once: walk them with
    /// [`LongEnvelope::each`].
    LongEnvelope(LongEnvelope<'a>),
}

/// An envelope of more elements than one line's parse keeps (see [`scan::INLINE_ELEMENTS`]).
#[derive(Debug, PartialEq)]
pub struct LongEnvelope<'a> {
    text: &'a str,
    array_at: usize,
}

impl<'a> LongEnvelope<'a> {
    /// Calls `each` with every element, in array order.
    pub fn each(&self, each: impl FnMut(Element<'a>)) {
        scan::each_element(self.text, self.array_at, each);
    }
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
    pub tag: JsonText<'a>,
    pub digest: JsonText<'a>,
    pub media_type: JsonText<'a>,
    pub actor_name: Option<Cow<'a, str>>,
    pub actor_user_type: Option<Cow<'a, str>>,
    /// `actor.user`, a JWT, as written.
    pub actor_user: JsonText<'a>,
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
    pub fn validate(mut self) -> Result<ValidEvent<'a>, InvalidEvent> {
        self.take_valid()
    }

    /// [`RawEvent::validate`] in place: the fields an event keeps are taken out of `self`,
    /// which is left holding what remains. The hot path validates the event the scanner wrote
    /// into its caller's `RawEvent`: moving the 150-byte struct into each call and out again
    /// was two copies of it per event.
    pub fn take_valid(&mut self) -> Result<ValidEvent<'a>, InvalidEvent> {
        let id = match std::mem::take(&mut self.id) {
            StrField::Str(s) if !s.is_empty() => s,
            _ => return Err(InvalidEvent::Id),
        };
        let timestamp = match &self.timestamp {
            StrField::Str(s) => parse_rfc3339(s)?,
            _ => return Err(InvalidEvent::TimestampType),
        };
        let action = match std::mem::take(&mut self.action) {
            StrField::Str(s) => s,
            _ => return Err(InvalidEvent::Action),
        };
        let (repository, has_tag, has_digest, tag, digest, media_type) =
            match std::mem::take(&mut self.target) {
                TargetField::Object {
                    repository: StrField::Str(r),
                    has_tag,
                    has_digest,
                    tag,
                    digest,
                    media_type,
                } if !r.is_empty() => (r, has_tag, has_digest, tag, digest, media_type),
                TargetField::Object { .. } => return Err(InvalidEvent::Repository),
                _ => return Err(InvalidEvent::Target),
            };
        let (actor_name, actor_user_type, actor_user) = match std::mem::take(&mut self.actor) {
            ActorField::Object {
                name,
                user_type,
                user,
            } => (into_str(name), into_str(user_type), user),
            _ => (None, None, JsonText(None)),
        };
        Ok(ValidEvent {
            id,
            timestamp,
            action,
            repository,
            has_tag,
            has_digest,
            tag,
            digest,
            media_type,
            actor_name,
            actor_user_type,
            actor_user,
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
///
/// The line must be UTF-8, so that the scanner can borrow every string; only a line with a
/// byte above 0x7f is checked (with simdutf8, 32 bytes a step: std's check was 5% of a run's
/// instructions), the scanner's first pass having found whether there is one.
pub fn parse_line(line: &[u8]) -> ParsedLine<'_> {
    let mut single = RawEvent::default();
    parse_line_into(line, &mut single).unwrap_or(ParsedLine::Single(single))
}

/// [`parse_line`] that leaves a single event in `single`, which must be empty (default):
/// `None` then says it is there. The hot path validates it in place
/// ([`RawEvent::take_valid`]) rather than moving it through [`ParsedLine::Single`].
#[inline(always)]
pub fn parse_line_into<'a>(line: &'a [u8], single: &mut RawEvent<'a>) -> Option<ParsedLine<'a>> {
    parse_into_with(line, single, |column| format!("column {column}"))
}

/// [`parse_line_into`] for a value that may span lines, the first of them line `first_line` of
/// its input: a syntax error is placed by line and column.
pub fn parse_value_into<'a>(
    value: &'a [u8],
    first_line: u64,
    single: &mut RawEvent<'a>,
) -> Option<ParsedLine<'a>> {
    parse_into_with(value, single, |column| {
        let before = &value[..(column - 1).min(value.len())];
        let line_start = memchr::memrchr(b'\n', before).map_or(0, |p| p + 1);
        let line = first_line + memchr::memchr_iter(b'\n', before).count() as u64;
        format!("line {line}, column {}", before.len() - line_start + 1)
    })
}

#[inline(always)]
fn parse_into_with<'a>(
    line: &'a [u8],
    single: &mut RawEvent<'a>,
    at: impl FnOnce(usize) -> String,
) -> Option<ParsedLine<'a>> {
    if is_blank(line) {
        return Some(ParsedLine::Blank);
    }
    Some(match scan::scan_bytes(line, single) {
        Err(BytesError::NotUtf8) => ParsedLine::Malformed("line is not valid UTF-8".into()),
        Err(BytesError::Syntax(e)) => {
            ParsedLine::Malformed(format!("invalid JSON: {} at {}", e.what, at(e.column)))
        }
        Ok((_, TopLevel::NotObject)) => ParsedLine::Malformed("line is not a JSON object".into()),
        Ok((_, TopLevel::EventsNotArray)) => {
            ParsedLine::Malformed("envelope's events is not an array".into())
        }
        Ok((_, TopLevel::Envelope(elements))) => ParsedLine::Envelope(elements),
        Ok((text, TopLevel::LongEnvelope { array_at })) => {
            ParsedLine::LongEnvelope(LongEnvelope { text, array_at })
        }
        Ok((_, TopLevel::Single)) => return None,
    })
}

/// Where the JSON value that starts at `text[start]` (not whitespace) ends, found without
/// parsing it: an object's braces (an array's brackets) are counted outside strings, and a
/// string ends at a quote no backslash escapes. In valid JSON the other kind of bracket nests
/// inside, so only the value's own kind needs counting, and memchr jumps from one to the next.
/// `None` when the text ends first: the value is cut short. A value that is not valid JSON
/// still ends somewhere; its parse says what is wrong with it.
pub fn value_end(text: &[u8], start: usize) -> Option<usize> {
    let (open, close) = match *text.get(start)? {
        b'"' => return string_end(text, start + 1),
        b'{' => (b'{', b'}'),
        b'[' => (b'[', b']'),
        // A scalar, or a stray closing bracket: it runs to whitespace or a structural byte.
        _ => {
            let rest = &text[start..];
            let len = rest
                .iter()
                .position(|b| b" \t\r\n{}[]\",:".contains(b))
                .unwrap_or(rest.len());
            return Some(start + len.max(1));
        }
    };
    let mut pos = start + 1;
    let mut depth = 1usize;
    loop {
        pos += memchr::memchr3(b'"', open, close, &text[pos..])?;
        match text[pos] {
            b'"' => pos = string_end(text, pos + 1)?,
            b if b == open => {
                depth += 1;
                pos += 1;
            }
            _ => {
                depth -= 1;
                pos += 1;
                if depth == 0 {
                    return Some(pos);
                }
            }
        }
    }
}

/// The index after the quote that closes a string whose text starts at `from`.
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let p = from + memchr::memchr2(b'"', b'\\', &text[from..])?;
        if text[p] == b'"' {
            return Some(p + 1);
        }
        from = p + 2;
        if from > text.len() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_EVENT: &str = r#"{"id":"a582a0f3-e620-43e6-8e98-ff850fc9d984","timestamp":"2023-01-25T14:45:54.17327+11:00","action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:af06","length":528,"repository":"root/test","url":"http://registry.test:5000/v2/root/test/manifests/sha256:af06","tag":"more-auth"},"request":{"id":"8ef8","addr":"172.16.123.1:56969","host":"registry.test:5000","method":"PUT","useragent":"docker/20.10.18"},"actor":{"name":"root","user_type":"personal_access_token"},"source":{"addr":"Jaimes-MBP:5000","instanceID":"45681f21"}}"#;

    #[test]
    fn a_line_that_is_not_utf8_is_malformed_wherever_the_bad_byte_is() {
        let good = SEED_EVENT.replace("root", "rööt");
        assert!(matches!(parse_line(good.as_bytes()), ParsedLine::Single(_)));
        for at in (0..good.len()).step_by(7) {
            for bad in [0xff_u8, 0xc3] {
                let mut line = good.clone().into_bytes();
                if std::str::from_utf8(&line[..at]).is_err() {
                    continue;
                }
                line.insert(at, bad);
                assert_eq!(
                    parse_line(&line),
                    ParsedLine::Malformed("line is not valid UTF-8".into()),
                    "{bad:#x} at {at}"
                );
            }
        }
    }

    fn single(line: &str) -> RawEvent<'_> {
        match parse_line(line.as_bytes()) {
            ParsedLine::Single(e) => e,
            other => panic!("not a single event: {other:?}"),
        }
    }

    #[test]
    fn value_ends_are_found_outside_strings() {
        fn ends(text: &str) -> Option<&str> {
            value_end(text.as_bytes(), 0).map(|e| &text[..e])
        }
        assert_eq!(
            ends(r#"{"a":"}\"{","b":[{"c":"]"}]} {"#),
            Some(r#"{"a":"}\"{","b":[{"c":"]"}]}"#)
        );
        assert_eq!(ends(r#"[1,[2],{"x":[]}]]"#), Some(r#"[1,[2],{"x":[]}]"#));
        assert_eq!(ends(r#""a\\"b"#), Some(r#""a\\""#));
        assert_eq!(ends("true,"), Some("true"));
        assert_eq!(ends("-1.5e3}"), Some("-1.5e3"));
        assert_eq!(ends("}{}"), Some("}"));
        // Cut short: inside an object, inside a string, after a backslash.
        for cut in [r#"{"a":{"b":1}"#, r#"{"a":"}"#, r#"["\"#, "\""] {
            assert_eq!(ends(cut), None, "{cut}");
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

    /// An envelope past the inline limit is walked again element by element, in order, with
    /// the same elements a short one gives; a repeated `events` key keeps its last value.
    #[test]
    fn a_long_envelope_is_walked_element_by_element() {
        let n = scan::INLINE_ELEMENTS * 3 + 7;
        let items: Vec<String> = (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    "7".to_owned()
                } else {
                    format!(r#"{{"id":"e{i}"}}"#)
                }
            })
            .collect();
        let line = format!(r#"{{"events":[1,2],"events":[{}]}}"#, items.join(","));
        let ParsedLine::LongEnvelope(long) = parse_line(line.as_bytes()) else {
            panic!("not a long envelope")
        };
        let mut seen = Vec::new();
        long.each(|e| seen.push(e));
        assert_eq!(seen.len(), n);
        for (i, e) in seen.iter().enumerate() {
            match e {
                Element::NotObject => assert_eq!(i % 5, 0),
                Element::Event(ev) => {
                    assert_eq!(ev.id, StrField::Str(format!("e{i}").into()))
                }
            }
        }
        // At the limit the elements are kept; a broken long line is malformed, not walked.
        let at_limit = format!(
            r#"{{"events":[{}]}}"#,
            vec!["{}"; scan::INLINE_ELEMENTS].join(",")
        );
        assert!(
            matches!(parse_line(at_limit.as_bytes()), ParsedLine::Envelope(v) if v.len() == scan::INLINE_ELEMENTS)
        );
        let broken = format!(r#"{{"events":[{}]"#, items.join(","));
        assert!(matches!(
            parse_line(broken.as_bytes()),
            ParsedLine::Malformed(_)
        ));
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

    /// The line with the fields only the events dataset reads emptied: the serde_json-based
    /// parser never read them (they are tested by `dataset_fields_are_kept_as_written`).
    fn without_dataset_fields(line: ParsedLine<'_>) -> ParsedLine<'_> {
        fn clear(e: &mut RawEvent<'_>) {
            if let TargetField::Object {
                tag,
                digest,
                media_type,
                ..
            } = &mut e.target
            {
                (*tag, *digest, *media_type) = Default::default();
            }
            if let ActorField::Object { user, .. } = &mut e.actor {
                *user = JsonText(None);
            }
        }
        match line {
            ParsedLine::Single(mut e) => {
                clear(&mut e);
                ParsedLine::Single(e)
            }
            ParsedLine::Envelope(mut elements) => {
                for e in &mut elements {
                    if let Element::Event(e) = e {
                        clear(e);
                    }
                }
                ParsedLine::Envelope(elements)
            }
            other => other,
        }
    }

    #[test]
    fn dataset_fields_are_kept_as_written() {
        let e = single(
            r#"{"id":"a","timestamp":"2023-01-25T14:45:54Z","action":"push","target":{"mediaType":"app\/x\u0026y","repository":"g/r","tag":"\ud800x","digest":7}}"#,
        )
        .validate()
        .unwrap();
        assert_eq!(e.media_type, JsonText(Some(r"app\/x\u0026y")));
        assert_eq!(e.media_type.decode().as_deref(), Some("app/x&y"));
        assert_eq!(e.tag.decode().as_deref(), Some("\u{FFFD}x"));
        // A digest that is not a string is still a digest (SPEC §5) but has no text.
        assert!(e.has_digest);
        assert_eq!(e.digest.decode(), None);
        let pair = JsonText(Some(r#"\ud83d\ude00 \"q\" \\ \n\t\b\f\r \u00e9"#));
        assert_eq!(
            pair.decode().as_deref(),
            Some("\u{1F600} \"q\" \\ \n\t\u{8}\u{c}\r \u{e9}")
        );
        assert_eq!(
            JsonText(Some(r"\ud800\u0041")).decode().as_deref(),
            Some("\u{FFFD}A")
        );
        assert_eq!(
            JsonText(Some("plain")).decode(),
            Some(Cow::Borrowed("plain"))
        );
    }

    /// The scanner accepts, rejects and reads exactly what the serde_json-based parser did,
    /// on hand-picked edge cases and on thousands of randomly mutated lines. The one allowed
    /// difference: serde_json refused a float beyond f64 where it decoded a field.
    #[test]
    fn the_scanner_agrees_with_the_serde_json_parser() {
        let mut seeds: Vec<String> = vec![
            SEED_EVENT.to_owned(),
            format!(r#"{{"events":[{SEED_EVENT}, 7, {{"id":""}}, "s", [1,{{"a":[]}}], null]}}"#),
            r#"{"\u0069d":"x\u0026y\ud83d\ude00","timestamp":"2023-01-25T14:45:54Z","action":"push","target":{"repository":"g/r\/s","tag":"\ud800"},"request":{"k\udc00":"\udfff"}}"#.to_owned(),
            r#"{"id":"\ud800","timestamp":"x","action":"push","target":{}}"#.to_owned(),
            r#"{"id":"a","x":"\ud800\u0041","target":{"repository":"\ud83d\u0041"}}"#.to_owned(),
            r#" { "id" : -0 , "timestamp" : 1.5e+10 , "action" : [ true , false , null ] , "target" : { } , "actor" : { "name" : 12345678901234567890123 , "user_type" : { } } } "#.to_owned(),
            r#"{"events":{},"id":"a"}"#.to_owned(),
            r#"{"events":[],"events":"x"}"#.to_owned(),
            r#"{"events":"x","events":[]}"#.to_owned(),
            r#"{"a":1,}"#.to_owned(),
            r#"{"a" 1}"#.to_owned(),
            r#"[1,2,]"#.to_owned(),
            r#"{"a":01}"#.to_owned(),
            r#"{"a":1.}"#.to_owned(),
            r#"{"a":-}"#.to_owned(),
            r#"{"a":.5}"#.to_owned(),
            r#"{"a":"\x"}"#.to_owned(),
            r#"{"a":"\u12g4"}"#.to_owned(),
            "{\"a\":\"tab\there\"}".to_owned(),
            r#"{"a":tru}"#.to_owned(),
            r#"{"a":nulll}"#.to_owned(),
            r#"{}"#.to_owned(),
            r#"{} x"#.to_owned(),
            r#""just a string""#.to_owned(),
            r#""\ud800""#.to_owned(),
            r#"{"target":"\ud800"}"#.to_owned(),
            r#"{"events":["\ud800"]}"#.to_owned(),
            r#"{"actor":{"name":"Ren\u00e9e","user_type":"build"},"id":"1"}"#.to_owned(),
            format!(r#"{{"id":"a","deep":{}{}}}"#, "[".repeat(5000), "]".repeat(5000)),
            format!(r#"{{"id":"a","deep":{}}}"#, "[".repeat(300)),
        ];
        // Random mutations of the seeds.
        let mut next = crate::test_support::seeded(0x2545_F491_4F6C_DD1Du64);
        let noise = br#"{}[],:" \u0Ad8e-.9tnfl"#;
        let base = seeds.clone();
        // Realistic lines too: the benchmark generator's shape, with escapes Go writes.
        seeds.push(r#"{"id":"00000000-0000-4000-8000-4cd3e565dfa1","timestamp":"2023-07-25T20:43:37.169017477Z","action":"pull","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":3921,"digest":"sha256:9de6cf0f6d5a586ed566404840a2ab9d674bfece098c482887d6e3d2afc200ac","length":4934,"repository":"group-766/project-18712","url":"https://registry.example.com/v2/group-766/project-18712/manifests/sha256:9de6","tag":"v4.1.20"},"request":{"id":"74cccf5f","addr":"10.57.108.9:33220","host":"registry.example.com","method":"GET","useragent":"docker/24.0.7 go/go1.20.10 UpstreamClient(Docker-Client/24.0.7 \\(linux\\)) \u0026 more"},"actor":{"name":"project_712_bot","user_type":"build"},"source":{"addr":"registry-1:5000","instanceID":"ef636718"}}"#.to_owned());
        for _ in 0..40_000 {
            let mut line = base[(next() % base.len() as u64) as usize]
                .clone()
                .into_bytes();
            for _ in 0..1 + next() % 3 {
                if line.is_empty() {
                    break;
                }
                let at = (next() % line.len() as u64) as usize;
                match next() % 4 {
                    0 => line[at] = noise[(next() % noise.len() as u64) as usize],
                    1 => line.truncate(at),
                    2 => line.insert(at, noise[(next() % noise.len() as u64) as usize]),
                    _ => {
                        line.remove(at);
                    }
                }
            }
            if let Ok(text) = String::from_utf8(line) {
                seeds.push(text);
            }
        }
        let mut malformed = 0;
        for line in &seeds {
            let ours = without_dataset_fields(parse_line(line.as_bytes()));
            let theirs = serde_oracle::parse_line_serde(line.as_bytes());
            match (&ours, &theirs) {
                (ParsedLine::Malformed(_), ParsedLine::Malformed(_)) => malformed += 1,
                (_, ParsedLine::Malformed(why)) if why.contains("number out of range") => {}
                _ => assert_eq!(ours, theirs, "{line:?}"),
            }
        }
        // The mutations must reach both sides of the question.
        assert!(
            malformed > 2_000 && malformed < seeds.len() - 2_000,
            "{malformed} of {}",
            seeds.len()
        );
    }
}
