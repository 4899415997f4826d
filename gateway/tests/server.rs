//! The gateway over real sockets on 127.0.0.1: probes, tokens, session
//! rejections, full sessions with the recording, limits and faults.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use mentis_gateway::client::{encode_opus, handshake_status, load_wav_mono_i16, stream_session};
use mentis_gateway::protocol::{AudioEncoding, CloseCode, EndReason, ErrorCode, ServerEvent};
use mentis_gateway::server::{ServerSettings, TokenRequest};
use mentis_gateway::tenants::{Limits, UserId};
use mentis_pipeline::{PrivacyTier, Secret};
use tokio_tungstenite::tungstenite::Message;

fn ended(record: &mentis_gateway::client::SessionRecord) -> Option<&ServerEvent> {
    record.events.iter().find(|event| matches!(event, ServerEvent::Ended { .. }))
}

#[tokio::test]
async fn probes_answer() {
    let gateway = TestGateway::default().await;
    let (status, body) = gateway.endpoint.http(http::Method::GET, "/healthz", &[], Vec::new()).await.expect("healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = gateway.endpoint.http(http::Method::GET, "/readyz", &[], Vec::new()).await.expect("readyz");
    assert_eq!(status, 200);
    let (status, body) = gateway.endpoint.http(http::Method::GET, "/metrics", &[], Vec::new()).await.expect("metrics");
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE mentis_gateway_sessions_active gauge"), "{body}");
}

#[tokio::test]
async fn token_requests_are_checked() {
    let gateway = TestGateway::default().await;
    let user = UserId::new("user-1").expect("valid user");

    // A good key gets a token capped at the tenant's tier.
    let request = TokenRequest { user: user.clone(), tier: None, ttl_seconds: Some(60) };
    let response = gateway.endpoint.request_token(&Secret::new(ACME_KEY), &request).await.expect("token");
    assert_eq!(response.tenant, "acme");
    assert_eq!(response.tier, PrivacyTier::SelfHosted);
    assert!(response.expires_at >= now() + 59 && response.expires_at <= now() + 61);

    // A wrong key, a tier above the tenant's, a bad lifetime, an unknown field.
    let wrong = gateway.endpoint.request_token(&Secret::new("mgk_wrong"), &request).await.expect_err("wrong key");
    assert!(matches!(wrong, mentis_gateway::client::ClientError::Status { status: 401, .. }), "{wrong}");
    let cloud = TokenRequest { tier: Some(PrivacyTier::Cloud), ..request.clone() };
    let error = gateway.endpoint.request_token(&Secret::new(ACME_KEY), &cloud).await.expect_err("tier");
    assert!(matches!(error, mentis_gateway::client::ClientError::Status { status: 403, .. }), "{error}");
    let long = TokenRequest { ttl_seconds: Some(86_400), ..request.clone() };
    let error = gateway.endpoint.request_token(&Secret::new(ACME_KEY), &long).await.expect_err("ttl");
    assert!(matches!(error, mentis_gateway::client::ClientError::Status { status: 400, .. }), "{error}");

    let headers = [(http::header::AUTHORIZATION, format!("Bearer {ACME_KEY}"))];
    let (status, body) = gateway
        .endpoint
        .http(http::Method::POST, "/v1/tokens", &headers, br#"{"user":"u1","admin":true}"#.to_vec())
        .await
        .expect("http");
    assert_eq!(status, 400);
    assert!(body.contains("admin"), "{body}");

    let metrics = gateway.running.metrics();
    assert_eq!(metrics.rejections("api_key_invalid"), 1);
    assert_eq!(metrics.rejections("tier_not_allowed"), 1);
}

#[tokio::test]
async fn bad_tokens_are_rejected() {
    let gateway = TestGateway::default().await;
    let valid = gateway.token(ACME_KEY, "user-1").await;
    let expired = token_with("acme", PrivacyTier::OnDevice, now() - 600, now() - 300);
    let forged = {
        let (payload, _) = valid.split_once('.').expect("two parts");
        format!("{payload}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    };
    for (token, reason) in [("", "token_missing"), (expired.as_str(), "token_expired"), (forged.as_str(), "token_forged"), ("x.y", "token_malformed")] {
        let error = gateway.endpoint.connect(token, None).await.expect_err(reason);
        assert_eq!(handshake_status(&error), Some(401), "{reason}: {error}");
        assert_eq!(gateway.running.metrics().rejections(reason), 1, "{reason}");
    }

    // Browsers must come from an allowed origin; native apps send none.
    let error = gateway.endpoint.connect(&valid, Some("https://evil.test")).await.expect_err("origin");
    assert_eq!(handshake_status(&error), Some(403));
    gateway.endpoint.connect(&valid, Some(ACME_ORIGIN)).await.expect("allowed origin");
    gateway.endpoint.connect(&valid, None).await.expect("no origin");
}

#[tokio::test]
async fn session_streams_recording() {
    let gateway = TestGateway::default().await;
    let token = gateway.token(ACME_KEY, "user-1").await;
    let ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    let frames = recording_frames();
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let record = stream_session(ws, &plan(start, frames.clone(), false), |_| {}).await.expect("session");

    assert!(matches!(record.events.first(), Some(ServerEvent::Ready { .. })), "{:?}", record.events.first());
    let finals = record.final_transcripts();
    assert!(!finals.is_empty(), "no final transcript: {:?}", record.events);
    assert!(record.events.iter().any(|event| matches!(event, ServerEvent::LlmText { .. })));
    assert!(record.events.iter().any(|event| matches!(event, ServerEvent::TurnMetrics { voice_to_voice_ms: Some(_), .. })));
    assert!(record.reply_audio_bytes > 0);
    assert!(record.errors().is_empty(), "{:?}", record.errors());
    let Some(ServerEvent::Ended { reason, frames_received, frames_dropped, turns, .. }) = ended(&record) else {
        panic!("no ended event: {:?}", record.events);
    };
    assert_eq!(*reason, EndReason::Stopped);
    assert_eq!(*frames_received, frames.len() as u64);
    assert_eq!(*frames_dropped, 0);
    assert_eq!(*turns as usize, record.reply_latencies.len());
    assert_eq!(record.close_code, Some(CloseCode::Normal.code()));

    // The session is gone from the metrics once it closed.
    let metrics = gateway.running.metrics();
    assert!(eventually(Duration::from_secs(1), || metrics.active_sessions() == 0).await);
    assert!(metrics.render().contains("mentis_gateway_turns_total{tenant=\"acme\"}"));
}

#[tokio::test]
async fn session_decodes_opus_at_48k() {
    let gateway = TestGateway::default().await;
    let token = gateway.token(ACME_KEY, "user-1").await;
    let (samples, rate) = load_wav_mono_i16(std::path::Path::new(RECORDING)).expect("recording");
    let packets = encode_opus(&samples, rate, 48_000).expect("encode");
    let ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Opus, 48_000);
    let record = stream_session(ws, &plan(start, packets.clone().into(), false), |_| {}).await.expect("session");

    assert!(!record.final_transcripts().is_empty(), "{:?}", record.events);
    let Some(ServerEvent::Ended { reason, frames_received, frames_dropped, .. }) = ended(&record) else {
        panic!("no ended event: {:?}", record.events);
    };
    assert_eq!(*reason, EndReason::Stopped);
    assert_eq!(*frames_received, packets.len() as u64);
    assert_eq!(*frames_dropped, 0);
}

/// Sends a raw text message as the first message and returns the events and close code.
async fn first_message(gateway: &TestGateway, text: &str) -> (Vec<ServerEvent>, Option<u16>) {
    let token = gateway.token(ACME_KEY, "user-1").await;
    let mut ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    ws.send(Message::text(text)).await.expect("send");
    collect(&mut ws).await
}

async fn collect<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> (Vec<ServerEvent>, Option<u16>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut events = Vec::new();
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) => events.push(serde_json::from_str(&text).expect("event JSON")),
            Message::Close(frame) => return (events, frame.map(|frame| u16::from(frame.code))),
            _ => {}
        }
    }
    (events, None)
}

