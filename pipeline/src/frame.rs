//! The frames that flow on edges.
//!
//! A [`Frame`] is a [`FrameMeta`] (session, turn, sequence number, media
//! timestamp) plus a [`Payload`]. Audio samples live in `Arc<[T]>`, so cloning
//! a frame for fan-out copies no samples.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::format::{AudioFormat, Codec, SampleFormat};
use crate::id::{SessionId, StageName, TurnId};

/// A position on the session's media timeline, in nanoseconds from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct MediaTime(pub u64);

impl MediaTime {
    /// The start of the session.
    pub const ZERO: MediaTime = MediaTime(0);

    /// Returns the time as a duration from the start of the session.
    pub fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Returns the time `duration` from the start of the session.
    pub fn from_duration(duration: Duration) -> Self {
        MediaTime(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Returns the time of sample frame `index` at `sample_rate`.
    pub fn from_samples(index: u64, sample_rate: u32) -> Self {
        if sample_rate == 0 {
            return MediaTime::ZERO;
        }
        let nanos = u128::from(index) * 1_000_000_000 / u128::from(sample_rate);
        MediaTime(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Returns this time moved later by `duration`, saturating.
    #[must_use]
    pub fn add(self, duration: Duration) -> Self {
        MediaTime(self.0.saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)))
    }
}

/// The metadata every frame carries besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameMeta {
    /// The conversation the frame belongs to.
    pub session: SessionId,
    /// The turn the frame belongs to, [`TurnId::NONE`] before the first turn.
    pub turn: TurnId,
    /// Position of the frame in its producer's output, starting at 0.
    pub seq: u64,
    /// Media time of the first sample (audio) or of the event (everything else).
    pub timestamp: MediaTime,
}

impl FrameMeta {
    /// Metadata for the first frame of a session.
    pub fn new(session: SessionId) -> Self {
        FrameMeta { session, turn: TurnId::NONE, seq: 0, timestamp: MediaTime::ZERO }
    }
}

/// Interleaved PCM samples, shared between clones.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    /// Signed 16-bit samples.
    I16(Arc<[i16]>),
    /// 32-bit float samples.
    F32(Arc<[f32]>),
}

impl Samples {
    /// Returns the number of samples over all channels.
    pub fn len(&self) -> usize {
        match self {
            Samples::I16(samples) => samples.len(),
            Samples::F32(samples) => samples.len(),
        }
    }

    /// Returns whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns how the samples are stored.
    pub fn sample_format(&self) -> SampleFormat {
        match self {
            Samples::I16(_) => SampleFormat::I16,
            Samples::F32(_) => SampleFormat::F32,
        }
    }
}

/// A block of PCM audio whose sample storage matches its declared format.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioData {
    format: AudioFormat,
    samples: Samples,
}

/// Audio whose samples do not fit the format they were declared with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioDataError {
    /// The sample storage differs from the format's sample format.
    #[error("samples are stored as {actual} but the format says {expected}")]
    SampleFormat {
        /// The sample format of the declared audio format.
        expected: SampleFormat,
        /// The storage of the samples passed in.
        actual: SampleFormat,
    },
    /// The sample count is not a whole number of frames.
    #[error("{samples} samples do not split into frames of {channels} channels")]
    PartialFrame {
        /// Number of samples over all channels.
        samples: usize,
        /// Channel count of the format.
        channels: u16,
    },
    /// The format has no channels or a sample rate of 0.
    #[error("audio format {format} is invalid: it needs at least one channel and a sample rate above 0")]
    InvalidFormat {
        /// The rejected format.
        format: AudioFormat,
    },
}

impl AudioData {
    /// Wraps interleaved samples, checking them against the format.
    pub fn new(format: AudioFormat, samples: Samples) -> Result<Self, AudioDataError> {
        if format.channels == 0 || format.sample_rate == 0 {
            return Err(AudioDataError::InvalidFormat { format });
        }
        if samples.sample_format() != format.sample_format {
            return Err(AudioDataError::SampleFormat {
                expected: format.sample_format,
                actual: samples.sample_format(),
            });
        }
        if samples.len() % usize::from(format.channels) != 0 {
            return Err(AudioDataError::PartialFrame { samples: samples.len(), channels: format.channels });
        }
        Ok(AudioData { format, samples })
    }

