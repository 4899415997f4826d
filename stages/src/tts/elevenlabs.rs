//! Speech synthesis through ElevenLabs' stream-input WebSocket
//! (`wss://api.elevenlabs.io/v1/text-to-speech/{voice_id}/stream-input`,
//! <https://elevenlabs.io/docs/api-reference/websockets>).
//!
//! [`ElevenLabsTts`] opens one connection per turn, at the turn's first
//! text, with the API key in the `xi-api-key` header. It sends the opening
//! message (a single space), then each sentence as it arrives, ending with a
//! space. When no text came for [`ElevenLabsConfig::keep_alive`], it sends a
//! single space as keep-alive. It sends the empty text only once, to end the
//! turn. Audio arrives as base64 PCM in JSON messages while text is
//! still being sent, and the stage reads until `isFinal` and closes.
//!
//! The output matches [`crate::tts::Tts`]: mono f32 at the output format's
//! rate, 20 ms frames (the last of a connection possibly shorter),
//! timestamps counted from the start of each turn's reply, and
//! [`mentis_pipeline::TurnMark::FirstTtsAudio`] at a turn's first frame.

pub mod messages;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http::header::HeaderName;
use mentis_pipeline::{
    AudioFormat, BackendUsage, Control, Frame, InterruptWatch, Payload, PortFormat, Stage, StageError, StageFuture,
    StageIo, StageName, StageSpec, TurnId,
};
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use self::messages::{
    ElevenLabsConfigError, END_OF_INPUT_MESSAGE, GenerationConfig, InitializeConnection, KEEP_ALIVE_MESSAGE,
    SendText, ServerMessage, StreamInputOptions, VoiceSettings, parse_server_message,
};
use super::network::{Flow, INTERRUPT_POLL, Replies, is_interrupted, next_frame};
use crate::net::pcm::Pcm16Decoder;
use crate::net::retry::delay_after;
use crate::net::ws::{self, WebSocket};
use crate::net::{Connector, Endpoint, NetError};

/// The backend's name in usage records and logs.
pub const BACKEND: &str = "elevenlabs";

/// The server closes a connection that receives nothing for this long,
/// unless the connection requests another `inactivity_timeout`.
pub const SERVER_INACTIVITY_TIMEOUT: Duration = Duration::from_secs(20);

/// Default pause in the text after which a keep-alive space is sent: half
/// the server's default inactivity timeout, so one lost or late keep-alive
/// still leaves time for the next.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Frames received during a turn's connection that are kept to be handled
/// after it (the next turn's text, and what follows it). When the queue is
/// full, the stage stops reading its inbox and the edge blocks the sender.
/// The stage then detects interrupts through the interrupt watch every
/// [`INTERRUPT_POLL`].
pub const MAX_QUEUED_FRAMES: usize = 256;

/// Settings of an [`ElevenLabsTts`] stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ElevenLabsConfig {
    /// The voice to speak with.
    pub voice_id: String,
    /// The connection's query: model, PCM output format and inactivity timeout.
    pub options: StreamInputOptions,
    /// Voice settings of the opening message, or `None` for the voice's stored settings.
    pub voice_settings: Option<VoiceSettings>,
    /// The generation schedule of the opening message, or `None` for the service default.
    pub generation_config: Option<GenerationConfig>,
    /// Whether each sentence is sent with `flush: true`, so the server speaks
    /// it at once instead of waiting for the schedule's character count.
    /// With a sentence aggregator in front this lowers the latency of every
    /// sentence shorter than the schedule's first entry.
    pub flush_sentences: bool,
    /// Pause in the text after which a single space is sent to keep the
    /// connection open. Must be shorter than the inactivity timeout.
    pub keep_alive: Duration,
    /// Length of each audio frame emitted.
    pub frame: Duration,
}

