//! Sample rate conversion with rubato.
//!
//! - [`StreamResampler`] converts an interleaved `f32` stream between two of
//!   the [`SUPPORTED_RATES`], mono or stereo. Blocks of any size go in. The
//!   resampler runs on whole chunks of 10 ms of input (110 frames at
//!   11,025 Hz), so a short block is held back until its chunk is complete,
//!   and nothing is padded in mid-stream. [`StreamResampler::flush_into`]
//!   ends the stream: it pushes the held-back tail out, drops the resampler's
//!   start-up delay, and brings the total output to round(N × out / in)
//!   frames for N input frames.
//! - [`DriftController`] turns the fill of a downstream buffer into a small
//!   ratio correction for a [`ResamplerKind::Sinc`] resampler, for capture and
//!   playback clocks that differ.
//! - [`Resample`] is the pipeline stage around a [`StreamResampler`].

use std::fmt;

use rubato::audioadapter_buffers::SizeError;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, Resampler, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

mod drift;
mod stage;

pub use drift::DriftController;
pub use stage::Resample;

/// Sample rates the resampler converts between, in Hz.
pub const SUPPORTED_RATES: [u32; 8] = [8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000];

/// Maximum number of interleaved channels a resampler takes (stereo).
pub const MAX_CHANNELS: u16 = 2;

/// Maximum ratio correction [`StreamResampler::set_relative_ratio`] applies,
/// in parts per million. At the limit the pitch moves by 1.7 cents; offsets
/// between real device clocks are expected to be far smaller (an estimate).
pub const MAX_DRIFT_PPM: f64 = 1_000.0;

/// Resampler calls per second of input: each call takes 10 ms of input.
const CHUNKS_PER_SECOND: u32 = 100;

/// The sinc resampler is built for a ratio range slightly wider than
/// ±[`MAX_DRIFT_PPM`], so that a correction clamped to the limit is always
/// inside rubato's bounds.
const SINC_MAX_RELATIVE_RATIO: f64 = 1.002;

/// Sinc filter length, in input samples, when upsampling. Downsampling by a
/// factor k uses k times as many taps, so that the filter spans the same
/// number of output periods and keeps a sharp cutoff below the output Nyquist
/// frequency.
const SINC_BASE_LEN: usize = 128;

/// Sub-sample positions tabulated per sinc filter (rubato's suggested 128).
const SINC_OVERSAMPLING: usize = 128;

/// The rubato resampler behind a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResamplerKind {
    /// rubato's synchronous FFT resampler: a fixed ratio, the cheapest per
    /// frame, and the default.
    Fft,
    /// rubato's asynchronous sinc resampler (cubic interpolation between
    /// tabulated sinc filters): its ratio can be corrected by up to
    /// ±[`MAX_DRIFT_PPM`] while it runs.
    Sinc,
}

/// A resampler that cannot be built with the requested settings.
#[derive(Debug, thiserror::Error)]
pub enum ResamplerBuildError {
    /// The input or output rate is not one of [`SUPPORTED_RATES`].
    #[error("sample rate {rate} Hz is not supported; use one of {SUPPORTED_RATES:?} Hz")]
    UnsupportedRate {
        /// The rejected rate, in Hz.
        rate: u32,
    },
    /// The channel count is 0 or above [`MAX_CHANNELS`].
    #[error("{channels} channels are not supported; the resampler takes 1 or 2 interleaved channels")]
    UnsupportedChannels {
        /// The rejected channel count.
        channels: u16,
    },
    /// rubato rejected the settings.
    #[error("rubato could not build a {kind:?} resampler from {input_rate} Hz to {output_rate} Hz")]
    Rubato {
        /// The requested resampler.
        kind: ResamplerKind,
        /// Input rate, in Hz.
        input_rate: u32,
        /// Output rate, in Hz.
        output_rate: u32,
        /// rubato's error.
        #[source]
        source: rubato::ResamplerConstructionError,
    },
}

