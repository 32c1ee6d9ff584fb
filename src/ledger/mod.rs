//! The repository ledger: which repositories exist, replayed along event time (SPEC §6).
//!
//! [`RepositoryLedger`] is the set itself, as a state carries it from run to run and as each
//! part of the replay holds its share; [`replay`] keeps a run's pushes and repository deletes
//! and applies them in (time, id) order; [`ReplayedLedger`] is what the replay leaves, part by
//! part, for `repositories.txt` and the state.

pub mod path_order;
pub mod replay;

use crate::keys::{repository_key, KeyHasher};
use crate::spill::{codec, merge, RunFile, SealedRuns, SpillRecord};
use crate::timestamp::Timestamp;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead};
use std::path::PathBuf;

/// The ledger is cut into parts by the top bits of the repository key: no repository's
/// existence depends on another's, so the parts replay apart, on all cores, and only the
/// parts being replayed hold their repositories in maps.
const PART_BITS: u32 = 4;
const PARTS: usize = 1 << PART_BITS;

fn part_of(key: u128) -> usize {
    (key >> (128 - PART_BITS)) as usize
}

/// The set of existing repositories, with the paths to write them back out and the time of
/// the last event applied to each (which tells a later run that an event arrived late).
///
/// Paths are compared exactly; they are held by their 128-bit hash so that the many events
/// naming one repository need not each carry its path.
#[derive(Clone, Debug, Default)]
pub struct RepositoryLedger {
    existing: HashSet<u128, KeyHasher>,
    paths: HashMap<u128, Box<str>, KeyHasher>,
    last_applied: HashMap<u128, Timestamp, KeyHasher>,
}

/// One repository as a state file keeps it; ordered by path (a ledger's paths are distinct).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LedgerEntry {
    pub path: String,
    pub exists: bool,
    /// The time of the last push or repository delete applied to it.
    pub last_applied: Option<Timestamp>,
}

impl RepositoryLedger {
    /// A ledger seeded with `known` paths (blank lines of the seed file are left out by the caller).
    pub fn seeded<'a>(known: impl IntoIterator<Item = &'a str>) -> RepositoryLedger {
        let mut ledger = RepositoryLedger::default();
        for path in known {
            let key = repository_key(path);
            ledger.existing.insert(key);
            ledger.paths.entry(key).or_insert_with(|| path.into());
        }
        ledger
    }

    /// Records the path behind a key, so that it can be written out later.
    pub fn learn_path(&mut self, key: u128, path: Box<str>) {
        self.paths.entry(key).or_insert(path);
    }

    /// A ledger as a state file stored it.
    pub fn from_entries(entries: impl IntoIterator<Item = LedgerEntry>) -> RepositoryLedger {
        let mut ledger = RepositoryLedger::default();
        for e in entries {
            ledger.add_entry(e);
        }
        ledger
    }

    /// Adds one repository as a state file stored it.
    fn add_entry(&mut self, e: LedgerEntry) {
        let key = repository_key(&e.path);
        if e.exists {
            self.existing.insert(key);
        }
        if let Some(t) = e.last_applied {
            self.last_applied.insert(key, t);
        }
        self.paths.insert(key, e.path.into());
    }

    /// Every repository with a known path, sorted by path, for a state file.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.entries_with(true)
    }

    /// The existing repositories, in no order, and with `times` (for a state) the deleted
    /// ones an event was applied to, each with the time of that event. The paths are moved
    /// out, not copied: what each part of a replay leaves. Only what reads them in order sorts
    /// them ([`sorted_entries`]), so that a run without a state sorts its paths once, all
    /// parts together, for `repositories.txt`.
    fn into_entries(self, times: bool) -> Vec<LedgerEntry> {
        let RepositoryLedger {
            existing,
            paths,
            last_applied,
        } = self;
        let mut out = Vec::with_capacity(paths.len());
        out.extend(
            paths
                .into_iter()
                .filter(|(k, _)| existing.contains(k) || (times && last_applied.contains_key(k)))
                .map(|(k, p)| LedgerEntry {
                    path: p.into_string(),
                    exists: existing.contains(&k),
                    last_applied: last_applied.get(&k).copied().filter(|_| times),
                }),
        );
        out
    }

    /// [`RepositoryLedger::into_entries`] of a copy, sorted by path, for what keeps the ledger.
    fn entries_with(&self, times: bool) -> Vec<LedgerEntry> {
        sorted_entries(self.clone().into_entries(times))
    }

    /// Whether an event at `time` comes before the last one already applied to the repository:
    /// a late arrival, applied after events that happened later.
    pub fn is_late(&self, key: u128, time: Timestamp) -> bool {
        self.last_applied.get(&key).is_some_and(|last| time < *last)
    }

    #[inline]
    fn applied(&mut self, key: u128, time: Timestamp) {
        let last = self.last_applied.entry(key).or_insert(time);
        *last = (*last).max(time);
    }

    /// Applies a push at `time`; returns whether the repository existed before it.
    pub fn push(&mut self, key: u128, time: Timestamp) -> bool {
        self.applied(key, time);
        !self.existing.insert(key)
    }

    /// Applies a repository delete at `time`.
    pub fn delete(&mut self, key: u128, time: Timestamp) {
        self.applied(key, time);
        self.existing.remove(&key);
    }

    /// How many repositories exist now.
    pub fn existing_count(&self) -> usize {
        self.existing.len()
    }

    /// Whether the repository exists now.
    pub fn exists(&self, key: u128) -> bool {
        self.existing.contains(&key)
    }
}

