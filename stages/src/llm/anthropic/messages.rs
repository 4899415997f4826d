//! Anthropic Messages streaming: the request body, and a decoder that turns
//! each named server-sent event into [`ChatEvent`]s.
//!
//! A stream is `message_start`, then per content block a
//! `content_block_start`, `content_block_delta`s and a `content_block_stop`,
//! then `message_delta`s and a final `message_stop`, with `ping`s and
//! possibly an `error` anywhere. Anthropic may add event types, so the
//! decoder ignores the ones it does not know, as the streaming guide requests.
//!
//! Everything here is pure: no I/O, and no input makes it panic.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::llm::events::{ChatEvent, ChatStreamError};
use crate::llm::history::{ChatMessage, Role};

/// Maximum number of characters of a malformed payload kept in
/// [`ChatStreamError::Malformed`], so an error never carries a whole message.
const EXCERPT_CHARS: usize = 120;

/// Text placed between two messages of the same role when they are merged.
const MERGE_SEPARATOR: &str = "\n\n";

/// Error types after which the same request can succeed later: Anthropic's
/// errors page maps them to HTTP 529 (overloaded), 500 (api error) and 429
/// (rate limit).
const RETRYABLE_ERROR_TYPES: &[&str] = &["overloaded_error", "api_error", "rate_limit_error"];

/// A request that cannot be built from the given conversation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnthropicRequestError {
    /// The conversation has no user message with text, so there is nothing
    /// to reply to.
    #[error(
        "the conversation has no non-empty user message to reply to; add the user's turn before requesting a reply"
    )]
    NoUserMessage,
    /// `max_tokens` is 0, which the API rejects (its minimum is 1).
    #[error("max_tokens is 0 but the Messages API requires at least 1; set a positive reply token limit")]
    ZeroMaxTokens,
}

/// The role of a message in the request. The Messages API has no system role:
/// the system prompt is a separate field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestRole {
    /// The person speaking.
    User,
    /// The model.
    Assistant,
}

/// One message of the request's `messages` array, with plain-text content.
///
/// Source: `messages` in <https://docs.claude.com/en/api/messages>.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestMessage {
    /// The author of the message.
    pub role: RequestRole,
    /// The message text; never empty.
    pub content: String,
}

/// The body of a streaming `POST /v1/messages` request.
///
/// [`new`](Self::new) shapes a [`ChatMessage`] history into what the API
/// accepts:
///
/// - system messages are joined, in order, into the top-level `system` field;
/// - messages whose text is empty or only whitespace are dropped, because the
///   API rejects empty text content;
/// - consecutive messages of the same role are merged into one, separated by
///   a blank line. The API reference states that it combines consecutive
///   same-role turns itself, but merging here keeps the request valid for
///   servers that still require strict alternation;
/// - assistant messages before the first user message are dropped, so the
///   conversation starts with the user, as older API versions require;
/// - assistant messages after the last user message are dropped, because
///   the API would treat a final assistant message as the start of the reply
///   to continue, and the reply must respond to the user's last turn.
///
/// Source: <https://docs.claude.com/en/api/messages> (body parameters).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessagesRequest {
    /// The model id, such as `"claude-sonnet-4-5"`.
    pub model: String,
    /// The maximum number of tokens to generate, at least 1.
    pub max_tokens: u32,
    /// The system prompt; omitted when the history has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The conversation: starts and ends with a user message, and the roles
    /// alternate.
    pub messages: Vec<RequestMessage>,
    /// Sampling temperature, 0 to 1; the API's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Always `true`: the decoder below reads a server-sent event stream.
    stream: bool,
}

