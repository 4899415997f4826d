//! Conformance and accuracy suite for the voice activity detection stages.
//!
//! One suite runs against every detector (WebRTC VAD and Silero VAD) through
//! the [`Vad`] processor. The same audio cut into blocks of 1, 7, 160, 320,
//! 333 and 4096 samples gives the same events and turn ids. Empty blocks give
//! nothing, a reset between sessions gives identical output, and audio leaves
//! sample for sample. The accuracy tests run both detectors over the five
//! LibriVox recordings of Debian's `pocketsphinx-testdata`, which must give
//! one segment each, close to the measured word boundaries. Silence and
//! seeded white noise must give no segment.
//!
//! ```text
//! cargo test -p mentis-stages --test conformance_vad
//! ```
//!
//! Needs `pocketsphinx-testdata` (`apt-get install pocketsphinx-testdata`)
//! and, for Silero, the files `scripts/setup --audio` downloads. Tests fail
//! rather than skip when either is missing. The Silero tests are compiled
//! only with the `silero` feature, which is on by default.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::harness::{Harness, assert_contiguous, audio_blocks, stage_name, with_empty_blocks};
use mentis_pipeline::frame::Payload;
use mentis_pipeline::{Control, Frame, MediaTime, SampleFormat, TurnId};
#[cfg(feature = "silero")]
use mentis_stages::vad::{SileroConfig, SileroVad};
use mentis_stages::vad::{Pcm, SegmentEvent, Segmenter, Vad, VadConfig, VoiceDetector, WebRtcConfig, WebRtcVad};
use mentis_stages::wav::PcmReader;

// ---------------------------------------------------------------------------
// Test material
// ---------------------------------------------------------------------------

const LIBRIVOX_DIR: &str = "/usr/share/pocketsphinx/test/data/librivox";

/// Sample rate of the LibriVox recordings, in Hz.
const RATE: u32 = 16_000;

/// A recording and where its speech lies, in seconds from its start.
#[derive(Debug, Clone, Copy)]
struct Recording {
    file: &'static str,
    first_word_start: f64,
    last_word_end: f64,
}

/// The start of the first word and the end of the last word of each clip,
/// measured once by forced alignment with PocketSphinx (Debian pocketsphinx
/// 0.8+5prealpha+1, en-us model, 10 ms resolution):
/// `pocketsphinx_continuous -infile CLIP.wav -jsgf CLIP.gram -time yes`,
/// where CLIP.gram is a JSGF grammar whose only sentence is the clip's line
/// of `librivox/transcription`. An RMS envelope in 10 ms windows agrees: the
/// level first rises clearly above the noise floor (about -45 dBFS) 30 to
/// 70 ms after each start.
const RECORDINGS: [Recording; 5] = [
    Recording { file: "sense_and_sensibility_01_austen_64kb-0870.wav", first_word_start: 0.15, last_word_end: 7.04 },
    Recording { file: "sense_and_sensibility_01_austen_64kb-0880.wav", first_word_start: 0.21, last_word_end: 2.79 },
    Recording { file: "sense_and_sensibility_01_austen_64kb-0890.wav", first_word_start: 0.25, last_word_end: 5.08 },
    Recording { file: "sense_and_sensibility_01_austen_64kb-0920.wav", first_word_start: 0.22, last_word_end: 5.83 },
    Recording { file: "sense_and_sensibility_01_austen_64kb-0930.wav", first_word_start: 0.20, last_word_end: 2.85 },
];

/// How far before the first word a segment's onset may lie.
const MAX_EARLY_ONSET: f64 = 0.150;
/// How far after the last word a segment may end.
const MAX_LATE_END: f64 = 0.300;
/// How far before the last word a segment may end: the aligner's last word
/// ends include trailing low-level sound, such as the nasal of "them".
const MAX_EARLY_END: f64 = 0.200;

/// Reads a LibriVox clip as 16 kHz mono 16-bit samples.
fn read_recording(file: &str) -> Vec<i16> {
    let path = PathBuf::from(LIBRIVOX_DIR).join(file);
    let source = match std::fs::File::open(&path) {
        Ok(source) => source,
        Err(error) => panic!(
            "cannot open {}: {error}; install the Debian package pocketsphinx-testdata",
            path.display()
        ),
    };
    let mut reader = match PcmReader::wav(std::io::BufReader::new(source), path.display().to_string()) {
        Ok(reader) => reader,
        Err(error) => panic!("{error}"),
    };
    let spec = reader.spec();
    assert_eq!((spec.sample_rate, spec.channels), (RATE, 1), "{} is not 16 kHz mono", path.display());

    let mut samples = Vec::new();
    loop {
        match reader.read_i16(8_192, &mut samples) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => panic!("{error}"),
        }
    }
    samples
}

