//! GitLab user ids, for the Redis export (`run --redis`): GitLab's live counters hold numeric
//! ids, the registry's events names. Ids come from `--user-ids FILE` (CSV `username,id`, as
//! exported from GitLab's `users` table) or else from the JWT newer registries forward in
//! `actor.user`, whose payload's `user_info.user_id` is read without checking the signature.

use crate::aggregate::sketch::{identity_hash, PassThroughHasher};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::Path;

/// GitLab ids by identity hash (SPEC §4: the lower-cased name).
pub type IdsByUser = HashMap<u64, u64, BuildHasherDefault<PassThroughHasher>>;

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

/// Decodes unpadded base64url (RFC 4648 §5), as JWTs use it.
fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The GitLab user id in a registry JWT (`actor.user`): its payload's `user_info.user_id`, a
/// number or a string of digits. The signature is not checked (see the README).
pub fn jwt_user_id(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    // Tokens are small; a huge one is not a registry's.
    if payload.len() > 64 << 10 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&base64url(payload)?).ok()?;
    match &json.get("user_info")?.get("user_id")? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// A token shaped as GitLab's registry forwards it (header, payload, signature).
    pub fn token(payload: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            encode(payload.as_bytes())
        )
    }

    #[test]
    fn the_user_id_is_read_from_the_payload() {
        let t = token(
            r#"{"user_info":{"token_type":"personal_access_token","username":"root","user_id":1}}"#,
        );
        assert_eq!(jwt_user_id(&t), Some(1));
        let t = token(r#"{"user_info":{"user_id":"4711"},"x":"é"}"#);
        assert_eq!(jwt_user_id(&t), Some(4711));
        for bad in [
            token(r#"{"user_info":{"user_id":-1}}"#),
            token(r#"{"user_info":{}}"#),
            token("not json"),
            "no dots".to_owned(),
            "a.%%%.b".to_owned(),
        ] {
            assert_eq!(jwt_user_id(&bad), None, "{bad}");
        }
        assert_eq!(base64url("aGk").as_deref(), Some(&b"hi"[..]));
    }

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
