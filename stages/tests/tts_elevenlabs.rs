//! The ElevenLabs stage against a local WSS server on 127.0.0.1 that speaks
//! the stream-input protocol
//! (<https://elevenlabs.io/docs/api-reference/websockets>): the client opens
//! with `{"text": " "}`, sends text that ends with a space, a single space as
//! keep-alive, and `{"text": ""}` to end the input. The server responds with
//! `{"audio": base64, "isFinal": null, ...}` messages, then
//! `{"isFinal": true}`, and closes. The server here closes a connection that
//! sends nothing for its inactivity timeout, as ElevenLabs does after 20 s
//! (shortened for the test), with the message shape ElevenLabs uses for it.
//!
//! The server synthesizes a tone per text. The tests check that the stage
//! emits exactly those samples, the order of the client's messages, and the
//! failure modes: a drop before audio, bad base64, malformed JSON,
//! a close without `isFinal`, an interrupt, and a rejected key.

mod net_support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use mentis_pipeline::wrap::RetryPolicy;
use mentis_pipeline::{
    Control, Frame, FrameMeta, MediaTime, Payload, PrivacyTier, Secret, SessionId, StageName, TextDelta, TurnId,
    TurnMark,
};
use mentis_stages::net::{Endpoint, Hosting};
use mentis_stages::tts::elevenlabs::{ElevenLabsConfig, ElevenLabsSetupError, ElevenLabsTts};
use net_support::{SeenRequest, TestServer, TestTls, TtsRun, assert_key_hidden, eventually, full, mono_f32_audio};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SESSION: SessionId = SessionId(9);
const KEY: &str = "xi-test-key-5b7e0c21d9a4";
const VOICE: &str = "21m00Tcm4TlvDq8ikWAM";
const RATE: u32 = 16_000;
/// Samples in one 20 ms frame at 16 kHz.
const FRAME: usize = 320;

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

fn meta(turn: u64) -> FrameMeta {
    FrameMeta { session: SESSION, turn: TurnId(turn), seq: 0, timestamp: MediaTime::ZERO }
}

fn text(turn: u64, text: &str, last: bool) -> Frame {
    Frame::new(meta(turn), Payload::Text(TextDelta { text: text.to_owned(), last }))
}

/// Returns the tone the server "synthesizes" for `text`. Its length and
/// pattern depend on the text, and it contains both extremes, so samples
/// that are shifted, lost or repeated cannot go unnoticed.
fn tone_for(text: &str) -> Vec<i16> {
    let text = text.trim();
    let count = 90 * text.len() + 7;
    let seed = text.bytes().fold(0_i16, |seed, byte| seed.wrapping_mul(31).wrapping_add(i16::from(byte)));
    let mut tone: Vec<i16> = (0..count)
        .map(|index| {
            let phase = index as f64 * 330.0 * std::f64::consts::TAU / f64::from(RATE);
            (phase.sin() * 11_000.0) as i16 ^ seed
        })
        .collect();
    tone[1] = i16::MAX;
    tone[2] = i16::MIN;
    tone
}

fn as_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&sample| f32::from(sample) / 32_768.0).collect()
}

fn audio_message(pcm: &[u8]) -> Message {
    let encoded = base64::engine::general_purpose::STANDARD.encode(pcm);
    Message::text(json!({"audio": encoded, "isFinal": null, "normalizedAlignment": null, "alignment": null}).to_string())
}

/// Test server behaviour, including its faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Speaks every text and ends with `isFinal`.
    Normal,
    /// The first connection drops after its first text, before any audio.
    DropBeforeAudio,
    /// Responds to the first text with audio that is not base64.
    BadBase64,
    /// Follows the first audio with a message that is not JSON.
    MalformedAfterAudio,
    /// Closes after the end of input without `isFinal`.
    NoFinal,
    /// Sends audio every 20 ms from the first text on, without end.
    Endless,
}

/// What the server saw on each connection: the handshake and the messages.
type Log = Arc<Mutex<Vec<(SeenRequest, Vec<Value>)>>>;

