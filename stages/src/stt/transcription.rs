//! Speech to text through a self-hosted OpenAI-compatible transcription
//! endpoint (`POST {base}/audio/transcriptions`), such as whisper.cpp's
//! `whisper-server` (started with `--inference-path /v1/audio/transcriptions`)
//! or a faster-whisper server.
//!
//! The stage buffers the audio of each speech segment. When the segment
//! ends, it posts the audio as a WAV file in a `multipart/form-data` request
//! (RFC 7578) with the fields of OpenAI's "Create transcription" call: `file`,
//! `model`, `response_format=json`, and the optional `language` and `prompt`.
//! The response is the JSON object `{"text": "..."}`, and other fields are
//! ignored. The field names come from the `TranscriptionCreateParams` and
//! `Transcription` types of OpenAI's Node SDK
//! (`src/resources/audio/transcriptions.ts`) and from the `file` and
//! `response_format` fields in whisper.cpp's `examples/server/README.md`.
//!
//! Turns, interruption and output follow [`crate::stt::Stt`]: one final
//! transcript per segment and no partials, emitted before the segment's
//! `SpeechStopped` (or `EndOfTurn`) is forwarded. A result that is empty or
//! only tags such as `[BLANK_AUDIO]` gives no transcript.
//!
//! # Failures
//!
//! The request is idempotent and nothing is emitted before its response, so a
//! retryable failure (connection errors, timeouts, 408, 429, 5xx) is retried
//! with the endpoint's retry policy, honouring `Retry-After`. A failure that
//! is not retryable, retries that run out, or a response that is not the JSON
//! object above ([`NetError::Protocol`]) end the stage with that error, so that
//! a fallback wrapper can switch to another backend.

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use mentis_pipeline::egress::BackendUsage;
use mentis_pipeline::frame::Payload;
use mentis_pipeline::stage::StageSpec;
use mentis_pipeline::{
    AudioFormat, Control, Frame, FrameMeta, PortFormat, SampleFormat, Stage, StageError, StageFuture, StageIo,
    StageName, TranscriptKind,
};
use serde::Deserialize;
use url::Url;

use super::network::{
    Backlog, Raced, Turns, append_pcm16, checked_audio, emit_transcript, pcm16_duration, race, speech_text,
};
use super::{NonSpeechFilter, SAMPLE_RATE, SttError};
use crate::net::http::{Request, mask_secrets, send};
use crate::net::retry::delay_after;
use crate::net::{Connector, Endpoint, NetError};
use crate::wav::WavWriter;

/// The backend name in usage records and errors.
pub const BACKEND: &str = "openai-stt";

/// The default limit of audio buffered for one segment: 10 minutes, about
/// 19 MB of 16-bit PCM. OpenAI's own endpoint takes files up to 25 MB.
pub const DEFAULT_MAX_SEGMENT: Duration = Duration::from_secs(600);

/// The maximum response body read, in bytes. A JSON transcript of 10 minutes
/// of speech is under 20 kB, and the rest is room for servers that add segments.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Characters of a malformed response shown in the error.
const EXCERPT_CHARS: usize = 120;

/// Settings of a [`TranscriptionStt`].
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptionConfig {
    /// The `model` field, such as `"whisper-1"`. whisper.cpp's server
    /// ignores it, and faster-whisper servers select the model by it.
    pub model: String,
    /// The `language` field, an ISO-639-1 code such as `"en"`. The server
    /// detects the language when `None`.
    pub language: Option<String>,
    /// The `prompt` field: text that guides spelling and style.
    pub prompt: Option<String>,
    /// The sample format the stage declares on its input port. Frames of
    /// the other sample format are accepted too and converted.
    pub sample_format: SampleFormat,
    /// The maximum audio buffered for one segment. Audio of the segment beyond
    /// it is dropped with a warning, and the buffered part is transcribed
    /// when the segment ends.
    pub max_segment: Duration,
    /// The rules that drop non-speech results.
    pub filter: NonSpeechFilter,
}

impl Default for TranscriptionConfig {
    fn default() -> Self {
        TranscriptionConfig {
            model: "whisper-1".to_owned(),
            language: None,
            prompt: None,
            sample_format: SampleFormat::F32,
            max_segment: DEFAULT_MAX_SEGMENT,
            filter: NonSpeechFilter::default(),
        }
    }
}

