//! `regtally report`: the Service Ping for any date, a table of weekly and monthly users, or
//! the distinct users over any range of days, from stored sketches (a state or an
//! `aggregates.parquet`), without reading any log.

use crate::aggregate::period::{Period, PeriodKind};
use crate::aggregate::sketch::Bounds;
use crate::aggregate::{DistinctUsers, MetricRow, MetricTable};
use crate::classify::{is_deploy_token_metric, metric_names, short_name};
use crate::cmd::flags::{check_range, parse_date, usage};
use crate::ledger::PriorLedger;
use crate::output::aggregates::read_aggregates;
use crate::output::chart::{sparkline, weekly_chart, weekly_users};
use crate::output::service_ping::ServicePing;
use crate::state::RunState;
use crate::timestamp::TimeWindow;
use anyhow::Result;
use chrono::NaiveDate;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// How `report` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Weekly and monthly unique users and events per tracked event, one line a period.
    Table,
    /// The Service Ping document, as `service_ping.json` (with --distinct: the distinct users).
    Json,
    /// An SVG line chart of weekly unique users per tracked event and the total.
    Svg,
}

/// Flags of `regtally report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Read the sketches of a state folder (as `run --state` writes it).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "from",
        conflicts_with = "from"
    )]
    pub state: Option<PathBuf>,
    /// Read the sketches of an aggregates.parquet.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Date the Service Ping is computed for (YYYY-MM-DD); default today, UTC.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub as_of: Option<NaiveDate>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Table: periods starting on or after this day.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub since: Option<NaiveDate>,
    /// Table: periods starting before this day.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub until: Option<NaiveDate>,
    /// Distinct users and events per tracked event over exactly the days --since (inclusive)
    /// to --until (exclusive), merged from the daily sketches.
    #[arg(long, requires_all = ["since", "until"])]
    pub distinct: bool,
}

