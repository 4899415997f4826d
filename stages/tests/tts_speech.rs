//! The OpenAI-compatible speech stage against local servers on 127.0.0.1
//! that speak the "Create speech" API: `POST /v1/audio/speech` with a JSON
//! body and raw PCM in response (`response_format: "pcm"`, 16-bit signed
//! little-endian mono, 24 kHz for OpenAI).
//! Source: <https://platform.openai.com/docs/api-reference/audio/createSpeech>.
//!
//! The servers synthesize a tone. The tests check that the stage emits
//! exactly those samples however the body is split, and its behaviour on a
//! dropped connection, a slow first byte, a 429 with `Retry-After`, an
//! interrupt, and a rejected key.

mod net_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mentis_pipeline::wrap::RetryPolicy;
use mentis_pipeline::{
    Control, Frame, FrameMeta, MediaTime, Payload, PrivacyTier, Secret, SessionId, StageName, TextDelta, TurnId,
    TurnMark,
};
use mentis_stages::net::{Endpoint, Hosting, Timeouts};
use mentis_stages::tts::speech::{OpenAiSpeech, SpeechConfig, SpeechConfigError};
use net_support::{
    SeenRequest, TestServer, TtsRun, assert_key_hidden, eventually, full, mono_f32_audio, short_timeouts, streamed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SESSION: SessionId = SessionId(7);
const KEY: &str = "sk-tts-test-3f9a1c77e2b4d5";
const RATE: u32 = 24_000;
/// Samples in one 20 ms frame at 24 kHz.
const FRAME: usize = 480;

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

fn meta(turn: u64) -> FrameMeta {
    FrameMeta { session: SESSION, turn: TurnId(turn), seq: 0, timestamp: MediaTime::ZERO }
}

fn text(turn: u64, text: &str, last: bool) -> Frame {
    Frame::new(meta(turn), Payload::Text(TextDelta { text: text.to_owned(), last }))
}

/// Returns a tone the test server "synthesizes": a 440 Hz sine with both
/// extremes and bytes that differ between the low and the high half, so a
/// sample shifted by one byte cannot go unnoticed.
fn tone(samples: usize, seed: i16) -> Vec<i16> {
    let mut tone: Vec<i16> = (0..samples)
        .map(|index| {
            let phase = index as f64 * 440.0 * std::f64::consts::TAU / f64::from(RATE);
            (phase.sin() * 12_000.0) as i16 ^ seed
        })
        .collect();
    if samples >= 3 {
        tone[1] = i16::MAX;
        tone[2] = i16::MIN;
    }
    tone
}

fn pcm(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|sample| sample.to_le_bytes()).collect()
}

fn as_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&sample| f32::from(sample) / 32_768.0).collect()
}

/// Returns the `input` field of a request's JSON body.
fn input_of(request: &SeenRequest) -> String {
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("the request body is JSON");
    body["input"].as_str().expect("input is a string").to_owned()
}

fn retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_replay: 256,
    }
}

fn endpoint(server: &TestServer, timeouts: Timeouts, retries: u32) -> Endpoint {
    Endpoint::new("openai-tts", Hosting::SelfHosted, server.url("/v1"))
        .expect("endpoint")
        .with_api_key(Secret::new(KEY))
        .with_timeouts(timeouts)
        .with_retry(retry(retries))
}

fn stage(endpoint: Endpoint) -> OpenAiSpeech {
    let mut config = SpeechConfig::new("tts-1", "alloy");
    config.speed = Some(1.25);
    OpenAiSpeech::new(name("tts"), endpoint, config).expect("valid settings")
}

/// Audio frames as (turn, timestamp, samples).
fn audio_of(frames: &[Frame]) -> Vec<(TurnId, MediaTime, Vec<f32>)> {
    mono_f32_audio(frames, RATE)
}

