//! The mentis gateway server.
//!
//! `mentis-gateway --config gateway/config/gateway.toml` serves sessions and,
//! with a `[store]`, the privacy records API and the retention purge.
//! `mentis-gateway --config FILE create-tenant --id acme --tier self_hosted`
//! creates a tenant in the store and prints its first API key once;
//! `add-key --tenant acme` prints another, and `printf %s "$KEY" |
//! mentis-gateway --config FILE revoke-key --tenant acme` revokes one.
//! `printf %s "$KEY" | mentis-gateway hash-key` prints the SHA-256 digest of
//! a key for a config without a store.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use clap::{Parser, Subcommand};
use mentis_gateway::config::{GatewayConfig, StoreLocation};
use mentis_gateway::directory::{StoreDirectory, server_tenant};
use mentis_gateway::recording::StoreRecorder;
use mentis_gateway::records::{self, run_purge_job};
use mentis_gateway::redis::{RedisLimits, RedisSessionRegistry};
use mentis_gateway::store::{PostgresStore, SqliteStore, Store, Tenant as StoredTenant, TenantId, TenantLimits, generate_api_key};
use mentis_gateway::tenants::TenantDirectory;
use mentis_gateway::pipelines::PipelineRegistry;
use mentis_gateway::pipelines::scripted::{LoadTestConfig, LoadTestPipeline};
use mentis_gateway::server::Gateway;
use mentis_gateway::tenants::KeyDigest;
use mentis_gateway::{auth::TokenSigner, tls};
use mentis_pipeline::{PrivacyTier, Secret};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "mentis-gateway", about = "The mentis gateway: WebSocket voice sessions for apps")]
struct Cli {
    /// The TOML config file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve sessions (the default).
    Serve,
    /// Read an API key from standard input and print its SHA-256 digest.
    HashKey,
    /// Create a tenant in the config's store and print its first API key.
    CreateTenant(CreateTenant),
    /// Create another API key of a tenant in the store and print it.
    AddKey {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// A label for operators, such as where the key is used.
        #[arg(long, default_value = "created by mentis-gateway add-key")]
        label: String,
    },
    /// Read an API key from standard input and revoke it in the store: it
    /// can no longer get session tokens (tokens already issued run out at
    /// their expiry).
    RevokeKey {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
    },
}

