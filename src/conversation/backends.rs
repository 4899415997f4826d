//! Builds the STT, LLM and TTS stages the configuration file picks, each
//! with its backups behind a [`Fallback`].

use std::sync::Arc;

use mentis_pipeline::wrap::Fallback;
use mentis_pipeline::{PrivacyPolicy, SampleFormat, Stage, StageName};
use mentis_stages::llm::anthropic::{ANTHROPIC_BASE_URL, AnthropicChat};
use mentis_stages::llm::ollama::{OLLAMA_BASE_URL, OllamaChat};
use mentis_stages::llm::openai::{OPENAI_BASE_URL, OpenAiChat};
use mentis_stages::llm::remote::{RemoteLlm, ReplySettings};
use mentis_stages::llm::{GenerationLog, SharedHistory};
use mentis_stages::net::Endpoint;
use mentis_stages::playback::PlaybackLog;

use super::{BuildError, ConversationConfig, HeardTrimmer, llama_llm, name, on_device_tts, output_rate, whisper_stt};
use crate::config::{BackendConfig, ConfigError, LlmBackend, SttBackend, TtsBackend};

/// Deepgram's API host. The stage adds `/v1/listen` and the options.
pub const DEEPGRAM_URL: &str = "wss://api.deepgram.com";
/// ElevenLabs' API host, for the stream-input WebSocket.
pub const ELEVENLABS_URL: &str = "wss://api.elevenlabs.io";

fn config_error(error: ConfigError) -> BuildError {
    BuildError::Stage { stage: "config", message: error.to_string() }
}

/// Names the primary backend `stage` and its backups `stage-backup-N`.
fn stage_name(stage: &str, index: usize) -> Result<StageName, BuildError> {
    if index == 0 { name(stage) } else { name(&format!("{stage}-backup-{index}")) }
}

/// Returns the primary backend followed by its backups.
fn chain<B: Clone>(primary: &BackendConfig<B>) -> Vec<BackendConfig<B>> {
    let mut backends = vec![primary.clone()];
    backends.extend(primary.fallback.iter().cloned());
    backends
}

/// Wraps several backends in a [`Fallback`], and returns a single one as is.
fn with_fallback(mut stages: Vec<Box<dyn Stage>>, policy: &PrivacyPolicy, stage: &'static str) -> Result<Box<dyn Stage>, BuildError> {
    if stages.len() == 1 {
        return Ok(stages.remove(0));
    }
    let fallback = Fallback::new(stages, policy).map_err(|error| BuildError::Stage { stage, message: error.to_string() })?;
    Ok(Box::new(fallback))
}

fn endpoint<B: crate::config::BackendKind>(
    backend: &BackendConfig<B>,
    section: &'static str,
    default_url: Option<&str>,
) -> Result<Endpoint, BuildError> {
    backend.endpoint(section, default_url).map_err(config_error)?.ok_or_else(|| BuildError::Stage {
        stage: section,
        message: format!("backend {} has no endpoint", backend.backend.label()),
    })
}

fn setup_error(stage: &'static str) -> impl Fn(&dyn std::fmt::Display) -> BuildError {
    move |error| BuildError::Stage { stage, message: error.to_string() }
}

/// Builds the speech recognizer: Whisper unless the configuration picks
/// another. `policy` decides how private each backup is.
pub fn stt(config: &ConversationConfig, policy: &PrivacyPolicy) -> Result<Box<dyn Stage>, BuildError> {
    let Some(primary) = config.pipeline.as_ref().and_then(|pipeline| pipeline.stt.as_ref()) else {
        return whisper_stt();
    };
    let mut stages = Vec::new();
    for (index, backend) in chain(primary).iter().enumerate() {
        let stage_name = stage_name("stt", index)?;
        let stage: Box<dyn Stage> = match backend.backend {
            SttBackend::Whisper => {
                let recognizer = mentis_stages::stt::WhisperRecognizer::new(mentis_stages::stt::WhisperConfig::tiny_en())
                    .map_err(|error| setup_error("stt")(&error))?;
                mentis_pipeline::processor(mentis_stages::stt::WhisperStt::new(stage_name, recognizer))
            }
            SttBackend::OpenaiTranscription => {
                use mentis_stages::stt::transcription::{TranscriptionConfig, TranscriptionStt};
                let endpoint = endpoint(backend, "stt", None)?;
                let settings = TranscriptionConfig {
                    model: backend.model_or("whisper-1"),
                    language: backend.language.clone(),
                    sample_format: SampleFormat::F32,
                    ..TranscriptionConfig::default()
                };
                Box::new(TranscriptionStt::new(stage_name, endpoint, settings).map_err(|error| setup_error("stt")(&error))?)
            }
            SttBackend::Deepgram => {
                let endpoint = endpoint(backend, "stt", Some(DEEPGRAM_URL))?;
                deepgram_stt(stage_name, endpoint, backend)?
            }
            SttBackend::Websocket => {
                let endpoint = endpoint(backend, "stt", None)?;
                websocket_stt(stage_name, endpoint, backend)?
            }
        };
        stages.push(stage);
    }
    with_fallback(stages, policy, "stt")
}

