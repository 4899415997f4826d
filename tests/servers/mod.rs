//! Local servers that speak the wire protocols of the self-hosted and cloud
//! backends, backed by real engines so that an end-to-end test proves the
//! data flowed. Whisper tiny.en transcribes the audio the STT servers
//! receive, flite speaks the text the TTS servers receive, and the LLM
//! servers reply with a sentence that quotes the transcript. Every server
//! listens on 127.0.0.1 only (the transport comes from `net_support`) and
//! records what it saw, including any protocol violation, for the checks.
//!
//! Message shapes, by server:
//! - OpenAI-compatible transcription: a `multipart/form-data` POST to
//!   `/v1/audio/transcriptions` with `file`, `model` and optional
//!   `language` and `response_format` fields, with the response `{"text": "..."}`
//!   (<https://platform.openai.com/docs/api-reference/audio/createTranscription>).
//! - Deepgram live: binary PCM16 audio; `KeepAlive`, `Finalize` and
//!   `CloseStream` text messages; `Results` with `is_final`, `speech_final`,
//!   `from_finalize`, `start`, `duration` and `channel.alternatives`, and
//!   `Metadata` before the close
//!   (<https://developers.deepgram.com/reference/listen-live>,
//!   <https://developers.deepgram.com/docs/finalize>,
//!   <https://developers.deepgram.com/docs/close-stream>).
//! - Ollama: `POST /api/chat`, answered with one JSON object per line, the
//!   last with `"done": true` and the token counts
//!   (<https://github.com/ollama/ollama/blob/main/docs/api.md>).
//! - Anthropic Messages: `POST /v1/messages` with `x-api-key` and
//!   `anthropic-version`, answered with the named server-sent events
//!   `message_start`, `content_block_start`, `ping`, `content_block_delta`,
//!   `content_block_stop`, `message_delta` and `message_stop`
//!   (<https://docs.anthropic.com/en/docs/build-with-claude/streaming>).
//! - OpenAI-compatible speech: `POST /v1/audio/speech` with a JSON body and
//!   `response_format: "pcm"`, answered with raw 16-bit little-endian mono PCM
//!   (<https://platform.openai.com/docs/api-reference/audio/createSpeech>).
//! - ElevenLabs stream-input: `{"text": " "}` opens, text pieces follow, a
//!   single space keeps the connection alive, `{"text": ""}` ends the input;
//!   the server sends `{"audio": base64 PCM, ...}` messages, then
//!   `{"isFinal": true}`, and closes
//!   (<https://elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-stream-input>).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use mentis::stages::stt::{Recognizer, WhisperConfig, WhisperRecognizer};
use mentis::stages::tts::{Flite, SpeechEngine};
use mentis::stages::vad::Pcm;
use mentis::stages::wav::{ReadOptions, read_wav};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::net_support::{Body, Io, SeenRequest, TestServer, TestTls, full, streamed};

/// The rate of the audio the servers hear and speak: flite's slt voice and
/// Whisper both work at 16 kHz.
pub const RATE: u32 = 16_000;

/// Words of the transcript the LLM servers quote in their reply.
pub const QUOTED_WORDS: usize = 5;

/// Bytes of PCM per piece of a streamed speech response. Odd, so that pieces
/// split samples and the client must carry the stray byte over.
const SPEECH_PIECE_BYTES: usize = 4_001;

/// Bytes of PCM per ElevenLabs audio message; odd for the same reason.
const ELEVENLABS_PIECE_BYTES: usize = 8_001;

/// Whisper tiny.en and flite's slt voice, shared by the servers of one test.
#[derive(Clone)]
pub struct Engines {
    whisper: Arc<Mutex<WhisperRecognizer>>,
    flite: Arc<Mutex<Flite>>,
}