impl ElevenLabsConfig {
    /// Creates settings for `voice_id` and `model_id` (such as
    /// `eleven_flash_v2_5`) with 16 kHz PCM, flushed sentences, a keep-alive
    /// after [`DEFAULT_KEEP_ALIVE`] and 20 ms frames.
    pub fn new(voice_id: impl Into<String>, model_id: impl Into<String>) -> Self {
        ElevenLabsConfig {
            voice_id: voice_id.into(),
            options: StreamInputOptions::new(model_id),
            voice_settings: None,
            generation_config: None,
            flush_sentences: true,
            keep_alive: DEFAULT_KEEP_ALIVE,
            frame: crate::tts::DEFAULT_FRAME,
        }
    }
}

/// An ElevenLabs stage that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ElevenLabsSetupError {
    /// The voice, model, inactivity timeout or base URL is invalid.
    #[error(transparent)]
    Config(#[from] ElevenLabsConfigError),
    /// The keep-alive interval is zero or not shorter than the inactivity timeout.
    #[error(
        "invalid ElevenLabs keep-alive interval {keep_alive:?}: it must be above 0 and below the server's inactivity timeout of {inactivity:?}"
    )]
    InvalidKeepAlive {
        /// The rejected interval.
        keep_alive: Duration,
        /// The inactivity timeout it must stay under.
        inactivity: Duration,
    },
    /// The frame is too short to contain one sample.
    #[error("invalid ElevenLabs frame length {frame:?} at {sample_rate} Hz: a frame must contain at least one sample")]
    InvalidFrame {
        /// The rejected frame length.
        frame: Duration,
        /// The output format's rate, in Hz.
        sample_rate: u32,
    },
}

/// The ElevenLabs stage: text frames in, mono f32 audio at the output
/// format's rate out, one WebSocket connection per turn.
///
/// An interrupt closes the turn's socket at once. A connection that fails
/// before any of the turn's audio was emitted is opened again with the
/// endpoint's retry policy and given the turn's text so far. When the
/// retries are exhausted, `run` returns the error so that a fallback can
/// take over. A connection that fails after audio was emitted is reported
/// downstream as [`Control::Error`], and later text of the turn opens a new
/// connection.
#[derive(Debug)]
pub struct ElevenLabsTts {
    name: StageName,
    endpoint: Endpoint,
    url: Url,
    config: ElevenLabsConfig,
    format: AudioFormat,
    frame_samples: usize,
}

impl ElevenLabsTts {
    /// Creates the stage. `endpoint` is the service's base URL,
    /// `wss://api.elevenlabs.io` for ElevenLabs itself. Its key goes in the
    /// `xi-api-key` header.
    pub fn new(name: StageName, endpoint: Endpoint, config: ElevenLabsConfig) -> Result<Self, ElevenLabsSetupError> {
        let url = config.options.url(endpoint.url(), &config.voice_id)?;
        let inactivity =
            config.options.inactivity_timeout_s.map_or(SERVER_INACTIVITY_TIMEOUT, |s| Duration::from_secs(s.into()));
        if config.keep_alive.is_zero() || config.keep_alive >= inactivity {
            return Err(ElevenLabsSetupError::InvalidKeepAlive { keep_alive: config.keep_alive, inactivity });
        }
        let sample_rate = config.options.output_format.sample_rate();
        let format = AudioFormat::mono_f32(sample_rate);
        let frame_samples = format.frames_in(config.frame);
        if frame_samples == 0 {
            return Err(ElevenLabsSetupError::InvalidFrame { frame: config.frame, sample_rate });
        }
        Ok(ElevenLabsTts { name, endpoint, url, config, format, frame_samples })
    }

    /// Returns the format of the audio the stage emits.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Returns the URL the stage connects to, with its query.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl Stage for ElevenLabsTts {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Text, PortFormat::Audio(self.format))
            .with_egress(self.endpoint.egress())
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move { Runner::new(self, io).run().await })
    }
}

