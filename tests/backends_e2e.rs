//! `mentis converse --config` end to end with the network backends. The real
//! binary replies to a LibriVox recording twice. The self-hosted
//! configuration uses an OpenAI-compatible transcription server, Ollama and an
//! OpenAI-compatible speech server, all plain HTTP on 127.0.0.1. The cloud
//! configuration uses Deepgram live, Anthropic Messages and ElevenLabs
//! stream-input over TLS to `localhost`, trusting a private CA. The servers
//! run in the test process with real engines (see `servers`), so the checks
//! follow the data. The recording reaches Whisper, its words come back as
//! the transcript, the LLM server quotes them, flite speaks the reply, and
//! the reply WAV contains that speech. Nothing contacts any host but
//! 127.0.0.1.
//!
//! Needs the Debian test recordings, flite, and the Whisper model that
//! `scripts/setup` installs.

#[path = "../stages/tests/net_support/mod.rs"]
mod net_support;
mod servers;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mentis::stages::wav::open_wav;
use mentis::stages::wer::{normalize, word_errors};
use net_support::TestTls;
use serde_json::Value;
use servers::{DeepgramEvent, Engines};

const RECORDINGS: &str = "/usr/share/pocketsphinx/test/data/librivox";
const CLIP: &str = "sense_and_sensibility_01_austen_64kb-0870";

/// The maximum time one run of the program may take. A run took 1 to 2 s
/// on a 2-core machine busy with other builds, so this only catches a hang.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The API keys of the cloud run: recognisable values that must never show
/// up in the program's output or files.
const DEEPGRAM_KEY: &str = "e2e-secret-deepgram-5d1c08f3a7";
const ANTHROPIC_KEY: &str = "e2e-secret-anthropic-9b24e6c1f0";
const ELEVENLABS_KEY: &str = "e2e-secret-elevenlabs-37af52d9e8";

/// One run at a time: each loads Whisper in the test process and runs the
/// program, which is enough for 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Returns the reference transcript of `clip` from the recordings' transcription file.
fn reference(clip: &str) -> String {
    let path = Path::new(RECORDINGS).join("transcription");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}; run scripts/setup", path.display()));
    let line = text.lines().find(|line| line.contains(&format!("({clip})"))).expect("clip in the transcription file");
    line.replace("<s>", "").replace("</s>", "").replace(&format!("({clip})"), "").trim().to_owned()
}

fn input() -> PathBuf {
    let input = Path::new(RECORDINGS).join(format!("{CLIP}.wav"));
    assert!(input.exists(), "{} is missing; run scripts/setup", input.display());
    input
}

/// Quotes `text` as a TOML basic string, whose escapes are JSON's.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// What one run of `mentis converse` left behind.
struct Run {
    stdout: String,
    stderr: String,
    /// The latency JSON, with the session report.
    json: Value,
    /// The reply WAV and the latency JSON, as written.
    files: Vec<(PathBuf, Vec<u8>)>,
    reply_wav: PathBuf,
    _folder: tempfile::TempDir,
}

/// Runs `mentis converse --fast --config` on the recording with `config`
/// and the extra environment `env` (set on the child only), and waits at
/// most [`RUN_LIMIT`]. The servers keep running on the runtime's threads.
fn converse(config: &str, env: &[(&str, &str)]) -> Run {
    let folder = tempfile::tempdir().expect("temporary folder");
    let config_path = folder.path().join("pipeline.toml");
    std::fs::write(&config_path, config).expect("write the configuration");
    let reply_wav = folder.path().join("reply.wav");
    let latency_json = folder.path().join("latency.json");

    let mut command = Command::new(env!("CARGO_BIN_EXE_mentis"));
    command
        .args(["converse", "--fast"])
        .arg(input())
        .arg("--config")
        .arg(&config_path)
        .arg("--output")
        .arg(&reply_wav)
        .arg("--latency-json")
        .arg(&latency_json)
        // Debug logs of every crate: a key that leaked into any log would show.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("start mentis");

    // Drain both pipes on their own threads so the child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll mentis") {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let Some(status) = status else {
        panic!("mentis did not finish within {RUN_LIMIT:?}:\n{stdout}\n{stderr}");
    };
    assert!(status.success(), "mentis failed ({status}):\n{stdout}\n{stderr}");
    eprintln!("mentis finished in {:.1} s:\n{stdout}", started.elapsed().as_secs_f64());

    let files: Vec<(PathBuf, Vec<u8>)> = [&reply_wav, &latency_json]
        .into_iter()
        .map(|path| (path.clone(), std::fs::read(path).unwrap_or_else(|error| panic!("{} not written: {error}", path.display()))))
        .collect();
    let json = serde_json::from_slice(&files[1].1).expect("the latency file is JSON");
    Run { stdout, stderr, json, files, reply_wav, _folder: folder }
}

