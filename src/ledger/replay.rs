//! The ledger's buffer and replay: first deliveries that touch the ledger in, the ledger moved
//! on and each repository push resolved into a create or a push out (SPEC §6).
//!
//! Events arrive in input order but must be applied in (UTC time, id) order, so every push
//! and repository delete is kept until reading ends, as a 40-byte [`LedgerRecord`] (its id's
//! bytes beside it, for ties). Records are split into parts by repository: no repository's
//! existence depends on another's, so the parts replay apart, on all cores. Past its share of
//! the memory budget the buffer sorts each part and writes it as a run to the part's file; a
//! part then replays from the merge of its runs, through the same code as a part that never
//! left memory.

use super::RepositoryLedger;
use crate::classify::{EventKind, TrackedEvent};
use crate::records::{EventRecord, LedgerId, PathMap};
use crate::spill::{codec, merge, MemoryBudget, RunFile, SpillDir, SpillRecord};
use crate::timestamp::Timestamp;
use rayon::prelude::*;
use std::io::{self, BufRead};

/// Parts by the top bits of the repository key.
const PART_BITS: u32 = 4;
const PARTS: usize = 1 << PART_BITS;

fn part_of(key: u128) -> usize {
    (key >> (128 - PART_BITS)) as usize
}

/// What the ledger does with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    /// A tag push: the repository exists after it.
    Push = 0,
    /// A push without a tag: a create or a push, as the repository exists or not.
    RepositoryPush = 1,
    DeleteRepository = 2,
}

impl Step {
    fn of(code: u8) -> Option<Step> {
        [Step::Push, Step::RepositoryPush, Step::DeleteRepository]
            .get(usize::from(code))
            .copied()
    }
}

/// The event's actor is a user; its `user` is the identity hash.
const USER: u8 = 1;
/// The event is inside `--since`/`--until`.
const IN_RANGE: u8 = 2;

/// One push or repository delete as the ledger keeps it: 40 bytes, its id in the part's arena.
#[derive(Clone, Copy, Debug)]
struct LedgerRecord {
    secs: i64,
    nanos: u32,
    /// Index of the repository in the run's [`Repositories`].
    repository: u32,
    user: u64,
    /// Where the id's bytes are in the part's arena.
    id_at: u32,
    id_len: u32,
    step: Step,
    flags: u8,
}

/// The same, with its id, as a spilled run holds it; ordered by (time, id).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SpilledRecord {
    secs: i64,
    nanos: u32,
    id: Box<[u8]>,
    repository: u32,
    user: u64,
    step: u8,
    flags: u8,
}

impl SpillRecord for SpilledRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u64(out, self.secs as u64);
        codec::put_u32(out, self.nanos);
        codec::put_u32(out, self.repository);
        codec::put_u64(out, self.user);
        out.extend_from_slice(&[self.step, self.flags]);
        codec::put_bytes(out, &self.id);
    }

    fn decode(input: &mut impl BufRead) -> io::Result<Option<SpilledRecord>> {
        if codec::at_end(input)? {
            return Ok(None);
        }
        Ok(Some(SpilledRecord {
            secs: codec::get_u64(input)? as i64,
            nanos: codec::get_u32(input)?,
            repository: codec::get_u32(input)?,
            user: codec::get_u64(input)?,
            step: codec::get_u8(input)?,
            flags: codec::get_u8(input)?,
            id: codec::get_bytes(input)?.into(),
        }))
    }
}

/// A record's id in its part's arena.
fn id_in<'a>(ids: &'a [u8], r: &LedgerRecord) -> &'a [u8] {
    &ids[r.id_at as usize..(r.id_at + r.id_len) as usize]
}

/// A part's records: in memory, and the runs already spilled.
#[derive(Default)]
struct Part {
    records: Vec<LedgerRecord>,
    ids: Vec<u8>,
    runs: Option<RunFile>,
}

impl Part {
    fn bytes(&self) -> usize {
        self.records.capacity() * std::mem::size_of::<LedgerRecord>() + self.ids.capacity()
    }

    fn id(&self, r: &LedgerRecord) -> &[u8] {
        id_in(&self.ids, r)
    }

    /// Sorts the records by (time, id).
    fn sort(&mut self) {
        let ids = &self.ids;
        self.records.sort_unstable_by(|a, b| {
            (a.secs, a.nanos)
                .cmp(&(b.secs, b.nanos))
                .then_with(|| id_in(ids, a).cmp(id_in(ids, b)))
        });
    }

