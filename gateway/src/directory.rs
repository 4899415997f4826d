//! The tenant directory backed by a [`Store`]: API keys, tenants and the
//! readiness probe read from the SQLite or PostgreSQL store.
//!
//! Every lookup goes to the store, so a tenant created, changed or whose key
//! is revoked through one gateway process takes effect in every process that
//! shares the store, on the next token request or session.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mentis_pipeline::Secret;

use crate::store::{self, Store, StoreError, TenantId};
use crate::tenants::{DirectoryError, Limits, Tenant, TenantDirectory};

/// A [`TenantDirectory`] over a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreDirectory {
    store: Arc<dyn Store>,
}

impl StoreDirectory {
    /// Reads tenants and API keys from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreDirectory { store }
    }
}

/// Converts the store's limits to the server's. The daily audio quota is
/// stored in seconds and enforced in whole minutes, rounded up.
pub fn server_limits(limits: &store::TenantLimits) -> Limits {
    Limits {
        max_concurrent_sessions: limits.max_concurrent_sessions,
        max_new_sessions_per_minute: limits.max_new_sessions_per_minute,
        max_audio_minutes_per_day: limits.max_audio_seconds_per_day.div_ceil(60),
        max_message_bytes: usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX),
        max_frame_ms: u64::from(limits.max_frame_ms),
        max_session_seconds: u64::from(limits.max_session_seconds),
    }
}

/// Converts a stored tenant to the server's view, checking its limits.
pub fn server_tenant(tenant: &store::Tenant) -> Result<Tenant, DirectoryError> {
    let limits = server_limits(&tenant.limits);
    limits
        .validate()
        .map_err(|problem| DirectoryError(format!("tenant {} has invalid stored limits: {problem}", tenant.id)))?;
    let converted = Tenant::new(tenant.id.as_str(), tenant.max_tier, limits)
        .map_err(|error| DirectoryError(format!("stored tenant id: {error}")))?
        .with_origins(tenant.allowed_origins.iter().cloned());
    Ok(converted)
}

/// Reports a store failure as an unavailable directory, logged here once.
fn unavailable(error: &StoreError) -> DirectoryError {
    tracing::warn!(%error, "tenant lookup in the store failed");
    DirectoryError(error.to_string())
}

impl TenantDirectory for StoreDirectory {
    fn authenticate<'a>(&'a self, key: &'a Secret) -> BoxFuture<'a, Result<Option<Tenant>, DirectoryError>> {
        Box::pin(async move {
            match self.store.authenticate(key).await {
                Ok(Some(tenant)) => server_tenant(&tenant).map(Some),
                Ok(None) => Ok(None),
                Err(error) => Err(unavailable(&error)),
            }
        })
    }

    fn tenant<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Tenant>, DirectoryError>> {
        Box::pin(async move {
            // A token carries a tenant id we signed, but an id the store
            // cannot hold names no tenant.
            let Ok(id) = TenantId::new(id) else {
                return Ok(None);
            };
            match self.store.tenant(&id).await {
                Ok(tenant) => server_tenant(&tenant).map(Some),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(error) => Err(unavailable(&error)),
            }
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), DirectoryError>> {
        Box::pin(async move {
            // A probe that hangs is as bad as one that fails: kubelet's own
            // timeout would mark the pod unready without a reason in the log.
            match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(unavailable(&error)),
                Err(_) => Err(DirectoryError(format!("the store did not answer a ping within {PING_TIMEOUT:?}"))),
            }
        })
    }
}

/// Time the store has to answer the readiness probe's ping.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use mentis_pipeline::PrivacyTier;

    fn stored(id: &str) -> store::Tenant {
        store::Tenant {
            id: TenantId::new(id).expect("valid id"),
            name: "Acme".to_owned(),
            max_tier: PrivacyTier::SelfHosted,
            transcript_retention: Duration::from_secs(86_400),
            audio_retention: Duration::from_secs(3_600),
            limits: store::TenantLimits { max_audio_seconds_per_day: 61, max_frame_ms: 60, ..store::TenantLimits::default() },
            allowed_origins: vec!["https://app.acme.test".to_owned()],
        }
    }

    #[tokio::test]
    async fn key_maps_to_server_tenant() {
        let store = Arc::new(SqliteStore::open_in_memory().await.expect("open"));
        store.create_tenant(&stored("acme")).await.expect("create");
        let key = store::generate_api_key().expect("random key");
        store.add_api_key(&TenantId::new("acme").expect("id"), &key.hash, "test").await.expect("add key");
        let directory = StoreDirectory::new(store);

        let tenant = directory.authenticate(&key.key).await.expect("store answers").expect("known key");
        assert_eq!(tenant.id(), "acme");
        assert_eq!(tenant.max_tier, PrivacyTier::SelfHosted);
        assert_eq!(tenant.limits.max_frame_ms, 60);
        assert_eq!(tenant.limits.max_audio_minutes_per_day, 2, "61 s rounds up to 2 minutes");
        assert!(tenant.allows_origin("https://app.acme.test"));
        assert!(directory.authenticate(&Secret::new("mgk_unknown")).await.expect("store answers").is_none());
    }

    #[tokio::test]
    async fn unknown_tenant_is_none() {
        let store = Arc::new(SqliteStore::open_in_memory().await.expect("open"));
        let directory = StoreDirectory::new(store);
        assert!(directory.tenant("nobody").await.expect("store answers").is_none());
        assert!(directory.tenant("not a valid id").await.expect("store answers").is_none());
        directory.ping().await.expect("an open store answers");
    }

    #[test]
    fn invalid_stored_limits_are_reported() {
        let mut tenant = stored("acme");
        tenant.limits.max_concurrent_sessions = 0;
        let error = server_tenant(&tenant).expect_err("zero sessions");
        assert!(error.to_string().contains("max_concurrent_sessions"), "{error}");
    }
}
