//! Limits and the session registry shared by several gateway processes, in Redis.
//!
//! [`RedisLimits`] implements [`LimitStore`] with counters shared by every
//! gateway process: each check-and-count is one Lua script, which Redis runs
//! atomically, so two processes cannot both take the last free slot. Times
//! come from the Redis server's clock (`TIME`), so processes with skewed
//! clocks still agree on the rate window and the day.
//!
//! Keys, per tenant (the braces keep one tenant's keys in one Redis Cluster slot):
//!
//! - `mentis:{tenant}:open`: sorted set of open session ids, scored by the
//!   time their entry expires. A session of a gateway that crashed without
//!   closing it stops counting after the tenant's longest session plus
//!   [`OPEN_SESSION_GRACE`].
//! - `mentis:{tenant}:starts`: sorted set of session starts within the last
//!   minute, scored by start time.
//! - `mentis:{tenant}:audio:<UTC day>`: milliseconds of audio accepted that
//!   day, kept for two days.
//!
//! [`RedisSessionRegistry`] maps a session id to the gateway instance that
//! serves it (`mentis:session:<id>`), with an expiry that the owner refreshes.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands as _, Script};

use crate::limits::{LimitError, LimitExceeded, LimitStore, SESSION_RATE_WINDOW};
use crate::tenants::Limits;

/// How long past the tenant's longest session an open-session entry still
/// counts. Covers the time between the session limit firing and the close.
pub const OPEN_SESSION_GRACE: Duration = Duration::from_secs(60);

/// An error of the Redis connection or a command.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL is not a valid `redis://` URL.
    #[error("invalid Redis URL (expected redis://host:port/db): {source}")]
    InvalidUrl {
        /// The parse error.
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis could not be reached or a command failed.
    #[error("Redis command failed: {source}")]
    Command {
        /// The error.
        #[from]
        source: ::redis::RedisError,
    },
    /// A script returned a reply of an unexpected shape.
    #[error("unexpected reply from the Redis limit script: {reply}")]
    UnexpectedReply {
        /// The reply, as numbers.
        reply: String,
    },
}

/// Timeout for connecting to Redis and for each command.
/// A limit check sits on the path of every new session, so a stalled Redis
/// must fail it quickly rather than hold the client.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection attempts per (re)connection before a command fails.
const REDIS_CONNECT_RETRIES: usize = 2;

