//! The on-device conversation: a spoken reply to a recording.
//!
//! The graph is capture → resample to 16 kHz → VAD → end-of-speech marker →
//! speech-to-text → LLM → sentence aggregation → speech synthesis → resample
//! to the input's rate → playback → WAV writer. Two logging taps collect each
//! turn's transcript and reply text. By default everything runs on the
//! device and the graph is built for [`PrivacyTier::OnDevice`], so no stage
//! may open a socket. A [`PipelineConfig`](crate::config::PipelineConfig)
//! (feature `network`) swaps the STT, LLM and TTS stages for self-hosted or
//! cloud backends and sets the tier the graph is checked against.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mentis_pipeline::{
    AudioFormat, Control, EdgeConfig, Emitter, Frame, FrameMeta, GraphBuilder, Payload, PortFormat,
    PrivacyPolicy, PrivacyTier, Processor, SampleFormat, Session, SessionId, Stage, StageError, StageFuture,
    StageIo, StageName, StageSpec, TranscriptKind, TurnId, processor,
};
use mentis_stages::capture::{CaptureOptions, CaptureSource, FileCapture, Pacing};
use mentis_stages::llm::{ConversationHistory, GenerationLog, HistoryLimits, LlamaConfig, LlamaLlm, SharedHistory};
use mentis_stages::playback::{EndOfSpeechMarker, Playback, PlaybackLog, TurnEnds};
use mentis_stages::resample::Resample;
use mentis_stages::sink::{SinkCounters, SinkOptions, WavSink};
use mentis_stages::stt::{WhisperConfig, WhisperRecognizer, WhisperStt};
use mentis_stages::text::SentenceAggregator;
use mentis_stages::vad::{Vad, VadConfig, VoiceDetector, WebRtcConfig, WebRtcVad};
use mentis_stages::wav::ChannelMode;
use parking_lot::Mutex;

/// The rate every speech model of the pipeline takes.
pub const SPEECH_RATE: u32 = 16_000;

/// The system prompt used when none is given: short answers suit speech.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful voice assistant. Answer in one or two short, plain sentences.";

/// The voice activity detector that segments the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VadChoice {
    /// WebRTC VAD: cheap, built in.
    Webrtc,
    /// Silero VAD v6 through ONNX Runtime.
    Silero,
}

/// The engine that speaks the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtsChoice {
    /// A Piper voice (needs the `piper` feature, which links GPL-3 espeak-ng).
    Piper,
    /// flite's slt voice.
    Flite,
}

/// Settings of one conversation run.
#[derive(Debug, Clone)]
pub struct ConversationConfig {
    /// The recording of the person speaking: WAV, any rate, mono or stereo.
    pub input: PathBuf,
    /// The path of the reply WAV.
    pub output: PathBuf,
    /// Real time (what a live user would see) or as fast as possible.
    pub pacing: Pacing,
    /// The voice activity detector.
    pub vad: VadChoice,
    /// The speech synthesis engine.
    pub tts: TtsChoice,
    /// The LLM's system prompt.
    pub system_prompt: String,
    /// The maximum number of tokens the LLM generates per reply.
    pub max_tokens: u32,
    /// Silence after speech that ends the user's turn.
    pub end_of_turn_silence: Option<Duration>,
    /// Threads llama.cpp decodes with.
    pub llm_threads: u16,
    /// Listen to the default microphone and speak through the default
    /// speaker instead of reading `input` and writing `output` (feature `device`).
    pub live: bool,
    /// The tier and the STT, LLM and TTS backends from a configuration file;
    /// `None` runs everything on the device.
    #[cfg(feature = "network")]
    pub pipeline: Option<crate::config::PipelineConfig>,
}

/// The text of one turn: the user's transcript and the reply.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TurnText {
    /// The final transcript of the user's speech.
    pub transcript: String,
    /// The partial transcripts seen before it.
    pub partials: usize,
    /// The reply as the LLM generated it.
    pub reply: String,
}

/// Transcripts and replies by turn. Cloning shares the record.
#[derive(Debug, Clone, Default)]
pub struct ConversationLog(Arc<Mutex<BTreeMap<TurnId, TurnText>>>);

impl ConversationLog {
    /// Returns every turn's text, by turn.
    pub fn turns(&self) -> BTreeMap<TurnId, TurnText> {
        self.0.lock().clone()
    }
}

/// A sink that records transcripts and reply text into a [`ConversationLog`].
#[derive(Debug)]
struct LogTap {
    name: StageName,
    input: PortFormat,
    log: ConversationLog,
}

