//! The ledger's buffer and replay: first deliveries that touch the ledger in, the ledger moved
//! on and each repository push resolved into a create or a push out (SPEC §6).
//!
//! Events arrive in input order but must be applied in (UTC time, id) order, so every push
//! and repository delete is kept until reading ends, as a 48-byte [`LedgerRecord`] (its id's
//! bytes beside it, for ties). Records are split into parts by repository: no repository's
//! existence depends on another's, so the parts replay apart, on all cores. Past its share of
//! the memory budget the buffer sorts each part and writes it as a run to the part's file; a
//! part then replays from the merge of its runs, through the same code as a part that never
//! left memory.
//!
//! Nothing here grows with the number of repositories outside the budget: the paths of the
//! repositories the records name are logged per part beside them (once per repository between
//! two spills) and spill with them; the earlier ledger comes cut into the parts, kept within
//! its own share ([`PriorLedger`]); and each part, once replayed, leaves its repositories
//! sorted by path, in memory or in a file of its own ([`ReplayedLedger`]). Only the parts being replayed (one per core) hold
//! their repositories in maps.

use super::{
    part_of, sorted_entries, LedgerEntry, PartEntries, PriorLedger, PriorPart, ReplayedLedger,
    RepositoryLedger, PARTS,
};
use crate::classify::{ActorKind, EventKind, TrackedEvent};
use crate::records::{EventRecord, LedgerId, PathMap};
use crate::spill::{codec, merge, MemoryBudget, RunFile, SpillDir, SpillRecord};
use crate::timestamp::Timestamp;
use rayon::prelude::*;
use std::io::{self, BufRead};
use std::ops::Deref;

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
/// The actor (`USER`) is a deploy token: a push counts in the `_deploy_token` metrics.
const DEPLOY_TOKEN: u8 = 4;

/// One push or repository delete as the ledger keeps it: 48 bytes, its id in the part's arena.
///
/// The repository is its key itself, not a number in an index of the run's repositories: such
/// an index held every repository of the run, outside the budget, and was most of a run's
/// memory over millions of them.
#[derive(Clone, Copy, Debug)]
struct LedgerRecord {
    secs: i64,
    /// The repository key's halves, high first: two `u64`s keep the record 8-byte aligned
    /// (a `u128` would pad it to 64 bytes).
    key: [u64; 2],
    user: u64,
    nanos: u32,
    /// Where the id's bytes are in the part's arena.
    id_at: u32,
    id_len: u32,
    step: Step,
    flags: u8,
}

fn split_key(key: u128) -> [u64; 2] {
    [(key >> 64) as u64, key as u64]
}

fn join_key([high, low]: [u64; 2]) -> u128 {
    (u128::from(high) << 64) | u128::from(low)
}

/// The same, with its id, as a spilled run holds it; ordered by (time, id).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SpilledRecord {
    secs: i64,
    nanos: u32,
    id: Box<[u8]>,
    repository: u128,
    user: u64,
    step: u8,
    flags: u8,
}

impl SpillRecord for SpilledRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u64(out, self.secs as u64);
        codec::put_u32(out, self.nanos);
        codec::put_u128(out, self.repository);
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
            repository: codec::get_u128(input)?,
            user: codec::get_u64(input)?,
            step: codec::get_u8(input)?,
            flags: codec::get_u8(input)?,
            id: codec::get_bytes(input)?.into(),
        }))
    }
}

/// A repository's path, as a part's path log spills it.
struct PathRecord {
    key: u128,
    path: Box<str>,
}

impl SpillRecord for PathRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u128(out, self.key);
        codec::put_bytes(out, self.path.as_bytes());
    }

    fn decode(input: &mut impl BufRead) -> io::Result<Option<PathRecord>> {
        if codec::at_end(input)? {
            return Ok(None);
        }
        let key = codec::get_u128(input)?;
        let path = codec::get_string(input, "repository path")?;
        Ok(Some(PathRecord {
            key,
            path: path.into(),
        }))
    }
}

