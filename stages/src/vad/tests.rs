//! Tests of the [`Vad`] processor with a scripted detector.

use std::time::Duration;

use mentis_pipeline::frame::{FrameMeta, Payload};
use mentis_pipeline::{ErrorClass, SessionId};

use super::*;

/// 1 kHz, so that one sample is one millisecond.
const RATE: u32 = 1_000;
/// 10 ms frames.
const FRAME: usize = 10;
/// Sample value of "speech" in the test signal; silence is 0.
const LOUD: i16 = 1_000;

/// A detector that calls a frame speech when its mean magnitude is at least
/// half of [`LOUD`].
#[derive(Debug, Default)]
struct LevelDetector {
    rechunker: Option<Rechunker<i16>>,
}

impl LevelDetector {
    fn rechunker(&mut self) -> &mut Rechunker<i16> {
        self.rechunker.get_or_insert_with(|| Rechunker::new(FRAME))
    }
}

impl VoiceDetector for LevelDetector {
    fn name(&self) -> &'static str {
        "level"
    }

    fn sample_rate(&self) -> u32 {
        RATE
    }

    fn frame_samples(&self) -> usize {
        FRAME
    }

    fn execution(&self) -> Execution {
        Execution::Inline
    }

    fn default_segmenter(&self) -> SegmenterConfig {
        SegmenterConfig {
            threshold: 0.5,
            neg_threshold: 0.5,
            min_speech: Duration::from_millis(30),
            end_silence: Duration::from_millis(50),
            pre_roll: Duration::from_millis(20),
            max_segment: Duration::from_millis(1_000),
        }
    }

    fn push(&mut self, samples: Pcm<'_>, probabilities: &mut Vec<f32>) -> Result<(), VadError> {
        let Pcm::I16(samples) = samples else {
            return Err(VadError::NotAudio { kind: "float" });
        };
        self.rechunker().push(samples, |frame| {
            let level = frame.iter().map(|&s| i64::from(s).abs()).sum::<i64>() / frame.len() as i64;
            probabilities.push(if level >= i64::from(LOUD / 2) { 1.0 } else { 0.0 });
            Ok::<(), VadError>(())
        })
    }

    fn buffered(&self) -> usize {
        self.rechunker.as_ref().map_or(0, Rechunker::waiting)
    }

    fn reset(&mut self) {
        self.rechunker().clear();
    }
}

/// Builds a signal from a pattern of 10 ms frames: `#` speech, `.` silence.
fn signal(pattern: &str) -> Vec<i16> {
    pattern.chars().flat_map(|symbol| std::iter::repeat_n(if symbol == '#' { LOUD } else { 0 }, FRAME)).collect()
}

fn stage_name() -> StageName {
    match StageName::new("vad") {
        Ok(name) => name,
        Err(error) => panic!("{error}"),
    }
}

fn vad() -> Vad<LevelDetector> {
    vad_with(|_| {})
}

fn vad_with(change: impl FnOnce(&mut VadConfig)) -> Vad<LevelDetector> {
    let detector = LevelDetector::default();
    let mut config = VadConfig::for_detector(&detector);
    change(&mut config);
    match Vad::with_config(stage_name(), detector, config) {
        Ok(vad) => vad,
        Err(error) => panic!("{error}"),
    }
}

fn audio_frame(samples: &[i16], first_sample: u64) -> Frame {
    let meta = FrameMeta { timestamp: MediaTime::from_samples(first_sample, RATE), ..FrameMeta::new(SessionId(1)) };
    match AudioData::from_i16(RATE, 1, samples.to_vec()) {
        Ok(audio) => Frame::audio(meta, audio),
        Err(error) => panic!("{error}"),
    }
}

/// Feeds `samples` in blocks of `block` samples, ends the stream, and returns
/// every emitted frame.
fn run(vad: &mut Vad<LevelDetector>, samples: &[i16], block: usize) -> Vec<Frame> {
    let mut out = Emitter::new(SessionId(1));
    let mut frames = Vec::new();
    let mut first = 0_u64;
    for chunk in samples.chunks(block) {
        if let Err(error) = vad.process(audio_frame(chunk, first), &mut out) {
            panic!("process failed: {error}");
        }
        first += chunk.len() as u64;
        frames.extend(out.drain());
    }
    if let Err(error) = vad.finish(&mut out) {
        panic!("finish failed: {error}");
    }
    frames.extend(out.drain());
    frames
}