/// Connects with a connection manager, which reconnects after a failure.
async fn connect(url: &str) -> Result<ConnectionManager, RedisError> {
    let client = ::redis::Client::open(url).map_err(|source| RedisError::InvalidUrl { source })?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(REDIS_CONNECT_RETRIES)
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// Checks the three limits and, when all pass, counts the new session.
/// KEYS: open, starts, audio key prefix. ARGV: session id, max concurrent,
/// max starts per window, window ms, max audio ms per day, open-entry lifetime ms.
/// Returns {0} when counted, {1} concurrent limit, {2, retry_after_ms} rate
/// limit, {3} audio quota.
const OPEN_SESSION_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window = tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return {1}
end

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    local retry = tonumber(oldest[2]) + window - now
    if retry < 0 then retry = 0 end
    return {2, retry}
end

local day = math.floor(now / 86400000)
local audio = tonumber(redis.call('GET', KEYS[3] .. day) or '0')
if audio >= tonumber(ARGV[5]) then
    return {3}
end

redis.call('ZADD', KEYS[1], now + tonumber(ARGV[6]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('ZADD', KEYS[2], now, ARGV[1] .. ':' .. now)
redis.call('PEXPIRE', KEYS[2], window)
return {0}
";

/// Adds audio to the day's counter and reports whether it reached the limit.
/// KEYS: audio key prefix. ARGV: audio ms, max audio ms per day.
/// Returns {total_ms, 1 if at or over the limit else 0}.
const ADD_AUDIO_SCRIPT: &str = r"
local time = redis.call('TIME')
local day = math.floor(tonumber(time[1]) / 86400)
local key = KEYS[1] .. day
local total = redis.call('INCRBY', key, tonumber(ARGV[1]))
redis.call('EXPIRE', key, 2 * 86400)
if total >= tonumber(ARGV[2]) then
    return {total, 1}
end
return {total, 0}
";

/// Per-tenant limit counters in Redis, shared by every gateway process that
/// connects to the same Redis.
#[derive(Clone)]
pub struct RedisLimits {
    connection: ConnectionManager,
    open_session: Script,
    add_audio: Script,
}

impl fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimits").finish_non_exhaustive()
    }
}

fn keys(tenant: &str) -> (String, String, String) {
    (format!("mentis:{{{tenant}}}:open"), format!("mentis:{{{tenant}}}:starts"), format!("mentis:{{{tenant}}}:audio:"))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RedisLimits {
    /// Connects to Redis at `url` (`redis://host:port/db`).
    pub async fn connect(url: &str) -> Result<RedisLimits, RedisError> {
        Ok(RedisLimits {
            connection: connect(url).await?,
            open_session: Script::new(OPEN_SESSION_SCRIPT),
            add_audio: Script::new(ADD_AUDIO_SCRIPT),
        })
    }

    /// Returns the number of sessions of `tenant` counted as open, over all processes.
    pub async fn open_sessions(&self, tenant: &str) -> Result<u64, RedisError> {
        let (open, _, _) = keys(tenant);
        let mut connection = self.connection.clone();
        let time: (u64, u64) = ::redis::cmd("TIME").query_async(&mut connection).await?;
        let now = time.0.saturating_mul(1000) + time.1 / 1000;
        Ok(connection.zcount(open, now, "+inf").await?)
    }

    async fn try_open(&self, tenant: &str, session: &str, limits: &Limits) -> Result<(), LimitError> {
        let (open, starts, audio) = keys(tenant);
        let entry_lifetime = Duration::from_secs(limits.max_session_seconds).saturating_add(OPEN_SESSION_GRACE);
        let audio_limit = limits.max_audio_minutes_per_day.saturating_mul(60_000);
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = self
            .open_session
            .key(open)
            .key(starts)
            .key(audio)
            .arg(session)
            .arg(limits.max_concurrent_sessions)
            .arg(limits.max_new_sessions_per_minute)
            .arg(millis(SESSION_RATE_WINDOW))
            .arg(audio_limit)
            .arg(millis(entry_lifetime))
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;

        let exceeded = match reply.as_slice() {
            [0] => return Ok(()),
            [1] => LimitExceeded::ConcurrentSessions { tenant: tenant.to_owned(), limit: limits.max_concurrent_sessions },
            [2, retry_ms] => LimitExceeded::SessionRate {
                tenant: tenant.to_owned(),
                limit: limits.max_new_sessions_per_minute,
                retry_after: Duration::from_millis(u64::try_from(*retry_ms).unwrap_or(0)),
            },
            [3] => LimitExceeded::AudioQuota { tenant: tenant.to_owned(), limit_minutes: limits.max_audio_minutes_per_day },
            other => {
                let error = RedisError::UnexpectedReply { reply: format!("{other:?}") };
                return Err(LimitError::Unavailable(error.to_string()));
            }
        };
        tracing::debug!(tenant, reason = exceeded.reason(), "session rejected by a shared limit");
        Err(exceeded.into())
    }

    async fn count_audio(&self, tenant: &str, audio: Duration, limits: &Limits) -> Result<(), LimitError> {
        let (_, _, audio_key) = keys(tenant);
        let audio_limit = limits.max_audio_minutes_per_day.saturating_mul(60_000);
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = self
            .add_audio
            .key(audio_key)
            .arg(millis(audio))
            .arg(audio_limit)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [_, 0] => Ok(()),
            [_, 1] => Err(LimitExceeded::AudioQuota {
                tenant: tenant.to_owned(),
                limit_minutes: limits.max_audio_minutes_per_day,
            }
            .into()),
            other => Err(LimitError::Unavailable(RedisError::UnexpectedReply { reply: format!("{other:?}") }.to_string())),
        }
    }
}

/// Reports a Redis failure as unavailable counters, logged once here.
fn unavailable(error: ::redis::RedisError) -> LimitError {
    tracing::warn!(%error, "Redis limit counters unavailable");
    LimitError::Unavailable(error.to_string())
}

impl LimitStore for RedisLimits {
    fn open_session<'a>(&'a self, tenant: &'a str, session: &'a str, limits: &'a Limits) -> BoxFuture<'a, Result<(), LimitError>> {
        Box::pin(self.try_open(tenant, session, limits))
    }

    fn close_session<'a>(&'a self, tenant: &'a str, session: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (open, _, _) = keys(tenant);
            let mut connection = self.connection.clone();
            let removed: Result<u64, _> = connection.zrem(open, session).await;
            if let Err(error) = removed {
                // The entry expires on its own after the longest session.
                tracing::warn!(%error, tenant, session, "could not remove a closed session from Redis; it expires later");
            }
        })
    }

    fn add_audio<'a>(&'a self, tenant: &'a str, audio: Duration, limits: &'a Limits) -> BoxFuture<'a, Result<(), LimitError>> {
        Box::pin(self.count_audio(tenant, audio, limits))
    }
}

