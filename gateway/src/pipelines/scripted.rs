//! The load-test pipeline: the real audio front and WebRTC VAD, followed by
//! scripted speech-to-text, LLM and text-to-speech stages that answer after
//! fixed, configurable latencies.
//!
//! The scripted stages do no inference, so a load test of this pipeline
//! measures what the gateway and the audio stages cost per session. They can
//! also be configured to fail mid-turn or to hang, which the fault tests use to
//! stand in for a backend connection that drops or a backend that stops responding.

use std::time::Duration;

use mentis_pipeline::wrap::Timeout;
use mentis_pipeline::{
    AudioData, AudioFormat, Control, EdgeConfig, Frame, GraphBuilder, MediaTime, Payload, PortFormat, PrivacyPolicy,
    PrivacyTier, Stage, StageError, StageFuture, StageIo, StageName, StageSpec, TextDelta, Transcript,
    TranscriptKind, TurnId, TurnMark,
};
use mentis_stages::playback::EndOfSpeechMarker;
use mentis_stages::vad::{Vad, VadConfig, WebRtcConfig, WebRtcVad};
use tokio::time::Instant;

use super::{
    PipelineBuildError, PipelineFactory, PipelineRequest, SPEECH_RATE, SessionPipeline, add_audio_front, add_client_sink,
    add_reply_resampler, stage_error, stage_name,
};

/// A failure a scripted stage simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The LLM fails with a retryable error after sending this many tokens of
    /// its first reply, as when a backend connection drops mid-turn.
    LlmDropsMidTurn {
        /// Tokens sent before the failure.
        after_tokens: usize,
    },
    /// The LLM takes its first transcript and never answers or reads again,
    /// as a backend that hangs. The stage timeout turns this into an error.
    LlmHangs,
}

/// Settings of the load-test pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadTestConfig {
    /// Time from the end of a turn to its final transcript.
    pub stt_latency: Duration,
    /// Speech between two partial transcripts.
    pub partial_interval: Duration,
    /// Time from the final transcript to the first LLM token.
    pub first_token_latency: Duration,
    /// Time between two LLM tokens.
    pub token_interval: Duration,
    /// Time from an LLM token to its speech.
    pub tts_latency: Duration,
    /// Speech synthesized per LLM token.
    pub audio_per_token: Duration,
    /// The transcript every turn gets.
    pub transcript: String,
    /// The reply every turn gets, sent as one token per word.
    pub reply: String,
    /// The maximum time a scripted stage may spend on one frame before it is
    /// failed as hung.
    pub stage_timeout: Duration,
    /// Silence after speech that ends a turn.
    pub end_of_turn_silence: Duration,
    /// A failure to simulate, if any.
    pub fault: Option<Fault>,
}

impl Default for LoadTestConfig {
    /// Latencies of a fast cloud pipeline: 150 ms to the final transcript,
    /// 200 ms to the first token, 30 ms per token, 80 ms to speech.
    fn default() -> Self {
        LoadTestConfig {
            stt_latency: Duration::from_millis(150),
            partial_interval: Duration::from_millis(500),
            first_token_latency: Duration::from_millis(200),
            token_interval: Duration::from_millis(30),
            tts_latency: Duration::from_millis(80),
            audio_per_token: Duration::from_millis(200),
            transcript: "this is the scripted transcript".to_owned(),
            reply: "this is the scripted reply".to_owned(),
            stage_timeout: Duration::from_secs(5),
            end_of_turn_silence: Duration::from_millis(500),
            fault: None,
        }
    }
}

/// The load-test pipeline factory.
#[derive(Debug, Clone, Default)]
pub struct LoadTestPipeline {
    config: LoadTestConfig,
}

impl LoadTestPipeline {
    /// Creates a factory with the given settings.
    pub fn new(config: LoadTestConfig) -> Self {
        LoadTestPipeline { config }
    }
}