/// One emitted item, with audio runs of one turn merged; times in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Audio { turn: u64, start: u64, end: u64 },
    Event { control: Control, turn: u64, at: u64 },
}

fn millis(time: MediaTime) -> u64 {
    time.0 / 1_000_000
}

fn summarize(frames: &[Frame]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for frame in frames {
        let turn = frame.meta.turn.0;
        let at = millis(frame.meta.timestamp);
        match &frame.payload {
            Payload::Audio(audio) => {
                let end = at + audio.frames() as u64;
                if let Some(Item::Audio { turn: last_turn, end: last_end, .. }) = items.last_mut()
                    && *last_turn == turn
                    && *last_end == at
                {
                    *last_end = end;
                    continue;
                }
                items.push(Item::Audio { turn, start: at, end });
            }
            Payload::Control(control) => items.push(Item::Event { control: control.clone(), turn, at }),
            other => panic!("unexpected payload {other:?}"),
        }
    }
    items
}

fn audio(turn: u64, start: u64, end: u64) -> Item {
    Item::Audio { turn, start, end }
}

fn event(control: Control, turn: u64, at: u64) -> Item {
    Item::Event { control, turn, at }
}

fn events_of(items: &[Item]) -> Vec<Item> {
    items.iter().filter(|item| matches!(item, Item::Event { .. })).cloned().collect()
}

/// The items without interrupts, whose place among the data frames depends on
/// how much turn-less audio was released before them.
fn without_interrupts(items: &[Item]) -> Vec<Item> {
    items.iter().filter(|item| !matches!(item, Item::Event { control: Control::Interrupt, .. })).cloned().collect()
}

fn samples_of(frames: &[Frame]) -> Vec<i16> {
    frames.iter().filter_map(Frame::as_audio).flat_map(AudioData::to_i16).collect()
}

#[test]
fn silence_passes_through_without_turn() {
    let input = signal(&".".repeat(30));
    let frames = run(&mut vad(), &input, 64);
    assert_eq!(summarize(&frames), vec![audio(0, 0, 300)]);
    assert_eq!(samples_of(&frames), input);
}

#[test]
fn segment_events_in_order_with_audio() {
    // Speech 100..200 ms, then silence to 400 ms.
    let input = signal(&format!("{}{}{}", ".".repeat(10), "#".repeat(10), ".".repeat(20)));
    let frames = run(&mut vad(), &input, 32);
    assert_eq!(
        summarize(&frames),
        vec![
            audio(0, 0, 80),
            event(Control::SpeechStarted, 1, 80),
            audio(1, 80, 200),
            event(Control::SpeechStopped, 1, 200),
            event(Control::EndOfTurn, 1, 200),
            audio(0, 200, 400),
        ]
    );
    assert_eq!(samples_of(&frames), input);
}

#[test]
fn second_turn_interrupts_first() {
    let input = signal(&format!("{}{}{}{}", "#".repeat(5), ".".repeat(10), "#".repeat(5), ".".repeat(10)));
    let frames = run(&mut vad(), &input, 160);
    assert_eq!(
        summarize(&frames),
        vec![
            event(Control::SpeechStarted, 1, 0),
            audio(1, 0, 50),
            event(Control::SpeechStopped, 1, 50),
            event(Control::EndOfTurn, 1, 50),
            audio(0, 50, 130),
            event(Control::Interrupt, 1, 130),
            event(Control::SpeechStarted, 2, 130),
            audio(2, 130, 200),
            event(Control::SpeechStopped, 2, 200),
            event(Control::EndOfTurn, 2, 200),
            audio(0, 200, 300),
        ]
    );
}

#[test]
fn end_of_turn_records_latency_mark() {
    let mut vad = vad();
    let mut out = Emitter::new(SessionId(1));
    let input = signal(&format!("{}{}", "#".repeat(5), ".".repeat(4)));
    assert!(vad.process(audio_frame(&input, 0), &mut out).is_ok());
    assert!(out.turns().get(TurnId(1), TurnMark::EndOfSpeech).is_none());

    // The fifth silent frame ends the turn.
    assert!(vad.process(audio_frame(&signal("."), input.len() as u64), &mut out).is_ok());
    assert!(out.turns().get(TurnId(1), TurnMark::EndOfSpeech).is_some());
}

