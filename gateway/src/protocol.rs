//! The session protocol spoken over one WebSocket, version [`PROTOCOL_VERSION`].
//!
//! The client opens with a JSON [`StartMessage`], then streams binary audio
//! frames and may send a JSON [`ClientMessage::Stop`]. The server answers
//! with JSON [`ServerEvent`]s and binary reply audio (PCM16 little-endian).
//! `docs/GATEWAY_PROTOCOL.md` describes every message and close code.
//!
//! Every client message is parsed into these types with unknown fields
//! rejected, and then checked by [`StartMessage::validate`]; a failure is a
//! [`ProtocolError`] that names the offending field.

use std::time::Duration;

use mentis_pipeline::PrivacyTier;
use serde::{Deserialize, Serialize};

/// The protocol version this server speaks. A start message with another
/// version is rejected, naming the field `version`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The lowest input or output sample rate accepted, in Hz.
pub const MIN_SAMPLE_RATE: u32 = 8_000;

/// The highest input or output sample rate accepted, in Hz.
pub const MAX_SAMPLE_RATE: u32 = 48_000;

/// Sample rates accepted for PCM16 audio: the rates the resampler converts
/// from and to (8 to 48 kHz).
pub const PCM_RATES: [u32; 8] = mentis_stages::resample::SUPPORTED_RATES;

/// Sample rates accepted for Opus audio (RFC 6716 decoder rates).
pub const OPUS_RATES: [u32; 5] = mentis_stages::opus::OPUS_RATES;

/// Maximum channels of an input stream.
pub const MAX_CHANNELS: u16 = 2;

/// The shortest audio frame accepted, 2.5 ms: the shortest Opus frame. A
/// shorter PCM frame is legal audio but would cost one message per sample or two.
pub const MIN_FRAME: Duration = Duration::from_micros(2_500);

/// Maximum length of a close frame's reason, in bytes
/// (RFC 6455 section 5.5: a control frame payload is at most 125 bytes, two
/// of which hold the code).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Close codes the server sends. 1000 to 1011 are RFC 6455 codes; 4000 to
/// 4999 are the range RFC 6455 leaves to applications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The session ended normally: the client closed or sent `stop`.
    Normal = 1000,
    /// The server is shutting down; connect again, possibly elsewhere.
    GoingAway = 1001,
    /// A text message was not valid UTF-8.
    InvalidPayload = 1007,
    /// A message or frame is larger than the tenant's limit.
    MessageTooBig = 1009,
    /// The server failed in a way that is not the client's fault.
    InternalError = 1011,
    /// The server cannot take the session now, such as a pipeline at its
    /// session limit; try again later (RFC 6455 registered code).
    TryAgainLater = 1013,
    /// A client message is invalid; the preceding error event names the field.
    InvalidMessage = 4000,
    /// The client missed two pongs in a row.
    PingTimeout = 4001,
    /// The session reached the tenant's longest session duration.
    SessionTimeLimit = 4002,
    /// The tenant's audio minutes for the day are used up.
    AudioQuota = 4003,
    /// The pipeline or tier the start message asked for is not allowed.
    Forbidden = 4004,
    /// A stage of the pipeline failed or timed out; the error event names it.
    PipelineFailed = 4005,
    /// No start message arrived in time.
    StartTimeout = 4006,
}

impl CloseCode {
    /// Returns the numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Returns the code for a number, if the server defines it.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::InvalidPayload,
            CloseCode::MessageTooBig,
            CloseCode::InternalError,
            CloseCode::TryAgainLater,
            CloseCode::InvalidMessage,
            CloseCode::PingTimeout,
            CloseCode::SessionTimeLimit,
            CloseCode::AudioQuota,
            CloseCode::Forbidden,
            CloseCode::PipelineFailed,
            CloseCode::StartTimeout,
        ]
        .into_iter()
        .find(|candidate| candidate.code() == code)
    }
}

/// The encoding of the binary audio frames a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioEncoding {
    /// Signed 16-bit little-endian PCM, channels interleaved; one frame per message.
    Pcm16,
    /// One Opus packet (RFC 6716) per message.
    Opus,
}

/// The format of the audio a client streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputAudio {
    /// PCM16 or Opus.
    pub encoding: AudioEncoding,
    /// Samples per second per channel, in Hz.
    pub sample_rate: u32,
    /// Interleaved channels, 1 or 2.
    pub channels: u16,
}

