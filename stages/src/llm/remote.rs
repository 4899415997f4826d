//! The LLM stage for network backends: one streaming request per turn.
//!
//! [`RemoteLlm`] takes final transcripts like the on-device stage, adds the
//! user's message to the shared history, and streams the reply from a
//! provider speaking one of the [`ChatProtocol`]s: OpenAI Chat Completions
//! (also llama.cpp's server and vLLM), Anthropic Messages, or Ollama. Each
//! piece of text goes downstream as soon as it is decoded.
//!
//! - A request that fails before any of its text was sent downstream is
//!   retried with backoff (the endpoint's retry policy, honouring
//!   `Retry-After`). When the retries run out the stage fails with a
//!   retryable error, so that a fallback wrapper can switch to another
//!   backend.
//! - A stream that fails after text went downstream cannot be retried: the
//!   turn ends with what arrived, marked partial in the [`ReplyLog`], and a
//!   [`Control::Error`] frame tells the application.
//! - An interrupt for the turn drops the response, which closes the socket
//!   at once. The reply keeps the text generated so far, which the playback
//!   stage later cuts to what was heard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use mentis_pipeline::{
    BackendUsage, Control, Frame, MediaTime, Payload, PortFormat, Stage, StageError, StageFailure, StageFuture, StageIo, StageName,
    StageSpec, TextDelta, TranscriptKind, TurnId, TurnMark,
};
use parking_lot::Mutex;

use super::events::{ChatEvent, ChatStreamError};
use super::history::{ChatMessage, SharedHistory};
use crate::net::http::{Request, Response, send};
use crate::net::retry::delay_after;
use crate::net::sse::SseParser;
use crate::net::{Endpoint, NetError};

/// Settings of a reply that every protocol understands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplySettings {
    /// The maximum number of tokens in a reply.
    pub max_tokens: u32,
    /// Sampling temperature, or `None` for the provider's default.
    pub temperature: Option<f32>,
}

impl Default for ReplySettings {
    fn default() -> Self {
        ReplySettings { max_tokens: 256, temperature: None }
    }
}

/// A provider's chat protocol: how a request is built and how its streamed
/// response is decoded.
pub trait ChatProtocol: Send + Sync + 'static {
    /// Returns the backend's name for logs and usage records, such as `"openai"`.
    fn backend(&self) -> &'static str;

    /// Builds the HTTP request for a reply to `messages`.
    fn request(&self, endpoint: &Endpoint, messages: &[ChatMessage], settings: ReplySettings)
    -> Result<Request, NetError>;

    /// Returns a fresh decoder for one response body.
    fn decoder(&self) -> Box<dyn StreamDecoder>;
}

/// Turns the bytes of one response body into [`ChatEvent`]s.
pub trait StreamDecoder: Send {
    /// Decodes the next bytes, however the body was split, appending to
    /// `events`. On an error, the events decoded before it are in `events`.
    fn push(&mut self, bytes: &[u8], events: &mut Vec<ChatEvent>) -> Result<(), ChatStreamError>;

    /// Ends the body: fails with [`ChatStreamError::Incomplete`] when the
    /// stream stopped without the provider's end marker or stop reason.
    fn finish(&mut self, events: &mut Vec<ChatEvent>) -> Result<(), ChatStreamError>;
}

/// A [`StreamDecoder`] for server-sent event streams: parses events, then
/// hands each one's type and data to `on_event`.
pub struct SseDecoder<D> {
    parser: SseParser,
    state: D,
    on_event: fn(&mut D, &str, &str) -> Result<Vec<ChatEvent>, ChatStreamError>,
    finish: fn(&D) -> Result<(), ChatStreamError>,
}

impl<D> std::fmt::Debug for SseDecoder<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseDecoder").field("parser", &self.parser).finish_non_exhaustive()
    }
}

impl<D> SseDecoder<D> {
    /// Creates the decoder around a provider's event state machine.
    pub fn new(
        state: D,
        on_event: fn(&mut D, &str, &str) -> Result<Vec<ChatEvent>, ChatStreamError>,
        finish: fn(&D) -> Result<(), ChatStreamError>,
    ) -> Self {
        SseDecoder { parser: SseParser::new(), state, on_event, finish }
    }
}

fn malformed(detail: impl std::fmt::Display) -> ChatStreamError {
    ChatStreamError::Malformed { detail: detail.to_string(), excerpt: String::new() }
}

impl<D: Send> StreamDecoder for SseDecoder<D> {
    fn push(&mut self, bytes: &[u8], events: &mut Vec<ChatEvent>) -> Result<(), ChatStreamError> {
        let mut parsed = Vec::new();
        let parsed_ok = self.parser.push(bytes, &mut parsed);
        // Events complete before a parse error still count.
        for event in parsed {
            events.extend((self.on_event)(&mut self.state, &event.event, &event.data)?);
        }
        parsed_ok.map_err(malformed)
    }

