//! Speech synthesis through OpenAI-compatible speech endpoints that stream
//! raw PCM: OpenAI itself, and self-hosted servers that offer the same API
//! (Piper's HTTP server, kokoro servers).
//!
//! Each sentence is one `POST {base}/audio/speech` with the JSON body
//! `{"model", "input", "voice", "response_format": "pcm"}` plus an optional
//! `speed` (OpenAI's API reference, "Create speech":
//! <https://platform.openai.com/docs/api-reference/audio/createSpeech>).
//! OpenAI documents `pcm` as raw samples without a header: 24 kHz, 16-bit
//! signed little-endian, mono. Self-hosted servers send their voice's own
//! rate, so the rate is a setting ([`SpeechConfig::sample_rate`]).
//!
//! The body is decoded as it arrives and goes out in frames of
//! [`SpeechConfig::frame`], so the first audio plays long before the server
//! finishes the sentence. The output matches [`crate::tts::Tts`]: mono f32
//! at the backend's rate, the last frame of each sentence possibly shorter,
//! timestamps counted from the start of each turn's reply, and
//! [`mentis_pipeline::TurnMark::FirstTtsAudio`] marked at the first frame of
//! a turn.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mentis_pipeline::{
    AudioFormat, BackendUsage, Control, Frame, InterruptWatch, Payload, PortFormat, Stage, StageError, StageFuture,
    StageIo, StageName, StageSpec, TextDelta, TurnId,
};
use url::Url;

use super::network::{Flow, INTERRUPT_POLL, Replies, is_interrupted, next_frame};
use crate::net::http::{Request, send};
use crate::net::pcm::Pcm16Decoder;
use crate::net::retry::delay_after;
use crate::net::{Connector, Endpoint, NetError};
use crate::text::split_sentences;

/// The backend's name in usage records and logs.
pub const BACKEND: &str = "openai-tts";

/// The rate OpenAI documents for `response_format: "pcm"`, in Hz.
pub const DEFAULT_SAMPLE_RATE: u32 = 24_000;

/// The speeds OpenAI accepts, where 1.0 is normal.
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.25..=4.0;

/// Frames received while a request is in flight that are kept to be handled
/// after it. With a sentence aggregator in front, one frame is one sentence,
/// so this is far more than a reply queues. When it is full the stage stops
/// reading its inbox (the edge then blocks the sender) and checks for
/// interruption every [`INTERRUPT_POLL`] instead.
pub const MAX_QUEUED_FRAMES: usize = 256;

/// Settings of an [`OpenAiSpeech`] stage.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechConfig {
    /// The model, such as `tts-1` or `gpt-4o-mini-tts`. Self-hosted servers
    /// often accept any name.
    pub model: String,
    /// The voice, such as `alloy`, or the name of a voice the self-hosted server offers.
    pub voice: String,
    /// The speaking speed from 0.25 to 4.0, or `None` to leave it to the server (1.0).
    pub speed: Option<f32>,
    /// The rate of the PCM the server sends, in Hz: 24,000 for OpenAI, the
    /// voice's rate for self-hosted servers (22,050 for many Piper voices).
    pub sample_rate: u32,
    /// Length of each audio frame emitted.
    pub frame: Duration,
}

impl SpeechConfig {
    /// Creates settings for `model` and `voice` at OpenAI's 24 kHz, with
    /// 20 ms frames and the server's default speed.
    pub fn new(model: impl Into<String>, voice: impl Into<String>) -> Self {
        SpeechConfig {
            model: model.into(),
            voice: voice.into(),
            speed: None,
            sample_rate: DEFAULT_SAMPLE_RATE,
            frame: crate::tts::DEFAULT_FRAME,
        }
    }
}

/// A speech stage that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SpeechConfigError {
    /// A required text setting is empty.
    #[error("the speech setting `{field}` is empty: name the {field} the server should use")]
    Missing {
        /// The setting: `model` or `voice`.
        field: &'static str,
    },
    /// The sample rate is zero.
    #[error("invalid speech sample rate of 0 Hz: use the rate of the server's PCM, 24000 for OpenAI")]
    InvalidSampleRate,
    /// The frame is too short to contain one sample.
    #[error("invalid speech frame length {frame:?} at {sample_rate} Hz: a frame must contain at least one sample")]
    InvalidFrame {
        /// The rejected frame length.
        frame: Duration,
        /// The sample rate, in Hz.
        sample_rate: u32,
    },
    /// The speed is outside what OpenAI accepts.
    #[error("invalid speech speed {speed}: use a value from 0.25 to 4.0, or none for the default")]
    InvalidSpeed {
        /// The rejected speed.
        speed: f32,
    },
    /// The endpoint URL cannot be extended with `/audio/speech`.
    #[error(transparent)]
    Endpoint(#[from] NetError),
}

