//! The events dataset's rows (`run --events`): every valid event, as the parse tasks encode
//! it, kept on disk by month and in input order until the run knows what each row says.
//!
//! Two things are known only once reading has ended: whether an event that de-duplication
//! deferred (after it spilled) is a first delivery, and whether a repository push created its
//! repository (the ledger replays them in time order). So the consumer, which sees chunks in
//! input order, appends the rows of first deliveries and of deferred events to one temporary
//! file per month; de-duplication then names the deferred first deliveries by position
//! ([`DeferredFirsts`]) and the replay the pushes that created a repository by id
//! ([`Resolution::creates`]), and [`DatasetRows::each_row`] reads each month's file back with
//! both answers. Memory stays a write buffer per month, the ids of the creates (one per
//! repository made, as the ledger itself holds), and one bit per deferred event.

use crate::aggregate::short_name;
use crate::aggregate::sketch::PassThroughHasher;
use crate::classify::{EventKind, TrackedEvent};
use crate::parse::ValidEvent;
use crate::spill::{codec, SpillDir};
use crate::timestamp::Timestamp;
use chrono::{Datelike, NaiveDate};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// A month of the dataset: (year, month).
pub type Month = (i32, u32);

fn month_of(time: Timestamp) -> Month {
    let d = time.date();
    (d.year(), d.month())
}

/// How a row spells its event's kind (see [`EventKind`]); a repository push is resolved later.
fn kind_code(kind: EventKind) -> u8 {
    match kind {
        EventKind::PushTag => 1,
        EventKind::DeleteTag => 2,
        EventKind::ManifestDelete => 3,
        EventKind::DeleteRepository => 4,
        EventKind::RepositoryPush => 5,
        EventKind::Untracked | EventKind::Resolved(_) => 0,
    }
}

/// The length of a null string.
const NULL: u32 = u32::MAX;

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            codec::put_u32(out, s.len() as u32);
            out.extend_from_slice(s.as_bytes());
        }
        None => codec::put_u32(out, NULL),
    }
}

/// Appends one valid event's row: `line` is the line's number within its chunk, `index` its
/// position in an envelope, `user` its identity (SPEC §4) when the actor is a user.
pub fn encode_row(
    out: &mut Vec<u8>,
    event: &ValidEvent<'_>,
    kind: EventKind,
    id_key: u128,
    user: Option<&str>,
    line: u64,
    index: Option<u32>,
) {
    let start = out.len();
    codec::put_u32(out, 0);
    codec::put_u64(out, event.timestamp.secs as u64);
    codec::put_u32(out, event.timestamp.nanos);
    codec::put_u128(out, id_key);
    codec::put_u64(out, line);
    codec::put_u64(out, index.map_or(u64::MAX, u64::from));
    out.push(kind_code(kind));
    put_str(out, Some(&event.id));
    put_str(out, Some(&event.action));
    put_str(out, Some(&event.repository));
    put_str(out, event.tag.decode().as_deref());
    put_str(out, event.digest.decode().as_deref());
    put_str(out, event.media_type.decode().as_deref());
    put_str(out, user);
    put_str(out, event.name());
    put_str(out, event.user_type());
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// One row as encoded, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedRow<'a> {
    pub time: Timestamp,
    pub id_key: u128,
    /// Line within its chunk.
    pub line: u64,
    pub index: Option<u32>,
    kind: u8,
    pub id: &'a str,
    pub action: &'a str,
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
    pub media_type: Option<&'a str>,
    pub user: Option<&'a str>,
    pub actor_name: Option<&'a str>,
    pub actor_type: Option<&'a str>,
}

/// Reads rows off the front of a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(codec::corrupt("events row"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn str(&mut self) -> io::Result<Option<&'a str>> {
        let len = self.u32()?;
        if len == NULL {
            return Ok(None);
        }
        std::str::from_utf8(self.take(len as usize)?)
            .map(Some)
            .map_err(|_| codec::corrupt("events row text"))
    }
    fn text(&mut self) -> io::Result<&'a str> {
        self.str()?.ok_or_else(|| codec::corrupt("events row"))
    }
}

impl<'a> EncodedRow<'a> {
    /// The row at the front of `bytes` and the bytes after it.
    fn decode(bytes: &'a [u8]) -> io::Result<(EncodedRow<'a>, &'a [u8])> {
        let mut c = Cursor(bytes);
        let len = c.u32()? as usize;
        let mut r = Cursor(c.take(len)?);
        let row = EncodedRow {
            time: Timestamp {
                secs: r.u64()? as i64,
                nanos: r.u32()?,
            },
            id_key: u128::from_le_bytes(r.take(16)?.try_into().unwrap_or_default()),
            line: r.u64()?,
            index: u32::try_from(r.u64()?).ok(),
            kind: r.take(1)?[0],
            id: r.text()?,
            action: r.text()?,
            repository: r.text()?,
            tag: r.str()?,
            digest: r.str()?,
            media_type: r.str()?,
            user: r.str()?,
            actor_name: r.str()?,
            actor_type: r.str()?,
        };
        Ok((row, c.0))
    }
}

