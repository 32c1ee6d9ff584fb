//! `regtally run`: validate, read the logs, write the outputs (and the state, with `--state`).

use crate::aggregate::{MetricRow, MetricTable};
use crate::cmd::flags::{check_range, parse_date, parse_ratio, parse_size, usage};
use crate::config::{Prior, RunConfig};
use crate::dedup::window::IdWindow;
use crate::ledger::PriorLedger;
use crate::output::aggregates::{write_aggregates, AggregatesMetadata};
use crate::output::events::{existing_parts, remove_staged_parts, stage_dataset, DatasetReport};
use crate::output::redis::{check_key_format, stage_redis, RedisReport};
use crate::output::service_ping::ServicePing;
use crate::output::summary::{self, print_human, write_summary, RunFlags};
use crate::output::{self, Mirror, StagedOutputs};
use crate::parse::chunk::{new_run_id, ParseRules};
use crate::pipeline;
use crate::read::user_ids::{load as load_user_ids, IdsByUser};
use crate::read::{discover_inputs, object, read_side_file, InputPath};
use crate::spill::{exit_cleanly_on_signals, MemoryBudget, SpillDir};
use crate::state::{
    legacy_moved_header, InputSelection, RunState, StateLock, LEGACY_STATE_FILE, STATE_FILE,
};
use crate::tally::Tally;
use crate::tally::{Dataset, DatasetRows};
use crate::timestamp::TimeWindow;
use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::Args;
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
    #[arg(long, default_value_t = 1 << 20, hide = true, value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    pub chunk_bytes: u64,
    /// Memory that de-duplication and the repository ledger may hold before spilling to --temp-dir (e.g. 512M, 4G).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    pub memory_limit: u64,
    /// Folder for the temporary files of a run that passes --memory-limit; default: OUT/.regtally-tmp.
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    /// Also write every de-duplicated valid event, classified, as a Parquet dataset DIR/month=YYYY-MM/part-*.parquet (replaced each run; with --state each run adds its own files).
    #[arg(long, value_name = "DIR")]
    pub events: Option<PathBuf>,
    /// Also write, per tracked event and ISO week, the Redis HyperLogLog of its users' GitLab ids, named after GitLab's key, for `regtally redis-merge` (see "Repairing GitLab's counters").
    #[arg(long, value_name = "DIR")]
    pub redis: Option<PathBuf>,
    /// With --redis: CSV of username,id (GitLab's users table); users not in it are taken from their events' JWT (actor.user).
    #[arg(long, value_name = "FILE", requires = "redis")]
    pub user_ids: Option<PathBuf>,
    /// With --redis: the key of an event's week, <event> and <week> replaced (older GitLab releases: {<event>}-<week>).
    #[arg(long, value_name = "FORMAT", default_value = crate::output::redis::DEFAULT_KEY_FORMAT, requires = "redis")]
    pub redis_key_format: String,
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
    /// The output folder: where outputs are written (staged, when they go to a URL).
    out: PathBuf,
    /// `--out` in object storage.
    out_url: Option<String>,
    flags: RunFlags,
    threads: Option<usize>,
    /// Where the state lives, and what it held, with `--state`.
    state: Option<(PathBuf, RunState)>,
    /// Which inputs the state said to skip, and the times the files were seen with (the
    /// inputs to read are in `config.inputs`).
    selection: InputSelection,
    /// The ledger to start from without `--state`.
    seed: PriorLedger,
    dedup_window: u32,
    /// The end of today (UTC), in seconds: the latest "newest event" the id window accepts.
    end_of_today: i64,
    /// Held as long as the plan: until the outputs are in place or the run has failed.
    _state_lock: Option<StateLock>,
    /// The events dataset's folder, with `--events` (where it is staged, when it goes to a
    /// URL).
    events: Option<PathBuf>,
    /// `--events` in object storage.
    events_url: Option<String>,
    /// The Redis export's folder and key format, with `--redis`.
    redis: Option<(PathBuf, String)>,
    /// The run's folder of temporary files, created (and what killed runs left removed) before
    /// any log is read.
    spill: SpillDir,
    /// The day the run takes for today (UTC).
    today: NaiveDate,
}