impl Run {
    /// Returns the one turn's transcript and reply from the latency JSON.
    fn turn(&self) -> (String, String) {
        let turns = self.json["turns"].as_array().expect("turns array");
        assert_eq!(turns.len(), 1, "one utterance gives one turn: {:#}", self.json["turns"]);
        let text = |key: &str| turns[0][key].as_str().unwrap_or_else(|| panic!("turn has no {key}")).to_owned();
        (text("transcript"), text("reply"))
    }

    /// Returns the egress records of connections to `port`.
    fn egress_to(&self, port: u16) -> Vec<&Value> {
        let egress = self.json["session"]["egress"].as_array().expect("session.egress array");
        egress.iter().filter(|record| record["port"].as_u64() == Some(u64::from(port))).collect()
    }

    /// Returns the usage record of `stage`.
    fn usage_of(&self, stage: &str) -> &Value {
        let usage = self.json["session"]["usage"].as_array().expect("session.usage array");
        usage
            .iter()
            .find(|record| record["stage"] == stage)
            .unwrap_or_else(|| panic!("no usage record for stage {stage}: {usage:#?}"))
    }
}

/// Checks the printed and saved texts: the transcript matches the
/// recording, and the reply quotes it.
fn check_texts(run: &Run, server_transcript: &str, quote: &str) {
    let (transcript, reply) = run.turn();
    assert_eq!(transcript.trim(), server_transcript, "the program's transcript is what the STT server heard");
    let errors = word_errors(&reference(CLIP), &transcript);
    let rate = errors.rate().expect("non-empty reference");
    assert!(rate <= 0.10, "WER {rate:.3} for {transcript:?}");
    let quoted = normalize(quote);
    assert_eq!(quoted.len(), servers::QUOTED_WORDS, "the reply quotes {} words: {quote:?}", servers::QUOTED_WORDS);
    assert_eq!(quoted[..], normalize(&transcript)[..servers::QUOTED_WORDS], "the quote opens the transcript");
    assert!(reply.contains(quote), "the reply {reply:?} quotes {quote:?}");

    let you = run.stdout.lines().find(|line| line.trim_start().starts_with("you:")).unwrap_or_else(|| panic!("no transcript line:\n{}", run.stdout));
    assert!(you.contains(transcript.trim()), "stdout shows the transcript: {you}");
    let mentis = run.stdout.lines().find(|line| line.trim_start().starts_with("mentis:")).unwrap_or_else(|| panic!("no reply line:\n{}", run.stdout));
    assert!(mentis.contains(quote), "stdout shows the reply quoting {quote:?}: {mentis}");
    assert!(run.stdout.contains("connections that left the device"), "stdout lists the connections:\n{}", run.stdout);
}