#[test]
fn interrupt_can_be_turned_off() {
    let input = signal(&format!("{}{}{}{}", "#".repeat(5), ".".repeat(10), "#".repeat(5), ".".repeat(10)));
    let frames = run(&mut vad_with(|config| config.interrupt_on_speech = false), &input, 160);
    let interrupts = frames.iter().filter(|frame| frame.as_control() == Some(&Control::Interrupt)).count();
    assert_eq!(interrupts, 0);
    let starts = frames.iter().filter(|frame| frame.as_control() == Some(&Control::SpeechStarted)).count();
    assert_eq!(starts, 2);
}

#[test]
fn split_segment_continues_without_interrupt() {
    let input = signal(&format!("{}{}", "#".repeat(25), ".".repeat(10)));
    let mut vad = vad_with(|config| config.segmenter.max_segment = Duration::from_millis(100));
    let frames = run(&mut vad, &input, 50);
    assert_eq!(
        summarize(&frames),
        vec![
            event(Control::SpeechStarted, 1, 0),
            audio(1, 0, 100),
            event(Control::SpeechStopped, 1, 100),
            event(Control::SpeechStarted, 2, 100),
            audio(2, 100, 200),
            event(Control::SpeechStopped, 2, 200),
            event(Control::SpeechStarted, 3, 200),
            audio(3, 200, 250),
            event(Control::SpeechStopped, 3, 250),
            event(Control::EndOfTurn, 3, 250),
            audio(0, 250, 350),
        ]
    );
}

#[test]
fn end_of_stream_closes_segment() {
    let input = signal(&format!("{}{}", ".".repeat(5), "#".repeat(8)));
    let mut with_tail = input.clone();
    with_tail.extend_from_slice(&[LOUD; 4]);
    let frames = run(&mut vad(), &with_tail, 7);
    assert_eq!(
        summarize(&frames),
        vec![
            audio(0, 0, 30),
            event(Control::SpeechStarted, 1, 30),
            audio(1, 30, 130),
            event(Control::SpeechStopped, 1, 130),
            event(Control::EndOfTurn, 1, 130),
            // The last 4 samples never filled a detector frame.
            audio(0, 130, 134),
        ]
    );
    assert_eq!(samples_of(&frames), with_tail);
}

#[test]
fn same_output_for_every_block_size() {
    let pattern = "....####..#####.......###.#.######............#####...";
    let input = signal(pattern);
    let reference = summarize(&run(&mut vad(), &input, input.len()));
    assert!(reference.len() > 5, "{reference:?}");
    for block in [1, 7, 10, 16, 33, 160, 4096] {
        let frames = run(&mut vad(), &input, block);
        let items = summarize(&frames);
        assert_eq!(events_of(&items), events_of(&reference), "block size {block}");
        assert_eq!(without_interrupts(&items), without_interrupts(&reference), "block size {block}");
        assert_eq!(samples_of(&frames), input, "block size {block}");
    }
}

#[test]
fn empty_block_emits_nothing() {
    let mut vad = vad();
    let mut out = Emitter::new(SessionId(1));
    let result = vad.process(audio_frame(&[], 0), &mut out);
    assert!(result.is_ok(), "{result:?}");
    assert!(out.frames().is_empty());
    let result = vad.finish(&mut out);
    assert!(result.is_ok(), "{result:?}");
    assert!(out.frames().is_empty());
}

#[test]
fn reset_repeats_output() {
    let input = signal("..#####........####.........");
    let mut vad = vad();
    let first = summarize(&run(&mut vad, &input, 25));
    vad.reset();
    let second = summarize(&run(&mut vad, &input, 25));
    assert_eq!(first, second);
}

#[test]
fn reset_discards_held_audio_and_turns() {
    let mut vad = vad();
    let mut out = Emitter::new(SessionId(1));
    assert!(vad.process(audio_frame(&signal("#####"), 0), &mut out).is_ok());
    vad.reset();
    let mut after = Emitter::new(SessionId(1));
    assert!(vad.finish(&mut after).is_ok());
    assert!(after.frames().is_empty(), "{:?}", after.frames());
    let frames = run(&mut vad, &signal("#####......"), 55);
    let first_turn = frames.iter().find(|frame| frame.as_control() == Some(&Control::SpeechStarted));
    assert_eq!(first_turn.map(|frame| frame.meta.turn), Some(TurnId(1)));
}

