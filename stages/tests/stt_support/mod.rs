//! Drives one speech-to-text stage outside a graph: frames in through an
//! edge, frames out through another, with the session's egress log, usage
//! log and turn marks kept for the checks.

#![allow(dead_code)]

use std::time::Duration;

use mentis_pipeline::edge::{Receiver, Sender, channel};
use mentis_pipeline::frame::Payload;
use mentis_pipeline::{
    AudioData, Control, EdgeConfig, EgressLog, Frame, FrameMeta, MediaTime, PrivacyPolicy, PrivacyTier, SessionId,
    Stage, StageError, StageIo, StageName, Transcript, TranscriptKind, TurnClock, TurnId, UsageLog,
};

/// The session of every test.
pub const SESSION: SessionId = SessionId(7);

/// Samples per audio frame: 20 ms at 16 kHz.
pub const FRAME_SAMPLES: usize = 320;

/// A running stage with its edges and logs.
pub struct Harness {
    pub input: Option<Sender>,
    pub output: Receiver,
    pub egress: EgressLog,
    pub usage: UsageLog,
    pub turns: TurnClock,
    pub cancel: CancelHandle,
    pub task: tokio::task::JoinHandle<Result<(), StageError>>,
    seq: u64,
}

/// Cancels the session of a detached stage, as the runtime does.
#[derive(Clone)]
pub struct CancelHandle(std::sync::Arc<dyn Fn() + Send + Sync>);

impl CancelHandle {
    /// Cancels the session.
    pub fn cancel(&self) {
        (self.0)();
    }
}

impl Harness {
    /// Starts `stage` in a pipeline of `tier`.
    pub fn start(mut stage: impl Stage, tier: PrivacyTier) -> Harness {
        let (input, inbox_receiver) = channel("stt-in", EdgeConfig::lossless(1024));
        let (outbox_sender, output) = channel("stt-out", EdgeConfig::lossless(1024));
        let name = StageName::new("stt").expect("stage name");
        let mut io = StageIo::detached(name, SESSION, vec![inbox_receiver], vec![outbox_sender])
            .with_policy(PrivacyPolicy::new(tier));
        let (egress, usage, turns) = (io.egress.clone(), io.usage.clone(), io.turns.clone());
        let token = io.inbox.cancel_token().clone();
        let cancel = CancelHandle(std::sync::Arc::new(move || token.cancel()));
        let task = tokio::spawn(async move { stage.run(&mut io).await });
        Harness { input: Some(input), output, egress, usage, turns, cancel, task, seq: 0 }
    }

    fn meta(&mut self, turn: TurnId, timestamp: MediaTime) -> FrameMeta {
        self.seq += 1;
        FrameMeta { session: SESSION, turn, seq: self.seq, timestamp }
    }

    /// Sends a control event of `turn` at `timestamp`.
    pub async fn control(&mut self, turn: TurnId, timestamp: MediaTime, control: Control) {
        let meta = self.meta(turn, timestamp);
        self.send(Frame::control(meta, control)).await;
    }

    /// Sends `samples` as 20 ms frames of `turn`, starting at `timestamp`,
    /// and returns the time after the last sample.
    pub async fn audio(&mut self, turn: TurnId, timestamp: MediaTime, samples: &[i16]) -> MediaTime {
        let mut at = timestamp;
        for chunk in samples.chunks(FRAME_SAMPLES) {
            let audio = AudioData::from_i16(16_000, 1, chunk.to_vec()).expect("audio");
            let duration = audio.duration();
            let meta = self.meta(turn, at);
            self.send(Frame::audio(meta, audio)).await;
            at = at.add(duration);
        }
        at
    }

    /// Sends `samples` as float frames.
    pub async fn audio_f32(&mut self, turn: TurnId, timestamp: MediaTime, samples: &[i16]) -> MediaTime {
        let mut at = timestamp;
        for chunk in samples.chunks(FRAME_SAMPLES) {
            let floats: Vec<f32> = chunk.iter().map(|&sample| f32::from(sample) / 32_768.0).collect();
            let audio = AudioData::from_f32(16_000, 1, floats).expect("audio");
            let duration = audio.duration();
            let meta = self.meta(turn, at);
            self.send(Frame::audio(meta, audio)).await;
            at = at.add(duration);
        }
        at
    }

    /// Sends a whole segment as the voice activity detector does:
    /// `SpeechStarted`, the audio, `SpeechStopped` and `EndOfTurn`.
    pub async fn segment(&mut self, turn: TurnId, start: MediaTime, samples: &[i16]) -> MediaTime {
        self.control(turn, start, Control::SpeechStarted).await;
        let end = self.audio(turn, start, samples).await;
        self.control(turn, end, Control::SpeechStopped).await;
        self.control(turn, end, Control::EndOfTurn).await;
        end
    }

