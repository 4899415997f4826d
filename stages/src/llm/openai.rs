//! OpenAI Chat Completions streaming over server-sent events.
//!
//! The same client serves OpenAI itself (`https://api.openai.com/v1`, a
//! cloud endpoint, `Authorization: Bearer` key) and self-hosted
//! OpenAI-compatible servers such as llama.cpp's server and vLLM
//! (`http://HOST:PORT/v1`), which read the `max_tokens` field instead of
//! `max_completion_tokens`.

use super::history::ChatMessage;
use super::remote::{ChatProtocol, RemoteLlm, ReplySettings, SseDecoder, StreamDecoder};
use crate::net::http::Request;
use crate::net::{Endpoint, NetError};

pub mod messages;

use messages::{ChatCompletionRequest, OpenAiStreamDecoder, TokenLimitField};

/// The base URL of OpenAI's API.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// The Chat Completions protocol with a model name.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    model: String,
    limit_field: TokenLimitField,
}

impl OpenAiChat {
    /// For OpenAI itself: the limit goes in `max_completion_tokens`.
    pub fn openai(model: impl Into<String>) -> Self {
        OpenAiChat { model: model.into(), limit_field: TokenLimitField::MaxCompletionTokens }
    }

    /// For self-hosted servers (llama.cpp, vLLM): the limit goes in `max_tokens`.
    pub fn compatible(model: impl Into<String>) -> Self {
        OpenAiChat { model: model.into(), limit_field: TokenLimitField::MaxTokens }
    }
}

impl ChatProtocol for OpenAiChat {
    fn backend(&self) -> &'static str {
        "openai"
    }

    fn request(&self, endpoint: &Endpoint, messages: &[ChatMessage], settings: ReplySettings) -> Result<Request, NetError> {
        let mut body = ChatCompletionRequest::new(self.model.clone(), messages, settings.max_tokens, self.limit_field);
        if let Some(temperature) = settings.temperature {
            body = body.with_temperature(temperature);
        }
        let mut request = Request::post_json(endpoint.join("chat/completions")?, &body)?;
        request.header(http::header::ACCEPT, "text/event-stream")?;
        if let Some(key) = endpoint.api_key() {
            request.secret_header(http::header::AUTHORIZATION, "Bearer ", key)?;
        }
        Ok(request)
    }

    fn decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder::new(
            OpenAiStreamDecoder::new(),
            |decoder, _event, data| decoder.on_data(data),
            OpenAiStreamDecoder::finish,
        ))
    }
}

/// The LLM stage for OpenAI-compatible servers.
pub type OpenAiLlm = RemoteLlm<OpenAiChat>;
