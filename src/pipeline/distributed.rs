//! The run's stages as tasks of an engine that schedules, shuffles and retries them itself
//! (Apache Spark, through the Python package of `python/`). Each function here is the work of
//! one task, over Arrow record batches, wiring the stage code [`super::run`] wires on one
//! machine; the engine does what needs all the data at once: the order of inputs, the choice of
//! each id's first delivery, and the grouping by repository and by cell.
//!
//! The plan (`python/regtally/spark.py`):
//!
//! 1. [`InputTask`], once per input: its valid events, each stamped with its input and its
//!    position in it ([`READ_SCHEMA`]), then the input's accounting and rejects. [`Buckets`]
//!    gathers the events by the bucket of their id, so that the engine shuffles a few large
//!    batches rather than a row per event (a row costs Spark more than reading its event).
//! 2. [`FirstsTask`], once per id bucket: per id, the delivery with the smallest (input,
//!    position), SPEC §3's first in input order, then split by the bucket of its repository.
//! 3. [`known_repositories`] seeds the ledger: its rows travel with their repository's events.
//! 4. [`PartitionTask`], once per repository bucket: the repository ledger replays the
//!    bucket's pushes and deletes in (time, id) order, and the first deliveries are folded
//!    as [`super::run`] folds them. Out come, per tracked event and day, the events and the
//!    users, each put in the day, week and month (and the users' union) it counts in
//!    ([`CELL_SCHEMA`], split by [`split_cells`] for the next shuffle), the bucket's
//!    repositories, and its counts.
//! 5. [`CellTask`], over a cell bucket's rows sorted by (metric, period): both sketches of each
//!    cell, built from its users' codes as `Aggregate::into_table` builds them.
//! 6. With `--events`, [`DatasetTask`], over a group of months' rows of the dataset
//!    ([`DATASET_ROWS_SCHEMA`], which the partition tasks yield once the replay said which
//!    pushes created their repository) sorted by (month, input, position): each month's files,
//!    as `regtally run` writes them, staged for the driver to rename.
//! 7. [`Gathered::into_tally`], on the driver: the inputs' accounting, the rejects, the counts,
//!    the repositories, the cells and the dataset's staged files make the [`Tally`] every
//!    output is written from.

use crate::aggregate::period::{Period, PeriodKind};
use crate::aggregate::sketch::{sparse_code, UserSketch, WarehouseSketch};
use crate::aggregate::users::UserCoupons;
use crate::aggregate::{Aggregate, EventCounts, Fold, MetricTable, TableCell};
use crate::classify::{ActorKind, EventKind, TrackedEvent, TOTAL_METRIC};
use crate::config::RunConfig;
use crate::keys::{event_key, identity_coupon, repository_key, KeyHasher};
use crate::ledger::replay::{LedgerBuffer, ResolvedPush};
use crate::ledger::{PriorLedger, ReplayedLedger, RepositoryLedger};
use crate::output::events::{DatasetRow, DatasetWriter};
use crate::output::rejects::write_reject;
use crate::parse::chunk::{new_run_id, parse_chunk_into, ParseRules};
use crate::read::{open_input, Chunk, Chunker, InputPath, InputReport, Stream};
use crate::records::row::{month_of, EncodedRow, Month};
use crate::records::{Action, EventRecord, FileReject, LedgerId, LineCounts, PathMap, Reject};
use crate::spill::{MemoryBudget, SpillDir};
use crate::tally::{Dataset, IdKeys, Phases, Tally};
use crate::timestamp::{DateCache, TimeWindow, Timestamp};
use anyhow::{anyhow, bail, Context, Result};
use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Int32Builder, Int64Builder,
    Int8Builder, StringBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::NaiveDate;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

/// What every task of a run is told: the run's flags that reading, folding and building cells
/// obey, as the driver checked them ([`TaskConfig::of`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TaskConfig {
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
    pub precision: u8,
    pub max_line_bytes: usize,
    pub chunk_bytes: usize,
    /// The driver's today: event times after the day after it are invalid (SPEC §2).
    pub today: NaiveDate,
    /// `--memory-limit`, for each partition's ledger.
    pub memory_limit: u64,
    /// `--events`: the read tasks carry each event's row of the dataset.
    #[serde(default)]
    pub rows: bool,
}

impl TaskConfig {
    /// The tasks' part of a planned run.
    pub fn of(cfg: &RunConfig, today: NaiveDate, memory_limit: u64) -> TaskConfig {
        TaskConfig {
            since: cfg.since,
            until: cfg.until,
            precision: cfg.precision,
            max_line_bytes: cfg.rules.max_line_bytes,
            chunk_bytes: cfg.chunk_bytes,
            today,
            memory_limit,
            rows: cfg.rules.rows,
        }
    }

    /// The config a task's stages take: no inputs, no state, no export.
    fn run_config(&self) -> RunConfig {
        RunConfig {
            inputs: Vec::new(),
            since: self.since,
            until: self.until,
            precision: self.precision,
            rules: ParseRules {
                max_line_bytes: self.max_line_bytes,
                times: TimeWindow::until_day_after(self.today),
                // A task reports each user it meets once, whatever the worker ran before.
                run: new_run_id(),
                rows: self.rows,
                gitlab_users: false,
                identities: true,
            },
            chunk_bytes: self.chunk_bytes,
            progress: false,
            keep_event_ids: None,
            hash_inputs: false,
            budget: MemoryBudget::new(self.memory_limit),
            user_ids: None,
        }
    }
}

/// One input in the manifest the driver hands out: where it is in input order, and where it
/// lives.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    pub index: u32,
    pub input: InputPath,
}

/// What a row of [`READ_SCHEMA`] holds.
pub mod rec {
    /// A valid event.
    pub const EVENT: i8 = 0;
    /// An input's accounting, as JSON in `text` ([`InputAccounting`]).
    pub const INPUT: i8 = 1;
    /// A line of `rejects.jsonl` in `text`; `pos` orders an input's rejects.
    pub const REJECT: i8 = 2;
    /// A repository of `--known-repositories`: `repository` and `path`.
    pub const KNOWN: i8 = 3;
}

fn field(name: &str, t: DataType, nullable: bool) -> Field {
    Field::new(name, t, nullable)
}

/// The rows of the read tasks: events, accounting, rejects and known repositories. Only the
/// types Spark maps to its own (no unsigned integers): hashes are their bits as `int64`.
pub static READ_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        field("rec", DataType::Int8, false),
        field("input", DataType::Int32, false),
        field("pos", DataType::Int64, false),
        // xxh3-128 of the event id, big-endian: what de-duplication compares (SPEC §3).
        field("id", DataType::Binary, true),
        field("secs", DataType::Int64, true),
        field("nanos", DataType::Int32, true),
        field("action", DataType::Utf8, true),
        field("kind", DataType::Int8, true),
        // The actor's identity hash, and the identity itself for the users who count.
        field("user", DataType::Int64, true),
        field("identity", DataType::Utf8, true),
        field("deploy_token", DataType::Boolean, true),
        // xxh3-128 of the repository path, big-endian: what the partitions are cut by.
        field("repository", DataType::Binary, true),
        field("path", DataType::Utf8, true),
        field("ledger_id", DataType::Utf8, true),
        field("text", DataType::Utf8, true),
        // With `--events`: the event's row of the dataset ([`EncodedRow`]), its line counted
        // from the start of the input.
        field("row", DataType::Binary, true),
    ]))
});

/// What a partition task yields: per-period events and users, the partition's repositories
/// (`text`) and its counts (JSON in `text`).
pub mod part {
    /// A cell's events (`user` null) or one of its users.
    pub const CELL: i8 = 0;
    /// A repository that exists after the replay.
    pub const REPOSITORY: i8 = 1;
    /// The partition's [`super::PartitionCounts`].
    pub const COUNTS: i8 = 2;
}

/// Rows of the partition tasks, and the cells' input. `metric` is a [`TrackedEvent`] index, or
/// [`TOTAL_INDEX`]; `period_kind` 0, 1, 2 for day, week, month.
pub static CELL_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        field("part", DataType::Int8, false),
        field("metric", DataType::Int8, true),
        field("period_kind", DataType::Int8, true),
        field("start", DataType::Date32, true),
        field("user", DataType::Int64, true),
        field("identity", DataType::Utf8, true),
        field("events", DataType::Int64, true),
        field("text", DataType::Utf8, true),
    ]))
});

