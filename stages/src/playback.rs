//! Reply playback on the session timeline.
//!
//! [`Playback`] takes the place of a speaker: it receives the synthesized
//! reply audio and releases it downstream (to a WAV writer in timeline mode,
//! or a device) as a speaker would play it. Each reply starts on the media
//! timeline at the end of the user's turn plus the time the pipeline took to
//! produce its first audio, and continues without gaps. With
//! [`Pacing::RealTime`] frames leave when their playing time comes, so an
//! interrupt cuts the reply where the user started speaking; with
//! [`Pacing::AsFastAsPossible`] they leave at once and an interrupt only
//! discards what has not arrived yet.
//!
//! The [`PlaybackLog`] records, per turn, how much of the reply was played,
//! so that the conversation history can keep only the part the user heard.
//! [`EndOfSpeechMarker`] records the [`TurnMark::EndOfSpeech`] mark that the
//! playback latency is measured from.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use mentis_pipeline::{
    AudioFormat, Control, Emitter, Frame, FrameMeta, MediaTime, PortFormat, Processor, Stage, StageError,
    StageFuture, StageIo, StageName, StageSpec, TurnId, TurnMark,
};
use parking_lot::Mutex;
use tokio::time::Instant;

pub use crate::capture::Pacing;

/// The playback record of one turn's reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayedReply {
    /// The reply's start on the session's media timeline.
    pub start: MediaTime,
    /// Reply audio received from synthesis.
    pub synthesized: Duration,
    /// Reply audio released to the output before the reply ended or was interrupted.
    pub played: Duration,
    /// Whether an interrupt cut the reply.
    pub interrupted: bool,
    /// When the interrupt took effect: no frame of the reply left the stage
    /// after this moment, and the last one ends at most one frame later.
    pub stopped_at: Option<std::time::Instant>,
}

impl PlayedReply {
    /// Returns the fraction of the synthesized audio that was played, 0.0 to 1.0.
    pub fn played_fraction(&self) -> f64 {
        if self.synthesized.is_zero() {
            return 0.0;
        }
        (self.played.as_secs_f64() / self.synthesized.as_secs_f64()).clamp(0.0, 1.0)
    }
}

/// The replies of a session as played. Cloning shares the record.
#[derive(Debug, Clone, Default)]
pub struct PlaybackLog(Arc<Mutex<BTreeMap<TurnId, PlayedReply>>>);

impl PlaybackLog {
    /// Returns the record of `turn`'s reply, if any of it arrived.
    pub fn reply(&self, turn: TurnId) -> Option<PlayedReply> {
        self.0.lock().get(&turn).copied()
    }

    /// Returns every reply, by turn.
    pub fn replies(&self) -> BTreeMap<TurnId, PlayedReply> {
        self.0.lock().clone()
    }

    fn update(&self, turn: TurnId, change: impl FnOnce(&mut PlayedReply)) {
        if let Some(reply) = self.0.lock().get_mut(&turn) {
            change(reply);
        }
    }
}

/// The media time at which each user turn ended. Cloning shares the record.
///
/// [`EndOfSpeechMarker`] writes it as soon as the voice activity detector
/// ends a turn, and [`Playback`] reads it. The `EndOfTurn` event itself
/// reaches playback only after the LLM has finished the reply, later than
/// the reply's first audio.
///
/// It also records when the voice activity detector announced each turn's
/// speech, on the monotonic clock, to measure how fast playback goes silent.
#[derive(Debug, Clone, Default)]
pub struct TurnEnds(Arc<Mutex<TurnTimes>>);

#[derive(Debug, Default)]
struct TurnTimes {
    ends: HashMap<TurnId, MediaTime>,
    speech_started: HashMap<TurnId, std::time::Instant>,
}

impl TurnEnds {
    /// Records the end of `turn`; the first record counts.
    pub fn record(&self, turn: TurnId, end: MediaTime) {
        self.0.lock().ends.entry(turn).or_insert(end);
    }

    /// Returns the end of `turn`, if recorded.
    pub fn get(&self, turn: TurnId) -> Option<MediaTime> {
        self.0.lock().ends.get(&turn).copied()
    }

    /// Records that speech of `turn` was announced now; the first record counts.
    pub fn record_speech_started(&self, turn: TurnId) {
        self.0.lock().speech_started.entry(turn).or_insert_with(std::time::Instant::now);
    }

