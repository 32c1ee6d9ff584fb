//! `--user-ids FILE`, for the Redis export (`run --redis`): GitLab's live counters hold numeric
//! ids where the registry's events hold names, and this CSV (`username,id`, as exported from
//! GitLab's `users` table) maps one to the other. A deploy token's line names it
//! `deploy_token:USERNAME` (its `username` in GitLab's `deploy_tokens` table, which the
//! registry's events carry as `actor.name`): GitLab usernames cannot hold a colon. Users and
//! deploy tokens it does not name take the id of their events' JWT ([`crate::parse::jwt`]).

use crate::classify::{actor_key, ActorKind};
use crate::keys::{identity_hash, PassThroughHasher};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::Path;

/// GitLab ids by actor key ([`actor_key`] of the identity hash, SPEC §4: the lower-cased name).
pub type IdsByUser = HashMap<u64, u64, BuildHasherDefault<PassThroughHasher>>;

/// The identity hash of a username, compared as SPEC §4 compares names.
pub fn username_hash(name: &str) -> u64 {
    identity_hash(&name.to_lowercase())
}

/// The prefix that marks a deploy token's line.
const DEPLOY_TOKEN_PREFIX: &str = "deploy_token:";

/// The key of a `--user-ids` name: a user's, or a deploy token's after its prefix.
pub fn name_key(name: &str) -> u64 {
    match name.strip_prefix(DEPLOY_TOKEN_PREFIX) {
        Some(token) => actor_key(username_hash(token), ActorKind::DeployToken),
        None => username_hash(name),
    }
}

/// Reads `--user-ids`: a CSV of `username,id` (more columns are ignored), with or without a
/// header line. A line that is not a username and a number, or a username given two different
/// ids, is an error naming the line.
pub fn load(path: &Path) -> Result<IdsByUser, String> {
    let text = super::read_side_file(path).map_err(|e| format!("cannot read --user-ids {e}"))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&text[..]);
    let mut ids = IdsByUser::default();
    let mut names: HashMap<u64, (String, u64)> = HashMap::new();
    let mut record = csv::StringRecord::new();
    while reader
        .read_record(&mut record)
        .map_err(|e| format!("cannot read --user-ids {}: {e}", path.display()))?
    {
        let n = record.position().map_or(0, csv::Position::line);
        let at = || format!("--user-ids {}:{n}", path.display());
        if reader.position().byte() == text.len() as u64 && left_open(&text, &record) {
            return Err(format!("{}: unbalanced quotes", at()));
        }
        // A line of spaces; an empty line the reader skips itself.
        if record.len() == 1 && record[0].trim().is_empty() {
            continue;
        }
        let (name, id) = match (record.get(0), record.get(1)) {
            (Some(name), Some(id)) => (name.trim(), id.trim()),
            _ => return Err(format!("{}: wanted username,id", at())),
        };
        let Ok(id) = id.parse::<u64>() else {
            if n == 1 && id.eq_ignore_ascii_case("id") {
                continue;
            }
            return Err(format!("{}: id {id:?} is not a number", at()));
        };
        if name.is_empty() || name == DEPLOY_TOKEN_PREFIX {
            return Err(format!("{}: empty username", at()));
        }
        let hash = name_key(name);
        if let Some(&before) = ids.get(&hash) {
            if before != id {
                let (first, line) = &names[&hash];
                return Err(format!(
                    "{}: {name} has id {id}, but line {line} gave {first} the id {before}",
                    at()
                ));
            }
        }
        ids.insert(hash, id);
        names.entry(hash).or_insert((name.to_owned(), n));
    }
    Ok(ids)
}

/// Whether `record`, the file's last, ends in a quoted field never closed: the reader takes
/// such a field to the end of the file, so the file ends with the field's text right after
/// the quote that opened it (a lone quote, for an empty one).
fn left_open(text: &[u8], record: &csv::StringRecord) -> bool {
    let Some(last) = record.iter().next_back().map(str::as_bytes) else {
        return false;
    };
    let Some(quote) = text.len().checked_sub(last.len() + 1) else {
        return false;
    };
    text.ends_with(last)
        && text[quote] == b'"'
        && (!last.is_empty() || quote == 0 || matches!(text[quote - 1], b',' | b'\n' | b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_has_a_header_or_not_and_names_are_compared_as_identities() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.csv");
        std::fs::write(
            &path,
            "username,id\r\nRoot,1\n\"o\"\"brien\",7,extra\n\n\"new\nline\",9\nroot,1\no\"neil,8",
        )
        .unwrap();
        let ids = load(&path).unwrap();
        assert_eq!(ids.get(&username_hash("root")), Some(&1));
        assert_eq!(ids.get(&username_hash("O\"Brien")), Some(&7));
        // A quoted newline is part of its field.
        assert_eq!(ids.get(&username_hash("new\nline")), Some(&9));
        // A quote inside an unquoted field is a character of it, even on the last line.
        assert_eq!(ids.get(&username_hash("o\"neil")), Some(&8));
        assert_eq!(ids.len(), 4);
        // Deploy tokens, apart from users of the same name.
        std::fs::write(
            &path,
            "root,1\ndeploy_token:Root,5\ndeploy_token:gitlab+deploy-token-9,9\n",
        )
        .unwrap();
        let ids = load(&path).unwrap();
        assert_eq!(ids.get(&username_hash("root")), Some(&1));
        assert_eq!(
            ids.get(&actor_key(username_hash("root"), ActorKind::DeployToken)),
            Some(&5)
        );
        assert_eq!(
            ids.get(&name_key("deploy_token:GITLAB+deploy-token-9")),
            Some(&9)
        );
        for (text, why) in [
            ("root,1\nROOT,2\n", "line 1 gave root the id 1"),
            ("root,x\n", ":1: id \"x\" is not a number"),
            ("a,1\nusername,id\n", ":2: id \"id\" is not a number"),
            ("root\n", "wanted username,id"),
            ("deploy_token:,3\n", ":1: empty username"),
            ("\"root,1\n", ":1: unbalanced quotes"),
            ("a,1\nb,\"", ":2: unbalanced quotes"),
            (",,\n", ":1: id \"\" is not a number"),
            ("a,\"\"", ":1: id \"\" is not a number"),
            // Lines are counted in the file, a quoted newline included.
            ("\"a\nb\",1\nroot,x\n", ":3: id \"x\" is not a number"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load(&path).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