/// The format of the reply audio the server sends: mono PCM16 little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputAudio {
    /// Only `pcm16` is served in protocol version 1.
    pub encoding: AudioEncoding,
    /// Samples per second, in Hz.
    pub sample_rate: u32,
}

impl Default for OutputAudio {
    fn default() -> Self {
        OutputAudio { encoding: AudioEncoding::Pcm16, sample_rate: 16_000 }
    }
}

/// The user's agreement to storage of this session's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentFlags {
    /// Transcripts of the user's speech and the replies may be stored.
    #[serde(default)]
    pub store_transcripts: bool,
    /// The user's audio may be stored.
    #[serde(default)]
    pub store_audio: bool,
}

/// The first message of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartMessage {
    /// The protocol version the client speaks; must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The format of the binary frames that follow.
    pub audio: InputAudio,
    /// The format of the reply audio; mono PCM16 at 16 kHz when omitted.
    #[serde(default)]
    pub output: OutputAudio,
    /// The name of the pipeline to run, as the server registered it.
    pub pipeline: String,
    /// The widest privacy tier the client accepts for this session.
    pub tier: PrivacyTier,
    /// The consent to storage of the session's data.
    #[serde(default)]
    pub consent: ConsentFlags,
}

/// A message from the client, sent as a WebSocket text message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Opens the session; only valid as the first message.
    Start(StartMessage),
    /// No more audio follows: the server finishes the reply in progress,
    /// sends `ended` and closes with 1000.
    Stop,
}

/// A client message that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field {field}: {message}")]
pub struct ProtocolError {
    /// The path of the offending field, such as `audio.sample_rate`, or
    /// `message` when the message as a whole is wrong.
    pub field: String,
    /// The problem and the expected value.
    pub message: String,
}

impl ProtocolError {
    /// Creates an error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ProtocolError { field: field.into(), message: message.into() }
    }
}

/// Parses a text message, naming the field of any type error or unknown field.
///
/// The message is read as a JSON object first and dispatched on `type`, so
/// that errors inside the start message carry their full path (serde's
/// internally tagged enums buffer their content and lose it).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| ProtocolError::new("message", format!("not a JSON object: {error}")))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(ProtocolError::new("message", "expected a JSON object"));
    };
    let kind = match object.remove("type") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => return Err(ProtocolError::new("type", "expected a string: \"start\" or \"stop\"")),
        None => return Err(ProtocolError::new("type", "missing field `type`; expected \"start\" or \"stop\"")),
    };
    match kind.as_str() {
        "start" => {
            let parsed: Result<StartMessage, _> = serde_path_to_error::deserialize(serde_json::Value::Object(object));
            parsed.map(ClientMessage::Start).map_err(|error| {
                let path = error.path().to_string();
                let field = if path.is_empty() || path == "." { "message".to_owned() } else { path };
                ProtocolError::new(field, error.into_inner().to_string())
            })
        }
        "stop" => match object.keys().next() {
            Some(extra) => Err(ProtocolError::new("message", format!("unknown field `{extra}`; stop takes no fields"))),
            None => Ok(ClientMessage::Stop),
        },
        other => Err(ProtocolError::new("type", format!("unknown message type {other:?}; expected \"start\" or \"stop\""))),
    }
}

impl StartMessage {
    /// Checks the values serde cannot: version, sample rates, channels.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.version != PROTOCOL_VERSION {
            return Err(ProtocolError::new(
                "version",
                format!("protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}", self.version),
            ));
        }

        let rates: &[u32] = match self.audio.encoding {
            AudioEncoding::Pcm16 => &PCM_RATES,
            AudioEncoding::Opus => &OPUS_RATES,
        };
        if !rates.contains(&self.audio.sample_rate) {
            return Err(ProtocolError::new(
                "audio.sample_rate",
                format!("{} Hz is not accepted for {:?} input; use one of {rates:?} Hz", self.audio.sample_rate, self.audio.encoding),
            ));
        }
        if self.audio.channels == 0 || self.audio.channels > MAX_CHANNELS {
            return Err(ProtocolError::new(
                "audio.channels",
                format!("{} channels are not accepted; use 1 or {MAX_CHANNELS}", self.audio.channels),
            ));
        }

        if self.output.encoding != AudioEncoding::Pcm16 {
            return Err(ProtocolError::new("output.encoding", "protocol version 1 sends reply audio as pcm16 only"));
        }
        if !PCM_RATES.contains(&self.output.sample_rate) {
            return Err(ProtocolError::new(
                "output.sample_rate",
                format!("{} Hz is not accepted for reply audio; use one of {PCM_RATES:?} Hz", self.output.sample_rate),
            ));
        }

        if self.pipeline.is_empty() || self.pipeline.len() > 64 {
            return Err(ProtocolError::new("pipeline", "the pipeline name must be 1 to 64 characters"));
        }
        Ok(())
    }
}