impl Stage for LogTap {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), self.input, PortFormat::None)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            while let Some(frame) = io.inbox.recv().await {
                let mut turns = self.log.0.lock();
                match &frame.payload {
                    Payload::Transcript(transcript) => {
                        let entry = turns.entry(frame.meta.turn).or_default();
                        match transcript.kind {
                            TranscriptKind::Final => entry.transcript = transcript.text.clone(),
                            TranscriptKind::Partial => entry.partials += 1,
                        }
                    }
                    Payload::Text(delta) => turns.entry(frame.meta.turn).or_default().reply.push_str(&delta.text),
                    _ => {}
                }
            }
            Ok(())
        })
    }
}

/// Wraps the LLM so that, before it reads the history for a new turn, every
/// interrupted reply in the history is cut to the part that was played.
/// The trimming runs on the LLM's own thread, just before the LLM handles
/// the next transcript and after it recorded its previous reply.
struct HeardHistory<P> {
    inner: P,
    trimmer: HeardTrimmer,
}

/// Cuts interrupted replies in the history to the part that was played.
struct HeardTrimmer {
    history: SharedHistory,
    playback: PlaybackLog,
    trimmed: BTreeSet<TurnId>,
}

impl HeardTrimmer {
    fn new(history: SharedHistory, playback: PlaybackLog) -> Self {
        HeardTrimmer { history, playback, trimmed: BTreeSet::new() }
    }

    /// Cuts every reply before `current` to what was heard of it. A new turn
    /// starts only after the voice activity detector interrupted the earlier
    /// ones, so a reply that playback never started was not heard at all.
    fn trim_unheard(&mut self, current: TurnId) {
        let mut history = self.history.lock();
        let earlier: Vec<(TurnId, String)> = history
            .exchanges()
            .filter(|exchange| exchange.turn < current && !self.trimmed.contains(&exchange.turn))
            .map(|exchange| (exchange.turn, exchange.reply.clone()))
            .collect();
        for (turn, full) in earlier {
            self.trimmed.insert(turn);
            let heard = match self.playback.reply(turn) {
                Some(reply) if !reply.interrupted => continue,
                Some(reply) => played_prefix(&full, reply.played_fraction()),
                None => String::new(),
            };
            if let Err(error) = history.truncate_reply(turn, heard.clone()) {
                tracing::warn!(turn = turn.0, %error, "could not trim the interrupted reply in the history");
            } else {
                tracing::info!(turn = turn.0, heard = heard.len(), generated = full.len(), "trimmed interrupted reply");
            }
        }
    }
}

/// Returns the words of `reply` that fit in `fraction` of its characters.
///
/// NOTE: this assumes the played share of the synthesized audio matches the
/// share of the reply text. When synthesis lagged behind generation at the
/// interrupt, it keeps more text than was heard.
pub fn played_prefix(reply: &str, fraction: f64) -> String {
    let budget = (reply.chars().count() as f64 * fraction.clamp(0.0, 1.0)).round() as usize;
    let mut kept = String::new();
    let mut used = 0;
    for word in reply.split_whitespace() {
        let cost = word.chars().count() + usize::from(!kept.is_empty());
        if used + cost > budget {
            break;
        }
        if !kept.is_empty() {
            kept.push(' ');
        }
        kept.push_str(word);
        used += cost;
    }
    kept
}

impl<P: Processor> Processor for HeardHistory<P> {
    fn spec(&self) -> StageSpec {
        self.inner.spec()
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        if matches!(&frame.payload, Payload::Transcript(t) if t.kind == TranscriptKind::Final) {
            self.trimmer.trim_unheard(frame.meta.turn);
        }
        self.inner.process(frame, out)
    }

    fn control(&mut self, control: &Control, meta: &FrameMeta, out: &mut Emitter<'_>) -> Result<(), StageError> {
        self.inner.control(control, meta, out)
    }

    fn finish(&mut self, out: &mut Emitter<'_>) -> Result<(), StageError> {
        self.inner.finish(out)
    }
}

/// Counts the input's media time as it passes, for a progress display.
#[derive(Debug)]
struct ProgressTap {
    name: StageName,
    format: AudioFormat,
    position_nanos: Arc<AtomicU64>,
}

impl Processor for ProgressTap {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.format), PortFormat::Audio(self.format))
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let end = frame.meta.timestamp.add(frame.media_duration());
        self.position_nanos.fetch_max(end.0, Ordering::Relaxed);
        out.emit(frame);
        Ok(())
    }
}

