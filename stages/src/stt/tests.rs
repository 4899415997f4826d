//! Tests of the non-speech filter and of the turn handling of [`Stt`], with
//! a scripted recognizer in place of a real engine.

use std::sync::Arc;

use mentis_pipeline::frame::FrameMeta;
use parking_lot::Mutex;

use super::*;
use mentis_pipeline::{AudioData, SessionId};

// ---------------------------------------------------------------------------
// Non-speech filter
// ---------------------------------------------------------------------------

fn heard(text: &str, no_speech: Option<f32>, confidence: Option<f32>) -> Recognition {
    Recognition { text: text.to_owned(), confidence, no_speech_probability: no_speech }
}

fn check(recognition: &Recognition) -> Result<String, NonSpeech> {
    NonSpeechFilter::default().check(recognition)
}

#[test]
fn filter_drops_empty_text() {
    assert_eq!(check(&heard("", None, None)), Err(NonSpeech::Empty));
    assert_eq!(check(&heard("   \n", Some(0.0), Some(0.9))), Err(NonSpeech::Empty));
    assert_eq!(check(&heard(" ... ", None, None)), Err(NonSpeech::Empty));
}

#[test]
fn filter_drops_tags() {
    for text in ["[BLANK_AUDIO]", " (music) ", "[Music] (applause)", "*laughs*", "♪ ♪", "♪", "[inaudible"] {
        assert_eq!(check(&heard(text, Some(0.0), Some(0.9))), Err(NonSpeech::OnlyTags), "{text:?}");
    }
}

#[test]
fn filter_keeps_words_around_tags() {
    assert_eq!(check(&heard("(laughs) Hello there.", Some(0.0), None)), Ok("Hello there.".to_owned()));
    assert_eq!(check(&heard("I said [BLANK_AUDIO] yes", None, None)), Ok("I said yes".to_owned()));
    assert_eq!(check(&heard("  plain   text ", None, None)), Ok("plain text".to_owned()));
}

#[test]
fn filter_drops_likely_known_phrase() {
    assert_eq!(check(&heard("you", Some(0.9), Some(0.9))), Err(NonSpeech::KnownPhrase));
    assert_eq!(check(&heard(" Thank you.", Some(0.6), Some(0.9))), Err(NonSpeech::KnownPhrase));
    assert_eq!(check(&heard("Thanks for watching!", Some(0.7), None)), Err(NonSpeech::KnownPhrase));
}

#[test]
fn filter_keeps_spoken_known_phrase() {
    assert_eq!(check(&heard("Thank you.", Some(0.1), Some(0.9))), Ok("Thank you.".to_owned()));
    assert_eq!(check(&heard("You", Some(0.59), None)), Ok("You".to_owned()));
    // Engines without a no-speech probability never lose a real "thank you".
    assert_eq!(check(&heard("thank you", None, None)), Ok("thank you".to_owned()));
}

#[test]
fn filter_drops_unsure_no_speech() {
    assert_eq!(check(&heard("the quick brown fox", Some(0.8), Some(0.2))), Err(NonSpeech::NoSpeech));
    assert_eq!(check(&heard("the quick brown fox", Some(0.8), Some(0.5))), Ok("the quick brown fox".to_owned()));
    assert_eq!(check(&heard("the quick brown fox", Some(0.3), Some(0.1))), Ok("the quick brown fox".to_owned()));
    assert_eq!(check(&heard("the quick brown fox", Some(0.8), None)), Ok("the quick brown fox".to_owned()));
}

// ---------------------------------------------------------------------------
// Turn handling, with a scripted recognizer
// ---------------------------------------------------------------------------

/// What the scripted recognizer was asked to do.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Start,
    Accept(usize),
    Partial,
    Finish { samples: usize },
    Cancel,
}

/// A recognizer that records its calls. Its final text is `final_text`; its
/// partial hypothesis is one word per 100 ms of audio received.
#[derive(Debug)]
struct Scripted {
    calls: Arc<Mutex<Vec<Call>>>,
    final_text: String,
    streams: bool,
    samples: usize,
}

