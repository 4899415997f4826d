//! The real on-device pipeline: the audio front, WebRTC VAD, Whisper tiny.en
//! (CTranslate2), SmolLM2 through llama.cpp, sentence aggregation and flite.
//! It needs the models that `scripts/setup` downloads.

use std::sync::Arc;

use mentis_pipeline::{AudioFormat, EdgeConfig, GraphBuilder, PortFormat, PrivacyPolicy, PrivacyTier, Processor};
use mentis_stages::llm::{ConversationHistory, HistoryLimits, LlamaConfig, LlamaLlm};
use mentis_stages::playback::EndOfSpeechMarker;
use mentis_stages::stt::{WhisperConfig, WhisperRecognizer, WhisperStt};
use mentis_stages::text::SentenceAggregator;
use mentis_stages::tts::FliteTts;
use mentis_stages::vad::{Vad, VadConfig, WebRtcConfig, WebRtcVad};

use super::{
    EGRESS_CAPACITY, PipelineBuildError, PipelineFactory, PipelineRequest, SPEECH_RATE, SessionPipeline, add_audio_front,
    add_client_sink, add_reply_resampler, stage_error, stage_name,
};

/// Settings of the on-device pipeline.
#[derive(Debug, Clone)]
pub struct OnDevicePipeline {
    /// The LLM's system prompt.
    pub system_prompt: String,
    /// Maximum tokens per reply.
    pub max_tokens: u32,
    /// Threads llama.cpp decodes with.
    pub llm_threads: u16,
}

impl Default for OnDevicePipeline {
    /// Short spoken replies, 48 tokens at most, one decoding thread.
    fn default() -> Self {
        OnDevicePipeline {
            system_prompt: "You are a helpful voice assistant. Answer in one short, plain sentence.".to_owned(),
            max_tokens: 48,
            llm_threads: 1,
        }
    }
}

impl PipelineFactory for OnDevicePipeline {
    fn tier(&self) -> PrivacyTier {
        PrivacyTier::OnDevice
    }

    // NOTE: every session loads its own Whisper and llama.cpp models (about
    // 250 MB together), so this pipeline suits a few sessions per process.
    fn build(&self, request: &PipelineRequest) -> Result<SessionPipeline, PipelineBuildError> {
        let mut graph = GraphBuilder::new(PrivacyPolicy::new(request.tier));
        let (front, input) = add_audio_front(&mut graph, request)?;
        let lossless = EdgeConfig::lossless(64);

        let detector = WebRtcVad::new(WebRtcConfig::new(SPEECH_RATE)).map_err(|error| stage_error("vad", &error))?;
        let mut vad_config = VadConfig::for_detector(&detector);
        vad_config.sample_format = front.format.sample_format;
        let vad = Vad::with_config(stage_name("vad")?, detector, vad_config).map_err(|error| stage_error("vad", &error))?;
        let vad = graph.add(mentis_pipeline::processor(vad));
        graph.connect(front.node, vad, EdgeConfig::lossless(16));
        let marker = graph.add(mentis_pipeline::processor(EndOfSpeechMarker::new(stage_name("end-of-speech")?, PortFormat::Audio(front.format))));
        graph.connect(vad, marker, lossless);

        // Whisper takes float audio; the front emits 16-bit audio for PCM16 clients.
        let stt_input = if front.format.sample_format == mentis_pipeline::SampleFormat::F32 {
            marker
        } else {
            let convert = super::Downmix::new(stage_name("to-float")?, front.format);
            let convert = graph.add(mentis_pipeline::processor(convert));
            graph.connect(marker, convert, lossless);
            convert
        };
        let recognizer = WhisperRecognizer::new(WhisperConfig::tiny_en()).map_err(|error| stage_error("stt", &error))?;
        let stt = graph.add(mentis_pipeline::processor(WhisperStt::new(stage_name("stt")?, recognizer)));
        graph.connect(stt_input, stt, EdgeConfig::lossless(512));

        let history = ConversationHistory::new(self.system_prompt.clone(), HistoryLimits::default()).shared();
        let mut llm_config = LlamaConfig::smollm2().with_max_new_tokens(self.max_tokens);
        llm_config.threads = self.llm_threads;
        let llm = LlamaLlm::new(stage_name("llm")?, llm_config, Arc::clone(&history)).map_err(|error| stage_error("llm", &error))?;
        let llm = graph.add(mentis_pipeline::processor(llm));
        graph.connect(stt, llm, lossless);

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

        let (sink, output) = add_client_sink(&mut graph)?;
        graph.connect(stt, sink, lossless);
        graph.connect(llm, sink, EdgeConfig::lossless(1_024));
        graph.connect(reply, sink, EdgeConfig::lossless(EGRESS_CAPACITY));
        Ok(SessionPipeline { pipeline: graph.build()?, input, output })
    }
}
