//! Aggregating: counted events to per-period users and event counts, then to sketches (SPEC §8).
//!
//! The hot path only records which users were seen in which period (a set of identity hashes
//! per tracked event and period) and counts events. Sketches are built once per period at the
//! end: inserting every event into a sparse HyperLogLog++ costs far more than a set insert, and
//! the sets hold nothing the sketches would not.

use crate::classify::{TrackedEvent, TOTAL_METRIC};
use crate::period::{Period, PeriodKind};
use crate::sketch::{PassThroughHasher, UserSketch};
use chrono::NaiveDate;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

/// A set of identity hashes; the hashes are already uniform, so they index the table directly.
pub type IdentitySet = HashSet<u64, BuildHasherDefault<PassThroughHasher>>;

/// Users and events of one tracked event in one period.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cell {
    pub events: u64,
    pub users: IdentitySet,
}

impl Cell {
    fn merge(&mut self, other: Cell) {
        self.events += other.events;
        if self.users.len() < other.users.len() {
            let mine = std::mem::replace(&mut self.users, other.users);
            self.users.extend(mine);
        } else {
            self.users.extend(other.users);
        }
    }
}

/// The mergeable state of the metrics: per-chunk folds and the final reduce are the same code.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    cells: HashMap<(TrackedEvent, Period), Cell>,
    /// First and last date of a counted event.
    span: Option<(NaiveDate, NaiveDate)>,
}

impl Aggregate {
    /// Counts one event by a user on a UTC date.
    pub fn add(&mut self, event: TrackedEvent, date: NaiveDate, user: u64) {
        for period in [Period::week_of(date), Period::month_of(date)] {
            let cell = self.cells.entry((event, period)).or_default();
            cell.events += 1;
            cell.users.insert(user);
        }
        self.span = Some(match self.span {
            None => (date, date),
            Some((a, b)) => (a.min(date), b.max(date)),
        });
    }

    /// Adds everything `other` counted.
    pub fn merge(mut self, other: Aggregate) -> Aggregate {
        let (mut big, small) = if self.cells.len() >= other.cells.len() {
            (std::mem::take(&mut self), other)
        } else {
            (other, std::mem::take(&mut self))
        };
        for (key, cell) in small.cells {
            big.cells.entry(key).or_default().merge(cell);
        }
        big.span = match (big.span, small.span) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (x, None) | (None, x) => x,
        };
        big
    }

    /// The exact cell of one event and period, if anything was counted there.
    pub fn cell(&self, event: TrackedEvent, period: Period) -> Option<&Cell> {
        self.cells.get(&(event, period))
    }

    /// First and last date of a counted event.
    pub fn span(&self) -> Option<(NaiveDate, NaiveDate)> {
        self.span
    }

    /// One row per metric and period, dense from the first to the last counted event, sorted by
    /// metric name, period kind and start (SPEC §8 and §9).
    pub fn into_rows(self, precision: u8) -> Vec<MetricRow> {
        let Some((first, last)) = self.span else {
            return Vec::new();
        };
        let mut periods: Vec<Period> = Vec::new();
        for (lo, hi) in [
            (Period::month_of(first), Period::month_of(last)),
            (Period::week_of(first), Period::week_of(last)),
        ] {
            periods.extend(Period::span(lo, hi));
        }
        let mut cells = self.cells;
        let mut keyed: Vec<(TrackedEvent, Period, Cell)> = Vec::with_capacity(periods.len() * 5);
        for event in TrackedEvent::ALL {
            for &period in &periods {
                let cell = cells.remove(&(event, period)).unwrap_or_default();
                keyed.push((event, period, cell));
            }
        }
        // Building sketches is the slow part of this step: one per row, on every core.
        let totals: Vec<MetricRow> = periods
            .par_iter()
            .map(|&period| {
                let mut users = IdentitySet::default();
                let mut events = 0;
                for (_, _, cell) in keyed.iter().filter(|(_, p, _)| *p == period) {
                    users.extend(&cell.users);
                    events += cell.events;
                }
                MetricRow::from_users(TOTAL_METRIC, period, &users, events, precision)
            })
            .collect();
        let mut rows: Vec<MetricRow> = keyed
            .par_iter()
            .map(|(event, period, cell)| {
                MetricRow::from_users(
                    event.metric_name(),
                    *period,
                    &cell.users,
                    cell.events,
                    precision,
                )
            })
            .collect();
        rows.extend(totals);
        rows.sort_by(|a, b| (a.metric, a.period).cmp(&(b.metric, b.period)));
        rows
    }
}

