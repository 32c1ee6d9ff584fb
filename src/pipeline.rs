//! The run: inputs read in parallel, then de-duplication, the repository ledger and aggregation.
//!
//! Pass one reads and parses every input (in parallel across inputs and across chunks of one
//! input) into compact [`EventRecord`]s in input order. Pass two walks those records: the first
//! delivery of each id wins (SPEC §3), pushes and repository deletes are replayed in (time, id)
//! order through the [`RepositoryLedger`] (SPEC §6), and counted events fold into an
//! [`Aggregate`] in parallel.

use crate::aggregate::{Aggregate, MetricTable};
use crate::classify::{EventKind, TrackedEvent};
use crate::ledger::RepositoryLedger;
use crate::read::{open_input, BufferPool, Chunk, Chunker, Compression, InputPath};
use crate::records::{parse_chunk, Action, ChunkOutput, EventRecord, LineCounts, PathMap, Reject};
use crate::sketch::PassThroughHasher;
use crate::timestamp::Timestamp;
use chrono::NaiveDate;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use xxhash_rust::xxh3::Xxh3;

/// What a run is asked to do, validated (SPEC §1 to §8; outputs are the caller's).
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub inputs: Vec<InputPath>,
    /// First counted UTC day, inclusive.
    pub since: Option<NaiveDate>,
    /// First day no longer counted, exclusive.
    pub until: Option<NaiveDate>,
    pub precision: u8,
    pub max_line_bytes: usize,
    /// Size a chunk of one input is cut at for the parsers.
    pub chunk_bytes: usize,
    /// Show a progress bar of bytes read on stderr.
    pub progress: bool,
    /// Return the id and time of every de-duplicated event, for a state's de-duplication window.
    pub keep_event_ids: bool,
}

/// What earlier runs left for this one: the repository ledger and the ids already seen.
#[derive(Clone, Debug, Default)]
pub struct Prior {
    pub ledger: RepositoryLedger,
    /// Event ids (xxh3-128) whose later deliveries are duplicates.
    pub seen_ids: Vec<u128>,
}

impl RunConfig {
    /// Whether an event of this UTC date is inside `--since`/`--until`.
    pub fn in_range(&self, date: NaiveDate) -> bool {
        self.since.is_none_or(|s| date >= s) && self.until.is_none_or(|u| date < u)
    }
}

/// How one input was read.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputReport {
    pub path: String,
    pub compression: Option<Compression>,
    /// Bytes read from the file (compressed size for compressed inputs).
    pub bytes: u64,
    /// Bytes after decompression.
    pub decoded_bytes: u64,
    pub lines: u64,
    /// xxh3-128 of the file's bytes (32 hex digits), when it was read completely.
    pub content_hash: Option<String>,
    /// Why the input could not be read completely.
    pub error: Option<String>,
}

/// A reject with the input it came from.
#[derive(Clone, Debug)]
pub struct FileReject {
    pub file: String,
    pub reject: Reject,
}

/// Everything a run computed: the material of every output.
#[derive(Debug)]
pub struct Tally {
    pub inputs: Vec<InputReport>,
    pub counts: LineCounts,
    pub duplicate_events: u64,
    pub out_of_range_events: u64,
    pub manifest_deletes: u64,
    /// De-duplicated valid events by action, in or out of range.
    pub events_by_action: BTreeMap<String, u64>,
    /// Counted events (by users, in range) by tracked event.
    pub counted_events: BTreeMap<&'static str, u64>,
    pub first_event: Option<Timestamp>,
    pub last_event: Option<Timestamp>,
    pub rejects: Vec<FileReject>,
    /// This run's sketches and event counts.
    pub metrics: MetricTable,
    /// The repository ledger after this run.
    pub ledger: RepositoryLedger,
    /// Pushes and repository deletes older than the last event already applied to their
    /// repository by an earlier run (see the README on late arrivals).
    pub late_events: u64,
    /// Id and time of every de-duplicated event, when [`RunConfig::keep_event_ids`].
    pub event_ids: Vec<(u128, Timestamp)>,
    /// Wall seconds of each step, in order.
    pub phase_seconds: Vec<(&'static str, f64)>,
}

impl Tally {
    /// Inputs that could not be read completely.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inputs
            .iter()
            .filter_map(|i| i.error.as_deref().map(|e| (i.path.as_str(), e)))
    }

    /// `malformed_lines + invalid_events` over `lines` (0 for no lines).
    pub fn bad_ratio(&self) -> f64 {
        let bad = self.counts.malformed_lines + self.counts.invalid_events;
        if self.counts.lines == 0 {
            0.0
        } else {
            bad as f64 / self.counts.lines as f64
        }
    }
}

