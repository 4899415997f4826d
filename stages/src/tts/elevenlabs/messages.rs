//! ElevenLabs text to speech over a WebSocket with streamed text input
//! (`wss://api.elevenlabs.io/v1/text-to-speech/{voice_id}/stream-input`): the
//! connection URL, the client's messages, and the server's audio messages.
//!
//! The client opens the stream with a message whose text is a single space,
//! sends the reply's text in pieces that each end with a space, and ends the
//! input with an empty text. The server responds with JSON messages carrying
//! base64 audio in the requested output format, then a message with
//! `isFinal: true`. With `output_format=pcm_16000` the audio is 16-bit
//! little-endian PCM at 16 kHz.
//!
//! Source for every shape here, unless a comment names another:
//! <https://elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-stream-input>
//! (its AsyncAPI specification).
//!
//! Everything here is pure: no I/O, and no input makes it panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::{Map, Value};
use url::Url;

/// Maximum number of characters of a malformed message kept in
/// [`ElevenLabsMessageError`], so an error never carries a whole message.
const EXCERPT_CHARS: usize = 120;

/// Maximum number of field names kept in [`ServerMessage::Unknown`].
const MAX_UNKNOWN_FIELDS: usize = 8;

/// The keep-alive message: a single space. The server closes a connection
/// that receives nothing for `inactivity_timeout` seconds (20 by default);
/// each space restarts that timer without adding text to speak.
///
/// Source: <https://help.elevenlabs.io/hc/en-us/articles/28084868106513-How-can-I-keep-the-WebSocket-open>.
pub const KEEP_ALIVE_MESSAGE: &str = r#"{"text":" "}"#;

/// The end-of-input message (`CloseConnection`): an empty text. The server
/// generates audio for the text still buffered, sends the final message and
/// closes the connection.
pub const END_OF_INPUT_MESSAGE: &str = r#"{"text":""}"#;

/// Largest `inactivity_timeout` the server accepts, in seconds.
///
/// Source: <https://elevenlabs.io/blog/websocket-improvements-reliability-and-custom-timeout>.
pub const MAX_INACTIVITY_TIMEOUT_S: u32 = 180;

/// Smallest and largest entry of a `chunk_length_schedule`, in characters.
pub const CHUNK_LENGTH_RANGE: std::ops::RangeInclusive<u32> = 50..=500;

/// A raw PCM output format: 16-bit little-endian samples (S16LE) at the
/// named rate.
///
/// NOTE: the output format table names only the sample format and rate. One
/// channel is assumed, as the rest of this crate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcmOutputFormat {
    /// `pcm_8000`.
    Pcm8000,
    /// `pcm_16000`.
    Pcm16000,
    /// `pcm_22050`.
    Pcm22050,
    /// `pcm_24000`.
    Pcm24000,
    /// `pcm_44100`.
    Pcm44100,
}

impl PcmOutputFormat {
    /// Returns the `output_format` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            PcmOutputFormat::Pcm8000 => "pcm_8000",
            PcmOutputFormat::Pcm16000 => "pcm_16000",
            PcmOutputFormat::Pcm22050 => "pcm_22050",
            PcmOutputFormat::Pcm24000 => "pcm_24000",
            PcmOutputFormat::Pcm44100 => "pcm_44100",
        }
    }

    /// Returns the sample rate in Hz.
    pub fn sample_rate(self) -> u32 {
        match self {
            PcmOutputFormat::Pcm8000 => 8000,
            PcmOutputFormat::Pcm16000 => 16_000,
            PcmOutputFormat::Pcm22050 => 22_050,
            PcmOutputFormat::Pcm24000 => 24_000,
            PcmOutputFormat::Pcm44100 => 44_100,
        }
    }
}

