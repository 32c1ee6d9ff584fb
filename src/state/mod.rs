//! Run state (`run --state DIR`): what a later run needs to continue exactly where this one
//! stopped, kept in one file so that it is replaced in one rename.
//!
//! The file, `regtally-state.bin.zst`, is zstd-compressed: a magic line, then postcard 1 (a
//! fixed, documented wire format) of [`StateFile`]: the sketches and exact counts per metric
//! and period, the repository ledger with the time of the last event applied to each
//! repository (seconds and nanoseconds, integers), the ids of recent events (16 bytes each) for
//! de-duplication, and the inputs already consumed. Every value a valid event can carry
//! round-trips. regtally 0.3's `regtally-state.json.zst` (JSON, times as RFC 3339 text) still
//! loads, and is replaced by the new file at the next run's end.
//!
//! A run holds `regtally-state.lock` ([`StateLock`]) from before it loads the state until its
//! outputs are in place: two runs on one state would each count only their own inputs.

use crate::aggregate::period::Period;
use crate::aggregate::sketch::{UserSketch, WarehouseSketch, HASH_NAME, SKETCH_FORMAT_VERSION};
use crate::aggregate::WeekIds;
use crate::aggregate::{MetricTable, TableCell};
use crate::classify::known_metric;
use crate::classify::TrackedEvent;
use crate::ledger::{LedgerEntry, PriorLedger, ReplayedLedger};
use crate::read::InputPath;
use crate::tally::Tally;
use crate::timestamp::{parse_rfc3339, Timestamp};

pub mod inputs;
mod legacy;
pub mod lock;

use chrono::{Datelike, NaiveDate};
pub use inputs::{hash_file, ConsumedInput, InputSelection, SkippedInput};
pub use legacy::legacy_moved_header;
pub use lock::StateLock;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The state file's name inside the state folder.
pub const STATE_FILE: &str = "regtally-state.bin.zst";

/// The file regtally 0.3 kept its state in (version 1, JSON). After a run migrates it, it
/// holds only a version header, so that 0.3 refuses the folder instead of starting afresh.
pub const LEGACY_STATE_FILE: &str = "regtally-state.json.zst";

/// The lock a run holds on its state folder.
pub const LOCK_FILE: &str = "regtally-state.lock";

/// Version of the state file's layout and meaning. Version 1 (regtally 0.3, JSON) still
/// loads; any other is refused.
pub const STATE_VERSION: u32 = 2;

const STATE_FORMAT: &str = "regtally-state";

/// The first bytes of a state file, inside the compression.
const MAGIC: &[u8] = b"regtally-state\n";

/// Why a state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot read the state: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a regtally state file ({why}). Rebuild the state from the archived logs (GUIDE.md, \"Rebuilding the state\")")]
    NotState { path: PathBuf, why: String },
    #[error("{path}: state format version {found} was written by regtally {tool}; this release reads versions 1 and {STATE_VERSION}. Rebuild the state from the archived logs (GUIDE.md, \"Rebuilding the state\")")]
    Version {
        path: PathBuf,
        found: u32,
        tool: String,
    },
    #[error("{path}: state was built with precision {found}, this run asks for {wanted}: sketches of different precision cannot be merged")]
    Precision {
        path: PathBuf,
        found: u8,
        wanted: u8,
    },
    #[error(
        "{path}: state was built with identity hash {found:?}, this release uses {HASH_NAME:?}"
    )]
    Hash { path: PathBuf, found: String },
}

