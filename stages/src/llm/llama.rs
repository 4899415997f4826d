//! An LLM stage that runs GGUF models on the device with llama.cpp
//! (`llama-cpp-2` 0.1.160).
//!
//! The model and one llama.cpp context are loaded when the stage is built, and
//! the context serves every turn. Its KV cache is reused across turns. Before
//! a reply, the new prompt is compared token by token with the cached tokens.
//! Only the tokens after the shared prefix are removed from the cache and
//! evaluated, so the system prompt and earlier exchanges are not evaluated
//! again. When the start of the history changed (oldest exchanges dropped),
//! little or nothing is shared and the whole prompt is evaluated again.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::{BatchAddError, LlamaBatch};
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{
    ApplyChatTemplateError, ChatTemplateError, DecodeError, LlamaContextLoadError, LlamaModelLoadError,
    NewLlamaChatMessageError,
};
use mentis_pipeline::frame::{Frame, MediaTime, Payload, TextDelta, TranscriptKind};
use mentis_pipeline::stage::{Emitter, Execution, Processor, StageSpec};
use mentis_pipeline::{PortFormat, StageError, StageName, TurnId, TurnMark};
use parking_lot::Mutex;

use super::history::{ChatMessage, SharedHistory};
use super::utf8::Utf8Decoder;

/// The llama.cpp sequence id of the conversation: one context serves one
/// conversation, so every token belongs to sequence 0.
const SEQUENCE: i32 = 0;

/// The method that picks each next token of a reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token every time: the same prompt gives the same reply.
    Greedy,
    /// A random draw among the `top_k` most likely tokens, cut to cumulative
    /// probability `top_p`, after dividing the logits by `temperature`. The
    /// generator restarts from `seed` for every reply, so the same prompt
    /// gives the same reply.
    Random {
        /// Above 0; below 1 sharpens and above 1 flattens the distribution.
        temperature: f32,
        /// At least 1.
        top_k: u16,
        /// In (0, 1].
        top_p: f32,
        /// Seed of the random generator.
        seed: u32,
    },
}

impl Sampling {
    fn validate(&self) -> Result<(), LlamaError> {
        let Sampling::Random { temperature, top_k, top_p, .. } = *self else {
            return Ok(());
        };
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(invalid("sampling.temperature", temperature, "a finite number above 0"));
        }
        if top_k == 0 {
            return Err(invalid("sampling.top_k", top_k, "at least 1"));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(invalid("sampling.top_p", top_p, "a number in (0, 1]"));
        }
        Ok(())
    }

    fn sampler(&self) -> LlamaSampler {
        match *self {
            Sampling::Greedy => LlamaSampler::greedy(),
            Sampling::Random { temperature, top_k, top_p, seed } => LlamaSampler::chain_simple([
                LlamaSampler::top_k(i32::from(top_k)),
                LlamaSampler::top_p(top_p, 1),
                LlamaSampler::temp(temperature),
                LlamaSampler::dist(seed),
            ]),
        }
    }
}

/// Settings of a [`LlamaLlm`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The GGUF model file. It must carry a chat template.
    pub model_path: PathBuf,
    /// Maximum number of tokens generated per reply.
    pub max_new_tokens: u32,
    /// The method that picks each next token.
    pub sampling: Sampling,
    /// Size of the context window in tokens: the prompt and the reply must fit
    /// in it together. Oldest exchanges are dropped from the history until they do.
    pub context_tokens: u32,
    /// Maximum number of prompt tokens evaluated by one llama.cpp call.
    pub batch_tokens: u32,
    /// CPU threads for prompt evaluation and generation.
    pub threads: u16,
}

impl LlamaConfig {
    /// The default reply length in tokens: about 45 English words, two
    /// spoken sentences.
    pub const DEFAULT_MAX_NEW_TOKENS: u32 = 64;
    /// The default context window in tokens: the default history limit and a
    /// reply fit with room to spare (an estimate, at about 4 characters per token).
    pub const DEFAULT_CONTEXT_TOKENS: u32 = 2_048;
    /// The default prompt batch in tokens, llama.cpp's default micro-batch.
    pub const DEFAULT_BATCH_TOKENS: u32 = 512;
    /// The default thread count.
    ///
    /// NOTE: llama.cpp's threads spin while they wait for each other, so more
    /// threads than idle cores slows generation sharply. On a 2-core machine
    /// busy with a parallel build, SmolLM2-135M ran at 1 to 2 tokens/s with 2
    /// threads and 20 to 30 tokens/s with 1. Lower `threads` when speech
    /// recognition or synthesis shares the cores.
    pub const DEFAULT_THREADS: u16 = 2;

