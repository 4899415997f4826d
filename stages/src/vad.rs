//! Voice activity detection: finds where speech starts and stops, and tags the
//! audio of each utterance with its own turn id.
//!
//! Two detectors implement [`VoiceDetector`]:
//!
//! - [`WebRtcVad`]: the WebRTC GMM detector (libfvad through the `webrtc-vad`
//!   crate), a yes/no decision per 10, 20 or 30 ms frame. Cheap, built in.
//! - [`SileroVad`] (feature `silero`): the Silero VAD v6 network through ONNX
//!   Runtime, a speech probability per 32 ms frame. More robust to noise; needs
//!   the runtime library and the model file that `scripts/setup --audio`
//!   downloads.
//!
//! Both take blocks of any size and keep the samples that do not fill a frame
//! for the next block. A [`Segmenter`] turns their per-frame output into
//! segments, and the [`Vad`] processor puts the detector and the segmenter in
//! a pipeline stage.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use mentis_pipeline::format::AudioFormat;
use mentis_pipeline::frame::{AudioData, Control, Frame, MediaTime, Samples};
use mentis_pipeline::stage::{Emitter, Execution, Processor, StageSpec};
use mentis_pipeline::{PortFormat, SampleFormat, StageError, StageName, TurnId, TurnMark};

pub mod segmenter;
#[cfg(feature = "silero")]
pub mod silero;
pub mod webrtc;

pub use segmenter::{SegmentEvent, Segmenter, SegmenterConfig, StopReason};
#[cfg(feature = "silero")]
pub use silero::{SileroConfig, SileroVad};
pub use webrtc::{Aggressiveness, WebRtcConfig, WebRtcVad};

