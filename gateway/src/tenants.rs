//! Tenants as the server sees them: id, widest privacy tier, limits, browser
//! origins, and the lookup of an API key.
//!
//! The server reads tenants through the [`TenantDirectory`] trait.
//! [`InMemoryTenants`] holds the tenants of the config file, with their API
//! keys as SHA-256 digests; a database-backed directory plugs in through the
//! same trait.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mentis_pipeline::{PrivacyTier, Secret};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The maximum tenant or user id length, in bytes. Ids appear in logs, metric labels
/// and tokens, so they are kept short.
pub const MAX_ID_LEN: usize = 128;

/// Returns whether `value` is 1 to [`MAX_ID_LEN`] bytes of ASCII letters,
/// digits and `-_.:@`: safe in a log line, a Prometheus label and a URL.
pub fn is_valid_id(value: &str) -> bool {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@');
    !value.is_empty() && value.len() <= MAX_ID_LEN && value.chars().all(valid_char)
}

/// An id that breaks the rule of [`is_valid_id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: use 1 to {MAX_ID_LEN} ASCII letters, digits, '-', '_', '.', ':' or '@'")]
pub struct InvalidId {
    /// "tenant id" or "user id".
    pub kind: &'static str,
    /// The rejected value, cut to [`MAX_ID_LEN`] + 1 characters.
    pub value: String,
}

fn check_id(kind: &'static str, value: &str) -> Result<(), InvalidId> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(InvalidId { kind, value: value.chars().take(MAX_ID_LEN + 1).collect() })
    }
}

/// Per-tenant limits the server enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sessions open at the same time.
    pub max_concurrent_sessions: u32,
    /// Sessions started within one minute (a sliding window).
    pub max_new_sessions_per_minute: u32,
    /// Minutes of client audio accepted per UTC day.
    pub max_audio_minutes_per_day: u64,
    /// Largest WebSocket message, in bytes; a larger one closes with 1009.
    pub max_message_bytes: usize,
    /// Maximum audio frame (one binary message), in milliseconds.
    pub max_frame_ms: u64,
    /// Maximum session length, in seconds.
    pub max_session_seconds: u64,
}

impl Default for Limits {
    /// Modest limits for a new tenant: 10 sessions at once, 30 new sessions a
    /// minute, 600 audio minutes a day, 64 KiB messages, 120 ms frames,
    /// 1-hour sessions.
    fn default() -> Self {
        Limits {
            max_concurrent_sessions: 10,
            max_new_sessions_per_minute: 30,
            max_audio_minutes_per_day: 600,
            max_message_bytes: 64 * 1024,
            max_frame_ms: 120,
            max_session_seconds: 3_600,
        }
    }
}

impl Limits {
    /// Returns the longest session as a duration.
    pub fn max_session(&self) -> Duration {
        Duration::from_secs(self.max_session_seconds)
    }

    /// Checks that every limit allows at least something, naming the field that does not.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_concurrent_sessions == 0 {
            return Err("max_concurrent_sessions must be at least 1");
        }
        if self.max_new_sessions_per_minute == 0 {
            return Err("max_new_sessions_per_minute must be at least 1");
        }
        // A message must hold the start message and one 2.5 ms frame.
        if self.max_message_bytes < 1_024 {
            return Err("max_message_bytes must be at least 1024");
        }
        if self.max_message_bytes > 16 * 1024 * 1024 {
            return Err("max_message_bytes must be at most 16 MiB");
        }
        if !(3..=1_000).contains(&self.max_frame_ms) {
            return Err("max_frame_ms must be between 3 and 1000");
        }
        if self.max_session_seconds == 0 {
            return Err("max_session_seconds must be at least 1");
        }
        Ok(())
    }
}

/// A tenant: one customer of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    id: Arc<str>,
    /// The widest privacy tier its sessions may request.
    pub max_tier: PrivacyTier,
    /// Limits on its sessions.
    pub limits: Limits,
    /// Browser origins (such as `https://app.example.com`) allowed to open
    /// sessions. A request without an `Origin` header (a native app) is not
    /// checked against it.
    pub allowed_origins: Vec<String>,
}

impl Tenant {
    /// Creates a tenant with a validated id.
    pub fn new(id: &str, max_tier: PrivacyTier, limits: Limits) -> Result<Self, InvalidId> {
        check_id("tenant id", id)?;
        Ok(Tenant { id: Arc::from(id), max_tier, limits, allowed_origins: Vec::new() })
    }

    /// Returns the tenant with an origin allow-list.
    #[must_use]
    pub fn with_origins(mut self, origins: impl IntoIterator<Item = String>) -> Self {
        self.allowed_origins = origins.into_iter().collect();
        self
    }

    /// Returns the tenant id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Returns whether a browser at `origin` may open sessions.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// A user id, named by the tenant's app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Validates a user id.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidId> {
        let value = value.into();
        check_id("user id", &value)?;
        Ok(UserId(value))
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidId;

    fn try_from(value: String) -> Result<Self, InvalidId> {
        UserId::new(value)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 digest of an API key, the form in which keys are stored.
///
/// A plain digest suffices because keys are high-entropy random strings, not
/// passwords: recovering a key from its digest means searching its whole key space.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Hashes a key as a client presents it.
    pub fn of(key: &Secret) -> Self {
        KeyDigest(Sha256::digest(key.expose().as_bytes()).into())
    }

    /// Parses 64 hex digits, as written in the config file.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0_u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * index..2 * index + 2)?, 16).ok()?;
        }
        Some(KeyDigest(bytes))
    }

    /// Returns the digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Compares in constant time.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 4 bytes tell keys apart in a log without giving the digest away.
        write!(f, "KeyDigest({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// A failure of the tenant directory itself, not of the key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the tenant directory is unavailable: {0}")]