/// A failure while resampling.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// The input is not a whole number of interleaved frames.
    #[error("{samples} samples do not split into frames of {channels} channels")]
    PartialFrame {
        /// Samples passed in, over all channels.
        samples: usize,
        /// Channel count of the resampler.
        channels: u16,
    },
    /// The caller's output buffer is shorter than the call may need.
    #[error(
        "the output buffer holds {actual} samples but the call may write {expected}; \
         size it with output_len_max or flush_len"
    )]
    OutputTooSmall {
        /// Samples the call may write.
        expected: usize,
        /// Length of the buffer passed in.
        actual: usize,
    },
    /// A ratio correction was requested from a fixed-ratio resampler.
    #[error("the {kind:?} resampler has a fixed ratio; build a Sinc resampler to correct clock drift")]
    NotAdjustable {
        /// The resampler's kind.
        kind: ResamplerKind,
    },
    /// The relative ratio is NaN or infinite.
    #[error("relative ratio {ratio} is not a finite number")]
    InvalidRatio {
        /// The rejected ratio.
        ratio: f64,
    },
    /// rubato failed on a chunk.
    #[error("rubato failed to resample a chunk")]
    Rubato(#[from] rubato::ResampleError),
    /// A buffer did not match the shape rubato was given.
    #[error("a resampler buffer does not match its declared shape")]
    Buffer(#[from] SizeError),
    /// The flush ran more chunks than the tail can need without producing it.
    #[error("flushing stopped after {chunks} chunks with {missing} output frames still missing")]
    FlushStalled {
        /// Chunks of silence pushed through.
        chunks: usize,
        /// Output frames the flush still owed.
        missing: usize,
    },
}

/// Returns `Ok` when `rate` is one of [`SUPPORTED_RATES`].
fn check_rate(rate: u32) -> Result<(), ResamplerBuildError> {
    if SUPPORTED_RATES.contains(&rate) { Ok(()) } else { Err(ResamplerBuildError::UnsupportedRate { rate }) }
}

/// Returns the sinc filter settings for a rate pair.
fn sinc_parameters(input_rate: u32, output_rate: u32) -> SincInterpolationParameters {
    let downsampling = input_rate.div_ceil(output_rate).max(1) as usize;
    SincInterpolationParameters {
        sinc_len: SINC_BASE_LEN * downsampling,
        // rubato derives the cutoff from the filter length and window.
        f_cutoff: None,
        oversampling_factor: SINC_OVERSAMPLING,
        interpolation: SincInterpolationType::Cubic,
        window: WindowFunction::BlackmanHarris2,
    }
}

/// Builds the rubato resampler that a [`StreamResampler`] with these settings
/// runs, with a fixed input size of 10 ms of input. Exposed so that tests can
/// compare the stream's output with rubato's own whole-clip processing.
pub fn build_rubato(
    input_rate: u32,
    output_rate: u32,
    channels: u16,
    kind: ResamplerKind,
) -> Result<Box<dyn Resampler<f32>>, ResamplerBuildError> {
    check_rate(input_rate)?;
    check_rate(output_rate)?;
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(ResamplerBuildError::UnsupportedChannels { channels });
    }

    let channel_count = usize::from(channels);
    let chunk_hint = (input_rate / CHUNKS_PER_SECOND) as usize;
    let rubato_error = |source| ResamplerBuildError::Rubato { kind, input_rate, output_rate, source };
    let resampler: Box<dyn Resampler<f32>> = match kind {
        ResamplerKind::Fft => Box::new(
            Fft::<f32>::new(input_rate as usize, output_rate as usize, chunk_hint, channel_count, FixedSync::Input)
                .map_err(rubato_error)?,
        ),
        ResamplerKind::Sinc => Box::new(
            Async::<f32>::new_sinc(
                f64::from(output_rate) / f64::from(input_rate),
                SINC_MAX_RELATIVE_RATIO,
                &sinc_parameters(input_rate, output_rate),
                chunk_hint,
                channel_count,
                FixedAsync::Input,
            )
            .map_err(rubato_error)?,
        ),
    };
    Ok(resampler)
}

/// The rubato resampler with its output buffer and delay bookkeeping.
struct Engine {
    resampler: Box<dyn Resampler<f32>>,
    /// One call's output, interleaved.
    output: Vec<f32>,
    /// Capacity of `output` in frames: rubato's maximum per call.
    output_capacity: usize,
    channels: usize,
    /// Output frames of the start-up delay not yet dropped.
    delay_left: usize,
}