    /// Wraps 16-bit samples.
    pub fn from_i16(
        sample_rate: u32,
        channels: u16,
        samples: impl Into<Arc<[i16]>>,
    ) -> Result<Self, AudioDataError> {
        let format = AudioFormat { sample_rate, channels, sample_format: SampleFormat::I16 };
        AudioData::new(format, Samples::I16(samples.into()))
    }

    /// Wraps float samples.
    pub fn from_f32(
        sample_rate: u32,
        channels: u16,
        samples: impl Into<Arc<[f32]>>,
    ) -> Result<Self, AudioDataError> {
        let format = AudioFormat { sample_rate, channels, sample_format: SampleFormat::F32 };
        AudioData::new(format, Samples::F32(samples.into()))
    }

    /// Returns the format of the samples.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Returns the interleaved samples.
    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Returns the number of sample frames (one sample per channel each).
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.format.channels)
    }

    /// Returns how long the audio plays.
    pub fn duration(&self) -> Duration {
        self.format.duration_of(self.frames())
    }

    /// Copies the samples out as floats in [-1.0, 1.0].
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.samples {
            Samples::F32(samples) => samples.to_vec(),
            Samples::I16(samples) => samples.iter().map(|&s| f32::from(s) / 32_768.0).collect(),
        }
    }

    /// Copies the samples out as 16-bit integers, clamping floats outside [-1.0, 1.0].
    pub fn to_i16(&self) -> Vec<i16> {
        match &self.samples {
            Samples::I16(samples) => samples.to_vec(),
            Samples::F32(samples) => samples.iter().map(|&s| f32_to_i16(s)).collect(),
        }
    }
}

/// Converts one float sample to 16 bits, clamping it to the representable range.
pub fn f32_to_i16(sample: f32) -> i16 {
    // The cast saturates, and NaN becomes 0.
    (sample * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}

/// One encoded audio packet.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedAudio {
    /// The codec of the packet.
    pub codec: Codec,
    /// Decoded sample rate, in Hz.
    pub sample_rate: u32,
    /// Decoded channel count.
    pub channels: u16,
    /// How long the packet plays once decoded.
    pub duration: Duration,
    /// The packet bytes; cloning shares them.
    pub data: Bytes,
}

/// Whether a transcript may still change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptKind {
    /// A hypothesis that a later transcript of the same span replaces.
    Partial,
    /// The settled text of its span.
    Final,
}

/// Recognised speech.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// Partial or final.
    pub kind: TranscriptKind,
    /// The recognised words.
    pub text: String,
    /// Media time where the transcribed speech starts.
    pub start: MediaTime,
    /// Media time where the transcribed speech ends.
    pub end: MediaTime,
    /// The engine's confidence in [0.0, 1.0], when it reports one.
    pub confidence: Option<f32>,
}

/// A piece of LLM output text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextDelta {
    /// The text, possibly one token or less than a character's worth of a word.
    pub text: String,
    /// Whether this is the last delta of the reply.
    pub last: bool,
}

/// A failure reported in-band so that downstream stages and the caller see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageFailure {
    /// The stage that failed.
    pub stage: StageName,
    /// The failure, in words.
    pub message: String,
}

/// Control events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Control {
    /// The voice activity detector heard speech start.
    SpeechStarted,
    /// The voice activity detector heard speech stop.
    SpeechStopped,
    /// The user finished their turn; the reply may start.
    EndOfTurn,
    /// Cancels the reply to the frame's turn and every earlier turn: stages stop
    /// their work on it and queued frames of those turns are discarded.
    Interrupt,
    /// Discards buffered data without ending the stream.
    Flush,
    /// No more frames follow on this edge.
    EndOfStream,
    /// A stage failed.
    Error(StageFailure),
}

impl Control {
    /// Returns whether the event travels on the priority lane and overtakes
    /// queued data. Events that mark a position in the data (speech started or
    /// stopped, end of turn, end of stream) stay in order with it.
    pub fn is_priority(&self) -> bool {
        matches!(self, Control::Interrupt | Control::Flush | Control::Error(_))
    }
}