impl Scripted {
    fn new(final_text: &str, streams: bool) -> (Self, Arc<Mutex<Vec<Call>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recognizer = Scripted { calls: Arc::clone(&calls), final_text: final_text.to_owned(), streams, samples: 0 };
        (recognizer, calls)
    }
}

impl Recognizer for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn streams_partials(&self) -> bool {
        self.streams
    }

    fn start_utterance(&mut self) -> Result<(), SttError> {
        self.samples = 0;
        self.calls.lock().push(Call::Start);
        Ok(())
    }

    fn accept(&mut self, samples: Pcm<'_>) -> Result<(), SttError> {
        self.samples += samples.len();
        self.calls.lock().push(Call::Accept(samples.len()));
        Ok(())
    }

    fn partial(&mut self) -> Result<Option<String>, SttError> {
        self.calls.lock().push(Call::Partial);
        let words = self.samples / 1_600;
        Ok((words > 0).then(|| vec!["word"; words].join(" ")))
    }

    fn finish_utterance(&mut self) -> Result<Recognition, SttError> {
        self.calls.lock().push(Call::Finish { samples: self.samples });
        Ok(Recognition { text: self.final_text.clone(), confidence: Some(0.75), no_speech_probability: Some(0.01) })
    }

    fn cancel_utterance(&mut self) {
        self.samples = 0;
        self.calls.lock().push(Call::Cancel);
    }
}

/// Drives a processor frame by frame, as the runtime would, and keeps its output.
struct Harness {
    stt: Stt<Scripted>,
    out: Emitter<'static>,
    clock_ms: u64,
}

impl Harness {
    fn new(recognizer: Scripted) -> Self {
        let name = StageName::new("stt").expect("valid stage name");
        Harness { stt: Stt::new(name, recognizer), out: Emitter::new(SessionId(1)), clock_ms: 0 }
    }

    fn meta(&self, turn: u64) -> FrameMeta {
        FrameMeta {
            session: SessionId(1),
            turn: TurnId(turn),
            seq: 0,
            timestamp: MediaTime::from_duration(Duration::from_millis(self.clock_ms)),
        }
    }

    fn control(&mut self, turn: u64, control: Control) {
        let meta = self.meta(turn);
        self.stt.control(&control, &meta, &mut self.out).expect("control accepted");
    }

    /// Sends `ms` milliseconds of float audio in one frame.
    fn audio(&mut self, turn: u64, ms: u64) {
        let samples = vec![0.01_f32; (ms * 16) as usize];
        let audio = AudioData::from_f32(16_000, 1, samples).expect("valid audio");
        let frame = Frame::audio(self.meta(turn), audio);
        self.stt.process(frame, &mut self.out).expect("audio accepted");
        self.clock_ms += ms;
    }

    fn segment(&mut self, turn: u64, frames: u64, frame_ms: u64) {
        self.control(turn, Control::SpeechStarted);
        for _ in 0..frames {
            self.audio(turn, frame_ms);
        }
        self.control(turn, Control::SpeechStopped);
        self.control(turn, Control::EndOfTurn);
    }

    fn transcripts(&self) -> Vec<(TurnId, Transcript)> {
        self.out
            .frames()
            .iter()
            .filter_map(|frame| match &frame.payload {
                Payload::Transcript(transcript) => Some((frame.meta.turn, transcript.clone())),
                _ => None,
            })
            .collect()
    }

    fn finals(&self) -> Vec<(TurnId, Transcript)> {
        self.transcripts().into_iter().filter(|(_, t)| t.kind == TranscriptKind::Final).collect()
    }
}

fn ms(value: u64) -> MediaTime {
    MediaTime::from_duration(Duration::from_millis(value))
}

