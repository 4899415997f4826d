//! Local servers for the network backend tests: plain or TLS HTTP/1.1 and
//! WebSocket on 127.0.0.1, with a private CA made for each test. No test
//! contacts any other host.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use mentis_pipeline::{EgressLog, PrivacyPolicy, PrivacyTier, StageName};
use mentis_stages::net::{Connector, Timeouts, tls_config};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use url::Url;

/// A private CA and a server certificate for `localhost` and 127.0.0.1,
/// with the CA's PEM file written to a temporary folder.
pub struct TestTls {
    pub acceptor: TlsAcceptor,
    pub ca_file: PathBuf,
    _folder: tempfile::TempDir,
}

impl TestTls {
    pub fn new() -> TestTls {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "mentis test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server params");
        let server_cert = server_params.signed_by(&server_key, &issuer).expect("server certificate");

        let folder = tempfile::tempdir().expect("temporary folder");
        let ca_file = folder.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA file");

        let chain = vec![CertificateDer::from(server_cert.der().to_vec())];
        let key = PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).expect("server key PEM");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server TLS settings");
        TestTls { acceptor: TlsAcceptor::from(Arc::new(config)), ca_file, _folder: folder }
    }
}

/// A boxed response body.
pub type Body = BoxBody<Bytes, Infallible>;

/// Builds a whole response body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Builds a response body fed piece by piece through the returned sender.
/// The body ends when the sender is dropped.
pub fn streamed() -> (mpsc::Sender<Bytes>, Body) {
    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), receiver))
    });
    (sender, StreamBody::new(stream).boxed())
}

/// A request as the test server saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

type Handler = Arc<dyn Fn(SeenRequest) -> Pin<Box<dyn Future<Output = http::Response<Body>> + Send>> + Send + Sync>;

/// A server on 127.0.0.1 that responds to each request with a handler.
pub struct TestServer {
    pub address: SocketAddr,
    pub tls: Option<Arc<TestTls>>,
    pub connections: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Returns the URL of `path`: `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub fn url(&self, path: &str) -> Url {
        let base = match (&self.tls, path.starts_with("ws")) {
            (Some(_), _) => format!("https://localhost:{}", self.address.port()),
            (None, _) => format!("http://127.0.0.1:{}", self.address.port()),
        };
        Url::parse(&format!("{base}{path}")).expect("test URL")
    }

    /// Returns the WebSocket URL of `path`: `ws://127.0.0.1:PORT` or `wss://localhost:PORT`.
    pub fn ws_url(&self, path: &str) -> Url {
        let base = match &self.tls {
            Some(_) => format!("wss://localhost:{}", self.address.port()),
            None => format!("ws://127.0.0.1:{}", self.address.port()),
        };
        Url::parse(&format!("{base}{path}")).expect("test URL")
    }

    /// Serves HTTP/1.1 with `handler`.
    pub async fn http<F, Fut>(tls: Option<Arc<TestTls>>, handler: F) -> TestServer
    where
        F: Fn(SeenRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
        TestServer::listen(tls, move |stream, open| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                    let handler = Arc::clone(&handler);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
                        let seen = SeenRequest {
                            method: parts.method.to_string(),
                            path_and_query: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
                            headers: parts.headers,
                            body,
                        };
                        Ok::<_, Infallible>(handler(seen).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                open.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .await
    }

    /// Serves WebSocket: each accepted socket, with its request, goes to `handler`.
    pub async fn websocket<F, Fut>(tls: Option<Arc<TestTls>>, handler: F) -> TestServer
    where
        F: Fn(WebSocketStream<Box<dyn Io>>, SeenRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        TestServer::listen(tls, move |stream, open| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let mut seen = None;
                let callback = |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                                response: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    seen = Some(SeenRequest {
                        method: request.method().to_string(),
                        path_and_query: request.uri().path_and_query().map(ToString::to_string).unwrap_or_default(),
                        headers: request.headers().clone(),
                        body: Bytes::new(),
                    });
                    Ok(response)
                };
                if let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    && let Some(seen) = seen
                {
                    handler(socket, seen).await;
                }
                open.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .await
    }

    async fn listen<F>(tls: Option<Arc<TestTls>>, serve: F) -> TestServer
    where
        F: Fn(Box<dyn Io>, Arc<AtomicUsize>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let address = listener.local_addr().expect("local address");
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.as_ref().map(|tls| tls.acceptor.clone());
        let (counted, open_count) = (Arc::clone(&connections), Arc::clone(&open));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                open_count.fetch_add(1, Ordering::SeqCst);
                let stream: Box<dyn Io> = match &acceptor {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => Box::new(stream),
                        Err(_) => {
                            open_count.fetch_sub(1, Ordering::SeqCst);
                            continue;
                        }
                    },
                    None => Box::new(stream),
                };
                tokio::spawn(serve(stream, Arc::clone(&open_count)));
            }
        });
        TestServer { address, tls, connections, open, task }
    }
}

