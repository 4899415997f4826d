//! Two `mentis-gateway` processes, the built binary, on 127.0.0.1 against one
//! PostgreSQL and one Redis: a tenant's limits hold across both, records
//! written through one are read and deleted through the other, and each
//! session is registered under the instance that serves it.
//!
//! Needs `eval "$(scripts/services)"` first; see `store_support` for how a
//! missing service is reported.

mod common;
mod store_support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use mentis_gateway::client::{Endpoint, MaybeTls, handshake_status, stream_session};
use mentis_gateway::protocol::{AudioEncoding, ClientMessage, ConsentFlags, ServerEvent};
use mentis_gateway::redis::{RedisSessionRegistry, SessionRegistry as _};
use mentis_gateway::server::TokenRequest;
use mentis_gateway::store::UserExport;
use mentis_gateway::tenants::UserId;
use mentis_pipeline::{PrivacyTier, Secret};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use common::{plan, recording_frames, start_message};
use store_support::{service_url, unique_tenant_id};

const POSTGRES_URL: &str = "MENTIS_TEST_POSTGRES_URL";
const POSTGRES_OWNER_URL: &str = "MENTIS_TEST_POSTGRES_OWNER_URL";
const REDIS_URL: &str = "MENTIS_TEST_REDIS_URL";

/// The transcript the binary's load-test pipeline produces for every turn.
const SCRIPTED_TRANSCRIPT: &str = "this is the scripted transcript";

