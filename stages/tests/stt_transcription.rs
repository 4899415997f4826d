//! The OpenAI-compatible transcription stage against a local server on
//! 127.0.0.1 that speaks the endpoint's protocol. The client sends a
//! `multipart/form-data` POST to `/v1/audio/transcriptions` with `file`,
//! `model` and `response_format` fields, and the server responds with
//! `{"text": "..."}` (OpenAI's "Create transcription" reference and
//! whisper.cpp's `examples/server/README.md`). The server also produces the
//! endpoint's failure modes: 429 with `Retry-After`, 500, a slow first byte,
//! a body that is not JSON.

mod net_support;
mod stt_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mentis_pipeline::wrap::RetryPolicy;
use mentis_pipeline::{Control, ErrorClass, MediaTime, PrivacyTier, Secret, TurnId, TurnMark};
use mentis_stages::net::{Endpoint, Hosting, Timeouts};
use mentis_stages::stt::transcription::{BACKEND, TranscriptionConfig, TranscriptionStt};
use mentis_stages::wav::{ReadOptions, read_wav};
use net_support::{SeenRequest, TestServer, full};
use parking_lot::Mutex;
use stt_support::{Harness, at_samples, finals, is_control, is_final, position, tone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

const LONG: Duration = Duration::from_secs(10);
const KEY: &str = "sk-stt-test-key-4242";

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..RetryPolicy::default()
    }
}

fn timeouts() -> Timeouts {
    Timeouts { connect: Duration::from_secs(2), first_byte: Duration::from_millis(500), idle: Duration::from_secs(2) }
}

fn endpoint(base: Url) -> Endpoint {
    Endpoint::new(BACKEND, Hosting::SelfHosted, base)
        .expect("endpoint")
        .with_api_key(Secret::new(KEY))
        .with_timeouts(timeouts())
        .with_retry(retry())
}

fn stage(base: Url, config: TranscriptionConfig) -> TranscriptionStt {
    let name = mentis_pipeline::StageName::new("stt").expect("name");
    TranscriptionStt::new(name, endpoint(base), config).expect("stage")
}

fn json(status: u16, body: &'static str) -> http::Response<net_support::Body> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .expect("response")
}

/// One part of a multipart form: its field name and content.
#[derive(Debug)]
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    content: Bytes,
}

