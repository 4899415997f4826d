//! Intelligibility of each speech synthesis engine: its speech of a few
//! sentences, resampled to 16 kHz, goes through Whisper tiny.en, and the
//! word error rate of the transcripts against the text must stay at or
//! under 10 %.
//!
//! ```text
//! cargo test -p mentis-stages --features piper --test tts_roundtrip -- --nocapture
//! ```
//!
//! Needs the flite library, the Piper voice, ONNX Runtime and the Whisper
//! model, which `scripts/setup` installs. The tests fail rather than skip
//! when any of them is missing.

#![cfg(all(feature = "whisper", any(feature = "flite", feature = "piper")))]

use mentis_pipeline::{
    Emitter, Frame, FrameMeta, MediaTime, Payload, Processor, SessionId, StageName, TextDelta, TurnId,
};
use mentis_stages::resample::{ResamplerKind, StreamResampler};
use mentis_stages::stt::{WhisperConfig, WhisperRecognizer};
use mentis_stages::tts::{SpeechEngine, Tts};
use mentis_stages::wer::{WordErrors, word_errors};

/// Whisper's input rate, in Hz.
const WHISPER_RATE: u32 = 16_000;

/// The highest word error rate allowed over all sentences together.
const MAX_WER: f64 = 0.10;

/// Sentences spoken one per turn, each recognized on its own.
const SENTENCES: &[&str] = &[
    "Hello there. How are you today?",
    "The weather is nice, so we will walk to the park.",
    "Please turn off the lights before you leave the house.",
    "My brother likes to read books about old ships.",
];

/// Whisper uses both cores; running the engines one at a time keeps the
/// machine free for each.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Speaks `text` as one turn and returns its samples at the stage's rate.
fn speak<E: SpeechEngine>(tts: &mut Tts<E>, turn: u64, text: &str) -> Vec<f32> {
    let meta = FrameMeta { session: SessionId(1), turn: TurnId(turn), seq: 0, timestamp: MediaTime::ZERO };
    let frame = Frame::new(meta, Payload::Text(TextDelta { text: text.to_owned(), last: true }));
    let mut out = Emitter::new(SessionId(1));
    tts.process(frame, &mut out).expect("synthesis succeeds");
    out.frames().iter().filter_map(Frame::as_audio).flat_map(|audio| audio.to_f32()).collect()
}

/// Converts mono samples from `rate` to 16 kHz.
fn to_whisper_rate(samples: &[f32], rate: u32) -> Vec<f32> {
    if rate == WHISPER_RATE {
        return samples.to_vec();
    }
    let mut resampler = StreamResampler::new(rate, WHISPER_RATE, 1, ResamplerKind::Fft).expect("supported rates");
    let mut output = resampler.process(samples).expect("resampling succeeds");
    output.extend(resampler.flush().expect("resampling succeeds"));
    output
}

/// Speaks every sentence, transcribes it, and checks the WER of them all.
fn check_round_trip<E: SpeechEngine>(engine: &str, mut tts: Tts<E>) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let rate = tts.format().sample_rate;
    let mut whisper =
        WhisperRecognizer::new(WhisperConfig::tiny_en()).expect("the Whisper model loads (run scripts/setup)");

    let mut total = WordErrors::default();
    for (index, sentence) in SENTENCES.iter().enumerate() {
        let speech = speak(&mut tts, index as u64 + 1, sentence);
        let recognition = whisper.recognize(&to_whisper_rate(&speech, rate)).expect("recognition succeeds");
        let errors = word_errors(sentence, &recognition.text);
        println!(
            "{engine}: {sentence:?} -> {:?} ({} errors in {} words)",
            recognition.text,
            errors.errors(),
            errors.reference_words
        );
        total += errors;
    }

    let wer = total.rate().expect("the sentences have words");
    println!("{engine}: WER {wer:.3} over {} words", total.reference_words);
    assert!(wer <= MAX_WER, "{engine} speech transcribed with WER {wer:.3}, above {MAX_WER}");
}

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

#[cfg(feature = "flite")]
#[test]
fn flite_round_trip_wer() {
    let tts = mentis_stages::tts::FliteTts::slt(name("flite")).expect("flite and its slt voice load");
    check_round_trip("flite", tts);
}

#[cfg(feature = "piper")]
#[test]
fn piper_round_trip_wer() {
    let config = mentis_stages::tts::PiperConfig::joe();
    let tts =
        mentis_stages::tts::PiperTts::piper(name("piper"), config).expect("the Piper voice loads (run scripts/setup)");
    check_round_trip("piper", tts);
}
