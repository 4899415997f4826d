//! Pings and time limits on paused time: a session over an in-memory
//! socket, driven by tokio's clock instead of real waiting.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use mentis_gateway::auth::Claims;
use mentis_gateway::limits::{InProcessLimits, LimitStore, SessionLease};
use mentis_gateway::metrics::GatewayMetrics;
use mentis_gateway::protocol::{AudioEncoding, ClientMessage, CloseCode};
use mentis_gateway::recording::NoRecorder;
use mentis_gateway::session::{SessionContext, SessionOutcome, SessionServices, SessionTiming, new_session_id, run_session};
use mentis_gateway::tenants::{Limits, Tenant, UserId};
use mentis_pipeline::PrivacyTier;
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// Starts a session over a duplex pipe; returns the client's socket and the session task.
async fn session(limits: Limits) -> (WebSocketStream<DuplexStream>, tokio::task::JoinHandle<SessionOutcome>) {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;

    let store: Arc<dyn LimitStore> = Arc::new(InProcessLimits::new());
    let tenant = Tenant::new("acme", PrivacyTier::OnDevice, limits).expect("valid id");
    let (id, numeric_id) = new_session_id();
    let lease = SessionLease::acquire(Arc::clone(&store), tenant.id(), &id, &tenant.limits).await.expect("lease");
    let claims = Claims { v: 1, tenant: "acme".to_owned(), user: UserId::new("user-1").expect("user"), tier: PrivacyTier::OnDevice, iat: 0, exp: u64::MAX };
    let context = SessionContext { tenant, claims, id, numeric_id, lease };
    let services = SessionServices {
        pipelines: pipelines(),
        limits: store,
        metrics: Arc::new(GatewayMetrics::new()),
        recorder: Arc::new(NoRecorder),
        timing: SessionTiming::default(),
        shutdown: CancellationToken::new(),
        registry: None,
    };
    (client, tokio::spawn(run_session(server, context, services)))
}

async fn start(client: &mut WebSocketStream<DuplexStream>) {
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let text = serde_json::to_string(&ClientMessage::Start(start)).expect("json");
    client.send(Message::text(text)).await.expect("start");
    let Some(Ok(Message::Text(ready))) = client.next().await else { panic!("no ready event") };
    assert!(ready.contains("\"ready\""), "{ready}");
}

#[tokio::test(start_paused = true)]
async fn two_missed_pongs_close_4001() {
    let (mut client, task) = session(Limits::default()).await;
    start(&mut client).await;
    let started = tokio::time::Instant::now();

    // The client stops reading, so it answers no ping.
    let outcome = task.await.expect("session task");
    assert_eq!(outcome.close, Some(CloseCode::PingTimeout.code()));
    assert!(outcome.stopped_cleanly);
    // Pings go out at 20 s, 40 s and 60 s; the third finds two unanswered.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(60) && elapsed < Duration::from_secs(61), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn answered_pings_keep_session_until_time_limit() {
    let limits = Limits { max_session_seconds: 300, ..Limits::default() };
    let (mut client, task) = session(limits).await;
    start(&mut client).await;
    let started = tokio::time::Instant::now();

    // Reading answers every ping (tungstenite replies with a pong).
    let mut pings = 0;
    let mut close = None;
    while let Some(Ok(message)) = client.next().await {
        match message {
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => close = frame.map(|frame| u16::from(frame.code)),
            _ => {}
        }
    }
    let outcome = task.await.expect("session task");
    assert_eq!(close, Some(CloseCode::SessionTimeLimit.code()), "{outcome:?} after {:?}", started.elapsed());
    assert_eq!(outcome.close, Some(CloseCode::SessionTimeLimit.code()));
    assert_eq!(pings, 14, "a ping every 20 s for 300 s");
    assert!(started.elapsed() >= Duration::from_secs(300));
}
