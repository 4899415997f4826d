//! The llama.cpp LLM stage with the real SmolLM2-135M-Instruct model:
//! streaming, chat formatting with history, the reply length limit,
//! interruption in a running graph, reply truncation and split UTF-8 pieces.
//!
//! These tests need the model file from `scripts/setup` and fail without it.
//! Tests that run the model take a lock so that they do not compete for the
//! CPU, which would distort the printed speed measurements.

#![cfg(feature = "llama")]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mentis_pipeline::basic::{ChannelSink, ChannelSource};
use mentis_pipeline::{
    Control, EdgeConfig, Emitter, Frame, FrameMeta, GraphBuilder, MediaTime, Payload, PortFormat, PrivacyPolicy,
    PrivacyTier, Processor, SessionId, StageName, TextDelta, Transcript, TranscriptKind, TurnId, TurnMark, processor,
};
use mentis_stages::llm::{
    ChatMessage, ConversationHistory, HistoryLimits, LlamaConfig, LlamaError, LlamaLlm, Role, SharedHistory,
    StopReason, Utf8Decoder,
};

const SESSION: SessionId = SessionId(7);
const SYSTEM_PROMPT: &str = "You are a helpful voice assistant. Answer in one or two short sentences.";

static MODEL_LOCK: Mutex<()> = Mutex::new(());

/// Serialises the tests that run the model; a failed test does not block the others.
fn model_lock() -> MutexGuard<'static, ()> {
    MODEL_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Returns the model path, failing the test when `scripts/setup` has not downloaded it.
fn model_path() -> PathBuf {
    let path = LlamaConfig::smollm2_path();
    assert!(path.is_file(), "LLM model {} not found: run scripts/setup to download it", path.display());
    path
}

fn name(text: &str) -> StageName {
    match StageName::new(text) {
        Ok(name) => name,
        Err(error) => panic!("{error}"),
    }
}

fn new_history() -> SharedHistory {
    ConversationHistory::new(SYSTEM_PROMPT, HistoryLimits::default()).shared()
}

fn new_llm(config: LlamaConfig, history: SharedHistory) -> LlamaLlm {
    match LlamaLlm::new(name("llm"), config, history) {
        Ok(llm) => llm,
        Err(error) => panic!("{error}"),
    }
}

fn transcript(turn: TurnId, kind: TranscriptKind, text: &str) -> Frame {
    let meta = FrameMeta { session: SESSION, turn, seq: 0, timestamp: MediaTime::ZERO };
    let transcript =
        Transcript { kind, text: text.to_owned(), start: MediaTime::ZERO, end: MediaTime::ZERO, confidence: None };
    Frame::new(meta, Payload::Transcript(transcript))
}