impl Engines {
    /// Loads both engines on a blocking thread.
    pub async fn load() -> Engines {
        tokio::task::spawn_blocking(|| {
            // One thread: on a 2-core machine busy with other work, two CTranslate2
            // threads sometimes took 3 to 5 s for the test clip instead of about 0.5 s,
            // while one thread took a steady 1.3 s.
            let whisper = WhisperRecognizer::new(WhisperConfig { threads: 1, ..WhisperConfig::tiny_en() })
                .unwrap_or_else(|error| panic!("cannot load Whisper tiny.en for the test servers: {error}"));
            let flite = Flite::slt().unwrap_or_else(|error| panic!("cannot start flite for the test servers: {error}"));
            Engines { whisper: Arc::new(Mutex::new(whisper)), flite: Arc::new(Mutex::new(flite)) }
        })
        .await
        .expect("loading the engines does not panic")
    }

    /// Transcribes mono 16 kHz samples as one utterance, on a blocking thread.
    pub async fn transcribe(&self, samples: Vec<f32>) -> Result<String, String> {
        let whisper = Arc::clone(&self.whisper);
        let recognize = move || {
            let mut whisper = whisper.lock();
            whisper.start_utterance().map_err(|error| error.to_string())?;
            whisper.accept(Pcm::F32(&samples)).map_err(|error| error.to_string())?;
            whisper.finish_utterance().map(|recognition| recognition.text.trim().to_owned()).map_err(|error| error.to_string())
        };
        tokio::task::spawn_blocking(recognize).await.map_err(|error| format!("the Whisper task failed: {error}"))?
    }

    /// Speaks `text` with flite as 16 kHz PCM16 samples, on a blocking thread.
    pub async fn speak(&self, text: String) -> Result<Vec<i16>, String> {
        let flite = Arc::clone(&self.flite);
        let synthesize = move || {
            let mut flite = flite.lock();
            if flite.sample_rate() != RATE {
                return Err(format!("flite speaks at {} Hz, the servers expect {RATE} Hz", flite.sample_rate()));
            }
            let mut samples = Vec::new();
            flite.synthesize(&text, &mut samples).map_err(|error| error.to_string())?;
            Ok(samples.iter().map(|&sample| (sample.clamp(-1.0, 1.0) * 32_767.0) as i16).collect())
        };
        tokio::task::spawn_blocking(synthesize).await.map_err(|error| format!("the flite task failed: {error}"))?
    }
}

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|sample| sample.to_le_bytes()).collect()
}

fn header(request: &SeenRequest, name: &str) -> Option<String> {
    request.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

fn json_response(status: u16, body: &Value) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap_or_else(|_| http::Response::new(full("")))
}

fn streamed_response(content_type: &'static str, pieces: Vec<Bytes>) -> http::Response<Body> {
    let (sender, body) = streamed();
    tokio::spawn(async move {
        for piece in pieces {
            if sender.send(piece).await.is_err() {
                return;
            }
        }
    });
    http::Response::builder()
        .header("content-type", content_type)
        .body(body)
        .unwrap_or_else(|_| http::Response::new(full("")))
}

/// Records why a request breaks the protocol and returns an error response.
fn reject(problems: &mut Vec<String>, status: u16, problem: String) -> http::Response<Body> {
    let response = json_response(status, &json!({"error": {"message": problem}}));
    problems.push(problem);
    response
}

// ---------------------------------------------------------------------------
// OpenAI-compatible transcription
// ---------------------------------------------------------------------------

/// One transcription request as the server decoded it.
#[derive(Debug, Clone)]
pub struct TranscriptionRequest {
    /// The text fields of the form, such as `model` and `language`.
    pub fields: BTreeMap<String, String>,
    /// The file part's name and content type.
    pub file_name: Option<String>,
    pub file_type: Option<String>,
    /// The uploaded WAV's layout and length.
    pub sample_rate: u32,
    pub channels: u16,
    pub audio_seconds: f64,
    /// What Whisper heard.
    pub transcript: String,
}

