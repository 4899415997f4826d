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
    /// A file (mode 600) holding the token signing key: at least 32 random bytes.
    pub signing_key_file: PathBuf,
    /// Server-wide settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Pipelines clients may ask for, by name: `loadtest`, and `on-device`
    /// in builds with the `on-device` feature.
    #[serde(default = "default_pipelines")]
    pub pipelines: Vec<String>,
    /// The tenants.
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
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
}
