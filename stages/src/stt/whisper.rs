//! Whisper speech recognition through CTranslate2 (the `ct2rs` crate, 0.10.3).
//!
//! The recognizer buffers the utterance and recognizes it in one call when it
//! ends; Whisper reads 30 s windows, so it suits VAD-segmented utterances.
//! Features are computed here ([`super::mel`]) and passed to the lower-level
//! `ct2rs::sys::Whisper`, which also reports the probability of the model's
//! no-speech token, used by the non-speech filter.
//!
//! The model folder is the CTranslate2 conversion of Whisper tiny.en that
//! `scripts/setup` downloads into `models_dir()/whisper-tiny.en`. It stores
//! float16 weights; CTranslate2 converts them to INT8 when loading.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ct2rs::sys::{StorageView, Whisper as Ct2Whisper, WhisperGenerationResult, WhisperOptions};
use ct2rs::tokenizers::hf::Tokenizer;
use ct2rs::{ComputeType, Config, Device, Tokenizer as _};

use super::mel::{MelExtractor, N_FRAMES, N_SAMPLES};
use super::{Recognition, Recognizer, SttError, UtteranceBuffer};
use crate::models::models_dir;
use crate::vad::Pcm;

const ENGINE: &str = "whisper";

/// The folder name of the default model under [`models_dir`].
pub const TINY_EN_DIR: &str = "whisper-tiny.en";

/// The files a CTranslate2 Whisper model folder needs: the weights, model
/// settings and vocabulary (CTranslate2) and the tokenizer (Hugging Face
/// `tokenizers`). A `preprocessor_config.json` is not read, because the
/// features use Whisper's fixed parameters and take the number of mel bands
/// from the model.
pub const MODEL_FILES: [&str; 4] = ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"];

/// Settings of a [`WhisperRecognizer`].
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    /// The CTranslate2 model folder.
    pub model_dir: PathBuf,
    /// The language of the speech, as a Whisper language code. Multilingual
    /// models get it as a prompt token (their language detection is skipped);
    /// English-only models such as tiny.en take no language token, so for
    /// them only "en" is accepted.
    pub language: String,
    /// CPU threads for inference.
    pub threads: usize,
    /// The weight and activation type of inference.
    pub compute_type: ComputeType,
    /// Beam search width; 1 is greedy decoding. Greedy is the default: on the
    /// five LibriVox clips of `tests/stt_accuracy.rs`, width 5 gave the same
    /// transcripts and took longer.
    pub beam_size: usize,
    /// The maximum utterance length kept. Audio beyond it is not transcribed,
    /// and one warning is logged per utterance.
    /// Whisper reads 30 s windows, so a longer utterance is recognized window
    /// by window, and a word cut at a window edge may be misrecognized.
    pub max_utterance: Duration,
}

impl WhisperConfig {
    /// Whisper tiny.en from the model cache, INT8 on 2 threads, greedy decoding.
    pub fn tiny_en() -> Self {
        WhisperConfig {
            model_dir: models_dir().join(TINY_EN_DIR),
            language: "en".to_owned(),
            threads: 2,
            compute_type: ComputeType::INT8,
            beam_size: 1,
            max_utterance: Duration::from_secs(120),
        }
    }

    fn validate(&self) -> Result<(), SttError> {
        let invalid = |name, value: String, reason| SttError::InvalidSetting { engine: ENGINE, name, value, reason };
        if self.threads == 0 {
            return Err(invalid("threads", "0".to_owned(), "use at least 1 thread"));
        }
        if self.beam_size == 0 {
            return Err(invalid("beam_size", "0".to_owned(), "use a beam width of at least 1"));
        }
        if self.max_utterance.is_zero() {
            return Err(invalid("max_utterance", "0 s".to_owned(), "use a positive duration"));
        }
        if self.language.is_empty() || !self.language.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(invalid(
                "language",
                format!("{:?}", self.language),
                "use a Whisper language code such as \"en\"",
            ));
        }
        Ok(())
    }
}

impl Default for WhisperConfig {
    fn default() -> Self {
        WhisperConfig::tiny_en()
    }
}

