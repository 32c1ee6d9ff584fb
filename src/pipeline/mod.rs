//! The run's wiring: inputs read and parsed on all cores, chunk results put back in input
//! order, then de-duplication, the ledger and aggregation as each chunk's turn comes.
//!
//! Each stage is a module of its own: [`read`](crate::read) cuts an input into chunks of lines,
//! [`records`](crate::records) parses a chunk into event records and rejects, [`dedup`] keeps
//! first deliveries, [`ledger::replay`](crate::ledger::replay) keeps what the repository ledger
//! must replay in time order, and [`aggregate`](crate::aggregate) folds the rest at once.
//! This module only moves chunks between them:
//!
//! - Up to one reader per core, each on its own input, in input order. A reader reads a chunk
//!   and hands it to a parse task on the pool. It may not run ahead of the fold by more
//!   than [`Schedule::limit`] chunks; past that it *parks* (its state is put aside, its thread
//!   goes parsing) and is resumed once the consumer has caught up.
//! - Parsed chunks wait in a reorder buffer keyed by (input, chunk). Whichever task finishes a
//!   chunk then tries to become the *consumer*: under one lock it takes every chunk that is
//!   next in input order, writes its rejects and de-duplicates its records (reading only their
//!   ids). That is all that needs input order: a fold task per chunk then, on any thread,
//!   folds the first deliveries and appends the ledger's events to its buffer. No thread ever
//!   waits for another.
//!
//! Memory is therefore a few chunks per core, plus what de-duplication and the ledger keep,
//! which the [`MemoryBudget`](crate::spill::MemoryBudget) bounds.

use crate::aggregate::{Fold, MetricTable, RedisExport};
use crate::classify::TrackedEvent;
use crate::dedup::rows::{ChunkRows, DeferredFirsts, RowSpool};
use crate::dedup::Deduplicator;
use crate::ledger::replay::{LedgerBuffer, ResolvedPush};
use crate::ledger::RepositoryLedger;
use crate::output::write_reject;
use crate::parse::chunk::{parse_chunk_into, ChunkOutput, ParseRules};
use crate::read::user_ids::IdsByUser;
use crate::read::{
    open_input, BufferPool, Chunk, Chunker, Compression, InputPath, Prefetch, RawBytes,
};
use crate::records::{EventRecord, LineCounts, PathMap, Reject, ReportedUser};
use crate::spill::{MemoryBudget, SpillDir};
use crate::tally::{DatasetRows, IdKeys, Resolution};
use crate::timestamp::Timestamp;
use anyhow::{Context, Result};
use chrono::NaiveDate;
use datasketches::hll::Coupon;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Line length and event times a valid event must keep to.
    pub rules: ParseRules,
    /// Size a chunk of one input is cut at for the parsers.
    pub chunk_bytes: usize,
    /// Show a progress bar of bytes read on stderr.
    pub progress: bool,
    /// Return the id and time of de-duplicated events inside this window, for a state.
    pub keep_event_ids: Option<IdWindow>,
    /// Hash each input's bytes, for a state's manifest of consumed inputs
    /// ([`InputReport::content_hash`]). Without a state nothing reads the hash, and hashing
    /// was about 7% of a run's instructions.
    pub hash_inputs: bool,
    /// What de-duplication and the ledger may hold before they spill.
    pub budget: MemoryBudget,
    /// With the Redis export: the GitLab ids of `--user-ids` (empty without it).
    pub user_ids: Option<std::sync::Arc<IdsByUser>>,
}