/// A connection setting or client message the service would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElevenLabsConfigError {
    /// The voice id is empty.
    #[error("the ElevenLabs voice id is empty; set the id of the voice to speak with")]
    EmptyVoiceId,
    /// The model id is empty.
    #[error("the ElevenLabs model id is empty; set a model such as \"eleven_flash_v2_5\"")]
    EmptyModelId,
    /// `inactivity_timeout` is above the maximum of 180 seconds.
    #[error("inactivity_timeout is {seconds} s but ElevenLabs accepts at most 180 s; lower it")]
    InactivityTimeoutTooLong {
        /// The configured timeout in seconds.
        seconds: u32,
    },
    /// A `chunk_length_schedule` is empty or has an entry outside 50 to 500.
    #[error(
        "chunk_length_schedule {schedule:?} is invalid: it needs at least one entry, each from 50 to 500 characters"
    )]
    InvalidChunkSchedule {
        /// The schedule as given.
        schedule: Vec<u32>,
    },
    /// The base URL cannot take a path (such as `mailto:` or `data:` URLs).
    #[error("the ElevenLabs base URL {base:?} cannot carry the stream-input path; use a ws:// or wss:// URL")]
    UnusableBaseUrl {
        /// The base URL as given.
        base: String,
    },
}

/// The query parameters of a stream-input connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInputOptions {
    /// The model, such as `"eleven_flash_v2_5"`.
    pub model_id: String,
    /// The audio format of the server's messages.
    pub output_format: PcmOutputFormat,
    /// Seconds without a client message before the server closes the
    /// connection, at most [`MAX_INACTIVITY_TIMEOUT_S`]; the server's default
    /// (20) when `None`.
    pub inactivity_timeout_s: Option<u32>,
}

impl StreamInputOptions {
    /// Options for `model_id` with 16 kHz PCM output and the server's
    /// inactivity timeout.
    pub fn new(model_id: impl Into<String>) -> Self {
        StreamInputOptions {
            model_id: model_id.into(),
            output_format: PcmOutputFormat::Pcm16000,
            inactivity_timeout_s: None,
        }
    }

    /// Checks the options against the endpoint's documented limits.
    ///
    /// # Errors
    ///
    /// [`ElevenLabsConfigError::EmptyModelId`] or
    /// [`ElevenLabsConfigError::InactivityTimeoutTooLong`].
    pub fn validate(&self) -> Result<(), ElevenLabsConfigError> {
        if self.model_id.trim().is_empty() {
            return Err(ElevenLabsConfigError::EmptyModelId);
        }
        if let Some(seconds) = self.inactivity_timeout_s
            && seconds > MAX_INACTIVITY_TIMEOUT_S
        {
            return Err(ElevenLabsConfigError::InactivityTimeoutTooLong { seconds });
        }
        Ok(())
    }

    /// Returns the URL-encoded query string, without the leading `?`.
    pub fn query_string(&self) -> String {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        serializer.append_pair("model_id", &self.model_id);
        serializer.append_pair("output_format", self.output_format.as_str());
        if let Some(seconds) = self.inactivity_timeout_s {
            serializer.append_pair("inactivity_timeout", &seconds.to_string());
        }
        serializer.finish()
    }

    /// Returns the endpoint URL: `base` (such as `wss://api.elevenlabs.io`, or
    /// a local test server) with the path
    /// `/v1/text-to-speech/{voice_id}/stream-input`, the voice id
    /// percent-encoded, and these options as its query.
    ///
    /// # Errors
    ///
    /// [`ElevenLabsConfigError::EmptyVoiceId`], the
    /// [`validate`](Self::validate) errors, and
    /// [`ElevenLabsConfigError::UnusableBaseUrl`] for a base URL that cannot
    /// carry a path.
    pub fn url(&self, base: &Url, voice_id: &str) -> Result<Url, ElevenLabsConfigError> {
        if voice_id.trim().is_empty() {
            return Err(ElevenLabsConfigError::EmptyVoiceId);
        }
        self.validate()?;

        let mut url = base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| ElevenLabsConfigError::UnusableBaseUrl { base: base.to_string() })?;
            segments.clear().extend(["v1", "text-to-speech", voice_id, "stream-input"]);
        }
        url.set_query(Some(&self.query_string()));
        Ok(url)
    }
}