/// The cause of a turn's connection that ended early.
enum Failure {
    /// The connection failed.
    Net(NetError),
    /// Sending downstream failed: the session is ending.
    Stage(StageError),
}

impl From<StageError> for Failure {
    fn from(error: StageError) -> Self {
        Failure::Stage(error)
    }
}

impl From<NetError> for Failure {
    fn from(error: NetError) -> Self {
        Failure::Net(error)
    }
}

/// The outcome of a turn's connection that ended without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The server sent `isFinal`.
    Final,
    /// The turn was interrupted or the session cancelled.
    Stopped,
}

/// The action one turn's connection takes for an input frame.
enum Input {
    /// Text of the turn, to send.
    Text { text: String, last: bool },
    /// The turn's input is over (a later turn began, or the inbox ended).
    End,
    /// The turn was interrupted or the session cancelled.
    Stop,
    /// Nothing for the connection to do.
    Nothing,
}

/// The text of the turn in progress and how far it got.
#[derive(Debug, Default)]
struct TurnText {
    /// The texts sent (or to send) on the current connection, kept so that
    /// a connection lost before any audio can be replaced.
    pieces: Vec<String>,
    /// Whether the turn's last text has been seen.
    complete: bool,
}

/// The state of one `run`.
struct Runner<'a> {
    stage: &'a ElevenLabsTts,
    io: &'a mut StageIo,
    connector: Connector,
    usage: Arc<BackendUsage>,
    watch: InterruptWatch,
    /// Frames to handle before the inbox, in arrival order.
    queue: VecDeque<Frame>,
    /// Frames taken during a turn's connection that belong after the turn.
    deferred: VecDeque<Frame>,
    inbox_ended: bool,
    replies: Replies,
}

impl<'a> Runner<'a> {
    fn new(stage: &'a ElevenLabsTts, io: &'a mut StageIo) -> Self {
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
            deferred: VecDeque::new(),
            inbox_ended: false,
            replies: Replies::new("ElevenLabs", stage.format, stage.frame_samples),
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
        let turn = frame.meta.turn;
        let Payload::Text(delta) = &frame.payload else {
            if let Some(control) = frame.as_control() {
                if *control == Control::Interrupt {
                    self.interrupt(turn);
                }
                return self.io.outbox.send(frame).await;
            }
            tracing::debug!(stage = %self.io.name, kind = frame.kind_name(), "ignored a frame that is not text");
            return Ok(());
        };
        if self.replies.has_ended(turn) {
            tracing::trace!(stage = %self.io.name, turn = turn.0, "ignored text of a turn that has ended");
            return Ok(());
        }

        // A new turn starts its own reply, with media time from 0.
        self.replies.start(turn);
        let mut text = TurnText { pieces: Vec::new(), complete: delta.last };
        if !delta.text.trim().is_empty() {
            text.pieces.push(delta.text.clone());
        }
        if !text.pieces.is_empty() && !self.watch.should_stop(turn) {
            self.speak_turn(turn, text).await?;
        } else if text.complete {
            self.end_turn(turn);
        }
        Ok(())
    }

    /// Ends the reply to `turn` after its last text.
    fn end_turn(&mut self, turn: TurnId) {
        self.replies.end(turn);
    }

    /// Ends every turn up to `turn`, dropping its queued text and stopping its reply.
    fn interrupt(&mut self, turn: TurnId) {
        self.replies.interrupt(turn);
        self.queue.retain(|queued| !is_interrupted(queued, turn));
        self.deferred.retain(|queued| !is_interrupted(queued, turn));
    }