/// `regtally report`.
pub fn report(args: ReportArgs, today: NaiveDate) -> Result<ExitCode> {
    check_range(args.since, args.until)?;
    let (table, source): (MetricTable, &Path) = match (&args.state, &args.from) {
        (Some(dir), _) => match RunState::load(dir, None, PriorLedger::discard()) {
            Ok(Some(state)) => (state.metrics, dir),
            Ok(None) => return usage(format!("{} holds no regtally state", dir.display())),
            Err(e) => return usage(e.to_string()),
        },
        (None, Some(file)) => match read_aggregates(file) {
            Ok(t) => (t, file),
            Err(e) => return usage(e.to_string()),
        },
        (None, None) => return usage("give --state DIR or --from AGGREGATES.parquet"),
    };
    if let Some(p) = table.first_outside(&TimeWindow::until_day_after(today)) {
        return usage(format!(
            "{} holds period {p}, outside the times a registry can have written (2015 to the day after today): it is damaged",
            source.display()
        ));
    }
    let mut out = std::io::stdout().lock();
    if let (true, Some(since), Some(until)) = (args.distinct, args.since, args.until) {
        let metrics = match table.over_days(since, until) {
            Ok(m) => m,
            Err(e) => anyhow::bail!("cannot count distinct users from {since} to {until}: {e}"),
        };
        match args.format {
            Format::Json => {
                let doc = distinct_json(since, until, &metrics);
                serde_json::to_writer_pretty(&mut out, &doc)?;
                writeln!(out)?;
            }
            Format::Table => print_distinct(since, until, &metrics, &mut out)?,
            Format::Svg => return usage(
                "--distinct prints a table or JSON; the chart is of weeks (leave out --distinct)",
            ),
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let precision = table.precision();
    let rows = table.into_rows();
    match args.format {
        Format::Json => {
            let ping = ServicePing::compute(&rows, args.as_of.unwrap_or(today), precision);
            serde_json::to_writer_pretty(&mut out, &ping)?;
            writeln!(out)?;
        }
        Format::Table => print_table(&rows, args.since, args.until, &mut out)?,
        Format::Svg => out.write_all(weekly_chart(&rows, args.since, args.until)?.as_bytes())?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One line per period (months, then weeks), one `users/events` column per metric: users'
/// events and their total first, then deploy tokens' (when any row has one).
fn print_table<W: Write>(
    rows: &[MetricRow],
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
    w: &mut W,
) -> Result<()> {
    let in_range = |r: &MetricRow| {
        since.is_none_or(|s| r.period.start >= s) && until.is_none_or(|u| r.period.start < u)
    };
    let (tokens, users): (Vec<&str>, Vec<&str>) =
        metric_names().partition(|m| is_deploy_token_metric(m));
    let any_token = rows
        .iter()
        .any(|r| r.events > 0 && tokens.contains(&r.metric) && in_range(r));
    // Weeks, then months, each in order: the lines of both blocks.
    let mut periods = Vec::new();
    for kind in [PeriodKind::Week, PeriodKind::Month] {
        let mut of_kind: Vec<_> = rows
            .iter()
            .filter(|r| r.period.kind == kind && in_range(r))
            .map(|r| r.period)
            .collect();
        of_kind.sort();
        of_kind.dedup();
        periods.extend(of_kind);
    }
    print_block(rows, &users, &periods, w)?;
    if any_token {
        writeln!(w)?;
        print_block(rows, &tokens, &periods, w)?;
    } else {
        writeln!(w, "(no events by deploy tokens)")?;
    }
    writeln!(
        w,
        "(each cell: unique users (± the 95% interval's larger half, where not exact)/events; _dt: by deploy tokens)"
    )?;
    let (weeks, series) = weekly_users(rows, since, until);
    if let (Some(first), Some(last)) = (weeks.first(), weeks.last()) {
        writeln!(w)?;
        writeln!(w, "weekly unique users, {first} to {last}:")?;
        for (metric, values) in &series {
            let top = values.iter().max().copied().unwrap_or(0);
            writeln!(
                w,
                "{:<18} {}  (most {top})",
                short_name(metric),
                sparkline(values)
            )?;
        }
    }
    Ok(())
}

/// A header of `metrics` and one line per period, one `users/events` column per metric.
fn print_block<W: Write>(
    rows: &[MetricRow],
    metrics: &[&str],
    periods: &[Period],
    w: &mut W,
) -> Result<()> {
    write!(w, "{:<10}", "period")?;
    for m in metrics {
        write!(w, " {:>22}", short_name(m))?;
    }
    writeln!(w)?;
    for &period in periods {
        write!(w, "{:<10}", period.to_string())?;
        for m in metrics {
            let cell = rows.iter().find(|r| r.metric == *m && r.period == period);
            let text = cell.map_or("0/0".to_owned(), |r| {
                format!("{}/{}", with_margin(r.unique_users, r.bounds), r.events)
            });
            write!(w, " {text:>22}")?;
        }
        writeln!(w)?;
    }
    Ok(())
}

/// `1234 (±25)`: an estimate and the larger half of its interval; the estimate alone where
/// the interval is the estimate.
fn with_margin(estimate: i64, bounds: Bounds) -> String {
    let margin = (estimate - bounds.lower).max(bounds.upper - estimate);
    if margin == 0 {
        estimate.to_string()
    } else {
        format!("{estimate} (±{margin})")
    }
}

/// `{"since", "until", "metrics": {"<event name>": {"unique_users", "unique_users_lower",
/// "unique_users_upper", "events"}}}`.
fn distinct_json(
    since: NaiveDate,
    until: NaiveDate,
    metrics: &[DistinctUsers],
) -> serde_json::Value {
    let by_name: serde_json::Map<String, serde_json::Value> = metrics
        .iter()
        .map(|m| {
            let cell = serde_json::json!({
                "unique_users": m.unique_users,
                "unique_users_lower": m.bounds.lower,
                "unique_users_upper": m.bounds.upper,
                "events": m.events,
            });
            (m.metric.to_owned(), cell)
        })
        .collect();
    serde_json::json!({
        "since": since.to_string(),
        "until": until.to_string(),
        "metrics": by_name,
    })
}

/// One line per tracked event and the total.
fn print_distinct<W: Write>(
    since: NaiveDate,
    until: NaiveDate,
    metrics: &[DistinctUsers],
    w: &mut W,
) -> Result<()> {
    let last = until.pred_opt().unwrap_or(until);
    writeln!(w, "distinct users from {since} to {last} (both included)")?;
    writeln!(
        w,
        "{:<20} {:>12} {:>25} {:>12}",
        "event", "unique users", "95% interval", "events"
    )?;
    for m in metrics {
        let interval = format!("[{}, {}]", m.bounds.lower, m.bounds.upper);
        writeln!(
            w,
            "{:<20} {:>12} {:>25} {:>12}",
            short_name(m.metric),
            m.unique_users,
            interval,
            m.events
        )?;
    }
    Ok(())
}