/// A record's id in its part's arena.
fn id_in<'a>(ids: &'a [u8], r: &LedgerRecord) -> &'a [u8] {
    &ids[r.id_at as usize..(r.id_at + r.id_len) as usize]
}

/// A logged path: the repository's key and where its path is in the part's path text.
#[derive(Clone, Copy)]
struct PathAt {
    key: [u64; 2],
    at: u32,
    len: u32,
}

/// A part's records and paths: in memory, and the runs already spilled.
#[derive(Default)]
struct Part {
    records: Vec<LedgerRecord>,
    ids: Vec<u8>,
    runs: Option<RunFile>,
    /// Paths of the repositories the records name, each once since the last spill.
    paths: Vec<PathAt>,
    path_text: String,
    /// Every spill's paths, one after another (read back whole, in no order).
    path_runs: Option<RunFile>,
}

impl Part {
    fn bytes(&self) -> usize {
        self.records.capacity() * std::mem::size_of::<LedgerRecord>()
            + self.ids.capacity()
            + self.paths.capacity() * std::mem::size_of::<PathAt>()
            + self.path_text.capacity()
    }

    fn id(&self, r: &LedgerRecord) -> &[u8] {
        id_in(&self.ids, r)
    }

    fn path(&self, p: &PathAt) -> &str {
        &self.path_text[p.at as usize..(p.at + p.len) as usize]
    }

    /// Logs the path of a repository; a path that would take the text past 4 GiB spills first.
    fn log_path(&mut self, key: u128, path: &str) -> bool {
        let (Ok(at), Ok(len)) = (
            u32::try_from(self.path_text.len()),
            u32::try_from(path.len()),
        ) else {
            return false;
        };
        if at.checked_add(len).is_none() {
            return false;
        }
        self.path_text.push_str(path);
        self.paths.push(PathAt {
            key: split_key(key),
            at,
            len,
        });
        true
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
            repository: join_key(r.key),
            user: r.user,
            step: r.step as u8,
            flags: r.flags,
        }
    }

    /// Teaches `ledger` every path this part logged, spilled or not, and lets go of them.
    fn teach_paths(&mut self, ledger: &mut RepositoryLedger, buffer: usize) -> io::Result<()> {
        if let Some(runs) = self.path_runs.take() {
            for p in runs.seal()?.concatenated::<PathRecord>(buffer)? {
                let p = p?;
                ledger.learn_path(p.key, p.path);
            }
        }
        for p in &self.paths {
            ledger.learn_path(join_key(p.key), self.path(p).into());
        }
        self.paths = Vec::new();
        self.path_text = String::new();
        Ok(())
    }
}

/// The repositories whose paths the buffer logged since it last spilled, so that a repository
/// that many events name has its path logged once, not once per event.
///
/// Open addressing with linear probing on the keys' low bits (the keys are hashes), at most
/// half full, the zero key kept apart: its own rather than a `HashSet`, so that the slot of a
/// key to come can be fetched while the keys before it are looked up
/// ([`LoggedKeys::prefetch`]). With the logs streaming through the caches, a map's lookups
/// missed them nearly every time (perf, 4M events: 80% of the buffer's samples on the two
/// loads of a lookup). Its memory counts in the ledger's budget, and a spill empties it.
#[derive(Default)]
struct LoggedKeys {
    slots: Vec<u128>,
    len: usize,
    zero: bool,
}

impl LoggedKeys {
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

    /// Adds `key`; whether it was not there yet.
    fn insert(&mut self, key: u128) -> bool {
        if key == 0 {
            return !std::mem::replace(&mut self.zero, true);
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = key;
                    self.len += 1;
                    return true;
                }
                k if k == key => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(64);
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        for key in old.into_iter().filter(|&k| k != 0) {
            let mut i = self.home(key);
            while self.slots[i] != 0 {
                i = (i + 1) & (size - 1);
            }
            self.slots[i] = key;
        }
    }

    fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u128>()
    }
}

