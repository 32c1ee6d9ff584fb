//! The repository ledger: which repositories exist, replayed along event time (SPEC §6).
//!
//! [`RepositoryLedger`] is the set itself, as a state carries it from run to run and as each
//! part of the replay holds its share; [`replay`] keeps a run's pushes and repository deletes
//! and applies them in (time, id) order; [`ReplayedLedger`] is what the replay leaves, part by
//! part, for `repositories.txt` and the state.

pub mod replay;

use crate::keys::{repository_key, KeyHasher};
use crate::spill::{codec, merge, SealedRuns, SpillRecord};
use crate::timestamp::Timestamp;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead};

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

    /// The ledger cut into `n` parts by `part_of(key)` (which must be below `n`), each with
    /// all that is known of its repositories. No repository's existence depends on another's,
    /// so the parts can replay their events apart and be joined after.
    pub fn split(self, n: usize, part_of: impl Fn(u128) -> usize) -> Vec<RepositoryLedger> {
        let mut parts: Vec<RepositoryLedger> = (0..n).map(|_| Self::default()).collect();
        for k in self.existing {
            parts[part_of(k)].existing.insert(k);
        }
        for (k, path) in self.paths {
            parts[part_of(k)].paths.insert(k, path);
        }
        for (k, t) in self.last_applied {
            parts[part_of(k)].last_applied.insert(k, t);
        }
        parts
    }

    /// A ledger as a state file stored it.
    pub fn from_entries(entries: impl IntoIterator<Item = LedgerEntry>) -> RepositoryLedger {
        let mut ledger = RepositoryLedger::default();
        for e in entries {
            let key = repository_key(&e.path);
            if e.exists {
                ledger.existing.insert(key);
            }
            if let Some(t) = e.last_applied {
                ledger.last_applied.insert(key, t);
            }
            ledger.paths.insert(key, e.path.into());
        }
        ledger
    }

    /// Every repository with a known path, sorted by path, for a state file.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.entries_with(true)
    }

    /// The existing repositories, sorted by path, and with `times` (for a state) the deleted
    /// ones an event was applied to, each with the time of that event.
    fn entries_with(&self, times: bool) -> Vec<LedgerEntry> {
        let mut out: Vec<LedgerEntry> = self
            .paths
            .iter()
            .filter(|(k, _)| {
                self.existing.contains(k) || (times && self.last_applied.contains_key(k))
            })
            .map(|(k, p)| LedgerEntry {
                path: p.to_string(),
                exists: self.existing.contains(k),
                last_applied: self.last_applied.get(k).copied().filter(|_| times),
            })
            .collect();
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        out
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
        let path = String::from_utf8(codec::get_bytes(input)?)
            .map_err(|_| codec::corrupt("repository path"))?;
        Ok(Some(LedgerEntry {
            path,
            exists: flags & 1 != 0,
            last_applied: (flags & 2 != 0).then_some(Timestamp { secs, nanos }),
        }))
    }
}

/// One part's repositories after the replay, sorted by path.
enum PartEntries {
    Memory(Vec<LedgerEntry>),
    /// One run in a temporary file, when the parts together would pass their share of the
    /// memory budget.
    Spilled(SealedRuns),
}

/// The ledger a run's replay left, part by part: each part's repositories sorted by path,
/// in memory or (past the budget) in a temporary file, read merged in path order by the
/// outputs. No step after the replay needs the repositories in memory at once: a run over
/// millions of repositories writes `repositories.txt` from the merge.
pub struct ReplayedLedger {
    parts: Vec<PartEntries>,
    existing: usize,
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
        let entries = ledger.entries_with(times);
        ReplayedLedger {
            existing: entries.iter().filter(|e| e.exists).count(),
            parts: vec![PartEntries::Memory(entries)],
            buffer: 0,
        }
    }

    /// How many repositories exist.
    pub fn existing_count(&self) -> usize {
        self.existing
    }

    /// Whether any part went to a temporary file.
    pub fn spilled(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, PartEntries::Spilled(_)))
    }

    /// Every repository the ledger keeps, sorted by path: the existing ones and, when the
    /// replay kept times (for a state), the deleted ones with the time of their last event.
    pub fn entries(&self) -> io::Result<impl Iterator<Item = io::Result<LedgerEntry>> + '_> {
        let mut sources: Vec<Box<dyn Iterator<Item = io::Result<LedgerEntry>> + '_>> =
            Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            match part {
                PartEntries::Memory(entries) => {
                    sources.push(Box::new(entries.iter().cloned().map(Ok)))
                }
                PartEntries::Spilled(runs) => {
                    for reader in runs.readers::<LedgerEntry>(self.buffer)? {
                        sources.push(Box::new(reader));
                    }
                }
            }
        }
        Ok(merge(sources))
    }

    /// The ledger held whole, for a state.
    pub fn to_ledger(&self) -> io::Result<RepositoryLedger> {
        let entries: Vec<LedgerEntry> = self.entries()?.collect::<io::Result<_>>()?;
        Ok(RepositoryLedger::from_entries(entries))
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
            .map(|e| e.path)
            .collect()
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
        let part_of = |k: u128| (k % 7) as usize;
        let mut parts = whole.clone().split(7, part_of);
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
            let parts = whole.clone().split(5, |k| (k % 5) as usize);
            let parts = parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let entries = p.entries_with(times);
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
                buffer: 4096,
            };
            assert!(replayed.spilled());
            let entries: Vec<LedgerEntry> =
                replayed.entries().unwrap().map(Result::unwrap).collect();
            assert_eq!(entries, whole.entries_with(times), "times: {times}");
            assert_eq!(entries.len(), if times { 300 } else { 225 });
            assert_eq!(replayed.to_ledger().unwrap().entries().len(), entries.len());
        }
    }

    #[test]
    fn paths_compare_exactly() {
        let mut l = RepositoryLedger::seeded(["Group/A"]);
        assert!(!l.push(repository_key("group/a"), Timestamp { secs: 0, nanos: 0 }));
        assert!(l.exists(repository_key("Group/A")));
    }
}