/// The event-time window of ids a state keeps (see `RunState::trim_ids`).
#[derive(Clone, Copy, Debug)]
pub struct IdWindow {
    pub days: u32,
    /// The latest time, in seconds, taken as the newest event.
    pub not_after: i64,
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
    /// xxh3-128 of the file's bytes (32 hex digits), when it was read completely and
    /// [`RunConfig::hash_inputs`] asked for it.
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

/// Everything a run computed: the material of every output but the rejects, which went to
/// their file as they were found.
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
    /// The first few rejects, for the message when there were too many.
    pub first_rejects: Vec<FileReject>,
    /// This run's sketches and event counts.
    pub metrics: MetricTable,
    /// The repository ledger after this run.
    pub ledger: RepositoryLedger,
    /// Pushes and repository deletes older than the last event already applied to their
    /// repository by an earlier run (see the README on late arrivals).
    pub late_events: u64,
    /// Id and time of de-duplicated events inside [`RunConfig::keep_event_ids`]'s window.
    pub event_ids: Vec<(u128, Timestamp)>,
    /// What went to temporary files because it passed the memory budget.
    pub spilled: Vec<&'static str>,
    /// The events dataset's rows, when asked for ([`ParseRules::rows`]).
    pub dataset: Option<DatasetRows>,
    /// GitLab ids per tracked event and week, with the Redis export.
    pub redis: Option<RedisExport>,
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

/// How many rejects the tally keeps for the message.
const FIRST_REJECTS: usize = 5;

/// Runs the whole data path on the current rayon pool. Rejects are written to `rejects` as
/// they are found; what passes the budget spills into `spill`.
pub fn run(
    cfg: &RunConfig,
    prior: Prior,
    spill: &SpillDir,
    rejects: &mut (dyn Write + Send),
) -> Result<Tally> {
    let mut phases = Phases::start();
    // The id set is sized from this once the first chunk says how many events a byte holds.
    let input_bytes = input_bytes(cfg);
    let progress = progress_bar(cfg, input_bytes);
    let dedup = Deduplicator::new(prior.seen_ids, cfg.budget, spill)
        .context("cannot start de-duplication")?;
    let threads = rayon::current_num_threads().max(1);
    // As many buffers as chunks may be read ahead: each pool then serves every chunk in flight.
    let records = BufferPool::new(Schedule::limit(threads));
    let consumer = Consumer {
        cfg,
        input_bytes: Some(input_bytes),
        rejects,
        first_rejects: Vec::new(),
        lines_before: 0,
        reports: Vec::with_capacity(cfg.inputs.len()),
        counts: LineCounts::default(),
        dedup,
        rows: cfg.rules.rows.then(|| RowSpool::new(spill)),
    };
    let shared = Shared {
        cfg,
        pool: BufferPool::new(Schedule::limit(threads)),
        records,
        progress: progress.clone(),
        schedule: Mutex::new(Schedule::new(cfg.inputs.len(), threads)),
        consumer: Mutex::new(consumer),
        posted: AtomicBool::new(false),
        folds: Mutex::new(Vec::new()),
        ledger: Mutex::new(LedgerBuffer::new(prior.ledger, cfg.budget, spill)),
        failed: Mutex::new(None),
    };
    rayon::scope(|scope| {
        let starts = lock(&shared.schedule).starts();
        shared.start(scope, starts);
    });
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    if let Some(e) = shared
        .failed
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Err(e);
    }
    let consumer = shared
        .consumer
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let Consumer {
        reports,
        counts,
        dedup,
        first_rejects,
        rows,
        ..
    } = consumer;
    // Every input ended, or a stage would have failed: anything else is a bug here.
    anyhow::ensure!(
        reports.len() == cfg.inputs.len(),
        "internal error: {} of {} inputs were read",
        reports.len(),
        cfg.inputs.len()
    );
    let mut after = shared
        .folds
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .fold(AfterDedup::new(cfg), AfterDedup::merge);
    let mut ledger = shared
        .ledger
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    phases.lap("read_and_parse");

    let mut spilled = Vec::new();
    if dedup.spilled() {
        spilled.push("deduplicate");
    }
    let mut deferred_error = None;
    let mut deferred_firsts = dedup.deferred_from().map(DeferredFirsts::new);
    let duplicate_events = dedup
        .finish(|position, r| {
            if let Some(d) = &mut deferred_firsts {
                d.set(position);
            }
            let in_range = after.first(&r);
            if r.touches_ledger() && deferred_error.is_none() {
                deferred_error = ledger.push_record(&r, in_range).err();
            }
        })
        .context("cannot de-duplicate the spilled events")?;
    if let Some(e) = deferred_error {
        return Err(e).context("cannot keep the ledger's events");
    }
    phases.lap("deduplicate");

