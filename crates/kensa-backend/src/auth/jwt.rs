//! HS256 JSON Web Tokens for API access tokens, with the claims Sensu clients expect (`sub`,
//! `exp`, `jti`, `groups`, `api_key`, `session_id`).
//!
//! Hand-written on `hmac` + `sha2` (about sixty lines) rather than a JWT crate: Kensa only
//! issues and checks its own HS256 tokens, and the JWT crates pull in a second crypto provider.
//! The signing secret lives in the store, so every backend of a cluster accepts every token and
//! tokens survive restarts.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub api_key: bool,
    #[serde(default)]
    pub session_id: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Checks the signature and, unless `allow_expired`, the expiry against `now` (unix seconds).
/// `/auth/token` accepts an expired access token together with a valid refresh token.
pub fn verify(
    token: &str,
    secret: &[u8],
    now: i64,
    allow_expired: bool,
) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header_value: serde_json::Value =
        serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
    if header_value["alg"] != "HS256" {
        return Err(TokenError::BadSignature);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if !allow_expired && claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "admin".into(),
            exp,
            iat: 0,
            jti: "j".into(),
            groups: vec!["cluster-admins".into()],
            api_key: false,
            session_id: "s".into(),
        }
    }

    #[test]
    fn round_trip_expiry_and_forgery() {
        let token = sign(&claims(100), b"secret");
        assert_eq!(verify(&token, b"secret", 50, false).unwrap().sub, "admin");
        assert_eq!(
            verify(&token, b"secret", 100, false),
            Err(TokenError::Expired)
        );
        assert!(verify(&token, b"secret", 100, true).is_ok());
        assert_eq!(
            verify(&token, b"other", 50, false),
            Err(TokenError::BadSignature)
        );

        // A payload swapped in from another token fails the signature check.
        let forged_payload = sign(
            &Claims {
                sub: "root".into(),
                ..claims(100)
            },
            b"attacker",
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = forged_payload.split('.').nth(1).unwrap();
        assert_eq!(
            verify(&parts.join("."), b"secret", 50, false),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify("a.b", b"secret", 50, false),
            Err(TokenError::Malformed)
        );
    }
}
