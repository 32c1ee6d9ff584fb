//! `regtally run`: validate, read the logs, write the outputs (and the state, with `--state`).

use crate::aggregate::{MetricRow, MetricTable};
use crate::cli::{check_range, parse_date, parse_ratio, usage};
use crate::ledger::RepositoryLedger;
use crate::output::aggregates::{write_aggregates, AggregatesMetadata};
use crate::output::service_ping::ServicePing;
use crate::output::summary::{print_human, write_summary, RunFlags, SkippedInput};
use crate::output::{self, StagedOutputs};
use crate::pipeline::{self, Prior, RunConfig, Tally};
use crate::read::{discover_inputs, InputPath};
use crate::state::{hash_file, modified_stamp, ConsumedInput, RunState, STATE_FILE};
use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::Args;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Flags of `regtally run`, as typed.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Files, folders (read recursively, hidden entries skipped) or - for standard input.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output folder; created if missing.
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    /// Repositories that exist before the first event, one path a line (e.g. a previous run's repositories.txt).
    #[arg(long, value_name = "FILE")]
    pub known_repositories: Option<PathBuf>,
    /// Continue from the state in DIR (created if missing): skip inputs already consumed, and write outputs for the whole history.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// With --state: keep event ids for de-duplication this many days of event time.
    #[arg(long, value_name = "DAYS", default_value_t = 14, requires = "state")]
    pub dedup_window: u32,
    /// Count events from this UTC day on (YYYY-MM-DD, inclusive).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub since: Option<NaiveDate>,
    /// Count events before this UTC day (YYYY-MM-DD, exclusive).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub until: Option<NaiveDate>,
    /// Date the Service Ping is computed for (YYYY-MM-DD); default today, UTC.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub as_of: Option<NaiveDate>,
    /// HyperLogLog++ precision, 4 to 18.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u8).range(4..=18))]
    pub precision: u8,
    /// Worker threads; default: all cores.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Largest share of lines that may be malformed lines or invalid events, 0 to 1.
    #[arg(long, default_value_t = 0.05, value_name = "F", value_parser = parse_ratio)]
    pub max_bad_ratio: f64,
    /// Longest line read; longer lines are rejected without being held in memory.
    #[arg(long, default_value_t = 8 << 20, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    pub max_line_bytes: u64,
    /// Size of the pieces one input is cut into for parallel parsing (tuning and tests).
    #[arg(long, default_value_t = 4 << 20, hide = true, value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    pub chunk_bytes: u64,
    /// Write outputs even when an input failed or too many lines were bad (the exit status stays 1; the state is never written then).
    #[arg(long)]
    pub keep_going: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// A validated `run`: everything checked that can be checked without reading a log.
struct RunPlan {
    config: RunConfig,
    out: PathBuf,
    flags: RunFlags,
    threads: Option<usize>,
    /// Where the state lives, and what it held, with `--state`.
    state: Option<(PathBuf, RunState)>,
    /// The ledger to start from without `--state`.
    seed: RepositoryLedger,
    dedup_window: u32,
    skipped: Vec<SkippedInput>,
    /// Modification times of the inputs to read, taken before reading them.
    modified: HashMap<String, String>,
    /// The end of today (UTC), in seconds: the latest "newest event" the id window accepts.
    end_of_today: i64,
}

fn read_known_repositories(path: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()),
        Err(e) => usage(format!(
            "cannot read --known-repositories {}: {e}",
            path.display()
        )),
    }
}

