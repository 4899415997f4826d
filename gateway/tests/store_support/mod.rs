//! Shared setup of the store and records tests: a store of each kind, unique
//! tenants, and direct queries of the database tables that bypass the
//! `Store` trait.
//!
//! PostgreSQL and Redis tests read the URLs that `scripts/services` prints.
//! When a URL is missing, a test fails under CI (where `CI` is set) and is
//! skipped with a notice elsewhere.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use mentis_gateway::store::{
    PostgresStore, SqliteStore, Store, TENANT_SETTING, Tenant, TenantId, TenantLimits,
};
use mentis_pipeline::PrivacyTier;

/// Reads a service URL variable. Returns `None` (after printing a notice)
/// when it is missing outside CI; panics with the fix when it is missing
/// under CI, so a CI run never passes without the services.
pub fn service_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{variable} is not set; run `eval \"$(scripts/services)\"` before the tests to start PostgreSQL and Redis")
        }
        _ => {
            eprintln!("skipped: {variable} is not set; run `eval \"$(scripts/services)\"` to start PostgreSQL and Redis");
            None
        }
    }
}

/// A store under test and direct access to its tables.
pub struct Backend {
    /// The store.
    pub store: Arc<dyn Store>,
    /// How to reach its tables without the store.
    pub raw: Raw,
    /// Keeps the SQLite file alive until the test ends.
    _dir: Option<tempfile::TempDir>,
}

/// Direct access to a store's tables.
pub enum Raw {
    /// The SQLite database file.
    Sqlite(std::path::PathBuf),
    /// The application role's URL.
    Postgres(String),
}

/// Opens a SQLite store in a new temporary file.
pub async fn sqlite_backend() -> Backend {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let path = dir.path().join("gateway.sqlite");
    let store = SqliteStore::open(&path).await.expect("open the SQLite store");
    Backend { store: Arc::new(store), raw: Raw::Sqlite(path), _dir: Some(dir) }
}

/// Connects a PostgreSQL store to the migrated test database, or returns `None` when the
/// database URLs are not set outside CI.
pub async fn postgres_backend() -> Option<Backend> {
    let app_url = service_url("MENTIS_TEST_POSTGRES_URL")?;
    let owner_url = service_url("MENTIS_TEST_POSTGRES_OWNER_URL")?;
    let app_role = app_role_of(&app_url);
    PostgresStore::migrate(&owner_url, Some(&app_role)).await.expect("migrate the PostgreSQL test database");
    let store = PostgresStore::connect_with_pool_size(&app_url, 2).await.expect("connect to the PostgreSQL test database");
    Some(Backend { store: Arc::new(store), raw: Raw::Postgres(app_url), _dir: None })
}

/// Returns the user name of a `postgres://user:password@host/db` URL.
pub fn app_role_of(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().expect("parse the PostgreSQL URL");
    config.get_user().expect("the PostgreSQL URL names a user").to_owned()
}

/// Connects to PostgreSQL with `url`, outside the store.
pub async fn raw_postgres(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

impl Raw {
    /// Counts the rows of `table` that belong to `tenant` (and to `user`,
    /// when given), querying the database directly.
    pub async fn count(&self, table: &str, tenant: &TenantId, user: Option<&str>) -> i64 {
        let user_column = if table == "users" { "id" } else { "user_id" };
        match self {
            Raw::Sqlite(path) => {
                let connection = rusqlite::Connection::open(path).expect("open the SQLite file");
                match user {
                    Some(user) => connection.query_row(
                        &format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1 AND {user_column} = ?2"),
                        rusqlite::params![tenant.as_str(), user],
                        |row| row.get(0),
                    ),
                    None => connection.query_row(
                        &format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1"),
                        rusqlite::params![tenant.as_str()],
                        |row| row.get(0),
                    ),
                }
                .expect("count rows")
            }
            Raw::Postgres(url) => {
                // Row-level security hides every row unless the tenant is set.
                let mut client = raw_postgres(url).await;
                let transaction = client.transaction().await.expect("begin");
                transaction
                    .execute("SELECT set_config($1, $2, true)", &[&TENANT_SETTING, &tenant.as_str()])
                    .await
                    .expect("set the tenant");
                let row = match user {
                    Some(user) => transaction
                        .query_one(
                            &format!("SELECT count(*) FROM {table} WHERE tenant_id = $1 AND {user_column} = $2"),
                            &[&tenant.as_str(), &user],
                        )
                        .await,
                    None => {
                        transaction
                            .query_one(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1"), &[&tenant.as_str()])
                            .await
                    }
                }
                .expect("count rows");
                row.get(0)
            }
        }
    }
}

/// Returns a tenant id that no other test uses, also across runs against one database.
pub fn unique_tenant_id(label: &str) -> TenantId {
    TenantId::new(format!("{label}-{:016x}", rand::random::<u64>())).expect("valid tenant id")
}

/// Builds a tenant with the given retention periods and default limits.
pub fn tenant(label: &str, transcript_retention: Duration, audio_retention: Duration) -> Tenant {
    Tenant {
        id: unique_tenant_id(label),
        name: format!("test tenant {label}"),
        max_tier: PrivacyTier::SelfHosted,
        transcript_retention,
        audio_retention,
        limits: TenantLimits::default(),
        allowed_origins: vec!["https://app.example.test".to_owned()],
    }
}

/// One day.
pub const DAY: Duration = Duration::from_secs(24 * 3600);
