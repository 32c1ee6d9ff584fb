//! A validating JSON scanner for one log line: it checks that the line is exactly one JSON
//! value (RFC 8259) and lifts out the few fields regtally reads, building nothing else.
//!
//! Parsing is most of a run's work, and serde_json spends a visitor call and a key match on
//! every token of a ~1 KB line whose fields regtally mostly skips. This scanner marks the
//! line's quotes, backslashes and control bytes in one SIMD pass, matches keys in place, skips
//! unread strings and objects without building them and fills the caller's event in place: on
//! the benchmark's lines, about half of serde_json's instructions, as fast as serde_json only
//! checking such a line (`IgnoredAny`). It accepts exactly what the serde_json reference
//! parser (`serde_oracle`) accepts, which a differential test holds on mutated lines, with one
//! deliberate difference: a number too large for a 64-bit float where a string is expected
//! makes the event invalid rather than the whole line malformed.
//!
//! Strings at the positions regtally reads (object keys, the fields' values, array elements)
//! must be valid Unicode escapes, as serde_json requires of strings it decodes; strings it
//! only skips may hold lone surrogates, as serde_json allows there. Skipping keeps its own
//! stack, so deep nesting cannot overflow the thread's.

use super::{ActorField, Element, JsonText, RawEvent, StrField, TargetField};
use std::borrow::Cow;
use std::cell::Cell;

/// What a line's top-level value is.
pub(super) enum TopLevel<'a> {
    NotObject,
    EventsNotArray,
    Envelope(Vec<Element<'a>>),
    /// An envelope of more than [`INLINE_ELEMENTS`] elements: they were checked, not kept.
    /// [`each_element`] walks them from the array's `[` at byte `array_at`.
    LongEnvelope {
        array_at: usize,
    },
    /// The event is in the `single` that `scan_line` was given.
    Single,
}

/// A syntax error: what was wrong and the 1-based column (in bytes) where it was found.
#[derive(Debug, Clone, Copy)]
pub(super) struct SyntaxError {
    pub what: &'static str,
    pub column: usize,
}

/// That scanning failed; the scanner keeps the [`SyntaxError`] itself. An error carried in
/// every `Result` made each of the scanner's many small results too big for registers.
struct Failed;

type Result<T> = std::result::Result<T, Failed>;

struct Scanner<'a, 'm> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    /// The error that stopped the scan, for `scan_line` to report.
    failure: Cell<Option<SyntaxError>>,
    /// Bit `i % 64` of word `i / 64` is set when byte `i` is `"`, a backslash or a control
    /// byte: computed for the whole line at once, 32 bytes per step with AVX2 and sixteen
    /// without, so that finding where a string ends is a lookup rather than a loop per string.
    specials: &'m [u64],
}

/// Lines up to this many bytes keep their [`Scanner::specials`] on the stack.
const INLINE_MASK_WORDS: usize = 32;

/// The most elements of one envelope kept while its line is checked. A larger envelope is
/// walked a second time, element by element, once the whole line is known to be valid: one
/// 8 MiB line can hold millions of elements, and keeping them all took gigabytes.
pub(super) const INLINE_ELEMENTS: usize = 256;

/// The elements of the top-level `events` array seen so far (of the last `events` key: a
/// repeated key's last value wins).
struct Collected<'a> {
    elements: Vec<Element<'a>>,
    count: usize,
    array_at: usize,
}

impl<'a> Collected<'a> {
    fn start(&mut self, array_at: usize) {
        self.elements.clear();
        self.count = 0;
        self.array_at = array_at;
    }

    fn push(&mut self, element: Element<'a>) {
        self.count += 1;
        if self.count <= INLINE_ELEMENTS {
            self.elements.push(element);
        } else if !self.elements.is_empty() {
            self.elements = Vec::new();
        }
    }
}

/// [`scan_bytes`] for a line that is text already, for the tests below.
#[cfg(test)]
fn scan_line<'a>(
    text: &'a str,
    single: &mut RawEvent<'a>,
) -> std::result::Result<TopLevel<'a>, SyntaxError> {
    match scan_bytes(text.as_bytes(), single) {
        Ok((_, top)) => Ok(top),
        Err(BytesError::Syntax(e)) => Err(e),
        Err(BytesError::NotUtf8) => unreachable!("a str is UTF-8"),
    }
}

/// Why [`scan_bytes`] refused a line.
pub(super) enum BytesError {
    NotUtf8,
    Syntax(SyntaxError),
}

