//! The Deepgram live transcription stage against a local WSS server on
//! 127.0.0.1 (private CA). The server speaks Deepgram's protocol closely
//! enough for the real client code: binary PCM16 audio, the `KeepAlive`,
//! `Finalize` and `CloseStream` text messages, and `Results` (`is_final`,
//! `speech_final`, `from_finalize`, `start`, `duration`,
//! `channel.alternatives`) and `Metadata` messages. Shapes: <https://developers.deepgram.com/reference/listen-live>,
//! <https://developers.deepgram.com/docs/finalize>,
//! <https://developers.deepgram.com/docs/close-stream>,
//! <https://developers.deepgram.com/docs/keep-alive>.
//!
//! The server "recognizes" audio without a model: the test sends blocks of
//! 0.5 s whose samples all have the same value `v`, and the server hears the
//! word `w{v}`. So audio sent twice would give repeated words.

mod net_support;
mod stt_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use mentis_pipeline::{Control, MediaTime, PrivacyTier, Secret, TranscriptKind, TurnId, TurnMark};
use mentis_stages::net::{Endpoint, Hosting, Timeouts};
use mentis_stages::stt::deepgram::{BACKEND, DeepgramConfig, DeepgramStt};
use net_support::TestTls;
use parking_lot::Mutex;
use serde_json::json;
use stt_support::{Harness, assert_final_before_stopped, finals, partials, quick_retry};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use url::Url;

const LONG: Duration = Duration::from_secs(15);
const KEY: &str = "dg-test-key-5151";
/// Samples in one word block: 0.5 s at 16 kHz.
const WORD: usize = 8_000;

/// Audio of the words `first..first + count`, one block each.
fn words(first: i16, count: i16) -> Vec<i16> {
    (first..first + count).flat_map(|value| std::iter::repeat_n(value, WORD)).collect()
}

/// Server behaviour for one test.
#[derive(Debug, Clone, Default)]
struct Behaviour {
    /// Reject the first handshake with 429 and this `Retry-After`.
    reject_first: Option<&'static str>,
    /// Drop the first connection abruptly after this many audio bytes.
    drop_first_after: Option<usize>,
    /// Send a malformed message before the first result.
    malformed: bool,
    /// Never respond to `Finalize`.
    ignore_finalize: bool,
}

/// Record of what the server received.
#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    path_and_query: Vec<String>,
    authorization: Vec<String>,
    empty_binary_frames: usize,
    /// Per event: (connection, arrival, what).
    events: Vec<(usize, Instant, Event)>,
    closed_at: Vec<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Audio(usize),
    KeepAlive,
    Finalize,
    CloseStream,
    Other(String),
}

impl Seen {
    fn count(&self, wanted: &Event) -> usize {
        self.events.iter().filter(|(_, _, event)| event == wanted).count()
    }

    fn audio_bytes(&self) -> usize {
        self.events.iter().map(|(_, _, event)| if let Event::Audio(bytes) = event { *bytes } else { 0 }).sum()
    }
}

/// One connection's recognizer state.
struct Recognizer {
    /// Samples received and not yet finalized.
    pending: Vec<i16>,
    /// Seconds from the connection's start to `pending[0]`.
    pending_start: f64,
}

impl Recognizer {
    fn words_of(samples: &[i16]) -> String {
        let mut words: Vec<String> = Vec::new();
        let mut last = None;
        for block in samples.chunks(WORD) {
            let value = block[0];
            if last != Some(value) {
                words.push(format!("w{value}"));
                last = Some(value);
            }
        }
        words.join(" ")
    }

    /// Builds a `Results` message for `samples` starting at `start`.
    fn results(samples: &[i16], start: f64, is_final: bool, from_finalize: bool) -> String {
        json!({
            "type": "Results",
            "channel_index": [0, 1],
            "duration": samples.len() as f64 / 16_000.0,
            "start": start,
            "is_final": is_final,
            "speech_final": false,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": Self::words_of(samples), "confidence": 0.99, "words": []}]},
            "metadata": {"request_id": "test", "model_info": {"name": "general-nova-3", "version": "test", "arch": "nova-3"}}
        })
        .to_string()
    }