    if ledger.spilled() {
        spilled.push("repository_ledger");
    }
    let want_creates = rows.is_some();
    let replayed = ledger
        .replay(|sink: &mut ReplaySink, push: ResolvedPush, id: &[u8]| {
            if push.counted {
                sink.fold.resolved_push(push);
            }
            if want_creates && push.event == TrackedEvent::CreateRepository {
                sink.creates.insert(crate::keys::event_key(id));
            }
        })
        .context("cannot replay the repository ledger")?;
    phases.lap("repository_ledger");
    let mut creates = IdKeys::default();
    let mut fold = after.fold;
    for sink in replayed.sinks {
        fold = fold.merge(sink.fold);
        creates.extend(sink.creates);
    }
    phases.lap("aggregate");
    let dataset = match rows {
        None => None,
        Some(spool) => Some(DatasetRows {
            months: spool
                .finish()
                .context("cannot keep the events dataset's rows")?,
            resolution: Resolution {
                creates,
                deferred: deferred_firsts,
            },
            files: reports.iter().map(|r| r.path.clone()).collect(),
            since: cfg.since,
            until: cfg.until,
        }),
    };

    let redis = cfg
        .user_ids
        .as_ref()
        .map(|csv| fold.aggregate.gitlab_weeks(csv));
    let metrics = fold.aggregate.into_table(cfg.precision);
    phases.lap("sketches");
    let events = fold.counts;
    Ok(Tally {
        inputs: reports,
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
        first_rejects,
        metrics,
        ledger: replayed.ledger,
        late_events: replayed.late_events,
        event_ids: after.ids.into_vec(),
        spilled,
        dataset,
        redis,
        phase_seconds: phases.laps,
    })
}

/// What each part of the ledger's replay gathers: the fold of counted repository pushes, and
/// (for the events dataset) the ids of those that created their repository.
#[derive(Default)]
struct ReplaySink {
    fold: Fold,
    creates: IdKeys,
}

/// Locks a mutex; a panic elsewhere does not stop the run from reporting.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// The inputs' size on disk (compressed ones hold more than they weigh; standard input, nothing).
fn input_bytes(cfg: &RunConfig) -> u64 {
    cfg.inputs
        .iter()
        .filter_map(|i| match i {
            InputPath::File { canonical, .. } => std::fs::metadata(canonical).ok().map(|m| m.len()),
            InputPath::Stdin => None,
        })
        .sum()
}