impl MessagesRequest {
    /// Builds a streaming request that replies to the last user message of
    /// `history`, shaped as the type's documentation describes.
    ///
    /// # Errors
    ///
    /// [`AnthropicRequestError::ZeroMaxTokens`] when `max_tokens` is 0, and
    /// [`AnthropicRequestError::NoUserMessage`] when no user message with
    /// text remains.
    pub fn new(
        model: impl Into<String>,
        history: &[ChatMessage],
        max_tokens: u32,
    ) -> Result<Self, AnthropicRequestError> {
        if max_tokens == 0 {
            return Err(AnthropicRequestError::ZeroMaxTokens);
        }

        let mut system_parts = Vec::new();
        let mut messages: Vec<RequestMessage> = Vec::new();
        for message in history {
            if message.content.trim().is_empty() {
                continue;
            }
            let role = match message.role {
                Role::System => {
                    system_parts.push(message.content.as_str());
                    continue;
                }
                Role::User => RequestRole::User,
                Role::Assistant => RequestRole::Assistant,
            };

            // The conversation must open with the user.
            if messages.is_empty() && role == RequestRole::Assistant {
                continue;
            }
            match messages.last_mut() {
                Some(previous) if previous.role == role => {
                    previous.content.push_str(MERGE_SEPARATOR);
                    previous.content.push_str(&message.content);
                }
                _ => messages.push(RequestMessage { role, content: message.content.clone() }),
            }
        }

        // The API would continue a trailing assistant message instead of replying.
        while messages.last().is_some_and(|message| message.role == RequestRole::Assistant) {
            messages.pop();
        }
        if messages.is_empty() {
            return Err(AnthropicRequestError::NoUserMessage);
        }

        let system = if system_parts.is_empty() { None } else { Some(system_parts.join(MERGE_SEPARATOR)) };
        Ok(MessagesRequest { model: model.into(), max_tokens, system, messages, temperature: None, stream: true })
    }

    /// Sets the sampling temperature (0 to 1).
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }
}

