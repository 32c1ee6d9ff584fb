//! Spilling: the memory budget of a run, and the temporary files that take what does not fit.
//!
//! Only two stages keep anything from one chunk to the next: de-duplication (the ids seen) and
//! the repository ledger (the pushes and repository deletes it must replay in time order).
//! Each gets a share of one [`MemoryBudget`]; past it, the stage sorts what it holds and
//! writes it as a *run* to a [`RunFile`] in the run's [`SpillDir`], and at the end merges its
//! runs back in order ([`merge`]). The in-memory and the spilled path end in the same code, so
//! a test with a tiny budget runs exactly what a large run does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How much memory the buffering stages of a run may hold (`--memory-limit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    limit: u64,
}

impl MemoryBudget {
    /// The default limit, 1 GiB: a night of a busy registry fits without spilling, and a run
    /// sits beside other services on a small machine.
    pub const DEFAULT: u64 = 1 << 30;

    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget { limit }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What de-duplication may hold: its id set, or, once spilled, the events it defers.
    /// Two fifths of the limit; the ledger has as much, and the last fifth is left for what
    /// no stage reserves (merge buffers, the allocator's slack).
    pub fn dedup_bytes(&self) -> usize {
        self.share(2, 5)
    }

    /// What the repository ledger may hold of the events it replays: two fifths of the limit.
    pub fn ledger_bytes(&self) -> usize {
        self.share(2, 5)
    }

    /// The read buffer given to each run when `runs` runs are merged: a tenth of the limit
    /// shared among them, between 4 KiB and 1 MiB.
    pub fn merge_buffer(&self, runs: usize) -> usize {
        (self.share(1, 10) / runs.max(1)).clamp(4 << 10, 1 << 20)
    }

    fn share(&self, num: u64, den: u64) -> usize {
        usize::try_from(self.limit / den * num).unwrap_or(usize::MAX)
    }
}

impl Default for MemoryBudget {
    fn default() -> MemoryBudget {
        MemoryBudget::new(MemoryBudget::DEFAULT)
    }
}

/// Paths removed if the process is interrupted (SIGINT, SIGTERM, SIGHUP) before it removes
/// them itself: the run's spill folder (with its parent, the temporary folder, if that is left
/// empty) and its staged outputs.
static REMOVE_ON_SIGNAL: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());

/// Removes `path` (a file or a folder) if a signal ends the run.
pub fn remove_on_signal(path: &Path) {
    lock_registry().push((path.to_path_buf(), false));
}

/// Forgets a path given to [`remove_on_signal`]: it was removed, or renamed into place.
pub fn keep_on_signal(path: &Path) {
    lock_registry().retain(|(p, _)| p != path);
}

fn lock_registry() -> std::sync::MutexGuard<'static, Vec<(PathBuf, bool)>> {
    REMOVE_ON_SIGNAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// On SIGINT, SIGTERM or SIGHUP: removes every registered path and exits with 128 + the
/// signal's number, as a shell reports a process killed by it. Installed once, by `run`.
pub fn exit_cleanly_on_signals() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("regtally-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                for (path, empty_parent_too) in lock_registry().iter() {
                    let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
                    if let (true, Some(parent)) = (empty_parent_too, path.parent()) {
                        let _ = fs::remove_dir(parent);
                    }
                }
                eprintln!("regtally: interrupted by signal {signal}; temporary files removed");
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// The name of a run's folder inside the temporary folder: `run-<pid>-<start in ns>`.
const RUN_PREFIX: &str = "run-";
/// The same folder's name while it is made, before its lock is held.
const MAKING_PREFIX: &str = "making-";
const LOCK_FILE: &str = "lock";

/// One run's folder of temporary files, `TEMP/run-<pid>-<ns>/`, held by a lock on its `lock`
/// file for as long as the run lives. Dropped, it is removed with everything in it; a folder
/// whose lock nobody holds was left by a run that was killed, and the next run removes it.
#[derive(Debug)]
pub struct SpillDir {
    path: PathBuf,
    /// Holds the folder's lock until the run ends.
    _lock: File,
}

