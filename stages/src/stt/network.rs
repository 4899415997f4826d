//! The turn handling that the network speech-to-text stages share.
//!
//! The network stages are raw [`mentis_pipeline::Stage`]s, not
//! [`crate::stt::Recognizer`]s, because they await sockets. They still follow
//! the conventions of [`crate::stt::Stt`], so that a graph can swap one for
//! the other. They apply the same input checks and the same stale-turn rules.
//! They emit a final transcript before the `SpeechStopped` or `EndOfTurn` it
//! belongs to, and mark [`TurnMark::FinalTranscript`] when they emit it.

use std::collections::VecDeque;
use std::future::Future;

use mentis_pipeline::frame::Payload;
use mentis_pipeline::{
    AudioData, Control, Frame, MediaTime, Samples, StageError, StageIo, Transcript, TranscriptKind, TurnId, TurnMark,
};

#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use futures::StreamExt;
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use mentis_pipeline::egress::BackendUsage;
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use mentis_pipeline::wrap::RetryPolicy;
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use tokio::time::Instant;
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use tokio_tungstenite::tungstenite::Message;
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use url::Url;

use super::{NonSpeechFilter, Recognition, SAMPLE_RATE, SttError};
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use crate::net::retry::delay_after;
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use crate::net::ws::{WebSocket, connect};
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
use crate::net::{Connector, Endpoint, NetError};

/// The segment whose audio a network stage is collecting or streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The segment's turn.
    pub turn: TurnId,
    /// Media time of the segment start.
    pub start: MediaTime,
    /// Media time right after the last sample received.
    pub end: MediaTime,
}

/// The stale-turn rules of [`crate::stt::Stt`]: which turn is open, and
/// which turns are finished.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    open: Option<Segment>,
    /// The highest turn whose segment was finished or discarded. Late audio
    /// of that turn or an earlier one does not open a new segment.
    closed_through: TurnId,
}

impl Turns {
    /// Returns the open segment.
    pub fn open(&self) -> Option<Segment> {
        self.open
    }

    /// Returns whether `turn` can no longer open a segment: it is no turn,
    /// or it is not later than a finished turn or the open one.
    pub fn is_stale(&self, turn: TurnId) -> bool {
        turn == TurnId::NONE || turn <= self.closed_through || self.open.is_some_and(|open| turn < open.turn)
    }

    /// Opens a segment for `turn` unless it is already open. Returns the
    /// segment of another turn that it replaces, which the caller discards.
    pub fn open_segment(&mut self, turn: TurnId, start: MediaTime) -> Option<Segment> {
        if self.open.is_some_and(|open| open.turn == turn) {
            return None;
        }
        let replaced = self.close();
        self.open = Some(Segment { turn, start, end: start });
        replaced
    }

    /// Moves the end of the open segment to `end`.
    pub fn extend(&mut self, end: MediaTime) {
        if let Some(open) = self.open.as_mut() {
            open.end = open.end.max(end);
        }
    }

    /// Closes the open segment, finished or discarded, and returns it.
    pub fn close(&mut self) -> Option<Segment> {
        let closed = self.open.take()?;
        self.closed_through = self.closed_through.max(closed.turn);
        Some(closed)
    }
}

/// An audio frame taken into the open segment by [`accept_audio`].
#[derive(Debug)]
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) struct Accepted {
    /// Whether the frame opened a segment that replaces another turn's,
    /// whose text and audio the caller discards.
    pub replaced: bool,
    /// The frame's samples as 16-bit little-endian PCM, or `None` for a
    /// frame without samples.
    pub pcm: Option<Vec<u8>>,
}

