//! Log-mel spectrogram features in the form Whisper models take.
//!
//! The computation follows `log_mel_spectrogram` and `pad_or_trim` in OpenAI's
//! Whisper (`whisper/audio.py`) with its standard parameters (16 kHz audio,
//! 400-sample FFT, 160-sample hop, 30 s windows of 3000 frames):
//!
//! 1. The window's audio is followed by zeros up to 30 s and reflect-padded
//!    by half an FFT at the start, as `torch.stft(center=True)` does.
//! 2. Each frame is weighted by a periodic Hann window. Its power spectrum
//!    (201 bins) goes through a mel filterbank built like
//!    `librosa.filters.mel`, with the Slaney mel scale and Slaney area
//!    normalization.
//! 3. `log10` of each value (floored at 1e-10), clamped to at most 8 below
//!    the window's maximum, then mapped by `(x + 4) / 4`.
//!
//! NOTE: Whisper's own long-form transcription takes the maximum in step 3
//! over the whole recording. Here it is taken per 30 s window, so the
//! features differ for utterances longer than one window.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate of the features' input, in Hz.
pub(crate) const SAMPLE_RATE: usize = 16_000;
/// FFT length, in samples (25 ms).
pub(crate) const N_FFT: usize = 400;
/// Distance between frames, in samples (10 ms).
pub(crate) const HOP_LENGTH: usize = 160;
/// Frames per window (30 s).
pub(crate) const N_FRAMES: usize = 3000;
/// Samples per window (30 s).
pub(crate) const N_SAMPLES: usize = N_FRAMES * HOP_LENGTH;

/// Power spectrum bins per frame.
const N_BINS: usize = N_FFT / 2 + 1;
/// The floor of the mel energies before the logarithm.
const MIN_ENERGY: f32 = 1e-10;
/// The dynamic range kept below the window's maximum, in log10 units (80 dB).
const DYNAMIC_RANGE: f32 = 8.0;

/// One triangular mel filter: its weights over a run of FFT bins.
#[derive(Debug, Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f32>,
}

/// Computes Whisper log-mel features, reusing its FFT plan and buffers.
pub(crate) struct MelExtractor {
    filters: Vec<MelFilter>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
    frame: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
}

impl std::fmt::Debug for MelExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelExtractor").field("n_mels", &self.filters.len()).finish_non_exhaustive()
    }
}

impl MelExtractor {
    /// Builds an extractor with `n_mels` mel bands (80 for Whisper tiny.en).
    pub(crate) fn new(n_mels: usize) -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        MelExtractor {
            filters: mel_filters(n_mels),
            window: hann_window(N_FFT),
            fft,
            frame: vec![0.0; N_FFT],
            spectrum,
            scratch,
            power: vec![0.0; N_BINS],
        }
    }

    /// Returns the number of mel bands.
    pub(crate) fn n_mels(&self) -> usize {
        self.filters.len()
    }

    /// Writes the features of one window into `out`, replacing its contents:
    /// `n_mels * N_FRAMES` values, band-major (`out[band * N_FRAMES + frame]`).
    /// Samples past [`N_SAMPLES`] are ignored; fewer are followed by silence.
    pub(crate) fn window_features(&mut self, samples: &[f32], out: &mut Vec<f32>) {
        let samples = &samples[..samples.len().min(N_SAMPLES)];
        let n_mels = self.filters.len();
        out.clear();
        out.resize(n_mels * N_FRAMES, MIN_ENERGY.log10());

        // Frames whose window lies wholly in the zero padding keep the floor
        // value written above, so only frames that touch the audio are computed.
        let half = N_FFT / 2;
        let audible_frames = ((samples.len() + half).div_ceil(HOP_LENGTH)).min(N_FRAMES);
        let mut max_log = f32::NEG_INFINITY;
        for frame_index in 0..audible_frames {
            self.power_spectrum(samples, frame_index);
            for (band, filter) in self.filters.iter().enumerate() {
                let bins = &self.power[filter.first_bin..filter.first_bin + filter.weights.len()];
                let energy: f32 = bins.iter().zip(&filter.weights).map(|(power, weight)| power * weight).sum();
                let log = energy.max(MIN_ENERGY).log10();
                max_log = max_log.max(log);
                out[band * N_FRAMES + frame_index] = log;
            }
        }
        if audible_frames < N_FRAMES {
            max_log = max_log.max(MIN_ENERGY.log10());
        }

        let floor = max_log - DYNAMIC_RANGE;
        for value in out.iter_mut() {
            *value = (value.max(floor) + 4.0) / 4.0;
        }
    }

    /// Fills `self.power` with the power spectrum of frame `frame_index`,
    /// centred on sample `frame_index * HOP_LENGTH`.
    fn power_spectrum(&mut self, samples: &[f32], frame_index: usize) {
        let half = N_FFT / 2;
        let center = frame_index * HOP_LENGTH;
        for (offset, (slot, weight)) in self.frame.iter_mut().zip(&self.window).enumerate() {
            // Position in the stream, negative inside the reflect padding.
            let position = (center + offset) as isize - half as isize;
            *slot = sample_at(samples, position) * weight;
        }

        // realfft fails only when a buffer length differs from the plan's, and
        // these buffers were sized by the plan, so the fallback is not expected to run.
        if self.fft.process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch).is_err() {
            self.power.fill(0.0);
            return;
        }
        for (power, bin) in self.power.iter_mut().zip(&self.spectrum) {
            *power = bin.norm_sqr();
        }
    }
}

