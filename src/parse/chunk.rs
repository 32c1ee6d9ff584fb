//! Parsing a chunk: its lines to event records, rejects and the counts of every line.

use super::{
    is_blank, parse_line_into, parse_value_into, value_end, Element, ParsedLine, RawEvent,
};
use crate::classify::{actor_identity, actor_key, ActorKind, EventKind};
use crate::keys::{event_key, identity_coupon, identity_hash, repository_key, PassThroughHasher};
use crate::parse::jwt::jwt_actor_id;
use crate::read::{continues_record, Chunk, REJECT_TEXT_BYTES};
use crate::records::row::EncodedRow;
use crate::records::{Action, EventRecord, LineCounts, PathMap, Reject, ReportedUser};
use crate::timestamp::TimeWindow;
use datasketches::hll::Coupon;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Users reported for the Redis export, and the smallest JWT id reported for each.
type GitlabSeen = HashMap<u64, Option<u64>, BuildHasherDefault<PassThroughHasher>>;

/// Identity hashes.
type IdentitySeen = std::collections::HashSet<u64, BuildHasherDefault<PassThroughHasher>>;

thread_local! {
    /// The users this thread has reported in the chunks of the run it names: each user's
    /// coupon is computed and handed on once per thread and run, not once per event.
    static REPORTED: std::cell::RefCell<(u64, IdentitySeen)> = Default::default();
    /// The same for the Redis export's users ([`ChunkOutput::gitlab_users`]).
    static GITLAB_REPORTED: std::cell::RefCell<(u64, GitlabSeen)> = Default::default();
}