/// How long a gateway process may take to start answering `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One running gateway process, killed when dropped.
struct GatewayProcess {
    child: Child,
    endpoint: Endpoint,
    instance: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a port that is free on 127.0.0.1 at the time of the call.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Writes a signing key that only its owner may read, as the binary requires.
fn write_signing_key(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("signing.key");
    std::fs::write(&path, format!("two-gateways-signing-key-{:032x}", rand::random::<u128>())).expect("write the signing key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600 the signing key");
    path
}

/// Writes the config of one instance: PostgreSQL and Redis URLs by
/// environment variable, as a deployment would.
fn write_config(dir: &Path, instance: &str, port: u16, signing_key: &Path) -> PathBuf {
    let text = format!(
        r#"listen = "127.0.0.1:{port}"
signing_key_file = "{key}"
pipelines = ["loadtest"]
instance_id = "{instance}"

[store]
backend = "postgres"
url_env = "{POSTGRES_URL}"
migrate_url_env = "{POSTGRES_OWNER_URL}"
pool_size = 2

[redis]
url_env = "{REDIS_URL}"
"#,
        key = signing_key.display(),
    );
    let path = dir.join(format!("{instance}.toml"));
    std::fs::write(&path, text).expect("write the config");
    path
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mentis-gateway"));
    command.env("RUST_LOG", "warn");
    command
}

/// Starts a gateway process and waits until it answers `/healthz`.
async fn start_gateway(config: &Path, instance: &str, port: u16) -> GatewayProcess {
    let child = binary()
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .spawn()
        .expect("start mentis-gateway");
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let mut process = GatewayProcess { child, endpoint: Endpoint { address, host: "127.0.0.1".to_owned(), tls: None }, instance: instance.to_owned() };

    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok((200, _)) = process.endpoint.http(http::Method::GET, "/healthz", &[], Vec::new()).await {
            return process;
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!("mentis-gateway {instance} exited with {status} before it served; its log is above");
        }
        assert!(tokio::time::Instant::now() < deadline, "mentis-gateway {instance} did not answer /healthz within {START_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a tenant with the binary's `create-tenant` and returns its API key.
fn create_tenant(config: &Path, id: &str, limits: &[(&str, u32)]) -> Secret {
    let mut command = binary();
    command.arg("--config").arg(config).args(["create-tenant", "--id", id, "--tier", "self_hosted"]);
    for (flag, value) in limits {
        command.arg(format!("--{flag}")).arg(value.to_string());
    }
    let output = command.output().expect("run mentis-gateway create-tenant");
    assert!(output.status.success(), "create-tenant failed: {}", String::from_utf8_lossy(&output.stderr));
    let key = String::from_utf8(output.stdout).expect("UTF-8 key");
    let key = key.trim();
    assert!(key.starts_with("mgk_"), "create-tenant printed {key:?}, not a key");
    Secret::new(key)
}

impl GatewayProcess {
    async fn token(&self, key: &Secret, user: &str) -> String {
        let request = TokenRequest { user: UserId::new(user).expect("valid user"), tier: None, ttl_seconds: None };
        self.endpoint.request_token(key, &request).await.expect("token").token
    }

    /// Opens a session socket, or returns the HTTP status that refused it.
    async fn open(&self, token: &str) -> Result<WebSocketStream<MaybeTls>, u16> {
        match self.endpoint.connect(token, None).await {
            Ok(ws) => Ok(ws),
            Err(error) => Err(handshake_status(&error).unwrap_or_else(|| panic!("session handshake failed without a status: {error}"))),
        }
    }

    async fn request(&self, method: http::Method, path: &str, key: &Secret, body: &str) -> (u16, String) {
        let headers = [
            (http::header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            (http::header::CONTENT_TYPE, "application/json".to_owned()),
        ];
        self.endpoint.http(method, path, &headers, body.as_bytes().to_vec()).await.expect("HTTP request")
    }
}

/// Sends a start message and returns the session id of the ready event.
async fn start_session(ws: &mut WebSocketStream<MaybeTls>) -> String {
    let start = start_message("loadtest", PrivacyTier::SelfHosted, AudioEncoding::Pcm16, 16_000);
    let text = serde_json::to_string(&ClientMessage::Start(start)).expect("start message JSON");
    ws.send(Message::text(text)).await.expect("send start");
    loop {
        match ws.next().await.expect("a message").expect("a valid message") {
            Message::Text(text) => match serde_json::from_str::<ServerEvent>(&text).expect("an event") {
                ServerEvent::Ready { session_id, .. } => return session_id,
                other => panic!("expected a ready event, got {other:?}"),
            },
            _ => continue,
        }
    }
}

/// Retries `attempt` every 50 ms for up to 5 s until it returns `Some`.
async fn within_5s<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_records_hold_across_two_gateways() {
    let (Some(_), Some(_), Some(redis_url)) = (service_url(POSTGRES_URL), service_url(POSTGRES_OWNER_URL), service_url(REDIS_URL)) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary folder");
    let signing_key = write_signing_key(dir.path());
    let (port_a, port_b) = (free_port(), free_port());
    let config_a = write_config(dir.path(), "gateway-a", port_a, &signing_key);
    let config_b = write_config(dir.path(), "gateway-b", port_b, &signing_key);

    // Both processes migrate the same database at once; the advisory lock serializes them.
    let (a, b) = tokio::join!(start_gateway(&config_a, "gateway-a", port_a), start_gateway(&config_b, "gateway-b", port_b));
    for gateway in [&a, &b] {
        let (status, body) = gateway.endpoint.http(http::Method::GET, "/readyz", &[], Vec::new()).await.expect("readyz");
        assert_eq!(status, 200, "{} is not ready: {body}", gateway.instance);
    }

    let concurrent_id = unique_tenant_id("two-gw-concurrent");
    let rate_id = unique_tenant_id("two-gw-rate");
    let records_id = unique_tenant_id("two-gw-records");
    let concurrent_key = create_tenant(&config_a, concurrent_id.as_str(), &[("max-concurrent-sessions", 2), ("max-new-sessions-per-minute", 100)]);
    let rate_key = create_tenant(&config_b, rate_id.as_str(), &[("max-concurrent-sessions", 100), ("max-new-sessions-per-minute", 3)]);
    let records_key = create_tenant(&config_a, records_id.as_str(), &[]);

    check_concurrent_limit(&a, &b, &concurrent_key, &redis_url).await;
    check_session_rate(&a, &b, &rate_key).await;
    check_records(&a, &b, &records_key).await;
}

/// Two sessions open, one on each process, fill a limit of two: a third is
/// refused by both until one closes.
async fn check_concurrent_limit(a: &GatewayProcess, b: &GatewayProcess, key: &Secret, redis_url: &str) {
    let token = a.token(key, "user-concurrent").await;
    let mut first = a.open(&token).await.expect("first session on A");
    let _second = b.open(&token).await.expect("second session on B");
    assert_eq!(a.open(&token).await.err(), Some(429), "a third session on A exceeds the limit of 2");
    assert_eq!(b.open(&token).await.err(), Some(429), "a third session on B exceeds the limit of 2");

    // The registry names the instance that serves the session.
    let session_id = start_session(&mut first).await;
    let registry = RedisSessionRegistry::connect(redis_url).await.expect("connect to Redis");
    assert_eq!(registry.lookup(&session_id).await.expect("lookup"), Some(a.instance.clone()));

    first.close(None).await.expect("close the first session");
    drop(first);
    let _third = within_5s("a session on B after one closed on A", || async { b.open(&token).await.ok() }).await;
    within_5s("the closed session's registry entry to go", || async {
        registry.lookup(&session_id).await.expect("lookup").is_none().then_some(())
    })
    .await;
}

/// Three sessions started through either process use up a limit of three
/// new sessions a minute on both.
async fn check_session_rate(a: &GatewayProcess, b: &GatewayProcess, key: &Secret) {
    let token = b.token(key, "user-rate").await;
    for gateway in [a, b, a] {
        let mut ws = gateway.open(&token).await.unwrap_or_else(|status| panic!("session on {} refused with {status}", gateway.instance));
        ws.close(None).await.expect("close");
    }
    assert_eq!(b.open(&token).await.err(), Some(429), "a fourth session within a minute on B");
    assert_eq!(a.open(&token).await.err(), Some(429), "a fourth session within a minute on A");
}

/// Consent given through A, a session with transcripts and audio through B,
/// the export through A, the deletion through B, and A sees it gone.
async fn check_records(a: &GatewayProcess, b: &GatewayProcess, key: &Secret) {
    let user = "user-records";
    let (status, body) = a.request(http::Method::PUT, &format!("/v1/users/{user}/consent"), key, r#"{"transcripts": true, "audio": true}"#).await;
    assert_eq!(status, 200, "consent through A: {body}");

    let mut start = start_message("loadtest", PrivacyTier::SelfHosted, AudioEncoding::Pcm16, 16_000);
    start.consent = ConsentFlags { store_transcripts: true, store_audio: true };
    let token = b.token(key, user).await;
    let ws = b.open(&token).await.expect("session on B");
    let record = stream_session(ws, &plan(start, recording_frames(), false), |_| {}).await.expect("stream the recording");
    let spoken = record.final_transcripts();
    assert!(!spoken.is_empty(), "the session produced no final transcript: {:?}", record.events);
    let session_id = record
        .events
        .iter()
        .find_map(|event| match event {
            ServerEvent::Ready { session_id, .. } => Some(session_id.clone()),
            _ => None,
        })
        .expect("a ready event");

    // Writes are spawned by the session, so the export may briefly lag it.
    let audio_bytes = record.frames_sent * 640;
    let export: UserExport = within_5s("every transcript and audio clip in A's export", || async {
        let (status, body) = a.request(http::Method::GET, &format!("/v1/users/{user}/export"), key, "").await;
        assert_eq!(status, 200, "export through A: {body}");
        let export: UserExport = serde_json::from_str(&body).expect("export JSON");
        let stored_audio: usize = export.audio.iter().map(|clip| clip.data.len()).sum();
        let complete = export.transcripts.len() == spoken.len() && stored_audio == audio_bytes && export.sessions.iter().all(|s| s.ended_at.is_some());
        complete.then_some(export)
    })
    .await;
    assert_eq!(export.sessions.len(), 1);
    assert_eq!(export.sessions[0].session_id.as_str(), session_id);
    assert!(export.transcripts.iter().all(|transcript| transcript.text == SCRIPTED_TRANSCRIPT), "{:?}", export.transcripts);
    assert!(export.audio.iter().all(|clip| clip.format == "pcm16/16000/1"), "{:?}", export.audio.iter().map(|clip| &clip.format).collect::<Vec<_>>());
    assert_eq!(export.consent_history.len(), 1);

    let (status, body) = b.request(http::Method::DELETE, &format!("/v1/users/{user}"), key, "").await;
    assert_eq!(status, 200, "deletion through B: {body}");
    let (status, body) = a.request(http::Method::GET, &format!("/v1/users/{user}/export"), key, "").await;
    assert_eq!(status, 404, "export through A after the deletion: {body}");
    let (status, body) = a.request(http::Method::GET, &format!("/v1/users/{user}/consent"), key, "").await;
    assert_eq!(status, 200, "consent through A after the deletion: {body}");
    assert!(body.contains(r#""history":[]"#), "consent history survived the deletion: {body}");
}