impl Engine {
    /// Resamples one chunk of `frames` interleaved frames, drops what is left
    /// of the start-up delay, and copies at most `limit` of the remaining
    /// frames to the front of `out`. Returns the frames copied.
    fn run_chunk(
        &mut self,
        chunk: &[f32],
        frames: usize,
        out: &mut [f32],
        limit: usize,
    ) -> Result<usize, ResampleError> {
        let input = InterleavedSlice::new(chunk, self.channels, frames)?;
        let mut output = InterleavedSlice::new_mut(&mut self.output, self.channels, self.output_capacity)?;
        let (_, produced) = self.resampler.process_into_buffer(&input, &mut output, None)?;

        // The first output frames are the filter warming up on silence.
        let skipped = produced.min(self.delay_left);
        self.delay_left -= skipped;

        let kept = (produced - skipped).min(limit);
        let start = skipped * self.channels;
        let len = kept * self.channels;
        out[..len].copy_from_slice(&self.output[start..start + len]);
        Ok(kept)
    }

    fn reset(&mut self) {
        self.resampler.reset();
        self.delay_left = self.resampler.output_delay();
    }
}

/// A stateful resampler for one interleaved `f32` stream.
///
/// [`process_into`](Self::process_into) and [`flush_into`](Self::flush_into)
/// write into the caller's buffer and allocate nothing, because the buffers
/// they use are allocated by [`new`](Self::new). The output is aligned with
/// the input: the resampler's start-up delay (`output_delay()` in rubato) is
/// dropped from the front, and the flush brings the total to
/// round(N × out / in) frames, adjusted by any ratio corrections.
///
/// NOTE: rubato reports the delay in whole output frames, and the true delay
/// differs from it by up to 1.1 frames for some rate pairs (measured with
/// rubato 5.1), so the output can lead or lag the input by that much.
///
/// Chunk boundaries do not depend on how the caller splits the input, so the
/// output is the same for any block sizes.
pub struct StreamResampler {
    kind: ResamplerKind,
    input_rate: u32,
    output_rate: u32,
    channels: usize,
    engine: Engine,
    /// Input frames per rubato call.
    chunk_frames: usize,
    /// The partly filled chunk, interleaved. Its first `pending_frames` frames are valid.
    pending: Vec<f32>,
    pending_frames: usize,
    /// Input frames taken since the stream started.
    input_frames: u64,
    /// Output frames written since the stream started.
    output_frames: u64,
    /// The ratio correction in force, 1.0 when there is none.
    relative_ratio: f64,
    /// Output frames gained (positive) or lost to ratio corrections so far.
    correction_frames: f64,
}

impl fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamResampler")
            .field("kind", &self.kind)
            .field("input_rate", &self.input_rate)
            .field("output_rate", &self.output_rate)
            .field("channels", &self.channels)
            .field("chunk_frames", &self.chunk_frames)
            .field("pending_frames", &self.pending_frames)
            .field("input_frames", &self.input_frames)
            .field("output_frames", &self.output_frames)
            .field("relative_ratio", &self.relative_ratio)
            .finish_non_exhaustive()
    }
}

impl StreamResampler {
    /// Builds a resampler from `input_rate` to `output_rate` (both in Hz, both
    /// in [`SUPPORTED_RATES`]) for `channels` interleaved channels.
    pub fn new(
        input_rate: u32,
        output_rate: u32,
        channels: u16,
        kind: ResamplerKind,
    ) -> Result<Self, ResamplerBuildError> {
        let resampler = build_rubato(input_rate, output_rate, channels, kind)?;
        let channel_count = usize::from(channels);

        // With a fixed input size, rubato takes the same number of frames on every call.
        let chunk_frames = resampler.input_frames_next();
        let output_capacity = resampler.output_frames_max();
        let delay = resampler.output_delay();
        Ok(StreamResampler {
            kind,
            input_rate,
            output_rate,
            channels: channel_count,
            engine: Engine {
                resampler,
                output: vec![0.0; output_capacity * channel_count],
                output_capacity,
                channels: channel_count,
                delay_left: delay,
            },
            chunk_frames,
            pending: vec![0.0; chunk_frames * channel_count],
            pending_frames: 0,
            input_frames: 0,
            output_frames: 0,
            relative_ratio: 1.0,
            correction_frames: 0.0,
        })
    }

    /// Returns the resampler's kind.
    pub fn kind(&self) -> ResamplerKind {
        self.kind
    }

