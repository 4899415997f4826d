//! Per-tenant limits on sessions and audio, behind the [`LimitStore`] trait.
//!
//! [`InProcessLimits`] counts in this process's memory, which is exact for a
//! single gateway. Several gateway processes need shared counters (Redis)
//! implementing the same trait.
//!
//! Fairness between tenants comes from each tenant having its own counters
//! and caps: one tenant at its limit is rejected without touching any other
//! tenant's sessions or counters.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::tenants::Limits;

/// The window of the new-sessions limit.
pub const SESSION_RATE_WINDOW: Duration = Duration::from_secs(60);

/// A limit that a request would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The tenant has as many sessions open as it may.
    #[error("tenant {tenant} already has {limit} sessions open, its limit; close one or ask for a higher limit")]
    ConcurrentSessions {
        /// The tenant.
        tenant: String,
        /// Its concurrent-session limit.
        limit: u32,
    },
    /// The tenant started as many sessions in the last minute as it may.
    #[error("tenant {tenant} started {limit} sessions in the last minute, its limit; retry in {retry_after:?}")]
    SessionRate {
        /// The tenant.
        tenant: String,
        /// Its sessions-per-minute limit.
        limit: u32,
        /// When a new session will be accepted again.
        retry_after: Duration,
    },
    /// The tenant used its audio minutes for the day (UTC).
    #[error("tenant {tenant} used its {limit_minutes} audio minutes for today (UTC); the quota resets at midnight UTC")]
    AudioQuota {
        /// The tenant.
        tenant: String,
        /// Its daily audio limit, in minutes.
        limit_minutes: u64,
    },
}

impl LimitExceeded {
    /// Returns a short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            LimitExceeded::ConcurrentSessions { .. } => "concurrent_sessions",
            LimitExceeded::SessionRate { .. } => "session_rate",
            LimitExceeded::AudioQuota { .. } => "audio_quota",
        }
    }

    /// Returns how long the client should wait before trying again, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LimitExceeded::SessionRate { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A limit check that did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A limit would be exceeded.
    #[error(transparent)]
    Exceeded(#[from] LimitExceeded),
    /// The counters cannot be reached (a shared store is down).
    #[error("the limit counters are unavailable: {0}")]
    Unavailable(String),
}

/// Counters of sessions and audio per tenant.
pub trait LimitStore: Send + Sync + fmt::Debug + 'static {
    /// Counts a new session of `tenant` if its concurrent-session, new-session
    /// and audio limits allow it; nothing is counted when it fails.
    fn open_session<'a>(&'a self, tenant: &'a str, session: &'a str, limits: &'a Limits) -> BoxFuture<'a, Result<(), LimitError>>;

    /// Stops counting a session opened with [`LimitStore::open_session`].
    /// Closing an unknown session does nothing.
    fn close_session<'a>(&'a self, tenant: &'a str, session: &'a str) -> BoxFuture<'a, ()>;

    /// Adds `audio` to the tenant's audio of the day, failing when that
    /// reaches the daily limit. The audio is counted either way.
    fn add_audio<'a>(&'a self, tenant: &'a str, audio: Duration, limits: &'a Limits) -> BoxFuture<'a, Result<(), LimitError>>;
}

/// Returns the current UTC day number since the Unix epoch.
fn utc_day() -> u64 {
    crate::auth::unix_now() / 86_400
}

#[derive(Debug, Default)]
struct TenantCounters {
    open: HashSet<String>,
    /// Start times within the rate window, oldest first.
    starts: VecDeque<Instant>,
    audio_day: u64,
    audio_today: Duration,
}

impl TenantCounters {
    fn forget_old_starts(&mut self, now: Instant) {
        while self.starts.front().is_some_and(|&start| now.duration_since(start) >= SESSION_RATE_WINDOW) {
            self.starts.pop_front();
        }
    }

    fn audio_today(&mut self, day: u64) -> Duration {
        if self.audio_day != day {
            self.audio_day = day;
            self.audio_today = Duration::ZERO;
        }
        self.audio_today
    }
}

/// Limit counters in this process's memory, on the tokio clock.
#[derive(Debug, Default, Clone)]
pub struct InProcessLimits {
    tenants: Arc<Mutex<HashMap<String, TenantCounters>>>,
}

impl InProcessLimits {
    /// Creates empty counters.
    pub fn new() -> Self {
        InProcessLimits::default()
    }

    /// Returns the number of sessions of `tenant` counted as open.
    pub fn open_sessions(&self, tenant: &str) -> usize {
        self.tenants.lock().get(tenant).map_or(0, |counters| counters.open.len())
    }

    fn try_open(&self, tenant: &str, session: &str, limits: &Limits) -> Result<(), LimitExceeded> {
        let now = Instant::now();
        let day = utc_day();
        let mut tenants = self.tenants.lock();
        let counters = tenants.entry(tenant.to_owned()).or_default();

        if counters.open.len() >= limits.max_concurrent_sessions as usize {
            return Err(LimitExceeded::ConcurrentSessions { tenant: tenant.to_owned(), limit: limits.max_concurrent_sessions });
        }
        counters.forget_old_starts(now);
        if counters.starts.len() >= limits.max_new_sessions_per_minute as usize {
            let oldest = counters.starts.front().copied().unwrap_or(now);
            let retry_after = SESSION_RATE_WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(LimitExceeded::SessionRate {
                tenant: tenant.to_owned(),
                limit: limits.max_new_sessions_per_minute,
                retry_after,
            });
        }
        if counters.audio_today(day) >= Duration::from_secs(limits.max_audio_minutes_per_day.saturating_mul(60)) {
            return Err(LimitExceeded::AudioQuota { tenant: tenant.to_owned(), limit_minutes: limits.max_audio_minutes_per_day });
        }

        counters.open.insert(session.to_owned());
        counters.starts.push_back(now);
        Ok(())
    }
}

