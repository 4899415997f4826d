//! Audio formats and the formats that stage ports declare.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The storage of one PCM sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleFormat {
    /// Signed 16-bit integers.
    I16,
    /// 32-bit floats, nominally in [-1.0, 1.0].
    F32,
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SampleFormat::I16 => "i16",
            SampleFormat::F32 => "f32",
        })
    }
}

/// The format of interleaved PCM audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AudioFormat {
    /// Samples per second per channel, in Hz.
    pub sample_rate: u32,
    /// Number of interleaved channels.
    pub channels: u16,
    /// The storage of each sample.
    pub sample_format: SampleFormat,
}

impl AudioFormat {
    /// Mono 16-bit audio at the given rate, the usual input of speech models.
    pub const fn mono_i16(sample_rate: u32) -> Self {
        AudioFormat { sample_rate, channels: 1, sample_format: SampleFormat::I16 }
    }

    /// Mono float audio at the given rate.
    pub const fn mono_f32(sample_rate: u32) -> Self {
        AudioFormat { sample_rate, channels: 1, sample_format: SampleFormat::F32 }
    }

    /// Returns the duration of `frames` sample frames (one sample per channel each).
    pub fn duration_of(&self, frames: usize) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        let nanos = frames as u128 * 1_000_000_000 / u128::from(self.sample_rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Returns the number of sample frames in `duration`, rounded down.
    pub fn frames_in(&self, duration: Duration) -> usize {
        let frames = duration.as_nanos() * u128::from(self.sample_rate) / 1_000_000_000;
        usize::try_from(frames).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz {} ch {}", self.sample_rate, self.channels, self.sample_format)
    }
}

/// An audio codec of encoded frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// Opus packets (RFC 6716), one packet per frame.
    Opus,
}

/// The kind of frames a stage port carries. Graph validation compares the output format of
/// one stage with the input format of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PortFormat {
    /// The port does not exist: the input of a source or the output of a sink.
    None,
    /// PCM audio in exactly this format.
    Audio(AudioFormat),
    /// PCM audio in any format, which each frame states.
    AnyAudio,
    /// Encoded audio packets with the given codec, sample rate and channel count.
    Encoded {
        /// The codec of every packet.
        codec: Codec,
        /// Decoded sample rate, in Hz.
        sample_rate: u32,
        /// Decoded channel count.
        channels: u16,
    },
    /// Transcripts, partial and final.
    Transcript,
    /// LLM text deltas and sentence chunks.
    Text,
    /// Any frame: pass-through, tee and metering stages.
    Any,
}

impl PortFormat {
    /// Returns whether frames produced as `self` may enter a port that accepts
    /// `input`.
    pub fn feeds(&self, input: &PortFormat) -> bool {
        match (self, input) {
            (PortFormat::None, _) | (_, PortFormat::None) => false,
            (_, PortFormat::Any) | (PortFormat::Any, _) => true,
            (PortFormat::Audio(_) | PortFormat::AnyAudio, PortFormat::AnyAudio) => true,
            // An input that accepts exactly one format cannot check frames of "any audio"
            // before they arrive, so that pairing is a mismatch.
            (output, input) => output == input,
        }
    }

    /// Names the kind of stage that converts `self` into `input`, for error messages.
    pub fn converter_to(&self, input: &PortFormat) -> &'static str {
        match (self, input) {
            (PortFormat::Audio(a), PortFormat::Audio(b)) => {
                if a.sample_rate != b.sample_rate {
                    "a resampler"
                } else if a.channels != b.channels {
                    "a channel mixer"
                } else {
                    "a sample format converter"
                }
            }
            (PortFormat::Encoded { .. }, PortFormat::Audio(_) | PortFormat::AnyAudio) => "a decoder",
            (PortFormat::Audio(_) | PortFormat::AnyAudio, PortFormat::Encoded { .. }) => "an encoder",
            (PortFormat::Audio(_) | PortFormat::AnyAudio, PortFormat::Transcript) => {
                "a speech-to-text stage"
            }
            (PortFormat::Transcript, PortFormat::Text) => "an LLM stage",
            (PortFormat::Text, PortFormat::Audio(_) | PortFormat::AnyAudio) => {
                "a text-to-speech stage"
            }
            _ => "a converter between these formats",
        }
    }
}

impl fmt::Display for PortFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortFormat::None => f.write_str("no port"),
            PortFormat::Audio(format) => write!(f, "audio {format}"),
            PortFormat::AnyAudio => f.write_str("audio in any format"),
            PortFormat::Encoded { codec, sample_rate, channels } => {
                write!(f, "{codec:?} {sample_rate} Hz {channels} ch")
            }
            PortFormat::Transcript => f.write_str("transcripts"),
            PortFormat::Text => f.write_str("text"),
            PortFormat::Any => f.write_str("any frame"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_of_whole_second() {
        let format = AudioFormat::mono_i16(16_000);
        assert_eq!(format.duration_of(16_000), Duration::from_secs(1));
        assert_eq!(format.frames_in(Duration::from_millis(20)), 320);
    }

    #[test]
    fn feeds_exact_audio_only() {
        let a16 = PortFormat::Audio(AudioFormat::mono_i16(16_000));
        let a48 = PortFormat::Audio(AudioFormat::mono_i16(48_000));
        assert!(a16.feeds(&a16));
        assert!(!a16.feeds(&a48));
        assert!(a16.feeds(&PortFormat::AnyAudio));
        assert!(!PortFormat::AnyAudio.feeds(&a16));
        assert!(a16.feeds(&PortFormat::Any));
        assert!(!PortFormat::None.feeds(&PortFormat::Any));
        assert_eq!(a48.converter_to(&a16), "a resampler");
    }
}