/// The built cells: both sketches and the events of each metric and period.
pub static SKETCH_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        field("metric", DataType::Int8, false),
        field("period_kind", DataType::Int8, false),
        field("start", DataType::Date32, false),
        field("events", DataType::Int64, false),
        field("sketch", DataType::Binary, false),
        field("hll_sketch", DataType::Binary, false),
    ]))
});

/// The metric index of the users' union.
pub const TOTAL_INDEX: i8 = TrackedEvent::ALL.len() as i8;

fn metric_name(index: i8) -> Result<&'static str> {
    if index == TOTAL_INDEX {
        return Ok(TOTAL_METRIC);
    }
    usize::try_from(index)
        .ok()
        .and_then(|i| TrackedEvent::ALL.get(i))
        .map(|t| t.metric_name())
        .ok_or_else(|| anyhow!("no metric has index {index}"))
}

fn period_code(kind: PeriodKind) -> i8 {
    match kind {
        PeriodKind::Day => 0,
        PeriodKind::Week => 1,
        PeriodKind::Month => 2,
    }
}

fn period_of(code: i8, start: NaiveDate) -> Result<Period> {
    let period = match code {
        0 => Period::day_of(start),
        1 => Period::week_of(start),
        2 => Period::month_of(start),
        _ => bail!("no period kind has code {code}"),
    };
    anyhow::ensure!(period.start == start, "{start} does not start a period");
    Ok(period)
}

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");

fn days_since_epoch(date: NaiveDate) -> i32 {
    (date - EPOCH).num_days() as i32
}

fn date_of(days: i32) -> Result<NaiveDate> {
    EPOCH
        .checked_add_signed(chrono::Duration::days(i64::from(days)))
        .ok_or_else(|| anyhow!("day {days} is out of range"))
}

/// An input's accounting, as a read task ends it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct InputAccounting {
    pub report: InputReport,
    pub counts: LineCounts,
}

/// Builders of [`READ_SCHEMA`]'s columns.
struct ReadRows {
    rec: Int8Builder,
    input: Int32Builder,
    pos: Int64Builder,
    id: BinaryBuilder,
    secs: Int64Builder,
    nanos: Int32Builder,
    action: StringBuilder,
    kind: Int8Builder,
    user: Int64Builder,
    identity: StringBuilder,
    deploy_token: BooleanBuilder,
    repository: BinaryBuilder,
    path: StringBuilder,
    ledger_id: StringBuilder,
    text: StringBuilder,
    row: BinaryBuilder,
}

impl ReadRows {
    fn new() -> ReadRows {
        ReadRows {
            rec: Int8Builder::new(),
            input: Int32Builder::new(),
            pos: Int64Builder::new(),
            id: BinaryBuilder::new(),
            secs: Int64Builder::new(),
            nanos: Int32Builder::new(),
            action: StringBuilder::new(),
            kind: Int8Builder::new(),
            user: Int64Builder::new(),
            identity: StringBuilder::new(),
            deploy_token: BooleanBuilder::new(),
            repository: BinaryBuilder::new(),
            path: StringBuilder::new(),
            ledger_id: StringBuilder::new(),
            text: StringBuilder::new(),
            row: BinaryBuilder::new(),
        }
    }

    /// A row of `rec` with only `text` (and for a known repository, its key and path).
    fn other(&mut self, rec: i8, input: i32, pos: i64, text: Option<&str>) {
        self.rec.append_value(rec);
        self.input.append_value(input);
        self.pos.append_value(pos);
        self.id.append_null();
        self.secs.append_null();
        self.nanos.append_null();
        self.action.append_null();
        self.kind.append_null();
        self.user.append_null();
        self.identity.append_null();
        self.deploy_token.append_null();
        if rec == rec::KNOWN {
            let path = text.unwrap_or_default();
            self.repository
                .append_value(repository_key(path).to_be_bytes());
            self.path.append_value(path);
            self.text.append_null();
        } else {
            self.repository.append_null();
            self.path.append_null();
            self.text.append_option(text);
        }
        self.ledger_id.append_null();
        self.row.append_null();
    }

    fn event(
        &mut self,
        input: i32,
        pos: i64,
        r: &EventRecord,
        identity: Option<&str>,
        path: Option<&str>,
        row: Option<&[u8]>,
    ) {
        self.rec.append_value(rec::EVENT);
        self.input.append_value(input);
        self.pos.append_value(pos);
        self.id.append_value(r.id_key.to_be_bytes());
        self.secs.append_value(r.time.secs);
        self.nanos.append_value(r.time.nanos as i32);
        self.action.append_value(r.action.as_str());
        self.kind.append_value(r.kind.code() as i8);
        self.user.append_option(r.user.map(|u| u as i64));
        self.identity.append_option(identity);
        self.deploy_token.append_value(r.deploy_token);
        self.repository.append_value(r.repository.to_be_bytes());
        self.path.append_option(path);
        self.ledger_id
            .append_option(r.ledger_id.as_ref().map(LedgerId::as_str));
        self.text.append_null();
        self.row.append_option(row);
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.rec.finish()),
            Arc::new(self.input.finish()),
            Arc::new(self.pos.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.secs.finish()),
            Arc::new(self.nanos.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.identity.finish()),
            Arc::new(self.deploy_token.finish()),
            Arc::new(self.repository.finish()),
            Arc::new(self.path.finish()),
            Arc::new(self.ledger_id.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.row.finish()),
        ];
        Ok(RecordBatch::try_new(READ_SCHEMA.clone(), columns)?)
    }
}

/// One read task: an input, read and parsed a chunk at a time, its rows handed out a batch per
/// chunk. The last batch holds its accounting.
pub struct InputTask {
    index: i32,
    name: String,
    cfg: RunConfig,
    /// `None` once the input has ended.
    reading: Option<Reading>,
    report: InputReport,
    counts: LineCounts,
    lines_before: u64,
    events: i64,
    rejects: i64,
    /// The identity of each counted user this task has met.
    identities: HashMap<u64, Box<str>>,
    done: bool,
}

struct Reading {
    chunker: Chunker<Stream>,
    raw_bytes: Option<Arc<crate::read::RawBytes>>,
}

impl InputTask {
    pub fn new(config: &TaskConfig, entry: ManifestEntry) -> InputTask {
        let cfg = config.run_config();
        let mut report = InputReport::new(&entry.input);
        let reading = match open_input(&entry.input, None, false) {
            Ok(opened) => {
                report.compression = Some(opened.compression);
                Some(Reading {
                    chunker: Chunker::new(opened.stream, cfg.chunk_bytes, cfg.rules.max_line_bytes),
                    raw_bytes: opened.raw_bytes,
                })
            }
            Err(e) => {
                report.error = Some(format!("cannot open: {e}"));
                None
            }
        };
        InputTask {
            index: entry.index as i32,
            name: entry.input.name().to_owned(),
            cfg,
            reading,
            report,
            counts: LineCounts::default(),
            lines_before: 0,
            events: 0,
            rejects: 0,
            identities: HashMap::new(),
            done: false,
        }
    }

    /// The rows of the next chunk; after the last, the input's accounting; then `None`.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.done {
            return Ok(None);
        }
        let mut rows = ReadRows::new();
        if let Some(reading) = &mut self.reading {
            match reading.chunker.next_chunk() {
                Ok(Some(chunk)) => {
                    self.chunk_rows(&chunk, &mut rows)?;
                    return rows.finish().map(Some);
                }
                Ok(None) => self.end(None),
                Err(e) => self.end(Some(e)),
            }
        } else {
            self.report.lines_read(0, None);
        }
        let accounting = InputAccounting {
            report: self.report.clone(),
            counts: self.counts,
        };
        rows.other(
            rec::INPUT,
            self.index,
            0,
            Some(&serde_json::to_string(&accounting)?),
        );
        self.done = true;
        rows.finish().map(Some)
    }

    fn end(&mut self, error: Option<std::io::Error>) {
        if let Some(reading) = self.reading.take() {
            self.report.read_to_end(
                &reading.chunker,
                reading.raw_bytes.as_deref(),
                error.is_some(),
            );
            self.report.lines_read(self.lines_before, error);
        }
    }

    fn chunk_rows(&mut self, chunk: &Chunk, rows: &mut ReadRows) -> Result<()> {
        let mut out = parse_chunk_into(chunk, &self.cfg.rules, Vec::new());
        self.counts.merge(&out.counts);
        let lines_before = self.lines_before;
        out.offset_lines(lines_before);
        self.lines_before += out.counts.lines;
        for reject in &out.rejects {
            let mut line = Vec::new();
            write_reject(&self.name, reject, &mut line)?;
            let text = std::str::from_utf8(&line)?.trim_end_matches('\n');
            rows.other(rec::REJECT, self.index, self.rejects, Some(text));
            self.rejects += 1;
        }
        self.identities.extend(std::mem::take(&mut out.identities));
        // A row per valid event, in the events' order (empty without `--events`).
        let mut encoded = &out.rows[..];
        let mut row = Vec::new();
        for r in &out.events {
            let identity = r.user.and_then(|u| self.identities.get(&u)).map(|s| &**s);
            let path = r
                .touches_ledger()
                .then(|| out.ledger_paths.get(&r.repository))
                .flatten();
            let row = if self.cfg.rules.rows {
                let (mut decoded, rest) = EncodedRow::decode(encoded)?;
                encoded = rest;
                decoded.line += lines_before;
                row.clear();
                decoded.encode(&mut row);
                Some(&row[..])
            } else {
                None
            };
            rows.event(self.index, self.events, r, identity, path, row);
            self.events += 1;
        }
        Ok(())
    }
}

