//! The Opus decoding stage.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mentis_pipeline::frame::f32_to_i16;
use mentis_pipeline::stage::{Emitter, Processor, StageSpec};
use mentis_pipeline::{
    AudioData, AudioFormat, Codec, Control, EncodedAudio, Frame, FrameMeta, MediaTime, Payload, PortFormat,
    SampleFormat, Samples, StageError, StageName, TurnId,
};

use super::{
    CONCEALMENT_STEPS_PER_SECOND, DTX_MAX_LEN, FrameDuration, MAX_PACKET_DURATION, OpusBuildError, check_format,
};

/// Maximum gap in the packet timestamps that concealment fills. A longer gap
/// means the sender stopped rather than lost packets, so one second is
/// concealed (libopus fades it to silence) and the output timestamps jump
/// over the rest.
const MAX_CONCEALED_GAP: Duration = Duration::from_secs(1);

/// Shortest time between two log events of the same kind.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counters of an [`OpusDecoder`] since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpusDecoderStats {
    /// Packets received, of every kind.
    pub packets: u64,
    /// Packets of [`DTX_MAX_LEN`](super::DTX_MAX_LEN) bytes or less.
    pub dtx_packets: u64,
    /// Packets libopus rejected as invalid.
    pub corrupt_packets: u64,
    /// Timestamp gaps filled with concealment.
    pub gaps: u64,
    /// Sample frames (per channel) produced by packet loss concealment.
    pub concealed_frames: u64,
}

/// Lets the first of a repeated event through to the log, then one per
/// [`LOG_INTERVAL`], and counts the events in between.
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// Returns the number of events suppressed since the last log when this
    /// one should be logged, and `None` when it should not.
    fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_INTERVAL) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A stage that decodes Opus packets into PCM.
///
/// The output timeline is continuous: each output frame starts where the
/// previous one ended, counted from the first packet's timestamp. Where no
/// audio arrives, libopus's packet loss concealment fills in:
///
/// - a packet of [`DTX_MAX_LEN`](super::DTX_MAX_LEN) bytes or less (DTX) is
///   concealed for the duration its TOC byte gives, or its declared duration;
/// - a gap between the expected and the actual timestamp of a packet (lost or
///   untransmitted packets) is concealed, in steps of 2.5 ms, up to
///   [`MAX_CONCEALED_GAP`];
/// - a packet libopus rejects is counted, logged at `error` (at most once
///   every 10 seconds, with the count in between), and concealed for its
///   declared duration, or for the previous packet's duration when it
///   declares none.
///
/// The output buffer holds [`MAX_PACKET_DURATION`](super::MAX_PACKET_DURATION),
/// so any legal packet decodes. Decoded audio lags the encoder's input by the
/// encoder's lookahead, which this stage keeps. A [`Control::Flush`] or
/// [`Control::Interrupt`] resets the decoder and starts a new timeline at the
/// next packet.
pub struct OpusDecoder {
    name: StageName,
    /// The emitted format.
    format: AudioFormat,
    /// The rate the packets declare, which may differ from the emitted rate.
    packet_rate: u32,
    decoder: ::opus::Decoder,
    /// Decoded samples of one packet, interleaved, sized for the longest packet.
    pcm: Vec<f32>,
    /// Capacity of `pcm`, in sample frames.
    pcm_frames: usize,
    /// Sample frames in one concealment step (2.5 ms).
    step_frames: usize,
    /// Duration of the last decoded packet, the default for packets without one.
    last_packet_frames: usize,
    /// Timestamp of the first packet of the stream, moved forward past
    /// gaps too long to conceal.
    origin: Option<MediaTime>,
    /// Sample frames emitted since `origin`.
    decoded_frames: u64,
    turn: TurnId,
    stats: OpusDecoderStats,
    corrupt_log: LogLimiter,
    gap_log: LogLimiter,
}

