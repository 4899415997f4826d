//! Speech to text through a self-hosted streaming server that speaks the
//! protocol of Vosk's WebSocket server (alphacep/vosk-server,
//! `websocket/asr_server.py`). [`messages`] describes the message shapes.
//!
//! # Connection
//!
//! The stage opens one connection per segment, at the segment's first audio.
//! It sends `{"config": {"sample_rate": 16000}}`, then binary frames of 16-bit
//! little-endian PCM as the audio arrives. The server responds to every
//! audio frame with one result, partial or final. At the end of the segment
//! the stage sends `{"eof" : 1}`. The server responds with the final result
//! of the rest of the audio and then closes. A connection per segment
//! gives each turn a fresh recognizer and needs no keep-alive between turns.
//!
//! # Turns
//!
//! Partial results become partial transcripts of the segment. The server
//! may end an utterance inside a segment with a final result. The segment's
//! one final transcript joins every final result of the segment. It is
//! emitted before the `SpeechStopped` (or `EndOfTurn`) that ended the
//! segment is forwarded. When the response to `{"eof" : 1}` does not come
//! within [`WebSocketSttConfig::finalize_wait`], the text that arrived
//! (including the last partial) is emitted.
//!
//! # Failures
//!
//! Because every frame gets exactly one response, a final result confirms
//! all audio sent up to the frame it responds to. The stage keeps the audio
//! sent since the last final result. When the connection drops mid-segment,
//! the stage reconnects with the endpoint's retry policy and sends that
//! audio again, so the transcript loses and repeats nothing. When the
//! retries run out the stage returns the error. A text message that is not
//! valid JSON is skipped with a warning and still counts as the response to
//! one frame.
//!
//! An interrupt of the open segment closes the socket at once.

pub mod messages;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use mentis_pipeline::egress::BackendUsage;
use mentis_pipeline::frame::Payload;
use mentis_pipeline::stage::StageSpec;
use mentis_pipeline::{
    AudioFormat, Control, Frame, PortFormat, SampleFormat, Stage, StageError, StageFuture, StageIo, StageName,
    TranscriptKind, TurnId,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use self::messages::{ConfigMessage, EOF_MESSAGE, ServerMessage, TranscriptAssembler, TranscriptUpdate};
use super::network::{
    Backlog, Dial, Raced, Segment, Turns, WsMessage, accept_audio, cancels, connect_with_retry, emit_transcript,
    keep_unconfirmed, next_message, pcm16_duration, sleep_until, speech_text, wait_to_retry, ws_error,
};
use super::{NonSpeechFilter, SAMPLE_RATE, SttError};
use crate::net::ws::WebSocket;
use crate::net::{Connector, Endpoint, NetError};

/// The backend name in usage records and errors.
pub const BACKEND: &str = "ws-stt";

/// Audio re-sent in one binary frame after a reconnect: 250 ms.
const RESEND_CHUNK_BYTES: usize = 8_000;

/// Settings of a [`WebSocketStt`].
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocketSttConfig {
    /// The maximum wait for the response to `{"eof" : 1}`.
    pub finalize_wait: Duration,
    /// The maximum audio kept for sending again after a dropped connection.
    /// Older unconfirmed audio is dropped with a warning.
    pub max_unconfirmed_audio: Duration,
    /// The sample format the stage declares on its input port. Frames of
    /// the other sample format are accepted too and converted.
    pub sample_format: SampleFormat,
    /// The rules that drop non-speech results.
    pub filter: NonSpeechFilter,
}

impl Default for WebSocketSttConfig {
    fn default() -> Self {
        WebSocketSttConfig {
            finalize_wait: Duration::from_secs(3),
            max_unconfirmed_audio: Duration::from_secs(120),
            sample_format: SampleFormat::F32,
            filter: NonSpeechFilter::default(),
        }
    }
}

/// The streaming WebSocket speech-to-text stage, described in the [module docs](self).
#[derive(Debug)]
pub struct WebSocketStt {
    name: StageName,
    endpoint: Endpoint,
    config: WebSocketSttConfig,
}

impl WebSocketStt {
    /// Builds the stage. `endpoint` is the server's WebSocket URL, such as
    /// `ws://127.0.0.1:2700` (Vosk's default port).
    ///
    /// # Errors
    ///
    /// [`SttError::InvalidSetting`] for a zero wait or audio limit.
    pub fn new(name: StageName, endpoint: Endpoint, config: WebSocketSttConfig) -> Result<Self, SttError> {
        if config.finalize_wait.is_zero() || config.max_unconfirmed_audio.is_zero() {
            return Err(SttError::InvalidSetting {
                engine: BACKEND,
                name: "finalize_wait or max_unconfirmed_audio",
                value: "0 s".to_owned(),
                reason: "the wait and the audio limit must be above zero",
            });
        }
        Ok(WebSocketStt { name, endpoint, config })
    }

    /// Returns the settings.
    pub fn config(&self) -> &WebSocketSttConfig {
        &self.config
    }
}

impl Stage for WebSocketStt {
    fn spec(&self) -> StageSpec {
        let input = AudioFormat { sample_rate: SAMPLE_RATE, channels: 1, sample_format: self.config.sample_format };
        StageSpec::new(self.name.clone(), PortFormat::Audio(input), PortFormat::Transcript)
            .with_egress(self.endpoint.egress())
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let mut session = Session {
                usage: io.usage.backend(&io.name, BACKEND),
                connector: self.endpoint.connector(io),
                stage: self,
                turns: Turns::default(),
                backlog: Backlog::default(),
                socket: None,
                awaiting: VecDeque::new(),
                responded_bytes: 0,
                unconfirmed: VecDeque::new(),
                text: SegmentText::default(),
                finishing: None,
                failed_attempts: 0,
                malformed: 0,
                first_audio_at: None,
            };
            session.run(io).await
        })
    }
}