    /// Returns the input rate, in Hz.
    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    /// Returns the output rate, in Hz.
    pub fn output_rate(&self) -> u32 {
        self.output_rate
    }

    /// Returns the number of interleaved channels.
    pub fn channels(&self) -> u16 {
        // At most MAX_CHANNELS, checked by the constructor.
        self.channels as u16
    }

    /// Returns the input frames per rubato call.
    pub fn chunk_frames(&self) -> usize {
        self.chunk_frames
    }

    /// Returns the resampler's start-up delay, in output frames, which the
    /// output does not contain.
    pub fn output_delay(&self) -> usize {
        self.engine.resampler.output_delay()
    }

    /// Returns the ratio correction in force (1.0 for none).
    pub fn relative_ratio(&self) -> f64 {
        self.relative_ratio
    }

    /// Returns the input frames held back until their chunk is complete.
    pub fn pending_frames(&self) -> usize {
        self.pending_frames
    }

    /// Returns the held-back input in output frames at the current ratio: the
    /// audio a downstream buffer will receive once the chunk completes. A
    /// [`DriftController`] should see the downstream buffer's fill plus this,
    /// or it sees the fill move only in whole chunks.
    pub fn pending_output_frames(&self) -> f64 {
        self.pending_frames as f64 * self.nominal_ratio() * self.relative_ratio
    }

    /// Returns the input frames taken since the stream started.
    pub fn input_frames(&self) -> u64 {
        self.input_frames
    }

    /// Returns the output frames written since the stream started.
    pub fn output_frames(&self) -> u64 {
        self.output_frames
    }

    /// Returns the largest number of samples (over all channels) that
    /// [`process_into`](Self::process_into) may write for an input of
    /// `input_len` samples, given the input held back now.
    pub fn output_len_max(&self, input_len: usize) -> usize {
        let frames = self.pending_frames + input_len / self.channels;
        (frames / self.chunk_frames) * self.engine.output_capacity * self.channels
    }

    /// Resamples interleaved `input` into the front of `output` and returns
    /// the number of samples written (over all channels).
    ///
    /// Input that does not fill a whole chunk is held back for the next call
    /// or the flush. `output` must hold at least
    /// [`output_len_max(input.len())`](Self::output_len_max) samples, and
    /// nothing is consumed when it does not. Allocates nothing.
    pub fn process_into(&mut self, input: &[f32], output: &mut [f32]) -> Result<usize, ResampleError> {
        let channels = self.channels;
        if !input.len().is_multiple_of(channels) {
            return Err(ResampleError::PartialFrame { samples: input.len(), channels: self.channels() });
        }
        let expected = self.output_len_max(input.len());
        if output.len() < expected {
            return Err(ResampleError::OutputTooSmall { expected, actual: output.len() });
        }

        let frames_in = input.len() / channels;
        self.input_frames += frames_in as u64;
        self.correction_frames += frames_in as f64 * self.nominal_ratio() * (self.relative_ratio - 1.0);

        let chunk_len = self.chunk_frames * channels;
        let mut rest = input;
        let mut written = 0;
        while !rest.is_empty() {
            if self.pending_frames == 0 && rest.len() >= chunk_len {
                // A whole chunk straight from the caller's block, without a copy.
                let frames =
                    self.engine.run_chunk(&rest[..chunk_len], self.chunk_frames, &mut output[written..], usize::MAX)?;
                written += frames * channels;
                rest = &rest[chunk_len..];
                continue;
            }

            // Top up the held-back chunk; it runs once it is complete.
            let filled = self.pending_frames * channels;
            let take = (chunk_len - filled).min(rest.len());
            self.pending[filled..filled + take].copy_from_slice(&rest[..take]);
            self.pending_frames += take / channels;
            rest = &rest[take..];
            if self.pending_frames == self.chunk_frames {
                let frames =
                    self.engine.run_chunk(&self.pending, self.chunk_frames, &mut output[written..], usize::MAX)?;
                written += frames * channels;
                self.pending_frames = 0;
            }
        }

        self.output_frames += (written / channels) as u64;
        Ok(written)
    }

    /// Returns the number of samples (over all channels) that
    /// [`flush_into`](Self::flush_into) will write now.
    pub fn flush_len(&self) -> usize {
        let missing = self.expected_output_frames().saturating_sub(self.output_frames);
        usize::try_from(missing).unwrap_or(usize::MAX).saturating_mul(self.channels)
    }

