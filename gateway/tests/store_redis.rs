//! Limits and the session registry shared through Redis: two gateways, each
//! with its own Redis connections and its own PostgreSQL store (standing in
//! for two gateway processes), against one Redis and one PostgreSQL. The
//! limits must hold across both.
//!
//! Needs `eval "$(scripts/services)"` first; see `store_support` for how a
//! missing service is reported.

mod store_support;

use std::sync::Arc;
use std::time::Duration;

use mentis_gateway::limits::{LimitError, LimitExceeded, LimitStore};
use mentis_gateway::redis::{RedisLimits, RedisSessionRegistry, SessionRegistry};
use mentis_gateway::store::{PostgresStore, SessionId, Store, Timestamp, UserId};
use mentis_gateway::tenants::Limits;
use mentis_pipeline::PrivacyTier;
use store_support::{DAY, service_url, tenant};

/// One simulated gateway process.
struct Gateway {
    name: &'static str,
    limits: Arc<RedisLimits>,
    registry: RedisSessionRegistry,
    store: PostgresStore,
}

impl Gateway {
    async fn start(name: &'static str, redis_url: &str, postgres_url: &str) -> Gateway {
        Gateway {
            name,
            limits: Arc::new(RedisLimits::connect(redis_url).await.expect("connect limits to Redis")),
            registry: RedisSessionRegistry::connect(redis_url).await.expect("connect registry to Redis"),
            store: PostgresStore::connect_with_pool_size(postgres_url, 2).await.expect("connect to PostgreSQL"),
        }
    }

    /// Admits a session as the gateway would: limits, then registry, then store.
    async fn admit(&self, tenant: &str, session: &str, limits: &Limits) -> Result<(), LimitError> {
        self.limits.open_session(tenant, session, limits).await?;
        let registered = self.registry.register(session, self.name, Duration::from_secs(60)).await.expect("register");
        assert!(registered, "session id {session} registered twice");
        let tenant_id = mentis_gateway::store::TenantId::new(tenant).expect("valid tenant id");
        self.store
            .start_session(
                &tenant_id,
                &UserId::new("user").expect("valid user"),
                &SessionId::new(session).expect("valid session"),
                PrivacyTier::OnDevice,
                Timestamp::now(),
            )
            .await
            .expect("store session");
        Ok(())
    }
}

struct Services {
    redis_url: String,
    postgres_url: String,
}

/// Returns the service URLs, with the schema migrated, or `None` outside CI when unset.
async fn services() -> Option<Services> {
    let redis_url = service_url("MENTIS_TEST_REDIS_URL")?;
    let backend = store_support::postgres_backend().await?;
    let store_support::Raw::Postgres(postgres_url) = backend.raw else {
        unreachable!("postgres_backend returns a PostgreSQL backend");
    };
    Some(Services { redis_url, postgres_url })
}

fn limits(concurrent: u32, per_minute: u32, audio_minutes: u64) -> Limits {
    Limits {
        max_concurrent_sessions: concurrent,
        max_new_sessions_per_minute: per_minute,
        max_audio_minutes_per_day: audio_minutes,
        ..Limits::default()
    }
}

/// Creates a tenant in PostgreSQL and returns its id.
async fn new_tenant(gateway: &Gateway, label: &str) -> String {
    let tenant = tenant(label, DAY, DAY);
    gateway.store.create_tenant(&tenant).await.expect("create tenant");
    tenant.id.to_string()
}

#[tokio::test]
async fn concurrent_limit_holds_across_gateways() {
    let Some(services) = services().await else {
        return;
    };
    let a = Gateway::start("gateway-a", &services.redis_url, &services.postgres_url).await;
    let b = Gateway::start("gateway-b", &services.redis_url, &services.postgres_url).await;
    let tenant = new_tenant(&a, "redis-concurrent").await;
    let limits = limits(3, 100, 600);

    a.admit(&tenant, &format!("{tenant}-1"), &limits).await.expect("first session");
    b.admit(&tenant, &format!("{tenant}-2"), &limits).await.expect("second session");
    a.admit(&tenant, &format!("{tenant}-3"), &limits).await.expect("third session");
    for gateway in [&a, &b] {
        let refused = gateway.admit(&tenant, &format!("{tenant}-4"), &limits).await;
        assert!(
            matches!(refused, Err(LimitError::Exceeded(LimitExceeded::ConcurrentSessions { limit: 3, .. }))),
            "{}: {refused:?}",
            gateway.name
        );
    }
    assert_eq!(a.limits.open_sessions(&tenant).await.expect("count"), 3);

    // A session closed on A frees a slot for B.
    a.limits.close_session(&tenant, &format!("{tenant}-1")).await;
    b.admit(&tenant, &format!("{tenant}-4"), &limits).await.expect("session after a close");

    // PostgreSQL contains exactly the admitted sessions, from both gateways.
    let tenant_id = mentis_gateway::store::TenantId::new(tenant.clone()).expect("valid tenant id");
    let export = a.store.export_user(&tenant_id, &UserId::new("user").expect("valid user"), Timestamp::now()).await;
    assert_eq!(export.expect("export").sessions.len(), 4);
}

