//! LLM stages: they turn the final transcript of a turn into a streamed reply.
//!
//! An LLM stage takes [`PortFormat::Transcript`](mentis_pipeline::PortFormat)
//! frames and emits [`PortFormat::Text`](mentis_pipeline::PortFormat) frames:
//! one [`TextDelta`](mentis_pipeline::TextDelta) per decoded piece of the
//! reply, then an empty delta with `last: true`. Partial transcripts never
//! start a reply. The conversation lives in a [`ConversationHistory`] shared
//! with the application, which cuts an interrupted reply to what was played.
//!
//! Backends:
//!
//! - [`LlamaLlm`] (feature `llama`): GGUF models run on the device by
//!   llama.cpp, such as SmolLM2-135M-Instruct from `scripts/setup`.

#[cfg(feature = "net")]
pub mod events;
pub mod history;
#[cfg(feature = "net")]
pub mod remote;
#[cfg(feature = "llama")]
pub mod llama;
pub mod utf8;
#[cfg(feature = "openai-llm")]
pub mod openai;
#[cfg(feature = "anthropic")]
pub mod anthropic;
#[cfg(feature = "ollama")]
pub mod ollama;

pub use history::{
    ChatMessage, ConversationHistory, Exchange, HistoryError, HistoryLimits, ReplyState, Role, SharedHistory,
};
#[cfg(feature = "llama")]
pub use llama::{GenerationLog, GenerationStats, LlamaConfig, LlamaError, LlamaLlm, Sampling, StopReason};
pub use utf8::Utf8Decoder;
