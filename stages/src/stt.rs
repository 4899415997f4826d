//! Speech to text: turns the audio of each utterance into a transcript.
//!
//! The [`Stt`] processor handles turns, timing, interruption and the
//! non-speech filter once, and hands the audio to a [`Recognizer`]:
//!
//! - [`WhisperStt`] (feature `whisper`): Whisper tiny.en through CTranslate2.
//!   It buffers the utterance and recognizes it when the utterance ends, so it
//!   emits one final transcript per segment and no partials.
//! - [`PocketSphinxStt`] (feature `pocketsphinx`): CMU PocketSphinx through
//!   Debian's C library. It decodes while audio arrives and emits partial
//!   transcripts while the person is still speaking, then a final one.
//!
//! # Input
//!
//! Mono 16 kHz PCM in either sample format, as the voice activity detector
//! ([`crate::vad::Vad`]) emits it. Each speech segment has its own turn id.
//! It arrives as `SpeechStarted`, the segment's audio, `SpeechStopped`, and
//! `EndOfTurn` (which the detector leaves out after the first parts of a split
//! segment). Audio outside segments carries [`TurnId::NONE`] and is ignored.
//!
//! # Output
//!
//! For each segment, zero or more [`TranscriptKind::Partial`] transcripts and
//! at most one [`TranscriptKind::Final`] transcript, all with the segment's
//! turn id. The final transcript is emitted at `SpeechStopped` (or at
//! `EndOfTurn` if no `SpeechStopped` came), before that event is forwarded, so
//! downstream stages see the transcript before the end of the turn. A split
//! segment therefore yields one final transcript per part.
//!
//! A final result that is no speech, such as Whisper's `[BLANK_AUDIO]`, is
//! dropped and counted instead of becoming a user turn (see [`NonSpeechFilter`]).
//!
//! # Interruption
//!
//! An `Interrupt` for the open turn (or a later one), a `Flush`, or audio of a
//! new turn discards the audio buffered so far without recognizing it. A
//! result whose turn was interrupted while the engine ran is discarded too.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mentis_pipeline::frame::{FrameMeta, Payload};
use mentis_pipeline::stage::{Emitter, Execution, Processor, StageSpec};
use mentis_pipeline::{
    AudioFormat, Control, Frame, MediaTime, PortFormat, SampleFormat, StageError, StageName, Transcript,
    TranscriptKind, TurnId, TurnMark,
};

use crate::vad::Pcm;

#[cfg(feature = "whisper")]
mod mel;
#[cfg(feature = "pocketsphinx")]
pub mod pocketsphinx;
#[cfg(feature = "whisper")]
pub mod whisper;

#[cfg(feature = "deepgram")]
pub mod deepgram;
#[cfg(any(feature = "openai-stt", feature = "deepgram", feature = "ws-stt"))]
mod network;
#[cfg(feature = "openai-stt")]
pub mod transcription;
#[cfg(feature = "ws-stt")]
pub mod websocket;

#[cfg(feature = "pocketsphinx")]
pub use pocketsphinx::{PocketSphinxConfig, PocketSphinxRecognizer};
#[cfg(feature = "whisper")]
pub use whisper::{WhisperConfig, WhisperRecognizer};

/// The sample rate every recognizer here expects, in Hz.
pub const SAMPLE_RATE: u32 = 16_000;

/// The Whisper speech-to-text stage.
#[cfg(feature = "whisper")]
pub type WhisperStt = Stt<WhisperRecognizer>;

/// The PocketSphinx speech-to-text stage.
#[cfg(feature = "pocketsphinx")]
pub type PocketSphinxStt = Stt<PocketSphinxRecognizer>;

/// A speech recognizer that [`Stt`] feeds one utterance at a time.
///
/// Calls come in the order `start_utterance`, any number of `accept` and
/// `partial`, then `finish_utterance` or `cancel_utterance`.
pub trait Recognizer: Send + 'static {
    /// Returns a short name for logs and errors, such as `"whisper"`.
    fn name(&self) -> &'static str;

    /// Returns whether [`partial`](Recognizer::partial) can return hypotheses.
    fn streams_partials(&self) -> bool;

    /// Prepares for a new utterance.
    fn start_utterance(&mut self) -> Result<(), SttError>;

    /// Takes the next block of the utterance: mono samples at [`SAMPLE_RATE`].
    fn accept(&mut self, samples: Pcm<'_>) -> Result<(), SttError>;

    /// Returns the current hypothesis of the open utterance, if the engine
    /// has one. Called at most every [`SttConfig::partial_interval`] of audio.
    fn partial(&mut self) -> Result<Option<String>, SttError>;

    /// Ends the utterance and recognizes it.
    fn finish_utterance(&mut self) -> Result<Recognition, SttError>;

    /// Ends the utterance and discards its audio without recognizing it.
    fn cancel_utterance(&mut self);
}