    /// Settings for the model at `model_path`, with greedy sampling and the
    /// default limits.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        LlamaConfig {
            model_path: model_path.into(),
            max_new_tokens: LlamaConfig::DEFAULT_MAX_NEW_TOKENS,
            sampling: Sampling::Greedy,
            context_tokens: LlamaConfig::DEFAULT_CONTEXT_TOKENS,
            batch_tokens: LlamaConfig::DEFAULT_BATCH_TOKENS,
            threads: LlamaConfig::DEFAULT_THREADS,
        }
    }

    /// Settings for SmolLM2-135M-Instruct where `scripts/setup` puts it.
    pub fn smollm2() -> Self {
        LlamaConfig::new(LlamaConfig::smollm2_path())
    }

    /// Returns where `scripts/setup` puts SmolLM2-135M-Instruct (Q4_1).
    pub fn smollm2_path() -> PathBuf {
        crate::models::models_dir().join("smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    /// Returns the settings with another reply length limit.
    #[must_use]
    pub fn with_max_new_tokens(mut self, max_new_tokens: u32) -> Self {
        self.max_new_tokens = max_new_tokens;
        self
    }

    /// Returns the settings with another sampling method.
    #[must_use]
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    fn validate(&self) -> Result<(), LlamaError> {
        if self.max_new_tokens == 0 {
            return Err(invalid("max_new_tokens", self.max_new_tokens, "at least 1"));
        }
        if self.context_tokens <= self.max_new_tokens {
            let expected = "more than max_new_tokens, to leave room for the prompt";
            return Err(invalid("context_tokens", self.context_tokens, expected));
        }
        if self.context_tokens > i32::MAX as u32 {
            return Err(invalid("context_tokens", self.context_tokens, "at most 2^31 - 1, llama.cpp's position limit"));
        }
        if self.batch_tokens == 0 {
            return Err(invalid("batch_tokens", self.batch_tokens, "at least 1"));
        }
        if self.threads == 0 {
            return Err(invalid("threads", self.threads, "at least 1"));
        }
        self.sampling.validate()
    }
}

/// A failure of the llama.cpp LLM stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaError {
    /// The model file does not exist.
    #[error(
        "LLM model file {} not found: run scripts/setup to download it, or set LlamaConfig::model_path",
        path.display()
    )]
    ModelNotFound {
        /// The path that was tried.
        path: PathBuf,
    },
    /// A setting is out of range.
    #[error("invalid LLM setting {setting} = {value}: expected {expected}")]
    InvalidConfig {
        /// The setting's field name in [`LlamaConfig`].
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// llama.cpp could not be initialised.
    #[error(
        "failed to initialise the llama.cpp backend: {message}; another library in this process may have \
         initialised it first"
    )]
    Backend {
        /// llama-cpp-2's error message.
        message: String,
    },
    /// llama.cpp could not load the model file.
    #[error(
        "failed to load the GGUF model {}: {source}; the file may be truncated or not a GGUF model, so run \
         scripts/setup again",
        path.display()
    )]
    ModelLoad {
        /// The model file.
        path: PathBuf,
        /// llama-cpp-2's error.
        #[source]
        source: LlamaModelLoadError,
    },
    /// The model file carries no chat template, so prompts cannot be formatted.
    #[error("the GGUF model {} has no usable chat template ({source}); use an instruct (chat) model", path.display())]
    MissingChatTemplate {
        /// The model file.
        path: PathBuf,
        /// llama-cpp-2's error.
        #[source]
        source: ChatTemplateError,
    },
    /// llama.cpp could not create the context, usually for lack of memory.
    #[error(
        "failed to create a llama.cpp context of {context_tokens} tokens: {source}; lower \
         LlamaConfig::context_tokens"
    )]
    Context {
        /// The requested context window.
        context_tokens: u32,
        /// llama-cpp-2's error.
        #[source]
        source: LlamaContextLoadError,
    },
    /// A chat message could not be passed to llama.cpp.
    #[error("failed to pass a {role} message to llama.cpp: {source}")]
    Message {
        /// The role of the message.
        role: &'static str,
        /// llama-cpp-2's error.
        #[source]
        source: NewLlamaChatMessageError,
    },
    /// The model's chat template could not format the conversation.
    #[error("failed to apply the model's chat template to {messages} messages: {source}")]
    ChatTemplate {
        /// Number of messages in the conversation.
        messages: usize,
        /// llama-cpp-2's error.
        #[source]
        source: ApplyChatTemplateError,
    },
    /// Even with every earlier exchange dropped, the prompt leaves no room for the reply.
    #[error(
        "the prompt is {prompt_tokens} tokens, which with {max_new_tokens} reply tokens exceeds the context window \
         of {context_tokens}; shorten the system prompt or raise LlamaConfig::context_tokens"
    )]
    PromptTooLong {
        /// Tokens of the prompt with only the system prompt and the current user message.
        prompt_tokens: usize,
        /// The reply length limit.
        max_new_tokens: u32,
        /// The context window.
        context_tokens: u32,
    },
    /// A token could not be added to a batch.
    #[error("failed to add the token at position {position} to a llama.cpp batch: {source}")]
    Batch {
        /// Position of the token in the conversation.
        position: usize,
        /// llama-cpp-2's error.
        #[source]
        source: BatchAddError,
    },
    /// llama.cpp failed to evaluate tokens.
    #[error("llama.cpp failed to decode {tokens} tokens at position {position}: {source}")]
    Decode {
        /// Position of the first token of the batch.
        position: usize,
        /// Number of tokens in the batch.
        tokens: usize,
        /// llama-cpp-2's error.
        #[source]
        source: DecodeError,
    },
}

