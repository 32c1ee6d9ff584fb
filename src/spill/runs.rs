//! Sorted runs on disk: what a stage that passed its share of the memory budget writes, and
//! the merge that reads its runs back in order.

use super::{spill_error, MemoryBudget, SpillDir};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// The most runs merged at once (so the most files a merge holds open).
pub const MAX_MERGE: usize = 32;

/// A record that can be written to a run and read back.
pub trait SpillRecord: Sized {
    /// Appends the record's bytes.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one record, or `None` at the end of the run.
    fn decode(input: &mut impl BufRead) -> io::Result<Option<Self>>;
}

/// A temporary file of sorted runs, appended one after another.
pub struct RunFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// Where each run starts and how many bytes it has.
    runs: Vec<(u64, u64)>,
    written: u64,
    scratch: Vec<u8>,
}

impl RunFile {
    /// Creates `name` in the run's folder.
    pub fn create(dir: &SpillDir, name: &str) -> io::Result<RunFile> {
        RunFile::at(dir.path().join(name))
    }

    /// Creates `name` in `folder`: a run's temporary folder named by its path, for what is
    /// built before the folder's owner is at hand.
    pub fn create_in(folder: &std::path::Path, name: &str) -> io::Result<RunFile> {
        RunFile::at(folder.join(name))
    }

