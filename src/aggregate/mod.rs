//! Aggregating: counted events to per-period users and event counts, then to sketches (SPEC §8).
//!
//! The hot path only records which users were seen in which period (a set of identity hashes
//! per tracked event and period) and counts events. Sketches are built once per period at the
//! end: inserting every event into a sparse HyperLogLog++ costs far more than a set insert, and
//! the sets hold nothing the sketches would not.

pub mod period;
pub mod sketch;

use crate::aggregate::period::{Period, PeriodKind};
use crate::aggregate::sketch::{sparse_code, SketchError, UserSketch, WarehouseSketch};
use crate::classify::{metric_names, short_name, EventKind, TrackedEvent, TOTAL_METRIC};
use crate::keys::PassThroughHasher;
use crate::ledger::replay::ResolvedPush;
use crate::output::redis::hll::WeekIds;
use crate::read::user_ids::IdsByUser;
use crate::records::{Action, EventRecord, ReportedUser};
use crate::timestamp::{DateCache, TimeWindow, Timestamp};
use chrono::NaiveDate;
use datasketches::hll::Coupon;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

/// Where each user lands in the `hll_sketch` column, by identity hash: parse threads report
/// each user's coupon about once per run ([`crate::records::ParseRules::run`]), not with every
/// record.
pub type UserCoupons = HashMap<u64, Coupon, BuildHasherDefault<PassThroughHasher>>;

/// Users and events of one tracked event in one period.
///
/// The users' identity hashes are appended as events come, and sorted and cut to one of each
/// whenever the list has doubled since it last was: an append writes at the list's end, which
/// stays in cache for every day of a year of cells, where a hash set's insert read a random
/// place of one of a year of tables (the fold's largest stall on 4M events). The list holds
/// at most about twice the cell's distinct users.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub events: u64,
    users: Vec<u64>,
    /// How many of `users` were one of each when last cut.
    distinct: usize,
}

/// The fewest users a list holds before it is first cut.
const FIRST_CUT: usize = 64;

impl Cell {
    fn add(&mut self, user: u64) {
        self.events += 1;
        self.users.push(user);
        self.cut_if_doubled();
    }

    fn merge_from(&mut self, other: &Cell) {
        self.events += other.events;
        self.users.extend_from_slice(&other.users);
        self.cut_if_doubled();
    }

    /// Cuts the list once it has doubled since it was last cut.
    fn cut_if_doubled(&mut self) {
        if self.users.len() >= (2 * self.distinct).max(FIRST_CUT) {
            self.cut();
        }
    }

    /// Sorts the users and keeps one of each.
    fn cut(&mut self) {
        self.users.sort_unstable();
        self.users.dedup();
        self.distinct = self.users.len();
    }

    /// The cell's users, one of each, sorted.
    fn distinct_users(mut self) -> Vec<u64> {
        self.cut();
        self.users
    }
}

impl PartialEq for Cell {
    fn eq(&self, other: &Cell) -> bool {
        self.events == other.events
            && self.clone().distinct_users() == other.clone().distinct_users()
    }
}

/// A quick hasher for the few small integers of a cell's key: std's SipHash, made to resist
/// hostile keys, was a visible share of the fold, and these keys come from a handful of
/// metrics and periods.
#[derive(Default)]
struct CellKeyHasher(u64);

impl std::hash::Hasher for CellKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_i32(&mut self, v: i32) {
        self.write_u64(v as u32 as u64);
    }

    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }
}

/// The mergeable state of the metrics: per-chunk folds and the final reduce are the same code.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    cells: HashMap<(TrackedEvent, Period), Cell, BuildHasherDefault<CellKeyHasher>>,
    /// Where each user lands in the `hll_sketch` column, by identity hash.
    coupons: UserCoupons,
    /// With the Redis export: counted users' names and JWT ids, by identity hash.
    gitlab_users: HashMap<u64, ReportedUser, BuildHasherDefault<PassThroughHasher>>,
}