static NEXT_RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A number no other run in this process has, for [`ParseRules::run`].
pub fn new_run_id() -> u64 {
    NEXT_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The most rejects written for one line; past that they are counted, and one closing reject
/// says how many more the line held.
pub const MAX_REJECTS_PER_LINE: u32 = 1000;

/// Everything one chunk yields.
#[derive(Debug, Default)]
pub struct ChunkOutput {
    pub counts: LineCounts,
    /// Valid events in input order.
    pub events: Vec<EventRecord>,
    /// Their ids ([`EventRecord::id_key`]) apart, in the same order: de-duplication reads
    /// only these, 16 bytes an event instead of a cache line of each record.
    pub ids: Vec<u128>,
    pub rejects: Vec<Reject>,
    /// Paths of the repositories this chunk pushes to or deletes, by key.
    pub ledger_paths: PathMap,
    /// The users of events that can count in a user metric, each reported by the first chunk
    /// its thread parsed it in (the run's table of coupons learns them before the chunk is
    /// folded, so every such user's coupon is known when its events are).
    pub users: Vec<(u64, Coupon)>,
    /// With [`ParseRules::identities`]: the same users' identities, in the same order (a Spark
    /// task hands identities on, and the cell that counts a user computes its coupon).
    pub identities: Vec<(u64, Box<str>)>,
    keep_identities: bool,
    /// The users this chunk's thread has reported in this run, lent by [`REPORTED`].
    reported: IdentitySeen,
    /// Bytes of text the chunk held.
    pub bytes: u64,
    /// Rejects of the line being parsed, and how many past [`MAX_REJECTS_PER_LINE`].
    line_rejects: u32,
    line_rejects_dropped: u64,
    /// The times an event may carry.
    times: TimeWindow,
    /// With `run --events`: each valid event's row ([`EncodedRow`]), in order.
    pub rows: Vec<u8>,
    keep_rows: bool,
    /// With `run --redis`: counted users, each reported by the first chunk its thread parsed it
    /// in, and again whenever an event's JWT gives it a smaller id than reported (so that the
    /// smallest of all, whatever the threads, is what the fold keeps).
    pub gitlab_users: Vec<(u64, ReportedUser)>,
    /// The users this thread has reported for the Redis export, with the smallest JWT id,
    /// lent by [`GITLAB_REPORTED`]; `None` without the export.
    gitlab_reported: Option<GitlabSeen>,
}

impl ChunkOutput {
    /// Turns chunk-relative line numbers into input-relative ones.
    pub fn offset_lines(&mut self, lines_before: u64) {
        for r in &mut self.rejects {
            r.line += lines_before;
        }
    }
}

/// Lines parsed before the records of the rest of a chunk are reserved for.
const SAMPLE_LINES: u64 = 64;

/// Reserves room for the records of the whole chunk, estimated from those of its first
/// `read` bytes (an eighth more, for the spread of line lengths). Growing the vector by
/// doubling instead copied every record several times and faulted in fresh pages for each
/// copy: 5% of a run in the profile.
fn reserve_for_chunk(events: &mut Vec<EventRecord>, read: usize, total: usize) {
    if read == 0 {
        return;
    }
    let expected = events.len().saturating_mul(total) / read;
    events.reserve((expected + expected / 8).saturating_sub(events.len()));
}

/// How chunks are parsed: the run's limits.
#[derive(Clone, Copy, Debug)]
pub struct ParseRules {
    pub max_line_bytes: usize,
    /// Events stamped outside it are invalid.
    pub times: TimeWindow,
    /// The run, from [`new_run_id`]: what a thread reported in another run's chunks does not
    /// count as reported in this one's.
    pub run: u64,
    /// Encode each valid event's row for the events dataset.
    pub rows: bool,
    /// Report counted users with the GitLab id their JWT gives, for the Redis export.
    pub gitlab_users: bool,
    /// Report each counted user's identity beside its coupon ([`ChunkOutput::identities`]).
    pub identities: bool,
}

/// [`parse_chunk_into`] with no limit on times, for tests of the other rules.
pub fn parse_chunk(chunk: &Chunk, max_line_bytes: usize) -> ChunkOutput {
    let rules = ParseRules {
        max_line_bytes,
        times: TimeWindow::unbounded(),
        run: new_run_id(),
        rows: false,
        gitlab_users: false,
        identities: false,
    };
    parse_chunk_into(chunk, &rules, Vec::new())
}

/// [`parse_chunk`], its records written into `events` (emptied first): a vector recycled
/// from an earlier chunk, already the right size.
pub fn parse_chunk_into(
    chunk: &Chunk,
    rules: &ParseRules,
    mut events: Vec<EventRecord>,
) -> ChunkOutput {
    events.clear();
    let max_line_bytes = rules.max_line_bytes;
    let reported = REPORTED.with(|r| {
        let mut r = r.borrow_mut();
        if r.0 != rules.run {
            *r = (rules.run, IdentitySeen::default());
        }
        std::mem::take(&mut r.1)
    });
    let gitlab_reported = rules.gitlab_users.then(|| {
        GITLAB_REPORTED.with(|r| {
            let mut r = r.borrow_mut();
            if r.0 != rules.run {
                *r = (rules.run, HashMap::default());
            }
            std::mem::take(&mut r.1)
        })
    });
    let mut out = ChunkOutput {
        ids: Vec::with_capacity(events.capacity()),
        events,
        times: rules.times,
        keep_rows: rules.rows,
        keep_identities: rules.identities,
        reported,
        gitlab_reported,
        ..ChunkOutput::default()
    };
    parse_into(chunk, max_line_bytes, &mut out);
    REPORTED.with(|r| r.borrow_mut().1 = std::mem::take(&mut out.reported));
    if let Some(g) = out.gitlab_reported.take() {
        GITLAB_REPORTED.with(|r| r.borrow_mut().1 = g);
    }
    out
}

fn parse_into(chunk: &Chunk, max_line_bytes: usize, out: &mut ChunkOutput) {
    match chunk {
        Chunk::Overlong { prefix, len, lines } => {
            out.counts.lines = *lines;
            out.counts.malformed_lines = 1;
            out.rejects.push(Reject {
                line: 1,
                index: None,
                reason: too_long(*len, *lines, max_line_bytes),
                text: cut_text(prefix),
            });
        }
        Chunk::Lines(data) => {
            out.bytes = data.len() as u64;
            let body = data.strip_suffix(b"\n").unwrap_or(data);
            if data.is_empty() {
                return;
            }
            let mut reserve_at = SAMPLE_LINES;
            let mut start = 0;
            loop {
                // memchr finds newlines many bytes at a time; a byte loop here was a quarter
                // of the whole run's time.
                let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |p| start + p);
                if out.counts.lines >= reserve_at {
                    reserve_for_chunk(&mut out.events, start, body.len());
                    reserve_at = u64::MAX;
                }
                // A line the next one continues (the first of a pretty-printed body, or one
                // followed by blank lines) is read with them as one record.
                if end < body.len() && body.get(end + 1).is_none_or(|&b| continues_record(b)) {
                    let record_end = out.record(body, start, end, max_line_bytes);
                    if record_end == body.len() {
                        break;
                    }
                    start = record_end + 1;
                    continue;
                }
                out.counts.lines += 1;
                let line_no = out.counts.lines;
                let line = &body[start..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() > max_line_bytes {
                    let reason = too_long(line.len() as u64, 1, max_line_bytes);
                    out.malformed(line_no, line, reason);
                } else {
                    let mut single = RawEvent::default();
                    let parsed = parse_line_into(line, &mut single);
                    if matches!(&parsed, Some(ParsedLine::Malformed(r)) if r.starts_with(SEVERAL_VALUES))
                    {
                        // Values one after another on one line (bodies appended without a
                        // newline): read as a record, each value on its own.
                        out.counts.lines -= 1;
                        out.record(body, start, end, max_line_bytes);
                    } else {
                        out.value(line_no, line, parsed, &mut single);
                    }
                }
                out.end_line(line_no);
                if end == body.len() {
                    break;
                }
                start = end + 1;
            }
        }
    }
}

fn too_long(len: u64, lines: u64, max_line_bytes: usize) -> String {
    if lines == 1 {
        format!("line is {len} bytes, longer than --max-line-bytes {max_line_bytes}")
    } else {
        format!(
            "record of {lines} lines is {len} bytes, longer than --max-line-bytes {max_line_bytes}"
        )
    }
}

/// How a line's parse says that a value ends before the line does: the start of another
/// value, or anything else, which the record's reading then names.
const SEVERAL_VALUES: &str = "invalid JSON: trailing characters";

/// JSON's whitespace, which separates values and may fill a line.
fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl ChunkOutput {
    /// One parsed value, `text` starting on line `line_no`.
    #[inline(always)]
    fn value<'a>(
        &mut self,
        line_no: u64,
        text: &'a [u8],
        parsed: Option<ParsedLine<'a>>,
        single: &mut RawEvent<'a>,
    ) {
        match parsed {
            // `parse_line_into` leaves a single event in `single` instead (`None`); it is
            // borrowed, not moved: a move copied its few hundred bytes for every line.
            None => self.event(line_no, text, None, single),
            Some(ParsedLine::Blank) => self.counts.blank_lines += 1,
            Some(ParsedLine::Malformed(reason)) => self.malformed(line_no, text, reason),
            Some(ParsedLine::Single(mut event)) => self.event(line_no, text, None, &mut event),
            Some(ParsedLine::Envelope(elements)) => {
                let mut i = 0;
                for element in elements {
                    self.element(line_no, text, &mut i, element);
                }
            }
            Some(ParsedLine::LongEnvelope(long)) => {
                let mut i = 0;
                long.each(|element| self.element(line_no, text, &mut i, element));
            }
        }
    }

    /// The record that begins at `body[start]`, whose first line ends at `end`, read as a
    /// stream of JSON values, each placed on the line it starts on (SPEC §1, "Bodies as the
    /// registry sent them"); returns where the record ends (its last line's end). A value that
    /// is broken or cut short is one malformed record with the rest of the lines, and reading
    /// goes on at the next record.
    #[cold]
    fn record(
        &mut self,
        body: &[u8],
        start: usize,
        mut end: usize,
        max_line_bytes: usize,
    ) -> usize {
        // One walk over the record's lines, by memchr, finds where it ends (before a line that
        // begins a record) and counts its lines and its blank ones: a line of only whitespace
        // is blank wherever it stands, as in one value a line, and its first bytes tell it is
        // not. (A split with a closure went byte by byte, a third of the time of reading
        // bodies.)
        let (mut lines, mut blank, mut line_start) = (0u64, 0u64, start);
        loop {
            lines += 1;
            blank += u64::from(is_blank(&body[line_start..end]));
            if end == body.len() || body.get(end + 1).is_some_and(|&b| !continues_record(b)) {
                break;
            }
            line_start = end + 1;
            end = memchr::memchr(b'\n', &body[line_start..]).map_or(body.len(), |p| line_start + p);
        }
        let text = &body[start..end];
        let first = self.counts.lines + 1;
        let len = text.strip_suffix(b"\r").unwrap_or(text).len();
        self.counts.lines += lines;
        if len > max_line_bytes {
            self.malformed(first, text, too_long(len as u64, lines, max_line_bytes));
            self.end_line(first);
            return end;
        }
        self.counts.blank_lines += blank;
        let mut pos = 0;
        let mut line_no = first;
        loop {
            while let Some(&b) = text.get(pos).filter(|&&b| is_json_space(b)) {
                line_no += u64::from(b == b'\n');
                pos += 1;
            }
            if pos == text.len() {
                return end;
            }
            let Some(stop) = value_end(text, pos) else {
                let rest = &text[pos..];
                let reason = format!(
                    "JSON value cut short: it does not end before line {}, which begins a new record",
                    first + lines
                );
                self.malformed(line_no, rest, reason);
                self.end_line(line_no);
                return end;
            };
            let value = &text[pos..stop];
            let mut single = RawEvent::default();
            let parsed = parse_value_into(value, line_no, &mut single);
            let broken = matches!(parsed, Some(ParsedLine::Malformed(_)));
            self.value(line_no, value, parsed, &mut single);
            self.end_line(line_no);
            if broken {
                return end;
            }
            line_no += memchr::memchr_iter(b'\n', value).count() as u64;
            pos = stop;
        }
    }

    fn malformed(&mut self, line_no: u64, line: &[u8], reason: String) {
        self.counts.malformed_lines += 1;
        self.reject(line_no, line, None, reason);
    }

    fn invalid(&mut self, line_no: u64, line: &[u8], index: Option<u32>, reason: String) {
        self.counts.invalid_events += 1;
        self.reject(line_no, line, index, reason);
    }

    /// Keeps a reject of the current line: its text only with the first, and at most
    /// [`MAX_REJECTS_PER_LINE`] of them (one envelope line can hold millions of bad elements).
    fn reject(&mut self, line_no: u64, line: &[u8], index: Option<u32>, reason: String) {
        if self.line_rejects == MAX_REJECTS_PER_LINE {
            self.line_rejects_dropped += 1;
            return;
        }
        let text = if self.line_rejects == 0 {
            cut_text(line)
        } else {
            String::new()
        };
        self.line_rejects += 1;
        self.rejects.push(Reject {
            line: line_no,
            index,
            reason,
            text,
        });
    }

    /// Closes a line: one more reject says how many were counted but not written.
    fn end_line(&mut self, line_no: u64) {
        if self.line_rejects_dropped > 0 {
            self.rejects.push(Reject {
                line: line_no,
                index: None,
                reason: format!(
                    "{} more invalid events in this line were counted but not written (at most {MAX_REJECTS_PER_LINE} rejects are written per line)",
                    self.line_rejects_dropped
                ),
                text: String::new(),
            });
        }
        self.line_rejects = 0;
        self.line_rejects_dropped = 0;
    }

    /// One element of an envelope, the `*index`-th.
    fn element(&mut self, line_no: u64, line: &[u8], index: &mut u32, element: Element<'_>) {
        let at = Some(*index);
        *index = index.saturating_add(1);
        match element {
            Element::Event(mut event) => self.event(line_no, line, at, &mut event),
            Element::NotObject => {
                self.invalid(line_no, line, at, "event is not a JSON object".into())
            }
        }
    }

    fn event(&mut self, line_no: u64, line: &[u8], index: Option<u32>, event: &mut RawEvent<'_>) {
        let event = match event.take_valid() {
            Ok(e) => e,
            Err(why) => return self.invalid(line_no, line, index, why.to_string()),
        };
        if !self.times.contains(event.timestamp) {
            self.counts.implausible_times += 1;
            let why = self.times.refusal(event.timestamp);
            return self.invalid(line_no, line, index, why);
        }
        self.counts.events_seen += 1;
        let kind = EventKind::classify(&event.action, event.has_tag, event.has_digest);
        let repository = repository_key(&event.repository);
        let touches_ledger = kind.is_push() || kind == EventKind::DeleteRepository;
        if touches_ledger {
            self.ledger_paths.insert(repository, &event.repository);
        }
        let counts_for_users = kind.tracked().is_some() || kind == EventKind::RepositoryPush;
        let actor = actor_identity(event.user_type(), event.name());
        let user = actor.as_ref().map(|(identity, _)| {
            let hash = identity_hash(identity);
            if counts_for_users && self.reported.insert(hash) {
                self.users.push((hash, identity_coupon(identity)));
                if self.keep_identities {
                    self.identities.push((hash, identity.as_ref().into()));
                }
            }
            hash
        });
        let deploy_token = matches!(actor, Some((_, ActorKind::DeployToken)));
        if let (Some(reported), Some(hash), Some((name, actor_kind)), true) =
            (&mut self.gitlab_reported, user, &actor, counts_for_users)
        {
            let hash = actor_key(hash, *actor_kind);
            let before = reported.get(&hash).copied();
            let jwt_id = event
                .actor_user
                .decode()
                .and_then(|t| jwt_actor_id(&t, *actor_kind));
            let smaller = match (before, jwt_id) {
                (None, _) => true,
                (Some(None), Some(_)) => true,
                (Some(Some(old)), Some(new)) => new < old,
                (Some(_), None) => false,
            };
            if smaller {
                reported.insert(hash, jwt_id.or(before.flatten()));
                let name = name.as_ref().into();
                self.gitlab_users
                    .push((hash, ReportedUser { name, jwt_id }));
            }
        }
        let id_key = event_key(event.id.as_bytes());
        if self.keep_rows {
            let (tag, digest) = (event.tag.decode(), event.digest.decode());
            let media_type = event.media_type.decode();
            let row = EncodedRow {
                time: event.timestamp,
                id_key,
                line: line_no,
                index,
                kind: kind.code(),
                id: &event.id,
                action: &event.action,
                repository: &event.repository,
                tag: tag.as_deref(),
                digest: digest.as_deref(),
                media_type: media_type.as_deref(),
                user: actor.as_ref().and_then(|(identity, kind)| {
                    (*kind == ActorKind::User).then_some(identity.as_ref())
                }),
                deploy_token: actor.as_ref().and_then(|(identity, kind)| {
                    (*kind == ActorKind::DeployToken).then_some(identity.as_ref())
                }),
                actor_name: event.name(),
                actor_type: event.user_type(),
            };
            row.encode(&mut self.rows);
        }
        self.ids.push(id_key);
        self.events.push(EventRecord {
            id_key,
            time: event.timestamp,
            action: Action::new(&event.action),
            kind,
            user,
            deploy_token,
            repository,
            ledger_id: touches_ledger.then(|| (*event.id).into()),
        });
    }
}