    /// Ends the stream: resamples the held-back tail, followed by silence
    /// until the filter has passed it all, and writes exactly
    /// [`flush_len`](Self::flush_len) samples into the front of `output`.
    /// Returns the samples written. The resampler is then reset for a new
    /// stream. A stream that received no input writes nothing. Allocates nothing.
    pub fn flush_into(&mut self, output: &mut [f32]) -> Result<usize, ResampleError> {
        let expected = self.flush_len();
        if output.len() < expected {
            return Err(ResampleError::OutputTooSmall { expected, actual: output.len() });
        }

        // Each chunk of silence yields about chunk × ratio frames; allow twice
        // the chunks that should need, plus a few for the delay's rounding.
        let mut missing = expected / self.channels;
        let frames_per_chunk =
            (self.chunk_frames as u64 * u64::from(self.output_rate) / u64::from(self.input_rate)).max(2);
        let chunk_limit = 2 * (self.engine.delay_left + missing) / frames_per_chunk as usize + 4;

        let mut written = 0;
        let mut chunks = 0;
        while missing > 0 {
            if chunks == chunk_limit {
                return Err(ResampleError::FlushStalled { chunks, missing });
            }
            // Padding with silence is right only here, after the last input.
            self.pending[self.pending_frames * self.channels..].fill(0.0);
            let frames = self.engine.run_chunk(&self.pending, self.chunk_frames, &mut output[written..], missing)?;
            self.pending_frames = 0;
            written += frames * self.channels;
            missing -= frames;
            chunks += 1;
        }

        self.reset();
        Ok(written)
    }

    /// Discards all buffered input and filter state, and the ratio correction,
    /// so the next sample starts a new stream.
    pub fn reset(&mut self) {
        self.engine.reset();
        self.pending_frames = 0;
        self.input_frames = 0;
        self.output_frames = 0;
        self.relative_ratio = 1.0;
        self.correction_frames = 0.0;
    }

    /// Sets the ratio correction relative to the nominal out / in ratio, for
    /// clock drift: above 1.0 gives more output frames per input frame. The
    /// value is clamped to 1 ± [`MAX_DRIFT_PPM`] × 10⁻⁶ and ramped in over the
    /// next chunk, and the clamped value is returned. Only a
    /// [`ResamplerKind::Sinc`] resampler can be corrected.
    pub fn set_relative_ratio(&mut self, relative: f64) -> Result<f64, ResampleError> {
        if !relative.is_finite() {
            return Err(ResampleError::InvalidRatio { ratio: relative });
        }
        let limit = MAX_DRIFT_PPM * 1e-6;
        let clamped = relative.clamp(1.0 - limit, 1.0 + limit);
        let Some(adjustable) = self.engine.resampler.as_adjustable() else {
            return Err(ResampleError::NotAdjustable { kind: self.kind });
        };
        adjustable.set_resample_ratio_relative(clamped, true)?;
        self.relative_ratio = clamped;
        Ok(clamped)
    }

    /// Resamples `input` into a new vector; see [`process_into`](Self::process_into).
    pub fn process(&mut self, input: &[f32]) -> Result<Vec<f32>, ResampleError> {
        let mut output = vec![0.0; self.output_len_max(input.len())];
        let written = self.process_into(input, &mut output)?;
        output.truncate(written);
        Ok(output)
    }

    /// Ends the stream into a new vector; see [`flush_into`](Self::flush_into).
    pub fn flush(&mut self) -> Result<Vec<f32>, ResampleError> {
        let mut output = vec![0.0; self.flush_len()];
        let written = self.flush_into(&mut output)?;
        output.truncate(written);
        Ok(output)
    }

    fn nominal_ratio(&self) -> f64 {
        f64::from(self.output_rate) / f64::from(self.input_rate)
    }

