//! Word error rate of both speech-to-text stages on real human speech.
//!
//! Each of the five LibriVox recordings of Debian's `pocketsphinx-testdata`
//! (3 to 7 s of read speech, 16 kHz mono) goes whole through the stage as one
//! segment. It is framed as the voice activity detector frames it:
//! `SpeechStarted`, the audio in 20 ms frames, `SpeechStopped`, `EndOfTurn`.
//! The WER over the five recordings together must stay under a bound per
//! engine. Whisper must also drop silence and noise segments instead of
//! transcribing them, and must give one transcript per segment when the
//! WebRTC voice activity detector cuts the segments.
//!
//! ```text
//! cargo test -p mentis-stages --test stt_accuracy -- --nocapture
//! ```
//!
//! `--nocapture` prints the per-file table recorded in `docs/STT_ACCURACY.md`.
//! Needs `pocketsphinx-testdata` and `pocketsphinx-en-us` (Debian) and the
//! Whisper model that `scripts/setup` downloads; the tests fail rather than
//! skip when any of them is missing.

#![cfg(all(feature = "whisper", feature = "pocketsphinx"))]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mentis_pipeline::frame::{FrameMeta, Payload};
use mentis_pipeline::stage::{Emitter, Processor};
use mentis_pipeline::{AudioData, Control, Frame, MediaTime, SessionId, StageName, Transcript, TranscriptKind, TurnId};
use mentis_stages::stt::{
    PocketSphinxConfig, PocketSphinxRecognizer, PocketSphinxStt, Recognizer, Stt, WhisperConfig, WhisperRecognizer,
    WhisperStt,
};
use mentis_stages::wav::{ChannelMode, ReadOptions, Truncation, read_wav_file};
use mentis_stages::wer::{WordErrors, word_errors};

const LIBRIVOX_DIR: &str = "/usr/share/pocketsphinx/test/data/librivox";

/// Sample rate of the recordings and of both engines, in Hz.
const RATE: u32 = 16_000;

/// Samples per frame fed to the stage: 20 ms, a common capture block.
const FRAME_SAMPLES: usize = 320;

/// The highest WER Whisper tiny.en may reach over the five recordings.
const WHISPER_MAX_WER: f64 = 0.10;

/// The highest WER PocketSphinx may reach over the five recordings: the
/// measured 0.296 (21 errors in 71 words, Debian pocketsphinx 0.8+5prealpha+1,
/// en-us model with en-us.lm.bin) plus a margin of 0.05 for differences
/// between library builds.
const POCKETSPHINX_MAX_WER: f64 = 0.35;

/// The engines load models of tens of megabytes and use both cores; running
/// the tests one at a time keeps the reported inference times comparable.
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// One recording and its reference transcript.
#[derive(Debug)]
struct Clip {
    id: String,
    reference: String,
    samples: Vec<f32>,
}

/// Reads `librivox/transcription`, whose lines look like
/// `<s> he was not an ill disposed young man </s> (sense_and_sensibility_01_austen_64kb-0880)`,
/// and the WAV file of each line.
fn load_clips() -> Vec<Clip> {
    let dir = PathBuf::from(LIBRIVOX_DIR);
    let listing = dir.join("transcription");
    let text = std::fs::read_to_string(&listing).unwrap_or_else(|error| {
        panic!("cannot read {}: {error}; install the Debian package pocketsphinx-testdata", listing.display())
    });

    let mut clips = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let (words, id) = line
            .trim()
            .rsplit_once(" (")
            .and_then(|(words, rest)| Some((words, rest.strip_suffix(')')?)))
            .unwrap_or_else(|| panic!("unexpected line in {}: {line:?}", listing.display()));
        let reference = words.replace("<s>", " ").replace("</s>", " ").split_whitespace().collect::<Vec<_>>().join(" ");

        let path = dir.join(format!("{id}.wav"));
        let options = ReadOptions {
            sample_format: mentis_pipeline::SampleFormat::F32,
            channel_mode: ChannelMode::Keep,
            truncation: Truncation::Error,
        };
        let decoded = read_wav_file(&path, &options).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            (decoded.spec.sample_rate, decoded.spec.channels),
            (RATE, 1),
            "{} is not 16 kHz mono",
            path.display()
        );
        let samples = decoded.tracks.first().map(AudioData::to_f32).unwrap_or_default();
        assert!(!samples.is_empty(), "{} has no samples", path.display());
        clips.push(Clip { id: id.to_owned(), reference, samples });
    }
    assert_eq!(clips.len(), 5, "expected five recordings in {}", listing.display());
    clips
}