/// Returns uniform white noise whose RMS level is `dbfs`. A seeded
/// xorshift64* generator makes every run produce the same samples.
fn white_noise(samples: usize, dbfs: f64, seed: u64) -> Vec<i16> {
    // A uniform distribution on [-a, a] has an RMS of a / sqrt(3).
    let amplitude = 32_768.0 * 10_f64.powf(dbfs / 20.0) * 3_f64.sqrt();
    let mut state = seed.max(1);
    (0..samples)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            let uniform = bits as f64 / (1_u64 << 53) as f64;
            ((uniform * 2.0 - 1.0) * amplitude).round() as i16
        })
        .collect()
}

fn silence(seconds: f64) -> Vec<i16> {
    vec![0; (seconds * f64::from(RATE)) as usize]
}

/// Two utterances with 1.5 s of silence between them and 1 s after.
fn two_utterances() -> Vec<i16> {
    let mut samples = read_recording(RECORDINGS[1].file);
    samples.extend(silence(1.5));
    samples.extend(read_recording(RECORDINGS[4].file));
    samples.extend(silence(1.0));
    samples
}

/// Halves the sample rate with a [1, 2, 1] / 4 low-pass before dropping every
/// other sample: crude, but it keeps the speech band below 4 kHz for a VAD.
fn decimate_by_two(samples: &[i16]) -> Vec<i16> {
    (0..samples.len() / 2)
        .map(|i| {
            let center = i32::from(samples[2 * i]);
            let before = if i == 0 { center } else { i32::from(samples[2 * i - 1]) };
            let after = samples.get(2 * i + 1).map_or(center, |&s| i32::from(s));
            ((before + 2 * center + after) / 4) as i16
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Detectors
// ---------------------------------------------------------------------------

fn webrtc_detector(rate: u32) -> WebRtcVad {
    match WebRtcVad::new(WebRtcConfig::new(rate)) {
        Ok(detector) => detector,
        Err(error) => panic!("{error}"),
    }
}

/// Loads Silero; fails the test with the setup hint when the runtime or the
/// model is missing.
#[cfg(feature = "silero")]
fn silero_detector(rate: u32) -> SileroVad {
    match SileroVad::new(SileroConfig::new(rate)) {
        Ok(detector) => detector,
        Err(error) => panic!("Silero VAD is not available: {error}\nRun `scripts/setup --audio` first."),
    }
}

fn webrtc_vad(rate: u32, sample_format: SampleFormat) -> Vad<WebRtcVad> {
    vad_with_format(webrtc_detector(rate), sample_format)
}

#[cfg(feature = "silero")]
fn silero_vad(rate: u32, sample_format: SampleFormat) -> Vad<SileroVad> {
    vad_with_format(silero_detector(rate), sample_format)
}

fn vad_with_format<D: VoiceDetector>(detector: D, sample_format: SampleFormat) -> Vad<D> {
    let mut config = VadConfig::for_detector(&detector);
    config.sample_format = sample_format;
    match Vad::with_config(stage_name("vad"), detector, config) {
        Ok(vad) => vad,
        Err(error) => panic!("{error}"),
    }
}

// ---------------------------------------------------------------------------
// Running a Vad processor
// ---------------------------------------------------------------------------

/// Converts 16-bit samples to floats in [-1, 1); converting back is exact.
fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&sample| f32::from(sample) / 32_768.0).collect()
}

/// Cuts `samples` into blocks of `block` samples in the stage's format, with
/// an empty block before each one when `with_empty` is set.
fn blocks<D: VoiceDetector>(vad: &Vad<D>, samples: &[i16], block: usize, with_empty: bool) -> Vec<Frame> {
    let frames = audio_blocks(vad.format(), &to_f32(samples), block, MediaTime::ZERO, TurnId::NONE);
    if with_empty { with_empty_blocks(frames) } else { frames }
}

/// Runs one session: every block, then end of stream.
fn run_blocks<D: VoiceDetector>(vad: Vad<D>, samples: &[i16], block: usize, with_empty: bool) -> Vec<Frame> {
    let frames = blocks(&vad, samples, block, with_empty);
    Harness::new(vad).run(frames)
}

/// One emitted item, with consecutive audio frames of one turn merged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Audio { turn: u64, start: MediaTime, samples: usize },
    Event { control: Control, turn: u64, at: MediaTime },
}