impl LimitStore for InProcessLimits {
    fn open_session<'a>(&'a self, tenant: &'a str, session: &'a str, limits: &'a Limits) -> BoxFuture<'a, Result<(), LimitError>> {
        Box::pin(async move { self.try_open(tenant, session, limits).map_err(LimitError::from) })
    }

    fn close_session<'a>(&'a self, tenant: &'a str, session: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(counters) = self.tenants.lock().get_mut(tenant) {
                counters.open.remove(session);
            }
        })
    }

    fn add_audio<'a>(&'a self, tenant: &'a str, audio: Duration, limits: &'a Limits) -> BoxFuture<'a, Result<(), LimitError>> {
        Box::pin(async move {
            let day = utc_day();
            let mut tenants = self.tenants.lock();
            let counters = tenants.entry(tenant.to_owned()).or_default();
            let total = counters.audio_today(day) + audio;
            counters.audio_today = total;
            if total >= Duration::from_secs(limits.max_audio_minutes_per_day.saturating_mul(60)) {
                return Err(LimitExceeded::AudioQuota { tenant: tenant.to_owned(), limit_minutes: limits.max_audio_minutes_per_day }.into());
            }
            Ok(())
        })
    }
}

/// A session counted by a [`LimitStore`]; dropping it stops the count on a
/// spawned task, so a session that ends by panic or cancellation is released too.
pub struct SessionLease {
    store: Arc<dyn LimitStore>,
    tenant: String,
    session: String,
    released: bool,
}

impl fmt::Debug for SessionLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLease").field("tenant", &self.tenant).field("session", &self.session).finish()
    }
}

impl SessionLease {
    /// Counts a new session, or returns the limit it would exceed.
    pub async fn acquire(store: Arc<dyn LimitStore>, tenant: &str, session: &str, limits: &Limits) -> Result<Self, LimitError> {
        store.open_session(tenant, session, limits).await?;
        Ok(SessionLease { store, tenant: tenant.to_owned(), session: session.to_owned(), released: false })
    }

    /// Stops counting the session and waits until the store has done so.
    pub async fn release(mut self) {
        self.released = true;
        self.store.close_session(&self.tenant, &self.session).await;
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let store = Arc::clone(&self.store);
        let tenant = std::mem::take(&mut self.tenant);
        let session = std::mem::take(&mut self.session);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { store.close_session(&tenant, &session).await });
        } else {
            tracing::warn!(tenant, session, "a session lease was dropped outside a tokio runtime; its count stays until restart");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_concurrent_sessions: 2, max_new_sessions_per_minute: 3, max_audio_minutes_per_day: 1, ..Limits::default() }
    }

    #[tokio::test]
    async fn concurrent_limit_holds_per_tenant() {
        let store = InProcessLimits::new();
        let limits = limits();
        store.open_session("a", "s1", &limits).await.expect("first");
        store.open_session("a", "s2", &limits).await.expect("second");
        let error = store.open_session("a", "s3", &limits).await.expect_err("third");
        assert!(matches!(error, LimitError::Exceeded(LimitExceeded::ConcurrentSessions { limit: 2, .. })));
        // Another tenant is not affected.
        store.open_session("b", "s1", &limits).await.expect("other tenant");
        store.close_session("a", "s1").await;
        store.open_session("a", "s3", &limits).await.expect("room after close");
    }

    #[tokio::test(start_paused = true)]
    async fn session_rate_window_slides() {
        let store = InProcessLimits::new();
        let limits = Limits { max_concurrent_sessions: 100, ..limits() };
        for index in 0..3 {
            store.open_session("a", &format!("s{index}"), &limits).await.expect("within rate");
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        let error = store.open_session("a", "s3", &limits).await.expect_err("rate");
        let LimitError::Exceeded(exceeded) = error else { panic!("expected a limit") };
        assert_eq!(exceeded.reason(), "session_rate");
        assert_eq!(exceeded.retry_after(), Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        store.open_session("a", "s3", &limits).await.expect("the oldest start left the window");
    }

    #[tokio::test]
    async fn audio_quota_blocks_new_sessions() {
        let store = InProcessLimits::new();
        let limits = limits();
        store.add_audio("a", Duration::from_secs(59), &limits).await.expect("under a minute");
        let error = store.add_audio("a", Duration::from_secs(1), &limits).await.expect_err("a minute");
        assert!(matches!(error, LimitError::Exceeded(LimitExceeded::AudioQuota { limit_minutes: 1, .. })));
        let error = store.open_session("a", "s1", &limits).await.expect_err("quota used");
        assert!(matches!(error, LimitError::Exceeded(LimitExceeded::AudioQuota { .. })));
        store.open_session("b", "s1", &limits).await.expect("other tenant");
    }

    #[tokio::test]
    async fn dropped_lease_releases() {
        let store = Arc::new(InProcessLimits::new());
        let limits = limits();
        let lease = SessionLease::acquire(Arc::clone(&store) as Arc<dyn LimitStore>, "a", "s1", &limits).await.expect("lease");
        assert_eq!(store.open_sessions("a"), 1);
        drop(lease);
        tokio::task::yield_now().await;
        assert_eq!(store.open_sessions("a"), 0);
    }
}