/// A block of mono PCM samples in either storage format.
#[derive(Debug, Clone, Copy)]
pub enum Pcm<'a> {
    /// Signed 16-bit samples.
    I16(&'a [i16]),
    /// Float samples in [-1.0, 1.0].
    F32(&'a [f32]),
}

impl<'a> Pcm<'a> {
    /// Borrows the samples of an audio block.
    pub fn from_samples(samples: &'a Samples) -> Self {
        match samples {
            Samples::I16(samples) => Pcm::I16(samples),
            Samples::F32(samples) => Pcm::F32(samples),
        }
    }

    /// Returns the number of samples.
    pub fn len(&self) -> usize {
        match self {
            Pcm::I16(samples) => samples.len(),
            Pcm::F32(samples) => samples.len(),
        }
    }

    /// Returns whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A detector that rates fixed-length frames of mono audio.
///
/// Frame `k` after construction or [`reset`](VoiceDetector::reset) covers
/// samples `[k * frame_samples, (k + 1) * frame_samples)` of the stream.
pub trait VoiceDetector: Send + 'static {
    /// Returns a short name for logs and errors, such as `"webrtc"`.
    fn name(&self) -> &'static str;

    /// Returns the sample rate the detector expects, in Hz.
    fn sample_rate(&self) -> u32;

    /// Returns the number of samples in one frame.
    fn frame_samples(&self) -> usize;

    /// Returns where the [`Vad`] processor should run: inline for cheap
    /// detectors, on a blocking thread for model inference.
    fn execution(&self) -> Execution;

    /// Returns segmenter settings suited to the detector's output.
    fn default_segmenter(&self) -> SegmenterConfig;

    /// Takes a block of any length (an empty block is a no-op) and appends
    /// one speech probability in [0, 1] per frame it completes. Samples that
    /// do not fill a frame wait for the next call.
    ///
    /// After an error the detector's state is undefined until [`reset`](VoiceDetector::reset).
    fn push(&mut self, samples: Pcm<'_>, probabilities: &mut Vec<f32>) -> Result<(), VadError>;

    /// Returns the number of samples waiting for a frame to fill.
    fn buffered(&self) -> usize;

    /// Forgets all state and waiting samples, for a new stream.
    fn reset(&mut self);
}

/// A setting that a detector or segmenter cannot be built with.
#[derive(Debug, thiserror::Error)]
pub enum VadConfigError {
    /// The detector does not support the sample rate.
    #[error("{detector} VAD does not support a sample rate of {sample_rate} Hz; use one of {supported:?} Hz")]
    UnsupportedSampleRate {
        /// The detector.
        detector: &'static str,
        /// The rejected rate, in Hz.
        sample_rate: u32,
        /// The rates the detector accepts, in Hz.
        supported: &'static [u32],
    },
    /// WebRTC VAD does not support the frame duration.
    #[error("WebRTC VAD does not support {frame_ms} ms frames; use one of {supported:?} ms")]
    UnsupportedFrameDuration {
        /// The rejected frame duration, in milliseconds.
        frame_ms: u32,
        /// The frame durations WebRTC VAD accepts, in milliseconds.
        supported: &'static [u32],
    },
    /// The segmenter's thresholds are out of range.
    #[error(
        "invalid VAD thresholds {threshold} and {neg_threshold}: the threshold must be in (0, 1] and the negative threshold in [0, threshold]"
    )]
    InvalidThresholds {
        /// The threshold that starts speech.
        threshold: f32,
        /// The threshold that keeps speech going.
        neg_threshold: f32,
    },
    /// The segmenter was given an empty frame or a zero sample rate.
    #[error("invalid VAD frame of {frame_samples} samples at {sample_rate} Hz: both must be above 0")]
    InvalidFrame {
        /// The sample rate, in Hz.
        sample_rate: u32,
        /// The frame length, in samples.
        frame_samples: usize,
    },
    /// The maximum segment length cannot hold the pre-roll and the minimum speech.
    #[error(
        "maximum segment length {max_segment:?} is too short: it must be at least {minimum:?} (pre-roll, minimum speech in whole frames, and one frame)"
    )]
    MaxSegmentTooShort {
        /// The configured maximum.
        max_segment: std::time::Duration,
        /// The shortest maximum the other settings allow.
        minimum: std::time::Duration,
    },
    /// The ONNX Runtime library file does not exist.
    #[cfg(feature = "silero")]
    #[error(
        "ONNX Runtime library not found at {path}: run `scripts/setup --audio` to download it, or set ORT_DYLIB_PATH to the path of libonnxruntime.so"
    )]
    RuntimeNotFound {
        /// The path that was checked.
        path: std::path::PathBuf,
    },
    /// The ONNX Runtime library exists but could not be loaded.
    #[cfg(feature = "silero")]
    #[error("failed to load ONNX Runtime from {path}: {source}; run `scripts/setup --audio` to download a compatible version")]
    RuntimeLoad {
        /// The library file.
        path: std::path::PathBuf,
        /// The loader's error.
        #[source]
        source: ort::LoadDynamicError,
    },
    /// ONNX Runtime loaded but its environment could not be created.
    #[cfg(feature = "silero")]
    #[error("failed to create the ONNX Runtime environment: {source}")]
    Environment {
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// The Silero model file does not exist.
    #[cfg(feature = "silero")]
    #[error(
        "Silero VAD model not found at {path}: run `scripts/setup --audio` to download it, or set MENTIS_MODELS to the folder that contains silero/silero_vad.onnx"
    )]
    ModelNotFound {
        /// The path that was checked.
        path: std::path::PathBuf,
    },
    /// ONNX Runtime could not load the model file.
    #[cfg(feature = "silero")]
    #[error("failed to load the Silero VAD model from {path}: {source}")]
    ModelLoad {
        /// The model file.
        path: std::path::PathBuf,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// The model file lacks an input or output that Silero VAD v5/v6 has.
    #[cfg(feature = "silero")]
    #[error("the model at {path} has no {kind} named {name:?}; it is not a Silero VAD v5 or v6 model")]
    ModelSignature {
        /// The model file.
        path: std::path::PathBuf,
        /// "input" or "output".
        kind: &'static str,
        /// The missing tensor name.
        name: &'static str,
    },
}