/// Returns an error naming the first model file missing from `dir`.
pub fn check_model_files(dir: &Path) -> Result<(), SttError> {
    let hint = "; or set MENTIS_MODELS to the folder that contains whisper-tiny.en";
    if !dir.is_dir() {
        return Err(SttError::ModelNotFound { engine: ENGINE, path: dir.to_owned(), hint });
    }
    for file in MODEL_FILES {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(SttError::ModelNotFound { engine: ENGINE, path, hint });
        }
    }
    Ok(())
}

/// Whisper through CTranslate2, for [`super::WhisperStt`].
pub struct WhisperRecognizer {
    config: WhisperConfig,
    model: Ct2Whisper,
    tokenizer: Tokenizer,
    mel: MelExtractor,
    prompt: Vec<String>,
    options: WhisperOptions,
    /// The open utterance's audio at 16 kHz.
    utterance: UtteranceBuffer,
    features: Vec<f32>,
    last_inference: Option<Duration>,
}

impl std::fmt::Debug for WhisperRecognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperRecognizer")
            .field("config", &self.config)
            .field("prompt", &self.prompt)
            .field("buffered", &self.utterance.samples().len())
            .finish_non_exhaustive()
    }
}

impl WhisperRecognizer {
    /// Loads the model.
    pub fn new(config: WhisperConfig) -> Result<Self, SttError> {
        config.validate()?;
        check_model_files(&config.model_dir)?;
        let load_error = |source: Box<dyn std::error::Error + Send + Sync>| SttError::ModelLoad {
            engine: ENGINE,
            path: config.model_dir.clone(),
            source,
        };

        let ct2_config = Config {
            device: Device::CPU,
            compute_type: config.compute_type,
            num_threads_per_replica: config.threads,
            ..Config::default()
        };
        let model = Ct2Whisper::new(&config.model_dir, ct2_config).map_err(|error| load_error(error.into()))?;
        let tokenizer = Tokenizer::new(&config.model_dir).map_err(|error| load_error(error.into()))?;
        let mel = MelExtractor::new(model.n_mels());

        // OpenAI's tokenizer gives English-only models no language or task
        // token: their prompt is start-of-transcript alone.
        // NOTE: only the English-only prompt has been run; the multilingual one
        // follows the token order of OpenAI's tokenizer without a test.
        let prompt: Vec<String> = if model.is_multilingual() {
            vec![
                "<|startoftranscript|>".to_owned(),
                format!("<|{}|>", config.language),
                "<|transcribe|>".to_owned(),
                "<|notimestamps|>".to_owned(),
            ]
        } else if config.language == "en" {
            vec!["<|startoftranscript|>".to_owned(), "<|notimestamps|>".to_owned()]
        } else {
            return Err(SttError::InvalidSetting {
                engine: ENGINE,
                name: "language",
                value: format!("{:?}", config.language),
                reason: "this model is English-only; use \"en\" or a multilingual model",
            });
        };

        let options = WhisperOptions {
            beam_size: config.beam_size,
            return_scores: true,
            return_no_speech_prob: true,
            ..WhisperOptions::default()
        };
        let utterance = UtteranceBuffer::new(config.max_utterance);
        tracing::info!(model = %config.model_dir.display(), compute_type = %config.compute_type, threads = config.threads, "Whisper model loaded");

        Ok(WhisperRecognizer {
            config,
            model,
            tokenizer,
            mel,
            prompt,
            options,
            utterance,
            features: Vec::new(),
            last_inference: None,
        })
    }

    /// Returns the settings.
    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// Returns the prompt tokens that start each window's decoding.
    pub fn prompt(&self) -> &[String] {
        &self.prompt
    }

    /// Returns how long the last recognition took.
    pub fn last_inference(&self) -> Option<Duration> {
        self.last_inference
    }