/// The JSON body of one request.
#[derive(serde::Serialize)]
struct SpeechRequest<'a> {
    model: &'a str,
    input: &'a str,
    voice: &'a str,
    response_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f32>,
}

/// The speech stage: text frames in, mono f32 audio at
/// [`SpeechConfig::sample_rate`] out, one HTTP request per sentence, in order.
///
/// An interrupt drops the request in flight (the socket closes at once) and
/// skips the turn's queued sentences. A request that fails before any of its
/// audio was emitted is retried with the endpoint's retry policy. When the
/// retries are exhausted, `run` returns the error so that a fallback can
/// take over. A request that fails after some of its audio was emitted is
/// reported downstream as [`Control::Error`] and the stage goes on with the
/// next sentence.
#[derive(Debug)]
pub struct OpenAiSpeech {
    name: StageName,
    endpoint: Endpoint,
    url: Url,
    config: SpeechConfig,
    format: AudioFormat,
    frame_samples: usize,
}

impl OpenAiSpeech {
    /// Creates the stage. `endpoint` is the API base, such as
    /// `https://api.openai.com/v1` or `http://127.0.0.1:8880/v1`. Requests go
    /// to `{base}/audio/speech`, with `Authorization: Bearer` when the
    /// endpoint has a key.
    pub fn new(name: StageName, endpoint: Endpoint, config: SpeechConfig) -> Result<Self, SpeechConfigError> {
        if config.model.trim().is_empty() {
            return Err(SpeechConfigError::Missing { field: "model" });
        }
        if config.voice.trim().is_empty() {
            return Err(SpeechConfigError::Missing { field: "voice" });
        }
        if let Some(speed) = config.speed
            && !SPEED_RANGE.contains(&speed)
        {
            return Err(SpeechConfigError::InvalidSpeed { speed });
        }
        if config.sample_rate == 0 {
            return Err(SpeechConfigError::InvalidSampleRate);
        }
        let format = AudioFormat::mono_f32(config.sample_rate);
        let frame_samples = format.frames_in(config.frame);
        if frame_samples == 0 {
            return Err(SpeechConfigError::InvalidFrame { frame: config.frame, sample_rate: config.sample_rate });
        }
        let url = endpoint.join("audio/speech")?;
        Ok(OpenAiSpeech { name, endpoint, url, config, format, frame_samples })
    }

    /// Returns the format of the audio the stage emits.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Returns the URL requests go to.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl Stage for OpenAiSpeech {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Text, PortFormat::Audio(self.format))
            .with_egress(self.endpoint.egress())
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move { Runner::new(self, io).run().await })
    }
}

/// The cause of a request that ended early.
enum Failure {
    /// The request failed. `emitted` is whether its audio was already sent downstream.
    Net { error: NetError, emitted: bool },
    /// Sending downstream failed: the session is ending.
    Stage(StageError),
}

impl From<StageError> for Failure {
    fn from(error: StageError) -> Self {
        Failure::Stage(error)
    }
}

/// The state of one `run`.
struct Runner<'a> {
    stage: &'a OpenAiSpeech,
    io: &'a mut StageIo,
    connector: Connector,
    usage: Arc<BackendUsage>,
    watch: InterruptWatch,
    /// Frames that arrived while a request was in flight, in arrival order.
    queue: VecDeque<Frame>,
    inbox_ended: bool,
    replies: Replies,
}

impl<'a> Runner<'a> {
    fn new(stage: &'a OpenAiSpeech, io: &'a mut StageIo) -> Self {
        let connector = stage.endpoint.connector(io);
        let usage = io.usage.backend(&io.name, BACKEND);
        let watch = io.inbox.interrupt_watch();
        Runner {
            stage,
            io,
            connector,
            usage,
            watch,
            queue: VecDeque::new(),
            inbox_ended: false,
            replies: Replies::new("speech", stage.format, stage.frame_samples),
        }
    }

