//! What a run computed: the material of every output, handed from the pipeline to the outputs
//! and the state.

use crate::aggregate::{MetricTable, RedisExport};
use crate::dedup::rows::DeferredFirsts;
use crate::keys::KeyHasher;
use crate::ledger::ReplayedLedger;
use crate::read::InputReport;
use crate::records::row::Month;
use crate::records::{FileReject, LineCounts};
use crate::timestamp::Timestamp;
use chrono::NaiveDate;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

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
    pub ledger: ReplayedLedger,
    /// Pushes and repository deletes older than the last event already applied to their
    /// repository by an earlier run (GUIDE.md, "Run it nightly", on late arrivals).
    pub late_events: u64,
    /// Id and time of de-duplicated events inside the state's window
    /// ([`crate::config::RunConfig::keep_event_ids`]).
    pub event_ids: Vec<(u128, Timestamp)>,
    /// What went to temporary files because it passed the memory budget.
    pub spilled: Vec<&'static str>,
    /// The events dataset, when asked for (`--events`).
    pub dataset: Option<Dataset>,
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

/// Wall time of each step of a run, for `summary.json` (where a slow run spent its time).
pub struct Phases {
    last: std::time::Instant,
    pub laps: Vec<(&'static str, f64)>,
}

impl Phases {
    pub fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    pub fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((name, (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

/// Ids (xxh3-128 of the event id) of repository pushes.
pub type IdKeys = HashSet<u128, KeyHasher>;

/// What reading could not say of the events dataset's rows.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Repository pushes that created their repository (the others pushed to it).
    pub creates: IdKeys,
    /// Set once de-duplication spilled.
    pub deferred: Option<DeferredFirsts>,
}

/// The events dataset of a run.
#[derive(Debug)]
pub enum Dataset {
    /// Rows for the run to write.
    Rows(DatasetRows),
    /// Files an engine's tasks wrote, each (staged path, final path), for the run to rename
    /// with its other outputs.
    Staged {
        files: Vec<(PathBuf, PathBuf)>,
        rows: u64,
    },
}

/// A run's rows of the events dataset, ready to be written.
#[derive(Debug)]
pub struct DatasetRows {
    /// Each month's temporary file of rows ([`crate::dedup::rows`]).
    pub months: Vec<(Month, PathBuf)>,
    pub resolution: Resolution,
    /// The inputs' names, by position.
    pub files: Vec<String>,
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
}
