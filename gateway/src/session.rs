//! One WebSocket session: the start message, the pipeline, audio in, events
//! and reply audio out, pings, limits, and cleanup.
//!
//! Two tasks serve a session. The reader owns the socket's receiving half:
//! it checks and converts each binary frame and feeds it to the pipeline,
//! waiting when the pipeline's lossless input edge is full (so TCP flow
//! control slows the client). The writer, the session task itself, owns the
//! sending half and the pipeline: it forwards the pipeline's output, sends
//! pings, and enforces the session's time limit. Whatever ends the session,
//! the pipeline is cancelled and waited for before the task returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use mentis_pipeline::edge::{Receiver, Sender};
use mentis_pipeline::{
    AudioData, Codec, Control, EncodedAudio, Frame, FrameMeta, MediaTime, Payload, PrivacyTier, Session, SessionError,
    SessionId, SessionReport, TranscriptKind, TurnClock, TurnId, TurnMark,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::auth::Claims;
use crate::limits::{LimitError, LimitStore, SessionLease};
use crate::metrics::GatewayMetrics;
use crate::pipelines::{IngressClock, PipelineRegistry, PipelineRequest, SessionPipeline};
use crate::protocol::{
    AudioEncoding, ClientMessage, CloseCode, EndReason, ErrorCode, InputAudio, MIN_FRAME, ProtocolError, ServerEvent,
    SessionLimits, StartMessage, close_reason, parse_client_message, PROTOCOL_VERSION,
};
use crate::recording::{AudioClip, TranscriptRecorder};
use crate::redis::{OPEN_SESSION_GRACE, SessionRegistry};
use crate::tenants::Tenant;

/// Timing settings shared by every session of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTiming {
    /// Time between two pings. A client that misses two pongs in a row is closed.
    pub ping_interval: Duration,
    /// Time the client has to send its start message.
    pub start_timeout: Duration,
    /// Maximum time one write to the socket may take before the client counts as gone.
    pub write_timeout: Duration,
    /// Maximum time the pipeline may take to stop after it is cancelled.
    pub stop_timeout: Duration,
}

impl Default for SessionTiming {
    /// Pings every 20 s, 10 s to start, 10 s per write, 1 s to stop.
    fn default() -> Self {
        SessionTiming {
            ping_interval: Duration::from_secs(20),
            start_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(1),
        }
    }
}

/// Pongs a client may miss in a row before it is closed.
pub const MAX_MISSED_PONGS: u32 = 2;

/// Client audio added to the tenant's daily count at once. Counting per
/// second instead of per frame keeps a shared counter store off the per-frame path.
pub const AUDIO_ACCOUNTING_STEP: Duration = Duration::from_secs(1);

/// Reader events queued for the writer. The reader waits when 16 are queued;
/// they are rare (pongs, stop, the end).
const READER_EVENT_CAPACITY: usize = 16;

/// Services the server shares with every session.
#[derive(Debug, Clone)]
pub struct SessionServices {
    /// Pipelines by name.
    pub pipelines: PipelineRegistry,
    /// Limit counters.
    pub limits: Arc<dyn LimitStore>,
    /// Metrics of the process.
    pub metrics: Arc<GatewayMetrics>,
    /// The recorder of consented transcripts.
    pub recorder: Arc<dyn TranscriptRecorder>,
    /// Timing settings.
    pub timing: SessionTiming,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Where sessions are registered with this instance's id, when several
    /// gateway processes share the load.
    pub registry: Option<SessionRegistration>,
}

/// A session registry and the id under which this process registers its sessions.
#[derive(Debug, Clone)]
pub struct SessionRegistration {
    /// The registry.
    pub registry: Arc<dyn SessionRegistry>,
    /// This gateway instance's id, such as the pod name.
    pub instance: String,
}

/// Size at which a buffered clip of client audio is handed to the recorder,
/// in bytes: 256 KiB is 8 s of 16 kHz mono PCM16. It bounds the memory that
/// audio recording adds to a session.
pub const AUDIO_CLIP_BYTES: usize = 256 * 1024;

/// One authenticated session, ready to run on an upgraded socket.
#[derive(Debug)]
pub struct SessionContext {
    /// The tenant.
    pub tenant: Tenant,
    /// The claims of the token the client presented.
    pub claims: Claims,
    /// The session id as clients and logs see it.
    pub id: String,
    /// The numeric id stamped on frames.
    pub numeric_id: SessionId,
    /// The session's place in the tenant's concurrent-session count.
    pub lease: SessionLease,
}

/// Creates a new random session id, as text and as the numeric frame id.
pub fn new_session_id() -> (String, SessionId) {
    let value = fastrand::u64(..);
    (format!("{value:016x}"), SessionId(value))
}

/// The end of a session, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOutcome {
    /// The close code sent, or `None` when the client vanished or closed first.
    pub close: Option<u16>,
    /// A short label for logs and metrics.
    pub label: &'static str,
    /// Whether every pipeline task stopped within the stop timeout.
    pub stopped_cleanly: bool,
}

type WsSink<S> = SplitSink<WebSocketStream<S>, Message>;