    fn finish(&mut self, _events: &mut Vec<ChatEvent>) -> Result<(), ChatStreamError> {
        // A cut last event belongs to an incomplete stream, which the state machine reports.
        let _ = self.parser.finish();
        (self.finish)(&self.state)
    }
}

/// The outcome of one turn's reply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ReplyOutcome {
    /// The provider finished the reply.
    Complete {
        /// The provider's stop reason, when it sent one.
        reason: Option<String>,
    },
    /// An interrupt stopped the reply.
    Interrupted,
    /// The stream failed after part of the reply was sent downstream.
    Partial {
        /// The failure.
        error: String,
    },
}

/// One reply as the [`ReplyLog`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplyRecord {
    /// The turn.
    pub turn: TurnId,
    /// The backend that produced it.
    pub backend: &'static str,
    /// Its outcome.
    pub outcome: ReplyOutcome,
    /// Attempts made, 1 when the first succeeded.
    pub attempts: u32,
    /// The text sent downstream.
    pub text: String,
}

/// The replies of a [`RemoteLlm`], shared with the application. Cloning shares the log.
#[derive(Debug, Clone, Default)]
pub struct ReplyLog(Arc<Mutex<Vec<ReplyRecord>>>);

impl ReplyLog {
    /// Returns every reply so far.
    pub fn records(&self) -> Vec<ReplyRecord> {
        self.0.lock().clone()
    }

    /// Returns the reply of `turn`, if there was one.
    pub fn for_turn(&self, turn: TurnId) -> Option<ReplyRecord> {
        self.0.lock().iter().rev().find(|record| record.turn == turn).cloned()
    }

    fn push(&self, record: ReplyRecord) {
        self.0.lock().push(record);
    }
}

/// The LLM stage for a network backend (see the [module docs](self)).
pub struct RemoteLlm<P> {
    name: StageName,
    protocol: P,
    endpoint: Endpoint,
    history: SharedHistory,
    settings: ReplySettings,
    log: ReplyLog,
    before_reply: Option<BeforeReply>,
}

/// Called with each new turn before its user message enters the history.
pub type BeforeReply = Box<dyn FnMut(TurnId) + Send>;

impl<P: ChatProtocol> std::fmt::Debug for RemoteLlm<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLlm")
            .field("name", &self.name)
            .field("backend", &self.protocol.backend())
            .field("endpoint", &self.endpoint)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The failure of an attempt before any of its text was sent downstream.
enum Failure {
    Net(NetError),
    Stream(ChatStreamError),
}

impl Failure {
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Net(error) => error.is_retryable(),
            Failure::Stream(error) => error.is_retryable(),
        }
    }

    fn into_stage_error(self) -> StageError {
        match self {
            Failure::Net(error) => error.into(),
            Failure::Stream(error) if error.is_retryable() => StageError::retryable(error.to_string()).with_source(error),
            Failure::Stream(error) => StageError::fatal(error.to_string()).with_source(error),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Net(error) => error.fmt(f),
            Failure::Stream(error) => error.fmt(f),
        }
    }
}

/// The state of the reply being streamed.
struct Reply {
    turn: TurnId,
    timestamp: MediaTime,
    text: String,
    sent_any: bool,
    reason: Option<String>,
    /// Set when an interrupt stopped the reply.
    interrupted: bool,
    /// The interrupt frame to forward, when the stage took it from the inbox.
    interrupt: Option<Frame>,
    partial: Option<String>,
}

impl<P: ChatProtocol> RemoteLlm<P> {
    /// Creates the stage.
    pub fn new(name: StageName, protocol: P, endpoint: Endpoint, history: SharedHistory, settings: ReplySettings) -> Self {
        RemoteLlm { name, protocol, endpoint, history, settings, log: ReplyLog::default(), before_reply: None }
    }

    /// Calls `hook` with each new turn before its user message enters the
    /// history, on the stage's own task: the place to cut interrupted
    /// replies in the history to what the user heard.
    #[must_use]
    pub fn with_before_reply(mut self, hook: impl FnMut(TurnId) + Send + 'static) -> Self {
        self.before_reply = Some(Box::new(hook));
        self
    }

    /// Returns the log of replies, which stays valid while the stage runs.
    pub fn reply_log(&self) -> ReplyLog {
        self.log.clone()
    }

    /// Returns the shared conversation history.
    pub fn history(&self) -> &SharedHistory {
        &self.history
    }

