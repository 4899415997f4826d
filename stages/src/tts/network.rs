//! The reply handling that the network speech stages share: turn
//! bookkeeping, the decoded samples not yet emitted, and their emission in
//! frames with timestamps counted from the start of each turn's reply.
//!
//! Both stages follow the output conventions of [`crate::tts::Tts`]: mono
//! f32 at the backend's rate, frames of a fixed length (the last of a
//! response possibly shorter), and [`TurnMark::FirstTtsAudio`] marked at the
//! first frame of a turn.

use std::collections::VecDeque;
use std::time::Duration;

use mentis_pipeline::{
    AudioData, AudioFormat, Control, Frame, InterruptWatch, MediaTime, StageError, StageFailure, StageIo, TurnId,
    TurnMark,
};

/// Interval at which a stage whose queue is full checks whether its turn was interrupted.
pub(crate) const INTERRUPT_POLL: Duration = Duration::from_millis(10);

/// The decision whether work on the current turn goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// The turn was interrupted or the session cancelled.
    Stop,
}

/// The reply in progress.
#[derive(Debug, Clone, Copy)]
struct Reply {
    turn: TurnId,
    /// Samples emitted so far in this turn: the next frame's timestamp.
    position: u64,
    /// Whether [`TurnMark::FirstTtsAudio`] has been recorded.
    marked: bool,
}

/// The replies of one `run`: which turn is being spoken, which turns have
/// ended, and the decoded samples of the current response.
#[derive(Debug)]
pub(crate) struct Replies {
    /// The stage's name for the kind of backend, used in error messages.
    label: &'static str,
    format: AudioFormat,
    frame_samples: usize,
    reply: Option<Reply>,
    /// The highest turn that ended (last text or interrupt).
    ended_through: TurnId,
    /// Decoded samples not yet emitted: less than one frame between reads.
    pub samples: Vec<f32>,
}

impl Replies {
    /// Creates the state for a stage that emits mono `format` audio in
    /// frames of `frame_samples`. `label` names the stage in error messages.
    pub fn new(label: &'static str, format: AudioFormat, frame_samples: usize) -> Self {
        Replies {
            label,
            format,
            frame_samples,
            reply: None,
            ended_through: TurnId::NONE,
            samples: Vec::with_capacity(frame_samples * 2),
        }
    }

    /// Returns whether text of `turn` comes too late: the turn ended or was interrupted.
    pub fn has_ended(&self, turn: TurnId) -> bool {
        turn != TurnId::NONE && turn <= self.ended_through
    }

    /// Starts the reply to `turn`, with media time from 0, unless it is the current one.
    pub fn start(&mut self, turn: TurnId) {
        if self.reply.is_none_or(|reply| reply.turn != turn) {
            self.reply = Some(Reply { turn, position: 0, marked: false });
        }
    }

    /// Returns whether the reply in progress is the reply to `turn`.
    pub fn is_current(&self, turn: TurnId) -> bool {
        self.reply.is_some_and(|reply| reply.turn == turn)
    }

    /// Ends the reply to `turn` after its last text.
    pub fn end(&mut self, turn: TurnId) {
        self.ended_through = self.ended_through.max(turn);
        if self.is_current(turn) {
            self.reply = None;
        }
    }

    /// Ends every turn up to `turn` and stops the reply to any of them.
    pub fn interrupt(&mut self, turn: TurnId) {
        self.ended_through = self.ended_through.max(turn);
        if self.reply.is_some_and(|reply| reply.turn <= turn) {
            self.reply = None;
        }
    }

    /// Emits the decoded samples in frames, and with `all` the shorter last
    /// frame too. Sets `emitted` once a frame has been sent. Returns
    /// [`Flow::Stop`] when the reply to `turn` was interrupted, with the
    /// samples from there on kept.
    pub async fn emit(
        &mut self,
        io: &mut StageIo,
        watch: &InterruptWatch,
        turn: TurnId,
        all: bool,
        emitted: &mut bool,
    ) -> Result<Flow, StageError> {
        let frame_samples = self.frame_samples;
        let ready = if all { self.samples.len() } else { self.samples.len() / frame_samples * frame_samples };
        let sample_rate = self.format.sample_rate;
        let mut sent = 0;
        let mut flow = Flow::Continue;
        while sent < ready {
            let Some(reply) = self.reply.as_mut().filter(|reply| reply.turn == turn) else {
                flow = Flow::Stop;
                break;
            };
            if watch.should_stop(turn) {
                flow = Flow::Stop;
                break;
            }
            let end = (sent + frame_samples).min(ready);
            let audio = AudioData::from_f32(sample_rate, 1, &self.samples[sent..end]).map_err(|error| {
                StageError::fatal(format!("the {} stage built an invalid audio frame", self.label)).with_source(error)
            })?;
            if !reply.marked {
                io.turns.mark(turn, TurnMark::FirstTtsAudio);
                reply.marked = true;
            }
            let meta = io.outbox.next_meta(turn, MediaTime::from_samples(reply.position, sample_rate));
            reply.position += (end - sent) as u64;
            io.outbox.send(Frame::audio(meta, audio)).await?;
            *emitted = true;
            sent = end;
        }
        self.samples.drain(..sent);
        Ok(flow)
    }

    /// Sends `message` downstream as [`Control::Error`] of `turn`, stamped
    /// with the reply's position: the error of a response that failed after
    /// its audio started, which cannot be retried without repeating speech.
    pub async fn report_error(&self, io: &mut StageIo, turn: TurnId, message: String) -> Result<(), StageError> {
        let position = self.reply.filter(|reply| reply.turn == turn).map_or(0, |reply| reply.position);
        let meta = io.outbox.next_meta(turn, MediaTime::from_samples(position, self.format.sample_rate));
        let failure = StageFailure { stage: io.name.clone(), message };
        io.outbox.send(Frame::control(meta, Control::Error(failure))).await
    }
}

/// Returns whether an interrupt through `through` drops the queued `frame`:
/// text (or other data) of an ended turn. Control frames and frames of no
/// turn stay.
pub(crate) fn is_interrupted(frame: &Frame, through: TurnId) -> bool {
    frame.as_control().is_none() && frame.meta.turn != TurnId::NONE && frame.meta.turn <= through
}

/// Returns the next frame to handle: `queue` first, then the inbox. Sets
/// `inbox_ended` when the inbox ends.
pub(crate) async fn next_frame(io: &mut StageIo, queue: &mut VecDeque<Frame>, inbox_ended: &mut bool) -> Option<Frame> {
    if let Some(frame) = queue.pop_front() {
        return Some(frame);
    }
    if *inbox_ended {
        return None;
    }
    let frame = io.inbox.recv().await;
    *inbox_ended = frame.is_none();
    frame
}