/// A byte stream the servers accept: TCP or TLS over TCP.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A connector for a stage of a pipeline of `tier`, trusting the test CA.
pub fn connector(tier: PrivacyTier, tls: Option<&TestTls>, timeouts: Timeouts) -> (Connector, EgressLog) {
    let egress = EgressLog::default();
    let config = tls_config(tls.map(|tls| tls.ca_file.as_path())).expect("TLS settings");
    let stage = StageName::new("client").expect("stage name");
    (Connector::new(stage, PrivacyPolicy::new(tier), egress.clone(), config, timeouts), egress)
}

/// Short time limits, so that timeout tests run fast.
pub fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_millis(300),
        idle: Duration::from_millis(300),
    }
}

/// Waits until `condition` is true, checking every 5 ms for a maximum of `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition()
}

/// Connects a plain TCP socket, for tests that speak raw bytes.
pub async fn raw(address: SocketAddr) -> TcpStream {
    TcpStream::connect(address).await.expect("connect to the test server")
}

/// A stage running outside a graph: frames go in through `input`, come out
/// of `output`; the session's egress and usage logs are kept for checks.
pub struct Harness {
    pub input: Option<mentis_pipeline::edge::Sender>,
    pub output: mentis_pipeline::edge::Receiver,
    pub egress: EgressLog,
    pub usage: mentis_pipeline::UsageLog,
    pub task: tokio::task::JoinHandle<Result<(), mentis_pipeline::StageError>>,
    seq: u64,
}

/// The session of every harness.
pub const SESSION: mentis_pipeline::SessionId = mentis_pipeline::SessionId(11);

impl Harness {
    /// Starts `stage` for a pipeline of `tier`.
    pub fn start(mut stage: impl mentis_pipeline::Stage, tier: PrivacyTier) -> Harness {
        use mentis_pipeline::EdgeConfig;
        use mentis_pipeline::edge::channel;
        let (input, inbox) = channel("test -> stage", EdgeConfig::lossless(256));
        let (outbox, output) = channel("stage -> test", EdgeConfig::lossless(4096));
        let name = stage.spec().name;
        let io = mentis_pipeline::StageIo::detached(name, SESSION, vec![inbox], vec![outbox])
            .with_policy(PrivacyPolicy::new(tier));
        let (egress, usage) = (io.egress.clone(), io.usage.clone());
        let task = tokio::spawn(async move {
            let mut io = io;
            stage.run(&mut io).await
        });
        Harness { input: Some(input), output, egress, usage, task, seq: 0 }
    }

    /// Sends a frame with the given turn, timestamp and payload.
    pub async fn send(&mut self, turn: u64, payload: mentis_pipeline::Payload) {
        let meta = mentis_pipeline::FrameMeta {
            session: SESSION,
            turn: mentis_pipeline::TurnId(turn),
            seq: self.seq,
            timestamp: mentis_pipeline::MediaTime::ZERO,
        };
        self.seq += 1;
        let frame = mentis_pipeline::Frame::new(meta, payload);
        self.input.as_ref().expect("input open").send(frame).await.expect("the stage takes frames");
    }

    /// Ends the input stream.
    pub fn close(&mut self) {
        self.input = None;
    }