/// A failure while detecting speech.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    /// libfvad returned an error for a frame.
    #[error("WebRTC VAD failed on a frame of {frame_samples} samples at {sample_rate} Hz")]
    WebRtc {
        /// The frame length, in samples.
        frame_samples: usize,
        /// The sample rate, in Hz.
        sample_rate: u32,
    },
    /// ONNX Runtime failed to run the Silero model.
    #[cfg(feature = "silero")]
    #[error("Silero VAD inference failed: {source}")]
    Inference {
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// A model output is missing or has the wrong number of values.
    #[error("Silero VAD output {name:?} has {actual} values, expected {expected}")]
    OutputShape {
        /// The output tensor.
        name: &'static str,
        /// The expected number of values.
        expected: usize,
        /// The number of values returned; 0 when the output is missing.
        actual: usize,
    },
    /// The model returned a value that is not a probability.
    #[error("Silero VAD returned {value} as a speech probability, outside [0, 1]")]
    InvalidProbability {
        /// The returned value.
        value: f32,
    },
    /// An audio frame does not have the format the stage declared.
    #[error("the VAD stage accepts {expected} but received {actual}")]
    FormatMismatch {
        /// The declared input format.
        expected: AudioFormat,
        /// The format of the frame.
        actual: AudioFormat,
    },
    /// A data frame that is not PCM audio reached the stage.
    #[error("the VAD stage accepts PCM audio but received a {kind} frame")]
    NotAudio {
        /// The kind of the frame.
        kind: &'static str,
    },
}

impl From<VadError> for StageError {
    fn from(error: VadError) -> Self {
        let message = error.to_string();
        match error {
            VadError::FormatMismatch { .. } | VadError::NotAudio { .. } => StageError::config(message).with_source(error),
            _ => StageError::fatal(message).with_source(error),
        }
    }
}

/// Splits blocks of any length into frames of a fixed length.
#[derive(Debug, Clone)]
pub(crate) struct Rechunker<T> {
    frame_samples: usize,
    waiting: Vec<T>,
}

impl<T: Copy> Rechunker<T> {
    pub(crate) fn new(frame_samples: usize) -> Self {
        Rechunker { frame_samples, waiting: Vec::with_capacity(frame_samples) }
    }

    /// Calls `each_frame` once per completed frame, in order, and keeps the
    /// rest. Stops at the first error; the samples after the failed frame are dropped.
    pub(crate) fn push<E>(&mut self, mut input: &[T], mut each_frame: impl FnMut(&[T]) -> Result<(), E>) -> Result<(), E> {
        // Complete the frame left over from the previous block first.
        if !self.waiting.is_empty() {
            let take = (self.frame_samples - self.waiting.len()).min(input.len());
            self.waiting.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.waiting.len() < self.frame_samples {
                return Ok(());
            }
            let result = each_frame(&self.waiting);
            self.waiting.clear();
            result?;
        }

        // Whole frames straight from the input, without copying.
        let mut frames = input.chunks_exact(self.frame_samples);
        for frame in &mut frames {
            each_frame(frame)?;
        }
        self.waiting.extend_from_slice(frames.remainder());
        Ok(())
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn clear(&mut self) {
        self.waiting.clear();
    }
}

/// Settings of a [`Vad`] stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// The rules that turn probabilities into segments.
    pub segmenter: SegmenterConfig,
    /// The sample format of the audio the stage accepts and emits.
    pub sample_format: SampleFormat,
    /// Whether to emit [`Control::Interrupt`] for the previous turn when a new
    /// turn starts, so that a reply still playing stops.
    pub interrupt_on_speech: bool,
}

impl VadConfig {
    /// Returns the defaults for a detector: its segmenter settings, 16-bit
    /// samples, and interrupts on.
    pub fn for_detector(detector: &dyn VoiceDetector) -> Self {
        VadConfig {
            segmenter: detector.default_segmenter(),
            sample_format: SampleFormat::I16,
            interrupt_on_speech: true,
        }
    }
}

