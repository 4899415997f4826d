//! The real on-device pipeline: the audio front, WebRTC VAD, Whisper tiny.en
//! (CTranslate2), SmolLM2 through llama.cpp, sentence aggregation and flite.
//! It needs the models that `scripts/setup` downloads.
//!
//! # Models and sessions
//!
//! - Whisper is loaded once per [`OnDevicePipeline`], at the first session
//!   or by [`OnDevicePipeline::load_models`], and shared by every session. A
//!   [`WhisperRecognizer`] keeps the open utterance's audio inside itself, so
//!   sessions do not share it directly. Each session buffers its own
//!   utterance in a [`SessionWhisper`] and borrows the shared recognizer, one
//!   session at a time, only for [`WhisperRecognizer::recognize`]. Two
//!   sessions that finish an utterance together are recognized one after the other.
//! - llama.cpp is loaded per session. A [`LlamaLlm`] owns its model and the
//!   context that borrows it, and the stages crate has no constructor that
//!   takes a model loaded elsewhere. llama.cpp maps the GGUF file into memory,
//!   so the weights' pages are shared by every session through the page cache.
//!   What each session adds is the context: loading SmolLM2-135M with the
//!   default 2,048-token window, llama.cpp reported a 45 MiB KV cache and
//!   105 MiB of compute buffers, about 150 MiB per session.
//! - flite registers its voice once per process (the stages crate does that).
//!
//! [`OnDeviceConfig::max_sessions`] bounds the sessions of this pipeline that
//! run at once; one more gets [`PipelineBuildError::Busy`].

use std::sync::Arc;

use mentis_pipeline::{AudioFormat, EdgeConfig, GraphBuilder, PortFormat, PrivacyPolicy, PrivacyTier, Processor};
use mentis_stages::llm::{ConversationHistory, HistoryLimits, LlamaConfig, LlamaLlm};
use mentis_stages::playback::EndOfSpeechMarker;
use mentis_stages::stt::{Recognition, Recognizer, Stt, SttConfig, SttError, UtteranceBuffer, WhisperConfig, WhisperRecognizer};
use mentis_stages::text::SentenceAggregator;
use mentis_stages::tts::FliteTts;
use mentis_stages::vad::{Pcm, Vad, VadConfig, WebRtcConfig, WebRtcVad};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    EGRESS_CAPACITY, PipelineBuildError, PipelineFactory, PipelineRequest, SPEECH_RATE, SessionPipeline, add_audio_front,
    add_client_sink, add_reply_resampler, stage_error, stage_name,
};

/// The name this pipeline is registered under and reported by in errors.
pub const PIPELINE_NAME: &str = "on-device";

/// Settings of the on-device pipeline.
#[derive(Debug, Clone)]
pub struct OnDeviceConfig {
    /// The LLM's system prompt.
    pub system_prompt: String,
    /// Maximum tokens per reply.
    pub max_tokens: u32,
    /// Threads llama.cpp decodes with, in each session.
    pub llm_threads: u16,
    /// The Whisper model and its inference settings, shared by every session.
    pub whisper: WhisperConfig,
    /// Sessions of this pipeline running at once in this process. One more
    /// is rejected with [`PipelineBuildError::Busy`]. At least 1.
    pub max_sessions: usize,
}

impl OnDeviceConfig {
    /// The default bound on concurrent sessions. Four sessions take about
    /// 600 MiB of llama.cpp contexts beside the shared models, and Whisper
    /// recognizes one utterance at a time for all of them.
    // NOTE: this bound was not measured under load. Size it for the target machine.
    pub const DEFAULT_MAX_SESSIONS: usize = 4;
}

impl Default for OnDeviceConfig {
    /// Short spoken replies, 48 tokens at most, one decoding thread,
    /// Whisper tiny.en from the model cache, 4 sessions at once.
    fn default() -> Self {
        OnDeviceConfig {
            system_prompt: "You are a helpful voice assistant. Answer in one short, plain sentence.".to_owned(),
            max_tokens: 48,
            // llama.cpp's threads spin while they wait for each other, so one
            // thread beside Whisper and flite decodes faster than two on a
            // small machine.
            llm_threads: 1,
            whisper: WhisperConfig::tiny_en(),
            max_sessions: OnDeviceConfig::DEFAULT_MAX_SESSIONS,
        }
    }
}