/// Checks the frames of one turn: 20 ms each except the last of each
/// sentence, timestamps running on from 0, and the samples `expected`.
fn check_turn(audio: &[(TurnId, MediaTime, Vec<f32>)], turn: u64, sentences: &[&[i16]]) {
    let frames: Vec<_> = audio.iter().filter(|(frame_turn, ..)| *frame_turn == TurnId(turn)).collect();
    let mut position = 0_u64;
    let mut index = 0;
    for sentence in sentences {
        let expected = as_f32(sentence);
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let (_, timestamp, samples) = frames.get(index).unwrap_or_else(|| panic!("turn {turn} lacks frame {index}"));
            assert_eq!(*timestamp, MediaTime::from_samples(position, RATE), "timestamp of frame {index} of turn {turn}");
            let short = got.len() + samples.len() < expected.len();
            if short {
                assert_eq!(samples.len(), FRAME, "only the last frame of a sentence may be shorter");
            }
            position += samples.len() as u64;
            got.extend_from_slice(samples);
            index += 1;
        }
        assert_eq!(got.len(), expected.len(), "sample count of turn {turn}");
        assert!(got == expected, "the samples of turn {turn} differ from the server's");
    }
    assert_eq!(index, frames.len(), "turn {turn} has extra frames");
}

/// Serves `samples` for each request as a body split at `sizes` (cycled),
/// with a pause between pieces so that the reads split there too.
fn split_body(samples: &[i16], sizes: &'static [usize]) -> http::Response<net_support::Body> {
    let bytes = pcm(samples);
    let (sender, body) = streamed();
    tokio::spawn(async move {
        let mut offset = 0;
        for &size in sizes.iter().cycle() {
            if offset >= bytes.len() {
                break;
            }
            let end = (offset + size).min(bytes.len());
            if sender.send(Bytes::copy_from_slice(&bytes[offset..end])).await.is_err() {
                return;
            }
            offset = end;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    http::Response::builder().header("content-type", "audio/pcm").body(body).expect("response")
}

#[tokio::test]
async fn speech_pcm_split_at_odd_offsets() {
    // Odd sizes and single bytes leave a stray byte at most reads, and the
    // larger sizes keep the test short.
    const SIZES: &[usize] = &[1, 3, 1, 1, 5, 7, 2, 1, 63, 1, 255, 9, 1001];
    let hello = tone(1_250, 0);
    let how = tone(2_001, 0x0101);
    let again = tone(700, 0x2222);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let server = TestServer::http(None, move |request| {
        record.lock().expect("lock").push(request.clone());
        let samples = match input_of(&request).as_str() {
            "Hello there." => tone(1_250, 0),
            "How are you?" => tone(2_001, 0x0101),
            _ => tone(700, 0x2222),
        };
        async move { split_body(&samples, SIZES) }
    })
    .await;

    let running = TtsRun::start(stage(endpoint(&server, Timeouts::default(), 0)), SESSION, PrivacyTier::SelfHosted);

    running.send(text(1, "Hello there.", false)).await;
    running.send(text(1, "How are you?", true)).await;
    running.send(text(2, "Again.", true)).await;
    let (usage, egress, turns) = (running.usage.clone(), running.egress.clone(), running.turns.clone());
    let (frames, result) = running.finish().await;

    result.expect("the stage ends cleanly");
    let audio = audio_of(&frames);
    check_turn(&audio, 1, &[&hello, &how]);
    check_turn(&audio, 2, &[&again]);

    assert!(turns.get(TurnId(1), TurnMark::FirstTtsAudio).is_some());
    assert!(turns.get(TurnId(2), TurnMark::FirstTtsAudio).is_some());

    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 3);
    for (request, input) in requests.iter().zip(["Hello there.", "How are you?", "Again."]) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path_and_query, "/v1/audio/speech");
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.headers["authorization"], format!("Bearer {KEY}").as_str());
        let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
        assert_eq!(
            body,
            serde_json::json!({"model": "tts-1", "input": input, "voice": "alloy", "response_format": "pcm", "speed": 1.25})
        );
    }

    let usage = usage.records();
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].backend.as_str(), usage[0].requests, usage[0].failures), ("openai-tts", 3, 0));
    assert_eq!(usage[0].characters, ("Hello there.".len() + "How are you?".len() + "Again.".len()) as u64);
    assert!(usage[0].first_byte_p50_ms.is_some(), "first byte is recorded");
    let egress = egress.records();
    assert_eq!(egress.len(), 3, "one connection per request");
    for record in &egress {
        assert_eq!((record.host.as_str(), record.port, record.scheme.as_str()), ("127.0.0.1", server.address.port(), "http"));
        assert!(record.ended_unix_ms.is_some(), "every connection is closed");
    }
    let received: u64 = egress.iter().map(|record| record.bytes_received).sum();
    assert!(received >= ((1_250 + 2_001 + 700) * 2) as u64, "the PCM bodies are counted: {received}");
    assert!(egress.iter().all(|record| record.bytes_sent > 100), "the requests are counted");
}

