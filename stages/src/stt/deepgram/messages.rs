//! Deepgram live transcription (`wss://api.deepgram.com/v1/listen`): the
//! connection's query options, the client's control messages, the server's
//! JSON messages, and a [`TranscriptAssembler`] that turns the server's
//! interim and final results into one transcript per utterance.
//!
//! The client sends binary audio frames and three JSON control messages; the
//! server sends `Results`, `UtteranceEnd`, `SpeechStarted` and `Metadata`
//! messages as text frames. Deepgram reports a failure by closing the
//! WebSocket with a code and a reason (`DATA-0000`, `NET-0000`, `NET-0001`),
//! so failures reach the transport, not this module.
//!
//! Everything here is pure: no I/O, and no input makes it panic.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

pub use crate::stt::network::TranscriptUpdate;

/// Maximum number of characters of a malformed message kept in
/// [`DeepgramMessageError::Malformed`], so an error never carries a whole
/// message.
const EXCERPT_CHARS: usize = 120;

/// Path of the live transcription endpoint.
pub const LISTEN_PATH: &str = "/v1/listen";

/// Maximum bytes of finalized text the [`TranscriptAssembler`] keeps for one
/// utterance, an estimated 20 minutes of English speech. An utterance this
/// long only happens when endpointing and `utterance_end_ms` are both off, so
/// it is then closed early instead of growing without bound.
pub const MAX_UTTERANCE_BYTES: usize = 16 * 1024;

/// A control message the client sends as a text frame.
///
/// Sources: <https://developers.deepgram.com/docs/keep-alive>,
/// <https://developers.deepgram.com/docs/finalize> and
/// <https://developers.deepgram.com/docs/close-stream>.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum ControlMessage {
    /// Keeps the connection open while no audio is sent. Deepgram closes a
    /// connection with `NET-0001` after 10 seconds without audio or a
    /// KeepAlive, and recommends sending one every 3 to 5 seconds. It must be
    /// a text frame, and the server sends no reply to it.
    KeepAlive,
    /// Requests that the server process all buffered audio and return final
    /// results now. The result it causes may carry `from_finalize: true`, but
    /// the docs do not guarantee one when little audio was buffered.
    Finalize,
    /// Requests that the server process the remaining audio, send the last
    /// results and a `Metadata` message, and close the connection.
    CloseStream,
}

impl ControlMessage {
    /// Returns the message's JSON text, ready to send as a text frame.
    pub fn as_json(self) -> &'static str {
        match self {
            ControlMessage::KeepAlive => r#"{"type":"KeepAlive"}"#,
            ControlMessage::Finalize => r#"{"type":"Finalize"}"#,
            ControlMessage::CloseStream => r#"{"type":"CloseStream"}"#,
        }
    }
}

/// When Deepgram ends a segment of speech at a pause and marks the result
/// `speech_final`.
///
/// Source: `endpointing` in <https://developers.deepgram.com/reference/listen-live>.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endpointing {
    /// The parameter is not sent, so the server default applies (10 ms).
    #[default]
    ServerDefault,
    /// `endpointing=false`: no pause detection, so no `speech_final`.
    Disabled,
    /// `endpointing=N`: a pause of this many milliseconds ends the segment.
    AfterSilenceMs(u32),
}

/// A [`ListenOptions`] value the endpoint would reject or that would break
/// utterance detection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeepgramOptionsError {
    /// The model name is empty.
    #[error("the Deepgram model name is empty; set a model such as \"nova-3\"")]
    EmptyModel,
    /// The sample rate is 0.
    #[error("the sample rate is 0 Hz; set the rate of the PCM16 audio that will be sent")]
    ZeroSampleRate,
    /// The channel count is 0.
    #[error("the channel count is 0; set the number of interleaved channels in the audio")]
    ZeroChannels,
    /// `utterance_end_ms` is set but `interim_results` is off. Deepgram
    /// computes UtteranceEnd from interim results and requires both.
    #[error(
        "utterance_end_ms is {utterance_end_ms} but interim_results is off; Deepgram requires interim_results=true for UtteranceEnd"
    )]
    UtteranceEndWithoutInterimResults {
        /// The configured `utterance_end_ms`.
        utterance_end_ms: u32,
    },
    /// The base URL cannot take a path (such as `mailto:` or `data:` URLs).
    #[error("the Deepgram base URL {base:?} cannot carry the /v1/listen path; use a ws:// or wss:// URL")]
    UnusableBaseUrl {
        /// The base URL as given.
        base: String,
    },
}