/// Scans a line: checks that it is UTF-8 and one JSON value, and says what that value is. A
/// single event is written into `single` (see [`Scanner::event_object`]). Returns the line as
/// text with what it holds.
///
/// The pass that marks the line's special bytes also finds whether any byte is above 0x7f,
/// and only a line with such a byte is checked as UTF-8. A separate check of each chunk was a
/// pass over a megabyte that no longer sat in the core's cache (2-3% of `perf`'s samples).
pub(super) fn scan_bytes<'a>(
    line: &'a [u8],
    single: &mut RawEvent<'a>,
) -> std::result::Result<(&'a str, TopLevel<'a>), BytesError> {
    with_masks(line, |specials, ascii| {
        let text = if ascii {
            // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
            unsafe { std::str::from_utf8_unchecked(line) }
        } else {
            simdutf8::basic::from_utf8(line).map_err(|_| BytesError::NotUtf8)?
        };
        let mut s = Scanner::new(text, 0, specials);
        match s.line(single) {
            Ok(top) => Ok((text, top)),
            Err(Failed) => Err(BytesError::Syntax(s.failure.get().unwrap_or(SyntaxError {
                what: "invalid JSON",
                column: s.pos + 1,
            }))),
        }
    })
}

/// Calls `each` with every element of the array whose `[` is at byte `array_at` of `text`, a
/// line [`scan_line`] found to be a [`TopLevel::LongEnvelope`]. The line was checked whole
/// then, so this walk cannot fail.
pub(super) fn each_element<'a>(text: &'a str, array_at: usize, mut each: impl FnMut(Element<'a>)) {
    with_scanner(text, array_at, |s| {
        let _ = s.events(&mut each);
    })
}

/// Runs `f` with a scanner of `text` placed at byte `pos`.
fn with_scanner<'a, T>(text: &'a str, pos: usize, f: impl FnOnce(&mut Scanner<'a, '_>) -> T) -> T {
    with_masks(text.as_bytes(), |specials, _| {
        f(&mut Scanner::new(text, pos, specials))
    })
}

/// Runs `f` with the [`Scanner::specials`] of `b` and whether `b` is all ASCII.
fn with_masks<T>(b: &[u8], f: impl FnOnce(&[u64], bool) -> T) -> T {
    let words = b.len().div_ceil(64);
    let mut inline = [0u64; INLINE_MASK_WORDS];
    let mut heap = Vec::new();
    let specials: &mut [u64] = if words <= INLINE_MASK_WORDS {
        &mut inline[..words]
    } else {
        heap.resize(words, 0);
        &mut heap
    };
    let ascii = special_masks(b, specials);
    f(specials, ascii)
}

/// What a top-level `events` member held: its elements went to the caller's sink.
enum Events {
    Array,
    NotArray,
}

enum Key {
    Id,
    Timestamp,
    Action,
    Target,
    Actor,
    Events,
    Repository,
    Tag,
    Digest,
    MediaType,
    Name,
    UserType,
    User,
    Other,
}

impl Key {
    /// By length first: the keys regtally reads mostly differ in length, so one comparison
    /// is left, where the patterns in one list were tried one after another.
    #[inline(always)]
    fn of(name: &[u8]) -> Key {
        match name.len() {
            2 if name == b"id" => Key::Id,
            3 if name == b"tag" => Key::Tag,
            4 if name == b"name" => Key::Name,
            4 if name == b"user" => Key::User,
            5 if name == b"actor" => Key::Actor,
            6 => match name {
                b"action" => Key::Action,
                b"target" => Key::Target,
                b"events" => Key::Events,
                b"digest" => Key::Digest,
                _ => Key::Other,
            },
            9 => match name {
                b"timestamp" => Key::Timestamp,
                b"mediaType" => Key::MediaType,
                b"user_type" => Key::UserType,
                _ => Key::Other,
            },
            10 if name == b"repository" => Key::Repository,
            _ => Key::Other,
        }
    }
}

impl<'a, 'm> Scanner<'a, 'm> {
    /// A scanner of `text`, whose special bytes `specials` marks, placed at byte `pos`.
    fn new(text: &'a str, pos: usize, specials: &'m [u64]) -> Scanner<'a, 'm> {
        Scanner {
            text,
            b: text.as_bytes(),
            pos,
            failure: Cell::new(None),
            specials,
        }
    }