/// The settings of a new tenant; omitted limits take the store's defaults.
#[derive(Debug, clap::Args)]
struct CreateTenant {
    /// The tenant id: 1 to 128 ASCII letters, digits and `-_.:@`.
    #[arg(long)]
    id: String,
    /// A display name for operators; the id when omitted.
    #[arg(long)]
    name: Option<String>,
    /// The widest tier its sessions may use: on_device, self_hosted or cloud.
    #[arg(long)]
    tier: String,
    /// Days transcripts are kept before the purge deletes them.
    #[arg(long, default_value_t = 30)]
    transcript_retention_days: u64,
    /// Days stored audio is kept before the purge deletes it.
    #[arg(long, default_value_t = 7)]
    audio_retention_days: u64,
    /// Sessions open at once, over all gateway processes.
    #[arg(long)]
    max_concurrent_sessions: Option<u32>,
    /// Sessions started within one minute.
    #[arg(long)]
    max_new_sessions_per_minute: Option<u32>,
    /// Seconds of client audio accepted per UTC day.
    #[arg(long)]
    max_audio_seconds_per_day: Option<u64>,
    /// Largest WebSocket message, in bytes.
    #[arg(long)]
    max_message_bytes: Option<u32>,
    /// Longest audio frame, in milliseconds.
    #[arg(long)]
    max_frame_ms: Option<u32>,
    /// Longest session, in seconds.
    #[arg(long)]
    max_session_seconds: Option<u32>,
    /// A browser origin allowed to open sessions, such as https://app.example.com; repeat for several.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::HashKey = command {
        return hash_key();
    }
    let Some(config) = cli.config else {
        eprintln!("error: --config FILE is required; see gateway/config/gateway.toml");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Serve => serve(&config).await,
            Command::CreateTenant(args) => create_tenant(&config, args).await,
            Command::AddKey { tenant, label } => add_key(&config, &tenant, &label).await,
            Command::RevokeKey { tenant } => revoke_key(&config, &tenant).await,
            Command::HashKey => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

/// Opens the config's store, applying PostgreSQL migrations when the config
/// names a migration role.
async fn open_store(config: &GatewayConfig) -> Result<Option<Arc<dyn Store>>, BoxError> {
    let store: Arc<dyn Store> = match config.store_location()? {
        None => return Ok(None),
        Some(StoreLocation::Sqlite(path)) => {
            tracing::info!(path = %path.display(), "opening the SQLite store");
            Arc::new(SqliteStore::open(&path).await?)
        }
        Some(StoreLocation::Postgres { url, migrate_url, pool_size }) => {
            if let Some(migrate_url) = migrate_url {
                let app_role = url
                    .parse::<tokio_postgres::Config>()?
                    .get_user()
                    .map(str::to_owned)
                    .ok_or("the PostgreSQL URL of store.url_env names no user")?;
                PostgresStore::migrate(&migrate_url, Some(&app_role)).await?;
                tracing::info!("PostgreSQL schema is up to date");
            }
            Arc::new(PostgresStore::connect_with_pool_size(&url, pool_size).await?)
        }
    };
    Ok(Some(store))
}

async fn require_store(config: &std::path::Path) -> Result<Arc<dyn Store>, BoxError> {
    let config = GatewayConfig::load(config)?;
    open_store(&config)
        .await?
        .ok_or_else(|| "the config has no [store]; tenants of a config without a store are its [[tenants]] sections".into())
}

async fn create_tenant(config: &std::path::Path, args: CreateTenant) -> Result<(), BoxError> {
    let store = require_store(config).await?;
    let tier = match args.tier.as_str() {
        "on_device" => PrivacyTier::OnDevice,
        "self_hosted" => PrivacyTier::SelfHosted,
        "cloud" => PrivacyTier::Cloud,
        other => return Err(format!("invalid --tier {other:?}; use on_device, self_hosted or cloud").into()),
    };
    let defaults = TenantLimits::default();
    let limits = TenantLimits {
        max_concurrent_sessions: args.max_concurrent_sessions.unwrap_or(defaults.max_concurrent_sessions),
        max_new_sessions_per_minute: args.max_new_sessions_per_minute.unwrap_or(defaults.max_new_sessions_per_minute),
        max_audio_seconds_per_day: args.max_audio_seconds_per_day.unwrap_or(defaults.max_audio_seconds_per_day),
        max_message_bytes: args.max_message_bytes.unwrap_or(defaults.max_message_bytes),
        max_frame_ms: args.max_frame_ms.unwrap_or(defaults.max_frame_ms),
        max_session_seconds: args.max_session_seconds.unwrap_or(defaults.max_session_seconds),
    };
    let day = Duration::from_secs(86_400);
    let tenant = StoredTenant {
        id: TenantId::new(args.id.as_str())?,
        name: args.name.unwrap_or_else(|| args.id.clone()),
        max_tier: tier,
        transcript_retention: day.saturating_mul(u32::try_from(args.transcript_retention_days).unwrap_or(u32::MAX)),
        audio_retention: day.saturating_mul(u32::try_from(args.audio_retention_days).unwrap_or(u32::MAX)),
        limits,
        allowed_origins: args.allowed_origins,
    };
    // The server would reject every session of a tenant with unusable limits.
    server_tenant(&tenant)?;
    store.create_tenant(&tenant).await?;
    print_new_key(store.as_ref(), &tenant.id, "created with the tenant").await
}

async fn add_key(config: &std::path::Path, tenant: &str, label: &str) -> Result<(), BoxError> {
    let store = require_store(config).await?;
    let tenant = TenantId::new(tenant)?;
    store.tenant(&tenant).await?;
    print_new_key(store.as_ref(), &tenant, label).await
}

async fn revoke_key(config: &std::path::Path, tenant: &str) -> Result<(), BoxError> {
    let store = require_store(config).await?;
    let tenant = TenantId::new(tenant)?;
    let key = read_key_from_stdin()?;
    let hash = mentis_gateway::store::ApiKeyHash::of(key.expose());
    if !store.revoke_api_key(&tenant, &hash).await? {
        return Err(format!("no active key of tenant {tenant} matches the key on standard input; nothing was revoked").into());
    }
    tracing::info!(%tenant, "API key revoked");
    println!("revoked");
    Ok(())
}

/// Reads an API key from standard input, trimmed; an empty input is an error.
fn read_key_from_stdin() -> Result<Secret, BoxError> {
    let mut key = String::new();
    std::io::stdin().read_to_string(&mut key).map_err(|error| format!("cannot read the key from standard input: {error}"))?;
    let key = Secret::new(key.trim());
    if key.expose().is_empty() {
        return Err("no key on standard input; pipe the key in, as in `printf %s \"$KEY\" | mentis-gateway ...`".into());
    }
    Ok(key)
}

/// Stores a new key's digest and prints the key: the only time it is shown.
async fn print_new_key(store: &dyn Store, tenant: &TenantId, label: &str) -> Result<(), BoxError> {
    let key = generate_api_key()?;
    store.add_api_key(tenant, &key.hash, label).await?;
    tracing::info!(%tenant, "API key created");
    println!("{}", key.key.expose());
    Ok(())
}

fn hash_key() -> ExitCode {
    match read_key_from_stdin() {
        Ok(key) => {
            println!("{}", KeyDigest::of(&key).to_hex());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: &std::path::Path) -> Result<(), BoxError> {
    let config = GatewayConfig::load(path)?;
    let settings = config.settings()?;
    let store = open_store(&config).await?;
    let redis_url = config.redis_url()?;
    let signer = TokenSigner::new(config.signing_key()?)?;
    let tls = match &config.tls {
        Some(files) => Some(tls::server_config(&files.certificate, &files.private_key)?),
        None => None,
    };

    let mut pipelines = PipelineRegistry::new();
    for name in &config.pipelines {
        pipelines = match name.as_str() {
            "loadtest" => pipelines.with("loadtest", LoadTestPipeline::new(LoadTestConfig::default())),
            #[cfg(feature = "on-device")]
            "on-device" => pipelines.with("on-device", on_device_pipeline(&config.on_device).await?),
            other => return Err(format!("unknown pipeline {other:?} in `pipelines`; this build has \"loadtest\"{}", on_device_hint()).into()),
        };
    }

    // Tenants come from the store when there is one, else from the file.
    let directory: Arc<dyn TenantDirectory> = match &store {
        Some(store) => Arc::new(StoreDirectory::new(Arc::clone(store))),
        None => Arc::new(config.tenants()?),
    };
    let mut builder = Gateway::builder(directory, signer).pipelines(pipelines).settings(settings);
    if let Some(store) = &store {
        builder = builder.recorder(Arc::new(StoreRecorder::new(Arc::clone(store)))).routes(records::router(Arc::clone(store)));
    } else {
        tracing::warn!("no [store] in the config: transcripts are not stored and the privacy records API is off");
    }
    if let Some(url) = &redis_url {
        let instance = config.instance_id();
        builder = builder
            .limits(Arc::new(RedisLimits::connect(url).await?))
            .registry(Arc::new(RedisSessionRegistry::connect(url).await?), instance.clone());
        tracing::info!(%instance, "limits and the session registry are shared through Redis");
    }

    let running = builder.build().bind(config.listen, tls).await?;
    let purge_stop = CancellationToken::new();
    let purge = match (&store, config.purge_interval()) {
        (Some(store), Some(interval)) => Some(tokio::spawn(run_purge_job(Arc::clone(store), interval, purge_stop.clone()))),
        _ => None,
    };

    shutdown_signal().await?;
    running.shutdown().await;
    purge_stop.cancel();
    if let Some(purge) = purge {
        let _ = purge.await;
    }
    Ok(())
}

/// Waits for Ctrl-C or, on Unix, SIGTERM (what Kubernetes sends a pod).
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Builds the on-device pipeline from its settings and loads its models
/// now, so that a missing model fails the start, not the first session.
#[cfg(feature = "on-device")]
async fn on_device_pipeline(
    section: &mentis_gateway::config::OnDeviceSection,
) -> Result<mentis_gateway::pipelines::on_device::OnDevicePipeline, BoxError> {
    use mentis_gateway::pipelines::on_device::{OnDeviceConfig, OnDevicePipeline};
    let mut config = OnDeviceConfig::default();
    if let Some(max_sessions) = section.max_sessions {
        if max_sessions == 0 {
            return Err("invalid [on_device] max_sessions = 0; allow at least 1 session".into());
        }
        config.max_sessions = max_sessions;
    }
    if let Some(max_tokens) = section.max_tokens {
        config.max_tokens = max_tokens;
    }
    if let Some(prompt) = &section.system_prompt {
        config.system_prompt.clone_from(prompt);
    }
    let pipeline = OnDevicePipeline::new(config);
    // No session runs yet, so blocking this thread for the load is harmless.
    tokio::task::block_in_place(|| pipeline.load_models())?;
    tracing::info!("on-device models loaded");
    Ok(pipeline)
}

fn on_device_hint() -> &'static str {
    if cfg!(feature = "on-device") { " and \"on-device\"" } else { " (\"on-device\" needs --features on-device)" }
}