/// An error that prevents building a conversation.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A stage could not be constructed.
    #[error("cannot set up stage {stage}: {message}")]
    Stage {
        /// The stage.
        stage: &'static str,
        /// The failure and its fix.
        message: String,
    },
    /// The graph is invalid.
    #[error(transparent)]
    Graph(#[from] mentis_pipeline::GraphError),
    /// A stage name is invalid.
    #[error(transparent)]
    Name(#[from] mentis_pipeline::id::InvalidStageName),
}

fn stage_error(stage: &'static str) -> impl Fn(&dyn std::fmt::Display) -> BuildError {
    move |error| BuildError::Stage { stage, message: error.to_string() }
}

/// A running conversation and the handles to read its results.
#[derive(Debug)]
pub struct Conversation {
    /// The running session.
    pub session: Session,
    /// Transcripts and replies by turn.
    pub log: ConversationLog,
    /// How much of each reply was played.
    pub playback: PlaybackLog,
    /// The conversation history the LLM keeps.
    pub history: SharedHistory,
    /// Counters of the reply WAV.
    pub output: SinkCounters,
    /// The input's format.
    pub input_format: AudioFormat,
    /// The input's length.
    pub input_duration: Duration,
    /// Media time of the input that has passed capture.
    pub position_nanos: Arc<AtomicU64>,
    /// When each turn ended and when its speech was announced.
    pub turn_times: TurnEnds,
    /// The LLM's measurements of each reply.
    pub generations: GenerationLog,
}

fn name(text: &str) -> Result<StageName, BuildError> {
    Ok(StageName::new(text)?)
}

/// Builds the graph and starts the session on the current tokio runtime.
pub fn start(config: &ConversationConfig, session: SessionId) -> Result<Conversation, BuildError> {
    let policy = pipeline_policy(config);
    let mut graph = GraphBuilder::new(policy.clone());
    let log = ConversationLog::default();
    let playback_log = PlaybackLog::default();
    let position_nanos = Arc::new(AtomicU64::new(0));

    // Audio in: a recording paced like a microphone (or not), or the
    // microphone itself, as mono f32.
    let (capture, input_format, input_duration) = if config.live {
        live_input(&mut graph)?
    } else {
        let capture_options = CaptureOptions {
            sample_format: SampleFormat::F32,
            channel_mode: ChannelMode::Downmix,
            pacing: config.pacing,
            ..CaptureOptions::default()
        };
        let capture = FileCapture::open(name("capture")?, CaptureSource::Wav(config.input.clone()), capture_options)
            .map_err(|error| stage_error("capture")(&error))?;
        let format = capture.format();
        let duration = wav_duration(&config.input).unwrap_or(Duration::ZERO);
        (graph.add(capture), format, duration)
    };
    let progress = graph.add(processor(ProgressTap {
        name: name("progress")?,
        format: input_format,
        position_nanos: Arc::clone(&position_nanos),
    }));
    // Paced like a microphone, the audio edge keeps at most 200 ms and drops
    // the oldest audio, so a stalled consumer cannot build up latency. Read
    // as fast as possible, the input outruns real time, so the edge blocks.
    let audio_edge = match config.pacing {
        Pacing::RealTime => EdgeConfig::realtime_audio(Duration::from_millis(200)),
        Pacing::AsFastAsPossible => EdgeConfig::lossless(16),
    };
    // Speech, text and reply audio must not be lost: lossless edges.
    let lossless = EdgeConfig::lossless(64);
    graph.connect(capture, progress, EdgeConfig::lossless(16));

    let speech_format = AudioFormat::mono_f32(SPEECH_RATE);
    let to_speech_rate = if input_format.sample_rate == SPEECH_RATE {
        progress
    } else {
        let resample = Resample::new(name("resample-in")?, input_format, SPEECH_RATE)
            .map_err(|error| stage_error("resample-in")(&error))?;
        let resample = graph.add(processor(resample));
        graph.connect(progress, resample, EdgeConfig::lossless(16));
        resample
    };

    // Voice activity detection cuts turns and raises interrupts.
    let vad = build_vad(config)?;
    let vad = graph.add(vad);
    graph.connect(to_speech_rate, vad, audio_edge);
    let turn_ends = TurnEnds::default();
    let marker = EndOfSpeechMarker::new(name("end-of-speech")?, PortFormat::Audio(speech_format))
        .with_turn_ends(turn_ends.clone());
    let marker = graph.add(processor(marker));
    graph.connect(vad, marker, lossless);

    // Speech to text.
    let stt = graph.add(backends::stt(config, &policy)?);
    graph.connect(marker, stt, EdgeConfig::lossless(512));
    let transcript_log = graph.add(LogTap { name: name("transcript-log")?, input: PortFormat::Transcript, log: log.clone() });
    graph.connect(stt, transcript_log, lossless);

    // The LLM, with the history trimmed to what the user heard.
    let history = ConversationHistory::new(config.system_prompt.clone(), HistoryLimits::default()).shared();
    let (llm, generations) = backends::llm(config, &policy, &history, &playback_log)?;
    let llm = graph.add(llm);
    graph.connect(stt, llm, lossless);
    let reply_log = graph.add(LogTap { name: name("reply-log")?, input: PortFormat::Text, log: log.clone() });
    graph.connect(llm, reply_log, EdgeConfig::lossless(1_024));

    // Sentences to speech.
    let aggregator = graph.add(processor(SentenceAggregator::new(name("sentences")?)));
    graph.connect(llm, aggregator, EdgeConfig::lossless(1_024));
    let (tts, voice_rate) = backends::tts(config, &policy)?;
    let tts = graph.add(tts);
    graph.connect(aggregator, tts, lossless);

    // Reply audio back to the input's rate, played on the session timeline.
    let output_format = AudioFormat::mono_f32(input_format.sample_rate);
    let reply_audio = if voice_rate == output_format.sample_rate {
        tts
    } else {
        let resample = Resample::new(name("resample-out")?, AudioFormat::mono_f32(voice_rate), output_format.sample_rate)
            .map_err(|error| stage_error("resample-out")(&error))?;
        let resample = graph.add(processor(resample));
        // A reply is synthesized faster than it plays, so this edge has room for a
        // whole reply: 1,024 frames of 20 ms is about 20 s.
        graph.connect(tts, resample, EdgeConfig::lossless(1_024));
        resample
    };
    let playback_pacing = if config.live { Pacing::RealTime } else { config.pacing };
    let playback = Playback::new(name("playback")?, output_format, playback_pacing, playback_log.clone())
        .with_turn_ends(turn_ends.clone());
    let playback = graph.add(playback);
    graph.connect(reply_audio, playback, EdgeConfig::lossless(1_024));
    let output = if config.live {
        live_output(&mut graph, playback, output_format)?;
        SinkCounters::default()
    } else {
        let sink_options =
            SinkOptions { format: Some(output_format), file_sample_format: Some(SampleFormat::I16), timeline: true };
        let (writer, output) = WavSink::create(name("reply-wav")?, &config.output, sink_options)
            .map_err(|error| stage_error("reply-wav")(&error))?;
        let writer = graph.add(writer);
        graph.connect(playback, writer, EdgeConfig::lossless(1_024));
        output
    };

    let session = graph.build()?.start(session);
    Ok(Conversation {
        session,
        log,
        playback: playback_log,
        history,
        output,
        input_format,
        input_duration,
        position_nanos,
        turn_times: turn_ends,
        generations,
    })
}

/// Adds the default microphone, downmixed to mono; returns the node, its
/// format and an unknown (zero) duration.
#[cfg(feature = "device")]
fn live_input(graph: &mut GraphBuilder) -> Result<(mentis_pipeline::NodeId, AudioFormat, Duration), BuildError> {
    let microphone = mentis_stages::device::Microphone::open(name("microphone")?, Duration::from_millis(20))
        .map_err(|error| stage_error("microphone")(&error))?;
    let format = microphone.format();
    let node = graph.add(microphone);
    if format.channels == 1 {
        return Ok((node, format, Duration::ZERO));
    }
    let mono = AudioFormat { channels: 1, ..format };
    let downmix = graph.add(processor(Downmix { name: name("downmix")?, input: format }));
    graph.connect(node, downmix, EdgeConfig::realtime_audio(Duration::from_millis(200)));
    Ok((downmix, mono, Duration::ZERO))
}

#[cfg(not(feature = "device"))]
fn live_input(_graph: &mut GraphBuilder) -> Result<(mentis_pipeline::NodeId, AudioFormat, Duration), BuildError> {
    Err(BuildError::Stage {
        stage: "microphone",
        message: "live audio needs the `device` feature (cpal, ALSA headers); rebuild with `--features device`".to_owned(),
    })
}

/// Connects `playback` to the default speaker.
#[cfg(feature = "device")]
fn live_output(graph: &mut GraphBuilder, playback: mentis_pipeline::NodeId, format: AudioFormat) -> Result<(), BuildError> {
    let speaker = mentis_stages::device::Speaker::open(name("speaker")?, format)
        .map_err(|error| stage_error("speaker")(&error))?;
    let speaker = graph.add(speaker);
    graph.connect(playback, speaker, EdgeConfig::lossless(64));
    Ok(())
}

#[cfg(not(feature = "device"))]
fn live_output(_graph: &mut GraphBuilder, _playback: mentis_pipeline::NodeId, _format: AudioFormat) -> Result<(), BuildError> {
    Err(BuildError::Stage {
        stage: "speaker",
        message: "live audio needs the `device` feature (cpal, ALSA headers); rebuild with `--features device`".to_owned(),
    })
}

/// Averages interleaved channels into one.
#[cfg(feature = "device")]
#[derive(Debug)]
struct Downmix {
    name: StageName,
    input: AudioFormat,
}

#[cfg(feature = "device")]
impl Processor for Downmix {
    fn spec(&self) -> StageSpec {
        let mono = AudioFormat { channels: 1, ..self.input };
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.input), PortFormat::Audio(mono))
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let Some(audio) = frame.as_audio() else {
            return Ok(());
        };
        let channels = usize::from(audio.format().channels.max(1));
        let samples = audio.to_f32();
        let mono: Vec<f32> = samples.chunks_exact(channels).map(|chunk| chunk.iter().sum::<f32>() / channels as f32).collect();
        let audio = mentis_pipeline::AudioData::from_f32(audio.format().sample_rate, 1, mono)
            .map_err(|error| StageError::fatal(format!("downmixed audio is invalid: {error}")))?;
        out.emit(Frame::audio(frame.meta, audio));
        Ok(())
    }
}

