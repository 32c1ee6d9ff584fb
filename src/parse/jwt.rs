//! The GitLab user id in the JWT newer registries forward in `actor.user`, for the Redis
//! export: its payload's `user_info.user_id`, read without checking the signature (the id only
//! names whose counter a replayed event goes to; GUIDE.md, "Repair GitLab's counters").

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
}
