//! Deepgram live transcription over WSS (`wss://api.deepgram.com/v1/listen`).
//!
//! # Connection
//!
//! The stage opens one WebSocket at the first audio of a segment and keeps it
//! for the session. The query string carries [`ListenOptions`], and the
//! `Authorization: Token KEY` header carries the API key. Each segment's
//! audio goes out as binary frames of 16-bit little-endian PCM as it arrives.
//! The stage never sends a 0-byte frame, because Deepgram reads an empty
//! message as a request to close. While no audio flows, a `{"type":"KeepAlive"}` text message goes
//! out every [`DeepgramConfig::keep_alive_interval`] (Deepgram closes an idle
//! connection after 10 s).
//!
//! # Turns
//!
//! Interim results become partial transcripts. At the end of a segment
//! (`SpeechStopped`, or `EndOfTurn` without one) the stage sends `Finalize`
//! and waits for the result that responds to it: one marked `from_finalize`, a
//! final result that covers the segment's last audio, or an `UtteranceEnd`.
//! It then emits the segment's one final transcript: every final result of
//! the segment joined, whether Deepgram split it with `speech_final` or not.
//! When no response comes within [`DeepgramConfig::finalize_wait`], the text
//! that arrived (including the last interim text) is emitted and the
//! connection is closed, so that late results cannot be taken for the next
//! turn's. Other frames wait in order behind the segment's final, but
//! interrupts are forwarded at once.
//!
//! # Failures
//!
//! The stage keeps the audio the server has not finalized yet (the end of
//! each final result's `start + duration` marks how far it got). When the
//! connection drops during a segment, the stage reconnects with the
//! endpoint's retry policy and sends that audio again, so the transcript
//! loses and repeats nothing. Text already finalized is kept. When the retries run out, the
//! stage returns the error. A text message that is not valid JSON is skipped
//! with a warning (counted, logged once per connection).
//!
//! An interrupt of the open or finalizing segment closes the socket at once
//! and discards the segment. The next segment opens a new connection.
//!
//! # End of stream
//!
//! `CloseStream` is sent after all audio, and the stage reads until the
//! server closes (for a maximum of [`DeepgramConfig::close_wait`]), so that the last
//! words of a segment still open reach the output.
//!
//! Message shapes and behaviour: <https://developers.deepgram.com/reference/listen-live>,
//! <https://developers.deepgram.com/docs/keep-alive>,
//! <https://developers.deepgram.com/docs/finalize>,
//! <https://developers.deepgram.com/docs/close-stream>.

pub mod messages;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use mentis_pipeline::egress::BackendUsage;
use mentis_pipeline::frame::Payload;
use mentis_pipeline::stage::StageSpec;
use mentis_pipeline::{
    AudioFormat, Control, Frame, PortFormat, SampleFormat, Stage, StageError, StageFuture, StageIo,
    StageName, TranscriptKind, TurnId,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use self::messages::{ControlMessage, ListenOptions, ServerMessage, TranscriptAssembler, TranscriptUpdate};
use super::network::{
    Backlog, Dial, Raced, Segment, Turns, WsMessage, accept_audio, cancels, connect_with_retry, emit_transcript,
    keep_unconfirmed, next_message, pcm16_duration, sleep_until, speech_text, wait_to_retry, ws_error,
};
use super::{NonSpeechFilter, SAMPLE_RATE, SttError};
use crate::net::ws::WebSocket;
use crate::net::{Connector, Endpoint, Hosting, NetError};

/// The backend name in usage records and errors.
pub const BACKEND: &str = "deepgram";

/// Bytes of 16-bit mono PCM per second at [`SAMPLE_RATE`].
const BYTES_PER_SECOND: f64 = SAMPLE_RATE as f64 * 2.0;

/// Audio re-sent in one binary frame after a reconnect: 250 ms.
const RESEND_CHUNK_BYTES: usize = 8_000;

/// Maximum distance between a final result's end and the segment's last
/// audio for the result to count as covering it, in bytes of PCM (50 ms). Deepgram reports times in
/// milliseconds, rounded.
const END_TOLERANCE_BYTES: usize = 1_600;

/// Settings of a [`DeepgramStt`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeepgramConfig {
    /// The query-string options. Their sample rate and channel count must
    /// be 16 kHz mono, the audio the stage sends.
    pub options: ListenOptions,
    /// The gap without audio after which a KeepAlive is sent. Deepgram
    /// recommends 3 to 5 s and closes after 10 s without data.
    pub keep_alive_interval: Duration,
    /// The maximum wait for the response to `Finalize`.
    pub finalize_wait: Duration,
    /// The maximum wait for the server to close after `CloseStream`.
    pub close_wait: Duration,
    /// The maximum audio kept for sending again after a dropped connection.
    /// Older unconfirmed audio is dropped with a warning.
    pub max_unconfirmed_audio: Duration,
    /// The sample format the stage declares on its input port. Frames of
    /// the other sample format are accepted too and converted.
    pub sample_format: SampleFormat,
    /// The rules that drop non-speech results.
    pub filter: NonSpeechFilter,
}

