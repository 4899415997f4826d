//! The Opus encoding stage.

use std::fmt;

use bytes::Bytes;
use mentis_pipeline::stage::{Emitter, Processor, StageSpec};
use mentis_pipeline::{
    AudioFormat, Codec, Control, EncodedAudio, Frame, FrameMeta, MediaTime, Payload, PortFormat, Samples, StageError,
    StageName, TurnId,
};

use super::{FrameDuration, MAX_PACKET_LEN, OpusBuildError, check_format};

/// Lowest and highest bitrates libopus accepts, in bits per second.
const BITRATE_RANGE: std::ops::RangeInclusive<u32> = 500..=512_000;

/// The kind of signal libopus tunes the encoder for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OpusApplication {
    /// Speech intelligibility (libopus `OPUS_APPLICATION_VOIP`).
    #[default]
    Voip,
    /// Faithful reproduction of music and mixed content (`OPUS_APPLICATION_AUDIO`).
    Audio,
    /// The lowest delay, CELT only (`OPUS_APPLICATION_RESTRICTED_LOWDELAY`).
    LowDelay,
}

impl From<OpusApplication> for ::opus::Application {
    fn from(application: OpusApplication) -> Self {
        match application {
            OpusApplication::Voip => ::opus::Application::Voip,
            OpusApplication::Audio => ::opus::Application::Audio,
            OpusApplication::LowDelay => ::opus::Application::LowDelay,
        }
    }
}

/// Settings of an [`OpusEncoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpusEncoderConfig {
    /// Duration of the audio in each packet.
    pub frame_duration: FrameDuration,
    /// The kind of signal the encoder is tuned for.
    pub application: OpusApplication,
    /// Target bitrate in bits per second (500 to 512,000); `None` keeps
    /// libopus's default for the rate and channel count.
    pub bitrate: Option<u32>,
}

/// A stage that encodes PCM into Opus packets, one packet per frame of
/// [`OpusEncoderConfig::frame_duration`].
///
/// Input blocks of any size are buffered until a whole frame is available.
/// At end of stream the last, partial frame is padded with silence and
/// encoded, so no audio is lost and the decoded stream is up to one frame
/// longer than the input. Packet timestamps count frames from the first input
/// frame's timestamp, and each packet carries the turn of the latest input.
///
/// A [`Control::Flush`] or [`Control::Interrupt`] drops the partial frame and
/// resets the encoder, so the next input starts a new stream.
pub struct OpusEncoder {
    name: StageName,
    format: AudioFormat,
    config: OpusEncoderConfig,
    encoder: ::opus::Encoder,
    /// Samples per channel of one frame.
    frame_frames: usize,
    /// The partial frame, interleaved. Its first `pending_frames` frames are valid.
    pending: Vec<f32>,
    pending_frames: usize,
    /// Room for one encoded packet.
    packet: Vec<u8>,
    /// Sample frames encoded since the stream started, padding included.
    encoded_frames: u64,
    /// Timestamp of the first input frame of the stream.
    origin: Option<MediaTime>,
    turn: TurnId,
}

