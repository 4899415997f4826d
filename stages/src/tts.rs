//! Speech synthesis stages.
//!
//! [`Tts`] is the stage: it takes text frames and emits mono float audio at
//! the engine's own sample rate. The engine behind it implements
//! [`SpeechEngine`], which turns one sentence into samples:
//!
//! - [`flite::Flite`] (feature `flite`): flite's US English voice slt, 16 kHz.
//! - [`piper::Piper`] (feature `piper`): Piper voices through ONNX Runtime,
//!   with phonemes from espeak-ng; 22,050 Hz for en_US-joe-medium.
//!
//! Each text frame is spoken as complete text. To speak an LLM's token
//! stream, put a [`crate::text::SentenceAggregator`] in front, so that each
//! frame is one sentence. The stage still splits each frame into sentences
//! (and long sentences at commas) to check for interruption between them.
//!
//! Audio goes out in frames of [`TtsConfig::frame`] (20 ms by default); the
//! last frame of each synthesized piece may be shorter. Each frame's media
//! timestamp counts from the start of its turn's reply: the first frame of
//! every turn is at 0, and the time runs on over all of the turn's sentences.

use std::time::Duration;

use mentis_pipeline::{
    AudioData, AudioFormat, Control, Emitter, Execution, Frame, FrameMeta, MediaTime, Payload, PortFormat, Processor,
    StageError, StageName, StageSpec, TurnId, TurnMark,
};

use crate::text::split_sentences;

#[cfg(feature = "flite")]
pub mod flite;
#[cfg(feature = "piper")]
pub mod piper;
#[cfg(feature = "elevenlabs")]
pub mod elevenlabs;
#[cfg(any(feature = "openai-tts", feature = "elevenlabs"))]
mod network;
#[cfg(feature = "openai-tts")]
pub mod speech;

#[cfg(feature = "flite")]
pub use flite::{Flite, FliteTts};
#[cfg(feature = "piper")]
pub use piper::{Piper, PiperConfig, PiperTts};

/// Default length of an audio frame. An interruption stops the audio
/// within one frame, so shorter frames stop sooner but cost more frames.
pub const DEFAULT_FRAME: Duration = Duration::from_millis(20);

/// Default length, in characters, above which a sentence is split at
/// commas, semicolons and colons. Splitting makes the first audio of a long
/// sentence come sooner and lets an interruption stop synthesis between the
/// pieces, at the cost of a sentence-final intonation at each split.
pub const DEFAULT_MAX_PIECE_CHARS: usize = 160;

/// A speech synthesizer that turns one sentence into mono audio.
pub trait SpeechEngine: Send + 'static {
    /// Returns the engine's name, for logs and errors.
    fn name(&self) -> &'static str;

    /// Returns the sample rate of the audio it produces, in Hz.
    fn sample_rate(&self) -> u32;

    /// Synthesizes `text`, appending mono samples in [-1.0, 1.0] to `samples`.
    fn synthesize(&mut self, text: &str, samples: &mut Vec<f32>) -> Result<(), TtsError>;
}

/// Settings of a [`Tts`] stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtsConfig {
    /// Length of each audio frame emitted.
    pub frame: Duration,
    /// Length in characters above which a sentence is split at commas,
    /// semicolons and colons; `None` speaks every sentence whole.
    pub max_piece_chars: Option<usize>,
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig { frame: DEFAULT_FRAME, max_piece_chars: Some(DEFAULT_MAX_PIECE_CHARS) }
    }
}