/// Runs a session on an upgraded socket until it ends, and cleans up.
pub async fn run_session<S>(ws: WebSocketStream<S>, context: SessionContext, services: SessionServices) -> SessionOutcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tenant = context.tenant.id().to_owned();
    let span = tracing::info_span!("gateway_session", session = %context.id, tenant = %tenant, user = %context.claims.user);
    let _entered = span.enter();
    services.metrics.session_started(&tenant);
    tracing::info!("session opened");
    let registered = register(&context, &services).await;

    let mut recorded = false;
    let outcome = drive(ws, &context, &services, &mut recorded).await;

    services.metrics.session_ended(&tenant);
    if recorded {
        services.recorder.session_ended(&context).await;
    }
    if registered {
        unregister(&context, &services).await;
    }
    context.lease.release().await;
    tracing::info!(close = ?outcome.close, reason = outcome.label, stopped_cleanly = outcome.stopped_cleanly, "session closed");
    outcome
}

/// Records in the session registry, if there is one, that this instance
/// serves the session. Returns whether the entry was written.
async fn register(context: &SessionContext, services: &SessionServices) -> bool {
    let Some(registration) = &services.registry else {
        return false;
    };
    // The entry outlives the longest session, so it needs no refresh; a
    // crashed instance's entries expire on their own.
    let ttl = context.tenant.limits.max_session().saturating_add(OPEN_SESSION_GRACE);
    match registration.registry.register(&context.id, &registration.instance, ttl).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(instance = %registration.instance, "the session id is already registered by another entry");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "cannot register the session; it runs unregistered");
            false
        }
    }
}

/// Removes the session's registry entry.
async fn unregister(context: &SessionContext, services: &SessionServices) {
    let Some(registration) = &services.registry else {
        return;
    };
    if let Err(error) = registration.registry.unregister(&context.id, &registration.instance).await {
        tracing::warn!(%error, "cannot unregister the session; its entry expires after the longest session");
    }
}

async fn drive<S>(mut ws: WebSocketStream<S>, context: &SessionContext, services: &SessionServices, recorded: &mut bool) -> SessionOutcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The start message, within the start timeout.
    let start = match receive_start(&mut ws, context.tenant.limits.max_message_bytes, services).await {
        Ok(start) => start,
        Err(ending) => return finish_early(&mut ws, ending, services).await,
    };

    // The pipeline and tier must be allowed by the server, the token and the tenant.
    let factory = match authorize(&start, context, services) {
        Ok(factory) => factory,
        Err(ending) => return finish_early(&mut ws, ending, services).await,
    };

    // Building may load models, so it runs on a blocking thread.
    let ingress = IngressClock::default();
    let request = PipelineRequest {
        session: context.numeric_id,
        input: start.audio,
        output: start.output,
        tier: start.tier,
        ingress: ingress.clone(),
        metrics: Arc::clone(&services.metrics),
    };
    let built = tokio::task::spawn_blocking(move || factory.build(&request)).await;
    let SessionPipeline { pipeline, input, output } = match built {
        Ok(Ok(pipeline)) => pipeline,
        Ok(Err(error @ crate::pipelines::PipelineBuildError::Busy { .. })) => {
            tracing::warn!(%error, "the pipeline is at its session limit");
            let ending = Ending::error(CloseCode::TryAgainLater, ErrorCode::LimitExceeded, error.to_string(), "pipeline_busy");
            return finish_early(&mut ws, ending, services).await;
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "cannot build the pipeline");
            let ending = Ending::error(CloseCode::InternalError, ErrorCode::Internal, format!("cannot build the pipeline: {error}"), "pipeline_build_failed");
            return finish_early(&mut ws, ending, services).await;
        }
        Err(join_error) => {
            tracing::error!(%join_error, "building the pipeline panicked");
            let ending = Ending::error(CloseCode::InternalError, ErrorCode::Internal, "building the pipeline failed".to_owned(), "pipeline_build_failed");
            return finish_early(&mut ws, ending, services).await;
        }
    };
    let tier = pipeline.tier();

    // The session's record exists before any transcript of it is stored.
    *recorded = services.recorder.session_started(context, tier).await;
    let session = pipeline.start(context.numeric_id);

    let limits = SessionLimits {
        max_message_bytes: context.tenant.limits.max_message_bytes,
        max_frame_ms: context.tenant.limits.max_frame_ms,
        max_session_seconds: context.tenant.limits.max_session_seconds,
    };
    let ready = ServerEvent::Ready {
        session_id: context.id.clone(),
        protocol_version: PROTOCOL_VERSION,
        pipeline: start.pipeline.clone(),
        tier,
        output: start.output,
        limits,
    };
    if send_text(&mut ws, &ready, services.timing.write_timeout).await.is_err() {
        let stopped = stop_pipeline(session, services.timing.stop_timeout).await;
        services.metrics.session_error("client_vanished");
        return SessionOutcome { close: None, label: "client_vanished", stopped_cleanly: stopped };
    }
    tracing::info!(pipeline = %start.pipeline, %tier, encoding = ?start.audio.encoding, rate = start.audio.sample_rate, "session started");

    // From here on the socket is split between the reader task and this task.
    let (sink, receive) = ws.split();
    let (events_tx, events_rx) = mpsc::channel(READER_EVENT_CAPACITY);
    let reader = Reader {
        input: Some(input),
        format: start.audio,
        session: context.numeric_id,
        max_frame: Duration::from_millis(context.tenant.limits.max_frame_ms),
        media: MediaTime::ZERO,
        seq: 0,
        ingress,
        events: events_tx,
        tenant: context.tenant.clone(),
        limits: Arc::clone(&services.limits),
        metrics: Arc::clone(&services.metrics),
        unaccounted: Duration::ZERO,
        frames: 0,
        audio: Duration::ZERO,
        clip: clip_buffer(&start, context, services, *recorded),
    };
    let reader_task = tokio::spawn(reader.run(receive));

    let pipeline = RunningPipeline::watch(session);
    let mut writer = Writer {
        sink,
        pipeline,
        output,
        events: events_rx,
        context,
        services,
        consent_transcripts: start.consent.store_transcripts && *recorded,
        interrupted: TurnId::NONE,
        announced_start: TurnId::NONE,
        announced_end: TurnId::NONE,
        audio_turn: TurnId::NONE,
        turns: 0,
        frames_received: 0,
        audio_received: Duration::ZERO,
        stopping: false,
    };
    let outcome = writer.run().await;
    reader_task.abort();
    outcome
}