/// Voice settings of the first message. Unset settings are omitted, so the
/// voice's stored settings apply.
///
/// Source: `RealtimeVoiceSettings` in the AsyncAPI specification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct VoiceSettings {
    /// Stability, 0 to 1 (service default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stability: Option<f32>,
    /// Similarity boost, 0 to 1 (service default 0.75).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity_boost: Option<f32>,
    /// Style exaggeration, 0 to 1, for V2 and later models (service default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<f32>,
    /// Speaker boost, for V2 and later models (service default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_speaker_boost: Option<bool>,
    /// Speaking speed, 0.7 to 1.2 (service default 1.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f32>,
}

/// The generation schedule: the number of buffered characters after which
/// the server generates the first audio chunk, the second, and so on, the
/// last entry repeating. The service default is `[120, 160, 250, 290]`; smaller
/// values lower latency at some cost in quality.
///
/// Source: `GenerationConfig` in the AsyncAPI specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationConfig {
    /// The character counts, each from 50 to 500.
    chunk_length_schedule: Vec<u32>,
}

impl GenerationConfig {
    /// Builds a schedule.
    ///
    /// # Errors
    ///
    /// [`ElevenLabsConfigError::InvalidChunkSchedule`] when `schedule` is
    /// empty or an entry is outside [`CHUNK_LENGTH_RANGE`].
    pub fn new(schedule: Vec<u32>) -> Result<Self, ElevenLabsConfigError> {
        if schedule.is_empty() || schedule.iter().any(|length| !CHUNK_LENGTH_RANGE.contains(length)) {
            return Err(ElevenLabsConfigError::InvalidChunkSchedule { schedule });
        }
        Ok(GenerationConfig { chunk_length_schedule: schedule })
    }

    /// Returns the schedule.
    pub fn chunk_length_schedule(&self) -> &[u32] {
        &self.chunk_length_schedule
    }
}

/// The first message of a connection (`InitializeConnection`): a single
/// space as text, with the voice settings and generation schedule for the
/// whole connection.
///
/// The API key goes in the `xi-api-key` header of the WebSocket handshake,
/// never in this message, so the message can be logged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InitializeConnection {
    /// Always a single space, as the specification requires.
    text: &'static str,
    /// Voice settings; the voice's stored settings when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice_settings: Option<VoiceSettings>,
    /// Generation schedule; the service default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
}

impl InitializeConnection {
    /// Builds the first message.
    pub fn new(voice_settings: Option<VoiceSettings>, generation_config: Option<GenerationConfig>) -> Self {
        InitializeConnection { text: " ", voice_settings, generation_config }
    }
}

/// A message with text to speak (`SendText`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendText {
    /// The text, always ending with a space as the specification requires,
    /// so it is never the empty end-of-input text.
    text: String,
    /// Requests audio now if the server has more than a minimum amount of
    /// text buffered, instead of waiting for the chunk schedule.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    try_trigger_generation: bool,
    /// Forces the server to generate audio for all the text it holds, while
    /// keeping the connection open.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    flush: bool,
}

impl SendText {
    /// Builds a text message, appending the trailing space the specification
    /// requires when `text` does not already end with one.
    pub fn new(text: impl Into<String>) -> Self {
        let mut text = text.into();
        if !text.ends_with(' ') {
            text.push(' ');
        }
        SendText { text, try_trigger_generation: false, flush: false }
    }

    /// Builds a message that adds no text and forces generation of all the
    /// text the server has buffered (`{"text": " ", "flush": true}`). Send it at the
    /// end of a reply so its last words are spoken without waiting for more
    /// text.
    pub fn flush() -> Self {
        SendText { text: " ".to_owned(), try_trigger_generation: false, flush: true }
    }