/// The audio of one utterance for a recognizer that decodes it whole at the
/// end, as float samples at [`SAMPLE_RATE`], capped at a maximum length.
/// Audio beyond the cap is dropped, counted, and warned about once.
#[derive(Debug, Clone)]
pub struct UtteranceBuffer {
    samples: Vec<f32>,
    max_samples: usize,
    dropped_samples: usize,
}

impl UtteranceBuffer {
    /// Creates an empty buffer that keeps at most `max_utterance` of audio.
    pub fn new(max_utterance: Duration) -> Self {
        let max_samples = samples_in(max_utterance);
        UtteranceBuffer { samples: Vec::new(), max_samples, dropped_samples: 0 }
    }

    /// Empties the buffer for a new utterance, keeping its allocation.
    pub fn clear(&mut self) {
        self.samples.clear();
        self.dropped_samples = 0;
    }

    /// Appends a block, converted to float, up to the cap.
    pub fn accept(&mut self, samples: Pcm<'_>) {
        let room = self.max_samples.saturating_sub(self.samples.len());
        let taken = samples.len().min(room);
        match samples {
            Pcm::F32(block) => self.samples.extend_from_slice(&block[..taken]),
            Pcm::I16(block) => self.samples.extend(block[..taken].iter().map(|&sample| f32::from(sample) / 32_768.0)),
        }
        let dropped = samples.len() - taken;
        if dropped > 0 && self.dropped_samples == 0 {
            tracing::warn!(
                max_utterance_s = self.max_samples as f64 / f64::from(SAMPLE_RATE),
                "utterance longer than the maximum; the rest of its audio is not transcribed"
            );
        }
        self.dropped_samples += dropped;
    }

    /// Returns the buffered samples.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }

    /// Returns the samples dropped beyond the cap since the last clear.
    pub fn dropped_samples(&self) -> usize {
        self.dropped_samples
    }
}

/// The result of recognizing one utterance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recognition {
    /// The recognized text, as the engine wrote it.
    pub text: String,
    /// The engine's confidence in [0, 1], when it reports one.
    pub confidence: Option<f32>,
    /// The engine's probability that the audio contains no speech, when it
    /// reports one (Whisper does, PocketSphinx does not).
    pub no_speech_probability: Option<f32>,
}

/// A failure to load or run a speech recognizer.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    /// A model file or folder does not exist.
    #[error("{engine} model file not found at {path}: run `scripts/setup` to download the models{hint}")]
    ModelNotFound {
        /// The engine that needs the file.
        engine: &'static str,
        /// The missing file or folder.
        path: std::path::PathBuf,
        /// Extra advice, such as the Debian package that ships the file; empty or starting with "; ".
        hint: &'static str,
    },
    /// The engine failed to load its model.
    #[error("failed to load the {engine} model from {path}: {source}")]
    ModelLoad {
        /// The engine.
        engine: &'static str,
        /// The model file or folder.
        path: std::path::PathBuf,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The engine failed while recognizing audio.
    #[error("{engine} recognition failed: {message}")]
    Recognition {
        /// The engine.
        engine: &'static str,
        /// What failed.
        message: String,
        /// The engine's error, when it has one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A setting is out of range.
    #[error("invalid {engine} setting {name} = {value}: {reason}")]
    InvalidSetting {
        /// The engine.
        engine: &'static str,
        /// The setting.
        name: &'static str,
        /// The rejected value.
        value: String,
        /// The accepted range.
        reason: &'static str,
    },
    /// An audio frame is not mono 16 kHz PCM.
    #[error(
        "the speech-to-text stage accepts mono {SAMPLE_RATE} Hz audio but received {actual}; add a resampler before it"
    )]
    FormatMismatch {
        /// The format of the frame.
        actual: AudioFormat,
    },
    /// A data frame that is not PCM audio reached the stage.
    #[error("the speech-to-text stage accepts PCM audio but received a {kind} frame")]
    NotAudio {
        /// The kind of the frame.
        kind: &'static str,
    },
}