impl RunPlan {
    fn from_args(args: RunArgs, today: NaiveDate) -> Result<RunPlan> {
        check_range(args.since, args.until)?;
        let mut inputs = match discover_inputs(&args.inputs) {
            Ok(i) => i,
            Err(e) => return usage(format!("cannot find inputs: {e}")),
        };
        if inputs.is_empty() {
            return usage("no input found: the folders given hold no files");
        }
        if inputs.contains(&InputPath::Stdin) && std::io::stdin().is_terminal() {
            return usage("- reads standard input, but standard input is a terminal");
        }
        let known = match &args.known_repositories {
            Some(path) => Some(read_known_repositories(path)?),
            None => None,
        };
        let mut seed = RepositoryLedger::seeded(known.iter().flatten().map(String::as_str));
        if let Err(e) = output::check_output_dir(&args.out) {
            return usage(format!("{e:#}"));
        }
        let mut skipped = Vec::new();
        let mut modified = HashMap::new();
        let state = match &args.state {
            None => None,
            Some(dir) => {
                if let Err(e) = output::check_output_dir(dir) {
                    return usage(format!("--state: {e:#}"));
                }
                let state = match RunState::load(dir, Some(args.precision)) {
                    Ok(Some(s)) => {
                        if known.is_some() {
                            return usage(format!(
                                "--known-repositories only seeds a new state; {} already holds the repository ledger",
                                dir.join(STATE_FILE).display()
                            ));
                        }
                        s
                    }
                    // A new state starts from the seed; `seed` is then left empty, unused.
                    Ok(None) => RunState::empty(args.precision, std::mem::take(&mut seed)),
                    Err(e) => return usage(e.to_string()),
                };
                inputs.retain(|input| {
                    let InputPath::File(path) = input else {
                        return true;
                    };
                    let name = input.display_name();
                    // An input that cannot be looked at now is read, and fails there if need be.
                    let Ok(meta) = std::fs::metadata(path) else {
                        return true;
                    };
                    let stamp = modified_stamp(&meta);
                    let consumed =
                        already_consumed(path, &name, meta.len(), stamp.as_deref(), &state.inputs);
                    if let Some(stamp) = stamp {
                        modified.insert(name.clone(), stamp);
                    }
                    match consumed {
                        Ok(Some(reason)) => {
                            skipped.push(SkippedInput { path: name, reason });
                            false
                        }
                        _ => true,
                    }
                });
                Some((dir.clone(), state))
            }
        };
        Ok(RunPlan {
            config: RunConfig {
                inputs,
                since: args.since,
                until: args.until,
                precision: args.precision,
                max_line_bytes: args.max_line_bytes as usize,
                chunk_bytes: args.chunk_bytes as usize,
                progress: !args.quiet && std::io::stderr().is_terminal(),
                keep_event_ids: state.is_some(),
            },
            out: args.out,
            flags: RunFlags {
                since: args.since,
                until: args.until,
                as_of: args.as_of.unwrap_or(today),
                precision: args.precision,
                max_bad_ratio: args.max_bad_ratio,
                keep_going: args.keep_going,
                state: args.state.clone(),
            },
            threads: args.threads.map(usize::from),
            state,
            seed,
            dedup_window: args.dedup_window,
            skipped,
            modified,
            end_of_today: (today + chrono::Days::new(1))
                .and_hms_opt(0, 0, 0)
                .map_or(i64::MAX, |t| t.and_utc().timestamp()),
        })
    }
}

/// Why an input need not be read again: the state consumed a file of this path and size, and
/// either of this modification time (no hashing: a nightly run must not re-read the archive)
/// or, failing that, of this content hash.
fn already_consumed(
    path: &Path,
    name: &str,
    size: u64,
    modified: Option<&str>,
    consumed: &[ConsumedInput],
) -> std::io::Result<Option<String>> {
    let Some(entry) = consumed.iter().find(|c| c.path == name && c.size == size) else {
        return Ok(None);
    };
    if modified.is_some() && entry.modified.as_deref() == modified {
        return Ok(Some(
            "already consumed: same path, size and modification time".into(),
        ));
    }
    let (_, hash) = hash_file(path)?;
    Ok((hash == entry.hash)
        .then(|| "already consumed: same path, size and content hash".to_owned()))
}

/// Adds the inputs this run read completely to a state's manifest (a changed file replaces
/// its old entry), and notes the current modification time of inputs skipped by their hash,
/// so that a touched file is hashed once, not every night.
fn record_consumed(
    consumed: &mut Vec<ConsumedInput>,
    tally: &Tally,
    modified: &HashMap<String, String>,
) {
    for input in &tally.inputs {
        let (Some(hash), false) = (&input.content_hash, input.path == "-") else {
            continue;
        };
        consumed.retain(|c| c.path != input.path);
        consumed.push(ConsumedInput {
            path: input.path.clone(),
            size: input.bytes,
            hash: hash.clone(),
            modified: None,
        });
    }
    // Every input looked at this run, read or skipped, records the time it was seen with.
    for entry in consumed.iter_mut() {
        if let Some(stamp) = modified.get(&entry.path) {
            entry.modified = Some(stamp.clone());
        }
    }
    consumed.sort_by(|a, b| a.path.cmp(&b.path));
}

