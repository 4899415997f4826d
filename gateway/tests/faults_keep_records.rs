//! Faults in some sessions lose no stored data. With an SQLite store, one
//! session with consent stores its transcripts. Then a backend drops
//! mid-turn in a second session, a backend hangs in a third, and a client
//! vanishes in a fourth. The first session's records are still there, whole.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mentis_gateway::directory::StoreDirectory;
use mentis_gateway::protocol::{AudioEncoding, ConsentFlags};
use mentis_gateway::recording::StoreRecorder;
use mentis_gateway::server::{Gateway, ServerSettings, TokenRequest};
use mentis_gateway::store::{ConsentScope, SqliteStore, Store, TenantId, TenantLimits, Timestamp, generate_api_key};
use mentis_gateway::tenants::UserId;
use mentis_gateway::client::{Endpoint, stream_session};
use mentis_pipeline::PrivacyTier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_other_sessions_lose_no_stored_data() {
    // A store with one tenant, a key, and a user who consented to transcripts.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.expect("store"));
    let tenant = mentis_gateway::store::Tenant {
        id: TenantId::new("acme").expect("tenant id"),
        name: "acme".to_owned(),
        max_tier: PrivacyTier::Cloud,
        transcript_retention: Duration::from_secs(24 * 3600),
        audio_retention: Duration::from_secs(24 * 3600),
        limits: TenantLimits { max_concurrent_sessions: 10, ..TenantLimits::default() },
        allowed_origins: Vec::new(),
    };
    store.create_tenant(&tenant).await.expect("create tenant");
    let key = generate_api_key().expect("key");
    store.add_api_key(&tenant.id, &key.hash, "test").await.expect("add key");
    let user = mentis_gateway::store::UserId::new("user-1").expect("user id");
    let consent = ConsentScope { transcripts: true, audio: false };
    store.record_consent(&tenant.id, &user, consent, Timestamp::now()).await.expect("consent");

    let gateway = Gateway::builder(Arc::new(StoreDirectory::new(Arc::clone(&store))), signer())
        .pipelines(pipelines())
        .recorder(Arc::new(StoreRecorder::new(Arc::clone(&store))))
        .settings(ServerSettings::default())
        .build();
    let running = gateway.bind("127.0.0.1:0".parse().expect("address"), None).await.expect("bind on loopback");
    let endpoint = Endpoint { address: running.local_addr(), host: "localhost".to_owned(), tls: None };
    let request = TokenRequest { user: UserId::new("user-1").expect("user"), tier: None, ttl_seconds: None };
    let token = endpoint.request_token(&key.key, &request).await.expect("token").token;
    let consented = ConsentFlags { store_transcripts: true, store_audio: false };
    let start = |pipeline: &str| {
        let mut start = start_message(pipeline, PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
        start.consent = consented;
        start
    };

    // The healthy session stores its transcripts.
    let ws = endpoint.connect(&token, None).await.expect("connect");
    let record = stream_session(ws, &plan(start("loadtest"), recording_frames(), false), |_| {}).await.expect("session");
    assert_eq!(record.close_code, Some(mentis_gateway::protocol::CloseCode::Normal.code()));
    let before = wait_for_transcripts(store.as_ref(), &tenant.id, &user).await;
    assert!(!before.transcripts.is_empty(), "the healthy session stored transcripts");

    // A backend that drops mid-turn, one that hangs, and a client that vanishes.
    for pipeline in ["llm-drops", "llm-hangs"] {
        let ws = endpoint.connect(&token, None).await.expect("connect");
        let record = stream_session(ws, &plan(start(pipeline), recording_frames(), false), |_| {}).await.expect("session");
        assert_ne!(record.close_code, Some(mentis_gateway::protocol::CloseCode::Normal.code()), "{pipeline} fails");
    }
    let mut vanishing = endpoint.connect(&token, None).await.expect("connect");
    let text = serde_json::to_string(&mentis_gateway::protocol::ClientMessage::Start(start("loadtest"))).expect("json");
    futures::SinkExt::send(&mut vanishing, tokio_tungstenite::tungstenite::Message::text(text)).await.expect("send start");
    drop(vanishing);
    let metrics = running.metrics();
    assert!(eventually(Duration::from_secs(5), || metrics.active_sessions() == 0).await, "every session ended");

    // Everything stored before the faults is still there, unchanged.
    let after = store.export_user(&tenant.id, &user, Timestamp::now()).await.expect("export");
    for transcript in &before.transcripts {
        assert!(after.transcripts.contains(transcript), "lost {transcript:?}");
    }
    assert_eq!(after.consent_history, before.consent_history);
    assert!(after.sessions.len() >= 4, "every session is recorded: {}", after.sessions.len());
    assert!(running.shutdown().await, "sessions drained");
}

/// Waits until the store holds a transcript of `user` (writes run in the background).
async fn wait_for_transcripts(store: &dyn Store, tenant: &TenantId, user: &mentis_gateway::store::UserId) -> mentis_gateway::store::UserExport {
    for _ in 0..100 {
        let export = store.export_user(tenant, user, Timestamp::now()).await.expect("export");
        if !export.transcripts.is_empty() {
            return export;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.export_user(tenant, user, Timestamp::now()).await.expect("export")
}