/// Takes an audio frame into the open segment: checks its format, opens a
/// segment for its turn when needed and extends the segment to the frame's
/// end. Returns `None` for audio of a stale turn, which is dropped.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) fn accept_audio(turns: &mut Turns, frame: &Frame) -> Result<Option<Accepted>, SttError> {
    let audio = checked_audio(frame)?;
    let turn = frame.meta.turn;
    if turns.is_stale(turn) {
        return Ok(None);
    }
    let replaced = turns.open_segment(turn, frame.meta.timestamp).is_some();
    if audio.frames() == 0 {
        return Ok(Some(Accepted { replaced, pcm: None }));
    }
    let mut pcm = Vec::with_capacity(audio.samples().len() * 2);
    append_pcm16(audio, &mut pcm);
    turns.extend(frame.meta.timestamp.add(audio.duration()));
    Ok(Some(Accepted { replaced, pcm: Some(pcm) }))
}

/// Checks that `frame` is mono [`SAMPLE_RATE`] PCM and returns its audio.
pub(crate) fn checked_audio(frame: &Frame) -> Result<&AudioData, SttError> {
    let Some(audio) = frame.as_audio() else {
        return Err(SttError::NotAudio { kind: frame.kind_name() });
    };
    let format = audio.format();
    if format.sample_rate != SAMPLE_RATE || format.channels != 1 {
        return Err(SttError::FormatMismatch { actual: format });
    }
    Ok(audio)
}

/// Appends the samples of `audio` as 16-bit little-endian PCM, the encoding
/// every network backend here receives. Float samples are clamped.
pub(crate) fn append_pcm16(audio: &AudioData, out: &mut Vec<u8>) {
    out.reserve(audio.samples().len() * 2);
    match audio.samples() {
        Samples::I16(samples) => {
            for sample in samples.iter() {
                out.extend_from_slice(&sample.to_le_bytes());
            }
        }
        Samples::F32(samples) => {
            for &sample in samples.iter() {
                out.extend_from_slice(&mentis_pipeline::frame::f32_to_i16(sample).to_le_bytes());
            }
        }
    }
}

/// Appends `pcm` to the audio kept for sending again after a reconnect and
/// drops the oldest bytes beyond `max` of audio. Returns how many bytes were
/// dropped (always a whole number of samples).
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) fn keep_unconfirmed(unconfirmed: &mut VecDeque<u8>, pcm: &[u8], max: std::time::Duration) -> usize {
    unconfirmed.extend(pcm);
    let limit = (max.as_secs_f64() * f64::from(SAMPLE_RATE) * 2.0) as usize & !1;
    let excess = unconfirmed.len().saturating_sub(limit);
    unconfirmed.drain(..excess);
    excess
}

/// Returns the playing time of `bytes` of mono 16-bit PCM at [`SAMPLE_RATE`].
pub(crate) fn pcm16_duration(bytes: usize) -> std::time::Duration {
    let nanos = (bytes / 2) as u128 * 1_000_000_000 / u128::from(SAMPLE_RATE);
    std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Returns the text to emit for a backend's result, or `None` when the
/// filter drops it as non-speech (empty, or only tags such as `[BLANK_AUDIO]`).
pub(crate) fn speech_text(filter: &NonSpeechFilter, text: &str, confidence: Option<f32>) -> Option<String> {
    let recognition = Recognition { text: text.to_owned(), confidence, no_speech_probability: None };
    filter.check(&recognition).ok()
}

/// Sends a transcript of `segment` downstream. A final transcript also
/// records [`TurnMark::FinalTranscript`].
pub(crate) async fn emit_transcript(
    io: &mut StageIo,
    segment: Segment,
    kind: TranscriptKind,
    text: String,
    confidence: Option<f32>,
) -> Result<(), StageError> {
    let transcript = Transcript { kind, text, start: segment.start, end: segment.end, confidence };
    let meta = io.outbox.next_meta(segment.turn, segment.end);
    io.outbox.send(Frame::new(meta, Payload::Transcript(transcript))).await?;
    if kind == TranscriptKind::Final {
        io.turns.mark(segment.turn, TurnMark::FinalTranscript);
    }
    Ok(())
}

/// Returns whether `control` for `control_turn` cancels work on `turn`: an
/// interrupt of that turn or a later one, or a flush.
pub(crate) fn cancels(control: &Control, control_turn: TurnId, turn: TurnId) -> bool {
    match control {
        Control::Interrupt => turn != TurnId::NONE && turn <= control_turn,
        Control::Flush => true,
        _ => false,
    }
}

/// Frames received while a stage awaited the network, to be handled in
/// order afterwards.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    /// The frames, each with whether it was already forwarded downstream.
    frames: VecDeque<(Frame, bool)>,
    /// Whether the inbox ended while the stage waited.
    pub ended: bool,
}

