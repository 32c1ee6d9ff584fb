//! What a run is asked to do, validated: the pipeline's input, built by `run` from its flags
//! (and a state) before any log is read.

use crate::dedup::window::IdWindow;
use crate::ledger::PriorLedger;
use crate::parse::chunk::ParseRules;
use crate::read::user_ids::IdsByUser;
use crate::read::InputPath;
use crate::spill::MemoryBudget;
use chrono::NaiveDate;

/// What a run is asked to do, validated (SPEC §1 to §8; outputs are the caller's).
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub inputs: Vec<InputPath>,
    /// First counted UTC day, inclusive.
    pub since: Option<NaiveDate>,
    /// First day no longer counted, exclusive.
    pub until: Option<NaiveDate>,
    pub precision: u8,
    /// Line length and event times a valid event must keep to.
    pub rules: ParseRules,
    /// Size a chunk of one input is cut at for the parsers.
    pub chunk_bytes: usize,
    /// Show a progress bar of bytes read on stderr.
    pub progress: bool,
    /// Return the id and time of de-duplicated events inside this window, for a state.
    pub keep_event_ids: Option<IdWindow>,
    /// Hash each input's bytes, for a state's manifest of consumed inputs
    /// ([`crate::read::InputReport::content_hash`]). Without a state nothing reads the hash, and hashing
    /// was about 7% of a run's instructions.
    pub hash_inputs: bool,
    /// What de-duplication and the ledger may hold before they spill.
    pub budget: MemoryBudget,
    /// With the Redis export: the GitLab ids of `--user-ids` (empty without it).
    pub user_ids: Option<std::sync::Arc<IdsByUser>>,
}

/// What earlier runs left for this one: the repository ledger and the ids already seen.
#[derive(Debug, Default)]
pub struct Prior {
    pub ledger: PriorLedger,
    /// Event ids (xxh3-128) whose later deliveries are duplicates.
    pub seen_ids: Vec<u128>,
}

impl RunConfig {
    /// Whether an event of this UTC date is inside `--since`/`--until`.
    pub fn in_range(&self, date: NaiveDate) -> bool {
        self.since.is_none_or(|s| date >= s) && self.until.is_none_or(|u| date < u)
    }
}