/// What one segment produced.
#[derive(Debug)]
struct SegmentOutput {
    partials: Vec<Transcript>,
    finals: Vec<Transcript>,
    /// Wall time from `SpeechStopped` until the stage returned: the time to
    /// the final transcript after the end of speech.
    finalize_time: Duration,
    /// Wall time of the whole segment, feeding included.
    total_time: Duration,
}

/// Feeds `samples` to the stage as one segment of `turn`, starting at media time `start`.
fn run_segment<R: Recognizer>(stt: &mut Stt<R>, turn: TurnId, start: MediaTime, samples: &[f32]) -> SegmentOutput {
    let mut out = Emitter::new(SessionId(7));
    let meta = |timestamp: MediaTime| FrameMeta { session: SessionId(7), turn, seq: 0, timestamp };
    let started = Instant::now();

    stt.control(&Control::SpeechStarted, &meta(start), &mut out).unwrap_or_else(|error| panic!("{error}"));
    let mut position = 0_u64;
    for block in samples.chunks(FRAME_SAMPLES) {
        let timestamp = start.add(Duration::from_nanos(position * 1_000_000_000 / u64::from(RATE)));
        let audio = AudioData::from_f32(RATE, 1, block.to_vec()).unwrap_or_else(|error| panic!("{error}"));
        stt.process(Frame::audio(meta(timestamp), audio), &mut out).unwrap_or_else(|error| panic!("{error}"));
        position += block.len() as u64;
    }
    let end = start.add(Duration::from_nanos(position * 1_000_000_000 / u64::from(RATE)));
    let stopped = Instant::now();
    stt.control(&Control::SpeechStopped, &meta(end), &mut out).unwrap_or_else(|error| panic!("{error}"));
    let finalize_time = stopped.elapsed();
    stt.control(&Control::EndOfTurn, &meta(end), &mut out).unwrap_or_else(|error| panic!("{error}"));
    let total_time = started.elapsed();

    let mut partials = Vec::new();
    let mut finals = Vec::new();
    for frame in out.drain() {
        assert_eq!(frame.meta.turn, turn, "a transcript carries another turn's id");
        if let Payload::Transcript(transcript) = frame.payload {
            match transcript.kind {
                TranscriptKind::Partial => {
                    assert!(finals.is_empty(), "a partial transcript came after the final one");
                    partials.push(transcript);
                }
                TranscriptKind::Final => finals.push(transcript),
            }
        }
    }
    SegmentOutput { partials, finals, finalize_time, total_time }
}

/// Runs every clip through the stage, prints a table and returns the total errors.
fn measure<R: Recognizer>(engine: &str, stt: &mut Stt<R>, clips: &[Clip]) -> (WordErrors, Vec<SegmentOutput>) {
    let mut total = WordErrors::default();
    let mut outputs = Vec::new();
    let mut start = MediaTime::ZERO;
    println!("\n{engine}: file | WER | errors / words | audio s | final after stop ms | partials | hypothesis");
    for (index, clip) in clips.iter().enumerate() {
        let turn = TurnId(index as u64 + 1);
        let output = run_segment(stt, turn, start, &clip.samples);
        assert_eq!(output.finals.len(), 1, "{engine} gave {} final transcripts for {}", output.finals.len(), clip.id);
        let hypothesis = output.finals[0].text.clone();

        let errors = word_errors(&clip.reference, &hypothesis);
        let audio_seconds = clip.samples.len() as f64 / f64::from(RATE);
        println!(
            "{engine}: {} | {:.1}% | {} / {} | {:.2} | {} | {} | {hypothesis}",
            clip.id,
            errors.rate().unwrap_or(0.0) * 100.0,
            errors.errors(),
            errors.reference_words,
            audio_seconds,
            output.finalize_time.as_millis(),
            output.partials.len(),
        );
        total += errors;
        start = start.add(Duration::from_secs_f64(audio_seconds + 1.0));
        outputs.push(output);
    }
    println!("{engine}: total | {total}");
    (total, outputs)
}

