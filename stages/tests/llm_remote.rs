//! The network LLM stage against local servers that speak the providers'
//! streaming protocols on 127.0.0.1:
//!
//! - OpenAI Chat Completions: `POST /v1/chat/completions`, a
//!   `text/event-stream` of `data: {chunk}` events ending with
//!   `data: [DONE]` (<https://platform.openai.com/docs/api-reference/chat-streaming>).
//! - Anthropic Messages: `POST /v1/messages`, named events `message_start`,
//!   `content_block_start`, `content_block_delta`, `content_block_stop`,
//!   `message_delta`, `message_stop`, `ping` and `error`
//!   (<https://docs.anthropic.com/en/docs/build-with-claude/streaming>).
//! - Ollama: `POST /api/chat`, one JSON object per line, the last with
//!   `"done": true` (<https://github.com/ollama/ollama/blob/main/docs/api.md>).

mod net_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mentis_pipeline::wrap::RetryPolicy;
use mentis_pipeline::{
    Control, Frame, MediaTime, Payload, PrivacyTier, Secret, StageName, TextDelta, Transcript, TranscriptKind, TurnId,
};
use mentis_stages::llm::anthropic::AnthropicChat;
use mentis_stages::llm::ollama::OllamaChat;
use mentis_stages::llm::openai::OpenAiChat;
use mentis_stages::llm::remote::{ChatProtocol, RemoteLlm, ReplyOutcome, ReplySettings};
use mentis_stages::llm::{ConversationHistory, HistoryLimits, SharedHistory};
use mentis_stages::net::{Endpoint, Hosting, Timeouts};
use net_support::{Harness, SeenRequest, TestServer, TestTls, eventually, full, streamed};

const KEY: &str = "sk-llm-test-key-6f1d2a";

fn final_transcript(text: &str) -> Payload {
    Payload::Transcript(Transcript {
        kind: TranscriptKind::Final,
        text: text.to_owned(),
        start: MediaTime::ZERO,
        end: MediaTime::ZERO,
        confidence: None,
    })
}

fn history() -> SharedHistory {
    ConversationHistory::new("You are terse.", HistoryLimits::default()).shared()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..RetryPolicy::default()
    }
}

fn endpoint(server: &TestServer, path: &str, hosting: Hosting, tls: Option<&TestTls>) -> Endpoint {
    let mut endpoint = Endpoint::new("test", hosting, server.url(path))
        .expect("endpoint")
        .with_api_key(Secret::new(KEY))
        .with_retry(fast_retry())
        .with_timeouts(Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_millis(500),
            idle: Duration::from_millis(500),
        });
    if let Some(tls) = tls {
        endpoint = endpoint.with_ca_file(&tls.ca_file).expect("CA file");
    }
    endpoint
}

fn llm<P: ChatProtocol>(protocol: P, endpoint: Endpoint, history: SharedHistory) -> RemoteLlm<P> {
    let settings = ReplySettings { max_tokens: 64, temperature: Some(0.2) };
    RemoteLlm::new(StageName::new("llm").expect("name"), protocol, endpoint, history, settings)
}

/// Returns the reply text of the frames and whether the last delta was seen.
fn reply_text(frames: &[Frame]) -> (String, bool) {
    let mut text = String::new();
    let mut last = false;
    for frame in frames {
        if let Payload::Text(TextDelta { text: piece, last: is_last }) = &frame.payload {
            text.push_str(piece);
            last |= *is_last;
        }
    }
    (text, last)
}

fn is_last(frame: &Frame) -> bool {
    matches!(&frame.payload, Payload::Text(TextDelta { last: true, .. }))
}

/// Builds an OpenAI chunk carrying `content`.
fn openai_chunk(content: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "test",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    });
    format!("data: {chunk}\r\n\r\n")
}

fn openai_finish() -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "test",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    });
    let usage = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "test",
        "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26}
    });
    format!("data: {chunk}\r\n\r\ndata: {usage}\r\n\r\ndata: [DONE]\r\n\r\n")
}

/// Sends `body` in pieces of `step` bytes, splitting CRLF pairs and characters.
fn send_split(body: String, step: usize) -> net_support::Body {
    let (sender, stream) = streamed();
    tokio::spawn(async move {
        for piece in body.as_bytes().chunks(step) {
            if sender.send(Bytes::copy_from_slice(piece)).await.is_err() {
                return;
            }
        }
    });
    stream
}

fn sse_response(body: net_support::Body) -> http::Response<net_support::Body> {
    http::Response::builder().header("content-type", "text/event-stream").body(body).expect("response")
}