#[tokio::test]
async fn racing_gateways_admit_exactly_the_limit() {
    let Some(services) = services().await else {
        return;
    };
    let a = Arc::new(Gateway::start("gateway-a", &services.redis_url, &services.postgres_url).await);
    let b = Arc::new(Gateway::start("gateway-b", &services.redis_url, &services.postgres_url).await);
    let tenant = new_tenant(&a, "redis-race").await;
    let limits = limits(5, 100, 600);

    // 20 attempts at once, alternating between the two gateways.
    let mut attempts = Vec::new();
    for index in 0..20 {
        let gateway = if index % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
        let tenant = tenant.clone();
        attempts.push(tokio::spawn(async move { gateway.admit(&tenant, &format!("{tenant}-{index}"), &limits).await }));
    }
    let mut admitted = 0;
    for attempt in attempts {
        match attempt.await.expect("attempt task") {
            Ok(()) => admitted += 1,
            Err(LimitError::Exceeded(LimitExceeded::ConcurrentSessions { .. })) => {}
            Err(other) => panic!("unexpected rejection: {other:?}"),
        }
    }
    assert_eq!(admitted, 5);
    assert_eq!(b.limits.open_sessions(&tenant).await.expect("count"), 5);
}

#[tokio::test]
async fn session_rate_holds_across_gateways() {
    let Some(services) = services().await else {
        return;
    };
    let a = Gateway::start("gateway-a", &services.redis_url, &services.postgres_url).await;
    let b = Gateway::start("gateway-b", &services.redis_url, &services.postgres_url).await;
    let tenant = new_tenant(&a, "redis-rate").await;
    let limits = limits(100, 4, 600);

    for index in 0..4 {
        let gateway = if index % 2 == 0 { &a } else { &b };
        gateway.admit(&tenant, &format!("{tenant}-{index}"), &limits).await.expect("session within the rate");
        // Closing does not give back a start: the rate counts starts, not open sessions.
        gateway.limits.close_session(&tenant, &format!("{tenant}-{index}")).await;
    }
    for gateway in [&a, &b] {
        let refused = gateway.limits.open_session(&tenant, &format!("{tenant}-late"), &limits).await;
        let Err(LimitError::Exceeded(LimitExceeded::SessionRate { limit: 4, retry_after, .. })) = refused else {
            panic!("{}: expected the session rate limit, got {refused:?}", gateway.name);
        };
        assert!(retry_after > Duration::ZERO, "{retry_after:?}");
        assert!(retry_after <= Duration::from_secs(60), "{retry_after:?}");
    }
}

#[tokio::test]
async fn audio_quota_holds_across_gateways() {
    let Some(services) = services().await else {
        return;
    };
    let a = Gateway::start("gateway-a", &services.redis_url, &services.postgres_url).await;
    let b = Gateway::start("gateway-b", &services.redis_url, &services.postgres_url).await;
    let tenant = new_tenant(&a, "redis-audio").await;
    let limits = limits(100, 100, 1);

    a.limits.add_audio(&tenant, Duration::from_secs(40), &limits).await.expect("40 s of 60");
    let over = b.limits.add_audio(&tenant, Duration::from_secs(30), &limits).await;
    assert!(
        matches!(over, Err(LimitError::Exceeded(LimitExceeded::AudioQuota { limit_minutes: 1, .. }))),
        "{over:?}"
    );
    // With the day's audio used up, neither gateway opens a session.
    for gateway in [&a, &b] {
        let refused = gateway.limits.open_session(&tenant, &format!("{tenant}-{}", gateway.name), &limits).await;
        assert!(matches!(refused, Err(LimitError::Exceeded(LimitExceeded::AudioQuota { .. }))), "{refused:?}");
    }
}

#[tokio::test]
async fn registry_shared_across_gateways() {
    let Some(services) = services().await else {
        return;
    };
    let a = Gateway::start("gateway-a", &services.redis_url, &services.postgres_url).await;
    let b = Gateway::start("gateway-b", &services.redis_url, &services.postgres_url).await;
    let session = format!("registry-{:016x}", rand::random::<u64>());
    let ttl = Duration::from_secs(30);

    assert!(a.registry.register(&session, "gateway-a", ttl).await.expect("register"));
    assert_eq!(b.registry.lookup(&session).await.expect("lookup").as_deref(), Some("gateway-a"));
    assert!(!b.registry.register(&session, "gateway-b", ttl).await.expect("register again"));
    assert!(!b.registry.refresh(&session, "gateway-b", ttl).await.expect("refresh by non-owner"));
    assert!(!b.registry.unregister(&session, "gateway-b").await.expect("unregister by non-owner"));
    assert_eq!(a.registry.lookup(&session).await.expect("lookup").as_deref(), Some("gateway-a"));

    // The entry expires: its time to live is set and a refresh extends it.
    let client = redis::Client::open(services.redis_url.as_str()).expect("Redis URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let key = RedisSessionRegistry::key(&session);
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut connection).await.expect("PTTL");
    assert!(ttl_ms > 0, "{ttl_ms}");
    assert!(ttl_ms <= 30_000, "{ttl_ms}");
    assert!(a.registry.refresh(&session, "gateway-a", Duration::from_secs(120)).await.expect("refresh"));
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut connection).await.expect("PTTL");
    assert!(ttl_ms > 30_000, "{ttl_ms}");
    assert!(ttl_ms <= 120_000, "{ttl_ms}");

    assert!(a.registry.unregister(&session, "gateway-a").await.expect("unregister"));
    assert_eq!(b.registry.lookup(&session).await.expect("lookup"), None);
}

#[tokio::test]
async fn unreachable_redis_reports_unavailable() {
    // Port 1 on loopback has no server, so connecting fails at once.
    let result = RedisLimits::connect("redis://127.0.0.1:1/").await;
    assert!(result.is_err(), "connecting to a closed port must fail");
    let invalid = RedisLimits::connect("not a url").await;
    assert!(matches!(invalid, Err(mentis_gateway::redis::RedisError::InvalidUrl { .. })), "{invalid:?}");
}