/// What the transcription server saw.
#[derive(Debug, Default)]
pub struct TranscriptionLog {
    pub requests: Vec<TranscriptionRequest>,
    pub problems: Vec<String>,
}

/// One part of a `multipart/form-data` body (RFC 7578).
struct FormPart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    content: Bytes,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Returns the value of `key="..."` in a `Content-Disposition` header.
fn disposition_parameter(disposition: &str, key: &str) -> Option<String> {
    disposition.split(';').find_map(|item| {
        let (name, value) = item.trim().split_once('=')?;
        (name.eq_ignore_ascii_case(key)).then(|| value.trim_matches('"').to_owned())
    })
}

/// Splits a `multipart/form-data` body into its parts.
fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<FormPart>, String> {
    let boundary = content_type
        .split(';')
        .find_map(|parameter| parameter.trim().strip_prefix("boundary="))
        .map(|boundary| boundary.trim_matches('"'))
        .ok_or_else(|| format!("the content type {content_type:?} has no boundary"))?;
    // Every delimiter but the first follows a CRLF; adding one in front makes them alike.
    let delimiter = format!("\r\n--{boundary}");
    let mut rest = [&b"\r\n"[..], body].concat();
    let mut parts = Vec::new();
    let start = find(&rest, delimiter.as_bytes()).ok_or("the body has no boundary line")?;
    rest.drain(..start + delimiter.len());
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let section_start = rest.strip_prefix(b"\r\n").ok_or("a boundary line does not end with CRLF")?;
        let end = find(section_start, delimiter.as_bytes()).ok_or("the body has no closing boundary")?;
        let section = &section_start[..end];
        let header_end = find(section, b"\r\n\r\n").ok_or("a part's headers do not end with an empty line")?;
        let headers = std::str::from_utf8(&section[..header_end]).map_err(|_| "a part's headers are not UTF-8")?;
        let header_value = |wanted: &str| {
            headers.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim().eq_ignore_ascii_case(wanted).then(|| value.trim().to_owned())
            })
        };
        let disposition = header_value("content-disposition").ok_or("a part has no Content-Disposition")?;
        let name = disposition_parameter(&disposition, "name").ok_or("a part has no field name")?;
        parts.push(FormPart {
            name,
            file_name: disposition_parameter(&disposition, "filename"),
            content_type: header_value("content-type"),
            content: Bytes::copy_from_slice(&section[header_end + 4..]),
        });
        let consumed = rest.len() - section_start.len() + end + delimiter.len();
        rest.drain(..consumed);
    }
}

/// Starts a plain-HTTP transcription server that runs Whisper on each upload.
pub async fn transcription_server(engines: Engines) -> (TestServer, Arc<Mutex<TranscriptionLog>>) {
    let log = Arc::new(Mutex::new(TranscriptionLog::default()));
    let shared = Arc::clone(&log);
    let server = TestServer::http(None, move |request| {
        let (log, engines) = (Arc::clone(&shared), engines.clone());
        async move { transcribe_upload(request, &engines, &log).await }
    })
    .await;
    (server, log)
}