impl Default for DeepgramConfig {
    fn default() -> Self {
        DeepgramConfig {
            options: ListenOptions::new(),
            keep_alive_interval: Duration::from_secs(4),
            finalize_wait: Duration::from_secs(3),
            close_wait: Duration::from_secs(5),
            max_unconfirmed_audio: Duration::from_secs(120),
            sample_format: SampleFormat::F32,
            filter: NonSpeechFilter::default(),
        }
    }
}

/// The Deepgram live transcription stage, described in the [module docs](self).
#[derive(Debug)]
pub struct DeepgramStt {
    name: StageName,
    endpoint: Endpoint,
    config: DeepgramConfig,
    url: Url,
}

impl DeepgramStt {
    /// Builds the stage. `endpoint` is the API's base URL, such as
    /// `wss://api.deepgram.com`. The path `/v1/listen` and the options'
    /// query string are added to it.
    ///
    /// # Errors
    ///
    /// [`SttError::InvalidSetting`] for options Deepgram would reject, a
    /// sample rate or channel count other than 16 kHz mono, a keep-alive
    /// interval outside 1 to 9 s, a zero wait, or a cloud endpoint without
    /// an API key.
    pub fn new(name: StageName, endpoint: Endpoint, config: DeepgramConfig) -> Result<Self, SttError> {
        let invalid = |name: &'static str, value: String, reason: &'static str| SttError::InvalidSetting {
            engine: BACKEND,
            name,
            value,
            reason,
        };
        if config.options.sample_rate != SAMPLE_RATE || config.options.channels != 1 {
            return Err(invalid(
                "options.sample_rate",
                format!("{} Hz, {} channels", config.options.sample_rate, config.options.channels),
                "the stage sends mono 16 kHz audio; set sample_rate 16000 and channels 1",
            ));
        }
        let url = config.options.url(endpoint.url()).map_err(|error| SttError::InvalidSetting {
            engine: BACKEND,
            name: "options",
            value: error.to_string(),
            reason: "fix the option named in the value",
        })?;
        if !(Duration::from_secs(1)..=Duration::from_secs(9)).contains(&config.keep_alive_interval) {
            return Err(invalid(
                "keep_alive_interval",
                format!("{:?}", config.keep_alive_interval),
                "Deepgram closes after 10 s without data; use 3 to 5 s",
            ));
        }
        if config.finalize_wait.is_zero() || config.close_wait.is_zero() || config.max_unconfirmed_audio.is_zero() {
            return Err(invalid(
                "finalize_wait, close_wait or max_unconfirmed_audio",
                "0 s".to_owned(),
                "the waits and the audio limit must be above zero",
            ));
        }
        if endpoint.hosting() == Hosting::Cloud && endpoint.api_key().is_none() {
            return Err(invalid(
                "api_key",
                "none".to_owned(),
                "Deepgram's cloud API needs an API key; set the key the configuration names",
            ));
        }
        Ok(DeepgramStt { name, endpoint, config, url })
    }

    /// Returns the settings.
    pub fn config(&self) -> &DeepgramConfig {
        &self.config
    }

