//! Run state (`run --state DIR`): what a later run needs to continue exactly where this one
//! stopped, kept in one file so that it is replaced in one rename.
//!
//! The file is zstd-compressed JSON: the sketches and exact counts per metric and period, the
//! repository ledger with the time of the last event applied to each repository, the ids of
//! recent events (a window of event time) for de-duplication, and the inputs already consumed.

use crate::aggregate::{known_metric, MetricTable};
use crate::ledger::{LedgerEntry, RepositoryLedger};
use crate::period::Period;
use crate::pipeline::{InputReport, Tally};
use crate::read::InputPath;
use crate::sketch::{UserSketch, HASH_NAME, SKETCH_FORMAT_VERSION};
use crate::timestamp::{parse_rfc3339, Timestamp};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The state file's name inside the state folder.
pub const STATE_FILE: &str = "regtally-state.json.zst";

/// Version of the state file's layout and meaning; a state of another version is refused.
pub const STATE_VERSION: u32 = 1;

const STATE_FORMAT: &str = "regtally-state";

/// Why a state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot read the state: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a regtally state file ({why})")]
    NotState { path: PathBuf, why: String },
    #[error("{path}: state format version {found} was written by regtally {tool}; this release reads version {STATE_VERSION} only. Rebuild the state from the archived logs (see the README)")]
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

/// An input a state has consumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumedInput {
    /// The file's canonical path (earlier releases recorded the path as it was named).
    pub path: String,
    pub size: u64,
    /// xxh3-128 of the file's bytes, as 32 hex digits.
    pub hash: String,
    /// The file's modification time when it was read (`seconds.nanoseconds` since the epoch):
    /// a file with the same path, size and time is skipped without hashing it again.
    #[serde(default)]
    pub modified: Option<String>,
}

/// A file's modification time as [`ConsumedInput::modified`] stores it.
pub fn modified_stamp(meta: &std::fs::Metadata) -> Option<String> {
    let t = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{}.{:09}", t.as_secs(), t.subsec_nanos()))
}

#[derive(Serialize, Deserialize)]
struct StoredCell {
    metric: String,
    kind: String,
    start: NaiveDate,
    events: u64,
    /// The sketch's versioned bytes (as in `aggregates.parquet`), in hex.
    sketch: String,
}

#[derive(Serialize, Deserialize)]
struct StoredRepository {
    path: String,
    exists: bool,
    last_applied: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    written_by: String,
    precision: u8,
    hash: String,
    sketch_format: u8,
    dedup_window_days: u32,
    metrics: Vec<StoredCell>,
    repositories: Vec<StoredRepository>,
    /// `[id hash in hex, seconds since the epoch]` of events inside the window.
    recent_ids: Vec<(String, i64)>,
    inputs: Vec<ConsumedInput>,
}

/// The state, in memory.
#[derive(Clone, Debug)]
pub struct RunState {
    pub metrics: MetricTable,
    pub ledger: RepositoryLedger,
    /// Ids and times of recent de-duplicated events.
    pub recent_ids: Vec<(u128, i64)>,
    pub inputs: Vec<ConsumedInput>,
}

impl RunState {
    /// The state of a folder that has none yet.
    pub fn empty(precision: u8, ledger: RepositoryLedger) -> RunState {
        RunState {
            metrics: MetricTable::new(precision),
            ledger,
            recent_ids: Vec::new(),
            inputs: Vec::new(),
        }
    }