fn summarize(frames: &[Frame]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    let mut next_start = None;
    for frame in frames {
        let turn = frame.meta.turn.0;
        match &frame.payload {
            Payload::Audio(audio) => {
                if let Some(Item::Audio { turn: last_turn, samples, .. }) = items.last_mut()
                    && *last_turn == turn
                    && next_start == Some(frame.meta.timestamp)
                {
                    *samples += audio.frames();
                    next_start = Some(frame.meta.timestamp.add(audio.duration()));
                    continue;
                }
                next_start = Some(frame.meta.timestamp.add(audio.duration()));
                items.push(Item::Audio { turn, start: frame.meta.timestamp, samples: audio.frames() });
            }
            Payload::Control(control) => {
                items.push(Item::Event { control: control.clone(), turn, at: frame.meta.timestamp });
            }
            other => panic!("unexpected payload {other:?}"),
        }
    }
    items
}

fn events(items: &[Item]) -> Vec<(Control, u64, MediaTime)> {
    items
        .iter()
        .filter_map(|item| match item {
            Item::Event { control, turn, at } => Some((control.clone(), *turn, *at)),
            Item::Audio { .. } => None,
        })
        .collect()
}

/// Returns the items without interrupts. An interrupt travels on the priority
/// lane, so its place among the data frames carries no meaning, and it
/// depends on how much turn-less audio the VAD had already released.
fn in_stream_order(items: &[Item]) -> Vec<Item> {
    items.iter().filter(|item| !matches!(item, Item::Event { control: Control::Interrupt, .. })).cloned().collect()
}

fn samples_of(frames: &[Frame]) -> Vec<i16> {
    frames.iter().filter_map(Frame::as_audio).flat_map(|audio| audio.to_i16()).collect()
}

fn seconds(time: MediaTime) -> f64 {
    time.as_duration().as_secs_f64()
}

// ---------------------------------------------------------------------------
// Segments straight from a detector and the segmenter
// ---------------------------------------------------------------------------

/// A segment in seconds: start with pre-roll, onset, end.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    start: f64,
    onset: f64,
    end: f64,
}

/// Runs a detector and its default segmenter over `samples`, ending the stream.
fn segments<D: VoiceDetector>(detector: &mut D, samples: &[i16]) -> Vec<Segment> {
    let mut probabilities = Vec::new();
    if let Err(error) = detector.push(Pcm::I16(samples), &mut probabilities) {
        panic!("{} detector failed: {error}", detector.name());
    }
    let mut segmenter = match Segmenter::new(detector.default_segmenter(), detector.sample_rate(), detector.frame_samples()) {
        Ok(segmenter) => segmenter,
        Err(error) => panic!("{error}"),
    };
    let mut events = Vec::new();
    for probability in probabilities {
        segmenter.push(probability, &mut events);
    }
    segmenter.finish(&mut events);

    let rate = f64::from(detector.sample_rate());
    let mut found = Vec::new();
    let mut open = None;
    for event in events {
        match event {
            SegmentEvent::Started { start, onset, .. } => open = Some((start, onset)),
            SegmentEvent::Stopped { end, .. } => {
                let Some((start, onset)) = open.take() else { panic!("a segment stopped that never started") };
                found.push(Segment { start: start as f64 / rate, onset: onset as f64 / rate, end: end as f64 / rate });
            }
        }
    }
    found
}

fn check_recording_segment(detector_name: &str, recording: &Recording, found: &[Segment]) {
    println!("{detector_name} {}: {found:?} (words {:.2}..{:.2} s)", recording.file, recording.first_word_start, recording.last_word_end);
    assert_eq!(found.len(), 1, "{detector_name} on {}: expected one segment, got {found:?}", recording.file);
    let segment = found[0];
    assert!(
        segment.onset >= recording.first_word_start - MAX_EARLY_ONSET,
        "{detector_name} on {}: onset {:.3} s is more than {MAX_EARLY_ONSET} s before the first word at {:.3} s",
        recording.file,
        segment.onset,
        recording.first_word_start
    );
    assert!(
        segment.start <= recording.first_word_start,
        "{detector_name} on {}: segment start {:.3} s (with pre-roll) misses the first word at {:.3} s",
        recording.file,
        segment.start,
        recording.first_word_start
    );
    assert!(
        segment.end <= recording.last_word_end + MAX_LATE_END,
        "{detector_name} on {}: end {:.3} s is more than {MAX_LATE_END} s after the last word at {:.3} s",
        recording.file,
        segment.end,
        recording.last_word_end
    );
    assert!(
        segment.end >= recording.last_word_end - MAX_EARLY_END,
        "{detector_name} on {}: end {:.3} s is more than {MAX_EARLY_END} s before the last word at {:.3} s",
        recording.file,
        segment.end,
        recording.last_word_end
    );
}

