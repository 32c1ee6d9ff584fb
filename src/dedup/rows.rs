//! The events dataset's rows (`run --events`) of first deliveries, kept on disk by month and in
//! input order until the run knows what each row says.
//!
//! Two things are known only once reading has ended: whether an event that de-duplication
//! deferred (after it spilled) is a first delivery, and whether a repository push created its
//! repository (the ledger replays them in time order). So the consumer, which sees chunks in
//! input order, appends the rows of first deliveries and of deferred events to one temporary
//! file per month; de-duplication then names the deferred first deliveries by position
//! ([`DeferredFirsts`]) and the ledger's replay the pushes that created a repository, and the
//! dataset's writer reads each month's file back with both answers ([`SpooledRow`]). Memory
//! stays a write buffer per month, the ids of the creates, and one bit per deferred event.

use crate::records::row::{EncodedRow, Month};
use crate::spill::{codec, spill_error, SpillDir};
use crate::timestamp::DateCache;
use chrono::Datelike;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

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
    /// Rows' dates: a calendar date worked out anew for every row was 1% of the reading's time.
    dates: DateCache,
}

impl RowSpool {
    pub fn new(dir: &SpillDir) -> RowSpool {
        RowSpool {
            dir: dir.path().to_path_buf(),
            months: BTreeMap::new(),
            chunks: 0,
            frame: Vec::with_capacity(32),
            dates: DateCache::default(),
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
            let (len, time) = EncodedRow::peek_len_and_time(rest)?;
            let bytes = &rest[..len];
            rest = &rest[len..];
            let seq = i;
            i += 1;
            if !keep(seq) {
                continue;
            }
            let date = self.dates.date(time);
            let month = (date.year(), date.month());
            if !self.months.contains_key(&month) {
                let path = self
                    .dir
                    .join(format!("events-{:04}-{:02}.rows", month.0, month.1));
                let file = File::create(&path).map_err(|e| spill_error(&path, e))?;
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
                .map_err(|e| spill_error(path, e))?;
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
                .map_err(|e| spill_error(&path, e))?;
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

    /// Whether the event at `position` is a first delivery, as far as deferral goes: an event
    /// before deferral began was decided when it was read.
    pub fn is_first(&self, position: u64) -> bool {
        !self.is_deferred(position) || self.get(position)
    }
}

/// A row read back from a month's file, with where it came from.
#[derive(Debug)]
pub struct SpooledRow<'a> {
    pub row: EncodedRow<'a>,
    /// The input's position in the run.
    pub input: usize,
    /// The line within the input.
    pub line: u64,
    /// De-duplication's position of the row's event (see [`DeferredFirsts`]).
    pub position: u64,
}

/// A month's file read back a row at a time, in input order.
pub struct SpooledRows {
    input: BufReader<File>,
    /// The input, lines before and de-duplication's position base of the chunk being read.
    chunk: (usize, u64, u64),
    /// The row being read: its rows borrow their texts from it.
    row_bytes: Vec<u8>,
}

impl SpooledRows {
    pub fn open(path: &Path) -> io::Result<SpooledRows> {
        Ok(SpooledRows {
            input: BufReader::with_capacity(256 << 10, File::open(path)?),
            chunk: (0, 0, 0),
            row_bytes: Vec::new(),
        })
    }

    /// The next row whose de-duplication position `keep` takes (see [`DeferredFirsts`]), or
    /// none at the file's end.
    pub fn next_row(&mut self, keep: impl Fn(u64) -> bool) -> io::Result<Option<SpooledRow<'_>>> {
        let input = &mut self.input;
        let (position, len) = loop {
            let mut tag = [0u8; 1];
            match input.read(&mut tag)? {
                0 => return Ok(None),
                _ if tag[0] == HEADER => {
                    self.chunk = (
                        codec::get_u32(input)? as usize,
                        codec::get_u64(input)?,
                        codec::get_u64(input)?,
                    );
                }
                _ if tag[0] == ROW => {
                    let position = self.chunk.2 + u64::from(codec::get_u32(input)?) + 1;
                    let len = codec::get_u32(input)?;
                    if keep(position) {
                        break (position, len);
                    }
                    let skipped =
                        io::copy(&mut input.by_ref().take(u64::from(len)), &mut io::sink())?;
                    if skipped != u64::from(len) {
                        return Err(crate::records::row::corrupt("row"));
                    }
                }
                _ => return Err(crate::records::row::corrupt("frame")),
            }
        };
        let row_bytes = &mut self.row_bytes;
        row_bytes.clear();
        row_bytes.extend_from_slice(&len.to_le_bytes());
        row_bytes.resize(4 + len as usize, 0);
        input.read_exact(&mut row_bytes[4..])?;
        let (row, _) = EncodedRow::decode(row_bytes)?;
        let (file, lines_before, _) = self.chunk;
        Ok(Some(SpooledRow {
            input: file,
            line: lines_before + row.line,
            position,
            row,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_firsts_are_bits_from_where_deferral_began() {
        let mut d = DeferredFirsts::new(100);
        assert!(!d.is_deferred(99));
        d.set(100);
        d.set(300);
        d.set(5);
        assert!(d.get(100) && d.get(300) && !d.get(101) && !d.get(1000));
        assert!(d.is_first(99) && d.is_first(100) && !d.is_first(101));
    }

    fn row(id: &str, secs: i64, line: u64) -> EncodedRow<'_> {
        let time = crate::timestamp::Timestamp { secs, nanos: 0 };
        EncodedRow {
            line,
            ..EncodedRow::bare(id, time, crate::classify::EventKind::Untracked)
        }
    }

    /// Rows come back by month, in input order, with their input, line and position; those
    /// `keep` refuses are skipped whole, so the rows after them still read back.
    #[test]
    fn spooled_rows_read_back_by_month_skipping_those_not_kept() {
        let parent = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(parent.path(), &[]).unwrap();
        let mut spool = RowSpool::new(&dir);
        let (jan, feb) = (1_673_000_000, 1_676_000_000);
        let chunks = [
            (
                0,
                0,
                vec![row("a", jan, 1), row("b", feb, 2), row("c", jan, 3)],
            ),
            (1, 10, vec![row("d", jan, 1), row("e", jan, 2)]),
        ];
        let mut position_base = 0;
        for (input, lines_before, rows) in &chunks {
            let mut bytes = Vec::new();
            rows.iter().for_each(|r| r.encode(&mut bytes));
            let chunk = ChunkRows {
                input: *input,
                lines_before: *lines_before,
                position_base,
                rows: &bytes,
            };
            // The chunk's second row is a later delivery: it never reaches the spool.
            spool.add_chunk(chunk, |i| i != 1 || *input == 0).unwrap();
            position_base += rows.len() as u64;
        }
        let months = spool.finish().unwrap();
        assert_eq!(
            months.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            [(2023, 1), (2023, 2)]
        );
        let read = |path: &Path, keep: &dyn Fn(u64) -> bool| {
            let mut rows = SpooledRows::open(path).unwrap();
            let mut all = Vec::new();
            while let Some(r) = rows.next_row(keep).unwrap() {
                all.push((r.row.id.to_owned(), r.input, r.line, r.position));
            }
            all
        };
        let at = |id: &str, input, line, position| (id.to_owned(), input, line, position);
        assert_eq!(
            read(&months[0].1, &|_| true),
            [at("a", 0, 1, 1), at("c", 0, 3, 3), at("d", 1, 11, 4)]
        );
        assert_eq!(
            read(&months[0].1, &|p| p != 1 && p != 3),
            [at("d", 1, 11, 4)]
        );
        assert_eq!(read(&months[1].1, &|_| true), [at("b", 0, 2, 2)]);
        assert_eq!(read(&months[1].1, &|_| false), []);
    }
}