/// The format the scripted stages speak in.
const VOICE: AudioFormat = AudioFormat::mono_f32(SPEECH_RATE);

/// The length of one synthesized frame.
const VOICE_FRAME: Duration = Duration::from_millis(20);

impl PipelineFactory for LoadTestPipeline {
    fn tier(&self) -> PrivacyTier {
        PrivacyTier::OnDevice
    }

    fn build(&self, request: &PipelineRequest) -> Result<SessionPipeline, PipelineBuildError> {
        let config = &self.config;
        let mut graph = GraphBuilder::new(PrivacyPolicy::new(request.tier));
        let (front, input) = add_audio_front(&mut graph, request)?;

        // Voice activity detection cuts turns and raises interrupts.
        let detector = WebRtcVad::new(WebRtcConfig::new(SPEECH_RATE)).map_err(|error| stage_error("vad", &error))?;
        let mut vad_config = VadConfig::for_detector(&detector);
        vad_config.sample_format = front.format.sample_format;
        vad_config.segmenter.end_silence = config.end_of_turn_silence;
        let vad = Vad::with_config(stage_name("vad")?, detector, vad_config).map_err(|error| stage_error("vad", &error))?;
        let vad = graph.add(mentis_pipeline::processor(vad));
        // Lossless: the load test checks that no client frame is lost. The
        // VAD costs microseconds per frame, so 16 frames (320 ms) suffice.
        graph.connect(front.node, vad, EdgeConfig::lossless(16));
        let marker = EndOfSpeechMarker::new(stage_name("end-of-speech")?, PortFormat::Audio(front.format));
        let marker = graph.add(mentis_pipeline::processor(marker));
        graph.connect(vad, marker, EdgeConfig::lossless(64));

        let stt = graph.add(Timeout::new(Scripted::stt(stage_name("stt")?, front.format, config), config.stage_timeout));
        graph.connect(marker, stt, EdgeConfig::lossless(64));
        let llm = graph.add(Timeout::new(Scripted::llm(stage_name("llm")?, config), config.stage_timeout));
        graph.connect(stt, llm, EdgeConfig::lossless(64));
        let tts = graph.add(Timeout::new(Scripted::tts(stage_name("tts")?, config), config.stage_timeout));
        graph.connect(llm, tts, EdgeConfig::lossless(256));
        let reply = add_reply_resampler(&mut graph, tts, VOICE, &request.output)?;

        // Transcripts, reply text and reply audio all go to the client.
        let (sink, output) = add_client_sink(&mut graph)?;
        graph.connect(stt, sink, EdgeConfig::lossless(64));
        graph.connect(llm, sink, EdgeConfig::lossless(256));
        graph.connect(reply, sink, EdgeConfig::lossless(super::EGRESS_CAPACITY));

        Ok(SessionPipeline { pipeline: graph.build()?, input, output })
    }
}

/// The output a scripted stage produces in response to a frame.
struct Planned {
    after: Duration,
    turn: TurnId,
    payload: Payload,
    mark: Option<TurnMark>,
}

/// The behaviour of one scripted stage.
enum Script {
    Stt { text: String, latency: Duration, partial_interval: Duration, heard: Duration, partials: usize },
    Llm { reply: Vec<String>, first_token: Duration, interval: Duration },
    Tts { latency: Duration, frames_per_token: usize, tone_phase: f32 },
}

