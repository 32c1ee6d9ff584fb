//! The command line: flags parsed, then validated into a run before any log byte is read.

use crate::output::aggregates::{write_aggregates, AggregatesMetadata};
use crate::output::service_ping::ServicePing;
use crate::output::summary::{print_human, write_summary, RunFlags};
use crate::output::{self, StagedOutputs};
use crate::pipeline::{self, RunConfig, Tally};
use crate::read::{discover_inputs, InputPath};
use crate::sketch::PRECISION_RANGE;
use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Replays archived container-registry notification logs into GitLab's registry usage metrics.
#[derive(Debug, Parser)]
#[command(name = "regtally", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read logs and write aggregates, Service Ping, summary, rejects and repositories.
    Run(RunArgs),
}

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
    /// Write outputs even when an input failed or too many lines were bad (the exit status stays 1).
    #[arg(long)]
    pub keep_going: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|_| s.len() == 10)
        .ok_or_else(|| format!("{s:?} is not a date of the form YYYY-MM-DD"))
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// A mistake in how regtally was called: exit status 2, reported before any log is read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(UsageError(msg.into()).into())
}

/// A validated `run`: everything checked that can be checked without reading a log.
struct RunPlan {
    config: RunConfig,
    out: PathBuf,
    flags: RunFlags,
    threads: Option<usize>,
}

impl RunPlan {
    fn from_args(args: RunArgs, today: NaiveDate) -> Result<RunPlan> {
        if let (Some(s), Some(u)) = (args.since, args.until) {
            if s >= u {
                return usage(format!("--since {s} must be before --until {u}"));
            }
        }
        debug_assert!(PRECISION_RANGE.contains(&args.precision));
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
        let known_repositories = match &args.known_repositories {
            None => Vec::new(),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => text
                    .lines()
                    .map(|l| l.strip_suffix('\r').unwrap_or(l))
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
                Err(e) => {
                    return usage(format!(
                        "cannot read --known-repositories {}: {e}",
                        path.display()
                    ))
                }
            },
        };
        if let Err(e) = output::check_output_dir(&args.out) {
            return usage(format!("{e:#}"));
        }
        Ok(RunPlan {
            config: RunConfig {
                inputs,
                known_repositories,
                since: args.since,
                until: args.until,
                precision: args.precision,
                max_line_bytes: args.max_line_bytes as usize,
                chunk_bytes: args.chunk_bytes as usize,
                progress: !args.quiet && std::io::stderr().is_terminal(),
            },
            out: args.out,
            flags: RunFlags {
                since: args.since,
                until: args.until,
                as_of: args.as_of.unwrap_or(today),
                precision: args.precision,
                max_bad_ratio: args.max_bad_ratio,
                keep_going: args.keep_going,
            },
            threads: args.threads.map(usize::from),
        })
    }
}

/// Runs a parsed command line; the exit status is SPEC §10's.
pub fn run(cli: Cli) -> Result<ExitCode> {
    // The clock is read here and nowhere else.
    let today = chrono::Utc::now().date_naive();
    match cli.command {
        Command::Run(args) => run_command(RunPlan::from_args(args, today)?),
    }
}

fn run_command(plan: RunPlan) -> Result<ExitCode> {
    let started = Instant::now();
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = plan.threads {
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("cannot start worker threads")?;
    let mut tally = pool.install(|| pipeline::run(&plan.config));

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

    let ping = ServicePing::compute(&tally.rows, plan.flags.as_of, plan.config.precision);
    let write = problems.is_empty() || plan.flags.keep_going;
    if write {
        write_outputs(&plan, &mut tally, &ping, started)?;
    }
    let mut stdout = std::io::stdout().lock();
    print_human(&tally, &ping, &mut stdout)?;
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
    } else {
        eprintln!("regtally: no output was replaced");
    }
    Ok(ExitCode::FAILURE)
}

fn write_outputs(
    plan: &RunPlan,
    tally: &mut Tally,
    ping: &ServicePing,
    started: Instant,
) -> Result<()> {
    let writing = Instant::now();
    let mut staged = StagedOutputs::new(&plan.out);
    let meta = AggregatesMetadata {
        precision: plan.config.precision,
        since: plan.config.since,
        until: plan.config.until,
    };
    staged.stage(output::AGGREGATES, |w| {
        write_aggregates(&mut tally.rows, &meta, w)
    })?;
    staged.stage(output::SERVICE_PING, |w| {
        serde_json::to_writer_pretty(&mut *w, ping)?;
        Ok(w.write_all(b"\n")?)
    })?;
    staged.stage(output::REJECTS, |w| {
        output::write_rejects(&tally.rejects, w)
    })?;
    staged.stage(output::REPOSITORIES, |w| {
        output::write_repositories(tally, w)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let write_seconds = writing.elapsed().as_secs_f64();
    staged.stage(output::SUMMARY, |w| {
        write_summary(tally, &plan.flags, elapsed, write_seconds, w)
    })?;
    staged.commit()
}
