//! Storage of tenants, API keys, consent, sessions, transcripts, audio and
//! the audit log, behind the [`Store`] trait.
//!
//! Two implementations pass the same test suite:
//!
//! - [`SqliteStore`]: an embedded database file, the default, for a single
//!   gateway process. Every query filters by tenant.
//! - [`PostgresStore`]: for several gateway processes. Every tenant's rows
//!   are also guarded by PostgreSQL row-level security keyed on the
//!   transaction setting `app.tenant_id`, so a query that omits the tenant
//!   filter still returns only that tenant's rows.
//!
//! Privacy rules live in the store, not in its callers: a transcript or audio
//! clip is written only when the user's latest consent record covers it
//! (checked in the same statement as the insert), a deletion leaves an audit
//! entry without content, and [`Store::purge_expired`] deletes what is older
//! than each tenant's retention period.

mod api_key;
mod error;
mod postgres;
mod sqlite;
mod types;

use async_trait::async_trait;
use mentis_pipeline::{PrivacyTier, Secret};

pub use api_key::{API_KEY_PREFIX, ApiKeyHash, NewApiKey, RandomSourceError, generate_api_key};
pub use error::StoreError;
pub use postgres::{DEFAULT_POOL_SIZE, PostgresStore, TENANT_SETTING};
pub use sqlite::SqliteStore;
pub use types::{
    AuditAction, AuditEntry, AudioRecord, ConsentRecord, ConsentScope, DeletedCounts, MAX_AUDIO_BYTES,
    MAX_AUDIO_FORMAT_LEN, MAX_ID_LEN, MAX_TRANSCRIPT_BYTES, PurgeSummary, SessionId, SessionRecord, StoreOutcome,
    Tenant, TenantId, TenantLimits, Timestamp, TranscriptRecord, UserExport, UserId,
};

