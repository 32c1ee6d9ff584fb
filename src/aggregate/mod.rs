//! Aggregating (SPEC §7, §8): first deliveries and resolved repository pushes in; per-day users
//! and the summary's counts folded on every core, then sketches per metric and period out.
//!
//! A [`Fold`] is mergeable: each fold task takes one, the ledger's parts make their own, and
//! they merge at the end into the same result whatever the split ([`users`] holds the users,
//! [`table`] the sketches built from them).

pub mod gitlab_ids;
pub mod period;
pub mod sketch;
pub mod table;
pub mod users;

pub use gitlab_ids::{RedisExport, WeekIds};
pub use table::{DistinctUsers, MetricRow, MetricTable, TableCell};
pub use users::Aggregate;

use crate::classify::{ActorKind, EventKind, TrackedEvent};
use crate::ledger::replay::ResolvedPush;
use crate::records::{Action, EventRecord};
use crate::timestamp::{DateCache, Timestamp};
use chrono::NaiveDate;
use std::collections::BTreeMap;

/// Events per action. The four actions the registry sends are counted in an array: hashing
/// every event's action into a map was a visible share of the fold.
///
/// Other action names are counted by name for the [`MAX_OTHER_ACTIONS`] first names in byte
/// order (a log that names a new action in every event must not fill memory); the rest are
/// counted together under [`OTHER_ACTIONS`]. Which names are kept does not depend on the
/// order events come in.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
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
    /// Adds everything `o` counted (counts made apart, by the tasks of an engine, merge so).
    pub fn merge(&mut self, o: EventCounts) {
        self.out_of_range += o.out_of_range;
        self.manifest_deletes += o.manifest_deletes;
        self.by_action.merge(o.by_action);
        for (a, b) in self.counted.iter_mut().zip(o.counted) {
            *a += b;
        }
        self.first = self.first.into_iter().chain(o.first).min();
        self.last = self.last.into_iter().chain(o.last).max();
    }

    /// Counted events by tracked event's metric name, as the summary reports them.
    pub fn counted_by_metric(&self) -> BTreeMap<&'static str, u64> {
        TrackedEvent::ALL
            .iter()
            .map(|t| (t.metric_name(), self.counted[t.index()]))
            .collect()
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
            let event = if r.deploy_token {
                event.by(ActorKind::DeployToken)
            } else {
                event
            };
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
