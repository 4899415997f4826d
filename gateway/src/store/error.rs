//! Errors of the stores.

/// A store operation that failed. Messages name the offending value and
/// never contain an API key or stored content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An id is empty, too long, or contains characters outside `A-Za-z0-9-_.:@`.
    #[error("invalid {kind} {value:?}: use 1 to 128 ASCII letters, digits or -_.:@")]
    InvalidId {
        /// The kind of id.
        kind: &'static str,
        /// The rejected value, cut after 129 characters.
        value: String,
    },
    /// An audio format description is empty, too long or has unexpected characters.
    #[error("invalid audio format description {value:?}: use up to 64 ASCII letters, digits or /-_. such as pcm16/16000/1")]
    InvalidAudioFormat {
        /// The rejected value, cut after 65 characters.
        value: String,
    },
    /// A transcript or audio clip is larger than the store accepts.
    #[error("{what} of {size} bytes is larger than the maximum of {max} bytes")]
    TooLarge {
        /// The kind of item that was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A tenant setting is out of range.
    #[error("invalid tenant setting {field}: {reason}")]
    InvalidTenant {
        /// The setting.
        field: &'static str,
        /// The reason for the rejection.
        reason: String,
    },
    /// The tenant, user or session does not exist (within the caller's tenant).
    #[error("{what} {id} not found")]
    NotFound {
        /// The kind of record looked up: `tenant`, `user` or `session`.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A tenant, session or API key with this id already exists.
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// The kind of record created: `tenant`, `session` or `API key`.
        what: &'static str,
        /// Its id (for an API key, its label).
        id: String,
    },
    /// A stored value could not be read back, which means the database was
    /// changed outside the store.
    #[error("stored data is corrupt: {what}")]
    Corrupt {
        /// The value that could not be read.
        what: String,
    },
    /// The SQLite database failed.
    #[error("SQLite database {path} failed: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL failed or could not be reached; retrying may help when the
    /// server is restarting.
    #[error("PostgreSQL failed: {}", describe_postgres(source))]
    Postgres {
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A PostgreSQL role name given for the grants is not a plain identifier.
    #[error("invalid PostgreSQL role name {value:?}: use lowercase letters, digits and _ starting with a letter")]
    InvalidRole {
        /// The rejected name.
        value: String,
    },
    /// The worker thread of a blocking database call stopped before it returned.
    #[error("the database worker thread stopped: {reason}")]
    WorkerStopped {
        /// The join error.
        reason: String,
    },
}

impl StoreError {
    /// True when the operation may succeed if retried later: the database
    /// connection failed, not the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Postgres { source } => source.is_closed() || source.as_db_error().is_none(),
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            StoreError::WorkerStopped { .. } => true,
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(source: tokio_postgres::Error) -> Self {
        StoreError::Postgres { source }
    }
}

/// Formats the server's message and SQLSTATE code when PostgreSQL sent an error,
/// since the error's own `Display` then prints only "db error".
fn describe_postgres(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}
