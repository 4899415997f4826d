//! The WebRTC voice activity detector (libfvad, through the `webrtc-vad` crate).
//!
//! libfvad decides speech or no speech for frames of exactly 10, 20 or 30 ms
//! at 8, 16, 32 or 48 kHz. `webrtc-vad` 0.4 indexes the first sample of the
//! slice it is given, so an empty slice panics, and its `reset` also puts the
//! rate and mode back to their defaults. [`WebRtcVad`] checks rate and frame
//! length when it is built, only ever passes whole frames, and sets the rate
//! and mode again after a reset.

use mentis_pipeline::frame::f32_to_i16;
use mentis_pipeline::stage::Execution;

use super::segmenter::SegmenterConfig;
use super::{Pcm, Rechunker, VadConfigError, VadError, VoiceDetector};

/// Sample rates libfvad accepts, in Hz.
pub const SUPPORTED_RATES: &[u32] = &[8_000, 16_000, 32_000, 48_000];

/// Frame durations libfvad accepts, in milliseconds.
pub const SUPPORTED_FRAME_MS: &[u32] = &[10, 20, 30];

/// libfvad's aggressiveness mode. Higher modes report speech less often:
/// fewer false alarms in noise, more missed soft speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggressiveness {
    /// Mode 0: reports speech most readily.
    Quality,
    /// Mode 1.
    LowBitrate,
    /// Mode 2.
    Aggressive,
    /// Mode 3: reports speech least readily.
    VeryAggressive,
}

impl Aggressiveness {
    fn mode(self) -> webrtc_vad::VadMode {
        match self {
            Aggressiveness::Quality => webrtc_vad::VadMode::Quality,
            Aggressiveness::LowBitrate => webrtc_vad::VadMode::LowBitrate,
            Aggressiveness::Aggressive => webrtc_vad::VadMode::Aggressive,
            Aggressiveness::VeryAggressive => webrtc_vad::VadMode::VeryAggressive,
        }
    }
}

/// Settings of a [`WebRtcVad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebRtcConfig {
    /// Input sample rate, in Hz: 8000, 16000, 32000 or 48000.
    pub sample_rate: u32,
    /// Frame duration, in milliseconds: 10, 20 or 30.
    pub frame_ms: u32,
    /// The aggressiveness mode.
    pub aggressiveness: Aggressiveness,
}

impl WebRtcConfig {
    /// Returns the defaults at `sample_rate`: 20 ms frames and
    /// [`Aggressiveness::VeryAggressive`].
    ///
    /// Of modes 2 and 3, mode 3 called the fewest frames of seeded white noise
    /// at -40 dBFS speech (60 against 796, over 199 five-second runs), and it
    /// still finds each utterance of the LibriVox recordings that
    /// `stages/tests/conformance_vad.rs` runs.
    pub fn new(sample_rate: u32) -> Self {
        WebRtcConfig { sample_rate, frame_ms: 20, aggressiveness: Aggressiveness::VeryAggressive }
    }
}

/// Owns a libfvad instance.
struct Fvad(webrtc_vad::Vad);

// SAFETY: `webrtc_vad::Vad` contains a raw pointer to a heap-allocated libfvad
// instance, which makes it `!Send`. The instance is owned by this value alone,
// libfvad keeps no global or thread-local state (its statics are constant
// tables), and `Fvad` is not `Sync`, so calls never run from two threads at
// once. Moving it to another thread is therefore sound.
unsafe impl Send for Fvad {}

/// The WebRTC voice activity detector: a probability of 1.0 or 0.0 per frame.
pub struct WebRtcVad {
    config: WebRtcConfig,
    frame_samples: usize,
    vad: Fvad,
    rechunker: Rechunker<i16>,
    converted: Vec<i16>,
}

impl std::fmt::Debug for WebRtcVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcVad")
            .field("config", &self.config)
            .field("buffered", &self.rechunker.waiting())
            .finish_non_exhaustive()
    }
}

impl WebRtcVad {
    /// Validates the settings and creates the detector.
    pub fn new(config: WebRtcConfig) -> Result<Self, VadConfigError> {
        let rate = sample_rate_of(config.sample_rate)?;
        if !SUPPORTED_FRAME_MS.contains(&config.frame_ms) {
            return Err(VadConfigError::UnsupportedFrameDuration {
                frame_ms: config.frame_ms,
                supported: SUPPORTED_FRAME_MS,
            });
        }
        let frame_samples = (config.sample_rate / 1_000 * config.frame_ms) as usize;
        let vad = webrtc_vad::Vad::new_with_rate_and_mode(rate, config.aggressiveness.mode());
        Ok(WebRtcVad {
            config,
            frame_samples,
            vad: Fvad(vad),
            rechunker: Rechunker::new(frame_samples),
            converted: Vec::new(),
        })
    }

    /// Returns the settings.
    pub fn config(&self) -> &WebRtcConfig {
        &self.config
    }
}