async fn transcribe_upload(request: SeenRequest, engines: &Engines, log: &Mutex<TranscriptionLog>) -> http::Response<Body> {
    let fail = |status, problem| reject(&mut log.lock().problems, status, problem);
    if (request.method.as_str(), request.path_and_query.as_str()) != ("POST", "/v1/audio/transcriptions") {
        return fail(404, format!("unexpected request {} {}", request.method, request.path_and_query));
    }
    let content_type = header(&request, "content-type").unwrap_or_default();
    if !content_type.starts_with("multipart/form-data") {
        return fail(400, format!("the content type is {content_type:?}, not multipart/form-data"));
    }
    let parts = match parse_multipart(&content_type, &request.body) {
        Ok(parts) => parts,
        Err(problem) => return fail(400, format!("invalid multipart body: {problem}")),
    };

    // The audio: one WAV file part.
    let Some(file) = parts.iter().find(|part| part.name == "file") else {
        return fail(400, "the form has no `file` part".to_owned());
    };
    let options = ReadOptions { sample_format: mentis::pipeline::SampleFormat::F32, ..ReadOptions::default() };
    let decoded = match read_wav(&file.content[..], "uploaded file", &options) {
        Ok(decoded) => decoded,
        Err(error) => return fail(400, format!("the `file` part is not a valid WAV file: {error}")),
    };
    let samples: Vec<f32> = decoded.tracks.iter().flat_map(|track| track.to_f32()).collect();
    if decoded.spec.sample_rate != RATE || decoded.spec.channels != 1 {
        return fail(400, format!("the WAV is {} Hz with {} channels, not 16 kHz mono", decoded.spec.sample_rate, decoded.spec.channels));
    }

    let audio_seconds = samples.len() as f64 / f64::from(RATE);
    let transcript = match engines.transcribe(samples).await {
        Ok(transcript) => transcript,
        Err(error) => return fail(500, format!("Whisper failed: {error}")),
    };
    let fields = parts
        .iter()
        .filter(|part| part.file_name.is_none())
        .map(|part| (part.name.clone(), String::from_utf8_lossy(&part.content).into_owned()))
        .collect();
    log.lock().requests.push(TranscriptionRequest {
        fields,
        file_name: file.file_name.clone(),
        file_type: file.content_type.clone(),
        sample_rate: decoded.spec.sample_rate,
        channels: decoded.spec.channels,
        audio_seconds,
        transcript: transcript.clone(),
    });
    json_response(200, &json!({"text": transcript}))
}

// ---------------------------------------------------------------------------
// Deepgram live transcription
// ---------------------------------------------------------------------------

/// A client message on a Deepgram connection, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum DeepgramEvent {
    /// A binary frame of this many bytes.
    Audio(usize),
    KeepAlive,
    Finalize,
    CloseStream,
}

/// What the Deepgram server saw.
#[derive(Debug, Default)]
pub struct DeepgramLog {
    /// The path and query of each connection's handshake.
    pub paths: Vec<String>,
    /// The `Authorization` header of each handshake.
    pub authorizations: Vec<String>,
    /// Every connection's events, in order, tagged with the connection's index.
    pub events: Vec<(usize, DeepgramEvent)>,
    /// Binary frames without a byte; Deepgram takes one as a request to close.
    pub empty_binary_frames: usize,
    /// The transcripts sent in final results.
    pub finals: Vec<String>,
    /// How long Whisper took for each final result, in seconds.
    pub recognition_seconds: Vec<f64>,
    pub problems: Vec<String>,
}

impl DeepgramLog {
    /// Returns the audio bytes received on every connection.
    pub fn audio_bytes(&self) -> usize {
        self.events.iter().map(|(_, event)| if let DeepgramEvent::Audio(bytes) = event { *bytes } else { 0 }).sum()
    }
}

/// Starts a Deepgram live server over TLS that runs Whisper on the audio
/// of each `Finalize` (or of `CloseStream`).
pub async fn deepgram_server(engines: Engines, tls: Arc<TestTls>) -> (TestServer, Arc<Mutex<DeepgramLog>>) {
    let log = Arc::new(Mutex::new(DeepgramLog::default()));
    let shared = Arc::clone(&log);
    let server = TestServer::websocket(Some(tls), move |socket, request| {
        serve_deepgram(socket, request, engines.clone(), Arc::clone(&shared))
    })
    .await;
    (server, log)
}

/// Builds a final `Results` message for `seconds` of audio heard from `start` seconds on.
fn deepgram_results(transcript: &str, start: f64, seconds: f64, from_finalize: bool) -> String {
    json!({
        "type": "Results",
        "channel_index": [0, 1],
        "duration": seconds,
        "start": start,
        "is_final": true,
        "speech_final": true,
        "from_finalize": from_finalize,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.9, "words": []}]},
        "metadata": {"request_id": "e2e", "model_info": {"name": "whisper-tiny.en", "version": "e2e", "arch": "whisper"}}
    })
    .to_string()
}