/// A repository push the ledger resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedPush {
    /// `CreateRepository` or `PushRepository`, by a user or a deploy token.
    pub event: TrackedEvent,
    pub time: Timestamp,
    /// The actor's identity hash (0 when the actor is neither a user nor a deploy token).
    pub user: u64,
    /// Whether it counts in a metric: a user's or a deploy token's, inside
    /// `--since`/`--until`.
    pub counted: bool,
}

/// The ledger moved on by a run's replay.
pub struct Replayed<S> {
    pub ledger: ReplayedLedger,
    /// Events older than the last one an earlier run applied to their repository.
    pub late_events: u64,
    /// What each part's sink gathered of the resolved pushes.
    pub sinks: Vec<S>,
}

/// The ledger's events of one run, kept for the replay. `D` holds the folder it spills into:
/// a run lends its own (`&SpillDir`); an engine's task, which outlives no call, gives it one
/// it owns.
pub struct LedgerBuffer<D: Deref<Target = SpillDir>> {
    /// The ledger earlier runs left (or the seed), cut into the parts.
    prior: Vec<PriorPart>,
    /// Keep, for a state, the time of the last event applied to each repository and the
    /// deleted repositories with theirs.
    times: bool,
    parts: Vec<Part>,
    logged: LoggedKeys,
    bytes: usize,
    budget: MemoryBudget,
    dir: D,
}

impl<D: Deref<Target = SpillDir>> LedgerBuffer<D> {
    /// Starts from the ledger earlier runs left (or the seed), spilling into `dir`; `times`
    /// keeps what a state needs (the time of the last event applied to each repository).
    pub fn new(ledger: PriorLedger, times: bool, budget: MemoryBudget, dir: D) -> Self {
        LedgerBuffer {
            prior: ledger.into_parts(),
            times,
            parts: (0..PARTS).map(|_| Part::default()).collect(),
            logged: LoggedKeys::default(),
            bytes: 0,
            budget,
            dir,
        }
    }

    /// Starts from `ledger` instead of the one given to [`LedgerBuffer::new`]: what an engine's
    /// task learns only once its rows have all come (the known repositories travel with them).
    /// The earlier ledger is read only by the replay.
    pub fn seed(&mut self, ledger: PriorLedger) {
        self.prior = ledger.into_parts();
    }

