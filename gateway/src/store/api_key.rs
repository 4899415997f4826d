//! API keys: generated with 256 bits from the operating system's random
//! source, stored only as their SHA-256 digest, and compared in constant time.
//!
//! A plain SHA-256 digest is enough here (no salt, no slow hash) because the
//! keys are random, not chosen by people: guessing one from its digest means
//! searching 2^256 values.

use std::fmt;

use mentis_pipeline::Secret;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every API key, so a leaked key is recognisable in a scan.
pub const API_KEY_PREFIX: &str = "mgk_";

/// Number of random bytes in a key.
const KEY_RANDOM_BYTES: usize = 32;

/// The SHA-256 digest of an API key: what the store keeps in place of the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// Hashes a key as presented by a client.
    pub fn of(key: &str) -> ApiKeyHash {
        ApiKeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Wraps a digest read from the database.
    pub fn from_bytes(bytes: &[u8]) -> Option<ApiKeyHash> {
        <[u8; 32]>::try_from(bytes).ok().map(ApiKeyHash)
    }

    /// Returns the 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares two digests in constant time, so the time taken reveals
    /// nothing about how many leading bytes match.
    pub fn matches(&self, other: &ApiKeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for ApiKeyHash {
    /// Prints the first 4 bytes only: enough to tell keys apart in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// A new API key: the secret to hand to the tenant once, and the digest to store.
#[derive(Debug)]
pub struct NewApiKey {
    /// The key. Show it to the tenant once; the store never has it.
    pub key: Secret,
    /// Its digest, for [`Store::add_api_key`](super::Store::add_api_key).
    pub hash: ApiKeyHash,
}

/// Error of the operating system's random source.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomSourceError(String);

/// Generates a key: [`API_KEY_PREFIX`] followed by 64 lowercase hex digits.
pub fn generate_api_key() -> Result<NewApiKey, RandomSourceError> {
    let mut random = zeroize::Zeroizing::new([0u8; KEY_RANDOM_BYTES]);
    OsRng.try_fill_bytes(random.as_mut()).map_err(|error| RandomSourceError(error.to_string()))?;

    let mut key = String::with_capacity(API_KEY_PREFIX.len() + 2 * KEY_RANDOM_BYTES);
    key.push_str(API_KEY_PREFIX);
    for byte in random.iter() {
        key.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        key.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
    }
    let hash = ApiKeyHash::of(&key);
    Ok(NewApiKey { key: Secret::new(key), hash })
}

/// Returns the lowercase hex SHA-256 of `value`.
pub(crate) fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}