/// The first KiB of a line as text, cut at a character boundary; invalid UTF-8 is replaced.
pub fn cut_text(line: &[u8]) -> String {
    let cut = &line[..line.len().min(REJECT_TEXT_BYTES)];
    let text = String::from_utf8_lossy(cut);
    match std::str::from_utf8(cut) {
        // A multi-byte character split by the cut shows as one replacement character: drop it.
        Err(e) if e.error_len().is_none() && line.len() > REJECT_TEXT_BYTES => {
            String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned()
        }
        _ => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::LedgerId;

    const EV: &str = r#"{"id":"e1","timestamp":"2023-01-25T14:45:54Z","action":"push","target":{"repository":"g/r","tag":"v1"},"actor":{"name":"Root","user_type":"build"}}"#;

    fn lines(text: &str) -> ChunkOutput {
        parse_chunk(&Chunk::Lines(text.as_bytes().to_vec()), 1 << 20)
    }

    #[test]
    fn every_line_is_accounted_for() {
        let text = format!("{EV}\r\n\n   \nnot json\n{{\"events\":[{EV},{{}},3]}}\n{EV}");
        let out = lines(&text);
        assert_eq!(
            out.counts,
            LineCounts {
                lines: 6,
                blank_lines: 2,
                malformed_lines: 1,
                invalid_events: 2,
                implausible_times: 0,
                events_seen: 3,
            }
        );
        let where_: Vec<(u64, Option<u32>)> =
            out.rejects.iter().map(|r| (r.line, r.index)).collect();
        assert_eq!(where_, [(4, None), (5, Some(1)), (5, Some(2))]);
        assert_eq!(out.rejects[0].text, "not json");
        assert_eq!(out.events.len(), 3);
        assert_eq!(out.events[0].kind, EventKind::PushTag);
        assert_eq!(out.events[0].user, Some(identity_hash("root")));
        assert_eq!(
            out.events[0].ledger_id.as_ref().map(LedgerId::as_str),
            Some("e1")
        );
        assert_eq!(out.ledger_paths.len(), 1);
    }

    /// A chunk is checked for UTF-8 at once; one that fails is checked line by line, and only
    /// the line at fault is malformed: the others come out as they do in a valid chunk.
    #[test]
    fn a_line_that_is_not_utf8_spoils_only_itself() {
        let good = format!(
            "{EV}\r\n\n{{\"events\":[{EV},3]}}\n{}",
            EV.replace("Root", "Rööt")
        );
        let valid = lines(&good);
        let mut data = good.into_bytes();
        let second = data.iter().position(|&b| b == b'\n').unwrap() + 1;
        data.splice(second..second, b"{\"id\":\"\xff\"}\r\n".iter().copied());
        let out = parse_chunk(&Chunk::Lines(data), 1 << 20);
        assert_eq!(
            (out.counts.lines, out.counts.malformed_lines),
            (valid.counts.lines + 1, valid.counts.malformed_lines + 1)
        );
        assert_eq!(out.counts.events_seen, valid.counts.events_seen);
        assert_eq!(format!("{:?}", out.events), format!("{:?}", valid.events));
        let reasons: Vec<(u64, &str)> = out
            .rejects
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (2, "line is not valid UTF-8"),
                (4, "event is not a JSON object")
            ]
        );
    }

    #[test]
    fn a_chunk_reserves_its_records_from_its_first_lines() {
        let line = r#"{"id":"x","timestamp":"2021-01-05T10:00:00Z","action":"pull","target":{"repository":"g/r","tag":"t"},"actor":{"name":"u"}}"#;
        let lines: Vec<String> = (0..1000)
            .map(|i| line.replace("\"x\"", &format!("\"{i}\"")))
            .collect();
        let data = lines.join("\n").into_bytes();
        let out = parse_chunk(&Chunk::Lines(data), 1 << 20);
        assert_eq!(out.events.len(), 1000);
        // Reserved once for about 1000 records and an eighth, not grown by doubling to 1024.
        assert!(
            (1100..=1200).contains(&out.events.capacity()),
            "{}",
            out.events.capacity()
        );
        let mut none = Vec::new();
        reserve_for_chunk(&mut none, 0, 100);
        assert_eq!(none.capacity(), 0);
    }

    /// With the Redis export, each counted user or deploy token is reported once per thread,
    /// and again by each event whose JWT gives it a smaller id than reported; uncounted actors
    /// never. A deploy token is reported apart from a user of its name, with the JWT's
    /// `deploy_token_id`.
    #[test]
    fn gitlab_users_are_reported_once_and_again_with_an_id() {
        let jwt5 = "eyJhbGciOiJSUzI1NiJ9.eyJ1c2VyX2luZm8iOiB7InVzZXJfaWQiOiA1fX0.c2ln";
        let jwt6 = "eyJhbGciOiJSUzI1NiJ9.eyJ1c2VyX2luZm8iOiB7InVzZXJfaWQiOiA2fX0.c2ln";
        let token9 = "eyJhbGciOiJSUzI1NiJ9.eyJ1c2VyX2luZm8iOiB7ImRlcGxveV90b2tlbl9pZCI6IDl9fQ.c2ln";
        let ev = |id: &str, name: &str, user_type: &str, jwt: Option<&str>| {
            let user = jwt.map_or(String::new(), |t| format!(r#","user":"{t}""#));
            format!(
                r#"{{"id":"{id}","timestamp":"2023-01-25T14:45:54Z","action":"push","target":{{"repository":"g/r","tag":"v1"}},"actor":{{"name":"{name}","user_type":"{user_type}"{user}}}}}"#
            )
        };
        let text = [
            ev("1", "Ann", "build", None),
            ev("2", "ann", "build", Some(jwt5)),
            ev("3", "ann", "build", Some(jwt6)),
            ev("4", "bob", "build", Some(jwt6)),
            ev("6", "bob", "build", Some(jwt5)),
            ev("5", "bot", "deploy_token", Some(jwt5)),
            ev("7", "ANN", "deploy_token", Some(token9)),
            ev("8", "eve", "other", Some(jwt5)),
        ]
        .join("\n");
        let rules = ParseRules {
            max_line_bytes: 1 << 20,
            times: TimeWindow::unbounded(),
            run: new_run_id(),
            rows: false,
            gitlab_users: true,
            identities: false,
        };
        let out = parse_chunk_into(&Chunk::Lines(text.into_bytes()), &rules, Vec::new());
        let got: Vec<(u64, Option<u64>, &str)> = out
            .gitlab_users
            .iter()
            .map(|(h, u)| (*h, u.jwt_id, &*u.name))
            .collect();
        let (ann, bob) = (identity_hash("ann"), identity_hash("bob"));
        let token = |name| actor_key(identity_hash(name), ActorKind::DeployToken);
        assert_eq!(
            got,
            [
                (ann, None, "ann"),
                (ann, Some(5), "ann"),
                (bob, Some(6), "bob"),
                (bob, Some(5), "bob"),
                (token("bot"), None, "bot"),
                (token("ann"), Some(9), "ann"),
            ]
        );
    }

    /// An envelope of many bad elements writes its text once and at most
    /// `MAX_REJECTS_PER_LINE` rejects, then one that says how many more there were; every
    /// invalid event is counted.
    #[test]
    fn rejects_of_one_line_are_capped_and_carry_its_text_once() {
        let n = MAX_REJECTS_PER_LINE as usize + 500;
        let mut elements = vec!["{}"; n];
        elements[3] = EV;
        let line = format!("{{\"events\":[{}]}}\nnot json\n", elements.join(","));
        let out = lines(&line);
        assert_eq!(out.counts.invalid_events, n as u64 - 1);
        assert_eq!(out.counts.malformed_lines, 1);
        assert_eq!(out.events.len(), 1);
        let first_line: Vec<&Reject> = out.rejects.iter().filter(|r| r.line == 1).collect();
        assert_eq!(first_line.len(), MAX_REJECTS_PER_LINE as usize + 1);
        assert!(first_line[0].text.starts_with("{\"events\":[{},{}"));
        assert!(first_line[1..].iter().all(|r| r.text.is_empty()));
        assert_eq!(first_line[3].index, Some(4), "element 3 was valid");
        let last = first_line.last().unwrap();
        assert_eq!(last.index, None);
        assert!(
            last.reason.starts_with("499 more invalid events"),
            "{}",
            last.reason
        );
        // The next line starts afresh.
        assert_eq!(out.rejects.last().unwrap().text, "not json");
    }

    /// With `--events`, each valid event's row holds its fields as written (escapes decoded),
    /// its identity, kind and where it is.
    #[test]
    fn rows_hold_each_valid_events_fields() {
        let line = r#"{"id":"e\u00e9","timestamp":"2023-01-25T14:45:54.123456789Z","action":"push","target":{"repository":"g/r","digest":"sha256:1","mediaType":"m"},"actor":{"name":"Root","user_type":"build"}}"#;
        let text = format!("{line}\n{{\"events\":[{{}},{EV}]}}\n");
        let rules = ParseRules {
            max_line_bytes: 1 << 20,
            times: TimeWindow::unbounded(),
            run: new_run_id(),
            rows: true,
            gitlab_users: false,
            identities: false,
        };
        let out = parse_chunk_into(&Chunk::Lines(text.into_bytes()), &rules, Vec::new());
        let (a, rest) = EncodedRow::decode(&out.rows).unwrap();
        let (b, rest) = EncodedRow::decode(rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(a.id, "eé");
        assert_eq!(a.time, out.events[0].time);
        assert_eq!(a.id_key, out.events[0].id_key);
        assert_eq!((a.line, a.index, a.kind), (1, None, 5));
        assert_eq!(
            (a.tag, a.digest, a.media_type),
            (None, Some("sha256:1"), Some("m"))
        );
        assert_eq!(
            (a.user, a.actor_name, a.actor_type),
            (Some("root"), Some("Root"), Some("build"))
        );
        assert_eq!(
            (b.id, b.line, b.index, b.kind, b.tag),
            ("e1", 2, Some(1), 1, Some("v1"))
        );
    }

    #[test]
    fn trailing_newline_adds_no_line() {
        assert_eq!(lines("a\n").counts.lines, 1);
        assert_eq!(lines("a").counts.lines, 1);
        assert_eq!(lines("").counts.lines, 0);
        assert_eq!(lines("\n").counts.lines, 1);
    }

    /// Each line's rejects start afresh after an over-long line: the next one has its text.
    #[test]
    fn a_line_after_an_overlong_one_has_its_own_text() {
        let text = format!("{}\nnot json\n{}\n", "x".repeat(50), "y".repeat(50));
        let out = parse_chunk(&Chunk::Lines(text.into_bytes()), 20);
        let texts: Vec<&str> = out.rejects.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            ["x".repeat(50).as_str(), "not json", "y".repeat(50).as_str()]
        );
    }

    #[test]
    fn overlong_lines_are_malformed() {
        let out = parse_chunk(&Chunk::Lines(format!("{EV}\n").into_bytes()), 10);
        assert_eq!(out.counts.malformed_lines, 1);
        assert!(out.rejects[0]
            .reason
            .contains("longer than --max-line-bytes 10"));
        let out = parse_chunk(
            &Chunk::Overlong {
                prefix: b"{\"a".to_vec(),
                len: 99,
                lines: 1,
            },
            10,
        );
        assert_eq!((out.counts.lines, out.counts.malformed_lines), (1, 1));
    }

    #[test]
    fn reject_text_is_cut_at_a_character() {
        let long = "é".repeat(600);
        let cut = cut_text(long.as_bytes());
        assert_eq!(cut.len(), 1024);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = "a".repeat(1023) + "é";
        assert_eq!(cut_text(odd.as_bytes()), "a".repeat(1023));
        assert_eq!(cut_text(b"bad \xff byte"), "bad \u{fffd} byte");
    }

    #[test]
    fn line_offsets_apply_to_rejects() {
        let mut out = lines("x\n");
        out.offset_lines(41);
        assert_eq!(out.rejects[0].line, 42);
    }

    /// Mutated lines (bytes flipped, cut, duplicated, spliced) never panic, and every line is
    /// accounted for exactly once: blank, malformed, or holding events valid or invalid.
    #[test]
    fn mutated_input_never_panics_and_is_fully_accounted() {
        let seed_lines = [
            EV.to_owned(),
            format!("{{\"events\":[{EV},{EV}]}}"),
            r#"{"id":"é\u0026","timestamp":"2023-01-25T14:45:54.1+05:30","action":"delete","target":{"repository":"a/b","digest":"x"},"actor":{"name":"ÉLODIE","user_type":"gitlab_or_ldap"}}"#.to_owned(),
        ];
        let mut next = crate::test_support::seeded(0x9E37_79B9_7F4A_7C15u64);
        for _ in 0..3000 {
            let mut line = seed_lines[(next() % 3) as usize].clone().into_bytes();
            for _ in 0..1 + next() % 4 {
                if line.is_empty() {
                    break;
                }
                let at = (next() % line.len() as u64) as usize;
                match next() % 5 {
                    0 => line[at] = (next() % 256) as u8,
                    1 => line.truncate(at),
                    2 => {
                        let noise = b"{}[]\",:0e-\\\xff\x00";
                        line.insert(at, noise[(next() % noise.len() as u64) as usize]);
                    }
                    3 => {
                        let piece = line[at..].to_vec();
                        line.extend_from_slice(&piece);
                    }
                    _ => {
                        line.remove(at);
                    }
                }
            }
            line.retain(|b| *b != b'\n');
            line.push(b'\n');
            let out = parse_chunk(&Chunk::Lines(line.clone()), 1 << 20);
            let c = out.counts;
            assert_eq!(c.lines, 1, "{:?}", String::from_utf8_lossy(&line));
            // A line is blank, or values whose events are each valid or invalid, the last of
            // them perhaps malformed (the rest of the line with it).
            let whole_line = c.blank_lines + c.malformed_lines;
            assert!(whole_line <= 1, "{:?}", String::from_utf8_lossy(&line));
            if c.blank_lines == 1 {
                assert_eq!(c.events_seen + c.invalid_events, 0);
            }
            assert_eq!(out.events.len() as u64, c.events_seen);
            assert_eq!(
                out.rejects.len() as u64,
                c.malformed_lines + c.invalid_events
            );
        }
    }

    /// `{"events": [EV with id `id`]}` as the registry's `json.MarshalIndent(.., "", "   ")`
    /// writes it.
    fn pretty(id: &str) -> String {
        let event: serde_json::Value =
            serde_json::from_str(&EV.replace("\"e1\"", &format!("\"{id}\""))).unwrap();
        let envelope = serde_json::json!({ "events": [event] });
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        serde::Serialize::serialize(&envelope, &mut ser).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn ids(out: &ChunkOutput) -> Vec<u128> {
        out.ids.clone()
    }

    #[test]
    fn bodies_over_many_lines_are_values_placed_on_their_first_line() {
        let (a, b, c) = (pretty("a"), pretty("b"), pretty("c"));
        let a_lines = a.lines().count() as u64;
        // With a newline, a blank line, and nothing between them; CRLF in the last.
        let text = format!("{a}\n\n{b}{c}\r\n{EV}\n").replace("\"c\"", "\"c\"\r");
        let out = lines(&text);
        let expected = ["a", "b", "c", "e1"].map(|id| event_key(id.as_bytes()));
        assert_eq!(ids(&out), expected);
        assert_eq!(out.counts.lines, text.lines().count() as u64);
        assert_eq!(out.counts.blank_lines, 1);
        assert_eq!(out.counts.malformed_lines + out.counts.invalid_events, 0);
        // The same events one a line.
        let jsonl = ["a", "b", "c"]
            .map(|id| {
                serde_json::to_string(
                    &serde_json::from_str::<serde_json::Value>(&pretty(id)).unwrap(),
                )
                .unwrap()
            })
            .join("\n");
        assert_eq!(ids(&lines(&jsonl)), expected[..3]);
        // An invalid event in the second body is placed on the body's first line.
        let bad = pretty("b").replace("\"push\"", "7");
        let out = lines(&format!("{a}\n{bad}\n"));
        assert_eq!(out.counts.invalid_events, 1);
        assert_eq!(out.rejects[0].line, a_lines + 1);
        assert_eq!(out.rejects[0].index, Some(0));
        assert!(out.rejects[0].text.starts_with("{\n   \"events\""));
    }

    #[test]
    fn a_cut_or_broken_body_is_one_malformed_record_and_the_next_is_read() {
        let (a, b) = (pretty("a"), pretty("b"));
        let a_lines = a.lines().count();
        for cut in [1, 2, a.len() / 2, a.len() - 1] {
            let text = format!("{}\n{b}\n", &a[..cut]);
            let out = lines(&text);
            assert_eq!(ids(&out), [event_key(b"b")], "cut at {cut}");
            assert_eq!(out.counts.malformed_lines, 1, "cut at {cut}");
            assert_eq!(out.rejects[0].line, 1);
            assert!(
                out.rejects[0].reason.contains("cut short")
                    || out.rejects[0].reason.contains("invalid JSON"),
                "{}",
                out.rejects[0].reason
            );
            assert_eq!(out.counts.lines, text.lines().count() as u64);
        }
        // Broken inside, not cut: the error is placed by line and column.
        let broken = a.replace("\"push\",", "\"push\" x");
        let out = lines(&format!("{broken}\n{b}\n"));
        assert_eq!(ids(&out), [event_key(b"b")]);
        let line = 1 + broken.lines().position(|l| l.contains(" x")).unwrap();
        assert!(
            out.rejects[0]
                .reason
                .contains(&format!("at line {line}, column")),
            "{}",
            out.rejects[0].reason
        );
        // A body longer than the limit, arrived whole.
        let out = parse_chunk(&Chunk::Lines(format!("{a}\n{b}\n").into_bytes()), 100);
        assert_eq!(out.counts.malformed_lines, 2);
        assert_eq!(out.rejects[1].line, a_lines as u64 + 1);
        assert!(out.rejects[0]
            .reason
            .starts_with(&format!("record of {a_lines} lines is")));
    }

    #[test]
    fn values_on_one_line_are_each_read() {
        let out = lines(&format!("{EV} {EV}{EV}\n \"x\"\n"));
        assert_eq!(out.counts.events_seen, 3);
        assert_eq!(out.counts.malformed_lines, 1);
        assert_eq!(out.rejects[0].line, 2);
        assert_eq!(out.counts.lines, 2);
        // On a line of their own, followed by a line that begins a record; then a value
        // followed by something that is not one.
        let out = lines(&format!("{EV}{EV}\n{EV}\n{EV} x\n"));
        assert_eq!(out.counts.events_seen, 4);
        assert_eq!(out.counts.malformed_lines, 1);
        assert_eq!((out.rejects[0].line, out.counts.lines), (3, 3));
    }
}