#[tokio::test]
async fn speech_audio_streams_before_body_ends() {
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let server = TestServer::http(None, move |_| {
        let gate = Arc::clone(&gate);
        async move {
            let (sender, body) = streamed();
            tokio::spawn(async move {
                let samples = tone(4 * FRAME, 0);
                let bytes = pcm(&samples);
                let _ = sender.send(Bytes::copy_from_slice(&bytes[..2 * FRAME * 2 + 1])).await;
                // The rest only once the test has heard the first audio.
                gate.notified().await;
                let _ = sender.send(Bytes::copy_from_slice(&bytes[2 * FRAME * 2 + 1..])).await;
            });
            http::Response::new(body)
        }
    })
    .await;

    let mut running = TtsRun::start(stage(endpoint(&server, Timeouts::default(), 0)), SESSION, PrivacyTier::SelfHosted);

    running.send(text(1, "A long sentence.", true)).await;
    let first = running.next().await;
    let second = running.next().await;

    assert_eq!(first.as_audio().map(|audio| audio.frames()), Some(FRAME), "{first:?}");
    assert_eq!(first.meta.timestamp, MediaTime::ZERO);
    assert_eq!(second.meta.timestamp, MediaTime::from_samples(FRAME as u64, RATE));
    release.notify_one();
    let (frames, result) = running.finish().await;
    result.expect("clean end");
    let rest: usize = frames.iter().filter_map(|frame| frame.as_audio()).map(|audio| audio.frames()).sum();
    assert_eq!(rest, 2 * FRAME);
}

/// Starts a raw TCP server that cuts the response to `cut_input` off in the
/// middle of its body. It announces `Content-Length` for the whole tone,
/// sends `sent` samples of it and closes the connection. Other inputs get a
/// whole tone.
async fn cutting_server(cut_input: &'static str, sent: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let inputs = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&inputs);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0_u8; 4096];
                // Read the head, then the body its Content-Length announces.
                let (head_end, length) = loop {
                    let read = socket.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    if let Some(end) = request.windows(4).position(|window| window == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .and_then(|value| value.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while request.len() < head_end + length {
                    let read = socket.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                }
                let body: serde_json::Value = serde_json::from_slice(&request[head_end..]).expect("JSON body");
                let input = body["input"].as_str().unwrap_or_default().to_owned();
                record.lock().expect("lock").push(input.clone());

                let samples = tone(3_000, 0);
                let bytes = pcm(&samples);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: audio/pcm\r\ncontent-length: {}\r\n\r\n",
                    bytes.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let body = if input == cut_input { &bytes[..sent * 2 + 1] } else { &bytes[..] };
                let _ = socket.write_all(body).await;
                let _ = socket.flush().await;
                // Dropping the socket closes the connection, mid-body for the cut input.
            });
        }
    });
    (address, inputs)
}

#[tokio::test]
async fn speech_drop_mid_body_reported() {
    let (address, inputs) = cutting_server("Broken off.", 1_000).await;
    let url = url::Url::parse(&format!("http://127.0.0.1:{}/v1", address.port())).expect("url");
    let endpoint = Endpoint::new("openai-tts", Hosting::SelfHosted, url).expect("endpoint").with_retry(retry(3));
    let running = TtsRun::start(stage(endpoint), SESSION, PrivacyTier::SelfHosted);

    running.send(text(1, "Broken off.", false)).await;
    running.send(text(1, "Whole.", true)).await;
    let usage = running.usage.clone();
    let (frames, result) = running.finish().await;

    result.expect("a failure after audio does not end the stage");
    assert_eq!(*inputs.lock().expect("lock"), vec!["Broken off.", "Whole."], "the broken request is not retried");
    let failure = frames
        .iter()
        .find_map(|frame| match frame.as_control() {
            Some(Control::Error(failure)) => Some(failure),
            _ => None,
        })
        .expect("the failure is reported downstream");
    assert_eq!(failure.stage, name("tts"));
    assert!(failure.message.contains("127.0.0.1"), "the message names the endpoint: {}", failure.message);

    // The samples before the cut are kept exactly (the stray byte is not a
    // sample), and the next sentence follows in full, its time running on.
    // The error frame travels on the priority lane, so it may overtake the audio.
    let audio = audio_of(&frames);
    let samples: Vec<f32> = audio.iter().flat_map(|(_, _, samples)| samples.clone()).collect();
    let mut expected = as_f32(&tone(3_000, 0)[..1_000]);
    expected.extend(as_f32(&tone(3_000, 0)));
    assert_eq!(samples.len(), expected.len(), "1000 samples before the cut, then 3000");
    assert!(samples == expected, "the audio differs from the server's");
    let second = audio.iter().position(|(_, timestamp, _)| *timestamp >= MediaTime::from_samples(1_000, RATE));
    let second = second.expect("the second sentence is spoken");
    assert_eq!(audio[second].1, MediaTime::from_samples(1_000, RATE), "time runs on after the failure");
    let usage = &usage.records()[0];
    assert_eq!((usage.requests, usage.failures), (2, 1));
}