    /// Speaks a turn over one connection, opening another when one fails
    /// before any audio. Returns when the turn is spoken, interrupted, or
    /// failed after its audio started.
    async fn speak_turn(&mut self, turn: TurnId, mut text: TurnText) -> Result<(), StageError> {
        let retry = *self.stage.endpoint.retry();
        let mut attempt = 0;
        loop {
            let mut emitted = false;
            let result = self.converse(turn, &mut text, &mut emitted).await;
            if emitted && matches!(result, Err(Failure::Net(_))) {
                // Audio decoded before the failure is valid, so play it before reporting.
                self.emit(turn, true, &mut emitted).await?;
            }
            self.replies.samples.clear();
            // Frames that belong after the turn go back in front of the queue.
            while let Some(frame) = self.deferred.pop_back() {
                self.queue.push_front(frame);
            }
            let error = match result {
                Ok(Ended::Final) => {
                    if text.complete {
                        self.end_turn(turn);
                    }
                    return Ok(());
                }
                Ok(Ended::Stopped) => return Ok(()),
                Err(Failure::Stage(error)) => return Err(error),
                Err(Failure::Net(error)) => error,
            };
            self.usage.failure();
            if emitted {
                return self.report_broken_stream(turn, &error, text.complete).await;
            }
            if !error.is_retryable() || attempt >= retry.max_retries {
                tracing::warn!(stage = %self.io.name, turn = turn.0, attempts = attempt + 1, %error, "ElevenLabs connection failed");
                return Err(error.into());
            }

            attempt += 1;
            let delay = delay_after(&retry, attempt, &error);
            tracing::info!(stage = %self.io.name, turn = turn.0, attempt, ?delay, %error, "reconnecting to ElevenLabs with the turn's text so far");
            if self.while_receiving(turn, &mut text, tokio::time::sleep(delay)).await?.is_none() {
                return Ok(());
            }
        }
    }

