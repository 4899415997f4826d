//! Ollama's `/api/chat` with newline-delimited JSON streaming (self-hosted).
//!
//! Source: "Generate a chat completion" in
//! <https://github.com/ollama/ollama/blob/main/docs/api.md>.

use super::events::{ChatEvent, ChatStreamError};
use super::history::ChatMessage;
use super::remote::{ChatProtocol, RemoteLlm, ReplySettings, StreamDecoder};
use crate::net::http::Request;
use crate::net::ndjson::NdjsonSplitter;
use crate::net::{Endpoint, NetError};

pub mod messages;

use messages::{ChatRequest, OllamaStreamDecoder, RequestOptions};

/// Ollama's default address.
pub const OLLAMA_BASE_URL: &str = "http://127.0.0.1:11434";

/// The Ollama chat protocol with a model name.
#[derive(Debug, Clone)]
pub struct OllamaChat {
    model: String,
}

impl OllamaChat {
    /// Uses `model`, such as `"llama3.2"`.
    pub fn new(model: impl Into<String>) -> Self {
        OllamaChat { model: model.into() }
    }
}

/// Splits the body into lines and decodes each.
#[derive(Debug, Default)]
struct NdjsonChat {
    splitter: NdjsonSplitter,
    decoder: OllamaStreamDecoder,
    lines: Vec<String>,
}

fn malformed(error: impl std::fmt::Display) -> ChatStreamError {
    ChatStreamError::Malformed { detail: error.to_string(), excerpt: String::new() }
}

impl NdjsonChat {
    fn decode_lines(&mut self, events: &mut Vec<ChatEvent>) -> Result<(), ChatStreamError> {
        for line in self.lines.drain(..) {
            events.extend(self.decoder.on_line(&line)?);
        }
        Ok(())
    }
}

impl StreamDecoder for NdjsonChat {
    fn push(&mut self, bytes: &[u8], events: &mut Vec<ChatEvent>) -> Result<(), ChatStreamError> {
        let split = self.splitter.push(bytes, &mut self.lines);
        // Lines complete before a framing error still count.
        self.decode_lines(events)?;
        split.map_err(malformed)
    }

    fn finish(&mut self, events: &mut Vec<ChatEvent>) -> Result<(), ChatStreamError> {
        if let Some(line) = self.splitter.finish().map_err(malformed)? {
            self.lines.push(line);
        }
        self.decode_lines(events)?;
        self.decoder.finish()
    }
}

impl ChatProtocol for OllamaChat {
    fn backend(&self) -> &'static str {
        "ollama"
    }

    fn request(&self, endpoint: &Endpoint, messages: &[ChatMessage], settings: ReplySettings) -> Result<Request, NetError> {
        let options = RequestOptions { num_predict: Some(settings.max_tokens), temperature: settings.temperature };
        let body = ChatRequest::new(self.model.clone(), messages, options);
        let mut request = Request::post_json(endpoint.join("api/chat")?, &body)?;
        if let Some(key) = endpoint.api_key() {
            // Ollama has no keys of its own, but a reverse proxy in front of it may.
            request.secret_header(http::header::AUTHORIZATION, "Bearer ", key)?;
        }
        Ok(request)
    }

    fn decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(NdjsonChat::default())
    }
}

/// The LLM stage for Ollama.
pub type OllamaLlm = RemoteLlm<OllamaChat>;
