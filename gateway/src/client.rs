//! A client of the gateway: token requests, WebSocket sessions, and a
//! streamer that sends audio in real time and collects what comes back.
//! The example client and the tests use it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mentis_pipeline::Secret;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::protocol::{ClientMessage, ServerEvent, StartMessage};
use crate::server::{TokenRequest, TokenResponse};

/// The largest HTTP response body the client reads, in bytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection or TLS handshake failed.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The server address.
        address: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// An HTTP exchange failed.
    #[error("HTTP request failed: {0}")]
    Http(String),
    /// The server rejected a request.
    #[error("the server answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// The WebSocket failed.
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// The server sent something this client does not understand.
    #[error("unexpected message from the server: {0}")]
    Protocol(String),
}

/// The gateway's address, server name and TLS settings.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The socket address to connect to.
    pub address: SocketAddr,
    /// The name the server's certificate is checked against, and the `Host` header.
    pub host: String,
    /// TLS settings, or `None` for plain ws on loopback.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A TCP stream, with or without TLS.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_flush(cx),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Endpoint {
    /// Opens a TCP connection, with TLS when configured.
    pub async fn open(&self) -> Result<MaybeTls, ClientError> {
        let connect_error = |source| ClientError::Connect { address: self.address, source };
        let tcp = TcpStream::connect(self.address).await.map_err(connect_error)?;
        let _ = tcp.set_nodelay(true);
        let Some(config) = &self.tls else {
            return Ok(MaybeTls::Plain(tcp));
        };
        let name = ServerName::try_from(self.host.clone()).map_err(|_| ClientError::ServerName(self.host.clone()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp).await.map_err(connect_error)?;
        Ok(MaybeTls::Tls(Box::new(stream)))
    }

    fn scheme(&self, secure: &'static str, plain: &'static str) -> &'static str {
        if self.tls.is_some() { secure } else { plain }
    }

    /// Sends one HTTP/1.1 request and returns the status and body.
    pub async fn http(&self, method: http::Method, path: &str, headers: &[(http::HeaderName, String)], body: Vec<u8>) -> Result<(u16, String), ClientError> {
        let stream = self.open().await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|error| ClientError::Http(error.to_string()))?;
        let connection = tokio::spawn(connection);

        let url = format!("{}://{}{path}", self.scheme("https", "http"), self.host);
        let mut request = http::Request::builder().method(method).uri(url).header(http::header::HOST, &self.host);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|error| ClientError::Http(error.to_string()))?;
        let response = sender.send_request(request).await.map_err(|error| ClientError::Http(error.to_string()))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| ClientError::Http(error.to_string()))?
            .to_bytes();
        connection.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Exchanges an API key for a session token.
    pub async fn request_token(&self, api_key: &Secret, request: &TokenRequest) -> Result<TokenResponse, ClientError> {
        let body = serde_json::to_vec(request).map_err(|error| ClientError::Http(error.to_string()))?;
        let headers = [
            (http::header::AUTHORIZATION, format!("Bearer {}", api_key.expose())),
            (http::header::CONTENT_TYPE, "application/json".to_owned()),
        ];
        let (status, body) = self.http(http::Method::POST, "/v1/tokens", &headers, body).await?;
        if status != 200 {
            return Err(ClientError::Status { status, body });
        }
        serde_json::from_str(&body).map_err(|error| ClientError::Protocol(format!("token response: {error}")))
    }

    /// Opens a session WebSocket with a token, and an `Origin` header when given.
    pub async fn connect(&self, token: &str, origin: Option<&str>) -> Result<WebSocketStream<MaybeTls>, ClientError> {
        let stream = self.open().await?;
        let url = format!("{}://{}/v1/session", self.scheme("wss", "ws"), self.host);
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        let authorization = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|error| ClientError::Http(error.to_string()))?;
        headers.insert(http::header::AUTHORIZATION, authorization);
        if let Some(origin) = origin {
            let origin = http::HeaderValue::from_str(origin).map_err(|error| ClientError::Http(error.to_string()))?;
            headers.insert(http::header::ORIGIN, origin);
        }
        let (ws, _response) = tokio_tungstenite::client_async(request, stream).await?;
        Ok(ws)
    }
}