fn progress_bar(cfg: &RunConfig, total: u64) -> Option<indicatif::ProgressBar> {
    if !cfg.progress {
        return None;
    }
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

/// What a reader hands the consumer, in input order: the input's chunks, then its end (with
/// the error that stopped it, if one did: the consumer, which counts lines, says where).
enum Piece {
    Chunk(Box<ChunkOutput>),
    End(InputReport, Option<std::io::Error>),
}

/// One input being read: everything a parked reader needs to go on.
struct InputReader {
    index: usize,
    chunker: Chunker<Box<dyn Read + Send>>,
    raw_bytes: Option<Arc<RawBytes>>,
    prefetch: Option<Prefetch>,
    report: InputReport,
    next_chunk: u32,
}

/// A reader to start: a new input to open, or a parked one to resume.
enum Start {
    Open(usize),
    Resume(Box<InputReader>),
}

/// Which chunks are read, parsed and waiting, and which reader may read on.
struct Schedule {
    /// Parsed chunks and ends of input, waiting for their turn.
    ready: BTreeMap<(usize, u32), Piece>,
    /// The piece the consumer takes next.
    next: (usize, u32),
    /// Chunks read and not yet folded, per input (one entry per input) and in all.
    pending: Vec<u32>,
    outstanding: usize,
    /// Inputs opened so far (they are opened in input order), and those not yet ended.
    opened: usize,
    open_readers: usize,
    max_readers: usize,
    /// Readers waiting for the consumer or the folds to catch up.
    parked: Vec<InputReader>,
    /// The consumer failed: read no further.
    aborted: bool,
}

impl Schedule {
    fn new(inputs: usize, threads: usize) -> Schedule {
        Schedule {
            ready: BTreeMap::new(),
            next: (0, 0),
            pending: vec![0; inputs],
            outstanding: 0,
            opened: 0,
            open_readers: 0,
            max_readers: threads,
            parked: Vec::new(),
            aborted: false,
        }
    }

    /// The most chunks read and not yet folded: two per thread and two more, so that every
    /// core has a chunk to parse while the next are read.
    fn limit(threads: usize) -> usize {
        2 * threads + 2
    }

    /// Whether input `i`'s reader may read another chunk. The input the consumer waits on may
    /// always have `limit` chunks of its own in flight, so that it can never be starved by
    /// inputs after it; those read only while the total is under the limit.
    fn may_read(&self, i: usize) -> bool {
        let limit = Self::limit(self.max_readers);
        !self.aborted
            && (self.pending[i] as usize) < limit
            && (i == self.next.0 || self.outstanding < limit)
    }

    /// Readers to start now: parked ones that may read again, and new inputs in order.
    fn starts(&mut self) -> Vec<Start> {
        let mut starts = Vec::new();
        if self.aborted {
            return starts;
        }
        let mut still = Vec::new();
        for r in std::mem::take(&mut self.parked) {
            if self.may_read(r.index) {
                starts.push(Start::Resume(Box::new(r)));
            } else {
                still.push(r);
            }
        }
        self.parked = still;
        // Inputs open in order, a few ahead of the consumer at most.
        while self.opened < self.pending.len()
            && (self.open_readers < self.max_readers || self.opened == self.next.0)
            && self.opened <= self.next.0 + self.max_readers
        {
            starts.push(Start::Open(self.opened));
            self.opened += 1;
            self.open_readers += 1;
        }
        starts
    }

    /// Takes the next piece in input order, if it is ready (none once the run failed).
    fn take_next(&mut self) -> Option<Piece> {
        if self.aborted {
            self.ready.clear();
            return None;
        }
        let piece = self.ready.remove(&self.next)?;
        match &piece {
            // The chunk stays counted until its fold task is done (see `Shared::fold`).
            Piece::Chunk(_) => self.next.1 += 1,
            Piece::End(..) => self.next = (self.next.0 + 1, 0),
        }
        Some(piece)
    }
}

/// What the tasks of a run share.
struct Shared<'r> {
    cfg: &'r RunConfig,
    /// Chunk buffers, and record vectors, for reuse.
    pool: BufferPool,
    records: BufferPool<EventRecord>,
    progress: Option<indicatif::ProgressBar>,
    schedule: Mutex<Schedule>,
    consumer: Mutex<Consumer<'r>>,
    /// Set whenever a piece is posted: the consumer looks again before it stops.
    posted: AtomicBool,
    /// Folds of first deliveries, one taken by each fold task (they merge at the end).
    folds: Mutex<Vec<AfterDedup<'r>>>,
    /// The ledger's events, appended a chunk at a time by the fold tasks.
    ledger: Mutex<LedgerBuffer<'r>>,
    /// Why a task stopped the run (a spill that failed).
    failed: Mutex<Option<anyhow::Error>>,
}

