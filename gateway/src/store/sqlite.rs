//! The embedded store: one SQLite database file, no server.
//!
//! All calls go through one connection behind a mutex, on tokio's blocking
//! thread pool, so SQLite never blocks an async worker thread. The database
//! runs with `secure_delete` on, which overwrites deleted rows with zeros, and
//! the write-ahead log is checkpointed and truncated after every deletion and
//! purge, so deleted content does not linger in the file or the log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mentis_pipeline::PrivacyTier;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::api_key::sha256_hex;
use super::types::{check_audio, check_transcript, origins_json, parse_origins, parse_tier, tier_name};
use super::{
    ApiKeyHash, AuditAction, AuditEntry, AudioRecord, ConsentRecord, ConsentScope, DeletedCounts, PurgeSummary,
    SessionId, SessionRecord, Store, StoreError, StoreOutcome, Tenant, TenantId, TenantLimits, Timestamp,
    TranscriptRecord, UserExport, UserId, validate_label, validate_tenant,
};

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_tenant_frames_origins.sql"),
];

/// How long a statement waits for a lock held by another process that opened
/// the same file, before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded SQLite store. Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    /// The database file, or `:memory:`, for error messages.
    path: Arc<str>,
}

/// An error inside a blocking call: either SQLite's, which [`SqliteStore::call`]
/// wraps with the file path, or one of the store's own.
enum Failure {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Sqlite(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Store(error)
    }
}

type Result<T> = std::result::Result<T, Failure>;

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and applies
    /// missing schema migrations.
    pub async fn open(path: impl AsRef<Path>) -> std::result::Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        let shown: Arc<str> = path.display().to_string().into();
        let shown_for_error = Arc::clone(&shown);
        let connection = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            let connection = Connection::open(&path)?;
            connection.pragma_update(None, "journal_mode", "WAL")?;
            Ok(connection)
        })
        .await
        .map_err(|error| StoreError::WorkerStopped { reason: error.to_string() })?
        .map_err(|source| StoreError::Sqlite { path: shown_for_error.to_string(), source })?;
        SqliteStore::prepare(connection, shown).await
    }

    /// Opens a private in-memory database, for tests and trials. Its data is
    /// lost when the last clone of the store is dropped.
    pub async fn open_in_memory() -> std::result::Result<SqliteStore, StoreError> {
        let connection = Connection::open_in_memory()
            .map_err(|source| StoreError::Sqlite { path: ":memory:".to_owned(), source })?;
        SqliteStore::prepare(connection, ":memory:".into()).await
    }

    /// Returns the database file as given to [`SqliteStore::open`], or `:memory:`.
    pub fn path(&self) -> &str {
        &self.path
    }

    async fn prepare(connection: Connection, path: Arc<str>) -> std::result::Result<SqliteStore, StoreError> {
        let store = SqliteStore { connection: Arc::new(Mutex::new(connection)), path };
        store
            .call(|connection| {
                connection.busy_timeout(BUSY_TIMEOUT)?;
                connection.pragma_update(None, "foreign_keys", true)?;
                connection.pragma_update(None, "secure_delete", true)?;
                migrate(connection)
            })
            .await?;
        Ok(store)
    }

    /// Runs `work` with the connection on the blocking thread pool.
    async fn call<T, F>(&self, work: F) -> std::result::Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        let outcome = tokio::task::spawn_blocking(move || work(&mut connection.lock()))
            .await
            .map_err(|error| StoreError::WorkerStopped { reason: error.to_string() })?;
        outcome.map_err(|failure| match failure {
            Failure::Sqlite(source) => StoreError::Sqlite { path: self.path.to_string(), source },
            Failure::Store(error) => error,
        })
    }
}

/// Applies the migrations that `PRAGMA user_version` marks as missing, each
/// in its own transaction.
fn migrate(connection: &mut Connection) -> Result<()> {
    let applied: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        transaction.commit()?;
    }
    Ok(())
}