/// Audio waiting for the segmenter to decide which turn it belongs to.
#[derive(Debug)]
struct HeldAudio {
    /// Stream position of the first sample.
    first: u64,
    /// Media time of the first sample.
    timestamp: MediaTime,
    audio: AudioData,
}

impl HeldAudio {
    fn end(&self) -> u64 {
        self.first + self.audio.frames() as u64
    }
}

/// A voice activity detection stage: audio in, the same audio out with turn
/// ids, plus speech events.
///
/// # What it emits
///
/// Audio leaves in input order, sample for sample, in the same format, with
/// the media times of the input. It is re-cut only where a segment starts or
/// ends inside an input block. Audio of a segment (pre-roll included) carries
/// the segment's turn id; audio outside segments carries [`TurnId::NONE`].
/// Each segment gets the next turn id, starting from 1 after construction or
/// [`Vad::reset`].
///
/// For each segment, in stream order:
///
/// 1. [`Control::Interrupt`] with the previous turn's id, when
///    [`VadConfig::interrupt_on_speech`] is set, a previous turn exists, and
///    this segment starts a new turn (not a continuation after a split).
///    Stages downstream decide whether a reply was playing. It travels on the
///    priority lane, and an edge that carries it discards the data frames it
///    still queues for the cancelled turns. The VAD emits it before the
///    turn-less audio that leads up to the segment, so this audio survives.
///    Audio sent in earlier calls may still be discarded.
/// 2. [`Control::SpeechStarted`] with the new turn id, timestamped at the
///    segment start (the onset minus the pre-roll, never before the end of
///    the previous segment). Turn-less audio up to that start comes between
///    steps 1 and 2.
/// 3. The segment's audio.
/// 4. [`Control::SpeechStopped`], timestamped at the end of the last speech
///    frame, which is where the segment's audio ends.
/// 5. [`Control::EndOfTurn`] with the same turn id and timestamp, unless the
///    segment was split at [`SegmenterConfig::max_segment`]. The turn's
///    [`TurnMark::EndOfSpeech`] latency mark is recorded at that moment. A
///    split segment is followed at once by its continuation (steps 2 to 5,
///    new turn id, no interrupt), so one `EndOfTurn` closes every segment
///    since the previous one.
///
/// At end of stream an open segment stops as in steps 4 and 5, and the
/// remaining audio leaves with [`TurnId::NONE`].
///
/// # Latency and memory
///
/// Audio is held until the segmenter has placed it. Outside speech that is up
/// to the pre-roll plus the minimum speech plus one detector frame. After the
/// last speech frame of a segment it is up to `end_silence` plus one frame,
/// because that silence joins the segment only if speech resumes. During
/// speech the delay is under one frame. The events come out as soon as they
/// are decided, so `SpeechStopped` leaves `end_silence` after the speech ended.
///
/// Control frames from upstream are passed on at once by the runtime and may
/// overtake held audio. `Flush` does not discard held audio, which is bounded
/// as above and still needed to place segments.
pub struct Vad<D> {
    name: StageName,
    detector: D,
    segmenter: Segmenter,
    config: VadConfig,
    format: AudioFormat,

    /// Samples given to the detector since the last reset.
    fed: u64,
    /// Media time right after the last sample given to the detector.
    fed_end_time: MediaTime,
    /// Audio not yet released, in stream order.
    held: VecDeque<HeldAudio>,
    /// The turn of the open segment.
    open_turn: Option<TurnId>,
    /// The turn of the latest segment, open or not.
    last_turn: TurnId,

    probabilities: Vec<f32>,
    events: Vec<SegmentEvent>,
}

impl<D> fmt::Debug for Vad<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vad")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("segmenter", &self.segmenter)
            .field("fed", &self.fed)
            .field("open_turn", &self.open_turn)
            .finish_non_exhaustive()
    }
}

impl<D: VoiceDetector> Vad<D> {
    /// Builds the stage with the detector's default settings.
    pub fn new(name: StageName, detector: D) -> Result<Self, VadConfigError> {
        let config = VadConfig::for_detector(&detector);
        Vad::with_config(name, detector, config)
    }