/// The on-device pipeline factory: its settings, the shared Whisper model,
/// and the session slots.
#[derive(Debug)]
pub struct OnDevicePipeline {
    config: OnDeviceConfig,
    /// Loaded at the first session, or by `load_models`, and then kept. A
    /// failed load is not kept, so the next session tries again.
    whisper: Mutex<Option<Arc<Mutex<WhisperRecognizer>>>>,
    sessions: Arc<Semaphore>,
}

impl Default for OnDevicePipeline {
    fn default() -> Self {
        OnDevicePipeline::new(OnDeviceConfig::default())
    }
}

impl OnDevicePipeline {
    /// Creates the factory. Models are loaded at the first session, or
    /// earlier by [`load_models`](Self::load_models). A `max_sessions` of 0 is taken as 1.
    pub fn new(config: OnDeviceConfig) -> Self {
        let sessions = Arc::new(Semaphore::new(config.max_sessions.max(1)));
        OnDevicePipeline { config, whisper: Mutex::new(None), sessions }
    }

    /// Returns the settings.
    pub fn config(&self) -> &OnDeviceConfig {
        &self.config
    }

    /// Loads the shared Whisper model now, and checks that the llama.cpp
    /// model file exists, so that a server can fail at startup rather than
    /// at its first session. It blocks for a second or more.
    pub fn load_models(&self) -> Result<(), PipelineBuildError> {
        self.shared_whisper()?;
        let llama = LlamaConfig::smollm2_path();
        if !llama.is_file() {
            let message = format!("the GGUF model {} is missing; run scripts/setup to download it", llama.display());
            return Err(PipelineBuildError::Stage { stage: "llm".to_owned(), message });
        }
        Ok(())
    }

    /// Returns the shared Whisper recognizer, loading it on first use.
    fn shared_whisper(&self) -> Result<Arc<Mutex<WhisperRecognizer>>, PipelineBuildError> {
        // The lock is held while loading, so sessions that start together load the model once.
        let mut slot = self.whisper.lock();
        if let Some(whisper) = slot.as_ref() {
            return Ok(Arc::clone(whisper));
        }
        let recognizer = WhisperRecognizer::new(self.config.whisper.clone()).map_err(|error| stage_error("stt", &error))?;
        let whisper = Arc::new(Mutex::new(recognizer));
        *slot = Some(Arc::clone(&whisper));
        Ok(whisper)
    }

    /// Takes a session slot, or reports that every slot is taken.
    fn take_slot(&self) -> Result<OwnedSemaphorePermit, PipelineBuildError> {
        Arc::clone(&self.sessions).try_acquire_owned().map_err(|_| PipelineBuildError::Busy {
            pipeline: PIPELINE_NAME.to_owned(),
            max_sessions: self.config.max_sessions.max(1),
        })
    }
}

impl PipelineFactory for OnDevicePipeline {
    fn tier(&self) -> PrivacyTier {
        PrivacyTier::OnDevice
    }

