//! The repository ledger: which repositories exist, replayed along event time (SPEC §6).

use crate::sketch::PassThroughHasher;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

/// The hash that stands for a repository path inside the run (xxh3-128 of its bytes).
pub fn repository_key(path: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(path.as_bytes())
}

/// The set of existing repositories, with the paths to write them back out.
///
/// Paths are compared exactly; they are held by their 128-bit hash so that the many events
/// naming one repository need not each carry its path.
#[derive(Debug, Default)]
pub struct RepositoryLedger {
    existing: HashSet<u128, KeyHasher>,
    paths: HashMap<u128, Box<str>, KeyHasher>,
}

/// The keys are already hashes: use them as they are.
type KeyHasher = BuildHasherDefault<PassThroughHasher>;

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

    /// Applies a push; returns whether the repository existed before it.
    pub fn push(&mut self, key: u128) -> bool {
        !self.existing.insert(key)
    }

    /// Applies a repository delete.
    pub fn delete(&mut self, key: u128) {
        self.existing.remove(&key);
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
        let mut l = RepositoryLedger::seeded(["group/known"]);
        let a = repository_key("group/a");
        l.learn_path(a, "group/a".into());
        assert!(!l.push(a), "first push creates");
        assert!(l.push(a), "second push finds it");
        l.delete(a);
        assert!(!l.exists(a));
        assert!(!l.push(a), "push after delete creates again");
        assert!(l.push(repository_key("group/known")));
        assert_eq!(l.sorted_paths(), ["group/a", "group/known"]);
    }

    #[test]
    fn paths_compare_exactly() {
        let mut l = RepositoryLedger::seeded(["Group/A"]);
        assert!(!l.push(repository_key("group/a")));
        assert!(l.exists(repository_key("Group/A")));
    }
}