/// The transcription stage, described in the [module docs](self).
#[derive(Debug)]
pub struct TranscriptionStt {
    name: StageName,
    endpoint: Endpoint,
    config: TranscriptionConfig,
    url: Url,
}

impl TranscriptionStt {
    /// Builds the stage. `endpoint` is the server's base URL, such as
    /// `http://127.0.0.1:8080/v1`. Requests go to `{base}/audio/transcriptions`,
    /// with `Authorization: Bearer KEY` when the endpoint has an API key.
    ///
    /// # Errors
    ///
    /// [`SttError::InvalidSetting`] for an empty model or language, or a
    /// zero `max_segment`.
    pub fn new(name: StageName, endpoint: Endpoint, config: TranscriptionConfig) -> Result<Self, SttError> {
        if config.model.trim().is_empty() {
            return Err(SttError::InvalidSetting {
                engine: BACKEND,
                name: "model",
                value: format!("{:?}", config.model),
                reason: "the model name must not be empty; whisper.cpp ignores it, so any name such as \"whisper-1\" works",
            });
        }
        if let Some(language) = &config.language
            && language.trim().is_empty()
        {
            return Err(SttError::InvalidSetting {
                engine: BACKEND,
                name: "language",
                value: format!("{language:?}"),
                reason: "set an ISO-639-1 code such as \"en\", or leave it unset to let the server detect the language",
            });
        }
        if config.max_segment.is_zero() {
            return Err(SttError::InvalidSetting {
                engine: BACKEND,
                name: "max_segment",
                value: "0 s".to_owned(),
                reason: "the segment limit must be above zero",
            });
        }
        let url = endpoint.join("audio/transcriptions").map_err(|_| SttError::InvalidSetting {
            engine: BACKEND,
            name: "endpoint",
            value: mentis_pipeline::privacy::redact_url(endpoint.url()),
            reason: "the URL cannot take the path audio/transcriptions; give the server's base URL, such as http://127.0.0.1:8080/v1",
        })?;
        Ok(TranscriptionStt { name, endpoint, config, url })
    }

    /// Returns the settings.
    pub fn config(&self) -> &TranscriptionConfig {
        &self.config
    }

    /// Returns the URL requests go to.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Returns the limit of buffered audio in bytes of 16-bit PCM.
    fn max_segment_bytes(&self) -> usize {
        let samples = self.config.max_segment.as_secs_f64() * f64::from(SAMPLE_RATE);
        (samples as usize).saturating_mul(2)
    }
}

/// The state that one run of the stage keeps between frames.
#[derive(Debug, Default)]
struct State {
    turns: Turns,
    /// The open segment's audio as 16-bit little-endian PCM.
    pcm: Vec<u8>,
    /// Whether the open segment reached the size limit, which is logged once.
    truncated: bool,
    /// Audio frames not transcribed: outside segments, of a finished or
    /// older turn, or beyond the segment limit.
    ignored_audio_frames: u64,
    backlog: Backlog,
}

impl State {
    /// Discards the open segment without transcribing it.
    fn discard(&mut self) {
        if let Some(segment) = self.turns.close() {
            tracing::debug!(turn = %segment.turn, "segment discarded before transcription");
        }
        self.pcm.clear();
        self.truncated = false;
    }
}

impl Stage for TranscriptionStt {
    fn spec(&self) -> StageSpec {
        let input = AudioFormat { sample_rate: SAMPLE_RATE, channels: 1, sample_format: self.config.sample_format };
        StageSpec::new(self.name.clone(), PortFormat::Audio(input), PortFormat::Transcript)
            .with_egress(self.endpoint.egress())
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(self.run_stage(io))
    }
}

impl TranscriptionStt {
    async fn run_stage(&mut self, io: &mut StageIo) -> Result<(), StageError> {
        let mut state = State::default();
        loop {
            let (frame, forwarded) = match state.backlog.pop() {
                Some(entry) => entry,
                None if state.backlog.ended => break,
                None => match io.inbox.recv().await {
                    Some(frame) => (frame, false),
                    None => break,
                },
            };
            self.handle_frame(io, &mut state, frame, forwarded).await?;
        }
        if io.is_cancelled() {
            return Ok(());
        }

        // An input that ends mid-segment still gets its last words.
        self.finish_segment(io, &mut state).await?;
        if state.ignored_audio_frames > 0 {
            tracing::debug!(stage = %self.name, frames = state.ignored_audio_frames, "audio frames outside segments were ignored");
        }
        Ok(())
    }

