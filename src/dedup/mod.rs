//! De-duplication (SPEC §3): event records in input order in, first deliveries out.
//!
//! The ids seen so far are held in an [`IdSet`] of 128-bit hashes (16 bytes an id, in 64
//! shards that grow one at a time). When the set would pass its share of the memory budget,
//! the [`Deduplicator`] *spills*: it writes the ids it holds as a sorted run of markers, and
//! from then on defers every record, with its position in input order, to sorted runs of its
//! own. At the end it merges marker and record runs by (id, position): for each id the first
//! in input order is the one delivery that counts, unless a marker says the id was seen before
//! spilling. Deferred first deliveries come out in id order, not input order; everything
//! after de-duplication (aggregation, the ledger's replay in time order) is indifferent to
//! that, so outputs do not change when a run spills.

use crate::classify::EventKind;
use crate::records::{Action, EventRecord};
use crate::spill::{codec, merge, MemoryBudget, RunFile, SpillDir, SpillRecord};
use crate::timestamp::Timestamp;
use std::io::{self, BufRead};

pub mod id_set;
pub mod rows;
mod slots;
pub mod window;

pub use id_set::{Full, IdSet};

/// A record whose fate waits for the end of the run, or (without a record) an id seen before
/// spilling. Ordered by id, then position in input order; a marker's position is 0, before
/// every record's.
#[derive(Debug)]
struct Deferred {
    id: u128,
    position: u64,
    record: Option<Box<EventRecord>>,
}

impl PartialEq for Deferred {
    fn eq(&self, other: &Self) -> bool {
        (self.id, self.position) == (other.id, other.position)
    }
}

impl Eq for Deferred {}

impl PartialOrd for Deferred {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deferred {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.id, self.position).cmp(&(other.id, other.position))
    }
}

impl Deferred {
    /// Bytes it holds in memory, for the budget.
    fn bytes(&self) -> usize {
        let heap = self.record.as_ref().map_or(0, |r| {
            std::mem::size_of::<EventRecord>()
                + r.ledger_id.as_ref().map_or(0, |s| s.as_bytes().len())
                + match &r.action {
                    Action::Other(name) => name.len(),
                    _ => 0,
                }
        });
        std::mem::size_of::<Deferred>() + heap
    }
}

fn action_code(action: &Action) -> u8 {
    match action {
        Action::Push => 0,
        Action::Delete => 1,
        Action::Pull => 2,
        Action::Mount => 3,
        Action::Other(_) => 4,
    }
}

impl SpillRecord for Deferred {
    fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u128(out, self.id);
        codec::put_u64(out, self.position);
        let Some(r) = &self.record else {
            out.push(0);
            return;
        };
        out.push(1);
        codec::put_u64(out, r.time.secs as u64);
        codec::put_u32(out, r.time.nanos);
        out.push(action_code(&r.action));
        if let Action::Other(name) = &r.action {
            codec::put_bytes(out, name.as_bytes());
        }
        out.push(r.kind.code());
        match r.user {
            Some(u) => {
                out.push(1 + u8::from(r.deploy_token));
                codec::put_u64(out, u);
            }
            None => out.push(0),
        }
        codec::put_u128(out, r.repository);
        match &r.ledger_id {
            Some(id) => {
                out.push(1);
                codec::put_bytes(out, id.as_bytes());
            }
            None => out.push(0),
        }
    }

    fn decode(input: &mut impl BufRead) -> io::Result<Option<Deferred>> {
        if codec::at_end(input)? {
            return Ok(None);
        }
        let id = codec::get_u128(input)?;
        let position = codec::get_u64(input)?;
        if codec::get_u8(input)? == 0 {
            return Ok(Some(Deferred {
                id,
                position,
                record: None,
            }));
        }
        let time = Timestamp {
            secs: codec::get_u64(input)? as i64,
            nanos: codec::get_u32(input)?,
        };
        let action = match codec::get_u8(input)? {
            0 => Action::Push,
            1 => Action::Delete,
            2 => Action::Pull,
            3 => Action::Mount,
            4 => Action::Other(codec::get_string(input, "text")?.into()),
            _ => return Err(codec::corrupt("action")),
        };
        let kind =
            EventKind::from_code(codec::get_u8(input)?).ok_or_else(|| codec::corrupt("kind"))?;
        let actor = codec::get_u8(input)?;
        let user = match actor {
            0 => None,
            _ => Some(codec::get_u64(input)?),
        };
        let deploy_token = actor == 2;
        let repository = codec::get_u128(input)?;
        let ledger_id = match codec::get_u8(input)? {
            0 => None,
            _ => Some(codec::get_string(input, "text")?.into()),
        };
        Ok(Some(Deferred {
            id,
            position,
            record: Some(Box::new(EventRecord {
                id_key: id,
                time,
                action,
                kind,
                user,
                deploy_token,
                repository,
                ledger_id,
            })),
        }))
    }
}

