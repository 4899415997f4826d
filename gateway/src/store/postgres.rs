//! The PostgreSQL store, for several gateway processes sharing one database.
//!
//! Every transaction that touches user data starts with
//! `set_config('app.tenant_id', <tenant>, true)`, and the row-level security
//! policies of the schema (migrations/postgres) compare each row's tenant
//! with that setting. The queries filter by tenant as well, and the policies
//! catch a query that omits the filter. They apply because the
//! application role is not a superuser, has no BYPASSRLS, and the tables use
//! FORCE ROW LEVEL SECURITY, which covers their owner too.
//!
//! Schema changes are applied by [`PostgresStore::migrate`] with an owner
//! role; the gateway itself connects with the application role, which gets
//! only the row privileges it needs (no UPDATE or DELETE on the audit log).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mentis_pipeline::PrivacyTier;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Config, NoTls, Row, Transaction};

use super::api_key::sha256_hex;
use super::types::{check_audio, check_transcript, origins_json, parse_origins, parse_tier, tier_name};
use super::{
    ApiKeyHash, AuditAction, AuditEntry, AudioRecord, ConsentRecord, ConsentScope, DeletedCounts, PurgeSummary,
    SessionId, SessionRecord, Store, StoreError, StoreOutcome, Tenant, TenantId, TenantLimits, Timestamp,
    TranscriptRecord, UserExport, UserId, validate_label, validate_tenant,
};

/// The transaction setting that the row-level security policies read.
pub const TENANT_SETTING: &str = "app.tenant_id";

/// Schema migrations, applied in order and recorded in `mentis_schema_migrations`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_tenant_frames_origins.sql"),
];

/// Key of the advisory lock that serializes migrations started by several
/// gateway processes at once ("mentis" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d65_6e74_6973;

/// Default number of connections: enough for a gateway's store traffic
/// (a few statements per turn), small next to PostgreSQL's default limit of
/// 100 connections shared by all gateway processes.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// How long to wait for a connection to PostgreSQL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL store: a fixed pool of connections, each reconnected when
/// it breaks. Cloning shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Arc<Pool>,
}

struct Pool {
    config: Config,
    slots: Vec<Mutex<Client>>,
    next: AtomicUsize,
}

impl fmt::Debug for PostgresStore {
    /// Prints the pool size only: the connection settings contain a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("connections", &self.pool.slots.len()).finish_non_exhaustive()
    }
}

/// A pooled connection, held until dropped.
struct Connection<'a>(MutexGuard<'a, Client>);

impl Connection<'_> {
    fn client(&mut self) -> &mut Client {
        &mut self.0
    }
}

async fn connect(config: &Config) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection closed with an error; it is reopened on next use");
        }
    });
    Ok(client)
}

/// Parses a `postgres://` URL or a `key=value` connection string.
fn parse_config(url: &str) -> Result<Config, StoreError> {
    let mut config: Config = url.parse()?;
    config.connect_timeout(CONNECT_TIMEOUT);
    Ok(config)
}

