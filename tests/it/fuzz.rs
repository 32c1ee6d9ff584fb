//! Fuzz tests on stable Rust: a seeded mutation loop feeds the readers of stored bytes (both
//! sketch columns, the state file and `aggregates.parquet`) damaged inputs. None may panic;
//! each refusal must say something.
//!
//! `REGTALLY_FUZZ_ROUNDS` sets how many inputs each reader gets: 2,000 by default, so that
//! `cargo test` stays quick; CI runs 100,000 (about two minutes), and a million makes a longer
//! hunt. A failure prints the round and input that caused it.

use crate::support::Rng;
use datasketches::hll::Coupon;
use regtally::aggregate::sketch::{UserSketch, WarehouseSketch};
use regtally::aggregate::Aggregate;
use regtally::classify::TrackedEvent;
use regtally::keys::{identity_coupon, identity_hash};
use regtally::ledger::{PriorLedger, ReplayedLedger, RepositoryLedger};
use regtally::output::aggregates::{read_aggregates_from, write_aggregates, AggregatesMetadata};
use regtally::state::RunState;
use regtally::timestamp::TimeWindow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn rounds() -> u64 {
    std::env::var("REGTALLY_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2_000)
}

/// An index below `n` (0 for an empty range).
fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n.max(1) as u64) as usize
}

/// One to four mutations of `seed`: bit flips, random or boundary bytes and words, inserted,
/// deleted or repeated runs, truncation.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + below(rng, 4) {
        let at = below(rng, b.len());
        match below(rng, 8) {
            0 if !b.is_empty() => b[at] ^= 1 << below(rng, 8),
            1 if !b.is_empty() => b[at] = rng.next() as u8,
            2 => {
                let word: [u8; 4] = match below(rng, 4) {
                    0 => [0; 4],
                    1 => [0xff; 4],
                    2 => (below(rng, 300) as u32).to_le_bytes(),
                    _ => [0x7f, 0xff, 0xff, 0xff],
                };
                for (i, w) in word.iter().enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *w;
                    }
                }
            }
            3 => b.insert(at.min(b.len()), rng.next() as u8),
            4 if !b.is_empty() => {
                let n = 1 + below(rng, 16);
                b.drain(at..(at + n).min(b.len()));
            }
            5 if !b.is_empty() => {
                let n = 1 + below(rng, 64);
                let run: Vec<u8> = b[at..(at + n).min(b.len())].to_vec();
                b.splice(at..at, run);
            }
            6 => b.truncate(at),
            _ if !b.is_empty() => b[at] = [0, 1, 0x7f, 0x80, 0xff][below(rng, 5)],
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

/// Runs `read` on `rounds()` mutations of the seeds; fails on a panic or an empty refusal.
fn fuzz(what: &str, seeds: &[Vec<u8>], mut read: impl FnMut(&[u8]) -> Result<(), String>) {
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ what.len() as u64);
    let (mut refused, mut accepted) = (0u64, 0u64);
    // The seeds themselves are read.
    for s in seeds {
        assert_eq!(read(s), Ok(()), "{what}: a valid seed is refused");
    }
    for round in 0..rounds() {
        let seed = &seeds[round as usize % seeds.len()];
        let input = mutate(&mut rng, seed);
        match catch_unwind(AssertUnwindSafe(|| read(&input))) {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(why)) => {
                assert!(!why.trim().is_empty(), "{what}: a refusal says nothing");
                refused += 1;
            }
            Err(_) => panic!(
                "{what}: round {round} panicked on {} bytes: {}",
                input.len(),
                input.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        }
    }
    // A loop that refuses everything at the first byte tests nothing beyond it.
    assert!(refused > 0, "{what}: nothing was refused");
    eprintln!("{what}: {accepted} accepted, {refused} refused");
}

fn users(names: impl Iterator<Item = String>) -> (Vec<u64>, Vec<(u64, Coupon)>) {
    let mut coupons = Vec::new();
    let hashes = names
        .map(|n| {
            let h = identity_hash(&n);
            coupons.push((h, identity_coupon(&n)));
            h
        })
        .collect();
    (hashes, coupons)
}

/// Cells of a few sizes (days, a week, a month): sparse and dense sketches of both kinds.
/// The times a registry can have written, as a run on 2026-11-30 takes them.
fn times() -> TimeWindow {
    TimeWindow::until_day_after(chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap())
}