fn error_field(events: &[ServerEvent]) -> Option<(ErrorCode, Option<String>)> {
    events.iter().find_map(|event| match event {
        ServerEvent::Error { code, field, .. } => Some((*code, field.clone())),
        _ => None,
    })
}

#[tokio::test]
async fn invalid_start_names_field() {
    let gateway = TestGateway::default().await;
    let good = serde_json::to_string(&mentis_gateway::protocol::ClientMessage::Start(start_message(
        "loadtest",
        PrivacyTier::OnDevice,
        AudioEncoding::Pcm16,
        16_000,
    )))
    .expect("json");
    let cases = [
        (good.replace("\"channels\":1", "\"channels\":1,\"gain\":2"), "audio.gain"),
        (good.replace("\"sample_rate\":16000", "\"sample_rate\":\"high\""), "audio.sample_rate"),
        (good.replace("\"sample_rate\":16000", "\"sample_rate\":96000000"), "audio.sample_rate"),
        (good.replace("\"channels\":1", "\"channels\":9"), "audio.channels"),
        (good.replace("\"version\":1", "\"version\":7"), "version"),
        ("not json".to_owned(), "message"),
    ];
    for (text, field) in cases {
        let (events, close) = first_message(&gateway, &text).await;
        assert_eq!(error_field(&events), Some((ErrorCode::InvalidMessage, Some(field.to_owned()))), "{text}");
        assert_eq!(close, Some(CloseCode::InvalidMessage.code()), "{text}");
    }
    assert_eq!(gateway.running.metrics().session_errors("invalid_message"), 6);
}