    /// Receives the next output frame, failing the test after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<mentis_pipeline::Frame> {
        tokio::time::timeout(limit, self.output.recv()).await.expect("the stage responds in time")
    }

    /// Collects output frames until `done` is true for one (included) or the output ends.
    pub async fn until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mentis_pipeline::Frame) -> bool,
    ) -> Vec<mentis_pipeline::Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next(limit).await {
            let stop = done(&frame);
            frames.push(frame);
            if stop {
                break;
            }
        }
        frames
    }
}

/// A speech synthesis stage running outside a graph. Text goes in through
/// `input` and audio comes out of `output`. The session's usage, egress and
/// turn records are kept for checks.
pub struct TtsRun {
    pub input: Option<mentis_pipeline::edge::Sender>,
    pub output: mentis_pipeline::edge::Receiver,
    pub usage: mentis_pipeline::UsageLog,
    pub egress: EgressLog,
    pub turns: mentis_pipeline::TurnClock,
    pub task: tokio::task::JoinHandle<Result<(), mentis_pipeline::StageError>>,
}

impl TtsRun {
    /// Starts `stage`, named `tts`, in `session` for a pipeline of `tier`.
    pub fn start(
        mut stage: impl mentis_pipeline::Stage + 'static,
        session: mentis_pipeline::SessionId,
        tier: PrivacyTier,
    ) -> TtsRun {
        use mentis_pipeline::EdgeConfig;
        use mentis_pipeline::edge::channel;
        let (input, inbox) = channel("text -> tts", EdgeConfig::lossless(64));
        let (outbox, output) = channel("tts -> out", EdgeConfig::lossless(8192));
        let name = StageName::new("tts").expect("valid stage name");
        let mut io = mentis_pipeline::StageIo::detached(name, session, vec![inbox], vec![outbox])
            .with_policy(PrivacyPolicy::new(tier));
        let (usage, egress, turns) = (io.usage.clone(), io.egress.clone(), io.turns.clone());
        let task = tokio::spawn(async move { stage.run(&mut io).await });
        TtsRun { input: Some(input), output, usage, egress, turns, task }
    }

    /// Sends one input frame.
    pub async fn send(&self, frame: mentis_pipeline::Frame) {
        self.input.as_ref().expect("input open").send(frame).await.expect("the stage takes input");
    }

    /// Waits for the next output frame.
    pub async fn next(&mut self) -> mentis_pipeline::Frame {
        tokio::time::timeout(Duration::from_secs(10), self.output.recv())
            .await
            .expect("an output frame within 10 s")
            .expect("the stage is still running")
    }

    /// Ends the input and returns the rest of the output and the result of `run`.
    pub async fn finish(mut self) -> (Vec<mentis_pipeline::Frame>, Result<(), mentis_pipeline::StageError>) {
        self.input.take();
        let mut frames = Vec::new();
        let collect = async {
            while let Some(frame) = self.output.recv().await {
                frames.push(frame);
            }
        };
        tokio::time::timeout(Duration::from_secs(20), collect).await.expect("the stage ends within 20 s");
        let result = self.task.await.expect("the stage task does not panic");
        (frames, result)
    }
}

/// Returns the audio frames of `frames` as (turn, timestamp, samples),
/// after asserting that each is mono f32 at `sample_rate`.
pub fn mono_f32_audio(
    frames: &[mentis_pipeline::Frame],
    sample_rate: u32,
) -> Vec<(mentis_pipeline::TurnId, mentis_pipeline::MediaTime, Vec<f32>)> {
    frames
        .iter()
        .filter_map(|frame| {
            let audio = frame.as_audio()?;
            assert_eq!(audio.format().sample_rate, sample_rate);
            assert_eq!(audio.format().channels, 1);
            let mentis_pipeline::Samples::F32(samples) = audio.samples() else {
                panic!("expected f32 samples, got {:?}", audio.format());
            };
            Some((frame.meta.turn, frame.meta.timestamp, samples.to_vec()))
        })
        .collect()
}

/// Asserts that `key` appears in none of `outputs`: the error, its debug
/// form, the usage and egress records, and whatever else a stage printed.
pub fn assert_key_hidden(key: &str, outputs: &[String]) {
    for output in outputs {
        assert!(!output.contains(key), "the key appears in {output}");
    }
}