    /// The whole line: one value and nothing after it.
    fn line(&mut self, single: &mut RawEvent<'a>) -> Result<TopLevel<'a>> {
        self.ws();
        let top = if self.peek() == Some(b'{') {
            let mut collected = Collected {
                elements: Vec::new(),
                count: 0,
                array_at: 0,
            };
            match self.event_object(Some(&mut collected), single)? {
                Some(Events::Array) if collected.count > INLINE_ELEMENTS => {
                    TopLevel::LongEnvelope {
                        array_at: collected.array_at,
                    }
                }
                Some(Events::Array) => TopLevel::Envelope(collected.elements),
                Some(Events::NotArray) => TopLevel::EventsNotArray,
                None => TopLevel::Single,
            }
        } else {
            self.other_value()?;
            TopLevel::NotObject
        };
        self.ws();
        if self.pos != self.b.len() {
            return Err(self.error("trailing characters"));
        }
        Ok(top)
    }

    /// Records an error at the current position.
    #[cold]
    fn error(&self, what: &'static str) -> Failed {
        self.fail_at(what, self.pos + 1)
    }

    #[cold]
    fn fail_at(&self, what: &'static str, column: usize) -> Failed {
        self.failure.set(Some(SyntaxError { what, column }));
        Failed
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    /// Walks the members of an object whose `{` is next, calling `member` with each key and
    /// the scanner placed at its value (after whitespace).
    fn object(&mut self, mut member: impl FnMut(&mut Self, Key) -> Result<()>) -> Result<()> {
        self.pos += 1; // '{'
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string as object key"));
            }
            let key = self.key()?;
            self.expect(b':', "expected ':' after an object key")?;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or '}' in an object")),
            }
        }
    }

    /// An event object whose `{` is next. At the top level (where `collected` is given) an
    /// `events` member makes it an envelope, its elements going to `collected`; inside an
    /// envelope `events` is just another member.
    ///
    /// The event's fields are written into `event`, which the caller owns: the struct is 150
    /// bytes, and returning it by value copied it at every level.
    fn event_object(
        &mut self,
        mut collected: Option<&mut Collected<'a>>,
        event: &mut RawEvent<'a>,
    ) -> Result<Option<Events>> {
        let mut events = None;
        self.object(|s, key| {
            match (key, collected.as_deref_mut()) {
                (Key::Id, _) => event.id = s.str_field()?,
                (Key::Timestamp, _) => event.timestamp = s.str_field()?,
                (Key::Action, _) => event.action = s.str_field()?,
                (Key::Target, _) => event.target = s.target()?,
                (Key::Actor, _) => event.actor = s.actor()?,
                (Key::Events, Some(c)) => {
                    c.start(s.pos);
                    events = Some(s.events(&mut |e| c.push(e))?);
                }
                _ => s.skip_value()?,
            }
            Ok(())
        })?;
        Ok(events)
    }

    fn target(&mut self) -> Result<TargetField<'a>> {
        if self.peek() != Some(b'{') {
            self.other_value()?;
            return Ok(TargetField::NotObject);
        }
        let mut repository = StrField::Missing;
        let (mut has_tag, mut has_digest) = (false, false);
        let (mut tag, mut digest, mut media_type) = Default::default();
        self.object(|s, key| {
            match key {
                Key::Repository => repository = s.str_field()?,
                Key::Tag => {
                    tag = s.json_text()?;
                    has_tag = true;
                }
                Key::Digest => {
                    digest = s.json_text()?;
                    has_digest = true;
                }
                Key::MediaType => media_type = s.json_text()?,
                _ => s.skip_value()?,
            }
            Ok(())
        })?;
        Ok(TargetField::Object {
            repository,
            has_tag,
            has_digest,
            tag,
            digest,
            media_type,
        })
    }

    fn actor(&mut self) -> Result<ActorField<'a>> {
        if self.peek() != Some(b'{') {
            self.other_value()?;
            return Ok(ActorField::NotObject);
        }
        let (mut name, mut user_type) = (StrField::Missing, StrField::Missing);
        let mut user = JsonText(None);
        self.object(|s, key| {
            match key {
                Key::Name => name = s.str_field()?,
                Key::UserType => user_type = s.str_field()?,
                Key::User => user = s.json_text()?,
                _ => s.skip_value()?,
            }
            Ok(())
        })?;
        Ok(ActorField::Object {
            name,
            user_type,
            user,
        })
    }

    /// The top-level `events` value: an array's elements go to `sink` one by one.
    fn events(&mut self, sink: &mut dyn FnMut(Element<'a>)) -> Result<Events> {
        if self.peek() != Some(b'[') {
            self.other_value()?;
            return Ok(Events::NotArray);
        }
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Events::Array);
        }
        loop {
            self.ws();
            if self.peek() == Some(b'{') {
                let mut event = RawEvent::default();
                self.event_object(None, &mut event)?;
                sink(Element::Event(event));
            } else {
                self.other_value()?;
                sink(Element::NotObject);
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Events::Array);
                }
                _ => return Err(self.error("expected ',' or ']' in an array")),
            }
        }
    }

    /// A value read as a string field: a string (decoded, escapes checked) or anything else.
    #[inline(always)]
    fn str_field(&mut self) -> Result<StrField<'a>> {
        if self.peek() == Some(b'"') {
            Ok(StrField::Str(self.string()?))
        } else {
            self.skip_value()?;
            Ok(StrField::NotString)
        }
    }

    /// A value kept as it stands: a string's text, escapes undecoded, checked only as a
    /// skipped string is; anything else skipped.
    #[inline(always)]
    fn json_text(&mut self) -> Result<JsonText<'a>> {
        if self.peek() != Some(b'"') {
            self.skip_value()?;
            return Ok(JsonText(None));
        }
        let start = self.pos + 1;
        self.skip_string()?;
        Ok(JsonText(Some(&self.text[start..self.pos - 1])))
    }

    /// A value at a position regtally reads but that is not what it wants: a string there is
    /// decoded (so its escapes are checked, as serde_json did), anything else skipped.
    fn other_value(&mut self) -> Result<()> {
        if self.peek() == Some(b'"') {
            self.string().map(drop)
        } else {
            self.skip_value()
        }
    }

    /// An object key whose `"` is next, matched in place; only a key with escapes is decoded
    /// first (`"\u0069d"` is `id`, as serde_json read it).
    #[inline(always)]
    fn key(&mut self) -> Result<Key> {
        let start = self.pos + 1;
        let stop = self.plain_run_from(start)?;
        if self.b[stop] == b'"' {
            self.pos = stop + 1;
            return Ok(Key::of(&self.b[start..stop]));
        }
        Ok(Key::of(self.string()?.as_bytes()))
    }

    /// Passes over a string whose `"` is next, checking only that its escapes are well formed
    /// (serde_json lets a skipped string hold a lone surrogate) and building nothing: most of a
    /// line's strings are skipped.
    #[inline(always)]
    fn skip_string(&mut self) -> Result<()> {
        self.pos += 1; // '"'
        loop {
            let stop = self.plain_run()?;
            self.pos = stop + 1;
            if self.b[stop] == b'"' {
                return Ok(());
            }
            self.escape(None)?;
        }
    }

    /// A string whose `"` is next, decoded: `\u` escapes must pair their surrogates. The text
    /// is borrowed unless it holds escapes.
    ///
    /// Inlined, so that a field's usual string (no escape) costs no call; the decoding of
    /// escapes is out of line.
    #[inline(always)]
    fn string(&mut self) -> Result<Cow<'a, str>> {
        self.pos += 1; // '"'
        let start = self.pos;
        let stop = self.plain_run()?;
        if self.b[stop] == b'"' {
            self.pos = stop + 1;
            return Ok(Cow::Borrowed(&self.text[start..stop]));
        }
        self.escaped_string(start, stop)
    }

    /// [`Scanner::string`] from the first backslash at `stop` of a string whose text starts
    /// at `start`: from there on the text is decoded piece by piece.
    #[inline(never)]
    fn escaped_string(&mut self, start: usize, stop: usize) -> Result<Cow<'a, str>> {
        self.pos = stop;
        let mut out = String::with_capacity(stop - start + 16);
        out.push_str(&self.text[start..stop]);
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(Some(&mut out))?;
                }
                _ => {
                    let from = self.pos;
                    self.pos = self.plain_run()?;
                    out.push_str(&self.text[from..self.pos]);
                }
            }
        }
    }

    /// The end of the run of ordinary string bytes from the current position: the index of
    /// the next `"` or backslash, or an error at a control character or the end of the line.
    fn plain_run(&self) -> Result<usize> {
        self.plain_run_from(self.pos)
    }

    /// [`Scanner::plain_run`] from `i`. Inlined, so that the usual answer (a quote or a
    /// backslash) costs no call and no error value; the errors are built out of line.
    #[inline(always)]
    fn plain_run_from(&self, i: usize) -> Result<usize> {
        let stop = self.special_from(i);
        match self.b.get(stop) {
            Some(b'"' | b'\\') => Ok(stop),
            _ => Err(self.bad_run_end(stop)),
        }
    }

    /// The index of the first `"`, backslash or control byte at or after `i`, or the line's
    /// length.
    #[inline(always)]
    fn special_from(&self, i: usize) -> usize {
        let mut word = i / 64;
        let Some(&first) = self.specials.get(word) else {
            return self.b.len();
        };
        let mut mask = first & (!0u64 << (i % 64));
        loop {
            if mask != 0 {
                return word * 64 + mask.trailing_zeros() as usize;
            }
            word += 1;
            match self.specials.get(word) {
                Some(&m) => mask = m,
                None => return self.b.len(),
            }
        }
    }

    /// The error for a run of string bytes that ended at a control character or at the end
    /// of the line.
    #[cold]
    #[inline(never)]
    fn bad_run_end(&self, i: usize) -> Failed {
        if i < self.b.len() {
            self.fail_at("control character in a string", i + 1)
        } else {
            self.fail_at("end of line inside a string", self.b.len() + 1)
        }
    }

    /// One escape after its backslash; appends what it stands for to `out` when decoding.
    fn escape(&mut self, out: Option<&mut String>) -> Result<()> {
        let Some(c) = self.peek() else {
            return Err(self.error("end of line inside an escape"));
        };
        self.pos += 1;
        let simple = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = self.hex4()?;
                let Some(out) = out else {
                    return Ok(());
                };
                let ch = match n {
                    0xDC00..=0xDFFF => return Err(self.error("lone surrogate in a \\u escape")),
                    0xD800..=0xDBFF => {
                        if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(self.error("lone surrogate in a \\u escape"));
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(self.error("lone surrogate in a \\u escape"));
                        }
                        let code =
                            0x10000 + ((u32::from(n) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))?
                    }
                    _ => char::from_u32(u32::from(n))
                        .ok_or_else(|| self.error("invalid \\u escape"))?,
                };
                out.push(ch);
                return Ok(());
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("invalid escape"));
            }
        };
        if let Some(out) = out {
            out.push(simple);
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16> {
        let mut n: u16 = 0;
        for _ in 0..4 {
            let Some(c) = self.peek() else {
                return Err(self.error("end of line inside a \\u escape"));
            };
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(self.error("invalid \\u escape")),
            };
            n = n << 4 | u16::from(d);
            self.pos += 1;
        }
        Ok(n)
    }

    fn number(&mut self) -> Result<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.error("invalid number"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<()> {
        if self.b.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    /// Checks and passes over one value of any kind, nested to any depth.
    ///
    /// A string or a number, most of what is skipped, is passed over before the container
    /// stack is set up.
    #[inline(always)]
    fn skip_value(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.skip_nested(),
        }
    }

    /// [`Scanner::skip_value`] for any value, containers included.
    #[inline(never)]
    fn skip_nested(&mut self) -> Result<()> {
        match self.skip_flat_object() {
            Some(done) => done,
            None => self.skip_walk(),
        }
    }

    /// [`Scanner::skip_nested`]'s general walk, for any value and any whitespace.
    fn skip_walk(&mut self) -> Result<()> {
        let mut open = Open::default();
        loop {
            // A value starts here.
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(b'{');
                        self.skip_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b'[');
                        continue;
                    }
                }
                Some(b'"') => self.skip_string()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(self.error("expected a value")),
            }
            // A value ended: close what it ends, or go on to the next member or element.
            loop {
                let Some(container) = open.last() else {
                    return Ok(());
                };
                self.ws();
                match (container, self.peek()) {
                    (_, Some(b',')) => {
                        self.pos += 1;
                        if container == b'{' {
                            self.ws();
                            self.skip_key()?;
                        }
                        break;
                    }
                    (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                        self.pos += 1;
                        open.pop();
                    }
                    (b'{', _) => return Err(self.error("expected ',' or '}' in an object")),
                    _ => return Err(self.error("expected ',' or ']' in an array")),
                }
            }
        }
    }

    /// The usual skipped container, taken fast: an object written without whitespace whose
    /// values are strings or numbers, like the registry's `request` and `source`. The general
    /// walk spends a whitespace check, a look at its stack of open containers and a dispatch
    /// on each token: 15% of a run's instructions went to skipping those two objects.
    ///
    /// `None`, with the position where it was, at anything else (whitespace, a nested value, a
    /// literal, `{}`, a misplaced byte): [`Scanner::skip_walk`] then walks the value from its
    /// start and finds what is wrong, if anything. A bad string or number is an error here at
    /// once: the general walk would reach it by the same bytes and call the same function.
    #[inline(always)]
    fn skip_flat_object(&mut self) -> Option<Result<()>> {
        // The walk keeps its place in a local, not in `self.pos`: a store to `self` at each
        // token made the compiler reload the line and its masks from `self` at the next.
        let b = self.b;
        let start = self.pos;
        if b.get(start) != Some(&b'{') {
            return None;
        }
        let mut i = start + 1;
        while b.get(i) == Some(&b'"') {
            i = match self.skip_string_at(i) {
                Ok(end) => end,
                Err(e) => return Some(Err(e)),
            };
            if b.get(i) != Some(&b':') {
                break;
            }
            i += 1;
            let value = match b.get(i) {
                Some(b'"') => self.skip_string_at(i),
                Some(b'-' | b'0'..=b'9') => {
                    self.pos = i;
                    self.number().map(|()| self.pos)
                }
                _ => break,
            };
            i = match value {
                Ok(end) => end,
                Err(e) => return Some(Err(e)),
            };
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    self.pos = i + 1;
                    return Some(Ok(()));
                }
                _ => break,
            }
        }
        self.pos = start;
        None
    }

    /// [`Scanner::skip_string`] of the string whose `"` is at `i`, returning the index after
    /// it. A string without escapes is found from the masks alone and leaves the position
    /// alone; any other is handed to `skip_string`, which moves it.
    #[inline(always)]
    fn skip_string_at(&mut self, i: usize) -> Result<usize> {
        let stop = self.special_from(i + 1);
        if self.b.get(stop) == Some(&b'"') {
            return Ok(stop + 1);
        }
        self.pos = i;
        self.skip_string().map(|()| self.pos)
    }

    /// An object key and its colon, when skipping.
    #[inline(always)]
    fn skip_key(&mut self) -> Result<()> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string as object key"));
        }
        self.skip_string()?;
        self.expect(b':', "expected ':' after an object key")
    }
}

