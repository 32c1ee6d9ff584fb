//! The metric table: sketches and exact event counts per metric and period, which a run
//! writes, a state keeps, and `report` reads back; and its rows, as `aggregates.parquet` and
//! the Service Ping take them.

use super::period::{Period, PeriodKind};
use super::sketch::{Bounds, SketchError, UserSketch, WarehouseSketch};
use crate::classify::{metric_names, short_name};
use crate::timestamp::TimeWindow;
use chrono::NaiveDate;
use std::collections::BTreeMap;

/// Sketches and exact event counts per metric and period: what a run writes, a state keeps,
/// and the next run merges its own into.
///
/// Merging two tables gives the bytes one table built from both inputs would have: sketch
/// merge is register-wise max (or the union of sparse codes), and event counts add.
#[derive(Clone, Debug)]
pub struct MetricTable {
    precision: u8,
    pub(super) cells: BTreeMap<(&'static str, Period), TableCell>,
}

impl MetricTable {
    /// An empty table of this precision.
    pub fn new(precision: u8) -> MetricTable {
        MetricTable {
            precision,
            cells: BTreeMap::new(),
        }
    }

    /// The precision of every sketch in the table.
    pub fn precision(&self) -> u8 {
        self.precision
    }

    /// Adds a stored cell (from a state file or an aggregates file), merging with what is there.
    pub fn add_cell(
        &mut self,
        metric: &'static str,
        period: Period,
        cell: TableCell,
    ) -> Result<(), SketchError> {
        if cell.sketch.precision() != self.precision {
            return Err(SketchError::Precision(
                self.precision,
                cell.sketch.precision(),
            ));
        }
        if let Some(h) = cell
            .hll_sketch
            .as_ref()
            .filter(|h| h.lg_k() != self.precision)
        {
            return Err(SketchError::Precision(self.precision, h.lg_k()));
        }
        match self.cells.get_mut(&(metric, period)) {
            Some(mine) => mine.merge(cell)?,
            None => {
                self.cells.insert((metric, period), cell);
            }
        }
        Ok(())
    }

    /// Adds every cell of `other`.
    pub fn merge(&mut self, other: MetricTable) -> Result<(), SketchError> {
        for ((metric, period), cell) in other.cells {
            self.add_cell(metric, period, cell)?;
        }
        Ok(())
    }

