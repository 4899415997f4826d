//! Tests of the [`Tts`] stage with a scripted engine.

use std::sync::{Arc, Mutex};

use mentis_pipeline::{ErrorClass, SessionId, TextDelta};

use super::*;

const SESSION: SessionId = SessionId(5);

/// 1 kHz, so that a 20 ms frame is 20 samples.
const RATE: u32 = 1_000;

/// Samples the engine produces per character of text.
const SAMPLES_PER_CHAR: usize = 10;

/// An engine that produces [`SAMPLES_PER_CHAR`] samples of 0.5 per
/// character and records the pieces it was asked to speak.
#[derive(Debug, Default)]
struct ScriptedEngine {
    spoken: Arc<Mutex<Vec<String>>>,
    fail_on: Option<&'static str>,
}

impl SpeechEngine for ScriptedEngine {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn sample_rate(&self) -> u32 {
        RATE
    }

    fn synthesize(&mut self, text: &str, samples: &mut Vec<f32>) -> Result<(), TtsError> {
        if self.fail_on == Some(text) {
            return Err(failure());
        }
        self.spoken.lock().expect("lock").push(text.to_owned());
        samples.extend(std::iter::repeat_n(0.5, text.chars().count() * SAMPLES_PER_CHAR));
        Ok(())
    }
}

fn failure() -> TtsError {
    TtsError::Engine { engine: "scripted", source: "scripted failure".into() }
}

fn stage() -> (Tts<ScriptedEngine>, Arc<Mutex<Vec<String>>>) {
    let engine = ScriptedEngine::default();
    let spoken = Arc::clone(&engine.spoken);
    let name = StageName::new("tts").expect("valid stage name");
    (Tts::new(name, engine).expect("valid settings"), spoken)
}

fn text(turn: u64, content: &str, last: bool) -> Frame {
    let meta = FrameMeta { session: SESSION, turn: TurnId(turn), seq: 0, timestamp: MediaTime::ZERO };
    Frame::new(meta, Payload::Text(TextDelta { text: content.to_owned(), last }))
}

/// Audio frames as (turn, timestamp in samples, sample count).
fn audio(frames: &[Frame]) -> Vec<(u64, u64, usize)> {
    frames
        .iter()
        .filter_map(|frame| {
            let audio = frame.as_audio()?;
            let position = frame.meta.timestamp.0 * u64::from(RATE) / 1_000_000_000;
            Some((frame.meta.turn.0, position, audio.frames()))
        })
        .collect()
}

#[test]
fn spec_declares_engine_rate() {
    let (tts, _) = stage();
    let spec = tts.spec();
    assert_eq!(spec.input, PortFormat::Text);
    assert_eq!(spec.output, PortFormat::Audio(AudioFormat::mono_f32(RATE)));
    assert_eq!(spec.execution, Execution::Blocking);
}

#[test]
fn sentences_spoken_separately() {
    let (mut tts, spoken) = stage();
    let mut out = Emitter::new(SESSION);
    tts.process(text(1, "Hello there. How are you today?", true), &mut out).expect("speaks");
    assert_eq!(*spoken.lock().expect("lock"), ["Hello there.", "How are you today?"]);
}

#[test]
fn audio_split_into_frames() {
    let (mut tts, _) = stage();
    let mut out = Emitter::new(SESSION);
    // 5 characters: 50 samples, so 20 + 20 + 10.
    tts.process(text(1, "Hello", true), &mut out).expect("speaks");
    assert_eq!(audio(out.frames()), [(1, 0, 20), (1, 20, 20), (1, 40, 10)]);
    assert!(
        out.frames().iter().all(|frame| frame.as_audio().is_some_and(|a| a.format() == AudioFormat::mono_f32(RATE)))
    );
}

#[test]
fn timestamps_run_across_turn() {
    let (mut tts, _) = stage();
    let mut out = Emitter::new(SESSION);
    tts.process(text(1, "Hi.", false), &mut out).expect("speaks");
    tts.process(text(1, "Yo.", true), &mut out).expect("speaks");
    tts.process(text(2, "Hey.", true), &mut out).expect("speaks");
    assert_eq!(audio(out.frames()), [(1, 0, 20), (1, 20, 10), (1, 30, 20), (1, 50, 10), (2, 0, 20), (2, 20, 20)]);
    let seqs: Vec<u64> = out.frames().iter().map(|frame| frame.meta.seq).collect();
    assert_eq!(seqs, (0..6).collect::<Vec<u64>>());
}

#[test]
fn first_audio_marked() {
    let (mut tts, _) = stage();
    let mut out = Emitter::new(SESSION);
    assert!(out.turns().get(TurnId(3), TurnMark::FirstTtsAudio).is_none());
    tts.process(text(3, "Hello.", true), &mut out).expect("speaks");
    assert!(out.turns().get(TurnId(3), TurnMark::FirstTtsAudio).is_some());
}

