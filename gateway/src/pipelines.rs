//! The pipelines sessions run, built per session by a [`PipelineFactory`].
//!
//! Every pipeline starts with the same audio front, built by
//! [`add_audio_front`]: the client's frames enter through a lossless
//! [`ChannelSource`], Opus is decoded straight to 16 kHz, stereo is mixed
//! down, PCM at another rate is resampled to 16 kHz, and an [`AudioMeter`] records each client frame's
//! latency up to that point. What follows is the factory's choice; every
//! frame for the client leaves through one [`ChannelSink`] that the session
//! drains.
//!
//! Built in:
//! - [`scripted::LoadTestPipeline`]: the real audio front and WebRTC VAD,
//!   then scripted STT, LLM and TTS stages of fixed latency. It measures the
//!   gateway itself and is the pipeline of the load and fault tests.
//! - `on_device::OnDevicePipeline` (feature `on-device`): Whisper, llama.cpp
//!   and flite, with models shared between sessions where the stages allow
//!   and a bound on concurrent sessions.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mentis_pipeline::basic::{ChannelSink, ChannelSource};
use mentis_pipeline::edge::{Receiver, Sender};
use mentis_pipeline::{
    AudioData, AudioFormat, Codec, EdgeConfig, Emitter, Frame, GraphBuilder, GraphError, MediaTime, NodeId, Pipeline,
    PortFormat, PrivacyTier, Processor, SampleFormat, SessionId, StageError, StageName, StageSpec,
};
use mentis_stages::opus::OpusDecoder;
use mentis_stages::resample::Resample;
use parking_lot::Mutex;

use crate::metrics::GatewayMetrics;
use crate::protocol::{AudioEncoding, InputAudio, OutputAudio};

#[cfg(feature = "on-device")]
pub mod on_device;
pub mod scripted;

/// The sample rate of the audio path after the front: what speech models take.
pub const SPEECH_RATE: u32 = 16_000;

/// Frames the client-to-pipeline edge queues: 32 frames, 640 ms of 20 ms
/// frames. It is lossless: when it is full the session stops reading the
/// socket, so TCP flow control slows the client instead of audio being lost.
pub const INGRESS_CAPACITY: usize = 32;

/// Frames the pipeline-to-client edge queues: 1,024 frames, about 20 s of
/// 20 ms reply audio plus the events, enough for a reply that is synthesized
/// faster than it plays.
pub const EGRESS_CAPACITY: usize = 1_024;

/// Arrival entries an [`IngressClock`] keeps: 256 frames, 5 s of 20 ms frames.
/// A pipeline that lags further loses the oldest entries (counted), not audio.
pub const INGRESS_CLOCK_CAPACITY: usize = 256;

/// The request a session makes of its pipeline.
#[derive(Debug, Clone)]
pub struct PipelineRequest {
    /// The session id, stamped on every frame.
    pub session: SessionId,
    /// The format of the client's audio frames.
    pub input: InputAudio,
    /// The format of the reply audio; the session converts it to PCM16.
    pub output: OutputAudio,
    /// The tier the graph is built for: stages reaching further are rejected.
    pub tier: PrivacyTier,
    /// Arrival times of client frames, for the [`AudioMeter`].
    pub ingress: IngressClock,
    /// The sink of the meter's frame latencies.
    pub metrics: Arc<GatewayMetrics>,
}

impl PipelineRequest {
    /// Returns the port format of the client's frames as they enter the graph.
    pub fn input_port(&self) -> PortFormat {
        match self.input.encoding {
            AudioEncoding::Pcm16 => PortFormat::Audio(AudioFormat {
                sample_rate: self.input.sample_rate,
                channels: self.input.channels,
                sample_format: SampleFormat::I16,
            }),
            AudioEncoding::Opus => PortFormat::Encoded {
                codec: Codec::Opus,
                sample_rate: self.input.sample_rate,
                channels: self.input.channels,
            },
        }
    }
}

/// A built pipeline with its two ends.
#[derive(Debug)]
pub struct SessionPipeline {
    /// The validated graph, not started yet.
    pub pipeline: Pipeline,
    /// The sender of the client's audio frames into the pipeline.
    pub input: Sender,
    /// The receiver of reply audio, transcripts, text and events.
    pub output: Receiver,
}

/// A pipeline that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineBuildError {
    /// A stage could not be set up.
    #[error("cannot set up stage {stage}: {message}")]
    Stage {
        /// The stage.
        stage: String,
        /// What failed and how to fix it.
        message: String,
    },
    /// The graph is invalid, or a stage reaches further than the tier allows.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The pipeline already runs as many sessions as it allows at once.
    #[error("the {pipeline} pipeline is at its session limit (max_sessions = {max_sessions}) on this server; retry when a session ends, or connect to another gateway process")]
    Busy {
        /// The pipeline's name.
        pipeline: String,
        /// Its bound on concurrent sessions.
        max_sessions: usize,
    },
}

