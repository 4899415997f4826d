//! The turn handling that the network speech-to-text stages share.
//!
//! The network stages are raw [`mentis_pipeline::Stage`]s, not
//! [`crate::stt::Recognizer`]s, because they await sockets. They still follow
//! the conventions of [`crate::stt::Stt`], so that the lead can swap one for
//! the other in a graph: the same input checks, the same stale-turn rules, a
//! final transcript emitted before the `SpeechStopped` or `EndOfTurn` it
//! belongs to, and [`TurnMark::FinalTranscript`] marked when it is emitted.

use std::collections::VecDeque;
use std::future::Future;

use mentis_pipeline::frame::Payload;
use mentis_pipeline::{
    AudioData, Control, Frame, MediaTime, Samples, StageError, StageIo, Transcript, TranscriptKind, TurnId, TurnMark,
};

use super::{NonSpeechFilter, Recognition, SAMPLE_RATE, SttError};

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
    /// The highest turn whose segment was finished or discarded; its late
    /// audio does not open a new segment.
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

/// Sends a transcript of `segment` downstream; a final one also records
/// [`TurnMark::FinalTranscript`].
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

    /// Queues a frame; `forwarded` says whether it already went downstream.
    pub fn push(&mut self, frame: Frame, forwarded: bool) {
        self.frames.push_back((frame, forwarded));
    }
}

/// How [`race`] ended.
#[derive(Debug)]
pub(crate) enum Raced<T> {
    /// The work finished.
    Done(T),
    /// An interrupt or flush cancelled the work's turn; the work was dropped.
    Cancelled,
}

/// Awaits `work` for `turn` while receiving the inbox.
///
/// Priority controls (interrupt, flush, error) are forwarded downstream at
/// once, so that an interrupt reaches later stages while this one waits. An
/// interrupt of `turn` or a later one, or a flush, drops `work` at once,
/// which closes its socket, and so does a cancelled session. Every frame received, forwarded or not, goes to
/// `backlog`, so that the stage applies it in order afterwards.
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
                let Some(control) = frame.as_control().filter(|control| control.is_priority()).cloned() else {
                    backlog.push(frame, false);
                    continue;
                };
                let control_turn = frame.meta.turn;
                io.outbox.send(frame.clone()).await?;
                backlog.push(frame, true);
                if cancels(&control, control_turn, turn) {
                    return Ok(Raced::Cancelled);
                }
            }
            output = &mut work => return Ok(Raced::Done(output)),
        }
    }
}