    async fn handle_frame(
        &mut self,
        io: &mut StageIo,
        state: &mut State,
        frame: Frame,
        forwarded: bool,
    ) -> Result<(), StageError> {
        let Payload::Control(control) = &frame.payload else {
            return Ok(self.handle_audio(state, &frame)?);
        };
        self.handle_control(io, state, control, frame.meta).await?;
        if !forwarded {
            io.outbox.send(frame).await?;
        }
        Ok(())
    }

    fn handle_audio(&self, state: &mut State, frame: &Frame) -> Result<(), SttError> {
        let audio = checked_audio(frame)?;
        let turn = frame.meta.turn;

        // Audio outside segments, or late audio of a finished or older turn, is not transcribed.
        if state.turns.is_stale(turn) {
            state.ignored_audio_frames += 1;
            return Ok(());
        }
        if state.turns.open_segment(turn, frame.meta.timestamp).is_some() {
            tracing::debug!(stage = %self.name, %turn, "new turn before the end of the open segment, so its audio is discarded");
            state.pcm.clear();
            state.truncated = false;
        }
        if audio.frames() == 0 {
            return Ok(());
        }

        if state.pcm.len() + audio.samples().len() * 2 > self.max_segment_bytes() {
            if !state.truncated {
                tracing::warn!(
                    stage = %self.name,
                    %turn,
                    limit_s = self.config.max_segment.as_secs_f64(),
                    "the segment is longer than the limit, so the audio beyond it is dropped"
                );
                state.truncated = true;
            }
            state.ignored_audio_frames += 1;
            return Ok(());
        }
        append_pcm16(audio, &mut state.pcm);
        state.turns.extend(frame.meta.timestamp.add(audio.duration()));
        Ok(())
    }

    async fn handle_control(
        &mut self,
        io: &mut StageIo,
        state: &mut State,
        control: &Control,
        meta: FrameMeta,
    ) -> Result<(), StageError> {
        let open_turn = state.turns.open().map(|open| open.turn);
        match control {
            Control::SpeechStarted => {
                if !state.turns.is_stale(meta.turn) && state.turns.open_segment(meta.turn, meta.timestamp).is_some() {
                    state.pcm.clear();
                    state.truncated = false;
                }
            }
            Control::SpeechStopped | Control::EndOfTurn => {
                if open_turn == Some(meta.turn) {
                    self.finish_segment(io, state).await?;
                }
            }
            Control::Interrupt => {
                if open_turn.is_some_and(|turn| turn <= meta.turn) {
                    state.discard();
                }
            }
            Control::Flush => state.discard(),
            Control::EndOfStream | Control::Error(_) => {}
        }
        Ok(())
    }

    /// Transcribes the open segment and emits its final transcript, unless
    /// its turn was interrupted or the result is not speech.
    async fn finish_segment(&mut self, io: &mut StageIo, state: &mut State) -> Result<(), StageError> {
        let Some(segment) = state.turns.close() else {
            return Ok(());
        };
        let pcm = std::mem::take(&mut state.pcm);
        state.truncated = false;
        let watch = io.inbox.interrupt_watch();
        if pcm.is_empty() || watch.should_stop(segment.turn) {
            return Ok(());
        }

        let audio_length = pcm16_duration(pcm.len());
        let body = self.multipart_body(&wav_file(&pcm)?);
        let Some(text) = self.transcribe(io, state, segment.turn, body, audio_length).await? else {
            tracing::debug!(stage = %self.name, turn = %segment.turn, "turn interrupted during the request, so its result was dropped");
            return Ok(());
        };

        // The person may have interrupted while the last bytes arrived.
        if watch.should_stop(segment.turn) {
            return Ok(());
        }
        let Some(text) = speech_text(&self.config.filter, &text, None) else {
            tracing::debug!(stage = %self.name, turn = %segment.turn, text, "result dropped as non-speech");
            return Ok(());
        };
        tracing::debug!(stage = %self.name, turn = %segment.turn, chars = text.len(), "final transcript");
        emit_transcript(io, segment, TranscriptKind::Final, text, None).await
    }