/// The containers a skipped value is inside: on the stack up to 32 deep (the usual case, no
/// allocation), on the heap beyond.
#[derive(Default)]
struct Open {
    inline: [u8; 32],
    len: usize,
    deeper: Vec<u8>,
}

impl Open {
    fn push(&mut self, c: u8) {
        if self.len < self.inline.len() {
            self.inline[self.len] = c;
        } else {
            self.deeper.push(c);
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        if self.len > self.inline.len() {
            self.deeper.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    fn last(&self) -> Option<u8> {
        match self.len {
            0 => None,
            n if n <= self.inline.len() => Some(self.inline[n - 1]),
            _ => self.deeper.last().copied(),
        }
    }
}

/// Fills `masks` (one word per 64 bytes of `b`) with the positions of `"`, backslash and
/// control bytes, and says whether every byte of `b` is ASCII. The last block is padded with
/// spaces, which are none of those.
///
/// With AVX2 (checked once and cached by `std`) a 64-byte block takes two 32-byte steps, half
/// the SSE2 path's four 16-byte ones: the masks are a tenth of a run's instructions on SSE2.
/// (One AVX-512 step a block made them a third cheaper, about 1% of a run: not worth a third
/// path; benches/README.md.)
fn special_masks(b: &[u8], masks: &mut [u64]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been found to run AVX2.
        return unsafe { special_masks_avx2(b, masks) };
    }
    special_masks_16(b, masks)
}

/// [`special_masks`] sixteen bytes at a time, on any CPU.
fn special_masks_16(b: &[u8], masks: &mut [u64]) -> bool {
    each_block(b, masks, |block| {
        block
            .chunks_exact(16)
            .enumerate()
            .fold(0u64, |m, (k, sixteen_bytes)| {
                m | u64::from(sixteen(sixteen_bytes)) << (16 * k)
            })
    });
    b.is_ascii()
}

/// Calls `block_mask` on each 64-byte block of `b`, the last one padded with spaces, and
/// stores its answers in `masks`.
#[inline(always)]
fn each_block(b: &[u8], masks: &mut [u64], mut block_mask: impl FnMut(&[u8; 64]) -> u64) {
    let blocks = b.chunks_exact(64);
    let tail = blocks.remainder();
    let mut n = 0;
    for (mask, block) in masks.iter_mut().zip(blocks) {
        // `chunks_exact(64)` yields only 64-byte slices.
        *mask = block_mask(block.try_into().unwrap_or(&[b' '; 64]));
        n += 1;
    }
    if !tail.is_empty() {
        let mut padded = [b' '; 64];
        padded[..tail.len()].copy_from_slice(tail);
        masks[n] = block_mask(&padded);
    }
}

/// [`special_masks`] on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn special_masks_avx2(b: &[u8], masks: &mut [u64]) -> bool {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_max_epu8, _mm256_movemask_epi8,
        _mm256_or_si256, _mm256_set1_epi8, _mm256_setzero_si256,
    };
    // Every byte of the line ORed together: its top bit is set when any byte is above 0x7f.
    let mut all = _mm256_setzero_si256();
    let mut thirty_two = |half: &[u8; 32]| {
        // SAFETY: `half` is 32 readable bytes, and `loadu` needs no alignment.
        let v = unsafe { _mm256_loadu_si256(half.as_ptr().cast::<__m256i>()) };
        all = _mm256_or_si256(all, v);
        let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
        let low = _mm256_set1_epi8(0x1f);
        let control = _mm256_cmpeq_epi8(_mm256_max_epu8(v, low), low);
        let any = _mm256_or_si256(_mm256_or_si256(quote, backslash), control);
        u64::from(_mm256_movemask_epi8(any) as u32)
    };
    each_block(b, masks, |block| {
        let (low, high) = block.split_at(32);
        // Both halves are 32 bytes: the fallback is never taken.
        fn half(h: &[u8]) -> &[u8; 32] {
            h.try_into().unwrap_or(&[b' '; 32])
        }
        thirty_two(half(low)) | thirty_two(half(high)) << 32
    });
    _mm256_movemask_epi8(all) == 0
}