/// One metric in one period, as the state keeps it.
#[derive(Serialize, Deserialize)]
struct StoredCell {
    metric: String,
    kind: String,
    /// First day of the period, in days since 1970-01-01.
    start: i32,
    events: u64,
    /// The `sketch` column's versioned bytes.
    sketch: Vec<u8>,
    /// The `hll_sketch` column's bytes; `None` for a cell carried over from a version 1 state.
    hll_sketch: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct StoredRepository {
    path: String,
    exists: bool,
    /// Seconds since the epoch and nanoseconds of the last event applied.
    last_applied: Option<(i64, u32)>,
}

/// The state file's contents (version 2), in postcard after [`MAGIC`]: this head, then the
/// repositories (their count, then each a [`StoredRepository`]), then a [`StateTail`], one
/// struct's fields in order as postcard writes them. The repositories are read and written one
/// at a time, so that a state of millions of them never sits in memory whole.
#[derive(Serialize, Deserialize)]
struct StateHead {
    version: u32,
    written_by: String,
    precision: u8,
    hash: String,
    sketch_format: u8,
    dedup_window_days: u32,
    metrics: Vec<StoredCell>,
}

/// What a state file holds after its repositories.
#[derive(Serialize, Deserialize)]
struct StateTail {
    /// Id (xxh3-128, little-endian) and seconds since the epoch of events inside the window.
    recent_ids: Vec<([u8; 16], i64)>,
    inputs: Vec<ConsumedInput>,
}

/// The state, in memory.
#[derive(Debug)]
pub struct RunState {
    pub metrics: MetricTable,
    /// The repository ledger as loaded; a run takes it, and writes the ledger it leaves.
    pub ledger: PriorLedger,
    /// Ids and times of recent de-duplicated events.
    pub recent_ids: Vec<(u128, i64)>,
    pub inputs: Vec<ConsumedInput>,
    /// Loaded from regtally 0.3's file: the next write replaces it.
    pub legacy: bool,
    /// GitLab ids per tracked event and week, kept by nights run with `--redis`.
    pub gitlab_weeks: WeekIds,
}

/// One event's week of GitLab ids, as the state keeps it after [`StateFile`] (a file written
/// before the Redis export ends without them).
#[derive(Serialize, Deserialize)]
struct StoredWeekIds {
    metric: String,
    /// The week's Monday, in days since 1970-01-01.
    start: i32,
    ids: Vec<u64>,
}

fn days_since_epoch(date: NaiveDate) -> i32 {
    (date - NaiveDate::default()).num_days() as i32
}

fn date_of_days(days: i32) -> Option<NaiveDate> {
    NaiveDate::default().checked_add_signed(chrono::TimeDelta::days(i64::from(days)))
}

impl RunState {
    /// The state of a folder that has none yet.
    pub fn empty(precision: u8, ledger: PriorLedger) -> RunState {
        RunState {
            metrics: MetricTable::new(precision),
            ledger,
            recent_ids: Vec::new(),
            inputs: Vec::new(),
            legacy: false,
            gitlab_weeks: WeekIds::default(),
        }
    }