fn invalid(setting: &'static str, value: impl fmt::Display, expected: &'static str) -> LlamaError {
    LlamaError::InvalidConfig { setting, value: value.to_string(), expected }
}

impl From<LlamaError> for StageError {
    fn from(error: LlamaError) -> Self {
        let message = error.to_string();
        let stage_error = match &error {
            LlamaError::ModelNotFound { .. }
            | LlamaError::InvalidConfig { .. }
            | LlamaError::ModelLoad { .. }
            | LlamaError::MissingChatTemplate { .. }
            | LlamaError::Context { .. }
            | LlamaError::PromptTooLong { .. } => StageError::config(message),
            LlamaError::Backend { .. }
            | LlamaError::Message { .. }
            | LlamaError::ChatTemplate { .. }
            | LlamaError::Batch { .. }
            | LlamaError::Decode { .. } => StageError::fatal(message),
        };
        stage_error.with_source(error)
    }
}

/// The reason a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// The reply reached [`LlamaConfig::max_new_tokens`].
    MaxTokens,
    /// An interrupt for the turn was queued towards the stage, or the session is ending.
    Interrupted,
}

/// Measurements of one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    /// The turn of the user message the reply is for.
    pub turn: TurnId,
    /// Tokens in the formatted prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV cache entries were reused from the previous reply.
    pub reused_prompt_tokens: usize,
    /// Tokens sampled for the reply, not counting the end-of-generation token.
    pub generated_tokens: usize,
    /// The reason the reply ended.
    pub stop: StopReason,
    /// From the start of the reply (the final transcript) to the end of prompt evaluation.
    pub prompt_time: Duration,
    /// From the start of the reply to the first text piece sent; `None` when nothing was sent.
    pub time_to_first_token: Option<Duration>,
    /// From the end of prompt evaluation to the end of the reply.
    pub generation_time: Duration,
    /// When each text piece was handed downstream, in order. A piece is one
    /// token's text, or more when a character spans tokens.
    pub emitted_at: Vec<Instant>,
    /// Bytes of model output dropped because they were not valid UTF-8.
    pub invalid_utf8_bytes: usize,
}

impl GenerationStats {
    /// Returns the generated tokens per second of generation time (sampling
    /// and decoding after the prompt), or `None` when no time was measured.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let seconds = self.generation_time.as_secs_f64();
        (seconds > 0.0).then(|| self.generated_tokens as f64 / seconds)
    }
}