fn stage_name(name: &str) -> StageName {
    StageName::new(name).unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn whisper_wer_on_librivox() {
    let _serial = ONE_AT_A_TIME.lock();
    let clips = load_clips();
    let recognizer = WhisperRecognizer::new(WhisperConfig::tiny_en()).unwrap_or_else(|error| panic!("{error}"));
    let mut stt: WhisperStt = Stt::new(stage_name("whisper"), recognizer);

    let (total, outputs) = measure("whisper", &mut stt, &clips);
    let rate = total.rate().unwrap_or(f64::INFINITY);
    assert!(rate <= WHISPER_MAX_WER, "Whisper {total}, above the bound of {:.0}%", WHISPER_MAX_WER * 100.0);

    for (clip, output) in clips.iter().zip(&outputs) {
        assert!(output.partials.is_empty(), "Whisper emitted partials for {}", clip.id);
        let transcript = &output.finals[0];
        assert!(transcript.start < transcript.end, "{}: empty time span", clip.id);
        let confidence = transcript.confidence.unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&confidence), "{}: confidence {confidence}", clip.id);
    }
    assert_eq!(stt.stats().snapshot().finals, 5);
}

#[test]
fn pocketsphinx_wer_on_librivox() {
    let _serial = ONE_AT_A_TIME.lock();
    let clips = load_clips();
    let recognizer = PocketSphinxRecognizer::new(PocketSphinxConfig::en_us()).unwrap_or_else(|error| panic!("{error}"));
    let mut stt: PocketSphinxStt = Stt::new(stage_name("pocketsphinx"), recognizer);

    let (total, outputs) = measure("pocketsphinx", &mut stt, &clips);
    let rate = total.rate().unwrap_or(f64::INFINITY);
    assert!(
        rate <= POCKETSPHINX_MAX_WER,
        "PocketSphinx {total}, above the bound of {:.1}%",
        POCKETSPHINX_MAX_WER * 100.0
    );

    // Streaming: every recording (2.9 s or longer) gets partials while it plays.
    for (clip, output) in clips.iter().zip(&outputs) {
        assert!(!output.partials.is_empty(), "PocketSphinx emitted no partial for {}", clip.id);
        for pair in output.partials.windows(2) {
            assert_ne!(pair[0].text, pair[1].text, "{}: a partial repeats the previous one", clip.id);
            assert!(pair[0].end < pair[1].end, "{}: partials out of order", clip.id);
        }
    }
}

/// Uniform white noise at about -50 dBFS RMS from a seeded xorshift64*
/// generator, so every run gets the same samples.
fn quiet_noise(samples: usize) -> Vec<f32> {
    let amplitude = 10_f32.powf(-50.0 / 20.0) * 3_f32.sqrt();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..samples)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            let uniform = bits as f32 / (1_u32 << 24) as f32;
            (uniform * 2.0 - 1.0) * amplitude
        })
        .collect()
}

#[test]
fn whisper_drops_silence_and_noise() {
    let _serial = ONE_AT_A_TIME.lock();
    let recognizer = WhisperRecognizer::new(WhisperConfig::tiny_en()).unwrap_or_else(|error| panic!("{error}"));
    let mut stt: WhisperStt = Stt::new(stage_name("whisper"), recognizer);

    let segments = [("silence", vec![0.0_f32; 2 * RATE as usize]), ("noise", quiet_noise(2 * RATE as usize))];
    for (index, (name, samples)) in segments.iter().enumerate() {
        let output = run_segment(&mut stt, TurnId(index as u64 + 1), MediaTime::ZERO, samples);
        let texts: Vec<&str> = output.finals.iter().map(|t| t.text.as_str()).collect();
        assert!(texts.is_empty(), "{name} became a transcript: {texts:?}");
        println!("whisper: {name} dropped in {} ms", output.total_time.as_millis());
    }
    let counts = stt.stats().snapshot();
    println!("whisper: non-speech counts {counts:?}");
    assert_eq!(counts.finals, 0);
    let dropped = counts.dropped_empty + counts.dropped_tags + counts.dropped_known_phrase + counts.dropped_no_speech;
    assert_eq!(dropped, 2);
}