/// Returns the buffer of client audio to record, when the start message
/// asked for audio to be stored and the recorder stores audio.
fn clip_buffer(start: &StartMessage, context: &SessionContext, services: &SessionServices, recorded: bool) -> Option<ClipBuffer> {
    if !(start.consent.store_audio && recorded && services.recorder.stores_audio()) {
        return None;
    }
    if start.audio.encoding != AudioEncoding::Pcm16 {
        // NOTE: Opus packets are not stored: concatenated packets without
        // their lengths cannot be decoded, and the store has no packet framing.
        tracing::info!("audio storage was requested, but only PCM16 input is stored; this session's Opus audio is not");
        return None;
    }
    Some(ClipBuffer {
        recorder: Arc::clone(&services.recorder),
        tenant: context.tenant.id().to_owned(),
        session: context.id.clone(),
        format: format!("pcm16/{}/{}", start.audio.sample_rate, start.audio.channels),
        data: Vec::new(),
    })
}

/// Client audio collected for the recorder, handed over in clips of at most
/// [`AUDIO_CLIP_BYTES`] and, for the rest, when the buffer is dropped.
struct ClipBuffer {
    recorder: Arc<dyn TranscriptRecorder>,
    tenant: String,
    session: String,
    format: String,
    data: Vec<u8>,
}

impl ClipBuffer {
    fn push(&mut self, frame: &[u8]) {
        if self.data.len() + frame.len() > AUDIO_CLIP_BYTES {
            self.flush();
        }
        self.data.extend_from_slice(frame);
    }

    fn flush(&mut self) {
        if self.data.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.data);
        self.recorder.audio_clip(AudioClip { tenant: self.tenant.clone(), session: self.session.clone(), format: self.format.clone(), data });
    }
}

impl Drop for ClipBuffer {
    /// Hands over the last clip. The reader task is aborted when the session
    /// ends, so dropping is the one place every ending passes through.
    fn drop(&mut self) {
        self.flush();
    }
}

/// The way a session ends: close code, reason, last event and metric label.
struct Ending {
    close: Option<CloseCode>,
    reason: String,
    event: Option<ServerEvent>,
    label: &'static str,
}

impl Ending {
    fn error(close: CloseCode, code: ErrorCode, message: String, label: &'static str) -> Self {
        let event = ServerEvent::Error { code, message: message.clone(), field: None, stage: None, fatal: true };
        Ending { close: Some(close), reason: message, event: Some(event), label }
    }

    fn invalid(error: &ProtocolError) -> Self {
        Ending {
            close: Some(CloseCode::InvalidMessage),
            reason: format!("invalid {}: {}", error.field, error.message),
            event: Some(ServerEvent::invalid(error)),
            label: "invalid_message",
        }
    }

    fn too_big(limit: usize) -> Self {
        let message = format!("a message was larger than the limit of {limit} bytes");
        let event = ServerEvent::Error { code: ErrorCode::MessageTooBig, message: message.clone(), field: None, stage: None, fatal: true };
        Ending { close: Some(CloseCode::MessageTooBig), reason: message, event: Some(event), label: "message_too_big" }
    }

    fn vanished() -> Self {
        Ending { close: None, reason: String::new(), event: None, label: "client_vanished" }
    }
}

async fn finish_early<S>(ws: &mut WebSocketStream<S>, ending: Ending, services: &SessionServices) -> SessionOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    services.metrics.session_error(ending.label);
    tracing::warn!(reason = ending.label, detail = %ending.reason, "session rejected");
    if let Some(event) = &ending.event {
        let _ = send_text(ws, event, services.timing.write_timeout).await;
    }
    if let Some(code) = ending.close {
        let frame = CloseFrame { code: code.code().into(), reason: close_reason(&ending.reason).into() };
        let _ = tokio::time::timeout(services.timing.write_timeout, ws.close(Some(frame))).await;
    }
    SessionOutcome { close: ending.close.map(CloseCode::code), label: ending.label, stopped_cleanly: true }
}