pub struct DirectoryError(pub String);

/// The source of tenants and API keys for the server.
pub trait TenantDirectory: Send + Sync + fmt::Debug + 'static {
    /// Returns the tenant whose API key this is, or `None` for an unknown or revoked key.
    fn authenticate<'a>(&'a self, key: &'a Secret) -> BoxFuture<'a, Result<Option<Tenant>, DirectoryError>>;

    /// Returns a tenant by id, or `None` when it no longer exists.
    fn tenant<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Tenant>, DirectoryError>>;

    /// Checks that the directory responds, for the readiness probe.
    fn ping(&self) -> BoxFuture<'_, Result<(), DirectoryError>>;
}

/// Tenants and API key digests held in memory, as read from the config file.
#[derive(Debug, Default)]
pub struct InMemoryTenants {
    tenants: HashMap<String, Tenant>,
    keys: Vec<(KeyDigest, String)>,
}

/// A tenant table that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantTableError {
    /// Two tenants share an id.
    #[error("tenant {0} is defined twice")]
    DuplicateTenant(String),
    /// A key digest belongs to a tenant that is not defined.
    #[error("an API key refers to tenant {0}, which is not defined")]
    UnknownTenant(String),
    /// Two tenants share a key digest.
    #[error("API key digest {0} is listed twice; every key must be unique")]
    DuplicateKey(String),
}

impl InMemoryTenants {
    /// Creates an empty table.
    pub fn new() -> Self {
        InMemoryTenants::default()
    }

    /// Adds a tenant.
    pub fn add_tenant(&mut self, tenant: Tenant) -> Result<(), TenantTableError> {
        if self.tenants.contains_key(tenant.id()) {
            return Err(TenantTableError::DuplicateTenant(tenant.id().to_owned()));
        }
        self.tenants.insert(tenant.id().to_owned(), tenant);
        Ok(())
    }

    /// Adds the digest of an API key of `tenant`.
    pub fn add_key(&mut self, tenant: &str, digest: KeyDigest) -> Result<(), TenantTableError> {
        if !self.tenants.contains_key(tenant) {
            return Err(TenantTableError::UnknownTenant(tenant.to_owned()));
        }
        if self.keys.iter().any(|(known, _)| known.matches(&digest)) {
            return Err(TenantTableError::DuplicateKey(format!("{digest:?}")));
        }
        self.keys.push((digest, tenant.to_owned()));
        Ok(())
    }

    /// Looks a presented key up, comparing against every stored digest in
    /// constant time and without stopping at the first match, so the time
    /// taken does not depend on which entry matches.
    pub fn find(&self, key: &Secret) -> Option<&Tenant> {
        let presented = KeyDigest::of(key);
        let mut found: Option<&str> = None;
        for (digest, tenant) in &self.keys {
            if digest.matches(&presented) {
                found = Some(tenant);
            }
        }
        found.and_then(|tenant| self.tenants.get(tenant))
    }
}

impl TenantDirectory for InMemoryTenants {
    fn authenticate<'a>(&'a self, key: &'a Secret) -> BoxFuture<'a, Result<Option<Tenant>, DirectoryError>> {
        Box::pin(async move { Ok(self.find(key).cloned()) })
    }

    fn tenant<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Tenant>, DirectoryError>> {
        Box::pin(async move { Ok(self.tenants.get(id).cloned()) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), DirectoryError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> InMemoryTenants {
        let mut table = InMemoryTenants::new();
        for id in ["acme", "globex"] {
            table.add_tenant(Tenant::new(id, PrivacyTier::OnDevice, Limits::default()).expect("valid id")).expect("new tenant");
        }
        table.add_key("acme", KeyDigest::of(&Secret::new("key-acme"))).expect("new key");
        table.add_key("globex", KeyDigest::of(&Secret::new("key-globex"))).expect("new key");
        table
    }

    #[test]
    fn key_finds_its_tenant() {
        let table = table();
        assert_eq!(table.find(&Secret::new("key-acme")).map(Tenant::id), Some("acme"));
        assert_eq!(table.find(&Secret::new("key-globex")).map(Tenant::id), Some("globex"));
        assert!(table.find(&Secret::new("key-unknown")).is_none());
    }

    #[test]
    fn digest_hex_round_trips() {
        let digest = KeyDigest::of(&Secret::new("abc"));
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(digest.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(KeyDigest::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(KeyDigest::from_hex("zz"), None);
        assert_eq!(KeyDigest::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn duplicate_key_is_rejected() {
        let mut table = table();
        let error = table.add_key("globex", KeyDigest::of(&Secret::new("key-acme"))).expect_err("duplicate");
        assert!(matches!(error, TenantTableError::DuplicateKey(_)));
    }

    #[test]
    fn ids_are_validated() {
        assert!(Tenant::new("bad tenant", PrivacyTier::Cloud, Limits::default()).is_err());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("user-1@example.com").is_ok());
        assert!(UserId::new("x".repeat(129)).is_err());
    }

    #[test]
    fn origins_compare_without_case() {
        let tenant = Tenant::new("acme", PrivacyTier::Cloud, Limits::default())
            .expect("valid id")
            .with_origins(["https://app.acme.test".to_owned()]);
        assert!(tenant.allows_origin("https://APP.acme.test"));
        assert!(!tenant.allows_origin("https://evil.test"));
    }

    #[test]
    fn default_limits_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let zero = Limits { max_concurrent_sessions: 0, ..Limits::default() };
        assert!(zero.validate().expect_err("zero sessions").contains("max_concurrent_sessions"));
    }
}