/// The query parameters of a live transcription connection, for 16-bit
/// little-endian PCM (`encoding=linear16`) audio.
///
/// Source: the query parameters of
/// <https://developers.deepgram.com/reference/listen-live>, and
/// <https://developers.deepgram.com/docs/utterance-end> and
/// <https://developers.deepgram.com/docs/speech-started> for
/// `utterance_end_ms` and `vad_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    /// The model, such as `"nova-3"`.
    pub model: String,
    /// A BCP-47 language tag such as `"en-US"`; the model's default when `None`.
    pub language: Option<String>,
    /// Sample rate of the audio in Hz.
    pub sample_rate: u32,
    /// Number of interleaved channels in the audio.
    pub channels: u16,
    /// Whether to send interim (not yet final) results while the person speaks.
    pub interim_results: bool,
    /// Whether to add punctuation and capitalization.
    pub punctuate: bool,
    /// Whether to format numbers, dates and similar entities.
    pub smart_format: bool,
    /// When a pause ends a segment with `speech_final`.
    pub endpointing: Endpointing,
    /// Milliseconds of silence after the last finalized word before an
    /// `UtteranceEnd` message; none when `None`. Deepgram recommends 1000 or
    /// more and requires `interim_results`.
    pub utterance_end_ms: Option<u32>,
    /// Whether to send `SpeechStarted` messages.
    pub vad_events: bool,
}

impl ListenOptions {
    /// Options for mono 16 kHz audio with `nova-3`, interim results,
    /// punctuation, smart formatting, 300 ms endpointing, UtteranceEnd after
    /// 1000 ms and SpeechStarted messages.
    pub fn new() -> Self {
        ListenOptions {
            model: "nova-3".to_owned(),
            language: None,
            sample_rate: 16_000,
            channels: 1,
            interim_results: true,
            punctuate: true,
            smart_format: true,
            endpointing: Endpointing::AfterSilenceMs(300),
            utterance_end_ms: Some(1000),
            vad_events: true,
        }
    }

    /// Checks the options against the endpoint's documented requirements.
    ///
    /// # Errors
    ///
    /// The first [`DeepgramOptionsError`] found.
    pub fn validate(&self) -> Result<(), DeepgramOptionsError> {
        if self.model.trim().is_empty() {
            return Err(DeepgramOptionsError::EmptyModel);
        }
        if self.sample_rate == 0 {
            return Err(DeepgramOptionsError::ZeroSampleRate);
        }
        if self.channels == 0 {
            return Err(DeepgramOptionsError::ZeroChannels);
        }
        if let Some(utterance_end_ms) = self.utterance_end_ms
            && !self.interim_results
        {
            return Err(DeepgramOptionsError::UtteranceEndWithoutInterimResults { utterance_end_ms });
        }
        Ok(())
    }

    /// Returns the query parameters as name and value pairs, in a fixed order.
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![("model", self.model.clone())];
        if let Some(language) = &self.language {
            pairs.push(("language", language.clone()));
        }
        pairs.push(("encoding", "linear16".to_owned()));
        pairs.push(("sample_rate", self.sample_rate.to_string()));
        pairs.push(("channels", self.channels.to_string()));
        pairs.push(("interim_results", self.interim_results.to_string()));
        pairs.push(("punctuate", self.punctuate.to_string()));
        pairs.push(("smart_format", self.smart_format.to_string()));
        match self.endpointing {
            Endpointing::ServerDefault => {}
            Endpointing::Disabled => pairs.push(("endpointing", "false".to_owned())),
            Endpointing::AfterSilenceMs(ms) => pairs.push(("endpointing", ms.to_string())),
        }
        if let Some(ms) = self.utterance_end_ms {
            pairs.push(("utterance_end_ms", ms.to_string()));
        }
        pairs.push(("vad_events", self.vad_events.to_string()));
        pairs
    }

    /// Returns the URL-encoded query string, without the leading `?`.
    pub fn query_string(&self) -> String {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.query_pairs() {
            serializer.append_pair(name, &value);
        }
        serializer.finish()
    }

    /// Returns the endpoint URL: `base` (such as `wss://api.deepgram.com`, or
    /// a local test server) with the path `/v1/listen` and these options as
    /// its query.
    ///
    /// # Errors
    ///
    /// The [`validate`](Self::validate) errors, and
    /// [`DeepgramOptionsError::UnusableBaseUrl`] for a base URL that cannot
    /// carry a path.
    pub fn url(&self, base: &Url) -> Result<Url, DeepgramOptionsError> {
        self.validate()?;
        if base.cannot_be_a_base() {
            return Err(DeepgramOptionsError::UnusableBaseUrl { base: base.to_string() });
        }
        let mut url = base.clone();
        url.set_path(LISTEN_PATH);
        url.set_query(Some(&self.query_string()));
        Ok(url)
    }
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A transcription result for a span of audio.
///
/// Source: the `Results` response of
/// <https://developers.deepgram.com/reference/listen-live>, and
/// <https://developers.deepgram.com/docs/interim-results> for `is_final`,
/// <https://developers.deepgram.com/documentation/guides/understand-endpointing-interim-results/>
/// for `speech_final` and <https://developers.deepgram.com/docs/finalize> for
/// `from_finalize`.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptResult {
    /// Whether this transcript of the span will not change any more. An
    /// interim result (`false`) is replaced by later results for the same span.
    pub is_final: bool,
    /// Whether endpointing found a pause after this span, which ends the
    /// person's segment of speech.
    pub speech_final: bool,
    /// Whether this result is the response to a [`ControlMessage::Finalize`].
    pub from_finalize: bool,
    /// Start of the span, in seconds from the start of the audio.
    pub start: f64,
    /// Length of the span in seconds.
    pub duration: f64,
    /// The first alternative's transcript; empty when the span has no words
    /// or the message has no alternatives.
    pub transcript: String,
    /// The first alternative's confidence, 0 to 1, when present.
    pub confidence: Option<f64>,
    /// `channel_index` as sent: the channel and the number of channels.
    pub channel_index: Vec<u32>,
}

