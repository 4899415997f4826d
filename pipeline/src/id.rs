//! Typed identifiers: sessions, turns and stage names.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One conversation. Every frame carries the id of the session it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session-{}", self.0)
    }
}

/// One user utterance and the reply to it. Turn ids increase within a session,
/// so a frame whose turn id is at or below an interrupted turn is known to be late.
/// `TurnId::NONE` (0) marks frames that belong to no turn yet, such as captured
/// audio before the voice activity detector has seen speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct TurnId(pub u64);

impl TurnId {
    /// The turn id of frames that belong to no turn.
    pub const NONE: TurnId = TurnId(0);

    /// Returns the id of the turn after this one.
    #[must_use]
    pub fn next(self) -> TurnId {
        TurnId(self.0 + 1)
    }
}

impl fmt::Display for TurnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "turn-{}", self.0)
    }
}

/// The name of a stage within a graph: 1 to 64 characters of ASCII letters,
/// digits, `-`, `_` and `.`, so that it can appear unquoted in logs and in
/// Prometheus label values. Cloning is cheap.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct StageName(Arc<str>);

/// The longest stage name accepted. Names appear in every log line and metric
/// label of their stage, so they are kept short.
pub const MAX_STAGE_NAME_LEN: usize = 64;

/// A stage name that breaks the naming rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid stage name {name:?}: use 1 to {MAX_STAGE_NAME_LEN} ASCII letters, digits, '-', '_' or '.'"
)]
pub struct InvalidStageName {
    /// The rejected name.
    pub name: String,
}

impl StageName {
    /// Validates and wraps a stage name.
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidStageName> {
        let name = name.as_ref();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || name.len() > MAX_STAGE_NAME_LEN || !name.chars().all(valid_char) {
            return Err(InvalidStageName { name: name.to_owned() });
        }
        Ok(StageName(Arc::from(name)))
    }

    /// Returns the name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<StageName> for String {
    fn from(name: StageName) -> String {
        name.0.to_string()
    }
}

impl<'de> Deserialize<'de> for StageName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        StageName::new(raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_name_accepts_plain_names() {
        for name in ["vad", "stt.whisper", "tts_piper-2", &"x".repeat(64)] {
            assert!(StageName::new(name).is_ok(), "{name:?} should be valid");
        }
    }

    #[test]
    fn stage_name_rejects_bad_names() {
        for name in ["", "has space", "quote\"", "é", &"x".repeat(65)] {
            let error = StageName::new(name).expect_err(name);
            assert_eq!(error.name, name);
        }
    }

    #[test]
    fn stage_name_deserialize_validates() {
        let error = serde_json::from_str::<StageName>("\"a b\"").expect_err("space is invalid");
        assert!(error.to_string().contains("invalid stage name"), "{error}");
    }
}