    /// Sets `flush: true` on this message.
    pub fn with_flush(mut self) -> Self {
        self.flush = true;
        self
    }

    /// Sets `try_trigger_generation: true` on this message.
    pub fn with_try_trigger_generation(mut self) -> Self {
        self.try_trigger_generation = true;
        self
    }

    /// Returns the text as it will be sent, trailing space included.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// One chunk of generated audio (`AudioOutput`).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioChunk {
    /// The decoded audio in the connection's output format; empty when the
    /// server sent `"audio": null`.
    pub audio: Vec<u8>,
    /// Whether the message also carried `isFinal: true`.
    pub is_final: bool,
    /// Timing of each character of the text, relative to this chunk.
    pub alignment: Option<Alignment>,
    /// The same for the text as the service normalized it (numbers spelled
    /// out and so on).
    pub normalized_alignment: Option<Alignment>,
}

/// Character timings of an audio chunk (`Alignment` and
/// `NormalizedAlignment`). The three lists have the same length when the
/// server follows its specification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Alignment {
    /// The characters, in order.
    pub chars: Vec<String>,
    /// Start of each character in milliseconds from the start of the chunk.
    pub char_start_times_ms: Vec<u64>,
    /// Duration of each character in milliseconds.
    pub char_durations_ms: Vec<u64>,
}

/// A message the server sends as a text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// A chunk of audio (`AudioOutput`). It may be the last one, see
    /// [`AudioChunk::is_final`].
    Audio(AudioChunk),
    /// `{"isFinal": true}` without audio (`FinalOutput`): generation is
    /// complete.
    Final,
    /// A message with a non-null `error` field.
    ///
    /// NOTE: the stream-input specification describes no error message. This
    /// variant exists so an `error` field the server sends is reported
    /// instead of dropped. The shape read here (a string, or an object with
    /// `message`, beside optional `message` and `code` fields) is a guess.
    Error {
        /// The `error` value: the string, or the object's JSON text.
        error: String,
        /// The `message` field, or the error object's `message`, when present.
        message: Option<String>,
        /// The `code` field, when it is a number.
        code: Option<i64>,
    },
    /// A JSON object with none of `audio`, `isFinal: true` or `error`.
    Unknown {
        /// The object's first field names, at most 8.
        fields: Vec<String>,
    },
}

/// A server message that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElevenLabsMessageError {
    /// The text is not a JSON object, or `audio` is neither a string nor null.
    #[error("ElevenLabs sent a malformed message ({detail}): {excerpt:?}")]
    Malformed {
        /// The problem found.
        detail: String,
        /// The start of the message, at most 120 characters.
        excerpt: String,
    },
    /// The `audio` string is not valid standard base64.
    #[error("ElevenLabs sent audio that is not valid base64 ({detail}); {length} characters starting {excerpt:?}")]
    InvalidAudio {
        /// The base64 decoder's error.
        detail: String,
        /// Length of the `audio` string in bytes.
        length: usize,
        /// The start of the `audio` string, at most 120 characters.
        excerpt: String,
    },
}