/// A map from each session to the gateway instance that serves it, so that
/// any instance can find (and, for example, cancel or route to) a session it
/// does not serve.
#[async_trait]
pub trait SessionRegistry: Send + Sync + fmt::Debug + 'static {
    /// Records that `instance` serves `session`, for `ttl` unless refreshed.
    /// Returns false, changing nothing, when another live entry has the id.
    async fn register(&self, session: &str, instance: &str, ttl: Duration) -> Result<bool, RedisError>;

    /// Extends the entry by `ttl` if `instance` still owns it; returns false otherwise.
    async fn refresh(&self, session: &str, instance: &str, ttl: Duration) -> Result<bool, RedisError>;

    /// Returns the instance serving `session`, if its entry has not expired.
    async fn lookup(&self, session: &str) -> Result<Option<String>, RedisError>;

    /// Removes the entry if `instance` owns it; returns false otherwise.
    async fn unregister(&self, session: &str, instance: &str) -> Result<bool, RedisError>;
}

/// Runs a command on the key only while its value is ARGV[1].
/// KEYS: the session key. ARGV: instance, 'refresh' or 'delete', ttl ms.
const OWNED_UPDATE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[2] == 'refresh' then
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
else
    redis.call('DEL', KEYS[1])
end
return 1
";

/// The session registry in Redis: `mentis:session:<id>` contains the instance
/// name and expires unless refreshed.
#[derive(Clone)]
pub struct RedisSessionRegistry {
    connection: ConnectionManager,
    owned_update: Script,
}

impl fmt::Debug for RedisSessionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionRegistry").finish_non_exhaustive()
    }
}

impl RedisSessionRegistry {
    /// Connects to Redis at `url` (`redis://host:port/db`).
    pub async fn connect(url: &str) -> Result<RedisSessionRegistry, RedisError> {
        Ok(RedisSessionRegistry { connection: connect(url).await?, owned_update: Script::new(OWNED_UPDATE_SCRIPT) })
    }

    /// Returns the Redis key of a session's entry.
    pub fn key(session: &str) -> String {
        format!("mentis:session:{session}")
    }

    async fn owned_update(&self, session: &str, instance: &str, action: &str, ttl: Duration) -> Result<bool, RedisError> {
        let mut connection = self.connection.clone();
        let updated: i64 = self
            .owned_update
            .key(RedisSessionRegistry::key(session))
            .arg(instance)
            .arg(action)
            .arg(millis(ttl).max(1))
            .invoke_async(&mut connection)
            .await?;
        Ok(updated == 1)
    }
}

#[async_trait]
impl SessionRegistry for RedisSessionRegistry {
    async fn register(&self, session: &str, instance: &str, ttl: Duration) -> Result<bool, RedisError> {
        let mut connection = self.connection.clone();
        let set: Option<String> = ::redis::cmd("SET")
            .arg(RedisSessionRegistry::key(session))
            .arg(instance)
            .arg("PX")
            .arg(millis(ttl).max(1))
            .arg("NX")
            .query_async(&mut connection)
            .await?;
        Ok(set.is_some())
    }

    async fn refresh(&self, session: &str, instance: &str, ttl: Duration) -> Result<bool, RedisError> {
        self.owned_update(session, instance, "refresh", ttl).await
    }

    async fn lookup(&self, session: &str) -> Result<Option<String>, RedisError> {
        let mut connection = self.connection.clone();
        Ok(connection.get(RedisSessionRegistry::key(session)).await?)
    }

    async fn unregister(&self, session: &str, instance: &str) -> Result<bool, RedisError> {
        self.owned_update(session, instance, "delete", Duration::ZERO).await
    }
}