    /// Sends any frame.
    pub async fn send(&mut self, frame: Frame) {
        self.input.as_ref().expect("input still open").send(frame).await.expect("the stage receives");
    }

    /// Ends the input.
    pub fn end_input(&mut self) {
        self.input = None;
    }

    /// Waits for the next output frame, at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Frame> {
        tokio::time::timeout(limit, self.output.recv()).await.ok().flatten()
    }

    /// Waits for the next transcript, skipping control frames, at most `limit`.
    pub async fn next_transcript(&mut self, limit: Duration) -> Option<(TurnId, Transcript)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next(left).await?;
            if let Payload::Transcript(transcript) = frame.payload {
                return Some((frame.meta.turn, transcript));
            }
        }
    }

    /// Ends the input and returns the stage's result and every frame it emitted.
    pub async fn finish(mut self, limit: Duration) -> (Result<(), StageError>, Vec<Frame>) {
        self.end_input();
        let mut frames = Vec::new();
        let collect = async {
            while let Some(frame) = self.output.recv().await {
                frames.push(frame);
            }
        };
        tokio::time::timeout(limit, collect).await.expect("the stage ends its output in time");
        let result = tokio::time::timeout(limit, self.task).await.expect("the stage returns in time").expect("no panic");
        (result, frames)
    }
}

/// `count` samples of a 440 Hz tone at 16 kHz, so that audio is not silence.
pub fn tone(count: usize) -> Vec<i16> {
    (0..count)
        .map(|index| {
            let phase = index as f32 * 440.0 * std::f32::consts::TAU / 16_000.0;
            (phase.sin() * 8_000.0) as i16
        })
        .collect()
}

/// Returns the media time after `samples` samples from the start.
pub fn at_samples(samples: u64) -> MediaTime {
    MediaTime::from_samples(samples, 16_000)
}

/// Returns the transcripts among `frames`, with their turns.
pub fn transcripts(frames: &[Frame]) -> Vec<(TurnId, TranscriptKind, String)> {
    frames
        .iter()
        .filter_map(|frame| match &frame.payload {
            Payload::Transcript(transcript) => Some((frame.meta.turn, transcript.kind, transcript.text.clone())),
            _ => None,
        })
        .collect()
}

/// Returns the final transcripts among `frames`, with their turns.
pub fn finals(frames: &[Frame]) -> Vec<(TurnId, String)> {
    transcripts(frames)
        .into_iter()
        .filter(|(_, kind, _)| *kind == TranscriptKind::Final)
        .map(|(turn, _, text)| (turn, text))
        .collect()
}

/// Returns the position of the first frame matching `predicate`.
pub fn position(frames: &[Frame], predicate: impl Fn(&Frame) -> bool) -> Option<usize> {
    frames.iter().position(predicate)
}

/// Returns whether `frame` is the control `control` of `turn`.
pub fn is_control(frame: &Frame, turn: TurnId, control: &Control) -> bool {
    frame.meta.turn == turn && frame.as_control() == Some(control)
}

/// Returns whether `frame` is the final transcript of `turn`.
pub fn is_final(frame: &Frame, turn: TurnId) -> bool {
    frame.meta.turn == turn
        && matches!(&frame.payload, Payload::Transcript(transcript) if transcript.kind == TranscriptKind::Final)
}

/// Returns the partial transcripts among `frames`, with their turns.
pub fn partials(frames: &[Frame]) -> Vec<(TurnId, String)> {
    transcripts(frames)
        .into_iter()
        .filter(|(_, kind, _)| *kind == TranscriptKind::Partial)
        .map(|(turn, _, text)| (turn, text))
        .collect()
}

/// Asserts that the final transcript of `turn` goes out before the
/// `SpeechStopped` that ended its segment.
pub fn assert_final_before_stopped(frames: &[Frame], turn: TurnId) {
    let final_at = position(frames, |frame| is_final(frame, turn)).expect("a final transcript");
    let stopped_at = position(frames, |frame| is_control(frame, turn, &Control::SpeechStopped)).expect("a SpeechStopped");
    assert!(final_at < stopped_at, "the final of turn {turn:?} comes before the SpeechStopped it belongs to");
}

/// Returns the retry policy of the streaming tests: 3 retries, 20 to 100 ms apart.
pub fn quick_retry() -> mentis_pipeline::wrap::RetryPolicy {
    mentis_pipeline::wrap::RetryPolicy {
        max_retries: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..mentis_pipeline::wrap::RetryPolicy::default()
    }
}