/// Token counts in `message_start` and `message_delta`. The counts in
/// `message_delta` are cumulative.
#[derive(Debug, Deserialize)]
struct UsageWire {
    /// Tokens of the prompt.
    #[serde(default)]
    input_tokens: Option<u64>,
    /// Tokens generated so far.
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl UsageWire {
    /// Returns the usage event, or `None` when neither count is present.
    fn into_event(self) -> Option<ChatEvent> {
        if self.input_tokens.is_none() && self.output_tokens.is_none() {
            return None;
        }
        Some(ChatEvent::Usage { input_tokens: self.input_tokens, output_tokens: self.output_tokens })
    }
}

/// The data of `message_start`: a `Message` with empty content.
///
/// Source: "Event types" in <https://docs.claude.com/en/docs/build-with-claude/streaming>.
#[derive(Debug, Deserialize)]
struct MessageStartWire {
    /// The message being started.
    #[serde(default)]
    message: Option<MessageWire>,
}

/// The `message` of `message_start`.
#[derive(Debug, Deserialize)]
struct MessageWire {
    /// The prompt's token count; missing in some of the guide's examples.
    #[serde(default)]
    usage: Option<UsageWire>,
}

/// The data of `content_block_start`.
///
/// Source: "Event types" in <https://docs.claude.com/en/docs/build-with-claude/streaming>.
#[derive(Debug, Deserialize)]
struct ContentBlockStartWire {
    /// The block being opened; a text block starts with empty text.
    #[serde(default)]
    content_block: Option<ContentBlockWire>,
}

/// The `content_block` of `content_block_start`.
#[derive(Debug, Deserialize)]
struct ContentBlockWire {
    /// `"text"`, `"tool_use"`, `"thinking"`...
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// The block's initial text, for text blocks.
    #[serde(default)]
    text: Option<String>,
}

/// The data of `content_block_delta`.
///
/// Source: "Content block delta types" in
/// <https://docs.claude.com/en/docs/build-with-claude/streaming>.
#[derive(Debug, Deserialize)]
struct ContentBlockDeltaWire {
    /// The change to the block.
    #[serde(default)]
    delta: Option<BlockDeltaWire>,
}

/// The `delta` of `content_block_delta`.
#[derive(Debug, Deserialize)]
struct BlockDeltaWire {
    /// `"text_delta"`, `"input_json_delta"`, `"thinking_delta"`, `"signature_delta"`...
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// The new text, for `text_delta`.
    #[serde(default)]
    text: Option<String>,
}

/// The data of `message_delta`.
///
/// Source: "Event types" in <https://docs.claude.com/en/docs/build-with-claude/streaming>.
#[derive(Debug, Deserialize)]
struct MessageDeltaWire {
    /// Top-level changes to the message.
    #[serde(default)]
    delta: Option<MessageDeltaFieldsWire>,
    /// Cumulative token counts.
    #[serde(default)]
    usage: Option<UsageWire>,
}

/// The `delta` of `message_delta`.
#[derive(Debug, Deserialize)]
struct MessageDeltaFieldsWire {
    /// `"end_turn"`, `"max_tokens"`, `"stop_sequence"`, `"tool_use"`..., or `null`.
    #[serde(default)]
    stop_reason: Option<String>,
}

/// The data of an `error` event, such as
/// `{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}`.
///
/// Source: "Error events" in <https://docs.claude.com/en/docs/build-with-claude/streaming>
/// and the error shapes in <https://docs.claude.com/en/api/errors>.
#[derive(Debug, Deserialize)]
struct ErrorEventWire {
    /// The error.
    #[serde(default)]
    error: Option<ErrorWire>,
}

/// The `error` object of an `error` event.
#[derive(Debug, Deserialize)]
struct ErrorWire {
    /// The error type, such as `"overloaded_error"`.
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// A human-readable description.
    #[serde(default)]
    message: Option<String>,
}

/// The `type` field that every event's data repeats.
#[derive(Debug, Deserialize)]
struct EventTypeWire {
    /// The event type, equal to the SSE event name.
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// Decodes the server-sent events of one streamed Messages response.
///
/// Feed it every event in order with [`on_event`](Self::on_event), then call
/// [`finish`](Self::finish) when the HTTP body ends.
#[derive(Debug, Default, Clone)]
pub struct AnthropicStreamDecoder {
    /// Whether `message_stop` arrived.
    saw_message_stop: bool,
    /// Whether a `message_delta` carried a `stop_reason`.
    saw_stop_reason: bool,
}

impl AnthropicStreamDecoder {
    /// Creates a decoder for a new response.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one server-sent event, given its `event` name and its `data`.
    ///
    /// The event name selects the handling. When it is empty or `"message"`
    /// (the SSE default when a server omits the `event:` line), the `type`
    /// field of the data is used instead. `ping`, `content_block_stop`,
    /// non-text content deltas (`input_json_delta`, `thinking_delta`,
    /// `signature_delta`) and unknown event types give no events; the data of
    /// an unknown event type is not parsed.
    ///
    /// # Errors
    ///
    /// [`ChatStreamError::Provider`] for an `error` event (even one whose
    /// data is not JSON), retryable for `overloaded_error`, `api_error` and
    /// `rate_limit_error`, and
    /// [`ChatStreamError::Malformed`] when the data of a known event type is
    /// not JSON of the documented shape.
    pub fn on_event(&mut self, event: &str, data: &str) -> Result<Vec<ChatEvent>, ChatStreamError> {
        let name = event.trim();
        let kind = if name.is_empty() || name == "message" {
            parse::<EventTypeWire>(data, "event")?.kind.unwrap_or_default()
        } else {
            name.to_owned()
        };

        let mut events = Vec::new();
        match kind.as_str() {
            "message_start" => {
                let start = parse::<MessageStartWire>(data, "message_start")?;
                if let Some(usage) = start.message.and_then(|message| message.usage).and_then(UsageWire::into_event) {
                    events.push(usage);
                }
            }
            "content_block_start" => {
                let start = parse::<ContentBlockStartWire>(data, "content_block_start")?;
                let initial_text = start
                    .content_block
                    .filter(|block| block.kind.as_deref() == Some("text"))
                    .and_then(|block| block.text)
                    .filter(|text| !text.is_empty());
                if let Some(text) = initial_text {
                    events.push(ChatEvent::Text(text));
                }
            }
            "content_block_delta" => {
                let delta = parse::<ContentBlockDeltaWire>(data, "content_block_delta")?;
                let text = delta
                    .delta
                    .filter(|delta| delta.kind.as_deref() == Some("text_delta"))
                    .and_then(|delta| delta.text)
                    .filter(|text| !text.is_empty());
                if let Some(text) = text {
                    events.push(ChatEvent::Text(text));
                }
            }
            "message_delta" => {
                let delta = parse::<MessageDeltaWire>(data, "message_delta")?;
                let stop_reason = delta.delta.and_then(|fields| fields.stop_reason).filter(|reason| !reason.is_empty());
                if let Some(reason) = stop_reason {
                    self.saw_stop_reason = true;
                    events.push(ChatEvent::Finished { reason });
                }
                if let Some(usage) = delta.usage.and_then(UsageWire::into_event) {
                    events.push(usage);
                }
            }
            "message_stop" => {
                parse::<IgnoredAny>(data, "message_stop")?;
                self.saw_message_stop = true;
                events.push(ChatEvent::End);
            }
            "content_block_stop" | "ping" => {
                parse::<IgnoredAny>(data, &kind)?;
            }
            "error" => {
                // An error event ends the reply even when its data cannot be read.
                let error = serde_json::from_str::<ErrorEventWire>(data).ok().and_then(|event| event.error);
                let kind = error.as_ref().and_then(|error| error.kind.clone()).unwrap_or_else(|| "error".to_owned());
                let message = error.and_then(|error| error.message).unwrap_or_else(|| excerpt(data));
                let retryable = RETRYABLE_ERROR_TYPES.contains(&kind.as_str());
                return Err(ChatStreamError::Provider { kind, message, retryable });
            }
            // New event types may be added at any time; they carry nothing this decoder needs.
            _ => {}
        }
        Ok(events)
    }

