//! Who was counted when: the users of each tracked event per UTC day, as the fold gathers them,
//! and at the end the sketches of every day, week, month and union row built from them.
//!
//! The hot path only appends a user's identity hash to its day's list and counts the event.
//! Sketches are built once per cell at the end, from the sorted codes of its users: inserting
//! every event into a sparse HyperLogLog++ costs far more than an append, and the lists hold
//! nothing the sketches would not. Weeks and months are the unions of their days.
//!
//! A day with so many users that both its sketches are dense is held as those sketches
//! instead ([`DenseUsers`]): their size is fixed by the precision, not by the users, and a
//! dense sketch's bytes depend only on its registers, which are the same however the users
//! came in. So a year of days with hundreds of thousands of users each takes the same memory
//! as a year of days with thousands, and every byte of the outputs is what the lists give.

use super::period::{Period, PeriodKind};
use super::sketch::{sparse_code, UserSketch, WarehouseSketch};
use super::table::{MetricTable, TableCell};
use crate::classify::{ActorKind, TrackedEvent, TOTAL_METRIC};
use crate::keys::PassThroughHasher;
use crate::records::ReportedUser;
use chrono::NaiveDate;
use datasketches::hll::Coupon;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, RwLock};

type CouponMap = HashMap<u64, Coupon, BuildHasherDefault<PassThroughHasher>>;

/// Where each user lands in the `hll_sketch` column, by identity hash: filled by the parse
/// tasks (each user about once per thread and run, [`crate::parse::chunk::ParseRules::run`])
/// before their chunk is folded, and read by the folds, which may need any user's coupon at
/// any time once a day is dense. Shards keep the parse tasks' writes from queuing behind
/// each other.
pub struct UserCoupons {
    shards: Vec<RwLock<CouponMap>>,
}

const COUPON_SHARDS: usize = 64;

/// A user's shard, by the top bits of its identity hash (the maps use the low ones).
fn shard_of(hash: u64) -> usize {
    (hash >> 58) as usize % COUPON_SHARDS
}

impl Default for UserCoupons {
    fn default() -> UserCoupons {
        UserCoupons {
            shards: (0..COUPON_SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

impl std::fmt::Debug for UserCoupons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserCoupons({} users)", self.len())
    }
}

impl UserCoupons {
    fn shard(&self, hash: u64) -> &RwLock<CouponMap> {
        &self.shards[shard_of(hash)]
    }

    /// Learns where users land.
    pub fn insert_all(&self, users: impl IntoIterator<Item = (u64, Coupon)>) {
        for (hash, coupon) in users {
            self.shard(hash)
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(hash, coupon);
        }
    }

    /// Where a counted user lands (every counted user's coupon is learned before its events
    /// are folded).
    pub fn get(&self, hash: u64) -> Option<Coupon> {
        self.shard(hash)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .copied()
    }

    /// Every shard read-locked at once, for many lookups with no lock each: building the
    /// sketches looks up every user of every day.
    fn read_all(&self) -> CouponsRead<'_> {
        CouponsRead(
            self.shards
                .iter()
                .map(|s| s.read().unwrap_or_else(|p| p.into_inner()))
                .collect(),
        )
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn entries(&self) -> Vec<(u64, Coupon)> {
        self.shards
            .iter()
            .flat_map(|s| {
                let map = s.read().unwrap_or_else(|p| p.into_inner());
                map.iter().map(|(h, c)| (*h, *c)).collect::<Vec<_>>()
            })
            .collect()
    }
}

/// [`UserCoupons`] read-locked whole.
struct CouponsRead<'a>(Vec<std::sync::RwLockReadGuard<'a, CouponMap>>);

impl CouponsRead<'_> {
    fn get(&self, hash: u64) -> Option<Coupon> {
        self.0[shard_of(hash)].get(&hash).copied()
    }
}

/// Users and events of one tracked event in one period.
///
/// The users' identity hashes are appended as events come, and sorted and cut to one of each
/// whenever the list has doubled since it last was: an append writes at the list's end, which
/// stays in cache for every day of a year of cells, where a hash set's insert read a random
/// place of one of a year of tables (the fold's largest stall on 4M events). The list holds
/// at most about twice the cell's distinct users, until they are enough for both sketches to
/// be dense: then the cell holds the sketches ([`Densify`]).
#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub events: u64,
    users: Vec<u64>,
    /// How many of `users` were one of each when last cut.
    distinct: usize,
    /// The sketches of the cell's users, once both are dense; `users` is empty then.
    dense: Option<Box<DenseUsers>>,
}