/// A TTS engine or stage that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TtsConfigError {
    /// The frame is too short to hold one sample at the engine's rate.
    #[error("invalid TTS frame length {frame:?} at {sample_rate} Hz: a frame must hold at least one sample")]
    InvalidFrame {
        /// The rejected frame length.
        frame: Duration,
        /// The engine's sample rate, in Hz.
        sample_rate: u32,
    },
    /// The maximum piece length is zero.
    #[error("invalid maximum piece length of 0 characters: use at least 1, or None to speak sentences whole")]
    InvalidMaxPieceChars,
    /// The engine reported a sample rate of zero.
    #[error("{engine} reported a sample rate of {sample_rate} Hz; it must be above 0")]
    InvalidSampleRate {
        /// The engine.
        engine: &'static str,
        /// The rejected rate, in Hz.
        sample_rate: i64,
    },
    /// flite did not return the voice.
    #[cfg(feature = "flite")]
    #[error("flite could not load its voice {voice}: reinstall Debian package flite1-dev")]
    FliteVoice {
        /// The voice's name.
        voice: &'static str,
    },
    /// The probe sentence that measures the engine's output failed.
    #[error("{engine} failed to synthesize its probe sentence: {source}")]
    Probe {
        /// The engine.
        engine: &'static str,
        /// What failed.
        #[source]
        source: TtsError,
    },
    /// The Piper voice model does not exist.
    #[cfg(feature = "piper")]
    #[error(
        "Piper voice model not found at {path}: run `scripts/setup` to download en_US-joe-medium, or set MENTIS_MODELS to the folder that contains piper/"
    )]
    ModelNotFound {
        /// The path that was checked.
        path: std::path::PathBuf,
    },
    /// The Piper voice configuration (`.onnx.json`) does not exist.
    #[cfg(feature = "piper")]
    #[error(
        "Piper voice configuration not found at {path}: it must sit next to the model, named like it with .json appended"
    )]
    VoiceConfigNotFound {
        /// The path that was checked.
        path: std::path::PathBuf,
    },
    /// The Piper voice configuration could not be read.
    #[cfg(feature = "piper")]
    #[error("failed to read Piper voice configuration {path}: {source}")]
    VoiceConfigRead {
        /// The configuration file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Piper voice configuration is not valid JSON of the expected shape.
    #[cfg(feature = "piper")]
    #[error("invalid Piper voice configuration {path}: {source}")]
    VoiceConfigParse {
        /// The configuration file.
        path: std::path::PathBuf,
        /// The JSON error, with its line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The voice needs phonemes from something other than espeak-ng.
    #[cfg(feature = "piper")]
    #[error("Piper voice {path} uses phoneme_type {phoneme_type:?}; only \"espeak\" voices are supported")]
    UnsupportedPhonemeType {
        /// The configuration file.
        path: std::path::PathBuf,
        /// The phoneme type it names.
        phoneme_type: String,
    },
    /// The voice has more than one speaker.
    #[cfg(feature = "piper")]
    #[error("Piper voice {path} has {speakers} speakers; only single-speaker voices are supported")]
    UnsupportedSpeakers {
        /// The configuration file.
        path: std::path::PathBuf,
        /// Its speaker count.
        speakers: u32,
    },
    /// A key of `phoneme_id_map` is not exactly one character.
    #[cfg(feature = "piper")]
    #[error("invalid phoneme_id_map key {key:?} in {path}: each key must be one character")]
    PhonemeKey {
        /// The configuration file.
        path: std::path::PathBuf,
        /// The rejected key.
        key: String,
    },
    /// `phoneme_id_map` lacks a symbol that every input needs.
    #[cfg(feature = "piper")]
    #[error("phoneme_id_map in {path} has no id for {symbol:?}, which marks {role}")]
    MissingPhoneme {
        /// The configuration file.
        path: std::path::PathBuf,
        /// The missing symbol.
        symbol: char,
        /// The symbol's role, such as padding.
        role: &'static str,
    },
    /// ONNX Runtime could not be loaded.
    #[cfg(feature = "piper")]
    #[error("{source}")]
    OnnxRuntime {
        /// The error of the shared ONNX Runtime set-up.
        #[source]
        source: crate::vad::VadConfigError,
    },
    /// ONNX Runtime could not load the voice model.
    #[cfg(feature = "piper")]
    #[error("failed to load Piper voice model {path}: {source}")]
    ModelLoad {
        /// The model file.
        path: std::path::PathBuf,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// The voice model lacks an input or output that Piper voices have.
    #[cfg(feature = "piper")]
    #[error("Piper voice model {path} has no {kind} named {name:?}; is it a Piper voice?")]
    ModelSignature {
        /// The model file.
        path: std::path::PathBuf,
        /// "input" or "output".
        kind: &'static str,
        /// The missing name.
        name: &'static str,
    },
    /// espeak-ng could not start.
    #[cfg(feature = "piper")]
    #[error(
        "espeak-ng failed to initialize (code {code}) with data folder {data}: install Debian package libespeak-ng1, or point PiperConfig::espeak_data at the folder that contains espeak-ng-data"
    )]
    EspeakInit {
        /// The folder passed to espeak-ng, or "(default)".
        data: String,
        /// espeak-ng's return value.
        code: i32,
    },
    /// espeak-ng has no voice of the configured name.
    #[cfg(feature = "piper")]
    #[error("espeak-ng has no voice {voice:?} (error {code}): check espeak.voice in the Piper voice configuration")]
    EspeakVoice {
        /// The voice name.
        voice: String,
        /// espeak-ng's error code.
        code: i32,
    },
}

