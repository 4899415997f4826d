//! The streaming speech-to-text protocol of Vosk's WebSocket server
//! (alphacep/vosk-server, `websocket/asr_server.py`): the client's messages,
//! the server's JSON results, and a [`TranscriptAssembler`] that turns them
//! into one transcript per utterance.
//!
//! The client sends an optional configuration message, then binary frames of
//! 16-bit little-endian mono PCM, then the end-of-stream message. The server
//! responds to every client frame with one JSON text frame: a partial result
//! `{"partial": "..."}` while an utterance is in progress, or a final result
//! `{"text": "...", "result": [...]}` when the recognizer found the end of an
//! utterance. The response to the end-of-stream message is the final result of
//! the remaining audio, after which the server closes the connection.
//!
//! Sources: `websocket/asr_server.py` and `websocket/test.py` in
//! <https://github.com/alphacep/vosk-server>, and the result JSON written by
//! `Recognizer::Result`, `PartialResult` and `FinalResult` in
//! `src/recognizer.cc` of <https://github.com/alphacep/vosk-api>.
//!
//! Everything here is pure: no I/O, and no input makes it panic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::stt::network::TranscriptUpdate;

/// Maximum number of characters of a malformed message kept in
/// [`VoskMessageError::Malformed`], so an error never carries a whole message.
const EXCERPT_CHARS: usize = 120;

/// Maximum number of field names kept in [`ServerMessage::Unknown`].
const MAX_UNKNOWN_FIELDS: usize = 8;

/// The message that ends the audio stream, sent as a text frame.
///
/// The server compares the frame with this exact text (`'{"eof" : 1}'`, with
/// a space before the colon), so it must be sent byte for byte and never
/// re-serialized: any other spelling is fed to the recognizer as audio.
pub const EOF_MESSAGE: &str = r#"{"eof" : 1}"#;

/// The recognizer settings the server reads from a configuration message.
///
/// Source: the `config` handling in `websocket/asr_server.py`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecognizerConfig {
    /// Sample rate of the audio in Hz. Without it the server assumes its
    /// `VOSK_SAMPLE_RATE` setting (8000 Hz by default).
    pub sample_rate: u32,
    /// Whether final results list their words with timings (`result`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<bool>,
    /// Number of alternative transcripts in final results. With a value above
    /// 0 the server sends `{"alternatives": [...]}` instead of `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_alternatives: Option<u32>,
    /// Words or phrases the recognizer is restricted to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phrase_list: Option<Vec<String>>,
}

/// The configuration message, `{"config": {"sample_rate": 16000}}`. It must
/// be the first frame: the server builds its recognizer from the settings it
/// has when the first audio frame arrives.
///
/// Source: `websocket/asr_server.py` and `websocket/test.py`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigMessage {
    /// The settings.
    pub config: RecognizerConfig,
}

impl ConfigMessage {
    /// Builds the configuration message for audio at `sample_rate` Hz, with
    /// the server's defaults for everything else.
    pub fn new(sample_rate: u32) -> Self {
        ConfigMessage {
            config: RecognizerConfig { sample_rate, words: None, max_alternatives: None, phrase_list: None },
        }
    }
}

/// One recognized word of a final result, present when the server was
/// configured to send words.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecognizedWord {
    /// The word.
    #[serde(default)]
    pub word: String,
    /// Start in seconds from the start of the audio.
    #[serde(default)]
    pub start: Option<f64>,
    /// End in seconds from the start of the audio.
    #[serde(default)]
    pub end: Option<f64>,
    /// Confidence, 0 to 1.
    #[serde(default)]
    pub conf: Option<f64>,
}

/// A message the server sends as a text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `{"partial": "..."}`: the recognizer's current guess for the utterance
    /// in progress. It is often empty (silence), and each one replaces the
    /// previous one.
    Partial {
        /// The words recognized so far in this utterance.
        text: String,
    },
    /// `{"text": "...", "result": [...]}`: the recognizer found the end of an
    /// utterance (or the stream ended). The text is empty when the utterance
    /// held no words. With `max_alternatives` configured, the server sends
    /// `{"alternatives": [{"text", "confidence", "result"}, ...]}` instead,
    /// which gives the first alternative here.
    Final {
        /// The utterance's words, separated by spaces.
        text: String,
        /// The words with timings, when the server sends them.
        words: Vec<RecognizedWord>,
        /// The first alternative's score, for results with alternatives. It
        /// is a likelihood from the decoder, not a 0 to 1 confidence.
        confidence: Option<f64>,
    },
    /// A JSON object with none of `partial`, `text` or `alternatives`.
    Unknown {
        /// The object's first field names, at most 8.
        fields: Vec<String>,
    },
}