/// Builds one pipeline per session.
pub trait PipelineFactory: Send + Sync + fmt::Debug + 'static {
    /// Returns the narrowest tier the pipeline's stages fit in. A session must
    /// ask for at least this tier, and its tenant and token must allow it.
    fn tier(&self) -> PrivacyTier;

    /// Builds the graph for one session. It may load models, so the server
    /// calls it on a blocking thread.
    fn build(&self, request: &PipelineRequest) -> Result<SessionPipeline, PipelineBuildError>;
}

/// Pipeline factories by the name clients ask for.
#[derive(Debug, Default, Clone)]
pub struct PipelineRegistry {
    factories: BTreeMap<String, Arc<dyn PipelineFactory>>,
}

impl PipelineRegistry {
    /// Creates an empty registry.
    pub fn new() -> Self {
        PipelineRegistry::default()
    }

    /// Registers `factory` under `name`, replacing any factory of that name.
    #[must_use]
    pub fn with(mut self, name: &str, factory: impl PipelineFactory) -> Self {
        self.factories.insert(name.to_owned(), Arc::new(factory));
        self
    }

    /// Returns the factory registered as `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn PipelineFactory>> {
        self.factories.get(name)
    }

    /// Returns the registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }
}

/// Arrival times of a session's client frames, keyed by the media time where
/// each frame ends. The session writes; the [`AudioMeter`] reads. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct IngressClock {
    inner: Arc<IngressInner>,
}

#[derive(Debug, Default)]
struct IngressInner {
    arrivals: Mutex<VecDeque<(MediaTime, Instant)>>,
    overflowed: AtomicU64,
    measured: AtomicU64,
}

impl IngressClock {
    /// Records that a frame ending at `end` arrived at `at`.
    pub fn arrived(&self, end: MediaTime, at: Instant) {
        let mut arrivals = self.inner.arrivals.lock();
        if arrivals.len() >= INGRESS_CLOCK_CAPACITY {
            arrivals.pop_front();
            self.inner.overflowed.fetch_add(1, Ordering::Relaxed);
        }
        arrivals.push_back((end, at));
    }

    /// Removes every arrival whose frame ends at or before `end`, passing
    /// each arrival time to `each`.
    fn take_through(&self, end: MediaTime, mut each: impl FnMut(Instant)) {
        let mut arrivals = self.inner.arrivals.lock();
        while let Some(&(frame_end, at)) = arrivals.front() {
            if frame_end > end {
                break;
            }
            arrivals.pop_front();
            self.inner.measured.fetch_add(1, Ordering::Relaxed);
            each(at);
        }
    }

    /// Returns the number of client frames whose latency was measured.
    pub fn measured(&self) -> u64 {
        self.inner.measured.load(Ordering::Relaxed)
    }

    /// Returns the number of arrivals forgotten because the pipeline lagged too far.
    pub fn overflowed(&self) -> u64 {
        self.inner.overflowed.load(Ordering::Relaxed)
    }
}

/// Records, for every client frame, the time from its arrival at the gateway
/// until the audio path has emitted all of its samples. Frames pass unchanged.
#[derive(Debug)]
pub struct AudioMeter {
    name: StageName,
    format: AudioFormat,
    clock: IngressClock,
    metrics: Arc<GatewayMetrics>,
}

impl AudioMeter {
    /// Creates a meter for audio of `format`.
    pub fn new(name: StageName, format: AudioFormat, clock: IngressClock, metrics: Arc<GatewayMetrics>) -> Self {
        AudioMeter { name, format, clock, metrics }
    }
}

impl Processor for AudioMeter {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.format), PortFormat::Audio(self.format))
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let end = frame.meta.timestamp.add(frame.media_duration());
        let now = Instant::now();
        self.clock.take_through(end, |arrived| self.metrics.frame_latency(now.saturating_duration_since(arrived)));
        out.emit(frame);
        Ok(())
    }

    fn finish(&mut self, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        // At end of stream every sample has left the front, including what the
        // resampler held back.
        let now = Instant::now();
        self.clock.take_through(MediaTime(u64::MAX), |arrived| self.metrics.frame_latency(now.saturating_duration_since(arrived)));
        Ok(())
    }
}

/// Averages the channels of interleaved audio into one float channel.
#[derive(Debug)]
pub struct Downmix {
    name: StageName,
    input: AudioFormat,
}

impl Downmix {
    /// Creates a downmix from `input`.
    pub fn new(name: StageName, input: AudioFormat) -> Self {
        Downmix { name, input }
    }

    fn output(&self) -> AudioFormat {
        AudioFormat::mono_f32(self.input.sample_rate)
    }
}

impl Processor for Downmix {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.input), PortFormat::Audio(self.output()))
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let Some(audio) = frame.as_audio() else {
            return Err(StageError::config(format!("stage {} mixes audio but received a {} frame", self.name, frame.kind_name())));
        };
        let channels = usize::from(audio.format().channels.max(1));
        let samples = audio.to_f32();
        let mono: Vec<f32> = samples.chunks_exact(channels).map(|chunk| chunk.iter().sum::<f32>() / channels as f32).collect();
        let audio = AudioData::from_f32(audio.format().sample_rate, 1, mono)
            .map_err(|error| StageError::fatal(format!("stage {} built invalid audio", self.name)).with_source(error))?;
        out.emit(Frame::audio(frame.meta, audio));
        Ok(())
    }
}