#[test]
fn text_after_last_ignored() {
    let (mut tts, spoken) = stage();
    let mut out = Emitter::new(SESSION);
    tts.process(text(1, "Done.", true), &mut out).expect("speaks");
    let frames = out.frames().len();
    tts.process(text(1, "Late.", false), &mut out).expect("ignores");
    assert_eq!(out.frames().len(), frames);
    assert_eq!(*spoken.lock().expect("lock"), ["Done."]);
}

#[test]
fn interrupt_ends_turn() {
    let (mut tts, spoken) = stage();
    let mut out = Emitter::new(SESSION);
    tts.process(text(1, "First.", false), &mut out).expect("speaks");
    let meta = FrameMeta { session: SESSION, turn: TurnId(1), seq: 0, timestamp: MediaTime::ZERO };
    tts.control(&Control::Interrupt, &meta, &mut out).expect("interrupt");
    tts.process(text(1, "Stale.", true), &mut out).expect("ignores");
    tts.process(text(2, "Next.", true), &mut out).expect("speaks");
    assert_eq!(*spoken.lock().expect("lock"), ["First.", "Next."]);
    let turn_two: Vec<_> = audio(out.frames()).into_iter().filter(|frame| frame.0 == 2).collect();
    assert_eq!(turn_two.first().map(|frame| frame.1), Some(0), "a new turn starts at 0");
}

#[test]
fn punctuation_only_text_not_spoken() {
    let (mut tts, spoken) = stage();
    let mut out = Emitter::new(SESSION);
    tts.process(text(1, "... !?", false), &mut out).expect("speaks nothing");
    tts.process(text(1, "", true), &mut out).expect("speaks nothing");
    assert!(spoken.lock().expect("lock").is_empty());
    assert!(out.frames().is_empty());
}

#[test]
fn engine_failure_is_fatal() {
    let engine = ScriptedEngine { fail_on: Some("Broken."), ..ScriptedEngine::default() };
    let mut tts = Tts::new(StageName::new("tts").expect("valid stage name"), engine).expect("valid settings");
    let mut out = Emitter::new(SESSION);
    let error = tts.process(text(1, "Broken.", true), &mut out).expect_err("engine fails");
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert!(error.message().contains("Broken."), "{}", error.message());
}

#[test]
fn config_rejects_empty_frame() {
    let config = TtsConfig { frame: Duration::from_micros(100), ..TtsConfig::default() };
    let name = StageName::new("tts").expect("valid stage name");
    let error = Tts::with_config(name, ScriptedEngine::default(), config).expect_err("frame under one sample");
    assert!(matches!(error, TtsConfigError::InvalidFrame { sample_rate: RATE, .. }), "{error}");
}

#[test]
fn config_rejects_zero_piece_length() {
    let config = TtsConfig { max_piece_chars: Some(0), ..TtsConfig::default() };
    let name = StageName::new("tts").expect("valid stage name");
    let error = Tts::with_config(name, ScriptedEngine::default(), config).expect_err("zero piece length");
    assert!(matches!(error, TtsConfigError::InvalidMaxPieceChars), "{error}");
}

#[test]
fn long_sentence_split_at_commas() {
    let sentence = "First part here, second part here; third part here: and the end.";
    assert_eq!(
        split_long_sentence(sentence, Some(20)),
        ["First part here,", "second part here;", "third part here:", "and the end."]
    );
    assert_eq!(
        split_long_sentence(sentence, Some(40)),
        ["First part here, second part here;", "third part here: and the end."]
    );
    assert_eq!(split_long_sentence(sentence, None), [sentence]);
    assert_eq!(split_long_sentence(sentence, Some(500)), [sentence]);
}

#[test]
fn long_clause_stays_whole() {
    let sentence = "An unbroken clause that is far longer than the limit, then more.";
    assert_eq!(
        split_long_sentence(sentence, Some(10)),
        ["An unbroken clause that is far longer than the limit,", "then more."]
    );
    assert_eq!(split_long_sentence("2,500 and 3,000 items", Some(5)), ["2,500 and 3,000 items"]);
}

#[test]
fn long_sentence_pieces_spoken_in_order() {
    let engine = ScriptedEngine::default();
    let spoken = Arc::clone(&engine.spoken);
    let config = TtsConfig { max_piece_chars: Some(20), ..TtsConfig::default() };
    let mut tts =
        Tts::with_config(StageName::new("tts").expect("valid stage name"), engine, config).expect("valid settings");
    let mut out = Emitter::new(SESSION);
    tts.process(text(1, "One two three four, five six seven eight.", true), &mut out).expect("speaks");
    assert_eq!(*spoken.lock().expect("lock"), ["One two three four,", "five six seven eight."]);
}