    fn spilled(&self, r: &LedgerRecord) -> SpilledRecord {
        SpilledRecord {
            secs: r.secs,
            nanos: r.nanos,
            id: self.id(r).into(),
            repository: r.repository,
            user: r.user,
            step: r.step as u8,
            flags: r.flags,
        }
    }
}

/// The repositories the run's ledger events name, numbered in the order first seen: their
/// keys in that order, and an index from key to number.
///
/// The index is open addressing with linear probing on the keys' low bits (the keys are
/// hashes), at most half full: its own rather than a `HashMap`, so that the slot of a key to
/// come can be fetched while the keys before it are looked up ([`Repositories::prefetch`]).
/// With the logs streaming through the caches, the map's lookups missed them nearly every
/// time (perf, 4M events: 80% of the buffer's samples on the two loads of a lookup).
#[derive(Default)]
struct Repositories {
    keys: Vec<u128>,
    /// (key, number + 1); a slot whose second half is 0 is empty.
    slots: Vec<(u128, u32)>,
}

impl Repositories {
    /// The slot where `key` is looked up first (the table is not empty).
    fn home(&self, key: u128) -> usize {
        key as usize & (self.slots.len() - 1)
    }

    /// Asks for the slot where `key` is looked up first.
    fn prefetch(&self, key: u128) {
        if !self.slots.is_empty() {
            crate::cache_line::prefetch(&self.slots[self.home(key)]);
        }
    }

    /// The number of `key`, which a key seen for the first time gets now.
    fn intern(&mut self, key: u128) -> u32 {
        if (self.keys.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            match self.slots[i] {
                (_, 0) => {
                    let next = self.keys.len() as u32;
                    self.slots[i] = (key, next + 1);
                    self.keys.push(key);
                    return next;
                }
                (k, n) if k == key => return n - 1,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(64);
        let old = std::mem::replace(&mut self.slots, vec![(0, 0); size]);
        for (key, n) in old.into_iter().filter(|&(_, n)| n != 0) {
            let mut i = self.home(key);
            while self.slots[i].1 != 0 {
                i = (i + 1) & (size - 1);
            }
            self.slots[i] = (key, n);
        }
    }
}

/// A repository push the ledger resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedPush {
    /// `CreateRepository` or `PushRepository`.
    pub event: TrackedEvent,
    pub time: Timestamp,
    /// The user's identity hash (0 when the actor is not a user).
    pub user: u64,
    /// Whether it counts in a user metric: a user's, inside `--since`/`--until`.
    pub counted: bool,
}

/// The ledger moved on by a run's replay.
pub struct Replayed<S> {
    pub ledger: RepositoryLedger,
    /// Events older than the last one an earlier run applied to their repository.
    pub late_events: u64,
    /// What each part's sink gathered of the resolved pushes.
    pub sinks: Vec<S>,
}

/// The ledger's events of one run, kept for the replay.
pub struct LedgerBuffer<'d> {
    ledger: RepositoryLedger,
    parts: Vec<Part>,
    repositories: Repositories,
    bytes: usize,
    budget: MemoryBudget,
    dir: &'d SpillDir,
}

impl<'d> LedgerBuffer<'d> {
    /// Starts from the ledger earlier runs left (or the seed), spilling into `dir`.
    pub fn new(ledger: RepositoryLedger, budget: MemoryBudget, dir: &'d SpillDir) -> Self {
        LedgerBuffer {
            ledger,
            parts: (0..PARTS).map(|_| Part::default()).collect(),
            repositories: Repositories::default(),
            bytes: 0,
            budget,
            dir,
        }
    }

    /// Records the paths behind repository keys, for `repositories.txt` and the state.
    pub fn learn_paths(&mut self, paths: &PathMap) {
        for (key, path) in paths.iter() {
            self.ledger.learn_path(key, path.into());
        }
    }

    /// Keeps a first delivery that touches the ledger; `in_range` says whether it is inside
    /// `--since`/`--until`. Other records are ignored. The first time this run names a
    /// repository, its path is taken from `paths` (its chunk's).
    pub fn push(
        &mut self,
        record: &EventRecord,
        in_range: bool,
        paths: &PathMap,
    ) -> io::Result<()> {
        let known = self.repositories.keys.len();
        self.push_record(record, in_range)?;
        if self.repositories.keys.len() > known {
            if let Some(path) = paths.get(&record.repository) {
                self.ledger.learn_path(record.repository, path.into());
            }
        }
        Ok(())
    }