fn build_vad(config: &ConversationConfig) -> Result<Box<dyn Stage>, BuildError> {
    match config.vad {
        VadChoice::Webrtc => {
            let detector = WebRtcVad::new(WebRtcConfig::new(SPEECH_RATE)).map_err(|error| stage_error("vad")(&error))?;
            vad_stage(config, detector)
        }
        VadChoice::Silero => {
            use mentis_stages::vad::{SileroConfig, SileroVad};
            let detector = SileroVad::new(SileroConfig::new(SPEECH_RATE)).map_err(|error| stage_error("vad")(&error))?;
            vad_stage(config, detector)
        }
    }
}

/// Wraps a detector in the VAD stage: f32 audio, the detector's segmenter
/// defaults, and the configured end-of-turn silence.
fn vad_stage<D: VoiceDetector>(config: &ConversationConfig, detector: D) -> Result<Box<dyn Stage>, BuildError> {
    let mut vad_config = VadConfig::for_detector(&detector);
    vad_config.sample_format = SampleFormat::F32;
    if let Some(silence) = config.end_of_turn_silence {
        vad_config.segmenter.end_silence = silence;
    }
    let vad = Vad::with_config(name("vad")?, detector, vad_config).map_err(|error| stage_error("vad")(&error))?;
    Ok(processor(vad))
}

