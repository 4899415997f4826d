//! Streams a recording to a running mentis gateway over TLS in real time,
//! and prints the transcripts, the reply text, each turn's latencies as the
//! server measured them, and each turn's reply latency as the client saw it.
//!
//! The commands below run a gateway with the on-device pipeline (Whisper,
//! SmolLM2 through llama.cpp, flite) over TLS on 127.0.0.1:8443, and this
//! client against it. They need `openssl`, the models that `scripts/setup`
//! downloads, and the LibriVox recording of Debian's pocketsphinx test data.
//! `CARGO_TARGET_DIR=$HOME/.cache/mentis/target`, as `scripts/test` sets it,
//! reuses the C++ libraries built there.
//!
//! 1. A test CA and a certificate for `localhost` that it signs:
//!
//! ```text
//! mkdir -p /tmp/mentis-demo && cd /tmp/mentis-demo
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
//!     -subj "/CN=mentis test CA" -keyout ca.key -out ca.pem
//! openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
//!     -subj "/CN=localhost" -keyout key.pem -out cert.csr
//! printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > cert.ext
//! openssl x509 -req -in cert.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
//!     -extfile cert.ext -out cert.pem
//! ```
//!
//! 2. The token signing key, an API key, and a config that serves the
//!    `on-device` pipeline with TLS to one tenant holding that key:
//!
//! ```text
//! head -c 48 /dev/urandom | base64 > signing.key && chmod 600 signing.key
//! printf %s mgk_demo_local_key > api.key && chmod 600 api.key
//! cat > gateway.toml <<EOF
//! listen = "127.0.0.1:8443"
//! signing_key_file = "/tmp/mentis-demo/signing.key"
//! pipelines = ["on-device"]
//!
//! [tls]
//! certificate = "/tmp/mentis-demo/cert.pem"
//! private_key = "/tmp/mentis-demo/key.pem"
//!
//! [[tenants]]
//! id = "demo"
//! tier = "on_device"
//! api_key_sha256 = ["$(sha256sum api.key | cut -d ' ' -f 1)"]
//! EOF
//! ```
//!
//! 3. From the repository root, the gateway (it runs until Ctrl-C):
//!
//! ```text
//! cargo run -p mentis-gateway --features on-device -- --config /tmp/mentis-demo/gateway.toml
//! ```
//!
//! 4. In a second terminal, from the repository root, this client:
//!
//! ```text
//! cargo run -p mentis-gateway --features on-device --example client -- \
//!     --address 127.0.0.1:8443 --host localhost --ca /tmp/mentis-demo/ca.pem \
//!     --api-key-file /tmp/mentis-demo/api.key --pipeline on-device \
//!     --wav /usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav
//! ```
//!
//! The first session loads the Whisper model, so its `ready` comes a second
//! or two after the others would. Without `--ca` the client speaks plain ws,
//! which the gateway serves only on a loopback address. `--pipeline loadtest`
//! picks the scripted pipeline that every gateway build has.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mentis_gateway::client::{Endpoint, SessionRecord, StreamPlan, load_wav_mono_i16, pcm16_frames, stream_session};
use mentis_gateway::protocol::{AudioEncoding, ConsentFlags, InputAudio, OutputAudio, PROTOCOL_VERSION, ServerEvent, StartMessage};
use mentis_gateway::server::TokenRequest;
use mentis_gateway::tenants::UserId;
use mentis_pipeline::{PrivacyTier, Secret};

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "Stream a WAV recording to a mentis gateway and print what comes back")]
pub struct Args {
    /// The gateway's socket address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    address: std::net::SocketAddr,
    /// The name the server certificate is checked against.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// The PEM CA certificate to trust. Without it the client speaks plain ws, which the gateway accepts on loopback only.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A file holding the tenant's API key, readable by its owner only (chmod 600).
    #[arg(long)]
    api_key_file: PathBuf,
    /// The user id the session is for.
    #[arg(long, default_value = "example-user")]
    user: String,
    /// The pipeline to run: `on-device`, or `loadtest` (scripted STT, LLM and TTS).
    #[arg(long, default_value = "on-device")]
    pipeline: String,
    /// The tier to ask for: on_device, self_hosted or cloud.
    #[arg(long, default_value = "on_device")]
    tier: String,
    /// The recording: a 16-bit WAV file, any rate, mono or stereo (mixed down).
    #[arg(long, default_value = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")]
    wav: PathBuf,
    /// Seconds to keep listening after the last frame before sending `stop`.
    #[arg(long, default_value_t = 3.0)]
    linger_seconds: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut stdout = std::io::stdout();
    match run(args, &mut stdout).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Streams the recording that `args` names and writes a line to `out` for
/// each transcript, reply, turn report and reply latency.
pub async fn run(args: Args, out: &mut dyn Write) -> Result<SessionRecord, Box<dyn std::error::Error>> {
    let tls = match &args.ca {
        Some(ca) => Some(mentis_gateway::tls::client_config(ca)?),
        None => None,
    };
    let endpoint = Endpoint { address: args.address, host: args.host.clone(), tls };
    let api_key = Secret::from_file(&args.api_key_file)?;
    let tier: PrivacyTier = serde_json::from_value(serde_json::Value::String(args.tier.clone()))
        .map_err(|_| format!("invalid --tier {:?}: use on_device, self_hosted or cloud", args.tier))?;
    if !args.linger_seconds.is_finite() || !(0.0..=600.0).contains(&args.linger_seconds) {
        return Err(format!("invalid --linger-seconds {}: use 0 to 600", args.linger_seconds).into());
    }
    let linger = Duration::from_secs_f64(args.linger_seconds);
    let (samples, rate) = load_wav_mono_i16(&args.wav)?;

    // A short-lived token for this user, then the session WebSocket.
    let request = TokenRequest { user: UserId::new(&args.user)?, tier: Some(tier), ttl_seconds: None };
    let token = endpoint.request_token(&api_key, &request).await?;
    let ws = endpoint.connect(&token.token, None).await?;

    // 20 ms PCM16 frames at the recording's own rate; the gateway resamples.
    let plan = StreamPlan {
        start: StartMessage {
            version: PROTOCOL_VERSION,
            audio: InputAudio { encoding: AudioEncoding::Pcm16, sample_rate: rate, channels: 1 },
            output: OutputAudio::default(),
            pipeline: args.pipeline.clone(),
            tier,
            consent: ConsentFlags::default(),
        },
        frames: pcm16_frames(&samples, rate as usize / 50).into(),
        frame_duration: Duration::from_millis(20),
        real_time: true,
        linger,
    };

    // Events are printed as they arrive. The first write error ends the printing and is returned.
    let mut printer = Printer { out, replies: BTreeMap::new(), error: None };
    let record = stream_session(ws, &plan, |event| printer.event(event)).await?;
    for (turn, latency) in &record.reply_latencies {
        printer.line(format_args!(
            "turn {turn} reply latency (end of turn to first reply audio, client side): {:.0} ms",
            latency.as_secs_f64() * 1e3
        ));
    }
    let close = record.close_code.map_or_else(|| "none".to_owned(), |code| code.to_string());
    printer.line(format_args!("closed with code {close}, {} bytes of reply audio", record.reply_audio_bytes));
    match printer.error {
        Some(error) => Err(error.into()),
        None => Ok(record),
    }
}

/// Writes one line per event worth showing, and joins each turn's reply text.
struct Printer<'a> {
    out: &'a mut dyn Write,
    /// Reply text received so far, by turn, printed whole when its last piece arrives.
    replies: BTreeMap<u64, String>,
    error: Option<std::io::Error>,
}

