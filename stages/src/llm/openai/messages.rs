//! OpenAI Chat Completions streaming: the request body, and a decoder that
//! turns the `data:` payload of each server-sent event into [`ChatEvent`]s.
//!
//! The same wire format is served by OpenAI and by self-hosted
//! OpenAI-compatible servers (llama.cpp's `llama-server`, vLLM). The decoder
//! accepts the differences between them that matter here. `choices` may be
//! `null` or missing in the usage-only chunk, and unknown fields (such as
//! `reasoning_content` or `obfuscation`) are ignored. An error's `code` may
//! be a string (OpenAI) or a number (llama.cpp, vLLM).
//!
//! Everything here is pure: no I/O, and no input makes it panic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::events::{ChatEvent, ChatStreamError};
use crate::llm::history::ChatMessage;

/// Maximum number of characters of a malformed payload kept in
/// [`ChatStreamError::Malformed`], so an error never carries a whole message.
const EXCERPT_CHARS: usize = 120;

/// The `data:` payload that ends an OpenAI stream. It is not JSON.
const DONE_MARKER: &str = "[DONE]";

/// The request field that carries the limit on generated tokens.
///
/// Source: the `max_tokens` and `max_completion_tokens` body parameters of
/// <https://developers.openai.com/api/reference/resources/chat>.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLimitField {
    /// `max_completion_tokens`, the field OpenAI documents today. OpenAI
    /// deprecated `max_tokens` in its favor, and its o-series reasoning
    /// models reject `max_tokens`. Use this for api.openai.com.
    MaxCompletionTokens,
    /// `max_tokens`, the field self-hosted servers read: llama.cpp's server
    /// maps `max_tokens` to its `n_predict` and does not read
    /// `max_completion_tokens`. vLLM reads both. Use this for self-hosted
    /// servers.
    MaxTokens,
}

/// One message of the conversation, as the request body carries it.
///
/// Source: `messages` in
/// <https://developers.openai.com/api/reference/resources/chat>.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestMessage {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: &'static str,
    /// The message text.
    pub content: String,
}

/// The `stream_options` object of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct StreamOptions {
    /// Requests one more chunk before `[DONE]`, whose `usage` field contains
    /// the token counts of the whole request and whose `choices` is empty.
    include_usage: bool,
}

/// The body of a streaming `POST /v1/chat/completions` request.
///
/// It always sets `stream: true` and `stream_options.include_usage: true`,
/// and it sends the token limit in exactly one field, chosen by
/// [`TokenLimitField`], because sending both is rejected by some OpenAI models
/// and read inconsistently by self-hosted servers.
///
/// Source: <https://developers.openai.com/api/reference/resources/chat>
/// (Create chat completion, body parameters).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletionRequest {
    /// The model id, such as `"gpt-4o-mini"` or the name a self-hosted server
    /// was started with.
    pub model: String,
    /// The conversation, oldest message first.
    pub messages: Vec<RequestMessage>,
    /// Always `true`: the decoder below reads a server-sent event stream.
    stream: bool,
    /// Always requests the usage chunk.
    stream_options: StreamOptions,
    /// The token limit when [`TokenLimitField::MaxCompletionTokens`] is chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    /// The token limit when [`TokenLimitField::MaxTokens`] is chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2; the server's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

impl ChatCompletionRequest {
    /// Builds a streaming request for `history`, limited to `max_reply_tokens`
    /// generated tokens sent in the `limit_field` field.
    ///
    /// Every message of the history is sent as is, system prompt included,
    /// because the Chat Completions API accepts any order of roles.
    pub fn new(
        model: impl Into<String>,
        history: &[ChatMessage],
        max_reply_tokens: u32,
        limit_field: TokenLimitField,
    ) -> Self {
        let messages = history
            .iter()
            .map(|message| RequestMessage { role: message.role.as_str(), content: message.content.clone() })
            .collect();
        let (max_completion_tokens, max_tokens) = match limit_field {
            TokenLimitField::MaxCompletionTokens => (Some(max_reply_tokens), None),
            TokenLimitField::MaxTokens => (None, Some(max_reply_tokens)),
        };

        ChatCompletionRequest {
            model: model.into(),
            messages,
            stream: true,
            stream_options: StreamOptions { include_usage: true },
            max_completion_tokens,
            max_tokens,
            temperature: None,
        }
    }