async fn send_text<S>(ws: &mut WebSocketStream<S>, event: &ServerEvent, limit: Duration) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, ws.send(Message::text(event.to_json()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Waits for the start message.
async fn receive_start<S>(ws: &mut WebSocketStream<S>, max_message_bytes: usize, services: &SessionServices) -> Result<StartMessage, Ending>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + services.timing.start_timeout;
    loop {
        let next = tokio::select! {
            biased;
            () = services.shutdown.cancelled() => {
                return Err(Ending { close: Some(CloseCode::GoingAway), reason: "the server is shutting down".to_owned(), event: None, label: "server_shutdown" });
            }
            () = tokio::time::sleep_until(deadline) => {
                let message = format!("no start message within {:?}", services.timing.start_timeout);
                return Err(Ending::error(CloseCode::StartTimeout, ErrorCode::InvalidMessage, message, "start_timeout"));
            }
            next = ws.next() => next,
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                return match parse_client_message(&text) {
                    Ok(ClientMessage::Start(start)) => match start.validate() {
                        Ok(()) => Ok(start),
                        Err(error) => Err(Ending::invalid(&error)),
                    },
                    Ok(ClientMessage::Stop) => Err(Ending::invalid(&ProtocolError::new("type", "the first message must be a start message, not stop"))),
                    Err(error) => Err(Ending::invalid(&error)),
                };
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(Ending::invalid(&ProtocolError::new("message", "binary audio arrived before the start message")));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Err(Ending { close: None, reason: String::new(), event: None, label: "client_closed" }),
            Some(Err(WsError::Capacity(_))) => return Err(Ending::too_big(max_message_bytes)),
            Some(Err(WsError::Utf8(_))) => {
                return Err(Ending { close: Some(CloseCode::InvalidPayload), reason: "a text message was not valid UTF-8".to_owned(), event: None, label: "invalid_message" });
            }
            Some(Err(_)) => return Err(Ending::vanished()),
        }
    }
}

/// Checks the requested pipeline and tier against the server, the token and the tenant.
fn authorize(
    start: &StartMessage,
    context: &SessionContext,
    services: &SessionServices,
) -> Result<Arc<dyn crate::pipelines::PipelineFactory>, Ending> {
    let forbidden = |field: &str, message: String| {
        let event = ServerEvent::Error { code: ErrorCode::Forbidden, message: message.clone(), field: Some(field.to_owned()), stage: None, fatal: true };
        Ending { close: Some(CloseCode::Forbidden), reason: message, event: Some(event), label: "forbidden" }
    };

    let Some(factory) = services.pipelines.get(&start.pipeline) else {
        let message = format!("no pipeline is named {:?}; this server has {:?}", start.pipeline, services.pipelines.names());
        let event = ServerEvent::Error { code: ErrorCode::UnknownPipeline, message: message.clone(), field: Some("pipeline".to_owned()), stage: None, fatal: true };
        return Err(Ending { close: Some(CloseCode::Forbidden), reason: message, event: Some(event), label: "unknown_pipeline" });
    };
    let allowed: PrivacyTier = context.claims.tier.min(context.tenant.max_tier);
    if start.tier > allowed {
        return Err(forbidden("tier", format!("tier {} is wider than this session may use ({allowed})", start.tier)));
    }
    if factory.tier() > start.tier {
        return Err(forbidden(
            "pipeline",
            format!("pipeline {:?} needs tier {}, wider than the requested tier {}", start.pipeline, factory.tier(), start.tier),
        ));
    }
    Ok(Arc::clone(factory))
}

/// A message from the reader task to the writer.
#[derive(Debug)]
enum ReaderEvent {
    Pong,
    Stop,
    ClientClosed,
    Vanished,
    Invalid(ProtocolError),
    TooBig,
    BadUtf8,
    Quota(String),
    Progress { frames: u64, audio: Duration },
}

/// The receiving half of a session.
struct Reader {
    /// Dropped at `stop`, which ends the pipeline's input.
    input: Option<Sender>,
    format: InputAudio,
    session: SessionId,
    max_frame: Duration,
    media: MediaTime,
    seq: u64,
    ingress: IngressClock,
    events: mpsc::Sender<ReaderEvent>,
    tenant: Tenant,
    limits: Arc<dyn LimitStore>,
    metrics: Arc<GatewayMetrics>,
    unaccounted: Duration,
    frames: u64,
    audio: Duration,
    /// Client audio to record, when the user consented to audio storage.
    clip: Option<ClipBuffer>,
}

impl Reader {
    async fn run<S>(mut self, mut receive: SplitStream<WebSocketStream<S>>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let event = match receive.next().await {
                Some(Ok(Message::Binary(data))) => match self.audio_frame(data).await {
                    Ok(()) => continue,
                    Err(event) => event,
                },
                Some(Ok(Message::Text(text))) => match parse_client_message(&text) {
                    Ok(ClientMessage::Stop) if self.input.is_some() => {
                        self.input = None;
                        if let Some(clip) = &mut self.clip {
                            clip.flush();
                        }
                        let _ = self.events.send(ReaderEvent::Progress { frames: self.frames, audio: self.audio }).await;
                        let _ = self.events.send(ReaderEvent::Stop).await;
                        continue;
                    }
                    Ok(ClientMessage::Stop) => ReaderEvent::Invalid(ProtocolError::new("type", "stop was already sent")),
                    Ok(ClientMessage::Start(_)) => ReaderEvent::Invalid(ProtocolError::new("type", "the session has already started")),
                    Err(error) => ReaderEvent::Invalid(error),
                },
                Some(Ok(Message::Pong(_))) => {
                    if self.events.send(ReaderEvent::Pong).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) => ReaderEvent::ClientClosed,
                Some(Err(WsError::Capacity(_))) => ReaderEvent::TooBig,
                Some(Err(WsError::Utf8(_))) => ReaderEvent::BadUtf8,
                Some(Err(_)) | None => ReaderEvent::Vanished,
            };
            let _ = self.events.send(ReaderEvent::Progress { frames: self.frames, audio: self.audio }).await;
            let _ = self.events.send(event).await;
            return;
        }
    }

    /// Checks one binary message, feeds it to the pipeline and counts its audio.
    async fn audio_frame(&mut self, data: Bytes) -> Result<(), ReaderEvent> {
        let Some(input) = &self.input else {
            return Err(ReaderEvent::Invalid(ProtocolError::new("message", "audio arrived after stop")));
        };
        let arrived = Instant::now();
        let raw = self.clip.is_some().then(|| data.clone());
        let (payload, duration) = decode_frame(&self.format, data, self.max_frame).map_err(ReaderEvent::Invalid)?;
        if let (Some(clip), Some(raw)) = (&mut self.clip, raw) {
            clip.push(&raw);
        }
        let meta = FrameMeta { session: self.session, turn: TurnId::NONE, seq: self.seq, timestamp: self.media };
        self.seq += 1;
        self.media = self.media.add(duration);
        self.ingress.arrived(self.media, arrived);

        // A lossless edge: this waits while the pipeline is behind.
        if input.send(Frame::new(meta, payload)).await.is_err() {
            // The pipeline stopped; the writer learns why from its output.
            self.input = None;
            return Ok(());
        }
        self.frames += 1;
        self.audio += duration;
        self.metrics.audio_received(self.tenant.id(), duration);

        self.unaccounted += duration;
        if self.unaccounted >= AUDIO_ACCOUNTING_STEP {
            let step = std::mem::take(&mut self.unaccounted);
            match self.limits.add_audio(self.tenant.id(), step, &self.tenant.limits).await {
                Ok(()) => {}
                Err(LimitError::Exceeded(exceeded)) => return Err(ReaderEvent::Quota(exceeded.to_string())),
                Err(LimitError::Unavailable(reason)) => {
                    // Audio keeps flowing when the counters are down: refusing
                    // every session would turn a counter outage into a full outage.
                    tracing::warn!(%reason, "cannot count audio against the daily quota");
                }
            }
        }
        Ok(())
    }
}