    /// Returns the URL the stage connects to, with its query string.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl Stage for DeepgramStt {
    fn spec(&self) -> StageSpec {
        let input = AudioFormat { sample_rate: SAMPLE_RATE, channels: 1, sample_format: self.config.sample_format };
        StageSpec::new(self.name.clone(), PortFormat::Audio(input), PortFormat::Transcript)
            .with_egress(self.endpoint.egress())
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let usage = io.usage.backend(&io.name, BACKEND);
            let connector = self.endpoint.connector(io);
            let mut session = Session {
                stage: self,
                connector,
                usage,
                turns: Turns::default(),
                backlog: Backlog::default(),
                socket: None,
                connection: ConnectionState::default(),
                unconfirmed: VecDeque::new(),
                turn: TurnText::default(),
                finalizing: None,
                failed_attempts: 0,
            };
            session.run(io).await
        })
    }
}

/// The open connection's position in its audio timeline.
#[derive(Debug, Default)]
struct ConnectionState {
    /// Bytes of audio sent on this connection.
    sent: usize,
    /// The position of the first byte of `Session::unconfirmed`.
    unconfirmed_start: usize,
    /// Time the first audio went out, for the time to the first result.
    first_audio_at: Option<Instant>,
    /// Whether a result arrived on this connection.
    responded: bool,
    /// Time the next KeepAlive is due.
    keep_alive_at: Option<Instant>,
    /// Malformed messages skipped on this connection.
    malformed: u64,
}

/// The text of the segment being transcribed.
type TurnText = super::network::SegmentText<TranscriptAssembler>;

/// A segment whose `Finalize` was sent and whose final is awaited.
#[derive(Debug)]
struct Finalizing {
    segment: Segment,
    /// The connection position after the segment's last audio.
    end: usize,
    deadline: Instant,
    /// The control frame that ended the segment, forwarded after the final.
    ending: Frame,
}

/// The event that woke the session up.
enum Event {
    Frame(Option<Frame>),
    Message(WsMessage),
    KeepAlive,
    Deadline,
}

/// One run of the stage.
struct Session<'a> {
    stage: &'a DeepgramStt,
    connector: Connector,
    usage: std::sync::Arc<BackendUsage>,
    turns: Turns,
    backlog: Backlog,
    socket: Option<WebSocket>,
    connection: ConnectionState,
    /// Audio sent but not yet covered by a final result, oldest first.
    unconfirmed: VecDeque<u8>,
    turn: TurnText,
    finalizing: Option<Finalizing>,
    /// Connection attempts that failed since a connection last received a result.
    failed_attempts: u32,
}

