//! Ollama's `POST /api/chat` with a streamed reply: the request body, and a
//! decoder that turns each NDJSON line of the response into [`ChatEvent`]s.
//!
//! Each line is one JSON object. Lines with `"done": false` carry the next
//! piece of the reply in `message.content`; the last line has `"done": true`
//! and the statistics of the request. An error after the response has
//! started arrives as a line `{"error": "..."}`.
//!
//! Everything here is pure: no I/O, and no input makes it panic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::events::{ChatEvent, ChatStreamError};
use crate::llm::history::ChatMessage;

/// Maximum number of characters of a malformed line kept in
/// [`ChatStreamError::Malformed`], so an error never carries a whole message.
const EXCERPT_CHARS: usize = 120;

/// The [`ChatStreamError::Provider`] kind of an Ollama error. Ollama's errors
/// carry only a message, no type.
const ERROR_KIND: &str = "error";

/// One message of the request's `messages` array.
///
/// Source: "Generate a chat completion" in
/// <https://github.com/ollama/ollama/blob/main/docs/api.md>.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestMessage {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: &'static str,
    /// The message text.
    pub content: String,
}

/// Model parameters of the request, from the Modelfile parameters Ollama
/// accepts in `options`. Unset parameters are omitted, so the model's own
/// defaults apply.
///
/// Source: the `options` parameter in
/// <https://github.com/ollama/ollama/blob/main/docs/api.md> and its
/// "Generate request (With options)" example.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RequestOptions {
    /// The maximum number of tokens to generate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_predict: Option<u32>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

impl RequestOptions {
    /// Returns whether no option is set.
    fn is_empty(&self) -> bool {
        self.num_predict.is_none() && self.temperature.is_none()
    }
}

/// The body of a streaming `POST /api/chat` request.
///
/// Source: "Generate a chat completion" in
/// <https://github.com/ollama/ollama/blob/main/docs/api.md>.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatRequest {
    /// The model name, such as `"llama3.2"` or `"smollm2:135m"`.
    pub model: String,
    /// The conversation, oldest message first.
    pub messages: Vec<RequestMessage>,
    /// Always `true`: the decoder below reads NDJSON lines.
    stream: bool,
    /// Model parameters; omitted when none is set.
    #[serde(skip_serializing_if = "RequestOptions::is_empty")]
    pub options: RequestOptions,
}

impl ChatRequest {
    /// Builds a streaming request for `history`, with every message sent as
    /// is, system prompt included.
    pub fn new(model: impl Into<String>, history: &[ChatMessage], options: RequestOptions) -> Self {
        let messages = history
            .iter()
            .map(|message| RequestMessage { role: message.role.as_str(), content: message.content.clone() })
            .collect();
        ChatRequest { model: model.into(), messages, stream: true, options }
    }
}

/// One line of the streamed response, reduced to the fields the decoder reads.
///
/// Source: the "Chat Request (Streaming)" example in
/// <https://github.com/ollama/ollama/blob/main/docs/api.md>, and "Errors that
/// occur while streaming" in <https://docs.ollama.com/api/errors>.
#[derive(Debug, Deserialize)]
struct LineWire {
    /// The next piece of the reply; missing in the docs' final line.
    #[serde(default)]
    message: Option<MessageWire>,
    /// Whether this is the last line.
    #[serde(default)]
    done: Option<bool>,
    /// The reason generation stopped (`"stop"`, `"length"`...), on the last
    /// line. Older servers omit it.
    #[serde(default)]
    done_reason: Option<String>,
    /// Tokens of the prompt, on the last line.
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    /// Tokens generated, on the last line.
    #[serde(default)]
    eval_count: Option<u64>,
    /// An error reported after the response started; a string in the docs.
    #[serde(default)]
    error: Option<Value>,
}

/// The `message` of a response line.
#[derive(Debug, Deserialize)]
struct MessageWire {
    /// The new text.
    #[serde(default)]
    content: Option<String>,
}

/// Decodes the NDJSON lines of one streamed `/api/chat` response.
///
/// Feed it every line in order with [`on_line`](Self::on_line), then call
/// [`finish`](Self::finish) when the HTTP body ends.
#[derive(Debug, Default, Clone)]
pub struct OllamaStreamDecoder {
    /// Whether the `"done": true` line arrived.
    saw_done: bool,
}