    /// [`LedgerBuffer::push`] for each of a chunk's records in turn, the index slot of each
    /// record's repository fetched a few records ahead.
    pub fn push_all(
        &mut self,
        records: &[(&EventRecord, bool)],
        paths: &PathMap,
    ) -> io::Result<()> {
        /// How many records ahead the slots are fetched.
        const AHEAD: usize = 4;
        for (i, &(record, in_range)) in records.iter().enumerate() {
            if let Some((next, _)) = records.get(i + AHEAD) {
                self.repositories.prefetch(next.repository);
            }
            self.push(record, in_range, paths)?;
        }
        Ok(())
    }

    /// [`LedgerBuffer::push`] for a record whose path the buffer already learned (with
    /// [`LedgerBuffer::learn_paths`]).
    pub fn push_record(&mut self, record: &EventRecord, in_range: bool) -> io::Result<()> {
        let step = match record.kind {
            EventKind::RepositoryPush => Step::RepositoryPush,
            EventKind::DeleteRepository => Step::DeleteRepository,
            kind if kind.is_push() => Step::Push,
            _ => return Ok(()),
        };
        let Some(id) = record.ledger_id.as_ref().map(LedgerId::as_bytes) else {
            return Ok(());
        };
        let repository = self.repositories.intern(record.repository);
        let part = &mut self.parts[part_of(record.repository)];
        // The arena's offsets are 32-bit: a part that would pass 4 GiB spills first.
        if part.ids.len() + id.len() > u32::MAX as usize {
            self.spill()?;
        }
        let part = &mut self.parts[part_of(record.repository)];
        let before = part.bytes();
        let id_at = part.ids.len() as u32;
        part.ids.extend_from_slice(id);
        part.records.push(LedgerRecord {
            secs: record.time.secs,
            nanos: record.time.nanos,
            repository,
            user: record.user.unwrap_or(0),
            id_at,
            id_len: id.len() as u32,
            step,
            flags: if record.user.is_some() { USER } else { 0 }
                | if in_range { IN_RANGE } else { 0 },
        });
        self.bytes = self.bytes + part.bytes() - before;
        if self.bytes > self.budget.ledger_bytes() {
            self.spill()?;
        }
        Ok(())
    }

    /// Whether any part was written to disk.
    pub fn spilled(&self) -> bool {
        self.parts.iter().any(|p| p.runs.is_some())
    }

    /// Sorts every part and writes it as a run; the buffer is empty after.
    ///
    /// One part after another, on the calling thread: the fold tasks call this holding the
    /// buffer's lock, and a parallel loop here would let this thread run another fold task
    /// while it waits, which would block on that same lock for good.
    fn spill(&mut self) -> io::Result<()> {
        let dir = self.dir;
        for (i, part) in self.parts.iter_mut().enumerate() {
            if part.records.is_empty() {
                continue;
            }
            part.sort();
            if part.runs.is_none() {
                part.runs = Some(RunFile::create(dir, &format!("ledger-part-{i:02}.runs"))?);
            }
            let run: Vec<SpilledRecord> = part.records.iter().map(|r| part.spilled(r)).collect();
            if let Some(runs) = &mut part.runs {
                runs.write_run(&run)?;
            }
            part.records = Vec::new();
            part.ids = Vec::new();
        }
        self.bytes = 0;
        Ok(())
    }