    /// The cells that hold counted events, for storing.
    pub fn cells(&self) -> impl Iterator<Item = (&'static str, Period, &TableCell)> + '_ {
        self.cells
            .iter()
            .filter(|(_, c)| c.events > 0)
            .map(|((m, p), c)| (*m, *p, c))
    }

    /// The first stored period that no registry can have written an event in: one ending
    /// before `times` start or starting after they end. A file that holds one is refused where
    /// it is read ([`crate::cmd`]): every table is written dense from its first to its last
    /// period, and a damaged or hostile file with a period in the year 9999 would ask for
    /// millions of rows.
    pub fn first_outside(&self, times: &TimeWindow) -> Option<Period> {
        self.cells
            .keys()
            .map(|(_, period)| *period)
            .find(|p| p.end().is_none_or(|end| end <= times.first_day) || p.start >= times.end_day)
    }

    /// First and last period of a kind holding a counted event.
    fn span(&self, kind: PeriodKind) -> Option<(Period, Period)> {
        let mut periods = self.cells().map(|(_, p, _)| p).filter(|p| p.kind == kind);
        let first = periods.next()?;
        Some(periods.fold((first, first), |(lo, hi), p| (lo.min(p), hi.max(p))))
    }

    /// Distinct users and events of every metric over the UTC days `since` (inclusive) to
    /// `until` (exclusive), merged from the daily cells, in [`metric_names`] order.
    ///
    /// Days a table holds no cell for had no counted event, unless the table was built before
    /// it kept days (regtally 0.3 and the first 0.4 nights): a week wholly inside the range
    /// whose events its days do not add up to is such a gap, and an error, not a silent
    /// undercount.
    pub fn over_days(
        &self,
        since: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<DistinctUsers>, String> {
        let in_range = |p: &Period| p.start >= since && p.start < until;
        let mut out = Vec::new();
        for metric in metric_names() {
            let mut sketch = UserSketch::new(self.precision);
            let mut events = 0;
            let days = self
                .cells
                .range((metric, Period::day_of(since))..(metric, Period::day_of(until)));
            for ((_, period), cell) in days {
                debug_assert!(period.kind == PeriodKind::Day && in_range(period));
                sketch.merge(&cell.sketch).map_err(|e| e.to_string())?;
                events += cell.events;
            }
            for ((_, week), cell) in self
                .cells
                .range((metric, Period::week_of(since))..(metric, Period::week_of(until)))
            {
                let whole = week.start >= since && week.end().is_some_and(|e| e <= until);
                let of_days: u64 = self
                    .cells
                    .range(
                        (metric, Period::day_of(week.start))
                            ..(metric, Period::day_of(week.start + chrono::Days::new(7))),
                    )
                    .map(|(_, c)| c.events)
                    .sum();
                if whole && cell.events != of_days {
                    return Err(format!(
                        "week {week} holds {} {} events but its days {of_days}: the days before this state kept daily sketches (regtally 0.4) are not there; rebuild the state from the logs to ask about them",
                        cell.events,
                        short_name(metric)
                    ));
                }
            }
            out.push(DistinctUsers {
                metric,
                unique_users: sketch.estimate(),
                bounds: sketch.bounds(),
                events,
            });
        }
        Ok(out)
    }

    /// One row per metric and period, dense from the first to the last period with a counted
    /// event, sorted by metric name, period kind and start (SPEC §8 and §9).
    pub fn into_rows(mut self) -> Vec<MetricRow> {
        let mut periods = Vec::new();
        for kind in [PeriodKind::Day, PeriodKind::Month, PeriodKind::Week] {
            if let Some((lo, hi)) = self.span(kind) {
                periods.extend(Period::span(lo, hi));
            }
        }
        let mut rows = Vec::with_capacity(periods.len() * 6);
        for metric in metric_names() {
            for &period in &periods {
                let cell = self
                    .cells
                    .remove(&(metric, period))
                    .unwrap_or_else(|| TableCell::empty(self.precision));
                rows.push(MetricRow::new(metric, period, cell));
            }
        }
        rows.sort_by(|a, b| (a.metric, a.period).cmp(&(b.metric, b.period)));
        rows
    }
}

/// The distinct users and events of one metric over a range of days.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistinctUsers {
    pub metric: &'static str,
    pub unique_users: i64,
    /// The 95% confidence interval of `unique_users`.
    pub bounds: Bounds,
    pub events: u64,
}

/// One metric in one period: its two sketches and its exact event count.
#[derive(Clone, Debug)]
pub struct TableCell {
    pub sketch: UserSketch,
    /// `None` when some of the cell's users came from a state written before the column
    /// existed: those users were never hashed for it, and a sketch without them would be
    /// wrong without saying so.
    pub hll_sketch: Option<WarehouseSketch>,
    pub events: u64,
}

impl TableCell {
    /// A cell with no users and no events.
    pub fn empty(precision: u8) -> TableCell {
        TableCell {
            sketch: UserSketch::new(precision),
            hll_sketch: Some(WarehouseSketch::new(precision)),
            events: 0,
        }
    }

