//! The run's wiring: inputs read and parsed on all cores, chunk results put back in input
//! order, then de-duplication, the ledger and aggregation as each chunk's turn comes.
//!
//! Each stage is a module of its own: [`read`](crate::read) cuts an input into chunks of lines,
//! [`parse::chunk`](crate::parse::chunk) parses a chunk into event records and rejects,
//! [`dedup`](crate::dedup) keeps first deliveries, [`ledger::replay`](crate::ledger::replay)
//! keeps what the repository ledger must replay in time order, and
//! [`aggregate`](crate::aggregate) folds the rest at once. This module only moves chunks
//! between them, on the current rayon pool:
//!
//! - Up to one reader per core, each on its own input, in input order. A reader reads a chunk
//!   and hands it to a parse task. The [`scheduler`] decides when it must wait for the folds
//!   (it is parked, its thread goes parsing) and puts parsed chunks back in input order.
//! - Whichever task finishes a chunk then tries to become the *consumer*: under one lock it
//!   takes every chunk that is next in input order, writes its rejects and de-duplicates its
//!   records (reading only their ids). That is all that needs input order: a fold task per
//!   chunk then, on any thread, folds the first deliveries and appends the ledger's events to
//!   its buffer. No thread ever waits for another.
//! - After reading: the spilled ids are de-duplicated, the ledger replays, the folds merge and
//!   the sketches are built; the [`Tally`] holds what every output is written from.

pub mod distributed;
pub mod scheduler;

use crate::aggregate::users::UserCoupons;
use crate::aggregate::{Aggregate, Fold};
use crate::classify::{ActorKind, TrackedEvent};
use crate::config::{Prior, RunConfig};
use crate::dedup::rows::{ChunkRows, DeferredFirsts, RowSpool};
use crate::dedup::window::RecentIds;
use crate::dedup::Deduplicator;
use crate::keys::event_key;
use crate::ledger::replay::{LedgerBuffer, ResolvedPush};
use crate::output::rejects::RejectWriter;
use crate::parse::chunk::{parse_chunk_into, ChunkOutput};
use crate::read::{
    open_input, progress_bar, total_bytes, BufferPool, Chunk, Chunker, InputReport, RawBytes,
    ReadAhead, Stream,
};
use crate::records::{EventRecord, LineCounts, PathMap, ReportedUser};
use crate::spill::SpillDir;
use crate::tally::{Dataset, DatasetRows, IdKeys, Phases, Resolution, Tally};
use anyhow::{Context, Result};
use scheduler::{Piece, Schedule, Start};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use xxhash_rust::xxh3::Xxh3;

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
    let input_bytes = total_bytes(&cfg.inputs);
    let progress = progress_bar(cfg.progress, input_bytes);
    let dedup = Deduplicator::new(prior.seen_ids, cfg.budget, spill)
        .context("cannot start de-duplication")?;
    let threads = rayon::current_num_threads().max(1);
    // As many buffers as chunks may be read ahead: each pool then serves every chunk in flight.
    let records = BufferPool::new(scheduler::limit(threads));
    let consumer = Consumer {
        cfg,
        input_bytes: Some(input_bytes),
        rejects: RejectWriter::new(rejects),
        lines_before: 0,
        reports: Vec::with_capacity(cfg.inputs.len()),
        counts: LineCounts::default(),
        dedup,
        rows: cfg.rules.rows.then(|| RowSpool::new(spill)),
    };
    let coupons = Arc::new(UserCoupons::default());
    let shared = Shared {
        cfg,
        coupons: coupons.clone(),
        pool: BufferPool::new(scheduler::limit(threads)),
        records,
        progress: progress.clone(),
        schedule: Mutex::new(Schedule::new(cfg.inputs.len(), threads)),
        consumer: Mutex::new(consumer),
        posted: AtomicBool::new(false),
        folds: Mutex::new(Vec::new()),
        ledger: Mutex::new(LedgerBuffer::new(
            prior.ledger,
            cfg.keep_event_ids.is_some(),
            cfg.budget,
            spill,
        )),
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
        rejects,
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
        .fold(AfterDedup::new(cfg, &coupons), AfterDedup::merge);
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
        .replay(
            || ReplaySink {
                fold: new_fold(cfg, &coupons),
                creates: IdKeys::default(),
            },
            |sink: &mut ReplaySink, push: ResolvedPush, id: &[u8]| {
                if push.counted {
                    sink.fold.resolved_push(push);
                }
                if want_creates && push.event.by(ActorKind::User) == TrackedEvent::CreateRepository
                {
                    sink.creates.insert(event_key(id));
                }
            },
        )
        .context("cannot replay the repository ledger")?;
    // The replay may spill the repositories it leaves even when the events fitted.
    if replayed.ledger.spilled() && !spilled.contains(&"repository_ledger") {
        spilled.push("repository_ledger");
    }
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
        Some(spool) => Some(Dataset::Rows(DatasetRows {
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
        })),
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
        // Before by_action moves out of the counts.
        counted_events: events.counted_by_metric(),
        events_by_action: events.by_action.into_map(),
        first_event: events.first,
        last_event: events.last,
        first_rejects: rejects.into_first(),
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

/// A fold of this run: its users' coupons read from the run's table, and days with many users
/// held as sketches, unless the Redis export needs every week's users one by one.
fn new_fold(cfg: &RunConfig, coupons: &Arc<UserCoupons>) -> Fold {
    let densify_at = cfg.user_ids.is_none().then_some(cfg.precision);
    Fold {
        aggregate: Aggregate::new(coupons.clone(), densify_at),
        ..Fold::default()
    }
}

/// What each part of the ledger's replay gathers: the fold of counted repository pushes, and
/// (for the events dataset) the ids of those that created their repository.
struct ReplaySink {
    fold: Fold,
    creates: IdKeys,
}

/// Locks a mutex; a panic elsewhere does not stop the run from reporting.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the schedule holds: parsed chunks, ends of input (with the error that stopped the
/// input, if one did: the consumer, which counts lines, says where) and parked readers.
type RunSchedule =
    Schedule<Box<ChunkOutput>, (InputReport, Option<std::io::Error>), Box<InputReader>>;

/// One input being read: everything a parked reader needs to go on.
struct InputReader {
    index: usize,
    chunker: Chunker<Stream>,
    raw_bytes: Option<Arc<RawBytes>>,
    read_ahead: Option<ReadAhead>,
    report: InputReport,
    next_chunk: u32,
}

/// What the tasks of a run share.
struct Shared<'r> {
    cfg: &'r RunConfig,
    /// Where the run's users land in the `hll_sketch` column: each parse task adds the users
    /// its chunk reports before the chunk is folded.
    coupons: Arc<UserCoupons>,
    /// Chunk buffers, and record vectors, for reuse.
    pool: BufferPool,
    records: BufferPool<EventRecord>,
    progress: Option<indicatif::ProgressBar>,
    schedule: Mutex<RunSchedule>,
    consumer: Mutex<Consumer<'r>>,
    /// Set whenever a piece is posted: the consumer looks again before it stops.
    posted: AtomicBool,
    /// Folds of first deliveries, one taken by each fold task (they merge at the end).
    folds: Mutex<Vec<AfterDedup<'r>>>,
    /// The ledger's events, appended a chunk at a time by the fold tasks.
    ledger: Mutex<LedgerBuffer<&'r SpillDir>>,
    /// Why a task stopped the run (a spill that failed).
    failed: Mutex<Option<anyhow::Error>>,
}