/// Checks that the reply WAV contains `spoken_samples` of speech at the
/// reply's place on the input's timeline, and silence before it.
fn check_reply_audio(run: &Run, spoken_samples: usize) {
    let turn = &run.json["turns"][0];
    let start = turn["playback"]["start_s"].as_f64().expect("playback start");
    let synthesized = turn["playback"]["synthesized_s"].as_f64().expect("synthesized length");
    let spoken = spoken_samples as f64 / f64::from(servers::RATE);
    assert!((synthesized - spoken).abs() < 0.05, "the program played {synthesized:.3} s, the TTS server spoke {spoken:.3} s");
    assert!(start >= 5.0, "the reply starts after the user's speech (about 6.5 s), at {start:.2} s");

    let mut reader = open_wav(&run.reply_wav).expect("reply WAV readable");
    let rate = reader.spec().sample_rate;
    assert_eq!(rate, 16_000, "the reply has the input's rate");
    let mut samples = Vec::new();
    while reader.read_f32(16_000, &mut samples).expect("read reply") > 0 {}

    // Loudness per 20 ms window.
    let window = (rate / 50) as usize;
    let loud: Vec<bool> = samples
        .chunks(window)
        .map(|chunk| (chunk.iter().map(|s| s * s).sum::<f32>() / chunk.len() as f32).sqrt() > 0.01)
        .collect();
    let first = (start / 0.02) as usize;
    let last = (((start + synthesized) / 0.02) as usize).min(loud.len());
    assert!(last > first, "the WAV ({} windows) reaches the reply at window {first}", loud.len());
    let before = loud[..first.saturating_sub(3)].iter().filter(|&&loud| loud).count();
    assert_eq!(before, 0, "the WAV is silent before the reply starts at {start:.2} s");
    let during = loud[first..last].iter().filter(|&&loud| loud).count();
    assert!(during * 5 >= (last - first) * 2, "speech in at least 40% of the reply: {during} of {} windows", last - first);
}

/// Checks that the session report lists connections to `port` opened by
/// `stage`, each at the self-hosted tier (loopback) with bytes both ways.
fn check_egress(run: &Run, stage: &str, host: &str, port: u16) {
    let records = run.egress_to(port);
    assert!(!records.is_empty(), "no connection to {host}:{port} in {:#}", run.json["session"]["egress"]);
    for record in records {
        assert_eq!(record["stage"], stage, "{record}");
        assert_eq!(record["host"], host, "{record}");
        assert_eq!(record["tier"], "self_hosted", "127.0.0.1 is a self-hosted address: {record}");
        assert!(record["bytes_sent"].as_u64().is_some_and(|bytes| bytes > 0), "bytes sent: {record}");
        assert!(record["bytes_received"].as_u64().is_some_and(|bytes| bytes > 0), "bytes received: {record}");
    }
    assert!(run.stdout.contains(&format!("{host}:{port}")), "stdout lists {host}:{port}:\n{}", run.stdout);
}