/// Checks a binary message against the session's audio format and turns it
/// into a frame payload and its duration.
pub fn decode_frame(format: &InputAudio, data: Bytes, max_frame: Duration) -> Result<(Payload, Duration), ProtocolError> {
    let field = "audio frame";
    if data.is_empty() {
        return Err(ProtocolError::new(field, "an audio frame is empty"));
    }
    let (payload, duration) = match format.encoding {
        AudioEncoding::Pcm16 => {
            let channels = usize::from(format.channels);
            if data.len() % (2 * channels) != 0 {
                return Err(ProtocolError::new(
                    field,
                    format!("{} bytes is not a whole number of 16-bit sample frames of {channels} channels", data.len()),
                ));
            }
            let samples: Vec<i16> = data.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
            let audio = AudioData::from_i16(format.sample_rate, format.channels, samples)
                .map_err(|error| ProtocolError::new(field, error.to_string()))?;
            let duration = audio.duration();
            (Payload::Audio(audio), duration)
        }
        AudioEncoding::Opus => {
            if data.len() > mentis_stages::opus::MAX_PACKET_LEN {
                return Err(ProtocolError::new(
                    field,
                    format!("an Opus packet of {} bytes is larger than the {} bytes any packet needs", data.len(), mentis_stages::opus::MAX_PACKET_LEN),
                ));
            }
            let samples = opus::packet::get_nb_samples(&data, format.sample_rate)
                .map_err(|error| ProtocolError::new(field, format!("not a valid Opus packet: {error}")))?;
            let duration = crate::pipelines::duration_of(samples, format.sample_rate);
            let packet = EncodedAudio { codec: Codec::Opus, sample_rate: format.sample_rate, channels: format.channels, duration, data };
            (Payload::Encoded(packet), duration)
        }
    };
    if duration < MIN_FRAME {
        return Err(ProtocolError::new(field, format!("a frame of {duration:?} is shorter than the minimum of {MIN_FRAME:?}")));
    }
    if duration > max_frame {
        return Err(ProtocolError::new(field, format!("a frame of {duration:?} is longer than the limit of {max_frame:?}")));
    }
    Ok((payload, duration))
}