impl From<SttError> for StageError {
    fn from(error: SttError) -> Self {
        let message = error.to_string();
        match error {
            SttError::Recognition { .. } => StageError::fatal(message).with_source(error),
            _ => StageError::config(message).with_source(error),
        }
    }
}

/// The reason a recognized result was dropped instead of becoming a transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonSpeech {
    /// The text is empty or only whitespace and punctuation.
    Empty,
    /// The text is only tags such as `[BLANK_AUDIO]`, `(music)` or `♪`.
    OnlyTags,
    /// The text is a phrase Whisper is known to produce from silence or noise
    /// ("you", "Thank you."), and the engine's no-speech probability is high.
    KnownPhrase,
    /// The engine's no-speech probability is high and its confidence low.
    NoSpeech,
}

impl NonSpeech {
    fn as_str(self) -> &'static str {
        match self {
            NonSpeech::Empty => "empty",
            NonSpeech::OnlyTags => "only non-speech tags",
            NonSpeech::KnownPhrase => "known non-speech phrase",
            NonSpeech::NoSpeech => "no speech",
        }
    }
}

/// Phrases Whisper writes for silence, breathing or noise, compared after
/// [`crate::wer::normalize`]. They are also real replies, so they are
/// dropped only when the no-speech probability is high.
const KNOWN_PHRASES: [&str; 7] =
    ["you", "thank you", "thanks", "thank you very much", "thank you for watching", "thanks for watching", "bye"];

/// Decides which recognized results are not speech.
///
/// Rules, in order:
///
/// 1. Tags are removed from the text: spans in square brackets, parentheses
///    or asterisks (`[BLANK_AUDIO]`, `(music)`, `*laughs*`) and music signs.
///    The remaining words are kept, so "(laughs) hello" becomes "hello".
/// 2. Nothing left with a letter or digit: dropped as [`NonSpeech::Empty`]
///    or [`NonSpeech::OnlyTags`].
/// 3. The text is one of the known phrases and the no-speech probability is
///    at least `no_speech_threshold`: [`NonSpeech::KnownPhrase`].
/// 4. The no-speech probability is at least `no_speech_threshold` and the
///    confidence is below `min_confidence`: [`NonSpeech::NoSpeech`]. With the
///    defaults this is the rule of OpenAI's Whisper `transcribe`
///    (`no_speech_threshold` 0.6, `logprob_threshold` -1.0, where a mean
///    token log-probability of -1.0 is a confidence of e^-1).
///
/// Rules 3 and 4 apply only to engines that report a no-speech probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonSpeechFilter {
    /// The no-speech probability from which rules 3 and 4 apply.
    pub no_speech_threshold: f32,
    /// The confidence under which rule 4 drops a result.
    pub min_confidence: f32,
}

impl Default for NonSpeechFilter {
    fn default() -> Self {
        NonSpeechFilter { no_speech_threshold: 0.6, min_confidence: (-1.0_f32).exp() }
    }
}

impl NonSpeechFilter {
    /// Returns the text to transcribe, with tags removed, or why the result is not speech.
    pub fn check(&self, recognition: &Recognition) -> Result<String, NonSpeech> {
        let (text, had_tags) = remove_tags(&recognition.text);
        if !text.chars().any(char::is_alphanumeric) {
            return Err(if had_tags { NonSpeech::OnlyTags } else { NonSpeech::Empty });
        }

        let no_speech_likely =
            recognition.no_speech_probability.is_some_and(|no_speech| no_speech >= self.no_speech_threshold);
        if no_speech_likely {
            let spoken = crate::wer::normalize(&text).join(" ");
            if KNOWN_PHRASES.contains(&spoken.as_str()) {
                return Err(NonSpeech::KnownPhrase);
            }
            if recognition.confidence.is_some_and(|confidence| confidence < self.min_confidence) {
                return Err(NonSpeech::NoSpeech);
            }
        }
        Ok(text)
    }
}