impl SpillRecord for LedgerEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        let (flags, time) = match self.last_applied {
            Some(t) => (2 | u8::from(self.exists), t),
            None => (u8::from(self.exists), Timestamp { secs: 0, nanos: 0 }),
        };
        out.push(flags);
        codec::put_u64(out, time.secs as u64);
        codec::put_u32(out, time.nanos);
        codec::put_bytes(out, self.path.as_bytes());
    }

    fn decode(input: &mut impl BufRead) -> io::Result<Option<LedgerEntry>> {
        if codec::at_end(input)? {
            return Ok(None);
        }
        let flags = codec::get_u8(input)?;
        let secs = codec::get_u64(input)? as i64;
        let nanos = codec::get_u32(input)?;
        let path = codec::get_string(input, "repository path")?;
        Ok(Some(LedgerEntry {
            path,
            exists: flags & 1 != 0,
            last_applied: (flags & 2 != 0).then_some(Timestamp { secs, nanos }),
        }))
    }
}

/// The ledger earlier runs left (a state's, or the seed of `--known-repositories`), as a run
/// starts from it: its repositories cut into the replay's parts, each part kept in memory or,
/// once the parts together pass their share of the budget, appended to a file of its own. A
/// part becomes a [`RepositoryLedger`] only when it is replayed.
#[derive(Default)]
pub struct PriorLedger {
    parts: Vec<PriorPart>,
    /// Bytes the parts hold in memory.
    bytes: usize,
    /// Where parts spill, and past how many bytes; without it nothing spills.
    spill: Option<(PathBuf, usize)>,
    /// Entries are counted and dropped ([`PriorLedger::discard`]).
    discard: bool,
    len: usize,
}

#[derive(Default)]
struct PriorPart {
    memory: Vec<LedgerEntry>,
    file: Option<RunFile>,
}

impl std::fmt::Debug for PriorLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PriorLedger({} repositories)", self.len)
    }
}

impl PriorLedger {
    /// An empty ledger that spills into `folder` past `limit` bytes (or, without a folder, keeps
    /// everything).
    pub fn new(spill: Option<(PathBuf, usize)>) -> PriorLedger {
        PriorLedger {
            parts: (0..PARTS).map(|_| PriorPart::default()).collect(),
            spill,
            ..PriorLedger::default()
        }
    }

