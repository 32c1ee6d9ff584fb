//! The GitLab id in the JWT newer registries forward in `actor.user`, for the Redis export:
//! its payload's `user_info.user_id`, or `user_info.deploy_token_id` for a deploy token (as
//! GitLab's `ContainerRegistry::Event#get_origin_id` reads it), read without checking the
//! signature (the id only names whose counter a replayed event goes to; GUIDE.md, "Repair
//! GitLab's counters").

use crate::classify::ActorKind;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

/// base64url (RFC 4648 §5), as JWTs write it: unpadded, though a padded token is read too, and
/// without the canonical check of the last character's spare bits (nothing here is signed).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The id of the actor of `kind` in a registry JWT (`actor.user`): `user_info.user_id` for a
/// user, `user_info.deploy_token_id` for a deploy token, a number or a string of digits. The
/// signature is not checked.
pub fn jwt_actor_id(token: &str, kind: ActorKind) -> Option<u64> {
    match kind {
        ActorKind::User => jwt_id(token, "user_id"),
        ActorKind::DeployToken => jwt_id(token, "deploy_token_id"),
    }
}

fn jwt_id(token: &str, key: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    // Tokens are small; a huge one is not a registry's.
    if payload.len() > 64 << 10 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&BASE64URL.decode(payload).ok()?).ok()?;
    match &json.get("user_info")?.get(key)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token shaped as GitLab's registry forwards it (header, payload, signature).
    pub fn token(payload: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            BASE64URL.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            BASE64URL.encode(payload)
        )
    }

    #[test]
    fn the_user_id_is_read_from_the_payload() {
        let t = token(
            r#"{"user_info":{"token_type":"personal_access_token","username":"root","user_id":1}}"#,
        );
        assert_eq!(jwt_actor_id(&t, ActorKind::User), Some(1));
        let t = token(r#"{"user_info":{"user_id":"4711"},"x":"é"}"#);
        assert_eq!(jwt_actor_id(&t, ActorKind::User), Some(4711));
        for bad in [
            token(r#"{"user_info":{"user_id":-1}}"#),
            token(r#"{"user_info":{}}"#),
            token("not json"),
            "no dots".to_owned(),
            "a.%%%.b".to_owned(),
        ] {
            assert_eq!(jwt_actor_id(&bad, ActorKind::User), None, "{bad}");
        }
        // Padded, and with spare bits set in the last character (`aGl` for `aGk`), it is read.
        let hi = r#"{"user_info":{"user_id":31}}"#;
        let padded = format!(
            "x.{}.y",
            base64::engine::general_purpose::URL_SAFE.encode(hi)
        );
        assert!(padded.contains('='));
        assert_eq!(jwt_actor_id(&padded, ActorKind::User), Some(31));
        assert_eq!(BASE64URL.decode("aGl").unwrap(), b"hi");
        // A deploy token's id, as GitLab's registry token service writes it.
        let t = token(
            r#"{"user_info":{"token_type":"deploy_token","username":"gitlab+deploy-token-3","deploy_token_id":3}}"#,
        );
        assert_eq!(jwt_actor_id(&t, ActorKind::DeployToken), Some(3));
        assert_eq!(jwt_actor_id(&t, ActorKind::User), None);
    }
}
