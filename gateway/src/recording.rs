//! The recorder of a session's consented records.
//!
//! The session calls a [`TranscriptRecorder`] for each final transcript when
//! the start message asked for transcripts to be stored. The recorder, backed
//! by the store, decides with the user's recorded consent whether anything
//! is written; [`NoRecorder`] stores nothing.

use std::fmt;

use mentis_pipeline::TurnId;

use crate::session::SessionContext;

/// Receives the records a session may store.
pub trait TranscriptRecorder: Send + Sync + fmt::Debug + 'static {
    /// Hands over a final transcript of the user. It must not wait on
    /// storage: an implementation that writes spawns the write.
    fn final_transcript(&self, session: &SessionContext, turn: TurnId, text: &str);
}

/// Stores nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRecorder;

impl TranscriptRecorder for NoRecorder {
    fn final_transcript(&self, _session: &SessionContext, _turn: TurnId, _text: &str) {}
}