    /// Runs one connection for `turn`: sends the turn's text as it comes and
    /// emits the audio as it arrives, until `isFinal`.
    async fn converse(&mut self, turn: TurnId, text: &mut TurnText, emitted: &mut bool) -> Result<Ended, Failure> {
        let endpoint = self.stage.url.clone();
        let redacted = mentis_pipeline::privacy::redact_url(&endpoint);
        let key = self.stage.endpoint.api_key().cloned();
        let secret = key.as_ref().map(|key| (HeaderName::from_static("xi-api-key"), "", key));

        // Connect while watching the inbox, so an interrupt needs no handshake to finish.
        self.usage.request();
        let connector = self.connector.clone();
        let connecting = ws::connect(&connector, &endpoint, &[], secret);
        let Some(socket) = self.while_receiving(turn, text, connecting).await? else {
            return Ok(Ended::Stopped);
        };
        let mut socket = socket.map_err(|error| mask_key(error, key.as_ref()))?;
        tracing::debug!(stage = %self.io.name, turn = turn.0, endpoint = redacted, "ElevenLabs connection open");

        // The opening message, then the text so far.
        let opening = InitializeConnection::new(self.stage.config.voice_settings, self.stage.config.generation_config.clone());
        send_json(&mut socket, &redacted, &opening).await?;
        for piece in &text.pieces {
            self.send_text(&mut socket, &redacted, piece).await?;
        }
        let mut sent_at = Instant::now();
        let first_text_at = sent_at;
        let mut ended_input = false;
        if text.complete {
            send_raw(&mut socket, &redacted, END_OF_INPUT_MESSAGE).await?;
            ended_input = true;
        }

        let idle = self.stage.endpoint.timeouts().idle;
        let mut last_heard = Instant::now();
        let mut decoder = Pcm16Decoder::new();
        let mut first_audio = true;
        loop {
            // After the end of input the server must keep sending, but before it silence is normal.
            let read_deadline = ended_input.then(|| tokio::time::Instant::from_std(last_heard.max(sent_at) + idle));
            let keep_alive_at = tokio::time::Instant::from_std(sent_at + self.stage.config.keep_alive);
            let event = if let Some(frame) = self.take_queued(ended_input) {
                Event::Input(self.process_input(Inboxed::Frame(frame), turn, ended_input).await?)
            } else {
                let event = tokio::select! {
                    message = socket.next() => Event::Message(message),
                    inboxed = self.receive_from_inbox(turn) => Event::Inboxed(inboxed),
                    () = tokio::time::sleep_until(keep_alive_at), if !ended_input => Event::KeepAlive,
                    () = sleep_until_some(read_deadline) => Event::Silent,
                };
                match event {
                    Event::Inboxed(inboxed) => Event::Input(self.process_input(inboxed, turn, ended_input).await?),
                    other => other,
                }
            };
            match event {
                Event::Input(Input::Stop) => return Ok(Ended::Stopped),
                Event::Input(Input::Nothing) => {}
                Event::Input(Input::Text { text: piece, last }) => {
                    self.send_text(&mut socket, &redacted, &piece).await?;
                    text.pieces.push(piece);
                    sent_at = Instant::now();
                    if last {
                        text.complete = true;
                        send_raw(&mut socket, &redacted, END_OF_INPUT_MESSAGE).await?;
                        ended_input = true;
                    }
                }
                Event::Input(Input::End) => {
                    text.complete = true;
                    send_raw(&mut socket, &redacted, END_OF_INPUT_MESSAGE).await?;
                    sent_at = Instant::now();
                    ended_input = true;
                }
                Event::KeepAlive => {
                    tracing::trace!(stage = %self.io.name, turn = turn.0, "sent a keep-alive space");
                    send_raw(&mut socket, &redacted, KEEP_ALIVE_MESSAGE).await?;
                    sent_at = Instant::now();
                }
                Event::Inboxed(_) => {}
                Event::Silent => {
                    return Err(Failure::Net(NetError::IdleTimeout { endpoint: redacted, after: idle }));
                }
                Event::Message(message) => {
                    last_heard = Instant::now();
                    let text_message = match message {
                        Some(Ok(Message::Text(text_message))) => text_message,
                        Some(Ok(Message::Close(frame))) => {
                            let reason = frame.map_or_else(String::new, |frame| format!(" ({} {})", frame.code, frame.reason));
                            return Err(closed_early(&redacted, &reason));
                        }
                        None => return Err(closed_early(&redacted, "")),
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => {
                            return Err(Failure::Net(NetError::WebSocket { endpoint: redacted, reason: error.to_string() }));
                        }
                    };
                    let parsed = parse_server_message(text_message.as_str())
                        .map_err(|error| NetError::Protocol { endpoint: redacted.clone(), detail: error.to_string() })?;
                    let (audio, is_final) = match parsed {
                        ServerMessage::Audio(chunk) => (chunk.audio, chunk.is_final),
                        ServerMessage::Final => (Vec::new(), true),
                        ServerMessage::Error { error, message, code } => {
                            let detail = format!(
                                "the server reported an error {error:?}{}{}",
                                message.map(|message| format!(": {message}")).unwrap_or_default(),
                                code.map(|code| format!(" (code {code})")).unwrap_or_default()
                            );
                            return Err(Failure::Net(NetError::Protocol { endpoint: redacted, detail }));
                        }
                        ServerMessage::Unknown { fields } => {
                            tracing::debug!(stage = %self.io.name, ?fields, "ignored an ElevenLabs message without audio");
                            continue;
                        }
                    };
                    if !audio.is_empty() {
                        if first_audio {
                            self.usage.first_byte(first_text_at.elapsed());
                            first_audio = false;
                        }
                        decoder.push_f32(&audio, &mut self.replies.samples);
                        if self.emit(turn, false, emitted).await? == Flow::Stop {
                            return Ok(Ended::Stopped);
                        }
                    }
                    if is_final {
                        if let Err(error) = decoder.finish() {
                            tracing::warn!(stage = %self.io.name, turn = turn.0, %error, "dropped the incomplete last sample of a turn");
                        }
                        if self.emit(turn, true, emitted).await? == Flow::Stop {
                            return Ok(Ended::Stopped);
                        }
                        // The server closes after isFinal, so a close handshake costs no wait.
                        let _ = tokio::time::timeout(Duration::from_millis(100), socket.close(None)).await;
                        text.pieces.clear();
                        return Ok(Ended::Final);
                    }
                }
            }
        }
    }