    fn build(&self, request: &PipelineRequest) -> Result<SessionPipeline, PipelineBuildError> {
        // The slot lives in the speech-to-text stage, so it is freed when the
        // session's graph is dropped, including when this build fails.
        let slot = self.take_slot()?;
        let whisper = self.shared_whisper()?;

        let mut graph = GraphBuilder::new(PrivacyPolicy::new(request.tier));
        let (front, input) = add_audio_front(&mut graph, request)?;
        let lossless = EdgeConfig::lossless(64);

        // Voice activity cuts the audio into turns; the marker records when each turn's speech ended.
        let detector = WebRtcVad::new(WebRtcConfig::new(SPEECH_RATE)).map_err(|error| stage_error("vad", &error))?;
        let mut vad_config = VadConfig::for_detector(&detector);
        vad_config.sample_format = front.format.sample_format;
        let vad = Vad::with_config(stage_name("vad")?, detector, vad_config).map_err(|error| stage_error("vad", &error))?;
        let vad = graph.add(mentis_pipeline::processor(vad));
        graph.connect(front.node, vad, EdgeConfig::lossless(16));
        let marker = graph.add(mentis_pipeline::processor(EndOfSpeechMarker::new(stage_name("end-of-speech")?, PortFormat::Audio(front.format))));
        graph.connect(vad, marker, lossless);

        // Speech to text with the shared Whisper model. The stage takes either
        // sample format, so it declares the front's. 512 frames of 20 ms is about 10 s of speech.
        let recognizer = SessionWhisper::new(whisper, slot);
        let stt_config = SttConfig { sample_format: front.format.sample_format, ..SttConfig::default() };
        let stt = graph.add(mentis_pipeline::processor(Stt::with_config(stage_name("stt")?, recognizer, stt_config)));
        graph.connect(marker, stt, EdgeConfig::lossless(512));

        // NOTE: the history keeps every reply whole, because the gateway does
        // not learn how much of an interrupted reply the client played.
        let history = ConversationHistory::new(self.config.system_prompt.clone(), HistoryLimits::default()).shared();
        let mut llm_config = LlamaConfig::smollm2().with_max_new_tokens(self.config.max_tokens);
        llm_config.threads = self.config.llm_threads;
        let llm = LlamaLlm::new(stage_name("llm")?, llm_config, Arc::clone(&history)).map_err(|error| stage_error("llm", &error))?;
        let llm = graph.add(mentis_pipeline::processor(llm));
        graph.connect(stt, llm, lossless);

        // Sentences to speech, resampled to the client's output rate.
        let sentences = graph.add(mentis_pipeline::processor(SentenceAggregator::new(stage_name("sentences")?)));
        graph.connect(llm, sentences, EdgeConfig::lossless(1_024));
        let tts = FliteTts::slt(stage_name("tts")?).map_err(|error| stage_error("tts", &error))?;
        let voice = match tts.spec().output {
            PortFormat::Audio(format) => format,
            _ => AudioFormat::mono_f32(SPEECH_RATE),
        };
        let tts = graph.add(mentis_pipeline::processor(tts));
        graph.connect(sentences, tts, lossless);
        let reply = add_reply_resampler(&mut graph, tts, voice, &request.output)?;

        // Transcripts, reply text and reply audio all go to the client.
        let (sink, output) = add_client_sink(&mut graph)?;
        graph.connect(stt, sink, lossless);
        graph.connect(llm, sink, EdgeConfig::lossless(1_024));
        graph.connect(reply, sink, EdgeConfig::lossless(EGRESS_CAPACITY));
        Ok(SessionPipeline { pipeline: graph.build()?, input, output })
    }
}

/// One session's Whisper recognizer: it buffers the session's utterance and
/// runs the shared model on it when the utterance ends. It also holds the
/// session's slot of the pipeline's concurrency bound.
#[derive(Debug)]
pub struct SessionWhisper {
    shared: Arc<Mutex<WhisperRecognizer>>,
    /// The open utterance's audio at 16 kHz, capped at the model's `max_utterance`.
    utterance: UtteranceBuffer,
    _slot: OwnedSemaphorePermit,
}

impl SessionWhisper {
    fn new(shared: Arc<Mutex<WhisperRecognizer>>, slot: OwnedSemaphorePermit) -> Self {
        let max_utterance = shared.lock().config().max_utterance;
        SessionWhisper { shared, utterance: UtteranceBuffer::new(max_utterance), _slot: slot }
    }
}

impl Recognizer for SessionWhisper {
    fn name(&self) -> &'static str {
        "whisper"
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
        // Other sessions wait here while this utterance is recognized.
        let result = self.shared.lock().recognize(self.utterance.samples());
        self.utterance.clear();
        result
    }

    fn cancel_utterance(&mut self) {
        self.utterance.clear();
    }
}