/// The rows of `--known-repositories`, read from `source` (a path or a URL every task can
/// read), a row per repository.
pub fn known_repositories(source: &std::path::Path) -> Result<RecordBatch> {
    let bytes = crate::read::read_side_file(source)
        .map_err(|e| anyhow!("cannot read --known-repositories {e}"))?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("cannot read --known-repositories {}", source.display()))?;
    let mut rows = ReadRows::new();
    let paths = text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty());
    for (i, path) in paths.enumerate() {
        rows.other(rec::KNOWN, -1, i as i64, Some(path));
    }
    rows.finish()
}

/// A partition's counts, which the driver adds up.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PartitionCounts {
    /// First deliveries folded.
    pub firsts: u64,
    pub events: EventCounts,
    pub late_events: u64,
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| anyhow!("the batch has no column {name} of the expected type"))
}

fn key_of(bytes: &[u8]) -> Result<u128> {
    Ok(u128::from_be_bytes(bytes.try_into().map_err(|_| {
        anyhow!("a key of {} bytes, not 16", bytes.len())
    })?))
}

/// Which of `buckets` a row goes to by a 16-byte key (an id's or a repository's hash, evenly
/// spread already): what the engine shuffles on, a bucket's rows travelling as one record batch
/// rather than a row each.
pub fn bucket_of(key: &[u8], buckets: u32) -> u32 {
    let mut head = [0u8; 8];
    let n = key.len().min(8);
    head[..n].copy_from_slice(&key[..n]);
    (u64::from_be_bytes(head) % u64::from(buckets.max(1))) as u32
}

/// Rows gathered by bucket until enough are held, then handed out as one batch per bucket: a
/// shuffle of a few large batches instead of a row per event. Rows whose key is null (an
/// input's accounting and rejects) are bucket `None`.
pub struct Buckets {
    column: &'static str,
    buckets: u32,
    held: Vec<(Option<u32>, RecordBatch)>,
    rows: usize,
}

/// Rows a [`Buckets`] holds before it hands them out, at least; and per bucket on average, so
/// that with thousands of buckets each still travels as a batch of hundreds of rows.
const BUCKET_ROWS: usize = 1 << 16;
const ROWS_PER_BUCKET: usize = 256;

impl Buckets {
    pub fn new(column: &'static str, buckets: u32) -> Buckets {
        Buckets {
            column,
            buckets: buckets.max(1),
            held: Vec::new(),
            rows: 0,
        }
    }

    /// Takes a batch; whether enough rows are held for [`Buckets::take`].
    pub fn add(&mut self, batch: &RecordBatch) -> Result<bool> {
        let keys = column::<arrow_array::BinaryArray>(batch, self.column)?;
        let mut of: Vec<Option<u32>> = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            of.push(
                keys.is_valid(i)
                    .then(|| bucket_of(keys.value(i), self.buckets)),
            );
        }
        self.held.extend(split_rows(batch, &of)?);
        self.rows += batch.num_rows();
        Ok(self.rows >= BUCKET_ROWS.max(ROWS_PER_BUCKET * self.buckets as usize))
    }

    /// What is held, one batch per bucket, in bucket order (`None` first).
    pub fn take(&mut self) -> Result<Vec<(Option<u32>, RecordBatch)>> {
        let mut held = std::mem::take(&mut self.held);
        self.rows = 0;
        held.sort_by_key(|(b, _)| *b);
        let mut out = Vec::new();
        let mut i = 0;
        while i < held.len() {
            let bucket = held[i].0;
            let j = i + held[i..].iter().take_while(|(b, _)| *b == bucket).count();
            let schema = held[i].1.schema();
            let parts = held[i..j].iter().map(|(_, b)| b);
            out.push((
                bucket,
                arrow_select::concat::concat_batches(&schema, parts)?,
            ));
            i = j;
        }
        Ok(out)
    }
}

/// The rows of `batch` by their bucket `of[row]`, a batch per bucket, in bucket order: one
/// `take` of the rows sorted by bucket, then a slice per bucket, whatever the number of buckets.
fn split_rows(batch: &RecordBatch, of: &[Option<u32>]) -> Result<Vec<(Option<u32>, RecordBatch)>> {
    let mut order: Vec<u32> = (0..u32::try_from(of.len())?).collect();
    order.sort_by_key(|&i| of[i as usize]);
    let sorted = arrow_select::take::take_record_batch(
        batch,
        &arrow_array::UInt32Array::from(order.clone()),
    )?;
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let bucket = of[order[start] as usize];
        let len = order[start..]
            .iter()
            .take_while(|&&i| of[i as usize] == bucket)
            .count();
        out.push((bucket, sorted.slice(start, len)));
        start += len;
    }
    Ok(out)
}

/// A partition task's rows ([`CELL_SCHEMA`]) for the cells' shuffle: the users of each cell
/// under the bucket of its (metric, period) among `buckets`, so that a cell's users meet in one
/// task; the repositories and counts, for the driver, under `None`.
pub fn split_cells(batch: &RecordBatch, buckets: u32) -> Result<Vec<(Option<u32>, RecordBatch)>> {
    let part = column::<arrow_array::Int8Array>(batch, "part")?;
    let metric = column::<arrow_array::Int8Array>(batch, "metric")?;
    let kind = column::<arrow_array::Int8Array>(batch, "period_kind")?;
    let start = column::<arrow_array::Date32Array>(batch, "start")?;
    let of: Vec<Option<u32>> = (0..batch.num_rows())
        .map(|i| {
            (part.value(i) == part::CELL).then(|| {
                let key = (u64::from(metric.value(i) as u8) << 40)
                    | (u64::from(kind.value(i) as u8) << 32)
                    | u64::from(start.value(i) as u32);
                // A multiplicative hash: neighbouring days go to different buckets.
                let mixed = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                ((mixed >> 32) % u64::from(buckets.max(1))) as u32
            })
        })
        .collect();
    split_rows(batch, &of)
}

/// One first-delivery task, over the events of some id buckets: keeps, per id, the delivery
/// with the smallest (input, position), SPEC §3's first in input order, whatever order the
/// engine delivered them in. It holds only the rows that are first deliveries so far: a row
/// that loses is dropped as it comes, one that is beaten later is dropped when enough are, so
/// that a bucket's memory is its distinct ids' rows however often each was delivered.
#[derive(Default)]
pub struct FirstsTask {
    /// Rows that were first deliveries when they came, and which of them still are.
    batches: Vec<(RecordBatch, Vec<bool>)>,
    /// Per id: the first delivery's (input, position) and where it is (batch, row).
    first: HashMap<u128, (i32, i64, u32, u32), KeyHasher>,
    /// Rows held, and those of them beaten since.
    held: usize,
    beaten: usize,
}

/// Beaten rows a [`FirstsTask`] holds before it drops them, at least.
const BEATEN_ROWS: usize = 1 << 16;

impl FirstsTask {
    pub fn new() -> FirstsTask {
        FirstsTask::default()
    }

