//! What a run computed: the material of every output, handed from the pipeline to the outputs
//! and the state.

use crate::dedup::rows::DeferredFirsts;
use crate::keys::KeyHasher;
use crate::records::row::Month;
use chrono::NaiveDate;
use std::collections::HashSet;
use std::path::PathBuf;

/// Ids (xxh3-128 of the event id) of repository pushes.
pub type IdKeys = HashSet<u128, KeyHasher>;

/// What reading could not say of the events dataset's rows.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Repository pushes that created their repository (the others pushed to it).
    pub creates: IdKeys,
    /// Set once de-duplication spilled.
    pub deferred: Option<DeferredFirsts>,
}

/// A run's rows of the events dataset, ready to be written.
#[derive(Debug)]
pub struct DatasetRows {
    /// Each month's temporary file of rows ([`crate::dedup::rows`]).
    pub months: Vec<(Month, PathBuf)>,
    pub resolution: Resolution,
    /// The inputs' names, by position.
    pub files: Vec<String>,
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
}