impl Printer<'_> {
    fn line(&mut self, line: std::fmt::Arguments<'_>) {
        if self.error.is_some() {
            return;
        }
        if let Err(error) = writeln!(self.out, "{line}") {
            self.error = Some(error);
        }
    }

    fn event(&mut self, event: &ServerEvent) {
        match event {
            ServerEvent::Ready { session_id, pipeline, tier, .. } => self.line(format_args!("session {session_id}: pipeline {pipeline}, tier {tier}")),
            ServerEvent::Transcript { turn, is_final: true, text, .. } => self.line(format_args!("turn {turn} transcript: {text}")),
            ServerEvent::LlmText { turn, text, last } => {
                self.replies.entry(*turn).or_default().push_str(text);
                if *last {
                    let reply = self.replies.remove(turn).unwrap_or_default();
                    self.line(format_args!("turn {turn} reply: {}", reply.trim()));
                }
            }
            ServerEvent::TurnMetrics { turn, final_transcript_ms, first_token_ms, first_tts_audio_ms, voice_to_voice_ms } => self.line(format_args!(
                "turn {turn} server latency from end of speech: final transcript {}, first token {}, first TTS audio {}, voice to voice {}",
                milliseconds(*final_transcript_ms),
                milliseconds(*first_token_ms),
                milliseconds(*first_tts_audio_ms),
                milliseconds(*voice_to_voice_ms),
            )),
            ServerEvent::Interrupt { turn } => self.line(format_args!("turn {turn} interrupted: clear playback")),
            ServerEvent::Error { code, message, .. } => self.line(format_args!("error {code:?}: {message}")),
            ServerEvent::Ended { reason, frames_received, turns, .. } => {
                self.line(format_args!("ended: {reason:?}, {frames_received} frames received, {turns} turns"));
            }
            _ => {}
        }
    }
}

/// Formats a latency in milliseconds, or `-` when the turn did not reach that point.
fn milliseconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"))
}
