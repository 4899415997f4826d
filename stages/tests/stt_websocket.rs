//! The streaming WebSocket stage against a local server on 127.0.0.1 that
//! speaks the protocol of Vosk's WebSocket server (alphacep/vosk-server,
//! `websocket/asr_server.py` and `websocket/test.py`). The client sends a
//! `{"config": ...}` text message first, then binary PCM16 frames, and the
//! server responds to each frame with one `{"partial": ...}` or
//! `{"text": ...}` result. The server responds to `{"eof" : 1}` with the
//! final result and then closes.
//!
//! Its first connection can fail the way servers do: a drop mid-utterance,
//! a 429 at the handshake, or a result that is not JSON.
//!
//! The server "recognizes" audio without a model: blocks of 0.5 s whose
//! samples all have the value `v` are the word `w{v}`, and it ends an
//! utterance (a final result) after every two words.

mod stt_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use mentis_pipeline::{Control, MediaTime, PrivacyTier, TurnId};
use mentis_stages::net::{Endpoint, Hosting};
use mentis_stages::stt::websocket::{BACKEND, WebSocketStt, WebSocketSttConfig};
use parking_lot::Mutex;
use serde_json::json;
use stt_support::{Harness, assert_final_before_stopped, finals, partials, quick_retry};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

const LONG: Duration = Duration::from_secs(15);
const WORD: usize = 8_000;

fn words(first: i16, count: i16) -> Vec<i16> {
    (first..first + count).flat_map(|value| std::iter::repeat_n(value, WORD)).collect()
}

fn words_of(samples: &[i16]) -> String {
    let mut words: Vec<String> = Vec::new();
    for block in samples.chunks(WORD) {
        let word = format!("w{}", block[0]);
        if words.last() != Some(&word) {
            words.push(word);
        }
    }
    words.join(" ")
}

#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    /// Per connection, the text messages and audio byte counts in order.
    messages: Vec<Vec<String>>,
    empty_binary_frames: usize,
    closed_at: Vec<Instant>,
}

struct Server {
    address: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fault injected on the server's first connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing.
    None,
    /// The connection drops after this many audio bytes.
    DropAfter(usize),
    /// The server responds to the handshake with 429 Too Many Requests.
    RateLimited,
    /// The first result is not JSON.
    Malformed,
}

/// Starts a Vosk-like server with `fault` on its first connection.
async fn server_with(fault: Fault) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let connection = {
                let mut seen = log.lock();
                seen.connections += 1;
                seen.messages.push(Vec::new());
                seen.connections
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                if connection == 1 && matches!(fault, Fault::RateLimited) {
                    // Read the upgrade request, then reject it as a rate-limited server would.
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut stream = stream;
                    let mut request = vec![0_u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let body = "too many concurrent connections";
                    let response = format!(
                        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    log.lock().closed_at.push(Instant::now());
                    return;
                }
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                let mut malformed_pending = connection == 1 && matches!(fault, Fault::Malformed);
                let mut pending: Vec<i16> = Vec::new();
                let mut received = 0;
                while let Some(Ok(message)) = socket.next().await {
                    let reply = match message {
                        Message::Text(text) => {
                            log.lock().messages[connection - 1].push(text.to_string());
                            if text.as_str().contains("config") {
                                continue;
                            }
                            if text.as_str() == r#"{"eof" : 1}"# {
                                let last = json!({"text": words_of(&std::mem::take(&mut pending))}).to_string();
                                let _ = socket.send(Message::text(last)).await;
                                let _ = socket.close(None).await;
                                break;
                            }
                            // Anything else is fed to the recognizer as audio, as the real server does.
                            json!({"partial": words_of(&pending)}).to_string()
                        }
                        Message::Binary(bytes) => {
                            log.lock().messages[connection - 1].push(format!("audio {}", bytes.len()));
                            if bytes.is_empty() {
                                log.lock().empty_binary_frames += 1;
                            }
                            received += bytes.len();
                            if connection == 1 && matches!(fault, Fault::DropAfter(limit) if received >= limit) {
                                break;
                            }
                            if std::mem::take(&mut malformed_pending) {
                                let _ = socket.send(Message::text("{\"partial\": ")).await;
                            }
                            pending.extend(bytes.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])));
                            if pending.len() >= 2 * WORD {
                                let utterance: Vec<i16> = pending.drain(..2 * WORD).collect();
                                json!({"text": words_of(&utterance), "result": []}).to_string()
                            } else {
                                json!({"partial": words_of(&pending)}).to_string()
                            }
                        }
                        _ => continue,
                    };
                    if socket.send(Message::text(reply)).await.is_err() {
                        break;
                    }
                }
                log.lock().closed_at.push(Instant::now());
            });
        }
    });
    Server { address, seen, task }
}