    /// Reads the state of `dir`: its `regtally-state.bin.zst`, else regtally 0.3's
    /// `regtally-state.json.zst`; `Ok(None)` when the folder holds neither. With `precision`,
    /// a state of another precision is refused. Its repositories go into `ledger`. Every byte
    /// is checked: a damaged file is an error, never a panic.
    pub fn load(
        dir: &Path,
        precision: Option<u8>,
        ledger: PriorLedger,
    ) -> Result<Option<RunState>, StateError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::from_bytes(&path, &bytes, precision, ledger).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let legacy = dir.join(LEGACY_STATE_FILE);
                match std::fs::read(&legacy) {
                    Ok(bytes) => legacy::load(&legacy, &bytes, precision, ledger).map(Some),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StateError::Io {
                        path: legacy,
                        source,
                    }),
                }
            }
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Reads the bytes of a state file (zstd of [`MAGIC`] and postcard of [`StateHead`], the
    /// repositories and [`StateTail`]), its repositories into `ledger`.
    pub fn from_bytes(
        path: &Path,
        compressed: &[u8],
        precision: Option<u8>,
        mut ledger: PriorLedger,
    ) -> Result<RunState, StateError> {
        let not_state = not_state(path);
        let bytes = unzstd(compressed).map_err(|e| not_state(format!("not zstd: {e}")))?;
        let body = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| not_state("no regtally-state header".into()))?;
        // The version first, so that another version is named as such rather than misread.
        let (header, _): ((u32, String), _) =
            postcard::take_from_bytes(body).map_err(|e| not_state(e.to_string()))?;
        if header.0 != STATE_VERSION {
            return Err(StateError::Version {
                path: path.to_owned(),
                found: header.0,
                tool: header.1,
            });
        }
        let (file, rest): (StateHead, _) =
            postcard::take_from_bytes(body).map_err(|e| not_state(e.to_string()))?;
        let (repositories, mut rest): (usize, _) =
            postcard::take_from_bytes(rest).map_err(|e| not_state(e.to_string()))?;
        for _ in 0..repositories {
            let (r, after): (StoredRepository, _) =
                postcard::take_from_bytes(rest).map_err(|e| not_state(e.to_string()))?;
            rest = after;
            let last_applied = match r.last_applied {
                Some((secs, nanos)) if nanos >= 1_000_000_000 => {
                    return Err(not_state(format!("time {secs}.{nanos} is not a time")))
                }
                Some((secs, nanos)) => Some(Timestamp { secs, nanos }),
                None => None,
            };
            let entry = LedgerEntry {
                path: r.path,
                exists: r.exists,
                last_applied,
            };
            ledger.push(entry).map_err(|source| StateError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        let (tail, rest): (StateTail, _) =
            postcard::take_from_bytes(rest).map_err(|e| not_state(e.to_string()))?;
        let stored_weeks: Vec<StoredWeekIds> = match postcard::take_from_bytes(rest) {
            _ if rest.is_empty() => Vec::new(),
            Ok((weeks, [])) => weeks,
            Ok(_) => return Err(not_state("trailing bytes".into())),
            Err(e) => return Err(not_state(format!("GitLab ids: {e}"))),
        };
        let mut gitlab_weeks = WeekIds::default();
        for w in stored_weeks {
            let event = TrackedEvent::ALL
                .into_iter()
                .find(|t| t.metric_name() == w.metric)
                .ok_or_else(|| not_state(format!("GitLab ids of unknown metric {:?}", w.metric)))?;
            let start = date_of_days(w.start)
                .filter(|d| d.weekday() == chrono::Weekday::Mon)
                .ok_or_else(|| {
                    not_state(format!("GitLab ids of week {} are not of a week", w.start))
                })?;
            if !w.ids.is_sorted_by(|a, b| a < b) {
                return Err(not_state("GitLab ids are not sorted and distinct".into()));
            }
            gitlab_weeks.0.insert((event, start), w.ids);
        }
        let check = Checked::new(
            path,
            file.precision,
            precision,
            &file.hash,
            file.sketch_format,
        )?;
        let mut metrics = MetricTable::new(check.precision);
        for c in file.metrics {
            let start = date_of_days(c.start)
                .ok_or_else(|| not_state(format!("period start {} is out of range", c.start)))?;
            let hll_sketch = match c.hll_sketch {
                None => None,
                Some(b) => Some(
                    WarehouseSketch::from_bytes(&b)
                        .map_err(|e| not_state(format!("hll_sketch: {e}")))?,
                ),
            };
            check.add_cell(
                &mut metrics,
                &c.metric,
                &c.kind,
                start,
                &c.sketch,
                hll_sketch,
                c.events,
            )?;
        }
        Ok(RunState {
            metrics,
            ledger,
            recent_ids: tail
                .recent_ids
                .into_iter()
                .map(|(id, secs)| (u128::from_le_bytes(id), secs))
                .collect(),
            inputs: tail.inputs,
            legacy: false,
            gitlab_weeks,
        })
    }

    /// Keeps only the ids of events less than `window_days` older than the newest one, the
    /// newest taken no later than `not_after` (so that one event dated years ahead cannot push
    /// every other id out of the window).
    pub fn trim_ids(&mut self, window_days: u32, not_after: i64) {
        let Some(newest) = self.recent_ids.iter().map(|(_, t)| *t).max() else {
            return;
        };
        let newest = newest.min(not_after);
        let cutoff = newest - i64::from(window_days) * 86_400;
        self.recent_ids.retain(|(_, t)| *t >= cutoff);
        self.recent_ids.sort_unstable();
        self.recent_ids.dedup_by_key(|(id, _)| *id);
    }

    /// Writes the state file (`regtally-state.bin.zst`) to `w`, with the ledger the run left.
    pub fn write<W: Write>(
        &self,
        dedup_window_days: u32,
        ledger: &ReplayedLedger,
        w: W,
    ) -> anyhow::Result<()> {
        let head = StateHead {
            version: STATE_VERSION,
            written_by: env!("CARGO_PKG_VERSION").to_owned(),
            precision: self.metrics.precision(),
            hash: HASH_NAME.to_owned(),
            sketch_format: SKETCH_FORMAT_VERSION,
            dedup_window_days,
            metrics: self
                .metrics
                .cells()
                .map(|(metric, period, cell)| StoredCell {
                    metric: metric.to_owned(),
                    kind: period.kind.as_str().to_owned(),
                    start: days_since_epoch(period.start),
                    events: cell.events,
                    sketch: cell.sketch.clone().to_bytes(),
                    hll_sketch: cell.hll_sketch.as_ref().map(WarehouseSketch::to_bytes),
                })
                .collect(),
        };
        let tail = StateTail {
            recent_ids: self
                .recent_ids
                .iter()
                .map(|(id, t)| (id.to_le_bytes(), *t))
                .collect(),
            inputs: self.inputs.clone(),
        };
        let weeks: Vec<StoredWeekIds> = self
            .gitlab_weeks
            .0
            .iter()
            .map(|(&(event, start), ids)| StoredWeekIds {
                metric: event.metric_name().to_owned(),
                start: days_since_epoch(start),
                ids: ids.clone(),
            })
            .collect();
        let mut enc = zstd::stream::write::Encoder::new(w, 3)?;
        enc.write_all(MAGIC)?;
        enc.write_all(&postcard::to_allocvec(&head)?)?;
        enc.write_all(&postcard::to_allocvec(&ledger.entries_len())?)?;
        let mut buf = Vec::new();
        for e in ledger.entries()? {
            let e = e?;
            // A [`StoredRepository`]'s fields in order, the path lent: postcard writes a
            // struct as its fields, so these are its bytes.
            let stored = (
                e.path.as_str(),
                e.exists,
                e.last_applied.map(|t| (t.secs, t.nanos)),
            );
            buf.clear();
            buf = postcard::to_extend(&stored, buf)?;
            enc.write_all(&buf)?;
        }
        enc.write_all(&postcard::to_allocvec(&tail)?)?;
        if !weeks.is_empty() {
            enc.write_all(&postcard::to_allocvec(&weeks)?)?;
        }
        enc.finish()?;
        Ok(())
    }
}

/// Decompresses a whole state file, refusing to grow past [`MAX_STATE_BYTES`]: a small
/// hostile file must not expand into all of memory.
fn unzstd(compressed: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(compressed)?
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_STATE_BYTES {
        return Err(std::io::Error::other(format!(
            "decompresses to more than {MAX_STATE_BYTES} bytes"
        )));
    }
    Ok(out)
}

/// The largest state a file may decompress to (16 GiB).
const MAX_STATE_BYTES: u64 = 16 << 30;

/// The error for a file that is not a usable state, naming it: `not_state(path)(why)`.
fn not_state(path: &Path) -> impl Fn(String) -> StateError + '_ {
    move |why| StateError::NotState {
        path: path.to_owned(),
        why,
    }
}