    /// Returns when speech of `turn` was announced, if it was.
    pub fn speech_started(&self, turn: TurnId) -> Option<std::time::Instant> {
        self.0.lock().speech_started.get(&turn).copied()
    }
}

/// A reply frame waiting for its playing time.
#[derive(Debug)]
struct Scheduled {
    release_at: Instant,
    frame: Frame,
}

/// The position of the reply being placed.
#[derive(Debug, Clone, Copy)]
struct ReplyCursor {
    turn: TurnId,
    /// Media time right after the last placed frame.
    next: MediaTime,
    /// Wall time at which the reply's first frame plays.
    anchor: Instant,
    start: MediaTime,
}

/// Plays reply audio on the session timeline; see the module documentation.
#[derive(Debug)]
pub struct Playback {
    name: StageName,
    format: AudioFormat,
    pacing: Pacing,
    log: PlaybackLog,
    turn_ends: TurnEnds,
}

impl Playback {
    /// Creates a playback stage for audio in `format` that records into `log`.
    pub fn new(name: StageName, format: AudioFormat, pacing: Pacing, log: PlaybackLog) -> Self {
        Playback { name, format, pacing, log, turn_ends: TurnEnds::default() }
    }

    /// Returns the stage reading turn ends from `turn_ends`, which an
    /// [`EndOfSpeechMarker`] upstream fills.
    #[must_use]
    pub fn with_turn_ends(mut self, turn_ends: TurnEnds) -> Self {
        self.turn_ends = turn_ends;
        self
    }

    /// Returns the log this stage records into.
    pub fn log(&self) -> &PlaybackLog {
        &self.log
    }
}

/// The state of one run of a [`Playback`] stage.
struct Player<'a> {
    pacing: Pacing,
    log: &'a PlaybackLog,
    io: &'a mut StageIo,
    pending: VecDeque<Scheduled>,
    /// Media time of the end of each user turn.
    turn_ends: TurnEnds,
    cursor: Option<ReplyCursor>,
    /// Media time after the last reply frame placed, so replies never overlap.
    timeline_end: MediaTime,
}

impl Player<'_> {
    /// Places a reply frame on the timeline and schedules it.
    fn place(&mut self, mut frame: Frame) {
        let turn = frame.meta.turn;
        let duration = frame.media_duration();
        let now = Instant::now();

        let cursor = match self.cursor {
            Some(cursor) if cursor.turn == turn => cursor,
            _ => {
                // The reply starts when its first audio was ready: the end of
                // the user's turn plus the time the pipeline took since then.
                let turn_end = self.turn_ends.get(turn).unwrap_or(self.timeline_end);
                let latency = self
                    .io
                    .turns
                    .get(turn, TurnMark::EndOfSpeech)
                    .map_or(Duration::ZERO, |end| now.into_std().saturating_duration_since(end));
                let start = turn_end.add(latency).max(self.timeline_end);
                self.log.0.lock().insert(
                    turn,
                    PlayedReply {
                        start,
                        synthesized: Duration::ZERO,
                        played: Duration::ZERO,
                        interrupted: false,
                        stopped_at: None,
                    },
                );
                ReplyCursor { turn, next: start, anchor: now, start }
            }
        };

        frame.meta.timestamp = cursor.next;
        let offset = cursor.next.as_duration().saturating_sub(cursor.start.as_duration());
        let release_at = match self.pacing {
            Pacing::RealTime => cursor.anchor + offset,
            Pacing::AsFastAsPossible => now,
        };
        let next = cursor.next.add(duration);
        self.cursor = Some(ReplyCursor { next, ..cursor });
        self.timeline_end = self.timeline_end.max(next);
        self.log.update(turn, |reply| reply.synthesized += duration);
        self.pending.push_back(Scheduled { release_at, frame });
    }

    /// Discards the unplayed audio of `turn` and earlier turns.
    fn interrupt(&mut self, turn: TurnId) {
        let before = self.pending.len();
        self.pending.retain(|scheduled| scheduled.frame.meta.turn > turn);
        let discarded = before - self.pending.len();

        if let Some(cursor) = self.cursor.filter(|cursor| cursor.turn <= turn) {
            let played_end = self
                .log
                .reply(cursor.turn)
                .map_or(cursor.start, |reply| reply.start.add(reply.played));
            self.timeline_end = played_end;
            self.cursor = None;
            let now = std::time::Instant::now();
            self.log.update(cursor.turn, |reply| {
                reply.interrupted = discarded > 0 || reply.played < reply.synthesized;
                reply.stopped_at = Some(now);
            });
            tracing::debug!(stage = %self.io.name, turn = cursor.turn.0, discarded, "reply interrupted");
        }
    }

    /// Sends every frame whose playing time has come.
    async fn release_due(&mut self) -> Result<(), StageError> {
        let now = Instant::now();
        while self.pending.front().is_some_and(|scheduled| scheduled.release_at <= now) {
            let Some(scheduled) = self.pending.pop_front() else {
                break;
            };
            let turn = scheduled.frame.meta.turn;
            let duration = scheduled.frame.media_duration();
            self.io.turns.mark(turn, TurnMark::FirstAudioOut);
            self.log.update(turn, |reply| reply.played += duration);
            self.io.outbox.send(scheduled.frame).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), StageError> {
        match frame.as_control() {
            Some(Control::EndOfTurn) => self.turn_ends.record(frame.meta.turn, frame.meta.timestamp),
            Some(Control::Interrupt) => self.interrupt(frame.meta.turn),
            Some(Control::Flush) => self.interrupt(self.cursor.map_or(TurnId::NONE, |cursor| cursor.turn)),
            Some(_) => {}
            None if frame.as_audio().is_some() && frame.meta.turn != TurnId::NONE => self.place(frame),
            None => return self.io.outbox.send(frame).await,
        }
        Ok(())
    }
}