impl OllamaStreamDecoder {
    /// Creates a decoder for a new response.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one NDJSON line into the events it contains.
    ///
    /// A line's `message.content` gives [`ChatEvent::Text`] when not empty.
    /// The `"done": true` line gives, in order, [`ChatEvent::Finished`] (when
    /// it has a `done_reason`), [`ChatEvent::Usage`] (when it has a token
    /// count) and [`ChatEvent::End`]. Blank lines, and lines after the done
    /// line, give no events.
    ///
    /// # Errors
    ///
    /// [`ChatStreamError::Provider`] for a line with an `error` field (not
    /// retryable, because Ollama's errors do not say what kind they are), and
    /// [`ChatStreamError::Malformed`] for a line that is not a JSON object
    /// of the documented shape.
    pub fn on_line(&mut self, line: &str) -> Result<Vec<ChatEvent>, ChatStreamError> {
        let line = line.trim();
        if line.is_empty() || self.saw_done {
            return Ok(Vec::new());
        }

        // A derived struct would also accept a JSON array, which no line is.
        if !line.starts_with('{') {
            return Err(ChatStreamError::Malformed {
                detail: "an /api/chat response line is not a JSON object".to_owned(),
                excerpt: excerpt(line),
            });
        }
        let parsed: LineWire = serde_json::from_str(line).map_err(|error| ChatStreamError::Malformed {
            detail: format!("an /api/chat response line is not valid JSON of the documented shape: {error}"),
            excerpt: excerpt(line),
        })?;

        // An error replaces the line: nothing else in it is meaningful.
        if let Some(error) = parsed.error.filter(|error| !error.is_null()) {
            let message = match error {
                Value::String(text) => text,
                other => excerpt(&other.to_string()),
            };
            return Err(ChatStreamError::Provider { kind: ERROR_KIND.to_owned(), message, retryable: false });
        }

        let mut events = Vec::new();
        let content = parsed.message.and_then(|message| message.content).filter(|content| !content.is_empty());
        if let Some(content) = content {
            events.push(ChatEvent::Text(content));
        }

        if parsed.done == Some(true) {
            self.saw_done = true;
            if let Some(reason) = parsed.done_reason.filter(|reason| !reason.is_empty()) {
                events.push(ChatEvent::Finished { reason });
            }
            if parsed.prompt_eval_count.is_some() || parsed.eval_count.is_some() {
                events.push(ChatEvent::Usage {
                    input_tokens: parsed.prompt_eval_count,
                    output_tokens: parsed.eval_count,
                });
            }
            events.push(ChatEvent::End);
        }
        Ok(events)
    }

    /// Checks, once the HTTP body has ended, that the reply was complete.
    ///
    /// # Errors
    ///
    /// [`ChatStreamError::Incomplete`] when the `"done": true` line never
    /// arrived, so the reply may have been cut short.
    pub fn finish(&self) -> Result<(), ChatStreamError> {
        if self.saw_done { Ok(()) } else { Err(ChatStreamError::Incomplete) }
    }
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

    /// Feeds every line to a new decoder and returns all events.
    fn decode_all(lines: &[&str]) -> (OllamaStreamDecoder, Vec<ChatEvent>) {
        let mut decoder = OllamaStreamDecoder::new();
        let mut events = Vec::new();
        for line in lines {
            events.extend(decoder.on_line(line).expect("documented line decodes"));
        }
        (decoder, events)
    }

    fn text(content: &str) -> ChatEvent {
        ChatEvent::Text(content.to_owned())
    }

    // The "Chat Request (Streaming)" example of docs/api.md: its final line
    // has no `message` and no `done_reason`.
    #[test]
    fn documented_stream_decodes() {
        let (decoder, events) = decode_all(&[
            r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The","images":null},"done":false}"#,
            r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":" sky","images":null},"done":false}"#,
            r#"{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","done":true,"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#,
        ]);

        assert_eq!(
            events,
            vec![
                text("The"),
                text(" sky"),
                ChatEvent::Usage { input_tokens: Some(26), output_tokens: Some(282) },
                ChatEvent::End,
            ]
        );
        assert_eq!(decoder.finish(), Ok(()));
    }

    // Current servers send an empty message and a done_reason on the last line,
    // as the "Structured outputs" example shows.
    #[test]
    fn done_line_with_reason_decodes() {
        let (_, events) = decode_all(&[
            r#"{"model":"llama3.1","created_at":"2024-12-06T00:46:58.265747Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":2254970291,"load_duration":574751416,"prompt_eval_count":34,"prompt_eval_duration":1502000000,"eval_count":12,"eval_duration":175000000}"#,
        ]);

        assert_eq!(
            events,
            vec![
                ChatEvent::Finished { reason: "stop".to_owned() },
                ChatEvent::Usage { input_tokens: Some(34), output_tokens: Some(12) },
                ChatEvent::End,
            ]
        );
    }