/// The sending half of a session, which also owns the pipeline.
struct Writer<'a, S> {
    sink: WsSink<S>,
    pipeline: RunningPipeline,
    output: Receiver,
    events: mpsc::Receiver<ReaderEvent>,
    context: &'a SessionContext,
    services: &'a SessionServices,
    consent_transcripts: bool,
    interrupted: TurnId,
    announced_start: TurnId,
    announced_end: TurnId,
    audio_turn: TurnId,
    turns: u64,
    frames_received: u64,
    audio_received: Duration,
    stopping: bool,
}

/// The outcome of one turn of the writer's loop.
enum Step {
    Continue,
    End(Ending),
    /// The pipeline drained after `stop`.
    Drained,
    /// The pipeline stopped on its own: a stage failed.
    PipelineStopped,
}

impl<S> Writer<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(&mut self) -> SessionOutcome {
        let timing = self.services.timing;
        let max_session = self.context.tenant.limits.max_session();
        let deadline = tokio::time::Instant::now() + max_session;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + timing.ping_interval, timing.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        let mut missed_pongs = 0_u32;
        let mut ping_counter = 0_u64;
        let mut reader_open = true;

        let step = loop {
            let step = tokio::select! {
                biased;
                () = self.services.shutdown.cancelled() => Step::End(Ending {
                    close: Some(CloseCode::GoingAway),
                    reason: "the server is shutting down".to_owned(),
                    event: None,
                    label: "server_shutdown",
                }),
                () = tokio::time::sleep_until(deadline) => {
                    let message = format!("the session reached the limit of {} s", max_session.as_secs());
                    Step::End(Ending::error(CloseCode::SessionTimeLimit, ErrorCode::LimitExceeded, message, "session_time_limit"))
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        missed_pongs += 1;
                    }
                    if missed_pongs >= MAX_MISSED_PONGS {
                        Step::End(Ending { close: Some(CloseCode::PingTimeout), reason: format!("no pong to {MAX_MISSED_PONGS} pings"), event: None, label: "ping_timeout" })
                    } else {
                        ping_counter += 1;
                        awaiting_pong = true;
                        self.send(Message::Ping(Bytes::from(ping_counter.to_be_bytes().to_vec()))).await
                    }
                }
                event = self.events.recv(), if reader_open => match event {
                    Some(ReaderEvent::Pong) => {
                        awaiting_pong = false;
                        missed_pongs = 0;
                        Step::Continue
                    }
                    Some(event) => self.reader_event(event),
                    None => {
                        reader_open = false;
                        Step::Continue
                    }
                },
                frame = self.output.recv() => match frame {
                    Some(frame) => self.pipeline_frame(frame).await,
                    None => Step::PipelineStopped,
                },
                result = self.pipeline.finished(), if self.pipeline.is_running() => match result {
                    // A clean end still has frames queued for the client; the
                    // output's end marker decides what happens.
                    Ok(()) => Step::Continue,
                    Err(ending) => Step::End(ending),
                },
            };
            if !matches!(step, Step::Continue) {
                break step;
            }
        };
        self.finish(step).await
    }

    fn reader_event(&mut self, event: ReaderEvent) -> Step {
        match event {
            ReaderEvent::Progress { frames, audio } => {
                self.frames_received = frames;
                self.audio_received = audio;
                Step::Continue
            }
            ReaderEvent::Stop => {
                self.stopping = true;
                Step::Continue
            }
            ReaderEvent::Pong => Step::Continue,
            ReaderEvent::ClientClosed => Step::End(Ending { close: Some(CloseCode::Normal), reason: "closed by the client".to_owned(), event: None, label: "client_closed" }),
            ReaderEvent::Vanished => Step::End(Ending::vanished()),
            ReaderEvent::Invalid(error) => Step::End(Ending::invalid(&error)),
            ReaderEvent::TooBig => Step::End(Ending::too_big(self.context.tenant.limits.max_message_bytes)),
            ReaderEvent::BadUtf8 => Step::End(Ending { close: Some(CloseCode::InvalidPayload), reason: "a text message was not valid UTF-8".to_owned(), event: None, label: "invalid_message" }),
            ReaderEvent::Quota(message) => Step::End(Ending::error(CloseCode::AudioQuota, ErrorCode::LimitExceeded, message, "audio_quota")),
        }
    }

    async fn pipeline_frame(&mut self, frame: Frame) -> Step {
        let turn = frame.meta.turn;
        match frame.payload {
            Payload::Audio(audio) => {
                // Late audio of an interrupted turn must not be played.
                if turn != TurnId::NONE && turn <= self.interrupted {
                    return Step::Continue;
                }
                let first_of_turn = turn != TurnId::NONE && turn > self.audio_turn;
                let bytes: Vec<u8> = audio.to_i16().iter().flat_map(|sample| sample.to_le_bytes()).collect();
                let step = self.send(Message::Binary(Bytes::from(bytes))).await;
                if first_of_turn {
                    self.audio_turn = turn;
                    self.turn_started(turn).await;
                }
                step
            }
            Payload::Transcript(transcript) => {
                let is_final = transcript.kind == TranscriptKind::Final;
                if is_final && self.consent_transcripts {
                    self.services.recorder.final_transcript(self.context, turn, &transcript.text);
                }
                let event = ServerEvent::Transcript {
                    turn: turn.0,
                    is_final,
                    text: transcript.text,
                    start_ms: millis(transcript.start.as_duration()),
                    end_ms: millis(transcript.end.as_duration()),
                };
                self.send_event(&event).await
            }
            Payload::Text(delta) => self.send_event(&ServerEvent::LlmText { turn: turn.0, text: delta.text, last: delta.last }).await,
            Payload::Encoded(_) => Step::Continue,
            Payload::Control(control) => self.control(turn, control).await,
        }
    }

    async fn control(&mut self, turn: TurnId, control: Control) -> Step {
        // Each branch into the client sink forwards the same control events, so
        // each is announced once per turn.
        match control {
            Control::SpeechStarted if turn > self.announced_start => {
                self.announced_start = turn;
                self.send_event(&ServerEvent::SpeechStarted { turn: turn.0 }).await
            }
            Control::EndOfTurn if turn > self.announced_end => {
                self.announced_end = turn;
                self.send_event(&ServerEvent::EndOfTurn { turn: turn.0 }).await
            }
            Control::Interrupt if turn > self.interrupted => {
                self.interrupted = turn;
                self.send_event(&ServerEvent::Interrupt { turn: turn.0 }).await
            }
            Control::Error(failure) => {
                self.services.metrics.session_error("stage_error_event");
                let event = ServerEvent::Error { code: ErrorCode::StageFailed, message: failure.message, field: None, stage: Some(failure.stage.to_string()), fatal: false };
                self.send_event(&event).await
            }
            Control::EndOfStream => {
                if self.stopping {
                    Step::Drained
                } else {
                    Step::PipelineStopped
                }
            }
            _ => Step::Continue,
        }
    }

    /// Records the turn's first reply audio and reports its latencies.
    async fn turn_started(&mut self, turn: TurnId) {
        let turns = &self.pipeline.turns;
        turns.mark(turn, TurnMark::FirstAudioOut);
        let Some(report) = turns.reports().into_iter().find(|report| report.turn == turn) else { return };
        self.turns += 1;
        self.services.metrics.turn_completed(
            self.context.tenant.id(),
            [
                ("final_transcript", report.final_transcript_ms),
                ("first_token", report.first_token_ms),
                ("first_tts_audio", report.first_tts_audio_ms),
                ("voice_to_voice", report.voice_to_voice_ms),
            ],
        );
        let event = ServerEvent::TurnMetrics {
            turn: turn.0,
            final_transcript_ms: report.final_transcript_ms,
            first_token_ms: report.first_token_ms,
            first_tts_audio_ms: report.first_tts_audio_ms,
            voice_to_voice_ms: report.voice_to_voice_ms,
        };
        let _ = self.send_event(&event).await;
    }

    async fn send_event(&mut self, event: &ServerEvent) -> Step {
        self.send(Message::text(event.to_json())).await
    }

    async fn send(&mut self, message: Message) -> Step {
        match tokio::time::timeout(self.services.timing.write_timeout, self.sink.send(message)).await {
            Ok(Ok(())) => Step::Continue,
            _ => Step::End(Ending::vanished()),
        }
    }

    /// Ends the session: stops the pipeline, sends the last events and the close frame.
    async fn finish(&mut self, step: Step) -> SessionOutcome {
        // Drain the reader's last progress report, if it is queued.
        while let Ok(event) = self.events.try_recv() {
            if let ReaderEvent::Progress { frames, audio } = event {
                self.frames_received = frames;
                self.audio_received = audio;
            }
        }

        let (mut ending, reason) = match step {
            Step::Drained => (Ending { close: Some(CloseCode::Normal), reason: "stopped".to_owned(), event: None, label: "stopped" }, Some(EndReason::Stopped)),
            Step::PipelineStopped => (self.pipeline_failure().await, Some(EndReason::PipelineFailed)),
            Step::End(ending) => {
                let reason = match ending.label {
                    "server_shutdown" => Some(EndReason::ServerShutdown),
                    "invalid_message" => Some(EndReason::InvalidMessage),
                    "message_too_big" => Some(EndReason::MessageTooBig),
                    "session_time_limit" => Some(EndReason::SessionTimeLimit),
                    "audio_quota" => Some(EndReason::AudioQuota),
                    _ => None,
                };
                (ending, reason)
            }
            Step::Continue => unreachable!("the loop only ends on a final step"),
        };

        // Stop every pipeline task; a client that vanished gets nothing more.
        let stopped = self.pipeline.stop(self.services.timing.stop_timeout).await;
        let dropped = self.pipeline.dropped;
        if ending.label != "stopped" {
            self.services.metrics.session_error(ending.label);
        }
        if ending.close.is_none() {
            return SessionOutcome { close: None, label: ending.label, stopped_cleanly: stopped };
        }

        if let Some(event) = ending.event.take() {
            let _ = self.send_event(&event).await;
        }
        if let Some(reason) = reason {
            let ended = ServerEvent::Ended {
                reason,
                frames_received: self.frames_received,
                audio_ms_received: millis(self.audio_received),
                frames_dropped: dropped,
                turns: self.turns,
            };
            let _ = self.send_event(&ended).await;
        }
        let close = ending.close.map(CloseCode::code);
        if let Some(code) = ending.close {
            let frame = CloseFrame { code: code.code().into(), reason: close_reason(&ending.reason).into() };
            let _ = tokio::time::timeout(self.services.timing.write_timeout, self.sink.send(Message::Close(Some(frame)))).await;
            let _ = tokio::time::timeout(self.services.timing.write_timeout, self.sink.close()).await;
        }
        SessionOutcome { close, label: ending.label, stopped_cleanly: stopped }
    }

    /// Waits for a pipeline whose output ended early and turns its error into an ending.
    async fn pipeline_failure(&mut self) -> Ending {
        if self.pipeline.is_running() {
            let limit = self.services.timing.stop_timeout;
            match tokio::time::timeout(limit, self.pipeline.finished()).await {
                Ok(Err(ending)) => return ending,
                Ok(Ok(())) => {}
                Err(_) => return Ending::error(CloseCode::InternalError, ErrorCode::Internal, "the pipeline did not stop in time".to_owned(), "pipeline_stuck"),
            }
        }
        match self.pipeline.failure.take() {
            Some(ending) => ending,
            None => Ending::error(CloseCode::InternalError, ErrorCode::Internal, "the pipeline ended before the client sent stop".to_owned(), "pipeline_stopped"),
        }
    }
}