    /// Handles frames until end of stream.
    async fn serve(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        let mut queued = VecDeque::new();
        loop {
            let frame = match queued.pop_front() {
                Some(frame) => frame,
                None => match io.inbox.recv().await {
                    Some(frame) => frame,
                    None => return Ok(()),
                },
            };
            let (turn, timestamp) = (frame.meta.turn, frame.meta.timestamp);
            let text = match &frame.payload {
                Payload::Transcript(transcript) if transcript.kind == TranscriptKind::Final => transcript.text.trim(),
                Payload::Control(_) => {
                    io.outbox.send(frame).await?;
                    continue;
                }
                _ => continue,
            };
            if text.is_empty() {
                tracing::debug!(stage = %self.name, turn = turn.0, "ignoring an empty final transcript");
                continue;
            }

            if let Some(hook) = self.before_reply.as_mut() {
                hook(turn);
            }
            self.history.lock().push_user(turn, text);
            if io.inbox.interrupt_watch().should_stop(turn) {
                // The user already spoke again: keep their message, but ask for no reply.
                let _ = self.history.lock().set_reply(turn, "");
                continue;
            }
            self.reply(io, turn, timestamp, &mut queued).await?;
        }
    }

    /// Streams the reply of `turn`, retrying failures that sent nothing.
    async fn reply(
        &mut self,
        io: &mut StageIo,
        turn: TurnId,
        timestamp: MediaTime,
        queued: &mut VecDeque<Frame>,
    ) -> Result<(), StageError> {
        let messages = self.history.lock().messages();
        let usage = io.usage.backend(&io.name, self.protocol.backend());
        let connector = self.endpoint.connector(io);
        let mut reply = Reply {
            turn,
            timestamp,
            text: String::new(),
            sent_any: false,
            reason: None,
            interrupted: false,
            interrupt: None,
            partial: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            usage.request();
            let request = self.protocol.request(&self.endpoint, &messages, self.settings)?;
            let started = Instant::now();

            // Waiting for the headers also watches the inbox, so an interrupt drops the request.
            let response = tokio::select! {
                result = send(&connector, request) => result,
                interrupt = watch_inbox(io, turn, queued) => {
                    reply.interrupted = true;
                    reply.interrupt = interrupt;
                    break;
                }
            };
            let failure = match response {
                Ok(response) => {
                    usage.first_byte(started.elapsed());
                    match self.stream(io, response, &mut reply, queued, &usage).await? {
                        None => break,
                        Some(failure) => failure,
                    }
                }
                Err(error) => Failure::Net(error),
            };

            usage.failure();
            if !failure.is_retryable() || attempt > self.endpoint.retry().max_retries {
                tracing::warn!(stage = %self.name, turn = turn.0, backend = self.protocol.backend(), attempt, error = %failure, "the reply failed");
                return Err(failure.into_stage_error());
            }
            let delay = match &failure {
                Failure::Net(error) => delay_after(self.endpoint.retry(), attempt, error),
                Failure::Stream(_) => self.endpoint.retry().backoff(attempt, fastrand::f64()),
            };
            tracing::info!(stage = %self.name, turn = turn.0, attempt, delay_ms = delay.as_millis() as u64, error = %failure, "retrying the reply");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                interrupt = watch_inbox(io, turn, queued) => {
                    reply.interrupted = true;
                    reply.interrupt = interrupt;
                    break;
                }
            }
        }
        self.end_turn(io, reply, attempt).await
    }

    /// Reads one response to its end, sending each piece of text downstream.
    /// Returns the failure when the attempt failed before any text was sent.
    async fn stream(
        &mut self,
        io: &mut StageIo,
        mut response: Response,
        reply: &mut Reply,
        queued: &mut VecDeque<Frame>,
        usage: &BackendUsage,
    ) -> Result<Option<Failure>, StageError> {
        let mut decoder = self.protocol.decoder();
        // Token counts the provider reported for this request: (prompt, generated).
        let mut reported: (Option<u64>, Option<u64>) = (None, None);
        loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                interrupt = watch_inbox(io, reply.turn, queued) => {
                    reply.interrupted = true;
                    // Dropping the response closes the socket. The reply keeps what arrived.
                    drop(response);
                    reply.interrupt = interrupt;
                    return Ok(None);
                }
            };
            let body_ended = matches!(chunk, Ok(None));
            let mut events = Vec::new();
            let decoded = match chunk {
                Ok(Some(bytes)) => decoder.push(&bytes, &mut events),
                Ok(None) => decoder.finish(&mut events),
                Err(error) => {
                    usage.tokens(reported.0.unwrap_or(0), reported.1.unwrap_or(0));
                    return self.stream_failed(io, reply, Failure::Net(error)).await;
                }
            };
            let mut ended = body_ended;
            for event in events {
                match event {
                    ChatEvent::Text(text) => {
                        if !reply.sent_any {
                            io.turns.mark(reply.turn, TurnMark::FirstToken);
                        }
                        reply.sent_any = true;
                        reply.text.push_str(&text);
                        let meta = io.outbox.next_meta(reply.turn, reply.timestamp);
                        io.outbox.send(Frame::new(meta, Payload::Text(TextDelta { text, last: false }))).await?;
                    }
                    ChatEvent::Usage { input_tokens, output_tokens } => {
                        // A later report replaces an earlier one field by field.
                        reported = (input_tokens.or(reported.0), output_tokens.or(reported.1));
                    }
                    ChatEvent::Finished { reason } => reply.reason = Some(reason),
                    ChatEvent::End => ended = true,
                }
            }
            if let Err(error) = decoded {
                usage.tokens(reported.0.unwrap_or(0), reported.1.unwrap_or(0));
                return self.stream_failed(io, reply, Failure::Stream(error)).await;
            }
            if ended {
                usage.tokens(reported.0.unwrap_or(0), reported.1.unwrap_or(0));
                return Ok(None);
            }
        }
    }

    /// Decides what a failed stream means: a retry when nothing was sent,
    /// otherwise a partial reply reported downstream.
    async fn stream_failed(
        &mut self,
        io: &mut StageIo,
        reply: &mut Reply,
        failure: Failure,
    ) -> Result<Option<Failure>, StageError> {
        if !reply.sent_any {
            return Ok(Some(failure));
        }
        tracing::warn!(stage = %self.name, turn = reply.turn.0, backend = self.protocol.backend(), error = %failure, "the reply stream failed after text was sent; the turn ends partial");
        let message = format!("the reply was cut short: {failure}");
        let meta = io.outbox.next_meta(reply.turn, reply.timestamp);
        let error = Control::Error(StageFailure { stage: self.name.clone(), message });
        io.outbox.send(Frame::control(meta, error)).await?;
        reply.partial = Some(failure.to_string());
        Ok(None)
    }

    /// Forwards an interrupt that stopped the reply, sends the last delta,
    /// and records the reply in the history and the log.
    async fn end_turn(&mut self, io: &mut StageIo, reply: Reply, attempts: u32) -> Result<(), StageError> {
        let interrupted = reply.interrupted;
        if let Some(interrupt) = reply.interrupt {
            io.outbox.send(interrupt).await?;
        }
        // Downstream stages close the turn on the last delta, sent after an interrupt too.
        let meta = io.outbox.next_meta(reply.turn, reply.timestamp);
        io.outbox.send(Frame::new(meta, Payload::Text(TextDelta { text: String::new(), last: true }))).await?;

        if let Err(error) = self.history.lock().set_reply(reply.turn, reply.text.clone()) {
            tracing::debug!(stage = %self.name, turn = reply.turn.0, %error, "reply not recorded");
        }
        let outcome = match (reply.partial, interrupted) {
            (_, true) => ReplyOutcome::Interrupted,
            (Some(error), false) => ReplyOutcome::Partial { error },
            (None, false) => ReplyOutcome::Complete { reason: reply.reason },
        };
        tracing::info!(stage = %self.name, turn = reply.turn.0, backend = self.protocol.backend(), chars = reply.text.len(), ?outcome, "LLM reply finished");
        self.log.push(ReplyRecord { turn: reply.turn, backend: self.protocol.backend(), outcome, attempts, text: reply.text });
        Ok(())
    }
}