async fn eleven_server(mode: Mode, inactivity: Duration) -> (TestServer, Arc<TestTls>, Log) {
    let tls = Arc::new(TestTls::new());
    let log: Log = Arc::default();
    let shared = Arc::clone(&log);
    let server = TestServer::websocket(Some(Arc::clone(&tls)), move |socket, request| {
        serve(socket, request, mode, inactivity, Arc::clone(&shared))
    })
    .await;
    (server, tls, log)
}

async fn serve(
    mut socket: tokio_tungstenite::WebSocketStream<Box<dyn net_support::Io>>,
    request: SeenRequest,
    mode: Mode,
    inactivity: Duration,
    log: Log,
) {
    let index = {
        let mut log = log.lock().expect("lock");
        log.push((request, Vec::new()));
        log.len() - 1
    };
    loop {
        let message = match tokio::time::timeout(inactivity, socket.next()).await {
            Err(_) => {
                // ElevenLabs' message when no text arrives within the inactivity timeout.
                let timeout = json!({"message": "Have not received a new text input within the timeout of 20 seconds.",
                    "error": "input_timeout_exceeded", "code": 1008});
                let _ = socket.send(Message::text(timeout.to_string())).await;
                let _ = socket.close(None).await;
                return;
            }
            Ok(Some(Ok(Message::Text(message)))) => message,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return,
        };
        let value: Value = serde_json::from_str(message.as_str()).expect("client messages are JSON");
        log.lock().expect("lock")[index].1.push(value.clone());
        let text = value["text"].as_str().expect("every client message has text").to_owned();

        if text.is_empty() {
            if mode != Mode::NoFinal {
                let _ = socket.send(Message::text(json!({"isFinal": true}).to_string())).await;
            }
            let _ = socket.close(None).await;
            return;
        }
        if text.trim().is_empty() {
            continue;
        }
        match mode {
            Mode::DropBeforeAudio if index == 0 => return,
            Mode::BadBase64 => {
                let _ = socket.send(Message::text(r#"{"audio": "not*base64!", "isFinal": null}"#)).await;
                continue;
            }
            Mode::Endless => {
                let chunk: Vec<u8> = tone_for("endless")[..FRAME].iter().flat_map(|sample| sample.to_le_bytes()).collect();
                loop {
                    tokio::select! {
                        message = socket.next() => match message {
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                        () = tokio::time::sleep(Duration::from_millis(20)) => {
                            if socket.send(audio_message(&chunk)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            _ => {}
        }

        // The audio in two messages split inside a sample.
        let pcm: Vec<u8> = tone_for(&text).iter().flat_map(|sample| sample.to_le_bytes()).collect();
        let split = pcm.len() / 2 + 1;
        let _ = socket.send(audio_message(&pcm[..split])).await;
        let _ = socket.send(audio_message(&pcm[split..])).await;
        if mode == Mode::MalformedAfterAudio {
            let _ = socket.send(Message::text("{\"audio\": \"AAAA\", isFinal")).await;
        }
    }
}

fn endpoint(server: &TestServer, tls: &TestTls, retries: u32) -> Endpoint {
    Endpoint::new("elevenlabs", Hosting::Cloud, server.ws_url(""))
        .expect("endpoint")
        .with_ca_file(&tls.ca_file)
        .expect("CA file")
        .with_api_key(Secret::new(KEY))
        .with_retry(RetryPolicy {
            max_retries: retries,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_replay: 256,
        })
}

fn stage(endpoint: Endpoint, keep_alive: Duration) -> ElevenLabsTts {
    let config = ElevenLabsConfig { keep_alive, ..ElevenLabsConfig::new(VOICE, "eleven_flash_v2_5") };
    ElevenLabsTts::new(name("tts"), endpoint, config).expect("valid settings")
}

/// Audio frames as (turn, timestamp, samples).
fn audio_of(frames: &[Frame]) -> Vec<(TurnId, MediaTime, Vec<f32>)> {
    mono_f32_audio(frames, RATE)
}

/// Checks one turn's frames: 20 ms each but the last, timestamps from 0,
/// and exactly the server's tones for `texts`.
fn check_turn(audio: &[(TurnId, MediaTime, Vec<f32>)], turn: u64, texts: &[&str]) {
    let frames: Vec<_> = audio.iter().filter(|(frame_turn, ..)| *frame_turn == TurnId(turn)).collect();
    let mut position = 0_u64;
    let mut samples = Vec::new();
    for (index, (_, timestamp, frame)) in frames.iter().enumerate() {
        assert_eq!(*timestamp, MediaTime::from_samples(position, RATE), "timestamp of frame {index} of turn {turn}");
        if index + 1 < frames.len() {
            assert_eq!(frame.len(), FRAME, "only the last frame may be shorter");
        }
        position += frame.len() as u64;
        samples.extend_from_slice(frame);
    }
    let expected: Vec<f32> = texts.iter().flat_map(|text| as_f32(&tone_for(text))).collect();
    assert_eq!(samples.len(), expected.len(), "sample count of turn {turn}");
    assert!(samples == expected, "the samples of turn {turn} differ from the server's");
}

/// Returns the `text` fields a connection received, in order.
fn texts_of(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|message| message["text"].as_str().expect("text").to_owned()).collect()
}

#[tokio::test]
async fn elevenlabs_protocol_and_exact_audio() {
    // The server closes a connection that is silent for 300 ms, so the client's
    // keep-alive every 100 ms must carry it through a 700 ms pause.
    let (server, tls, log) = eleven_server(Mode::Normal, Duration::from_millis(300)).await;
    let mut running = TtsRun::start(stage(endpoint(&server, &tls, 0), Duration::from_millis(100)), SESSION, PrivacyTier::Cloud);

    running.send(text(1, "Hello there.", false)).await;
    // Audio flows back while the turn's text is still open.
    let first = running.next().await;

    assert_eq!(first.as_audio().map(|audio| audio.frames()), Some(FRAME), "{first:?}");
    assert_eq!((first.meta.turn, first.meta.timestamp), (TurnId(1), MediaTime::ZERO));
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.send(text(1, "How are you?", false)).await;
    running.send(text(1, "", true)).await;
    running.send(text(2, "Again.", true)).await;
    let (usage, egress, turns) = (running.usage.clone(), running.egress.clone(), running.turns.clone());
    let (mut frames, result) = running.finish().await;

    result.expect("the stage ends cleanly");
    frames.insert(0, first);
    let audio = audio_of(&frames);
    check_turn(&audio, 1, &["Hello there.", "How are you?"]);
    check_turn(&audio, 2, &["Again."]);
    assert!(turns.get(TurnId(1), TurnMark::FirstTtsAudio).is_some());
    assert!(turns.get(TurnId(2), TurnMark::FirstTtsAudio).is_some());

    let log = log.lock().expect("lock").clone();
    assert_eq!(log.len(), 2, "one connection per turn");
    let (request, messages) = &log[0];
    assert_eq!(
        request.path_and_query,
        format!("/v1/text-to-speech/{VOICE}/stream-input?model_id=eleven_flash_v2_5&output_format=pcm_16000")
    );
    assert_eq!(request.headers["xi-api-key"], KEY);
    assert_eq!(messages[0], json!({"text": " "}), "the opening message is a single space");
    assert_eq!(messages[1], json!({"text": "Hello there. ", "flush": true}));
    let texts = texts_of(messages);
    let how = texts.iter().position(|text| text == "How are you? ").expect("the second sentence is sent");
    let keep_alives = texts[2..how].iter().filter(|text| *text == " ").count();
    assert!(keep_alives >= 3, "a 700 ms pause contains keep-alives every 100 ms: {texts:?}");
    assert_eq!(texts[2..how].len(), keep_alives, "only keep-alives during the pause: {texts:?}");
    assert_eq!(texts.iter().filter(|text| text.is_empty()).count(), 1, "exactly one end of input: {texts:?}");
    assert_eq!(texts.last().map(String::as_str), Some(""), "the end of input comes last: {texts:?}");
    assert_eq!(texts_of(&log[1].1), vec![" ", "Again. ", ""]);

    let usage = usage.records();
    assert_eq!((usage[0].backend.as_str(), usage[0].requests, usage[0].failures), ("elevenlabs", 2, 0));
    assert_eq!(usage[0].characters, ("Hello there.".len() + "How are you?".len() + "Again.".len()) as u64);
    assert!(usage[0].first_byte_p50_ms.is_some());
    let egress = egress.records();
    assert_eq!(egress.len(), 2);
    for record in &egress {
        assert_eq!((record.host.as_str(), record.scheme.as_str()), ("localhost", "wss"));
        assert!(record.bytes_received > 2 * 90 * 6, "the audio is counted: {record:?}");
        assert!(record.ended_unix_ms.is_some(), "the connection is closed");
    }
}

#[tokio::test]
async fn elevenlabs_drop_before_audio_retried() {
    let (server, tls, log) = eleven_server(Mode::DropBeforeAudio, Duration::from_secs(5)).await;
    let running = TtsRun::start(stage(endpoint(&server, &tls, 2), Duration::from_secs(1)), SESSION, PrivacyTier::Cloud);

    running.send(text(1, "One.", false)).await;
    running.send(text(1, "Two.", true)).await;
    let usage = running.usage.clone();
    let (frames, result) = running.finish().await;

    result.expect("the second connection succeeds");
    check_turn(&audio_of(&frames), 1, &["One.", "Two."]);
    let log = log.lock().expect("lock").clone();

    assert_eq!(log.len(), 2);
    let replayed = texts_of(&log[1].1);
    assert_eq!(replayed, vec![" ", "One. ", "Two. ", ""], "the new connection gets the turn's text so far");
    let usage = &usage.records()[0];
    assert_eq!((usage.requests, usage.failures), (2, 1));
    assert!(frames.iter().all(|frame| !matches!(frame.as_control(), Some(Control::Error(_)))));
}

#[tokio::test]
async fn elevenlabs_bad_base64_fails_stage() {
    let (server, tls, log) = eleven_server(Mode::BadBase64, Duration::from_secs(5)).await;
    let running = TtsRun::start(stage(endpoint(&server, &tls, 2), Duration::from_secs(1)), SESSION, PrivacyTier::Cloud);

    running.send(text(1, "Hello.", true)).await;
    let (frames, result) = running.finish().await;

    let error = result.expect_err("audio that cannot be decoded fails the stage");
    assert!(error.to_string().contains("base64"), "{error}");
    assert!(!error.is_retryable(), "a server that breaks the protocol is not retried: {error:?}");
    assert_eq!(log.lock().expect("lock").len(), 1);
    assert!(frames.iter().all(|frame| frame.as_audio().is_none()));
}

#[tokio::test]
async fn elevenlabs_malformed_json_after_audio_reported() {
    let (server, tls, _log) = eleven_server(Mode::MalformedAfterAudio, Duration::from_secs(5)).await;
    let running = TtsRun::start(stage(endpoint(&server, &tls, 2), Duration::from_secs(1)), SESSION, PrivacyTier::Cloud);

    running.send(text(1, "Hello.", true)).await;
    let mut frames = Vec::new();
    let mut running = running;
    loop {
        let frame = running.next().await;
        let failed = matches!(frame.as_control(), Some(Control::Error(_)));
        frames.push(frame);
        if failed {
            break;
        }
    }
    running.send(text(2, "Later.", true)).await;
    let usage = running.usage.clone();
    let (rest, result) = running.finish().await;
    frames.extend(rest);

    result.expect("a failure after audio does not end the stage");
    let failure = frames
        .iter()
        .find_map(|frame| match frame.as_control() {
            Some(Control::Error(failure)) => Some(failure),
            _ => None,
        })
        .expect("the failure is reported downstream");

    assert!(failure.message.contains("malformed"), "{}", failure.message);
    let audio = audio_of(&frames);
    check_turn(&audio, 1, &["Hello."]);
    assert_eq!(usage.records()[0].failures, 2, "both turns break after their audio");
}

#[tokio::test]
async fn elevenlabs_close_without_is_final_reported() {
    let (server, tls, _log) = eleven_server(Mode::NoFinal, Duration::from_secs(5)).await;
    let running = TtsRun::start(stage(endpoint(&server, &tls, 2), Duration::from_secs(1)), SESSION, PrivacyTier::Cloud);

    running.send(text(1, "Cut short.", true)).await;
    let (frames, result) = running.finish().await;

    result.expect("a failure after audio does not end the stage");
    check_turn(&audio_of(&frames), 1, &["Cut short."]);
    let failure = frames
        .iter()
        .find_map(|frame| match frame.as_control() {
            Some(Control::Error(failure)) => Some(failure),
            _ => None,
        })
        .expect("the missing end marker is reported");

    assert!(failure.message.contains("isFinal"), "{}", failure.message);
}

#[tokio::test]
async fn elevenlabs_interrupt_closes_socket_in_100_ms() {
    let (server, tls, log) = eleven_server(Mode::Endless, Duration::from_secs(5)).await;
    let mut running = TtsRun::start(stage(endpoint(&server, &tls, 0), Duration::from_secs(1)), SESSION, PrivacyTier::Cloud);

    running.send(text(1, "Go on forever.", false)).await;
    let first = running.next().await;

    assert!(first.as_audio().is_some(), "{first:?}");
    assert_eq!(server.open.load(Ordering::SeqCst), 1);

    let interrupted = Instant::now();
    running.send(Frame::control(meta(1), Control::Interrupt)).await;
    let closed = eventually(Duration::from_millis(100), || server.open.load(Ordering::SeqCst) == 0).await;
    let elapsed = interrupted.elapsed();
    assert!(closed, "the server still sees the socket {elapsed:?} after the interrupt");

    running.send(text(1, "Late text of the interrupted turn.", true)).await;
    let (frames, result) = running.finish().await;
    result.expect("clean end");
    assert_eq!(log.lock().expect("lock").len(), 1, "the interrupted turn opens no new connection");
    assert!(frames.iter().any(|frame| frame.as_control() == Some(&Control::Interrupt)), "the interrupt goes downstream");
    let texts = texts_of(&log.lock().expect("lock")[0].1);
    assert!(!texts.iter().any(String::is_empty), "an interrupt is not an end of input: {texts:?}");
}

#[tokio::test]
async fn elevenlabs_key_absent_from_output() {
    // A handshake rejected with 401 by a server that echoes the key back.
    let server = TestServer::http(None, |request| async move {
        let echoed = request.headers.get("xi-api-key").map(|value| value.as_bytes().to_vec()).unwrap_or_default();
        http::Response::builder().status(401).body(full(echoed)).expect("response")
    })
    .await;

    let endpoint = Endpoint::new("elevenlabs", Hosting::SelfHosted, server.ws_url(""))
        .expect("endpoint")
        .with_api_key(Secret::new(KEY));
    let eleven = stage(endpoint, Duration::from_secs(1));
    let described = format!("{eleven:?}");
    let running = TtsRun::start(eleven, SESSION, PrivacyTier::Cloud);

    running.send(text(1, "Hello.", true)).await;
    let (usage, egress) = (running.usage.clone(), running.egress.clone());
    let (frames, result) = running.finish().await;

    let error = result.expect_err("a rejected key fails the stage");

    assert!(error.to_string().contains("401"), "{error}");
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
fn elevenlabs_invalid_settings_rejected() {
    let url = url::Url::parse("wss://api.elevenlabs.io").expect("url");
    let endpoint = Endpoint::new("elevenlabs", Hosting::Cloud, url).expect("endpoint");
    let build = |config: ElevenLabsConfig| ElevenLabsTts::new(name("tts"), endpoint.clone(), config);

    let slow = ElevenLabsConfig { keep_alive: Duration::from_secs(20), ..ElevenLabsConfig::new(VOICE, "m") };
    assert!(matches!(build(slow), Err(ElevenLabsSetupError::InvalidKeepAlive { .. })));
    assert!(matches!(build(ElevenLabsConfig::new(" ", "m")), Err(ElevenLabsSetupError::Config(_))));
    let tiny = ElevenLabsConfig { frame: Duration::from_micros(10), ..ElevenLabsConfig::new(VOICE, "m") };
    assert!(matches!(build(tiny), Err(ElevenLabsSetupError::InvalidFrame { .. })));

    let eleven = build(ElevenLabsConfig::new(VOICE, "eleven_flash_v2_5")).expect("valid settings");
    assert_eq!(eleven.format().sample_rate, 16_000);
    assert_eq!(
        eleven.url().as_str(),
        format!("wss://api.elevenlabs.io/v1/text-to-speech/{VOICE}/stream-input?model_id=eleven_flash_v2_5&output_format=pcm_16000")
    );
}
