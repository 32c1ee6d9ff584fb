//! The records that flow between the stages, and the accounting of every line: the shared
//! vocabulary of the data path, below every stage.
//!
//! Parsed events borrow from their chunk and are gone with it; what survives a chunk is one
//! small [`EventRecord`] per valid event: all the later stages (de-duplication, the repository
//! ledger, aggregation) need, and nothing else.

pub mod row;

use crate::classify::EventKind;
use crate::keys::PassThroughHasher;
use crate::timestamp::Timestamp;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// The action of an event, with the common ones spelled without an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Push,
    Delete,
    Pull,
    Mount,
    Other(Box<str>),
}

impl Action {
    #[inline]
    pub fn new(action: &str) -> Action {
        match action {
            "push" => Action::Push,
            "delete" => Action::Delete,
            "pull" => Action::Pull,
            "mount" => Action::Mount,
            other => Action::Other(other.into()),
        }
    }

    /// The action as the event spelled it.
    pub fn as_str(&self) -> &str {
        match self {
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Pull => "pull",
            Action::Mount => "mount",
            Action::Other(s) => s,
        }
    }
}

/// What later passes need of one valid event.
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// xxh3-128 of `id`: equal ids are deliveries of one event (SPEC §3).
    pub id_key: u128,
    pub time: Timestamp,
    pub action: Action,
    pub kind: EventKind,
    /// The actor's identity hash when it is a user or a deploy token (SPEC §4).
    pub user: Option<u64>,
    /// Whether that actor is a deploy token: its events count in the `_deploy_token` metrics.
    pub deploy_token: bool,
    /// xxh3-128 of `target.repository`.
    pub repository: u128,
    /// The event id, kept only for events the ledger orders (pushes and repository deletes):
    /// it breaks ties between equal timestamps (SPEC §6).
    pub ledger_id: Option<LedgerId>,
}

/// An event id the ledger keeps: inline when it fits (a UUID's 36 bytes do), boxed when it does
/// not. A boxed id was an allocation and a free for every push, with the repository's path
/// about half of all a run's allocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerId {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Boxed(Box<str>),
}

/// The longest id kept inline.
const INLINE_ID: usize = 38;

impl LedgerId {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            LedgerId::Inline { len, bytes } => &bytes[..usize::from(*len)],
            LedgerId::Boxed(id) => id.as_bytes(),
        }
    }

    /// The id as text (it was built from text, so this never falls back).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl From<&str> for LedgerId {
    #[inline]
    fn from(id: &str) -> LedgerId {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                LedgerId::Inline { len, bytes }
            }
            _ => LedgerId::Boxed(id.into()),
        }
    }
}

impl From<String> for LedgerId {
    fn from(id: String) -> LedgerId {
        LedgerId::from(id.as_str())
    }
}

impl EventRecord {
    /// Whether the repository ledger must replay this event (SPEC §6): pushes of every kind and
    /// repository deletes.
    pub fn touches_ledger(&self) -> bool {
        self.ledger_id.is_some()
    }
}

/// A chunk's repository paths by their key, held in one string: a box per path was an
/// allocation and a free for nearly every push of a chunk (the ledger already knows most of
/// them, and asks for a path only the first time the run names its repository).
#[derive(Debug, Default)]
pub struct PathMap {
    text: String,
    /// Where each path lies in `text`.
    at: HashMap<u128, (u32, u32), BuildHasherDefault<PassThroughHasher>>,
}

impl PathMap {
    /// Keeps `path` as the path of `key`, unless one is kept already.
    #[inline]
    pub fn insert(&mut self, key: u128, path: &str) {
        let (start, len) = (self.text.len(), path.len());
        // A chunk's text is far below 4 GiB; past it, the path is simply not kept.
        let (Ok(start), Ok(len), Ok(_)) = (
            u32::try_from(start),
            u32::try_from(len),
            u32::try_from(start + len),
        ) else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(e) = self.at.entry(key) {
            e.insert((start, len));
            self.text.push_str(path);
        }
    }

    /// The path of `key`, if the chunk names it.
    pub fn get(&self, key: &u128) -> Option<&str> {
        let &(start, len) = self.at.get(key)?;
        let (start, len) = (start as usize, len as usize);
        self.text.get(start..start + len)
    }

    /// How many paths are kept.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether no path is kept.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Every key and its path.
    pub fn iter(&self) -> impl Iterator<Item = (u128, &str)> + '_ {
        self.at
            .keys()
            .filter_map(|k| self.get(k).map(|path| (*k, path)))
    }
}

/// Where a reject came from and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Reject {
    /// Line number, 1-based: within the chunk until the chunk's lines are offset by those of
    /// the input before it.
    pub line: u64,
    /// Position in the envelope's `events`, for an invalid envelope element.
    pub index: Option<u32>,
    pub reason: String,
    /// The line, cut to 1 KiB, with the line's first reject; empty for its later ones.
    pub text: String,
}

/// The line and event counts of SPEC §9's summary that parsing alone decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineCounts {
    pub lines: u64,
    pub blank_lines: u64,
    pub malformed_lines: u64,
    pub invalid_events: u64,
    /// Of `invalid_events`, those valid but for a time no registry can have written.
    pub implausible_times: u64,
    pub events_seen: u64,
}

impl LineCounts {
    /// Adds another chunk's or input's counts.
    pub fn merge(&mut self, o: &LineCounts) {
        self.lines += o.lines;
        self.blank_lines += o.blank_lines;
        self.malformed_lines += o.malformed_lines;
        self.invalid_events += o.invalid_events;
        self.implausible_times += o.implausible_times;
        self.events_seen += o.events_seen;
    }
}

/// A reject with the input it came from.
#[derive(Clone, Debug)]
pub struct FileReject {
    pub file: String,
    pub reject: Reject,
}

/// A counted user as the parse tasks report it for the Redis export: its identity (for the
/// summary's unresolved names) and the id its events' JWT gave, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedUser {
    pub name: Box<str>,
    pub jwt_id: Option<u64>,
}

impl ReportedUser {
    /// Keeps what either report knows: a JWT id over none, the smaller of two (whichever
    /// thread saw which event first).
    pub fn merge(&mut self, other: ReportedUser) {
        self.jwt_id = match (self.jwt_id, other.jwt_id) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk's paths: the first path given for a key is kept, and every kept one reads back.
    #[test]
    fn path_map_keeps_the_first_path_of_each_key() {
        let mut paths = PathMap::default();
        paths.insert(1, "g/a");
        paths.insert(2, "h/bé");
        paths.insert(1, "other");
        assert_eq!(
            (paths.get(&1), paths.get(&2), paths.get(&3)),
            (Some("g/a"), Some("h/bé"), None)
        );
        let mut all: Vec<(u128, &str)> = paths.iter().collect();
        all.sort();
        assert_eq!(all, [(1, "g/a"), (2, "h/bé")]);
        assert_eq!(paths.len(), 2);
    }

    /// Ids up to 38 bytes are kept inline, longer ones boxed; both read back as written.
    #[test]
    fn ledger_ids_inline_or_boxed() {
        let uuid = "00000000-000b-41b0-80b7-f34e8a9258fa";
        for (id, inline) in [
            ("", true),
            (uuid, true),
            (&"x".repeat(38)[..], true),
            (&"é".repeat(20)[..], false),
        ] {
            let kept = LedgerId::from(id);
            assert_eq!(matches!(kept, LedgerId::Inline { .. }), inline, "{id}");
            assert_eq!(kept.as_str(), id);
            assert_eq!(kept, LedgerId::from(id.to_owned()));
        }
    }
}