/// Removes tag spans and music signs, collapses whitespace, and returns the
/// text and whether any tag was removed. An unclosed bracket removes the rest
/// of the text, which is how Whisper ends a tag cut off by its token limit.
fn remove_tags(text: &str) -> (String, bool) {
    let mut kept = String::with_capacity(text.len());
    let mut closing: Option<char> = None;
    let mut had_tags = false;
    for c in text.chars() {
        if let Some(close) = closing {
            if c == close {
                closing = None;
            }
            continue;
        }
        match c {
            '[' => closing = Some(']'),
            '(' => closing = Some(')'),
            '*' => closing = Some('*'),
            '♪' | '♫' | '♬' | '♩' => {}
            _ => {
                kept.push(c);
                continue;
            }
        }
        had_tags = true;
        kept.push(' ');
    }
    let collapsed = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    (collapsed, had_tags)
}

/// Settings of an [`Stt`] stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SttConfig {
    /// The sample format the stage declares on its input port. Frames of the
    /// other sample format are accepted too and converted.
    pub sample_format: SampleFormat,
    /// The minimum audio between two partial transcripts.
    pub partial_interval: Duration,
    /// The rules that drop non-speech results.
    pub filter: NonSpeechFilter,
}

impl Default for SttConfig {
    fn default() -> Self {
        SttConfig {
            sample_format: SampleFormat::F32,
            partial_interval: Duration::from_millis(200),
            filter: NonSpeechFilter::default(),
        }
    }
}

/// Counters of an [`Stt`] stage, shared with [`Stt::stats`] handles.
#[derive(Debug, Default)]
pub struct SttStats {
    finals: AtomicU64,
    partials: AtomicU64,
    dropped_empty: AtomicU64,
    dropped_tags: AtomicU64,
    dropped_known_phrase: AtomicU64,
    dropped_no_speech: AtomicU64,
    discarded: AtomicU64,
    ignored_audio_frames: AtomicU64,
}

/// A snapshot of [`SttStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SttCounts {
    /// Final transcripts emitted.
    pub finals: u64,
    /// Partial transcripts emitted.
    pub partials: u64,
    /// Results dropped as [`NonSpeech::Empty`].
    pub dropped_empty: u64,
    /// Results dropped as [`NonSpeech::OnlyTags`].
    pub dropped_tags: u64,
    /// Results dropped as [`NonSpeech::KnownPhrase`].
    pub dropped_known_phrase: u64,
    /// Results dropped as [`NonSpeech::NoSpeech`].
    pub dropped_no_speech: u64,
    /// Utterances discarded unrecognized or unemitted: interrupted, flushed,
    /// or replaced by a new turn.
    pub discarded: u64,
    /// Audio frames not transcribed: outside segments, or of a finished or older turn.
    pub ignored_audio_frames: u64,
}

impl SttStats {
    /// Returns the current counts.
    pub fn snapshot(&self) -> SttCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SttCounts {
            finals: load(&self.finals),
            partials: load(&self.partials),
            dropped_empty: load(&self.dropped_empty),
            dropped_tags: load(&self.dropped_tags),
            dropped_known_phrase: load(&self.dropped_known_phrase),
            dropped_no_speech: load(&self.dropped_no_speech),
            discarded: load(&self.discarded),
            ignored_audio_frames: load(&self.ignored_audio_frames),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn count_non_speech(&self, reason: NonSpeech) {
        let counter = match reason {
            NonSpeech::Empty => &self.dropped_empty,
            NonSpeech::OnlyTags => &self.dropped_tags,
            NonSpeech::KnownPhrase => &self.dropped_known_phrase,
            NonSpeech::NoSpeech => &self.dropped_no_speech,
        };
        SttStats::count(counter);
    }
}

/// The utterance being fed to the recognizer.
#[derive(Debug)]
struct OpenUtterance {
    turn: TurnId,
    /// Media time of the segment start.
    start: MediaTime,
    /// Media time right after the last sample fed.
    end: MediaTime,
    /// Samples fed since the last partial hypothesis was requested.
    since_partial: usize,
    /// The last partial text emitted, to emit only changes.
    last_partial: String,
}

/// A speech-to-text stage around a [`Recognizer`]; see the [module docs](self).
pub struct Stt<R> {
    name: StageName,
    recognizer: R,
    config: SttConfig,
    open: Option<OpenUtterance>,
    /// The highest turn whose utterance was finished or discarded; its late
    /// audio does not open a new utterance.
    closed_through: TurnId,
    stats: Arc<SttStats>,
}

impl<R> fmt::Debug for Stt<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stt")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("open", &self.open)
            .field("closed_through", &self.closed_through)
            .finish_non_exhaustive()
    }
}