/// Starts a Vosk-like server whose first connection drops after `drop_first_after` audio bytes.
async fn server(drop_first_after: Option<usize>) -> Server {
    server_with(drop_first_after.map_or(Fault::None, Fault::DropAfter)).await
}

fn stage(server: &Server) -> WebSocketStt {
    let url = Url::parse(&format!("ws://127.0.0.1:{}", server.address.port())).expect("url");
    let endpoint = Endpoint::new(BACKEND, Hosting::SelfHosted, url).expect("endpoint").with_retry(quick_retry());
    let config = WebSocketSttConfig { sample_format: mentis_pipeline::SampleFormat::I16, ..WebSocketSttConfig::default() };
    WebSocketStt::new(mentis_pipeline::StageName::new("stt").expect("name"), endpoint, config).expect("stage")
}

#[tokio::test]
async fn websocket_segment_partials_and_one_final() {
    let server = server(None).await;
    let mut harness = Harness::start(stage(&server), PrivacyTier::SelfHosted);
    let end = harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 3)).await;
    harness.segment(TurnId(2), end.add(Duration::from_secs(1)), &words(4, 1)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    // The server ended an utterance after w2, but the segment still has one final.
    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2 w3".to_owned()), (TurnId(2), "w4".to_owned())]);
    let partials = partials(&frames);
    assert!(partials.iter().any(|(turn, _)| *turn == TurnId(1)), "turn 1 has partials: {partials:?}");
    assert!(partials.iter().any(|(turn, text)| *turn == TurnId(1) && text == "w1"), "turn 1 has the partial w1: {partials:?}");
    assert_final_before_stopped(&frames, TurnId(1));

    let seen = server.seen.lock();
    assert_eq!(seen.connections, 2, "one connection per segment");
    assert_eq!(seen.empty_binary_frames, 0);
    for messages in &seen.messages {
        assert_eq!(messages.first().map(String::as_str), Some(r#"{"config":{"sample_rate":16000}}"#));
        assert_eq!(messages.last().map(String::as_str), Some(r#"{"eof" : 1}"#), "eof after all audio");
    }
}

#[tokio::test]
async fn websocket_drop_resumes_without_lost_words() {
    // The first connection drops after 1.25 s of audio: w1 w2 are final by then.
    let server = server(Some(20_000 * 2)).await;
    let mut harness = Harness::start(stage(&server), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 5)).await;
    let usage = harness.usage.clone();
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2 w3 w4 w5".to_owned())]);
    let seen = server.seen.lock();
    assert_eq!(seen.connections, 2);
    let resent: usize = seen.messages[1]
        .iter()
        .filter_map(|message| message.strip_prefix("audio ").and_then(|bytes| bytes.parse::<usize>().ok()))
        .sum();
    assert_eq!(resent, 3 * WORD * 2, "only the audio after the last final result is sent again");
    let usage = &usage.records()[0];
    assert_eq!(usage.requests, 2);
    assert!(usage.audio_seconds > 2.5, "re-sent audio is counted: {}", usage.audio_seconds);
}

#[tokio::test]
async fn websocket_interrupt_closes_socket_in_100_ms() {
    let server = server(None).await;
    let mut harness = Harness::start(stage(&server), PrivacyTier::SelfHosted);
    harness.control(TurnId(1), MediaTime::ZERO, Control::SpeechStarted).await;
    harness.audio(TurnId(1), MediaTime::ZERO, &words(1, 1)).await;

    assert!(harness.next_transcript(LONG).await.is_some(), "the connection is up");

    let interrupted = Instant::now();
    harness.control(TurnId(1), MediaTime::ZERO, Control::Interrupt).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.seen.lock().closed_at.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let closed = *server.seen.lock().closed_at.first().expect("the server saw the close");
    let elapsed = closed.saturating_duration_since(interrupted);
    assert!(elapsed < Duration::from_millis(100), "the server saw the close {elapsed:?} after the interrupt");

    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");
    assert!(finals(&frames).is_empty());
}

#[tokio::test]
async fn websocket_429_handshake_retried() {
    let server = server_with(Fault::RateLimited).await;
    let mut harness = Harness::start(stage(&server), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 3)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2 w3".to_owned())]);
    assert_eq!(server.seen.lock().connections, 2, "the rejected handshake and the retry");
}

#[tokio::test]
async fn websocket_malformed_result_skipped() {
    let server = server_with(Fault::Malformed).await;
    let mut harness = Harness::start(stage(&server), PrivacyTier::SelfHosted);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 3)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("a malformed message does not end the stage");

    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2 w3".to_owned())]);
    assert_eq!(server.seen.lock().connections, 1);
}
