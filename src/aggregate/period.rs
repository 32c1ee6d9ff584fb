//! Periods: UTC days, ISO 8601 weeks and UTC calendar months, as keys that sort by time.

use chrono::{Datelike, Days, Months, NaiveDate};
use std::fmt;

/// Whether a period is a UTC day, an ISO week or a calendar month. Declared in the byte order
/// of their names, the order of `aggregates.parquet`'s `period_kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodKind {
    Day,
    Month,
    Week,
}

impl PeriodKind {
    /// The name written in `period_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Day => "day",
            PeriodKind::Month => "month",
            PeriodKind::Week => "week",
        }
    }
}

/// One day, week or month, identified by its first day (the day, a Monday, or the 1st of the
/// month).
///
/// Ordered by kind, then by start: the order of `aggregates.parquet`'s rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub kind: PeriodKind,
    pub start: NaiveDate,
}

impl Period {
    /// The period of a kind named as `period_kind` writes it (`day`, `week`, `month`) that
    /// holds `date`.
    pub fn of_kind(kind: &str, date: NaiveDate) -> Option<Period> {
        match kind {
            "day" => Some(Period::day_of(date)),
            "week" => Some(Period::week_of(date)),
            "month" => Some(Period::month_of(date)),
            _ => None,
        }
    }

    /// The UTC day `date`.
    pub fn day_of(date: NaiveDate) -> Period {
        Period {
            kind: PeriodKind::Day,
            start: date,
        }
    }

    /// The ISO week holding `date`.
    pub fn week_of(date: NaiveDate) -> Period {
        let back = date.weekday().num_days_from_monday();
        Period {
            kind: PeriodKind::Week,
            start: date - Days::new(u64::from(back)),
        }
    }

    /// The calendar month holding `date`.
    pub fn month_of(date: NaiveDate) -> Period {
        Period {
            kind: PeriodKind::Month,
            start: date.with_day(1).unwrap_or(date),
        }
    }

    /// The first day after the period (exclusive end), or `None` past chrono's last date.
    pub fn end(self) -> Option<NaiveDate> {
        match self.kind {
            PeriodKind::Day => self.start.checked_add_days(Days::new(1)),
            PeriodKind::Week => self.start.checked_add_days(Days::new(7)),
            PeriodKind::Month => self.start.checked_add_months(Months::new(1)),
        }
    }

    /// The following period of the same kind.
    pub fn next(self) -> Option<Period> {
        Some(Period {
            kind: self.kind,
            start: self.end()?,
        })
    }

    /// Every period of this kind from `first` to `last`, both included.
    pub fn span(first: Period, last: Period) -> impl Iterator<Item = Period> {
        debug_assert_eq!(first.kind, last.kind);
        std::iter::successors(Some(first), move |p| p.next().filter(|n| *n <= last))
    }
}

impl fmt::Display for Period {
    /// `2021-01-03` for a day, `2020-W53` for a week (ISO week-based year), `2021-01` for a
    /// month.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PeriodKind::Day => write!(f, "{}", self.start.format("%Y-%m-%d")),
            PeriodKind::Week => {
                let w = self.start.iso_week();
                write!(f, "{:04}-W{:02}", w.year(), w.week())
            }
            PeriodKind::Month => write!(f, "{:04}-{:02}", self.start.year(), self.start.month()),
        }
    }
}

/// Monday of the ISO week holding `date`.
pub fn monday_of(date: NaiveDate) -> NaiveDate {
    Period::week_of(date).start
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::d;

    #[test]
    fn week_year_boundary_labels_by_iso_year() {
        let w = Period::week_of(d(2021, 1, 3));
        assert_eq!(w.to_string(), "2020-W53");
        assert_eq!(w.start, d(2020, 12, 28));
        assert_eq!(w.end(), Some(d(2021, 1, 4)));
        assert_eq!(Period::week_of(d(2021, 1, 4)).to_string(), "2021-W01");
        assert_eq!(Period::week_of(d(2019, 12, 30)).to_string(), "2020-W01");
    }

    #[test]
    fn months_are_calendar_months() {
        let m = Period::month_of(d(2021, 1, 31));
        assert_eq!(m.to_string(), "2021-01");
        assert_eq!(m.end(), Some(d(2021, 2, 1)));
        assert_eq!(Period::month_of(d(2024, 2, 29)).end(), Some(d(2024, 3, 1)));
    }

    #[test]
    fn span_is_dense_and_inclusive() {
        let weeks: Vec<String> = Period::span(
            Period::week_of(d(2020, 12, 20)),
            Period::week_of(d(2021, 1, 5)),
        )
        .map(|p| p.to_string())
        .collect();
        assert_eq!(weeks, ["2020-W51", "2020-W52", "2020-W53", "2021-W01"]);
        let months: Vec<String> = Period::span(
            Period::month_of(d(2020, 11, 5)),
            Period::month_of(d(2021, 2, 1)),
        )
        .map(|p| p.to_string())
        .collect();
        assert_eq!(months, ["2020-11", "2020-12", "2021-01", "2021-02"]);
    }

    #[test]
    fn days_are_utc_dates() {
        let day = Period::day_of(d(2021, 2, 28));
        assert_eq!(day.to_string(), "2021-02-28");
        assert_eq!(day.end(), Some(d(2021, 3, 1)));
        assert_eq!(Period::of_kind("day", d(2021, 2, 28)), Some(day));
        let days: Vec<String> = Period::span(day, Period::day_of(d(2021, 3, 2)))
            .map(|p| p.to_string())
            .collect();
        assert_eq!(days, ["2021-02-28", "2021-03-01", "2021-03-02"]);
        assert!(
            day < Period::month_of(d(2000, 1, 1)),
            "day sorts before month"
        );
    }

    #[test]
    fn rows_sort_month_before_week_then_by_start() {
        let mut v = [
            Period::week_of(d(2021, 1, 4)),
            Period::month_of(d(2021, 2, 1)),
            Period::week_of(d(2020, 12, 28)),
            Period::month_of(d(2021, 1, 1)),
        ];
        v.sort();
        let labels: Vec<String> = v.iter().map(|p| p.to_string()).collect();
        assert_eq!(labels, ["2021-01", "2021-02", "2020-W53", "2021-W01"]);
        assert_eq!(monday_of(d(2021, 1, 3)), d(2020, 12, 28));
    }
}