    /// Posts `body` until it succeeds, retrying what may succeed later.
    /// Returns `None` when an interrupt cancelled the turn.
    async fn transcribe(
        &self,
        io: &mut StageIo,
        state: &mut State,
        turn: mentis_pipeline::TurnId,
        body: Bytes,
        audio_length: Duration,
    ) -> Result<Option<String>, StageError> {
        let usage = io.usage.backend(&io.name, BACKEND);
        let connector = self.endpoint.connector(io);
        let policy = *self.endpoint.retry();
        let mut attempt = 0;
        loop {
            let request = self.request(body.clone())?;
            usage.request();
            // Each attempt sends, and is billed for, the whole segment.
            usage.audio(audio_length);
            let work = post(&connector, request, &usage, &self.endpoint);
            let error = match race(io, &mut state.backlog, turn, work).await? {
                Raced::Cancelled => return Ok(None),
                Raced::Done(Ok(text)) => return Ok(Some(text)),
                Raced::Done(Err(error)) => error,
            };
            usage.failure();
            if !error.is_retryable() || attempt >= policy.max_retries {
                tracing::warn!(stage = %self.name, %turn, %error, attempts = attempt + 1, "transcription request failed");
                return Err(error.into());
            }

            attempt += 1;
            let delay = delay_after(&policy, attempt, &error);
            tracing::info!(stage = %self.name, %turn, %error, attempt, delay_ms = delay.as_millis() as u64, "retrying the transcription request");
            if let Raced::Cancelled = race(io, &mut state.backlog, turn, tokio::time::sleep(delay)).await? {
                return Ok(None);
            }
        }
    }

    fn request(&self, body: Bytes) -> Result<Request, NetError> {
        let content_type = format!("multipart/form-data; boundary={}", boundary_of(&body));
        let mut request = Request::post(self.url.clone(), &content_type, body)?;
        request.header(http::header::ACCEPT, "application/json")?;
        if let Some(key) = self.endpoint.api_key() {
            request.secret_header(http::header::AUTHORIZATION, "Bearer ", key)?;
        }
        Ok(request)
    }