impl Aggregate {
    /// Counts one event by a user on a UTC date.
    ///
    /// Only the day's cell: weeks and months are rolled up from the days at the end
    /// ([`Aggregate::into_table`]), once per user and day instead of once per event.
    pub fn add(&mut self, event: TrackedEvent, date: NaiveDate, user: u64) {
        self.cells
            .entry((event, Period::day_of(date)))
            .or_default()
            .add(user);
    }

    /// The day cells gathered into the periods `period_of` puts each day in, each the union of
    /// its days.
    fn rolled_up(
        &self,
        period_of: fn(NaiveDate) -> Period,
    ) -> HashMap<(TrackedEvent, Period), Cell> {
        let mut to = HashMap::<(TrackedEvent, Period), Cell>::new();
        for ((event, day), cell) in &self.cells {
            if day.kind == PeriodKind::Day {
                let c = to.entry((*event, period_of(day.start))).or_default();
                c.merge_from(cell);
            }
        }
        to
    }

    /// Learns where users land in the `hll_sketch` column.
    pub fn learn_users(&mut self, users: impl IntoIterator<Item = (u64, Coupon)>) {
        self.coupons.extend(users);
    }

    /// Learns counted users' names and JWT ids (for the Redis export).
    pub fn learn_gitlab_users(&mut self, users: impl IntoIterator<Item = (u64, ReportedUser)>) {
        for (hash, user) in users {
            match self.gitlab_users.entry(hash) {
                std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().merge(user),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(user);
                }
            }
        }
    }

    /// The GitLab ids of each tracked event's users per ISO week, each user's id taken from
    /// `csv` (`--user-ids`) or else from its events' JWT; users with neither are left out
    /// and counted.
    pub fn gitlab_weeks(&self, csv: &IdsByUser) -> RedisExport {
        let mut unresolved = std::collections::BTreeSet::new();
        let mut export = RedisExport::default();
        for ((event, week), cell) in self.rolled_up(Period::week_of) {
            let users = cell.distinct_users();
            let mut ids: Vec<u64> = Vec::with_capacity(users.len());
            for hash in users {
                let reported = self.gitlab_users.get(&hash);
                match csv.get(&hash).copied().or(reported.and_then(|r| r.jwt_id)) {
                    Some(id) => ids.push(id),
                    None => {
                        let name =
                            reported.map_or_else(|| format!("{hash:016x}"), |r| r.name.to_string());
                        unresolved.insert(name);
                    }
                }
            }
            ids.sort_unstable();
            ids.dedup();
            if !ids.is_empty() {
                export.weeks.0.insert((event, week.start), ids);
            }
        }
        export.unresolved_users = unresolved.len() as u64;
        export.unresolved_names = unresolved.into_iter().take(UNRESOLVED_NAMES).collect();
        export
    }

    /// Adds everything `other` counted.
    pub fn merge(mut self, other: Aggregate) -> Aggregate {
        let (mut big, small) = if self.cells.len() >= other.cells.len() {
            (std::mem::take(&mut self), other)
        } else {
            (other, std::mem::take(&mut self))
        };
        // The cells both hold are merged on every core (each merge may sort a day's users:
        // on one core this was a step of its own between reading and the ledger, and again
        // after the ledger); the others only move.
        big.cells.par_iter_mut().for_each(|(key, cell)| {
            if let Some(theirs) = small.cells.get(key) {
                cell.merge_from(theirs);
            }
        });
        for (key, cell) in small.cells {
            big.cells.entry(key).or_insert(cell);
        }
        if big.coupons.len() < small.coupons.len() {
            let mine = std::mem::replace(&mut big.coupons, small.coupons);
            big.coupons.extend(mine);
        } else {
            big.coupons.extend(small.coupons);
        }
        big.learn_gitlab_users(small.gitlab_users);
        big
    }

    /// The sketches of every non-empty cell and of the union row, built on every core.
    ///
    /// Each day cell's users become the sorted codes of both sketches ([`CellUsers`]); a
    /// week's or month's are the sorted union of its days', and a period's union row the
    /// sorted union of its cells'. Each sketch is then built in one pass from its codes
    /// (`UserSketch::of_codes`), which gives the bytes inserting the users one by one gives
    /// (`rolled_up_and_union_rows_equal_sketches_of_their_users`).
    pub fn into_table(self, precision: u8) -> MetricTable {
        let coupons = &self.coupons;
        let days: Vec<(TrackedEvent, Period, CellUsers)> = self
            .cells
            .into_par_iter()
            .map(|((event, day), cell)| (event, day, CellUsers::of(cell, precision, coupons)))
            .collect();
        let mut parts: HashMap<(TrackedEvent, Period), Vec<&CellUsers>> = HashMap::new();
        for (event, day, users) in &days {
            for period in [Period::week_of(day.start), Period::month_of(day.start)] {
                parts.entry((*event, period)).or_default().push(users);
            }
        }
        let rolled_up: Vec<(TrackedEvent, Period, CellUsers)> = parts
            .into_par_iter()
            .map(|((event, period), days)| (event, period, CellUsers::union(&days)))
            .collect();
        let mut by_period: HashMap<Period, Vec<(TrackedEvent, &CellUsers)>> = HashMap::new();
        for (event, period, users) in days.iter().chain(&rolled_up) {
            by_period.entry(*period).or_default().push((*event, users));
        }
        let rows: Vec<(&'static str, Period, TableCell)> = by_period
            .into_par_iter()
            .flat_map_iter(|(period, cells)| {
                let all: Vec<&CellUsers> = cells.iter().map(|(_, users)| *users).collect();
                let total = CellUsers::union(&all).table_cell(precision);
                cells
                    .into_iter()
                    .map(move |(event, users)| {
                        (event.metric_name(), period, users.table_cell(precision))
                    })
                    .chain([(TOTAL_METRIC, period, total)])
            })
            .collect();
        let mut table = MetricTable::new(precision);
        for (metric, period, cell) in rows {
            table.cells.insert((metric, period), cell);
        }
        table
    }
}