impl<'r> Shared<'r> {
    fn start<'s>(&'s self, scope: &rayon::Scope<'s>, starts: Vec<Start>) {
        for start in starts {
            scope.spawn(move |scope| {
                let reader = match start {
                    Start::Resume(r) => Some(r),
                    Start::Open(i) => self.open(scope, i),
                };
                if let Some(r) = reader {
                    self.read(scope, r);
                }
            });
        }
    }

    /// Opens input `i`; an input that cannot be opened ends at once, with its error.
    fn open<'s>(&'s self, scope: &rayon::Scope<'s>, i: usize) -> Option<Box<InputReader>> {
        let input = &self.cfg.inputs[i];
        let mut report = InputReport {
            path: input.name().to_owned(),
            compression: None,
            bytes: 0,
            decoded_bytes: 0,
            lines: 0,
            content_hash: None,
            error: None,
        };
        match open_input(input, self.progress.clone(), self.cfg.hash_inputs) {
            Ok(opened) => {
                report.compression = Some(opened.compression);
                let mut chunker = Chunker::with_pool(
                    opened.stream,
                    self.cfg.chunk_bytes,
                    self.cfg.rules.max_line_bytes,
                    self.pool.clone(),
                );
                if opened.raw_bytes.is_none() && self.cfg.hash_inputs {
                    chunker.hasher = Some(Xxh3::new());
                }
                Some(Box::new(InputReader {
                    index: i,
                    chunker,
                    raw_bytes: opened.raw_bytes,
                    prefetch: opened.prefetch,
                    report,
                    next_chunk: 0,
                }))
            }
            Err(e) => {
                report.error = Some(format!("cannot open: {e}"));
                self.end(scope, i, 0, report, None);
                None
            }
        }
    }

    /// Reads chunks of one input and hands each to a parse task, until the input ends or the
    /// reader must wait for the consumer (then it parks).
    fn read<'s>(&'s self, scope: &rayon::Scope<'s>, mut r: Box<InputReader>) {
        let i = r.index;
        loop {
            {
                let mut s = lock(&self.schedule);
                if s.aborted {
                    return;
                }
                if !s.may_read(i) {
                    s.parked.push(*r);
                    return;
                }
                s.outstanding += 1;
                s.pending[i] += 1;
            }
            let before = r.chunker.decoded_bytes;
            if let Some(prefetch) = &mut r.prefetch {
                // Where the reader is in the file: its raw bytes, decoded or not.
                let position = r.raw_bytes.as_ref().map_or(before, |raw| raw.count());
                prefetch.ahead_of(position);
            }
            let next = r.chunker.next_chunk();
            if let (Some(p), None) = (&self.progress, &r.raw_bytes) {
                p.inc(r.chunker.decoded_bytes - before);
            }
            match next {
                Ok(Some(chunk)) => {
                    let seq = r.next_chunk;
                    r.next_chunk += 1;
                    scope.spawn(move |scope| {
                        let events = self.records.take(0);
                        let out = parse_chunk_into(&chunk, &self.cfg.rules, events);
                        if let Chunk::Lines(buf) = chunk {
                            self.pool.give(buf);
                        }
                        self.post(scope, (i, seq), Piece::Chunk(Box::new(out)));
                    });
                }
                Ok(None) | Err(_) => {
                    {
                        let mut s = lock(&self.schedule);
                        s.outstanding -= 1;
                        s.pending[i] -= 1;
                    }
                    let InputReader {
                        chunker,
                        raw_bytes,
                        mut report,
                        next_chunk,
                        ..
                    } = *r;
                    report.decoded_bytes = chunker.decoded_bytes;
                    let (bytes, hash) = match (&raw_bytes, &chunker.hasher) {
                        (Some(raw), _) => (raw.count(), raw.hash()),
                        (None, Some(h)) => (
                            report.decoded_bytes,
                            Some(format!("{:032x}", h.digest128())),
                        ),
                        (None, None) => (report.decoded_bytes, None),
                    };
                    report.bytes = bytes;
                    let error = next.err();
                    if error.is_none() {
                        report.content_hash = hash;
                    }
                    self.end(scope, i, next_chunk, report, error);
                    return;
                }
            }
        }
    }

    /// Posts the end of input `i`, after its `chunks` chunks, and opens the next inputs.
    fn end<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        i: usize,
        chunks: u32,
        report: InputReport,
        error: Option<std::io::Error>,
    ) {
        let starts = {
            let mut s = lock(&self.schedule);
            s.open_readers -= 1;
            s.ready.insert((i, chunks), Piece::End(report, error));
            s.starts()
        };
        self.posted.store(true, Ordering::SeqCst);
        self.start(scope, starts);
        self.consume(scope);
    }

    /// Puts a parsed chunk in the reorder buffer and consumes what is ready.
    fn post<'s>(&'s self, scope: &rayon::Scope<'s>, at: (usize, u32), piece: Piece) {
        lock(&self.schedule).ready.insert(at, piece);
        self.posted.store(true, Ordering::SeqCst);
        self.consume(scope);
    }

    /// Becomes the consumer if no one is, and takes every piece that is next in input order.
    /// A piece posted while another thread consumes is seen by that thread: it checks
    /// `posted` after letting go of the lock.
    fn consume<'s>(&'s self, scope: &rayon::Scope<'s>) {
        loop {
            let Ok(mut consumer) = self.consumer.try_lock() else {
                return;
            };
            loop {
                self.posted.store(false, Ordering::SeqCst);
                loop {
                    // Its own statement: the schedule's lock must not be held while consuming.
                    let next = lock(&self.schedule).take_next();
                    let Some(piece) = next else {
                        break;
                    };
                    match consumer.take(piece) {
                        Ok(Some(job)) => scope.spawn(move |scope| self.fold(scope, job)),
                        Ok(None) => {}
                        Err(e) => self.fail(e),
                    }
                    let starts = lock(&self.schedule).starts();
                    self.start(scope, starts);
                }
                if !self.posted.load(Ordering::SeqCst) {
                    break;
                }
            }
            drop(consumer);
            // The unlock is a release only: the fence orders it before the load below, so
            // that a poster whose `try_lock` failed is seen here.
            std::sync::atomic::fence(Ordering::SeqCst);
            if !self.posted.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

impl Shared<'_> {
    /// Stops the run: the first error is the one reported; readers read no further.
    fn fail(&self, e: anyhow::Error) {
        lock(&self.failed).get_or_insert(e);
        lock(&self.schedule).aborted = true;
    }

    /// Folds a chunk's first deliveries and hands the ledger its events, on any thread: only
    /// de-duplication needs input order, the fold and the ledger's buffer do not.
    fn fold<'s>(&'s self, scope: &rayon::Scope<'s>, mut job: FoldJob) {
        if lock(&self.schedule).aborted {
            return;
        }
        let mut after = lock(&self.folds)
            .pop()
            .unwrap_or_else(|| AfterDedup::new(self.cfg));
        // The ledger's share: (record, in range), appended under its lock in one go.
        let mut for_ledger = Vec::new();
        for (r, _) in job.records.iter().zip(&job.firsts).filter(|(_, f)| **f) {
            let in_range = after.first(r);
            if r.touches_ledger() {
                for_ledger.push((r, in_range));
            }
        }
        // Every user of the chunk, first delivery or not: records de-duplication deferred are
        // folded later, without their chunk.
        after
            .fold
            .aggregate
            .learn_users(std::mem::take(&mut job.users));
        after
            .fold
            .aggregate
            .learn_gitlab_users(std::mem::take(&mut job.gitlab_users));
        lock(&self.folds).push(after);
        let result = {
            let mut ledger = lock(&self.ledger);
            // Records de-duplication deferred come back after the chunk is gone: their paths
            // are learned now.
            if job.deferred {
                ledger.learn_paths(&job.paths);
            }
            ledger.push_all(&for_ledger, &job.paths)
        };
        if let Err(e) = result {
            self.fail(anyhow::Error::new(e).context("repository ledger"));
        }
        self.records.give(job.records);
        // The chunk is done with: its reader may read another.
        let starts = {
            let mut s = lock(&self.schedule);
            s.outstanding -= 1;
            s.pending[job.input] -= 1;
            s.starts()
        };
        self.start(scope, starts);
    }
}

