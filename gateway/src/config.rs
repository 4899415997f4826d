//! The gateway's TOML config file. `gateway/config/gateway.toml` is a
//! commented sample with every setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mentis_pipeline::PrivacyTier;
use serde::Deserialize;

use crate::server::ServerSettings;
use crate::session::SessionTiming;
use crate::tenants::{InMemoryTenants, KeyDigest, Limits, Tenant};

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The address to listen on, such as `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// Certificate and key files; required unless `listen` is a loopback address.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// A file (mode 600) holding the token signing key: at least 32 random
    /// bytes. Set this or `signing_key_env`.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// The environment variable holding the token signing key, for platforms
    /// that pass secrets as variables (a Kubernetes Secret).
    #[serde(default)]
    pub signing_key_env: Option<String>,
    /// Server-wide settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Pipelines clients may ask for, by name: `loadtest`, and `on-device`
    /// in builds with the `on-device` feature.
    #[serde(default = "default_pipelines")]
    pub pipelines: Vec<String>,
    /// The tenants, when there is no `[store]`. With a store, tenants live
    /// in it and are created with `mentis-gateway create-tenant`.
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
    /// This process's id in the session registry. When omitted, the
    /// `HOSTNAME` environment variable (a Kubernetes pod's name) is used.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The store of tenants, API keys and privacy records. Without it,
    /// tenants come from `[[tenants]]` and the privacy records API is off.
    #[serde(default)]
    pub store: Option<StoreSection>,
    /// Redis for limit counters and the session registry shared by several
    /// gateway processes. Without it, limits are counted in this process.
    #[serde(default)]
    pub redis: Option<RedisSection>,
    /// Settings of the `on-device` pipeline (builds with the `on-device` feature).
    #[serde(default)]
    pub on_device: OnDeviceSection,
}

/// Settings of the `on-device` pipeline; a missing key keeps its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDeviceSection {
    /// Sessions of the pipeline running at once in this process (default 4).
    /// Each has a llama.cpp context of about 150 MiB.
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// Maximum tokens per reply.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The LLM's system prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
}

/// The store's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// An embedded SQLite file, for a single gateway process.
    Sqlite,
    /// PostgreSQL, shared by several gateway processes.
    Postgres,
}

/// The `[store]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite` or `postgres`.
    pub backend: StoreBackend,
    /// The SQLite database file; `sqlite` only.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The environment variable that contains the application role's
    /// `postgres://` URL; `postgres` only. The URL carries a password, so it
    /// never appears in this file.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The environment variable that contains the URL of a role that may create
    /// tables; `postgres` only. When set, the gateway applies missing schema
    /// migrations at start and grants the application role its privileges.
    #[serde(default)]
    pub migrate_url_env: Option<String>,
    /// PostgreSQL connections per process; `postgres` only.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Time between two runs of the retention purge, in seconds.
    #[serde(default = "default_purge_interval")]
    pub purge_interval_seconds: u64,
}

fn default_pool_size() -> usize {
    crate::store::DEFAULT_POOL_SIZE
}

fn default_purge_interval() -> u64 {
    3_600
}

/// The `[redis]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// The environment variable that holds the `redis://` URL, which may
    /// carry a password.
    pub url_env: String,
}

/// Where the store is, with secrets read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres {
        /// The application role's URL.
        url: String,
        /// The migration role's URL, when migrations run at start.
        migrate_url: Option<String>,
        /// Connections per process.
        pool_size: usize,
    },
}

fn default_pipelines() -> Vec<String> {
    vec!["loadtest".to_owned()]
}

/// TLS files in PEM format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

/// Server-wide settings; see [`ServerSettings`] and [`SessionTiming`] for their meaning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Token lifetime when a request names none, in seconds.
    pub token_ttl_seconds: u64,
    /// Maximum token lifetime a request may ask for, in seconds.
    pub max_token_ttl_seconds: u64,
    /// TCP connections served at once.
    pub max_connections: usize,
    /// Sessions running at once over all tenants.
    pub max_sessions: usize,
    /// Time for a TLS handshake and for each request's headers, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Time sessions have to end at shutdown, in seconds.
    pub drain_timeout_seconds: u64,
    /// Time between pings, in seconds.
    pub ping_interval_seconds: u64,
    /// Time for the start message, in seconds.
    pub start_timeout_seconds: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        let server = ServerSettings::default();
        ServerSection {
            token_ttl_seconds: server.token_ttl.as_secs(),
            max_token_ttl_seconds: server.max_token_ttl.as_secs(),
            max_connections: server.max_connections,
            max_sessions: server.max_sessions,
            handshake_timeout_ms: u64::try_from(server.handshake_timeout.as_millis()).unwrap_or(u64::MAX),
            drain_timeout_seconds: server.drain_timeout.as_secs(),
            ping_interval_seconds: server.timing.ping_interval.as_secs(),
            start_timeout_seconds: server.timing.start_timeout.as_secs(),
        }
    }
}