/// The kind of a frame sent to the server. Each frame gets one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Audio of this many bytes.
    Audio(usize),
    /// The end-of-stream message.
    Eof,
}

/// The text of the open segment. Its closed utterances are the segment's final results.
type SegmentText = super::network::SegmentText<TranscriptAssembler>;

/// A segment whose `{"eof" : 1}` was sent.
#[derive(Debug)]
struct Finishing {
    segment: Segment,
    deadline: Instant,
    /// The control frame that ended the segment, forwarded after the final,
    /// or `None` at end of stream.
    ending: Option<Frame>,
}

enum Event {
    Frame(Option<Frame>),
    Message(WsMessage),
    Deadline,
}

struct Session<'a> {
    stage: &'a WebSocketStt,
    connector: Connector,
    usage: std::sync::Arc<BackendUsage>,
    turns: Turns,
    backlog: Backlog,
    socket: Option<WebSocket>,
    /// Frames sent on this connection without a response yet, oldest first.
    awaiting: VecDeque<Sent>,
    /// Audio bytes with a response since the last final result.
    responded_bytes: usize,
    /// Audio sent since the last final result.
    unconfirmed: VecDeque<u8>,
    text: SegmentText,
    finishing: Option<Finishing>,
    failed_attempts: u32,
    malformed: u64,
    first_audio_at: Option<Instant>,
}