    /// Takes audio and returns an interim result, plus a final one for every
    /// whole second kept, as Deepgram finalizes spans while audio flows.
    fn accept(&mut self, samples: &[i16]) -> Vec<String> {
        self.pending.extend_from_slice(samples);
        let mut out = Vec::new();
        while self.pending.len() >= 3 * WORD {
            let finished: Vec<i16> = self.pending.drain(..2 * WORD).collect();
            out.push(Self::results(&finished, self.pending_start, true, false));
            self.pending_start += finished.len() as f64 / 16_000.0;
        }
        if !self.pending.is_empty() {
            out.push(Self::results(&self.pending, self.pending_start, false, false));
        }
        out
    }

    /// Finalizes everything pending.
    fn finalize(&mut self, from_finalize: bool) -> String {
        let finished = std::mem::take(&mut self.pending);
        let message = Self::results(&finished, self.pending_start, true, from_finalize);
        self.pending_start += finished.len() as f64 / 16_000.0;
        message
    }
}

struct Server {
    address: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _tls: Arc<TestTls>,
    ca_file: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(behaviour: Behaviour) -> Server {
    let tls = Arc::new(TestTls::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (log, acceptor) = (Arc::clone(&seen), tls.acceptor.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let connection = {
                let mut seen = log.lock();
                seen.connections += 1;
                seen.connections
            };
            let (log, acceptor, behaviour) = (Arc::clone(&log), acceptor.clone(), behaviour.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let handshake_log = Arc::clone(&log);
                let callback = move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
                    let mut seen = handshake_log.lock();
                    seen.path_and_query.push(request.uri().path_and_query().map(ToString::to_string).unwrap_or_default());
                    let authorization = request.headers().get("authorization").and_then(|value| value.to_str().ok());
                    seen.authorization.push(authorization.unwrap_or_default().to_owned());
                    if let (1, Some(retry_after)) = (connection, behaviour.reject_first) {
                        let rejection = http::Response::builder()
                            .status(429)
                            .header("retry-after", retry_after)
                            .body(Some("Too Many Requests".to_owned()))
                            .expect("response");
                        return Err(rejection);
                    }
                    Ok(response)
                };
                let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                serve(socket, connection, behaviour, log).await;
            });
        }
    });
    let ca_file = tls.ca_file.clone();
    Server { address, seen, _tls: tls, ca_file, task }
}