impl PostgresStore {
    /// Connects with [`DEFAULT_POOL_SIZE`] connections. `url` is a
    /// `postgres://user:password@host:port/database` URL of the application
    /// role. Connections are plain TCP, so the server should be on loopback
    /// or a private network.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with_pool_size(url, DEFAULT_POOL_SIZE).await
    }

    /// Connects with `pool_size` connections (at least one).
    pub async fn connect_with_pool_size(url: &str, pool_size: usize) -> Result<PostgresStore, StoreError> {
        let config = parse_config(url)?;
        let mut slots = Vec::with_capacity(pool_size.max(1));
        for _ in 0..pool_size.max(1) {
            slots.push(Mutex::new(connect(&config).await?));
        }
        Ok(PostgresStore { pool: Arc::new(Pool { config, slots, next: AtomicUsize::new(0) }) })
    }

    /// Applies missing schema migrations, connected as `owner_url` (a role
    /// that may create tables), and grants the application role `app_role`
    /// the row privileges the store needs. Several processes may call it at
    /// once: an advisory lock makes them take turns.
    pub async fn migrate(owner_url: &str, app_role: Option<&str>) -> Result<(), StoreError> {
        let app_role = app_role.map(checked_role).transpose()?;
        let mut client = connect(&parse_config(owner_url)?).await?;
        let transaction = client.transaction().await?;
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS mentis_schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await?;
        let applied: Option<i64> =
            transaction.query_one("SELECT max(version) FROM mentis_schema_migrations", &[]).await?.get(0);
        let applied = usize::try_from(applied.unwrap_or(0)).unwrap_or(0);

        for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
            let version = i64::try_from(index + 1).unwrap_or(i64::MAX);
            tracing::info!(version, "applying PostgreSQL schema migration");
            transaction.batch_execute(migration).await?;
            transaction
                .execute(
                    "INSERT INTO mentis_schema_migrations (version, applied_at) VALUES ($1, $2)",
                    &[&version, &Timestamp::now().0],
                )
                .await?;
        }

        // The audit log is append-only for the application.
        if let Some(role) = app_role {
            transaction
                .batch_execute(&format!(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, api_keys, users, consents, sessions, \
                     transcripts, audio TO \"{role}\"; GRANT SELECT, INSERT ON audit_log TO \"{role}\";"
                ))
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Takes a connection from the pool, reconnecting it if it broke.
    async fn checkout(&self) -> Result<Connection<'_>, StoreError> {
        let index = self.pool.next.fetch_add(1, Ordering::Relaxed) % self.pool.slots.len();
        let mut slot = self.pool.slots[index].lock().await;
        if slot.is_closed() {
            tracing::info!("reconnecting to PostgreSQL");
            *slot = connect(&self.pool.config).await?;
        }
        Ok(Connection(slot))
    }
}

/// Checks that a role name is a plain lowercase identifier, safe to quote into SQL.
fn checked_role(role: &str) -> Result<&str, StoreError> {
    let mut chars = role.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && role.len() <= 63;
    if valid { Ok(role) } else { Err(StoreError::InvalidRole { value: role.to_owned() }) }
}

/// Starts a transaction whose row-level security context is `tenant`.
async fn tenant_transaction<'a>(client: &'a mut Client, tenant: &TenantId) -> Result<Transaction<'a>, StoreError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT set_config($1, $2, true)", &[&TENANT_SETTING, &tenant.as_str()]).await?;
    Ok(transaction)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Reads a non-negative number stored as BIGINT.
fn limit<T: TryFrom<i64>>(row: &Row, column: &str) -> Result<T, StoreError> {
    let value: i64 = row.try_get(column)?;
    T::try_from(value).map_err(|_| StoreError::Corrupt { what: format!("tenant setting {column} is {value}") })
}

const TENANT_COLUMNS: &str = "id, name, max_tier, transcript_retention_secs, audio_retention_secs, \
     max_concurrent_sessions, max_new_sessions_per_minute, max_audio_seconds_per_day, max_message_bytes, \
     max_session_seconds, max_frame_ms, allowed_origins";

fn read_tenant(row: &Row) -> Result<Tenant, StoreError> {
    let tier: &str = row.try_get("max_tier")?;
    Ok(Tenant {
        id: TenantId::new(row.try_get::<_, String>("id")?)?,
        name: row.try_get("name")?,
        max_tier: parse_tier(tier)?,
        transcript_retention: Duration::from_secs(limit(row, "transcript_retention_secs")?),
        audio_retention: Duration::from_secs(limit(row, "audio_retention_secs")?),
        limits: TenantLimits {
            max_concurrent_sessions: limit(row, "max_concurrent_sessions")?,
            max_new_sessions_per_minute: limit(row, "max_new_sessions_per_minute")?,
            max_audio_seconds_per_day: limit(row, "max_audio_seconds_per_day")?,
            max_message_bytes: limit(row, "max_message_bytes")?,
            max_session_seconds: limit(row, "max_session_seconds")?,
            max_frame_ms: limit(row, "max_frame_ms")?,
        },
        allowed_origins: parse_origins(row.try_get("allowed_origins")?)?,
    })
}