#[test]
fn segment_gives_one_final() {
    let (recognizer, calls) = Scripted::new("hello there", false);
    let mut harness = Harness::new(recognizer);
    harness.clock_ms = 500;
    harness.segment(1, 5, 20);

    let finals = harness.finals();
    assert_eq!(finals.len(), 1);
    let (turn, transcript) = &finals[0];
    assert_eq!(*turn, TurnId(1));
    assert_eq!(transcript.text, "hello there");
    assert_eq!(transcript.start, ms(500));
    assert_eq!(transcript.end, ms(600));
    assert_eq!(transcript.confidence, Some(0.75));
    assert!(harness.out.turns().get(TurnId(1), TurnMark::FinalTranscript).is_some());
    assert_eq!(calls.lock().last(), Some(&Call::Finish { samples: 1_600 }));
    assert_eq!(harness.stt.stats().snapshot().finals, 1);
}

#[test]
fn end_of_turn_alone_finishes_segment() {
    let (recognizer, _) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.control(1, Control::SpeechStarted);
    harness.audio(1, 100);
    harness.control(1, Control::EndOfTurn);
    assert_eq!(harness.finals().len(), 1);
}

#[test]
fn interrupt_discards_open_segment() {
    let (recognizer, calls) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.control(1, Control::SpeechStarted);
    harness.audio(1, 300);
    harness.control(1, Control::Interrupt);
    harness.control(1, Control::SpeechStopped);
    harness.control(1, Control::EndOfTurn);

    assert!(harness.finals().is_empty());
    assert!(calls.lock().contains(&Call::Cancel));
    assert!(!calls.lock().iter().any(|call| matches!(call, Call::Finish { .. })));
    assert_eq!(harness.stt.stats().snapshot().discarded, 1);
    assert!(harness.out.turns().get(TurnId(1), TurnMark::FinalTranscript).is_none());

    // Late audio of the interrupted turn does not reopen it.
    harness.audio(1, 100);
    assert_eq!(harness.stt.open_turn(), None);

    // The next turn starts from an empty buffer.
    harness.segment(2, 2, 50);
    assert_eq!(calls.lock().last(), Some(&Call::Finish { samples: 1_600 }));
    assert_eq!(harness.finals().len(), 1);
}

#[test]
fn interrupt_of_earlier_turn_keeps_open_segment() {
    let (recognizer, _) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.control(2, Control::SpeechStarted);
    harness.audio(2, 100);
    harness.control(1, Control::Interrupt);
    harness.control(2, Control::SpeechStopped);
    let finals = harness.finals();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].0, TurnId(2));
}

#[test]
fn flush_discards_open_segment() {
    let (recognizer, calls) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.control(1, Control::SpeechStarted);
    harness.audio(1, 100);
    harness.control(1, Control::Flush);
    harness.control(1, Control::SpeechStopped);
    assert!(harness.finals().is_empty());
    assert!(calls.lock().contains(&Call::Cancel));
}

#[test]
fn new_turn_resets_buffer() {
    let (recognizer, calls) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.control(1, Control::SpeechStarted);
    harness.audio(1, 500);

    // Turn 2 starts without turn 1 having stopped: turn 1's audio is dropped.
    harness.control(2, Control::SpeechStarted);
    harness.audio(2, 100);
    harness.control(1, Control::SpeechStopped);
    assert!(harness.finals().is_empty(), "a stop for the discarded turn emits nothing");
    harness.control(2, Control::SpeechStopped);

    let finals = harness.finals();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].0, TurnId(2));
    assert_eq!(calls.lock().last(), Some(&Call::Finish { samples: 1_600 }));
    assert_eq!(harness.stt.stats().snapshot().discarded, 1);
}

#[test]
fn audio_of_new_turn_resets_buffer() {
    let (recognizer, calls) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.audio(1, 500);
    assert_eq!(harness.stt.open_turn(), Some(TurnId(1)));
    harness.audio(2, 200);
    assert_eq!(harness.stt.open_turn(), Some(TurnId(2)));
    harness.control(2, Control::EndOfTurn);
    assert_eq!(calls.lock().last(), Some(&Call::Finish { samples: 3_200 }));
    assert_eq!(harness.finals().len(), 1);
}

#[test]
fn older_turn_keeps_open_segment() {
    let (recognizer, calls) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.control(3, Control::SpeechStarted);
    harness.audio(3, 100);
    harness.control(2, Control::SpeechStarted);
    harness.audio(2, 100);
    assert_eq!(harness.stt.open_turn(), Some(TurnId(3)));
    harness.control(3, Control::SpeechStopped);
    assert_eq!(calls.lock().last(), Some(&Call::Finish { samples: 1_600 }));
    assert_eq!(harness.stt.stats().snapshot().ignored_audio_frames, 1);
}

