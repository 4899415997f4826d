//! Piper speech synthesis: VITS voices run by ONNX Runtime, fed IPA
//! phonemes from espeak-ng.
//!
//! A voice is two files: the model (`<voice>.onnx`) and its configuration
//! (`<voice>.onnx.json`), which gives the output sample rate, the espeak-ng
//! voice, the inference scales and the id of each phoneme character. The
//! model takes `input` int64 `[1, ids]`, `input_lengths` int64 `[1]` and
//! `scales` f32 `[3]` (noise scale, length scale, noise width) and returns
//! `output` f32 `[1, 1, 1, samples]` at the configuration's sample rate
//! (22,050 Hz for en_US-joe-medium).
//!
//! ONNX Runtime is loaded once per process by the same set-up as Silero VAD
//! ([`crate::vad::silero::onnx_environment`]): from `ORT_DYLIB_PATH`, or
//! from the model cache folder.

mod espeak;
pub mod voice;

use std::path::PathBuf;

use mentis_pipeline::StageName;
use ort::session::Session;
use ort::value::TensorRef;

pub use self::voice::VoiceConfig;
use super::{SpeechEngine, Tts, TtsConfigError, TtsError};

/// The Piper speech stage.
pub type PiperTts = Tts<Piper>;

/// The default voice model, relative to the model cache folder.
pub const DEFAULT_VOICE_FILE: &str = "piper/en_US-joe-medium.onnx";

/// Settings of a [`Piper`] engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiperConfig {
    /// The voice model (`.onnx`).
    pub model_path: PathBuf,
    /// The voice configuration (`.onnx.json`).
    pub voice_config_path: PathBuf,
    /// The folder that contains `espeak-ng-data`, or `None` for the one
    /// compiled into libespeak-ng. Only the first Piper engine of a process
    /// sets it: espeak-ng is initialized once.
    pub espeak_data: Option<PathBuf>,
    /// Threads ONNX Runtime may use for one inference.
    pub threads: usize,
}

impl PiperConfig {
    /// Creates settings for a voice model with its configuration next to it
    /// (`<model>.json`), on one thread.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        let model_path = model_path.into();
        let mut voice_config_path = model_path.clone().into_os_string();
        voice_config_path.push(".json");
        PiperConfig { model_path, voice_config_path: voice_config_path.into(), espeak_data: None, threads: 1 }
    }

    /// Returns the settings of the default voice, en_US-joe-medium, from the
    /// model cache folder.
    pub fn joe() -> Self {
        PiperConfig::new(crate::models::models_dir().join(DEFAULT_VOICE_FILE))
    }
}

/// A Piper voice ready to synthesize.
pub struct Piper {
    config: PiperConfig,
    voice: VoiceConfig,
    session: Session,
    output_name: String,
    ids: Vec<i64>,
}

impl std::fmt::Debug for Piper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piper")
            .field("config", &self.config)
            .field("sample_rate", &self.voice.sample_rate)
            .field("espeak_voice", &self.voice.espeak_voice)
            .finish_non_exhaustive()
    }
}

impl Piper {
    /// Reads the voice configuration, prepares espeak-ng, loads ONNX
    /// Runtime (once per process) and the voice model.
    ///
    /// Fails with [`TtsConfigError::ModelNotFound`] or
    /// [`TtsConfigError::VoiceConfigNotFound`], naming the path, when a file
    /// is missing.
    pub fn new(config: PiperConfig) -> Result<Self, TtsConfigError> {
        if !config.model_path.is_file() {
            return Err(TtsConfigError::ModelNotFound { path: config.model_path.clone() });
        }
        let voice = VoiceConfig::from_file(&config.voice_config_path)?;
        espeak::prepare(config.espeak_data.as_deref(), &voice.espeak_voice)?;

        let environment =
            crate::vad::silero::onnx_environment().map_err(|source| TtsConfigError::OnnxRuntime { source })?;
        let session = open_session(&environment, &config)
            .map_err(|source| TtsConfigError::ModelLoad { path: config.model_path.clone(), source })?;
        let output_name = check_signature(&session, &config)?;
        tracing::info!(
            model = %config.model_path.display(),
            sample_rate = voice.sample_rate,
            espeak_voice = %voice.espeak_voice,
            "loaded the Piper voice"
        );

        Ok(Piper { config, voice, session, output_name, ids: Vec::new() })
    }