#[test]
fn self_hosted_config_reaches_local_servers() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = runtime();
    let (stt, stt_log, llm, llm_log, tts, tts_log) = runtime.block_on(async {
        let engines = Engines::load().await;
        let (stt, stt_log) = servers::transcription_server(engines.clone()).await;
        let (llm, llm_log) = servers::ollama_server().await;
        let (tts, tts_log) = servers::speech_server(engines).await;
        (stt, stt_log, llm, llm_log, tts, tts_log)
    });

    let config = format!(
        r#"tier = "self_hosted"

[stt]
backend = "openai_transcription"
url = "http://127.0.0.1:{stt}/v1"
model = "whisper-tiny.en"
language = "en"

[llm]
backend = "ollama"
url = "http://127.0.0.1:{llm}"
model = "e2e-quoter"

[tts]
backend = "openai_speech"
url = "http://127.0.0.1:{tts}/v1"
model = "flite"
voice = "slt"
sample_rate = 16000
"#,
        stt = stt.address.port(),
        llm = llm.address.port(),
        tts = tts.address.port(),
    );
    let run = converse(&config, &[]);

    // The transcription server got the speech as a 16 kHz mono WAV form upload.
    let stt_seen = stt_log.lock();
    assert!(stt_seen.problems.is_empty(), "transcription protocol problems: {:?}", stt_seen.problems);
    assert_eq!(stt_seen.requests.len(), 1, "one segment, one upload: {:?}", stt_seen.requests);
    let upload = &stt_seen.requests[0];
    assert_eq!(upload.fields.get("model").map(String::as_str), Some("whisper-tiny.en"));
    assert_eq!(upload.fields.get("language").map(String::as_str), Some("en"));
    assert_eq!(upload.file_type.as_deref(), Some("audio/wav"));
    assert!(upload.file_name.as_deref().is_some_and(|name| name.ends_with(".wav")), "{:?}", upload.file_name);
    assert_eq!((upload.sample_rate, upload.channels), (16_000, 1));
    assert!((4.0..=7.2).contains(&upload.audio_seconds), "the segment lasts {:.2} s", upload.audio_seconds);

    // Ollama got the transcript and streamed a reply quoting it.
    let llm_seen = llm_log.lock();
    assert!(llm_seen.problems.is_empty(), "Ollama protocol problems: {:?}", llm_seen.problems);
    assert_eq!(llm_seen.exchanges.len(), 1);
    let exchange = &llm_seen.exchanges[0];
    assert_eq!(exchange.body["model"], "e2e-quoter");
    assert_eq!(exchange.transcript, upload.transcript, "the LLM got what the STT server heard");
    assert_eq!(exchange.body["messages"][0]["role"], "system", "{}", exchange.body);
    check_texts(&run, &upload.transcript, &exchange.quote);

    // The speech server spoke the reply's sentences as raw PCM.
    let tts_seen = tts_log.lock();
    assert!(tts_seen.problems.is_empty(), "speech protocol problems: {:?}", tts_seen.problems);
    assert!(tts_seen.paths.iter().all(|path| path == "/v1/audio/speech"), "{:?}", tts_seen.paths);
    for body in &tts_seen.messages {
        assert_eq!((body["model"].as_str(), body["voice"].as_str()), (Some("flite"), Some("slt")), "{body}");
    }
    assert_eq!(
        normalize(&tts_seen.spoken.join(" ")),
        normalize(&exchange.reply),
        "the speech server spoke the whole reply, sentence by sentence"
    );
    check_reply_audio(&run, tts_seen.samples);

    // Every backend's connections are in the session report, and its usage.
    check_egress(&run, "stt", "127.0.0.1", stt.address.port());
    check_egress(&run, "llm", "127.0.0.1", llm.address.port());
    check_egress(&run, "tts", "127.0.0.1", tts.address.port());
    let audio_seconds = run.usage_of("stt")["audio_seconds"].as_f64().expect("audio seconds");
    assert!((audio_seconds - upload.audio_seconds).abs() < 0.05, "STT usage {audio_seconds:.3} s, uploaded {:.3} s", upload.audio_seconds);
    let llm_usage = run.usage_of("llm");
    assert_eq!((llm_usage["tokens_in"].as_u64(), llm_usage["tokens_out"].as_u64()), (Some(exchange.tokens_in), Some(exchange.tokens_out)));
    let characters: usize = tts_seen.spoken.iter().map(|text| text.chars().count()).sum();
    assert_eq!(run.usage_of("tts")["characters"].as_u64(), Some(characters as u64), "TTS usage counts the characters sent");
}