/// A chunk's records, which of them are first deliveries, and the paths of the repositories
/// its ledger events name.
struct FoldJob {
    input: usize,
    records: Vec<EventRecord>,
    firsts: Vec<bool>,
    paths: PathMap,
    users: Vec<(u64, Coupon)>,
    gitlab_users: Vec<(u64, ReportedUser)>,
    /// De-duplication deferred some of the records (it has spilled).
    deferred: bool,
}

/// The consumer: pieces in input order in; rejects written, records de-duplicated, and first
/// deliveries passed on.
struct Consumer<'r> {
    cfg: &'r RunConfig,
    /// The inputs' size in bytes, until the id set is sized from it.
    input_bytes: Option<u64>,
    rejects: &'r mut (dyn Write + Send),
    first_rejects: Vec<FileReject>,
    /// Lines of the current input before the chunk being taken.
    lines_before: u64,
    reports: Vec<InputReport>,
    counts: LineCounts,
    dedup: Deduplicator<'r>,
    /// The events dataset's rows, with `--events`.
    rows: Option<RowSpool>,
}

impl Consumer<'_> {
    /// Takes the next piece in input order; a chunk's first deliveries come back to be folded.
    fn take(&mut self, piece: Piece) -> Result<Option<FoldJob>> {
        let input = self.reports.len();
        match piece {
            Piece::End(mut report, error) => {
                report.lines = self.lines_before;
                if let Some(e) = error {
                    report.error = Some(format!(
                        "read failed at line {} (decoded byte {}, file byte {}): {e}",
                        report.lines + 1,
                        report.decoded_bytes,
                        report.bytes
                    ));
                }
                self.reports.push(report);
                self.lines_before = 0;
                Ok(None)
            }
            Piece::Chunk(chunk) => {
                self.counts.merge(&chunk.counts);
                let file = self.cfg.inputs[input].name();
                for mut reject in chunk.rejects {
                    reject.line += self.lines_before;
                    write_reject(file, &reject, &mut *self.rejects)
                        .context("cannot write rejects.jsonl")?;
                    if self.first_rejects.len() < FIRST_REJECTS {
                        self.first_rejects.push(FileReject {
                            file: file.to_owned(),
                            reject,
                        });
                    }
                }
                let lines_before = self.lines_before;
                self.lines_before += chunk.counts.lines;
                // Sized once, from the first chunk with events enough to tell their density.
                if chunk.events.len() >= 64 {
                    if let Some(bytes) = self.input_bytes.take() {
                        let per_byte = chunk.events.len() as f64 / chunk.bytes.max(1) as f64;
                        self.dedup.reserve((bytes as f64 * per_byte) as usize);
                    }
                }
                let mut firsts = Vec::new();
                let position_base = self.dedup.position();
                self.dedup
                    .take_all(&chunk.ids, &chunk.events, &mut firsts)
                    .context("de-duplication")?;
                if let Some(spool) = &mut self.rows {
                    let deferred_from = self.dedup.deferred_from();
                    let rows = ChunkRows {
                        input: input as u32,
                        lines_before,
                        position_base,
                        rows: &chunk.rows,
                    };
                    spool
                        .add_chunk(rows, |i| {
                            firsts[i]
                                || deferred_from.is_some_and(|f| position_base + i as u64 + 1 >= f)
                        })
                        .context("cannot keep the events dataset's rows")?;
                }
                Ok(Some(FoldJob {
                    input,
                    records: chunk.events,
                    firsts,
                    paths: chunk.ledger_paths,
                    users: chunk.users,
                    gitlab_users: chunk.gitlab_users,
                    deferred: self.dedup.spilled(),
                }))
            }
        }
    }
}