    async fn run(mut self) -> Result<(), StageError> {
        while let Some(frame) = self.next_frame().await {
            self.handle(frame).await?;
            if self.io.is_cancelled() {
                break;
            }
        }
        Ok(())
    }

    /// Returns the next frame to handle: queued frames first, then the inbox.
    async fn next_frame(&mut self) -> Option<Frame> {
        next_frame(self.io, &mut self.queue, &mut self.inbox_ended).await
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), StageError> {
        match &frame.payload {
            Payload::Control(control) => {
                if *control == Control::Interrupt {
                    self.interrupt(frame.meta.turn);
                }
                self.io.outbox.send(frame).await
            }
            Payload::Text(delta) => {
                let delta = delta.clone();
                self.text(frame.meta.turn, delta).await
            }
            _ => {
                tracing::debug!(stage = %self.io.name, kind = frame.kind_name(), "ignored a frame that is not text");
                Ok(())
            }
        }
    }

    /// Ends every turn up to `turn`, dropping its queued text and stopping its reply.
    fn interrupt(&mut self, turn: TurnId) {
        self.replies.interrupt(turn);
        self.queue.retain(|queued| !is_interrupted(queued, turn));
    }

    async fn text(&mut self, turn: TurnId, delta: TextDelta) -> Result<(), StageError> {
        if self.replies.has_ended(turn) {
            tracing::trace!(stage = %self.io.name, turn = turn.0, "ignored text of a turn that has ended");
            return Ok(());
        }

        // A new turn starts its own reply, with media time from 0.
        self.replies.start(turn);
        for sentence in split_sentences(&delta.text) {
            if !self.speaking(turn) {
                break;
            }
            if sentence.chars().any(char::is_alphanumeric) {
                self.speak(turn, &sentence).await?;
            }
        }

        if delta.last {
            self.replies.end(turn);
        }
        Ok(())
    }

    /// Returns whether the reply to `turn` is still needed.
    fn speaking(&self, turn: TurnId) -> bool {
        self.replies.is_current(turn) && !self.watch.should_stop(turn)
    }

    /// Speaks one sentence, retrying while none of its audio was emitted.
    async fn speak(&mut self, turn: TurnId, sentence: &str) -> Result<(), StageError> {
        let retry = *self.stage.endpoint.retry();
        let mut attempt = 0;
        loop {
            let error = match self.request(turn, sentence).await {
                Ok(_) => return Ok(()),
                Err(Failure::Stage(error)) => return Err(error),
                Err(Failure::Net { error, emitted: true }) => {
                    self.usage.failure();
                    return self.report_broken_stream(turn, &error).await;
                }
                Err(Failure::Net { error, emitted: false }) => error,
            };
            self.usage.failure();
            if !error.is_retryable() || attempt >= retry.max_retries {
                tracing::warn!(stage = %self.io.name, turn = turn.0, attempts = attempt + 1, %error, "speech request failed");
                return Err(error.into());
            }

            attempt += 1;
            let delay = delay_after(&retry, attempt, &error);
            tracing::info!(stage = %self.io.name, turn = turn.0, attempt, ?delay, %error, "retrying the speech request");
            if self.while_receiving(turn, tokio::time::sleep(delay)).await?.is_none() {
                return Ok(());
            }
            if !self.speaking(turn) {
                return Ok(());
            }
        }
    }

    /// Sends one request for `sentence` and emits its audio as it arrives.
    /// Returns `Flow::Stop` when the turn was interrupted.
    async fn request(&mut self, turn: TurnId, sentence: &str) -> Result<Flow, Failure> {
        let mut emitted = false;
        let result = self.request_inner(turn, sentence, &mut emitted).await;
        self.replies.samples.clear();
        result.map_err(|failure| match failure {
            Failure::Net { error, .. } => Failure::Net { error, emitted },
            other => other,
        })
    }