/// A failure while synthesizing one piece of text.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// An engine outside this crate failed.
    #[error("{engine} failed: {source}")]
    Engine {
        /// The engine.
        engine: &'static str,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// flite returned no wave.
    #[cfg(feature = "flite")]
    #[error("flite returned no audio for {text:?}")]
    FliteNoAudio {
        /// The text.
        text: String,
    },
    /// flite returned a wave that is not mono or has an invalid size or rate.
    #[cfg(feature = "flite")]
    #[error(
        "flite returned an invalid wave for {text:?}: {channels} channels, {samples} samples at {sample_rate} Hz; expected mono audio at a rate above 0"
    )]
    FliteWave {
        /// The text.
        text: String,
        /// The wave's channel count.
        channels: i32,
        /// The wave's sample count.
        samples: i32,
        /// The wave's sample rate, in Hz.
        sample_rate: i32,
    },
    /// flite returned audio at another rate than the one the stage declared.
    #[cfg(feature = "flite")]
    #[error("flite returned audio at {sample_rate} Hz for {text:?}, but the stage declared {expected} Hz")]
    FliteRateChanged {
        /// The text.
        text: String,
        /// The wave's sample rate, in Hz.
        sample_rate: u32,
        /// The rate the stage declared, in Hz.
        expected: u32,
    },
    /// espeak-ng could not select the voice's language.
    #[cfg(feature = "piper")]
    #[error("espeak-ng could not select voice {voice:?} (error {code})")]
    EspeakVoice {
        /// The voice name.
        voice: String,
        /// espeak-ng's error code.
        code: i32,
    },
    /// ONNX Runtime failed to run the voice model.
    #[cfg(feature = "piper")]
    #[error("Piper inference failed for {text:?}: {source}")]
    Inference {
        /// The text.
        text: String,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// The model's output is not one row of samples.
    #[cfg(feature = "piper")]
    #[error(
        "Piper model output {name:?} has shape {shape:?}; expected [1, 1, 1, samples] or another shape with one row"
    )]
    OutputShape {
        /// The output's name.
        name: String,
        /// Its shape.
        shape: Vec<i64>,
    },
    /// The model produced a sample that is not a finite number.
    #[cfg(feature = "piper")]
    #[error("Piper model produced an invalid sample {value} at index {index} for {text:?}")]
    InvalidSample {
        /// The text.
        text: String,
        /// The sample's index.
        index: usize,
        /// The sample.
        value: f32,
    },
}

/// The reply in progress.
#[derive(Debug, Clone, Copy)]
struct Reply {
    turn: TurnId,
    /// Samples emitted so far in this turn: the next frame's timestamp.
    position: u64,
    /// Set when an interruption stopped the reply; its remaining text is skipped.
    stopped: bool,
    /// Whether [`TurnMark::FirstTtsAudio`] has been recorded.
    marked: bool,
}

/// The speech synthesis stage: text in, mono float audio at the engine's
/// sample rate out. It runs on its own thread.
///
/// Before each sentence and each audio frame it checks whether its turn was
/// interrupted, so an interrupt stops the audio within one frame even while
/// a long text is being spoken. After a turn's `last: true` text or an
/// interrupt, later text of that turn is ignored.
pub struct Tts<E> {
    name: StageName,
    engine: E,
    config: TtsConfig,
    format: AudioFormat,
    frame_samples: usize,
    reply: Option<Reply>,
    /// The highest turn that ended (last text or interrupt).
    ended_through: TurnId,
    samples: Vec<f32>,
}