    /// Builds the stage with explicit settings.
    pub fn with_config(name: StageName, detector: D, config: VadConfig) -> Result<Self, VadConfigError> {
        let sample_rate = detector.sample_rate();
        let segmenter = Segmenter::new(config.segmenter, sample_rate, detector.frame_samples())?;
        let format = AudioFormat { sample_rate, channels: 1, sample_format: config.sample_format };
        Ok(Vad {
            name,
            detector,
            segmenter,
            config,
            format,
            fed: 0,
            fed_end_time: MediaTime::ZERO,
            held: VecDeque::new(),
            open_turn: None,
            last_turn: TurnId::NONE,
            probabilities: Vec::new(),
            events: Vec::new(),
        })
    }

    /// Returns the audio format the stage accepts and emits.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Returns the settings.
    pub fn config(&self) -> &VadConfig {
        &self.config
    }

    /// Returns the detector.
    pub fn detector(&self) -> &D {
        &self.detector
    }

    /// Forgets all state for a new session: detector state, held audio (which
    /// is discarded), the open segment and the turn count.
    pub fn reset(&mut self) {
        self.detector.reset();
        self.segmenter.reset();
        self.fed = 0;
        self.fed_end_time = MediaTime::ZERO;
        self.held.clear();
        self.open_turn = None;
        self.last_turn = TurnId::NONE;
        self.probabilities.clear();
        self.events.clear();
    }

    fn check_format(&self, frame: &Frame) -> Result<(), VadError> {
        let Some(audio) = frame.as_audio() else {
            return Err(VadError::NotAudio { kind: frame.kind_name() });
        };
        if audio.format() != self.format {
            return Err(VadError::FormatMismatch { expected: self.format, actual: audio.format() });
        }
        Ok(())
    }

    /// Handles the segmenter's events in order, then releases the audio that
    /// no later event can claim.
    fn apply_events(&mut self, out: &mut Emitter<'_>) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                SegmentEvent::Started { start, onset, continuation } => self.start_segment(start, onset, continuation, out),
                SegmentEvent::Stopped { end, reason } => self.stop_segment(end, reason, out),
            }
        }
        self.events = events;

        let hold_from = self.segmenter.hold_from();
        self.release(hold_from, out);
    }

    fn start_segment(&mut self, start: u64, onset: u64, continuation: bool, out: &mut Emitter<'_>) {
        let timestamp = self.time_at(start);
        let previous = self.last_turn;
        let turn = previous.next();

        // The interrupt goes before the audio that leads up to the segment:
        // an edge discards the data frames it still queues when an interrupt
        // arrives, and that audio was not queued yet.
        if self.config.interrupt_on_speech && !continuation && previous != TurnId::NONE {
            let meta = out.next_meta(previous, timestamp);
            out.emit(Frame::control(meta, Control::Interrupt));
        }

        // Audio before the pre-roll belongs to no turn.
        self.release(start, out);

        let meta = out.next_meta(turn, timestamp);
        out.emit(Frame::control(meta, Control::SpeechStarted));
        tracing::debug!(
            stage = %self.name,
            %turn,
            start_ms = timestamp.as_duration().as_millis(),
            onset_ms = self.time_at(onset).as_duration().as_millis(),
            continuation,
            "speech started"
        );

        self.last_turn = turn;
        self.open_turn = Some(turn);
    }

    fn stop_segment(&mut self, end: u64, reason: StopReason, out: &mut Emitter<'_>) {
        self.release(end, out);

        let timestamp = self.time_at(end);
        let turn = self.open_turn.take().unwrap_or(self.last_turn);
        let meta = out.next_meta(turn, timestamp);
        out.emit(Frame::control(meta, Control::SpeechStopped));
        if reason.ends_turn() {
            let meta = out.next_meta(turn, timestamp);
            out.emit(Frame::control(meta, Control::EndOfTurn));
            out.mark(turn, TurnMark::EndOfSpeech);
        }
        tracing::debug!(
            stage = %self.name,
            %turn,
            end_ms = timestamp.as_duration().as_millis(),
            ?reason,
            "speech stopped"
        );
    }

    /// Emits the held audio before stream position `until`, tagged with the
    /// open segment's turn or [`TurnId::NONE`], splitting a block that
    /// straddles `until`.
    fn release(&mut self, until: u64, out: &mut Emitter<'_>) {
        let turn = self.open_turn.unwrap_or(TurnId::NONE);
        while let Some(front) = self.held.front() {
            if front.first >= until {
                break;
            }
            let Some(mut piece) = self.held.pop_front() else { break };
            if piece.end() > until {
                let split = usize::try_from(until - piece.first).unwrap_or(usize::MAX);
                if let Some((head, tail)) = split_audio(&piece.audio, split) {
                    let tail_timestamp = piece.timestamp.add(self.format.duration_of(split));
                    self.held.push_front(HeldAudio { first: until, timestamp: tail_timestamp, audio: tail });
                    piece.audio = head;
                }
            }
            let meta = out.next_meta(turn, piece.timestamp);
            out.emit(Frame::audio(meta, piece.audio));
        }
    }

    /// Returns the media time of stream position `position`.
    fn time_at(&self, position: u64) -> MediaTime {
        for piece in &self.held {
            if position < piece.end() {
                let offset = position.saturating_sub(piece.first);
                return piece.timestamp.add(self.format.duration_of(usize::try_from(offset).unwrap_or(usize::MAX)));
            }
        }
        // At or past the end of the held audio: count back from the end of the stream.
        let back = usize::try_from(self.fed.saturating_sub(position)).unwrap_or(usize::MAX);
        let back_nanos = u64::try_from(self.format.duration_of(back).as_nanos()).unwrap_or(u64::MAX);
        MediaTime(self.fed_end_time.0.saturating_sub(back_nanos))
    }
}

