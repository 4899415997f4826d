//! The mentis command line.
//!
//! `mentis converse INPUT.wav` runs the on-device conversation on a
//! recording: it prints each turn's transcript and reply and a latency table,
//! writes the spoken reply as one WAV aligned with the input, and saves the
//! latencies as JSON. Run `mentis converse --help` for the options.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mentis::conversation::{self, ConversationConfig, DEFAULT_SYSTEM_PROMPT, TtsChoice, VadChoice};
use mentis::pipeline::report::TurnReport;
use mentis::pipeline::SessionId;
use mentis::stages::playback::Pacing;

#[derive(Debug, Parser)]
#[command(name = "mentis", version, about = "Real-time voice AI pipelines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replies to a recording with synthesized speech: on the device, or
    /// with the self-hosted or cloud backends a --config file picks.
    Converse(ConverseArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VadArg {
    Webrtc,
    Silero,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TtsArg {
    Piper,
    Flite,
}

#[derive(Debug, clap::Args)]
struct ConverseArgs {
    /// WAV recording of a person speaking (any sample rate, mono or stereo).
    /// Ignored with --live.
    #[arg(required_unless_present = "live")]
    input: Option<PathBuf>,
    /// Listen to the default microphone and reply through the default
    /// speaker until Ctrl-C (needs a build with `--features device`).
    #[arg(long)]
    live: bool,
    /// Path of the reply WAV [default: INPUT.reply.wav beside the input].
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Path of the per-turn latency JSON [default: OUTPUT with .latency.json].
    #[arg(long)]
    latency_json: Option<PathBuf>,
    /// Process as fast as possible instead of in real time. Latencies then
    /// no longer match what a live user would see.
    #[arg(long)]
    fast: bool,
    /// Voice activity detector.
    #[arg(long, value_enum, default_value_t = VadArg::Webrtc)]
    vad: VadArg,
    /// Speech synthesis engine (piper needs a build with `--features piper`).
    #[arg(long, value_enum, default_value_t = default_tts())]
    tts: TtsArg,
    /// System prompt of the LLM.
    #[arg(long, default_value = DEFAULT_SYSTEM_PROMPT)]
    system_prompt: String,
    /// Most tokens the LLM generates per reply.
    #[arg(long, default_value_t = 48)]
    max_tokens: u32,
    /// Silence after speech that ends a turn, in milliseconds [default: the VAD's].
    #[arg(long)]
    end_silence_ms: Option<u64>,
    /// Threads the LLM decodes with. On 2 cores shared with speech
    /// recognition and synthesis, 1 is fastest.
    #[arg(long, default_value_t = 1)]
    llm_threads: u16,
    /// A TOML file that sets the privacy tier and picks self-hosted or cloud
    /// backends for speech recognition, the LLM and speech synthesis (see
    /// configs/ for one example per tier). Without it everything runs on
    /// the device.
    #[arg(long)]
    config: Option<PathBuf>,
}

const fn default_tts() -> TtsArg {
    if cfg!(feature = "piper") { TtsArg::Piper } else { TtsArg::Flite }
}

/// Inputs at least this long show a progress bar.
const PROGRESS_MIN_INPUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Converse(args) => runtime.block_on(converse(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn converse(args: ConverseArgs) -> Result<(), Box<dyn std::error::Error>> {
    let input = args.input.clone().unwrap_or_else(|| PathBuf::from("microphone"));
    let output = args.output.clone().unwrap_or_else(|| conversation::default_output(&input));
    let latency_json = args.latency_json.clone().unwrap_or_else(|| output.with_extension("latency.json"));
    let config = ConversationConfig {
        input: input.clone(),
        output: output.clone(),
        pacing: if args.fast { Pacing::AsFastAsPossible } else { Pacing::RealTime },
        vad: match args.vad {
            VadArg::Webrtc => VadChoice::Webrtc,
            VadArg::Silero => VadChoice::Silero,
        },
        tts: match args.tts {
            TtsArg::Piper => TtsChoice::Piper,
            TtsArg::Flite => TtsChoice::Flite,
        },
        system_prompt: args.system_prompt.clone(),
        max_tokens: args.max_tokens,
        end_of_turn_silence: args.end_silence_ms.map(Duration::from_millis),
        llm_threads: args.llm_threads,
        live: args.live,
        pipeline: args.config.as_deref().map(mentis::config::PipelineConfig::load).transpose()?,
    };

    let tier = config.pipeline.as_ref().map_or(mentis::pipeline::PrivacyTier::OnDevice, |pipeline| pipeline.tier);
    eprintln!("loading models and building the pipeline for the {tier} tier...");
    let conversation = conversation::start(&config, SessionId(1))?;
    eprintln!(
        "input: {} ({}, {:.1} s), {}",
        input.display(),
        conversation.input_format,
        conversation.input_duration.as_secs_f64(),
        if args.fast { "as fast as possible" } else { "paced in real time" }
    );

    // A progress bar for long inputs, fed by the capture position.
    let progress = (conversation.input_duration >= PROGRESS_MIN_INPUT && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(conversation.input_duration.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let position = conversation.position_nanos.clone();
        let total = conversation.input_duration;
        let updater_bar = bar.clone();
        let updater = tokio::spawn(async move {
            loop {
                let at = Duration::from_nanos(position.load(Ordering::Relaxed));
                updater_bar.set_position(at.as_millis() as u64);
                updater_bar.set_message(format!("{:.1} / {:.1} s", at.as_secs_f64(), total.as_secs_f64()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (bar, updater)
    });

    // A live session runs until Ctrl-C; a recording ends by itself.
    if args.live {
        let cancel = conversation.session.cancel_token();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
        eprintln!("listening on the default microphone; press Ctrl-C to stop");
    }

    let log = conversation.log.clone();
    let playback = conversation.playback.clone();
    let written = conversation.output.clone();
    let output_rate = conversation.input_format.sample_rate;
    let report = conversation.session.wait().await;
    if let Some((bar, updater)) = progress {
        updater.abort();
        bar.finish_and_clear();
    }
    let report = report?;

    // Transcripts and replies.
    let turns = log.turns();
    for (turn, text) in &turns {
        if text.transcript.is_empty() && text.reply.is_empty() {
            continue;
        }
        println!("turn {}:", turn.0);
        println!("  you:    {}", text.transcript.trim());
        let played = playback.reply(*turn);
        let note = match played {
            Some(reply) if reply.interrupted => {
                format!(" (interrupted after {:.1} of {:.1} s)", reply.played.as_secs_f64(), reply.synthesized.as_secs_f64())
            }
            _ => String::new(),
        };
        println!("  mentis: {}{note}", text.reply.trim());
    }

    // The latency table, in milliseconds from the end of the user's speech.
    println!();
    println!("latency from end of speech, ms (the end-of-turn silence is not counted):");
    println!("{:>6} {:>18} {:>12} {:>18} {:>16}", "turn", "final transcript", "first token", "first reply audio", "first audio out");
    let show = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}"));
    for turn in &report.turns {
        println!(
            "{:>6} {:>18} {:>12} {:>18} {:>16}",
            turn.turn.0,
            show(turn.final_transcript_ms),
            show(turn.first_token_ms),
            show(turn.first_tts_audio_ms),
            show(turn.voice_to_voice_ms)
        );
    }

    // Every connection that left the device, so the user sees where data went.
    if !report.egress.is_empty() {
        println!();
        println!("connections that left the device:");
        println!("{:>8} {:<12} {:<28} {:>12} {:>14}", "stage", "tier", "host", "bytes sent", "bytes received");
        for record in &report.egress {
            println!(
                "{:>8} {:<12} {:<28} {:>12} {:>14}",
                record.stage,
                record.tier.to_string(),
                format!("{}:{}", record.host, record.port),
                record.bytes_sent,
                record.bytes_received
            );
        }
    }

    let json = serde_json::json!({
        "input": input,
        "output": output,
        "paced": !args.fast,
        "turns": turns.iter().map(|(turn, text)| {
            let latency: Option<&TurnReport> = report.turns.iter().find(|r| r.turn == *turn);
            serde_json::json!({
                "turn": turn.0,
                "transcript": text.transcript,
                "reply": text.reply,
                "latency_ms": latency,
                "playback": playback.reply(*turn).map(|reply| serde_json::json!({
                    "start_s": reply.start.as_duration().as_secs_f64(),
                    "synthesized_s": reply.synthesized.as_secs_f64(),
                    "played_s": reply.played.as_secs_f64(),
                    "interrupted": reply.interrupted,
                })),
            })
        }).collect::<Vec<_>>(),
        "session": serde_json::from_str::<serde_json::Value>(&report.to_json()).unwrap_or_default(),
    });
    std::fs::write(&latency_json, serde_json::to_string_pretty(&json)?)
        .map_err(|error| format!("cannot write {}: {error}", latency_json.display()))?;

    println!();
    println!(
        "reply written to {} ({:.1} s of audio); latencies saved to {}",
        output.display(),
        written.sample_frames() as f64 / f64::from(output_rate.max(1)),
        latency_json.display()
    );
    Ok(())
}