/// One tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    /// The tenant id.
    pub id: String,
    /// The widest tier its sessions may use.
    pub tier: PrivacyTier,
    /// SHA-256 digests of its API keys, 64 hex digits each
    /// (`printf %s "$KEY" | sha256sum`, or `mentis-gateway hash-key`).
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// Browser origins allowed to open sessions.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Its limits; each omitted limit takes its default.
    #[serde(default)]
    pub limits: Limits,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment variable named by the config is not set.
    #[error("environment variable {variable} (named by {field}) is not set or empty; set it to the URL, with its password, outside the config file")]
    MissingEnv {
        /// The variable.
        variable: String,
        /// The setting that names it, such as `store.url_env`.
        field: String,
    },
    /// A value is out of range.
    #[error("invalid config value {field}: {message}")]
    Invalid {
        /// The setting, such as `tenants[0].limits`.
        field: String,
        /// The problem with the value.
        message: String,
    },
}

impl GatewayConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|error| match error {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse { path: PathBuf::new(), message: error.to_string() })
    }

    /// Returns the server settings.
    pub fn settings(&self) -> Result<ServerSettings, ConfigError> {
        let server = &self.server;
        if server.ping_interval_seconds == 0 || server.start_timeout_seconds == 0 || server.max_sessions == 0 || server.max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "server".to_owned(),
                message: "ping_interval_seconds, start_timeout_seconds, max_sessions and max_connections must be at least 1".to_owned(),
            });
        }
        Ok(ServerSettings {
            token_ttl: Duration::from_secs(server.token_ttl_seconds),
            max_token_ttl: Duration::from_secs(server.max_token_ttl_seconds),
            max_connections: server.max_connections,
            max_sessions: server.max_sessions,
            handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
            drain_timeout: Duration::from_secs(server.drain_timeout_seconds),
            timing: SessionTiming {
                ping_interval: Duration::from_secs(server.ping_interval_seconds),
                start_timeout: Duration::from_secs(server.start_timeout_seconds),
                ..SessionTiming::default()
            },
        })
    }

    /// Reads the token signing key from the file or variable the config names.
    pub fn signing_key(&self) -> Result<mentis_pipeline::Secret, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { field: "signing_key_file".to_owned(), message };
        match (&self.signing_key_file, &self.signing_key_env) {
            (Some(path), None) => mentis_pipeline::Secret::from_file(path).map_err(|error| invalid(error.to_string())),
            (None, Some(variable)) => mentis_pipeline::Secret::from_env(variable)
                .map_err(|_| ConfigError::MissingEnv { variable: variable.clone(), field: "signing_key_env".to_owned() }),
            _ => Err(invalid("set exactly one of signing_key_file and signing_key_env".to_owned())),
        }
    }

    /// Returns where the store is, reading URLs from the environment
    /// variables the config names, or `None` without a `[store]`.
    pub fn store_location(&self) -> Result<Option<StoreLocation>, ConfigError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let invalid = |field: &str, message: &str| ConfigError::Invalid { field: format!("store.{field}"), message: message.to_owned() };
        if !self.tenants.is_empty() {
            return Err(ConfigError::Invalid {
                field: "tenants".to_owned(),
                message: "with a [store], tenants live in the store; remove [[tenants]] and create them with `mentis-gateway create-tenant`".to_owned(),
            });
        }
        if store.purge_interval_seconds == 0 {
            return Err(invalid("purge_interval_seconds", "must be at least 1"));
        }
        match store.backend {
            StoreBackend::Sqlite => {
                if store.url_env.is_some() || store.migrate_url_env.is_some() {
                    return Err(invalid("url_env", "applies to backend = \"postgres\" only"));
                }
                let path = store.path.clone().ok_or_else(|| invalid("path", "backend = \"sqlite\" needs the database file's path"))?;
                Ok(Some(StoreLocation::Sqlite(path)))
            }
            StoreBackend::Postgres => {
                if store.path.is_some() {
                    return Err(invalid("path", "applies to backend = \"sqlite\" only"));
                }
                if store.pool_size == 0 {
                    return Err(invalid("pool_size", "must be at least 1"));
                }
                let variable = store.url_env.as_deref().ok_or_else(|| invalid("url_env", "backend = \"postgres\" needs the name of the environment variable with the URL"))?;
                let url = read_env(variable, "store.url_env")?;
                let migrate_url = store.migrate_url_env.as_deref().map(|variable| read_env(variable, "store.migrate_url_env")).transpose()?;
                Ok(Some(StoreLocation::Postgres { url, migrate_url, pool_size: store.pool_size }))
            }
        }
    }

    /// Returns the Redis URL from the environment variable the config
    /// names, or `None` without a `[redis]`.
    pub fn redis_url(&self) -> Result<Option<String>, ConfigError> {
        self.redis.as_ref().map(|redis| read_env(&redis.url_env, "redis.url_env")).transpose()
    }

    /// Returns the purge interval, or `None` without a store.
    pub fn purge_interval(&self) -> Option<Duration> {
        self.store.as_ref().map(|store| Duration::from_secs(store.purge_interval_seconds))
    }

    /// Returns this process's registry id: `instance_id`, else `$HOSTNAME`,
    /// else `gateway-` and a random number.
    pub fn instance_id(&self) -> String {
        let from_env = std::env::var("HOSTNAME").ok().filter(|name| !name.trim().is_empty());
        self.instance_id.clone().or(from_env).unwrap_or_else(|| format!("gateway-{:08x}", fastrand::u32(..)))
    }

    /// Builds the tenant table.
    pub fn tenants(&self) -> Result<InMemoryTenants, ConfigError> {
        let mut table = InMemoryTenants::new();
        for (index, section) in self.tenants.iter().enumerate() {
            let field = |name: &str| format!("tenants[{index}].{name}");
            section.limits.validate().map_err(|message| ConfigError::Invalid { field: field("limits"), message: message.to_owned() })?;
            let tenant = Tenant::new(&section.id, section.tier, section.limits)
                .map_err(|error| ConfigError::Invalid { field: field("id"), message: error.to_string() })?
                .with_origins(section.allowed_origins.iter().cloned());
            table.add_tenant(tenant).map_err(|error| ConfigError::Invalid { field: field("id"), message: error.to_string() })?;
            for (key_index, hex) in section.api_key_sha256.iter().enumerate() {
                let digest = KeyDigest::from_hex(hex).ok_or_else(|| ConfigError::Invalid {
                    field: field(&format!("api_key_sha256[{key_index}]")),
                    message: "expected 64 hex digits (a SHA-256 digest)".to_owned(),
                })?;
                table
                    .add_key(&section.id, digest)
                    .map_err(|error| ConfigError::Invalid { field: field(&format!("api_key_sha256[{key_index}]")), message: error.to_string() })?;
            }
        }
        Ok(table)
    }
}