    /// A ledger that keeps nothing: for reading a state whose repositories are not needed.
    pub fn discard() -> PriorLedger {
        PriorLedger {
            discard: true,
            ..PriorLedger::new(None)
        }
    }

    /// Every repository of `ledger`, kept in memory.
    pub fn of(ledger: &RepositoryLedger) -> PriorLedger {
        let mut prior = PriorLedger::new(None);
        for e in ledger.entries() {
            // Nothing spills without a folder.
            let _ = prior.push(e);
        }
        prior
    }

    /// Existing repositories named one a line (blank lines are left out by the caller).
    pub fn seeded<'a>(known: impl IntoIterator<Item = &'a str>) -> PriorLedger {
        PriorLedger::of(&RepositoryLedger::seeded(known))
    }

    /// Adds one repository (paths are distinct).
    pub fn push(&mut self, entry: LedgerEntry) -> io::Result<()> {
        self.len += 1;
        if self.discard {
            return Ok(());
        }
        self.bytes += std::mem::size_of::<LedgerEntry>() + entry.path.len();
        let part = part_of(repository_key(&entry.path));
        self.parts[part].memory.push(entry);
        match &self.spill {
            Some((folder, limit)) if self.bytes > *limit => {
                let folder = folder.clone();
                self.spill_to(&folder)
            }
            _ => Ok(()),
        }
    }

    /// Appends every part's entries to its file.
    fn spill_to(&mut self, folder: &std::path::Path) -> io::Result<()> {
        for (i, part) in self.parts.iter_mut().enumerate() {
            if part.memory.is_empty() {
                continue;
            }
            if part.file.is_none() {
                part.file = Some(RunFile::create_in(
                    folder,
                    &format!("ledger-prior-{i:02}.runs"),
                )?);
            }
            if let Some(file) = &mut part.file {
                file.write_run(&part.memory)?;
            }
            part.memory = Vec::new();
        }
        self.bytes = 0;
        Ok(())
    }

    /// How many repositories it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any part went to a file.
    pub fn spilled(&self) -> bool {
        self.parts.iter().any(|p| p.file.is_some())
    }

    /// The parts, each to be read into a ledger when its turn comes.
    fn into_parts(self) -> Vec<PriorPart> {
        let mut parts = self.parts;
        parts.resize_with(PARTS, PriorPart::default);
        parts
    }

    /// Every repository, sorted by path (tests).
    #[cfg(test)]
    pub fn entries(self) -> Vec<LedgerEntry> {
        let mut all = Vec::new();
        for part in self.into_parts() {
            all.extend(part.ledger(4096).unwrap().entries());
        }
        all.sort();
        all
    }
}

impl PriorPart {
    /// The part as a ledger, read back from its file (with `buffer` bytes) and memory.
    fn ledger(self, buffer: usize) -> io::Result<RepositoryLedger> {
        let mut ledger = RepositoryLedger::from_entries(self.memory);
        if let Some(file) = self.file {
            for e in file.seal()?.concatenated::<LedgerEntry>(buffer)? {
                ledger.add_entry(e?);
            }
        }
        Ok(ledger)
    }
}

/// Where each of `entries` goes when they are sorted by path ([`path_order::sorted_order`]).
fn order_by_path(entries: &[LedgerEntry]) -> Vec<usize> {
    let paths: Vec<&str> = entries.iter().map(|e| &*e.path).collect();
    path_order::sorted_order(&paths)
}

/// Entries sorted by path.
fn sorted_entries(entries: Vec<LedgerEntry>) -> Vec<LedgerEntry> {
    let order = order_by_path(&entries);
    let mut entries: Vec<Option<LedgerEntry>> = entries.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|i| entries[i].take())
        .collect()
}

/// One part's repositories after the replay.
enum PartEntries {
    /// In no order.
    Memory(Vec<LedgerEntry>),
    /// One run in a temporary file, sorted by path, when the parts together would pass their
    /// share of the memory budget.
    Spilled(SealedRuns),
}