/// What every version of the state is checked for before its cells are read.
struct Checked<'p> {
    path: &'p Path,
    precision: u8,
}

impl<'p> Checked<'p> {
    fn new(
        path: &'p Path,
        found: u8,
        wanted: Option<u8>,
        hash: &str,
        sketch_format: u8,
    ) -> Result<Checked<'p>, StateError> {
        let not_state = not_state(path);
        if !crate::aggregate::sketch::PRECISION_RANGE.contains(&found) {
            return Err(not_state(format!("precision {found} is out of range")));
        }
        let precision = wanted.unwrap_or(found);
        if found != precision {
            return Err(StateError::Precision {
                path: path.to_owned(),
                found,
                wanted: precision,
            });
        }
        if hash != HASH_NAME {
            return Err(StateError::Hash {
                path: path.to_owned(),
                found: hash.to_owned(),
            });
        }
        // Each sketch carries its own format byte and every earlier format is still read, so
        // a state written before the current sketch format loads, and is rewritten in it.
        if !(1..=SKETCH_FORMAT_VERSION).contains(&sketch_format) {
            return Err(not_state(format!(
                "sketch format {sketch_format} is not known to this release (it reads 1 to {SKETCH_FORMAT_VERSION})"
            )));
        }
        Ok(Checked { path, precision })
    }

    #[allow(clippy::too_many_arguments)]
    fn add_cell(
        &self,
        metrics: &mut MetricTable,
        metric: &str,
        kind: &str,
        start: NaiveDate,
        sketch: &[u8],
        hll_sketch: Option<WarehouseSketch>,
        events: u64,
    ) -> Result<(), StateError> {
        let not_state = not_state(self.path);
        let metric =
            known_metric(metric).ok_or_else(|| not_state(format!("unknown metric {metric:?}")))?;
        let period = Period::of_kind(kind, start)
            .ok_or_else(|| not_state(format!("unknown period kind {kind:?} or start {start}")))?;
        let sketch = UserSketch::from_bytes(sketch).map_err(|e| not_state(e.to_string()))?;
        let cell = TableCell {
            sketch,
            hll_sketch,
            events,
        };
        metrics
            .add_cell(metric, period, cell)
            .map_err(|e| not_state(e.to_string()))
    }
}