impl Session<'_> {
    async fn run(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        loop {
            // Frames held back behind a final are handled once it is out.
            if self.finalizing.is_none() {
                if let Some((frame, forwarded)) = self.backlog.pop() {
                    self.handle_frame(io, frame, forwarded).await?;
                    continue;
                }
                if self.backlog.ended {
                    break;
                }
            }

            let event = self.next_event(io).await;
            match event {
                Event::Frame(None) => {
                    self.backlog.ended = true;
                    if io.is_cancelled() {
                        return Ok(());
                    }
                }
                Event::Frame(Some(frame)) => {
                    if self.finalizing.is_some() {
                        self.hold_back(io, frame).await?;
                    } else {
                        self.handle_frame(io, frame, false).await?;
                    }
                }
                Event::Message(message) => self.handle_message(io, message).await?,
                Event::KeepAlive => self.keep_alive(io).await?,
                Event::Deadline => {
                    tracing::warn!(stage = %io.name, wait_ms = self.stage.config.finalize_wait.as_millis() as u64, "Deepgram did not respond to Finalize in time; emitting what arrived and reconnecting at the next segment");
                    self.usage.failure();
                    self.complete_finalizing(io).await?;
                    self.drop_connection();
                }
            }
        }
        self.end_of_stream(io).await
    }

    async fn next_event(&mut self, io: &mut StageIo) -> Event {
        let keep_alive_at = self.connection.keep_alive_at.filter(|_| self.socket.is_some());
        let deadline = self.finalizing.as_ref().map(|finalizing| finalizing.deadline);
        let socket = &mut self.socket;
        tokio::select! {
            biased;
            frame = io.inbox.recv(), if !self.backlog.ended => Event::Frame(frame),
            message = next_message(socket) => Event::Message(message),
            () = sleep_until(deadline) => Event::Deadline,
            () = sleep_until(keep_alive_at) => Event::KeepAlive,
        }
    }

    /// Queues a frame that arrived while a final is awaited. Interrupts and
    /// other priority controls are forwarded at once, and one that cancels
    /// the finalizing turn discards it.
    async fn hold_back(&mut self, io: &mut StageIo, frame: Frame) -> Result<(), StageError> {
        let Some((control, control_turn)) = self.backlog.receive(io, frame).await? else {
            return Ok(());
        };
        if let Some(finalizing) = self.finalizing.take() {
            if cancels(&control, control_turn, finalizing.segment.turn) {
                tracing::debug!(stage = %io.name, turn = %finalizing.segment.turn, "interrupt while finalizing, so the segment is discarded");
                self.discard_turn_text();
                self.drop_connection();
                io.outbox.send(finalizing.ending).await?;
            } else {
                self.finalizing = Some(finalizing);
            }
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
                    self.forget_segment_audio(io, "new turn before the end of the open segment");
                }
            }
            Control::SpeechStopped | Control::EndOfTurn if open_turn == Some(meta.turn) => {
                // The final goes out before this frame, which is forwarded when it is done.
                return self.end_segment(io, frame).await;
            }
            Control::Interrupt => {
                if open_turn.is_some_and(|turn| turn <= meta.turn) {
                    self.discard_open(io, "interrupt");
                }
            }
            Control::Flush => self.discard_open(io, "flush"),
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
            self.forget_segment_audio(io, "new turn before the end of the open segment");
        }
        let Some(pcm) = accepted.pcm else {
            return Ok(());
        };
        let turn = frame.meta.turn;
        self.keep_unconfirmed(io, &pcm);

        if self.socket.is_none() {
            // Connecting sends the unconfirmed audio, this frame included.
            return self.reconnect(io, turn).await;
        }
        if let Err(error) = self.send_audio(Bytes::from(pcm)).await {
            self.connection_lost(io, error).await?;
        }
        Ok(())
    }

    /// Adds audio to the unconfirmed buffer, dropping the oldest beyond the limit.
    fn keep_unconfirmed(&mut self, io: &StageIo, pcm: &[u8]) {
        let excess = keep_unconfirmed(&mut self.unconfirmed, pcm, self.stage.config.max_unconfirmed_audio);
        if excess > 0 {
            tracing::warn!(stage = %io.name, dropped_ms = pcm16_duration(excess).as_millis() as u64, "Deepgram has not finalized the oldest audio, so it will not be sent again after a reconnect");
            self.connection.unconfirmed_start += excess;
        }
    }

    /// Sends one binary frame of audio (never an empty one).
    async fn send_audio(&mut self, pcm: Bytes) -> Result<(), NetError> {
        if pcm.is_empty() {
            return Ok(());
        }
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let length = pcm.len();
        socket.send(Message::Binary(pcm)).await.map_err(|error| self.ws_error(&error))?;
        self.usage.audio(pcm16_duration(length));
        self.connection.sent += length;
        self.connection.first_audio_at.get_or_insert_with(Instant::now);
        self.connection.keep_alive_at = Some(Instant::now() + self.stage.config.keep_alive_interval);
        Ok(())
    }

    async fn send_control(&mut self, message: ControlMessage) -> Result<(), NetError> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        socket.send(Message::text(message.as_json())).await.map_err(|error| self.ws_error(&error))?;
        self.connection.keep_alive_at = Some(Instant::now() + self.stage.config.keep_alive_interval);
        Ok(())
    }

    async fn keep_alive(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        tracing::trace!(stage = %io.name, "KeepAlive");
        if let Err(error) = self.send_control(ControlMessage::KeepAlive).await {
            self.connection_lost(io, error).await?;
        }
        Ok(())
    }

    fn ws_error(&self, error: &tokio_tungstenite::tungstenite::Error) -> NetError {
        ws_error(&self.stage.url, error)
    }

    /// Ends the open segment: emits its final now when the server has
    /// finalized all its audio, or sends `Finalize` and waits.
    async fn end_segment(&mut self, io: &mut StageIo, ending: Frame) -> Result<(), StageError> {
        let Some(segment) = self.turns.close() else {
            return Ok(());
        };
        if self.unconfirmed.is_empty() || self.socket.is_none() {
            self.emit_final(io, segment).await?;
            return io.outbox.send(ending).await;
        }
        let deadline = Instant::now() + self.stage.config.finalize_wait;
        self.finalizing = Some(Finalizing { segment, end: self.connection.sent, deadline, ending });
        if let Err(error) = self.send_control(ControlMessage::Finalize).await {
            self.connection_lost(io, error).await?;
        }
        Ok(())
    }

    /// Emits the finalizing segment's final and forwards the frame that ended it.
    async fn complete_finalizing(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        let Some(finalizing) = self.finalizing.take() else {
            return Ok(());
        };
        self.emit_final(io, finalizing.segment).await?;
        io.outbox.send(finalizing.ending).await
    }

    /// Emits the segment's final transcript, unless it was interrupted or is
    /// not speech, and resets the segment's text.
    async fn emit_final(&mut self, io: &mut StageIo, segment: Segment) -> Result<(), StageError> {
        let open = self.turn.assembler.finish();
        let text = self.turn.joined(open.as_deref());
        self.discard_turn_text();
        if io.inbox.interrupt_watch().should_stop(segment.turn) {
            return Ok(());
        }
        let Some(text) = speech_text(&self.stage.config.filter, &text, None) else {
            tracing::debug!(stage = %io.name, turn = %segment.turn, "no speech in the segment");
            return Ok(());
        };
        tracing::debug!(stage = %io.name, turn = %segment.turn, chars = text.len(), "final transcript");
        emit_transcript(io, segment, TranscriptKind::Final, text, None).await
    }

    fn discard_turn_text(&mut self) {
        self.turn = TurnText::default();
    }

    /// Discards the open segment.
    fn discard_open(&mut self, io: &StageIo, reason: &'static str) {
        if self.turns.close().is_some() {
            self.forget_segment_audio(io, reason);
        }
    }

    /// Clears the text and unconfirmed audio of a discarded segment. Audio
    /// of it already sent has results on the way, so the connection is
    /// closed and the next segment opens another.
    fn forget_segment_audio(&mut self, io: &StageIo, reason: &'static str) {
        tracing::debug!(stage = %io.name, reason, "segment discarded");
        self.discard_turn_text();
        if !self.unconfirmed.is_empty() {
            self.drop_connection();
        }
        self.unconfirmed.clear();
        self.connection.unconfirmed_start = self.connection.sent;
    }

    /// Closes the socket at once, without a closing handshake.
    fn drop_connection(&mut self) {
        self.socket = None;
        self.connection = ConnectionState::default();
        self.unconfirmed.clear();
    }

    /// Returns the segment that text results belong to: the finalizing one, or the open one.
    fn active_segment(&self) -> Option<Segment> {
        self.finalizing.as_ref().map(|finalizing| finalizing.segment).or_else(|| self.turns.open())
    }

    async fn handle_message(
        &mut self,
        io: &mut StageIo,
        message: WsMessage,
    ) -> Result<(), StageError> {
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let reason = frame.map(|frame| format!("{} {}", frame.code, frame.reason)).unwrap_or_default();
                let error = NetError::WebSocket {
                    endpoint: mentis_pipeline::privacy::redact_url(&self.stage.url),
                    reason: format!("the server closed the connection ({reason})"),
                };
                return self.connection_lost(io, error).await;
            }
            Some(Ok(_)) => return Ok(()),
            Some(Err(error)) => {
                let error = self.ws_error(&error);
                return self.connection_lost(io, error).await;
            }
            None => {
                let error = NetError::WebSocket {
                    endpoint: mentis_pipeline::privacy::redact_url(&self.stage.url),
                    reason: "the connection ended without a close frame".to_owned(),
                };
                return self.connection_lost(io, error).await;
            }
        };
        let message = match messages::parse_server_message(text.as_str()) {
            Ok(message) => message,
            Err(error) => {
                self.connection.malformed += 1;
                if self.connection.malformed == 1 {
                    tracing::warn!(stage = %io.name, %error, "skipping a malformed Deepgram message (later ones on this connection are counted)");
                }
                return Ok(());
            }
        };
        self.apply_message(io, &message).await
    }

    async fn apply_message(&mut self, io: &mut StageIo, message: &ServerMessage) -> Result<(), StageError> {
        let mut finished = false;
        match message {
            ServerMessage::Results(result) => {
                if !self.connection.responded {
                    self.connection.responded = true;
                    self.failed_attempts = 0;
                    if let Some(first_audio_at) = self.connection.first_audio_at {
                        self.usage.first_byte(first_audio_at.elapsed());
                    }
                }
                let end = seconds_to_bytes(result.start + result.duration);
                if result.is_final {
                    self.confirm_through(end);
                }
                if let Some(finalizing) = &self.finalizing {
                    finished = result.from_finalize || (result.is_final && end + END_TOLERANCE_BYTES >= finalizing.end);
                }
            }
            ServerMessage::UtteranceEnd { .. } => finished = self.finalizing.is_some(),
            ServerMessage::Error { description, message, variant } => {
                tracing::warn!(stage = %io.name, variant, message, description, "Deepgram reported an error");
            }
            ServerMessage::Metadata { request_id, duration, .. } => {
                tracing::debug!(stage = %io.name, request_id = ?request_id, duration = ?duration, "Deepgram metadata");
            }
            ServerMessage::SpeechStarted { .. } | ServerMessage::Unknown { .. } => {}
        }

        if let Some(segment) = self.active_segment() {
            match self.turn.assembler.push(message) {
                Some(TranscriptUpdate::Final(text)) => {
                    self.turn.closed.push(text);
                    let partial = self.turn.joined(None);
                    self.emit_partial(io, segment, partial).await?;
                }
                Some(TranscriptUpdate::Partial(text)) => {
                    let partial = self.turn.joined(Some(&text));
                    self.emit_partial(io, segment, partial).await?;
                }
                None => {}
            }
        }
        if finished {
            self.complete_finalizing(io).await?;
        }
        Ok(())
    }

    async fn emit_partial(&mut self, io: &mut StageIo, segment: Segment, text: String) -> Result<(), StageError> {
        if text.is_empty() || text == self.turn.last_partial || io.inbox.interrupt_watch().should_stop(segment.turn) {
            return Ok(());
        }
        self.turn.last_partial.clone_from(&text);
        emit_transcript(io, segment, TranscriptKind::Partial, text, None).await
    }

    /// Drops the unconfirmed audio up to connection position `end`.
    fn confirm_through(&mut self, end: usize) {
        let confirmed = end.saturating_sub(self.connection.unconfirmed_start).min(self.unconfirmed.len()) & !1;
        self.unconfirmed.drain(..confirmed);
        self.connection.unconfirmed_start += confirmed;
    }

    /// Handles a connection that failed: reconnects and sends the
    /// unconfirmed audio again when a segment needs it, or drops the
    /// connection until the next segment.
    async fn connection_lost(&mut self, io: &mut StageIo, error: NetError) -> Result<(), StageError> {
        self.socket = None;
        self.usage.failure();
        let Some(segment) = self.active_segment() else {
            tracing::debug!(stage = %io.name, %error, "the idle Deepgram connection ended, and the next segment opens another");
            self.drop_connection();
            return Ok(());
        };
        tracing::warn!(stage = %io.name, turn = %segment.turn, %error, "the Deepgram connection dropped mid-segment, reconnecting");
        let retry = self.stage.endpoint.retry();
        let waited = wait_to_retry(io, &mut self.backlog, retry, &mut self.failed_attempts, error, segment.turn).await?;
        if let Raced::Cancelled = waited {
            return self.cancelled_while_waiting(io, segment.turn).await;
        }
        self.reconnect(io, segment.turn).await
    }

    /// Opens a connection (with retries), then sends the unconfirmed audio
    /// and, for a finalizing segment, `Finalize` again.
    async fn reconnect(&mut self, io: &mut StageIo, turn: TurnId) -> Result<(), StageError> {
        let dial = Dial {
            connector: &self.connector,
            endpoint: &self.stage.endpoint,
            url: &self.stage.url,
            scheme: "Token ",
            usage: &self.usage,
        };
        match connect_with_retry(io, &mut self.backlog, &dial, &mut self.failed_attempts, turn).await? {
            Raced::Cancelled => self.cancelled_while_waiting(io, turn).await,
            Raced::Done(socket) => self.install(io, socket).await,
        }
    }

    /// Takes a new socket into use and sends it what the server must still transcribe.
    async fn install(&mut self, io: &mut StageIo, socket: WebSocket) -> Result<(), StageError> {
        tracing::debug!(stage = %io.name, unconfirmed_ms = pcm16_duration(self.unconfirmed.len()).as_millis() as u64, "connected to Deepgram");
        self.socket = Some(socket);
        self.connection = ConnectionState {
            keep_alive_at: Some(Instant::now() + self.stage.config.keep_alive_interval),
            ..ConnectionState::default()
        };
        // The interim text came from audio that is sent again, but finalized text is kept.
        if let Some(TranscriptUpdate::Final(text)) =
            self.turn.assembler.push(&ServerMessage::UtteranceEnd { last_word_end: None, channel: Vec::new() })
        {
            self.turn.closed.push(text);
        }

        let resend: Vec<u8> = self.unconfirmed.iter().copied().collect();
        for chunk in resend.chunks(RESEND_CHUNK_BYTES) {
            if let Err(error) = self.send_audio(Bytes::copy_from_slice(chunk)).await {
                return Box::pin(self.connection_lost(io, error)).await;
            }
        }
        if let Some(finalizing) = self.finalizing.as_mut() {
            finalizing.end = self.connection.sent;
            finalizing.deadline = Instant::now() + self.stage.config.finalize_wait;
            if let Err(error) = self.send_control(ControlMessage::Finalize).await {
                return Box::pin(self.connection_lost(io, error)).await;
            }
        }
        Ok(())
    }

    /// Applies an interrupt that arrived while connecting by dropping the
    /// turn's work. The interrupt itself, already forwarded, waits in the backlog.
    async fn cancelled_while_waiting(&mut self, io: &mut StageIo, turn: TurnId) -> Result<(), StageError> {
        tracing::debug!(stage = %io.name, %turn, "turn interrupted while connecting");
        self.socket = None;
        if let Some(finalizing) = self.finalizing.take() {
            self.discard_turn_text();
            self.drop_connection();
            io.outbox.send(finalizing.ending).await?;
        }
        Ok(())
    }

    /// Sends `CloseStream` after all audio and reads until the server closes,
    /// so that a segment still open gets its last words.
    async fn end_of_stream(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        if self.socket.is_some() {
            if let Err(error) = self.send_control(ControlMessage::CloseStream).await {
                tracing::warn!(stage = %io.name, %error, "sending CloseStream failed, so the last words may be lost");
            }
            self.read_until_closed(io).await?;
        }
        match self.turns.close() {
            Some(segment) => self.emit_final(io, segment).await,
            None => Ok(()),
        }
    }

    /// Reads the results that follow `CloseStream` until the server closes
    /// or [`DeepgramConfig::close_wait`] passes.
    async fn read_until_closed(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        let deadline = Instant::now() + self.stage.config.close_wait;
        while let Some(socket) = self.socket.as_mut() {
            let text = match tokio::time::timeout_at(deadline, socket.next()).await {
                Err(_) => {
                    tracing::warn!(stage = %io.name, "Deepgram did not close the stream in time after CloseStream");
                    break;
                }
                Ok(None | Some(Err(_) | Ok(Message::Close(_)))) => break,
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
            };
            match messages::parse_server_message(text.as_str()) {
                Ok(message) => self.apply_message(io, &message).await?,
                Err(error) => tracing::warn!(stage = %io.name, %error, "skipping a malformed Deepgram message"),
            }
        }
        self.socket = None;
        Ok(())
    }
}

/// Converts a position in seconds to bytes of PCM, on a sample boundary.
fn seconds_to_bytes(seconds: f64) -> usize {
    if !seconds.is_finite() || seconds <= 0.0 {
        return 0;
    }
    ((seconds * BYTES_PER_SECOND).round() as usize) & !1
}