/// De-duplication state: the ids seen, in memory or spilled.
pub struct Deduplicator<'d> {
    mode: Mode,
    limit: usize,
    budget: MemoryBudget,
    dir: &'d SpillDir,
    /// Later deliveries found so far.
    duplicates: u64,
    /// Records taken so far: the last one's position in input order (the first is 1).
    position: u64,
    /// Position of the first record deferred, once spilled.
    deferred_from: Option<u64>,
}

enum Mode {
    Memory(IdSet),
    Spilled {
        runs: RunFile,
        pending: Vec<Deferred>,
        pending_bytes: usize,
    },
}

impl<'d> Deduplicator<'d> {
    /// Starts from the ids an earlier run saw (`seen`), spilling into `dir` past the budget.
    pub fn new(
        seen: impl IntoIterator<Item = u128>,
        budget: MemoryBudget,
        dir: &'d SpillDir,
    ) -> io::Result<Deduplicator<'d>> {
        let mut d = Deduplicator {
            mode: Mode::Memory(IdSet::default()),
            limit: budget.dedup_bytes(),
            budget,
            dir,
            duplicates: 0,
            position: 0,
            deferred_from: None,
        };
        for id in seen {
            if let Mode::Memory(set) = &mut d.mode {
                if set.insert(id, d.limit).is_ok() {
                    continue;
                }
            }
            d.spill()?;
            d.defer(Deferred {
                id,
                position: 0,
                record: None,
            })?;
        }
        Ok(d)
    }

    /// Makes room for the ids of `input_bytes` of logs, as many as a chunk of `chunk_bytes`
    /// holding `chunk_events` events says they hold, within the budget. Called once, with the
    /// first chunk that has events enough to tell their density.
    pub fn reserve_for(&mut self, input_bytes: u64, chunk_events: usize, chunk_bytes: u64) {
        let per_byte = chunk_events as f64 / chunk_bytes.max(1) as f64;
        self.reserve((input_bytes as f64 * per_byte) as usize);
    }

    /// Makes room for about `ids` more ids, within the budget (see [`IdSet::reserve`]).
    pub fn reserve(&mut self, ids: usize) {
        if let Mode::Memory(set) = &mut self.mode {
            let total = set.len().saturating_add(ids);
            set.reserve(total, self.limit);
        }
    }

    /// Later deliveries found so far (more may come out of [`Deduplicator::finish`]).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Records taken so far: the position of the last (the first record's is 1).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Once spilled, the position from which on every record is deferred: [`Deduplicator::take`]
    /// says false for them, and [`Deduplicator::finish`] which are first deliveries.
    pub fn deferred_from(&self) -> Option<u64> {
        self.deferred_from
    }

    /// Whether the ids no longer fit in memory.
    pub fn spilled(&self) -> bool {
        matches!(self.mode, Mode::Spilled { .. })
    }

    /// Takes the next record in input order: true when it is the first delivery of its id,
    /// false when it is a later one or (after spilling) deferred, as a copy, to
    /// [`Deduplicator::finish`].
    pub fn take(&mut self, record: &EventRecord) -> io::Result<bool> {
        self.take_keyed(record.id_key, record)
    }

    /// [`Deduplicator::take`] with the record's id given apart: the record itself is read only
    /// if it must be deferred.
    fn take_keyed(&mut self, id: u128, record: &EventRecord) -> io::Result<bool> {
        self.position += 1;
        if let Mode::Memory(set) = &mut self.mode {
            match set.insert(id, self.limit) {
                Ok(new) => {
                    self.duplicates += u64::from(!new);
                    return Ok(new);
                }
                Err(Full) => self.spill()?,
            }
        }
        self.defer(Deferred {
            id,
            position: self.position,
            record: Some(Box::new(record.clone())),
        })?;
        Ok(false)
    }

    /// [`Deduplicator::take`] for each record of a chunk, in order, given the records' `ids`
    /// apart (only those are read while the ids fit in memory): `firsts` is set to say which
    /// are first deliveries.
    pub fn take_all(
        &mut self,
        ids: &[u128],
        records: &[EventRecord],
        firsts: &mut Vec<bool>,
    ) -> io::Result<()> {
        /// How many records ahead the id set's slots are fetched.
        const AHEAD: usize = 8;
        debug_assert_eq!(ids.len(), records.len());
        firsts.clear();
        firsts.reserve(ids.len());
        for (i, (&id, record)) in ids.iter().zip(records).enumerate() {
            if let (Mode::Memory(set), Some(&next)) = (&self.mode, ids.get(i + AHEAD)) {
                set.prefetch(next);
            }
            firsts.push(self.take_keyed(id, record)?);
        }
        Ok(())
    }

    /// Writes the id set as a run of markers and frees it.
    fn spill(&mut self) -> io::Result<()> {
        let Mode::Memory(set) = &mut self.mode else {
            return Ok(());
        };
        // The record being taken, if any, is the first deferred.
        self.deferred_from = Some(self.position.max(1));
        let ids = std::mem::take(set).into_sorted();
        let mut runs = RunFile::create(self.dir, "dedup.runs")?;
        let markers: Vec<Deferred> = ids
            .into_iter()
            .map(|id| Deferred {
                id,
                position: 0,
                record: None,
            })
            .collect();
        runs.write_run(&markers)?;
        self.mode = Mode::Spilled {
            runs,
            pending: Vec::new(),
            pending_bytes: 0,
        };
        Ok(())
    }

    fn defer(&mut self, d: Deferred) -> io::Result<()> {
        let Mode::Spilled {
            runs,
            pending,
            pending_bytes,
        } = &mut self.mode
        else {
            unreachable!("records are deferred only after spilling");
        };
        *pending_bytes += d.bytes();
        pending.push(d);
        if *pending_bytes > self.limit {
            pending.sort_unstable();
            runs.write_run(pending.iter())?;
            pending.clear();
            *pending_bytes = 0;
        }
        Ok(())
    }

    /// Ends de-duplication: calls `first` with the position and record of each deferred record
    /// that is the first delivery of its id (in id order), and returns how many later
    /// deliveries there were in all.
    pub fn finish(self, mut first: impl FnMut(u64, EventRecord)) -> io::Result<u64> {
        let mut duplicates = self.duplicates;
        let Mode::Spilled {
            mut runs,
            mut pending,
            ..
        } = self.mode
        else {
            return Ok(duplicates);
        };
        pending.sort_unstable();
        runs.compact::<Deferred>(self.budget)?;
        let readers = runs.readers::<Deferred>(self.budget.merge_buffer(runs.runs() + 1))?;
        let mut sources: Vec<Box<dyn Iterator<Item = io::Result<Deferred>>>> = readers
            .into_iter()
            .map(|r| Box::new(r) as Box<dyn Iterator<Item = _>>)
            .collect();
        sources.push(Box::new(pending.into_iter().map(Ok)));
        let mut current: Option<u128> = None;
        for d in merge(sources) {
            let d = d?;
            let first_of_id = current != Some(d.id);
            current = Some(d.id);
            match (d.record, first_of_id) {
                (Some(record), true) => first(d.position, *record),
                (Some(_), false) => duplicates += 1,
                (None, _) => {}
            }
        }
        Ok(duplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u128) -> EventRecord {
        EventRecord {
            id_key: id,
            time: Timestamp {
                secs: id as i64,
                nanos: 3,
            },
            action: if id.is_multiple_of(3) {
                Action::Other(format!("act{id}").into())
            } else {
                Action::Pull
            },
            kind: if id.is_multiple_of(2) {
                EventKind::RepositoryPush
            } else {
                EventKind::Untracked
            },
            user: (!id.is_multiple_of(5)).then_some(id as u64 * 7),
            deploy_token: !id.is_multiple_of(5) && id.is_multiple_of(7),
            repository: id * 11,
            ledger_id: id.is_multiple_of(2).then(|| format!("id-{id}").into()),
        }
    }

    /// With a budget too small for any id, every record is deferred and spilled, and what
    /// comes out is what the in-memory path gives: each id's first delivery, ids seen by an
    /// earlier run never.
    #[test]
    fn spilled_and_in_memory_deduplication_agree() {
        let parent = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(parent.path(), &[]).unwrap();
        let ids: Vec<u128> = (0..3000u128).map(|i| (i * 7919) % 1000 + 1).collect();
        let seen = [5u128, 77, 999];
        let run = |budget: u64| {
            let mut d = Deduplicator::new(seen, MemoryBudget::new(budget), &dir).unwrap();
            let mut firsts = Vec::new();
            let records: Vec<EventRecord> = ids.iter().map(|&id| record(id)).collect();
            let mut first = Vec::new();
            d.take_all(&ids, &records, &mut first).unwrap();
            firsts.extend(
                records
                    .into_iter()
                    .zip(first)
                    .filter(|(_, f)| *f)
                    .map(|(r, _)| r),
            );
            let spilled = d.spilled();
            let from = d.deferred_from();
            assert_eq!(from.is_some(), spilled);
            let duplicates = d
                .finish(|position, r| {
                    // Positions count records from 1, in input order, from where deferral began.
                    assert!(from.is_some_and(|f| position >= f));
                    assert_eq!(ids[position as usize - 1], r.id_key);
                    firsts.push(r)
                })
                .unwrap();
            firsts.sort_by_key(|r| r.id_key);
            (firsts, duplicates, spilled)
        };
        let (memory, dup_memory, spilled) = run(1 << 30);
        assert!(!spilled);
        assert_eq!(memory.len(), 997);
        assert_eq!(dup_memory, 3000 - 997);
        for budget in [1, 5_000, 60_000] {
            let (firsts, duplicates, spilled) = run(budget);
            assert!(spilled, "budget {budget}");
            assert_eq!(duplicates, dup_memory, "budget {budget}");
            assert_eq!(firsts.len(), memory.len());
            for (a, b) in firsts.iter().zip(&memory) {
                assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
        }
    }
}
