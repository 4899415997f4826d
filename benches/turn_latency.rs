//! Voice-to-voice latency of the on-device conversation, in milliseconds
//! from the end of the user's speech to the first reply audio out.
//!
//! Each iteration runs `mentis::conversation` (WebRTC VAD, Whisper tiny.en,
//! SmolLM2 through llama.cpp, sentence aggregation, a voice, playback) on one
//! of the five LibriVox recordings of Debian's pocketsphinx-testdata, read as
//! fast as possible, and reports the turn's end-of-speech → first-audio-out
//! time as the iteration's time. Model loading is not counted. After
//! criterion's run, the median of each stage's mark is printed as the
//! latency breakdown.
//!
//! The end of speech is the moment the VAD ends the turn, so the configured
//! end-of-turn silence is not part of the latency.
//!
//! Run with `cargo bench --profile dev --bench turn_latency` (flite voice) or
//! add `--features piper` for the Piper voice. The dev profile reuses the
//! test build, whose dependencies, and so all model inference, are compiled
//! at opt-level 3.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mentis::conversation::{self, ConversationConfig, DEFAULT_SYSTEM_PROMPT, TtsChoice, VadChoice};
use mentis::pipeline::SessionId;
use mentis::pipeline::report::TurnReport;
use mentis::stages::playback::Pacing;

const RECORDINGS: &str = "/usr/share/pocketsphinx/test/data/librivox";
const CLIPS: [&str; 5] = [
    "sense_and_sensibility_01_austen_64kb-0870",
    "sense_and_sensibility_01_austen_64kb-0880",
    "sense_and_sensibility_01_austen_64kb-0890",
    "sense_and_sensibility_01_austen_64kb-0920",
    "sense_and_sensibility_01_austen_64kb-0930",
];

fn tts() -> TtsChoice {
    if cfg!(feature = "piper") { TtsChoice::Piper } else { TtsChoice::Flite }
}

fn run_clip(runtime: &tokio::runtime::Runtime, clip: &str, output: &PathBuf) -> TurnReport {
    let config = ConversationConfig {
        input: PathBuf::from(RECORDINGS).join(format!("{clip}.wav")),
        output: output.clone(),
        pacing: Pacing::AsFastAsPossible,
        vad: VadChoice::Webrtc,
        tts: tts(),
        system_prompt: DEFAULT_SYSTEM_PROMPT.to_owned(),
        max_tokens: 48,
        end_of_turn_silence: None,
        llm_threads: 1,
        live: false,
        pipeline: None,
    };
    runtime.block_on(async {
        let conversation = conversation::start(&config, SessionId(1)).expect("conversation builds; run scripts/setup");
        let report = conversation.session.wait().await.expect("conversation runs");
        report.turns.into_iter().find(|turn| turn.voice_to_voice_ms.is_some()).expect("a turn with reply audio")
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn turn_latency(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("reply.wav");
    let mut reports = Vec::new();
    let mut next = 0;

    let mut group = c.benchmark_group("turn_latency");
    group.sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(60));
    group.bench_function(if cfg!(feature = "piper") { "piper" } else { "flite" }, |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let report = run_clip(&runtime, CLIPS[next % CLIPS.len()], &output);
                next += 1;
                total += Duration::from_secs_f64(report.voice_to_voice_ms.unwrap_or_default() / 1e3);
                reports.push(report);
            }
            total
        });
    });
    group.finish();

    let column = |pick: fn(&TurnReport) -> Option<f64>| {
        let mut values: Vec<f64> = reports.iter().filter_map(pick).collect();
        median(&mut values)
    };
    println!(
        "turn_latency breakdown over {} turns, medians in ms from end of speech: final transcript {:.0}, first token {:.0}, first TTS audio {:.0}, first audio out {:.0}",
        reports.len(),
        column(|r| r.final_transcript_ms),
        column(|r| r.first_token_ms),
        column(|r| r.first_tts_audio_ms),
        column(|r| r.voice_to_voice_ms),
    );
}

criterion_group!(benches, turn_latency);
criterion_main!(benches);