    /// Returns the output frames the stream should have in total once
    /// flushed: round(N × out / in) plus the frames gained or lost to ratio
    /// corrections. The nominal part is computed in integers so that it is
    /// exact for any stream length.
    fn expected_output_frames(&self) -> u64 {
        if self.input_frames == 0 {
            return 0;
        }
        let scaled = u128::from(self.input_frames) * u128::from(self.output_rate);
        let input_rate = u128::from(self.input_rate);
        let whole = i128::try_from(scaled / input_rate).unwrap_or(i128::MAX);
        let fraction = (scaled % input_rate) as f64 / input_rate as f64;
        let rounded = whole.saturating_add((fraction + self.correction_frames).round() as i128);
        u64::try_from(rounded.max(0)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unsupported_rate() {
        let error = StreamResampler::new(44_000, 16_000, 1, ResamplerKind::Fft).expect_err("44 kHz is not supported");
        assert!(matches!(error, ResamplerBuildError::UnsupportedRate { rate: 44_000 }));
        let message = error.to_string();
        assert!(message.contains("44000"), "{message}");
        assert!(message.contains("48000"), "{message}");
    }

    #[test]
    fn rejects_three_channels() {
        let error = StreamResampler::new(48_000, 16_000, 3, ResamplerKind::Sinc).expect_err("3 channels");
        assert!(matches!(error, ResamplerBuildError::UnsupportedChannels { channels: 3 }));
    }

    #[test]
    fn rejects_partial_frame() {
        let mut resampler = StreamResampler::new(48_000, 16_000, 2, ResamplerKind::Fft).expect("valid settings");
        let error = resampler.process(&[0.0; 3]).expect_err("3 samples of stereo");
        assert!(matches!(error, ResampleError::PartialFrame { samples: 3, channels: 2 }));
    }

    #[test]
    fn rejects_short_output_buffer() {
        let mut resampler = StreamResampler::new(48_000, 16_000, 1, ResamplerKind::Fft).expect("valid settings");
        let input = vec![0.0; 960];
        let mut output = vec![0.0; 10];
        let error = resampler.process_into(&input, &mut output).expect_err("10 samples cannot hold 20 ms");
        assert!(matches!(error, ResampleError::OutputTooSmall { actual: 10, .. }));
        assert_eq!(resampler.input_frames(), 0, "a rejected call consumes nothing");
    }

    #[test]
    fn fft_is_not_adjustable() {
        let mut resampler = StreamResampler::new(48_000, 16_000, 1, ResamplerKind::Fft).expect("valid settings");
        let error = resampler.set_relative_ratio(1.0001).expect_err("FFT has a fixed ratio");
        assert!(matches!(error, ResampleError::NotAdjustable { kind: ResamplerKind::Fft }));
    }

    #[test]
    fn sinc_ratio_is_clamped() {
        let mut resampler = StreamResampler::new(48_000, 16_000, 1, ResamplerKind::Sinc).expect("valid settings");
        let applied = resampler.set_relative_ratio(1.5).expect("clamped, not rejected");
        assert!((applied - 1.001).abs() < 1e-12, "applied {applied}");
        let applied = resampler.set_relative_ratio(0.5).expect("clamped, not rejected");
        assert!((applied - 0.999).abs() < 1e-12, "applied {applied}");
        let error = resampler.set_relative_ratio(f64::NAN).expect_err("NaN");
        assert!(matches!(error, ResampleError::InvalidRatio { .. }));
    }

    #[test]
    fn short_block_is_held_back() {
        let mut resampler = StreamResampler::new(48_000, 16_000, 1, ResamplerKind::Fft).expect("valid settings");
        let output = resampler.process(&[0.5; 100]).expect("valid block");
        assert!(output.is_empty(), "100 frames are less than one chunk");
        assert_eq!(resampler.pending_frames(), 100);
    }

    #[test]
    fn one_second_48k_to_44k1_is_exact() {
        for kind in [ResamplerKind::Fft, ResamplerKind::Sinc] {
            let mut resampler = StreamResampler::new(48_000, 44_100, 1, kind).expect("valid settings");
            let input = vec![0.25_f32; 48_000];
            let mut total = resampler.process(&input).expect("valid block").len();
            total += resampler.flush().expect("flush").len();
            assert_eq!(total, 44_100, "{kind:?}");
        }
    }

    #[test]
    fn empty_stream_flushes_nothing() {
        let mut resampler = StreamResampler::new(16_000, 48_000, 2, ResamplerKind::Fft).expect("valid settings");
        assert!(resampler.process(&[]).expect("empty block").is_empty());
        assert_eq!(resampler.flush_len(), 0);
        assert!(resampler.flush().expect("flush").is_empty());
    }
}
