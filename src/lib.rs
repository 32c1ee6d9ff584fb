//! regtally: GitLab's container-registry usage metrics, computed in batch from archived
//! registry notification logs.
//!
//! The modules follow the data: [`read`] (bytes to chunks of lines), [`parse`] (lines to
//! events), [`records`] (events to compact records and rejects), [`dedup`] (records to first
//! deliveries), [`classify`] and [`ledger`] (first deliveries to tracked events and repository
//! existence), [`aggregate`] and [`sketch`] (tracked events to per-period sketches), [`output`]
//! (sketches to files). [`pipeline`] only wires them; [`spill`] holds the memory budget and the
//! temporary files of the stages that buffer; [`state`] carries what a nightly run needs into
//! the next, and decides which inputs it reads; [`cli`], [`flags`] and [`cmd`] validate flags
//! before any log is read.

pub mod aggregate;
pub mod cache_line;
pub mod classify;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod dedup;
pub mod keys;
pub mod ledger;
pub mod output;
pub mod parse;
pub mod pipeline;
pub mod read;
pub mod records;
pub mod spill;
pub mod state;
pub mod tally;
pub mod timestamp;

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
