//! What a streaming LLM response is made of, whatever the provider.
//!
//! Each provider's decoder (OpenAI SSE chunks, Anthropic SSE events, Ollama
//! NDJSON lines) turns the provider's messages into [`ChatEvent`]s, so the
//! stage that drives a request handles every provider the same way.

/// One step of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// The next piece of the reply text. Never empty.
    Text(String),
    /// Token counts, when the provider reports them. Either may be missing;
    /// a later report replaces an earlier one field by field.
    Usage {
        /// Tokens of the prompt.
        input_tokens: Option<u64>,
        /// Tokens generated.
        output_tokens: Option<u64>,
    },
    /// The model stopped, with the provider's reason (`"stop"`, `"length"`,
    /// `"end_turn"`, `"max_tokens"`...). More events may follow (usage, the
    /// end marker).
    Finished {
        /// The provider's stop reason as sent.
        reason: String,
    },
    /// The provider's end-of-stream marker (`data: [DONE]`, `message_stop`,
    /// `"done": true`). Nothing follows it.
    End,
}

/// A streamed response that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatStreamError {
    /// The provider reported an error inside the stream, such as Anthropic's
    /// `overloaded_error` event or an OpenAI `error` object.
    #[error("the provider reported {kind} in the stream: {message}")]
    Provider {
        /// The provider's error type, such as `"overloaded_error"`.
        kind: String,
        /// The provider's message.
        message: String,
        /// Whether trying again later can succeed (overload, rate limit, server error).
        retryable: bool,
    },
    /// A message that is not the JSON the provider documents.
    #[error("the provider sent a malformed message ({detail}): {excerpt:?}")]
    Malformed {
        /// What was wrong.
        detail: String,
        /// The start of the message, at most 120 characters.
        excerpt: String,
    },
    /// The stream ended without the provider's end marker or a stop reason,
    /// so the reply may be cut short.
    #[error("the stream ended without an end marker or a stop reason; the reply may be incomplete")]
    Incomplete,
}

impl ChatStreamError {
    /// Returns whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ChatStreamError::Provider { retryable, .. } => *retryable,
            ChatStreamError::Malformed { .. } => false,
            ChatStreamError::Incomplete => true,
        }
    }
}