#[tokio::test]
async fn openai_stream_split_every_byte() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<SeenRequest>::new()));
    let record = Arc::clone(&seen);
    let tls = Arc::new(TestTls::new());
    let server = TestServer::http(Some(Arc::clone(&tls)), move |request| {
        record.lock().push(request);
        async move {
            // "Très bien" has a two-byte character, and one-byte pieces split it and every CRLF.
            let body = [openai_chunk("Très"), openai_chunk(" bien."), openai_finish()].concat();
            sse_response(send_split(body, 1))
        }
    })
    .await;

    let history = history();
    let stage = llm(OpenAiChat::openai("gpt-test"), endpoint(&server, "/v1", Hosting::Cloud, Some(&tls)), Arc::clone(&history));
    let log = stage.reply_log();
    let mut harness = Harness::start(stage, PrivacyTier::Cloud);

    harness.send(1, final_transcript("How are you?")).await;
    let frames = harness.until(Duration::from_secs(5), is_last).await;

    assert_eq!(reply_text(&frames), ("Très bien.".to_owned(), true));
    assert_eq!(history.lock().reply(TurnId(1)), Some("Très bien."));

    let request = seen.lock()[0].clone();
    assert_eq!((request.method.as_str(), request.path_and_query.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(request.headers.get("authorization").map(|v| v.as_bytes()), Some(format!("Bearer {KEY}").as_bytes()));
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["max_completion_tokens"], 64);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "How are you?");

    let usage = harness.usage.records();
    assert_eq!((usage[0].backend.as_str(), usage[0].tokens_in, usage[0].tokens_out), ("openai", 21, 5));
    assert!(usage[0].first_byte_p50_ms.is_some());
    let egress = harness.egress.records();
    assert_eq!(egress.len(), 1);
    assert_eq!((egress[0].scheme.as_str(), egress[0].host.as_str()), ("https", "localhost"));
    assert!(egress[0].bytes_received > 0);
    assert_eq!(log.for_turn(TurnId(1)).map(|r| r.outcome), Some(ReplyOutcome::Complete { reason: Some("stop".into()) }));

    harness.close();
    harness.task.await.expect("task").expect("clean end");
}

#[tokio::test]
async fn openai_stream_without_end_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let server = TestServer::http(None, move |_| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if call == 0 {
                // No content, no finish reason, no [DONE]: the stream just ends.
                return sse_response(full(": keep-alive\n\n"));
            }
            sse_response(full([openai_chunk("Fine."), openai_finish()].concat()))
        }
    })
    .await;

    let stage = llm(OpenAiChat::compatible("local"), endpoint(&server, "/v1", Hosting::SelfHosted, None), history());
    let log = stage.reply_log();
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(1, final_transcript("Hi")).await;
    let frames = harness.until(Duration::from_secs(5), is_last).await;

    assert_eq!(reply_text(&frames).0, "Fine.");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(log.for_turn(TurnId(1)).map(|r| r.attempts), Some(2));
    assert_eq!(harness.usage.records()[0].failures, 1);
}

#[tokio::test]
async fn openai_429_retried_after_delay() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let server = TestServer::http(None, move |_| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if call == 0 {
                return http::Response::builder()
                    .status(429)
                    .header("retry-after", "0.3")
                    .body(full(r#"{"error":{"message":"slow down","type":"rate_limit_exceeded"}}"#))
                    .expect("response");
            }
            sse_response(full([openai_chunk("Ok."), openai_finish()].concat()))
        }
    })
    .await;

    let stage = llm(OpenAiChat::compatible("local"), endpoint(&server, "/v1", Hosting::SelfHosted, None), history());
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    let started = Instant::now();
    harness.send(1, final_transcript("Hi")).await;
    let frames = harness.until(Duration::from_secs(5), is_last).await;

    assert_eq!(reply_text(&frames).0, "Ok.");
    assert!(started.elapsed() >= Duration::from_millis(300), "retried after {:?}", started.elapsed());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn openai_malformed_json_fails_stage() {
    let server = TestServer::http(None, |_| async { sse_response(full("data: {\"choices\": [oops\n\n")) }).await;
    let stage = llm(OpenAiChat::compatible("local"), endpoint(&server, "/v1", Hosting::SelfHosted, None), history());
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(1, final_transcript("Hi")).await;
    let error = harness.task.await.expect("task").expect_err("malformed JSON is not retried");

    assert!(!error.is_retryable());
    let text = format!("{error} {error:?}");
    assert!(text.contains("oops"), "the error shows the bad message: {text}");
    assert!(!text.contains(KEY));
}