/// Splits a `multipart/form-data` body (RFC 7578) into its parts.
fn parse_form(request: &SeenRequest) -> Vec<Part> {
    let content_type = request.headers.get("content-type").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let boundary = content_type.split("boundary=").nth(1).expect("a boundary parameter");
    let delimiter = format!("--{boundary}");
    let body = &request.body[..];
    let mut parts = Vec::new();
    let mut rest = body;
    loop {
        let start = find(rest, delimiter.as_bytes()).expect("a delimiter") + delimiter.len();
        rest = &rest[start..];
        if rest.starts_with(b"--") {
            break;
        }
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after the delimiter");
        let header_end = find(rest, b"\r\n\r\n").expect("part headers end");
        let headers = String::from_utf8_lossy(&rest[..header_end]).into_owned();
        rest = &rest[header_end + 4..];
        let end = find(rest, format!("\r\n{delimiter}").as_bytes()).expect("part end");
        let content = Bytes::copy_from_slice(&rest[..end]);
        rest = &rest[end + 2..];
        let disposition = headers.lines().find(|line| line.starts_with("Content-Disposition: ")).unwrap_or_default();
        let value_of = |key: &str| {
            disposition.split(';').find_map(|item| item.trim().strip_prefix(&format!("{key}=\"")).map(|value| value.trim_end_matches('"').to_owned()))
        };
        let content_type = headers
            .lines()
            .find_map(|line| line.strip_prefix("Content-Type: ").map(str::to_owned));
        parts.push(Part { name: value_of("name").expect("a field name"), filename: value_of("filename"), content_type, content });
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn field(parts: &[Part], name: &str) -> Option<String> {
    parts.iter().find(|part| part.name == name).map(|part| String::from_utf8_lossy(&part.content).into_owned())
}

/// Starts a server that responds to request `n` with `responses[n]` (the
/// last one repeats) and stores what it received.
async fn scripted(responses: Vec<(u16, &'static str, Option<&'static str>)>) -> (TestServer, Arc<Mutex<Vec<SeenRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let server = TestServer::http(None, move |request| {
        let log = Arc::clone(&log);
        let responses = responses.clone();
        async move {
            let index = {
                let mut log = log.lock();
                log.push(request);
                log.len() - 1
            };
            let (status, body, retry_after) = responses[index.min(responses.len() - 1)];
            let mut response = json(status, body);
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", http::HeaderValue::from_static(seconds));
            }
            response
        }
    })
    .await;
    (server, seen)
}

#[tokio::test]
async fn transcription_segments_posted_as_wav_once() {
    let (server, seen) = scripted(vec![(200, r#"{"text":" Hello world. ","segments":[],"language":"en"}"#, None)]).await;
    let config = TranscriptionConfig { language: Some("en".to_owned()), ..TranscriptionConfig::default() };
    let mut harness = Harness::start(stage(server.url("/v1"), config), PrivacyTier::SelfHosted);

    // Audio before the segment belongs to no turn and is not sent.
    harness.audio(TurnId::NONE, MediaTime::ZERO, &tone(1600)).await;
    let first = tone(8000);
    harness.segment(TurnId(1), at_samples(1600), &first).await;
    harness.segment(TurnId(2), at_samples(20_000), &tone(4800)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("the stage ends cleanly");

    assert_eq!(finals(&frames), vec![(TurnId(1), "Hello world.".to_owned()), (TurnId(2), "Hello world.".to_owned())]);
    let final_1 = position(&frames, |frame| is_final(frame, TurnId(1))).expect("final of turn 1");
    let stopped_1 = position(&frames, |frame| is_control(frame, TurnId(1), &Control::SpeechStopped)).expect("SpeechStopped");
    assert!(final_1 < stopped_1, "the final transcript comes before the SpeechStopped it belongs to");

    let requests = seen.lock().clone();
    assert_eq!(requests.len(), 2);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path_and_query, "/v1/audio/transcriptions");
    assert_eq!(request.headers.get("authorization").and_then(|value| value.to_str().ok()), Some(format!("Bearer {KEY}").as_str()));
    let parts = parse_form(request);
    assert_eq!(field(&parts, "model").as_deref(), Some("whisper-1"));
    assert_eq!(field(&parts, "response_format").as_deref(), Some("json"));
    assert_eq!(field(&parts, "language").as_deref(), Some("en"));
    assert_eq!(field(&parts, "prompt"), None);

    // The file is a 16 kHz mono WAV of exactly the segment's samples.
    let file = parts.iter().find(|part| part.name == "file").expect("a file part");
    assert_eq!(file.filename.as_deref(), Some("segment.wav"));
    assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
    let decoded = read_wav(&file.content[..], "uploaded", &ReadOptions { sample_format: mentis_pipeline::SampleFormat::I16, ..ReadOptions::default() })
        .expect("a valid WAV file");
    assert_eq!(decoded.spec.sample_rate, 16_000);
    assert_eq!(decoded.spec.channels, 1);
    assert_eq!(decoded.tracks.len(), 1);
    assert_eq!(decoded.tracks[0].to_i16(), first);
}

#[tokio::test]
async fn transcription_final_marked() {
    let (server, _) = scripted(vec![(200, r#"{"text":"yes"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    harness.segment(TurnId(3), MediaTime::ZERO, &tone(3200)).await;

    assert_eq!(harness.next_transcript(LONG).await.map(|(turn, transcript)| (turn, transcript.text)), Some((TurnId(3), "yes".to_owned())));
    assert!(harness.turns.get(TurnId(3), TurnMark::FinalTranscript).is_some());
}

#[tokio::test]
async fn transcription_float_audio_sent_as_pcm16() {
    let (server, seen) = scripted(vec![(200, r#"{"text":"ok"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    let samples = tone(640);
    harness.control(TurnId(1), MediaTime::ZERO, Control::SpeechStarted).await;
    let end = harness.audio_f32(TurnId(1), MediaTime::ZERO, &samples).await;
    harness.control(TurnId(1), end, Control::SpeechStopped).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames).len(), 1);

    let parts = parse_form(&seen.lock()[0]);
    let file = parts.iter().find(|part| part.name == "file").expect("file");
    let decoded = read_wav(&file.content[..], "uploaded", &ReadOptions { sample_format: mentis_pipeline::SampleFormat::I16, ..ReadOptions::default() }).expect("wav");
    let received = decoded.tracks[0].to_i16();
    assert_eq!(received.len(), samples.len());
    assert!(received.iter().zip(&samples).all(|(got, sent)| (got - sent).abs() <= 1), "float samples round-trip to 16 bits");
}

#[tokio::test]
async fn transcription_429_retry_after_retried() {
    let (server, seen) = scripted(vec![
        (429, r#"{"error":{"message":"Rate limit reached","type":"rate_limit_error"}}"#, Some("1")),
        (200, r#"{"text":"after the wait"}"#, None),
    ])
    .await;

    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    let started = Instant::now();
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let usage = harness.usage.clone();
    let (result, frames) = harness.finish(LONG).await;
    result.expect("the retry succeeds");

    assert_eq!(finals(&frames), vec![(TurnId(1), "after the wait".to_owned())]);
    assert_eq!(seen.lock().len(), 2);
    assert!(started.elapsed() >= Duration::from_secs(1), "the client waited for Retry-After");
    let record = &usage.records()[0];
    assert_eq!((record.requests, record.failures), (2, 1));
}

#[tokio::test]
async fn transcription_500_retried() {
    let (server, seen) = scripted(vec![(500, r#"{"error":"model busy"}"#, None), (200, r#"{"text":"second try"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("the retry succeeds");

    assert_eq!(finals(&frames), vec![(TurnId(1), "second try".to_owned())]);
    assert_eq!(seen.lock().len(), 2);
}

#[tokio::test]
async fn transcription_slow_first_byte_retried() {
    let calls = Arc::new(Mutex::new(0_u32));
    let counter = Arc::clone(&calls);
    let server = TestServer::http(None, move |_| {
        let counter = Arc::clone(&counter);
        async move {
            let call = {
                let mut calls = counter.lock();
                *calls += 1;
                *calls
            };
            if call == 1 {
                // Longer than the 500 ms first-byte limit.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            json(200, r#"{"text":"in time"}"#)
        }
    })
    .await;

    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("the retry succeeds");

    assert_eq!(finals(&frames), vec![(TurnId(1), "in time".to_owned())]);
    assert_eq!(*calls.lock(), 2);
}

#[tokio::test]
async fn transcription_slow_response_within_limit_awaited() {
    let server = TestServer::http(None, |_| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        json(200, r#"{"text":"slow but fine"}"#)
    })
    .await;

    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let usage = harness.usage.clone();
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(1), "slow but fine".to_owned())]);
    let first_byte = usage.records()[0].first_byte_p50_ms.expect("a first byte time");
    assert!(first_byte >= 250.0, "first byte {first_byte} ms");
}

#[tokio::test]
async fn transcription_malformed_json_typed_error() {
    let (server, seen) = scripted(vec![(200, "<html><body>Whisper server</body></html>", None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let (result, frames) = harness.finish(LONG).await;

    let error = result.expect_err("a body that is not JSON is an error");
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert!(error.to_string().contains("response_format=json"), "{error}");
    assert!(error.to_string().contains("<html>"), "the error shows the start of the body: {error}");
    assert!(finals(&frames).is_empty());
    assert_eq!(seen.lock().len(), 1, "a malformed response is not retried");
}

#[tokio::test]
async fn transcription_retries_exhausted_retryable() {
    let (server, seen) = scripted(vec![(503, r#"{"error":"overloaded"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let usage = harness.usage.clone();
    let (result, _) = harness.finish(LONG).await;
    let error = result.expect_err("every attempt fails");

    assert!(error.is_retryable(), "the fallback wrapper sees a retryable error: {error}");
    assert_eq!(seen.lock().len(), 4, "one attempt and three retries");
    assert_eq!(usage.records()[0].failures, 4);
}

#[tokio::test]
async fn transcription_empty_results_no_final() {
    let (server, _) = scripted(vec![(200, r#"{"text":""}"#, None), (200, r#"{"text":" [BLANK_AUDIO]"}"#, None), (200, r#"{"text":"real words"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    harness.segment(TurnId(2), at_samples(4000), &tone(1600)).await;
    harness.segment(TurnId(3), at_samples(8000), &tone(1600)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(3), "real words".to_owned())]);
}

#[tokio::test]
async fn transcription_long_segment_sends_first_part() {
    let (server, seen) = scripted(vec![(200, r#"{"text":"long"}"#, None)]).await;
    let config = TranscriptionConfig { max_segment: Duration::from_millis(100), ..TranscriptionConfig::default() };
    let mut harness = Harness::start(stage(server.url("/v1"), config), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(4800)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames).len(), 1);

    let parts = parse_form(&seen.lock()[0]);
    let file = parts.iter().find(|part| part.name == "file").expect("file");
    let decoded = read_wav(&file.content[..], "uploaded", &ReadOptions::default()).expect("wav");
    assert_eq!(decoded.tracks[0].frames(), 1600, "100 ms at 16 kHz");
}

#[tokio::test]
async fn transcription_input_end_mid_segment() {
    let (server, _) = scripted(vec![(200, r#"{"text":"cut short"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    harness.control(TurnId(1), MediaTime::ZERO, Control::SpeechStarted).await;
    harness.audio(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(1), "cut short".to_owned())]);
}

#[tokio::test]
async fn transcription_interrupted_turns_not_sent() {
    let (server, seen) = scripted(vec![(200, r#"{"text":"kept"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);

    // Turn 1 is interrupted before it ends, so its late audio opens nothing.
    harness.control(TurnId(1), MediaTime::ZERO, Control::SpeechStarted).await;
    let end = harness.audio(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    harness.control(TurnId(1), end, Control::Interrupt).await;
    harness.audio(TurnId(1), end, &tone(320)).await;
    harness.control(TurnId(1), end, Control::SpeechStopped).await;
    harness.segment(TurnId(2), at_samples(4000), &tone(1600)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(2), "kept".to_owned())]);
    assert_eq!(seen.lock().len(), 1);
    assert!(position(&frames, |frame| is_control(frame, TurnId(1), &Control::Interrupt)).is_some(), "the interrupt is forwarded");
}

#[tokio::test]
async fn transcription_egress_and_usage_recorded() {
    let (server, _) = scripted(vec![(200, r#"{"text":"counted"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::SelfHosted);
    // 1.5 s of audio: 48,000 bytes of PCM in the WAV.
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(24_000)).await;
    let (egress, usage) = (harness.egress.clone(), harness.usage.clone());
    let (result, _) = harness.finish(LONG).await;
    result.expect("clean end");

    let records = egress.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!((record.host.as_str(), record.port, record.scheme.as_str()), ("127.0.0.1", server.address.port(), "http"));
    assert_eq!(record.stage, "stt");
    assert!(record.bytes_sent > 48_044, "the WAV and the form went out: {record:?}");
    assert!(record.bytes_received > 0, "a response was received: {record:?}");
    assert!(record.bytes_received < 2_000, "the response is only the small JSON body: {record:?}");
    assert!(record.ended_unix_ms.is_some(), "the connection is closed");

    let usage = usage.records();
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].backend.as_str(), usage[0].requests, usage[0].failures), (BACKEND, 1, 0));
    assert!((usage[0].audio_seconds - 1.5).abs() < 1e-6, "{}", usage[0].audio_seconds);
    assert!(usage[0].first_byte_p50_ms.is_some());
}

#[tokio::test]
async fn transcription_interrupt_closes_request_in_100_ms() {
    // A raw server that reads the request, never responds, and records when the client hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (received_tx, received_rx) = tokio::sync::oneshot::channel::<()>();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<Instant>();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buffer = vec![0_u8; 64 * 1024];
        let mut received = Vec::new();
        let mut notify = Some(received_tx);
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    received.extend_from_slice(&buffer[..read]);
                    if find(&received, b"--\r\n").is_some()
                        && let Some(notify) = notify.take()
                    {
                        let _ = notify.send(());
                    }
                }
            }
        }
        let _ = closed_tx.send(Instant::now());
        let _ = socket.shutdown().await;
    });

    let base = Url::parse(&format!("http://127.0.0.1:{}/v1", address.port())).expect("url");
    let slow = Timeouts { first_byte: Duration::from_secs(30), ..timeouts() };
    let name = mentis_pipeline::StageName::new("stt").expect("name");
    let stt = TranscriptionStt::new(name, endpoint(base).with_timeouts(slow), TranscriptionConfig::default()).expect("stage");
    let mut harness = Harness::start(stt, PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    tokio::time::timeout(LONG, received_rx).await.expect("the request arrives").expect("sent");

    let interrupted = Instant::now();
    harness.control(TurnId(1), MediaTime::ZERO, Control::Interrupt).await;
    let closed = tokio::time::timeout(LONG, closed_rx).await.expect("the client hangs up").expect("sent");
    let elapsed = closed.saturating_duration_since(interrupted);

    assert!(elapsed < Duration::from_millis(100), "the server saw the close {elapsed:?} after the interrupt");

    let (result, frames) = harness.finish(LONG).await;
    result.expect("an interrupt is no failure");
    assert!(finals(&frames).is_empty());
    assert!(position(&frames, |frame| is_control(frame, TurnId(1), &Control::Interrupt)).is_some());
}

#[tokio::test]
async fn transcription_key_absent_from_output() {
    let server = TestServer::http(None, |request| async move {
        // A careless server that echoes the header back.
        let echoed = request.headers.get("authorization").map(|value| value.as_bytes().to_vec()).unwrap_or_default();
        http::Response::builder().status(401).body(full(Bytes::from(echoed))).expect("response")
    })
    .await;

    let stt = stage(server.url("/v1"), TranscriptionConfig::default());
    assert!(!format!("{stt:?}").contains(KEY), "Debug of the stage shows the key");
    let mut harness = Harness::start(stt, PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let (egress, usage) = (harness.egress.clone(), harness.usage.clone());
    let (result, _) = harness.finish(LONG).await;

    let error = result.expect_err("401");
    assert_eq!(error.class(), ErrorClass::Config);
    for text in [error.to_string(), format!("{error:?}"), format!("{:?}", egress.records()), format!("{:?}", usage.records())] {
        assert!(!text.contains(KEY), "the key leaked: {text}");
    }
}

#[tokio::test]
async fn transcription_on_device_opens_no_socket() {
    let (server, seen) = scripted(vec![(200, r#"{"text":"never"}"#, None)]).await;
    let mut harness = Harness::start(stage(server.url("/v1"), TranscriptionConfig::default()), PrivacyTier::OnDevice);
    harness.segment(TurnId(1), MediaTime::ZERO, &tone(1600)).await;
    let egress = harness.egress.clone();
    let (result, _) = harness.finish(LONG).await;
    let error = result.expect_err("the tier forbids the connection");

    assert_eq!(error.class(), ErrorClass::Config, "{error}");
    assert!(seen.lock().is_empty());
    assert!(egress.records().is_empty());
}
