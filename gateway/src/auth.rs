//! Short-lived session tokens, signed with HMAC-SHA256.
//!
//! A token is `BASE64URL(claims JSON) "." BASE64URL(HMAC-SHA256(key, first part))`,
//! without padding. The claims carry the tenant, the user, the widest tier
//! the session may use, and the issue and expiry times in Unix seconds. A
//! client gets a token from `POST /v1/tokens` with its tenant's API key and
//! presents it when it opens the WebSocket; the API key never travels with
//! the audio.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use mentis_pipeline::{PrivacyTier, Secret};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::tenants::{UserId, is_valid_id};

/// The version of the claims layout; a token of another version is rejected.
pub const TOKEN_VERSION: u32 = 1;

/// The shortest signing key accepted, in bytes: 256 bits, the HMAC-SHA256
/// output size (RFC 2104 section 3 recommends a key at least that long).
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

/// The maximum token length accepted, in bytes. Real tokens are about 250 bytes;
/// anything much longer is not one of ours and is not parsed.
pub const MAX_TOKEN_BYTES: usize = 1_024;

/// Clock skew tolerated on the issue time, in seconds, for tokens issued by
/// another gateway process whose clock runs a little ahead.
pub const ISSUED_AT_LEEWAY_SECS: u64 = 30;

/// The claims a session token makes about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// [`TOKEN_VERSION`].
    pub v: u32,
    /// The tenant id.
    pub tenant: String,
    /// The user id.
    pub user: UserId,
    /// The widest tier a session with this token may use.
    pub tier: PrivacyTier,
    /// Issue time, Unix seconds.
    pub iat: u64,
    /// Expiry time, Unix seconds; the token is invalid from this second on.
    pub exp: u64,
}

/// A token that is not accepted. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not two base64url parts, or its claims are not valid JSON.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// The signature does not match: the token was forged, altered, or signed with another key.
    #[error("the token signature is invalid; request a new token")]
    BadSignature {
        /// The tenant the claims name, if they could be read; not to be trusted.
        claimed_tenant: Option<String>,
    },
    /// The token has expired.
    #[error("the token expired at {expired_at} (now {now}, Unix seconds); request a new token")]
    Expired {
        /// The tenant the token belongs to.
        tenant: String,
        /// Its expiry, Unix seconds.
        expired_at: u64,
        /// The time of the check, Unix seconds.
        now: u64,
    },
    /// The token claims to be issued in the future.
    #[error("the token is issued at {issued_at}, after now ({now}, Unix seconds); check the server clocks")]
    NotYetValid {
        /// The tenant the token belongs to.
        tenant: String,
        /// Its issue time, Unix seconds.
        issued_at: u64,
        /// The time of the check, Unix seconds.
        now: u64,
    },
    /// The claims use a layout this server does not know.
    #[error("token version {0} is not supported; request a new token")]
    Version(u32),
}

impl TokenError {
    /// Returns the tenant id to log with the rejection: trusted for expired
    /// and early tokens, whose signature was valid, and marked as claimed for forged ones.
    pub fn tenant_for_log(&self) -> String {
        match self {
            TokenError::Expired { tenant, .. } | TokenError::NotYetValid { tenant, .. } => tenant.clone(),
            TokenError::BadSignature { claimed_tenant: Some(tenant) } => format!("claimed:{tenant}"),
            _ => "unknown".to_owned(),
        }
    }

    /// Returns a short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::BadSignature { .. } => "token_forged",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::Version(_) => "token_version",
        }
    }
}

/// A signing key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token signing key is {len} bytes; use at least {MIN_SIGNING_KEY_BYTES} random bytes (for example `head -c 48 /dev/urandom | base64`)")]
pub struct WeakKeyError {
    /// The key's length in bytes.
    pub len: usize,
}