impl fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("decoded_frames", &self.decoded_frames)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// Builds a decoder that emits PCM in `format`: a rate in
    /// [`OPUS_RATES`](super::OPUS_RATES), 1 or 2 channels, 16-bit or float.
    /// The packets must declare the same rate and channel count.
    pub fn new(name: StageName, format: AudioFormat) -> Result<Self, OpusBuildError> {
        let channels = check_format(format.sample_rate, format.channels)?;
        let decoder = ::opus::Decoder::new(format.sample_rate, channels).map_err(|source| OpusBuildError::Library {
            stage: name.clone(),
            operation: "create a decoder",
            source,
        })?;

        let pcm_frames = format.frames_in(MAX_PACKET_DURATION);
        Ok(OpusDecoder {
            format,
            packet_rate: format.sample_rate,
            decoder,
            pcm: vec![0.0; pcm_frames * usize::from(format.channels)],
            pcm_frames,
            step_frames: (format.sample_rate / CONCEALMENT_STEPS_PER_SECOND) as usize,
            last_packet_frames: FrameDuration::Ms20.frames(format.sample_rate),
            origin: None,
            decoded_frames: 0,
            turn: TurnId::NONE,
            stats: OpusDecoderStats::default(),
            corrupt_log: LogLimiter::default(),
            gap_log: LogLimiter::default(),
            name,
        })
    }

    /// Returns the decoder emitting at `rate` (one of
    /// [`OPUS_RATES`](super::OPUS_RATES)) while the packets still declare the
    /// rate given to [`OpusDecoder::new`]. libopus decodes straight to any of
    /// its rates, which costs less than decoding at 48 kHz and resampling.
    pub fn with_output_rate(self, rate: u32) -> Result<Self, OpusBuildError> {
        let packet_rate = self.packet_rate;
        let format = AudioFormat { sample_rate: rate, ..self.format };
        let mut decoder = OpusDecoder::new(self.name, format)?;
        decoder.packet_rate = packet_rate;
        Ok(decoder)
    }

    /// Returns the format the stage emits.
    pub fn output_format(&self) -> AudioFormat {
        self.format
    }

    /// Returns the decoder's counters.
    pub fn stats(&self) -> OpusDecoderStats {
        self.stats
    }

    /// Decodes one packet whose first sample belongs at `timestamp`.
    fn decode(&mut self, packet: &EncodedAudio, timestamp: MediaTime, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let origin = *self.origin.get_or_insert(timestamp);
        self.stats.packets += 1;

        // Packets that went missing before this one leave a gap in the timestamps.
        let expected = origin.add(self.format.duration_of(frames_as_usize(self.decoded_frames)));
        if timestamp > expected {
            let gap = timestamp.as_duration().saturating_sub(expected.as_duration());
            self.conceal_gap(gap, out)?;
        }

        if packet.data.len() <= DTX_MAX_LEN {
            self.stats.dtx_packets += 1;
            let frames = self.dtx_frames(packet);
            return self.conceal(frames, out);
        }

        match self.decoder.decode_float(&packet.data, &mut self.pcm, false) {
            Ok(frames) => {
                self.last_packet_frames = frames;
                self.emit(frames, out)
            }
            Err(error) => {
                self.stats.corrupt_packets += 1;
                if let Some(suppressed) = self.corrupt_log.check() {
                    tracing::error!(
                        stage = %self.name,
                        %error,
                        bytes = packet.data.len(),
                        corrupt_packets = self.stats.corrupt_packets,
                        suppressed,
                        "Opus packet is corrupt; concealing its duration"
                    );
                }
                let frames = self.declared_frames(packet);
                self.conceal(frames, out)
            }
        }
    }

    /// Conceals a gap of `gap` before the next packet, in whole steps.
    fn conceal_gap(&mut self, gap: Duration, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let frames = self.format.frames_in(gap.min(MAX_CONCEALED_GAP));
        let frames = frames - frames % self.step_frames;
        if frames == 0 {
            return Ok(());
        }
        self.stats.gaps += 1;

        if gap > MAX_CONCEALED_GAP {
            if let Some(suppressed) = self.gap_log.check() {
                tracing::warn!(
                    stage = %self.name,
                    gap_ms = gap.as_millis() as u64,
                    suppressed,
                    "Opus packets stopped for longer than can be concealed; the output timestamps jump"
                );
            }
            // The output resumes at the packet's timestamp after the concealed second.
            let skipped = gap - self.format.duration_of(frames);
            self.origin = self.origin.map(|origin| origin.add(skipped));
        }
        self.conceal(frames, out)
    }

    /// Returns the duration of a DTX packet, in sample frames.
    fn dtx_frames(&self, packet: &EncodedAudio) -> usize {
        if packet.data.is_empty() {
            return self.declared_frames(packet);
        }
        match ::opus::packet::get_nb_samples(&packet.data, self.format.sample_rate) {
            Ok(frames) if frames > 0 => self.whole_steps(frames),
            _ => self.declared_frames(packet),
        }
    }

    /// Returns the packet's declared duration in sample frames, or the previous
    /// packet's when it declares none.
    fn declared_frames(&self, packet: &EncodedAudio) -> usize {
        match self.format.frames_in(packet.duration) {
            0 => self.last_packet_frames,
            frames => self.whole_steps(frames),
        }
    }

    /// Rounds `frames` down to whole concealment steps, within one step and
    /// the longest packet.
    fn whole_steps(&self, frames: usize) -> usize {
        let frames = frames.clamp(self.step_frames, self.pcm_frames);
        frames - frames % self.step_frames
    }

    /// Emits `frames` sample frames of packet loss concealment.
    fn conceal(&mut self, frames: usize, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let mut remaining = frames;
        while remaining > 0 {
            let piece = remaining.min(self.pcm_frames);
            let len = piece * usize::from(self.format.channels);
            let concealed = match self.decoder.decode_float(&[], &mut self.pcm[..len], false) {
                Ok(concealed) if concealed > 0 => concealed.min(piece),
                // Silence keeps the timeline when concealment fails.
                result => {
                    if let Err(error) = result {
                        tracing::error!(stage = %self.name, %error, "Opus packet loss concealment failed; emitting silence");
                    }
                    self.pcm[..len].fill(0.0);
                    piece
                }
            };
            self.stats.concealed_frames += concealed as u64;
            self.emit(concealed, out)?;
            remaining -= concealed;
        }
        Ok(())
    }

    /// Emits the first `frames` sample frames of `pcm`.
    fn emit(&mut self, frames: usize, out: &mut Emitter<'_>) -> Result<(), StageError> {
        if frames == 0 {
            return Ok(());
        }
        let origin = self.origin.unwrap_or(MediaTime::ZERO);
        let timestamp = origin.add(MediaTime::from_samples(self.decoded_frames, self.format.sample_rate).as_duration());

        let decoded = &self.pcm[..frames * usize::from(self.format.channels)];
        let samples = match self.format.sample_format {
            SampleFormat::I16 => Samples::I16(decoded.iter().map(|&sample| f32_to_i16(sample)).collect()),
            SampleFormat::F32 => Samples::F32(Arc::from(decoded)),
        };
        let audio = AudioData::new(self.format, samples).map_err(|error| {
            StageError::fatal(format!("stage {} built invalid output audio", self.name)).with_source(error)
        })?;

        self.decoded_frames += frames as u64;
        let meta = out.next_meta(self.turn, timestamp);
        out.emit(Frame::audio(meta, audio));
        Ok(())
    }

    fn reset(&mut self) -> Result<(), StageError> {
        self.origin = None;
        self.decoded_frames = 0;
        self.decoder.reset_state().map_err(|error| {
            StageError::fatal(format!("stage {}: libopus failed to reset the decoder", self.name)).with_source(error)
        })
    }
}