/// How many chunks of one input may wait for a parser at once; past that the reader parses
/// the chunk itself, which bounds memory without blocking a pool thread.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Runs both passes on the current rayon pool.
pub fn run(cfg: &RunConfig, prior: Prior) -> Tally {
    let mut phases = Phases::start();
    let progress = progress_bar(cfg);
    // One pool for the run: inputs read one after another reuse the same chunk buffers.
    let pool = BufferPool::default();
    let read: Vec<(InputReport, Vec<ChunkOutput>)> = cfg
        .inputs
        .par_iter()
        .map(|input| read_input(input, cfg, progress.clone(), &pool))
        .collect();
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    phases.lap("read_and_parse");
    let mut tally = tally(cfg, prior, read, &mut phases);
    tally.phase_seconds = phases.laps;
    tally
}

/// Wall time of each step of a run, for `summary.json` (where a slow run spent its time).
struct Phases {
    last: std::time::Instant,
    laps: Vec<(&'static str, f64)>,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((name, (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

fn progress_bar(cfg: &RunConfig) -> Option<indicatif::ProgressBar> {
    if !cfg.progress {
        return None;
    }
    let total: u64 = cfg
        .inputs
        .iter()
        .filter_map(|i| match i {
            InputPath::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            InputPath::Stdin => None,
        })
        .sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Reads and parses one input, its chunks in parallel, results in chunk order.
fn read_input(
    input: &InputPath,
    cfg: &RunConfig,
    progress: Option<indicatif::ProgressBar>,
    pool: &BufferPool,
) -> (InputReport, Vec<ChunkOutput>) {
    let mut report = InputReport {
        path: input.display_name(),
        compression: None,
        bytes: 0,
        decoded_bytes: 0,
        lines: 0,
        content_hash: None,
        error: None,
    };
    let opened = match open_input(input, progress.clone()) {
        Ok(o) => o,
        Err(e) => {
            report.error = Some(format!("cannot open: {e}"));
            return (report, Vec::new());
        }
    };
    report.compression = Some(opened.compression);
    let mut chunker = Chunker::with_pool(
        opened.stream,
        cfg.chunk_bytes,
        cfg.max_line_bytes,
        pool.clone(),
    );
    if opened.raw_bytes.is_none() {
        chunker.hasher = Some(Xxh3::new());
    }
    let done: Mutex<Vec<(usize, ChunkOutput)>> = Mutex::new(Vec::new());
    let in_flight = AtomicUsize::new(0);
    let mut read_error = None;
    let parse = |seq: usize, chunk: Chunk| {
        let out = parse_chunk(&chunk, cfg.max_line_bytes);
        if let Chunk::Lines(buf) = chunk {
            pool.give(buf);
        }
        done.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((seq, out));
    };
    rayon::scope(|scope| {
        for seq in 0.. {
            let before = chunker.decoded_bytes;
            let next = chunker.next_chunk();
            if let (Some(p), None) = (&progress, &opened.raw_bytes) {
                p.inc(chunker.decoded_bytes - before);
            }
            match next {
                Ok(Some(chunk)) if in_flight.load(Ordering::Acquire) < CHUNKS_IN_FLIGHT => {
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    let (parse, in_flight) = (&parse, &in_flight);
                    scope.spawn(move |_| {
                        parse(seq, chunk);
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Ok(Some(chunk)) => parse(seq, chunk),
                Ok(None) => break,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
    });
    let mut chunks = done.into_inner().unwrap_or_else(|p| p.into_inner());
    chunks.sort_unstable_by_key(|(seq, _)| *seq);
    let mut chunks: Vec<ChunkOutput> = chunks.into_iter().map(|(_, c)| c).collect();
    for c in &mut chunks {
        c.offset_lines(report.lines);
        report.lines += c.counts.lines;
    }
    report.decoded_bytes = chunker.decoded_bytes;
    let (bytes, hash) = match (&opened.raw_bytes, &chunker.hasher) {
        (Some(raw), _) => (raw.count(), raw.hash()),
        (None, Some(h)) => (report.decoded_bytes, format!("{:032x}", h.digest128())),
        (None, None) => (report.decoded_bytes, String::new()),
    };
    report.bytes = bytes;
    if let Some(e) = read_error {
        report.error = Some(format!(
            "read failed at line {} (decoded byte {}, file byte {}): {e}",
            report.lines + 1,
            report.decoded_bytes,
            report.bytes
        ));
    } else {
        report.content_hash = Some(hash);
    }
    (report, chunks)
}

type KeySet = HashSet<u128, BuildHasherDefault<PassThroughHasher>>;

/// How many parts the ids are split into for de-duplication, by their top bits: each part's
/// set is small enough to stay in a core's cache (one set of every id missed it on nearly
/// every insert), and the parts are spread over the threads.
const ID_SHARD_BITS: u32 = 6;

/// Positions (chunk, index) of the events whose id was already seen: in `seen` (a previous
/// run's ids) or earlier in input order, which is chunk order, then position in the chunk.
fn later_deliveries(chunks: &[Vec<EventRecord>], seen: &[u128]) -> Vec<(u32, u32)> {
    let shards = 1usize << ID_SHARD_BITS;
    let shard = |k: u128| (k >> (128 - ID_SHARD_BITS)) as usize;
    // Each chunk's ids sorted into their shards, in order, so that a shard reads only its own.
    // An id as two words (a u128 would pad each entry to 32 bytes) and its index in its chunk.
    type ShardIds = Vec<([u64; 2], u32)>;
    let split = |ids: &mut dyn Iterator<Item = (u128, u32)>| {
        let mut parts: Vec<ShardIds> = vec![Vec::new(); shards];
        for (k, i) in ids {
            parts[shard(k)].push(([k as u64, (k >> 64) as u64], i));
        }
        parts
    };
    let prior = split(&mut seen.iter().map(|k| (*k, 0)));
    let per_chunk: Vec<Vec<ShardIds>> = chunks
        .par_iter()
        .map(|records| {
            split(
                &mut records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.id_key, i as u32)),
            )
        })
        .collect();
    let key = |k: [u64; 2]| u128::from(k[0]) | (u128::from(k[1]) << 64);
    (0..shards)
        .into_par_iter()
        .flat_map_iter(|s| {
            let mine = per_chunk.iter().map(|parts| parts[s].len()).sum::<usize>();
            let mut set =
                KeySet::with_capacity_and_hasher(prior[s].len() + mine, Default::default());
            set.extend(prior[s].iter().map(|(k, _)| key(*k)));
            let mut later = Vec::new();
            for (c, parts) in per_chunk.iter().enumerate() {
                for (k, i) in &parts[s] {
                    if !set.insert(key(*k)) {
                        later.push((c as u32, *i));
                    }
                }
            }
            later
        })
        .collect()
}

/// Events per action. The four actions the registry sends are counted in an array: hashing
/// every event's action into a map was a visible share of the fold.
#[derive(Clone, Debug, Default)]
struct ActionCounts {
    known: [u64; 4],
    other: HashMap<Box<str>, u64>,
}

impl ActionCounts {
    fn add(&mut self, action: &Action) {
        match action {
            Action::Push => self.known[0] += 1,
            Action::Delete => self.known[1] += 1,
            Action::Pull => self.known[2] += 1,
            Action::Mount => self.known[3] += 1,
            Action::Other(name) => *self.other.entry(name.clone()).or_default() += 1,
        }
    }

    fn merge(&mut self, o: ActionCounts) {
        for (a, b) in self.known.iter_mut().zip(o.known) {
            *a += b;
        }
        for (name, n) in o.other {
            *self.other.entry(name).or_default() += n;
        }
    }

    /// Every action seen at least once, by name.
    fn into_map(self) -> BTreeMap<String, u64> {
        let known = [Action::Push, Action::Delete, Action::Pull, Action::Mount];
        known
            .iter()
            .map(Action::as_str)
            .zip(self.known)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| (name.to_owned(), n))
            .chain(self.other.into_iter().map(|(name, n)| (name.into(), n)))
            .collect()
    }
}

/// How many parts the repository ledger is split into for its replay, by the top bits of the
/// repository key: each repository's existence depends only on its own events (SPEC §6), so
/// the parts replay on all cores, and each sorts only its own events.
const LEDGER_SHARD_BITS: u32 = 4;

/// A chunk's share of one ledger part: its pushes and repository deletes, and the paths of
/// the repositories they name.
#[derive(Default, Clone)]
struct LedgerShare {
    events: Vec<LedgerEvent>,
    paths: Vec<(u128, Box<str>)>,
}

/// What the replay needs of one push or repository delete, copied out of its record so that
/// replaying in time order does not jump about the records (a cache miss per event).
#[derive(Clone, Copy)]
struct LedgerEvent {
    time: Timestamp,
    repository: u128,
    chunk: u32,
    index: u32,
    kind: EventKind,
}

/// SPEC §6: replays the pushes and repository deletes of every repository in (UTC time, id)
/// order, resolving each repository push into a create or a push. Returns the ledger moved
/// on and how many events arrived late.
fn replay_ledger(
    chunks: &mut [Vec<EventRecord>],
    path_maps: Vec<PathMap>,
    ledger: RepositoryLedger,
) -> (RepositoryLedger, u64) {
    let shards = 1usize << LEDGER_SHARD_BITS;
    let shard = |k: u128| (k >> (128 - LEDGER_SHARD_BITS)) as usize;
    let shares: Vec<Vec<LedgerShare>> = chunks
        .par_iter()
        .zip(path_maps)
        .enumerate()
        .map(|(c, (records, paths))| {
            let mut parts = vec![LedgerShare::default(); shards];
            for (i, r) in records.iter().enumerate() {
                if !r.duplicate && r.ledger_id.is_some() {
                    parts[shard(r.repository)].events.push(LedgerEvent {
                        time: r.time,
                        repository: r.repository,
                        chunk: c as u32,
                        index: i as u32,
                        kind: r.kind,
                    });
                }
            }
            for (k, path) in paths {
                parts[shard(k)].paths.push((k, path));
            }
            parts
        })
        .collect();
    let records: &[Vec<EventRecord>] = chunks;
    // Times are in the sort keys themselves; ids are looked up only for ties.
    let id_of = |c: u32, i: u32| records[c as usize][i as usize].ledger_id.as_deref();
    // Per part: the part moved on, its late events, and (chunk, index, existed) per
    // repository push.
    type Replayed = (RepositoryLedger, u64, Vec<(u32, u32, bool)>);
    // Each part takes its shares out of every chunk's, in chunk order.
    let mut by_part: Vec<Vec<LedgerShare>> = (0..shards)
        .map(|_| Vec::with_capacity(shares.len()))
        .collect();
    for chunk_shares in shares {
        for (s, share) in chunk_shares.into_iter().enumerate() {
            by_part[s].push(share);
        }
    }
    let replayed: Vec<Replayed> = ledger
        .split(shards, shard)
        .into_par_iter()
        .zip(by_part)
        .map(|(mut part, shares)| {
            let mut order = Vec::with_capacity(shares.iter().map(|c| c.events.len()).sum());
            // Paths seen before are dropped here, on this part's thread.
            for share in shares {
                order.extend(share.events);
                for (k, path) in share.paths {
                    part.learn_path(k, path);
                }
            }
            order.sort_unstable_by(|a, b| {
                a.time
                    .cmp(&b.time)
                    .then_with(|| id_of(a.chunk, a.index).cmp(&id_of(b.chunk, b.index)))
            });
            let mut late = 0;
            let mut resolved = Vec::new();
            for r in order {
                if part.is_late(r.repository, r.time) {
                    late += 1;
                }
                match r.kind {
                    EventKind::DeleteRepository => part.delete(r.repository, r.time),
                    EventKind::RepositoryPush => {
                        resolved.push((r.chunk, r.index, part.push(r.repository, r.time)));
                    }
                    _ => {
                        part.push(r.repository, r.time);
                    }
                }
            }
            (part, late, resolved)
        })
        .collect();
    let mut parts = Vec::with_capacity(shards);
    let mut late_events = 0;
    for (part, late, resolved) in replayed {
        for (c, i, existed) in resolved {
            chunks[c as usize][i as usize].kind = EventKind::Resolved(if existed {
                TrackedEvent::PushRepository
            } else {
                TrackedEvent::CreateRepository
            });
        }
        parts.push(part);
        late_events += late;
    }
    (RepositoryLedger::join(parts), late_events)
}

/// Counts of de-duplicated events that the summary reports, folded beside the [`Aggregate`].
#[derive(Clone, Debug, Default)]
struct EventCounts {
    out_of_range: u64,
    manifest_deletes: u64,
    by_action: ActionCounts,
    counted: [u64; TrackedEvent::ALL.len()],
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

impl EventCounts {
    fn merge(mut self, o: EventCounts) -> EventCounts {
        self.out_of_range += o.out_of_range;
        self.manifest_deletes += o.manifest_deletes;
        self.by_action.merge(o.by_action);
        for (a, b) in self.counted.iter_mut().zip(o.counted) {
            *a += b;
        }
        self.first = self.first.into_iter().chain(o.first).min();
        self.last = self.last.into_iter().chain(o.last).max();
        self
    }
}

/// Pass two: de-duplication, the ledger and aggregation over the records of every input.
///
/// Records stay in their chunks' vectors (input order is chunk order, then position); copying
/// them into one vector cost a tenth of a run.
fn tally(
    cfg: &RunConfig,
    prior: Prior,
    read: Vec<(InputReport, Vec<ChunkOutput>)>,
    phases: &mut Phases,
) -> Tally {
    let mut counts = LineCounts::default();
    let mut inputs = Vec::with_capacity(read.len());
    let mut rejects = Vec::new();
    let mut chunks: Vec<Vec<EventRecord>> = Vec::new();
    let mut path_maps = Vec::new();
    let Prior { ledger, seen_ids } = prior;
    for (report, outputs) in read {
        for chunk in outputs {
            counts.merge(&chunk.counts);
            rejects.extend(chunk.rejects.into_iter().map(|reject| FileReject {
                file: report.path.clone(),
                reject,
            }));
            chunks.push(chunk.events);
            path_maps.push(chunk.ledger_paths);
        }
        inputs.push(report);
    }
    // SPEC §3: the first delivery in input order counts.
    let later = later_deliveries(&chunks, &seen_ids);
    let duplicate_events = later.len() as u64;
    for (c, i) in later {
        chunks[c as usize][i as usize].duplicate = true;
    }

    phases.lap("deduplicate");
    let (ledger, late_events) = replay_ledger(&mut chunks, path_maps, ledger);

    phases.lap("repository_ledger");
    // The accumulator is boxed: moved by value through every step of the fold, the two
    // structs cost a memmove per event.
    let both = chunks
        .par_iter()
        .flat_map_iter(|records| records.iter().filter(|r| !r.duplicate))
        .fold(Box::<(Aggregate, EventCounts)>::default, |mut acc, r| {
            let (agg, n) = &mut *acc;
            n.by_action.add(&r.action);
            n.first = Some(n.first.map_or(r.time, |t| t.min(r.time)));
            n.last = Some(n.last.map_or(r.time, |t| t.max(r.time)));
            let date = r.time.date();
            if !cfg.in_range(date) {
                n.out_of_range += 1;
            } else if r.kind == EventKind::ManifestDelete {
                n.manifest_deletes += 1;
            } else if let (Some(event), Some(user)) = (r.kind.tracked(), r.user) {
                agg.add(event, date, user);
                n.counted[event.index()] += 1;
            }
            acc
        })
        .reduce(Box::default, |a, b| {
            let ((a1, n1), (a2, n2)) = (*a, *b);
            Box::new((a1.merge(a2), n1.merge(n2)))
        });
    let (aggregate, events) = *both;
    phases.lap("aggregate");
    let metrics = aggregate.into_table(cfg.precision);
    phases.lap("sketches");
    let event_ids = if cfg.keep_event_ids {
        chunks
            .iter()
            .flatten()
            .filter(|r| !r.duplicate)
            .map(|r| (r.id_key, r.time))
            .collect()
    } else {
        Vec::new()
    };

    Tally {
        inputs,
        counts,
        duplicate_events,
        out_of_range_events: events.out_of_range,
        manifest_deletes: events.manifest_deletes,
        events_by_action: events.by_action.into_map(),
        counted_events: TrackedEvent::ALL
            .iter()
            .map(|t| (t.metric_name(), events.counted[t.index()]))
            .collect(),
        first_event: events.first,
        last_event: events.last,
        rejects,
        metrics,
        ledger,
        late_events,
        event_ids,
        phase_seconds: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> EventRecord {
        EventRecord {
            id_key: xxhash_rust::xxh3::xxh3_128(id.as_bytes()),
            time: Timestamp { secs: 0, nanos: 0 },
            action: Action::Pull,
            kind: EventKind::Untracked,
            user: None,
            repository: 0,
            ledger_id: None,
            duplicate: false,
        }
    }

    fn chunk(ids: &[&str]) -> Vec<EventRecord> {
        ids.iter().map(|id| record(id)).collect()
    }

    #[test]
    fn later_deliveries_are_the_repeats_after_the_first_in_input_order() {
        let chunks = vec![
            chunk(&["a", "b", "a"]),
            chunk(&[]),
            chunk(&["c", "b", "old"]),
            chunk(&["c", "d"]),
        ];
        let seen = [record("old").id_key];
        let mut later = later_deliveries(&chunks, &seen);
        later.sort_unstable();
        assert_eq!(later, [(0, 2), (2, 1), (2, 2), (3, 0)]);
    }

    #[test]
    fn later_deliveries_spread_over_every_shard() {
        // Enough ids to land in every shard, each delivered twice in two chunks.
        let ids: Vec<String> = (0..5000).map(|i| format!("id-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let chunks = vec![chunk(&ids), chunk(&ids)];
        let later = later_deliveries(&chunks, &[]);
        assert_eq!(later.len(), ids.len());
        assert!(later.iter().all(|(c, _)| *c == 1));
    }
}