fn read_env(variable: &str, field: &str) -> Result<String, ConfigError> {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(ConfigError::MissingEnv { variable: variable.to_owned(), field: field.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../config/gateway.toml");
        let config = GatewayConfig::parse(text).expect("the sample config parses");
        config.settings().expect("valid settings");
        config.tenants().expect("valid tenants");
        assert_eq!(config.pipelines, ["loadtest"]);
        assert_eq!(config.on_device.max_sessions, Some(4));
        assert_eq!(config.on_device.max_tokens, Some(64));
    }

    #[test]
    fn on_device_section_rejects_unknown_keys() {
        let text = include_str!("../config/gateway.toml").replace("max_sessions = 4", "max_session = 4");
        let error = GatewayConfig::parse(&text).expect_err("a misspelled key");
        assert!(error.to_string().contains("max_session"), "{error}");
    }

    #[test]
    fn unknown_setting_is_rejected() {
        let error = GatewayConfig::parse("listen = \"127.0.0.1:1\"\nsigning_key_file = \"k\"\nport = 3\n").expect_err("unknown key");
        assert!(error.to_string().contains("port"), "{error}");
    }

    #[test]
    fn bad_digest_names_field() {
        let text = "listen = \"127.0.0.1:1\"\nsigning_key_file = \"k\"\n[[tenants]]\nid = \"a\"\ntier = \"cloud\"\napi_key_sha256 = [\"xyz\"]\n";
        let error = GatewayConfig::parse(text).expect("parses").tenants().expect_err("bad digest");
        assert!(error.to_string().contains("tenants[0].api_key_sha256[0]"), "{error}");
    }

    const BASE: &str = "listen = \"127.0.0.1:1\"\nsigning_key_file = \"k\"\n";

    #[test]
    fn sqlite_store_needs_path() {
        let config = GatewayConfig::parse(&format!("{BASE}[store]\nbackend = \"sqlite\"\n")).expect("parses");
        let error = config.store_location().expect_err("no path");
        assert!(error.to_string().contains("store.path"), "{error}");

        let config = GatewayConfig::parse(&format!("{BASE}[store]\nbackend = \"sqlite\"\npath = \"/tmp/g.sqlite\"\n")).expect("parses");
        assert_eq!(config.store_location().expect("valid"), Some(StoreLocation::Sqlite("/tmp/g.sqlite".into())));
    }

    #[test]
    fn postgres_url_comes_from_env() {
        let text = format!("{BASE}[store]\nbackend = \"postgres\"\nurl_env = \"MENTIS_CONFIG_TEST_UNSET_URL\"\n");
        let error = GatewayConfig::parse(&text).expect("parses").store_location().expect_err("unset variable");
        assert!(matches!(&error, ConfigError::MissingEnv { variable, .. } if variable == "MENTIS_CONFIG_TEST_UNSET_URL"), "{error}");
        let error = GatewayConfig::parse(&format!("{BASE}[store]\nbackend = \"postgres\"\nurl = \"postgres://u:p@h/d\"\n")).expect_err("no URL in the file");
        assert!(error.to_string().contains("url"), "{error}");
    }

    #[test]
    fn store_excludes_file_tenants() {
        let text = format!("{BASE}[store]\nbackend = \"sqlite\"\npath = \"g\"\n[[tenants]]\nid = \"a\"\ntier = \"cloud\"\n");
        let error = GatewayConfig::parse(&text).expect("parses").store_location().expect_err("both");
        assert!(error.to_string().contains("create-tenant"), "{error}");
    }
}