/// Returns the sample at `position` of the reflect-padded, zero-extended stream.
fn sample_at(samples: &[f32], position: isize) -> f32 {
    let index = position.unsigned_abs();
    samples.get(index).copied().unwrap_or(0.0)
}

/// Returns a periodic Hann window, as `torch.hann_window(length)` builds it.
fn hann_window(length: usize) -> Vec<f32> {
    (0..length)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * n as f64 / length as f64;
            (0.5 - 0.5 * phase.cos()) as f32
        })
        .collect()
}

/// Slaney mel scale: linear below 1 kHz, logarithmic above.
const LINEAR_HZ_PER_MEL: f64 = 200.0 / 3.0;
const LOG_START_HZ: f64 = 1000.0;
const LOG_START_MEL: f64 = LOG_START_HZ / LINEAR_HZ_PER_MEL;

fn log_step() -> f64 {
    6.4_f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz < LOG_START_HZ { hz / LINEAR_HZ_PER_MEL } else { LOG_START_MEL + (hz / LOG_START_HZ).ln() / log_step() }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel < LOG_START_MEL {
        mel * LINEAR_HZ_PER_MEL
    } else {
        LOG_START_HZ * ((mel - LOG_START_MEL) * log_step()).exp()
    }
}

/// Builds `n_mels` triangular filters from 0 Hz to the Nyquist frequency,
/// each scaled to unit area in Hz (Slaney normalization).
fn mel_filters(n_mels: usize) -> Vec<MelFilter> {
    let nyquist = SAMPLE_RATE as f64 / 2.0;
    let top_mel = hz_to_mel(nyquist);
    let edges: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(top_mel * i as f64 / (n_mels + 1) as f64)).collect();
    let bin_hz: Vec<f64> = (0..N_BINS).map(|bin| bin as f64 * SAMPLE_RATE as f64 / N_FFT as f64).collect();

    (0..n_mels)
        .map(|band| {
            let (low, center, high) = (edges[band], edges[band + 1], edges[band + 2]);
            let scale = 2.0 / (high - low);
            let weights: Vec<f64> = bin_hz
                .iter()
                .map(|&hz| {
                    let rising = (hz - low) / (center - low);
                    let falling = (high - hz) / (high - center);
                    rising.min(falling).max(0.0) * scale
                })
                .collect();

            // Keep only the run of non-zero weights.
            let first_bin = weights.iter().position(|&w| w > 0.0).unwrap_or(0);
            let last_bin = weights.iter().rposition(|&w| w > 0.0).unwrap_or(first_bin);
            MelFilter { first_bin, weights: weights[first_bin..=last_bin].iter().map(|&w| w as f32).collect() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f32, seconds: f32, amplitude: f32) -> Vec<f32> {
        let count = (seconds * SAMPLE_RATE as f32) as usize;
        (0..count)
            .map(|n| amplitude * (2.0 * std::f32::consts::PI * hz * n as f32 / SAMPLE_RATE as f32).sin())
            .collect()
    }

    #[test]
    fn mel_scale_round_trip() {
        for hz in [0.0, 300.0, 999.0, 1000.0, 4321.0, 8000.0] {
            let back = mel_to_hz(hz_to_mel(hz));
            assert!((back - hz).abs() < 1e-6, "{hz} Hz came back as {back}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn filters_cover_spectrum_in_order() {
        let filters = mel_filters(80);
        assert_eq!(filters.len(), 80);
        let mut previous_peak = 0;
        for (band, filter) in filters.iter().enumerate() {
            assert!(!filter.weights.is_empty(), "band {band} is empty");
            assert!(filter.first_bin + filter.weights.len() <= N_BINS);
            assert!(filter.weights.iter().all(|&w| w >= 0.0));
            let peak = filter.first_bin
                + filter.weights.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
            assert!(peak >= previous_peak, "band {band} peaks at bin {peak}, before {previous_peak}");
            previous_peak = peak;
        }
    }

    /// Returns the weight of `band` at FFT `bin`, zero outside the filter's run.
    fn weight(filters: &[MelFilter], band: usize, bin: usize) -> f32 {
        let filter = &filters[band];
        bin.checked_sub(filter.first_bin).and_then(|offset| filter.weights.get(offset)).copied().unwrap_or(0.0)
    }

    #[test]
    fn filter_weights_match_reference() {
        // Reference values from the mel_spec crate 0.3.4,
        // `mel::mel(16000.0, 400, 80, None, None, false, true)`, which its
        // documentation states is within 1e-7 of librosa's filterbank.
        let filters = mel_filters(80);
        let expected = [
            (0, 0, 0.0),
            (0, 1, 0.024_862_594),
            (0, 2, 0.0),
            (1, 2, 0.022_871_772),
            (79, 198, 0.000_897_518),
            (79, 199, 0.000_448_759),
            (79, 200, 0.0),
        ];
        for (band, bin, value) in expected {
            let actual = weight(&filters, band, bin);
            assert!((actual - value).abs() < 1e-6, "band {band}, bin {bin}: {actual} instead of {value}");
        }

        let first_bins: [usize; 80] = [
            1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
            28, 29, 30, 31, 32, 33, 35, 36, 37, 39, 40, 42, 44, 45, 47, 49, 51, 53, 55, 57, 59, 61, 64, 66, 69, 71, 74,
            77, 80, 83, 86, 90, 93, 97, 101, 105, 109, 113, 117, 122, 127, 132, 137, 142, 148, 153, 159, 166, 172, 179,
            186,
        ];
        for (band, filter) in filters.iter().enumerate() {
            assert_eq!(filter.first_bin, first_bins[band], "first non-zero bin of band {band}");
        }
    }

    #[test]
    fn silence_gives_uniform_features() {
        let mut extractor = MelExtractor::new(80);
        let mut features = Vec::new();
        extractor.window_features(&[0.0; 16_000], &mut features);
        assert_eq!(features.len(), 80 * N_FRAMES);
        let expected = (MIN_ENERGY.log10() + 4.0) / 4.0;
        assert!(features.iter().all(|&v| (v - expected).abs() < 1e-6));
    }

    #[test]
    fn tone_peaks_in_its_band() {
        let mut extractor = MelExtractor::new(80);
        let mut features = Vec::new();
        extractor.window_features(&sine(1000.0, 1.0, 0.5), &mut features);

        // Band whose filter peaks nearest 1 kHz (bin 25).
        let frame = 50;
        let loudest = (0..80)
            .max_by(|&a, &b| features[a * N_FRAMES + frame].total_cmp(&features[b * N_FRAMES + frame]))
            .unwrap_or(0);
        let filter = &extractor.filters[loudest];
        assert!((filter.first_bin..filter.first_bin + filter.weights.len()).contains(&25), "band {loudest}");

        // After the tone the features fall to the floor of the dynamic range.
        let quiet = features[loudest * N_FRAMES + 500];
        let loud = features[loudest * N_FRAMES + frame];
        assert!((loud - quiet - DYNAMIC_RANGE / 4.0).abs() < 1e-3, "loud {loud}, quiet {quiet}");
    }

    #[test]
    fn long_input_is_cut_to_one_window() {
        let mut extractor = MelExtractor::new(80);
        let mut features = Vec::new();
        extractor.window_features(&sine(440.0, 31.0, 0.1), &mut features);
        assert_eq!(features.len(), 80 * N_FRAMES);
        assert!(features.iter().all(|v| v.is_finite()));
    }
}