#[tokio::test]
async fn speech_429_retried_after_delay() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&arrivals);
    let server = TestServer::http(None, move |_| {
        let count = {
            let mut arrivals = record.lock().expect("lock");
            arrivals.push(Instant::now());
            arrivals.len()
        };
        async move {
            if count == 1 {
                // OpenAI's rate-limit error shape: https://platform.openai.com/docs/guides/error-codes
                return http::Response::builder()
                    .status(429)
                    .header("retry-after", "1")
                    .body(full(r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#))
                    .expect("response");
            }
            http::Response::new(full(pcm(&tone(600, 0))))
        }
    })
    .await;

    let running = TtsRun::start(stage(endpoint(&server, Timeouts::default(), 2)), SESSION, PrivacyTier::SelfHosted);

    running.send(text(1, "Rate limited.", true)).await;
    let usage = running.usage.clone();
    let (frames, result) = running.finish().await;

    result.expect("the retry succeeds");
    let arrivals = arrivals.lock().expect("lock").clone();

    assert_eq!(arrivals.len(), 2);
    let waited = arrivals[1] - arrivals[0];
    assert!(waited >= Duration::from_millis(950), "the retry waited only {waited:?} despite Retry-After: 1");
    check_turn(&audio_of(&frames), 1, &[&tone(600, 0)]);
    let usage = &usage.records()[0];
    assert_eq!((usage.requests, usage.failures, usage.characters), (2, 1, 2 * "Rate limited.".len() as u64));
}

#[tokio::test]
async fn speech_slow_first_byte_retried() {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let server = TestServer::http(None, move |_| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            http::Response::new(full(pcm(&tone(500, 0))))
        }
    })
    .await;

    let running = TtsRun::start(stage(endpoint(&server, short_timeouts(), 2)), SESSION, PrivacyTier::SelfHosted);

    running.send(text(1, "Slow start.", true)).await;
    let usage = running.usage.clone();
    let started = Instant::now();
    let (frames, result) = running.finish().await;

    result.expect("the second attempt succeeds");
    assert!(started.elapsed() < Duration::from_millis(1_800), "the slow attempt was abandoned at the first-byte timeout");
    check_turn(&audio_of(&frames), 1, &[&tone(500, 0)]);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(usage.records()[0].failures, 1);
}

#[tokio::test]
async fn speech_retries_exhausted_fail_stage() {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let server = TestServer::http(None, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { http::Response::builder().status(503).body(full("overloaded")).expect("response") }
    })
    .await;

    let running = TtsRun::start(stage(endpoint(&server, Timeouts::default(), 2)), SESSION, PrivacyTier::SelfHosted);

    running.send(text(1, "Never spoken.", true)).await;
    let usage = running.usage.clone();
    let (frames, result) = running.finish().await;

    let error = result.expect_err("the stage fails once the retries are spent");
    assert!(error.is_retryable(), "a fallback may try another backend: {error:?}");
    assert!(error.to_string().contains("503"), "{error}");
    assert_eq!(count.load(Ordering::SeqCst), 3, "one attempt and two retries");
    assert!(frames.iter().all(|frame| frame.as_audio().is_none()));
    let usage = &usage.records()[0];
    assert_eq!((usage.requests, usage.failures), (3, 3));
}