    #[test]
    fn done_line_with_text_keeps_text_first() {
        let (_, events) =
            decode_all(&[r#"{"message":{"role":"assistant","content":"Bye."},"done":true,"done_reason":"length"}"#]);

        assert_eq!(events, vec![text("Bye."), ChatEvent::Finished { reason: "length".to_owned() }, ChatEvent::End]);
    }

    // The docs' "Load a model" response: done with no counts.
    #[test]
    fn done_line_without_counts_has_no_usage() {
        let (_, events) = decode_all(&[
            r#"{"model":"llama3.2","created_at":"2024-09-12T21:17:29.110811Z","message":{"role":"assistant","content":""},"done_reason":"load","done":true}"#,
        ]);

        assert_eq!(events, vec![ChatEvent::Finished { reason: "load".to_owned() }, ChatEvent::End]);
    }

    #[test]
    fn missing_done_line_is_incomplete() {
        let (decoder, events) = decode_all(&[r#"{"message":{"role":"assistant","content":"The"},"done":false}"#]);

        assert_eq!(events, vec![text("The")]);
        assert_eq!(decoder.finish(), Err(ChatStreamError::Incomplete));
    }

    // The example of docs.ollama.com/api/errors, for an /api/chat stream.
    #[test]
    fn error_mid_stream_is_a_provider_error() {
        let mut decoder = OllamaStreamDecoder::new();
        decoder
            .on_line(r#"{"model":"gemma3","created_at":"2025-10-26T17:21:21.196249Z","message":{"role":"assistant","content":" Yes"},"done":false}"#)
            .expect("content line");

        let error = decoder.on_line(r#"{"error":"an error was encountered while running the model"}"#);

        assert_eq!(
            error,
            Err(ChatStreamError::Provider {
                kind: "error".to_owned(),
                message: "an error was encountered while running the model".to_owned(),
                retryable: false,
            })
        );
        assert_eq!(decoder.finish(), Err(ChatStreamError::Incomplete));
    }

    // The docs only show string errors; an object is kept as its JSON text.
    #[test]
    fn non_string_error_is_kept_as_json() {
        let error = OllamaStreamDecoder::new().on_line(r#"{"error":{"message":"boom"}}"#);

        assert_eq!(
            error,
            Err(ChatStreamError::Provider {
                kind: "error".to_owned(),
                message: r#"{"message":"boom"}"#.to_owned(),
                retryable: false
            })
        );
    }

    #[test]
    fn blank_lines_and_lines_after_done_are_ignored() {
        let (decoder, events) = decode_all(&[
            "",
            "   ",
            r#"{"message":{"content":"A"},"done":false}"#,
            "\r",
            r#"{"done":true}"#,
            r#"{"message":{"content":"late"},"done":false}"#,
            "not json",
        ]);

        assert_eq!(events, vec![text("A"), ChatEvent::End]);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let (_, events) = decode_all(&[
            r#"{"model":"qwen3","message":{"role":"assistant","content":"","thinking":"hmm","tool_calls":[]},"done":false,"future":{"x":1}}"#,
            r#"{"message":{"role":"assistant","content":"Hi"},"done":false,"logprobs":[]}"#,
        ]);

        assert_eq!(events, vec![text("Hi")]);
    }

    #[test]
    fn malformed_line_gives_excerpt() {
        let line = format!(r#"{{"message":{{"content":"{}"#, "z".repeat(400));

        let error = OllamaStreamDecoder::new().on_line(&line);

        let Err(ChatStreamError::Malformed { detail, excerpt }) = error else {
            panic!("expected a malformed error, got {error:?}");
        };
        assert!(detail.contains("not valid JSON"), "{detail}");
        assert_eq!(excerpt.chars().count(), EXCERPT_CHARS);
        assert!(line.starts_with(&excerpt));
    }

    #[test]
    fn non_object_lines_are_malformed() {
        for line in ["42", "[]", r#""done""#, r#"{"done":"yes"}"#, r#"{"message":"text"}"#, r#"{"eval_count":-3}"#] {
            let error = OllamaStreamDecoder::new().on_line(line);

            assert!(matches!(error, Err(ChatStreamError::Malformed { .. })), "line {line}: {error:?}");
        }
    }

    #[test]
    fn request_serializes_documented_fields() {
        let history =
            [ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "why is the sky blue?")];
        let options = RequestOptions { num_predict: Some(100), temperature: Some(0.5) };

        let request = ChatRequest::new("llama3.2", &history, options);
        let json = serde_json::to_value(&request).expect("request serializes");

        assert_eq!(
            json,
            serde_json::json!({
                "model": "llama3.2",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "why is the sky blue?"}
                ],
                "stream": true,
                "options": {"num_predict": 100, "temperature": 0.5}
            })
        );
    }

    #[test]
    fn request_omits_empty_options() {
        let request = ChatRequest::new("llama3.2", &[ChatMessage::new(Role::User, "Hi")], RequestOptions::default());
        let json = serde_json::to_value(&request).expect("request serializes");

        assert_eq!(json.get("options"), None);
        assert_eq!(json.get("stream"), Some(&serde_json::json!(true)));
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(line in any::<String>()) {
            let mut decoder = OllamaStreamDecoder::new();
            let _ = decoder.on_line(&line);
            let _ = decoder.finish();
        }
    }
}