    /// Reads `dir/regtally-state.json.zst`; `Ok(None)` when the folder holds no state yet.
    /// With `precision`, a state of another precision is refused.
    pub fn load(dir: &Path, precision: Option<u8>) -> Result<Option<RunState>, StateError> {
        let path = dir.join(STATE_FILE);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let not_state = |why: String| StateError::NotState {
            path: path.clone(),
            why,
        };
        let mut text = Vec::new();
        zstd::stream::read::Decoder::new(file)
            .and_then(|mut d| d.read_to_end(&mut text))
            .map_err(|e| not_state(format!("not zstd: {e}")))?;
        // The header first, so that another version is named as such rather than misread.
        #[derive(Deserialize)]
        struct Header {
            format: String,
            version: u32,
            written_by: String,
        }
        let header: Header = serde_json::from_slice(&text).map_err(|e| not_state(e.to_string()))?;
        if header.format != STATE_FORMAT {
            return Err(not_state(format!("format is {:?}", header.format)));
        }
        if header.version != STATE_VERSION {
            return Err(StateError::Version {
                path: path.clone(),
                found: header.version,
                tool: header.written_by,
            });
        }
        let file: StateFile =
            serde_json::from_slice(&text).map_err(|e| not_state(e.to_string()))?;
        if !crate::sketch::PRECISION_RANGE.contains(&file.precision) {
            return Err(not_state(format!(
                "precision {} is out of range",
                file.precision
            )));
        }
        let precision = precision.unwrap_or(file.precision);
        if file.precision != precision {
            return Err(StateError::Precision {
                path: path.clone(),
                found: file.precision,
                wanted: precision,
            });
        }
        if file.hash != HASH_NAME {
            return Err(StateError::Hash {
                path: path.clone(),
                found: file.hash,
            });
        }
        // Each sketch carries its own format byte and every earlier format is still read, so
        // a state written before the current sketch format loads, and is rewritten in it.
        if !(1..=SKETCH_FORMAT_VERSION).contains(&file.sketch_format) {
            return Err(not_state(format!(
                "sketch format {} is not known to this release (it reads 1 to {SKETCH_FORMAT_VERSION})",
                file.sketch_format
            )));
        }
        let mut metrics = MetricTable::new(precision);
        for c in file.metrics {
            let metric = known_metric(&c.metric)
                .ok_or_else(|| not_state(format!("unknown metric {:?}", c.metric)))?;
            let period = Period::of_kind(&c.kind, c.start)
                .ok_or_else(|| not_state(format!("unknown period kind {:?}", c.kind)))?;
            let bytes = from_hex(&c.sketch).ok_or_else(|| not_state("sketch is not hex".into()))?;
            let sketch = UserSketch::from_bytes(&bytes).map_err(|e| not_state(e.to_string()))?;
            metrics
                .add_cell(metric, period, sketch, c.events)
                .map_err(|e| not_state(e.to_string()))?;
        }
        let mut entries = Vec::with_capacity(file.repositories.len());
        for r in file.repositories {
            let last_applied = match r.last_applied {
                None => None,
                Some(t) => Some(parse_rfc3339(&t).map_err(|e| not_state(format!("{t:?}: {e}")))?),
            };
            entries.push(LedgerEntry {
                path: r.path,
                exists: r.exists,
                last_applied,
            });
        }
        let mut recent_ids = Vec::with_capacity(file.recent_ids.len());
        for (hex, secs) in file.recent_ids {
            let id =
                u128::from_str_radix(&hex, 16).map_err(|_| not_state(format!("bad id {hex:?}")))?;
            recent_ids.push((id, secs));
        }
        Ok(Some(RunState {
            metrics,
            ledger: RepositoryLedger::from_entries(entries),
            recent_ids,
            inputs: file.inputs,
        }))
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

    /// Writes the state (zstd-compressed JSON) to `w`.
    pub fn write<W: Write>(&self, dedup_window_days: u32, w: W) -> anyhow::Result<()> {
        let file = StateFile {
            format: STATE_FORMAT.to_owned(),
            version: STATE_VERSION,
            written_by: env!("CARGO_PKG_VERSION").to_owned(),
            precision: self.metrics.precision(),
            hash: HASH_NAME.to_owned(),
            sketch_format: SKETCH_FORMAT_VERSION,
            dedup_window_days,
            metrics: self
                .metrics
                .cells()
                .map(|(metric, period, sketch, events)| StoredCell {
                    metric: metric.to_owned(),
                    kind: period.kind.as_str().to_owned(),
                    start: period.start,
                    events,
                    sketch: to_hex(&sketch.clone().to_bytes()),
                })
                .collect(),
            repositories: self
                .ledger
                .entries()
                .into_iter()
                .map(|e| StoredRepository {
                    path: e.path,
                    exists: e.exists,
                    last_applied: e.last_applied.map(Timestamp::to_rfc3339),
                })
                .collect(),
            recent_ids: self
                .recent_ids
                .iter()
                .map(|(id, t)| (format!("{id:032x}"), *t))
                .collect(),
            inputs: self.inputs.clone(),
        };
        let mut enc = zstd::stream::write::Encoder::new(w, 3)?;
        serde_json::to_writer(&mut enc, &file)?;
        enc.finish()?;
        Ok(())
    }
}

/// An input the state said not to read again, and why.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedInput {
    pub path: String,
    pub reason: String,
}

/// What a nightly run reads: the inputs the state has not consumed.
#[derive(Debug, Default)]
pub struct InputSelection {
    pub read: Vec<InputPath>,
    pub skipped: Vec<SkippedInput>,
    /// Modification times of the files looked at (read or skipped), by canonical path, taken
    /// before reading them.
    pub modified: HashMap<PathBuf, String>,
}