    /// Takes a batch of [`READ_SCHEMA`] event rows.
    pub fn add(&mut self, batch: RecordBatch) -> Result<()> {
        let id = column::<arrow_array::BinaryArray>(&batch, "id")?;
        let input = column::<arrow_array::Int32Array>(&batch, "input")?;
        let pos = column::<arrow_array::Int64Array>(&batch, "pos")?;
        let b = u32::try_from(self.batches.len())?;
        let mut keep = vec![false; batch.num_rows()];
        let mut keys = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            if id.is_null(i) {
                bail!("an event row without an id");
            }
            let key = key_of(id.value(i))?;
            keys.push(key);
            let here = (input.value(i), pos.value(i), b, i as u32);
            match self.first.entry(key) {
                Entry::Occupied(mut e) => {
                    let f = e.get_mut();
                    if (here.0, here.1) >= (f.0, f.1) {
                        continue;
                    }
                    // Beaten: a row of this batch, or one held.
                    if f.2 == b {
                        keep[f.3 as usize] = false;
                    } else {
                        self.batches[f.2 as usize].1[f.3 as usize] = false;
                        self.beaten += 1;
                    }
                    *f = here;
                }
                Entry::Vacant(e) => {
                    e.insert(here);
                }
            }
            keep[i] = true;
        }
        let kept = keep.iter().filter(|&&k| k).count();
        if kept == 0 {
            return Ok(());
        }
        if kept < batch.num_rows() {
            // The kept rows' places in the filtered batch.
            for (row, i) in (0..keep.len()).filter(|&i| keep[i]).enumerate() {
                if let Some(f) = self.first.get_mut(&keys[i]) {
                    f.3 = row as u32;
                }
            }
        }
        let batch = live_rows(batch, &keep)?;
        self.held += kept;
        self.batches.push((batch, vec![true; kept]));
        if self.beaten >= BEATEN_ROWS && self.beaten * 2 >= self.held {
            self.drop_beaten()?;
        }
        Ok(())
    }

    /// Drops the rows beaten since they came, and points the ids at the rows' new places.
    fn drop_beaten(&mut self) -> Result<()> {
        let held = std::mem::take(&mut self.batches);
        for (batch, live) in held {
            let kept = live.iter().filter(|&&l| l).count();
            if kept == 0 {
                continue;
            }
            let batch = live_rows(batch, &live)?;
            let b = u32::try_from(self.batches.len())?;
            let id = column::<arrow_array::BinaryArray>(&batch, "id")?;
            for i in 0..batch.num_rows() {
                if let Some(f) = self.first.get_mut(&key_of(id.value(i))?) {
                    (f.2, f.3) = (b, i as u32);
                }
            }
            self.batches.push((batch, vec![true; kept]));
        }
        self.held -= self.beaten;
        self.beaten = 0;
        Ok(())
    }

    /// The first deliveries, split by the bucket of their repository for the ledger's shuffle.
    pub fn finish(self, buckets: u32) -> Result<Vec<(Option<u32>, RecordBatch)>> {
        let mut out = Buckets::new("repository", buckets);
        for (batch, live) in self.batches {
            out.add(&live_rows(batch, &live)?)?;
        }
        out.take()
    }
}

/// The rows of `batch` that `live` marks, the batch itself when it marks them all.
fn live_rows(batch: RecordBatch, live: &[bool]) -> Result<RecordBatch> {
    if live.iter().all(|&l| l) {
        return Ok(batch);
    }
    let mask: arrow_array::BooleanArray = live.iter().map(|&l| Some(l)).collect();
    Ok(arrow_select::filter::filter_record_batch(&batch, &mask)?)
}

/// One partition task: the first deliveries of a partition of repositories, and the known
/// repositories among them, folded and replayed as `regtally run` does. Rows are folded as
/// they come, and the ledger's records spill past `--memory-limit` as a run's do, so a
/// partition with one huge repository is not held whole.
pub struct PartitionTask {
    cfg: RunConfig,
    /// The folder the ledger spills into, kept until the task is dropped: the replayed
    /// ledger's spilled repositories are read after the replay.
    _spill: Arc<SpillDir>,
    known: Vec<String>,
    coupons: Arc<UserCoupons>,
    fold: Fold,
    ledger: LedgerBuffer<Arc<SpillDir>>,
    dates: DateCache,
    firsts: u64,
    identities: HashMap<u64, Box<str>>,
    /// With `--events`: the first deliveries' `input`, `pos` and `row` columns.
    rows: Vec<RecordBatch>,
}

/// A fold of first deliveries into lists of users, never sketches: the cells are built from
/// every partition's users together.
fn list_fold(coupons: &Arc<UserCoupons>) -> Fold {
    Fold {
        aggregate: Aggregate::new(coupons.clone(), None),
        ..Fold::default()
    }
}

impl PartitionTask {
    /// A task spilling into a folder of its own under `temp` (the executor's temporary folder).
    pub fn new(config: &TaskConfig, temp: &std::path::Path) -> Result<PartitionTask> {
        let cfg = config.run_config();
        let spill =
            Arc::new(SpillDir::create(temp, &[]).with_context(|| {
                format!("cannot create a temporary folder in {}", temp.display())
            })?);
        let coupons = Arc::new(UserCoupons::default());
        Ok(PartitionTask {
            // The known repositories are seeded once they have all come (`finish`).
            ledger: LedgerBuffer::new(
                PriorLedger::seeded(std::iter::empty()),
                false,
                cfg.budget,
                spill.clone(),
            ),
            _spill: spill,
            fold: list_fold(&coupons),
            coupons,
            cfg,
            known: Vec::new(),
            dates: DateCache::default(),
            firsts: 0,
            identities: HashMap::new(),
            rows: Vec::new(),
        })
    }

    /// Takes a batch of [`READ_SCHEMA`] rows: first deliveries and known repositories.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let recs = column::<arrow_array::Int8Array>(batch, "rec")?;
        let id = column::<arrow_array::BinaryArray>(batch, "id")?;
        let secs = column::<arrow_array::Int64Array>(batch, "secs")?;
        let nanos = column::<arrow_array::Int32Array>(batch, "nanos")?;
        let action = column::<arrow_array::StringArray>(batch, "action")?;
        let kind = column::<arrow_array::Int8Array>(batch, "kind")?;
        let user = column::<arrow_array::Int64Array>(batch, "user")?;
        let identity = column::<arrow_array::StringArray>(batch, "identity")?;
        let deploy_token = column::<arrow_array::BooleanArray>(batch, "deploy_token")?;
        let repository = column::<arrow_array::BinaryArray>(batch, "repository")?;
        let path = column::<arrow_array::StringArray>(batch, "path")?;
        let ledger_id = column::<arrow_array::StringArray>(batch, "ledger_id")?;
        if self.cfg.rules.rows {
            let schema = batch.schema();
            let at = |name: &str| schema.index_of(name);
            self.rows
                .push(batch.project(&[at("input")?, at("pos")?, at("row")?])?);
        }
        // The paths of this batch's repositories: a row that touches the ledger carries its own.
        let mut paths = PathMap::default();
        for i in 0..batch.num_rows() {
            if recs.value(i) == rec::EVENT && path.is_valid(i) {
                paths.insert(key_of(repository.value(i))?, path.value(i));
            }
        }
        for i in 0..batch.num_rows() {
            match recs.value(i) {
                rec::EVENT => {}
                rec::KNOWN => {
                    self.known.push(path.value(i).to_owned());
                    continue;
                }
                other => bail!("a partition was handed a row of kind {other}"),
            }
            let user_hash = user.is_valid(i).then(|| user.value(i) as u64);
            if let (Some(hash), true) = (user_hash, identity.is_valid(i)) {
                self.identities
                    .entry(hash)
                    .or_insert_with(|| identity.value(i).into());
            }
            let kind_code = kind.value(i) as u8;
            let r = EventRecord {
                id_key: key_of(id.value(i))?,
                time: Timestamp {
                    secs: secs.value(i),
                    nanos: nanos.value(i) as u32,
                },
                action: Action::new(action.value(i)),
                kind: EventKind::from_code(kind_code)
                    .ok_or_else(|| anyhow!("no event kind has code {kind_code}"))?,
                user: user_hash,
                deploy_token: deploy_token.value(i),
                repository: key_of(repository.value(i))?,
                ledger_id: ledger_id
                    .is_valid(i)
                    .then(|| LedgerId::from(ledger_id.value(i))),
            };
            let date = self.dates.date(r.time);
            let in_range = self.cfg.in_range(date);
            self.fold.first_delivery(&r, in_range, date);
            self.ledger
                .push(&r, in_range, &paths)
                .context("cannot keep the ledger's events")?;
            self.firsts += 1;
        }
        Ok(())
    }

    /// Replays the ledger and folds every first delivery: the partition's cells (each day's
    /// events and users, put in every period they count in), repositories and counts; and with
    /// `--events`, its rows of the dataset ([`DATASET_ROWS_SCHEMA`]).
    pub fn finish(self) -> Result<(RecordBatch, Option<RecordBatch>)> {
        let PartitionTask {
            cfg,
            _spill,
            known,
            coupons,
            mut fold,
            mut ledger,
            firsts,
            identities,
            rows: dataset,
            ..
        } = self;
        let want_creates = cfg.rules.rows;
        ledger.seed(PriorLedger::seeded(known.iter().map(String::as_str)));
        let replayed = ledger
            .replay(
                || (list_fold(&coupons), IdKeys::default()),
                |(sink, creates): &mut (Fold, IdKeys), push: ResolvedPush, id: &[u8]| {
                    if push.counted {
                        sink.resolved_push(push);
                    }
                    // As `regtally run` learns which pushes created their repository.
                    if want_creates
                        && push.event.by(ActorKind::User) == TrackedEvent::CreateRepository
                    {
                        creates.insert(event_key(id));
                    }
                },
            )
            .context("cannot replay the repository ledger")?;
        let mut creates = IdKeys::default();
        for (sink, created) in replayed.sinks {
            fold = fold.merge(sink);
            creates.extend(created);
        }
        let mut rows = CellRows::default();
        for (event, day, events, users) in fold.aggregate.into_day_lists() {
            let metrics: &[i8] = if event.actor() == ActorKind::User {
                &[event.index() as i8, TOTAL_INDEX]
            } else {
                &[event.index() as i8]
            };
            for period in [
                Period::day_of(day),
                Period::week_of(day),
                Period::month_of(day),
            ] {
                for &metric in metrics {
                    rows.cell(metric, period, None, None, events as i64);
                    for &u in &users {
                        let identity = identities.get(&u).map(|s| &**s);
                        rows.cell(metric, period, Some(u as i64), identity, 0);
                    }
                }
            }
        }
        let mut repositories = Vec::new();
        crate::output::write_repositories(&replayed.ledger, &mut repositories)?;
        for path in std::str::from_utf8(&repositories)?.lines() {
            rows.other(part::REPOSITORY, path);
        }
        let counts = PartitionCounts {
            firsts,
            events: fold.counts,
            late_events: replayed.late_events,
        };
        rows.other(part::COUNTS, &serde_json::to_string(&counts)?);
        let dataset = match want_creates {
            true => Some(dataset_rows(&dataset, &creates)?),
            false => None,
        };
        Ok((rows.finish()?, dataset))
    }
}