    /// Checks, once the HTTP body has ended, that the reply was complete.
    ///
    /// # Errors
    ///
    /// [`ChatStreamError::Incomplete`] when neither `message_stop` nor a
    /// `stop_reason` arrived, so the reply may have been cut short.
    pub fn finish(&self) -> Result<(), ChatStreamError> {
        if self.saw_message_stop || self.saw_stop_reason { Ok(()) } else { Err(ChatStreamError::Incomplete) }
    }
}

/// Parses the data of an event of type `event_type`.
fn parse<'a, T: Deserialize<'a>>(data: &'a str, event_type: &str) -> Result<T, ChatStreamError> {
    // A derived struct would also accept a JSON array, which no event's data is.
    if !data.trim_start().starts_with('{') {
        return Err(ChatStreamError::Malformed {
            detail: format!("the data of a `{event_type}` event is not a JSON object"),
            excerpt: excerpt(data),
        });
    }
    serde_json::from_str(data).map_err(|error| ChatStreamError::Malformed {
        detail: format!("the data of a `{event_type}` event is not valid JSON of the documented shape: {error}"),
        excerpt: excerpt(data),
    })
}

/// Returns the start of `text`, at most [`EXCERPT_CHARS`] characters.
fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds every `(event, data)` pair to a new decoder and returns all events.
    fn decode_all(stream: &[(&str, &str)]) -> (AnthropicStreamDecoder, Vec<ChatEvent>) {
        let mut decoder = AnthropicStreamDecoder::new();
        let mut events = Vec::new();
        for (event, data) in stream {
            events.extend(decoder.on_event(event, data).expect("documented event decodes"));
        }
        (decoder, events)
    }

    fn text(content: &str) -> ChatEvent {
        ChatEvent::Text(content.to_owned())
    }