#[test]
fn cloud_config_reaches_tls_servers() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = runtime();
    let tls = Arc::new(TestTls::new());
    let (stt, stt_log, llm, llm_log, tts, tts_log) = runtime.block_on(async {
        let engines = Engines::load().await;
        let (stt, stt_log) = servers::deepgram_server(engines.clone(), Arc::clone(&tls)).await;
        let (llm, llm_log) = servers::anthropic_server(Arc::clone(&tls)).await;
        let (tts, tts_log) = servers::elevenlabs_server(engines, Arc::clone(&tls)).await;
        (stt, stt_log, llm, llm_log, tts, tts_log)
    });

    let ca_file = toml_string(&tls.ca_file.to_string_lossy());
    let config = format!(
        r#"tier = "cloud"

[stt]
backend = "deepgram"
url = "wss://localhost:{stt}"
model = "nova-3"
language = "en"
api_key_env = "MENTIS_E2E_DEEPGRAM_KEY"
ca_file = {ca_file}
# The test server runs Whisper before it answers Finalize: allow a slow machine.
timeouts = {{ connect_ms = 5000, first_byte_ms = 15000, idle_ms = 20000 }}

[llm]
backend = "anthropic"
url = "https://localhost:{llm}/v1"
model = "claude-e2e"
api_key_env = "MENTIS_E2E_ANTHROPIC_KEY"
ca_file = {ca_file}

[tts]
backend = "elevenlabs"
url = "wss://localhost:{tts}"
voice = "e2eVoice0123456789"
model = "eleven_flash_v2_5"
sample_rate = 16000
api_key_env = "MENTIS_E2E_ELEVENLABS_KEY"
ca_file = {ca_file}
"#,
        stt = stt.address.port(),
        llm = llm.address.port(),
        tts = tts.address.port(),
    );
    let env = [
        ("MENTIS_E2E_DEEPGRAM_KEY", DEEPGRAM_KEY),
        ("MENTIS_E2E_ANTHROPIC_KEY", ANTHROPIC_KEY),
        ("MENTIS_E2E_ELEVENLABS_KEY", ELEVENLABS_KEY),
    ];
    let run = converse(&config, &env);

    // No key appears in anything the program printed or wrote, debug logs included.
    assert!(run.stderr.contains("DEBUG"), "the program ran with debug logs:\n{}", run.stderr);
    for (name, key) in env {
        assert!(!run.stdout.contains(key), "{name} leaked into stdout");
        assert!(!run.stderr.contains(key), "{name} leaked into stderr");
        for (path, bytes) in &run.files {
            let leaked = bytes.windows(key.len()).any(|window| window == key.as_bytes());
            assert!(!leaked, "{name} leaked into {}", path.display());
        }
    }

    // Deepgram got the key, the options, the audio in non-empty binary
    // frames, and Finalize after the audio, then CloseStream last.
    let stt_seen = stt_log.lock();
    assert!(stt_seen.problems.is_empty(), "Deepgram protocol problems: {:?}", stt_seen.problems);
    assert!(!stt_seen.paths.is_empty(), "no Deepgram connection");
    assert!(stt_seen.authorizations.iter().all(|value| *value == format!("Token {DEEPGRAM_KEY}")), "every handshake carries the Deepgram key");
    for path in &stt_seen.paths {
        assert!(path.starts_with("/v1/listen?"), "{path}");
        for option in ["model=nova-3", "language=en", "encoding=linear16", "sample_rate=16000", "channels=1"] {
            assert!(path.split(['?', '&']).any(|pair| pair == option), "{option} missing in {path}");
        }
    }
    assert_eq!(stt_seen.empty_binary_frames, 0, "a 0-byte frame asks Deepgram to close");
    let events: Vec<&DeepgramEvent> = stt_seen.events.iter().map(|(_, event)| event).collect();
    let last_audio = events.iter().rposition(|event| matches!(event, DeepgramEvent::Audio(_))).expect("audio was sent");
    assert!(
        events[last_audio..].iter().any(|event| **event == DeepgramEvent::Finalize),
        "Finalize follows the last audio: {:?}",
        &events[last_audio..]
    );
    assert_eq!(
        events.last(),
        Some(&&DeepgramEvent::CloseStream),
        "CloseStream ends the stream: {:?} (Whisper took {:?} s)\n{}",
        &events[last_audio..],
        stt_seen.recognition_seconds,
        run.stderr.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).collect::<Vec<_>>().join("\n")
    );
    let server_transcript = stt_seen.finals.iter().filter(|text| !text.is_empty()).cloned().collect::<Vec<_>>().join(" ");
    let sent_seconds = stt_seen.audio_bytes() as f64 / 2.0 / f64::from(servers::RATE);
    assert!((4.0..=7.2).contains(&sent_seconds), "Deepgram got {sent_seconds:.2} s of audio");

    // Anthropic got the key, the version header and the transcript.
    let llm_seen = llm_log.lock();
    assert!(llm_seen.problems.is_empty(), "Anthropic protocol problems: {:?}", llm_seen.problems);
    assert_eq!(llm_seen.exchanges.len(), 1);
    let exchange = &llm_seen.exchanges[0];
    let header = |name: &str| exchange.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    assert!(header("x-api-key").as_deref() == Some(ANTHROPIC_KEY), "the request carries the Anthropic key");
    assert!(header("anthropic-version").is_some(), "the request names the API version");
    assert_eq!(exchange.body["model"], "claude-e2e");
    assert!(exchange.body["max_tokens"].as_u64().is_some_and(|tokens| tokens > 0), "{}", exchange.body);
    assert_eq!(exchange.transcript, server_transcript, "the LLM got what the Deepgram server heard");
    check_texts(&run, &server_transcript, &exchange.quote);

    // ElevenLabs got the key and the stream-input sequence: a space to open,
    // text pieces ending with a space, the empty text to end.
    let tts_seen = tts_log.lock();
    assert!(tts_seen.problems.is_empty(), "ElevenLabs protocol problems: {:?}", tts_seen.problems);
    assert!(!tts_seen.paths.is_empty(), "no ElevenLabs connection");
    for path in &tts_seen.paths {
        assert!(path.starts_with("/v1/text-to-speech/e2eVoice0123456789/stream-input?"), "{path}");
        assert!(path.contains("model_id=eleven_flash_v2_5"), "{path}");
        assert!(path.contains("output_format=pcm_16000"), "{path}");
    }
    for headers in &tts_seen.headers {
        let key = headers.get("xi-api-key").and_then(|value| value.to_str().ok());
        assert!(key == Some(ELEVENLABS_KEY), "every handshake carries the ElevenLabs key");
    }
    let texts: Vec<&str> = tts_seen.messages.iter().map(|message| message["text"].as_str().unwrap_or("<none>")).collect();
    assert_eq!(texts.first(), Some(&" "), "the opening message is a single space: {texts:?}");
    assert_eq!(texts.last(), Some(&""), "the empty text ends the input: {texts:?}");
    assert_eq!(texts.iter().filter(|text| text.is_empty()).count(), tts_seen.paths.len(), "one end of input per connection: {texts:?}");
    assert!(texts.iter().filter(|text| !text.trim().is_empty()).all(|text| text.ends_with(' ')), "pieces end with a space: {texts:?}");
    assert_eq!(tts_seen.finals_sent, tts_seen.paths.len());
    assert_eq!(normalize(&tts_seen.spoken.join(" ")), normalize(&exchange.reply), "ElevenLabs spoke the whole reply");
    check_reply_audio(&run, tts_seen.samples);

    // Every backend's connections are in the session report, and its usage.
    check_egress(&run, "stt", "localhost", stt.address.port());
    check_egress(&run, "llm", "localhost", llm.address.port());
    check_egress(&run, "tts", "localhost", tts.address.port());
    let audio_seconds = run.usage_of("stt")["audio_seconds"].as_f64().expect("audio seconds");
    assert!((audio_seconds - sent_seconds).abs() < 0.05, "STT usage {audio_seconds:.3} s, sent {sent_seconds:.3} s");
    let llm_usage = run.usage_of("llm");
    assert_eq!((llm_usage["tokens_in"].as_u64(), llm_usage["tokens_out"].as_u64()), (Some(exchange.tokens_in), Some(exchange.tokens_out)));
    // The stage counts the text of each piece, not the space the protocol adds at its end.
    let characters: usize = texts.iter().map(|text| text.trim_end().chars().count()).sum();
    assert_eq!(run.usage_of("tts")["characters"].as_u64(), Some(characters as u64), "TTS usage counts the characters sent");
}