impl Backlog {
    /// Returns the next frame to handle and whether it was already forwarded.
    pub fn pop(&mut self) -> Option<(Frame, bool)> {
        self.frames.pop_front()
    }

    /// Queues a frame. `forwarded` is true when the frame already went downstream.
    pub fn push(&mut self, frame: Frame, forwarded: bool) {
        self.frames.push_back((frame, forwarded));
    }

    /// Queues a frame that arrived while the stage waited. A priority
    /// control (interrupt, flush, error) is forwarded downstream first and
    /// returned with its turn, so that the caller can apply it to the work
    /// in flight.
    pub async fn receive(&mut self, io: &mut StageIo, frame: Frame) -> Result<Option<(Control, TurnId)>, StageError> {
        let Some(control) = frame.as_control().filter(|control| control.is_priority()).cloned() else {
            self.push(frame, false);
            return Ok(None);
        };
        let control_turn = frame.meta.turn;
        io.outbox.send(frame.clone()).await?;
        self.push(frame, true);
        Ok(Some((control, control_turn)))
    }
}

/// The outcome of [`race`].
#[derive(Debug)]
pub(crate) enum Raced<T> {
    /// The work finished.
    Done(T),
    /// An interrupt or flush cancelled the work's turn, so the work was dropped.
    Cancelled,
}

/// Awaits `work` for `turn` while receiving the inbox.
///
/// Priority controls (interrupt, flush, error) are forwarded downstream at
/// once, so that an interrupt reaches later stages while this one waits. An
/// interrupt of `turn` or a later one, or a flush, drops `work` at once,
/// which closes its socket, and so does a cancelled session. Every frame
/// received, forwarded or not, goes to `backlog`, so that the stage applies
/// it in order afterwards.
pub(crate) async fn race<T>(
    io: &mut StageIo,
    backlog: &mut Backlog,
    turn: TurnId,
    work: impl Future<Output = T>,
) -> Result<Raced<T>, StageError> {
    let mut work = std::pin::pin!(work);
    loop {
        if backlog.ended {
            return Ok(Raced::Done(work.await));
        }
        tokio::select! {
            biased;
            frame = io.inbox.recv() => {
                let Some(frame) = frame else {
                    backlog.ended = true;
                    if io.is_cancelled() {
                        return Ok(Raced::Cancelled);
                    }
                    continue;
                };
                if let Some((control, control_turn)) = backlog.receive(io, frame).await?
                    && cancels(&control, control_turn, turn)
                {
                    return Ok(Raced::Cancelled);
                }
            }
            output = &mut work => return Ok(Raced::Done(output)),
        }
    }
}

/// The text of the segment being transcribed, over any backend's transcript
/// assembler `A`.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
#[derive(Debug, Default)]
pub(crate) struct SegmentText<A> {
    pub assembler: A,
    /// Utterances the assembler closed within the segment.
    pub closed: Vec<String>,
    /// The last partial emitted, to emit only changes.
    pub last_partial: String,
}

#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
impl<A> SegmentText<A> {
    /// Returns the segment's text: the closed utterances and `open`, joined by spaces.
    pub fn joined(&self, open: Option<&str>) -> String {
        let mut pieces: Vec<&str> = self.closed.iter().map(String::as_str).collect();
        pieces.extend(open.filter(|text| !text.is_empty()));
        pieces.join(" ")
    }
}