/// The ledger a run's replay left, part by part: each part's repositories in memory or (past
/// the budget) sorted by path in a temporary file, read merged in path order by the outputs.
/// No step after the replay needs the repositories in memory at once: a run over millions of
/// repositories writes `repositories.txt` from the merge.
pub struct ReplayedLedger {
    parts: Vec<PartEntries>,
    existing: usize,
    /// How many repositories the parts hold, existing or not.
    len: usize,
    /// Read buffer of each spilled part in the merge.
    buffer: usize,
}

impl std::fmt::Debug for ReplayedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayedLedger")
            .field("parts", &self.parts.len())
            .field("existing", &self.existing)
            .field("spilled", &self.spilled())
            .finish()
    }
}

impl ReplayedLedger {
    /// A ledger held whole, as one part (what a run that replays nothing leaves, and tests).
    pub fn whole(ledger: &RepositoryLedger, times: bool) -> ReplayedLedger {
        // In no order, as a part in memory is: what reads it sorts it.
        let entries = ledger.clone().into_entries(times);
        ReplayedLedger {
            existing: entries.iter().filter(|e| e.exists).count(),
            len: entries.len(),
            parts: vec![PartEntries::Memory(entries)],
            buffer: 0,
        }
    }

    /// How many repositories exist.
    pub fn existing_count(&self) -> usize {
        self.existing
    }

    /// How many repositories [`ReplayedLedger::entries`] gives.
    pub fn entries_len(&self) -> usize {
        self.len
    }