/// A cell's users as its two sketches, both dense.
#[derive(Clone, Debug)]
struct DenseUsers {
    sketch: UserSketch,
    hll: WarehouseSketch,
}

impl DenseUsers {
    fn insert(&mut self, user: u64, coupons: &UserCoupons) {
        self.sketch.insert(user);
        if let Some(c) = coupons.get(user) {
            self.hll.insert(c);
        }
    }

    fn merge(&mut self, other: &DenseUsers) {
        // Both come from one run's cells, of one precision.
        let _ = self.sketch.merge(&other.sketch);
        let _ = self.hll.merge(&other.hll);
    }
}

/// When a cell's users turn into sketches: from `1 << precision >> 2` distinct users on, at
/// each cut, once the sketches of its users are both dense. With the Redis export cells stay
/// lists, whose weeks' users it writes one by one. Only an aggregate that densifies holds
/// dense cells, so every merge of one has this rule at hand.
#[derive(Clone, Copy, Debug)]
struct Densify<'a> {
    precision: u8,
    /// The aggregate's table of coupons.
    coupons: &'a UserCoupons,
}

/// The rule of an aggregate that densifies at `at` (a precision), reading `coupons`.
fn densify_rule(at: Option<u8>, coupons: &UserCoupons) -> Option<Densify<'_>> {
    at.map(|precision| Densify { precision, coupons })
}

impl Densify<'_> {
    /// The dense sketches of these users (sorted, one of each), if both are dense.
    fn sketches(&self, users: &[u64]) -> Option<DenseUsers> {
        if users.len() < (1usize << self.precision) / 4 {
            return None;
        }
        let mut codes: Vec<u32> = users
            .iter()
            .map(|&h| sparse_code(self.precision, h))
            .collect();
        codes.sort_unstable();
        codes.dedup();
        if !UserSketch::codes_are_dense(self.precision, &codes) {
            return None;
        }
        let coupons: Vec<Coupon> = users.iter().filter_map(|&h| self.coupons.get(h)).collect();
        let hll = WarehouseSketch::of_users(self.precision, &coupons);
        hll.is_dense().then(|| DenseUsers {
            sketch: UserSketch::of_codes(self.precision, &codes),
            hll,
        })
    }
}

/// The fewest users a list holds before it is first cut.
const FIRST_CUT: usize = 64;

impl Cell {
    fn add(&mut self, user: u64, densify: Option<&Densify>) {
        self.events += 1;
        match (&mut self.dense, densify) {
            (Some(dense), Some(d)) => dense.insert(user, d.coupons),
            _ => {
                self.users.push(user);
                self.cut_if_doubled(densify);
            }
        }
    }

    fn merge_from(&mut self, other: &Cell, densify: Option<&Densify>) {
        self.events += other.events;
        match (&mut self.dense, &other.dense, densify) {
            (Some(mine), Some(theirs), _) => mine.merge(theirs),
            (Some(mine), None, Some(d)) => {
                for &u in &other.users {
                    mine.insert(u, d.coupons);
                }
            }
            (None, Some(theirs), Some(d)) => {
                let mut dense = theirs.clone();
                for &u in &self.users {
                    dense.insert(u, d.coupons);
                }
                self.users = Vec::new();
                self.distinct = 0;
                self.dense = Some(dense);
            }
            _ => {
                self.users.extend_from_slice(&other.users);
                self.cut_if_doubled(densify);
            }
        }
    }

    /// Cuts the list once it has doubled since it was last cut.
    fn cut_if_doubled(&mut self, densify: Option<&Densify>) {
        if self.users.len() >= (2 * self.distinct).max(FIRST_CUT) {
            self.cut();
            if let Some(dense) = densify.and_then(|d| d.sketches(&self.users)) {
                self.users = Vec::new();
                self.distinct = 0;
                self.dense = Some(Box::new(dense));
            }
        }
    }

    /// Sorts the users and keeps one of each.
    fn cut(&mut self) {
        self.users.sort_unstable();
        self.users.dedup();
        self.distinct = self.users.len();
    }