/// A message (or the end) of a WebSocket, as [`next_message`] returns it.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) type WsMessage = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// Returns the next message of `socket`, or waits forever without one.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) async fn next_message(socket: &mut Option<WebSocket>) -> WsMessage {
    match socket {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without it.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Returns the error of a failed WebSocket read or write on `url`, with
/// the URL's credentials removed.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) fn ws_error(url: &Url, error: &tokio_tungstenite::tungstenite::Error) -> NetError {
    NetError::WebSocket { endpoint: mentis_pipeline::privacy::redact_url(url), reason: error.to_string() }
}

/// Waits out the retry delay after the connection of `turn`'s segment
/// failed with `error`, counting the failure in `failed_attempts`. Returns
/// `error` when the retries are exhausted, and [`Raced::Cancelled`] when an
/// interrupt or flush cancelled the turn meanwhile.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) async fn wait_to_retry(
    io: &mut StageIo,
    backlog: &mut Backlog,
    retry: &RetryPolicy,
    failed_attempts: &mut u32,
    error: NetError,
    turn: TurnId,
) -> Result<Raced<()>, StageError> {
    *failed_attempts += 1;
    if *failed_attempts > retry.max_retries {
        return Err(error.into());
    }
    let delay = delay_after(retry, *failed_attempts, &error);
    race(io, backlog, turn, tokio::time::sleep(delay)).await
}

/// A WebSocket speech-to-text server and the settings to connect to it.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) struct Dial<'a> {
    pub connector: &'a Connector,
    pub endpoint: &'a Endpoint,
    /// The URL to connect to, with its query string.
    pub url: &'a Url,
    /// The prefix of the API key in the `Authorization` header, such as `"Bearer "`.
    pub scheme: &'static str,
    pub usage: &'a BackendUsage,
}

/// Opens a connection for `turn`'s segment while receiving the inbox, and
/// retries with the endpoint's retry policy. `failed_attempts` counts the
/// failures since a connection last received a result. Returns the error
/// that is not retryable or that exhausted the retries, and
/// [`Raced::Cancelled`] when an interrupt or flush cancelled the turn
/// meanwhile.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
pub(crate) async fn connect_with_retry(
    io: &mut StageIo,
    backlog: &mut Backlog,
    dial: &Dial<'_>,
    failed_attempts: &mut u32,
    turn: TurnId,
) -> Result<Raced<WebSocket>, StageError> {
    let retry = dial.endpoint.retry();
    loop {
        dial.usage.request();
        let secret = dial.endpoint.api_key().map(|key| (http::header::AUTHORIZATION, dial.scheme, key));
        let opening = connect(dial.connector, dial.url, &[], secret);
        let error = match race(io, backlog, turn, opening).await? {
            Raced::Cancelled => return Ok(Raced::Cancelled),
            Raced::Done(Ok(socket)) => return Ok(Raced::Done(socket)),
            Raced::Done(Err(error)) => error,
        };
        dial.usage.failure();
        *failed_attempts += 1;
        if !error.is_retryable() || *failed_attempts > retry.max_retries {
            tracing::warn!(stage = %io.name, %error, "connecting to the speech-to-text server failed");
            return Err(error.into());
        }
        let delay = delay_after(retry, *failed_attempts, &error);
        tracing::info!(stage = %io.name, %error, attempt = *failed_attempts, delay_ms = delay.as_millis() as u64, "retrying the speech-to-text connection");
        if let Raced::Cancelled = race(io, backlog, turn, tokio::time::sleep(delay)).await? {
            return Ok(Raced::Cancelled);
        }
    }
}

/// A change in a segment's transcript, reported by a backend's transcript
/// assembler.
#[cfg(any(feature = "deepgram", feature = "ws-stt"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscriptUpdate {
    /// The utterance in progress so far (for Deepgram, its finalized text
    /// followed by the current interim text). A later update replaces it.
    Partial(String),
    /// The complete text of an utterance, returned once.
    Final(String),
}
