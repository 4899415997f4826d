//! Every backend under every tier: the pipeline is built, or rejected with
//! a privacy error, exactly as the tier policy requires.
//!
//! Each backend is configured the way a user would, from a configuration
//! file, and put in a graph between a source and a sink. Host names resolve
//! through a fixed table, so no name is looked up and no connection is
//! made: provider hosts map to public documentation addresses (RFC 5737),
//! the self-hosted server to a private one.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mentis::config::PipelineConfig;
use mentis::conversation::{BuildError, ConversationConfig, TtsChoice, VadChoice, backends};
use mentis::pipeline::basic::{ChannelSink, ChannelSource};
use mentis::pipeline::privacy::StaticResolver;
use mentis::pipeline::{EdgeConfig, GraphBuilder, GraphError, PrivacyError, PrivacyTier, Stage, StageName};
use mentis::stages::capture::Pacing;
use mentis::stages::llm::{ConversationHistory, HistoryLimits};
use mentis::stages::playback::PlaybackLog;

/// One backend as a configuration section, with the least private tier it needs.
struct Case {
    section: &'static str,
    toml: String,
    needs: PrivacyTier,
}

fn key_file() -> (tempfile::TempDir, PathBuf) {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("key");
    let mut file = std::fs::File::create(&path).expect("key file");
    file.write_all(b"sk-matrix-test-key").expect("write key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("owner-only key file");
    }
    (folder, path)
}

fn cases(key: &std::path::Path) -> Vec<Case> {
    let key = key.display();
    let lan = "asr.lan";
    let case = |section, body: String, needs| Case { section, toml: body, needs };
    vec![
        case("stt", "backend = \"whisper\"".into(), PrivacyTier::OnDevice),
        case("stt", format!("backend = \"openai_transcription\"\nurl = \"http://{lan}:8000/v1\""), PrivacyTier::SelfHosted),
        case("stt", format!("backend = \"websocket\"\nurl = \"ws://{lan}:2700\""), PrivacyTier::SelfHosted),
        case("stt", format!("backend = \"deepgram\"\napi_key_file = \"{key}\""), PrivacyTier::Cloud),
        case("llm", "backend = \"llama\"".into(), PrivacyTier::OnDevice),
        case("llm", format!("backend = \"openai_compatible\"\nurl = \"http://{lan}:8080/v1\""), PrivacyTier::SelfHosted),
        case("llm", format!("backend = \"ollama\"\nurl = \"http://{lan}:11434\""), PrivacyTier::SelfHosted),
        case("llm", format!("backend = \"openai\"\napi_key_file = \"{key}\""), PrivacyTier::Cloud),
        case("llm", format!("backend = \"anthropic\"\napi_key_file = \"{key}\""), PrivacyTier::Cloud),
        case("tts", "backend = \"flite\"".into(), PrivacyTier::OnDevice),
        case("tts", format!("backend = \"openai_speech\"\nurl = \"http://{lan}:8880/v1\"\nvoice = \"af\""), PrivacyTier::SelfHosted),
        case("tts", format!("backend = \"openai_speech\"\napi_key_file = \"{key}\""), PrivacyTier::Cloud),
        case("tts", format!("backend = \"elevenlabs\"\nvoice = \"v1\"\napi_key_file = \"{key}\""), PrivacyTier::Cloud),
    ]
}

fn resolver() -> Arc<StaticResolver> {
    let public: IpAddr = "203.0.113.10".parse().expect("address");
    let private: IpAddr = "192.168.1.20".parse().expect("address");
    Arc::new(
        StaticResolver::new()
            .with_host("asr.lan", &[private])
            .with_host("api.openai.com", &[public])
            .with_host("api.anthropic.com", &[public])
            .with_host("api.deepgram.com", &[public])
            .with_host("api.elevenlabs.io", &[public]),
    )
}

fn conversation(pipeline: PipelineConfig) -> ConversationConfig {
    ConversationConfig {
        input: PathBuf::from("unused.wav"),
        output: PathBuf::from("unused.reply.wav"),
        pacing: Pacing::AsFastAsPossible,
        vad: VadChoice::Webrtc,
        tts: TtsChoice::Flite,
        system_prompt: "test".to_owned(),
        max_tokens: 16,
        end_of_turn_silence: None,
        llm_threads: 1,
        live: false,
        pipeline: Some(pipeline),
    }
}