/// Bit `i` set when byte `i` of the 16 is `"`, a backslash or below 0x20. SSE2, which every
/// x86-64 has, tests the sixteen bytes in about ten instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn special_bytes_16(block: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_set_epi64x,
    };
    let half = |at: usize| {
        let bytes: [u8; 8] = block[at..at + 8].try_into().unwrap_or([0; 8]);
        i64::from_le_bytes(bytes)
    };
    let v = _mm_set_epi64x(half(8), half(0));
    let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
    let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
    // An unsigned byte is at most 0x1f exactly when its maximum with 0x1f is 0x1f.
    let control = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
    _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
}

/// [`special_bytes_16`], which takes no pointer and touches no memory: its `unsafe` is only
/// that of calling a `#[target_feature]` function, and x86-64 always has SSE2.
#[cfg(target_arch = "x86_64")]
#[inline]
fn sixteen(block: &[u8]) -> u32 {
    // SAFETY: SSE2 is part of the x86-64 baseline, so every x86-64 CPU runs it.
    unsafe { special_bytes_16(block) }
}

/// [`special_bytes_16`] where there is no SSE2, a byte at a time.
#[cfg(not(target_arch = "x86_64"))]
fn sixteen(block: &[u8]) -> u32 {
    block.iter().take(16).enumerate().fold(0, |mask, (k, &c)| {
        mask | (u32::from(c == b'"' || c == b'\\' || c < 0x20) << k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast skip of a flat object ends where the general walk ends, or fails where and
    /// as it fails, on the registry's `request` object and thousands of mutations of it.
    #[test]
    fn a_flat_object_is_skipped_as_the_general_walk_skips_it() {
        let seed = r#"{"id":"74cc","addr":"10.5.1.9:33","n":-12.5e3,"m":0,"ua":"a \\(b\\) \u0026 \ud800"},"x""#;
        let noise = br#"{}[],:" \u0Ad8e-.9tnfl"#;
        let mut next = crate::test_support::seeded(0x9E37_79B9_7F4A_7C15u64);
        let mut lines = vec![seed.to_owned(), "{}".to_owned(), r#"{"a":"b" }"#.to_owned()];
        for _ in 0..20_000 {
            let mut line = seed.as_bytes().to_vec();
            for _ in 0..1 + next() % 2 {
                let at = (next() % line.len() as u64) as usize;
                let byte = noise[(next() % noise.len() as u64) as usize];
                match next() % 3 {
                    0 => line[at] = byte,
                    1 => line.insert(at, byte),
                    _ => {
                        line.remove(at);
                    }
                }
            }
            if let Ok(text) = String::from_utf8(line) {
                lines.push(text);
            }
        }
        let (mut fast, mut failed) = (0, 0);
        for line in &lines {
            let outcome = |general: bool| {
                with_scanner(line, 0, |s| {
                    let result = if general {
                        s.skip_walk()
                    } else {
                        s.skip_nested()
                    };
                    let failure = s.failure.get().map(|e| (e.what, e.column));
                    (result.is_ok(), failure.is_none().then_some(s.pos), failure)
                })
            };
            let ours = outcome(false);
            assert_eq!(ours, outcome(true), "{line:?}");
            fast += usize::from(with_scanner(line, 0, |s| s.skip_flat_object().is_some()));
            failed += usize::from(!ours.0);
        }
        // Both ways out of the fast path are taken, and failures are met on it too.
        assert!(
            fast > 5_000 && fast < lines.len() - 5_000,
            "{fast} of {}",
            lines.len()
        );
        assert!(failed > 2_000, "{failed}");
    }

    #[test]
    fn a_bad_string_is_reported_where_it_goes_wrong() {
        let err = |line: &str| match scan_line(line, &mut RawEvent::default()) {
            Err(e) => (e.what, e.column),
            Ok(_) => panic!("{line:?} scanned"),
        };
        // Column of the control byte, whether the string is read, keyed or skipped, and
        // whether it is found in a 16-byte block, in the tail word or byte by byte.
        let long = "x".repeat(40);
        for line in [
            "{\"id\":\"ab\u{1}cd\"}".to_string(),
            "{\"ab\u{1}\":1}".to_string(),
            "{\"other\":\"ab\u{1}cd\"}".to_string(),
            format!("{{\"other\":\"{long}\u{1}{long}\"}}"),
            "{\"other\":[\"\\n\u{1f}\"]}".to_string(),
        ] {
            let at = line.find(['\u{1}', '\u{1f}']).unwrap() + 1;
            assert_eq!(
                err(&line),
                ("control character in a string", at),
                "{line:?}"
            );
        }
        for line in [
            "{\"id\":\"abc",
            "{\"ab",
            "{\"other\":\"abc\\\"",
            "[\"0123456789abcdefghij",
        ] {
            assert_eq!(
                err(line),
                ("end of line inside a string", line.len() + 1),
                "{line:?}"
            );
        }
    }

    /// Every byte value at every position of sixteen, beside every other kind of byte.
    #[test]
    fn sixteen_marks_every_quote_backslash_and_control_byte() {
        let special = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        for at in 0..16 {
            for c in 0..=255u8 {
                for filler in [b'a', b'"', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff] {
                    let mut block = [filler; 16];
                    block[at] = c;
                    let want = block
                        .iter()
                        .enumerate()
                        .fold(0u32, |m, (k, &b)| m | (u32::from(special(b)) << k));
                    assert_eq!(sixteen(&block), want, "{c:#x} at {at} among {filler:#x}");
                }
            }
        }
    }

    type MaskPath = fn(&[u8], &mut [u64]) -> bool;

    /// Each way of computing the masks that this CPU runs, named: a test of the masks holds
    /// for all of them, not only for the one [`special_masks`] picks here.
    fn mask_paths() -> Vec<(&'static str, MaskPath)> {
        let mut paths: Vec<(&'static str, MaskPath)> = vec![
            ("chosen", special_masks),
            ("sixteen bytes", special_masks_16),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU runs AVX2.
                paths.push(("AVX2", |b, m| unsafe { special_masks_avx2(b, m) }));
            }
        }
        paths
    }

    /// Every byte value at every offset of lines of every length around the 64-byte blocks:
    /// the masks of every path the CPU runs mark exactly the special bytes, and the tail's
    /// padding marks nothing.
    #[test]
    fn masks_mark_exactly_the_special_bytes_of_any_line() {
        let special = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        let mut rng = crate::test_support::seeded(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng() as u8;
        for len in 0..300usize {
            for round in 0..4 {
                let line: Vec<u8> = (0..len)
                    .map(|i| match round {
                        0 => next(),
                        1 => [b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0xff][next() as usize % 8],
                        _ => ((i * 7 + len + round) % 256) as u8,
                    })
                    .collect();
                let mut want = vec![0u64; len.div_ceil(64)];
                for (i, &c) in line.iter().enumerate() {
                    want[i / 64] |= u64::from(special(c)) << (i % 64);
                }
                for (path, masks_of) in mask_paths() {
                    let mut masks = vec![0u64; len.div_ceil(64)];
                    masks_of(&line, &mut masks);
                    assert_eq!(masks, want, "{path}, length {len}, round {round}");
                }
            }
        }
    }

    /// The pass that marks special bytes says a line is ASCII exactly when it is, whichever
    /// byte (in a full step or in the padded tail) is the one above 0x7f, on every path.
    #[test]
    fn masks_say_whether_a_line_is_ascii() {
        for (path, masks_of) in mask_paths() {
            for len in 0..200usize {
                let ascii: Vec<u8> = (0..len).map(|i| b' ' + (i % 95) as u8).collect();
                let mut masks = vec![0u64; len.div_ceil(64)];
                assert!(masks_of(&ascii, &mut masks), "{path}, length {len}");
                for at in 0..len {
                    for high in [0x80u8, 0xc3, 0xff] {
                        let mut line = ascii.clone();
                        line[at] = high;
                        assert!(
                            !masks_of(&line, &mut masks),
                            "{path}, length {len}, {high:#x} at {at}"
                        );
                    }
                }
            }
        }
    }

    /// A line with a byte above 0x7f must be UTF-8 wherever that byte is: at either end,
    /// inside a string, past a long line's stack masks.
    #[test]
    fn lines_with_high_bytes_are_refused_unless_utf8() {
        let event = |name: &[u8]| [br#"{"id":"1","actor":{"name":""#, name, br#""}}"#].concat();
        for pad in [0, 40, 3000] {
            let x = vec![b'x'; pad];
            let cases: [(Vec<u8>, bool); 5] = [
                (event(&x), true),
                (event(&[&x[..], "rööt".as_bytes()].concat()), true),
                ([&event(&x)[..], b"\xff"].concat(), false),
                ([&b"\xc3"[..], &event(&x)].concat(), false),
                (event(&[&x[..], b"r\xc3ot"].concat()), false),
            ];
            for (line, utf8) in cases {
                match scan_bytes(&line, &mut RawEvent::default()) {
                    Ok((text, TopLevel::Single)) => {
                        assert!(utf8, "pad {pad}: {line:?} was taken");
                        assert_eq!(text.as_bytes(), line.as_slice());
                    }
                    Err(BytesError::NotUtf8) => assert!(!utf8, "pad {pad}: {line:?} was refused"),
                    _ => panic!("pad {pad}: {line:?} scanned as neither"),
                }
            }
        }
    }

    /// Strings ending at every offset around the 64-byte words of the mask, and lines past
    /// the stack buffer, scan as they should and report control bytes where they are.
    #[test]
    fn strings_are_found_across_mask_words_and_long_lines() {
        for len in (0..200).chain([2030, 2047, 2048, 2049, 5000]) {
            let body = "x".repeat(len);
            let line = format!("{{\"other\":\"{body}\",\"id\":\"{body}\"}}");
            let mut e = RawEvent::default();
            match scan_line(&line, &mut e) {
                Ok(TopLevel::Single) => {
                    assert!(
                        matches!(e.id, StrField::Str(ref s) if s.len() == len),
                        "{len}"
                    )
                }
                _ => panic!("length {len} did not scan"),
            }
            if len > 0 {
                let bad = format!("{{\"other\":\"{}\u{1}\"}}", "x".repeat(len - 1));
                let at = bad.find('\u{1}').unwrap() + 1;
                match scan_line(&bad, &mut RawEvent::default()) {
                    Err(e) => assert_eq!((e.what, e.column), ("control character in a string", at)),
                    Ok(_) => panic!("length {len}: a control byte was missed"),
                }
            }
        }
    }
}