/// Returns the HTTP status of a rejected WebSocket handshake.
pub fn handshake_status(error: &ClientError) -> Option<u16> {
    match error {
        ClientError::WebSocket(tungstenite::Error::Http(response)) => Some(response.status().as_u16()),
        _ => None,
    }
}

/// The record of a streamed session.
#[derive(Debug, Default, Clone)]
pub struct SessionRecord {
    /// Every JSON event, in order.
    pub events: Vec<ServerEvent>,
    /// Bytes of reply audio received.
    pub reply_audio_bytes: usize,
    /// Binary reply messages received.
    pub reply_audio_messages: usize,
    /// Per turn, the time from the `end_of_turn` event to the turn's first
    /// reply audio, as this client saw it.
    pub reply_latencies: Vec<(u64, Duration)>,
    /// The close code the server sent, if any.
    pub close_code: Option<u16>,
    /// Audio frames sent.
    pub frames_sent: usize,
}

impl SessionRecord {
    /// Returns the final transcripts by turn.
    pub fn final_transcripts(&self) -> Vec<(u64, String)> {
        self.events
            .iter()
            .filter_map(|event| match event {
                ServerEvent::Transcript { turn, is_final: true, text, .. } => Some((*turn, text.clone())),
                _ => None,
            })
            .collect()
    }

    /// Returns the error events.
    pub fn errors(&self) -> Vec<&ServerEvent> {
        self.events.iter().filter(|event| matches!(event, ServerEvent::Error { .. })).collect()
    }
}

/// The audio a session streams and its pacing.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// The start message.
    pub start: StartMessage,
    /// The binary frames, in order.
    pub frames: Arc<[Bytes]>,
    /// The playing time of one frame; frames are sent at this pace.
    pub frame_duration: Duration,
    /// Send in real time, or as fast as the server takes them.
    pub real_time: bool,
    /// Time to keep listening after the last frame before sending `stop`, so
    /// the reply to the last turn can arrive.
    pub linger: Duration,
}

/// Sends the start message, streams the frames, sends `stop`, and collects
/// everything until the server closes. `on_event` receives each event as it arrives.
pub async fn stream_session<S>(
    mut ws: WebSocketStream<S>,
    plan: &StreamPlan,
    mut on_event: impl FnMut(&ServerEvent),
) -> Result<SessionRecord, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut record = SessionRecord::default();
    let start = serde_json::to_string(&ClientMessage::Start(plan.start.clone())).map_err(|error| ClientError::Protocol(error.to_string()))?;
    ws.send(Message::text(start)).await?;

    // The real-time clock starts when the server is ready, so a pipeline that
    // is slow to build does not make the first frames go out in a burst.
    let mut began = Instant::now();
    let mut next_frame = 0_usize;
    let mut stop_sent = false;
    let mut ended_turn: Option<(u64, Instant)> = None;
    let mut answered_turn = 0_u64;
    let mut ready = false;

    loop {
        // The next moment to send a frame (or `stop`), once the server is ready.
        let due = if !ready || stop_sent {
            None
        } else if next_frame < plan.frames.len() {
            Some(if plan.real_time { began + plan.frame_duration * next_frame as u32 } else { Instant::now() })
        } else {
            Some(began + plan.frame_duration * plan.frames.len() as u32 + plan.linger)
        };

        tokio::select! {
            biased;
            message = ws.next() => {
                let Some(message) = message else { break };
                match message? {
                    Message::Text(text) => {
                        let event: ServerEvent = serde_json::from_str(&text).map_err(|error| ClientError::Protocol(format!("{error}: {text}")))?;
                        match &event {
                            ServerEvent::Ready { .. } => {
                                ready = true;
                                began = Instant::now();
                            }
                            ServerEvent::EndOfTurn { turn } => ended_turn = Some((*turn, Instant::now())),
                            _ => {}
                        }
                        on_event(&event);
                        record.events.push(event);
                    }
                    Message::Binary(data) => {
                        record.reply_audio_bytes += data.len();
                        record.reply_audio_messages += 1;
                        if let Some((turn, at)) = ended_turn {
                            if turn > answered_turn {
                                answered_turn = turn;
                                record.reply_latencies.push((turn, at.elapsed()));
                            }
                        }
                    }
                    Message::Close(frame) => {
                        record.close_code = frame.map(|frame| u16::from(frame.code));
                        break;
                    }
                    _ => {}
                }
            }
            () = sleep_until(due), if due.is_some() => {
                if next_frame < plan.frames.len() {
                    ws.send(Message::Binary(plan.frames[next_frame].clone())).await?;
                    next_frame += 1;
                    record.frames_sent = next_frame;
                } else {
                    let stop = serde_json::to_string(&ClientMessage::Stop).map_err(|error| ClientError::Protocol(error.to_string()))?;
                    ws.send(Message::text(stop)).await?;
                    stop_sent = true;
                }
            }
        }
    }
    Ok(record)
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// Cuts 16-bit mono samples into PCM16 little-endian frames of `frame_samples` each;
/// a shorter last frame is dropped.
pub fn pcm16_frames(samples: &[i16], frame_samples: usize) -> Vec<Bytes> {
    samples
        .chunks_exact(frame_samples.max(1))
        .map(|chunk| Bytes::from(chunk.iter().flat_map(|sample| sample.to_le_bytes()).collect::<Vec<u8>>()))
        .collect()
}