/// The URL a flag's value names, if it names object storage.
fn url_of(path: &Path) -> Option<String> {
    let text = path.to_string_lossy();
    object::is_url(&text).then(|| text.into_owned())
}

/// Checks before any log is read that an output folder (created if missing), or a prefix in
/// object storage, can be written.
fn check_destination(dir: &Path, url: Option<&str>) -> std::result::Result<(), String> {
    match url {
        Some(url) => object::check_writable(url),
        None => output::check_output_dir(dir).map_err(|e| format!("{e:#}")),
    }
}

impl RunPlan {
    /// The output folder as the user named it.
    fn out_name(&self) -> String {
        self.out_url
            .clone()
            .unwrap_or_else(|| self.out.display().to_string())
    }
}

fn read_known_repositories(path: &Path) -> Result<Vec<String>> {
    let text = match read_side_file(path).map(String::from_utf8) {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            return usage(format!(
                "cannot read --known-repositories {}: {e}",
                path.display()
            ))
        }
        Err(e) => return usage(format!("cannot read --known-repositories {e}")),
    };
    Ok(text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

impl RunPlan {
    fn from_args(args: RunArgs, today: NaiveDate) -> Result<RunPlan> {
        check_range(args.since, args.until)?;
        let inputs = match discover_inputs(&args.inputs) {
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
        let mut seed = PriorLedger::seeded(known.iter().flatten().map(String::as_str));
        let out_url = url_of(&args.out);
        let events_url = args.events.as_deref().and_then(url_of);
        if let Err(e) = check_destination(&args.out, out_url.as_deref()) {
            return usage(e);
        }
        if let Some(dir) = &args.events {
            if let Err(e) = check_destination(dir, events_url.as_deref()) {
                return usage(format!("--events: {e}"));
            }
        }
        let user_ids = match (&args.redis, &args.user_ids) {
            (None, _) => None,
            (Some(dir), csv) => {
                if let Err(e) = output::check_output_dir(dir) {
                    return usage(format!("--redis: {e:#}"));
                }
                if let Err(e) = check_key_format(&args.redis_key_format) {
                    return usage(e);
                }
                let ids = match csv {
                    Some(path) => match load_user_ids(path) {
                        Ok(ids) => ids,
                        Err(e) => return usage(e),
                    },
                    None => IdsByUser::default(),
                };
                Some(std::sync::Arc::new(ids))
            }
        };
        let mut state_lock = None;
        if let Some(dir) = &args.state {
            if let Err(e) = output::check_output_dir(dir) {
                return usage(format!("--state: {e:#}"));
            }
            // Before the state is read: another run would count only its own inputs.
            state_lock = Some(StateLock::acquire(dir)?);
        }
        // Outputs in object storage are staged in the run's temporary folder: a local one.
        let temp_dir = args.temp_dir.clone().unwrap_or_else(|| match &out_url {
            Some(_) => std::env::temp_dir().join("regtally"),
            None => args.out.join(".regtally-tmp"),
        });
        let mut staged_in: Vec<PathBuf> = out_url
            .is_none()
            .then(|| args.out.clone())
            .into_iter()
            .collect();
        staged_in.extend(args.state.clone());
        // A killed run may have left staged parts in the dataset's month folders.
        if let (Some(dir), None) = (&args.events, &events_url) {
            staged_in.extend(
                std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("month="))
                    .map(|e| e.path()),
            );
        }
        staged_in.extend(args.redis.clone());
        let staged_in: Vec<&Path> = staged_in.iter().map(PathBuf::as_path).collect();
        let spill = match SpillDir::create(&temp_dir, &staged_in) {
            Ok(s) => s,
            Err(e) => {
                return usage(format!(
                    "--temp-dir: cannot create a folder for temporary files: {e}"
                ))
            }
        };
        let state = match &args.state {
            None => None,
            Some(dir) => {
                // The state's repositories spill into the run's temporary folder past their
                // share of the budget.
                let ledger = PriorLedger::new(Some((
                    spill.path().to_path_buf(),
                    MemoryBudget::new(args.memory_limit).prior_ledger_bytes(),
                )));
                let state = match RunState::load(dir, Some(args.precision), ledger) {
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
                if let Some(p) = state
                    .metrics
                    .first_outside(&TimeWindow::until_day_after(today))
                {
                    return usage(format!(
                        "the state in {} holds period {p}, outside the times a registry can have written (2015 to the day after today): it is damaged; rebuild it from the logs (GUIDE.md, \"Rebuilding the state\")",
                        dir.display()
                    ));
                }
                Some((dir.clone(), state))
            }
        };
        let mut selection = match &state {
            Some((_, state)) => state.select_inputs(inputs),
            None => InputSelection {
                read: inputs,
                ..InputSelection::default()
            },
        };
        // Where outputs bound for object storage are written first, to go up once the run is
        // done.
        let staging = |name: &str| -> Result<PathBuf> {
            let dir = spill.path().join(name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Ok(dir)
        };
        let out = match &out_url {
            Some(_) => staging("out")?,
            None => args.out.clone(),
        };
        let events = match (&events_url, &args.events) {
            (Some(_), _) => Some(staging("events")?),
            (None, dir) => dir.clone(),
        };
        let end_of_today = (today + chrono::Days::new(1))
            .and_hms_opt(0, 0, 0)
            .map_or(i64::MAX, |t| t.and_utc().timestamp());
        Ok(RunPlan {
            config: RunConfig {
                inputs: std::mem::take(&mut selection.read),
                since: args.since,
                until: args.until,
                precision: args.precision,
                rules: ParseRules {
                    max_line_bytes: args.max_line_bytes as usize,
                    times: TimeWindow::until_day_after(today),
                    run: new_run_id(),
                    rows: args.events.is_some(),
                    gitlab_users: args.redis.is_some(),
                    identities: false,
                },
                chunk_bytes: args.chunk_bytes as usize,
                progress: !args.quiet && std::io::stderr().is_terminal(),
                keep_event_ids: state.as_ref().map(|_| IdWindow {
                    days: args.dedup_window,
                    not_after: end_of_today,
                }),
                hash_inputs: state.is_some(),
                budget: MemoryBudget::new(args.memory_limit),
                user_ids,
            },
            out,
            out_url,
            flags: RunFlags {
                since: args.since,
                until: args.until,
                as_of: args.as_of.unwrap_or(today),
                precision: args.precision,
                max_bad_ratio: args.max_bad_ratio,
                keep_going: args.keep_going,
                state: args.state.clone(),
                memory_limit: args.memory_limit,
            },
            threads: args.threads.map(usize::from),
            state,
            selection,
            seed,
            dedup_window: args.dedup_window,
            end_of_today,
            events,
            events_url,
            redis: args.redis.map(|dir| (dir, args.redis_key_format)),
            spill,
            _state_lock: state_lock,
            today,
        })
    }
}

/// `regtally run`.
pub fn run(args: RunArgs, today: NaiveDate) -> Result<ExitCode> {
    // Before any temporary file exists: an interrupted run removes its own.
    exit_cleanly_on_signals().context("cannot install the signal handler")?;
    let plan = RunPlan::from_args(args, today)?;
    let started = Instant::now();
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = plan.threads {
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("cannot start worker threads")?;
    // Everything parallel in the run, writing included, stays within --threads.
    let clean = pool.install(|| run_planned(plan, started, pipeline::run, Then::Exit))?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A `run` whose logs an engine reads (the Spark driver of `python/`): its flags checked and
/// its inputs found as `regtally run` finds them, then its outputs written from the [`Tally`]
/// the engine's tasks computed, as `regtally run` writes them.
pub struct PlannedRun {
    plan: RunPlan,
    started: Instant,
}

/// What computes a run's [`Tally`] once the plan is checked: [`pipeline::run`] on this machine,
/// or what gathers an engine's results. Rejects go to the writer as they are found.
pub type Compute<'a> =
    dyn FnOnce(&RunConfig, Prior, &SpillDir, &mut (dyn Write + Send)) -> Result<Tally> + 'a;

impl PlannedRun {
    /// Checks a `run`'s flags (exit status 2 for what is wrong, as `regtally run`): those a
    /// Spark run does not offer are refused.
    pub fn new(args: RunArgs, today: NaiveDate) -> Result<PlannedRun> {
        for (given, flag) in [
            (args.state.is_some(), "--state"),
            (args.redis.is_some(), "--redis"),
            (
                args.events.as_deref().and_then(url_of).is_some(),
                "--events in object storage",
            ),
            (
                args.inputs.iter().any(|p| p.as_os_str() == "-"),
                "- (standard input)",
            ),
        ] {
            if given {
                return usage(format!(
                    "{flag} is not offered by the Spark driver; use regtally run"
                ));
            }
        }
        let started = Instant::now();
        Ok(PlannedRun {
            plan: RunPlan::from_args(args, today)?,
            started,
        })
    }

    /// What the run is asked, its inputs in input order.
    pub fn config(&self) -> &RunConfig {
        &self.plan.config
    }

    /// The day the run takes for today.
    pub fn today(&self) -> NaiveDate {
        self.plan.today
    }

    /// `--memory-limit`.
    pub fn memory_limit(&self) -> u64 {
        self.plan.flags.memory_limit
    }

    /// `--events`, absolute: the folder the engine's tasks write the dataset's files in, which
    /// they must see at the same path as the driver.
    pub fn events_dir(&self) -> Result<Option<PathBuf>> {
        self.plan
            .events
            .as_deref()
            .map(|d| std::path::absolute(d).with_context(|| format!("--events {}", d.display())))
            .transpose()
    }

    /// The suffix of the run's staged outputs, which the tasks' staged files end in too, so
    /// that what a killed run left is recognised by the next (see [`SpillDir::staged_suffix`]).
    pub fn staged_suffix(&self) -> String {
        self.plan.spill.staged_suffix()
    }

    /// Computes the tally with `compute` and writes every output; whether the run was clean
    /// (exit status 0) or not (1), as `regtally run` decides. Whatever happens, no file the
    /// tasks staged for the events dataset is left: renamed into place, or removed.
    pub fn finish(self, compute: Box<Compute<'_>>) -> Result<bool> {
        let staged = self.staged_dataset();
        let result = run_planned(self.plan, self.started, compute, Then::Return);
        if let Some((dir, suffix)) = staged {
            remove_staged_parts(&dir, &suffix);
        }
        result
    }

    /// Removes what the tasks staged for the events dataset: for a run given up before
    /// [`PlannedRun::finish`] (the engine failed).
    pub fn discard(self) {
        if let Some((dir, suffix)) = self.staged_dataset() {
            remove_staged_parts(&dir, &suffix);
        }
    }

    /// Where the tasks stage the dataset's files, and what their names end in. Attempts of
    /// tasks that failed or were retried stage files too, which no run renames.
    fn staged_dataset(&self) -> Option<(PathBuf, String)> {
        let dir = self.events_dir().ok().flatten()?;
        Some((dir, self.staged_suffix()))
    }
}

/// What the process does once a run is over.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Exits (`regtally run`).
    Exit,
    /// Goes on: an engine's driver (`python/`) lives on in its process after the run, so
    /// what the run computed is freed.
    Return,
}

/// The run once its plan is checked, inside the worker pool; whether it was clean.
fn run_planned<F>(mut plan: RunPlan, started: Instant, compute: F, then: Then) -> Result<bool>
where
    F: FnOnce(&RunConfig, Prior, &SpillDir, &mut (dyn Write + Send)) -> Result<Tally>,
{
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
    let mut staged = StagedOutputs::new(plan.spill.staged_suffix());
    let mut rejects = staged.open(&plan.out.join(output::REJECTS))?;
    let mut tally = compute(&plan.config, prior, &plan.spill, &mut rejects)?;

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
        for r in &tally.first_rejects {
            eprintln!(
                "regtally: {}:{}: {}",
                r.file, r.reject.line, r.reject.reason
            );
        }
    }

    // The whole history: what the state held, and this run. The run's table is moved out of
    // the tally (no output reads it there), not copied: a copy of every sketch was a step of
    // its own on one core.
    let run_metrics =
        std::mem::replace(&mut tally.metrics, MetricTable::new(plan.config.precision));
    let (metrics, next_state) = match plan.state.take() {
        None => (run_metrics, None),
        Some((dir, mut state)) => {
            state.absorb(
                run_metrics,
                &tally,
                &plan.config.inputs,
                &plan.selection,
                plan.dedup_window,
                plan.end_of_today,
            )?;
            (state.metrics.clone(), Some((dir, state)))
        }
    };
    let mut rows = metrics.into_rows();
    let ping = ServicePing::compute(&rows, plan.flags.as_of, plan.config.precision);

    let write = problems.is_empty() || plan.flags.keep_going;
    let mut written = ExtraOutputs::default();
    if write {
        staged.close(rejects)?;
        // The state moves on only with a clean run: a half-read input must be read again.
        let state = next_state.as_ref().filter(|_| problems.is_empty());
        written = write_outputs(&plan, staged, &tally, &mut rows, &ping, state, started)?;
    }
    let mut stdout = std::io::stdout().lock();
    print_human(&tally, &plan.selection.skipped, &ping, &mut stdout)?;
    if write {
        writeln!(stdout, "outputs: {}", plan.out_name())?;
    }
    if let Some(d) = written.dataset {
        writeln!(
            stdout,
            "events dataset: {} rows in {} files under {}",
            d.rows, d.files, d.dir
        )?;
    }
    if let Some(r) = written.redis {
        writeln!(
            stdout,
            "redis: {} keys under {} (regtally redis-merge {} --url redis://HOST:PORT)",
            r.keys, r.dir, r.dir
        )?;
    }
    stdout.flush()?;
    if then == Then::Exit {
        // The system takes back the tally's memory at once as the process exits, where
        // freeing it entry by entry took 40-50 ms on one core after every output was written
        // (half a million repositories). Its files are in the spill folder, which the plan
        // still removes.
        std::mem::forget(tally);
    }
    if problems.is_empty() {
        return Ok(true);
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
    Ok(false)
}

/// Stages every output but the rejects (already staged, as they were found), then renames them
/// all into place.
fn write_outputs(
    plan: &RunPlan,
    mut staged: StagedOutputs,
    tally: &Tally,
    rows: &mut [MetricRow],
    ping: &ServicePing,
    state: Option<&(PathBuf, RunState)>,
    started: Instant,
) -> Result<ExtraOutputs> {
    let writing = Instant::now();
    let meta = AggregatesMetadata {
        precision: plan.config.precision,
        since: plan.config.since,
        until: plan.config.until,
    };
    let out = |name: &str| plan.out.join(name);
    // Together: with a million repositories, repositories.txt's writes and each file's sync
    // overlap the aggregates' encoding.
    staged.stage_together(vec![
        (
            out(output::AGGREGATES),
            Box::new(|w| write_aggregates(rows, &meta, w)),
        ),
        (
            out(output::SERVICE_PING),
            Box::new(|w| {
                serde_json::to_writer_pretty(&mut *w, ping)?;
                Ok(w.write_all(b"\n")?)
            }),
        ),
        (
            out(output::REPOSITORIES),
            Box::new(|w| output::write_repositories(&tally.ledger, w)),
        ),
    ])?;
    // Before the state: a crash among the renames then leaves this run's files without the
    // state that records their inputs, never the state without the files; the next run reads
    // those inputs again (and, if no new input came, writes the same files under the same names).
    let events_name = plan
        .events_url
        .clone()
        .or_else(|| plan.events.as_ref().map(|d| d.display().to_string()));
    let dataset = match (&plan.events, &tally.dataset) {
        (Some(dir), Some(Dataset::Rows(rows))) if state.is_some() || plan.flags.state.is_none() => {
            let mut report =
                stage_events(dir, rows, tally, plan.flags.state.is_some(), &mut staged)?;
            report.dir = events_name.clone().unwrap_or_default();
            Some(report)
        }
        // Written by an engine's tasks, for a run without a state: its files replace the
        // dataset.
        (Some(dir), Some(Dataset::Staged { files, rows })) => {
            // The tasks name files by the absolute path (`PlannedRun::events_dir`): so must
            // the parts found here, or a part this run rewrites would be removed after it.
            let dir =
                &std::path::absolute(dir).with_context(|| format!("--events {}", dir.display()))?;
            let finals: Vec<&PathBuf> = files.iter().map(|(_, f)| f).collect();
            for old in existing_parts(dir) {
                if !finals.contains(&&old) {
                    staged.remove_on_commit(old);
                }
            }
            for (temp, fin) in files {
                staged.adopt(temp.clone(), fin.clone());
            }
            Some(DatasetReport {
                dir: events_name.clone().unwrap_or_default(),
                files: files.len() as u64,
                rows: *rows,
            })
        }
        (Some(_), _) => {
            eprintln!(
                "regtally: the events dataset in {} was left as it was: the state did not move on, and the next run reads these inputs again",
                events_name.as_deref().unwrap_or_default()
            );
            None
        }
        (None, _) => None,
    };
    // With a state, the whole history's weeks; without, this run's.
    let redis = match (&plan.redis, &tally.redis, state) {
        (Some((dir, format)), _, Some((_, state))) => {
            Some(stage_redis(&state.gitlab_weeks, dir, format, &mut staged)?)
        }
        (Some((dir, format)), Some(run), None) if plan.flags.state.is_none() => {
            Some(stage_redis(&run.weeks, dir, format, &mut staged)?)
        }
        (Some((dir, _)), _, _) => {
            eprintln!(
                "regtally: the Redis export in {} was left as it was: the state did not move on",
                dir.display()
            );
            None
        }
        _ => None,
    };
    if let Some((dir, state)) = state {
        staged.stage(&dir.join(STATE_FILE), |w| {
            state.write(plan.dedup_window, &tally.ledger, w)
        })?;
        if state.legacy {
            // regtally 0.3 must refuse the folder now, not start a state of its own beside it.
            staged.stage(&dir.join(LEGACY_STATE_FILE), |w| {
                Ok(w.write_all(&legacy_moved_header())?)
            })?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let write_seconds = writing.elapsed().as_secs_f64();
    staged.stage(&out(output::SUMMARY), |w| {
        write_summary(
            tally,
            &plan.selection.skipped,
            &plan.flags,
            summary::Written {
                events_dataset: dataset.as_ref(),
                redis_export: redis.as_ref(),
            },
            elapsed,
            write_seconds,
            w,
        )
    })?;
    if let Some(url) = &plan.out_url {
        staged.mirror(Mirror {
            local: plan.out.clone(),
            url: url.clone(),
            replace: false,
        });
    }
    if let (Some(url), Some(local)) = (&plan.events_url, &plan.events) {
        // Without a state the dataset is this run's alone; with one, each run adds its files.
        staged.mirror(Mirror {
            local: local.clone(),
            url: url.clone(),
            replace: plan.flags.state.is_none(),
        });
    }
    staged.commit()?;
    Ok(ExtraOutputs { dataset, redis })
}

/// What `--events` and `--redis` wrote.
#[derive(Default)]
struct ExtraOutputs {
    dataset: Option<DatasetReport>,
    redis: Option<RedisReport>,
}

/// Stages the events dataset. Without a state the run's files replace the dataset; with one,
/// they are added beside earlier runs' files, named after this run's inputs (their content
/// hashes), so that no run's files rewrite another's.
fn stage_events(
    dir: &Path,
    rows: &DatasetRows,
    tally: &Tally,
    with_state: bool,
    staged: &mut StagedOutputs,
) -> Result<DatasetReport> {
    let prefix = if with_state {
        let mut key = xxhash_rust::xxh3::Xxh3::new();
        for input in &tally.inputs {
            key.update(
                input
                    .content_hash
                    .as_deref()
                    .unwrap_or(&input.path)
                    .as_bytes(),
            );
            key.update(b"\n");
        }
        format!("part-{:016x}-", key.digest())
    } else {
        "part-".to_owned()
    };
    stage_dataset(rows, dir, &prefix, !with_state, staged)
}