// ---------------------------------------------------------------------------
// The suite, once per detector
// ---------------------------------------------------------------------------

/// Block sizes in samples: single samples, a prime, 10 and 20 ms at 16 kHz,
/// a size that never lines up with a frame, and a large block.
const BLOCK_SIZES: [usize; 6] = [1, 7, 160, 320, 333, 4096];

macro_rules! vad_conformance {
    ($module:ident, $make_vad:path, $make_detector:path) => {
        mod $module {
            use super::*;

            #[test]
            fn block_sizes_give_same_output() {
                let input = two_utterances();
                let reference = summarize(&run_blocks($make_vad(RATE, SampleFormat::I16), &input, input.len(), false));
                let starts = events(&reference).iter().filter(|(control, _, _)| *control == Control::SpeechStarted).count();
                assert_eq!(starts, 2, "expected two utterances: {:?}", events(&reference));

                for block in BLOCK_SIZES {
                    let frames = run_blocks($make_vad(RATE, SampleFormat::I16), &input, block, false);
                    assert_eq!(events(&summarize(&frames)), events(&reference), "events, block size {block}");
                    assert_eq!(
                        in_stream_order(&summarize(&frames)),
                        in_stream_order(&reference),
                        "audio and events, block size {block}"
                    );
                }
            }

            #[test]
            fn audio_passes_through_unchanged() {
                let input = two_utterances();
                let frames = run_blocks($make_vad(RATE, SampleFormat::I16), &input, 333, false);
                assert_eq!(samples_of(&frames), input);

                // Each audio frame is timestamped at its first sample's place in the input.
                assert_contiguous(stringify!($module), &frames, MediaTime::ZERO);
            }

            #[test]
            fn events_follow_documented_order() {
                let input = two_utterances();
                let items = summarize(&run_blocks($make_vad(RATE, SampleFormat::I16), &input, 320, false));
                let found: Vec<(Control, u64)> =
                    events(&items).into_iter().map(|(control, turn, _)| (control, turn)).collect();
                assert_eq!(
                    found,
                    vec![
                        (Control::SpeechStarted, 1),
                        (Control::SpeechStopped, 1),
                        (Control::EndOfTurn, 1),
                        (Control::Interrupt, 1),
                        (Control::SpeechStarted, 2),
                        (Control::SpeechStopped, 2),
                        (Control::EndOfTurn, 2),
                    ]
                );

                // Each event sits where its audio starts or ends.
                for (index, item) in items.iter().enumerate() {
                    let Item::Event { control, turn, at } = item else { continue };
                    match control {
                        Control::SpeechStarted => {
                            let Some(Item::Audio { turn: audio_turn, start, .. }) = items.get(index + 1) else {
                                panic!("no audio after {item:?}");
                            };
                            assert_eq!((audio_turn, start), (turn, at), "{item:?}");
                        }
                        Control::SpeechStopped => {
                            let Some(Item::Audio { turn: audio_turn, start, samples }) = items.get(index - 1) else {
                                panic!("no audio before {item:?}");
                            };
                            assert_eq!(audio_turn, turn, "{item:?}");
                            let end = start.add(Duration::from_nanos(*samples as u64 * 1_000_000_000 / u64::from(RATE)));
                            assert_eq!(end, *at, "{item:?}");
                        }
                        _ => {}
                    }
                }
            }

            #[test]
            fn empty_blocks_yield_nothing() {
                let vad = $make_vad(RATE, SampleFormat::I16);
                let empty = audio_blocks(vad.format(), &[], 1, MediaTime::ZERO, TurnId::NONE);
                let mut harness = Harness::new(vad);
                for frame in with_empty_blocks(empty) {
                    assert_eq!(harness.push(frame), vec![]);
                }
                assert_eq!(harness.finish(), vec![]);

                // Empty blocks between real ones change nothing.
                let input = two_utterances();
                let plain = summarize(&run_blocks($make_vad(RATE, SampleFormat::I16), &input, 320, false));
                let with_empty = summarize(&run_blocks($make_vad(RATE, SampleFormat::I16), &input, 320, true));
                assert_eq!(with_empty, plain);
            }

            #[test]
            fn reset_between_sessions_repeats_output() {
                let input = two_utterances();
                let vad = $make_vad(RATE, SampleFormat::I16);
                let frames = blocks(&vad, &input, 333, false);
                let mut harness = Harness::new(vad);
                let first = harness.run(frames.clone());
                harness.processor.reset();
                let second = harness.run(frames);
                assert_eq!(summarize(&first), summarize(&second));
                assert!(!events(&summarize(&first)).is_empty());
            }

            #[test]
            fn reset_mid_utterance_forgets_it() {
                let input = two_utterances();
                let vad = $make_vad(RATE, SampleFormat::I16);
                let frames = blocks(&vad, &input, 320, false);
                let mut harness = Harness::new(vad);
                harness.push_all(frames[..frames.len() / 4].to_vec());
                harness.processor.reset();

                let after_reset = harness.run(frames);
                let fresh = run_blocks($make_vad(RATE, SampleFormat::I16), &input, 320, false);
                assert_eq!(summarize(&after_reset), summarize(&fresh));
            }

            #[test]
            fn float_input_matches_integer_input() {
                let input = two_utterances();
                let integer = summarize(&run_blocks($make_vad(RATE, SampleFormat::I16), &input, 320, false));
                let float = summarize(&run_blocks($make_vad(RATE, SampleFormat::F32), &input, 320, false));
                assert_eq!(events(&float), events(&integer));
            }

            #[test]
            fn silence_gives_no_segment() {
                let input = silence(5.0);
                let frames = run_blocks($make_vad(RATE, SampleFormat::I16), &input, 320, false);
                assert_eq!(events(&summarize(&frames)), vec![]);
                assert_eq!(samples_of(&frames), input);
            }

            /// White noise at -40 dBFS.
            #[test]
            fn quiet_white_noise_gives_no_segment() {
                for seed in [1, 2, 3, 42, 2024, 65_537] {
                    let input = white_noise(5 * RATE as usize, -40.0, seed);
                    let frames = run_blocks($make_vad(RATE, SampleFormat::I16), &input, 320, false);
                    assert_eq!(events(&summarize(&frames)), vec![], "seed {seed}");
                }
            }

            #[test]
            fn each_recording_gives_one_segment_near_the_words() {
                for recording in &RECORDINGS {
                    let mut detector = $make_detector(RATE);
                    let found = segments(&mut detector, &read_recording(recording.file));
                    check_recording_segment(stringify!($module), recording, &found);
                }
            }

            #[test]
            fn stage_events_match_segments_on_recordings() {
                for recording in &RECORDINGS {
                    let samples = read_recording(recording.file);
                    let found = segments(&mut $make_detector(RATE), &samples);
                    let [segment] = found[..] else { panic!("expected one segment in {}: {found:?}", recording.file) };

                    // With silence after the speech the turn ends by silence,
                    // not by the end of the stream; the times stay the same.
                    let mut padded = samples.clone();
                    padded.extend(silence(1.0));
                    let items = summarize(&run_blocks($make_vad(RATE, SampleFormat::I16), &padded, 320, false));
                    let found = events(&items);
                    let kinds: Vec<&Control> = found.iter().map(|(control, _, _)| control).collect();
                    assert_eq!(
                        kinds,
                        vec![&Control::SpeechStarted, &Control::SpeechStopped, &Control::EndOfTurn],
                        "{}",
                        recording.file
                    );
                    let tolerance = 1e-6;
                    assert!((seconds(found[0].2) - segment.start).abs() < tolerance, "{}: {found:?} vs {segment:?}", recording.file);
                    assert!((seconds(found[1].2) - segment.end).abs() < tolerance, "{}: {found:?} vs {segment:?}", recording.file);
                }
            }

            #[test]
            fn eight_khz_recording_gives_one_segment() {
                let recording = &RECORDINGS[2];
                let samples = decimate_by_two(&read_recording(recording.file));
                let found = segments(&mut $make_detector(8_000), &samples);
                check_recording_segment(concat!(stringify!($module), " at 8 kHz"), recording, &found);

                let frames = run_blocks($make_vad(8_000, SampleFormat::I16), &samples, 7, false);
                assert_eq!(samples_of(&frames), samples);
                let starts = frames.iter().filter(|frame| frame.as_control() == Some(&Control::SpeechStarted)).count();
                assert_eq!(starts, 1);
            }
        }
    };
}