/// Runs two recordings separated by silence through the WebRTC voice activity
/// detector and then the Whisper stage, as a pipeline would: each detected
/// segment must give one final transcript with the segment's turn id, in order.
#[test]
fn whisper_after_webrtc_vad() {
    use mentis_stages::vad::{Vad, WebRtcConfig, WebRtcVad};

    let _serial = ONE_AT_A_TIME.lock();
    let clips = load_clips();
    let (first, second) = (&clips[1], &clips[4]);
    let mut samples = vec![0.0_f32; RATE as usize / 2];
    samples.extend_from_slice(&first.samples);
    samples.extend(std::iter::repeat_n(0.0, RATE as usize * 3 / 2));
    samples.extend_from_slice(&second.samples);
    samples.extend(std::iter::repeat_n(0.0, RATE as usize));

    // The detector takes 16-bit audio by default; its frames go on unchanged.
    let detector = WebRtcVad::new(WebRtcConfig::new(RATE)).unwrap_or_else(|error| panic!("{error}"));
    let mut vad = Vad::new(stage_name("vad"), detector).unwrap_or_else(|error| panic!("{error}"));
    let mut vad_out = Emitter::new(SessionId(7));
    for (index, block) in samples.chunks(FRAME_SAMPLES).enumerate() {
        let pcm: Vec<i16> = block.iter().map(|&s| mentis_pipeline::frame::f32_to_i16(s)).collect();
        let audio = AudioData::from_i16(RATE, 1, pcm).unwrap_or_else(|error| panic!("{error}"));
        let timestamp = MediaTime::from_samples((index * FRAME_SAMPLES) as u64, RATE);
        let meta = FrameMeta { session: SessionId(7), turn: TurnId::NONE, seq: index as u64, timestamp };
        vad.process(Frame::audio(meta, audio), &mut vad_out).unwrap_or_else(|error| panic!("{error}"));
    }
    vad.finish(&mut vad_out).unwrap_or_else(|error| panic!("{error}"));

    let recognizer = WhisperRecognizer::new(WhisperConfig::tiny_en()).unwrap_or_else(|error| panic!("{error}"));
    let mut stt: WhisperStt = Stt::new(stage_name("whisper"), recognizer);
    let mut out = Emitter::new(SessionId(7));
    for frame in vad_out.drain() {
        match frame.as_control().cloned() {
            Some(control) => stt.control(&control, &frame.meta, &mut out),
            None => stt.process(frame, &mut out),
        }
        .unwrap_or_else(|error| panic!("{error}"));
    }
    stt.finish(&mut out).unwrap_or_else(|error| panic!("{error}"));

    let finals: Vec<(TurnId, Transcript)> = out
        .drain()
        .filter_map(|frame| match frame.payload {
            Payload::Transcript(transcript) if transcript.kind == TranscriptKind::Final => {
                Some((frame.meta.turn, transcript))
            }
            _ => None,
        })
        .collect();
    let turns: Vec<TurnId> = finals.iter().map(|(turn, _)| *turn).collect();
    assert_eq!(turns, [TurnId(1), TurnId(2)], "transcripts: {finals:?}");

    // A loose bound per clip checks that each segment got its own words; the
    // accuracy bound over all clips is the one of `whisper_wer_on_librivox`.
    for ((_, transcript), clip) in finals.iter().zip([first, second]) {
        println!("whisper after vad: {} -> {}", clip.id, transcript.text);
        let errors = word_errors(&clip.reference, &transcript.text);
        assert!(errors.rate().unwrap_or(f64::INFINITY) <= 0.5, "{}: {errors}", clip.id);
    }
    assert!(finals[0].1.end <= finals[1].1.start, "segments overlap");

    // The second clip's first word starts 0.20 s into it (forced alignment,
    // see tests/conformance_vad.rs), so its transcript must start by then.
    let second_clip_start = (RATE * 2) as u64 + first.samples.len() as u64;
    let second_speech = MediaTime::from_samples(second_clip_start, RATE).add(Duration::from_millis(200));
    assert!(finals[1].1.start <= second_speech, "second transcript starts after its speech");
}