#[tokio::test]
async fn anthropic_overloaded_mid_stream_ends_the_turn_partial() {
    let server = TestServer::http(None, |request| async move {
        assert_eq!(request.headers.get("x-api-key").map(|v| v.as_bytes()), Some(KEY.as_bytes()));
        assert_eq!(request.headers.get("anthropic-version").map(|v| v.as_bytes()), Some(&b"2023-06-01"[..]));
        let body = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-test\",\"stop_reason\":null,\"usage\":{\"input_tokens\":17,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\n",
            "data: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me think\"}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        sse_response(full(body))
    })
    .await;

    let history = history();
    let stage = llm(AnthropicChat::new("claude-test"), endpoint(&server, "/v1", Hosting::SelfHosted, None), Arc::clone(&history));
    let log = stage.reply_log();
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(1, final_transcript("Explain tides")).await;
    let frames = harness.until(Duration::from_secs(5), is_last).await;
    if frames.is_empty() {
        panic!("the stage ended: {:?}", harness.task.await);
    }
    assert_eq!(reply_text(&frames), ("Let me think".to_owned(), true));
    let error = frames.iter().find_map(|frame| match &frame.payload {
        Payload::Control(Control::Error(failure)) => Some(failure.message.clone()),
        _ => None,
    });
    assert!(error.as_deref().is_some_and(|message| message.contains("overloaded_error")), "{error:?}");
    match log.for_turn(TurnId(1)).map(|record| record.outcome) {
        Some(ReplyOutcome::Partial { error }) => assert!(error.contains("Overloaded"), "{error}"),
        other => panic!("expected a partial reply, got {other:?}"),
    }
    assert_eq!(history.lock().reply(TurnId(1)), Some("Let me think"));
    assert_eq!(harness.usage.records()[0].tokens_in, 17);

    // The stage goes on serving the next turn.
    harness.send(2, final_transcript("Again")).await;
    let frames = harness.until(Duration::from_secs(5), is_last).await;
    assert_eq!(reply_text(&frames).0, "Let me think");
}

#[tokio::test]
async fn anthropic_overloaded_before_any_text_is_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let server = TestServer::http(None, move |_| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if call == 0 {
                return sse_response(full(
                    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
                ));
            }
            let body = concat!(
                "event: message_start\n",
                "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
                "event: content_block_delta\n",
                "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello.\"}}\n\n",
                "event: message_delta\n",
                "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":3}}\n\n",
                "event: message_stop\n",
                "data: {\"type\":\"message_stop\"}\n\n",
            );
            sse_response(full(body))
        }
    })
    .await;

    let stage = llm(AnthropicChat::new("claude-test"), endpoint(&server, "/v1", Hosting::SelfHosted, None), history());
    let log = stage.reply_log();
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(1, final_transcript("Hi")).await;
    let frames = harness.until(Duration::from_secs(5), is_last).await;

    assert_eq!(reply_text(&frames).0, "Hello.");
    assert_eq!(log.for_turn(TurnId(1)).map(|r| (r.attempts, r.outcome)), Some((2, ReplyOutcome::Complete { reason: Some("end_turn".into()) })));
    let usage = &harness.usage.records()[0];
    assert_eq!((usage.tokens_in, usage.tokens_out), (9, 3));
}

#[tokio::test]
async fn ollama_lines_split_across_reads() {
    let server = TestServer::http(None, |request| async move {
        assert_eq!(request.path_and_query, "/api/chat");
        let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
        assert_eq!(body["options"]["num_predict"], 64);
        let lines = concat!(
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Sun\"},\"done\":false}\n",
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"ny ☀\"},\"done\":false}\n",
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":12,\"eval_count\":4}\n",
        );
        // Pieces of 7 bytes: lines are split, some reads contain the end of one line and the start of the next.
        http::Response::new(send_split(lines.to_owned(), 7))
    })
    .await;

    let stage = llm(OllamaChat::new("m"), endpoint(&server, "", Hosting::SelfHosted, None), history());
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(1, final_transcript("Weather?")).await;
    let frames = harness.until(Duration::from_secs(5), is_last).await;

    assert_eq!(reply_text(&frames).0, "Sunny ☀");
    let usage = &harness.usage.records()[0];
    assert_eq!((usage.backend.as_str(), usage.tokens_in, usage.tokens_out), ("ollama", 12, 4));
}