impl RunState {
    /// Moves the state on by a run that read everything cleanly: its metrics (taken out of
    /// its tally) merged in, the ledger it left, the ids of the window, and the inputs it
    /// consumed. `read` and `reports` are the run's inputs and how each was read, in the same
    /// order.
    pub fn absorb(
        &mut self,
        metrics: MetricTable,
        tally: &Tally,
        read: &[InputPath],
        selection: &InputSelection,
        window_days: u32,
        not_after: i64,
    ) -> anyhow::Result<()> {
        // A state is loaded only with this run's precision, so this does not fail.
        self.metrics
            .merge(metrics)
            .map_err(|e| anyhow::anyhow!("cannot merge this run into the state: {e}"))?;
        self.recent_ids
            .extend(tally.event_ids.iter().map(|(id, t)| (*id, t.secs)));
        self.trim_ids(window_days, not_after);
        self.record_consumed(read, &tally.inputs, &selection.modified);
        if let Some(redis) = &tally.redis {
            self.gitlab_weeks.merge(redis.weeks.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::classify::TrackedEvent;
    use crate::ledger::RepositoryLedger;

    /// The repository ledger of [`sample`].
    fn sample_ledger() -> RepositoryLedger {
        let mut ledger = RepositoryLedger::seeded(["g/known"]);
        ledger.learn_path(crate::keys::repository_key("g/r"), "g/r".into());
        ledger.push(
            crate::keys::repository_key("g/r"),
            Timestamp {
                secs: 1_609_750_000,
                nanos: 5,
            },
        );
        ledger
    }

    /// Writes `state` with `ledger` as the ledger its run left.
    fn write_to(state: &RunState, ledger: &RepositoryLedger, path: &Path) {
        let file = std::fs::File::create(path).unwrap();
        state
            .write(14, &ReplayedLedger::whole(ledger, true), file)
            .unwrap();
    }

    fn load(dir: &Path, precision: u8) -> Result<Option<RunState>, StateError> {
        RunState::load(dir, Some(precision), PriorLedger::new(None))
    }

    fn sample() -> RunState {
        let mut agg = Aggregate::default();
        agg.add(
            TrackedEvent::PushTag,
            NaiveDate::from_ymd_opt(2021, 1, 4).unwrap(),
            crate::keys::identity_hash("root"),
        );
        RunState {
            metrics: agg.into_table(14),
            ledger: PriorLedger::of(&sample_ledger()),
            recent_ids: vec![(7, 100), (u128::MAX, 200)],
            inputs: vec![ConsumedInput {
                path: "logs/a.gz".into(),
                size: 10,
                hash: "00".repeat(16),
                modified: Some("1.000000002".into()),
            }],
            legacy: false,
            gitlab_weeks: WeekIds(
                [(
                    (TrackedEvent::PushTag, crate::test_support::d(2021, 1, 4)),
                    vec![1, 7, 42],
                )]
                .into(),
            ),
        }
    }

    /// `state` written to a folder and loaded back.
    fn written_and_loaded(state: &RunState) -> RunState {
        let dir = tempfile::tempdir().unwrap();
        write_to(state, &sample_ledger(), &dir.path().join(STATE_FILE));
        load(dir.path(), 14).unwrap().unwrap()
    }

    /// The file is written in pieces, its repositories one at a time, and holds the bytes
    /// the one struct of earlier releases held: states written before and after read alike.
    #[test]
    fn the_file_holds_the_bytes_of_one_struct() {
        #[derive(Serialize)]
        struct StateFile {
            head: StateHead,
            repositories: Vec<StoredRepository>,
            tail: StateTail,
        }
        let state = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        write_to(&state, &sample_ledger(), &path);
        let written = unzstd(&std::fs::read(&path).unwrap()).unwrap();
        let back = load(dir.path(), 14).unwrap().unwrap();
        let whole = StateFile {
            head: StateHead {
                version: STATE_VERSION,
                written_by: env!("CARGO_PKG_VERSION").to_owned(),
                precision: 14,
                hash: HASH_NAME.to_owned(),
                sketch_format: SKETCH_FORMAT_VERSION,
                dedup_window_days: 14,
                metrics: postcard::take_from_bytes::<StateHead>(&written[MAGIC.len()..])
                    .unwrap()
                    .0
                    .metrics,
            },
            repositories: sample_ledger()
                .entries()
                .into_iter()
                .map(|e| StoredRepository {
                    path: e.path,
                    exists: e.exists,
                    last_applied: e.last_applied.map(|t| (t.secs, t.nanos)),
                })
                .collect(),
            tail: StateTail {
                recent_ids: state
                    .recent_ids
                    .iter()
                    .map(|(id, t)| (id.to_le_bytes(), *t))
                    .collect(),
                inputs: state.inputs.clone(),
            },
        };
        let mut want = MAGIC.to_vec();
        want.extend(postcard::to_allocvec(&whole).unwrap());
        assert!(written.starts_with(&want), "the layout changed");
        assert_eq!(back.ledger.len(), 2);
    }

    #[test]
    fn state_round_trips() {
        let state = sample();
        let back = written_and_loaded(&state);
        assert_eq!(back.ledger.entries(), sample_ledger().entries());
        assert_eq!(back.recent_ids, state.recent_ids);
        assert_eq!(back.inputs, state.inputs);
        assert_eq!(back.gitlab_weeks, state.gitlab_weeks);
        assert!(!back.gitlab_weeks.0.is_empty());
        // A state without GitLab ids ends where they would start, and loads with none.
        let mut without = sample();
        without.gitlab_weeks = WeekIds::default();
        assert!(written_and_loaded(&without).gitlab_weeks.0.is_empty());
        let (mut a, mut b) = (state.metrics.into_rows(), back.metrics.into_rows());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            assert_eq!(
                (x.metric, x.period, x.events),
                (y.metric, y.period, y.events)
            );
            assert!(x.sketch.to_bytes() == y.sketch.to_bytes());
        }
    }

    #[test]
    fn missing_state_is_none_and_wrong_states_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), 14).unwrap().is_none());
        let path = dir.path().join(STATE_FILE);
        write_to(&sample(), &sample_ledger(), &path);
        assert!(matches!(
            load(dir.path(), 12),
            Err(StateError::Precision {
                found: 14,
                wanted: 12,
                ..
            })
        ));
        let mut other = MAGIC.to_vec();
        other.extend(postcard::to_allocvec(&(99u32, "9.9.9")).unwrap());
        std::fs::write(&path, zstd::encode_all(&other[..], 3).unwrap()).unwrap();
        let err = load(dir.path(), 14).unwrap_err();
        assert!(
            matches!(err, StateError::Version { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("9.9.9"));
        assert!(err.to_string().contains("Rebuild the state"));
        std::fs::write(&path, b"plain text").unwrap();
        assert!(matches!(
            load(dir.path(), 14),
            Err(StateError::NotState { .. })
        ));
    }

    /// Version 1 of `sample()`, as regtally 0.3 wrote it (JSON, format 1 or 2 sketches).
    fn version_1_json(state: &RunState, sketch_format: u8) -> serde_json::Value {
        let metrics: Vec<serde_json::Value> = state
            .metrics
            .cells()
            .map(|(metric, period, cell)| {
                let mut sketch = cell.sketch.clone();
                let bytes = if sketch_format == 1 {
                    sketch.to_bytes_v1_for_tests()
                } else {
                    sketch.to_bytes()
                };
                serde_json::json!({
                    "metric": metric, "kind": period.kind.as_str(), "start": period.start,
                    "events": cell.events, "sketch": hex::encode(&bytes),
                })
            })
            .collect();
        serde_json::json!({
            "format": "regtally-state", "version": 1, "written_by": "0.3.0", "precision": 14,
            "hash": HASH_NAME, "sketch_format": sketch_format, "dedup_window_days": 14,
            "metrics": metrics,
            "repositories": [
                {"path": "g/known", "exists": true, "last_applied": null},
                {"path": "g/r", "exists": true, "last_applied": "2021-01-04T08:46:40.000000005Z"},
            ],
            "recent_ids": [[format!("{:032x}", 7), 100], [format!("{:032x}", u128::MAX), 200]],
            "inputs": [{"path": "logs/a.gz", "size": 10, "hash": "00".repeat(16), "modified": "1.000000002"}],
        })
    }

    /// A state regtally 0.3 wrote (version 1, with format 1 or 2 sketches) still loads, with
    /// no `hll_sketch` for its cells; a version 1 file that is not a state is refused.
    #[test]
    fn a_version_1_state_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEGACY_STATE_FILE);
        let state = sample();
        for format in [1, 2] {
            let text = serde_json::to_vec(&version_1_json(&state, format)).unwrap();
            std::fs::write(&path, zstd::encode_all(&text[..], 3).unwrap()).unwrap();
            let back = load(dir.path(), 14).unwrap().unwrap();
            assert!(back.legacy);
            assert_eq!(back.ledger.entries(), sample_ledger().entries());
            assert_eq!(back.recent_ids, state.recent_ids);
            assert_eq!(back.inputs, state.inputs);
            let (mut a, mut b) = (state.metrics.clone().into_rows(), back.metrics.into_rows());
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter_mut().zip(b.iter_mut()) {
                assert!(x.sketch.to_bytes() == y.sketch.to_bytes());
                assert!(y.events == 0 || y.hll_sketch.is_none());
            }
        }
        let mut json = version_1_json(&state, 3);
        let text = serde_json::to_vec(&json).unwrap();
        std::fs::write(&path, zstd::encode_all(&text[..], 3).unwrap()).unwrap();
        let err = load(dir.path(), 14).unwrap_err();
        assert!(err.to_string().contains("sketch format 3"), "{err}");
        // The year-0 time 0.3 wrote and could not read back is refused, with how to rebuild.
        json = version_1_json(&state, 2);
        json["repositories"][1]["last_applied"] = "-0001-12-31T23:30:00Z".into();
        let text = serde_json::to_vec(&json).unwrap();
        std::fs::write(&path, zstd::encode_all(&text[..], 3).unwrap()).unwrap();
        let err = load(dir.path(), 14).unwrap_err();
        assert!(err.to_string().contains("Rebuild the state"), "{err}");
        // The header a migration leaves, without the new file beside it.
        std::fs::write(&path, legacy_moved_header()).unwrap();
        let err = load(dir.path(), 14).unwrap_err();
        assert!(err.to_string().contains("which is missing"), "{err}");
        // The new file wins over the old one.
        write_to(&sample(), &sample_ledger(), &dir.path().join(STATE_FILE));
        assert!(!load(dir.path(), 14).unwrap().unwrap().legacy);
    }

    /// Every time a valid event can carry round-trips, year 0 included.
    #[test]
    fn extreme_times_and_ids_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = sample();
        let mut ledger = sample_ledger();
        let key = crate::keys::repository_key("g/old");
        ledger.learn_path(key, "g/old".into());
        let year_0 = parse_rfc3339("0000-01-01T00:30:00+01:00").unwrap();
        ledger.push(key, year_0);
        state.recent_ids.push((u128::MAX - 1, year_0.secs));
        write_to(&state, &ledger, &dir.path().join(STATE_FILE));
        let back = load(dir.path(), 14).unwrap().unwrap();
        assert_eq!(back.ledger.entries(), ledger.entries());
        assert_eq!(back.recent_ids, state.recent_ids);
    }

    #[test]
    fn the_id_window_keeps_recent_ids_only() {
        let mut s = RunState::empty(14, PriorLedger::default());
        s.recent_ids = vec![(1, 0), (2, 86_400 * 10), (3, 86_400 * 20), (3, 86_400 * 20)];
        s.trim_ids(14, i64::MAX);
        assert_eq!(s.recent_ids, [(2, 86_400 * 10), (3, 86_400 * 20)]);
        // An event far in the future does not move the window past today.
        s.recent_ids.push((4, 86_400 * 9_000));
        s.trim_ids(5, 86_400 * 21);
        assert_eq!(s.recent_ids, [(3, 86_400 * 20), (4, 86_400 * 9_000)]);
    }
}