/// `regtally run`.
pub fn run(args: RunArgs, today: NaiveDate) -> Result<ExitCode> {
    let plan = RunPlan::from_args(args, today)?;
    let started = Instant::now();
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = plan.threads {
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("cannot start worker threads")?;
    // Everything parallel in the run, writing included, stays within --threads.
    pool.install(|| run_planned(plan, started))
}

/// The run once its plan is checked, inside the worker pool.
fn run_planned(mut plan: RunPlan, started: Instant) -> Result<ExitCode> {
    let prior = match &mut plan.state {
        // The ledger comes back in the tally, moved on by this run.
        Some((_, state)) => Prior {
            ledger: std::mem::take(&mut state.ledger),
            seen_ids: state.recent_ids.iter().map(|(id, _)| *id).collect(),
        },
        None => Prior {
            ledger: std::mem::take(&mut plan.seed),
            seen_ids: Vec::new(),
        },
    };
    let mut tally = pipeline::run(&plan.config, prior);

    let mut problems: Vec<String> = tally
        .failures()
        .map(|(file, error)| format!("{file}: {error}"))
        .collect();
    if tally.bad_ratio() > plan.flags.max_bad_ratio {
        problems.push(format!(
            "{} malformed lines and {} invalid events in {} lines: ratio {:.4} is over --max-bad-ratio {} (see the first rejects above or in rejects.jsonl)",
            tally.counts.malformed_lines,
            tally.counts.invalid_events,
            tally.counts.lines,
            tally.bad_ratio(),
            plan.flags.max_bad_ratio
        ));
        for r in tally.rejects.iter().take(5) {
            eprintln!(
                "regtally: {}:{}: {}",
                r.file, r.reject.line, r.reject.reason
            );
        }
    }

    // The whole history: what the state held, and this run.
    let batch = std::mem::replace(&mut tally.metrics, MetricTable::new(plan.config.precision));
    let (metrics, next_state) = match plan.state.take() {
        None => (batch, None),
        Some((dir, mut state)) => {
            // A state is loaded only with this run's precision, so this does not fail.
            state
                .metrics
                .merge(batch)
                .context("cannot merge this run into the state")?;
            state.ledger = tally.ledger.clone();
            state
                .recent_ids
                .extend(tally.event_ids.iter().map(|(id, t)| (*id, t.secs)));
            state.trim_ids(plan.dedup_window, plan.end_of_today);
            record_consumed(&mut state.inputs, &tally, &plan.modified);
            (state.metrics.clone(), Some((dir, state)))
        }
    };
    let mut rows = metrics.into_rows();
    let ping = ServicePing::compute(&rows, plan.flags.as_of, plan.config.precision);

    let write = problems.is_empty() || plan.flags.keep_going;
    if write {
        // The state moves on only with a clean run: a half-read input must be read again.
        let state = next_state.as_ref().filter(|_| problems.is_empty());
        write_outputs(&plan, &tally, &mut rows, &ping, state, started)?;
    }
    let mut stdout = std::io::stdout().lock();
    print_human(&tally, &plan.skipped, &ping, &mut stdout)?;
    if write {
        writeln!(stdout, "outputs: {}", plan.out.display())?;
    }
    stdout.flush()?;
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        eprintln!("regtally: {p}");
    }
    if write {
        eprintln!("regtally: --keep-going: outputs written from what could be read");
        if next_state.is_some() {
            eprintln!("regtally: the state was left as it was");
        }
    } else {
        eprintln!("regtally: no output was replaced");
    }
    Ok(ExitCode::FAILURE)
}

fn write_outputs(
    plan: &RunPlan,
    tally: &Tally,
    rows: &mut [MetricRow],
    ping: &ServicePing,
    state: Option<&(PathBuf, RunState)>,
    started: Instant,
) -> Result<()> {
    let writing = Instant::now();
    let mut staged = StagedOutputs::new();
    let meta = AggregatesMetadata {
        precision: plan.config.precision,
        since: plan.config.since,
        until: plan.config.until,
    };
    let out = |name: &str| plan.out.join(name);
    staged.stage(&out(output::AGGREGATES), |w| {
        write_aggregates(rows, &meta, w)
    })?;
    staged.stage(&out(output::SERVICE_PING), |w| {
        serde_json::to_writer_pretty(&mut *w, ping)?;
        Ok(w.write_all(b"\n")?)
    })?;
    staged.stage(&out(output::REJECTS), |w| {
        output::write_rejects(&tally.rejects, w)
    })?;
    staged.stage(&out(output::REPOSITORIES), |w| {
        output::write_repositories(&tally.ledger, w)
    })?;
    if let Some((dir, state)) = state {
        staged.stage(&dir.join(STATE_FILE), |w| state.write(plan.dedup_window, w))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let write_seconds = writing.elapsed().as_secs_f64();
    staged.stage(&out(output::SUMMARY), |w| {
        write_summary(tally, &plan.skipped, &plan.flags, elapsed, write_seconds, w)
    })?;
    staged.commit()
}