    /// Returns the settings.
    pub fn config(&self) -> &PiperConfig {
        &self.config
    }

    /// Returns the voice configuration read from its JSON.
    pub fn voice(&self) -> &VoiceConfig {
        &self.voice
    }

    /// Returns the IPA phonemes that the voice is given for `sentence`.
    pub fn phonemes(&self, sentence: &str) -> Result<String, TtsError> {
        espeak::phonemize(&self.voice.espeak_voice, sentence)
    }
}

impl PiperTts {
    /// Creates the Piper stage for the voice in `config`, with default settings.
    pub fn piper(name: StageName, config: PiperConfig) -> Result<Self, TtsConfigError> {
        Tts::new(name, Piper::new(config)?)
    }
}

fn open_session(environment: &ort::environment::Environment, config: &PiperConfig) -> ort::Result<Session> {
    let session = Session::builder(environment)?
        .with_intra_threads(config.threads.max(1))?
        .with_inter_threads(1)?
        .commit_from_file(&config.model_path)?;
    Ok(session)
}

/// Checks the model's inputs and returns the name of its audio output.
fn check_signature(session: &Session, config: &PiperConfig) -> Result<String, TtsConfigError> {
    for name in ["input", "input_lengths", "scales"] {
        if !session.inputs().iter().any(|input| input.name() == name) {
            return Err(TtsConfigError::ModelSignature { path: config.model_path.clone(), kind: "input", name });
        }
    }
    match session.outputs().first() {
        Some(output) => Ok(output.name().to_owned()),
        None => Err(TtsConfigError::ModelSignature { path: config.model_path.clone(), kind: "output", name: "output" }),
    }
}

impl SpeechEngine for Piper {
    fn name(&self) -> &'static str {
        "piper"
    }

    fn sample_rate(&self) -> u32 {
        self.voice.sample_rate
    }

    fn synthesize(&mut self, text: &str, samples: &mut Vec<f32>) -> Result<(), TtsError> {
        // Phonemes, then ids, then one inference over the whole text.
        let phonemes = espeak::phonemize(&self.voice.espeak_voice, text)?;
        let missing = self.voice.phoneme_ids(&phonemes, &mut self.ids);
        if !missing.is_empty() {
            tracing::debug!(?missing, "skipped phonemes that the voice has no id for");
        }
        if phonemes.trim().is_empty() || missing.len() == phonemes.chars().count() {
            return Ok(());
        }

        let inference = |source| TtsError::Inference { text: text.to_owned(), source };
        let lengths = [self.ids.len() as i64];
        let scales = [self.voice.noise_scale, self.voice.length_scale, self.voice.noise_w];
        let input = TensorRef::from_array_view(([1_usize, self.ids.len()], &*self.ids)).map_err(inference)?;
        let input_lengths = TensorRef::from_array_view(([1_usize], &lengths[..])).map_err(inference)?;
        let scales = TensorRef::from_array_view(([3_usize], &scales[..])).map_err(inference)?;
        let outputs = self
            .session
            .run(ort::inputs!["input" => input, "input_lengths" => input_lengths, "scales" => scales])
            .map_err(inference)?;

        let Some(output) = outputs.get(&self.output_name) else {
            return Err(TtsError::OutputShape { name: self.output_name.clone(), shape: Vec::new() });
        };
        let (shape, audio) = output.try_extract_tensor::<f32>().map_err(inference)?;

        // One row of samples: every dimension but the last is 1.
        let rows: i64 = shape.iter().rev().skip(1).product();
        if rows != 1 || shape.last().is_none_or(|&length| usize::try_from(length).ok() != Some(audio.len())) {
            return Err(TtsError::OutputShape { name: self.output_name.clone(), shape: shape.to_vec() });
        }
        if let Some((index, &value)) = audio.iter().enumerate().find(|(_, value)| !value.is_finite()) {
            return Err(TtsError::InvalidSample { text: text.to_owned(), index, value });
        }

        // NOTE: Piper's own programs scale each utterance to full scale by
        // its peak. Here the raw output is only clamped, so that loudness
        // does not jump between sentences, and speech may be quieter.
        samples.extend(audio.iter().map(|&sample| sample.clamp(-1.0, 1.0)));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