/// Where first deliveries go: the fold and the state's ids. Several fold apart and merge.
struct AfterDedup<'r> {
    cfg: &'r RunConfig,
    fold: Fold,
    ids: RecentIds,
}

impl<'r> AfterDedup<'r> {
    fn new(cfg: &'r RunConfig) -> AfterDedup<'r> {
        AfterDedup {
            cfg,
            fold: Fold::default(),
            ids: RecentIds::new(cfg.keep_event_ids),
        }
    }

    /// Folds a first delivery; returns whether it is inside `--since`/`--until`.
    fn first(&mut self, record: &EventRecord) -> bool {
        let date = self.fold.dates.date(record.time);
        let in_range = self.cfg.in_range(date);
        self.fold.first_delivery(record, in_range, date);
        self.ids.push(record.id_key, record.time);
        in_range
    }

    fn merge(self, other: AfterDedup<'r>) -> AfterDedup<'r> {
        AfterDedup {
            cfg: self.cfg,
            fold: self.fold.merge(other.fold),
            ids: self.ids.merge(other.ids),
        }
    }
}

/// Ids and times of first deliveries inside the state's window, pruned as the run goes by
/// the newest time seen so far (the final trim, by the newest of all, keeps no more).
struct RecentIds {
    window: Option<IdWindow>,
    ids: Vec<(u128, Timestamp)>,
    newest: i64,
    /// Length at which to prune next.
    prune_at: usize,
}

impl RecentIds {
    fn new(window: Option<IdWindow>) -> RecentIds {
        RecentIds {
            window,
            ids: Vec::new(),
            newest: i64::MIN,
            prune_at: 1 << 16,
        }
    }

    fn push(&mut self, id: u128, time: Timestamp) {
        let Some(w) = self.window else {
            return;
        };
        self.newest = self.newest.max(time.secs.min(w.not_after));
        self.ids.push((id, time));
        if self.ids.len() >= self.prune_at {
            let cutoff = self.newest.saturating_sub(i64::from(w.days) * 86_400);
            self.ids.retain(|(_, t)| t.secs >= cutoff);
            self.prune_at = (self.ids.len() * 2).max(1 << 16);
        }
    }

    fn merge(mut self, other: RecentIds) -> RecentIds {
        self.newest = self.newest.max(other.newest);
        self.ids.extend(other.ids);
        self.prune_at = self.prune_at.max(other.prune_at);
        self
    }

    fn into_vec(self) -> Vec<(u128, Timestamp)> {
        self.ids
    }
}