impl SpillDir {
    /// Creates the run's folder inside `parent` (creating `parent` if need be), after removing
    /// what killed runs left in `parent`. `stale_outputs` are folders where those runs may have
    /// left staged outputs (see [`SpillDir::staged_suffix`]); they are removed too.
    pub fn create(parent: &Path, stale_outputs: &[&Path]) -> io::Result<SpillDir> {
        let with_path =
            |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
        remove_stale_runs(parent, stale_outputs);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{}-{nanos}", std::process::id());
        // Made and locked under another name, then renamed: a run sweeping stale folders
        // must never find this one before its lock is held.
        let making = parent.join(format!("{MAKING_PREFIX}{name}"));
        let path = parent.join(format!("{RUN_PREFIX}{name}"));
        // Another run may remove `parent` the moment it finds it empty: create it again then.
        fs::create_dir(&making)
            .or_else(|_| fs::create_dir_all(parent).and_then(|()| fs::create_dir(&making)))
            .map_err(|e| with_path(e, &making))?;
        lock_registry().push((making.clone(), true));
        let lock = File::create(making.join(LOCK_FILE))
            .and_then(|f| f.try_lock().map(|()| f).map_err(io::Error::from))
            .and_then(|f| fs::rename(&making, &path).map(|()| f))
            .map_err(|e| {
                let _ = fs::remove_dir_all(&making);
                keep_on_signal(&making);
                with_path(e, &making)
            })?;
        keep_on_signal(&making);
        lock_registry().push((path.clone(), true));
        Ok(SpillDir { path, _lock: lock })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The suffix this run gives its staged outputs (`.aggregates.parquet.tmp-run-…`), so that
    /// a later run can tell whose they are.
    pub fn staged_suffix(&self) -> String {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        format!(".tmp-{name}")
    }
}

impl Drop for SpillDir {
    /// Removes the run's folder, and the temporary folder too if no other run is using it, so
    /// that a run leaves nothing behind.
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        keep_on_signal(&self.path);
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Removes the run folders in `parent` whose lock is free (their run is gone), and the staged
/// outputs those runs left in `stale_outputs`. Best effort: what cannot be removed stays.
fn remove_stale_runs(parent: &Path, stale_outputs: &[&Path]) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let older_than_a_minute = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60))
        };
        let stale = if name.starts_with(RUN_PREFIX) {
            File::open(dir.join(LOCK_FILE)).is_ok_and(|f| f.try_lock().is_ok())
        } else {
            // Being made this instant, or left by a run killed while making it: only the
            // second is older than a minute.
            name.starts_with(MAKING_PREFIX) && older_than_a_minute()
        };
        if !stale {
            continue;
        }
        let _ = fs::remove_dir_all(&dir);
        let suffix = format!(".tmp-{name}");
        for folder in stale_outputs {
            for file in fs::read_dir(folder).into_iter().flatten().flatten() {
                if file.file_name().to_string_lossy().ends_with(&suffix) {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
    }
}

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
        runs.iter()
            .map(|&(start, len)| {
                let mut file = File::open(&self.path).map_err(|e| spill_error(&self.path, e))?;
                file.seek(SeekFrom::Start(start))?;
                Ok(RunReader {
                    input: BufReader::with_capacity(buffer, file.take(len)),
                    path: self.path.clone(),
                    _record: std::marker::PhantomData,
                })
            })
            .collect()
    }
}

/// A spill file error that names the file (a full disk says where).
pub(crate) fn spill_error(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot spill to the temporary folder {}: {e}",
            path.parent().unwrap_or(path).display()
        ),
    )
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

/// Little-endian field encoding for [`SpillRecord`]s.
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

    #[test]
    fn a_run_folder_is_removed_when_dropped_and_stale_ones_by_the_next_run() {
        let parent = tempfile::tempdir().unwrap();
        let outputs = tempfile::tempdir().unwrap();
        let live = SpillDir::create(parent.path(), &[]).unwrap();
        // A folder left by a killed run: its lock file is there, and nobody holds it.
        let dead = parent.path().join("run-1-2");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(LOCK_FILE), "").unwrap();
        fs::write(dead.join("dedup.runs"), "x").unwrap();
        let left = outputs.path().join(".rejects.jsonl.tmp-run-1-2");
        let other = outputs.path().join(".rejects.jsonl.tmp-run-9-9");
        fs::write(&left, "").unwrap();
        fs::write(&other, "").unwrap();
        let next = SpillDir::create(parent.path(), &[outputs.path()]).unwrap();
        assert!(!dead.exists());
        assert!(!left.exists());
        assert!(other.exists(), "another run's staged file stays");
        assert!(live.path().exists(), "a live run's folder stays");
        assert_ne!(live.path(), next.path());
        let path = next.path().to_path_buf();
        drop(next);
        assert!(!path.exists());
    }

    #[test]
    fn budget_shares() {
        let b = MemoryBudget::new(1000);
        assert_eq!((b.dedup_bytes(), b.ledger_bytes()), (400, 400));
        assert_eq!(b.merge_buffer(3), 4 << 10);
        assert_eq!(MemoryBudget::default().merge_buffer(1), 1 << 20);
    }
}