#[test]
fn input_timestamps_kept_across_gap() {
    // Two blocks of speech-free audio with a 1 s gap between them, then speech.
    let mut vad = vad();
    let mut out = Emitter::new(SessionId(1));
    let quiet = signal(".....");
    let loud = signal("#####.........");
    assert!(vad.process(audio_frame(&quiet, 0), &mut out).is_ok());
    assert!(vad.process(audio_frame(&loud, 1_050), &mut out).is_ok());
    assert!(vad.finish(&mut out).is_ok());
    let frames: Vec<Frame> = out.drain().collect();
    assert_eq!(
        summarize(&frames),
        vec![
            audio(0, 0, 30),
            // Pre-roll reaches 20 ms back, across the gap: 30..50 ms.
            event(Control::SpeechStarted, 1, 30),
            audio(1, 30, 50),
            audio(1, 1_050, 1_100),
            event(Control::SpeechStopped, 1, 1_100),
            event(Control::EndOfTurn, 1, 1_100),
            audio(0, 1_100, 1_190),
        ]
    );
}

#[test]
fn rejects_wrong_format() {
    let mut vad = vad();
    let mut out = Emitter::new(SessionId(1));
    let stereo = match AudioData::from_i16(RATE, 2, vec![0_i16; 20]) {
        Ok(audio) => Frame::audio(FrameMeta::new(SessionId(1)), audio),
        Err(error) => panic!("{error}"),
    };
    let Err(error) = vad.process(stereo, &mut out) else { panic!("stereo audio accepted") };
    assert_eq!(error.class(), ErrorClass::Config);
    assert!(error.message().contains("2 ch"), "{}", error.message());

    let wrong_rate = match AudioData::from_i16(16_000, 1, vec![0_i16; 20]) {
        Ok(audio) => Frame::audio(FrameMeta::new(SessionId(1)), audio),
        Err(error) => panic!("{error}"),
    };
    let Err(error) = vad.process(wrong_rate, &mut out) else { panic!("16 kHz audio accepted") };
    assert!(error.message().contains("16000 Hz"), "{}", error.message());
}

#[test]
fn rejects_non_audio_frame() {
    let mut vad = vad();
    let mut out = Emitter::new(SessionId(1));
    let text = Frame::new(
        FrameMeta::new(SessionId(1)),
        Payload::Text(mentis_pipeline::TextDelta { text: "hi".into(), last: true }),
    );
    let Err(error) = vad.process(text, &mut out) else { panic!("text accepted") };
    assert!(error.message().contains("text"), "{}", error.message());
}

#[test]
fn spec_declares_format_and_execution() {
    let vad = vad_with(|config| config.sample_format = SampleFormat::F32);
    let spec = vad.spec();
    let expected = PortFormat::Audio(AudioFormat::mono_f32(RATE));
    assert_eq!(spec.input, expected);
    assert_eq!(spec.output, expected);
    assert_eq!(spec.execution, Execution::Inline);
    assert_eq!(spec.name.as_str(), "vad");
}

#[test]
fn rechunker_handles_partial_frames() {
    let mut rechunker = Rechunker::new(4);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut collect = |input: &[u8], frames: &mut Vec<Vec<u8>>| {
        let result = rechunker.push(input, |frame| {
            frames.push(frame.to_vec());
            Ok::<(), ()>(())
        });
        assert!(result.is_ok());
    };
    collect(&[1, 2, 3], &mut frames);
    collect(&[], &mut frames);
    collect(&[4, 5, 6, 7, 8, 9, 10], &mut frames);
    collect(&[11, 12], &mut frames);
    assert_eq!(frames, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10, 11, 12]]);
}

#[test]
fn rechunker_stops_at_first_error() {
    let mut rechunker = Rechunker::new(2);
    let mut seen = 0;
    let result = rechunker.push(&[1_u8, 2, 3, 4, 5, 6], |frame| {
        seen += 1;
        if frame[0] == 3 { Err(frame[0]) } else { Ok(()) }
    });
    assert_eq!(result, Err(3));
    assert_eq!(seen, 2);
}