/// Parses one text frame from the server, decoding its audio.
///
/// Unknown fields are ignored. A message with `audio` (even `null`) is
/// [`ServerMessage::Audio`]; a message with `isFinal: true` and no audio is
/// [`ServerMessage::Final`]. Alignment objects of an unexpected shape are
/// dropped rather than failing the audio they came with.
///
/// # Errors
///
/// [`ElevenLabsMessageError::Malformed`] when the text is not a JSON object or
/// `audio` has the wrong type, and [`ElevenLabsMessageError::InvalidAudio`]
/// when `audio` is not valid base64.
pub fn parse_server_message(text: &str) -> Result<ServerMessage, ElevenLabsMessageError> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| malformed(format!("not valid JSON: {error}"), text))?;
    let Some(fields) = value.as_object() else {
        return Err(malformed("not a JSON object".to_owned(), text));
    };

    if let Some(error) = fields.get("error").filter(|error| !error.is_null()) {
        return Ok(error_message(fields, error));
    }

    let is_final = fields.get("isFinal").and_then(Value::as_bool) == Some(true);
    match fields.get("audio") {
        Some(Value::String(encoded)) => {
            let audio = decode_audio(encoded)?;
            Ok(ServerMessage::Audio(audio_chunk(fields, audio, is_final)))
        }
        Some(Value::Null) | None if is_final => Ok(ServerMessage::Final),
        Some(Value::Null) => Ok(ServerMessage::Audio(audio_chunk(fields, Vec::new(), false))),
        Some(_) => Err(malformed("`audio` is neither a base64 string nor null".to_owned(), text)),
        None => Ok(ServerMessage::Unknown { fields: fields.keys().take(MAX_UNKNOWN_FIELDS).cloned().collect() }),
    }
}

/// Decodes a base64 `audio` string.
fn decode_audio(encoded: &str) -> Result<Vec<u8>, ElevenLabsMessageError> {
    BASE64.decode(encoded).map_err(|error| ElevenLabsMessageError::InvalidAudio {
        detail: error.to_string(),
        length: encoded.len(),
        excerpt: encoded.chars().take(EXCERPT_CHARS).collect(),
    })
}

/// Builds an audio chunk from a message's fields and its decoded audio.
fn audio_chunk(fields: &Map<String, Value>, audio: Vec<u8>, is_final: bool) -> AudioChunk {
    AudioChunk {
        audio,
        is_final,
        alignment: fields.get("alignment").and_then(read_alignment),
        normalized_alignment: fields.get("normalizedAlignment").and_then(read_alignment),
    }
}

/// Reads an alignment object, or `None` when it is null or not of the
/// documented shape. Times given as non-negative decimals are rounded down to
/// whole milliseconds.
fn read_alignment(value: &Value) -> Option<Alignment> {
    let fields = value.as_object()?;
    let chars = fields
        .get("chars")?
        .as_array()?
        .iter()
        .map(|char| char.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    Some(Alignment {
        chars,
        char_start_times_ms: read_millis(fields.get("charStartTimesMs")?)?,
        char_durations_ms: read_millis(fields.get("charDurationsMs")?)?,
    })
}

/// Reads a list of non-negative millisecond values.
fn read_millis(value: &Value) -> Option<Vec<u64>> {
    value
        .as_array()?
        .iter()
        .map(|number| {
            number.as_u64().or_else(|| number.as_f64().filter(|ms| ms.is_finite() && *ms >= 0.0).map(|ms| ms as u64))
        })
        .collect()
}

/// Builds [`ServerMessage::Error`] from a message whose `error` is set.
fn error_message(fields: &Map<String, Value>, error: &Value) -> ServerMessage {
    let error_text = match error {
        Value::String(text) => text.clone(),
        other => other.to_string().chars().take(EXCERPT_CHARS).collect(),
    };
    let message = fields
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.get("message").and_then(Value::as_str))
        .map(str::to_owned);
    let code = fields.get("code").and_then(Value::as_i64);
    ServerMessage::Error { error: error_text, message, code }
}