    /// Builds the form: the WAV file, then `model`, `response_format`, and
    /// `language` and `prompt` when set.
    fn multipart_body(&self, wav: &[u8]) -> Bytes {
        // 128 random bits make the chance that the audio contains the boundary negligible.
        let boundary = format!("{BOUNDARY_PREFIX}{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut body = Vec::with_capacity(wav.len() + 1024);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"segment.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(wav);
        body.extend_from_slice(b"\r\n");
        let mut field = |name: &str, value: &str| {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
            );
        };
        field("model", &self.config.model);
        field("response_format", "json");
        if let Some(language) = &self.config.language {
            field("language", language);
        }
        if let Some(prompt) = &self.config.prompt {
            field("prompt", prompt);
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Bytes::from(body)
    }
}

/// The start of every boundary this stage writes.
const BOUNDARY_PREFIX: &str = "mentis-form-";

/// Returns the boundary of a body built by `multipart_body`: its first line
/// without the leading dashes.
fn boundary_of(body: &[u8]) -> String {
    let line_end = body.iter().position(|&byte| byte == b'\r').unwrap_or(body.len());
    String::from_utf8_lossy(body.get(2..line_end).unwrap_or_default()).into_owned()
}

/// Wraps mono 16-bit PCM at [`SAMPLE_RATE`] in a WAV file.
fn wav_file(pcm: &[u8]) -> Result<Vec<u8>, StageError> {
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
    let format = AudioFormat { sample_rate: SAMPLE_RATE, channels: 1, sample_format: SampleFormat::I16 };
    let out = Cursor::new(Vec::with_capacity(pcm.len() + 64));
    let wav_error = |error: crate::wav::WavError| StageError::fatal(format!("building the WAV file of a segment failed: {error}"));
    let mut writer = WavWriter::new(out, "segment.wav", format).map_err(wav_error)?;
    writer.write_i16(&samples).map_err(wav_error)?;
    Ok(writer.finish().map_err(wav_error)?.into_inner())
}

/// The response body of `response_format=json`.
#[derive(Debug, Deserialize)]
struct TranscriptionResponse {
    text: String,
}

/// Sends one request and returns the transcribed text.
async fn post(connector: &Connector, request: Request, usage: &BackendUsage, endpoint: &Endpoint) -> Result<String, NetError> {
    let response = send(connector, request).await?;
    usage.first_byte(response.first_byte());
    let endpoint_name = response.endpoint().to_owned();
    let body = response.bytes(MAX_RESPONSE_BYTES).await?;
    match serde_json::from_slice::<TranscriptionResponse>(&body) {
        Ok(response) => Ok(response.text),
        Err(error) => {
            let secrets: Vec<_> = endpoint.api_key().cloned().into_iter().collect();
            let excerpt: String = mask_secrets(&String::from_utf8_lossy(&body), &secrets).chars().take(EXCERPT_CHARS).collect();
            Err(NetError::Protocol {
                endpoint: endpoint_name,
                detail: format!(
                    "the response is not the JSON object {{\"text\": ...}} that response_format=json requests ({error}). It starts with {excerpt:?}"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Hosting;

    fn stage(config: TranscriptionConfig) -> Result<TranscriptionStt, SttError> {
        let url = Url::parse("http://127.0.0.1:8080/v1").expect("url");
        let endpoint = Endpoint::new(BACKEND, Hosting::SelfHosted, url).expect("endpoint");
        TranscriptionStt::new(StageName::new("stt").expect("name"), endpoint, config)
    }

    #[test]
    fn transcription_url_ends_audio_transcriptions() {
        let stt = stage(TranscriptionConfig::default()).expect("stage");

        assert_eq!(stt.url().as_str(), "http://127.0.0.1:8080/v1/audio/transcriptions");
    }

    #[test]
    fn transcription_invalid_settings_rejected() {
        let empty_model = TranscriptionConfig { model: " ".to_owned(), ..TranscriptionConfig::default() };
        let empty_language = TranscriptionConfig { language: Some(String::new()), ..TranscriptionConfig::default() };
        let zero_limit = TranscriptionConfig { max_segment: Duration::ZERO, ..TranscriptionConfig::default() };

        for (config, name) in [(empty_model, "model"), (empty_language, "language"), (zero_limit, "max_segment")] {
            let error = stage(config).expect_err("invalid setting");
            assert!(matches!(error, SttError::InvalidSetting { name: rejected, .. } if rejected == name), "{error}");
        }
    }

    #[test]
    fn transcription_form_has_every_field() {
        let config = TranscriptionConfig {
            language: Some("en".to_owned()),
            prompt: Some("Mentis, Deepgram".to_owned()),
            ..TranscriptionConfig::default()
        };
        let stt = stage(config).expect("stage");
        let body = stt.multipart_body(b"RIFFdata");
        let text = String::from_utf8_lossy(&body);

        let boundary = boundary_of(&body);
        assert!(boundary.starts_with(BOUNDARY_PREFIX), "{boundary}");

        for needle in [
            "name=\"file\"; filename=\"segment.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFFdata\r\n",
            "name=\"model\"\r\n\r\nwhisper-1\r\n",
            "name=\"response_format\"\r\n\r\njson\r\n",
            "name=\"language\"\r\n\r\nen\r\n",
            "name=\"prompt\"\r\n\r\nMentis, Deepgram\r\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text:?}");
        }

        assert!(text.ends_with(&format!("--{boundary}--\r\n")), "{text:?}");
    }

    #[test]
    fn transcription_wav_contains_samples() {
        let pcm: Vec<u8> = [1_i16, -2, 300].iter().flat_map(|sample| sample.to_le_bytes()).collect();
        let wav = wav_file(&pcm).expect("wav");

        assert_eq!(&wav[..4], b"RIFF", "the file starts with the RIFF header");
        assert_eq!(wav.len(), 44 + pcm.len(), "a 44-byte header precedes the samples");
        assert_eq!(&wav[44..], &pcm[..], "the samples follow the header unchanged");
    }
}