async fn serve<S>(mut socket: tokio_tungstenite::WebSocketStream<S>, connection: usize, behaviour: Behaviour, log: Arc<Mutex<Seen>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut recognizer = Recognizer { pending: Vec::new(), pending_start: 0.0 };
    let mut received = 0;
    let mut sent_malformed = false;
    while let Some(Ok(message)) = socket.next().await {
        let event = match &message {
            Message::Binary(bytes) => Event::Audio(bytes.len()),
            Message::Text(text) => match serde_json::from_str::<serde_json::Value>(text.as_str()).ok().and_then(|value| value["type"].as_str().map(str::to_owned)).as_deref() {
                Some("KeepAlive") => Event::KeepAlive,
                Some("Finalize") => Event::Finalize,
                Some("CloseStream") => Event::CloseStream,
                _ => Event::Other(text.to_string()),
            },
            other => Event::Other(format!("{other:?}")),
        };
        log.lock().events.push((connection, Instant::now(), event.clone()));
        let replies = match event {
            Event::Audio(0) => {
                log.lock().empty_binary_frames += 1;
                Vec::new()
            }
            Event::Audio(length) => {
                received += length;
                if connection == 1 && behaviour.drop_first_after.is_some_and(|limit| received >= limit) {
                    // An abrupt drop: no close frame.
                    return;
                }
                let Message::Binary(bytes) = &message else { unreachable!() };
                let samples: Vec<i16> = bytes.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
                let mut replies = recognizer.accept(&samples);
                if behaviour.malformed && !sent_malformed {
                    sent_malformed = true;
                    replies.insert(0, "{\"type\": \"Results\", \"channel\": ".to_owned());
                }
                replies
            }
            Event::Finalize if behaviour.ignore_finalize => Vec::new(),
            Event::Finalize => vec![recognizer.finalize(true)],
            Event::CloseStream => {
                // The last words, then Metadata, then the close.
                let last = recognizer.finalize(false);
                let metadata = json!({"type": "Metadata", "request_id": "test", "duration": recognizer.pending_start, "channels": 1}).to_string();
                let _ = socket.send(Message::text(last)).await;
                let _ = socket.send(Message::text(metadata)).await;
                let _ = socket.close(None).await;
                break;
            }
            _ => Vec::new(),
        };
        for reply in replies {
            if socket.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
    }
    log.lock().closed_at.push(Instant::now());
}

fn config() -> DeepgramConfig {
    DeepgramConfig {
        keep_alive_interval: Duration::from_secs(1),
        finalize_wait: Duration::from_secs(2),
        close_wait: Duration::from_secs(3),
        sample_format: mentis_pipeline::SampleFormat::I16,
        ..DeepgramConfig::default()
    }
}

fn stage(server: &Server, config: DeepgramConfig) -> DeepgramStt {
    let base = Url::parse(&format!("wss://localhost:{}", server.address.port())).expect("url");
    let endpoint = Endpoint::new(BACKEND, Hosting::Cloud, base)
        .expect("endpoint")
        .with_ca_file(&server.ca_file)
        .expect("CA")
        .with_api_key(Secret::new(KEY))
        .with_timeouts(Timeouts { connect: Duration::from_secs(3), first_byte: Duration::from_secs(3), idle: Duration::from_secs(5) })
        .with_retry(quick_retry());
    DeepgramStt::new(mentis_pipeline::StageName::new("stt").expect("name"), endpoint, config).expect("stage")
}

#[tokio::test]
async fn deepgram_segment_partials_and_one_final() {
    let server = server(Behaviour::default()).await;
    let mut harness = Harness::start(stage(&server, config()), PrivacyTier::Cloud);
    let end = harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 4)).await;
    harness.segment(TurnId(2), end.add(Duration::from_secs(1)), &words(5, 2)).await;
    let turns = harness.turns.clone();
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2 w3 w4".to_owned()), (TurnId(2), "w5 w6".to_owned())]);
    let partials = partials(&frames);
    assert!(partials.iter().any(|(turn, _)| *turn == TurnId(1)), "turn 1 has partials: {partials:?}");
    assert!(partials.iter().any(|(turn, text)| *turn == TurnId(1) && text == "w1"), "turn 1 has the partial w1: {partials:?}");
    assert_final_before_stopped(&frames, TurnId(1));
    assert!(turns.get(TurnId(1), TurnMark::FinalTranscript).is_some());

    let seen = server.seen.lock();
    assert_eq!(seen.connections, 1, "one connection for the session");
    assert_eq!(seen.empty_binary_frames, 0, "no empty binary frame");
    assert_eq!(seen.authorization[0], format!("Token {KEY}"));
    let query = &seen.path_and_query[0];
    assert!(query.starts_with("/v1/listen?model=nova-3&"), "{query}");
    assert!(query.contains("encoding=linear16&sample_rate=16000&channels=1"), "{query}");
    assert_eq!(seen.audio_bytes(), 6 * WORD * 2);

    // Each Finalize follows all of its segment's audio, and CloseStream comes last.
    let first_finalize = seen.events.iter().position(|(_, _, event)| *event == Event::Finalize).expect("finalize");
    let audio_before: usize = seen.events[..first_finalize].iter().map(|(_, _, event)| if let Event::Audio(bytes) = event { *bytes } else { 0 }).sum();
    assert_eq!(audio_before, 4 * WORD * 2);
    assert_eq!(seen.events.last().map(|(_, _, event)| event.clone()), Some(Event::CloseStream));
}