/// Frames a reply in flight keeps for later: transcripts and events that
/// arrive while it streams. Past this the stage stops reading its inbox, so
/// the bounded edge in front of it applies backpressure again.
pub const MAX_QUEUED_FRAMES: usize = 256;

/// How often a stage with a full queue checks whether its turn was interrupted.
const INTERRUPT_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Reads the inbox while a request runs, and returns once the reply of
/// `turn` is interrupted: with the interrupt frame when it was read here,
/// or `None` when the queue was full and the interrupt is still in the
/// inbox. Every other frame is queued for after the reply. At end of
/// stream it never returns: the reply in flight finishes first. Only
/// receives, so dropping it mid-wait loses nothing.
async fn watch_inbox(io: &mut StageIo, turn: TurnId, queued: &mut VecDeque<Frame>) -> Option<Frame> {
    loop {
        if queued.len() >= MAX_QUEUED_FRAMES {
            let watch = io.inbox.interrupt_watch();
            while !watch.should_stop(turn) {
                tokio::time::sleep(INTERRUPT_POLL).await;
            }
            return None;
        }
        let Some(frame) = io.inbox.recv().await else {
            return std::future::pending().await;
        };
        if matches!(frame.payload, Payload::Control(Control::Interrupt)) && frame.meta.turn >= turn {
            return Some(frame);
        }
        queued.push_back(frame);
    }
}

impl<P: ChatProtocol> Stage for RemoteLlm<P> {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Transcript, PortFormat::Text).with_egress(self.endpoint.egress())
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(self.serve(io))
    }
}
