//! Classifying: which tracked event a de-duplicated valid event is, and whether its actor is a user.

use crate::keys::identity_hash;
use std::borrow::Cow;

/// The five tracked events of SPEC §5, in the order reports list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrackedEvent {
    CreateRepository,
    DeleteRepository,
    DeleteTag,
    PushRepository,
    PushTag,
}

impl TrackedEvent {
    /// Every tracked event, sorted by metric name.
    pub const ALL: [TrackedEvent; 5] = [
        TrackedEvent::CreateRepository,
        TrackedEvent::DeleteRepository,
        TrackedEvent::DeleteTag,
        TrackedEvent::PushRepository,
        TrackedEvent::PushTag,
    ];

    /// GitLab's metric name, `i_container_registry_<name>_user`.
    pub fn metric_name(self) -> &'static str {
        match self {
            TrackedEvent::CreateRepository => "i_container_registry_create_repository_user",
            TrackedEvent::DeleteRepository => "i_container_registry_delete_repository_user",
            TrackedEvent::DeleteTag => "i_container_registry_delete_tag_user",
            TrackedEvent::PushRepository => "i_container_registry_push_repository_user",
            TrackedEvent::PushTag => "i_container_registry_push_tag_user",
        }
    }

    /// Position in [`TrackedEvent::ALL`], for per-event arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The name of the union of the five tracked events.
pub const TOTAL_METRIC: &str = "user_container_registry_total";

/// Every metric name a table may hold: the five tracked events and their union.
pub fn metric_names() -> impl Iterator<Item = &'static str> {
    TrackedEvent::ALL
        .iter()
        .map(|t| t.metric_name())
        .chain([TOTAL_METRIC])
}

/// The name people read: `push_tag` for `i_container_registry_push_tag_user`, `total` for the
/// union.
pub fn short_name(metric: &str) -> &str {
    if metric == TOTAL_METRIC {
        "total"
    } else {
        metric
            .trim_start_matches("i_container_registry_")
            .trim_end_matches("_user")
    }
}

/// The static name of a metric read back from a file, if it is one regtally writes.
pub fn known_metric(name: &str) -> Option<&'static str> {
    metric_names().find(|m| *m == name)
}

/// What an event is before the repository ledger has been consulted (SPEC §5 steps 1 to 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Not `push` or `delete`.
    Untracked,
    PushTag,
    DeleteTag,
    /// A delete with a digest and no tag: counted in `manifest_deletes`, no user metric.
    ManifestDelete,
    DeleteRepository,
    /// A push without a tag: `create_repository` or `push_repository`, decided by the ledger.
    RepositoryPush,
    /// A `RepositoryPush` the ledger resolved.
    Resolved(TrackedEvent),
}

impl EventKind {
    /// Classifies by SPEC §5 from the action and the keys present in `target`.
    pub fn classify(action: &str, has_tag: bool, has_digest: bool) -> EventKind {
        match (action, has_tag, has_digest) {
            ("push", true, _) => EventKind::PushTag,
            ("delete", true, _) => EventKind::DeleteTag,
            ("delete", false, true) => EventKind::ManifestDelete,
            ("delete", false, false) => EventKind::DeleteRepository,
            ("push", false, _) => EventKind::RepositoryPush,
            _ => EventKind::Untracked,
        }
    }

    /// True for pushes of any kind: they make their repository exist (SPEC §6).
    pub fn is_push(self) -> bool {
        matches!(
            self,
            EventKind::PushTag
                | EventKind::RepositoryPush
                | EventKind::Resolved(
                    TrackedEvent::CreateRepository | TrackedEvent::PushRepository
                )
        )
    }

    /// The tracked event this kind counts as, once resolved.
    pub fn tracked(self) -> Option<TrackedEvent> {
        match self {
            EventKind::PushTag => Some(TrackedEvent::PushTag),
            EventKind::DeleteTag => Some(TrackedEvent::DeleteTag),
            EventKind::DeleteRepository => Some(TrackedEvent::DeleteRepository),
            EventKind::Resolved(t) => Some(t),
            EventKind::Untracked | EventKind::ManifestDelete | EventKind::RepositoryPush => None,
        }
    }
}

/// The `actor.user_type` values that mark a GitLab user.
const USER_TYPES: [&str; 3] = ["personal_access_token", "build", "gitlab_or_ldap"];

/// The user identity of an actor (SPEC §4): its name lower-cased, when the actor is a user.
pub fn user_identity<'a>(user_type: Option<&str>, name: Option<&'a str>) -> Option<Cow<'a, str>> {
    let user_type = user_type?;
    let name = name.filter(|n| !n.is_empty())?;
    if !USER_TYPES.contains(&user_type) {
        return None;
    }
    // Most names are already lower-case ASCII: no allocation for those.
    if name
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        Some(Cow::Borrowed(name))
    } else {
        Some(Cow::Owned(name.to_lowercase()))
    }
}

/// The identity hash of the actor when it is a user.
pub fn user_hash(user_type: Option<&str>, name: Option<&str>) -> Option<u64> {
    user_identity(user_type, name).map(|id| identity_hash(&id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_spec_order() {
        use EventKind::*;
        assert_eq!(EventKind::classify("pull", true, true), Untracked);
        assert_eq!(EventKind::classify("mount", false, false), Untracked);
        assert_eq!(EventKind::classify("Push", true, false), Untracked);
        assert_eq!(EventKind::classify("push", true, true), PushTag);
        assert_eq!(EventKind::classify("delete", true, true), DeleteTag);
        assert_eq!(EventKind::classify("delete", false, true), ManifestDelete);
        assert_eq!(
            EventKind::classify("delete", false, false),
            DeleteRepository
        );
        assert_eq!(EventKind::classify("push", false, true), RepositoryPush);
        assert_eq!(EventKind::classify("push", false, false), RepositoryPush);
    }

    #[test]
    fn only_users_with_names_count() {
        assert_eq!(
            user_identity(Some("build"), Some("Root")).as_deref(),
            Some("root")
        );
        assert_eq!(
            user_identity(Some("gitlab_or_ldap"), Some("ÉLODIE")).as_deref(),
            Some("élodie")
        );
        assert_eq!(
            user_identity(Some("personal_access_token"), Some("a")).as_deref(),
            Some("a")
        );
        assert_eq!(user_identity(Some("deploy_token"), Some("root")), None);
        assert_eq!(user_identity(Some("build"), Some("")), None);
        assert_eq!(user_identity(Some("build"), None), None);
        assert_eq!(user_identity(None, Some("root")), None);
        assert_eq!(
            user_hash(Some("build"), Some("ROOT")),
            user_hash(Some("build"), Some("root"))
        );
    }

    #[test]
    fn metric_names_are_gitlabs() {
        let names: Vec<&str> = TrackedEvent::ALL.iter().map(|t| t.metric_name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"i_container_registry_push_tag_user"));
        for (i, t) in TrackedEvent::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
    }
}
