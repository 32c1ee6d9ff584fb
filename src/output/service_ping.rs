//! `service_ping.json`: GitLab's Service Ping counters for one as-of date (SPEC §9).
//!
//! Weekly is the last complete ISO week before the week holding the as-of date; monthly is the
//! four complete ISO weeks before it (GitLab's 28-day frame), computed by merging the weekly
//! sketches, never from calendar months.

use crate::aggregate::period::{monday_of, Period, PeriodKind};
use crate::aggregate::sketch::UserSketch;
use crate::aggregate::MetricRow;
use crate::classify::{is_deploy_token_metric, metric_names, TOTAL_METRIC};
use chrono::{Days, NaiveDate};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A date range, start inclusive, end exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DateRange {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// The Service Ping time frames of one as-of date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimeFrames {
    pub weekly: DateRange,
    pub monthly: DateRange,
}

impl TimeFrames {
    /// The frames for `as_of`: both end at the Monday that starts the as-of week.
    pub fn for_date(as_of: NaiveDate) -> TimeFrames {
        let end = monday_of(as_of);
        TimeFrames {
            weekly: DateRange {
                start: end - Days::new(7),
                end,
            },
            monthly: DateRange {
                start: end - Days::new(28),
                end,
            },
        }
    }
}

/// The whole `service_ping.json` document.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServicePing {
    pub as_of: NaiveDate,
    pub time_frames: TimeFrames,
    pub redis_hll_counters: BTreeMap<&'static str, BTreeMap<String, i64>>,
}

impl ServicePing {
    /// Computes the counters from the weekly rows; weeks with no row count zero.
    pub fn compute(rows: &[MetricRow], as_of: NaiveDate, precision: u8) -> ServicePing {
        let frames = TimeFrames::for_date(as_of);
        let weekly: HashMap<(&str, NaiveDate), &UserSketch> = rows
            .iter()
            .filter(|r| r.period.kind == PeriodKind::Week)
            .map(|r| ((r.metric, r.period.start), &r.sketch))
            .collect();
        let users_over = |metric: &str, range: DateRange| -> i64 {
            let mut merged = UserSketch::new(precision);
            let mut week = Period::week_of(range.start);
            while week.start < range.end {
                if let Some(s) = weekly.get(&(metric, week.start)) {
                    // Rows of one run share its precision, so the merge cannot fail.
                    let _ = merged.merge(s);
                }
                match week.next() {
                    Some(n) => week = n,
                    None => break,
                }
            }
            merged.estimate()
        };
        let mut groups: BTreeMap<&'static str, BTreeMap<String, i64>> = BTreeMap::new();
        for metric in metric_names() {
            let counters = groups.entry(group_of(metric)).or_default();
            counters.insert(counter_key(metric, true), users_over(metric, frames.weekly));
            counters.insert(
                counter_key(metric, false),
                users_over(metric, frames.monthly),
            );
        }
        ServicePing {
            as_of,
            time_frames: frames,
            redis_hll_counters: groups,
        }
    }

    /// The counter of one tracked event (or of the total) for the weekly or monthly frame.
    pub fn counter(&self, metric: &str, weekly: bool) -> i64 {
        self.redis_hll_counters
            .get(group_of(metric))
            .and_then(|c| c.get(&counter_key(metric, weekly)))
            .copied()
            .unwrap_or(0)
    }
}

/// The group of `redis_hll_counters` a metric's counters are in: users' events and their union
/// in `user_container_registry` (GitLab's key paths since 15.9); deploy tokens' in
/// `deploy_token_container_registry`, beside them as GitLab keeps `deploy_token_packages`
/// beside `user_packages` (README, "Deploy tokens").
fn group_of(metric: &str) -> &'static str {
    if is_deploy_token_metric(metric) {
        "deploy_token_container_registry"
    } else {
        "user_container_registry"
    }
}

/// GitLab's key for a metric's weekly or monthly counter: `<event>_weekly`, and
/// `user_container_registry_total_unique_counts_weekly` for the union.
fn counter_key(metric: &str, weekly: bool) -> String {
    let suffix = if weekly { "weekly" } else { "monthly" };
    if metric == TOTAL_METRIC {
        format!("{TOTAL_METRIC}_unique_counts_{suffix}")
    } else {
        format!("{metric}_{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::classify::TrackedEvent;

    use crate::test_support::{d, u};

    #[test]
    fn frames_end_at_the_as_of_weeks_monday() {
        // 2023-02-01 is a Wednesday; its week starts Monday 2023-01-30.
        let f = TimeFrames::for_date(d(2023, 2, 1));
        assert_eq!(
            f.weekly,
            DateRange {
                start: d(2023, 1, 23),
                end: d(2023, 1, 30)
            }
        );
        assert_eq!(
            f.monthly,
            DateRange {
                start: d(2023, 1, 2),
                end: d(2023, 1, 30)
            }
        );
        // On a Monday the week just ended is the weekly frame.
        assert_eq!(
            TimeFrames::for_date(d(2023, 1, 30)).weekly.start,
            d(2023, 1, 23)
        );
    }

    #[test]
    fn monthly_merges_four_weeks_not_the_calendar_month() {
        let mut agg = Aggregate::default();
        agg.add(TrackedEvent::PushTag, d(2023, 1, 25), u(1)); // weekly frame
        agg.add(TrackedEvent::PushTag, d(2023, 1, 3), u(2)); // monthly frame only
        agg.add(TrackedEvent::PushTag, d(2023, 1, 1), u(3)); // January, but before the 28 days
        agg.add(TrackedEvent::PushTag, d(2023, 1, 31), u(4)); // the as-of week: not complete
        agg.add(TrackedEvent::DeleteTag, d(2023, 1, 10), u(1));
        let rows = agg.into_table(14).into_rows();
        let sp = ServicePing::compute(&rows, d(2023, 2, 1), 14);
        assert_eq!(sp.counter("i_container_registry_push_tag_user", true), 1);
        assert_eq!(sp.counter("i_container_registry_push_tag_user", false), 2);
        assert_eq!(sp.counter("i_container_registry_delete_tag_user", false), 1);
        assert_eq!(sp.counter(TOTAL_METRIC, false), 2);
        assert_eq!(sp.counter(TOTAL_METRIC, true), 1);
        let json = serde_json::to_value(&sp).unwrap();
        assert_eq!(json["as_of"], "2023-02-01");
        assert_eq!(json["time_frames"]["monthly"]["start"], "2023-01-02");
        assert_eq!(
            json["redis_hll_counters"]["user_container_registry"]
                ["user_container_registry_total_unique_counts_weekly"],
            1
        );
        assert_eq!(
            json["redis_hll_counters"]["user_container_registry"]
                .as_object()
                .unwrap()
                .len(),
            12
        );
    }
}