/// Frames of a month's file: a chunk's header, then rows of that chunk.
const HEADER: u8 = b'H';
const ROW: u8 = b'R';

/// A month's file being written.
struct MonthFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// The chunk whose header was written last, plus one (0: none yet).
    chunk: u64,
}

/// Where a chunk's rows come from, and which to keep.
pub struct ChunkRows<'a> {
    /// The input's position in the run.
    pub input: u32,
    /// Lines of the input before the chunk.
    pub lines_before: u64,
    /// De-duplication's position (see [`DeferredFirsts`]) of the chunk's first event, less one.
    pub position_base: u64,
    /// The chunk's rows, one per valid event.
    pub rows: &'a [u8],
}

/// The rows of first deliveries (and of deferred events), by month, in temporary files.
pub struct RowSpool {
    dir: PathBuf,
    months: BTreeMap<Month, MonthFile>,
    chunks: u64,
    /// A row's frame header, reused from row to row.
    frame: Vec<u8>,
}

impl RowSpool {
    pub fn new(dir: &SpillDir) -> RowSpool {
        RowSpool {
            dir: dir.path().to_path_buf(),
            months: BTreeMap::new(),
            chunks: 0,
            frame: Vec::with_capacity(32),
        }
    }

    /// Appends the rows of a chunk that `keep` says to keep (by position in the chunk).
    pub fn add_chunk(
        &mut self,
        chunk: ChunkRows<'_>,
        keep: impl Fn(usize) -> bool,
    ) -> io::Result<()> {
        self.chunks += 1;
        let mut rest = chunk.rows;
        let mut i = 0usize;
        while !rest.is_empty() {
            // Only the length and the time are read here: the row is checked when read back.
            let head = |at: usize, n: usize| {
                rest.get(at..at + n)
                    .ok_or_else(|| codec::corrupt("events row"))
            };
            let len = u32::from_le_bytes(head(0, 4)?.try_into().unwrap_or_default()) as usize;
            let secs = i64::from_le_bytes(head(4, 8)?.try_into().unwrap_or_default());
            let bytes = head(0, 4 + len)?;
            rest = &rest[4 + len..];
            let seq = i;
            i += 1;
            if !keep(seq) {
                continue;
            }
            let month = month_of(Timestamp { secs, nanos: 0 });
            if !self.months.contains_key(&month) {
                let path = self
                    .dir
                    .join(format!("events-{:04}-{:02}.rows", month.0, month.1));
                let file = File::create(&path).map_err(|e| crate::spill::spill_error(&path, e))?;
                self.months.insert(
                    month,
                    MonthFile {
                        path,
                        out: BufWriter::with_capacity(64 << 10, file),
                        chunk: 0,
                    },
                );
            }
            let Some(f) = self.months.get_mut(&month) else {
                continue;
            };
            let frame = &mut self.frame;
            frame.clear();
            if f.chunk != self.chunks {
                f.chunk = self.chunks;
                frame.push(HEADER);
                codec::put_u32(frame, chunk.input);
                codec::put_u64(frame, chunk.lines_before);
                codec::put_u64(frame, chunk.position_base);
            }
            frame.push(ROW);
            codec::put_u32(frame, seq as u32);
            let path = &f.path;
            f.out
                .write_all(frame)
                .and_then(|()| f.out.write_all(bytes))
                .map_err(|e| crate::spill::spill_error(path, e))?;
        }
        Ok(())
    }

    /// Ends writing: the months' files, in month order.
    pub fn finish(self) -> io::Result<Vec<(Month, PathBuf)>> {
        let mut months = Vec::with_capacity(self.months.len());
        for (month, f) in self.months {
            let MonthFile { path, out, .. } = f;
            out.into_inner()
                .map_err(io::IntoInnerError::into_error)
                .map_err(|e| crate::spill::spill_error(&path, e))?;
            months.push((month, path));
        }
        Ok(months)
    }
}

/// Which deferred events were first deliveries: one bit per de-duplication position from
/// `from` on.
#[derive(Debug, Default)]
pub struct DeferredFirsts {
    from: u64,
    bits: Vec<u64>,
}

impl DeferredFirsts {
    /// Deferred events are those at position `from` and later.
    pub fn new(from: u64) -> DeferredFirsts {
        DeferredFirsts {
            from,
            bits: Vec::new(),
        }
    }

    pub fn is_deferred(&self, position: u64) -> bool {
        position >= self.from
    }

    pub fn set(&mut self, position: u64) {
        let Some(at) = position.checked_sub(self.from) else {
            return;
        };
        let word = (at / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (at % 64);
    }

    fn get(&self, position: u64) -> bool {
        let at = position - self.from;
        self.bits
            .get((at / 64) as usize)
            .is_some_and(|w| w & (1 << (at % 64)) != 0)
    }
}

/// Ids (xxh3-128 of the event id) of repository pushes.
pub type IdKeys = HashSet<u128, BuildHasherDefault<PassThroughHasher>>;

/// What reading could not say of a row.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Repository pushes that created their repository (the others pushed to it).
    pub creates: IdKeys,
    /// Set once de-duplication spilled.
    pub deferred: Option<DeferredFirsts>,
}