/// A message the server sends as a text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `"type": "Results"`: an interim or final transcript.
    Results(TranscriptResult),
    /// `"type": "UtteranceEnd"`: no word followed the last finalized word
    /// for `utterance_end_ms`.
    ///
    /// Source: <https://developers.deepgram.com/docs/utterance-end>.
    UtteranceEnd {
        /// End of the last word, in seconds from the start of the audio.
        last_word_end: Option<f64>,
        /// The channel index and the number of channels.
        channel: Vec<u32>,
    },
    /// `"type": "SpeechStarted"`: the voice activity detector heard speech
    /// start.
    ///
    /// Source: <https://developers.deepgram.com/docs/speech-started>.
    SpeechStarted {
        /// When speech started, in seconds from the start of the audio.
        timestamp: Option<f64>,
        /// The channel index and the number of channels.
        channel: Vec<u32>,
    },
    /// `"type": "Metadata"`: information about the request, sent when the
    /// stream closes.
    ///
    /// Source: the `Metadata` response of
    /// <https://developers.deepgram.com/reference/listen-live> and
    /// <https://developers.deepgram.com/docs/close-stream>.
    Metadata {
        /// Deepgram's id of the request, for support requests.
        request_id: Option<String>,
        /// Seconds of audio received.
        duration: Option<f64>,
        /// Number of audio channels.
        channels: Option<u32>,
    },
    /// `"type": "Error"`: an error described in JSON.
    ///
    /// NOTE: Deepgram's streaming docs describe errors only as WebSocket close
    /// frames. This shape (`description`, `message`, `variant`) is the one
    /// Deepgram's Go SDK declares (`pkg/api/live/v1/interfaces/types.go`),
    /// and no documented example of it exists.
    Error {
        /// The description of the failure.
        description: String,
        /// A short message.
        message: String,
        /// The error variant.
        variant: String,
    },
    /// A message of a type this module does not know, or without a `type`.
    Unknown {
        /// The message's `type`, empty when it had none.
        kind: String,
    },
}

/// A server message that is not the JSON Deepgram documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeepgramMessageError {
    /// The text is not a JSON object, or a known message type has fields of
    /// the wrong type.
    #[error("Deepgram sent a malformed message ({detail}): {excerpt:?}")]
    Malformed {
        /// The problem found.
        detail: String,
        /// The start of the message, at most 120 characters.
        excerpt: String,
    },
}

/// The fields of a `Results` message this module reads.
#[derive(Debug, Deserialize)]
struct ResultsWire {
    #[serde(default)]
    is_final: Option<bool>,
    #[serde(default)]
    speech_final: Option<bool>,
    #[serde(default)]
    from_finalize: Option<bool>,
    #[serde(default)]
    start: Option<f64>,
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default)]
    channel_index: Option<Vec<u32>>,
    #[serde(default)]
    channel: Option<ChannelWire>,
}

/// The `channel` object of a `Results` message.
#[derive(Debug, Deserialize)]
struct ChannelWire {
    #[serde(default)]
    alternatives: Option<Vec<AlternativeWire>>,
}

/// One alternative transcript.
#[derive(Debug, Deserialize)]
struct AlternativeWire {
    #[serde(default)]
    transcript: Option<String>,
    #[serde(default)]
    confidence: Option<f64>,
}

/// The fields of an `UtteranceEnd` message.
#[derive(Debug, Deserialize)]
struct UtteranceEndWire {
    #[serde(default)]
    last_word_end: Option<f64>,
    #[serde(default)]
    channel: Option<Vec<u32>>,
}

/// The fields of a `SpeechStarted` message.
#[derive(Debug, Deserialize)]
struct SpeechStartedWire {
    #[serde(default)]
    timestamp: Option<f64>,
    #[serde(default)]
    channel: Option<Vec<u32>>,
}