/// Runs Whisper on the audio not finalized yet and returns its final result.
///
/// The stage waits the configured first-byte limit (15 s in the test's
/// configuration) for the answer to `Finalize`. Whisper tiny.en takes about
/// 1.3 s for the test clip on one busy core.
async fn deepgram_finalize(
    engines: &Engines,
    pending: &mut Vec<i16>,
    pending_start: &mut f64,
    from_finalize: bool,
    log: &Mutex<DeepgramLog>,
) -> String {
    let samples: Vec<f32> = pending.drain(..).map(|sample| f32::from(sample) / 32_768.0).collect();
    let seconds = samples.len() as f64 / f64::from(RATE);
    let started = std::time::Instant::now();
    let transcript = if samples.is_empty() {
        String::new()
    } else {
        engines.transcribe(samples).await.unwrap_or_else(|error| {
            log.lock().problems.push(format!("Whisper failed: {error}"));
            String::new()
        })
    };
    {
        let mut log = log.lock();
        log.finals.push(transcript.clone());
        log.recognition_seconds.push(started.elapsed().as_secs_f64());
    }
    let message = deepgram_results(&transcript, *pending_start, seconds, from_finalize);
    *pending_start += seconds;
    message
}

async fn serve_deepgram(mut socket: WebSocketStream<Box<dyn Io>>, request: SeenRequest, engines: Engines, log: Arc<Mutex<DeepgramLog>>) {
    let connection = {
        let mut log = log.lock();
        log.paths.push(request.path_and_query.clone());
        log.authorizations.push(header(&request, "authorization").unwrap_or_default());
        log.paths.len() - 1
    };
    let mut pending: Vec<i16> = Vec::new();
    let mut pending_start = 0.0;
    let mut total_seconds = 0.0;

    while let Some(Ok(message)) = socket.next().await {
        let event = match message {
            Message::Binary(bytes) if bytes.is_empty() => {
                log.lock().empty_binary_frames += 1;
                continue;
            }
            Message::Binary(bytes) => {
                if bytes.len() % 2 != 0 {
                    log.lock().problems.push(format!("a binary frame of {} bytes splits a PCM16 sample", bytes.len()));
                }
                pending.extend(bytes.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])));
                total_seconds += (bytes.len() / 2) as f64 / f64::from(RATE);
                DeepgramEvent::Audio(bytes.len())
            }
            Message::Text(text) => {
                let kind = serde_json::from_str::<Value>(text.as_str()).ok().and_then(|value| value["type"].as_str().map(str::to_owned));
                match kind.as_deref() {
                    Some("KeepAlive") => DeepgramEvent::KeepAlive,
                    Some("Finalize") => DeepgramEvent::Finalize,
                    Some("CloseStream") => DeepgramEvent::CloseStream,
                    _ => {
                        log.lock().problems.push(format!("unknown text message {text:?}"));
                        continue;
                    }
                }
            }
            Message::Close(_) => break,
            _ => continue,
        };
        log.lock().events.push((connection, event.clone()));

        match event {
            DeepgramEvent::Finalize => {
                let results = deepgram_finalize(&engines, &mut pending, &mut pending_start, true, &log).await;
                if socket.send(Message::text(results)).await.is_err() {
                    return;
                }
            }
            DeepgramEvent::CloseStream => {
                // The last words, then Metadata, then the close.
                if !pending.is_empty() {
                    let results = deepgram_finalize(&engines, &mut pending, &mut pending_start, false, &log).await;
                    let _ = socket.send(Message::text(results)).await;
                }
                let metadata = json!({"type": "Metadata", "request_id": "e2e", "duration": total_seconds, "channels": 1});
                let _ = socket.send(Message::text(metadata.to_string())).await;
                let _ = socket.close(None).await;
                return;
            }
            DeepgramEvent::Audio(_) | DeepgramEvent::KeepAlive => {}
        }
    }
}

