//! The configuration file of `mentis converse`: the pipeline's privacy tier
//! and each stage's backend.
//!
//! ```toml
//! tier = "self_hosted"            # on_device, self_hosted or cloud
//! allow_hosts = ["asr.example"]   # self-hosted hosts outside the local ranges
//!
//! [stt]
//! backend = "openai_transcription"
//! url = "http://192.168.1.20:8000/v1"
//! model = "Systran/faster-whisper-small.en"
//!
//! [llm]
//! backend = "ollama"
//! url = "http://192.168.1.20:11434"
//! model = "llama3.2"
//!
//! [tts]
//! backend = "openai_speech"
//! url = "http://192.168.1.20:8880/v1"
//! voice = "af_heart"
//! sample_rate = 24000
//! ```
//!
//! Every section is optional. A missing one keeps the on-device backend.
//! API keys are never written in the file: `api_key_env` names an
//! environment variable and `api_key_file` a file (readable by its owner
//! only) that contains the key. A `[[stt.fallback]]` (or llm, tts) table adds a
//! backup backend of the same kind, which must be at least as private as the
//! one it backs up. `configs/` has an example file for each tier.

use std::path::{Path, PathBuf};

use mentis_pipeline::wrap::RetryPolicy;
use mentis_pipeline::{PrivacyPolicy, PrivacyTier, Secret};
use serde::Deserialize;
use url::Url;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The tier the pipeline is built for.
    pub tier: PrivacyTier,
    /// Hosts a self-hosted pipeline may reach whatever they resolve to.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Speech to text.
    pub stt: Option<BackendConfig<SttBackend>>,
    /// The language model.
    pub llm: Option<BackendConfig<LlmBackend>>,
    /// Speech synthesis.
    pub tts: Option<BackendConfig<TtsBackend>>,
}

/// Speech-to-text backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SttBackend {
    /// Whisper tiny.en on the device.
    Whisper,
    /// A self-hosted OpenAI-compatible transcription server.
    OpenaiTranscription,
    /// A self-hosted streaming server speaking the Vosk WebSocket protocol.
    Websocket,
    /// Deepgram live transcription (cloud).
    Deepgram,
}

/// LLM backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmBackend {
    /// SmolLM2 through llama.cpp on the device.
    Llama,
    /// OpenAI's Chat Completions (cloud).
    Openai,
    /// A self-hosted OpenAI-compatible server (llama.cpp server, vLLM).
    OpenaiCompatible,
    /// Anthropic's Messages API (cloud).
    Anthropic,
    /// A self-hosted Ollama server.
    Ollama,
}

/// Speech synthesis backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtsBackend {
    /// A Piper voice on the device (needs the `piper` feature).
    Piper,
    /// flite's slt voice on the device.
    Flite,
    /// An OpenAI-compatible speech endpoint streaming raw PCM: OpenAI itself
    /// (cloud) or self-hosted Piper HTTP and kokoro servers.
    OpenaiSpeech,
    /// ElevenLabs stream-input (cloud).
    Elevenlabs,
}

/// Whether a backend runs on the device, on a self-hosted server, or at a
/// cloud provider, which decides whether plaintext URLs are accepted.
pub trait BackendKind: Copy + std::fmt::Debug {
    /// Returns the backend's name for messages.
    fn label(self) -> &'static str;
    /// Returns whether the backend runs on the device and takes no URL.
    fn on_device(self) -> bool;
    /// Returns where the backend at `url` runs, or `None` for on-device backends.
    fn hosting(self, url: &Url) -> Option<mentis_stages::net::Hosting>;
}

/// Returns cloud for the provider's own host and self-hosted for any other,
/// because an OpenAI-compatible API may be served by a server of the user's.
fn hosting_by_url(url: &Url, cloud_host: &str) -> mentis_stages::net::Hosting {
    if url.host_str().is_some_and(|host| host.eq_ignore_ascii_case(cloud_host)) {
        mentis_stages::net::Hosting::Cloud
    } else {
        mentis_stages::net::Hosting::SelfHosted
    }
}

impl BackendKind for SttBackend {
    fn label(self) -> &'static str {
        match self {
            SttBackend::Whisper => "whisper",
            SttBackend::OpenaiTranscription => "openai_transcription",
            SttBackend::Websocket => "websocket",
            SttBackend::Deepgram => "deepgram",
        }
    }

    fn on_device(self) -> bool {
        self == SttBackend::Whisper
    }

    fn hosting(self, url: &Url) -> Option<mentis_stages::net::Hosting> {
        use mentis_stages::net::Hosting;
        match self {
            SttBackend::Whisper => None,
            SttBackend::OpenaiTranscription => Some(hosting_by_url(url, "api.openai.com")),
            SttBackend::Websocket => Some(Hosting::SelfHosted),
            SttBackend::Deepgram => Some(Hosting::Cloud),
        }
    }
}

