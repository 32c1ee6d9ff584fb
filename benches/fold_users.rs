//! The memory of a year of days with many users each, in the fold alone (no logs to read):
//! what the per-day users of `regtally run` take, as lists or, once dense, as sketches.
//!
//! `fold_users DAYS USERS_A_DAY POPULATION [--lists]`: folds USERS_A_DAY distinct users a day
//! (drawn from POPULATION users) into one tracked event for DAYS days, on all cores, then
//! builds every sketch. `--lists` keeps every day a list, as regtally did before 0.5 (and does
//! with `--redis`). Prints the peak resident memory, the seconds, and a digest of the table's
//! sketch bytes, which must be the same with and without `--lists`.

use chrono::{Days, NaiveDate};
use rayon::prelude::*;
use regtally::aggregate::users::UserCoupons;
use regtally::aggregate::Aggregate;
use regtally::classify::TrackedEvent;
use regtally::keys::{identity_coupon, identity_hash};
use std::sync::Arc;
use std::time::Instant;

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: fold_users DAYS USERS_A_DAY POPULATION [--lists]");
        std::process::exit(2);
    }
    let number = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let (days, per_day, population) = (number(0), number(1), number(2).max(1));
    let lists = args.iter().any(|a| a == "--lists");
    let started = Instant::now();
    let coupons = Arc::new(UserCoupons::default());
    let hashes: Vec<u64> = (0..population)
        .into_par_iter()
        .map(|i| {
            let name = format!("user{i}");
            coupons.insert_all([(identity_hash(&name), identity_coupon(&name))]);
            identity_hash(&name)
        })
        .collect();
    let first = NaiveDate::from_ymd_opt(2025, 1, 1).expect("a date");
    let densify = (!lists).then_some(14);
    // A fold per core and stretch of days, merged at the end, as a run's folds are.
    let aggregate = (0..days)
        .into_par_iter()
        .fold(
            || Aggregate::new(coupons.clone(), densify),
            |mut agg, day| {
                let date = first + Days::new(day);
                let mut rng = fastrand::Rng::with_seed(day);
                let start = rng.u64(..population);
                for i in 0..per_day.min(population) {
                    let user = hashes[((start + i * 7919) % population) as usize];
                    agg.add(TrackedEvent::PushTag, date, user);
                }
                agg
            },
        )
        .reduce(
            || Aggregate::new(coupons.clone(), densify),
            Aggregate::merge,
        );
    let folded = peak_mib();
    let mut rows = aggregate.into_table(14).into_rows();
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    for row in rows.iter_mut() {
        digest.update(&row.sketch.to_bytes());
        if let Some(h) = &row.hll_sketch {
            digest.update(&h.to_bytes());
        }
    }
    println!(
        "{} days x {} users a day of {}: {}: peak {:.0} MiB after the fold, {:.0} MiB in all, {:.1} s, sketches {:016x}",
        days,
        per_day,
        population,
        if lists { "lists" } else { "dense days" },
        folded,
        peak_mib(),
        started.elapsed().as_secs_f64(),
        digest.digest()
    );
}
