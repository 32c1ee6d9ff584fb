//! The command line: one `enum Command` and the one place the clock is read. Each subcommand
//! lives in `cmd/`, with the flag checks they share ([`crate::cmd::flags`]).

use crate::cmd::{redis_merge, report, run};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Replays archived container-registry notification logs into GitLab's registry usage metrics.
#[derive(Debug, Parser)]
#[command(name = "regtally", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read logs and write aggregates, Service Ping, summary, rejects and repositories.
    Run(run::RunArgs),
    /// Print the Service Ping or a table of weekly and monthly users from stored sketches, without reading logs.
    Report(report::ReportArgs),
    /// Merge the Redis export of `run --redis` into GitLab's live HyperLogLog keys, losing no member already there.
    RedisMerge(redis_merge::RedisMergeArgs),
}

/// Today (UTC): what [`run`] takes for today, and a run an engine drives (the Spark driver of
/// `python/`) too.
pub fn today() -> chrono::NaiveDate {
    chrono::Utc::now().date_naive()
}

/// Runs a parsed command line; the exit status is SPEC §10's.
pub fn run(cli: Cli) -> Result<ExitCode> {
    // The clock is read here and by `today` only.
    let now = chrono::Utc::now();
    match cli.command {
        Command::Run(args) => run::run(args, now.date_naive()),
        Command::Report(args) => report::report(args, now.date_naive()),
        Command::RedisMerge(args) => redis_merge::redis_merge(args, now),
    }
}