    // The "Basic streaming request" response of the streaming guide.
    const BASIC_STREAM: &[(&str, &str)] = &[
        (
            "message_start",
            r#"{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-1-20250805", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}"#,
        ),
        ("content_block_stop", r#"{"type": "content_block_stop", "index": 0}"#),
        (
            "message_delta",
            r#"{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}"#,
        ),
        ("message_stop", r#"{"type": "message_stop"}"#),
    ];

    #[test]
    fn documented_stream_decodes() {
        let (decoder, events) = decode_all(BASIC_STREAM);

        assert_eq!(
            events,
            vec![
                ChatEvent::Usage { input_tokens: Some(25), output_tokens: Some(1) },
                text("Hello"),
                text("!"),
                ChatEvent::Finished { reason: "end_turn".to_owned() },
                ChatEvent::Usage { input_tokens: None, output_tokens: Some(15) },
                ChatEvent::End,
            ]
        );
        assert_eq!(decoder.finish(), Ok(()));
    }

    // Without `event:` lines the type comes from the data.
    #[test]
    fn type_field_is_used_without_event_name() {
        let mut decoder = AnthropicStreamDecoder::new();
        let mut events = Vec::new();
        for (_, data) in BASIC_STREAM {
            events.extend(decoder.on_event("", data).expect("event decodes"));
        }
        let with_default_name =
            AnthropicStreamDecoder::new().on_event("message", r#"{"type": "message_stop"}"#).expect("event decodes");

        assert_eq!(events, decode_all(BASIC_STREAM).1);
        assert_eq!(with_default_name, vec![ChatEvent::End]);
    }

    // The tool-use example of the streaming guide: input_json_delta is ignored.
    #[test]
    fn tool_use_deltas_are_ignored() {
        let (decoder, events) = decode_all(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);

        assert_eq!(
            events,
            vec![
                ChatEvent::Usage { input_tokens: Some(472), output_tokens: Some(2) },
                text("Okay"),
                ChatEvent::Finished { reason: "tool_use".to_owned() },
                ChatEvent::Usage { input_tokens: None, output_tokens: Some(89) },
                ChatEvent::End,
            ]
        );
        assert_eq!(decoder.finish(), Ok(()));
    }

    // The extended-thinking example: message_start without usage, thinking and
    // signature deltas ignored.
    #[test]
    fn thinking_deltas_are_ignored() {
        let (_, events) = decode_all(&[
            (
                "message_start",
                r#"{"type": "message_start", "message": {"id": "msg_01...", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-1-20250805", "stop_reason": null, "stop_sequence": null}}"#,
            ),
            (
                "content_block_start",
                r#"{"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me solve this step by step"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}"#,
            ),
            ("content_block_stop", r#"{"type": "content_block_stop", "index": 0}"#),
            (
                "content_block_start",
                r#"{"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"}}"#,
            ),
        ]);

        assert_eq!(events, vec![text("27 * 453 = 12,231")]);
    }

    #[test]
    fn text_in_content_block_start_is_kept() {
        let (_, events) = decode_all(&[(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}"#,
        )]);

        assert_eq!(events, vec![text("Hi")]);
    }

    #[test]
    fn empty_text_delta_is_skipped() {
        let (_, events) = decode_all(&[(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#,
        )]);

        assert_eq!(events, vec![]);
    }

    #[test]
    fn overloaded_error_mid_stream_is_retryable() {
        let mut decoder = AnthropicStreamDecoder::new();
        for (event, data) in &BASIC_STREAM[..4] {
            decoder.on_event(event, data).expect("event before the error decodes");
        }

        let error = decoder
            .on_event("error", r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#);

        assert_eq!(
            error,
            Err(ChatStreamError::Provider {
                kind: "overloaded_error".to_owned(),
                message: "Overloaded".to_owned(),
                retryable: true,
            })
        );
        assert_eq!(decoder.finish(), Err(ChatStreamError::Incomplete));
    }

    #[test]
    fn error_types_are_classified() {
        let cases = [
            ("overloaded_error", true),
            ("api_error", true),
            ("rate_limit_error", true),
            ("invalid_request_error", false),
            ("authentication_error", false),
            ("permission_error", false),
            ("not_found_error", false),
            ("request_too_large", false),
            ("billing_error", false),
        ];
        for (error_type, expected_retryable) in cases {
            let data =
                format!(r#"{{"type":"error","error":{{"type":"{error_type}","message":"m"}},"request_id":"req_1"}}"#);

            let error = AnthropicStreamDecoder::new().on_event("error", &data);

            assert_eq!(
                error,
                Err(ChatStreamError::Provider {
                    kind: error_type.to_owned(),
                    message: "m".to_owned(),
                    retryable: expected_retryable,
                }),
                "error type {error_type}"
            );
        }
    }

    #[test]
    fn error_without_details_keeps_data() {
        let error = AnthropicStreamDecoder::new().on_event("error", r#"{"type":"error"}"#);

        assert_eq!(
            error,
            Err(ChatStreamError::Provider {
                kind: "error".to_owned(),
                message: r#"{"type":"error"}"#.to_owned(),
                retryable: false,
            })
        );
    }

    #[test]
    fn error_with_unreadable_data_is_still_an_error() {
        let error = AnthropicStreamDecoder::new().on_event("error", "Overloaded");

        assert_eq!(
            error,
            Err(ChatStreamError::Provider {
                kind: "error".to_owned(),
                message: "Overloaded".to_owned(),
                retryable: false
            })
        );
    }

    #[test]
    fn unknown_event_types_are_ignored() {
        let mut decoder = AnthropicStreamDecoder::new();

        assert_eq!(decoder.on_event("compaction_started", r#"{"type":"compaction_started"}"#), Ok(vec![]));
        assert_eq!(decoder.on_event("future_event", "not even json"), Ok(vec![]));
        assert_eq!(decoder.on_event("", r#"{"type":"future_event","x":1}"#), Ok(vec![]));
        assert_eq!(decoder.on_event("", r#"{"no_type":true}"#), Ok(vec![]));
        assert_eq!(decoder.finish(), Err(ChatStreamError::Incomplete));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let (_, events) = decode_all(&[
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"A","citations":[]},"extra":{"a":1}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null,"container":null},"usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":0,"server_tool_use":null}}"#,
            ),
        ]);

        assert_eq!(
            events,
            vec![
                text("A"),
                ChatEvent::Finished { reason: "max_tokens".to_owned() },
                ChatEvent::Usage { input_tokens: Some(3), output_tokens: Some(4) },
            ]
        );
    }

    #[test]
    fn stop_reason_without_message_stop_is_complete() {
        let (decoder, _) = decode_all(&[(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
        )]);

        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn null_stop_reason_is_not_a_finish() {
        let (decoder, events) = decode_all(&[(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":2}}"#,
        )]);

        assert_eq!(events, vec![ChatEvent::Usage { input_tokens: None, output_tokens: Some(2) }]);
        assert_eq!(decoder.finish(), Err(ChatStreamError::Incomplete));
    }

    #[test]
    fn message_stop_alone_is_complete() {
        let (decoder, events) = decode_all(&[("message_stop", r#"{"type":"message_stop"}"#)]);

        assert_eq!(events, vec![ChatEvent::End]);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn malformed_known_event_gives_excerpt() {
        let data =
            format!(r#"{{"type":"content_block_delta","delta":{{"type":"text_delta","text":"{}"#, "y".repeat(300));

        let error = AnthropicStreamDecoder::new().on_event("content_block_delta", &data);

        let Err(ChatStreamError::Malformed { detail, excerpt }) = error else {
            panic!("expected a malformed error, got {error:?}");
        };
        assert!(detail.contains("content_block_delta"), "{detail}");
        assert_eq!(excerpt.chars().count(), EXCERPT_CHARS);
        assert!(data.starts_with(&excerpt));
    }

    #[test]
    fn wrong_field_types_are_malformed() {
        let cases = [
            ("message_start", r#"{"type":"message_start","message":{"usage":{"input_tokens":"many"}}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":5}}"#),
            ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":7}}"#),
            ("message_stop", "{"),
            ("ping", "ping"),
            ("message_delta", "[]"),
            ("content_block_stop", "[1]"),
            ("", "not json"),
        ];
        for (event, data) in cases {
            let error = AnthropicStreamDecoder::new().on_event(event, data);

            assert!(matches!(error, Err(ChatStreamError::Malformed { .. })), "event {event:?} data {data}: {error:?}");
        }
    }

    #[test]
    fn request_serializes_documented_fields() {
        let history = [ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Hello")];

        let request =
            MessagesRequest::new("claude-sonnet-4-5", &history, 256).expect("valid request").with_temperature(0.5);
        let json = serde_json::to_value(&request).expect("request serializes");

        assert_eq!(
            json,
            serde_json::json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 256,
                "system": "Be brief.",
                "messages": [{"role": "user", "content": "Hello"}],
                "temperature": 0.5,
                "stream": true
            })
        );
    }

    #[test]
    fn request_without_system_prompt_omits_it() {
        let request = MessagesRequest::new("m", &[ChatMessage::new(Role::User, "Hi")], 16).expect("valid request");
        let json = serde_json::to_value(&request).expect("request serializes");

        assert_eq!(json.get("system"), None);
        assert_eq!(json.get("temperature"), None);
    }

    #[test]
    fn request_shapes_history() {
        let history = [
            ChatMessage::new(Role::Assistant, "Hi, how can I help?"),
            ChatMessage::new(Role::System, "You are kind."),
            ChatMessage::new(Role::User, "One."),
            ChatMessage::new(Role::User, "Two."),
            ChatMessage::new(Role::Assistant, ""),
            ChatMessage::new(Role::Assistant, "Answer."),
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::Assistant, "More."),
            ChatMessage::new(Role::User, "   "),
            ChatMessage::new(Role::User, "Three."),
            ChatMessage::new(Role::Assistant, "Interrupted repl"),
        ];

        let request = MessagesRequest::new("m", &history, 16).expect("valid request");

        assert_eq!(request.system.as_deref(), Some("You are kind.\n\nBe brief."));
        assert_eq!(
            request.messages,
            vec![
                RequestMessage { role: RequestRole::User, content: "One.\n\nTwo.".to_owned() },
                RequestMessage { role: RequestRole::Assistant, content: "Answer.\n\nMore.".to_owned() },
                RequestMessage { role: RequestRole::User, content: "Three.".to_owned() },
            ]
        );
    }

    #[test]
    fn request_needs_a_user_message() {
        let only_assistant = [ChatMessage::new(Role::System, "S"), ChatMessage::new(Role::Assistant, "Hello!")];
        let blank_user = [ChatMessage::new(Role::User, " \n")];

        assert_eq!(MessagesRequest::new("m", &only_assistant, 16), Err(AnthropicRequestError::NoUserMessage));
        assert_eq!(MessagesRequest::new("m", &blank_user, 16), Err(AnthropicRequestError::NoUserMessage));
        assert_eq!(MessagesRequest::new("m", &[], 16), Err(AnthropicRequestError::NoUserMessage));
    }

    #[test]
    fn request_rejects_zero_max_tokens() {
        let history = [ChatMessage::new(Role::User, "Hi")];

        assert_eq!(MessagesRequest::new("m", &history, 0), Err(AnthropicRequestError::ZeroMaxTokens));
    }

    proptest! {
        #[test]
        fn arbitrary_events_never_panic(event in any::<String>(), data in any::<String>()) {
            let mut decoder = AnthropicStreamDecoder::new();
            let _ = decoder.on_event(&event, &data);
            let _ = decoder.finish();
        }

        #[test]
        fn known_events_with_arbitrary_data_never_panic(index in 0usize..8, data in any::<String>()) {
            let names = ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                "message_delta", "message_stop", "ping", "error"];
            let _ = AnthropicStreamDecoder::new().on_event(names[index], &data);
        }

        #[test]
        fn requests_alternate_roles(turns in proptest::collection::vec((0u8..3, "[ a-z]{0,4}"), 0..12)) {
            let history: Vec<ChatMessage> = turns
                .into_iter()
                .map(|(role, content)| {
                    let role = match role { 0 => Role::System, 1 => Role::User, _ => Role::Assistant };
                    ChatMessage::new(role, content)
                })
                .collect();
            if let Ok(request) = MessagesRequest::new("m", &history, 8) {
                prop_assert_eq!(request.messages.first().map(|m| m.role), Some(RequestRole::User));
                prop_assert_eq!(request.messages.last().map(|m| m.role), Some(RequestRole::User));
                prop_assert!(request.messages.windows(2).all(|pair| pair[0].role != pair[1].role));
                prop_assert!(request.messages.iter().all(|m| !m.content.trim().is_empty()));
            }
        }
    }
}