#[test]
fn audio_outside_segments_is_ignored() {
    let (recognizer, calls) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.audio(0, 100);
    harness.audio(0, 100);
    assert!(calls.lock().is_empty());
    assert_eq!(harness.stt.open_turn(), None);
    assert_eq!(harness.stt.stats().snapshot().ignored_audio_frames, 2);
}

#[test]
fn non_speech_result_is_dropped() {
    let (recognizer, _) = Scripted::new("[BLANK_AUDIO]", false);
    let mut harness = Harness::new(recognizer);
    harness.segment(1, 3, 20);
    assert!(harness.transcripts().is_empty());
    assert!(harness.out.turns().get(TurnId(1), TurnMark::FinalTranscript).is_none());
    let counts = harness.stt.stats().snapshot();
    assert_eq!(counts.dropped_tags, 1);
    assert_eq!(counts.finals, 0);
}

#[test]
fn end_of_stream_finishes_open_segment() {
    let (recognizer, _) = Scripted::new("last words", false);
    let mut harness = Harness::new(recognizer);
    harness.control(1, Control::SpeechStarted);
    harness.audio(1, 200);
    Processor::finish(&mut harness.stt, &mut harness.out).expect("finish");
    let finals = harness.finals();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].1.text, "last words");
}

#[test]
fn partials_follow_audio_time() {
    let (recognizer, calls) = Scripted::new("word word word word word word word word word word", true);
    let mut harness = Harness::new(recognizer);
    harness.control(1, Control::SpeechStarted);
    for _ in 0..50 {
        harness.audio(1, 20);
    }
    harness.control(1, Control::SpeechStopped);

    // One second of audio, a partial request every 200 ms of it.
    let requests = calls.lock().iter().filter(|call| **call == Call::Partial).count();
    assert_eq!(requests, 5);

    let transcripts = harness.transcripts();
    let partials: Vec<&Transcript> =
        transcripts.iter().filter(|(_, t)| t.kind == TranscriptKind::Partial).map(|(_, t)| t).collect();
    assert_eq!(partials.len(), 5);
    assert_eq!(partials[0].text, "word word");
    assert_eq!(partials[0].end, ms(200));
    assert_eq!(partials[4].end, ms(1_000));
    assert!(transcripts.iter().all(|(turn, _)| *turn == TurnId(1)));
    assert_eq!(transcripts.last().map(|(_, t)| t.kind), Some(TranscriptKind::Final));
}

#[test]
fn unchanged_partial_is_not_repeated() {
    /// Returns the same hypothesis every time.
    struct Fixed(Scripted);
    impl Recognizer for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn streams_partials(&self) -> bool {
            true
        }
        fn start_utterance(&mut self) -> Result<(), SttError> {
            self.0.start_utterance()
        }
        fn accept(&mut self, samples: Pcm<'_>) -> Result<(), SttError> {
            self.0.accept(samples)
        }
        fn partial(&mut self) -> Result<Option<String>, SttError> {
            Ok(Some("same words".to_owned()))
        }
        fn finish_utterance(&mut self) -> Result<Recognition, SttError> {
            self.0.finish_utterance()
        }
        fn cancel_utterance(&mut self) {
            self.0.cancel_utterance();
        }
    }

    let (scripted, _) = Scripted::new("same words", true);
    let name = StageName::new("stt").expect("valid stage name");
    let mut stt = Stt::new(name, Fixed(scripted));
    let mut out = Emitter::new(SessionId(1));
    let meta = FrameMeta::new(SessionId(1));
    let meta = FrameMeta { turn: TurnId(1), ..meta };
    stt.control(&Control::SpeechStarted, &meta, &mut out).expect("start");
    for _ in 0..10 {
        let audio = AudioData::from_i16(16_000, 1, vec![0_i16; 3_200]).expect("valid audio");
        stt.process(Frame::audio(meta, audio), &mut out).expect("audio");
    }
    assert_eq!(stt.stats().snapshot().partials, 1);
}