// ---------------------------------------------------------------------------
// LLMs: Ollama and Anthropic
// ---------------------------------------------------------------------------

/// One chat request and the reply the server streamed.
#[derive(Debug, Clone)]
pub struct ChatExchange {
    pub headers: http::HeaderMap,
    pub body: Value,
    /// The content of the last user message.
    pub transcript: String,
    /// The transcript's first words, normalized, as the reply quotes them.
    pub quote: String,
    pub reply: String,
    /// The token counts the server reported.
    pub tokens_in: u64,
    pub tokens_out: u64,
}

/// What an LLM server saw.
#[derive(Debug, Default)]
pub struct ChatLog {
    pub exchanges: Vec<ChatExchange>,
    pub problems: Vec<String>,
}

/// Reads the request's messages and builds the reply: a sentence that
/// quotes the first words of the last user message, in word pieces.
fn chat_exchange(request: &SeenRequest) -> Result<(ChatExchange, Vec<String>), String> {
    let body: Value = serde_json::from_slice(&request.body).map_err(|error| format!("the body is not JSON: {error}"))?;
    let messages = body["messages"].as_array().ok_or("the body has no `messages` array")?;
    let last = messages.last().ok_or("`messages` is empty")?;
    if last["role"] != "user" {
        return Err(format!("the last message is not the user's: {last}"));
    }
    let transcript = last["content"].as_str().ok_or("the user message has no text content")?.to_owned();

    let words = mentis::stages::wer::normalize(&transcript);
    let quote = words.iter().take(QUOTED_WORDS).cloned().collect::<Vec<_>>().join(" ");
    let reply = format!("You said: {quote}. I heard every word.");
    let pieces: Vec<String> = reply
        .split_inclusive(' ')
        .map(str::to_owned)
        .collect();

    // The token counts are word counts of every message and the system prompt.
    let system_words = body["system"].as_str().map_or(0, |system| system.split_whitespace().count());
    let message_words: usize = messages.iter().filter_map(|message| message["content"].as_str()).map(|text| text.split_whitespace().count()).sum();
    let exchange = ChatExchange {
        headers: request.headers.clone(),
        body,
        transcript,
        quote,
        reply,
        tokens_in: (system_words + message_words) as u64,
        tokens_out: pieces.len() as u64,
    };
    Ok((exchange, pieces))
}

/// Starts a plain-HTTP Ollama server.
pub async fn ollama_server() -> (TestServer, Arc<Mutex<ChatLog>>) {
    let log = Arc::new(Mutex::new(ChatLog::default()));
    let shared = Arc::clone(&log);
    let server = TestServer::http(None, move |request| {
        let log = Arc::clone(&shared);
        async move { ollama_chat(&request, &log) }
    })
    .await;
    (server, log)
}

fn ollama_chat(request: &SeenRequest, log: &Mutex<ChatLog>) -> http::Response<Body> {
    let fail = |status, problem| reject(&mut log.lock().problems, status, problem);
    if (request.method.as_str(), request.path_and_query.as_str()) != ("POST", "/api/chat") {
        return fail(404, format!("unexpected request {} {}", request.method, request.path_and_query));
    }
    let (exchange, pieces) = match chat_exchange(request) {
        Ok(built) => built,
        Err(problem) => return fail(400, problem),
    };
    if exchange.body["stream"] == false {
        return fail(400, "the request turned streaming off".to_owned());
    }

    let model = exchange.body["model"].clone();
    let created_at = "2025-01-01T00:00:00Z";
    let mut lines: Vec<Bytes> = pieces
        .iter()
        .map(|piece| {
            let line = json!({"model": model, "created_at": created_at, "message": {"role": "assistant", "content": piece}, "done": false});
            Bytes::from(format!("{line}\n"))
        })
        .collect();
    let done = json!({
        "model": model, "created_at": created_at,
        "message": {"role": "assistant", "content": ""},
        "done": true, "done_reason": "stop",
        "prompt_eval_count": exchange.tokens_in, "eval_count": exchange.tokens_out
    });
    lines.push(Bytes::from(format!("{done}\n")));
    log.lock().exchanges.push(exchange);
    streamed_response("application/x-ndjson", lines)
}