#[tokio::test]
async fn tier_and_pipeline_are_checked() {
    let gateway = TestGateway::default().await;
    let start = |pipeline: &str, tier| {
        serde_json::to_string(&mentis_gateway::protocol::ClientMessage::Start(start_message(pipeline, tier, AudioEncoding::Pcm16, 16_000)))
            .expect("json")
    };
    // acme's tier is self-hosted: a cloud session is refused, and so is a
    // cloud pipeline in an on-device session.
    for (text, field, code) in [
        (start("loadtest", PrivacyTier::Cloud), "tier", ErrorCode::Forbidden),
        (start("cloud", PrivacyTier::OnDevice), "pipeline", ErrorCode::Forbidden),
        (start("nope", PrivacyTier::OnDevice), "pipeline", ErrorCode::UnknownPipeline),
    ] {
        let (events, close) = first_message(&gateway, &text).await;
        assert_eq!(error_field(&events), Some((code, Some(field.to_owned()))), "{text}");
        assert_eq!(close, Some(CloseCode::Forbidden.code()));
    }
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    let gateway = TestGateway::default().await;
    let token = gateway.token(ACME_KEY, "user-1").await;
    let mut ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let text = serde_json::to_string(&mentis_gateway::protocol::ClientMessage::Start(start)).expect("json");
    ws.send(Message::text(text)).await.expect("start");
    // acme's limit is 8 KiB; 64 KiB is far over it.
    ws.send(Message::Binary(Bytes::from(vec![0_u8; 64 * 1024]))).await.expect("send");
    let (events, close) = collect(&mut ws).await;
    assert_eq!(close, Some(CloseCode::MessageTooBig.code()), "{events:?}");
    assert_eq!(error_field(&events).map(|(code, _)| code), Some(ErrorCode::MessageTooBig));
}

#[tokio::test]
async fn malformed_frame_names_field() {
    let gateway = TestGateway::default().await;
    let token = gateway.token(ACME_KEY, "user-1").await;
    let mut ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let text = serde_json::to_string(&mentis_gateway::protocol::ClientMessage::Start(start)).expect("json");
    ws.send(Message::text(text)).await.expect("start");
    ws.send(Message::Binary(Bytes::from(vec![0_u8; 641]))).await.expect("odd bytes");
    let (events, close) = collect(&mut ws).await;
    assert_eq!(close, Some(CloseCode::InvalidMessage.code()), "{events:?}");
    assert_eq!(error_field(&events), Some((ErrorCode::InvalidMessage, Some("audio frame".to_owned()))));
}

#[tokio::test]
async fn start_timeout_closes() {
    let settings = ServerSettings {
        timing: mentis_gateway::session::SessionTiming { start_timeout: Duration::from_millis(200), ..Default::default() },
        ..ServerSettings::default()
    };
    let gateway = TestGateway::start(settings, acme_limits(), Limits::default()).await;
    let token = gateway.token(ACME_KEY, "user-1").await;
    let mut ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    let (_, close) = collect(&mut ws).await;
    assert_eq!(close, Some(CloseCode::StartTimeout.code()));
}