vad_conformance!(webrtc, webrtc_vad, webrtc_detector);
#[cfg(feature = "silero")]
vad_conformance!(silero, silero_vad, silero_detector);

// ---------------------------------------------------------------------------
// Detector-specific checks
// ---------------------------------------------------------------------------

#[cfg(feature = "silero")]
#[test]
fn silero_missing_model_names_path_and_setup() {
    let config = SileroConfig { sample_rate: RATE, model_path: PathBuf::from("/nonexistent/silero_vad.onnx") };
    let Err(error) = SileroVad::new(config) else { panic!("a missing model was accepted") };
    let message = error.to_string();
    assert!(message.contains("/nonexistent/silero_vad.onnx"), "{message}");
    assert!(message.contains("scripts/setup --audio"), "{message}");
}

#[cfg(feature = "silero")]
#[test]
fn silero_rejects_unsupported_rate() {
    let Err(error) = SileroVad::new(SileroConfig::new(48_000)) else { panic!("48 kHz accepted") };
    let message = error.to_string();
    assert!(message.contains("48000"), "{message}");
    assert!(message.contains("16000"), "{message}");
}

#[cfg(feature = "silero")]
#[test]
fn silero_stage_runs_on_blocking_thread() {
    use mentis_pipeline::stage::Processor;

    let vad = silero_vad(RATE, SampleFormat::I16);
    assert_eq!(vad.spec().execution, mentis_pipeline::Execution::Blocking);
    let vad = webrtc_vad(RATE, SampleFormat::I16);
    assert_eq!(vad.spec().execution, mentis_pipeline::Execution::Inline);
}