    /// Logs the path of a repository (looked up by `path` only then), unless it was logged
    /// since the last spill: most records name a repository logged already.
    fn learn_path<'p>(
        &mut self,
        key: u128,
        path: impl FnOnce() -> Option<&'p str>,
    ) -> io::Result<()> {
        let table = self.logged.bytes();
        if !self.logged.insert(key) {
            return Ok(());
        }
        let Some(path) = path() else {
            return Ok(());
        };
        let part = &mut self.parts[part_of(key)];
        let before = part.bytes();
        if !part.log_path(key, path) {
            self.spill()?;
            self.logged.insert(key);
            let part = &mut self.parts[part_of(key)];
            part.log_path(key, path);
            self.bytes = part.bytes() + self.logged.bytes();
        } else {
            self.bytes = self.bytes + part.bytes() - before + self.logged.bytes() - table;
        }
        self.spill_if_over()
    }

    /// Records the paths behind repository keys, for `repositories.txt` and the state.
    pub fn learn_paths(&mut self, paths: &PathMap) -> io::Result<()> {
        for (key, path) in paths.iter() {
            self.learn_path(key, || Some(path))?;
        }
        Ok(())
    }

    /// Keeps a first delivery that touches the ledger; `in_range` says whether it is inside
    /// `--since`/`--until`. Other records are ignored. The repository's path is taken from
    /// `paths` (its chunk's).
    pub fn push(
        &mut self,
        record: &EventRecord,
        in_range: bool,
        paths: &PathMap,
    ) -> io::Result<()> {
        if self.push_record(record, in_range)? {
            self.learn_path(record.repository, || paths.get(&record.repository))?;
        }
        Ok(())
    }

    /// [`LedgerBuffer::push`] for each of a chunk's records in turn, the logged keys' slot of
    /// each record's repository fetched a few records ahead.
    pub fn push_all(
        &mut self,
        records: &[(&EventRecord, bool)],
        paths: &PathMap,
    ) -> io::Result<()> {
        /// How many records ahead the slots are fetched.
        const AHEAD: usize = 4;
        for (i, &(record, in_range)) in records.iter().enumerate() {
            if let Some((next, _)) = records.get(i + AHEAD) {
                self.logged.prefetch(next.repository);
            }
            self.push(record, in_range, paths)?;
        }
        Ok(())
    }

    /// [`LedgerBuffer::push`] for a record whose path the buffer already learned (with
    /// [`LedgerBuffer::learn_paths`]); whether the record was kept.
    pub fn push_record(&mut self, record: &EventRecord, in_range: bool) -> io::Result<bool> {
        let step = match record.kind {
            EventKind::RepositoryPush => Step::RepositoryPush,
            EventKind::DeleteRepository => Step::DeleteRepository,
            kind if kind.is_push() => Step::Push,
            _ => return Ok(false),
        };
        let Some(id) = record.ledger_id.as_ref().map(LedgerId::as_bytes) else {
            return Ok(false);
        };
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
            key: split_key(record.repository),
            user: record.user.unwrap_or(0),
            id_at,
            id_len: id.len() as u32,
            step,
            flags: if record.user.is_some() { USER } else { 0 }
                | if in_range { IN_RANGE } else { 0 }
                | if record.deploy_token { DEPLOY_TOKEN } else { 0 },
        });
        self.bytes = self.bytes + part.bytes() - before;
        self.spill_if_over()?;
        Ok(true)
    }

    fn spill_if_over(&mut self) -> io::Result<()> {
        if self.bytes > self.budget.ledger_bytes() {
            self.spill()?;
        }
        Ok(())
    }

    /// Whether any part, or the earlier ledger, was written to disk.
    pub fn spilled(&self) -> bool {
        self.parts
            .iter()
            .any(|p| p.runs.is_some() || p.path_runs.is_some())
            || self.prior.iter().any(|p| p.file.is_some())
    }

    /// Sorts every part and writes it as a run, and its paths after the ones spilled before;
    /// the buffer is empty after.
    ///
    /// One part after another, on the calling thread: the fold tasks call this holding the
    /// buffer's lock, and a parallel loop here would let this thread run another fold task
    /// while it waits, which would block on that same lock for good.
    fn spill(&mut self) -> io::Result<()> {
        let dir = &*self.dir;
        for (i, part) in self.parts.iter_mut().enumerate() {
            if !part.records.is_empty() {
                part.sort();
                if part.runs.is_none() {
                    part.runs = Some(RunFile::create(dir, &format!("ledger-part-{i:02}.runs"))?);
                }
                let run: Vec<SpilledRecord> =
                    part.records.iter().map(|r| part.spilled(r)).collect();
                if let Some(runs) = &mut part.runs {
                    runs.write_run(&run)?;
                }
                part.records = Vec::new();
                part.ids = Vec::new();
            }
            if !part.paths.is_empty() {
                if part.path_runs.is_none() {
                    part.path_runs =
                        Some(RunFile::create(dir, &format!("ledger-paths-{i:02}.runs"))?);
                }
                let paths: Vec<PathRecord> = part
                    .paths
                    .iter()
                    .map(|p| PathRecord {
                        key: join_key(p.key),
                        path: part.path(p).into(),
                    })
                    .collect();
                if let Some(runs) = &mut part.path_runs {
                    runs.write_run(&paths)?;
                }
                part.paths = Vec::new();
                part.path_text = String::new();
            }
        }
        self.logged = LoggedKeys::default();
        self.bytes = 0;
        Ok(())
    }

    /// Replays every part in (time, id) order on all cores. Each part's resolved pushes go to
    /// `on_push`, with their event id and that part's sink (made by `new_sink`).
    pub fn replay<S: Send>(
        self,
        new_sink: impl Fn() -> S + Sync,
        on_push: impl Fn(&mut S, ResolvedPush, &[u8]) + Sync,
    ) -> io::Result<Replayed<S>> {
        let LedgerBuffer {
            prior,
            times,
            parts,
            budget,
            dir,
            ..
        } = self;
        let dir: &SpillDir = &dir;
        // Each part's repositories, once replayed, stay in memory while all parts' together
        // take at most half the ledger's share of the budget (whose records are gone by then).
        let keep_in_memory = budget.ledger_bytes() / 2 / PARTS;
        let replayed: Vec<(PartEntries, usize, usize, u64, S)> = parts
            .into_par_iter()
            .zip(prior)
            .enumerate()
            .map(|(i, (mut part, prior))| {
                let mut ledger = prior.ledger(budget.merge_buffer(1))?;
                part.teach_paths(&mut ledger, budget.merge_buffer(1))?;
                let mut sink = new_sink();
                // Applies one event; true when it came late.
                let mut step = |r: &RecordView| {
                    let late = ledger.is_late(r.repository, r.time());
                    if let Some(push) = apply(&mut ledger, r) {
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
                drop(part);
                let entries = ledger.into_entries(times);
                let (len, existing) = (entries.len(), entries.iter().filter(|e| e.exists).count());
                let bytes = entries.capacity() * std::mem::size_of::<LedgerEntry>()
                    + entries.iter().map(|e| e.path.capacity()).sum::<usize>();
                let entries = if bytes > keep_in_memory {
                    let mut file =
                        RunFile::create(dir, &format!("ledger-repositories-{i:02}.runs"))?;
                    file.write_run(&sorted_entries(entries))?;
                    PartEntries::Spilled(file.seal()?)
                } else {
                    PartEntries::Memory(entries)
                };
                Ok((entries, len, existing, late, sink))
            })
            .collect::<io::Result<_>>()?;
        let mut late_events = 0;
        let (mut existing, mut len) = (0, 0);
        let mut entries = Vec::with_capacity(PARTS);
        let mut sinks = Vec::with_capacity(PARTS);
        for (part, part_len, part_existing, late, sink) in replayed {
            entries.push(part);
            len += part_len;
            existing += part_existing;
            late_events += late;
            sinks.push(sink);
        }
        Ok(Replayed {
            ledger: ReplayedLedger {
                buffer: budget.merge_buffer(PARTS),
                parts: entries,
                existing,
                len,
            },
            late_events,
            sinks,
        })
    }
}

/// What the replay reads of a record, whether it stayed in memory or was spilled.
struct RecordView<'a> {
    secs: i64,
    nanos: u32,
    repository: u128,
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
            repository: join_key(r.key),
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
fn apply(ledger: &mut RepositoryLedger, r: &RecordView) -> Option<ResolvedPush> {
    let key = r.repository;
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
            let event = if existed {
                TrackedEvent::PushRepository
            } else {
                TrackedEvent::CreateRepository
            };
            let actor = if r.flags & DEPLOY_TOKEN != 0 {
                ActorKind::DeployToken
            } else {
                ActorKind::User
            };
            Some(ResolvedPush {
                event: event.by(actor),
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

    /// Each key is new once, and stays known as the table grows: keys alike in their low bits
    /// (which place them) and the zero key included.
    #[test]
    fn logged_keys_are_new_once() {
        let mut logged = LoggedKeys::default();
        logged.prefetch(1);
        let key = |i: u128| (i % 7) | (i << 64);
        for round in 0..2 {
            for i in 0..5_000u128 {
                logged.prefetch(key(i + 1));
                assert_eq!(logged.insert(key(i)), round == 0, "round {round}, key {i}");
            }
        }
        assert_eq!(logged.len, 4_999, "the zero key is kept apart");
        assert!(logged.slots.len() >= 10_000);
    }

    #[test]
    fn keys_split_and_join() {
        for key in [0, 1, u128::MAX, 1 << 64, (7 << 100) | 3] {
            assert_eq!(join_key(split_key(key)), key);
        }
        assert_eq!(std::mem::size_of::<LedgerRecord>(), 48);
    }
}