fn text_delta(frame: &Frame) -> &TextDelta {
    match &frame.payload {
        Payload::Text(delta) => delta,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Runs one final transcript through the stage outside a graph and returns the frames it sent.
fn answer(llm: &mut LlamaLlm, turn: TurnId, text: &str) -> (Vec<Frame>, Emitter<'static>) {
    let mut out = Emitter::new(SESSION);
    if let Err(error) = llm.process(transcript(turn, TranscriptKind::Final, text), &mut out) {
        panic!("the reply failed: {error}");
    }
    let frames = out.drain().collect();
    (frames, out)
}

/// Returns the concatenated text of the pieces, checking the closing delta.
fn reply_text(frames: &[Frame]) -> String {
    let Some((closing, pieces)) = frames.split_last() else {
        panic!("the stage sent no frame");
    };
    let closing_delta = TextDelta { text: String::new(), last: true };
    assert_eq!(text_delta(closing), &closing_delta, "the reply ends with an empty last delta");
    for piece in pieces {
        let delta = text_delta(piece);
        assert!(!delta.last, "only the closing delta is last");
        assert!(!delta.text.is_empty(), "pieces carry text");
    }
    pieces.iter().map(|piece| text_delta(piece).text.as_str()).collect()
}

#[test]
fn reply_streams_english_tokens() {
    let _lock = model_lock();
    let history = new_history();
    let mut llm = new_llm(LlamaConfig::new(model_path()), history.clone());
    let turn = TurnId(1);

    let (frames, out) = answer(&mut llm, turn, "What is the capital of France?");

    let text = reply_text(&frames);
    println!("reply: {text:?}");
    assert!(frames.len() >= 4, "expected several streamed pieces, got {}", frames.len());
    assert!(frames.iter().all(|frame| frame.meta.turn == turn), "every piece carries the turn");
    let seqs: Vec<u64> = frames.iter().map(|frame| frame.meta.seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "sequence numbers increase: {seqs:?}");

    let words: Vec<String> = text
        .split_whitespace()
        .map(|word| word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .collect();
    assert!(words.len() >= 3, "expected a sentence, got {text:?}");
    let ascii = text.chars().filter(char::is_ascii).count();
    assert!(ascii * 10 >= text.chars().count() * 9, "expected English text, got {text:?}");
    let common = ["the", "is", "of", "a", "capital", "france", "paris", "it"];
    assert!(words.iter().any(|word| common.contains(&word.as_str())), "expected common English words in {text:?}");
    assert!(!text.contains('\u{FFFD}'), "{text:?}");

    assert!(out.turns().get(turn, TurnMark::FirstToken).is_some(), "the first token is marked");
    assert_eq!(history.lock().reply(turn), Some(text.as_str()), "the full reply is recorded");

    let Some(stats) = llm.generation_log().for_turn(turn) else {
        panic!("no measurements for turn 1");
    };
    assert_eq!(stats.emitted_at.len(), frames.len() - 1);
    assert!(stats.generated_tokens >= stats.emitted_at.len());
    assert_eq!(stats.invalid_utf8_bytes, 0);
    let first_token = stats.time_to_first_token.unwrap_or(Duration::MAX);
    println!(
        "prompt {} tokens in {:.1} ms; time to first token {:.1} ms; {} tokens in {:.1} ms = {:.1} tokens/s; stop {:?}",
        stats.prompt_tokens,
        stats.prompt_time.as_secs_f64() * 1e3,
        first_token.as_secs_f64() * 1e3,
        stats.generated_tokens,
        stats.generation_time.as_secs_f64() * 1e3,
        stats.tokens_per_second().unwrap_or(0.0),
        stats.stop,
    );
}

#[test]
fn partial_transcript_starts_nothing() {
    let _lock = model_lock();
    let history = new_history();
    let mut llm = new_llm(LlamaConfig::new(model_path()), history.clone());

    let mut out = Emitter::new(SESSION);
    let partial = transcript(TurnId(1), TranscriptKind::Partial, "What is the");
    if let Err(error) = llm.process(partial, &mut out) {
        panic!("{error}");
    }

    assert!(out.frames().is_empty(), "a partial transcript produced {:?}", out.frames());
    assert!(history.lock().is_empty(), "a partial transcript reached the history");
    assert!(llm.generation_log().latest().is_none());
}

#[test]
fn prompt_holds_history_in_chatml_order() {
    let _lock = model_lock();
    let history = new_history();
    let mut llm = new_llm(LlamaConfig::new(model_path()).with_max_new_tokens(24), history.clone());
    let first_question = "Name a primary color.";
    let second_question = "And another one?";

    let (frames, _) = answer(&mut llm, TurnId(1), first_question);
    let first_reply = reply_text(&frames);
    assert!(!first_reply.is_empty());
    let mut messages = history.lock().messages();
    messages.push(ChatMessage::new(Role::User, second_question));

    let prompt = match llm.format_prompt(&messages) {
        Ok(prompt) => prompt,
        Err(error) => panic!("{error}"),
    };

    let expected = format!(
        "<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n\
         <|im_start|>user\n{first_question}<|im_end|>\n\
         <|im_start|>assistant\n{first_reply}<|im_end|>\n\
         <|im_start|>user\n{second_question}<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(prompt, expected);
}

#[test]
fn second_turn_reuses_cached_prompt() {
    let _lock = model_lock();
    let history = new_history();
    let mut llm = new_llm(LlamaConfig::new(model_path()).with_max_new_tokens(24), history.clone());

    let (first_frames, _) = answer(&mut llm, TurnId(1), "Name a primary color.");
    let (second_frames, _) = answer(&mut llm, TurnId(2), "And another one?");
    let first_reply = reply_text(&first_frames);
    let second_reply = reply_text(&second_frames);
    println!("replies: {first_reply:?} then {second_reply:?}");

    let log = llm.generation_log();
    let (Some(first), Some(second)) = (log.for_turn(TurnId(1)), log.for_turn(TurnId(2))) else {
        panic!("missing measurements: {:?}", log.snapshot());
    };
    println!(
        "turn 2: prompt {} tokens, {} reused, prompt time {:.1} ms (turn 1: {:.1} ms)",
        second.prompt_tokens,
        second.reused_prompt_tokens,
        second.prompt_time.as_secs_f64() * 1e3,
        first.prompt_time.as_secs_f64() * 1e3,
    );
    assert_eq!(first.reused_prompt_tokens, 0, "the first prompt starts from an empty cache");
    assert!(second.prompt_tokens > first.prompt_tokens + 5, "the second prompt carries the first exchange");
    assert!(
        second.reused_prompt_tokens >= first.prompt_tokens,
        "the whole first prompt should be reused, got {} of {}",
        second.reused_prompt_tokens,
        first.prompt_tokens
    );
    let messages = history.lock().messages();
    let roles: Vec<Role> = messages.iter().map(|message| message.role).collect();
    assert_eq!(roles, vec![Role::System, Role::User, Role::Assistant, Role::User, Role::Assistant]);
}

#[test]
fn max_new_tokens_is_respected() {
    let _lock = model_lock();
    let history = new_history();
    let max_new_tokens = 5;
    let mut llm = new_llm(LlamaConfig::new(model_path()).with_max_new_tokens(max_new_tokens), history.clone());

    let (frames, _) = answer(&mut llm, TurnId(1), "Tell me a long story about a dragon who loves tea.");

    let text = reply_text(&frames);
    let Some(stats) = llm.generation_log().latest() else {
        panic!("no measurements");
    };
    assert_eq!(stats.stop, StopReason::MaxTokens, "reply {text:?}");
    assert_eq!(stats.generated_tokens, max_new_tokens as usize);
    assert!(frames.len() - 1 <= max_new_tokens as usize, "{} pieces for {max_new_tokens} tokens", frames.len() - 1);
    assert_eq!(history.lock().reply(TurnId(1)), Some(text.as_str()));
}

#[test]
fn interrupt_stops_within_one_token() {
    let _lock = model_lock();
    let history = new_history();
    let max_new_tokens = 200;
    let llm = new_llm(LlamaConfig::new(model_path()).with_max_new_tokens(max_new_tokens), history.clone());
    let log = llm.generation_log();
    let turn = TurnId(3);

    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => panic!("{error}"),
    };
    let (received_before, interrupt_sent_at) = runtime.block_on(async {
        let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
        let (input, source) = ChannelSource::new(name("input"), PortFormat::Transcript, EdgeConfig::lossless(8));
        let (sink, mut output) = ChannelSink::new(name("output"), PortFormat::Text, EdgeConfig::lossless(1_024));
        graph.chain(vec![Box::new(source), processor(llm), Box::new(sink)], EdgeConfig::lossless(256));
        let session = match graph.build() {
            Ok(pipeline) => pipeline.start(SESSION),
            Err(error) => panic!("{error}"),
        };

        let question = transcript(turn, TranscriptKind::Final, "Tell me a long story about a dragon who loves tea.");
        if input.send(question).await.is_err() {
            panic!("the pipeline stopped before the transcript was sent");
        }

        // Interrupt as soon as the first piece arrives.
        let mut received_before = 0;
        let interrupt_sent_at = loop {
            let Some(frame) = output.recv().await else {
                panic!("the output ended before the first piece");
            };
            if let Payload::Text(delta) = &frame.payload {
                assert!(!delta.last, "the reply ended before it could be interrupted");
                received_before += 1;
                let sent_at = Instant::now();
                let meta = FrameMeta { session: SESSION, turn, seq: 1, timestamp: MediaTime::ZERO };
                if input.send(Frame::control(meta, Control::Interrupt)).await.is_err() {
                    panic!("the pipeline stopped before the interrupt was sent");
                }
                break sent_at;
            }
        };
        drop(input);

        // Drain until end of stream; pieces queued behind the interrupt may be dropped as stale.
        while let Some(frame) = output.recv().await {
            if frame.as_control() == Some(&Control::EndOfStream) {
                break;
            }
        }
        if let Err(error) = session.wait().await {
            panic!("the session failed: {error}");
        }
        (received_before, interrupt_sent_at)
    });

    let Some(stats) = log.for_turn(turn) else {
        panic!("no measurements for the interrupted turn");
    };
    let emitted_after = stats.emitted_at.iter().filter(|&&at| at > interrupt_sent_at).count();
    println!(
        "interrupted after {} of {max_new_tokens} tokens; {} pieces sent before the interrupt, {emitted_after} after; \
         {received_before} received before it",
        stats.generated_tokens,
        stats.emitted_at.len() - emitted_after,
    );
    assert_eq!(stats.stop, StopReason::Interrupted);
    assert!(emitted_after <= 1, "{emitted_after} pieces were sent after the interrupt was queued");
    assert!(stats.generated_tokens < max_new_tokens as usize);
    let reply = history.lock().reply(turn).map(str::to_owned);
    assert!(reply.is_some_and(|reply| !reply.is_empty()), "the partial reply is recorded");
}

#[test]
fn truncate_reply_keeps_played_text() {
    let _lock = model_lock();
    let history = new_history();
    let mut llm = new_llm(LlamaConfig::new(model_path()).with_max_new_tokens(32), history.clone());
    let turn = TurnId(1);

    let (frames, _) = answer(&mut llm, turn, "Tell me a long story about a dragon who loves tea.");
    let full_reply = reply_text(&frames);
    // What a sink would report as played: the first three pieces.
    let played: String = frames[..3].iter().map(|frame| text_delta(frame).text.as_str()).collect();
    assert!(played.len() < full_reply.len(), "the reply {full_reply:?} is too short to cut");

    if let Err(error) = history.lock().truncate_reply(turn, played.clone()) {
        panic!("{error}");
    }

    assert_eq!(history.lock().reply(turn), Some(played.as_str()));
    let mut messages = history.lock().messages();
    messages.push(ChatMessage::new(Role::User, "Go on."));
    let prompt = match llm.format_prompt(&messages) {
        Ok(prompt) => prompt,
        Err(error) => panic!("{error}"),
    };
    assert!(prompt.contains(&format!("<|im_start|>assistant\n{played}<|im_end|>")), "{prompt}");
    assert!(!prompt.contains(&full_reply), "the unplayed part is still in the prompt: {prompt}");
}

#[test]
fn split_utf8_token_pieces_decode_cleanly() {
    let _lock = model_lock();
    let llm = new_llm(LlamaConfig::new(model_path()), new_history());
    let source = "Café, naïve, 日本語 and 🎉!";

    let pieces = llm.token_pieces(source);
    let split = pieces.iter().filter(|piece| std::str::from_utf8(piece).is_err()).count();
    assert!(split > 0, "the tokenizer split no character across tokens: {pieces:?}");

    let mut decoder = Utf8Decoder::new();
    let text: String = pieces.iter().map(|piece| decoder.push(piece)).collect();
    assert_eq!(text, source);
    assert!(!text.contains('\u{FFFD}'));
    assert!(!decoder.has_pending());
    assert_eq!(decoder.invalid_bytes(), 0);
}

#[test]
fn missing_model_is_named() {
    let path = PathBuf::from("/nonexistent/mentis/SmolLM2-missing.gguf");
    let error = match LlamaLlm::new(name("llm"), LlamaConfig::new(&path), new_history()) {
        Ok(_) => panic!("a missing model file was accepted"),
        Err(error) => error,
    };
    assert!(matches!(&error, LlamaError::ModelNotFound { path: missing } if missing == &path), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("/nonexistent/mentis/SmolLM2-missing.gguf"), "{message}");
    assert!(message.contains("scripts/setup"), "{message}");
}

#[test]
fn invalid_model_file_fails_to_load() {
    let _lock = model_lock();
    let mut file = match tempfile::NamedTempFile::new() {
        Ok(file) => file,
        Err(error) => panic!("{error}"),
    };
    if let Err(error) = std::io::Write::write_all(&mut file, b"this is not a GGUF model") {
        panic!("{error}");
    }

    let error = match LlamaLlm::new(name("llm"), LlamaConfig::new(file.path()), new_history()) {
        Ok(_) => panic!("a file that is not GGUF was accepted"),
        Err(error) => error,
    };
    assert!(matches!(error, LlamaError::ModelLoad { .. }), "{error:?}");
    assert!(error.to_string().contains(&file.path().display().to_string()), "{error}");
}

#[test]
fn zero_max_new_tokens_is_rejected() {
    let config = LlamaConfig::new(model_path()).with_max_new_tokens(0);
    let error = match LlamaLlm::new(name("llm"), config, new_history()) {
        Ok(_) => panic!("max_new_tokens = 0 was accepted"),
        Err(error) => error,
    };
    assert!(matches!(error, LlamaError::InvalidConfig { setting: "max_new_tokens", .. }), "{error:?}");
}
