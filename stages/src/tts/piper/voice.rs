//! A Piper voice's configuration (`<voice>.onnx.json`) and its phoneme ids.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::tts::TtsConfigError;

/// Beginning-of-sentence symbol in `phoneme_id_map`.
const BOS: char = '^';
/// End-of-sentence symbol.
const EOS: char = '$';
/// Padding symbol, placed after every phoneme.
const PAD: char = '_';

/// The settings of a voice's `.onnx.json` that synthesis uses.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceConfig {
    /// Sample rate of the model's output, in Hz (`audio.sample_rate`).
    pub sample_rate: u32,
    /// The espeak-ng voice that produces its phonemes (`espeak.voice`).
    pub espeak_voice: String,
    /// Noise added to the generator (`inference.noise_scale`).
    pub noise_scale: f32,
    /// Speaking time per phoneme, where above 1 is slower (`inference.length_scale`).
    pub length_scale: f32,
    /// Noise added to phoneme durations (`inference.noise_w`).
    pub noise_w: f32,
    /// Model input ids of each phoneme character (`phoneme_id_map`).
    pub phoneme_ids: HashMap<char, Vec<i64>>,
}

/// The JSON as Piper writes it; fields that synthesis does not use are ignored.
#[derive(Deserialize)]
struct VoiceFile {
    audio: AudioSection,
    espeak: EspeakSection,
    #[serde(default)]
    inference: InferenceSection,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    phoneme_type: Option<String>,
    #[serde(default)]
    num_speakers: Option<u32>,
}

#[derive(Deserialize)]
struct AudioSection {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct EspeakSection {
    voice: String,
}

/// Inference settings; a missing field takes Piper's default.
#[derive(Deserialize)]
#[serde(default)]
struct InferenceSection {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceSection {
    /// Returns the values Piper's Python `PiperConfig.from_dict` uses when a
    /// voice's JSON leaves them out.
    fn default() -> Self {
        InferenceSection { noise_scale: 0.667, length_scale: 1.0, noise_w: 0.8 }
    }
}

impl VoiceConfig {
    /// Reads and checks a voice's `.onnx.json`.
    pub fn from_file(path: &Path) -> Result<Self, TtsConfigError> {
        if !path.is_file() {
            return Err(TtsConfigError::VoiceConfigNotFound { path: path.to_path_buf() });
        }
        let json = std::fs::read_to_string(path)
            .map_err(|source| TtsConfigError::VoiceConfigRead { path: path.to_path_buf(), source })?;
        VoiceConfig::from_json(&json, path)
    }

    /// Parses and checks the JSON of a voice configuration; `path` names it in errors.
    pub fn from_json(json: &str, path: &Path) -> Result<Self, TtsConfigError> {
        let file: VoiceFile = serde_json::from_str(json)
            .map_err(|source| TtsConfigError::VoiceConfigParse { path: path.to_path_buf(), source })?;

        if let Some(phoneme_type) = file.phoneme_type
            && phoneme_type != "espeak"
        {
            return Err(TtsConfigError::UnsupportedPhonemeType { path: path.to_path_buf(), phoneme_type });
        }
        if let Some(speakers) = file.num_speakers
            && speakers > 1
        {
            return Err(TtsConfigError::UnsupportedSpeakers { path: path.to_path_buf(), speakers });
        }
        if file.audio.sample_rate == 0 {
            return Err(TtsConfigError::InvalidSampleRate { engine: "piper", sample_rate: 0 });
        }

        let mut phoneme_ids = HashMap::with_capacity(file.phoneme_id_map.len());
        for (key, ids) in file.phoneme_id_map {
            let mut chars = key.chars();
            let (Some(symbol), None) = (chars.next(), chars.next()) else {
                return Err(TtsConfigError::PhonemeKey { path: path.to_path_buf(), key });
            };
            phoneme_ids.insert(symbol, ids);
        }
        for (symbol, role) in [(BOS, "the start of a sentence"), (EOS, "the end of a sentence"), (PAD, "padding")] {
            if phoneme_ids.get(&symbol).is_none_or(Vec::is_empty) {
                return Err(TtsConfigError::MissingPhoneme { path: path.to_path_buf(), symbol, role });
            }
        }

        Ok(VoiceConfig {
            sample_rate: file.audio.sample_rate,
            espeak_voice: file.espeak.voice,
            noise_scale: file.inference.noise_scale,
            length_scale: file.inference.length_scale,
            noise_w: file.inference.noise_w,
            phoneme_ids,
        })
    }

    /// Turns IPA phonemes into model input ids, replacing the contents of
    /// `ids`, and returns the phoneme characters that have no id (skipped).
    ///
    /// The layout is Piper's (piper-phonemize `phoneme_ids.cpp`): the
    /// start symbol `^`, the pad `_`, each phoneme's ids followed by the pad,
    /// then the end symbol `$`.
    pub fn phoneme_ids(&self, phonemes: &str, ids: &mut Vec<i64>) -> Vec<char> {
        ids.clear();
        let mut missing = Vec::new();
        let symbol = |c: char| self.phoneme_ids.get(&c).map_or(&[][..], Vec::as_slice);

        ids.extend_from_slice(symbol(BOS));
        ids.extend_from_slice(symbol(PAD));
        for phoneme in phonemes.chars() {
            match self.phoneme_ids.get(&phoneme) {
                Some(phoneme_ids) => {
                    ids.extend_from_slice(phoneme_ids);
                    ids.extend_from_slice(symbol(PAD));
                }
                None => missing.push(phoneme),
            }
        }
        ids.extend_from_slice(symbol(EOS));
        missing
    }
}