/// Copies the write-ahead log into the database and truncates it, so the log
/// keeps no copy of deleted rows.
fn truncate_wal(connection: &Connection) -> Result<()> {
    // An in-memory database has no log; the pragma then returns a row of -1s.
    connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Converts a row count.
fn count(rows: usize) -> u64 {
    u64::try_from(rows).unwrap_or(u64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Reads a non-negative count stored as a signed integer.
fn limit<T: TryFrom<i64>>(field: &str, value: i64) -> Result<T> {
    T::try_from(value).map_err(|_| Failure::Store(StoreError::Corrupt { what: format!("{field} is {value}") }))
}

const TENANT_COLUMNS: &str = "id, name, max_tier, transcript_retention_secs, audio_retention_secs, \
     max_concurrent_sessions, max_new_sessions_per_minute, max_audio_seconds_per_day, max_message_bytes, \
     max_session_seconds, max_frame_ms, allowed_origins";

fn read_tenant(row: &rusqlite::Row<'_>) -> Result<Tenant> {
    let id: String = row.get(0)?;
    let tier: String = row.get(2)?;
    Ok(Tenant {
        id: TenantId::new(id)?,
        name: row.get(1)?,
        max_tier: parse_tier(&tier)?,
        transcript_retention: Duration::from_secs(limit("transcript_retention_secs", row.get(3)?)?),
        audio_retention: Duration::from_secs(limit("audio_retention_secs", row.get(4)?)?),
        limits: TenantLimits {
            max_concurrent_sessions: limit("max_concurrent_sessions", row.get(5)?)?,
            max_new_sessions_per_minute: limit("max_new_sessions_per_minute", row.get(6)?)?,
            max_audio_seconds_per_day: limit("max_audio_seconds_per_day", row.get(7)?)?,
            max_message_bytes: limit("max_message_bytes", row.get(8)?)?,
            max_session_seconds: limit("max_session_seconds", row.get(9)?)?,
            max_frame_ms: limit("max_frame_ms", row.get(10)?)?,
        },
        allowed_origins: parse_origins(&row.get::<_, String>(11)?)?,
    })
}

fn user_exists(transaction: &Transaction<'_>, tenant: &TenantId, user: &UserId) -> Result<bool> {
    let found = transaction
        .query_row("SELECT 1 FROM users WHERE tenant_id = ?1 AND id = ?2", params![tenant.as_str(), user.as_str()], |_| {
            Ok(())
        })
        .optional()?;
    Ok(found.is_some())
}

fn ensure_user(transaction: &Transaction<'_>, tenant: &TenantId, user: &UserId, at: Timestamp) -> Result<()> {
    transaction.execute(
        "INSERT INTO users (tenant_id, id, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![tenant.as_str(), user.as_str(), at.0],
    )?;
    Ok(())
}

fn tenant_exists(transaction: &Transaction<'_>, tenant: &TenantId) -> Result<()> {
    let found = transaction
        .query_row("SELECT 1 FROM tenants WHERE id = ?1", params![tenant.as_str()], |_| Ok(()))
        .optional()?;
    match found {
        Some(()) => Ok(()),
        None => Err(StoreError::NotFound { what: "tenant", id: tenant.to_string() }.into()),
    }
}

fn session_exists(transaction: &Transaction<'_>, tenant: &TenantId, session: &SessionId) -> Result<bool> {
    let found = transaction
        .query_row(
            "SELECT 1 FROM sessions WHERE tenant_id = ?1 AND id = ?2",
            params![tenant.as_str(), session.as_str()],
            |_| Ok(()),
        )
        .optional()?;
    Ok(found.is_some())
}

fn read_consent_history(transaction: &Transaction<'_>, tenant: &TenantId, user: &UserId) -> Result<Vec<ConsentRecord>> {
    let mut statement = transaction.prepare(
        "SELECT transcripts, audio, recorded_at FROM consents WHERE tenant_id = ?1 AND user_id = ?2 ORDER BY seq",
    )?;
    let rows = statement.query_map(params![tenant.as_str(), user.as_str()], |row| {
        Ok(ConsentRecord {
            user_id: user.clone(),
            scope: ConsentScope { transcripts: row.get(0)?, audio: row.get(1)? },
            recorded_at: Timestamp(row.get(2)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Turns the row count of a consent-checked insert into its outcome: nothing
/// inserted means either no consent or no such session, and this checks which.
fn insert_outcome(
    transaction: &Transaction<'_>,
    tenant: &TenantId,
    session: &SessionId,
    inserted: usize,
) -> Result<StoreOutcome> {
    if inserted > 0 {
        return Ok(StoreOutcome::Stored);
    }
    if session_exists(transaction, tenant, session)? {
        Ok(StoreOutcome::NotConsented)
    } else {
        Err(StoreError::NotFound { what: "session", id: session.to_string() }.into())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_tenant(&self, tenant: &Tenant) -> std::result::Result<(), StoreError> {
        validate_tenant(tenant)?;
        let tenant = tenant.clone();
        self.call(move |connection| {
            let inserted = connection.execute(
                &format!(
                    "INSERT INTO tenants ({TENANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                     ON CONFLICT DO NOTHING"
                ),
                params![
                    tenant.id.as_str(),
                    tenant.name,
                    tier_name(tenant.max_tier),
                    to_i64(tenant.transcript_retention.as_secs()),
                    to_i64(tenant.audio_retention.as_secs()),
                    tenant.limits.max_concurrent_sessions,
                    tenant.limits.max_new_sessions_per_minute,
                    to_i64(tenant.limits.max_audio_seconds_per_day),
                    tenant.limits.max_message_bytes,
                    tenant.limits.max_session_seconds,
                    tenant.limits.max_frame_ms,
                    origins_json(&tenant.allowed_origins)?,
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists { what: "tenant", id: tenant.id.to_string() }.into());
            }
            Ok(())
        })
        .await
    }

    async fn tenant(&self, id: &TenantId) -> std::result::Result<Tenant, StoreError> {
        let id = id.clone();
        self.call(move |connection| {
            let mut statement = connection.prepare(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"))?;
            let mut rows = statement.query(params![id.as_str()])?;
            match rows.next()? {
                Some(row) => read_tenant(row),
                None => Err(StoreError::NotFound { what: "tenant", id: id.to_string() }.into()),
            }
        })
        .await
    }

    async fn tenants(&self) -> std::result::Result<Vec<Tenant>, StoreError> {
        self.call(|connection| {
            let mut statement = connection.prepare(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id"))?;
            let mut rows = statement.query([])?;
            let mut tenants = Vec::new();
            while let Some(row) = rows.next()? {
                tenants.push(read_tenant(row)?);
            }
            Ok(tenants)
        })
        .await
    }

    async fn add_api_key(&self, tenant: &TenantId, hash: &ApiKeyHash, label: &str) -> std::result::Result<(), StoreError> {
        validate_label(label)?;
        let (tenant, hash, label) = (tenant.clone(), hash.clone(), label.to_owned());
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            tenant_exists(&transaction, &tenant)?;
            let inserted = transaction.execute(
                "INSERT INTO api_keys (key_hash, tenant_id, label, created_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT DO NOTHING",
                params![hash.as_bytes().as_slice(), tenant.as_str(), label, Timestamp::now().0],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists { what: "API key", id: label }.into());
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    async fn revoke_api_key(&self, tenant: &TenantId, hash: &ApiKeyHash) -> std::result::Result<bool, StoreError> {
        let (tenant, hash) = (tenant.clone(), hash.clone());
        self.call(move |connection| {
            let updated = connection.execute(
                "UPDATE api_keys SET revoked_at = ?3 WHERE key_hash = ?1 AND tenant_id = ?2 AND revoked_at IS NULL",
                params![hash.as_bytes().as_slice(), tenant.as_str(), Timestamp::now().0],
            )?;
            Ok(updated > 0)
        })
        .await
    }

    async fn find_api_key(
        &self,
        hash: &ApiKeyHash,
    ) -> std::result::Result<Option<(ApiKeyHash, TenantId)>, StoreError> {
        let hash = hash.clone();
        self.call(move |connection| {
            let row = connection
                .query_row(
                    "SELECT key_hash, tenant_id FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL",
                    params![hash.as_bytes().as_slice()],
                    |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()?;
            let Some((stored, tenant)) = row else {
                return Ok(None);
            };
            let stored = ApiKeyHash::from_bytes(&stored)
                .ok_or_else(|| StoreError::Corrupt { what: "an API key digest is not 32 bytes".to_owned() })?;
            Ok(Some((stored, TenantId::new(tenant)?)))
        })
        .await
    }

    async fn record_consent(
        &self,
        tenant: &TenantId,
        user: &UserId,
        scope: ConsentScope,
        at: Timestamp,
    ) -> std::result::Result<ConsentRecord, StoreError> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            tenant_exists(&transaction, &tenant)?;
            ensure_user(&transaction, &tenant, &user, at)?;
            transaction.execute(
                "INSERT INTO consents (tenant_id, user_id, transcripts, audio, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![tenant.as_str(), user.as_str(), scope.transcripts, scope.audio, at.0],
            )?;
            transaction.commit()?;
            Ok(ConsentRecord { user_id: user, scope, recorded_at: at })
        })
        .await
    }

    async fn current_consent(&self, tenant: &TenantId, user: &UserId) -> std::result::Result<ConsentScope, StoreError> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.call(move |connection| {
            let scope = connection
                .query_row(
                    "SELECT transcripts, audio FROM consents WHERE tenant_id = ?1 AND user_id = ?2 \
                     ORDER BY seq DESC LIMIT 1",
                    params![tenant.as_str(), user.as_str()],
                    |row| Ok(ConsentScope { transcripts: row.get(0)?, audio: row.get(1)? }),
                )
                .optional()?;
            Ok(scope.unwrap_or(ConsentScope::NONE))
        })
        .await
    }

    async fn consent_history(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> std::result::Result<Vec<ConsentRecord>, StoreError> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            read_consent_history(&transaction, &tenant, &user)
        })
        .await
    }

    async fn start_session(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
        tier: PrivacyTier,
        at: Timestamp,
    ) -> std::result::Result<(), StoreError> {
        let (tenant, user, session) = (tenant.clone(), user.clone(), session.clone());
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            tenant_exists(&transaction, &tenant)?;
            ensure_user(&transaction, &tenant, &user, at)?;
            let inserted = transaction.execute(
                "INSERT INTO sessions (tenant_id, id, user_id, tier, started_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT DO NOTHING",
                params![tenant.as_str(), session.as_str(), user.as_str(), tier_name(tier), at.0],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists { what: "session", id: session.to_string() }.into());
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    async fn end_session(&self, tenant: &TenantId, session: &SessionId, at: Timestamp) -> std::result::Result<(), StoreError> {
        let (tenant, session) = (tenant.clone(), session.clone());
        self.call(move |connection| {
            let updated = connection.execute(
                "UPDATE sessions SET ended_at = ?3 WHERE tenant_id = ?1 AND id = ?2",
                params![tenant.as_str(), session.as_str(), at.0],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound { what: "session", id: session.to_string() }.into());
            }
            Ok(())
        })
        .await
    }

    async fn store_transcript(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        text: &str,
        at: Timestamp,
    ) -> std::result::Result<StoreOutcome, StoreError> {
        check_transcript(text)?;
        let (tenant, session, text) = (tenant.clone(), session.clone(), text.to_owned());
        self.call(move |connection| {
            let transaction = connection.transaction()?;

            // The consent check and the insert are one statement, so a
            // withdrawal committed before it is always seen.
            let inserted = transaction.execute(
                "INSERT INTO transcripts (tenant_id, session_id, user_id, text, created_at) \
                 SELECT s.tenant_id, s.id, s.user_id, ?3, ?4 FROM sessions s \
                 WHERE s.tenant_id = ?1 AND s.id = ?2 AND COALESCE((SELECT c.transcripts FROM consents c \
                     WHERE c.tenant_id = s.tenant_id AND c.user_id = s.user_id ORDER BY c.seq DESC LIMIT 1), 0) = 1",
                params![tenant.as_str(), session.as_str(), text, at.0],
            )?;
            let outcome = insert_outcome(&transaction, &tenant, &session, inserted)?;
            transaction.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn store_audio(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        format: &str,
        data: &[u8],
        at: Timestamp,
    ) -> std::result::Result<StoreOutcome, StoreError> {
        check_audio(format, data)?;
        let (tenant, session, format, data) = (tenant.clone(), session.clone(), format.to_owned(), data.to_vec());
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            let inserted = transaction.execute(
                "INSERT INTO audio (tenant_id, session_id, user_id, format, data, created_at) \
                 SELECT s.tenant_id, s.id, s.user_id, ?3, ?4, ?5 FROM sessions s \
                 WHERE s.tenant_id = ?1 AND s.id = ?2 AND COALESCE((SELECT c.audio FROM consents c \
                     WHERE c.tenant_id = s.tenant_id AND c.user_id = s.user_id ORDER BY c.seq DESC LIMIT 1), 0) = 1",
                params![tenant.as_str(), session.as_str(), format, data, at.0],
            )?;
            let outcome = insert_outcome(&transaction, &tenant, &session, inserted)?;
            transaction.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn export_user(
        &self,
        tenant: &TenantId,
        user: &UserId,
        at: Timestamp,
    ) -> std::result::Result<UserExport, StoreError> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.call(move |connection| {
            // One transaction, so the export is a consistent snapshot.
            let transaction = connection.transaction()?;
            if !user_exists(&transaction, &tenant, &user)? {
                return Err(StoreError::NotFound { what: "user", id: user.to_string() }.into());
            }
            let consent_history = read_consent_history(&transaction, &tenant, &user)?;
            let key = params![tenant.as_str(), user.as_str()];

            let mut statement = transaction.prepare(
                "SELECT id, tier, started_at, ended_at FROM sessions WHERE tenant_id = ?1 AND user_id = ?2 \
                 ORDER BY started_at, id",
            )?;
            let mut rows = statement.query(key)?;
            let mut sessions = Vec::new();
            while let Some(row) = rows.next()? {
                let tier: String = row.get(1)?;
                sessions.push(SessionRecord {
                    session_id: SessionId::new(row.get::<_, String>(0)?)?,
                    user_id: user.clone(),
                    tier: parse_tier(&tier)?,
                    started_at: Timestamp(row.get(2)?),
                    ended_at: row.get::<_, Option<i64>>(3)?.map(Timestamp),
                });
            }
            drop(rows);
            drop(statement);

            let mut statement = transaction.prepare(
                "SELECT session_id, text, created_at FROM transcripts WHERE tenant_id = ?1 AND user_id = ?2 ORDER BY seq",
            )?;
            let mut rows = statement.query(key)?;
            let mut transcripts = Vec::new();
            while let Some(row) = rows.next()? {
                transcripts.push(TranscriptRecord {
                    session_id: SessionId::new(row.get::<_, String>(0)?)?,
                    text: row.get(1)?,
                    created_at: Timestamp(row.get(2)?),
                });
            }
            drop(rows);
            drop(statement);

            let mut statement = transaction.prepare(
                "SELECT session_id, format, data, created_at FROM audio WHERE tenant_id = ?1 AND user_id = ?2 ORDER BY seq",
            )?;
            let mut rows = statement.query(key)?;
            let mut audio = Vec::new();
            while let Some(row) = rows.next()? {
                audio.push(AudioRecord {
                    session_id: SessionId::new(row.get::<_, String>(0)?)?,
                    format: row.get(1)?,
                    data: row.get(2)?,
                    created_at: Timestamp(row.get(3)?),
                });
            }
            drop(rows);
            drop(statement);

            Ok(UserExport {
                tenant_id: tenant,
                user_id: user,
                exported_at: at,
                consent_history,
                sessions,
                transcripts,
                audio,
            })
        })
        .await
    }

    async fn delete_user(
        &self,
        tenant: &TenantId,
        user: &UserId,
        at: Timestamp,
    ) -> std::result::Result<DeletedCounts, StoreError> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            if !user_exists(&transaction, &tenant, &user)? {
                return Err(StoreError::NotFound { what: "user", id: user.to_string() }.into());
            }
            let key = params![tenant.as_str(), user.as_str()];

            // Children first, so each count is exact rather than hidden in a cascade.
            let deleted = DeletedCounts {
                transcripts: count(transaction.execute("DELETE FROM transcripts WHERE tenant_id = ?1 AND user_id = ?2", key)?),
                audio: count(transaction.execute("DELETE FROM audio WHERE tenant_id = ?1 AND user_id = ?2", key)?),
                sessions: count(transaction.execute("DELETE FROM sessions WHERE tenant_id = ?1 AND user_id = ?2", key)?),
                consent_records: count(transaction.execute("DELETE FROM consents WHERE tenant_id = ?1 AND user_id = ?2", key)?),
            };
            transaction.execute("DELETE FROM users WHERE tenant_id = ?1 AND id = ?2", key)?;
            insert_audit(&transaction, &tenant, AuditAction::UserDeleted, Some(&sha256_hex(user.as_str())), deleted, at)?;
            transaction.commit()?;

            truncate_wal(connection)?;
            Ok(deleted)
        })
        .await
    }

    async fn audit_log(&self, tenant: &TenantId) -> std::result::Result<Vec<AuditEntry>, StoreError> {
        let tenant = tenant.clone();
        self.call(move |connection| {
            let mut statement = connection.prepare(
                "SELECT action, subject_sha256, consent_records, sessions, transcripts, audio, at FROM audit_log \
                 WHERE tenant_id = ?1 ORDER BY seq",
            )?;
            let mut rows = statement.query(params![tenant.as_str()])?;
            let mut entries = Vec::new();
            while let Some(row) = rows.next()? {
                let action: String = row.get(0)?;
                entries.push(AuditEntry {
                    action: AuditAction::parse(&action)?,
                    subject_sha256: row.get(1)?,
                    deleted: DeletedCounts {
                        consent_records: to_u64(row.get(2)?),
                        sessions: to_u64(row.get(3)?),
                        transcripts: to_u64(row.get(4)?),
                        audio: to_u64(row.get(5)?),
                    },
                    at: Timestamp(row.get(6)?),
                });
            }
            Ok(entries)
        })
        .await
    }

    async fn purge_expired(&self, now: Timestamp) -> std::result::Result<PurgeSummary, StoreError> {
        let tenants = self.tenants().await?;
        self.call(move |connection| {
            let mut summary = PurgeSummary::default();
            let transaction = connection.transaction()?;
            for tenant in &tenants {
                let transcript_cutoff = now.minus(tenant.transcript_retention);
                let audio_cutoff = now.minus(tenant.audio_retention);
                let transcripts = count(transaction.execute(
                    "DELETE FROM transcripts WHERE tenant_id = ?1 AND created_at < ?2",
                    params![tenant.id.as_str(), transcript_cutoff.0],
                )?);
                let audio = count(transaction.execute(
                    "DELETE FROM audio WHERE tenant_id = ?1 AND created_at < ?2",
                    params![tenant.id.as_str(), audio_cutoff.0],
                )?);
                if transcripts + audio > 0 {
                    let deleted = DeletedCounts { transcripts, audio, ..DeletedCounts::default() };
                    insert_audit(&transaction, &tenant.id, AuditAction::RetentionPurge, None, deleted, now)?;
                    summary.tenants += 1;
                    summary.transcripts += transcripts;
                    summary.audio += audio;
                }
            }
            transaction.commit()?;

            if summary.transcripts + summary.audio > 0 {
                truncate_wal(connection)?;
            }
            Ok(summary)
        })
        .await
    }

    async fn ping(&self) -> std::result::Result<(), StoreError> {
        self.call(|connection| {
            connection.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

fn insert_audit(
    transaction: &Transaction<'_>,
    tenant: &TenantId,
    action: AuditAction,
    subject_sha256: Option<&str>,
    deleted: DeletedCounts,
    at: Timestamp,
) -> Result<()> {
    transaction.execute(
        "INSERT INTO audit_log (tenant_id, action, subject_sha256, consent_records, sessions, transcripts, audio, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            tenant.as_str(),
            action.as_str(),
            subject_sha256,
            to_i64(deleted.consent_records),
            to_i64(deleted.sessions),
            to_i64(deleted.transcripts),
            to_i64(deleted.audio),
            at.0,
        ],
    )?;
    Ok(())
}
