//! Classifying: which tracked event a de-duplicated valid event is, and whether its actor is a
//! user or a deploy token.

use std::borrow::Cow;

/// The ten tracked events of SPEC §5: five for users and the same five for deploy tokens, in
/// the order reports list them (by metric name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrackedEvent {
    CreateRepositoryByDeployToken,
    CreateRepository,
    DeleteRepositoryByDeployToken,
    DeleteRepository,
    DeleteTagByDeployToken,
    DeleteTag,
    PushRepositoryByDeployToken,
    PushRepository,
    PushTagByDeployToken,
    PushTag,
}

/// Who an actor is (SPEC §4), when it counts in a metric at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActorKind {
    User,
    DeployToken,
}

impl TrackedEvent {
    /// Every tracked event, sorted by metric name.
    pub const ALL: [TrackedEvent; 10] = [
        TrackedEvent::CreateRepositoryByDeployToken,
        TrackedEvent::CreateRepository,
        TrackedEvent::DeleteRepositoryByDeployToken,
        TrackedEvent::DeleteRepository,
        TrackedEvent::DeleteTagByDeployToken,
        TrackedEvent::DeleteTag,
        TrackedEvent::PushRepositoryByDeployToken,
        TrackedEvent::PushRepository,
        TrackedEvent::PushTagByDeployToken,
        TrackedEvent::PushTag,
    ];

    /// The five users' events, whose union is [`TOTAL_METRIC`].
    pub const USERS: [TrackedEvent; 5] = [
        TrackedEvent::CreateRepository,
        TrackedEvent::DeleteRepository,
        TrackedEvent::DeleteTag,
        TrackedEvent::PushRepository,
        TrackedEvent::PushTag,
    ];

    /// GitLab's name: `i_container_registry_<name>_user` or `..._deploy_token`.
    pub fn metric_name(self) -> &'static str {
        match self {
            TrackedEvent::CreateRepository => "i_container_registry_create_repository_user",
            TrackedEvent::DeleteRepository => "i_container_registry_delete_repository_user",
            TrackedEvent::DeleteTag => "i_container_registry_delete_tag_user",
            TrackedEvent::PushRepository => "i_container_registry_push_repository_user",
            TrackedEvent::PushTag => "i_container_registry_push_tag_user",
            TrackedEvent::CreateRepositoryByDeployToken => {
                "i_container_registry_create_repository_deploy_token"
            }
            TrackedEvent::DeleteRepositoryByDeployToken => {
                "i_container_registry_delete_repository_deploy_token"
            }
            TrackedEvent::DeleteTagByDeployToken => "i_container_registry_delete_tag_deploy_token",
            TrackedEvent::PushRepositoryByDeployToken => {
                "i_container_registry_push_repository_deploy_token"
            }
            TrackedEvent::PushTagByDeployToken => "i_container_registry_push_tag_deploy_token",
        }
    }

    /// The short name: the class (`push_tag`), and `_dt` after it for a deploy token's.
    pub fn short_name(self) -> &'static str {
        match self {
            TrackedEvent::CreateRepository => "create_repository",
            TrackedEvent::DeleteRepository => "delete_repository",
            TrackedEvent::DeleteTag => "delete_tag",
            TrackedEvent::PushRepository => "push_repository",
            TrackedEvent::PushTag => "push_tag",
            TrackedEvent::CreateRepositoryByDeployToken => "create_repository_dt",
            TrackedEvent::DeleteRepositoryByDeployToken => "delete_repository_dt",
            TrackedEvent::DeleteTagByDeployToken => "delete_tag_dt",
            TrackedEvent::PushRepositoryByDeployToken => "push_repository_dt",
            TrackedEvent::PushTagByDeployToken => "push_tag_dt",
        }
    }

    /// What happened, whoever did it: the user event's short name (`push_tag`).
    pub fn class(self) -> &'static str {
        self.by(ActorKind::User).short_name()
    }

    /// Position in [`TrackedEvent::ALL`], for per-event arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whose event it is.
    pub fn actor(self) -> ActorKind {
        if self.index().is_multiple_of(2) {
            ActorKind::DeployToken
        } else {
            ActorKind::User
        }
    }

    /// The same event by an actor of `kind`.
    pub fn by(self, kind: ActorKind) -> TrackedEvent {
        let user = TrackedEvent::ALL[self.index() | 1];
        match kind {
            ActorKind::User => user,
            ActorKind::DeployToken => TrackedEvent::ALL[user.index() - 1],
        }
    }
}

/// The name of the union of the five users' tracked events.
pub const TOTAL_METRIC: &str = "user_container_registry_total";

/// Every metric name a table may hold: the ten tracked events and the users' union.
pub fn metric_names() -> impl Iterator<Item = &'static str> {
    TrackedEvent::ALL
        .iter()
        .map(|t| t.metric_name())
        .chain([TOTAL_METRIC])
}

/// The name people read: `push_tag` for `i_container_registry_push_tag_user`,
/// `push_tag_dt` for `i_container_registry_push_tag_deploy_token`, `total` for the union.
pub fn short_name(metric: &str) -> &'static str {
    if metric == TOTAL_METRIC {
        return "total";
    }
    TrackedEvent::ALL
        .iter()
        .find(|t| t.metric_name() == metric)
        .map_or("?", |t| t.short_name())
}