    fn merge(&mut self, other: TableCell) -> Result<(), SketchError> {
        self.sketch.merge(&other.sketch)?;
        self.hll_sketch = match (self.hll_sketch.take(), other.hll_sketch) {
            (Some(mut mine), Some(theirs)) => {
                mine.merge(&theirs)?;
                Some(mine)
            }
            _ => None,
        };
        self.events += other.events;
        Ok(())
    }
}

/// One row of `aggregates.parquet`.
#[derive(Clone, Debug)]
pub struct MetricRow {
    pub metric: &'static str,
    pub period: Period,
    pub unique_users: i64,
    /// The 95% confidence interval of `unique_users`.
    pub bounds: Bounds,
    pub events: i64,
    pub sketch: UserSketch,
    pub hll_sketch: Option<WarehouseSketch>,
}

impl MetricRow {
    fn new(metric: &'static str, period: Period, mut cell: TableCell) -> MetricRow {
        MetricRow {
            metric,
            period,
            unique_users: cell.sketch.estimate(),
            bounds: cell.sketch.bounds(),
            events: i64::try_from(cell.events).unwrap_or(i64::MAX),
            sketch: cell.sketch,
            hll_sketch: cell.hll_sketch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::classify::{TrackedEvent, TOTAL_METRIC};
    use crate::test_support::{d, u};
    /// Periods that end before 2015 or start after the day after "today" are outside what a
    /// registry can have written; the weeks and months around the edges are inside.
    #[test]
    fn first_outside_finds_a_period_no_registry_wrote() {
        let times = TimeWindow::until_day_after(d(2026, 11, 30));
        let table = |day: NaiveDate| {
            let mut agg = Aggregate::default();
            agg.add(TrackedEvent::PushTag, d(2021, 1, 4), u(1));
            agg.add(TrackedEvent::PushTag, day, u(1));
            agg.into_table(10)
        };
        for inside in [d(2015, 1, 1), d(2026, 12, 1)] {
            assert_eq!(table(inside).first_outside(&times), None, "{inside}");
        }
        for outside in [d(2014, 12, 28), d(2026, 12, 2), d(9999, 1, 4)] {
            let found = table(outside).first_outside(&times).unwrap();
            // One of the far day's periods, not one of 2021-01-04's.
            assert!(
                found.start < d(2015, 1, 1) || found.start > d(2026, 1, 1),
                "{found}"
            );
        }
    }

    #[test]
    fn rows_are_dense_sorted_and_total_is_the_union() {
        let mut agg = Aggregate::default();
        agg.add(TrackedEvent::PushTag, d(2021, 1, 3), u(10));
        agg.add(TrackedEvent::DeleteTag, d(2021, 1, 3), u(10));
        agg.add(TrackedEvent::DeleteTag, d(2021, 1, 3), u(11));
        agg.add(TrackedEvent::PushTag, d(2021, 1, 20), u(12));
        // A deploy token's: in its own metric, not in the users' total.
        agg.add(TrackedEvent::PushTagByDeployToken, d(2021, 1, 3), u(99));
        let rows = agg.into_table(14).into_rows();
        // Days 2021-01-03..2021-01-20 (18), weeks 2020-W53..2021-W03 (4) and month 2021-01
        // (1): 23 periods x 11 metrics.
        assert_eq!(rows.len(), 253);
        let keys: Vec<(&str, &str, NaiveDate)> = rows
            .iter()
            .map(|r| (r.metric, r.period.kind.as_str(), r.period.start))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(rows[0].period.to_string(), "2021-01-03");
        assert_eq!(rows[17].period.to_string(), "2021-01-20");
        assert_eq!(rows[18].period.to_string(), "2021-01");
        assert_eq!(rows[19].period.to_string(), "2020-W53");
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
        let day = find(TOTAL_METRIC, "2021-01-03");
        assert_eq!((day.unique_users, day.events), (2, 3));
        let quiet_day = find(TOTAL_METRIC, "2021-01-04");
        assert_eq!((quiet_day.unique_users, quiet_day.events), (0, 0));
        let token = find("i_container_registry_push_tag_deploy_token", "2020-W53");
        assert_eq!((token.unique_users, token.events), (1, 1));
    }

    #[test]
    fn merged_tables_equal_one_table_of_both_inputs() {
        // Sparse, dense, and one side dense while the other is sparse.
        for (a_users, b_users) in [(30, 40), (20_000, 15_000), (20_000, 25), (25, 20_000)] {
            let mut a = Aggregate::default();
            let mut b = Aggregate::default();
            let mut both = Aggregate::default();
            for i in 0..a_users {
                a.add(TrackedEvent::PushTag, d(2021, 1, 4), u(i));
                both.add(TrackedEvent::PushTag, d(2021, 1, 4), u(i));
            }
            for i in 0..b_users {
                b.add(TrackedEvent::PushTag, d(2021, 1, 6), u(i + 7));
                both.add(TrackedEvent::PushTag, d(2021, 1, 6), u(i + 7));
            }
            b.add(TrackedEvent::DeleteTag, d(2021, 3, 1), u(1));
            both.add(TrackedEvent::DeleteTag, d(2021, 3, 1), u(1));
            let mut merged = a.into_table(14);
            merged.merge(b.into_table(14)).unwrap();
            let mut got = merged.into_rows();
            let mut want = both.into_table(14).into_rows();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter_mut().zip(want.iter_mut()) {
                assert_eq!(
                    (g.metric, g.period, g.unique_users, g.events),
                    (w.metric, w.period, w.unique_users, w.events)
                );
                assert!(
                    g.sketch.to_bytes() == w.sketch.to_bytes(),
                    "{a_users}+{b_users}: {} {}",
                    g.metric,
                    g.period
                );
            }
        }
        assert!(MetricTable::new(12)
            .merge(Aggregate::default().into_table(14))
            .is_ok());
        let mut one = Aggregate::default();
        one.add(TrackedEvent::PushTag, d(2021, 1, 4), u(1));
        assert!(MetricTable::new(12).merge(one.into_table(14)).is_err());
    }

    #[test]
    fn nothing_counted_gives_no_rows() {
        assert!(Aggregate::default().into_table(14).into_rows().is_empty());
    }
}