impl Stage for Playback {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.format), PortFormat::Audio(self.format))
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let mut player = Player {
                pacing: self.pacing,
                log: &self.log,
                io,
                pending: VecDeque::new(),
                turn_ends: self.turn_ends.clone(),
                cursor: None,
                timeline_end: MediaTime::ZERO,
            };

            loop {
                player.release_due().await?;
                let next_release = player.pending.front().map(|scheduled| scheduled.release_at);
                let received = match next_release {
                    Some(at) => tokio::select! {
                        biased;
                        received = player.io.inbox.recv() => Some(received),
                        () = tokio::time::sleep_until(at) => None,
                    },
                    None => Some(player.io.inbox.recv().await),
                };
                match received {
                    Some(Some(frame)) => player.handle(frame).await?,
                    Some(None) => break,
                    None => {}
                }
            }

            // End of stream: the reply still queued plays out.
            if player.io.is_cancelled() {
                return Ok(());
            }
            while let Some(at) = player.pending.front().map(|scheduled| scheduled.release_at) {
                tokio::time::sleep_until(at).await;
                player.release_due().await?;
            }
            Ok(())
        })
    }
}

/// Records [`TurnMark::EndOfSpeech`] and the turn's end in [`TurnEnds`]
/// when a turn's `EndOfTurn` passes, and the moment its `SpeechStarted`
/// passes. Every frame is forwarded unchanged.
#[derive(Debug)]
pub struct EndOfSpeechMarker {
    name: StageName,
    format: PortFormat,
    turn_ends: TurnEnds,
}

impl EndOfSpeechMarker {
    /// Creates a marker for frames of `format`.
    pub fn new(name: StageName, format: PortFormat) -> Self {
        EndOfSpeechMarker { name, format, turn_ends: TurnEnds::default() }
    }

    /// Returns the marker recording turn ends into `turn_ends`.
    #[must_use]
    pub fn with_turn_ends(mut self, turn_ends: TurnEnds) -> Self {
        self.turn_ends = turn_ends;
        self
    }
}

impl Processor for EndOfSpeechMarker {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), self.format, self.format)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        out.emit(frame);
        Ok(())
    }

    fn control(&mut self, control: &Control, meta: &FrameMeta, out: &mut Emitter<'_>) -> Result<(), StageError> {
        match control {
            Control::EndOfTurn => {
                out.mark(meta.turn, TurnMark::EndOfSpeech);
                self.turn_ends.record(meta.turn, meta.timestamp);
            }
            Control::SpeechStarted => self.turn_ends.record_speech_started(meta.turn),
            _ => {}
        }
        Ok(())
    }
}
