//! The Redis export (`run --redis DIR`): for every tracked event and ISO week with counted
//! users, the dense Redis HyperLogLog of exactly their GitLab ids, in a file named after
//! GitLab's key, and `manifest.json` listing key, week and member count; `regtally
//! redis-merge` reads them back.

pub mod connect;
pub mod hll;

use super::StagedOutputs;
use crate::aggregate::WeekIds;
use crate::classify::TrackedEvent;
use crate::output::redis::hll::RedisHll;
use anyhow::{Context, Result};
use chrono::{Datelike, Days, NaiveDate};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// GitLab's key today: `{hll_counters}_i_container_registry_push_tag_user-2023-04`.
pub const DEFAULT_KEY_FORMAT: &str = "{hll_counters}_<event>-<week>";
/// The key of older GitLab releases: `{i_container_registry_push_tag_user}-2023-04`.
pub const OLD_KEY_FORMAT: &str = "{<event>}-<week>";
/// The manifest's name.
pub const MANIFEST: &str = "manifest.json";
/// How long GitLab keeps a week's key: 6 weeks (counted here from the week's end).
pub const KEY_WEEKS: u64 = 6;

/// Checks a `--redis-key-format`: it must name the event and the week.
pub fn check_key_format(format: &str) -> Result<(), String> {
    if format.contains("<event>") && format.contains("<week>") {
        Ok(())
    } else {
        Err(format!(
            "--redis-key-format {format:?} must hold <event> and <week> (GitLab's: {DEFAULT_KEY_FORMAT:?}, older releases: {OLD_KEY_FORMAT:?})"
        ))
    }
}

/// The key of one event's week: `<event>` is the metric name, `<week>` the ISO week as GitLab
/// writes it (`%G-%V`).
pub fn key_of(format: &str, event: TrackedEvent, week_start: NaiveDate) -> String {
    let iso = week_start.iso_week();
    format
        .replace("<event>", event.metric_name())
        .replace("<week>", &format!("{:04}-{:02}", iso.year(), iso.week()))
}

/// A key as a file name: `/` and a leading `.` are escaped, so that every key is one plain
/// file in the folder.
fn file_of(key: &str) -> String {
    let mut name = key.replace('%', "%25").replace('/', "%2F");
    if name.starts_with('.') {
        name.replace_range(..1, "%2E");
    }
    name + ".hll"
}

/// One key of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestKey {
    pub key: String,
    pub file: String,
    pub event: String,
    /// ISO week, `2023-W04`.
    pub week: String,
    /// Its Monday, and the Monday after (exclusive).
    pub week_start: NaiveDate,
    pub week_end: NaiveDate,
    /// GitLab ids in the value.
    pub members: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `redis-hll-dense`: each file is a value for Redis's `SET`.
    pub format: String,
    pub key_format: String,
    pub keys: Vec<ManifestKey>,
}

pub const MANIFEST_FORMAT: &str = "redis-hll-dense";

/// What was staged.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisReport {
    pub dir: String,
    pub keys: u64,
}

/// Stages one file per event and week of `weeks` in `dir` and the manifest; the `.hll` files
/// already in `dir` that this run does not write are removed when the outputs are committed.
pub fn stage_redis(
    weeks: &WeekIds,
    dir: &Path,
    key_format: &str,
    staged: &mut StagedOutputs,
) -> Result<RedisReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let entries: Vec<(ManifestKey, Vec<u8>)> = weeks
        .0
        .par_iter()
        .map(|(&(event, week_start), ids)| {
            let key = key_of(key_format, event, week_start);
            let iso = week_start.iso_week();
            let entry = ManifestKey {
                file: file_of(&key),
                key,
                event: event.metric_name().to_owned(),
                week: format!("{:04}-W{:02}", iso.year(), iso.week()),
                week_start,
                week_end: week_start + Days::new(7),
                members: ids.len() as u64,
            };
            (entry, RedisHll::of_ids(ids.iter().copied()).to_dense())
        })
        .collect();
    let mut written: Vec<PathBuf> = Vec::with_capacity(entries.len());
    for (entry, value) in &entries {
        let path = dir.join(&entry.file);
        staged.stage(&path, |w| Ok(w.write_all(value)?))?;
        written.push(path);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        key_format: key_format.to_owned(),
        keys: entries.into_iter().map(|(e, _)| e).collect(),
    };
    staged.stage(&dir.join(MANIFEST), |w| {
        serde_json::to_writer_pretty(&mut *w, &manifest)?;
        Ok(w.write_all(b"\n")?)
    })?;
    for old in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = old.path();
        if path.extension().is_some_and(|e| e == "hll") && !written.contains(&path) {
            staged.remove_on_commit(path);
        }
    }
    Ok(RedisReport {
        dir: dir.display().to_string(),
        keys: manifest.keys.len() as u64,
    })
}

/// Reads `DIR/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a regtally Redis manifest", path.display()))?;
    anyhow::ensure!(
        manifest.format == MANIFEST_FORMAT,
        "{}: format {:?}, not {MANIFEST_FORMAT:?}",
        path.display(),
        manifest.format
    );
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::d;

    #[test]
    fn keys_are_gitlabs() {
        // 2023-01-23 is the Monday of ISO week 2023-W04; 2021-01-03 is still in 2020-W53.
        assert_eq!(
            key_of(DEFAULT_KEY_FORMAT, TrackedEvent::PushTag, d(2023, 1, 23)),
            "{hll_counters}_i_container_registry_push_tag_user-2023-04"
        );
        assert_eq!(
            key_of(OLD_KEY_FORMAT, TrackedEvent::PushTag, d(2023, 1, 23)),
            "{i_container_registry_push_tag_user}-2023-04"
        );
        assert_eq!(
            key_of(DEFAULT_KEY_FORMAT, TrackedEvent::DeleteTag, d(2020, 12, 28)),
            "{hll_counters}_i_container_registry_delete_tag_user-2020-53"
        );
        assert!(check_key_format("x-<week>").is_err());
        assert_eq!(file_of("a/b%c"), "a%2Fb%25c.hll");
        assert_eq!(file_of(".x"), "%2Ex.hll");
    }
}