/// A consumed input's path, as the manifest records it: the canonical path. Entries written by
/// earlier releases hold the path as it was named; those are resolved from the current folder.
fn manifest_key(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path))
}

impl RunState {
    /// Splits `inputs` into those to read and those already consumed: same canonical path and
    /// size, and either the recorded modification time (no hashing: a nightly run must not
    /// re-read the archive) or, failing that, the recorded content hash. Standard input, and a
    /// file that cannot be looked at now (it fails when read), are always read.
    pub fn select_inputs(&self, inputs: Vec<InputPath>) -> InputSelection {
        let consumed: HashMap<PathBuf, &ConsumedInput> = self
            .inputs
            .iter()
            .map(|c| (manifest_key(&c.path), c))
            .collect();
        let mut selection = InputSelection::default();
        for input in inputs {
            let InputPath::File { canonical, name } = &input else {
                selection.read.push(input);
                continue;
            };
            let Ok(meta) = std::fs::metadata(canonical) else {
                selection.read.push(input);
                continue;
            };
            let stamp = modified_stamp(&meta);
            let reason = consumed
                .get(canonical)
                .filter(|c| c.size == meta.len())
                .and_then(|c| already_consumed(canonical, c, stamp.as_deref()));
            if let Some(stamp) = stamp {
                selection.modified.insert(canonical.clone(), stamp);
            }
            match reason {
                Some(reason) => selection.skipped.push(SkippedInput {
                    path: name.clone(),
                    reason,
                }),
                None => selection.read.push(input),
            }
        }
        selection
    }

    /// Moves the state on by a run that read everything cleanly: its metrics merged in, the
    /// ledger it left, the ids of the window, and the inputs it consumed. `read` and `reports`
    /// are the run's inputs and how each was read, in the same order.
    pub fn absorb(
        &mut self,
        tally: &Tally,
        read: &[InputPath],
        selection: &InputSelection,
        window_days: u32,
        not_after: i64,
    ) -> anyhow::Result<()> {
        // A state is loaded only with this run's precision, so this does not fail.
        self.metrics
            .merge(tally.metrics.clone())
            .map_err(|e| anyhow::anyhow!("cannot merge this run into the state: {e}"))?;
        self.ledger = tally.ledger.clone();
        self.recent_ids
            .extend(tally.event_ids.iter().map(|(id, t)| (*id, t.secs)));
        self.trim_ids(window_days, not_after);
        self.record_consumed(read, &tally.inputs, &selection.modified);
        Ok(())
    }