impl BackendKind for LlmBackend {
    fn label(self) -> &'static str {
        match self {
            LlmBackend::Llama => "llama",
            LlmBackend::Openai => "openai",
            LlmBackend::OpenaiCompatible => "openai_compatible",
            LlmBackend::Anthropic => "anthropic",
            LlmBackend::Ollama => "ollama",
        }
    }

    fn on_device(self) -> bool {
        self == LlmBackend::Llama
    }

    fn hosting(self, _url: &Url) -> Option<mentis_stages::net::Hosting> {
        use mentis_stages::net::Hosting;
        match self {
            LlmBackend::Llama => None,
            LlmBackend::Openai | LlmBackend::Anthropic => Some(Hosting::Cloud),
            LlmBackend::OpenaiCompatible | LlmBackend::Ollama => Some(Hosting::SelfHosted),
        }
    }
}

impl BackendKind for TtsBackend {
    fn label(self) -> &'static str {
        match self {
            TtsBackend::Piper => "piper",
            TtsBackend::Flite => "flite",
            TtsBackend::OpenaiSpeech => "openai_speech",
            TtsBackend::Elevenlabs => "elevenlabs",
        }
    }

    fn on_device(self) -> bool {
        matches!(self, TtsBackend::Piper | TtsBackend::Flite)
    }

    fn hosting(self, url: &Url) -> Option<mentis_stages::net::Hosting> {
        use mentis_stages::net::Hosting;
        match self {
            TtsBackend::Piper | TtsBackend::Flite => None,
            TtsBackend::OpenaiSpeech => Some(hosting_by_url(url, "api.openai.com")),
            TtsBackend::Elevenlabs => Some(Hosting::Cloud),
        }
    }
}

/// One backend's settings. Which fields apply depends on the backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "B: Deserialize<'de>"))]
pub struct BackendConfig<B> {
    /// The backend.
    pub backend: B,
    /// The endpoint. Each cloud backend has its provider's address as the
    /// default, and a self-hosted one needs it.
    #[serde(default)]
    pub url: Option<Url>,
    /// The model name at the provider.
    #[serde(default)]
    pub model: Option<String>,
    /// The voice (TTS).
    #[serde(default)]
    pub voice: Option<String>,
    /// The language code (STT), such as `en`.
    #[serde(default)]
    pub language: Option<String>,
    /// The sample rate of the audio the backend returns (TTS).
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// The environment variable holding the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A file holding the API key, readable by its owner only.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust besides the public roots, for
    /// self-hosted servers with a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time limits of the backend's connections.
    #[serde(default)]
    pub timeouts: Option<mentis_stages::net::Timeouts>,
    /// Attempts after the first failed one, for one request (default 3).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Backup backends of the same kind, tried in order.
    #[serde(default)]
    pub fallback: Vec<BackendConfig<B>>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the documented shape.
    #[error("the configuration file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and the offending key.
        message: String,
    },
    /// A backend's settings are incomplete or contradictory.
    #[error("[{section}] backend {backend}: {message}")]
    Backend {
        /// `stt`, `llm` or `tts`.
        section: &'static str,
        /// The backend.
        backend: &'static str,
        /// The problem and its fix.
        message: String,
    },
}

impl PipelineConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        PipelineConfig::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses the text of a configuration file.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }

    /// Returns the privacy policy: the tier and the allow-list.
    pub fn policy(&self) -> PrivacyPolicy {
        self.allow_hosts.iter().fold(PrivacyPolicy::new(self.tier), |policy, host| policy.allow_host(host))
    }
}

impl<B: BackendKind> BackendConfig<B> {
    /// Returns the backend's connection settings, or `None` for an on-device
    /// backend. `default_url` is the provider's address, used when the file
    /// gives none.
    pub fn endpoint(
        &self,
        section: &'static str,
        default_url: Option<&str>,
    ) -> Result<Option<mentis_stages::net::Endpoint>, ConfigError> {
        let backend = self.backend.label();
        let problem = |message: String| ConfigError::Backend { section, backend, message };
        if self.backend.on_device() {
            return match self.url {
                Some(_) => Err(problem("an on-device backend takes no `url`".to_owned())),
                None => Ok(None),
            };
        }
        let url = match (&self.url, default_url) {
            (Some(url), _) => url.clone(),
            (None, Some(default)) => Url::parse(default).map_err(|error| problem(error.to_string()))?,
            (None, None) => return Err(problem("a self-hosted backend needs `url`, the address of your server".to_owned())),
        };
        let Some(hosting) = self.backend.hosting(&url) else {
            return Ok(None);
        };

        let mut endpoint =
            mentis_stages::net::Endpoint::new(backend, hosting, url).map_err(|error| problem(error.to_string()))?;
        if let Some(key) = self.api_key()? {
            endpoint = endpoint.with_api_key(key);
        } else if hosting == mentis_stages::net::Hosting::Cloud {
            return Err(problem(
                "a cloud backend needs an API key: set `api_key_env` to the variable that holds it, or `api_key_file`"
                    .to_owned(),
            ));
        }
        if let Some(ca_file) = &self.ca_file {
            endpoint = endpoint.with_ca_file(ca_file).map_err(|error| problem(error.to_string()))?;
        }
        if let Some(timeouts) = self.timeouts {
            endpoint = endpoint.with_timeouts(timeouts);
        }
        if let Some(retries) = self.retries {
            endpoint = endpoint.with_retry(RetryPolicy { max_retries: retries, ..RetryPolicy::default() });
        }
        Ok(Some(endpoint))
    }