/// One cell's events, and its users as the sorted, distinct codes of both sketches: what
/// its sketches are built from, and what a longer period's cell is the union of.
struct CellUsers {
    events: u64,
    /// [`sparse_code`]s of the users' identity hashes.
    codes: Vec<u32>,
    /// The users' `hll_sketch` coupons.
    coupons: Vec<Coupon>,
}

impl CellUsers {
    fn of(cell: Cell, precision: u8, coupons: &UserCoupons) -> CellUsers {
        let mut codes: Vec<u32> = cell
            .users
            .iter()
            .map(|&h| sparse_code(precision, h))
            .collect();
        codes.sort_unstable();
        codes.dedup();
        // Every counted user's coupon was learned from its chunk (`Aggregate::learn_users`).
        let mut coupons: Vec<Coupon> = cell
            .users
            .iter()
            .filter_map(|h| coupons.get(h).copied())
            .collect();
        coupons.sort_unstable();
        coupons.dedup();
        CellUsers {
            events: cell.events,
            codes,
            coupons,
        }
    }

    /// The cell of all these cells' events and users.
    fn union(parts: &[&CellUsers]) -> CellUsers {
        let codes: Vec<&[u32]> = parts.iter().map(|p| &p.codes[..]).collect();
        let coupons: Vec<&[Coupon]> = parts.iter().map(|p| &p.coupons[..]).collect();
        CellUsers {
            events: parts.iter().map(|p| p.events).sum(),
            codes: union_of_sorted(&codes),
            coupons: union_of_sorted(&coupons),
        }
    }

