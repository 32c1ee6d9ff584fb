//! `--user-ids FILE`, for the Redis export (`run --redis`): GitLab's live counters hold numeric
//! ids where the registry's events hold names, and this CSV (`username,id`, as exported from
//! GitLab's `users` table) maps one to the other. Users it does not name take the id of their
//! events' JWT ([`crate::parse::jwt`]).

use crate::keys::{identity_hash, PassThroughHasher};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::Path;

/// GitLab ids by identity hash (SPEC §4: the lower-cased name).
pub type IdsByUser = HashMap<u64, u64, BuildHasherDefault<PassThroughHasher>>;

/// The identity hash of a username, compared as SPEC §4 compares names.
pub fn username_hash(name: &str) -> u64 {
    identity_hash(&name.to_lowercase())
}

/// The fields of one CSV line: plain, or quoted with `""` for a quote.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let field = out.last_mut()?;
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => out.push(String::new()),
            (_, c) => field.push(c),
        }
    }
    (!quoted).then_some(out)
}

/// Reads `--user-ids`: a CSV of `username,id` (more columns are ignored), with or without a
/// header line. A line that is not a username and a number, or a username given two different
/// ids, is an error naming the line.
pub fn load(path: &Path) -> Result<IdsByUser, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --user-ids {}: {e}", path.display()))?;
    let mut ids = IdsByUser::default();
    let mut names: HashMap<u64, (String, usize)> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let at = || format!("--user-ids {}:{}", path.display(), n + 1);
        if line.trim().is_empty() {
            continue;
        }
        let f = fields(line).ok_or_else(|| format!("{}: unbalanced quotes", at()))?;
        let (name, id) = match (f.first(), f.get(1)) {
            (Some(name), Some(id)) => (name.trim(), id.trim()),
            _ => return Err(format!("{}: wanted username,id", at())),
        };
        let Ok(id) = id.parse::<u64>() else {
            if n == 0 && id.eq_ignore_ascii_case("id") {
                continue;
            }
            return Err(format!("{}: id {id:?} is not a number", at()));
        };
        if name.is_empty() {
            return Err(format!("{}: empty username", at()));
        }
        let hash = username_hash(name);
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
        names.entry(hash).or_insert((name.to_owned(), n + 1));
    }
    Ok(ids)
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
            "username,id\r\nRoot,1\n\"o\"\"brien\",7,extra\n\nroot,1\n",
        )
        .unwrap();
        let ids = load(&path).unwrap();
        assert_eq!(ids.get(&username_hash("root")), Some(&1));
        assert_eq!(ids.get(&username_hash("O\"Brien")), Some(&7));
        assert_eq!(ids.len(), 2);
        for (text, why) in [
            ("root,1\nROOT,2\n", "line 1 gave root the id 1"),
            ("root,x\n", ":1: id \"x\" is not a number"),
            ("a,1\nusername,id\n", ":2: id \"id\" is not a number"),
            ("root\n", "wanted username,id"),
            ("\"root,1\n", "unbalanced quotes"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load(&path).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
