//! Bearer tokens: minted per device, stored only as a BLAKE3 hash, checked on every /v1 call.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::{ApiError, blocking};
use super::meta::{DeviceAuth, TokenHash};
use crate::protocol::ErrorCode;

/// Every token starts with this, so a leaked one is easy to recognise and grep for.
pub const TOKEN_PREFIX: &str = "ddt_";

/// A fresh random 256-bit token, as text.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What the store keeps of a token. A 256-bit random token needs no slow KDF; the store
/// looks the hash up by equality, so no secret is ever compared byte by byte.
pub fn hash_token(token: &str) -> TokenHash {
    TokenHash(*blake3::hash(token.as_bytes()).as_bytes())
}

/// The authenticated device making a request.
#[derive(Clone, Debug)]
pub struct Caller(pub DeviceAuth);

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("Authorization header is not a Bearer token"))?;
        let hash = hash_token(token);
        let meta = state.meta.clone();
        let auth = blocking(move || Ok(meta.authenticate(&hash)?))
            .await?
            .ok_or_else(|| unauthorized("invalid or revoked token"))?;
        state
            .meta
            .note_activity(auth.device, super::now_ms(), None)?;
        Ok(Caller(auth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a.clone()));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