    fn table_cell(&self, precision: u8) -> TableCell {
        TableCell {
            sketch: UserSketch::of_codes(precision, &self.codes),
            hll_sketch: Some(WarehouseSketch::of_users(precision, &self.coupons)),
            events: self.events,
        }
    }
}

/// The sorted union, without repeats, of sorted lists without repeats, merged pairwise.
fn union_of_sorted<T: Ord + Copy>(lists: &[&[T]]) -> Vec<T> {
    match lists {
        [] => Vec::new(),
        [one] => one.to_vec(),
        _ => {
            let (left, right) = lists.split_at(lists.len() / 2);
            let (a, b) = (union_of_sorted(left), union_of_sorted(right));
            let mut out = Vec::with_capacity(a.len() + b.len());
            let (mut i, mut j) = (0, 0);
            // Without a branch on which side is smaller: the codes are random, and the
            // mispredicted branches of a plain merge took most of its time.
            while i < a.len() && j < b.len() {
                let (x, y) = (a[i], b[j]);
                out.push(x.min(y));
                i += usize::from(x <= y);
                j += usize::from(y <= x);
            }
            out.extend_from_slice(&a[i..]);
            out.extend_from_slice(&b[j..]);
            out
        }
    }
}

/// How many unresolved users the summary names.
const UNRESOLVED_NAMES: usize = 5;

/// What a run has for GitLab's Redis counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RedisExport {
    pub weeks: WeekIds,
    /// Counted users (in the weeks of this run) with no GitLab id: not exported.
    pub unresolved_users: u64,
    /// The first few of them, in byte order.
    pub unresolved_names: Vec<String>,
}

/// Events per action. The four actions the registry sends are counted in an array: hashing
/// every event's action into a map was a visible share of the fold.
///
/// Other action names are counted by name for the [`MAX_OTHER_ACTIONS`] first names in byte
/// order (a log that names a new action in every event must not fill memory); the rest are
/// counted together under [`OTHER_ACTIONS`]. Which names are kept does not depend on the
/// order events come in.
#[derive(Clone, Debug, Default)]
pub struct ActionCounts {
    known: [u64; 4],
    other: BTreeMap<Box<str>, u64>,
    /// Events of the names past the limit.
    others: u64,
}

/// The most action names other than the registry's four counted by name.
pub const MAX_OTHER_ACTIONS: usize = 1000;

/// The name under which further action names are counted together.
pub const OTHER_ACTIONS: &str = "(other actions)";

impl ActionCounts {
    fn add(&mut self, action: &Action) {
        match action {
            Action::Push => self.known[0] += 1,
            Action::Delete => self.known[1] += 1,
            Action::Pull => self.known[2] += 1,
            Action::Mount => self.known[3] += 1,
            Action::Other(name) => self.add_other(name, 1),
        }
    }

    fn add_other(&mut self, name: &str, n: u64) {
        if let Some(count) = self.other.get_mut(name) {
            *count += n;
            return;
        }
        let past_the_last = self.other.len() == MAX_OTHER_ACTIONS
            && self
                .other
                .last_key_value()
                .is_some_and(|(last, _)| name > &**last);
        if past_the_last {
            self.others += n;
            return;
        }
        self.other.insert(name.into(), n);
        if self.other.len() > MAX_OTHER_ACTIONS {
            if let Some((_, evicted)) = self.other.pop_last() {
                self.others += evicted;
            }
        }
    }

    fn merge(&mut self, o: ActionCounts) {
        for (a, b) in self.known.iter_mut().zip(o.known) {
            *a += b;
        }
        self.others += o.others;
        for (name, n) in o.other {
            self.add_other(&name, n);
        }
    }

    /// Every action seen at least once, by name.
    pub fn into_map(self) -> BTreeMap<String, u64> {
        let known = [Action::Push, Action::Delete, Action::Pull, Action::Mount];
        known
            .iter()
            .map(Action::as_str)
            .zip(self.known)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| (name.to_owned(), n))
            .chain(self.other.into_iter().map(|(name, n)| (name.into(), n)))
            .chain((self.others > 0).then(|| (OTHER_ACTIONS.to_owned(), self.others)))
            .collect()
    }
}

