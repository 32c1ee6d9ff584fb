//! The Redis export's part of aggregating (`run --redis`): the GitLab ids of each tracked
//! event's users per ISO week, which GitLab's live counters hold where the registry's events
//! hold names.

use super::period::Period;
use super::users::Aggregate;
use crate::classify::{actor_key, TrackedEvent};
use crate::read::user_ids::IdsByUser;
use crate::records::ReportedUser;
use chrono::NaiveDate;
use std::collections::BTreeMap;

/// GitLab ids (of users, or of deploy tokens for their events) per tracked event and ISO week
/// (by its Monday): what the Redis export
/// writes, and what a state keeps of it from night to night.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeekIds(pub BTreeMap<(TrackedEvent, NaiveDate), Vec<u64>>);

impl WeekIds {
    /// Adds `other`'s ids; each week's stay sorted and distinct.
    pub fn merge(&mut self, other: WeekIds) {
        for (key, ids) in other.0 {
            let mine = self.0.entry(key).or_default();
            mine.extend(ids);
            mine.sort_unstable();
            mine.dedup();
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

impl Aggregate {
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
                // A deploy token's id is the deploy token's, not that of a user of its name.
                let key = actor_key(hash, event.actor());
                let reported = self.gitlab_users.get(&key);
                match csv.get(&key).copied().or(reported.and_then(|r| r.jwt_id)) {
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
}