/// Builds the backend's stage and a source → stage → sink graph for the tier.
fn build(case: &Case, tier: PrivacyTier) -> Result<(), GraphError> {
    let text = format!("tier = \"{}\"\n[{}]\n{}\n", tier_key(tier), case.section, case.toml);
    let pipeline = PipelineConfig::parse(&text).expect("the configuration parses");
    let policy = pipeline.policy().with_resolver(resolver());
    let config = conversation(pipeline);
    let stage: Box<dyn Stage> = match case.section {
        "stt" => backends::stt(&config, &policy),
        "llm" => {
            let history = ConversationHistory::new("test", HistoryLimits::default()).shared();
            backends::llm(&config, &policy, &history, &PlaybackLog::default()).map(|(stage, _)| stage)
        }
        _ => backends::tts(&config, &policy).map(|(stage, _)| stage),
    }
    .unwrap_or_else(|error: BuildError| panic!("{} builds: {error}", case.toml));

    let spec = stage.spec();
    let mut graph = GraphBuilder::new(policy);
    let name = |text: &str| StageName::new(text).expect("name");
    let (_input, source) = ChannelSource::new(name("source"), spec.input, EdgeConfig::lossless(4));
    let (sink, _output) = ChannelSink::new(name("sink"), spec.output, EdgeConfig::lossless(4));
    let source = graph.add(source);
    let stage = graph.add(stage);
    let sink = graph.add(sink);
    graph.connect(source, stage, EdgeConfig::lossless(4)).connect(stage, sink, EdgeConfig::lossless(4));
    graph.build().map(|_| ())
}

fn tier_key(tier: PrivacyTier) -> &'static str {
    match tier {
        PrivacyTier::OnDevice => "on_device",
        PrivacyTier::SelfHosted => "self_hosted",
        PrivacyTier::Cloud => "cloud",
    }
}

#[test]
fn every_backend_under_every_tier() {
    let (_folder, key) = key_file();
    let mut checked = 0;
    for case in cases(&key) {
        for tier in [PrivacyTier::OnDevice, PrivacyTier::SelfHosted, PrivacyTier::Cloud] {
            let result = build(&case, tier);
            let label = format!("[{}] {} under {tier}", case.section, case.toml.lines().next().unwrap_or_default());
            match (case.needs <= tier, result) {
                (true, Ok(())) => {}
                (false, Err(GraphError::Privacy(error))) => {
                    // The error names the stage and gives the reason, by tier.
                    let expected = match tier {
                        PrivacyTier::OnDevice => matches!(error, PrivacyError::NetworkOnDevice { .. }),
                        _ => matches!(error, PrivacyError::PublicAddress { .. }),
                    };
                    assert!(expected, "{label}: wrong rejection {error}");
                    assert!(error.to_string().contains(case.section), "{label}: {error}");
                }
                (true, Err(error)) => panic!("{label}: should be built, but: {error}"),
                (false, Ok(())) => panic!("{label}: should be rejected, but was built"),
                (false, Err(error)) => panic!("{label}: rejected for the wrong reason: {error}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 13 * 3);
}

#[test]
fn fallback_to_a_less_private_backup_is_refused() {
    let text = "tier = \"cloud\"\n[llm]\nbackend = \"ollama\"\nurl = \"http://asr.lan:11434\"\n\
                [[llm.fallback]]\nbackend = \"openai_compatible\"\nurl = \"https://api.openai.com/v1\"\n";
    let pipeline = PipelineConfig::parse(text).expect("parses");
    let policy = pipeline.policy().with_resolver(resolver());
    let config = conversation(pipeline);
    let history = ConversationHistory::new("test", HistoryLimits::default()).shared();
    let error = backends::llm(&config, &policy, &history, &PlaybackLog::default()).map(|_| ()).expect_err("less private backup");
    assert!(error.to_string().contains("never goes to a less private tier"), "{error}");
}