    /// Whether any part went to a temporary file.
    pub fn spilled(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, PartEntries::Spilled(_)))
    }

    /// The paths of the existing repositories, sorted, when every part is in memory (`None`
    /// when one was spilled: [`ReplayedLedger::entries`] merges those from disk), sorted on all
    /// cores at once ([`path_order`]).
    pub fn existing_paths_in_memory(&self) -> Option<Vec<&str>> {
        let mut paths = Vec::with_capacity(self.existing);
        for part in &self.parts {
            let PartEntries::Memory(entries) = part else {
                return None;
            };
            paths.extend(entries.iter().filter(|e| e.exists).map(|e| e.path.as_str()));
        }
        let order = path_order::sorted_order(&paths);
        Some(order.into_iter().map(|i| paths[i]).collect())
    }

    /// Every repository the ledger keeps, sorted by path: the existing ones and, when the
    /// replay kept times (for a state), the deleted ones with the time of their last event.
    /// Parts in memory are lent, not copied.
    pub fn entries(
        &self,
    ) -> io::Result<impl Iterator<Item = io::Result<Cow<'_, LedgerEntry>>> + '_> {
        type Source<'a> = Box<dyn Iterator<Item = io::Result<Cow<'a, LedgerEntry>>> + 'a>;
        let mut sources: Vec<Source<'_>> = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            match part {
                PartEntries::Memory(entries) => sources.push(Box::new(
                    order_by_path(entries)
                        .into_iter()
                        .map(|i| Ok(Cow::Borrowed(&entries[i]))),
                )),
                PartEntries::Spilled(runs) => {
                    for reader in runs.readers::<LedgerEntry>(self.buffer)? {
                        sources.push(Box::new(reader.map(|e| e.map(Cow::Owned))));
                    }
                }
            }
        }
        Ok(merge(sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::{RunFile, SpillDir};

    /// The existing repositories' paths, as `repositories.txt` lists them.
    fn existing_paths(ledger: &ReplayedLedger) -> Vec<String> {
        ledger
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .filter(|e| e.exists)
            .map(|e| e.path.clone())
            .collect()
    }

    #[test]
    fn parts_in_memory_are_read_in_path_order() {
        // Parts as the replay leaves them in memory: each in no order, their paths interleaved.
        let parts: Vec<Vec<LedgerEntry>> = (0..5)
            .map(|p| {
                (0..300)
                    .map(|i| LedgerEntry {
                        path: format!("g{}/r{}", (i * 7 + p) % 13, i * 5 + p),
                        exists: (i + p) % 3 != 0,
                        last_applied: None,
                    })
                    .collect()
            })
            .collect();
        let mut want: Vec<LedgerEntry> = parts.iter().flatten().cloned().collect();
        want.sort();
        let existing = want.iter().filter(|e| e.exists).count();
        let ledger = ReplayedLedger {
            existing,
            len: want.len(),
            parts: parts.into_iter().map(PartEntries::Memory).collect(),
            buffer: 0,
        };
        let entries: Vec<LedgerEntry> = ledger
            .entries()
            .unwrap()
            .map(|e| e.unwrap().into_owned())
            .collect();
        assert_eq!(entries, want);
        let want: Vec<&str> = want.iter().filter(|e| e.exists).map(|e| &*e.path).collect();
        assert_eq!(ledger.existing_paths_in_memory().unwrap(), want);
    }

    #[test]
    fn push_creates_then_pushes_and_delete_resets() {
        let t = |s: i64| Timestamp { secs: s, nanos: 0 };
        let mut l = RepositoryLedger::seeded(["group/known"]);
        let a = repository_key("group/a");
        l.learn_path(a, "group/a".into());
        assert!(!l.push(a, t(1)), "first push creates");
        assert!(l.push(a, t(2)), "second push finds it");
        l.delete(a, t(3));
        assert!(!l.exists(a));
        assert!(!l.push(a, t(4)), "push after delete creates again");
        assert!(l.push(repository_key("group/known"), t(5)));
        assert_eq!(
            existing_paths(&ReplayedLedger::whole(&l, false)),
            ["group/a", "group/known"]
        );
        assert!(l.is_late(a, t(3)) && !l.is_late(a, t(4)) && !l.is_late(repository_key("x"), t(0)));
    }

    #[test]
    fn entries_round_trip_with_last_times() {
        let t = |s: i64| Timestamp { secs: s, nanos: 7 };
        let mut l = RepositoryLedger::seeded(["k"]);
        for (path, secs) in [("a", 10), ("b", 20)] {
            l.learn_path(repository_key(path), path.into());
            l.push(repository_key(path), t(secs));
        }
        l.delete(repository_key("b"), t(30));
        let entries = l.entries();
        assert_eq!(
            entries,
            [
                LedgerEntry {
                    path: "a".into(),
                    exists: true,
                    last_applied: Some(t(10))
                },
                LedgerEntry {
                    path: "b".into(),
                    exists: false,
                    last_applied: Some(t(30))
                },
                LedgerEntry {
                    path: "k".into(),
                    exists: true,
                    last_applied: None
                },
            ]
        );
        let back = RepositoryLedger::from_entries(entries.clone());
        assert_eq!(back.entries(), entries);
        assert_eq!(
            existing_paths(&ReplayedLedger::whole(&back, true)),
            ["a", "k"]
        );
    }

    #[test]
    fn split_parts_replay_apart_and_join_into_the_whole() {
        let t = |s: i64| Timestamp { secs: s, nanos: 0 };
        let paths: Vec<String> = (0..200).map(|i| format!("g/r{i}")).collect();
        let mut whole = RepositoryLedger::seeded(paths.iter().take(50).map(String::as_str));
        for (i, p) in paths.iter().enumerate() {
            whole.learn_path(repository_key(p), p.as_str().into());
            if i % 3 == 0 {
                whole.delete(repository_key(p), t(i as i64));
            }
        }
        // The parts a run replays, as the earlier ledger is cut into them.
        let mut parts: Vec<RepositoryLedger> = PriorLedger::of(&whole)
            .into_parts()
            .into_iter()
            .map(|p| p.ledger(4096).unwrap())
            .collect();
        // As a run's replay teaches each part the paths its events name.
        for p in &paths {
            let k = repository_key(p);
            parts[part_of(k)].learn_path(k, p.as_str().into());
        }
        assert!(parts.iter().all(|p| !p.paths.is_empty()), "keys spread");
        // The same later events, applied to the whole and to the part that owns each key.
        for (i, p) in paths.iter().enumerate() {
            let k = repository_key(p);
            let time = t(1000 + i as i64);
            let in_whole = whole.push(k, time);
            assert_eq!(parts[part_of(k)].push(k, time), in_whole, "{p}");
            assert_eq!(
                parts[part_of(k)].is_late(k, t(500)),
                whole.is_late(k, t(500))
            );
        }
        let mut joined: Vec<LedgerEntry> = parts.iter().flat_map(|p| p.entries()).collect();
        joined.sort();
        assert_eq!(joined, whole.entries());
    }

    /// An earlier ledger past its budget goes to its parts' files, a run at a time, and each
    /// part reads back as the ledger of its repositories, whatever stayed in memory.
    #[test]
    fn a_prior_ledger_spills_its_parts_and_reads_them_back() {
        let parent = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(parent.path(), &[]).unwrap();
        let entries: Vec<LedgerEntry> = (0..1000)
            .map(|i| LedgerEntry {
                path: format!("g{}/r{i}", i % 7),
                exists: i % 3 != 0,
                last_applied: (i % 2 == 0).then_some(Timestamp { secs: i, nanos: 1 }),
            })
            .collect();
        let mut prior = PriorLedger::new(Some((dir.path().to_path_buf(), 2000)));
        for e in entries.iter().rev() {
            prior.push(e.clone()).unwrap();
        }
        assert!(prior.spilled());
        assert_eq!(prior.len(), 1000);
        let mut want = entries.clone();
        want.sort();
        // Only what exists or was applied to is a ledger's entry.
        want.retain(|e| e.exists || e.last_applied.is_some());
        assert_eq!(prior.entries(), want);
        let mut kept = PriorLedger::discard();
        kept.push(entries[0].clone()).unwrap();
        assert_eq!((kept.len(), kept.entries()), (1, vec![]));
    }

    /// A replayed ledger reads its parts, kept in memory or spilled, merged in path order;
    /// without times it lists only what exists, and its entries come back through the
    /// spill's codec as they went in.
    #[test]
    fn replayed_parts_read_merged_in_path_order() {
        let parent = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(parent.path(), &[]).unwrap();
        let t = |s: i64| Timestamp {
            secs: s,
            nanos: 999_999_999,
        };
        let mut whole = RepositoryLedger::default();
        for i in 0..300 {
            let path = format!("g{}/r{i}", i % 13);
            let key = repository_key(&path);
            whole.learn_path(key, path.into());
            whole.push(key, t(i));
            if i % 4 == 0 {
                whole.delete(key, t(1000 + i));
            }
        }
        for times in [false, true] {
            let parts = PriorLedger::of(&whole).into_parts();
            let parts = parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let entries = p.ledger(4096).unwrap().entries_with(times);
                    if i % 2 == 0 {
                        return PartEntries::Memory(entries);
                    }
                    let mut file = RunFile::create(&dir, &format!("p{i}-{times}")).unwrap();
                    file.write_run(&entries).unwrap();
                    PartEntries::Spilled(file.seal().unwrap())
                })
                .collect();
            let replayed = ReplayedLedger {
                parts,
                existing: whole.existing_count(),
                len: whole.entries_with(times).len(),
                buffer: 4096,
            };
            assert!(replayed.spilled());
            let entries: Vec<LedgerEntry> = replayed
                .entries()
                .unwrap()
                .map(|e| e.unwrap().into_owned())
                .collect();
            assert_eq!(entries, whole.entries_with(times), "times: {times}");
            assert_eq!(entries.len(), if times { 300 } else { 225 });
            assert_eq!(replayed.entries_len(), entries.len());
        }
    }

    #[test]
    fn paths_compare_exactly() {
        let mut l = RepositoryLedger::seeded(["Group/A"]);
        assert!(!l.push(repository_key("group/a"), Timestamp { secs: 0, nanos: 0 }));
        assert!(l.exists(repository_key("Group/A")));
    }
}
