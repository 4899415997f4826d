//! Tests of the Piper voice configuration, phoneme ids and clause cutting,
//! which need neither the model nor espeak-ng.

use std::path::Path;

use super::espeak::clauses;
use super::*;

const PATH: &str = "voice.onnx.json";

fn voice_json(extra: &str, map: &str) -> String {
    format!(
        r#"{{"audio": {{"sample_rate": 22050}}, "espeak": {{"voice": "en-us"}}, {extra} "phoneme_id_map": {{{map}}}}}"#
    )
}

const MAP: &str = r#""_": [0], "^": [1], "$": [2], " ": [3], ".": [10], "h": [20], "ə": [59]"#;

fn parse(json: &str) -> Result<VoiceConfig, TtsConfigError> {
    VoiceConfig::from_json(json, Path::new(PATH))
}

#[test]
fn voice_config_reads_fields() {
    let json = voice_json(
        r#""inference": {"noise_scale": 0.5, "length_scale": 1.2, "noise_w": 0.7}, "phoneme_type": "espeak", "num_speakers": 1,"#,
        MAP,
    );
    let voice = parse(&json).expect("valid configuration");
    assert_eq!(voice.sample_rate, 22_050);
    assert_eq!(voice.espeak_voice, "en-us");
    assert_eq!((voice.noise_scale, voice.length_scale, voice.noise_w), (0.5, 1.2, 0.7));
    assert_eq!(voice.phoneme_ids.get(&'ə'), Some(&vec![59]));
}

#[test]
fn voice_config_defaults_inference() {
    let voice = parse(&voice_json("", MAP)).expect("valid configuration");
    assert_eq!((voice.noise_scale, voice.length_scale, voice.noise_w), (0.667, 1.0, 0.8));
}

#[test]
fn voice_config_rejects_long_key() {
    let error = parse(&voice_json("", &format!(r#"{MAP}, "ab": [7]"#))).expect_err("two-character key");
    assert!(matches!(error, TtsConfigError::PhonemeKey { ref key, .. } if key == "ab"), "{error}");
}

#[test]
fn voice_config_requires_pad() {
    let error = parse(&voice_json("", r#""^": [1], "$": [2]"#)).expect_err("no pad");
    assert!(matches!(error, TtsConfigError::MissingPhoneme { symbol: '_', .. }), "{error}");
}

#[test]
fn voice_config_rejects_text_phonemes() {
    let error = parse(&voice_json(r#""phoneme_type": "text","#, MAP)).expect_err("text phonemes");
    assert!(matches!(error, TtsConfigError::UnsupportedPhonemeType { .. }), "{error}");
}

#[test]
fn voice_config_rejects_many_speakers() {
    let error = parse(&voice_json(r#""num_speakers": 4,"#, MAP)).expect_err("multi-speaker");
    assert!(matches!(error, TtsConfigError::UnsupportedSpeakers { speakers: 4, .. }), "{error}");
}

#[test]
fn voice_config_rejects_zero_rate() {
    let json = voice_json("", MAP).replace("22050", "0");
    let error = parse(&json).expect_err("zero rate");
    assert!(matches!(error, TtsConfigError::InvalidSampleRate { sample_rate: 0, .. }), "{error}");
}

#[test]
fn voice_config_parse_error_names_file() {
    let error = parse("{").expect_err("truncated JSON");
    assert!(error.to_string().contains(PATH), "{error}");
}

#[test]
fn voice_config_missing_file() {
    let error = VoiceConfig::from_file(Path::new("/nonexistent/voice.onnx.json")).expect_err("missing file");
    assert!(matches!(error, TtsConfigError::VoiceConfigNotFound { .. }), "{error}");
}

#[test]
fn phoneme_ids_interleave_pad() {
    let voice = parse(&voice_json("", MAP)).expect("valid configuration");
    let mut ids = Vec::new();
    let missing = voice.phoneme_ids("hə.", &mut ids);
    assert!(missing.is_empty());
    assert_eq!(ids, [1, 0, 20, 0, 59, 0, 10, 0, 2]);
}

#[test]
fn phoneme_ids_skip_unknown() {
    let voice = parse(&voice_json("", MAP)).expect("valid configuration");
    let mut ids = vec![99];
    let missing = voice.phoneme_ids("hʒ", &mut ids);
    assert_eq!(missing, ['ʒ']);
    assert_eq!(ids, [1, 0, 20, 0, 2]);
}

#[test]
fn clauses_keep_marks() {
    assert_eq!(
        clauses("Well, I think so; maybe: yes!"),
        [("Well", Some(',')), ("I think so", Some(';')), ("maybe", Some(':')), ("yes!", Some('!'))]
    );
}

#[test]
fn clauses_ignore_marks_inside_numbers() {
    assert_eq!(clauses("It costs 2,500 dollars."), [("It costs 2,500 dollars.", Some('.'))]);
}

#[test]
fn clauses_find_mark_before_closers() {
    assert_eq!(clauses("(It was late.)"), [("(It was late.)", Some('.'))]);
    assert_eq!(clauses("no mark"), [("no mark", None)]);
}

#[test]
fn clauses_drop_blank() {
    assert_eq!(clauses(", hello"), [("hello", None)]);
}

#[test]
fn config_json_path_next_to_model() {
    let config = PiperConfig::new("/voices/en_US-joe-medium.onnx");
    assert_eq!(config.voice_config_path, Path::new("/voices/en_US-joe-medium.onnx.json"));
    assert_eq!(config.threads, 1);
}

#[test]
fn missing_model_named_in_error() {
    let error = Piper::new(PiperConfig::new("/nonexistent/voice.onnx")).expect_err("missing model");
    assert!(matches!(error, TtsConfigError::ModelNotFound { .. }), "{error}");
    assert!(error.to_string().contains("/nonexistent/voice.onnx"), "{error}");
}