/// A server message that is not the JSON the server sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoskMessageError {
    /// The text is not a JSON object, or a known field has the wrong type.
    #[error("the speech-to-text server sent a malformed message ({detail}): {excerpt:?}")]
    Malformed {
        /// The problem found.
        detail: String,
        /// The start of the message, at most 120 characters.
        excerpt: String,
    },
}

/// A final result.
#[derive(Debug, Deserialize)]
struct FinalWire {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    result: Option<Vec<RecognizedWord>>,
}

/// A final result with alternatives.
#[derive(Debug, Deserialize)]
struct AlternativesWire {
    #[serde(default)]
    alternatives: Option<Vec<AlternativeWire>>,
}

/// One alternative of a final result.
#[derive(Debug, Deserialize)]
struct AlternativeWire {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    result: Option<Vec<RecognizedWord>>,
}

/// Parses one text frame from the server.
///
/// A frame with `partial` is a [`ServerMessage::Partial`]; one with `text` or
/// `alternatives` is a [`ServerMessage::Final`]; any other JSON object is
/// [`ServerMessage::Unknown`]. Unknown fields (`spk`, `partial_result`...)
/// are ignored.
///
/// # Errors
///
/// [`VoskMessageError::Malformed`] when the text is not a JSON object (such
/// as the XML a server configured for NLSML output sends), or when `partial`,
/// `text`, `result` or `alternatives` has the wrong JSON type.
pub fn parse_server_message(text: &str) -> Result<ServerMessage, VoskMessageError> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| malformed(format!("not valid JSON: {error}"), text))?;
    let Some(fields) = value.as_object() else {
        return Err(malformed("not a JSON object".to_owned(), text));
    };

    if let Some(partial) = fields.get("partial") {
        let Some(partial) = partial.as_str() else {
            return Err(malformed("`partial` is not a string".to_owned(), text));
        };
        return Ok(ServerMessage::Partial { text: partial.to_owned() });
    }

    if fields.contains_key("alternatives") {
        let wire = AlternativesWire::deserialize(&value)
            .map_err(|error| malformed(format!("`alternatives` has the wrong shape: {error}"), text))?;
        let first = wire.alternatives.unwrap_or_default().into_iter().next();
        let message = match first {
            Some(alternative) => ServerMessage::Final {
                text: alternative.text.unwrap_or_default(),
                words: alternative.result.unwrap_or_default(),
                confidence: alternative.confidence,
            },
            None => ServerMessage::Final { text: String::new(), words: Vec::new(), confidence: None },
        };
        return Ok(message);
    }

    if fields.contains_key("text") {
        let wire = FinalWire::deserialize(&value)
            .map_err(|error| malformed(format!("a final result has the wrong shape: {error}"), text))?;
        return Ok(ServerMessage::Final {
            text: wire.text.unwrap_or_default(),
            words: wire.result.unwrap_or_default(),
            confidence: None,
        });
    }

    let names = fields.keys().take(MAX_UNKNOWN_FIELDS).cloned().collect();
    Ok(ServerMessage::Unknown { fields: names })
}

/// Builds a [`VoskMessageError::Malformed`] with the start of `text`.
fn malformed(detail: String, text: &str) -> VoskMessageError {
    VoskMessageError::Malformed { detail, excerpt: text.chars().take(EXCERPT_CHARS).collect() }
}

/// Turns the server's partial and final results into one transcript per
/// utterance.
///
/// Each final result closes one utterance, so a non-empty final result is
/// returned as it is. The recognizer sends an empty final result when an
/// utterance held only noise; those are ignored. Partial results are
/// returned when they are not empty and differ from the previous one.
#[derive(Debug, Default, Clone)]
pub struct TranscriptAssembler {
    /// The latest non-empty partial text of the utterance in progress.
    partial: String,
}