impl<R: Recognizer> Stt<R> {
    /// Builds the stage with the default settings.
    pub fn new(name: StageName, recognizer: R) -> Self {
        Stt::with_config(name, recognizer, SttConfig::default())
    }

    /// Builds the stage with explicit settings.
    pub fn with_config(name: StageName, recognizer: R, config: SttConfig) -> Self {
        Stt { name, recognizer, config, open: None, closed_through: TurnId::NONE, stats: Arc::default() }
    }

    /// Returns a handle to the stage's counters, which stays valid while the
    /// stage runs in a graph.
    pub fn stats(&self) -> Arc<SttStats> {
        Arc::clone(&self.stats)
    }

    /// Returns the recognizer.
    pub fn recognizer(&self) -> &R {
        &self.recognizer
    }

    /// Returns the settings.
    pub fn config(&self) -> &SttConfig {
        &self.config
    }

    /// Returns the turn of the utterance being fed, if one is open.
    pub fn open_turn(&self) -> Option<TurnId> {
        self.open.as_ref().map(|open| open.turn)
    }

    fn input_format(&self) -> AudioFormat {
        AudioFormat { sample_rate: SAMPLE_RATE, channels: 1, sample_format: self.config.sample_format }
    }

    /// Returns whether `turn` can no longer open an utterance: it is no turn,
    /// or it is not later than a finished turn or the open one.
    fn is_stale(&self, turn: TurnId) -> bool {
        turn == TurnId::NONE || turn <= self.closed_through || self.open_turn().is_some_and(|open| turn < open)
    }

    /// Opens an utterance for `turn`, discarding one still open for another turn.
    fn open_utterance(&mut self, turn: TurnId, start: MediaTime) -> Result<(), SttError> {
        if let Some(open) = &self.open {
            if open.turn == turn {
                return Ok(());
            }
            tracing::debug!(stage = %self.name, turn = %open.turn, new_turn = %turn, "new turn before the end of the open utterance; its audio is discarded");
            self.discard();
        }
        self.recognizer.start_utterance()?;
        self.open = Some(OpenUtterance { turn, start, end: start, since_partial: 0, last_partial: String::new() });
        Ok(())
    }

    /// Discards the open utterance without recognizing it.
    fn discard(&mut self) {
        if let Some(open) = self.open.take() {
            self.recognizer.cancel_utterance();
            self.closed_through = self.closed_through.max(open.turn);
            SttStats::count(&self.stats.discarded);
        }
    }

    /// Recognizes the open utterance and emits its final transcript, unless
    /// its turn was interrupted or the result is not speech.
    fn finish_utterance(&mut self, out: &mut Emitter<'_>) -> Result<(), SttError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        self.closed_through = self.closed_through.max(open.turn);
        let turn = open.turn;

        if out.should_stop(turn) {
            self.recognizer.cancel_utterance();
            SttStats::count(&self.stats.discarded);
            tracing::debug!(stage = %self.name, %turn, "turn interrupted before recognition; its audio is discarded");
            return Ok(());
        }
        let recognition = self.recognizer.finish_utterance()?;

        // The engine may have run for seconds: the person may have interrupted since.
        if out.should_stop(turn) {
            SttStats::count(&self.stats.discarded);
            tracing::debug!(stage = %self.name, %turn, "turn interrupted during recognition; the result is discarded");
            return Ok(());
        }

        let text = match self.config.filter.check(&recognition) {
            Ok(text) => text,
            Err(reason) => {
                self.stats.count_non_speech(reason);
                tracing::debug!(
                    stage = %self.name,
                    %turn,
                    reason = reason.as_str(),
                    text = %recognition.text,
                    no_speech_probability = ?recognition.no_speech_probability,
                    confidence = ?recognition.confidence,
                    "result dropped as non-speech"
                );
                return Ok(());
            }
        };

        let transcript = Transcript {
            kind: TranscriptKind::Final,
            text,
            start: open.start,
            end: open.end,
            confidence: recognition.confidence,
        };
        tracing::debug!(stage = %self.name, %turn, engine = self.recognizer.name(), chars = transcript.text.len(), "final transcript");
        let meta = out.next_meta(turn, open.end);
        out.emit(Frame::new(meta, Payload::Transcript(transcript)));
        out.mark(turn, TurnMark::FinalTranscript);
        SttStats::count(&self.stats.finals);
        Ok(())
    }