/// Rows of the events dataset on their way to the task that writes their month: `month` is
/// `year * 100 + month`; sorted by (month, input, pos), a month's rows are in input order.
pub static DATASET_ROWS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        field("month", DataType::Int32, false),
        field("input", DataType::Int32, false),
        field("pos", DataType::Int64, false),
        // Whether a repository push created its repository (the ledger's replay says).
        field("created", DataType::Boolean, false),
        field("row", DataType::Binary, false),
    ]))
});

fn month_code(month: Month) -> i32 {
    month.0 * 100 + month.1 as i32
}

/// A partition's rows of the dataset: each first delivery's row with what the replay said of
/// it.
fn dataset_rows(batches: &[RecordBatch], creates: &IdKeys) -> Result<RecordBatch> {
    let (mut month, mut input, mut pos) = (
        Int32Builder::new(),
        Int32Builder::new(),
        Int64Builder::new(),
    );
    let (mut created, mut row) = (BooleanBuilder::new(), BinaryBuilder::new());
    for batch in batches {
        let inputs = column::<arrow_array::Int32Array>(batch, "input")?;
        let positions = column::<arrow_array::Int64Array>(batch, "pos")?;
        let rows = column::<arrow_array::BinaryArray>(batch, "row")?;
        for i in 0..batch.num_rows() {
            // Known repositories have none.
            if rows.is_null(i) {
                continue;
            }
            let (decoded, _) = EncodedRow::decode(rows.value(i))?;
            month.append_value(month_code(month_of(decoded.time)));
            input.append_value(inputs.value(i));
            pos.append_value(positions.value(i));
            created.append_value(decoded.is_repository_push() && creates.contains(&decoded.id_key));
            row.append_value(rows.value(i));
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(month.finish()),
        Arc::new(input.finish()),
        Arc::new(pos.finish()),
        Arc::new(created.finish()),
        Arc::new(row.finish()),
    ];
    Ok(RecordBatch::try_new(DATASET_ROWS_SCHEMA.clone(), columns)?)
}

/// One dataset task, over rows of [`DATASET_ROWS_SCHEMA`] sorted by (month, input, pos) with
/// each month's rows all in this task: the month's files, as `regtally run` writes them,
/// staged in the `--events` folder for the driver to rename.
pub struct DatasetTask {
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
    /// The inputs' names, by position.
    files: Vec<String>,
    writer: DatasetWriter,
    /// The last row's (month, input, pos).
    last: Option<(i32, i32, i64)>,
}

/// What a dataset task staged: a row per file.
pub static DATASET_FILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        field("staged", DataType::Utf8, false),
        field("path", DataType::Utf8, false),
        field("rows", DataType::Int64, false),
    ]))
});

impl DatasetTask {
    /// Writes in `dir` (as every task and the driver see it), under staged names ending in
    /// `suffix`, which must be this task's alone.
    pub fn new(
        config: &TaskConfig,
        files: Vec<String>,
        dir: &std::path::Path,
        suffix: &str,
    ) -> DatasetTask {
        DatasetTask {
            since: config.since,
            until: config.until,
            files,
            writer: DatasetWriter::new(dir, "part-", suffix),
            last: None,
        }
    }

    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let month = column::<arrow_array::Int32Array>(batch, "month")?;
        let input = column::<arrow_array::Int32Array>(batch, "input")?;
        let pos = column::<arrow_array::Int64Array>(batch, "pos")?;
        let created = column::<arrow_array::BooleanArray>(batch, "created")?;
        let rows = column::<arrow_array::BinaryArray>(batch, "row")?;
        for i in 0..batch.num_rows() {
            let here = (month.value(i), input.value(i), pos.value(i));
            if self.last.is_some_and(|last| last >= here) {
                bail!("the dataset's rows came out of (month, input, position) order");
            }
            self.last = Some(here);
            let (row, _) = EncodedRow::decode(rows.value(i))?;
            let file = usize::try_from(here.1)
                .ok()
                .and_then(|i| self.files.get(i))
                .ok_or_else(|| anyhow!("no input has position {}", here.1))?;
            let line = row.line;
            let month = month_of(row.time);
            let row = DatasetRow::of(row, created.value(i), file, line, (self.since, self.until));
            self.writer.push(month, &row)?;
        }
        Ok(())
    }

    /// The staged files ([`DATASET_FILES_SCHEMA`]), left for the driver to rename.
    pub fn finish(self) -> Result<RecordBatch> {
        let mut staged = StringBuilder::new();
        let mut path = StringBuilder::new();
        let mut rows = Int64Builder::new();
        for (temp, fin, n) in self.writer.finish()? {
            staged.append_value(temp.to_string_lossy());
            path.append_value(fin.to_string_lossy());
            rows.append_value(n as i64);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(staged.finish()),
            Arc::new(path.finish()),
            Arc::new(rows.finish()),
        ];
        Ok(RecordBatch::try_new(DATASET_FILES_SCHEMA.clone(), columns)?)
    }
}

/// Builders of [`CELL_SCHEMA`]'s columns.
#[derive(Default)]
struct CellRows {
    part: Int8Builder,
    metric: Int8Builder,
    period_kind: Int8Builder,
    start: Date32Builder,
    user: Int64Builder,
    identity: StringBuilder,
    events: Int64Builder,
    text: StringBuilder,
}

impl CellRows {
    fn cell(
        &mut self,
        metric: i8,
        period: Period,
        user: Option<i64>,
        identity: Option<&str>,
        events: i64,
    ) {
        self.part.append_value(part::CELL);
        self.metric.append_value(metric);
        self.period_kind.append_value(period_code(period.kind));
        self.start.append_value(days_since_epoch(period.start));
        self.user.append_option(user);
        self.identity.append_option(identity);
        self.events.append_value(events);
        self.text.append_null();
    }

