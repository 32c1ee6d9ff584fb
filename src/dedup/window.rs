//! The ids a nightly state keeps for the next night's de-duplication (`--dedup-window`): the
//! first deliveries of the last days of event time, gathered as the folds see them.

use crate::timestamp::Timestamp;

/// The event-time window of ids a state keeps (see `crate::state::RunState::trim_ids`).
#[derive(Clone, Copy, Debug)]
pub struct IdWindow {
    pub days: u32,
    /// The latest time, in seconds, taken as the newest event.
    pub not_after: i64,
}

/// Ids and times of first deliveries inside the state's window, pruned as the run goes by
/// the newest time seen so far (the final trim, by the newest of all, keeps no more).
pub struct RecentIds {
    window: Option<IdWindow>,
    ids: Vec<(u128, Timestamp)>,
    newest: i64,
    /// Length at which to prune next.
    prune_at: usize,
}

impl RecentIds {
    pub fn new(window: Option<IdWindow>) -> RecentIds {
        RecentIds {
            window,
            ids: Vec::new(),
            newest: i64::MIN,
            prune_at: 1 << 16,
        }
    }

    pub fn push(&mut self, id: u128, time: Timestamp) {
        let Some(w) = self.window else {
            return;
        };
        self.newest = self.newest.max(time.secs.min(w.not_after));
        self.ids.push((id, time));
        if self.ids.len() >= self.prune_at {
            let cutoff = self.newest.saturating_sub(i64::from(w.days) * 86_400);
            self.ids.retain(|(_, t)| t.secs >= cutoff);
            self.prune_at = (self.ids.len() * 2).max(1 << 16);
        }
    }

    pub fn merge(mut self, other: RecentIds) -> RecentIds {
        self.newest = self.newest.max(other.newest);
        self.ids.extend(other.ids);
        self.prune_at = self.prune_at.max(other.prune_at);
        self
    }

    pub fn into_vec(self) -> Vec<(u128, Timestamp)> {
        self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 0 }
    }

    /// Once the list reaches 65,536 ids it is pruned to the window before the newest time
    /// seen, that time capped at `not_after` (one event dated years ahead must not empty the
    /// window); merged folds keep the ids of both.
    #[test]
    fn ids_older_than_the_window_are_pruned_as_the_list_grows() {
        let day = 86_400;
        let window = IdWindow {
            days: 2,
            not_after: 66 * day,
        };
        let mut none = RecentIds::new(None);
        none.push(1, at(0));
        assert!(none.into_vec().is_empty(), "no window, no ids");
        let mut ids = RecentIds::new(Some(window));
        for i in 0..70_000u128 {
            // Times climb a thousandth of a day per id; id 5 claims day 1,000.
            let t = if i == 5 {
                1_000 * day
            } else {
                i as i64 * day / 1_000
            };
            ids.push(i, at(t));
        }
        let mut kept: Vec<u128> = ids.into_vec().iter().map(|(id, _)| *id).collect();
        kept.sort_unstable();
        // Pruned at 65,536 ids: the newest time then is day 66 (capped), the window days 64
        // on, so ids from 64,000 stay, with id 5.
        let want: Vec<u128> = std::iter::once(5).chain(64_000..70_000).collect();
        assert_eq!(kept, want);

        let (mut a, mut b) = (RecentIds::new(Some(window)), RecentIds::new(Some(window)));
        (0..10).for_each(|i| a.push(i, at(i as i64)));
        (10..20).for_each(|i| b.push(i, at(i as i64)));
        let mut merged: Vec<u128> = a.merge(b).into_vec().iter().map(|(id, _)| *id).collect();
        merged.sort_unstable();
        assert_eq!(merged, (0..20).collect::<Vec<u128>>());
    }
}