/// Runs the Silero stage inside a real pipeline, where it runs on a blocking
/// thread, and checks that it emits what the direct calls emit.
#[cfg(feature = "silero")]
#[test]
fn silero_in_pipeline_matches_direct_run() {
    use mentis_pipeline::basic::{ChannelSink, ChannelSource};
    use mentis_pipeline::{
        AudioFormat, EdgeConfig, GraphBuilder, PortFormat, PrivacyPolicy, PrivacyTier, SessionId, processor,
    };

    let input = two_utterances();
    let direct = summarize(&run_blocks(silero_vad(RATE, SampleFormat::I16), &input, 320, false));
    let input_frames = blocks(&silero_vad(RATE, SampleFormat::I16), &input, 320, false);

    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => panic!("{error}"),
    };
    let frames = runtime.block_on(async {
        let format = PortFormat::Audio(AudioFormat::mono_i16(RATE));
        let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
        let (sender, source) = ChannelSource::new(stage_name("input"), format, EdgeConfig::lossless(16));
        let (sink, mut receiver) = ChannelSink::new(stage_name("output"), format, EdgeConfig::lossless(1_024));
        let nodes = graph.chain(
            vec![Box::new(source), processor(silero_vad(RATE, SampleFormat::I16)), Box::new(sink)],
            EdgeConfig::lossless(16),
        );
        assert_eq!(nodes.len(), 3);
        let pipeline = match graph.build() {
            Ok(pipeline) => pipeline,
            Err(error) => panic!("{error}"),
        };
        let session = pipeline.start(SessionId(1));

        let feeder = tokio::spawn(async move {
            for frame in input_frames {
                if sender.send(frame).await.is_err() {
                    panic!("the pipeline stopped early");
                }
            }
        });

        let mut frames = Vec::new();
        while let Some(frame) = receiver.recv().await {
            if frame.as_control() == Some(&Control::EndOfStream) {
                break;
            }
            frames.push(frame);
        }
        if let Err(error) = feeder.await {
            panic!("{error}");
        }
        if let Err(error) = session.wait().await {
            panic!("the session failed: {error}");
        }
        frames
    });

    // The events and the audio sent after the interrupt are compared. Audio
    // sent before it may be discarded by the edge if the sink has not taken
    // it yet, which depends on timing.
    assert_eq!(events(&summarize(&frames)), events(&direct));
    let second_turn_audio = |items: &[Item]| -> Vec<Item> {
        items.iter().filter(|item| matches!(item, Item::Audio { turn: 2, .. })).cloned().collect()
    };
    assert_eq!(second_turn_audio(&summarize(&frames)), second_turn_audio(&direct));
    assert_eq!(second_turn_audio(&direct).len(), 1);
}
