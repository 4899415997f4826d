//! The example client against a gateway that serves the real on-device
//! pipeline (Whisper, SmolLM2 through llama.cpp, flite) over TLS on
//! 127.0.0.1: it streams the LibriVox recording in real time and prints the
//! transcript, the reply and the turn latencies. A second test checks the
//! pipeline's bound on concurrent sessions.
//!
//! Needs the models that `scripts/setup` downloads and the recording of
//! Debian's pocketsphinx test data. Run with
//! `cargo test -p mentis-gateway --features on-device --test example_client`.

mod common;

// The example's own code, so that the test runs what the example runs and
// reads what it prints.
#[allow(dead_code)]
#[path = "../examples/client.rs"]
mod example;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use common::*;
use futures::{SinkExt as _, StreamExt as _};
use mentis_gateway::client::{Endpoint, MaybeTls};
use mentis_gateway::pipelines::PipelineRegistry;
use mentis_gateway::pipelines::on_device::{OnDeviceConfig, OnDevicePipeline};
use mentis_gateway::protocol::{AudioEncoding, ClientMessage, CloseCode, ErrorCode, ServerEvent};
use mentis_gateway::server::{Gateway, RunningGateway};
use mentis_gateway::tenants::Limits;
use mentis_pipeline::PrivacyTier;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The words of the recording ("and mister john dashwood had then leisure to
/// consider how much there might be prudently in his power to do for them")
/// that the transcript must contain.
const EXPECTED_WORDS: [&str; 5] = ["dashwood", "leisure", "consider", "prudently", "power"];

/// The maximum time the streaming test may take: 7.1 s of audio sent in real
/// time, 3 s of lingering, and the replies of a loaded 2-core machine.
const STREAM_TIME_LIMIT: Duration = Duration::from_secs(90);

/// Files of a test CA, a `localhost` certificate it signs, and an API key.
struct TestFiles {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

impl TestFiles {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn test_files() -> TestFiles {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params").signed_by(&leaf_key, &ca).expect("leaf certificate");

    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    };
    write("ca.pem", &ca.pem());
    let certificate = write("cert.pem", &leaf.pem());
    let key = write("key.pem", &leaf_key.serialize_pem());
    // The client reads the API key only from a file its owner alone can read.
    let api_key = write("api.key", ACME_KEY);
    std::fs::set_permissions(&api_key, std::fs::Permissions::from_mode(0o600)).expect("chmod 600 api.key");
    let server = mentis_gateway::tls::server_config(&certificate, &key).expect("server TLS");
    TestFiles { dir, server }
}

/// Starts a gateway on 127.0.0.1 whose `on-device` pipeline has `config`,
/// with its Whisper model loaded before the first session.
async fn start_gateway(config: OnDeviceConfig, tls: Option<Arc<rustls::ServerConfig>>) -> RunningGateway {
    let pipeline = tokio::task::spawn_blocking(move || {
        let pipeline = OnDevicePipeline::new(config);
        pipeline.load_models().map(|()| pipeline)
    })
    .await
    .expect("model loading thread");
    let pipeline = pipeline.unwrap_or_else(|error| panic!("cannot load the on-device models: {error}; run scripts/setup"));
    let registry = PipelineRegistry::new().with("on-device", pipeline);
    let limits = Limits { max_concurrent_sessions: 8, ..acme_limits() };
    let gateway = Gateway::builder(Arc::new(tenants(limits, Limits::default())), signer()).pipelines(registry).build();
    gateway.bind("127.0.0.1:0".parse().expect("address"), tls).await.expect("bind on loopback")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_streams_recording_over_tls() {
    assert!(Path::new(RECORDING).is_file(), "{RECORDING} is missing; run scripts/setup");
    let files = test_files();
    let gateway = start_gateway(OnDeviceConfig::default(), Some(Arc::clone(&files.server))).await;
    let address = gateway.local_addr().to_string();
    let args = example::Args::parse_from([
        "client",
        "--address",
        &address,
        "--host",
        "localhost",
        "--ca",
        &files.path("ca.pem"),
        "--api-key-file",
        &files.path("api.key"),
        "--user",
        "example-user",
        "--pipeline",
        "on-device",
        "--wav",
        RECORDING,
    ]);

    let mut printed = Vec::new();
    let record = tokio::time::timeout(STREAM_TIME_LIMIT, example::run(args, &mut printed))
        .await
        .expect("the session ends within the time limit")
        .expect("the example client succeeds");
    let printed = String::from_utf8(printed).expect("UTF-8 output");
    println!("{printed}");

    // The final transcripts contain the recording's words.
    let transcripts = record.final_transcripts();
    let transcript_text = transcripts.iter().map(|(_, text)| text.to_lowercase()).collect::<Vec<_>>().join(" ");
    for word in EXPECTED_WORDS {
        assert!(transcript_text.contains(word), "{word:?} missing from the transcripts {transcripts:?}");
    }

    // The LLM replied with text, and its reply was synthesized and sent.
    let reply: String = record
        .events
        .iter()
        .filter_map(|event| match event {
            ServerEvent::LlmText { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(reply.split_whitespace().count() >= 2, "LLM reply {reply:?}");
    assert!(record.reply_audio_bytes > 0, "no reply audio: {:?}", record.events);
    assert!(!record.reply_latencies.is_empty(), "no reply latency measured");

    // The server reported a voice-to-voice latency for a turn.
    let voice_to_voice = record.events.iter().find_map(|event| match event {
        ServerEvent::TurnMetrics { voice_to_voice_ms: Some(ms), final_transcript_ms: Some(_), first_token_ms: Some(_), .. } => Some(*ms),
        _ => None,
    });
    assert!(voice_to_voice.is_some_and(|ms| ms > 0.0), "no complete turn_metrics: {:?}", record.events);
    assert!(record.errors().is_empty(), "errors: {:?}", record.errors());
    assert_eq!(record.close_code, Some(CloseCode::Normal.code()));

    // The example printed the transcript, the reply, the server's latencies and its own.
    assert!(printed.contains("transcript: "), "{printed}");
    assert!(printed.lines().any(|line| line.contains("transcript: ") && line.to_lowercase().contains("dashwood")), "{printed}");
    assert!(printed.contains(" reply: "), "{printed}");
    assert!(printed.contains("server latency from end of speech"), "{printed}");
    assert!(printed.contains("voice to voice "), "{printed}");
    assert!(printed.contains("reply latency (end of turn to first reply audio, client side)"), "{printed}");

    assert!(gateway.shutdown().await, "sessions drained");
}

/// Opens a plain ws session on the gateway and sends the start message.
async fn open_session(gateway: &TestGateway) -> WebSocketStream<MaybeTls> {
    let token = gateway.token(ACME_KEY, "bounded-user").await;
    let mut ws = gateway.endpoint.connect(&token, None).await.expect("ws connect");
    let start = start_message("on-device", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let start = serde_json::to_string(&ClientMessage::Start(start)).expect("start JSON");
    ws.send(Message::text(start)).await.expect("send start");
    ws
}

/// Reads events until `ready` or an error, and returns that event.
async fn first_answer(ws: &mut WebSocketStream<MaybeTls>) -> ServerEvent {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("an answer in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let event: ServerEvent = serde_json::from_str(&text).expect("a server event");
                if matches!(event, ServerEvent::Ready { .. } | ServerEvent::Error { .. }) {
                    return event;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the session closed before answering: {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code.
async fn close_code(mut ws: WebSocketStream<MaybeTls>) -> Option<u16> {
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("close in time") {
        if let Ok(Message::Close(frame)) = message {
            return frame.map(|frame| u16::from(frame.code));
        }
    }
    None
}

/// Sends `stop` and reads until the server closes; returns the close code.
async fn stop(mut ws: WebSocketStream<MaybeTls>) -> Option<u16> {
    let stop = serde_json::to_string(&ClientMessage::Stop).expect("stop JSON");
    ws.send(Message::text(stop)).await.expect("send stop");
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("close in time") {
        if let Ok(Message::Close(frame)) = message {
            return frame.map(|frame| u16::from(frame.code));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_device_sessions_are_bounded() {
    let config = OnDeviceConfig { max_sessions: 1, ..OnDeviceConfig::default() };
    let running = start_gateway(config, None).await;
    let endpoint = Endpoint { address: running.local_addr(), host: "localhost".to_owned(), tls: None };
    let gateway = TestGateway { running, endpoint };

    // The first session takes the only slot.
    let mut first = open_session(&gateway).await;
    assert!(matches!(first_answer(&mut first).await, ServerEvent::Ready { .. }));

    // A second one at the same time is rejected with an error naming the bound.
    let mut second = open_session(&gateway).await;
    match first_answer(&mut second).await {
        ServerEvent::Error { code, message, fatal, .. } => {
            assert_eq!(code, ErrorCode::LimitExceeded);
            assert!(message.contains("on-device pipeline is at its session limit (max_sessions = 1)"), "{message}");
            assert!(fatal);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(close_code(second).await, Some(CloseCode::TryAgainLater.code()), "the busy session is closed with 1013");

    // Once the first session ends, its slot is free again.
    assert_eq!(stop(first).await, Some(CloseCode::Normal.code()));
    let mut third = open_session(&gateway).await;
    assert!(matches!(first_answer(&mut third).await, ServerEvent::Ready { .. }), "the slot was not freed");
    assert_eq!(stop(third).await, Some(CloseCode::Normal.code()));
    assert!(gateway.running.shutdown().await, "sessions drained");
}