    fn other(&mut self, part: i8, text: &str) {
        self.part.append_value(part);
        self.metric.append_null();
        self.period_kind.append_null();
        self.start.append_null();
        self.user.append_null();
        self.identity.append_null();
        self.events.append_null();
        self.text.append_value(text);
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.part.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.period_kind.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.identity.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.text.finish()),
        ];
        Ok(RecordBatch::try_new(CELL_SCHEMA.clone(), columns)?)
    }
}

/// One cell task: [`CELL_SCHEMA`] rows of cells, sorted by (metric, period kind, start), in;
/// each cell's sketches out, built as `Aggregate::into_table` builds them: from the sorted,
/// distinct codes of its users.
pub struct CellTask {
    precision: u8,
    current: Option<(i8, i8, i32)>,
    events: u64,
    codes: Vec<u32>,
    identities: Vec<Box<str>>,
    built: SketchRows,
}

impl CellTask {
    pub fn new(config: &TaskConfig) -> CellTask {
        CellTask {
            precision: config.precision,
            current: None,
            events: 0,
            codes: Vec::new(),
            identities: Vec::new(),
            built: SketchRows::default(),
        }
    }

    /// Takes a batch of cell rows; returns the cells it completed (those whose last row came
    /// before this batch's last key).
    pub fn add(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let parts = column::<arrow_array::Int8Array>(batch, "part")?;
        let metric = column::<arrow_array::Int8Array>(batch, "metric")?;
        let kind = column::<arrow_array::Int8Array>(batch, "period_kind")?;
        let start = column::<arrow_array::Date32Array>(batch, "start")?;
        let user = column::<arrow_array::Int64Array>(batch, "user")?;
        let identity = column::<arrow_array::StringArray>(batch, "identity")?;
        let events = column::<arrow_array::Int64Array>(batch, "events")?;
        for i in 0..batch.num_rows() {
            if parts.value(i) != part::CELL {
                bail!("a cell task was handed a row of kind {}", parts.value(i));
            }
            let key = (metric.value(i), kind.value(i), start.value(i));
            if self.current.is_some_and(|c| c != key) {
                self.build()?;
            }
            self.current = Some(key);
            self.events += events.value(i) as u64;
            if user.is_valid(i) {
                self.codes
                    .push(sparse_code(self.precision, user.value(i) as u64));
                if identity.is_valid(i) {
                    self.identities.push(identity.value(i).into());
                }
            }
        }
        if self.built.len() == 0 {
            return Ok(None);
        }
        self.built.finish().map(Some)
    }

    /// The last cell.
    pub fn finish(mut self) -> Result<Option<RecordBatch>> {
        if self.current.is_some() {
            self.build()?;
        }
        if self.built.len() == 0 {
            return Ok(None);
        }
        self.built.finish().map(Some)
    }

    fn build(&mut self) -> Result<()> {
        let Some((metric, kind, start)) = self.current.take() else {
            return Ok(());
        };
        self.codes.sort_unstable();
        self.codes.dedup();
        self.identities.sort_unstable();
        self.identities.dedup();
        let mut coupons: Vec<_> = self.identities.iter().map(|i| identity_coupon(i)).collect();
        coupons.sort_unstable();
        coupons.dedup();
        let mut sketch = UserSketch::of_codes(self.precision, &self.codes);
        let hll = WarehouseSketch::of_users(self.precision, &coupons);
        self.built.metric.append_value(metric);
        self.built.period_kind.append_value(kind);
        self.built.start.append_value(start);
        self.built.events.append_value(self.events as i64);
        self.built.sketch.append_value(sketch.to_bytes());
        self.built.hll_sketch.append_value(hll.to_bytes());
        self.events = 0;
        self.codes.clear();
        self.identities.clear();
        Ok(())
    }
}

#[derive(Default)]
struct SketchRows {
    metric: Int8Builder,
    period_kind: Int8Builder,
    start: Date32Builder,
    events: Int64Builder,
    sketch: BinaryBuilder,
    hll_sketch: BinaryBuilder,
}

impl SketchRows {
    fn len(&self) -> usize {
        self.metric.len()
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.metric.finish()),
            Arc::new(self.period_kind.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.sketch.finish()),
            Arc::new(self.hll_sketch.finish()),
        ];
        Ok(RecordBatch::try_new(SKETCH_SCHEMA.clone(), columns)?)
    }
}

/// What the driver gathers from the tasks: every input's accounting (in input order), the
/// rejects (in input order, then as each input found them), each partition's counts and
/// repositories, and the built cells.
#[derive(Default)]
pub struct Gathered {
    pub inputs: Vec<InputAccounting>,
    pub rejects: Vec<String>,
    pub partitions: Vec<PartitionCounts>,
    pub repositories: Vec<String>,
    pub cells: Vec<RecordBatch>,
    pub phases: Vec<(&'static str, f64)>,
    /// With `--events`: the files the dataset tasks staged, (staged path, final path, rows).
    pub dataset: Option<Vec<(PathBuf, PathBuf, u64)>>,
}

impl Gathered {
    /// Takes rows of [`READ_SCHEMA`] that are accounting or rejects, sorted by (input, pos).
    pub fn add_read_rows(&mut self, batch: &RecordBatch) -> Result<()> {
        let recs = column::<arrow_array::Int8Array>(batch, "rec")?;
        let text = column::<arrow_array::StringArray>(batch, "text")?;
        for i in 0..batch.num_rows() {
            match recs.value(i) {
                rec::INPUT => self.inputs.push(serde_json::from_str(text.value(i))?),
                rec::REJECT => self.rejects.push(text.value(i).to_owned()),
                other => bail!("the driver was handed a read row of kind {other}"),
            }
        }
        Ok(())
    }

    /// Takes rows of [`CELL_SCHEMA`] that are repositories or counts.
    pub fn add_partition_rows(&mut self, batch: &RecordBatch) -> Result<()> {
        let parts = column::<arrow_array::Int8Array>(batch, "part")?;
        let text = column::<arrow_array::StringArray>(batch, "text")?;
        for i in 0..batch.num_rows() {
            match parts.value(i) {
                part::REPOSITORY => self.repositories.push(text.value(i).to_owned()),
                part::COUNTS => self.partitions.push(serde_json::from_str(text.value(i))?),
                other => bail!("the driver was handed a partition row of kind {other}"),
            }
        }
        Ok(())
    }

    /// Takes rows of [`DATASET_FILES_SCHEMA`].
    pub fn add_dataset_files(&mut self, batch: &RecordBatch) -> Result<()> {
        let staged = column::<arrow_array::StringArray>(batch, "staged")?;
        let path = column::<arrow_array::StringArray>(batch, "path")?;
        let rows = column::<arrow_array::Int64Array>(batch, "rows")?;
        let files = self.dataset.get_or_insert_default();
        for i in 0..batch.num_rows() {
            files.push((
                PathBuf::from(staged.value(i)),
                PathBuf::from(path.value(i)),
                u64::try_from(rows.value(i))?,
            ));
        }
        Ok(())
    }