    /// Sets the sampling temperature (0 to 2).
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }
}

/// One `chat.completion.chunk` object, reduced to the fields the decoder reads.
///
/// Source: the chat completion chunk object of
/// <https://developers.openai.com/api/reference/resources/chat>; the `usage`
/// chunk is described under `stream_options.include_usage` on the same page.
#[derive(Debug, Deserialize)]
struct ChunkWire {
    /// The choices; empty in the usage chunk, and `null` or missing there on
    /// some self-hosted servers.
    #[serde(default)]
    choices: Option<Vec<ChoiceWire>>,
    /// Token counts, `null` on every chunk but the usage chunk.
    #[serde(default)]
    usage: Option<UsageWire>,
    /// An error reported inside the stream. OpenAI's Python SDK
    /// (`openai/_streaming.py`) raises on any chunk whose `error` is set; the
    /// value is usually an object with `message`, `type` and `code`.
    #[serde(default)]
    error: Option<Value>,
}

/// One choice of a chunk.
#[derive(Debug, Deserialize)]
struct ChoiceWire {
    /// The choice's position; `n` is never set, so only choice 0 is read.
    #[serde(default)]
    index: Option<u64>,
    /// The new part of the message.
    #[serde(default)]
    delta: Option<DeltaWire>,
    /// The reason generation stopped (`"stop"`, `"length"`,
    /// `"content_filter"`, `"tool_calls"`), `null` until the last content chunk.
    #[serde(default)]
    finish_reason: Option<String>,
}

/// The `delta` of a choice.
#[derive(Debug, Deserialize)]
struct DeltaWire {
    /// The next piece of the reply; `null` or `""` in the first and last chunks.
    #[serde(default)]
    content: Option<String>,
}

/// The `usage` object of the usage chunk.
#[derive(Debug, Deserialize)]
struct UsageWire {
    /// Tokens of the prompt.
    #[serde(default)]
    prompt_tokens: Option<u64>,
    /// Tokens generated.
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Decodes the server-sent events of one streamed chat completion.
///
/// Feed it the `data` of every event in order with [`on_data`](Self::on_data),
/// then call [`finish`](Self::finish) when the HTTP body ends.
#[derive(Debug, Default, Clone)]
pub struct OpenAiStreamDecoder {
    /// Whether `data: [DONE]` arrived.
    saw_done: bool,
    /// Whether a chunk carried a `finish_reason`.
    saw_finish_reason: bool,
}

impl OpenAiStreamDecoder {
    /// Creates a decoder for a new response.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the `data` of one server-sent event into the events it
    /// contains, in the order text, stop reason, usage.
    ///
    /// `[DONE]` gives [`ChatEvent::End`] and is never parsed as JSON. Data
    /// that arrives after it, and data that is empty or only whitespace, gives
    /// no events.
    ///
    /// # Errors
    ///
    /// [`ChatStreamError::Provider`] for a chunk with an `error` field,
    /// retryable for server errors and rate limits, and
    /// [`ChatStreamError::Malformed`] for data that is not a JSON chunk object.
    pub fn on_data(&mut self, data: &str) -> Result<Vec<ChatEvent>, ChatStreamError> {
        let payload = data.trim();

        // The end marker is a bare word, so it must be matched before any JSON parsing.
        if payload == DONE_MARKER {
            self.saw_done = true;
            return Ok(vec![ChatEvent::End]);
        }
        if self.saw_done || payload.is_empty() {
            return Ok(Vec::new());
        }

        // A derived struct would also accept a JSON array, which no chunk is.
        if !payload.starts_with('{') {
            return Err(ChatStreamError::Malformed {
                detail: "a chat completion chunk is not a JSON object".to_owned(),
                excerpt: excerpt(payload),
            });
        }
        let chunk: ChunkWire = serde_json::from_str(payload).map_err(|error| ChatStreamError::Malformed {
            detail: format!("a chat completion chunk is not valid JSON of the documented shape: {error}"),
            excerpt: excerpt(payload),
        })?;

        // An error replaces the chunk: nothing else in it is meaningful.
        if let Some(error) = chunk.error.filter(|error| !error.is_null()) {
            return Err(provider_error(&error));
        }

        let mut events = Vec::new();
        let first_choice = chunk.choices.unwrap_or_default().into_iter().find(|choice| choice.index.unwrap_or(0) == 0);
        if let Some(choice) = first_choice {
            let content = choice.delta.and_then(|delta| delta.content).filter(|content| !content.is_empty());
            if let Some(content) = content {
                events.push(ChatEvent::Text(content));
            }
            if let Some(reason) = choice.finish_reason.filter(|reason| !reason.is_empty()) {
                self.saw_finish_reason = true;
                events.push(ChatEvent::Finished { reason });
            }
        }

        if let Some(usage) = chunk.usage
            && (usage.prompt_tokens.is_some() || usage.completion_tokens.is_some())
        {
            events.push(ChatEvent::Usage { input_tokens: usage.prompt_tokens, output_tokens: usage.completion_tokens });
        }
        Ok(events)
    }