/// The measurements of recent replies, shared between the stage and the
/// application. Cloning shares the record.
#[derive(Debug, Clone, Default)]
pub struct GenerationLog {
    entries: Arc<Mutex<VecDeque<GenerationStats>>>,
}

impl GenerationLog {
    /// Maximum number of replies kept; older ones are dropped first.
    pub const CAPACITY: usize = 64;

    fn record(&self, stats: GenerationStats) {
        let mut entries = self.entries.lock();
        if entries.len() == GenerationLog::CAPACITY {
            entries.pop_front();
        }
        entries.push_back(stats);
    }

    /// Returns the measurements of the most recent reply.
    pub fn latest(&self) -> Option<GenerationStats> {
        self.entries.lock().back().cloned()
    }

    /// Returns the measurements of the most recent reply to `turn`.
    pub fn for_turn(&self, turn: TurnId) -> Option<GenerationStats> {
        self.entries.lock().iter().rev().find(|stats| stats.turn == turn).cloned()
    }

    /// Returns the measurements of the kept replies, oldest first.
    pub fn snapshot(&self) -> Vec<GenerationStats> {
        self.entries.lock().iter().cloned().collect()
    }
}

/// Returns the process's llama.cpp backend, initialising it on first use.
///
/// llama-cpp-2 allows one `LlamaBackend` per process (a second `init` fails),
/// so every stage shares this one, which lives until the process exits.
fn shared_backend() -> Result<&'static LlamaBackend, LlamaError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    let backend = BACKEND.get_or_init(|| {
        // llama.cpp logs to stderr by default; libraries here log through tracing.
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().map_err(|error| error.to_string())
    });
    backend.as_ref().map_err(|message| LlamaError::Backend { message: message.clone() })
}

self_cell::self_cell!(
    /// The model and the context that borrows it, kept together so that the
    /// context and its KV cache live as long as the stage.
    struct LoadedModel {
        owner: LlamaModel,

        #[covariant]
        dependent: LlamaContext,
    }

    impl {Debug}
);

/// Replies to final transcripts with text generated by a GGUF model through
/// llama.cpp, streamed as one [`TextDelta`] per decoded piece.
///
/// On a final transcript of turn T the stage appends the user message to the
/// shared history and formats the conversation with the chat template stored
/// in the model file. It then generates until an end-of-generation token, the
/// [`max_new_tokens`](LlamaConfig::max_new_tokens) limit or an interrupt. Each
/// piece goes out at once, with turn T; an empty delta with `last: true`
/// closes the reply, also after an interrupt, so downstream stages can close
/// the turn. The generated text, up to the interrupt if there was one, is
/// then recorded in the history as the reply. The application cuts it to
/// what was played with
/// [`truncate_reply`](super::ConversationHistory::truncate_reply).
///
/// Partial transcripts, empty transcripts and other payloads are ignored. A
/// final transcript whose turn is already interrupted is recorded in the
/// history with an empty reply, and no delta is sent.
///
/// The stage checks for an interrupt after each token is decoded and before
/// its text is sent. Generation therefore stops within one token of the
/// interrupt being queued, and no text is sent once the check sees it.
pub struct LlamaLlm {
    name: StageName,
    config: LlamaConfig,
    template: LlamaChatTemplate,
    loaded: LoadedModel,
    /// The tokens whose keys and values are in the KV cache, by position.
    cached: Vec<LlamaToken>,
    history: SharedHistory,
    log: GenerationLog,
}

impl fmt::Debug for LlamaLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlamaLlm")
            .field("name", &self.name)
            .field("model_path", &self.config.model_path)
            .field("cached_tokens", &self.cached.len())
            .finish_non_exhaustive()
    }
}