#[tokio::test]
async fn deepgram_keep_alive_during_pause() {
    let server = server(Behaviour::default()).await;
    let mut harness = Harness::start(stage(&server, config()), PrivacyTier::Cloud);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 2)).await;

    assert!(harness.next_transcript(LONG).await.is_some());
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");
    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2".to_owned())]);

    let seen = server.seen.lock();
    let keep_alives: Vec<Instant> = seen.events.iter().filter(|(_, _, event)| *event == Event::KeepAlive).map(|(_, at, _)| *at).collect();
    assert!(keep_alives.len() >= 2, "KeepAlive every second in a 2.6 s pause: {}", keep_alives.len());
    for pair in keep_alives.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(900), "KeepAlives {gap:?} apart");
    }
}

#[tokio::test]
async fn deepgram_keep_alive_default_3_to_5_s() {
    let server = server(Behaviour::default()).await;
    let default_interval = DeepgramConfig { keep_alive_interval: DeepgramConfig::default().keep_alive_interval, ..config() };
    let mut harness = Harness::start(stage(&server, default_interval), PrivacyTier::Cloud);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 1)).await;

    assert!(harness.next_transcript(LONG).await.is_some());
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let (result, _) = harness.finish(LONG).await;
    result.expect("clean end");

    let seen = server.seen.lock();
    let last_data = seen.events.iter().rev().find(|(_, _, event)| matches!(event, Event::Finalize)).map(|(_, at, _)| *at).expect("finalize");
    let keep_alive = seen.events.iter().find(|(_, _, event)| *event == Event::KeepAlive).map(|(_, at, _)| *at).expect("a KeepAlive in the pause");
    let gap = keep_alive - last_data;
    assert!((Duration::from_secs(3)..=Duration::from_secs(5)).contains(&gap), "first KeepAlive {gap:?} after the last message");
}

#[tokio::test]
async fn deepgram_results_after_close_stream_kept() {
    let server = server(Behaviour::default()).await;
    let mut harness = Harness::start(stage(&server, config()), PrivacyTier::Cloud);
    harness.control(TurnId(1), MediaTime::ZERO, Control::SpeechStarted).await;
    harness.audio(TurnId(1), MediaTime::ZERO, &words(7, 2)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(1), "w7 w8".to_owned())]);
    let seen = server.seen.lock();
    assert_eq!(seen.count(&Event::Finalize), 0);
    assert_eq!(seen.events.last().map(|(_, _, event)| event.clone()), Some(Event::CloseStream), "CloseStream after all audio");
    assert_eq!(seen.audio_bytes(), 2 * WORD * 2);
}

#[tokio::test]
async fn deepgram_drop_resumes_without_lost_words() {
    // The first connection drops after 2.25 s of audio: words 1 and 2 are
    // final by then, and 3 and part of 4 are not.
    let behaviour = Behaviour { drop_first_after: Some(36_000 * 2), ..Behaviour::default() };
    let server = server(behaviour).await;
    let mut harness = Harness::start(stage(&server, config()), PrivacyTier::Cloud);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 6)).await;
    let (egress, usage) = (harness.egress.clone(), harness.usage.clone());
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2 w3 w4 w5 w6".to_owned())]);
    let seen = server.seen.lock();
    assert_eq!(seen.connections, 2);
    assert_eq!(seen.empty_binary_frames, 0);
    let second: usize = seen.events.iter().filter(|(connection, _, _)| *connection == 2).map(|(_, _, event)| if let Event::Audio(bytes) = event { *bytes } else { 0 }).sum();
    // Words 1 and 2 were final before the drop. Words 3 to 6 go out again, once.
    assert_eq!(second, 4 * WORD * 2, "only the unconfirmed audio is sent again");

    assert_eq!(egress.records().len(), 2);
    let usage = &usage.records()[0];
    assert_eq!(usage.requests, 2);
    assert!(usage.failures >= 1);
    // Usage counts audio written to the socket: what the server read, plus
    // what was written into the first connection after the server stopped reading.
    let received_seconds = seen.audio_bytes() as f64 / 32_000.0;
    assert!(usage.audio_seconds >= received_seconds - 1e-6, "usage {} s, server read {received_seconds} s", usage.audio_seconds);
    assert!(usage.audio_seconds <= 5.0 + 1e-6, "at most 3 s sent once and 2 s sent again: {}", usage.audio_seconds);
    assert!(usage.audio_seconds > 3.0, "re-sent audio is counted");
}