fn aggregate() -> Aggregate {
    let mut agg = Aggregate::default();
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2023, 1, d).unwrap();
    for (k, (event, n)) in [
        (TrackedEvent::PushTag, 3),
        (TrackedEvent::DeleteTag, 40),
        (TrackedEvent::CreateRepository, 900),
    ]
    .into_iter()
    .enumerate()
    {
        let (hashes, coupons) = users((0..n).map(|i| format!("u{k}-{i}")));
        agg.learn_users(coupons);
        for (i, h) in hashes.into_iter().enumerate() {
            // Three days: every kind of cell, and seeds small enough for 100,000 rounds.
            agg.add(event, day(1 + (i as u32 % 3)), h);
        }
    }
    agg
}

#[test]
fn sketch_column_reader_never_panics() {
    let mut seeds = Vec::new();
    for (precision, n) in [(4, 2), (10, 30), (10, 3000), (14, 200)] {
        let mut s = UserSketch::new(precision);
        (0..n).for_each(|i| s.insert(identity_hash(&format!("u{i}"))));
        seeds.push(s.to_bytes());
    }
    fuzz("sketch", &seeds, |b| {
        UserSketch::from_bytes(b)
            .map(|mut s| {
                // What a reader does next must not panic either.
                s.estimate();
                let _ = s.clone().merge(&UserSketch::new(s.precision()));
                s.to_bytes();
            })
            .map_err(|e| e.to_string())
    });
}

#[test]
fn hll_sketch_column_reader_never_panics() {
    let mut seeds = Vec::new();
    // List, set and dense HLL_8 modes.
    for (lg_k, n) in [(4, 3), (12, 5), (12, 200), (10, 5000)] {
        let coupons: Vec<Coupon> = (0..n).map(|i| identity_coupon(&format!("u{i}"))).collect();
        seeds.push(WarehouseSketch::of_users(lg_k, &coupons).to_bytes());
    }
    fuzz("hll_sketch", &seeds, |b| {
        WarehouseSketch::from_bytes(b)
            .map(|s| {
                s.estimate();
                let _ = s.clone().merge(&WarehouseSketch::new(s.lg_k()));
                s.to_bytes();
            })
            .map_err(|e| e.to_string())
    });
}

#[test]
fn state_loader_never_panics() {
    let ledger = RepositoryLedger::seeded(["g/a", "g/b"]);
    let mut state = RunState::empty(10, PriorLedger::of(&ledger));
    state.metrics = aggregate().into_table(10);
    state.recent_ids = vec![(1, 1_672_531_200), (u128::MAX, 1_672_617_600)];
    let mut file = Vec::new();
    let replayed = ReplayedLedger::whole(&ledger, true);
    state.write(14, &replayed, &mut file).unwrap();
    let inner = zstd::decode_all(&file[..]).unwrap();
    let path = Path::new("regtally-state.bin.zst");
    let mut rng = Rng::new(7);
    // Most damage goes inside the compression, where the loader's own checks are.
    fuzz("state", &[inner], |b| {
        let compressed = if below(&mut rng, 8) == 0 {
            mutate(&mut rng, &file)
        } else {
            zstd::encode_all(b, 1).unwrap()
        };
        RunState::from_bytes(path, &compressed, None, PriorLedger::new(None))
            .map(|s| {
                // As `run` and `report` do: a period no registry can have written refuses it.
                if s.metrics.first_outside(&times()).is_none() {
                    s.metrics.into_rows();
                }
            })
            .map_err(|e| e.to_string())
    });
}

#[test]
fn aggregates_reader_never_panics() {
    let meta = AggregatesMetadata {
        precision: 10,
        since: None,
        until: None,
    };
    let mut file = Vec::new();
    let mut rows = aggregate().into_table(10).into_rows();
    write_aggregates(&mut rows, &meta, &mut file).unwrap();
    let times = times();
    fuzz("aggregates.parquet", &[file], |b| {
        read_aggregates_from("aggregates.parquet", bytes::Bytes::copy_from_slice(b))
            .map(|t| {
                // As `report` does: a period no registry can have written refuses the file.
                if t.first_outside(&times).is_none() {
                    t.into_rows();
                }
            })
            .map_err(|e| e.to_string())
    });
}
