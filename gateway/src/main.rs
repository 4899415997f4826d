//! The mentis gateway server.
//!
//! `mentis-gateway --config gateway/config/gateway.toml` serves sessions;
//! `printf %s "$KEY" | mentis-gateway hash-key` prints the SHA-256 digest of
//! an API key for the config's `api_key_sha256`.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mentis_gateway::config::GatewayConfig;
use mentis_gateway::pipelines::PipelineRegistry;
use mentis_gateway::pipelines::scripted::{LoadTestConfig, LoadTestPipeline};
use mentis_gateway::server::Gateway;
use mentis_gateway::tenants::KeyDigest;
use mentis_gateway::{auth::TokenSigner, tls};
use mentis_pipeline::Secret;

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::HashKey => hash_key(),
        Command::Serve => {
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
            match runtime.block_on(serve(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn hash_key() -> ExitCode {
    let mut key = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut key) {
        eprintln!("error: cannot read the key from standard input: {error}");
        return ExitCode::FAILURE;
    }
    let key = Secret::new(key.trim());
    if key.expose().is_empty() {
        eprintln!("error: no key on standard input; pipe the key in, as in `printf %s \"$KEY\" | mentis-gateway hash-key`");
        return ExitCode::FAILURE;
    }
    println!("{}", KeyDigest::of(&key).to_hex());
    ExitCode::SUCCESS
}

async fn serve(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let config = GatewayConfig::load(path)?;
    let settings = config.settings()?;
    let tenants = config.tenants()?;
    let signer = TokenSigner::new(Secret::from_file(&config.signing_key_file)?)?;
    let tls = match &config.tls {
        Some(files) => Some(tls::server_config(&files.certificate, &files.private_key)?),
        None => None,
    };

    let mut pipelines = PipelineRegistry::new();
    for name in &config.pipelines {
        pipelines = match name.as_str() {
            "loadtest" => pipelines.with("loadtest", LoadTestPipeline::new(LoadTestConfig::default())),
            #[cfg(feature = "on-device")]
            "on-device" => pipelines.with("on-device", mentis_gateway::pipelines::on_device::OnDevicePipeline::default()),
            other => return Err(format!("unknown pipeline {other:?} in `pipelines`; this build has \"loadtest\"{}", on_device_hint()).into()),
        };
    }

    let gateway = Gateway::builder(Arc::new(tenants), signer).pipelines(pipelines).settings(settings).build();
    let running = gateway.bind(config.listen, tls).await?;
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}

fn on_device_hint() -> &'static str {
    if cfg!(feature = "on-device") { " and \"on-device\"" } else { " (\"on-device\" needs --features on-device)" }
}