    /// The cell's users, one of each, sorted (a cell of the Redis export, never dense).
    pub(super) fn distinct_users(mut self) -> Vec<u64> {
        self.cut();
        self.users
    }
}

impl PartialEq for Cell {
    fn eq(&self, other: &Cell) -> bool {
        let sketches = |c: &Cell| {
            c.dense
                .as_ref()
                .map(|d| (d.sketch.clone().to_bytes(), d.hll.to_bytes()))
        };
        self.events == other.events
            && sketches(self) == sketches(other)
            && self.clone().distinct_users() == other.clone().distinct_users()
    }
}

/// The mergeable state of the metrics: per-chunk folds and the final reduce are the same code.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    /// FxHash: std's SipHash, made to resist hostile keys, was a visible share of the fold,
    /// and these keys come from a handful of metrics and periods.
    cells: FxHashMap<(TrackedEvent, Period), Cell>,
    /// Where each user lands in the `hll_sketch` column, by identity hash: shared by every
    /// fold of a run.
    coupons: Arc<UserCoupons>,
    /// Whether (and at which precision) cells with many users turn into sketches.
    densify_at: Option<u8>,
    /// With the Redis export: counted users' names and JWT ids, by identity hash.
    pub(super) gitlab_users: HashMap<u64, ReportedUser, BuildHasherDefault<PassThroughHasher>>,
}

impl Aggregate {
    /// An empty aggregate reading users' coupons from `coupons` (which the run's parse tasks
    /// fill); with `densify_at`, a precision, cells with many users turn into its sketches.
    pub fn new(coupons: Arc<UserCoupons>, densify_at: Option<u8>) -> Aggregate {
        Aggregate {
            coupons,
            densify_at,
            ..Aggregate::default()
        }
    }

    /// Counts one event by a user on a UTC date.
    ///
    /// Only the day's cell: weeks and months are rolled up from the days at the end
    /// ([`Aggregate::into_table`]), once per user and day instead of once per event.
    pub fn add(&mut self, event: TrackedEvent, date: NaiveDate, user: u64) {
        let rule = densify_rule(self.densify_at, &self.coupons);
        self.cells
            .entry((event, Period::day_of(date)))
            .or_default()
            .add(user, rule.as_ref());
    }

    /// The day cells gathered into the periods `period_of` puts each day in, each the union of
    /// its days.
    pub(super) fn rolled_up(
        &self,
        period_of: fn(NaiveDate) -> Period,
    ) -> HashMap<(TrackedEvent, Period), Cell> {
        let rule = densify_rule(self.densify_at, &self.coupons);
        let mut to = HashMap::<(TrackedEvent, Period), Cell>::new();
        for ((event, day), cell) in &self.cells {
            if day.kind == PeriodKind::Day {
                let c = to.entry((*event, period_of(day.start))).or_default();
                c.merge_from(cell, rule.as_ref());
            }
        }
        to
    }

    /// Each day cell's tracked event, day, events and distinct users (sorted), for an aggregate
    /// that keeps every cell a list (made without `densify_at`): what a Spark task hands on
    /// to the tasks that build the cells' sketches.
    pub fn into_day_lists(self) -> Vec<(TrackedEvent, NaiveDate, u64, Vec<u64>)> {
        self.cells
            .into_iter()
            .filter(|((_, period), _)| period.kind == PeriodKind::Day)
            .map(|((event, day), cell)| {
                debug_assert!(cell.dense.is_none(), "a day held as sketches has no list");
                (event, day.start, cell.events, cell.distinct_users())
            })
            .collect()
    }

    /// Learns where users land in the `hll_sketch` column.
    pub fn learn_users(&mut self, users: impl IntoIterator<Item = (u64, Coupon)>) {
        self.coupons.insert_all(users);
    }

    /// Adds everything `other` counted.
    pub fn merge(mut self, other: Aggregate) -> Aggregate {
        let (mut big, small) = if self.cells.len() >= other.cells.len() {
            (std::mem::take(&mut self), other)
        } else {
            (other, std::mem::take(&mut self))
        };
        // The cells both hold are merged on every core (each merge may sort a day's users,
        // and folds merge twice a run, after reading and after the ledger); the others only
        // move.
        // The folds of a run share one table; folds made apart (tests) each have their own.
        if !Arc::ptr_eq(&big.coupons, &small.coupons) {
            big.coupons.insert_all(small.coupons.entries());
        }
        big.densify_at = big.densify_at.or(small.densify_at);
        let rule = densify_rule(big.densify_at, &big.coupons);
        big.cells.par_iter_mut().for_each(|(key, cell)| {
            if let Some(theirs) = small.cells.get(key) {
                cell.merge_from(theirs, rule.as_ref());
            }
        });
        for (key, cell) in small.cells {
            big.cells.entry(key).or_insert(cell);
        }
        big.learn_gitlab_users(small.gitlab_users);
        big
    }