/// Persistent records of the gateway. Every method that touches a user's data
/// takes the tenant id and acts within that tenant only: a user or session id
/// of another tenant is reported as not found.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Creates a tenant. Fails with [`StoreError::AlreadyExists`] if the id is taken.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;

    /// Reads a tenant.
    async fn tenant(&self, id: &TenantId) -> Result<Tenant, StoreError>;

    /// Lists every tenant, ordered by id.
    async fn tenants(&self) -> Result<Vec<Tenant>, StoreError>;

    /// Stores the digest of a new API key of `tenant`, with a label for operators.
    async fn add_api_key(&self, tenant: &TenantId, hash: &ApiKeyHash, label: &str) -> Result<(), StoreError>;

    /// Revokes an API key. Returns false when no key of `tenant` has this digest.
    async fn revoke_api_key(&self, tenant: &TenantId, hash: &ApiKeyHash) -> Result<bool, StoreError>;

    /// Looks up the digest of an unrevoked API key, returning the stored
    /// digest and its tenant. Use [`Store::authenticate`] instead, which also
    /// compares the digests in constant time.
    async fn find_api_key(&self, hash: &ApiKeyHash) -> Result<Option<(ApiKeyHash, TenantId)>, StoreError>;

    /// Appends a consent record for `user` (creating the user on first use)
    /// and returns it. It takes effect at once: nothing outside `scope` is
    /// stored for the user from then on.
    async fn record_consent(
        &self,
        tenant: &TenantId,
        user: &UserId,
        scope: ConsentScope,
        at: Timestamp,
    ) -> Result<ConsentRecord, StoreError>;

    /// Returns the user's current consent: the scope of the latest record, or
    /// [`ConsentScope::NONE`] when there is none.
    async fn current_consent(&self, tenant: &TenantId, user: &UserId) -> Result<ConsentScope, StoreError>;

    /// Returns every consent record of the user, oldest first.
    async fn consent_history(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<ConsentRecord>, StoreError>;

    /// Records the start of a session of `user` (creating the user on first use).
    async fn start_session(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
        tier: PrivacyTier,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Records the end of a session.
    async fn end_session(&self, tenant: &TenantId, session: &SessionId, at: Timestamp) -> Result<(), StoreError>;

    /// Stores a final transcript of the session's user if their current
    /// consent covers transcripts; otherwise stores nothing and returns
    /// [`StoreOutcome::NotConsented`].
    async fn store_transcript(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        text: &str,
        at: Timestamp,
    ) -> Result<StoreOutcome, StoreError>;

    /// Stores an audio clip of the session's user if their current consent
    /// covers audio; otherwise stores nothing and returns
    /// [`StoreOutcome::NotConsented`]. `format` describes the bytes, such as
    /// `pcm16/16000/1`.
    async fn store_audio(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        format: &str,
        data: &[u8],
        at: Timestamp,
    ) -> Result<StoreOutcome, StoreError>;

    /// Everything stored about the user. Fails with [`StoreError::NotFound`]
    /// when the tenant has no such user.
    async fn export_user(&self, tenant: &TenantId, user: &UserId, at: Timestamp) -> Result<UserExport, StoreError>;

    /// Deletes everything about the user (consent records, sessions,
    /// transcripts, audio) and appends an [`AuditAction::UserDeleted`] entry
    /// in the same transaction. Fails with [`StoreError::NotFound`] when the
    /// tenant has no such user.
    async fn delete_user(&self, tenant: &TenantId, user: &UserId, at: Timestamp) -> Result<DeletedCounts, StoreError>;

    /// Returns the tenant's audit log, oldest first.
    async fn audit_log(&self, tenant: &TenantId) -> Result<Vec<AuditEntry>, StoreError>;

    /// Deletes, for every tenant, transcripts and audio created before `now`
    /// minus the tenant's retention period, and appends an
    /// [`AuditAction::RetentionPurge`] entry for each tenant that had any.
    async fn purge_expired(&self, now: Timestamp) -> Result<PurgeSummary, StoreError>;

    /// Checks that the database responds, for the readiness probe.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Maps an API key presented by a client to its tenant: hashes it, looks
    /// the digest up, and compares the stored digest in constant time.
    /// Returns `None` for an unknown or revoked key.
    async fn authenticate(&self, key: &Secret) -> Result<Option<Tenant>, StoreError> {
        let presented = ApiKeyHash::of(key.expose());
        let Some((stored, tenant_id)) = self.find_api_key(&presented).await? else {
            return Ok(None);
        };
        if !stored.matches(&presented) {
            return Ok(None);
        }
        self.tenant(&tenant_id).await.map(Some)
    }
}

/// Checks the settings of a tenant before it is stored.
pub(crate) fn validate_tenant(tenant: &Tenant) -> Result<(), StoreError> {
    // Retention is stored in whole seconds as a signed 64-bit number.
    let max_retention = std::time::Duration::from_secs(i64::MAX as u64 / 1000);
    for (field, retention) in
        [("transcript_retention", tenant.transcript_retention), ("audio_retention", tenant.audio_retention)]
    {
        if retention > max_retention {
            return Err(StoreError::InvalidTenant { field, reason: format!("{retention:?} is too long") });
        }
    }
    if tenant.name.len() > 256 {
        return Err(StoreError::InvalidTenant { field: "name", reason: "longer than 256 bytes".to_owned() });
    }
    if i64::try_from(tenant.limits.max_audio_seconds_per_day).is_err() {
        return Err(StoreError::InvalidTenant {
            field: "max_audio_seconds_per_day",
            reason: format!("{} is too large", tenant.limits.max_audio_seconds_per_day),
        });
    }
    if tenant.allowed_origins.len() > MAX_ORIGINS {
        return Err(StoreError::InvalidTenant {
            field: "allowed_origins",
            reason: format!("{} origins, more than the maximum of {MAX_ORIGINS}", tenant.allowed_origins.len()),
        });
    }
    for origin in &tenant.allowed_origins {
        let valid = !origin.is_empty() && origin.len() <= MAX_ORIGIN_LEN && origin.chars().all(|c| c.is_ascii_graphic());
        if !valid {
            return Err(StoreError::InvalidTenant {
                field: "allowed_origins",
                reason: format!("{origin:?} is not an origin such as https://app.example.com (1 to {MAX_ORIGIN_LEN} printable ASCII characters)"),
            });
        }
    }
    Ok(())
}

/// Maximum number of allowed browser origins of one tenant.
pub const MAX_ORIGINS: usize = 32;

/// Maximum length of one allowed origin, in bytes.
pub const MAX_ORIGIN_LEN: usize = 256;

/// Maximum length of an API key label, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// Checks the label of an API key.
pub(crate) fn validate_label(label: &str) -> Result<(), StoreError> {
    if label.len() > MAX_LABEL_LEN {
        return Err(StoreError::TooLarge { what: "API key label", size: label.len(), max: MAX_LABEL_LEN });
    }
    Ok(())
}