/// Reads a WAV file as mono 16-bit samples (channels averaged) and its sample rate.
pub fn load_wav_mono_i16(path: &std::path::Path) -> Result<(Vec<i16>, u32), ClientError> {
    let options = mentis_stages::wav::ReadOptions {
        sample_format: mentis_pipeline::SampleFormat::I16,
        channel_mode: mentis_stages::wav::ChannelMode::Downmix,
        ..mentis_stages::wav::ReadOptions::default()
    };
    let decoded = mentis_stages::wav::read_wav_file(path, &options).map_err(|error| ClientError::Protocol(error.to_string()))?;
    let Some(track) = decoded.tracks.first() else {
        return Err(ClientError::Protocol(format!("{} contains no audio", path.display())));
    };
    Ok((track.to_i16(), track.format().sample_rate))
}

/// Resamples mono 16-bit audio from `input_rate` to `output_rate`.
pub fn resample_i16(samples: &[i16], input_rate: u32, output_rate: u32) -> Result<Vec<i16>, ClientError> {
    if input_rate == output_rate {
        return Ok(samples.to_vec());
    }
    let resample_error = |error: &dyn std::fmt::Display| ClientError::Protocol(format!("cannot resample the audio: {error}"));
    let floats: Vec<f32> = samples.iter().map(|&sample| f32::from(sample) / 32_768.0).collect();
    let mut resampler =
        mentis_stages::resample::StreamResampler::new(input_rate, output_rate, 1, mentis_stages::resample::ResamplerKind::Fft)
            .map_err(|error| resample_error(&error))?;
    let mut resampled = resampler.process(&floats).map_err(|error| resample_error(&error))?;
    resampled.extend(resampler.flush().map_err(|error| resample_error(&error))?);
    Ok(resampled.iter().map(|&sample| mentis_pipeline::frame::f32_to_i16(sample)).collect())
}

/// Resamples mono 16-bit audio from `input_rate` to `opus_rate` and encodes
/// it as Opus packets of 20 ms for voice.
pub fn encode_opus(samples: &[i16], input_rate: u32, opus_rate: u32) -> Result<Vec<Bytes>, ClientError> {
    let codec_error = |error: &dyn std::fmt::Display| ClientError::Protocol(format!("cannot encode Opus: {error}"));
    let pcm = resample_i16(samples, input_rate, opus_rate)?;

    let mut encoder = opus::Encoder::new(opus_rate, opus::Channels::Mono, opus::Application::Voip).map_err(|error| codec_error(&error))?;
    let frame_samples = opus_rate as usize / 50;
    let mut packet = vec![0_u8; mentis_stages::opus::MAX_PACKET_LEN];
    let mut packets = Vec::with_capacity(pcm.len() / frame_samples + 1);
    for chunk in pcm.chunks_exact(frame_samples) {
        let len = encoder.encode(chunk, &mut packet).map_err(|error| codec_error(&error))?;
        packets.push(Bytes::copy_from_slice(&packet[..len]));
    }
    Ok(packets)
}