/// The fields of a `Metadata` message this module reads.
#[derive(Debug, Deserialize)]
struct MetadataWire {
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default)]
    channels: Option<u32>,
}

/// The fields of an `Error` message.
#[derive(Debug, Deserialize)]
struct ErrorWire {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    variant: Option<String>,
}

/// Parses one text frame from the server.
///
/// Unknown fields are ignored, and a message of an unknown type (or with no
/// `type`) becomes [`ServerMessage::Unknown`]. A `Results` message with an
/// empty or missing `alternatives` array has an empty transcript.
///
/// # Errors
///
/// [`DeepgramMessageError::Malformed`] when the text is not a JSON object, or
/// a field of a known message type has the wrong JSON type.
pub fn parse_server_message(text: &str) -> Result<ServerMessage, DeepgramMessageError> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| malformed(format!("not valid JSON: {error}"), text))?;
    let Some(fields) = value.as_object() else {
        return Err(malformed("not a JSON object".to_owned(), text));
    };
    let kind = fields.get("type").and_then(Value::as_str).unwrap_or_default();

    let message = match kind {
        "Results" => {
            let results: ResultsWire = read_fields(&value, kind, text)?;
            let first = results.channel.and_then(|channel| channel.alternatives).unwrap_or_default().into_iter().next();
            let (transcript, confidence) = match first {
                Some(alternative) => (alternative.transcript.unwrap_or_default(), alternative.confidence),
                None => (String::new(), None),
            };
            ServerMessage::Results(TranscriptResult {
                is_final: results.is_final.unwrap_or(false),
                speech_final: results.speech_final.unwrap_or(false),
                from_finalize: results.from_finalize.unwrap_or(false),
                start: results.start.unwrap_or(0.0),
                duration: results.duration.unwrap_or(0.0),
                transcript,
                confidence,
                channel_index: results.channel_index.unwrap_or_default(),
            })
        }
        "UtteranceEnd" => {
            let end: UtteranceEndWire = read_fields(&value, kind, text)?;
            ServerMessage::UtteranceEnd { last_word_end: end.last_word_end, channel: end.channel.unwrap_or_default() }
        }
        "SpeechStarted" => {
            let started: SpeechStartedWire = read_fields(&value, kind, text)?;
            ServerMessage::SpeechStarted { timestamp: started.timestamp, channel: started.channel.unwrap_or_default() }
        }
        "Metadata" => {
            let metadata: MetadataWire = read_fields(&value, kind, text)?;
            ServerMessage::Metadata {
                request_id: metadata.request_id,
                duration: metadata.duration,
                channels: metadata.channels,
            }
        }
        "Error" => {
            let error: ErrorWire = read_fields(&value, kind, text)?;
            ServerMessage::Error {
                description: error.description.unwrap_or_default(),
                message: error.message.unwrap_or_default(),
                variant: error.variant.unwrap_or_default(),
            }
        }
        other => ServerMessage::Unknown { kind: other.to_owned() },
    };
    Ok(message)
}

/// Reads the fields of a message of type `kind` from its parsed JSON.
fn read_fields<'a, T: Deserialize<'a>>(value: &'a Value, kind: &str, text: &str) -> Result<T, DeepgramMessageError> {
    T::deserialize(value)
        .map_err(|error| malformed(format!("a {kind} message has a field of the wrong type: {error}"), text))
}

/// Builds a [`DeepgramMessageError::Malformed`] with the start of `text`.
fn malformed(detail: String, text: &str) -> DeepgramMessageError {
    DeepgramMessageError::Malformed { detail, excerpt: text.chars().take(EXCERPT_CHARS).collect() }
}

/// Turns the server's results into one transcript per utterance.
///
/// Deepgram transcribes a span of audio several times: interim results
/// (`is_final: false`) are guesses that later results replace, and a final
/// result (`is_final: true`) fixes the span's text. An utterance is the run of
/// final results until the person stops speaking, which Deepgram reports as a
/// final result with `speech_final: true` (endpointing found a pause) or as
/// an `UtteranceEnd` message. A final result with `from_finalize: true` also
/// closes the utterance, because the client sends `Finalize` exactly when it
/// wants the pending speech transcribed and ended.
///
/// The assembler returns the utterance's text once, when it closes; an
/// `UtteranceEnd` right after a `speech_final` finds nothing pending and
/// returns nothing. Final results with an empty transcript add nothing, and
/// an utterance with no text is never returned.
#[derive(Debug, Default, Clone)]
pub struct TranscriptAssembler {
    /// The final transcripts of the open utterance, joined by spaces.
    finalized: String,
    /// The latest interim transcript, replaced by each interim result and
    /// cleared by each final result.
    interim: String,
    /// The last [`TranscriptUpdate::Partial`] returned, to skip repeats.
    last_partial: String,
}