impl<E: SpeechEngine> std::fmt::Debug for Tts<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tts")
            .field("name", &self.name)
            .field("engine", &self.engine.name())
            .field("format", &self.format)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<E: SpeechEngine> Tts<E> {
    /// Creates a stage around `engine` with the default settings.
    pub fn new(name: StageName, engine: E) -> Result<Self, TtsConfigError> {
        Tts::with_config(name, engine, TtsConfig::default())
    }

    /// Creates a stage around `engine` with explicit settings.
    pub fn with_config(name: StageName, engine: E, config: TtsConfig) -> Result<Self, TtsConfigError> {
        let sample_rate = engine.sample_rate();
        if sample_rate == 0 {
            return Err(TtsConfigError::InvalidSampleRate { engine: engine.name(), sample_rate: 0 });
        }
        if config.max_piece_chars == Some(0) {
            return Err(TtsConfigError::InvalidMaxPieceChars);
        }
        let format = AudioFormat::mono_f32(sample_rate);
        let frame_samples = format.frames_in(config.frame);
        if frame_samples == 0 {
            return Err(TtsConfigError::InvalidFrame { frame: config.frame, sample_rate });
        }
        Ok(Tts {
            name,
            engine,
            config,
            format,
            frame_samples,
            reply: None,
            ended_through: TurnId::NONE,
            samples: Vec::new(),
        })
    }

    /// Returns the format of the audio the stage emits.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Returns the engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Speaks `text` for the reply in progress, stopping early when the turn
    /// is interrupted.
    fn speak(&mut self, text: &str, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let Some(mut reply) = self.reply else {
            return Ok(());
        };
        let result = self.speak_into(&mut reply, text, out);
        if reply.stopped {
            tracing::debug!(stage = %self.name, turn = reply.turn.0, "stopped speaking because the turn was interrupted");
        }
        self.reply = Some(reply);
        result
    }

    fn speak_into(&mut self, reply: &mut Reply, text: &str, out: &mut Emitter<'_>) -> Result<(), StageError> {
        for sentence in split_sentences(text) {
            for piece in split_long_sentence(&sentence, self.config.max_piece_chars) {
                // Synthesis of a piece cannot be interrupted, so check before starting it.
                if out.should_stop(reply.turn) {
                    reply.stopped = true;
                    return Ok(());
                }
                if !piece.chars().any(char::is_alphanumeric) {
                    continue;
                }

                self.samples.clear();
                self.engine.synthesize(piece, &mut self.samples).map_err(|error| {
                    StageError::fatal(format!("{} failed to speak {piece:?}", self.engine.name())).with_source(error)
                })?;
                tracing::trace!(stage = %self.name, turn = reply.turn.0, samples = self.samples.len(), "synthesized a piece");

                if !emit_frames(&self.samples, self.frame_samples, self.format, reply, out)? {
                    reply.stopped = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Emits `samples` in frames of `frame_samples`, checking for interruption
/// before each. Returns `false` when the turn was interrupted.
fn emit_frames(
    samples: &[f32],
    frame_samples: usize,
    format: AudioFormat,
    reply: &mut Reply,
    out: &mut Emitter<'_>,
) -> Result<bool, StageError> {
    for chunk in samples.chunks(frame_samples) {
        if out.should_stop(reply.turn) {
            return Ok(false);
        }
        let audio = AudioData::from_f32(format.sample_rate, 1, chunk)
            .map_err(|error| StageError::fatal("the TTS stage built an invalid audio frame").with_source(error))?;
        if !reply.marked {
            out.mark(reply.turn, TurnMark::FirstTtsAudio);
            reply.marked = true;
        }
        let meta = out.next_meta(reply.turn, MediaTime::from_samples(reply.position, format.sample_rate));
        out.emit(Frame::audio(meta, audio));
        reply.position += chunk.len() as u64;
    }
    Ok(true)
}

/// Splits a sentence longer than `max_chars` characters at commas,
/// semicolons and colons followed by whitespace, into pieces of at most
/// `max_chars` where the clauses allow. A clause longer than the maximum
/// stays whole.
pub fn split_long_sentence(sentence: &str, max_chars: Option<usize>) -> Vec<&str> {
    let Some(max_chars) = max_chars else {
        return vec![sentence];
    };
    if sentence.chars().count() <= max_chars {
        return vec![sentence];
    }

    // Byte offsets just past each clause mark that whitespace follows.
    let mut clause_ends: Vec<usize> = sentence
        .char_indices()
        .zip(sentence.chars().skip(1))
        .filter(|&((_, mark), next)| matches!(mark, ',' | ';' | ':') && next.is_whitespace())
        .map(|((index, mark), _)| index + mark.len_utf8())
        .collect();
    clause_ends.push(sentence.len());

    // Greedily extend each piece by whole clauses while it stays short enough.
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut cut = None;
    for end in clause_ends {
        if let Some(previous) = cut
            && sentence[start..end].chars().count() > max_chars
        {
            pieces.push(sentence[start..previous].trim());
            start = previous;
        }
        cut = Some(end);
    }
    pieces.push(sentence[start..].trim());
    pieces.retain(|piece| !piece.is_empty());
    pieces
}

impl<E: SpeechEngine> Processor for Tts<E> {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Text, PortFormat::Audio(self.format))
            .with_execution(Execution::Blocking)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let turn = frame.meta.turn;
        let Payload::Text(delta) = frame.payload else {
            tracing::debug!(stage = %self.name, kind = frame.kind_name(), "ignored a frame that is not text");
            return Ok(());
        };
        if turn != TurnId::NONE && turn <= self.ended_through {
            tracing::trace!(stage = %self.name, turn = turn.0, "ignored text of a turn that has ended");
            return Ok(());
        }

        // A new turn starts its own reply, with media time from 0.
        if self.reply.is_none_or(|reply| reply.turn != turn) {
            self.reply = Some(Reply { turn, position: 0, stopped: false, marked: false });
        }
        if self.reply.is_some_and(|reply| !reply.stopped) {
            self.speak(&delta.text, out)?;
        }

        if delta.last {
            self.ended_through = self.ended_through.max(turn);
            self.reply = None;
        }
        Ok(())
    }

    fn control(&mut self, control: &Control, meta: &FrameMeta, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        if *control == Control::Interrupt {
            self.ended_through = self.ended_through.max(meta.turn);
            if self.reply.is_some_and(|reply| reply.turn <= meta.turn) {
                self.reply = None;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
