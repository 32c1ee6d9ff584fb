//! `summary.json` and the short human summary printed at the end of a run.

use crate::classify::{is_deploy_token_metric, metric_names, short_name};
use crate::output::events::DatasetReport;
use crate::output::redis::RedisReport;
use crate::output::service_ping::ServicePing;
use crate::read::InputReport;
use crate::state::SkippedInput;
use crate::tally::Tally;
use chrono::NaiveDate;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};

/// The flags that shaped a run, echoed in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct RunFlags {
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
    pub as_of: NaiveDate,
    pub precision: u8,
    pub max_bad_ratio: f64,
    pub keep_going: bool,
    /// The state folder, with `--state`.
    pub state: Option<std::path::PathBuf>,
    /// `--memory-limit`, in bytes.
    pub memory_limit: u64,
}

/// An input that could not be read completely.
#[derive(Serialize)]
struct Failure<'a> {
    file: &'a str,
    error: &'a str,
}

/// The accounting of SPEC §9.
#[derive(Serialize)]
struct Summary<'a> {
    tool: String,
    flags: &'a RunFlags,
    lines: u64,
    blank_lines: u64,
    malformed_lines: u64,
    invalid_events: u64,
    /// Of `invalid_events`, those stamped at a time no registry can have written.
    implausible_time_events: u64,
    events_seen: u64,
    duplicate_events: u64,
    out_of_range_events: u64,
    events_by_action: &'a BTreeMap<String, u64>,
    manifest_deletes: u64,
    counted_events: &'a BTreeMap<&'static str, u64>,
    first_event: Option<String>,
    last_event: Option<String>,
    bad_ratio: f64,
    late_events: u64,
    repositories: usize,
    inputs: &'a [InputReport],
    skipped_inputs: &'a [SkippedInput],
    failures: Vec<Failure<'a>>,
    /// The steps whose data passed `--memory-limit` and went to temporary files.
    spilled: &'a [&'static str],
    /// What `--events` wrote (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    events_dataset: Option<&'a DatasetReport>,
    /// With `--redis`: what was written, and counted users without a GitLab id (not exported).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_export: Option<&'a RedisReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_unresolved_users: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_unresolved_first: Option<&'a [String]>,
    elapsed_seconds: f64,
    /// Wall seconds of each step of the run, in order (the last is writing the outputs).
    phase_seconds: Vec<(&'static str, f64)>,
}

/// What the optional outputs (`--events`, `--redis`) wrote.
#[derive(Clone, Copy, Default)]
pub struct Written<'a> {
    pub events_dataset: Option<&'a DatasetReport>,
    pub redis_export: Option<&'a RedisReport>,
}

/// Writes `summary.json`.
pub fn write_summary<W: Write>(
    tally: &Tally,
    skipped: &[SkippedInput],
    flags: &RunFlags,
    written: Written<'_>,
    elapsed_seconds: f64,
    write_seconds: f64,
    w: &mut W,
) -> anyhow::Result<()> {
    let c = &tally.counts;
    let summary = Summary {
        tool: format!("regtally {}", env!("CARGO_PKG_VERSION")),
        flags,
        lines: c.lines,
        blank_lines: c.blank_lines,
        malformed_lines: c.malformed_lines,
        invalid_events: c.invalid_events,
        implausible_time_events: c.implausible_times,
        events_seen: c.events_seen,
        duplicate_events: tally.duplicate_events,
        out_of_range_events: tally.out_of_range_events,
        events_by_action: &tally.events_by_action,
        manifest_deletes: tally.manifest_deletes,
        counted_events: &tally.counted_events,
        first_event: tally.first_event.map(|t| t.to_rfc3339()),
        last_event: tally.last_event.map(|t| t.to_rfc3339()),
        bad_ratio: tally.bad_ratio(),
        late_events: tally.late_events,
        repositories: tally.ledger.existing_count(),
        inputs: &tally.inputs,
        skipped_inputs: skipped,
        failures: tally
            .failures()
            .map(|(file, error)| Failure { file, error })
            .collect(),
        spilled: &tally.spilled,
        events_dataset: written.events_dataset,
        redis_export: written.redis_export,
        redis_unresolved_users: tally.redis.as_ref().map(|r| r.unresolved_users),
        redis_unresolved_first: tally.redis.as_ref().map(|r| r.unresolved_names.as_slice()),
        elapsed_seconds,
        phase_seconds: tally
            .phase_seconds
            .iter()
            .copied()
            .chain([("write", write_seconds)])
            .collect(),
    };
    serde_json::to_writer_pretty(&mut *w, &summary)?;
    w.write_all(b"\n")?;
    Ok(())
}

/// The few lines a person at a terminal reads after a run.
pub fn print_human<W: Write>(
    tally: &Tally,
    skipped: &[SkippedInput],
    ping: &ServicePing,
    w: &mut W,
) -> io::Result<()> {
    let c = &tally.counts;
    let bytes: u64 = tally.inputs.iter().map(|i| i.bytes).sum();
    writeln!(
        w,
        "inputs: {} ({} bytes), lines: {}",
        tally.inputs.len(),
        bytes,
        c.lines
    )?;
    if !skipped.is_empty() {
        writeln!(
            w,
            "skipped: {} inputs already consumed by the state",
            skipped.len()
        )?;
    }
    if tally.late_events > 0 {
        writeln!(
            w,
            "late: {} pushes or repository deletes older than the state's last event for their repository",
            tally.late_events
        )?;
    }
    writeln!(
        w,
        "events: {} valid, {} duplicate, {} out of range; rejects: {} malformed lines, {} invalid events",
        c.events_seen, tally.duplicate_events, tally.out_of_range_events, c.malformed_lines, c.invalid_events
    )?;
    if c.implausible_times > 0 {
        writeln!(
            w,
            "of the invalid events, {} carry a time no registry can have written (see rejects.jsonl)",
            c.implausible_times
        )?;
    }
    let f = ping.time_frames;
    writeln!(
        w,
        "unique users           last week ({} to {})   last 28 days ({} to {})",
        f.weekly.start,
        f.weekly.end.pred_opt().unwrap_or(f.weekly.end),
        f.monthly.start,
        f.monthly.end.pred_opt().unwrap_or(f.monthly.end)
    )?;
    // Users' events and their total, then deploy tokens' (`_dt`).
    let (tokens, users): (Vec<&str>, Vec<&str>) =
        metric_names().partition(|m| is_deploy_token_metric(m));
    for metric in users.into_iter().chain(tokens) {
        let label = short_name(metric);
        writeln!(
            w,
            "  {label:<20} {:>12} {:>38}",
            ping.counter(metric, true),
            ping.counter(metric, false)
        )?;
    }
    if let Some(r) = tally.redis.as_ref().filter(|r| r.unresolved_users > 0) {
        writeln!(
            w,
            "redis: {} counted users have no GitLab id and are not exported (first: {})",
            r.unresolved_users,
            r.unresolved_names.join(", ")
        )?;
    }
    for (file, error) in tally.failures() {
        writeln!(w, "failed: {file}: {error}")?;
    }
    Ok(())
}