impl Session<'_> {
    async fn run(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        loop {
            if self.finishing.is_none() {
                if let Some((frame, forwarded)) = self.backlog.pop() {
                    self.handle_frame(io, frame, forwarded).await?;
                    continue;
                }
                if self.backlog.ended {
                    // The last words of a segment still open.
                    let Some(segment) = self.turns.close() else { break };
                    self.finish_segment(io, segment, None).await?;
                    continue;
                }
            }

            let deadline = self.finishing.as_ref().map(|finishing| finishing.deadline);
            let socket = &mut self.socket;
            let event = tokio::select! {
                biased;
                frame = io.inbox.recv(), if !self.backlog.ended => Event::Frame(frame),
                message = next_message(socket) => Event::Message(message),
                () = sleep_until(deadline) => Event::Deadline,
            };
            match event {
                Event::Frame(None) => {
                    self.backlog.ended = true;
                    if io.is_cancelled() {
                        return Ok(());
                    }
                }
                Event::Frame(Some(frame)) if self.finishing.is_some() => self.hold_back(io, frame).await?,
                Event::Frame(Some(frame)) => self.handle_frame(io, frame, false).await?,
                Event::Message(message) => self.handle_message(io, message).await?,
                Event::Deadline => {
                    tracing::warn!(stage = %io.name, "the speech-to-text server did not respond to the end of the segment in time; emitting what arrived");
                    self.usage.failure();
                    self.complete(io).await?;
                }
            }
        }
        Ok(())
    }

    async fn hold_back(&mut self, io: &mut StageIo, frame: Frame) -> Result<(), StageError> {
        let Some((control, control_turn)) = self.backlog.receive(io, frame).await? else {
            return Ok(());
        };
        if self.finishing.as_ref().is_some_and(|finishing| cancels(&control, control_turn, finishing.segment.turn)) {
            self.cancel_finishing(io).await?;
        }
        Ok(())
    }

    async fn cancel_finishing(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        self.close_connection();
        self.text = SegmentText::default();
        if let Some(Finishing { ending: Some(ending), .. }) = self.finishing.take() {
            io.outbox.send(ending).await?;
        }
        Ok(())
    }

    async fn handle_frame(&mut self, io: &mut StageIo, frame: Frame, forwarded: bool) -> Result<(), StageError> {
        let Payload::Control(control) = &frame.payload else {
            return self.handle_audio(io, &frame).await;
        };
        let control = control.clone();
        let meta = frame.meta;
        let open_turn = self.turns.open().map(|open| open.turn);
        match control {
            Control::SpeechStarted => {
                if !self.turns.is_stale(meta.turn) && self.turns.open_segment(meta.turn, meta.timestamp).is_some() {
                    self.forget_segment();
                }
            }
            Control::SpeechStopped | Control::EndOfTurn if open_turn == Some(meta.turn) => {
                if let Some(segment) = self.turns.close() {
                    return self.finish_segment(io, segment, Some(frame)).await;
                }
            }
            Control::Interrupt => {
                if open_turn.is_some_and(|turn| turn <= meta.turn) {
                    self.turns.close();
                    self.forget_segment();
                }
            }
            Control::Flush => {
                self.turns.close();
                self.forget_segment();
            }
            _ => {}
        }
        if !forwarded {
            io.outbox.send(frame).await?;
        }
        Ok(())
    }

    async fn handle_audio(&mut self, io: &mut StageIo, frame: &Frame) -> Result<(), StageError> {
        let Some(accepted) = accept_audio(&mut self.turns, frame)? else {
            return Ok(());
        };
        if accepted.replaced {
            self.forget_segment();
        }
        let Some(pcm) = accepted.pcm else {
            return Ok(());
        };
        let turn = frame.meta.turn;
        self.keep_unconfirmed(io, &pcm);

        if self.socket.is_none() {
            return self.reconnect(io, turn).await;
        }
        if let Err(error) = self.send_audio(Bytes::from(pcm)).await {
            self.connection_lost(io, error).await?;
        }
        Ok(())
    }

    fn keep_unconfirmed(&mut self, io: &StageIo, pcm: &[u8]) {
        let excess = keep_unconfirmed(&mut self.unconfirmed, pcm, self.stage.config.max_unconfirmed_audio);
        if excess > 0 {
            tracing::warn!(stage = %io.name, dropped_ms = pcm16_duration(excess).as_millis() as u64, "the server has not finalized the oldest audio, so it will not be sent again after a reconnect");
            self.responded_bytes = self.responded_bytes.saturating_sub(excess);
        }
    }

    /// Clears the text, the audio and the connection of a discarded segment.
    fn forget_segment(&mut self) {
        self.text = SegmentText::default();
        self.close_connection();
    }

    /// Closes the socket at once, without a closing handshake.
    fn close_connection(&mut self) {
        self.socket = None;
        self.awaiting.clear();
        self.responded_bytes = 0;
        self.unconfirmed.clear();
        self.first_audio_at = None;
    }

    async fn send(&mut self, message: Message, sent: Sent) -> Result<(), NetError> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        if let Err(error) = socket.send(message).await {
            return Err(ws_error(self.stage.endpoint.url(), &error));
        }
        self.awaiting.push_back(sent);
        Ok(())
    }

    /// Sends one binary frame of audio (never an empty one).
    async fn send_audio(&mut self, pcm: Bytes) -> Result<(), NetError> {
        if pcm.is_empty() {
            return Ok(());
        }
        let length = pcm.len();
        self.send(Message::Binary(pcm), Sent::Audio(length)).await?;
        self.usage.audio(pcm16_duration(length));
        self.first_audio_at.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Sends `{"eof" : 1}` and waits for its response, or emits at once when
    /// no audio of the segment went out.
    async fn finish_segment(&mut self, io: &mut StageIo, segment: Segment, ending: Option<Frame>) -> Result<(), StageError> {
        let deadline = Instant::now() + self.stage.config.finalize_wait;
        self.finishing = Some(Finishing { segment, deadline, ending });
        if self.socket.is_none() {
            return self.complete(io).await;
        }
        if let Err(error) = self.send(Message::text(EOF_MESSAGE), Sent::Eof).await {
            self.connection_lost(io, error).await?;
        }
        Ok(())
    }

    /// Emits the finishing segment's final, closes its connection and
    /// forwards the frame that ended it.
    async fn complete(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        let Some(finishing) = self.finishing.take() else {
            return Ok(());
        };
        let open = self.text.assembler.finish();
        let text = self.text.joined(open.as_deref());
        self.text = SegmentText::default();
        self.close_connection();
        let turn = finishing.segment.turn;
        if !io.inbox.interrupt_watch().should_stop(turn) {
            match speech_text(&self.stage.config.filter, &text, None) {
                Some(text) => emit_transcript(io, finishing.segment, TranscriptKind::Final, text, None).await?,
                None => tracing::debug!(stage = %io.name, %turn, "no speech in the segment"),
            }
        }
        match finishing.ending {
            Some(ending) => io.outbox.send(ending).await,
            None => Ok(()),
        }
    }

    fn active_segment(&self) -> Option<Segment> {
        self.finishing.as_ref().map(|finishing| finishing.segment).or_else(|| self.turns.open())
    }

    async fn handle_message(
        &mut self,
        io: &mut StageIo,
        message: WsMessage,
    ) -> Result<(), StageError> {
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None if self.awaiting.is_empty() && self.finishing.is_some() => {
                return self.complete(io).await;
            }
            Some(Ok(Message::Close(_))) | None => {
                let error = NetError::WebSocket {
                    endpoint: mentis_pipeline::privacy::redact_url(self.stage.endpoint.url()),
                    reason: "the server closed the connection before responding to all audio".to_owned(),
                };
                return self.connection_lost(io, error).await;
            }
            Some(Ok(_)) => return Ok(()),
            Some(Err(error)) => {
                let error = ws_error(self.stage.endpoint.url(), &error);
                return self.connection_lost(io, error).await;
            }
        };

        // Every text message responds to the oldest frame without a response.
        let responds_to = self.awaiting.pop_front();
        if let Some(Sent::Audio(bytes)) = responds_to {
            self.responded_bytes += bytes;
        }
        if let Some(first_audio_at) = self.first_audio_at.take() {
            self.failed_attempts = 0;
            self.usage.first_byte(first_audio_at.elapsed());
        }
        let message = match messages::parse_server_message(text.as_str()) {
            Ok(message) => message,
            Err(error) => {
                self.malformed += 1;
                if self.malformed == 1 {
                    tracing::warn!(stage = %io.name, %error, "skipping a malformed message from the speech-to-text server (later ones are counted)");
                }
                return Ok(());
            }
        };
        if let ServerMessage::Final { .. } = message {
            let confirmed = self.responded_bytes.min(self.unconfirmed.len());
            self.unconfirmed.drain(..confirmed);
            self.responded_bytes = 0;
        }

        let Some(segment) = self.active_segment() else {
            return Ok(());
        };
        match self.text.assembler.push(&message) {
            Some(TranscriptUpdate::Final(text)) => self.text.closed.push(text),
            Some(TranscriptUpdate::Partial(text)) => {
                let partial = self.text.joined(Some(&text));
                if partial != self.text.last_partial && !io.inbox.interrupt_watch().should_stop(segment.turn) {
                    self.text.last_partial.clone_from(&partial);
                    emit_transcript(io, segment, TranscriptKind::Partial, partial, None).await?;
                }
            }
            None => {}
        }
        if responds_to == Some(Sent::Eof) {
            return self.complete(io).await;
        }
        Ok(())
    }

    async fn connection_lost(&mut self, io: &mut StageIo, error: NetError) -> Result<(), StageError> {
        self.socket = None;
        self.usage.failure();
        let Some(segment) = self.active_segment() else {
            self.close_connection();
            return Ok(());
        };
        tracing::warn!(stage = %io.name, turn = %segment.turn, %error, "the speech-to-text connection dropped mid-segment, reconnecting");
        let retry = self.stage.endpoint.retry();
        let waited = wait_to_retry(io, &mut self.backlog, retry, &mut self.failed_attempts, error, segment.turn).await?;
        if let Raced::Cancelled = waited {
            return self.cancel_finishing(io).await;
        }
        self.reconnect(io, segment.turn).await
    }

    /// Opens a connection (with retries), sends the configuration, the
    /// unconfirmed audio and, for a finishing segment, `{"eof" : 1}`.
    async fn reconnect(&mut self, io: &mut StageIo, turn: TurnId) -> Result<(), StageError> {
        let dial = Dial {
            connector: &self.connector,
            endpoint: &self.stage.endpoint,
            url: self.stage.endpoint.url(),
            scheme: "Bearer ",
            usage: &self.usage,
        };
        match connect_with_retry(io, &mut self.backlog, &dial, &mut self.failed_attempts, turn).await? {
            Raced::Cancelled => self.cancel_finishing(io).await,
            Raced::Done(socket) => self.install(io, socket).await,
        }
    }

    async fn install(&mut self, io: &mut StageIo, mut socket: WebSocket) -> Result<(), StageError> {
        let config = serde_json::to_string(&ConfigMessage::new(SAMPLE_RATE))
            .map_err(|error| StageError::fatal(format!("the configuration message could not be written: {error}")))?;
        if let Err(error) = socket.send(Message::text(config)).await {
            let error = ws_error(self.stage.endpoint.url(), &error);
            return Box::pin(self.connection_lost(io, error)).await;
        }
        self.socket = Some(socket);
        self.awaiting.clear();
        self.responded_bytes = 0;
        self.first_audio_at = None;
        // The partial text came from audio that is sent again, but final results are kept.
        self.text.assembler = TranscriptAssembler::new();

        let resend: Vec<u8> = self.unconfirmed.iter().copied().collect();
        for chunk in resend.chunks(RESEND_CHUNK_BYTES) {
            if let Err(error) = self.send_audio(Bytes::copy_from_slice(chunk)).await {
                return Box::pin(self.connection_lost(io, error)).await;
            }
        }
        if let Some(finishing) = self.finishing.as_mut() {
            finishing.deadline = Instant::now() + self.stage.config.finalize_wait;
            if let Err(error) = self.send(Message::text(EOF_MESSAGE), Sent::Eof).await {
                return Box::pin(self.connection_lost(io, error)).await;
            }
        }
        Ok(())
    }
}
