//! regtally: GitLab's container-registry usage metrics, computed in batch from archived
//! registry notification logs.
//!
//! The module tree is the data path (ARCHITECTURE.md has the whole picture). Imports point one
//! way: each group below uses only the groups above it.
//!
//! - The vocabulary every stage shares: [`timestamp`], [`keys`] (the hashes that stand for
//!   names, ids and paths), [`classify`] (tracked events, who is a user), [`records`] (what
//!   survives a chunk, rejects, the accounting of lines); and support: [`spill`] (the memory
//!   budget and the temporary files of the stages that buffer), [`cache_line`].
//! - The stages, in data order: [`read`] (inputs to chunks of lines), [`parse`] (a chunk to
//!   records and rejects), [`dedup`] (records to first deliveries), [`ledger`] (pushes and
//!   repository deletes replayed in time order), [`aggregate`] (first deliveries to per-day
//!   users, then sketches per metric and period).
//! - What a run is asked and what it computed: [`config`], [`tally`].
//! - [`state`] (what a nightly run carries into the next, and which inputs it reads), then
//!   [`output`] (the files, replaced all together), then [`pipeline`], which only wires the
//!   stages on the thread pool.
//! - [`cmd`] (one file per subcommand, flags checked before any log is read) and [`cli`].
//!
//! Two features cross the stages, the events dataset (`run --events`) and the Redis export
//! (`run --redis`, `redis-merge`): each stage keeps its part of them in a file of its own, and
//! ARCHITECTURE.md ("Features that cross stages") names those files.

// The vocabulary and support, below the stages.
pub mod cache_line;
pub mod classify;
pub mod keys;
pub mod records;
pub mod spill;
pub mod timestamp;

// The stages, in data order.
pub mod read;

pub mod parse;

pub mod dedup;

pub mod ledger;

pub mod aggregate;

// What a run is asked and what it computed, and what builds on them, in order.
pub mod config;
pub mod tally;

pub mod state;

pub mod output;

pub mod pipeline;

// The command line.
pub mod cmd;

pub mod cli;

/// Helpers shared by the unit tests.
#[cfg(test)]
mod test_support {
    use chrono::NaiveDate;

    /// A date; the tests' dates are all valid.
    pub fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    /// A user's identity hash: sketches need well-spread hashes, not small integers.
    pub fn u(n: u32) -> u64 {
        crate::keys::identity_hash(&format!("user{n}"))
    }

    /// Random numbers from `seed`: the same on every run.
    pub fn seeded(seed: u64) -> impl FnMut() -> u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        move || rng.u64(..)
    }
}