    /// The run's [`Tally`]; the rejects are written to `rejects` as `regtally run` writes them.
    pub fn into_tally(self, cfg: &RunConfig, rejects: &mut (dyn Write + Send)) -> Result<Tally> {
        let mut phases = Phases::start();
        anyhow::ensure!(
            self.inputs.len() == cfg.inputs.len(),
            "{} of {} inputs were read",
            self.inputs.len(),
            cfg.inputs.len()
        );
        let mut counts = LineCounts::default();
        let mut reports = Vec::with_capacity(self.inputs.len());
        for input in self.inputs {
            counts.merge(&input.counts);
            reports.push(input.report);
        }
        let mut first_rejects = Vec::new();
        for line in &self.rejects {
            rejects.write_all(line.as_bytes())?;
            rejects.write_all(b"\n")?;
            if first_rejects.len() < 5 {
                first_rejects.push(file_reject(line)?);
            }
        }
        let mut events = EventCounts::default();
        let (mut firsts, mut late_events) = (0, 0);
        for p in self.partitions {
            events.merge(p.events);
            firsts += p.firsts;
            late_events += p.late_events;
        }
        let mut metrics = MetricTable::new(cfg.precision);
        for batch in &self.cells {
            add_cells(&mut metrics, batch)?;
        }
        let ledger = RepositoryLedger::seeded(self.repositories.iter().map(String::as_str));
        phases.lap("gather");
        let mut phase_seconds = self.phases;
        phase_seconds.extend(phases.laps);
        Ok(Tally {
            inputs: reports,
            counts,
            duplicate_events: counts.events_seen.saturating_sub(firsts),
            out_of_range_events: events.out_of_range,
            manifest_deletes: events.manifest_deletes,
            // Before by_action moves out of the counts.
            counted_events: events.counted_by_metric(),
            events_by_action: events.by_action.into_map(),
            first_event: events.first,
            last_event: events.last,
            first_rejects,
            metrics,
            ledger: ReplayedLedger::whole(&ledger, false),
            late_events,
            event_ids: Vec::new(),
            spilled: Vec::new(),
            dataset: cfg.rules.rows.then(|| {
                let mut files = self.dataset.unwrap_or_default();
                // Renamed in path order, whichever task wrote them.
                files.sort_by(|a, b| a.1.cmp(&b.1));
                Dataset::Staged {
                    rows: files.iter().map(|f| f.2).sum(),
                    files: files.into_iter().map(|(t, f, _)| (t, f)).collect(),
                }
            }),
            redis: None,
            phase_seconds,
        })
    }
}

/// A line of `rejects.jsonl` read back, for the message of a run with too many.
fn file_reject(line: &str) -> Result<FileReject> {
    #[derive(serde::Deserialize)]
    struct Line {
        file: String,
        line: u64,
        index: Option<u32>,
        reason: String,
        #[serde(default)]
        text: String,
    }
    let l: Line = serde_json::from_str(line)?;
    Ok(FileReject {
        file: l.file,
        reject: Reject {
            line: l.line,
            index: l.index,
            reason: l.reason,
            text: l.text,
        },
    })
}

/// Adds [`SKETCH_SCHEMA`] rows to the table.
fn add_cells(table: &mut MetricTable, batch: &RecordBatch) -> Result<()> {
    let metric = column::<arrow_array::Int8Array>(batch, "metric")?;
    let kind = column::<arrow_array::Int8Array>(batch, "period_kind")?;
    let start = column::<arrow_array::Date32Array>(batch, "start")?;
    let events = column::<arrow_array::Int64Array>(batch, "events")?;
    let sketch = column::<arrow_array::BinaryArray>(batch, "sketch")?;
    let hll = column::<arrow_array::BinaryArray>(batch, "hll_sketch")?;
    for i in 0..batch.num_rows() {
        let period = period_of(kind.value(i), date_of(start.value(i))?)?;
        let cell = TableCell {
            sketch: UserSketch::from_bytes(sketch.value(i))?,
            hll_sketch: Some(WarehouseSketch::from_bytes(hll.value(i))?),
            events: events.value(i) as u64,
        };
        table.add_cell(metric_name(metric.value(i))?, period, cell)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BinaryArray, Int32Array, Int64Array};

    /// Event rows with only what first deliveries read: (id, input, pos, repository).
    fn deliveries(rows: &[(u8, i32, i64, u8)]) -> RecordBatch {
        let key = |b: u8| {
            let mut k = [0u8; 16];
            k[0] = b;
            k[15] = b;
            k
        };
        let ids: Vec<[u8; 16]> = rows.iter().map(|r| key(r.0)).collect();
        let repos: Vec<[u8; 16]> = rows.iter().map(|r| key(r.3)).collect();
        RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(BinaryArray::from_iter_values(ids.iter())) as ArrayRef,
            ),
            (
                "input",
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "pos",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ),
            (
                "repository",
                Arc::new(BinaryArray::from_iter_values(repos.iter())),
            ),
        ])
        .unwrap()
    }

    fn rows_of(out: &[(Option<u32>, RecordBatch)]) -> Vec<(u8, i32, i64)> {
        let mut rows = Vec::new();
        for (_, b) in out {
            let id = column::<BinaryArray>(b, "id").unwrap();
            let input = column::<Int32Array>(b, "input").unwrap();
            let pos = column::<Int64Array>(b, "pos").unwrap();
            for i in 0..b.num_rows() {
                rows.push((id.value(i)[0], input.value(i), pos.value(i)));
            }
        }
        rows.sort_unstable();
        rows
    }

    #[test]
    fn the_first_delivery_is_the_first_in_input_order_whatever_order_it_arrives_in() {
        let mut task = FirstsTask::new();
        // Id 1 arrives last in input order first; id 2 twice in one input.
        task.add(deliveries(&[(1, 3, 0, 7), (2, 1, 9, 8), (1, 2, 5, 7)]))
            .unwrap();
        task.add(deliveries(&[(1, 0, 40, 7), (2, 1, 4, 8), (3, 0, 1, 7)]))
            .unwrap();
        let out = task.finish(4).unwrap();
        assert_eq!(rows_of(&out), vec![(1, 0, 40), (2, 1, 4), (3, 0, 1)]);
        // One batch per repository bucket, each holding only its bucket's repositories.
        for (bucket, batch) in &out {
            let repos = column::<BinaryArray>(batch, "repository").unwrap();
            for i in 0..batch.num_rows() {
                assert_eq!(Some(bucket_of(repos.value(i), 4)), *bucket);
            }
        }
    }

    #[test]
    fn a_first_delivery_task_holds_only_what_may_still_be_first() {
        // Each round delivers ids 0..200 again, earlier in input order than the round before,
        // each id twice (the later copy loses at once): every round beats every row held.
        let mut task = FirstsTask::new();
        let rounds = 1000i64;
        for round in 0..rounds {
            let pos = (rounds - round) * 2;
            let rows: Vec<(u8, i32, i64, u8)> = (0..200u8)
                .flat_map(|id| [(id, 0, pos, id % 5), (id, 0, pos + 1, id % 5)])
                .collect();
            task.add(deliveries(&rows)).unwrap();
            assert!(
                task.held <= BEATEN_ROWS + 400,
                "round {round}: {} rows held",
                task.held
            );
        }
        let out = task.finish(3).unwrap();
        let mut got = rows_of(&out);
        got.sort();
        let want: Vec<(u8, i32, i64)> = (0..200u8).map(|id| (id, 0, 2)).collect();
        assert_eq!(got, want);
    }

    /// What a partition task gives for many repositories' pushes and deletes, with `limit`
    /// as `--memory-limit`; and whether its ledger spilled before the replay.
    fn partition_output(limit: u64) -> (RecordBatch, bool) {
        let temp = tempfile::tempdir().unwrap();
        let config = TaskConfig {
            since: None,
            until: None,
            precision: 14,
            max_line_bytes: 1 << 20,
            chunk_bytes: 1 << 20,
            today: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            memory_limit: limit,
            rows: false,
        };
        let mut task = PartitionTask::new(&config, temp.path()).unwrap();
        let mut known = ReadRows::new();
        known.other(rec::KNOWN, 0, 0, Some("g/r7"));
        task.add(&known.finish().unwrap()).unwrap();
        for chunk in 0..20u64 {
            let mut rows = ReadRows::new();
            for i in 0..2_000u64 {
                let n = chunk * 2_000 + i;
                let path = format!("g/r{}", n % 3_000);
                let id = format!("{n:08}-0000-0000-0000-000000000000");
                let kind = match n % 7 {
                    0 => EventKind::DeleteRepository,
                    _ => EventKind::RepositoryPush,
                };
                let r = EventRecord {
                    id_key: event_key(&id),
                    // Out of time order across chunks, as a shuffle delivers them.
                    time: Timestamp {
                        secs: 1_674_000_000 + ((n * 7_919) % 40_000) as i64 * 60,
                        nanos: 0,
                    },
                    action: Action::new(if kind == EventKind::DeleteRepository {
                        "delete"
                    } else {
                        "push"
                    }),
                    kind,
                    user: Some(n % 50),
                    deploy_token: false,
                    repository: repository_key(&path),
                    ledger_id: Some(LedgerId::from(id.as_str())),
                };
                let identity = format!("user{}", n % 50);
                rows.event(0, n as i64, &r, Some(&identity), Some(&path), None);
            }
            task.add(&rows.finish().unwrap()).unwrap();
        }
        let spilled = std::fs::read_dir(temp.path())
            .unwrap()
            .flatten()
            .flat_map(|run| {
                std::fs::read_dir(run.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .any(|f| f.file_name().to_string_lossy().starts_with("ledger-part-"));
        (task.finish().unwrap().0, spilled)
    }

    #[test]
    fn a_partition_task_spills_its_ledger_and_gives_the_same_answer() {
        let (held, held_spilled) = partition_output(1 << 30);
        let (spilled, did_spill) = partition_output(1 << 20);
        assert!(!held_spilled && did_spill);
        assert_eq!(held, spilled);
        let part = column::<arrow_array::Int8Array>(&held, "part").unwrap();
        assert!((0..held.num_rows()).any(|i| part.value(i) == part::REPOSITORY));
    }

    #[test]
    fn buckets_hand_out_a_batch_per_bucket_and_rows_without_a_key_apart() {
        let mut buckets = Buckets::new("id", 3);
        let batch = deliveries(&[(1, 0, 0, 1), (2, 0, 1, 1), (1, 0, 2, 1), (5, 0, 3, 1)]);
        assert!(!buckets.add(&batch).unwrap());
        assert!(!buckets.add(&batch).unwrap());
        let out = buckets.take().unwrap();
        let mut seen: Vec<Option<u32>> = out.iter().map(|(b, _)| *b).collect();
        seen.dedup();
        assert_eq!(seen.len(), out.len(), "one batch per bucket");
        assert_eq!(out.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 8);
        for (bucket, b) in &out {
            let id = column::<BinaryArray>(b, "id").unwrap();
            for i in 0..b.num_rows() {
                assert_eq!(Some(bucket_of(id.value(i), 3)), *bucket);
            }
        }
        assert!(buckets.take().unwrap().is_empty());

        let mut rows = ReadRows::new();
        rows.other(rec::INPUT, 0, 0, Some("{}"));
        let mut buckets = Buckets::new("id", 3);
        buckets.add(&rows.finish().unwrap()).unwrap();
        let out = buckets.take().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, None);
    }

    #[test]
    fn a_cells_users_share_a_bucket_and_the_counts_go_apart() {
        let mut rows = CellRows::default();
        let day = |d: u32| NaiveDate::from_ymd_opt(2023, 1, d).unwrap();
        for d in 1..=20 {
            for user in 0..3 {
                rows.cell(2, Period::day_of(day(d)), Some(user), None, 1);
                rows.cell(5, Period::day_of(day(d)), Some(user), None, 1);
            }
        }
        rows.other(part::COUNTS, "{}");
        let batch = rows.finish().unwrap();
        let out = split_cells(&batch, 4).unwrap();
        assert_eq!(out[0].0, None);
        assert_eq!(out[0].1.num_rows(), 1);
        let mut where_: HashMap<(i8, i32), u32> = HashMap::new();
        for (bucket, b) in &out[1..] {
            let metric = column::<arrow_array::Int8Array>(b, "metric").unwrap();
            let start = column::<arrow_array::Date32Array>(b, "start").unwrap();
            for i in 0..b.num_rows() {
                let at = *where_
                    .entry((metric.value(i), start.value(i)))
                    .or_insert(bucket.unwrap());
                assert_eq!(Some(at), *bucket);
            }
        }
        assert_eq!(where_.len(), 40);
        // Forty cells spread over the buckets, not all in one.
        let used: std::collections::HashSet<u32> = where_.values().copied().collect();
        assert!(used.len() > 1);
    }

    #[test]
    fn event_kinds_survive_their_codes() {
        let kinds = [
            EventKind::Untracked,
            EventKind::PushTag,
            EventKind::DeleteTag,
            EventKind::ManifestDelete,
            EventKind::DeleteRepository,
            EventKind::RepositoryPush,
        ]
        .into_iter()
        .chain(TrackedEvent::ALL.map(EventKind::Resolved));
        for kind in kinds {
            assert_eq!(EventKind::from_code(kind.code()), Some(kind));
        }
        let past = 6 + TrackedEvent::ALL.len() as u8;
        assert_eq!(EventKind::from_code(past), None);
        assert_eq!(EventKind::from_code(u8::MAX), None);
    }

    #[test]
    fn periods_survive_their_codes() {
        let day = NaiveDate::from_ymd_opt(2021, 1, 3).unwrap();
        for p in [
            Period::day_of(day),
            Period::week_of(day),
            Period::month_of(day),
        ] {
            let back = period_of(
                period_code(p.kind),
                date_of(days_since_epoch(p.start)).unwrap(),
            );
            assert_eq!(back.unwrap(), p);
        }
        assert!(period_of(1, day).is_err(), "2021-01-03 is a Sunday");
        assert!(period_of(3, day).is_err());
    }

    #[test]
    fn an_empty_cell_is_the_empty_sketches() {
        let mut built = UserSketch::of_codes(14, &[]);
        let mut empty = TableCell::empty(14);
        assert_eq!(built.to_bytes(), empty.sketch.to_bytes());
        assert_eq!(
            WarehouseSketch::of_users(14, &[]).to_bytes(),
            empty.hll_sketch.unwrap().to_bytes()
        );
    }

    /// Rows of [`DATASET_ROWS_SCHEMA`] as a partition task yields them, from (time, input,
    /// pos, kind, whether the replay found the push created its repository).
    fn dataset_batch(rows: &[(Timestamp, i32, i64, EventKind, bool)]) -> RecordBatch {
        let mut creates = IdKeys::default();
        let mut encoded = Vec::new();
        for (i, &(time, _, p, kind, created)) in rows.iter().enumerate() {
            let id = format!("event-{i}");
            let row = EncodedRow {
                id_key: event_key(&id),
                line: p as u64 + 1,
                digest: Some("sha256:1"),
                user: Some("alice"),
                actor_name: Some("alice"),
                ..EncodedRow::bare(&id, time, kind)
            };
            let mut bytes = Vec::new();
            row.encode(&mut bytes);
            encoded.push(bytes);
            if created {
                creates.insert(row.id_key);
            }
        }
        let read = RecordBatch::try_from_iter(vec![
            (
                "input",
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef,
            ),
            (
                "pos",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ),
            (
                "row",
                Arc::new(BinaryArray::from_iter_values(encoded.iter())),
            ),
        ])
        .unwrap();
        dataset_rows(&[read], &creates).unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 0 }
    }

    #[test]
    fn a_dataset_task_stages_each_months_files_for_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let config = TaskConfig {
            since: None,
            until: None,
            precision: 14,
            max_line_bytes: 1 << 20,
            chunk_bytes: 1 << 20,
            today: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            memory_limit: 1 << 30,
            rows: true,
        };
        let names = vec!["a.jsonl".to_owned(), "b.jsonl".to_owned()];
        // 2023-01-25 and 2023-02-02.
        let (jan, feb) = (at(1_674_658_000), at(1_675_330_000));
        let mut task = DatasetTask::new(&config, names.clone(), dir.path(), ".tmp-run-x");
        task.add(&dataset_batch(&[
            (jan, 0, 0, EventKind::RepositoryPush, true),
            (jan, 1, 3, EventKind::PushTag, false),
        ]))
        .unwrap();
        task.add(&dataset_batch(&[(
            feb,
            0,
            1,
            EventKind::RepositoryPush,
            false,
        )]))
        .unwrap();
        let files = task.finish().unwrap();
        let staged = column::<arrow_array::StringArray>(&files, "staged").unwrap();
        let path = column::<arrow_array::StringArray>(&files, "path").unwrap();
        let rows = column::<Int64Array>(&files, "rows").unwrap();
        assert_eq!(files.num_rows(), 2);
        for (i, (month, n)) in [("month=2023-01", 2), ("month=2023-02", 1)]
            .iter()
            .enumerate()
        {
            let fin = dir.path().join(month).join("part-00000.parquet");
            assert_eq!(path.value(i), fin.to_string_lossy());
            assert_eq!(rows.value(i), *n);
            // Staged, synced and left in place; the final name is the driver's to give.
            assert!(staged.value(i).ends_with(".tmp-run-x"));
            assert!(std::path::Path::new(staged.value(i)).exists());
            assert!(!fin.exists());
        }

        // Rows out of (month, input, pos) order are the plan's mistake, never written.
        let mut task = DatasetTask::new(&config, names, dir.path(), ".tmp-run-y");
        let err = task
            .add(&dataset_batch(&[
                (jan, 1, 0, EventKind::PushTag, false),
                (jan, 0, 5, EventKind::PushTag, false),
            ]))
            .unwrap_err();
        assert!(err.to_string().contains("out of"), "{err}");
    }
}