impl TranscriptAssembler {
    /// Creates an assembler with no open utterance.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next server message and returns what changed, if anything.
    ///
    /// Interim results give [`TranscriptUpdate::Partial`] with the finalized
    /// text plus the interim text. Final results extend the utterance and
    /// give a partial, or [`TranscriptUpdate::Final`] when they close it.
    /// `UtteranceEnd` closes the utterance. Other messages change nothing.
    /// When the finalized text would exceed [`MAX_UTTERANCE_BYTES`], the
    /// utterance is closed at that point.
    pub fn push(&mut self, message: &ServerMessage) -> Option<TranscriptUpdate> {
        match message {
            ServerMessage::Results(result) => self.push_result(result),
            ServerMessage::UtteranceEnd { .. } => self.close(),
            _ => None,
        }
    }

    /// Closes whatever is pending at the end of the stream and returns its
    /// text: the finalized text plus the last interim text, which no final
    /// result will replace any more. Returns `None` when nothing is pending.
    pub fn finish(&mut self) -> Option<String> {
        let interim = std::mem::take(&mut self.interim);
        append_words(&mut self.finalized, &interim);
        match self.close() {
            Some(TranscriptUpdate::Final(text)) => Some(text),
            _ => None,
        }
    }

    /// Handles a `Results` message.
    fn push_result(&mut self, result: &TranscriptResult) -> Option<TranscriptUpdate> {
        let transcript = result.transcript.trim();

        if !result.is_final {
            self.interim = transcript.to_owned();
            let mut partial = self.finalized.clone();
            append_words(&mut partial, &self.interim);
            return self.partial(partial);
        }

        // A final result replaces the interim guesses for its span.
        self.interim.clear();
        if self.finalized.len() + transcript.len() + 1 > MAX_UTTERANCE_BYTES && !self.finalized.is_empty() {
            // NOTE: only one update can be returned, so when this result is
            // also speech_final its text stays open until the next close.
            let closed = self.close();
            append_words(&mut self.finalized, transcript);
            return closed;
        }
        append_words(&mut self.finalized, transcript);

        if result.speech_final || result.from_finalize {
            return self.close();
        }
        let partial = self.finalized.clone();
        self.partial(partial)
    }

    /// Returns `text` as a partial update unless it is empty or repeats the
    /// last one.
    fn partial(&mut self, text: String) -> Option<TranscriptUpdate> {
        if text.is_empty() || text == self.last_partial {
            return None;
        }
        self.last_partial.clone_from(&text);
        Some(TranscriptUpdate::Partial(text))
    }

    /// Ends the open utterance and returns its text, if it has any.
    fn close(&mut self) -> Option<TranscriptUpdate> {
        self.interim.clear();
        self.last_partial.clear();
        let text = std::mem::take(&mut self.finalized);
        if text.is_empty() { None } else { Some(TranscriptUpdate::Final(text)) }
    }
}