    async fn send_text(&mut self, socket: &mut WebSocket, endpoint: &str, piece: &str) -> Result<(), NetError> {
        let mut message = SendText::new(piece);
        if self.stage.config.flush_sentences {
            message = message.with_flush();
        }
        self.usage.characters(piece.chars().count());
        send_json(socket, endpoint, &message).await
    }

    /// Awaits `work` (connecting, or waiting before a retry) while taking
    /// input: text of the turn is added to `text`, to be sent once connected.
    /// Returns `None`, dropping `work`, when the turn was interrupted.
    async fn while_receiving<T>(
        &mut self,
        turn: TurnId,
        text: &mut TurnText,
        work: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, StageError> {
        tokio::pin!(work);
        loop {
            let inboxed = match self.take_queued(text.complete) {
                Some(frame) => Inboxed::Frame(frame),
                None => tokio::select! {
                    output = &mut work => return Ok(Some(output)),
                    inboxed = self.receive_from_inbox(turn) => inboxed,
                },
            };
            match self.process_input(inboxed, turn, text.complete).await? {
                Input::Stop => return Ok(None),
                Input::Text { text: piece, last } => {
                    text.pieces.push(piece);
                    text.complete |= last;
                }
                Input::End => text.complete = true,
                Input::Nothing => {}
            }
        }
    }

    /// Returns the next queued frame for the connection of a turn whose input
    /// is still open. Once input ended or a frame was deferred, queued frames
    /// wait for the next turn.
    fn take_queued(&mut self, input_ended: bool) -> Option<Frame> {
        if input_ended || !self.deferred.is_empty() {
            return None;
        }
        self.queue.pop_front()
    }

    /// Waits for a frame from the inbox. Never returns after the inbox ended,
    /// and polls the interrupt watch instead of reading while the queue is
    /// full. Cancel-safe: a frame is either returned or left in the inbox.
    async fn receive_from_inbox(&mut self, turn: TurnId) -> Inboxed {
        loop {
            if self.inbox_ended {
                return std::future::pending().await;
            }
            if self.queue.len() + self.deferred.len() >= MAX_QUEUED_FRAMES {
                tokio::time::sleep(INTERRUPT_POLL).await;
                if self.watch.should_stop(turn) {
                    return Inboxed::Interrupted;
                }
                continue;
            }
            return match self.io.inbox.recv().await {
                Some(frame) => Inboxed::Frame(frame),
                None => {
                    self.inbox_ended = true;
                    Inboxed::Ended
                }
            };
        }
    }

    /// Handles a frame taken while the connection of `turn` is open.
    /// Interrupts and other priority events act and go downstream at once,
    /// and frames that belong after the turn are deferred.
    async fn process_input(&mut self, inboxed: Inboxed, turn: TurnId, input_ended: bool) -> Result<Input, StageError> {
        let frame = match inboxed {
            Inboxed::Frame(frame) => frame,
            Inboxed::Interrupted => return Ok(Input::Stop),
            // At end of stream the turn's text is complete, but at cancellation the work stops.
            Inboxed::Ended if self.io.is_cancelled() => return Ok(Input::Stop),
            Inboxed::Ended => return Ok(if input_ended { Input::Nothing } else { Input::End }),
        };

        match &frame.payload {
            Payload::Control(Control::Interrupt) => {
                let through = frame.meta.turn;
                self.interrupt(through);
                self.io.outbox.send(frame).await?;
                if turn <= through {
                    tracing::debug!(stage = %self.io.name, turn = turn.0, "closed the ElevenLabs connection because the turn was interrupted");
                    return Ok(Input::Stop);
                }
                Ok(Input::Nothing)
            }
            Payload::Control(control) if control.is_priority() => {
                self.io.outbox.send(frame).await?;
                Ok(Input::Nothing)
            }
            _ if input_ended || !self.deferred.is_empty() => {
                self.deferred.push_back(frame);
                Ok(Input::Nothing)
            }
            Payload::Text(delta) if frame.meta.turn == turn => {
                if delta.text.trim().is_empty() {
                    return Ok(if delta.last { Input::End } else { Input::Nothing });
                }
                Ok(Input::Text { text: delta.text.clone(), last: delta.last })
            }
            Payload::Text(_) if self.replies.has_ended(frame.meta.turn) => {
                Ok(Input::Nothing)
            }
            Payload::Text(_) => {
                // A later turn began before this one's last text, so this turn's input is over.
                self.deferred.push_back(frame);
                Ok(Input::End)
            }
            Payload::Control(_) => {
                // Events such as end of turn keep their place after the text sent so far.
                self.io.outbox.send(frame).await?;
                Ok(Input::Nothing)
            }
            _ => {
                tracing::debug!(stage = %self.io.name, kind = frame.kind_name(), "ignored a frame that is not text");
                Ok(Input::Nothing)
            }
        }
    }

    /// Emits the decoded samples in frames, and with `all` the shorter last
    /// frame too.
    async fn emit(&mut self, turn: TurnId, all: bool, emitted: &mut bool) -> Result<Flow, StageError> {
        self.replies.emit(self.io, &self.watch, turn, all, emitted).await
    }

    /// Reports a connection that failed after its audio was emitted. The
    /// text sent on it cannot be spoken again without repeating speech, so
    /// the app receives the error, and later text of the turn opens a new
    /// connection.
    async fn report_broken_stream(&mut self, turn: TurnId, error: &NetError, complete: bool) -> Result<(), StageError> {
        tracing::warn!(stage = %self.io.name, turn = turn.0, %error, "ElevenLabs connection broke off after its audio started");
        self.replies.report_error(self.io, turn, error.to_string()).await?;
        if complete {
            self.end_turn(turn);
        }
        Ok(())
    }
}

/// The result of one read from the inbox.
enum Inboxed {
    Frame(Frame),
    /// The inbox ended: end of stream or cancellation.
    Ended,
    /// The interrupt watch fired while the queue was full.
    Interrupted,
}

/// One thing a connection reacts to.
enum Event {
    Message(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Inboxed(Inboxed),
    Input(Input),
    KeepAlive,
    Silent,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Masks the key in the body of a rejected handshake, which a careless
/// server may echo.
fn mask_key(error: NetError, key: Option<&mentis_pipeline::Secret>) -> NetError {
    match (error, key) {
        (NetError::Status { endpoint, status, body, retry_after, hint }, Some(key)) => {
            let body = crate::net::http::mask_secrets(&body, std::slice::from_ref(key));
            NetError::Status { endpoint, status, body, retry_after, hint }
        }
        (error, _) => error,
    }
}

fn closed_early(endpoint: &str, reason: &str) -> Failure {
    Failure::Net(NetError::WebSocket {
        endpoint: endpoint.to_owned(),
        reason: format!("the server closed the connection{reason} before its isFinal message"),
    })
}

async fn send_json(socket: &mut WebSocket, endpoint: &str, message: &impl serde::Serialize) -> Result<(), NetError> {
    let text = serde_json::to_string(message)
        .map_err(|error| NetError::Protocol { endpoint: endpoint.to_owned(), detail: format!("encoding a message: {error}") })?;
    send_raw(socket, endpoint, &text).await
}

async fn send_raw(socket: &mut WebSocket, endpoint: &str, text: &str) -> Result<(), NetError> {
    socket
        .send(Message::text(text))
        .await
        .map_err(|error| NetError::WebSocket { endpoint: endpoint.to_owned(), reason: error.to_string() })
}