/// One row of `aggregates.parquet`.
#[derive(Clone, Debug)]
pub struct MetricRow {
    pub metric: &'static str,
    pub period: Period,
    pub unique_users: i64,
    pub events: i64,
    pub sketch: UserSketch,
}

impl MetricRow {
    fn from_users(
        metric: &'static str,
        period: Period,
        users: &IdentitySet,
        events: u64,
        precision: u8,
    ) -> MetricRow {
        // Insertion order does not change the sketch once `count()` has run (see
        // `sketch::tests::bytes_round_trip_and_are_independent_of_insert_order`).
        let mut sketch = UserSketch::new(precision);
        for &h in users {
            sketch.insert(h);
        }
        MetricRow {
            metric,
            period,
            unique_users: sketch.estimate(),
            events: i64::try_from(events).unwrap_or(i64::MAX),
            sketch,
        }
    }

    /// Whether this is a weekly row.
    pub fn is_week(&self) -> bool {
        self.period.kind == PeriodKind::Week
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    /// A user's identity hash: sketches need well-spread hashes, not small integers.
    fn u(n: u32) -> u64 {
        crate::sketch::identity_hash(&format!("user{n}"))
    }

    #[test]
    fn merge_equals_one_fold() {
        let adds = [
            (TrackedEvent::PushTag, d(2021, 1, 3), u(1)),
            (TrackedEvent::PushTag, d(2021, 1, 3), u(1)),
            (TrackedEvent::PushTag, d(2021, 1, 4), u(2)),
            (TrackedEvent::DeleteTag, d(2021, 2, 20), u(1)),
        ];
        let mut whole = Aggregate::default();
        adds.iter().for_each(|&(e, dt, u)| whole.add(e, dt, u));
        let mut a = Aggregate::default();
        let mut b = Aggregate::default();
        adds[..2].iter().for_each(|&(e, dt, u)| a.add(e, dt, u));
        adds[2..].iter().for_each(|&(e, dt, u)| b.add(e, dt, u));
        let merged = a.merge(b);
        assert_eq!(merged.span(), whole.span());
        assert_eq!(merged.cells, whole.cells);
        let week = Period::week_of(d(2021, 1, 3));
        assert_eq!(merged.cell(TrackedEvent::PushTag, week).unwrap().events, 2);
    }

    #[test]
    fn rows_are_dense_sorted_and_total_is_the_union() {
        let mut agg = Aggregate::default();
        agg.add(TrackedEvent::PushTag, d(2021, 1, 3), u(10));
        agg.add(TrackedEvent::DeleteTag, d(2021, 1, 3), u(10));
        agg.add(TrackedEvent::DeleteTag, d(2021, 1, 3), u(11));
        agg.add(TrackedEvent::PushTag, d(2021, 1, 20), u(12));
        let rows = agg.into_rows(14);
        // Weeks 2020-W53..2021-W03 (4) and months 2021-01 (1): 5 periods x 6 metrics.
        assert_eq!(rows.len(), 30);
        let keys: Vec<(&str, &str, NaiveDate)> = rows
            .iter()
            .map(|r| (r.metric, r.period.kind.as_str(), r.period.start))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(rows[0].period.to_string(), "2021-01");
        assert_eq!(rows[1].period.to_string(), "2020-W53");
        let find = |m: &str, p: &str| {
            rows.iter()
                .find(|r| r.metric == m && r.period.to_string() == p)
                .unwrap()
        };
        let total = find(TOTAL_METRIC, "2020-W53");
        assert_eq!((total.unique_users, total.events), (2, 3));
        let gap = find("i_container_registry_push_tag_user", "2021-W01");
        assert_eq!((gap.unique_users, gap.events), (0, 0));
        let month = find(TOTAL_METRIC, "2021-01");
        assert_eq!((month.unique_users, month.events), (3, 4));
    }

    #[test]
    fn nothing_counted_gives_no_rows() {
        assert!(Aggregate::default().into_rows(14).is_empty());
    }
}