/// Limits that apply to the session, as announced in [`ServerEvent::Ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// The largest message accepted, in bytes; a larger one closes with 1009.
    pub max_message_bytes: usize,
    /// Maximum audio frame accepted, in milliseconds.
    pub max_frame_ms: u64,
    /// Maximum session duration, in seconds, after which the server closes with 4002.
    pub max_session_seconds: u64,
}

/// Why a session ended, as reported in [`ServerEvent::Ended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The client sent `stop` and the pipeline drained.
    Stopped,
    /// The server is shutting down.
    ServerShutdown,
    /// A client message was invalid.
    InvalidMessage,
    /// A message was larger than the limit.
    MessageTooBig,
    /// The session reached its longest duration.
    SessionTimeLimit,
    /// The tenant's daily audio quota is used up.
    AudioQuota,
    /// A stage failed or timed out.
    PipelineFailed,
}

/// An error code in [`ServerEvent::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A client message is invalid; `field` names what is wrong.
    InvalidMessage,
    /// A message is larger than the limit.
    MessageTooBig,
    /// The pipeline or tier is not allowed for this tenant or token.
    Forbidden,
    /// The requested pipeline does not exist on this server.
    UnknownPipeline,
    /// A limit of the tenant was reached.
    LimitExceeded,
    /// A stage of the pipeline failed; `stage` names it.
    StageFailed,
    /// The server failed in a way that is not the client's fault.
    Internal,
}

/// A message from the server, sent as a WebSocket text message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// The session is running; binary audio may follow.
    Ready {
        /// The session id, for logs and support requests.
        session_id: String,
        /// The protocol version of this server.
        protocol_version: u32,
        /// The pipeline that runs.
        pipeline: String,
        /// The tier the pipeline was built for.
        tier: PrivacyTier,
        /// The reply audio format.
        output: OutputAudio,
        /// The limits of this session.
        limits: SessionLimits,
    },
    /// The voice activity detector heard the user start speaking.
    SpeechStarted {
        /// The turn that starts.
        turn: u64,
    },
    /// The voice activity detector decided the user finished the turn.
    EndOfTurn {
        /// The turn that ended.
        turn: u64,
    },
    /// A transcript of the user's speech.
    Transcript {
        /// The turn.
        turn: u64,
        /// Whether a later transcript replaces this one.
        is_final: bool,
        /// The recognised words.
        text: String,
        /// Start of the transcribed speech on the input timeline, in milliseconds.
        start_ms: u64,
        /// End of the transcribed speech on the input timeline, in milliseconds.
        end_ms: u64,
    },
    /// A piece of the LLM's reply.
    LlmText {
        /// The turn.
        turn: u64,
        /// The text delta.
        text: String,
        /// Whether this is the last piece of the reply.
        last: bool,
    },
    /// The user interrupted the reply of `turn`: clear the playback buffer.
    /// No more reply audio of `turn` or earlier turns follows.
    Interrupt {
        /// The interrupted turn.
        turn: u64,
    },
    /// Latencies of a turn, sent when its first reply audio leaves the server.
    TurnMetrics {
        /// The turn.
        turn: u64,
        /// End of speech to final transcript, in milliseconds.
        final_transcript_ms: Option<f64>,
        /// End of speech to the first LLM token, in milliseconds.
        first_token_ms: Option<f64>,
        /// End of speech to the first synthesized audio, in milliseconds.
        first_tts_audio_ms: Option<f64>,
        /// End of speech to the first reply audio sent, in milliseconds.
        voice_to_voice_ms: Option<f64>,
    },
    /// Something went wrong. When `fatal`, a close frame follows.
    Error {
        /// The kind of error.
        code: ErrorCode,
        /// The problem and the fix.
        message: String,
        /// The offending field of a client message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        /// The stage that failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
        /// Whether the session ends.
        fatal: bool,
    },
    /// The session ended; a close frame follows.
    Ended {
        /// The reason it ended.
        reason: EndReason,
        /// Binary audio frames received from the client.
        frames_received: u64,
        /// Audio received from the client, in milliseconds.
        audio_ms_received: u64,
        /// Frames the pipeline's edges discarded.
        frames_dropped: u64,
        /// Turns that got reply audio.
        turns: u64,
    },
}