/// Builds the ending for a failed stage.
fn stage_failure(error: &SessionError) -> Ending {
    let stage = error.stage().to_string();
    let message = stage_failure_message(error);
    let event = ServerEvent::Error { code: ErrorCode::StageFailed, message: message.clone(), field: None, stage: Some(stage), fatal: true };
    Ending { close: Some(CloseCode::PipelineFailed), reason: message, event: Some(event), label: "stage_failed" }
}

/// A started pipeline, watched by a task that waits for it: the first stage
/// error cancels the other stages at once and is reported here.
struct RunningPipeline {
    turns: TurnClock,
    cancel: CancellationToken,
    waiter: Option<tokio::task::JoinHandle<Result<SessionReport, SessionError>>>,
    /// The ending for a stage failure that [`RunningPipeline::finished`] returned already.
    failure: Option<Ending>,
    dropped: u64,
}

impl RunningPipeline {
    fn watch(session: Session) -> Self {
        let turns = session.turns().clone();
        let cancel = session.cancel_token();
        let waiter = tokio::spawn(session.wait());
        RunningPipeline { turns, cancel, waiter: Some(waiter), failure: None, dropped: 0 }
    }

    fn is_running(&self) -> bool {
        self.waiter.is_some()
    }

    /// Waits until every stage has ended; returns the ending for the first
    /// stage error. Call it only while [`RunningPipeline::is_running`].
    async fn finished(&mut self) -> Result<(), Ending> {
        let Some(waiter) = self.waiter.as_mut() else {
            return Ok(());
        };
        let joined = waiter.await;
        self.waiter = None;
        match joined {
            Ok(Ok(report)) => {
                self.dropped = report.total_drops();
                Ok(())
            }
            Ok(Err(error)) => {
                tracing::warn!(stage = %error.stage(), %error, "a pipeline stage failed; ending the session");
                self.failure = Some(stage_failure(&error));
                Err(stage_failure(&error))
            }
            Err(join_error) => {
                tracing::error!(%join_error, "the pipeline's watcher task failed");
                Ok(())
            }
        }
    }

    /// Cancels every stage and waits for them to stop; returns whether they stopped within `limit`.
    async fn stop(&mut self, limit: Duration) -> bool {
        self.cancel.cancel();
        if !self.is_running() {
            return true;
        }
        let stopped = tokio::time::timeout(limit, self.finished()).await.is_ok();
        if !stopped {
            tracing::error!(?limit, "pipeline tasks were still running after the stop timeout");
        }
        stopped
    }
}

fn stage_failure_message(error: &SessionError) -> String {
    match error {
        SessionError::Stage { stage, source } => format!("stage {stage} failed: {}", source.message()),
        SessionError::Panic { stage, .. } => format!("stage {stage} failed unexpectedly"),
    }
}

/// Cancels a pipeline that never reached the main loop and waits for it.
async fn stop_pipeline(session: Session, limit: Duration) -> bool {
    let stopped = session.shutdown(limit).await;
    if !stopped {
        tracing::error!(?limit, "pipeline tasks were still running after the stop timeout");
    }
    stopped
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