    /// Replays every part in (time, id) order on all cores. Each part's resolved pushes go to
    /// `on_push`, with their event id and that part's sink (made by `S::default()`).
    pub fn replay<S: Default + Send>(
        self,
        on_push: impl Fn(&mut S, ResolvedPush, &[u8]) + Sync,
    ) -> io::Result<Replayed<S>> {
        let keys = &self.repositories.keys;
        let budget = self.budget;
        let ledgers = self.ledger.split(PARTS, part_of);
        let replayed: Vec<(RepositoryLedger, u64, S)> = self
            .parts
            .into_par_iter()
            .zip(ledgers)
            .map(|(mut part, mut ledger)| {
                let mut sink = S::default();
                // Applies one event; true when it came late.
                let mut step = |r: &RecordView| {
                    let late = ledger.is_late(keys[r.repository as usize], r.time());
                    if let Some(push) = apply(&mut ledger, keys, r) {
                        on_push(&mut sink, push, r.id);
                    }
                    late
                };
                let mut late = 0u64;
                part.sort();
                match part.runs.take() {
                    None => {
                        for r in &part.records {
                            late += u64::from(step(&RecordView::of(r, &part.ids)));
                        }
                    }
                    Some(mut runs) => {
                        runs.compact::<SpilledRecord>(budget)?;
                        let readers =
                            runs.readers::<SpilledRecord>(budget.merge_buffer(runs.runs() + 1))?;
                        let memory: Vec<SpilledRecord> =
                            part.records.iter().map(|r| part.spilled(r)).collect();
                        let mut sources: Vec<Box<dyn Iterator<Item = io::Result<SpilledRecord>>>> =
                            readers
                                .into_iter()
                                .map(|r| Box::new(r) as Box<dyn Iterator<Item = _>>)
                                .collect();
                        sources.push(Box::new(memory.into_iter().map(Ok)));
                        for r in merge(sources) {
                            let r = r?;
                            let view = RecordView {
                                secs: r.secs,
                                nanos: r.nanos,
                                repository: r.repository,
                                user: r.user,
                                step: Step::of(r.step)
                                    .ok_or_else(|| codec::corrupt("ledger step"))?,
                                flags: r.flags,
                                id: &r.id,
                            };
                            late += u64::from(step(&view));
                        }
                    }
                }
                Ok((ledger, late, sink))
            })
            .collect::<io::Result<_>>()?;
        let mut late_events = 0;
        let mut parts = Vec::with_capacity(PARTS);
        let mut sinks = Vec::with_capacity(PARTS);
        for (ledger, late, sink) in replayed {
            parts.push(ledger);
            late_events += late;
            sinks.push(sink);
        }
        Ok(Replayed {
            ledger: RepositoryLedger::join(parts),
            late_events,
            sinks,
        })
    }
}

/// What the replay reads of a record, whether it stayed in memory or was spilled.
struct RecordView<'a> {
    secs: i64,
    nanos: u32,
    repository: u32,
    user: u64,
    step: Step,
    flags: u8,
    id: &'a [u8],
}

impl<'a> RecordView<'a> {
    fn of(r: &LedgerRecord, ids: &'a [u8]) -> RecordView<'a> {
        RecordView {
            secs: r.secs,
            nanos: r.nanos,
            repository: r.repository,
            user: r.user,
            step: r.step,
            flags: r.flags,
            id: id_in(ids, r),
        }
    }

    fn time(&self) -> Timestamp {
        Timestamp {
            secs: self.secs,
            nanos: self.nanos,
        }
    }
}

/// Applies one event to its part of the ledger; a repository push comes back resolved.
/// Lateness is judged before the event is applied, by the caller.
fn apply(ledger: &mut RepositoryLedger, keys: &[u128], r: &RecordView) -> Option<ResolvedPush> {
    let key = keys[r.repository as usize];
    let time = r.time();
    match r.step {
        Step::DeleteRepository => {
            ledger.delete(key, time);
            None
        }
        Step::Push => {
            ledger.push(key, time);
            None
        }
        Step::RepositoryPush => {
            let existed = ledger.push(key, time);
            Some(ResolvedPush {
                event: if existed {
                    TrackedEvent::PushRepository
                } else {
                    TrackedEvent::CreateRepository
                },
                time,
                user: r.user,
                counted: r.flags & (USER | IN_RANGE) == USER | IN_RANGE,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are numbered in the order first seen and keep their numbers as the index grows:
    /// keys alike in their low bits (which place them) and the zero key included.
    #[test]
    fn repositories_are_numbered_in_the_order_first_seen() {
        let mut repositories = Repositories::default();
        repositories.prefetch(1);
        let key = |i: u128| (i % 7) | (i << 64);
        for round in 0..2 {
            for i in 0..5_000u128 {
                repositories.prefetch(key(i + 1));
                assert_eq!(
                    repositories.intern(key(i)),
                    i as u32,
                    "round {round}, key {i}"
                );
            }
        }
        assert_eq!(repositories.keys, (0..5_000).map(key).collect::<Vec<_>>());
        assert!(repositories.slots.len() >= 10_000);
    }
}