impl LlamaLlm {
    /// Loads the model and creates the context.
    ///
    /// # Errors
    /// [`LlamaError::ModelNotFound`] when the file is missing,
    /// [`LlamaError::ModelLoad`] when llama.cpp cannot read it,
    /// [`LlamaError::MissingChatTemplate`] when it has no chat template, and
    /// [`LlamaError::InvalidConfig`] for settings out of range.
    pub fn new(name: StageName, config: LlamaConfig, history: SharedHistory) -> Result<Self, LlamaError> {
        config.validate()?;

        // llama.cpp reports a missing file only as a null model, so check first.
        if !config.model_path.is_file() {
            return Err(LlamaError::ModelNotFound { path: config.model_path });
        }
        let backend = shared_backend()?;
        let load_started = Instant::now();
        let model = LlamaModel::load_from_file(backend, &config.model_path, &LlamaModelParams::default())
            .map_err(|source| LlamaError::ModelLoad { path: config.model_path.clone(), source })?;

        // The template stored in the GGUF file, which llama.cpp matches to one of its
        // built-in formats (ChatML for SmolLM2).
        let template = model
            .chat_template(None)
            .map_err(|source| LlamaError::MissingChatTemplate { path: config.model_path.clone(), source })?;

        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(config.context_tokens))
            .with_n_batch(config.batch_tokens)
            .with_n_ubatch(config.batch_tokens)
            .with_n_threads(i32::from(config.threads))
            .with_n_threads_batch(i32::from(config.threads));
        let loaded = LoadedModel::try_new(model, |model| model.new_context(backend, params))
            .map_err(|source| LlamaError::Context { context_tokens: config.context_tokens, source })?;

        tracing::info!(
            stage = %name,
            model = %config.model_path.display(),
            context_tokens = loaded.borrow_dependent().n_ctx(),
            threads = config.threads,
            load_ms = load_started.elapsed().as_millis() as u64,
            "LLM model loaded"
        );
        Ok(LlamaLlm { name, config, template, loaded, cached: Vec::new(), history, log: GenerationLog::default() })
    }

    /// Returns the settings.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Returns the conversation history the stage reads and appends to.
    pub fn history(&self) -> &SharedHistory {
        &self.history
    }

    /// Returns the measurements of recent replies.
    pub fn generation_log(&self) -> GenerationLog {
        self.log.clone()
    }

    /// Returns the context window llama.cpp allocated, in tokens. It can be
    /// larger than [`LlamaConfig::context_tokens`] because llama.cpp rounds it up.
    pub fn context_tokens(&self) -> u32 {
        self.loaded.borrow_dependent().n_ctx()
    }

    /// Formats `messages` with the model's chat template, ending with the
    /// header of the assistant message that the model completes.
    ///
    /// NUL characters are removed from message texts, since llama.cpp takes C strings.
    pub fn format_prompt(&self, messages: &[ChatMessage]) -> Result<String, LlamaError> {
        let mut chat = Vec::with_capacity(messages.len());
        for message in messages {
            let role = message.role.as_str();
            let content = message.content.replace('\0', "");
            let chat_message = LlamaChatMessage::new(role.to_owned(), content)
                .map_err(|source| LlamaError::Message { role, source })?;
            chat.push(chat_message);
        }
        self.loaded
            .borrow_owner()
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|source| LlamaError::ChatTemplate { messages: messages.len(), source })
    }

    /// Returns the bytes of each token the model's tokenizer makes of `text`.
    /// A piece can end inside a multi-byte character, which is why replies
    /// are decoded with a [`Utf8Decoder`].
    pub fn token_pieces(&self, text: &str) -> Vec<Vec<u8>> {
        let vocab = self.loaded.borrow_owner().vocab();
        let tokens = vocab.tokenize(text.as_bytes(), false, false);
        tokens.into_iter().map(|token| vocab.token_to_piece(token, false, None)).collect()
    }

    /// Formats and tokenizes the conversation, dropping the oldest exchanges
    /// from the history until the prompt and a full reply fit the context window.
    fn prompt_tokens(&self) -> Result<Vec<LlamaToken>, LlamaError> {
        let context_tokens = self.context_tokens();
        let room = context_tokens.saturating_sub(self.config.max_new_tokens) as usize;
        loop {
            let messages = self.history.lock().messages();
            let prompt = self.format_prompt(&messages)?;
            let tokens = self.loaded.borrow_owner().vocab().tokenize(prompt.as_bytes(), true, true);
            if tokens.len() <= room {
                return Ok(tokens);
            }
            if !self.history.lock().drop_oldest() {
                return Err(LlamaError::PromptTooLong {
                    prompt_tokens: tokens.len(),
                    max_new_tokens: self.config.max_new_tokens,
                    context_tokens,
                });
            }
            tracing::debug!(
                stage = %self.name,
                prompt_tokens = tokens.len(),
                room,
                "dropped the oldest exchange to fit the context window"
            );
        }
    }

    /// Generates and streams the reply to the conversation, whose last message is the user's of `turn`.
    fn reply(&mut self, turn: TurnId, timestamp: MediaTime, out: &mut Emitter<'_>) -> Result<(), LlamaError> {
        let started = Instant::now();
        let prompt = self.prompt_tokens()?;
        let request = Request {
            turn,
            timestamp,
            started,
            prompt: &prompt,
            max_new_tokens: self.config.max_new_tokens as usize,
            sampling: self.config.sampling,
        };
        let cached = &mut self.cached;
        let (stats, reply) =
            self.loaded.with_dependent_mut(|model, context| generate(model, context, cached, &request, out))?;

        // A missing exchange means the application cleared the history meanwhile;
        // the reply then belongs to no conversation.
        if let Err(error) = self.history.lock().set_reply(turn, reply) {
            tracing::debug!(stage = %self.name, turn = turn.0, %error, "reply not recorded");
        }
        tracing::info!(
            stage = %self.name,
            turn = turn.0,
            prompt_tokens = stats.prompt_tokens,
            reused_prompt_tokens = stats.reused_prompt_tokens,
            generated_tokens = stats.generated_tokens,
            stop = ?stats.stop,
            first_token_ms = stats.time_to_first_token.map(|time| time.as_millis() as u64),
            "LLM reply finished"
        );
        self.log.record(stats);
        Ok(())
    }
}