#[tokio::test]
async fn concurrent_limit_spares_other_tenant() {
    let gateway = TestGateway::default().await;
    let acme = gateway.token(ACME_KEY, "user-1").await;
    // acme may hold 3 sessions.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(gateway.endpoint.connect(&acme, None).await.expect("within limit"));
    }
    let error = gateway.endpoint.connect(&acme, None).await.expect_err("over limit");
    assert_eq!(handshake_status(&error), Some(429));
    assert_eq!(gateway.running.metrics().rejections("concurrent_sessions"), 1);

    // globex still gets a full session while acme is at its limit.
    assert_other_tenant_served(&gateway).await;
    assert_room_after_close(&gateway, &acme, open).await;
}

/// Streams a whole session as globex and checks it ends normally.
async fn assert_other_tenant_served(gateway: &TestGateway) {
    let globex = gateway.token(GLOBEX_KEY, "user-2").await;
    let ws = gateway.endpoint.connect(&globex, None).await.expect("other tenant");
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let record = stream_session(ws, &plan(start, recording_frames(), false), |_| {}).await.expect("session");
    assert_eq!(record.close_code, Some(CloseCode::Normal.code()));
}

/// Closes the first of `open`, then checks that `token`'s tenant can open a session again.
async fn assert_room_after_close<S>(gateway: &TestGateway, token: &str, mut open: Vec<tokio_tungstenite::WebSocketStream<S>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let remaining = i64::try_from(open.len()).expect("a few sessions") - 1;
    let mut first = open.remove(0);
    first.close(None).await.expect("close");
    drop(first);
    let metrics = gateway.running.metrics();
    assert!(eventually(Duration::from_secs(1), || metrics.active_sessions() == remaining).await);
    gateway.endpoint.connect(token, None).await.expect("room after close");
}

#[tokio::test]
async fn session_rate_limit_sets_retry_after() {
    let acme = Limits { max_new_sessions_per_minute: 2, ..acme_limits() };
    let gateway = TestGateway::start(ServerSettings::default(), acme, Limits::default()).await;
    let token = gateway.token(ACME_KEY, "user-1").await;
    for _ in 0..2 {
        drop(gateway.endpoint.connect(&token, None).await.expect("within rate"));
    }
    let error = gateway.endpoint.connect(&token, None).await.expect_err("over rate");
    let mentis_gateway::client::ClientError::WebSocket(tokio_tungstenite::tungstenite::Error::Http(response)) = &error else {
        panic!("expected an HTTP rejection, got {error}");
    };
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn vanished_client_is_cancelled_within_1s() {
    let gateway = TestGateway::default().await;
    let token = gateway.token(ACME_KEY, "user-1").await;
    let mut ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let text = serde_json::to_string(&mentis_gateway::protocol::ClientMessage::Start(start)).expect("json");
    ws.send(Message::text(text)).await.expect("start");
    for frame in recording_frames().iter().take(100) {
        ws.send(Message::Binary(frame.clone())).await.expect("audio");
    }
    let metrics = gateway.running.metrics();
    assert!(eventually(Duration::from_secs(2), || metrics.active_sessions() == 1).await);

    // Drop the TCP connection without a close frame.
    drop(ws);
    let vanished_at = tokio::time::Instant::now();
    assert!(eventually(Duration::from_secs(1), || metrics.active_sessions() == 0 && gateway.running.running_sessions() == 0).await);
    assert!(vanished_at.elapsed() < Duration::from_secs(1));
    assert_eq!(metrics.session_errors("client_vanished"), 1);
}

#[tokio::test]
async fn backend_faults_end_only_their_session() {
    let gateway = TestGateway::default().await;
    let frames = recording_frames();

    // A healthy session runs in real time beside the faulty ones.
    let token = gateway.token(GLOBEX_KEY, "healthy").await;
    let ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    let healthy_plan = plan(start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000), frames.clone(), true);
    let healthy = tokio::spawn(async move { stream_session(ws, &healthy_plan, |_| {}).await });

    for (pipeline, label) in [("llm-drops", "dropped"), ("llm-hangs", "hung")] {
        let token = gateway.token(ACME_KEY, label).await;
        let ws = gateway.endpoint.connect(&token, None).await.expect("connect");
        let start = start_message(pipeline, PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
        let record = stream_session(ws, &plan(start, frames.clone(), false), |_| {}).await.expect("session");
        assert_eq!(record.close_code, Some(CloseCode::PipelineFailed.code()), "{pipeline}: {:?}", record.events);
        let stage = record.events.iter().find_map(|event| match event {
            ServerEvent::Error { code: ErrorCode::StageFailed, stage, fatal: true, .. } => stage.clone(),
            _ => None,
        });
        assert_eq!(stage.as_deref(), Some("llm"), "{pipeline}: {:?}", record.events);
    }
    assert_eq!(gateway.running.metrics().session_errors("stage_failed"), 2);

    let healthy = healthy.await.expect("task").expect("healthy session");
    assert_eq!(healthy.close_code, Some(CloseCode::Normal.code()));
    assert!(healthy.errors().is_empty(), "{:?}", healthy.errors());
    assert!(!healthy.final_transcripts().is_empty());
}

#[tokio::test]
async fn connection_flood_is_bounded() {
    let settings = ServerSettings { max_connections: 20, ..ServerSettings::default() };
    let gateway = TestGateway::start(settings, acme_limits(), Limits::default()).await;
    let token = gateway.token(ACME_KEY, "user-1").await;

    // 200 idle connections: the first 20 are held, the rest closed at once.
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(tokio::net::TcpStream::connect(gateway.endpoint.address).await.expect("tcp"));
    }
    let metrics = gateway.running.metrics();
    assert!(eventually(Duration::from_secs(2), || metrics.rejections("too_many_connections") >= 180).await);

    // Once the idle connections time out or go, sessions are served again.
    drop(flood);
    assert!(eventually(Duration::from_secs(2), || metrics.render().contains("mentis_gateway_connections_active 0")).await);
    let ws = gateway.endpoint.connect(&token, None).await.expect("connect after flood");
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let record = stream_session(ws, &plan(start, recording_frames(), false), |_| {}).await.expect("session");
    assert_eq!(record.close_code, Some(CloseCode::Normal.code()));
}