    /// Reads the API key from the named variable or file, if one is named.
    fn api_key(&self) -> Result<Option<Secret>, ConfigError> {
        let backend = self.backend.label();
        let problem = |message: String| ConfigError::Backend { section: "key", backend, message };
        match (&self.api_key_env, &self.api_key_file) {
            (Some(_), Some(_)) => Err(problem("set `api_key_env` or `api_key_file`, not both".to_owned())),
            (Some(variable), None) => Secret::from_env(variable).map(Some).map_err(|error| problem(error.to_string())),
            (None, Some(path)) => Secret::from_file(path).map(Some).map_err(|error| problem(error.to_string())),
            (None, None) => Ok(None),
        }
    }

    /// Returns the model name, or `default`.
    pub fn model_or(&self, default: &str) -> String {
        self.model.clone().unwrap_or_else(|| default.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_full_file_parses() {
        let config = PipelineConfig::parse(
            r#"
            tier = "self_hosted"
            allow_hosts = ["gpu.example"]
            [stt]
            backend = "openai_transcription"
            url = "http://192.168.1.20:8000/v1"
            [[stt.fallback]]
            backend = "whisper"
            [llm]
            backend = "ollama"
            url = "http://192.168.1.20:11434"
            model = "llama3.2"
            timeouts = { connect_ms = 1000, first_byte_ms = 5000, idle_ms = 5000 }
            [tts]
            backend = "flite"
            "#,
        )
        .expect("valid file");
        assert_eq!(config.tier, PrivacyTier::SelfHosted);
        let stt = config.stt.as_ref().expect("stt");
        assert_eq!((stt.backend, stt.fallback.len()), (SttBackend::OpenaiTranscription, 1));
        let llm = config.llm.as_ref().expect("llm");
        assert_eq!(llm.timeouts.map(|t| t.first_byte.as_millis()), Some(5000));
        let endpoint = llm.endpoint("llm", None).expect("valid").expect("a network backend");
        assert_eq!(endpoint.url().as_str(), "http://192.168.1.20:11434/");
    }

    #[test]
    fn unknown_keys_and_backends_are_named() {
        let error = PipelineConfig::parse("tier = \"cloud\"\n[llm]\nbackend = \"llama\"\nmodle = \"x\"\n").expect_err("typo");
        assert!(error.contains("modle"), "{error}");
        let error = PipelineConfig::parse("tier = \"cloud\"\n[stt]\nbackend = \"siri\"\n").expect_err("unknown");
        assert!(error.contains("siri"), "{error}");
        assert!(error.contains("deepgram"), "the message lists the backends: {error}");
        let error = PipelineConfig::parse("tier = \"nowhere\"\n").expect_err("bad tier");
        assert!(error.contains("nowhere"), "{error}");
    }

    #[test]
    fn cloud_backends_need_tls_and_a_key() {
        let config = PipelineConfig::parse(
            "tier = \"cloud\"\n[llm]\nbackend = \"anthropic\"\nurl = \"http://api.anthropic.com/v1\"\napi_key_env = \"MENTIS_TEST_UNSET_KEY_1\"\n",
        )
        .expect("parses");
        let error = config.llm.as_ref().expect("llm").endpoint("llm", None).expect_err("plain http");
        assert!(error.to_string().contains("MENTIS_TEST_UNSET_KEY_1") || error.to_string().contains("https"), "{error}");

        let config = PipelineConfig::parse("tier = \"cloud\"\n[llm]\nbackend = \"openai\"\n").expect("parses");
        let error = config.llm.as_ref().expect("llm").endpoint("llm", Some("https://api.openai.com/v1")).expect_err("no key");
        assert!(error.to_string().contains("needs an API key"), "{error}");

        let config = PipelineConfig::parse("tier = \"self_hosted\"\n[llm]\nbackend = \"ollama\"\n").expect("parses");
        let error = config.llm.as_ref().expect("llm").endpoint("llm", None).expect_err("no url");
        assert!(error.to_string().contains("needs `url`"), "{error}");
    }
}
