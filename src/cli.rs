//! The command line: one `enum Command`, flag parsers shared by the subcommands, and the one
//! place the clock is read. Each subcommand lives in `cmd/`.

use crate::cmd::{report, run};
use anyhow::Result;
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
    Run(run::RunArgs),
    /// Print the Service Ping or a table of weekly and monthly users from stored sketches, without reading logs.
    Report(report::ReportArgs),
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|_| s.len() == 10)
        .ok_or_else(|| format!("{s:?} is not a date of the form YYYY-MM-DD"))
}

/// Parses a number from 0 to 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// A mistake in how regtally was called: exit status 2, reported before any log is read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fails with a [`UsageError`].
pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(UsageError(msg.into()).into())
}

/// Checks that `--since` comes before `--until`.
pub fn check_range(since: Option<NaiveDate>, until: Option<NaiveDate>) -> Result<()> {
    match (since, until) {
        (Some(s), Some(u)) if s >= u => usage(format!("--since {s} must be before --until {u}")),
        _ => Ok(()),
    }
}

/// Runs a parsed command line; the exit status is SPEC §10's.
pub fn run(cli: Cli) -> Result<ExitCode> {
    // The clock is read here and nowhere else.
    let now = chrono::Utc::now();
    match cli.command {
        Command::Run(args) => run::run(args, now.date_naive()),
        Command::Report(args) => report::report(args, now.date_naive()),
    }
}
