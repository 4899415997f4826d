//! Anthropic Messages streaming over server-sent events (cloud).
//!
//! Requests go to `{base}/messages` with the `x-api-key` and
//! `anthropic-version` headers (<https://docs.anthropic.com/en/api/messages>).

use super::history::ChatMessage;
use super::remote::{ChatProtocol, RemoteLlm, ReplySettings, SseDecoder, StreamDecoder};
use crate::net::http::Request;
use crate::net::{Endpoint, NetError};

pub mod messages;

use messages::{AnthropicStreamDecoder, MessagesRequest};

/// The base URL of Anthropic's API.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";

/// The API version sent in the `anthropic-version` header. Source:
/// <https://docs.anthropic.com/en/api/versioning>.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The Messages protocol with a model name.
#[derive(Debug, Clone)]
pub struct AnthropicChat {
    model: String,
}

impl AnthropicChat {
    /// Uses `model`, such as `"claude-3-5-haiku-latest"`.
    pub fn new(model: impl Into<String>) -> Self {
        AnthropicChat { model: model.into() }
    }
}

impl ChatProtocol for AnthropicChat {
    fn backend(&self) -> &'static str {
        "anthropic"
    }

    fn request(&self, endpoint: &Endpoint, messages: &[ChatMessage], settings: ReplySettings) -> Result<Request, NetError> {
        let url = endpoint.join("messages")?;
        let mut body = MessagesRequest::new(self.model.clone(), messages, settings.max_tokens).map_err(|error| {
            NetError::BadEndpoint { endpoint: mentis_pipeline::privacy::redact_url(&url), reason: error.to_string() }
        })?;
        if let Some(temperature) = settings.temperature {
            body = body.with_temperature(temperature);
        }
        let mut request = Request::post_json(url, &body)?;
        request.header(http::header::ACCEPT, "text/event-stream")?;
        request.header(http::HeaderName::from_static("anthropic-version"), ANTHROPIC_VERSION)?;
        if let Some(key) = endpoint.api_key() {
            request.secret_header(http::HeaderName::from_static("x-api-key"), "", key)?;
        }
        Ok(request)
    }

    fn decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder::new(
            AnthropicStreamDecoder::new(),
            AnthropicStreamDecoder::on_event,
            AnthropicStreamDecoder::finish,
        ))
    }
}

/// The LLM stage for Anthropic.
pub type AnthropicLlm = RemoteLlm<AnthropicChat>;