impl Processor for LlamaLlm {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Transcript, PortFormat::Text).with_execution(Execution::Blocking)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let Payload::Transcript(transcript) = &frame.payload else {
            tracing::trace!(stage = %self.name, kind = frame.kind_name(), "ignoring a frame that is not a transcript");
            return Ok(());
        };
        if transcript.kind == TranscriptKind::Partial {
            return Ok(());
        }
        let text = transcript.text.trim();
        if text.is_empty() {
            tracing::debug!(stage = %self.name, turn = frame.meta.turn.0, "ignoring an empty final transcript");
            return Ok(());
        }

        let turn = frame.meta.turn;
        self.history.lock().push_user(turn, text);
        if out.should_stop(turn) {
            // The user already spoke again: keep their message, but generate no reply to it.
            if let Err(error) = self.history.lock().set_reply(turn, "") {
                tracing::debug!(stage = %self.name, turn = turn.0, %error, "empty reply not recorded");
            }
            return Ok(());
        }
        self.reply(turn, frame.meta.timestamp, out).map_err(StageError::from)
    }
}

/// The inputs of one reply besides the model and the context.
struct Request<'a> {
    turn: TurnId,
    timestamp: MediaTime,
    started: Instant,
    prompt: &'a [LlamaToken],
    max_new_tokens: usize,
    sampling: Sampling,
}