/// Builds an [`ElevenLabsMessageError::Malformed`] with the start of `text`.
fn malformed(detail: String, text: &str) -> ElevenLabsMessageError {
    ElevenLabsMessageError::Malformed { detail, excerpt: text.chars().take(EXCERPT_CHARS).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Ten PCM16 samples (20 bytes), base64-encoded.
    fn encoded_pcm() -> (Vec<u8>, String) {
        let pcm: Vec<u8> = (0..10i16).flat_map(|sample| (sample * 1000).to_le_bytes()).collect();
        let encoded = BASE64.encode(&pcm);
        (pcm, encoded)
    }

    #[test]
    fn fixed_messages_match_spec() {
        let keep_alive: Value = serde_json::from_str(KEEP_ALIVE_MESSAGE).expect("keep-alive is JSON");
        let end: Value = serde_json::from_str(END_OF_INPUT_MESSAGE).expect("end of input is JSON");

        assert_eq!(keep_alive, serde_json::json!({"text": " "}));
        assert_eq!(end, serde_json::json!({"text": ""}));
    }

    #[test]
    fn initialize_connection_serializes() {
        let settings = VoiceSettings { stability: Some(0.5), similarity_boost: Some(0.75), ..VoiceSettings::default() };
        let schedule = GenerationConfig::new(vec![50, 120, 160]).expect("valid schedule");

        let full = serde_json::to_value(InitializeConnection::new(Some(settings), Some(schedule))).expect("serializes");
        let bare = serde_json::to_value(InitializeConnection::new(None, None)).expect("serializes");

        assert_eq!(
            full,
            serde_json::json!({
                "text": " ",
                "voice_settings": {"stability": 0.5, "similarity_boost": 0.75},
                "generation_config": {"chunk_length_schedule": [50, 120, 160]}
            })
        );
        assert_eq!(bare, serde_json::json!({"text": " "}));
    }

    #[test]
    fn send_text_ends_with_space() {
        let cases = [("Hello world", "Hello world "), ("Hello ", "Hello "), ("", " ")];
        for (input, sent) in cases {
            let message = SendText::new(input);
            let json = serde_json::to_value(&message).expect("serializes");

            assert_eq!(message.text(), sent, "input {input:?}");
            assert_eq!(json, serde_json::json!({"text": sent}), "input {input:?}");
        }
    }

    #[test]
    fn send_text_flags_serialize() {
        let flush = serde_json::to_value(SendText::flush()).expect("serializes");
        let trigger = serde_json::to_value(SendText::new("Hi.").with_try_trigger_generation()).expect("serializes");
        let last = serde_json::to_value(SendText::new("Bye.").with_flush()).expect("serializes");

        assert_eq!(flush, serde_json::json!({"text": " ", "flush": true}));
        assert_eq!(trigger, serde_json::json!({"text": "Hi. ", "try_trigger_generation": true}));
        assert_eq!(last, serde_json::json!({"text": "Bye. ", "flush": true}));
    }

    #[test]
    fn chunk_schedule_is_validated() {
        for schedule in [vec![], vec![49], vec![120, 501], vec![0]] {
            assert_eq!(
                GenerationConfig::new(schedule.clone()),
                Err(ElevenLabsConfigError::InvalidChunkSchedule { schedule })
            );
        }
        let edges = GenerationConfig::new(vec![50, 500]).expect("edge values are valid");
        assert_eq!(edges.chunk_length_schedule(), &[50, 500]);
    }

    #[test]
    fn url_has_path_and_query() {
        let base = Url::parse("ws://127.0.0.1:9000").expect("valid URL");
        let options =
            StreamInputOptions { inactivity_timeout_s: Some(60), ..StreamInputOptions::new("eleven_flash_v2_5") };

        let url = options.url(&base, "21m00Tcm4TlvDq8ikWAM").expect("valid options");

        assert_eq!(
            url.as_str(),
            "ws://127.0.0.1:9000/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream-input?model_id=eleven_flash_v2_5&output_format=pcm_16000&inactivity_timeout=60"
        );
    }

    #[test]
    fn voice_id_is_percent_encoded() {
        let base = Url::parse("wss://api.elevenlabs.io").expect("valid URL");

        let url = StreamInputOptions::new("m").url(&base, "a/b?c").expect("valid options");

        assert_eq!(url.path(), "/v1/text-to-speech/a%2Fb%3Fc/stream-input");
    }

    #[test]
    fn invalid_options_are_rejected() {
        let base = Url::parse("wss://api.elevenlabs.io").expect("valid URL");
        let options = StreamInputOptions::new("eleven_flash_v2_5");

        assert_eq!(options.url(&base, " "), Err(ElevenLabsConfigError::EmptyVoiceId));
        assert_eq!(StreamInputOptions::new("").url(&base, "v"), Err(ElevenLabsConfigError::EmptyModelId));
        assert_eq!(
            StreamInputOptions { inactivity_timeout_s: Some(181), ..options.clone() }.url(&base, "v"),
            Err(ElevenLabsConfigError::InactivityTimeoutTooLong { seconds: 181 })
        );
        let mailto = Url::parse("mailto:someone@example.com").expect("valid URL");
        assert!(matches!(options.url(&mailto, "v"), Err(ElevenLabsConfigError::UnusableBaseUrl { .. })));
    }

    #[test]
    fn output_formats_name_their_rate() {
        let formats = [
            (PcmOutputFormat::Pcm8000, "pcm_8000", 8000),
            (PcmOutputFormat::Pcm16000, "pcm_16000", 16_000),
            (PcmOutputFormat::Pcm22050, "pcm_22050", 22_050),
            (PcmOutputFormat::Pcm24000, "pcm_24000", 24_000),
            (PcmOutputFormat::Pcm44100, "pcm_44100", 44_100),
        ];
        for (format, name, rate) in formats {
            assert_eq!(format.as_str(), name);
            assert_eq!(format.sample_rate(), rate);
        }
    }

    #[test]
    fn audio_message_with_alignment_decodes() {
        let (pcm, encoded) = encoded_pcm();
        let text = serde_json::json!({
            "audio": encoded,
            "isFinal": null,
            "normalizedAlignment": {"charStartTimesMs": [0, 3], "charDurationsMs": [3, 4], "chars": ["H", "i"]},
            "alignment": {"charStartTimesMs": [0, 3], "charDurationsMs": [3, 4], "chars": ["H", "i"]}
        })
        .to_string();

        let message = parse_server_message(&text);

        let expected_alignment = Alignment {
            chars: vec!["H".to_owned(), "i".to_owned()],
            char_start_times_ms: vec![0, 3],
            char_durations_ms: vec![3, 4],
        };
        assert_eq!(
            message,
            Ok(ServerMessage::Audio(AudioChunk {
                audio: pcm,
                is_final: false,
                alignment: Some(expected_alignment.clone()),
                normalized_alignment: Some(expected_alignment),
            }))
        );
    }

    #[test]
    fn audio_without_alignment_decodes() {
        let (pcm, encoded) = encoded_pcm();

        let message = parse_server_message(&format!(r#"{{"audio":"{encoded}"}}"#));

        assert_eq!(
            message,
            Ok(ServerMessage::Audio(AudioChunk {
                audio: pcm,
                is_final: false,
                alignment: None,
                normalized_alignment: None
            }))
        );
    }

    #[test]
    fn bad_alignment_keeps_audio() {
        let (pcm, encoded) = encoded_pcm();
        let text = serde_json::json!({
            "audio": encoded,
            "alignment": {"charStartTimesMs": "soon", "charDurationsMs": [1], "chars": ["a"]},
            "normalizedAlignment": {"charStartTimesMs": [0.5, 2.9], "charDurationsMs": [1, 1], "chars": ["a", "b"]}
        })
        .to_string();

        let Ok(ServerMessage::Audio(chunk)) = parse_server_message(&text) else {
            panic!("expected audio");
        };

        assert_eq!(chunk.audio, pcm);
        assert_eq!(chunk.alignment, None);
        assert_eq!(chunk.normalized_alignment.map(|alignment| alignment.char_start_times_ms), Some(vec![0, 2]));
    }

    // FinalOutput: "If set to True, audio will be null."
    #[test]
    fn final_message_decodes() {
        assert_eq!(parse_server_message(r#"{"isFinal": true}"#), Ok(ServerMessage::Final));
        assert_eq!(
            parse_server_message(r#"{"audio": null, "isFinal": true, "alignment": null}"#),
            Ok(ServerMessage::Final)
        );
    }

    #[test]
    fn null_audio_is_an_empty_chunk() {
        let message = parse_server_message(r#"{"audio": null, "isFinal": false, "normalizedAlignment": null}"#);

        assert_eq!(
            message,
            Ok(ServerMessage::Audio(AudioChunk {
                audio: Vec::new(),
                is_final: false,
                alignment: None,
                normalized_alignment: None
            }))
        );
    }

    #[test]
    fn audio_with_final_flag_is_both() {
        let (pcm, encoded) = encoded_pcm();

        let message = parse_server_message(&format!(r#"{{"audio":"{encoded}","isFinal":true}}"#));

        assert_eq!(
            message,
            Ok(ServerMessage::Audio(AudioChunk {
                audio: pcm,
                is_final: true,
                alignment: None,
                normalized_alignment: None
            }))
        );
    }

    #[test]
    fn bad_base64_is_a_typed_error() {
        let message = parse_server_message(r#"{"audio": "not*base64!"}"#);

        let Err(ElevenLabsMessageError::InvalidAudio { length, excerpt, .. }) = message else {
            panic!("expected invalid audio, got {message:?}");
        };
        assert_eq!(length, 11);
        assert_eq!(excerpt, "not*base64!");
    }

    // The specification documents no error message: these two shapes only
    // check that an `error` field is reported rather than dropped.
    #[test]
    fn error_field_is_reported() {
        let string_error = parse_server_message(
            r#"{"message":"Have not received a new text input within the timeout.","error":"input_timeout_exceeded","code":1008}"#,
        );
        let object_error = parse_server_message(r#"{"error":{"message":"quota exceeded","status":"quota_exceeded"}}"#);

        assert_eq!(
            string_error,
            Ok(ServerMessage::Error {
                error: "input_timeout_exceeded".to_owned(),
                message: Some("Have not received a new text input within the timeout.".to_owned()),
                code: Some(1008),
            })
        );
        assert_eq!(
            object_error,
            Ok(ServerMessage::Error {
                error: r#"{"message":"quota exceeded","status":"quota_exceeded"}"#.to_owned(),
                message: Some("quota exceeded".to_owned()),
                code: None,
            })
        );
    }

    #[test]
    fn unknown_objects_keep_field_names() {
        assert_eq!(parse_server_message("{}"), Ok(ServerMessage::Unknown { fields: Vec::new() }));
        let Ok(ServerMessage::Unknown { mut fields }) = parse_server_message(r#"{"isFinal": false, "error": null}"#)
        else {
            panic!("expected an unknown message");
        };
        fields.sort();
        assert_eq!(fields, vec!["error".to_owned(), "isFinal".to_owned()]);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let long = format!("{{\"audio\": \"{}", "A".repeat(400));
        for text in ["not json", "[]", "\"audio\"", r#"{"audio": 5}"#, r#"{"audio": ["AAAA"]}"#, long.as_str()] {
            let message = parse_server_message(text);

            let Err(ElevenLabsMessageError::Malformed { excerpt, .. }) = message else {
                panic!("expected malformed for {text}, got {message:?}");
            };
            assert!(excerpt.chars().count() <= EXCERPT_CHARS, "{text}");
            assert!(text.starts_with(&excerpt), "{text}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse_server_message(&text);
        }

        #[test]
        fn arbitrary_audio_round_trips(audio in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = serde_json::json!({"audio": BASE64.encode(&audio), "isFinal": null}).to_string();
            let message = parse_server_message(&text);
            prop_assert_eq!(
                message,
                Ok(ServerMessage::Audio(AudioChunk { audio, is_final: false, alignment: None, normalized_alignment: None }))
            );
        }
    }
}