/// Builds the LLM: SmolLM2 on the device unless the configuration picks another.
pub fn llm(
    config: &ConversationConfig,
    policy: &PrivacyPolicy,
    history: &SharedHistory,
    playback: &PlaybackLog,
) -> Result<(Box<dyn Stage>, GenerationLog), BuildError> {
    let Some(primary) = config.pipeline.as_ref().and_then(|pipeline| pipeline.llm.as_ref()) else {
        return llama_llm(config, history, playback);
    };
    let settings = ReplySettings { max_tokens: config.max_tokens, temperature: None };
    let mut stages = Vec::new();
    let mut generations = GenerationLog::default();
    for (index, backend) in chain(primary).iter().enumerate() {
        let stage_name = stage_name("llm", index)?;
        let history = Arc::clone(history);
        // Each backend cuts interrupted replies to what was heard before it reads the history.
        let mut trimmer = HeardTrimmer::new(Arc::clone(&history), playback.clone());
        let trim = move |turn| trimmer.trim_unheard(turn);
        let stage: Box<dyn Stage> = match backend.backend {
            LlmBackend::Llama => {
                let (stage, log) = llama_llm(config, &history, playback)?;
                generations = log;
                stage
            }
            LlmBackend::Openai => {
                let protocol = OpenAiChat::openai(backend.model_or("gpt-4o-mini"));
                let endpoint = endpoint(backend, "llm", Some(OPENAI_BASE_URL))?;
                Box::new(RemoteLlm::new(stage_name, protocol, endpoint, history, settings).with_before_reply(trim))
            }
            LlmBackend::OpenaiCompatible => {
                let protocol = OpenAiChat::compatible(backend.model_or("default"));
                let endpoint = endpoint(backend, "llm", None)?;
                Box::new(RemoteLlm::new(stage_name, protocol, endpoint, history, settings).with_before_reply(trim))
            }
            LlmBackend::Anthropic => {
                let protocol = AnthropicChat::new(backend.model_or("claude-3-5-haiku-latest"));
                let endpoint = endpoint(backend, "llm", Some(ANTHROPIC_BASE_URL))?;
                Box::new(RemoteLlm::new(stage_name, protocol, endpoint, history, settings).with_before_reply(trim))
            }
            LlmBackend::Ollama => {
                let protocol = OllamaChat::new(backend.model_or("llama3.2"));
                let default = backend.url.is_none().then_some(OLLAMA_BASE_URL);
                let endpoint = endpoint(backend, "llm", default)?;
                Box::new(RemoteLlm::new(stage_name, protocol, endpoint, history, settings).with_before_reply(trim))
            }
        };
        stages.push(stage);
    }
    Ok((with_fallback(stages, policy, "llm")?, generations))
}