    async fn request_inner(&mut self, turn: TurnId, sentence: &str, emitted: &mut bool) -> Result<Flow, Failure> {
        let net = |error: NetError| Failure::Net { error, emitted: false };
        let config = &self.stage.config;
        let body = SpeechRequest {
            model: &config.model,
            input: sentence,
            voice: &config.voice,
            response_format: "pcm",
            speed: config.speed,
        };
        let mut request = Request::post_json(self.stage.url.clone(), &body).map_err(net)?;
        if let Some(key) = self.stage.endpoint.api_key() {
            request.secret_header(http::header::AUTHORIZATION, "Bearer ", key).map_err(net)?;
        }

        // Usage counts every request sent, retries included, since each is billed.
        self.usage.request();
        self.usage.characters(sentence.chars().count());
        let started = Instant::now();
        let connector = self.connector.clone();
        let Some(response) = self.while_receiving(turn, send(&connector, request)).await? else {
            return Ok(Flow::Stop);
        };
        let mut response = response.map_err(net)?;
        tracing::debug!(stage = %self.io.name, turn = turn.0, chars = sentence.len(), "speech response started");

        // Decode the body as it arrives. A read may end inside a sample.
        let mut decoder = Pcm16Decoder::new();
        let mut first = true;
        loop {
            let Some(chunk) = self.while_receiving(turn, response.chunk()).await? else {
                return Ok(Flow::Stop);
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => {
                    // Audio decoded before the failure is valid, so play it before reporting.
                    if *emitted {
                        self.emit(turn, true, emitted).await?;
                    }
                    return Err(Failure::Net { error, emitted: *emitted });
                }
            };
            if first {
                self.usage.first_byte(started.elapsed());
                first = false;
            }
            decoder.push_f32(&chunk, &mut self.replies.samples);
            if self.emit(turn, false, emitted).await? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }

        if let Err(error) = decoder.finish() {
            tracing::warn!(stage = %self.io.name, turn = turn.0, %error, "dropped the incomplete last sample of a speech response");
        }
        Ok(self.emit(turn, true, emitted).await?)
    }

    /// Emits the decoded samples in frames, and with `all` the shorter last frame too.
    async fn emit(&mut self, turn: TurnId, all: bool, emitted: &mut bool) -> Result<Flow, StageError> {
        self.replies.emit(self.io, &self.watch, turn, all, emitted).await
    }

    /// Reports a request that failed after its audio was emitted: it cannot
    /// be retried without repeating speech, so the app hears about it and the
    /// stage goes on with the next sentence.
    async fn report_broken_stream(&mut self, turn: TurnId, error: &NetError) -> Result<(), StageError> {
        tracing::warn!(stage = %self.io.name, turn = turn.0, %error, "speech response failed after its audio started, so the stage goes on with the next sentence");
        self.replies.report_error(self.io, turn, error.to_string()).await
    }

    /// Awaits `work` while taking frames from the inbox, so that an interrupt
    /// is seen at once. Returns `None`, dropping `work`, when the turn was
    /// interrupted or the session cancelled.
    async fn while_receiving<T>(&mut self, turn: TurnId, work: impl Future<Output = T>) -> Result<Option<T>, StageError> {
        tokio::pin!(work);
        loop {
            let receiving = !self.inbox_ended && self.queue.len() < MAX_QUEUED_FRAMES;
            let polling = !self.inbox_ended && !receiving;
            let frame = tokio::select! {
                output = &mut work => return Ok(Some(output)),
                frame = self.io.inbox.recv(), if receiving => frame,
                () = tokio::time::sleep(INTERRUPT_POLL), if polling => {
                    if self.watch.should_stop(turn) {
                        return Ok(None);
                    }
                    continue;
                }
            };
            if self.receive_during(frame, turn).await? == Flow::Stop {
                return Ok(None);
            }
        }
    }

    /// Handles a frame that arrived while work on `turn` was in flight:
    /// interrupts and other priority events act and go downstream now, and
    /// the rest waits in the queue.
    async fn receive_during(&mut self, frame: Option<Frame>, turn: TurnId) -> Result<Flow, StageError> {
        let Some(frame) = frame else {
            self.inbox_ended = true;
            // At end of stream the work in flight finishes, but at cancellation it stops.
            return Ok(if self.io.is_cancelled() { Flow::Stop } else { Flow::Continue });
        };
        match frame.as_control() {
            Some(Control::Interrupt) => {
                let through = frame.meta.turn;
                self.interrupt(through);
                self.io.outbox.send(frame).await?;
                if turn <= through {
                    tracing::debug!(stage = %self.io.name, turn = turn.0, "dropped the speech request because the turn was interrupted");
                    return Ok(Flow::Stop);
                }
            }
            Some(control) if control.is_priority() => self.io.outbox.send(frame).await?,
            _ => self.queue.push_back(frame),
        }
        Ok(Flow::Continue)
    }
}