impl ServerEvent {
    /// Creates a fatal or non-fatal error event about a client field.
    pub fn invalid(error: &ProtocolError) -> Self {
        ServerEvent::Error {
            code: ErrorCode::InvalidMessage,
            message: error.message.clone(),
            field: Some(error.field.clone()),
            stage: None,
            fatal: true,
        }
    }

    /// Returns the event as JSON text.
    pub fn to_json(&self) -> String {
        // These types hold strings, numbers and options only, which always serialize.
        serde_json::to_string(self).unwrap_or_else(|error| format!("{{\"type\":\"error\",\"code\":\"internal\",\"message\":\"{error}\",\"fatal\":true}}"))
    }
}

/// Cuts a close reason to [`MAX_CLOSE_REASON_BYTES`] at a character boundary.
pub fn close_reason(text: &str) -> String {
    if text.len() <= MAX_CLOSE_REASON_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"type":"start","version":1,"audio":{"encoding":"pcm16","sample_rate":16000,"channels":1},"pipeline":"loadtest","tier":"on_device"}"#;

    #[test]
    fn start_parses_with_defaults() {
        let ClientMessage::Start(start) = parse_client_message(START).expect("valid start") else {
            panic!("expected a start message");
        };
        assert_eq!(start.output, OutputAudio::default());
        assert_eq!(start.consent, ConsentFlags::default());
        assert_eq!(start.validate(), Ok(()));
    }

    #[test]
    fn unknown_field_is_named() {
        let text = START.replace("\"channels\":1", "\"channels\":1,\"gain\":3");
        let error = parse_client_message(&text).expect_err("unknown field");
        assert_eq!(error.field, "audio.gain");
        assert!(error.message.contains("gain"), "{error}");
    }

    #[test]
    fn unknown_top_level_field_is_named() {
        let text = START.replace("\"version\":1", "\"version\":1,\"debug\":true");
        let error = parse_client_message(&text).expect_err("unknown field");
        assert!(error.message.contains("debug"), "{error}");
    }

    #[test]
    fn wrong_type_names_field_path() {
        let text = START.replace("\"sample_rate\":16000", "\"sample_rate\":\"fast\"");
        let error = parse_client_message(&text).expect_err("wrong type");
        assert_eq!(error.field, "audio.sample_rate");
    }

    #[test]
    fn absurd_sample_rate_is_rejected() {
        let text = START.replace("16000", "4000000");
        let ClientMessage::Start(start) = parse_client_message(&text).expect("parses") else {
            panic!("expected a start message");
        };
        let error = start.validate().expect_err("absurd rate");
        assert_eq!(error.field, "audio.sample_rate");
    }

    #[test]
    fn opus_rejects_44k1() {
        let text = START.replace("pcm16", "opus").replace("16000", "44100");
        let ClientMessage::Start(start) = parse_client_message(&text).expect("parses") else {
            panic!("expected a start message");
        };
        assert_eq!(start.validate().expect_err("44.1 kHz Opus").field, "audio.sample_rate");
    }

    #[test]
    fn channels_and_version_are_checked() {
        for (from, to, field) in [("\"channels\":1", "\"channels\":3", "audio.channels"), ("\"version\":1", "\"version\":2", "version")] {
            let text = START.replace(from, to);
            let ClientMessage::Start(start) = parse_client_message(&text).expect("parses") else {
                panic!("expected a start message");
            };
            assert_eq!(start.validate().expect_err(field).field, field);
        }
    }

    #[test]
    fn unknown_type_is_rejected() {
        let error = parse_client_message(r#"{"type":"reboot"}"#).expect_err("unknown type");
        assert!(error.message.contains("reboot"), "{error}");
    }

    #[test]
    fn stop_rejects_extra_fields() {
        assert_eq!(parse_client_message(r#"{"type":"stop"}"#), Ok(ClientMessage::Stop));
        assert!(parse_client_message(r#"{"type":"stop","now":true}"#).is_err());
    }

    #[test]
    fn not_json_is_rejected() {
        let error = parse_client_message("hello").expect_err("not JSON");
        assert_eq!(error.field, "message");
    }

    #[test]
    fn close_reason_cuts_at_char_boundary() {
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [1000, 1009, 4000, 4006] {
            assert_eq!(CloseCode::from_code(code).map(CloseCode::code), Some(code));
        }
        assert_eq!(CloseCode::from_code(4999), None);
    }
}