/// Builds the speech synthesizer and returns it with its output rate: the
/// command line's choice unless the configuration picks another.
pub fn tts(config: &ConversationConfig, policy: &PrivacyPolicy) -> Result<(Box<dyn Stage>, u32), BuildError> {
    let Some(primary) = config.pipeline.as_ref().and_then(|pipeline| pipeline.tts.as_ref()) else {
        return on_device_tts(config);
    };
    let mut stages = Vec::new();
    for (index, backend) in chain(primary).iter().enumerate() {
        let stage_name = stage_name("tts", index)?;
        let stage: Box<dyn Stage> = match backend.backend {
            TtsBackend::Flite | TtsBackend::Piper => {
                let mut on_device = config.clone();
                on_device.tts = match backend.backend {
                    TtsBackend::Piper => super::TtsChoice::Piper,
                    _ => super::TtsChoice::Flite,
                };
                on_device_tts(&on_device)?.0
            }
            TtsBackend::OpenaiSpeech => {
                use mentis_stages::tts::speech::{OpenAiSpeech, SpeechConfig};
                let endpoint = endpoint(backend, "tts", Some(OPENAI_BASE_URL))?;
                let mut settings = SpeechConfig::new(backend.model_or("tts-1"), backend.voice.clone().unwrap_or_else(|| "alloy".to_owned()));
                if let Some(rate) = backend.sample_rate {
                    settings.sample_rate = rate;
                }
                Box::new(OpenAiSpeech::new(stage_name, endpoint, settings).map_err(|error| setup_error("tts")(&error))?)
            }
            TtsBackend::Elevenlabs => {
                let endpoint = endpoint(backend, "tts", Some(ELEVENLABS_URL))?;
                elevenlabs_tts(stage_name, endpoint, backend)?
            }
        };
        stages.push(stage);
    }
    // Backups must speak at the primary's rate: the graph resamples one rate.
    let rate = output_rate(&stages[0].spec());
    if let Some(other) = stages.iter().map(|stage| output_rate(&stage.spec())).find(|other| *other != rate) {
        return Err(BuildError::Stage {
            stage: "tts",
            message: format!(
                "the TTS backups speak at {other} Hz but the primary at {rate} Hz; set `sample_rate` so that all match"
            ),
        });
    }
    Ok((with_fallback(stages, policy, "tts")?, rate))
}

fn deepgram_stt(name: StageName, endpoint: Endpoint, backend: &BackendConfig<SttBackend>) -> Result<Box<dyn Stage>, BuildError> {
    use mentis_stages::stt::deepgram::{DeepgramConfig, DeepgramStt};
    let mut settings = DeepgramConfig { sample_format: SampleFormat::F32, ..DeepgramConfig::default() };
    if let Some(model) = &backend.model {
        settings.options.model.clone_from(model);
    }
    if backend.language.is_some() {
        settings.options.language.clone_from(&backend.language);
    }
    // The response to Finalize is the first response to a request, so the
    // configured first-byte limit also bounds the wait for it.
    if let Some(timeouts) = backend.timeouts {
        settings.finalize_wait = timeouts.first_byte;
    }
    Ok(Box::new(DeepgramStt::new(name, endpoint, settings).map_err(|error| setup_error("stt")(&error))?))
}

fn websocket_stt(name: StageName, endpoint: Endpoint, _backend: &BackendConfig<SttBackend>) -> Result<Box<dyn Stage>, BuildError> {
    use mentis_stages::stt::websocket::{WebSocketStt, WebSocketSttConfig};
    let settings = WebSocketSttConfig { sample_format: SampleFormat::F32, ..WebSocketSttConfig::default() };
    Ok(Box::new(WebSocketStt::new(name, endpoint, settings).map_err(|error| setup_error("stt")(&error))?))
}

fn elevenlabs_tts(name: StageName, endpoint: Endpoint, backend: &BackendConfig<TtsBackend>) -> Result<Box<dyn Stage>, BuildError> {
    use mentis_stages::tts::elevenlabs::messages::PcmOutputFormat;
    use mentis_stages::tts::elevenlabs::{ElevenLabsConfig, ElevenLabsTts};
    let voice = backend.voice.clone().ok_or_else(|| BuildError::Stage {
        stage: "tts",
        message: "[tts] backend elevenlabs needs `voice`, the voice id from your ElevenLabs voice library".to_owned(),
    })?;
    let mut settings = ElevenLabsConfig::new(voice, backend.model_or("eleven_flash_v2_5"));
    settings.options.output_format = match backend.sample_rate.unwrap_or(16_000) {
        8_000 => PcmOutputFormat::Pcm8000,
        16_000 => PcmOutputFormat::Pcm16000,
        22_050 => PcmOutputFormat::Pcm22050,
        24_000 => PcmOutputFormat::Pcm24000,
        44_100 => PcmOutputFormat::Pcm44100,
        other => {
            return Err(BuildError::Stage {
                stage: "tts",
                message: format!("ElevenLabs sends PCM at 8000, 16000, 22050, 24000 or 44100 Hz, not {other}; set `sample_rate` to one of them"),
            });
        }
    };
    Ok(Box::new(ElevenLabsTts::new(name, endpoint, settings).map_err(|error| setup_error("tts")(&error))?))
}
