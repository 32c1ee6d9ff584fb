//! The repository ledger: which repositories exist, replayed along event time (SPEC §6).
//!
//! [`RepositoryLedger`] is the set itself, as a state carries it from run to run; [`replay`]
//! keeps a run's pushes and repository deletes and applies them in (time, id) order.

pub mod replay;

use crate::keys::{repository_key, KeyHasher};
use crate::timestamp::Timestamp;
use std::collections::{HashMap, HashSet};

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

/// One repository as a state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// Parts made by [`RepositoryLedger::split`], as one ledger again.
    pub fn join(parts: Vec<RepositoryLedger>) -> RepositoryLedger {
        let mut all = RepositoryLedger::default();
        all.existing
            .reserve(parts.iter().map(|p| p.existing.len()).sum());
        all.paths.reserve(parts.iter().map(|p| p.paths.len()).sum());
        all.last_applied
            .reserve(parts.iter().map(|p| p.last_applied.len()).sum());
        for p in parts {
            all.existing.extend(p.existing);
            all.paths.extend(p.paths);
            all.last_applied.extend(p.last_applied);
        }
        all
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
        let mut out: Vec<LedgerEntry> = self
            .paths
            .iter()
            .filter(|(k, _)| self.existing.contains(k) || self.last_applied.contains_key(k))
            .map(|(k, p)| LedgerEntry {
                path: p.to_string(),
                exists: self.existing.contains(k),
                last_applied: self.last_applied.get(k).copied(),
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

    /// The existing repositories' paths, sorted byte-wise.
    pub fn sorted_paths(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .existing
            .iter()
            .filter_map(|k| self.paths.get(k).map(|p| &**p))
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(l.sorted_paths(), ["group/a", "group/known"]);
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
        assert_eq!(back.sorted_paths(), ["a", "k"]);
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
        let joined = RepositoryLedger::join(parts);
        assert_eq!(joined.entries(), whole.entries());
        assert_eq!(joined.sorted_paths(), whole.sorted_paths());
    }

    #[test]
    fn paths_compare_exactly() {
        let mut l = RepositoryLedger::seeded(["Group/A"]);
        assert!(!l.push(repository_key("group/a"), Timestamp { secs: 0, nanos: 0 }));
        assert!(l.exists(repository_key("Group/A")));
    }
}