/// The content of a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// PCM audio.
    Audio(AudioData),
    /// An encoded audio packet.
    Encoded(EncodedAudio),
    /// A transcript.
    Transcript(Transcript),
    /// LLM text.
    Text(TextDelta),
    /// A control event.
    Control(Control),
}

/// The unit that flows on an edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Session, turn, sequence number and media time.
    pub meta: FrameMeta,
    /// The content.
    pub payload: Payload,
}

impl Frame {
    /// Builds a frame.
    pub fn new(meta: FrameMeta, payload: Payload) -> Self {
        Frame { meta, payload }
    }

    /// Builds an audio frame.
    pub fn audio(meta: FrameMeta, audio: AudioData) -> Self {
        Frame { meta, payload: Payload::Audio(audio) }
    }

    /// Builds a control frame.
    pub fn control(meta: FrameMeta, control: Control) -> Self {
        Frame { meta, payload: Payload::Control(control) }
    }

    /// Returns the audio, if this is an audio frame.
    pub fn as_audio(&self) -> Option<&AudioData> {
        match &self.payload {
            Payload::Audio(audio) => Some(audio),
            _ => None,
        }
    }

    /// Returns the control event, if this is a control frame.
    pub fn as_control(&self) -> Option<&Control> {
        match &self.payload {
            Payload::Control(control) => Some(control),
            _ => None,
        }
    }

    /// Returns whether the frame travels on the priority lane.
    pub fn is_priority(&self) -> bool {
        self.as_control().is_some_and(Control::is_priority)
    }

    /// Returns the playing time of an audio or encoded frame, and zero for others.
    pub fn media_duration(&self) -> Duration {
        match &self.payload {
            Payload::Audio(audio) => audio.duration(),
            Payload::Encoded(packet) => packet.duration,
            _ => Duration::ZERO,
        }
    }

    /// Returns a short name of the payload kind, for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        match &self.payload {
            Payload::Audio(_) => "audio",
            Payload::Encoded(_) => "encoded audio",
            Payload::Transcript(_) => "transcript",
            Payload::Text(_) => "text",
            Payload::Control(_) => "control",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_clone_shares_samples() {
        let audio = AudioData::from_i16(16_000, 1, vec![1_i16; 320]).expect("valid audio");
        let copy = audio.clone();
        match (audio.samples(), copy.samples()) {
            (Samples::I16(a), Samples::I16(b)) => assert!(Arc::ptr_eq(a, b)),
            other => panic!("unexpected storage {other:?}"),
        }
    }

    #[test]
    fn audio_rejects_partial_frame() {
        let error = AudioData::from_i16(16_000, 2, vec![0_i16; 3]).expect_err("3 samples, 2 channels");
        assert_eq!(error, AudioDataError::PartialFrame { samples: 3, channels: 2 });
    }

    #[test]
    fn audio_rejects_zero_channels() {
        let error = AudioData::from_f32(16_000, 0, vec![0.0_f32; 4]).expect_err("no channels");
        assert!(matches!(error, AudioDataError::InvalidFormat { .. }));
    }

    #[test]
    fn audio_duration_from_frames() {
        let audio = AudioData::from_i16(16_000, 2, vec![0_i16; 640]).expect("valid audio");
        assert_eq!(audio.frames(), 320);
        assert_eq!(audio.duration(), Duration::from_millis(20));
    }

    #[test]
    fn float_to_i16_clamps() {
        assert_eq!(f32_to_i16(2.0), i16::MAX);
        assert_eq!(f32_to_i16(-2.0), i16::MIN);
        assert_eq!(f32_to_i16(f32::NAN), 0);
        assert_eq!(f32_to_i16(0.5), 16_384);
    }

    #[test]
    fn priority_lane_events() {
        assert!(Control::Interrupt.is_priority());
        assert!(Control::Flush.is_priority());
        assert!(!Control::EndOfStream.is_priority());
        assert!(!Control::EndOfTurn.is_priority());
    }
}