impl fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("config", &self.config)
            .field("pending_frames", &self.pending_frames)
            .field("encoded_frames", &self.encoded_frames)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// Builds an encoder for PCM in `format` with 20 ms frames, tuned for speech.
    pub fn new(name: StageName, format: AudioFormat) -> Result<Self, OpusBuildError> {
        OpusEncoder::with_config(name, format, OpusEncoderConfig::default())
    }

    /// Builds an encoder for PCM in `format` (a rate in
    /// [`OPUS_RATES`](super::OPUS_RATES), 1 or 2 channels, 16-bit or float).
    pub fn with_config(
        name: StageName,
        format: AudioFormat,
        config: OpusEncoderConfig,
    ) -> Result<Self, OpusBuildError> {
        let channels = check_format(format.sample_rate, format.channels)?;
        if let Some(bitrate) = config.bitrate.filter(|bitrate| !BITRATE_RANGE.contains(bitrate)) {
            return Err(OpusBuildError::InvalidBitrate { bitrate });
        }

        let library_error = |operation, source| OpusBuildError::Library { stage: name.clone(), operation, source };
        let mut encoder = ::opus::Encoder::new(format.sample_rate, channels, config.application.into())
            .map_err(|source| library_error("create an encoder", source))?;
        if let Some(bitrate) = config.bitrate {
            // Checked against BITRATE_RANGE above, so it fits an i32.
            encoder
                .set_bitrate(::opus::Bitrate::Bits(bitrate as i32))
                .map_err(|source| library_error("set the bitrate", source))?;
        }

        let frame_frames = config.frame_duration.frames(format.sample_rate);
        Ok(OpusEncoder {
            format,
            config,
            encoder,
            frame_frames,
            pending: vec![0.0; frame_frames * usize::from(format.channels)],
            pending_frames: 0,
            packet: vec![0; MAX_PACKET_LEN],
            encoded_frames: 0,
            origin: None,
            turn: TurnId::NONE,
            name,
        })
    }

    /// Returns the encoder's algorithmic delay (lookahead) in samples per
    /// channel: decoded audio lags the input by this much, which Ogg Opus
    /// calls the pre-skip.
    pub fn lookahead(&mut self) -> Result<usize, StageError> {
        let lookahead =
            self.encoder.get_lookahead().map_err(|error| self.library_error("read the lookahead", error))?;
        Ok(usize::try_from(lookahead).unwrap_or(0))
    }

    /// Returns the samples per channel of one frame.
    pub fn frame_frames(&self) -> usize {
        self.frame_frames
    }

    fn library_error(&self, operation: &str, error: ::opus::Error) -> StageError {
        StageError::fatal(format!("stage {}: libopus failed to {operation}", self.name)).with_source(error)
    }

    /// Appends interleaved samples, encoding each frame as it completes.
    fn push(&mut self, samples: &[f32], out: &mut Emitter<'_>) -> Result<(), StageError> {
        let channels = usize::from(self.format.channels);
        let frame_len = self.frame_frames * channels;
        let mut rest = samples;
        while !rest.is_empty() {
            let filled = self.pending_frames * channels;
            let take = (frame_len - filled).min(rest.len());
            self.pending[filled..filled + take].copy_from_slice(&rest[..take]);
            self.pending_frames += take / channels;
            rest = &rest[take..];
            if self.pending_frames == self.frame_frames {
                self.encode_pending(out)?;
            }
        }
        Ok(())
    }

    /// Encodes the pending frame, which must be complete or padded.
    fn encode_pending(&mut self, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let len = self
            .encoder
            .encode_float(&self.pending, &mut self.packet)
            .map_err(|error| self.library_error("encode a frame", error))?;

        let origin = self.origin.unwrap_or(MediaTime::ZERO);
        let timestamp = origin.add(MediaTime::from_samples(self.encoded_frames, self.format.sample_rate).as_duration());
        let packet = EncodedAudio {
            codec: Codec::Opus,
            sample_rate: self.format.sample_rate,
            channels: self.format.channels,
            duration: self.config.frame_duration.duration(),
            data: Bytes::copy_from_slice(&self.packet[..len]),
        };
        let meta = out.next_meta(self.turn, timestamp);
        out.emit(Frame::new(meta, Payload::Encoded(packet)));

        self.encoded_frames += self.frame_frames as u64;
        self.pending_frames = 0;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), StageError> {
        self.pending_frames = 0;
        self.encoded_frames = 0;
        self.origin = None;
        self.encoder.reset_state().map_err(|error| self.library_error("reset the encoder", error))
    }
}

impl Processor for OpusEncoder {
    fn spec(&self) -> StageSpec {
        let output = PortFormat::Encoded {
            codec: Codec::Opus,
            sample_rate: self.format.sample_rate,
            channels: self.format.channels,
        };
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.format), output)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let Payload::Audio(audio) = &frame.payload else {
            return Err(StageError::config(format!(
                "stage {} encodes audio but received a {} frame",
                self.name,
                frame.kind_name()
            )));
        };
        if audio.format() != self.format {
            return Err(StageError::config(format!(
                "stage {} was built for audio {} but received audio {}",
                self.name,
                self.format,
                audio.format()
            )));
        }
        self.origin.get_or_insert(frame.meta.timestamp);
        self.turn = frame.meta.turn;

        match audio.samples() {
            Samples::F32(samples) => self.push(samples, out),
            Samples::I16(samples) => {
                // Convert in small pieces on the stack rather than allocating;
                // 480 samples are whole frames for mono and stereo alike.
                let mut converted = [0.0_f32; 480];
                for piece in samples.chunks(converted.len()) {
                    for (target, &sample) in converted.iter_mut().zip(piece) {
                        *target = f32::from(sample) / 32_768.0;
                    }
                    self.push(&converted[..piece.len()], out)?;
                }
                Ok(())
            }
        }
    }

    fn control(&mut self, control: &Control, _meta: &FrameMeta, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        if matches!(control, Control::Flush | Control::Interrupt) {
            self.reset()?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter<'_>) -> Result<(), StageError> {
        if self.pending_frames > 0 {
            // Pad the last frame with silence so that its audio is not lost.
            let filled = self.pending_frames * usize::from(self.format.channels);
            self.pending[filled..].fill(0.0);
            self.encode_pending(out)?;
        }
        self.reset()
    }
}