#[tokio::test]
async fn shutdown_closes_sessions_1001() {
    let gateway = TestGateway::default().await;
    let token = gateway.token(ACME_KEY, "user-1").await;
    let mut ws = gateway.endpoint.connect(&token, None).await.expect("connect");
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let text = serde_json::to_string(&mentis_gateway::protocol::ClientMessage::Start(start)).expect("json");
    ws.send(Message::text(text)).await.expect("start");
    let Some(Ok(Message::Text(ready))) = ws.next().await else { panic!("no ready event") };
    assert!(ready.contains("\"ready\""), "{ready}");

    let TestGateway { running, .. } = gateway;
    let drained = tokio::spawn(running.shutdown());
    let (events, close) = collect(&mut ws).await;
    assert_eq!(close, Some(CloseCode::GoingAway.code()), "{events:?}");
    assert!(drained.await.expect("task"));
}

#[tokio::test]
async fn one_tenant_cannot_take_the_last_server_slots() {
    // 4 slots on the server, 1 kept from any single tenant; acme's own limit is higher.
    let settings = ServerSettings { max_sessions: 4, ..ServerSettings::default() };
    let acme = Limits { max_concurrent_sessions: 10, ..acme_limits() };
    let gateway = TestGateway::start(settings, acme, Limits::default()).await;
    assert_eq!(mentis_gateway::server::reserved_slots(4), 1);

    let acme = gateway.token(ACME_KEY, "user-1").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(gateway.endpoint.connect(&acme, None).await.expect("within the tenant's share"));
    }
    let error = gateway.endpoint.connect(&acme, None).await.expect_err("the last slot is kept for others");
    assert_eq!(handshake_status(&error), Some(503));
    assert_eq!(gateway.running.metrics().rejections("server_tenant_share"), 1);

    // Another tenant still gets the slot acme could not take, and closing an
    // acme session gives acme its share back.
    assert_other_tenant_served(&gateway).await;
    assert_room_after_close(&gateway, &acme, open).await;
}