/// A row as the dataset shows it.
#[derive(Debug)]
pub struct DatasetRow<'a> {
    pub row: EncodedRow<'a>,
    /// The tracked event, `manifest_delete`, or none.
    pub class: Option<&'static str>,
    pub counted: bool,
    pub file: &'a str,
    /// Line within the input.
    pub line: u64,
}

/// A run's rows, ready to be written.
#[derive(Debug)]
pub struct DatasetRows {
    pub months: Vec<(Month, PathBuf)>,
    pub resolution: Resolution,
    /// The inputs' names, by position.
    pub files: Vec<String>,
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
}

impl DatasetRows {
    /// Calls `each` with every row of `month`'s file that is a first delivery, in input order.
    pub fn each_row(
        &self,
        path: &std::path::Path,
        mut each: impl FnMut(&DatasetRow<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut input = BufReader::with_capacity(256 << 10, File::open(path)?);
        let (mut file, mut lines_before, mut base) = (0usize, 0u64, 0u64);
        let mut row_bytes = Vec::new();
        loop {
            let mut tag = [0u8; 1];
            match input.read(&mut tag)? {
                0 => return Ok(()),
                _ if tag[0] == HEADER => {
                    file = codec::get_u32(&mut input)? as usize;
                    lines_before = codec::get_u64(&mut input)?;
                    base = codec::get_u64(&mut input)?;
                    continue;
                }
                _ if tag[0] == ROW => {}
                _ => return Err(codec::corrupt("events frame")),
            }
            let seq = codec::get_u32(&mut input)?;
            let len = codec::get_u32(&mut input)?;
            row_bytes.clear();
            row_bytes.extend_from_slice(&len.to_le_bytes());
            row_bytes.resize(4 + len as usize, 0);
            input.read_exact(&mut row_bytes[4..])?;
            let (row, _) = EncodedRow::decode(&row_bytes)?;
            let position = base + u64::from(seq) + 1;
            if let Some(d) = &self.resolution.deferred {
                if d.is_deferred(position) && !d.get(position) {
                    continue;
                }
            }
            let tracked = match row.kind {
                1 => Some(TrackedEvent::PushTag),
                2 => Some(TrackedEvent::DeleteTag),
                4 => Some(TrackedEvent::DeleteRepository),
                5 if self.resolution.creates.contains(&row.id_key) => {
                    Some(TrackedEvent::CreateRepository)
                }
                5 => Some(TrackedEvent::PushRepository),
                _ => None,
            };
            let class = match row.kind {
                3 => Some("manifest_delete"),
                // The tracked event's short name, as `report` prints it: `push_tag`, ...
                _ => tracked.map(|t| short_name(t.metric_name())),
            };
            let date = row.time.date();
            let in_range =
                self.since.is_none_or(|s| date >= s) && self.until.is_none_or(|u| date < u);
            let out = DatasetRow {
                class,
                counted: tracked.is_some() && row.user.is_some() && in_range,
                file: self.files.get(file).map_or("", String::as_str),
                line: lines_before + row.line,
                row,
            };
            each(&out)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_line, ParsedLine};

    #[test]
    fn rows_read_back_as_written() {
        let line = br#"{"id":"e\u00e9","timestamp":"2023-01-25T14:45:54.123456789Z","action":"push","target":{"repository":"g/r","digest":"sha256:1","mediaType":"m"},"actor":{"name":"Root","user_type":"build"}}"#;
        let ParsedLine::Single(raw) = parse_line(line) else {
            panic!("not an event")
        };
        let e = raw.validate().unwrap();
        let mut out = Vec::new();
        encode_row(
            &mut out,
            &e,
            EventKind::RepositoryPush,
            7,
            Some("root"),
            3,
            None,
        );
        encode_row(&mut out, &e, EventKind::Untracked, 8, None, 4, Some(2));
        let (a, rest) = EncodedRow::decode(&out).unwrap();
        let (b, rest) = EncodedRow::decode(rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(a.id, "eé");
        assert_eq!(a.time, e.timestamp);
        assert_eq!((a.id_key, a.line, a.index, a.kind), (7, 3, None, 5));
        assert_eq!(
            (a.tag, a.digest, a.media_type),
            (None, Some("sha256:1"), Some("m"))
        );
        assert_eq!(
            (a.user, a.actor_name, a.actor_type),
            (Some("root"), Some("Root"), Some("build"))
        );
        assert_eq!(
            (b.id_key, b.line, b.index, b.kind, b.user),
            (8, 4, Some(2), 0, None)
        );
        // A cut row is an error, not a panic.
        for cut in 0..out.len() / 2 {
            assert!(EncodedRow::decode(&out[..cut]).is_err());
        }
    }

    #[test]
    fn deferred_firsts_are_bits_from_where_deferral_began() {
        let mut d = DeferredFirsts::new(100);
        assert!(!d.is_deferred(99));
        d.set(100);
        d.set(300);
        d.set(5);
        assert!(d.get(100) && d.get(300) && !d.get(101) && !d.get(1000));
    }
}