    /// Recognizes mono 16 kHz samples in [-1, 1] in one call, outside any stage.
    pub fn recognize(&mut self, samples: &[f32]) -> Result<Recognition, SttError> {
        let started = Instant::now();
        let windows: Vec<&[f32]> = samples.chunks(N_SAMPLES).collect();
        if windows.is_empty() {
            return Ok(Recognition::default());
        }

        // One batch entry per 30 s window: [windows, n_mels, 3000] features.
        let n_mels = self.mel.n_mels();
        let mut batch = Vec::with_capacity(windows.len() * n_mels * N_FRAMES);
        for window in &windows {
            self.mel.window_features(window, &mut self.features);
            batch.extend_from_slice(&self.features);
        }
        let shape = [windows.len(), n_mels, N_FRAMES];
        let view = StorageView::new(&shape, &mut batch, Device::CPU).map_err(|error| SttError::Recognition {
            engine: ENGINE,
            message: format!("cannot pass features of shape {shape:?} to CTranslate2"),
            source: Some(error.into()),
        })?;
        let prompts = vec![self.prompt.clone(); windows.len()];
        let results = self.model.generate(&view, &prompts, &self.options).map_err(|error| SttError::Recognition {
            engine: ENGINE,
            message: format!("generation over {} window(s) failed", windows.len()),
            source: Some(error.into()),
        })?;
        if results.len() != windows.len() {
            return Err(SttError::Recognition {
                engine: ENGINE,
                message: format!("CTranslate2 returned {} results for {} windows", results.len(), windows.len()),
                source: None,
            });
        }

        let recognition = self.combine(&results)?;
        let elapsed = started.elapsed();
        self.last_inference = Some(elapsed);
        tracing::debug!(
            audio_ms = samples.len() / 16,
            inference_ms = elapsed.as_millis(),
            no_speech_probability = ?recognition.no_speech_probability,
            "Whisper recognized an utterance"
        );
        Ok(recognition)
    }

    /// Joins the windows' texts. The confidence is the mean over windows; the
    /// no-speech probability is the lowest, so one window with speech makes
    /// the utterance speech.
    fn combine(&self, results: &[WhisperGenerationResult]) -> Result<Recognition, SttError> {
        let mut texts = Vec::with_capacity(results.len());
        let mut confidences = Vec::with_capacity(results.len());
        let mut no_speech = f32::INFINITY;
        for result in results {
            let tokens: Vec<String> = result
                .sequences
                .first()
                .map(|tokens| tokens.iter().filter(|token| !is_special_token(token)).cloned().collect())
                .unwrap_or_default();
            let text = self.tokenizer.decode(tokens).map_err(|error| SttError::Recognition {
                engine: ENGINE,
                message: "the tokenizer failed to decode the output tokens".to_owned(),
                source: Some(error.into()),
            })?;
            texts.push(text.trim().to_owned());

            // CTranslate2's score is the sum of token log-probabilities divided
            // by the length (length_penalty 1), so exp gives the geometric mean
            // token probability.
            if let Some(score) = result.scores.first().filter(|score| score.is_finite()) {
                confidences.push(score.exp().clamp(0.0, 1.0));
            }
            if result.no_speech_prob.is_finite() {
                no_speech = no_speech.min(result.no_speech_prob.clamp(0.0, 1.0));
            }
        }

        let confidence = (!confidences.is_empty()).then(|| confidences.iter().sum::<f32>() / confidences.len() as f32);
        let no_speech_probability = no_speech.is_finite().then_some(no_speech);
        let text = texts.into_iter().filter(|text| !text.is_empty()).collect::<Vec<_>>().join(" ");
        Ok(Recognition { text, confidence, no_speech_probability })
    }
}

/// Returns whether a token is a control token such as `<|endoftext|>`.
fn is_special_token(token: &str) -> bool {
    token.starts_with("<|") && token.ends_with("|>")
}

impl Recognizer for WhisperRecognizer {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn streams_partials(&self) -> bool {
        false
    }

    fn start_utterance(&mut self) -> Result<(), SttError> {
        self.utterance.clear();
        Ok(())
    }

    fn accept(&mut self, samples: Pcm<'_>) -> Result<(), SttError> {
        self.utterance.accept(samples);
        Ok(())
    }

    fn partial(&mut self) -> Result<Option<String>, SttError> {
        Ok(None)
    }

    fn finish_utterance(&mut self) -> Result<Recognition, SttError> {
        // The buffer is taken out while the model runs, then put back to keep its allocation.
        let utterance = std::mem::replace(&mut self.utterance, UtteranceBuffer::new(Duration::ZERO));
        let result = self.recognize(utterance.samples());
        self.utterance = utterance;
        self.utterance.clear();
        result
    }

    fn cancel_utterance(&mut self) {
        self.utterance.clear();
    }
}
