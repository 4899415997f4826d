//! The main job end to end: `mentis converse` on a real LibriVox recording,
//! processed as fast as possible with the default (flite) voice.
//!
//! Needs the Debian test recordings and the models that `scripts/setup`
//! installs; a missing file fails the test with the path.

use std::path::Path;
use std::process::Command;

use mentis::stages::wav::open_wav;
use mentis::stages::wer::word_errors;

const RECORDINGS: &str = "/usr/share/pocketsphinx/test/data/librivox";
const CLIP: &str = "sense_and_sensibility_01_austen_64kb-0870";

/// Returns the reference transcript of `clip` from the recordings' transcription file.
fn reference(clip: &str) -> String {
    let path = Path::new(RECORDINGS).join("transcription");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}; run scripts/setup", path.display()));
    let line = text.lines().find(|line| line.contains(&format!("({clip})"))).expect("clip in the transcription file");
    line.replace("<s>", "").replace("</s>", "").replace(&format!("({clip})"), "").trim().to_owned()
}

#[test]
fn converse_replies_to_recording() {
    let input = Path::new(RECORDINGS).join(format!("{CLIP}.wav"));
    assert!(input.exists(), "{} is missing; run scripts/setup", input.display());
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("reply.wav");
    let latency = dir.path().join("latency.json");

    let run = Command::new(env!("CARGO_BIN_EXE_mentis"))
        .args(["converse", "--fast", "--tts", "flite", "--max-tokens", "32"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--latency-json")
        .arg(&latency)
        .output()
        .expect("run mentis");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "mentis failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("latency from end of speech"), "{stdout}");

    // One turn whose transcript matches the reference.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&latency).expect("latency JSON written")).expect("valid JSON");
    let turns = json["turns"].as_array().expect("turns array");
    assert_eq!(turns.len(), 1, "one utterance gives one turn: {json:#}");
    let transcript = turns[0]["transcript"].as_str().expect("transcript");
    let errors = word_errors(&reference(CLIP), transcript);
    let rate = errors.rate().expect("non-empty reference");
    assert!(rate <= 0.10, "WER {rate:.3} for {transcript:?}");
    let reply = turns[0]["reply"].as_str().expect("reply");
    assert!(reply.split_whitespace().count() >= 2, "the LLM replied: {reply:?}");

    // Every latency mark was reached, in pipeline order.
    let latency_ms = &turns[0]["latency_ms"];
    let marks: Vec<f64> = ["final_transcript_ms", "first_token_ms", "first_tts_audio_ms", "voice_to_voice_ms"]
        .iter()
        .map(|key| latency_ms[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {latency_ms}")))
        .collect();
    assert!(marks.windows(2).all(|pair| pair[0] <= pair[1]), "marks in order: {marks:?}");

    // The reply WAV contains speech, placed after the user stopped speaking.
    let mut reader = open_wav(&output).expect("reply WAV readable");
    let spec = reader.spec();
    assert_eq!(spec.sample_rate, 16_000, "the reply has the input's rate");
    let mut samples = Vec::new();
    while reader.read_f32(16_000, &mut samples).expect("read reply") > 0 {}
    let window = (spec.sample_rate / 50) as usize;
    let loud: Vec<usize> = samples
        .chunks(window)
        .enumerate()
        .filter(|(_, chunk)| (chunk.iter().map(|s| s * s).sum::<f32>() / chunk.len() as f32).sqrt() > 0.01)
        .map(|(index, _)| index)
        .collect();
    assert!(loud.len() >= 25, "at least half a second of reply speech, got {} windows of 20 ms", loud.len());
    let first_speech = loud[0] as f64 * 0.02;
    let start = turns[0]["playback"]["start_s"].as_f64().expect("playback start");
    assert!(start >= 5.0, "the reply starts after the user's speech (about 6.5 s), at {start:.2} s");
    assert!(first_speech >= start - 0.05, "nothing before the reply start: speech at {first_speech:.2} s");
}
