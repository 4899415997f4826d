//! Opus encoding and decoding with libopus (the `opus` crate, linked against
//! the system library: Debian `libopus-dev`).
//!
//! - [`OpusEncoder`] cuts PCM of any block size into Opus frames of one
//!   [`FrameDuration`] and emits one packet per frame.
//! - [`OpusDecoder`] turns packets back into PCM and keeps the timeline
//!   continuous: packets of [`DTX_MAX_LEN`] bytes or less, lost packets (a gap
//!   in the timestamps) and corrupt packets are replaced by libopus's packet
//!   loss concealment for their duration.
//!
//! Opus is defined by RFC 6716; the packet layout (the TOC byte and the four
//! frame-count codes) is its section 3.

use std::time::Duration;

use mentis_pipeline::StageName;

mod decoder;
mod encoder;
pub mod fuzzing;

pub use decoder::{OpusDecoder, OpusDecoderStats};
pub use encoder::{OpusApplication, OpusEncoder, OpusEncoderConfig};

/// Sample rates libopus encodes and decodes at, in Hz.
pub const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];

/// Most channels an Opus stage takes (stereo; more needs the multistream API).
pub const MAX_CHANNELS: u16 = 2;

/// Packets of this many bytes or fewer carry no audio. libopus's encoder
/// returns such a packet when discontinuous transmission (DTX) decides that
/// the frame need not be sent (encoder overview in libopus 1.3.1's `opus.h`).
pub const DTX_MAX_LEN: usize = 2;

/// Maximum duration of one packet (RFC 6716, section 3.2.5), which sizes the
/// decoder's output buffer.
pub const MAX_PACKET_DURATION: Duration = Duration::from_millis(120);

/// Buffer size for one encoded packet, in bytes: the size libopus 1.3.1's
/// `opus.h` recommends for the output of `opus_encode`.
pub const MAX_PACKET_LEN: usize = 4_000;

/// Concealment works in steps of 2.5 ms, the shortest Opus frame: there are
/// 400 of them per second.
const CONCEALMENT_STEPS_PER_SECOND: u32 = 400;

/// The duration of one Opus frame; an encoder emits one packet per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FrameDuration {
    /// 2.5 ms (CELT only).
    Ms2_5,
    /// 5 ms (CELT only).
    Ms5,
    /// 10 ms.
    Ms10,
    /// 20 ms, the usual choice for speech.
    #[default]
    Ms20,
    /// 40 ms (two 20 ms frames in one packet).
    Ms40,
    /// 60 ms (three 20 ms frames in one packet).
    Ms60,
}

impl FrameDuration {
    /// Every frame duration, shortest first.
    pub const ALL: [FrameDuration; 6] = [
        FrameDuration::Ms2_5,
        FrameDuration::Ms5,
        FrameDuration::Ms10,
        FrameDuration::Ms20,
        FrameDuration::Ms40,
        FrameDuration::Ms60,
    ];

    /// Returns the duration in microseconds.
    pub const fn micros(self) -> u32 {
        match self {
            FrameDuration::Ms2_5 => 2_500,
            FrameDuration::Ms5 => 5_000,
            FrameDuration::Ms10 => 10_000,
            FrameDuration::Ms20 => 20_000,
            FrameDuration::Ms40 => 40_000,
            FrameDuration::Ms60 => 60_000,
        }
    }

    /// Returns the duration.
    pub const fn duration(self) -> Duration {
        Duration::from_micros(self.micros() as u64)
    }

    /// Returns the samples per channel of one frame at `sample_rate` Hz; exact
    /// for every rate in [`OPUS_RATES`] (120 to 2,880 at 48 kHz).
    pub const fn frames(self, sample_rate: u32) -> usize {
        (sample_rate as u64 * self.micros() as u64 / 1_000_000) as usize
    }
}

/// An Opus stage that cannot be built with the requested settings.
#[derive(Debug, thiserror::Error)]
pub enum OpusBuildError {
    /// The sample rate is not one of [`OPUS_RATES`].
    #[error("Opus does not support a sample rate of {rate} Hz; use one of {OPUS_RATES:?} Hz")]
    UnsupportedRate {
        /// The rejected rate, in Hz.
        rate: u32,
    },
    /// The channel count is 0 or above [`MAX_CHANNELS`].
    #[error("Opus stages take 1 or 2 channels, not {channels}")]
    UnsupportedChannels {
        /// The rejected channel count.
        channels: u16,
    },
    /// The bitrate is outside what libopus accepts.
    #[error("bitrate {bitrate} b/s is outside Opus's range of 500 to 512000 b/s")]
    InvalidBitrate {
        /// The rejected bitrate, in bits per second.
        bitrate: u32,
    },
    /// libopus rejected a call while setting up.
    #[error("libopus failed to {operation} for stage {stage}")]
    Library {
        /// The stage being built.
        stage: StageName,
        /// The setup step that failed.
        operation: &'static str,
        /// libopus's error.
        #[source]
        source: ::opus::Error,
    },
}

/// Checks a sample rate and channel count against what libopus takes.
fn check_format(sample_rate: u32, channels: u16) -> Result<::opus::Channels, OpusBuildError> {
    if !OPUS_RATES.contains(&sample_rate) {
        return Err(OpusBuildError::UnsupportedRate { rate: sample_rate });
    }
    match channels {
        1 => Ok(::opus::Channels::Mono),
        2 => Ok(::opus::Channels::Stereo),
        _ => Err(OpusBuildError::UnsupportedChannels { channels }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_at_48k() {
        let frames: Vec<usize> = FrameDuration::ALL.iter().map(|duration| duration.frames(48_000)).collect();
        assert_eq!(frames, [120, 240, 480, 960, 1_920, 2_880]);
    }

    #[test]
    fn frame_sizes_are_whole_at_every_rate() {
        for rate in OPUS_RATES {
            for duration in FrameDuration::ALL {
                let exact = u64::from(rate) * u64::from(duration.micros());
                assert_eq!(exact % 1_000_000, 0, "{duration:?} at {rate} Hz");
            }
        }
    }

    #[test]
    fn rejects_44k1() {
        let error = check_format(44_100, 1).expect_err("44.1 kHz is not an Opus rate");
        assert!(matches!(error, OpusBuildError::UnsupportedRate { rate: 44_100 }));
        let message = error.to_string();
        assert!(message.contains("44100"), "{message}");
        assert!(message.contains("[8000, 12000, 16000, 24000, 48000]"), "{message}");
    }

    #[test]
    fn rejects_three_channels() {
        let error = check_format(48_000, 3).expect_err("3 channels");
        assert!(matches!(error, OpusBuildError::UnsupportedChannels { channels: 3 }));
    }
}