impl<'r> Shared<'r> {
    fn start<'s>(&'s self, scope: &rayon::Scope<'s>, starts: Vec<Start<Box<InputReader>>>) {
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
        let mut report = InputReport::new(input);
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
                    read_ahead: opened.read_ahead,
                    report,
                    next_chunk: 0,
                }))
            }
            Err(e) => {
                report.error = Some(format!("cannot open: {e}"));
                self.end(scope, i, 0, (report, None));
                None
            }
        }
    }

    /// Reads chunks of one input and hands each to a parse task, until the input ends or the
    /// reader must wait for the consumer (then it parks).
    fn read<'s>(&'s self, scope: &rayon::Scope<'s>, mut r: Box<InputReader>) {
        let i = r.index;
        loop {
            // Its own statement: the schedule's lock must not be held while reading.
            let admitted = lock(&self.schedule).admit(i, r);
            let Some(admitted) = admitted else {
                return;
            };
            r = admitted;
            let before = r.chunker.decoded_bytes;
            if let Some(read_ahead) = &mut r.read_ahead {
                // Where the reader is in the file: its raw bytes, decoded or not.
                let position = r.raw_bytes.as_ref().map_or(before, |raw| raw.count());
                read_ahead.ahead_of(position);
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
                        let mut out = parse_chunk_into(&chunk, &self.cfg.rules, events);
                        self.coupons.insert_all(std::mem::take(&mut out.users));
                        if let Chunk::Lines(buf) = chunk {
                            self.pool.give(buf);
                        }
                        self.post(scope, i, seq, Box::new(out));
                    });
                }
                Ok(None) | Err(_) => {
                    // The chunk admitted for this read was never read.
                    lock(&self.schedule).chunk_done(i);
                    let InputReader {
                        chunker,
                        raw_bytes,
                        mut report,
                        next_chunk,
                        ..
                    } = *r;
                    let error = next.err();
                    report.read_to_end(&chunker, raw_bytes.as_deref(), error.is_some());
                    self.end(scope, i, next_chunk, (report, error));
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
        end: (InputReport, Option<std::io::Error>),
    ) {
        let starts = lock(&self.schedule).end(i, chunks, end);
        self.posted.store(true, Ordering::SeqCst);
        self.start(scope, starts);
        self.consume(scope);
    }

    /// Puts a parsed chunk in the reorder buffer and consumes what is ready.
    fn post<'s>(&'s self, scope: &rayon::Scope<'s>, i: usize, seq: u32, chunk: Box<ChunkOutput>) {
        lock(&self.schedule).post(i, seq, chunk);
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
                    let Some((input, piece)) = next else {
                        break;
                    };
                    match consumer.take(input, piece) {
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
        lock(&self.schedule).abort();
    }

    /// Folds a chunk's first deliveries and hands the ledger its events, on any thread: only
    /// de-duplication needs input order, the fold and the ledger's buffer do not.
    fn fold<'s>(&'s self, scope: &rayon::Scope<'s>, mut job: FoldJob) {
        if lock(&self.schedule).aborted() {
            return;
        }
        let mut after = lock(&self.folds)
            .pop()
            .unwrap_or_else(|| AfterDedup::new(self.cfg, &self.coupons));
        // The ledger's share: (record, in range), appended under its lock in one go.
        let mut for_ledger = Vec::new();
        for (r, _) in job.records.iter().zip(&job.firsts).filter(|(_, f)| **f) {
            let in_range = after.first(r);
            if r.touches_ledger() {
                for_ledger.push((r, in_range));
            }
        }
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
                ledger.learn_paths(&job.paths)
            } else {
                Ok(())
            }
            .and_then(|()| ledger.push_all(&for_ledger, &job.paths))
        };
        if let Err(e) = result {
            self.fail(anyhow::Error::new(e).context("repository ledger"));
        }
        self.records.give(job.records);
        // The chunk is done with: its reader may read another.
        let starts = {
            let mut s = lock(&self.schedule);
            s.chunk_done(job.input);
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
    rejects: RejectWriter<'r>,
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
    fn take(
        &mut self,
        input: usize,
        piece: Piece<Box<ChunkOutput>, (InputReport, Option<std::io::Error>)>,
    ) -> Result<Option<FoldJob>> {
        match piece {
            Piece::End((mut report, error)) => {
                report.lines_read(self.lines_before, error);
                self.reports.push(report);
                self.lines_before = 0;
                Ok(None)
            }
            Piece::Chunk(mut chunk) => {
                self.counts.merge(&chunk.counts);
                chunk.offset_lines(self.lines_before);
                self.rejects
                    .write_all(
                        self.cfg.inputs[input].name(),
                        std::mem::take(&mut chunk.rejects),
                    )
                    .context("cannot write rejects.jsonl")?;
                let lines_before = self.lines_before;
                self.lines_before += chunk.counts.lines;
                if chunk.events.len() >= 64 {
                    if let Some(bytes) = self.input_bytes.take() {
                        self.dedup
                            .reserve_for(bytes, chunk.events.len(), chunk.bytes);
                    }
                }
                let mut firsts = Vec::new();
                let position_base = self.dedup.position();
                self.dedup
                    .take_all(&chunk.ids, &chunk.events, &mut firsts)
                    .context("de-duplication")?;
                if let Some(spool) = &mut self.rows {
                    let deferred = self.dedup.deferred_from().map(DeferredFirsts::new);
                    let rows = ChunkRows {
                        input: input as u32,
                        lines_before,
                        position_base,
                        rows: &chunk.rows,
                    };
                    spool
                        .add_chunk(rows, |i| {
                            firsts[i]
                                || deferred
                                    .as_ref()
                                    .is_some_and(|d| d.is_deferred(position_base + i as u64 + 1))
                        })
                        .context("cannot keep the events dataset's rows")?;
                }
                Ok(Some(FoldJob {
                    input,
                    records: chunk.events,
                    firsts,
                    paths: chunk.ledger_paths,
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
    fn new(cfg: &'r RunConfig, coupons: &Arc<UserCoupons>) -> AfterDedup<'r> {
        AfterDedup {
            cfg,
            fold: new_fold(cfg, coupons),
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