    /// Checks, once the HTTP body has ended, that the reply was complete.
    ///
    /// # Errors
    ///
    /// [`ChatStreamError::Incomplete`] when neither `[DONE]` nor a
    /// `finish_reason` arrived, so the reply may have been cut short.
    pub fn finish(&self) -> Result<(), ChatStreamError> {
        if self.saw_done || self.saw_finish_reason { Ok(()) } else { Err(ChatStreamError::Incomplete) }
    }
}

/// Error `type`s and `code`s after which the same request can succeed later:
/// OpenAI's `server_error` and `rate_limit_exceeded`, and llama.cpp's
/// `unavailable_error` (the model is still loading).
const RETRYABLE_ERROR_KINDS: &[&str] =
    &["server_error", "rate_limit_exceeded", "rate_limit_error", "unavailable_error"];

/// Numeric error codes (HTTP statuses, as llama.cpp and vLLM send them) after
/// which the same request can succeed later.
const RETRYABLE_ERROR_STATUSES: &[u64] = &[429, 500, 502, 503, 504];

/// Builds the error for a chunk's `error` value: an object with `message`,
/// `type` and `code`, or a bare string.
fn provider_error(error: &Value) -> ChatStreamError {
    let message = match error {
        Value::String(text) => text.clone(),
        Value::Object(fields) => match fields.get("message").and_then(Value::as_str) {
            Some(text) => text.to_owned(),
            None => excerpt(&error.to_string()),
        },
        other => excerpt(&other.to_string()),
    };
    let error_type = error.get("type").and_then(Value::as_str).filter(|kind| !kind.is_empty());
    let code = error.get("code");
    let code_text = code.and_then(Value::as_str).filter(|code| !code.is_empty());
    let code_number = code.and_then(Value::as_u64);

    let retryable = error_type.is_some_and(|kind| RETRYABLE_ERROR_KINDS.contains(&kind))
        || code_text.is_some_and(|code| RETRYABLE_ERROR_KINDS.contains(&code))
        || code_number.is_some_and(|status| RETRYABLE_ERROR_STATUSES.contains(&status));
    let kind = match (error_type, code_text, code_number) {
        (Some(kind), _, _) => kind.to_owned(),
        (None, Some(code), _) => code.to_owned(),
        (None, None, Some(status)) => status.to_string(),
        (None, None, None) => "error".to_owned(),
    };

    ChatStreamError::Provider { kind, message, retryable }
}

/// Returns the start of `text`, at most [`EXCERPT_CHARS`] characters.
fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::history::Role;
    use proptest::prelude::*;