fn frames_as_usize(frames: u64) -> usize {
    usize::try_from(frames).unwrap_or(usize::MAX)
}

impl Processor for OpusDecoder {
    fn spec(&self) -> StageSpec {
        let input = PortFormat::Encoded {
            codec: Codec::Opus,
            sample_rate: self.packet_rate,
            channels: self.format.channels,
        };
        StageSpec::new(self.name.clone(), input, PortFormat::Audio(self.format))
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let Payload::Encoded(packet) = &frame.payload else {
            return Err(StageError::config(format!(
                "stage {} decodes Opus packets but received a {} frame",
                self.name,
                frame.kind_name()
            )));
        };
        if packet.codec != Codec::Opus
            || packet.sample_rate != self.packet_rate
            || packet.channels != self.format.channels
        {
            return Err(StageError::config(format!(
                "stage {} was built for Opus at {} Hz with {} channels but received {:?} at {} Hz with {} channels",
                self.name,
                self.packet_rate,
                self.format.channels,
                packet.codec,
                packet.sample_rate,
                packet.channels
            )));
        }
        self.turn = frame.meta.turn;
        self.decode(packet, frame.meta.timestamp, out)
    }

    fn control(&mut self, control: &Control, _meta: &FrameMeta, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        if matches!(control, Control::Flush | Control::Interrupt) {
            self.reset()?;
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        self.reset()
    }
}