/// Validates a stage name made of constant text.
pub(crate) fn stage_name(text: &str) -> Result<StageName, PipelineBuildError> {
    StageName::new(text).map_err(|error| PipelineBuildError::Stage { stage: text.to_owned(), message: error.to_string() })
}

pub(crate) fn stage_error(stage: &str, error: &dyn fmt::Display) -> PipelineBuildError {
    PipelineBuildError::Stage { stage: stage.to_owned(), message: error.to_string() }
}

/// The end of the audio front: the node that emits 16 kHz mono audio, and its format.
#[derive(Debug, Clone, Copy)]
pub struct AudioFront {
    /// The last stage of the front.
    pub node: NodeId,
    /// Its output: 16 kHz, mono, 16-bit or float.
    pub format: AudioFormat,
}

/// Adds the client source, Opus decoder, downmix, resampler and meter to
/// `graph`; returns the end of the front and the sender the session feeds.
pub fn add_audio_front(graph: &mut GraphBuilder, request: &PipelineRequest) -> Result<(AudioFront, Sender), PipelineBuildError> {
    let (input, source) = ChannelSource::new(stage_name("client-audio")?, request.input_port(), EdgeConfig::lossless(INGRESS_CAPACITY));
    let mut node = graph.add(source);
    // Between the front's stages each frame is processed in microseconds, so
    // short lossless edges suffice: 8 frames of 20 ms is 160 ms.
    let hop = EdgeConfig::lossless(8);

    // Opus packets become float PCM at the speech rate: libopus decodes
    // straight to 16 kHz, which costs less than decoding at the client's
    // rate and resampling.
    let mut format = match request.input.encoding {
        AudioEncoding::Pcm16 => AudioFormat { sample_rate: request.input.sample_rate, channels: request.input.channels, sample_format: SampleFormat::I16 },
        AudioEncoding::Opus => {
            let format = AudioFormat { sample_rate: request.input.sample_rate, channels: request.input.channels, sample_format: SampleFormat::F32 };
            let decoder = OpusDecoder::new(stage_name("opus-decode")?, format)
                .and_then(|decoder| decoder.with_output_rate(SPEECH_RATE))
                .map_err(|error| stage_error("opus-decode", &error))?;
            let decoded = decoder.output_format();
            let decoder = graph.add(mentis_pipeline::processor(decoder));
            graph.connect(node, decoder, hop);
            node = decoder;
            decoded
        }
    };

    if format.channels > 1 {
        let downmix = Downmix::new(stage_name("downmix")?, format);
        let mono = downmix.output();
        let downmix = graph.add(mentis_pipeline::processor(downmix));
        graph.connect(node, downmix, hop);
        node = downmix;
        format = mono;
    }

    if format.sample_rate != SPEECH_RATE {
        let resample = Resample::new(stage_name("resample-in")?, format, SPEECH_RATE).map_err(|error| stage_error("resample-in", &error))?;
        let output = resample.output_format();
        let resample = graph.add(mentis_pipeline::processor(resample));
        graph.connect(node, resample, hop);
        node = resample;
        format = output;
    }

    let meter = AudioMeter::new(stage_name("audio-meter")?, format, request.ingress.clone(), Arc::clone(&request.metrics));
    let meter = graph.add(mentis_pipeline::processor(meter));
    graph.connect(node, meter, hop);
    Ok((AudioFront { node: meter, format }, input))
}

/// Adds the sink every frame for the client goes through; returns it and the
/// receiver the session drains.
pub fn add_client_sink(graph: &mut GraphBuilder) -> Result<(NodeId, Receiver), PipelineBuildError> {
    let (sink, output) = ChannelSink::new(stage_name("client-out")?, PortFormat::Any, EdgeConfig::lossless(EGRESS_CAPACITY));
    Ok((graph.add(sink), output))
}

/// Adds a resampler from the reply voice's rate to the client's output rate
/// when they differ; returns the node whose output is the reply audio.
pub fn add_reply_resampler(
    graph: &mut GraphBuilder,
    tts: NodeId,
    voice: AudioFormat,
    output: &OutputAudio,
) -> Result<NodeId, PipelineBuildError> {
    if voice.sample_rate == output.sample_rate {
        return Ok(tts);
    }
    let resample = Resample::new(stage_name("resample-out")?, voice, output.sample_rate).map_err(|error| stage_error("resample-out", &error))?;
    let resample = graph.add(mentis_pipeline::processor(resample));
    // A whole reply fits: 1,024 frames of 20 ms is about 20 s.
    graph.connect(tts, resample, EdgeConfig::lossless(EGRESS_CAPACITY));
    Ok(resample)
}

/// Returns the duration of `frames` sample frames at `rate`.
pub(crate) fn duration_of(frames: usize, rate: u32) -> Duration {
    AudioFormat::mono_i16(rate).duration_of(frames)
}