async fn tenant_exists(transaction: &Transaction<'_>, tenant: &TenantId) -> Result<(), StoreError> {
    let found = transaction.query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant.as_str()]).await?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound { what: "tenant", id: tenant.to_string() }),
    }
}

async fn user_exists(transaction: &Transaction<'_>, tenant: &TenantId, user: &UserId) -> Result<bool, StoreError> {
    let found = transaction
        .query_opt("SELECT 1 FROM users WHERE tenant_id = $1 AND id = $2", &[&tenant.as_str(), &user.as_str()])
        .await?;
    Ok(found.is_some())
}

async fn ensure_user(
    transaction: &Transaction<'_>,
    tenant: &TenantId,
    user: &UserId,
    at: Timestamp,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "INSERT INTO users (tenant_id, id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&tenant.as_str(), &user.as_str(), &at.0],
        )
        .await?;
    Ok(())
}

/// Turns the row count of a consent-checked insert into its outcome: nothing
/// inserted means either no consent or no such session, and this checks which.
async fn insert_outcome(
    transaction: &Transaction<'_>,
    tenant: &TenantId,
    session: &SessionId,
    inserted: u64,
) -> Result<StoreOutcome, StoreError> {
    if inserted > 0 {
        return Ok(StoreOutcome::Stored);
    }
    let found = transaction
        .query_opt("SELECT 1 FROM sessions WHERE tenant_id = $1 AND id = $2", &[&tenant.as_str(), &session.as_str()])
        .await?;
    match found {
        Some(_) => Ok(StoreOutcome::NotConsented),
        None => Err(StoreError::NotFound { what: "session", id: session.to_string() }),
    }
}

async fn read_consent_history(
    transaction: &Transaction<'_>,
    tenant: &TenantId,
    user: &UserId,
) -> Result<Vec<ConsentRecord>, StoreError> {
    let rows = transaction
        .query(
            "SELECT transcripts, audio, recorded_at FROM consents WHERE tenant_id = $1 AND user_id = $2 ORDER BY seq",
            &[&tenant.as_str(), &user.as_str()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ConsentRecord {
                user_id: user.clone(),
                scope: ConsentScope { transcripts: row.try_get(0)?, audio: row.try_get(1)? },
                recorded_at: Timestamp(row.try_get(2)?),
            })
        })
        .collect()
}