/// Splits mono audio after `split` samples, copying both halves. Returns
/// `None` only if the halves fail validation, which a slice of a valid mono
/// block cannot.
fn split_audio(audio: &AudioData, split: usize) -> Option<(AudioData, AudioData)> {
    let format = audio.format();
    let (head, tail) = match audio.samples() {
        Samples::I16(samples) => {
            let (head, tail) = samples.split_at(split.min(samples.len()));
            (Samples::I16(Arc::from(head)), Samples::I16(Arc::from(tail)))
        }
        Samples::F32(samples) => {
            let (head, tail) = samples.split_at(split.min(samples.len()));
            (Samples::F32(Arc::from(head)), Samples::F32(Arc::from(tail)))
        }
    };
    Some((AudioData::new(format, head).ok()?, AudioData::new(format, tail).ok()?))
}

impl<D: VoiceDetector> Processor for Vad<D> {
    fn spec(&self) -> StageSpec {
        let port = PortFormat::Audio(self.format);
        StageSpec::new(self.name.clone(), port, port).with_execution(self.detector.execution())
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        self.check_format(&frame)?;
        let timestamp = frame.meta.timestamp;
        let Some(audio) = frame.as_audio() else {
            return Ok(());
        };
        let length = audio.frames();
        if length == 0 {
            return Ok(());
        }

        // Hold the block until the segmenter has placed every sample of it.
        self.held.push_back(HeldAudio { first: self.fed, timestamp, audio: audio.clone() });
        self.fed += length as u64;
        self.fed_end_time = timestamp.add(audio.duration());

        self.probabilities.clear();
        self.detector.push(Pcm::from_samples(audio.samples()), &mut self.probabilities)?;
        for &probability in &self.probabilities {
            self.segmenter.push(probability, &mut self.events);
        }
        self.apply_events(out);
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter<'_>) -> Result<(), StageError> {
        self.segmenter.finish(&mut self.events);
        self.apply_events(out);

        // What is left never became part of a segment, including the samples
        // that did not fill a last detector frame.
        self.release(u64::MAX, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