/// Evaluates the prompt, then samples, sends and evaluates one token at a
/// time; returns the measurements and the reply text.
fn generate(
    model: &LlamaModel,
    context: &mut LlamaContext<'_>,
    cached: &mut Vec<LlamaToken>,
    request: &Request<'_>,
    out: &mut Emitter<'_>,
) -> Result<(GenerationStats, String), LlamaError> {
    let vocab = model.vocab();
    let turn = request.turn;

    // Only the part of the prompt that is not in the KV cache yet is evaluated.
    let reused = reuse_cached_prefix(context, cached, request.prompt);
    let batch_tokens = (context.n_batch() as usize).max(1);
    let mut batch = LlamaBatch::new(batch_tokens, 1);
    let last = request.prompt.len().saturating_sub(1);
    for chunk in request.prompt[reused..].chunks(batch_tokens) {
        batch.clear();
        let first = cached.len();
        for (offset, &token) in chunk.iter().enumerate() {
            let position = first + offset;
            add_token(&mut batch, token, position, position == last)?;
        }
        decode(context, &mut batch, cached, chunk)?;
    }
    let prompt_done = Instant::now();

    let mut sampler = request.sampling.sampler();
    let mut decoder = Utf8Decoder::new();
    let mut piece = Vec::with_capacity(16);
    let mut reply = String::new();
    let mut generated_tokens = 0;
    let mut first_token_at = None;
    let mut emitted_at = Vec::new();
    // The logits to sample from are those of the last token of the last batch.
    let mut logits_index = batch.n_tokens() - 1;
    let stop = loop {
        // An interrupt queued while the last token was decoded stops the reply before anything more is sent.
        if out.should_stop(turn) {
            break StopReason::Interrupted;
        }
        let token = sampler.sample(context, logits_index);
        if vocab.is_eog(token) {
            break StopReason::EndOfGeneration;
        }
        generated_tokens += 1;

        // A token can end inside a multi-byte character, so the decoder keeps such bytes back.
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        let text = decoder.push(&piece);
        if !text.is_empty() {
            if first_token_at.is_none() {
                out.mark(turn, TurnMark::FirstToken);
                first_token_at = Some(Instant::now());
            }
            reply.push_str(&text);
            emitted_at.push(Instant::now());
            let meta = out.next_meta(turn, request.timestamp);
            out.emit(Frame::new(meta, Payload::Text(TextDelta { text, last: false })));
        }
        if generated_tokens >= request.max_new_tokens {
            break StopReason::MaxTokens;
        }
        // A send that waited on a full edge may have outlasted an interrupt: skip the next decode then.
        if out.should_stop(turn) {
            break StopReason::Interrupted;
        }

        batch.clear();
        add_token(&mut batch, token, cached.len(), true)?;
        decode(context, &mut batch, cached, &[token])?;
        logits_index = 0;
    };
    let finished = Instant::now();

    // Downstream stages close the turn on the last delta, sent after an interrupt too.
    decoder.finish();
    let meta = out.next_meta(turn, request.timestamp);
    out.emit(Frame::new(meta, Payload::Text(TextDelta { text: String::new(), last: true })));

    let stats = GenerationStats {
        turn,
        prompt_tokens: request.prompt.len(),
        reused_prompt_tokens: reused,
        generated_tokens,
        stop,
        prompt_time: prompt_done.saturating_duration_since(request.started),
        time_to_first_token: first_token_at.map(|at: Instant| at.saturating_duration_since(request.started)),
        generation_time: finished.saturating_duration_since(prompt_done),
        emitted_at,
        invalid_utf8_bytes: decoder.invalid_bytes(),
    };
    if stats.invalid_utf8_bytes > 0 {
        tracing::warn!(
            turn = turn.0,
            bytes = stats.invalid_utf8_bytes,
            "the model produced invalid UTF-8; the bytes were dropped"
        );
    }
    Ok((stats, reply))
}

/// Keeps the KV cache entries of the prefix that `prompt` shares with the
/// cached tokens and removes the rest; returns the number of tokens kept.
///
/// At least the last prompt token is evaluated, because its logits give the
/// first token of the reply.
fn reuse_cached_prefix(context: &mut LlamaContext<'_>, cached: &mut Vec<LlamaToken>, prompt: &[LlamaToken]) -> usize {
    let shared = cached.iter().zip(prompt).take_while(|(cached, prompt)| cached == prompt).count();
    let keep = shared.min(prompt.len().saturating_sub(1));
    if keep < cached.len() {
        let removed = u32::try_from(keep).ok().map(|start| context.kv_cache_seq_rm(SEQUENCE, Some(start), None));
        if !matches!(removed, Some(Ok(()))) {
            // Some model kinds (recurrent ones) cannot drop part of a sequence: start over.
            context.clear_kv_cache();
            cached.clear();
            return 0;
        }
        cached.truncate(keep);
    }
    keep
}

fn add_token(batch: &mut LlamaBatch<'_>, token: LlamaToken, position: usize, logits: bool) -> Result<(), LlamaError> {
    // Positions stay below the context window, which validation keeps within i32.
    let llama_position = i32::try_from(position).unwrap_or(i32::MAX);
    batch.add(token, llama_position, &[SEQUENCE], logits).map_err(|source| LlamaError::Batch { position, source })
}

/// Evaluates `batch`, whose tokens are `tokens`, and records them as cached.
/// After a failure the cache state is unknown, so it is cleared.
fn decode(
    context: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    cached: &mut Vec<LlamaToken>,
    tokens: &[LlamaToken],
) -> Result<(), LlamaError> {
    let position = cached.len();
    match context.decode(batch) {
        Ok(()) => {
            cached.extend_from_slice(tokens);
            Ok(())
        }
        Err(source) => {
            context.clear_kv_cache();
            cached.clear();
            Err(LlamaError::Decode { position, tokens: tokens.len(), source })
        }
    }
}