/// Whether a metric name is one of the deploy tokens' events (outputs list them apart).
pub fn is_deploy_token_metric(metric: &str) -> bool {
    metric.ends_with("_deploy_token")
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

    /// The kind as one byte, for records that leave memory (de-duplication's spilled events,
    /// a Spark task's rows): [`EventKind::from_code`] reads it back.
    pub fn code(self) -> u8 {
        match self {
            EventKind::Untracked => 0,
            EventKind::PushTag => 1,
            EventKind::DeleteTag => 2,
            EventKind::ManifestDelete => 3,
            EventKind::DeleteRepository => 4,
            EventKind::RepositoryPush => 5,
            EventKind::Resolved(t) => 6 + t.index() as u8,
        }
    }

    /// The kind [`EventKind::code`] gave `code`, if it gave it.
    pub fn from_code(code: u8) -> Option<EventKind> {
        Some(match code {
            0 => EventKind::Untracked,
            1 => EventKind::PushTag,
            2 => EventKind::DeleteTag,
            3 => EventKind::ManifestDelete,
            4 => EventKind::DeleteRepository,
            5 => EventKind::RepositoryPush,
            c => EventKind::Resolved(*TrackedEvent::ALL.get(usize::from(c.checked_sub(6)?))?),
        })
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

/// The `actor.user_type` values that mark a GitLab user are matched in [`actor_identity`]:
/// `personal_access_token`, `build`, `gitlab_or_ldap`.
/// The `actor.user_type` of a deploy token (GitLab 16.5 and later count them).
const DEPLOY_TOKEN_TYPE: &str = "deploy_token";

/// The identity of an actor that counts (SPEC §4), and whether it is a user or a deploy
/// token: its name lower-cased.
#[inline]
pub fn actor_identity<'a>(
    user_type: Option<&str>,
    name: Option<&'a str>,
) -> Option<(Cow<'a, str>, ActorKind)> {
    // One match: the compiler tells the types apart by length first, then compares bytes.
    let kind = match user_type? {
        "personal_access_token" | "build" | "gitlab_or_ldap" => ActorKind::User,
        DEPLOY_TOKEN_TYPE => ActorKind::DeployToken,
        _ => return None,
    };
    let name = name.filter(|n| !n.is_empty())?;
    // Most names are already lower-case ASCII: no allocation for those.
    if name
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        Some((Cow::Borrowed(name), kind))
    } else {
        Some((Cow::Owned(name.to_lowercase()), kind))
    }
}

/// The key of an actor in the tables of GitLab ids (the Redis export's, `--user-ids`): a user
/// and a deploy token of one name are two actors with two ids.
pub fn actor_key(identity_hash: u64, kind: ActorKind) -> u64 {
    match kind {
        ActorKind::User => identity_hash,
        // Any fixed odd constant: it only moves deploy tokens away from users.
        ActorKind::DeployToken => identity_hash ^ 0x9E37_79B9_7F4A_7C15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::identity_hash;

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
    fn only_users_and_deploy_tokens_with_names_count() {
        let user = |user_type, name| {
            actor_identity(user_type, name)
                .filter(|(_, kind)| *kind == ActorKind::User)
                .map(|(identity, _)| identity)
        };
        assert_eq!(user(Some("build"), Some("Root")).as_deref(), Some("root"));
        assert_eq!(
            user(Some("gitlab_or_ldap"), Some("ÉLODIE")).as_deref(),
            Some("élodie")
        );
        assert_eq!(
            user(Some("personal_access_token"), Some("a")).as_deref(),
            Some("a")
        );
        assert_eq!(user(Some("deploy_token"), Some("root")), None);
        assert_eq!(
            actor_identity(Some("deploy_token"), Some("GitLab+Deploy-Token-7")),
            Some((
                Cow::Borrowed("gitlab+deploy-token-7"),
                ActorKind::DeployToken
            ))
        );
        assert_eq!(actor_identity(Some("deploy_token"), Some("")), None);
        assert_eq!(user(Some("build"), Some("")), None);
        assert_eq!(user(Some("build"), None), None);
        assert_eq!(user(None, Some("root")), None);
        assert_eq!(actor_identity(Some("other"), Some("root")), None);
        assert_eq!(
            user(Some("build"), Some("ROOT")).map(|id| identity_hash(&id)),
            user(Some("build"), Some("root")).map(|id| identity_hash(&id))
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
            let suffix = match t.actor() {
                ActorKind::User => "_user",
                ActorKind::DeployToken => "_deploy_token",
            };
            assert!(t.metric_name().ends_with(suffix));
            for kind in [ActorKind::User, ActorKind::DeployToken] {
                assert_eq!(t.by(kind).actor(), kind);
                assert_eq!(t.by(kind).by(t.actor()), *t);
            }
        }
        assert_eq!(TrackedEvent::USERS.map(|t| t.actor()), [ActorKind::User; 5]);
        assert_eq!(
            short_name("i_container_registry_push_tag_deploy_token"),
            "push_tag_dt"
        );
        assert_eq!(short_name("i_container_registry_push_tag_user"), "push_tag");
    }
}