/// The on-device LLM: SmolLM2 through llama.cpp, wrapped so that the history
/// keeps only what the user heard of interrupted replies.
fn llama_llm(
    config: &ConversationConfig,
    history: &SharedHistory,
    playback: &PlaybackLog,
) -> Result<(Box<dyn Stage>, GenerationLog), BuildError> {
    // One thread: llama.cpp's threads spin while they wait for each other, so
    // two of them on a 2-core machine that also runs speech recognition and
    // synthesis decode several times slower than one.
    let mut llm_config = LlamaConfig::smollm2().with_max_new_tokens(config.max_tokens);
    llm_config.threads = config.llm_threads;
    let llm = LlamaLlm::new(name("llm")?, llm_config, Arc::clone(history)).map_err(|error| stage_error("llm")(&error))?;
    let generations = llm.generation_log();
    let trimmer = HeardTrimmer::new(Arc::clone(history), playback.clone());
    Ok((processor(HeardHistory { inner: llm, trimmer }), generations))
}

/// The on-device speech recognizer: Whisper tiny.en.
fn whisper_stt() -> Result<Box<dyn Stage>, BuildError> {
    let recognizer = WhisperRecognizer::new(WhisperConfig::tiny_en()).map_err(|error| stage_error("stt")(&error))?;
    Ok(processor(WhisperStt::new(name("stt")?, recognizer)))
}

