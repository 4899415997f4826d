//! Helpers shared by the pipeline's integration tests.

#![allow(dead_code)]

use std::time::Duration;

use mentis_pipeline::{AudioData, AudioFormat, Control, Frame, FrameMeta, MediaTime, Payload, SessionId, StageName, TextDelta, TurnId};

pub const SESSION: SessionId = SessionId(7);

pub fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

/// A 20 ms mono 16 kHz audio frame whose first sample is `seq`, so order is checkable.
pub fn audio(seq: u64, turn: TurnId) -> Frame {
    let mut samples = vec![0_i16; 320];
    samples[0] = (seq % 30_000) as i16;
    let meta = FrameMeta {
        session: SESSION,
        turn,
        seq,
        timestamp: MediaTime::from_duration(Duration::from_millis(20 * seq)),
    };
    Frame::audio(meta, AudioData::from_i16(16_000, 1, samples).expect("valid audio"))
}

pub fn text(seq: u64, content: &str) -> Frame {
    let meta = FrameMeta { session: SESSION, turn: TurnId(1), seq, timestamp: MediaTime::ZERO };
    Frame::new(meta, Payload::Text(TextDelta { text: content.to_owned(), last: false }))
}

pub fn control(turn: TurnId, event: Control) -> Frame {
    Frame::control(FrameMeta { session: SESSION, turn, seq: 0, timestamp: MediaTime::ZERO }, event)
}

pub fn format16k() -> AudioFormat {
    AudioFormat::mono_i16(16_000)
}
