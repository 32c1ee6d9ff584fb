//! The run: inputs read in parallel, then de-duplication, the repository ledger and aggregation.
//!
//! Pass one reads and parses every input (in parallel across inputs and across chunks of one
//! input) into compact [`EventRecord`]s in input order. Pass two walks those records: the first
//! delivery of each id wins (SPEC §3), pushes and repository deletes are replayed in (time, id)
//! order through the [`RepositoryLedger`] (SPEC §6), and counted events fold into an
//! [`Aggregate`] in parallel.

use crate::aggregate::{Aggregate, MetricRow};
use crate::classify::{EventKind, TrackedEvent};
use crate::ledger::RepositoryLedger;
use crate::read::{open_input, Chunk, Chunker, Compression, InputPath};
use crate::records::{parse_chunk, ChunkOutput, EventRecord, LineCounts, Reject};
use crate::sketch::PassThroughHasher;
use crate::timestamp::Timestamp;
use chrono::NaiveDate;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What a run is asked to do, validated (SPEC §1 to §8; outputs are the caller's).
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub inputs: Vec<InputPath>,
    /// Seed of the repository ledger.
    pub known_repositories: Vec<String>,
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
    pub rows: Vec<MetricRow>,
    /// The final repository set, sorted.
    pub repositories: Vec<String>,
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
pub fn run(cfg: &RunConfig) -> Tally {
    let progress = progress_bar(cfg);
    let read: Vec<(InputReport, Vec<ChunkOutput>)> = cfg
        .inputs
        .par_iter()
        .map(|input| read_input(input, cfg, progress.clone()))
        .collect();
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    tally(cfg, read)
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
) -> (InputReport, Vec<ChunkOutput>) {
    let mut report = InputReport {
        path: input.display_name(),
        compression: None,
        bytes: 0,
        decoded_bytes: 0,
        lines: 0,
        error: None,
    };
    let opened = match open_input(input, progress) {
        Ok(o) => o,
        Err(e) => {
            report.error = Some(format!("cannot open: {e}"));
            return (report, Vec::new());
        }
    };
    report.compression = Some(opened.compression);
    let mut chunker = Chunker::new(opened.stream, cfg.chunk_bytes, cfg.max_line_bytes);
    let done: Mutex<Vec<(usize, ChunkOutput)>> = Mutex::new(Vec::new());
    let in_flight = AtomicUsize::new(0);
    let mut read_error = None;
    let parse = |seq: usize, chunk: Chunk| {
        let out = parse_chunk(&chunk, cfg.max_line_bytes);
        done.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((seq, out));
    };
    rayon::scope(|scope| {
        for seq in 0.. {
            match chunker.next_chunk() {
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
    report.bytes = opened.raw_bytes.load(Ordering::Relaxed);
    report.decoded_bytes = chunker.decoded_bytes;
    if let Some(e) = read_error {
        report.error = Some(format!(
            "read failed at line {} (decoded byte {}, file byte {}): {e}",
            report.lines + 1,
            report.decoded_bytes,
            report.bytes
        ));
    }
    (report, chunks)
}

type KeySet = HashSet<u128, BuildHasherDefault<PassThroughHasher>>;

/// Pass two: de-duplication, the ledger and aggregation over the records of every input.
fn tally(cfg: &RunConfig, read: Vec<(InputReport, Vec<ChunkOutput>)>) -> Tally {
    let mut counts = LineCounts::default();
    let mut inputs = Vec::with_capacity(read.len());
    let mut rejects = Vec::new();
    let mut records: Vec<EventRecord> = Vec::new();
    let mut ledger = RepositoryLedger::seeded(cfg.known_repositories.iter().map(String::as_str));
    for (report, chunks) in read {
        for chunk in chunks {
            counts.merge(&chunk.counts);
            rejects.extend(chunk.rejects.into_iter().map(|reject| FileReject {
                file: report.path.clone(),
                reject,
            }));
            records.extend(chunk.events);
            for (key, path) in chunk.pushed_paths {
                ledger.learn_path(key, &path);
            }
        }
        inputs.push(report);
    }

    // SPEC §3: the first delivery in input order counts.
    let seen_total = records.len() as u64;
    let mut seen_ids = KeySet::with_capacity_and_hasher(records.len(), Default::default());
    records.retain(|r| seen_ids.insert(r.id_key));
    drop(seen_ids);
    let duplicate_events = seen_total - records.len() as u64;

    // SPEC §6: replay pushes and repository deletes in (UTC time, id) order.
    let mut order: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].ledger_id.is_some())
        .collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&records[a], &records[b]);
        (a.time, &a.ledger_id).cmp(&(b.time, &b.ledger_id))
    });
    for i in order {
        let r = &mut records[i];
        match r.kind {
            EventKind::DeleteRepository => ledger.delete(r.repository),
            EventKind::RepositoryPush => {
                let existed = ledger.push(r.repository);
                r.kind = EventKind::Resolved(if existed {
                    TrackedEvent::PushRepository
                } else {
                    TrackedEvent::CreateRepository
                });
            }
            _ => {
                ledger.push(r.repository);
            }
        }
    }

    let aggregate = records
        .par_iter()
        .fold(Aggregate::default, |mut agg, r| {
            let date = r.time.date();
            if let (Some(event), Some(user), true) = (r.kind.tracked(), r.user, cfg.in_range(date))
            {
                agg.add(event, date, user);
            }
            agg
        })
        .reduce(Aggregate::default, Aggregate::merge);

    let mut events_by_action: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_action: HashMap<&str, u64> = HashMap::new();
    let (mut out_of_range_events, mut manifest_deletes) = (0, 0);
    let mut counted_events: BTreeMap<&'static str, u64> = TrackedEvent::ALL
        .iter()
        .map(|t| (t.metric_name(), 0))
        .collect();
    for r in &records {
        *by_action.entry(r.action.as_str()).or_default() += 1;
        if !cfg.in_range(r.time.date()) {
            out_of_range_events += 1;
        } else if r.kind == EventKind::ManifestDelete {
            manifest_deletes += 1;
        } else if let (Some(t), Some(_)) = (r.kind.tracked(), r.user) {
            *counted_events.entry(t.metric_name()).or_default() += 1;
        }
    }
    events_by_action.extend(by_action.into_iter().map(|(k, v)| (k.to_owned(), v)));

    Tally {
        inputs,
        counts,
        duplicate_events,
        out_of_range_events,
        manifest_deletes,
        events_by_action,
        counted_events,
        first_event: records.iter().map(|r| r.time).min(),
        last_event: records.iter().map(|r| r.time).max(),
        rejects,
        rows: aggregate.into_rows(cfg.precision),
        repositories: ledger
            .sorted_paths()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}