/// Returns the policy of the configured tier, or the on-device one.
fn pipeline_policy(config: &ConversationConfig) -> PrivacyPolicy {
    #[cfg(feature = "network")]
    if let Some(pipeline) = &config.pipeline {
        return pipeline.policy();
    }
    let _ = config;
    PrivacyPolicy::new(PrivacyTier::OnDevice)
}

#[cfg(not(feature = "network"))]
mod backends {
    //! Without the `network` feature every stage runs on the device.
    use super::*;

    pub(super) fn stt(_config: &ConversationConfig, _policy: &PrivacyPolicy) -> Result<Box<dyn Stage>, BuildError> {
        whisper_stt()
    }

    pub(super) fn llm(
        config: &ConversationConfig,
        _policy: &PrivacyPolicy,
        history: &SharedHistory,
        playback: &PlaybackLog,
    ) -> Result<(Box<dyn Stage>, GenerationLog), BuildError> {
        llama_llm(config, history, playback)
    }

    pub(super) fn tts(config: &ConversationConfig, _policy: &PrivacyPolicy) -> Result<(Box<dyn Stage>, u32), BuildError> {
        on_device_tts(config)
    }
}

#[cfg(feature = "network")]
pub mod backends;

fn on_device_tts(config: &ConversationConfig) -> Result<(Box<dyn Stage>, u32), BuildError> {
    match config.tts {
        TtsChoice::Flite => {
            let tts = mentis_stages::tts::FliteTts::slt(name("tts")?).map_err(|error| stage_error("tts")(&error))?;
            let rate = output_rate(&tts.spec());
            Ok((processor(tts), rate))
        }
        #[cfg(feature = "piper")]
        TtsChoice::Piper => {
            use mentis_stages::tts::{Piper, PiperConfig, PiperTts};
            let engine = Piper::new(PiperConfig::joe()).map_err(|error| stage_error("tts")(&error))?;
            let tts = PiperTts::new(name("tts")?, engine).map_err(|error| stage_error("tts")(&error))?;
            let rate = output_rate(&tts.spec());
            Ok((processor(tts), rate))
        }
        #[cfg(not(feature = "piper"))]
        TtsChoice::Piper => Err(BuildError::Stage {
            stage: "tts",
            message: "the Piper voice needs the `piper` feature (it links GPL-3 espeak-ng); rebuild with \
                      `--features piper` or choose flite"
                .to_owned(),
        }),
    }
}

fn output_rate(spec: &StageSpec) -> u32 {
    match spec.output {
        PortFormat::Audio(format) => format.sample_rate,
        _ => SPEECH_RATE,
    }
}

/// Returns the playing time the WAV header of `path` declares, if it declares a size.
fn wav_duration(path: &Path) -> Option<Duration> {
    let reader = mentis_stages::wav::open_wav(path).ok()?;
    let header = reader.header()?;
    let frames = header.data_size? / header.spec.block_align().max(1) as u64;
    Some(Duration::from_secs_f64(frames as f64 / f64::from(header.spec.sample_rate.max(1))))
}

/// Returns the default reply path next to the input: `NAME.reply.wav`.
pub fn default_output(input: &Path) -> PathBuf {
    let stem = input.file_stem().map_or_else(|| "input".into(), |stem| stem.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}.reply.wav"))
}

#[cfg(test)]
mod tests {
    use super::played_prefix;

    #[test]
    fn played_prefix_keeps_whole_words() {
        let reply = "The capital of France is Paris.";
        assert_eq!(played_prefix(reply, 1.0), reply);
        assert_eq!(played_prefix(reply, 0.0), "");
        // Half of 31 characters is 16: "The capital of" (14) fits, "France" does not.
        assert_eq!(played_prefix(reply, 0.5), "The capital of");
    }

    #[test]
    fn played_prefix_clamps_fraction() {
        assert_eq!(played_prefix("one two", 7.0), "one two");
        assert_eq!(played_prefix("one two", -1.0), "");
        assert_eq!(played_prefix("", 0.5), "");
    }

    #[test]
    fn played_prefix_counts_characters_not_bytes() {
        // Eight characters, sixteen bytes: half keeps the first word of four.
        assert_eq!(played_prefix("日本語 たのしい", 0.5), "日本語");
    }
}