#[test]
fn i16_audio_is_accepted() {
    let (recognizer, calls) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    harness.control(1, Control::SpeechStarted);
    let audio = AudioData::from_i16(16_000, 1, vec![100_i16; 480]).expect("valid audio");
    harness.stt.process(Frame::audio(harness.meta(1), audio), &mut harness.out).expect("i16 accepted");
    assert!(calls.lock().contains(&Call::Accept(480)));
}

#[test]
fn wrong_rate_is_rejected() {
    let (recognizer, _) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    let audio = AudioData::from_f32(48_000, 1, vec![0.0_f32; 480]).expect("valid audio");
    let error = harness.stt.process(Frame::audio(harness.meta(1), audio), &mut harness.out).expect_err("48 kHz");
    assert_eq!(error.class(), mentis_pipeline::ErrorClass::Config);
    assert!(error.message().contains("48000"), "{}", error.message());
}

#[test]
fn stereo_is_rejected() {
    let (recognizer, _) = Scripted::new("hello", false);
    let mut harness = Harness::new(recognizer);
    let audio = AudioData::from_f32(16_000, 2, vec![0.0_f32; 640]).expect("valid audio");
    let error = harness.stt.process(Frame::audio(harness.meta(1), audio), &mut harness.out).expect_err("stereo");
    assert_eq!(error.class(), mentis_pipeline::ErrorClass::Config);
}

#[test]
fn spec_declares_blocking_transcript_stage() {
    let (recognizer, _) = Scripted::new("hello", false);
    let harness = Harness::new(recognizer);
    let spec = harness.stt.spec();
    assert_eq!(spec.execution, Execution::Blocking);
    assert_eq!(spec.input, PortFormat::Audio(AudioFormat::mono_f32(16_000)));
    assert_eq!(spec.output, PortFormat::Transcript);
}

// ---------------------------------------------------------------------------
// Missing models
// ---------------------------------------------------------------------------

#[cfg(feature = "whisper")]
#[test]
fn whisper_missing_model_names_file() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = WhisperConfig { model_dir: dir.path().to_owned(), ..WhisperConfig::tiny_en() };
    let error = WhisperRecognizer::new(config).expect_err("empty model folder");
    let SttError::ModelNotFound { path, .. } = &error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(path, &dir.path().join("model.bin"));
    assert!(error.to_string().contains("scripts/setup"), "{error}");
    assert_eq!(StageError::from(error).class(), mentis_pipeline::ErrorClass::Config);
}

#[cfg(feature = "whisper")]
#[test]
fn whisper_rejects_zero_threads() {
    let config = WhisperConfig { threads: 0, ..WhisperConfig::tiny_en() };
    let error = WhisperRecognizer::new(config).expect_err("zero threads");
    assert!(matches!(error, SttError::InvalidSetting { name: "threads", .. }), "{error:?}");
}

#[cfg(feature = "pocketsphinx")]
#[test]
fn pocketsphinx_missing_model_names_folder() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = PocketSphinxConfig::from_model_dir(dir.path());
    let error = PocketSphinxRecognizer::new(config).expect_err("empty model folder");
    let SttError::ModelNotFound { path, .. } = &error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(path, &dir.path().join("en-us"));
    assert!(error.to_string().contains("pocketsphinx-en-us"), "{error}");
}

#[test]
fn utterance_buffer_converts_and_caps() {
    let mut buffer = UtteranceBuffer::new(Duration::from_millis(1));
    buffer.accept(Pcm::I16(&[16_384, -32_768]));
    assert_eq!(buffer.samples(), &[0.5, -1.0]);
    // 1 ms at 16 kHz is 16 samples: the rest of a 20-sample block is dropped.
    buffer.accept(Pcm::F32(&[0.25; 20]));
    assert_eq!(buffer.samples().len(), 16);
    assert_eq!(buffer.dropped_samples(), 6);
    buffer.clear();
    assert!(buffer.samples().is_empty());
    assert_eq!(buffer.dropped_samples(), 0);
}