    fn at(path: PathBuf) -> io::Result<RunFile> {
        let file = File::create(&path).map_err(|e| spill_error(&path, e))?;
        Ok(RunFile {
            out: BufWriter::with_capacity(256 << 10, file),
            path,
            runs: Vec::new(),
            written: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends one run: `records`, which the caller has sorted.
    pub fn write_run<'r, T: SpillRecord + 'r>(
        &mut self,
        records: impl IntoIterator<Item = &'r T>,
    ) -> io::Result<()> {
        let start = self.written;
        for r in records {
            self.append(r)?;
        }
        self.runs.push((start, self.written - start));
        Ok(())
    }

    /// Writes one record at the end of the file (the caller marks where runs end).
    fn append<T: SpillRecord>(&mut self, r: &T) -> io::Result<()> {
        self.scratch.clear();
        r.encode(&mut self.scratch);
        self.out
            .write_all(&self.scratch)
            .map_err(|e| spill_error(&self.path, e))?;
        self.written += self.scratch.len() as u64;
        Ok(())
    }

    /// How many runs the file holds.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Merges runs, [`MAX_MERGE`] at a time, into longer runs, until at most [`MAX_MERGE`] are
    /// left: a merge opens the file once per run, and a budget small against the data makes
    /// thousands of runs. Each pass writes a new file and removes the old one, so the disk
    /// holds at most twice the spilled data.
    pub fn compact<T: SpillRecord + Ord>(&mut self, budget: MemoryBudget) -> io::Result<()> {
        while self.runs.len() > MAX_MERGE {
            let name = self.path.file_name().unwrap_or_default().to_string_lossy();
            let next_path = self.path.with_file_name(format!("{name}.next"));
            let mut next = RunFile::at(next_path)?;
            self.out.flush().map_err(|e| spill_error(&self.path, e))?;
            for group in self.runs.chunks(MAX_MERGE) {
                let readers = self.open_runs::<T>(group, budget.merge_buffer(group.len()))?;
                let start = next.written;
                for record in merge(readers) {
                    next.append(&record?)?;
                }
                next.runs.push((start, next.written - start));
            }
            fs::remove_file(&self.path).map_err(|e| spill_error(&self.path, e))?;
            fs::rename(&next.path, &self.path).map_err(|e| spill_error(&self.path, e))?;
            next.path = self.path.clone();
            *self = next;
        }
        Ok(())
    }

    /// A reader for each run, each with a buffer of `buffer` bytes.
    pub fn readers<T: SpillRecord>(&mut self, buffer: usize) -> io::Result<Vec<RunReader<T>>> {
        self.out.flush().map_err(|e| spill_error(&self.path, e))?;
        self.open_runs(&self.runs, buffer)
    }

    /// Readers of `runs` (of this file, flushed).
    fn open_runs<T: SpillRecord>(
        &self,
        runs: &[(u64, u64)],
        buffer: usize,
    ) -> io::Result<Vec<RunReader<T>>> {
        open_runs(&self.path, runs, buffer)
    }

    /// The file, written to the end: its runs can then be read through a shared reference,
    /// as many times as needed.
    pub fn seal(mut self) -> io::Result<SealedRuns> {
        self.out.flush().map_err(|e| spill_error(&self.path, e))?;
        Ok(SealedRuns {
            path: self.path,
            runs: self.runs,
        })
    }
}

/// A [`RunFile`] written to the end.
pub struct SealedRuns {
    path: PathBuf,
    runs: Vec<(u64, u64)>,
}

impl SealedRuns {
    /// A reader for each run, each with a buffer of `buffer` bytes.
    pub fn readers<T: SpillRecord>(&self, buffer: usize) -> io::Result<Vec<RunReader<T>>> {
        open_runs(&self.path, &self.runs, buffer)
    }

    /// One reader of every run, one after another: for records whose order does not matter,
    /// read with one open file however many runs were written.
    pub fn concatenated<T: SpillRecord>(&self, buffer: usize) -> io::Result<RunReader<T>> {
        let end = self.runs.last().map_or(0, |&(start, len)| start + len);
        let mut readers = open_runs(&self.path, &[(0, end)], buffer)?;
        Ok(readers.remove(0))
    }
}

/// Readers of `runs` of the file at `path`.
fn open_runs<T: SpillRecord>(
    path: &std::path::Path,
    runs: &[(u64, u64)],
    buffer: usize,
) -> io::Result<Vec<RunReader<T>>> {
    runs.iter()
        .map(|&(start, len)| {
            let mut file = File::open(path).map_err(|e| spill_error(path, e))?;
            file.seek(SeekFrom::Start(start))?;
            Ok(RunReader {
                input: BufReader::with_capacity(buffer, file.take(len)),
                path: path.to_path_buf(),
                _record: std::marker::PhantomData,
            })
        })
        .collect()
}

/// The records of one run, in the order written.
pub struct RunReader<T> {
    input: BufReader<io::Take<File>>,
    path: PathBuf,
    _record: std::marker::PhantomData<T>,
}

impl<T: SpillRecord> Iterator for RunReader<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<io::Result<T>> {
        T::decode(&mut self.input)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
            .transpose()
    }
}

/// Merges sorted sources into one sorted stream (ties: the earlier source first).
pub fn merge<T: Ord, S: Iterator<Item = io::Result<T>>>(sources: Vec<S>) -> Merge<T, S> {
    Merge {
        sources,
        heap: BinaryHeap::new(),
        started: false,
    }
}

/// The stream [`merge`] returns.
pub struct Merge<T, S> {
    sources: Vec<S>,
    heap: BinaryHeap<Reverse<(T, usize)>>,
    started: bool,
}

impl<T: Ord, S: Iterator<Item = io::Result<T>>> Merge<T, S> {
    fn refill(&mut self, source: usize) -> io::Result<()> {
        if let Some(next) = self.sources[source].next() {
            self.heap.push(Reverse((next?, source)));
        }
        Ok(())
    }
}

impl<T: Ord, S: Iterator<Item = io::Result<T>>> Iterator for Merge<T, S> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<io::Result<T>> {
        if !self.started {
            self.started = true;
            for s in 0..self.sources.len() {
                if let Err(e) = self.refill(s) {
                    return Some(Err(e));
                }
            }
        }
        let Reverse((item, source)) = self.heap.pop()?;
        if let Err(e) = self.refill(source) {
            return Some(Err(e));
        }
        Some(Ok(item))
    }
}

/// Little-endian fields of fixed width for [`SpillRecord`]s and the events dataset's rows,
/// written by hand rather than with postcard: its varints cost a spilling run 6% more
/// instructions (819M to 868M on 75,000 events at one thread, callgrind), ids and hashes being
/// random 128- and 64-bit values.
pub mod codec {
    use std::io::{self, BufRead, Read};