/// Starts an Anthropic Messages server over TLS.
pub async fn anthropic_server(tls: Arc<TestTls>) -> (TestServer, Arc<Mutex<ChatLog>>) {
    let log = Arc::new(Mutex::new(ChatLog::default()));
    let shared = Arc::clone(&log);
    let server = TestServer::http(Some(tls), move |request| {
        let log = Arc::clone(&shared);
        async move { anthropic_messages(&request, &log) }
    })
    .await;
    (server, log)
}

fn sse_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn anthropic_messages(request: &SeenRequest, log: &Mutex<ChatLog>) -> http::Response<Body> {
    let fail = |status, problem: String| {
        log.lock().problems.push(problem.clone());
        json_response(status, &json!({"type": "error", "error": {"type": "invalid_request_error", "message": problem}}))
    };
    if (request.method.as_str(), request.path_and_query.as_str()) != ("POST", "/v1/messages") {
        return fail(404, format!("unexpected request {} {}", request.method, request.path_and_query));
    }
    let (exchange, pieces) = match chat_exchange(request) {
        Ok(built) => built,
        Err(problem) => return fail(400, problem),
    };
    if exchange.body["stream"] != true {
        return fail(400, "the request did not ask for a stream".to_owned());
    }

    let model = exchange.body["model"].clone();
    let mut events = vec![
        sse_event("message_start", &json!({"type": "message_start", "message": {
            "id": "msg_e2e", "type": "message", "role": "assistant", "content": [], "model": model,
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": exchange.tokens_in, "output_tokens": 1}}})),
        sse_event("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        sse_event("ping", &json!({"type": "ping"})),
    ];
    events.extend(pieces.iter().map(|piece| {
        sse_event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}))
    }));
    events.push(sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    events.push(sse_event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": exchange.tokens_out}}),
    ));
    events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    log.lock().exchanges.push(exchange);
    streamed_response("text/event-stream", events)
}

// ---------------------------------------------------------------------------
// Speech: OpenAI-compatible and ElevenLabs
// ---------------------------------------------------------------------------

/// What a speech server saw and spoke.
#[derive(Debug, Default)]
pub struct SpeechLog {
    /// The request bodies (OpenAI-compatible) or client messages (ElevenLabs).
    pub messages: Vec<Value>,
    /// The path and query of each request or handshake.
    pub paths: Vec<String>,
    /// The headers of each request or handshake.
    pub headers: Vec<http::HeaderMap>,
    /// The texts spoken, in order.
    pub spoken: Vec<String>,
    /// Samples synthesized and sent, over all texts.
    pub samples: usize,
    /// Connections that got `isFinal` before the close (ElevenLabs).
    pub finals_sent: usize,
    pub problems: Vec<String>,
}

/// Starts a plain-HTTP OpenAI-compatible speech server that speaks with flite.
pub async fn speech_server(engines: Engines) -> (TestServer, Arc<Mutex<SpeechLog>>) {
    let log = Arc::new(Mutex::new(SpeechLog::default()));
    let shared = Arc::clone(&log);
    let server = TestServer::http(None, move |request| {
        let (log, engines) = (Arc::clone(&shared), engines.clone());
        async move { create_speech(request, &engines, &log).await }
    })
    .await;
    (server, log)
}

async fn create_speech(request: SeenRequest, engines: &Engines, log: &Mutex<SpeechLog>) -> http::Response<Body> {
    {
        let mut log = log.lock();
        log.paths.push(request.path_and_query.clone());
        log.headers.push(request.headers.clone());
    }
    let fail = |status, problem| reject(&mut log.lock().problems, status, problem);
    if (request.method.as_str(), request.path_and_query.as_str()) != ("POST", "/v1/audio/speech") {
        return fail(404, format!("unexpected request {} {}", request.method, request.path_and_query));
    }
    let body: Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(error) => return fail(400, format!("the body is not JSON: {error}")),
    };
    log.lock().messages.push(body.clone());
    if body["response_format"] != "pcm" {
        return fail(400, format!("response_format is {}, not \"pcm\"", body["response_format"]));
    }
    let Some(text) = body["input"].as_str().filter(|text| !text.trim().is_empty()) else {
        return fail(400, format!("the input is missing or blank: {}", body["input"]));
    };

    let samples = match engines.speak(text.to_owned()).await {
        Ok(samples) => samples,
        Err(error) => return fail(500, format!("flite failed: {error}")),
    };
    {
        let mut log = log.lock();
        log.spoken.push(text.to_owned());
        log.samples += samples.len();
    }
    let pieces = pcm_bytes(&samples).chunks(SPEECH_PIECE_BYTES).map(Bytes::copy_from_slice).collect();
    streamed_response("audio/pcm", pieces)
}

/// Starts an ElevenLabs stream-input server over TLS that speaks with flite.
pub async fn elevenlabs_server(engines: Engines, tls: Arc<TestTls>) -> (TestServer, Arc<Mutex<SpeechLog>>) {
    let log = Arc::new(Mutex::new(SpeechLog::default()));
    let shared = Arc::clone(&log);
    let server = TestServer::websocket(Some(tls), move |socket, request| {
        serve_elevenlabs(socket, request, engines.clone(), Arc::clone(&shared))
    })
    .await;
    (server, log)
}

async fn serve_elevenlabs(mut socket: WebSocketStream<Box<dyn Io>>, request: SeenRequest, engines: Engines, log: Arc<Mutex<SpeechLog>>) {
    {
        let mut log = log.lock();
        log.paths.push(request.path_and_query.clone());
        log.headers.push(request.headers.clone());
    }
    while let Some(Ok(message)) = socket.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return,
            _ => continue,
        };
        let value: Value = match serde_json::from_str(text.as_str()) {
            Ok(value) => value,
            Err(error) => {
                log.lock().problems.push(format!("a client message is not JSON ({error}): {text:?}"));
                continue;
            }
        };
        log.lock().messages.push(value.clone());
        let Some(text) = value["text"].as_str() else {
            log.lock().problems.push(format!("a client message has no text: {value}"));
            continue;
        };

        // The empty text ends the input: the final marker, then the close.
        if text.is_empty() {
            let _ = socket.send(Message::text(json!({"isFinal": true}).to_string())).await;
            log.lock().finals_sent += 1;
            let _ = socket.close(None).await;
            return;
        }
        // The opening message and keep-alives are a single space, with nothing to synthesize.
        if text.trim().is_empty() {
            continue;
        }

        let samples = match engines.speak(text.to_owned()).await {
            Ok(samples) => samples,
            Err(error) => {
                log.lock().problems.push(format!("flite failed: {error}"));
                continue;
            }
        };
        {
            let mut log = log.lock();
            log.spoken.push(text.to_owned());
            log.samples += samples.len();
        }
        for piece in pcm_bytes(&samples).chunks(ELEVENLABS_PIECE_BYTES) {
            let audio = base64::engine::general_purpose::STANDARD.encode(piece);
            let message = json!({"audio": audio, "isFinal": null, "normalizedAlignment": null, "alignment": null});
            if socket.send(Message::text(message.to_string())).await.is_err() {
                return;
            }
        }
    }
}