fn sample_rate_of(sample_rate: u32) -> Result<webrtc_vad::SampleRate, VadConfigError> {
    match sample_rate {
        8_000 => Ok(webrtc_vad::SampleRate::Rate8kHz),
        16_000 => Ok(webrtc_vad::SampleRate::Rate16kHz),
        32_000 => Ok(webrtc_vad::SampleRate::Rate32kHz),
        48_000 => Ok(webrtc_vad::SampleRate::Rate48kHz),
        _ => Err(VadConfigError::UnsupportedSampleRate {
            detector: "WebRTC",
            sample_rate,
            supported: SUPPORTED_RATES,
        }),
    }
}

/// Classifies one whole frame.
fn classify(vad: &mut Fvad, frame: &[i16], sample_rate: u32) -> Result<f32, VadError> {
    let error = VadError::WebRtc { frame_samples: frame.len(), sample_rate };
    // An empty slice would panic inside the crate; the rechunker never makes one.
    if frame.is_empty() {
        return Err(error);
    }
    match vad.0.is_voice_segment(frame) {
        Ok(true) => Ok(1.0),
        Ok(false) => Ok(0.0),
        Err(()) => Err(error),
    }
}

impl VoiceDetector for WebRtcVad {
    fn name(&self) -> &'static str {
        "webrtc"
    }

    fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    fn execution(&self) -> Execution {
        // About 1.4 µs per 20 ms frame (benches/vad.rs on a 2-core x86-64 VM).
        Execution::Inline
    }

    fn default_segmenter(&self) -> SegmenterConfig {
        SegmenterConfig::binary()
    }

    fn push(&mut self, samples: Pcm<'_>, probabilities: &mut Vec<f32>) -> Result<(), VadError> {
        let sample_rate = self.config.sample_rate;
        let vad = &mut self.vad;
        let mut each_frame = |frame: &[i16]| -> Result<(), VadError> {
            probabilities.push(classify(vad, frame, sample_rate)?);
            Ok(())
        };
        match samples {
            Pcm::I16(samples) => self.rechunker.push(samples, &mut each_frame),
            Pcm::F32(samples) => {
                self.converted.clear();
                self.converted.extend(samples.iter().map(|&sample| f32_to_i16(sample)));
                self.rechunker.push(&self.converted, &mut each_frame)
            }
        }
    }

    fn buffered(&self) -> usize {
        self.rechunker.waiting()
    }

    fn reset(&mut self) {
        // libfvad's reset also restores the default rate (8 kHz) and mode (0).
        self.vad.0.reset();
        if let Ok(rate) = sample_rate_of(self.config.sample_rate) {
            self.vad.0.set_sample_rate(rate);
        }
        self.vad.0.set_mode(self.config.aggressiveness.mode());
        self.rechunker.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(config: WebRtcConfig) -> WebRtcVad {
        match WebRtcVad::new(config) {
            Ok(detector) => detector,
            Err(error) => panic!("valid config rejected: {error}"),
        }
    }

    /// Returns a 440 Hz tone with a 3 Hz amplitude wobble that peaks at about
    /// -12 dBFS, which WebRTC VAD reports as speech.
    fn tone(samples: usize, sample_rate: u32) -> Vec<i16> {
        (0..samples)
            .map(|i| {
                let t = i as f32 / sample_rate as f32;
                let envelope = 0.5 + 0.5 * (2.0 * std::f32::consts::PI * 3.0 * t).sin().abs();
                (8_000.0 * envelope * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn rejects_unsupported_rate() {
        for rate in [0, 11_025, 22_050, 44_100, 96_000] {
            match WebRtcVad::new(WebRtcConfig::new(rate)) {
                Err(VadConfigError::UnsupportedSampleRate { sample_rate, supported, .. }) => {
                    assert_eq!(sample_rate, rate);
                    assert_eq!(supported, SUPPORTED_RATES);
                }
                other => panic!("rate {rate} gave {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_unsupported_frame_duration() {
        for frame_ms in [0, 5, 15, 25, 40] {
            let config = WebRtcConfig { frame_ms, ..WebRtcConfig::new(16_000) };
            match WebRtcVad::new(config) {
                Err(VadConfigError::UnsupportedFrameDuration { frame_ms: rejected, supported }) => {
                    assert_eq!(rejected, frame_ms);
                    assert_eq!(supported, SUPPORTED_FRAME_MS);
                }
                other => panic!("{frame_ms} ms gave {other:?}"),
            }
        }
    }

    #[test]
    fn error_message_names_value_and_legal_ones() {
        let Err(error) = WebRtcVad::new(WebRtcConfig::new(44_100)) else { panic!("44.1 kHz accepted") };
        let message = error.to_string();
        assert!(message.contains("44100"), "{message}");
        assert!(message.contains("16000"), "{message}");
    }

    #[test]
    fn accepts_every_supported_combination() {
        for &rate in SUPPORTED_RATES {
            for &frame_ms in SUPPORTED_FRAME_MS {
                let config = WebRtcConfig { sample_rate: rate, frame_ms, aggressiveness: Aggressiveness::Quality };
                let mut detector = detector(config);
                assert_eq!(detector.frame_samples(), (rate / 1_000 * frame_ms) as usize);
                let mut probabilities = Vec::new();
                let silence = vec![0_i16; detector.frame_samples() * 3];
                let result = detector.push(Pcm::I16(&silence), &mut probabilities);
                assert!(result.is_ok(), "{rate} Hz {frame_ms} ms: {result:?}");
                assert_eq!(probabilities, vec![0.0; 3], "{rate} Hz {frame_ms} ms");
            }
        }
    }

    #[test]
    fn empty_block_is_a_no_op() {
        let mut detector = detector(WebRtcConfig::new(16_000));
        let mut probabilities = Vec::new();
        let result = detector.push(Pcm::I16(&[]), &mut probabilities);
        assert!(result.is_ok(), "{result:?}");
        let result = detector.push(Pcm::F32(&[]), &mut probabilities);
        assert!(result.is_ok(), "{result:?}");
        assert!(probabilities.is_empty());
        assert_eq!(detector.buffered(), 0);
    }

    #[test]
    fn rechunks_any_block_size() {
        let audio = tone(16_000, 16_000);
        let mut reference = Vec::new();
        let mut whole = detector(WebRtcConfig::new(16_000));
        if let Err(error) = whole.push(Pcm::I16(&audio), &mut reference) {
            panic!("{error}");
        }
        assert_eq!(reference.len(), 50);
        assert!(reference.contains(&1.0), "the tone should count as speech: {reference:?}");

        for block in [1, 7, 160, 320, 333, 4096] {
            let mut detector = detector(WebRtcConfig::new(16_000));
            let mut probabilities = Vec::new();
            for chunk in audio.chunks(block) {
                if let Err(error) = detector.push(Pcm::I16(chunk), &mut probabilities) {
                    panic!("block {block}: {error}");
                }
            }
            assert_eq!(probabilities, reference, "block size {block}");
            assert_eq!(detector.buffered(), 0, "block size {block}");
        }
    }

    #[test]
    fn keeps_partial_frame_for_next_block() {
        let mut detector = detector(WebRtcConfig::new(16_000));
        let mut probabilities = Vec::new();
        let audio = vec![0_i16; 500];
        assert!(detector.push(Pcm::I16(&audio), &mut probabilities).is_ok());
        assert_eq!(probabilities.len(), 1);
        assert_eq!(detector.buffered(), 180);
        assert!(detector.push(Pcm::I16(&audio[..140]), &mut probabilities).is_ok());
        assert_eq!(probabilities.len(), 2);
        assert_eq!(detector.buffered(), 0);
    }

    #[test]
    fn float_input_matches_integer_input() {
        let audio = tone(8_000, 16_000);
        let floats: Vec<f32> = audio.iter().map(|&s| f32::from(s) / 32_768.0).collect();
        let mut from_i16 = Vec::new();
        let mut from_f32 = Vec::new();
        assert!(detector(WebRtcConfig::new(16_000)).push(Pcm::I16(&audio), &mut from_i16).is_ok());
        assert!(detector(WebRtcConfig::new(16_000)).push(Pcm::F32(&floats), &mut from_f32).is_ok());
        assert_eq!(from_i16, from_f32);
    }

    #[test]
    fn reset_restores_rate_and_mode() {
        // At 48 kHz with 30 ms frames (1440 samples), a detector that fell
        // back to libfvad's 8 kHz default would reject the frame length.
        let config = WebRtcConfig { sample_rate: 48_000, frame_ms: 30, aggressiveness: Aggressiveness::VeryAggressive };
        let audio = tone(48_000, 48_000);
        let mut detector = detector(config);
        let mut first = Vec::new();
        assert!(detector.push(Pcm::I16(&audio), &mut first).is_ok());
        assert!(detector.push(Pcm::I16(&audio[..100]), &mut Vec::new()).is_ok());
        detector.reset();
        assert_eq!(detector.buffered(), 0);
        let mut second = Vec::new();
        let result = detector.push(Pcm::I16(&audio), &mut second);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(first, second);
    }

    #[test]
    fn detector_moves_to_another_thread() {
        let mut detector = detector(WebRtcConfig::new(16_000));
        let handle = std::thread::spawn(move || {
            let mut probabilities = Vec::new();
            let result = detector.push(Pcm::I16(&[0; 320]), &mut probabilities);
            (result.is_ok(), probabilities)
        });
        match handle.join() {
            Ok((ok, probabilities)) => {
                assert!(ok);
                assert_eq!(probabilities, vec![0.0]);
            }
            Err(_) => panic!("the detector thread panicked"),
        }
    }
}