    /// Feeds every payload to a new decoder and returns all events.
    fn decode_all(payloads: &[&str]) -> (OpenAiStreamDecoder, Vec<ChatEvent>) {
        let mut decoder = OpenAiStreamDecoder::new();
        let mut events = Vec::new();
        for payload in payloads {
            events.extend(decoder.on_data(payload).expect("documented chunk decodes"));
        }
        (decoder, events)
    }

    fn text(content: &str) -> ChatEvent {
        ChatEvent::Text(content.to_owned())
    }

    // A stream as the API reference describes it: a first chunk with the role
    // and empty content, content chunks, a chunk with the finish reason and
    // an empty delta, the usage chunk with empty choices
    // (stream_options.include_usage), then [DONE].
    #[test]
    fn documented_stream_decodes() {
        let payloads = [
            r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
            r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
            "[DONE]",
        ];

        let (decoder, events) = decode_all(&payloads);

        assert_eq!(
            events,
            vec![
                text("Hello"),
                text("!"),
                ChatEvent::Finished { reason: "stop".to_owned() },
                ChatEvent::Usage { input_tokens: Some(9), output_tokens: Some(2) },
                ChatEvent::End,
            ]
        );
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn done_marker_is_not_parsed_as_json() {
        for payload in ["[DONE]", " [DONE]", "[DONE]\n", "\t[DONE] "] {
            let mut decoder = OpenAiStreamDecoder::new();

            let events = decoder.on_data(payload);

            assert_eq!(events, Ok(vec![ChatEvent::End]), "payload {payload:?}");
            assert_eq!(decoder.finish(), Ok(()), "payload {payload:?}");
        }
    }

    #[test]
    fn data_after_done_is_ignored() {
        let mut decoder = OpenAiStreamDecoder::new();
        decoder.on_data("[DONE]").expect("end marker");

        assert_eq!(decoder.on_data(r#"{"choices":[{"index":0,"delta":{"content":"late"}}]}"#), Ok(vec![]));
        assert_eq!(decoder.on_data("not json at all"), Ok(vec![]));
    }

    #[test]
    fn missing_done_and_finish_reason_is_incomplete() {
        let (decoder, events) =
            decode_all(&[r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#]);

        assert_eq!(events, vec![text("Hel")]);
        assert_eq!(decoder.finish(), Err(ChatStreamError::Incomplete));
    }

    #[test]
    fn empty_stream_is_incomplete() {
        assert_eq!(OpenAiStreamDecoder::new().finish(), Err(ChatStreamError::Incomplete));
    }

    // A body cut after the finish reason still carried the whole reply.
    #[test]
    fn finish_reason_without_done_is_complete() {
        let (decoder, events) = decode_all(&[r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#]);

        assert_eq!(events, vec![ChatEvent::Finished { reason: "length".to_owned() }]);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn content_and_finish_reason_in_one_chunk() {
        let (_, events) =
            decode_all(&[r#"{"choices":[{"index":0,"delta":{"content":"Bye."},"finish_reason":"stop"}]}"#]);

        assert_eq!(events, vec![text("Bye."), ChatEvent::Finished { reason: "stop".to_owned() }]);
    }

    #[test]
    fn null_and_empty_content_are_skipped() {
        let (_, events) = decode_all(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":null}]}"#,
            r#"{"choices":[{"index":0}]}"#,
        ]);

        assert_eq!(events, vec![]);
    }

    // vLLM can end with a usage chunk whose choices are null or missing.
    #[test]
    fn usage_chunk_with_null_or_missing_choices() {
        let (_, events) = decode_all(&[
            r#"{"choices":null,"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
            r#"{"usage":{"prompt_tokens":6,"completion_tokens":null}}"#,
        ]);

        assert_eq!(
            events,
            vec![
                ChatEvent::Usage { input_tokens: Some(5), output_tokens: Some(7) },
                ChatEvent::Usage { input_tokens: Some(6), output_tokens: None },
            ]
        );
    }

    #[test]
    fn empty_usage_object_gives_no_event() {
        let (_, events) = decode_all(&[r#"{"choices":[],"usage":{"total_tokens":3}}"#]);

        assert_eq!(events, vec![]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let (_, events) = decode_all(&[
            r#"{"id":"x","obfuscation":"abc","service_tier":"default","choices":[{"index":0,"delta":{"content":"Hi","reasoning_content":"thinking","tool_calls":[]},"logprobs":{"content":[]},"finish_reason":null,"extra":1}],"timings":{"predicted_ms":3.5}}"#,
        ]);

        assert_eq!(events, vec![text("Hi")]);
    }

    #[test]
    fn only_choice_zero_is_read() {
        let (_, events) = decode_all(&[
            r#"{"choices":[{"index":1,"delta":{"content":"other"}},{"index":0,"delta":{"content":"mine"}}]}"#,
        ]);

        assert_eq!(events, vec![text("mine")]);
    }

    #[test]
    fn whitespace_data_gives_no_events() {
        let (decoder, events) = decode_all(&["", "  ", "\n"]);

        assert_eq!(events, vec![]);
        assert_eq!(decoder.finish(), Err(ChatStreamError::Incomplete));
    }

    #[test]
    fn server_error_mid_stream_is_retryable() {
        let mut decoder = OpenAiStreamDecoder::new();
        decoder.on_data(r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#).expect("content chunk");

        let error = decoder
            .on_data(r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#);

        assert_eq!(
            error,
            Err(ChatStreamError::Provider {
                kind: "server_error".to_owned(),
                message: "The server had an error while processing your request.".to_owned(),
                retryable: true,
            })
        );
    }

    #[test]
    fn rate_limit_code_is_retryable() {
        let error = OpenAiStreamDecoder::new().on_data(
            r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );

        assert_eq!(
            error,
            Err(ChatStreamError::Provider {
                kind: "requests".to_owned(),
                message: "Rate limit reached for requests".to_owned(),
                retryable: true,
            })
        );
    }

    #[test]
    fn quota_and_request_errors_are_not_retryable() {
        let quota = OpenAiStreamDecoder::new().on_data(
            r#"{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        let invalid = OpenAiStreamDecoder::new().on_data(
            r#"{"error":{"message":"bad","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        );

        assert!(matches!(quota, Err(ChatStreamError::Provider { retryable: false, .. })), "{quota:?}");
        assert!(matches!(invalid, Err(ChatStreamError::Provider { retryable: false, .. })), "{invalid:?}");
    }

    // llama.cpp's server sends numeric codes with its own types.
    #[test]
    fn numeric_error_code_is_accepted() {
        let loading = OpenAiStreamDecoder::new()
            .on_data(r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#);
        let bare_status = OpenAiStreamDecoder::new().on_data(r#"{"error":{"code":500,"message":"boom"}}"#);
        let bad_request = OpenAiStreamDecoder::new().on_data(r#"{"error":{"code":400,"message":"bad"}}"#);

        assert_eq!(
            loading,
            Err(ChatStreamError::Provider {
                kind: "unavailable_error".to_owned(),
                message: "Loading model".to_owned(),
                retryable: true,
            })
        );
        assert_eq!(
            bare_status,
            Err(ChatStreamError::Provider { kind: "500".to_owned(), message: "boom".to_owned(), retryable: true })
        );
        assert!(matches!(bad_request, Err(ChatStreamError::Provider { retryable: false, .. })), "{bad_request:?}");
    }

    #[test]
    fn string_error_is_accepted() {
        let error = OpenAiStreamDecoder::new().on_data(r#"{"error":"model crashed"}"#);

        assert_eq!(
            error,
            Err(ChatStreamError::Provider {
                kind: "error".to_owned(),
                message: "model crashed".to_owned(),
                retryable: false
            })
        );
    }

    #[test]
    fn null_error_is_not_an_error() {
        let (_, events) = decode_all(&[r#"{"error":null,"choices":[{"index":0,"delta":{"content":"ok"}}]}"#]);

        assert_eq!(events, vec![text("ok")]);
    }

    #[test]
    fn malformed_json_gives_excerpt() {
        let long_garbage = format!("{{\"choices\": [{}", "x".repeat(500));

        let error = OpenAiStreamDecoder::new().on_data(&long_garbage);

        let Err(ChatStreamError::Malformed { detail, excerpt }) = error else {
            panic!("expected a malformed error, got {error:?}");
        };
        assert!(detail.contains("not valid JSON"), "{detail}");
        assert_eq!(excerpt.chars().count(), EXCERPT_CHARS);
        assert!(long_garbage.starts_with(&excerpt));
    }

    #[test]
    fn excerpt_counts_characters_not_bytes() {
        let payload = "é".repeat(200);

        let error = OpenAiStreamDecoder::new().on_data(&payload);

        let Err(ChatStreamError::Malformed { excerpt, .. }) = error else {
            panic!("expected a malformed error, got {error:?}");
        };
        assert_eq!(excerpt, "é".repeat(EXCERPT_CHARS));
    }

    #[test]
    fn json_that_is_not_a_chunk_is_malformed() {
        for payload in ["42", r#""text""#, "[]", "[1,2]", r#"{"choices":"none"}"#, r#"{"usage":{"prompt_tokens":-1}}"#]
        {
            let error = OpenAiStreamDecoder::new().on_data(payload);

            assert!(matches!(error, Err(ChatStreamError::Malformed { .. })), "payload {payload}: {error:?}");
        }
    }

    #[test]
    fn request_serializes_documented_fields() {
        let history = [ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Hi")];

        let request = ChatCompletionRequest::new("gpt-4o-mini", &history, 256, TokenLimitField::MaxCompletionTokens)
            .with_temperature(0.5);
        let json = serde_json::to_value(&request).expect("request serializes");

        assert_eq!(
            json,
            serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"}
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_completion_tokens": 256,
                "temperature": 0.5
            })
        );
    }

    #[test]
    fn request_for_self_hosted_uses_max_tokens() {
        let history = [ChatMessage::new(Role::User, "Hi")];

        let request = ChatCompletionRequest::new("smollm2", &history, 64, TokenLimitField::MaxTokens);
        let json = serde_json::to_value(&request).expect("request serializes");

        assert_eq!(json.get("max_tokens"), Some(&serde_json::json!(64)));
        assert_eq!(json.get("max_completion_tokens"), None);
        assert_eq!(json.get("temperature"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_data_never_panics(data in any::<String>()) {
            let mut decoder = OpenAiStreamDecoder::new();
            let _ = decoder.on_data(&data);
            let _ = decoder.finish();
        }

        #[test]
        fn arbitrary_chunks_never_panic(content in any::<String>(), reason in proptest::option::of(any::<String>()), tokens in any::<u64>()) {
            let chunk = serde_json::json!({
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": reason}],
                "usage": {"prompt_tokens": tokens, "completion_tokens": tokens},
            });
            let mut decoder = OpenAiStreamDecoder::new();
            let events = decoder.on_data(&chunk.to_string()).expect("well-formed chunk decodes");
            prop_assert!(events.iter().all(|event| !matches!(event, ChatEvent::Text(text) if text.is_empty())));
        }
    }
}