/// Appends `words` to `text`, with a space between them when both are non-empty.
fn append_words(text: &mut String, words: &str) {
    if words.is_empty() {
        return;
    }
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str(words);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a `Results` message with the fields of the Listen reference.
    fn results_json(transcript: &str, is_final: bool, speech_final: bool) -> String {
        serde_json::json!({
            "type": "Results",
            "channel_index": [0, 1],
            "duration": 1.02,
            "start": 0.5,
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {
                "alternatives": [{
                    "transcript": transcript,
                    "confidence": 0.98,
                    "words": [{"word": "another", "start": 0.5, "end": 0.9, "confidence": 0.99, "punctuated_word": "Another"}]
                }]
            },
            "metadata": {
                "request_id": "2479c8c8-8185-40ac-9ac6-f0874419f793",
                "model_info": {"name": "general-nova-3", "version": "2024-01-09.29447", "arch": "nova-3"},
                "model_uuid": "1ed36bac-f71c-4f3f-a31f-02fd6525c489"
            },
            "from_finalize": false
        })
        .to_string()
    }

    fn results(transcript: &str, is_final: bool, speech_final: bool) -> ServerMessage {
        parse_server_message(&results_json(transcript, is_final, speech_final)).expect("results parse")
    }

    fn utterance_end() -> ServerMessage {
        parse_server_message(r#"{"channel": [0, 1], "last_word_end": 2.395, "type": "UtteranceEnd"}"#)
            .expect("utterance end parses")
    }

    fn partial(text: &str) -> Option<TranscriptUpdate> {
        Some(TranscriptUpdate::Partial(text.to_owned()))
    }

    fn final_text(text: &str) -> Option<TranscriptUpdate> {
        Some(TranscriptUpdate::Final(text.to_owned()))
    }

    #[test]
    fn results_message_parses() {
        let message = parse_server_message(&results_json("another big", true, true));

        assert_eq!(
            message,
            Ok(ServerMessage::Results(TranscriptResult {
                is_final: true,
                speech_final: true,
                from_finalize: false,
                start: 0.5,
                duration: 1.02,
                transcript: "another big".to_owned(),
                confidence: Some(0.98),
                channel_index: vec![0, 1],
            }))
        );
    }

    // The example response of the Finalize page, with the type it always has.
    #[test]
    fn from_finalize_is_read() {
        let message = parse_server_message(
            r#"{"type":"Results","from_finalize":true,"is_final":true,"channel":{"alternatives":[{"transcript":"done","confidence":0.9}]}}"#,
        );

        let Ok(ServerMessage::Results(result)) = message else {
            panic!("expected results, got {message:?}");
        };
        assert!(result.from_finalize);
        assert!(result.is_final);
        assert!(!result.speech_final);
        assert_eq!(result.transcript, "done");
    }

    #[test]
    fn empty_or_missing_alternatives_give_no_transcript() {
        let cases = [
            r#"{"type":"Results","is_final":true,"channel":{"alternatives":[]}}"#,
            r#"{"type":"Results","is_final":true,"channel":{"alternatives":null}}"#,
            r#"{"type":"Results","is_final":true,"channel":{}}"#,
            r#"{"type":"Results","is_final":true}"#,
            r#"{"type":"Results","is_final":true,"channel":{"alternatives":[{"confidence":0.0,"words":[]}]}}"#,
        ];
        for text in cases {
            let message = parse_server_message(text);

            let Ok(ServerMessage::Results(result)) = message else {
                panic!("expected results for {text}, got {message:?}");
            };
            assert_eq!(result.transcript, "", "{text}");
        }
    }

    // The example message of the Utterance End page.
    #[test]
    fn utterance_end_parses() {
        assert_eq!(utterance_end(), ServerMessage::UtteranceEnd { last_word_end: Some(2.395), channel: vec![0, 1] });
    }

    // The example message of the Speech Started page.
    #[test]
    fn speech_started_parses() {
        let message = parse_server_message(r#"{"type": "SpeechStarted", "channel": [0, 1], "timestamp": 9.54}"#);

        assert_eq!(message, Ok(ServerMessage::SpeechStarted { timestamp: Some(9.54), channel: vec![0, 1] }));
    }

    #[test]
    fn metadata_parses() {
        let message = parse_server_message(
            r#"{"type":"Metadata","transaction_key":"deprecated","request_id":"a847f427-4ad5-4d67-9b95-db801e58251c","sha256":"154e291ecfa8be6ab8343560bcc109008fa7853eb5372533e8efdefc9b504c33","created":"2024-05-12T18:57:13.426Z","duration":25.933313,"channels":1,"models":["30089e05-99d1-4376-b32e-c263170674af"],"model_info":{"30089e05-99d1-4376-b32e-c263170674af":{"name":"2-general-nova","version":"2024-01-09.29447","arch":"nova-2"}}}"#,
        );

        assert_eq!(
            message,
            Ok(ServerMessage::Metadata {
                request_id: Some("a847f427-4ad5-4d67-9b95-db801e58251c".to_owned()),
                duration: Some(25.933313),
                channels: Some(1),
            })
        );
    }

    #[test]
    fn error_message_parses() {
        let message = parse_server_message(
            r#"{"type":"Error","description":"Failed to decode audio","message":"Bad audio","variant":"DATA-0000"}"#,
        );

        assert_eq!(
            message,
            Ok(ServerMessage::Error {
                description: "Failed to decode audio".to_owned(),
                message: "Bad audio".to_owned(),
                variant: "DATA-0000".to_owned(),
            })
        );
    }

    #[test]
    fn unknown_types_are_kept_by_name() {
        assert_eq!(
            parse_server_message(r#"{"type":"TurnInfo","event":"Update"}"#),
            Ok(ServerMessage::Unknown { kind: "TurnInfo".to_owned() })
        );
        assert_eq!(
            parse_server_message(r#"{"from_finalize":true}"#),
            Ok(ServerMessage::Unknown { kind: String::new() })
        );
        assert_eq!(parse_server_message(r#"{"type":7}"#), Ok(ServerMessage::Unknown { kind: String::new() }));
    }

    #[test]
    fn malformed_messages_are_errors() {
        let long = format!("{{\"type\":\"Results\",{}", "q".repeat(300));
        let cases = [
            "not json".to_owned(),
            "[1,2]".to_owned(),
            "\"Results\"".to_owned(),
            r#"{"type":"Results","is_final":"yes"}"#.to_owned(),
            r#"{"type":"Results","channel":{"alternatives":[{"transcript":5}]}}"#.to_owned(),
            r#"{"type":"UtteranceEnd","channel":"zero"}"#.to_owned(),
            r#"{"type":"SpeechStarted","timestamp":"soon"}"#.to_owned(),
            long.clone(),
        ];
        for text in &cases {
            let message = parse_server_message(text);

            let Err(DeepgramMessageError::Malformed { excerpt, .. }) = message else {
                panic!("expected malformed for {text}, got {message:?}");
            };
            assert!(excerpt.chars().count() <= EXCERPT_CHARS, "{text}");
            assert!(text.starts_with(&excerpt), "{text}");
        }
    }

    #[test]
    fn control_messages_match_docs() {
        let cases = [
            (ControlMessage::KeepAlive, serde_json::json!({"type": "KeepAlive"})),
            (ControlMessage::Finalize, serde_json::json!({"type": "Finalize"})),
            (ControlMessage::CloseStream, serde_json::json!({"type": "CloseStream"})),
        ];
        for (message, expected) in cases {
            let from_text: Value = serde_json::from_str(message.as_json()).expect("control message is JSON");

            assert_eq!(from_text, expected, "{message:?}");
            assert_eq!(serde_json::to_value(message).expect("serializes"), expected, "{message:?}");
        }
    }

    #[test]
    fn default_options_render_documented_query() {
        let options = ListenOptions { language: Some("en-US".to_owned()), ..ListenOptions::new() };

        assert_eq!(
            options.query_string(),
            "model=nova-3&language=en-US&encoding=linear16&sample_rate=16000&channels=1&interim_results=true\
             &punctuate=true&smart_format=true&endpointing=300&utterance_end_ms=1000&vad_events=true"
        );
    }

    #[test]
    fn endpointing_variants_render() {
        let disabled = ListenOptions { endpointing: Endpointing::Disabled, ..ListenOptions::new() };
        let server_default =
            ListenOptions { endpointing: Endpointing::ServerDefault, utterance_end_ms: None, ..ListenOptions::new() };

        assert!(disabled.query_string().contains("&endpointing=false&"));
        assert!(!server_default.query_string().contains("endpointing"));
        assert!(!server_default.query_string().contains("utterance_end_ms"));
    }

    #[test]
    fn query_values_are_encoded() {
        let options = ListenOptions { model: "nova 3&x=y".to_owned(), ..ListenOptions::new() };

        assert!(options.query_string().starts_with("model=nova+3%26x%3Dy&"), "{}", options.query_string());
    }

    #[test]
    fn url_joins_base_path_and_query() {
        let base = Url::parse("ws://127.0.0.1:9000").expect("valid URL");

        let url = ListenOptions::new().url(&base).expect("valid options");

        assert_eq!(url.scheme(), "ws");
        assert_eq!(url.path(), "/v1/listen");
        assert_eq!(url.query(), Some(ListenOptions::new().query_string().as_str()));
    }

    #[test]
    fn invalid_options_are_rejected() {
        let base = Url::parse("wss://api.deepgram.com").expect("valid URL");
        let cases = [
            (ListenOptions { model: " ".to_owned(), ..ListenOptions::new() }, DeepgramOptionsError::EmptyModel),
            (ListenOptions { sample_rate: 0, ..ListenOptions::new() }, DeepgramOptionsError::ZeroSampleRate),
            (ListenOptions { channels: 0, ..ListenOptions::new() }, DeepgramOptionsError::ZeroChannels),
            (
                ListenOptions { interim_results: false, ..ListenOptions::new() },
                DeepgramOptionsError::UtteranceEndWithoutInterimResults { utterance_end_ms: 1000 },
            ),
        ];
        for (options, expected) in cases {
            assert_eq!(options.validate(), Err(expected.clone()));
            assert_eq!(options.url(&base), Err(expected));
        }
        let mailto = Url::parse("mailto:someone@example.com").expect("valid URL");
        assert!(matches!(ListenOptions::new().url(&mailto), Err(DeepgramOptionsError::UnusableBaseUrl { .. })));
    }

    #[test]
    fn assembler_builds_utterance_from_interims_and_finals() {
        let mut assembler = TranscriptAssembler::new();

        assert_eq!(assembler.push(&results("hello", false, false)), partial("hello"));
        assert_eq!(assembler.push(&results("hello there", false, false)), partial("hello there"));
        assert_eq!(assembler.push(&results("hello there", true, false)), None);
        assert_eq!(assembler.push(&results("how", false, false)), partial("hello there how"));
        assert_eq!(assembler.push(&results("how are you", true, true)), final_text("hello there how are you"));
        assert_eq!(assembler.push(&results("next", false, false)), partial("next"));
    }

    #[test]
    fn final_without_interims_gives_partial() {
        let mut assembler = TranscriptAssembler::new();

        assert_eq!(assembler.push(&results("hello", true, false)), partial("hello"));
        assert_eq!(assembler.push(&utterance_end()), final_text("hello"));
    }

    #[test]
    fn utterance_end_after_speech_final_gives_nothing() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&results("turn the lights on", false, false));

        assert_eq!(assembler.push(&results("turn the lights on", true, true)), final_text("turn the lights on"));
        assert_eq!(assembler.push(&utterance_end()), None);
        assert_eq!(assembler.finish(), None);
    }

    #[test]
    fn utterance_end_closes_finalized_text() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&results("one", true, false));
        assembler.push(&results("two", true, false));

        assert_eq!(assembler.push(&utterance_end()), final_text("one two"));
        assert_eq!(assembler.push(&utterance_end()), None);
    }

    #[test]
    fn empty_finals_are_ignored() {
        let mut assembler = TranscriptAssembler::new();

        assert_eq!(assembler.push(&results("", true, false)), None);
        assert_eq!(assembler.push(&results("", true, true)), None);
        assert_eq!(assembler.push(&results("  ", true, true)), None);
        assert_eq!(assembler.push(&results("", false, false)), None);
        assert_eq!(assembler.push(&utterance_end()), None);
        assert_eq!(assembler.finish(), None);
    }

    #[test]
    fn empty_final_with_speech_final_closes_earlier_text() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&results("yes", true, false));

        assert_eq!(assembler.push(&results("", true, true)), final_text("yes"));
    }

    #[test]
    fn final_replaces_interim_guess() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&results("wreck a nice", false, false));

        assert_eq!(assembler.push(&results("recognize", true, false)), partial("recognize"));
        assert_eq!(assembler.finish(), Some("recognize".to_owned()));
    }

    #[test]
    fn repeated_partials_are_skipped() {
        let mut assembler = TranscriptAssembler::new();

        assert_eq!(assembler.push(&results("same", false, false)), partial("same"));
        assert_eq!(assembler.push(&results("same", false, false)), None);
        assert_eq!(assembler.push(&results("same", true, false)), None);
    }

    #[test]
    fn from_finalize_closes_utterance() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&results("almost", false, false));
        let finalized = parse_server_message(
            r#"{"type":"Results","is_final":true,"speech_final":false,"from_finalize":true,"channel":{"alternatives":[{"transcript":"almost done"}]}}"#,
        )
        .expect("results parse");

        assert_eq!(assembler.push(&finalized), final_text("almost done"));
    }

    #[test]
    fn finish_closes_pending_text_once() {
        let mut assembler = TranscriptAssembler::new();
        assembler.push(&results("good", true, false));
        assembler.push(&results("morning every", false, false));

        assert_eq!(assembler.finish(), Some("good morning every".to_owned()));
        assert_eq!(assembler.finish(), None);
    }

    #[test]
    fn other_messages_change_nothing() {
        let mut assembler = TranscriptAssembler::new();
        let others = [
            ServerMessage::SpeechStarted { timestamp: Some(1.0), channel: vec![0, 1] },
            ServerMessage::Metadata { request_id: None, duration: None, channels: None },
            ServerMessage::Unknown { kind: "Future".to_owned() },
        ];

        for message in &others {
            assert_eq!(assembler.push(message), None, "{message:?}");
        }
        assert_eq!(assembler.finish(), None);
    }

    #[test]
    fn long_utterance_is_closed_at_limit() {
        let mut assembler = TranscriptAssembler::new();
        let segment = "word ".repeat(400);
        let segment = segment.trim();
        let mut closed = Vec::new();

        for _ in 0..20 {
            if let Some(TranscriptUpdate::Final(text)) = assembler.push(&results(segment, true, false)) {
                closed.push(text);
            }
        }
        closed.extend(assembler.finish());

        assert!(closed.len() > 1, "expected the utterance to be split, got {} pieces", closed.len());
        assert!(closed.iter().all(|text| text.len() <= MAX_UTTERANCE_BYTES));
        assert_eq!(closed.iter().map(|text| text.split(' ').count()).sum::<usize>(), 20 * 400);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse_server_message(&text);
        }

        #[test]
        fn assembler_never_returns_empty_text(steps in proptest::collection::vec((0u8..4, "[ a-c]{0,6}", any::<bool>(), any::<bool>()), 0..40)) {
            let mut assembler = TranscriptAssembler::new();
            for (kind, transcript, is_final, speech_final) in steps {
                let message = match kind {
                    0 | 1 => results(&transcript, is_final, speech_final),
                    2 => utterance_end(),
                    _ => ServerMessage::SpeechStarted { timestamp: None, channel: Vec::new() },
                };
                match assembler.push(&message) {
                    Some(TranscriptUpdate::Final(text) | TranscriptUpdate::Partial(text)) => prop_assert!(!text.trim().is_empty()),
                    None => {}
                }
            }
            if let Some(text) = assembler.finish() {
                prop_assert!(!text.trim().is_empty());
            }
        }
    }
}