#[tokio::test]
async fn deepgram_429_handshake_retried() {
    let server = server(Behaviour { reject_first: Some("1"), ..Behaviour::default() }).await;
    let mut harness = Harness::start(stage(&server, config()), PrivacyTier::Cloud);
    let started = Instant::now();
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 2)).await;
    let usage = harness.usage.clone();
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");

    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2".to_owned())]);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    assert_eq!(server.seen.lock().connections, 2);
    assert_eq!((usage.records()[0].requests, usage.records()[0].failures), (2, 1));
}

#[tokio::test]
async fn deepgram_malformed_messages_skipped() {
    let server = server(Behaviour { malformed: true, ..Behaviour::default() }).await;
    let mut harness = Harness::start(stage(&server, config()), PrivacyTier::Cloud);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 2)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("a malformed message does not end the stage");

    assert_eq!(finals(&frames), vec![(TurnId(1), "w1 w2".to_owned())]);
}

#[tokio::test]
async fn deepgram_finalize_timeout_emits_received() {
    let server = server(Behaviour { ignore_finalize: true, ..Behaviour::default() }).await;
    let bounded = DeepgramConfig { finalize_wait: Duration::from_millis(500), ..config() };
    let mut harness = Harness::start(stage(&server, bounded), PrivacyTier::Cloud);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 2)).await;
    let started = Instant::now();
    let (turn, transcript) = loop {
        let (turn, transcript) = harness.next_transcript(LONG).await.expect("a transcript");
        if transcript.kind == TranscriptKind::Final {
            break (turn, transcript);
        }
    };

    assert_eq!((turn, transcript.text.as_str()), (TurnId(1), "w1 w2"), "the interim text that arrived");
    assert!(started.elapsed() < Duration::from_secs(3), "emitted after the bound, not later: {:?}", started.elapsed());

    // The next segment works on a new connection.
    harness.segment(TurnId(2), MediaTime::from_duration(Duration::from_secs(5)), &words(3, 1)).await;
    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");
    assert_eq!(finals(&frames), vec![(TurnId(2), "w3".to_owned())]);
    assert_eq!(server.seen.lock().connections, 2);
}

#[tokio::test]
async fn deepgram_interrupt_closes_socket_in_100_ms() {
    let server = server(Behaviour::default()).await;
    let mut harness = Harness::start(stage(&server, config()), PrivacyTier::Cloud);
    harness.control(TurnId(1), MediaTime::ZERO, Control::SpeechStarted).await;
    harness.audio(TurnId(1), MediaTime::ZERO, &words(1, 1)).await;

    assert!(harness.next_transcript(LONG).await.is_some(), "the connection is up");

    let interrupted = Instant::now();
    harness.control(TurnId(1), MediaTime::ZERO, Control::Interrupt).await;
    let closed = net_support::eventually(Duration::from_secs(2), || !server.seen.lock().closed_at.is_empty()).await;
    assert!(closed, "the server never saw the close");
    let elapsed = server.seen.lock().closed_at[0].saturating_duration_since(interrupted);
    assert!(elapsed < Duration::from_millis(100), "the server saw the close {elapsed:?} after the interrupt");

    let (result, frames) = harness.finish(LONG).await;
    result.expect("clean end");
    assert!(finals(&frames).is_empty());
}

#[tokio::test]
async fn deepgram_key_absent_from_output() {
    let server = server(Behaviour::default()).await;
    let stt = stage(&server, config());

    assert!(!format!("{stt:?}").contains(KEY));
    let mut harness = Harness::start(stt, PrivacyTier::Cloud);
    harness.segment(TurnId(1), MediaTime::ZERO, &words(1, 1)).await;
    let (egress, usage) = (harness.egress.clone(), harness.usage.clone());
    let (result, _) = harness.finish(LONG).await;
    result.expect("clean end");
    let records = egress.records();
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].host.as_str(), records[0].scheme.as_str()), ("localhost", "wss"));
    assert!(records[0].bytes_sent > (WORD * 2) as u64, "{:?}", records[0]);
    for text in [format!("{records:?}"), format!("{:?}", usage.records())] {
        assert!(!text.contains(KEY), "{text}");
    }
}