impl TranscriptAssembler {
    /// Creates an assembler with no utterance in progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next server message and returns what changed, if anything.
    pub fn push(&mut self, message: &ServerMessage) -> Option<TranscriptUpdate> {
        match message {
            ServerMessage::Partial { text } => {
                let text = text.trim();
                if text.is_empty() || text == self.partial {
                    return None;
                }
                self.partial = text.to_owned();
                Some(TranscriptUpdate::Partial(self.partial.clone()))
            }
            ServerMessage::Final { text, .. } => {
                // The final result replaces the partial guesses for the utterance.
                self.partial.clear();
                let text = text.trim();
                if text.is_empty() { None } else { Some(TranscriptUpdate::Final(text.to_owned())) }
            }
            ServerMessage::Unknown { .. } => None,
        }
    }

    /// Closes whatever is pending when the stream ends without a final result
    /// (such as a connection dropped before the response to [`EOF_MESSAGE`]),
    /// and returns the last partial text. Returns `None` when nothing is
    /// pending.
    pub fn finish(&mut self) -> Option<String> {
        let text = std::mem::take(&mut self.partial);
        if text.is_empty() { None } else { Some(text) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> ServerMessage {
        parse_server_message(text).expect("server message parses")
    }

    fn partial(text: &str) -> ServerMessage {
        ServerMessage::Partial { text: text.to_owned() }
    }

    fn final_result(text: &str) -> ServerMessage {
        ServerMessage::Final { text: text.to_owned(), words: Vec::new(), confidence: None }
    }

    #[test]
    fn eof_message_is_byte_exact() {
        assert_eq!(EOF_MESSAGE.as_bytes(), b"{\"eof\" : 1}");
    }

    #[test]
    fn config_message_serializes_like_test_client() {
        let json = serde_json::to_value(ConfigMessage::new(16_000)).expect("config serializes");

        assert_eq!(json, serde_json::json!({"config": {"sample_rate": 16000}}));
    }

    #[test]
    fn config_message_with_all_settings() {
        let message = ConfigMessage {
            config: RecognizerConfig {
                sample_rate: 8000,
                words: Some(true),
                max_alternatives: Some(3),
                phrase_list: Some(vec!["one two".to_owned(), "three".to_owned()]),
            },
        };

        let json = serde_json::to_value(&message).expect("config serializes");

        assert_eq!(
            json,
            serde_json::json!({"config": {"sample_rate": 8000, "words": true, "max_alternatives": 3, "phrase_list": ["one two", "three"]}})
        );
    }

    // Whitespace inside the JSON, as the recognizer's JSON writer adds it, does not matter.
    #[test]
    fn partial_results_parse() {
        assert_eq!(parse("{\n  \"partial\" : \"one two\"\n}"), partial("one two"));
        assert_eq!(parse(r#"{"partial" : ""}"#), partial(""));
        assert_eq!(
            parse(r#"{"partial": "one", "partial_result": [{"conf": 1.0, "end": 0.6, "start": 0.3, "word": "one"}]}"#),
            partial("one")
        );
    }

    // A final result with word timings, as the server sends it when `words` is on.
    #[test]
    fn final_result_with_words_parses() {
        let message = parse(
            "{\n  \"result\" : [{\n      \"conf\" : 1.000000,\n      \"end\" : 1.110000,\n      \"start\" : 0.870000,\n      \"word\" : \"what\"\n    }, {\n      \"conf\" : 0.95,\n      \"end\" : 1.530000,\n      \"start\" : 1.110000,\n      \"word\" : \"zero\"\n    }],\n  \"text\" : \"what zero\"\n}",
        );

        assert_eq!(
            message,
            ServerMessage::Final {
                text: "what zero".to_owned(),
                words: vec![
                    RecognizedWord { word: "what".to_owned(), start: Some(0.87), end: Some(1.11), conf: Some(1.0) },
                    RecognizedWord { word: "zero".to_owned(), start: Some(1.11), end: Some(1.53), conf: Some(0.95) },
                ],
                confidence: None,
            }
        );
    }

    // The recognizer's empty result, and a final result with speaker data.
    #[test]
    fn empty_and_speaker_finals_parse() {
        assert_eq!(parse(r#"{"text": ""}"#), final_result(""));
        assert_eq!(parse(r#"{"text": "hi", "spk": [0.1, -0.2], "spk_frames": 120}"#), final_result("hi"));
    }

    // NbestResult, sent when max_alternatives is configured.
    #[test]
    fn final_with_alternatives_takes_first() {
        let message = parse(
            r#"{"alternatives" : [{"confidence" : 228.3, "result" : [{"end" : 0.9, "start" : 0.3, "word" : "hello"}], "text" : "hello"}, {"confidence" : 221.0, "text" : "yellow"}]}"#,
        );

        assert_eq!(
            message,
            ServerMessage::Final {
                text: "hello".to_owned(),
                words: vec![RecognizedWord { word: "hello".to_owned(), start: Some(0.3), end: Some(0.9), conf: None }],
                confidence: Some(228.3),
            }
        );
        assert_eq!(
            parse(r#"{"alternatives" : [{"text": "", "confidence" : 1.0}] }"#),
            ServerMessage::Final { text: String::new(), words: Vec::new(), confidence: Some(1.0) }
        );
        assert_eq!(parse(r#"{"alternatives": []}"#), final_result(""));
    }

    #[test]
    fn unknown_objects_keep_field_names() {
        assert_eq!(parse("{}"), ServerMessage::Unknown { fields: Vec::new() });
        assert_eq!(parse(r#"{"status": "ok"}"#), ServerMessage::Unknown { fields: vec!["status".to_owned()] });

        let many: serde_json::Map<String, Value> = (0..20).map(|index| (format!("f{index:02}"), Value::Null)).collect();
        let ServerMessage::Unknown { fields } = parse(&Value::Object(many).to_string()) else {
            panic!("expected an unknown message");
        };
        assert_eq!(fields.len(), MAX_UNKNOWN_FIELDS);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let nlsml = "<?xml version=\"1.0\"?>\n<result grammar=\"default\">\n<interpretation confidence=\"1.0\">\n<instance/>\n<input><noinput/></input>\n</interpretation>\n</result>\n";
        let long = format!("{{\"text\": \"{}", "a".repeat(400));
        let cases = [
            nlsml,
            "[]",
            "3",
            r#"{"partial": 3}"#,
            r#"{"text": ["a"]}"#,
            r#"{"text": "a", "result": "words"}"#,
            r#"{"alternatives": {"text": "a"}}"#,
            long.as_str(),
        ];
        for text in cases {
            let message = parse_server_message(text);

            let Err(VoskMessageError::Malformed { excerpt, .. }) = message else {
                panic!("expected malformed for {text:?}, got {message:?}");
            };
            assert!(excerpt.chars().count() <= EXCERPT_CHARS, "{text:?}");
            assert!(text.starts_with(&excerpt), "{text:?}");
        }
    }

    // Responses like those of a test.py session: partials while audio arrives,
    // a final at each endpoint, and the response to the end-of-stream message.
    #[test]
    fn assembler_gives_one_final_per_utterance() {
        let mut assembler = TranscriptAssembler::new();
        let session = [
            (partial(""), None),
            (partial("one"), Some(TranscriptUpdate::Partial("one".to_owned()))),
            (partial("one"), None),
            (partial("one zero"), Some(TranscriptUpdate::Partial("one zero".to_owned()))),
            (final_result("one zero zero"), Some(TranscriptUpdate::Final("one zero zero".to_owned()))),
            (partial(""), None),
            (final_result(""), None),
            (partial("two"), Some(TranscriptUpdate::Partial("two".to_owned()))),
            (final_result("two three"), Some(TranscriptUpdate::Final("two three".to_owned()))),
        ];

        for (index, (message, expected)) in session.iter().enumerate() {
            assert_eq!(assembler.push(message), *expected, "message {index}: {message:?}");
        }
        assert_eq!(assembler.finish(), None);
    }

    #[test]
    fn empty_finals_are_ignored() {
        let mut assembler = TranscriptAssembler::new();

        assert_eq!(assembler.push(&final_result("")), None);
        assert_eq!(assembler.push(&final_result("  ")), None);
        assert_eq!(assembler.push(&parse(r#"{"alternatives" : [{"text": "", "confidence" : 1.0}] }"#)), None);
    }

    #[test]
    fn final_clears_pending_partial() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&partial("almost"));

        assert_eq!(assembler.push(&final_result("")), None);
        assert_eq!(assembler.finish(), None);
    }

    #[test]
    fn finish_returns_pending_partial_once() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&partial("cut off"));

        assert_eq!(assembler.finish(), Some("cut off".to_owned()));
        assert_eq!(assembler.finish(), None);
    }

    #[test]
    fn unknown_messages_change_nothing() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&partial("keep"));

        assert_eq!(assembler.push(&ServerMessage::Unknown { fields: vec!["x".to_owned()] }), None);
        assert_eq!(assembler.finish(), Some("keep".to_owned()));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse_server_message(&text);
        }
    }
}