    /// Adds the inputs this run read completely to the manifest (a changed file replaces its
    /// old entry), and notes the current modification time of inputs skipped by their hash,
    /// so that a touched file is hashed once, not every night.
    fn record_consumed(
        &mut self,
        read: &[InputPath],
        reports: &[InputReport],
        modified: &HashMap<PathBuf, String>,
    ) {
        let mut entries: HashMap<PathBuf, ConsumedInput> = std::mem::take(&mut self.inputs)
            .into_iter()
            .map(|c| (manifest_key(&c.path), c))
            .collect();
        for (input, report) in read.iter().zip(reports) {
            let (InputPath::File { canonical, .. }, Some(hash)) = (input, &report.content_hash)
            else {
                continue;
            };
            entries.insert(
                canonical.clone(),
                ConsumedInput {
                    path: String::new(),
                    size: report.bytes,
                    hash: hash.clone(),
                    modified: None,
                },
            );
        }
        // Every input looked at this run, read or skipped, records the time it was seen with.
        self.inputs = entries
            .into_iter()
            .map(|(key, mut entry)| {
                if let Some(stamp) = modified.get(&key) {
                    entry.modified = Some(stamp.clone());
                }
                entry.path = key.to_string_lossy().into_owned();
                entry
            })
            .collect();
        self.inputs.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

/// Why a consumed input of the same path and size need not be read again, if it need not.
fn already_consumed(path: &Path, entry: &ConsumedInput, modified: Option<&str>) -> Option<String> {
    if modified.is_some() && entry.modified.as_deref() == modified {
        return Some("already consumed: same path, size and modification time".into());
    }
    let (_, hash) = hash_file(path).ok()?;
    (hash == entry.hash).then(|| "already consumed: same path, size and content hash".to_owned())
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The size and xxh3-128 (32 hex digits) of a file's bytes.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, format!("{:032x}", hasher.digest128())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::classify::TrackedEvent;

    fn sample() -> RunState {
        let mut agg = Aggregate::default();
        agg.add(
            TrackedEvent::PushTag,
            NaiveDate::from_ymd_opt(2021, 1, 4).unwrap(),
            crate::sketch::identity_hash("root"),
        );
        let mut ledger = RepositoryLedger::seeded(["g/known"]);
        ledger.learn_path(crate::ledger::repository_key("g/r"), "g/r".into());
        ledger.push(
            crate::ledger::repository_key("g/r"),
            Timestamp {
                secs: 1_609_750_000,
                nanos: 5,
            },
        );
        RunState {
            metrics: agg.into_table(14),
            ledger,
            recent_ids: vec![(7, 100), (u128::MAX, 200)],
            inputs: vec![ConsumedInput {
                path: "logs/a.gz".into(),
                size: 10,
                hash: "00".repeat(16),
                modified: Some("1.000000002".into()),
            }],
        }
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = sample();
        state
            .write(
                14,
                std::fs::File::create(dir.path().join(STATE_FILE)).unwrap(),
            )
            .unwrap();
        let back = RunState::load(dir.path(), Some(14)).unwrap().unwrap();
        assert_eq!(back.ledger.entries(), state.ledger.entries());
        assert_eq!(back.recent_ids, state.recent_ids);
        assert_eq!(back.inputs, state.inputs);
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
        assert!(RunState::load(dir.path(), Some(14)).unwrap().is_none());
        let path = dir.path().join(STATE_FILE);
        sample()
            .write(14, std::fs::File::create(&path).unwrap())
            .unwrap();
        assert!(matches!(
            RunState::load(dir.path(), Some(12)),
            Err(StateError::Precision {
                found: 14,
                wanted: 12,
                ..
            })
        ));
        let other = br#"{"format":"regtally-state","version":99,"written_by":"9.9.9"}"#;
        std::fs::write(&path, zstd::encode_all(&other[..], 3).unwrap()).unwrap();
        let err = RunState::load(dir.path(), Some(14)).unwrap_err();
        assert!(
            matches!(err, StateError::Version { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("9.9.9"));
        std::fs::write(&path, b"plain text").unwrap();
        assert!(matches!(
            RunState::load(dir.path(), Some(14)),
            Err(StateError::NotState { .. })
        ));
    }

    /// A state written by a release whose sketches were format 1 (serde_json) still loads.
    #[test]
    fn a_state_with_format_1_sketches_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let state = sample();
        let mut bytes = Vec::new();
        state.write(14, &mut bytes).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&zstd::decode_all(&bytes[..]).unwrap()).unwrap();
        json["sketch_format"] = 1.into();
        for cell in json["metrics"].as_array_mut().unwrap() {
            let v2 = from_hex(cell["sketch"].as_str().unwrap()).unwrap();
            let mut sketch = UserSketch::from_bytes(&v2).unwrap();
            cell["sketch"] = to_hex(&sketch.to_bytes_v1_for_tests()).into();
        }
        let text = serde_json::to_vec(&json).unwrap();
        std::fs::write(&path, zstd::encode_all(&text[..], 3).unwrap()).unwrap();
        let back = RunState::load(dir.path(), Some(14)).unwrap().unwrap();
        let (mut a, mut b) = (state.metrics.into_rows(), back.metrics.into_rows());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            assert!(x.sketch.to_bytes() == y.sketch.to_bytes());
        }
        json["sketch_format"] = 3.into();
        let text = serde_json::to_vec(&json).unwrap();
        std::fs::write(&path, zstd::encode_all(&text[..], 3).unwrap()).unwrap();
        let err = RunState::load(dir.path(), Some(14)).unwrap_err();
        assert!(err.to_string().contains("sketch format 3"), "{err}");
    }

    #[test]
    fn the_id_window_keeps_recent_ids_only() {
        let mut s = RunState::empty(14, RepositoryLedger::default());
        s.recent_ids = vec![(1, 0), (2, 86_400 * 10), (3, 86_400 * 20), (3, 86_400 * 20)];
        s.trim_ids(14, i64::MAX);
        assert_eq!(s.recent_ids, [(2, 86_400 * 10), (3, 86_400 * 20)]);
        // An event far in the future does not move the window past today.
        s.recent_ids.push((4, 86_400 * 9_000));
        s.trim_ids(5, 86_400 * 21);
        assert_eq!(s.recent_ids, [(3, 86_400 * 20), (4, 86_400 * 9_000)]);
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