async fn insert_audit(
    transaction: &Transaction<'_>,
    tenant: &TenantId,
    action: AuditAction,
    subject_sha256: Option<&str>,
    deleted: DeletedCounts,
    at: Timestamp,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "INSERT INTO audit_log (tenant_id, action, subject_sha256, consent_records, sessions, transcripts, audio, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &tenant.as_str(),
                &action.as_str(),
                &subject_sha256,
                &to_i64(deleted.consent_records),
                &to_i64(deleted.sessions),
                &to_i64(deleted.transcripts),
                &to_i64(deleted.audio),
                &at.0,
            ],
        )
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        validate_tenant(tenant)?;
        let mut connection = self.checkout().await?;
        let inserted = connection
            .client()
            .execute(
                &format!(
                    "INSERT INTO tenants ({TENANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT DO NOTHING"
                ),
                &[
                    &tenant.id.as_str(),
                    &tenant.name,
                    &tier_name(tenant.max_tier),
                    &to_i64(tenant.transcript_retention.as_secs()),
                    &to_i64(tenant.audio_retention.as_secs()),
                    &i64::from(tenant.limits.max_concurrent_sessions),
                    &i64::from(tenant.limits.max_new_sessions_per_minute),
                    &to_i64(tenant.limits.max_audio_seconds_per_day),
                    &i64::from(tenant.limits.max_message_bytes),
                    &i64::from(tenant.limits.max_session_seconds),
                    &i64::from(tenant.limits.max_frame_ms),
                    &origins_json(&tenant.allowed_origins)?,
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists { what: "tenant", id: tenant.id.to_string() });
        }
        Ok(())
    }

    async fn tenant(&self, id: &TenantId) -> Result<Tenant, StoreError> {
        let mut connection = self.checkout().await?;
        let row = connection
            .client()
            .query_opt(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"), &[&id.as_str()])
            .await?;
        match row {
            Some(row) => read_tenant(&row),
            None => Err(StoreError::NotFound { what: "tenant", id: id.to_string() }),
        }
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut connection = self.checkout().await?;
        let rows = connection.client().query(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id"), &[]).await?;
        rows.iter().map(read_tenant).collect()
    }

    async fn add_api_key(&self, tenant: &TenantId, hash: &ApiKeyHash, label: &str) -> Result<(), StoreError> {
        validate_label(label)?;
        let mut connection = self.checkout().await?;
        let transaction = connection.client().transaction().await?;
        tenant_exists(&transaction, tenant).await?;
        let inserted = transaction
            .execute(
                "INSERT INTO api_keys (key_hash, tenant_id, label, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&hash.as_bytes().as_slice(), &tenant.as_str(), &label, &Timestamp::now().0],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists { what: "API key", id: label.to_owned() });
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn revoke_api_key(&self, tenant: &TenantId, hash: &ApiKeyHash) -> Result<bool, StoreError> {
        let mut connection = self.checkout().await?;
        let updated = connection
            .client()
            .execute(
                "UPDATE api_keys SET revoked_at = $3 WHERE key_hash = $1 AND tenant_id = $2 AND revoked_at IS NULL",
                &[&hash.as_bytes().as_slice(), &tenant.as_str(), &Timestamp::now().0],
            )
            .await?;
        Ok(updated > 0)
    }

    async fn find_api_key(&self, hash: &ApiKeyHash) -> Result<Option<(ApiKeyHash, TenantId)>, StoreError> {
        let mut connection = self.checkout().await?;
        let row = connection
            .client()
            .query_opt(
                "SELECT key_hash, tenant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                &[&hash.as_bytes().as_slice()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let stored: &[u8] = row.try_get(0)?;
        let stored = ApiKeyHash::from_bytes(stored)
            .ok_or_else(|| StoreError::Corrupt { what: "an API key digest is not 32 bytes".to_owned() })?;
        Ok(Some((stored, TenantId::new(row.try_get::<_, String>(1)?)?)))
    }

    async fn record_consent(
        &self,
        tenant: &TenantId,
        user: &UserId,
        scope: ConsentScope,
        at: Timestamp,
    ) -> Result<ConsentRecord, StoreError> {
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        tenant_exists(&transaction, tenant).await?;
        ensure_user(&transaction, tenant, user, at).await?;
        transaction
            .execute(
                "INSERT INTO consents (tenant_id, user_id, transcripts, audio, recorded_at) VALUES ($1, $2, $3, $4, $5)",
                &[&tenant.as_str(), &user.as_str(), &scope.transcripts, &scope.audio, &at.0],
            )
            .await?;
        transaction.commit().await?;
        Ok(ConsentRecord { user_id: user.clone(), scope, recorded_at: at })
    }

    async fn current_consent(&self, tenant: &TenantId, user: &UserId) -> Result<ConsentScope, StoreError> {
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        let row = transaction
            .query_opt(
                "SELECT transcripts, audio FROM consents WHERE tenant_id = $1 AND user_id = $2 ORDER BY seq DESC LIMIT 1",
                &[&tenant.as_str(), &user.as_str()],
            )
            .await?;
        transaction.commit().await?;
        match row {
            Some(row) => Ok(ConsentScope { transcripts: row.try_get(0)?, audio: row.try_get(1)? }),
            None => Ok(ConsentScope::NONE),
        }
    }

    async fn consent_history(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<ConsentRecord>, StoreError> {
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        let history = read_consent_history(&transaction, tenant, user).await?;
        transaction.commit().await?;
        Ok(history)
    }

    async fn start_session(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
        tier: PrivacyTier,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        tenant_exists(&transaction, tenant).await?;
        ensure_user(&transaction, tenant, user, at).await?;
        let inserted = transaction
            .execute(
                "INSERT INTO sessions (tenant_id, id, user_id, tier, started_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT DO NOTHING",
                &[&tenant.as_str(), &session.as_str(), &user.as_str(), &tier_name(tier), &at.0],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists { what: "session", id: session.to_string() });
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn end_session(&self, tenant: &TenantId, session: &SessionId, at: Timestamp) -> Result<(), StoreError> {
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        let updated = transaction
            .execute(
                "UPDATE sessions SET ended_at = $3 WHERE tenant_id = $1 AND id = $2",
                &[&tenant.as_str(), &session.as_str(), &at.0],
            )
            .await?;
        if updated == 0 {
            return Err(StoreError::NotFound { what: "session", id: session.to_string() });
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn store_transcript(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        text: &str,
        at: Timestamp,
    ) -> Result<StoreOutcome, StoreError> {
        check_transcript(text)?;
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;

        // The consent check and the insert are one statement, so a withdrawal
        // committed before the statement starts is always seen.
        let inserted = transaction
            .execute(
                "INSERT INTO transcripts (tenant_id, session_id, user_id, text, created_at) \
                 SELECT s.tenant_id, s.id, s.user_id, $3, $4 FROM sessions s \
                 WHERE s.tenant_id = $1 AND s.id = $2 AND COALESCE((SELECT c.transcripts FROM consents c \
                     WHERE c.tenant_id = s.tenant_id AND c.user_id = s.user_id ORDER BY c.seq DESC LIMIT 1), false)",
                &[&tenant.as_str(), &session.as_str(), &text, &at.0],
            )
            .await?;
        let outcome = insert_outcome(&transaction, tenant, session, inserted).await?;
        transaction.commit().await?;
        Ok(outcome)
    }

    async fn store_audio(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        format: &str,
        data: &[u8],
        at: Timestamp,
    ) -> Result<StoreOutcome, StoreError> {
        check_audio(format, data)?;
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        let inserted = transaction
            .execute(
                "INSERT INTO audio (tenant_id, session_id, user_id, format, data, created_at) \
                 SELECT s.tenant_id, s.id, s.user_id, $3, $4, $5 FROM sessions s \
                 WHERE s.tenant_id = $1 AND s.id = $2 AND COALESCE((SELECT c.audio FROM consents c \
                     WHERE c.tenant_id = s.tenant_id AND c.user_id = s.user_id ORDER BY c.seq DESC LIMIT 1), false)",
                &[&tenant.as_str(), &session.as_str(), &format, &data, &at.0],
            )
            .await?;
        let outcome = insert_outcome(&transaction, tenant, session, inserted).await?;
        transaction.commit().await?;
        Ok(outcome)
    }

    async fn export_user(&self, tenant: &TenantId, user: &UserId, at: Timestamp) -> Result<UserExport, StoreError> {
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        if !user_exists(&transaction, tenant, user).await? {
            return Err(StoreError::NotFound { what: "user", id: user.to_string() });
        }
        let key: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tenant.as_str(), &user.as_str()];
        let consent_history = read_consent_history(&transaction, tenant, user).await?;

        let rows = transaction
            .query(
                "SELECT id, tier, started_at, ended_at FROM sessions WHERE tenant_id = $1 AND user_id = $2 \
                 ORDER BY started_at, id",
                &key,
            )
            .await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in &rows {
            sessions.push(SessionRecord {
                session_id: SessionId::new(row.try_get::<_, String>(0)?)?,
                user_id: user.clone(),
                tier: parse_tier(row.try_get(1)?)?,
                started_at: Timestamp(row.try_get(2)?),
                ended_at: row.try_get::<_, Option<i64>>(3)?.map(Timestamp),
            });
        }

        let rows = transaction
            .query(
                "SELECT session_id, text, created_at FROM transcripts WHERE tenant_id = $1 AND user_id = $2 ORDER BY seq",
                &key,
            )
            .await?;
        let mut transcripts = Vec::with_capacity(rows.len());
        for row in &rows {
            transcripts.push(TranscriptRecord {
                session_id: SessionId::new(row.try_get::<_, String>(0)?)?,
                text: row.try_get(1)?,
                created_at: Timestamp(row.try_get(2)?),
            });
        }

        let rows = transaction
            .query(
                "SELECT session_id, format, data, created_at FROM audio WHERE tenant_id = $1 AND user_id = $2 ORDER BY seq",
                &key,
            )
            .await?;
        let mut audio = Vec::with_capacity(rows.len());
        for row in &rows {
            audio.push(AudioRecord {
                session_id: SessionId::new(row.try_get::<_, String>(0)?)?,
                format: row.try_get(1)?,
                data: row.try_get(2)?,
                created_at: Timestamp(row.try_get(3)?),
            });
        }
        transaction.commit().await?;

        Ok(UserExport {
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            exported_at: at,
            consent_history,
            sessions,
            transcripts,
            audio,
        })
    }

    async fn delete_user(&self, tenant: &TenantId, user: &UserId, at: Timestamp) -> Result<DeletedCounts, StoreError> {
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        if !user_exists(&transaction, tenant, user).await? {
            return Err(StoreError::NotFound { what: "user", id: user.to_string() });
        }
        let key: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tenant.as_str(), &user.as_str()];

        // Children first, so each count is exact rather than hidden in a cascade.
        let deleted = DeletedCounts {
            transcripts: transaction.execute("DELETE FROM transcripts WHERE tenant_id = $1 AND user_id = $2", &key).await?,
            audio: transaction.execute("DELETE FROM audio WHERE tenant_id = $1 AND user_id = $2", &key).await?,
            sessions: transaction.execute("DELETE FROM sessions WHERE tenant_id = $1 AND user_id = $2", &key).await?,
            consent_records: transaction
                .execute("DELETE FROM consents WHERE tenant_id = $1 AND user_id = $2", &key)
                .await?,
        };
        transaction.execute("DELETE FROM users WHERE tenant_id = $1 AND id = $2", &key).await?;
        insert_audit(&transaction, tenant, AuditAction::UserDeleted, Some(&sha256_hex(user.as_str())), deleted, at)
            .await?;
        transaction.commit().await?;
        Ok(deleted)
    }

    async fn audit_log(&self, tenant: &TenantId) -> Result<Vec<AuditEntry>, StoreError> {
        let mut connection = self.checkout().await?;
        let transaction = tenant_transaction(connection.client(), tenant).await?;
        let rows = transaction
            .query(
                "SELECT action, subject_sha256, consent_records, sessions, transcripts, audio, at FROM audit_log \
                 WHERE tenant_id = $1 ORDER BY seq",
                &[&tenant.as_str()],
            )
            .await?;
        transaction.commit().await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    action: AuditAction::parse(row.try_get(0)?)?,
                    subject_sha256: row.try_get(1)?,
                    deleted: DeletedCounts {
                        consent_records: to_u64(row.try_get(2)?),
                        sessions: to_u64(row.try_get(3)?),
                        transcripts: to_u64(row.try_get(4)?),
                        audio: to_u64(row.try_get(5)?),
                    },
                    at: Timestamp(row.try_get(6)?),
                })
            })
            .collect()
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<PurgeSummary, StoreError> {
        let tenants = self.tenants().await?;
        let mut summary = PurgeSummary::default();
        let mut connection = self.checkout().await?;

        // One transaction per tenant, each inside that tenant's row-level
        // security context, so the purge cannot touch another tenant's rows.
        for tenant in &tenants {
            let transaction = tenant_transaction(connection.client(), &tenant.id).await?;
            let transcripts = transaction
                .execute(
                    "DELETE FROM transcripts WHERE tenant_id = $1 AND created_at < $2",
                    &[&tenant.id.as_str(), &now.minus(tenant.transcript_retention).0],
                )
                .await?;
            let audio = transaction
                .execute(
                    "DELETE FROM audio WHERE tenant_id = $1 AND created_at < $2",
                    &[&tenant.id.as_str(), &now.minus(tenant.audio_retention).0],
                )
                .await?;
            if transcripts + audio > 0 {
                let deleted = DeletedCounts { transcripts, audio, ..DeletedCounts::default() };
                insert_audit(&transaction, &tenant.id, AuditAction::RetentionPurge, None, deleted, now).await?;
                summary.tenants += 1;
                summary.transcripts += transcripts;
                summary.audio += audio;
            }
            transaction.commit().await?;
        }
        Ok(summary)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.checkout().await?;
        connection.client().query_one("SELECT 1", &[]).await?;
        Ok(())
    }
}