/// Counts of de-duplicated events that the summary reports, folded beside the [`Aggregate`].
#[derive(Clone, Debug, Default)]
pub struct EventCounts {
    pub out_of_range: u64,
    pub manifest_deletes: u64,
    pub by_action: ActionCounts,
    /// Counted events by tracked event ([`TrackedEvent::index`]).
    pub counted: [u64; TrackedEvent::ALL.len()],
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
}

impl EventCounts {
    fn merge(&mut self, o: EventCounts) {
        self.out_of_range += o.out_of_range;
        self.manifest_deletes += o.manifest_deletes;
        self.by_action.merge(o.by_action);
        for (a, b) in self.counted.iter_mut().zip(o.counted) {
            *a += b;
        }
        self.first = self.first.into_iter().chain(o.first).min();
        self.last = self.last.into_iter().chain(o.last).max();
    }
}

/// The fold of first deliveries: who did what in which period, and the summary's counts.
/// Folds made apart (per part of the ledger, per spill) merge into the same result.
#[derive(Clone, Debug, Default)]
pub struct Fold {
    pub aggregate: Aggregate,
    pub counts: EventCounts,
    /// Events' UTC dates.
    pub dates: DateCache,
}

impl Fold {
    /// Folds a first delivery (SPEC §4, §5, §7). `in_range` says whether its UTC date is
    /// inside `--since`/`--until`; the date is passed back, for the ledger. A repository push
    /// is counted later, once the ledger has resolved it ([`Fold::resolved_push`]).
    pub fn first_delivery(&mut self, r: &EventRecord, in_range: bool, date: NaiveDate) {
        let n = &mut self.counts;
        n.by_action.add(&r.action);
        n.first = Some(n.first.map_or(r.time, |t| t.min(r.time)));
        n.last = Some(n.last.map_or(r.time, |t| t.max(r.time)));
        if !in_range {
            n.out_of_range += 1;
        } else if r.kind == EventKind::ManifestDelete {
            n.manifest_deletes += 1;
        } else if let (Some(event), Some(user)) = (r.kind.tracked(), r.user) {
            self.aggregate.add(event, date, user);
            n.counted[event.index()] += 1;
        }
    }

    /// Counts a repository push the ledger resolved.
    pub fn resolved_push(&mut self, p: ResolvedPush) {
        let date = self.dates.date(p.time);
        self.aggregate.add(p.event, date, p.user);
        self.counts.counted[p.event.index()] += 1;
    }

    /// Adds everything `other` folded.
    pub fn merge(self, other: Fold) -> Fold {
        let mut counts = self.counts;
        counts.merge(other.counts);
        Fold {
            aggregate: self.aggregate.merge(other.aggregate),
            counts,
            dates: self.dates,
        }
    }
}

