//! Streams a recording to a running mentis gateway over TLS in real time,
//! and prints the transcripts, the reply text and each turn's reply latency.
//!
//! Start a gateway with TLS (see gateway/config/gateway.toml), then:
//!
//! ```text
//! cargo run -p mentis-gateway --example client -- \
//!     --address 127.0.0.1:8443 --host localhost --ca ca.pem \
//!     --api-key-file api.key --pipeline loadtest \
//!     --wav /usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mentis_gateway::client::{Endpoint, StreamPlan, load_wav_mono_i16, pcm16_frames, stream_session};
use mentis_gateway::protocol::{AudioEncoding, ConsentFlags, InputAudio, OutputAudio, PROTOCOL_VERSION, ServerEvent, StartMessage};
use mentis_gateway::server::TokenRequest;
use mentis_gateway::tenants::UserId;
use mentis_pipeline::{PrivacyTier, Secret};

#[derive(Debug, Parser)]
#[command(about = "Stream a WAV recording to a mentis gateway and print what comes back")]
struct Args {
    /// The gateway's socket address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    address: std::net::SocketAddr,
    /// The name the server certificate is checked against.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// The PEM CA certificate to trust; without it the client speaks plain ws (loopback only).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A file holding the tenant's API key.
    #[arg(long)]
    api_key_file: PathBuf,
    /// The user id the session is for.
    #[arg(long, default_value = "example-user")]
    user: String,
    /// The pipeline to run.
    #[arg(long, default_value = "loadtest")]
    pipeline: String,
    /// The tier to ask for: on_device, self_hosted or cloud.
    #[arg(long, default_value = "on_device")]
    tier: String,
    /// The recording: a 16-bit WAV file, any rate, mono or stereo.
    #[arg(long, default_value = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")]
    wav: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let tls = match &args.ca {
        Some(ca) => Some(mentis_gateway::tls::client_config(ca)?),
        None => None,
    };
    let endpoint = Endpoint { address: args.address, host: args.host.clone(), tls };
    let api_key = Secret::from_file(&args.api_key_file)?;
    let tier: PrivacyTier = serde_json::from_value(serde_json::Value::String(args.tier.clone()))?;
    let wav = load_wav_mono_i16(&args.wav)?;

    let outcome = stream_file(&endpoint, &api_key, &args.user, &args.pipeline, tier, wav).await?;
    println!("close code: {:?}", outcome.close_code);
    Ok(())
}

/// Gets a token, streams the samples in real time, and prints events as they arrive.
async fn stream_file(
    endpoint: &Endpoint,
    api_key: &Secret,
    user: &str,
    pipeline: &str,
    tier: PrivacyTier,
    (samples, rate): (Vec<i16>, u32),
) -> Result<mentis_gateway::client::SessionRecord, Box<dyn std::error::Error>> {
    let request = TokenRequest { user: UserId::new(user)?, tier: Some(tier), ttl_seconds: None };
    let token = endpoint.request_token(api_key, &request).await?;
    let ws = endpoint.connect(&token.token, None).await?;

    let frame_samples = rate as usize / 50;
    let plan = StreamPlan {
        start: StartMessage {
            version: PROTOCOL_VERSION,
            audio: InputAudio { encoding: AudioEncoding::Pcm16, sample_rate: rate, channels: 1 },
            output: OutputAudio::default(),
            pipeline: pipeline.to_owned(),
            tier,
            consent: ConsentFlags::default(),
        },
        frames: pcm16_frames(&samples, frame_samples).into(),
        frame_duration: Duration::from_millis(20),
        real_time: true,
        linger: Duration::from_secs(3),
    };
    let record = stream_session(ws, &plan, |event| match event {
        ServerEvent::Ready { session_id, pipeline, tier, .. } => println!("session {session_id}: pipeline {pipeline}, tier {tier}"),
        ServerEvent::Transcript { turn, is_final: true, text, .. } => println!("turn {turn} transcript: {text}"),
        ServerEvent::LlmText { turn, text, last: false } if !text.is_empty() => println!("turn {turn} reply text: {text:?}"),
        ServerEvent::TurnMetrics { turn, voice_to_voice_ms, .. } => println!("turn {turn} server voice-to-voice: {voice_to_voice_ms:?} ms"),
        ServerEvent::Interrupt { turn } => println!("turn {turn} interrupted: clear playback"),
        ServerEvent::Error { code, message, .. } => println!("error {code:?}: {message}"),
        ServerEvent::Ended { reason, frames_received, turns, .. } => println!("ended: {reason:?}, {frames_received} frames received, {turns} turns"),
        _ => {}
    })
    .await?;
    for (turn, latency) in &record.reply_latencies {
        println!("turn {turn} reply latency (end of turn to first audio, client side): {:.0} ms", latency.as_secs_f64() * 1e3);
    }
    Ok(record)
}