    pub fn put_u128(out: &mut Vec<u8>, v: u128) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    /// Bytes with their length in front.
    pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        put_u64(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// Whether the input is at its end (so that a record may start only at a boundary).
    pub fn at_end(input: &mut impl BufRead) -> io::Result<bool> {
        Ok(input.fill_buf()?.is_empty())
    }

    pub fn get<const N: usize>(input: &mut impl Read) -> io::Result<[u8; N]> {
        let mut b = [0; N];
        input.read_exact(&mut b)?;
        Ok(b)
    }
    pub fn get_u8(input: &mut impl Read) -> io::Result<u8> {
        Ok(get::<1>(input)?[0])
    }
    pub fn get_u32(input: &mut impl Read) -> io::Result<u32> {
        Ok(u32::from_le_bytes(get(input)?))
    }
    pub fn get_u64(input: &mut impl Read) -> io::Result<u64> {
        Ok(u64::from_le_bytes(get(input)?))
    }
    pub fn get_u128(input: &mut impl Read) -> io::Result<u128> {
        Ok(u128::from_le_bytes(get(input)?))
    }
    pub fn get_bytes(input: &mut impl Read) -> io::Result<Vec<u8>> {
        let len = get_u64(input)?;
        let mut b = Vec::new();
        input.take(len).read_to_end(&mut b)?;
        if b.len() as u64 != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(b)
    }
    /// Bytes written by [`put_bytes`] that must be UTF-8 text (`what`, for the error).
    pub fn get_string(input: &mut impl Read, what: &str) -> io::Result<String> {
        String::from_utf8(get_bytes(input)?).map_err(|_| corrupt(what))
    }
    /// An error for bytes that are not a record (a temporary file changed under the run).
    pub fn corrupt(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("spilled record: bad {what}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Item(u64, Vec<u8>);

    impl SpillRecord for Item {
        fn encode(&self, out: &mut Vec<u8>) {
            codec::put_u64(out, self.0);
            codec::put_bytes(out, &self.1);
        }
        fn decode(input: &mut impl BufRead) -> io::Result<Option<Item>> {
            if codec::at_end(input)? {
                return Ok(None);
            }
            Ok(Some(Item(codec::get_u64(input)?, codec::get_bytes(input)?)))
        }
    }

    #[test]
    fn runs_come_back_merged_in_order() {
        let parent = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(parent.path(), &[]).unwrap();
        let mut file = RunFile::create(&dir, "items").unwrap();
        let runs: Vec<Vec<Item>> = (0..5)
            .map(|r| {
                (0..100)
                    .map(|i| Item(i * 5 + r, vec![r as u8; r as usize]))
                    .collect()
            })
            .collect();
        for run in &runs {
            file.write_run(run).unwrap();
        }
        assert_eq!(file.runs(), 5);
        let readers = file.readers::<Item>(4096).unwrap();
        let merged: Vec<Item> = merge(readers).collect::<io::Result<_>>().unwrap();
        assert_eq!(merged.len(), 500);
        assert!(merged.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(merged[7], Item(7, vec![2, 2]));
        // An empty run and no runs at all.
        file.write_run(std::iter::empty::<&Item>()).unwrap();
        assert_eq!(merge(file.readers::<Item>(4096).unwrap()).count(), 500);
        assert_eq!(merge(Vec::<RunReader<Item>>::new()).count(), 0);
    }

    #[test]
    fn many_runs_are_compacted_into_few_and_still_merge_in_order() {
        let parent = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(parent.path(), &[]).unwrap();
        let mut file = RunFile::create(&dir, "many").unwrap();
        let n = MAX_MERGE * MAX_MERGE + 5;
        for r in 0..n as u64 {
            file.write_run(&[Item(r * 7 % n as u64, vec![1]), Item(n as u64 + r, vec![])])
                .unwrap();
        }
        file.compact::<Item>(MemoryBudget::new(1 << 20)).unwrap();
        assert!(file.runs() <= MAX_MERGE, "{}", file.runs());
        file.out.flush().unwrap();
        // The file holds the data once: each pass replaced the one before.
        assert_eq!(fs::metadata(&file.path).unwrap().len(), 33 * n as u64);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "the lock and the runs"
        );
        let merged: Vec<Item> = merge(file.readers::<Item>(4096).unwrap())
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(merged.len(), 2 * n);
        assert!(merged.windows(2).all(|w| w[0] <= w[1]));
    }
}