impl Script {
    /// Plans the output for one received frame.
    fn plan(&mut self, frame: &Frame) -> Vec<Planned> {
        let turn = frame.meta.turn;
        match (self, &frame.payload) {
            (Script::Stt { text, partial_interval, heard, partials, .. }, Payload::Audio(audio)) if turn != TurnId::NONE => {
                *heard += audio.duration();
                if *heard < *partial_interval * (*partials as u32 + 1) {
                    return Vec::new();
                }
                *partials += 1;
                let words: Vec<&str> = text.split_whitespace().collect();
                let shown = words[..(*partials).min(words.len())].join(" ");
                vec![Planned { after: Duration::ZERO, turn, payload: transcript(TranscriptKind::Partial, shown, frame), mark: None }]
            }
            (Script::Stt { text, latency, heard, partials, .. }, Payload::Control(Control::EndOfTurn)) => {
                *heard = Duration::ZERO;
                *partials = 0;
                let payload = transcript(TranscriptKind::Final, text.clone(), frame);
                vec![Planned { after: *latency, turn, payload, mark: Some(TurnMark::FinalTranscript) }]
            }
            (Script::Llm { reply, first_token, interval }, Payload::Transcript(t)) if t.kind == TranscriptKind::Final => {
                let mut planned: Vec<Planned> = reply
                    .iter()
                    .enumerate()
                    .map(|(index, word)| Planned {
                        after: *first_token + *interval * index as u32,
                        turn,
                        payload: Payload::Text(TextDelta { text: word.clone(), last: false }),
                        mark: (index == 0).then_some(TurnMark::FirstToken),
                    })
                    .collect();
                let end = *first_token + *interval * reply.len() as u32;
                planned.push(Planned { after: end, turn, payload: Payload::Text(TextDelta { text: String::new(), last: true }), mark: None });
                planned
            }
            (Script::Tts { latency, frames_per_token, tone_phase }, Payload::Text(delta)) if !delta.text.trim().is_empty() => {
                (0..*frames_per_token)
                    .map(|index| Planned {
                        after: *latency,
                        turn,
                        payload: Payload::Audio(tone(tone_phase)),
                        mark: (index == 0).then_some(TurnMark::FirstTtsAudio),
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

fn transcript(kind: TranscriptKind, text: String, frame: &Frame) -> Payload {
    Payload::Transcript(Transcript { kind, text, start: MediaTime::ZERO, end: frame.meta.timestamp, confidence: None })
}

/// 20 ms of a quiet 220 Hz tone, continuing from `phase`.
fn tone(phase: &mut f32) -> AudioData {
    let frames = VOICE.frames_in(VOICE_FRAME);
    let step = std::f32::consts::TAU * 220.0 / SPEECH_RATE as f32;
    let samples: Vec<f32> = (0..frames)
        .map(|_| {
            *phase = (*phase + step) % std::f32::consts::TAU;
            phase.sin() * 0.1
        })
        .collect();
    match AudioData::from_f32(SPEECH_RATE, 1, samples) {
        Ok(audio) => audio,
        Err(_) => unreachable!("mono float samples always fit a mono float format"),
    }
}

/// A stage that responds to frames with planned output after fixed delays. It
/// keeps reading its inbox while output is pending, so a slow response never
/// holds up the audio before it, and it drops pending output of interrupted turns.
pub struct Scripted {
    name: StageName,
    input: PortFormat,
    output: PortFormat,
    script: Script,
    fault: Option<Fault>,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripted").field("name", &self.name).field("fault", &self.fault).finish_non_exhaustive()
    }
}

impl Scripted {
    /// Scripted speech to text: partial transcripts while a turn's audio
    /// arrives, the final one `stt_latency` after the turn ends.
    pub fn stt(name: StageName, input: AudioFormat, config: &LoadTestConfig) -> Self {
        Scripted {
            name,
            input: PortFormat::Audio(input),
            output: PortFormat::Transcript,
            script: Script::Stt {
                text: config.transcript.clone(),
                latency: config.stt_latency,
                partial_interval: config.partial_interval.max(Duration::from_millis(20)),
                heard: Duration::ZERO,
                partials: 0,
            },
            fault: None,
        }
    }

    /// A scripted LLM: the reply's words as tokens, the first one
    /// `first_token_latency` after the final transcript.
    pub fn llm(name: StageName, config: &LoadTestConfig) -> Self {
        let reply = config
            .reply
            .split_whitespace()
            .enumerate()
            .map(|(index, word)| if index == 0 { word.to_owned() } else { format!(" {word}") })
            .collect();
        Scripted {
            name,
            input: PortFormat::Transcript,
            output: PortFormat::Text,
            script: Script::Llm { reply, first_token: config.first_token_latency, interval: config.token_interval },
            fault: config.fault,
        }
    }

    /// Scripted speech synthesis: `audio_per_token` of tone per token,
    /// `tts_latency` after the token.
    pub fn tts(name: StageName, config: &LoadTestConfig) -> Self {
        let frames_per_token = (config.audio_per_token.as_millis() / VOICE_FRAME.as_millis()).max(1) as usize;
        Scripted {
            name,
            input: PortFormat::Text,
            output: PortFormat::Audio(VOICE),
            script: Script::Tts { latency: config.tts_latency, frames_per_token, tone_phase: 0.0 },
            fault: None,
        }
    }
}

/// Output waiting for its time.
struct Pending {
    due: Instant,
    turn: TurnId,
    payload: Payload,
    mark: Option<TurnMark>,
}

impl Stage for Scripted {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), self.input, self.output)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let mut pending: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
            let mut interrupted = TurnId::NONE;
            let mut sent_tokens = 0_usize;
            let mut media = MediaTime::ZERO;
            let mut input_open = true;

            while input_open || !pending.is_empty() {
                let next_due = pending.front().map(|item| item.due);
                tokio::select! {
                    biased;
                    () = sleep_until(next_due), if next_due.is_some() => {
                        let Some(item) = pending.pop_front() else { continue };
                        if item.turn <= interrupted && interrupted != TurnId::NONE {
                            continue;
                        }
                        if let (Some(Fault::LlmDropsMidTurn { after_tokens }), Payload::Text(_)) = (self.fault, &item.payload) {
                            if sent_tokens >= after_tokens {
                                return Err(StageError::retryable(format!(
                                    "stage {}: the scripted backend connection dropped after {sent_tokens} tokens",
                                    self.name
                                )));
                            }
                        }
                        if let Some(mark) = item.mark {
                            io.turns.mark(item.turn, mark);
                        }
                        let duration = match &item.payload {
                            Payload::Audio(audio) => audio.duration(),
                            _ => Duration::ZERO,
                        };
                        let meta = io.outbox.next_meta(item.turn, media);
                        media = media.add(duration);
                        if matches!(item.payload, Payload::Text(_)) {
                            sent_tokens += 1;
                        }
                        io.outbox.send(Frame::new(meta, item.payload)).await?;
                    }
                    frame = io.inbox.recv(), if input_open => {
                        let Some(frame) = frame else {
                            input_open = false;
                            continue;
                        };
                        if frame.as_control() == Some(&Control::Interrupt) {
                            interrupted = interrupted.max(frame.meta.turn);
                            pending.retain(|item| item.turn > interrupted);
                        }
                        if self.fault == Some(Fault::LlmHangs) && matches!(frame.payload, Payload::Transcript(_)) {
                            // Hold the frame forever without asking for the next one.
                            std::future::pending::<()>().await;
                        }
                        let now = Instant::now();
                        for planned in self.script.plan(&frame) {
                            insert_sorted(&mut pending, Pending { due: now + planned.after, turn: planned.turn, payload: planned.payload, mark: planned.mark });
                        }
                        if frame.as_control().is_some() {
                            io.outbox.send(frame).await?;
                        }
                    }
                }
            }
            Ok(())
        })
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// Inserts after every item due at the same time or earlier, so output keeps
/// the order it was planned in.
fn insert_sorted(pending: &mut std::collections::VecDeque<Pending>, item: Pending) {
    let index = pending.iter().rposition(|queued| queued.due <= item.due).map_or(0, |index| index + 1);
    pending.insert(index, item);
}