#[tokio::test]
async fn speech_interrupt_closes_request_in_100_ms() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let server = TestServer::http(None, move |request| {
        let input = input_of(&request);
        record.lock().expect("lock").push(input.clone());
        async move {
            if input == "Next turn." {
                return http::Response::new(full(pcm(&tone(FRAME + 10, 0))));
            }
            // An endless stream, one frame every 20 ms, as a slow synthesizer sends it.
            let (sender, body) = streamed();
            tokio::spawn(async move {
                let frame = pcm(&tone(FRAME, 0));
                while sender.send(Bytes::from(frame.clone())).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            http::Response::new(body)
        }
    })
    .await;

    let mut running = TtsRun::start(stage(endpoint(&server, Timeouts::default(), 0)), SESSION, PrivacyTier::SelfHosted);

    running.send(text(1, "First sentence.", false)).await;
    running.send(text(1, "Second sentence.", true)).await;
    let first = running.next().await;

    assert!(first.as_audio().is_some(), "{first:?}");
    assert_eq!(server.open.load(Ordering::SeqCst), 1);

    let interrupted = Instant::now();
    running.send(Frame::control(meta(1), Control::Interrupt)).await;
    let closed = eventually(Duration::from_millis(100), || server.open.load(Ordering::SeqCst) == 0).await;
    let elapsed = interrupted.elapsed();
    assert!(closed, "the server still sees the connection {elapsed:?} after the interrupt");

    running.send(text(2, "Next turn.", true)).await;
    let (frames, result) = running.finish().await;
    result.expect("clean end");
    assert_eq!(*seen.lock().expect("lock"), vec!["First sentence.", "Next turn."], "the queued sentence is skipped");
    assert!(frames.iter().any(|frame| frame.as_control() == Some(&Control::Interrupt)), "the interrupt goes downstream");
    check_turn(&audio_of(&frames), 2, &[&tone(FRAME + 10, 0)]);
}

#[tokio::test]
async fn speech_key_absent_from_output() {
    let server = TestServer::http(None, |request| async move {
        // A careless server that echoes the header must not make the client show it.
        let echoed = request.headers.get("authorization").map(|value| value.as_bytes().to_vec()).unwrap_or_default();
        http::Response::builder().status(401).body(full(Bytes::from(echoed))).expect("response")
    })
    .await;

    let speech = stage(endpoint(&server, Timeouts::default(), 2));
    let described = format!("{speech:?}");
    let running = TtsRun::start(speech, SESSION, PrivacyTier::SelfHosted);

    running.send(text(1, "Hello.", true)).await;
    let (usage, egress) = (running.usage.clone(), running.egress.clone());
    let (frames, result) = running.finish().await;

    let error = result.expect_err("a rejected key fails the stage");

    assert!(!error.is_retryable(), "a rejected key is not retried: {error:?}");
    assert!(error.to_string().contains("API key was refused"), "{error}");
    assert_key_hidden(KEY, &[
        described,
        error.to_string(),
        format!("{error:?}"),
        format!("{:?}", usage.records()),
        format!("{:?}", egress.records()),
        format!("{frames:?}"),
    ]);
}

#[test]
fn speech_invalid_settings_rejected() {
    let url = url::Url::parse("http://127.0.0.1:9/v1").expect("url");
    let endpoint = Endpoint::new("openai-tts", Hosting::SelfHosted, url).expect("endpoint");
    let build = |config: SpeechConfig| OpenAiSpeech::new(name("tts"), endpoint.clone(), config);

    let fast = SpeechConfig { speed: Some(4.5), ..SpeechConfig::new("tts-1", "alloy") };
    assert!(matches!(build(fast), Err(SpeechConfigError::InvalidSpeed { .. })));
    let silent = SpeechConfig { sample_rate: 0, ..SpeechConfig::new("tts-1", "alloy") };
    assert!(matches!(build(silent), Err(SpeechConfigError::InvalidSampleRate)));
    let tiny = SpeechConfig { frame: Duration::from_micros(10), ..SpeechConfig::new("tts-1", "alloy") };
    assert!(matches!(build(tiny), Err(SpeechConfigError::InvalidFrame { .. })));
    assert!(matches!(build(SpeechConfig::new("tts-1", " ")), Err(SpeechConfigError::Missing { field: "voice" })));

    let piper = SpeechConfig { sample_rate: 22_050, ..SpeechConfig::new("piper", "en_US-joe-medium") };
    let speech = build(piper).expect("valid settings");
    assert_eq!(speech.format().sample_rate, 22_050);
    assert_eq!(speech.url().as_str(), "http://127.0.0.1:9/v1/audio/speech");
}