/// Issues and checks session tokens with one key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Secret,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner([redacted])")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl TokenSigner {
    /// Creates a signer from a key of at least [`MIN_SIGNING_KEY_BYTES`] bytes.
    pub fn new(key: Secret) -> Result<Self, WeakKeyError> {
        let len = key.expose().len();
        if len < MIN_SIGNING_KEY_BYTES {
            return Err(WeakKeyError { len });
        }
        Ok(TokenSigner { key })
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length, so this never fails.
        match HmacSha256::new_from_slice(self.key.expose().as_bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }

    /// Signs `claims` into a token.
    pub fn issue(&self, claims: &Claims) -> Secret {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Secret::new(format!("{payload}.{signature}"))
    }

    /// Checks a token's signature, version and times against `now` (Unix
    /// seconds), and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("longer than any token this server issues"));
        }
        let Some((payload, signature)) = token.split_once('.') else {
            return Err(TokenError::Malformed("expected two parts separated by '.'"));
        };
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed("the claims are not base64url"))?;

        // The signature is checked before the claims are trusted; `verify_slice`
        // compares in constant time.
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        if mac.verify_slice(&signature).is_err() {
            let claimed_tenant = serde_json::from_slice::<serde_json::Value>(&json)
                .ok()
                .and_then(|value| value.get("tenant").and_then(|tenant| tenant.as_str()).map(str::to_owned))
                .filter(|tenant| is_valid_id(tenant));
            return Err(TokenError::BadSignature { claimed_tenant });
        }

        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("the claims are not valid"))?;
        if claims.v != TOKEN_VERSION {
            return Err(TokenError::Version(claims.v));
        }
        if !is_valid_id(&claims.tenant) {
            return Err(TokenError::Malformed("the tenant id is invalid"));
        }
        if now >= claims.exp {
            return Err(TokenError::Expired { tenant: claims.tenant, expired_at: claims.exp, now });
        }
        if claims.iat > now + ISSUED_AT_LEEWAY_SECS {
            return Err(TokenError::NotYetValid { tenant: claims.tenant, issued_at: claims.iat, now });
        }
        Ok(claims)
    }
}

/// Returns the wall-clock time in Unix seconds; a clock before 1970 reads as 0.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(Secret::new("k".repeat(32))).expect("long key")
    }

    fn claims(now: u64) -> Claims {
        Claims {
            v: TOKEN_VERSION,
            tenant: "acme".to_owned(),
            user: UserId::new("user-1").expect("valid user"),
            tier: PrivacyTier::SelfHosted,
            iat: now,
            exp: now + 300,
        }
    }

    #[test]
    fn token_round_trips() {
        let token = signer().issue(&claims(1_000));
        assert_eq!(signer().verify(token.expose(), 1_100), Ok(claims(1_000)));
    }

    #[test]
    fn expired_token_is_rejected() {
        let token = signer().issue(&claims(1_000));
        let error = signer().verify(token.expose(), 1_300).expect_err("expired");
        assert_eq!(error, TokenError::Expired { tenant: "acme".to_owned(), expired_at: 1_300, now: 1_300 });
        assert_eq!(error.tenant_for_log(), "acme");
    }

    #[test]
    fn altered_claims_are_rejected() {
        let token = signer().issue(&claims(1_000));
        let (_, signature) = token.expose().split_once('.').expect("two parts");
        let mut forged_claims = claims(1_000);
        forged_claims.tier = PrivacyTier::Cloud;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).expect("json"));
        let forged = format!("{forged_payload}.{signature}");
        let error = signer().verify(&forged, 1_100).expect_err("forged");
        assert_eq!(error, TokenError::BadSignature { claimed_tenant: Some("acme".to_owned()) });
        assert_eq!(error.tenant_for_log(), "claimed:acme");
    }

    #[test]
    fn other_key_is_rejected() {
        let other = TokenSigner::new(Secret::new("o".repeat(32))).expect("long key");
        let token = other.issue(&claims(1_000));
        assert!(matches!(signer().verify(token.expose(), 1_100), Err(TokenError::BadSignature { .. })));
    }

    #[test]
    fn garbage_is_malformed() {
        for token in ["", "abc", "a.b.c", "!!!.???", &"a".repeat(2_000)] {
            let error = signer().verify(token, 1_000).expect_err(token);
            assert!(matches!(error, TokenError::Malformed(_) | TokenError::BadSignature { .. }), "{token}: {error}");
        }
    }

    #[test]
    fn token_from_future_is_rejected() {
        let token = signer().issue(&claims(2_000));
        assert!(matches!(signer().verify(token.expose(), 1_000), Err(TokenError::NotYetValid { .. })));
    }

    #[test]
    fn short_key_is_rejected() {
        assert_eq!(TokenSigner::new(Secret::new("short")).expect_err("short").len, 5);
    }

    #[test]
    fn debug_hides_key() {
        assert_eq!(format!("{:?}", signer()), "TokenSigner([redacted])");
    }
}