    /// The sketches of every non-empty cell and of the union row, built on every core.
    ///
    /// Each day cell's users become the sorted codes of both sketches ([`CellUsers`]), or are
    /// its dense sketches already; a week's or month's are the sorted union of its days' (or
    /// the union of their sketches, when one is dense), and a period's union row the union of
    /// its cells'. Each sketch of codes is then built in one pass (`UserSketch::of_codes`),
    /// which gives the bytes inserting the users one by one gives
    /// (`rolled_up_and_union_rows_equal_sketches_of_their_users`).
    pub fn into_table(self, precision: u8) -> MetricTable {
        let coupons = &self.coupons.read_all();
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
            .map(|((event, period), days)| (event, period, CellUsers::union(&days, precision)))
            .collect();
        let mut by_period: HashMap<Period, Vec<(TrackedEvent, &CellUsers)>> = HashMap::new();
        for (event, period, users) in days.iter().chain(&rolled_up) {
            by_period.entry(*period).or_default().push((*event, users));
        }
        let rows: Vec<(&'static str, Period, TableCell)> = by_period
            .into_par_iter()
            .flat_map_iter(|(period, cells)| {
                // The total is the users' union: deploy tokens are not users (SPEC §8).
                let all: Vec<&CellUsers> = cells
                    .iter()
                    .filter(|(event, _)| event.actor() == ActorKind::User)
                    .map(|(_, users)| *users)
                    .collect();
                let total = CellUsers::union(&all, precision).table_cell(precision);
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

/// One cell's events, and its users as the sorted, distinct codes of both sketches, or as
/// both sketches once dense: what its sketches are built from, and what a longer period's
/// cell is the union of.
struct CellUsers {
    events: u64,
    users: Users,
}

enum Users {
    Listed {
        /// [`sparse_code`]s of the users' identity hashes.
        codes: Vec<u32>,
        /// The users' `hll_sketch` coupons.
        coupons: Vec<Coupon>,
    },
    Dense(Box<DenseUsers>),
}

impl CellUsers {
    fn of(cell: Cell, precision: u8, coupons: &CouponsRead) -> CellUsers {
        if let Some(dense) = cell.dense {
            return CellUsers {
                events: cell.events,
                users: Users::Dense(dense),
            };
        }
        let mut codes: Vec<u32> = cell
            .users
            .iter()
            .map(|&h| sparse_code(precision, h))
            .collect();
        codes.sort_unstable();
        codes.dedup();
        // Every counted user's coupon was learned before its events were folded.
        let mut coupons: Vec<Coupon> = cell.users.iter().filter_map(|&h| coupons.get(h)).collect();
        coupons.sort_unstable();
        coupons.dedup();
        CellUsers {
            events: cell.events,
            users: Users::Listed { codes, coupons },
        }
    }

    /// The cell of all these cells' events and users: the sorted union of their lists, or,
    /// when one is dense, the union of their sketches (dense too, being of more users), into
    /// which the lists' users go as they are.
    fn union(parts: &[&CellUsers], precision: u8) -> CellUsers {
        let events = parts.iter().map(|p| p.events).sum();
        let mut dense: Option<DenseUsers> = None;
        let mut codes: Vec<&[u32]> = Vec::new();
        let mut coupons: Vec<&[Coupon]> = Vec::new();
        for p in parts {
            match &p.users {
                Users::Listed {
                    codes: c,
                    coupons: k,
                } => {
                    codes.push(c);
                    coupons.push(k);
                }
                Users::Dense(d) => match &mut dense {
                    Some(all) => all.merge(d),
                    None => dense = Some((**d).clone()),
                },
            }
        }
        let users = match dense {
            None => Users::Listed {
                codes: union_of_sorted(&codes),
                coupons: union_of_sorted(&coupons),
            },
            Some(mut all) => {
                let _ = all
                    .sketch
                    .merge(&UserSketch::dense_of_codes(precision, &codes));
                all.hll.insert_all(&coupons);
                Users::Dense(Box::new(all))
            }
        };
        CellUsers { events, users }
    }

    fn table_cell(&self, precision: u8) -> TableCell {
        let (sketch, hll) = match &self.users {
            Users::Listed { codes, coupons } => (
                UserSketch::of_codes(precision, codes),
                WarehouseSketch::of_users(precision, coupons),
            ),
            Users::Dense(d) => (d.sketch.clone(), d.hll.clone()),
        };
        TableCell {
            sketch,
            hll_sketch: Some(hll),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{d, u};
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
        // Users per cell and day: all small; one past the sparse limit; all past it; with
        // cells turned dense, some days dense and others not.
        let coupon = |h: u64| Coupon::from_value(h);
        let cases = [
            ([3, 40, 0, 120, 7], false),
            ([50, 9000, 300, 1, 2000], false),
            ([7000; 5], false),
            ([50, 9000, 300, 1, 2000], true),
            ([20000, 5000, 20000, 300, 9000], true),
        ];
        for (sizes, densify) in cases {
            // Turning dense, the events go to two folds that share the run's table of coupons,
            // merged after: cells dense in one and listed in the other merge too.
            let table = Arc::new(UserCoupons::default());
            let new = || match densify {
                false => Aggregate::default(),
                true => Aggregate::new(table.clone(), Some(14)),
            };
            let (mut agg, mut other) = (new(), new());
            let mut users: HashMap<(&str, Period), std::collections::HashSet<u64>> = HashMap::new();
            for (k, (event, n)) in events.iter().zip(sizes).enumerate() {
                for (j, day) in days.iter().enumerate() {
                    // Each day shares some users with the others, and cells share some.
                    for i in 0..n {
                        let user = u((k as u32) * 3000 + (j as u32) * (n / 2 + 1) + i);
                        if densify {
                            table.insert_all([(user, coupon(user))]);
                        }
                        if i % 5 == 0 {
                            other.add(*event, *day, user);
                        } else {
                            agg.add(*event, *day, user);
                        }
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
            let dense = |a: &Aggregate| a.cells.values().filter(|c| c.dense.is_some()).count();
            let dense_before = (dense(&agg), dense(&other));
            let mut agg = agg.merge(other);
            assert_eq!(
                densify && sizes.iter().any(|&n| n >= 9000),
                dense(&agg) > 0,
                "{sizes:?}: dense cells"
            );
            if sizes[0] == 20000 {
                assert!(
                    dense_before.0 > 0 && dense_before.1 == 0,
                    "{dense_before:?}"
                );
            }
            let all: Vec<u64> = users.values().flatten().copied().collect();
            agg.learn_users(all.iter().map(|&h| (h, coupon(h))));
            let mut rows = agg.into_table(14).into_rows();
            let mut checked = 0;
            for row in rows.iter_mut().filter(|r| r.events > 0) {
                let cell_users = &users[&(row.metric, row.period)];
                let mut inserted = UserSketch::new(14);
                cell_users.iter().for_each(|&h| inserted.insert(h));
                let coupons: Vec<Coupon> = cell_users.iter().map(|&h| coupon(h)).collect();
                let what = format!("{sizes:?} {densify} {} {}", row.metric, row.period);
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
            cell.add(u(i % 1000), None);
            assert!(cell.users.len() <= 2 * 1000 + 1, "{i}");
        }
        let mut other = Cell::default();
        (990..1010).for_each(|i| other.add(u(i), None));
        cell.merge_from(&other, None);
        assert_eq!(cell.events, 100_020);
        let mut want: Vec<u64> = (0..1010).map(u).collect();
        want.sort_unstable();
        assert_eq!(cell.distinct_users(), want);
    }

    #[test]
    fn union_of_sorted_lists() {
        let lists: [&[u32]; 5] = [&[1, 4, 9], &[], &[2, 4, 10, 11], &[0], &[4, 11, 12]];
        assert_eq!(union_of_sorted(&lists), [0, 1, 2, 4, 9, 10, 11, 12]);
        assert_eq!(union_of_sorted::<u32>(&[]), Vec::<u32>::new());
        assert_eq!(union_of_sorted(&lists[..1]), [1, 4, 9]);
    }
}