#[tokio::test]
async fn llm_interrupt_closes_stream_in_100_ms() {
    let server = TestServer::http(None, |_| async {
        let (sender, body) = streamed();
        tokio::spawn(async move {
            for word in ["One", " two", " three", " four", " five", " six", " seven", " eight"].iter().cycle().take(400) {
                if sender.send(Bytes::from(openai_chunk(word))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        sse_response(body)
    })
    .await;

    let history = history();
    let stage = llm(OpenAiChat::compatible("local"), endpoint(&server, "/v1", Hosting::SelfHosted, None), Arc::clone(&history));
    let log = stage.reply_log();
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(3, final_transcript("Count")).await;
    // Wait for some text, then interrupt the turn.
    let first = harness.until(Duration::from_secs(5), |frame| matches!(frame.payload, Payload::Text(_))).await;

    assert!(!first.is_empty());
    assert_eq!(server.open.load(Ordering::SeqCst), 1);

    let interrupted = Instant::now();
    harness.send(3, Payload::Control(Control::Interrupt)).await;
    let closed = eventually(Duration::from_millis(100), || server.open.load(Ordering::SeqCst) == 0).await;
    assert!(closed, "the server still streams {:?} after the interrupt", interrupted.elapsed());

    let rest = harness.until(Duration::from_secs(5), is_last).await;
    assert!(rest.iter().any(|frame| matches!(frame.payload, Payload::Control(Control::Interrupt))), "the interrupt is forwarded");
    assert_eq!(log.for_turn(TurnId(3)).map(|r| r.outcome), Some(ReplyOutcome::Interrupted));
    let kept = history.lock().reply(TurnId(3)).map(str::to_owned).unwrap_or_default();
    assert!(kept.starts_with("One"), "the history keeps the text generated so far: {kept:?}");
}

#[tokio::test]
async fn llm_retries_exhausted_error_retryable() {
    let server = TestServer::http(None, |_| async {
        http::Response::builder().status(503).body(full("upstream unavailable")).expect("response")
    })
    .await;

    let stage = llm(OpenAiChat::compatible("local"), endpoint(&server, "/v1", Hosting::SelfHosted, None), history());
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(1, final_transcript("Hi")).await;
    let error = harness.task.await.expect("task").expect_err("503 every time");

    assert!(error.is_retryable(), "a fallback backend may take over: {error}");
    assert!(error.to_string().contains("503"));
    assert_eq!(server.connections.load(Ordering::SeqCst), 4, "the first attempt and 3 retries");
}

#[tokio::test]
async fn llm_self_hosted_rejects_public_endpoint() {
    let endpoint = Endpoint::new("openai", Hosting::Cloud, url::Url::parse("https://203.0.113.9/v1").expect("url"))
        .expect("endpoint")
        .with_retry(RetryPolicy { max_retries: 0, ..fast_retry() });
    let stage = llm(OpenAiChat::openai("gpt"), endpoint, history());
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(1, final_transcript("Hi")).await;
    let error = harness.task.await.expect("task").expect_err("public address");

    assert!(error.to_string().contains("public address 203.0.113.9"), "{error}");
    assert!(harness.egress.records().is_empty(), "no connection was opened");
}

#[tokio::test]
async fn llm_interrupt_behind_full_queue() {
    let server = TestServer::http(None, |_| async {
        let (sender, body) = streamed();
        tokio::spawn(async move {
            for _ in 0..1000 {
                if sender.send(Bytes::from(openai_chunk("word "))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        sse_response(body)
    })
    .await;

    let stage = llm(OpenAiChat::compatible("local"), endpoint(&server, "/v1", Hosting::SelfHosted, None), history());
    let log = stage.reply_log();
    let mut harness = Harness::start(stage, PrivacyTier::SelfHosted);
    harness.send(1, final_transcript("Talk")).await;
    harness.until(Duration::from_secs(5), |frame| matches!(frame.payload, Payload::Text(_))).await;

    // More frames than the stage queues while it streams, so it stops reading them.
    let partial = Payload::Transcript(Transcript {
        kind: TranscriptKind::Partial,
        text: "and".to_owned(),
        start: MediaTime::ZERO,
        end: MediaTime::ZERO,
        confidence: None,
    });
    for _ in 0..(mentis_stages::llm::remote::MAX_QUEUED_FRAMES + 100) {
        harness.send(2, partial.clone()).await;
    }
    let interrupted = Instant::now();
    harness.send(1, Payload::Control(Control::Interrupt)).await;
    let closed = eventually(Duration::from_millis(150), || server.open.load(Ordering::SeqCst) == 0).await;

    assert!(closed, "the server still streams {:?} after the interrupt", interrupted.elapsed());
    assert_eq!(log.for_turn(TurnId(1)).map(|r| r.outcome), Some(ReplyOutcome::Interrupted));
    // The interrupt waited in the inbox behind the queue, but it is still forwarded.
    let rest = harness.until(Duration::from_secs(5), |frame| matches!(frame.payload, Payload::Control(Control::Interrupt))).await;
    assert!(rest.iter().any(|frame| matches!(frame.payload, Payload::Control(Control::Interrupt))), "the interrupt is forwarded");
}