/// Sketches and exact event counts per metric and period: what a run writes, a state keeps,
/// and the next run merges its own into.
///
/// Merging two tables gives the bytes one table built from both inputs would have: sketch
/// merge is register-wise max (or the union of sparse codes), and event counts add.
#[derive(Clone, Debug)]
pub struct MetricTable {
    precision: u8,
    cells: BTreeMap<(&'static str, Period), TableCell>,
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
            events: i64::try_from(cell.events).unwrap_or(i64::MAX),
            sketch: cell.sketch,
            hll_sketch: cell.hll_sketch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::{d, u};

    #[test]
    fn other_action_names_are_counted_by_name_up_to_a_limit() {
        let mut a = ActionCounts::default();
        let mut b = ActionCounts::default();
        // Arriving from the last name to the first: the first names in byte order are kept.
        for i in (0..MAX_OTHER_ACTIONS + 10).rev() {
            a.add(&Action::Other(format!("a{i:05}").into()));
        }
        b.add(&Action::Other("a00000".into()));
        b.add(&Action::Other("a99999".into()));
        b.add(&Action::Pull);
        a.merge(b);
        let map = a.into_map();
        assert_eq!(map.len(), MAX_OTHER_ACTIONS + 2);
        assert_eq!(map["a00000"], 2);
        assert!(map.contains_key(&format!("a{:05}", MAX_OTHER_ACTIONS - 1)));
        assert_eq!(map[OTHER_ACTIONS], 11);
        assert_eq!(map["pull"], 1);
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
        assert_eq!(merged.cells, whole.cells);
        let day = Period::day_of(d(2021, 1, 3));
        assert_eq!(merged.cells[&(TrackedEvent::PushTag, day)].events, 2);
        // Weeks and months are rolled up from the days: 2021-01-03 and -04 fall in two weeks
        // and one month.
        let weeks = merged.rolled_up(Period::week_of);
        let months = merged.rolled_up(Period::month_of);
        let week = |y, m, dd| (TrackedEvent::PushTag, Period::week_of(d(y, m, dd)));
        assert_eq!(weeks[&week(2021, 1, 3)].events, 2);
        assert_eq!(weeks[&week(2021, 1, 4)].events, 1);
        let month = (TrackedEvent::PushTag, Period::month_of(d(2021, 1, 1)));
        assert_eq!(months[&month].events, 3);
        assert_eq!(months[&month].clone().distinct_users().len(), 2);
    }

    /// Folds that share cells merge into the fold of all their events, whichever is larger,
    /// the shared cells' users and events added up (merged on every core) and the others
    /// moved.
    #[test]
    fn folds_sharing_cells_merge_into_one_fold() {
        let day = |n| d(2021, 1, n);
        let mut whole = Aggregate::default();
        let (mut a, mut b) = (Aggregate::default(), Aggregate::default());
        for i in 0..3000u32 {
            // Days 1-5 in both folds, day 6 only in the first, day 7 only in the second;
            // users repeat, so the shared cells' lists are cut as they merge.
            let n = 1 + i % 7;
            let event = [TrackedEvent::PushTag, TrackedEvent::DeleteTag][(i % 2) as usize];
            let add = (event, day(n), u(i % 400));
            whole.add(add.0, add.1, add.2);
            if n == 6 || (n != 7 && i % 3 == 0) {
                a.add(add.0, add.1, add.2);
            } else {
                b.add(add.0, add.1, add.2);
            }
        }
        let shared = a.cells.keys().filter(|k| b.cells.contains_key(*k)).count();
        assert_eq!(shared, 10);
        for merged in [a.clone().merge(b.clone()), b.merge(a)] {
            assert_eq!(merged.cells, whole.cells);
        }
    }

    /// Every cell's sketches, whether a day's, a week's or a month's rolled up from its
    /// days, or a period's union row, are byte for byte those of inserting the cell's users
    /// one by one, sparse or dense.
    #[test]
    fn rolled_up_and_union_rows_equal_sketches_of_their_users() {
        let events = [
            TrackedEvent::PushTag,
            TrackedEvent::DeleteTag,
            TrackedEvent::CreateRepository,
            TrackedEvent::PushRepository,
            TrackedEvent::DeleteRepository,
        ];
        let days = [d(2021, 1, 4), d(2021, 1, 6), d(2021, 1, 10), d(2021, 1, 11)];
        // Users per cell and day: all small; one past the sparse limit; all past it.
        for sizes in [[3, 40, 0, 120, 7], [50, 9000, 300, 1, 2000], [7000; 5]] {
            let mut agg = Aggregate::default();
            let mut users: HashMap<(&str, Period), std::collections::HashSet<u64>> = HashMap::new();
            for (k, (event, n)) in events.iter().zip(sizes).enumerate() {
                for (j, day) in days.iter().enumerate() {
                    // Each day shares some users with the others, and cells share some.
                    for i in 0..n {
                        let user = u((k as u32) * 3000 + (j as u32) * (n / 2 + 1) + i);
                        agg.add(*event, *day, user);
                        for period in [Period::day_of(*day), Period::week_of(*day)]
                            .into_iter()
                            .chain([Period::month_of(*day)])
                        {
                            for metric in [event.metric_name(), TOTAL_METRIC] {
                                users.entry((metric, period)).or_default().insert(user);
                            }
                        }
                    }
                }
            }
            let coupon = |h: u64| Coupon::from_value(h);
            let all: Vec<u64> = users.values().flatten().copied().collect();
            agg.learn_users(all.iter().map(|&h| (h, coupon(h))));
            let mut rows = agg.into_table(14).into_rows();
            let mut checked = 0;
            for row in rows.iter_mut().filter(|r| r.events > 0) {
                let cell_users = &users[&(row.metric, row.period)];
                let mut inserted = UserSketch::new(14);
                cell_users.iter().for_each(|&h| inserted.insert(h));
                let coupons: Vec<Coupon> = cell_users.iter().map(|&h| coupon(h)).collect();
                let what = format!("{sizes:?} {} {}", row.metric, row.period);
                assert!(row.sketch.to_bytes() == inserted.to_bytes(), "{what}");
                let hll = row.hll_sketch.as_ref().unwrap().to_bytes();
                assert!(
                    hll == WarehouseSketch::of_users(14, &coupons).to_bytes(),
                    "{what}"
                );
                checked += 1;
            }
            // Four days, two weeks, one month: each a cell per non-empty event and a total.
            let non_empty = sizes.iter().filter(|&&n| n > 0).count();
            assert_eq!(checked, 7 * (non_empty + 1), "{sizes:?}");
        }
    }

    /// A cell's list of users is cut to one of each as it doubles, so it holds at most about
    /// twice its distinct users, and merging cells keeps every user.
    #[test]
    fn cells_hold_each_user_once_within_twice_their_users() {
        let mut cell = Cell::default();
        for i in 0..100_000u32 {
            cell.add(u(i % 1000));
            assert!(cell.users.len() <= 2 * 1000 + 1, "{i}");
        }
        let mut other = Cell::default();
        (990..1010).for_each(|i| other.add(u(i)));
        cell.merge_from(&other);
        assert_eq!(cell.events, 100_020);
        let mut want: Vec<u64> = (0..1010).map(u).collect();
        want.sort_unstable();
        assert_eq!(cell.distinct_users(), want);
    }

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
    fn union_of_sorted_lists() {
        let lists: [&[u32]; 5] = [&[1, 4, 9], &[], &[2, 4, 10, 11], &[0], &[4, 11, 12]];
        assert_eq!(union_of_sorted(&lists), [0, 1, 2, 4, 9, 10, 11, 12]);
        assert_eq!(union_of_sorted::<u32>(&[]), Vec::<u32>::new());
        assert_eq!(union_of_sorted(&lists[..1]), [1, 4, 9]);
    }

    #[test]
    fn rows_are_dense_sorted_and_total_is_the_union() {
        let mut agg = Aggregate::default();
        agg.add(TrackedEvent::PushTag, d(2021, 1, 3), u(10));
        agg.add(TrackedEvent::DeleteTag, d(2021, 1, 3), u(10));
        agg.add(TrackedEvent::DeleteTag, d(2021, 1, 3), u(11));
        agg.add(TrackedEvent::PushTag, d(2021, 1, 20), u(12));
        let rows = agg.into_table(14).into_rows();
        // Days 2021-01-03..2021-01-20 (18), weeks 2020-W53..2021-W03 (4) and month 2021-01
        // (1): 23 periods x 6 metrics.
        assert_eq!(rows.len(), 138);
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