    /// Emits the recognizer's partial hypothesis when enough audio has
    /// arrived since the last one and the text changed.
    fn maybe_emit_partial(&mut self, out: &mut Emitter<'_>) -> Result<(), SttError> {
        let interval = samples_in(self.config.partial_interval);
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if !self.recognizer.streams_partials() || open.since_partial < interval || out.should_stop(open.turn) {
            return Ok(());
        }
        open.since_partial = 0;

        let Some(hypothesis) = self.recognizer.partial()? else {
            return Ok(());
        };
        let text = hypothesis.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || text == open.last_partial {
            return Ok(());
        }
        open.last_partial.clone_from(&text);

        let transcript =
            Transcript { kind: TranscriptKind::Partial, text, start: open.start, end: open.end, confidence: None };
        let meta = out.next_meta(open.turn, open.end);
        out.emit(Frame::new(meta, Payload::Transcript(transcript)));
        SttStats::count(&self.stats.partials);
        Ok(())
    }

    fn handle_audio(&mut self, frame: &Frame, out: &mut Emitter<'_>) -> Result<(), SttError> {
        let Some(audio) = frame.as_audio() else {
            return Err(SttError::NotAudio { kind: frame.kind_name() });
        };
        let format = audio.format();
        if format.sample_rate != SAMPLE_RATE || format.channels != 1 {
            return Err(SttError::FormatMismatch { actual: format });
        }
        let turn = frame.meta.turn;

        // Audio outside segments, or late audio of a finished or older turn, is not transcribed.
        if self.is_stale(turn) {
            SttStats::count(&self.stats.ignored_audio_frames);
            return Ok(());
        }
        // Audio of a turn with no SpeechStarted (an upstream that sends none) opens it.
        self.open_utterance(turn, frame.meta.timestamp)?;
        if audio.frames() == 0 {
            return Ok(());
        }

        self.recognizer.accept(Pcm::from_samples(audio.samples()))?;
        if let Some(open) = self.open.as_mut() {
            open.end = frame.meta.timestamp.add(audio.duration());
            open.since_partial += audio.frames();
        }
        self.maybe_emit_partial(out)
    }

    fn handle_control(&mut self, control: &Control, meta: &FrameMeta, out: &mut Emitter<'_>) -> Result<(), SttError> {
        let open_turn = self.open_turn();
        match control {
            Control::SpeechStarted => {
                if !self.is_stale(meta.turn) {
                    self.open_utterance(meta.turn, meta.timestamp)?;
                }
            }
            Control::SpeechStopped | Control::EndOfTurn => {
                if open_turn == Some(meta.turn) {
                    self.finish_utterance(out)?;
                }
            }
            Control::Interrupt => {
                if open_turn.is_some_and(|turn| turn <= meta.turn) {
                    tracing::debug!(stage = %self.name, turn = %meta.turn, "interrupt; the open utterance is discarded");
                    self.discard();
                }
            }
            Control::Flush => self.discard(),
            Control::EndOfStream | Control::Error(_) => {}
        }
        Ok(())
    }
}

/// Returns the number of samples at [`SAMPLE_RATE`] in `duration`.
fn samples_in(duration: Duration) -> usize {
    usize::try_from(duration.as_micros() * u128::from(SAMPLE_RATE) / 1_000_000).unwrap_or(usize::MAX)
}

impl<R: Recognizer> Processor for Stt<R> {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.input_format()), PortFormat::Transcript)
            .with_execution(Execution::Blocking)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        Ok(self.handle_audio(&frame, out)?)
    }

    fn control(&mut self, control: &Control, meta: &FrameMeta, out: &mut Emitter<'_>) -> Result<(), StageError> {
        Ok(self.handle_control(control, meta, out)?)
    }

    /// Recognizes an utterance still open at end of stream, so that the last
    /// words are not lost when the input ends mid-segment.
    fn finish(&mut self, out: &mut Emitter<'_>) -> Result<(), StageError> {
        Ok(self.finish_utterance(out)?)
    }
}

#[cfg(test)]
mod tests;
